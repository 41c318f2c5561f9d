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
use ipnet::IpNet;

use crate::client::client_ip;
use crate::config::Config;
use crate::geoip::GeoDb;
use crate::path::{self, PathError};
use crate::select::{Client, select};
use crate::table::SharedTable;

/// What the front-end needs, shared by every connection.
pub struct Frontend {
    table: SharedTable,
    geo: Arc<GeoDb>,
    origin: Arc<str>,
    releases: Vec<String>,
    trusted_proxies: Vec<IpNet>,
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
    pub fn new(config: &Config, table: SharedTable, geo: Arc<GeoDb>) -> Frontend {
        Frontend {
            table,
            geo,
            origin: Arc::from(config.origin.as_str()),
            releases: config.releases.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// Decides and responds.
    pub fn handle<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        respond(self.decide(req, peer), req.method() == Method::HEAD)
    }

    pub fn decide<B>(&self, req: &Request<B>, peer: SocketAddr) -> Outcome {
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
        if !self.is_release_path(&path) {
            return self.redirect(&self.origin, &path);
        }
        let ip = client_ip(peer.ip(), req.headers(), &self.trusted_proxies);
        self.redirect_for(ip, &path)
    }

    /// Where `ip` goes for a path of a current release.
    fn redirect_for(&self, ip: IpAddr, path: &str) -> Outcome {
        let location = self.geo.lookup(ip);
        let client = Client::new(ip, &location);
        let table = self.table.load();
        match select(&table, &client) {
            Some(id) => self.redirect(&table.get(id).base, path),
            None => self.redirect(&self.origin, path),
        }
    }

    fn redirect(&self, base: &str, path: &str) -> Outcome {
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

    /// `distri/<release>/...` with a current release.
    fn is_release_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix("distri/") else {
            return false;
        };
        let release = rest.split_once('/').map_or(rest, |(r, _)| r);
        rest.len() > release.len() && self.releases.iter().any(|r| r == release)
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
