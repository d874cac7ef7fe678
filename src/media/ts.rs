//! MPEG-TS packet parsing and chunking, sans-IO: this module owns the 188-byte packet view
//! (PID, payload_unit_start, adaptation field, random_access_indicator, PCR), keyframe
//! detection, the [`Chunker`] that turns an arbitrary byte stream into chunks of whole packets
//! (resynchronising on the 0x47 sync byte after garbage), and the [`PsiTracker`] that keeps the
//! latest PAT/PMT so a viewer joining mid-stream can be primed.
//!
//! Keyframe detection (see [`Packet::starts_keyframe`]): a packet starts a keyframe when it
//! begins a video PES (payload_unit_start set, PES stream_id 0xE0..=0xEF) and either its
//! adaptation field has random_access_indicator set, or the part of the H.264 elementary
//! stream in this packet holds an IDR slice (NAL type 5) or a sequence parameter set (NAL type
//! 7). SPS counts because encoders put SPS/PPS right before each IDR, and x264's first-frame
//! SEI can push the IDR NAL itself into the next packet. Only the video PES counts: ffmpeg also
//! sets random_access_indicator on every audio frame. HEVC and other codecs are detected only
//! through random_access_indicator.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Length of one transport stream packet.
pub const PACKET_LEN: usize = 188;
/// First byte of every transport stream packet.
pub const SYNC_BYTE: u8 = 0x47;
/// Packets per chunk by default: 7 × 188 = 1316 bytes, the classic TS-over-UDP payload that
/// fits an Ethernet MTU with IP/UDP headers and room for a small overlay header.
pub const DEFAULT_PACKETS_PER_CHUNK: usize = 7;
/// Upper bound on packets per chunk, so a chunk always fits one UDP datagram (64 KiB).
pub const MAX_PACKETS_PER_CHUNK: usize = 348;
/// PCR clock rate (27 MHz).
pub const PCR_HZ: u64 = 27_000_000;
/// PCR values wrap at 2^33 × 300 ticks (about 26.5 hours).
pub const PCR_MODULUS: u64 = (1 << 33) * 300;

const PID_PAT: u16 = 0x0000;
const PID_NULL: u16 = 0x1FFF;

/// One piece of a live stream: whole TS packets, with a flag telling whether a keyframe starts
/// in it (a viewer can start decoding from this chunk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub payload: Bytes,
    pub keyframe: bool,
}

impl Chunk {
    /// Number of TS packets in the chunk.
    pub fn packets(&self) -> usize {
        self.payload.len() / PACKET_LEN
    }
}

/// Errors from TS parsing and chunker configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TsError {
    #[error("a TS packet is {PACKET_LEN} bytes, got {0}")]
    BadLength(usize),
    #[error("TS packet does not start with the sync byte 0x47 (got {0:#04x})")]
    NoSync(u8),
    #[error("adaptation field length {0} overruns the packet")]
    BadAdaptation(usize),
    #[error("packets per chunk must be 1..={MAX_PACKETS_PER_CHUNK}, got {0}")]
    BadChunkSize(usize),
}

