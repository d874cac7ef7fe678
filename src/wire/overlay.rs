//! The overlay message set: what servers and overlay nodes say to each other over their
//! encrypted TCP connections, and the exact bytes of each message.
//!
//! This module owns [`OverlayMsg`] and its codec. One message fills one decrypted record of the
//! record layer (`crate::crypto`), so a message carries no outer length: the record boundary is
//! the message boundary. [`OverlayMsg::decode`] takes the whole record and rejects anything that
//! is not exactly one well-formed message; [`OverlayMsg::encode`] appends one message to a
//! buffer and never truncates a field that is over its cap (it fails instead and leaves the
//! buffer as it was). The encoding is canonical: a byte string that decodes re-encodes to
//! itself.
//!
//! # Layout
//!
//! Every message starts with a one-byte tag. The primitive types are those of [`crate::wire`]:
//! integers are big-endian, `str` is `u16` length + UTF-8 (≤ 1024 bytes), `list<T>` is
//! `u16` count (≤ 4096) + items, `bool` is one byte `0`/`1`, `addr` is family (`4`/`6`) +
//! 4/16 address bytes + `u16` port.
//!
//! | Tag    | Message              | Fields after the tag, in order                                                     |
//! |--------|----------------------|------------------------------------------------------------------------------------|
//! | `0x01` | [`Hello`]            | `version: u16`, `role: u8` (1 server, 2 node, 3 edge), `listen_port: u16`, `name: str` |
//! | `0x02` | [`Flood`]            | `server: str`, `seq: u64`, `sent_at_us: u64`, `link_sum_us: u64`, `visited: list<str>`, `videos: list<str>` |
//! | `0x03` | [`GrandfatherRequest`] | `video: str`                                                                     |
//! | `0x04` | grandfather reply ([`Grandfathers`]) | `video: str`, `grandfathers: list<PeerAddr>`                        |
//! | `0x05` | grandfather update ([`Grandfathers`]) | same as `0x04`                                                     |
//! | `0x06` | [`VideoRequest`]     | `video: str`, `path: list<str>`, `has: bool`, then if `has`: `epoch: u64`, `seq: u64` |
//! | `0x07` | [`VideoCancel`]      | `video: str`                                                                       |
//! | `0x08` | [`VideoData`]        | `video: str`, `epoch: u64`, `seq: u64`, `flags: u8`, then the payload: every remaining byte of the record |
//! | `0x09` | [`Ping`]             | `token: u64`                                                                       |
//! | `0x0A` | [`Pong`]             | `token: u64`                                                                       |
//! | `0x0B` | [`Trace`]            | `id: u64`, `video: str`, `reply: bool`, `hops: list<TraceHop>`                     |
//! | `0x0C` | [`VideoUnavailable`] | `video: str`                                                                       |
//! | `0x0D` | [`Withdrawal`]       | `server: str`, `neighbour: str`, `last_seq: u64`                                   |
//! | `0x0E` | [`Drain`]            | `within_ms: u32`                                                                   |
//!
//! | Item         | Fields in order                   |
//! |--------------|-----------------------------------|
//! | [`PeerAddr`] | `name: str`, `addr: addr`         |
//! | [`TraceHop`] | `name: str`, `at_us: u64`         |
//!
//! `Hello` puts `version` first so that a future layout can still be told apart by its first
//! three bytes. `VideoData` has no payload length: the payload runs to the end of the record and
//! is decoded zero-copy as a slice of the record's [`Bytes`]. A cut record therefore decodes as a
//! shorter payload; the authenticated record layer, not this codec, is what detects truncation
//! of media. Unknown `VideoData` flag bits are carried through unchanged so relays stay
//! transparent to future flags.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    check_len, put_bool, put_list, put_or_rollback, put_socket_addr, put_str, put_str_list,
    str_encoded_len, DecodeError, EncodeError, Reader, MAX_STR_LEN, SOCKET_ADDR_MIN_LEN,
};

/// Version of the overlay protocol this build speaks, sent in [`Hello`].
pub const OVERLAY_VERSION: u16 = 2;

/// Tag byte of [`OverlayMsg::Hello`].
pub const TAG_HELLO: u8 = 0x01;
/// Tag byte of [`OverlayMsg::Flood`].
pub const TAG_FLOOD: u8 = 0x02;
/// Tag byte of [`OverlayMsg::GrandfatherRequest`].
pub const TAG_GRANDFATHER_REQUEST: u8 = 0x03;
/// Tag byte of [`OverlayMsg::GrandfatherReply`].
pub const TAG_GRANDFATHER_REPLY: u8 = 0x04;
/// Tag byte of [`OverlayMsg::GrandfatherUpdate`].
pub const TAG_GRANDFATHER_UPDATE: u8 = 0x05;
/// Tag byte of [`OverlayMsg::VideoRequest`].
pub const TAG_VIDEO_REQUEST: u8 = 0x06;
/// Tag byte of [`OverlayMsg::VideoCancel`].
pub const TAG_VIDEO_CANCEL: u8 = 0x07;
/// Tag byte of [`OverlayMsg::VideoData`].
pub const TAG_VIDEO_DATA: u8 = 0x08;
/// Tag byte of [`OverlayMsg::Ping`].
pub const TAG_PING: u8 = 0x09;
/// Tag byte of [`OverlayMsg::Pong`].
pub const TAG_PONG: u8 = 0x0A;
/// Tag byte of [`OverlayMsg::Trace`].
pub const TAG_TRACE: u8 = 0x0B;
/// Tag byte of [`OverlayMsg::Drain`].
pub const TAG_DRAIN: u8 = 0x0E;
/// Tag byte of [`OverlayMsg::VideoUnavailable`].
pub const TAG_VIDEO_UNAVAILABLE: u8 = 0x0C;
/// Tag byte of [`OverlayMsg::Withdrawal`].
pub const TAG_WITHDRAWAL: u8 = 0x0D;

/// [`VideoData::flags`] bit: the chunk starts with a keyframe (a random access point).
pub const FLAG_KEYFRAME: u8 = 0x01;
/// [`VideoData::flags`] bit: a copy from the sender's GOP cache, replayed to a joining child
/// (one hop only: a relay forwards it without the bit).
pub const FLAG_REPLAYED: u8 = 0x02;

