//! The prober: background checks of the origin and every mirror.
//!
//! One task follows the origin (each release's `meta.binaryproto`, its hash
//! and its newest package images); one task per mirror, keyed by the
//! mirror's name, checks that mirror against the origin's latest snapshot
//! on its own schedule, within a shared concurrency bound, and reports
//! status changes to the publisher (`publish`), which builds the table.
//! [`Prober::reconcile`] brings the tasks in line with a reloaded config:
//! unchanged mirrors keep probing undisturbed. Requests never wait for any
//! of them.
//!
//! - [`check`]: the HTTP checks of a round.
//! - [`state`]: hysteresis, latency average, backoff.
//! - [`board`]: what the probes saw last, for metrics and the status page.

pub mod board;
pub mod check;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Client;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::catalog::OriginTree;
use crate::config::{self, Config};
use crate::table::{Health, Status};
use board::Board;
use check::{Interner, MirrorCache, OriginCache, OriginSnapshot, ProbeError, Report};
use state::{MirrorState, Transition, backoff};

type Origin = watch::Receiver<Option<Arc<OriginSnapshot>>>;

/// A mirror's new status, from the probe task of one generation.
#[derive(Debug)]
pub struct Probed {
    pub name: Arc<str>,
    /// Which task sent it: a status from a task that a reload replaced is
    /// stale, and the publisher drops it.
    pub generation: u64,
    pub status: Status,
}

/// What a probe task checks, and how: when any of it changes, the task is
/// replaced.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    url: String,
    origin: String,
    releases: Vec<String>,
    settings: config::Probe,
}

impl Target {
    fn of(config: &Config, m: &config::Mirror) -> Target {
        Target {
            url: m.url.clone(),
            origin: config.origin.clone(),
            releases: config.releases.clone(),
            settings: config.probe,
        }
    }

    /// Whether a status verified for `self` still holds for `other`: the
    /// same files of the same mirror against the same origin.
    fn same_files(&self, other: &Target) -> bool {
        (&self.url, &self.origin, &self.releases) == (&other.url, &other.origin, &other.releases)
    }
}

struct Task {
    target: Target,
    generation: u64,
    abort: AbortHandle,
}

/// Probing in the background; dropping it stops every probe task.
pub struct Prober {
    /// The probe client and the timeout it was built with.
    http: Option<(Duration, Option<PathBuf>, Client)>,
    origin_tx: watch::Sender<Option<Arc<OriginSnapshot>>>,
    origin: Option<(Target, AbortHandle)>,
    mirrors: HashMap<Arc<str>, Task>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    changes: mpsc::UnboundedSender<Probed>,
    tasks: JoinSet<()>,
    generations: u64,
    board: Arc<Board>,
    interner: Arc<Interner>,
}

impl Prober {
    /// A prober with nothing to probe yet; status changes go to `changes`,
    /// every round's findings to `board`.
    pub fn new(changes: mpsc::UnboundedSender<Probed>, board: Arc<Board>) -> Prober {
        Prober {
            http: None,
            origin_tx: watch::channel(None).0,
            origin: None,
            mirrors: HashMap::new(),
            permits: Arc::new(Semaphore::new(0)),
            concurrency: 0,
            changes,
            tasks: JoinSet::new(),
            generations: 0,
            board,
            interner: Arc::default(),
        }
    }

    /// The origin's latest snapshot, as the mirrors are checked against it
    /// (`None` before the origin was read, and after its config changed).
    pub fn origin(&self) -> watch::Receiver<Option<Arc<OriginSnapshot>>> {
        self.origin_tx.subscribe()
    }

