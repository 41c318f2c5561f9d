//! The HTTP front-end: request to outcome to response, in one place.
//!
//! [`Frontend::decide`] turns a request into an [`Outcome`] (it reads the
//! current mirror table and GeoIP database, does no I/O and takes no lock);
//! [`respond`] turns an outcome into the response. Every status code the
//! service sends is chosen in these two functions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::client::{self, sender};
use crate::explain::explain;
use crate::metrics::Metrics;
use crate::path::{self, PathError};
use crate::routing::{Routing, SharedRouting};
use crate::select::{Client, select};
use crate::stats::{Other, Tally, UNPLACED, cell_of};
use crate::status::Pages;
use crate::table::MirrorId;

/// What the front-end needs, shared by every connection: the published
/// routing snapshot, loaded once per request, and what counts and shows
/// the requests.
pub struct Frontend {
    routing: SharedRouting,
    tally: Option<Arc<Tally>>,
    pages: Option<Arc<Pages>>,
    metrics: Option<Arc<Metrics>>,
}

/// The connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Over TLS: the client is sent to `https://` mirrors only.
    pub tls: bool,
    /// The admin listener: metrics and status pages, no redirects.
    pub admin: bool,
}

impl Conn {
    pub fn plain(peer: SocketAddr) -> Conn {
        Conn {
            peer,
            tls: false,
            admin: false,
        }
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// 302 to this URL (a mirror's or the origin's).
    Redirect {
        location: HeaderValue,
    },
    Healthy,
    BadPath(PathError),
    /// A query the service reads (`?mirrorlist&ip=`) that does not parse.
    BadQuery(String),
    MethodNotAllowed,
    /// A path the admin listener does not serve.
    NotFound,
    /// A request target longer than `[server] max_target_bytes`.
    TargetTooLong,
    /// A page: the status page, its JSON, metrics, an explanation.
    Page {
        body: Bytes,
        content_type: HeaderValue,
        /// The body is gzipped (the client accepts it).
        gzip: bool,
    },
}

/// Where a request went, for counting and the access log.
#[derive(Clone, Copy, Debug)]
struct Served {
    to: To,
    client: Option<IpAddr>,
    cell: usize,
}

#[derive(Clone, Copy, Debug)]
enum To {
    Mirror(MirrorId),
    /// The origin, for want of a candidate.
    Origin,
    Other(Other),
}

impl Served {
    fn other(o: Other) -> Served {
        Served {
            to: To::Other(o),
            client: None,
            cell: UNPLACED,
        }
    }
}

static HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Frontend {
    pub fn new(routing: SharedRouting) -> Frontend {
        Frontend {
            routing,
            tally: None,
            pages: None,
            metrics: None,
        }
    }

    /// Counts every request in `tally` (and times it).
    pub fn counting(self, tally: Arc<Tally>) -> Frontend {
        Frontend {
            tally: Some(tally),
            ..self
        }
    }

    /// Serves the status page (`/mirrors`, `/mirrors.json`) from `pages`.
    pub fn with_pages(self, pages: Arc<Pages>) -> Frontend {
        Frontend {
            pages: Some(pages),
            ..self
        }
    }

    /// Serves `/metrics` on admin connections.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Frontend {
        Frontend {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Decides, counts, logs and responds.
    pub fn handle<B>(&self, req: &Request<B>, conn: Conn) -> Response<Full<Bytes>> {
        let start = self.tally.as_ref().map(|t| t.clock.raw());
        let routing = self.routing.load();
        let (outcome, served) = self.route(req, conn, &routing);
        let resp = respond(outcome, req.method() == Method::HEAD);
        if let Some(t) = &self.tally {
            count(t, &routing, served);
        }
        let elapsed = match (&self.tally, start) {
            (Some(t), Some(s)) => {
                let ns = t.clock.delta_as_nanos(s, t.clock.raw());
                t.latency.record(ns);
                ns
            }
            _ => 0,
        };
        if routing.policy.access_log {
            access_log(req, &resp, served, &routing, elapsed);
        }
        resp
    }

    /// The outcome alone, as `handle` would decide it.
    pub fn decide<B>(&self, req: &Request<B>, conn: Conn) -> Outcome {
        self.route(req, conn, &self.routing.load()).0
    }

    fn route<B>(&self, req: &Request<B>, conn: Conn, routing: &Routing) -> (Outcome, Served) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return (
                Outcome::MethodNotAllowed,
                Served::other(Other::MethodNotAllowed),
            );
        }
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > routing.policy.max_target {
            return (Outcome::TargetTooLong, Served::other(Other::BadRequest));
        }
        let raw = req.uri().path();
        if raw == "/healthz" {
            return (Outcome::Healthy, Served::other(Other::Health));
        }
        if let Some(page) = self.page(req, conn, routing) {
            return (page, Served::other(Other::Page));
        }
        if conn.admin {
            return (Outcome::NotFound, Served::other(Other::BadRequest));
        }
        let path = match path::normalise(raw) {
            Ok(p) => p,
            Err(e) => return (Outcome::BadPath(e), Served::other(Other::BadRequest)),
        };
        if let Some(query) = req.uri().query().filter(|q| wants_mirrorlist(q)) {
            let outcome = mirrorlist(req, conn, routing, &path, query);
            return (outcome, Served::other(Other::Page));
        }
        let policy = &routing.policy;
        if !policy.is_release_path(&path) {
            let served = Served::other(Other::NotRelease);
            return (redirect(&policy.origin, &path), served);
        }
        let from = sender(
            conn.peer.ip(),
            conn.tls,
            req.headers(),
            &policy.trusted_proxies,
        );
        redirect_for(routing, from.ip, from.https, &path)
    }

