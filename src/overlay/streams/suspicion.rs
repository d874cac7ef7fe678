//! Suspicion: a stream that flows is its own heartbeat. It owns the stream's measured chunk
//! spacing ([`Spacing`]: a peak of the gaps between the parent's chunks that follows a rise at
//! once and decays slowly) and what a parent's silence well beyond that spacing sets off: the
//! parent is *suspected*, a make-before-break switch starts towards the best other parent
//! whose route does not run through it, and the node is asked to probe the link fast
//! ([`StreamAction::Probe`]). A dead link (a hung relay, a silent cut) then costs the stream
//! about the suspicion time, not the link's dead timer; the switch completes as soon as the
//! new parent brings a chunk newer than the last forwarded (the gap is accepted: the old path
//! is silent). If the old parent speaks first (a scheduler hiccup, a stall of the source that
//! every path shares) the suspicion is cleared and the switch target let go: no switch
//! happens, nothing is counted but the suspicion. Redundant streams do not suspect: their
//! merge already rides through the death of either feed.

use std::time::{Duration, Instant};

use tracing::info;

use super::choice::*;
use super::stream::*;
use super::*;

/// Gaps measured before the spacing is trusted; until then only the link's dead timer
/// watches the parent.
pub(super) const MIN_SAMPLES: u32 = 16;
/// Time constant of the peak's decay: a burst of wide gaps is remembered for tens of
/// seconds, so a jittery source does not raise a suspicion at each of its bursts.
const PEAK_DECAY: Duration = Duration::from_secs(10);

/// The measured spacing of a stream's chunks (see module docs). Pure: fed arrival instants.
#[derive(Debug, Clone, Default)]
pub(super) struct Spacing {
    /// Peak gap, µs: `max(gap, peak · e^(-gap/τ))`.
    peak_us: f64,
    samples: u32,
    prev: Option<Instant>,
}