/// Bytes of a [`VideoData`] message before the payload when the video name is empty:
/// tag, string length, epoch, seq, flags.
const VIDEO_DATA_FIXED_LEN: usize = 1 + 2 + 8 + 8 + 1;

/// What a device is in the overlay. One byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverlayRole {
    Server = 1,
    Node = 2,
    Edge = 3,
}

impl OverlayRole {
    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The role of a wire byte, if it names one.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(OverlayRole::Server),
            2 => Some(OverlayRole::Node),
            3 => Some(OverlayRole::Edge),
            _ => None,
        }
    }

    /// Lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayRole::Server => "server",
            OverlayRole::Node => "node",
            OverlayRole::Edge => "edge",
        }
    }
}

impl fmt::Display for OverlayRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named overlay device and the address its overlay listener is reachable at.
///
/// IPv6 flow info and scope id are not carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub name: String,
    pub addr: SocketAddr,
}

impl PeerAddr {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_str(dst, "peer_addr.name", &self.name)?;
        put_socket_addr(dst, &self.addr);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.str_u16("peer_addr.name")?;
        let addr = r.socket_addr("peer_addr.addr")?;
        Ok(PeerAddr { name, addr })
    }
}

/// First message on every overlay connection, in both directions: who is speaking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub role: OverlayRole,
    /// [`OVERLAY_VERSION`] of the sender; the codec accepts any value, the protocol decides.
    pub version: u16,
    /// Port of the sender's overlay listener (its outgoing connection uses another port).
    pub listen_port: u16,
}

/// Periodic server announcement, flooded through the overlay to build the distribution tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    pub server: String,
    /// Per-server flood sequence number.
    pub seq: u64,
    /// Server wall clock, µs since the UNIX epoch (one-way delay assumes synchronised clocks).
    pub sent_at_us: u64,
    /// Sum of per-link RTT/2 along the path so far (skew-free metric); each hop adds its own.
    pub link_sum_us: u64,
    /// Names of the devices the flood went through, server first.
    pub visited: Vec<String>,
    /// Videos the server offers.
    pub videos: Vec<String>,
}

/// The link between a server and one of its neighbours went down: every route whose path
/// starts with that link (`server` then `neighbour`) and was learnt from a flood not newer
/// than `last_seq` is gone. Sent by the neighbour, flooded first-copy-only like floods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    pub server: String,
    /// The node that lost its link to the server, and sent this.
    pub neighbour: String,
    /// The highest flood sequence number of `server` the neighbour had seen.
    pub last_seq: u64,
}

/// Asks a parent for its own parents (the asker's grandfathers) for one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrandfatherRequest {
    pub video: String,
}

/// A parent's parents for one video; the body of both grandfather reply and update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grandfathers {
    pub video: String,
    pub grandfathers: Vec<PeerAddr>,
}

/// Asks a parent to stream a video; climbs hop by hop towards a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRequest {
    pub video: String,
    /// Names the request climbed so far (loop prevention).
    pub path: Vec<String>,
    /// The last (epoch, seq) the asker forwarded, if any: a parent that carries the same
    /// epoch sends it the cached chunks after that one (its GOP cache) before the live ones.
    pub has: Option<(u64, u64)>,
}

/// Tells a parent this child no longer wants a video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoCancel {
    pub video: String,
}

/// The sender is shutting down on purpose (SIGTERM) and exits within `within_ms`: take no new
/// stream from it, and move every stream it feeds elsewhere, make-before-break, while it still
/// feeds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub within_ms: u32,
}

/// A parent's answer to a child it cannot (or can no longer) feed a video: it has no route
/// to a server offering the video except through the child's own subtree. The child drops the
/// sender as a parent of that video for a while and asks its next-best parent at once, instead
/// of waiting for the sender's routes to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoUnavailable {
    pub video: String,
}

/// One chunk of a live stream.
#[derive(Clone, PartialEq, Eq)]
pub struct VideoData {
    /// Shared, not owned: a relay copies the chunk to every child, and a copy must not
    /// allocate the name again.
    pub video: Arc<str>,
    /// Identifies one run of one source; `seq` restarts per epoch.
    pub epoch: u64,
    /// Per-stream chunk sequence number.
    pub seq: u64,
    /// Bit 0 ([`FLAG_KEYFRAME`]): the chunk starts with a keyframe. Other bits are reserved
    /// and carried unchanged.
    pub flags: u8,
    /// Whole 188-byte TS packets. On the wire it is the rest of the record (no length prefix);
    /// decoding makes it a zero-copy slice of the record.
    pub payload: Bytes,
}

impl VideoData {
    /// Length of this message once encoded, tag and payload included.
    pub fn encoded_len(&self) -> usize {
        video_data_header_len(&self.video) + self.payload.len()
    }

    /// True when the chunk starts with a keyframe.
    pub fn is_keyframe(&self) -> bool {
        self.flags & FLAG_KEYFRAME != 0
    }

    /// Whether this copy was replayed from a GOP cache ([`FLAG_REPLAYED`]).
    pub fn is_replayed(&self) -> bool {
        self.flags & FLAG_REPLAYED != 0
    }
}

impl fmt::Debug for VideoData {
    // The payload is summarised by its length: chunks are kilobytes of binary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VideoData")
            .field("video", &self.video)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field("flags", &self.flags)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Keepalive probe. The token is the sender's own monotonic clock in µs, echoed back in
/// [`Pong`], so the sender measures RTT without keeping state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub token: u64,
}

/// Keepalive answer: the token of the [`Ping`] it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    pub token: u64,
}

/// One device a trace went through and when (that device's clock, µs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceHop {
    pub name: String,
    pub at_us: u64,
}

impl TraceHop {
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_str(dst, "trace_hop.name", &self.name)?;
        dst.put_u64(self.at_us);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.str_u16("trace_hop.name")?;
        let at_us = r.u64("trace_hop.at_us")?;
        Ok(TraceHop { name, at_us })
    }
}

/// A diagnostic probe that follows a video's path and records each hop; `reply` marks the
/// way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub id: u64,
    pub video: String,
    pub reply: bool,
    pub hops: Vec<TraceHop>,
}

