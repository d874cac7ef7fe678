//! The node: the one state machine an overlay daemon (server, node or edge) runs.
//!
//! Inputs are link events, decoded overlay messages, source chunks and local subscriptions,
//! each stamped with `now`; outputs are dials, messages to send on a link, links to close,
//! source start/stop and chunks for local consumers, plus the next instant it wants to be
//! woken. It composes the neighbour table (links and liveness), the flood [`Routing`] table
//! (parents per server) and the [`Streams`] (distribution tree, switching, grandfathers), and
//! is the only place where they meet: a neighbour's death, for instance, withdraws its routes
//! first and then fails its streams over, so the failover already sees the routes that remain.
//! The parts never write into each other's queues: the node drains the neighbour table's
//! actions and the streams' actions, and combines their exact deadlines in its timer table
//! ([`Timer`]; [`Node::poll_timeout`] is `None` when nothing waits). Its own parts are
//! [`floods`] (receiving, forwarding and sending floods), [`withdrawals`] (a dead server
//! link's routes withdrawn everywhere), [`drain`] (leaving on purpose), [`timers`] and
//! [`views`] (read-only views for status).
//!
//! Wall time (flood timestamps) is never read from the system: the driver anchors it with
//! [`Node::set_wall_clock`] and the node derives it from the monotonic `now`. Without an anchor
//! wall time counts from the node's creation, which keeps rankings for one server correct
//! (they are skew-free) but makes one-way delays meaningless.

mod drain;
mod floods;
mod timers;
mod views;
mod withdrawals;

pub use timers::Timer;
use timers::TimerTable;
pub use withdrawals::{WITHDRAWALS_PER_SEC, WITHDRAWAL_BURST};

use views::{traffic_entry, VideoId, VideoIds};
pub use views::{GapWatch, LinkTraffic, ParentView};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::neighbours::{Action, LinkId, LivenessConfig, NeighbourTable};
use super::routing::Routing;
use super::streams::{Ctx, StreamAction, StreamConfig, Streams, View};
use super::trace::{self, RecentIds, ReplyStep, MAX_TRACE_HOPS};
use crate::wire::overlay::{
    Hello, OverlayMsg, OverlayRole, Ping, Pong, Trace, TraceHop, VideoData, OVERLAY_VERSION,
};

/// Pseudo-neighbour of [`Node::link_traffic`]: chunks our own source produced.
pub const SOURCE_LINK: &str = "@source";
/// Pseudo-neighbour of [`Node::link_traffic`]: chunks handed to local consumers.
pub const LOCAL_LINK: &str = "@local";

/// Configuration of a node. Build it with [`NodeConfig::new`] and change what you need.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: OverlayRole,
    /// Port we accept overlay links on, announced in our hello.
    pub listen_port: u16,
    /// Overlay neighbours from the topology.
    pub neighbours: Vec<SocketAddr>,
    pub liveness: LivenessConfig,
    /// Videos this node serves itself (servers).
    pub videos: Vec<String>,
    /// How often a server floods (default 1 s).
    pub flood_interval: Duration,
    /// Routes not refreshed for this many flood intervals expire (default 3, plus half an
    /// interval of slack for jitter).
    pub missed_floods: u32,
    /// Switching, reordering and refusal timings.
    pub streams: StreamConfig,
    /// When our link to a server goes down, flood a withdrawal of the routes over it (see
    /// [`crate::overlay::routing`]); false keeps the old behaviour (they expire).
    pub route_withdrawal: bool,
}

impl NodeConfig {
    pub fn new(
        name: impl Into<String>,
        role: OverlayRole,
        listen_port: u16,
        neighbours: Vec<SocketAddr>,
    ) -> Self {
        NodeConfig {
            name: name.into(),
            role,
            listen_port,
            neighbours,
            ..NodeConfig::default()
        }
    }

    /// How long a route lives without a fresh flood.
    pub fn flood_expiry(&self) -> Duration {
        self.flood_interval * self.missed_floods.max(1) + self.flood_interval / 2
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: String::new(),
            role: OverlayRole::Node,
            listen_port: 0,
            neighbours: Vec::new(),
            liveness: LivenessConfig::default(),
            videos: Vec::new(),
            flood_interval: Duration::from_secs(1),
            missed_floods: 3,
            streams: StreamConfig::default(),
            route_withdrawal: true,
        }
    }
}

