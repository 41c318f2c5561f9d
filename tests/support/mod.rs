//! Shared by the black-box tests: generated GeoIP databases, loopback
//! mirrors serving miniature trees, the real service on port 0, and a raw
//! HTTP/1.1 client that sends paths exactly as written.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distri_redirector::app::{self, Running};
use distri_redirector::config::Config;
use distri_redirector::minitree::{MiniServer, Tree};
use ipnet::IpNet;
use mmdb_writer::Writer;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const RELEASES: [&str; 2] = ["supersilverhaze", "jackherer"];
pub const PACKAGES: usize = 12;

/// Places in the test databases: network, country, coordinates (None: the
/// record has a country only).
/// Network, country, and (latitude, longitude) when the record has them.
pub type Place = (&'static str, &'static str, Option<(f64, f64)>);

pub const PLACES: &[Place] = &[
    ("1.0.0.0/24", "FR", Some((48.85, 2.35))),       // Paris
    ("2.0.0.0/24", "US", Some((41.88, -87.63))),     // Chicago
    ("3.0.0.0/24", "KR", Some((37.57, 126.98))),     // Seoul
    ("4.0.0.0/24", "AR", Some((-34.60, -58.40))),    // Buenos Aires
    ("5.0.0.0/24", "DE", None),                      // Germany, centroid only
    ("6.0.0.0/8", "DE", Some((50.20, 8.20))),        // near Frankfurt, many networks
    ("8.0.0.0/24", "JP", Some((35.68, 139.69))),     // Tokyo
    ("2a00:1000::/32", "DE", Some((52.52, 13.40))),  // Berlin, IPv6
    ("2600:1000::/32", "US", Some((40.71, -74.01))), // New York, IPv6
];

#[derive(Serialize)]
struct NestedCountry {
    iso_code: String,
}

#[derive(Serialize)]
struct NestedLocation {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
struct Nested {
    country: NestedCountry,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<NestedLocation>,
}

#[derive(Serialize)]
struct Flat {
    country_code: String,
    // ip-location-db stores 32-bit floats.
    #[serde(skip_serializing_if = "Option::is_none")]
    latitude: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    longitude: Option<f32>,
}

#[derive(Serialize)]
struct ContinentOnly {
    continent: BTreeMap<String, String>,
}

/// Writes a database in MaxMind's nested (City) schema.
pub fn write_nested_db(path: &Path) {
    write_nested_db_of(path, PLACES)
}

/// Writes a nested-schema database of these places (and one record with
/// no country), by writing a new file and renaming it over `path`, as
/// `geoipupdate` does.
pub fn write_nested_db_of(path: &Path, places: &[Place]) {
    let mut w = Writer::new("Test-City");
    for (net, cc, ll) in places {
        let rec = Nested {
            country: NestedCountry {
                iso_code: cc.to_string(),
            },
            location: ll.map(|(latitude, longitude)| NestedLocation {
                latitude,
                longitude,
            }),
        };
        w.insert(net.parse::<IpNet>().unwrap(), &rec).unwrap();
    }
    // A record with neither country nor coordinates.
    let unknown = ContinentOnly {
        continent: [("code".to_string(), "EU".to_string())].into(),
    };
    w.insert("7.0.0.0/24".parse::<IpNet>().unwrap(), &unknown)
        .unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, w.to_bytes().unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes a database in ip-location-db's flat schema.
pub fn write_flat_db(path: &Path) {
    let mut w = Writer::new("Test-Flat");
    for (net, cc, ll) in PLACES {
        let rec = Flat {
            country_code: cc.to_string(),
            latitude: ll.map(|l| l.0 as f32),
            longitude: ll.map(|l| l.1 as f32),
        };
        w.insert(net.parse::<IpNet>().unwrap(), &rec).unwrap();
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

/// One mirror of a test config.
pub struct MirrorSpec {
    pub name: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub extra: &'static str,
}

pub fn spec(name: &'static str, lat: f64, lon: f64) -> MirrorSpec {
    MirrorSpec {
        name,
        lat,
        lon,
        extra: "",
    }
}

/// The four continents' mirrors most tests use.
pub fn world() -> Vec<MirrorSpec> {
    vec![
        spec("eu-fra", 50.11, 8.68),
        spec("us-nyc", 40.71, -74.01),
        spec("jp-tyo", 35.68, 139.69),
        spec("br-sao", -23.55, -46.63),
    ]
}

/// An origin, mirrors, and the real service in front of them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub origin: MiniServer,
    pub mirrors: Vec<MiniServer>,
    pub names: Vec<&'static str>,
    /// Base URLs by mirror, in `names` order.
    pub urls: Vec<String>,
    pub service: Option<Running>,
    pub config: Config,
}

pub struct Options {
    pub trusted: &'static str,
    pub probe: &'static str,
    pub flat_db: bool,
    pub extra: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trusted: r#"["127.0.0.1/32"]"#,
            probe: "interval = \"300ms\"\ntimeout = \"500ms\"\nmax_latency = \"2s\"\nfall = 2\nrise = 2\nsample = 3",
            flat_db: false,
            extra: "",
        }
    }
}

/// A test config: loopback listener, `test.mmdb`, these mirrors at these URLs.
pub fn config_text(
    origin: &str,
    opts: &Options,
    mirrors: &[MirrorSpec],
    urls: &[String],
) -> String {
    let mut text = format!(
        "listen = [\"127.0.0.1:0\"]\norigin = \"{}\"\nreleases = [\"supersilverhaze\", \"jackherer\"]\ngeoip = \"test.mmdb\"\ntrusted_proxies = {}\n{}\n[probe]\n{}\n",
        origin, opts.trusted, opts.extra, opts.probe
    );
    for (m, url) in mirrors.iter().zip(urls) {
        text.push_str(&format!(
            "\n[[mirror]]\nname = \"{}\"\nurl = \"{}\"\nlat = {}\nlon = {}\n{}\n",
            m.name, url, m.lat, m.lon, m.extra
        ));
    }
    text
}

pub fn origin_tree() -> Tree {
    Tree::generate(&RELEASES, PACKAGES)
}

impl Fixture {
    /// Every mirror serves a copy of the origin's tree.
    pub async fn start(mirrors: Vec<MirrorSpec>, opts: Options) -> Fixture {
        let trees = mirrors.iter().map(|_| origin_tree()).collect();
        Fixture::start_with(mirrors, trees, opts).await
    }

