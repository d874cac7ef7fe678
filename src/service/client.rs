//! The client side of the edge ↔ client service: edge measurement and choice, the video
//! session, edge switching, and the in-order, duplicate-free stream handed to the player.
//!
//! [`ClientService`] owns every decision a client makes. It probes each of its edges
//! continuously (round-trip time as an EWMA, loss over a window of recent probes), picks the
//! best edge (`auto`) or the user's, asks for the video list and for a video (echoing the
//! edge's cookie), keeps the session alive, and moves the session to another edge when its edge
//! goes silent (no data and no probe acks for `dead_after`) or stays worse than another by a
//! margin for a hold time (hysteresis). A move is make-before-break: the old edge keeps feeding
//! the player until the new one delivers, then it is cancelled.
//!
//! The stream is its own heartbeat: the client follows the peak gap between the video
//! datagrams of its edge (decaying slowly). A silence of twice that peak (bounded by
//! `suspect_floor` and `dead_after`) first *doubts* the edge: it is probed at once; an answer
//! within `suspect_probe_wait` plus its round trip shows it alive (it then gets
//! `suspect_mend` for a stall above it), and its video coming back ends the doubt. Unanswered,
//! the edge is *suspected*: the next-best edge is asked
//! for the stream while the old one is still listened to. The first datagram of the new edge
//! that the player has not had (framed: newer than the last delivered; raw TS: any) completes
//! the move; if the old edge speaks first, the suspicion is cleared and the new edge let go,
//! with no switch. A stall of the source itself therefore never moves the client (no edge
//! brings anything newer), and a slow machine only raises the peak it measures. The silence
//! is also stretched by twice how late the client's own timers have fired lately (the shared
//! [`Lateness`], at most 500 ms): on a saturated host the edge waits for the CPU too.
//!
//! What reaches the player: framed datagrams are ordered by `(epoch, seq, part)`. A datagram
//! at or behind the last one delivered is dropped (duplicate or late), and an epoch left behind
//! is not returned to while the new one flows (only a sustained run of it, when the overlay went
//! back to that source, brings it back), so across any number of switches the player sees each
//! TS packet at most once and in order; holes are counted as gaps. Raw-TS datagrams (an edge relaying through
//! ffmpeg) carry no numbers: they are taken only from the session's edge (or, until it
//! delivers, the edge being left), so a switch can repeat or skip a little video there. The
//! new edge's child often starts behind the player (its input began with a GOP cache replayed
//! by the overlay), so after a switch each PID's PES are dropped, packet by packet, until one
//! has a timestamp (DTS, else PTS) newer than the newest handed over on that PID
//! (`raw_trimmed_packets`); the children of every edge copy the timestamps (`-copyts`), so
//! they compare. What still repeats is measured from the TS packets' PCRs and counted
//! (`raw_repeated_ms`).
//!
//! Loss on the last mile is recovered within a latency budget, as SRT and RIST do it
//! ([`ClientSettings::latency`]): a framed datagram of the current epoch that arrives ahead of
//! a hole is held ([`Recovery`]) instead of handed over, and the edge is asked for the missing
//! parts at once in a NACK, and again every round trip (at least `nack_floor`) while they are
//! missing. When the hole is filled, the held datagrams follow it in order; when the first
//! hole has waited the budget, it is given up (counted unrecovered) and the held datagrams go
//! to the player in order past it. Without loss nothing is held, so recovery adds no delay;
//! with loss it adds at most the budget. The budget is `latency_rtt_factor` × the edge's RTT,
//! at least `latency_floor`, unless set; zero turns recovery off (holes are handed over at
//! once, the rule before). Raw TS carries no numbers: nothing is recovered there.
//!
//! An edge that is shutting down says so (a drain notice, accepted only from the session's
//! edge and only with the session's stream and a cookie the client echoed to that edge): the
//! client moves to the next-best edge at once, make-before-break like any move (the leaving
//! edge keeps feeding until the new one delivers), and avoids the leaving edge, unless no
//! other is alive, until the time the notice gives for its exit has passed or it has missed a
//! probe (it exited: what answers next has restarted). With no other edge it stays until the
//! edge goes. Repeated notices change nothing and are counted; so are ignored ones.
//!
//! An edge is known by the address the client sends to, or by another address it proved to
//! answer from (a probe ack echoing a keyed token: NAT, or an edge without source-address
//! control on a multi-homed host), never by a claim alone.
//!
//! Inputs carry `now`; outputs ([`ClientOutput`]) are polled. No clock, no socket, no panics on
//! network input.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::recovery::{Held, Recovery};
use crate::lateness::Lateness;
use crate::wire::client::{
    is_raw_ts, ClientMsg, DrainNotice, ErrorCode, Keepalive, ListRequest, Nack, NackMiss, Probe,
    VideoCancel, VideoData, VideoRequest, REQUEST_FLAG_CONTINUE, TS_PACKET_LEN,
    VIDEO_FLAG_RETRANSMIT,
};

/// How many recent datagram positions are remembered to tell duplicates from late arrivals.
const RECENT_KEYS: usize = 8192;
/// Most datagrams held back during a switch.
const MAX_HELD: usize = 2048;
/// Datagrams of an abandoned epoch in a row, with nothing delivered in between, after which
/// that epoch is taken back whichever edge brings it (about two seconds of video).
const STALE_EPOCH_ADOPT: u32 = 64;
/// How many abandoned epochs are remembered (not returned to while another one flows).
const RETIRED_EPOCHS: usize = 16;
/// A drain notice's exit time is believed this far ahead at most (`--drain-ms` goes to 60 s).
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(60);
/// Default of [`ClientSettings::suspect_floor`], in milliseconds (`--edge-suspect-ms`).
pub const DEFAULT_SUSPECT_FLOOR_MS: u64 = 60;
/// PCR ticks per millisecond (27 MHz clock).
const PCR_PER_MS: u64 = 27_000;
/// A PCR step back larger than this across a switch is a new timeline (a restarted source),
/// not video repeated.
const PCR_REPEAT_LIMIT: u64 = 10_000 * PCR_PER_MS;
/// A PES timestamp this far (90 kHz) or less behind the newest played on its PID is video
/// played already; further back it is a new timeline (as [`PCR_REPEAT_LIMIT`]).
const PES_REPEAT_LIMIT: u64 = 10 * 90_000;
/// PES timestamps are 33-bit.
const PES_TS_MODULUS: u64 = 1 << 33;
/// Most datagrams held behind holes for recovery (about ten seconds of a 1 Mbit/s stream);
/// beyond, the first hole is given up at once.
const MAX_RECOVERY_HELD: usize = 1024;
/// A datagram this many chunks or more ahead of the last one handed over is a jump (an outage,
/// not a loss): nothing is waited for.
const MAX_RECOVERY_SPAN: u64 = 512;
/// Default of [`ClientSettings::latency_floor`], in milliseconds (SRT's default latency).
pub const DEFAULT_LATENCY_FLOOR_MS: u64 = 120;

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Interval between probes to each edge.
    pub probe_interval: Duration,
    /// A probe unanswered this long counts as lost.
    pub probe_timeout: Duration,
    /// Loss is measured over this many recent probes.
    pub loss_window: usize,
    /// Weight of a new RTT sample in the EWMA (the rest stays on the old value).
    pub rtt_alpha: f64,
    /// An edge with no probe ack and no data for this long is dead.
    pub dead_after: Duration,
    /// Interval between keepalives of a session.
    pub keepalive_interval: Duration,
    /// Interval between retransmissions of an unanswered request.
    pub request_retry: Duration,
    /// Added to an edge's score at 100 % loss (proportionally below).
    pub loss_penalty: Duration,
    /// Another edge must score below `switch_ratio` × the current edge's score...
    pub switch_ratio: f64,
    /// ...and at least this much below it...
    pub switch_min_gain: Duration,
    /// ...for this long, before a degradation switch.
    pub switch_hold: Duration,
    /// No degradation switch sooner than this after the previous choice.
    pub min_dwell: Duration,
    /// `auto` waits this long after the first edge answers for the others, unless all answer.
    pub settle: Duration,
    /// No edge answering within this long is reported ([`ClientEvent::NoEdge`]).
    pub no_edge_timeout: Duration,
    /// An edge that says "unknown video" is asked again for this long (it may still be
    /// learning routes) before the error is reported.
    pub unknown_video_grace: Duration,
    /// A busy edge is avoided for this long.
    pub busy_backoff: Duration,
    /// The edge being left is cancelled after this long even if the new one has not delivered.
    pub drain_limit: Duration,
    /// During a make-before-break switch, datagrams of the new edge that are ahead of the old
    /// edge wait at most this long for the old edge to catch up.
    pub reorder_hold: Duration,
    /// An abandoned epoch that the session's own edge brings for this long, with nothing of
    /// the current epoch in between, is taken back: the overlay went back to that source (its
    /// other server's stream died). Longer than a burst of one chunk's datagrams, shorter
    /// than the gap between chunks, so a return costs about one chunk, and a stray datagram of
    /// an old path never makes the player jump.
    pub stale_epoch_return: Duration,
    /// Shortest stream silence that makes the session's edge suspected (see the module docs);
    /// `None`: no suspicion, only `dead_after` (the rule before stream-based suspicion).
    pub suspect_floor: Option<Duration>,
    /// The session's edge is suspected after this many times the recent peak gap between its
    /// video datagrams. 2: a stream that pauses up to its peak gap is never suspected, and
    /// a false suspicion costs only a request (the switch needs newer video from the other
    /// edge), so the factor can be low.
    pub suspect_factor: f64,
    /// Gaps measured, over at least `suspect_warmup` of stream, before the peak is trusted;
    /// until then only `dead_after` holds. The time matters for a bursty stream (an ffmpeg
    /// relay sends bursts about 350 ms apart): many gaps within a burst say nothing of the
    /// pauses between bursts.
    pub suspect_samples: u32,
    pub suspect_warmup: Duration,
    /// Before suspecting, the silent edge is probed at once: an answer within this long plus
    /// its round trip shows it alive (a host that was descheduled a moment speaks again by
    /// then, and nothing moves) ...
    pub suspect_probe_wait: Duration,
    /// ... and an edge that answers while its stream stays silent (a stall above it, which
    /// the overlay mends in about a tenth of a second) is left this long at least.
    pub suspect_mend: Duration,
    /// The measured peak gap halves in this long (a burst of lateness is remembered a while).
    pub gap_peak_half_life: Duration,
    /// The first stream id; give each run a different one (random) so an edge never mistakes
    /// a new run's request for a retransmission of an old one.
    pub first_stream: u32,
    /// Key of the probe tokens; give each run a random one. A token is what an edge proves
    /// when it answers from another address than the one probed (see
    /// [`ClientService::handle_datagram`]), so it must not be guessable.
    pub token_key: u64,
    /// Latency budget of loss recovery (`--latency-ms`, see the module docs): how long a hole
    /// may hold back the datagrams behind it. `None`: `latency_rtt_factor` × the edge's RTT,
    /// at least `latency_floor`; zero: no recovery.
    pub latency: Option<Duration>,
    pub latency_floor: Duration,
    pub latency_rtt_factor: f64,
    /// A hole is asked for again after 1.5 × the edge's RTT, and not sooner than this.
    pub nack_floor: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(1000),
            loss_window: 20,
            rtt_alpha: 0.2,
            dead_after: Duration::from_millis(1000),
            keepalive_interval: Duration::from_millis(500),
            request_retry: Duration::from_millis(300),
            loss_penalty: Duration::from_millis(1000),
            switch_ratio: 0.7,
            switch_min_gain: Duration::from_millis(10),
            switch_hold: Duration::from_millis(1500),
            min_dwell: Duration::from_secs(3),
            settle: Duration::from_millis(300),
            no_edge_timeout: Duration::from_secs(5),
            unknown_video_grace: Duration::from_secs(3),
            busy_backoff: Duration::from_secs(5),
            drain_limit: Duration::from_secs(2),
            reorder_hold: Duration::from_millis(300),
            stale_epoch_return: Duration::from_millis(100),
            suspect_floor: Some(Duration::from_millis(DEFAULT_SUSPECT_FLOOR_MS)),
            suspect_factor: 2.0,
            suspect_samples: 16,
            suspect_warmup: Duration::from_secs(1),
            suspect_probe_wait: Duration::from_millis(30),
            suspect_mend: Duration::from_millis(250),
            gap_peak_half_life: Duration::from_secs(10),
            first_stream: 1,
            token_key: 0,
            latency: None,
            latency_floor: Duration::from_millis(DEFAULT_LATENCY_FLOOR_MS),
            latency_rtt_factor: 4.0,
            nack_floor: Duration::from_millis(20),
        }
    }
}

/// Which edge to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeChoice {
    /// The best measured edge; moves on death or degradation.
    Auto,
    /// This edge; left only when it dies (for the best live one), never for degradation.
    Pinned(SocketAddr),
}

/// Why the client (re)chose an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    Initial,
    /// The edge went silent.
    Dead,
    /// The edge's stream stalled beyond its rhythm and another edge brought newer video.
    Stalled,
    /// Another edge was better by the margin for the hold time.
    Degraded,
    /// The user picked it.
    User,
    /// The edge said it is busy.
    Busy,
    /// The edge said it is shutting down (a drain notice).
    Drained,
}

impl SwitchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Initial => "initial",
            SwitchReason::Dead => "edge dead",
            SwitchReason::Stalled => "edge stalled",
            SwitchReason::Degraded => "edge degraded",
            SwitchReason::User => "user choice",
            SwitchReason::Busy => "edge busy",
            SwitchReason::Drained => "edge draining",
        }
    }
}

/// Things the user interface and the role want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    EdgeChosen {
        edge: SocketAddr,
        previous: Option<SocketAddr>,
        reason: SwitchReason,
    },
    /// No edge answered within `no_edge_timeout` (reported once; probing continues).
    NoEdge { waited: Duration },
    /// The current edge died and no other edge is alive.
    EdgeLost { edge: SocketAddr },
    VideoList {
        edge: SocketAddr,
        videos: Vec<String>,
    },
    /// An edge accepted the video request.
    Accepted { video: String, edge: SocketAddr },
    /// The first datagram of the session on this edge arrived.
    FirstData { video: String, edge: SocketAddr },
    /// The video request failed for good (the session is dropped for `UnknownVideo`).
    VideoError {
        video: String,
        edge: SocketAddr,
        code: ErrorCode,
    },
}

/// What the service wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// A datagram for an edge.
    Send {
        to: SocketAddr,
        bytes: Bytes,
    },
    /// Raw MPEG-TS for the player / recording, in order.
    Deliver(Bytes),
    Event(ClientEvent),
}

/// One row of the edge table.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeStatus {
    pub addr: SocketAddr,
    /// RTT EWMA; `None` before the first ack.
    pub rtt: Option<Duration>,
    /// Fraction of the recent probes lost (0..=1).
    pub loss: f64,
    /// Probes in the loss window.
    pub samples: usize,
    /// Answered a probe within `dead_after`.
    pub alive: bool,
    /// The edge the client uses.
    pub chosen: bool,
    /// RTT plus the loss penalty: lower is better.
    pub score: Option<Duration>,
    /// Time spent as the session's edge.
    pub time_used: Duration,
    pub bytes: u64,
}

/// Time and bytes one edge served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeUse {
    pub edge: SocketAddr,
    pub time: Duration,
    pub bytes: u64,
}

/// Statistics of what the client received and handed to the player.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// TS bytes handed to the player.
    pub bytes: u64,
    /// Datagrams handed to the player.
    pub datagrams: u64,
    /// Distinct chunks (epoch, seq) handed to the player (framed mode).
    pub chunks: u64,
    /// Raw-TS datagrams handed to the player (ffmpeg relay mode).
    pub raw_datagrams: u64,
    /// Holes in the sequence of what was handed over.
    pub gaps: u64,
    /// Whole chunks missing in those holes.
    pub missing_chunks: u64,
    /// Datagrams dropped because they were already handed over.
    pub duplicates_dropped: u64,
    /// Datagrams dropped because they arrived behind what was handed over.
    pub reordered_dropped: u64,
    /// Datagrams of another stream, another edge or an abandoned epoch.
    pub stale_dropped: u64,
    /// Checked independently on the output: must stay 0.
    pub delivered_duplicates: u64,
    /// Checked independently on the output: must stay 0.
    pub delivered_reorderings: u64,
    pub epoch_changes: u64,
    pub edge_switches: u64,
    /// Times the session's edge was suspected (its stream silent beyond its rhythm).
    pub suspicions: u64,
    /// Suspicions cleared by the old edge speaking again before the new one delivered.
    pub suspicions_cleared: u64,
    /// Drain notices taken (an edge of ours is shutting down), one per edge and drain.
    pub drain_notices: u64,
    /// Drain notices repeated by an edge already known to be leaving.
    pub drain_notices_repeated: u64,
    /// Drain notices dropped: no session of that stream, or not a cookie of that edge.
    pub drain_notices_ignored: u64,
    /// Raw TS (ffmpeg relay): video handed to the player twice across edge switches, in
    /// milliseconds of stream time (PCR), all switches together.
    pub raw_repeated_ms: u64,
    /// Raw TS (ffmpeg relay): TS packets of PES already played, dropped after an edge switch
    /// (the new edge's child started behind the player: a GOP cache replayed upstream).
    pub raw_trimmed_packets: u64,
    /// Current peak gap between the session edge's video datagrams, in milliseconds.
    pub gap_peak_ms: u64,
    pub malformed: u64,
    /// Edges found answering from another address than the one probed (a multi-homed edge
    /// without source-address control, or NAT), recognised by the tokens they echoed.
    pub reply_addresses_learned: u64,
    /// Edges that served the session, in first-use order.
    pub edges: Vec<EdgeUse>,
    /// Loss recovery: NACK datagrams sent, and the holes they named.
    pub nacks_sent: u64,
    pub nack_holes: u64,
    /// Datagrams the edge sent again (flagged), and those of them that filled a hole in time.
    pub retransmits_received: u64,
    pub recovered: u64,
    /// Holes given up (the budget ran out, the edge said it cannot send them, or recovery had
    /// to stop) before their video came.
    pub unrecovered_holes: u64,
    /// Chunks the edge said it cannot send (a hole upstream of it): given up at once.
    pub nack_missed_chunks: u64,
    /// Datagrams held behind a hole, and the time they were held (the delay recovery adds):
    /// the longest, and all together.
    pub held_for_recovery: u64,
    pub recovery_delay_max_us: u64,
    pub recovery_delay_total_us: u64,
    /// The latency budget in force (0: recovery off).
    pub latency_budget_ms: u64,
}

