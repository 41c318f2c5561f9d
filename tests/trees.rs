//! Per-tree verification and lag tolerance, end to end: the origin
//! publishes a new generation while one mirror has synced, one has not, one
//! is caught mid-sync, one leaves out `debug/` and one has an old `src/`.
//! Every answer is checked by fetching its Location.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use distri_redirector::minitree::Tree;
use reqwest::header::{HeaderMap, HeaderValue};
use support::*;
use tokio::task::JoinSet;

/// New builds of the first `NEW` packages of `jackherer/pkg`.
const NEW: usize = 6;
const JH: &str = "/distri/jackherer";
const SSH: &str = "/distri/supersilverhaze";

/// The first generation: `pkg/` of both releases, `debug/` of jackherer,
/// `src/` of supersilverhaze.
fn first() -> Tree {
    let mut t = origin_tree();
    t.set_tree("jackherer", "debug", PACKAGES);
    t.set_tree("supersilverhaze", "src", 8);
    t
}

/// The second: new builds in `jackherer/pkg`.
fn second() -> Tree {
    let mut t = first();
    t.publish("jackherer", "pkg", NEW, "2.0-1");
    t
}

fn without_debug(mut t: Tree) -> Tree {
    t.remove_tree("jackherer", "debug");
    t
}

fn old_src(mut t: Tree) -> Tree {
    t.set_tree("supersilverhaze", "src", 5);
    t
}