    /// The four `world()` mirrors, once all are eligible.
    pub async fn world(opts: Options) -> Fixture {
        let f = Fixture::start(world(), opts).await;
        let names: Vec<&str> = f.names.clone();
        f.wait_eligible(&names, Duration::from_secs(10)).await;
        f
    }

    pub async fn start_with(mirrors: Vec<MirrorSpec>, trees: Vec<Tree>, opts: Options) -> Fixture {
        Fixture::start_beside(mirrors, trees, Vec::new(), opts).await
    }

    /// Mirrors serving `trees`, and after them `others`: mirrors served by
    /// something else, at these base URLs.
    pub async fn start_beside(
        mut mirrors: Vec<MirrorSpec>,
        trees: Vec<Tree>,
        others: Vec<(MirrorSpec, String)>,
        opts: Options,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("test.mmdb");
        if opts.flat_db {
            write_flat_db(&db);
        } else {
            write_nested_db(&db);
        }
        let origin = MiniServer::start(origin_tree()).await.unwrap();
        let mut servers = Vec::new();
        for t in trees {
            servers.push(MiniServer::start(t).await.unwrap());
        }
        let mut urls: Vec<String> = servers.iter().map(MiniServer::url).collect();
        for (spec, url) in others {
            mirrors.push(spec);
            urls.push(url);
        }
        let text = config_text(&origin.url(), &opts, &mirrors, &urls);
        let path = dir.path().join("mirrors.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let service = app::start(&config).await.unwrap();
        Fixture {
            dir,
            origin,
            urls,
            mirrors: servers,
            names: mirrors.iter().map(|m| m.name).collect(),
            service: Some(service),
            config,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.service.as_ref().unwrap().addrs[0]
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mirrors.toml")
    }

    /// Names of the mirrors the table has eligible now.
    pub fn eligible(&self) -> Vec<String> {
        let t = self.service.as_ref().unwrap().table();
        t.mirrors()
            .iter()
            .filter(|m| m.status.eligible)
            .map(|m| m.name.to_string())
            .collect()
    }

    /// A mirror's current reason.
    pub fn reason(&self, name: &str) -> String {
        let t = self.service.as_ref().unwrap().table();
        t.mirrors()
            .iter()
            .find(|m| &*m.name == name)
            .unwrap()
            .status
            .reason
            .to_string()
    }

    /// A mirror's one-line state, with what its trees lack.
    pub fn summary(&self, name: &str) -> String {
        let t = self.service.as_ref().unwrap().table();
        let m = t.mirrors().iter().find(|m| &*m.name == name).unwrap();
        m.status.summary()
    }

    /// Waits until a mirror's reason starts with `prefix`, or panics at the
    /// deadline with the reason it has.
    pub async fn wait_reason(&self, name: &str, prefix: &str, within: Duration) {
        let start = tokio::time::Instant::now();
        while !self.reason(name).starts_with(prefix) {
            assert!(
                start.elapsed() < within,
                "{name}: {}, wanted {prefix:?}",
                self.reason(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `cond` holds of the running service (20 s at most), or
    /// panics naming `what`.
    pub async fn until(&self, what: &str, cond: impl Fn(&Fixture) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `probe` until it gives a value (20 s at most), or panics naming
    /// `what`: for conditions only a request can check.
    pub async fn eventually<T, F>(&self, what: &str, mut probe: impl FnMut() -> F) -> T
    where
        F: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The service's reload record: (applied, refused, last error).
    pub fn reloads(&self) -> (u64, u64, String) {
        let r = self.service.as_ref().unwrap().routing.load().reload.clone();
        let last = r.last_error.as_ref().map(|e| e.message.clone());
        (r.applied, r.failed, last.unwrap_or_default())
    }

    /// Waits until exactly `want` are eligible, or panics at the deadline.
    pub async fn wait_eligible(&self, want: &[&str], within: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        loop {
            let mut now = self.eligible();
            now.sort();
            if now == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "eligible {now:?}, wanted {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The base URL of a mirror by name.
    pub fn url_of(&self, name: &str) -> String {
        let i = self.names.iter().position(|n| *n == name).unwrap();
        self.urls[i].clone()
    }

    pub fn mirror(&mut self, name: &str) -> &mut MiniServer {
        let i = self.names.iter().position(|n| *n == name).unwrap();
        &mut self.mirrors[i]
    }

    /// GET `path` as a client at `client_ip` (sent as X-Forwarded-For).
    pub async fn get_as(&self, client_ip: &str, path: &str) -> Answer {
        raw(self.addr(), &format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client_ip}\r\nConnection: close\r\n\r\n")).await
    }

    /// The mirror name a client is sent to, or "origin".
    pub async fn where_to(&self, client_ip: &str) -> String {
        let a = self
            .get_as(
                client_ip,
                "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs",
            )
            .await;
        assert_eq!(a.status, 302, "{a:?}");
        self.name_of(a.location())
    }

    /// Where clients of `networks` networks near Frankfurt are sent for
    /// `path`; each Location is fetched, and must answer 200 with the
    /// origin's bytes (a mirror that lacks the file would show as a 404).
    pub async fn served_by(&self, path: &str, networks: u32) -> BTreeSet<String> {
        let origin = fetch(&format!("{}{}", self.origin.url(), &path[1..])).await;
        assert_eq!(origin.0, 200, "the origin has {path}");
        let mut seen = BTreeSet::new();
        for i in 0..networks {
            let ip = format!("6.0.{i}.1");
            let a = self.get_as(&ip, path).await;
            assert_eq!(a.status, 302, "{path} for {ip}: {a:?}");
            let got = fetch(a.location()).await;
            assert_eq!(got.0, 200, "{path} for {ip} at {}", a.location());
            assert!(
                got.1 == origin.1,
                "{path} at {}: not the origin's bytes",
                a.location()
            );
            seen.insert(self.name_of(a.location()));
        }
        seen
    }

    pub fn name_of(&self, location: &str) -> String {
        if location.starts_with(&self.origin.url()) {
            return "origin".into();
        }
        for (n, u) in self.names.iter().zip(&self.urls) {
            if location.starts_with(u.as_str()) {
                return n.to_string();
            }
        }
        panic!("{location} is not under any configured base");
    }
}

/// GETs `url` without following redirects: status and body.
pub async fn fetch(url: &str) -> (u16, bytes::Bytes) {
    // The probe's client: no redirects followed, no proxies.
    let client = distri_redirector::probe::check::client(Duration::from_secs(10));
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

/// A parsed response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in {self:?}"))
    }
}

/// Sends `request` as written and reads the response until the server closes.
pub async fn raw(addr: SocketAddr, request: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10s")
        .unwrap();
    parse(&buf)
}

fn parse(buf: &[u8]) -> Answer {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Answer {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// GET `path` from `addr` with extra `headers` (each ending in CRLF).
pub async fn get(addr: SocketAddr, path: &str, headers: &str) -> Answer {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await
}

/// Every sample of a scrape, keyed by name and sorted labels.
pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let a = get(addr, "/metrics", "").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{a:?}"
    );
    let text = String::from_utf8(a.body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = format!("{}{{{}}}", s.metric, labels.join(","));
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, v);
    }
    out
}

pub fn at(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

/// Writes `bytes` on `stream` while reading, so an early answer (and close)
/// is seen even when the rest can no longer be sent; half-closes after
/// writing when asked. Everything read until the server closes, or `None`
/// when it has not closed within `within`.
pub async fn send_while_reading(
    stream: TcpStream,
    bytes: Vec<u8>,
    half_close: bool,
    within: Duration,
) -> Option<Vec<u8>> {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The server may answer and close before it has read everything.
        if wr.write_all(&bytes).await.is_ok() && half_close {
            let _ = wr.shutdown().await;
        }
        // Kept open until the read side is done with.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let read = async {
        loop {
            match rd.read(&mut chunk).await {
                // A reset after the answer arrived ends it too.
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, read).await;
    // A writer still blocked on a server that stopped reading.
    writer.abort();
    closed.ok().map(|()| buf)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
