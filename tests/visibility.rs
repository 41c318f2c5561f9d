//! Metrics, the status page's JSON and `?mirrorlist`, against the real
//! service on port 0 with real loopback mirrors; the metrics read back with
//! an independent Prometheus text-format parser.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;

const PKG: &str = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs";
const ADMIN: &str = "[admin]\nlisten = [\"127.0.0.1:0\"]\n";

fn admin(f: &Fixture) -> SocketAddr {
    f.service.as_ref().unwrap().admin_addrs[0]
}

/// Counters move by exactly the requests made, each family is there, and
/// `/metrics` on the public listener is an ordinary path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_made() {
    let opts = Options {
        extra: ADMIN,
        ..Options::default()
    };
    let f = Fixture::world(opts).await;
    let before = scrape(admin(&f)).await;
    for _ in 0..5 {
        assert_eq!(f.where_to("1.0.0.1").await, "eu-fra");
    }
    for _ in 0..3 {
        assert_eq!(f.where_to("8.0.0.1").await, "jp-tyo");
    }
    let not_release = f.get_as("1.0.0.1", "/distri/master/pkg/x.squashfs").await;
    assert_eq!(f.name_of(not_release.location()), "origin");
    let public_metrics = get(f.addr(), "/metrics", "").await;
    assert_eq!(
        public_metrics.status, 302,
        "an ordinary path on the public listener"
    );
    assert!(public_metrics.location().starts_with(&f.origin.url()));
    assert_eq!(get(f.addr(), "/a/%2e%2e/b", "").await.status, 400);
    let post = raw(
        f.addr(),
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(get(f.addr(), "/healthz", "").await.status, 200);
    assert_eq!(get(admin(&f), "/nothing", "").await.status, 404);
    let after = scrape(admin(&f)).await;
    // The status page is on the admin listener too (not counted above).
    let page = get(admin(&f), "/mirrors.json", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("application/json"));

    let moved = |key: &str| at(&after, key) - before.get(key).copied().unwrap_or(0.0);
    assert_eq!(moved("distri_redirects_total{mirror=eu-fra}"), 5.0);
    assert_eq!(moved("distri_redirects_total{mirror=jp-tyo}"), 3.0);
    assert_eq!(moved("distri_redirects_total{mirror=us-nyc}"), 0.0);
    assert_eq!(moved("distri_requests_total{outcome=mirror}"), 8.0);
    assert_eq!(
        moved("distri_requests_total{outcome=origin_not_release}"),
        2.0
    );
    assert_eq!(
        moved("distri_requests_total{outcome=origin_no_candidate}"),
        0.0
    );
    assert_eq!(
        moved("distri_requests_total{outcome=bad_request}"),
        2.0,
        "400 and the admin 404"
    );
    assert_eq!(
        moved("distri_requests_total{outcome=method_not_allowed}"),
        1.0
    );
    assert_eq!(moved("distri_requests_total{outcome=health}"), 1.0);
    // The first scrape counts itself once it has answered.
    assert_eq!(moved("distri_requests_total{outcome=page}"), 1.0);
    // Each request above, and the first scrape.
    assert_eq!(moved("distri_request_duration_seconds_count{}"), 15.0);
    for m in ["eu-fra", "us-nyc", "jp-tyo", "br-sao"] {
        assert_eq!(
            at(&after, &format!("distri_mirror_eligible{{mirror={m}}}")),
            1.0
        );
        assert_eq!(at(&after, &format!("distri_mirror_up{{mirror={m}}}")), 1.0);
        for r in RELEASES {
            let key = format!("distri_mirror_release_fresh{{mirror={m},release={r}}}");
            assert_eq!(at(&after, &key), 1.0);
        }
        assert!(
            at(
                &after,
                &format!("distri_mirror_latency_seconds{{mirror={m}}}")
            ) > 0.0
        );
    }
    assert!(at(&after, "distri_probe_rounds_total{}") >= 4.0);
    // Each round fetches two indexes and samples images: more requests.
    assert!(
        at(&after, "distri_probe_requests_total{}") > at(&after, "distri_probe_rounds_total{}")
    );
    assert_eq!(at(&after, "distri_origin_reachable{}"), 1.0);
    assert!(at(&after, "distri_origin_index_age_seconds{}") < 60.0);
    assert!(at(&after, "distri_geoip_build_timestamp_seconds{}") > 1.0e9);
    assert_eq!(at(&after, "distri_reloads_total{result=failed}"), 0.0);
    assert_eq!(at(&after, "distri_reload_failing{}"), 0.0);
    assert!(at(&after, "process_resident_memory_bytes{}") > 1.0e6);
    assert!(at(&after, "process_open_fds{}") > 3.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("distri_build_info{") && k.contains("version=")),
        "build info"
    );
}

