//! Streams: per video, who we feed (children, local consumers), who feeds us (the parent),
//! and every chunk that passes, in order and at most once.
//!
//! It owns the distribution tree as one node sees it. A request climbs along each node's best
//! parent (chosen from the flood [`Routing`] table); a node already receiving or requesting a
//! video only adds the child (fan-out); when its last consumer leaves it cancels upstream, so a
//! cancellation travels exactly as far as it should. Requests carry the requester's whole
//! subtree for that video (its `path`); a node never takes as parent a member of its own
//! subtree, which is what keeps a failover or a switch from closing a forwarding loop.
//!
//! It is a folder of small parts over one [`Streams`] state, each in its own file with its own
//! tests: [`stream`] (one video's state), [`consumers`] (children, reference counting,
//! cancellation), [`upstream`] (parent, failover, link events), [`switch`] (make-before-break
//! to a better parent), [`sequencer`] (order and at-most-once, hold buffer), [`redundancy`]
//! (merge of two parents), [`refusals`], [`grandfathers`], [`gop`] (the chunks since the last
//! keyframe, for joining children), [`choice`] (pure parent choice),
//! [`suspicion`] (a parent silent beyond the stream's own chunk spacing) and [`deadlines`]
//! (each stream's exact next deadline, and the work done then).
//! Streams read the rest of the node through a read-only [`View`] and answer with
//! [`StreamAction`]s the node drains, as it does for the neighbour table.

mod choice;
mod consumers;
mod deadlines;
mod gop;
mod grandfathers;
mod redundancy;
mod refusals;
mod sequencer;
mod stream;
mod suspicion;
mod switch;
mod upstream;

use grandfathers::GfWatch;
use stream::Stream;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::neighbours::{LinkId, NeighbourTable};
use super::routing::{Route, Routing};
use crate::wire::overlay::{OverlayMsg, PeerAddr, VideoData};
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
    /// Bound of each stream's GOP cache in bytes ([`gop`]); 0: off.
    pub gop_cache_bytes: usize,
    /// Suspect a parent silent beyond the stream's own chunk spacing ([`suspicion`]); off:
    /// only the link's dead timer notices a silent parent (the old rule).
    pub suspect: bool,
    /// A parent's link is probed when it has been silent this many times the stream's mean
    /// chunk gap ...
    pub doubt_factor: f64,
    /// ... but never sooner than this;
    pub doubt_floor: Duration,
    /// it is suspected when nothing at all is heard on its link this long (plus the link's
    /// round trip) after the probe,
    pub probe_wait: Duration,
    /// or anyway after this many times the stream's peak chunk gap (at least 250 ms, which
    /// leaves a live parent the time to mend a stall upstream itself; at most
    /// `stall_timeout`).
    pub suspect_factor: f64,
    /// A parent left because it stalled is not switched back to for this long (the stream
    /// goes back to it only if it is needed: a failover), doubled for each further stall
    /// within [`STALL_MEMORY`], at most 32 times: a lossy link stalls its TCP again and
    /// again, and its delay alone keeps looking better ([`suspicion`]). Zero: off.
    pub stall_damping: Duration,
}

/// Stalls of one neighbour further apart than this start its damping afresh.
pub const STALL_MEMORY: Duration = Duration::from_secs(120);

/// How long a neighbour that stalled as a parent is not switched back to (see
/// [`StreamConfig::stall_damping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Damping {
    /// Stalls within `STALL_MEMORY` of each other.
    strikes: u32,
    last: Instant,
    until: Instant,
    /// A switch to it was held back in this period (counted once).
    held: bool,
}

