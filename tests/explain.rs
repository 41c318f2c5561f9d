//! `?mirrorlist` names the mirror the redirect gives: on many random
//! tables (eligibility, countries, IPv6, https) and random clients (both
//! families, over TLS or not), through the front-end with the shipped
//! GeoIP database.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use distri_redirector::config::{self, Config};
use distri_redirector::frontend::{Conn, Frontend, Outcome};
use distri_redirector::geo::{Coord, Country};
use distri_redirector::geoip::GeoDb;
use distri_redirector::routing::Routing;
use distri_redirector::table::{Status, Table};
use hyper::Request;
use proptest::prelude::*;

const PKG: &str = "/distri/jackherer/pkg/bash-amd64-5.0-4.squashfs";

fn shipped() -> (Config, Arc<GeoDb>) {
    static SHIPPED: OnceLock<(Config, Arc<GeoDb>)> = OnceLock::new();
    SHIPPED
        .get_or_init(|| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mirrors.toml");
            let config = Config::load(&path).unwrap();
            let geo = Arc::new(GeoDb::open_all(&config.geoip).unwrap());
            (config, geo)
        })
        .clone()
}

#[derive(Clone, Debug)]
struct Spec {
    lat: f64,
    lon: f64,
    weight: f64,
    eligible: bool,
    https: bool,
    ipv6: bool,
    countries: Option<Vec<&'static str>>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let countries = prop::option::weighted(
        0.3,
        prop::sample::subsequence(vec!["US", "DE", "JP", "FR", "BR", "AU", "IN"], 1..3),
    );
    (
        -60.0..70.0f64,
        -180.0..180.0f64,
        0.5..4.0f64,
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.7),
        countries,
    )
        .prop_map(
            |(lat, lon, weight, eligible, https, ipv6, countries)| Spec {
                lat,
                lon,
                weight,
                eligible,
                https,
                ipv6,
                countries,
            },
        )
}

fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u32 << 24..224u32 << 24).prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        (0u128..1 << 109).prop_map(|a| IpAddr::V6(Ipv6Addr::from(0x2000u128 << 112 | a << 3))),
    ]
}

fn frontend(specs: &[Spec]) -> Frontend {
    let (config, geo) = shipped();
    let mirrors: Vec<config::Mirror> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| config::Mirror {
            name: format!("m{i}"),
            url: format!(
                "{}://m{i}.example.org/",
                if s.https { "https" } else { "http" }
            ),
            coord: Coord::new(s.lat, s.lon).unwrap(),
            weight: s.weight,
            countries: s
                .countries
                .as_ref()
                .map(|cs| cs.iter().map(|c| Country::parse(c).unwrap()).collect()),
            ipv6: s.ipv6,
        })
        .collect();
    let status_of = |name: &str| {
        let i: usize = name[1..].parse().unwrap();
        if specs[i].eligible {
            Status::assumed_up()
        } else {
            Status::unprobed()
        }
    };
    let table = Table::with_status_of(&mirrors, status_of, config.selection);
    let config = Config { mirrors, ..config };
    Frontend::new(Routing::new(&config, geo, table).share())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_explanation_names_the_redirect(
        specs in prop::collection::vec(spec(), 0..12),
        ip in client(),
        tls in any::<bool>(),
    ) {
        let f = frontend(&specs);
        let conn = Conn {
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            tls,
            admin: false,
        };
        let redirect = Request::get(PKG)
            .header("x-forwarded-for", ip.to_string())
            .body(())
            .unwrap();
        let Outcome::Redirect { location } = f.decide(&redirect, conn) else {
            panic!("not a redirect");
        };
        let explain = Request::get(format!("{PKG}?mirrorlist"))
            .header("x-forwarded-for", ip.to_string())
            .header("accept", "application/json")
            .body(())
            .unwrap();
        let Outcome::Page { body, .. } = f.decide(&explain, conn) else {
            panic!("not a page");
        };
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(j["redirect"].as_str().unwrap(), location.to_str().unwrap());
        let to = location.to_str().unwrap();
        match j["chosen"].as_str() {
            Some(name) => {
                let host = format!("://{name}.example.org/");
                prop_assert!(to.contains(&host), "{} is not under {}", to, name);
            }
            None => prop_assert!(to.starts_with("https://repo.distr1.org/")),
        }
        let chosen: Vec<_> = j["candidates"].as_array().unwrap().iter().filter(|c| c["chosen"] == true).collect();
        prop_assert_eq!(chosen.len(), usize::from(!j["chosen"].is_null()));
        prop_assert_eq!(&j["client"]["ip"], &serde_json::json!(ip.to_string()));
        prop_assert_eq!(&j["client"]["https_only"], &serde_json::json!(tls));
    }
}
