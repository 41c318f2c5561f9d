//! The checks of one probe round, over HTTP: the origin's fingerprints and
//! newest files, and one mirror's answer, freshness and completeness.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::meta;

/// Why a round failed. The `Display` text is the reason operators see.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("timeout after {after:?}")]
    Timeout { after: Duration },
    #[error("connection refused")]
    Refused,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("redirected to {to}")]
    Redirected { to: String },
    #[error("incomplete: {path}: {code}")]
    Missing { path: String, code: u16 },
    #[error("incomplete: {path}: {detail}")]
    Incomplete { path: String, detail: String },
    #[error("stale: {path} differs from origin")]
    Stale { path: String },
    #[error("http {code} for {path}")]
    Status { path: String, code: u16 },
    #[error("slow: average latency {average:?} over {limit:?}")]
    Slow { average: Duration, limit: Duration },
    #[error("{path}: cannot decode: {detail}")]
    Decode { path: String, detail: String },
    #[error("request failed: {0}")]
    Other(String),
}

impl ProbeError {
    /// Failures that take a mirror down without waiting for `fall` rounds:
    /// each would break a user's install if the mirror stayed in.
    pub fn is_immediate(&self) -> bool {
        matches!(
            self,
            ProbeError::Refused
                | ProbeError::Timeout { .. }
                | ProbeError::Missing { .. }
                | ProbeError::Stale { .. }
        )
    }

    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> ProbeError {
        if e.is_timeout() {
            return ProbeError::Timeout { after: timeout };
        }
        let refused = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|s| {
                s.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            });
        if refused {
            ProbeError::Refused
        } else if e.is_connect() {
            ProbeError::Connect(chain(&e))
        } else {
            ProbeError::Other(chain(&e))
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The probe's HTTP client: no redirects followed (a mirror must serve the
/// files itself), no proxies, every request bounded by `timeout`.
pub fn client(timeout: Duration) -> Client {
    // Several parts of a process may build clients; only the first install counts.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .user_agent(concat!(
            "distri-redirector/",
            env!("CARGO_PKG_VERSION"),
            " (mirror probe)"
        ))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .expect("a client with these settings always builds")
}

/// The origin's state of one release, as mirrors must match it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseIndex {
    pub release: String,
    pub sha256: [u8; 32],
    validator: Validator,
    /// Newest package images first, with the origin's sizes.
    pub newest: Vec<(String, u64)>,
    names: Arc<HashSet<String>>,
    /// Names in order of appearance, most recent first.
    recent: Vec<String>,
}

/// What the origin holds now: one index per release.
#[derive(Clone, Debug, PartialEq)]
pub struct OriginSnapshot {
    pub releases: Vec<ReleaseIndex>,
}

/// `Content-Length` and `Last-Modified`: when both are unchanged, the body
/// is taken as unchanged and not fetched again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Validator {
    len: Option<u64>,
    modified: Option<String>,
}

impl Validator {
    fn of(r: &Response) -> Validator {
        Validator {
            len: r
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            modified: r
                .headers()
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        }
    }

    /// Only a validator with both parts can vouch for a body.
    fn is_usable(&self) -> bool {
        self.len.is_some() && self.modified.is_some()
    }
}

fn index_path(release: &str) -> String {
    format!("distri/{release}/pkg/meta.binaryproto")
}

