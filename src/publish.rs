//! The publisher: the only writer of the routing snapshot requests read.
//!
//! One task takes in probe results (keyed by mirror name), and reload
//! triggers (SIGHUP, or a watched file changing on disk). For each it
//! builds what changed off the request path (a table and its index, a
//! GeoIP database and its flat IPv4 table, a certificate) and publishes a
//! whole new [`Routing`]. A config, database or certificate that does not
//! load is refused with one log line, counted in [`ReloadStatus`], and the
//! running one stays: the service never stops because of a bad reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::catalog::OriginTree;
use crate::config::Config;
use crate::geoip::GeoDb;
use crate::probe::board::Board;
use crate::probe::{Probed, Prober};
use crate::routing::{Policy, ReloadError, ReloadStatus, Routing, SharedRouting};
use crate::stats::Tally;
use crate::table::{Status, Table};
use crate::tls::{self, Certs};
use crate::watch::FileWatch;

/// What asks for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP, or a caller of `Running::reload`.
    Signal,
    /// A watched file changed; more events usually follow at once.
    Files,
}

/// How long files must be quiet before a change is read: an editor's save,
/// or a copy in place, is several events.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The publisher's state; [`Publisher::run`] is its task.
pub struct Publisher {
    config: Config,
    routing: SharedRouting,
    /// Probed statuses of the configured mirrors, by name.
    statuses: HashMap<Arc<str>, Status>,
    prober: Prober,
    certs: Option<Arc<Certs>>,
    stamps: Stamps,
    reload: ReloadStatus,
    watch: Option<FileWatch>,
    triggers: mpsc::UnboundedSender<Trigger>,
    /// Request counters, resolved by mirror id in each table published.
    tally: Arc<Tally>,
    /// The origin's trees as the prober last read them: which files each
    /// mirror may serve is judged against them.
    origin: Vec<OriginTree>,
}

/// What the loaded files looked like when they were read.
#[derive(Default)]
struct Stamps {
    geo: Vec<Option<Stamp>>,
    cert: Option<(Stamp, Stamp)>,
}

/// A file's identity and version: a rename over it changes the inode, a
/// write in place the size or time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

impl Publisher {
    /// Starts probing `config`'s mirrors; `routing` holds what `config`,
    /// `certs` and the database were loaded into. Probe results arrive on
    /// `probed`'s other end (`Publisher::run`).
    pub fn new(
        config: Config,
        routing: SharedRouting,
        certs: Option<Arc<Certs>>,
        probed: mpsc::UnboundedSender<Probed>,
        triggers: mpsc::UnboundedSender<Trigger>,
        tally: Arc<Tally>,
        board: Arc<Board>,
    ) -> Publisher {
        let mut prober = Prober::new(probed, board);
        prober.reconcile(&config, |_| None);
        let stamps = Stamps {
            geo: geo_stamps(&config.geoip),
            cert: config.tls.as_ref().and_then(cert_stamps),
        };
        let mut p = Publisher {
            config,
            routing,
            statuses: HashMap::new(),
            prober,
            certs,
            stamps,
            reload: ReloadStatus::default(),
            watch: None,
            triggers,
            tally,
            origin: Vec::new(),
        };
        p.rewatch();
        p
    }

    /// Runs until both channels close (the service is gone).
    pub async fn run(
        mut self,
        mut probed: mpsc::UnboundedReceiver<Probed>,
        mut triggers: mpsc::UnboundedReceiver<Trigger>,
    ) {
        let mut origin = self.prober.origin();
        loop {
            tokio::select! {
                Ok(()) = origin.changed() => {
                    let snapshot = origin.borrow_and_update().clone();
                    self.origin = snapshot.map(|o| o.origin_trees()).unwrap_or_default();
                    self.publish(None).await;
                }
                Some(p) = probed.recv() => {
                    self.take(p);
                    // Many mirrors change at once at startup: one table for all.
                    while let Ok(p) = probed.try_recv() {
                        self.take(p);
                    }
                    self.publish(None).await;
                }
                Some(t) = triggers.recv() => {
                    settle(t, &mut triggers).await;
                    self.reload().await;
                }
                else => return,
            }
        }
    }

    fn take(&mut self, p: Probed) {
        // A task a reload replaced or removed may still have spoken.
        if self.prober.generation(&p.name) == Some(p.generation) {
            self.statuses.insert(p.name, p.status);
        }
    }