/// What the node wants its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open an overlay link to this address; report `handle_link_up` or `handle_dial_failed`.
    Dial(SocketAddr),
    /// Send a message on a link.
    Send { link: LinkId, msg: OverlayMsg },
    /// Close a link; the driver then reports `handle_link_down`.
    Close { link: LinkId, reason: String },
    /// Someone wants a video we serve: start reading it and feed
    /// [`Node::handle_source_chunk`]. Emitted once per source run.
    SourceStart { video: String },
    /// The last consumer of a video we serve left: stop reading it.
    SourceStop { video: String },
    /// A chunk for local consumers ([`Node::subscribe_local`]), in order and at most once.
    Deliver { video: String, data: VideoData },
    /// A path answering a trace this node started ([`Node::start_trace`]): from us (first
    /// hop) to the node that answered (last hop).
    TraceReply {
        id: u64,
        video: String,
        hops: Vec<TraceHop>,
    },
}

/// Counters a driver or a test can read.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// A status from a daemon without the newer counters still reads.
#[serde(default)]
pub struct NodeCounters {
    pub links_up: u64,
    pub links_down: u64,
    pub dials: u64,
    pub dial_failures: u64,
    /// Messages that make no sense here (a hello after the hello, a late frame).
    pub messages_ignored: u64,
    pub floods_sent: u64,
    pub floods_received: u64,
    pub floods_forwarded: u64,
    /// Floods that carried our own name (went round a loop) or a forged sender.
    pub floods_dropped: u64,
    /// Withdrawal copies sent of our own (our link to a server went down) and of others'
    /// (forwarded), and withdrawals received.
    pub withdrawals_sent: u64,
    pub withdrawals_forwarded: u64,
    pub withdrawals_received: u64,
    /// Withdrawals received that made no sense (a server losing a link to itself).
    pub withdrawals_malformed: u64,
    /// Withdrawals over a neighbour's budget ([`WITHDRAWAL_BURST`]), dropped unread.
    pub withdrawals_limited: u64,
    /// Source chunks for a video nobody is consuming (raced with a stop).
    pub source_chunks_dropped: u64,
    /// Traces started here, probes forwarded to children, answers sent, and probes or
    /// replies dropped (malformed, repeated, or whose next hop is gone).
    pub traces_started: u64,
    pub traces_forwarded: u64,
    pub traces_answered: u64,
    pub traces_dropped: u64,
    /// Drain notices sent (we are draining), received from draining neighbours, and
    /// repeated ones ignored.
    #[serde(default)]
    pub drain_notices_sent: u64,
    #[serde(default)]
    pub drain_notices_received: u64,
    #[serde(default)]
    pub drain_notices_repeated: u64,
    /// Pings over the neighbour's budget ([`neighbours::PING_BURST`]), left unanswered.
    #[serde(default)]
    pub pings_limited: u64,
}

/// See module docs.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    neighbours: NeighbourTable,
    routing: Routing,
    streams: Streams,
    outputs: VecDeque<Output>,
    counters: NodeCounters,
    /// Chunks sent per (link, video): keyed by interned ids, so the per-chunk, per-child
    /// count allocates nothing.
    copies: HashMap<(LinkId, VideoId), u64>,
    /// The neighbour on each link that carried copies (kept after the link closes).
    copy_links: HashMap<LinkId, String>,
    videos: VideoIds,
    /// Per neighbour (or [`SOURCE_LINK`] / [`LOCAL_LINK`]), per video.
    traffic: BTreeMap<String, BTreeMap<String, LinkTraffic>>,
    gaps: BTreeMap<String, GapWatch>,
    traces_seen: RecentIds,
    /// (monotonic, wall µs) anchor.
    wall_anchor: (Instant, u64),
    /// [`Node::set_wall_clock`] was called at least once.
    wall_anchored: bool,
    /// Next flood (when we flood) and its sequence number.
    next_flood: Option<Instant>,
    flood_seq: Option<u64>,
    /// The exact deadline of each kind of timer (see [`timers`]).
    timers: TimerTable,
    /// Per neighbour: withdrawals it may still send (a token bucket) and when it was filled.
    withdrawal_budget: HashMap<String, crate::overlay::budget::Budget>,
    /// An input changed what the neighbour table waits for (a dial wanted or dropped) on a
    /// path that otherwise leaves its deadline alone (a chunk).
    links_touched: bool,
    /// Draining (see [`drain`]): we exit within this.
    draining: Option<Duration>,
}

