//! Real-time pacing of an MPEG-TS file played in a loop, sans-IO: this module owns the
//! [`Pacer`], which takes the file's bytes (looped by its driver) and the current time, and
//! hands out chunks with the instant each one is due, by the stream's own clock.
//!
//! Timing: every chunk is stamped with a "stream time" from the PCRs of one PID (the first PID
//! seen carrying a PCR). A chunk waits in `pending` until a PCR after it arrives; its time is
//! then interpolated by byte position between the two PCRs around it, the way a constant-rate
//! TS multiplex is meant to be read. Without any PCR (or past a gap of [`PCR_WAIT_BYTES`]), the
//! byte rate measured so far, else the configured fallback bitrate, sets the times. A backwards
//! PCR or a jump of more than [`MAX_PCR_STEP`] is a discontinuity: it is bridged at the byte
//! rate, so pacing never stalls or bursts.
//!
//! Start (`fast_start`, the default): a live source should be decodable from its first
//! chunk. Until the first keyframe, only program tables (PIDs below 0x20 and the PMT) are
//! passed on, so the stream begins on a keyframe even when the file does not. With
//! `first_frame_at_once` (off by default) the chunks up to the end of that first frame (the
//! next PES start on its PID) are released at once instead of at the pace of their bytes, and
//! real time starts from the last of them: off because downstream stall suspicion learns the
//! stream's chunk gap from its first chunks, and a burst there makes the paced gaps that
//! follow look like stalls. Skipping ends at the end of the first pass or after
//! [`FAST_START_LIMIT`] bytes, so a file whose keyframes cannot be detected still plays.
//!
//! Looping: with `restamp` (the default) the pacer makes the looped stream one continuous
//! stream, as `ffmpeg -stream_loop` does: from the second pass on, PCR, PTS and DTS are shifted
//! by the duration of the passes before, and continuity counters continue per PID, so players
//! and remuxers downstream see no jump. The shift is the PCR span of the file plus the gap
//! between its last and first PCR at the measured byte rate; the wrap is then an ordinary PCR
//! step. Without `restamp` the bytes are passed on untouched and the wrap is a discontinuity.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;

use super::ts::{self, Chunk, Chunker, PsiTracker, TsError, PACKET_LEN, PCR_HZ, PCR_MODULUS};

/// A PCR step larger than this (or backwards) is a discontinuity. The standard asks for a PCR
/// at least every 100 ms; one second leaves room for sloppy muxers.
pub const MAX_PCR_STEP: u64 = PCR_HZ;
/// Bytes of chunks allowed to wait for the next PCR before they are timed by byte rate.
pub const PCR_WAIT_BYTES: u64 = 64 * 1024;

/// Input bytes searched for the first keyframe (and its frame's end) before pacing starts
/// anyway.
pub const FAST_START_LIMIT: u64 = 1 << 20;

const PTS_MODULUS: u64 = 1 << 33;

