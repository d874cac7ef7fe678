//! The edge's ffmpeg relay: one ffmpeg child per client session, as in the report. This module
//! owns [`FfmpegSink`], the [`VideoSink`] behind `--relay ffmpeg`.
//!
//! Per session, the sink starts a [`media::relay::Relay`](crate::media::relay::Relay) whose
//! ffmpeg child reads the session's TS on stdin (the edge's 26-byte video header stripped from
//! every datagram) and re-muxes it with `-c copy` to MPEG-TS over UDP. ffmpeg does not send
//! to the client itself: it sends to a loopback socket of the sink, and the sink forwards each
//! of its datagrams to the client *from the edge's own socket*, and from the edge address the
//! client's requests went to. So the client sees one source
//! address for control and video (it accepts video only from its edges' addresses), and the
//! edge's UDP port is not shared with a child (`SO_REUSEPORT` would split the clients'
//! control datagrams between the two sockets).
//!
//! What a client gets in this mode is raw TS (first byte `0x47`): no chunk numbers, so a client
//! cannot drop duplicates, and it takes video only from its current edge. Two consequences,
//! decided here:
//! - ffmpeg runs with `-copyts`: its output keeps the source's timestamps instead of starting
//!   each child at zero, so when a client moves to another edge (a new child there) the
//!   timestamps it records or plays go on from where they were.
//! - A client moving here mid-stream (`continuing`) has already played the frames in the
//!   edge's GOP cache; replaying them would show old frames again with timestamps going back.
//!   For such a session the cached datagrams (flag `VIDEO_FLAG_CACHED`) are skipped and ffmpeg
//!   gets `-copyinkf` (copy initial non-keyframes), so it forwards from the live point at once
//!   instead of waiting for the next keyframe (the player still holds the reference frames).
//!   A fresh session gets the cache as usual and so starts on a keyframe.
//!
//! - A new epoch (the stream now comes from another server, or from a restarted source) gets
//!   a new child. The new epoch's timestamps start over (a source starts at its clip's
//!   beginning); one ffmpeg child fed both, with `-copyts`, clamps every timestamp behind the
//!   highest seen ("non-monotonous DTS") and sends in bursts with pauses of about 0.7 s until the
//!   new timestamps catch up: seconds of unplayable video, seen in CORE. A fresh child costs
//!   its start (about 0.7 s) once, and starts the client cleanly on the new epoch's next
//!   keyframe. Stragglers of the epoch just left are dropped (each would cost another child);
//!   only a run of it for [`EPOCH_RETURN`] means the stream went back to it.
//!
//! Start-up ([`RelayStart`]): a child costs its exec and initialisation (about 0.1 s, more
//! on a busy host) before it reads its input. With `Warm` (the default) the sink keeps one
//! child started ahead for a fresh session and one for a continuing session (their ffmpeg
//! options differ), each with its loopback socket, waiting on an empty stdin; a session takes
//! the spare and another is started behind it, so neither a joining client nor one moving here
//! waits for an exec. `Cold` is the behaviour before, kept for comparison
//! (`--ffmpeg-relay-start cold`): a child started when the session opens.
//!
//! With `Warm` the child also writes each packet at once (`-max_interleave_delta` 20 ms):
//! ffmpeg's muxer otherwise holds video until it has audio of a later timestamp, and AAC from
//! an ffmpeg muxer comes in PES of about 0.5 s, so the client got bursts up to 0.44 s apart
//! (0.11–0.15 s with the option, offline on alpha re-muxed); a client suspects its edge after
//! twice the peak gap, so the bursts slowed every edge switch.
//!
//! With `Warm` the child's input probe is short (40 ms of stream, see
//! [`crate::media::relay::ffmpeg_relay_args`]) and it writes one audio frame per PES. ffmpeg's
//! MPEG-TS demuxer never ends its probe early (streams may appear at any time), so a session
//! waits until the probe's span of stream has reached the child: at once for a fresh session
//! whose GOP-cache burst spans that much, else on the live stream. The probe used to be 0.5 s:
//! the sources then sent AAC in PES of about 0.5 s, and a shorter probe ended before the first
//! one (the sound was left out of the output). The clips and the ffmpeg source now carry one
//! AAC frame (21 ms) per PES, so 40 ms finds both tracks; a stream with audio bundled in long
//! PES still loses its sound through this relay (use `Cold`, or the native relay). `Cold`
//! keeps the 0.5 s probe and ffmpeg's default PES.
//!
//! Closing a session kills its child; dropping the sink (edge shutdown) kills them all, spares
//! included, and children die with the daemon in any case (see [`crate::media::child`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::edge_driver::{Relay as EdgeRelay, VideoSink};
use super::udp::ReplySocket;
use crate::media::relay::{Relay, RelayConfig};
use crate::wire::client::{
    is_raw_ts, TAG_VIDEO_DATA, TS_PACKET_LEN, VIDEO_FLAG_CACHED, VIDEO_HEADER_LEN,
};

