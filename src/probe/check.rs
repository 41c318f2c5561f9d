//! The checks of one probe round, over HTTP: the origin's fingerprints and
//! newest files, and one mirror's answer, freshness and completeness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use reqwest::{Client, Method, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::catalog::OriginTree;
use crate::meta::{self, Listing, Tree};
use crate::table::{TreeState, TreeStatus};

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
    #[error("{path}: larger than max_index_bytes ({limit} bytes)")]
    TooLarge { path: String, limit: u64 },
    #[error("request failed: {0}")]
    Other(String),
}

impl ProbeError {
    /// Failures that take a mirror down without waiting for `fall` rounds:
    /// each would break a user's install if the mirror stayed in, and none
    /// is the passing kind `fall` forgives (a reset, a 5xx, a decode
    /// error). A redirect sends clients where nobody checked (or round in
    /// a loop); an index too large, or no tree verified (a captive portal's
    /// pages), is what the mirror serves, not a hiccup.
    pub fn is_immediate(&self) -> bool {
        matches!(
            self,
            ProbeError::Refused
                | ProbeError::Timeout { .. }
                | ProbeError::Missing { .. }
                | ProbeError::Stale { .. }
                | ProbeError::Redirected { .. }
                | ProbeError::Incomplete { .. }
                | ProbeError::TooLarge { .. }
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
    client_trusting(timeout, None)
}

/// The same, trusting the certificates in the PEM file `ca` besides the
/// system's (the config checked the file; one unreadable since is logged
/// and left out).
pub fn client_trusting(timeout: Duration, ca: Option<&std::path::Path>) -> Client {
    // Several parts of a process may build clients; only the first install counts.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let extra = ca.map_or_else(Vec::new, |path| {
        std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                tracing::warn!(ca = %path.display(), cause = %e, "probe CA file left out");
                Vec::new()
            })
    });
    Client::builder()
        .tls_certs_merge(extra)
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

/// What bounds each probe request: its time, and the size of a body read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub timeout: Duration,
    pub max_body: u64,
}

impl Bounds {
    pub fn of(p: &crate::config::Probe) -> Bounds {
        Bounds {
            timeout: p.timeout,
            max_body: p.max_index_bytes,
        }
    }
}

/// The origin's state of one tree of one release, as mirrors must match it.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeIndex {
    pub release: String,
    pub tree: Tree,
    pub sha256: [u8; 32],
    validator: Validator,
    /// Newest package images first (paths), with the origin's sizes.
    pub newest: Vec<(String, u64)>,
    pub listing: Arc<Listing>,
    /// Names in order of appearance, most recent first.
    recent: Vec<String>,
}

impl TreeIndex {
    fn index_path(&self) -> String {
        self.tree.index_path(&self.release)
    }
}

/// What the origin holds now: one index per tree of each release (`pkg/`
/// always; `debug/` and `src/` where the origin has them).
#[derive(Clone, Debug, PartialEq)]
pub struct OriginSnapshot {
    pub trees: Vec<TreeIndex>,
}

impl OriginSnapshot {
    fn tree(&self, release: &str, tree: Tree) -> Option<&TreeIndex> {
        self.trees
            .iter()
            .find(|t| t.release == release && t.tree == tree)
    }

    /// The trees and their listings, as the catalog takes them.
    pub fn origin_trees(&self) -> Vec<OriginTree> {
        self.trees
            .iter()
            .map(|t| OriginTree {
                release: Arc::from(t.release.as_str()),
                tree: t.tree,
                listing: t.listing.clone(),
            })
            .collect()
    }
}

/// Decoded indexes by hash, shared by every probe: mirrors at the same sync
/// point (and the origin) hold one copy. Entries go when no one holds them.
#[derive(Default)]
pub struct Interner {
    listings: Mutex<HashMap<[u8; 32], Weak<Listing>>>,
}

impl Interner {
    fn get(&self, sha256: &[u8; 32]) -> Option<Arc<Listing>> {
        let map = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        map.get(sha256).and_then(Weak::upgrade)
    }

