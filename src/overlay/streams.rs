//! Streams: per video, who we feed (children, local consumers), who feeds us (the parent),
//! and every chunk that passes, in order and at most once.
//!
//! It owns the distribution tree as one node sees it. A request climbs along each node's best
//! parent (chosen from the flood [`Routing`] table); a node already receiving or requesting a
//! video only adds the child (fan-out); when its last consumer leaves it cancels upstream, so a
//! cancellation travels exactly as far as it should. Requests carry the requester's whole
//! subtree for that video (its `path`), and a node re-sends its request when its subtree
//! changes; a node never takes as parent a member of its own subtree, which is what keeps a
//! failover or a switch from closing a forwarding loop.
//!
//! Switching is make-before-break: the new parent is asked while the old one keeps feeding;
//! chunks from the new parent that are ahead of the old path are held in a small bounded
//! reorder buffer until the old path catches up, then the old parent is cancelled. Chunks carry
//! (epoch, seq); the sequencer forwards a chunk only if it is the next one, or after a gap the
//! old path can no longer fill, so nothing is delivered twice or out of order downstream. A new
//! epoch from the current parent is a new stream start (server restart, or another server for
//! the same name). A server's source lingers a little after its last consumer leaves, so a
//! consumer moving to another branch (whose cancel may overtake its new request) continues
//! the same epoch instead of restarting the video.
//!
//! Failover: a dead parent is replaced at once by the next-best one; with none left, the
//! node dials its grandfathers (its parent's own providers, learnt by grandfather request and
//! kept current by updates) and asks them. A node that cannot feed a child any more tells it
//! ([`VideoUnavailable`]) so the child moves on without waiting for routes to expire.
//!
//! Hitless redundancy (opt-in, [`StreamConfig::redundant`]): a stream with consumers also keeps
//! a *second parent* towards the same server (so both feeds carry the same (epoch, seq)), on a
//! path as disjoint from the parent's as the floods tell (their visited lists: a different
//! neighbour whose route does not run through the parent, sharing as few relays as possible).
//! Both feeds go through one merge: a chunk is forwarded when it is the next one; a chunk ahead
//! of a hole waits in a bounded buffer until the other feed fills the hole, or until no live
//! feed can fill it any more (each feed is in order, so a feed that passed the hole never
//! will); the later copy of each chunk is dropped and counted as the redundancy's cost. So the
//! death of either parent loses nothing: the other one already delivers. The survivor becomes
//! the parent and a new second parent is sought. Only the node that opted in takes two feeds:
//! its parents see an ordinary child, and it sends its children one copy.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::info;

use super::neighbours::{LinkId, NeighbourTable};
use super::routing::{Route, Routing};
use crate::wire::overlay::{
    GrandfatherRequest, Grandfathers, OverlayMsg, PeerAddr, VideoCancel, VideoData, VideoRequest,
    VideoUnavailable, FLAG_KEYFRAME,
};
use crate::wire::MAX_LIST_LEN;

/// Tunables of streaming (see [`crate::overlay::NodeConfig`] for defaults).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Hysteresis: a candidate parent must be better by this fraction of the current path's
    /// skew-free delay (`link_sum_us`) before we switch.
    pub switch_margin: f64,
    /// ... and by at least this much, so sub-millisecond jitter never flaps the tree.
    pub switch_floor: Duration,
    /// ... and stay better for this long: a delay spike of a loaded host (a scheduler hiccup
    /// delaying one flood) is not a better path. Failures never wait for it.
    pub switch_sustain: Duration,
    /// Chunks held from a new parent that is ahead of the old one.
    pub reorder_capacity: usize,
    /// An old parent silent this long while the new one delivers is taken as dead: the held
    /// chunks are released and the gap accepted.
    pub stall_timeout: Duration,
    /// A new parent that delivers nothing within this is abandoned.
    pub switch_timeout: Duration,
    /// How long a neighbour that refused a video (or failed a switch) is skipped for it.
    pub refuse_hold: Duration,
    /// A server keeps a source running this long after its last consumer left, so a
    /// consumer that moves (a failover whose cancel overtakes the new request) continues the
    /// same epoch instead of restarting the video from the beginning.
    pub source_linger: Duration,
    /// Hitless redundancy for every stream with consumers here (see module docs).
    pub redundant: bool,
    /// ... or only for these videos.
    pub redundant_videos: Vec<String>,
}

impl StreamConfig {
    /// Whether `video` takes two parents here.
    pub fn redundant_for(&self, video: &str) -> bool {
        self.redundant || self.redundant_videos.iter().any(|v| v == video)
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            switch_margin: 0.2,
            switch_floor: Duration::from_millis(1),
            switch_sustain: Duration::from_millis(1500),
            reorder_capacity: 128,
            stall_timeout: Duration::from_millis(500),
            switch_timeout: Duration::from_secs(2),
            refuse_hold: Duration::from_secs(3),
            source_linger: Duration::from_secs(2),
            redundant: false,
            redundant_videos: Vec::new(),
        }
    }
}

/// Per-video counters; they outlive the stream so tests can read them after a cancel.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamCounters {
    /// Chunks received from any neighbour (or produced by our source).
    pub chunks_in: u64,
    /// Copies sent to children.
    pub chunks_out: u64,
    /// Chunks handed to local consumers.
    pub delivered_local: u64,
    /// Chunks dropped because they were already forwarded (make-before-break overlap).
    pub duplicates: u64,
    /// Chunks from a neighbour that is not our parent for that video (in flight after a cancel).
    pub stray: u64,
    /// Sequence gaps accepted (chunks that never came), summed.
    pub gap_chunks: u64,
    /// Epoch changes (stream restarts) forwarded.
    pub epochs: u64,
    /// Completed make-before-break switches.
    pub switches: u64,
    /// Parent losses (death, refusal) handled.
    pub failovers: u64,
    /// Chunks that waited in the reorder buffer.
    pub held: u64,
    /// Requests that would have closed a loop (we are in their path).
    pub loops_refused: u64,
    /// Grandfather dials started.
    pub grandfather_dials: u64,
    /// Redundancy's cost: copies dropped because the other of two parents delivered them first.
    #[serde(default)]
    pub redundant_duplicates: u64,
    /// Payload bytes of those copies (the extra bandwidth redundancy takes in).
    #[serde(default)]
    pub redundant_bytes: u64,
    /// Parent losses where the second parent took over with no gap.
    #[serde(default)]
    pub hitless_failovers: u64,
    /// Second parents asked (first one and replacements).
    #[serde(default)]
    pub second_parents: u64,
}

