//! GOP cache: per stream, the chunks forwarded since the last keyframe (bounded in bytes and
//! chunks), and the last few chunks forwarded whatever the keyframes (the recent ring). A child
//! that joins a stream we already carry gets the GOP first, so its player (and every relay
//! below it) starts at that keyframe at once instead of waiting up to a whole GOP for the next
//! one; a child that moves to us (a failover, a switch) says in its request what it has, and
//! gets only the chunks after that: from the recent ring when it still holds the next one (a
//! GOP longer than the cache's bound is not cached, and the chunks a dead or hung parent took
//! with it are usually the last few), else from the GOP. Nothing twice, nothing missed when the
//! move is quick. The GOP is empty, and not filling, until a keyframe; a GOP over the bound is
//! not cached (until the next keyframe). Only a stream that is being fed replays its cache.
//! Copies share the chunks' payload, so a cached chunk costs no copy.

use std::collections::VecDeque;

use super::*;
use crate::wire::overlay::FLAG_REPLAYED;

/// At most this many chunks are cached per stream: the whole cache goes to a joining child in
/// one burst, which must fit its link's media queue (256) beside the live chunks.
pub(super) const MAX_GOP_CHUNKS: usize = 192;
/// The recent ring holds this many chunks at most (about 2 s of a stream of 30 chunks per
/// second: a suspicion moves a stream in a tenth of that, the old dead timer in half), and
/// never more bytes than the GOP's bound.
pub(super) const MAX_RECENT_CHUNKS: usize = 64;

#[derive(Debug, Default)]
pub(super) struct GopCache {
    chunks: VecDeque<VideoData>,
    bytes: usize,
    /// Filling since a keyframe (else waiting for one).
    filling: bool,
    /// The last chunks forwarded, of the current epoch.
    recent: VecDeque<VideoData>,
    recent_bytes: usize,
}

impl GopCache {
    /// A chunk was forwarded; `cap` bytes at most are kept (0: off).
    pub(super) fn push(&mut self, data: &VideoData, cap: usize) {
        let other_epoch = self.recent.back().is_some_and(|c| c.epoch != data.epoch);
        if other_epoch || cap == 0 {
            self.recent.clear();
            self.recent_bytes = 0;
        }
        if cap > 0 && data.payload.len() <= cap {
            self.recent_bytes += data.payload.len();
            self.recent.push_back(data.clone());
            while self.recent.len() > MAX_RECENT_CHUNKS || self.recent_bytes > cap {
                let old = self.recent.pop_front().expect("over a bound, so not empty");
                self.recent_bytes -= old.payload.len();
            }
        }
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
    #[cfg(test)]
    pub(super) fn chunks(&self) -> impl Iterator<Item = &VideoData> {
        self.chunks.iter()
    }

    /// What a child that `has` forwarded up to (epoch, seq) lacks, in order: all of the GOP
    /// when it has nothing; the chunks after its last from the recent ring when the ring still
    /// holds the next one, else from the GOP; nothing when it is on another epoch (its
    /// consumers may have seen ours already: replaying it would repeat them).
    pub(super) fn lacked_by(
        &self,
        has: Option<(u64, u64)>,
    ) -> Box<dyn Iterator<Item = &VideoData> + '_> {
        let Some((e, s)) = has else {
            return Box::new(self.chunks.iter());
        };
        let after = move |d: &&VideoData| d.epoch == e && d.seq > s;
        let next = s.checked_add(1);
        if self
            .recent
            .iter()
            .any(|d| d.epoch == e && Some(d.seq) == next)
        {
            Box::new(self.recent.iter().filter(after))
        } else {
            Box::new(self.chunks.iter().filter(after))
        }
    }
}

impl Streams {
    /// A new child of a stream that flows here, which `has` forwarded up to (epoch, seq): send
    /// it the cached chunks it lacks ([`GopCache::lacked_by`]) before anything live.
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
        for data in st.gop.lacked_by(has) {
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
    fn a_moving_child_gets_what_it_lacks_from_the_recent_ring_even_when_the_gop_is_too_long() {
        let mut g = GopCache::default();
        let lacked = |g: &GopCache, has| g.lacked_by(has).map(|c| c.seq).collect::<Vec<_>>();
        // A keyframe, then a GOP longer than the bound: the GOP is not cached...
        g.push(&chunk(1, true, 40), 100);
        for seq in 2..=5 {
            g.push(&chunk(seq, false, 40), 100);
        }
        assert!(seqs(&g).is_empty());
        // ...but the last chunks are, within the byte bound (two of 40 bytes in 100).
        assert_eq!(lacked(&g, Some((1, 3))), [4, 5]);
        assert_eq!(lacked(&g, Some((1, 4))), [5]);
        // Up to date, too far behind (3 left the ring), another epoch, nothing yet: nothing.
        assert!(lacked(&g, Some((1, 5))).is_empty());
        assert!(lacked(&g, Some((1, 2))).is_empty());
        assert!(lacked(&g, Some((2, 3))).is_empty());
        assert!(lacked(&g, None).is_empty());
        // The ring keeps MAX_RECENT_CHUNKS at most; a new epoch empties it.
        for seq in 6..200 {
            g.push(&chunk(seq, seq % 50 == 0, 1), 1 << 20);
        }
        assert_eq!(g.recent.len(), MAX_RECENT_CHUNKS);
        assert_eq!(lacked(&g, Some((1, 197))), [198, 199]);
        // Behind the ring but within the GOP (keyframe 150): the GOP after it, with its hole.
        assert_eq!(lacked(&g, Some((1, 120))).first(), Some(&150));
        g.push(
            &VideoData {
                epoch: 2,
                ..chunk(1, false, 1)
            },
            1 << 20,
        );
        assert!(lacked(&g, Some((1, 197))).is_empty());
        assert_eq!(lacked(&g, Some((2, 0))), [1]);
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