    /// The listing of `body` (hashed as `sha256`), decoded once.
    fn intern(
        &self,
        sha256: [u8; 32],
        body: &[u8],
        path: &str,
    ) -> Result<Arc<Listing>, ProbeError> {
        if let Some(l) = self.get(&sha256) {
            return Ok(l);
        }
        let names = meta::decode_names(body).map_err(|e| ProbeError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        let listing = Arc::new(Listing::new(sha256, names));
        let mut map = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(sha256, Arc::downgrade(&listing));
        Ok(listing)
    }
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

/// A body of at most `bounds.max_body` bytes: a larger one is refused by
/// its announced length, or as soon as it grows past it, so that a server
/// sending gigabytes costs the prober no more than the bound.
async fn fetch_body(
    http: &Client,
    base: &str,
    path: &str,
    bounds: Bounds,
) -> Result<(Validator, bytes::Bytes), ProbeError> {
    let mut r = send(http, Method::GET, base, path, bounds.timeout).await?;
    expect_ok(&r, path)?;
    let v = Validator::of(&r);
    let too_large = || ProbeError::TooLarge {
        path: path.to_string(),
        limit: bounds.max_body,
    };
    if r.content_length().is_some_and(|n| n > bounds.max_body) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| ProbeError::from_reqwest(e, bounds.timeout))?
    {
        if (body.len() + chunk.len()) as u64 > bounds.max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((v, body.freeze()))
}

/// Sizes of the origin's package images, by path: they never change.
#[derive(Default)]
pub struct OriginCache {
    sizes: HashMap<String, u64>,
}

/// How many of the newest entries a tree's sample is drawn from.
fn pool_size(sample: usize) -> usize {
    (sample * 4).max(8)
}

/// Fetches the origin's index of every tree of every release, reusing
/// `prev` where an index is unchanged. A release without `pkg/` is an
/// error; `debug/` and `src/` are optional.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_origin(
    http: &Client,
    origin: &str,
    releases: &[String],
    sample: usize,
    bounds: Bounds,
    prev: Option<&OriginSnapshot>,
    cache: &mut OriginCache,
    interner: &Interner,
) -> Result<OriginSnapshot, ProbeError> {
    let mut out = Vec::with_capacity(releases.len() * Tree::ALL.len());
    for release in releases {
        for tree in Tree::ALL {
            let old = prev.and_then(|p| p.tree(release, tree));
            let at = Place {
                http,
                base: origin,
                bounds,
            };
            match fetch_tree(&at, release, tree, sample, old, cache, interner).await? {
                Some(t) => out.push(t),
                None if tree == Tree::Pkg => {
                    return Err(ProbeError::Missing {
                        path: format!("{release}/pkg/meta.binaryproto"),
                        code: 404,
                    });
                }
                None => {}
            }
        }
    }
    Ok(OriginSnapshot { trees: out })
}

/// Where requests of a check go.
struct Place<'a> {
    http: &'a Client,
    base: &'a str,
    bounds: Bounds,
}

impl Place<'_> {
    async fn head(&self, path: &str) -> Result<Response, ProbeError> {
        send(
            self.http,
            Method::HEAD,
            self.base,
            path,
            self.bounds.timeout,
        )
        .await
    }

    async fn body(&self, path: &str) -> Result<(Validator, bytes::Bytes), ProbeError> {
        fetch_body(self.http, self.base, path, self.bounds).await
    }
}

/// One tree's index on the origin; `None` when the origin has no such tree.
#[allow(clippy::too_many_arguments)]
async fn fetch_tree(
    at: &Place<'_>,
    release: &str,
    tree: Tree,
    sample: usize,
    old: Option<&TreeIndex>,
    cache: &mut OriginCache,
    interner: &Interner,
) -> Result<Option<TreeIndex>, ProbeError> {
    let path = tree.index_path(release);
    let head = at.head(&path).await?;
    if matches!(head.status(), StatusCode::NOT_FOUND | StatusCode::GONE) {
        return Ok(None);
    }
    expect_ok(&head, &path)?;
    let v = Validator::of(&head);
    if let Some(old) = old.filter(|o| v.is_usable() && o.validator == v) {
        return Ok(Some(old.clone()));
    }
    let (validator, body) = at.body(&path).await?;
    let sha256: [u8; 32] = Sha256::digest(&body).into();
    let listing = interner.intern(sha256, &body, &path)?;
    let recent = recent_first(&listing, old);
    let dir = format!("distri/{release}/{tree}");
    let newest = newest_with_sizes(at, &dir, &recent, &listing, pool_size(sample), cache).await?;
    Ok(Some(TreeIndex {
        release: release.to_string(),
        tree,
        sha256,
        validator,
        newest,
        listing,
        recent,
    }))
}

