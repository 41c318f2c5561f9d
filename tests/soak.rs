//! The soak: the real binary, 10,000 concurrent keep-alive connections on
//! loopback each asking once a second, while one mirror flaps and the
//! config is rewritten (and so reloaded) every few seconds. Every answer
//! must be a right redirect, no connection may fail, and the service's
//! resident memory must stay bounded and flat.
//!
//! Long, so out of the default `cargo test`: `benches/soak.sh` runs it
//! (`SOAK_SECS`, default 120). It needs about 10,100 file descriptors in
//! this process (the client side) and as many in the service's: the test
//! raises its soft RLIMIT_NOFILE to the hard limit, which the service
//! inherits, and fails with the numbers if that is too low.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distri_redirector::minitree::MiniServer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 10_000;
const PKG: &str = "/distri/jackherer/pkg/pkg003-amd64-1.0-1.squashfs";

fn config(origin: &str, urls: &[String], weight: f64) -> String {
    let mut text = format!(
        "listen = [\"127.0.0.1:0\"]\norigin = \"{origin}\"\n\
         releases = [\"supersilverhaze\", \"jackherer\"]\ngeoip = \"test.mmdb\"\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\
         [server]\nworkers = 2\nmax_connections = 12000\n\
         [admin]\nlisten = [\"127.0.0.1:0\"]\n\
         [probe]\ninterval = \"300ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2\n"
    );
    let places = [(50.11, 8.68), (40.71, -74.01), (35.68, 139.69), (50.2, 8.2)];
    for (i, (url, (lat, lon))) in urls.iter().zip(places).enumerate() {
        let w = if i == 0 { weight } else { 1.0 };
        text.push_str(&format!(
            "\n[[mirror]]\nname = \"m{i}\"\nurl = \"{url}\"\nlat = {lat}\nlon = {lon}\nweight = {w}\n"
        ));
    }
    text
}

/// Raises this process's soft limit on open files to its hard limit; the
/// service started after inherits it.
fn raise_nofile(need: u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if soft < hard {
        rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= need,
        "the soak needs {need} open files per process; the hard limit is {hard}"
    );
}

