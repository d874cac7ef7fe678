//! The edge's client service: sessions, leases, cookies, rate limits and the GOP cache.
//!
//! [`EdgeService`] owns everything an edge decides about its UDP clients. Inputs are datagrams
//! from clients ([`EdgeService::handle_datagram`]), chunks of the videos the overlay delivers
//! ([`EdgeService::handle_chunk`]), the list of videos the edge can reach
//! ([`EdgeService::set_videos`]) and timer expiries; outputs ([`EdgeOutput`]) are datagrams to
//! send and the `Subscribe`/`Unsubscribe` events the overlay node acts on. It never reads a
//! clock and never panics on network input: what it cannot use it counts and drops.
//!
//! Rules it enforces:
//! - **Cookies before data.** Anything larger than what was received (lists, video) goes only
//!   to an address that echoed a cookie. A cookie is a keyed hash of (client address, time
//!   bucket), so the edge keeps no state for an address until it has proven it receives; a
//!   cookie stays valid for the current and the previous bucket.
//! - **Rate limits.** Every datagram spends a token of its source IP's bucket; empty bucket,
//!   dropped datagram. The table of buckets is bounded.
//! - **Leases.** A session lives while keepalives (each carrying a valid cookie) arrive; a
//!   silent client is expired, and the last session of a video leaving unsubscribes it.
//! - **GOP cache.** Per subscribed video, the chunks since the last keyframe (bounded in
//!   bytes): a client joining a running stream gets them first, so its player starts on a
//!   keyframe at once; a client joining before any cache waits for the next keyframe.
//! - **Retransmission within the session's allowance.** Each session keeps the last
//!   `retransmit_chunks` chunks it was sent (the payloads are shared with the other sessions,
//!   not copied). A client's NACK, with a valid cookie and the session's stream, gets the parts
//!   it names that are still held, flagged as retransmitted. Retransmissions only go to an
//!   address that proved it receives, and each costs twice: a token of the source's rate
//!   bucket (the same bucket its requests spend), and bytes of the session's allowance, which
//!   grows by `retransmit_ratio` of every byte of video sent to it up to
//!   `retransmit_burst_bytes`. So a session can never draw more than its own stream times
//!   `1 + retransmit_ratio` (plus one burst), however it NACKs. Chunks a NACK asks for that
//!   the session will never get from here (older than a chunk it was sent, and not held: the
//!   edge never had them, or no longer has them) are named back in one `NackMiss`, so the
//!   client stops waiting for them.
//! - **Drain.** An edge told to stop ([`EdgeService::start_drain`]) sends each session a
//!   drain notice (again every `drain_notice_interval` while it stays), refuses new sessions
//!   as busy, and keeps feeding the ones it has until their clients cancel (they moved to
//!   another edge, make-before-break); [`EdgeService::drained`] then says it may exit. The
//!   driver bounds the wait.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ring::hmac;
use tracing::{debug, info};

use crate::wire::client::{
    put_video_header, Challenge, ClientMsg, DrainNotice, ErrorCode, ErrorMsg, ListReply, Nack,
    NackMiss, ProbeAck, VideoOk, MAX_TS_PER_DATAGRAM, REQUEST_FLAG_CONTINUE, TS_PACKET_LEN,
    VIDEO_FLAG_CACHED, VIDEO_FLAG_KEYFRAME, VIDEO_FLAG_RETRANSMIT, VIDEO_HEADER_LEN,
};
use crate::wire::DecodeError;

/// Largest list reply, in bytes: one datagram under a 1500-byte MTU.
const MAX_LIST_REPLY_LEN: usize = 1400;

/// Tunables of the edge service.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Key of the cookie hash; random per process (a restarted edge simply re-challenges).
    pub cookie_secret: [u8; 32],
    /// Length of a cookie time bucket; a cookie is valid for one to two periods.
    pub cookie_period: Duration,
    /// A session without a valid keepalive for this long is expired.
    pub lease: Duration,
    /// Most sessions at once; more get [`ErrorCode::Busy`].
    pub max_sessions: usize,
    /// Datagrams per second each source IP may send, sustained.
    pub rate_per_sec: f64,
    /// Datagrams a source IP may send in a burst.
    pub rate_burst: f64,
    /// Most source IPs tracked by the rate limiter.
    pub max_sources: usize,
    /// Bound of one video's GOP cache, in payload bytes; a longer GOP is not cached; 0: no
    /// cache (a joining client always waits for the next keyframe).
    pub gop_cache_bytes: usize,
    /// A new session waits at most this long for a keyframe before it gets whatever flows.
    pub keyframe_wait: Duration,
    /// TS packets per video datagram (chunks are split at packet boundaries).
    pub ts_per_datagram: usize,
    /// While draining, a session still here is sent the drain notice again this often (a
    /// notice is one datagram and may be lost).
    pub drain_notice_interval: Duration,
    /// Chunks each session keeps for retransmission (the newest ones sent to it); 0: NACKs
    /// are counted and not answered.
    pub retransmit_chunks: usize,
    /// A session's retransmission allowance grows by this fraction of every video byte sent
    /// to it...
    pub retransmit_ratio: f64,
    /// ...up to this many bytes (also its allowance when it opens).
    pub retransmit_burst_bytes: usize,
}

impl EdgeConfig {
    /// Default of [`EdgeConfig::gop_cache_bytes`] (`--gop-cache-bytes`).
    pub const DEFAULT_GOP_CACHE_BYTES: usize = 4 << 20;
    /// Default of [`EdgeConfig::max_sessions`] (`--max-clients`).
    pub const DEFAULT_MAX_SESSIONS: usize = 512;
    /// Default of [`EdgeConfig::retransmit_chunks`]: about 2.5 s of a 1 Mbit/s stream in
    /// 7-packet chunks, far more than any client's latency budget.
    pub const DEFAULT_RETRANSMIT_CHUNKS: usize = 256;
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            cookie_secret: rand::random(),
            cookie_period: Duration::from_secs(10),
            lease: Duration::from_secs(3),
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            rate_per_sec: 100.0,
            rate_burst: 200.0,
            max_sources: 4096,
            gop_cache_bytes: Self::DEFAULT_GOP_CACHE_BYTES,
            keyframe_wait: Duration::from_secs(3),
            ts_per_datagram: MAX_TS_PER_DATAGRAM,
            drain_notice_interval: Duration::from_millis(250),
            retransmit_chunks: Self::DEFAULT_RETRANSMIT_CHUNKS,
            retransmit_ratio: 0.5,
            retransmit_burst_bytes: 48 * 1024,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a cancel.
    Cancelled,
    /// No valid keepalive within the lease.
    Expired,
    /// The client asked for another video (or a new stream id) from the same address.
    Replaced,
}

/// What the service wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeOutput {
    /// A control datagram for a client (send it before queued video), from the edge address
    /// `from` (the one the client sent to; the socket's own when `None`).
    Control {
        to: SocketAddr,
        from: Option<IpAddr>,
        bytes: Bytes,
    },
    /// One framed video datagram for a client, through its video sink; `from` as for
    /// `Control` (the address the client's last request or keepalive went to).
    Video {
        to: SocketAddr,
        from: Option<IpAddr>,
        bytes: Bytes,
    },
    /// A session started: a sink that needs per-client state (an ffmpeg relay) sets it up.
    /// `continuing`: the client is moving here from another edge mid-stream
    /// ([`REQUEST_FLAG_CONTINUE`]); its GOP-cache replay (datagrams flagged
    /// [`VIDEO_FLAG_CACHED`]) is only useful to a client that drops what it already has.
    SessionOpened {
        client: SocketAddr,
        video: String,
        stream: u32,
        continuing: bool,
    },
    /// A session ended; its sink state can go.
    SessionClosed {
        client: SocketAddr,
        video: String,
        reason: CloseReason,
    },
    /// The first client of `video` arrived: the overlay node should subscribe.
    Subscribe { video: String },
    /// The last client of `video` left: the overlay node should unsubscribe.
    Unsubscribe { video: String },
}

