//! The tokio driver of an edge's client service: the edge's UDP socket, its timer, and the
//! channels to the overlay node.
//!
//! It owns one UDP socket (the edge port, a [`ReplySocket`]: every datagram to a client
//! leaves from the address that client sent to) and runs an [`EdgeService`] over it. The overlay
//! side talks to it through an [`EdgeHandle`]: chunks, video lists and the drain order go in
//! ([`EdgeInput`]), `Subscribe`/`Unsubscribe` come out ([`EdgeEvent`]); a drained edge's
//! last `Unsubscribe` is what lets the node's driver exit. Control replies are
//! sent straight from the loop; video goes through a [`VideoSink`], the seam between the
//! service and a relay: the built-in [`NativeSink`] sends the framed datagrams from the edge
//! socket at once while the socket takes them, else through bounded per-client queues served
//! in turn (a client over its share drops and counts, never blocks the loop or costs another
//! client a datagram); the
//! ffmpeg relay ([`crate::net::edge_ffmpeg`]) plugs in as [`Relay::Custom`]. All decisions are
//! the service's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::udp::ReplySocket;
use crate::service::edge::{EdgeConfig, EdgeCounters, EdgeOutput, EdgeService, SessionInfo};

/// Largest datagram read from a client; every valid client message is far smaller.
const RECV_BUF: usize = 2048;
/// Depth of the input channel from the overlay node.
const INPUT_QUEUE: usize = 1024;

/// What the overlay node gives the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeInput {
    /// One chunk of a video (whole TS packets); `keyframe` when it starts with one.
    Chunk {
        video: String,
        epoch: u64,
        seq: u64,
        keyframe: bool,
        payload: Bytes,
    },
    /// The videos the edge can reach now (from its route table).
    Videos(Vec<String>),
    /// We are shutting down within this long: tell the clients to move to another edge
    /// (see [`EdgeService::start_drain`]); their sessions end as they cancel.
    Drain(std::time::Duration),
}

/// What the edge asks of the overlay node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEvent {
    /// The first client of a video arrived (`Node::subscribe_local`).
    Subscribe { video: String },
    /// The last client of a video left (`Node::unsubscribe_local`).
    Unsubscribe { video: String },
}

/// Where a session's video goes. Called from the driver loop: implementations must not block.
pub trait VideoSink: Send {
    /// A session starts (an ffmpeg relay starts its child for this client here).
    /// `continuing`: the client moves here from another edge mid-stream (see
    /// [`EdgeOutput::SessionOpened`]).
    fn open(&mut self, _client: SocketAddr, _video: &str, _stream: u32, _continuing: bool) {}
    /// One framed video datagram ([`crate::wire::client::VideoData`]) for `client`, to leave
    /// from the edge's address `from` (see [`EdgeOutput::Video`]).
    fn send(&mut self, client: SocketAddr, from: Option<IpAddr>, datagram: Bytes);
    /// The session ended.
    fn close(&mut self, _client: SocketAddr) {}
    /// Datagrams dropped so far (queue full, send errors).
    fn dropped(&self) -> u64;
}

/// The built-in relay: framed datagrams from the edge's own socket.
///
/// A datagram is sent at once with a non-blocking `try_send_to` from the driver loop while
/// nothing waits in the queues: a chunk fans out to every client in one burst, and a queue hop
/// per datagram (lock, task wake-up) was the cost that grew with the clients. When the socket's
/// send buffer is full, or datagrams already wait (to keep each client's order), they queue.
///
/// Each client has its own queue. A client may hold at most its fair share of the sink's depth
/// (at least [`MIN_CLIENT_SHARE`] datagrams); beyond that its own datagrams are dropped and
/// counted, so the total stays bounded by `max(depth, sessions x MIN_CLIENT_SHARE)`. One
/// sender task serves the clients oldest session first: a client takes only what its stream
/// brings, so when the edge cannot send to everyone (say, hundreds of fake sessions opened at
/// once, each replayed the GOP cache) the newest sessions lose, not the viewers who were
/// already watching.
pub struct NativeSink {
    socket: Arc<ReplySocket>,
    queues: Arc<std::sync::Mutex<ClientQueues>>,
    wake: Arc<tokio::sync::Notify>,
    depth: usize,
    dropped: Arc<AtomicU64>,
    sender: JoinHandle<()>,
}