impl Node {
    pub fn new(config: NodeConfig, now: Instant) -> Node {
        let mut neighbours = NeighbourTable::new(&config.name, config.liveness.clone(), now);
        for addr in &config.neighbours {
            neighbours.want(now, *addr, true);
        }
        let streams = Streams::new(config.videos.clone());
        let mut node = Node {
            neighbours,
            routing: Routing::new(),
            streams,
            outputs: VecDeque::new(),
            counters: NodeCounters::default(),
            copies: HashMap::new(),
            copy_links: HashMap::new(),
            videos: VideoIds::default(),
            traffic: BTreeMap::new(),
            gaps: BTreeMap::new(),
            traces_seen: RecentIds::default(),
            wall_anchor: (now, 0),
            wall_anchored: false,
            next_flood: None,
            flood_seq: None,
            timers: TimerTable::default(),
            withdrawal_budget: HashMap::new(),
            links_touched: false,
            draining: None,
            config,
        };
        if node.floods() {
            node.next_flood = Some(now);
        }
        node.rearm();
        node.handle_timeout(now);
        node
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The hello this node sends first on every link.
    pub fn hello(&self) -> Hello {
        Hello {
            name: self.config.name.clone(),
            role: self.config.role,
            version: OVERLAY_VERSION,
            listen_port: self.config.listen_port,
        }
    }

    pub fn neighbours(&self) -> &NeighbourTable {
        &self.neighbours
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Anchor wall time: at monotonic `now` the wall clock reads `wall_us` (µs since the UNIX
    /// epoch). Flood timestamps and delays derive from it.
    pub fn set_wall_clock(&mut self, now: Instant, wall_us: u64) {
        self.wall_anchor = (now, wall_us);
        if !std::mem::replace(&mut self.wall_anchored, true) {
            // The first flood went out at creation, before any anchor, numbered from wall time
            // 0. A restarted server must flood newer numbers than its previous life, or every
            // node still holding the old (higher) sequence number records its floods without
            // forwarding them: rebase once on the real wall clock.
            if let Some(seq) = self.flood_seq {
                self.flood_seq = Some(seq.max(wall_us / 1000));
            }
        }
    }

    /// Our wall clock at `now`, µs since the UNIX epoch.
    pub fn wall_us(&self, now: Instant) -> u64 {
        let (at, wall) = self.wall_anchor;
        if now >= at {
            wall.saturating_add((now - at).as_micros() as u64)
        } else {
            wall.saturating_sub((at - now).as_micros() as u64)
        }
    }

    fn floods(&self) -> bool {
        self.config.role == OverlayRole::Server || !self.config.videos.is_empty()
    }

    /// Change the videos we serve (files added or removed). Announced in the next flood.
    pub fn set_videos(&mut self, now: Instant, videos: Vec<String>) {
        self.config.videos = videos.clone();
        if self.floods() && self.next_flood.is_none() {
            self.next_flood = Some(now);
        }
        self.with_streams(now, |s, ctx| s.set_local_videos(ctx, videos));
        self.flush_actions(now);
        self.rearm();
    }

    /// A local consumer (an edge's client, a test) wants `video`; counted like one child.
    pub fn subscribe_local(&mut self, now: Instant, video: &str) {
        self.with_streams(now, |s, ctx| s.subscribe_local(ctx, video));
        self.flush_actions(now);
        self.rearm();
    }

    /// A local consumer left.
    pub fn unsubscribe_local(&mut self, now: Instant, video: &str) {
        self.with_streams(now, |s, ctx| s.unsubscribe_local(ctx, video));
        self.flush_actions(now);
        self.rearm();
    }

    /// A chunk read from a video we serve (after [`Output::SourceStart`]). The node numbers
    /// it and sends it to every consumer.
    pub fn handle_source_chunk(
        &mut self,
        now: Instant,
        video: &str,
        payload: Bytes,
        keyframe: bool,
    ) {
        let len = payload.len() as u64;
        let sent = self.with_streams(now, |s, ctx| s.source_chunk(ctx, video, payload, keyframe));
        if sent {
            let t = traffic_entry(&mut self.traffic, SOURCE_LINK, video);
            t.chunks_in += 1;
            t.bytes_in += len;
        } else {
            self.counters.source_chunks_dropped += 1;
        }
        self.rearm_after_chunk();
    }

    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.counters.dial_failures += 1;
        match self.neighbours.dial_failed(now, addr) {
            Some(delay) => info!(
                %addr, reason, retry_in_ms = delay.as_millis() as u64,
                "neighbour not reachable, retrying"
            ),
            None => debug!(%addr, reason, "dial failed for an address no longer wanted"),
        }
        self.with_streams(now, |s, ctx| s.dial_failed(ctx, addr));
        self.flush_actions(now);
        self.rearm();
    }

    /// A link passed the encrypted handshake and the hello exchange. `dialled` is the address
    /// we dialled for an outbound link, `None` for an inbound one.
    pub fn handle_link_up(
        &mut self,
        now: Instant,
        link: LinkId,
        remote: SocketAddr,
        dialled: Option<SocketAddr>,
        hello: Hello,
    ) {
        if hello.version != OVERLAY_VERSION {
            warn!(%link, peer = %hello.name, version = hello.version, "incompatible protocol version");
            self.outputs.push_back(Output::Close {
                link,
                reason: format!(
                    "protocol version {} (we speak {})",
                    hello.version, OVERLAY_VERSION
                ),
            });
            if let Some(addr) = dialled {
                self.neighbours.dial_failed(now, addr);
            }
            self.rearm();
            return;
        }
        self.neighbours.link_up(now, link, remote, dialled, &hello);
        self.flush_actions(now);
        self.rearm();
    }

    pub fn handle_link_down(&mut self, now: Instant, link: LinkId, reason: &str) {
        self.neighbours.link_down(now, link, reason);
        self.flush_actions(now);
        self.rearm();
    }

    pub fn handle_message(&mut self, now: Instant, link: LinkId, msg: OverlayMsg) {
        let Some(from) = self.neighbours.get(link).map(|n| n.name.clone()) else {
            // A late frame on a link we already retired.
            self.counters.messages_ignored += 1;
            return;
        };
        self.neighbours.heard(now, link);
        let chunk = msg.is_media();
        match msg {
            OverlayMsg::Ping(Ping { token }) => {
                if !self.neighbours.handle_ping(now, link, token) {
                    self.counters.pings_limited += 1;
                }
            }
            OverlayMsg::Pong(Pong { token }) => self.neighbours.handle_pong(now, link, token),
            OverlayMsg::Flood(f) => self.handle_flood(now, link, &from, f),
            OverlayMsg::Withdrawal(w) => self.handle_withdrawal(now, link, &from, w),
            OverlayMsg::VideoRequest(r) => {
                self.with_streams(now, |s, ctx| s.on_request(ctx, &from, r))
            }
            OverlayMsg::VideoCancel(c) => {
                self.with_streams(now, |s, ctx| s.on_cancel(ctx, &from, &c.video))
            }
            OverlayMsg::VideoUnavailable(u) => {
                self.with_streams(now, |s, ctx| s.on_unavailable(ctx, &from, &u.video))
            }
            OverlayMsg::VideoData(d) => {
                let video = self.videos.intern(&d.video);
                let t = traffic_entry(&mut self.traffic, &from, &d.video);
                t.chunks_in += 1;
                t.bytes_in += d.payload.len() as u64;
                self.with_streams(now, |s, ctx| s.on_data(ctx, &from, d));
                self.watch_gap(now, video);
            }
            OverlayMsg::Trace(t) => self.handle_trace(now, &from, t),
            OverlayMsg::GrandfatherRequest(r) => {
                self.with_streams(now, |s, ctx| s.on_grandfather_request(ctx, &from, &r.video))
            }
            OverlayMsg::GrandfatherReply(g) | OverlayMsg::GrandfatherUpdate(g) => {
                self.with_streams(now, |s, ctx| s.on_grandfathers(ctx, &from, g))
            }
            OverlayMsg::Drain(d) => self.handle_drain_notice(now, link, &from, d),
            other @ OverlayMsg::Hello(_) => {
                self.counters.messages_ignored += 1;
                debug!(%link, kind = other.kind(), "message not handled by this node");
            }
        }
        self.flush_actions(now);
        if chunk {
            self.rearm_after_chunk();
        } else {
            self.rearm();
        }
    }

    /// Handle every timer due at `now` (see [`Node::poll_timeout`]); calling it early does
    /// nothing but re-arm.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(due) = self.timers.next().filter(|&t| t <= now) {
            self.streams.deadline_handled(now, due);
        }
        let due: Vec<Timer> = self.timers.due(now).collect();
        for timer in due {
            match timer {
                Timer::Links => {
                    self.neighbours.handle_timeout(now);
                    self.flush_actions(now);
                }
                Timer::Flood => {
                    if self.floods() && self.draining.is_none() {
                        self.send_flood(now, None);
                        self.next_flood = Some(now + self.config.flood_interval);
                    } else {
                        self.next_flood = None;
                    }
                }
                Timer::RouteExpiry => {
                    if self.routing.expire(now, self.config.flood_expiry()) {
                        self.with_streams(now, |s, ctx| s.reconcile(ctx));
                        self.flush_actions(now);
                    }
                }
                Timer::Streams => {
                    self.with_streams(now, |s, ctx| s.handle_timeout(ctx));
                    self.flush_actions(now);
                }
            }
        }
        self.rearm();
    }

