//! The serving threads, and which of them serves a new connection.
//!
//! With `runtime = "per-thread"` each serving thread runs a runtime of its
//! own, with its own event loop, as nginx's workers do: a burst of
//! requests wakes every thread at once, each for its own connections. On
//! the shared work-stealing runtime one thread takes each burst from the
//! shared event loop and the others join late: at a fixed request rate its
//! median latency was 1.4 to 1.9 times nginx's, and one request at a time
//! it cost 14% more CPU per request (benches/RESULTS.md, "Tenth session").
//!
//! A thread's connections stay on it, so they are spread evenly: the
//! kernel's SO_REUSEPORT hash alone leaves 64 connections split 38/26 as
//! often as not. A thread that accepts a connection while it serves
//! clearly more than the least busy thread hands the connection to that
//! thread. Counts are atomics: no lock on the accept path. With the shared
//! runtime nothing is placed or counted: a connection is spawned where it
//! was accepted, and the runtime moves it as it likes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// Every serving thread's runtime, and the connections each serves.
pub struct Threads {
    handles: Vec<Handle>,
    live: Box<[Count]>,
}

/// One thread's count, on a cache line of its own: the threads update
/// their own counts on every connection and read the others'.
#[repr(align(64))]
#[derive(Default)]
struct Count(AtomicUsize);

impl Threads {
    pub fn new(handles: Vec<Handle>) -> Arc<Threads> {
        let live = handles.iter().map(|_| Count::default()).collect();
        Arc::new(Threads { handles, live })
    }

    /// How many connections thread `i` serves now.
    pub fn live(&self, i: usize) -> usize {
        self.live.get(i).map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    /// Where thread `me` should run a connection it accepted: itself,
    /// unless it serves more than an eighth (and at least two) more than
    /// the least busy thread. The margin keeps short connections, whose
    /// counts move all the time, on the thread that accepted them: a
    /// hand-over costs two `epoll_ctl` calls and a wake-up.
    fn pick(&self, me: usize) -> usize {
        let (least, at) = (0..self.live.len())
            .map(|i| (self.live(i), i))
            .min()
            .unwrap_or((0, me));
        if self.live(me) > least + 1 + least / 8 {
            at
        } else {
            me
        }
    }
}

/// A connection task's place in its thread's count.
struct Live(Arc<Threads>, usize);

impl Live {
    fn enter(threads: &Arc<Threads>, i: usize) -> Live {
        threads.live[i].0.fetch_add(1, Ordering::Relaxed);
        Live(threads.clone(), i)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live[self.1].0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one accept loop needs to place its connections: all the threads,
/// and which one it runs on; none on the shared runtime.
#[derive(Clone)]
pub struct Placement {
    threads: Option<Arc<Threads>>,
    me: usize,
}

impl Placement {
    /// For the loop on thread `me` of `threads`, each with its own runtime.
    pub fn new(threads: Arc<Threads>, me: usize) -> Placement {
        Placement {
            threads: Some(threads),
            me,
        }
    }

    /// For a loop on the shared work-stealing runtime.
    pub fn shared() -> Placement {
        Placement {
            threads: None,
            me: 0,
        }
    }

    /// Runs `serve` on the connection, on this thread or a less busy one.
    /// Must be called on this loop's own runtime.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(threads) = &self.threads else {
            tokio::spawn(serve(stream));
            return;
        };
        let to = threads.pick(self.me);
        let live = Live::enter(threads, to);
        if to == self.me {
            tokio::spawn(async move {
                serve(stream).await;
                drop(live);
            });
            return;
        }
        // The socket leaves this thread's event loop and joins the other's.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(cause = %e, "a connection could not change threads; closed");
                return;
            }
        };
        threads.handles[to].spawn(async move {
            match TcpStream::from_std(std) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::debug!(cause = %e, "a connection could not change threads; closed")
                }
            }
            drop(live);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(n: usize) -> (Arc<Threads>, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handles = (0..n).map(|_| rt.handle().clone()).collect();
        (Threads::new(handles), rt)
    }

    #[test]
    fn connections_stay_until_a_thread_is_clearly_busier() {
        let (t, _rt) = threads(2);
        let hold: Vec<Live> = (0..16).map(|_| Live::enter(&t, 0)).collect();
        // 16 against 0: hand over.
        assert_eq!(t.pick(0), 1);
        let other: Vec<Live> = (0..14).map(|_| Live::enter(&t, 1)).collect();
        // 16 against 14: within the margin (14 + 1 + 1), stay.
        assert_eq!(t.pick(0), 0);
        assert_eq!(t.pick(1), 1);
        drop(other);
        assert_eq!((t.live(0), t.live(1)), (16, 0));
        drop(hold);
        assert_eq!((t.live(0), t.live(1)), (0, 0));
        assert_eq!(t.pick(0), 0);
    }

    /// The hand-over itself: the socket leaves one runtime's event loop,
    /// is served from the other's thread, and counts there meanwhile.
    #[test]
    fn a_connection_handed_over_is_served_by_the_other_runtime() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let here = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let there = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("there")
            .enable_all()
            .build()
            .unwrap();
        let threads = Threads::new(vec![here.handle().clone(), there.handle().clone()]);
        // Thread 0 is clearly busier: the next connection it accepts moves.
        let busy: Vec<Live> = (0..4).map(|_| Live::enter(&threads, 0)).collect();
        let place = Placement::new(threads.clone(), 0);
        here.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let (tell, told) = tokio::sync::oneshot::channel();
            let counts = threads.clone();
            place.spawn(accepted, move |mut s| async move {
                let on = std::thread::current().name().map(String::from);
                let _ = tell.send((on, counts.live(1)));
                let _ = s.write_all(b"ok").await;
            });
            let (on, live) = told.await.unwrap();
            assert_eq!(on.as_deref(), Some("there"));
            assert_eq!(live, 1, "counted on the thread that serves it");
            let mut answer = [0; 2];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"ok", "served through the moved socket");
        });
        drop(busy);
    }

    #[test]
    fn a_burst_on_one_thread_ends_spread_evenly() {
        let (t, _rt) = threads(4);
        let held: Vec<Live> = (0..400)
            .map(|_| {
                let to = t.pick(0);
                Live::enter(&t, to)
            })
            .collect();
        let counts: Vec<usize> = (0..4).map(|i| t.live(i)).collect();
        let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // The accepting thread keeps up to its margin more; the rest even.
        assert!(*least >= 95 && most - least <= 2 + least / 8, "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 400);
        drop(held);
    }
}