/// Fewest datagrams a client may have queued, however many clients there are.
pub const MIN_CLIENT_SHARE: usize = 64;

struct ClientQueue {
    /// Order of arrival: smaller is older, and served first.
    age: u64,
    /// The edge address the client's datagrams leave from (the latest given).
    from: Option<IpAddr>,
    datagrams: std::collections::VecDeque<Bytes>,
    dropped: u64,
}

#[derive(Default)]
struct ClientQueues {
    clients: std::collections::HashMap<SocketAddr, ClientQueue>,
    /// Clients with something queued, by age.
    ready: std::collections::BTreeSet<(u64, SocketAddr)>,
    next_age: u64,
    /// The sender task holds a datagram it took and has not sent yet; a datagram sent at once
    /// now could overtake it.
    in_flight: bool,
}

impl ClientQueues {
    fn next(&mut self) -> Option<(SocketAddr, Option<IpAddr>, Bytes)> {
        while let Some((age, client)) = self.ready.pop_first() {
            let Some(q) = self.clients.get_mut(&client) else {
                continue;
            };
            if let Some(d) = q.datagrams.pop_front() {
                if !q.datagrams.is_empty() {
                    self.ready.insert((age, client));
                }
                self.in_flight = true;
                return Some((client, q.from, d));
            }
        }
        None
    }
}

