//! Sequencer: every chunk that passes, in order and at most once. Chunks carry (epoch, seq);
//! a chunk is forwarded only if it is the next one, or after a gap the old path can no longer
//! fill ([`order`] is the pure rule: the first chunk after a gap is ahead, not old). A new
//! epoch is a new stream start; a return to an epoch we left passes only beyond what we
//! forwarded of it then (the last few epochs are remembered). During a make-before-break switch, chunks from the new parent
//! that are ahead of the old path wait in a small bounded hold buffer until the old path
//! catches up; the switch then completes without a duplicate or a reordering (unless the old
//! parent is suspected of being dead: then the first newer chunk completes it). Forwarding
//! copies a chunk to every child and hands one to the local consumers.

use super::*;
use crate::wire::overlay::{OverlayMsg, VideoCancel, VideoData, FLAG_REPLAYED};

/// At most one cancel of a neighbour's stray chunks per neighbour and video in this time.
pub(super) const STRAY_CANCEL_EVERY: Duration = Duration::from_secs(1);

/// How a chunk relates to the last one forwarded.
pub(super) enum Order {
    /// Forward it (next in sequence, after a gap of `gap` chunks, or a new epoch).
    Forward {
        gap: u64,
        new_epoch: bool,
    },
    Duplicate,
}

pub(super) fn order(last: Option<(u64, u64)>, data: &VideoData) -> Order {
    match last {
        None => Order::Forward {
            gap: 0,
            new_epoch: true,
        },
        Some((e, _)) if e != data.epoch => Order::Forward {
            gap: 0,
            new_epoch: true,
        },
        // The first chunk after a gap is ahead, not old: only `<=` is a duplicate.
        Some((_, s)) if data.seq <= s => Order::Duplicate,
        Some((_, s)) => Order::Forward {
            gap: data.seq - s - 1,
            new_epoch: false,
        },
    }
}

impl Streams {
    /// Count a chunk in: its stream's counters and state, or `None` (counted as stray) when we
    /// carry no such stream.
    pub(super) fn chunk_in(&mut self, video: &str) -> Option<(&mut StreamCounters, &mut Stream)> {
        let c = counters_of(&mut self.counters, video);
        c.chunks_in += 1;
        match self.streams.get_mut(video) {
            Some(st) => Some((c, st)),
            None => {
                c.stray += 1;
                None
            }
        }
    }

    /// After a stray chunk (counted by the caller): one from a neighbour that is none of the
    /// stream's upstreams, or of a stream we do not carry. The neighbour may still count us as
    /// its child (its acceptance of a request crossed our cancel, or a refusal of an earlier
    /// request): then it would feed us, and keep its stream up, for ever. So it is told to
    /// stop, at most once per [`STRAY_CANCEL_EVERY`] per neighbour and video: chunks still in
    /// flight after a cancel of ours land here too, and one more cancel is all they cost.
    pub(super) fn cancel_stray(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
        let key = (from.to_string(), video.to_string());
        if self
            .stray_cancelled
            .get(&key)
            .is_some_and(|&t| ctx.now.saturating_duration_since(t) < STRAY_CANCEL_EVERY)
        {
            return;
        }
        self.stray_cancelled
            .retain(|_, t| ctx.now.saturating_duration_since(*t) < STRAY_CANCEL_EVERY);
        if ctx.send(
            from,
            OverlayMsg::VideoCancel(VideoCancel {
                video: video.to_string(),
            }),
        ) {
            counters_of(&mut self.counters, video).stray_cancels += 1;
            self.stray_cancelled.insert(key, ctx.now);
        }
    }

