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
//! over them. By default the threads share a work-stealing runtime, so a
//! busy or preempted thread's ready connections are served by another;
//! with `runtime = "per-thread"` each has its own, and `threads` places
//! new connections so that their counts stay even (`app`;
//! benches/RESULTS.md has the measurements).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config;
use crate::frontend::{Conn, Frontend};

mod handshakes;
mod threads;
mod watched;
pub use handshakes::Handshakes;
pub use threads::{Placement, Threads};
use watched::{Ended, Watched};

/// What a TLS listener speaks, and the caps on its handshakes, which all
/// TLS listeners of the service share.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub handshakes: Arc<Handshakes>,
}

/// A listening socket, and the TLS it speaks, if any.
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<Tls>,
    /// The admin listener: metrics and status pages only.
    pub admin: bool,
}

/// The HTTP settings every connection of a loop is served with.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Time to finish the TLS handshake, and to send each request head
    /// (counted from the start, then from the last write: see `silent`).
    header_timeout: Duration,
}

impl Protocols {
    fn new(limits: &config::Server) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            // The header timeout is `silent`'s, not hyper's: hyper's armed
            // and dropped a timer per request (3% of the service's time
            // under keep-alive load). Without a timer hyper has no timeout.
            .header_read_timeout(None)
            // A client that sends its request and shuts down its side
            // (`nc -N`, some scripts and proxies) still gets the answer.
            .half_close(true)
            // The head's cap is the memory a connection may hold: past it
            // 431, instead of hyper's default of about 400 KB.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192) + 4096);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        Protocols {
            http1,
            http2,
            header_timeout: limits.header_timeout,
        }
    }
}

/// Binds every address once per worker, with SO_REUSEPORT; fails on the
/// first that cannot be bound, naming it. Port 0 is resolved by the first
/// socket, and the other workers bind the port it got. Each defers
/// accepting a connection until its client has sent something, for at
/// most `defer`.
pub fn bind_workers(
    addrs: &[SocketAddr],
    workers: usize,
    defer: Duration,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut shards: Vec<Vec<std::net::TcpListener>> =
        (0..workers.max(1)).map(|_| Vec::new()).collect();
    for &a in addrs {
        let first = listener(a, true, defer)?;
        let bound = first.local_addr()?;
        shards[0].push(first);
        for shard in shards.iter_mut().skip(1) {
            shard.push(listener(bound, true, defer)?);
        }
    }
    Ok(shards)
}

/// One socket per address, without SO_REUSEPORT: a second process that
/// asks for the same address fails, instead of silently taking half of
/// the connections (scrapes that land on either of two processes would
/// mix their metrics).
pub fn bind_exclusive(
    addrs: &[SocketAddr],
    defer: Duration,
) -> io::Result<Vec<std::net::TcpListener>> {
    addrs.iter().map(|&a| listener(a, false, defer)).collect()
}

fn listener(a: SocketAddr, reuse_port: bool, defer: Duration) -> io::Result<std::net::TcpListener> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}"));
    let s =
        Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP)).map_err(named)?;
    s.set_reuse_address(true).map_err(named)?;
    s.set_reuse_port(reuse_port).map_err(named)?;
    if a.is_ipv6() {
        // "[::]" serves IPv4 too, whatever the system default.
        s.set_only_v6(false).map_err(named)?;
    }
    // Accepted sockets inherit it on Linux: one system call per listener
    // instead of one per connection (a test below checks the inheritance).
    s.set_tcp_nodelay(true).map_err(named)?;
    s.bind(&a.into()).map_err(named)?;
    defer_accept(&s, defer).map_err(named)?;
    s.listen(1024).map_err(named)?;
    s.set_nonblocking(true).map_err(named)?;
    Ok(s.into())
}

/// Accepted connections come up once their client has sent something
/// (TCP_DEFER_ACCEPT): HTTP and TLS clients speak first. Accepting at the
/// handshake's end meant a read that found nothing yet, a wait for
/// readiness and a second read for each new connection: with it, 0.71x the
/// CPU per new connection and 1.13x their throughput (benches/RESULTS.md).
/// A connection that sends nothing waits in the kernel, not in a
/// connection slot; after `defer` (rounded up to whole seconds) the kernel
/// hands it over anyway, and the header timeout runs from there.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn defer_accept(s: &Socket, defer: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = libc::c_int::try_from(defer.as_secs() + u64::from(defer.subsec_nanos() > 0))
        .unwrap_or(libc::c_int::MAX)
        .max(1);
    // SAFETY: a socket this function borrows, and a pointer to a c_int
    // with its size, as setsockopt reads it.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &Socket, _: Duration) -> io::Result<()> {
    Ok(())
}