impl Damping {
    /// Whether switches to the neighbour are held back at `now`.
    fn holds(&self, now: Instant) -> bool {
        now < self.until
    }
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
            gop_cache_bytes: 512 << 10,
            suspect: true,
            doubt_factor: 2.0,
            doubt_floor: Duration::from_millis(25),
            probe_wait: Duration::from_millis(30),
            suspect_factor: 3.0,
            stall_damping: Duration::from_secs(10),
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
    /// Chunks from a neighbour that is not our parent for that video (in flight after a cancel,
    /// or from a neighbour that still counts us as its child).
    pub stray: u64,
    /// Cancels sent to a neighbour because of its stray chunks (see `sequencer::cancel_stray`).
    pub stray_cancels: u64,
    /// Sequence gaps accepted (chunks that never came), summed.
    pub gap_chunks: u64,
    /// Epoch changes (stream restarts) forwarded.
    pub epochs: u64,
    /// Completed make-before-break switches.
    pub switches: u64,
    /// Losses (death, refusal) of a parent that had fed us: the stream moved on.
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
    /// Parents suspected: silent beyond the stream's own chunk spacing.
    #[serde(default)]
    pub suspicions: u64,
    /// ... that spoke again before the stream moved (no switch).
    #[serde(default)]
    pub suspicions_cleared: u64,
    /// Switches (in `switches`) that left a suspected parent.
    #[serde(default)]
    pub suspected_switches: u64,
    /// Times a better-looking parent was not switched to because it had stalled lately
    /// (counted once per candidate and damping period).
    #[serde(default)]
    pub damped_switches: u64,
    /// Cached chunks (since the last keyframe) sent to joining children.
    #[serde(default)]
    pub gop_chunks_sent: u64,
    /// Losses (death, refusal) of a parent asked but not yet feeding: the request moved on to
    /// the next-best parent. Not a failover (no flow broke): a parent whose route turned out to
    /// run through us, or one that died while the stream was being set up.
    #[serde(default)]
    pub parent_retries: u64,
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
    /// A parent on this link is doubted: ping it now, its answer tells whether it lives.
    Probe { link: LinkId },
    /// A relay parent on this link is suspected and no other parent can take its place:
    /// probe the link fast, so that a dead one is known as dead in a few probe intervals
    /// (and its grandfather dialled).
    Suspect {
        link: LinkId,
        /// Extra time before the fast probes declare it dead (the machine is slow now).
        grace: Duration,
    },
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

/// The counters of `video`, created on first use. Looked up by `&str`, so the per-chunk path
/// allocates nothing once they exist.
fn counters_of<'a>(
    counters: &'a mut BTreeMap<String, StreamCounters>,
    video: &str,
) -> &'a mut StreamCounters {
    if !counters.contains_key(video) {
        counters.insert(video.to_string(), StreamCounters::default());
    }
    counters.get_mut(video).expect("inserted")
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
    /// A stream's upstreams changed (failover, switch end, refusal, second parent let go):
    /// look for what that makes possible (a new second parent, grandfathers, children to
    /// update) before the input ends, not at a later scan.
    upstreams_changed: bool,
    /// When we last cancelled a neighbour's stray chunks of a video (rate limit).
    stray_cancelled: BTreeMap<(String, String), Instant>,
    /// How late our own deadlines fire: how slow this machine is now.
    lateness: suspicion::Lateness,
    /// Neighbours that stalled as parents lately, by name (all videos: a stall is the link's).
    damped: BTreeMap<String, Damping>,
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
        let mut ctx = Ctx {
            view,
            out: &mut out,
        };
        let r = f(self, &mut ctx);
        if std::mem::take(&mut self.upstreams_changed) {
            self.reconcile(&mut ctx);
            self.upstreams_changed = false;
        }
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
    /// Whether any stream here feeds a child (a draining node waits until none does).
    pub fn feeds_a_child(&self) -> bool {
        self.streams.values().any(|st| !st.children.is_empty())
    }

    /// Whether any stream here has a local consumer (an edge's clients).
    pub fn feeds_local(&self) -> bool {
        self.streams.values().any(|st| st.local > 0)
    }

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
}

#[cfg(test)]
mod testkit;
