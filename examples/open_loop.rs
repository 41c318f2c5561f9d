//! Open-loop load generator for `benches/load.sh` (`RATE=`): requests at a
//! fixed rate whatever the server does, the way real clients arrive, with
//! each latency counted from when the request was due. wrk's closed loop
//! (each connection waits for its answer before asking again) sends less
//! when the server slows, and at saturation its queue forms on whichever
//! side is slower to run: its p99 moved ±30% between identical runs here
//! (benches/RESULTS.md, "Ninth session"). wrk2 does this, but is not
//! packaged; oha cannot give each request its own client address.
//!
//! `open_loop --addr 127.0.0.1:18181 --rate 40000 [--connections 256]
//!  [--seconds 10] [--warmup 2] [--v6] [--smooth | --poisson]`
//!
//! Requests are those of `benches/xff.lua`: the fixture's images, each from
//! another client address (every fourth over IPv6 with `--v6`). Each
//! connection is due to send every `connections / rate` seconds, staggered.
//! A request sent late because the connection still waited for the answer
//! before is counted from when it was due (the coordinated-omission
//! correction), so a slow server cannot hide its queue by slowing the
//! load. A request sent late only because the generator's own timer fired
//! late (tokio's is in milliseconds) is counted from when it went: that
//! lag is the generator's, not the server's.
//!
//! Prints the lines of wrk's `--latency` report that `benches/common.sh`
//! reads (requests, requests/s, 50% and 99%), then the rest of the
//! distribution. Exits non-zero if any request failed: a run with errors
//! measures something else.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout_at};

#[derive(Parser, Clone)]
struct Args {
    /// The server, host:port.
    #[arg(long)]
    addr: String,
    /// Requests a second, all connections together.
    #[arg(long)]
    rate: f64,
    /// Keep-alive connections. The default gives each a request every
    /// 4 ms at most, so a timer firing a millisecond late never delays the
    /// next request.
    #[arg(long)]
    connections: Option<usize>,
    /// How long requests are sent, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests due in the first seconds are sent but not counted.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Every fourth request from an IPv6 address.
    #[arg(long)]
    v6: bool,
    /// Requests leave one by one as they fall due (a pacing thread
    /// releases them every 50 µs or so to whichever connection is free),
    /// instead of each connection's in the same millisecond of tokio's
    /// timer as the others': an even flow instead of batches.
    #[arg(long)]
    smooth: bool,
    /// As `--smooth`, but the gaps between requests are random
    /// (exponential, the same seeded sequence in every run), as when many
    /// independent clients arrive: a Poisson process at `--rate`, with
    /// the clusters and lulls an even flow lacks.
    #[arg(long, conflicts_with = "smooth")]
    poisson: bool,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    /// Latencies of the counted requests, in nanoseconds.
    latencies: Vec<u64>,
    /// Every request answered, counted or not (the server's CPU per
    /// request is divided by it).
    answered: u64,
    /// Counted requests sent late because the connection was still busy.
    late: u64,
    errors: u64,
    first_error: Option<String>,
}

fn main() -> io::Result<()> {
    let mut args = Args::parse();
    if !(args.rate > 0.0 && args.seconds > args.warmup && args.warmup >= 0.0) {
        eprintln!("open_loop: --rate must be positive and --seconds longer than --warmup");
        std::process::exit(2);
    }
    let conns = *args
        .connections
        .get_or_insert((args.rate * 0.004).ceil().max(16.0) as usize);
    // One thread, like `wrk -t1`: the generator takes one core at most.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seen = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(100);
        let pacer = (args.smooth || args.poisson).then(|| Pacer::start(&args, conns, start));
        let tasks: Vec<_> = (0..conns)
            .map(|j| match &pacer {
                Some(p) => tokio::spawn(paced(args.clone(), p.clone(), start)),
                None => tokio::spawn(connection(args.clone(), j, start)),
            })
            .collect();
        let mut all = Seen::default();
        for t in tasks {
            let s = t.await.expect("a connection task panicked");
            all.latencies.extend(s.latencies);
            all.answered += s.answered;
            all.late += s.late;
            all.errors += s.errors;
            all.first_error = all.first_error.or(s.first_error);
        }
        all
    });
    report(&args, conns, seen)
}

