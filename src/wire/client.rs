//! The edge ↔ client UDP protocol: every datagram an edge and its clients exchange, and its
//! exact bytes.
//!
//! This module owns [`ClientMsg`] and its codec. One message fills one UDP datagram, so there is
//! no outer length; [`ClientMsg::decode`] takes the whole datagram and rejects anything that is
//! not exactly one well-formed message, and the encoding is canonical (a datagram that decodes
//! re-encodes to itself). Primitive types are those of [`crate::wire`] (big-endian integers,
//! `str` = `u16` length + UTF-8, `list<T>` = `u16` count + items).
//!
//! # Layout
//!
//! | Tag    | Message            | Direction     | Fields after the tag, in order                                      | Size   |
//! |--------|--------------------|---------------|---------------------------------------------------------------------|--------|
//! | `0x01` | [`Probe`]          | client → edge | `token: u64`, 8 zero bytes of padding                               | 17     |
//! | `0x02` | [`ProbeAck`]       | edge → client | `token: u64`, `cookie: u64`                                         | 17     |
//! | `0x03` | [`ListRequest`]    | client → edge | `cookie: u64`                                                       | 9      |
//! | `0x04` | [`ListReply`]      | edge → client | `videos: list<str>`                                                 | ≥ 3    |
//! | `0x05` | [`VideoRequest`]   | client → edge | `cookie: u64`, `stream: u32`, `flags: u8`, `video: str`             | ≥ 16   |
//! | `0x06` | [`VideoCancel`]    | client → edge | `cookie: u64`, `stream: u32`                                        | 13     |
//! | `0x07` | [`Keepalive`]      | client → edge | `cookie: u64`, `stream: u32`                                        | 13     |
//! | `0x08` | [`Challenge`]      | edge → client | `cookie: u64`                                                       | 9      |
//! | `0x09` | [`VideoOk`]        | edge → client | `stream: u32`, `video: str`                                         | ≥ 7    |
//! | `0x0A` | [`ErrorMsg`]       | edge → client | `code: u8` ([`ErrorCode`]), `stream: u32`                           | 6      |
//! | `0x0B` | [`DrainNotice`]    | edge → client | `cookie: u64`, `stream: u32`, `within_ms: u32`                      | 17     |
//! | `0x0C` | [`Nack`]           | client → edge | `cookie: u64`, `stream: u32`, `epoch: u64`, `holes: list<hole>`; hole = `seq: u64`, `first: u16`, `last: u16` | 23 + 12·n |
//! | `0x0D` | [`NackMiss`]       | edge → client | `stream: u32`, `epoch: u64`, `seqs: list<u64>`                      | 15 + 8·n |
//! | `0x10` | [`VideoData`]      | edge → client | `stream: u32`, `flags: u8`, `epoch: u64`, `seq: u64`, `part: u16`, `parts: u16`, then whole 188-byte TS packets to the end | 26 + 188·k |
//!
//! A datagram whose first byte is `0x47` (the MPEG-TS sync byte) is *raw* TS, as an ffmpeg
//! relay sends it; no tag above uses that value, so a client tells the two apart by the first
//! byte ([`is_raw_ts`]).
//!
//! # Why these shapes
//!
//! - **No amplification.** An edge answers an unproven address only with messages no larger
//!   than what it received: a [`Probe`] is padded to the size of its [`ProbeAck`], and a
//!   request with a bad cookie gets a 9-byte [`Challenge`]. Anything larger (lists, video) goes
//!   only to an address that has echoed a cookie, which proves it receives what the edge sends.
//! - **Cookies carry no state.** The edge derives a cookie from the client address and a time
//!   bucket with a keyed hash; it checks an echo by recomputing it.
//! - **Framed video.** [`VideoData`] carries the overlay chunk's `(epoch, seq)` and the part of
//!   the chunk this datagram holds (a chunk larger than one datagram is split at TS packet
//!   boundaries). Every edge fed by the overlay numbers the same chunk the same way, so a client
//!   switching edges mid-stream drops duplicates and late datagrams by `(epoch, seq, part)` and
//!   hands the player only the TS packets, in order. `stream` is the client's id for one
//!   request, so datagrams of a video it has just left are told apart from the new one.
//! - **Retransmission on request.** A client that sees a hole in the `(seq, part)` numbers
//!   asks its edge for the missing parts in a [`Nack`]: per hole, a chunk and a range of its
//!   parts (`first..=last`; `last` = [`NACK_TO_LAST_PART`] when the client does not know how
//!   many parts the chunk has). The edge answers only a session whose cookie the NACK echoes
//!   and sends what it still holds, flagged [`VIDEO_FLAG_RETRANSMIT`]. A NACK names at most
//!   [`MAX_NACK_HOLES`] holes and at least one. Chunks the edge cannot send (it never had
//!   them: a hole upstream of it; or no longer holds them) it names in a [`NackMiss`], never
//!   larger than the NACK it answers, so the client stops waiting for them at once.
//! - **Drain notices are tied to the session.** An edge that is shutting down tells each
//!   client in a [`DrainNotice`] carrying the session's `stream` and the cookie the client
//!   last echoed for it: a host that did not see the session's traffic cannot forge one, and
//!   a client takes it only from its session's edge address.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_or_rollback, put_str, put_str_list, DecodeError, EncodeError, Reader};

