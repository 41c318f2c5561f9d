//! What the request path counts, for metrics and the status page.
//!
//! Each request adds once to where it went: a mirror's or the origin's
//! counter for the client's grid cell (so one add counts the redirect and
//! feeds the coverage map), or the counter of its outcome. Handler time
//! adds to one histogram bucket and a sum. No lock, no allocation, no label
//! lookup: a request adds to counters resolved, by mirror id, when the
//! publisher published the table ([`Tally::slots`]). Counters belong to
//! mirror names, so a reload that reorders or changes mirrors keeps them.
//!
//! Readers (metrics, the status page) sum what they need; no client address
//! is ever kept, only the 5-degree cell it was located in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::geo::Coord;
use crate::table::Table;

/// The coverage grid: 5-degree cells, rows from the north.
pub const CELL_DEG: f64 = 5.0;
pub const COLS: usize = 72;
pub const ROWS: usize = 36;
pub const CELLS: usize = COLS * ROWS;
/// The slot of clients without coordinates, after the cells.
pub const UNPLACED: usize = CELLS;

/// The cell a client is in, or [`UNPLACED`].
#[inline]
pub fn cell_of(at: Option<Coord>) -> usize {
    let Some(c) = at else { return UNPLACED };
    let row = ((90.0 - c.lat) / CELL_DEG) as usize;
    let col = ((c.lon + 180.0) / CELL_DEG) as usize;
    row.min(ROWS - 1) * COLS + col.min(COLS - 1)
}

/// The middle of a cell.
pub fn cell_centre(cell: usize) -> Coord {
    let (row, col) = (cell / COLS, cell % COLS);
    let lat = 90.0 - (row as f64 + 0.5) * CELL_DEG;
    let lon = -180.0 + (col as f64 + 0.5) * CELL_DEG;
    Coord::new(lat, lon).expect("cells lie on the globe")
}

/// Requests sent to one place, by the client's cell.
#[derive(Debug)]
pub struct Sent {
    cells: Box<[AtomicU64]>,
}

impl Default for Sent {
    fn default() -> Sent {
        Sent {
            cells: (0..=CELLS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Sent {
    #[inline]
    pub fn add(&self, cell: usize) {
        if let Some(c) = self.cells.get(cell) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn total(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Every slot's count, cells then [`UNPLACED`].
    pub fn counts(&self) -> Vec<u64> {
        self.cells.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// Outcomes other than a redirect to a current release's mirror or origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Other {
    /// To the origin: the path is not in a current release.
    NotRelease = 0,
    BadRequest,
    MethodNotAllowed,
    Health,
    /// `?mirrorlist`, the status page, its JSON, metrics.
    Page,
}

impl Other {
    pub const ALL: [Other; 5] = [
        Other::NotRelease,
        Other::BadRequest,
        Other::MethodNotAllowed,
        Other::Health,
        Other::Page,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Other::NotRelease => "origin_not_release",
            Other::BadRequest => "bad_request",
            Other::MethodNotAllowed => "method_not_allowed",
            Other::Health => "health",
            Other::Page => "page",
        }
    }
}

/// Upper bounds of the handler-time buckets, in nanoseconds; the last
/// bucket is everything above.
pub const LATENCY_BOUNDS_NS: [u64; 9] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000, 10_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// Shards of the histogram: nearly every request lands in the same bucket,
/// and one counter added to by every serving thread would move its cache
/// line between cores on each request (a microsecond per request in the
/// keep-alive A/B). Each thread adds to the shard of its own.
const SHARDS: usize = 16;

/// One shard, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

/// A histogram of handler time: a bucket add and a sum add per request,
/// in the calling thread's shard.
#[derive(Debug, Default)]
pub struct Latency {
    shards: [Shard; SHARDS],
}

/// This thread's shard.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static MINE: usize = (NEXT.fetch_add(1, Relaxed) as usize) % SHARDS;
    }
    MINE.with(|s| *s)
}

impl Latency {
    #[inline]
    pub fn record(&self, ns: u64) {
        let b = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        let s = &self.shards[shard()];
        s.buckets[b].fetch_add(1, Relaxed);
        s.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Per-bucket counts (not cumulative), and the sum in nanoseconds.
    pub fn read(&self) -> ([u64; BUCKETS], u64) {
        let buckets =
            std::array::from_fn(|i| self.shards.iter().map(|s| s.buckets[i].load(Relaxed)).sum());
        let sum = self.shards.iter().map(|s| s.sum_ns.load(Relaxed)).sum();
        (buckets, sum)
    }
}

/// Every request's count since the start.
#[derive(Debug)]
pub struct Tally {
    /// Reads the CPU's time-stamp counter where it can: a sixth of the
    /// cost of two `Instant::now()` per request (benches/RESULTS.md).
    pub clock: quanta::Clock,
    /// Sent to the origin because no mirror was a candidate.
    pub origin: Sent,
    other: [AtomicU64; Other::ALL.len()],
    pub latency: Latency,
    /// Each mirror's counters, by name; only the publisher adds names.
    mirrors: Mutex<HashMap<Arc<str>, Arc<Sent>>>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            clock: quanta::Clock::new(),
            origin: Sent::default(),
            other: Default::default(),
            latency: Latency::default(),
            mirrors: Mutex::default(),
        }
    }
}

impl Tally {
    #[inline]
    pub fn other(&self, o: Other) {
        self.other[o as usize].fetch_add(1, Relaxed);
    }

    pub fn others(&self, o: Other) -> u64 {
        self.other[o as usize].load(Relaxed)
    }

    /// The counters of `table`'s mirrors, by id, for requests to add to.
    /// Off the request path: it takes a lock and may allocate.
    pub fn slots(&self, table: &Table) -> Arc<[Arc<Sent>]> {
        let mut by_name = self.mirrors.lock().unwrap_or_else(|e| e.into_inner());
        table
            .mirrors()
            .iter()
            .map(|m| by_name.entry(m.name.clone()).or_default().clone())
            .collect()
    }

    /// A mirror's counters, if it was ever in a published table.
    pub fn mirror(&self, name: &str) -> Option<Arc<Sent>> {
        let by_name = self.mirrors.lock().unwrap_or_else(|e| e.into_inner());
        by_name.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_the_globe_and_centres_round_trip() {
        assert_eq!(cell_of(None), UNPLACED);
        assert_eq!(cell_of(Coord::new(90.0, -180.0)), 0);
        assert_eq!(cell_of(Coord::new(-90.0, 180.0)), CELLS - 1);
        for cell in [0, 1, 71, 72, 1000, CELLS - 1] {
            assert_eq!(cell_of(Some(cell_centre(cell))), cell);
        }
        // Zürich: 47.4 N, 8.5 E is row 8, column 37.
        assert_eq!(cell_of(Coord::new(47.4, 8.5)), 8 * COLS + 37);
    }

    #[test]
    fn latency_buckets_by_upper_bound() {
        let l = Latency::default();
        for ns in [1, 500, 501, 20_000_000] {
            l.record(ns);
        }
        let (b, sum) = l.read();
        assert_eq!((b[0], b[1], b[9]), (2, 1, 1));
        assert_eq!(sum, 20_001_002);
    }
}
