//! Relays to one client, tokio side: this module owns delivering chunks as MPEG-TS over UDP to
//! one address, either through an ffmpeg child (the report's way: chunks on its stdin,
//! `-c copy` to `udp://HOST:PORT?pkt_size=1316`) or natively (each chunk sent as datagrams of
//! whole TS packets, optionally behind a caller-made header).
//!
//! Both sit behind [`Relay`]: [`Relay::send`] never blocks the caller (a bounded queue and
//! `try_send`; a full queue drops the chunk and counts it), so one slow client cannot stall the
//! node that feeds many. An ffmpeg relay whose child dies restarts it with backoff; chunks that
//! arrive meanwhile are dropped and counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::child::{self, Backoff, Ended, FfmpegChild, Supervised, VideoPipe};
use super::ts::{Chunk, PACKET_LEN};

/// Builds the header of each native datagram: called with an empty buffer before the TS
/// packets are appended (e.g. to write a sequence number).
pub type HeaderFn = Box<dyn FnMut(&mut BytesMut) + Send>;

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("datagram size {0} cannot hold one TS packet")]
    BadDatagramSize(usize),
    #[error("ffmpeg is not installed")]
    NoFfmpeg,
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Chunks waiting for the relay task; more are dropped.
    pub queue: usize,
    /// Largest TS payload per datagram (whole packets; 1316 = 7 packets).
    pub max_datagram: usize,
    /// Restart backoff of the ffmpeg child.
    pub backoff: Backoff,
    /// Extra ffmpeg options placed after the input and before `-c copy` (e.g. `-copyts`);
    /// ignored by the native relay.
    pub ffmpeg_options: Vec<String>,
    /// The ffmpeg child's short input probe and one audio frame per output PES (see
    /// [`ffmpeg_relay_args`]); false: a 0.5 s probe and ffmpeg's default PES (the way before,
    /// kept for comparison).
    pub ffmpeg_quick: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            // About 2 s of our clips at 7 packets per chunk.
            queue: 256,
            max_datagram: 7 * PACKET_LEN,
            backoff: Backoff::default(),
            ffmpeg_options: Vec::new(),
            ffmpeg_quick: true,
        }
    }
}

/// Options of the native relay.
#[derive(Default)]
pub struct NativeOptions {
    /// Send from this socket (e.g. the edge's client socket, so the client sees one source
    /// address); by default a new socket on an ephemeral port of the matching family.
    pub socket: Option<Arc<UdpSocket>>,
    /// Per-datagram header (see [`HeaderFn`]).
    pub header: Option<HeaderFn>,
}

/// Which implementation a relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    Ffmpeg,
    Native,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    dropped: AtomicU64,
    sent_bytes: AtomicU64,
    datagrams: AtomicU64,
    send_errors: AtomicU64,
    restarts: AtomicU64,
    child_pid: AtomicU32,
}

/// A snapshot of a relay's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Chunks accepted by `send`.
    pub queued: u64,
    /// Chunks refused by `send` (queue full or relay stopped) or lost while ffmpeg restarted.
    pub dropped: u64,
    /// TS bytes written to the socket (native) or to ffmpeg (ffmpeg).
    pub sent_bytes: u64,
    /// Datagrams sent (native only).
    pub datagrams: u64,
    pub send_errors: u64,
    pub restarts: u64,
}