    /// Reads the config, the database and the certificate again, applies
    /// what changed and loaded, and refuses what did not load.
    async fn reload(&mut self) {
        let mut errors: Vec<String> = Vec::new();
        let mut changed = false;
        let path = self.config.path.clone();
        match blocking(move || Config::load(&path)).await {
            Ok(Ok(new)) => {
                let (new, pinned) = pin_restart_only(&self.config, new);
                if !pinned.is_empty() {
                    tracing::warn!(
                        settings = %pinned.join(", "),
                        "changed in the config, but take effect only after a restart"
                    );
                }
                if new != self.config {
                    self.apply_config(new);
                    changed = true;
                }
            }
            Ok(Err(e)) => errors.push(chain(&e)),
            Err(e) => errors.push(e),
        }
        let geo = match self.reload_geo().await {
            Ok(geo) => geo,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        changed |= geo.is_some();
        match self.reload_certs().await {
            Ok(c) => changed |= c,
            Err(e) => errors.push(e),
        }
        for e in &errors {
            tracing::error!(error = %e, "reload refused; still serving the previous one");
        }
        self.reload.failed += errors.len() as u64;
        self.reload.last_error = errors.pop().map(|message| ReloadError {
            at: SystemTime::now(),
            message,
        });
        if changed {
            self.reload.applied += 1;
            tracing::info!(mirrors = self.config.mirrors.len(), "reloaded");
        }
        self.publish(geo).await;
    }

    /// Takes in a new config: probe tasks by name, statuses of mirrors
    /// whose files are now checked anew dropped, removed mirrors forgotten.
    fn apply_config(&mut self, new: Config) {
        let statuses = &self.statuses;
        let anew = self.prober.reconcile(&new, |n| statuses.get(n).cloned());
        for name in anew {
            self.statuses.remove(&name);
        }
        self.statuses
            .retain(|name, _| new.mirrors.iter().any(|m| *m.name == **name));
        self.config = new;
        self.rewatch();
    }

    /// A new database when the configured file changed and loads.
    async fn reload_geo(&mut self) -> Result<Option<Arc<GeoDb>>, String> {
        let paths = self.config.geoip.clone();
        let stamp = geo_stamps(&paths);
        let loaded: Vec<PathBuf> = self
            .routing
            .load()
            .geo
            .files()
            .map(|f| f.path().to_path_buf())
            .collect();
        if loaded == paths && stamp == self.stamps.geo {
            return Ok(None);
        }
        // Building the flat IPv4 table of a city database takes half a
        // second: not on a thread that serves requests.
        let began = std::time::Instant::now();
        let opened = blocking(move || GeoDb::open_all(&paths)).await?;
        let db = opened.map_err(|e| chain(&e))?;
        let ms = began.elapsed().as_millis() as u64;
        tracing::info!(path = %db.path().display(), files = db.files().count(), v4_ranges = db.v4_ranges(), ms, "GeoIP database loaded");
        self.stamps.geo = stamp;
        Ok(Some(Arc::new(db)))
    }

    /// Whether a changed certificate was loaded.
    async fn reload_certs(&mut self) -> Result<bool, String> {
        let (Some(certs), Some(t)) = (&self.certs, &self.config.tls) else {
            return Ok(false);
        };
        let stamps = cert_stamps(t);
        if stamps == self.stamps.cert {
            return Ok(false);
        }
        let (cert, key) = (t.cert.clone(), t.key.clone());
        let loaded = blocking(move || tls::load(&cert, &key)).await?;
        certs.replace(loaded.map_err(|e| chain(&e))?);
        tracing::info!(cert = %t.cert.display(), "TLS certificate loaded");
        self.stamps.cert = stamps;
        Ok(true)
    }

    /// Publishes a new routing snapshot: the current config's policy and
    /// table, `geo` or the database in use.
    async fn publish(&mut self, geo: Option<Arc<GeoDb>>) {
        let mirrors = self.config.mirrors.clone();
        let statuses = self.statuses.clone();
        let band = self.config.selection;
        let releases = self.config.releases.clone();
        let origin = self.origin.clone();
        // Building the index takes milliseconds for big tables.
        let built = blocking(move || {
            let status_of = |n: &str| statuses.get(n).cloned().unwrap_or_else(Status::unprobed);
            Table::probed(&mirrors, status_of, band, &releases, &origin)
        })
        .await;
        let table = match built {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(cause = %e, "building the mirror table failed; keeping the old one");
                return;
            }
        };
        let current = self.routing.load_full();
        let policy = Policy::from_config(&self.config);
        let next = Routing {
            policy: if *current.policy == policy {
                current.policy.clone()
            } else {
                Arc::new(policy)
            },
            geo: geo.unwrap_or_else(|| current.geo.clone()),
            sent: self.tally.slots(&table),
            table: Arc::new(table),
            reload: Arc::new(self.reload.clone()),
        };
        self.routing.store(Arc::new(next));
    }

