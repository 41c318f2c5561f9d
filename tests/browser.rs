//! The status page and `?mirrorlist` in a real headless browser (Debian's
//! `chromium`): the map is there, every mirror has a marker, and the
//! console stays quiet. `.ci/run` installs chromium; without it this test
//! says so on stderr and passes.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::*;

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
        "google-chrome".into(),
    ];
    candidates
        .into_iter()
        .filter(|c| !c.is_empty())
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(PathBuf::from)
}

/// The DOM after loading `url`, and the console messages it caused.
fn load(browser: &PathBuf, url: &str) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=1",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed: {out:?}");
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(String::from)
        .collect();
    (String::from_utf8(out.stdout).unwrap(), console)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_a_browser() {
    let Some(browser) = chromium() else {
        // Straight to stderr: the test harness does not capture this.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED status_page_renders_in_a_browser: no chromium (apt-get install chromium; .ci/run does)"
        );
        return;
    };
    // The console check catches errors: a page with one is seen.
    let (_, noisy) = tokio::task::block_in_place(|| {
        load(
            &browser,
            "data:text/html,<script>console.error('boom')</script>",
        )
    });
    assert!(noisy.iter().any(|l| l.contains("boom")), "{noisy:?}");

    let mut mirrors = world();
    mirrors.push(spec("down-one", -33.9, 151.2));
    let mut f = Fixture::start(mirrors, Options::default()).await;
    f.wait_eligible(
        &["eu-fra", "us-nyc", "jp-tyo", "br-sao", "down-one"],
        Duration::from_secs(10),
    )
    .await;
    f.mirror("down-one").stop().await;
    f.wait_reason("down-one", "connection refused", Duration::from_secs(10))
        .await;
    for ip in ["1.0.0.1", "2.0.0.1", "8.0.0.1", "4.0.0.1"] {
        f.where_to(ip).await;
    }
    f.service.as_ref().unwrap().redraw_status();
    // Until the page has the down mirror and the counts; then the browser.
    let addr = f.addr();
    f.eventually(
        "the page to show the down mirror and the cells",
        || async move {
            let a = raw(
                addr,
                "GET /mirrors HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await;
            let html = String::from_utf8_lossy(&a.body);
            (html.contains("connection refused") && html.contains("class=\"cell\"")).then_some(())
        },
    )
    .await;
    let url = format!("http://{addr}/mirrors");
    let (dom, console) = tokio::task::block_in_place(|| load(&browser, &url));
    assert!(console.is_empty(), "console: {console:?}");
    assert!(dom.contains("<svg id=\"map\""), "no map");
    assert!(dom.contains("class=\"land\""), "no countries");
    for name in ["eu-fra", "us-nyc", "jp-tyo", "br-sao"] {
        assert!(
            dom.contains(&format!("class=\"mirror up\" data-mirror=\"{name}\"")),
            "{name} has no green marker"
        );
    }
    assert!(dom.contains("class=\"mirror down\" data-mirror=\"down-one\""));
    assert_eq!(
        dom.matches("class=\"cell\"").count(),
        4,
        "one cell per client city"
    );

    let explain = format!(
        "http://{}/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs?mirrorlist&ip=8.0.0.1",
        f.addr()
    );
    let (dom, console) = tokio::task::block_in_place(|| load(&browser, &explain));
    assert!(console.is_empty(), "console: {console:?}");
    assert!(
        dom.contains("<tr class=\"chosen\"><td>jp-tyo</td>"),
        "{dom}"
    );
}
