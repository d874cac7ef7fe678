//! The link shaper's model: what one direction of a shaped port does to the frames that cross
//! it, as CORE's netem links do (this kernel has no netem, so the netns emulator shapes in user
//! space; `tap.rs` moves the frames).
//!
//! A [`Direction`] takes each frame with the time it arrived and a random source, and decides:
//! lost (with the link's loss probability), or queued for release after the time the link's
//! rate needs to send it (a frame waits for the ones before it), plus the delay, plus a jitter
//! drawn in `0..jitter`; a duplicated frame is queued twice. Frames leave in arrival order
//! (a frame never overtakes an earlier one: its release is at least the previous release), as
//! netem does with a rate. The queue holds at most [`QUEUE_LIMIT`] frames, netem's default
//! limit; more are dropped at the tail and counted. No clock reads: `now` comes in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::topology::LinkParams;

/// Frames one direction holds at most (in flight through the delay or waiting for the rate).
pub const QUEUE_LIMIT: usize = 1000;

/// What one direction did, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// Frames offered.
    pub frames: u64,
    /// Frames dropped by the loss probability.
    pub lost: u64,
    /// Extra copies queued by the duplication probability.
    pub duplicated: u64,
    /// Frames dropped because the queue was full.
    pub overflowed: u64,
    /// Frames released.
    pub released: u64,
    /// Bytes released.
    pub released_bytes: u64,
}

/// One direction of a shaped port.
#[derive(Debug)]
pub struct Direction {
    params: LinkParams,
    /// When the link finishes sending what it has accepted (rate only).
    busy_until: Option<Instant>,
    /// Release time of the last frame queued: no frame leaves before it.
    last_release: Option<Instant>,
    queue: VecDeque<(Instant, Vec<u8>)>,
    counters: DirectionCounters,
}

impl Direction {
    pub fn new(params: LinkParams) -> Direction {
        Direction {
            params,
            busy_until: None,
            last_release: None,
            queue: VecDeque::new(),
            counters: DirectionCounters::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// New parameters apply to frames offered from now on; queued frames keep their times.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    pub fn counters(&self) -> DirectionCounters {
        self.counters
    }

    /// A frame arrived at `now`.
    pub fn offer(&mut self, frame: Vec<u8>, now: Instant, rng: &mut impl Rng) {
        self.counters.frames += 1;
        if self.params.loss > 0.0 && rng.gen::<f64>() < self.params.loss {
            self.counters.lost += 1;
            return;
        }
        let copies = if self.params.duplicate > 0.0 && rng.gen::<f64>() < self.params.duplicate {
            2
        } else {
            1
        };
        let len = frame.len();
        let mut frame = Some(frame);
        for copy in 0..copies {
            if self.queue.len() >= QUEUE_LIMIT {
                self.counters.overflowed += 1;
                return;
            }
            let sent = match self.params.rate {
                Some(bits) => {
                    let start = self.busy_until.map_or(now, |b| b.max(now));
                    let wire = Duration::from_secs_f64(len as f64 * 8.0 / bits as f64);
                    self.busy_until = Some(start + wire);
                    start + wire
                }
                None => now,
            };
            let jitter = if self.params.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.params.jitter.mul_f64(rng.gen::<f64>())
            };
            let mut at = sent + self.params.delay + jitter;
            if let Some(last) = self.last_release {
                at = at.max(last);
            }
            self.last_release = Some(at);
            if copy == 1 {
                self.counters.duplicated += 1;
            }
            let bytes = if copy + 1 == copies {
                frame.take()
            } else {
                frame.clone()
            };
            self.queue.push_back((at, bytes.unwrap_or_default()));
        }
    }

