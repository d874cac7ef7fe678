//! Budget: a token bucket, what a neighbour may make us do per second. Withdrawals and pings
//! are cheap to send and each one costs us work (a route table pass, a pong), so an
//! authenticated peer that sends them in a loop is held to a burst and a steady rate; what is
//! over is dropped unread and counted by the caller.

use std::time::Instant;

/// Tokens left and when they were last counted; full at first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full budget of `burst` tokens at `now`.
    pub fn full(burst: f64, now: Instant) -> Budget {
        Budget {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token at `now` after refilling `per_sec` per second up to `burst`; false
    /// when none is left (the message is over the budget).
    pub fn take(&mut self, now: Instant, burst: f64, per_sec: f64) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = self.at.max(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t = Instant::now();
        let mut b = Budget::full(3.0, t);
        assert_eq!((0..5).filter(|_| b.take(t, 3.0, 10.0)).count(), 3);
        // 10 per second: one more after 100 ms, never more than the burst after a long rest.
        assert!(!b.take(t + Duration::from_millis(50), 3.0, 10.0));
        assert!(b.take(t + Duration::from_millis(100), 3.0, 10.0));
        let later = t + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| b.take(later, 3.0, 10.0)).count(), 3);
    }
}
