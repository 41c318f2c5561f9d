//! The prober: the only writer of the mirror table.
//!
//! One task follows the origin (each release's `meta.binaryproto`, its hash
//! and its newest package images); one task per mirror checks that mirror
//! against the origin's latest snapshot on its own schedule, within a shared
//! concurrency bound; one publisher task collects status changes and stores
//! a new table. Requests never wait for any of them.
//!
//! - [`check`]: the HTTP checks of a round.
//! - [`state`]: hysteresis, latency average, backoff.

pub mod check;
pub mod state;

use std::sync::Arc;
use std::time::SystemTime;

use reqwest::Client;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{self, Config};
use crate::table::{Health, MirrorId, SharedTable, Status, Table};
use check::{MirrorCache, OriginCache, OriginSnapshot, ProbeError, Report};
use state::{MirrorState, Transition, backoff};

type Origin = watch::Receiver<Option<Arc<OriginSnapshot>>>;

/// Probing in the background; dropping it stops every probe task.
pub struct Prober {
    _tasks: JoinSet<()>,
}

/// Starts probing the origin and every mirror of `config`, publishing status
/// changes into `table`. The first round starts at once.
pub fn spawn(config: &Config, table: SharedTable) -> Prober {
    let mut tasks = JoinSet::new();
    if config.mirrors.is_empty() {
        // Nothing to verify: the origin serves everything, unprobed.
        tracing::info!("no mirrors configured: every request goes to the origin");
        return Prober { _tasks: tasks };
    }
    let http = check::client(config.probe.timeout);
    let (origin_tx, origin_rx) = watch::channel(None);
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(config.probe.concurrency));
    tasks.spawn(follow_origin(http.clone(), config.clone(), origin_tx));
    for (id, m) in config.mirrors.iter().enumerate() {
        let probe = MirrorProbe {
            id,
            mirror: m.clone(),
            settings: config.probe,
            http: http.clone(),
            origin: origin_rx.clone(),
            permits: permits.clone(),
            changes: status_tx.clone(),
        };
        tasks.spawn(probe.run());
    }
    tasks.spawn(publish(table, status_rx, config.mirrors.len()));
    Prober { _tasks: tasks }
}

/// Keeps the latest origin snapshot in `tx`. An unreachable origin keeps its
/// last known snapshot (mirrors that match it stay eligible); the outage is
/// logged when it starts and when it ends.
async fn follow_origin(
    http: Client,
    config: Config,
    tx: watch::Sender<Option<Arc<OriginSnapshot>>>,
) {
    let p = config.probe;
    let mut cache = OriginCache::default();
    let mut failures = 0u32;
    loop {
        let prev = tx.borrow().clone();
        let fetched = check::fetch_origin(
            &http,
            &config.origin,
            &config.releases,
            p.sample,
            p.timeout,
            prev.as_deref(),
            &mut cache,
        )
        .await;
        match fetched {
            Ok(snap) => {
                if failures > 0 {
                    tracing::info!(origin = %config.origin, "origin reachable again");
                }
                failures = 0;
                if prev.as_deref() != Some(&snap) {
                    tracing::info!(origin = %config.origin, "origin index changed");
                    tx.send_replace(Some(Arc::new(snap)));
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(origin = %config.origin, cause = %e, "origin unreachable; keeping its last known index");
                }
                failures += 1;
            }
        }
        let delay = if failures == 0 {
            p.interval
        } else {
            backoff(p.interval, failures)
        };
        tokio::time::sleep(delay).await;
    }
}

/// Collects status changes and publishes a new table for each batch.
async fn publish(
    table: SharedTable,
    mut changes: mpsc::UnboundedReceiver<(MirrorId, Status)>,
    n: usize,
) {
    let mut statuses: Vec<Status> = table
        .load()
        .mirrors()
        .iter()
        .map(|m| m.status.clone())
        .collect();
    statuses.resize_with(n, Status::unprobed);
    while let Some((id, status)) = changes.recv().await {
        statuses[id] = status;
        // Many mirrors change at once at startup: one table for all of them.
        while let Ok((id, status)) = changes.try_recv() {
            statuses[id] = status;
        }
        // Building the index takes milliseconds for big tables: not on a
        // worker thread that serves requests.
        let (current, statuses_now) = (table.load_full(), statuses.clone());
        let next: Table = match tokio::task::spawn_blocking(move || {
            current.with_statuses(statuses_now)
        })
        .await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(cause = %e, "building the mirror table failed; keeping the old one");
                continue;
            }
        };
        table.store(Arc::new(next));
    }
}

