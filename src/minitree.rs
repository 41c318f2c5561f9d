//! Miniature distri trees served on loopback: the origin and mirrors of the
//! demo and of the black-box tests.
//!
//! A [`Tree`] holds the files of every release (package images, their
//! metadata, a real `meta.binaryproto`); [`MiniServer`] serves one over
//! HTTP/1.1 with `Content-Length` and `Last-Modified`, and can be switched to
//! misbehave (hang, redirect, go away and come back) while tests watch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::meta;

/// Files by path relative to the server root (`distri/<release>/pkg/...`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tree {
    files: BTreeMap<String, Bytes>,
}

impl Tree {
    /// A tree with `packages` packages in each release. Package `i` is named
    /// `pkg<i>-amd64-1.0-1`, so later packages sort last (they are the
    /// "newest", the ones an rsync in progress lacks).
    pub fn generate<S: AsRef<str>>(releases: &[S], packages: usize) -> Tree {
        let mut t = Tree::default();
        for r in releases {
            t.set_release(r.as_ref(), packages);
        }
        t
    }

    /// Replaces a release with `packages` packages in `pkg/` (fewer makes
    /// it stale).
    pub fn set_release(&mut self, release: &str, packages: usize) {
        self.remove_release(release);
        self.set_tree(release, "pkg", packages);
    }

    /// Replaces one tree (`pkg`, `debug`, `src`) of a release with
    /// `packages` packages at version `1.0-1`, each with its versioned and
    /// unversioned metadata, and the tree's index.
    pub fn set_tree(&mut self, release: &str, dir: &str, packages: usize) {
        self.remove_tree(release, dir);
        self.publish(release, dir, packages, "1.0-1");
    }

    /// A new build of the first `packages` packages of a tree, at
    /// `version`: new immutable images and metadata beside the old ones, the
    /// unversioned metadata re-pointed to them, and an index listing every
    /// image in the directory (as distri's does).
    pub fn publish(&mut self, release: &str, dir: &str, packages: usize, version: &str) {
        let dir = format!("distri/{release}/{dir}");
        for i in 0..packages {
            let n = format!("pkg{i:03}-amd64-{version}");
            let image = format!("squashfs image of {n} in {dir}\n").repeat(1 + n.len() % 7);
            self.insert(&format!("{dir}/{n}.squashfs"), image);
            let meta = format!("name: \"{n}\"\n");
            self.insert(&format!("{dir}/{n}.meta.textproto"), meta.clone());
            self.insert(&format!("{dir}/pkg{i:03}-amd64.meta.textproto"), meta);
        }
        self.reindex(&dir);
    }

    /// Writes `dir`'s `meta.binaryproto`: one entry per image in it.
    fn reindex(&mut self, dir: &str) {
        let prefix = format!("{dir}/");
        let names: Vec<&str> = self
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".squashfs"))
            .filter(|n| !n.contains('/'))
            .collect();
        let index = Bytes::from(meta::encode_names(&names));
        self.files.insert(format!("{dir}/meta.binaryproto"), index);
    }

    /// Removes one tree of a release (a mirror that leaves it out).
    pub fn remove_tree(&mut self, release: &str, dir: &str) {
        let prefix = format!("distri/{release}/{dir}/");
        self.files.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Removes one file (an rsync that has not reached it yet).
    pub fn remove(&mut self, path: &str) -> Option<Bytes> {
        self.files.remove(path)
    }

    /// Every file's path, in sort order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn remove_release(&mut self, release: &str) {
        let prefix = format!("distri/{release}/");
        self.files.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Removes the last `n` package images of a release in sort order: a
    /// mirror in the middle of an rsync that already has the new index.
    pub fn remove_newest_packages(&mut self, release: &str, n: usize) {
        let prefix = format!("distri/{release}/pkg/");
        let newest: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.starts_with(&prefix) && k.ends_with(".squashfs"))
            .rev()
            .take(n)
            .cloned()
            .collect();
        for k in newest {
            self.files.remove(&k);
        }
    }

    /// The same files under `prefix/`: many mirrors on one server, each
    /// with its own base URL.
    pub fn with_prefix(&self, prefix: &str) -> Tree {
        let files = self
            .files
            .iter()
            .map(|(k, v)| (format!("{prefix}/{k}"), v.clone()))
            .collect();
        Tree { files }
    }

    /// Adds every file of `other`.
    pub fn merge(&mut self, other: Tree) {
        self.files.extend(other.files);
    }

    pub fn insert(&mut self, path: &str, body: impl Into<Bytes>) {
        self.files.insert(path.to_string(), body.into());
    }

    pub fn get(&self, path: &str) -> Option<&Bytes> {
        self.files.get(path)
    }
}

