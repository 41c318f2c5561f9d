//! The server loop: accept on every listener, cap the connections served at
//! once, serve HTTP/1.1 and HTTP/2 (h2c) through the front-end, and shut
//! down gracefully.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config;
use crate::frontend::Frontend;

/// How long connections get to finish their requests after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// Binds every address; fails on the first that cannot be bound, naming it.
pub async fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Serves until `shutdown` completes, then lets open connections finish
/// (for at most ten seconds).
pub async fn run(
    listeners: Vec<TcpListener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // A cap on connections is a cap on memory; an owned permit travels with
    // each connection task and frees its slot when the task ends.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = accept_any(&listeners) => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let frontend = frontend.clone();
        let service = service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(frontend.handle(&req, peer)))
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors here are clients going away mid-request: nothing to do.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listeners);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}

/// The next connection from whichever listener has one.
async fn accept_any(listeners: &[TcpListener]) -> io::Result<(TcpStream, SocketAddr)> {
    poll_fn(|cx| {
        for l in listeners {
            if let Poll::Ready(r) = l.poll_accept(cx) {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}

/// Out of file descriptors or memory: back off briefly instead of spinning.
async fn accept_error(e: io::Error) {
    tracing::warn!(cause = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
