//! One backoff policy for every wait that grows: a first delay, doubled each time, capped.
//! Retries after a failure (a projector, a subscription, a workflow step, a conflicting
//! command) and polls for a condition (a position becoming visible, a lock, the read models
//! catching up) all take their delays from it; jitter, where a caller wants it, is applied to
//! the delay it gives.
//!
//! Doubling is integer arithmetic on the duration. backon's exponential builder, tried first,
//! multiplies by an `f32` factor: its fourth delay from 5 ms was 39.999999 ms, and the drift
//! grows with each step.

use std::time::Duration;

/// Exponential delays from `first`, doubling, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

/// Past this many doublings every delay is the cap (2^40 of a nanosecond is 18 minutes).
const MAX_DOUBLINGS: u32 = 40;

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay before retry number `attempt` (1: the first retry, after one failure):
    /// `first × 2^(attempt − 1)`, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        self.first
            .saturating_mul(1u32 << doublings.min(31))
            .saturating_mul(1u32 << doublings.saturating_sub(31))
            .min(self.max)
    }

    /// The pauses of a wait, in turn: `first`, `2 × first`, … then `max` without end.
    pub fn pauses(&self) -> impl Iterator<Item = Duration> + use<> {
        let this = *self;
        (1u32..).map(move |attempt| this.delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_and_stop_at_the_cap() {
        let ms = Duration::from_millis;
        let b = Backoff::new(ms(5), ms(200));
        let delays: Vec<Duration> = (1..=8).map(|n| b.delay(n)).collect();
        assert_eq!(
            delays,
            [
                ms(5),
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(200),
                ms(200)
            ]
        );
        assert_eq!(b.delay(0), ms(5));
        assert_eq!(b.delay(u32::MAX), ms(200));
        let pauses: Vec<Duration> = b.pauses().take(9).collect();
        assert_eq!(&pauses[..8], delays.as_slice());
        assert_eq!(pauses[8], ms(200));
        let secs = Duration::from_secs;
        let steps = Backoff::new(secs(2), secs(600));
        assert_eq!(
            [1, 2, 9, 10, 11].map(|n| steps.delay(n)),
            [secs(2), secs(4), secs(512), secs(600), secs(600)]
        );
    }
}
