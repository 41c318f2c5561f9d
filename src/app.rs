//! Wiring: from a validated config to a running service (GeoIP database,
//! mirror table, prober, serving threads), and a handle to stop it. Used by `main`, the
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
    /// Dropping it, or sending `true`, stops every worker.
    stop: watch::Sender<bool>,
    workers: Vec<oneshot::Receiver<()>>,
}

impl Running {
    /// Stops accepting, lets open connections finish, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
    }

    /// Stops when `signal` completes.
    pub async fn stop_on(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }
}

/// Opens the database, binds the listeners, starts the prober on the
/// calling runtime and `server.workers` worker threads that serve.
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
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::with_capacity(shards.len());
    for (i, listeners) in shards.into_iter().enumerate() {
        let worker = Worker {
            listeners,
            frontend: frontend.clone(),
            limits: config.server,
            permits: permits.clone(),
            stopped: stopped.clone(),
        };
        workers.push(worker.spawn(i)?);
    }
    Ok(Running {
        addrs,
        _prober: probe::spawn(config, table.clone()),
        table,
        stop,
        workers,
    })
}

/// One serving thread and what it serves.
struct Worker {
    listeners: Vec<std::net::TcpListener>,
    frontend: Arc<Frontend>,
    limits: config::Server,
    permits: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    /// Starts the thread; the receiver completes when it has stopped.
    fn spawn(self, i: usize) -> std::io::Result<oneshot::Receiver<()>> {
        // Built here, so that a failure is the caller's error, not a panic.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || {
                rt.block_on(self.serve());
                let _ = done.send(());
            })?;
        Ok(finished)
    }

    async fn serve(self) {
        let mut stopped = self.stopped;
        let listeners: Result<Vec<TcpListener>, _> = self
            .listeners
            .into_iter()
            .map(TcpListener::from_std)
            .collect();
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(cause = %e, "worker cannot use its listening sockets");
                return;
            }
        };
        let shutdown = async move {
            // A dropped sender means the service is gone: stop too.
            let _ = stopped.wait_for(|s| *s).await;
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