/// Every message of the overlay protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayMsg {
    Hello(Hello),
    Flood(Flood),
    GrandfatherRequest(GrandfatherRequest),
    GrandfatherReply(Grandfathers),
    GrandfatherUpdate(Grandfathers),
    VideoRequest(VideoRequest),
    VideoCancel(VideoCancel),
    VideoData(VideoData),
    Ping(Ping),
    Pong(Pong),
    Trace(Trace),
    VideoUnavailable(VideoUnavailable),
    Withdrawal(Withdrawal),
    Drain(Drain),
}

impl OverlayMsg {
    /// Appends the encoding of this message to `dst`.
    ///
    /// Fails with [`EncodeError::TooLong`] if a string or list is over its cap; `dst` is then
    /// left exactly as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        put_or_rollback(dst, |dst| self.put(dst))
    }

    /// Decodes one whole record. Rejects unknown tags, out-of-domain values, over-long or
    /// truncated fields, bad UTF-8 and trailing bytes. A `VideoData` payload is a zero-copy
    /// slice of `frame`.
    pub fn decode(frame: Bytes) -> Result<OverlayMsg, DecodeError> {
        let mut r = Reader::new(&frame);
        let msg = match r.u8("message tag")? {
            TAG_HELLO => {
                let version = r.u16("hello.version")?;
                let role_byte = r.u8("hello.role")?;
                let role = OverlayRole::from_u8(role_byte).ok_or(DecodeError::BadValue {
                    what: "hello.role",
                    value: u64::from(role_byte),
                })?;
                let listen_port = r.u16("hello.listen_port")?;
                let name = r.str_u16("hello.name")?;
                OverlayMsg::Hello(Hello {
                    name,
                    role,
                    version,
                    listen_port,
                })
            }
            TAG_FLOOD => OverlayMsg::Flood(Flood {
                server: r.str_u16("flood.server")?,
                seq: r.u64("flood.seq")?,
                sent_at_us: r.u64("flood.sent_at_us")?,
                link_sum_us: r.u64("flood.link_sum_us")?,
                visited: r.str_list("flood.visited")?,
                videos: r.str_list("flood.videos")?,
            }),
            TAG_GRANDFATHER_REQUEST => OverlayMsg::GrandfatherRequest(GrandfatherRequest {
                video: r.str_u16("grandfather_request.video")?,
            }),
            TAG_GRANDFATHER_REPLY => OverlayMsg::GrandfatherReply(read_grandfathers(&mut r)?),
            TAG_GRANDFATHER_UPDATE => OverlayMsg::GrandfatherUpdate(read_grandfathers(&mut r)?),
            TAG_VIDEO_REQUEST => OverlayMsg::VideoRequest(VideoRequest {
                video: r.str_u16("video_request.video")?,
                path: r.str_list("video_request.path")?,
                has: match r.bool("video_request.has")? {
                    true => Some((r.u64("video_request.epoch")?, r.u64("video_request.seq")?)),
                    false => None,
                },
            }),
            TAG_VIDEO_CANCEL => OverlayMsg::VideoCancel(VideoCancel {
                video: r.str_u16("video_cancel.video")?,
            }),
            TAG_VIDEO_DATA => OverlayMsg::VideoData(VideoData {
                video: r.str_u16("video_data.video")?.into(),
                epoch: r.u64("video_data.epoch")?,
                seq: r.u64("video_data.seq")?,
                flags: r.u8("video_data.flags")?,
                payload: r.rest(),
            }),
            TAG_PING => OverlayMsg::Ping(Ping {
                token: r.u64("ping.token")?,
            }),
            TAG_PONG => OverlayMsg::Pong(Pong {
                token: r.u64("pong.token")?,
            }),
            TAG_TRACE => OverlayMsg::Trace(Trace {
                id: r.u64("trace.id")?,
                video: r.str_u16("trace.video")?,
                reply: r.bool("trace.reply")?,
                hops: r.list("trace.hops", 2 + 8, TraceHop::read)?,
            }),
            TAG_VIDEO_UNAVAILABLE => OverlayMsg::VideoUnavailable(VideoUnavailable {
                video: r.str_u16("video_unavailable.video")?,
            }),
            TAG_DRAIN => OverlayMsg::Drain(Drain {
                within_ms: r.u32("drain.within_ms")?,
            }),
            TAG_WITHDRAWAL => OverlayMsg::Withdrawal(Withdrawal {
                server: r.str_u16("withdrawal.server")?,
                neighbour: r.str_u16("withdrawal.neighbour")?,
                last_seq: r.u64("withdrawal.last_seq")?,
            }),
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// The tag byte this message is encoded with.
    pub fn tag(&self) -> u8 {
        match self {
            OverlayMsg::Hello(_) => TAG_HELLO,
            OverlayMsg::Flood(_) => TAG_FLOOD,
            OverlayMsg::GrandfatherRequest(_) => TAG_GRANDFATHER_REQUEST,
            OverlayMsg::GrandfatherReply(_) => TAG_GRANDFATHER_REPLY,
            OverlayMsg::GrandfatherUpdate(_) => TAG_GRANDFATHER_UPDATE,
            OverlayMsg::VideoRequest(_) => TAG_VIDEO_REQUEST,
            OverlayMsg::VideoCancel(_) => TAG_VIDEO_CANCEL,
            OverlayMsg::VideoData(_) => TAG_VIDEO_DATA,
            OverlayMsg::Ping(_) => TAG_PING,
            OverlayMsg::Pong(_) => TAG_PONG,
            OverlayMsg::Trace(_) => TAG_TRACE,
            OverlayMsg::VideoUnavailable(_) => TAG_VIDEO_UNAVAILABLE,
            OverlayMsg::Withdrawal(_) => TAG_WITHDRAWAL,
            OverlayMsg::Drain(_) => TAG_DRAIN,
        }
    }

    /// Short snake_case name of the message kind, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            OverlayMsg::Hello(_) => "hello",
            OverlayMsg::Flood(_) => "flood",
            OverlayMsg::GrandfatherRequest(_) => "grandfather_request",
            OverlayMsg::GrandfatherReply(_) => "grandfather_reply",
            OverlayMsg::GrandfatherUpdate(_) => "grandfather_update",
            OverlayMsg::VideoRequest(_) => "video_request",
            OverlayMsg::VideoCancel(_) => "video_cancel",
            OverlayMsg::VideoData(_) => "video_data",
            OverlayMsg::Ping(_) => "ping",
            OverlayMsg::Pong(_) => "pong",
            OverlayMsg::Trace(_) => "trace",
            OverlayMsg::VideoUnavailable(_) => "video_unavailable",
            OverlayMsg::Withdrawal(_) => "withdrawal",
            OverlayMsg::Drain(_) => "drain",
        }
    }

    /// True for media (`VideoData`), which queues behind control messages.
    pub fn is_media(&self) -> bool {
        matches!(self, OverlayMsg::VideoData(_))
    }

    /// Writes tag and fields; may leave partial output on error (`encode` rolls it back).
    fn put(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if let OverlayMsg::VideoData(data) = self {
            encode_video_data_header(&data.video, data.epoch, data.seq, data.flags, dst)?;
            dst.put_slice(&data.payload);
            return Ok(());
        }
        dst.put_u8(self.tag());
        match self {
            OverlayMsg::Hello(m) => {
                dst.put_u16(m.version);
                dst.put_u8(m.role.as_u8());
                dst.put_u16(m.listen_port);
                put_str(dst, "hello.name", &m.name)?;
            }
            OverlayMsg::Flood(m) => {
                put_str(dst, "flood.server", &m.server)?;
                dst.put_u64(m.seq);
                dst.put_u64(m.sent_at_us);
                dst.put_u64(m.link_sum_us);
                put_str_list(dst, "flood.visited", &m.visited)?;
                put_str_list(dst, "flood.videos", &m.videos)?;
            }
            OverlayMsg::GrandfatherRequest(m) => {
                put_str(dst, "grandfather_request.video", &m.video)?;
            }
            OverlayMsg::GrandfatherReply(m) | OverlayMsg::GrandfatherUpdate(m) => {
                put_str(dst, "grandfathers.video", &m.video)?;
                put_list(dst, "grandfathers.list", &m.grandfathers, |dst, p| {
                    p.put(dst)
                })?;
            }
            OverlayMsg::VideoRequest(m) => {
                put_str(dst, "video_request.video", &m.video)?;
                put_str_list(dst, "video_request.path", &m.path)?;
                put_bool(dst, m.has.is_some());
                if let Some((epoch, seq)) = m.has {
                    dst.put_u64(epoch);
                    dst.put_u64(seq);
                }
            }
            OverlayMsg::VideoCancel(m) => {
                put_str(dst, "video_cancel.video", &m.video)?;
            }
            OverlayMsg::Ping(m) => dst.put_u64(m.token),
            OverlayMsg::Pong(m) => dst.put_u64(m.token),
            OverlayMsg::Trace(m) => {
                dst.put_u64(m.id);
                put_str(dst, "trace.video", &m.video)?;
                put_bool(dst, m.reply);
                put_list(dst, "trace.hops", &m.hops, |dst, h| h.put(dst))?;
            }
            OverlayMsg::VideoUnavailable(m) => {
                put_str(dst, "video_unavailable.video", &m.video)?;
            }
            OverlayMsg::Withdrawal(m) => {
                put_str(dst, "withdrawal.server", &m.server)?;
                put_str(dst, "withdrawal.neighbour", &m.neighbour)?;
                dst.put_u64(m.last_seq);
            }
            OverlayMsg::Drain(m) => dst.put_u32(m.within_ms),
            // Written above, before the tag.
            OverlayMsg::VideoData(_) => {}
        }
        Ok(())
    }
}