/// Names that appeared since the previous index, most recent first, then
/// those carried over from before; bounded so it stays small.
fn recent_first(now: &Listing, old: Option<&TreeIndex>) -> Vec<String> {
    let Some(old) = old else { return Vec::new() };
    let mut recent: Vec<String> = now
        .names()
        .iter()
        .filter(|n| !old.listing.contains(n))
        .map(|n| n.to_string())
        .collect();
    recent.extend(old.recent.iter().filter(|n| now.contains(n)).cloned());
    recent.truncate(64);
    recent
}

/// The newest `k` images: recent arrivals, then the last in sort order (an
/// rsync fills a directory in sorted order, so those arrive last), each with
/// its size on the origin.
async fn newest_with_sizes(
    at: &Place<'_>,
    dir: &str,
    recent: &[String],
    listing: &Listing,
    k: usize,
    cache: &mut OriginCache,
) -> Result<Vec<(String, u64)>, ProbeError> {
    let sorted = listing.names().iter().rev().map(|n| &**n);
    let picked = first_distinct(recent.iter().map(String::as_str).chain(sorted), k);
    let mut out = Vec::with_capacity(picked.len());
    for n in picked {
        let path = format!("{dir}/{n}.squashfs");
        let size = match cache.sizes.get(&path) {
            Some(&s) => s,
            None => {
                let r = at.head(&path).await?;
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

/// The first `k` distinct items.
fn first_distinct<'a>(items: impl Iterator<Item = &'a str>, k: usize) -> Vec<&'a str> {
    let mut picked: Vec<&str> = Vec::with_capacity(k);
    for n in items {
        if picked.len() == k {
            break;
        }
        if !picked.contains(&n) {
            picked.push(n);
        }
    }
    picked
}

/// What one mirror's round found for one release.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseReport {
    pub release: String,
    /// `Some(true)`: every tree of it is fresh; `None`: not checked.
    pub fresh: Option<bool>,
}

/// One mirror's round.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Time to the first response's headers.
    pub latency: Option<Duration>,
    pub releases: Vec<ReleaseReport>,
    /// Each tree of the origin's, when the round reached them all.
    pub trees: Option<Vec<TreeStatus>>,
    /// Whether the mirror answered as a mirror must (its content is judged
    /// per tree, in `trees`).
    pub result: Result<Duration, ProbeError>,
}

/// What one mirror's indexes were last time: hashes with their validators
/// (an unchanged index is not downloaded again), and each tree's last index
/// verified complete (it still counts while a newer one is mid-sync).
#[derive(Default)]
pub struct MirrorCache {
    hashes: HashMap<String, (Validator, [u8; 32])>,
    verified: HashMap<String, Arc<Listing>>,
}

