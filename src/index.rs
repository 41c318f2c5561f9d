//! A spatial index of eligible mirrors, built once per published table so
//! that selection looks at a handful of mirrors, not all of them.
//!
//! The globe is cut into cells of `CELL_DEG` degrees. For each cell the
//! index keeps every unrestricted eligible mirror that can be in the band of
//! *some* point of the cell. With `c` the cell's centre and `r` the farthest
//! any point of the cell is from `c`, for any client `x` in the cell and any
//! mirror `m`, `d(c,m) - r <= d(x,m) <= d(c,m) + r`. So the nearest mirror of
//! `x` is at most `U = min over m of d(c,m) + r`, the band of `x` reaches at
//! most `band_limit(U)`, and a mirror with `d(c,m) - r > band_limit(U)` is
//! in no band of the cell. Mirrors restricted to some countries are kept per
//! country instead: their candidacy depends on the client's country, and a
//! nearer restricted mirror only narrows a band.

use crate::config::Selection;
use crate::geo::{Coord, Country};
use crate::select::band_limit;
use crate::table::{Mirror, MirrorId};

const CELL_DEG: f64 = 5.0;
const ROWS: usize = (180.0 / CELL_DEG) as usize;
const COLS: usize = (360.0 / CELL_DEG) as usize;

/// Candidate lists per cell, in one flat array.
#[derive(Debug, Default)]
pub struct Grid {
    /// `ids[offsets[i]..offsets[i + 1]]` are cell `i`'s candidates.
    offsets: Vec<u32>,
    ids: Vec<MirrorId>,
}

impl Grid {
    /// Indexes `members` (ids into `mirrors`).
    pub fn build(mirrors: &[Mirror], members: &[MirrorId], band: &Selection) -> Grid {
        if members.is_empty() {
            return Grid::default();
        }
        let mut offsets = Vec::with_capacity(ROWS * COLS + 1);
        let mut ids = Vec::new();
        let mut dist = vec![0.0; members.len()];
        offsets.push(0);
        for row in 0..ROWS {
            for col in 0..COLS {
                let (centre, r) = cell_geometry(row, col);
                for (d, &id) in dist.iter_mut().zip(members) {
                    *d = centre.distance_km(mirrors[id].coord);
                }
                let reach = band_limit(dist.iter().fold(f64::INFINITY, |u, d| u.min(d + r)), band);
                ids.extend(
                    members
                        .iter()
                        .zip(&dist)
                        .filter(|(_, d)| *d - r <= reach)
                        .map(|(&id, _)| id),
                );
                offsets.push(ids.len() as u32);
            }
        }
        Grid { offsets, ids }
    }

    /// Candidates for a client at `at`.
    pub fn cell(&self, at: Coord) -> &[MirrorId] {
        if self.offsets.is_empty() {
            return &[];
        }
        let row = (((at.lat + 90.0) / CELL_DEG) as usize).min(ROWS - 1);
        let col = (((at.lon + 180.0) / CELL_DEG) as usize).min(COLS - 1);
        let i = row * COLS + col;
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// A cell's centre and an upper bound of the distance from it to any point
/// of the cell (the farthest of its corners and edge midpoints, with a
/// margin for rounding).
fn cell_geometry(row: usize, col: usize) -> (Coord, f64) {
    let lat0 = -90.0 + row as f64 * CELL_DEG;
    let lon0 = -180.0 + col as f64 * CELL_DEG;
    let centre = Coord {
        lat: lat0 + CELL_DEG / 2.0,
        lon: lon0 + CELL_DEG / 2.0,
    };
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
    (centre, r * 1.01 + 1.0)
}

/// Everything selection needs precomputed for one table.
#[derive(Debug, Default)]
pub struct Index {
    /// Unrestricted eligible mirrors.
    pub all: Grid,
    /// Unrestricted eligible mirrors that serve IPv6.
    pub v6: Grid,
    /// Eligible mirrors restricted to some countries, by country.
    by_country: Vec<Vec<MirrorId>>,
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
                by_country[c.slot()].push(i);
            }
        }
        Index {
            all: Grid::build(mirrors, &open, band),
            v6: Grid::build(mirrors, &open_v6, band),
            by_country,
        }
    }

    /// Eligible mirrors restricted to a set of countries that includes `c`.
    pub fn restricted(&self, c: Option<Country>) -> &[MirrorId] {
        match c {
            Some(c) => self.by_country.get(c.slot()).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }
}