    /// The status page, its JSON and (on the admin listener) metrics; the
    /// path is matched first, so other requests never read their headers
    /// for this.
    fn page<B>(&self, req: &Request<B>, conn: Conn, routing: &Routing) -> Option<Outcome> {
        let (rendered, content_type) = match req.uri().path() {
            "/mirrors" | "/mirrors/" => (self.pages.as_ref()?.html(), HTML.clone()),
            "/mirrors.json" => (self.pages.as_ref()?.json(), JSON.clone()),
            "/metrics" if conn.admin => {
                let body = Bytes::from(self.metrics.as_ref()?.render(routing));
                let content_type = HeaderValue::from_static(crate::metrics::CONTENT_TYPE);
                return Some(Outcome::Page {
                    body,
                    content_type,
                    gzip: false,
                });
            }
            _ => return None,
        };
        let (body, gzip) = match rendered.gzip {
            Some(gz) if accepts_gzip(req) => (gz, true),
            _ => (rendered.plain, false),
        };
        Some(Outcome::Page {
            body,
            content_type,
            gzip,
        })
    }
}

/// Where `ip` goes for a path of a current release.
fn redirect_for(routing: &Routing, ip: IpAddr, https_only: bool, path: &str) -> (Outcome, Served) {
    let table = &routing.table;
    // The file's set first: its table read and the database's can then
    // wait on memory at the same time.
    let set = table.catalog().set_for(path);
    let location = routing.geo.lookup(ip);
    let client = Client::new(ip, &location)
        .https_only(https_only)
        .asking_for(set);
    let cell = cell_of(location.coord);
    let (base, to) = match select(table, &client) {
        Some(id) => (&table.get(id).base, To::Mirror(id)),
        None => (&routing.policy.origin, To::Origin),
    };
    let served = Served {
        to,
        client: Some(ip),
        cell,
    };
    (redirect(base, path), served)
}

/// One add, to where the request went.
#[inline]
fn count(tally: &Tally, routing: &Routing, served: Served) {
    match served.to {
        To::Mirror(id) => {
            if let Some(sent) = routing.sent.get(id) {
                sent.add(served.cell);
            }
        }
        To::Origin => tally.origin.add(served.cell),
        To::Other(o) => tally.other(o),
    }
}

/// `mirrorlist` as a key of the query (`?mirrorlist`, `?mirrorlist=1`).
fn wants_mirrorlist(query: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == "mirrorlist")
}

/// The explanation of where this request, or `&ip=`, would go.
fn mirrorlist<B>(
    req: &Request<B>,
    conn: Conn,
    routing: &Routing,
    path: &str,
    query: &str,
) -> Outcome {
    let policy = &routing.policy;
    let given = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ip="))
        .map(|v| {
            let text = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            text.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("400 Bad Request: ip={text:?} is not an IP address\n"))
        })
        .transpose();
    let given = match given {
        Ok(g) => g,
        Err(message) => return Outcome::BadQuery(message),
    };
    let (from, derivation) = client::explain(
        conn.peer.ip(),
        conn.tls,
        req.headers(),
        &policy.trusted_proxies,
    );
    let (from, derivation) = match given {
        Some(ip) => (
            client::Sender {
                ip,
                https: from.https,
            },
            None,
        ),
        None => (from, Some(derivation)),
    };
    let release_path = policy.is_release_path(path).then_some(path);
    let mut e = explain(
        &routing.table,
        &routing.geo,
        &policy.origin,
        from,
        derivation,
        release_path,
    );
    if release_path.is_none() {
        e.not_release(&policy.origin);
    }
    let json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let (body, content_type) = if json {
        (e.json(path).to_string() + "\n", JSON.clone())
    } else {
        (e.html(path), HTML.clone())
    };
    Outcome::Page {
        body: Bytes::from(body),
        content_type,
        gzip: false,
    }
}

