//! What the probes saw last, for operators: each mirror's latency and
//! per-release freshness after every round, the origin's index, and counts
//! of rounds and failures by kind. Probe tasks write it, metrics and the
//! status page read it; the request path never touches it, so a mutex is
//! fine here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::check::{ProbeError, Report};

/// One mirror's last round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// The moving average the state machine keeps.
    pub latency: Option<Duration>,
    /// Each release's freshness (`None`: not checked that round).
    pub fresh: Vec<(String, Option<bool>)>,
    pub at: Option<SystemTime>,
}

/// The origin's index, as the prober follows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OriginSeen {
    /// Last fetched successfully.
    pub fetched: Option<SystemTime>,
    /// Last seen to change.
    pub changed: Option<SystemTime>,
    pub reachable: bool,
    /// Why the last fetch failed, while it does.
    pub error: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    mirrors: HashMap<Arc<str>, Seen>,
    origin: OriginSeen,
    rounds: u64,
    /// Failed rounds by the kind of failure.
    failures: BTreeMap<&'static str, u64>,
}

/// Shared by the prober's tasks and the readers.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

/// A copy of the board, for one render or scrape.
#[derive(Clone, Debug, Default)]
pub struct BoardView {
    pub mirrors: HashMap<Arc<str>, Seen>,
    pub origin: OriginSeen,
    pub rounds: u64,
    pub failures: BTreeMap<&'static str, u64>,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one mirror's round.
    pub fn round(&self, name: &Arc<str>, report: &Report, latency: Option<Duration>) {
        let mut b = self.lock();
        b.rounds += 1;
        if let Err(e) = &report.result {
            *b.failures.entry(kind(e)).or_default() += 1;
        }
        let seen = Seen {
            latency,
            fresh: report
                .releases
                .iter()
                .map(|r| (r.release.clone(), r.fresh))
                .collect(),
            at: Some(SystemTime::now()),
        };
        b.mirrors.insert(name.clone(), seen);
    }

    /// Records one fetch of the origin's index.
    pub fn origin(&self, ok: bool, changed: bool) {
        let mut b = self.lock();
        let now = SystemTime::now();
        b.origin.reachable = ok;
        if ok {
            b.origin.fetched = Some(now);
            b.origin.error = None;
        }
        if changed {
            b.origin.changed = Some(now);
        }
    }

    /// A failed fetch of the origin's index, and why.
    pub fn origin_failed(&self, reason: String) {
        let mut b = self.lock();
        b.origin.reachable = false;
        b.origin.error = Some(Arc::from(reason));
    }

    /// Whether the last fetch of the origin's index succeeded.
    pub fn origin_reachable(&self) -> bool {
        self.lock().origin.reachable
    }

    /// Forgets mirrors no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().mirrors.retain(|n, _| keep(n));
    }

    pub fn view(&self) -> BoardView {
        let b = self.lock();
        BoardView {
            mirrors: b.mirrors.clone(),
            origin: b.origin.clone(),
            rounds: b.rounds,
            failures: b.failures.clone(),
        }
    }
}

/// The kind of a failure, as a metric label.
pub fn kind(e: &ProbeError) -> &'static str {
    match e {
        ProbeError::Timeout { .. } => "timeout",
        ProbeError::Refused => "refused",
        ProbeError::Connect(_) => "connect",
        ProbeError::Redirected { .. } => "redirected",
        ProbeError::Missing { .. } | ProbeError::Incomplete { .. } => "incomplete",
        ProbeError::Stale { .. } => "stale",
        ProbeError::Status { .. } => "http_status",
        ProbeError::Slow { .. } => "slow",
        ProbeError::Decode { .. } | ProbeError::TooLarge { .. } => "decode",
        ProbeError::Other(_) => "other",
    }
}

/// Every kind, so each is exported from the start (at zero).
pub const KINDS: [&str; 10] = [
    "timeout",
    "refused",
    "connect",
    "redirected",
    "incomplete",
    "stale",
    "http_status",
    "slow",
    "decode",
    "other",
];
