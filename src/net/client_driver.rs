//! The tokio driver of a [`ClientService`]: the client's UDP socket, its timer, and the
//! channels to the user interface and the player.
//!
//! It moves datagrams between the socket and the service, hands the ordered raw TS to a
//! bounded media channel (a full channel drops and counts: the network must never wait for a
//! slow player), forwards the service's events, and publishes a snapshot (edge table and
//! statistics) a few times a second. Commands (play, stop, list, choose an edge) come in on a
//! channel. On shutdown it stops the video first, so the edges get their cancels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::service::client::{
    ClientEvent, ClientOutput, ClientService, ClientStats, EdgeChoice, EdgeStatus,
};

/// Largest datagram read from an edge (a framed video datagram is about 1.35 kB; an ffmpeg
/// relay may send bigger ones).
const RECV_BUF: usize = 65536;
/// How often the snapshot is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(200);

/// What the user interface asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    Play(String),
    Stop,
    List,
    Choose(EdgeChoice),
}

/// The client's state for a display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSnapshot {
    pub edges: Vec<EdgeStatus>,
    pub stats: ClientStats,
    pub current: Option<SocketAddr>,
    pub video: Option<String>,
    /// Datagrams the media channel dropped (player too slow).
    pub media_dropped: u64,
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct ClientDriverConfig {
    /// Local UDP address (the edges send video here).
    pub bind: SocketAddr,
    /// Depth of the media channel, in datagrams.
    pub media_queue: usize,
}

/// The user-interface side of a running client driver.
pub struct ClientHandle {
    pub commands: mpsc::UnboundedSender<ClientCommand>,
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    /// Raw TS, in order, for the player or the recording.
    pub media: mpsc::Receiver<Bytes>,
    pub snapshot: watch::Receiver<ClientSnapshot>,
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<ClientSnapshot>,
}

impl ClientHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the video (cancels are sent), ends the driver and returns the final snapshot.
    pub async fn shutdown(mut self) -> ClientSnapshot {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(s) => s,
            Err(_) => self.snapshot.borrow().clone(),
        }
    }

    /// Kills the driver at once: nothing more is sent, no cancel (a vanished client).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the client socket and starts the driver.
pub async fn spawn(
    cfg: ClientDriverConfig,
    service: ClientService,
) -> std::io::Result<ClientHandle> {
    let socket = super::bind::udp_socket(cfg.bind)?;
    let local_addr = socket.local_addr()?;
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (media_tx, media_rx) = mpsc::channel(cfg.media_queue.max(1));
    let (snapshot_tx, snapshot_rx) = watch::channel(ClientSnapshot::default());
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(run(
        Loop {
            socket,
            service,
            events: events_tx,
            media: media_tx,
            media_dropped: Arc::new(AtomicU64::new(0)),
            snapshot: snapshot_tx,
        },
        commands_rx,
        shutdown_rx,
    ));
    Ok(ClientHandle {
        commands: commands_tx,
        events: events_rx,
        media: media_rx,
        snapshot: snapshot_rx,
        local_addr,
        shutdown: Some(shutdown_tx),
        task,
    })
}

struct Loop {
    socket: UdpSocket,
    service: ClientService,
    events: mpsc::UnboundedSender<ClientEvent>,
    media: mpsc::Sender<Bytes>,
    media_dropped: Arc<AtomicU64>,
    snapshot: watch::Sender<ClientSnapshot>,
}

async fn run(
    mut l: Loop,
    mut commands: mpsc::UnboundedReceiver<ClientCommand>,
    mut shutdown: oneshot::Receiver<()>,
) -> ClientSnapshot {
    let mut buf = vec![0u8; RECV_BUF];
    let mut commands_open = true;
    let mut snapshot_tick = tokio::time::interval(SNAPSHOT_EVERY);
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    l.service.handle_timeout(Instant::now());
    l.flush().await;
    loop {
        let deadline = l.service.poll_timeout();
        let sleep = super::sleep_until_or_never(deadline);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = l.socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let datagram = Bytes::copy_from_slice(&buf[..n]);
                    let from = super::bind::canonical(from);
                    l.service.handle_datagram(Instant::now(), from, datagram);
                }
                Err(e) => debug!(error = %e, "client socket receive error"),
            },
            cmd = commands.recv(), if commands_open => {
                let now = Instant::now();
                match cmd {
                    Some(ClientCommand::Play(video)) => {
                        l.service.play(now, &video);
                    }
                    Some(ClientCommand::Stop) => l.service.stop(now),
                    Some(ClientCommand::List) => l.service.request_list(now),
                    Some(ClientCommand::Choose(choice)) => {
                        if let Err(e) = l.service.set_choice(now, choice) {
                            debug!(error = %e, "edge choice refused");
                        }
                    }
                    None => commands_open = false,
                }
            },
            _ = sleep => l.service.handle_timeout(Instant::now()),
            _ = snapshot_tick.tick() => l.publish(),
        }
        l.flush().await;
    }
    l.service.stop(Instant::now());
    l.flush().await;
    l.publish();
    let snapshot = l.snapshot.borrow().clone();
    snapshot
}

impl Loop {
    async fn flush(&mut self) {
        while let Some(out) = self.service.poll_output() {
            match out {
                ClientOutput::Send { to, bytes } => {
                    if let Err(e) = self.socket.send_to(&bytes, to).await {
                        debug!(%to, error = %e, "datagram to edge not sent");
                    }
                }
                ClientOutput::Deliver(ts) => {
                    if self.media.try_send(ts).is_err() {
                        self.media_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ClientOutput::Event(ev) => {
                    let _ = self.events.send(ev);
                }
            }
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        self.snapshot.send_replace(ClientSnapshot {
            edges: self.service.edges(now),
            stats: self.service.stats(now),
            current: self.service.current_edge(),
            video: self.service.video().map(str::to_owned),
            media_dropped: self.media_dropped.load(Ordering::Relaxed),
        });
    }
}
