//! A connection's future beside a guard that may end it (the service
//! stopping, the client falling silent), polled so that the guard costs
//! nothing on the connection's own wake-ups.
//!
//! `tokio::select!` polls every branch at every wake-up. For a keep-alive
//! connection that was, per request, a lock (re-registering with the stop
//! signal's `Notify`), a timer check and a random number. Here the guard
//! gets a waker of its own, which marks it woken before waking the task,
//! and is polled only when so marked (and once at the start, to register).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Which of the two ended first, with its output.
pub enum Ended<C, G> {
    Conn(C),
    Guard(G),
}

/// Completes when `conn` or `guard` does; see the module's comment.
pub struct Watched<'a, C, G> {
    conn: Pin<&'a mut C>,
    guard: Pin<&'a mut G>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once.
    guard_waker: Waker,
    /// The task's waker as last stored in `signal`.
    task: Waker,
}

/// What the guard's waker does: mark, then wake the task.
struct Signal {
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wake_by_ref();
    }
}

impl<'a, C: Future, G: Future> Watched<'a, C, G> {
    pub fn new(conn: Pin<&'a mut C>, guard: Pin<&'a mut G>) -> Self {
        let signal = Arc::new(Signal {
            // The first poll polls the guard, so that it registers.
            woken: AtomicBool::new(true),
            task: Mutex::new(Waker::noop().clone()),
        });
        Watched {
            conn,
            guard,
            guard_waker: Waker::from(signal.clone()),
            signal,
            task: Waker::noop().clone(),
        }
    }
}

impl<C: Future, G: Future> Future for Watched<'_, C, G> {
    type Output = Ended<C::Output, G::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // A task's waker does not change between polls in tokio: this
        // compares two pointers and stores nothing.
        if !this.task.will_wake(cx.waker()) {
            this.task = cx.waker().clone();
            *this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = this.task.clone();
        }
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Conn(out));
        }
        // After the waker is stored: a wake from here on is seen now or
        // reaches this task.
        if this.signal.woken.load(Ordering::Relaxed)
            && this.signal.woken.swap(false, Ordering::Acquire)
        {
            let mut guard_cx = Context::from_waker(&this.guard_waker);
            if let Poll::Ready(out) = this.guard.as_mut().poll(&mut guard_cx) {
                return Poll::Ready(Ended::Guard(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set.
    struct Probe<'a> {
        polls: &'a AtomicUsize,
        ready: &'a AtomicBool,
    }

    impl Future for Probe<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// The connection is polled at every wake-up, the guard only at the
    /// first and when its own waker fired; then its end is reported.
    #[tokio::test]
    async fn the_guard_is_polled_only_when_it_was_woken() {
        let (conn_polls, guard_polls) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (never, guard_ready) = (AtomicBool::new(false), AtomicBool::new(false));
        let notify = tokio::sync::Notify::new();
        let conn = Probe {
            polls: &conn_polls,
            ready: &never,
        };
        let guard = async {
            let probe = Probe {
                polls: &guard_polls,
                ready: &guard_ready,
            };
            notify.notified().await;
            probe.await;
        };
        tokio::pin!(conn, guard);
        let mut watched = Watched::new(conn, guard);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..10 {
            assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        }
        assert_eq!(conn_polls.load(Ordering::Relaxed), 10);
        // Registered with `notify` on the first poll; never polled since.
        assert_eq!(guard_polls.load(Ordering::Relaxed), 0);
        notify.notify_one();
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        assert_eq!(guard_polls.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        assert_eq!(guard_polls.load(Ordering::Relaxed), 1);
        guard_ready.store(true, Ordering::Relaxed);
        // Not woken: not polled, however ready.
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        watched.signal.clone().wake();
        assert!(matches!(
            Pin::new(&mut watched).poll(&mut cx),
            Poll::Ready(Ended::Guard(()))
        ));
    }

    /// The guard's wake, from another task, reaches this task, which then
    /// sees the guard end; a connection that ends is reported as such.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ends_are_reported_across_tasks() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let conn = std::future::pending::<()>();
        tokio::pin!(conn, rx);
        let send = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        assert!(matches!(Watched::new(conn, rx).await, Ended::Guard(Ok(()))));
        send.await.unwrap();

        let conn = std::future::ready(7);
        let guard = std::future::pending::<()>();
        tokio::pin!(conn, guard);
        assert!(matches!(Watched::new(conn, guard).await, Ended::Conn(7)));
    }
}