/// `Accept-Encoding` names gzip, without `q=0`.
fn accepts_gzip<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// One line per request, when the config asks for it.
fn access_log<B>(
    req: &Request<B>,
    resp: &Response<Full<Bytes>>,
    served: Served,
    routing: &Routing,
    ns: u64,
) {
    let to: &str = match served.to {
        To::Mirror(id) => &routing.table.get(id).name,
        To::Origin => "origin_no_candidate",
        To::Other(o) => o.label(),
    };
    // Strings and numbers, not `Display` values: the access layer copies
    // them without going through `core::fmt` (benches/access-log.sh).
    let mut ip = IpText::default();
    let path = req.uri().path_and_query().map_or("", |p| p.as_str());
    tracing::info!(
        target: crate::accesslog::TARGET,
        client = ip.of(served.client),
        method = req.method().as_str(),
        path,
        status = u64::from(resp.status().as_u16()),
        to,
        us = ns / 1000,
    );
}

/// The client's address as text on the stack, `-` when none was read.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl Default for IpText {
    fn default() -> IpText {
        IpText {
            buf: [0; 45],
            len: 0,
        }
    }
}

impl IpText {
    fn of(&mut self, ip: Option<IpAddr>) -> &str {
        use std::io::Write as _;
        let mut w = &mut self.buf[..];
        let _ = match ip {
            Some(IpAddr::V4(a)) => {
                let [a, b, c, d] = a.octets();
                write_octets(&mut w, [a, b, c, d])
            }
            Some(ip) => write!(w, "{ip}"),
            None => w.write_all(b"-"),
        };
        self.len = 45 - w.len();
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("-")
    }
}

/// An IPv4 address without `core::fmt`.
fn write_octets(w: &mut &mut [u8], octets: [u8; 4]) -> std::io::Result<()> {
    use std::io::Write as _;
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b".")?;
        }
        let digits = [o / 100, o / 10 % 10, o % 10];
        let skip = if o >= 100 {
            0
        } else if o >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            w.write_all(&[b'0' + d])?;
        }
    }
    Ok(())
}

fn redirect(base: &str, path: &str) -> Outcome {
    let mut url = String::with_capacity(base.len() + path.len());
    url.push_str(base);
    url.push_str(path);
    match HeaderValue::from_maybe_shared(Bytes::from(url)) {
        Ok(location) => Outcome::Redirect { location },
        // Unreachable: bases are validated URLs and paths canonical. Refuse
        // rather than redirect somewhere unchecked.
        Err(_) => Outcome::BadPath(PathError::ControlCharacter),
    }
}

static CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, no-store");
static GZIP: HeaderValue = HeaderValue::from_static("gzip");
static VARY: HeaderValue = HeaderValue::from_static("accept-encoding");
static ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The response for an outcome; HEAD gets the same headers and no body.
pub fn respond(outcome: Outcome, head: bool) -> Response<Full<Bytes>> {
    let text = |s: &'static str| Bytes::from_static(s.as_bytes());
    let (status, body, content_type) = match &outcome {
        Outcome::Redirect { .. } => (StatusCode::FOUND, text("302 Found\n"), &TEXT),
        Outcome::Healthy => (StatusCode::OK, text("ok\n"), &TEXT),
        Outcome::BadPath(e) => (StatusCode::BAD_REQUEST, text(e.as_str()), &TEXT),
        Outcome::BadQuery(m) => (StatusCode::BAD_REQUEST, Bytes::from(m.clone()), &TEXT),
        Outcome::NotFound => (
            StatusCode::NOT_FOUND,
            text(
                "404 Not Found: the admin listener serves /metrics, /mirrors, /mirrors.json, /healthz\n",
            ),
            &TEXT,
        ),
        Outcome::Page {
            body, content_type, ..
        } => (StatusCode::OK, body.clone(), content_type),
        Outcome::TargetTooLong => (StatusCode::URI_TOO_LONG, text("414 URI Too Long\n"), &TEXT),
        Outcome::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            text("405 Method Not Allowed: use GET or HEAD\n"),
            &TEXT,
        ),
    };
    let body = if head { Bytes::new() } else { body };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type.clone());
    match outcome {
        Outcome::Redirect { location } => {
            h.insert(header::LOCATION, location);
        }
        Outcome::MethodNotAllowed => {
            h.insert(header::ALLOW, ALLOW.clone());
        }
        Outcome::Page { gzip, .. } => {
            if gzip {
                h.insert(header::CONTENT_ENCODING, GZIP.clone());
            }
            h.insert(header::VARY, VARY.clone());
        }
        _ => {}
    }
    if status != StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::CACHE_CONTROL, CACHE_CONTROL.clone());
    }
    resp
}
