//! The tokio driver of an overlay [`Node`]: it only moves bytes and time.
//!
//! It owns the overlay listener, one task per dial, and per link a reader task and a writer
//! task. Every link has two bounded outgoing queues: control (floods, requests, keepalives) and
//! media (video data). The writer always drains control first, so keepalives are never stuck
//! behind video; a full media queue drops the chunk and counts it rather than blocking the
//! node, and a full control queue means the peer stopped reading, so the link is closed; so
//! does a writer that could not hand the socket a single byte for [`WRITE_STALL`].
//!
//! Inbound connections are unauthenticated until the handshake ends, so their number is
//! bounded ([`MAX_PENDING_HANDSHAKES`] in all, [`MAX_PENDING_PER_IP`] per source address), each
//! has the handshake deadline, and one over the limit is closed at once and counted. A refused
//! connection never reaches the node: only a finished handshake and hello make a link.
//! All protocol decisions are the node's: this loop feeds it link events, decoded messages and
//! the node's exact deadlines (sleeping for ever when it has none), and carries out its
//! outputs. On clocks of its own, never the node's timer, it re-anchors wall time, checks the
//! videos offered, and every [`STATUS_REFRESH`] publishes a [`NodeStatus`] snapshot on a
//! watch channel; it also starts traces for the control endpoint ([`ControlPort`]), passing
//! their answers back.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::crypto::Side;
use crate::keyfile::Psk;
use crate::net::transport::{self, SecureReader, SecureWriter, TransportError};
use crate::observe::snapshot::{DriverStatus, NodeStatus};
use crate::overlay::{LinkId, Node, Output};
use crate::wire::overlay::{Hello, OverlayMsg, TraceHop, VideoData};

/// Queue depths per link.
const CONTROL_QUEUE: usize = 1024;
const MEDIA_QUEUE: usize = 256;
/// Inbound connections allowed in their handshake at once, in total and per source IP. Each
/// costs a task, a socket and at most a 1 KiB frame buffer until the handshake deadline.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
pub const MAX_PENDING_PER_IP: usize = 32;
/// A link whose writer cannot hand the socket any byte for this long is closed: the peer
/// stopped reading (a live but slow link always makes some progress).
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// Unsent bytes the kernel may hold per link (`TCP_NOTSENT_LOWAT`). Without it the socket
/// buffer autotunes to megabytes, so a child that stops reading would swallow a minute of
/// video before our media queue (where drops are counted per link) ever fills. Bytes in
/// flight are not limited, so throughput on long fat links is unaffected.
pub const NOTSENT_LOWAT: u32 = 64 * 1024;
/// Events from all link tasks into the node loop.
const EVENT_QUEUE: usize = 4096;
/// Local inputs (source chunks, subscriptions) into the node loop.
const LOCAL_INPUT_QUEUE: usize = 256;
/// Chunks delivered to local consumers (an edge's clients).
const DELIVERED_QUEUE: usize = 512;
/// How often the wall clock is re-anchored to the monotonic one.
const WALL_CLOCK_REANCHOR: Duration = Duration::from_secs(10);
/// How often the offered video list is compared with the last one reported.
const VIDEOS_CHECK: Duration = Duration::from_millis(500);
/// Default of [`DriverConfig::drain`], in milliseconds (`--drain-ms`).
pub const DEFAULT_DRAIN_MS: u64 = 2000;
/// How often the status snapshot is rebuilt and published.
pub const STATUS_REFRESH: Duration = Duration::from_millis(250);
/// Answers of a trace are passed on for at most this long after it started.
const TRACE_TTL: Duration = Duration::from_secs(10);

/// What the control endpoint asks of the node loop.
#[derive(Debug)]
pub enum ControlRequest {
    /// Start a trace of `video`'s tree here; `started` gets its id (or why not), `answers`
    /// every path that answers, until the receiver is dropped or [`TRACE_TTL`] passes.
    Trace {
        video: String,
        started: oneshot::Sender<Result<u64, String>>,
        answers: mpsc::Sender<Vec<TraceHop>>,
    },
}