/// Size of one MPEG-TS packet.
pub const TS_PACKET_LEN: usize = 188;
/// First byte of every MPEG-TS packet, and so of every raw-TS datagram.
pub const TS_SYNC: u8 = 0x47;

pub const TAG_PROBE: u8 = 0x01;
pub const TAG_PROBE_ACK: u8 = 0x02;
pub const TAG_LIST_REQUEST: u8 = 0x03;
pub const TAG_LIST_REPLY: u8 = 0x04;
pub const TAG_VIDEO_REQUEST: u8 = 0x05;
pub const TAG_VIDEO_CANCEL: u8 = 0x06;
pub const TAG_KEEPALIVE: u8 = 0x07;
pub const TAG_CHALLENGE: u8 = 0x08;
pub const TAG_VIDEO_OK: u8 = 0x09;
pub const TAG_ERROR: u8 = 0x0A;
pub const TAG_DRAIN: u8 = 0x0B;
pub const TAG_NACK: u8 = 0x0C;
pub const TAG_NACK_MISS: u8 = 0x0D;
pub const TAG_VIDEO_DATA: u8 = 0x10;

/// Padding after a probe's token, so a probe is exactly as large as its ack.
pub const PROBE_PAD_LEN: usize = 8;

/// [`VideoData::flags`] bit: the chunk starts with a keyframe.
pub const VIDEO_FLAG_KEYFRAME: u8 = 0x01;
/// [`VideoData::flags`] bit: replayed from the edge's GOP cache, not live.
pub const VIDEO_FLAG_CACHED: u8 = 0x02;
/// [`VideoData::flags`] bit: sent again because the client asked for it in a [`Nack`].
pub const VIDEO_FLAG_RETRANSMIT: u8 = 0x04;

/// Most holes one [`Nack`] names (its datagram stays under 800 bytes).
pub const MAX_NACK_HOLES: usize = 64;
/// [`NackHole::last`] value meaning "to the chunk's last part" (never a valid part index:
/// `part < parts <= u16::MAX`).
pub const NACK_TO_LAST_PART: u16 = u16::MAX;

/// [`VideoRequest::flags`] bit: the client is moving here from another edge mid-stream; start
/// at once (with the GOP cache) instead of waiting for the next keyframe.
pub const REQUEST_FLAG_CONTINUE: u8 = 0x01;

/// Bytes of a [`VideoData`] header, tag included.
pub const VIDEO_HEADER_LEN: usize = 1 + 4 + 1 + 8 + 8 + 2 + 2;

/// Largest TS payload of one [`VideoData`]: 7 packets, the usual TS-over-UDP size, which
/// with the header stays under a 1500-byte Ethernet MTU.
pub const MAX_TS_PER_DATAGRAM: usize = 7;

/// True for a raw-TS datagram (ffmpeg relay mode) rather than a framed message.
pub fn is_raw_ts(datagram: &[u8]) -> bool {
    datagram.first() == Some(&TS_SYNC)
}

/// Link probe: the client measures round-trip time and loss with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub token: u64,
}

/// The edge's answer to a [`Probe`]; it also hands out a fresh cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAck {
    pub token: u64,
    pub cookie: u64,
}

/// Asks for the videos the edge can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListRequest {
    pub cookie: u64,
}

/// The videos an edge can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListReply {
    pub videos: Vec<String>,
}

/// Asks for a video; `stream` is the client's id for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRequest {
    pub cookie: u64,
    pub stream: u32,
    /// Bit 0: [`REQUEST_FLAG_CONTINUE`]. Other bits are ignored by this version.
    pub flags: u8,
    pub video: String,
}

/// Stops the session `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoCancel {
    pub cookie: u64,
    pub stream: u32,
}

/// Renews the lease of session `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub cookie: u64,
    pub stream: u32,
}

/// "Echo this cookie": the answer to a request whose cookie is missing or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub cookie: u64,
}

/// The edge accepted a [`VideoRequest`]; data follows when the stream flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoOk {
    pub stream: u32,
    pub video: String,
}

/// Why an edge refused or dropped a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The edge knows no route to this video.
    UnknownVideo,
    /// The edge serves as many clients as it is allowed to.
    Busy,
    /// A keepalive or cancel for a session the edge does not have (expired, or edge restarted).
    UnknownStream,
}

impl ErrorCode {
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::UnknownVideo => 1,
            ErrorCode::Busy => 2,
            ErrorCode::UnknownStream => 3,
        }
    }

    pub fn from_u8(v: u8) -> Option<ErrorCode> {
        match v {
            1 => Some(ErrorCode::UnknownVideo),
            2 => Some(ErrorCode::Busy),
            3 => Some(ErrorCode::UnknownStream),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownVideo => "unknown video",
            ErrorCode::Busy => "edge busy",
            ErrorCode::UnknownStream => "unknown stream",
        }
    }
}

/// An error reply about session `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub stream: u32,
}

/// "This edge is shutting down: move session `stream` elsewhere, I feed it until you
/// cancel." `cookie` is the cookie the client echoed in its latest request or keepalive of
/// the session, which proves the notice comes from the edge the client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainNotice {
    pub cookie: u64,
    pub stream: u32,
    /// The edge exits within this long (after that, whatever answers at its address is a
    /// restarted edge).
    pub within_ms: u32,
}

/// One hole of a [`Nack`]: parts `first..=last` of chunk `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NackHole {
    pub seq: u64,
    pub first: u16,
    /// Inclusive; [`NACK_TO_LAST_PART`]: up to the chunk's last part.
    pub last: u16,
}

