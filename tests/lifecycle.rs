//! Reloads while serving: the config rewritten, the database renamed over,
//! reloads asked for, and bad files refused; against the real service on
//! port 0 and real loopback mirrors.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use distri_redirector::minitree::MiniServer;
use support::*;
use tokio::task::JoinSet;

const PKG: &str = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs";

fn weight_of(f: &Fixture, name: &str) -> Option<f64> {
    f.service
        .as_ref()
        .unwrap()
        .table()
        .find(name)
        .map(|m| m.weight)
}

/// Requests flow from four client networks without a pause while the
/// config gains a mirror, loses one and changes a weight, the database is
/// renamed over several times and reloads are asked for: every request is
/// answered with a redirect under a configured base, the mirror nobody
/// touched never detours to the origin, and every change takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_takes_effect() {
    let mut f = Fixture::world(Options::default()).await;
    let sfo = MiniServer::start(origin_tree()).await.unwrap();
    f.names.push("us-sfo");
    f.urls.push(sfo.url());
    let mut bases = f.urls.clone();
    bases.extend([sfo.url(), f.origin.url()]);
    let addr = f.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = JoinSet::new();
    for client in ["1.0.0.1", "2.0.0.1", "4.0.0.1", "8.0.0.1"] {
        let (stop, bases) = (stop.clone(), bases.clone());
        load.spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let a = get(addr, client).await;
                assert_eq!(a.status, 302, "{client}: {a:?}");
                let loc = a.location();
                let base = bases
                    .iter()
                    .find(|b| loc.starts_with(b.as_str()))
                    .unwrap_or_else(|| panic!("{loc} is under no configured base"));
                *seen.entry(base.clone()).or_default() += 1;
                n += 1;
            }
            (client, n, seen)
        });
    }

    // 1. The config: br-sao removed, us-sfo added, us-nyc's weight changed.
    //    Written in place, as an editor might.
    let mut specs = world();
    specs.retain(|m| m.name != "br-sao");
    specs[1].extra = "weight = 3.0";
    specs.push(spec("us-sfo", 37.77, -122.42));
    let mut urls = f.urls[..3].to_vec();
    urls.push(f.url_of("us-sfo"));
    let text = config_text(&f.origin.url(), &Options::default(), &specs, &urls);
    std::fs::write(f.config_path(), text).unwrap();
    f.until("the config change is applied", |f| {
        weight_of(f, "us-nyc") == Some(3.0) && weight_of(f, "br-sao").is_none()
    })
    .await;
    f.until("us-sfo is probed and eligible", |f| {
        f.eligible().contains(&"us-sfo".to_string())
    })
    .await;

    // 2. The database, renamed over three times; the last one moves the
    //    Tokyo network to Chicago.
    let db = f.dir.path().join("test.mmdb");
    for round in 0..3 {
        let places: Vec<Place> = PLACES
            .iter()
            .map(|&(net, cc, ll)| match (net, round) {
                ("8.0.0.0/24", 2) => (net, "US", Some((41.88, -87.63))),
                _ => (net, cc, ll),
            })
            .collect();
        write_nested_db_of(&db, &places);
        let before = f.reloads().0;
        f.until("the database reload", |f| f.reloads().0 > before)
            .await;
    }

    // 3. A reload with nothing changed, as SIGHUP asks.
    f.service.as_ref().unwrap().reload();

    // Traffic after all of it: sent where the new state says.
    assert_eq!(f.where_to("8.0.0.1").await, "us-nyc", "the new database");
    let buenos_aires = f.where_to("4.0.0.1").await;
    assert!(
        ["us-nyc", "us-sfo"].contains(&buenos_aires.as_str()),
        "br-sao is gone: {buenos_aires}"
    );
    stop.store(true, Ordering::Relaxed);
    let eu_fra = f.url_of("eu-fra");
    let mut total = 0;
    for (client, n, seen) in load.join_all().await {
        total += n;
        assert!(n > 0, "{client} sent nothing");
        if client == "1.0.0.1" {
            // Untouched by every change: never a detour to the origin.
            assert_eq!(seen.keys().collect::<Vec<_>>(), [&eu_fra], "{seen:?}");
        }
    }
    assert!(total >= 100, "only {total} requests during the reloads");
    assert_eq!(f.reloads().1, 0, "no reload was refused");
}

/// A config with an error, and a database that is garbage, are each
/// refused with the file and the place named; the running ones serve on.
#[tokio::test]
async fn bad_files_are_refused_and_the_old_ones_serve() {
    let f = Fixture::world(Options::default()).await;

    let good = std::fs::read_to_string(f.config_path()).unwrap();
    let bad = good.replacen("lat = 50.11", "lat = 95.0", 1);
    std::fs::write(f.config_path(), bad).unwrap();
    f.until("the bad config is refused", |f| f.reloads().1 >= 1)
        .await;
    let e = f.reloads().2;
    assert!(
        e.contains("mirrors.toml:") && e.contains("mirror[0].lat"),
        "{e}"
    );
    assert_eq!(f.where_to("1.0.0.1").await, "eu-fra");

    let db = f.dir.path().join("test.mmdb");
    let tmp = db.with_extension("tmp");
    std::fs::write(&tmp, b"this is not a MaxMind database").unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    f.until("the bad database is refused", |f| {
        f.reloads().2.contains("test.mmdb")
    })
    .await;
    assert_eq!(f.where_to("3.0.0.1").await, "jp-tyo", "the old database");

    // Fixed files are taken, and clear the error.
    std::fs::write(f.config_path(), &good).unwrap();
    write_nested_db(&db);
    f.until("the fixed files load", |f| f.reloads().2.is_empty())
        .await;
    assert_eq!(f.where_to("3.0.0.1").await, "jp-tyo");
}

/// A file that also changes a restart-only setting is not refused: the
/// rest of the change applies and serving goes on (which values are kept
/// is unit-tested in `publish`).
#[tokio::test]
async fn restart_only_settings_keep_their_running_values() {
    let f = Fixture::start(world(), Options::default()).await;
    let text = std::fs::read_to_string(f.config_path()).unwrap();
    let text =
        text.replacen("127.0.0.1:0", "127.0.0.1:1", 1)
            .replacen("lat = 50.11", "lat = 50.2", 1);
    std::fs::write(f.config_path(), text).unwrap();
    f.until("the reload", |f| f.reloads().0 >= 1).await;
    let routing = f.service.as_ref().unwrap().table();
    let m = routing.find("eu-fra").unwrap();
    assert_eq!(m.coord.lat, 50.2);
    // Still served on the bound port.
    assert_eq!(get(f.addr(), "1.0.0.1").await.status, 302);
}

async fn get(addr: std::net::SocketAddr, client: &str) -> Answer {
    raw(
        addr,
        &format!("GET {PKG} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n"),
    )
    .await
}
