//! A spatial index of eligible mirrors, built once per published table so
//! that selection reads a few cell slots instead of every mirror.
//!
//! The globe is cut into cells of `CELL_DEG` degrees. With `c` a cell's
//! centre and `r` the farthest any point of the cell is from `c`, for any
//! client `x` in the cell and mirror `m`:
//! `d(c,m) - r <= d(x,m) <= d(c,m) + r`. So the nearest mirror of `x` is at
//! most `U = min over m of d(c,m) + r` away, the band of `x` reaches at most
//! `band_limit(U)`, and a mirror with `d(c,m) - r > band_limit(U)` is in no
//! band of the cell: the cell keeps the others, sorted by `d(c,m) - r`, the
//! nearest each can be, so a search stops as soon as that passes what it
//! looks for (compared as dot products: no trigonometry per entry).
//! Mirrors restricted to some countries are kept per country instead: their
//! candidacy depends on the client's country, and a nearer restricted mirror
//! only narrows a band.

use crate::config::Selection;
use crate::geo::{Coord, Country, UnitVec, dot_from_km, km_from_dot};
use crate::select::{UNPLACED_SLOTS, band_limit, rendezvous, slot_key};
use crate::table::{Mirror, MirrorId};

const CELL_DEG: f64 = 2.0;
const ROWS: usize = (180.0 / CELL_DEG) as usize;
const COLS: usize = (360.0 / CELL_DEG) as usize;

/// What selection reads of an eligible mirror, in one compact array.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub at: UnitVec,
    pub inv_weight: f64,
    pub seed: u64,
    pub id: u32,
    pub ipv6: bool,
}

/// A candidate in a cell: which point, and the largest dot product any
/// point of the cell can have with it (its nearest possible distance,
/// `d(c,m) - r`, as a dot product, rounded up). Cells hold slots in
/// decreasing order of it. Eight bytes, so that cells far from every mirror,
/// whose bands are wide, stay small.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub point: u32,
    pub max_dot: f32,
}

/// `x` as an `f32` no smaller than it.
fn f32_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x { f.next_up() } else { f }
}

/// Candidate lists per cell, in one flat array.
#[derive(Debug, Default)]
pub struct Grid {
    /// `slots[offsets[i]..offsets[i + 1]]` are cell `i`'s candidates.
    offsets: Vec<u32>,
    slots: Vec<Slot>,
}

