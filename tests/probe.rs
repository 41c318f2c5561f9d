//! The prober end to end: real loopback mirrors serving miniature trees,
//! fresh, stale, mid-sync, redirecting, hung, dying and coming back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use distri_redirector::minitree::{Mode, Tree};
use support::*;

const SETTLE: Duration = Duration::from_secs(10);
/// The test config's probe interval and timeout (see `Options::default`).
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Room for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

fn stale() -> Tree {
    let mut t = origin_tree();
    t.set_release("supersilverhaze", PACKAGES - 2);
    t
}

fn missing_release() -> Tree {
    let mut t = origin_tree();
    t.remove_release("jackherer");
    t
}

fn mid_sync() -> Tree {
    let mut t = origin_tree();
    t.remove_newest_packages("jackherer", 2);
    t
}

/// Each mirror gets the files it was verified to hold: a mirror behind on
/// one release still serves that release's files its index lists, and the
/// other release fully; a mirror without a release gets the other; one
/// caught mid-sync on its first round gets nothing of that tree.
#[tokio::test]
async fn each_mirror_gets_what_it_was_verified_to_hold() {
    let specs = vec![
        spec("fresh", 50.0, 8.0),
        spec("stale", 50.0, 8.0),
        spec("no-jackherer", 50.0, 8.0),
        spec("mid-sync", 50.0, 8.0),
        spec("redirects", 50.0, 8.0),
    ];
    let trees = vec![
        origin_tree(),
        stale(),
        missing_release(),
        mid_sync(),
        origin_tree(),
    ];
    let mut f = Fixture::start_with(specs, trees, Options::default()).await;
    f.mirror("redirects")
        .set_mode(Mode::Redirect("http://127.0.0.1:9/".into()));
    f.wait_eligible(&["fresh", "stale", "no-jackherer", "mid-sync"], SETTLE)
        .await;
    // Each says what it lacks.
    let want = [
        (
            "stale",
            "ok, but stale: supersilverhaze/pkg/meta.binaryproto differs from origin",
        ),
        (
            "no-jackherer",
            "ok, but missing: jackherer/pkg/meta.binaryproto: 404",
        ),
        (
            "mid-sync",
            "ok, but incomplete: jackherer/pkg/pkg011-amd64-1.0-1.squashfs: 404; no index of this tree verified complete",
        ),
        ("redirects", "redirected to http://127.0.0.1:9/distri/"),
    ];
    for (name, reason) in want {
        f.until(&format!("{name}: {reason}"), |f| {
            f.summary(name).starts_with(reason)
        })
        .await;
    }
    let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    };
    let ssh = "/distri/supersilverhaze/pkg";
    let jh = "/distri/jackherer/pkg";
    // An old image: every mirror that has the release.
    assert_eq!(
        f.served_by(&format!("{ssh}/pkg000-amd64-1.0-1.squashfs"), 40)
            .await,
        set(&["fresh", "stale", "no-jackherer", "mid-sync"])
    );
    // The newest image, and the mutable files: not the stale mirror.
    for file in [
        "pkg011-amd64-1.0-1.squashfs",
        "meta.binaryproto",
        "pkg011-amd64.meta.textproto",
    ] {
        assert_eq!(
            f.served_by(&format!("{ssh}/{file}"), 40).await,
            set(&["fresh", "no-jackherer", "mid-sync"]),
            "{file}"
        );
    }
    // jackherer: not the mirror without it, nor the one caught mid-sync.
    assert_eq!(
        f.served_by(&format!("{jh}/pkg000-amd64-1.0-1.squashfs"), 40)
            .await,
        set(&["fresh", "stale"])
    );
}

#[tokio::test]
async fn a_hung_mirror_is_out_within_timeout_plus_interval() {
    let f = Fixture::start(
        vec![spec("ok", 50.0, 8.0), spec("hangs", 50.1, 8.1)],
        Options::default(),
    )
    .await;
    f.wait_eligible(&["ok", "hangs"], SETTLE).await;
    let hangs = f.names.iter().position(|n| *n == "hangs").unwrap();
    f.mirrors[hangs].set_mode(Mode::Hang);
    let took = f.wait_eligible(&["ok"], SETTLE).await;
    assert!(took <= TIMEOUT + INTERVAL + SLACK, "took {took:?}");
    assert!(
        f.reason("hangs").starts_with("timeout after"),
        "{}",
        f.reason("hangs")
    );
}

