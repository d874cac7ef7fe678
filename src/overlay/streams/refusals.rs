//! Refusals: a neighbour that answered [`VideoUnavailable`] (or failed a switch) is skipped for
//! that video for a while, so the choice moves on instead of asking it again at once; a flood
//! from it offering the video lifts the refusal early (it has a route that does not run
//! through us). A refusal from the parent is a failover.

use super::*;

impl Streams {
    pub(crate) fn on_unavailable(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
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
