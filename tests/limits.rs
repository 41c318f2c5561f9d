//! Request limits over raw TCP, against the real service on port 0: a
//! half-closed client is answered, an oversized head gets 431, an
//! oversized target 414, and what fits is served.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PKG: &str = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs";

/// The status line the service answers `request` with (see
/// [`send_while_reading`]).
async fn status_of(addr: SocketAddr, request: Vec<u8>, half_close: bool) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let buf = send_while_reading(s, request, half_close, Duration::from_secs(10))
        .await
        .expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().unwrap_or("").to_string()
}

/// The fixture with `extra` added to its config.
async fn with_config(extra: &'static str) -> Fixture {
    let opts = Options {
        extra,
        ..Options::default()
    };
    Fixture::start(vec![], opts).await
}

/// How long after `since` the service closed its end of `s`: the next
/// read must find the close, not data, within 20 s.
async fn closed_after(s: &mut (impl AsyncRead + Unpin), since: std::time::Instant) -> Duration {
    let mut buf = vec![0u8; 4096];
    let end = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("closed within 20 s");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    since.elapsed()
}

fn request(target: &str, extra_header: Option<(&str, usize)>) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: t\r\n");
    if let Some((name, len)) = extra_header {
        r.push_str(&format!("{name}: {}\r\n", "a".repeat(len)));
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_what_is_too_big_and_serve_the_rest() {
    let f = Fixture::start(vec![], Options::default()).await;
    let addr = f.addr();

    // Sent, then the client's side shut: still answered.
    for _ in 0..20 {
        let r = request(PKG, None);
        assert_eq!(status_of(addr, r, true).await, "HTTP/1.1 302 Found");
    }

    // A 200 KB header: 431, not accepted.
    let huge = request(PKG, Some(("X-Big", 200 * 1024)));
    let status = status_of(addr, huge, false).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");

    // Just under the default 16 KiB head: served.
    let fits = request(PKG, Some(("X-Big", 15 * 1024)));
    assert_eq!(status_of(addr, fits, false).await, "HTTP/1.1 302 Found");

    // A 9 KiB target: 414; an 8,000-byte one is served.
    let long = format!("/distri/jackherer/pkg/{}.squashfs", "a".repeat(9 * 1024));
    let status = status_of(addr, request(&long, None), false).await;
    assert!(status.starts_with("HTTP/1.1 414"), "{status:?}");
    let ok = format!("/distri/jackherer/pkg/{}.squashfs", "a".repeat(7900));
    assert_eq!(
        status_of(addr, request(&ok, None), false).await,
        "HTTP/1.1 302 Found"
    );

    // And the service goes on serving.
    assert_eq!(f.where_to("1.0.0.1").await, "origin");
}

/// An idle keep-alive connection (answered, then silent) is closed once
/// `header_timeout` passes without a new request, as a connection that
/// never sent one is: idle clients cannot hold connection slots forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed_after_the_header_timeout() {
    let f = with_config("[server]\nheader_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(f.addr()).await.unwrap();
    let keep_alive = format!("GET {PKG} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(keep_alive.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 302"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle = closed_after(&mut s, std::time::Instant::now()).await;
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?}, before the timeout"
    );
}

/// A client that trickles its request head, a byte every 100 ms, is closed
/// once `header_timeout` passes from the start of the head: progress on a
/// head does not extend it (slow loris).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_closed_after_the_header_timeout() {
    let f = with_config("[server]\nheader_timeout = \"1s\"\n").await;
    let s = TcpStream::connect(f.addr()).await.unwrap();
    let started = std::time::Instant::now();
    let (mut rx, mut tx) = s.into_split();
    let head = format!(
        "GET {PKG} HTTP/1.1\r\nHost: t\r\nX-Slow: {}",
        "a".repeat(200)
    );
    let trickle = tokio::spawn(async move {
        for b in head.bytes() {
            if tx.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let took = closed_after(&mut rx, started).await;
    // 25 s of head would have been sent by the end: the timeout, not the
    // head's end, closed it.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    trickle.abort();
}

/// A client that connects and says nothing does not take a connection
/// slot: the listener defers accepting until a client has sent something
/// (TCP_DEFER_ACCEPT). With one slot and a 60 s header timeout, a silent
/// connection accepted at once would hold the slot for a minute; the
/// client after it is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_take_a_slot() {
    let f = with_config("[server]\nmax_connections = 1\nheader_timeout = \"60s\"\n").await;
    let _silent = TcpStream::connect(f.addr()).await.unwrap();
    let r = request(PKG, None);
    assert_eq!(status_of(f.addr(), r, false).await, "HTTP/1.1 302 Found");
}