/// A relay of one stream to one client address.
pub struct Relay {
    kind: RelayKind,
    dest: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("kind", &self.kind)
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

pub use super::child::ffmpeg_available;

/// The ffmpeg relay's quick input probe: at most this much stream time (microseconds) or
/// this many bytes, whichever ends first.
pub const QUICK_PROBE: [&str; 2] = ["40000", "32768"];
/// The probe before: a child waited 0.5 s of live stream before its first output (the GOP
/// cache's burst spans less just after a keyframe), at every start and every edge switch.
pub const LONG_PROBE: [&str; 2] = ["500000", "65536"];

/// The ffmpeg arguments that read MPEG-TS on stdin and send it to `dest` over UDP; `options`
/// go between the input and the output (see [`RelayConfig::ffmpeg_options`]); `quick`: see
/// [`RelayConfig::ffmpeg_quick`].
pub fn ffmpeg_relay_args(
    dest: SocketAddr,
    max_datagram: usize,
    options: &[String],
    quick: bool,
) -> Vec<String> {
    let [duration, bytes] = if quick { QUICK_PROBE } else { LONG_PROBE };
    let fps_probe: &[&str] = if quick { &["-fpsprobesize", "0"] } else { &[] };
    let input = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        // Start forwarding after a short look at the input instead of the default 5 s: -c
        // copy needs no decoder parameters, only each track's first packet (an AAC track's
        // sample rate and channels are in its ADTS header). The probe ends when any track
        // spans the duration, found or not, so it covers a few audio frames of 21 ms: enough
        // when audio comes one frame per PES, as from our sources (the paced reader passes the
        // clips' PES as they are, `-pes_payload_size 0`; the ffmpeg source writes them so). A
        // track whose first PES ends later (audio bundled in 0.5 s PES by a default ffmpeg
        // muxer) is left out. No frame-rate estimate (it would wait for 20 frames).
        // (-fflags nobuffer was tried and loses the first second of the stream.)
        "-probesize",
        bytes,
        "-analyzeduration",
        duration,
    ];
    let input = input
        .iter()
        .chain(fps_probe)
        .chain(&["-f", "mpegts", "-i", "pipe:0"]);
    // One audio frame per PES on the way out as well: a 0.5 s PES (ffmpeg's default
    // `pes_payload_size` of 2930 bytes at 48 kbit/s) is sent in one burst every 0.5 s, which a
    // client's stall rule takes for the stream's rhythm, and a player's short probe ends
    // before it.
    let pes = if quick { "0" } else { "2930" };
    let output = ["-c", "copy", "-pes_payload_size", pes, "-f", "mpegts"];
    input
        .map(|s| s.to_string())
        .chain(options.iter().cloned())
        .chain(output.iter().map(|s| s.to_string()))
        .chain(std::iter::once(format!(
            "udp://{dest}?pkt_size={max_datagram}"
        )))
        .collect()
}

impl Relay {
    /// A native relay with its own socket and no header.
    pub async fn native(dest: SocketAddr, cfg: RelayConfig) -> Result<Relay, RelayError> {
        Relay::native_with(dest, cfg, NativeOptions::default()).await
    }

