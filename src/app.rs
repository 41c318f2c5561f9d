//! Wiring: from a validated config to a running service (GeoIP database,
//! mirror table, prober, server), and a handle to stop it. Used by `main`, the
//! demo and the black-box tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
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
    #[error("{0}")]
    Bind(#[from] std::io::Error),
}

/// A service that is serving.
pub struct Running {
    /// The bound addresses (port 0 in the config becomes a real port here).
    pub addrs: Vec<SocketAddr>,
    pub table: SharedTable,
    _prober: Prober,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets open connections finish, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Waits until the service ends by itself (it does not, short of a panic).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Stops when `signal` completes.
    pub async fn stop_on(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }
}

/// Opens the database, binds the listeners and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let geo = Arc::new(GeoDb::open(&config.geoip)?);
    // Until the first round verifies a mirror, everything goes to the origin.
    let table = Table::from_config(&config.mirrors, Status::unprobed(), config.selection).share();
    let listeners = server::bind(&config.listen).await?;
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let frontend = Arc::new(Frontend::new(config, table.clone(), geo));
    let prober = probe::spawn(config, table.clone());
    let (stop, stopped) = oneshot::channel();
    let limits = config.server;
    let task = tokio::spawn(async move {
        server::run(listeners, frontend, limits, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(Running {
        addrs,
        table,
        _prober: prober,
        stop,
        task,
    })
}
