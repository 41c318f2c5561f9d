//! Where requests come from and how far they travel, over a sliding
//! window, and where a new mirror would help most.
//!
//! The request counters only grow; this module keeps snapshots of them
//! (per minute: each target's total; per hour: each target's counts by
//! cell, sparse) and subtracts, so the request path never does anything
//! for the windows. Distances are from a cell's centre to the place the
//! requests were sent (a mirror, or the origin when its place is
//! configured).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::geo::{Coord, centroids};
use crate::stats::{CELLS, cell_centre};

/// Where requests were sent: a mirror by name, or (`None`) the origin.
pub type Target = Option<Arc<str>>;

/// Cumulative counts by slot (cells, then the unplaced slot), per target.
pub type Counts = HashMap<Target, Vec<u64>>;

/// Each target's nonzero slots: (slot, count).
type Sparse = HashMap<Target, Vec<(u16, u64)>>;

pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// Snapshots of the counters.
#[derive(Default)]
pub struct Windows {
    /// Each target's total, once a minute, for the last hour.
    minutes: VecDeque<(Instant, HashMap<Target, u64>)>,
    /// Each target's nonzero cells, once an hour, for the last day.
    hours: VecDeque<(Instant, Sparse)>,
}

impl Windows {
    /// Takes the snapshots that are due at `now`.
    pub fn tick(&mut self, now: Instant, counts: &Counts) {
        let due =
            |last: Option<Instant>, every| last.is_none_or(|l| now.duration_since(l) >= every);
        if due(self.minutes.back().map(|m| m.0), MINUTE) {
            let totals = counts
                .iter()
                .map(|(t, c)| (t.clone(), c.iter().sum()))
                .collect();
            self.minutes.push_back((now, totals));
            while self.minutes.len() > 61 {
                self.minutes.pop_front();
            }
        }
        if due(self.hours.back().map(|h| h.0), HOUR) {
            let sparse = counts
                .iter()
                .map(|(t, c)| {
                    let nonzero = c
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(i, n)| (i as u16, *n))
                        .collect();
                    (t.clone(), nonzero)
                })
                .collect();
            self.hours.push_back((now, sparse));
            while self.hours.len() > 25 {
                self.hours.pop_front();
            }
        }
    }

    /// Each target's requests over the last hour (or since the start).
    pub fn last_hour(&self, counts: &Counts) -> HashMap<Target, u64> {
        let base = self.minutes.front().map(|m| &m.1);
        counts
            .iter()
            .map(|(t, c)| {
                let then = base.and_then(|b| b.get(t)).copied().unwrap_or(0);
                (t.clone(), c.iter().sum::<u64>().saturating_sub(then))
            })
            .collect()
    }

    /// Counts by slot over the last day (or since the start).
    pub fn last_day(&self, counts: &Counts) -> Counts {
        let base = self.hours.front().map(|h| &h.1);
        counts
            .iter()
            .map(|(t, c)| {
                let mut c = c.clone();
                for &(i, n) in base.and_then(|b| b.get(t)).map_or(&[][..], |v| v) {
                    if let Some(x) = c.get_mut(i as usize) {
                        *x = x.saturating_sub(n);
                    }
                }
                (t.clone(), c)
            })
            .collect()
    }
}

/// One cell's traffic over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStat {
    pub cell: usize,
    pub requests: u64,
    /// Mean distance to where they were sent, over the requests whose
    /// target's place is known.
    pub mean_km: Option<f64>,
}

