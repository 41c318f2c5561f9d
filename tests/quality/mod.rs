//! What a right choice is, for measuring GeoIP databases by the mirrors
//! they lead selection to: shared by `tests/shipped_geoip.rs` and
//! `examples/geoip_quality.rs` (which includes it by path).

use distri_redirector::config::{Mirror, Selection};
use distri_redirector::geo::Coord;
use distri_redirector::table::{Status, Table};

/// A table of these mirrors (name, latitude, longitude), all up.
pub fn table(mirrors: &[(&str, f64, f64)]) -> Table {
    let mirrors: Vec<Mirror> = mirrors
        .iter()
        .map(|&(name, lat, lon)| Mirror {
            name: name.into(),
            url: format!("https://{name}.example.org/"),
            coord: Coord::new(lat, lon).unwrap(),
            weight: 1.0,
            countries: None,
            ipv6: true,
        })
        .collect();
    Table::from_config(&mirrors, Status::assumed_up(), Selection::default())
}

/// Whether `chosen` is within max(1.3 x nearest, nearest + 400 km) of
/// `truth`, where the client really is.
pub fn right(table: &Table, truth: Coord, chosen: Option<usize>) -> bool {
    let dist = |id: usize| truth.distance_km(table.get(id).coord);
    let nearest = (0..table.mirrors().len())
        .map(dist)
        .fold(f64::INFINITY, f64::min);
    chosen.is_some_and(|id| dist(id) <= (nearest * 1.3).max(nearest + 400.0))
}
