// SPDX-License-Identifier: Apache-2.0
//! The gates a grant must pass: the rate limit (a token bucket), then the concurrency limit.
//!
//! [`Gates::try_acquire`] takes what each gate gives, in order, and when a later gate refuses it
//! gives back what the earlier ones took, so a refused grant costs nothing (the Go
//! implementation kept a spent token and a held slot when a later throttler timed out,
//! docs/prior-art.md W14). [`Gates::set_limits`] swaps in new limits without touching the holders: the
//! concurrency limit applies from the next grant, and the bucket keeps its tokens up to the new
//! burst (docs/prior-art.md W5). Time comes in as an argument; nothing here reads a clock.

use std::time::{Duration, Instant};

use crate::config::throttle::{Limits, RateLimit};

/// The concurrency limit and the optional token bucket.
#[derive(Debug)]
pub struct Gates {
    max_concurrent: usize,
    bucket: Option<TokenBucket>,
}

/// Which gate refused a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token in the bucket; the next one comes at the instant given.
    Rate(Instant),
    /// Every slot is held.
    Concurrency,
}

impl Gates {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            max_concurrent: slots(limits.max_concurrent),
            bucket: limits.rate_limit.map(|rate| TokenBucket::full(rate, now)),
        }
    }

    /// Whether a grant may happen now with `holders` slots held; if so, its token is spent.
    pub fn try_acquire(&mut self, holders: usize, now: Instant) -> Result<(), Refusal> {
        // 1. The rate limit.
        let mut took_token = false;
        if let Some(bucket) = &mut self.bucket {
            bucket.take(now).map_err(Refusal::Rate)?;
            took_token = true;
        }

        // 2. The concurrency limit; refusing gives the token back.
        if holders >= self.max_concurrent {
            if took_token {
                if let Some(bucket) = &mut self.bucket {
                    bucket.give_back();
                }
            }
            return Err(Refusal::Concurrency);
        }
        Ok(())
    }

    /// Applies new limits from `now` on.
    pub fn set_limits(&mut self, limits: Limits, now: Instant) {
        self.max_concurrent = slots(limits.max_concurrent);
        self.bucket = match (self.bucket.take(), limits.rate_limit) {
            (_, None) => None,
            (None, Some(rate)) => Some(TokenBucket::full(rate, now)),
            (Some(mut bucket), Some(rate)) => {
                bucket.change(rate, now);
                Some(bucket)
            }
        };
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// When the bucket gains its next token, if it is empty now.
    pub fn next_token(&self, now: Instant) -> Option<Instant> {
        let bucket = self.bucket.as_ref()?;
        (bucket.available(now) == 0).then(|| bucket.next_token_at())
    }

    /// Whole tokens and the bucket size, when there is a rate limit.
    pub fn rate_status(&self, now: Instant) -> Option<(u32, u32)> {
        self.bucket
            .as_ref()
            .map(|b| (b.available(now), b.rate.burst))
    }
}

/// A token bucket that gains one token every `fill_factor`, holds at most `burst`, and starts
/// full (as `golang.org/x/time/rate` does). Whole tokens only; the time towards the next token is
/// kept in `since`.
#[derive(Debug)]
struct TokenBucket {
    rate: RateLimit,
    tokens: u32,
    /// While not full: the instant from which the next token accrues.
    since: Instant,
}

impl TokenBucket {
    fn full(rate: RateLimit, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.burst.max(1),
            since: now,
        }
    }

    /// Tokens and accrual start as of `now`.
    fn refilled(&self, now: Instant) -> (u32, Instant) {
        let burst = self.rate.burst.max(1);
        if self.tokens >= burst {
            return (burst, now);
        }
        let fill = self.rate.fill_factor.as_nanos().max(1);
        let gained = now.saturating_duration_since(self.since).as_nanos() / fill;
        let missing = u128::from(burst - self.tokens);
        if gained >= missing {
            return (burst, now);
        }
        // gained < missing <= burst, which fits a u32.
        let gained = u32::try_from(gained).unwrap_or(0);
        let advanced = self
            .since
            .checked_add(self.rate.fill_factor.saturating_mul(gained))
            .unwrap_or(now);
        (self.tokens + gained, advanced)
    }

    fn available(&self, now: Instant) -> u32 {
        self.refilled(now).0
    }

    /// Takes a token, or says when the next one comes.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let (tokens, since) = self.refilled(now);
        self.tokens = tokens;
        self.since = since;
        if self.tokens == 0 {
            return Err(self.next_token_at());
        }
        self.tokens -= 1;
        Ok(())
    }

    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1).min(self.rate.burst.max(1));
    }

    fn next_token_at(&self) -> Instant {
        self.since
            .checked_add(self.rate.fill_factor)
            .unwrap_or(self.since + Duration::from_secs(86_400))
    }

    /// New fill factor and burst from `now`: tokens earned so far at the old rate are kept, up to
    /// the new burst.
    fn change(&mut self, rate: RateLimit, now: Instant) {
        let (tokens, since) = self.refilled(now);
        self.rate = rate;
        self.tokens = tokens.min(rate.burst.max(1));
        self.since = if self.tokens >= rate.burst.max(1) {
            now
        } else {
            since
        };
    }
}

