//! `/metrics` on the admin listener: Prometheus text format, written by
//! `prometheus-client` from what the service already keeps. Nothing here
//! runs per request: a scrape reads the request counters ([`Tally`]), the
//! published routing snapshot and the probe board, and encodes them.

use std::fmt::Error;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::probe::board::{Board, BoardView, KINDS};
use crate::routing::Routing;
use crate::stats::{LATENCY_BOUNDS_NS, Other, Tally};
use crate::table::{Health, TreeState, TreeStatus};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reads.
#[derive(Debug)]
pub struct Metrics {
    pub tally: Arc<Tally>,
    pub board: Arc<Board>,
}

impl Metrics {
    /// The exposition, as of now, for `routing`.
    pub fn render(&self, routing: &Routing) -> String {
        let scrape = Scrape {
            tally: self.tally.clone(),
            board: self.board.view(),
            routing: Snapshot::of(routing),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// What a scrape copies out of the routing snapshot (a collector must own
/// what it encodes).
const TREE_STATES: [TreeState; 5] = [
    TreeState::Fresh,
    TreeState::Behind,
    TreeState::MidSync,
    TreeState::Missing,
    TreeState::Unverified,
];

#[derive(Debug)]
struct Snapshot {
    mirrors: Vec<MirrorRow>,
    geo_built: u64,
    reloads_applied: u64,
    reloads_failed: u64,
    reload_failing: bool,
}

#[derive(Debug)]
struct MirrorRow {
    name: Arc<str>,
    eligible: bool,
    health: Health,
    since: SystemTime,
    trees: Option<Arc<[TreeStatus]>>,
}

impl Snapshot {
    fn of(r: &Routing) -> Snapshot {
        Snapshot {
            mirrors: r
                .table
                .mirrors()
                .iter()
                .map(|m| MirrorRow {
                    name: m.name.clone(),
                    eligible: m.status.eligible,
                    health: m.status.health,
                    since: m.status.since,
                    trees: m.status.trees.clone(),
                })
                .collect(),
            geo_built: r.geo.build_epoch(),
            reloads_applied: r.reload.applied,
            reloads_failed: r.reload.failed,
            reload_failing: r.reload.last_error.is_some(),
        }
    }
}

#[derive(Debug)]
struct Scrape {
    tally: Arc<Tally>,
    board: BoardView,
    routing: Snapshot,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One metric with one label, a sample per value.
fn labelled<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    label: &str,
    rows: impl IntoIterator<Item = (V, f64)>,
) -> Result<(), Error>
where
    V: AsRef<str>,
{
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (value, v) in rows {
        let labels = [(label, value.as_ref())];
        sample(m.encode_family(&labels)?, ty, v)?;
    }
    Ok(())
}

fn sample(mut m: MetricEncoder, ty: MetricType, v: f64) -> Result<(), Error> {
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&(v as u64), None),
        _ => m.encode_gauge(&v),
    }
}

fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    v: f64,
) -> Result<(), Error> {
    sample(enc.encode_descriptor(name, help, None, ty)?, ty, v)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        self.requests(&mut enc)?;
        self.mirrors(&mut enc)?;
        self.probes(&mut enc)?;
        self.service(&mut enc)?;
        process(&mut enc)
    }
}

