//! One video's state at this node: its children (with the subtree each announced), local
//! consumers, our source run, the upstreams that feed it (parent, switch target, second
//! parent), the last (epoch, seq) forwarded, and the buffers and bookkeeping the other parts
//! keep per stream. It owns the questions every part asks of a stream: who is downstream (no
//! parent is ever taken from there, which keeps failovers and switches loop-free), which path
//! we announce upstream, and which state the stream is in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::gop::GopCache;
use super::suspicion::{Doubt, Spacing};
use super::*;
use crate::wire::overlay::{PeerAddr, VideoData};

/// Epochs a stream remembers having forwarded ([`Stream::epochs_seen`]).
const EPOCHS_REMEMBERED: usize = 8;

#[derive(Debug, Clone)]
pub(super) struct Upstream {
    pub(super) name: String,
    pub(super) server: Option<String>,
    pub(super) since: Instant,
    pub(super) last_data: Option<Instant>,
    /// Last (epoch, seq) received from it: a feed is in order, so it will never deliver
    /// anything at or below this.
    pub(super) rx: Option<(u64, u64)>,
    /// Last known (delay µs, link sum µs) of the route through it (kept for the failover
    /// log line, when the route itself is already gone).
    pub(super) metric: (Option<i64>, Option<u64>),
    /// Doubted (probed) for a silence beyond the stream's spacing ([`super::suspicion`]) ...
    pub(super) doubt: Doubt,
    /// ... or suspected; both cleared when it speaks.
    pub(super) suspected: bool,
    /// A switch target asked because the parent was suspected (let go if it speaks again).
    pub(super) by_suspicion: bool,
}

impl Upstream {
    pub(super) fn new(name: &str, server: Option<String>, now: Instant) -> Self {
        Upstream {
            name: name.to_string(),
            server,
            since: now,
            last_data: None,
            rx: None,
            metric: (None, None),
            doubt: Doubt::Trusted,
            suspected: false,
            by_suspicion: false,
        }
    }
}

#[derive(Debug)]
pub(super) struct Stream {
    /// Children by name, with the subtree each one announced.
    pub(super) children: BTreeMap<String, Vec<String>>,
    pub(super) local: u32,
    /// Our own source run: (epoch, next seq).
    pub(super) source: Option<(u64, u64)>,
    /// A source without consumers stops at this instant.
    pub(super) linger_until: Option<Instant>,
    pub(super) parent: Option<Upstream>,
    pub(super) pending: Option<Upstream>,
    /// Hitless redundancy: the parent on the other path.
    pub(super) second: Option<Upstream>,
    /// Last (epoch, seq) forwarded.
    pub(super) last: Option<(u64, u64)>,
    /// Chunks from `pending` ahead of the old path, in order.
    pub(super) held: VecDeque<VideoData>,
    /// Redundant streams: chunks of the current epoch waiting behind a hole, by seq, and since
    /// when the first hole has been waited for.
    pub(super) merge: BTreeMap<u64, VideoData>,
    pub(super) merge_since: Option<Instant>,
    /// A candidate parent found better than the current one, and since when it has been.
    pub(super) better_since: Option<(String, Instant)>,
    /// The path last sent upstream.
    pub(super) sent_path: Vec<String>,
    pub(super) grandfathers: Vec<PeerAddr>,
    /// The parent we asked for grandfathers.
    pub(super) gf_asked: Option<String>,
    /// Grandfathers being dialled, by name.
    pub(super) gf_dialing: BTreeMap<String, SocketAddr>,
    /// Neighbours skipped for this video until the instant.
    pub(super) refused: BTreeMap<String, Instant>,
    /// The measured spacing of the parent's chunks ([`super::suspicion`]).
    pub(super) spacing: Spacing,
    /// The chunks forwarded since the last keyframe ([`super::gop`]).
    pub(super) gop: GopCache,
    /// Before we forward anything: what the child that made us ask had (its request's
    /// `has`), passed on in our own request so a parent replays only what it lacks.
    pub(super) has_hint: Option<(u64, u64)>,
    /// The last few epochs forwarded, each with the highest seq forwarded in it.
    pub(super) epochs_seen: VecDeque<(u64, u64)>,
}

impl Stream {
    pub(super) fn new() -> Self {
        Stream {
            children: BTreeMap::new(),
            local: 0,
            source: None,
            linger_until: None,
            parent: None,
            pending: None,
            second: None,
            last: None,
            held: VecDeque::new(),
            merge: BTreeMap::new(),
            merge_since: None,
            better_since: None,
            sent_path: Vec::new(),
            grandfathers: Vec::new(),
            gf_asked: None,
            gf_dialing: BTreeMap::new(),
            refused: BTreeMap::new(),
            spacing: Spacing::default(),
            gop: GopCache::default(),
            has_hint: None,
            epochs_seen: VecDeque::new(),
        }
    }

