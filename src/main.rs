//! The command line: parses arguments, sets up logging, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distri_redirector::config::Config;
use distri_redirector::table::{Status, Table};
use distri_redirector::{app, commands};

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
    /// Show where addresses are and how each mirror is considered for them.
    Locate {
        #[command(flatten)]
        config: ConfigArg,
        /// IPv4 or IPv6 addresses.
        #[arg(required = true)]
        ips: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(long, default_value = "mirrors.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command.unwrap_or(Command::Serve(ConfigArg {
        config: PathBuf::from("mirrors.toml"),
    }));
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Serve(c) => serve(Config::load(&c.config)?),
        Command::Check(c) => Ok(commands::check(&Config::load(&c.config)?, &mut out)?),
        Command::Locate { config, ips } => {
            let config = Config::load(&config.config)?;
            let table = Table::from_config(&config.mirrors, Status::assumed_up());
            Ok(commands::locate(&config, &table, &ips, &mut out)?)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let running = app::start(&config).await?;
        for a in &running.addrs {
            tracing::info!(addr = %a, mirrors = config.mirrors.len(), "serving");
        }
        running.stop_on(shutdown_signal()).await;
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