impl Grid {
    /// Indexes `members` (indices into `points`).
    fn build(points: &[Point], members: &[u32], band: &Selection) -> Grid {
        if members.is_empty() {
            return Grid::default();
        }
        let mut offsets = Vec::with_capacity(ROWS * COLS + 1);
        let mut slots = Vec::new();
        let mut dots = vec![0.0; members.len()];
        offsets.push(0);
        for row in 0..ROWS {
            let r = row_radius(row);
            for col in 0..COLS {
                let centre = cell_centre(row, col).unit();
                for (d, &m) in dots.iter_mut().zip(members) {
                    *d = centre.dot(points[m as usize].at);
                }
                let nearest = km_from_dot(dots.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                let keep = dot_from_km(band_limit(nearest + r, band) + r);
                let start = slots.len();
                for (&m, &d) in members.iter().zip(&dots).filter(|(_, d)| **d >= keep) {
                    let nearest_possible = (km_from_dot(d) - r).max(0.0);
                    slots.push(Slot {
                        point: m,
                        max_dot: f32_up(dot_from_km(nearest_possible)),
                    });
                }
                slots[start..].sort_by(|a, b| b.max_dot.total_cmp(&a.max_dot));
                offsets.push(slots.len() as u32);
            }
        }
        slots.shrink_to_fit();
        Grid { offsets, slots }
    }

    /// Candidates for a client at `at`, those that can be nearest first.
    #[inline]
    pub fn cell(&self, at: Coord) -> &[Slot] {
        if self.offsets.is_empty() {
            return &[];
        }
        let row = (((at.lat + 90.0) / CELL_DEG) as usize).min(ROWS - 1);
        let col = (((at.lon + 180.0) / CELL_DEG) as usize).min(COLS - 1);
        let i = row * COLS + col;
        &self.slots[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

fn cell_centre(row: usize, col: usize) -> Coord {
    Coord {
        lat: -90.0 + (row as f64 + 0.5) * CELL_DEG,
        lon: -180.0 + (col as f64 + 0.5) * CELL_DEG,
    }
}

/// An upper bound of the distance from a cell's centre to any point of the
/// cell, for the cells of `row`: the farthest of its corners and edge
/// midpoints, with a margin for rounding.
fn row_radius(row: usize) -> f64 {
    let centre = cell_centre(row, 0);
    let (lat0, lon0) = (centre.lat - CELL_DEG / 2.0, centre.lon - CELL_DEG / 2.0);
    let mut r: f64 = 0.0;
    for dlat in [0.0, 0.5, 1.0] {
        for dlon in [0.0, 0.5, 1.0] {
            let p = Coord {
                lat: lat0 + dlat * CELL_DEG,
                lon: lon0 + dlon * CELL_DEG,
            };
            r = r.max(centre.distance_km(p));
        }
    }
    r * 1.01 + 1.0
}

/// Everything selection needs precomputed for one table.
#[derive(Debug, Default)]
pub struct Index {
    /// Every eligible mirror.
    points: Vec<Point>,
    /// Unrestricted eligible mirrors.
    all: Grid,
    /// Unrestricted eligible mirrors that serve IPv6; `None` when that is
    /// all of them, the common case, so the grid is not stored twice.
    v6: Option<Grid>,
    /// Eligible mirrors restricted to some countries (points), by country.
    by_country: Vec<Vec<u32>>,
    /// The choice for clients without coordinates, by key slot: among the
    /// unrestricted, and among the unrestricted that serve IPv6.
    unplaced: Vec<u32>,
    unplaced_v6: Vec<u32>,
}

impl Index {
    pub fn build(mirrors: &[Mirror], eligible: &[MirrorId], band: &Selection) -> Index {
        let points: Vec<Point> = eligible
            .iter()
            .map(|&id| {
                let m = &mirrors[id];
                Point {
                    at: m.coord.unit(),
                    inv_weight: m.inv_weight,
                    seed: m.seed,
                    id: id as u32,
                    ipv6: m.ipv6,
                }
            })
            .collect();
        let open: Vec<u32> = (0..eligible.len() as u32)
            .filter(|&p| mirrors[eligible[p as usize]].countries.is_none())
            .collect();
        let open_v6: Vec<u32> = open
            .iter()
            .copied()
            .filter(|&p| points[p as usize].ipv6)
            .collect();
        let mut by_country = vec![Vec::new(); Country::SLOTS];
        for (p, &id) in eligible.iter().enumerate() {
            for c in mirrors[id].countries.iter().flat_map(|cs| cs.iter()) {
                by_country[c.slot()].push(p as u32);
            }
        }
        let v6 = (open_v6.len() != open.len()).then(|| Grid::build(&points, &open_v6, band));
        Index {
            all: Grid::build(&points, &open, band),
            v6,
            by_country,
            unplaced: unplaced(&points, &open),
            unplaced_v6: unplaced(&points, &open_v6),
            points,
        }
    }

    #[inline]
    pub fn point(&self, p: u32) -> &Point {
        &self.points[p as usize]
    }

    /// The grid of unrestricted mirrors, or of those that serve IPv6.
    #[inline]
    pub fn grid(&self, need_v6: bool) -> &Grid {
        match &self.v6 {
            Some(v6) if need_v6 => v6,
            _ => &self.all,
        }
    }

    /// The precomputed choice for a client without coordinates.
    #[inline]
    pub fn unplaced(&self, slot: usize, need_v6: bool) -> Option<MirrorId> {
        let slots = if need_v6 {
            &self.unplaced_v6
        } else {
            &self.unplaced
        };
        slots.get(slot).map(|&id| id as MirrorId)
    }

    /// Eligible mirrors (points) restricted to a set of countries that
    /// includes `c`.
    #[inline]
    pub fn restricted(&self, c: Option<Country>) -> &[u32] {
        match c {
            Some(c) => self.by_country.get(c.slot()).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }
}

/// Rendezvous winners (mirror ids) for every key slot, or nothing without
/// members.
fn unplaced(points: &[Point], members: &[u32]) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    (0..UNPLACED_SLOTS)
        .filter_map(|slot| {
            let candidates = members.iter().map(|&p| {
                let p = &points[p as usize];
                (p.id as MirrorId, p.inv_weight, p.seed)
            });
            rendezvous(candidates, slot_key(slot))
        })
        .map(|id| id as u32)
        .collect()
}