/// Serves until `shutdown` completes, then lets open connections finish
/// (for at most `limits.shutdown_grace`). `permits` caps the connections
/// served at once; `place` says which serving thread runs each.
pub async fn run(
    listeners: Vec<Listener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    place: Placement,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new(&limits));
    // Every connection task holds a receiver: the loop tells them to stop,
    // then waits until all of them are gone.
    let (stop, stopping) = watch::channel(false);
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
        // A cap on connections is a cap on memory; an owned permit travels
        // with each connection task and frees its slot when the task ends.
        // Workers share one semaphore, so the cap is for the whole service.
        // Accept first, then wait for a slot: a worker that waited for a slot
        // before accepting could hold a freed slot while the waiting
        // connection sits in another worker's backlog. So at the cap, each
        // worker holds at most one accepted connection it does not serve yet.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let task = Task {
            protocols: protocols.clone(),
            frontend: frontend.clone(),
            peer,
            admin: listener.admin,
            stop: stopping.clone(),
        };
        // Two spawns, not one task matching on the kind: a task is as big
        // as its largest path, and a plain connection's task would carry
        // (and copy) room for a TLS session (measured: memmove went from 2%
        // to 7% of the server's time with a new connection per request).
        match &listener.tls {
            None => place.spawn(stream, move |stream| async move {
                task.serve_plain(stream).await;
                drop(permit);
            }),
            // The handshake runs in the connection's task, after the
            // permit: a slow handshake holds its own slot, not the loop.
            Some(tls) => {
                let tls = tls.clone();
                place.spawn(stream, move |stream| async move {
                    task.serve_tls(tls, stream).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listeners);
    drop(stopping);
    let _ = stop.send(true);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, stop.closed()).await.is_err() {
        tracing::warn!("connections still open after {grace:?}; closing them");
    }
}

/// One connection's task.
struct Task {
    protocols: Arc<Protocols>,
    frontend: Arc<Frontend>,
    peer: SocketAddr,
    admin: bool,
    stop: watch::Receiver<bool>,
}

impl Task {
    async fn serve_plain(self, stream: TcpStream) {
        let (io, busy) = Tracked::new(stream);
        let io = CloseOnDrop(TokioIo::new(io));
        let service = self.service(false);
        let conn = self.protocols.http1.serve_connection(io, service);
        let watch = (&*busy, self.protocols.header_timeout, Version::Http1);
        drain(conn, watch, self.stop, |c| c.graceful_shutdown()).await;
    }

    async fn serve_tls(self, tls: Tls, stream: TcpStream) {
        let (io, busy) = Tracked::new(stream);
        // The timeout covers the wait for a place too: a client is owed an
        // answer within it, however busy the others keep the service.
        let handshake = async {
            let _slot = tls.handshakes.enter(self.peer.ip()).await?;
            tls.acceptor.accept(io).await.ok()
        };
        let stream = match tokio::time::timeout(self.protocols.header_timeout, handshake).await {
            Ok(Some(s)) => s,
            // Its network holds too many handshakes, it never finished, or
            // it speaks something else.
            Ok(None) | Err(_) => return,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let service = self.service(true);
        let io = TokioIo::new(stream);
        if h2 {
            let conn = self.protocols.http2.serve_connection(io, service);
            let watch = (&*busy, self.protocols.header_timeout, Version::Http2);
            drain(conn, watch, self.stop, |c| c.graceful_shutdown()).await;
        } else {
            let conn = self.protocols.http1.serve_connection(io, service);
            let watch = (&*busy, self.protocols.header_timeout, Version::Http1);
            drain(conn, watch, self.stop, |c| c.graceful_shutdown()).await;
        }
    }

    fn service(&self, tls: bool) -> Handler {
        Handler {
            frontend: self.frontend.clone(),
            conn: Conn {
                peer: self.peer,
                tls,
                admin: self.admin,
            },
        }
    }
}

/// The front-end as a hyper service, for one connection.
#[derive(Clone)]
struct Handler {
    frontend: Arc<Frontend>,
    conn: Conn,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.frontend.handle(&req, self.conn)))
    }
}

/// How a connection ends when it falls silent (see [`silent`]) or the
/// service stops.
enum Version {
    /// Silent: closed at once (its client is mid-head, idle, or not
    /// reading its answers). Stopping: a request partly read is answered
    /// first.
    Http1,
    /// Silent: GOAWAY first, so that its client opens a new connection for
    /// its next request instead of finding this one gone; closed if it has
    /// not ended a timeout later. Stopping: GOAWAY, which lets open
    /// streams finish.
    Http2,
}

