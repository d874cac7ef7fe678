//! Loss recovery on the last mile, client side: the video datagrams held behind a hole while
//! the edge is asked again for what is missing, and the clock of each hole.
//!
//! [`Recovery`] owns the datagrams of the current epoch that arrived *ahead* of a hole in the
//! `(seq, part)` numbers, each with its arrival time, and when each missing chunk was last asked
//! for. It answers three questions for the client service, which owns the order of what the
//! player gets (its sequencer gives the last position handed over, `last`):
//! - **what is missing** ([`Recovery::holes`]): every position between `last` and the newest
//!   held datagram that is not held, as NACK holes (a whole chunk when none of its parts was
//!   seen, since then its number of parts is unknown);
//! - **what to ask now** ([`Recovery::due`]): the holes never asked for, or last asked an
//!   interval ago (about one round trip: a retransmission that was itself lost is asked again,
//!   but a hole is never asked twice within one round trip);
//! - **when to give up** ([`Recovery::deadline`]): the first hole was seen when the earliest
//!   of the held datagrams arrived (every held one is beyond it); when that plus the latency
//!   budget has passed, the client releases the held datagrams in order past the hole. Sooner
//!   when the edge said it cannot send that chunk ([`Recovery::abandon`]): a hole upstream of
//!   the edge costs no budget.
//!
//! Nothing here reads a clock or sends anything; it is bounded by the caller (which refuses to
//! hold more than a fixed number of datagrams or to wait across a jump of many chunks).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::wire::client::{NackHole, VideoData, MAX_NACK_HOLES};

/// A position in one epoch's stream: `(seq, part, parts)` of the last datagram handed over.
pub type Position = (u64, u16, u16);

