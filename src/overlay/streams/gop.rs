//! GOP cache: per stream, the chunks forwarded since the last keyframe (bounded in bytes and
//! chunks). A child that joins a stream we already carry gets them first, so its player (and
//! every relay below it) starts at that keyframe at once instead of waiting up to a whole GOP
//! for the next one; a child that moves to us (a failover, a switch) says in its request what
//! it has, and gets only the cached chunks after that: the ones it missed, nothing twice.
//! Empty, and not filling, until a keyframe; a GOP over the bound is not cached (until the
//! next keyframe). Only a stream that is being fed replays its cache. Copies share the chunks' payload, so a cached chunk costs no copy.

use std::collections::VecDeque;

use super::*;
use crate::wire::overlay::FLAG_REPLAYED;

/// At most this many chunks are cached per stream: the whole cache goes to a joining child in
/// one burst, which must fit its link's media queue (256) beside the live chunks.
pub(super) const MAX_GOP_CHUNKS: usize = 192;

#[derive(Debug, Default)]
pub(super) struct GopCache {
    chunks: VecDeque<VideoData>,
    bytes: usize,
    /// Filling since a keyframe (else waiting for one).
    filling: bool,
}

impl GopCache {
    /// A chunk was forwarded; `cap` bytes at most are kept (0: off).
    pub(super) fn push(&mut self, data: &VideoData, cap: usize) {
        let other_epoch = self.chunks.back().is_some_and(|c| c.epoch != data.epoch);
        if data.is_keyframe() || other_epoch || cap == 0 {
            self.clear();
            self.filling = data.is_keyframe() && cap > 0;
        }
        if !self.filling {
            return;
        }
        if self.bytes + data.payload.len() > cap || self.chunks.len() >= MAX_GOP_CHUNKS {
            // Too long a GOP to replay: wait for the next keyframe.
            self.clear();
            return;
        }
        self.bytes += data.payload.len();
        self.chunks.push_back(data.clone());
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.filling = false;
    }

    /// The cached chunks, keyframe first.
    pub(super) fn chunks(&self) -> impl Iterator<Item = &VideoData> {
        self.chunks.iter()
    }
}

impl Streams {
    /// A new child of a stream that flows here, which `has` forwarded up to (epoch, seq): send
    /// it the cached chunks it lacks before anything live — all of them when it has nothing,
    /// those after its last in the same epoch, none when it is on another epoch (its
    /// consumers may have seen ours already: replaying it would repeat them).
    pub(super) fn replay_gop(
        &mut self,
        ctx: &mut Ctx<'_>,
        video: &str,
        child: &str,
        has: Option<(u64, u64)>,
    ) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        // Only a stream fed right now: the cache of one whose feed died (a dead source, a lost
        // parent) may belong to an epoch the tree has left, and would bring it back.
        let live = |t: Option<std::time::Instant>| {
            t.is_some_and(|t| ctx.now.saturating_duration_since(t) < ctx.cfg.stall_timeout)
        };
        if st.source.is_none() && !st.upstreams().any(|u| live(u.last_data)) {
            return;
        }
        let mut sent = 0;
        let lacks = |d: &VideoData| has.map_or(true, |(e, s)| d.epoch == e && d.seq > s);
        for data in st.gop.chunks().filter(|d| lacks(d)) {
            let copy = VideoData {
                flags: data.flags | FLAG_REPLAYED,
                ..data.clone()
            };
            if ctx.send(child, OverlayMsg::VideoData(copy)) {
                sent += 1;
            }
        }
        if sent > 0 {
            let c = counters_of(&mut self.counters, video);
            c.gop_chunks_sent += sent;
            c.chunks_out += sent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::Harness;
    use super::*;
    use crate::wire::overlay::VideoRequest;
    use bytes::Bytes;

    fn chunk(seq: u64, keyframe: bool, len: usize) -> VideoData {
        VideoData {
            video: "v".into(),
            epoch: 1,
            seq,
            flags: if keyframe {
                crate::wire::overlay::FLAG_KEYFRAME
            } else {
                0
            },
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    fn seqs(g: &GopCache) -> Vec<u64> {
        g.chunks().map(|c| c.seq).collect()
    }

    #[test]
    fn the_cache_holds_the_chunks_since_the_last_keyframe_within_its_bound() {
        let mut g = GopCache::default();
        g.push(&chunk(1, false, 10), 100);
        assert!(seqs(&g).is_empty(), "nothing before a keyframe");
        g.push(&chunk(2, true, 10), 100);
        g.push(&chunk(3, false, 10), 100);
        assert_eq!(seqs(&g), [2, 3]);
        g.push(&chunk(4, true, 10), 100);
        assert_eq!(seqs(&g), [4]);
        // Over the bound: dropped until the next keyframe.
        g.push(&chunk(5, false, 95), 100);
        assert!(seqs(&g).is_empty());
        g.push(&chunk(6, false, 1), 100);
        assert!(seqs(&g).is_empty());
        g.push(&chunk(7, true, 10), 100);
        assert_eq!(seqs(&g), [7]);
        // Off.
        g.push(&chunk(8, false, 1), 0);
        assert!(seqs(&g).is_empty());
    }

    #[test]
    fn a_new_child_of_a_flowing_stream_gets_the_gop_first_and_an_old_one_nothing() {
        let mut h = Harness::with_routes("B", &[("A", 5)], &[]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        for (seq, key) in [(1, false), (2, true), (3, false), (4, false)] {
            let data = VideoData {
                flags: if key {
                    crate::wire::overlay::FLAG_KEYFRAME
                } else {
                    0
                },
                ..chunk(seq, key, 10)
            };
            h.run(|s, ctx| s.on_data(ctx, "A", data));
        }
        h.drain();
        h.link("C");
        h.request_from("C");
        let got: Vec<u64> = h
            .did()
            .into_iter()
            .filter_map(|d| match d {
                super::super::testkit::Did::Send(to, OverlayMsg::VideoData(d)) if to == "C" => {
                    Some(d.seq)
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, [2, 3, 4]);
        assert_eq!(h.streams.counters("v").unwrap().gop_chunks_sent, 3);
        // A repeated request (a path update) replays nothing.
        h.request_from("C");
        assert!(h.sent().iter().all(|(_, kind)| *kind != "video_data"));
        // A child that has up to 3 gets 4 only; one on another epoch gets nothing.
        for (who, has, want) in [("D", Some((1, 3)), vec![4]), ("E", Some((9, 1)), vec![])] {
            h.link(who);
            let r = VideoRequest {
                has,
                ..super::super::testkit::req("v", &[who])
            };
            h.run(|s, ctx| s.on_request(ctx, who, r));
            let got: Vec<u64> = h
                .did()
                .into_iter()
                .filter_map(|d| match d {
                    super::super::testkit::Did::Send(to, OverlayMsg::VideoData(d)) if to == who => {
                        Some(d.seq)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(got, want, "{who}");
        }
        // The parent fell silent: its cache may be of an epoch the tree has left.
        h.advance(h.cfg.stall_timeout);
        h.link("F");
        h.request_from("F");
        assert!(h.sent().iter().all(|(_, kind)| *kind != "video_data"));
    }
}