/// Serves `conn` to its end, or until it falls silent. When the service
/// stops, a connection in the middle of a request (bytes of it came in,
/// its response has not gone out) first gets its answer, then the
/// graceful close: hyper alone would close a connection whose request
/// head is only partly read as if idle.
async fn drain<C: Future>(
    conn: C,
    (busy, timeout, version): (&Busy, Duration, Version),
    mut stop: watch::Receiver<bool>,
    shutdown: impl FnOnce(Pin<&mut C>),
) {
    let silence = silent(busy, timeout);
    tokio::pin!(conn, silence);
    {
        let guard = async {
            tokio::select! {
                biased;
                () = silence.as_mut() => true,
                _ = stop.wait_for(|s| *s) => false,
            }
        };
        tokio::pin!(guard);
        // Errors here are clients going away mid-request: nothing to do.
        match Watched::new(conn.as_mut(), guard).await {
            Ended::Conn(_) => return,
            Ended::Guard(true) => {
                if let Version::Http2 = version {
                    shutdown(conn.as_mut());
                    let _ = tokio::time::timeout(timeout, conn).await;
                }
                return;
            }
            Ended::Guard(false) => {}
        }
    }
    while matches!(version, Version::Http1) && busy.mid_request.load(Ordering::Acquire) {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = silence.as_mut() => return,
            () = busy.answered.notified() => {}
        }
    }
    shutdown(conn.as_mut());
    let _ = conn.await;
}

/// Completes once `timeout` has passed without a byte written to the
/// client: since the connection started, or since the last write. As
/// nothing is written before a request head is complete, that is the time
/// a client has to send each head (idle keep-alive connections close
/// after it too), and it also bounds a client that stops reading or
/// trickles a body. One timer for the connection, reset only when it
/// fires, instead of one per request.
async fn silent(busy: &Busy, timeout: Duration) {
    // A timeout too long for the clock (`header_timeout = "500000y"`)
    // never ends a connection, instead of panicking in its task.
    let after = |nanos: u64| {
        busy.since
            .checked_add(Duration::from_nanos(nanos))?
            .checked_add(timeout)
    };
    let Some(mut deadline) = after(0) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep_until(deadline).await;
        match after(busy.wrote_at.load(Ordering::Relaxed)) {
            None => return std::future::pending().await,
            Some(next) if next > deadline => deadline = next,
            Some(_) => return,
        }
    }
}

/// Whether a connection is in the middle of a request, and when it last
/// wrote.
struct Busy {
    /// Bytes came in since the last response went out.
    mid_request: AtomicBool,
    /// A response went out after bytes came in.
    answered: Notify,
    /// When the connection started.
    since: Instant,
    /// When bytes last went out, in nanoseconds after `since`.
    wrote_at: AtomicU64,
}

/// A stream that keeps [`Busy`] up to date: a clock read and three atomic
/// operations per request, no lock (`Notify` locks only when someone
/// waits: at shutdown).
struct Tracked<S> {
    io: S,
    busy: Arc<Busy>,
}

impl<S> Tracked<S> {
    fn new(io: S) -> (Tracked<S>, Arc<Busy>) {
        let busy = Arc::new(Busy {
            mid_request: AtomicBool::new(false),
            answered: Notify::new(),
            since: Instant::now(),
            wrote_at: AtomicU64::new(0),
        });
        (
            Tracked {
                io,
                busy: busy.clone(),
            },
            busy,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.busy.mid_request.store(true, Ordering::Release);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S> Tracked<S> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if !matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            return;
        }
        let at = self.busy.since.elapsed().as_nanos();
        self.busy
            .wrote_at
            .store(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Relaxed);
        if self.busy.mid_request.swap(false, Ordering::AcqRel) {
            self.busy.answered.notify_one();
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
struct CloseOnDrop<S>(TokioIo<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Read for CloseOnDrop<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Write for CloseOnDrop<S> {
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

    /// Silence is counted from the last write, once per write, exactly; a
    /// timeout past the clock's range never ends a connection.
    #[tokio::test(start_paused = true)]
    async fn silence_is_counted_from_the_last_write() {
        let (tracked, busy) = Tracked::new(());
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(4)).await;
        tracked.wrote(&Poll::Ready(Ok(1)));
        // Nothing written: no effect.
        tokio::time::advance(Duration::from_secs(3)).await;
        tracked.wrote(&Poll::Ready(Ok(0)));
        silent(&busy, Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(14));

        let forever = silent(&busy, Duration::MAX);
        let waited = tokio::time::timeout(Duration::from_secs(1_000_000), forever).await;
        assert!(waited.is_err(), "a timeout past the clock's range ended");
    }

    /// Responses go out at once: accepted sockets have TCP_NODELAY, set on
    /// the listener and inherited.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut shards = bind_workers(&[loopback], 1, Duration::from_secs(1)).unwrap();
        let listener = TcpListener::from_std(shards.remove(0).remove(0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        // A first byte: the listener defers accepting until one comes.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"G")
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