/// The control endpoint's side of the driver: status snapshots and requests.
#[derive(Clone)]
pub struct ControlPort {
    pub status: watch::Receiver<Arc<NodeStatus>>,
    pub requests: mpsc::Sender<ControlRequest>,
}

/// What the daemon's own parts (video sources, the edge's client service, tests) tell the node.
#[derive(Debug)]
pub enum LocalInput {
    /// A chunk of a video this server is streaming (after `LocalEvent::SourceStart`).
    SourceChunk {
        video: String,
        payload: Bytes,
        keyframe: bool,
    },
    /// A local consumer wants this video (counted like one child).
    Subscribe(String),
    /// A local consumer of this video left.
    Unsubscribe(String),
    /// The videos this server offers changed.
    SetVideos(Vec<String>),
}

/// Control events from the node for the daemon's own parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// Start reading this video (somebody asked for it).
    SourceStart(String),
    /// Stop reading it (the last consumer left).
    SourceStop(String),
    /// The videos the overlay offers here changed (from the floods; an edge lists them).
    Videos(Vec<String>),
    /// We are shutting down: local consumers (an edge's clients) should move elsewhere
    /// within this long, and unsubscribe when they have.
    Drain(Duration),
}

/// A chunk for local consumers, deduplicated and in order.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub video: String,
    pub data: VideoData,
}

/// The daemon's side of the node's local channels.
pub struct LocalPort {
    pub input: mpsc::Sender<LocalInput>,
    /// Unbounded because these are rare control events that must never be dropped.
    pub events: mpsc::UnboundedReceiver<LocalEvent>,
    /// Bounded: when the consumer falls behind, chunks are dropped and counted.
    pub delivered: mpsc::Receiver<Delivered>,
}

struct LocalChannels {
    input: mpsc::Receiver<LocalInput>,
    events: mpsc::UnboundedSender<LocalEvent>,
    delivered: mpsc::Sender<Delivered>,
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Address to listen on for overlay links (IP and port).
    pub listen: SocketAddr,
    /// Source address for outgoing links; a specific IP matters on one machine, where every
    /// device has its own 127.x address and peers learn ours from the connection.
    pub dial_from: Option<IpAddr>,
    pub psk: Psk,
    /// Time allowed for TCP connect, encrypted handshake and hello exchange together.
    pub handshake_timeout: Duration,
    /// On shutdown, how long at most to drain (let children move elsewhere) before exiting;
    /// zero: exit at once.
    pub drain: Duration,
}

/// Counters the driver keeps (shared, readable while it runs).
#[derive(Debug, Default)]
pub struct DriverCounters {
    pub handshakes_ok: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub media_dropped_queue_full: AtomicU64,
    pub delivered_dropped_queue_full: AtomicU64,
    pub frames_undecodable: AtomicU64,
    pub connections_over_limit: AtomicU64,
    pub handshakes_pending: AtomicU64,
    /// By reason label ([`TransportError::reason`], plus `hello`).
    pub handshakes_refused_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Records refused on established links, by reason.
    pub frames_rejected: Mutex<BTreeMap<String, u64>>,
    /// Links closed by the driver, by reason.
    pub links_closed: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, reason: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(reason.to_string()).or_default() += 1;
    }
}

fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().map(|m| m.clone()).unwrap_or_default()
}