impl NativeSink {
    /// A sink sending from `socket`, holding up to `depth` datagrams shared fairly.
    pub fn new(socket: Arc<ReplySocket>, depth: usize) -> NativeSink {
        let queues = Arc::new(std::sync::Mutex::new(ClientQueues::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let dropped = Arc::new(AtomicU64::new(0));
        let errors = dropped.clone();
        let (q, w, out) = (queues.clone(), wake.clone(), socket.clone());
        let sender = tokio::spawn(async move {
            loop {
                let next = q.lock().ok().and_then(|mut q| q.next());
                match next {
                    Some((to, from, bytes)) => {
                        let sent = out.send_to(&bytes, to, from).await;
                        if let Ok(mut q) = q.lock() {
                            q.in_flight = false;
                        }
                        if let Err(e) = sent {
                            errors.fetch_add(1, Ordering::Relaxed);
                            debug!(%to, error = %e, "video datagram not sent");
                        }
                    }
                    None => w.notified().await,
                }
            }
        });
        NativeSink {
            socket,
            queues,
            wake,
            depth: depth.max(1),
            dropped,
            sender,
        }
    }
}

impl VideoSink for NativeSink {
    fn send(&mut self, client: SocketAddr, from: Option<IpAddr>, datagram: Bytes) {
        let Ok(mut q) = self.queues.lock() else {
            return;
        };
        let share = (self.depth / q.clients.len().max(1)).max(MIN_CLIENT_SHARE);
        let age = q.next_age;
        let cq = q.clients.entry(client).or_insert_with(|| ClientQueue {
            age,
            from,
            datagrams: Default::default(),
            dropped: 0,
        });
        cq.from = from;
        let age = cq.age;
        if q.ready.is_empty() && !q.in_flight {
            match self.socket.try_send_to(&datagram, client, from) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // ICMP errors (port unreachable) surface here; the client may come back.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(to = %client, error = %e, "video datagram not sent");
                    return;
                }
            }
        }
        let Some(cq) = q.clients.get_mut(&client) else {
            return;
        };
        if cq.datagrams.len() >= share {
            cq.dropped += 1;
            if cq.dropped.is_power_of_two() {
                debug!(%client, dropped = cq.dropped, "client's video queue full; dropped");
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_idle = cq.datagrams.is_empty();
        cq.datagrams.push_back(datagram);
        if was_idle {
            q.ready.insert((age, client));
        }
        if age == q.next_age {
            q.next_age += 1;
        }
        drop(q);
        self.wake.notify_one();
    }

    fn close(&mut self, client: SocketAddr) {
        if let Ok(mut q) = self.queues.lock() {
            if let Some(cq) = q.clients.remove(&client) {
                if cq.dropped > 0 {
                    info!(%client, dropped = cq.dropped, "session's video queue dropped datagrams");
                }
            }
            q.ready.retain(|(_, c)| *c != client);
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for NativeSink {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// Builds a sink once the edge socket is bound.
pub type SinkFactory = Box<dyn FnOnce(Arc<ReplySocket>) -> Box<dyn VideoSink> + Send>;

/// How the edge relays video to its clients.
pub enum Relay {
    /// [`NativeSink`] with a queue of this many datagrams.
    Native { queue: usize },
    /// Another sink, e.g. the ffmpeg relay of `crate::media` (raw TS to the client).
    Custom(SinkFactory),
}

impl Default for Relay {
    fn default() -> Self {
        Relay::Native { queue: 4096 }
    }
}

/// Driver settings.
pub struct EdgeDriverConfig {
    /// The edge's UDP address (IP and port) for clients.
    pub bind: SocketAddr,
    pub service: EdgeConfig,
    pub relay: Relay,
}

/// Counters of the driver itself (the service's are in [`EdgeHandle::counters`]).
#[derive(Debug, Default)]
pub struct EdgeDriverCounters {
    pub recv_errors: AtomicU64,
    pub control_send_errors: AtomicU64,
    /// Video datagrams the sink dropped (updated as the loop runs).
    pub video_dropped: AtomicU64,
}

/// The overlay side of a running edge driver.
pub struct EdgeHandle {
    /// Chunks and video lists in. Use `try_send` from a busy loop: a full queue means the
    /// edge is behind.
    pub input: mpsc::Sender<EdgeInput>,
    /// Subscribe/Unsubscribe out.
    pub events: mpsc::UnboundedReceiver<EdgeEvent>,
    /// The service's counters, refreshed after every input.
    pub counters: watch::Receiver<EdgeCounters>,
    /// The sessions (clients with leases), refreshed at most every 250 ms and whenever one
    /// opens or ends (for status displays).
    pub sessions: watch::Receiver<Vec<SessionInfo>>,
    pub driver_counters: Arc<EdgeDriverCounters>,
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl EdgeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the driver and waits for it (its socket is closed when this returns).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Kills the driver at once, like a crashed process (tests of edge death).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the edge socket and starts the driver.
pub async fn spawn(cfg: EdgeDriverConfig) -> std::io::Result<EdgeHandle> {
    let socket = Arc::new(ReplySocket::bind(cfg.bind).await?);
    let local_addr = socket.local_addr()?;
    let sink: Box<dyn VideoSink> = match cfg.relay {
        Relay::Native { queue } => Box::new(NativeSink::new(socket.clone(), queue)),
        Relay::Custom(factory) => factory(socket.clone()),
    };
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (counters_tx, counters_rx) = watch::channel(EdgeCounters::default());
    let (sessions_tx, sessions_rx) = watch::channel(Vec::new());
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let driver_counters = Arc::new(EdgeDriverCounters::default());
    let service = EdgeService::new(cfg.service, Instant::now());
    info!(listen = %local_addr, "edge listening for clients");
    let task = tokio::spawn(run(
        Loop {
            socket,
            service,
            sink,
            events: events_tx,
            counters: counters_tx,
            driver_counters: driver_counters.clone(),
            sessions: sessions_tx,
            sessions_at: (Instant::now(), 0),
        },
        input_rx,
        shutdown_rx,
    ));
    Ok(EdgeHandle {
        input: input_tx,
        events: events_rx,
        counters: counters_rx,
        sessions: sessions_rx,
        driver_counters,
        local_addr,
        shutdown: Some(shutdown_tx),
        task,
    })
}

struct Loop {
    socket: Arc<ReplySocket>,
    service: EdgeService,
    sink: Box<dyn VideoSink>,
    events: mpsc::UnboundedSender<EdgeEvent>,
    counters: watch::Sender<EdgeCounters>,
    driver_counters: Arc<EdgeDriverCounters>,
    sessions: watch::Sender<Vec<SessionInfo>>,
    /// When the sessions were last published, and the session events counted then.
    sessions_at: (Instant, u64),
}

async fn run(
    mut l: Loop,
    mut inputs: mpsc::Receiver<EdgeInput>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; l.socket.recv_buffer_len(RECV_BUF)];
    let mut inputs_open = true;
    loop {
        let deadline = l.service.poll_timeout();
        let sleep = super::sleep_until_or_never(deadline);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = l.socket.recv(&mut buf) => match r {
                Ok(got) => {
                    let now = Instant::now();
                    for datagram in got.datagrams(&buf) {
                        let datagram = Bytes::copy_from_slice(datagram);
                        l.service.handle_datagram(now, got.from, got.local, datagram);
                    }
                }
                Err(e) => {
                    // ICMP errors surface here on some systems; the socket stays usable.
                    l.driver_counters.recv_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "edge socket receive error");
                }
            },
            input = inputs.recv(), if inputs_open => match input {
                Some(EdgeInput::Chunk { video, epoch, seq, keyframe, payload }) => {
                    l.service.handle_chunk(Instant::now(), &video, epoch, seq, keyframe, payload);
                }
                Some(EdgeInput::Videos(videos)) => l.service.set_videos(Instant::now(), videos),
                Some(EdgeInput::Drain(within)) => l.service.start_drain(Instant::now(), within),
                None => inputs_open = false,
            },
            _ = sleep => l.service.handle_timeout(Instant::now()),
        }
        l.flush().await;
    }
    let c = l.service.counters();
    info!(
        sessions_left = l.service.sessions().count(),
        draining = l.service.draining(),
        drain_notices_sent = c.drain_notices_sent,
        drain_refused = c.drain_refused,
        "edge driver stopped"
    );
}

impl Loop {
    async fn flush(&mut self) {
        while let Some(out) = self.service.poll_output() {
            match out {
                EdgeOutput::Control { to, from, bytes } => {
                    if let Err(e) = self.socket.send_to(&bytes, to, from).await {
                        self.driver_counters
                            .control_send_errors
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(%to, error = %e, "control datagram not sent");
                    }
                }
                EdgeOutput::Video { to, from, bytes } => self.sink.send(to, from, bytes),
                EdgeOutput::SessionOpened {
                    client,
                    video,
                    stream,
                    continuing,
                } => self.sink.open(client, &video, stream, continuing),
                EdgeOutput::SessionClosed { client, .. } => self.sink.close(client),
                EdgeOutput::Subscribe { video } => {
                    if self.events.send(EdgeEvent::Subscribe { video }).is_err() {
                        warn!("nobody listens to the edge's subscribe events");
                    }
                }
                EdgeOutput::Unsubscribe { video } => {
                    let _ = self.events.send(EdgeEvent::Unsubscribe { video });
                }
            }
        }
        self.driver_counters
            .video_dropped
            .store(self.sink.dropped(), Ordering::Relaxed);
        let counters = self.service.counters();
        let session_events = counters.sessions_opened
            + counters.sessions_cancelled
            + counters.sessions_expired
            + counters.sessions_replaced;
        let now = Instant::now();
        if session_events != self.sessions_at.1
            || now.duration_since(self.sessions_at.0).as_millis() >= 250
        {
            self.sessions_at = (now, session_events);
            self.sessions
                .send_replace(self.service.sessions().collect());
        }
        self.counters.send_if_modified(|c| {
            if c != counters {
                c.clone_from(counters);
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn native_sink_caps_each_client_to_its_own_share() {
        use tokio::net::UdpSocket;
        let edge = Arc::new(
            ReplySocket::bind("127.76.30.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
        let old = UdpSocket::bind("127.76.30.2:0").await.unwrap();
        let busy = UdpSocket::bind("127.76.30.3:0").await.unwrap();
        let (old_addr, busy_addr) = (old.local_addr().unwrap(), busy.local_addr().unwrap());
        let mut sink = NativeSink::new(edge, 128);
        // Nothing is sent until we yield (current-thread runtime), so the caps are exact.
        sink.send(old_addr, None, Bytes::from_static(b"old 0"));
        for i in 0..200u32 {
            sink.send(busy_addr, None, Bytes::from(format!("busy {i}")));
        }
        for i in 1..11u32 {
            sink.send(old_addr, None, Bytes::from(format!("old {i}")));
        }
        // Two clients: each may hold 128 / 2 = 64; only the busy one lost anything.
        assert_eq!(sink.dropped(), 200 - MIN_CLIENT_SHARE as u64);
        let mut buf = [0u8; 64];
        for i in 0..11 {
            let n = old.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], format!("old {i}").as_bytes());
        }
        for i in 0..MIN_CLIENT_SHARE {
            let n = busy.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], format!("busy {i}").as_bytes());
        }
        // A closed session's queue is gone; a new one starts empty.
        sink.close(busy_addr);
        sink.send(busy_addr, None, Bytes::from_static(b"again"));
        let n = busy.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
    }
}
