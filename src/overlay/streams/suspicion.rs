//! Suspicion: a stream that flows is its own heartbeat. It owns the stream's measured chunk
//! spacing ([`Spacing`]: a mean of the gaps between the parent's chunks, and a peak that
//! follows a rise at once and decays slowly) and what a parent's silence sets off, in two
//! steps, the way BFD's echo works:
//! - *doubt*: silent for twice the mean gap (at least `doubt_floor`), the parent's link is
//!   pinged once ([`StreamAction::Probe`]); a live parent in a natural pause of its stream
//!   answers within a round trip, and the doubt ends there;
//! - *suspicion*: the probe unanswered for `probe_wait` plus the link's round trip (nothing
//!   at all heard on the link) and the silence longer than the stream's peak gap (a pause it
//!   already came through is no sign of death: a saturated machine makes such pauses), or
//!   the stream silent for three times its peak gap (at least [`MEND_TIME`]) even though the
//!   link answers (a stall upstream the parent cannot mend): a make-before-break switch
//!   starts towards the best other parent whose route does not run through the suspect.
//!   Only when there is none and the parent is a relay is its link probed fast
//!   ([`StreamAction::Suspect`]: dead after a few unanswered probes), since its death is what
//!   sends us to the grandfather; otherwise the link keeps its own dead timer, so a live
//!   parent descheduled for a while on a saturated machine is never cut off early.
//!
//! A parent left because it stalled is *damped*: not switched back to, however good its
//! delay looks, for `stall_damping` (10 s), doubled for each further stall within two
//! minutes (route-flap damping): a lossy link stalls its TCP stream again and again while its
//! floods, rarely delayed, keep its delay low. It can still be chosen when it is needed
//! (a failover). From a parent's second stall in that memory, the switch its suspicion started
//! is not let go when it speaks again (such a parent always catches up first): it goes on as
//! an ordinary make-before-break switch.
//!
//! Both waits are stretched by twice how late our own deadlines have fired lately
//! ([`Lateness`], at most 500 ms): on a saturated machine every process waits for the CPU,
//! the parent too.
//!
//! The switch completes as soon as the new parent brings a chunk newer than the last
//! forwarded (the gap is accepted: the old path is silent). If the old parent speaks first (a
//! scheduler hiccup, a stall of the source that every path shares) the suspicion is cleared
//! and the switch target let go: no switch happens. Redundant streams do not suspect: their
//! merge already rides through the death of either feed.

use std::time::{Duration, Instant};

use tracing::info;

pub(crate) use crate::lateness::Lateness;

use super::choice::*;
use super::stream::*;
use super::*;

impl Streams {
    /// `name` stalled as our parent and we move away: it is not switched back to for the
    /// damping period, doubled for each stall since the last within [`STALL_MEMORY`]
    /// (at most 32 times). Returns the period (zero: damping is off).
    fn damp(&mut self, ctx: &Ctx<'_>, name: &str) -> Duration {
        let base = ctx.cfg.stall_damping;
        if base.is_zero() {
            return Duration::ZERO;
        }
        let now = ctx.now;
        let strikes = match self.damped.get(name) {
            Some(d) if now.saturating_duration_since(d.last) < STALL_MEMORY => {
                (d.strikes + 1).min(6)
            }
            _ => 1,
        };
        let period = base * (1 << (strikes - 1));
        self.damped.insert(
            name.to_string(),
            Damping {
                strikes,
                last: now,
                until: now + period,
                held: false,
            },
        );
        period
    }

    /// Whether a switch to `name` is held back now because it stalled lately; the first
    /// hold of a period is counted for `video`.
    pub(super) fn damped(&mut self, now: Instant, video: &str, name: &str) -> bool {
        let Some(d) = self.damped.get_mut(name) else {
            return false;
        };
        if !d.holds(now) {
            if now.saturating_duration_since(d.last) >= STALL_MEMORY {
                self.damped.remove(name);
            }
            return false;
        }
        if !std::mem::replace(&mut d.held, true) {
            counters_of(&mut self.counters, video).damped_switches += 1;
            info!(video, neighbour = %name, strikes = d.strikes,
                  for_ms = d.until.saturating_duration_since(now).as_millis() as u64,
                  "not switching back to a parent that stalled lately");
        }
        true
    }
}