    /// When the next frame is due, if any is queued.
    pub fn next_release(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// The next frame due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = self.queue.pop_front()?;
            self.counters.released += 1;
            self.counters.released_bytes += frame.len() as u64;
            return Some(frame);
        }
        None
    }

    /// Frames queued.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn drain(d: &mut Direction) -> Vec<(Instant, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(at) = d.next_release() {
            out.push((at, d.pop_due(at).unwrap()));
        }
        out
    }

    #[test]
    fn a_delay_holds_each_frame_exactly_that_long() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut d = Direction::new(LinkParams::ms(20));
        d.offer(vec![1], t0, &mut rng);
        d.offer(vec![2], t0 + Duration::from_millis(5), &mut rng);
        assert_eq!(d.next_release(), Some(t0 + Duration::from_millis(20)));
        assert_eq!(d.pop_due(t0 + Duration::from_millis(19)), None);
        let out = drain(&mut d);
        assert_eq!(out[0], (t0 + Duration::from_millis(20), vec![1]));
        assert_eq!(out[1], (t0 + Duration::from_millis(25), vec![2]));
        assert_eq!(d.counters().released, 2);
    }

    #[test]
    fn jitter_spreads_frames_but_never_reorders_them() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(2);
        let mut d = Direction::new(LinkParams::ms(10).jitter(Duration::from_millis(8)));
        for i in 0..500u32 {
            d.offer(
                i.to_be_bytes().to_vec(),
                t0 + Duration::from_micros(u64::from(i) * 500),
                &mut rng,
            );
        }
        let out = drain(&mut d);
        let order: Vec<u32> = out
            .iter()
            .map(|(_, f)| u32::from_be_bytes(f[..4].try_into().unwrap()))
            .collect();
        assert_eq!(order, (0..500).collect::<Vec<_>>());
        let extra: Vec<Duration> = out
            .iter()
            .enumerate()
            .map(|(i, (at, _))| {
                *at - (t0 + Duration::from_micros(i as u64 * 500)) - Duration::from_millis(10)
            })
            .collect();
        assert!(
            extra.iter().all(|e| *e < Duration::from_millis(8)),
            "{extra:?}"
        );
        assert!(
            extra.iter().any(|e| *e > Duration::from_millis(4)),
            "no spread: {extra:?}"
        );
    }

    #[test]
    fn loss_and_duplication_follow_their_probabilities() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = Direction::new(LinkParams {
            duplicate: 0.05,
            ..LinkParams::default().loss(0.10)
        });
        for i in 0..10_000u64 {
            d.offer(vec![0; 100], t0 + Duration::from_millis(i), &mut rng);
            while d.pop_due(t0 + Duration::from_millis(i)).is_some() {}
        }
        let c = d.counters();
        assert_eq!(c.frames, 10_000);
        assert!((900..1100).contains(&c.lost), "{c:?}");
        assert!((380..520).contains(&c.duplicated), "{c:?}");
        assert_eq!(c.released, c.frames - c.lost + c.duplicated);
    }

    #[test]
    fn a_rate_spaces_frames_by_their_size_and_a_full_queue_drops_at_the_tail() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(4);
        // 1 Mbit/s: a 1250-byte frame takes 10 ms on the wire.
        let mut d = Direction::new(LinkParams {
            rate: Some(1_000_000),
            ..LinkParams::ms(5)
        });
        for _ in 0..QUEUE_LIMIT + 10 {
            d.offer(vec![0; 1250], t0, &mut rng);
        }
        assert_eq!(d.counters().overflowed, 10);
        assert_eq!(d.queued(), QUEUE_LIMIT);
        let out = drain(&mut d);
        assert_eq!(out[0].0, t0 + Duration::from_millis(15));
        assert_eq!(out[1].0, t0 + Duration::from_millis(25));
        assert_eq!(out[999].0, t0 + Duration::from_millis(10_005));
    }

    #[test]
    fn new_parameters_apply_to_later_frames_only() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(5);
        let mut d = Direction::new(LinkParams::ms(40));
        d.offer(vec![1], t0, &mut rng);
        d.set_params(LinkParams::ms(5));
        d.offer(vec![2], t0 + Duration::from_millis(1), &mut rng);
        let out = drain(&mut d);
        // The second frame would be due at 6 ms, but it does not overtake the first.
        assert_eq!(out[0].0, t0 + Duration::from_millis(40));
        assert_eq!(out[1].0, t0 + Duration::from_millis(40));
        d.offer(vec![3], t0 + Duration::from_millis(100), &mut rng);
        assert_eq!(d.next_release(), Some(t0 + Duration::from_millis(105)));
    }
}
