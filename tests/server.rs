//! The server loop: the connection cap and graceful shutdown.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Reads one response head (the healthz body is tiny and comes with it).
async fn read_answer(s: &mut TcpStream) -> String {
    let mut buf = vec![0; 1024];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let opts = Options {
        extra: "[server]\nmax_connections = 1\n",
        ..Options::default()
    };
    let f = Fixture::start(vec![spec("m", 50.0, 8.0)], opts).await;
    let mut first = TcpStream::connect(f.addr()).await.unwrap();
    first.write_all(REQUEST).await.unwrap();
    assert!(read_answer(&mut first).await.starts_with("HTTP/1.1 200"));

    // The first connection stays open: the second is accepted by the kernel
    // but not served.
    let mut second = TcpStream::connect(f.addr()).await.unwrap();
    second.write_all(REQUEST).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), read_answer(&mut second)).await;
    assert!(early.is_err(), "served over the cap: {early:?}");

    drop(first);
    let late = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut second)).await;
    assert!(
        late.expect("served once the slot is free")
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn stop_closes_idle_connections_and_the_port() {
    let mut f = Fixture::start(vec![spec("m", 50.0, 8.0)], Options::default()).await;
    let addr = f.addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(REQUEST).await.unwrap();
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(5), f.service.take().unwrap().stop())
        .await
        .expect("an idle keep-alive connection does not hold up shutdown");
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).await.unwrap(),
        0,
        "closed by the server"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// HTTP/1.1 only: a client starting with HTTP/2 prior knowledge (h2c) gets
/// its connection closed without an answer, and the server goes on serving.
#[tokio::test]
async fn an_h2c_client_is_closed_and_others_are_served() {
    let f = Fixture::start(vec![spec("m", 50.0, 8.0)], Options::default()).await;
    let mut s = TcpStream::connect(f.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed within 5 s");
    // A reset or an orderly close; either way, no HTTP answer.
    assert!(read.is_err() || !buf.starts_with(b"HTTP/1.1 2"), "{buf:?}");
    let a = raw(
        f.addr(),
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 200);
}

/// `runtime = "per-thread"`: a runtime per serving thread, new connections
/// handed to the least busy one. Every connection is served, and stopping
/// closes them all and ends every thread.
#[tokio::test]
async fn per_thread_runtimes_serve_every_connection_and_stop() {
    let opts = Options {
        extra: "[server]\nworkers = 3\nruntime = \"per-thread\"\n",
        ..Options::default()
    };
    let mut f = Fixture::start(vec![spec("m", 50.0, 8.0)], opts).await;
    let addr = f.addr();
    // More connections than the threads' margin, opened at once, so that
    // the kernel's spread likely leaves some thread busier and some move
    // (the hand-over itself is tested in `server::threads`).
    let clients: Vec<_> = (0..24)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for _ in 0..3 {
                    s.write_all(REQUEST).await.unwrap();
                    let answer = read_answer(&mut s).await;
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                }
                s
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    let redirect = f
        .get_as("81.2.69.142", "/distri/jackherer/pkg/x.squashfs")
        .await;
    assert_eq!(redirect.status, 302);
    tokio::time::timeout(Duration::from_secs(5), f.service.take().unwrap().stop())
        .await
        .expect("every thread stops, with idle keep-alive connections open");
    for mut s in open {
        let mut rest = Vec::new();
        assert_eq!(
            s.read_to_end(&mut rest).await.unwrap(),
            0,
            "closed by the server"
        );
    }
}