/// Gaps measured before the spacing is trusted; until then only the link's dead timer
/// watches the parent.
pub(super) const MIN_SAMPLES: u32 = 16;
/// Time constant of the peak's decay: a burst of wide gaps is remembered for tens of
/// seconds, so a jittery source does not raise a suspicion at each of its bursts.
const PEAK_DECAY: Duration = Duration::from_secs(10);
/// A parent that answers its probe is left this long at least to mend a stall upstream of
/// it (its own suspicion does that in about a tenth of it) before its children move too:
/// a stall high in the tree must not move every subtree under it.
pub(super) const MEND_TIME: Duration = Duration::from_millis(250);

/// Weight of a new gap in the mean.
const MEAN_NEW: f64 = 1.0 / 16.0;
/// The measured spacing of a stream's chunks (see module docs). Pure: fed arrival instants.
#[derive(Debug, Clone, Default)]
pub(super) struct Spacing {
    /// Peak gap, µs: `max(gap, peak · e^(-gap/τ))`.
    peak_us: f64,
    /// Mean gap, µs (EWMA).
    mean_us: f64,
    samples: u32,
    prev: Option<Instant>,
}

/// Where a parent stands in the two steps (module docs); back to `Trusted` at its next chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Doubt {
    #[default]
    Trusted,
    /// Probed at `at`; unanswered so far; suspected if still unanswered at `until`.
    Probed { at: Instant, until: Instant },
    /// The link answered the probe: alive, only the stream pauses.
    Answered,
}

impl Spacing {
    /// A chunk from the parent arrived at `now`.
    pub(super) fn sample(&mut self, now: Instant) {
        if let Some(prev) = self.prev {
            let gap = now.saturating_duration_since(prev);
            let decay = (-gap.as_secs_f64() / PEAK_DECAY.as_secs_f64()).exp();
            let gap_us = gap.as_micros() as f64;
            self.peak_us = gap_us.max(self.peak_us * decay);
            self.mean_us = match self.samples {
                0 => gap_us,
                _ => self.mean_us + MEAN_NEW * (gap_us - self.mean_us),
            };
            self.samples = self.samples.saturating_add(1);
        }
        self.prev = Some(now);
    }

    /// The next gap is not a sample of the spacing (a new parent, a suspicion's silence):
    /// measuring starts again at the next chunk; the peak is kept.
    pub(super) fn restart(&mut self) {
        self.prev = None;
    }

    pub(super) fn peak(&self) -> Duration {
        Duration::from_micros(self.peak_us as u64)
    }

    pub(super) fn mean(&self) -> Duration {
        Duration::from_micros(self.mean_us as u64)
    }

    /// How long the parent may be silent before its link is probed: `doubt_factor ×` the
    /// mean gap, at least the floor, at most the suspicion time.
    pub(super) fn doubt_after(&self, cfg: &StreamConfig) -> Option<Duration> {
        let suspect = self.suspect_after(cfg)?;
        let t = self.mean().mul_f64(cfg.doubt_factor);
        Some(t.max(cfg.doubt_floor).min(suspect))
    }

    /// How long the parent may be silent before it is suspected even though its link
    /// answers: `factor ×` the peak gap, at least [`MEND_TIME`], at most the stall timeout;
    /// `None` while too few gaps were seen or when suspicion is off.
    pub(super) fn suspect_after(&self, cfg: &StreamConfig) -> Option<Duration> {
        if !cfg.suspect || self.samples < MIN_SAMPLES {
            return None;
        }
        let t = self.peak().mul_f64(cfg.suspect_factor);
        Some(t.max(MEND_TIME).min(cfg.stall_timeout))
    }
}

impl Stream {
    /// When the parent is next looked at if it stays silent (a probe to send, a probe's
    /// answer to check, or the silence that suspects it anyway), if suspicion applies.
    pub(super) fn suspect_at(&self, cfg: &StreamConfig, slack: Duration) -> Option<Instant> {
        if self.source.is_some() || self.second.is_some() || self.consumers() == 0 {
            return None;
        }
        let parent = self.parent.as_ref().filter(|p| !p.suspected)?;
        let last = parent.last_data?;
        let anyway = last + self.spacing.suspect_after(cfg)? + slack;
        Some(match parent.doubt {
            // A probe costs nothing: sent on time, whatever the machine's load.
            Doubt::Trusted => last + self.spacing.doubt_after(cfg)?,
            Doubt::Probed { until, .. } => (until + slack).min(anyway),
            Doubt::Answered => anyway,
        })
    }
}