    /// Watches the files of the current config, if they are not already.
    fn rewatch(&mut self) {
        let files = files_of(&self.config);
        if self.watch.as_ref().is_some_and(|w| w.files() == files) {
            return;
        }
        let tx = self.triggers.clone();
        match FileWatch::start(&files, move || {
            let _ = tx.send(Trigger::Files);
        }) {
            Ok(w) => self.watch = Some(w),
            Err(e) => {
                // SIGHUP still reloads.
                tracing::warn!(cause = %e, "cannot watch the config's files; reload with SIGHUP");
                self.watch = None;
            }
        }
    }
}

/// Settings the running listeners were built with cannot change without a
/// restart: `new` with those kept at `old`'s values, and their names.
fn pin_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut pinned = Vec::new();
    if new.listen != old.listen {
        pinned.push("listen");
        new.listen = old.listen.clone();
    }
    let tls_listen = |c: &Config| c.tls.as_ref().map(|t| t.listen.clone());
    if tls_listen(&new) != tls_listen(old) {
        pinned.push("tls (listen, or TLS on or off)");
        match (&mut new.tls, &old.tls) {
            (Some(n), Some(o)) => n.listen = o.listen.clone(),
            (n, o) => *n = o.clone(),
        }
    }
    if new.server != old.server {
        pinned.push("server");
        new.server = old.server;
    }
    if new.admin != old.admin {
        pinned.push("admin");
        new.admin = old.admin.clone();
    }
    if new.log.json != old.log.json {
        pinned.push("log.format");
        new.log.json = old.log.json;
    }
    (new, pinned)
}

fn cert_stamps(t: &crate::config::Tls) -> Option<(Stamp, Stamp)> {
    Some((Stamp::of(&t.cert)?, Stamp::of(&t.key)?))
}

/// Waits, after a file event, until files have been quiet for a moment;
/// any triggers that arrive meanwhile are part of the same reload. A
/// signal ends the wait: the operator says the files are ready (`touch`
/// then `kill -HUP` otherwise waited out the debounce, 0.3 s).
async fn settle(first: Trigger, triggers: &mut mpsc::UnboundedReceiver<Trigger>) {
    let mut next = first;
    while next == Trigger::Files {
        match tokio::time::timeout(DEBOUNCE, triggers.recv()).await {
            Ok(Some(t)) => next = t,
            _ => return,
        }
    }
    while triggers.try_recv().is_ok() {}
}

/// Runs blocking work (file reads, index builds) off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a reload task failed: {e}"))
}

/// An error and its causes on one line, each cause once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// Each GeoIP file's stamp, in order.
fn geo_stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths.iter().map(|p| Stamp::of(p)).collect()
}

/// The files a config's reload reads.
fn files_of(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.path.clone()];
    files.extend(config.geoip.iter().cloned());
    if let Some(t) = &config.tls {
        files.extend([t.cert.clone(), t.key.clone()]);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let head = "origin = \"https://o.example/\"\nreleases = [\"jackherer\"]\n\
                    geoip = \"geoip/geo-whois-asn-country.mmdb\"\n";
        Config::parse(&dir.join("mirrors.toml"), &format!("{head}{text}")).unwrap()
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let old = config("listen = [\"127.0.0.1:1\"]\n[server]\nworkers = 2\n");
        let new = config(
            "listen = [\"127.0.0.1:2\"]\n[server]\nworkers = 3\n[selection]\nband_km = 10\n",
        );
        let (kept, pinned) = pin_restart_only(&old, new);
        assert_eq!(pinned, ["listen", "server"]);
        assert_eq!(kept.listen, old.listen);
        assert_eq!(kept.server, old.server);
        assert_eq!(kept.selection.band_km, 10.0, "the rest applies");
        let (same, none) = pin_restart_only(&old, old.clone());
        assert!(none.is_empty());
        assert_eq!(same, old);
    }

    /// Virtual time: a wait for the debounce would advance the clock.
    #[tokio::test(start_paused = true)]
    async fn file_events_wait_for_quiet_and_a_signal_ends_the_wait() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            late.send(Trigger::Files).unwrap();
        });
        settle(Trigger::Files, &mut rx).await;
        let quiet = Duration::from_millis(100) + DEBOUNCE;
        assert_eq!(start.elapsed(), quiet, "quiet after the last event");

        let start = tokio::time::Instant::now();
        tx.send(Trigger::Files).unwrap();
        tx.send(Trigger::Signal).unwrap();
        tx.send(Trigger::Files).unwrap();
        settle(Trigger::Files, &mut rx).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "the signal ended the wait");
        assert!(
            rx.try_recv().is_err(),
            "what came with it is part of this reload"
        );
    }
}
