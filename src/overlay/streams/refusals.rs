//! Refusals: a neighbour that answered [`VideoUnavailable`] (or failed a switch) is skipped for
//! that video for a while, so the choice moves on instead of asking it again at once; a flood
//! from it offering the video lifts the refusal early (it has a route that does not run
//! through us). A refusal from the parent is a failover.

use super::*;
use crate::wire::overlay::{OverlayMsg, VideoCancel};

impl Streams {
    pub(crate) fn on_unavailable(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
        self.upstreams_changed = true;
        // Acknowledged with a cancel, sent before anything this refusal makes us ask: a path
        // update (a request again) of ours may have crossed the refusal, and the neighbour would
        // take it as a new request and keep us as a child that no longer listens.
        ctx.send(
            from,
            OverlayMsg::VideoCancel(VideoCancel {
                video: video.to_string(),
            }),
        );
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.refused
            .insert(from.to_string(), ctx.now + ctx.cfg.refuse_hold);
        if st.is_pending(from) {
            st.pending = None;
            st.held.clear();
        } else if st.is_second(from) {
            st.second = None;
        } else if st.is_parent(from) {
            self.failover(ctx, video);
        }
        self.drain_merge(ctx, video);
    }

    /// A neighbour forwarded a flood offering these videos: it has a route that does not run
    /// through us, so an earlier refusal no longer holds.
    pub(crate) fn flood_from(&mut self, name: &str, videos: &[String]) {
        for v in videos {
            if let Some(st) = self.streams.get_mut(v) {
                st.refused.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;

    #[test]
    fn a_refusing_parent_is_skipped_until_a_flood_from_it_offers_the_video() {
        let mut h = Harness::with_routes("B", &[("A", 5), ("X", 10)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.sent();
        h.run(|s, ctx| s.on_unavailable(ctx, "A", "v"));
        assert!(h.sent().contains(&("X".into(), "video_request")));
        assert_eq!(h.streams.parent("v"), Some("X"));
        assert!(h.streams.streams["v"].refused.contains_key("A"));
        // A had not fed us yet (a setup race, e.g. its route ran through us): not a failover.
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.failovers, c.parent_retries), (0, 1));
        h.streams.flood_from("A", &["w".into()]);
        assert!(h.streams.streams["v"].refused.contains_key("A"));
        h.streams.flood_from("A", &["v".into()]);
        assert!(!h.streams.streams["v"].refused.contains_key("A"));
    }

    #[test]
    fn a_refusal_from_a_switch_target_keeps_the_parent() {
        let mut h = Harness::new("B");
        h.link("A");
        h.link("X");
        h.flood("S", &[], "A", 50, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.flood("S", &[], "X", 5, &["v"]);
        h.run(|s, ctx| s.routes_updated(ctx));
        assert!(h.sent().contains(&("X".into(), "video_request")));
        h.run(|s, ctx| s.on_unavailable(ctx, "X", "v"));
        assert_eq!(h.sent(), [("X".into(), "video_cancel")]);
        assert_eq!(h.streams.parent("v"), Some("A"));
        assert_eq!(h.streams.counters("v").map_or(0, |c| c.failovers), 0);
    }

    #[test]
    fn a_refusal_is_acknowledged_with_a_cancel_before_the_next_request() {
        // A path update of ours may have crossed the refusal and made us A's child again:
        // the cancel, sent first, undoes it before anything else reaches A.
        let mut h = Harness::with_routes("B", &[("A", 5), ("X", 10)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        assert_eq!(h.sent(), [("A".into(), "video_request")]);
        h.run(|s, ctx| s.on_unavailable(ctx, "A", "v"));
        assert_eq!(
            h.sent(),
            [("A".into(), "video_cancel"), ("X".into(), "video_request")]
        );
    }
}