impl Streams {
    /// At a deadline: doubt, then suspect, a parent silent beyond the stream's own spacing
    /// (module docs).
    pub(super) fn check_suspicion(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let slack = self.lateness.slack();
        if !st
            .suspect_at(ctx.cfg, slack)
            .is_some_and(|at| at <= ctx.now)
        {
            return;
        }
        let peak = st.spacing.peak();
        let anyway = st.spacing.suspect_after(ctx.cfg).map(|a| a + slack);
        let parent = st.parent.as_mut().expect("suspect_at needs a parent");
        let name = parent.name.clone();
        let silent = ctx
            .now
            .saturating_duration_since(parent.last_data.unwrap_or(parent.since));
        let link = ctx
            .neighbours
            .by_name(&name)
            .map(|n| (n.link, n.last_heard, n.rtt.unwrap_or_default()));
        if anyway.is_some_and(|a| silent < a) {
            match (parent.doubt, link) {
                (Doubt::Trusted, Some((link, _, rtt))) => {
                    // The answer needs a round trip, and the peer a moment to be scheduled.
                    // And a silence no longer than one this stream already came through
                    // (its peak gap) is no sign of death: on a saturated machine a live
                    // parent misses a ping's deadline now and then, and its stream shows
                    // such pauses.
                    let last = parent.last_data.unwrap_or(parent.since);
                    parent.doubt = Doubt::Probed {
                        at: ctx.now,
                        until: (ctx.now + ctx.cfg.probe_wait + rtt).max(last + peak),
                    };
                    ctx.push(StreamAction::Probe { link });
                    return;
                }
                (Doubt::Probed { at, .. }, Some((_, heard, _))) if heard >= at => {
                    parent.doubt = Doubt::Answered;
                    return;
                }
                // Unanswered (or no link at all: its loss is on its way).
                _ => {}
            }
        }
        let probe_unanswered = matches!(parent.doubt, Doubt::Probed { .. });
        // A parent that is the stream's own server has nobody above it to turn to.
        let has_grandfather = parent.server.as_deref() != Some(name.as_str());
        parent.suspected = true;
        st.spacing.restart();
        counters_of(&mut self.counters, video).suspicions += 1;
        let target = match &st.pending {
            // A switch already under way: it now completes as soon as its target delivers.
            Some(p) => Some(p.name.clone()),
            None => choose_avoiding(ctx, video, st, &name).map(|c| {
                let to = c.neighbour.clone();
                self.start_switch(ctx, video, c);
                if let Some(p) = self.streams.get_mut(video).and_then(|s| s.pending.as_mut()) {
                    p.by_suspicion = true;
                }
                to
            }),
        };
        let damped_for = target.as_ref().map(|_| self.damp(ctx, &name));
        // Declaring the link dead early only helps when the stream cannot move otherwise:
        // with a switch target the make-before-break already moves it, and the link's own
        // dead timer is enough; without one, the link's death is what sends us to the
        // grandfather. A live parent on a saturated machine is then never cut off early
        // just because it was descheduled for a few hundred milliseconds.
        let fast_death = target.is_none() && has_grandfather;
        if let Some((link, _, _)) = link.filter(|_| fast_death) {
            ctx.push(StreamAction::Suspect { link, grace: slack });
        }
        info!(
            video, parent = %name, silent_ms = silent.as_millis() as u64,
            peak_gap_ms = peak.as_millis() as u64, slack_ms = slack.as_millis() as u64,
            probe_unanswered, to = ?target, fast_death,
            damped_ms = ?damped_for.map(|d| d.as_millis() as u64),
            "parent stalled: suspected"
        );
    }

    /// One of our deadlines, due at `due`, is handled at `now`: how late that was tells how
    /// slow the machine is ([`Lateness`]).
    pub fn deadline_handled(&mut self, now: Instant, due: Instant) {
        self.lateness.sample(now, due);
    }