fn read_grandfathers(r: &mut Reader<'_>) -> Result<Grandfathers, DecodeError> {
    Ok(Grandfathers {
        video: r.str_u16("grandfathers.video")?,
        grandfathers: r.list("grandfathers.list", 2 + SOCKET_ADDR_MIN_LEN, PeerAddr::read)?,
    })
}

/// Length of a `VideoData` message for `video` without its payload (tag included).
pub fn video_data_header_len(video: &str) -> usize {
    VIDEO_DATA_FIXED_LEN - 2 + str_encoded_len(video)
}

/// Fast path for media: appends the `VideoData` tag and header to `dst`; the caller appends
/// the payload right after (one `put_slice`) to complete the message. Lets a server or relay
/// build a chunk without constructing a [`VideoData`] or copying its payload twice.
///
/// Fails with [`EncodeError::TooLong`] if `video` is over the string cap, writing nothing.
pub fn encode_video_data_header(
    video: &str,
    epoch: u64,
    seq: u64,
    flags: u8,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    check_len("video_data.video", video.len(), MAX_STR_LEN)?;
    dst.reserve(video_data_header_len(video));
    dst.put_u8(TAG_VIDEO_DATA);
    put_str(dst, "video_data.video", video)?;
    dst.put_u64(epoch);
    dst.put_u64(seq);
    dst.put_u8(flags);
    Ok(())
}

macro_rules! impl_from_for_msg {
    ($($ty:ident),* $(,)?) => {
        $(impl From<$ty> for OverlayMsg {
            fn from(m: $ty) -> Self {
                OverlayMsg::$ty(m)
            }
        })*
    };
}

