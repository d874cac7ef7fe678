//! Traces: a probe sent down a video's active distribution tree, answered by every node it
//! reaches, so an operator sees the tree and the delay of each hop.
//!
//! The node that starts a trace (asked by its control endpoint) stamps its own hop and sends a
//! [`Trace`] with `reply = false` to each of its children for that video. Every node that
//! receives one appends its hop `{name, at_us}` (its wall clock), answers at once with a copy
//! marked `reply = true`, and forwards the probe to its own children. A reply carries the whole
//! path from the originator to the answering node and travels back up that path, each hop
//! sending it to the hop before itself, until the originator hands it to whoever asked
//! ([`crate::overlay::Output::TraceReply`]). Every node answering (not only the leaves) makes
//! the picture complete even when a child does not speak trace (a test consumer, an older
//! build): the tree shows every node that saw the probe.
//!
//! Bounds: a probe already carrying [`MAX_TRACE_HOPS`] hops is answered but not forwarded;
//! a node forwards a given trace id once ([`RecentIds`], bounded and expiring); a probe never
//! goes to a node already on its path; a reply is passed on only along its own path and only
//! when it came from the hop after us. The originator's collector decides how long to wait.
//! Traces travel on the control queue of each link, so the hop delays are those of control
//! messages (never stuck behind video), not of the media queue.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::overlay::Trace;

/// A probe with this many hops is answered but not forwarded further.
pub const MAX_TRACE_HOPS: usize = 64;
/// How many trace ids a node remembers.
const RECENT_CAPACITY: usize = 512;
/// How long a trace id is remembered.
const RECENT_TTL: Duration = Duration::from_secs(30);

/// A bounded, expiring set of recently seen trace ids.
#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<(Instant, u64)>,
    ids: BTreeSet<u64>,
}

impl RecentIds {
    /// Record `id`; false if it was already seen (within the TTL and capacity).
    pub fn insert(&mut self, now: Instant, id: u64) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_duration_since(at) < RECENT_TTL && self.order.len() < RECENT_CAPACITY
            {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Where a reply goes next, seen from node `me` that received it from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStep {
    /// We started this trace: hand the path to the collector.
    Arrived,
    /// Pass it to this neighbour (the hop before us).
    PassTo(String),
    /// Not on its path, or it did not come from the hop after us.
    Invalid,
}

/// Decide what to do with a reply (see [`ReplyStep`]).
pub fn reply_step(me: &str, from: &str, trace: &Trace) -> ReplyStep {
    let hops = &trace.hops;
    let Some(i) = hops
        .iter()
        .enumerate()
        .position(|(i, h)| h.name == me && hops.get(i + 1).is_some_and(|n| n.name == from))
    else {
        return ReplyStep::Invalid;
    };
    if i == 0 {
        ReplyStep::Arrived
    } else {
        ReplyStep::PassTo(hops[i - 1].name.clone())
    }
}

/// A probe is well formed when it has a path that ends with the neighbour that sent it.
pub fn probe_is_valid(from: &str, trace: &Trace) -> bool {
    !trace.reply && trace.hops.last().is_some_and(|h| h.name == from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::overlay::TraceHop;

    fn trace(names: &[&str], reply: bool) -> Trace {
        Trace {
            id: 1,
            video: "v".into(),
            reply,
            hops: names
                .iter()
                .enumerate()
                .map(|(i, n)| TraceHop {
                    name: n.to_string(),
                    at_us: 1000 * i as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn replies_climb_their_own_path_only() {
        let t = trace(&["S", "A", "B", "C"], true);
        assert_eq!(reply_step("B", "C", &t), ReplyStep::PassTo("A".into()));
        assert_eq!(reply_step("A", "B", &t), ReplyStep::PassTo("S".into()));
        assert_eq!(reply_step("S", "A", &t), ReplyStep::Arrived);
        // From the wrong neighbour, or to a node not on the path.
        assert_eq!(reply_step("A", "C", &t), ReplyStep::Invalid);
        assert_eq!(reply_step("X", "C", &t), ReplyStep::Invalid);
        // The last hop never receives its own reply.
        assert_eq!(reply_step("C", "B", &t), ReplyStep::Invalid);
    }

    #[test]
    fn probes_must_end_with_their_sender() {
        assert!(probe_is_valid("A", &trace(&["S", "A"], false)));
        assert!(!probe_is_valid("B", &trace(&["S", "A"], false)));
        assert!(!probe_is_valid("A", &trace(&[], false)));
        assert!(!probe_is_valid("A", &trace(&["S", "A"], true)));
    }

    #[test]
    fn recent_ids_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut r = RecentIds::default();
        assert!(r.insert(t0, 7));
        assert!(!r.insert(t0, 7));
        assert!(r.insert(t0 + RECENT_TTL, 7), "expired ids are forgotten");
        for i in 0..(RECENT_CAPACITY as u64 * 2) {
            r.insert(t0 + RECENT_TTL, 100 + i);
        }
        assert!(r.len() <= RECENT_CAPACITY);
    }
}