#[derive(Debug)]
struct EdgeState {
    /// The address the client sends to (the edge's name in the table).
    addr: SocketAddr,
    /// Another address the edge answers from, proven by echoing a probe token.
    answers_from: Option<SocketAddr>,
    cookie: Option<u64>,
    /// The cookie before `cookie`: the edge may still quote it in a drain notice.
    prev_cookie: Option<u64>,
    /// The edge said it is shutting down, and is gone by this instant.
    leaving: Option<Instant>,
    pending: VecDeque<(u64, Instant)>,
    /// Recent probe outcomes, `true` = lost.
    window: VecDeque<bool>,
    rtt: Option<Duration>,
    last_ack: Option<Instant>,
    last_data: Option<Instant>,
    next_probe: Instant,
    busy_until: Option<Instant>,
    used: Duration,
    bytes: u64,
    first_used: Option<u64>,
}

/// The session as it stands on one edge.
#[derive(Debug, Clone)]
struct Attachment {
    edge: usize,
    accepted: bool,
    got_data: bool,
    last_request: Option<Instant>,
    last_keepalive: Option<Instant>,
    since: Instant,
}

#[derive(Debug)]
struct Want {
    video: String,
    stream: u32,
    since: Instant,
    delivered: bool,
    busy_reported: bool,
}

enum Verdict {
    Deliver {
        gap: bool,
        missing: u64,
        new_chunk: bool,
    },
    Duplicate,
    Late,
    StaleEpoch,
}

/// The rhythm of the stream on the session's edge: a peak-following estimate of the gap
/// between its video datagrams, decaying with a half-life.
#[derive(Debug, Clone, Default)]
struct GapMeter {
    /// The first video measured (of the stream, whichever edge).
    first: Option<Instant>,
    last: Option<Instant>,
    peak: Duration,
    samples: u32,
}

impl GapMeter {
    fn arrival(&mut self, now: Instant, half_life: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            let halvings = gap.as_secs_f64() / half_life.as_secs_f64().max(1e-3);
            self.peak = gap.max(self.peak.mul_f64(0.5f64.powf(halvings)));
            self.samples = self.samples.saturating_add(1);
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// The next arrival starts a new measurement (the gap across a switch is no rhythm of
    /// the stream).
    fn restart(&mut self) {
        self.last = None;
    }
}

/// The session's edge fell silent beyond its rhythm and was probed at `at`; suspected at
/// `until` unless it answered (then after the mend time) or its video came back.
#[derive(Debug, Clone, Copy)]
struct EdgeDoubt {
    edge: usize,
    at: Instant,
    until: Instant,
}

/// The session's edge is suspected: since when, and the edge asked for the stream meanwhile.
#[derive(Debug)]
struct Suspect {
    since: Instant,
    standby: Option<Attachment>,
    /// The standby edge refused (busy, unknown video): no other is asked in this suspicion.
    refused: bool,
}

/// Raw TS across switches: the highest PCR handed to the player, and that PCR at the last
/// switch until the new edge's first PCR arrives.
#[derive(Debug, Default)]
struct RawClock {
    max_pcr: Option<u64>,
    at_switch: Option<u64>,
    /// The edge whose video was handed over last.
    edge: Option<usize>,
}

/// Raw TS across an edge switch (see the module docs): per PID, the newest PES timestamp
/// handed to the player, and the PIDs whose new edge has not yet passed it.
#[derive(Debug, Default)]
struct RawTrim {
    newest: HashMap<u16, u64>,
    /// PID → whether the PES in progress on it is dropped. A PID leaves this map at its first
    /// PES newer than what was played.
    trimming: HashMap<u16, bool>,
    /// The edge whose video was handed over last.
    edge: Option<usize>,
}

impl RawTrim {
    /// The packets of `datagram` (from edge `e`) the player has not had, and how many were
    /// dropped; `None` when nothing was dropped (the datagram goes on as it is).
    fn trim(&mut self, e: usize, datagram: &Bytes) -> (Option<Vec<u8>>, u64) {
        if self.edge.is_some_and(|prev| prev != e) {
            // A packet before the first PES start on a PID continues a PES the player
            // cannot use: dropped until a start says whether it is new.
            self.trimming = self.newest.keys().map(|&pid| (pid, true)).collect();
        }
        self.edge = Some(e);
        let mut kept: Option<Vec<u8>> = None;
        let mut dropped = 0;
        for (i, bytes) in datagram.chunks_exact(TS_PACKET_LEN).enumerate() {
            // A packet that does not parse is passed on, as without trimming.
            let Ok(p) = crate::media::ts::Packet::parse(bytes) else {
                if let Some(k) = &mut kept {
                    k.extend_from_slice(bytes);
                }
                continue;
            };
            let pid = p.pid();
            let stamp = p.pes_timestamp();
            let drop = match (self.trimming.get_mut(&pid), stamp) {
                (Some(dropping), Some(t)) => {
                    let newest = self.newest.get(&pid).copied().unwrap_or(t);
                    let behind = newest.wrapping_sub(t) % PES_TS_MODULUS;
                    *dropping = behind <= PES_REPEAT_LIMIT;
                    let d = *dropping;
                    if !d {
                        self.trimming.remove(&pid);
                    }
                    d
                }
                (Some(dropping), None) => *dropping,
                (None, _) => false,
            };
            if let Some(t) = stamp.filter(|_| !drop) {
                self.newest.insert(pid, t);
            }
            if drop {
                dropped += 1;
                kept.get_or_insert_with(|| datagram[..i * TS_PACKET_LEN].to_vec());
            } else if let Some(k) = &mut kept {
                k.extend_from_slice(bytes);
            }
        }
        (kept, dropped)
    }
}

/// Orders framed datagrams by (epoch, seq, part); see the module docs.
#[derive(Debug, Default)]
struct Sequencer {
    /// See [`ClientSettings::stale_epoch_return`].
    stale_epoch_return: Duration,
    epoch: Option<u64>,
    last: (u64, u16, u16),
    retired: VecDeque<u64>,
    /// An abandoned epoch seen again: how many datagrams of it in a row, and when the session's
    /// edge first brought it in this run.
    stale: Option<StaleRun>,
    recent: HashSet<(u64, u64, u16)>,
    recent_order: VecDeque<(u64, u64, u16)>,
}

#[derive(Debug, Clone, Copy)]
struct StaleRun {
    epoch: u64,
    datagrams: u32,
    /// When the session's edge first brought this epoch in the run.
    from_session_since: Option<Instant>,
}

/// Where a datagram comes from, for the sequencer's choice of epoch.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    now: Instant,
    /// From the session's current edge (not one being left).
    from_session: bool,
}

impl Sequencer {
    fn new(stale_epoch_return: Duration) -> Sequencer {
        Sequencer {
            stale_epoch_return,
            ..Sequencer::default()
        }
    }

    /// Counts one more datagram of abandoned `epoch` with nothing delivered in between; true
    /// once the session's edge has brought it for `stale_epoch_return`, or after
    /// [`STALE_EPOCH_ADOPT`] of them in a row from anywhere.
    fn stale_run(&mut self, epoch: u64, at: Arrival) -> bool {
        let mut run = match self.stale {
            Some(r) if r.epoch == epoch => r,
            _ => StaleRun {
                epoch,
                datagrams: 0,
                from_session_since: None,
            },
        };
        run.datagrams += 1;
        if at.from_session {
            run.from_session_since.get_or_insert(at.now);
        }
        self.stale = Some(run);
        run.datagrams >= STALE_EPOCH_ADOPT
            || run
                .from_session_since
                .is_some_and(|t| at.now.saturating_duration_since(t) >= self.stale_epoch_return)
    }

    /// True when `d` would be delivered after a hole.
    fn would_gap(&self, d: &VideoData) -> bool {
        match self.epoch {
            Some(e) if e == d.epoch => {
                let (seq, part, parts) = self.last;
                let next = if part + 1 < parts {
                    (seq, part + 1)
                } else {
                    (seq.saturating_add(1), 0)
                };
                (d.seq, d.part) > next
            }
            _ => false,
        }
    }

    /// True when `d` would reach the player now: not had, not behind the last delivered, not
    /// of an abandoned epoch (a new edge's video that completes a switch).
    fn is_new(&self, d: &VideoData) -> bool {
        if self.recent.contains(&(d.epoch, d.seq, d.part)) {
            return false;
        }
        match self.epoch {
            Some(e) if e == d.epoch => (d.seq, d.part) > (self.last.0, self.last.1),
            _ => !self.retired.contains(&d.epoch),
        }
    }

    fn check(&mut self, d: &VideoData, at: Arrival) -> Verdict {
        let key = (d.epoch, d.seq, d.part);
        if self.recent.contains(&key) {
            return Verdict::Duplicate;
        }
        let current = self.epoch;
        let verdict = match current {
            Some(e) if e == d.epoch => {
                let (seq, part, parts) = self.last;
                if (d.seq, d.part) <= (seq, part) {
                    return Verdict::Late;
                }
                let next = if part + 1 < parts {
                    (seq, part + 1)
                } else {
                    (seq.saturating_add(1), 0)
                };
                Verdict::Deliver {
                    gap: (d.seq, d.part) != next,
                    missing: d.seq.saturating_sub(seq).saturating_sub(1),
                    new_chunk: d.seq != seq,
                }
            }
            // An abandoned epoch is not returned to while the current one flows; but if only
            // it arrives (the overlay went back to that source for good), it is adopted.
            _ if self.retired.contains(&d.epoch) && !self.stale_run(d.epoch, at) => {
                return Verdict::StaleEpoch
            }
            previous => {
                if let Some(old) = previous {
                    self.retired.push_back(old);
                    if self.retired.len() > RETIRED_EPOCHS {
                        self.retired.pop_front();
                    }
                }
                self.epoch = Some(d.epoch);
                Verdict::Deliver {
                    gap: false,
                    missing: 0,
                    new_chunk: true,
                }
            }
        };
        self.stale = None;
        self.retired.retain(|&e| e != d.epoch);
        self.last = (d.seq, d.part, d.parts);
        self.recent.insert(key);
        self.recent_order.push_back(key);
        if self.recent_order.len() > RECENT_KEYS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        verdict
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct ClientService {
    settings: ClientSettings,
    choice: EdgeChoice,
    edges: Vec<EdgeState>,
    start: Instant,
    current: Option<usize>,
    chosen_at: Instant,
    first_ack_at: Option<Instant>,
    no_edge_reported: bool,
    lost_reported: bool,
    /// A better edge and since when it has been better.
    better: Option<(usize, Instant)>,
    want: Option<Want>,
    next_stream: u32,
    session: Option<Attachment>,
    draining: Option<Attachment>,
    /// The session's edge went silent beyond the stream's rhythm.
    suspect: Option<Suspect>,
    /// The probe that comes before a suspicion.
    doubt: Option<EdgeDoubt>,
    /// How late our own timers fire: a saturated host stretches the suspicion by it.
    lateness: Lateness,
    gaps: GapMeter,
    raw_clock: RawClock,
    raw_trim: RawTrim,
    list_wanted: bool,
    list_last: Option<Instant>,
    next_token: u64,
    seq: Sequencer,
    /// New edge's datagrams waiting for the old edge to catch up during a switch.
    held: VecDeque<VideoData>,
    hold_until: Option<Instant>,
    /// Output audit: the last framed position handed over.
    audit: Option<(u64, u64, u16)>,
    /// Datagrams held behind holes while the edge is asked for what is missing.
    recovery: Recovery,
    /// The edge the latest datagram of the recovered stream came from: NACKs go there.
    recovery_edge: Option<usize>,
    stats: ClientStats,
    accounted_at: Instant,
    outputs: VecDeque<ClientOutput>,
}

impl ClientService {
    /// A client of `edges` (duplicates ignored). Nothing is sent until the first
    /// [`ClientService::handle_timeout`].
    pub fn new(
        settings: ClientSettings,
        edges: Vec<SocketAddr>,
        choice: EdgeChoice,
        now: Instant,
    ) -> ClientService {
        let mut states: Vec<EdgeState> = Vec::new();
        for addr in edges {
            if states.iter().any(|e| e.addr == addr) {
                continue;
            }
            states.push(EdgeState {
                addr,
                answers_from: None,
                cookie: None,
                prev_cookie: None,
                leaving: None,
                pending: VecDeque::new(),
                window: VecDeque::new(),
                rtt: None,
                last_ack: None,
                last_data: None,
                next_probe: now,
                busy_until: None,
                used: Duration::ZERO,
                bytes: 0,
                first_used: None,
            });
        }
        let stale_epoch_return = settings.stale_epoch_return;
        ClientService {
            next_stream: settings.first_stream,
            settings,
            choice,
            edges: states,
            start: now,
            current: None,
            chosen_at: now,
            first_ack_at: None,
            no_edge_reported: false,
            lost_reported: false,
            better: None,
            want: None,
            session: None,
            draining: None,
            suspect: None,
            doubt: None,
            lateness: Lateness::default(),
            gaps: GapMeter::default(),
            raw_clock: RawClock::default(),
            raw_trim: RawTrim::default(),
            list_wanted: false,
            list_last: None,
            next_token: 1,
            seq: Sequencer::new(stale_epoch_return),
            held: VecDeque::new(),
            hold_until: None,
            audit: None,
            recovery: Recovery::default(),
            recovery_edge: None,
            stats: ClientStats::default(),
            accounted_at: now,
            outputs: VecDeque::new(),
        }
    }

    /// The edge in use, if any.
    pub fn current_edge(&self) -> Option<SocketAddr> {
        self.current.map(|i| self.edges[i].addr)
    }

    /// The video wanted, if any.
    pub fn video(&self) -> Option<&str> {
        self.want.as_ref().map(|w| w.video.as_str())
    }

    pub fn choice(&self) -> EdgeChoice {
        self.choice
    }

    /// The edge table.
    pub fn edges(&self, now: Instant) -> Vec<EdgeStatus> {
        self.edges
            .iter()
            .enumerate()
            .map(|(i, e)| EdgeStatus {
                addr: e.addr,
                rtt: e.rtt,
                loss: loss(e),
                samples: e.window.len(),
                alive: self.alive(i, now),
                chosen: self.current == Some(i),
                score: self.score(i),
                time_used: e.used + self.unaccounted(i, now),
                bytes: e.bytes,
            })
            .collect()
    }

    /// Statistics so far, time on the current edge included.
    pub fn stats(&self, now: Instant) -> ClientStats {
        let mut stats = self.stats.clone();
        let mut used: Vec<(u64, usize)> = self
            .edges
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.first_used.map(|order| (order, i)))
            .collect();
        used.sort();
        stats.gap_peak_ms = self.gaps.peak.as_millis() as u64;
        stats.latency_budget_ms = self.budget().as_millis() as u64;
        stats.edges = used
            .into_iter()
            .map(|(_, i)| EdgeUse {
                edge: self.edges[i].addr,
                time: self.edges[i].used + self.unaccounted(i, now),
                bytes: self.edges[i].bytes,
            })
            .collect();
        stats
    }

    /// Asks the current edge (once one is chosen) for its video list.
    pub fn request_list(&mut self, now: Instant) {
        self.list_wanted = true;
        self.list_last = None;
        self.drive(now);
    }

    /// Plays `video` (stopping any other); returns the stream id.
    pub fn play(&mut self, now: Instant, video: &str) -> u32 {
        self.stop(now);
        let stream = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        self.want = Some(Want {
            video: video.to_owned(),
            stream,
            since: now,
            delivered: false,
            busy_reported: false,
        });
        // A new stream starts a new sequence: an old video's epochs mean nothing to it.
        self.seq = Sequencer::new(self.settings.stale_epoch_return);
        self.recovery.clear();
        self.recovery_edge = None;
        self.audit = None;
        self.gaps = GapMeter::default();
        self.raw_clock = RawClock::default();
        self.raw_trim = RawTrim::default();
        self.drive(now);
        stream
    }

    /// Stops the video: cancels it on every edge that serves it.
    pub fn stop(&mut self, now: Instant) {
        self.account(now);
        self.held.clear();
        self.hold_until = None;
        self.recovery.clear();
        if let Some(want) = self.want.take() {
            let standby = self.suspect.take().and_then(|s| s.standby);
            for att in [self.session.take(), self.draining.take(), standby]
                .into_iter()
                .flatten()
            {
                self.send_cancel(att.edge, want.stream);
            }
        }
    }

    /// Changes the edge choice. Pinning an address that is not one of the edges is refused.
    pub fn set_choice(&mut self, now: Instant, choice: EdgeChoice) -> Result<(), UnknownEdge> {
        if let EdgeChoice::Pinned(addr) = choice {
            let idx = self
                .edges
                .iter()
                .position(|e| e.addr == addr)
                .ok_or(UnknownEdge(addr))?;
            self.choice = choice;
            if self.current != Some(idx) {
                self.switch_to(now, idx, SwitchReason::User);
            }
        } else {
            self.choice = choice;
        }
        self.drive(now);
        Ok(())
    }

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// When [`ClientService::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = &self.settings;
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for e in &self.edges {
            at(e.next_probe);
            if let Some((_, sent)) = e.pending.front() {
                at(*sent + s.probe_timeout);
            }
        }
        if let Some(t) = self.suspect_at() {
            at(t);
        }
        if let Some(c) = self.current {
            at(self.heard(c) + s.dead_after);
        } else if self.first_ack_at.is_none() && !self.no_edge_reported {
            at(self.start + s.no_edge_timeout);
        }
        if let Some(first) = self.first_ack_at {
            if self.current.is_none() {
                at(first + s.settle);
            }
        }
        if let Some((_, since)) = self.better {
            at(since + s.switch_hold);
        }
        let standby = self.suspect.as_ref().and_then(|s| s.standby.as_ref());
        for att in [self.session.as_ref(), self.draining.as_ref(), standby]
            .into_iter()
            .flatten()
        {
            match (att.accepted, att.last_request) {
                (false, Some(t)) => at(t + s.request_retry),
                (false, None) => {}
                (true, _) => at(att
                    .last_keepalive
                    .map_or(att.since, |t| t + s.keepalive_interval)),
            }
        }
        if let Some(d) = &self.draining {
            at(d.since + s.drain_limit);
        }
        if let Some(t) = self.hold_until {
            at(t);
        }
        if let Some(t) = self.recovery.deadline(self.budget()) {
            at(t);
        }
        if let Some(t) = self.recovery.next_ask(self.nack_interval()) {
            at(t);
        }
        if self.list_wanted {
            if let Some(t) = self.list_last {
                at(t + s.request_retry);
            }
        }
        next
    }