/// The new generation's index, without the new images yet.
fn mid_sync() -> Tree {
    let mut t = second();
    for i in 0..NEW {
        t.remove(&format!(
            "distri/jackherer/pkg/pkg{i:03}-amd64-2.0-1.squashfs"
        ));
    }
    t
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

async fn start() -> Fixture {
    start_with(Options::default()).await
}

async fn start_with(opts: Options) -> Fixture {
    let specs = ["a", "b", "c", "no-debug", "old-src"]
        .into_iter()
        .map(|n| spec(n, 50.0, 8.0))
        .collect();
    let trees = vec![
        first(),
        first(),
        first(),
        without_debug(first()),
        old_src(first()),
    ];
    let f = Fixture::start_with(specs, trees, opts).await;
    f.origin.serve(first());
    f
}

async fn wait_summaries(f: &Fixture, want: &[(&str, &str)]) {
    for (name, prefix) in want {
        f.until(&format!("{name}: {prefix}"), |f| {
            f.summary(name).starts_with(prefix)
        })
        .await;
    }
}

#[tokio::test]
async fn a_mirror_without_a_tree_or_with_an_old_one_gets_only_what_it_has() {
    let f = start_with(Options {
        extra: "[admin]\nlisten = [\"127.0.0.1:0\"]\n",
        ..Options::default()
    })
    .await;
    wait_summaries(
        &f,
        &[
            ("a", "ok: fresh and complete"),
            (
                "no-debug",
                "ok, but missing: jackherer/debug/meta.binaryproto: 404",
            ),
            (
                "old-src",
                "ok, but stale: supersilverhaze/src/meta.binaryproto",
            ),
        ],
    )
    .await;
    let all = set(&["a", "b", "c", "no-debug", "old-src"]);
    assert_eq!(
        f.served_by(&format!("{JH}/pkg/pkg003-amd64-1.0-1.squashfs"), 60)
            .await,
        all,
        "pkg/ from every mirror"
    );
    assert_eq!(
        f.served_by(&format!("{JH}/debug/pkg003-amd64-1.0-1.squashfs"), 60)
            .await,
        set(&["a", "b", "c", "old-src"]),
        "no debug/ traffic to the mirror without it"
    );
    assert_eq!(
        f.served_by(&format!("{SSH}/src/pkg004-amd64-1.0-1.squashfs"), 60)
            .await,
        all,
        "a src/ file the old index lists"
    );
    assert_eq!(
        f.served_by(&format!("{SSH}/src/pkg007-amd64-1.0-1.squashfs"), 60)
            .await,
        set(&["a", "b", "c", "no-debug"]),
        "a src/ file the old index does not list"
    );
    assert_eq!(
        f.served_by(&format!("{SSH}/src/meta.binaryproto"), 60)
            .await,
        set(&["a", "b", "c", "no-debug"]),
        "src/'s index only from mirrors fresh for src/"
    );
    shown_to_operators(&f).await;
}

/// The status page's JSON, `?mirrorlist` and the metrics say the same.
async fn shown_to_operators(f: &Fixture) {
    let a = get(f.addr(), "/mirrors.json", "").await;
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let mirror = |name: &str| {
        j["mirrors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone()
    };
    let tree = |name: &str, release: &str, tree: &str| {
        mirror(name)["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["release"] == release && t["tree"] == tree)
            .map(|t| t["state"].as_str().unwrap().to_string())
    };
    assert_eq!(
        tree("no-debug", "jackherer", "debug").as_deref(),
        Some("missing")
    );
    assert_eq!(
        tree("no-debug", "jackherer", "pkg").as_deref(),
        Some("fresh")
    );
    assert_eq!(
        tree("old-src", "supersilverhaze", "src").as_deref(),
        Some("behind")
    );
    assert_eq!(
        tree("a", "jackherer", "src"),
        None,
        "the origin has no jackherer/src"
    );

    // ?mirrorlist for a debug file: why the mirror without debug/ is out.
    let a = get(
        f.addr(),
        &format!("{JH}/debug/pkg003-amd64-1.0-1.squashfs?mirrorlist"),
        "X-Forwarded-For: 6.0.1.1\r\nAccept: application/json\r\n",
    )
    .await;
    let e: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert!(
        e["file"].as_str().unwrap().starts_with("an immutable file"),
        "{e}"
    );
    let out = e["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "no-debug")
        .unwrap_or_else(|| panic!("no-debug is excluded: {e}"));
    assert_eq!(out["reason"], "lacks_file", "{e}");
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("missing: jackherer/debug"),
        "{e}"
    );

    let m = scrape(f.service.as_ref().unwrap().admin_addrs[0]).await;
    let state = |mirror: &str, release: &str, tree: &str, state: &str| {
        at(
            &m,
            &format!(
                "distri_mirror_tree_state{{mirror={mirror},release={release},state={state},tree={tree}}}"
            ),
        )
    };
    assert_eq!(state("no-debug", "jackherer", "debug", "missing"), 1.0);
    assert_eq!(state("no-debug", "jackherer", "debug", "fresh"), 0.0);
    assert_eq!(state("old-src", "supersilverhaze", "src", "behind"), 1.0);
    assert_eq!(state("a", "supersilverhaze", "src", "fresh"), 1.0);
}

#[tokio::test]
async fn a_new_generation_reaches_clients_from_every_mirror_that_has_each_file() {
    let mut f = start().await;
    wait_summaries(&f, &[("a", "ok: fresh and complete"), ("c", "ok: fresh")]).await;
    // The origin publishes; a syncs at once, b does not yet, c is caught
    // with the new index and without the new images.
    f.origin.serve(second());
    f.mirror("a").serve(second());
    f.mirror("c").serve(mid_sync());
    f.mirror("no-debug").serve(without_debug(second()));
    f.mirror("old-src").serve(old_src(second()));
    wait_summaries(
        &f,
        &[
            ("a", "ok: fresh and complete"),
            ("b", "ok, but stale: jackherer/pkg/meta.binaryproto differs"),
            ("c", "ok, but incomplete: jackherer/pkg/pkg00"),
        ],
    )
    .await;
    assert!(
        f.summary("c").contains("serving what its previous index"),
        "{}",
        f.summary("c")
    );
    let synced = set(&["a", "no-debug", "old-src"]);
    let everyone = set(&["a", "b", "c", "no-debug", "old-src"]);
    // Old images: every mirror, the lagging and the mid-sync one included.
    for file in [
        "pkg000-amd64-1.0-1.squashfs",
        "pkg011-amd64-1.0-1.meta.textproto",
    ] {
        assert_eq!(
            f.served_by(&format!("{JH}/pkg/{file}"), 60).await,
            everyone,
            "{file}"
        );
    }
    // New images and every mutable file: only mirrors with the new index
    // verified complete; the unversioned metadata names the new build.
    for file in [
        "pkg000-amd64-2.0-1.squashfs",
        "pkg005-amd64-2.0-1.meta.textproto",
        "pkg000-amd64.meta.textproto",
        "meta.binaryproto",
    ] {
        assert_eq!(
            f.served_by(&format!("{JH}/pkg/{file}"), 60).await,
            synced,
            "{file}"
        );
    }
    install_everything(&f, &second()).await;
}

/// What distri does on an install: many concurrent GETs, redirects
/// followed, from several client networks. Every body must be the origin's;
/// the lagging mirror must have served some of them.
async fn install_everything(f: &Fixture, origin: &Tree) {
    let files: Vec<String> = origin
        .paths()
        .filter(|p| p.starts_with("distri/jackherer/pkg/"))
        .map(String::from)
        .collect();
    // Seven networks, and one the lagging mirror is the pick for among
    // every mirror (rendezvous hashing decides which; find one).
    let mut nets: Vec<u32> = (0..7).collect();
    for net in 7..256 {
        let old = format!("{JH}/pkg/pkg000-amd64-1.0-1.squashfs");
        let a = f.get_as(&format!("6.0.{net}.1"), &old).await;
        if f.name_of(a.location()) == "b" {
            nets.push(net);
            break;
        }
    }
    assert_eq!(nets.len(), 8, "a network that b serves");
    let mut fetches = JoinSet::new();
    for net in nets {
        let mut headers = HeaderMap::new();
        let ip = format!("6.0.{net}.1");
        headers.insert("x-forwarded-for", HeaderValue::from_str(&ip).unwrap());
        // The probe's client installs the TLS provider reqwest needs built.
        let _ = distri_redirector::probe::check::client(Duration::from_secs(10));
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()
            .unwrap();
        for path in &files {
            let (http, url, path) = (
                http.clone(),
                format!("http://{}/{path}", f.addr()),
                path.clone(),
            );
            fetches.spawn(async move {
                let r = http.get(&url).send().await.unwrap();
                let (status, at) = (r.status().as_u16(), r.url().to_string());
                (path, status, at, r.bytes().await.unwrap())
            });
        }
    }
    let mut by_mirror = BTreeSet::new();
    while let Some(done) = fetches.join_next().await {
        let (path, status, at, body) = done.unwrap();
        assert_eq!(status, 200, "{path} from {at}");
        assert!(
            Some(&body) == origin.get(&path),
            "{path} from {at}: not the origin's bytes"
        );
        by_mirror.insert(f.name_of(&at));
    }
    assert!(
        by_mirror.contains("b"),
        "the lagging mirror served its files: {by_mirror:?}"
    );
    assert!(by_mirror.contains("a"), "{by_mirror:?}");
}

/// A mirror verified complete that then loses files (a disk replaced, a
/// clean-up gone wrong) keeps the same index: that index no longer counts,
/// and the tree's files go elsewhere until it is whole again.
#[tokio::test]
async fn a_mirror_that_loses_files_stops_getting_that_tree() {
    let mut f = start().await;
    wait_summaries(&f, &[("a", "ok: fresh and complete")]).await;
    // Half the images go; a round of an unchanged index checks one, at
    // random, so it notices within a few rounds.
    let mut damaged = first();
    damaged.remove_newest_packages("jackherer", PACKAGES / 2);
    f.mirror("a").serve(damaged);
    wait_summaries(&f, &[("a", "ok, but incomplete: jackherer/pkg/pkg0")]).await;
    assert!(
        f.summary("a")
            .ends_with("404; no index of this tree verified complete"),
        "{}",
        f.summary("a")
    );
    let old = f
        .served_by(&format!("{JH}/pkg/pkg000-amd64-1.0-1.squashfs"), 60)
        .await;
    assert!(!old.contains("a"), "{old:?}");
    assert!(
        f.served_by(&format!("{SSH}/pkg/pkg000-amd64-1.0-1.squashfs"), 60)
            .await
            .contains("a"),
        "its other trees still count"
    );
    f.mirror("a").serve(first());
    wait_summaries(&f, &[("a", "ok: fresh and complete")]).await;
}
