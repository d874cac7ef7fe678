//! Hitless redundancy (opt-in, [`super::StreamConfig::redundant`]): a stream with consumers
//! also keeps a *second parent* towards the same server (so both feeds number chunks alike),
//! on a path as disjoint from the parent's as the floods' visited lists tell. Both feeds go
//! through one merge: a chunk is forwarded when it is the next one; a chunk ahead of a hole
//! waits until the other feed fills it, or until no live feed can (each feed is in order, so
//! one that passed the hole never will), or the wait exceeds the stall timeout; the later copy
//! of each chunk is dropped and counted as redundancy's cost. The death of either parent loses
//! nothing; the survivor becomes the parent and a new second parent is sought. Only the node
//! that opted in takes two feeds: its parents see an ordinary child.

use tracing::info;

use super::choice::*;
use super::stream::*;
use super::*;
use crate::wire::overlay::{OverlayMsg, VideoCancel, VideoData};

/// Which of a redundant stream's upstreams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Parent,
    Second,
    Pending,
}

impl Streams {
    /// A chunk of a redundant stream, from any of its feeds (see module docs).
    pub(super) fn on_data_merged(&mut self, ctx: &mut Ctx<'_>, from: &str, data: VideoData) {
        let video = data.video.clone();
        let Some((c, st)) = self.chunk_in(&video) else {
            self.cancel_stray(ctx, from, &video);
            return;
        };
        let feed = if st.is_parent(from) {
            Feed::Parent
        } else if st.is_second(from) {
            Feed::Second
        } else if st.is_pending(from) {
            Feed::Pending
        } else {
            c.stray += 1;
            self.cancel_stray(ctx, from, &video);
            return;
        };
        let up = match feed {
            Feed::Parent => st.parent.as_mut(),
            Feed::Second => st.second.as_mut(),
            Feed::Pending => st.pending.as_mut(),
        }
        .expect("matched above");
        up.last_data = Some(ctx.now);
        up.rx = Some((data.epoch, data.seq));
        // While two parents feed us, the later copy of every chunk is redundancy's cost; a
        // switch target's overlap is the switch's, as without redundancy.
        let redundant_copy = st.second.is_some() && feed != Feed::Pending;
        match st.last {
            Some((e, s)) if e == data.epoch => {
                if data.seq <= s || st.merge.contains_key(&data.seq) {
                    if redundant_copy {
                        c.redundant_duplicates += 1;
                        c.redundant_bytes += data.payload.len() as u64;
                    } else {
                        c.duplicates += 1;
                    }
                } else if data.seq == s + 1 {
                    self.forward(ctx, &video, data);
                } else {
                    // Ahead of a hole: wait for the other feed to fill it.
                    if st.merge.is_empty() {
                        st.merge_since = Some(ctx.now);
                    }
                    c.held += 1;
                    st.merge.insert(data.seq, data);
                }
            }
            Some(_) if feed == Feed::Second => {
                // Another epoch from the second parent: a stream start is taken from the
                // parent only, so the two feeds never make the epochs alternate.
                c.stray += 1;
            }
            _ => {
                // The first chunk, or a new stream start from the parent or the switch target
                // (which then takes over, as without redundancy).
                c.duplicates += st.merge.len() as u64;
                st.merge.clear();
                st.merge_since = None;
                if feed == Feed::Pending {
                    self.complete_switch(ctx, &video);
                }
                self.forward_if_in_order(ctx, &video, data);
            }
        }
        self.drain_merge(ctx, &video);
        // A switch target in step with what we forward takes over: nothing is lost, and the
        // old parent's chunks would only be copies from now on.
        if let Some(st) = self.streams.get(&*video) {
            if st
                .pending
                .as_ref()
                .is_some_and(|p| p.rx.is_some() && p.rx == st.last)
            {
                self.complete_switch(ctx, &video);
            }
        }
    }

    /// Forward what the merge can release: the next chunks in order, and past a hole no live
    /// feed can fill any more (a feed is in order: one that delivered beyond the hole never
    /// will; a feed silent for the stall timeout is not live), a hole waited for longer than
    /// the stall timeout, or anything when the buffer is full.
    pub(super) fn drain_merge(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        loop {
            let Some(st) = self.streams.get_mut(video) else {
                return;
            };
            let Some(&seq) = st.merge.keys().next() else {
                st.merge_since = None;
                return;
            };
            let Some((e, s)) = st.last else {
                st.merge.clear();
                return;
            };
            if seq > s + 1 {
                let fillable = st.upstreams().any(|u| {
                    u.rx.is_some_and(|(ue, us)| ue == e && us <= s)
                        && u.last_data.is_some_and(|t| {
                            ctx.now.saturating_duration_since(t) < ctx.cfg.stall_timeout
                        })
                });
                let waited = st
                    .merge_since
                    .is_some_and(|t| ctx.now.saturating_duration_since(t) >= ctx.cfg.stall_timeout);
                if fillable && !waited && st.merge.len() < ctx.cfg.reorder_capacity {
                    return;
                }
            }
            let (_, data) = st.merge.pop_first().expect("checked");
            if !st.merge.is_empty() {
                st.merge_since = Some(ctx.now);
            }
            self.forward_if_in_order(ctx, video, data);
        }
    }