    /// Set every timer from the part that owns it.
    fn rearm(&mut self) {
        self.links_touched = false;
        self.timers
            .set(Timer::Links, self.neighbours.poll_timeout());
        self.timers.set(Timer::Flood, self.next_flood);
        let expiry = self.config.flood_expiry();
        self.timers
            .set(Timer::RouteExpiry, self.routing.next_expiry(expiry));
        self.rearm_streams();
    }

    /// After a chunk: only the streams' deadline moved (a neighbour heard from only pushes
    /// its own deadlines later, and an early wake-up merely re-arms).
    fn rearm_after_chunk(&mut self) {
        if self.links_touched {
            self.rearm();
        } else {
            self.rearm_streams();
        }
    }

    fn rearm_streams(&mut self) {
        let at = self.streams.poll_timeout(&self.config.streams);
        self.timers.set(Timer::Streams, at);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front()?;
        match &out {
            Output::Send {
                link,
                msg: OverlayMsg::VideoData(d),
            } => {
                if let Some(n) = self.neighbours.get(*link) {
                    let t = traffic_entry(&mut self.traffic, &n.name, &d.video);
                    t.chunks_out += 1;
                    t.bytes_out += d.payload.len() as u64;
                }
            }
            Output::Deliver { video, data } => {
                let t = traffic_entry(&mut self.traffic, LOCAL_LINK, video);
                t.chunks_out += 1;
                t.bytes_out += data.payload.len() as u64;
            }
            _ => {}
        }
        Some(out)
    }