/// A borrowed view of one 188-byte TS packet; parsing never panics on bad contents.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    bytes: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Check length, sync byte and adaptation field bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, TsError> {
        if bytes.len() != PACKET_LEN {
            return Err(TsError::BadLength(bytes.len()));
        }
        if bytes[0] != SYNC_BYTE {
            return Err(TsError::NoSync(bytes[0]));
        }
        let p = Packet { bytes };
        if p.has_adaptation() {
            // adaptation_field_length counts the bytes after itself, from offset 5.
            let len = bytes[4] as usize;
            let max = if p.has_payload() { 182 } else { 183 };
            if len > max {
                return Err(TsError::BadAdaptation(len));
            }
        }
        Ok(p)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn transport_error(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    pub fn payload_unit_start(&self) -> bool {
        self.bytes[1] & 0x40 != 0
    }

    pub fn pid(&self) -> u16 {
        (u16::from(self.bytes[1] & 0x1F) << 8) | u16::from(self.bytes[2])
    }

    pub fn continuity_counter(&self) -> u8 {
        self.bytes[3] & 0x0F
    }

    fn has_adaptation(&self) -> bool {
        self.bytes[3] & 0x20 != 0
    }

    fn has_payload(&self) -> bool {
        self.bytes[3] & 0x10 != 0
    }

    /// The adaptation field after its length byte (flags first), when present and non-empty.
    fn adaptation(&self) -> Option<&'a [u8]> {
        if !self.has_adaptation() {
            return None;
        }
        let len = self.bytes[4] as usize;
        (len > 0).then(|| &self.bytes[5..5 + len])
    }

    pub fn discontinuity(&self) -> bool {
        self.adaptation().is_some_and(|a| a[0] & 0x80 != 0)
    }

    pub fn random_access(&self) -> bool {
        self.adaptation().is_some_and(|a| a[0] & 0x40 != 0)
    }

    /// Program clock reference in 27 MHz ticks (base × 300 + extension).
    pub fn pcr(&self) -> Option<u64> {
        let a = self.adaptation()?;
        if a[0] & 0x10 == 0 || a.len() < 7 {
            return None;
        }
        let b = &a[1..7];
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7);
        let ext = (u64::from(b[4] & 1) << 8) | u64::from(b[5]);
        Some(base * 300 + ext)
    }

    /// The payload after the header and adaptation field, if the packet carries one.
    pub fn payload(&self) -> Option<&'a [u8]> {
        if !self.has_payload() {
            return None;
        }
        let start = if self.has_adaptation() {
            5 + self.bytes[4] as usize
        } else {
            4
        };
        // parse() bounded the adaptation length, so start <= 188.
        self.bytes.get(start..)
    }

    /// PES stream_id when this packet starts a PES packet.
    pub fn pes_stream_id(&self) -> Option<u8> {
        if !self.payload_unit_start() {
            return None;
        }
        match self.payload()? {
            [0, 0, 1, id, ..] => Some(*id),
            _ => None,
        }
    }

    /// The decoding timestamp (DTS, else PTS; 90 kHz, 33 bits) of the PES packet that starts
    /// in this packet, if it carries one.
    pub fn pes_timestamp(&self) -> Option<u64> {
        let id = self.pes_stream_id()?;
        // These stream types have no optional PES header (ISO 13818-1, 2.4.3.7).
        if matches!(id, 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF) {
            return None;
        }
        let pes = self.payload()?;
        if pes.get(6)? & 0xC0 != 0x80 {
            return None;
        }
        // 00 00 01 id len(2) flags(1), then PTS_DTS_flags in the top bits of byte 7.
        let at = match pes.get(7)? >> 6 {
            0b11 => 14,
            0b10 => 9,
            _ => return None,
        };
        let t = pes.get(at..at + 5)?;
        Some(
            (u64::from(t[0] >> 1) & 0x07) << 30
                | u64::from(t[1]) << 22
                | (u64::from(t[2]) >> 1) << 15
                | u64::from(t[3]) << 7
                | u64::from(t[4]) >> 1,
        )
    }

    /// Whether a video keyframe starts in this packet (see the module documentation).
    pub fn starts_keyframe(&self) -> bool {
        let Some(id) = self.pes_stream_id() else {
            return false;
        };
        if !(0xE0..=0xEF).contains(&id) {
            return false;
        }
        self.random_access() || self.payload().and_then(pes_data).is_some_and(has_h264_idr)
    }
}

/// The elementary stream bytes of a PES packet start (after the PES header).
fn pes_data(pes: &[u8]) -> Option<&[u8]> {
    // 00 00 01 id len(2) flags(2) header_data_length(1) = 9 bytes before optional fields.
    let header_len = *pes.get(8)? as usize;
    pes.get(9 + header_len..)
}

/// Whether an Annex B byte stream fragment holds an IDR slice or an SPS NAL unit.
fn has_h264_idr(es: &[u8]) -> bool {
    es.windows(4)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && matches!(w[3] & 0x1F, 5 | 7))
}

/// Cuts an arbitrary byte stream into chunks of whole TS packets.
///
/// Feed bytes with [`push`](Chunker::push) and take chunks with
/// [`poll_chunk`](Chunker::poll_chunk). A packet is accepted when it starts with 0x47 and
/// either the chunker is in sync or the byte one packet later is 0x47 too (so a stray 0x47
/// inside garbage does not fake a lock). Bytes skipped to regain sync are counted.
/// With `cut_at_keyframe` (on by default) a keyframe packet always starts a new chunk, so the
/// chunk flagged `keyframe` really begins with it; chunks can then be shorter than the target.
#[derive(Debug)]
pub struct Chunker {
    packets_per_chunk: usize,
    cut_at_keyframe: bool,
    input: BytesMut,
    current: BytesMut,
    current_keyframe: bool,
    ready: std::collections::VecDeque<Chunk>,
    in_sync: bool,
    dropped_bytes: u64,
    packets: u64,
}