/// Offset of the flags byte in a framed video datagram (after the tag and the stream id).
const FLAGS_OFFSET: usize = 5;
/// Offset of the epoch (`u64`, big-endian) in a framed video datagram, after the flags.
const EPOCH_OFFSET: usize = 6;
/// How long the epoch a session left must keep coming, with nothing of the new one, before
/// the session goes back to it (as the client's `stale_epoch_return`).
const EPOCH_RETURN: std::time::Duration = std::time::Duration::from_millis(100);
/// ffmpeg's `-max_interleave_delta` with [`RelayStart::Warm`], in microseconds.
const INTERLEAVE_US: &str = "20000";
/// Receive buffer of the loopback socket; ffmpeg sends `pkt_size` (1316-byte) datagrams.
const FORWARD_BUF: usize = 65_536;

/// Counters of the sink (all sessions together).
#[derive(Debug, Default)]
pub struct FfmpegSinkCounters {
    /// Sessions that got a child.
    pub sessions: AtomicU64,
    /// Sessions that could not start (no loopback socket, no ffmpeg).
    pub start_failures: AtomicU64,
    /// Sessions given a child started ahead ([`RelayStart::Warm`]).
    pub warm_starts: AtomicU64,
    /// Spare children that could not be started (the session then starts its own).
    pub spare_failures: AtomicU64,
    /// Datagrams forwarded from ffmpeg to clients.
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    /// Datagrams not forwarded: send errors, or not from ffmpeg / not whole TS packets.
    pub forward_errors: AtomicU64,
    /// GOP-cache datagrams skipped for continuing sessions.
    pub cached_skipped: AtomicU64,
    /// Video datagrams for a client without a session, or not framed video.
    pub unroutable: AtomicU64,
    /// Children replaced because the session's stream moved to a new epoch.
    pub epoch_restarts: AtomicU64,
    /// Stray datagrams of the epoch a session just left, dropped.
    pub left_epoch_dropped: AtomicU64,
}

struct Session {
    relay: Relay,
    forward: JoinHandle<()>,
    /// The edge address the client's video leaves from (the forwarding task reads it).
    from: watch::Sender<Option<IpAddr>>,
    skip_cached: bool,
    video: String,
    stream: u32,
    /// The epoch this child has been fed (`None` before the first datagram).
    epoch: Option<u64>,
    /// The epoch the session left, and since when it has been coming again with nothing of
    /// the current one.
    left: Option<(u64, Option<std::time::Instant>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// How the sink starts a session's child (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStart {
    /// Children started ahead, writing without interleaving delay.
    Warm,
    /// A child started with the session (the behaviour before `Warm`).
    Cold,
}

/// A child started ahead of its session: ffmpeg waiting on stdin, and the loopback socket it
/// will send to.
struct Spare {
    relay: Relay,
    local: UdpSocket,
}

/// See the module docs.
pub struct FfmpegSink {
    socket: Arc<ReplySocket>,
    config: RelayConfig,
    start: RelayStart,
    /// Spare children for a fresh session (`[0]`) and a continuing one (`[1]`).
    spares: [Option<Spare>; 2],
    loopback: IpAddr,
    sessions: HashMap<SocketAddr, Session>,
    counters: Arc<FfmpegSinkCounters>,
    /// Drops counted by relays of sessions already closed.
    closed_dropped: u64,
}

impl FfmpegSink {
    /// A sink sending from the edge's `socket`, with `config` for every child's relay. Must run
    /// within a tokio runtime, which the spares start on.
    pub fn new(socket: Arc<ReplySocket>, config: RelayConfig, start: RelayStart) -> FfmpegSink {
        let mut sink = FfmpegSink {
            socket,
            config,
            start,
            spares: [None, None],
            loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sessions: HashMap::new(),
            counters: Arc::new(FfmpegSinkCounters::default()),
            closed_dropped: 0,
        };
        sink.refill();
        sink
    }

