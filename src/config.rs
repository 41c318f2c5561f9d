//! `mirrors.toml`: parsing and validation.
//!
//! Everything an operator can get wrong is caught here, once, at load time,
//! and reported with the file, line, column and key. The rest of the program
//! receives typed values (coordinates, countries, durations, CIDRs, base
//! URLs) and never re-validates them.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::geo::{Coord, Country};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from; relative paths inside are relative to its folder.
    pub path: PathBuf,
    /// Plain-HTTP addresses; may be empty when `tls` has some.
    pub listen: Vec<SocketAddr>,
    /// HTTPS (HTTP/1.1 and HTTP/2) listeners and their certificate.
    pub tls: Option<Tls>,
    /// The origin's base URL, always ending in `/`.
    pub origin: String,
    pub releases: Vec<String>,
    /// GeoIP files, looked up in order.
    pub geoip: Vec<PathBuf>,
    pub trusted_proxies: Vec<IpNet>,
    pub selection: Selection,
    pub probe: Probe,
    /// `[probe] ca`: PEM certificates probes trust besides the system's
    /// (mirrors behind a private CA; the tests' own CA).
    pub probe_ca: Option<PathBuf>,
    pub server: Server,
    /// Where the origin is, if known: the distance clients sent there
    /// travel, on the status page's coverage map.
    pub origin_at: Option<Coord>,
    /// The admin listener (metrics, status page); none when absent.
    pub admin: Option<Admin>,
    pub log: Log,
    pub mirrors: Vec<Mirror>,
}

/// The `[admin]` table: a listener for `/metrics`, never the public one.
#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    pub listen: Vec<SocketAddr>,
}

/// The `[log]` table.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Log {
    /// One line per request (off by default).
    pub access: bool,
    /// Every log line as JSON, for log shippers (takes effect at start).
    pub json: bool,
}

/// How near-equal mirrors share load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Selection {
    /// A candidate is in the band when its distance is at most
    /// `max(nearest * band_ratio, nearest + band_km)`.
    pub band_ratio: f64,
    pub band_km: f64,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            band_ratio: 1.25,
            band_km: 300.0,
        }
    }
}

/// Settings of the background prober.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_latency: Duration,
    pub fall: u32,
    pub rise: u32,
    pub sample: usize,
    pub concurrency: usize,
    /// The largest index (`meta.binaryproto`) read from the origin or a
    /// mirror; a larger one is not read, and the reason says so.
    pub max_index_bytes: u64,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_latency: Duration::from_secs(3),
            fall: 2,
            rise: 2,
            sample: 3,
            concurrency: 32,
            max_index_bytes: 64 << 20,
        }
    }
}

/// Limits of the front-end server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Server {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to finish its TLS handshake and send each request
    /// head, counted from the connection's start or its last write
    /// (slow-loris guard; `server::silent`).
    pub header_timeout: Duration,
    /// Serving threads, each with its own listening sockets.
    pub workers: usize,
    /// How the serving threads share their connections.
    pub runtime: Runtime,
    /// After SIGTERM, how long open connections get to finish.
    pub shutdown_grace: Duration,
    /// Streams one HTTP/2 connection may have open at once. distri's client
    /// fetches a whole dependency closure at once over one connection.
    pub http2_max_streams: u32,
    /// The largest request head (request line and headers) accepted; past
    /// it `431`. Also HTTP/2's header list size.
    pub max_header_bytes: usize,
    /// The longest request target (path and query) accepted; past it `414`.
    pub max_target_bytes: usize,
    /// TLS handshakes in progress at once; more wait for a place.
    pub tls_handshakes: usize,
    /// TLS handshakes in progress from one client network (an IPv4
    /// address, an IPv6 /64); more are closed at once.
    pub tls_handshakes_per_client: u16,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
            runtime: Runtime::Shared,
            shutdown_grace: Duration::from_secs(10),
            http2_max_streams: 1000,
            max_header_bytes: 16 * 1024,
            max_target_bytes: 8 * 1024,
            tls_handshakes: 1024,
            tls_handshakes_per_client: 64,
        }
    }
}