/// What a server does with requests.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Serve this tree.
    Serve(Arc<Tree>),
    /// Accept connections and never answer.
    Hang,
    /// Answer everything with a 302 to this base URL.
    Redirect(String),
}

/// A tree served on a loopback port.
pub struct MiniServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicU64>,
    bodies: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl MiniServer {
    /// Serves `tree` on 127.0.0.1 on a free port.
    pub async fn start(tree: Tree) -> std::io::Result<MiniServer> {
        MiniServer::start_mode(Mode::Serve(Arc::new(tree))).await
    }

    pub async fn start_mode(mode: Mode) -> std::io::Result<MiniServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let mut s = MiniServer {
            addr: listener.local_addr()?,
            mode: Arc::new(Mutex::new(mode)),
            requests: Arc::new(AtomicU64::new(0)),
            bodies: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        s.task = Some(s.spawn(listener));
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`, the base URL standing for the origin's root.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Requests answered or accepted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bodies of files sent so far (GETs answered with 200).
    pub fn bodies(&self) -> u64 {
        self.bodies.load(Ordering::Relaxed)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    pub fn serve(&self, tree: Tree) {
        self.set_mode(Mode::Serve(Arc::new(tree)));
    }

    /// Closes the port and every open connection: from its return on,
    /// connections are refused.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            // The listener closes when the aborted task is dropped, which
            // this waits for; until then connections would still land.
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.task = Some(self.spawn(listener));
        Ok(())
    }

    fn spawn(&self, listener: TcpListener) -> JoinHandle<()> {
        let (mode, requests, bodies) = (
            self.mode.clone(),
            self.requests.clone(),
            self.bodies.clone(),
        );
        tokio::spawn(async move {
            // Connections live in this set, so aborting the accept task
            // closes them too.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (mode, requests, bodies) = (mode.clone(), requests.clone(), bodies.clone());
                let svc = service_fn(move |req| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let mode = mode.lock().expect("mode lock").clone();
                    answer(mode, req, bodies.clone())
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        })
    }
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Every file's modification time: fixed, as rsync keeps the origin's.
fn modified(body: &Bytes) -> SystemTime {
    let h = body
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64));
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + h % 10_000_000)
}

async fn answer(
    mode: Mode,
    req: Request<hyper::body::Incoming>,
    bodies: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let tree = match mode {
        Mode::Hang => std::future::pending().await,
        Mode::Redirect(base) => {
            let to = format!("{base}{}", req.uri().path().trim_start_matches('/'));
            return Ok(Response::builder()
                .status(StatusCode::FOUND)
                .header("location", to)
                .body(Full::new(Bytes::new()))
                .expect("valid response"));
        }
        Mode::Serve(tree) => tree,
    };
    let path = req.uri().path().trim_start_matches('/');
    let head = req.method() == Method::HEAD;
    let resp = match tree.get(path) {
        Some(body) => Response::builder()
            .header("last-modified", httpdate::fmt_http_date(modified(body)))
            .body(Full::new(if head {
                Bytes::new()
            } else {
                bodies.fetch_add(1, Ordering::Relaxed);
                body.clone()
            }))
            .map(|mut r| {
                r.headers_mut().insert("content-length", body.len().into());
                r
            }),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    Ok(resp.expect("valid response"))
}