    /// The nearest deadline of any timer, exactly; `None` when nothing waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ---- traces -----------------------------------------------------------

    /// Start a trace of `video`'s tree from here (see [`crate::overlay::trace`]). `id` should be
    /// random. Our own hop comes back at once as the first [`Output::TraceReply`]; the answers of
    /// the nodes below follow as they arrive. Fails when we do not carry the video.
    pub fn start_trace(&mut self, now: Instant, id: u64, video: &str) -> Result<(), String> {
        if !self.streams.has(video) {
            return Err(format!(
                "{} does not carry '{video}' (no consumer here or below)",
                self.config.name
            ));
        }
        self.counters.traces_started += 1;
        self.traces_seen.insert(now, id);
        let hops = vec![TraceHop {
            name: self.config.name.clone(),
            at_us: self.wall_us(now),
        }];
        self.outputs.push_back(Output::TraceReply {
            id,
            video: video.to_string(),
            hops: hops.clone(),
        });
        self.forward_trace(Trace {
            id,
            video: video.to_string(),
            reply: false,
            hops,
        });
        Ok(())
    }

    fn forward_trace(&mut self, probe: Trace) {
        if probe.hops.len() >= MAX_TRACE_HOPS {
            return;
        }
        for child in self.streams.children(&probe.video) {
            if probe.hops.iter().any(|h| h.name == child) {
                continue;
            }
            if let Some(n) = self.neighbours.by_name(&child) {
                self.counters.traces_forwarded += 1;
                self.outputs.push_back(Output::Send {
                    link: n.link,
                    msg: OverlayMsg::Trace(probe.clone()),
                });
            }
        }
    }