impl NackHole {
    /// Every part of chunk `seq` (the client has seen none of it, so it cannot know how many).
    pub fn whole(seq: u64) -> NackHole {
        NackHole {
            seq,
            first: 0,
            last: NACK_TO_LAST_PART,
        }
    }
}

/// "Send these parts of session `stream`'s chunks of `epoch` again": the client's negative
/// acknowledgement of holes in what it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub cookie: u64,
    pub stream: u32,
    pub epoch: u64,
    /// One to [`MAX_NACK_HOLES`] holes, each with `first <= last`.
    pub holes: Vec<NackHole>,
}

/// "These chunks of session `stream`'s `epoch` will not come": the edge's answer to the
/// holes of a [`Nack`] it cannot fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackMiss {
    pub stream: u32,
    pub epoch: u64,
    /// One to [`MAX_NACK_HOLES`] chunk numbers.
    pub seqs: Vec<u64>,
}

/// One datagram of video: part `part` of `parts` of chunk `(epoch, seq)`.
#[derive(Clone, PartialEq, Eq)]
pub struct VideoData {
    pub stream: u32,
    /// [`VIDEO_FLAG_KEYFRAME`] (of the chunk), [`VIDEO_FLAG_CACHED`]; other bits carried.
    pub flags: u8,
    pub epoch: u64,
    pub seq: u64,
    pub part: u16,
    pub parts: u16,
    /// Whole TS packets (a multiple of 188 bytes, at least one packet).
    pub payload: Bytes,
}

impl VideoData {
    pub fn is_keyframe(&self) -> bool {
        self.flags & VIDEO_FLAG_KEYFRAME != 0
    }

    /// Position of this datagram in the stream, for ordering within one epoch.
    pub fn position(&self) -> (u64, u16) {
        (self.seq, self.part)
    }
}

impl std::fmt::Debug for VideoData {
    // Payloads are kilobytes of binary: summarised by length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoData")
            .field("stream", &self.stream)
            .field("flags", &self.flags)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("part", &self.part)
            .field("parts", &self.parts)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Every message of the edge ↔ client protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Probe(Probe),
    ProbeAck(ProbeAck),
    ListRequest(ListRequest),
    ListReply(ListReply),
    VideoRequest(VideoRequest),
    VideoCancel(VideoCancel),
    Keepalive(Keepalive),
    Challenge(Challenge),
    VideoOk(VideoOk),
    Error(ErrorMsg),
    Drain(DrainNotice),
    Nack(Nack),
    NackMiss(NackMiss),
    VideoData(VideoData),
}