/// Probe HTTP requests sent by this process (to the origin and mirrors),
/// for metrics: one counter for the process, as every prober shares the
/// network it measures.
pub static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends one request; a redirect is an error, other statuses are returned.
async fn send(
    http: &Client,
    method: Method,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, ProbeError> {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = http
        .request(method, format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| ProbeError::from_reqwest(e, timeout))?;
    if r.status().is_redirection() {
        let to = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        return Err(ProbeError::Redirected { to: to.to_string() });
    }
    Ok(r)
}

fn expect_ok(r: &Response, path: &str) -> Result<(), ProbeError> {
    match r.status() {
        s if s.is_success() => Ok(()),
        s @ (StatusCode::NOT_FOUND | StatusCode::GONE) => Err(ProbeError::Missing {
            path: path.trim_start_matches("distri/").to_string(),
            code: s.as_u16(),
        }),
        s => Err(ProbeError::Status {
            path: path.to_string(),
            code: s.as_u16(),
        }),
    }
}

async fn fetch_body(
    http: &Client,
    base: &str,
    path: &str,
    timeout: Duration,
) -> Result<(Validator, bytes::Bytes), ProbeError> {
    let r = send(http, Method::GET, base, path, timeout).await?;
    expect_ok(&r, path)?;
    let v = Validator::of(&r);
    let body = r
        .bytes()
        .await
        .map_err(|e| ProbeError::from_reqwest(e, timeout))?;
    Ok((v, body))
}

/// Sizes of the origin's package images, by path: they never change.
#[derive(Default)]
pub struct OriginCache {
    sizes: HashMap<String, u64>,
}

/// How many of the newest entries the origin keeps sizes for.
fn pool_size(sample: usize) -> usize {
    (sample * 4).max(8)
}

/// Fetches the origin's index of every release, reusing `prev` where the
/// index is unchanged.
pub async fn fetch_origin(
    http: &Client,
    origin: &str,
    releases: &[String],
    sample: usize,
    timeout: Duration,
    prev: Option<&OriginSnapshot>,
    cache: &mut OriginCache,
) -> Result<OriginSnapshot, ProbeError> {
    let mut out = Vec::with_capacity(releases.len());
    for release in releases {
        let old = prev.and_then(|p| p.releases.iter().find(|r| &r.release == release));
        out.push(fetch_release(http, origin, release, sample, timeout, old, cache).await?);
    }
    Ok(OriginSnapshot { releases: out })
}

async fn fetch_release(
    http: &Client,
    origin: &str,
    release: &str,
    sample: usize,
    timeout: Duration,
    old: Option<&ReleaseIndex>,
    cache: &mut OriginCache,
) -> Result<ReleaseIndex, ProbeError> {
    let path = index_path(release);
    let head = send(http, Method::HEAD, origin, &path, timeout).await?;
    expect_ok(&head, &path)?;
    let v = Validator::of(&head);
    if let Some(old) = old.filter(|o| v.is_usable() && o.validator == v) {
        return Ok(old.clone());
    }
    let (validator, body) = fetch_body(http, origin, &path, timeout).await?;
    let names = meta::decode_names(&body).map_err(|e| ProbeError::Decode {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let recent = recent_first(&names, old);
    let newest = newest_with_sizes(
        http,
        origin,
        release,
        &recent,
        &names,
        pool_size(sample),
        timeout,
        cache,
    )
    .await?;
    Ok(ReleaseIndex {
        release: release.to_string(),
        sha256: Sha256::digest(&body).into(),
        validator,
        newest,
        names: Arc::new(names.iter().cloned().collect()),
        recent,
    })
}

/// Names that appeared since the previous index, most recent first, then
/// those carried over from before; bounded so it stays small.
fn recent_first(names: &[String], old: Option<&ReleaseIndex>) -> Vec<String> {
    let Some(old) = old else { return Vec::new() };
    let now: HashSet<&String> = names.iter().collect();
    let mut recent: Vec<String> = names
        .iter()
        .filter(|n| !old.names.contains(*n))
        .cloned()
        .collect();
    recent.extend(old.recent.iter().filter(|n| now.contains(n)).cloned());
    recent.truncate(64);
    recent
}

/// The newest `k` images: recent arrivals, then the last in sort order (an
/// rsync fills a directory in sorted order, so those arrive last), each with
/// its size on the origin.
#[allow(clippy::too_many_arguments)]
async fn newest_with_sizes(
    http: &Client,
    origin: &str,
    release: &str,
    recent: &[String],
    names: &[String],
    k: usize,
    timeout: Duration,
    cache: &mut OriginCache,
) -> Result<Vec<(String, u64)>, ProbeError> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let mut picked: Vec<&String> = Vec::with_capacity(k);
    for n in recent.iter().chain(sorted.into_iter().rev()) {
        if picked.len() == k {
            break;
        }
        if !picked.contains(&n) {
            picked.push(n);
        }
    }
    let mut out = Vec::with_capacity(picked.len());
    for n in picked {
        let path = format!("distri/{release}/pkg/{n}.squashfs");
        let size = match cache.sizes.get(&path) {
            Some(&s) => s,
            None => {
                let r = send(http, Method::HEAD, origin, &path, timeout).await?;
                expect_ok(&r, &path)?;
                let s = Validator::of(&r)
                    .len
                    .ok_or_else(|| ProbeError::Incomplete {
                        path: path.clone(),
                        detail: "origin sends no Content-Length".into(),
                    })?;
                cache.sizes.insert(path.clone(), s);
                s
            }
        };
        out.push((path, size));
    }
    Ok(out)
}

/// What one mirror's round found for one release.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseReport {
    pub release: String,
    /// `Some(true)`: the index matches the origin's; `None`: not checked.
    pub fresh: Option<bool>,
}

/// One mirror's round.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Time to the first response's headers.
    pub latency: Option<Duration>,
    pub releases: Vec<ReleaseReport>,
    pub result: Result<Duration, ProbeError>,
}