    fn handle_trace(&mut self, now: Instant, from: &str, mut t: Trace) {
        if t.reply {
            match trace::reply_step(&self.config.name, from, &t) {
                ReplyStep::Arrived => self.outputs.push_back(Output::TraceReply {
                    id: t.id,
                    video: t.video,
                    hops: t.hops,
                }),
                ReplyStep::PassTo(prev) => match self.neighbours.by_name(&prev) {
                    Some(n) => {
                        let link = n.link;
                        self.outputs.push_back(Output::Send {
                            link,
                            msg: OverlayMsg::Trace(t),
                        });
                    }
                    None => self.counters.traces_dropped += 1,
                },
                ReplyStep::Invalid => self.counters.traces_dropped += 1,
            }
            return;
        }
        let on_path = t.hops.iter().any(|h| h.name == self.config.name);
        if !trace::probe_is_valid(from, &t) || on_path || !self.traces_seen.insert(now, t.id) {
            self.counters.traces_dropped += 1;
            debug!(from, id = t.id, "trace probe dropped (malformed or seen)");
            return;
        }
        t.hops.push(TraceHop {
            name: self.config.name.clone(),
            at_us: self.wall_us(now),
        });
        self.counters.traces_answered += 1;
        if let Some(n) = self.neighbours.by_name(from) {
            let link = n.link;
            self.outputs.push_back(Output::Send {
                link,
                msg: OverlayMsg::Trace(Trace {
                    reply: true,
                    ..t.clone()
                }),
            });
        }
        self.forward_trace(t);
    }

    // ---- plumbing --------------------------------------------------------------------------