/// One keep-alive connection asking once a `period` until `until`;
/// every answer must be a 302 under one of `bases`.
async fn client(
    addr: SocketAddr,
    n: usize,
    bases: Arc<Vec<String>>,
    until: Instant,
    sent: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut buf = vec![0u8; 4096];
    // Spread over the period, so the load is steady.
    let period = Duration::from_secs(1);
    tokio::time::sleep(period.mul_f64((n % 1000) as f64 / 1000.0)).await;
    let mut i = 0u32;
    while Instant::now() < until {
        let req = format!(
            "GET {PKG} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.{}.{}.1\r\n\r\n",
            n % 256,
            i % 256
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut got = 0;
        let head_end = loop {
            let r = s
                .read(&mut buf[got..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                return Err("closed by the service".into());
            }
            got += r;
            if let Some(p) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if got == buf.len() {
                return Err("head too long".into());
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| e.to_string())?;
        if !head.starts_with("HTTP/1.1 302") {
            return Err(format!("answer: {head}"));
        }
        let mut length = 0;
        let mut location_ok = false;
        for l in head.lines() {
            if let Some(v) = l.strip_prefix("content-length: ") {
                length = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = l.strip_prefix("location: ") {
                location_ok = bases.iter().any(|b| v.starts_with(b.as_str()));
                if !location_ok {
                    return Err(format!("location outside the bases: {v}"));
                }
            }
        }
        if !location_ok {
            return Err(format!("no location: {head}"));
        }
        let mut body = got - head_end;
        while body < length {
            let r = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if r == 0 {
                return Err("closed mid-body".into());
            }
            body += r;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(period).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run by benches/soak.sh"]
async fn ten_thousand_keepalive_connections_through_flaps_and_reloads() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    raise_nofile(CONNECTIONS as u64 + 500);
    let dir = tempfile::tempdir().unwrap();
    write_nested_db(&dir.path().join("test.mmdb"));
    let origin = MiniServer::start(origin_tree()).await.unwrap();
    let mut mirrors = Vec::new();
    for _ in 0..4 {
        mirrors.push(MiniServer::start(origin_tree()).await.unwrap());
    }
    let urls: Vec<String> = mirrors.iter().map(MiniServer::url).collect();
    let path = dir.path().join("mirrors.toml");
    std::fs::write(&path, config(&origin.url(), &urls, 1.0)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_distri-redirector"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn,distri_redirector=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr_of = |line: &str| -> SocketAddr {
        line.split("addr=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = lines
            .next()
            .expect("the service logs where it serves")
            .unwrap();
        if line.contains("serving http") {
            addr = Some(addr_of(&line));
        } else if line.contains("admin: http") {
            admin = Some(addr_of(&line));
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    // The rest of its log goes on being read, so the pipe never fills.
    let log = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .collect::<Vec<_>>()
    });

    let mut bases = urls.clone();
    bases.push(origin.url());
    let bases = Arc::new(bases);
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        clients.spawn(client(addr, n, bases.clone(), until, sent.clone()));
        if n % 500 == 499 {
            // Let the backlog drain: connections arrive in waves of 500.
            tokio::task::yield_now().await;
        }
    }
    let rss_base = rss_kib(pid);

    // Flaps, reloads and memory samples, until the end.
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    let (mut flaps, mut rewrites) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        second += 1;
        rss.push((start.elapsed(), rss_kib(pid)));
        if second % 4 == 0 {
            let m = &mut mirrors[3];
            if second % 8 == 0 {
                m.restart().await.unwrap();
            } else {
                m.stop().await;
                flaps += 1;
            }
        }
        if second % 5 == 0 {
            let weight = if rewrites % 2 == 0 { 2.0 } else { 1.0 };
            std::fs::write(&path, config(&origin.url(), &urls, weight)).unwrap();
            rewrites += 1;
        }
    }
    let mut failed = Vec::new();
    while let Some(r) = clients.join_next().await {
        if let Err(e) = r.unwrap() {
            failed.push(e);
        }
    }
    let m = scrape(admin).await;
    let reloads = at(&m, "distri_reloads_total{result=applied}");
    let _ = child.kill();
    let _ = child.wait();
    let errors = log.join().unwrap();

    let total = sent.load(Ordering::Relaxed);
    // Flat: after the first quarter (connections opening, allocator
    // warming), the largest sample is within 10% of the first.
    let settled: Vec<u64> = rss
        .iter()
        .filter(|(t, _)| t.as_secs() >= secs / 4)
        .map(|&(_, k)| k)
        .collect();
    let (first, peak) = (settled[0], *settled.iter().max().unwrap());
    println!(
        "soak: {secs} s, {CONNECTIONS} connections, {total} requests ({:.0}/s), {} failed connections, \
         {flaps} flaps, {rewrites} config rewrites ({reloads} reloads applied); \
         RSS before connections {rss_base} KiB, settled {first} KiB, peak {peak} KiB, \
         last {} KiB",
        total as f64 / secs as f64,
        failed.len(),
        settled.last().unwrap()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(errors.is_empty(), "errors logged: {errors:?}");
    assert!(
        reloads >= (rewrites / 2) as f64,
        "{reloads} reloads for {rewrites} rewrites"
    );
    assert!(
        total >= (CONNECTIONS as u64) * secs / 2,
        "only {total} requests"
    );
    assert!(
        peak <= first + first / 10,
        "memory grew: {first} KiB to {peak} KiB"
    );
    // Bounded: the documented 32 KiB per connection, and the rest.
    assert!(peak <= rss_base + 40 * CONNECTIONS as u64, "{peak} KiB");
}