/// Sends requests for the whole test and checks every answer: a 302 under a
/// configured base, and never to `avoid` once it was seen ineligible.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(f: &Arc<Fixture>, avoid: &'static str, avoid_now: Arc<AtomicBool>) -> Traffic {
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (f, stop2, sent2) = (f.clone(), stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u32;
            while !stop2.load(Ordering::Relaxed) {
                let must_avoid = avoid_now.load(Ordering::SeqCst);
                let ip = format!("6.0.{}.1", n % 256);
                let a = f
                    .get_as(&ip, "/distri/jackherer/pkg/pkg003-amd64-1.0-1.squashfs")
                    .await;
                assert_eq!(a.status, 302, "{a:?}");
                let to = f.name_of(a.location());
                if must_avoid {
                    assert_ne!(to, avoid, "sent to {avoid} after it was marked ineligible");
                }
                sent2.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
        Traffic { stop, sent, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("every answer was right");
        self.sent.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_dead_mirror_goes_out_and_comes_back_while_requests_flow() {
    let mut f = Fixture::start(
        vec![spec("stays", 50.0, 8.0), spec("dies", 50.2, 8.2)],
        Options::default(),
    )
    .await;
    f.wait_eligible(&["stays", "dies"], SETTLE).await;
    let dies = f.names.iter().position(|n| *n == "dies").unwrap();
    let addr = f.mirrors[dies].addr();
    // Take the server out of the fixture: this test stops and restarts it
    // while the traffic task shares the fixture.
    let mut server = f.mirrors.remove(dies);
    let f = Arc::new(f);
    let avoid = Arc::new(AtomicBool::new(false));
    let traffic = Traffic::start(&f, "dies", avoid.clone());

    server.stop().await;
    let out = f.wait_eligible(&["stays"], SETTLE).await;
    avoid.store(true, Ordering::SeqCst);
    assert!(out <= 2 * INTERVAL + SLACK, "out after {out:?}");
    assert_eq!(f.reason("dies"), "connection refused");

    server.restart().await.unwrap();
    assert_eq!(server.addr(), addr);
    avoid.store(false, Ordering::SeqCst);
    let back = f.wait_eligible(&["stays", "dies"], SETTLE).await;
    assert!(
        back <= 2 * INTERVAL + SLACK,
        "back after {back:?} (rise = 2)"
    );

    let sent = traffic.finish().await;
    assert!(sent > 10, "only {sent} requests");
}

#[tokio::test]
async fn an_origin_outage_keeps_fresh_mirrors_eligible() {
    let mut f = Fixture::world(Options::default()).await;
    f.origin.stop().await;
    // Mirrors keep being probed against the last known index ...
    let before = f.mirrors[0].requests();
    let start = tokio::time::Instant::now();
    while f.mirrors[0].requests() < before + 12 {
        assert_eq!(f.eligible().len(), 4, "a mirror dropped during the outage");
        assert!(start.elapsed() < SETTLE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and stay in, so clients are still sent to them.
    assert_eq!(f.where_to("3.0.0.1").await, "jp-tyo");
    assert_eq!(f.eligible().len(), 4);
}

#[tokio::test]
async fn unchanged_indexes_are_not_downloaded_again() {
    let f = Fixture::start(vec![spec("m", 50.0, 8.0)], Options::default()).await;
    f.wait_eligible(&["m"], SETTLE).await;
    let start = tokio::time::Instant::now();
    // At least four rounds: each is a HEAD of each index plus the sample.
    while f.mirrors[0].requests() < 4 * 8 {
        assert!(start.elapsed() < SETTLE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        f.mirrors[0].bodies(),
        2,
        "one GET per release index, on the first round only"
    );
}

/// A new package on the origin: an unsynced mirror keeps serving what it
/// has, the new package and the mutable files go to the synced one.
#[tokio::test]
async fn a_new_package_on_the_origin_goes_only_to_synced_mirrors() {
    let f = Fixture::start(
        vec![spec("a", 50.0, 8.0), spec("b", 50.1, 8.1)],
        Options::default(),
    )
    .await;
    f.wait_eligible(&["a", "b"], SETTLE).await;
    let mut newer = origin_tree();
    newer.set_release("jackherer", PACKAGES + 1);
    f.origin.serve(newer.clone());
    f.mirrors[0].serve(newer.clone());
    f.until("b behind on jackherer", |f| {
        f.summary("b").starts_with("ok, but stale: jackherer")
    })
    .await;
    let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    };
    let jh = "/distri/jackherer/pkg";
    let new = format!("{jh}/pkg{PACKAGES:03}-amd64-1.0-1.squashfs");
    assert_eq!(f.served_by(&new, 30).await, set(&["a"]));
    assert_eq!(
        f.served_by(&format!("{jh}/meta.binaryproto"), 30).await,
        set(&["a"])
    );
    assert_eq!(
        f.served_by(&format!("{jh}/pkg000-amd64-1.0-1.squashfs"), 30)
            .await,
        set(&["a", "b"])
    );
    f.mirrors[1].serve(newer);
    f.until("b fresh", |f| f.summary("b") == "ok: fresh and complete")
        .await;
    assert_eq!(f.served_by(&new, 30).await, set(&["a", "b"]));
}