    /// Redundant streams: keep a second parent on another path (see module docs). One we have
    /// is kept unless it became the parent or the switch target, lost its link, or its route
    /// now runs through the parent, or the parent moved to another server; it is never replaced
    /// for being merely slower, so the pair does not flap.
    pub(super) fn ensure_second(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        if !ctx.cfg.redundant_for(video) {
            return;
        }
        let Some(st) = self.streams.get(video) else {
            return;
        };
        if st.source.is_some() || st.consumers() == 0 {
            return;
        }
        let Some(parent) = st.parent.as_ref() else {
            return;
        };
        if let Some(sec) = &st.second {
            let why = if sec.name == parent.name {
                Some("it became the parent")
            } else if st.is_pending(&sec.name) {
                Some("it became the switch target")
            } else if !ctx.linked(&sec.name) {
                Some("its link is gone")
            } else if sec.server != parent.server {
                // Another server numbers its chunks differently: the feeds would not merge.
                Some("the parent now leads to another server")
            } else if route_of(ctx.routing, parent.server.as_deref(), &sec.name)
                .is_some_and(|r| r.visited.contains(&parent.name))
            {
                Some("its route now runs through the parent")
            } else {
                None
            };
            match why {
                None => return,
                Some(why) => self.drop_second(ctx, video, why),
            }
        }
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some((c, shared)) = choose_second(ctx, video, st) else {
            return;
        };
        let parent = st
            .parent
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let (delay_us, link_sum_us) = metric(ctx.routing, Some(&c.server), &c.neighbour);
        info!(
            video, second = %c.neighbour, %parent, server = %c.server, shared_relays = shared,
            delay_us, link_sum_us, "second parent chosen (hitless redundancy)"
        );
        st.second = Some(Upstream {
            metric: (delay_us, link_sum_us),
            ..Upstream::new(&c.neighbour, Some(c.server), ctx.now)
        });
        counters_of(&mut self.counters, video).second_parents += 1;
        let name = c.neighbour;
        self.request(ctx, video, &name);
    }

    /// Let the second parent go (cancelled if still linked).
    pub(super) fn drop_second(&mut self, ctx: &mut Ctx<'_>, video: &str, why: &str) {
        self.upstreams_changed = true;
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(sec) = st.second.take() else {
            return;
        };
        info!(video, second = %sec.name, why, "second parent let go");
        let is_upstream = st.upstreams().any(|u| u.name == sec.name);
        if !is_upstream {
            ctx.send(
                &sec.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
        }
        self.drain_merge(ctx, video);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;

    #[test]
    fn the_second_parent_fills_a_hole_of_the_parent_and_copies_are_counted() {
        let mut h = Harness::redundant();
        let (sent, _) = h.drain();
        assert!(sent.contains(&("A".into(), "video_request")));
        assert!(sent.contains(&("X".into(), "video_request")));
        assert_eq!(h.streams.second("v"), Some("X"));
        h.chunk("A", "v", 1, 1);
        h.chunk("X", "v", 1, 1);
        // A skips 2: 3 waits, X is live and behind the hole.
        h.chunk("A", "v", 1, 3);
        assert_eq!(h.drain().1, [(1, 1)]);
        h.chunk("X", "v", 1, 2);
        h.chunk("X", "v", 1, 3);
        assert_eq!(h.drain().1, [(1, 2), (1, 3)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!(
            (c.redundant_duplicates, c.gap_chunks, c.duplicates),
            (2, 0, 0)
        );
    }

    #[test]
    fn the_death_of_the_parent_loses_nothing() {
        let mut h = Harness::redundant();
        h.chunk("A", "v", 1, 1);
        h.chunk("X", "v", 1, 1);
        h.drain();
        h.unlink("A");
        assert_eq!(h.streams.parent("v"), Some("X"));
        h.chunk("X", "v", 1, 2);
        assert_eq!(h.drain().1, [(1, 2)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.hitless_failovers, c.gap_chunks), (1, 0));
    }

    #[test]
    fn a_hole_no_live_feed_can_fill_is_given_up_at_once() {
        let mut h = Harness::redundant();
        h.chunk("A", "v", 1, 1);
        h.drain();
        // X never delivered: nothing can fill 2.
        h.chunk("A", "v", 1, 3);
        assert_eq!(h.drain().1, [(1, 3)]);
        assert_eq!(h.streams.counters("v").map(|c| c.gap_chunks), Some(1));
    }
}
