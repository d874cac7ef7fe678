//! Wire formats of overlayd: the exact bytes every message takes on the network.
//!
//! This module owns the shared codec primitives (a bounds-checked [`Reader`], the `put_*`
//! helpers, the length caps and the [`DecodeError`]/[`EncodeError`] types) that every codec
//! in overlayd is built from. The overlay message set carried inside encrypted TCP records lives
//! in [`overlay`]; the bootstrap and edge ↔ client formats live in sibling modules. Nothing here
//! does I/O, reads a clock or panics on any input.
//!
//! Conventions shared by all codecs:
//! - integers are big-endian and fixed-width (`u8`, `u16`, `u32`, `u64`);
//! - a string is a `u16` byte length followed by that many bytes of UTF-8, at most
//!   [`MAX_STR_LEN`] bytes;
//! - a list is a `u16` item count followed by the items, at most [`MAX_LIST_LEN`] items;
//! - a bool is one byte, `0` or `1`; any other value is rejected;
//! - a socket address is a family byte ([`FAMILY_V4`] = 4 or [`FAMILY_V6`] = 6), the 4 or 16
//!   address bytes in network order, then the `u16` port. IPv6 flow info and scope id are not
//!   carried (they mean nothing on another host) and decode as 0.
//!
//! Encoding never truncates silently: a string or list over its cap makes the encoder return
//! [`EncodeError::TooLong`]. Decoding checks every length against both its cap and the bytes
//! actually left in the input *before* allocating, so a hostile length field cannot make the
//! decoder reserve more memory than the input could justify.

pub mod bootstrap;
pub mod client;
pub mod overlay;
pub mod report;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

/// Largest string, in bytes of UTF-8, that any codec accepts (names, video names).
pub const MAX_STR_LEN: usize = 1024;

/// Largest item count of any list on the wire.
pub const MAX_LIST_LEN: usize = 4096;

/// Family byte of an IPv4 socket address.
pub const FAMILY_V4: u8 = 4;

/// Family byte of an IPv6 socket address.
pub const FAMILY_V6: u8 = 6;

/// Smallest encoding of a socket address (IPv4: family, 4 address bytes, port).
pub const SOCKET_ADDR_MIN_LEN: usize = 1 + 4 + 2;

/// Why a byte string could not be decoded. `what` names the field being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside this field (or a list count promised more than is left).
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    /// The first byte does not name any known message.
    #[error("unknown message tag 0x{0:02x}")]
    UnknownTag(u8),
    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in {what}")]
    BadUtf8 { what: &'static str },
    /// A string or list length exceeds its cap.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The message decoded completely but this many bytes were left over.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// A field holds a value outside its domain (unknown role, address family, bool byte...).
    #[error("bad {what} value {value}")]
    BadValue { what: &'static str, value: u64 },
}

/// Why a message could not be encoded. Encoding never truncates a field to make it fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string (bytes of UTF-8) or list (items) is over its cap.
    #[error("{what} too long to encode: {len} > {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// A bounds-checked cursor over one received message.
///
/// Every getter takes `what`, the name of the field being read, which ends up in the
/// [`DecodeError`]. A reader built with [`Reader::new`] over a [`Bytes`] hands out the tail of
/// the message zero-copy through [`Reader::rest`]; one built with [`Reader::from_slice`] has
/// no shared buffer to slice, so `rest` copies.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    backing: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    /// A reader over a shared buffer; [`Reader::rest`] is zero-copy.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf: buf.as_ref(),
            pos: 0,
            backing: Some(buf),
        }
    }

    /// A reader over a plain slice; [`Reader::rest`] copies.
    pub fn from_slice(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            backing: None,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes, borrowed from the input.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    /// The next `N` bytes as an array (addresses, fixed-size ids).
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated { what })
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A bool byte: `0` or `1`, anything else is [`DecodeError::BadValue`].
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadValue {
                what,
                value: u64::from(other),
            }),
        }
    }

    /// A string: `u16` byte length (at most [`MAX_STR_LEN`]) then UTF-8.
    pub fn str_u16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(what)?);
        if len > MAX_STR_LEN {
            return Err(DecodeError::TooLong {
                what,
                len,
                max: MAX_STR_LEN,
            });
        }
        let bytes = self.take(len, what)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { what })?;
        Ok(s.to_owned())
    }

    /// A socket address: family byte, address bytes, `u16` port. An unknown family byte is
    /// [`DecodeError::BadValue`].
    pub fn socket_addr(&mut self, what: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(what)? {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?)),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?)),
            other => {
                return Err(DecodeError::BadValue {
                    what,
                    value: u64::from(other),
                })
            }
        };
        let port = self.u16(what)?;
        Ok(SocketAddr::new(ip, port))
    }

    /// A list: `u16` item count (at most [`MAX_LIST_LEN`]) then the items, each read by `item`.
    ///
    /// `min_item_len` is the smallest encoding one item can have; a count that could not fit
    /// in the remaining bytes is rejected as [`DecodeError::Truncated`] before anything is
    /// allocated.
    pub fn list<T>(
        &mut self,
        what: &'static str,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = usize::from(self.u16(what)?);
        if count > MAX_LIST_LEN {
            return Err(DecodeError::TooLong {
                what,
                len: count,
                max: MAX_LIST_LEN,
            });
        }
        if count.saturating_mul(min_item_len) > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    /// A list of strings (see [`Reader::list`] and [`Reader::str_u16`]).
    pub fn str_list(&mut self, what: &'static str) -> Result<Vec<String>, DecodeError> {
        self.list(what, 2, |r| r.str_u16(what))
    }

    /// Everything left, consumed: a zero-copy slice of the input for readers made with
    /// [`Reader::new`], a copy otherwise. Never fails; the result may be empty.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.buf.len();
        match self.backing {
            Some(bytes) => bytes.slice(start..),
            None => Bytes::copy_from_slice(&self.buf[start..]),
        }
    }

    /// Ends decoding: fails with [`DecodeError::TrailingBytes`] if any input is left.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Fails with [`EncodeError::TooLong`] if `len` is over `max`.