    pub(crate) fn on_data(&mut self, ctx: &mut Ctx<'_>, from: &str, data: VideoData) {
        if ctx.cfg.redundant_for(&data.video) {
            self.on_data_merged(ctx, from, data);
            return;
        }
        let video = data.video.clone();
        let Some((c, st)) = self.chunk_in(&video) else {
            self.cancel_stray(ctx, from, &video);
            return;
        };
        if st.is_parent(from) {
            let p = st.parent.as_mut().expect("is_parent");
            p.last_data = Some(ctx.now);
            p.doubt = Default::default();
            let was_suspected = p.suspected;
            st.spacing.sample(ctx.now);
            if was_suspected {
                self.clear_suspicion(ctx, &video);
            }
            let st = self.streams.get_mut(&*video).expect("present");
            if let Order::Forward {
                new_epoch: true, ..
            } = order(st.last, &data)
            {
                // The held chunks belong to the epoch that just ended.
                counters_of(&mut self.counters, &video).duplicates += st.held.len() as u64;
                st.held.clear();
            }
            self.forward_if_in_order(ctx, &video, data);
            // Has the old path caught up with what the new one holds?
            let st = self.streams.get_mut(&*video).expect("present");
            let c = counters_of(&mut self.counters, &video);
            if let (Some((e, s)), true) = (st.last, st.pending.is_some()) {
                while st.held.front().is_some_and(|h| h.epoch == e && h.seq <= s) {
                    st.held.pop_front();
                    c.duplicates += 1;
                }
                if st
                    .held
                    .front()
                    .is_some_and(|h| h.epoch == e && h.seq == s + 1)
                {
                    self.complete_switch(ctx, &video);
                }
            }
        } else if st.is_pending(from) {
            if let Some(p) = st.pending.as_mut() {
                p.last_data = Some(ctx.now);
            }
            let old_suspected = st.parent.as_ref().is_some_and(|p| p.suspected);
            let old_draining = st
                .parent
                .as_ref()
                .and_then(|p| ctx.neighbours.by_name(&p.name))
                .is_some_and(|n| n.draining);
            match st.last {
                Some((e, s)) if data.epoch == e && data.seq <= s => {
                    // The new path is behind: keep the old one until it catches up, unless
                    // the old one is going away; then move now: the new path's chunks are
                    // dropped until they pass the last one forwarded (a pause of the lag,
                    // nothing lost or repeated).
                    c.duplicates += 1;
                    if old_draining {
                        self.complete_switch(ctx, &video);
                    }
                }
                Some((e, s))
                    if data.epoch == e
                        && data.seq > s + 1
                        && !old_suspected
                        && st.held.len() < ctx.cfg.reorder_capacity =>
                {
                    // The new path is ahead: hold until the old path fills the gap.
                    c.held += 1;
                    st.held.push_back(data);
                }
                _ => {
                    // Next in sequence, a new epoch (nothing to align with), the first chunk
                    // ever, a full buffer, or an old parent that is suspected (silent: the
                    // gap is accepted): the new parent takes over now.
                    self.complete_switch(ctx, &video);
                    self.forward_if_in_order(ctx, &video, data);
                }
            }
        } else {
            c.stray += 1;
            self.cancel_stray(ctx, from, &video);
        }
    }

    pub(super) fn forward_if_in_order(&mut self, ctx: &mut Ctx<'_>, video: &str, data: VideoData) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        let c = counters_of(&mut self.counters, video);
        // Back to an epoch we left (a stream moved between servers and back, or a cache of
        // it replayed): what we forwarded of it then must not go out again.
        let left_epoch_repeat = st
            .epochs_seen
            .iter()
            .any(|&(e, s)| e == data.epoch && data.seq <= s && st.last.map(|l| l.0) != Some(e));
        match order(st.last, &data) {
            Order::Forward { .. } if left_epoch_repeat => c.duplicates += 1,
            Order::Duplicate => c.duplicates += 1,
            Order::Forward { gap, new_epoch } => {
                c.gap_chunks += gap;
                if new_epoch {
                    c.epochs += 1;
                }
                self.forward(ctx, video, data);
            }
        }
    }