    pub fn counters(&self) -> Arc<FfmpegSinkCounters> {
        self.counters.clone()
    }

    /// Process id of a session's current ffmpeg child.
    pub fn child_pid(&self, client: SocketAddr) -> Option<u32> {
        self.sessions.get(&client).and_then(|s| s.relay.child_pid())
    }

    /// Process ids of the spare children (fresh, continuing) that have started.
    pub fn spare_pids(&self) -> [Option<u32>; 2] {
        [0, 1].map(|k| self.spares[k].as_ref().and_then(|s| s.relay.child_pid()))
    }

    /// A child (with its loopback socket) for a fresh or a `continuing` session.
    fn spawn_child(&self, continuing: bool) -> std::io::Result<Spare> {
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(self.loopback, 0))?;
        std_socket.set_nonblocking(true)?;
        let local = UdpSocket::from_std(std_socket)?;
        let dest = local.local_addr()?;
        let mut cfg = self.config.clone();
        cfg.ffmpeg_options.push("-copyts".into());
        // `Cold` is the behaviour before in full: the 0.5 s probe and ffmpeg's default PES.
        cfg.ffmpeg_quick &= self.start == RelayStart::Warm;
        if self.start == RelayStart::Warm {
            // See the module docs: write each packet without waiting for the other track.
            cfg.ffmpeg_options
                .extend(["-max_interleave_delta".into(), INTERLEAVE_US.into()]);
        }
        if continuing {
            cfg.ffmpeg_options.extend(["-copyinkf".into()]);
        }
        let relay = Relay::ffmpeg(dest, cfg).map_err(std::io::Error::other)?;
        Ok(Spare { relay, local })
    }

    /// Starts the spares missing (`Warm` only).
    fn refill(&mut self) {
        if self.start != RelayStart::Warm {
            return;
        }
        for (k, continuing) in [false, true].into_iter().enumerate() {
            if self.spares[k].is_some() {
                continue;
            }
            match self.spawn_child(continuing) {
                Ok(spare) => self.spares[k] = Some(spare),
                Err(e) => {
                    if self.counters.spare_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        warn!(error = %e, "cannot start a spare ffmpeg relay");
                    }
                }
            }
        }
    }

    fn start(&mut self, client: SocketAddr, continuing: bool) -> std::io::Result<Session> {
        let spare = match self.spares[usize::from(continuing)].take() {
            Some(spare) => {
                self.counters.warm_starts.fetch_add(1, Ordering::Relaxed);
                spare
            }
            None => self.spawn_child(continuing)?,
        };
        self.refill();
        let Spare { relay, local } = spare;
        let (from, from_rx) = watch::channel(None);
        let forward = tokio::spawn(forward(
            local,
            self.socket.clone(),
            (client, from_rx),
            self.counters.clone(),
        ));
        Ok(Session {
            relay,
            forward,
            from,
            skip_cached: continuing,
            video: String::new(),
            stream: 0,
            epoch: None,
            left: None,
        })
    }
}

