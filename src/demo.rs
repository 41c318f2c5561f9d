//! `distri-redirector demo`: a miniature origin and mirrors on loopback,
//! placed on several continents (one stale, one mid-sync), behind the real
//! redirector with the shipped GeoIP database; prints where clients land.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::app;
use crate::config::{self, Config};
use crate::geo::Coord;
use crate::minitree::{MiniServer, Tree};
use crate::table::Health;

/// Packages per release in the demo tree.
const PACKAGES: usize = 40;

/// The demo's mirrors: name, place, and what is wrong with it (if anything).
const MIRRORS: &[(&str, f64, f64, Flaw)] = &[
    ("eu-fra", 50.11, 8.68, Flaw::None),
    ("us-sfo", 37.77, -122.42, Flaw::None),
    ("us-nyc", 40.71, -74.01, Flaw::None),
    ("jp-tyo", 35.68, 139.69, Flaw::None),
    ("za-jnb", -26.20, 28.05, Flaw::None),
    ("br-sao", -23.55, -46.63, Flaw::Stale),
    ("au-syd", -33.87, 151.21, Flaw::MidSync),
];

#[derive(Clone, Copy)]
enum Flaw {
    None,
    /// An older `supersilverhaze` index: its last rsync was before the origin's.
    Stale,
    /// The new index arrived, its newest packages not yet.
    MidSync,
}

/// Example clients: address and what it stands for.
const CLIENTS: &[(&str, &str)] = &[
    ("193.0.6.139", "RIPE NCC, Amsterdam"),
    ("2001:67c:2e8::1", "RIPE NCC over IPv6"),
    ("8.8.8.8", "Google DNS, US"),
    ("200.160.2.3", "NIC.br, Brazil"),
    ("202.12.27.33", "WIDE, Japan"),
    ("2001:dc0:2001:11::194", "APNIC, Brisbane"),
    ("196.216.2.1", "AFRINIC, Johannesburg"),
];

fn tree_with(flaw: Flaw, releases: &[String]) -> Tree {
    let mut t = Tree::generate(releases, PACKAGES);
    match flaw {
        Flaw::None => {}
        Flaw::Stale => t.set_release(&releases[0], PACKAGES - 3),
        Flaw::MidSync => t.remove_newest_packages(&releases[releases.len() - 1], 2),
    }
    t
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting a loopback server")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Start(#[from] app::StartError),
    #[error("asking the redirector")]
    Http(#[from] reqwest::Error),
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    base: &Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let origin = MiniServer::start(Tree::generate(&base.releases, PACKAGES)).await?;
    let mut servers = Vec::new();
    let mut mirrors = Vec::new();
    for &(name, lat, lon, flaw) in MIRRORS {
        let s = MiniServer::start(tree_with(flaw, &base.releases)).await?;
        mirrors.push(config::Mirror {
            name: name.into(),
            url: s.url(),
            coord: Coord::new(lat, lon).expect("valid demo coordinates"),
            weight: 1.0,
            countries: None,
            ipv6: true,
        });
        servers.push(s);
    }
    let config = Config {
        listen: vec![listen],
        origin: origin.url(),
        trusted_proxies: vec![
            "127.0.0.0/8".parse().expect("a valid CIDR"),
            "::1/128".parse().expect("a valid CIDR"),
        ],
        probe: config::Probe {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            ..config::Probe::default()
        },
        mirrors,
        // The demo's origin stands where distri's is: in Europe.
        origin_at: base.origin_at.or(Coord::new(47.37, 8.54)),
        // Beside a running service that has the configured admin port.
        admin: Some(config::Admin {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        }),
        ..base.clone()
    };
    let running = app::start(&config).await?;
    let addr = running.addrs[0];
    println!(
        "origin  {} (a miniature distri tree, {PACKAGES} packages per release)",
        origin.url()
    );
    wait_first_round(&running).await;
    let table = running.table();
    for m in table.mirrors() {
        println!(
            "mirror  {:<8} {:<24} {:<5} {}",
            m.name,
            m.base,
            m.status.health.to_string(),
            m.status.summary()
        );
    }
    println!(
        "\nredirector on http://{addr}/ (GeoIP: {})\n",
        config
            .geoip
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    show_clients(addr).await?;
    sample_traffic(addr, SAMPLE_REQUESTS).await?;
    running.redraw_status();
    println!("\n{SAMPLE_REQUESTS} more requests from random addresses fill the status page's map.");
    println!("\nStatus page:   http://{addr}/mirrors   (JSON: http://{addr}/mirrors.json)");
    println!(
        "Why a mirror:  http://{addr}/distri/jackherer/pkg/pkg000-amd64-1.0-1.squashfs?mirrorlist&ip=8.8.8.8"
    );
    for a in &running.admin_addrs {
        println!("Metrics:       http://{a}/metrics");
    }
    println!("\nTry it (Ctrl-C stops the demo):");
    println!(
        "  curl -sI -H 'X-Forwarded-For: 193.0.6.139' http://{addr}/distri/jackherer/pkg/pkg000-amd64-1.0-1.squashfs"
    );
    println!(
        "  curl -sI http://{addr}/distri/master/pkg/meta.binaryproto   # not a current release: origin"
    );
    println!("  curl -s  http://{addr}/healthz");
    running.stop_on(shutdown).await;
    drop(servers);
    Ok(())
}

async fn wait_first_round(running: &app::Running) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if running
            .table()
            .mirrors()
            .iter()
            .all(|m| m.status.health != Health::Unknown)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests from random addresses the demo sends, for the coverage map.
const SAMPLE_REQUESTS: usize = 2000;

/// `n` fetches from random public IPv4 addresses (as a trusted proxy would
/// report them), a few dozen at a time.
async fn sample_traffic(addr: SocketAddr, n: usize) -> Result<(), DemoError> {
    let http = crate::probe::check::client(Duration::from_secs(5));
    let url = format!("http://{addr}/distri/jackherer/pkg/pkg000-amd64-1.0-1.squashfs");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(rand::random_range(16u32 << 24..224u32 << 24));
        let req = http.get(&url).header("x-forwarded-for", ip.to_string());
        set.spawn(async move { req.send().await.map(|_| ()) });
        if i % 32 == 31 {
            while let Some(r) = set.join_next().await {
                r.map_err(std::io::Error::other)??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r.map_err(std::io::Error::other)??;
    }
    Ok(())
}

async fn show_clients(addr: SocketAddr) -> Result<(), DemoError> {
    let http = crate::probe::check::client(Duration::from_secs(5));
    for (ip, what) in CLIENTS {
        let r = http
            .get(format!(
                "http://{addr}/distri/jackherer/pkg/pkg000-amd64-1.0-1.squashfs"
            ))
            .header("x-forwarded-for", *ip)
            .send()
            .await?;
        let to = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        println!("  {ip:<22} {what:<28} -> {} {to}", r.status().as_u16());
    }
    Ok(())
}