/// How the serving threads share their connections (benches/RESULTS.md,
/// "Tenth session", has the measurements behind both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// One work-stealing runtime: any thread serves any ready connection,
    /// so a thread that loses its CPU to another process holds nobody up.
    /// The safe choice on a host shared with other busy processes.
    Shared,
    /// A runtime and event loop per thread, as nginx's workers: a burst of
    /// requests starts on every thread at once, for less latency and CPU
    /// per request, but a thread's clients wait while it is off its CPU.
    /// For a host that serves the redirector and little else.
    PerThread,
}

/// The `[tls]` table: where HTTPS is served and with which certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One configured mirror.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub name: String,
    /// Stands for the origin's root; always ends in `/`.
    pub url: String,
    pub coord: Coord,
    pub weight: f64,
    /// When set, only clients located in these countries are sent here.
    pub countries: Option<Vec<Country>>,
    /// False for mirrors that cannot be reached over IPv6.
    pub ipv6: bool,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    tls: Option<Spanned<RawTls>>,
    origin: Spanned<String>,
    releases: Spanned<Vec<Spanned<String>>>,
    geoip: Spanned<toml::Value>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    selection: RawSelection,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default)]
    server: RawServer,
    origin_lat: Option<Spanned<f64>>,
    origin_lon: Option<Spanned<f64>>,
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "mirror")]
    mirrors: Vec<RawMirror>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSelection {
    band_ratio: Option<Spanned<f64>>,
    band_km: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_latency: Option<Spanned<String>>,
    fall: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    sample: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    max_index_bytes: Option<Spanned<i64>>,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_connections: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    runtime: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    http2_max_streams: Option<Spanned<i64>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_target_bytes: Option<Spanned<i64>>,
    tls_handshakes: Option<Spanned<i64>>,
    tls_handshakes_per_client: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<bool>,
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    listen: Spanned<Vec<Spanned<String>>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    name: Spanned<String>,
    url: Spanned<String>,
    lat: Spanned<f64>,
    lon: Spanned<f64>,
    weight: Option<Spanned<f64>>,
    countries: Option<Vec<Spanned<String>>>,
    ipv6: Option<bool>,
}

/// Where in the source an error is, and how to name it.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key written on the line of `offset`, for errors that serde reports
/// without one (type mismatches point at the value, not the key).
fn key_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_string(),
        None => line.trim().trim_matches(['[', ']']).to_string(),
    }
}

/// `releases` from serde's "missing field `releases`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates configuration text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Src { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // A missing key has no place of its own: name it, not a neighbour.
            let key =
                missing_field(e.message()).map_or_else(|| key_at(text, span.start), String::from);
            src.err(span.clone(), key, e.message().trim())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = raw.tls.map(|t| tls(&src, base, t)).transpose()?;
        let listen = listen(&src, raw.listen, tls.is_some())?;
        Ok(Config {
            path: path.to_path_buf(),
            listen,
            tls,
            origin: base_url(&src, "origin", &raw.origin)?,
            releases: releases(&src, raw.releases)?,
            geoip: geoip(&src, base, &raw.geoip)?,
            trusted_proxies: trusted_proxies(&src, &raw.trusted_proxies)?,
            selection: selection(&src, raw.selection)?,
            probe_ca: raw
                .probe
                .ca
                .as_ref()
                .map(|ca| pem_certificates(&src, base, "probe.ca", ca))
                .transpose()?,
            probe: probe(&src, raw.probe)?,
            server: server(&src, raw.server)?,
            origin_at: origin_at(&src, raw.origin_lat, raw.origin_lon)?,
            admin: raw.admin.map(|a| admin(&src, a)).transpose()?,
            log: log(&src, raw.log)?,
            mirrors: mirrors(&src, raw.mirrors)?,
        })
    }
}

/// The plain-HTTP addresses: `[::]:8080` when the key is absent; an empty
/// list only when `[tls]` serves instead.
fn listen(
    src: &Src,
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    has_tls: bool,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(vec![SocketAddr::from(([0u16; 8], 8080))]);
    };
    if raw.get_ref().is_empty() && !has_tls {
        return Err(src.err(
            raw.span(),
            "listen",
            "needs at least one address, or a [tls] table to serve HTTPS only",
        ));
    }
    addresses(src, "listen", raw.get_ref())
}