/// Pending inbound handshakes: a slot is held from accept until the handshake and hello end.
#[derive(Default)]
struct PendingTable {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

struct PendingSlot {
    table: Arc<Mutex<PendingTable>>,
    counters: Arc<DriverCounters>,
    ip: IpAddr,
}

impl PendingSlot {
    /// A slot for a connection from `ip`, or `None` when a limit is reached. A configured
    /// neighbour's address is held only to the per-IP limit, so a flood from many other
    /// addresses cannot keep a known neighbour from (re)connecting.
    fn take(
        table: &Arc<Mutex<PendingTable>>,
        counters: &Arc<DriverCounters>,
        ip: IpAddr,
        configured: bool,
    ) -> Option<PendingSlot> {
        let mut t = table.lock().ok()?;
        let from_ip = t.per_ip.get(&ip).copied().unwrap_or(0);
        if (t.total >= MAX_PENDING_HANDSHAKES && !configured) || from_ip >= MAX_PENDING_PER_IP {
            return None;
        }
        t.total += 1;
        t.per_ip.insert(ip, from_ip + 1);
        counters
            .handshakes_pending
            .store(t.total as u64, Ordering::Relaxed);
        Some(PendingSlot {
            table: table.clone(),
            counters: counters.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.total = t.total.saturating_sub(1);
            if let Some(n) = t.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    t.per_ip.remove(&self.ip);
                }
            }
            self.counters
                .handshakes_pending
                .store(t.total as u64, Ordering::Relaxed);
        }
    }
}

/// A link that passed the handshake and the hello exchange.
struct Established {
    link: LinkId,
    remote: SocketAddr,
    dialled: Option<SocketAddr>,
    hello: Hello,
    reader: SecureReader,
    writer: SecureWriter,
}

enum Event {
    LinkUp(Box<Established>),
    DialFailed { addr: SocketAddr, reason: String },
    Message { link: LinkId, msg: OverlayMsg },
    LinkDown { link: LinkId, reason: String },
}

struct LinkHandle {
    control: mpsc::Sender<OverlayMsg>,
    media: mpsc::Sender<OverlayMsg>,
    reader: JoinHandle<()>,
    peer: String,
}

/// A bound overlay driver, ready to run.
pub struct NodeDriver {
    cfg: DriverConfig,
    listener: TcpListener,
    counters: Arc<DriverCounters>,
    local: LocalChannels,
    port: Option<LocalPort>,
    status: watch::Sender<Arc<NodeStatus>>,
    control: mpsc::Receiver<ControlRequest>,
    control_port: ControlPort,
}