impl Spacing {
    /// A chunk from the parent arrived at `now`.
    pub(super) fn sample(&mut self, now: Instant) {
        if let Some(prev) = self.prev {
            let gap = now.saturating_duration_since(prev);
            let decay = (-gap.as_secs_f64() / PEAK_DECAY.as_secs_f64()).exp();
            self.peak_us = (gap.as_micros() as f64).max(self.peak_us * decay);
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

    /// How long the parent may be silent before it is suspected: `factor ×` the peak gap,
    /// at least the floor, at most the stall timeout; `None` while too few gaps were seen or
    /// when suspicion is off.
    pub(super) fn suspect_after(&self, cfg: &StreamConfig) -> Option<Duration> {
        if !cfg.suspect || self.samples < MIN_SAMPLES {
            return None;
        }
        let t = self.peak().mul_f64(cfg.suspect_factor);
        Some(t.max(cfg.suspect_floor).min(cfg.stall_timeout))
    }
}

impl Stream {
    /// When the parent becomes suspect if it stays silent, if suspicion applies.
    pub(super) fn suspect_at(&self, cfg: &StreamConfig) -> Option<Instant> {
        if self.source.is_some() || self.second.is_some() || self.consumers() == 0 {
            return None;
        }
        let parent = self.parent.as_ref().filter(|p| !p.suspected)?;
        Some(parent.last_data? + self.spacing.suspect_after(cfg)?)
    }
}

impl Streams {
    /// At a deadline: suspect a parent silent beyond the stream's own spacing (module docs).
    pub(super) fn check_suspicion(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if !st.suspect_at(ctx.cfg).is_some_and(|at| at <= ctx.now) {
            return;
        }
        let peak = st.spacing.peak();
        let parent = st.parent.as_mut().expect("suspect_at needs a parent");
        parent.suspected = true;
        let name = parent.name.clone();
        let silent = ctx
            .now
            .saturating_duration_since(parent.last_data.unwrap_or(parent.since));
        st.spacing.restart();
        counters_of(&mut self.counters, video).suspicions += 1;
        if let Some(n) = ctx.neighbours.by_name(&name) {
            let link = n.link;
            ctx.push(StreamAction::Probe { link });
        }
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
        info!(
            video, parent = %name, silent_ms = silent.as_millis() as u64,
            peak_gap_ms = peak.as_millis() as u64, to = ?target,
            "parent stalled: suspected, make-before-break to another parent and a fast probe"
        );
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
        info!(video, parent = %name, abandoned_switch = by_suspicion, "suspected parent spoke again: suspicion cleared");
        if by_suspicion {
            self.abandon_switch(ctx, video, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;

    const GAP: Duration = Duration::from_millis(10);

    #[test]
    fn the_peak_follows_a_rise_at_once_and_decays_slowly() {
        let t0 = Instant::now();
        let mut s = Spacing::default();
        let cfg = StreamConfig::default();
        for i in 0..=MIN_SAMPLES {
            assert_eq!(s.suspect_after(&cfg), None, "after {i} gaps");
            s.sample(t0 + GAP * i);
        }
        assert_eq!(s.peak(), GAP);
        // The floor rules over a small spacing.
        assert_eq!(s.suspect_after(&cfg), Some(cfg.suspect_floor));
        let t1 = t0 + GAP * MIN_SAMPLES + Duration::from_millis(40);
        s.sample(t1);
        assert_eq!(s.peak(), Duration::from_millis(40));
        assert_eq!(
            s.suspect_after(&cfg),
            Some(Duration::from_millis(40).mul_f64(cfg.suspect_factor))
        );
        // A second of 10 ms gaps later the peak has decayed by about e^(-1/10), not more.
        let mut t = t1;
        for _ in 0..100 {
            t += GAP;
            s.sample(t);
        }
        let p = s.peak().as_secs_f64() * 1000.0;
        assert!((35.0..37.0).contains(&p), "peak {p} ms");
        // A restart leaves the gap across it unmeasured.
        s.restart();
        s.sample(t + Duration::from_secs(5));
        assert!(s.peak() < Duration::from_millis(40));
        // Never beyond the stall timeout; off when suspicion is off.
        s.sample(t + Duration::from_secs(7));
        assert_eq!(s.suspect_after(&cfg), Some(cfg.stall_timeout));
        let off = StreamConfig {
            suspect: false,
            ..StreamConfig::default()
        };
        assert_eq!(s.suspect_after(&off), None);
    }

    /// B fed by A over a flowing stream; X offers the same server too.
    fn flowing() -> (Harness, u64) {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &[], "A", 5, &["v"]);
        h.flood("S", &[], "X", 8, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        let mut seq = 0;
        for _ in 0..=MIN_SAMPLES {
            seq += 1;
            h.chunk("A", "v", 1, seq);
            h.advance(GAP);
        }
        h.drain();
        (h, seq)
    }

    #[test]
    fn a_silent_parent_is_suspected_exactly_and_the_stream_moves_on_the_first_newer_chunk() {
        let (mut h, seq) = flowing();
        let after = h.cfg.suspect_floor;
        // A spoke one gap ago.
        assert_eq!(h.next_deadline_in(), Some(after - GAP));
        h.expire(after - GAP - Duration::from_millis(1));
        assert_eq!(h.drain(), (vec![], vec![]));
        h.expire(Duration::from_millis(1));
        let (sent, _) = h.drain();
        assert_eq!(sent, [("X".into(), "video_request")]);
        assert_eq!(h.probes(), ["A"]);
        // X brings a chunk beyond a hole: the old path is silent, the gap is accepted.
        h.chunk("X", "v", 1, seq + 3);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, seq + 3)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.suspicions, c.switches, c.gap_chunks), (1, 1, 2));
    }

    #[test]
    fn a_suspected_parent_that_speaks_again_keeps_the_stream_and_nothing_switches() {
        let (mut h, seq) = flowing();
        h.expire(h.cfg.suspect_floor);
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
        h.expire(h.cfg.suspect_floor);
        assert_eq!(h.drain().0, [("X".into(), "video_request")]);
    }

    #[test]
    fn no_other_parent_means_a_probe_only_and_the_old_rule_suspects_nothing() {
        let mut h = Harness::new("B");
        h.link("A");
        h.flood("S", &[], "A", 5, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for seq in 1..=u64::from(MIN_SAMPLES) + 1 {
            h.chunk("A", "v", 1, seq);
            h.advance(GAP);
        }
        h.drain();
        h.expire(h.cfg.suspect_floor);
        assert_eq!(h.drain(), (vec![], vec![]));
        assert_eq!(h.probes(), ["A"]);
        // Suspected once: no deadline until it speaks again.
        assert_eq!(h.next_deadline_in(), None);

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
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for seq in 1..=u64::from(MIN_SAMPLES) + 1 {
            h.chunk("A", "v", 1, seq);
            h.advance(GAP);
        }
        h.drain();
        h.expire(h.cfg.suspect_floor);
        assert_eq!(h.drain().0, []);
        assert_eq!(h.probes(), ["A"]);
    }
}
