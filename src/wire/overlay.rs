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
//! | `0x06` | [`VideoRequest`]     | `video: str`, `path: list<str>`                                                    |
//! | `0x07` | [`VideoCancel`]      | `video: str`                                                                       |
//! | `0x08` | [`VideoData`]        | `video: str`, `epoch: u64`, `seq: u64`, `flags: u8`, then the payload: every remaining byte of the record |
//! | `0x09` | [`Ping`]             | `token: u64`                                                                       |
//! | `0x0A` | [`Pong`]             | `token: u64`                                                                       |
//! | `0x0B` | [`Trace`]            | `id: u64`, `video: str`, `reply: bool`, `hops: list<TraceHop>`                     |
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

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    check_len, put_bool, put_list, put_socket_addr, put_str, put_str_list, str_encoded_len,
    DecodeError, EncodeError, Reader, MAX_STR_LEN, SOCKET_ADDR_MIN_LEN,
};

/// Version of the overlay protocol this build speaks, sent in [`Hello`].
pub const OVERLAY_VERSION: u16 = 1;

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

/// [`VideoData::flags`] bit: the chunk starts with a keyframe (a random access point).
pub const FLAG_KEYFRAME: u8 = 0x01;

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
}

/// Tells a parent this child no longer wants a video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoCancel {
    pub video: String,
}

/// One chunk of a live stream.
#[derive(Clone, PartialEq, Eq)]
pub struct VideoData {
    pub video: String,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl OverlayMsg {
    /// Appends the encoding of this message to `dst`.
    ///
    /// Fails with [`EncodeError::TooLong`] if a string or list is over its cap; `dst` is then
    /// left exactly as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        let result = self.put(dst);
        if result.is_err() {
            dst.truncate(start);
        }
        result
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
            }),
            TAG_VIDEO_CANCEL => OverlayMsg::VideoCancel(VideoCancel {
                video: r.str_u16("video_cancel.video")?,
            }),
            TAG_VIDEO_DATA => OverlayMsg::VideoData(VideoData {
                video: r.str_u16("video_data.video")?,
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
);