fn addresses(
    src: &Src,
    key: &str,
    raw: &[Spanned<String>],
) -> Result<Vec<SocketAddr>, ConfigError> {
    raw.iter()
        .map(|a| {
            a.get_ref().parse().map_err(|_| {
                src.err(
                    a.span(),
                    key,
                    format!(
                        "{:?} is not a socket address such as \"[::]:8080\"",
                        a.get_ref()
                    ),
                )
            })
        })
        .collect()
}

fn tls(src: &Src, base: &Path, raw: Spanned<RawTls>) -> Result<Tls, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.listen.get_ref().is_empty() {
        return Err(src.err(span, "tls.listen", "needs at least one address"));
    }
    Ok(Tls {
        listen: addresses(src, "tls.listen", raw.listen.get_ref())?,
        cert: readable_file(src, base, "tls.cert", &raw.cert)?,
        key: readable_file(src, base, "tls.key", &raw.key)?,
    })
}

fn admin(src: &Src, raw: Spanned<RawAdmin>) -> Result<Admin, ConfigError> {
    let span = raw.span();
    let raw = raw.into_inner();
    if raw.listen.get_ref().is_empty() {
        return Err(src.err(
            span,
            "admin.listen",
            "needs at least one address; remove [admin] for no admin listener",
        ));
    }
    Ok(Admin {
        listen: addresses(src, "admin.listen", raw.listen.get_ref())?,
    })
}

fn runtime(src: &Src, raw: Option<Spanned<String>>) -> Result<Runtime, ConfigError> {
    let Some(r) = raw else {
        return Ok(Runtime::Shared);
    };
    match r.get_ref().as_str() {
        "shared" => Ok(Runtime::Shared),
        "per-thread" => Ok(Runtime::PerThread),
        other => Err(src.err(
            r.span(),
            "server.runtime",
            format!("{other:?}: use \"shared\" or \"per-thread\""),
        )),
    }
}

fn log(src: &Src, raw: RawLog) -> Result<Log, ConfigError> {
    let json = match &raw.format {
        None => false,
        Some(f) => match f.get_ref().as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(src.err(
                    f.span(),
                    "log.format",
                    format!("{other:?}: use \"text\" or \"json\""),
                ));
            }
        },
    };
    Ok(Log {
        access: raw.access.unwrap_or(false),
        json,
    })
}

/// `origin_lat` and `origin_lon`: both or neither.
fn origin_at(
    src: &Src,
    lat: Option<Spanned<f64>>,
    lon: Option<Spanned<f64>>,
) -> Result<Option<Coord>, ConfigError> {
    match (lat, lon) {
        (None, None) => Ok(None),
        (Some(lat), Some(lon)) => coord(src, "origin_", &lat, &lon).map(Some),
        (Some(lat), None) => Err(src.err(
            lat.span(),
            "origin_lon",
            "missing: origin_lat and origin_lon go together, set both or neither",
        )),
        (None, Some(lon)) => Err(src.err(
            lon.span(),
            "origin_lat",
            "missing: origin_lat and origin_lon go together, set both or neither",
        )),
    }
}

/// A place from `lat` and `lon`, each in range; `prefix` names the keys.
fn coord(
    src: &Src,
    prefix: &str,
    lat: &Spanned<f64>,
    lon: &Spanned<f64>,
) -> Result<Coord, ConfigError> {
    let (la, lo) = (*lat.get_ref(), *lon.get_ref());
    if !(-90.0..=90.0).contains(&la) {
        return Err(src.err(
            lat.span(),
            format!("{prefix}lat"),
            format!("{la} is outside -90..90"),
        ));
    }
    if !(-180.0..=180.0).contains(&lo) {
        return Err(src.err(
            lon.span(),
            format!("{prefix}lon"),
            format!("{lo} is outside -180..180"),
        ));
    }
    Ok(Coord::new(la, lo).expect("ranges checked above"))
}