/// Counters, by what happened (dropped datagrams by reason).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EdgeCounters {
    pub datagrams_in: u64,
    pub rate_limited: u64,
    /// Dropped because the rate limiter's table was full of active sources.
    pub rate_table_full: u64,
    pub malformed_truncated: u64,
    pub malformed_unknown_tag: u64,
    pub malformed_bad_value: u64,
    pub malformed_trailing: u64,
    pub malformed_other: u64,
    /// Well-formed, but a message only an edge sends.
    pub unexpected_kind: u64,
    pub probes: u64,
    pub list_requests: u64,
    pub video_requests: u64,
    pub keepalives: u64,
    pub cancels: u64,
    /// Requests whose cookie was missing, stale or issued to another address.
    pub cookie_rejected: u64,
    pub unknown_video: u64,
    pub busy: u64,
    pub unknown_stream: u64,
    pub sessions_opened: u64,
    pub sessions_cancelled: u64,
    pub sessions_expired: u64,
    pub sessions_replaced: u64,
    pub chunks_in: u64,
    /// Chunks of a video no client watches.
    pub chunks_unsubscribed: u64,
    /// Chunks with no whole TS packet or too many parts.
    pub chunks_bad_payload: u64,
    /// Per-session chunks held back while waiting for a keyframe.
    pub chunks_held_for_keyframe: u64,
    pub cache_replays: u64,
    /// A GOP outgrew the cache bound and was not cached.
    pub cache_overflows: u64,
    pub video_datagrams_out: u64,
    pub video_bytes_out: u64,
    /// Drain notices sent to sessions (first ones and repeats).
    pub drain_notices_sent: u64,
    /// Video requests refused (busy) because the edge is draining.
    pub drain_refused: u64,
    /// NACKs received (valid cookie or not).
    pub nacks: u64,
    /// NACKs with a valid cookie but no session of that stream from that address.
    pub nack_unknown_session: u64,
    /// Datagrams sent again on a NACK (also counted in `video_datagrams_out`/`_bytes_out`).
    pub retransmit_datagrams: u64,
    pub retransmit_bytes: u64,
    /// Holes asked for whose chunk the session's buffer no longer (or never) held.
    pub retransmit_not_buffered: u64,
    /// Chunks named back in a NACK miss (they will not come from this edge).
    pub nack_missed_chunks: u64,
    /// NACKs cut short because the session's retransmission allowance was spent.
    pub retransmit_over_allowance: u64,
    /// NACKs cut short because the source's rate bucket was empty.
    pub retransmit_rate_limited: u64,
}

impl EdgeCounters {
    /// Datagrams dropped as malformed, all reasons together.
    pub fn malformed(&self) -> u64 {
        self.malformed_truncated
            + self.malformed_unknown_tag
            + self.malformed_bad_value
            + self.malformed_trailing
            + self.malformed_other
    }
}

/// A snapshot of one session, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub client: SocketAddr,
    pub video: String,
    pub stream: u32,
    pub lease_until: Instant,
    pub datagrams_sent: u64,
}

#[derive(Debug)]
struct Session {
    video: String,
    stream: u32,
    /// The edge address the client sends to: its video leaves from there.
    local: Option<IpAddr>,
    /// The cookie of the client's latest request or keepalive of this session (a drain
    /// notice carries it back).
    cookie: u64,
    lease_until: Instant,
    /// Until a keyframe (or this deadline) the session gets no live chunks.
    wait_keyframe_until: Option<Instant>,
    datagrams_sent: u64,
    /// The newest chunks sent to this session, oldest first (at most `retransmit_chunks`).
    sent: VecDeque<CachedChunk>,
    /// Bytes this session may still be sent again (see the module docs).
    retransmit_allowance: f64,
}

#[derive(Debug, Clone)]
struct CachedChunk {
    epoch: u64,
    seq: u64,
    flags: u8,
    payload: Bytes,
}

/// The chunks since the last keyframe of one video. Empty (and not filling) until a keyframe.
#[derive(Debug, Default)]
struct GopCache {
    chunks: Vec<CachedChunk>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct VideoState {
    clients: BTreeSet<SocketAddr>,
    cache: GopCache,
}

/// A client as one datagram showed it: its address, and the edge's address it sent to.
#[derive(Debug, Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    local: Option<IpAddr>,
}

/// What [`EdgeService::take_token`] found.
enum Token {
    Taken,
    Empty,
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub struct EdgeService {
    config: EdgeConfig,
    /// Origin of the cookie time buckets.
    start: Instant,
    /// HMAC-SHA256 keyed with `config.cookie_secret`, prepared once.
    cookie_key: hmac::Key,
    available: BTreeSet<String>,
    sessions: HashMap<SocketAddr, Session>,
    videos: HashMap<String, VideoState>,
    buckets: HashMap<IpAddr, TokenBucket>,
    outputs: VecDeque<EdgeOutput>,
    counters: EdgeCounters,
    /// Draining: when the notices go out again, and when the edge exits at the latest.
    draining: Option<(Instant, Instant)>,
}

impl EdgeService {
    pub fn new(config: EdgeConfig, now: Instant) -> EdgeService {
        EdgeService {
            cookie_key: hmac::Key::new(hmac::HMAC_SHA256, &config.cookie_secret),
            config,
            start: now,
            available: BTreeSet::new(),
            sessions: HashMap::new(),
            videos: HashMap::new(),
            buckets: HashMap::new(),
            outputs: VecDeque::new(),
            counters: EdgeCounters::default(),
            draining: None,
        }
    }

    pub fn counters(&self) -> &EdgeCounters {
        &self.counters
    }

    /// The videos this edge offers (as last set).
    pub fn videos(&self) -> impl Iterator<Item = &str> {
        self.available.iter().map(String::as_str)
    }

    /// Videos with at least one session (what the overlay should be subscribed to).
    pub fn subscribed(&self) -> impl Iterator<Item = &str> {
        self.videos.keys().map(String::as_str)
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.sessions.iter().map(|(client, s)| SessionInfo {
            client: *client,
            video: s.video.clone(),
            stream: s.stream,
            lease_until: s.lease_until,
            datagrams_sent: s.datagrams_sent,
        })
    }

    /// Bytes held by a video's GOP cache (0 when none).
    pub fn cache_bytes(&self, video: &str) -> usize {
        self.videos.get(video).map_or(0, |v| v.cache.bytes)
    }

    /// The videos the edge can reach, from its route table. Sessions of a video that
    /// disappears are kept: a server may come back, and the lease ends them otherwise.
    pub fn set_videos(&mut self, _now: Instant, videos: Vec<String>) {
        self.available = videos.into_iter().collect();
    }

    /// The cookie this edge issues to `addr` at `now`.
    pub fn cookie_for(&self, addr: SocketAddr, now: Instant) -> u64 {
        self.cookie_in_bucket(addr, self.bucket(now))
    }

    fn bucket(&self, now: Instant) -> u64 {
        let period = self.config.cookie_period.as_millis().max(1);
        (now.saturating_duration_since(self.start).as_millis() / period) as u64
    }

    fn cookie_in_bucket(&self, addr: SocketAddr, bucket: u64) -> u64 {
        let mut data = [0u8; 1 + 16 + 2 + 8];
        match addr.ip() {
            IpAddr::V4(ip) => {
                data[0] = 4;
                data[1..5].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                data[0] = 6;
                data[1..17].copy_from_slice(&ip.octets());
            }
        }
        data[17..19].copy_from_slice(&addr.port().to_be_bytes());
        data[19..].copy_from_slice(&bucket.to_be_bytes());
        let mac = hmac::sign(&self.cookie_key, &data);
        let mut first = [0u8; 8];
        first.copy_from_slice(&mac.as_ref()[..8]);
        u64::from_be_bytes(first)
    }

    fn cookie_ok(&self, addr: SocketAddr, now: Instant, cookie: u64) -> bool {
        let b = self.bucket(now);
        cookie == self.cookie_in_bucket(addr, b)
            || (b > 0 && cookie == self.cookie_in_bucket(addr, b - 1))
    }

    /// True when `from` may send one more datagram now.
    fn admit(&mut self, now: Instant, from: IpAddr) -> bool {
        match self.take_token(now, from) {
            Token::Taken => true,
            Token::Empty => {
                self.counters.rate_limited += 1;
                false
            }
            Token::TableFull => {
                self.counters.rate_table_full += 1;
                false
            }
        }
    }

    /// Spends one token of `from`'s rate bucket, if it has one.
    fn take_token(&mut self, now: Instant, from: IpAddr) -> Token {
        let (rate, burst) = (self.config.rate_per_sec, self.config.rate_burst);
        if !self.buckets.contains_key(&from) && self.buckets.len() >= self.config.max_sources {
            // Forget sources whose bucket has refilled: they are idle, a fresh bucket is the same.
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.config.max_sources {
                return Token::TableFull;
            }
        }
        let b = self.buckets.entry(from).or_insert(TokenBucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Token::Taken
        } else {
            Token::Empty
        }
    }

    fn control(&mut self, to: Peer, msg: ClientMsg) {
        let Peer { addr: to, local } = to;
        match msg.to_bytes() {
            Ok(bytes) => self.outputs.push_back(EdgeOutput::Control {
                to,
                from: local,
                bytes,
            }),
            // Only over-long names can fail, and those were decoded from a datagram of ours
            // or set by the overlay; nothing sensible to send.
            Err(e) => debug!(%to, error = %e, "cannot encode reply"),
        }
    }