/// What a stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// We are the server of this video.
    Source,
    /// Fed by one parent.
    Streaming,
    /// Fed by the old parent while the new one catches up.
    Switching,
    /// Dialling grandfathers after the only parent died.
    Grandfathers,
    /// Consumers wait; no parent yet.
    Pending,
}

/// One line of the route table, in the course's form.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteView {
    pub stream: String,
    /// Server the parent was chosen for (our own name when we are the source).
    pub origin: Option<String>,
    pub parent: Option<String>,
    pub switching_to: Option<String>,
    /// The second parent (hitless redundancy), if any.
    pub second: Option<String>,
    /// Delay to the origin through the parent (EWMA, µs). Includes clock skew: it ranks
    /// parents of one server only.
    pub delay_us: Option<i64>,
    /// Skew-free summed RTT/2 to the origin through the parent (µs): ranks servers.
    pub link_sum_us: Option<u64>,
    /// Children by name, then `local×N` for local consumers.
    pub destinations: Vec<String>,
    pub state: StreamState,
    /// Last (epoch, seq) forwarded.
    pub last: Option<(u64, u64)>,
}

/// What streams want done, drained by the node ([`Streams::poll_action`]) the way it drains
/// the neighbour table's actions: streams never write into another machine's queue.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamAction {
    /// Send a message to a linked neighbour.
    Send { link: LinkId, msg: OverlayMsg },
    /// Someone wants a video we serve: start reading it. Once per source run.
    SourceStart { video: String },
    /// The last consumer of a video we serve left (after the linger): stop reading it.
    SourceStop { video: String },
    /// A chunk for local consumers, in order and at most once.
    Deliver { video: String, data: VideoData },
    /// Dial this grandfather until a link is up (not a configured neighbour).
    Want(SocketAddr),
    /// Stop dialling this grandfather.
    Unwant(SocketAddr),
}

/// What streams read from the rest of the node, lent read-only for one input.
pub(crate) struct View<'a> {
    pub now: Instant,
    pub me: &'a str,
    pub wall_us: u64,
    pub cfg: &'a StreamConfig,
    pub routing: &'a Routing,
    pub neighbours: &'a NeighbourTable,
}

/// One input's working context: the read-only [`View`] and the actions produced so far
/// (the streams' own queue, lent back to it for the duration of the input).
pub(crate) struct Ctx<'a> {
    view: &'a View<'a>,
    out: &'a mut VecDeque<StreamAction>,
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = View<'a>;
    fn deref(&self) -> &View<'a> {
        self.view
    }
}

impl Ctx<'_> {
    fn send(&mut self, to: &str, msg: OverlayMsg) -> bool {
        match self.view.neighbours.by_name(to) {
            Some(n) => {
                self.out.push_back(StreamAction::Send { link: n.link, msg });
                true
            }
            None => false,
        }
    }

    fn push(&mut self, action: StreamAction) {
        self.out.push_back(action);
    }

    fn linked(&self, name: &str) -> bool {
        self.view.neighbours.by_name(name).is_some()
    }
}

#[derive(Debug, Clone)]
struct Upstream {
    name: String,
    server: Option<String>,
    since: Instant,
    last_data: Option<Instant>,
    /// Last (epoch, seq) received from it: a feed is in order, so it will never deliver
    /// anything at or below this.
    rx: Option<(u64, u64)>,
    /// Last known (delay µs, link sum µs) of the route through it (kept for the failover
    /// log line, when the route itself is already gone).
    metric: (Option<i64>, Option<u64>),
}

impl Upstream {
    fn new(name: &str, server: Option<String>, now: Instant) -> Self {
        Upstream {
            name: name.to_string(),
            server,
            since: now,
            last_data: None,
            rx: None,
            metric: (None, None),
        }
    }
}

#[derive(Debug)]
struct Stream {
    /// Children by name, with the subtree each one announced.
    children: BTreeMap<String, Vec<String>>,
    local: u32,
    /// Our own source run: (epoch, next seq).
    source: Option<(u64, u64)>,
    /// A source without consumers stops at this instant.
    linger_until: Option<Instant>,
    parent: Option<Upstream>,
    pending: Option<Upstream>,
    /// Hitless redundancy: the parent on the other path.
    second: Option<Upstream>,
    /// Last (epoch, seq) forwarded.
    last: Option<(u64, u64)>,
    /// Chunks from `pending` ahead of the old path, in order.
    held: VecDeque<VideoData>,
    /// Redundant streams: chunks of the current epoch waiting behind a hole, by seq, and since
    /// when the first hole has been waited for.
    merge: BTreeMap<u64, VideoData>,
    merge_since: Option<Instant>,
    /// A candidate parent found better than the current one, and since when it has been.
    better_since: Option<(String, Instant)>,
    /// The path last sent upstream.
    sent_path: Vec<String>,
    grandfathers: Vec<PeerAddr>,
    /// The parent we asked for grandfathers.
    gf_asked: Option<String>,
    /// Grandfathers being dialled, by name.
    gf_dialing: BTreeMap<String, SocketAddr>,
    /// Neighbours skipped for this video until the instant.
    refused: BTreeMap<String, Instant>,
}

