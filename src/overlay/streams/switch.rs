//! Switching: moving a stream to a clearly better parent, make-before-break. The candidate must
//! beat the current path by a margin (a fraction of its delay, at least a floor) and stay better
//! for a sustain time; then it is asked while the old parent keeps feeding, and the switch
//! completes when the new path catches up with the old one (see [`super::sequencer`]), when the
//! old path stalls, or when the switch times out (abandoned if the new parent delivered
//! nothing, forced if it delivers but lags). The deadlines themselves are
//! in [`super::deadlines`].

use tracing::info;

use super::choice::*;
use super::stream::*;
use super::*;
use crate::wire::overlay::{OverlayMsg, VideoCancel};

impl Streams {
    /// Start a make-before-break switch to `to`.
    pub(super) fn start_switch(&mut self, ctx: &mut Ctx<'_>, video: &str, to: Choice) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let old = st.parent.as_ref();
        let (old_delay_us, old_link_sum_us) = match old {
            Some(o) => metric(ctx.routing, o.server.as_deref(), &o.name),
            None => (None, None),
        };
        let (new_delay_us, new_link_sum_us) = metric(ctx.routing, Some(&to.server), &to.neighbour);
        info!(
            video, from = ?old.map(|p| p.name.clone()), to = %to.neighbour,
            server = %to.server, ?old_delay_us, ?old_link_sum_us, ?new_delay_us, ?new_link_sum_us,
            "switching parent (make-before-break)"
        );
        st.pending = Some(Upstream::new(&to.neighbour, Some(to.server), ctx.now));
        self.request(ctx, video, &to.neighbour);
    }

    /// Let the switch target go; `refuse`: it failed (delivered nothing), so it is skipped
    /// for a while.
    pub(super) fn abandon_switch(&mut self, ctx: &mut Ctx<'_>, video: &str, refuse: bool) {
        self.upstreams_changed = true;
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if let Some(p) = st.pending.take() {
            ctx.send(
                &p.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
            if refuse {
                st.refused.insert(p.name, ctx.now + ctx.cfg.refuse_hold);
            }
        }
        st.held.clear();
        self.drain_merge(ctx, video);
    }

    /// The switch target becomes the parent; the old parent (if still linked) is cancelled
    /// and the held chunks go out in order.
    pub(super) fn complete_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        self.upstreams_changed = true;
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(new) = st.pending.take() else {
            return;
        };
        let (delay_us, link_sum_us) = metric(ctx.routing, new.server.as_deref(), &new.name);
        info!(
            video, parent = %new.name, old_parent = ?st.parent.as_ref().map(|p| p.name.as_str()),
            ?delay_us, ?link_sum_us, "parent switch complete"
        );
        let mut suspected = false;
        if let Some(old) = st.parent.replace(new) {
            suspected = old.suspected;
            ctx.send(
                &old.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
        }
        st.gf_asked = None;
        st.grandfathers.clear();
        st.spacing.restart();
        let held = std::mem::take(&mut st.held);
        let c = counters_of(&mut self.counters, video);
        c.switches += 1;
        c.suspected_switches += u64::from(suspected);
        for data in held {
            self.forward_if_in_order(ctx, video, data);
        }
        // Redundant streams: holes only the old parent could fill are given up on now.
        self.drain_merge(ctx, video);
        self.ask_grandfathers(ctx, video);
    }

    /// At a deadline: end a switch that timed out or whose old parent stalled, or, with no
    /// switch under way, switch to a clearly better parent.
    pub(super) fn check_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        let Some(p) = &st.pending else {
            self.consider_switch(ctx, video);
            return;
        };
        let timed_out = ctx.now >= p.since + ctx.cfg.switch_timeout;
        if p.last_data.is_none() && timed_out {
            self.abandon_switch(ctx, video, true);
            return;
        }
        if timed_out {
            // The new path delivers but stays behind the old one: it would never catch up.
            // Move now; its chunks are dropped as duplicates until they pass the last one
            // forwarded (a pause of the lag, nothing lost or repeated).
            self.complete_switch(ctx, video);
            return;
        }
        let old_silent = st.parent.as_ref().map_or(true, |o| {
            o.suspected
                || ctx
                    .now
                    .saturating_duration_since(o.last_data.unwrap_or(o.since))
                    >= ctx.cfg.stall_timeout
        });
        if p.last_data.is_some() && old_silent {
            // The old path died without its link closing: accept the gap.
            self.complete_switch(ctx, video);
        }
    }

