//! Where a client is: GeoIP lookups in a MaxMind DB (`.mmdb`) file.
//!
//! Reads both record schemas in use: MaxMind's and DB-IP's nested one
//! (`country.iso_code`, `location.latitude`) and ip-location-db's flat one
//! (`country_code`, `latitude`). When a record has no coordinates, the
//! country's centroid stands in. IPv4 lookups go through a flat copy of
//! the IPv4 ranges made at open (`v4`, built by walking the search tree
//! directly, `tree`); the file itself is mapped from a private copy
//! (`file`), so only the pages IPv6 lookups touch are resident. A tree
//! may share subtrees between branches (`share` makes such files). Knows
//! nothing of HTTP.

mod file;
pub mod share;
mod tree;
mod v4;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Metadata, Reader};
use serde::Deserialize;

use crate::geo::{self, Coord, Country};
use file::{Bytes, Source as FileSource};
use v4::{V4Builder, V4Table};

/// An open database; possibly several files (ip-location-db ships one per
/// family), looked up in order.
pub struct GeoDb {
    meta: Metadata,
    /// The search tree, for what the flat table does not answer; `None`
    /// for an IPv4-only file whose table answers everything.
    reader: Option<Reader<Bytes>>,
    /// `None` when the database has no IPv4 ranges or too many to copy.
    v4: Option<V4Table>,
    path: PathBuf,
    /// The next file, asked when this one knows nothing of an address.
    next: Option<Box<GeoDb>>,
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("geoip database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error("geoip database {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("geoip database {}: its search tree is corrupt (an address runs out of bits, more paths than a walk may follow, or records past its end)", path.display())]
    Corrupt { path: PathBuf },
    #[error("geoip: no file has {family} networks ({files}); add one that does")]
    Coverage { family: &'static str, files: String },
}

/// What the database says about one address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Location {
    pub country: Option<Country>,
    pub coord: Option<Coord>,
    pub source: Source,
}

/// Where a location's coordinates came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The record's own latitude and longitude.
    Record,
    /// The centroid of the record's country.
    CountryCentroid,
    /// Nothing usable: no record, or neither coordinates nor a known country.
    Unknown,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Record => "city record",
            Source::CountryCentroid => "country centroid",
            Source::Unknown => "unknown",
        })
    }
}

impl Location {
    pub const UNKNOWN: Location = Location {
        country: None,
        coord: None,
        source: Source::Unknown,
    };
}

/// Both schemas in one shape; fields absent from a record stay `None`.
/// Strings are borrowed from the database: no allocation per lookup.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<NestedCountry<'a>>,
    /// GeoLite2 records for anycast or EU-wide networks have no `country`.
    #[serde(borrow)]
    registered_country: Option<NestedCountry<'a>>,
    location: Option<NestedLocation>,
    country_code: Option<&'a str>,
    latitude: Option<Number>,
    longitude: Option<Number>,
}

#[derive(Deserialize)]
struct NestedCountry<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct NestedLocation {
    latitude: Option<Number>,
    longitude: Option<Number>,
}