/// Hashes of each release's index as last fetched from one mirror, kept
/// with their validators so an unchanged index is not downloaded again.
#[derive(Default)]
pub struct MirrorCache {
    hashes: HashMap<String, (Validator, [u8; 32])>,
}

/// Checks one mirror against the origin: it answers, each release's index
/// matches, and a sample of the newest images is there with the right size.
/// Checks stop at the first error that says the mirror cannot be reached;
/// content errors of one release do not stop the others being reported.
pub async fn check_mirror(
    http: &Client,
    base: &str,
    origin: &OriginSnapshot,
    sample: &mut impl FnMut(&[(String, u64)]) -> Vec<usize>,
    timeout: Duration,
    cache: &mut MirrorCache,
) -> Report {
    let mut report = Report {
        latency: None,
        releases: Vec::new(),
        result: Ok(Duration::ZERO),
    };
    let mut first_error = None;
    for idx in &origin.releases {
        let mut fresh = None;
        let r = check_release(
            http,
            base,
            idx,
            sample,
            timeout,
            cache,
            &mut report.latency,
            &mut fresh,
        )
        .await;
        report.releases.push(ReleaseReport {
            release: idx.release.clone(),
            fresh,
        });
        if let Err(e) = r {
            let unreachable = !matches!(
                e,
                ProbeError::Missing { .. }
                    | ProbeError::Incomplete { .. }
                    | ProbeError::Stale { .. }
            );
            first_error.get_or_insert(e);
            if unreachable {
                break;
            }
        }
    }
    report.result = match first_error {
        Some(e) => Err(e),
        None => Ok(report.latency.unwrap_or_default()),
    };
    report
}

#[allow(clippy::too_many_arguments)]
async fn check_release(
    http: &Client,
    base: &str,
    idx: &ReleaseIndex,
    sample: &mut impl FnMut(&[(String, u64)]) -> Vec<usize>,
    timeout: Duration,
    cache: &mut MirrorCache,
    latency: &mut Option<Duration>,
    fresh: &mut Option<bool>,
) -> Result<(), ProbeError> {
    let path = index_path(&idx.release);
    let started = Instant::now();
    let head = send(http, Method::HEAD, base, &path, timeout).await?;
    latency.get_or_insert(started.elapsed());
    expect_ok(&head, &path)?;
    let v = Validator::of(&head);
    let hash = match cache.hashes.get(&idx.release) {
        Some((cached, hash)) if v.is_usable() && *cached == v => *hash,
        _ => {
            let (v, body) = fetch_body(http, base, &path, timeout).await?;
            let hash: [u8; 32] = Sha256::digest(&body).into();
            cache.hashes.insert(idx.release.clone(), (v, hash));
            hash
        }
    };
    *fresh = Some(hash == idx.sha256);
    if hash != idx.sha256 {
        return Err(ProbeError::Stale {
            path: path.trim_start_matches("distri/").to_string(),
        });
    }
    for i in sample(&idx.newest) {
        let Some((file, size)) = idx.newest.get(i) else {
            continue;
        };
        let r = send(http, Method::HEAD, base, file, timeout).await?;
        expect_ok(&r, file)?;
        match Validator::of(&r).len {
            Some(len) if len == *size => {}
            got => {
                return Err(ProbeError::Incomplete {
                    path: file.trim_start_matches("distri/").to_string(),
                    detail: format!(
                        "size {}, origin has {size}",
                        got.map_or("unknown".into(), |g| g.to_string())
                    ),
                });
            }
        }
    }
    Ok(())
}
