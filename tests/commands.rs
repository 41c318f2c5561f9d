//! The operator's commands, against real loopback mirrors and the shipped
//! and generated databases.

mod support;

use std::path::PathBuf;

use distri_redirector::commands::{self, CommandError};
use distri_redirector::config::Config;
use support::*;

fn text(buf: Vec<u8>) -> String {
    String::from_utf8(buf).unwrap()
}

#[test]
fn check_summarises_the_shipped_config() {
    let config =
        Config::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mirrors.toml")).unwrap();
    let mut out = Vec::new();
    commands::check(&config, &mut out).unwrap();
    let out = text(out);
    for want in [
        "origin:    https://repo.distr1.org/",
        "supersilverhaze, jackherer",
        "built 20",
        "[::]:8080",
        "\nok\n",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
}

/// The country database, shipped as the alternative to the default city
/// one (tests/shipped_geoip.rs covers that).
#[test]
fn the_shipped_country_database_places_real_addresses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip/geo-whois-asn-country.mmdb");
    let geo = distri_redirector::geoip::GeoDb::open(&path).unwrap();
    // RIPE NCC's own addresses are registered in the Netherlands.
    for ip in ["193.0.6.139", "2001:67c:2e8::1"] {
        let loc = geo.lookup(ip.parse().unwrap());
        assert_eq!(
            loc.country.map(|c| c.to_string()).as_deref(),
            Some("NL"),
            "{ip}"
        );
        assert!(loc.coord.is_some(), "{ip}: centroid");
    }
}

#[tokio::test]
async fn probe_prints_a_row_per_mirror_and_fails_when_none_is_eligible() {
    let mut stale = origin_tree();
    stale.set_release("jackherer", PACKAGES - 1);
    let f = Fixture::start_with(
        vec![spec("good", 50.0, 8.0), spec("old", 40.0, -74.0)],
        vec![origin_tree(), stale],
        Options::default(),
    )
    .await;
    let (table, rows) = commands::probe_table(&f.config).await.unwrap();
    let mut out = Vec::new();
    commands::print_round(&f.config, &rows, &mut out).unwrap();
    let out = text(out);
    let row = |name: &str| -> Vec<String> {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().map(String::from).collect()
    };
    // mirror, eligible, latency (2 words), one column per release, reason.
    // A mirror behind the origin still serves what its verified index lists.
    assert_eq!(row("good")[1..2], ["yes"], "{out}");
    assert_eq!(row("good")[4..7], ["fresh", "fresh", "ok:"], "{out}");
    assert_eq!(row("old")[1..2], ["yes"], "{out}");
    assert_eq!(
        row("old")[4..9],
        ["fresh", "stale", "ok,", "but", "stale:"],
        "{out}"
    );
    assert!(
        row("good")[2].parse::<f64>().is_ok(),
        "latency in ms: {out}"
    );

    // locate shows the probed states and the choice.
    let mut out = Vec::new();
    let ips = commands::parse_ips(&["1.0.0.1".into(), "2.0.0.1".into()]).unwrap();
    commands::locate(&f.config, &table, &ips, None, &mut out).unwrap();
    let out = text(out);
    assert!(
        out.contains("1.0.0.1: country FR, at 48.85,2.35 (city record)"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    let chicago = lines.iter().position(|l| l.starts_with("2.0.0.1")).unwrap();
    let below = &lines[chicago + 1..];
    assert!(
        below[0].contains("the file: any file: mirrors fresh for every tree"),
        "{out}"
    );
    let old = below.iter().position(|l| l.trim_start().starts_with("old"));
    let good = below
        .iter()
        .position(|l| l.trim_start().starts_with("good"));
    assert!(old < good, "nearest first: {out}");
    let old = below[old.unwrap()];
    assert!(
        old.contains("excluded: not verified to hold this file") && old.contains("stale"),
        "{out}"
    );
    assert!(
        below
            .iter()
            .any(|l| l.contains("trees: supersilverhaze/pkg fresh, jackherer/pkg behind")),
        "each tree's state: {out}"
    );
    assert!(below[good.unwrap()].contains("chosen"), "{out}");

    // For a named file: which mirrors may serve it. "old" is behind on
    // jackherer only: it serves supersilverhaze, not jackherer's index.
    let chicago = commands::parse_ips(&["2.0.0.1".into()]).unwrap();
    let for_file = |path: &str| {
        let path = commands::parse_path(path).unwrap();
        let mut out = Vec::new();
        commands::locate(&f.config, &table, &chicago, Some(&path), &mut out).unwrap();
        text(out)
    };
    let out = for_file("/distri/jackherer/pkg//meta.binaryproto");
    assert!(
        out.contains("the file: a mutable file: mirrors fresh for its pkg/ tree"),
        "{out}"
    );
    let old = out
        .lines()
        .find(|l| l.trim_start().starts_with("old"))
        .unwrap();
    assert!(
        old.contains("excluded: not verified to hold this file"),
        "{out}"
    );
    let out = for_file("/distri/supersilverhaze/pkg/pkg000-amd64-1.0-1.squashfs");
    assert!(out.contains("the file: an immutable file"), "{out}");
    let old = out
        .lines()
        .find(|l| l.trim_start().starts_with("old"))
        .unwrap();
    assert!(old.contains("chosen"), "the nearest holds it: {out}");
    assert!(matches!(
        commands::parse_path("/distri/%2e%2e/x"),
        Err(CommandError::BadPath(..))
    ));

    // With no mirror that can serve anything, probe fails.
    let mut no_good = f.config.clone();
    no_good.mirrors.remove(0);
    no_good.mirrors[0].url = "http://127.0.0.1:1/".into();
    let (_, rows) = commands::probe_table(&no_good).await.unwrap();
    assert!(matches!(
        commands::print_round(&no_good, &rows, &mut Vec::new()),
        Err(CommandError::NoneEligible)
    ));
}

#[tokio::test]
async fn probe_names_an_unreachable_origin() {
    let mut f = Fixture::start(vec![spec("m", 50.0, 8.0)], Options::default()).await;
    f.origin.stop().await;
    let err = commands::probe_table(&f.config)
        .await
        .err()
        .expect("origin is down");
    // What main prints: the error and its causes.
    let err = format!("{:#}", anyhow::Error::from(err));
    assert!(
        err.contains(&f.origin.url()) && err.contains("connection refused"),
        "{err}"
    );
}

#[test]
fn locate_refuses_bad_addresses_before_any_work() {
    let err = commands::parse_ips(&["1.2.3.4".into(), "1.2.3.4x".into()]).unwrap_err();
    assert_eq!(err.to_string(), "\"1.2.3.4x\" is not an IP address");
}