    /// Timers: probes, liveness, edge choice, retransmissions, keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(due) = self.poll_timeout().filter(|due| *due <= now) {
            self.lateness.sample(now, due);
        }
        self.probe(now);
        self.drive(now);
    }

    /// One datagram from `from`.
    ///
    /// A datagram belongs to the edge whose address it comes from. An edge may answer from
    /// another address than the one the client sent to (an old edge on a multi-homed host
    /// answers from the address of its outgoing interface; NAT rewrites it): such an address
    /// is adopted for an edge only when a probe ack from it echoes a token of a probe sent to
    /// that edge. Tokens are keyed ([`ClientSettings::token_key`]), so a host that did not
    /// see the probe cannot make the client take its datagrams for an edge's.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes) {
        let known = self
            .edges
            .iter()
            .position(|e| e.addr == from || e.answers_from == Some(from));
        let Some(e) = known.or_else(|| self.adopt_reply_address(from, &datagram)) else {
            self.stats.stale_dropped += 1;
            return;
        };
        if is_raw_ts(&datagram) {
            self.raw_video(now, e, datagram);
            return;
        }
        let msg = match ClientMsg::decode(datagram) {
            Ok(m) => m,
            Err(err) => {
                self.stats.malformed += 1;
                debug!(%from, error = %err, "malformed datagram from edge dropped");
                return;
            }
        };
        match msg {
            ClientMsg::ProbeAck(ack) => {
                let edge = &mut self.edges[e];
                let Some(i) = edge.pending.iter().position(|(t, _)| *t == ack.token) else {
                    // Late (already counted lost) or not ours: no sample, no cookie.
                    return;
                };
                let (_, sent) = edge.pending.remove(i).unwrap_or((0, now));
                let sample = now.saturating_duration_since(sent);
                let a = self.settings.rtt_alpha;
                edge.rtt = Some(match edge.rtt {
                    Some(old) => old.mul_f64(1.0 - a) + sample.mul_f64(a),
                    None => sample,
                });
                push_outcome(edge, false, self.settings.loss_window);
                // An older probe unanswered, or none answered for `dead_after`: the leaving
                // edge went away, and what answers now is a restarted one.
                let was_gone = i > 0
                    || edge.last_ack.map_or(true, |t| {
                        now.saturating_duration_since(t) > self.settings.dead_after
                    });
                if was_gone && edge.leaving.take().is_some() {
                    info!(edge = %edge.addr, "edge that was leaving answers again (restarted)");
                }
                edge.last_ack = Some(now);
                self.set_cookie(e, ack.cookie);
                self.first_ack_at.get_or_insert(now);
            }
            ClientMsg::Challenge(c) => {
                self.set_cookie(e, c.cookie);
                // Whatever was refused goes again at the next tick, with the new cookie.
                let standby = self.suspect.as_mut().and_then(|s| s.standby.as_mut());
                for att in [self.session.as_mut(), self.draining.as_mut(), standby]
                    .into_iter()
                    .flatten()
                {
                    if att.edge == e {
                        att.last_request = None;
                        att.last_keepalive = None;
                    }
                }
                if self.current == Some(e) {
                    self.list_last = None;
                }
                self.drive(now);
            }
            ClientMsg::ListReply(reply) => {
                if self.list_wanted && self.current == Some(e) {
                    self.list_wanted = false;
                    self.event(ClientEvent::VideoList {
                        edge: from,
                        videos: reply.videos,
                    });
                }
            }
            ClientMsg::VideoOk(ok) => {
                let Some(want) = &self.want else { return };
                if ok.stream != want.stream {
                    return;
                }
                let video = want.video.clone();
                if let Some(att) = self.session.as_mut().filter(|a| a.edge == e) {
                    if !att.accepted {
                        att.accepted = true;
                        att.last_keepalive = Some(now);
                        info!(%video, edge = %from, "video accepted by edge");
                        self.event(ClientEvent::Accepted { video, edge: from });
                    }
                } else if let Some(att) = self.standby_mut(e) {
                    if !att.accepted {
                        att.accepted = true;
                        att.last_keepalive = Some(now);
                        debug!(%video, edge = %from, "standby edge accepted the video");
                    }
                }
            }
            ClientMsg::Error(err) => self.edge_error(now, e, err.code, err.stream),
            ClientMsg::Drain(n) => self.drain_notice(now, e, n),
            ClientMsg::NackMiss(m) => self.nack_miss(now, e, m),
            ClientMsg::VideoData(d) => self.framed_video(now, e, d),
            other => {
                self.stats.malformed += 1;
                debug!(%from, kind = other.kind(), "edge sent a client-only message");
            }
        }
    }

    fn set_cookie(&mut self, e: usize, cookie: u64) {
        let edge = &mut self.edges[e];
        if edge.cookie != Some(cookie) {
            edge.prev_cookie = edge.cookie.replace(cookie);
        }
    }

    /// Edge `e` says it is shutting down. Taken only for the stream we play and with a cookie
    /// this edge gave us (the edge quotes the one our latest request or keepalive echoed):
    /// a forger would need to have seen our traffic to the edge.
    fn drain_notice(&mut self, now: Instant, e: usize, n: DrainNotice) {
        let edge = &self.edges[e];
        let ours = !self.want.as_ref().is_none_or_stream(n.stream)
            && (edge.cookie == Some(n.cookie) || edge.prev_cookie == Some(n.cookie));
        if !ours {
            self.stats.drain_notices_ignored += 1;
            debug!(edge = %edge.addr, stream = n.stream, "drain notice not for our session ignored");
            return;
        }
        if edge.leaving.is_some() {
            self.stats.drain_notices_repeated += 1;
            return;
        }
        self.stats.drain_notices += 1;
        let within = Duration::from_millis(u64::from(n.within_ms)).min(MAX_DRAIN_WAIT);
        self.edges[e].leaving = Some(now + within);
        let addr = self.edges[e].addr;
        match self.best_staying(now, Some(e)) {
            Some(_) if self.current == Some(e) => {
                info!(edge = %addr, "edge draining: moving to the next-best edge")
            }
            Some(_) => info!(edge = %addr, "edge draining: it will not be used"),
            None => {
                info!(edge = %addr, "edge draining and no other edge alive: staying until it goes")
            }
        }
        // A standby on the leaving edge is let go: the suspicion asks another one.
        if self.standby_mut(e).is_some() {
            if let Some(att) = self.suspect.as_mut().and_then(|s| s.standby.take()) {
                self.send_cancel(att.edge, n.stream);
            }
        }
        self.drive(now);
    }

    /// The edge said it is shutting down, has not yet reached the time it gave for its exit
    /// and has not missed a probe since.
    fn leaving(&self, e: usize, now: Instant) -> bool {
        self.edges[e].leaving.is_some_and(|t| now < t)
    }

    /// The edge that `datagram`, from an address of no edge, proves to come from: a probe
    /// ack echoing one of its pending tokens.
    fn adopt_reply_address(&mut self, from: SocketAddr, datagram: &Bytes) -> Option<usize> {
        let Ok(ClientMsg::ProbeAck(ack)) = ClientMsg::decode(datagram.clone()) else {
            return None;
        };
        let e = self
            .edges
            .iter()
            .position(|e| e.pending.iter().any(|(t, _)| *t == ack.token))?;
        let edge = &mut self.edges[e];
        info!(edge = %edge.addr, answers_from = %from, "edge answers from another address");
        edge.answers_from = Some(from);
        self.stats.reply_addresses_learned += 1;
        Some(e)
    }

    fn edge_error(&mut self, now: Instant, e: usize, code: ErrorCode, stream: u32) {
        if self.want.as_ref().is_none_or_stream(stream) {
            return;
        }
        let edge = self.edges[e].addr;
        if self.standby_mut(e).is_some() {
            let video = self
                .want
                .as_ref()
                .map(|w| w.video.clone())
                .unwrap_or_default();
            match code {
                ErrorCode::UnknownStream => {
                    if let Some(att) = self.standby_mut(e) {
                        att.accepted = false;
                        att.last_request = None;
                    }
                    self.drive(now);
                }
                // The standby edge cannot serve: the suspicion waits for the old edge (or
                // `dead_after`) without it.
                _ => {
                    if code == ErrorCode::Busy {
                        self.edges[e].busy_until = Some(now + self.settings.busy_backoff);
                    }
                    if let Some(s) = &mut self.suspect {
                        s.standby = None;
                        s.refused = true;
                    }
                    info!(%video, %edge, ?code, "standby edge refused the video");
                }
            }
            return;
        }
        let Some(want) = &mut self.want else { return };
        let video = want.video.clone();
        let session = self.session.as_ref().filter(|a| a.edge == e);
        let on_session = session.is_some();
        // The grace runs from the latest (re)start of the request on this edge: an edge that
        // has just (re)started learns its routes again, even for a video already playing.
        let asked = session.map_or(want.since, |a| a.since.max(want.since));
        match code {
            // Within the grace the retry timer asks again: the edge may be learning routes.
            ErrorCode::UnknownVideo
                if on_session
                    && now.saturating_duration_since(asked)
                        >= self.settings.unknown_video_grace =>
            {
                info!(%video, %edge, "edge does not know the video");
                self.want = None;
                self.session = None;
                if let Some(d) = self.draining.take() {
                    self.send_cancel(d.edge, stream);
                }
                self.event(ClientEvent::VideoError { video, edge, code });
            }
            ErrorCode::Busy if on_session => {
                let already_reported = std::mem::replace(&mut want.busy_reported, true);
                self.edges[e].busy_until = Some(now + self.settings.busy_backoff);
                match self.best(now, Some(e)) {
                    Some(alt) if self.choice == EdgeChoice::Auto => {
                        self.switch_to(now, alt, SwitchReason::Busy);
                        self.drive(now);
                    }
                    _ if !already_reported => {
                        self.event(ClientEvent::VideoError { video, edge, code })
                    }
                    _ => {}
                }
            }
            ErrorCode::UnknownStream => {
                // The edge lost our session (lease ran out, edge restarted): ask again, with a
                // fresh grace for "unknown video" (a restarted edge has no routes yet).
                if let Some(att) = self.session.as_mut().filter(|a| a.edge == e) {
                    att.accepted = false;
                    att.last_request = None;
                    att.since = now;
                    self.drive(now);
                } else if self.draining.as_ref().is_some_and(|d| d.edge == e) {
                    self.draining = None;
                }
            }
            _ => {}
        }
    }

    fn framed_video(&mut self, now: Instant, e: usize, d: VideoData) {
        self.edges[e].last_data = Some(now);
        if self.want.as_ref().is_none_or_stream(d.stream) {
            self.stats.stale_dropped += 1;
            return;
        }
        if d.flags & VIDEO_FLAG_RETRANSMIT != 0 {
            self.stats.retransmits_received += 1;
        }
        self.session_edge_heard(now, e);
        if self.standby_mut(e).is_some() {
            if !self.seq.is_new(&d) {
                // The GOP cache of the standby edge, or video the player already has.
                self.stats.stale_dropped += 1;
                return;
            }
            self.complete_standby(now);
        }
        let session = self.session.as_ref().map(|a| (a.edge, a.got_data));
        let draining = self.draining.as_ref().map(|a| a.edge);
        match (session, draining) {
            (Some((s, false)), Some(_)) if s == e => {
                // Make-before-break: the new edge is ahead of the old one. Its datagrams wait
                // (a little) for the old edge to fill the hole, so a switch to a faster edge
                // loses nothing.
                if self.hold_until.is_some() || self.seq.would_gap(&d) {
                    self.hold_until
                        .get_or_insert(now + self.settings.reorder_hold);
                    self.held.push_back(d);
                    if self.held.len() >= MAX_HELD {
                        self.release_held(now);
                    }
                    return;
                }
                // At or behind the old edge: it has everything that follows, take it now.
                self.mark_session_data(e);
                self.sequence(now, e, d);
            }
            (Some((s, _)), _) if s == e => self.sequence(now, e, d),
            (Some((_, false)) | None, Some(dr)) if dr == e => {
                self.sequence(now, e, d);
                if self.held.front().is_some_and(|h| !self.seq.would_gap(h)) {
                    self.release_held(now);
                }
            }
            _ => self.stats.stale_dropped += 1,
        }
    }

    /// The session's edge `e` brought video: the stream's rhythm, and the end of a suspicion
    /// (the old edge spoke first: the standby edge is let go, no switch).
    fn session_edge_heard(&mut self, now: Instant, e: usize) {
        if !self
            .session
            .as_ref()
            .is_some_and(|a| a.edge == e && a.got_data)
        {
            return;
        }
        self.gaps.arrival(now, self.settings.gap_peak_half_life);
        self.doubt = None;
        if let Some(sus) = self.suspect.take() {
            self.stats.suspicions_cleared += 1;
            let silent = now.saturating_duration_since(sus.since);
            info!(edge = %self.edges[e].addr, ?silent, "edge spoke again: suspicion cleared");
            if let (Some(att), Some(stream)) = (sus.standby, self.want.as_ref().map(|w| w.stream)) {
                self.send_cancel(att.edge, stream);
            }
        }
    }

    fn standby_mut(&mut self, e: usize) -> Option<&mut Attachment> {
        self.suspect
            .as_mut()
            .and_then(|s| s.standby.as_mut())
            .filter(|a| a.edge == e)
    }

    /// When the session's edge becomes suspected, if it is not yet.
    fn suspect_at(&self) -> Option<Instant> {
        let floor = self.settings.suspect_floor?;
        if self.suspect.is_some() || self.draining.is_some() || self.want.is_none() {
            return None;
        }
        let att = self.session.as_ref()?;
        if !att.got_data || self.current != Some(att.edge) {
            return None;
        }
        let measured = match (self.gaps.first, self.gaps.last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        if self.gaps.samples < self.settings.suspect_samples
            || measured < self.settings.suspect_warmup
        {
            return None;
        }
        let after = self
            .gaps
            .peak
            .mul_f64(self.settings.suspect_factor)
            .clamp(floor, self.settings.dead_after.max(floor));
        let edge = &self.edges[att.edge];
        let last = edge.last_data?;
        let slack = self.lateness.slack();
        Some(
            match self.doubt.filter(|d| d.edge == att.edge && d.at >= last) {
                // Time to probe it.
                None => last + after + slack,
                Some(d) if edge.last_ack.is_some_and(|t| t >= d.at) => d
                    .until
                    .max(last + after.max(self.settings.suspect_mend) + slack),
                Some(d) => d.until + slack,
            },
        )
    }

    /// Starts a suspicion when the session's edge has been silent too long, and asks the
    /// next-best edge for the stream (make-before-break).
    fn check_suspicion(&mut self, now: Instant) {
        if self.suspect_at().is_some_and(|t| now >= t) {
            let Some(c) = self.current else { return };
            let last = self.edges[c].last_data;
            if !self
                .doubt
                .is_some_and(|d| d.edge == c && Some(d.at) >= last)
            {
                // Doubt first: a live edge answers within its round trip.
                let rtt = self.edges[c].rtt.unwrap_or_default();
                self.doubt = Some(EdgeDoubt {
                    edge: c,
                    at: now,
                    until: now + self.settings.suspect_probe_wait + rtt,
                });
                self.send_probe(c, now);
                return;
            }
            self.doubt = None;
            self.stats.suspicions += 1;
            let silent = self.edges[c]
                .last_data
                .map(|t| now.saturating_duration_since(t));
            info!(edge = %self.edges[c].addr, ?silent, peak_gap = ?self.gaps.peak, "edge suspected: stream silent beyond its rhythm");
            self.suspect = Some(Suspect {
                since: now,
                standby: None,
                refused: false,
            });
        }
        let Some(c) = self.current else { return };
        let Some(sus) = &self.suspect else { return };
        if sus.standby.is_some() || sus.refused {
            return;
        }
        // No live edge yet: asked again at the next tick.
        if let Some(alt) = self.best(now, Some(c)) {
            info!(edge = %self.edges[alt].addr, "asking the next-best edge for the stream");
            if let Some(sus) = &mut self.suspect {
                sus.standby = Some(Attachment {
                    edge: alt,
                    accepted: false,
                    got_data: false,
                    last_request: None,
                    last_keepalive: None,
                    since: now,
                });
            }
        }
    }

    /// The standby edge brought video the player has not had: it becomes the session's edge
    /// and the suspected one is cancelled.
    fn complete_standby(&mut self, now: Instant) {
        let Some(sus) = self.suspect.take() else {
            return;
        };
        let Some(standby) = sus.standby else { return };
        let stream = self.want.as_ref().map(|w| w.stream);
        if let (Some(old), Some(stream)) = (self.session.take(), stream) {
            self.send_cancel(old.edge, stream);
        }
        // A make-before-break in progress (none while suspected) would be superseded.
        if let (Some(d), Some(stream)) = (self.draining.take(), stream) {
            self.send_cancel(d.edge, stream);
        }
        let e = standby.edge;
        self.session = Some(standby);
        self.gaps.restart();
        let waited = now.saturating_duration_since(sus.since);
        info!(edge = %self.edges[e].addr, ?waited, "standby edge brought newer video");
        self.switch_to(now, e, SwitchReason::Stalled);
        self.mark_session_data(e);
    }

    /// Follows the PCRs of raw TS handed to the player; the first PCR after a change of edge
    /// that is behind the highest one before tells how much video is repeated.
    fn raw_clock_update(&mut self, e: usize, datagram: &[u8]) {
        let clock = &mut self.raw_clock;
        if clock.edge.is_some_and(|prev| prev != e) {
            clock.at_switch = clock.max_pcr;
        }
        clock.edge = Some(e);
        for pcr in crate::media::ts::packets(datagram).filter_map(|p| p.pcr()) {
            if let Some(before) = clock.at_switch.take() {
                let back = before.saturating_sub(pcr);
                if back > 0 && back < PCR_REPEAT_LIMIT {
                    self.stats.raw_repeated_ms += back / PCR_PER_MS;
                }
            }
            clock.max_pcr = Some(match clock.max_pcr {
                // A big step back is a new timeline (wrap, restarted source).
                Some(m) if m > pcr && m - pcr < PCR_REPEAT_LIMIT => m,
                _ => pcr,
            });
        }
    }

    /// Hands the datagrams held during a switch to the sequencer (the new edge takes over).
    fn release_held(&mut self, now: Instant) {
        self.hold_until = None;
        let Some(e) = self.session.as_ref().map(|a| a.edge) else {
            self.held.clear();
            return;
        };
        for d in std::mem::take(&mut self.held) {
            self.sequence(now, e, d);
        }
    }

    /// One datagram from an edge allowed to feed the player: through loss recovery when it is
    /// on and the datagram is of the current epoch (see the module docs), else straight to
    /// the sequencer (after whatever recovery held, in order).
    fn sequence(&mut self, now: Instant, e: usize, d: VideoData) {
        if self.budget().is_zero() || self.seq.epoch != Some(d.epoch) {
            // A datagram of an abandoned epoch changes nothing (the sequencer drops it, unless
            // a run of them brings that epoch back); anything else goes after what was held.
            if !self.seq.retired.contains(&d.epoch) {
                self.flush_recovery(now);
            }
            self.sequence_now(now, e, d);
            return;
        }
        self.recovery_edge = Some(e);
        if !self.seq.would_gap(&d) {
            // The next datagram (perhaps filling a hole), or one at or behind the last handed
            // over (the sequencer drops it).
            self.sequence_now(now, e, d);
            self.release_recovered(now);
            return;
        }
        if d.seq.saturating_sub(self.seq.last.0) >= MAX_RECOVERY_SPAN {
            self.flush_recovery(now);
            self.sequence_now(now, e, d);
            return;
        }
        if self.recovery.len() >= MAX_RECOVERY_HELD {
            self.give_up_hole(now);
        }
        if !self.recovery.hold(now, e, d) {
            self.stats.duplicates_dropped += 1;
            return;
        }
        self.stats.held_for_recovery += 1;
        self.send_nacks(now);
    }

    /// The latency budget of recovery now (zero: off).
    fn budget(&self) -> Duration {
        let s = &self.settings;
        s.latency.unwrap_or_else(|| {
            let rtt = self
                .current
                .and_then(|c| self.edges[c].rtt)
                .unwrap_or_default();
            rtt.mul_f64(s.latency_rtt_factor).max(s.latency_floor)
        })
    }

    /// How long a hole asked for waits before it is asked again: 1.5 round trips of the edge
    /// asked, at least `nack_floor`.
    fn nack_interval(&self) -> Duration {
        let rtt = self
            .recovery_edge
            .or(self.current)
            .and_then(|e| self.edges[e].rtt)
            .unwrap_or_default();
        rtt.mul_f64(1.5).max(self.settings.nack_floor)
    }

    /// Asks the edge for the holes due now (one NACK datagram).
    fn send_nacks(&mut self, now: Instant) {
        let (Some(e), Some(stream), Some(epoch)) = (
            self.recovery_edge,
            self.want.as_ref().map(|w| w.stream),
            self.seq.epoch,
        ) else {
            return;
        };
        // Without a cookie the edge would only challenge; the next tick asks again.
        let Some(cookie) = self.edges[e].cookie else {
            return;
        };
        let interval = self.nack_interval();
        let holes = self.recovery.due(now, self.seq.last, interval);
        if holes.is_empty() {
            return;
        }
        self.stats.nacks_sent += 1;
        self.stats.nack_holes += holes.len() as u64;
        self.send(
            e,
            ClientMsg::Nack(Nack {
                cookie,
                stream,
                epoch,
                holes,
            }),
        );
    }

    /// The edge asked for the holes cannot send these chunks: they are given up as soon as
    /// they are the first hole, without waiting for the budget.
    fn nack_miss(&mut self, now: Instant, e: usize, m: NackMiss) {
        if self.want.as_ref().is_none_or_stream(m.stream)
            || self.seq.epoch != Some(m.epoch)
            || self.recovery_edge != Some(e)
        {
            self.stats.stale_dropped += 1;
            return;
        }
        self.stats.nack_missed_chunks += m.seqs.len() as u64;
        for seq in m.seqs {
            self.recovery.abandon(seq);
        }
        while self.recovery.first_hole_abandoned(self.seq.last) {
            self.give_up_hole(now);
        }
    }

    /// Hands over the held datagrams that now follow the last one handed over.
    fn release_recovered(&mut self, now: Instant) {
        while let Some(h) = self.recovery.pop_next(self.seq.last) {
            self.release(now, h);
        }
    }

    /// Gives up the first hole: the held datagrams go to the player in order past it.
    fn give_up_hole(&mut self, now: Instant) {
        if let Some(h) = self.recovery.pop_first() {
            if self.seq.would_gap(&h.data) {
                self.stats.unrecovered_holes += 1;
            }
            self.release(now, h);
        }
        self.release_recovered(now);
    }

    /// Hands over everything held, in order (recovery stops: another epoch, or recovery off).
    fn flush_recovery(&mut self, now: Instant) {
        while !self.recovery.is_empty() {
            self.give_up_hole(now);
        }
    }

    fn release(&mut self, now: Instant, h: Held) {
        let held = now.saturating_duration_since(h.arrived);
        let us = held.as_micros() as u64;
        self.stats.recovery_delay_max_us = self.stats.recovery_delay_max_us.max(us);
        self.stats.recovery_delay_total_us += us;
        self.sequence_now(now, h.edge, h.data);
    }

    /// Recovery's timers: holes whose budget ran out are given up; holes due are asked again.
    fn recovery_tick(&mut self, now: Instant) {
        while self
            .recovery
            .deadline(self.budget())
            .is_some_and(|t| now >= t)
        {
            self.give_up_hole(now);
        }
        self.send_nacks(now);
    }

    /// Orders one datagram for the player (duplicates, late datagrams and abandoned epochs
    /// are dropped and counted; holes counted).
    fn sequence_now(&mut self, now: Instant, e: usize, d: VideoData) {
        let at = Arrival {
            now,
            from_session: self.session.as_ref().is_some_and(|a| a.edge == e),
        };
        let verdict = self.seq.check(&d, at);
        match verdict {
            Verdict::Duplicate => self.stats.duplicates_dropped += 1,
            Verdict::Late => self.stats.reordered_dropped += 1,
            Verdict::StaleEpoch => self.stats.stale_dropped += 1,
            Verdict::Deliver {
                gap,
                missing,
                new_chunk,
            } => {
                let key = (d.epoch, d.seq, d.part);
                match self.audit {
                    Some(last) if last.0 == key.0 && key == last => {
                        self.stats.delivered_duplicates += 1
                    }
                    Some(last) if last.0 == key.0 && key < last => {
                        self.stats.delivered_reorderings += 1
                    }
                    Some(last) if last.0 != key.0 => self.stats.epoch_changes += 1,
                    _ => {}
                }
                self.audit = Some(key);
                if gap {
                    self.stats.gaps += 1;
                    self.stats.missing_chunks += missing;
                }
                if new_chunk {
                    self.stats.chunks += 1;
                }
                if d.flags & VIDEO_FLAG_RETRANSMIT != 0 {
                    self.stats.recovered += 1;
                }
                self.mark_session_data(e);
                self.deliver(now, e, d.payload);
            }
        }
    }

    /// The session's edge delivered to the player: from now on it alone feeds it.
    fn mark_session_data(&mut self, e: usize) {
        let Some(att) = self.session.as_mut().filter(|a| a.edge == e) else {
            return;
        };
        if att.got_data {
            return;
        }
        att.got_data = true;
        let edge = self.edges[e].addr;
        let video = self
            .want
            .as_ref()
            .map(|w| w.video.clone())
            .unwrap_or_default();
        info!(%video, %edge, "receiving video from edge");
        self.event(ClientEvent::FirstData { video, edge });
    }

    fn raw_video(&mut self, now: Instant, e: usize, datagram: Bytes) {
        self.edges[e].last_data = Some(now);
        let Some(stream) = self.want.as_ref().map(|w| w.stream) else {
            self.stats.stale_dropped += 1;
            return;
        };
        self.session_edge_heard(now, e);
        if self.standby_mut(e).is_some() {
            // No numbers: the standby edge's first video completes the move (a continuing
            // session there starts at the live point).
            self.complete_standby(now);
        }
        if !self.accepts_from(e, stream) {
            self.stats.stale_dropped += 1;
            return;
        }
        let datagram = match self.raw_trim.trim(e, &datagram) {
            (_, 0) => datagram,
            (kept, dropped) => {
                self.stats.raw_trimmed_packets += dropped;
                match kept.filter(|k| !k.is_empty()) {
                    Some(k) => Bytes::from(k),
                    None => return,
                }
            }
        };
        self.stats.raw_datagrams += 1;
        self.raw_clock_update(e, &datagram);
        self.deliver(now, e, datagram);
    }

    /// Video of `stream` from edge `e` may reach the player: the session's edge, or the edge
    /// being left while the new one has delivered nothing.
    fn accepts_from(&mut self, e: usize, stream: u32) -> bool {
        if self.want.as_ref().is_none_or_stream(stream) {
            return false;
        }
        let session_delivers = self.session.as_ref().is_some_and(|a| a.got_data);
        if self.session.as_ref().is_some_and(|a| a.edge == e) {
            self.mark_session_data(e);
            return true;
        }
        self.draining.as_ref().is_some_and(|d| d.edge == e) && !session_delivers
    }

    fn deliver(&mut self, now: Instant, e: usize, payload: Bytes) {
        self.account(now);
        let edge = &mut self.edges[e];
        if edge.first_used.is_none() {
            // Datagram count only grows: it orders edges by first use.
            edge.first_used = Some(self.stats.datagrams);
        }
        edge.bytes += payload.len() as u64;
        self.stats.bytes += payload.len() as u64;
        self.stats.datagrams += 1;
        if let Some(w) = &mut self.want {
            w.delivered = true;
        }
        self.outputs.push_back(ClientOutput::Deliver(payload));
    }

    fn send(&mut self, e: usize, msg: ClientMsg) {
        match msg.to_bytes() {
            Ok(bytes) => self.outputs.push_back(ClientOutput::Send {
                to: self.edges[e].addr,
                bytes,
            }),
            Err(err) => debug!(error = %err, "cannot encode request"),
        }
    }

    fn send_cancel(&mut self, e: usize, stream: u32) {
        // Without a cookie the edge would only challenge: the lease ends the session then.
        if let Some(cookie) = self.edges[e].cookie {
            self.send(e, ClientMsg::VideoCancel(VideoCancel { cookie, stream }));
        }
    }

    fn event(&mut self, ev: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(ev));
    }

    fn alive(&self, e: usize, now: Instant) -> bool {
        self.edges[e]
            .last_ack
            .is_some_and(|t| now.saturating_duration_since(t) <= self.settings.dead_after)
    }

    /// Last sign of life of an edge in use: an ack, data, or the moment it was chosen.
    fn heard(&self, e: usize) -> Instant {
        let edge = &self.edges[e];
        [edge.last_ack, edge.last_data, Some(self.chosen_at)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.chosen_at)
    }

    fn score(&self, e: usize) -> Option<Duration> {
        let edge = &self.edges[e];
        edge.rtt
            .map(|rtt| rtt + self.settings.loss_penalty.mul_f64(loss(edge)))
    }

    /// The best live, not busy edge other than `except`; one that is leaving only when no
    /// other is alive (it still serves until it goes).
    fn best(&self, now: Instant, except: Option<usize>) -> Option<usize> {
        let pick = |leaving: bool| {
            (0..self.edges.len())
                .filter(|&i| Some(i) != except && self.alive(i, now))
                .filter(|&i| self.edges[i].busy_until.map_or(true, |t| now >= t))
                .filter(|&i| self.leaving(i, now) == leaving)
                .filter_map(|i| self.score(i).map(|s| (s, i)))
                .min()
                .map(|(_, i)| i)
        };
        pick(false).or_else(|| pick(true))
    }

    /// [`Self::best`], never a leaving edge.
    fn best_staying(&self, now: Instant, except: Option<usize>) -> Option<usize> {
        self.best(now, except).filter(|&i| !self.leaving(i, now))
    }

    fn unaccounted(&self, e: usize, now: Instant) -> Duration {
        match (&self.session, &self.want) {
            (Some(att), Some(_)) if att.edge == e && att.got_data => {
                now.saturating_duration_since(self.accounted_at)
            }
            _ => Duration::ZERO,
        }
    }

    /// Adds the time since the last call to the session edge's usage.
    fn account(&mut self, now: Instant) {
        if let Some(att) = &self.session {
            let extra = self.unaccounted(att.edge, now);
            self.edges[att.edge].used += extra;
        }
        self.accounted_at = now;
    }

    fn switch_to(&mut self, now: Instant, idx: usize, reason: SwitchReason) {
        let previous = self.current.map(|i| self.edges[i].addr);
        if previous.is_some() {
            self.stats.edge_switches += 1;
        }
        self.current = Some(idx);
        self.chosen_at = now;
        self.better = None;
        self.lost_reported = false;
        let edge = self.edges[idx].addr;
        info!(%edge, previous = ?previous, reason = reason.as_str(), "edge chosen");
        self.event(ClientEvent::EdgeChosen {
            edge,
            previous,
            reason,
        });
    }

    fn probe(&mut self, now: Instant) {
        for e in 0..self.edges.len() {
            let timeout = self.settings.probe_timeout;
            let window = self.settings.loss_window;
            let edge = &mut self.edges[e];
            while let Some(&(_, sent)) = edge.pending.front() {
                if now.saturating_duration_since(sent) < timeout {
                    break;
                }
                edge.pending.pop_front();
                push_outcome(edge, true, window);
            }
            if now >= edge.next_probe {
                self.send_probe(e, now);
            }
        }
    }

    /// Probes edge `e` now; the next regular probe follows one interval later.
    fn send_probe(&mut self, e: usize, now: Instant) {
        let token = probe_token(self.settings.token_key, self.next_token);
        self.next_token += 1;
        let edge = &mut self.edges[e];
        edge.pending.push_back((token, now));
        edge.next_probe = now + self.settings.probe_interval;
        self.send(e, ClientMsg::Probe(Probe { token }));
    }

    /// Edge choice, session placement, retransmissions and keepalives.
    fn drive(&mut self, now: Instant) {
        self.account(now);
        if self.hold_until.is_some_and(|t| now >= t) {
            self.release_held(now);
        }
        self.check_suspicion(now);
        self.choose(now);
        self.place_session(now);
        self.retransmit(now);
        self.recovery_tick(now);
    }

    fn choose(&mut self, now: Instant) {
        let s = self.settings.clone();
        match self.current {
            None => {
                let pick = match self.choice {
                    EdgeChoice::Auto => {
                        let all_answered = self.edges.iter().all(|e| e.last_ack.is_some());
                        let settled = self.first_ack_at.is_some_and(|t| now >= t + s.settle);
                        if all_answered || settled {
                            self.best(now, None)
                        } else {
                            None
                        }
                    }
                    EdgeChoice::Pinned(addr) => self
                        .edges
                        .iter()
                        .position(|e| e.addr == addr)
                        .filter(|&i| self.alive(i, now)),
                };
                if let Some(i) = pick {
                    self.switch_to(now, i, SwitchReason::Initial);
                } else if !self.no_edge_reported
                    && self.first_ack_at.is_none()
                    && now >= self.start + s.no_edge_timeout
                {
                    self.no_edge_reported = true;
                    self.event(ClientEvent::NoEdge {
                        waited: now.saturating_duration_since(self.start),
                    });
                }
            }
            Some(c) => {
                // A leaving edge is left as soon as another can take the session, whatever
                // the choice (pinned included: it is going away).
                if self.leaving(c, now) {
                    if let Some(alt) = self.best_staying(now, Some(c)) {
                        self.switch_to(now, alt, SwitchReason::Drained);
                        return;
                    }
                }
                if now.saturating_duration_since(self.heard(c)) > s.dead_after {
                    match self.best(now, Some(c)) {
                        Some(alt) => self.switch_to(now, alt, SwitchReason::Dead),
                        None if !self.lost_reported => {
                            self.lost_reported = true;
                            let edge = self.edges[c].addr;
                            info!(%edge, "edge silent and no other edge alive");
                            self.event(ClientEvent::EdgeLost { edge });
                        }
                        None => {}
                    }
                    return;
                }
                self.lost_reported = false;
                if self.choice != EdgeChoice::Auto
                    || now.saturating_duration_since(self.chosen_at) < s.min_dwell
                {
                    self.better = None;
                    return;
                }
                let candidate = self.best_staying(now, Some(c)).filter(|&alt| {
                    match (self.score(alt), self.score(c)) {
                        (Some(a), Some(cur)) => {
                            a < cur.mul_f64(s.switch_ratio) && a + s.switch_min_gain < cur
                        }
                        _ => false,
                    }
                });
                match (candidate, self.better) {
                    (Some(alt), Some((b, since))) if alt == b => {
                        if now >= since + s.switch_hold {
                            self.switch_to(now, alt, SwitchReason::Degraded);
                        }
                    }
                    (Some(alt), _) => self.better = Some((alt, now)),
                    (None, _) => self.better = None,
                }
            }
        }
    }

    fn place_session(&mut self, now: Instant) {
        let (Some(c), Some(want)) = (self.current, &self.want) else {
            return;
        };
        let stream = want.stream;
        if self.session.as_ref().is_some_and(|a| a.edge == c) {
            return;
        }
        // Datagrams held for the session being left go out before it changes role.
        if !self.held.is_empty() {
            self.release_held(now);
        }
        // A suspicion ends with the move: its standby edge, if it is the new one, is the
        // session already asked.
        let standby = self.suspect.take().and_then(|s| s.standby);
        let mut adopted = None;
        if let Some(sb) = standby {
            if sb.edge == c {
                adopted = Some(sb);
            } else {
                self.send_cancel(sb.edge, stream);
            }
        }
        self.gaps.restart();
        if let Some(old) = self.session.take() {
            // Make-before-break: an old edge still alive keeps feeding until the new one
            // delivers; a dead one is cancelled at once (in case it is only mute).
            if old.got_data && self.alive(old.edge, now) {
                if let Some(d) = self.draining.replace(Attachment { since: now, ..old }) {
                    self.send_cancel(d.edge, stream);
                }
            } else {
                self.send_cancel(old.edge, stream);
            }
        }
        if self.draining.as_ref().is_some_and(|d| d.edge == c) {
            // Coming back to the edge being left: it is the session again.
            self.session = self.draining.take();
            return;
        }
        if adopted.is_some() {
            self.session = adopted;
            return;
        }
        self.session = Some(Attachment {
            edge: c,
            accepted: false,
            got_data: false,
            last_request: None,
            last_keepalive: None,
            since: now,
        });
    }

    fn retransmit(&mut self, now: Instant) {
        let s = self.settings.clone();
        if let Some(want) = &self.want {
            let (stream, video, continuing) = (want.stream, want.video.clone(), want.delivered);
            if let Some(mut att) = self.session.take() {
                self.request_or_keepalive(now, &mut att, stream, &video, continuing);
                self.session = Some(att);
            }
            if let Some(mut att) = self.suspect.as_mut().and_then(|s| s.standby.take()) {
                // Always a continuation: the player is mid-stream.
                self.request_or_keepalive(now, &mut att, stream, &video, true);
                if let Some(sus) = &mut self.suspect {
                    sus.standby = Some(att);
                }
            }
            if let Some(mut d) = self.draining.take() {
                let new_delivers = self.session.as_ref().is_some_and(|a| a.got_data);
                if new_delivers || now >= d.since + s.drain_limit {
                    self.send_cancel(d.edge, stream);
                    self.release_held(now);
                } else {
                    self.keepalive(now, &mut d, stream);
                    self.draining = Some(d);
                }
            }
        }
        if self.list_wanted {
            if let Some(c) = self.current {
                let due = self.list_last.map_or(true, |t| now >= t + s.request_retry);
                if let (true, Some(cookie)) = (due, self.edges[c].cookie) {
                    self.list_last = Some(now);
                    self.send(c, ClientMsg::ListRequest(ListRequest { cookie }));
                }
            }
        }
    }

    /// The request of an attachment not yet accepted (again every `request_retry`), else its
    /// keepalive.
    fn request_or_keepalive(
        &mut self,
        now: Instant,
        att: &mut Attachment,
        stream: u32,
        video: &str,
        continuing: bool,
    ) {
        if att.accepted {
            self.keepalive(now, att, stream);
            return;
        }
        let due = att
            .last_request
            .map_or(true, |t| now >= t + self.settings.request_retry);
        if let (true, Some(cookie)) = (due, self.edges[att.edge].cookie) {
            att.last_request = Some(now);
            let flags = if continuing { REQUEST_FLAG_CONTINUE } else { 0 };
            self.send(
                att.edge,
                ClientMsg::VideoRequest(VideoRequest {
                    cookie,
                    stream,
                    flags,
                    video: video.to_owned(),
                }),
            );
        }
    }

    fn keepalive(&mut self, now: Instant, att: &mut Attachment, stream: u32) {
        let due = att
            .last_keepalive
            .map_or(true, |t| now >= t + self.settings.keepalive_interval);
        if let (true, Some(cookie)) = (due, self.edges[att.edge].cookie) {
            att.last_keepalive = Some(now);
            self.send(att.edge, ClientMsg::Keepalive(Keepalive { cookie, stream }));
        }
    }
}

