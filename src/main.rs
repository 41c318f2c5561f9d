//! The command line: parses arguments, sets up logging, calls the library.

// No unsafe code anywhere in the crate; the compiler holds us to it.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distri_redirector::config::Config;
use distri_redirector::table::{Status, Table};
use distri_redirector::{accesslog, app, commands, demo};

#[derive(Parser)]
#[command(
    version,
    about = "Sends distri package fetches to the nearest fresh, complete mirror"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve redirects (the default, with --config mirrors.toml).
    Serve(ConfigArg),
    /// Validate the config and the GeoIP database, and print a summary.
    Check(ConfigArg),
    /// Show where addresses are and how each mirror is considered for them
    /// (after one probe round, so states are real).
    Locate {
        #[command(flatten)]
        config: ConfigArg,
        /// Skip probing: treat every mirror as eligible.
        #[arg(long)]
        no_probe: bool,
        /// The file asked for, e.g. /distri/jackherer/pkg/meta.binaryproto:
        /// which mirrors may serve it and why (default: any file).
        #[arg(long)]
        path: Option<String>,
        /// IPv4 or IPv6 addresses.
        #[arg(required = true)]
        ips: Vec<String>,
    },
    /// Probe every mirror once and print a table; fails when none is eligible.
    Probe(ConfigArg),
    /// Run a miniature origin and mirrors on loopback behind the redirector.
    Demo {
        /// The config whose GeoIP database the demo uses.
        #[arg(long, default_value = "mirrors.toml")]
        config: PathBuf,
        /// Where the demo's redirector listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, default_value = "mirrors.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or(Command::Serve(ConfigArg {
        config: PathBuf::from("mirrors.toml"),
    }));
    // The config says how to log (`[log] format`), so serving reads it
    // first; its errors are reported once logging is set up.
    let loaded = match &command {
        Command::Serve(c) => Some(Config::load(&c.config)),
        _ => None,
    };
    init_logging(matches!(&loaded, Some(Ok(c)) if c.log.json));
    let result = match loaded {
        Some(config) => config.map_err(anyhow::Error::from).and_then(serve),
        None => run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The general log (RUST_LOG, default info) and, beside it, the access
/// log's own layer, in text or JSON.
fn init_logging(json: bool) {
    use tracing_subscriber::util::SubscriberInitExt;
    accesslog::subscriber(json, std::io::stderr().is_terminal()).init();
}

fn run(command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Serve(c) => serve(Config::load(&c.config)?),
        Command::Check(c) => Ok(commands::check(&Config::load(&c.config)?, &mut out)?),
        Command::Locate {
            config,
            no_probe,
            path,
            ips,
        } => {
            let config = Config::load(&config.config)?;
            let ips = commands::parse_ips(&ips)?;
            let path = path.as_deref().map(commands::parse_path).transpose()?;
            let table = if no_probe {
                Table::from_config(&config.mirrors, Status::assumed_up(), config.selection)
            } else {
                runtime()?.block_on(commands::probe_table(&config))?.0
            };
            Ok(commands::locate(
                &config,
                &table,
                &ips,
                path.as_deref(),
                &mut out,
            )?)
        }
        Command::Probe(c) => {
            let config = Config::load(&c.config)?;
            let (_, rows) = runtime()?.block_on(commands::probe_table(&config))?;
            Ok(commands::print_round(&config, &rows, &mut out)?)
        }
        Command::Demo { config, listen } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(demo::run(&config, listen, shutdown_signal()))?;
            Ok(())
        }
    }
}

/// The main thread's runtime: the prober and the commands. Requests are
/// served by the service's own worker threads.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn serve(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let signals = app::Signals::install()?;
        let running = app::start(&config).await?;
        for a in &running.addrs {
            tracing::info!(addr = %a, mirrors = config.mirrors.len(), "serving http");
        }
        for a in &running.tls_addrs {
            tracing::info!(addr = %a, mirrors = config.mirrors.len(), "serving https");
        }
        for a in &running.admin_addrs {
            tracing::info!(addr = %a, "admin: http://{a}/metrics and /mirrors");
        }
        running.serve_until_signalled(signals).await;
        accesslog::flush();
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