    /// One datagram from a client, sent to the edge's address `local` (when the socket knows
    /// it: a host with several addresses must answer from the one the client used, or the
    /// client cannot tell the answer is ours).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: Bytes,
    ) {
        self.counters.datagrams_in += 1;
        let peer = Peer { addr: from, local };
        if !self.admit(now, from.ip()) {
            return;
        }
        let msg = match ClientMsg::decode(datagram) {
            Ok(m) => m,
            Err(e) => {
                let c = &mut self.counters;
                match e {
                    DecodeError::Truncated { .. } => c.malformed_truncated += 1,
                    DecodeError::UnknownTag(_) => c.malformed_unknown_tag += 1,
                    DecodeError::BadValue { .. } => c.malformed_bad_value += 1,
                    DecodeError::TrailingBytes(_) => c.malformed_trailing += 1,
                    DecodeError::TooLong { .. } | DecodeError::BadUtf8 { .. } => {
                        c.malformed_other += 1
                    }
                }
                debug!(%from, error = %e, "malformed client datagram dropped");
                return;
            }
        };
        match msg {
            ClientMsg::Probe(p) => {
                self.counters.probes += 1;
                let cookie = self.cookie_for(from, now);
                self.control(
                    peer,
                    ClientMsg::ProbeAck(ProbeAck {
                        token: p.token,
                        cookie,
                    }),
                );
            }
            ClientMsg::ListRequest(r) => {
                self.counters.list_requests += 1;
                if self.check_cookie(now, peer, r.cookie) {
                    let reply = self.list_reply();
                    self.control(peer, reply);
                }
            }
            ClientMsg::VideoRequest(r) => {
                self.counters.video_requests += 1;
                if self.check_cookie(now, peer, r.cookie) {
                    self.video_request(now, peer, r.cookie, r.stream, r.flags, r.video);
                }
            }
            ClientMsg::Keepalive(k) => {
                self.counters.keepalives += 1;
                if !self.check_cookie(now, peer, k.cookie) {
                    return;
                }
                match self.sessions.get_mut(&from) {
                    Some(s) if s.stream == k.stream => {
                        s.lease_until = now + self.config.lease;
                        s.local = local;
                        s.cookie = k.cookie;
                    }
                    _ => {
                        self.counters.unknown_stream += 1;
                        self.control(
                            peer,
                            ClientMsg::Error(ErrorMsg {
                                code: ErrorCode::UnknownStream,
                                stream: k.stream,
                            }),
                        );
                    }
                }
            }
            ClientMsg::VideoCancel(c) => {
                self.counters.cancels += 1;
                if !self.check_cookie(now, peer, c.cookie) {
                    return;
                }
                if self
                    .sessions
                    .get(&from)
                    .is_some_and(|s| s.stream == c.stream)
                {
                    self.close_session(from, CloseReason::Cancelled);
                }
                // A cancel for a session we do not have (a retransmission) needs no answer.
            }
            ClientMsg::Nack(n) => {
                self.counters.nacks += 1;
                if self.check_cookie(now, peer, n.cookie) {
                    self.retransmit(now, peer, n);
                }
            }
            other => {
                self.counters.unexpected_kind += 1;
                debug!(%from, kind = other.kind(), "client sent an edge-only message");
            }
        }
    }

    /// Checks a request's cookie; a bad one is answered with a challenge (no larger than the
    /// request, so an unproven address gains no amplification).
    fn check_cookie(&mut self, now: Instant, from: Peer, cookie: u64) -> bool {
        if self.cookie_ok(from.addr, now, cookie) {
            return true;
        }
        self.counters.cookie_rejected += 1;
        let cookie = self.cookie_for(from.addr, now);
        self.control(from, ClientMsg::Challenge(Challenge { cookie }));
        false
    }

    fn list_reply(&self) -> ClientMsg {
        // Names that would push the reply past one datagram are left out.
        let mut size = 3;
        let mut videos = Vec::new();
        for v in &self.available {
            size += 2 + v.len();
            if size > MAX_LIST_REPLY_LEN {
                break;
            }
            videos.push(v.clone());
        }
        ClientMsg::ListReply(ListReply { videos })
    }