    /// Starts, keeps or stops tasks so that exactly `config`'s mirrors are
    /// probed, with its settings. A mirror whose target did not change keeps
    /// its task; a new or changed one is probed at once. `last` gives the
    /// status a replaced task resumes from when it checks the same files
    /// (only its settings changed), so its hysteresis carries over.
    ///
    /// Returns the mirrors whose files are now checked anew (new ones, and
    /// those whose URL, origin or releases changed): their old status no
    /// longer holds.
    pub fn reconcile(
        &mut self,
        config: &Config,
        last: impl Fn(&str) -> Option<Status>,
    ) -> Vec<Arc<str>> {
        // Finished tasks (none should finish) must not pile up.
        while self.tasks.try_join_next().is_some() {}
        if config.mirrors.is_empty() {
            if !self.mirrors.is_empty() || self.origin.is_some() {
                tracing::info!("no mirrors configured: every request goes to the origin");
            }
            self.stop_all();
            return Vec::new();
        }
        let http = self.client(config.probe.timeout, config.probe_ca.as_deref());
        let origin_target = Target {
            url: config.origin.clone(),
            origin: config.origin.clone(),
            releases: config.releases.clone(),
            settings: config.probe,
        };
        if self.origin.as_ref().map(|(t, _)| t) != Some(&origin_target) {
            if let Some((_, abort)) = self.origin.take() {
                abort.abort();
            }
            // Mirrors must not be checked against the old origin's index.
            self.origin_tx.send_replace(None);
            let abort = self.tasks.spawn(follow_origin(
                http.clone(),
                config.clone(),
                self.origin_tx.clone(),
                self.board.clone(),
                self.interner.clone(),
            ));
            self.origin = Some((origin_target, abort));
        }
        if self.concurrency != config.probe.concurrency {
            // Every task's settings changed with it: all are replaced below.
            self.concurrency = config.probe.concurrency;
            self.permits = Arc::new(Semaphore::new(self.concurrency));
        }
        self.board
            .retain(|name| config.mirrors.iter().any(|m| m.name == name));
        self.mirrors.retain(|name, task| {
            let keep = config.mirrors.iter().any(|m| *m.name == **name);
            if !keep {
                task.abort.abort();
            }
            keep
        });
        let mut anew = Vec::new();
        for m in &config.mirrors {
            let target = Target::of(config, m);
            if self.mirrors.get(m.name.as_str()).map(|t| &t.target) == Some(&target) {
                continue;
            }
            let resume = self
                .mirrors
                .get(m.name.as_str())
                .filter(|t| t.target.same_files(&target))
                .and_then(|_| last(&m.name));
            if let Some(old) = self.mirrors.remove(m.name.as_str()) {
                old.abort.abort();
            }
            if resume.is_none() {
                anew.push(Arc::from(m.name.as_str()));
            }
            self.spawn_mirror(m, target, http.clone(), resume);
        }
        anew
    }

    fn spawn_mirror(
        &mut self,
        m: &config::Mirror,
        target: Target,
        http: Client,
        resume: Option<Status>,
    ) {
        self.generations += 1;
        let name: Arc<str> = Arc::from(m.name.as_str());
        let probe = MirrorProbe {
            name: name.clone(),
            generation: self.generations,
            mirror: m.clone(),
            settings: target.settings,
            http,
            origin: self.origin_tx.subscribe(),
            permits: self.permits.clone(),
            changes: self.changes.clone(),
            board: self.board.clone(),
            interner: self.interner.clone(),
        };
        let abort = self.tasks.spawn(probe.run(resume));
        let task = Task {
            target,
            generation: self.generations,
            abort,
        };
        self.mirrors.insert(name, task);
    }

    /// The HTTP client for this timeout and CA file, made anew when either
    /// changes.
    fn client(&mut self, timeout: Duration, ca: Option<&Path>) -> Client {
        match &self.http {
            Some((t, a, c)) if *t == timeout && a.as_deref() == ca => c.clone(),
            _ => {
                let c = check::client_trusting(timeout, ca);
                self.http = Some((timeout, ca.map(Path::to_path_buf), c.clone()));
                c
            }
        }
    }

    fn stop_all(&mut self) {
        self.tasks.abort_all();
        self.mirrors.clear();
        self.origin = None;
        self.origin_tx.send_replace(None);
    }

    /// The generation of the task probing `name` now, if any.
    pub fn generation(&self, name: &str) -> Option<u64> {
        self.mirrors.get(name).map(|t| t.generation)
    }
}

