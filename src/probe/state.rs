//! One mirror's health over time: hysteresis, latency average and the delay
//! until its next probe. Pure: the caller passes results, times and jitter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Probe;
use crate::table::{Health, Status, TreeStatus};

use super::check::ProbeError;

/// Weight of the newest latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;

/// A mirror's record of rounds.
#[derive(Clone, Debug)]
pub struct MirrorState {
    health: Health,
    good_streak: u32,
    bad_streak: u32,
    latency: Option<Duration>,
    reason: Arc<str>,
    since: SystemTime,
    /// Each tree's state after the last round that reached them all.
    trees: Option<Arc<[TreeStatus]>>,
}

/// What a transition was, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub reason: Arc<str>,
}

impl MirrorState {
    pub fn new(now: SystemTime) -> MirrorState {
        MirrorState {
            health: Health::Unknown,
            good_streak: 0,
            bad_streak: 0,
            latency: None,
            reason: Arc::from("not probed yet"),
            since: now,
            trees: None,
        }
    }

    /// Carries on from a published status (a task replaced by a reload that
    /// changed only probe settings): same health, reason, time and latency,
    /// streaks start over.
    pub fn resume(status: &Status) -> MirrorState {
        MirrorState {
            health: status.health,
            good_streak: 0,
            bad_streak: 0,
            latency: status.latency,
            reason: status.reason.clone(),
            since: status.since,
            trees: status.trees.clone(),
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }

    /// Takes in what a round found of each tree; a round that did not reach
    /// every tree passes `None` and the last complete finding stands.
    pub fn set_trees(&mut self, trees: Option<Arc<[TreeStatus]>>) {
        if trees.is_some() {
            self.trees = trees;
        }
    }

    /// Takes in one round's result; returns the transition if health changed.
    ///
    /// A round that passes every check but whose latency average is over
    /// `max_latency` counts as failed. A failure whose error says so
    /// ([`ProbeError::is_immediate`]) takes the mirror down at once; others
    /// after `fall` in a row. A mirror never verified comes up on its first
    /// good round; a mirror that was down needs `rise` good rounds in a row.
    pub fn record(
        &mut self,
        result: Result<Duration, ProbeError>,
        settings: &Probe,
        now: SystemTime,
    ) -> Option<Transition> {
        let result = result.and_then(|latency| self.average(latency, settings));
        match result {
            Ok(()) => {
                self.good_streak += 1;
                self.bad_streak = 0;
                let up = match self.health {
                    Health::Unknown => true,
                    Health::Down => self.good_streak >= settings.rise,
                    Health::Up => false,
                };
                up.then(|| self.go(Health::Up, Arc::from("ok: answering"), now))
            }
            Err(e) => {
                self.bad_streak += 1;
                self.good_streak = 0;
                let down = match self.health {
                    Health::Unknown => true,
                    Health::Up => e.is_immediate() || self.bad_streak >= settings.fall,
                    Health::Down => {
                        // Keep the reason current for operators, without a transition.
                        self.reason = Arc::from(e.to_string());
                        false
                    }
                };
                down.then(|| self.go(Health::Down, Arc::from(e.to_string()), now))
            }
        }
    }

    fn average(&mut self, sample: Duration, settings: &Probe) -> Result<(), ProbeError> {
        let avg = match self.latency {
            None => sample,
            Some(prev) => prev.mul_f64(1.0 - EWMA_ALPHA) + sample.mul_f64(EWMA_ALPHA),
        };
        self.latency = Some(avg);
        if avg > settings.max_latency {
            Err(ProbeError::Slow {
                average: avg,
                limit: settings.max_latency,
            })
        } else {
            Ok(())
        }
    }

    fn go(&mut self, to: Health, reason: Arc<str>, now: SystemTime) -> Transition {
        let from = self.health;
        self.health = to;
        self.reason = reason.clone();
        self.since = now;
        Transition { from, to, reason }
    }

    /// How long until the next probe. Healthy mirrors wait one interval,
    /// shortened by up to a tenth (`jitter` in 0..1) so that many mirrors do
    /// not align. Others back off from an eighth of the interval, doubling
    /// with each failed round, never past the interval: a mirror that fails
    /// is confirmed down quickly, and one that recovers comes back quickly.
    pub fn next_delay(&self, settings: &Probe, jitter: f64) -> Duration {
        let interval = settings.interval;
        if self.health == Health::Up && self.bad_streak == 0 {
            return interval.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0));
        }
        backoff(interval, self.bad_streak)
    }

    pub fn status(&self) -> Status {
        Status {
            eligible: self.health == Health::Up,
            health: self.health,
            reason: self.reason.clone(),
            since: self.since,
            latency: self.latency,
            trees: self.trees.clone(),
        }
    }
}

