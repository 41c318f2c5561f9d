//! Wiring: from a validated config to a running service (GeoIP database,
//! certificate, routing snapshot, publisher and prober, serving runtime),
//! and a handle to reload and stop it. Used by `main`, the demo and the
//! black-box tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config};
use crate::frontend::Frontend;
use crate::geoip::{GeoDb, GeoIpError};
use crate::metrics::Metrics;
use crate::probe::board::Board;
use crate::publish::{Publisher, Trigger};
use crate::routing::{Routing, SharedRouting};
use crate::server::{self, Listener};
use crate::stats::Tally;
use crate::status::{self, Pages};
use crate::table::{Status, Table};
use crate::tls::{self, Certs, TlsError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    GeoIp(#[from] GeoIpError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] std::io::Error),
}

/// A service that is serving.
pub struct Running {
    /// The bound plain-HTTP addresses (port 0 in the config becomes a real
    /// port here).
    pub addrs: Vec<SocketAddr>,
    /// The bound HTTPS addresses.
    pub tls_addrs: Vec<SocketAddr>,
    /// The bound admin addresses (metrics, status page).
    pub admin_addrs: Vec<SocketAddr>,
    /// What requests read now.
    pub routing: SharedRouting,
    triggers: mpsc::UnboundedSender<Trigger>,
    pages: Arc<Pages>,
    /// The publisher (and through it the prober); dropping it stops them.
    _background: JoinSet<()>,
    /// Dropping it, or sending `true`, stops every accept loop.
    stop: watch::Sender<bool>,
    /// Completes when the serving runtime has drained and shut down.
    stopped: oneshot::Receiver<()>,
}

impl Running {
    /// The mirror table requests use now.
    pub fn table(&self) -> Arc<Table> {
        self.routing.load().table.clone()
    }

    /// Reads the config, database and certificate again, as SIGHUP does.
    /// Returns at once; the reload happens in the background.
    pub fn reload(&self) {
        let _ = self.triggers.send(Trigger::Signal);
    }

    /// Renders the status page now, with the latest counts, instead of
    /// at the next minute. Returns at once.
    pub fn redraw_status(&self) {
        self.pages.redraw();
    }

    /// Stops accepting, lets open connections finish within the grace
    /// period, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.stopped.await;
    }

    /// Stops when `signal` completes.
    pub async fn stop_on(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP; tells systemd
    /// (when it started the service) that it is ready, and stopping.
    pub async fn serve_until_signalled(self, mut signals: Signals) {
        // Not under systemd, there is no socket to tell: nothing happens.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        loop {
            tokio::select! {
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    self.reload();
                }
                _ = signals.term.recv() => break,
                _ = signals.int.recv() => break,
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopping: no new connections, open ones may finish");
        self.stop().await;
    }
}

/// The signals the service acts on, caught from the moment they are
/// installed: a SIGHUP that arrives while the service starts (systemd's
/// reload right after start) must not kill it, as the default action would.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call before anything that takes time.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 64;

/// Opens the database and certificate, binds the listeners, starts the
/// publisher and prober on the calling runtime and the serving runtime
/// with `server.workers` threads.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    crate::malloc::return_large_blocks();
    let geo = Arc::new(GeoDb::open_all(&config.geoip)?);
    let certs = match &config.tls {
        Some(t) => Some(Certs::new(tls::load(&t.cert, &t.key)?)),
        None => None,
    };
    let acceptor = match &certs {
        Some(c) => Some(server::Tls {
            acceptor: TlsAcceptor::from(tls::server_config(c.clone())?),
            handshakes: Arc::new(server::Handshakes::new(
                config.server.tls_handshakes,
                config.server.tls_handshakes_per_client,
            )),
        }),
        None => None,
    };
    // Until the first round verifies a mirror, everything goes to the origin.
    let table = Table::from_config(&config.mirrors, Status::unprobed(), config.selection);
    let tally = Arc::new(Tally::default());
    let board = Arc::new(Board::default());
    let pages = Arc::new(Pages::default());
    let routing = Routing::new(config, geo, table).counted(&tally).share();
    let workers = config.server.workers;
    // The kernel defers silent connections for as long as the header
    // timeout; both are `[server]` settings, taken at a restart only.
    let defer = config.server.header_timeout;
    let plain = server::bind_workers(&config.listen, workers, defer)?;
    let tls_addrs: &[SocketAddr] = config.tls.as_ref().map_or(&[], |t| &t.listen);
    let secure = server::bind_workers(tls_addrs, workers, defer)?;
    let bound = |shards: &[Vec<std::net::TcpListener>]| -> Vec<SocketAddr> {
        shards[0]
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    };
    // One admin socket is plenty: it serves scrapes and a page now and then.
    let admin_addrs: &[SocketAddr] = config.admin.as_ref().map_or(&[], |a| &a.listen);
    let admin = server::bind_exclusive(admin_addrs, defer)?;
    let (addrs, tls_addrs) = (bound(&plain), bound(&secure));
    let admin_addrs: Vec<SocketAddr> = admin.iter().filter_map(|l| l.local_addr().ok()).collect();
    let metrics = Arc::new(Metrics {
        tally: tally.clone(),
        board: board.clone(),
    });
    let frontend = Arc::new(
        Frontend::new(routing.clone())
            .counting(tally.clone())
            .with_pages(pages.clone())
            .with_metrics(metrics),
    );
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    let (stop, stop_rx) = watch::channel(false);
    let mut loops: Vec<AcceptLoop> = plain
        .into_iter()
        .zip(secure)
        .map(|(plain, secure)| AcceptLoop {
            listeners: plain
                .into_iter()
                .map(|l| (l, None, false))
                .chain(secure.into_iter().map(|l| (l, acceptor.clone(), false)))
                .collect(),
            frontend: frontend.clone(),
            limits: config.server,
            permits: permits.clone(),
            stop: stop_rx.clone(),
        })
        .collect();
    if !admin.is_empty() {
        // Its own connection cap: a flood of public connections must not
        // lock the operator out of the metrics that show it.
        loops.push(AcceptLoop {
            listeners: admin.into_iter().map(|l| (l, None, true)).collect(),
            frontend: frontend.clone(),
            limits: config.server,
            permits: Arc::new(Semaphore::new(ADMIN_CONNECTIONS)),
            stop: stop_rx.clone(),
        });
    }
    let (probed_tx, probed_rx) = mpsc::unbounded_channel();
    let (triggers, triggers_rx) = mpsc::unbounded_channel();
    let publisher = Publisher::new(
        config.clone(),
        routing.clone(),
        certs,
        probed_tx,
        triggers.clone(),
        tally.clone(),
        board.clone(),
    );
    let mut background = JoinSet::new();
    background.spawn(publisher.run(probed_rx, triggers_rx));
    background.spawn(status::run(pages.clone(), routing.clone(), tally, board));
    Ok(Running {
        addrs,
        tls_addrs,
        admin_addrs,
        stopped: serve(loops, workers, config.server.runtime)?,
        routing,
        triggers,
        pages,
        _background: background,
        stop,
    })
}