/// A base URL: http or https, a host, no credentials, query or fragment;
/// a missing trailing slash is added so joining a path is plain concatenation.
fn base_url(src: &Src, key: &str, raw: &Spanned<String>) -> Result<String, ConfigError> {
    let bad = |m: String| src.err(raw.span(), key, m);
    let url =
        url::Url::parse(raw.get_ref()).map_err(|e| bad(format!("{:?}: {e}", raw.get_ref())))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "{:?}: the scheme must be http or https",
            raw.get_ref()
        )));
    }
    if url.host().is_none() {
        return Err(bad(format!("{:?}: needs a host", raw.get_ref())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(format!(
            "{:?}: credentials would be sent to every client in Location headers",
            raw.get_ref()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(format!(
            "{:?}: must not have a query or fragment",
            raw.get_ref()
        )));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

/// Names that appear in paths and logs: letters, digits, `.`, `_`, `-`.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn releases(src: &Src, raw: Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>, ConfigError> {
    if raw.get_ref().is_empty() {
        return Err(src.err(raw.span(), "releases", "needs at least one release"));
    }
    let mut out: Vec<String> = Vec::new();
    for r in raw.into_inner() {
        let name = r.get_ref();
        if !plain_name(name) {
            return Err(src.err(
                r.span(),
                "releases",
                format!("{name:?} is not a plain directory name"),
            ));
        }
        if out.contains(name) {
            return Err(src.err(r.span(), "releases", format!("{name:?} is listed twice")));
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// One file, or a list looked up in order (ip-location-db ships one file
/// per family).
fn geoip(src: &Src, base: &Path, raw: &Spanned<toml::Value>) -> Result<Vec<PathBuf>, ConfigError> {
    let bad = || {
        src.err(
            raw.span(),
            "geoip",
            "must be a file name or a list of file names",
        )
    };
    let names: Vec<&str> = match raw.get_ref() {
        toml::Value::String(s) => vec![s.as_str()],
        toml::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    names
        .into_iter()
        .map(|n| readable_path(src, base, "geoip", raw.span(), n))
        .collect()
}

/// A path relative to the config's folder, naming a file that can be opened.
fn readable_file(
    src: &Src,
    base: &Path,
    key: &str,
    raw: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    readable_path(src, base, key, raw.span(), raw.get_ref())
}

/// A readable PEM file with at least one certificate.
fn pem_certificates(
    src: &Src,
    base: &Path,
    key: &str,
    raw: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = readable_file(src, base, key, raw)?;
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| src.err(raw.span(), key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        let msg = format!("{}: no certificate in the file", path.display());
        return Err(src.err(raw.span(), key, msg));
    }
    Ok(path)
}

fn readable_path(
    src: &Src,
    base: &Path,
    key: &str,
    span: Range<usize>,
    name: &str,
) -> Result<PathBuf, ConfigError> {
    let path = base.join(name);
    match std::fs::File::open(&path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(src.err(span, key, format!("{} is not a file", path.display()))),
        Err(e) => Err(src.err(span, key, format!("cannot read {}: {e}", path.display()))),
    }
}

fn trusted_proxies(src: &Src, raw: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .map(|c| {
            let s = c.get_ref();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    src.err(
                        c.span(),
                        "trusted_proxies",
                        format!("{s:?} is not an address or CIDR"),
                    )
                })
        })
        .collect()
}

fn selection(src: &Src, raw: RawSelection) -> Result<Selection, ConfigError> {
    let mut s = Selection::default();
    if let Some(r) = raw.band_ratio {
        if !(r.get_ref().is_finite() && *r.get_ref() >= 1.0) {
            return Err(src.err(
                r.span(),
                "selection.band_ratio",
                "must be a number of at least 1.0",
            ));
        }
        s.band_ratio = *r.get_ref();
    }
    if let Some(k) = raw.band_km {
        if !(k.get_ref().is_finite() && *k.get_ref() >= 0.0) {
            return Err(src.err(
                k.span(),
                "selection.band_km",
                "must be a number of at least 0",
            ));
        }
        s.band_km = *k.get_ref();
    }
    Ok(s)
}

fn duration(
    src: &Src,
    key: &str,
    raw: Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    match humantime::parse_duration(raw.get_ref()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(src.err(raw.span(), key, "must be longer than zero")),
        Err(e) => Err(src.err(
            raw.span(),
            key,
            format!(
                "{:?} is not a duration such as \"500ms\", \"10s\" or \"5m\": {e}",
                raw.get_ref()
            ),
        )),
    }
}

fn count(
    src: &Src,
    key: &str,
    raw: Option<Spanned<i64>>,
    default: usize,
    range: Range<i64>,
) -> Result<usize, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let v = *raw.get_ref();
    if range.contains(&v) {
        Ok(v as usize)
    } else {
        Err(src.err(
            raw.span(),
            key,
            format!(
                "{v} is out of range: between {} and {}",
                range.start,
                range.end - 1
            ),
        ))
    }
}

fn probe(src: &Src, raw: RawProbe) -> Result<Probe, ConfigError> {
    let d = Probe::default();
    Ok(Probe {
        interval: duration(src, "probe.interval", raw.interval, d.interval)?,
        timeout: duration(src, "probe.timeout", raw.timeout, d.timeout)?,
        max_latency: duration(src, "probe.max_latency", raw.max_latency, d.max_latency)?,
        fall: count(src, "probe.fall", raw.fall, d.fall as usize, 1..101)? as u32,
        rise: count(src, "probe.rise", raw.rise, d.rise as usize, 1..101)? as u32,
        sample: count(src, "probe.sample", raw.sample, d.sample, 0..1001)?,
        concurrency: count(
            src,
            "probe.concurrency",
            raw.concurrency,
            d.concurrency,
            1..10_001,
        )?,
        max_index_bytes: count(
            src,
            "probe.max_index_bytes",
            raw.max_index_bytes,
            d.max_index_bytes as usize,
            1024..(1 << 32),
        )? as u64,
    })
}

fn server(src: &Src, raw: RawServer) -> Result<Server, ConfigError> {
    let d = Server::default();
    Ok(Server {
        max_connections: count(
            src,
            "server.max_connections",
            raw.max_connections,
            d.max_connections,
            1..1_000_001,
        )?,
        header_timeout: duration(
            src,
            "server.header_timeout",
            raw.header_timeout,
            d.header_timeout,
        )?,
        workers: count(src, "server.workers", raw.workers, d.workers, 1..257)?,
        runtime: runtime(src, raw.runtime)?,
        shutdown_grace: duration(
            src,
            "server.shutdown_grace",
            raw.shutdown_grace,
            d.shutdown_grace,
        )?,
        http2_max_streams: count(
            src,
            "server.http2_max_streams",
            raw.http2_max_streams,
            d.http2_max_streams as usize,
            1..100_001,
        )? as u32,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: count(
            src,
            "server.max_header_bytes",
            raw.max_header_bytes,
            d.max_header_bytes,
            8192..1_048_577,
        )?,
        max_target_bytes: count(
            src,
            "server.max_target_bytes",
            raw.max_target_bytes,
            d.max_target_bytes,
            256..1_048_577,
        )?,
        tls_handshakes: count(
            src,
            "server.tls_handshakes",
            raw.tls_handshakes,
            d.tls_handshakes,
            1..1_000_001,
        )?,
        tls_handshakes_per_client: count(
            src,
            "server.tls_handshakes_per_client",
            raw.tls_handshakes_per_client,
            d.tls_handshakes_per_client as usize,
            1..65_536,
        )? as u16,
    })
}

fn mirrors(src: &Src, raw: Vec<RawMirror>) -> Result<Vec<Mirror>, ConfigError> {
    let mut out: Vec<Mirror> = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("mirror[{i}].{k}");
        let name = m.name.get_ref();
        if !plain_name(name) {
            return Err(src.err(
                m.name.span(),
                key("name"),
                format!("{name:?}: use letters, digits, '.', '_' and '-'"),
            ));
        }
        if out.iter().any(|o| &o.name == name) {
            return Err(src.err(
                m.name.span(),
                key("name"),
                format!("{name:?} is used by another mirror"),
            ));
        }
        let at = coord(src, &key(""), &m.lat, &m.lon)?;
        let weight = match &m.weight {
            None => 1.0,
            Some(w) if w.get_ref().is_finite() && *w.get_ref() > 0.0 => *w.get_ref(),
            Some(w) => {
                return Err(src.err(
                    w.span(),
                    key("weight"),
                    format!("{} must be greater than 0", w.get_ref()),
                ));
            }
        };
        let countries = m
            .countries
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        Country::parse(c.get_ref()).ok_or_else(|| {
                            src.err(
                                c.span(),
                                key("countries"),
                                format!(
                                    "{:?} is not an ISO 3166-1 alpha-2 country code",
                                    c.get_ref()
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        if countries.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(src.err(
                m.name.span(),
                key("countries"),
                "is empty: remove it to serve every country",
            ));
        }
        out.push(Mirror {
            name: name.clone(),
            url: base_url(src, &key("url"), &m.url)?,
            coord: at,
            weight,
            countries,
            ipv6: m.ipv6.unwrap_or(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = ["127.0.0.1:8080", "[::1]:8081"]
origin = "https://repo.distr1.org"
releases = ["supersilverhaze", "jackherer"]
geoip = "geo-whois-asn-country.mmdb"
trusted_proxies = ["127.0.0.1/32", "::1"]

[probe]
interval = "500ms"
timeout = "2s"

[[mirror]]
name = "de-fra"
url = "https://mirror.example.org/repo.distr1.org/"
lat = 50.11
lon = 8.68
weight = 2.5
countries = ["de", "AT"]

[[mirror]]
name = "us-nyc"
url = "http://mirror.example.net/distri"
lat = 40.71
lon = -74.01
ipv6 = false
"#;

    fn geoip_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geoip/mirrors.toml")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(&geoip_dir(), text)
    }

    #[test]
    fn geoip_may_name_several_files_in_order() {
        let text = GOOD.replace(
            "geoip = \"geo-whois-asn-country.mmdb\"",
            "geoip = [\"dbip-city-lite-compact.mmdb\", \"geo-whois-asn-country.mmdb\"]",
        );
        let c = parse(&text).unwrap();
        let names: Vec<_> = c.geoip.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(
            names,
            ["dbip-city-lite-compact.mmdb", "geo-whois-asn-country.mmdb"]
        );
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.origin, "https://repo.distr1.org/");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.releases, ["supersilverhaze", "jackherer"]);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.probe.interval, Duration::from_millis(500));
        assert_eq!(c.probe.fall, 2);
        assert_eq!(c.mirrors[0].weight, 2.5);
        assert_eq!(c.mirrors[0].countries.as_ref().unwrap().len(), 2);
        assert_eq!(c.mirrors[1].url, "http://mirror.example.net/distri/");
        assert!(!c.mirrors[1].ipv6);
        assert_eq!(c.selection, Selection::default());
        assert_eq!(
            (&c.admin, c.log, c.origin_at),
            (&None, Log::default(), None)
        );
        assert_eq!(c.server.max_header_bytes, 16 * 1024);
        let with = format!(
            "origin_lat = 47.4\norigin_lon = 8.5\n{GOOD}\n[admin]\nlisten = [\"127.0.0.1:9180\"]\n\
             [log]\naccess = true\nformat = \"json\"\n"
        );
        let c = parse(&with).unwrap();
        assert_eq!(c.origin_at, Coord::new(47.4, 8.5));
        assert_eq!(c.admin.unwrap().listen, ["127.0.0.1:9180".parse().unwrap()]);
        assert_eq!(
            c.log,
            Log {
                access: true,
                json: true
            }
        );
    }

    /// Each bad edit of GOOD, the line it is on, and text the message must hold.
    #[test]
    fn every_error_names_line_and_key() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "timeout = \"2s\"",
                "timeout = \"2s\"\nbogus = 1",
                11,
                "unknown field `bogus`",
            ),
            (
                "name = \"us-nyc\"",
                "name = \"de-fra\"",
                21,
                "mirror[1].name: \"de-fra\" is used by another mirror",
            ),
            (
                "http://mirror.example.net/distri",
                "ftp://mirror.example.net/",
                22,
                "mirror[1].url",
            ),
            (
                "http://mirror.example.net/distri",
                "not a url",
                22,
                "mirror[1].url",
            ),
            (
                "lat = 50.11",
                "lat = 95.0",
                15,
                "mirror[0].lat: 95 is outside -90..90",
            ),
            (
                "lon = -74.01",
                "lon = 181.0",
                24,
                "mirror[1].lon: 181 is outside -180..180",
            ),
            ("weight = 2.5", "weight = 0.0", 17, "mirror[0].weight"),
            ("weight = 2.5", "weight = -1.0", 17, "mirror[0].weight"),
            (
                "[\"de\", \"AT\"]",
                "[\"de\", \"XX\"]",
                18,
                "mirror[0].countries: \"XX\" is not an ISO 3166-1",
            ),
            (
                "releases = [\"supersilverhaze\", \"jackherer\"]",
                "releases = []",
                4,
                "releases: needs at least one",
            ),
            (
                "geoip = \"geo-whois-asn-country.mmdb\"",
                "geoip = 5",
                5,
                "geoip: must be a file name or a list of file names",
            ),
            (
                "geoip = \"geo-whois-asn-country.mmdb\"",
                "geoip = [\"geo-whois-asn-country.mmdb\", \"missing.mmdb\"]",
                5,
                "geoip: cannot read",
            ),
            (
                "geo-whois-asn-country.mmdb",
                "missing.mmdb",
                5,
                "geoip: cannot read",
            ),
            (
                "\"::1\"]",
                "\"::1/999\"]",
                6,
                "trusted_proxies: \"::1/999\"",
            ),
            (
                "\"500ms\"",
                "\"soon\"",
                9,
                "probe.interval: \"soon\" is not a duration",
            ),
            ("lat = 50.11", "lat = \"north\"", 15, "lat: "),
            ("\"127.0.0.1:8080\"", "\"localhost\"", 2, "listen"),
            (
                "geoip = \"geo-whois-asn-country.mmdb\"",
                "",
                1,
                "geoip: missing field `geoip`",
            ),
            (
                "https://repo.distr1.org",
                "https://user:pw@repo.distr1.org",
                3,
                "origin: ",
            ),
            (
                "[probe]",
                "origin_lat = 47.4\n[probe]",
                8,
                "origin_lon: missing",
            ),
            (
                "[probe]",
                "origin_lat = 47.4\norigin_lon = 200.0\n[probe]",
                9,
                "origin_lon: 200 is outside -180..180",
            ),
            (
                "[probe]",
                "[log]\nformat = \"xml\"\n[probe]",
                9,
                "log.format: \"xml\": use \"text\" or \"json\"",
            ),
            (
                "[probe]",
                "[admin]\nlisten = [\"nowhere\"]\n[probe]",
                9,
                "admin.listen: \"nowhere\" is not a socket address",
            ),
            (
                "timeout = \"2s\"",
                "timeout = \"2s\"\n[server]\nmax_header_bytes = 100",
                12,
                "server.max_header_bytes: 100 is out of range",
            ),
            (
                "timeout = \"2s\"",
                "timeout = \"2s\"\n[server]\nruntime = \"nginx\"",
                12,
                "server.runtime: \"nginx\": use \"shared\" or \"per-thread\"",
            ),
        ];
        for (from, to, line, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let err = parse(&text).expect_err(to).to_string();
            assert!(err.contains(want), "{to}: {err}");
            let prefix = format!("{}:{line}:", geoip_dir().display());
            assert!(err.starts_with(&prefix), "{to}: want line {line}: {err}");
        }
    }

    #[test]
    fn missing_file_is_reported() {
        let err = Config::load(Path::new("/nonexistent/mirrors.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/mirrors.toml"),
            "{err}"
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mirrors.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.origin, "https://repo.distr1.org/");
        assert_eq!(c.releases, ["supersilverhaze", "jackherer"]);
    }
}