    /// Run a streams input against a read-only view of the node, then carry out what the
    /// streams decided, in order.
    fn with_streams<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Streams, &mut Ctx<'_>) -> R,
    ) -> R {
        let view = View {
            now,
            me: &self.config.name,
            wall_us: self.wall_us(now),
            cfg: &self.config.streams,
            routing: &self.routing,
            neighbours: &self.neighbours,
        };
        let r = self.streams.with(&view, f);
        self.drain_stream_actions(now);
        r
    }

    fn drain_stream_actions(&mut self, now: Instant) {
        while let Some(action) = self.streams.poll_action() {
            match action {
                StreamAction::Send { link, msg } => {
                    if let (OverlayMsg::VideoData(d), Some(n)) = (&msg, self.neighbours.get(link)) {
                        let video = self.videos.intern(&d.video);
                        *self.copies.entry((link, video)).or_default() += 1;
                        // Keyed by the link id: the name is cloned once per link.
                        self.copy_links
                            .entry(link)
                            .or_insert_with(|| n.name.clone());
                    }
                    self.outputs.push_back(Output::Send { link, msg });
                }
                StreamAction::SourceStart { video } => {
                    self.outputs.push_back(Output::SourceStart { video })
                }
                StreamAction::SourceStop { video } => {
                    self.outputs.push_back(Output::SourceStop { video })
                }
                StreamAction::Deliver { video, data } => {
                    self.outputs.push_back(Output::Deliver { video, data })
                }
                StreamAction::Want(addr) => {
                    self.neighbours.want(now, addr, false);
                    self.links_touched = true;
                }
                StreamAction::Unwant(addr) => {
                    self.neighbours.unwant(addr);
                    self.links_touched = true;
                }
                StreamAction::Probe { link } => {
                    self.neighbours.probe(now, link);
                    self.links_touched = true;
                }
                StreamAction::Suspect { link, grace } => {
                    self.neighbours.suspect(now, link, grace);
                    self.links_touched = true;
                }
            }
        }
    }

    fn flush_actions(&mut self, now: Instant) {
        while let Some(action) = self.neighbours.poll_action() {
            match action {
                Action::Dial(addr) => {
                    self.counters.dials += 1;
                    self.outputs.push_back(Output::Dial(addr));
                }
                Action::Ping { link, token } => self.outputs.push_back(Output::Send {
                    link,
                    msg: OverlayMsg::Ping(Ping { token }),
                }),
                Action::Pong { link, token } => self.outputs.push_back(Output::Send {
                    link,
                    msg: OverlayMsg::Pong(Pong { token }),
                }),
                Action::Close { link, reason } => {
                    self.outputs.push_back(Output::Close { link, reason })
                }
                Action::Up { link, name } => {
                    self.counters.links_up += 1;
                    let n = self.neighbours.get(link);
                    info!(
                        %link, neighbour = %name,
                        role = ?n.map(|n| n.role),
                        addr = %n.map(|n| n.listen_addr.to_string()).unwrap_or_default(),
                        "neighbour up"
                    );
                    if self.draining.is_some() {
                        self.send_drain_notice(link);
                    } else if self.flood_seq.is_some() && self.floods() {
                        self.send_flood(now, Some(link));
                    }
                    self.with_streams(now, |s, ctx| s.neighbour_up(ctx, &name));
                }
                Action::Replaced { old, new, name } => {
                    debug!(%old, %new, neighbour = %name, "duplicate link resolved");
                    // What we sent on the losing link is lost if the peer closed it first.
                    self.with_streams(now, |s, ctx| s.neighbour_relinked(ctx, &name));
                }
                Action::Down { link, name, reason } => {
                    self.counters.links_down += 1;
                    info!(%link, neighbour = %name, reason, "neighbour down");
                    self.withdrawal_budget.remove(&name);
                    if self.config.route_withdrawal {
                        let me = &self.config.name;
                        if let Some(w) = self.routing.withdrawal_for(now, me, &name) {
                            info!(server = %name, last_seq = w.last_seq,
                                "link to a server down: its routes over us withdrawn");
                            self.send_withdrawal(&w, None);
                        }
                    }
                    // Routes first, so the failover sees only what remains.
                    self.routing.neighbour_down(&name);
                    self.with_streams(now, |s, ctx| {
                        s.neighbour_down(ctx, &name);
                        s.reconcile(ctx);
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::overlay::{Flood, Withdrawal};

    fn first_flood_seq(node: &mut Node, now: Instant) -> u64 {
        let hello = Hello {
            name: "N".into(),
            role: OverlayRole::Node,
            version: OVERLAY_VERSION,
            listen_port: 7000,
        };
        let peer: SocketAddr = "10.0.0.2:7000".parse().expect("address");
        node.handle_link_up(now, LinkId(1), peer, None, hello);
        std::iter::from_fn(|| node.poll_output())
            .find_map(|o| match o {
                Output::Send {
                    msg: OverlayMsg::Flood(f),
                    ..
                } => Some(f.seq),
                _ => None,
            })
            .expect("a server floods to a new neighbour")
    }

    fn server(now: Instant, wall_us: u64) -> Node {
        let mut cfg = NodeConfig::new("S", OverlayRole::Server, 7000, vec![]);
        cfg.videos = vec!["v".into()];
        let mut node = Node::new(cfg, now);
        // As the drivers do: the wall clock is anchored after creation.
        node.set_wall_clock(now, wall_us);
        node
    }

    #[test]
    fn a_restarted_server_floods_newer_sequence_numbers_than_its_previous_life() {
        // Regression (seeds 66 and others of the fault simulation): the first flood was
        // numbered at creation, before the wall clock was anchored, so every life of a server
        // counted from 0, and nodes still holding the previous life's higher number recorded
        // the new floods without forwarding them.
        let t0 = Instant::now();
        let wall0 = 1_700_000_000_000_000;
        let mut first = server(t0, wall0);
        let mut seq = first_flood_seq(&mut first, t0);
        // The first life runs 20 floods.
        for i in 1..=20 {
            let t = t0 + first.config().flood_interval * i;
            first.handle_timeout(t);
            for o in std::iter::from_fn(|| first.poll_output()) {
                if let Output::Send {
                    msg: OverlayMsg::Flood(f),
                    ..
                } = o
                {
                    assert!(f.seq > seq);
                    seq = f.seq;
                }
            }
        }
        // Restarted 1 s after its last flood.
        let t1 = t0 + Duration::from_secs(21);
        let mut second = server(t1, wall0 + 21_000_000);
        assert!(first_flood_seq(&mut second, t1) > seq);
    }

    fn hello(name: &str, role: OverlayRole) -> Hello {
        Hello {
            name: name.into(),
            role,
            version: OVERLAY_VERSION,
            listen_port: 7000,
        }
    }

    /// Node A linked to server S (link 1) and node B (link 2), with S's flood heard.
    fn a_between_s_and_b(withdraw: bool) -> (Node, Instant) {
        let t0 = Instant::now();
        let mut cfg = NodeConfig::new("A", OverlayRole::Node, 7000, vec![]);
        cfg.route_withdrawal = withdraw;
        let mut a = Node::new(cfg, t0);
        let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 7000));
        a.handle_link_up(
            t0,
            LinkId(1),
            addr(1),
            None,
            hello("S", OverlayRole::Server),
        );
        a.handle_link_up(t0, LinkId(2), addr(2), None, hello("B", OverlayRole::Node));
        let flood = Flood {
            server: "S".into(),
            seq: 42,
            sent_at_us: 0,
            link_sum_us: 0,
            visited: vec!["S".into()],
            videos: vec!["v".into()],
        };
        a.handle_message(t0, LinkId(1), OverlayMsg::Flood(flood));
        while a.poll_output().is_some() {}
        (a, t0)
    }

    fn withdrawals_sent(node: &mut Node) -> Vec<(LinkId, Withdrawal)> {
        std::iter::from_fn(|| node.poll_output())
            .filter_map(|o| match o {
                Output::Send {
                    link,
                    msg: OverlayMsg::Withdrawal(w),
                } => Some((link, w)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_death_of_a_link_to_a_server_is_flooded_as_a_withdrawal() {
        let (mut a, t0) = a_between_s_and_b(true);
        a.handle_link_down(t0, LinkId(1), "connection closed by peer");
        let sent = withdrawals_sent(&mut a);
        let expected = Withdrawal {
            server: "S".into(),
            neighbour: "A".into(),
            last_seq: 42,
        };
        assert_eq!(sent, vec![(LinkId(2), expected)]);
        assert_eq!(a.counters().withdrawals_sent, 1);
        // A node link's death withdraws nothing.
        a.handle_link_down(t0, LinkId(2), "connection closed by peer");
        assert!(withdrawals_sent(&mut a).is_empty());
    }

    #[test]
    fn the_old_behaviour_withdraws_nothing() {
        let (mut a, t0) = a_between_s_and_b(false);
        a.handle_link_down(t0, LinkId(1), "connection closed by peer");
        assert!(withdrawals_sent(&mut a).is_empty());
        assert!(
            a.routing().servers().is_empty(),
            "the direct routes still go"
        );
    }

    #[test]
    fn withdrawals_are_forwarded_once_checked_and_rate_limited_per_neighbour() {
        let (mut a, t0) = a_between_s_and_b(true);
        let w = |server: &str, seq: u64| {
            OverlayMsg::Withdrawal(Withdrawal {
                server: server.into(),
                neighbour: "X".into(),
                last_seq: seq,
            })
        };
        // From B: forwarded to S only (not back to B), once.
        a.handle_message(t0, LinkId(2), w("T", 1));
        assert_eq!(withdrawals_sent(&mut a).len(), 1);
        a.handle_message(t0, LinkId(2), w("T", 1));
        assert!(withdrawals_sent(&mut a).is_empty());
        // Malformed: counted, not forwarded.
        a.handle_message(t0, LinkId(2), w("X", 1));
        assert!(withdrawals_sent(&mut a).is_empty());
        assert_eq!(a.counters().withdrawals_malformed, 1);
        // A flood of them from B: the burst passes, the rest is dropped and counted.
        let burst = WITHDRAWAL_BURST as u64;
        for seq in 10..10 + 2 * burst {
            a.handle_message(t0, LinkId(2), w("T", seq));
        }
        let c = a.counters();
        assert_eq!(c.withdrawals_received, 3 + 2 * burst);
        assert_eq!(c.withdrawals_limited, burst + 3);
        // The budget refills with time.
        let later = t0 + Duration::from_secs(1);
        a.handle_message(later, LinkId(2), w("T", 1000));
        assert_eq!(a.counters().withdrawals_limited, burst + 3);
    }

    #[test]
    fn a_neighbour_pinging_in_a_loop_gets_pongs_within_its_budget_and_is_counted() {
        let (mut a, t0) = a_between_s_and_b(true);
        while a.poll_output().is_some() {}
        let n = 2 * crate::overlay::neighbours::PING_BURST as u64;
        for token in 0..n {
            a.handle_message(t0, LinkId(2), OverlayMsg::Ping(Ping { token }));
        }
        let pongs = std::iter::from_fn(|| a.poll_output())
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        msg: OverlayMsg::Pong(_),
                        ..
                    }
                )
            })
            .count() as u64;
        assert_eq!(pongs, n / 2);
        assert_eq!(a.counters().pings_limited, n / 2);
    }
}