    /// The suspected parent spoke again: the suspicion is cleared, and a switch it started
    /// is let go (the target was not at fault, so it is not held as refused).
    pub(super) fn clear_suspicion(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(parent) = st.parent.as_mut().filter(|p| p.suspected) else {
            return;
        };
        parent.suspected = false;
        let name = parent.name.clone();
        counters_of(&mut self.counters, video).suspicions_cleared += 1;
        let by_suspicion = st.pending.as_ref().is_some_and(|p| p.by_suspicion);
        // A parent that stalls again and again (a lossy link: each loss stalls its TCP stream
        // for a retransmission timeout, then it catches up) always speaks again first; from
        // its second stall within the memory the switch goes on as an ordinary
        // make-before-break one (it completes once the new parent has caught up, or at the
        // switch timeout).
        let repeated = self
            .damped
            .get(&name)
            .is_some_and(|d| d.strikes >= 2 && d.holds(ctx.now));
        let keep = by_suspicion && repeated;
        info!(video, parent = %name, abandoned_switch = by_suspicion && !keep, kept_switch = keep,
              "suspected parent spoke again: suspicion cleared");
        if keep {
            if let Some(p) = self.streams.get_mut(video).and_then(|s| s.pending.as_mut()) {
                p.by_suspicion = false;
            }
        } else if by_suspicion {
            self.abandon_switch(ctx, video, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{Harness, Sent};
    use super::*;

    const GAP: Duration = Duration::from_millis(10);

    #[test]
    fn the_mean_and_peak_gaps_set_the_doubt_and_the_suspicion() {
        let t0 = Instant::now();
        let mut s = Spacing::default();
        let cfg = StreamConfig::default();
        for i in 0..=MIN_SAMPLES {
            assert_eq!(s.suspect_after(&cfg), None, "after {i} gaps");
            s.sample(t0 + GAP * i);
        }
        assert_eq!((s.mean(), s.peak()), (GAP, GAP));
        // The floors rule over a small spacing.
        assert_eq!(s.doubt_after(&cfg), Some(cfg.doubt_floor));
        assert_eq!(s.suspect_after(&cfg), Some(MEND_TIME));
        // A wide gap: the peak follows at once, the mean a sixteenth of the way.
        let t1 = t0 + GAP * MIN_SAMPLES + Duration::from_millis(100);
        s.sample(t1);
        assert_eq!(s.peak(), Duration::from_millis(100));
        assert_eq!(s.suspect_after(&cfg), Some(Duration::from_millis(300)));
        let mean = s.mean().as_secs_f64() * 1e3;
        assert!((15.6..15.7).contains(&mean), "mean {mean} ms");
        assert_eq!(s.doubt_after(&cfg), Some(s.mean() * 2));
        // A second of 10 ms gaps later the peak has decayed by about e^(-1/10), not more.
        let mut t = t1;
        for _ in 0..100 {
            t += GAP;
            s.sample(t);
        }
        let p = s.peak().as_secs_f64() * 1e3;
        assert!((89.0..92.0).contains(&p), "peak {p} ms");
        // A restart leaves the gap across it unmeasured.
        s.restart();
        s.sample(t + Duration::from_secs(5));
        assert!(s.peak() < Duration::from_millis(100));
        // Never beyond the stall timeout; off when suspicion is off.
        s.sample(t + Duration::from_secs(7));
        assert_eq!(s.suspect_after(&cfg), Some(cfg.stall_timeout));
        let off = StreamConfig {
            suspect: false,
            ..StreamConfig::default()
        };
        assert_eq!((s.suspect_after(&off), s.doubt_after(&off)), (None, None));
    }

    /// B subscribes and A feeds it a chunk every 10 ms, enough to trust the spacing; returns
    /// the last seq.
    fn subscribe_and_feed_from_a(h: &mut Harness) -> u64 {
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        let last = u64::from(MIN_SAMPLES) + 1;
        for seq in 1..=last {
            h.chunk("A", "v", 1, seq);
            h.advance(GAP);
        }
        h.drain();
        last
    }

    /// B fed by A over a flowing stream (a chunk every 10 ms); X offers the same server too.
    fn flowing() -> (Harness, u64) {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &[], "A", 5, &["v"]);
        h.flood("S", &[], "X", 8, &["v"]);
        let seq = subscribe_and_feed_from_a(&mut h);
        (h, seq)
    }

    /// Doubt A exactly (it spoke one gap ago): a probe, nothing else.
    fn doubt_a(h: &mut Harness) {
        let doubt = h.cfg.doubt_floor - GAP;
        assert_eq!(h.next_deadline_in(), Some(doubt));
        h.expire(doubt - Duration::from_millis(1));
        assert_eq!(h.drain(), (vec![], vec![]));
        h.expire(Duration::from_millis(1));
        assert_eq!(h.drain(), (vec![], vec![]));
        assert_eq!(h.probes(), [("probe", "A".to_string())]);
        assert_eq!(h.next_deadline_in(), Some(h.cfg.probe_wait));
    }

    #[test]
    fn an_unanswered_probe_suspects_the_parent_and_the_first_newer_chunk_moves_the_stream() {
        let (mut h, seq) = flowing();
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        let (sent, _) = h.drain();
        assert_eq!(sent, [("X".into(), "video_request")]);
        // The switch moves the stream: A's link is left to its own dead timer.
        assert!(h.probes().is_empty());
        // X brings a chunk beyond a hole: the old path is silent, the gap is accepted.
        h.chunk("X", "v", 1, seq + 3);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, seq + 3)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.suspicions, c.switches, c.gap_chunks), (1, 1, 2));
        assert_eq!(c.suspected_switches, 1);
    }

    /// Floods say A (5 ms) beats X (8 ms) again; the node looks for a better parent.
    fn a_looks_better(h: &mut Harness) -> Sent {
        h.flood("S", &[], "A", 5, &["v"]);
        h.flood("S", &[], "X", 8, &["v"]);
        h.run(|s, ctx| s.routes_updated(ctx));
        h.drain().0
    }

    /// A stalls (an unanswered probe) and the stream moves to X, with `damping`.
    fn moved_from_a_to_x(damping: Duration) -> Harness {
        let (mut h, seq) = flowing();
        h.cfg.stall_damping = damping;
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        h.drain();
        h.chunk("X", "v", 1, seq + 1);
        h.drain();
        assert_eq!(h.streams.parent("v"), Some("X"));
        h
    }

    #[test]
    fn a_parent_left_for_a_stall_is_not_switched_back_to_until_its_damping_ends() {
        let mut h = moved_from_a_to_x(StreamConfig::default().stall_damping);
        // A's delay still looks better (a lossy link delays few floods), but it stalled: held.
        for _ in 0..3 {
            h.advance(Duration::from_secs(1));
            assert!(a_looks_better(&mut h).is_empty());
        }
        assert_eq!(
            h.streams.counters("v").unwrap().damped_switches,
            1,
            "counted once"
        );
        // After the 10 s of damping the delay rules again.
        h.advance(h.cfg.stall_damping);
        assert_eq!(a_looks_better(&mut h), [("A".into(), "video_request")]);
        // With damping off (the old rule) the stream goes back at once.
        let mut h = moved_from_a_to_x(Duration::ZERO);
        h.advance(Duration::from_secs(1));
        assert_eq!(a_looks_better(&mut h), [("A".into(), "video_request")]);
    }

    #[test]
    fn past_a_damped_neighbour_a_better_third_parent_is_still_taken() {
        let mut h = moved_from_a_to_x(StreamConfig::default().stall_damping);
        // Y (6 ms) appears: A (5 ms) is damped, but Y beats X (8 ms) by the margin.
        h.link("Y");
        h.advance(Duration::from_secs(1));
        h.flood("S", &[], "Y", 6, &["v"]);
        assert_eq!(a_looks_better(&mut h), [("Y".into(), "video_request")]);
    }

    #[test]
    fn a_parent_that_stalls_again_soon_is_damped_twice_as_long() {
        let (mut h, _) = flowing();
        let stall = |h: &mut Harness| h.run(|s, ctx| s.damp(ctx, "A"));
        assert_eq!(stall(&mut h), Duration::from_secs(10));
        h.advance(Duration::from_secs(30));
        assert_eq!(stall(&mut h), Duration::from_secs(20));
        h.advance(Duration::from_secs(30));
        assert_eq!(stall(&mut h), Duration::from_secs(40));
        for _ in 0..5 {
            h.advance(Duration::from_secs(30));
            stall(&mut h);
        }
        assert_eq!(stall(&mut h), Duration::from_secs(320), "at most 32 times");
        // Quiet for longer than the memory: it starts afresh.
        h.advance(STALL_MEMORY + Duration::from_secs(320));
        assert_eq!(stall(&mut h), Duration::from_secs(10));
    }

    #[test]
    fn late_deadlines_stretch_the_suspicion() {
        // A deadline handled 30 ms late: the unanswered probe suspects 60 ms later.
        let (mut h, _) = flowing();
        let now = h.now;
        h.streams
            .deadline_handled(now, now - Duration::from_millis(30));
        // The probe itself is not delayed.
        assert_eq!(h.next_deadline_in(), Some(h.cfg.doubt_floor - GAP));
        h.expire(h.cfg.doubt_floor - GAP);
        assert_eq!(h.probes(), [("probe", "A".to_string())]);
        let slack = Duration::from_millis(60);
        assert_eq!(h.next_deadline_in(), Some(h.cfg.probe_wait + slack));
        h.expire(h.cfg.probe_wait);
        assert!(h.probes().is_empty());
        assert_eq!(h.drain(), (vec![], vec![]));
        h.expire(slack);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
    }

    #[test]
    fn an_unanswered_probe_waits_out_a_pause_the_stream_already_came_through() {
        let (mut h, seq) = flowing();
        // One pause of 80 ms that the stream came through (a hiccup of a loaded machine).
        let pause = Duration::from_millis(80);
        h.advance(pause - GAP);
        h.chunk("A", "v", 1, seq + 1);
        h.advance(GAP);
        h.chunk("A", "v", 1, seq + 2);
        h.drain();
        h.probes();
        // Silent again: the probe goes out at the doubt as before...
        let doubt = h.next_deadline_in().unwrap();
        h.expire(doubt);
        assert_eq!(h.probes(), [("probe", "A".to_string())]);
        // ...but its deadline passing is no suspicion while the silence is within the peak.
        let peak = h.streams.streams["v"].spacing.peak();
        assert!(peak > pause - GAP && doubt + h.cfg.probe_wait < peak);
        assert_eq!(h.next_deadline_in(), Some(peak - doubt));
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain(), (vec![], vec![]));
        assert!(h.probes().is_empty());
        h.expire(peak - doubt - h.cfg.probe_wait);
        let (sent, _) = h.drain();
        assert_eq!(sent, [("X".into(), "video_request")]);
    }

    #[test]
    fn the_probe_waits_a_round_trip_more_on_a_slow_link() {
        let (mut h, _) = flowing();
        // A round trip of 40 ms measured on A's link (the token is the ping's send time in
        // µs since the table started, which is when the harness did).
        let link = h.neighbours.by_name("A").unwrap().link;
        let since_start = (GAP * (MIN_SAMPLES + 1)).as_micros() as u64;
        h.neighbours.handle_pong(h.now, link, since_start - 40_000);
        assert_eq!(
            h.neighbours.by_name("A").unwrap().rtt,
            Some(Duration::from_millis(40))
        );
        h.expire(h.cfg.doubt_floor - GAP);
        assert_eq!(h.probes(), [("probe", "A".to_string())]);
        assert_eq!(
            h.next_deadline_in(),
            Some(h.cfg.probe_wait + Duration::from_millis(40))
        );
    }

    #[test]
    fn an_answered_probe_waits_for_the_mend_time_then_suspects_anyway() {
        let (mut h, _) = flowing();
        doubt_a(&mut h);
        // The pong: the link lives, only the stream pauses.
        let link = h.neighbours.by_name("A").unwrap().link;
        h.advance(Duration::from_millis(1));
        h.neighbours.heard(h.now, link);
        let silent = h.cfg.doubt_floor + Duration::from_millis(1);
        assert_eq!(
            h.next_deadline_in(),
            Some(h.cfg.probe_wait - Duration::from_millis(1))
        );
        h.expire(h.cfg.probe_wait - Duration::from_millis(1));
        assert_eq!(h.drain(), (vec![], vec![]));
        assert_eq!(h.probes(), []);
        let silent = silent + h.cfg.probe_wait - Duration::from_millis(1);
        assert_eq!(h.next_deadline_in(), Some(MEND_TIME - silent));
        h.expire(MEND_TIME - silent);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
    }

    #[test]
    fn a_suspected_parent_that_speaks_again_keeps_the_stream_and_nothing_switches() {
        let (mut h, seq) = flowing();
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
        // A was only slow: it speaks before X brought anything.
        h.chunk("A", "v", 1, seq + 1);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, seq + 1)]);
        assert_eq!(sent, [("X".into(), "video_cancel")]);
        assert_eq!(h.streams.parent("v"), Some("A"));
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.suspicions, c.suspicions_cleared, c.switches), (1, 1, 0));
        // X is not held as refused: the next suspicion may ask it at once.
        h.chunk("A", "v", 1, seq + 2);
        h.drain();
        h.expire(h.cfg.doubt_floor);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
    }

    #[test]
    fn a_parent_that_stalls_again_and_speaks_first_is_still_left_make_before_break() {
        let (mut h, seq) = flowing();
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
        // First stall: A speaks first, the switch is let go (a hiccup is forgiven).
        h.chunk("A", "v", 1, seq + 1);
        assert_eq!(h.drain().0, [("X".into(), "video_cancel")]);
        // Second stall soon after (a lossy link): A speaks first again, but this time the
        // switch goes on and completes at the switch timeout (X's path lags behind A's).
        h.chunk("A", "v", 1, seq + 2);
        h.drain();
        h.expire(h.cfg.doubt_floor);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
        h.chunk("A", "v", 1, seq + 3);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, seq + 3)]);
        assert!(sent.is_empty(), "the switch to X stays: {sent:?}");
        h.chunk("X", "v", 1, seq + 2);
        h.chunk("A", "v", 1, seq + 4);
        h.drain();
        h.expire(h.cfg.switch_timeout);
        let (sent, _) = h.drain();
        assert!(sent.contains(&("A".into(), "video_cancel")), "{sent:?}");
        assert_eq!(h.streams.parent("v"), Some("X"));
        let c = h.streams.counters("v").unwrap();
        // (A silent again during the 2 s is suspected a third time: the switch under way
        // then completes at X's next chunk, here the timeout came first.)
        assert_eq!((c.suspicions_cleared, c.switches), (2, 1));
        assert!(c.suspicions >= 2);
    }

    #[test]
    fn without_another_parent_a_relay_is_probed_fast_and_the_old_rule_suspects_nothing() {
        // A relays S's stream and nobody else offers it: only A's death (declared fast by
        // the probes) sends B to its grandfather.
        let mut h = Harness::new("B");
        h.link("A");
        h.flood("S", &[], "A", 5, &["v"]);
        subscribe_and_feed_from_a(&mut h);
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain(), (vec![], vec![]));
        assert_eq!(h.probes(), [("suspect", "A".to_string())]);
        // Suspected once: no deadline until it speaks again.
        assert_eq!(h.next_deadline_in(), None);
        assert_eq!(h.streams.counters("v").unwrap().suspicions, 1);

        // S itself feeds B: there is nobody above it, so its link keeps its own dead timer
        // (a server descheduled on a saturated machine is not cut off).
        let mut h = Harness::new("B");
        h.link("S");
        h.flood("S", &[], "S", 5, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for seq in 1..=u64::from(MIN_SAMPLES) + 1 {
            h.chunk("S", "v", 1, seq);
            h.advance(GAP);
        }
        h.drain();
        h.expire(h.cfg.doubt_floor - GAP);
        assert_eq!(h.probes(), [("probe", "S".to_string())]);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain(), (vec![], vec![]));
        assert!(h.probes().is_empty());
        assert_eq!(h.streams.counters("v").unwrap().suspicions, 1);

        let (mut h, _) = flowing();
        h.cfg.suspect = false;
        assert_eq!(h.next_deadline_in(), None);
    }

    #[test]
    fn the_other_parent_must_not_lead_through_the_suspect() {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &[], "A", 5, &["v"]);
        // X's route to S runs through A.
        h.flood("S", &["A"], "X", 8, &["v"]);
        subscribe_and_feed_from_a(&mut h);
        doubt_a(&mut h);
        h.expire(h.cfg.probe_wait);
        assert_eq!(h.drain().0, []);
        assert_eq!(h.probes(), [("suspect", "A".to_string())]);
    }
}
