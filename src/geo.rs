//! Places on the globe: country codes, coordinates, great-circle distance,
//! and the table of country centroids shipped in `geoip/`.
//!
//! Pure data and arithmetic; no I/O beyond the table compiled into the binary.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

/// Mean Earth radius used for great-circle distances.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// The centroid table, compiled in so that validation and fallback placement
/// never depend on a file found at run time.
const CENTROIDS_TSV: &str = include_str!("../geoip/country-centroids.tsv");

/// An ISO 3166-1 alpha-2 country code known to the centroid table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses a code that the centroid table knows, case-insensitively.
    /// Returns `None` for anything else, so an unknown code never gets in.
    pub fn parse(code: &str) -> Option<Country> {
        let c = Country::from_bytes_unchecked(code.as_bytes())?;
        centroids().get(c).map(|_| c)
    }

    fn from_bytes_unchecked(b: &[u8]) -> Option<Country> {
        match b {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).expect("country codes are ASCII")
    }

    /// How many slots a dense table by country has.
    pub const SLOTS: usize = 26 * 26;

    /// Slot in a dense table by country; lookups on the hot path are one load.
    pub fn slot(self) -> usize {
        (self.0[0] - b'A') as usize * 26 + (self.0[1] - b'A') as usize
    }

    /// The centroid of this country, from the shipped table.
    pub fn centroid(self) -> Option<Coord> {
        centroids().get(self)
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Country {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Country::parse(s).ok_or(())
    }
}

/// A point given in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coord {
    pub lat: f64,
    pub lon: f64,
}

impl Coord {
    /// A coordinate, or `None` when it is outside the valid ranges or not finite.
    pub fn new(lat: f64, lon: f64) -> Option<Coord> {
        ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
            .then_some(Coord { lat, lon })
    }

    /// Great-circle distance in kilometres (haversine).
    pub fn distance_km(self, other: Coord) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

/// A point as a unit vector: great-circle comparisons become dot products.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitVec([f64; 3]);

impl Coord {
    pub fn unit(self) -> UnitVec {
        let (sin_lat, cos_lat) = self.lat.to_radians().sin_cos();
        let (sin_lon, cos_lon) = self.lon.to_radians().sin_cos();
        UnitVec([cos_lat * cos_lon, cos_lat * sin_lon, sin_lat])
    }
}

impl UnitVec {
    /// The cosine of the angle between two points: larger is nearer.
    #[inline]
    pub fn dot(self, o: UnitVec) -> f64 {
        self.0[0] * o.0[0] + self.0[1] * o.0[1] + self.0[2] * o.0[2]
    }
}

/// Great-circle distance in kilometres for a dot product of unit vectors.
pub fn km_from_dot(dot: f64) -> f64 {
    EARTH_RADIUS_KM * dot.clamp(-1.0, 1.0).acos()
}

/// The dot product at which points are `km` apart; points nearer than `km`
/// have a larger one. Anything past the antipode is everything.
pub fn dot_from_km(km: f64) -> f64 {
    let angle = km / EARTH_RADIUS_KM;
    if angle >= std::f64::consts::PI {
        f64::NEG_INFINITY
    } else {
        angle.cos()
    }
}

/// Country centroids indexed by code.
pub struct Centroids {
    by_index: Box<[Option<Coord>; 26 * 26]>,
    len: usize,
}

impl Centroids {
    pub fn get(&self, c: Country) -> Option<Coord> {
        self.by_index[c.slot()]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The country whose centroid is nearest to `at`: a name for a place
    /// on the status page, not a border test.
    pub fn nearest(&self, at: Coord) -> Option<Country> {
        let slot = (0..Country::SLOTS)
            .filter_map(|i| Some((i, self.by_index[i]?)))
            .min_by(|a, b| at.distance_km(a.1).total_cmp(&at.distance_km(b.1)))?
            .0;
        Some(Country([
            b'A' + (slot / 26) as u8,
            b'A' + (slot % 26) as u8,
        ]))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn parse(tsv: &str) -> Centroids {
        let mut by_index = Box::new([None; 26 * 26]);
        let mut len = 0;
        for line in tsv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let mut f = line.split('\t');
            let (Some(code), Some(lat), Some(lon)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let coord = lat
                .parse()
                .ok()
                .zip(lon.parse().ok())
                .and_then(|(lat, lon)| Coord::new(lat, lon));
            if let (Some(c), Some(coord)) = (Country::from_bytes_unchecked(code.as_bytes()), coord)
            {
                by_index[c.slot()] = Some(coord);
                len += 1;
            }
        }
        Centroids { by_index, len }
    }
}

/// The shipped centroid table, parsed once.
pub fn centroids() -> &'static Centroids {
    static TABLE: LazyLock<Centroids> = LazyLock::new(|| Centroids::parse(CENTROIDS_TSV));
    &TABLE
}

/// Looks up a country code as found in a database record without
/// validating it against the table first (the record is trusted data but may
/// use codes such as "EU" that have no centroid).
pub fn country_from_record(code: &str) -> Option<Country> {
    Country::from_bytes_unchecked(code.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_the_world() {
        assert!(centroids().len() > 240, "{}", centroids().len());
        let de = Country::parse("de").unwrap();
        assert_eq!(de.as_str(), "DE");
        let c = de.centroid().unwrap();
        assert!((45.0..56.0).contains(&c.lat) && (5.0..16.0).contains(&c.lon));
    }

    #[test]
    fn unknown_codes_are_rejected() {
        for bad in ["XX", "D", "DEU", "1A", "", "ZZ"] {
            assert_eq!(Country::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn distances() {
        let frankfurt = Coord::new(50.11, 8.68).unwrap();
        let new_york = Coord::new(40.71, -74.01).unwrap();
        let d = frankfurt.distance_km(new_york);
        assert!((6150.0..6250.0).contains(&d), "{d}");
        assert_eq!(frankfurt.distance_km(frankfurt), 0.0);
        let antipode = Coord::new(-50.11, 8.68 - 180.0).unwrap();
        let half = frankfurt.distance_km(antipode);
        assert!((half - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1.0);
    }

    #[test]
    fn dot_products_agree_with_haversine() {
        let frankfurt = Coord::new(50.11, 8.68).unwrap();
        for (lat, lon) in [(40.71, -74.01), (50.2, 8.7), (-33.87, 151.21), (0.0, 0.0)] {
            let other = Coord::new(lat, lon).unwrap();
            let h = frankfurt.distance_km(other);
            let d = km_from_dot(frankfurt.unit().dot(other.unit()));
            assert!((h - d).abs() < 0.01, "{h} vs {d}");
            assert!((dot_from_km(h) - frankfurt.unit().dot(other.unit())).abs() < 1e-9);
        }
        assert_eq!(dot_from_km(30_000.0), f64::NEG_INFINITY);
    }

    #[test]
    fn coordinates_are_range_checked() {
        assert!(Coord::new(90.1, 0.0).is_none());
        assert!(Coord::new(0.0, -180.1).is_none());
        assert!(Coord::new(f64::NAN, 0.0).is_none());
    }
}