impl Chunker {
    pub fn new(packets_per_chunk: usize) -> Result<Chunker, TsError> {
        if packets_per_chunk == 0 || packets_per_chunk > MAX_PACKETS_PER_CHUNK {
            return Err(TsError::BadChunkSize(packets_per_chunk));
        }
        Ok(Chunker {
            packets_per_chunk,
            cut_at_keyframe: true,
            input: BytesMut::new(),
            current: BytesMut::with_capacity(packets_per_chunk * PACKET_LEN),
            current_keyframe: false,
            ready: Default::default(),
            in_sync: false,
            dropped_bytes: 0,
            packets: 0,
        })
    }

    /// Whether a keyframe packet starts a new chunk (default true).
    pub fn set_cut_at_keyframe(&mut self, on: bool) {
        self.cut_at_keyframe = on;
    }

    /// Bytes skipped while looking for the sync byte.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// Packets accepted so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Feed bytes from the stream, in order, in pieces of any size.
    pub fn push(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
        self.scan(false);
    }

    /// Next complete chunk, if any.
    pub fn poll_chunk(&mut self) -> Option<Chunk> {
        self.ready.pop_front()
    }

    /// End of stream: accept a last unconfirmed packet, emit the partial chunk, drop the rest.
    pub fn flush(&mut self) -> Option<Chunk> {
        self.scan(true);
        self.dropped_bytes += self.input.len() as u64;
        self.input.clear();
        self.in_sync = false;
        self.emit_current();
        self.ready.pop_front()
    }

    /// Forget buffered bytes and the partial chunk (a new stream follows, e.g. a restarted
    /// child); counters are kept.
    pub fn reset(&mut self) {
        self.input.clear();
        self.current.clear();
        self.current_keyframe = false;
        self.ready.clear();
        self.in_sync = false;
    }

    fn scan(&mut self, at_end: bool) {
        loop {
            if self.input.len() < PACKET_LEN {
                return;
            }
            if self.input[0] == SYNC_BYTE {
                let confirmed = self.in_sync
                    || match self.input.get(PACKET_LEN) {
                        Some(&b) => b == SYNC_BYTE,
                        None if at_end => true,
                        // Wait for one more packet's worth before trusting this 0x47.
                        None => return,
                    };
                if confirmed {
                    self.in_sync = true;
                    let pkt = self.input.split_to(PACKET_LEN);
                    self.accept(&pkt);
                    continue;
                }
            }
            // Out of sync: skip to the next candidate sync byte.
            self.in_sync = false;
            let skip = self.input[1..]
                .iter()
                .position(|&b| b == SYNC_BYTE)
                .map_or(self.input.len(), |p| p + 1);
            self.dropped_bytes += skip as u64;
            let _ = self.input.split_to(skip);
        }
    }

    fn accept(&mut self, pkt: &[u8]) {
        self.packets += 1;
        let keyframe = Packet::parse(pkt).is_ok_and(|p| p.starts_keyframe());
        if keyframe && self.cut_at_keyframe {
            self.emit_current();
        }
        self.current.extend_from_slice(pkt);
        self.current_keyframe |= keyframe;
        if self.current.len() >= self.packets_per_chunk * PACKET_LEN {
            self.emit_current();
        }
    }

    fn emit_current(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let payload = self.current.split().freeze();
        self.ready.push_back(Chunk {
            payload,
            keyframe: std::mem::take(&mut self.current_keyframe),
        });
    }
}

/// Iterate over the packets of a chunk of whole packets (a trailing partial packet is ignored;
/// packets without the sync byte are skipped).
pub fn packets(chunk: &[u8]) -> impl Iterator<Item = Packet<'_>> {
    chunk
        .chunks_exact(PACKET_LEN)
        .filter_map(|p| Packet::parse(p).ok())
}