    fn video_request(
        &mut self,
        now: Instant,
        peer: Peer,
        cookie: u64,
        stream: u32,
        flags: u8,
        video: String,
    ) {
        let from = peer.addr;
        if let Some(s) = self.sessions.get_mut(&from) {
            if s.stream == stream && s.video == video {
                // A retransmitted request: renew and confirm again.
                s.lease_until = now + self.config.lease;
                s.local = peer.local;
                s.cookie = cookie;
                self.control(peer, ClientMsg::VideoOk(VideoOk { stream, video }));
                return;
            }
        }
        if self.draining.is_some() {
            // Leaving: a new session would only have to move again. Busy sends the client
            // to another edge.
            self.counters.drain_refused += 1;
            self.control(
                peer,
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::Busy,
                    stream,
                }),
            );
            return;
        }
        if !self.available.contains(&video) {
            self.counters.unknown_video += 1;
            self.control(
                peer,
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::UnknownVideo,
                    stream,
                }),
            );
            return;
        }
        if self.sessions.contains_key(&from) {
            self.close_session(from, CloseReason::Replaced);
        }
        if self.sessions.len() >= self.config.max_sessions {
            self.counters.busy += 1;
            self.control(
                peer,
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::Busy,
                    stream,
                }),
            );
            return;
        }
        self.counters.sessions_opened += 1;
        info!(client = %from, %video, stream, "client session opened");
        self.control(
            peer,
            ClientMsg::VideoOk(VideoOk {
                stream,
                video: video.clone(),
            }),
        );
        let continuing = flags & REQUEST_FLAG_CONTINUE != 0;
        self.outputs.push_back(EdgeOutput::SessionOpened {
            client: from,
            video: video.clone(),
            stream,
            continuing,
        });
        if !self.videos.contains_key(&video) {
            self.outputs.push_back(EdgeOutput::Subscribe {
                video: video.clone(),
            });
        }
        let state = self.videos.entry(video.clone()).or_default();
        state.clients.insert(from);
        let cached = state.cache.chunks.clone();
        let mut session = Session {
            video,
            stream,
            local: peer.local,
            cookie,
            lease_until: now + self.config.lease,
            wait_keyframe_until: None,
            datagrams_sent: 0,
            sent: VecDeque::new(),
            retransmit_allowance: self.config.retransmit_burst_bytes as f64,
        };
        if !cached.is_empty() {
            // The cache starts on a keyframe: the player can start at once.
            self.counters.cache_replays += 1;
            for c in &cached {
                self.send_chunk(
                    from,
                    &mut session,
                    c.epoch,
                    c.seq,
                    c.flags | VIDEO_FLAG_CACHED,
                    &c.payload,
                );
            }
        } else if !continuing {
            session.wait_keyframe_until = Some(now + self.config.keyframe_wait);
        }
        self.sessions.insert(from, session);
    }

    fn close_session(&mut self, client: SocketAddr, reason: CloseReason) {
        let Some(session) = self.sessions.remove(&client) else {
            return;
        };
        match reason {
            CloseReason::Cancelled => self.counters.sessions_cancelled += 1,
            CloseReason::Expired => self.counters.sessions_expired += 1,
            CloseReason::Replaced => self.counters.sessions_replaced += 1,
        }
        info!(%client, video = %session.video, ?reason, "client session closed");
        if self.draining.is_some() && self.sessions.is_empty() {
            info!(
                notices = self.counters.drain_notices_sent,
                "edge drained: every client left"
            );
        }
        self.outputs.push_back(EdgeOutput::SessionClosed {
            client,
            video: session.video.clone(),
            reason,
        });
        if let Some(state) = self.videos.get_mut(&session.video) {
            state.clients.remove(&client);
            if state.clients.is_empty() {
                // The cache goes too: when the video comes back it is a new stream.
                self.videos.remove(&session.video);
                self.outputs.push_back(EdgeOutput::Unsubscribe {
                    video: session.video,
                });
            }
        }
    }

    /// One chunk of `video` from the overlay: whole TS packets, `keyframe` when it starts
    /// with one.
    pub fn handle_chunk(
        &mut self,
        now: Instant,
        video: &str,
        epoch: u64,
        seq: u64,
        keyframe: bool,
        payload: Bytes,
    ) {
        self.counters.chunks_in += 1;
        let whole = payload.len() - payload.len() % TS_PACKET_LEN;
        let parts = whole.div_ceil(TS_PACKET_LEN * self.config.ts_per_datagram.max(1));
        if whole == 0 || parts > usize::from(u16::MAX) {
            self.counters.chunks_bad_payload += 1;
            return;
        }
        // A stray partial packet at the end cannot be played; it is cut off.
        let payload = payload.slice(..whole);
        let Some(state) = self.videos.get_mut(video) else {
            self.counters.chunks_unsubscribed += 1;
            return;
        };
        let flags = if keyframe { VIDEO_FLAG_KEYFRAME } else { 0 };
        let cache = &mut state.cache;
        let new_source = cache.chunks.first().is_some_and(|c| c.epoch != epoch);
        if new_source {
            // Another server, or a restarted source: its viewers see the video jump.
            info!(video, epoch, "the video's epoch changed at this edge");
        }
        if keyframe || new_source {
            cache.chunks.clear();
            cache.bytes = 0;
        }
        // Only a cache that starts on a keyframe is worth replaying.
        if self.config.gop_cache_bytes > 0 && (keyframe || !cache.chunks.is_empty()) {
            if cache.bytes + payload.len() > self.config.gop_cache_bytes {
                self.counters.cache_overflows += u64::from(!cache.chunks.is_empty() || keyframe);
                cache.chunks.clear();
                cache.bytes = 0;
            } else {
                cache.bytes += payload.len();
                cache.chunks.push(CachedChunk {
                    epoch,
                    seq,
                    flags,
                    payload: payload.clone(),
                });
            }
        }
        let clients: Vec<SocketAddr> = state.clients.iter().copied().collect();
        for client in clients {
            let Some(mut session) = self.sessions.remove(&client) else {
                continue;
            };
            let held = matches!(session.wait_keyframe_until,
                Some(deadline) if !keyframe && now < deadline);
            let send = !held;
            if send {
                session.wait_keyframe_until = None;
                self.send_chunk(client, &mut session, epoch, seq, flags, &payload);
            } else {
                self.counters.chunks_held_for_keyframe += 1;
            }
            self.sessions.insert(client, session);
        }
    }

    fn send_chunk(
        &mut self,
        to: SocketAddr,
        session: &mut Session,
        epoch: u64,
        seq: u64,
        flags: u8,
        payload: &Bytes,
    ) {
        let part_len = self.part_len();
        let parts = payload.len().div_ceil(part_len);
        for (i, piece) in payload.chunks(part_len).enumerate() {
            let bytes = frame(session.stream, flags, epoch, seq, i, parts, piece);
            session.retransmit_allowance = (session.retransmit_allowance
                + bytes.len() as f64 * self.config.retransmit_ratio)
                .min(self.config.retransmit_burst_bytes as f64);
            self.push_video(to, session, bytes);
        }
        if self.config.retransmit_chunks > 0 {
            if session.sent.len() >= self.config.retransmit_chunks {
                session.sent.pop_front();
            }
            session.sent.push_back(CachedChunk {
                epoch,
                seq,
                flags: flags & !VIDEO_FLAG_CACHED,
                payload: payload.clone(),
            });
        }
    }

    /// TS bytes of one video datagram.
    fn part_len(&self) -> usize {
        TS_PACKET_LEN * self.config.ts_per_datagram.max(1)
    }

    fn push_video(&mut self, to: SocketAddr, session: &mut Session, bytes: Bytes) {
        self.counters.video_datagrams_out += 1;
        self.counters.video_bytes_out += bytes.len() as u64;
        session.datagrams_sent += 1;
        self.outputs.push_back(EdgeOutput::Video {
            to,
            from: session.local,
            bytes,
        });
    }

    /// Answers a NACK of `peer` (cookie checked): the parts it names that the session still
    /// holds, while its allowance and its source's rate bucket last.
    fn retransmit(&mut self, now: Instant, peer: Peer, nack: Nack) {
        if !self
            .sessions
            .get(&peer.addr)
            .is_some_and(|s| s.stream == nack.stream)
        {
            self.counters.nack_unknown_session += 1;
            return;
        }
        let Some(mut session) = self.sessions.remove(&peer.addr) else {
            return;
        };
        let part_len = self.part_len();
        let mut missed: Vec<u64> = Vec::new();
        'holes: for hole in &nack.holes {
            let Some(chunk) = session
                .sent
                .iter()
                .rev()
                .find(|c| c.epoch == nack.epoch && c.seq == hole.seq)
                .cloned()
            else {
                self.counters.retransmit_not_buffered += 1;
                // Sent something newer of this epoch, and not this: it will never come.
                let passed = session
                    .sent
                    .iter()
                    .any(|c| c.epoch == nack.epoch && c.seq > hole.seq);
                if passed && missed.last() != Some(&hole.seq) {
                    missed.push(hole.seq);
                }
                continue;
            };
            let parts = chunk.payload.len().div_ceil(part_len);
            let last = usize::from(hole.last).min(parts.saturating_sub(1));
            for part in usize::from(hole.first)..=last {
                let start = part * part_len;
                let end = (start + part_len).min(chunk.payload.len());
                let size = VIDEO_HEADER_LEN + (end - start);
                if session.retransmit_allowance < size as f64 {
                    self.counters.retransmit_over_allowance += 1;
                    break 'holes;
                }
                if !matches!(self.take_token(now, peer.addr.ip()), Token::Taken) {
                    self.counters.retransmit_rate_limited += 1;
                    break 'holes;
                }
                session.retransmit_allowance -= size as f64;
                let bytes = frame(
                    session.stream,
                    chunk.flags | VIDEO_FLAG_RETRANSMIT,
                    chunk.epoch,
                    chunk.seq,
                    part,
                    parts,
                    &chunk.payload[start..end],
                );
                self.counters.retransmit_datagrams += 1;
                self.counters.retransmit_bytes += bytes.len() as u64;
                self.push_video(peer.addr, &mut session, bytes);
            }
        }
        let stream = session.stream;
        self.sessions.insert(peer.addr, session);
        if !missed.is_empty() {
            self.counters.nack_missed_chunks += missed.len() as u64;
            let miss = NackMiss {
                stream,
                epoch: nack.epoch,
                seqs: missed,
            };
            self.control(peer, ClientMsg::NackMiss(miss));
        }
    }

    /// Start draining (see the module docs): every session is told to move elsewhere; the
    /// edge exits within `within`. Idempotent.
    pub fn start_drain(&mut self, now: Instant, within: Duration) {
        if self.draining.is_some() {
            return;
        }
        info!(
            sessions = self.sessions.len(),
            within_ms = within.as_millis() as u64,
            "edge draining: every client told to move to another edge"
        );
        self.draining = Some((now, now + within));
        self.send_drain_notices(now);
    }

    /// Whether the edge is draining.
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Draining, and no session left: no client depends on this edge any more.
    pub fn drained(&self) -> bool {
        self.draining.is_some() && self.sessions.is_empty()
    }

    fn send_drain_notices(&mut self, now: Instant) {
        let Some((next, until)) = &mut self.draining else {
            return;
        };
        *next = now + self.config.drain_notice_interval;
        let within_ms = until
            .saturating_duration_since(now)
            .as_millis()
            .min(u128::from(u32::MAX)) as u32;
        let notices: Vec<(Peer, DrainNotice)> = self
            .sessions
            .iter()
            .map(|(addr, s)| {
                let peer = Peer {
                    addr: *addr,
                    local: s.local,
                };
                let notice = DrainNotice {
                    cookie: s.cookie,
                    stream: s.stream,
                    within_ms,
                };
                (peer, notice)
            })
            .collect();
        for (peer, notice) in notices {
            self.counters.drain_notices_sent += 1;
            self.control(peer, ClientMsg::Drain(notice));
        }
    }

    /// Expires sessions whose lease ran out; while draining, repeats the notices.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.lease_until <= now)
            .map(|(a, _)| *a)
            .collect();
        for client in expired {
            self.close_session(client, CloseReason::Expired);
        }
        if self.draining.is_some_and(|(t, _)| now >= t) && !self.sessions.is_empty() {
            self.send_drain_notices(now);
        }
    }

    /// When [`EdgeService::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lease = self.sessions.values().map(|s| s.lease_until).min();
        let notice = self
            .draining
            .map(|(t, _)| t)
            .filter(|_| !self.sessions.is_empty());
        lease.into_iter().chain(notice).min()
    }

    pub fn poll_output(&mut self) -> Option<EdgeOutput> {
        self.outputs.pop_front()
    }
}

