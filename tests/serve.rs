//! The redirect path end to end: the real service on port 0, real loopback
//! mirrors, generated GeoIP databases, raw HTTP.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn nearest_mirror_on_every_continent_in_both_schemas() {
    for flat_db in [false, true] {
        let f = Fixture::world(Options {
            flat_db,
            ..Options::default()
        })
        .await;
        let cases = [
            ("1.0.0.9", "eu-fra"),        // Paris
            ("2.0.0.9", "us-nyc"),        // Chicago
            ("3.0.0.9", "jp-tyo"),        // Seoul
            ("4.0.0.9", "br-sao"),        // Buenos Aires
            ("5.0.0.9", "eu-fra"),        // Germany, by its centroid
            ("8.0.0.9", "jp-tyo"),        // Tokyo
            ("2a00:1000::9", "eu-fra"),   // Berlin over IPv6
            ("2600:1000::9", "us-nyc"),   // New York over IPv6
            ("::ffff:3.0.0.9", "jp-tyo"), // IPv4-mapped
        ];
        for (ip, want) in cases {
            assert_eq!(f.where_to(ip).await, want, "{ip} (flat schema: {flat_db})");
        }
    }
}

#[tokio::test]
async fn the_redirect_keeps_the_path_and_says_not_to_cache() {
    let f = Fixture::world(Options::default()).await;
    let a = f
        .get_as("1.0.0.1", "/distri/jackherer/pkg//meta.binaryproto?x=1")
        .await;
    assert_eq!(a.status, 302);
    assert_eq!(
        a.location(),
        format!(
            "{}distri/jackherer/pkg/meta.binaryproto",
            f.url_of("eu-fra")
        )
    );
    assert_eq!(a.header("cache-control"), Some("private, no-store"));
    assert!(!a.body.is_empty());
    // The Location is a working URL on the mirror.
    let mirror = f.mirrors[0].addr();
    let path = a.location().split_once(&mirror.to_string()).unwrap().1;
    let got = raw(
        mirror,
        &format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn head_has_headers_and_no_body() {
    let f = Fixture::world(Options::default()).await;
    let a = raw(
        f.addr(),
        "HEAD /distri/supersilverhaze/pkg/meta.binaryproto HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 2.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 302);
    assert!(a.location().starts_with(&f.url_of("us-nyc")));
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn other_methods_are_refused_with_allow() {
    let f = Fixture::world(Options::default()).await;
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let a = raw(f.addr(), &format!("{m} /distri/jackherer/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(a.status, 405, "{m}");
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
        assert_eq!(a.header("location"), None);
    }
}

#[tokio::test]
async fn healthz_answers() {
    let f = Fixture::world(Options::default()).await;
    let a = raw(
        f.addr(),
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"ok\n");
}

#[tokio::test]
async fn bad_paths_get_400_and_no_location() {
    let f = Fixture::world(Options::default()).await;
    let bad = [
        "/distri/jackherer/../../etc/passwd",
        "/distri/jackherer/./pkg/x",
        "/distri/jackherer/%2e%2e/x",
        "/distri/jackherer/%2E/x",
        "/distri/jackherer/pkg/a%00b",
        "/distri/jackherer/pkg/a%0d%0aSet-Cookie:x",
        "/distri/jackherer/pkg/a%2fb",
        "/distri/jackherer/pkg/%zz",
        "/distri/jackherer/pkg/%ff%fe",
        "/../x",
    ];
    for p in bad {
        let a = f.get_as("1.0.0.1", p).await;
        assert_eq!(a.status, 400, "{p}: {a:?}");
        assert_eq!(a.header("location"), None, "{p}");
    }
}

#[tokio::test]
async fn non_current_trees_and_other_paths_go_to_the_origin() {
    let f = Fixture::world(Options::default()).await;
    for p in [
        "/distri/master/pkg/x.squashfs",
        "/distri/jackherer",
        "/index.html",
        "/",
        "/distri/",
    ] {
        let a = f.get_as("1.0.0.1", p).await;
        assert_eq!(a.status, 302, "{p}");
        assert_eq!(f.name_of(a.location()), "origin", "{p}");
        assert_eq!(
            a.location(),
            format!("{}{}", f.origin.url(), p.trim_start_matches('/'))
        );
    }
    // Encoded characters come out canonically encoded.
    let a = f.get_as("1.0.0.1", "/distri/jackherer/pkg/a%20b%41").await;
    assert_eq!(
        a.location(),
        format!("{}distri/jackherer/pkg/a%20bA", f.url_of("eu-fra"))
    );
}

#[tokio::test]
async fn stickiness_and_weights_over_many_networks() {
    let mut a = spec("fra-a", 50.0, 8.0);
    a.extra = "weight = 1.0";
    let mut b = spec("fra-b", 50.5, 8.5);
    b.extra = "weight = 3.0";
    let f = Fixture::start(
        vec![a, b, spec("us-nyc", 40.71, -74.01)],
        Options::default(),
    )
    .await;
    f.wait_eligible(&["fra-a", "fra-b", "us-nyc"], SETTLE).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let networks = 1000;
    for n in 0..networks {
        let (hi, lo) = (n / 256, n % 256);
        let first = f.where_to(&format!("6.{hi}.{lo}.1")).await;
        // Another host of the same /24 gets the same mirror.
        assert_eq!(f.where_to(&format!("6.{hi}.{lo}.200")).await, first);
        *counts.entry(first).or_default() += 1;
    }
    assert_eq!(counts.get("us-nyc"), None);
    let share_b = counts["fra-b"] as f64 / networks as f64;
    // 3:1 weights: 75%, within ±6 points for 1,000 networks.
    assert!((0.69..=0.81).contains(&share_b), "{counts:?}");
}

#[tokio::test]
async fn country_restrictions() {
    let mut fr = spec("fr-only", 48.85, 2.35);
    fr.extra = "countries = [\"FR\"]";
    let f = Fixture::start(vec![fr, spec("eu-fra", 50.11, 8.68)], Options::default()).await;
    f.wait_eligible(&["fr-only", "eu-fra"], SETTLE).await;
    assert_eq!(f.where_to("1.0.0.1").await, "fr-only", "French client");
    assert_eq!(f.where_to("5.0.0.1").await, "eu-fra", "German client");
    assert_eq!(
        f.where_to("2.0.0.1").await,
        "eu-fra",
        "American client: eu-fra is the only one open to it"
    );
    assert_eq!(
        f.where_to("7.0.0.1").await,
        "eu-fra",
        "unknown country: unrestricted mirrors only"
    );
}

#[tokio::test]
async fn unknown_locations_spread_and_stick() {
    let f = Fixture::world(Options::default()).await;
    let mut seen = std::collections::HashSet::new();
    // 7.0.0.0/24 has a record without a place; 9.x has no record at all.
    assert_eq!(f.where_to("7.0.0.1").await, f.where_to("7.0.0.99").await);
    for n in 0..200 {
        let ip = format!("9.{}.{}.1", n / 256, n % 256);
        let first = f.where_to(&ip).await;
        assert_eq!(f.where_to(&ip).await, first);
        seen.insert(first);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[tokio::test]
async fn forwarded_headers_only_from_trusted_proxies() {
    // Requests come from 127.0.0.1. Trusted: its headers decide.
    let f = Fixture::world(Options::default()).await;
    let with = |h: &str| {
        format!(
            "GET /distri/jackherer/pkg/x HTTP/1.1\r\nHost: t\r\n{h}\r\nConnection: close\r\n\r\n"
        )
    };
    let to = |a: Answer| f.name_of(a.location());
    assert_eq!(
        to(raw(f.addr(), &with("X-Forwarded-For: 3.0.0.1")).await),
        "jp-tyo"
    );
    assert_eq!(
        to(raw(f.addr(), &with("X-Forwarded-For: 3.0.0.1, 4.0.0.1")).await),
        "br-sao",
        "rightmost untrusted"
    );
    assert_eq!(
        to(raw(f.addr(), &with("X-Forwarded-For: 4.0.0.1, 127.0.0.1")).await),
        "br-sao",
        "skips trusted hops"
    );
    assert_eq!(
        to(raw(f.addr(), &with("Forwarded: for=3.0.0.1;proto=http")).await),
        "jp-tyo"
    );
    assert_eq!(
        to(raw(f.addr(), &with("Forwarded: for=3.0.0.1;proto=https")).await),
        "origin",
        "https at the proxy: never an http:// mirror"
    );
    assert_eq!(
        to(raw(f.addr(), &with("Forwarded: for=\"[2600:1000::1]:443\"")).await),
        "us-nyc"
    );
    let peer_choice = to(raw(f.addr(), &with("X-Forwarded-For: garbage")).await);
    assert_eq!(
        to(raw(f.addr(), &with("X-Forwarded-Host: x")).await),
        peer_choice,
        "malformed = no header"
    );

    // Untrusted peer: the same headers change nothing.
    let f = Fixture::world(Options {
        trusted: r#"["10.0.0.0/8"]"#,
        ..Options::default()
    })
    .await;
    let to = |a: Answer| f.name_of(a.location());
    let baseline = to(raw(f.addr(), &with("X-Forwarded-Host: x")).await);
    for h in [
        "X-Forwarded-For: 3.0.0.1",
        "X-Forwarded-For: 4.0.0.1",
        "X-Forwarded-For: 2.0.0.1",
        "X-Forwarded-For: 1.0.0.1",
        "Forwarded: for=3.0.0.1",
        "Forwarded: for=4.0.0.1",
    ] {
        assert_eq!(to(raw(f.addr(), &with(h)).await), baseline, "{h}");
    }
}

#[tokio::test]
async fn nothing_qualifies_means_the_origin() {
    let f = Fixture::start_with(
        world(),
        (0..4)
            .map(|_| distri_redirector::minitree::Tree::default())
            .collect(),
        Options::default(),
    )
    .await;
    // Wait for the first round to mark them all down.
    f.wait_reason("br-sao", "incomplete", SETTLE).await;
    assert!(f.eligible().is_empty());
    for ip in ["1.0.0.1", "2.0.0.1", "2a00:1000::1", "7.0.0.1"] {
        assert_eq!(f.where_to(ip).await, "origin", "{ip}");
    }
}