impl_from_for_msg!(
    Hello,
    Flood,
    GrandfatherRequest,
    VideoRequest,
    VideoCancel,
    VideoData,
    Ping,
    Pong,
    Trace,
    VideoUnavailable,
    Withdrawal,
    Drain,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MAX_LIST_LEN, MAX_STR_LEN};
    use proptest::prelude::*;

    fn enc(msg: &OverlayMsg) -> Vec<u8> {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).expect("encode");
        buf.to_vec()
    }

    fn dec(bytes: &[u8]) -> Result<OverlayMsg, DecodeError> {
        OverlayMsg::decode(Bytes::copy_from_slice(bytes))
    }

    /// Parses hex digits, ignoring whitespace.
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len() % 2 == 0, "odd hex digit count");
        digits
            .chunks(2)
            .map(|pair| {
                let pair = std::str::from_utf8(pair).unwrap();
                u8::from_str_radix(pair, 16).unwrap()
            })
            .collect()
    }

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    // ---- sample messages, one (or two) per type --------------------------------------------

    fn hello() -> OverlayMsg {
        OverlayMsg::Hello(Hello {
            name: "O1".into(),
            role: OverlayRole::Node,
            version: OVERLAY_VERSION,
            listen_port: 7000,
        })
    }

    fn flood() -> OverlayMsg {
        OverlayMsg::Flood(Flood {
            server: "S1".into(),
            seq: 7,
            sent_at_us: 0x1122_3344_5566_7788,
            link_sum_us: 1500,
            visited: strings(&["S1", "O1"]),
            videos: strings(&["a.ts"]),
        })
    }

    fn grandfather_request() -> OverlayMsg {
        OverlayMsg::GrandfatherRequest(GrandfatherRequest {
            video: "vídeo".into(),
        })
    }

    fn grandfather_reply() -> OverlayMsg {
        OverlayMsg::GrandfatherReply(Grandfathers {
            video: "v".into(),
            grandfathers: vec![
                PeerAddr {
                    name: "O2".into(),
                    addr: addr("10.0.2.2:7000"),
                },
                PeerAddr {
                    name: "O3".into(),
                    addr: addr("[2001:db8::1]:7001"),
                },
            ],
        })
    }

    fn grandfather_update() -> OverlayMsg {
        OverlayMsg::GrandfatherUpdate(Grandfathers {
            video: "v".into(),
            grandfathers: vec![],
        })
    }

    fn video_request() -> OverlayMsg {
        OverlayMsg::VideoRequest(VideoRequest {
            video: "movie".into(),
            path: strings(&["O5", "O3"]),
            has: None,
        })
    }

    fn video_cancel() -> OverlayMsg {
        OverlayMsg::VideoCancel(VideoCancel {
            video: "movie".into(),
        })
    }

    fn video_unavailable() -> OverlayMsg {
        OverlayMsg::VideoUnavailable(VideoUnavailable {
            video: "movie".into(),
        })
    }

    fn drain() -> OverlayMsg {
        OverlayMsg::Drain(Drain { within_ms: 2000 })
    }

    fn withdrawal() -> OverlayMsg {
        OverlayMsg::Withdrawal(Withdrawal {
            server: "S1".into(),
            neighbour: "O1".into(),
            last_seq: 7,
        })
    }

    fn video_data() -> OverlayMsg {
        OverlayMsg::VideoData(VideoData {
            video: "v".into(),
            epoch: 3,
            seq: 256,
            flags: FLAG_KEYFRAME,
            payload: Bytes::from_static(&[0x47, 0x00, 0x11]),
        })
    }

    fn video_data_empty() -> OverlayMsg {
        OverlayMsg::VideoData(VideoData {
            video: "".into(),
            epoch: 0,
            seq: u64::MAX,
            flags: 0x80,
            payload: Bytes::new(),
        })
    }

    fn ping() -> OverlayMsg {
        OverlayMsg::Ping(Ping { token: 0xdead_beef })
    }

    fn pong() -> OverlayMsg {
        OverlayMsg::Pong(Pong { token: u64::MAX })
    }

    fn trace() -> OverlayMsg {
        OverlayMsg::Trace(Trace {
            id: 42,
            video: "v".into(),
            reply: true,
            hops: vec![
                TraceHop {
                    name: "S1".into(),
                    at_us: 1000,
                },
                TraceHop {
                    name: "O1".into(),
                    at_us: 0x0102_0304_0506_0708,
                },
            ],
        })
    }

    // ---- round trips -------------------------------------------------------------------------

    fn assert_round_trip(msg: OverlayMsg) {
        let bytes = enc(&msg);
        assert_eq!(bytes[0], msg.tag(), "{}", msg.kind());
        assert_eq!(dec(&bytes), Ok(msg));
    }

    #[test]
    fn round_trip_hello() {
        assert_round_trip(hello());
        for role in [OverlayRole::Server, OverlayRole::Node, OverlayRole::Edge] {
            assert_round_trip(OverlayMsg::Hello(Hello {
                name: String::new(),
                role,
                version: u16::MAX,
                listen_port: 0,
            }));
        }
    }

    #[test]
    fn round_trip_flood() {
        assert_round_trip(flood());
        assert_round_trip(OverlayMsg::Flood(Flood {
            server: "S2".into(),
            seq: u64::MAX,
            sent_at_us: 1_700_000_000_000_000,
            link_sum_us: 0,
            visited: vec![],
            videos: vec![],
        }));
    }

    #[test]
    fn round_trip_grandfather_request() {
        assert_round_trip(grandfather_request());
        assert_round_trip(OverlayMsg::GrandfatherRequest(GrandfatherRequest {
            video: String::new(),
        }));
    }

    #[test]
    fn round_trip_grandfather_reply_and_update() {
        // IPv4 and IPv6 addresses, non-empty and empty lists, both tags.
        assert_round_trip(grandfather_reply());
        assert_round_trip(grandfather_update());
        if let OverlayMsg::GrandfatherReply(g) = grandfather_reply() {
            assert_round_trip(OverlayMsg::GrandfatherUpdate(g));
        }
        assert_round_trip(OverlayMsg::GrandfatherReply(Grandfathers {
            video: "v".into(),
            grandfathers: vec![],
        }));
    }

    #[test]
    fn round_trip_video_request_and_cancel() {
        assert_round_trip(video_request());
        assert_round_trip(OverlayMsg::VideoRequest(VideoRequest {
            video: "movie".into(),
            path: vec![],
            has: Some((u64::MAX, 7)),
        }));
        assert_round_trip(video_cancel());
    }

    #[test]
    fn round_trip_video_unavailable() {
        assert_round_trip(video_unavailable());
        assert_round_trip(OverlayMsg::VideoUnavailable(VideoUnavailable {
            video: String::new(),
        }));
    }

    #[test]
    fn round_trip_video_data() {
        assert_round_trip(video_data());
        assert_round_trip(video_data_empty());
        let big = OverlayMsg::VideoData(VideoData {
            video: "movie".into(),
            epoch: 9,
            seq: 10,
            flags: 0,
            payload: Bytes::from(vec![0x47; 188 * 7]),
        });
        assert_round_trip(big);
    }

    #[test]
    fn round_trip_ping_pong() {
        assert_round_trip(ping());
        assert_round_trip(pong());
        assert_round_trip(OverlayMsg::Ping(Ping { token: 0 }));
    }

    #[test]
    fn round_trip_trace() {
        assert_round_trip(trace());
        assert_round_trip(OverlayMsg::Trace(Trace {
            id: 0,
            video: String::new(),
            reply: false,
            hops: vec![],
        }));
    }

    // ---- golden bytes: written by hand from the layout table ---------------------------------

    fn assert_golden(msg: OverlayMsg, expected_hex: &str) {
        let expected = hex(expected_hex);
        assert_eq!(to_hex(&enc(&msg)), to_hex(&expected), "{}", msg.kind());
        assert_eq!(dec(&expected), Ok(msg));
    }

    #[test]
    fn golden_hello() {
        assert_golden(
            hello(),
            concat!(
                "01",        // tag
                "0002",      // version 2
                "02",        // role node
                "1b58",      // listen_port 7000
                "0002 4f31", // name "O1"
            ),
        );
    }

    #[test]
    fn golden_flood() {
        assert_golden(
            flood(),
            concat!(
                "02",               // tag
                "0002 5331",        // server "S1"
                "0000000000000007", // seq 7
                "1122334455667788", // sent_at_us
                "00000000000005dc", // link_sum_us 1500
                "0002",             // visited: 2 items
                "0002 5331",        //   "S1"
                "0002 4f31",        //   "O1"
                "0001",             // videos: 1 item
                "0004 612e7473",    //   "a.ts"
            ),
        );
    }

    #[test]
    fn golden_grandfather_request() {
        // video "vídeo": í is c3 ad in UTF-8, 6 bytes in all.
        assert_golden(grandfather_request(), "03 0006 76c3ad64656f");
    }

    #[test]
    fn golden_grandfather_reply() {
        assert_golden(
            grandfather_reply(),
            concat!(
                "04",                                  // tag
                "0001 76",                             // video "v"
                "0002",                                // 2 grandfathers
                "0002 4f32",                           //   name "O2"
                "04 0a000202 1b58",                    //   10.0.2.2:7000
                "0002 4f33",                           //   name "O3"
                "06 20010db8000000000000000000000001", //   2001:db8::1
                "1b59",                                //   port 7001
            ),
        );
    }

    #[test]
    fn golden_grandfather_update() {
        assert_golden(grandfather_update(), "05 0001 76 0000");
    }

    #[test]
    fn golden_video_request() {
        assert_golden(
            video_request(),
            "06 0005 6d6f766965 0002 0002 4f35 0002 4f33 00",
        );
    }

    #[test]
    fn golden_video_request_with_what_it_has() {
        let msg = OverlayMsg::VideoRequest(VideoRequest {
            video: "v".into(),
            path: vec![],
            has: Some((3, 256)),
        });
        assert_golden(msg, "06 0001 76 0000 01 0000000000000003 0000000000000100");
    }

    #[test]
    fn golden_video_cancel() {
        assert_golden(video_cancel(), "07 0005 6d6f766965");
    }

    #[test]
    fn golden_drain() {
        assert_golden(drain(), "0e 000007d0");
    }

    #[test]
    fn round_trip_drain() {
        assert_round_trip(drain());
        assert_round_trip(OverlayMsg::Drain(Drain {
            within_ms: u32::MAX,
        }));
    }

    #[test]
    fn golden_video_unavailable() {
        assert_golden(video_unavailable(), "0c 0005 6d6f766965");
    }

    #[test]
    fn golden_withdrawal() {
        assert_golden(withdrawal(), "0d 0002 5331 0002 4f31 0000000000000007");
    }

    #[test]
    fn round_trip_withdrawal() {
        assert_round_trip(withdrawal());
        assert_round_trip(OverlayMsg::Withdrawal(Withdrawal {
            server: String::new(),
            neighbour: String::new(),
            last_seq: u64::MAX,
        }));
    }

    #[test]
    fn golden_video_data() {
        assert_golden(
            video_data(),
            concat!(
                "08",               // tag
                "0001 76",          // video "v"
                "0000000000000003", // epoch 3
                "0000000000000100", // seq 256
                "01",               // flags: keyframe
                "470011",           // payload, to the end of the record
            ),
        );
        assert_golden(
            video_data_empty(),
            "08 0000 0000000000000000 ffffffffffffffff 80",
        );
    }

    #[test]
    fn golden_ping_pong() {
        assert_golden(ping(), "09 00000000deadbeef");
        assert_golden(pong(), "0a ffffffffffffffff");
    }

    #[test]
    fn golden_trace() {
        assert_golden(
            trace(),
            concat!(
                "0b",               // tag
                "000000000000002a", // id 42
                "0001 76",          // video "v"
                "01",               // reply
                "0002",             // 2 hops
                "0002 5331",        //   "S1"
                "00000000000003e8", //   at 1000
                "0002 4f31",        //   "O1"
                "0102030405060708", //   at
            ),
        );
    }

    // ---- fast path, helpers ------------------------------------------------------------------

    #[test]
    fn video_data_fast_path_matches_encode() {
        let msg = video_data();
        let OverlayMsg::VideoData(data) = &msg else {
            unreachable!()
        };
        let mut fast = BytesMut::new();
        encode_video_data_header(&data.video, data.epoch, data.seq, data.flags, &mut fast).unwrap();
        assert_eq!(fast.len(), video_data_header_len(&data.video));
        fast.put_slice(&data.payload);
        assert_eq!(fast.to_vec(), enc(&msg));
        assert_eq!(data.encoded_len(), fast.len());
        assert!(data.is_keyframe());
        assert!(msg.is_media());
        assert!(!ping().is_media());
    }

    #[test]
    fn decoded_payload_is_a_slice_of_the_frame() {
        let frame = Bytes::from(enc(&video_data()));
        let OverlayMsg::VideoData(data) = OverlayMsg::decode(frame.clone()).unwrap() else {
            panic!("not video data")
        };
        let offset = frame.len() - 3;
        assert_eq!(data.payload.as_ptr(), frame[offset..].as_ptr());
    }

    #[test]
    fn kinds_and_tags_are_distinct() {
        let all = [
            hello(),
            flood(),
            grandfather_request(),
            grandfather_reply(),
            grandfather_update(),
            video_request(),
            video_cancel(),
            video_data(),
            ping(),
            pong(),
            trace(),
            video_unavailable(),
            withdrawal(),
            drain(),
        ];
        let tags: std::collections::BTreeSet<u8> = all.iter().map(OverlayMsg::tag).collect();
        let kinds: std::collections::BTreeSet<&str> = all.iter().map(OverlayMsg::kind).collect();
        assert_eq!(tags.len(), all.len());
        assert_eq!(kinds.len(), all.len());
        assert_eq!(tags, (0x01..=0x0e).collect());
    }

    #[test]
    fn video_data_debug_summarises_payload() {
        let shown = format!("{:?}", video_data());
        assert!(shown.contains("payload_len: 3"), "{shown}");
    }

    // ---- encode errors -----------------------------------------------------------------------

    #[test]
    fn encode_over_cap_fails_and_leaves_buffer_untouched() {
        let long = "x".repeat(MAX_STR_LEN + 1);
        let mut buf = BytesMut::from(&b"keep"[..]);

        let msg = OverlayMsg::Hello(Hello {
            name: long.clone(),
            role: OverlayRole::Edge,
            version: 1,
            listen_port: 1,
        });
        assert_eq!(
            msg.encode(&mut buf),
            Err(EncodeError::TooLong {
                what: "hello.name",
                len: MAX_STR_LEN + 1,
                max: MAX_STR_LEN
            })
        );
        assert_eq!(&buf[..], b"keep");

        // Failure deep inside a list, after earlier fields were written.
        let msg = OverlayMsg::Flood(Flood {
            server: "S1".into(),
            seq: 1,
            sent_at_us: 2,
            link_sum_us: 3,
            visited: vec!["ok".into(), long.clone()],
            videos: vec![],
        });
        assert_eq!(
            msg.encode(&mut buf),
            Err(EncodeError::TooLong {
                what: "flood.visited",
                len: MAX_STR_LEN + 1,
                max: MAX_STR_LEN
            })
        );
        assert_eq!(&buf[..], b"keep");

        let msg = OverlayMsg::VideoRequest(VideoRequest {
            video: "v".into(),
            path: vec![String::new(); MAX_LIST_LEN + 1],
            has: None,
        });
        assert_eq!(
            msg.encode(&mut buf),
            Err(EncodeError::TooLong {
                what: "video_request.path",
                len: MAX_LIST_LEN + 1,
                max: MAX_LIST_LEN
            })
        );
        assert_eq!(&buf[..], b"keep");

        assert!(encode_video_data_header(&long, 0, 0, 0, &mut buf).is_err());
        let msg = OverlayMsg::VideoData(VideoData {
            video: long.into(),
            epoch: 0,
            seq: 0,
            flags: 0,
            payload: Bytes::from_static(b"data"),
        });
        assert!(msg.encode(&mut buf).is_err());
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn encode_at_cap_succeeds() {
        let msg = OverlayMsg::VideoRequest(VideoRequest {
            video: "v".repeat(MAX_STR_LEN),
            path: vec!["O".into(); MAX_LIST_LEN],
            has: Some((1, 2)),
        });
        assert_round_trip(msg);
    }

    // ---- decode errors -----------------------------------------------------------------------

    #[test]
    fn decode_rejects_empty_and_unknown_tags() {
        assert_eq!(
            dec(&[]),
            Err(DecodeError::Truncated {
                what: "message tag"
            })
        );
        for tag in [0x00, 0x0f, 0x7f, 0xff] {
            assert_eq!(dec(&[tag]), Err(DecodeError::UnknownTag(tag)));
            assert_eq!(dec(&[tag, 0, 0, 0]), Err(DecodeError::UnknownTag(tag)));
        }
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = enc(&ping());
        bytes.push(0);
        assert_eq!(dec(&bytes), Err(DecodeError::TrailingBytes(1)));
        let mut bytes = enc(&trace());
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(dec(&bytes), Err(DecodeError::TrailingBytes(3)));
    }

    #[test]
    fn decode_rejects_bad_utf8() {
        // VideoCancel with a 2-byte video name that is not UTF-8.
        assert_eq!(
            dec(&hex("07 0002 c328")),
            Err(DecodeError::BadUtf8 {
                what: "video_cancel.video"
            })
        );
        // Inside a list item.
        assert_eq!(
            dec(&hex("06 0001 76 0001 0001 ff")),
            Err(DecodeError::BadUtf8 {
                what: "video_request.path"
            })
        );
    }

    #[test]
    fn decode_rejects_string_over_cap() {
        // Length 0x0401 = 1025, followed by that many valid bytes: the cap, not the input
        // length, is what fails.
        let mut bytes = hex("03 0401");
        bytes.extend_from_slice(&[b'a'; 1025]);
        assert_eq!(
            dec(&bytes),
            Err(DecodeError::TooLong {
                what: "grandfather_request.video",
                len: 1025,
                max: MAX_STR_LEN
            })
        );
    }

    #[test]
    fn decode_rejects_list_count_over_cap_or_input() {
        // Count 0xffff is over the cap.
        assert_eq!(
            dec(&hex("05 0001 76 ffff")),
            Err(DecodeError::TooLong {
                what: "grandfathers.list",
                len: 0xffff,
                max: MAX_LIST_LEN
            })
        );
        // Count 4096 is under the cap, but 4096 peers need at least 4096 * 9 bytes and only
        // 9 follow: rejected before any item is read or allocated.
        assert_eq!(
            dec(&hex("05 0001 76 1000 0000 04 7f000001 0001")),
            Err(DecodeError::Truncated {
                what: "grandfathers.list"
            })
        );
        // Same for string lists and trace hops.
        assert_eq!(
            dec(&hex("06 0001 76 0fff 0000")),
            Err(DecodeError::Truncated {
                what: "video_request.path"
            })
        );
        assert_eq!(
            dec(&hex(
                "0b 0000000000000001 0000 00 0002 0000 0000000000000000"
            )),
            Err(DecodeError::Truncated { what: "trace.hops" })
        );
    }

    #[test]
    fn decode_rejects_unknown_role_family_and_bool() {
        for role in [0u8, 4, 0xff] {
            let bytes = [0x01, 0x00, 0x01, role, 0x1b, 0x58, 0x00, 0x00];
            assert_eq!(
                dec(&bytes),
                Err(DecodeError::BadValue {
                    what: "hello.role",
                    value: u64::from(role)
                })
            );
        }
        assert_eq!(
            dec(&hex("04 0001 76 0001 0002 4f32 05 0a000202 1b58")),
            Err(DecodeError::BadValue {
                what: "peer_addr.addr",
                value: 5
            })
        );
        assert_eq!(
            dec(&hex("0b 0000000000000001 0000 02 0000")),
            Err(DecodeError::BadValue {
                what: "trace.reply",
                value: 2
            })
        );
    }

    #[test]
    fn decode_reports_the_truncated_field() {
        assert_eq!(
            dec(&hex("02 0002 5331 00000000")),
            Err(DecodeError::Truncated { what: "flood.seq" })
        );
        assert_eq!(
            dec(&hex("08 0001 76 0000000000000003 0000000000000100")),
            Err(DecodeError::Truncated {
                what: "video_data.flags"
            })
        );
    }

    // ---- properties --------------------------------------------------------------------------

    fn arb_str() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zA-Z0-9_.-]{1,12}", "\\PC{0,6}"]
    }

    fn arb_strs() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(arb_str(), 0..5)
    }

    fn arb_socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn arb_grandfathers() -> impl Strategy<Value = Grandfathers> {
        (
            arb_str(),
            prop::collection::vec(
                (arb_str(), arb_socket_addr()).prop_map(|(name, addr)| PeerAddr { name, addr }),
                0..4,
            ),
        )
            .prop_map(|(video, grandfathers)| Grandfathers {
                video,
                grandfathers,
            })
    }

    fn arb_role() -> impl Strategy<Value = OverlayRole> {
        prop_oneof![
            Just(OverlayRole::Server),
            Just(OverlayRole::Node),
            Just(OverlayRole::Edge),
        ]
    }

    fn arb_msg() -> impl Strategy<Value = OverlayMsg> {
        prop_oneof![
            (arb_str(), arb_role(), any::<u16>(), any::<u16>()).prop_map(
                |(name, role, version, listen_port)| OverlayMsg::Hello(Hello {
                    name,
                    role,
                    version,
                    listen_port,
                })
            ),
            (
                arb_str(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                arb_strs(),
                arb_strs()
            )
                .prop_map(|(server, seq, sent_at_us, link_sum_us, visited, videos)| {
                    OverlayMsg::Flood(Flood {
                        server,
                        seq,
                        sent_at_us,
                        link_sum_us,
                        visited,
                        videos,
                    })
                }),
            arb_str()
                .prop_map(|video| OverlayMsg::GrandfatherRequest(GrandfatherRequest { video })),
            arb_grandfathers().prop_map(OverlayMsg::GrandfatherReply),
            arb_grandfathers().prop_map(OverlayMsg::GrandfatherUpdate),
            (arb_str(), arb_strs(), any::<Option<(u64, u64)>>()).prop_map(|(video, path, has)| {
                OverlayMsg::VideoRequest(VideoRequest { video, path, has })
            }),
            arb_str().prop_map(|video| OverlayMsg::VideoCancel(VideoCancel { video })),
            arb_str().prop_map(|video| OverlayMsg::VideoUnavailable(VideoUnavailable { video })),
            (arb_str(), arb_str(), any::<u64>()).prop_map(|(server, neighbour, last_seq)| {
                OverlayMsg::Withdrawal(Withdrawal {
                    server,
                    neighbour,
                    last_seq,
                })
            }),
            any::<u32>().prop_map(|within_ms| OverlayMsg::Drain(Drain { within_ms })),
            (
                arb_str(),
                any::<u64>(),
                any::<u64>(),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 0..400)
            )
                .prop_map(|(video, epoch, seq, flags, payload)| {
                    OverlayMsg::VideoData(VideoData {
                        video: video.into(),
                        epoch,
                        seq,
                        flags,
                        payload: Bytes::from(payload),
                    })
                }),
            any::<u64>().prop_map(|token| OverlayMsg::Ping(Ping { token })),
            any::<u64>().prop_map(|token| OverlayMsg::Pong(Pong { token })),
            (
                any::<u64>(),
                arb_str(),
                any::<bool>(),
                prop::collection::vec(
                    (arb_str(), any::<u64>()).prop_map(|(name, at_us)| TraceHop { name, at_us }),
                    0..4
                )
            )
                .prop_map(|(id, video, reply, hops)| OverlayMsg::Trace(Trace {
                    id,
                    video,
                    reply,
                    hops,
                })),
        ]
    }

    /// Decodes; whenever that succeeds, the encoding must give the input back (canonical form).
    fn decode_is_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(msg) = dec(bytes) {
            prop_assert_eq!(enc(&msg), bytes.to_vec());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_round_trip(msg in arb_msg()) {
            let bytes = enc(&msg);
            if let OverlayMsg::VideoData(data) = &msg {
                prop_assert_eq!(data.encoded_len(), bytes.len());
            }
            prop_assert_eq!(dec(&bytes), Ok(msg));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            decode_is_canonical(&bytes)?;
        }

        #[test]
        fn prop_bytes_after_a_known_tag_never_panic(
            tag in 0x01u8..=0x0c,
            body in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&body);
            decode_is_canonical(&bytes)?;
        }

        #[test]
        fn prop_strict_prefixes_fail(msg in arb_msg()) {
            let bytes = enc(&msg);
            for cut in 0..bytes.len() {
                let result = dec(&bytes[..cut]);
                match &msg {
                    // The payload runs to the end of the record, so a cut inside it is still a
                    // well-formed (shorter) chunk; detecting that is the record layer's job.
                    OverlayMsg::VideoData(data) if cut >= video_data_header_len(&data.video) => {
                        let mut shorter = data.clone();
                        shorter.payload = data.payload.slice(..cut - video_data_header_len(&data.video));
                        prop_assert_eq!(result, Ok(OverlayMsg::VideoData(shorter)));
                    }
                    _ => prop_assert!(result.is_err(), "prefix {} of {:?} decoded", cut, msg),
                }
            }
        }

        #[test]
        fn prop_flipped_byte_never_panics(msg in arb_msg(), index in any::<prop::sample::Index>(), mask in 1u8..) {
            let mut bytes = enc(&msg);
            let i = index.index(bytes.len());
            bytes[i] ^= mask;
            decode_is_canonical(&bytes)?;
        }

        #[test]
        fn prop_appended_bytes_are_trailing(msg in arb_msg(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
            let mut bytes = enc(&msg);
            bytes.extend_from_slice(&extra);
            let result = dec(&bytes);
            match msg {
                OverlayMsg::VideoData(mut data) => {
                    let mut payload = data.payload.to_vec();
                    payload.extend_from_slice(&extra);
                    data.payload = Bytes::from(payload);
                    prop_assert_eq!(result, Ok(OverlayMsg::VideoData(data)));
                }
                _ => prop_assert_eq!(result, Err(DecodeError::TrailingBytes(extra.len()))),
            }
        }
    }
}