    /// A native relay with a given socket and/or per-datagram header.
    pub async fn native_with(
        dest: SocketAddr,
        cfg: RelayConfig,
        opts: NativeOptions,
    ) -> Result<Relay, RelayError> {
        let max = cfg.max_datagram / PACKET_LEN * PACKET_LEN;
        if max == 0 || max > 65_000 {
            return Err(RelayError::BadDatagramSize(cfg.max_datagram));
        }
        let socket = match opts.socket {
            Some(s) => s,
            None => {
                let bind: SocketAddr = if dest.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal address")
                } else {
                    "[::]:0".parse().expect("literal address")
                };
                Arc::new(UdpSocket::bind(bind).await.map_err(RelayError::Socket)?)
            }
        };
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run_native(
            socket,
            dest,
            max,
            opts.header,
            rx,
            cancel.clone(),
            counters.clone(),
        ));
        Ok(Relay {
            kind: RelayKind::Native,
            dest,
            tx,
            cancel,
            task: Some(task),
            counters,
        })
    }

    /// A relay through an ffmpeg child (restarted with backoff when it dies).
    pub fn ffmpeg(dest: SocketAddr, cfg: RelayConfig) -> Result<Relay, RelayError> {
        if !ffmpeg_available() {
            return Err(RelayError::NoFfmpeg);
        }
        let max = cfg.max_datagram / PACKET_LEN * PACKET_LEN;
        if max == 0 || max > 65_000 {
            return Err(RelayError::BadDatagramSize(cfg.max_datagram));
        }
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let cancel = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run_ffmpeg(
            ffmpeg_relay_args(dest, max, &cfg.ffmpeg_options, cfg.ffmpeg_quick),
            dest,
            cfg.backoff,
            rx,
            cancel.clone(),
            counters.clone(),
        ));
        Ok(Relay {
            kind: RelayKind::Ffmpeg,
            dest,
            tx,
            cancel,
            task: Some(task),
            counters,
        })
    }

    pub fn kind(&self) -> RelayKind {
        self.kind
    }

    pub fn dest(&self) -> SocketAddr {
        self.dest
    }

    /// Queue a chunk without blocking; false (and counted) when the queue is full or the relay
    /// has stopped.
    pub fn send(&self, chunk: &Chunk) -> bool {
        self.send_bytes(chunk.payload.clone())
    }

    /// Queue raw TS bytes (whole packets) without blocking; see [`send`](Relay::send).
    pub fn send_bytes(&self, payload: Bytes) -> bool {
        match self.tx.try_send(payload) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> RelayStats {
        let c = &self.counters;
        RelayStats {
            queued: c.queued.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            sent_bytes: c.sent_bytes.load(Ordering::Relaxed),
            datagrams: c.datagrams.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
        }
    }

    /// Process id of the current ffmpeg child (ffmpeg relays only).
    pub fn child_pid(&self) -> Option<u32> {
        match self.counters.child_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Stop: the native relay sends what is queued first; the ffmpeg relay closes ffmpeg's
    /// stdin so it flushes, and kills it if it does not exit within a second.
    pub async fn stop(mut self) {
        let (tx, _) = mpsc::channel(1);
        // Dropping our sender ends the task's queue once drained.
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn run_native(
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
    max: usize,
    mut header: Option<HeaderFn>,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut datagram = BytesMut::with_capacity(max + 64);
    loop {
        let payload = tokio::select! {
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        // Whole packets only: a trailing partial packet would corrupt the receiver's stream.
        let whole = payload.len() / PACKET_LEN * PACKET_LEN;
        for part in payload[..whole].chunks(max) {
            datagram.clear();
            if let Some(h) = header.as_mut() {
                h(&mut datagram);
            }
            datagram.extend_from_slice(part);
            match socket.send_to(&datagram, dest).await {
                Ok(_) => {
                    counters.datagrams.fetch_add(1, Ordering::Relaxed);
                    counters
                        .sent_bytes
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // ICMP port unreachable surfaces here on Linux; the client may come back.
                    if counters.send_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::debug!(%dest, "relay send failed: {e}");
                    }
                }
            }
        }
    }
}

async fn run_ffmpeg(
    args: Vec<String>,
    dest: SocketAddr,
    mut backoff: Backoff,
    rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
) {
    let child = FfmpegChild {
        args,
        video: VideoPipe::Stdin,
        label: format!("ffmpeg relay to {dest}"),
    };
    let mut job = FfmpegRelay {
        dest,
        rx,
        cancel,
        counters: counters.clone(),
    };
    let (restarts, child_pid) = (&counters.restarts, &counters.child_pid);
    child::supervise(&child, &mut job, &mut backoff, restarts, child_pid).await;
}

/// The ffmpeg child of a relay: chunks go to its stdin.
struct FfmpegRelay {
    dest: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    counters: Arc<Counters>,
}

impl Supervised for FfmpegRelay {
    fn spawn_failed(&self, e: std::io::Error) {
        tracing::error!(dest = %self.dest, "cannot start ffmpeg relay: {e}");
    }

    async fn run(&mut self, ch: &mut Child, started: Instant) -> Ended {
        let counters = &self.counters;
        let mut stdin = ch.stdin.take().expect("stdin was piped");
        let ended = loop {
            let payload = tokio::select! {
                _ = self.cancel.cancelled() => break true,
                p = self.rx.recv() => p,
            };
            let Some(payload) = payload else {
                // Orderly stop: let ffmpeg flush what it holds, then make sure it's gone.
                drop(stdin);
                let waited =
                    tokio::time::timeout(std::time::Duration::from_secs(1), ch.wait()).await;
                if waited.is_err() {
                    child::kill(ch).await;
                }
                return Ended::Stop;
            };
            let len = payload.len() as u64;
            if stdin.write_all(&payload).await.is_err() {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                break false;
            }
            counters.sent_bytes.fetch_add(len, Ordering::Relaxed);
        };
        child::kill(ch).await;
        if ended {
            return Ended::Stop;
        }
        tracing::warn!(
            dest = %self.dest,
            "ffmpeg relay exited after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ended::Died
    }

    async fn pause(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        // Drain (and count) chunks while waiting, so the queue does not fill with stale video.
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => return true,
                p = self.rx.recv() => match p {
                    Some(_) => { self.counters.dropped.fetch_add(1, Ordering::Relaxed); }
                    None => return false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_args() {
        let a = ffmpeg_relay_args("127.0.0.1:5000".parse().unwrap(), 1316, &[], true).join(" ");
        assert!(
            a.ends_with("-f mpegts -i pipe:0 -c copy -pes_payload_size 0 -f mpegts udp://127.0.0.1:5000?pkt_size=1316")
        );
        let a = ffmpeg_relay_args("[::1]:5000".parse().unwrap(), 1316, &[], true).join(" ");
        assert!(a.ends_with("udp://[::1]:5000?pkt_size=1316"));
        let opts = vec!["-copyts".to_string()];
        let a = ffmpeg_relay_args("127.0.0.1:5000".parse().unwrap(), 1316, &opts, true).join(" ");
        assert!(a.contains("-i pipe:0 -copyts -c copy -pes_payload_size 0 -f mpegts udp://"));
        assert!(a.contains("-probesize 32768 -analyzeduration 40000 -fpsprobesize 0"));
        let a = ffmpeg_relay_args("127.0.0.1:5000".parse().unwrap(), 1316, &[], false).join(" ");
        assert!(a.contains("-probesize 65536 -analyzeduration 500000"));
        assert!(a.contains("-c copy -pes_payload_size 2930 -f mpegts"));
    }

    #[tokio::test]
    async fn native_relay_splits_into_whole_packets_with_header() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut seq = 0u32;
        let header: HeaderFn = Box::new(move |b: &mut BytesMut| {
            b.extend_from_slice(&seq.to_be_bytes());
            seq += 1;
        });
        let cfg = RelayConfig {
            max_datagram: 2 * PACKET_LEN + 10,
            ..RelayConfig::default()
        };
        let opts = NativeOptions {
            header: Some(header),
            ..NativeOptions::default()
        };
        let relay = Relay::native_with(rx.local_addr().unwrap(), cfg, opts)
            .await
            .unwrap();
        // 5 packets plus a stray partial one.
        let mut data = vec![0x47u8; 5 * PACKET_LEN + 7];
        data[PACKET_LEN] = 0x47;
        assert!(relay.send_bytes(Bytes::from(data)));
        let mut sizes = Vec::new();
        let mut buf = [0u8; 2048];
        for want in 0..3u32 {
            let n = rx.recv(&mut buf).await.unwrap();
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), want);
            sizes.push(n - 4);
        }
        assert_eq!(sizes, vec![376, 376, 188]);
        relay.stop().await;
    }

    #[tokio::test]
    async fn native_relay_never_blocks_and_counts_drops() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cfg = RelayConfig {
            queue: 4,
            ..RelayConfig::default()
        };
        let relay = Relay::native(rx.local_addr().unwrap(), cfg).await.unwrap();
        let chunk = Chunk {
            payload: Bytes::from(vec![0x47; 1316]),
            keyframe: false,
        };
        // Without yielding, the task cannot drain: only the queue's worth is accepted.
        let accepted = (0..100).filter(|_| relay.send(&chunk)).count();
        assert_eq!(accepted, 4);
        let s = relay.stats();
        assert_eq!((s.queued, s.dropped), (4, 96));
        relay.stop().await;
    }

    #[tokio::test]
    async fn bad_datagram_size_is_refused() {
        let cfg = RelayConfig {
            max_datagram: 100,
            ..RelayConfig::default()
        };
        let err = Relay::native("127.0.0.1:9".parse().unwrap(), cfg).await;
        assert!(matches!(err, Err(RelayError::BadDatagramSize(100))));
    }
}