/// Pacer settings.
#[derive(Debug, Clone)]
pub struct PacerConfig {
    /// Target packets per chunk (see [`Chunker`]).
    pub packets_per_chunk: usize,
    /// Bitrate (bits/s) for streams without PCR, until a rate has been measured.
    pub fallback_bitrate: u64,
    /// When the driver falls further behind than this, the schedule is moved forward instead
    /// of bursting the backlog (a live stream has no use for a catch-up burst).
    pub max_lag: Duration,
    /// Rewrite PCR/PTS/DTS and continuity counters so the loop is seamless.
    pub restamp: bool,
    /// Begin on a keyframe (see the module documentation).
    pub fast_start: bool,
    /// With `fast_start`, release the first frame at once (see the module documentation).
    pub first_frame_at_once: bool,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            packets_per_chunk: ts::DEFAULT_PACKETS_PER_CHUNK,
            fallback_bitrate: 1_500_000,
            max_lag: Duration::from_secs(1),
            restamp: true,
            fast_start: true,
            first_frame_at_once: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacerError {
    #[error(transparent)]
    Ts(#[from] TsError),
    #[error("fallback bitrate must be positive")]
    ZeroBitrate,
    #[error("a whole pass over the file held no TS packet")]
    NoPackets,
}

/// A chunk and the instant it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacedChunk {
    pub chunk: Chunk,
    pub release: Instant,
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacerPoll {
    /// Send this chunk now.
    Chunk(PacedChunk),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// Push more file bytes (or call `end_of_file` and start the file over).
    NeedInput,
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacerStats {
    pub chunks: u64,
    pub bytes: u64,
    pub loops: u64,
    /// PCR jumps bridged at the byte rate (including each wrap when not restamping).
    pub discontinuities: u64,
    pub lag_resets: u64,
    pub dropped_bytes: u64,
}

/// Per-pass bookkeeping for the seamless loop.
#[derive(Debug, Default)]
struct LoopState {
    /// Packet bytes of the current pass so far.
    bytes: u64,
    /// First PCR of the file (input value) and its byte position, from the first pass.
    first_pcr: Option<(u64, u64)>,
    /// Latest PCR of the current pass (input value) and its byte position.
    last_pcr: Option<(u64, u64)>,
    /// Shift added to PCRs in this pass, 27 MHz ticks (a multiple of 300).
    shift: u64,
    /// Continuity counter of the first packet of each PID in the file (first pass).
    first_cc: HashMap<u16, u8>,
    /// Continuity counter last sent per PID, and the amount added in this pass.
    last_cc: HashMap<u16, u8>,
    cc_add: HashMap<u16, u8>,
}

/// Where the stream is in its start (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// No keyframe yet: only program tables pass.
    Seeking,
    /// The first keyframe's frame is being read, on this video PID.
    FirstFrame(u16),
    /// Every packet passes; chunks are released in real time.
    Paced,
}

/// The paced reader's state machine (see the module documentation).
#[derive(Debug)]
pub struct Pacer {
    cfg: PacerConfig,
    /// The instant at which stream time `origin_ticks` is due.
    origin: Instant,
    origin_ticks: u64,
    start: Start,
    /// Input bytes read while starting.
    start_bytes: u64,
    /// Program tables seen while starting (for the PMT's PID).
    psi: PsiTracker,
    /// Chunks of the start queued and not yet released (they go out at once).
    burst: u64,
    /// Release instant and stream time of the last start chunk: real time begins there.
    rebase: Option<(Instant, u64)>,
    chunker: Chunker,
    pcr_pid: Option<u16>,
    /// Output bytes stamped or pending so far (position in the endless output stream).
    offset: u64,
    /// Last timing reference: (output byte position, stream time in 27 MHz ticks).
    reference: (u64, u64),
    prev_pcr: Option<u64>,
    /// Bytes and ticks between continuous PCRs, for the measured byte rate.
    rate_bytes: u64,
    rate_ticks: u64,
    pending: VecDeque<(Chunk, u64)>,
    pending_bytes: u64,
    ready: VecDeque<(Chunk, u64)>,
    lag_shift: Duration,
    pass: LoopState,
    stats: PacerStats,
}

impl Pacer {
    /// A pacer whose stream time zero is `now`.
    pub fn new(cfg: PacerConfig, now: Instant) -> Result<Pacer, PacerError> {
        if cfg.fallback_bitrate == 0 {
            return Err(PacerError::ZeroBitrate);
        }
        let chunker = Chunker::new(cfg.packets_per_chunk)?;
        let start = if cfg.fast_start {
            Start::Seeking
        } else {
            Start::Paced
        };
        Ok(Pacer {
            cfg,
            origin: now,
            origin_ticks: 0,
            start,
            start_bytes: 0,
            psi: PsiTracker::new(),
            burst: 0,
            rebase: None,
            chunker,
            pcr_pid: None,
            offset: 0,
            reference: (0, 0),
            prev_pcr: None,
            rate_bytes: 0,
            rate_ticks: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            ready: VecDeque::new(),
            lag_shift: Duration::ZERO,
            pass: LoopState::default(),
            stats: PacerStats::default(),
        })
    }

    pub fn stats(&self) -> PacerStats {
        PacerStats {
            dropped_bytes: self.chunker.dropped_bytes(),
            ..self.stats.clone()
        }
    }

    /// Byte rate used to bridge gaps: measured from PCRs when possible.
    pub fn byte_rate(&self) -> f64 {
        if self.rate_ticks >= PCR_HZ / 10 && self.rate_bytes > 0 {
            self.rate_bytes as f64 * PCR_HZ as f64 / self.rate_ticks as f64
        } else {
            self.cfg.fallback_bitrate as f64 / 8.0
        }
    }

    /// Feed the next bytes of the file.
    pub fn push(&mut self, data: &[u8]) {
        self.chunker.push(data);
        while let Some(c) = self.chunker.poll_chunk() {
            self.process(c);
        }
    }

    /// The file ended; the driver starts it over and pushes it again.
    pub fn end_of_file(&mut self) -> Result<(), PacerError> {
        // Flush so that no chunk straddles two passes: each pass gets one restamp shift.
        if let Some(c) = self.chunker.flush() {
            self.process(c);
        }
        if self.pass.bytes == 0 {
            return Err(PacerError::NoPackets);
        }
        // A whole pass without a keyframe: play it as it is.
        self.start = Start::Paced;
        self.stats.loops += 1;
        let span = match (self.pass.first_pcr, self.pass.last_pcr) {
            (Some((first, first_pos)), Some((last, last_pos))) => {
                // PCR span of the pass, plus the stretch from the last PCR to the end of the
                // file and from its start to the first PCR, at the measured rate.
                let pcr_span = (last + PCR_MODULUS - first) % PCR_MODULUS;
                let gap = self.pass.bytes - last_pos + first_pos;
                pcr_span + self.bytes_to_ticks(gap)
            }
            _ => self.bytes_to_ticks(self.pass.bytes),
        };
        // Keep PCR shifts whole 90 kHz ticks so PTS/DTS move by exactly the same amount.
        let span = span.div_ceil(300) * 300;
        self.pass.shift = (self.pass.shift + span) % PCR_MODULUS;
        let adds: Vec<(u16, u8)> = self
            .pass
            .first_cc
            .iter()
            .filter_map(|(&pid, &first)| {
                let last = *self.pass.last_cc.get(&pid)?;
                Some((pid, last.wrapping_add(1).wrapping_sub(first) & 0x0F))
            })
            .collect();
        self.pass.cc_add.extend(adds);
        self.pass.bytes = 0;
        self.pass.last_pcr = None;
        if !self.cfg.restamp {
            // Untouched bytes: the wrap is a PCR jump, bridge it at the byte rate.
            self.prev_pcr = None;
            self.stats.discontinuities += 1;
        }
        Ok(())
    }

    /// The next action for the driver at time `now`.
    pub fn poll(&mut self, now: Instant) -> PacerPoll {
        let Some(&(_, ticks)) = self.ready.front() else {
            return PacerPoll::NeedInput;
        };
        if self.burst > 0 {
            // A chunk of the start: out at once.
            let (chunk, ticks) = self.ready.pop_front().expect("front checked above");
            self.burst -= 1;
            self.rebase = Some((now, ticks));
            self.stats.chunks += 1;
            self.stats.bytes += chunk.payload.len() as u64;
            return PacerPoll::Chunk(PacedChunk {
                chunk,
                release: now,
            });
        }
        if self.start != Start::Paced {
            // The first frame's end is not read yet.
            return PacerPoll::NeedInput;
        }
        if let Some((at, ticks)) = self.rebase.take() {
            self.origin = at;
            self.origin_ticks = ticks;
            self.lag_shift = Duration::ZERO;
        }
        let due = self.origin
            + ticks_to_duration(ticks.saturating_sub(self.origin_ticks))
            + self.lag_shift;
        if due > now {
            return PacerPoll::WaitUntil(due);
        }
        let late = now - due;
        if late > self.cfg.max_lag {
            self.lag_shift += late;
            self.stats.lag_resets += 1;
        }
        let (chunk, _) = self.ready.pop_front().expect("front checked above");
        self.stats.chunks += 1;
        self.stats.bytes += chunk.payload.len() as u64;
        let release = if late > self.cfg.max_lag { now } else { due };
        PacerPoll::Chunk(PacedChunk { chunk, release })
    }

    fn bytes_to_ticks(&self, bytes: u64) -> u64 {
        (bytes as f64 / self.byte_rate() * PCR_HZ as f64) as u64
    }

    fn process(&mut self, chunk: Chunk) {
        let chunk = if self.cfg.restamp {
            self.restamp(chunk)
        } else {
            chunk
        };
        // The pass counts file bytes (the restamp's positions), skipped or not.
        self.pass.bytes += chunk.payload.len() as u64;
        let chunk = if self.start == Start::Paced {
            chunk
        } else {
            match self.start_filter(chunk) {
                Some(c) => {
                    if self.cfg.first_frame_at_once {
                        self.burst += 1;
                    }
                    c
                }
                None => return,
            }
        };
        let start = self.offset;
        let mut pcrs = Vec::new();
        for (i, p) in ts::packets(&chunk.payload).enumerate() {
            let Some(pcr) = p.pcr() else { continue };
            let pid = *self.pcr_pid.get_or_insert(p.pid());
            if pid == p.pid() {
                pcrs.push((start + (i * PACKET_LEN) as u64, pcr, p.discontinuity()));
            }
        }
        let len = chunk.payload.len() as u64;
        self.offset += len;
        self.pending.push_back((chunk, self.offset));
        self.pending_bytes += len;
        for (pos, pcr, disc) in pcrs {
            self.handle_pcr(pos, pcr, disc);
        }
        if self.pending_bytes > PCR_WAIT_BYTES {
            self.stamp_by_rate();
        }
    }

    fn handle_pcr(&mut self, pos: u64, pcr: u64, disc: bool) {
        let (ref_pos, ref_ticks) = self.reference;
        let bytes = pos.saturating_sub(ref_pos);
        let ticks = match self.prev_pcr {
            Some(prev) if !disc => {
                let step = (pcr + PCR_MODULUS - prev) % PCR_MODULUS;
                if step <= MAX_PCR_STEP {
                    self.rate_bytes += bytes;
                    self.rate_ticks += step;
                    ref_ticks + step
                } else {
                    self.stats.discontinuities += 1;
                    ref_ticks + self.bytes_to_ticks(bytes)
                }
            }
            Some(_) => {
                self.stats.discontinuities += 1;
                ref_ticks + self.bytes_to_ticks(bytes)
            }
            None => ref_ticks + self.bytes_to_ticks(bytes),
        };
        // Interpolate by byte position between the previous reference and this PCR.
        while let Some(&(_, end)) = self.pending.front() {
            if end > pos {
                break;
            }
            let (chunk, end) = self.pending.pop_front().expect("front checked above");
            self.pending_bytes -= chunk.payload.len() as u64;
            let t = if bytes == 0 {
                ticks
            } else {
                ref_ticks
                    + ((end - ref_pos) as u128 * (ticks - ref_ticks) as u128 / bytes as u128) as u64
            };
            self.ready.push_back((chunk, t));
        }
        self.reference = (pos, ticks);
        self.prev_pcr = Some(pcr);
    }

    /// A chunk read while starting: drop what comes before the first keyframe except program
    /// tables, and notice the end of the first frame. `None` when nothing is left.
    fn start_filter(&mut self, chunk: Chunk) -> Option<Chunk> {
        self.start_bytes += chunk.payload.len() as u64;
        self.psi.observe(&chunk.payload);
        let mut out = BytesMut::with_capacity(chunk.payload.len());
        for pkt in chunk.payload.chunks_exact(PACKET_LEN) {
            let Ok(p) = ts::Packet::parse(pkt) else {
                continue;
            };
            match self.start {
                Start::Seeking if p.starts_keyframe() => self.start = Start::FirstFrame(p.pid()),
                Start::Seeking => {
                    let pid = p.pid();
                    let table = pid < 0x20 || Some(pid) == self.psi.pmt_pid();
                    if !table {
                        continue;
                    }
                }
                Start::FirstFrame(pid) if p.pid() == pid && p.payload_unit_start() => {
                    self.start = Start::Paced;
                }
                Start::FirstFrame(_) | Start::Paced => {}
            }
            out.extend_from_slice(pkt);
        }
        if self.start_bytes > FAST_START_LIMIT {
            self.start = Start::Paced;
        }
        (!out.is_empty()).then(|| Chunk {
            payload: out.freeze(),
            keyframe: chunk.keyframe,
        })
    }

    /// No PCR for a long stretch: time the waiting chunks by byte rate.
    fn stamp_by_rate(&mut self) {
        while let Some((chunk, end)) = self.pending.pop_front() {
            let (ref_pos, ref_ticks) = self.reference;
            let t = ref_ticks + self.bytes_to_ticks(end - ref_pos);
            self.reference = (end, t);
            self.pending_bytes -= chunk.payload.len() as u64;
            self.ready.push_back((chunk, t));
        }
        self.prev_pcr = None;
    }

    /// Shift clocks and continuity counters of one chunk (see the module documentation), and
    /// record what the next pass needs.
    fn restamp(&mut self, chunk: Chunk) -> Chunk {
        let mut buf = BytesMut::from(&chunk.payload[..]);
        let pass_start = self.pass.bytes;
        let shift = self.pass.shift;
        let first_pass = self.stats.loops == 0;
        for (i, pkt) in buf.chunks_exact_mut(PACKET_LEN).enumerate() {
            let Ok(p) = ts::Packet::parse(pkt) else {
                continue;
            };
            let pid = p.pid();
            let has_payload = p.payload().is_some();
            if let Some(pcr) = p.pcr() {
                let pos = pass_start + (i * PACKET_LEN) as u64;
                if self.pcr_pid.unwrap_or(pid) == pid {
                    if first_pass && self.pass.first_pcr.is_none() {
                        self.pass.first_pcr = Some((pcr, pos));
                    }
                    self.pass.last_pcr = Some((pcr, pos));
                }
                if shift != 0 {
                    write_pcr(pkt, (pcr + shift) % PCR_MODULUS);
                }
            }
            if shift != 0 {
                shift_pes_timestamps(pkt, shift / 300);
            }
            let cc = pkt[3] & 0x0F;
            if first_pass {
                self.pass.first_cc.entry(pid).or_insert(cc);
            }
            if has_payload {
                let out = cc.wrapping_add(*self.pass.cc_add.get(&pid).unwrap_or(&0)) & 0x0F;
                pkt[3] = (pkt[3] & 0xF0) | out;
                self.pass.last_cc.insert(pid, out);
            }
        }
        Chunk {
            payload: buf.freeze(),
            keyframe: chunk.keyframe,
        }
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos((ticks as u128 * 1_000_000_000 / PCR_HZ as u128) as u64)
}

/// Overwrite the PCR of a packet known to carry one, keeping the reserved bits.
fn write_pcr(pkt: &mut [u8], pcr: u64) {
    let (base, ext) = (pcr / 300, pcr % 300);
    let b = &mut pkt[6..12];
    b[0] = (base >> 25) as u8;
    b[1] = (base >> 17) as u8;
    b[2] = (base >> 9) as u8;
    b[3] = (base >> 1) as u8;
    b[4] = (((base & 1) as u8) << 7) | (b[4] & 0x7E) | ((ext >> 8) as u8 & 1);
    b[5] = ext as u8;
}

/// Add `shift` (90 kHz) to the PTS and DTS of a PES header starting in this packet.
fn shift_pes_timestamps(pkt: &mut [u8], shift: u64) {
    let Ok(p) = ts::Packet::parse(pkt) else {
        return;
    };
    let Some(id) = p.pes_stream_id() else { return };
    // These stream types have no optional PES header (ISO 13818-1, 2.4.3.7).
    if matches!(id, 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF) {
        return;
    }
    let start = PACKET_LEN - p.payload().map_or(0, <[u8]>::len);
    let Some(pes) = pkt.get_mut(start..) else {
        return;
    };
    if pes.len() < 19 || pes[6] & 0xC0 != 0x80 {
        return;
    }
    let flags = pes[7] >> 6;
    if flags & 0b10 != 0 {
        shift_timestamp(&mut pes[9..14], shift);
        if flags == 0b11 {
            shift_timestamp(&mut pes[14..19], shift);
        }
    }
}

fn shift_timestamp(b: &mut [u8], shift: u64) {
    let ts = (u64::from(b[0] >> 1 & 0x07) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1);
    let ts = (ts + shift) % PTS_MODULUS;
    b[0] = (b[0] & 0xF1) | ((ts >> 29) as u8 & 0x0E);
    b[1] = (ts >> 22) as u8;
    b[2] = ((ts >> 14) as u8 & 0xFE) | 1;
    b[3] = (ts >> 7) as u8;
    b[4] = ((ts << 1) as u8 & 0xFE) | 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ts::tests::packet;

    struct Run {
        /// (release, chunk)
        out: Vec<(Instant, Chunk)>,
        start: Instant,
        pacer: Pacer,
    }

    impl Run {
        /// Seconds from the start to the last release.
        fn span_secs(&self) -> f64 {
            let last = self.out.last().expect("something was released").0;
            last.duration_since(self.start).as_secs_f64()
        }
    }

    /// Drive a pacer over `data` in virtual time until `passes` whole passes were released.
    fn run(data: &[u8], cfg: PacerConfig, passes: u64, piece: usize) -> Run {
        let start = Instant::now();
        let mut pacer = Pacer::new(cfg, start).unwrap();
        let mut now = start;
        let mut pos = 0;
        let mut out = Vec::new();
        let total = data.len() as u64 * passes;
        let mut released = 0u64;
        while released < total {
            match pacer.poll(now) {
                PacerPoll::Chunk(c) => {
                    assert!(c.release <= now);
                    released += c.chunk.payload.len() as u64;
                    out.push((c.release, c.chunk));
                }
                PacerPoll::WaitUntil(t) => {
                    assert!(t > now);
                    now = t;
                }
                PacerPoll::NeedInput => {
                    if pos == data.len() {
                        pacer.end_of_file().unwrap();
                        pos = 0;
                    } else {
                        let end = (pos + piece).min(data.len());
                        pacer.push(&data[pos..end]);
                        pos = end;
                    }
                }
            }
        }
        Run { out, start, pacer }
    }

    fn clip(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("videos")
            .join(name);
        std::fs::read(path).expect("videos/ clip (run bin/make-videos)")
    }

    fn pcrs(out: &[(Instant, Chunk)], start: Instant) -> Vec<(f64, u64)> {
        out.iter()
            .flat_map(|(t, c)| {
                let at = t.duration_since(start).as_secs_f64();
                ts::packets(&c.payload)
                    .filter(|p| p.pid() == 0x100)
                    .filter_map(|p| p.pcr())
                    .map(move |pcr| (at, pcr))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn real_clip_follows_pcr_across_loops() {
        let data = clip("alpha.ts");
        let cfg = PacerConfig {
            fast_start: false,
            ..PacerConfig::default()
        };
        let r = run(&data, cfg, 3, 65536);
        let stats = r.pacer.stats();
        assert!(stats.loops >= 2);
        assert_eq!(stats.discontinuities, 0, "restamped loop must be seamless");
        assert_eq!(stats.dropped_bytes, 0);
        // Release times never go backwards.
        assert!(r.out.windows(2).all(|w| w[0].0 <= w[1].0));
        // Each chunk holding a PCR is released within 100 ms of its PCR time, through both
        // wraps (PCR restamped to be continuous).
        let p = pcrs(&r.out, r.start);
        let (t0, pcr0) = p[0];
        let mut worst: f64 = 0.0;
        for w in p.windows(2) {
            assert!(w[1].1 > w[0].1, "restamped PCR must increase");
        }
        for &(t, pcr) in &p {
            let expect = t0 + (pcr - pcr0) as f64 / PCR_HZ as f64;
            worst = worst.max((t - expect).abs());
        }
        eprintln!(
            "pacer: worst PCR deviation over 3 passes {:.1} ms",
            worst * 1e3
        );
        assert!(worst < 0.1, "worst PCR deviation {worst}s");
        // Three passes of a 10 s clip take about 30 s.
        let total = r.span_secs();
        assert!((29.0..31.0).contains(&total), "3 passes took {total}s");
    }

    #[test]
    fn unrestamped_loop_is_bridged_smoothly() {
        let data = clip("bravo.ts");
        let cfg = PacerConfig {
            restamp: false,
            fast_start: false,
            ..PacerConfig::default()
        };
        let r = run(&data, cfg, 2, 4000);
        assert!(r.pacer.stats().discontinuities >= 1);
        // The bytes are untouched.
        let joined: Vec<u8> = r.out.iter().flat_map(|(_, c)| c.payload.to_vec()).collect();
        assert_eq!(&joined[..data.len()], &data[..]);
        assert_eq!(&joined[data.len()..], &data[..]);
        // No stall or burst at the wrap: no gap between releases beyond 150 ms.
        let gaps: Vec<f64> = r
            .out
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64())
            .collect();
        let max_gap = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(max_gap < 0.15, "max gap {max_gap}");
        let total = r.span_secs();
        assert!((19.0..21.0).contains(&total), "2 passes took {total}s");
    }

    #[test]
    fn restamped_timestamps_and_counters_continue() {
        let data = clip("charlie.ts");
        let r = run(&data, PacerConfig::default(), 2, 100_000);
        let mut last_cc: HashMap<u16, u8> = HashMap::new();
        let mut last_pts: HashMap<u16, u64> = HashMap::new();
        for (_, c) in &r.out {
            for p in ts::packets(&c.payload) {
                if p.payload().is_some() {
                    if let Some(prev) = last_cc.insert(p.pid(), p.continuity_counter()) {
                        assert_eq!((prev + 1) & 0x0F, p.continuity_counter(), "pid {}", p.pid());
                    }
                }
                if let (Some(id), Some(pl)) = (p.pes_stream_id(), p.payload()) {
                    if id >= 0xC0 && pl[7] & 0x80 != 0 {
                        let b = &pl[9..14];
                        let pts = (u64::from(b[0] >> 1 & 7) << 30)
                            | (u64::from(b[1]) << 22)
                            | (u64::from(b[2] >> 1) << 15)
                            | (u64::from(b[3]) << 7)
                            | u64::from(b[4] >> 1);
                        if let Some(prev) = last_pts.insert(p.pid(), pts) {
                            assert!(
                                pts > prev && pts - prev < 90_000,
                                "pid {} pts {prev} -> {pts}",
                                p.pid()
                            );
                        }
                    }
                }
            }
        }
    }

    /// Video PID of the clips.
    const VIDEO_PID: u16 = 0x100;

    #[test]
    fn fast_start_begins_on_a_keyframe_and_sends_its_frame_at_once() {
        let whole = clip("alpha.ts");
        // The file as it is (a keyframe after the tables and two audio packets), and cut in the
        // middle of a GOP (0.5 s in), then looped.
        let cut = whole[(whole.len() / 20 / PACKET_LEN) * PACKET_LEN..].to_vec();
        for (name, data) in [("whole", whole), ("cut", cut)] {
            let first_video = ts::packets(&data).find(|p| p.pid() == VIDEO_PID).unwrap();
            assert_eq!(first_video.starts_keyframe(), name == "whole");
            let cfg = PacerConfig {
                first_frame_at_once: true,
                ..PacerConfig::default()
            };
            let r = run(&data, cfg, 2, 65536);
            let packets: Vec<ts::Packet> = r
                .out
                .iter()
                .flat_map(|(_, c)| ts::packets(&c.payload))
                .collect();
            // Before the keyframe: program tables only.
            let key = packets
                .iter()
                .position(|p| p.starts_keyframe())
                .expect("a keyframe");
            assert!(
                packets[..key]
                    .iter()
                    .all(|p| p.pid() < 0x20 || p.pid() == 0x1000),
                "{name}"
            );
            assert!(
                packets[..key].iter().any(|p| p.pid() == 0),
                "{name}: PAT first"
            );
            assert_eq!(packets[key].pid(), VIDEO_PID);
            // The chunk holding the keyframe is flagged, and every chunk up to the end of its
            // frame (the next video PES start) goes out at the start instant.
            let kchunk = r.out.iter().position(|(_, c)| c.keyframe).unwrap();
            assert!(r.out[kchunk].1.payload[..PACKET_LEN] == *packets[key].bytes());
            // Chunk index of every packet; the frame ends where the next video PES starts.
            let chunk_of: Vec<usize> = r
                .out
                .iter()
                .enumerate()
                .flat_map(|(i, (_, c))| std::iter::repeat(i).take(c.packets()))
                .collect();
            let next = (key + 1..packets.len())
                .find(|&i| packets[i].pid() == VIDEO_PID && packets[i].payload_unit_start())
                .unwrap();
            let end = chunk_of[next];
            assert!(end > kchunk);
            assert!(r.out[..=end].iter().all(|(t, _)| *t == r.start), "{name}");
            // Then real time at the clip's own rate, no catch-up burst.
            assert!(r.out[end + 1].0 > r.start, "{name}");
            let bytes: usize = r.out[end + 1..].iter().map(|(_, c)| c.payload.len()).sum();
            let secs = (r.out.last().unwrap().0 - r.out[end].0).as_secs_f64();
            let rate = bytes as f64 / secs / whole_len_rate();
            assert!(
                (0.95..1.05).contains(&rate),
                "{name}: rate {rate} of the clip's"
            );
            // Continuity counters still continue per PID across the wrap.
            let mut last_cc: HashMap<u16, u8> = HashMap::new();
            for p in &packets {
                if p.payload().is_some() {
                    if let Some(prev) = last_cc.insert(p.pid(), p.continuity_counter()) {
                        assert_eq!(
                            (prev + 1) & 0x0F,
                            p.continuity_counter(),
                            "{name} pid {}",
                            p.pid()
                        );
                    }
                }
            }
            assert_eq!(r.pacer.stats().discontinuities, 0, "{name}");
            // By default the stream still begins on the keyframe, and the first frame is paced.
            let r = run(&data, PacerConfig::default(), 1, 65536);
            let first_video = r
                .out
                .iter()
                .flat_map(|(t, c)| ts::packets(&c.payload).map(move |p| (*t, p)))
                .find(|(_, p)| p.pid() == VIDEO_PID)
                .unwrap();
            assert!(first_video.1.starts_keyframe(), "{name}");
            assert!(
                r.out.iter().filter(|(t, _)| *t == r.start).count() <= 1,
                "{name}"
            );
        }
    }

    /// Bytes per second of alpha.ts (10 s).
    fn whole_len_rate() -> f64 {
        clip("alpha.ts").len() as f64 / 10.0
    }

    #[test]
    fn no_pcr_uses_fallback_bitrate() {
        // 1000 plain packets, 188 000 bytes, at 188 000 × 8 bit/s: one second per pass.
        let data: Vec<u8> = (0..1000)
            .flat_map(|i| packet(0x100, false, false, None, &[i as u8]))
            .collect();
        let cfg = PacerConfig {
            fallback_bitrate: 188_000 * 8,
            ..PacerConfig::default()
        };
        let r = run(&data, cfg, 3, 5000);
        let total = r.span_secs();
        assert!((2.9..3.1).contains(&total), "took {total}s");
    }

    #[test]
    fn late_driver_skips_ahead_instead_of_bursting() {
        let data = clip("alpha.ts");
        let start = Instant::now();
        let cfg = PacerConfig {
            fast_start: false,
            ..PacerConfig::default()
        };
        let mut pacer = Pacer::new(cfg, start).unwrap();
        pacer.push(&data);
        // The driver wakes up 5 s late: one chunk, then the schedule has moved on.
        let late = start + Duration::from_secs(5);
        let mut released = 0;
        while let PacerPoll::Chunk(_) = pacer.poll(late) {
            released += 1;
        }
        assert!(released < 20, "released {released} chunks in a burst");
        assert_eq!(pacer.stats().lag_resets, 1);
    }

    #[test]
    fn garbage_only_file_is_an_error() {
        let mut pacer = Pacer::new(PacerConfig::default(), Instant::now()).unwrap();
        pacer.push(&[0u8; 5000]);
        assert_eq!(pacer.end_of_file(), Err(PacerError::NoPackets));
        assert!(Pacer::new(
            PacerConfig {
                fallback_bitrate: 0,
                ..PacerConfig::default()
            },
            Instant::now()
        )
        .is_err());
    }
}