/// Keeps the most recent PAT and PMT packets seen in a stream, so that a viewer who joins at a
/// keyframe can be sent the program tables first instead of waiting for the next repetition.
/// Tables are assumed to fit one packet each (true for single-program streams like ours);
/// longer tables are simply not cached.
#[derive(Debug, Default, Clone)]
pub struct PsiTracker {
    pat: Option<Bytes>,
    pmt_pid: Option<u16>,
    pmt: Option<Bytes>,
}

impl PsiTracker {
    pub fn new() -> PsiTracker {
        PsiTracker::default()
    }

    /// Observe the packets of a chunk.
    pub fn observe(&mut self, chunk: &[u8]) {
        for p in packets(chunk) {
            if !p.payload_unit_start() || p.transport_error() {
                continue;
            }
            let pid = p.pid();
            if pid == PID_PAT {
                if let Some(pmt_pid) = p.payload().and_then(parse_pat_first_pmt) {
                    self.pat = Some(Bytes::copy_from_slice(p.bytes()));
                    self.pmt_pid = Some(pmt_pid);
                }
            } else if Some(pid) == self.pmt_pid && pid != PID_NULL {
                if let Some(section) = p.payload().and_then(psi_section) {
                    if section.first() == Some(&0x02) && psi_fits(section) {
                        self.pmt = Some(Bytes::copy_from_slice(p.bytes()));
                    }
                }
            }
        }
    }

    /// The PMT's PID, once a PAT has been seen.
    pub fn pmt_pid(&self) -> Option<u16> {
        self.pmt_pid
    }

    /// The stream_type of each elementary stream in the last PMT seen (ISO 13818-1 table
    /// 2-34: 0x1B H.264, 0x0F AAC, ...), in PMT order.
    pub fn stream_types(&self) -> Option<Vec<u8>> {
        let pmt = Packet::parse(self.pmt.as_ref()?).ok()?;
        let s = psi_section(pmt.payload()?)?;
        let len = (usize::from(s[1] & 0x0F) << 8) | usize::from(s[2]);
        // 12-byte header with program_info_length in its last two bytes, streams up to the CRC.
        let info_len = (usize::from(*s.get(10)? & 0x0F) << 8) | usize::from(*s.get(11)?);
        let mut streams = s.get(12 + info_len..3 + len.checked_sub(4)?)?;
        let mut types = Vec::new();
        while streams.len() >= 5 {
            types.push(streams[0]);
            let es_info = (usize::from(streams[3] & 0x0F) << 8) | usize::from(streams[4]);
            streams = streams.get(5 + es_info..)?;
        }
        Some(types)
    }

    /// PAT then PMT packets, once both have been seen.
    pub fn tables(&self) -> Option<Bytes> {
        let (pat, pmt) = (self.pat.as_ref()?, self.pmt.as_ref()?);
        let mut out = BytesMut::with_capacity(2 * PACKET_LEN);
        out.extend_from_slice(pat);
        out.extend_from_slice(pmt);
        Some(out.freeze())
    }
}

/// The PSI section that starts in a payload (after the pointer field).
fn psi_section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = *payload.first()? as usize;
    payload.get(1 + pointer..)
}

/// Whether the whole section (3-byte header + section_length) lies in this packet.
fn psi_fits(section: &[u8]) -> bool {
    section.len() >= 3 && {
        let len = (usize::from(section[1] & 0x0F) << 8) | usize::from(section[2]);
        3 + len <= section.len()
    }
}

