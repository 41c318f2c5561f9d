//! Prober faults, black-box: a mirror that serves its tree well until it
//! turns faulty in one of the ways mirrors fail (a trickled index, an index
//! of gigabytes, a captive portal, a reset mid-body, a redirect loop, a
//! certificate for another name), a mirror whose host does not resolve,
//! and an origin that answers garbage. In every case the reason says what
//! happened, no client request fails, and once the mirror is out no
//! redirect goes to it. Loopback only; each test bounded in time.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distri_redirector::minitree::Tree;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const SETTLE: Duration = Duration::from_secs(10);
/// The test config's probe interval and timeout (see `Options::default`).
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Room for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(600);

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Fault {
    None,
    /// The index one byte a second.
    Trickle,
    /// An index announced as 2 GB, sent as fast as it is read.
    Huge,
    /// An index of no announced length that never ends (chunked).
    Endless,
    /// Every path: 200 with an HTML login page.
    Portal,
    /// The index cut by a TCP reset halfway.
    Reset,
    /// Every path: 302 to itself.
    RedirectLoop,
}

/// A mirror over raw TCP (or TLS), serving `tree` until told to fail.
struct FaultServer {
    addr: SocketAddr,
    fault: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultServer {
    async fn start(tree: Tree, tls: Option<TlsAcceptor>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let (tree, f) = (Arc::new(tree), fault.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tree, f, tls) = (tree.clone(), f.clone(), tls.clone());
                tokio::spawn(async move {
                    let fault = fault_of(f.load(Ordering::SeqCst));
                    match tls {
                        None => serve(tcp, &tree, fault, addr).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, &tree, fault, addr).await;
                            }
                        }
                    }
                });
            }
        });
        FaultServer { addr, fault, task }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/", self.addr)
    }

    fn fail(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fault_of(n: u8) -> Fault {
    [
        Fault::None,
        Fault::Trickle,
        Fault::Huge,
        Fault::Endless,
        Fault::Portal,
        Fault::Reset,
        Fault::RedirectLoop,
    ][n as usize]
}

/// Answers one request on `s`, as `fault` says, and closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    mut s: S,
    tree: &Tree,
    fault: Fault,
    at: SocketAddr,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 65536 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let get = method == "GET";
    let path = path.trim_start_matches('/');
    let index = path.ends_with("meta.binaryproto");
    let ok = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match fault {
        Fault::Portal => {
            let page = b"<html><body>Please log in to use this network.</body></html>";
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", page.len()).as_bytes())
                .await;
            if get {
                let _ = s.write_all(page).await;
            }
        }
        Fault::RedirectLoop => {
            let _ = s
                .write_all(format!("HTTP/1.1 302 Found\r\nLocation: http://{at}/{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        }
        Fault::Huge if index => {
            let _ = s.write_all(ok(2 << 30).as_bytes()).await;
            let zeros = vec![0u8; 65536];
            while get && s.write_all(&zeros).await.is_ok() {}
        }
        Fault::Endless if index => {
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await;
            let chunk = [b"10000\r\n".as_slice(), &[0u8; 65536], b"\r\n"].concat();
            while get && s.write_all(&chunk).await.is_ok() {}
        }
        Fault::Trickle | Fault::Reset if index && get => {
            let body = tree.get(path).cloned().unwrap_or_default();
            let _ = s.write_all(ok(body.len()).as_bytes()).await;
            if fault == Fault::Reset {
                let _ = s.write_all(&body[..body.len() / 2]).await;
                let _ = s.flush().await;
                // Dropping the task's stream with linger 0 sends a reset:
                // done by the caller's socket options below.
                return reset(s);
            }
            for b in body.iter() {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        _ => {
            match tree.get(path) {
                Some(body) => {
                    let _ = s.write_all(ok(body.len()).as_bytes()).await;
                    if get {
                        let _ = s.write_all(body).await;
                    }
                }
                None => {
                    let _ = s
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                }
            }
        }
    }
    let _ = s.shutdown().await;
}

/// Closes with a reset where the stream is plain TCP.
fn reset<S: 'static>(s: S) {
    let any: Box<dyn std::any::Any> = Box::new(s);
    if let Ok(tcp) = any.downcast::<tokio::net::TcpStream>() {
        let _ = tcp.set_zero_linger();
    }
}

/// A fixture with the good mirror "ok" and the fault server as "bad",
/// nearer to the clients (6.0.x.x, near Frankfurt).
async fn fixture(bad_url: String, opts: Options) -> Fixture {
    Fixture::start_beside(
        vec![spec("ok", 50.0, 8.0)],
        vec![origin_tree()],
        vec![(spec("bad", 50.2, 8.2), bad_url)],
        opts,
    )
    .await
}

/// Requests from many networks while `during` runs: every one a 302 under
/// a configured base; how many went to "bad".
async fn traffic_while<F: std::future::Future>(f: &Fixture, during: F) -> (F::Output, u32) {
    let to_bad = Arc::new(Mutex::new(0u32));
    let requests = async {
        let mut n = 0u32;
        loop {
            let a = f.get_as(&format!("6.0.{}.1", n % 256), PKG).await;
            assert_eq!(a.status, 302, "{a:?}");
            if f.name_of(a.location()) == "bad" {
                *to_bad.lock().unwrap() += 1;
            }
            n += 1;
        }
    };
    let out = tokio::select! {
        out = during => out,
        () = requests => unreachable!(),
    };
    let bad = *to_bad.lock().unwrap();
    (out, bad)
}

const PKG: &str = "/distri/jackherer/pkg/pkg003-amd64-1.0-1.squashfs";

/// Turns "bad" faulty once both are in; it must be out within `within`
/// with a reason containing `says`, while requests flow, and get no
/// redirect after.
async fn goes_out(f: &Fixture, server: &FaultServer, fault: Fault, within: Duration, says: &str) {
    f.wait_eligible(&["ok", "bad"], SETTLE).await;
    server.fail(fault);
    let (took, _) = traffic_while(f, f.wait_eligible(&["ok"], SETTLE)).await;
    assert!(
        took <= within,
        "{fault:?}: out after {took:?}, bound {within:?}"
    );
    let reason = f.reason("bad");
    assert!(
        reason.contains(says),
        "{fault:?}: reason {reason:?} lacks {says:?}"
    );
    for i in 0..64 {
        assert_eq!(f.where_to(&format!("6.0.{i}.1")).await, "ok", "{fault:?}");
    }
}

/// Two failed rounds (fall = 2) of at most a timeout each, a round apart:
/// for a failure that may pass (a reset).
const TWO_ROUNDS: Duration = Duration::from_millis(2 * (300 + 500) + 600);
/// One round: for a failure that takes a mirror out at once.
const ONE_ROUND: Duration = Duration::from_millis(300 + 500 + 600);

async fn a_faulty_mirror(fault: Fault, within: Duration, says: &str) {
    let server = FaultServer::start(origin_tree(), None).await;
    let f = fixture(server.url("http"), Options::default()).await;
    goes_out(&f, &server, fault, within, says).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_index_times_out() {
    a_faulty_mirror(Fault::Trickle, TIMEOUT + INTERVAL + SLACK, "timeout after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_announced_as_2_gb_is_not_read() {
    a_faulty_mirror(Fault::Huge, ONE_ROUND, "larger than max_index_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_index_is_read_only_to_the_bound() {
    a_faulty_mirror(Fault::Endless, ONE_ROUND, "larger than max_index_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captive_portal_is_caught_by_hash_and_size() {
    a_faulty_mirror(Fault::Portal, ONE_ROUND, "no tree verified").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_takes_the_mirror_out() {
    a_faulty_mirror(Fault::Reset, TWO_ROUNDS, "request failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_not_followed() {
    a_faulty_mirror(Fault::RedirectLoop, ONE_ROUND, "redirected to").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_resolve_is_never_in() {
    let f = fixture("http://mirror.invalid/".into(), Options::default()).await;
    f.wait_eligible(&["ok"], SETTLE).await;
    f.wait_reason("bad", "connection failed", SETTLE).await;
    let reason = f.reason("bad");
    assert!(reason.contains("dns"), "{reason}");
    let (_, to_bad) = traffic_while(&f, f.wait_reason("bad", "connection failed", SETTLE)).await;
    assert_eq!(to_bad, 0);
}

/// An https mirror whose certificate, from a CA the prober trusts
/// (`[probe] ca`), names another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["other.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let server = FaultServer::start(
        origin_tree(),
        Some(TlsAcceptor::from(Arc::new(server_config))),
    )
    .await;
    let probe = format!(
        "{}\nca = \"{}\"",
        Options::default().probe,
        ca_path.display()
    );
    let opts = Options {
        probe: Box::leak(probe.into_boxed_str()),
        ..Options::default()
    };
    let f = fixture(server.url("https"), opts).await;
    f.wait_eligible(&["ok"], SETTLE).await;
    let (_, to_bad) = traffic_while(&f, f.wait_reason("bad", "connection failed", SETTLE)).await;
    assert_eq!(to_bad, 0);
    let reason = f.reason("bad");
    assert!(reason.contains("not valid for name"), "{reason}");
}

/// The origin answering garbage for its indexes: the last good index stays
/// the reference, so fresh mirrors stay in and serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_answering_garbage_keeps_its_last_good_index() {
    let opts = Options {
        extra: "[admin]\nlisten = [\"127.0.0.1:0\"]\n",
        ..Options::default()
    };
    let f = Fixture::world(opts).await;
    let admin = f.service.as_ref().unwrap().admin_addrs[0];
    let mut garbage = origin_tree();
    let indexes: Vec<String> = garbage
        .paths()
        .filter(|p| p.ends_with("meta.binaryproto"))
        .map(String::from)
        .collect();
    for p in &indexes {
        garbage.insert(p, "<html>503 Service Unavailable</html>");
    }
    f.origin.serve(garbage);
    let ((), _) = traffic_while(&f, async {
        loop {
            let m = scrape(admin).await;
            if at(&m, "distri_origin_reachable{}") == 0.0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The reason is public, on the status page and in its JSON.
    let service = f.service.as_ref().unwrap();
    let json = f
        .eventually("the origin's error on /mirrors.json", || async {
            let a = get(f.addr(), "/mirrors.json", "").await;
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            let e = v["origin_index"]["error"].as_str()?.to_string();
            (v["origin_index"]["reachable"] == false).then_some(e)
        })
        .await;
    assert!(json.contains("cannot decode"), "{json}");
    service.redraw_status();
    let page = f
        .eventually("the origin's error on /mirrors", || async {
            let a = get(f.addr(), "/mirrors", "").await;
            let html = String::from_utf8(a.body).unwrap();
            html.contains("origin-error").then_some(html)
        })
        .await;
    assert!(page.contains("cannot decode"));
    // Rounds go on against the last good index: every mirror stays in.
    let before = f.mirrors[0].requests();
    while f.mirrors[0].requests() < before + 12 {
        assert_eq!(f.eligible().len(), 4, "a mirror dropped");
        tokio::task::yield_now().await;
    }
    assert_eq!(f.where_to("3.0.0.1").await, "jp-tyo");
}