trait WantExt {
    /// True when there is no wanted video or `stream` is not its stream.
    fn is_none_or_stream(&self, stream: u32) -> bool;
}

impl WantExt for Option<&Want> {
    fn is_none_or_stream(&self, stream: u32) -> bool {
        self.map_or(true, |w| w.stream != stream)
    }
}

/// Pinning an address that is not one of the client's edges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not one of this client's edges")]
pub struct UnknownEdge(pub SocketAddr);

/// The `n`th probe token under `key`: a keyed permutation of the counter (the SplitMix64
/// finaliser), so tokens never repeat within a run and cannot be told from random by a host
/// that does not know the key.
fn probe_token(key: u64, n: u64) -> u64 {
    let mut z = key ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn loss(e: &EdgeState) -> f64 {
    if e.window.is_empty() {
        0.0
    } else {
        e.window.iter().filter(|&&lost| lost).count() as f64 / e.window.len() as f64
    }
}

fn push_outcome(e: &mut EdgeState, lost: bool, window: usize) {
    e.window.push_back(lost);
    while e.window.len() > window.max(1) {
        e.window.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::edge::{EdgeConfig, EdgeOutput, EdgeService};
    use crate::wire::client::{put_video_header, NackHole, TS_PACKET_LEN, TS_SYNC};
    use bytes::BytesMut;

    const TICK: Duration = Duration::from_millis(5);
    const CHUNK_EVERY: Duration = Duration::from_millis(40);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A chunk of `packets` TS packets, each stamped with (seq, packet index) so the output
    /// order can be checked packet by packet.
    fn chunk(seq: u64, packets: usize) -> Bytes {
        let mut v = Vec::new();
        for i in 0..packets {
            let mut p = vec![0u8; TS_PACKET_LEN];
            p[0] = TS_SYNC;
            p[1..9].copy_from_slice(&seq.to_be_bytes());
            p[9] = i as u8;
            v.extend_from_slice(&p);
        }
        Bytes::from(v)
    }

    /// (seq, packet index) of every TS packet handed to the player.
    fn stamps(delivered: &[Bytes]) -> Vec<(u64, u8)> {
        delivered
            .iter()
            .flat_map(|d| d.chunks(TS_PACKET_LEN))
            .map(|p| (u64::from_be_bytes(p[1..9].try_into().unwrap()), p[9]))
            .collect()
    }

    struct SimEdge {
        addr: SocketAddr,
        /// Where the edge's datagrams come from, when not `addr` (a multi-homed edge whose
        /// replies take the address of the interface they leave by).
        replies_from: Option<SocketAddr>,
        svc: EdgeService,
        up: bool,
        delay: Duration,
    }

    /// A deterministic network: one client, real edge services, per-edge one-way delay, a
    /// source feeding every edge's subscribed videos like the overlay would.
    struct Net {
        now: Instant,
        client: ClientService,
        me: SocketAddr,
        edges: Vec<SimEdge>,
        flights: Vec<(Instant, SocketAddr, SocketAddr, Bytes)>,
        delivered: Vec<Bytes>,
        events: Vec<ClientEvent>,
        next_chunk: Instant,
        seq: u64,
        subscribes: Vec<(SocketAddr, String)>,
        unsubscribes: Vec<(SocketAddr, String)>,
        /// Percent of the edges' datagrams to the client lost on the way (xorshift state).
        loss_percent: u64,
        rng: u64,
        lost: u64,
    }

    impl Net {
        fn new(delays_ms: &[u64], choice: EdgeChoice, settings: ClientSettings) -> Net {
            let now = Instant::now();
            let edges: Vec<SimEdge> = delays_ms
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut svc = EdgeService::new(
                        EdgeConfig {
                            cookie_secret: [i as u8; 32],
                            ..EdgeConfig::default()
                        },
                        now,
                    );
                    svc.set_videos(now, vec!["v1".into(), "v2".into()]);
                    SimEdge {
                        addr: SocketAddr::new([10, 0, i as u8 + 1, 1].into(), 7702),
                        replies_from: None,
                        svc,
                        up: true,
                        delay: Duration::from_millis(*d),
                    }
                })
                .collect();
            let client = ClientService::new(
                settings,
                edges.iter().map(|e| e.addr).collect(),
                choice,
                now,
            );
            Net {
                now,
                client,
                me: addr("10.0.9.1:7703"),
                edges,
                flights: Vec::new(),
                delivered: Vec::new(),
                events: Vec::new(),
                next_chunk: now,
                seq: 0,
                subscribes: Vec::new(),
                unsubscribes: Vec::new(),
                loss_percent: 0,
                rng: 0x9E37_79B9_7F4A_7C15,
                lost: 0,
            }
        }

        /// Whether the next datagram from an edge is lost.
        fn lose(&mut self) -> bool {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let lost = self.rng % 100 < self.loss_percent;
            self.lost += u64::from(lost);
            lost
        }

        fn edge_index(&self, a: SocketAddr) -> Option<usize> {
            self.edges.iter().position(|e| e.addr == a)
        }

        fn collect(&mut self) {
            while let Some(o) = self.client.poll_output() {
                match o {
                    ClientOutput::Send { to, bytes } => {
                        if let Some(i) = self.edge_index(to) {
                            let at = self.now + self.edges[i].delay;
                            self.flights.push((at, self.me, to, bytes));
                        }
                    }
                    ClientOutput::Deliver(b) => self.delivered.push(b),
                    ClientOutput::Event(e) => self.events.push(e),
                }
            }
            for i in 0..self.edges.len() {
                while let Some(o) = self.edges[i].svc.poll_output() {
                    let from = self.edges[i].replies_from.unwrap_or(self.edges[i].addr);
                    match o {
                        EdgeOutput::Control { to, bytes, .. }
                        | EdgeOutput::Video { to, bytes, .. }
                            if self.edges[i].up && !self.lose() =>
                        {
                            let at = self.now + self.edges[i].delay;
                            self.flights.push((at, from, to, bytes));
                        }
                        EdgeOutput::Subscribe { video } => self.subscribes.push((from, video)),
                        EdgeOutput::Unsubscribe { video } => self.unsubscribes.push((from, video)),
                        _ => {}
                    }
                }
            }
        }

        fn step(&mut self) {
            self.now += TICK;
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.flights.drain(..).partition(|(at, ..)| *at <= now);
            self.flights = later;
            for (_, from, to, bytes) in due {
                if to == self.me {
                    self.client.handle_datagram(now, from, bytes);
                } else if let Some(i) = self.edge_index(to) {
                    if self.edges[i].up {
                        self.edges[i].svc.handle_datagram(now, from, None, bytes);
                    }
                }
            }
            if now >= self.next_chunk {
                self.next_chunk = now + CHUNK_EVERY;
                let keyframe = self.seq % 25 == 0;
                for e in self.edges.iter_mut().filter(|e| e.up) {
                    for v in ["v1", "v2"] {
                        e.svc
                            .handle_chunk(now, v, 1, self.seq, keyframe, chunk(self.seq, 10));
                    }
                }
                self.seq += 1;
            }
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
            for e in self.edges.iter_mut().filter(|e| e.up) {
                if e.svc.poll_timeout().is_some_and(|t| t <= now) {
                    e.svc.handle_timeout(now);
                }
            }
            self.collect();
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.step();
            }
        }

        fn play(&mut self, video: &str) {
            self.client.play(self.now, video);
            self.collect();
        }

        fn switches(&self) -> Vec<(SocketAddr, SwitchReason)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::EdgeChosen { edge, reason, .. } => Some((*edge, *reason)),
                    _ => None,
                })
                .collect()
        }

        /// The output must be strictly increasing, packet by packet.
        fn assert_in_order(&self) -> usize {
            let s = stamps(&self.delivered);
            for w in s.windows(2) {
                assert!(
                    w[0] < w[1],
                    "out of order or duplicate: {:?} then {:?}",
                    w[0],
                    w[1]
                );
            }
            s.len()
        }
    }

    #[test]
    fn auto_picks_the_fastest_edge_and_plays_from_a_keyframe_in_order() {
        let mut net = Net::new(&[30, 5, 15], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        assert_eq!(net.switches(), [(net.edges[1].addr, SwitchReason::Initial)]);
        net.client.request_list(net.now);
        net.run(Duration::from_millis(100));
        assert!(net.events.contains(&ClientEvent::VideoList {
            edge: net.edges[1].addr,
            videos: vec!["v1".into(), "v2".into()]
        }));
        net.play("v1");
        net.run(Duration::from_secs(3));
        assert!(net
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Accepted { .. })));
        let packets = net.assert_in_order();
        assert!(packets > 300, "{packets}");
        // The first chunk the player gets starts a GOP (seq multiple of 25).
        assert_eq!(stamps(&net.delivered)[0].0 % 25, 0);
        let st = net.client.stats(net.now);
        assert_eq!(
            (st.gaps, st.delivered_duplicates, st.delivered_reorderings),
            (0, 0, 0)
        );
        assert_eq!(st.edges.len(), 1);
        assert_eq!(st.edges[0].edge, net.edges[1].addr);
        assert!(st.edges[0].time >= Duration::from_millis(1500));
        let table = net.client.edges(net.now);
        assert!(table[1].chosen && table.iter().all(|e| e.alive && e.loss == 0.0));
        let rtt = table[0].rtt.unwrap();
        assert!(
            rtt >= Duration::from_millis(60) && rtt <= Duration::from_millis(70),
            "{rtt:?}"
        );
        // Only the chosen edge subscribed.
        assert_eq!(net.subscribes, [(net.edges[1].addr, "v1".to_string())]);
    }

    #[test]
    fn edge_death_mid_stream_moves_to_the_next_edge_without_duplicates_or_reordering() {
        // The rule before stream-based suspicion: silence for `dead_after`.
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, old_rule());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(3));
        let before = net.assert_in_order();
        net.edges[0].up = false; // silent death: nothing in or out
        let died = net.now;
        net.run(Duration::from_secs(3));
        let switches = net.switches();
        assert_eq!(
            switches.last(),
            Some(&(net.edges[1].addr, SwitchReason::Dead))
        );
        let after = net.assert_in_order();
        assert!(after > before + 300, "{before} -> {after}");
        let st = net.client.stats(net.now);
        assert_eq!(st.edges.len(), 2);
        assert_eq!(st.edge_switches, 1);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        // What was lost while the dead edge was silent is one hole of about a second.
        assert_eq!(st.gaps, 1, "{st:?}");
        assert!(st.missing_chunks <= 35, "{st:?}");
        // Switch within about dead_after (+ a probe interval).
        let first_from_b = net.events.iter().any(
            |e| matches!(e, ClientEvent::FirstData { edge, .. } if *edge == net.edges[1].addr),
        );
        assert!(first_from_b);
        let _ = died;
    }

    #[test]
    fn an_edge_answering_from_another_address_is_recognised_by_its_tokens() {
        // The second edge answers from an address the client never probed, as a multi-homed
        // edge bound to all addresses without source-address control would through routers.
        let settings = ClientSettings {
            token_key: 0x5eed,
            ..ClientSettings::default()
        };
        let mut net = Net::new(&[5, 20], EdgeChoice::Auto, settings);
        let other = addr("10.0.77.1:7702");
        net.edges[1].replies_from = Some(other);
        net.play("v1");
        net.run(Duration::from_secs(2));
        let edges = net.client.edges(net.now);
        assert!(edges[1].alive && edges[1].rtt.is_some(), "{edges:?}");
        assert_eq!(net.client.stats(net.now).reply_addresses_learned, 1);
        // Its datagrams count as the edge's: when the first edge dies the session moves there
        // and the video goes on, in order.
        net.edges[0].up = false;
        let before = net.delivered.len();
        net.run(Duration::from_secs(4));
        assert_eq!(net.client.current_edge(), Some(net.edges[1].addr));
        assert!(
            net.delivered.len() > before + 20,
            "video goes on from the second edge"
        );
        net.assert_in_order();
    }

    #[test]
    fn datagrams_from_unknown_addresses_without_a_token_are_dropped() {
        let (mut c, e, now) = playing();
        let stranger = addr("10.0.66.6:7702");
        let stale = c.stats(now).stale_dropped;
        // A guessed token (the first ones of the unkeyed counter) proves nothing; neither does
        // video.
        for token in [1, 2, 3] {
            let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck { token, cookie: 1 });
            c.handle_datagram(now, stranger, ack.to_bytes().unwrap());
        }
        c.handle_datagram(now, stranger, framed(1, 1, 1, 0, 1));
        let stats = c.stats(now);
        assert_eq!(stats.stale_dropped, stale + 4);
        assert_eq!((stats.reply_addresses_learned, stats.datagrams), (0, 0));
        // The real edge's video still counts.
        c.handle_datagram(now, e, framed(1, 1, 1, 0, 1));
        assert_eq!(c.stats(now).datagrams, 1);
    }

    #[test]
    fn switch_happens_within_about_a_second_of_silence() {
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, old_rule());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(2));
        net.edges[0].up = false;
        let t0 = net.now;
        while net.switches().len() < 2 {
            net.step();
            assert!(net.now < t0 + Duration::from_secs(3), "no switch");
        }
        let took = net.now - t0;
        assert!(took <= Duration::from_millis(1300), "{took:?}");
    }

    #[test]
    fn degradation_switches_after_the_hold_and_spikes_do_not() {
        // The spike below stalls the stream for 195 ms, which the stream rule rightly takes
        // for a stall (see `a_stalled_edge_...`); here only the degradation rule is tested.
        let mut net = Net::new(&[5, 20], EdgeChoice::Auto, old_rule());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(4));
        // Slightly worse than the other edge, inside the margin: stays.
        net.edges[0].delay = Duration::from_millis(25);
        net.run(Duration::from_secs(4));
        assert_eq!(net.switches().len(), 1);
        // A short spike (shorter than the hold): the EWMA rises, then falls back; no switch.
        net.edges[0].delay = Duration::from_millis(200);
        net.run(Duration::from_millis(400));
        net.edges[0].delay = Duration::from_millis(5);
        net.run(Duration::from_secs(4));
        assert_eq!(net.switches().len(), 1, "{:?}", net.switches());
        // (The spike's end reorders datagrams in flight: the late ones are dropped.)
        let gaps_before = net.client.stats(net.now).gaps;
        // Lasting degradation: switch.
        net.edges[0].delay = Duration::from_millis(150);
        net.run(Duration::from_secs(5));
        assert_eq!(
            net.switches().last(),
            Some(&(net.edges[1].addr, SwitchReason::Degraded))
        );
        net.assert_in_order();
        let st = net.client.stats(net.now);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        // Make-before-break: the old edge was cancelled once the new one delivered.
        net.run(Duration::from_secs(4));
        assert!(net
            .unsubscribes
            .contains(&(net.edges[0].addr, "v1".to_string())));
        // The new edge is ahead of the old one: its first datagrams waited for the old edge,
        // so the switch itself left no hole.
        assert_eq!(st.gaps, gaps_before, "{st:?}");
    }

    #[test]
    fn pinned_edge_is_kept_when_worse_but_left_when_dead() {
        let mut net = Net::new(
            &[30, 5],
            EdgeChoice::Pinned(addr("10.0.1.1:7702")),
            old_rule(),
        );
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(6));
        assert_eq!(net.switches(), [(net.edges[0].addr, SwitchReason::Initial)]);
        net.edges[0].up = false;
        net.run(Duration::from_secs(2));
        assert_eq!(
            net.switches().last(),
            Some(&(net.edges[1].addr, SwitchReason::Dead))
        );
        assert!(net
            .client
            .set_choice(net.now, EdgeChoice::Pinned(addr("1.2.3.4:5")))
            .is_err());
    }

    #[test]
    fn user_pick_moves_the_session() {
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(2));
        let b = net.edges[1].addr;
        net.client
            .set_choice(net.now, EdgeChoice::Pinned(b))
            .unwrap();
        net.run(Duration::from_secs(2));
        assert_eq!(net.switches().last(), Some(&(b, SwitchReason::User)));
        assert_eq!(net.client.stats(net.now).edges.len(), 2);
        net.assert_in_order();
    }

    #[test]
    fn no_edge_answering_is_reported() {
        let mut net = Net::new(&[5, 5], EdgeChoice::Auto, ClientSettings::default());
        for e in &mut net.edges {
            e.up = false;
        }
        net.run(Duration::from_secs(6));
        assert!(matches!(
            net.events.as_slice(),
            [ClientEvent::NoEdge { .. }]
        ));
        let table = net.client.edges(net.now);
        assert!(table.iter().all(|e| !e.alive && e.loss == 1.0));
    }

    #[test]
    fn unknown_video_is_retried_during_the_grace_then_reported() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("nope");
        net.run(Duration::from_secs(2));
        assert!(!net
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::VideoError { .. })));
        // The edge learns the video within the grace: it plays.
        let now = net.now;
        net.edges[0].svc.set_videos(now, vec!["nope".into()]);
        net.run(Duration::from_secs(2));
        assert!(net
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Accepted { .. })));

        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("nope");
        net.run(Duration::from_secs(4));
        assert!(net.events.iter().any(|e| matches!(
            e,
            ClientEvent::VideoError {
                code: ErrorCode::UnknownVideo,
                ..
            }
        )));
        assert_eq!(net.client.video(), None);
    }

    #[test]
    fn a_restarted_edge_is_asked_again_until_it_knows_the_video() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(6));
        let before = net.delivered.len();
        assert!(before > 0);
        // The edge restarts: a new cookie secret, no session, and no routes for a while.
        let now = net.now;
        net.edges[0].svc = EdgeService::new(
            EdgeConfig {
                cookie_secret: [42; 32],
                ..EdgeConfig::default()
            },
            now,
        );
        net.run(Duration::from_millis(2500));
        net.edges[0].svc.set_videos(net.now, vec!["v1".into()]);
        net.run(Duration::from_secs(2));
        assert!(
            !net.events
                .iter()
                .any(|e| matches!(e, ClientEvent::VideoError { .. })),
            "{:?}",
            net.events
        );
        assert_eq!(net.client.video(), Some("v1"));
        assert!(net.delivered.len() > before, "nothing after the restart");
        net.assert_in_order();
    }

    #[test]
    fn stop_and_switch_video() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(2));
        net.play("v2");
        net.run(Duration::from_secs(2));
        assert!(net
            .unsubscribes
            .contains(&(net.edges[0].addr, "v1".to_string())));
        net.client.stop(net.now);
        net.collect();
        net.run(Duration::from_millis(200));
        assert!(net
            .unsubscribes
            .contains(&(net.edges[0].addr, "v2".to_string())));
        assert_eq!(net.edges[0].svc.sessions().count(), 0);
    }

    #[test]
    fn keepalives_hold_the_lease_and_a_vanished_client_is_expired() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(10));
        assert_eq!(net.edges[0].svc.sessions().count(), 1);
        assert!(net.unsubscribes.is_empty());
        // The client vanishes: only the edge keeps running.
        let end = net.now + Duration::from_secs(4);
        while net.now < end {
            net.now += TICK;
            let now = net.now;
            net.edges[0].svc.handle_timeout(now);
        }
        net.collect();
        assert_eq!(net.unsubscribes, [(net.edges[0].addr, "v1".to_string())]);
    }

    #[test]
    fn an_edge_that_forgot_the_session_is_asked_again() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(1));
        // The edge restarts (new secret, no sessions).
        let now = net.now;
        net.edges[0].svc = EdgeService::new(EdgeConfig::default(), now);
        net.edges[0].svc.set_videos(now, vec!["v1".into()]);
        net.run(Duration::from_secs(2));
        assert_eq!(net.edges[0].svc.sessions().count(), 1);
        let before = net.delivered.len();
        net.run(Duration::from_secs(1));
        assert!(net.delivered.len() > before);
        net.assert_in_order();
    }

    fn old_rule() -> ClientSettings {
        ClientSettings {
            suspect_floor: None,
            ..ClientSettings::default()
        }
    }

    #[test]
    fn a_stalled_edge_is_left_for_newer_video_without_duplicates_or_reordering() {
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(3));
        // Chunks every 40 ms, two datagrams each: the peak gap is the chunk spacing.
        assert_eq!(net.client.stats(net.now).gap_peak_ms, 40);
        let before = net.assert_in_order();
        net.edges[0].up = false; // a hang: nothing in or out
        let hung = net.now;
        let mut first_from_b = None;
        while net.now < hung + Duration::from_secs(3) {
            net.step();
            if first_from_b.is_none() && net.switches().len() == 2 {
                first_from_b = Some(net.now - hung);
            }
        }
        assert_eq!(
            net.switches().last(),
            Some(&(net.edges[1].addr, SwitchReason::Stalled))
        );
        // 2 × 40 ms of silence, one tick, a request and the next chunk over 15 ms each way.
        let took = first_from_b.unwrap();
        assert!(took <= Duration::from_millis(220), "{took:?}");
        let after = net.assert_in_order();
        assert!(after > before + 300, "{before} -> {after}");
        let st = net.client.stats(net.now);
        assert_eq!(
            (st.edge_switches, st.suspicions, st.suspicions_cleared),
            (1, 1, 0)
        );
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        assert!(st.missing_chunks <= 6, "{st:?}");
        // The hung edge was cancelled (it would end its session when it wakes up).
        net.edges[0].up = true;
        net.run(Duration::from_secs(1));
        assert!(net
            .unsubscribes
            .contains(&(net.edges[0].addr, "v1".to_string())));
        assert_eq!(net.client.current_edge(), Some(net.edges[1].addr));
    }

    #[test]
    fn a_source_stall_moves_nobody_and_the_standby_edge_is_let_go() {
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(2));
        // The source pauses for 600 ms (both edges starve): the client suspects its edge and
        // asks the other, which has nothing newer; when the stream resumes the first edge
        // is heard first (it is nearer) and the other is let go.
        net.next_chunk = net.now + Duration::from_millis(600);
        net.run(Duration::from_secs(2));
        let st = net.client.stats(net.now);
        assert_eq!(net.switches().len(), 1, "{:?}", net.switches());
        assert_eq!((st.suspicions, st.suspicions_cleared), (1, 1));
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        assert!(net
            .subscribes
            .contains(&(net.edges[1].addr, "v1".to_string())));
        assert!(net
            .unsubscribes
            .contains(&(net.edges[1].addr, "v1".to_string())));
        // The pause raised the peak: the same pause again is no suspicion.
        assert!(st.gap_peak_ms >= 500, "{st:?}");
        net.next_chunk = net.now + Duration::from_millis(600);
        net.run(Duration::from_secs(2));
        assert_eq!(net.client.stats(net.now).suspicions, 1);
        net.assert_in_order();
    }

    /// A client playing stream 1 from edge `a` (the faster) with `b` alive, fed `n` framed
    /// datagrams from `a` 40 ms apart (seq 0..n); returns the time of the last.
    fn playing_two(
        settings: ClientSettings,
        n: u64,
    ) -> (ClientService, SocketAddr, SocketAddr, Instant) {
        let mut now = Instant::now();
        let (a, b) = (addr("10.0.0.1:7702"), addr("10.0.0.2:7702"));
        let mut c = ClientService::new(settings, vec![a, b], EdgeChoice::Auto, now);
        c.handle_timeout(now);
        let ack = |token, cookie| {
            ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
                token: probe_token(0, token),
                cookie,
            })
            .to_bytes()
            .unwrap()
        };
        c.handle_datagram(now, a, ack(1, 9));
        now += Duration::from_millis(10);
        c.handle_datagram(now, b, ack(2, 8));
        c.handle_timeout(now);
        assert_eq!(c.current_edge(), Some(a));
        c.play(now, "v1");
        let ok = ClientMsg::VideoOk(crate::wire::client::VideoOk {
            stream: 1,
            video: "v1".into(),
        });
        c.handle_datagram(now, a, ok.to_bytes().unwrap());
        while c.poll_output().is_some() {}
        let mut got = 0;
        for seq in 0..n {
            if seq > 0 {
                now += CHUNK_EVERY;
            }
            got += fed(&mut c, now, a, framed(1, 1, seq, 0, 1));
        }
        assert_eq!(got, n as usize);
        (c, a, b, now)
    }

    /// One datagram from `from`, then the timers, with every probe answered at once (the
    /// edges stay alive; 10.0.0.1 gives cookie 9, the other 8); returns the datagrams handed
    /// to the player.
    fn fed(c: &mut ClientService, now: Instant, from: SocketAddr, datagram: Bytes) -> usize {
        let delivered = on_time(c, now);
        c.handle_datagram(now, from, datagram);
        c.handle_timeout(now);
        delivered + answer_probes(c, now)
    }

    /// The timers due before `now` fire on time, as the driver fires them (a timer handled
    /// late would be read as a slow host: lateness), with every probe answered at once;
    /// returns the datagrams delivered meanwhile.
    fn on_time(c: &mut ClientService, now: Instant) -> usize {
        let mut delivered = 0;
        for _ in 0..100 {
            match c.poll_timeout().filter(|t| *t < now) {
                Some(t) => {
                    c.handle_timeout(t);
                    delivered += answer_probes(c, t);
                }
                None => break,
            }
        }
        delivered
    }

    /// [`on_time`], then the timers at `now`, whose outputs are left to the test.
    fn tick(c: &mut ClientService, now: Instant) {
        on_time(c, now);
        c.handle_timeout(now);
    }

    /// Takes the outputs; returns how many were probes to `edge` (left unanswered).
    fn probes_to(c: &mut ClientService, edge: SocketAddr) -> usize {
        std::iter::from_fn(|| c.poll_output())
            .filter(|o| {
                matches!(o, ClientOutput::Send { to, bytes }
                    if *to == edge && matches!(ClientMsg::decode(bytes.clone()), Ok(ClientMsg::Probe(_))))
            })
            .count()
    }

    /// The session's edge silent until `at`: the client probes it (the doubt) and nothing
    /// answers; returns the instant it is suspected, whose outputs are left to the test.
    fn doubt_unanswered(c: &mut ClientService, at: Instant) -> Instant {
        let edge = c.edges[c.current.unwrap()].addr;
        tick(c, at);
        assert_eq!(c.stats(at).suspicions, 0, "a probe comes first");
        assert_eq!(probes_to(c, edge), 1, "the silent edge is probed");
        let sus = c.suspect_at().expect("the probe's deadline");
        tick(c, sus);
        assert_eq!(c.stats(sus).suspicions, 1);
        sus
    }

    /// Takes the outputs, answering every probe at once; returns the datagrams delivered.
    fn answer_probes(c: &mut ClientService, now: Instant) -> usize {
        let mut delivered = 0;
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Deliver(_) => delivered += 1,
                ClientOutput::Send { to, bytes } => {
                    if let Ok(ClientMsg::Probe(p)) = ClientMsg::decode(bytes) {
                        let cookie = if to == addr("10.0.0.1:7702") { 9 } else { 8 };
                        let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
                            token: p.token,
                            cookie,
                        });
                        c.handle_datagram(now, to, ack.to_bytes().unwrap());
                    }
                }
                ClientOutput::Event(_) => {}
            }
        }
        delivered
    }

    /// Video requests and cancels sent, as (to, message).
    fn requests(c: &mut ClientService) -> Vec<(SocketAddr, ClientMsg)> {
        drain(c).1
    }

    /// Datagrams handed to the player, and video requests and cancels sent.
    fn drain(c: &mut ClientService) -> (usize, Vec<(SocketAddr, ClientMsg)>) {
        let mut delivered = 0;
        let mut sent = Vec::new();
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Deliver(_) => delivered += 1,
                ClientOutput::Send { to, bytes } => {
                    if let Ok(m @ (ClientMsg::VideoRequest(_) | ClientMsg::VideoCancel(_))) =
                        ClientMsg::decode(bytes)
                    {
                        sent.push((to, m))
                    }
                }
                ClientOutput::Event(_) => {}
            }
        }
        (delivered, sent)
    }

    #[test]
    fn two_peak_gaps_of_silence_probe_the_edge_and_an_unanswered_probe_asks_the_next_edge() {
        let (mut c, a, b, last) = playing_two(ClientSettings::default(), 30);
        assert_eq!(c.gaps.peak, CHUNK_EVERY);
        let at = last + 2 * CHUNK_EVERY;
        assert_eq!(c.suspect_at(), Some(at));
        assert!(c.poll_timeout().is_some_and(|t| t <= at));
        tick(&mut c, at - Duration::from_millis(1));
        assert!(probes_to(&mut c, a) == 0 && c.stats(at).suspicions == 0);
        // The doubt: the silent edge is probed at once, nothing else.
        tick(&mut c, at);
        assert_eq!(probes_to(&mut c, a), 1);
        let rtt = c.edges[0].rtt.unwrap_or_default();
        let sus = at + c.settings.suspect_probe_wait + rtt;
        assert_eq!(c.suspect_at(), Some(sus));
        tick(&mut c, sus - Duration::from_millis(1));
        assert_eq!(c.stats(sus).suspicions, 0);
        assert!(requests(&mut c).is_empty());
        // Unanswered: suspected, the next edge asked to continue.
        tick(&mut c, sus);
        assert_eq!(c.stats(sus).suspicions, 1);
        let sent = requests(&mut c);
        assert!(
            matches!(&sent[..], [(to, ClientMsg::VideoRequest(r))]
                if *to == b && r.flags & REQUEST_FLAG_CONTINUE != 0 && r.cookie == 8),
            "{sent:?}"
        );
        // Still on the old edge: the suspicion is no switch.
        assert_eq!(c.current_edge(), Some(a));
        assert_eq!(c.stats(sus).edge_switches, 0);
    }

    #[test]
    fn an_edge_that_answers_the_probe_is_given_the_mend_time_and_its_video_ends_the_doubt() {
        let (mut c, a, _, last) = playing_two(ClientSettings::default(), 30);
        let at = last + 2 * CHUNK_EVERY;
        tick(&mut c, at);
        // The edge answers at once (its host is alive; the stream stalls above it).
        answer_probes(&mut c, at);
        let mend = last + c.settings.suspect_mend;
        assert_eq!(c.suspect_at(), Some(mend));
        tick(&mut c, mend - Duration::from_millis(1));
        assert_eq!(c.stats(mend).suspicions, 0);
        // Its video comes back first: no suspicion, and the next silence starts over.
        c.handle_datagram(mend - Duration::from_millis(1), a, framed(1, 1, 30, 0, 1));
        assert_eq!(delivered(&mut c), 1);
        assert!(c.doubt.is_none());
        assert_eq!(c.stats(mend).suspicions, 0);
    }

    #[test]
    fn timers_fired_late_stretch_the_suspicion_by_twice_their_lateness() {
        let (mut c, _, b, last) = playing_two(ClientSettings::default(), 30);
        let plain = last + 2 * CHUNK_EVERY;
        assert_eq!(c.suspect_at(), Some(plain));
        // A timer handled 20 ms after it was due: the host is slow.
        let due = c.poll_timeout().unwrap();
        let late = Duration::from_millis(20);
        assert!(
            due + late < plain,
            "due {:?} after the last datagram",
            due - last
        );
        c.handle_timeout(due + late);
        answer_probes(&mut c, due + late);
        assert_eq!(c.lateness.slack(), 2 * late);
        let at = plain + 2 * late;
        assert_eq!(c.suspect_at(), Some(at));
        tick(&mut c, at - Duration::from_millis(1));
        assert_eq!(c.stats(at).suspicions, 0);
        assert!(requests(&mut c).is_empty());
        doubt_unanswered(&mut c, at);
        assert!(matches!(&requests(&mut c)[..], [(to, ClientMsg::VideoRequest(_))] if *to == b));
    }

    #[test]
    fn the_old_edge_speaking_first_clears_the_suspicion_and_lets_the_standby_go() {
        let (mut c, a, b, last) = playing_two(ClientSettings::default(), 30);
        let at = doubt_unanswered(&mut c, last + 2 * CHUNK_EVERY);
        requests(&mut c);
        c.handle_datagram(at + TICK, a, framed(1, 1, 30, 0, 1));
        let (n, sent) = drain(&mut c);
        assert_eq!(n, 1);
        assert!(
            matches!(&sent[..], [(to, ClientMsg::VideoCancel(_))] if *to == b),
            "{sent:?}"
        );
        let st = c.stats(at);
        assert_eq!(
            (st.suspicions, st.suspicions_cleared, st.edge_switches),
            (1, 1, 0)
        );
        // The standby's video, arriving late, is not for the player.
        c.handle_datagram(at + TICK, b, framed(1, 1, 31, 0, 1));
        assert_eq!(delivered(&mut c), 0);
        assert_eq!(c.current_edge(), Some(a));
        // The silence was the stream's rhythm after all: the peak follows it.
        assert_eq!(c.gaps.peak, at + TICK - last);
    }

    #[test]
    fn newer_video_from_the_standby_completes_the_switch_without_duplicates() {
        let (mut c, a, b, last) = playing_two(ClientSettings::default(), 30);
        let at = doubt_unanswered(&mut c, last + 2 * CHUNK_EVERY);
        requests(&mut c);
        // The standby's GOP cache: video the player had; dropped, no switch yet.
        let t = at + TICK;
        for seq in 25..30 {
            c.handle_datagram(t, b, framed(1, 1, seq, 0, 1));
        }
        assert_eq!(delivered(&mut c), 0);
        assert_eq!(c.current_edge(), Some(a));
        // Then newer video: the switch completes and the old edge is cancelled.
        for seq in 30..34 {
            c.handle_datagram(t, b, framed(1, 1, seq, 0, 1));
        }
        let (n, sent) = drain(&mut c);
        assert_eq!(n, 4);
        assert_eq!(c.current_edge(), Some(b));
        assert!(
            sent.iter()
                .any(|(to, m)| *to == a && matches!(m, ClientMsg::VideoCancel(_))),
            "{sent:?}"
        );
        // The old edge waking up changes nothing.
        c.handle_datagram(t, a, framed(1, 1, 30, 0, 1));
        c.handle_datagram(t, a, framed(1, 1, 34, 0, 1));
        assert_eq!(delivered(&mut c), 0);
        let st = c.stats(t);
        assert_eq!(
            (st.suspicions, st.suspicions_cleared, st.edge_switches),
            (1, 0, 1)
        );
        assert_eq!(
            (st.delivered_duplicates, st.delivered_reorderings, st.gaps),
            (0, 0, 0)
        );
    }

    fn notice(cookie: u64, stream: u32) -> Bytes {
        ClientMsg::Drain(DrainNotice {
            cookie,
            stream,
            within_ms: 2000,
        })
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn a_drain_notice_moves_make_before_break_without_loss_duplicates_or_reordering() {
        let (mut c, a, b, last) = playing_two(ClientSettings::default(), 30);
        let mut t = last + TICK;
        // Forged notices: another stream, a cookie a never gave (b's is 8), or from b.
        fed(&mut c, t, a, notice(9, 2));
        fed(&mut c, t, a, notice(8, 1));
        fed(&mut c, t, b, notice(9, 1));
        // A flood of guesses costs a comparison each and is only counted.
        for guess in 0..1000u64 {
            c.handle_datagram(t, a, notice(1000 + guess, 1));
        }
        assert_eq!(c.current_edge(), Some(a));
        assert_eq!(c.stats(t).drain_notices_ignored, 1003);
        assert!(c.edges.iter().all(|e| e.leaving.is_none()));
        assert!(requests(&mut c).is_empty());

        // a's notice: b is asked at once to continue the stream; a is not cancelled.
        c.handle_datagram(t, a, notice(9, 1));
        assert_eq!(c.current_edge(), Some(b));
        // Avoided until the exit time the notice gave, at most.
        let gone_by = t + Duration::from_millis(2000);
        assert!(c.leaving(0, gone_by - TICK) && !c.leaving(0, gone_by));
        let mut sent = Vec::new();
        let mut chosen = Vec::new();
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Send { to, bytes } => {
                    if let Ok(m @ ClientMsg::VideoRequest(_)) = ClientMsg::decode(bytes) {
                        sent.push((to, m));
                    }
                }
                ClientOutput::Event(ClientEvent::EdgeChosen { edge, reason, .. }) => {
                    chosen.push((edge, reason))
                }
                _ => {}
            }
        }
        assert_eq!(chosen, [(b, SwitchReason::Drained)]);
        assert!(
            matches!(sent.as_slice(), [(to, ClientMsg::VideoRequest(r))]
                if *to == b && r.flags & REQUEST_FLAG_CONTINUE != 0),
            "{sent:?}"
        );
        // Repeats change nothing.
        fed(&mut c, t, a, notice(9, 1));
        assert!(requests(&mut c).is_empty());
        let ok = ClientMsg::VideoOk(crate::wire::client::VideoOk {
            stream: 1,
            video: "v1".into(),
        });
        c.handle_datagram(t, b, ok.to_bytes().unwrap());
        // a keeps feeding while b has not delivered.
        let mut got = fed(&mut c, t, a, framed(1, 1, 30, 0, 1));
        t += CHUNK_EVERY;
        got += fed(&mut c, t, a, framed(1, 1, 31, 0, 1));
        // b joined live ahead of a: its video waits until a fills the hole.
        got += fed(&mut c, t, b, framed(1, 1, 33, 0, 1));
        c.handle_datagram(t, a, framed(1, 1, 32, 0, 1));
        c.handle_timeout(t);
        let (n, sent) = drain(&mut c);
        got += n;
        assert_eq!(got, 4, "30, 31 and 32 from a, 33 from b");
        assert!(
            sent.iter()
                .any(|(to, m)| *to == a && matches!(m, ClientMsg::VideoCancel(_))),
            "the leaving edge is let go once the new one delivers: {sent:?}"
        );
        t += CHUNK_EVERY;
        assert_eq!(fed(&mut c, t, b, framed(1, 1, 34, 0, 1)), 1);
        assert_eq!(fed(&mut c, t, a, framed(1, 1, 34, 0, 1)), 0);
        let st = c.stats(t);
        assert_eq!(
            (
                st.drain_notices,
                st.drain_notices_repeated,
                st.edge_switches
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (st.delivered_duplicates, st.delivered_reorderings, st.gaps),
            (0, 0, 0)
        );
        // The leaving edge is avoided while it answers every probe (it did, above), though
        // still taken if nothing else were alive; once it misses a probe (it exited) the next
        // answer is a restarted edge, which may be chosen again.
        assert!(c.leaving(0, t) && c.best_staying(t, Some(1)).is_none());
        assert_eq!(c.best(t, Some(1)), Some(0));
        c.edges[0].next_probe = t;
        c.handle_timeout(t);
        t += c.settings.probe_interval;
        c.handle_timeout(t);
        let pending = &c.edges[0].pending;
        assert_eq!(pending.len(), 2, "{pending:?}");
        let token = pending.back().unwrap().0;
        let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck { token, cookie: 5 });
        c.handle_datagram(t, a, ack.to_bytes().unwrap());
        assert!(!c.leaving(0, t));
    }

    #[test]
    fn a_client_with_no_other_edge_stays_on_a_draining_edge_until_another_answers() {
        let (mut c, a, b, last) = playing_two(ClientSettings::default(), 30);
        // b has gone quiet: it is not alive.
        c.edges[1].last_ack = Some(last - Duration::from_secs(5));
        c.edges[1].pending.clear();
        let t = last + TICK;
        c.handle_datagram(t, a, notice(9, 1));
        assert_eq!(c.current_edge(), Some(a));
        assert_eq!(c.stats(t).drain_notices, 1);
        // Still playing from a, nothing cancelled.
        let mut delivered = 0;
        c.handle_datagram(t, a, framed(1, 1, 30, 0, 1));
        let (n, sent) = drain(&mut c);
        delivered += n;
        assert_eq!(delivered, 1);
        assert!(sent.is_empty(), "{sent:?}");
        // b answers again: the client moves at once.
        c.edges[1].next_probe = t;
        c.handle_timeout(t);
        let token = c.edges[1].pending.back().unwrap().0;
        let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck { token, cookie: 8 });
        c.handle_datagram(t, b, ack.to_bytes().unwrap());
        c.handle_timeout(t);
        assert_eq!(c.current_edge(), Some(b));
    }

    #[test]
    fn before_enough_gaps_and_with_the_old_rule_only_dead_after_holds() {
        let (c, ..) = playing_two(ClientSettings::default(), 10);
        assert_eq!(c.suspect_at(), None, "9 gaps are not enough");
        // Nor are 16 gaps within less than a second (bursts of an ffmpeg relay).
        let (c, ..) = playing_two(ClientSettings::default(), 20);
        assert_eq!(c.suspect_at(), None, "760 ms are not enough");
        let (c, ..) = playing_two(old_rule(), 40);
        assert_eq!(c.suspect_at(), None);
        // The floor holds for a dense stream, `dead_after` caps a sparse one.
        let dense = ClientSettings {
            suspect_floor: Some(Duration::from_millis(150)),
            ..ClientSettings::default()
        };
        let (c, _, _, last) = playing_two(dense, 30);
        assert_eq!(c.suspect_at(), Some(last + Duration::from_millis(150)));
        let sparse = ClientSettings {
            suspect_factor: 40.0,
            ..ClientSettings::default()
        };
        let (c, _, _, last) = playing_two(sparse, 30);
        assert_eq!(c.suspect_at(), Some(last + Duration::from_millis(1000)));
    }

    /// `packets` TS packets, the first with a PCR of `ms` milliseconds.
    fn raw_with_pcr(ms: u64, packets: usize) -> Bytes {
        let mut v = chunk(ms, packets).to_vec();
        let base = ms * 90;
        // Adaptation field only, with a PCR (base × 300, extension 0).
        v[3] = 0x20;
        v[4] = 7;
        v[5] = 0x10;
        v[6] = (base >> 25) as u8;
        v[7] = (base >> 17) as u8;
        v[8] = (base >> 9) as u8;
        v[9] = (base >> 1) as u8;
        v[10] = ((base & 1) << 7) as u8;
        v[11] = 0;
        Bytes::from(v)
    }

    #[test]
    fn raw_ts_from_the_standby_completes_the_switch_and_repeats_are_measured() {
        let now = Instant::now();
        let (a, b) = (addr("10.0.0.1:7702"), addr("10.0.0.2:7702"));
        let mut c =
            ClientService::new(ClientSettings::default(), vec![a, b], EdgeChoice::Auto, now);
        tick(&mut c, now);
        for (e, token) in [(a, 1), (b, 2)] {
            let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
                token: probe_token(0, token),
                cookie: 9,
            });
            c.handle_datagram(now, e, ack.to_bytes().unwrap());
        }
        tick(&mut c, now);
        c.play(now, "v1");
        while c.poll_output().is_some() {}
        let mut t = now;
        let mut got = 0;
        for i in 0..30 {
            t = now + CHUNK_EVERY * i;
            let e = c.current_edge().unwrap();
            got += fed(&mut c, t, e, raw_with_pcr(1000 + 40 * u64::from(i), 7));
        }
        let (old, standby) = if c.current_edge() == Some(a) {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(got, 30);
        let at = doubt_unanswered(&mut c, t + 2 * CHUNK_EVERY);
        // The standby's child started 100 ms behind what the player had (PCR 2160).
        c.handle_datagram(at, standby, raw_with_pcr(2060, 7));
        c.handle_datagram(at, standby, raw_with_pcr(2100, 7));
        c.handle_datagram(at, old, raw_with_pcr(2200, 7));
        assert_eq!(delivered(&mut c), 2);
        let st = c.stats(at);
        assert_eq!(c.current_edge(), Some(standby));
        assert_eq!((st.edge_switches, st.raw_repeated_ms), (1, 100));
    }

    /// Raw TS: for each `(pid, pts_ms)`, a PES start with that PTS and one continuation
    /// packet.
    fn raw_pes(pes: &[(u16, u64)]) -> Bytes {
        use crate::media::ts::tests::{packet, pes_header};
        let mut v = Vec::new();
        for &(pid, ms) in pes {
            v.extend(packet(
                pid,
                true,
                false,
                None,
                &pes_header(0xE0, ms * 90, None),
            ));
            v.extend(packet(pid, false, false, None, &[ms as u8; 8]));
        }
        Bytes::from(v)
    }

    /// What the player got, as (pid, PTS in ms) of each PES start and the continuation
    /// packets' count.
    fn played(c: &mut ClientService) -> (Vec<(u16, u64)>, usize) {
        let mut starts = Vec::new();
        let mut rest = 0;
        while let Some(o) = c.poll_output() {
            if let ClientOutput::Deliver(d) = o {
                for p in crate::media::ts::packets(&d) {
                    match p.pes_timestamp() {
                        Some(t) => starts.push((p.pid(), t / 90)),
                        None => rest += 1,
                    }
                }
            }
        }
        (starts, rest)
    }

    #[test]
    fn raw_ts_already_played_is_trimmed_after_a_switch_pes_by_pes() {
        let now = Instant::now();
        let (a, b) = (addr("10.0.0.1:7702"), addr("10.0.0.2:7702"));
        let mut c =
            ClientService::new(ClientSettings::default(), vec![a, b], EdgeChoice::Auto, now);
        c.handle_timeout(now);
        for (e, token) in [(a, 1), (b, 2)] {
            let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
                token: probe_token(0, token),
                cookie: 9,
            });
            c.handle_datagram(now, e, ack.to_bytes().unwrap());
        }
        c.handle_timeout(now);
        c.play(now, "v1");
        while c.poll_output().is_some() {}
        let mut t = now;
        // Video on PID 0x100 every 40 ms, audio on 0x101 at 20 ms steps.
        let mut got = 0;
        for i in 0..30u64 {
            t = now + CHUNK_EVERY * i as u32;
            let e = c.current_edge().unwrap();
            let pts = 1000 + 40 * i;
            let d = raw_pes(&[(0x100, pts), (0x101, pts), (0x101, pts + 20)]);
            // `fed` answers the probes, so both edges stay alive.
            got += fed(&mut c, t, e, d);
        }
        assert_eq!(got, 30);
        assert_eq!(
            c.stats(t).raw_trimmed_packets,
            0,
            "nothing trimmed before a switch"
        );
        let (old, standby) = if c.current_edge() == Some(a) {
            (a, b)
        } else {
            (b, a)
        };
        let at = doubt_unanswered(&mut c, t + 2 * CHUNK_EVERY);
        while c.poll_output().is_some() {}
        // The standby's child replays a GOP the player had (video up to 2160 ms, audio up to
        // 2180 ms), then goes on; a continuation packet before any PES start is useless.
        let mut replay = vec![0x47, 0x01, 0x00, 0x10];
        replay.resize(TS_PACKET_LEN, 0);
        c.handle_datagram(at, standby, Bytes::from(replay));
        c.handle_datagram(at, standby, raw_pes(&[(0x100, 2080), (0x101, 2100)]));
        c.handle_datagram(at, standby, raw_pes(&[(0x100, 2160), (0x101, 2180)]));
        assert_eq!(
            c.current_edge(),
            Some(standby),
            "the standby's video moved the client"
        );
        c.handle_datagram(at, old, raw_pes(&[(0x100, 2200)]));
        // One datagram with the last audio played and the first new video.
        c.handle_datagram(at, standby, raw_pes(&[(0x101, 2180), (0x100, 2200)]));
        c.handle_datagram(at, standby, raw_pes(&[(0x101, 2200), (0x100, 2240)]));
        let (starts, rest) = played(&mut c);
        assert_eq!(starts, [(0x100, 2200), (0x101, 2200), (0x100, 2240)]);
        assert_eq!(
            rest, 3,
            "the continuations of what was played are trimmed too"
        );
        let st = c.stats(at);
        assert_eq!(st.raw_trimmed_packets, 1 + 4 + 4 + 2);
        assert_eq!(st.edge_switches, 1);
        // Trimming ends with the switch: a timeline going back (a restarted source) plays.
        c.handle_datagram(at, standby, raw_pes(&[(0x100, 100)]));
        assert_eq!(played(&mut c).0, [(0x100, 100)]);
    }

    fn framed(stream: u32, epoch: u64, seq: u64, part: u16, parts: u16) -> Bytes {
        framed_flags(stream, 0, epoch, seq, part, parts)
    }

    fn framed_flags(stream: u32, flags: u8, epoch: u64, seq: u64, part: u16, parts: u16) -> Bytes {
        let mut b = BytesMut::new();
        put_video_header(&mut b, stream, flags, epoch, seq, part, parts);
        b.extend_from_slice(&chunk(seq, 1));
        b.freeze()
    }

    /// A client already playing stream 1 on its only edge, with a cookie.
    fn playing() -> (ClientService, SocketAddr, Instant) {
        playing_with(ClientSettings::default())
    }

    /// [`playing`] with these settings (the probe is answered at once: RTT 0).
    fn playing_with(settings: ClientSettings) -> (ClientService, SocketAddr, Instant) {
        let now = Instant::now();
        let e = addr("10.0.0.1:7702");
        let mut c = ClientService::new(settings, vec![e], EdgeChoice::Auto, now);
        tick(&mut c, now);
        let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
            token: probe_token(0, 1),
            cookie: 9,
        });
        c.handle_datagram(now, e, ack.to_bytes().unwrap());
        tick(&mut c, now);
        assert_eq!(c.play(now, "v1"), 1);
        while c.poll_output().is_some() {}
        (c, e, now)
    }

    fn delivered(c: &mut ClientService) -> usize {
        std::iter::from_fn(|| c.poll_output())
            .filter(|o| matches!(o, ClientOutput::Deliver(_)))
            .count()
    }

    #[test]
    fn the_session_edge_going_back_to_an_abandoned_epoch_costs_about_one_chunk() {
        // Seen in CORE: a relay moved a stream to a nearer server (a new epoch), then died;
        // its replacement path still carried the first server's stream, the old epoch. The
        // client must follow within about a chunk, not after STALE_EPOCH_ADOPT datagrams
        // (seconds of video).
        let (mut c, e, mut now) = playing();
        for seq in 0..5 {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        for seq in 0..5 {
            c.handle_datagram(now, e, framed(1, 2, seq, 0, 1));
        }
        assert_eq!(delivered(&mut c), 10);
        // Epoch 2 stops; epoch 1 comes back from the same edge, a datagram every 40 ms.
        let step = Duration::from_millis(40);
        for seq in 100..110 {
            now += step;
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        let st = c.stats(now);
        // 0, 40 and 80 ms into the run are dropped; at 120 ms (>= stale_epoch_return) the epoch
        // is taken back and the rest delivered, in order, with no duplicate.
        assert_eq!(st.stale_dropped, 3, "{st:?}");
        assert_eq!(delivered(&mut c), 7);
        assert_eq!(st.epoch_changes, 2);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        // A single late datagram of the left epoch, however late, changes nothing.
        now += Duration::from_secs(1);
        c.handle_datagram(now, e, framed(1, 2, 5, 0, 1));
        c.handle_datagram(now, e, framed(1, 1, 110, 0, 1));
        assert_eq!(delivered(&mut c), 1);
        assert_eq!(c.stats(now).stale_dropped, 4);
    }

    #[test]
    fn sequencer_drops_duplicates_late_datagrams_and_abandoned_epochs() {
        // The sequencer alone: no loss recovery holding the datagrams after a hole.
        let (mut c, e, now) = playing_with(ClientSettings {
            latency: Some(Duration::ZERO),
            ..ClientSettings::default()
        });
        for (epoch, seq, part, parts) in [
            (1, 10, 0, 2),
            (1, 10, 1, 2),
            (1, 10, 1, 2), // duplicate
            (1, 12, 0, 1), // gap: 11 missing
            (1, 11, 0, 1), // late
            (2, 0, 0, 1),  // new epoch
            (1, 13, 0, 1), // abandoned epoch
            (2, 1, 0, 1),
        ] {
            c.handle_datagram(now, e, framed(1, epoch, seq, part, parts));
        }
        // Another stream (an old video still in flight) is not for the player.
        c.handle_datagram(now, e, framed(7, 2, 5, 0, 1));
        // Nor is video from an address that is not an edge.
        c.handle_datagram(now, addr("10.9.9.9:1"), framed(1, 2, 6, 0, 1));
        assert_eq!(delivered(&mut c), 5);
        let st = c.stats(now);
        assert_eq!(st.duplicates_dropped, 1);
        assert_eq!(st.reordered_dropped, 1);
        assert_eq!(st.stale_dropped, 3);
        assert_eq!((st.gaps, st.missing_chunks), (1, 1));
        assert_eq!(st.epoch_changes, 1);
        assert_eq!(st.chunks, 4);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        // Only the abandoned epoch keeps coming (the overlay went back to that source):
        // after a run of it, it is taken back.
        for seq in 20..20 + u64::from(STALE_EPOCH_ADOPT) + 5 {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        assert_eq!(delivered(&mut c), 6);
        assert_eq!(c.stats(now).epoch_changes, 2);
        // A malformed datagram is counted, not fatal.
        c.handle_datagram(now, e, Bytes::from_static(&[0x10, 1, 2]));
        assert_eq!(c.stats(now).malformed, 1);
    }

    proptest::proptest! {
        #[test]
        fn prop_arbitrary_datagrams_never_panic(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..20),
            header in proptest::collection::vec(proptest::prelude::any::<u8>(), 26),
        ) {
            let (mut c, e, now) = playing();
            for d in datagrams {
                c.handle_datagram(now, e, Bytes::from(d));
            }
            // Framed headers with arbitrary fields and one packet of payload.
            let mut d = header;
            d[0] = crate::wire::client::TAG_VIDEO_DATA;
            d.extend_from_slice(&chunk(1, 1));
            c.handle_datagram(now, e, Bytes::from(d));
            c.handle_timeout(now + Duration::from_secs(1));
            while c.poll_output().is_some() {}
        }
    }

    #[test]
    fn raw_ts_is_taken_from_the_session_edge_only() {
        let (mut c, e, now) = playing();
        c.handle_datagram(now, e, chunk(1, 7));
        c.handle_datagram(now, addr("10.9.9.9:1"), chunk(1, 7));
        assert_eq!(delivered(&mut c), 1);
        assert_eq!(c.stats(now).raw_datagrams, 1);
        c.stop(now);
        c.handle_datagram(now, e, chunk(2, 7));
        assert_eq!(delivered(&mut c), 0);
    }

    #[test]
    fn a_challenge_makes_the_request_go_again_with_the_new_cookie() {
        let (mut c, e, now) = playing();
        let later = now + Duration::from_millis(10);
        c.handle_datagram(
            later,
            e,
            ClientMsg::Challenge(crate::wire::client::Challenge { cookie: 77 })
                .to_bytes()
                .unwrap(),
        );
        let sent: Vec<ClientMsg> = std::iter::from_fn(|| c.poll_output())
            .filter_map(|o| match o {
                ClientOutput::Send { bytes, .. } => ClientMsg::decode(bytes).ok(),
                _ => None,
            })
            .collect();
        assert!(
            sent.iter()
                .any(|m| matches!(m, ClientMsg::VideoRequest(r) if r.cookie == 77)),
            "{sent:?}"
        );
    }

    /// Takes the outputs: the datagrams delivered (their seqs) and the NACKs sent.
    fn nacks_and_seqs(c: &mut ClientService) -> (Vec<Nack>, Vec<u64>) {
        let (mut nacks, mut seqs) = (Vec::new(), Vec::new());
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Deliver(d) => seqs.push(stamps(&[d])[0].0),
                ClientOutput::Send { bytes, .. } => {
                    if let Ok(ClientMsg::Nack(n)) = ClientMsg::decode(bytes) {
                        nacks.push(n);
                    }
                }
                ClientOutput::Event(_) => {}
            }
        }
        (nacks, seqs)
    }

    #[test]
    fn a_hole_is_nacked_at_once_then_once_per_round_trip_and_its_retransmission_releases_the_rest_in_order(
    ) {
        let (mut c, e, now) = playing();
        let ms = Duration::from_millis;
        for seq in 0..3 {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        assert_eq!(nacks_and_seqs(&mut c).1, [0, 1, 2]);
        // 3 is lost: 4 and 5 wait, and the edge is asked for 3 once.
        let t1 = now + ms(1);
        c.handle_datagram(t1, e, framed(1, 1, 4, 0, 1));
        c.handle_datagram(t1, e, framed(1, 1, 5, 0, 1));
        let (nacks, seqs) = nacks_and_seqs(&mut c);
        assert!(seqs.is_empty(), "held behind the hole: {seqs:?}");
        assert_eq!(
            nacks,
            [Nack {
                cookie: 9,
                stream: 1,
                epoch: 1,
                holes: vec![NackHole::whole(3)]
            }]
        );
        // Not again within a round trip (RTT 0 here: the 20 ms floor)...
        c.handle_timeout(t1 + ms(19));
        assert!(nacks_and_seqs(&mut c).0.is_empty());
        // ...then again, on a timer the client asks for.
        assert!(c.poll_timeout().unwrap() <= t1 + ms(20));
        c.handle_timeout(t1 + ms(20));
        assert_eq!(nacks_and_seqs(&mut c).0.len(), 1);
        // The retransmission fills the hole: 3, 4, 5 in order, nothing counted lost.
        let t2 = t1 + ms(25);
        c.handle_datagram(t2, e, framed_flags(1, VIDEO_FLAG_RETRANSMIT, 1, 3, 0, 1));
        assert_eq!(nacks_and_seqs(&mut c).1, [3, 4, 5]);
        // A second copy of it changes nothing.
        c.handle_datagram(t2, e, framed_flags(1, VIDEO_FLAG_RETRANSMIT, 1, 3, 0, 1));
        assert!(nacks_and_seqs(&mut c).1.is_empty());
        let st = c.stats(t2);
        assert_eq!(
            (st.gaps, st.missing_chunks, st.unrecovered_holes),
            (0, 0, 0)
        );
        assert_eq!((st.retransmits_received, st.recovered), (2, 1));
        assert_eq!(
            (st.nacks_sent, st.nack_holes, st.held_for_recovery),
            (2, 2, 2)
        );
        assert_eq!(st.recovery_delay_max_us, 25_000);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        assert_eq!(c.poll_timeout().map(|t| t > t2 + ms(100)), Some(true));
    }

    #[test]
    fn a_hole_not_filled_within_the_budget_is_given_up_and_the_rest_released_in_order() {
        let (mut c, e, now) = playing();
        let ms = Duration::from_millis;
        for seq in 0..3 {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        let t1 = now + ms(10);
        c.handle_datagram(t1, e, framed(1, 1, 4, 0, 1));
        // Parts: chunk 5 has three, its middle one lost too.
        c.handle_datagram(t1 + ms(5), e, framed(1, 1, 5, 0, 3));
        c.handle_datagram(t1 + ms(5), e, framed(1, 1, 5, 2, 3));
        let (nacks, seqs) = nacks_and_seqs(&mut c);
        assert_eq!(seqs, [0, 1, 2]);
        let holes: Vec<NackHole> = nacks.into_iter().flat_map(|n| n.holes).collect();
        let middle = NackHole {
            seq: 5,
            first: 1,
            last: 1,
        };
        assert_eq!(holes, [NackHole::whole(3), middle]);
        // The budget (RTT 0: the 120 ms floor) runs from the first hole's discovery.
        assert_eq!(c.stats(t1).latency_budget_ms, DEFAULT_LATENCY_FLOOR_MS);
        let mut t = t1;
        while t < t1 + ms(119) {
            t += ms(1);
            tick(&mut c, t);
            assert!(
                nacks_and_seqs(&mut c).1.is_empty(),
                "released early at {t:?}"
            );
        }
        tick(&mut c, t1 + ms(120));
        // 3 is given up: 4 and part 0 of 5 go; the second hole waits for its own budget.
        assert_eq!(nacks_and_seqs(&mut c).1, [4, 5]);
        tick(&mut c, t1 + ms(125));
        assert_eq!(nacks_and_seqs(&mut c).1, [5]);
        // A retransmission too late is dropped: the player's order is kept.
        c.handle_datagram(
            t1 + ms(130),
            e,
            framed_flags(1, VIDEO_FLAG_RETRANSMIT, 1, 3, 0, 1),
        );
        assert!(nacks_and_seqs(&mut c).1.is_empty());
        let st = c.stats(t1 + ms(130));
        assert_eq!(
            (st.unrecovered_holes, st.gaps, st.missing_chunks),
            (2, 2, 1)
        );
        assert_eq!((st.recovered, st.reordered_dropped), (0, 1));
        assert_eq!(st.recovery_delay_max_us, 120_000);
        // Each hole asked once per 20 ms while it waited (at 0, 20, ... 100 ms), never more.
        assert_eq!(st.nack_holes, 12, "{st:?}");
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
    }

    #[test]
    fn with_latency_zero_holes_are_handed_over_at_once_and_nothing_is_asked() {
        let (mut c, e, now) = playing_with(ClientSettings {
            latency: Some(Duration::ZERO),
            ..ClientSettings::default()
        });
        for seq in [0, 1, 3, 4] {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        let (nacks, seqs) = nacks_and_seqs(&mut c);
        assert_eq!((nacks.len(), seqs), (0, vec![0, 1, 3, 4]));
        c.handle_timeout(now + Duration::from_millis(500));
        assert!(nacks_and_seqs(&mut c).0.is_empty());
        let st = c.stats(now);
        assert_eq!(
            (st.gaps, st.missing_chunks, st.held_for_recovery),
            (1, 1, 0)
        );
        assert_eq!(st.latency_budget_ms, 0);
    }

    #[test]
    fn the_default_budget_is_four_round_trips_with_a_floor() {
        let now = Instant::now();
        let e = addr("10.0.0.1:7702");
        let mut c = ClientService::new(ClientSettings::default(), vec![e], EdgeChoice::Auto, now);
        c.handle_timeout(now);
        // The probe's answer comes 50 ms later: 4 x 50 ms.
        let ack = ClientMsg::ProbeAck(crate::wire::client::ProbeAck {
            token: probe_token(0, 1),
            cookie: 9,
        });
        let t = now + Duration::from_millis(50);
        c.handle_datagram(t, e, ack.to_bytes().unwrap());
        c.handle_timeout(t);
        assert_eq!(c.stats(t).latency_budget_ms, 200);
        let fixed = ClientSettings {
            latency: Some(Duration::from_millis(300)),
            ..ClientSettings::default()
        };
        let (c, _, now) = playing_with(fixed);
        assert_eq!(c.stats(now).latency_budget_ms, 300);
    }

    #[test]
    fn ten_percent_loss_on_the_last_mile_is_recovered_in_order_and_without_recovery_it_is_not() {
        let run = |latency: Option<Duration>| {
            let settings = ClientSettings {
                latency,
                ..ClientSettings::default()
            };
            let mut net = Net::new(&[5], EdgeChoice::Auto, settings);
            net.run(Duration::from_millis(500));
            net.play("v1");
            net.run(Duration::from_secs(1));
            net.loss_percent = 10;
            net.run(Duration::from_secs(20));
            net.loss_percent = 0;
            net.run(Duration::from_secs(1));
            net.assert_in_order();
            let k = net.edges[0].svc.counters().clone();
            (net.client.stats(net.now), net.lost, k)
        };
        let (st, lost, k) = run(None);
        println!(
            "with recovery: {lost} datagrams lost on the way, {} holes unrecovered, {} chunks \
             missing, {} retransmitted ({:.1} % of the video bytes), {} NACKs, longest hold {} ms",
            st.unrecovered_holes,
            st.missing_chunks,
            k.retransmit_datagrams,
            100.0 * k.retransmit_bytes as f64 / (k.video_bytes_out - k.retransmit_bytes) as f64,
            st.nacks_sent,
            st.recovery_delay_max_us / 1000
        );
        assert!(lost > 60, "{lost}");
        assert_eq!(
            (st.gaps, st.missing_chunks, st.unrecovered_holes),
            (0, 0, 0),
            "{st:?}"
        );
        assert!(st.recovered > 50, "{st:?}");
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        assert!(st.recovery_delay_max_us <= 125_000, "{st:?}");
        assert!(k.retransmit_bytes * 10 <= 3 * (k.video_bytes_out - k.retransmit_bytes));
        assert_eq!(st.edge_switches, 0);
        let (st, lost, _) = run(Some(Duration::ZERO));
        println!(
            "without recovery: {lost} lost, {} holes ({} whole chunks)",
            st.gaps, st.missing_chunks
        );
        assert!(st.gaps > 20, "{st:?}");
        assert_eq!((st.nacks_sent, st.held_for_recovery), (0, 0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever the loss (up to 40 %, any pattern the seed gives) and the budget, the
        /// player gets every TS packet at most once and in order, and recovery never holds a
        /// datagram longer than its budget (plus a tick of the simulation).
        #[test]
        fn prop_recovery_keeps_the_order_and_its_budget(
            seed in 1u64..u64::MAX,
            loss in 0u64..40,
            budget_ms in proptest::prop_oneof![proptest::prelude::Just(0u64), 20u64..300],
            delay_ms in 1u64..40,
        ) {
            let settings = ClientSettings {
                latency: Some(Duration::from_millis(budget_ms)),
                ..ClientSettings::default()
            };
            let mut net = Net::new(&[delay_ms], EdgeChoice::Auto, settings);
            net.rng = seed;
            net.run(Duration::from_millis(500));
            net.play("v1");
            net.loss_percent = loss;
            net.run(Duration::from_secs(4));
            net.loss_percent = 0;
            net.run(Duration::from_secs(1));
            net.assert_in_order();
            let st = net.client.stats(net.now);
            proptest::prop_assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
            proptest::prop_assert!(
                st.recovery_delay_max_us <= (budget_ms + 5) * 1000,
                "{:?}", st
            );
            if budget_ms == 0 {
                proptest::prop_assert_eq!((st.nacks_sent, st.held_for_recovery), (0, 0));
            }
        }
    }

    #[test]
    fn with_loss_an_edge_death_still_moves_the_client_in_order_and_recovery_resumes_on_the_new_edge(
    ) {
        let mut net = Net::new(&[5, 15], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.loss_percent = 10;
        net.run(Duration::from_secs(3));
        let before = net.client.stats(net.now);
        assert!(before.recovered > 0, "{before:?}");
        assert_eq!((before.gaps, before.missing_chunks), (0, 0), "{before:?}");
        net.edges[0].up = false; // silent death, on a lossy link
        net.run(Duration::from_secs(3));
        let at_switch = net.client.stats(net.now);
        assert_eq!(net.client.current_edge(), Some(net.edges[1].addr));
        // Recovery goes on with the new edge: no hole after the move.
        net.run(Duration::from_secs(4));
        net.assert_in_order();
        let st = net.client.stats(net.now);
        assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
        assert_eq!(st.gaps, at_switch.gaps, "{st:?}");
        assert!(st.recovered > at_switch.recovered, "{st:?}");
        let k = net.edges[1].svc.counters();
        assert!(k.nacks > 0 && k.retransmit_datagrams > 0, "{k:?}");
    }

    #[test]
    fn a_hole_the_edge_never_had_is_given_up_as_soon_as_it_says_so() {
        let (mut c, e, now) = playing();
        let ms = Duration::from_millis;
        for seq in 0..3 {
            c.handle_datagram(now, e, framed(1, 1, seq, 0, 1));
        }
        let t1 = now + ms(1);
        c.handle_datagram(t1, e, framed(1, 1, 4, 0, 1));
        let (nacks, seqs) = nacks_and_seqs(&mut c);
        assert_eq!((nacks.len(), seqs.len()), (1, 3));
        let miss = |stream, epoch| {
            ClientMsg::NackMiss(NackMiss {
                stream,
                epoch,
                seqs: vec![3],
            })
            .to_bytes()
            .unwrap()
        };
        // Not for this stream, not this epoch, not from the edge asked: ignored.
        c.handle_datagram(t1, e, miss(2, 1));
        c.handle_datagram(t1, e, miss(1, 2));
        c.handle_datagram(t1, addr("10.0.0.9:7702"), miss(1, 1));
        assert!(nacks_and_seqs(&mut c).1.is_empty());
        // The edge never had chunk 3: 4 goes at once, not after the budget.
        c.handle_datagram(t1 + ms(2), e, miss(1, 1));
        assert_eq!(nacks_and_seqs(&mut c).1, [4]);
        let st = c.stats(t1);
        assert_eq!((st.unrecovered_holes, st.nack_missed_chunks), (1, 1));
        assert_eq!(st.recovery_delay_max_us, 2_000);
    }

    #[test]
    fn a_chunk_lost_upstream_of_the_edge_costs_a_round_trip_not_the_budget() {
        let mut net = Net::new(&[5], EdgeChoice::Auto, ClientSettings::default());
        net.run(Duration::from_millis(500));
        net.play("v1");
        net.run(Duration::from_secs(2));
        // The source skips a chunk: no edge ever gets it.
        net.seq += 1;
        net.run(Duration::from_secs(1));
        net.assert_in_order();
        let st = net.client.stats(net.now);
        assert_eq!((st.gaps, st.missing_chunks), (1, 1), "{st:?}");
        assert_eq!(
            (st.unrecovered_holes, st.nack_missed_chunks),
            (1, 1),
            "{st:?}"
        );
        // One round trip (10 ms) and the simulation's ticks, far below the 120 ms budget.
        assert!(st.recovery_delay_max_us <= 25_000, "{st:?}");
    }
}