    /// What we tell a parent we have (a request's `has`): the last chunk forwarded, or held
    /// ahead of a hole (a chunk must not cross a link twice), or what the child that made us
    /// ask has when we have nothing yet.
    pub(super) fn has(&self) -> Option<(u64, u64)> {
        let Some((e, s)) = self.last else {
            return self.has_hint;
        };
        let merged = self.merge.keys().next_back().copied().unwrap_or(0);
        let held = self
            .held
            .iter()
            .filter(|d| d.epoch == e)
            .map(|d| d.seq)
            .max()
            .unwrap_or(0);
        Some((e, s.max(merged).max(held)))
    }

    /// Remember that (epoch, seq) was forwarded (see [`Self::epochs_seen`]).
    pub(super) fn note_epoch(&mut self, epoch: u64, seq: u64) {
        match self.epochs_seen.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, s)) => *s = (*s).max(seq),
            None => {
                if self.epochs_seen.len() == EPOCHS_REMEMBERED {
                    self.epochs_seen.pop_front();
                }
                self.epochs_seen.push_back((epoch, seq));
            }
        }
    }

    pub(super) fn consumers(&self) -> usize {
        self.children.len() + self.local as usize
    }

    /// Every node we feed, directly or not, as far as requests told us.
    pub(super) fn downstream(&self) -> BTreeSet<&str> {
        let mut d: BTreeSet<&str> = self.children.keys().map(String::as_str).collect();
        for p in self.children.values() {
            d.extend(p.iter().map(String::as_str));
        }
        d
    }

    /// The path we send up: our subtree, then ourselves last.
    pub(super) fn path(&self, me: &str) -> Vec<String> {
        let mut p: Vec<String> = self
            .downstream()
            .into_iter()
            .filter(|n| *n != me)
            .map(str::to_string)
            .collect();
        // Over the wire cap the far end of the subtree is left out: loop prevention degrades
        // for it, nothing breaks.
        p.truncate(MAX_LIST_LEN - 1);
        p.push(me.to_string());
        p
    }

    pub(super) fn is_parent(&self, name: &str) -> bool {
        self.parent.as_ref().is_some_and(|p| p.name == name)
    }

    pub(super) fn is_pending(&self, name: &str) -> bool {
        self.pending.as_ref().is_some_and(|p| p.name == name)
    }

    pub(super) fn is_second(&self, name: &str) -> bool {
        self.second.as_ref().is_some_and(|p| p.name == name)
    }

    /// Every upstream we asked: parent, switch target, second parent.
    pub(super) fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        [&self.parent, &self.pending, &self.second]
            .into_iter()
            .flatten()
    }

    pub(super) fn state(&self) -> StreamState {
        if self.source.is_some() {
            StreamState::Source
        } else if self.pending.is_some() {
            StreamState::Switching
        } else if self.parent.is_some() {
            StreamState::Streaming
        } else if !self.gf_dialing.is_empty() {
            StreamState::Grandfathers
        } else {
            StreamState::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str) -> Upstream {
        Upstream::new(name, Some("S".into()), Instant::now())
    }

    #[test]
    fn path_lists_the_subtree_then_ourselves() {
        let mut st = Stream::new();
        st.children.insert("C".into(), vec!["E".into(), "C".into()]);
        st.children.insert("D".into(), vec!["D".into()]);
        assert_eq!(st.path("B"), vec!["C", "D", "E", "B"]);
        assert_eq!(st.consumers(), 2);
        st.local = 2;
        assert_eq!(st.consumers(), 4);
    }

    #[test]
    fn the_path_announced_upstream_is_capped_but_always_ends_with_us() {
        let mut st = Stream::new();
        let many: Vec<String> = (0..MAX_LIST_LEN + 10).map(|i| format!("n{i:04}")).collect();
        st.children.insert("n0000".into(), many);
        let path = st.path("me");
        assert_eq!(path.len(), MAX_LIST_LEN);
        assert_eq!(path.last().map(String::as_str), Some("me"));
    }

    #[test]
    fn the_state_follows_the_upstreams() {
        let mut st = Stream::new();
        assert_eq!(st.state(), StreamState::Pending);
        st.gf_dialing
            .insert("G".into(), "10.0.0.1:7000".parse().unwrap());
        assert_eq!(st.state(), StreamState::Grandfathers);
        st.parent = Some(upstream("A"));
        assert_eq!(st.state(), StreamState::Streaming);
        st.pending = Some(upstream("B"));
        assert_eq!(st.state(), StreamState::Switching);
        st.second = Some(upstream("C"));
        let ups: Vec<&str> = st.upstreams().map(|u| u.name.as_str()).collect();
        assert_eq!(ups, ["A", "B", "C"]);
        assert!(st.is_parent("A") && st.is_pending("B") && st.is_second("C"));
        assert!(!st.is_parent("B"));
        st.source = Some((1, 0));
        assert_eq!(st.state(), StreamState::Source);
    }
}