/// Runs the accept loops on the serving threads, as `runtime` says; the
/// receiver completes when all have drained.
fn serve(
    loops: Vec<AcceptLoop>,
    workers: usize,
    runtime: config::Runtime,
) -> std::io::Result<oneshot::Receiver<()>> {
    match runtime {
        config::Runtime::Shared => serve_shared(loops, workers),
        config::Runtime::PerThread => serve_per_thread(loops, workers),
    }
}

/// Runs the accept loops on a work-stealing runtime of `workers` threads,
/// on a thread of its own; the receiver completes when all have drained.
///
/// Work stealing, not one single-threaded runtime per thread: when a
/// serving thread is preempted (by anything else on the machine), another
/// takes over its ready connections instead of leaving them waiting for a
/// time slice. Under load on a shared machine this cut the keep-alive p99
/// to a third of nginx's, for the same throughput (benches/RESULTS.md).
/// Each loop still has its own SO_REUSEPORT sockets, and spawns the
/// connections it accepts on the thread that accepted them.
fn serve_shared(loops: Vec<AcceptLoop>, workers: usize) -> std::io::Result<oneshot::Receiver<()>> {
    let (done, finished) = oneshot::channel();
    // The runtime is built and dropped on its own thread: dropping one
    // inside the caller's runtime would panic. Its build error comes back.
    let (built, build_result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("http-main".into())
        .spawn(move || {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder
                .worker_threads(workers.max(1))
                .thread_name("http")
                .enable_all();
            // The LIFO slot runs a task woken by the one just run ahead of
            // the queue, and no other worker may steal it. Connections are
            // independent tasks woken by the I/O driver, so it buys no
            // locality here, and on a busy host it strands a ready
            // connection behind a preempted worker. Without it: 5 to 12%
            // more keep-alive throughput for less CPU per request in four
            // A/B runs (benches/RESULTS.md). The API is unstable, so it
            // needs `--cfg tokio_unstable` (.cargo/config.toml); a build
            // without that flag keeps tokio's default.
            #[cfg(tokio_unstable)]
            builder.disable_lifo_slot();
            let rt = builder.build();
            let rt = match rt {
                Ok(rt) => {
                    let _ = built.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = built.send(Err(e));
                    return;
                }
            };
            rt.block_on(run_loops(loops, server::Placement::shared()));
            drop(rt);
            let _ = done.send(());
        })?;
    // Blocks for the runtime's start-up only, before anything is served.
    build_result
        .recv()
        .map_err(|_| std::io::Error::other("the serving thread ended at start-up"))??;
    Ok(finished)
}

/// Runs the accept loops, one per serving thread (the admin socket's on
/// the first), each thread with a runtime and event loop of its own
/// (`server::threads` says why, and how connections are spread over
/// them); the receiver completes when all have drained.
fn serve_per_thread(
    mut loops: Vec<AcceptLoop>,
    workers: usize,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (done, finished) = oneshot::channel();
    let workers = workers.max(1);
    // Runtimes are built and dropped on threads of their own: dropping one
    // inside the caller's runtime would panic. A build error comes back.
    let (built, build_result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("http-main".into())
        .spawn(move || {
            let runtimes = (0..workers)
                .map(|_| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                })
                .collect::<std::io::Result<Vec<_>>>();
            let runtimes = match runtimes {
                Ok(r) => r,
                Err(e) => {
                    let _ = built.send(Err(e));
                    return;
                }
            };
            let threads =
                server::Threads::new(runtimes.iter().map(|r| r.handle().clone()).collect());
            let extra = loops.split_off(workers.min(loops.len()));
            let mut shares: Vec<Vec<AcceptLoop>> = loops.into_iter().map(|l| vec![l]).collect();
            shares.resize_with(workers, Vec::new);
            shares[0].extend(extra);
            // A thread may serve connections another accepted: none drops
            // its runtime until every loop has drained.
            let drained = Arc::new(tokio::sync::Barrier::new(workers));
            let spawned = runtimes
                .into_iter()
                .zip(shares)
                .enumerate()
                .map(|(i, (rt, share))| {
                    let place = server::Placement::new(threads.clone(), i);
                    let drained = drained.clone();
                    std::thread::Builder::new()
                        .name("http".into())
                        .spawn(move || {
                            rt.block_on(async move {
                                run_loops(share, place).await;
                                drained.wait().await;
                            });
                        })
                })
                .collect::<std::io::Result<Vec<_>>>();
            match spawned {
                Ok(serving) => {
                    let _ = built.send(Ok(()));
                    for t in serving {
                        let _ = t.join();
                    }
                    let _ = done.send(());
                }
                // The threads already started serve until the caller, told
                // of the error, ends the process.
                Err(e) => {
                    let _ = built.send(Err(e));
                }
            }
        })?;
    // Blocks for the runtimes' start-up only, before anything is served.
    build_result
        .recv()
        .map_err(|_| std::io::Error::other("the serving thread ended at start-up"))??;
    Ok(finished)
}

/// Runs `loops` on the current runtime until every one has drained.
async fn run_loops(loops: Vec<AcceptLoop>, place: server::Placement) {
    let running: Vec<_> = loops
        .into_iter()
        .map(|l| tokio::spawn(l.run(place.clone())))
        .collect();
    for r in running {
        let _ = r.await;
    }
}

/// One set of listening sockets and what it serves.
struct AcceptLoop {
    /// Each socket, the TLS it speaks, and whether it is an admin socket.
    listeners: Vec<(std::net::TcpListener, Option<server::Tls>, bool)>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl AcceptLoop {
    async fn run(self, place: server::Placement) {
        let mut stop = self.stop;
        let listeners: Result<Vec<Listener>, _> = self
            .listeners
            .into_iter()
            .map(|(l, tls, admin)| {
                TcpListener::from_std(l).map(|socket| Listener { socket, tls, admin })
            })
            .collect();
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(cause = %e, "cannot use the listening sockets");
                return;
            }
        };
        let shutdown = async move {
            // A dropped sender means the service is gone: stop too.
            let _ = stop.wait_for(|s| *s).await;
        };
        server::run(
            listeners,
            self.frontend,
            self.limits,
            self.permits,
            place,
            shutdown,
        )
        .await;
    }
}