pub fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        Err(EncodeError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}

/// Encoded size of a string: its `u16` length prefix plus its bytes.
pub fn str_encoded_len(s: &str) -> usize {
    2 + s.len()
}

/// Writes a string as `u16` length + UTF-8. Over [`MAX_STR_LEN`] bytes it writes nothing and
/// returns [`EncodeError::TooLong`].
pub fn put_str(dst: &mut BytesMut, what: &'static str, s: &str) -> Result<(), EncodeError> {
    check_len(what, s.len(), MAX_STR_LEN)?;
    // Cannot truncate: MAX_STR_LEN fits in a u16.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
    Ok(())
}

/// Runs `put`, which appends one message to `dst`; on error cuts `dst` back to what it was,
/// so a failed encode never leaves half a message behind.
pub fn put_or_rollback(
    dst: &mut BytesMut,
    put: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    let result = put(dst);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Writes a bool as one byte, `0` or `1`.
pub fn put_bool(dst: &mut BytesMut, value: bool) {
    dst.put_u8(u8::from(value));
}

/// Writes a socket address: family byte, address bytes, `u16` port (flow info and scope id
/// of IPv6 addresses are dropped).
pub fn put_socket_addr(dst: &mut BytesMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(FAMILY_V4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(FAMILY_V6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(addr.port());
}

/// Writes a list as `u16` count + items, each written by `put_item`.
///
/// Over [`MAX_LIST_LEN`] items it writes nothing and returns [`EncodeError::TooLong`]. If an
/// item fails, the items before it stay written: callers that need all-or-nothing output
/// truncate `dst` back themselves (as [`overlay::OverlayMsg::encode`] does).
pub fn put_list<T>(
    dst: &mut BytesMut,
    what: &'static str,
    items: &[T],
    mut put_item: impl FnMut(&mut BytesMut, &T) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    check_len(what, items.len(), MAX_LIST_LEN)?;
    // Cannot truncate: MAX_LIST_LEN fits in a u16.
    dst.put_u16(items.len() as u16);
    for item in items {
        put_item(dst, item)?;
    }
    Ok(())
}

/// Writes a list of strings (see [`put_list`] and [`put_str`]).
pub fn put_str_list<S: AsRef<str>>(
    dst: &mut BytesMut,
    what: &'static str,
    items: &[S],
) -> Result<(), EncodeError> {
    put_list(dst, what, items, |dst, s| put_str(dst, what, s.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian() {
        let input = Bytes::from_static(&[
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
            0x0f,
        ]);
        let mut r = Reader::new(&input);
        assert_eq!(r.u8("a"), Ok(0x01));
        assert_eq!(r.u16("b"), Ok(0x0203));
        assert_eq!(r.u32("c"), Ok(0x0405_0607));
        assert_eq!(r.u64("d"), Ok(0x0809_0a0b_0c0d_0e0f));
        assert!(r.is_empty());
        assert_eq!(r.position(), 15);
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn getters_report_truncation_with_field_name() {
        let mut r = Reader::from_slice(&[0x00, 0x01, 0x02]);
        assert_eq!(r.u32("port"), Err(DecodeError::Truncated { what: "port" }));
        // A failed read consumes nothing.
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.u16("x"), Ok(1));
        assert_eq!(r.u16("y"), Err(DecodeError::Truncated { what: "y" }));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn bool_accepts_only_zero_and_one() {
        let mut r = Reader::from_slice(&[0, 1, 2]);
        assert_eq!(r.bool("f"), Ok(false));
        assert_eq!(r.bool("f"), Ok(true));
        assert_eq!(
            r.bool("f"),
            Err(DecodeError::BadValue {
                what: "f",
                value: 2
            })
        );
    }

    #[test]
    fn strings_round_trip_and_are_checked() {
        let mut buf = BytesMut::new();
        put_str(&mut buf, "s", "").unwrap();
        put_str(&mut buf, "s", "vídeo").unwrap();
        assert_eq!(&buf[..], b"\x00\x00\x00\x06v\xc3\xaddeo".as_slice());
        let frozen = buf.freeze();
        let mut r = Reader::new(&frozen);
        assert_eq!(r.str_u16("s").as_deref(), Ok(""));
        assert_eq!(r.str_u16("s").as_deref(), Ok("vídeo"));
        assert_eq!(r.finish(), Ok(()));

        let mut r = Reader::from_slice(&[0x00, 0x02, 0xff, 0xfe]);
        assert_eq!(r.str_u16("n"), Err(DecodeError::BadUtf8 { what: "n" }));
        let mut r = Reader::from_slice(&[0x00, 0x03, b'a', b'b']);
        assert_eq!(r.str_u16("n"), Err(DecodeError::Truncated { what: "n" }));
        let mut r = Reader::from_slice(&[0x04, 0x01]);
        assert_eq!(
            r.str_u16("n"),
            Err(DecodeError::TooLong {
                what: "n",
                len: 1025,
                max: MAX_STR_LEN
            })
        );
    }

    #[test]
    fn string_at_cap_is_fine_and_over_cap_writes_nothing() {
        let mut buf = BytesMut::new();
        let at_cap = "x".repeat(MAX_STR_LEN);
        put_str(&mut buf, "s", &at_cap).unwrap();
        assert_eq!(buf.len(), 2 + MAX_STR_LEN);
        assert_eq!(str_encoded_len(&at_cap), buf.len());
        let frozen = buf.clone().freeze();
        assert_eq!(Reader::new(&frozen).str_u16("s"), Ok(at_cap));

        let over = "x".repeat(MAX_STR_LEN + 1);
        assert_eq!(
            put_str(&mut buf, "video", &over),
            Err(EncodeError::TooLong {
                what: "video",
                len: MAX_STR_LEN + 1,
                max: MAX_STR_LEN
            })
        );
        assert_eq!(buf.len(), 2 + MAX_STR_LEN);
    }

    #[test]
    fn lists_round_trip_and_are_checked() {
        let mut buf = BytesMut::new();
        put_str_list(&mut buf, "l", &["a", "bc"]).unwrap();
        put_str_list::<&str>(&mut buf, "l", &[]).unwrap();
        assert_eq!(&buf[..], b"\x00\x02\x00\x01a\x00\x02bc\x00\x00".as_slice());
        let frozen = buf.freeze();
        let mut r = Reader::new(&frozen);
        assert_eq!(r.str_list("l"), Ok(vec!["a".to_owned(), "bc".to_owned()]));
        assert_eq!(r.str_list("l"), Ok(vec![]));
        assert_eq!(r.finish(), Ok(()));

        // Count over the cap.
        let mut r = Reader::from_slice(&[0xff, 0xff]);
        assert_eq!(
            r.str_list("l"),
            Err(DecodeError::TooLong {
                what: "l",
                len: 0xffff,
                max: MAX_LIST_LEN
            })
        );
        // Count under the cap but more than the remaining bytes can hold: rejected up front.
        let mut r = Reader::from_slice(&[0x10, 0x00, 0x00, 0x00]);
        assert_eq!(r.str_list("l"), Err(DecodeError::Truncated { what: "l" }));
        // Items themselves fail normally.
        let mut r = Reader::from_slice(&[0x00, 0x01, 0x00, 0x05, b'a']);
        assert_eq!(r.str_list("l"), Err(DecodeError::Truncated { what: "l" }));
    }

    #[test]
    fn list_over_cap_writes_nothing() {
        let items = vec![0u8; MAX_LIST_LEN + 1];
        let mut buf = BytesMut::new();
        let res = put_list(&mut buf, "items", &items, |dst, v| {
            dst.put_u8(*v);
            Ok(())
        });
        assert_eq!(
            res,
            Err(EncodeError::TooLong {
                what: "items",
                len: MAX_LIST_LEN + 1,
                max: MAX_LIST_LEN
            })
        );
        assert!(buf.is_empty());

        let items = vec![7u8; MAX_LIST_LEN];
        put_list(&mut buf, "items", &items, |dst, v| {
            dst.put_u8(*v);
            Ok(())
        })
        .unwrap();
        let frozen = buf.freeze();
        let mut r = Reader::new(&frozen);
        assert_eq!(r.list("items", 1, |r| r.u8("item")), Ok(items));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn socket_addrs_round_trip_and_reject_unknown_family() {
        let v4: SocketAddr = "10.0.2.2:7000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:7001".parse().unwrap();
        let mut buf = BytesMut::new();
        put_socket_addr(&mut buf, &v4);
        put_socket_addr(&mut buf, &v6);
        let mut expected = vec![4, 10, 0, 2, 2, 0x1b, 0x58, 6, 0x20, 0x01, 0x0d, 0xb8];
        expected.extend_from_slice(&[0; 11]);
        expected.extend_from_slice(&[1, 0x1b, 0x59]);
        assert_eq!(&buf[..], &expected[..]);
        let frozen = buf.freeze();
        let mut r = Reader::new(&frozen);
        assert_eq!(r.socket_addr("a"), Ok(v4));
        assert_eq!(r.socket_addr("a"), Ok(v6));
        assert_eq!(r.finish(), Ok(()));

        // Scope id and flow info are not carried.
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 7, 3));
        let mut buf = BytesMut::new();
        put_socket_addr(&mut buf, &scoped);
        assert_eq!(
            Reader::from_slice(&buf).socket_addr("a"),
            Ok(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 9))
        );

        let mut r = Reader::from_slice(&[5, 1, 2, 3, 4, 0, 1]);
        assert_eq!(
            r.socket_addr("a"),
            Err(DecodeError::BadValue {
                what: "a",
                value: 5
            })
        );
        let mut r = Reader::from_slice(&[6, 1, 2, 3, 4, 0, 1]);
        assert_eq!(
            r.socket_addr("a"),
            Err(DecodeError::Truncated { what: "a" })
        );
    }

    #[test]
    fn rest_is_zero_copy_over_bytes_and_copies_over_slices() {
        let input = Bytes::from_static(b"\x01payload");
        let mut r = Reader::new(&input);
        assert_eq!(r.u8("tag"), Ok(1));
        let rest = r.rest();
        assert_eq!(&rest[..], b"payload");
        assert_eq!(rest.as_ptr(), input[1..].as_ptr());
        assert!(r.is_empty());
        assert_eq!(r.rest(), Bytes::new());
        assert_eq!(r.finish(), Ok(()));

        let mut r = Reader::from_slice(b"\x01payload");
        r.u8("tag").unwrap();
        assert_eq!(&r.rest()[..], b"payload");
    }

    #[test]
    fn error_messages_are_short_and_clear() {
        assert_eq!(
            DecodeError::Truncated { what: "hello.name" }.to_string(),
            "truncated hello.name"
        );
        assert_eq!(
            DecodeError::UnknownTag(0xab).to_string(),
            "unknown message tag 0xab"
        );
        assert_eq!(
            DecodeError::BadUtf8 { what: "video" }.to_string(),
            "invalid UTF-8 in video"
        );
        assert_eq!(
            DecodeError::TooLong {
                what: "video",
                len: 2000,
                max: 1024
            }
            .to_string(),
            "video too long: 2000 > 1024"
        );
        assert_eq!(
            DecodeError::TrailingBytes(3).to_string(),
            "3 trailing bytes after message"
        );
        assert_eq!(
            DecodeError::BadValue {
                what: "hello.role",
                value: 9
            }
            .to_string(),
            "bad hello.role value 9"
        );
        assert_eq!(
            EncodeError::TooLong {
                what: "flood.visited",
                len: 5000,
                max: 4096
            }
            .to_string(),
            "flood.visited too long to encode: 5000 > 4096"
        );
    }
}
