//! TLS handshakes in progress: a cap for the whole service, and a smaller
//! one per client network, so that clients who open TLS and never finish
//! cannot take every slot from the others.
//!
//! A handshake costs the server a key exchange and a signature, and a
//! client that stalls mid-handshake holds a connection slot until the
//! handshake timeout. The service-wide cap bounds the first; the per-client
//! cap bounds what one network can hold of the second. Past the service
//! cap a handshake waits (within its timeout) for a slot, in order; past
//! its network's cap a connection is closed at once, because waiting would
//! let one network fill every connection slot with waiters instead.
//!
//! Counts per network live in a fixed array of atomic counters indexed by
//! a keyed hash: no lock, no allocation, memory fixed at start. Two
//! networks that share a bucket share its cap; the key is random per
//! process, so a client cannot aim at another's bucket.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};

use foldhash::fast::FixedState;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Counters per client network: enough that collisions are rare among the
/// few hundred networks handshaking at any moment.
const BUCKETS: usize = 4096;

/// The caps on TLS handshakes in progress.
pub struct Handshakes {
    all: Semaphore,
    per_client: u16,
    counts: Box<[AtomicU16]>,
    hasher: FixedState,
}

/// A handshake's place; dropping it frees the place.
pub struct Slot<'a> {
    _network: Claim<'a>,
    _all: SemaphorePermit<'a>,
}

/// One handshake counted against its network.
struct Claim<'a>(&'a AtomicU16);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Handshakes {
    /// At most `all` handshakes at once, and `per_client` from one client
    /// network (an IPv4 address or an IPv6 /64).
    pub fn new(all: usize, per_client: u16) -> Handshakes {
        Handshakes::with_seed(all, per_client, rand::random())
    }

    fn with_seed(all: usize, per_client: u16, seed: u64) -> Handshakes {
        Handshakes {
            all: Semaphore::new(all),
            per_client,
            counts: (0..BUCKETS).map(|_| AtomicU16::new(0)).collect(),
            hasher: FixedState::with_seed(seed),
        }
    }

    /// A place for a handshake from `peer`: `None` at once when its network
    /// already has `per_client` handshakes in progress, otherwise when a
    /// place is free. Cancelling the wait gives the network's count back.
    pub async fn enter(&self, peer: IpAddr) -> Option<Slot<'_>> {
        let count = &self.counts[self.bucket(peer)];
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.per_client).then_some(n + 1)
            })
            .ok()?;
        let claim = Claim(count);
        let all = self.all.acquire().await.ok()?;
        Some(Slot {
            _network: claim,
            _all: all,
        })
    }

    fn bucket(&self, peer: IpAddr) -> usize {
        let network = match peer.to_canonical() {
            IpAddr::V4(v4) => u32::from(v4) as u128,
            // One subscriber usually holds a /64.
            IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
        };
        self.hasher.hash_one(network) as usize % BUCKETS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_network_past_its_cap_is_refused_and_others_are_not() {
        let gate = Handshakes::with_seed(100, 2, 7);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let first = gate.enter(a).await.unwrap();
        let _second = gate.enter(same_64).await.unwrap();
        assert!(gate.enter(a).await.is_none(), "third from one /64");
        // Other networks are not affected (unless they share a bucket,
        // which this seed rules out for these two).
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        assert_ne!(gate.bucket(a), gate.bucket(b));
        assert!(gate.enter(b).await.is_some());
        drop(first);
        assert!(gate.enter(a).await.is_some(), "a place was freed");
    }

    #[tokio::test]
    async fn past_the_service_cap_a_handshake_waits_and_a_cancelled_wait_gives_back() {
        let gate = Handshakes::new(1, 5);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held = gate.enter(a).await.unwrap();
        let mut waiting = Box::pin(gate.enter(a));
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        drop(waiting);
        assert_eq!(gate.counts[gate.bucket(a)].load(Ordering::Acquire), 1);
        drop(held);
        assert!(gate.enter(a).await.is_some());
    }

    /// Polls once: `Some` if ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let gate = Handshakes::new(1, 1);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(gate.bucket(v4), gate.bucket(mapped));
    }
}