    pub(super) fn consider_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let cand = match (&st.source, &st.parent) {
            (None, Some(cur)) => choose(ctx, video, st).filter(|c| c.neighbour != cur.name),
            _ => None,
        };
        let Some(cand) = cand else {
            // No candidate other than the parent: nothing has stayed better (and the sustain
            // deadline must not stay armed).
            st.better_since = None;
            return;
        };
        // A candidate that stalled as our parent lately: its delay does not tell of its
        // stalls. The best neighbour that has not stalled lately may still be worth moving to
        // (the damped ones are looked at again with the first flood after their damping).
        let cand = if self.damped(ctx.now, video, &cand.neighbour) {
            let (damped, now) = (&self.damped, ctx.now);
            let Some(st) = self.streams.get(video) else {
                return;
            };
            let cur = st.parent.as_ref().map(|p| p.name.as_str());
            let undamped = choose_among(ctx, video, st, |n, _| {
                !damped.get(n).is_some_and(|d| d.holds(now))
            })
            .filter(|c| Some(c.neighbour.as_str()) != cur);
            match undamped {
                Some(c) => c,
                None => {
                    if let Some(st) = self.streams.get_mut(video) {
                        st.better_since = None;
                    }
                    return;
                }
            }
        } else {
            cand
        };
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let cur = st.parent.as_ref().expect("a candidate needs a parent");
        let swap = st.is_second(&cand.neighbour);
        let mut withdrawn = false;
        let servers = ctx.routing.servers();
        let margin = |cur_us: f64| {
            (ctx.cfg.switch_margin * cur_us).max(ctx.cfg.switch_floor.as_micros() as f64)
        };
        let cand_route = &servers[&cand.server].parents[&cand.neighbour];
        // The route we are fed by: the current parent's towards the server it feeds us from.
        // Comparing with its route to the candidate's server instead would weigh a path we do
        // not use, and move a stream to another server (a jump in the video) for nothing. When
        // the feeding server is unknown (a grandfather took over) or the parent's route to it
        // is gone, its route to the candidate's server is the best guess. `true`: the same
        // server as the candidate's.
        let fed_by = cur
            .server
            .as_deref()
            .and_then(|s| Some((s == cand.server, servers.get(s)?.parents.get(&cur.name)?)))
            .or_else(|| Some((true, servers[&cand.server].parents.get(&cur.name)?)));
        let clearly_shorter =
            |cur_ls: u64| cur_ls as f64 - cand_route.link_sum_us as f64 > margin(cur_ls as f64);
        let better = match fed_by {
            // Same server: delays share its clock skew, so their difference is skew-free.
            Some((true, r)) => r.delay_us - cand_route.delay_us > margin(r.link_sum_us as f64),
            // Another server: compare skew-free path sums.
            Some((false, r)) => clearly_shorter(r.link_sum_us),
            // No route to either: compare with its best remaining route to any server
            // offering the video.
            None => match ctx
                .routing
                .offers(video)
                .filter_map(|(_, s)| s.parents.get(&cur.name))
                .map(|r| r.link_sum_us)
                .min()
            {
                Some(cur_ls) => clearly_shorter(cur_ls),
                // The parent offers no route any more (withdrawn): move.
                None => {
                    withdrawn = true;
                    true
                }
            },
        };
        // Hysteresis in time: the same candidate must stay better for `switch_sustain`.
        let st = self.streams.get_mut(video).expect("present");
        if !better {
            st.better_since = None;
            return;
        }
        if !withdrawn {
            match &st.better_since {
                Some((n, since)) if *n == cand.neighbour => {
                    if ctx.now.saturating_duration_since(*since) < ctx.cfg.switch_sustain {
                        return;
                    }
                }
                _ => {
                    st.better_since = Some((cand.neighbour.clone(), ctx.now));
                    if !ctx.cfg.switch_sustain.is_zero() {
                        return;
                    }
                }
            }
        }
        st.better_since = None;
        if swap {
            // Both already feed us: the roles change, no message is needed.
            let old = st
                .parent
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            info!(video, parent = %cand.neighbour, second = %old, "parent and second parent swap roles");
            std::mem::swap(&mut st.parent, &mut st.second);
            st.gf_asked = None;
            st.grandfathers.clear();
            counters_of(&mut self.counters, video).switches += 1;
            self.ask_grandfathers(ctx, video);
        } else {
            self.start_switch(ctx, video, cand);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;

    /// B fed by A (50 ms); X (5 ms) appears: B switches to it.
    fn switching() -> Harness {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &[], "A", 50, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        h.chunk("A", "v", 1, 2);
        h.flood("S", &[], "X", 5, &["v"]);
        h.sent();
        h.run(|s, ctx| s.routes_updated(ctx));
        h
    }

    #[test]
    fn make_before_break_keeps_the_old_parent_until_the_new_one_catches_up() {
        let mut h = switching();
        let (sent, _) = h.drain();
        assert!(sent.contains(&("X".into(), "video_request")));
        assert!(!sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("A"));
        // X is ahead: its chunk waits for the old path.
        h.chunk("X", "v", 1, 4);
        assert_eq!(h.drain(), (vec![], vec![]));
        // A fills the hole: the switch completes, in order, and A is let go.
        h.chunk("A", "v", 1, 3);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, 3), (1, 4)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        h.chunk("A", "v", 1, 4);
        h.chunk("X", "v", 1, 5);
        assert_eq!(h.drain().1, [(1, 5)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.switches, c.stray, c.gap_chunks), (1, 1, 0));
    }

    #[test]
    fn a_switch_target_that_delivers_nothing_is_abandoned_and_not_asked_again_at_once() {
        let mut h = switching();
        h.drain();
        // The switch's deadline, exactly.
        assert_eq!(h.next_deadline_in(), Some(h.cfg.switch_timeout));
        h.expire(h.cfg.switch_timeout);
        assert_eq!(h.sent(), [("X".into(), "video_cancel")]);
        assert_eq!(h.streams.parent("v"), Some("A"));
        h.run(|s, ctx| s.handle_timeout(ctx));
        assert_eq!(h.sent(), []);
        // After the refusal hold, X is tried again.
        h.expire(h.cfg.refuse_hold);
        assert!(h.sent().contains(&("X".into(), "video_request")));
    }

    #[test]
    fn a_stalled_old_parent_ends_the_switch_and_the_gap_is_accepted() {
        let mut h = switching();
        h.chunk("X", "v", 1, 6);
        h.drain();
        // The old parent's stall, exactly (it last spoke now).
        assert_eq!(h.next_deadline_in(), Some(h.cfg.stall_timeout));
        h.expire(h.cfg.stall_timeout);
        let (sent, delivered) = h.drain();
        assert_eq!(delivered, [(1, 6)]);
        assert!(sent.contains(&("A".into(), "video_cancel")));
        assert_eq!(h.streams.counters("v").map(|c| c.gap_chunks), Some(3));
    }
}
