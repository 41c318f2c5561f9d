//! The server loop: accept on every listener, cap the connections served at
//! once, serve HTTP/1.1 through the front-end, and shut down gracefully.
//!
//! HTTP/1.1 only: distri's client speaks HTTP/1.1 to a plain-HTTP URL, and
//! a TLS-terminating proxy in front speaks it to its backends. Detecting
//! HTTP/2 prior knowledge (h2c) cost a separate read of the first 24 bytes
//! of every connection, for a protocol no client used.
//!
//! The service runs one such loop per serving thread, each with listening
//! sockets of its own (SO_REUSEPORT), so the kernel spreads new connections
//! over them and a connection starts on the thread that accepted it; the
//! runtime is work-stealing, so a busy or preempted thread's ready
//! connections are served by another (`app`; benches/RESULTS.md has the
//! measurements).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config;
use crate::frontend::Frontend;

/// How long connections get to finish their requests after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

/// Binds every address once per worker, with SO_REUSEPORT; fails on the
/// first that cannot be bound, naming it. Port 0 is resolved by the first
/// socket, and the other workers bind the port it got.
pub fn bind_workers(
    addrs: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut shards: Vec<Vec<std::net::TcpListener>> =
        (0..workers.max(1)).map(|_| Vec::new()).collect();
    for &a in addrs {
        let first = reuseport_listener(a)?;
        let bound = first.local_addr()?;
        shards[0].push(first);
        for shard in shards.iter_mut().skip(1) {
            shard.push(reuseport_listener(bound)?);
        }
    }
    Ok(shards)
}

fn reuseport_listener(a: SocketAddr) -> io::Result<std::net::TcpListener> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}"));
    let s =
        Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP)).map_err(named)?;
    s.set_reuse_address(true).map_err(named)?;
    s.set_reuse_port(true).map_err(named)?;
    if a.is_ipv6() {
        // "[::]" serves IPv4 too, whatever the system default.
        s.set_only_v6(false).map_err(named)?;
    }
    // Accepted sockets inherit it on Linux: one system call per listener
    // instead of one per connection (a test below checks the inheritance).
    s.set_tcp_nodelay(true).map_err(named)?;
    s.bind(&a.into()).map_err(named)?;
    s.listen(1024).map_err(named)?;
    s.set_nonblocking(true).map_err(named)?;
    Ok(s.into())
}

/// Serves until `shutdown` completes, then lets open connections finish
/// (for at most ten seconds). `permits` caps the connections served at once.
pub async fn run(
    listeners: Vec<TcpListener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // A cap on connections is a cap on memory; an owned permit travels with
    // each connection task and frees its slot when the task ends. Workers
    // share one semaphore, so the cap is for the whole service.
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        // Accept first, then wait for a slot: a worker that waited for a slot
        // before accepting could hold a freed slot while the waiting
        // connection sits in another worker's backlog. So at the cap, each
        // worker holds at most one accepted connection it does not serve yet.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let frontend = frontend.clone();
        let service = service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(frontend.handle(&req, peer)))
        });
        let conn = builder.serve_connection(CloseOnDrop(TokioIo::new(stream)), service);
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

/// A connection whose write side is closed by closing the socket when the
/// connection ends, as nginx does, not by a `shutdown` before it: one
/// system call fewer per connection. The peer sees the same FIN either way
/// (or the same reset, if it sent data that was never read).
struct CloseOnDrop(TokioIo<TcpStream>);

impl hyper::rt::Read for CloseOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CloseOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Out of file descriptors or memory: back off briefly instead of spinning.
async fn accept_error(e: io::Error) {
    tracing::warn!(cause = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Responses go out at once: accepted sockets have TCP_NODELAY, set on
    /// the listener and inherited.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut shards = bind_workers(&[loopback], 1).unwrap();
        let listener = TcpListener::from_std(shards.remove(0).remove(0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