impl Stream {
    fn new() -> Self {
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
        }
    }

    fn consumers(&self) -> usize {
        self.children.len() + self.local as usize
    }

    /// Every node we feed, directly or not, as far as requests told us.
    fn downstream(&self) -> BTreeSet<&str> {
        let mut d: BTreeSet<&str> = self.children.keys().map(String::as_str).collect();
        for p in self.children.values() {
            d.extend(p.iter().map(String::as_str));
        }
        d
    }

    /// The path we send up: our subtree, then ourselves last.
    fn path(&self, me: &str) -> Vec<String> {
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

    fn is_parent(&self, name: &str) -> bool {
        self.parent.as_ref().is_some_and(|p| p.name == name)
    }

    fn is_pending(&self, name: &str) -> bool {
        self.pending.as_ref().is_some_and(|p| p.name == name)
    }

    fn is_second(&self, name: &str) -> bool {
        self.second.as_ref().is_some_and(|p| p.name == name)
    }

    /// Every upstream we asked: parent, switch target, second parent.
    fn upstreams(&self) -> impl Iterator<Item = &Upstream> {
        [&self.parent, &self.pending, &self.second]
            .into_iter()
            .flatten()
    }

    fn state(&self) -> StreamState {
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

/// How a chunk relates to the last one forwarded.
enum Order {
    /// Forward it (next in sequence, after a gap of `gap` chunks, or a new epoch).
    Forward {
        gap: u64,
        new_epoch: bool,
    },
    Duplicate,
}

fn order(last: Option<(u64, u64)>, data: &VideoData) -> Order {
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

/// Which of a redundant stream's upstreams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Parent,
    Second,
    Pending,
}

/// A chosen parent: neighbour and the server it leads to.
struct Choice {
    neighbour: String,
    server: String,
}

/// Grandfather bookkeeping on the parent side: who asked, and what they were told last.
#[derive(Debug, Default)]
struct GfWatch {
    told: BTreeMap<String, Vec<PeerAddr>>,
}

/// All streams of a node (see module docs).
#[derive(Debug, Default)]
pub struct Streams {
    streams: BTreeMap<String, Stream>,
    counters: BTreeMap<String, StreamCounters>,
    gf_watch: BTreeMap<String, GfWatch>,
    /// Videos we serve ourselves.
    local_videos: Vec<String>,
    /// Last epoch used per video, so a restarted source run always gets a larger one.
    last_epoch: BTreeMap<String, u64>,
    /// What we want done, for the node to drain.
    actions: VecDeque<StreamAction>,
}

impl Streams {
    pub fn new(local_videos: Vec<String>) -> Self {
        Streams {
            local_videos,
            ..Default::default()
        }
    }

    /// Run one input against the read-only `view`; its actions wait in our queue.
    pub(crate) fn with<R>(
        &mut self,
        view: &View<'_>,
        f: impl FnOnce(&mut Self, &mut Ctx<'_>) -> R,
    ) -> R {
        let mut out = std::mem::take(&mut self.actions);
        let r = f(
            self,
            &mut Ctx {
                view,
                out: &mut out,
            },
        );
        self.actions = out;
        r
    }

    /// The next action for the node, in the order they were decided.
    pub fn poll_action(&mut self) -> Option<StreamAction> {
        self.actions.pop_front()
    }

    pub fn local_videos(&self) -> &[String] {
        &self.local_videos
    }

    pub fn counters(&self, video: &str) -> Option<&StreamCounters> {
        self.counters.get(video)
    }

    pub fn all_counters(&self) -> &BTreeMap<String, StreamCounters> {
        &self.counters
    }

    pub fn grandfathers(&self, video: &str) -> &[PeerAddr] {
        self.streams
            .get(video)
            .map(|s| s.grandfathers.as_slice())
            .unwrap_or(&[])
    }

    /// Whether we carry `video` (a stream entry exists: source, fed, or waiting).
    pub fn has(&self, video: &str) -> bool {
        self.streams.contains_key(video)
    }

    /// The children we feed `video` to, by name.
    pub fn children(&self, video: &str) -> Vec<String> {
        self.streams
            .get(video)
            .map(|s| s.children.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Last (epoch, seq) forwarded for `video`.
    pub fn last(&self, video: &str) -> Option<(u64, u64)> {
        self.streams.get(video).and_then(|s| s.last)
    }

    pub fn parent(&self, video: &str) -> Option<&str> {
        self.streams
            .get(video)
            .and_then(|s| s.parent.as_ref())
            .map(|p| p.name.as_str())
    }

    /// The second parent of a redundant stream.
    pub fn second(&self, video: &str) -> Option<&str> {
        self.streams
            .get(video)
            .and_then(|s| s.second.as_ref())
            .map(|p| p.name.as_str())
    }

    pub fn route_table(&self, routing: &Routing) -> Vec<RouteView> {
        self.streams
            .iter()
            .map(|(video, st)| {
                let route = st.parent.as_ref().and_then(|p| {
                    let server = p.server.as_deref()?;
                    routing.servers().get(server)?.parents.get(&p.name)
                });
                let mut destinations: Vec<String> = st.children.keys().cloned().collect();
                if st.local > 0 {
                    destinations.push(format!("local×{}", st.local));
                }
                let (origin, delay_us, link_sum_us) = if st.source.is_some() {
                    (None, Some(0), Some(0))
                } else {
                    (
                        st.parent.as_ref().and_then(|p| p.server.clone()),
                        route.map(|r| r.delay_us as i64),
                        route.map(|r| r.link_sum_us),
                    )
                };
                RouteView {
                    stream: video.clone(),
                    origin,
                    parent: st.parent.as_ref().map(|p| p.name.clone()),
                    switching_to: st.pending.as_ref().map(|p| p.name.clone()),
                    second: st.second.as_ref().map(|p| p.name.clone()),
                    delay_us,
                    link_sum_us,
                    destinations,
                    state: st.state(),
                    last: st.last,
                }
            })
            .collect()
    }

    // ---- consumers -------------------------------------------------------------------------

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
            self.counters
                .entry(video.clone())
                .or_default()
                .loops_refused += 1;
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
        st.children.insert(from.to_string(), path);
        // A child leaving the pending switch target in our subtree: the switch would loop.
        if st
            .pending
            .as_ref()
            .is_some_and(|p| st.downstream().contains(p.name.as_str()))
        {
            self.abandon_switch(ctx, &video);
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
            video: video.to_string(),
            epoch,
            seq,
            flags: if keyframe { FLAG_KEYFRAME } else { 0 },
            payload,
        };
        self.counters
            .entry(video.to_string())
            .or_default()
            .chunks_in += 1;
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

    // ---- upstream --------------------------------------------------------------------------

    /// Make sure a stream with consumers is fed: start our source, or ask the best parent.
    /// `refuse` answers children with [`VideoUnavailable`] when servers offer the video but
    /// no usable parent leads to one.
    fn activate(&mut self, ctx: &mut Ctx<'_>, video: &str, refuse: bool) {
        let local = self.local_videos.iter().any(|v| v == video);
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if st.consumers() == 0 {
            return;
        }
        st.linger_until = None;
        if local {
            if st.source.is_none() {
                let last = self.last_epoch.get(video).copied().unwrap_or(0);
                let epoch = ctx.wall_us.max(last + 1);
                self.last_epoch.insert(video.to_string(), epoch);
                st.source = Some((epoch, 0));
                info!(video, epoch, "stream started at its source");
                ctx.push(StreamAction::SourceStart {
                    video: video.to_string(),
                });
            }
            return;
        }
        if st.parent.is_some() || !st.gf_dialing.is_empty() {
            return;
        }
        match choose(ctx, video, st) {
            Some(c) => {
                let (delay_us, link_sum_us) = metric(ctx.routing, Some(&c.server), &c.neighbour);
                info!(
                    video, parent = %c.neighbour, server = %c.server, delay_us, link_sum_us,
                    "parent chosen"
                );
                self.adopt_parent(ctx, video, c, (delay_us, link_sum_us));
            }
            None => {
                let offered = ctx.routing.offers(video).next().is_some();
                if refuse && offered {
                    self.refuse_children(ctx, video);
                }
            }
        }
    }

    /// Take `c` as the parent of `video`: ask it for the video, and learn its own parents
    /// (our grandfathers) anew.
    fn adopt_parent(
        &mut self,
        ctx: &mut Ctx<'_>,
        video: &str,
        c: Choice,
        metric: (Option<i64>, Option<u64>),
    ) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.parent = Some(Upstream {
            metric,
            ..Upstream::new(&c.neighbour, Some(c.server), ctx.now)
        });
        st.gf_asked = None;
        st.grandfathers.clear();
        self.request(ctx, video, &c.neighbour);
        self.ask_grandfathers(ctx, video);
    }

    fn request(&mut self, ctx: &mut Ctx<'_>, video: &str, to: &str) {
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
            }),
        );
    }

    /// Our subtree changed: tell the parents (a repeated request only updates the path).
    fn send_path_update(&mut self, ctx: &mut Ctx<'_>, video: &str) {
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

    fn refuse_children(&mut self, ctx: &mut Ctx<'_>, video: &str) {
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
    fn release_if_unused(&mut self, ctx: &mut Ctx<'_>, video: &str) {
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

    /// The parent is gone (death, refusal, loop): the switch target takes over, else the
    /// next-best parent, else the grandfathers; with none, children are told.
    fn failover(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let old = st.parent.take();
        if st.source.is_some() || st.consumers() == 0 {
            self.release_if_unused(ctx, video);
            return;
        }
        self.counters
            .entry(video.to_string())
            .or_default()
            .failovers += 1;
        if let Some(second) = st.second.take() {
            // Hitless: the second parent already feeds us; it becomes the parent, and the
            // merge stops waiting for the dead feed. A new second parent is sought by
            // `reconcile`.
            info!(
                video, old_parent = ?old.as_ref().map(|o| o.name.as_str()),
                parent = %second.name, "failover: parent lost, second parent takes over (hitless)"
            );
            st.parent = Some(second);
            st.gf_asked = None;
            st.grandfathers.clear();
            self.counters
                .entry(video.to_string())
                .or_default()
                .hitless_failovers += 1;
            self.drain_merge(ctx, video);
            self.ask_grandfathers(ctx, video);
            return;
        }
        if st.pending.is_some() {
            self.complete_switch(ctx, video);
            return;
        }
        if let Some(c) = choose(ctx, video, st) {
            let (delay_us, link_sum_us) = metric(ctx.routing, Some(&c.server), &c.neighbour);
            info!(
                video, old_parent = ?old.as_ref().map(|o| o.name.as_str()),
                old_delay_us = ?old.as_ref().and_then(|o| o.metric.0),
                old_link_sum_us = ?old.as_ref().and_then(|o| o.metric.1),
                parent = %c.neighbour, server = %c.server, delay_us, link_sum_us,
                "failover: parent lost, next-best parent asked"
            );
            self.adopt_parent(ctx, video, c, (delay_us, link_sum_us));
            return;
        }
        // Catastrophic: our only provider died. Its own providers are our grandfathers.
        let gfs = std::mem::take(&mut st.grandfathers);
        let down = st
            .downstream()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        for gf in gfs {
            if gf.name == ctx.me || down.contains(&gf.name) {
                continue;
            }
            if ctx.linked(&gf.name) {
                info!(video, grandfather = %gf.name, "failover: only parent lost, asking a grandfather");
                st.gf_dialing.clear();
                st.parent = Some(Upstream::new(&gf.name, None, ctx.now));
                self.request(ctx, video, &gf.name);
                return;
            }
            info!(video, grandfather = %gf.name, addr = %gf.addr, "failover: only parent lost, dialling a grandfather");
            ctx.push(StreamAction::Want(gf.addr));
            st.gf_dialing.insert(gf.name, gf.addr);
            self.counters
                .entry(video.to_string())
                .or_default()
                .grandfather_dials += 1;
        }
        if st.gf_dialing.is_empty() {
            info!(
                video,
                "failover: no parent and no grandfather left; children told"
            );
            self.refuse_children(ctx, video);
        }
    }

    /// Start a make-before-break switch to `to`.
    fn start_switch(&mut self, ctx: &mut Ctx<'_>, video: &str, to: Choice) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let old = st.parent.as_ref();
        let (old_delay_us, old_link_sum_us) = match old {
            Some(o) => metric(ctx.routing, o.server.as_deref(), &o.name),
            None => (None, None),
        };
        let (new_delay_us, new_link_sum_us) = metric(ctx.routing, Some(&to.server), &to.neighbour);
        info!(
            video, from = ?old.map(|p| p.name.clone()), to = %to.neighbour,
            server = %to.server, ?old_delay_us, ?old_link_sum_us, ?new_delay_us, ?new_link_sum_us,
            "switching parent (make-before-break)"
        );
        st.pending = Some(Upstream::new(&to.neighbour, Some(to.server), ctx.now));
        self.request(ctx, video, &to.neighbour);
    }

    fn abandon_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        if let Some(p) = st.pending.take() {
            ctx.send(
                &p.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
            st.refused.insert(p.name, ctx.now + ctx.cfg.refuse_hold);
        }
        st.held.clear();
        self.drain_merge(ctx, video);
    }

    /// The switch target becomes the parent; the old parent (if still linked) is cancelled
    /// and the held chunks go out in order.
    fn complete_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(new) = st.pending.take() else {
            return;
        };
        let (delay_us, link_sum_us) = metric(ctx.routing, new.server.as_deref(), &new.name);
        info!(
            video, parent = %new.name, old_parent = ?st.parent.as_ref().map(|p| p.name.as_str()),
            ?delay_us, ?link_sum_us, "parent switch complete"
        );
        if let Some(old) = st.parent.replace(new) {
            ctx.send(
                &old.name,
                OverlayMsg::VideoCancel(VideoCancel {
                    video: video.to_string(),
                }),
            );
        }
        st.gf_asked = None;
        st.grandfathers.clear();
        let held = std::mem::take(&mut st.held);
        self.counters.entry(video.to_string()).or_default().switches += 1;
        for data in held {
            self.forward_if_in_order(ctx, video, data);
        }
        // Redundant streams: holes only the old parent could fill are given up on now.
        self.drain_merge(ctx, video);
        self.ask_grandfathers(ctx, video);
    }

    // ---- data ------------------------------------------------------------------------------

    pub(crate) fn on_data(&mut self, ctx: &mut Ctx<'_>, from: &str, data: VideoData) {
        if ctx.cfg.redundant_for(&data.video) {
            self.on_data_merged(ctx, from, data);
            return;
        }
        let video = data.video.clone();
        let c = self.counters.entry(video.clone()).or_default();
        c.chunks_in += 1;
        let Some(st) = self.streams.get_mut(&video) else {
            c.stray += 1;
            return;
        };
        if st.is_parent(from) {
            if let Some(p) = st.parent.as_mut() {
                p.last_data = Some(ctx.now);
            }
            if let Order::Forward {
                new_epoch: true, ..
            } = order(st.last, &data)
            {
                // The held chunks belong to the epoch that just ended.
                c.duplicates += st.held.len() as u64;
                st.held.clear();
            }
            self.forward_if_in_order(ctx, &video, data);
            // Has the old path caught up with what the new one holds?
            let st = self.streams.get_mut(&video).expect("present");
            let c = self.counters.entry(video.clone()).or_default();
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
            match st.last {
                Some((e, s)) if data.epoch == e && data.seq <= s => {
                    // The new path is behind: keep the old one until it catches up.
                    c.duplicates += 1;
                }
                Some((e, s))
                    if data.epoch == e
                        && data.seq > s + 1
                        && st.held.len() < ctx.cfg.reorder_capacity =>
                {
                    // The new path is ahead: hold until the old path fills the gap.
                    c.held += 1;
                    st.held.push_back(data);
                }
                _ => {
                    // Next in sequence, a new epoch (nothing to align with), the first chunk
                    // ever, or a full buffer: the new parent takes over now.
                    self.complete_switch(ctx, &video);
                    self.forward_if_in_order(ctx, &video, data);
                }
            }
        } else {
            c.stray += 1;
        }
    }

    fn forward_if_in_order(&mut self, ctx: &mut Ctx<'_>, video: &str, data: VideoData) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        let c = self.counters.entry(video.to_string()).or_default();
        match order(st.last, &data) {
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
    fn forward(&mut self, ctx: &mut Ctx<'_>, video: &str, data: VideoData) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        st.last = Some((data.epoch, data.seq));
        let c = self.counters.entry(video.to_string()).or_default();
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

    // ---- hitless redundancy ----------------------------------------------------------------

    /// A chunk of a redundant stream, from any of its feeds (see module docs).
    fn on_data_merged(&mut self, ctx: &mut Ctx<'_>, from: &str, data: VideoData) {
        let video = data.video.clone();
        let c = self.counters.entry(video.clone()).or_default();
        c.chunks_in += 1;
        let Some(st) = self.streams.get_mut(&video) else {
            c.stray += 1;
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
        if let Some(st) = self.streams.get(&video) {
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
    fn drain_merge(&mut self, ctx: &mut Ctx<'_>, video: &str) {
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
    fn ensure_second(&mut self, ctx: &mut Ctx<'_>, video: &str) {
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
        self.counters
            .entry(video.to_string())
            .or_default()
            .second_parents += 1;
        let name = c.neighbour;
        self.request(ctx, video, &name);
    }

    /// Let the second parent go (cancelled if still linked).
    fn drop_second(&mut self, ctx: &mut Ctx<'_>, video: &str, why: &str) {
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

    // ---- refusals and neighbours -----------------------------------------------------------

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

    pub(crate) fn neighbour_up(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        let videos: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.gf_dialing.contains_key(name))
            .map(|(v, _)| v.clone())
            .collect();
        for video in videos {
            let st = self.streams.get_mut(&video).expect("listed");
            for addr in std::mem::take(&mut st.gf_dialing).into_values() {
                ctx.push(StreamAction::Unwant(addr));
            }
            if st.parent.is_none() {
                // The first grandfather to answer the dial wins; the others are let go.
                info!(video, parent = %name, "grandfather connected, asked for the stream");
                st.parent = Some(Upstream::new(name, None, ctx.now));
                self.request(ctx, &video, name);
            }
        }
        self.reconcile(ctx);
    }

    pub(crate) fn neighbour_down(&mut self, ctx: &mut Ctx<'_>, name: &str) {
        for w in self.gf_watch.values_mut() {
            w.told.remove(name);
        }
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in videos {
            let Some(st) = self.streams.get_mut(&video) else {
                continue;
            };
            if st.children.remove(name).is_some() {
                if st.consumers() == 0 {
                    self.release_if_unused(ctx, &video);
                    continue;
                }
                self.send_path_update(ctx, &video);
            }
            let st = self.streams.get_mut(&video).expect("present");
            if st.is_pending(name) {
                st.pending = None;
                st.held.clear();
            }
            if st.is_second(name) {
                info!(video, second = %name, "second parent lost; the parent keeps feeding");
                st.second = None;
            }
            if st.is_parent(name) {
                self.failover(ctx, &video);
            }
            self.drain_merge(ctx, &video);
        }
    }

    pub(crate) fn dial_failed(&mut self, ctx: &mut Ctx<'_>, addr: SocketAddr) {
        let videos: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.gf_dialing.values().any(|a| *a == addr))
            .map(|(v, _)| v.clone())
            .collect();
        for video in videos {
            let st = self.streams.get_mut(&video).expect("listed");
            st.gf_dialing.retain(|_, a| *a != addr);
            ctx.push(StreamAction::Unwant(addr));
            if st.gf_dialing.is_empty() && st.parent.is_none() {
                // Every grandfather failed: perhaps a route came meanwhile; else tell children.
                self.activate(ctx, &video, true);
                if self.streams.get(&video).is_some_and(|s| s.parent.is_none()) {
                    self.refuse_children(ctx, &video);
                }
            }
        }
    }

    // ---- grandfathers ----------------------------------------------------------------------

    /// Our providers of `video` as grandfathers for `asker`.
    fn providers_for(&self, ctx: &Ctx<'_>, video: &str, asker: &str) -> Vec<PeerAddr> {
        let mut names: Vec<&str> = Vec::new();
        let st = self.streams.get(video);
        if st.is_some_and(|s| s.source.is_some()) {
            return Vec::new();
        }
        if let Some(st) = st {
            names.extend(st.upstreams().map(|u| u.name.as_str()));
        }
        names.extend(ctx.routing.providers(video));
        let mut seen = BTreeSet::new();
        names
            .into_iter()
            .filter(|n| *n != asker && *n != ctx.me && seen.insert(*n))
            .filter_map(|n| {
                ctx.neighbours.by_name(n).map(|nb| PeerAddr {
                    name: n.to_string(),
                    addr: nb.listen_addr,
                })
            })
            .collect()
    }

    pub(crate) fn on_grandfather_request(&mut self, ctx: &mut Ctx<'_>, from: &str, video: &str) {
        let list = self.providers_for(ctx, video, from);
        self.gf_watch
            .entry(video.to_string())
            .or_default()
            .told
            .insert(from.to_string(), list.clone());
        ctx.send(
            from,
            OverlayMsg::GrandfatherReply(Grandfathers {
                video: video.to_string(),
                grandfathers: list,
            }),
        );
    }

    pub(crate) fn on_grandfathers(&mut self, ctx: &mut Ctx<'_>, from: &str, gf: Grandfathers) {
        let Some(st) = self.streams.get_mut(&gf.video) else {
            return;
        };
        if st.is_parent(from) {
            st.grandfathers = gf
                .grandfathers
                .into_iter()
                .filter(|p| p.name != ctx.me)
                .collect();
        }
    }

    /// Ask the parent for its providers when it is our only one.
    fn ask_grandfathers(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get_mut(video) else {
            return;
        };
        let Some(parent) = st.parent.as_ref().map(|p| p.name.clone()) else {
            return;
        };
        if st.gf_asked.as_deref() == Some(parent.as_str()) {
            return;
        }
        let others = ctx
            .routing
            .providers(video)
            .into_iter()
            .any(|n| n != parent && ctx.neighbours.by_name(n).is_some());
        if others {
            return;
        }
        st.gf_asked = Some(parent.clone());
        ctx.send(
            &parent,
            OverlayMsg::GrandfatherRequest(GrandfatherRequest {
                video: video.to_string(),
            }),
        );
    }

    /// Tell children that asked whenever our providers changed.
    fn update_grandchildren(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.gf_watch.keys().cloned().collect();
        for video in videos {
            let askers: Vec<String> = self.gf_watch[&video].told.keys().cloned().collect();
            for asker in askers {
                let list = self.providers_for(ctx, &video, &asker);
                // An empty list helps nobody: the asker keeps the stale one until we know better.
                if list.is_empty() || self.gf_watch[&video].told[&asker] == list {
                    continue;
                }
                ctx.send(
                    &asker,
                    OverlayMsg::GrandfatherUpdate(Grandfathers {
                        video: video.clone(),
                        grandfathers: list.clone(),
                    }),
                );
                if let Some(w) = self.gf_watch.get_mut(&video) {
                    w.told.insert(asker, list);
                }
            }
        }
    }

    // ---- periodic and route-driven work ----------------------------------------------------

    /// Routes changed: feed waiting streams, refresh grandfathers.
    pub(crate) fn reconcile(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in &videos {
            self.activate(ctx, video, false);
            self.ensure_second(ctx, video);
            self.ask_grandfathers(ctx, video);
        }
        self.update_grandchildren(ctx);
    }

    /// Periodic: expire refusals, time out switches and held chunks, and switch to a clearly
    /// better parent.
    pub(crate) fn maintain(&mut self, ctx: &mut Ctx<'_>) {
        let videos: Vec<String> = self.streams.keys().cloned().collect();
        for video in &videos {
            self.release_if_unused(ctx, video);
            let Some(st) = self.streams.get_mut(video) else {
                continue;
            };
            st.refused.retain(|_, until| *until > ctx.now);
            if !st.merge.is_empty() {
                // A hole waited for too long is given up on.
                self.drain_merge(ctx, video);
            }
            let Some(st) = self.streams.get_mut(video) else {
                continue;
            };
            if let Some(p) = st.parent.as_mut() {
                let m = metric(ctx.routing, p.server.as_deref(), &p.name);
                if m.0.is_some() {
                    p.metric = m;
                }
            }
            if let Some(p) = &st.pending {
                let timed_out = ctx.now >= p.since + ctx.cfg.switch_timeout;
                if p.last_data.is_none() && timed_out {
                    self.abandon_switch(ctx, video);
                    continue;
                }
                if timed_out {
                    // The new path delivers but stays behind the old one: it would never
                    // catch up. Move now; its chunks are dropped as duplicates until they pass
                    // the last one forwarded (a pause of the lag, nothing lost or repeated).
                    self.complete_switch(ctx, video);
                    continue;
                }
                let old_silent = st.parent.as_ref().map_or(true, |o| {
                    ctx.now
                        .saturating_duration_since(o.last_data.unwrap_or(o.since))
                        >= ctx.cfg.stall_timeout
                });
                if p.last_data.is_some() && old_silent {
                    // The old path died without its link closing: accept the gap.
                    self.complete_switch(ctx, video);
                }
                continue;
            }
            self.consider_switch(ctx, video);
        }
        self.reconcile(ctx);
    }

    fn consider_switch(&mut self, ctx: &mut Ctx<'_>, video: &str) {
        let Some(st) = self.streams.get(video) else {
            return;
        };
        if st.source.is_some() {
            return;
        }
        let Some(cur) = st.parent.as_ref() else {
            return;
        };
        let Some(cand) = choose(ctx, video, st) else {
            return;
        };
        if cand.neighbour == cur.name {
            return;
        }
        let swap = st.is_second(&cand.neighbour);
        let mut withdrawn = false;
        let servers = ctx.routing.servers();
        let margin = |cur_us: f64| {
            (ctx.cfg.switch_margin * cur_us).max(ctx.cfg.switch_floor.as_micros() as f64)
        };
        let cand_route = &servers[&cand.server].parents[&cand.neighbour];
        // The route we are fed by: the current parent's towards the server it feeds us from.
        // Comparing with its route to the candidate's server instead would weigh a path we do
        // not use, and move a stream to another server (a jump in the video) for nothing. When
        // the feeding server is unknown (a grandfather took over) or the parent's route to it
        // is gone, its route to the candidate's server is the best guess. `true`: the same
        // server as the candidate's.
        let fed_by = cur
            .server
            .as_deref()
            .and_then(|s| Some((s == cand.server, servers.get(s)?.parents.get(&cur.name)?)))
            .or_else(|| Some((true, servers[&cand.server].parents.get(&cur.name)?)));
        let clearly_shorter =
            |cur_ls: u64| cur_ls as f64 - cand_route.link_sum_us as f64 > margin(cur_ls as f64);
        let better = match fed_by {
            // Same server: delays share its clock skew, so their difference is skew-free.
            Some((true, r)) => r.delay_us - cand_route.delay_us > margin(r.link_sum_us as f64),
            // Another server: compare skew-free path sums.
            Some((false, r)) => clearly_shorter(r.link_sum_us),
            // No route to either: compare with its best remaining route to any server
            // offering the video.
            None => match ctx
                .routing
                .offers(video)
                .filter_map(|(_, s)| s.parents.get(&cur.name))
                .map(|r| r.link_sum_us)
                .min()
            {
                Some(cur_ls) => clearly_shorter(cur_ls),
                // The parent offers no route any more (withdrawn): move.
                None => {
                    withdrawn = true;
                    true
                }
            },
        };
        // Hysteresis in time: the same candidate must stay better for `switch_sustain`.
        let st = self.streams.get_mut(video).expect("present");
        if !better {
            st.better_since = None;
            return;
        }
        if !withdrawn {
            match &st.better_since {
                Some((n, since)) if *n == cand.neighbour => {
                    if ctx.now.saturating_duration_since(*since) < ctx.cfg.switch_sustain {
                        return;
                    }
                }
                _ => {
                    st.better_since = Some((cand.neighbour.clone(), ctx.now));
                    if !ctx.cfg.switch_sustain.is_zero() {
                        return;
                    }
                }
            }
        }
        st.better_since = None;
        if swap {
            // Both already feed us: the roles change, no message is needed.
            let old = st
                .parent
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            info!(video, parent = %cand.neighbour, second = %old, "parent and second parent swap roles");
            std::mem::swap(&mut st.parent, &mut st.second);
            st.gf_asked = None;
            st.grandfathers.clear();
            self.counters.entry(video.to_string()).or_default().switches += 1;
            self.ask_grandfathers(ctx, video);
        } else {
            self.start_switch(ctx, video, cand);
        }
    }
}

/// The route metric through `neighbour` towards `server`: (EWMA delay µs, link sum µs).
fn metric(routing: &Routing, server: Option<&str>, neighbour: &str) -> (Option<i64>, Option<u64>) {
    let route = server
        .and_then(|s| routing.servers().get(s))
        .and_then(|s| s.parents.get(neighbour));
    (
        route.map(|r| r.delay_us as i64),
        route.map(|r| r.link_sum_us),
    )
}

/// The route towards `server` through `neighbour`, if the floods still offer it.
fn route_of<'a>(routing: &'a Routing, server: Option<&str>, neighbour: &str) -> Option<&'a Route> {
    routing.servers().get(server?)?.parents.get(neighbour)
}

/// The second parent of a redundant stream: a usable neighbour, other than the parent and the
/// switch target, with a route to the parent's server (same server, so both feeds number the
/// chunks alike) that does not run through the parent nor through our subtree. Among them the
/// one sharing the fewest relays with the parent's route (from the floods' visited lists),
/// then the fastest. Returns the choice and the number of shared relays.
fn choose_second(ctx: &Ctx<'_>, video: &str, st: &Stream) -> Option<(Choice, usize)> {
    let parent = st.parent.as_ref()?;
    let server = parent.server.as_deref()?;
    let routes = ctx.routing.servers().get(server)?;
    if !routes.offers(video) {
        return None;
    }
    // Relays of a route: its visited list without the server.
    let relays = |r: &Route| -> BTreeSet<String> { r.visited.iter().skip(1).cloned().collect() };
    let primary = routes
        .parents
        .get(&parent.name)
        .map(relays)
        .unwrap_or_else(|| BTreeSet::from([parent.name.clone()]));
    let down = st.downstream();
    routes
        .parents
        .iter()
        .filter(|(n, r)| {
            n.as_str() != parent.name
                && !st.is_pending(n)
                && n.as_str() != ctx.me
                && !down.contains(n.as_str())
                && !st.refused.get(*n).is_some_and(|until| *until > ctx.now)
                && ctx.neighbours.by_name(n).is_some()
                && !r.visited.contains(&parent.name)
                && !r.visited.iter().any(|v| down.contains(v.as_str()))
        })
        .map(|(n, r)| (relays(r).intersection(&primary).count(), r.delay_us, n))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(b.2)))
        .map(|(shared, _, n)| {
            (
                Choice {
                    neighbour: n.clone(),
                    server: server.to_string(),
                },
                shared,
            )
        })
}

/// The best usable parent for a stream: among servers offering the video, the one with the
/// smallest skew-free `link_sum_us`; towards it, the neighbour with the smallest delay.
fn choose(ctx: &Ctx<'_>, video: &str, st: &Stream) -> Option<Choice> {
    let down = st.downstream();
    let usable = |n: &str| {
        n != ctx.me
            && !down.contains(n)
            && !st.refused.get(n).is_some_and(|until| *until > ctx.now)
            && ctx.neighbours.by_name(n).is_some()
    };
    // Differences under the switch floor are measurement noise (on a LAN or loopback every
    // path is a fraction of a millisecond): among routes that close, the one with fewer hops
    // wins, so near-equal paths do not pick long detours or flap with scheduling jitter.
    let floor_us = ctx.cfg.switch_floor.as_micros() as f64;
    let servers: Vec<(u64, usize, &str)> = ctx
        .routing
        .offers(video)
        .filter_map(|(server, routes)| {
            let usable_routes = routes.parents.iter().filter(|(n, _)| usable(n));
            let ls = usable_routes.clone().map(|(_, r)| r.link_sum_us).min()?;
            let hops = usable_routes.map(|(_, r)| r.visited.len()).min()?;
            Some((ls, hops, server))
        })
        .collect();
    let best_ls = servers.iter().map(|(ls, _, _)| *ls).min()?;
    let (_, _, server) = servers
        .iter()
        .filter(|(ls, _, _)| (*ls as f64) <= best_ls as f64 + floor_us)
        .min_by_key(|(ls, hops, server)| (*hops, *ls, *server))?;
    let routes = &ctx.routing.servers()[*server];
    let parents: Vec<_> = routes.parents.iter().filter(|(n, _)| usable(n)).collect();
    let best_delay = parents
        .iter()
        .map(|(_, r)| r.delay_us)
        .min_by(|a, b| a.total_cmp(b))?;
    let (neighbour, _) = parents
        .into_iter()
        .filter(|(_, r)| r.delay_us <= best_delay + floor_us)
        .min_by(|(an, a), (bn, b)| {
            a.visited
                .len()
                .cmp(&b.visited.len())
                .then(a.delay_us.total_cmp(&b.delay_us))
                .then(a.link_sum_us.cmp(&b.link_sum_us))
                .then(an.cmp(bn))
        })?;
    Some(Choice {
        neighbour: neighbour.clone(),
        server: server.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn path_lists_the_subtree_then_ourselves() {
        let mut st = Stream::new();
        st.children.insert("C".into(), vec!["E".into(), "C".into()]);
        st.children.insert("D".into(), vec!["D".into()]);
        assert_eq!(st.path("B"), vec!["C", "D", "E", "B"]);
        assert_eq!(st.consumers(), 2);
    }
}