fn report(args: &Args, conns: usize, mut seen: Seen) -> io::Result<()> {
    seen.latencies.sort_unstable();
    let n = seen.latencies.len();
    let at = |q: f64| {
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1;
        seen.latencies.get(i).map_or(0.0, |&ns| ns as f64 / 1e6)
    };
    let counted_for = args.seconds - args.warmup;
    let arrivals = match (args.smooth, args.poisson) {
        (_, true) => "Poisson arrivals",
        (true, _) => "one by one",
        _ => "in 1 ms batches",
    };
    println!(
        "open loop: {} req/s offered over {conns} connections, {arrivals}",
        args.rate
    );
    println!("  {} requests in {:.1}s", seen.answered, args.seconds);
    println!("Requests/sec: {:.2}", n as f64 / counted_for);
    for (label, q) in [("50%", 0.5), ("90%", 0.9), ("99%", 0.99), ("99.9%", 0.999)] {
        println!("  {label:>6} {:.3}ms", at(q));
    }
    println!("  max {:.3}ms", at(1.0));
    println!(
        "  late {} of {n} ({:.2}%)",
        seen.late,
        100.0 * seen.late as f64 / n.max(1) as f64
    );
    if seen.errors > 0 || n == 0 {
        let why = seen.first_error.unwrap_or_else(|| "no answers".into());
        eprintln!(
            "open_loop: {} requests failed; the first: {why}",
            seen.errors
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Connection `j`'s requests, from `start` until `args.seconds` later.
async fn connection(args: Args, j: usize, start: Instant) -> Seen {
    let conns = args.connections.unwrap_or(1);
    let every = Duration::from_secs_f64(conns as f64 / args.rate);
    let first = start + every.mul_f64(j as f64 / conns as f64);
    let (end, counted_from, give_up) = bounds(&args, start);
    let mut seen = Seen::default();
    let mut client = Client::default();
    let mut free_since = Instant::now();
    for k in 0u64.. {
        let due = first + every * k as u32;
        if due >= end {
            break;
        }
        let late = free_since > due;
        if !late {
            sleep_until(due).await;
        }
        let sent = if late { due } else { Instant::now() };
        let result = client
            .ask(&args, j as u64 + k * conns as u64, give_up)
            .await;
        free_since = Instant::now();
        let counted = (due >= counted_from).then_some(free_since - sent);
        if !seen.record(result, counted, late) && free_since >= give_up {
            break;
        }
    }
    seen
}

impl Seen {
    /// One request's outcome, its latency if it counts; `false` on an
    /// error.
    fn record(&mut self, result: io::Result<()>, latency: Option<Duration>, late: bool) -> bool {
        match result {
            Ok(()) => {
                self.answered += 1;
                if let Some(l) = latency {
                    self.latencies.push(l.as_nanos() as u64);
                    self.late += u64::from(late);
                }
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
                false
            }
        }
    }
}

/// Requests as they fall due, for `--smooth` and `--poisson`: a thread
/// wakes every 50 µs or so (std's sleep is precise to tens of µs, tokio's
/// timer to 1 ms) and releases those due since; a free connection takes
/// each. The run's requests are numbered in order of their due times,
/// `due[n]` seconds after the start.
#[derive(Clone)]
struct Pacer {
    due: Arc<[f64]>,
    ready: Arc<Semaphore>,
    next: Arc<AtomicU64>,
}

impl Pacer {
    fn start(args: &Args, conns: usize, start: Instant) -> Pacer {
        let due = schedule(args);
        let pacer = Pacer {
            due: due.clone(),
            ready: Arc::new(Semaphore::new(0)),
            next: Arc::new(AtomicU64::new(0)),
        };
        let (ready, start) = (pacer.ready.clone(), start.into_std());
        std::thread::spawn(move || {
            let mut released = 0;
            while released < due.len() {
                let since = std::time::Instant::now().saturating_duration_since(start);
                let now_due =
                    released + due[released..].partition_point(|&t| t <= since.as_secs_f64());
                if now_due > released {
                    ready.add_permits(now_due - released);
                    released = now_due;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            // One past the end for each connection: each ends on it.
            ready.add_permits(conns);
        });
        pacer
    }

    /// The next request's number and when it was due; `None` past the end.
    async fn take(&self, start: Instant) -> Option<(u64, Instant)> {
        self.ready.acquire().await.ok()?.forget();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let due = *self.due.get(n as usize)?;
        Some((n, start + Duration::from_secs_f64(due)))
    }
}

/// When each of the run's requests falls due, in seconds from the start:
/// every `1 / rate`, or with `--poisson` after exponential gaps of that
/// mean, from a fixed seed so that both servers of a round, and every
/// round, get the same arrivals.
fn schedule(args: &Args) -> Arc<[f64]> {
    let total = (args.seconds * args.rate).ceil() as usize;
    if !args.poisson {
        return (0..total).map(|n| n as f64 / args.rate).collect();
    }
    let mut rng = StdRng::seed_from_u64(0x0D15_7121);
    let mut t = 0.0;
    std::iter::repeat_with(|| {
        // 1 - u is in (0, 1]: its logarithm is finite.
        t -= (1.0 - rng.random::<f64>()).ln() / args.rate;
        t
    })
    .take_while(|&t| t < args.seconds)
    .collect()
}

/// A connection that sends whichever request falls due while it is free,
/// for `--smooth` and `--poisson`. Latency counts from when the request was due, so the
/// pacing thread's own lag (tens of µs) counts too, on both sides alike.
async fn paced(args: Args, pacer: Pacer, start: Instant) -> Seen {
    let (_, counted_from, give_up) = bounds(&args, start);
    let mut seen = Seen::default();
    let mut client = Client::default();
    while let Some((n, due)) = pacer.take(start).await {
        // Taken a millisecond or more after it fell due: every connection
        // was still waiting for an answer.
        let late = Instant::now() > due + Duration::from_millis(1);
        let result = client.ask(&args, n, give_up).await;
        let done = Instant::now();
        let counted = (due >= counted_from).then_some(done.saturating_duration_since(due));
        if !seen.record(result, counted, late) && done >= give_up {
            break;
        }
    }
    seen
}

/// When the run's requests end, when they start to count, and when a
/// server that stops answering fails the run instead of hanging it.
fn bounds(args: &Args, start: Instant) -> (Instant, Instant, Instant) {
    let end = start + Duration::from_secs_f64(args.seconds);
    let counted_from = start + Duration::from_secs_f64(args.warmup);
    (end, counted_from, end + Duration::from_secs(5))
}

/// One connection's socket and buffers.
#[derive(Default)]
struct Client {
    stream: Option<TcpStream>,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Client {
    /// Request `n` and its answer, by `give_up` at the latest; after an
    /// error the next request opens a new connection.
    async fn ask(&mut self, args: &Args, n: u64, give_up: Instant) -> io::Result<()> {
        build(&mut self.request, n, args.v6);
        let asked = exchange(
            &mut self.stream,
            &args.addr,
            &self.request,
            &mut self.answer,
        );
        let result = timeout_at(give_up, asked)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")));
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

/// One request and its answer on the connection, opened if needed.
async fn exchange(
    stream: &mut Option<TcpStream>,
    addr: &str,
    request: &[u8],
    answer: &mut Vec<u8>,
) -> io::Result<()> {
    if stream.is_none() {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *stream = Some(s);
    }
    let s = stream.as_mut().expect("connected above");
    s.write_all(request).await?;
    if read_answer(s, answer).await? {
        // nginx closes a connection after 1,000 requests (its
        // `keepalive_requests`); the next request opens another.
        *stream = None;
    }
    Ok(())
}

/// Reads one response whole; an error unless it is a `302`. `true` when
/// the server closes the connection after it.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, length, close) = parse_head(&buf[..head])?;
            while buf.len() < head + 4 + length {
                read_more(s, buf).await?;
            }
            if status != 302 {
                return Err(io::Error::other(format!("status {status}, not 302")));
            }
            return Ok(close);
        }
        read_more(s, buf).await?;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if s.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The status, `Content-Length` (0 when absent) and whether the server
/// closes the connection (`Connection: close`), from a response head.
fn parse_head(head: &[u8]) -> io::Result<(u16, usize, bool)> {
    let text = std::str::from_utf8(head).map_err(io::Error::other)?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let length = value("content-length")
        .map_or(Ok(0), str::parse)
        .map_err(io::Error::other)?;
    let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((status, length, close))
}

/// Request `n` of the run, as `benches/xff.lua` makes its `n`th.
fn build(out: &mut Vec<u8>, n: u64, v6: bool) {
    use std::io::Write;
    let n = n + 1;
    let ip: IpAddr = if v6 && n % 4 == 0 {
        let s = [
            0x2000 + (n * 97) % 0x2000,
            (n * 7919) % 65536,
            (n * 31) % 65536,
            0,
            0,
            0,
            0,
            n % 65536,
        ];
        IpAddr::from(s.map(|x| x as u16))
    } else {
        let mut a = 1 + (n * 37) % 223;
        if a == 10 || a == 127 {
            a += 1;
        }
        IpAddr::from([a, (n * 13) % 256, (n * 7) % 256, n % 256].map(|x| x as u8))
    };
    let release = ["jackherer", "supersilverhaze"][(n % 2) as usize];
    out.clear();
    let _ = write!(
        out,
        "GET /distri/{release}/pkg/pkg{:03}-amd64-1.0-1.squashfs HTTP/1.1\r\nHost: bench\r\nX-Forwarded-For: {ip}\r\n\r\n",
        (n * 7) % 40
    );
}