    /// Send a chunk to every child and local consumer.
    pub(super) fn forward(&mut self, ctx: &mut Ctx<'_>, video: &str, mut data: VideoData) {
        // A replay is marked for its one hop only.
        data.flags &= !FLAG_REPLAYED;
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.last = Some((data.epoch, data.seq));
        st.note_epoch(data.epoch, data.seq);
        st.gop.push(&data, ctx.cfg.gop_cache_bytes);
        let c = counters_of(&mut self.counters, video);
        for child in st.children.keys() {
            if ctx.send(child, OverlayMsg::VideoData(data.clone())) {
                c.chunks_out += 1;
            }
        }
        if st.local > 0 {
            c.delivered_local += 1;
            ctx.push(StreamAction::Deliver {
                video: video.to_string(),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{req, Harness};
    use super::*;
    use bytes::Bytes;

    fn chunk(epoch: u64, seq: u64) -> VideoData {
        VideoData {
            video: "v".into(),
            epoch,
            seq,
            flags: 0,
            payload: Bytes::new(),
        }
    }

    fn verdict(last: Option<(u64, u64)>, epoch: u64, seq: u64) -> Option<(u64, bool)> {
        match order(last, &chunk(epoch, seq)) {
            Order::Forward { gap, new_epoch } => Some((gap, new_epoch)),
            Order::Duplicate => None,
        }
    }

    #[test]
    fn a_return_to_an_epoch_left_repeats_nothing_of_it() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for seq in 1..=3 {
            h.chunk("A", "v", 1, seq);
        }
        h.chunk("A", "v", 2, 1);
        // Back to epoch 1: what was forwarded of it is not again, what is new is.
        h.chunk("A", "v", 1, 2);
        h.chunk("A", "v", 1, 3);
        h.chunk("A", "v", 1, 4);
        let delivered = h.drain().1;
        assert_eq!(delivered, [(1, 1), (1, 2), (1, 3), (2, 1), (1, 4)]);
        assert_eq!(h.streams.counters("v").unwrap().duplicates, 2);
    }

    #[test]
    fn first_chunk_after_a_gap_is_forwarded_not_dropped_as_old() {
        assert_eq!(verdict(Some((7, 10)), 7, 11), Some((0, false)));
        assert_eq!(verdict(Some((7, 10)), 7, 15), Some((4, false)));
        assert_eq!(verdict(Some((7, 10)), 7, 10), None);
        assert_eq!(verdict(Some((7, 10)), 7, 3), None);
    }

    #[test]
    fn any_other_epoch_is_a_new_stream_start() {
        assert_eq!(verdict(None, 7, 500), Some((0, true)));
        // A restarted server (larger epoch) or another server (any epoch) starts afresh.
        assert_eq!(verdict(Some((7, 10)), 9, 0), Some((0, true)));
        assert_eq!(verdict(Some((7, 10)), 2, 0), Some((0, true)));
    }

    #[test]
    fn repeats_are_dropped_and_counted_and_a_gap_is_accepted_once() {
        let mut h = Harness::new("B");
        h.link("A");
        h.flood("S", &[], "A", 5, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for seq in [1, 2, 2, 1, 5, 6] {
            h.chunk("A", "v", 3, seq);
        }
        assert_eq!(h.drain().1, [(3, 1), (3, 2), (3, 5), (3, 6)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.duplicates, c.gap_chunks, c.epochs), (2, 2, 1));
        // A new epoch is a new stream start, even with a smaller sequence number.
        h.chunk("A", "v", 4, 0);
        assert_eq!(h.drain().1, [(4, 0)]);
        assert_eq!(h.streams.counters("v").map(|c| c.epochs), Some(2));
    }

    #[test]
    fn chunks_are_copied_to_every_child_and_once_to_local_consumers() {
        let mut h = Harness::new("B");
        for n in ["A", "C", "D"] {
            h.link(n);
        }
        h.flood("S", &[], "A", 5, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.run(|s, ctx| s.on_request(ctx, "C", req("v", &["C"])));
        h.run(|s, ctx| s.on_request(ctx, "D", req("v", &["D"])));
        h.drain();
        h.chunk("A", "v", 1, 1);
        h.chunk("X", "v", 1, 2);
        let (sent, delivered) = h.drain();
        assert_eq!(
            sent,
            [("C".into(), "video_data"), ("D".into(), "video_data")]
        );
        assert_eq!(delivered, [(1, 1)]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!(
            (c.chunks_in, c.chunks_out, c.delivered_local, c.stray),
            (2, 2, 1, 1)
        );
    }

    #[test]
    fn a_neighbour_feeding_us_unasked_is_cancelled_once_a_second() {
        // A still counts us as its child (its acceptance crossed our cancel): without a word
        // from us it would feed us, and keep its stream, for ever.
        let mut h = Harness::new("B");
        h.link("A");
        h.chunk("A", "v", 1, 1);
        assert_eq!(h.sent(), [("A".into(), "video_cancel")]);
        h.advance(STRAY_CANCEL_EVERY / 2);
        h.chunk("A", "v", 1, 2);
        assert_eq!(h.sent(), []);
        h.advance(STRAY_CANCEL_EVERY / 2);
        h.chunk("A", "v", 1, 3);
        assert_eq!(h.sent(), [("A".into(), "video_cancel")]);
        let c = h.streams.counters("v").unwrap();
        assert_eq!((c.stray, c.stray_cancels), (3, 2));
    }

    #[test]
    fn the_old_parents_chunks_after_a_switch_cost_one_cancel() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.chunk("A", "v", 1, 1);
        h.drain();
        // X, not an upstream of ours, sends two chunks of a stream we carry.
        h.link("X");
        h.chunk("X", "v", 1, 2);
        h.chunk("X", "v", 1, 3);
        let (sent, delivered) = h.drain();
        assert_eq!(sent, [("X".into(), "video_cancel")]);
        assert_eq!(delivered, []);
        assert_eq!(h.streams.parent("v"), Some("A"));
    }
}