/// One held datagram: the video, when it arrived, and the edge (index) it came from.
#[derive(Debug, Clone)]
pub struct Held {
    pub data: VideoData,
    pub arrived: Instant,
    pub edge: usize,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Recovery {
    held: BTreeMap<(u64, u16), Held>,
    /// Missing chunk (by seq) → when it was last asked for.
    asked: BTreeMap<u64, Instant>,
    /// Missing chunks the edge said it cannot send: not asked again, given up at once.
    abandoned: BTreeSet<u64>,
}

/// The position right after `last`.
fn after(last: Position) -> (u64, u16) {
    let (seq, part, parts) = last;
    if part.saturating_add(1) < parts {
        (seq, part + 1)
    } else {
        (seq.saturating_add(1), 0)
    }
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Forgets everything (a new stream).
    pub fn clear(&mut self) {
        self.held.clear();
        self.asked.clear();
        self.abandoned.clear();
    }

    /// The edge cannot send chunk `seq`: it is not asked for again, and a hole of it is given
    /// up as soon as it is the first (see [`Recovery::first_hole_abandoned`]).
    pub fn abandon(&mut self, seq: u64) {
        if !self.held.is_empty() {
            self.abandoned.insert(seq);
        }
    }

    /// Whether the first hole after `last` is in a chunk the edge cannot send.
    pub fn first_hole_abandoned(&self, last: Position) -> bool {
        self.holes(last, 1)
            .first()
            .is_some_and(|h| self.abandoned.contains(&h.seq))
    }

    /// Holds `data`, which arrived at `now` from edge `edge` ahead of a hole. False (and
    /// nothing changes) when that position is already held: a duplicate.
    pub fn hold(&mut self, now: Instant, edge: usize, data: VideoData) -> bool {
        let key = (data.seq, data.part);
        if self.held.contains_key(&key) {
            return false;
        }
        self.held.insert(
            key,
            Held {
                data,
                arrived: now,
                edge,
            },
        );
        true
    }

    /// The first held datagram, when nothing is missing between `last` and it (or it is at or
    /// behind `last`: the caller's sequencer drops it).
    pub fn pop_next(&mut self, last: Position) -> Option<Held> {
        let (&key, _) = self.held.first_key_value()?;
        if key > after(last) {
            return None;
        }
        self.pop_first()
    }

    /// The first held datagram, whatever is missing before it (the hole is given up).
    pub fn pop_first(&mut self) -> Option<Held> {
        let (_, held) = self.held.pop_first()?;
        // Chunks before this one are settled: delivered or given up.
        let seq = held.data.seq;
        self.asked.retain(|&s, _| s >= seq);
        self.abandoned.retain(|&s| s >= seq);
        if self.held.is_empty() {
            self.asked.clear();
            self.abandoned.clear();
        }
        Some(held)
    }

    /// When the first hole's budget runs out: the earliest arrival of the held datagrams (the
    /// moment the hole was seen) plus `budget`.
    pub fn deadline(&self, budget: Duration) -> Option<Instant> {
        self.held
            .values()
            .map(|h| h.arrived)
            .min()
            .map(|t| t + budget)
    }

    /// The holes between `last` and the newest held datagram, in order, at most `limit`.
    pub fn holes(&self, last: Position, limit: usize) -> Vec<NackHole> {
        let mut out = Vec::new();
        let Some((&(top_seq, top_part), _)) = self.held.last_key_value() else {
            return out;
        };
        let (last_seq, _, last_parts) = last;
        let (mut seq, mut part) = after(last);
        // Parts `from..to` of chunk `seq` that are not held, as ranges.
        let missing_parts = |out: &mut Vec<NackHole>, seq: u64, from: u16, to: u16| {
            let mut run: Option<(u16, u16)> = None;
            for p in from..to {
                if self.held.contains_key(&(seq, p)) {
                    if let Some((first, last)) = run.take() {
                        out.push(NackHole { seq, first, last });
                    }
                } else {
                    run = Some(run.map_or((p, p), |(first, _)| (first, p)));
                }
            }
            if let Some((first, last)) = run {
                out.push(NackHole { seq, first, last });
            }
        };
        while (seq, part) < (top_seq, top_part) && out.len() < limit {
            // The chunk's number of parts: from the last one delivered, or any held part.
            let parts = if seq == last_seq {
                Some(last_parts)
            } else {
                self.held
                    .range((seq, 0)..=(seq, u16::MAX))
                    .next()
                    .map(|(_, h)| h.data.parts)
            };
            match parts {
                None => out.push(NackHole::whole(seq)),
                Some(parts) => {
                    let to = if seq == top_seq { top_part } else { parts };
                    missing_parts(&mut out, seq, part, to);
                }
            }
            seq = seq.saturating_add(1);
            part = 0;
        }
        out.truncate(limit);
        out
    }

    /// The holes to ask for at `now`: those never asked for, and those asked `interval` ago or
    /// more (at most [`MAX_NACK_HOLES`]); they are marked as asked now.
    pub fn due(&mut self, now: Instant, last: Position, interval: Duration) -> Vec<NackHole> {
        let holes = self.holes(last, 4 * MAX_NACK_HOLES);
        let mut out = Vec::new();
        let mut marked: Vec<u64> = Vec::new();
        for h in holes {
            if out.len() == MAX_NACK_HOLES {
                break;
            }
            if self.abandoned.contains(&h.seq) {
                continue;
            }
            let ask = match self.asked.get(&h.seq) {
                None => true,
                // Parts of one chunk asked together are asked again together.
                Some(_) if marked.last() == Some(&h.seq) => true,
                Some(&t) => now.saturating_duration_since(t) >= interval,
            };
            if ask {
                if marked.last() != Some(&h.seq) {
                    marked.push(h.seq);
                }
                out.push(h);
            }
        }
        for seq in marked {
            self.asked.insert(seq, now);
        }
        out
    }

    /// When a hole asked for is next due to be asked again.
    pub fn next_ask(&self, interval: Duration) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        self.asked.values().min().map(|&t| t + interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d(seq: u64, part: u16, parts: u16) -> VideoData {
        VideoData {
            stream: 1,
            flags: 0,
            epoch: 1,
            seq,
            part,
            parts,
            payload: Bytes::from_static(&[0x47; 188]),
        }
    }

    fn hole(seq: u64, first: u16, last: u16) -> NackHole {
        NackHole { seq, first, last }
    }

    #[test]
    fn holes_name_missing_parts_and_whole_chunks_in_order() {
        let now = Instant::now();
        let mut r = Recovery::default();
        // Delivered up to 10/0 of 3; held: 10/2, 12/1 of 2, 14/0 of 1.
        for x in [d(10, 2, 3), d(12, 1, 2), d(14, 0, 1)] {
            assert!(r.hold(now, 0, x));
        }
        assert!(!r.hold(now, 0, d(12, 1, 2)), "a duplicate");
        let last = (10, 0, 3);
        assert_eq!(
            r.holes(last, 64),
            [
                hole(10, 1, 1),
                NackHole::whole(11),
                hole(12, 0, 0),
                NackHole::whole(13)
            ]
        );
        assert_eq!(r.holes(last, 2).len(), 2);
        // Nothing follows the newest held datagram yet: its own chunk's tail is not a hole.
        let mut r = Recovery::default();
        r.hold(now, 0, d(5, 1, 4));
        assert_eq!(r.holes((4, 0, 1), 64), [hole(5, 0, 0)]);
    }

    #[test]
    fn each_hole_is_asked_once_per_interval_and_released_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Recovery::default();
        r.hold(t0, 0, d(3, 0, 1));
        let last = (1, 0, 1);
        assert_eq!(r.due(t0, last, ms(20)), [NackHole::whole(2)]);
        assert!(r.due(t0 + ms(19), last, ms(20)).is_empty());
        assert_eq!(r.next_ask(ms(20)), Some(t0 + ms(20)));
        // A new hole is asked at once; the old one only when its interval is up.
        r.hold(t0 + ms(5), 0, d(5, 0, 1));
        assert_eq!(r.due(t0 + ms(5), last, ms(20)), [NackHole::whole(4)]);
        assert_eq!(r.due(t0 + ms(20), last, ms(20)), [NackHole::whole(2)]);
        assert_eq!(r.deadline(ms(100)), Some(t0 + ms(100)));
        // Nothing is released past a hole until the caller gives it up.
        assert!(r.pop_next(last).is_none());
        let first = r.pop_first().unwrap();
        assert_eq!(first.data.seq, 3);
        // The hole before 3 is settled; 4 is still asked for.
        assert_eq!(r.next_ask(ms(20)), Some(t0 + ms(25)));
        assert!(r.pop_next((3, 0, 1)).is_none());
        r.hold(t0 + ms(30), 0, d(4, 0, 1));
        assert_eq!(r.pop_next((3, 0, 1)).unwrap().data.seq, 4);
        assert_eq!(r.pop_next((4, 0, 1)).unwrap().data.seq, 5);
        assert!(r.is_empty());
        assert_eq!((r.next_ask(ms(20)), r.deadline(ms(100))), (None, None));
    }
}