/// A place where a new mirror would cut the most client-kilometres.
#[derive(Clone, Debug, PartialEq)]
pub struct Suggestion {
    pub at: Coord,
    /// The nearest country's code, as a name for the place.
    pub near: Option<String>,
    /// Requests that would travel less with a mirror there.
    pub requests: u64,
    /// How far those requests travel now, on average.
    pub mean_km_now: f64,
    /// Client-kilometres a mirror there would save over the window.
    pub km_saved: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Coverage {
    pub cells: Vec<CellStat>,
    pub requests: u64,
    /// Requests from clients without a location.
    pub unplaced: u64,
    pub suggestions: Vec<Suggestion>,
}

/// How many places to suggest.
pub const SUGGESTIONS: usize = 5;

/// Cells, distances and suggestions from a window's counts; `place` gives
/// where a target is (`None` when unknown).
pub fn coverage(window: &Counts, place: impl Fn(&Target) -> Option<Coord>) -> Coverage {
    let mut requests = vec![0u64; CELLS];
    let mut known = vec![0u64; CELLS];
    let mut km = vec![0f64; CELLS];
    let mut unplaced = 0;
    for (target, counts) in window {
        let at = place(target);
        for (cell, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            if cell >= CELLS {
                unplaced += n;
                continue;
            }
            requests[cell] += n;
            if let Some(at) = at {
                known[cell] += n;
                km[cell] += n as f64 * cell_centre(cell).distance_km(at);
            }
        }
    }
    let cells: Vec<CellStat> = (0..CELLS)
        .filter(|&c| requests[c] > 0)
        .map(|c| CellStat {
            cell: c,
            requests: requests[c],
            mean_km: (known[c] > 0).then(|| km[c] / known[c] as f64),
        })
        .collect();
    Coverage {
        requests: requests.iter().sum::<u64>() + unplaced,
        unplaced,
        suggestions: suggest(&cells),
        cells,
    }
}

/// Places considered for a new mirror: the cells with the most
/// client-kilometres now. Every cell with traffic still counts toward what
/// each place would save; this bounds a rendering to a fraction of a second.
const CANDIDATES: usize = 300;

/// Greedily, the cells where a mirror saves the most client-kilometres,
/// each counted after the previous ones are placed.
fn suggest(cells: &[CellStat]) -> Vec<Suggestion> {
    let sources: Vec<(Coord, u64, f64)> = cells
        .iter()
        .filter_map(|c| Some((cell_centre(c.cell), c.requests, c.mean_km?)))
        .collect();
    let mut places: Vec<&(Coord, u64, f64)> = sources.iter().collect();
    places.sort_by(|a, b| (b.1 as f64 * b.2).total_cmp(&(a.1 as f64 * a.2)));
    places.truncate(CANDIDATES);
    let mut now: Vec<f64> = sources.iter().map(|s| s.2).collect();
    let mut out = Vec::new();
    for _ in 0..SUGGESTIONS {
        let best = places
            .iter()
            .map(|&&(at, _, _)| {
                let saved: f64 = sources
                    .iter()
                    .zip(&now)
                    .map(|(&(c, n, _), &cur)| n as f64 * (cur - at.distance_km(c)).max(0.0))
                    .sum();
                (at, saved)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((at, saved)) = best.filter(|b| b.1 >= 1.0) else {
            break;
        };
        let (mut n, mut travelled) = (0u64, 0f64);
        for (&(c, count, _), cur) in sources.iter().zip(now.iter_mut()) {
            let d = at.distance_km(c);
            if d < *cur {
                n += count;
                travelled += count as f64 * *cur;
                *cur = d;
            }
        }
        out.push(Suggestion {
            at,
            near: centroids().nearest(at).map(|c| c.to_string()),
            requests: n,
            mean_km_now: if n > 0 { travelled / n as f64 } else { 0.0 },
            km_saved: saved,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{UNPLACED, cell_of};

    fn counts(pairs: &[(Target, Coord, u64)]) -> Counts {
        let mut out: Counts = HashMap::new();
        for (t, at, n) in pairs {
            let v = out.entry(t.clone()).or_insert_with(|| vec![0; CELLS + 1]);
            v[cell_of(Some(*at))] += n;
        }
        out
    }

    #[test]
    fn distant_crowds_are_suggested_first() {
        let fra = Coord::new(50.1, 8.7).unwrap();
        let sydney = Coord::new(-33.9, 151.2).unwrap();
        let paris = Coord::new(48.9, 2.35).unwrap();
        let m: Target = Some(Arc::from("de-fra"));
        let mut c = counts(&[(m.clone(), sydney, 100), (m.clone(), paris, 1000)]);
        c.get_mut(&m).unwrap()[UNPLACED] = 7;
        let cov = coverage(&c, |_| Some(fra));
        assert_eq!((cov.requests, cov.unplaced), (1107, 7));
        assert_eq!(cov.cells.len(), 2);
        let s = &cov.suggestions[0];
        assert!(s.at.distance_km(sydney) < 400.0, "{s:?}");
        assert_eq!(s.requests, 100);
        assert!(s.mean_km_now > 15_000.0, "{s:?}");
        // Once Sydney is served, Paris is the only one left to help.
        assert!(cov.suggestions.len() <= 2);
    }

    #[test]
    fn windows_subtract_what_came_before() {
        let m: Target = Some(Arc::from("m"));
        let at = Coord::new(10.0, 10.0).unwrap();
        let mut w = Windows::default();
        let t0 = Instant::now();
        w.tick(t0, &counts(&[(m.clone(), at, 5)]));
        let later = counts(&[(m.clone(), at, 12)]);
        w.tick(t0 + Duration::from_secs(30), &later);
        assert_eq!(w.last_hour(&later)[&m], 7);
        assert_eq!(w.last_day(&later)[&m].iter().sum::<u64>(), 7);
    }
}
