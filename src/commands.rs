//! The operator's subcommands besides `serve`: `check`, `locate`, `probe`.
//! Each writes a report to any `io::Write`, so tests read what operators see.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use crate::client::Sender;
use crate::config::{Config, ConfigError};
use crate::explain::explain;
use crate::geoip::{GeoDb, GeoIpError};
use crate::probe::{self, RoundRow, check::ProbeError};
use crate::table::{Status, Table};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    GeoIp(#[from] GeoIpError),
    #[error("{0:?} is not an IP address")]
    BadAddress(String),
    #[error("{0:?}: {1}")]
    BadPath(String, crate::path::PathError),
    #[error("origin {origin}")]
    Origin {
        origin: String,
        #[source]
        source: ProbeError,
    },
    #[error("no mirror is eligible")]
    NoneEligible,
    #[error("writing the report")]
    Io(#[from] io::Error),
}

/// Probes every mirror once and returns the table that round would publish.
pub async fn probe_table(config: &Config) -> Result<(Table, Vec<RoundRow>), CommandError> {
    let round = probe::run_once(config)
        .await
        .map_err(|source| CommandError::Origin {
            origin: config.origin.clone(),
            source,
        })?;
    let rows = round.rows;
    let status_of = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map_or_else(Status::unprobed, |r| r.status.clone())
    };
    let table = Table::probed(
        &config.mirrors,
        status_of,
        config.selection,
        &config.releases,
        &round.origin,
    );
    Ok((table, rows))
}

/// `probe`: one round, one line per mirror; fails when none is eligible.
pub fn print_round(
    config: &Config,
    rows: &[RoundRow],
    out: &mut impl Write,
) -> Result<(), CommandError> {
    write!(out, "{:<16} {:<8} {:>9}", "mirror", "eligible", "latency")?;
    for r in &config.releases {
        write!(out, "  {r:<15}")?;
    }
    writeln!(out, "  reason")?;
    for row in rows {
        let latency = row.report.latency.map_or("-".to_string(), |l| {
            format!("{:.1} ms", l.as_secs_f64() * 1000.0)
        });
        write!(
            out,
            "{:<16} {:<8} {latency:>9}",
            row.name,
            if row.status.eligible { "yes" } else { "no" }
        )?;
        for rel in &row.report.releases {
            let f = match rel.fresh {
                Some(true) => "fresh",
                Some(false) => "stale",
                None => "?",
            };
            write!(out, "  {f:<15}")?;
        }
        for _ in row.report.releases.len()..config.releases.len() {
            write!(out, "  {:<15}", "?")?;
        }
        writeln!(out, "  {}", row.status.summary())?;
    }
    if rows.iter().any(|r| r.status.eligible) {
        Ok(())
    } else {
        Err(CommandError::NoneEligible)
    }
}

/// Loads the config and the database, and prints a summary.
pub fn check(config: &Config, out: &mut impl Write) -> Result<(), CommandError> {
    let geo = GeoDb::open_all(&config.geoip)?;
    let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
    writeln!(out, "config:    {}", config.path.display())?;
    writeln!(out, "listen:    {}", listen.join(", "))?;
    writeln!(out, "origin:    {}", config.origin)?;
    writeln!(out, "releases:  {}", config.releases.join(", "))?;
    for f in geo.files() {
        writeln!(
            out,
            "geoip:     {} ({}, built {}; {} IPv4 ranges in the flat table)",
            f.path().display(),
            f.database_type(),
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(f.build_epoch())),
            f.v4_ranges()
        )?;
    }
    writeln!(
        out,
        "probe:     every {:?}, timeout {:?}",
        config.probe.interval, config.probe.timeout
    )?;
    writeln!(out, "mirrors:   {}", config.mirrors.len())?;
    for m in &config.mirrors {
        let countries = m
            .countries
            .as_ref()
            .map(|cs| cs.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "all".into());
        writeln!(
            out,
            "  {:<16} {}  at {:.2},{:.2}  weight {}  countries {}  ipv6 {}",
            m.name, m.url, m.coord.lat, m.coord.lon, m.weight, countries, m.ipv6
        )?;
    }
    writeln!(out, "ok")?;
    Ok(())
}

/// Parses every address first, so a typo fails before any work is done.
pub fn parse_ips(ips: &[String]) -> Result<Vec<IpAddr>, CommandError> {
    ips.iter()
        .map(|s| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| CommandError::BadAddress(s.clone()))
        })
        .collect()
}

/// A request path as the service would see it: canonical, without its
/// leading `/`.
pub fn parse_path(raw: &str) -> Result<String, CommandError> {
    crate::path::normalise(raw)
        .map(|p| p.into_owned())
        .map_err(|e| CommandError::BadPath(raw.to_string(), e))
}

/// For each address: what the database says, and every mirror in the order
/// selection considers it, for `path` (canonical) or any file.
pub fn locate(
    config: &Config,
    table: &Table,
    ips: &[IpAddr],
    path: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let geo = GeoDb::open_all(&config.geoip)?;
    let policy = crate::routing::Policy::from_config(config);
    let release_path = path.filter(|p| policy.is_release_path(p));
    for &ip in ips {
        let sender = Sender { ip, https: false };
        let mut e = explain(table, &geo, &config.origin, sender, None, release_path);
        if path.is_some() && release_path.is_none() {
            e.not_release(&config.origin);
        }
        out.write_all(e.text().as_bytes())?;
    }
    Ok(())
}
