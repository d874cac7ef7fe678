//! Lateness: how late a machine's own deadlines fire, and how much longer a silence must
//! therefore last before a peer is suspected. On a saturated host every process waits for the
//! CPU: a peer then answers late and its stream pauses for about as long as our own timers are
//! late, so its silence says less. Pure (fed instants), shared by the overlay's stall
//! suspicion of a parent and the client's of its edge. The stretch it gives
//! ([`Lateness::slack`]) is nothing on an idle machine and nothing in the simulator (exact
//! timers).

use std::time::{Duration, Instant};

/// A silence must outlast this many times the peak lateness of our own deadlines before it
/// suspects a peer ...
const LATENESS_FACTOR: f64 = 2.0;
/// ... up to this much more: even a machine that slow notices a death within a second.
pub const MAX_SLACK: Duration = Duration::from_millis(500);
/// Time constant of the peak's decay: a burst of lateness is remembered for tens of seconds.
const PEAK_DECAY: Duration = Duration::from_secs(10);

/// A peak of `now − deadline` over the deadlines handled, decaying with τ = 10 s.
#[derive(Debug, Clone, Default)]
pub struct Lateness {
    peak_us: f64,
    at: Option<Instant>,
}

impl Lateness {
    /// A deadline due at `due` was handled at `now`.
    pub fn sample(&mut self, now: Instant, due: Instant) {
        let decay = self.at.map_or(0.0, |at| {
            (-now.saturating_duration_since(at).as_secs_f64() / PEAK_DECAY.as_secs_f64()).exp()
        });
        let late_us = now.saturating_duration_since(due).as_micros() as f64;
        self.peak_us = late_us.max(self.peak_us * decay);
        self.at = Some(now);
    }

    /// How much longer than on an idle machine a silence must last to suspect a peer.
    pub fn slack(&self) -> Duration {
        Duration::from_micros((self.peak_us * LATENESS_FACTOR) as u64).min(MAX_SLACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_deadlines_give_slack_that_decays_and_is_capped() {
        let mut l = Lateness::default();
        assert_eq!(l.slack(), Duration::ZERO);
        let t = Instant::now();
        l.sample(t, t - Duration::from_millis(30));
        assert_eq!(l.slack(), Duration::from_millis(60));
        // On time again: the peak decays with τ = 10 s, and is capped.
        l.sample(t + Duration::from_secs(10), t + Duration::from_secs(10));
        let s = l.slack().as_secs_f64() * 1e3;
        assert!((21.0..23.0).contains(&s), "slack {s} ms");
        l.sample(t + Duration::from_secs(11), t);
        assert_eq!(l.slack(), MAX_SLACK);
    }
}