impl Scrape {
    fn requests(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let t = &self.tally;
        let per_mirror: Vec<(Arc<str>, f64)> = self
            .routing
            .mirrors
            .iter()
            .map(|m| {
                let n = t.mirror(&m.name).map_or(0, |s| s.total());
                (m.name.clone(), n as f64)
            })
            .collect();
        labelled(
            enc,
            "distri_redirects",
            "Redirects to each configured mirror.",
            MetricType::Counter,
            "mirror",
            per_mirror.iter().map(|(n, v)| (n.clone(), *v)),
        )?;
        let to_mirrors: f64 = per_mirror.iter().map(|(_, v)| v).sum();
        let mut outcomes = vec![
            ("mirror", to_mirrors),
            ("origin_no_candidate", t.origin.total() as f64),
        ];
        outcomes.extend(Other::ALL.iter().map(|&o| (o.label(), t.others(o) as f64)));
        labelled(
            enc,
            "distri_requests",
            "Requests by outcome: mirror, origin_no_candidate, origin_not_release, \
             bad_request (400, and 404 on the admin listener), method_not_allowed (405), \
             health, page.",
            MetricType::Counter,
            "outcome",
            outcomes,
        )?;
        let (buckets, sum_ns) = t.latency.read();
        // Per-bucket counts: the encoder makes them cumulative.
        let bounds: Vec<(f64, u64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let upper = LATENCY_BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
                (upper, n)
            })
            .collect();
        let count = buckets.iter().sum();
        let mut m = enc.encode_descriptor(
            "distri_request_duration_seconds",
            "Time in the handler, from the parsed request to the response.",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &bounds, None)
    }

    fn mirrors(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let ms = &self.routing.mirrors;
        labelled(
            enc,
            "distri_mirror_eligible",
            "1 when the mirror may be chosen: answering, fast enough, and some tree verified (which files it gets: distri_mirror_tree_state).",
            MetricType::Gauge,
            "mirror",
            ms.iter().map(|m| (m.name.clone(), m.eligible as u8 as f64)),
        )?;
        labelled(
            enc,
            "distri_mirror_up",
            "The mirror's health: 1 up, 0 down, -1 not probed yet.",
            MetricType::Gauge,
            "mirror",
            ms.iter().map(|m| {
                let v = match m.health {
                    Health::Up => 1.0,
                    Health::Down => 0.0,
                    Health::Unknown => -1.0,
                };
                (m.name.clone(), v)
            }),
        )?;
        labelled(
            enc,
            "distri_mirror_last_transition_timestamp_seconds",
            "When the mirror entered its current state.",
            MetricType::Gauge,
            "mirror",
            ms.iter().map(|m| (m.name.clone(), secs(m.since))),
        )?;
        let seen = |name: &str| self.board.mirrors.get(name);
        labelled(
            enc,
            "distri_mirror_latency_seconds",
            "Moving average of the mirror's probe latency.",
            MetricType::Gauge,
            "mirror",
            ms.iter().filter_map(|m| {
                let l = seen(&m.name)?.latency?;
                Some((m.name.clone(), l.as_secs_f64()))
            }),
        )?;
        let mut fresh = enc.encode_descriptor(
            "distri_mirror_release_fresh",
            "1 when the mirror's index of the release matches the origin's, 0 when it differs.",
            None,
            MetricType::Gauge,
        )?;
        for m in ms {
            let Some(s) = seen(&m.name) else { continue };
            for (release, f) in &s.fresh {
                let Some(f) = f else { continue };
                let labels = [("mirror", &*m.name), ("release", release.as_str())];
                fresh
                    .encode_family(&labels)?
                    .encode_gauge(&(*f as u8 as f64))?;
            }
        }
        self.tree_states(enc)
    }

    /// One series per state of each tree, 1 for the state it is in: alert
    /// on `state="fresh"` staying 0, graph how long mirrors lag.
    fn tree_states(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let mut m = enc.encode_descriptor(
            "distri_mirror_tree_state",
            "Each tree of each release on each mirror: 1 for the state the last round found (fresh, behind, mid-sync, missing, unverified).",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.routing.mirrors {
            for t in row.trees.iter().flat_map(|t| t.iter()) {
                for state in TREE_STATES {
                    let labels = [
                        ("mirror", &*row.name),
                        ("release", &*t.release),
                        ("tree", t.tree.as_str()),
                        ("state", &state.to_string()),
                    ];
                    let v = (t.state == state) as u8 as f64;
                    m.encode_family(&labels)?.encode_gauge(&v)?;
                }
            }
        }
        Ok(())
    }

    fn probes(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let b = &self.board;
        single(
            enc,
            "distri_probe_rounds",
            "Mirror probe rounds.",
            MetricType::Counter,
            b.rounds as f64,
        )?;
        single(
            enc,
            "distri_probe_requests",
            "HTTP requests the probes sent, to the origin and the mirrors.",
            MetricType::Counter,
            crate::probe::check::REQUESTS.load(std::sync::atomic::Ordering::Relaxed) as f64,
        )?;
        labelled(
            enc,
            "distri_probe_failures",
            "Failed mirror probe rounds, by kind of failure.",
            MetricType::Counter,
            "kind",
            KINDS
                .iter()
                .map(|&k| (k, b.failures.get(k).copied().unwrap_or(0) as f64)),
        )?;
        single(
            enc,
            "distri_origin_reachable",
            "1 when the last fetch of the origin's index succeeded.",
            MetricType::Gauge,
            b.origin.reachable as u8 as f64,
        )?;
        let now = SystemTime::now();
        if let Some(fetched) = b.origin.fetched {
            let age = now.duration_since(fetched).unwrap_or_default();
            single(
                enc,
                "distri_origin_index_age_seconds",
                "Time since the origin's index was last fetched successfully.",
                MetricType::Gauge,
                age.as_secs_f64(),
            )?;
        }
        if let Some(changed) = b.origin.changed {
            single(
                enc,
                "distri_origin_index_changed_timestamp_seconds",
                "When the origin's index was last seen to change.",
                MetricType::Gauge,
                secs(changed),
            )?;
        }
        Ok(())
    }

    fn service(&self, enc: &mut DescriptorEncoder) -> Result<(), Error> {
        let r = &self.routing;
        single(
            enc,
            "distri_geoip_build_timestamp_seconds",
            "When the GeoIP database in use was built (its metadata).",
            MetricType::Gauge,
            r.geo_built as f64,
        )?;
        labelled(
            enc,
            "distri_reloads",
            "Reloads of the config, GeoIP database or certificate: applied, or failed (refused).",
            MetricType::Counter,
            "result",
            [
                ("applied", r.reloads_applied as f64),
                ("failed", r.reloads_failed as f64),
            ],
        )?;
        single(
            enc,
            "distri_reload_failing",
            "1 while the last reload was refused and not fixed since.",
            MetricType::Gauge,
            r.reload_failing as u8 as f64,
        )?;
        let mut info = enc.encode_descriptor(
            "distri_build",
            "The running version.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])
    }
}

/// The usual process metrics, from /proc (Linux only; absent elsewhere).
fn process(enc: &mut DescriptorEncoder) -> Result<(), Error> {
    let Some(p) = ProcessStats::read() else {
        return Ok(());
    };
    single(
        enc,
        "process_cpu_seconds",
        "User and system CPU time.",
        MetricType::Counter,
        p.cpu_seconds,
    )?;
    single(
        enc,
        "process_resident_memory_bytes",
        "Resident memory.",
        MetricType::Gauge,
        p.resident_bytes,
    )?;
    single(
        enc,
        "process_virtual_memory_bytes",
        "Virtual memory.",
        MetricType::Gauge,
        p.virtual_bytes,
    )?;
    single(
        enc,
        "process_open_fds",
        "Open file descriptors.",
        MetricType::Gauge,
        p.open_fds,
    )?;
    single(
        enc,
        "process_start_time_seconds",
        "Start time since the Unix epoch.",
        MetricType::Gauge,
        p.start_time,
    )?;
    single(
        enc,
        "process_threads",
        "Threads.",
        MetricType::Gauge,
        p.threads,
    )
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    start_time: f64,
    threads: f64,
}

/// Clock ticks per second of /proc's times: 100 on every Linux port
/// (USER_HZ), whatever the kernel's internal rate.
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may hold spaces: state is 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
                .map(|k| k * 1024.0)
        };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            resident_bytes: kb("VmRSS:")?,
            virtual_bytes: kb("VmSize:")?,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as f64,
            start_time: boot + field(22)? / USER_HZ,
            threads: field(20)?,
        })
    }
}