/// Keeps the latest origin snapshot in `tx`. An unreachable origin keeps its
/// last known snapshot (mirrors that match it stay eligible); the outage is
/// logged when it starts and when it ends.
async fn follow_origin(
    http: Client,
    config: Config,
    tx: watch::Sender<Option<Arc<OriginSnapshot>>>,
    board: Arc<Board>,
    interner: Arc<Interner>,
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
            check::Bounds::of(&p),
            prev.as_deref(),
            &mut cache,
            &interner,
        )
        .await;
        match fetched {
            Ok(snap) => {
                if failures > 0 {
                    tracing::info!(origin = %config.origin, "origin reachable again");
                }
                failures = 0;
                board.origin(true, prev.as_deref() != Some(&snap));
                if prev.as_deref() != Some(&snap) {
                    tracing::info!(origin = %config.origin, "origin index changed");
                    tx.send_replace(Some(Arc::new(snap)));
                }
            }
            Err(e) => {
                board.origin_failed(e.to_string());
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

struct MirrorProbe {
    name: Arc<str>,
    generation: u64,
    mirror: config::Mirror,
    settings: config::Probe,
    http: Client,
    origin: Origin,
    permits: Arc<Semaphore>,
    changes: mpsc::UnboundedSender<Probed>,
    board: Arc<Board>,
    interner: Arc<Interner>,
}

impl MirrorProbe {
    async fn run(mut self, resume: Option<Status>) {
        let mut state = match &resume {
            Some(s) => MirrorState::resume(s),
            None => MirrorState::new(SystemTime::now()),
        };
        let mut cache = MirrorCache::default();
        loop {
            // Before the origin was ever reached (or after its config
            // changed), nothing can be verified.
            let origin = match self.origin.wait_for(Option::is_some).await {
                Ok(o) => o.clone().expect("waited for Some"),
                Err(_) => return,
            };
            let report = {
                let _permit = self.permits.acquire().await.expect("never closed");
                round(
                    &self.http,
                    &self.mirror.url,
                    &origin,
                    &self.settings,
                    &mut cache,
                    &self.interner,
                )
                .await
            };
            let before = state.status();
            let result = report.result.clone();
            if let Some(t) = state.record(result, &self.settings, SystemTime::now()) {
                log_transition(&self.mirror.name, &t);
            }
            state.set_trees(report.trees.clone().map(Arc::from));
            self.board.round(&self.name, &report, state.latency());
            let after = state.status();
            if (after.health, &after.reason, &after.trees)
                != (before.health, &before.reason, &before.trees)
            {
                let probed = Probed {
                    name: self.name.clone(),
                    generation: self.generation,
                    status: after,
                };
                if self.changes.send(probed).is_err() {
                    return;
                }
            }
            // A new origin index is checked at once, not a round later:
            // until then only the origin serves what it changed.
            let delay = state.next_delay(&self.settings, rand::random());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.origin.changed() => {}
            }
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
    interner: &Interner,
) -> Report {
    let mut sample = |len: usize| sample_indices(len, p.sample);
    let bounds = check::Bounds::of(p);
    check::check_mirror(http, base, origin, &mut sample, bounds, cache, interner).await
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

/// One round over every mirror: what the origin has, and each mirror's row.
pub struct Round {
    pub origin: Vec<OriginTree>,
    pub rows: Vec<RoundRow>,
}

/// Runs one round over every mirror, all in parallel within the
/// concurrency bound. Fails only when the origin cannot be read.
pub async fn run_once(config: &Config) -> Result<Round, ProbeError> {
    let p = config.probe;
    let http = check::client_trusting(p.timeout, config.probe_ca.as_deref());
    let interner = Arc::new(Interner::default());
    let origin = check::fetch_origin(
        &http,
        &config.origin,
        &config.releases,
        p.sample,
        check::Bounds::of(&p),
        None,
        &mut OriginCache::default(),
        &interner,
    )
    .await?;
    let origin = Arc::new(origin);
    let permits = Arc::new(Semaphore::new(p.concurrency));
    let mut set = JoinSet::new();
    for (i, m) in config.mirrors.iter().cloned().enumerate() {
        let (http, origin, permits) = (http.clone(), origin.clone(), permits.clone());
        let interner = interner.clone();
        set.spawn(async move {
            let _permit = permits.acquire().await.expect("never closed");
            let mut cache = MirrorCache::default();
            let report = round(&http, &m.url, &origin, &p, &mut cache, &interner).await;
            let mut state = MirrorState::new(SystemTime::now());
            state.record(report.result.clone(), &p, SystemTime::now());
            state.set_trees(report.trees.clone().map(Arc::from));
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
    Ok(Round {
        origin: origin.origin_trees(),
        rows: rows.into_iter().map(|(_, r)| r).collect(),
    })
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
