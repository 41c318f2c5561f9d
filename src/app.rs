//! Wiring: from a validated config to a running service (GeoIP database,
//! mirror table, prober, serving runtime), and a handle to stop it. Used by `main`, the
//! demo and the black-box tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::config::{self, Config};
use crate::frontend::Frontend;
use crate::geoip::{GeoDb, GeoIpError};
use crate::probe::{self, Prober};
use crate::server;
use crate::table::{SharedTable, Status, Table};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    GeoIp(#[from] GeoIpError),
    #[error(transparent)]
    Bind(#[from] std::io::Error),
}

/// A service that is serving.
pub struct Running {
    /// The bound addresses (port 0 in the config becomes a real port here).
    pub addrs: Vec<SocketAddr>,
    pub table: SharedTable,
    _prober: Prober,
    /// Dropping it, or sending `true`, stops every accept loop.
    stop: watch::Sender<bool>,
    /// Completes when the serving runtime has drained and shut down.
    stopped: oneshot::Receiver<()>,
}

impl Running {
    /// Stops accepting, lets open connections finish, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.stopped.await;
    }

    /// Stops when `signal` completes.
    pub async fn stop_on(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }
}

/// Opens the database, binds the listeners, starts the prober on the
/// calling runtime and the serving runtime with `server.workers` threads.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let geo = Arc::new(GeoDb::open(&config.geoip)?);
    // Until the first round verifies a mirror, everything goes to the origin.
    let table = Table::from_config(&config.mirrors, Status::unprobed(), config.selection).share();
    let shards = server::bind_workers(&config.listen, config.server.workers)?;
    let addrs = shards[0]
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let frontend = Arc::new(Frontend::new(config, table.clone(), geo));
    let permits = Arc::new(Semaphore::new(config.server.max_connections));
    let (stop, stop_rx) = watch::channel(false);
    let loops = shards
        .into_iter()
        .map(|listeners| AcceptLoop {
            listeners,
            frontend: frontend.clone(),
            limits: config.server,
            permits: permits.clone(),
            stop: stop_rx.clone(),
        })
        .collect();
    Ok(Running {
        addrs,
        stopped: serve(loops, config.server.workers)?,
        _prober: probe::spawn(config, table.clone()),
        table,
        stop,
    })
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
fn serve(loops: Vec<AcceptLoop>, workers: usize) -> std::io::Result<oneshot::Receiver<()>> {
    let (done, finished) = oneshot::channel();
    // The runtime is built and dropped on its own thread: dropping one
    // inside the caller's runtime would panic. Its build error comes back.
    let (built, build_result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("http-main".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .thread_name("http")
                .enable_all()
                .build();
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
            rt.block_on(async move {
                let running: Vec<_> = loops.into_iter().map(|l| tokio::spawn(l.run())).collect();
                for r in running {
                    let _ = r.await;
                }
            });
            drop(rt);
            let _ = done.send(());
        })?;
    // Blocks for the runtime's start-up only, before anything is served.
    build_result
        .recv()
        .map_err(|_| std::io::Error::other("the serving thread ended at start-up"))??;
    Ok(finished)
}

/// One set of listening sockets and what it serves.
struct AcceptLoop {
    listeners: Vec<std::net::TcpListener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl AcceptLoop {
    async fn run(self) {
        let mut stop = self.stop;
        let listeners: Result<Vec<TcpListener>, _> = self
            .listeners
            .into_iter()
            .map(TcpListener::from_std)
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
            shutdown,
        )
        .await;
    }
}