impl ClientMsg {
    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Probe(_) => "probe",
            ClientMsg::ProbeAck(_) => "probe_ack",
            ClientMsg::ListRequest(_) => "list_request",
            ClientMsg::ListReply(_) => "list_reply",
            ClientMsg::VideoRequest(_) => "video_request",
            ClientMsg::VideoCancel(_) => "video_cancel",
            ClientMsg::Keepalive(_) => "keepalive",
            ClientMsg::Challenge(_) => "challenge",
            ClientMsg::VideoOk(_) => "video_ok",
            ClientMsg::Error(_) => "error",
            ClientMsg::Drain(_) => "drain",
            ClientMsg::Nack(_) => "nack",
            ClientMsg::NackMiss(_) => "nack_miss",
            ClientMsg::VideoData(_) => "video_data",
        }
    }

    /// Appends this message to `dst`. On error `dst` is left as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_or_rollback(dst, |dst| self.encode_inner(dst))
    }

    /// The message as a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }

    fn encode_inner(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            ClientMsg::Probe(m) => {
                dst.put_u8(TAG_PROBE);
                dst.put_u64(m.token);
                dst.put_bytes(0, PROBE_PAD_LEN);
            }
            ClientMsg::ProbeAck(m) => {
                dst.put_u8(TAG_PROBE_ACK);
                dst.put_u64(m.token);
                dst.put_u64(m.cookie);
            }
            ClientMsg::ListRequest(m) => {
                dst.put_u8(TAG_LIST_REQUEST);
                dst.put_u64(m.cookie);
            }
            ClientMsg::ListReply(m) => {
                dst.put_u8(TAG_LIST_REPLY);
                put_str_list(dst, "list_reply.videos", &m.videos)?;
            }
            ClientMsg::VideoRequest(m) => {
                dst.put_u8(TAG_VIDEO_REQUEST);
                dst.put_u64(m.cookie);
                dst.put_u32(m.stream);
                dst.put_u8(m.flags);
                put_str(dst, "video_request.video", &m.video)?;
            }
            ClientMsg::VideoCancel(m) => {
                dst.put_u8(TAG_VIDEO_CANCEL);
                dst.put_u64(m.cookie);
                dst.put_u32(m.stream);
            }
            ClientMsg::Keepalive(m) => {
                dst.put_u8(TAG_KEEPALIVE);
                dst.put_u64(m.cookie);
                dst.put_u32(m.stream);
            }
            ClientMsg::Challenge(m) => {
                dst.put_u8(TAG_CHALLENGE);
                dst.put_u64(m.cookie);
            }
            ClientMsg::VideoOk(m) => {
                dst.put_u8(TAG_VIDEO_OK);
                dst.put_u32(m.stream);
                put_str(dst, "video_ok.video", &m.video)?;
            }
            ClientMsg::Error(m) => {
                dst.put_u8(TAG_ERROR);
                dst.put_u8(m.code.to_u8());
                dst.put_u32(m.stream);
            }
            ClientMsg::Drain(m) => {
                dst.put_u8(TAG_DRAIN);
                dst.put_u64(m.cookie);
                dst.put_u32(m.stream);
                dst.put_u32(m.within_ms);
            }
            ClientMsg::Nack(m) => {
                check_nack_holes(&m.holes).map_err(|(what, len, max)| EncodeError::TooLong {
                    what,
                    len,
                    max,
                })?;
                dst.put_u8(TAG_NACK);
                dst.put_u64(m.cookie);
                dst.put_u32(m.stream);
                dst.put_u64(m.epoch);
                // Checked above: at most MAX_NACK_HOLES, so it fits a u16.
                dst.put_u16(m.holes.len() as u16);
                for h in &m.holes {
                    dst.put_u64(h.seq);
                    dst.put_u16(h.first);
                    dst.put_u16(h.last);
                }
            }
            ClientMsg::NackMiss(m) => {
                if m.seqs.is_empty() || m.seqs.len() > MAX_NACK_HOLES {
                    return Err(EncodeError::TooLong {
                        what: "nack_miss.seqs (1 to 64)",
                        len: m.seqs.len(),
                        max: MAX_NACK_HOLES,
                    });
                }
                dst.put_u8(TAG_NACK_MISS);
                dst.put_u32(m.stream);
                dst.put_u64(m.epoch);
                // Checked above: at most MAX_NACK_HOLES.
                dst.put_u16(m.seqs.len() as u16);
                for s in &m.seqs {
                    dst.put_u64(*s);
                }
            }
            ClientMsg::VideoData(m) => {
                check_ts_payload(m.payload.len()).map_err(|len| EncodeError::TooLong {
                    what: "video_data.payload (not whole TS packets)",
                    len,
                    max: len - len % TS_PACKET_LEN,
                })?;
                if m.parts == 0 || m.part >= m.parts {
                    return Err(EncodeError::TooLong {
                        what: "video_data.part",
                        len: usize::from(m.part),
                        max: usize::from(m.parts.saturating_sub(1)),
                    });
                }
                put_video_header(dst, m.stream, m.flags, m.epoch, m.seq, m.part, m.parts);
                dst.put_slice(&m.payload);
            }
        }
        Ok(())
    }

    /// Decodes one whole datagram. The payload of [`VideoData`] is a zero-copy slice of it.
    pub fn decode(datagram: Bytes) -> Result<ClientMsg, DecodeError> {
        let mut r = Reader::new(&datagram);
        let tag = r.u8("tag")?;
        let msg = match tag {
            TAG_PROBE => {
                let token = r.u64("probe.token")?;
                let pad = r.take(PROBE_PAD_LEN, "probe.pad")?;
                if pad.iter().any(|&b| b != 0) {
                    return Err(DecodeError::BadValue {
                        what: "probe.pad",
                        value: 1,
                    });
                }
                ClientMsg::Probe(Probe { token })
            }
            TAG_PROBE_ACK => ClientMsg::ProbeAck(ProbeAck {
                token: r.u64("probe_ack.token")?,
                cookie: r.u64("probe_ack.cookie")?,
            }),
            TAG_LIST_REQUEST => ClientMsg::ListRequest(ListRequest {
                cookie: r.u64("list_request.cookie")?,
            }),
            TAG_LIST_REPLY => ClientMsg::ListReply(ListReply {
                videos: r.str_list("list_reply.videos")?,
            }),
            TAG_VIDEO_REQUEST => ClientMsg::VideoRequest(VideoRequest {
                cookie: r.u64("video_request.cookie")?,
                stream: r.u32("video_request.stream")?,
                flags: r.u8("video_request.flags")?,
                video: r.str_u16("video_request.video")?,
            }),
            TAG_VIDEO_CANCEL => ClientMsg::VideoCancel(VideoCancel {
                cookie: r.u64("video_cancel.cookie")?,
                stream: r.u32("video_cancel.stream")?,
            }),
            TAG_KEEPALIVE => ClientMsg::Keepalive(Keepalive {
                cookie: r.u64("keepalive.cookie")?,
                stream: r.u32("keepalive.stream")?,
            }),
            TAG_CHALLENGE => ClientMsg::Challenge(Challenge {
                cookie: r.u64("challenge.cookie")?,
            }),
            TAG_VIDEO_OK => ClientMsg::VideoOk(VideoOk {
                stream: r.u32("video_ok.stream")?,
                video: r.str_u16("video_ok.video")?,
            }),
            TAG_ERROR => {
                let raw = r.u8("error.code")?;
                let code = ErrorCode::from_u8(raw).ok_or(DecodeError::BadValue {
                    what: "error.code",
                    value: u64::from(raw),
                })?;
                ClientMsg::Error(ErrorMsg {
                    code,
                    stream: r.u32("error.stream")?,
                })
            }
            TAG_DRAIN => ClientMsg::Drain(DrainNotice {
                cookie: r.u64("drain.cookie")?,
                stream: r.u32("drain.stream")?,
                within_ms: r.u32("drain.within_ms")?,
            }),
            TAG_NACK => {
                let cookie = r.u64("nack.cookie")?;
                let stream = r.u32("nack.stream")?;
                let epoch = r.u64("nack.epoch")?;
                let count = usize::from(r.u16("nack.holes")?);
                if count == 0 || count > MAX_NACK_HOLES {
                    return Err(DecodeError::BadValue {
                        what: "nack.holes",
                        value: count as u64,
                    });
                }
                if count * NACK_HOLE_LEN > r.remaining() {
                    return Err(DecodeError::Truncated { what: "nack.holes" });
                }
                let mut holes = Vec::with_capacity(count);
                for _ in 0..count {
                    let seq = r.u64("nack.hole.seq")?;
                    let first = r.u16("nack.hole.first")?;
                    let last = r.u16("nack.hole.last")?;
                    if first > last {
                        return Err(DecodeError::BadValue {
                            what: "nack.hole.first",
                            value: u64::from(first),
                        });
                    }
                    holes.push(NackHole { seq, first, last });
                }
                ClientMsg::Nack(Nack {
                    cookie,
                    stream,
                    epoch,
                    holes,
                })
            }
            TAG_NACK_MISS => {
                let stream = r.u32("nack_miss.stream")?;
                let epoch = r.u64("nack_miss.epoch")?;
                let count = usize::from(r.u16("nack_miss.seqs")?);
                if count == 0 || count > MAX_NACK_HOLES {
                    return Err(DecodeError::BadValue {
                        what: "nack_miss.seqs",
                        value: count as u64,
                    });
                }
                if count * 8 > r.remaining() {
                    return Err(DecodeError::Truncated {
                        what: "nack_miss.seqs",
                    });
                }
                let mut seqs = Vec::with_capacity(count);
                for _ in 0..count {
                    seqs.push(r.u64("nack_miss.seq")?);
                }
                ClientMsg::NackMiss(NackMiss {
                    stream,
                    epoch,
                    seqs,
                })
            }
            TAG_VIDEO_DATA => {
                let stream = r.u32("video_data.stream")?;
                let flags = r.u8("video_data.flags")?;
                let epoch = r.u64("video_data.epoch")?;
                let seq = r.u64("video_data.seq")?;
                let part = r.u16("video_data.part")?;
                let parts = r.u16("video_data.parts")?;
                if parts == 0 || part >= parts {
                    return Err(DecodeError::BadValue {
                        what: "video_data.part",
                        value: u64::from(part),
                    });
                }
                let payload = r.rest();
                check_ts_payload(payload.len()).map_err(|len| DecodeError::BadValue {
                    what: "video_data.payload_len",
                    value: len as u64,
                })?;
                ClientMsg::VideoData(VideoData {
                    stream,
                    flags,
                    epoch,
                    seq,
                    part,
                    parts,
                    payload,
                })
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Bytes of one [`NackHole`].
const NACK_HOLE_LEN: usize = 8 + 2 + 2;

/// A NACK's holes must be 1 to [`MAX_NACK_HOLES`], each with `first <= last`; otherwise the
/// field, its value and the limit.
fn check_nack_holes(holes: &[NackHole]) -> Result<(), (&'static str, usize, usize)> {
    if holes.is_empty() || holes.len() > MAX_NACK_HOLES {
        return Err(("nack.holes (1 to 64)", holes.len(), MAX_NACK_HOLES));
    }
    match holes.iter().find(|h| h.first > h.last) {
        Some(h) => Err(("nack.hole (first > last)", h.first.into(), h.last.into())),
        None => Ok(()),
    }
}

/// A video payload must be one or more whole TS packets; `Err(len)` otherwise.
fn check_ts_payload(len: usize) -> Result<(), usize> {
    if len == 0 || len % TS_PACKET_LEN != 0 {
        Err(len)
    } else {
        Ok(())
    }
}

/// Writes a [`VideoData`] header; the caller appends the payload. Lets an edge frame one
/// chunk part for many clients without building a message per client.
pub fn put_video_header(
    dst: &mut BytesMut,
    stream: u32,
    flags: u8,
    epoch: u64,
    seq: u64,
    part: u16,
    parts: u16,
) {
    dst.reserve(VIDEO_HEADER_LEN);
    dst.put_u8(TAG_VIDEO_DATA);
    dst.put_u32(stream);
    dst.put_u8(flags);
    dst.put_u64(epoch);
    dst.put_u64(seq);
    dst.put_u16(part);
    dst.put_u16(parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(msg: &ClientMsg) -> Vec<u8> {
        msg.to_bytes().expect("encode").to_vec()
    }

    fn dec(bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
        ClientMsg::decode(Bytes::copy_from_slice(bytes))
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn ts(n: usize, fill: u8) -> Bytes {
        let mut v = Vec::with_capacity(n * TS_PACKET_LEN);
        for _ in 0..n {
            v.push(TS_SYNC);
            v.extend(std::iter::repeat(fill).take(TS_PACKET_LEN - 1));
        }
        Bytes::from(v)
    }

    /// Golden bytes: the exact encoding of one example of each message.
    fn golden() -> Vec<(ClientMsg, &'static str)> {
        vec![
            (
                ClientMsg::Probe(Probe {
                    token: 0x0102030405060708,
                }),
                "01 0102030405060708 0000000000000000",
            ),
            (
                ClientMsg::ProbeAck(ProbeAck {
                    token: 0x0102030405060708,
                    cookie: 0xa1a2a3a4a5a6a7a8,
                }),
                "02 0102030405060708 a1a2a3a4a5a6a7a8",
            ),
            (
                ClientMsg::ListRequest(ListRequest {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                }),
                "03 a1a2a3a4a5a6a7a8",
            ),
            (
                ClientMsg::ListReply(ListReply {
                    videos: vec!["a".into(), "bc".into()],
                }),
                "04 0002 0001 61 0002 6263",
            ),
            (
                ClientMsg::VideoRequest(VideoRequest {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                    stream: 7,
                    flags: REQUEST_FLAG_CONTINUE,
                    video: "v1".into(),
                }),
                "05 a1a2a3a4a5a6a7a8 00000007 01 0002 7631",
            ),
            (
                ClientMsg::VideoCancel(VideoCancel {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                    stream: 7,
                }),
                "06 a1a2a3a4a5a6a7a8 00000007",
            ),
            (
                ClientMsg::Keepalive(Keepalive {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                    stream: 7,
                }),
                "07 a1a2a3a4a5a6a7a8 00000007",
            ),
            (
                ClientMsg::Challenge(Challenge {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                }),
                "08 a1a2a3a4a5a6a7a8",
            ),
            (
                ClientMsg::VideoOk(VideoOk {
                    stream: 7,
                    video: "v1".into(),
                }),
                "09 00000007 0002 7631",
            ),
            (
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::UnknownVideo,
                    stream: 7,
                }),
                "0a 01 00000007",
            ),
            (
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::Busy,
                    stream: 0,
                }),
                "0a 02 00000000",
            ),
            (
                ClientMsg::Error(ErrorMsg {
                    code: ErrorCode::UnknownStream,
                    stream: 1,
                }),
                "0a 03 00000001",
            ),
            (
                ClientMsg::Drain(DrainNotice {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                    stream: 7,
                    within_ms: 2000,
                }),
                "0b a1a2a3a4a5a6a7a8 00000007 000007d0",
            ),
            (
                ClientMsg::Nack(Nack {
                    cookie: 0xa1a2a3a4a5a6a7a8,
                    stream: 7,
                    epoch: 0x1122334455667788,
                    holes: vec![
                        NackHole {
                            seq: 42,
                            first: 1,
                            last: 2,
                        },
                        NackHole::whole(44),
                    ],
                }),
                "0c a1a2a3a4a5a6a7a8 00000007 1122334455667788 0002 \
                 000000000000002a 0001 0002 000000000000002c 0000 ffff",
            ),
            (
                ClientMsg::NackMiss(NackMiss {
                    stream: 7,
                    epoch: 0x1122334455667788,
                    seqs: vec![42, 44],
                }),
                "0d 00000007 1122334455667788 0002 000000000000002a 000000000000002c",
            ),
        ]
    }

    #[test]
    fn golden_bytes_and_round_trip() {
        for (msg, text) in golden() {
            let bytes = enc(&msg);
            assert_eq!(bytes, hex(text), "{}", msg.kind());
            assert_eq!(dec(&bytes), Ok(msg));
        }
    }

    #[test]
    fn video_data_golden_bytes_and_zero_copy() {
        let msg = ClientMsg::VideoData(VideoData {
            stream: 7,
            flags: VIDEO_FLAG_KEYFRAME | VIDEO_FLAG_CACHED,
            epoch: 0x1122334455667788,
            seq: 42,
            part: 1,
            parts: 3,
            payload: ts(1, 0xee),
        });
        let bytes = enc(&msg);
        let mut expected = hex("10 00000007 03 1122334455667788 000000000000002a 0001 0003");
        assert_eq!(expected.len(), VIDEO_HEADER_LEN);
        expected.extend_from_slice(&ts(1, 0xee));
        assert_eq!(bytes, expected);
        let shared = Bytes::from(bytes);
        let decoded = ClientMsg::decode(shared.clone()).unwrap();
        assert_eq!(decoded, msg);
        let ClientMsg::VideoData(d) = decoded else {
            unreachable!()
        };
        assert!(d.is_keyframe());
        assert_eq!(d.position(), (42, 1));
        assert_eq!(d.payload.as_ptr(), shared[VIDEO_HEADER_LEN..].as_ptr());
    }

    #[test]
    fn probe_is_exactly_as_large_as_its_ack_and_challenge_no_larger_than_any_request() {
        let probe = enc(&ClientMsg::Probe(Probe { token: 1 }));
        let ack = enc(&ClientMsg::ProbeAck(ProbeAck {
            token: 1,
            cookie: 2,
        }));
        assert_eq!(probe.len(), ack.len());
        let challenge = enc(&ClientMsg::Challenge(Challenge { cookie: 1 })).len();
        let error = enc(&ClientMsg::Error(ErrorMsg {
            code: ErrorCode::Busy,
            stream: 1,
        }))
        .len();
        for req in [
            ClientMsg::ListRequest(ListRequest { cookie: 0 }),
            ClientMsg::VideoRequest(VideoRequest {
                cookie: 0,
                stream: 0,
                flags: 0,
                video: String::new(),
            }),
            ClientMsg::VideoCancel(VideoCancel {
                cookie: 0,
                stream: 0,
            }),
            ClientMsg::Keepalive(Keepalive {
                cookie: 0,
                stream: 0,
            }),
            ClientMsg::Nack(Nack {
                cookie: 0,
                stream: 0,
                epoch: 0,
                holes: vec![NackHole::whole(0)],
            }),
        ] {
            assert!(challenge <= enc(&req).len(), "{}", req.kind());
        }
        // Errors answer only video requests, keepalives and cancels.
        assert!(error <= 13);
    }

    #[test]
    fn raw_ts_is_told_apart_from_framed_messages() {
        assert!(is_raw_ts(&ts(1, 0)));
        assert!(!is_raw_ts(&enc(&ClientMsg::Challenge(Challenge {
            cookie: 0
        }))));
        assert!(!is_raw_ts(&[]));
        assert_eq!(dec(&ts(1, 0)), Err(DecodeError::UnknownTag(TS_SYNC)));
    }

    #[test]
    fn decode_rejects_malformed_datagrams() {
        assert_eq!(dec(&[]), Err(DecodeError::Truncated { what: "tag" }));
        assert_eq!(dec(&[0x42]), Err(DecodeError::UnknownTag(0x42)));
        // Probe padding must be zero (the encoding is canonical).
        let mut p = enc(&ClientMsg::Probe(Probe { token: 1 }));
        p[16] = 1;
        assert!(matches!(dec(&p), Err(DecodeError::BadValue { .. })));
        // Short probe: an edge must not answer a probe smaller than its ack.
        assert_eq!(
            dec(&p[..9]),
            Err(DecodeError::Truncated { what: "probe.pad" })
        );
        // Trailing bytes.
        let mut c = enc(&ClientMsg::Challenge(Challenge { cookie: 1 }));
        c.push(0);
        assert_eq!(dec(&c), Err(DecodeError::TrailingBytes(1)));
        // Unknown error code.
        assert_eq!(
            dec(&hex("0a 09 00000001")),
            Err(DecodeError::BadValue {
                what: "error.code",
                value: 9
            })
        );
        // Video: part out of range, zero parts, partial TS packet, empty payload.
        let header = |part: u16, parts: u16| {
            let mut b = BytesMut::new();
            put_video_header(&mut b, 1, 0, 1, 1, part, parts);
            b.to_vec()
        };
        let mut v = header(3, 3);
        v.extend_from_slice(&ts(1, 0));
        assert!(matches!(dec(&v), Err(DecodeError::BadValue { .. })));
        let mut v = header(0, 0);
        v.extend_from_slice(&ts(1, 0));
        assert!(matches!(dec(&v), Err(DecodeError::BadValue { .. })));
        let mut v = header(0, 1);
        v.extend_from_slice(&ts(1, 0)[..100]);
        assert_eq!(
            dec(&v),
            Err(DecodeError::BadValue {
                what: "video_data.payload_len",
                value: 100
            })
        );
        assert!(matches!(
            dec(&header(0, 1)),
            Err(DecodeError::BadValue { .. })
        ));
    }

    #[test]
    fn nack_needs_one_to_64_well_formed_holes() {
        let nack = |holes: Vec<NackHole>| {
            ClientMsg::Nack(Nack {
                cookie: 1,
                stream: 2,
                epoch: 3,
                holes,
            })
        };
        let max = nack((0..MAX_NACK_HOLES as u64).map(NackHole::whole).collect());
        let bytes = enc(&max);
        assert_eq!(bytes.len(), 23 + 12 * MAX_NACK_HOLES);
        assert_eq!(dec(&bytes), Ok(max));
        // Encode refuses none, too many, and a hole whose range is backwards.
        let mut buf = BytesMut::new();
        assert!(nack(vec![]).encode(&mut buf).is_err());
        let too_many = (0..=MAX_NACK_HOLES as u64).map(NackHole::whole).collect();
        assert!(nack(too_many).encode(&mut buf).is_err());
        let backwards = NackHole {
            seq: 1,
            first: 3,
            last: 2,
        };
        assert!(nack(vec![backwards]).encode(&mut buf).is_err());
        assert!(buf.is_empty());
        // Decode refuses the same, and a count promising more holes than the datagram holds.
        let header = hex("0c 0000000000000001 00000002 0000000000000003");
        let with = |count: &str, holes: &str| {
            let mut v = header.clone();
            v.extend(hex(count));
            v.extend(hex(holes));
            v
        };
        assert_eq!(
            dec(&with("0000", "")),
            Err(DecodeError::BadValue {
                what: "nack.holes",
                value: 0
            })
        );
        assert!(matches!(
            dec(&with("0041", "")),
            Err(DecodeError::BadValue { .. })
        ));
        assert_eq!(
            dec(&with("0002", "0000000000000001 0000 0000")),
            Err(DecodeError::Truncated { what: "nack.holes" })
        );
        assert_eq!(
            dec(&with("0001", "0000000000000001 0003 0002")),
            Err(DecodeError::BadValue {
                what: "nack.hole.first",
                value: 3
            })
        );
        assert_eq!(
            dec(&with("0001", "0000000000000001 0000 0000 00")),
            Err(DecodeError::TrailingBytes(1))
        );
        // A miss names 1 to 64 chunks, and is never larger than the NACK it answers.
        let miss = |seqs: Vec<u64>| {
            ClientMsg::NackMiss(NackMiss {
                stream: 2,
                epoch: 3,
                seqs,
            })
        };
        assert!(miss(vec![]).encode(&mut buf).is_err());
        assert!(miss((0..=MAX_NACK_HOLES as u64).collect())
            .encode(&mut buf)
            .is_err());
        assert!(matches!(
            dec(&hex("0d 00000002 0000000000000003 0000")),
            Err(DecodeError::BadValue { .. })
        ));
        for n in 1..=MAX_NACK_HOLES as u64 {
            let asked = enc(&nack((0..n).map(NackHole::whole).collect())).len();
            assert!(enc(&miss((0..n).collect())).len() <= asked);
        }
    }

    #[test]
    fn encode_refuses_invalid_video_and_leaves_buffer_untouched() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        let bad = ClientMsg::VideoData(VideoData {
            stream: 1,
            flags: 0,
            epoch: 0,
            seq: 0,
            part: 0,
            parts: 1,
            payload: Bytes::from_static(&[0x47; 10]),
        });
        assert!(bad.encode(&mut buf).is_err());
        let bad_part = ClientMsg::VideoData(VideoData {
            stream: 1,
            flags: 0,
            epoch: 0,
            seq: 0,
            part: 1,
            parts: 1,
            payload: ts(1, 0),
        });
        assert!(bad_part.encode(&mut buf).is_err());
        let long = ClientMsg::VideoRequest(VideoRequest {
            cookie: 0,
            stream: 0,
            flags: 0,
            video: "x".repeat(2000),
        });
        assert!(long.encode(&mut buf).is_err());
        assert_eq!(&buf[..], b"xy");
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.é-]{0,12}"
    }

    fn arb_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            any::<u64>().prop_map(|token| ClientMsg::Probe(Probe { token })),
            (any::<u64>(), any::<u64>())
                .prop_map(|(token, cookie)| ClientMsg::ProbeAck(ProbeAck { token, cookie })),
            any::<u64>().prop_map(|cookie| ClientMsg::ListRequest(ListRequest { cookie })),
            prop::collection::vec(arb_name(), 0..5)
                .prop_map(|videos| ClientMsg::ListReply(ListReply { videos })),
            (any::<u64>(), any::<u32>(), any::<u8>(), arb_name()).prop_map(
                |(cookie, stream, flags, video)| ClientMsg::VideoRequest(VideoRequest {
                    cookie,
                    stream,
                    flags,
                    video
                })
            ),
            (any::<u64>(), any::<u32>()).prop_map(|(cookie, stream)| ClientMsg::VideoCancel(
                VideoCancel { cookie, stream }
            )),
            (any::<u64>(), any::<u32>())
                .prop_map(|(cookie, stream)| ClientMsg::Keepalive(Keepalive { cookie, stream })),
            any::<u64>().prop_map(|cookie| ClientMsg::Challenge(Challenge { cookie })),
            (any::<u32>(), arb_name())
                .prop_map(|(stream, video)| ClientMsg::VideoOk(VideoOk { stream, video })),
            (1u8..=3, any::<u32>()).prop_map(|(code, stream)| ClientMsg::Error(ErrorMsg {
                code: ErrorCode::from_u8(code).unwrap(),
                stream
            })),
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(cookie, stream, within_ms)| {
                ClientMsg::Drain(DrainNotice {
                    cookie,
                    stream,
                    within_ms,
                })
            }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                prop::collection::vec(
                    (any::<u64>(), any::<u16>(), any::<u16>()).prop_map(|(seq, a, b)| {
                        NackHole {
                            seq,
                            first: a.min(b),
                            last: a.max(b),
                        }
                    }),
                    1..=MAX_NACK_HOLES
                )
            )
                .prop_map(|(cookie, stream, epoch, holes)| ClientMsg::Nack(Nack {
                    cookie,
                    stream,
                    epoch,
                    holes
                })),
            (
                any::<u32>(),
                any::<u64>(),
                prop::collection::vec(any::<u64>(), 1..=MAX_NACK_HOLES)
            )
                .prop_map(|(stream, epoch, seqs)| ClientMsg::NackMiss(NackMiss {
                    stream,
                    epoch,
                    seqs
                })),
            (
                any::<u32>(),
                any::<u8>(),
                any::<u64>(),
                any::<u64>(),
                (1u16..50).prop_flat_map(|parts| (0..parts, Just(parts))),
                1usize..4,
                any::<u8>()
            )
                .prop_map(|(stream, flags, epoch, seq, (part, parts), n, fill)| {
                    ClientMsg::VideoData(VideoData {
                        stream,
                        flags,
                        epoch,
                        seq,
                        part,
                        parts,
                        payload: ts(n, fill),
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn prop_round_trip(msg in arb_msg()) {
            let bytes = enc(&msg);
            prop_assert_eq!(dec(&bytes), Ok(msg));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic_and_decode_is_canonical(
            bytes in prop::collection::vec(any::<u8>(), 0..600)
        ) {
            if let Ok(msg) = dec(&bytes) {
                prop_assert_eq!(enc(&msg), bytes);
            }
        }

        #[test]
        fn prop_bytes_after_a_known_tag_never_panic(
            tag in prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0x10]),
            body in prop::collection::vec(any::<u8>(), 0..420),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&body);
            if let Ok(msg) = dec(&bytes) {
                prop_assert_eq!(enc(&msg), bytes);
            }
        }

        #[test]
        fn prop_strict_prefixes_fail(msg in arb_msg()) {
            let bytes = enc(&msg);
            // A cut video datagram can still be whole TS packets: only cuts inside the
            // header or a packet must fail.
            for cut in 0..bytes.len() {
                let is_video = matches!(msg, ClientMsg::VideoData(_));
                if is_video && cut > VIDEO_HEADER_LEN && (cut - VIDEO_HEADER_LEN) % TS_PACKET_LEN == 0 {
                    continue;
                }
                prop_assert!(dec(&bytes[..cut]).is_err());
            }
        }
    }
}
