//! The hostile-input battery: malformed and hostile requests over raw TCP,
//! each with the answer it must get, against the real service on port 0.
//! After the battery the service still redirects correctly, and no answer
//! ever carried a `Location` outside the configured bases.
//!
//! The same bytes go to nginx (`return 302` on loopback, as in
//! `benches/load.sh`) when it is installed, and each answer is compared
//! with the one recorded here for nginx; where the two differ, the case
//! says why (`README.md`, "Hostile input", summarises them).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

#[path = "hostile/battery.rs"]
mod battery;
use battery::{Case, Ctx, Reply, cases};

/// Sends `case` on a fresh connection from its source address, half-closes,
/// and reads every answer until the server closes.
async fn send(addr: SocketAddr, case: &Case) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{}:0", case.from).parse().unwrap())
        .unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let buf = send_while_reading(stream, case.bytes.clone(), true, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("{}: no close within 15 s", case.name));
    Reply::parse(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_battery_gets_its_answers_and_the_service_still_serves() {
    let f = Fixture::world(Options::default()).await;
    let mut bases: Vec<String> = f.urls.clone();
    bases.push(f.origin.url());
    let mut alone = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2"] {
        let plain = battery::plain_from(from);
        let reply = send(f.addr(), &plain).await;
        assert_eq!(reply.statuses, [302], "{from}: {reply:?}");
        alone.push((from, reply.locations[0].clone()));
    }
    let ctx = Ctx {
        mirrors: f.urls.clone(),
        origin: f.origin.url(),
        alone,
    };
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let reply = send(f.addr(), case).await;
        if reply.statuses != case.want {
            wrong.push(format!(
                "{}: want {:?}, got {:?} {:?}",
                case.name,
                case.want,
                reply.statuses,
                String::from_utf8_lossy(&reply.raw[..reply.raw.len().min(300)])
            ));
        }
        for l in &reply.locations {
            assert!(
                bases.iter().any(|b| l.starts_with(b.as_str())),
                "{}: Location {l} outside the configured bases {bases:?}",
                case.name
            );
        }
        if let Some(check) = case.check {
            if let Err(e) = check(&reply, &ctx) {
                wrong.push(format!("{}: {e}", case.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Still serving, and serving right.
    assert_eq!(f.where_to("2.0.0.1").await, "us-nyc");
    assert_eq!(f.where_to("1.0.0.1").await, "eu-fra");
    assert_eq!(f.where_to("8.0.0.1").await, "jp-tyo");
}

/// The same bytes to nginx, whose answers are recorded beside ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_answers_the_battery_as_recorded() {
    let Some(nginx) = battery::Nginx::start() else {
        println!("skipped: no nginx on PATH (.ci/run installs Debian's nginx)");
        return;
    };
    let mut wrong = Vec::new();
    for case in cases() {
        let reply = send(nginx.addr, &case).await;
        let want = case.nginx.unwrap_or(&case.want);
        if reply.statuses != want {
            wrong.push(format!(
                "{}: nginx recorded {want:?}, got {:?} {:?}",
                case.name,
                reply.statuses,
                String::from_utf8_lossy(&reply.raw[..reply.raw.len().min(200)])
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