struct MirrorProbe {
    id: MirrorId,
    mirror: config::Mirror,
    settings: config::Probe,
    http: Client,
    origin: Origin,
    permits: Arc<Semaphore>,
    changes: mpsc::UnboundedSender<(MirrorId, Status)>,
}

impl MirrorProbe {
    async fn run(mut self) {
        let mut state = MirrorState::new(SystemTime::now());
        let mut cache = MirrorCache::default();
        // Before the origin was ever reached, nothing can be verified.
        if self.origin.wait_for(Option::is_some).await.is_err() {
            return;
        }
        loop {
            let origin = self.origin.borrow().clone().expect("set before the loop");
            let report = {
                let _permit = self.permits.acquire().await.expect("never closed");
                round(
                    &self.http,
                    &self.mirror.url,
                    &origin,
                    &self.settings,
                    &mut cache,
                )
                .await
            };
            let before = state.status();
            if let Some(t) = state.record(report.result, &self.settings, SystemTime::now()) {
                log_transition(&self.mirror.name, &t);
            }
            let after = state.status();
            if (after.health, &after.reason) != (before.health, &before.reason)
                && self.changes.send((self.id, after)).is_err()
            {
                return;
            }
            tokio::time::sleep(state.next_delay(&self.settings, rand::random())).await;
        }
    }
}

/// One mirror's round against an origin snapshot.
async fn round(
    http: &Client,
    base: &str,
    origin: &OriginSnapshot,
    p: &config::Probe,
    cache: &mut MirrorCache,
) -> Report {
    let mut sample = |pool: &[(String, u64)]| sample_indices(pool.len(), p.sample);
    check::check_mirror(http, base, origin, &mut sample, p.timeout, cache).await
}

/// `k` distinct indices below `len`: always the newest (0), the rest at random.
fn sample_indices(len: usize, k: usize) -> Vec<usize> {
    let k = k.min(len);
    let mut out = Vec::with_capacity(k);
    if k > 0 {
        out.push(0);
    }
    while out.len() < k {
        let i = rand::random_range(1..len);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn log_transition(name: &str, t: &Transition) {
    if t.to == Health::Down {
        tracing::warn!(mirror = %name, from = %t.from, to = %t.to, reason = %t.reason, "mirror state changed");
    } else {
        tracing::info!(mirror = %name, from = %t.from, to = %t.to, reason = %t.reason, "mirror state changed");
    }
}

/// One mirror's result of a single round, for the `probe` command.
pub struct RoundRow {
    pub name: String,
    pub report: Report,
    pub status: Status,
}

/// Runs one round over every mirror, all in parallel within the
/// concurrency bound. Fails only when the origin cannot be read.
pub async fn run_once(config: &Config) -> Result<Vec<RoundRow>, ProbeError> {
    let p = config.probe;
    let http = check::client(p.timeout);
    let origin = check::fetch_origin(
        &http,
        &config.origin,
        &config.releases,
        p.sample,
        p.timeout,
        None,
        &mut OriginCache::default(),
    )
    .await?;
    let origin = Arc::new(origin);
    let permits = Arc::new(Semaphore::new(p.concurrency));
    let mut set = JoinSet::new();
    for (i, m) in config.mirrors.iter().cloned().enumerate() {
        let (http, origin, permits) = (http.clone(), origin.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let report = round(&http, &m.url, &origin, &p, &mut MirrorCache::default()).await;
            let mut state = MirrorState::new(SystemTime::now());
            state.record(report.result.clone(), &p, SystemTime::now());
            (
                i,
                RoundRow {
                    name: m.name,
                    report,
                    status: state.status(),
                },
            )
        });
    }
    let mut rows: Vec<(usize, RoundRow)> = set.join_all().await;
    rows.sort_by_key(|(i, _)| *i);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_always_hold_the_newest() {
        for _ in 0..100 {
            let s = sample_indices(10, 3);
            assert_eq!(s.len(), 3);
            assert_eq!(s[0], 0);
            let mut d = s.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        assert_eq!(sample_indices(2, 5), [0, 1]);
        assert!(sample_indices(0, 3).is_empty());
        assert!(sample_indices(5, 0).is_empty());
    }
}