/// Checks one mirror against the origin, tree by tree: it answers, and for
/// each tree whether its index is the origin's, older, or missing, and
/// whether a sample of the newest images its index lists is there with the
/// right size. Stops at the first error that says the mirror cannot serve
/// at all (unreachable, redirecting, failing); what a tree holds or lacks
/// is reported per tree.
pub async fn check_mirror(
    http: &Client,
    base: &str,
    origin: &OriginSnapshot,
    sample: &mut impl FnMut(usize) -> Vec<usize>,
    bounds: Bounds,
    cache: &mut MirrorCache,
    interner: &Interner,
) -> Report {
    let at = Place { http, base, bounds };
    let mut latency = None;
    let mut trees = Vec::with_capacity(origin.trees.len());
    let mut result = Ok(());
    for idx in &origin.trees {
        match check_tree(&at, idx, sample, cache, interner, &mut latency).await {
            Ok(t) => trees.push(t),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let complete = result.is_ok();
    if complete && trees.iter().all(|t| t.verified.is_none()) {
        // Answering, but with nothing it may be sent for: out, as a whole.
        result = Err(match trees.first() {
            Some(t) => ProbeError::Incomplete {
                path: format!("{}/{}", t.release, t.tree),
                detail: format!("no tree verified ({})", t.detail),
            },
            None => ProbeError::Other("the origin has no trees".into()),
        });
    }
    let mut releases: Vec<ReleaseReport> = Vec::new();
    for idx in &origin.trees {
        let fresh = trees
            .iter()
            .find(|t| *t.release == *idx.release && t.tree == idx.tree)
            .map(|t| t.state == TreeState::Fresh);
        match releases.iter_mut().find(|r| r.release == idx.release) {
            Some(r) => r.fresh = r.fresh.zip(fresh).map(|(a, b)| a && b),
            None => releases.push(ReleaseReport {
                release: idx.release.clone(),
                fresh,
            }),
        }
    }
    Report {
        latency,
        releases,
        trees: complete.then_some(trees),
        result: result.map(|()| latency.unwrap_or_default()),
    }
}

/// One tree of one mirror. `Err` only for what says the mirror as a whole
/// cannot serve.
async fn check_tree(
    at: &Place<'_>,
    idx: &TreeIndex,
    sample: &mut impl FnMut(usize) -> Vec<usize>,
    cache: &mut MirrorCache,
    interner: &Interner,
    latency: &mut Option<Duration>,
) -> Result<TreeStatus, ProbeError> {
    let path = idx.index_path();
    let short = path.trim_start_matches("distri/");
    let status = |state, detail: String, verified| TreeStatus {
        release: Arc::from(idx.release.as_str()),
        tree: idx.tree,
        state,
        detail: Arc::from(detail),
        verified,
    };
    let started = Instant::now();
    let head = at.head(&path).await?;
    latency.get_or_insert(started.elapsed());
    if let Err(ProbeError::Missing { code, .. }) = expect_ok(&head, &path) {
        cache.verified.remove(&path);
        cache.hashes.remove(&path);
        let detail = format!("missing: {short}: {code}");
        return Ok(status(TreeState::Missing, detail, None));
    }
    expect_ok(&head, &path)?;
    let v = Validator::of(&head);
    let (hash, body) = match cache.hashes.get(&path) {
        Some((cached, hash)) if v.is_usable() && *cached == v => (*hash, None),
        _ => {
            let (v, body) = at.body(&path).await?;
            let hash: [u8; 32] = Sha256::digest(&body).into();
            cache.hashes.insert(path.clone(), (v, hash));
            (hash, Some(body))
        }
    };
    let previous = cache.verified.get(&path).cloned();
    // An index verified complete before and unchanged since needs one
    // image, at random, to notice files that vanish; a new index gets the
    // whole newest-biased sample. Most rounds are the first kind.
    let settled = body.is_none() && previous.as_ref().is_some_and(|p| p.sha256 == hash);
    let fresh = hash == idx.sha256;
    let listing = if fresh {
        idx.listing.clone()
    } else {
        match known_listing(at, &path, hash, body, interner).await? {
            Ok(l) => l,
            Err(e) => {
                // An index that cannot be read (a truncated copy, or a
                // captive portal's page): the previous one holds only while
                // a sample of its images still checks out, by status and
                // by the origin's sizes; a portal answers 200 for those too.
                let mut detail = e.to_string();
                let previous = match previous {
                    Some(p) => {
                        let pool = behind_pool(idx, &p, None);
                        match first_gap(at, &pool, &sample(pool.len())).await? {
                            None => Some(p),
                            Some(gap) => {
                                cache.verified.remove(&path);
                                detail = format!("{detail}; its previous index: {gap}");
                                None
                            }
                        }
                    }
                    None => None,
                };
                return Ok(status(TreeState::Unverified, detail, previous));
            }
        }
    };
    let pool: Vec<(String, Option<u64>)> = if fresh {
        idx.newest
            .iter()
            .map(|(p, s)| (p.clone(), Some(*s)))
            .collect()
    } else {
        behind_pool(idx, &listing, previous.as_deref())
    };
    let picked = if settled && !pool.is_empty() {
        vec![rand::random_range(0..pool.len())]
    } else {
        sample(pool.len())
    };
    if let Some(gap) = first_gap(at, &pool, &picked).await? {
        // A new index whose files are still arriving: the previous one
        // still holds. The same index, now with files gone: nothing does.
        let previous = previous.filter(|p| p.sha256 != hash);
        if previous.is_none() {
            cache.verified.remove(&path);
        }
        let detail = match &previous {
            Some(p) => format!(
                "{gap}; serving what its previous index {} lists",
                p.short_id()
            ),
            None => format!("{gap}; no index of this tree verified complete"),
        };
        return Ok(status(TreeState::MidSync, detail, previous));
    }
    cache.verified.insert(path.clone(), listing.clone());
    if fresh {
        return Ok(status(TreeState::Fresh, "fresh".into(), Some(listing)));
    }
    let lacking = idx
        .listing
        .names()
        .iter()
        .filter(|n| !listing.contains(n))
        .count();
    let detail = format!(
        "stale: {short} differs from origin; serving the {} images its index {} lists ({lacking} of the origin's not yet)",
        listing.len(),
        listing.short_id()
    );
    Ok(status(TreeState::Behind, detail, Some(listing)))
}

/// The listing of an index hashed `hash`: interned, or decoded from `body`
/// (fetched again if the validator cache skipped it). The inner `Err` is a
/// tree that cannot be read; the outer one a mirror that cannot serve.
async fn known_listing(
    at: &Place<'_>,
    path: &str,
    hash: [u8; 32],
    body: Option<bytes::Bytes>,
    interner: &Interner,
) -> Result<Result<Arc<Listing>, ProbeError>, ProbeError> {
    if let Some(l) = interner.get(&hash) {
        return Ok(Ok(l));
    }
    let (hash, body) = match body {
        Some(b) => (hash, b),
        // Fetched again: hashed again, as it may have changed since.
        None => {
            let b = at.body(path).await?.1;
            (Sha256::digest(&b).into(), b)
        }
    };
    Ok(interner.intern(hash, &body, path))
}

/// How many of a lagging index's newest images its sample is drawn from.
const BEHIND_POOL: usize = 32;

/// What to sample of an index other than the origin's, newest first: what
/// it lists that its previous verified index did not (what a sync just
/// added), then the last in sort order. Sizes where the origin's are known.
fn behind_pool(
    idx: &TreeIndex,
    listing: &Listing,
    previous: Option<&Listing>,
) -> Vec<(String, Option<u64>)> {
    let names = listing.names();
    let added = names
        .iter()
        .rev()
        .filter(|n| previous.is_some_and(|p| !p.contains(n)));
    let picked = first_distinct(added.chain(names.iter().rev()).map(|n| &**n), BEHIND_POOL);
    let dir = format!("distri/{}/{}", idx.release, idx.tree);
    picked
        .into_iter()
        .map(|n| {
            let path = format!("{dir}/{n}.squashfs");
            let size = idx.newest.iter().find(|(p, _)| *p == path).map(|(_, s)| *s);
            (path, size)
        })
        .collect()
}

/// The first sampled image that is missing or of the wrong size, as a
/// reason; `Err` when the mirror fails in a way that is not about content.
async fn first_gap(
    at: &Place<'_>,
    pool: &[(String, Option<u64>)],
    picked: &[usize],
) -> Result<Option<ProbeError>, ProbeError> {
    for &i in picked {
        let Some((file, size)) = pool.get(i) else {
            continue;
        };
        let r = at.head(file).await?;
        if let Err(e) = expect_ok(&r, file) {
            return match e {
                ProbeError::Missing { .. } => Ok(Some(e)),
                e => Err(e),
            };
        }
        let len = Validator::of(&r).len;
        match (size, len) {
            (Some(want), Some(got)) if got != *want => {}
            (Some(_), None) => {}
            _ => continue,
        }
        return Ok(Some(ProbeError::Incomplete {
            path: file.trim_start_matches("distri/").to_string(),
            detail: format!(
                "size {}, origin has {}",
                len.map_or("unknown".into(), |g| g.to_string()),
                size.unwrap_or_default()
            ),
        }));
    }
    Ok(None)
}