/// A limit as a slot count; at least 1, so the node is never closed.
fn slots(max_concurrent: u32) -> usize {
    usize::try_from(max_concurrent).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, rate: Option<(u64, u32)>) -> Limits {
        Limits {
            max_concurrent: max,
            rate_limit: rate.map(|(ms, burst)| RateLimit {
                fill_factor: Duration::from_millis(ms),
                burst,
            }),
        }
    }

    #[test]
    fn concurrency_alone() {
        let now = Instant::now();
        let mut gates = Gates::new(limits(2, None), now);
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert_eq!(gates.try_acquire(1, now), Ok(()));
        assert_eq!(gates.try_acquire(2, now), Err(Refusal::Concurrency));
        assert_eq!(gates.next_token(now), None);
    }

    #[test]
    fn bucket_starts_full_and_refills_one_token_per_fill_factor() {
        let now = Instant::now();
        let mut gates = Gates::new(limits(100, Some((100, 2))), now);
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        let next = now + Duration::from_millis(100);
        assert_eq!(gates.try_acquire(0, now), Err(Refusal::Rate(next)));
        assert_eq!(gates.next_token(now), Some(next));
        assert_eq!(
            gates.try_acquire(0, next - Duration::from_millis(1)),
            Err(Refusal::Rate(next))
        );
        assert_eq!(gates.try_acquire(0, next), Ok(()));
        // A long pause fills the bucket to its burst, no further.
        let later = next + Duration::from_secs(60);
        assert_eq!(gates.rate_status(later), Some((2, 2)));
        assert_eq!(gates.try_acquire(0, later), Ok(()));
        assert_eq!(gates.try_acquire(0, later), Ok(()));
        assert!(gates.try_acquire(0, later).is_err());
    }

    #[test]
    fn a_refused_later_gate_gives_the_token_back() {
        let now = Instant::now();
        let mut gates = Gates::new(limits(1, Some((1000, 1))), now);
        // The slot gate refuses: the token taken by the rate gate goes back.
        assert_eq!(gates.try_acquire(1, now), Err(Refusal::Concurrency));
        assert_eq!(gates.rate_status(now), Some((1, 1)));
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert_eq!(gates.rate_status(now), Some((0, 1)));
    }

    #[test]
    fn partial_progress_towards_a_token_is_kept() {
        let now = Instant::now();
        let mut gates = Gates::new(limits(10, Some((100, 3))), now);
        for _ in 0..3 {
            assert_eq!(gates.try_acquire(0, now), Ok(()));
        }
        // 250 ms: two tokens, and 50 ms towards the third.
        let t = now + Duration::from_millis(250);
        assert_eq!(gates.try_acquire(0, t), Ok(()));
        assert_eq!(gates.try_acquire(0, t), Ok(()));
        assert_eq!(
            gates.try_acquire(0, t),
            Err(Refusal::Rate(now + Duration::from_millis(300)))
        );
    }

    #[test]
    fn new_limits_keep_tokens_up_to_the_new_burst() {
        let now = Instant::now();
        let mut gates = Gates::new(limits(1, Some((100, 5))), now);
        gates.set_limits(limits(3, Some((1000, 2))), now);
        assert_eq!(gates.max_concurrent(), 3);
        assert_eq!(gates.rate_status(now), Some((2, 2)));
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert_eq!(
            gates.try_acquire(0, now),
            Err(Refusal::Rate(now + Duration::from_secs(1)))
        );
        // Dropping the rate limit lets grants through at once; adding one starts full.
        gates.set_limits(limits(3, None), now);
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        gates.set_limits(limits(3, Some((1000, 1))), now);
        assert_eq!(gates.try_acquire(0, now), Ok(()));
        assert!(gates.try_acquire(0, now).is_err());
        // A limit of 0 is never configured; if it were, the node would still get one slot.
        gates.set_limits(limits(0, None), now);
        assert_eq!(gates.max_concurrent(), 1);
    }
}