/// PMT PID of the first program in a single-packet PAT.
fn parse_pat_first_pmt(payload: &[u8]) -> Option<u16> {
    let s = psi_section(payload)?;
    if s.first() != Some(&0x00) || !psi_fits(s) {
        return None;
    }
    let len = (usize::from(s[1] & 0x0F) << 8) | usize::from(s[2]);
    // Program loop: after the 8-byte header, up to the 4-byte CRC.
    let programs = s.get(8..3 + len.checked_sub(4)?)?;
    programs.chunks_exact(4).find_map(|e| {
        let number = u16::from_be_bytes([e[0], e[1]]);
        // Program 0 points at the network PID, not a PMT.
        (number != 0).then(|| (u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-built packet: PID, PUSI, optional (RAI, PCR) adaptation, and a payload prefix.
    pub(crate) fn packet(
        pid: u16,
        pusi: bool,
        rai: bool,
        pcr: Option<u64>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![
            SYNC_BYTE,
            ((pid >> 8) as u8 & 0x1F) | if pusi { 0x40 } else { 0 },
            pid as u8,
            0x10,
        ];
        if rai || pcr.is_some() {
            p[3] |= 0x20;
            let mut af = vec![(if rai { 0x40 } else { 0 }) | if pcr.is_some() { 0x10 } else { 0 }];
            if let Some(pcr) = pcr {
                let (base, ext) = (pcr / 300, pcr % 300);
                af.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    ((base & 1) << 7) as u8 | 0x7E | (ext >> 8) as u8,
                    ext as u8,
                ]);
            }
            // Stuff the adaptation field so the payload fills the rest of the packet.
            let total_af = PACKET_LEN - 4 - 1 - payload.len().min(PACKET_LEN - 6);
            af.resize(total_af, 0xFF);
            p.push(af.len() as u8);
            p.extend_from_slice(&af);
        }
        p.extend_from_slice(payload);
        p.resize(PACKET_LEN, 0xFF);
        p
    }

    /// A PES header of stream `id` with a PTS and, if given, a DTS (90 kHz).
    pub(crate) fn pes_header(id: u8, pts: u64, dts: Option<u64>) -> Vec<u8> {
        let put = |v: &mut Vec<u8>, marker: u8, t: u64| {
            v.push(marker << 4 | ((t >> 29) as u8 & 0x0E) | 1);
            v.push((t >> 22) as u8);
            v.push(((t >> 14) as u8 & 0xFE) | 1);
            v.push((t >> 7) as u8);
            v.push(((t << 1) as u8 & 0xFE) | 1);
        };
        let flags = if dts.is_some() { 0xC0 } else { 0x80 };
        let mut v = vec![
            0,
            0,
            1,
            id,
            0,
            0,
            0x80,
            flags,
            if dts.is_some() { 10 } else { 5 },
        ];
        put(&mut v, if dts.is_some() { 3 } else { 2 }, pts);
        if let Some(d) = dts {
            put(&mut v, 1, d);
        }
        v
    }

    #[test]
    fn pes_timestamps_dts_else_pts() {
        let big = (1u64 << 33) - 5;
        let p = packet(0x100, true, false, None, &pes_header(0xE0, big, None));
        assert_eq!(Packet::parse(&p).unwrap().pes_timestamp(), Some(big));
        let p = packet(
            0x100,
            true,
            false,
            None,
            &pes_header(0xE0, 9000, Some(5400)),
        );
        assert_eq!(Packet::parse(&p).unwrap().pes_timestamp(), Some(5400));
        // Not a PES start, or a PES without timestamps: none.
        let mut cont = packet(0x100, true, false, None, &pes_header(0xC0, 1, None));
        cont[1] &= !0x40;
        assert_eq!(Packet::parse(&cont).unwrap().pes_timestamp(), None);
        let p = packet(0x100, true, false, None, &[0, 0, 1, 0xC0, 0, 0, 0x80, 0, 0]);
        assert_eq!(Packet::parse(&p).unwrap().pes_timestamp(), None);
        let p = packet(
            0x100,
            true,
            false,
            None,
            &[0, 0, 1, 0xBE, 0, 0, 0x80, 0x80, 5],
        );
        assert_eq!(Packet::parse(&p).unwrap().pes_timestamp(), None);
    }

    fn video_pes(es: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        v.extend_from_slice(es);
        v
    }

    #[test]
    fn parse_fields() {
        let raw = packet(0x100, true, true, Some(123_456_789), &[1, 2, 3]);
        let p = Packet::parse(&raw).unwrap();
        assert_eq!(p.pid(), 0x100);
        assert!(p.payload_unit_start());
        assert!(p.random_access());
        assert_eq!(p.pcr(), Some(123_456_789));
        assert_eq!(&p.payload().unwrap()[..3], &[1, 2, 3]);
        let plain = packet(0x1FFF, false, false, None, &[]);
        let p = Packet::parse(&plain).unwrap();
        assert_eq!(p.pid(), 0x1FFF);
        assert!(!p.random_access() && p.pcr().is_none() && !p.payload_unit_start());
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!(
            Packet::parse(&[0x47; 10]).unwrap_err(),
            TsError::BadLength(10)
        );
        let mut raw = packet(1, false, false, None, &[]);
        raw[0] = 0;
        assert_eq!(Packet::parse(&raw).unwrap_err(), TsError::NoSync(0));
        let mut raw = packet(1, false, false, None, &[]);
        raw[3] = 0x30;
        raw[4] = 200;
        assert_eq!(
            Packet::parse(&raw).unwrap_err(),
            TsError::BadAdaptation(200)
        );
        // Adaptation-only packet with a maximal field is fine and has no payload.
        raw[3] = 0x20;
        raw[4] = 183;
        assert!(Packet::parse(&raw).unwrap().payload().is_none());
    }

    #[test]
    fn keyframe_detection() {
        // A video PES start with the random access indicator off, carrying `es`.
        let plain_start_is_keyframe = |es: &[u8]| {
            let p = packet(0x100, true, false, None, &video_pes(es));
            Packet::parse(&p).unwrap().starts_keyframe()
        };
        // RAI on a video PES start.
        let k = packet(0x100, true, true, None, &video_pes(&[0, 0, 0, 1, 9, 0xF0]));
        assert!(Packet::parse(&k).unwrap().starts_keyframe());
        // No RAI, but an IDR NAL after an access unit delimiter.
        assert!(plain_start_is_keyframe(&[
            0, 0, 0, 1, 9, 0xF0, 0, 0, 1, 0x65, 0x88
        ]));
        // SPS counts too.
        assert!(plain_start_is_keyframe(&[0, 0, 0, 1, 0x67, 0x4D]));
        // A non-IDR slice does not.
        assert!(!plain_start_is_keyframe(&[0, 0, 0, 1, 0x41, 0x9A]));
        // Audio with RAI (ffmpeg sets it on every audio frame) does not.
        let mut audio = video_pes(&[0xFF, 0xF1]);
        audio[3] = 0xC0;
        let a = packet(0x101, true, true, None, &audio);
        assert!(!Packet::parse(&a).unwrap().starts_keyframe());
        // RAI on a continuation packet (no PES start) does not.
        let c = packet(0x100, false, true, None, &[0, 0, 1, 0xE0]);
        assert!(!Packet::parse(&c).unwrap().starts_keyframe());
    }

    #[test]
    fn chunker_cuts_whole_packets_from_odd_pieces() {
        let mut stream = Vec::new();
        for i in 0..20u16 {
            stream.extend(packet(0x100 + (i % 2), false, false, None, &[i as u8]));
        }
        let mut c = Chunker::new(7).unwrap();
        let mut out = Vec::new();
        for piece in stream.chunks(37) {
            c.push(piece);
            while let Some(ch) = c.poll_chunk() {
                out.push(ch);
            }
        }
        out.extend(c.flush());
        let sizes: Vec<_> = out.iter().map(Chunk::packets).collect();
        assert_eq!(sizes, vec![7, 7, 6]);
        let joined: Vec<u8> = out.iter().flat_map(|c| c.payload.to_vec()).collect();
        assert_eq!(joined, stream);
        assert_eq!(c.dropped_bytes(), 0);
    }

    #[test]
    fn chunker_resyncs_after_garbage() {
        let good: Vec<Vec<u8>> = (0..6)
            .map(|i| packet(0x100, false, false, None, &[i]))
            .collect();
        let mut stream = good[0].clone();
        stream.extend(good[1].clone());
        // Garbage holding a lone 0x47 that must not be taken for a packet start.
        let garbage = [1u8, 2, 0x47, 3, 4, 5, 6, 7, 8, 9];
        stream.extend_from_slice(&garbage);
        stream.extend(&good[2][..50]); // a truncated packet
        for g in &good[3..] {
            stream.extend(g.clone());
        }
        let mut c = Chunker::new(100).unwrap();
        c.push(&stream);
        let out = c.flush().unwrap();
        assert_eq!(out.packets(), 5);
        let expect: Vec<u8> = [&good[0], &good[1], &good[3], &good[4], &good[5]]
            .iter()
            .flat_map(|g| g.to_vec())
            .collect();
        assert_eq!(out.payload.to_vec(), expect);
        assert_eq!(c.dropped_bytes(), (garbage.len() + 50) as u64);
    }

    #[test]
    fn chunker_starts_a_chunk_at_each_keyframe() {
        let plain = packet(0x100, false, false, None, &[]);
        let key = packet(0x100, true, true, None, &video_pes(&[0, 0, 1, 0x65]));
        let mut stream = Vec::new();
        for p in [
            &plain, &plain, &key, &plain, &plain, &plain, &plain, &plain, &plain, &plain,
        ] {
            stream.extend_from_slice(p);
        }
        let mut c = Chunker::new(7).unwrap();
        c.push(&stream);
        let mut out = Vec::new();
        while let Some(ch) = c.poll_chunk() {
            out.push(ch);
        }
        out.extend(c.flush());
        let shape: Vec<_> = out.iter().map(|c| (c.packets(), c.keyframe)).collect();
        assert_eq!(shape, vec![(2, false), (7, true), (1, false)]);
        assert_eq!(&out[1].payload[..PACKET_LEN], &key[..]);
    }

    #[test]
    fn chunker_rejects_bad_sizes_and_survives_junk() {
        assert!(Chunker::new(0).is_err());
        assert!(Chunker::new(MAX_PACKETS_PER_CHUNK + 1).is_err());
        let mut c = Chunker::new(7).unwrap();
        c.push(&[0x47; 1000]);
        c.push(&[0u8; 1000]);
        while c.poll_chunk().is_some() {}
        let _ = c.flush();
        assert!(c.dropped_bytes() > 0);
    }

    #[test]
    fn psi_tracker_keeps_pat_and_pmt() {
        // PAT: program 1 -> PMT PID 0x1000. CRC is not checked.
        let pat_section = [
            0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0, 0, 0, 0,
        ];
        let mut pat_payload = vec![0u8];
        pat_payload.extend_from_slice(&pat_section);
        let pat = packet(0, true, false, None, &pat_payload);
        let pmt_section = [
            0x02, 0xB0, 0x12, 0x00, 0x01, 0xC1, 0x00, 0x00, 0xE1, 0x00, 0xF0, 0x00, 0x1B, 0xE1,
            0x00, 0xF0, 0x00, 0, 0, 0, 0,
        ];
        let mut pmt_payload = vec![0u8];
        pmt_payload.extend_from_slice(&pmt_section);
        let pmt = packet(0x1000, true, false, None, &pmt_payload);
        let mut t = PsiTracker::new();
        t.observe(&pmt); // PMT before any PAT is ignored
        assert!(t.tables().is_none());
        let mut both = pat.clone();
        both.extend_from_slice(&pmt);
        t.observe(&both);
        assert_eq!(t.tables().unwrap().to_vec(), both);
        assert_eq!(t.pmt_pid(), Some(0x1000));
        assert_eq!(t.stream_types(), Some(vec![0x1B]));
    }

    fn clip(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("videos")
            .join(name);
        std::fs::read(path).expect("videos/ clip (run bin/make-videos)")
    }

    #[test]
    fn real_clip_chunks_and_keyframes() {
        for name in ["alpha.ts", "bravo.ts", "charlie.ts"] {
            let data = clip(name);
            let mut c = Chunker::new(DEFAULT_PACKETS_PER_CHUNK).unwrap();
            let mut chunks = Vec::new();
            for piece in data.chunks(4096) {
                c.push(piece);
                while let Some(ch) = c.poll_chunk() {
                    chunks.push(ch);
                }
            }
            chunks.extend(c.flush());
            assert_eq!(c.dropped_bytes(), 0, "{name}");
            assert_eq!(c.packets() as usize * PACKET_LEN, data.len(), "{name}");
            assert!(chunks
                .iter()
                .all(|c| c.payload.len() % PACKET_LEN == 0 && c.packets() <= 7));
            // 10 s with a keyframe every second.
            let keys: Vec<_> = chunks.iter().filter(|c| c.keyframe).collect();
            assert_eq!(keys.len(), 10, "{name}");
            for k in keys {
                assert!(Packet::parse(&k.payload[..PACKET_LEN])
                    .unwrap()
                    .starts_keyframe());
            }
            let mut psi = PsiTracker::new();
            for ch in &chunks {
                psi.observe(&ch.payload);
            }
            assert_eq!(
                psi.tables().map(|t| t.len()),
                Some(2 * PACKET_LEN),
                "{name}"
            );
            // H.264 video and AAC audio.
            assert_eq!(psi.stream_types(), Some(vec![0x1B, 0x0F]), "{name}");
            let pcrs = chunks.iter().flat_map(|c| {
                packets(&c.payload)
                    .filter_map(|p| p.pcr())
                    .collect::<Vec<_>>()
            });
            assert!(pcrs.count() > 100, "{name}");
        }
    }
}