async fn mirrors_json(f: &Fixture) -> Value {
    let a = get(f.addr(), "/mirrors.json", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    serde_json::from_slice(&a.body).unwrap()
}

/// The states `/mirrors.json` shows, by mirror.
async fn shown(f: &Fixture) -> HashMap<String, (bool, String)> {
    let j = mirrors_json(f).await;
    let Some(ms) = j["mirrors"].as_array() else {
        return HashMap::new();
    };
    ms.iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_string();
            (
                name,
                (
                    m["eligible"].as_bool().unwrap(),
                    m["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Polls the page until it shows what the table has.
async fn agrees(f: &Fixture) -> HashMap<String, (bool, String)> {
    f.eventually("the page to show the table", || async move {
        let table = f.service.as_ref().unwrap().table();
        let want: HashMap<String, (bool, String)> = table
            .mirrors()
            .iter()
            .map(|m| {
                (
                    m.name.to_string(),
                    (m.status.eligible, m.status.reason.to_string()),
                )
            })
            .collect();
        let got = shown(f).await;
        (got == want).then_some(got)
    })
    .await
}

/// `/mirrors.json` agrees with the table as mirrors go down and come back,
/// counts the last hour's redirects, and a refused reload shows there and
/// in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_json_follows_the_table() {
    let opts = Options {
        extra: ADMIN,
        ..Options::default()
    };
    let mut f = Fixture::world(opts).await;
    let all_up = agrees(&f).await;
    assert!(all_up.values().all(|(e, _)| *e), "{all_up:?}");

    f.mirror("jp-tyo").stop().await;
    f.wait_eligible(&["eu-fra", "us-nyc", "br-sao"], Duration::from_secs(10))
        .await;
    let one_down = agrees(&f).await;
    assert!(!one_down["jp-tyo"].0, "{one_down:?}");
    f.mirror("jp-tyo").restart().await.unwrap();
    f.wait_eligible(
        &["eu-fra", "us-nyc", "jp-tyo", "br-sao"],
        Duration::from_secs(10),
    )
    .await;
    agrees(&f).await;

    for _ in 0..4 {
        f.where_to("2.0.0.1").await;
    }
    f.service.as_ref().unwrap().redraw_status();
    let fr = &f;
    let j = f
        .eventually("the hour's four redirects", || async move {
            let j = mirrors_json(fr).await;
            let nyc = j["mirrors"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == "us-nyc")?;
            (nyc["redirects_last_hour"] == 4).then(|| j.clone())
        })
        .await;
    let nyc = j["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "us-nyc")
        .unwrap();
    assert_eq!(nyc["share_last_hour"], 1.0);
    assert_eq!(j["coverage"]["requests"], 4);
    let cells = j["coverage"]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "Chicago's cell: {cells:?}");
    assert_eq!(cells[0]["lat"], 42.5);

    // A config that does not parse: refused (the watcher sees it), and
    // said so on both.
    std::fs::write(f.config_path(), "origin = [\n").unwrap();
    f.until("the refusal", |f| f.reloads().1 >= 1).await;
    let j = f
        .eventually("the refusal on the page", || async move {
            let j = mirrors_json(fr).await;
            (!j["reload"]["last_error"].is_null()).then_some(j)
        })
        .await;
    let message = j["reload"]["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("mirrors.toml"), "{message}");
    let page = get(f.addr(), "/mirrors", "").await;
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("id=\"reload-error\""), "{html}");
    let m = scrape(admin(&f)).await;
    assert!(at(&m, "distri_reloads_total{result=failed}") >= 1.0);
    assert_eq!(at(&m, "distri_reload_failing{}"), 1.0);
}

fn json_of(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    serde_json::from_slice(&a.body).unwrap()
}

const JSON: &str = "Accept: application/json\r\n";

/// `?mirrorlist` for an IPv6 client, a client behind two trusted proxies,
/// a client with no location and a country-restricted mirror; its choice
/// is the redirect's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrorlist_explains_each_kind_of_client() {
    let mut mirrors = world();
    mirrors.push(MirrorSpec {
        extra: "countries = [\"JP\"]",
        ..spec("jp-only", 48.9, 2.4)
    });
    let opts = Options {
        trusted: r#"["127.0.0.1/32", "10.0.0.0/8"]"#,
        ..Options::default()
    };
    let f = Fixture::start(mirrors, opts).await;
    f.wait_eligible(
        &["eu-fra", "us-nyc", "jp-tyo", "br-sao", "jp-only"],
        Duration::from_secs(10),
    )
    .await;
    let ask = |xff: &'static str| {
        let addr = f.addr();
        async move {
            let headers = format!("X-Forwarded-For: {xff}\r\n");
            let redirect = get(addr, PKG, &headers).await;
            let explained = get(
                addr,
                &format!("{PKG}?mirrorlist"),
                &format!("{headers}{JSON}"),
            )
            .await;
            (redirect, json_of(&explained))
        }
    };

    // IPv6, in Berlin.
    let (r, j) = ask("2a00:1000::1").await;
    assert_eq!(j["client"]["ip"], "2a00:1000::1");
    assert_eq!(j["client"]["peer"], "127.0.0.1");
    assert!(
        j["client"]["derived_from"]
            .as_str()
            .unwrap()
            .starts_with("X-Forwarded-For")
    );
    assert_eq!(j["location"]["country"], "DE");
    assert_eq!(j["location"]["source"], "city record");
    assert_eq!(j["chosen"], "eu-fra");
    assert_eq!(j["redirect"], r.location());

    // Behind two trusted proxies: the second (10.1.2.3) passed it to the
    // peer; the client is the first untrusted entry from the right.
    let (r, j) = ask("1.0.0.1, 10.1.2.3").await;
    assert_eq!(j["client"]["ip"], "1.0.0.1");
    assert_eq!(
        j["client"]["trusted_proxies"],
        serde_json::json!(["127.0.0.1", "10.1.2.3"])
    );
    assert_eq!(j["redirect"], r.location());
    // jp-only is nearest to Paris, but serves Japan only.
    let excluded = j["excluded"].as_array().unwrap();
    let jp_only = excluded.iter().find(|e| e["name"] == "jp-only").unwrap();
    assert_eq!(jp_only["reason"], "country", "{j}");
    assert_eq!(j["chosen"], "eu-fra");

    // No location: every candidate shares by weight, no band.
    let (r, j) = ask("9.9.9.9").await;
    assert_eq!(j["location"]["source"], "unknown");
    assert!(j["band"].is_null());
    assert_eq!(j["redirect"], r.location());
    let chosen: Vec<&Value> = j["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["chosen"] == true)
        .collect();
    assert_eq!(chosen.len(), 1, "{j}");
    assert_eq!(j["chosen"], chosen[0]["name"]);

    // &ip= explains another address; a malformed one is refused.
    let other = json_of(&get(f.addr(), &format!("{PKG}?mirrorlist&ip=8.0.0.9"), JSON).await);
    assert_eq!(other["chosen"], "jp-tyo");
    assert_eq!(other["client"]["derived_from"], "given (ip=)");
    let bad = get(f.addr(), &format!("{PKG}?mirrorlist&ip=1.2.3"), "").await;
    assert_eq!(bad.status, 400);
    assert!(
        String::from_utf8_lossy(&bad.body).contains("not an IP address"),
        "{bad:?}"
    );

    // HTML by default, escaped, naming the choice.
    let page = get(f.addr(), &format!("{PKG}?mirrorlist=1&ip=1.0.0.1"), "").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        html.contains("<tr class=\"chosen\"><td>eu-fra</td>"),
        "{html}"
    );
}

/// The admin address is the process's own: a second service asking for it
/// fails to start, naming it, instead of sharing scrapes with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_service_cannot_take_the_admin_address() {
    let opts = Options {
        extra: ADMIN,
        ..Options::default()
    };
    let f = Fixture::start(vec![], opts).await;
    let taken = admin(&f);
    let mut second = f.config.clone();
    second.admin = Some(distri_redirector::config::Admin {
        listen: vec![taken],
    });
    let err = match distri_redirector::app::start(&second).await {
        Ok(_) => panic!("a second service started on {taken}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("cannot listen on {taken}")), "{err}");
    // The first still answers there.
    assert_eq!(get(taken, "/healthz", "").await.status, 200);
}

/// The page is sent gzipped to clients that accept it, and plain to the
/// rest, with `Vary` either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_gzipped_for_clients_that_accept_it() {
    use std::io::Read as _;
    let f = Fixture::world(Options::default()).await;
    let addr = f.addr();
    let plain = f
        .eventually("the page to show the eligible mirrors", || async move {
            let a = get(addr, "/mirrors", "").await;
            String::from_utf8_lossy(&a.body)
                .contains("4 of 4 mirrors eligible")
                .then_some(a)
        })
        .await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    let gz = get(f.addr(), "/mirrors", "Accept-Encoding: br, gzip\r\n").await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} vs {}",
        gz.body.len(),
        plain.body.len()
    );
    let mut html = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut html)
        .unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("4 of 4 mirrors eligible"));
    let refused = get(f.addr(), "/mirrors.json", "Accept-Encoding: gzip;q=0\r\n").await;
    assert_eq!(refused.header("content-encoding"), None);
    serde_json::from_slice::<Value>(&refused.body).unwrap();
}
