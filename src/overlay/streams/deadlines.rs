//! Deadlines: the exact instant at which each stream next has something to do, and the work
//! done then. Nothing is scanned on a tick: a stream is looked at when an input touches it,
//! when the routes change, or when one of its own deadlines comes:
//! - a source without consumers stops when its linger ends;
//! - a refusal ends (the choice may take that neighbour again);
//! - a switch target that delivered nothing is abandoned, one that lags is taken anyway
//!   (`switch_timeout` after it was asked); an old parent silent for `stall_timeout` while
//!   the new one delivers ends the switch;
//! - a better candidate parent has stayed better for `switch_sustain`;
//! - the parent has been silent beyond the stream's own chunk spacing ([`super::suspicion`]);
//! - a hole in a redundant stream's merge has waited `stall_timeout`, or the last live feed
//!   that could fill it goes silent.
//!
//! A deadline is a wake-up, never an action: at it the same checks run as on any input, so a
//! deadline that moved (a feed that spoke again) costs one look and nothing else.

use std::time::{Duration, Instant};

use super::choice::metric;
use super::stream::Stream;
use super::*;

impl Stream {
    /// The nearest instant at which this stream has something to do, if any.
    /// `slack`: how much longer a silence must last on this machine (see
    /// [`super::suspicion::Lateness`]).
    pub(super) fn next_deadline(&self, cfg: &StreamConfig, slack: Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.consumers() == 0 {
            if let Some(until) = self.linger_until {
                at(until);
            }
        }
        if let Some(until) = self.refused.values().min() {
            at(*until);
        }
        if let Some(t) = self.suspect_at(cfg, slack) {
            at(t);
        }
        if let Some(p) = &self.pending {
            at(p.since + cfg.switch_timeout);
            if p.last_data.is_some() {
                match &self.parent {
                    Some(o) => at(o.last_data.unwrap_or(o.since) + cfg.stall_timeout),
                    // No old path at all: the switch completes at once.
                    None => at(p.since),
                }
            }
        } else if let Some((_, since)) = &self.better_since {
            at(*since + cfg.switch_sustain);
        }
        if let (Some(since), Some((e, s))) = (self.merge_since, self.last) {
            if !self.merge.is_empty() {
                at(since + cfg.stall_timeout);
                // The hole stays fillable while a feed that has not passed it yet is live;
                // when the last of them goes silent it is given up on. None: at once.
                let live_until = self
                    .upstreams()
                    .filter(|u| u.rx.is_some_and(|(ue, us)| ue == e && us <= s))
                    .map(|u| u.last_data.map_or(since, |t| t + cfg.stall_timeout))
                    .max();
                at(live_until.unwrap_or(since));
            }
        }
        next
    }
}

impl Streams {
    /// The nearest instant at which any stream has something to do, exactly; `None` when
    /// nothing waits.
    pub fn poll_timeout(&self, cfg: &StreamConfig) -> Option<Instant> {
        self.streams
            .values()
            .filter_map(|st| st.next_deadline(cfg, self.lateness.slack()))
            .min()
    }

    /// A deadline came (see module docs): expire refusals, stop lingering sources, give up
    /// holes, suspect silent parents, time out switches, and switch to a clearly better
    /// parent.
    pub(crate) fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in &videos {
            self.release_if_unused(ctx, video);
            let Some(st) = self.streams.get_mut(video) else {
                continue;
            };
            st.refused.retain(|_, until| *until > ctx.now);
            if !st.merge.is_empty() {
                self.drain_merge(ctx, video);
            }
            self.check_suspicion(ctx, video);
            self.check_switch(ctx, video);
        }
        self.reconcile(ctx);
    }

    /// The floods told us something new (a delay, a route, a server): look for a better
    /// parent, and feed waiting streams.
    pub(crate) fn routes_updated(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in &videos {
            let Some(st) = self.streams.get_mut(video) else {
                continue;
            };
            if let Some(p) = st.parent.as_mut() {
                let m = metric(ctx.routing, p.server.as_deref(), &p.name);
                if m.0.is_some() {
                    p.metric = m;
                }
            }
            if st.pending.is_none() {
                self.consider_switch(ctx, video);
            }
        }
        self.reconcile(ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::Harness;

    #[test]
    fn a_stream_that_flows_with_nothing_pending_has_no_deadline() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        assert_eq!(h.next_deadline_in(), None);
    }

    #[test]
    fn a_merge_hole_waits_exactly_until_its_last_live_feed_falls_silent() {
        let mut h = Harness::redundant();
        h.chunk("X", "v", 1, 1);
        let spoke = Duration::from_millis(100);
        h.advance(spoke);
        // A skips 2; X, which has not passed the hole, is live for stall_timeout after it
        // last spoke.
        h.chunk("A", "v", 1, 3);
        h.drain();
        assert_eq!(h.next_deadline_in(), Some(h.cfg.stall_timeout - spoke));
        h.expire(h.cfg.stall_timeout - spoke - Duration::from_millis(1));
        assert_eq!(h.drain().1, []);
        h.expire(Duration::from_millis(1));
        assert_eq!(h.drain().1, [(1, 3)]);
        assert_eq!(h.streams.counters("v").map(|c| c.gap_chunks), Some(1));
        assert_eq!(h.next_deadline_in(), None);
    }

    #[test]
    fn a_better_candidate_is_looked_at_again_exactly_when_its_sustain_ends() {
        let mut h = Harness::with_routes("B", &[("A", 50)], &["X"]);
        h.cfg.switch_sustain = Duration::from_millis(1500);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        h.flood("S", &[], "X", 5, &["v"]);
        h.run(|s, ctx| s.routes_updated(ctx));
        h.sent();
        assert_eq!(h.next_deadline_in(), Some(h.cfg.switch_sustain));
        h.expire(h.cfg.switch_sustain);
        assert!(h.sent().contains(&("X".into(), "video_request")));
    }
}