/// ffmpeg's datagrams, from the loopback socket to the client through the edge socket.
async fn forward(
    local: UdpSocket,
    edge: Arc<ReplySocket>,
    (client, edge_ip): (SocketAddr, watch::Receiver<Option<IpAddr>>),
    counters: Arc<FfmpegSinkCounters>,
) {
    let mut buf = vec![0u8; FORWARD_BUF];
    let own_ip = local.local_addr().map(|a| a.ip()).ok();
    loop {
        let (n, from) = match local.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%client, error = %e, "ffmpeg relay socket receive error");
                counters.forward_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let datagram = &buf[..n];
        // Only ffmpeg (a local process) sends here, and only whole TS packets go on.
        if Some(from.ip()) != own_ip || !is_raw_ts(datagram) || n % TS_PACKET_LEN != 0 {
            counters.forward_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let from = *edge_ip.borrow();
        match edge.send_to(datagram, client, from).await {
            Ok(_) => {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                counters
                    .forwarded_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // ICMP port unreachable (client gone) surfaces here; the lease ends the session.
                if counters.forward_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    debug!(%client, error = %e, "raw TS datagram not sent");
                }
            }
        }
    }
}

impl VideoSink for FfmpegSink {
    fn open(&mut self, client: SocketAddr, video: &str, stream: u32, continuing: bool) {
        self.close(client);
        match self.start(client, continuing) {
            Ok(mut session) => {
                session.video = video.to_string();
                session.stream = stream;
                self.counters.sessions.fetch_add(1, Ordering::Relaxed);
                info!(%client, video, stream, continuing, "ffmpeg relay started");
                self.sessions.insert(client, session);
            }
            Err(e) => {
                self.counters.start_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%client, video, error = %e, "cannot start the ffmpeg relay for a client");
            }
        }
    }

    fn send(&mut self, client: SocketAddr, from: Option<IpAddr>, datagram: Bytes) {
        if datagram.len() <= VIDEO_HEADER_LEN || datagram[0] != TAG_VIDEO_DATA {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&datagram[EPOCH_OFFSET..EPOCH_OFFSET + 8]);
        let epoch = u64::from_be_bytes(epoch);
        let Some(session) = self.sessions.get_mut(&client) else {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(current) = session.epoch.filter(|&e| e != epoch) {
            if let Some((left, since)) = &mut session.left {
                if *left == epoch {
                    let now = std::time::Instant::now();
                    if now.duration_since(*since.get_or_insert(now)) < EPOCH_RETURN {
                        self.counters
                            .left_epoch_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            // See the module doc: a new epoch gets a fresh child, started as for a new viewer.
            let (video, stream) = (session.video.clone(), session.stream);
            info!(%client, %video, epoch, "new epoch: ffmpeg relay restarted");
            self.counters.epoch_restarts.fetch_add(1, Ordering::Relaxed);
            self.open(client, &video, stream, false);
            let Some(fresh) = self.sessions.get_mut(&client) else {
                return;
            };
            fresh.epoch = Some(epoch);
            fresh.left = Some((current, None));
            fresh.from.send_replace(from);
            fresh.relay.send_bytes(datagram.slice(VIDEO_HEADER_LEN..));
            return;
        }
        if let Some((_, since)) = &mut session.left {
            *since = None;
        }
        session.epoch = Some(epoch);
        session
            .from
            .send_if_modified(|f| std::mem::replace(f, from) != from);
        if session.skip_cached && datagram[FLAGS_OFFSET] & VIDEO_FLAG_CACHED != 0 {
            self.counters.cached_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The relay counts what its queue refuses.
        session.relay.send_bytes(datagram.slice(VIDEO_HEADER_LEN..));
    }

    fn close(&mut self, client: SocketAddr) {
        let Some(session) = self.sessions.remove(&client) else {
            return;
        };
        let stats = session.relay.stats();
        self.closed_dropped += stats.dropped;
        info!(
            %client, video = %session.video, ts_bytes_in = stats.sent_bytes,
            dropped = stats.dropped, restarts = stats.restarts,
            "ffmpeg relay stopped"
        );
        // Dropping the relay kills its child.
        drop(session);
    }

    fn dropped(&self) -> u64 {
        self.closed_dropped
            + self
                .sessions
                .values()
                .map(|s| s.relay.stats().dropped)
                .sum::<u64>()
            + self.counters.forward_errors.load(Ordering::Relaxed)
            + self.counters.unroutable.load(Ordering::Relaxed)
    }
}

/// The edge driver's relay setting for ffmpeg children with `config`, started as `start` says.
pub fn relay(config: RelayConfig, start: RelayStart) -> EdgeRelay {
    EdgeRelay::Custom(Box::new(move |socket| {
        Box::new(FfmpegSink::new(socket, config, start)) as Box<dyn VideoSink>
    }))
}

/// The tests' one skip policy (see its `//!`), shared with tests/.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/prereq.rs"]
mod prereq;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::put_video_header;
    use bytes::BytesMut;

    /// A sink on a loopback edge socket for `test`; None when `test` cannot run here (no
    /// ffmpeg: a failure under CI, a skip elsewhere, see [`super::prereq`]).
    async fn sink(test: &str) -> Option<FfmpegSink> {
        if super::prereq::lacking(test, &[super::prereq::FFMPEG]) {
            return None;
        }
        let edge = ReplySocket::bind("127.0.0.1:0".parse().unwrap()).await;
        Some(FfmpegSink::new(
            Arc::new(edge.unwrap()),
            RelayConfig::default(),
            RelayStart::Warm,
        ))
    }

    fn framed(flags: u8, seq: u64) -> Bytes {
        of_epoch(1, flags, seq)
    }

    /// A framed datagram of stream 7 with one TS packet.
    fn of_epoch(epoch: u64, flags: u8, seq: u64) -> Bytes {
        let mut b = BytesMut::new();
        put_video_header(&mut b, 7, flags, epoch, seq, 0, 1);
        b.extend_from_slice(&[TS_SYNC_BYTE; TS_PACKET_LEN]);
        b.freeze()
    }
    const TS_SYNC_BYTE: u8 = 0x47;

    async fn child_of(sink: &FfmpegSink, client: SocketAddr) -> u32 {
        for _ in 0..100 {
            if let Some(pid) = sink.child_pid(client) {
                return pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no ffmpeg child for {client}");
    }

    #[tokio::test]
    async fn a_new_epoch_gets_a_new_child() {
        let Some(mut sink) = sink("net::edge_ffmpeg::tests::a_new_epoch_gets_a_new_child").await
        else {
            return;
        };
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let of_epoch = |epoch: u64, seq: u64| of_epoch(epoch, 0, seq);
        sink.open(client, "v", 7, false);
        sink.send(client, None, of_epoch(1, 1));
        sink.send(client, None, of_epoch(1, 2));
        let first = child_of(&sink, client).await;
        let c = sink.counters();
        assert_eq!(c.epoch_restarts.load(Ordering::Relaxed), 0);
        // The stream comes from another server now: a fresh child, for the same session.
        sink.send(client, None, of_epoch(5, 1));
        assert_eq!(c.epoch_restarts.load(Ordering::Relaxed), 1);
        let second = child_of(&sink, client).await;
        assert_ne!(first, second, "the child was replaced");
        assert_eq!(sink.sessions[&client].stream, 7);
        // Later datagrams of that epoch go to the same child; a straggler of the epoch left is
        // dropped, not worth a child.
        sink.send(client, None, of_epoch(5, 2));
        sink.send(client, None, of_epoch(1, 3));
        sink.send(client, None, of_epoch(5, 3));
        assert_eq!(c.epoch_restarts.load(Ordering::Relaxed), 1);
        assert_eq!(c.left_epoch_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(sink.child_pid(client), Some(second));
        // The left epoch coming back for good (EPOCH_RETURN of it alone) is followed.
        sink.send(client, None, of_epoch(1, 4));
        tokio::time::sleep(EPOCH_RETURN + std::time::Duration::from_millis(20)).await;
        sink.send(client, None, of_epoch(1, 5));
        assert_eq!(c.epoch_restarts.load(Ordering::Relaxed), 2);
        assert_eq!(c.left_epoch_dropped.load(Ordering::Relaxed), 2);
        sink.close(client);
    }

    /// A process's command line, arguments joined by spaces.
    fn cmdline(pid: u32) -> String {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    }

    /// Both spare children, once started.
    async fn spares_of(sink: &FfmpegSink) -> [u32; 2] {
        for _ in 0..100 {
            if let [Some(a), Some(b)] = sink.spare_pids() {
                return [a, b];
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no spare ffmpeg children");
    }

    #[tokio::test]
    async fn sessions_take_the_spare_child_of_their_kind_and_another_is_started() {
        let Some(mut sink) = sink("net::edge_ffmpeg::tests::sessions_take_the_spare_child_of_their_kind_and_another_is_started").await else {
            return;
        };
        let [fresh, continuing] = spares_of(&sink).await;
        assert_ne!(fresh, continuing);
        // Warm children probe 40 ms and write one audio frame per PES.
        for pid in [fresh, continuing] {
            let args = cmdline(pid);
            assert!(args.contains("-analyzeduration 40000 "), "{args}");
            assert!(args.contains("-pes_payload_size 0 "), "{args}");
        }
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:10".parse().unwrap(),
        );
        sink.open(a, "v", 7, false);
        sink.open(b, "v", 8, true);
        assert_eq!(sink.child_pid(a), Some(fresh));
        assert_eq!(sink.child_pid(b), Some(continuing));
        let c = sink.counters();
        assert_eq!(c.warm_starts.load(Ordering::Relaxed), 2);
        let next = spares_of(&sink).await;
        assert!(!next.contains(&fresh) && !next.contains(&continuing));
        sink.close(a);
        sink.close(b);
        // The sink started cold keeps no spare: each session starts its own child.
        let edge = ReplySocket::bind("127.0.0.1:0".parse().unwrap()).await;
        let cfg = RelayConfig::default();
        let mut cold = FfmpegSink::new(Arc::new(edge.unwrap()), cfg, RelayStart::Cold);
        assert_eq!(cold.spare_pids(), [None, None]);
        cold.open(a, "v", 7, false);
        let args = cmdline(child_of(&cold, a).await);
        assert!(args.contains("-analyzeduration 500000 "), "{args}");
        assert!(args.contains("-pes_payload_size 2930 "), "{args}");
        assert_eq!(cold.counters().warm_starts.load(Ordering::Relaxed), 0);
        assert_eq!(cold.spare_pids(), [None, None]);
        cold.close(a);
    }

    #[tokio::test]
    async fn continuing_sessions_skip_the_gop_cache_and_close_kills_the_child() {
        let Some(mut sink) = sink("net::edge_ffmpeg::tests::continuing_sessions_skip_the_gop_cache_and_close_kills_the_child").await else {
            return;
        };
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        sink.open(client, "v", 7, true);
        sink.send(client, None, framed(VIDEO_FLAG_CACHED, 1));
        sink.send(client, None, framed(0, 2));
        let c = sink.counters();
        assert_eq!(c.cached_skipped.load(Ordering::Relaxed), 1);
        // Not framed video: dropped and counted.
        sink.send(client, None, Bytes::from_static(&[0x47; 188]));
        assert_eq!(c.unroutable.load(Ordering::Relaxed), 1);
        // The child starts.
        let mut pid = None;
        for _ in 0..100 {
            pid = sink.child_pid(client);
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pid = pid.expect("an ffmpeg child");
        // ffmpeg accepts its arguments: it is still the same child a moment later.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sink.child_pid(client), Some(pid));
        assert_eq!(sink.sessions[&client].relay.stats().restarts, 0);
        sink.close(client);
        let proc = format!("/proc/{pid}");
        let mut gone = false;
        for _ in 0..100 {
            // Killed and reaped: no such process (or a zombie on its way out).
            let state = std::fs::read_to_string(format!("{proc}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(gone, "ffmpeg child {pid} still runs after close");
        assert_eq!(sink.sessions.len(), 0);
    }
}
