//! Consumers: the children and local consumers of each stream, and the reference count that
//! makes cancellation travel exactly as far as it should. A request adds a child (with its
//! subtree, refused when we are in it: that would close a loop), a cancel or a lost link
//! removes one, and the last consumer leaving cancels every upstream and forgets the stream
//! (a source lingers a little first, so a consumer moving to another branch continues the
//! same epoch). It also owns what we announce upstream: the request and its path updates.

use bytes::Bytes;
use tracing::info;

use super::stream::*;
use super::*;
use crate::wire::overlay::{
    OverlayMsg, VideoCancel, VideoData, VideoRequest, VideoUnavailable, FLAG_KEYFRAME,
};

impl Streams {
    pub(crate) fn subscribe_local(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let st = self
            .streams
            .entry(video.to_string())
            .or_insert_with(Stream::new);
        st.local += 1;
        self.activate(ctx, video, false);
    }

    pub(crate) fn unsubscribe_local(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.local = st.local.saturating_sub(1);
        self.release_if_unused(ctx, video);
    }

    pub(crate) fn on_request(&mut self, ctx: &mut Ctx<'_>, from: &str, req: VideoRequest) {
        let video = req.video;
        let has = req.has;
        // Our second parent asks us for the video before it learnt it feeds us: two redundant
        // nodes picked each other at once. Serving would make each the other's child, both
        // would let go and pick each other again, forever. The smaller name keeps its second
        // parent and refuses; the larger one yields and serves.
        let crossed = self
            .streams
            .get(&video)
            .is_some_and(|s| s.is_second(from) && ctx.me < from);
        // We are already below the asker: feeding it would close a loop.
        let below = req.path.iter().any(|n| n == ctx.me);
        if crossed || below {
            counters_of(&mut self.counters, &video).loops_refused += 1;
            ctx.send(
                from,
                OverlayMsg::VideoUnavailable(VideoUnavailable { video }),
            );
            return;
        }
        let st = self
            .streams
            .entry(video.clone())
            .or_insert_with(Stream::new);
        let mut path = req.path;
        if !path.iter().any(|n| n == from) {
            path.push(from.to_string());
        }
        let new_child = st.children.insert(from.to_string(), path).is_none();
        if st.last.is_none() && st.has_hint.is_none() {
            // We have nothing yet: what the child has is what our subtree has seen.
            st.has_hint = has;
        }
        // A child leaving the pending switch target in our subtree: the switch would loop.
        if st
            .pending
            .as_ref()
            .is_some_and(|p| st.downstream().contains(p.name.as_str()))
        {
            self.abandon_switch(ctx, &video, true);
        }
        let st = self.streams.get_mut(&video).expect("just inserted");
        if st
            .second
            .as_ref()
            .is_some_and(|p| st.downstream().contains(p.name.as_str()))
        {
            // The second parent is now below us: let it go (another is sought).
            self.drop_second(ctx, &video, "now in our subtree");
        }
        let st = self.streams.get_mut(&video).expect("just inserted");
        if st
            .parent
            .as_ref()
            .is_some_and(|p| st.downstream().contains(p.name.as_str()))
        {
            // Our parent turned out to be fed by us: no data can come from it.
            let old = st.parent.take().expect("checked");
            ctx.send(
                &old.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.clone(),
                }),
            );
            self.failover(ctx, &video);
            return;
        }
        if st.parent.is_some() || st.source.is_some() || !st.gf_dialing.is_empty() {
            self.send_path_update(ctx, &video);
        }
        self.activate(ctx, &video, true);
        if new_child {
            self.replay_gop(ctx, &video, from, has);
        }
    }

    pub(crate) fn on_cancel(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if st.children.remove(from).is_some() {
            if st.consumers() == 0 {
                self.release_if_unused(ctx, video);
            } else {
                self.send_path_update(ctx, video);
            }
        }
    }

    /// Our source produced a chunk (servers only).
    pub(crate) fn source_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        video: &str,
        payload: Bytes,
        keyframe: bool,
    ) -> bool {
        let Some(st) = self.streams.get_mut(video) else {
            return false;
        };
        let Some((epoch, seq)) = st.source.as_mut().map(|(e, s)| {
            let out = (*e, *s);
            *s += 1;
            out
        }) else {
            return false;
        };
        let data = VideoData {
            video: video.into(),
            epoch,
            seq,
            flags: if keyframe { FLAG_KEYFRAME } else { 0 },
            payload,
        };
        counters_of(&mut self.counters, video).chunks_in += 1;
        self.forward(ctx, video, data);
        true
    }

    /// Change the videos we serve ourselves.
    pub(crate) fn set_local_videos(&mut self, ctx: &mut Ctx<'_>, videos: Vec<String>) {
        self.local_videos = videos;
        let names: Vec<String> = self.streams.keys().cloned().collect();
        for video in names {
            let local = self.local_videos.contains(&video);
            let st = self.streams.get_mut(&video).expect("listed");
            if !local && st.source.is_some() {
                st.source = None;
                ctx.push(StreamAction::SourceStop {
                    video: video.clone(),
                });
                self.failover(ctx, &video);
            } else if local && st.source.is_none() {
                // Our own copy beats any path: drop the upstream and serve it.
                for up in [st.parent.take(), st.pending.take(), st.second.take()]
                    .into_iter()
                    .flatten()
                {
                    ctx.send(
                        &up.name,
                        OverlayMsg::VideoCancel(VideoCancel {
                            video: video.clone(),
                        }),
                    );
                }
                st.held.clear();
                st.merge.clear();
                self.activate(ctx, &video, false);
            }
        }
    }

    pub(super) fn request(&mut self, ctx: &mut Ctx<'_>, video: &str, to: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let path = st.path(ctx.me);
        st.sent_path.clone_from(&path);
        ctx.send(
            to,
            OverlayMsg::VideoRequest(VideoRequest {
                video: video.to_string(),
                path,
                has: st.has(),
            }),
        );
    }

    /// Our subtree changed: tell the parents (a repeated request only updates the path).
    pub(super) fn send_path_update(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let path = st.path(ctx.me);
        if path == st.sent_path {
            return;
        }
        let ups: Vec<String> = st.upstreams().map(|u| u.name.clone()).collect();
        for up in ups {
            self.request(ctx, video, &up);
        }
    }

    pub(super) fn refuse_children(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        for child in std::mem::take(&mut st.children).into_keys() {
            ctx.send(
                &child,
                OverlayMsg::VideoUnavailable(VideoUnavailable {
                    video: video.to_string(),
                }),
            );
        }
        self.release_if_unused(ctx, video);
    }

    /// No consumer left: cancel upstream and forget the stream.
    pub(super) fn release_if_unused(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        if st.consumers() > 0 {
            return;
        }
        if st.source.is_some() {
            let until = *self
                .streams
                .get_mut(video)
                .expect("checked")
                .linger_until
                .get_or_insert(ctx.now + ctx.cfg.source_linger);
            if ctx.now < until {
                return;
            }
        }
        let st = self.streams.remove(video).expect("checked");
        info!(video, "stream stopped: no consumer left");
        for up in [st.parent, st.pending, st.second].into_iter().flatten() {
            ctx.send(
                &up.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
        }
        if st.source.is_some() {
            ctx.push(StreamAction::SourceStop {
                video: video.to_string(),
            });
        }
        for addr in st.gf_dialing.values() {
            ctx.push(StreamAction::Unwant(*addr));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{req, Did, Harness};
    use super::*;

    #[test]
    fn the_last_consumer_leaving_cancels_upstream_and_no_earlier() {
        let mut h = Harness::new("B");
        for n in ["A", "C", "D"] {
            h.link(n);
        }
        h.flood("S", &[], "A", 5, &["v"]);
        h.run(|s, ctx| s.on_request(ctx, "C", req("v", &["C"])));
        assert!(h.sent().contains(&("A".into(), "video_request")));
        // A second child only updates the path we announced.
        h.run(|s, ctx| s.on_request(ctx, "D", req("v", &["D"])));
        assert_eq!(h.sent(), [("A".into(), "video_request")]);
        h.run(|s, ctx| s.on_cancel(ctx, "C", "v"));
        assert_eq!(h.sent(), [("A".into(), "video_request")]);
        assert!(h.streams.has("v"));
        h.run(|s, ctx| s.on_cancel(ctx, "D", "v"));
        assert_eq!(h.sent(), [("A".into(), "video_cancel")]);
        assert!(!h.streams.has("v"));
    }

    #[test]
    fn a_request_from_a_node_above_us_is_refused_as_a_loop() {
        let mut h = Harness::new("B");
        h.link("C");
        h.run(|s, ctx| s.on_request(ctx, "C", req("v", &["B", "C"])));
        assert_eq!(h.sent(), [("C".into(), "video_unavailable")]);
        assert!(!h.streams.has("v"));
        assert_eq!(h.streams.counters("v").map(|c| c.loops_refused), Some(1));
    }

    #[test]
    fn a_source_lingers_after_its_last_consumer_then_stops() {
        let mut h = Harness::new("S");
        h.streams = Streams::new(vec!["v".into()]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        assert!(h
            .did()
            .contains(&Did::Other(StreamAction::SourceStart { video: "v".into() })));
        assert_eq!(h.streams.poll_timeout(&h.cfg), None);
        h.run(|s, ctx| s.unsubscribe_local(ctx, "v"));
        assert_eq!(h.did(), []);
        let linger_end = h.now + h.cfg.source_linger;
        assert_eq!(h.streams.poll_timeout(&h.cfg), Some(linger_end));
        assert!(h.streams.has("v"));
        h.advance(h.cfg.source_linger - Duration::from_millis(1));
        h.run(|s, ctx| s.handle_timeout(ctx));
        assert_eq!(h.did(), []);
        h.advance(Duration::from_millis(1));
        h.run(|s, ctx| s.handle_timeout(ctx));
        assert_eq!(
            h.did(),
            [Did::Other(StreamAction::SourceStop { video: "v".into() })]
        );
        assert!(!h.streams.has("v"));
        assert_eq!(h.streams.poll_timeout(&h.cfg), None);
    }
}
