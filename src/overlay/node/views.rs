//! What a node shows about itself, read-only: its parent and route tables, per-link and
//! per-video traffic, chunk copies per child, and the failover gaps it measured (the time
//! between the last chunk forwarded before a failover and the first one after it). Plain
//! data for the status snapshot and the tests; the protocol never reads it back.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tracing::info;

use super::Node;
use crate::overlay::streams::{RouteView, StreamCounters};
use crate::wire::overlay::PeerAddr;

/// Video chunks and payload bytes that crossed one (neighbour, video) pair, both ways.
/// Bytes count the chunk payloads (MPEG-TS), not framing or encryption.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkTraffic {
    pub chunks_in: u64,
    pub bytes_in: u64,
    pub chunks_out: u64,
    pub bytes_out: u64,
}

/// Failover gaps measured at this node for one video: the time between the last chunk
/// forwarded before a failover and the first one forwarded after it (from the new parent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GapWatch {
    /// Gaps measured so far.
    pub measured: u64,
    pub last_gap: Option<Duration>,
    pub max_gap: Option<Duration>,
    failovers_seen: u64,
    last: Option<(u64, u64)>,
    last_at: Option<Instant>,
}

/// One parent-table line: a route to a server through a neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentView {
    pub server: String,
    pub neighbour: String,
    /// EWMA one-way delay, µs (includes clock skew: ranks parents of this server only).
    pub delay_us: i64,
    pub samples: u64,
    pub age: Duration,
    /// Skew-free metric: summed per-link RTT/2 along the path, µs (ranks servers).
    pub link_sum_us: u64,
    pub videos: Vec<String>,
}

/// A video's name interned once: per-chunk bookkeeping is keyed by it instead of an owned
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct VideoId(u32);

/// The interning table (videos are few and never forgotten: a name costs one allocation for
/// the node's lifetime).
#[derive(Debug, Default)]
pub(super) struct VideoIds {
    ids: HashMap<String, VideoId>,
    names: Vec<String>,
}

impl VideoIds {
    pub(super) fn intern(&mut self, name: &str) -> VideoId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = VideoId(self.names.len() as u32);
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    pub(super) fn name(&self, id: VideoId) -> &str {
        &self.names[id.0 as usize]
    }
}

impl Node {
    /// After a chunk from a neighbour: if it was forwarded and a failover happened since the
    /// previous forwarded chunk, the time between the two is the failover gap.
    pub(super) fn watch_gap(&mut self, now: Instant, video: VideoId) {
        let video = self.videos.name(video);
        let failovers = self.streams.counters(video).map_or(0, |c| c.failovers);
        let last = self.streams.last(video);
        if !self.gaps.contains_key(video) {
            self.gaps.insert(video.to_string(), GapWatch::default());
        }
        let w = self.gaps.get_mut(video).expect("inserted");
        if last == w.last || last.is_none() {
            return;
        }
        if failovers > w.failovers_seen {
            if let Some(at) = w.last_at {
                let gap = now.saturating_duration_since(at);
                w.measured += 1;
                w.last_gap = Some(gap);
                w.max_gap = Some(w.max_gap.map_or(gap, |m| m.max(gap)));
                info!(
                    video,
                    gap_ms = gap.as_secs_f64() * 1e3,
                    parent = ?self.streams.parent(video),
                    failovers,
                    "failover gap: first chunk from the new parent"
                );
            }
        }
        w.failovers_seen = failovers;
        w.last = last;
        w.last_at = Some(now);
    }

    /// Chunks and bytes per neighbour (or [`SOURCE_LINK`] / [`LOCAL_LINK`]) and video.
    pub fn link_traffic(&self) -> &BTreeMap<String, BTreeMap<String, LinkTraffic>> {
        &self.traffic
    }

    /// Failover gaps measured per video.
    pub fn failover_gaps(&self) -> &BTreeMap<String, GapWatch> {
        &self.gaps
    }

    /// Whether we carry `video` (source, fed, or waiting for a parent).
    pub fn carries(&self, video: &str) -> bool {
        self.streams.has(video)
    }

    /// The parent table: every route to every server, sorted by server then neighbour.
    pub fn parent_table(&self, now: Instant) -> Vec<ParentView> {
        self.routing
            .servers()
            .iter()
            .flat_map(|(server, s)| {
                s.parents.iter().map(move |(n, r)| ParentView {
                    server: server.clone(),
                    neighbour: n.clone(),
                    delay_us: r.delay_us as i64,
                    samples: r.samples,
                    age: now.saturating_duration_since(r.last_heard),
                    link_sum_us: r.link_sum_us,
                    videos: s.videos.clone(),
                })
            })
            .collect()
    }

    /// The route table: one line per stream.
    pub fn route_table(&self) -> Vec<RouteView> {
        self.streams.route_table(&self.routing)
    }

    /// Our current parent for a video.
    pub fn parent_of(&self, video: &str) -> Option<&str> {
        self.streams.parent(video)
    }

    /// Our second parent for a video (hitless redundancy), if any.
    pub fn second_parent_of(&self, video: &str) -> Option<&str> {
        self.streams.second(video)
    }

    /// Our grandfathers for a video (our parent's providers).
    pub fn grandfathers(&self, video: &str) -> &[PeerAddr] {
        self.streams.grandfathers(video)
    }

    pub fn stream_counters(&self, video: &str) -> Option<&StreamCounters> {
        self.streams.counters(video)
    }

    pub fn all_stream_counters(&self) -> &BTreeMap<String, StreamCounters> {
        self.streams.all_counters()
    }

    /// Chunks sent per (neighbour, video).
    pub fn link_copies(&self) -> BTreeMap<(String, String), u64> {
        let mut by_name = BTreeMap::new();
        for ((link, video), chunks) in &self.copies {
            let neighbour = self.copy_links.get(link).cloned().unwrap_or_default();
            let video = self.videos.name(*video).to_string();
            *by_name.entry((neighbour, video)).or_default() += chunks;
        }
        by_name
    }
}

pub(super) fn traffic_entry<'a>(
    traffic: &'a mut BTreeMap<String, BTreeMap<String, LinkTraffic>>,
    neighbour: &str,
    video: &str,
) -> &'a mut LinkTraffic {
    if !traffic.contains_key(neighbour) {
        traffic.insert(neighbour.to_string(), BTreeMap::new());
    }
    let per = traffic.get_mut(neighbour).expect("inserted");
    if !per.contains_key(video) {
        per.insert(video.to_string(), LinkTraffic::default());
    }
    per.get_mut(video).expect("inserted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_name_is_interned_once() {
        let mut ids = VideoIds::default();
        let a = ids.intern("a");
        let b = ids.intern("b");
        assert_ne!(a, b);
        assert_eq!(ids.intern("a"), a);
        assert_eq!(ids.name(b), "b");
        assert_eq!(ids.names.len(), 2);
    }
}