/// The wait after `failures` failed rounds in a row (0 for a recovering
/// mirror): an eighth of the interval, doubling, never past the interval.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (interval / 8).saturating_mul(1 << doublings).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Probe {
        Probe {
            interval: Duration::from_secs(8),
            max_latency: Duration::from_millis(500),
            ..Probe::default()
        }
    }

    fn ok() -> Result<Duration, ProbeError> {
        Ok(Duration::from_millis(20))
    }

    fn transient() -> Result<Duration, ProbeError> {
        Err(ProbeError::Status {
            path: "x".into(),
            code: 503,
        })
    }

    #[test]
    fn first_good_round_brings_it_up() {
        let mut s = MirrorState::new(SystemTime::UNIX_EPOCH);
        let t = s.record(ok(), &settings(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!((t.from, t.to), (Health::Unknown, Health::Up));
        assert!(s.status().eligible);
    }

    #[test]
    fn falls_after_fall_rounds_and_rises_after_rise() {
        let st = settings();
        let now = SystemTime::UNIX_EPOCH;
        let mut s = MirrorState::new(now);
        s.record(ok(), &st, now);
        assert_eq!(
            s.record(transient(), &st, now),
            None,
            "one failure is not enough"
        );
        assert_eq!(s.health(), Health::Up);
        let t = s.record(transient(), &st, now).unwrap();
        assert_eq!(t.to, Health::Down);
        assert!(t.reason.contains("503"), "{}", t.reason);
        assert_eq!(
            s.record(ok(), &st, now),
            None,
            "one good round is not enough"
        );
        assert_eq!(s.record(ok(), &st, now).unwrap().to, Health::Up);
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let st = settings();
        let now = SystemTime::UNIX_EPOCH;
        let mut s = MirrorState::new(now);
        s.record(ok(), &st, now);
        s.record(transient(), &st, now);
        s.record(ok(), &st, now);
        assert_eq!(s.record(transient(), &st, now), None);
        assert_eq!(s.health(), Health::Up);
    }

    #[test]
    fn hard_failures_take_it_down_at_once() {
        let st = settings();
        let now = SystemTime::UNIX_EPOCH;
        for e in [
            ProbeError::Refused,
            ProbeError::Timeout {
                after: Duration::from_secs(1),
            },
            ProbeError::Missing {
                path: "jackherer/pkg/a.squashfs".into(),
                code: 404,
            },
            ProbeError::Stale {
                path: "jackherer/pkg/meta.binaryproto".into(),
            },
        ] {
            let mut s = MirrorState::new(now);
            s.record(ok(), &st, now);
            let t = s.record(Err(e), &st, now).expect("down at once");
            assert_eq!(t.to, Health::Down);
        }
    }

    #[test]
    fn slow_average_fails_rounds() {
        let st = settings();
        let now = SystemTime::UNIX_EPOCH;
        let mut s = MirrorState::new(now);
        s.record(ok(), &st, now);
        let slow = || Ok(Duration::from_secs(3));
        s.record(slow(), &st, now);
        let t = s.record(slow(), &st, now).expect("two slow rounds");
        assert!(t.reason.starts_with("slow"), "{}", t.reason);
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let st = settings();
        let now = SystemTime::UNIX_EPOCH;
        let mut s = MirrorState::new(now);
        s.record(ok(), &st, now);
        assert_eq!(s.next_delay(&st, 0.0), Duration::from_secs(8));
        assert_eq!(s.next_delay(&st, 1.0), Duration::from_millis(7200));
        let mut delays = vec![];
        for _ in 0..6 {
            s.record(transient(), &st, now);
            delays.push(s.next_delay(&st, 0.5).as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    }

    /// The schedule in real (paused) time: a mirror that fails from t=0 is
    /// down after its second failed round, at 1/8 of the interval.
    #[tokio::test(start_paused = true)]
    async fn schedule_under_paused_clock() {
        let st = settings();
        let start = tokio::time::Instant::now();
        let mut s = MirrorState::new(SystemTime::UNIX_EPOCH);
        s.record(ok(), &st, SystemTime::UNIX_EPOCH);
        let mut down_at = None;
        for _ in 0..4 {
            tokio::time::sleep(s.next_delay(&st, 0.0)).await;
            if s.record(transient(), &st, SystemTime::UNIX_EPOCH).is_some() {
                down_at = Some(start.elapsed());
                break;
            }
        }
        assert_eq!(down_at, Some(Duration::from_secs(9)));
    }
}
