//! The HTTP front-end: request to outcome to response, in one place.
//!
//! [`Frontend::decide`] turns a request into an [`Outcome`] (it reads the
//! current mirror table and GeoIP database, does no I/O and takes no lock);
//! [`respond`] turns an outcome into the response. Every status code the
//! service sends is chosen in these two functions.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::client::sender;
use crate::path::{self, PathError};
use crate::routing::{Routing, SharedRouting};
use crate::select::{Client, select};

/// What the front-end needs, shared by every connection: the published
/// routing snapshot, loaded once per request.
pub struct Frontend {
    routing: SharedRouting,
}

/// The connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Over TLS: the client is sent to `https://` mirrors only.
    pub tls: bool,
}

impl Conn {
    pub fn plain(peer: SocketAddr) -> Conn {
        Conn { peer, tls: false }
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
    MethodNotAllowed,
}

impl Frontend {
    pub fn new(routing: SharedRouting) -> Frontend {
        Frontend { routing }
    }

    /// Decides and responds.
    pub fn handle<B>(&self, req: &Request<B>, conn: Conn) -> Response<Full<Bytes>> {
        respond(self.decide(req, conn), req.method() == Method::HEAD)
    }

    pub fn decide<B>(&self, req: &Request<B>, conn: Conn) -> Outcome {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Outcome::MethodNotAllowed;
        }
        let raw = req.uri().path();
        if raw == "/healthz" {
            return Outcome::Healthy;
        }
        let path = match path::normalise(raw) {
            Ok(p) => p,
            Err(e) => return Outcome::BadPath(e),
        };
        // One load for the whole decision: a reload in between cannot mix
        // an old policy with a new table.
        let routing = self.routing.load();
        let policy = &routing.policy;
        if !policy.is_release_path(&path) {
            return redirect(&policy.origin, &path);
        }
        let from = sender(
            conn.peer.ip(),
            conn.tls,
            req.headers(),
            &policy.trusted_proxies,
        );
        redirect_for(&routing, from.ip, from.https, &path)
    }
}

/// Where `ip` goes for a path of a current release.
fn redirect_for(routing: &Routing, ip: IpAddr, https_only: bool, path: &str) -> Outcome {
    let location = routing.geo.lookup(ip);
    let client = Client::new(ip, &location).https_only(https_only);
    let table = &routing.table;
    match select(table, &client) {
        Some(id) => redirect(&table.get(id).base, path),
        None => redirect(&routing.policy.origin, path),
    }
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
static ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// The response for an outcome; HEAD gets the same headers and no body.
pub fn respond(outcome: Outcome, head: bool) -> Response<Full<Bytes>> {
    let (status, body): (StatusCode, &'static str) = match &outcome {
        Outcome::Redirect { .. } => (StatusCode::FOUND, "302 Found\n"),
        Outcome::Healthy => (StatusCode::OK, "ok\n"),
        Outcome::BadPath(e) => (StatusCode::BAD_REQUEST, e.as_str()),
        Outcome::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: use GET or HEAD\n",
        ),
    };
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, TEXT.clone());
    match outcome {
        Outcome::Redirect { location } => {
            h.insert(header::LOCATION, location);
            h.insert(header::CACHE_CONTROL, CACHE_CONTROL.clone());
        }
        Outcome::MethodNotAllowed => {
            h.insert(header::ALLOW, ALLOW.clone());
        }
        Outcome::Healthy | Outcome::BadPath(_) => {
            h.insert(header::CACHE_CONTROL, CACHE_CONTROL.clone());
        }
    }
    resp
}
