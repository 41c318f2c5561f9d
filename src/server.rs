//! The server loop: accept on every listener, cap the connections served at
//! once, serve HTTP through the front-end, and shut down gracefully.
//!
//! Plain listeners speak HTTP/1.1 only: distri's client speaks HTTP/1.1 to
//! a plain-HTTP URL, and detecting HTTP/2 prior knowledge (h2c) cost a
//! separate read of the first 24 bytes of every connection, for a protocol
//! no client used. TLS listeners speak HTTP/2 or HTTP/1.1, as ALPN decides:
//! over https distri's client (Go net/http) uses HTTP/2 and fetches a whole
//! dependency closure at once on one connection.
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

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config;
use crate::frontend::{Conn, Frontend};

/// A listening socket, and the TLS it speaks, if any.
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// The HTTP settings every connection of a loop is served with.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Time to finish the TLS handshake (the header timeout covers the rest).
    handshake_timeout: Duration,
}

impl Protocols {
    fn new(limits: &config::Server) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_streams)
            // Redirect headers are small; a client's are too.
            .max_header_list_size(64 * 1024);
        Protocols {
            http1,
            http2,
            handshake_timeout: limits.header_timeout,
        }
    }
}

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
/// (for at most `limits.shutdown_grace`). `permits` caps the connections
/// served at once.
pub async fn run(
    listeners: Vec<Listener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new(&limits));
    // A cap on connections is a cap on memory; an owned permit travels with
    // each connection task and frees its slot when the task ends. Workers
    // share one semaphore, so the cap is for the whole service.
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, listener) = tokio::select! {
            r = accept_any(&listeners) => match r {
                (Ok((stream, peer)), i) => (stream, peer, &listeners[i]),
                (Err(e), _) => {
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
        match &listener.tls {
            None => {
                let service = service_fn(move |req| {
                    let conn = Conn::plain(peer);
                    std::future::ready(Ok::<_, Infallible>(frontend.handle(&req, conn)))
                });
                let io = CloseOnDrop(TokioIo::new(stream));
                let conn = graceful.watch(protocols.http1.serve_connection(io, service));
                tokio::spawn(async move {
                    // Errors here are clients going away mid-request: nothing to do.
                    let _ = conn.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, after the
                // permit: a slow handshake holds its own slot, not the loop.
                let tls = Tls {
                    acceptor: acceptor.clone(),
                    protocols: protocols.clone(),
                    watcher: graceful.watcher(),
                };
                tokio::spawn(async move {
                    tls.serve(stream, peer, frontend).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listeners);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// One TLS connection's task.
struct Tls {
    acceptor: TlsAcceptor,
    protocols: Arc<Protocols>,
    watcher: Watcher,
}

impl Tls {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, frontend: Arc<Frontend>) {
        let handshake = self.acceptor.accept(stream);
        let stream = match tokio::time::timeout(self.protocols.handshake_timeout, handshake).await {
            Ok(Ok(s)) => s,
            // A client that never finishes, or speaks something else.
            Ok(Err(_)) | Err(_) => return,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let service = service_fn(move |req| {
            let conn = Conn { peer, tls: true };
            std::future::ready(Ok::<_, Infallible>(frontend.handle(&req, conn)))
        });
        let io = TokioIo::new(stream);
        // Errors here are clients going away mid-request: nothing to do.
        if h2 {
            let conn = self.protocols.http2.serve_connection(io, service);
            let _ = self.watcher.watch(conn).await;
        } else {
            let conn = self.protocols.http1.serve_connection(io, service);
            let _ = self.watcher.watch(conn).await;
        }
    }
}

/// The next connection from whichever listener has one, and that
/// listener's position.
async fn accept_any(listeners: &[Listener]) -> (io::Result<(TcpStream, SocketAddr)>, usize) {
    poll_fn(|cx| {
        for (i, l) in listeners.iter().enumerate() {
            if let Poll::Ready(r) = l.socket.poll_accept(cx) {
                return Poll::Ready((r, i));
            }
        }
        Poll::Pending
    })
    .await
}

/// A plain connection whose write side is closed by closing the socket when
/// the connection ends, as nginx does, not by a `shutdown` before it: one
/// system call fewer per connection. Not for TLS, whose shutdown sends the
/// close_notify alert first. The peer sees the same FIN either way
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