/// One framed video datagram: part `part` of `parts` of chunk `(epoch, seq)`. `parts` fits a
/// `u16`: [`EdgeService::handle_chunk`] drops chunks with more.
fn frame(
    stream: u32,
    flags: u8,
    epoch: u64,
    seq: u64,
    part: usize,
    parts: usize,
    piece: &[u8],
) -> Bytes {
    let mut buf = BytesMut::with_capacity(VIDEO_HEADER_LEN + piece.len());
    put_video_header(
        &mut buf,
        stream,
        flags,
        epoch,
        seq,
        u16::try_from(part).unwrap_or(u16::MAX),
        u16::try_from(parts).unwrap_or(u16::MAX),
    );
    buf.extend_from_slice(piece);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::{
        Keepalive, ListRequest, NackHole, Probe, VideoCancel, VideoData, VideoRequest,
        NACK_TO_LAST_PART,
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn config() -> EdgeConfig {
        EdgeConfig {
            cookie_secret: [7; 32],
            ..EdgeConfig::default()
        }
    }

    fn ts(n: usize, tag: u8) -> Bytes {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(0x47);
            v.extend(std::iter::repeat(tag).take(TS_PACKET_LEN - 1));
        }
        Bytes::from(v)
    }

    struct Harness {
        edge: EdgeService,
        now: Instant,
    }

    impl Harness {
        fn new() -> Harness {
            let now = Instant::now();
            let mut edge = EdgeService::new(config(), now);
            edge.set_videos(now, vec!["v1".into(), "v2".into()]);
            Harness { edge, now }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.edge.handle_timeout(self.now);
        }

        fn send(&mut self, from: SocketAddr, msg: ClientMsg) {
            self.edge
                .handle_datagram(self.now, from, None, msg.to_bytes().unwrap());
        }

        fn outputs(&mut self) -> Vec<EdgeOutput> {
            std::iter::from_fn(|| self.edge.poll_output()).collect()
        }

        fn control_to(&mut self, to: SocketAddr) -> Vec<ClientMsg> {
            self.outputs()
                .into_iter()
                .filter_map(|o| match o {
                    EdgeOutput::Control { to: t, bytes, .. } if t == to => {
                        Some(ClientMsg::decode(bytes).unwrap())
                    }
                    _ => None,
                })
                .collect()
        }

        fn cookie(&mut self, from: SocketAddr) -> u64 {
            self.send(from, ClientMsg::Probe(Probe { token: 1 }));
            match self.control_to(from).as_slice() {
                [ClientMsg::ProbeAck(a)] => a.cookie,
                other => panic!("{other:?}"),
            }
        }

        fn request(&mut self, from: SocketAddr, video: &str, stream: u32, flags: u8) {
            let cookie = self.cookie(from);
            self.send(
                from,
                ClientMsg::VideoRequest(VideoRequest {
                    cookie,
                    stream,
                    flags,
                    video: video.into(),
                }),
            );
        }

        fn chunk(&mut self, video: &str, seq: u64, keyframe: bool) {
            self.edge
                .handle_chunk(self.now, video, 1, seq, keyframe, ts(3, seq as u8));
        }
    }

    fn video_of(outputs: &[EdgeOutput], to: SocketAddr) -> Vec<VideoData> {
        outputs
            .iter()
            .filter_map(|o| match o {
                EdgeOutput::Video { to: t, bytes, .. } if *t == to => {
                    match ClientMsg::decode(bytes.clone()).unwrap() {
                        ClientMsg::VideoData(d) => Some(d),
                        other => panic!("{other:?}"),
                    }
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn probe_gets_an_ack_of_the_same_size_with_a_cookie() {
        let mut h = Harness::new();
        let c = addr("127.0.0.1:5000");
        let probe = ClientMsg::Probe(Probe { token: 99 }).to_bytes().unwrap();
        h.edge.handle_datagram(h.now, c, None, probe.clone());
        let out = h.outputs();
        let [EdgeOutput::Control { to, bytes, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(*to, c);
        assert_eq!(bytes.len(), probe.len());
        let ClientMsg::ProbeAck(ack) = ClientMsg::decode(bytes.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(ack.token, 99);
        assert_eq!(ack.cookie, h.edge.cookie_for(c, h.now));
        // Cookies are per address.
        assert_ne!(ack.cookie, h.edge.cookie_for(addr("127.0.0.1:5001"), h.now));
    }

    #[test]
    fn replies_and_video_leave_from_the_address_the_client_sent_to() {
        // A multi-homed edge: the client addressed 10.0.21.1 (not the address of the
        // interface its replies route out of); later it keeps its session alive through the
        // edge's other address.
        let mut h = Harness::new();
        let c = addr("10.0.22.5:7703");
        let first: IpAddr = "10.0.21.1".parse().unwrap();
        let second: IpAddr = "10.0.13.2".parse().unwrap();
        let msg = |m: ClientMsg| m.to_bytes().unwrap();
        h.edge.handle_datagram(
            h.now,
            c,
            Some(first),
            msg(ClientMsg::Probe(Probe { token: 5 })),
        );
        let cookie = h.edge.cookie_for(c, h.now);
        let request = ClientMsg::VideoRequest(VideoRequest {
            cookie,
            stream: 3,
            flags: 0,
            video: "v1".into(),
        });
        h.edge.handle_datagram(h.now, c, Some(first), msg(request));
        h.chunk("v1", 1, true);
        let out = h.outputs();
        let sources: Vec<(bool, Option<IpAddr>)> = out
            .iter()
            .filter_map(|o| match o {
                EdgeOutput::Control { to, from, .. } if *to == c => Some((false, *from)),
                EdgeOutput::Video { to, from, .. } if *to == c => Some((true, *from)),
                _ => None,
            })
            .collect();
        // ProbeAck, VideoOk, then the chunk's video datagram: all from `first`.
        assert_eq!(
            sources,
            vec![
                (false, Some(first)),
                (false, Some(first)),
                (true, Some(first))
            ]
        );
        let keepalive = ClientMsg::Keepalive(Keepalive { cookie, stream: 3 });
        h.edge
            .handle_datagram(h.now, c, Some(second), msg(keepalive));
        h.chunk("v1", 2, false);
        let out = h.outputs();
        let video_from: Vec<Option<IpAddr>> = out
            .iter()
            .filter_map(|o| match o {
                EdgeOutput::Video { to, from, .. } if *to == c => Some(*from),
                _ => None,
            })
            .collect();
        assert_eq!(video_from, vec![Some(second)]);
    }

    #[test]
    fn requests_without_a_valid_cookie_get_only_a_challenge() {
        let mut h = Harness::new();
        let victim = addr("10.0.0.9:5000");
        let attacker = addr("10.0.0.66:5000");
        h.send(attacker, ClientMsg::Probe(Probe { token: 1 }));
        let attacker_cookie = match h.control_to(attacker).as_slice() {
            [ClientMsg::ProbeAck(a)] => a.cookie,
            o => panic!("{o:?}"),
        };
        // A spoofed request "from" the victim with no cookie, or with the attacker's cookie.
        for cookie in [0, attacker_cookie] {
            h.send(
                victim,
                ClientMsg::VideoRequest(VideoRequest {
                    cookie,
                    stream: 1,
                    flags: 0,
                    video: "v1".into(),
                }),
            );
            let out = h.outputs();
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(matches!(
                &out[0],
                EdgeOutput::Control { to, bytes, .. } if *to == victim && bytes.len() == 9
            ));
        }
        h.chunk("v1", 0, true);
        assert!(video_of(&h.outputs(), victim).is_empty());
        assert_eq!(h.edge.counters().cookie_rejected, 2);
        assert_eq!(h.edge.sessions().count(), 0);
        // The list needs a cookie too.
        h.send(victim, ClientMsg::ListRequest(ListRequest { cookie: 5 }));
        assert!(matches!(
            h.control_to(victim).as_slice(),
            [ClientMsg::Challenge(_)]
        ));
    }

    #[test]
    fn cookies_survive_one_bucket_change_but_not_two() {
        let mut h = Harness::new();
        let c = addr("127.0.0.1:5000");
        let cookie = h.cookie(c);
        h.now += Duration::from_secs(12);
        h.send(c, ClientMsg::ListRequest(ListRequest { cookie }));
        assert!(
            matches!(h.control_to(c).as_slice(), [ClientMsg::ListReply(l)] if l.videos == ["v1", "v2"])
        );
        h.now += Duration::from_secs(10);
        h.send(c, ClientMsg::ListRequest(ListRequest { cookie }));
        assert!(matches!(
            h.control_to(c).as_slice(),
            [ClientMsg::Challenge(_)]
        ));
    }

    #[test]
    fn first_client_subscribes_last_one_unsubscribes() {
        let mut h = Harness::new();
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 1, 0);
        let out = h.outputs();
        assert!(out.contains(&EdgeOutput::Subscribe { video: "v1".into() }));
        assert!(out
            .iter()
            .any(|o| matches!(o, EdgeOutput::Control { bytes, .. }
            if matches!(ClientMsg::decode(bytes.clone()), Ok(ClientMsg::VideoOk(_))))));
        h.request(b, "v1", 1, 0);
        assert!(!h
            .outputs()
            .iter()
            .any(|o| matches!(o, EdgeOutput::Subscribe { .. })));
        let cookie = h.edge.cookie_for(a, h.now);
        h.send(a, ClientMsg::VideoCancel(VideoCancel { cookie, stream: 1 }));
        let out = h.outputs();
        assert!(!out
            .iter()
            .any(|o| matches!(o, EdgeOutput::Unsubscribe { .. })));
        assert!(out.iter().any(|o| matches!(
            o,
            EdgeOutput::SessionClosed {
                reason: CloseReason::Cancelled,
                ..
            }
        )));
        let cookie = h.edge.cookie_for(b, h.now);
        h.send(b, ClientMsg::VideoCancel(VideoCancel { cookie, stream: 1 }));
        assert!(h
            .outputs()
            .contains(&EdgeOutput::Unsubscribe { video: "v1".into() }));
        assert_eq!(h.edge.subscribed().count(), 0);
    }

    #[test]
    fn silent_client_is_expired_by_lease_and_keepalives_renew_it() {
        let mut h = Harness::new();
        let c = addr("127.0.0.1:1");
        h.request(c, "v1", 3, 0);
        h.outputs();
        assert_eq!(h.edge.poll_timeout(), Some(h.now + Duration::from_secs(3)));
        for _ in 0..5 {
            h.advance(Duration::from_secs(2));
            let cookie = h.edge.cookie_for(c, h.now);
            h.send(c, ClientMsg::Keepalive(Keepalive { cookie, stream: 3 }));
        }
        assert_eq!(h.edge.sessions().count(), 1);
        // A keepalive with a bad cookie does not renew.
        h.advance(Duration::from_secs(2));
        h.send(
            c,
            ClientMsg::Keepalive(Keepalive {
                cookie: 1,
                stream: 3,
            }),
        );
        h.outputs();
        h.advance(Duration::from_millis(1001));
        let out = h.outputs();
        assert!(
            out.contains(&EdgeOutput::Unsubscribe { video: "v1".into() }),
            "{out:?}"
        );
        assert!(out.iter().any(|o| matches!(
            o,
            EdgeOutput::SessionClosed {
                reason: CloseReason::Expired,
                ..
            }
        )));
        assert_eq!(h.edge.counters().sessions_expired, 1);
        assert_eq!(h.edge.poll_timeout(), None);
        // Its next keepalive learns the session is gone.
        let cookie = h.edge.cookie_for(c, h.now);
        h.send(c, ClientMsg::Keepalive(Keepalive { cookie, stream: 3 }));
        assert!(matches!(
            h.control_to(c).as_slice(),
            [ClientMsg::Error(ErrorMsg {
                code: ErrorCode::UnknownStream,
                stream: 3
            })]
        ));
    }

    #[test]
    fn unknown_video_and_busy_are_refused() {
        let mut h = Harness::new();
        h.edge.config.max_sessions = 1;
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "nope", 1, 0);
        assert!(matches!(
            h.control_to(a).as_slice(),
            [ClientMsg::Error(ErrorMsg {
                code: ErrorCode::UnknownVideo,
                stream: 1
            })]
        ));
        h.request(a, "v1", 1, 0);
        h.outputs();
        h.request(b, "v2", 1, 0);
        assert!(matches!(
            h.control_to(b).as_slice(),
            [ClientMsg::Error(ErrorMsg {
                code: ErrorCode::Busy,
                ..
            })]
        ));
        assert_eq!(h.edge.counters().busy, 1);
        assert_eq!(h.edge.counters().unknown_video, 1);
    }

    #[test]
    fn rate_limit_drops_a_flood_from_one_source_only() {
        let mut h = Harness::new();
        h.edge.config.rate_burst = 10.0;
        h.edge.config.rate_per_sec = 10.0;
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        for i in 0..50 {
            h.send(a, ClientMsg::Probe(Probe { token: i }));
        }
        assert_eq!(h.control_to(a).len(), 10);
        assert_eq!(h.edge.counters().rate_limited, 40);
        h.send(b, ClientMsg::Probe(Probe { token: 1 }));
        assert_eq!(h.control_to(b).len(), 1);
        // Tokens come back with time.
        h.now += Duration::from_millis(500);
        for i in 0..10 {
            h.send(a, ClientMsg::Probe(Probe { token: i }));
        }
        assert_eq!(h.control_to(a).len(), 5);
    }

    #[test]
    fn rate_table_is_bounded() {
        let mut h = Harness::new();
        h.edge.config.max_sources = 4;
        h.edge.config.rate_burst = 2.0;
        for i in 1..=4u8 {
            let a = SocketAddr::new(IpAddr::from([10, 0, 0, i]), 1);
            h.send(a, ClientMsg::Probe(Probe { token: 1 }));
        }
        let fifth = addr("10.0.0.5:1");
        h.send(fifth, ClientMsg::Probe(Probe { token: 1 }));
        assert_eq!(h.edge.counters().rate_table_full, 1);
        // Once the others are idle (bucket full again), there is room.
        h.now += Duration::from_secs(1);
        h.send(fifth, ClientMsg::Probe(Probe { token: 1 }));
        assert_eq!(h.control_to(fifth).len(), 1);
    }

    #[test]
    fn malformed_datagrams_are_counted_by_reason_and_dropped() {
        let mut h = Harness::new();
        let c = addr("127.0.0.1:1");
        for bad in [
            &[][..],
            &[0x42][..],
            &[0x47, 1, 2][..],
            &[0x01, 0, 0][..],
            &[0x0a, 9, 0, 0, 0, 1][..],
            &[0x08, 0, 0, 0, 0, 0, 0, 0, 0, 9][..],
        ] {
            h.edge
                .handle_datagram(h.now, c, None, Bytes::copy_from_slice(bad));
        }
        // Well-formed but only an edge sends it.
        h.send(c, ClientMsg::Challenge(Challenge { cookie: 1 }));
        assert!(h.outputs().is_empty());
        let k = h.edge.counters();
        assert_eq!(k.malformed_truncated, 2);
        assert_eq!(k.malformed_unknown_tag, 2);
        assert_eq!(k.malformed_bad_value, 1);
        assert_eq!(k.malformed_trailing, 1);
        assert_eq!(k.malformed(), 6);
        assert_eq!(k.unexpected_kind, 1);
    }

    proptest::proptest! {
        #[test]
        fn prop_arbitrary_datagrams_never_panic(
            datagrams in proptest::collection::vec(
                (proptest::prelude::any::<u8>(),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)), 0..30),
        ) {
            let mut h = Harness::new();
            let c = addr("127.0.0.1:1");
            h.request(c, "v1", 1, 0);
            for (tag, body) in datagrams {
                let mut d = vec![tag % 12];
                d.extend_from_slice(&body);
                h.edge.handle_datagram(h.now, c, None, Bytes::from(d));
            }
            h.chunk("v1", 1, true);
            h.advance(Duration::from_secs(5));
            h.outputs();
        }
    }

    #[test]
    fn new_client_waits_for_a_keyframe_when_there_is_no_cache() {
        let mut h = Harness::new();
        let c = addr("127.0.0.1:1");
        h.request(c, "v1", 1, 0);
        h.outputs();
        h.chunk("v1", 10, false);
        h.chunk("v1", 11, false);
        assert!(video_of(&h.outputs(), c).is_empty());
        assert_eq!(h.edge.counters().chunks_held_for_keyframe, 2);
        h.chunk("v1", 12, true);
        h.chunk("v1", 13, false);
        let seqs: Vec<u64> = video_of(&h.outputs(), c).iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [12, 13]);
    }

    #[test]
    fn keyframe_wait_is_bounded_and_continue_skips_it() {
        let mut h = Harness::new();
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 1, 0);
        h.request(b, "v1", 1, REQUEST_FLAG_CONTINUE);
        h.outputs();
        h.chunk("v1", 1, false);
        let out = h.outputs();
        assert!(video_of(&out, a).is_empty());
        assert_eq!(video_of(&out, b).len(), 1);
        h.now += Duration::from_secs(4);
        h.chunk("v1", 2, false);
        assert_eq!(video_of(&h.outputs(), a).len(), 1);
    }

    #[test]
    fn gop_cache_gives_a_joining_client_the_last_keyframe_first() {
        let mut h = Harness::new();
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 1, 0);
        h.outputs();
        h.chunk("v1", 0, false); // before any keyframe: not cached
        h.chunk("v1", 1, true);
        h.chunk("v1", 2, false);
        h.chunk("v1", 3, true); // new GOP: cache restarts here
        h.chunk("v1", 4, false);
        h.outputs();
        assert_eq!(h.edge.cache_bytes("v1"), 2 * 3 * TS_PACKET_LEN);
        h.request(b, "v1", 9, 0);
        let got = video_of(&h.outputs(), b);
        let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert!(got[0].is_keyframe());
        assert!(got
            .iter()
            .all(|d| d.flags & VIDEO_FLAG_CACHED != 0 && d.stream == 9));
        // Then live chunks follow in order, not flagged as cached.
        h.chunk("v1", 5, false);
        let live = video_of(&h.outputs(), b);
        assert_eq!((live[0].seq, live[0].flags), (5, 0));
        assert_eq!(h.edge.counters().cache_replays, 1);
    }

    #[test]
    fn gop_cache_bytes_zero_turns_the_cache_off() {
        let mut h = Harness::new();
        h.edge.config.gop_cache_bytes = 0;
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 1, 0);
        h.chunk("v1", 1, true);
        h.chunk("v1", 2, false);
        h.outputs();
        assert_eq!(h.edge.cache_bytes("v1"), 0);
        // A joining client gets no replay: it waits for the next keyframe.
        h.request(b, "v1", 1, 0);
        assert!(video_of(&h.outputs(), b).is_empty());
        h.chunk("v1", 3, false);
        assert!(video_of(&h.outputs(), b).is_empty());
        h.chunk("v1", 4, true);
        let seqs: Vec<u64> = video_of(&h.outputs(), b).iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [4]);
        let k = h.edge.counters();
        assert_eq!((k.cache_replays, k.cache_overflows), (0, 0));
    }

    #[test]
    fn gop_cache_is_bounded_and_reset_by_a_new_epoch() {
        let mut h = Harness::new();
        h.edge.config.gop_cache_bytes = 5 * 3 * TS_PACKET_LEN;
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 1, 0);
        h.chunk("v1", 1, true);
        for s in 2..=5 {
            h.chunk("v1", s, false);
        }
        assert_eq!(h.edge.cache_bytes("v1"), 5 * 3 * TS_PACKET_LEN);
        h.chunk("v1", 6, false);
        assert_eq!(h.edge.cache_bytes("v1"), 0);
        assert_eq!(h.edge.counters().cache_overflows, 1);
        h.chunk("v1", 7, false);
        assert_eq!(h.edge.cache_bytes("v1"), 0);
        h.chunk("v1", 8, true);
        assert_eq!(h.edge.cache_bytes("v1"), 3 * TS_PACKET_LEN);
        // Another source (epoch) without a keyframe: the old GOP is useless.
        h.edge.handle_chunk(h.now, "v1", 2, 0, false, ts(3, 0));
        assert_eq!(h.edge.cache_bytes("v1"), 0);
    }

    #[test]
    fn big_chunks_are_split_at_packet_boundaries_and_bad_ones_dropped() {
        let mut h = Harness::new();
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 1, REQUEST_FLAG_CONTINUE);
        h.outputs();
        // 16 packets plus 10 stray bytes: 7 + 7 + 2 packets, the stray bytes cut.
        let mut big = ts(16, 1).to_vec();
        big.extend_from_slice(&[0; 10]);
        h.edge
            .handle_chunk(h.now, "v1", 1, 5, true, Bytes::from(big));
        let got = video_of(&h.outputs(), a);
        let shape: Vec<(u16, u16, usize)> = got
            .iter()
            .map(|d| (d.part, d.parts, d.payload.len() / TS_PACKET_LEN))
            .collect();
        assert_eq!(shape, [(0, 3, 7), (1, 3, 7), (2, 3, 2)]);
        assert!(got.iter().all(|d| d.is_keyframe() && d.seq == 5));
        h.edge
            .handle_chunk(h.now, "v1", 1, 6, false, Bytes::from_static(&[0x47; 100]));
        assert!(h.outputs().is_empty());
        assert_eq!(h.edge.counters().chunks_bad_payload, 1);
        h.edge.handle_chunk(h.now, "v2", 1, 6, false, ts(1, 0));
        assert_eq!(h.edge.counters().chunks_unsubscribed, 1);
    }

    #[test]
    fn switching_video_from_one_address_replaces_the_session() {
        let mut h = Harness::new();
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 1, 0);
        h.outputs();
        // A retransmitted request changes nothing.
        h.request(a, "v1", 1, 0);
        let out = h.outputs();
        assert!(!out
            .iter()
            .any(|o| matches!(o, EdgeOutput::SessionOpened { .. })));
        h.request(a, "v2", 2, 0);
        let out = h.outputs();
        let kinds: Vec<&str> = out
            .iter()
            .map(|o| match o {
                EdgeOutput::SessionClosed { .. } => "closed",
                EdgeOutput::Unsubscribe { .. } => "unsub",
                EdgeOutput::Subscribe { .. } => "sub",
                EdgeOutput::SessionOpened { .. } => "opened",
                EdgeOutput::Control { .. } => "control",
                EdgeOutput::Video { .. } => "video",
            })
            .collect();
        assert_eq!(kinds, ["closed", "unsub", "control", "opened", "sub"]);
        assert_eq!(h.edge.counters().sessions_replaced, 1);
    }

    #[test]
    fn draining_tells_each_session_with_its_cookie_refuses_new_ones_and_ends_when_all_left() {
        let mut h = Harness::new();
        let (a, b, late) = (
            addr("127.0.0.1:1"),
            addr("127.0.0.2:1"),
            addr("127.0.0.3:1"),
        );
        h.request(a, "v1", 11, 0);
        h.request(b, "v1", 22, 0);
        h.outputs();
        // b's keepalive a bucket later: its notice carries the newer cookie it echoed.
        h.now += Duration::from_secs(10);
        let b_cookie = h.cookie(b);
        h.send(
            b,
            ClientMsg::Keepalive(Keepalive {
                cookie: b_cookie,
                stream: 22,
            }),
        );
        h.outputs();
        let a_cookie = h.edge.cookie_in_bucket(a, 0);
        assert!(!h.edge.draining() && !h.edge.drained());

        h.edge.start_drain(h.now, Duration::from_secs(2));
        h.edge.start_drain(h.now, Duration::from_secs(2));
        assert_eq!(
            h.control_to(a),
            [ClientMsg::Drain(DrainNotice {
                cookie: a_cookie,
                stream: 11,
                within_ms: 2000,
            })]
        );
        h.edge.start_drain(h.now, Duration::from_secs(2));
        assert!(h.outputs().is_empty(), "start_drain is idempotent");
        assert_eq!(h.edge.counters().drain_notices_sent, 2);
        // Still fed while it stays.
        h.chunk("v1", 1, true);
        assert_eq!(video_of(&h.outputs(), b).len(), 1);
        // A new client is refused (busy); a retransmitted request of a session is not.
        h.request(late, "v1", 33, 0);
        assert!(matches!(
            h.control_to(late).as_slice(),
            [ClientMsg::Error(ErrorMsg {
                code: ErrorCode::Busy,
                stream: 33
            })]
        ));
        h.request(a, "v1", 11, 0);
        assert!(matches!(
            h.control_to(a).as_slice(),
            [ClientMsg::VideoOk(_)]
        ));
        assert_eq!(h.edge.counters().drain_refused, 1);
        // The notices go again at the interval while sessions stay.
        let interval = config().drain_notice_interval;
        assert_eq!(h.edge.poll_timeout(), Some(h.now + interval));
        h.advance(interval);
        let again = h.control_to(b);
        assert_eq!(
            again,
            [ClientMsg::Drain(DrainNotice {
                cookie: b_cookie,
                stream: 22,
                within_ms: 1750,
            })]
        );
        // Both clients move away (cancel): drained, and the video is unsubscribed.
        for (c, stream) in [(a, 11), (b, 22)] {
            let cookie = h.edge.cookie_for(c, h.now);
            h.send(c, ClientMsg::VideoCancel(VideoCancel { cookie, stream }));
        }
        assert!(h
            .outputs()
            .contains(&EdgeOutput::Unsubscribe { video: "v1".into() }));
        assert!(h.edge.drained());
        assert_eq!(h.edge.poll_timeout(), None, "no notice timer once drained");
    }

    fn nack(cookie: u64, stream: u32, epoch: u64, holes: Vec<NackHole>) -> ClientMsg {
        ClientMsg::Nack(Nack {
            cookie,
            stream,
            epoch,
            holes,
        })
    }

    #[test]
    fn a_nack_gets_the_parts_it_names_again_flagged_from_the_session_buffer() {
        let mut h = Harness::new();
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 7, REQUEST_FLAG_CONTINUE);
        for seq in 1..=5 {
            h.chunk("v1", seq, seq == 1);
        }
        // A chunk of three parts (7 + 7 + 2 packets).
        h.edge.handle_chunk(h.now, "v1", 1, 6, false, ts(16, 6));
        h.outputs();
        let cookie = h.cookie(a);
        let holes = vec![NackHole::whole(2), NackHole::whole(4), NackHole::whole(99)];
        h.send(a, nack(cookie, 7, 1, holes));
        let again = video_of(&h.outputs(), a);
        let got: Vec<(u64, u16)> = again.iter().map(|d| (d.seq, d.part)).collect();
        assert_eq!(got, [(2, 0), (4, 0)]);
        assert!(again
            .iter()
            .all(|d| d.stream == 7 && d.flags & VIDEO_FLAG_RETRANSMIT != 0));
        assert_eq!(again[0].payload, ts(3, 2));
        // Parts of a chunk: a range, and "to the last part".
        let some = NackHole {
            seq: 6,
            first: 1,
            last: 1,
        };
        let tail = NackHole {
            seq: 6,
            first: 2,
            last: NACK_TO_LAST_PART,
        };
        h.send(a, nack(cookie, 7, 1, vec![some, tail]));
        let parts: Vec<(u16, u16, usize)> = video_of(&h.outputs(), a)
            .iter()
            .map(|d| (d.part, d.parts, d.payload.len() / TS_PACKET_LEN))
            .collect();
        assert_eq!(parts, [(1, 3, 7), (2, 3, 2)]);
        // Another epoch's chunk of the same number is not this one.
        h.send(a, nack(cookie, 7, 2, vec![NackHole::whole(3)]));
        assert!(video_of(&h.outputs(), a).is_empty());
        let k = h.edge.counters();
        assert_eq!(k.nacks, 3);
        assert_eq!(k.retransmit_datagrams, 4);
        assert_eq!(k.retransmit_not_buffered, 2);
        assert_eq!(
            k.retransmit_bytes,
            2 * (VIDEO_HEADER_LEN + 3 * TS_PACKET_LEN) as u64
                + (VIDEO_HEADER_LEN * 2 + 9 * TS_PACKET_LEN) as u64
        );
    }

    #[test]
    fn a_nack_without_a_valid_cookie_or_without_a_session_of_its_stream_gets_no_video() {
        let mut h = Harness::new();
        let (a, other) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 7, REQUEST_FLAG_CONTINUE);
        h.chunk("v1", 1, true);
        h.outputs();
        // A forged NACK (no cookie of a's): a challenge no larger than it, and no video.
        let forged = nack(0xdead, 7, 1, vec![NackHole::whole(1)]);
        let forged_len = forged.to_bytes().unwrap().len();
        h.send(a, forged);
        let out = h.outputs();
        assert!(video_of(&out, a).is_empty());
        let [EdgeOutput::Control { bytes, .. }] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert!(matches!(
            ClientMsg::decode(bytes.clone()),
            Ok(ClientMsg::Challenge(_))
        ));
        assert!(bytes.len() <= forged_len);
        // A proven address without a session, and a's address with another stream.
        let cookie = h.cookie(other);
        h.send(other, nack(cookie, 7, 1, vec![NackHole::whole(1)]));
        let cookie = h.cookie(a);
        h.send(a, nack(cookie, 8, 1, vec![NackHole::whole(1)]));
        assert!(h
            .outputs()
            .iter()
            .all(|o| !matches!(o, EdgeOutput::Video { .. })));
        let k = h.edge.counters();
        assert_eq!(
            (k.nacks, k.cookie_rejected, k.nack_unknown_session),
            (3, 1, 2)
        );
        assert_eq!(k.retransmit_datagrams, 0);
        // The session is untouched: the right NACK still works.
        h.send(a, nack(cookie, 7, 1, vec![NackHole::whole(1)]));
        assert_eq!(video_of(&h.outputs(), a).len(), 1);
    }

    #[test]
    fn retransmissions_spend_the_sources_rate_bucket() {
        let mut h = Harness::new();
        h.edge.config.rate_burst = 10.0;
        h.edge.config.rate_per_sec = 0.0;
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 7, REQUEST_FLAG_CONTINUE); // probe + request: 2 tokens
        for seq in 0..20 {
            h.chunk("v1", seq, seq == 0);
        }
        h.outputs();
        let cookie = h.edge.cookie_for(a, h.now);
        // The NACK takes one token, leaving 7 for retransmissions.
        h.send(
            a,
            nack(cookie, 7, 1, (0..20).map(NackHole::whole).collect()),
        );
        assert_eq!(video_of(&h.outputs(), a).len(), 7);
        let k = h.edge.counters();
        assert_eq!((k.retransmit_datagrams, k.retransmit_rate_limited), (7, 1));
        // Nothing left: the next NACK is not even read.
        h.send(a, nack(cookie, 7, 1, vec![NackHole::whole(0)]));
        assert!(h.outputs().is_empty());
        assert_eq!(h.edge.counters().rate_limited, 1);
    }

    #[test]
    fn retransmissions_are_bounded_by_the_sessions_allowance_which_grows_with_its_stream() {
        let mut h = Harness::new();
        let size = (VIDEO_HEADER_LEN + 3 * TS_PACKET_LEN) as f64;
        h.edge.config.retransmit_burst_bytes = 3 * size as usize;
        h.edge.config.retransmit_ratio = 0.5;
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 7, REQUEST_FLAG_CONTINUE);
        for seq in 0..10 {
            h.chunk("v1", seq, seq == 0);
        }
        h.outputs();
        let cookie = h.cookie(a);
        let all = || (0..10).map(NackHole::whole).collect::<Vec<_>>();
        h.send(a, nack(cookie, 7, 1, all()));
        assert_eq!(video_of(&h.outputs(), a).len(), 3, "one burst");
        h.send(a, nack(cookie, 7, 1, all()));
        assert!(video_of(&h.outputs(), a).is_empty());
        // Two more chunks of live video earn half their bytes: one more datagram.
        h.chunk("v1", 10, false);
        h.chunk("v1", 11, false);
        h.outputs();
        h.send(a, nack(cookie, 7, 1, all()));
        assert_eq!(video_of(&h.outputs(), a).len(), 1);
        let k = h.edge.counters();
        assert_eq!(
            (k.retransmit_datagrams, k.retransmit_over_allowance),
            (4, 3)
        );
        // Whatever it NACKs, a session is sent at most its stream x 1.5 plus one burst.
        let live = (k.video_bytes_out - k.retransmit_bytes) as f64;
        assert!(k.retransmit_bytes as f64 <= 0.5 * live + 3.0 * size);
    }

    #[test]
    fn the_retransmit_buffer_keeps_only_the_newest_chunks_of_each_session() {
        let mut h = Harness::new();
        h.edge.config.retransmit_chunks = 4;
        let (a, b) = (addr("127.0.0.1:1"), addr("127.0.0.2:1"));
        h.request(a, "v1", 1, REQUEST_FLAG_CONTINUE);
        for seq in 0..10 {
            h.chunk("v1", seq, seq == 0);
        }
        // b joins late: its buffer holds only what it was sent (the GOP cache replay, then
        // chunk 10).
        h.request(b, "v1", 2, 0);
        h.chunk("v1", 10, false);
        h.outputs();
        let cookie = h.cookie(a);
        h.send(
            a,
            nack(cookie, 1, 1, (0..11).map(NackHole::whole).collect()),
        );
        let seqs: Vec<u64> = video_of(&h.outputs(), a).iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
        let cookie = h.cookie(b);
        h.send(
            b,
            nack(cookie, 2, 1, (0..11).map(NackHole::whole).collect()),
        );
        let again = video_of(&h.outputs(), b);
        let seqs: Vec<u64> = again.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
        // Sent again as what they are (not as a cache replay).
        assert!(again.iter().all(|d| d.flags & VIDEO_FLAG_CACHED == 0));
        assert_eq!(h.edge.counters().retransmit_not_buffered, 14);
        // No buffer at all: NACKs are counted and go unanswered.
        h.edge.config.retransmit_chunks = 0;
        let c = addr("127.0.0.3:1");
        h.request(c, "v1", 3, REQUEST_FLAG_CONTINUE);
        h.chunk("v1", 11, false);
        h.outputs();
        let cookie = h.cookie(c);
        h.send(c, nack(cookie, 3, 1, vec![NackHole::whole(11)]));
        assert!(video_of(&h.outputs(), c).is_empty());
    }

    #[test]
    fn chunks_a_session_will_never_get_are_named_back_in_a_nack_miss() {
        let mut h = Harness::new();
        h.edge.config.retransmit_chunks = 4;
        let a = addr("127.0.0.1:1");
        h.request(a, "v1", 1, REQUEST_FLAG_CONTINUE);
        // Chunk 3 never reached this edge (a hole upstream).
        for seq in [0, 1, 2, 4, 5, 6, 7] {
            h.chunk("v1", seq, seq == 0);
        }
        h.outputs();
        let cookie = h.cookie(a);
        let holes = [1, 3, 5, 9].map(NackHole::whole).to_vec();
        let ask = nack(cookie, 1, 1, holes);
        let ask_len = ask.to_bytes().unwrap().len();
        h.send(a, ask);
        let out = h.outputs();
        // 5 is held: sent again. 1 is no longer held and 3 never was: named back. 9 has not
        // been sent yet: nothing is said of it.
        let seqs: Vec<u64> = video_of(&out, a).iter().map(|d| d.seq).collect();
        assert_eq!(seqs, [5]);
        let control: Vec<&Bytes> = out
            .iter()
            .filter_map(|o| match o {
                EdgeOutput::Control { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(control.len(), 1);
        assert!(control[0].len() <= ask_len, "no larger than the NACK");
        assert_eq!(
            ClientMsg::decode(control[0].clone()),
            Ok(ClientMsg::NackMiss(NackMiss {
                stream: 1,
                epoch: 1,
                seqs: vec![1, 3]
            }))
        );
        assert_eq!(h.edge.counters().nack_missed_chunks, 2);
    }
}