/// A coordinate stored as a double, a 32-bit float or an integer: the
/// decoder is strict about types and the flat schema stores `float`.
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_f32<E>(self, v: f32) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl GeoDb {
    /// Opens and checks a database file.
    pub fn open(path: &Path) -> Result<GeoDb, GeoIpError> {
        let read = |source| GeoIpError::Read {
            path: path.to_path_buf(),
            source,
        };
        GeoDb::new(FileSource::open(path).map_err(read)?, path)
    }

    /// Opens a database held in memory (tests, generated databases).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoDb, GeoIpError> {
        GeoDb::new(FileSource::Heap(Bytes::heap(bytes)), Path::new("<memory>"))
    }

    fn new(source: FileSource, path: &Path) -> Result<GeoDb, GeoIpError> {
        let bytes = GeoDb::bytes(&source, true, path)?;
        let reader = GeoDb::reader(bytes.clone(), path)?;
        let meta = reader.metadata().clone();
        let v4 = GeoDb::v4_table(&reader, &bytes, path)?;
        drop((reader, bytes));
        // The walk touched every IPv4 page; a fresh reader starts with
        // none resident. An IPv4-only file with a table needs no reader.
        let reader = match (meta.ip_version, &v4) {
            (4, Some(_)) => None,
            _ => Some(GeoDb::reader(GeoDb::bytes(&source, false, path)?, path)?),
        };
        Ok(GeoDb {
            meta,
            reader,
            v4,
            path: path.to_path_buf(),
            next: None,
        })
    }

    fn bytes(source: &FileSource, whole: bool, path: &Path) -> Result<Bytes, GeoIpError> {
        source.bytes(whole).map_err(|source| GeoIpError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    fn reader(bytes: Bytes, path: &Path) -> Result<Reader<Bytes>, GeoIpError> {
        Reader::from_source(bytes).map_err(|source| GeoIpError::Open {
            path: path.to_path_buf(),
            source,
        })
    }

    fn v4_table(
        reader: &Reader<Bytes>,
        bytes: &Bytes,
        path: &Path,
    ) -> Result<Option<V4Table>, GeoIpError> {
        let corrupt = |_| GeoIpError::Corrupt {
            path: path.to_path_buf(),
        };
        let tree = tree::Tree::new(bytes.as_ref(), reader.metadata()).map_err(corrupt)?;
        let mut table = V4Builder::default();
        tree.ipv4_networks(|n| table.push(n)).map_err(corrupt)?;
        Ok(table.finish(|ip| {
            reader
                .lookup(IpAddr::V4(ip))
                .map_or(Location::UNKNOWN, |found| decode(&found))
        }))
    }

    /// Opens `paths` as one database, each file asked in order until one
    /// knows the address. Together they must hold IPv4 and IPv6 networks:
    /// a family nobody covers would leave its clients unplaced, silently.
    pub fn open_all(paths: &[PathBuf]) -> Result<GeoDb, GeoIpError> {
        let mut files = paths
            .iter()
            .map(|p| GeoDb::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let names = || {
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (family, net) in [("IPv4", "0.0.0.0/0"), ("IPv6", "2000::/3")] {
            let net: ipnetwork::IpNetwork = net.parse().expect("a valid network");
            if !files.iter().any(|f| f.has_networks_in(net)) {
                return Err(GeoIpError::Coverage {
                    family,
                    files: names(),
                });
            }
        }
        let mut db = files.pop().ok_or_else(|| GeoIpError::Coverage {
            family: "any",
            files: "none given".into(),
        })?;
        while let Some(mut f) = files.pop() {
            f.next = Some(Box::new(db));
            db = f;
        }
        Ok(db)
    }

    /// Whether the file has a record for some network in `net`.
    ///
    /// Networks without data are yielded too, so that the walk can be
    /// bounded: a corrupt tree whose nodes share children can hold 2^128
    /// empty paths, and skipping them silently would never return. The
    /// first error (a cycle) ends the walk.
    fn has_networks_in(&self, net: ipnetwork::IpNetwork) -> bool {
        const LOOK_AT: usize = 1 << 20;
        if net.is_ipv4() && self.v4.is_some() {
            return true;
        }
        let Some(reader) = &self.reader else {
            return false;
        };
        let options = maxminddb::WithinOptions::default().include_networks_without_data();
        let Ok(within) = reader.within(net, options) else {
            return false;
        };
        for found in within.take(LOOK_AT) {
            match found {
                Ok(f) if f.has_data() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Every file, in lookup order.
    pub fn files(&self) -> impl Iterator<Item = &GeoDb> {
        std::iter::successors(Some(self), |f| f.next.as_deref())
    }

    /// How many IPv4 ranges the flat table holds (0 without one).
    pub fn v4_ranges(&self) -> usize {
        self.v4.as_ref().map_or(0, V4Table::ranges)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's type, e.g. "GeoLite2-City".
    pub fn database_type(&self) -> &str {
        &self.meta.database_type
    }

    /// The credit a page showing its results must carry, as HTML: DB-IP's
    /// licence asks web pages for a link back.
    pub fn attribution(&self) -> Option<&'static str> {
        let dbip = self.files().any(|f| {
            let t = f.database_type().to_ascii_lowercase();
            t.contains("dbip") || t.contains("db-ip")
        });
        dbip.then_some("<a href=\"https://db-ip.com\">IP Geolocation by DB-IP</a>")
    }

    /// When the database was built (the newest of its files), seconds
    /// since the UNIX epoch.
    pub fn build_epoch(&self) -> u64 {
        self.files().map(|f| f.meta.build_epoch).max().unwrap_or(0)
    }

    /// Where `ip` is. A lookup failure (a corrupt record, an IPv6 address in
    /// an IPv4-only database) means an unknown location, never an error: the
    /// client is still served, just not by proximity.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let here = match (ip.to_canonical(), &self.v4) {
            (IpAddr::V4(a), Some(table)) => table.lookup(a),
            (ip, _) => self.tree_lookup(ip),
        };
        match &self.next {
            Some(next) if here == Location::UNKNOWN => next.lookup(ip),
            _ => here,
        }
    }

    /// The lookup in the database's own search tree; `ip` is canonical
    /// (an IPv4-mapped address already turned into IPv4 by `lookup`).
    fn tree_lookup(&self, ip: IpAddr) -> Location {
        let Some(Ok(found)) = self.reader.as_ref().map(|r| r.lookup(ip)) else {
            return Location::UNKNOWN;
        };
        decode(&found)
    }
}

fn decode<S: AsRef<[u8]>>(found: &maxminddb::LookupResult<'_, S>) -> Location {
    match found.decode::<Record>() {
        Ok(Some(r)) => r.location(),
        _ => Location::UNKNOWN,
    }
}

impl Record<'_> {
    fn location(&self) -> Location {
        let code = self
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(self.country_code)
            .or(self.registered_country.as_ref().and_then(|c| c.iso_code));
        let country = code.and_then(geo::country_from_record);
        let (lat, lon) = match &self.location {
            Some(l) => (l.latitude.as_ref(), l.longitude.as_ref()),
            None => (self.latitude.as_ref(), self.longitude.as_ref()),
        };
        if let Some(coord) = lat.zip(lon).and_then(|(a, o)| Coord::new(a.0, o.0)) {
            return Location {
                country,
                coord: Some(coord),
                source: Source::Record,
            };
        }
        match country.and_then(Country::centroid) {
            Some(coord) => Location {
                country,
                coord: Some(coord),
                source: Source::CountryCentroid,
            },
            None => Location {
                country,
                coord: None,
                source: Source::Unknown,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn files_are_asked_in_order_and_must_cover_both_families() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, net: &str, cc: &str| {
            let mut w = mmdb_writer::Writer::new("Test");
            let record = serde_json::json!({ "country_code": cc });
            w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
                .unwrap();
            let path = dir.path().join(name);
            std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
            path
        };
        let v4 = write("v4.mmdb", "1.0.0.0/8", "FR");
        let v6 = write("v6.mmdb", "2a00::/12", "DE");
        let err = GeoDb::open_all(std::slice::from_ref(&v4)).err().unwrap();
        let err = err.to_string();
        assert!(
            err.contains("no file has IPv6 networks") && err.contains("v4.mmdb"),
            "{err}"
        );
        let db = GeoDb::open_all(&[v4, v6]).unwrap();
        assert_eq!(db.files().count(), 2);
        let country = |ip: &str| {
            db.lookup(ip.parse().unwrap())
                .country
                .map(|c| c.to_string())
        };
        assert_eq!(country("1.2.3.4").as_deref(), Some("FR"));
        assert_eq!(country("2a00::1").as_deref(), Some("DE"));
        assert_eq!(country("9.9.9.9"), None);
    }

    /// The flat table answers exactly what the tree does, on the shipped
    /// databases (real data: hundreds of thousands of IPv4 ranges; the
    /// city one's tree with its repeated subtrees shared, `share`).
    #[test]
    fn flat_ipv4_lookups_match_the_tree_on_the_shipped_databases() {
        for file in ["geo-whois-asn-country.mmdb", "dbip-city-lite-compact.mmdb"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("geoip")
                .join(file);
            flat_matches_tree(&GeoDb::open(&path).expect("the shipped database opens"));
        }
    }

    fn flat_matches_tree(db: &GeoDb) {
        assert!(db.v4_ranges() > 10_000, "{} ranges", db.v4_ranges());
        let mut x: u32 = 1;
        for i in 0..200_000u32 {
            // Every /16's first and last address, then spread addresses.
            let ip = match i {
                0..65_536 => i << 16,
                65_536..131_072 => ((i - 65_536) << 16) | 0xFFFF,
                _ => {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    x
                }
            };
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            assert_eq!(db.lookup(ip), db.tree_lookup(ip), "{ip}");
        }
    }
}