impl NodeDriver {
    /// Bind the overlay listener.
    pub async fn bind(cfg: DriverConfig) -> std::io::Result<NodeDriver> {
        let listener = super::bind::tcp_listener(cfg.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for overlay links on {}: {e}", cfg.listen),
            )
        })?;
        let (input_tx, input_rx) = mpsc::channel(LOCAL_INPUT_QUEUE);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (delivered_tx, delivered_rx) = mpsc::channel(DELIVERED_QUEUE);
        let (status_tx, status_rx) = watch::channel(Arc::new(NodeStatus::default()));
        let (control_tx, control_rx) = mpsc::channel(16);
        Ok(NodeDriver {
            cfg,
            listener,
            counters: Arc::default(),
            local: LocalChannels {
                input: input_rx,
                events: events_tx,
                delivered: delivered_tx,
            },
            port: Some(LocalPort {
                input: input_tx,
                events: events_rx,
                delivered: delivered_rx,
            }),
            status: status_tx,
            control: control_rx,
            control_port: ControlPort {
                status: status_rx,
                requests: control_tx,
            },
        })
    }

    /// Status snapshots and trace requests, for the control endpoint.
    pub fn control_port(&self) -> ControlPort {
        self.control_port.clone()
    }

    fn publish_status(&self, node: &Node, now: Instant, link_drops: &BTreeMap<String, u64>) {
        let c = &self.counters;
        let mut s = NodeStatus::build(node, now);
        s.driver = Some(DriverStatus {
            handshakes_ok: c.handshakes_ok.load(Ordering::Relaxed),
            handshakes_refused: c.handshakes_refused.load(Ordering::Relaxed),
            media_dropped_queue_full: c.media_dropped_queue_full.load(Ordering::Relaxed),
            delivered_dropped_queue_full: c.delivered_dropped_queue_full.load(Ordering::Relaxed),
            frames_undecodable: c.frames_undecodable.load(Ordering::Relaxed),
            handshakes_refused_by_reason: snapshot(&c.handshakes_refused_by_reason),
            frames_rejected: snapshot(&c.frames_rejected),
            connections_over_limit: c.connections_over_limit.load(Ordering::Relaxed),
            handshakes_pending: c.handshakes_pending.load(Ordering::Relaxed),
            links_closed: snapshot(&c.links_closed),
            media_dropped_by_neighbour: link_drops.clone(),
        });
        self.status.send_replace(Arc::new(s));
    }

    /// The local channels (sources, local consumers). Can be taken once; when nobody takes
    /// them, source events and deliveries are simply dropped.
    pub fn take_local_port(&mut self) -> Option<LocalPort> {
        self.port.take()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.listen)
    }

    pub fn counters(&self) -> Arc<DriverCounters> {
        self.counters.clone()
    }

    /// Run the node until `shutdown` completes, then drain (see [`DriverConfig::drain`]): the
    /// node tells its neighbours, the local parts are told ([`LocalEvent::Drain`]: an edge
    /// tells its clients), and the loop ends when no child and no local consumer is fed any
    /// more, or at the bound, saying which.
    pub async fn run(mut self, mut node: Node, shutdown: impl std::future::Future<Output = ()>) {
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let started = Instant::now();
        let mut videos: Vec<String> = Vec::new();
        node.set_wall_clock(started, wall_clock_us());
        // The driver's own periodic work has its own clocks: the node's timer is only the
        // node's (exact deadlines, none when nothing waits).
        let every = |period: Duration| {
            let mut i = tokio::time::interval_at((started + period).into(), period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let mut status_tick = every(STATUS_REFRESH);
        let mut anchor_tick = every(WALL_CLOCK_REANCHOR);
        let mut videos_tick = every(VIDEOS_CHECK);
        let next_link = Arc::new(AtomicU64::new(1));
        let mut links: HashMap<LinkId, LinkHandle> = HashMap::new();
        let hello = node.hello();
        // Media drops per neighbour name, kept after the link closes.
        let mut link_drops: BTreeMap<String, u64> = BTreeMap::new();
        let pending = Arc::new(Mutex::new(PendingTable::default()));
        self.publish_status(&node, started, &link_drops);
        let mut traces: HashMap<u64, (mpsc::Sender<Vec<TraceHop>>, Instant)> = HashMap::new();
        tokio::pin!(shutdown);
        // Draining since the shutdown signal, until this instant at most.
        let mut drain_until: Option<Instant> = None;

        loop {
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Dial(addr) => {
                        let link = LinkId(next_link.fetch_add(1, Ordering::Relaxed));
                        tokio::spawn(dial(
                            addr,
                            link,
                            self.cfg.clone(),
                            hello.clone(),
                            events_tx.clone(),
                            self.counters.clone(),
                        ));
                    }
                    Output::Send { link, msg } => {
                        let Some(h) = links.get(&link) else { continue };
                        if msg.is_media() {
                            if h.media.try_send(msg).is_err() {
                                self.counters
                                    .media_dropped_queue_full
                                    .fetch_add(1, Ordering::Relaxed);
                                let n = link_drops.entry(h.peer.clone()).or_default();
                                *n += 1;
                                if n.is_power_of_two() {
                                    warn!(%link, peer = %h.peer, dropped = *n,
                                        "media queue full: chunks for this neighbour dropped");
                                }
                            }
                        } else if h.control.try_send(msg).is_err() {
                            let reason = "control queue full (peer not reading)";
                            bump(&self.counters.links_closed, "control_queue_full");
                            warn!(%link, peer = %h.peer, reason, "closing link");
                            close_link(&mut links, link);
                            node.handle_link_down(Instant::now(), link, reason);
                        }
                    }
                    Output::Close { link, reason } => {
                        if let Some(h) = links.get(&link) {
                            info!(%link, peer = %h.peer, reason, "closing link");
                        }
                        close_link(&mut links, link);
                        node.handle_link_down(Instant::now(), link, &reason);
                    }
                    Output::SourceStart { video } => {
                        let _ = self.local.events.send(LocalEvent::SourceStart(video));
                    }
                    Output::SourceStop { video } => {
                        let _ = self.local.events.send(LocalEvent::SourceStop(video));
                    }
                    Output::TraceReply { id, hops, .. } => {
                        if let Some((tx, _)) = traces.get(&id) {
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(hops) {
                                traces.remove(&id);
                            }
                        }
                    }
                    Output::Deliver { video, data } => {
                        if self
                            .local
                            .delivered
                            .try_send(Delivered { video, data })
                            .is_err()
                        {
                            self.counters
                                .delivered_dropped_queue_full
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }

            if let Some(until) = drain_until {
                if node.drained() && !node.serves_local() {
                    let waited = self
                        .cfg
                        .drain
                        .saturating_sub(until.saturating_duration_since(Instant::now()));
                    info!(
                        waited_ms = waited.as_millis() as u64,
                        "drained: every child and local client moved elsewhere; exiting"
                    );
                    break;
                }
                if Instant::now() >= until {
                    warn!(
                        wait_ms = self.cfg.drain.as_millis() as u64,
                        children_left = !node.drained(),
                        local_clients_left = node.serves_local(),
                        "drain timed out with children or clients still fed by us; exiting"
                    );
                    break;
                }
            }
            let deadline = node.poll_timeout();

            tokio::select! {
                _ = &mut shutdown, if drain_until.is_none() => {
                    if self.cfg.drain.is_zero() || (node.drained() && !node.serves_local()) {
                        break;
                    }
                    node.start_drain(self.cfg.drain);
                    let _ = self.local.events.send(LocalEvent::Drain(self.cfg.drain));
                    drain_until = Some(Instant::now() + self.cfg.drain);
                }
                _ = super::sleep_until_or_never(drain_until) => {}
                Some(ev) = events.recv() => match ev {
                    Event::LinkUp(up) => {
                        let Established { link, remote, dialled, hello, reader, writer } = *up;
                        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
                        let (media_tx, media_rx) = mpsc::channel(MEDIA_QUEUE);
                        tokio::spawn(write_loop(
                            link, writer, control_rx, media_rx, events_tx.clone(),
                            self.counters.clone(),
                        ));
                        let reader = tokio::spawn(read_loop(
                            link, reader, events_tx.clone(), self.counters.clone(),
                        ));
                        links.insert(link, LinkHandle {
                            control: control_tx,
                            media: media_tx,
                            reader,
                            peer: hello.name.clone(),
                        });
                        node.handle_link_up(Instant::now(), link, remote, dialled, hello);
                    }
                    Event::DialFailed { addr, reason } => {
                        node.handle_dial_failed(Instant::now(), addr, &reason);
                    }
                    Event::Message { link, msg } => {
                        node.handle_message(Instant::now(), link, msg);
                    }
                    Event::LinkDown { link, reason } => {
                        if links.contains_key(&link) {
                            close_link(&mut links, link);
                            node.handle_link_down(Instant::now(), link, &reason);
                        }
                    }
                },
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let remote = super::bind::canonical(remote);
                        let configured = node
                            .config()
                            .neighbours
                            .iter()
                            .any(|a| a.ip() == remote.ip());
                        match PendingSlot::take(&pending, &self.counters, remote.ip(), configured) {
                            Some(slot) => {
                                let link = LinkId(next_link.fetch_add(1, Ordering::Relaxed));
                                tokio::spawn(accept(
                                    stream,
                                    remote,
                                    link,
                                    self.cfg.clone(),
                                    hello.clone(),
                                    events_tx.clone(),
                                    self.counters.clone(),
                                    slot,
                                ));
                            }
                            None => {
                                // Closed at once: no task, no buffer, no state.
                                drop(stream);
                                let n = self
                                    .counters
                                    .connections_over_limit
                                    .fetch_add(1, Ordering::Relaxed)
                                    + 1;
                                if n == 1 || n % 1000 == 0 {
                                    warn!(%remote, total = n,
                                        "inbound overlay connection over the pending-handshake limit; closed");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(input) = self.local.input.recv() => {
                    let now = Instant::now();
                    match input {
                        LocalInput::SourceChunk { video, payload, keyframe } => {
                            node.handle_source_chunk(now, &video, payload, keyframe)
                        }
                        LocalInput::Subscribe(video) => node.subscribe_local(now, &video),
                        LocalInput::Unsubscribe(video) => node.unsubscribe_local(now, &video),
                        LocalInput::SetVideos(videos) => node.set_videos(now, videos),
                    }
                }
                Some(req) = self.control.recv() => match req {
                    ControlRequest::Trace { video, started, answers } => {
                        let id: u64 = rand::random();
                        let now = Instant::now();
                        // Registered first: our own hop is the first answer, output at once.
                        traces.insert(id, (answers, now + TRACE_TTL));
                        let r = node.start_trace(now, id, &video);
                        if r.is_err() {
                            traces.remove(&id);
                        } else {
                            info!(video, id, "trace started");
                        }
                        let _ = started.send(r.map(|()| id));
                    }
                },
                _ = super::sleep_until_or_never(deadline) => {
                    node.handle_timeout(Instant::now());
                }
                _ = status_tick.tick() => {
                    let now = Instant::now();
                    self.publish_status(&node, now, &link_drops);
                    traces.retain(|_, (tx, until)| *until > now && !tx.is_closed());
                }
                _ = anchor_tick.tick() => {
                    node.set_wall_clock(Instant::now(), wall_clock_us());
                }
                _ = videos_tick.tick() => {
                    let offered = node.routing().videos();
                    if offered != videos {
                        videos.clone_from(&offered);
                        let _ = self.local.events.send(LocalEvent::Videos(offered));
                    }
                }
            }
        }
        for (_, h) in links.drain() {
            h.reader.abort();
        }
        log_final_counters(&node);
    }
}

/// One line per (neighbour, video) and per stream at exit, so a run can be checked afterwards
/// (for example: a link shared by two subscribers carried each chunk once).
fn log_final_counters(node: &Node) {
    for ((neighbour, video), chunks) in node.link_copies() {
        info!(neighbour = %neighbour, video = %video, chunks, "final link copies");
    }
    for (video, c) in node.all_stream_counters() {
        info!(
            video = %video, chunks_in = c.chunks_in, chunks_out = c.chunks_out,
            delivered_local = c.delivered_local, duplicates = c.duplicates,
            gap_chunks = c.gap_chunks, switches = c.switches, failovers = c.failovers,
            suspicions = c.suspicions, suspected_switches = c.suspected_switches,
            gop_chunks_sent = c.gop_chunks_sent, parent_retries = c.parent_retries,
            "final stream counters"
        );
    }
}

/// Wall clock in microseconds since the UNIX epoch (flood timestamps).
fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Forget a link: dropping the queue senders ends its writer (which flushes what is queued and
/// shuts the socket down), and the reader is stopped so no late event arrives.
fn close_link(links: &mut HashMap<LinkId, LinkHandle>, link: LinkId) {
    if let Some(h) = links.remove(&link) {
        h.reader.abort();
    }
}

async fn dial(
    addr: SocketAddr,
    link: LinkId,
    cfg: DriverConfig,
    hello: Hello,
    events: mpsc::Sender<Event>,
    counters: Arc<DriverCounters>,
) {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = cfg.dial_from.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("cannot bind {ip} for dialling: {e}"))?;
        }
        let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
        establish(stream, Side::Initiator, &cfg, hello, &counters)
            .await
            .map_err(|e| e.to_string())
    };
    let result = tokio::time::timeout(cfg.handshake_timeout, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    let ev = match result {
        Ok((peer_hello, reader, writer)) => Event::LinkUp(Box::new(Established {
            link,
            remote: addr,
            dialled: Some(addr),
            hello: peer_hello,
            reader,
            writer,
        })),
        Err(reason) => Event::DialFailed { addr, reason },
    };
    let _ = events.send(ev).await;
}

#[allow(clippy::too_many_arguments)]
async fn accept(
    stream: TcpStream,
    remote: SocketAddr,
    link: LinkId,
    cfg: DriverConfig,
    hello: Hello,
    events: mpsc::Sender<Event>,
    counters: Arc<DriverCounters>,
    slot: PendingSlot,
) {
    let attempt = establish(stream, Side::Responder, &cfg, hello, &counters);
    let result = tokio::time::timeout(cfg.handshake_timeout, attempt).await;
    // Authenticated (or refused): no longer pending.
    drop(slot);
    match result {
        Ok(Ok((peer_hello, reader, writer))) => {
            let _ = events
                .send(Event::LinkUp(Box::new(Established {
                    link,
                    remote,
                    dialled: None,
                    hello: peer_hello,
                    reader,
                    writer,
                })))
                .await;
        }
        Ok(Err(e)) => {
            bump(&counters.handshakes_refused_by_reason, e.reason());
            warn!(%remote, reason = %e, "inbound overlay link refused");
        }
        Err(_) => {
            counters.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            bump(&counters.handshakes_refused_by_reason, "timeout");
            warn!(%remote, reason = "timed out", "inbound overlay link refused");
        }
    }
}

/// Why a link could not be established.
#[derive(Debug, thiserror::Error)]
enum EstablishError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("peer closed before its hello")]
    NoHello,
    #[error("first message was {0}, not hello")]
    NotHello(&'static str),
    #[error("undecodable hello: {0}")]
    BadHello(#[from] crate::wire::DecodeError),
    #[error("cannot encode our hello: {0}")]
    Encode(#[from] crate::wire::EncodeError),
}

impl EstablishError {
    /// Counter label: the transport's reason, or `hello` for a bad hello after the handshake.
    fn reason(&self) -> &'static str {
        match self {
            EstablishError::Transport(e) => e.reason(),
            _ => "hello",
        }
    }
}

/// Encrypted handshake, then hello both ways.
async fn establish(
    stream: TcpStream,
    side: Side,
    cfg: &DriverConfig,
    hello: Hello,
    counters: &DriverCounters,
) -> Result<(Hello, SecureReader, SecureWriter), EstablishError> {
    let _ = stream.set_nodelay(true);
    if let Err(e) = set_notsent_lowat(&stream, NOTSENT_LOWAT) {
        debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
    let conn = match transport::handshake(stream, side, &cfg.psk, cfg.handshake_timeout).await {
        Ok(c) => c,
        Err(e) => {
            counters.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
    };
    counters.handshakes_ok.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = conn.into_split();
    let mut buf = BytesMut::new();
    OverlayMsg::Hello(hello).encode(&mut buf)?;
    writer.send(buf).await?;
    let frame = reader.recv().await?.ok_or(EstablishError::NoHello)?;
    match OverlayMsg::decode(frame.freeze())? {
        OverlayMsg::Hello(h) => Ok((h, reader, writer)),
        other => Err(EstablishError::NotHello(other.kind())),
    }
}

/// Caps the unsent bytes the kernel buffers for this socket (Linux; a no-op error elsewhere).
fn set_notsent_lowat(stream: &TcpStream, bytes: u32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = bytes as libc::c_int;
        // SAFETY: a valid socket descriptor owned by `stream`, and a pointer to a c_int of the
        // size passed.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (stream, bytes);
        Err(std::io::Error::other("TCP_NOTSENT_LOWAT is Linux only"))
    }
}

async fn read_loop(
    link: LinkId,
    mut reader: SecureReader,
    events: mpsc::Sender<Event>,
    counters: Arc<DriverCounters>,
) {
    let reason = loop {
        match reader.recv().await {
            Ok(Some(frame)) => match OverlayMsg::decode(frame.freeze()) {
                Ok(msg) => {
                    if events.send(Event::Message { link, msg }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The record authenticated, so the peer holds the key: this is a bug or a
                    // version skew, not an attack. Close rather than guess.
                    counters.frames_undecodable.fetch_add(1, Ordering::Relaxed);
                    bump(&counters.frames_rejected, "undecodable");
                    break format!("undecodable message: {e}");
                }
            },
            Ok(None) => break "connection closed by peer".to_string(),
            Err(e) => {
                if !matches!(e, TransportError::Io(_) | TransportError::AlreadyFailed) {
                    bump(&counters.frames_rejected, e.reason());
                }
                break e.to_string();
            }
        }
    };
    debug!(%link, reason, "link reader ends");
    let _ = events.send(Event::LinkDown { link, reason }).await;
}

async fn write_loop(
    link: LinkId,
    mut writer: SecureWriter,
    mut control: mpsc::Receiver<OverlayMsg>,
    mut media: mpsc::Receiver<OverlayMsg>,
    events: mpsc::Sender<Event>,
    counters: Arc<DriverCounters>,
) {
    let stalled = || async {
        bump(&counters.links_closed, "write_stalled");
        let reason = format!(
            "peer stopped reading (no byte written for {} s)",
            WRITE_STALL.as_secs()
        );
        warn!(%link, reason, "closing link");
        let _ = events.send(Event::LinkDown { link, reason }).await;
    };
    // Up to this many queued messages are sealed into the socket buffer before one flush.
    const BATCH: usize = 64;
    loop {
        let first = tokio::select! {
            biased;
            m = control.recv() => m,
            m = media.recv() => m,
        };
        let Some(mut msg) = first else { break };
        let mut batched = 0;
        loop {
            // Room for the message and the GCM tag up front: sealing then appends the tag
            // without reallocating (and copying) a video chunk.
            let len = match &msg {
                OverlayMsg::VideoData(d) => d.encoded_len(),
                _ => 64,
            };
            let mut buf = BytesMut::with_capacity(len + transport::TAG_LEN);
            match msg.encode(&mut buf) {
                Ok(()) => match tokio::time::timeout(WRITE_STALL, writer.feed(buf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(%link, error = %e, "link writer ends");
                        return;
                    }
                    Err(_) => return stalled().await,
                },
                Err(e) => {
                    warn!(%link, error = %e, kind = msg.kind(), "cannot encode message; dropped")
                }
            }
            batched += 1;
            // Whatever is already queued goes out with this flush, control first.
            let next = if batched < BATCH {
                control.try_recv().or_else(|_| media.try_recv()).ok()
            } else {
                None
            };
            match next {
                Some(m) => msg = m,
                None => break,
            }
        }
        match tokio::time::timeout(WRITE_STALL, writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%link, error = %e, "link writer ends");
                return;
            }
            Err(_) => return stalled().await,
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_handshakes_are_bounded_per_address_and_in_total() {
        let table = Arc::new(Mutex::new(PendingTable::default()));
        let counters = Arc::new(DriverCounters::default());
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x7f4c_0000 + i));
        // One address: its limit, then nothing more from it, while another still gets in.
        let mut held: Vec<PendingSlot> = (0..MAX_PENDING_PER_IP)
            .map(|_| PendingSlot::take(&table, &counters, ip(1), false).unwrap())
            .collect();
        assert!(PendingSlot::take(&table, &counters, ip(1), false).is_none());
        assert!(PendingSlot::take(&table, &counters, ip(1), true).is_none());
        held.push(PendingSlot::take(&table, &counters, ip(2), false).unwrap());
        // Fill the table from many addresses.
        let mut n = 3;
        while held.len() < MAX_PENDING_HANDSHAKES {
            if let Some(s) = PendingSlot::take(&table, &counters, ip(n), false) {
                held.push(s);
            }
            n += 1;
        }
        assert_eq!(
            counters.handshakes_pending.load(Ordering::Relaxed),
            MAX_PENDING_HANDSHAKES as u64
        );
        assert!(PendingSlot::take(&table, &counters, ip(9999), false).is_none());
        // A configured neighbour's address still gets in over the total limit.
        let neighbour = PendingSlot::take(&table, &counters, ip(9999), true).unwrap();
        drop(neighbour);
        // Slots come back when connections end.
        held.truncate(10);
        assert_eq!(counters.handshakes_pending.load(Ordering::Relaxed), 10);
        assert!(PendingSlot::take(&table, &counters, ip(9999), false).is_some());
        drop(held);
        let t = table.lock().unwrap();
        assert_eq!((t.total, t.per_ip.len()), (0, 0));
    }
}
