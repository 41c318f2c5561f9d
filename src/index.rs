//! A spatial index of eligible mirrors, built once per published table so
//! that selection reads a few contiguous entries instead of every mirror.
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

/// What selection reads of a candidate, stored inline in its cell.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub at: UnitVec,
    /// The largest dot product any point of the cell can have with this
    /// mirror (its nearest possible distance, `d(c,m) - r`, as a dot
    /// product); cells hold entries in decreasing order of it. 1 in
    /// per-country lists.
    pub max_dot: f64,
    pub inv_weight: f64,
    pub seed: u64,
    pub id: u32,
    pub ipv6: bool,
}

impl Entry {
    fn new(id: MirrorId, m: &Mirror, max_dot: f64) -> Entry {
        Entry {
            at: m.coord.unit(),
            max_dot,
            inv_weight: m.inv_weight,
            seed: m.seed,
            id: id as u32,
            ipv6: m.ipv6,
        }
    }
}

/// Candidate lists per cell, in one flat array.
#[derive(Debug, Default)]
pub struct Grid {
    /// `entries[offsets[i]..offsets[i + 1]]` are cell `i`'s candidates.
    offsets: Vec<u32>,
    entries: Vec<Entry>,
}

impl Grid {
    /// Indexes `members` (ids into `mirrors`).
    pub fn build(mirrors: &[Mirror], members: &[MirrorId], band: &Selection) -> Grid {
        if members.is_empty() {
            return Grid::default();
        }
        let at: Vec<UnitVec> = members.iter().map(|&id| mirrors[id].coord.unit()).collect();
        let mut offsets = Vec::with_capacity(ROWS * COLS + 1);
        let mut entries = Vec::new();
        let mut dots = vec![0.0; members.len()];
        let radius: Vec<f64> = (0..ROWS).map(row_radius).collect();
        offsets.push(0);
        for (row, &r) in radius.iter().enumerate() {
            for col in 0..COLS {
                let centre = cell_centre(row, col).unit();
                for (d, a) in dots.iter_mut().zip(&at) {
                    *d = centre.dot(*a);
                }
                let nearest = km_from_dot(dots.iter().copied().fold(f64::NEG_INFINITY, f64::max));
                let keep = dot_from_km(band_limit(nearest + r, band) + r);
                let start = entries.len();
                for (i, &d) in dots.iter().enumerate().filter(|(_, d)| **d >= keep) {
                    let nearest_possible = (km_from_dot(d) - r).max(0.0);
                    entries.push(Entry::new(
                        members[i],
                        &mirrors[members[i]],
                        dot_from_km(nearest_possible),
                    ));
                }
                entries[start..].sort_by(|a, b| b.max_dot.total_cmp(&a.max_dot));
                offsets.push(entries.len() as u32);
            }
        }
        Grid { offsets, entries }
    }

    /// Candidates for a client at `at`, those that can be nearest first.
    #[inline]
    pub fn cell(&self, at: Coord) -> &[Entry] {
        if self.offsets.is_empty() {
            return &[];
        }
        let row = (((at.lat + 90.0) / CELL_DEG) as usize).min(ROWS - 1);
        let col = (((at.lon + 180.0) / CELL_DEG) as usize).min(COLS - 1);
        let i = row * COLS + col;
        &self.entries[self.offsets[i] as usize..self.offsets[i + 1] as usize]
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
    /// Unrestricted eligible mirrors.
    pub all: Grid,
    /// Unrestricted eligible mirrors that serve IPv6.
    pub v6: Grid,
    /// Eligible mirrors restricted to some countries, by country.
    by_country: Vec<Vec<Entry>>,
    /// The choice for clients without coordinates, by key slot: among the
    /// unrestricted, and among the unrestricted that serve IPv6.
    unplaced: Vec<u32>,
    unplaced_v6: Vec<u32>,
}

impl Index {
    pub fn build(mirrors: &[Mirror], eligible: &[MirrorId], band: &Selection) -> Index {
        let open: Vec<MirrorId> = eligible
            .iter()
            .copied()
            .filter(|&i| mirrors[i].countries.is_none())
            .collect();
        let open_v6: Vec<MirrorId> = open.iter().copied().filter(|&i| mirrors[i].ipv6).collect();
        let mut by_country = vec![Vec::new(); Country::SLOTS];
        for &i in eligible {
            for c in mirrors[i].countries.iter().flat_map(|cs| cs.iter()) {
                by_country[c.slot()].push(Entry::new(i, &mirrors[i], 1.0));
            }
        }
        Index {
            all: Grid::build(mirrors, &open, band),
            v6: Grid::build(mirrors, &open_v6, band),
            by_country,
            unplaced: unplaced(mirrors, &open),
            unplaced_v6: unplaced(mirrors, &open_v6),
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

    /// Eligible mirrors restricted to a set of countries that includes `c`.
    #[inline]
    pub fn restricted(&self, c: Option<Country>) -> &[Entry] {
        match c {
            Some(c) => self.by_country.get(c.slot()).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }
}

/// Rendezvous winners for every key slot, or nothing without members.
fn unplaced(mirrors: &[Mirror], members: &[MirrorId]) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    (0..UNPLACED_SLOTS)
        .filter_map(|slot| {
            let key = slot_key(slot);
            rendezvous(
                members
                    .iter()
                    .map(|&id| (id, mirrors[id].inv_weight, mirrors[id].seed)),
                key,
            )
        })
        .map(|id| id as u32)
        .collect()
}
