// SPDX-License-Identifier: Apache-2.0
//! Retry delays: a capped exponential backoff with jitter, and the server's `Retry-After`.
//!
//! Every agent on every node retries against the same API server, so delays are jittered: after an
//! API server restart the nodes' agents must not come back in lock step. The jitter needs no
//! random crate: std's `RandomState` is seeded from the OS for every process, and hashing a clock
//! reading with a fresh one is plenty for spreading retries (it is not used for anything secret).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::KubeError;

/// The first delay, before jitter.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The cap, before jitter; jitter only shortens a delay, so this is the longest wait.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is cut to it: the agent keeps trying at a modest rate whatever
/// an overloaded or confused server says.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(120);

/// Doubling delays from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`], each jittered down by up to half.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The next delay: a random point in [d/2, d], where d doubles on every call up to the cap.
    pub fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        random_between(delay / 2, delay)
    }

    /// How long to wait after `err`: the backoff, or the server's `Retry-After` if that is longer.
    pub fn after(&mut self, err: &KubeError) -> Duration {
        let delay = self.next();
        match err.retry_after() {
            Some(asked) => delay.max(asked.min(RETRY_AFTER_MAX)),
            None => delay,
        }
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// A random duration in `[low, high]`.
pub fn random_between(low: Duration, high: Duration) -> Duration {
    let Some(span) = high.checked_sub(low).filter(|s| !s.is_zero()) else {
        return low;
    };
    let span_nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(random_u64() % span_nanos.saturating_add(1).max(1))
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::default();
        let mut ceiling = BACKOFF_FIRST;
        for _ in 0..10 {
            let delay = backoff.next();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        backoff.reset();
        assert!(backoff.next() <= BACKOFF_FIRST);
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| random_between(Duration::from_secs(1), Duration::from_secs(2)))
            .collect();
        assert!(delays.len() > 1, "{delays:?}");
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(2)));
        assert_eq!(
            random_between(Duration::from_secs(3), Duration::from_secs(1)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let too_many = |seconds| KubeError::HttpStatus {
            what: "listing pods",
            status: 429,
            message: String::new(),
            retry_after: Some(Duration::from_secs(seconds)),
        };
        let mut backoff = Backoff::default();
        assert!(backoff.after(&too_many(7)) >= Duration::from_secs(7));
        assert_eq!(backoff.after(&too_many(100_000)), RETRY_AFTER_MAX);
        let mut backoff = Backoff::default();
        let plain = KubeError::WatchSilent;
        assert!(backoff.after(&plain) <= BACKOFF_FIRST);
    }
}
