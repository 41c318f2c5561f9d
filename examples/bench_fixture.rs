//! Load-benchmark fixture: a miniature origin and N mirrors (one loopback
//! server, one path prefix per mirror), and a `mirrors.toml` for the real
//! redirector to serve them. Used by `benches/load.sh` and
//! `benches/probe-cost.sh`; runs until killed.
//!
//! `bench_fixture --mirrors 50 --out DIR/mirrors.toml --listen 127.0.0.1:18080 [--interval 10s] [--workers N] [--runtime shared|per-thread] [--geoip FILE[,FILE]] [--https-mirrors]`
//!
//! The GeoIP database is the shipped default unless `--geoip` names others
//! (several, comma-separated, are looked up in order).
//!
//! `--https-mirrors`: the mirrors' URLs are `https://127.0.0.1:PORT/`, a
//! TLS front on the same tree with a certificate from a CA made at start
//! (`DIR/fixture-ca.pem`, which the config's `[probe] ca` names). A client
//! that came over TLS is sent to `https://` mirrors only, so without this
//! `benches/tls-load.sh` would measure the origin path, not a choice.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use distri_redirector::minitree::{MiniServer, Tree};

/// Where mirrors stand: cities on every inhabited continent.
const CITIES: &[(f64, f64)] = &[
    (50.11, 8.68),
    (52.37, 4.90),
    (51.51, -0.13),
    (48.86, 2.35),
    (59.33, 18.07),
    (60.17, 24.94),
    (52.23, 21.01),
    (41.90, 12.50),
    (40.42, -3.70),
    (47.37, 8.54),
    (50.08, 14.44),
    (55.68, 12.57),
    (53.35, -6.26),
    (38.72, -9.14),
    (37.98, 23.73),
    (44.43, 26.10),
    (40.71, -74.01),
    (37.77, -122.42),
    (41.88, -87.63),
    (47.61, -122.33),
    (32.78, -96.80),
    (33.75, -84.39),
    (43.65, -79.38),
    (45.50, -73.57),
    (19.43, -99.13),
    (-23.55, -46.63),
    (-34.60, -58.38),
    (-33.45, -70.67),
    (4.71, -74.07),
    (-12.05, -77.04),
    (35.68, 139.69),
    (34.69, 135.50),
    (37.57, 126.98),
    (22.32, 114.17),
    (25.03, 121.57),
    (1.35, 103.82),
    (13.76, 100.50),
    (19.08, 72.88),
    (12.97, 77.59),
    (28.61, 77.21),
    (-33.87, 151.21),
    (-37.81, 144.96),
    (-36.85, 174.76),
    (-31.95, 115.86),
    (-26.20, 28.05),
    (-33.92, 18.42),
    (6.52, 3.38),
    (-1.29, 36.82),
    (30.04, 31.24),
    (25.20, 55.27),
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--mirrors")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let out = PathBuf::from(arg(&args, "--out").expect("--out FILE"));
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:18080".into());
    let interval = arg(&args, "--interval").unwrap_or_else(|| "10s".into());
    let mut workers = arg(&args, "--workers").map_or(String::new(), |w| format!("workers = {w}\n"));
    if let Some(r) = arg(&args, "--runtime") {
        // TOML's own quoting, as for the paths below.
        workers.push_str(&format!("runtime = {}\n", toml::Value::from(r)));
    }
    let releases = ["supersilverhaze", "jackherer"];
    // Every tree a release can have, as the prober checks each.
    let mut origin_tree = Tree::generate(&releases, 40);
    for r in releases {
        origin_tree.set_tree(r, "debug", 40);
        origin_tree.set_tree(r, "src", 40);
    }
    let mut all = origin_tree.with_prefix("origin");
    for i in 0..n {
        all.merge(origin_tree.with_prefix(&format!("m{i}")));
    }
    let server = MiniServer::start(all).await?;
    let base = server.url();
    let (mirror_base, probe_ca) = if args.iter().any(|a| a == "--https-mirrors") {
        let dir = out.parent().unwrap_or(Path::new("."));
        let (port, ca) = tls_front(server.addr(), dir).await?;
        let ca = toml::Value::from(ca.display().to_string());
        (format!("https://127.0.0.1:{port}/"), format!("ca = {ca}\n"))
    } else {
        (base.clone(), String::new())
    };
    let db = arg(&args, "--geoip").unwrap_or_else(|| "geoip/dbip-city-lite-compact.mmdb".into());
    let db = db
        .split(',')
        .map(|f| {
            let path = std::fs::canonicalize(f)?.display().to_string();
            // TOML's own quoting, not Rust's (they differ past ASCII).
            Ok(toml::Value::from(path).to_string())
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // One file as a plain string: builds from before lists were accepted
    // read it too (`AGAINST=` in load.sh).
    let db = match db.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", db.join(", ")),
    };
    let mut toml = format!(
        "listen = [\"{listen}\"]\norigin = \"{base}origin/\"\nreleases = [\"supersilverhaze\", \"jackherer\"]\n\
         geoip = {db}\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[probe]\ninterval = \"{interval}\"\ntimeout = \"5s\"\nconcurrency = 64\n{probe_ca}\n\
         [server]\nmax_connections = 20000\n{workers}"
    );
    for i in 0..n {
        let (lat, lon) = CITIES[i % CITIES.len()];
        // Mirrors past the fiftieth stand a little apart from their city.
        let jitter = (i / CITIES.len()) as f64 * 0.01;
        writeln!(
            toml,
            "\n[[mirror]]\nname = \"m{i}\"\nurl = \"{mirror_base}m{i}/\"\nlat = {}\nlon = {}",
            lat + jitter,
            lon + jitter
        )
        .expect("writing to a String");
    }
    std::fs::write(&out, toml)?;
    eprintln!(
        "fixture: {n} mirrors behind {base}, config in {}",
        out.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A TLS front on 127.0.0.1 for the plain server at `plain`: a CA and a
/// certificate for 127.0.0.1 made now, the CA written to
/// `dir/fixture-ca.pem`. Returns the front's port and that file.
async fn tls_front(plain: std::net::SocketAddr, dir: &Path) -> std::io::Result<(u16, PathBuf)> {
    let fail = |e: rcgen::Error| std::io::Error::other(e.to_string());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .map_err(fail)?
        .signed_by(&key, &ca)
        .map_err(fail)?;
    let ca_path = dir.join("fixture-ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(std::io::Error::other)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| {
        b.with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
    })
    .map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                if let Ok(mut inner) = TcpStream::connect(plain).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
                }
            });
        }
    });
    Ok((port, ca_path))
}
