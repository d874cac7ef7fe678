//! The encrypted overlay transport: `crypto`'s handshake and records over a tokio TCP stream.
//!
//! This module owns the bytes on an overlay TCP connection. Every frame is a 4-byte big-endian
//! length followed by that many bytes (tokio-util's `LengthDelimitedCodec`). [`handshake`] runs
//! the `crypto` handshake with a fresh random challenge and an overall timeout, and yields a
//! [`SecureConn`] that splits into a [`SecureReader`] and a [`SecureWriter`] so that a reader task
//! and a writer task can each own one half. After the handshake every frame is one sealed record
//! of at most [`MAX_RECORD_PLAINTEXT`] plaintext bytes.
//!
//! Outgoing frames are written with vectored writes straight from each sealed record's buffer
//! (length prefix and record as two slices, up to 64 frames per system call), so a relayed video
//! chunk is not copied again into a write buffer after sealing.
//!
//! Any error (a bad record, a frame over the limit, a frame cut short by EOF, an I/O error) is
//! final: the caller logs the error's one-line reason and drops the connection, and a reader that
//! failed keeps failing rather than looking like a clean close.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, StreamExt};
use rand::rngs::OsRng;
use rand::RngCore;
use thiserror::Error;
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, FramedRead, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::crypto::{
    Handshake, HandshakeError, Opener, RecordError, Sealer, Side, CHALLENGE_LEN, MAX_RECORD_LEN,
};
pub use crate::crypto::{MAX_RECORD_PLAINTEXT, TAG_LEN};
use crate::keyfile::Psk;

/// Largest frame accepted before the peer has proven it holds the key. Handshake frames are
/// under 100 bytes; a small cap stops an unauthenticated peer from making us buffer 256 KiB.
const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Why an overlay connection failed. Display strings are short enough for one log line.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection during the handshake")]
    ClosedDuringHandshake,
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("peer sent a frame larger than the {max}-byte limit")]
    FrameTooLarge { max: usize },
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
    #[error("connection already failed and must be closed")]
    AlreadyFailed,
}

impl TransportError {
    /// A short, stable label for counters (`/metrics` labels): why a handshake was refused or
    /// a connection dropped. Wrong key and a replayed handshake both end in `auth` (the peer
    /// could not prove it holds the key for this handshake's fresh challenges).
    pub fn reason(&self) -> &'static str {
        match self {
            TransportError::Io(_) => "io",
            TransportError::Timeout(_) => "timeout",
            TransportError::ClosedDuringHandshake => "closed",
            TransportError::Handshake(
                HandshakeError::KeyMismatch
                | HandshakeError::TranscriptMismatch
                | HandshakeError::SameChallenge,
            ) => "auth",
            TransportError::Handshake(_) => "malformed",
            TransportError::Record(RecordError::Authentication | RecordError::Poisoned) => "auth",
            TransportError::Record(_) => "malformed",
            TransportError::FrameTooLarge { .. } => "oversize",
            TransportError::TruncatedFrame => "truncated",
            TransportError::AlreadyFailed => "failed",
        }
    }
}

/// `LengthDelimitedCodec` with typed errors and a truncation check.
///
/// The inner codec consumes a frame's length prefix before the frame's body has arrived, so at
/// EOF an empty buffer does not prove we stopped at a frame boundary; `mid_frame` tracks that.
struct RecordCodec {
    inner: LengthDelimitedCodec,
    mid_frame: bool,
}

impl RecordCodec {
    fn new(max_frame: usize) -> RecordCodec {
        RecordCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max_frame)
                .new_codec(),
            mid_frame: false,
        }
    }

    fn set_max_frame(&mut self, max_frame: usize) {
        self.inner.set_max_frame_length(max_frame);
    }
}

fn is_too_large(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

impl Decoder for RecordCodec {
    type Item = BytesMut;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        let before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.mid_frame = false;
                Ok(Some(frame))
            }
            Ok(None) => {
                // The buffer only shrinks without a frame when the length prefix was consumed.
                if src.len() != before {
                    self.mid_frame = true;
                }
                Ok(None)
            }
            Err(e) if is_too_large(&e) => Err(TransportError::FrameTooLarge {
                max: self.inner.max_frame_length(),
            }),
            Err(e) => Err(TransportError::Io(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.mid_frame => Ok(None),
            None => Err(TransportError::TruncatedFrame),
        }
    }
}

type FrameReader = FramedRead<OwnedReadHalf, RecordCodec>;

/// Queued bytes above which `poll_ready` writes out before accepting another frame.
const WRITE_BACKPRESSURE: usize = 128 * 1024;
/// Frames gathered into one vectored write (two slices each).
const FRAMES_PER_WRITE: usize = 64;

/// The sending side of the framing: a sink of frames, each written as a 4-byte big-endian length
/// then the frame, with vectored writes from the frames' own buffers (no copy into a write
/// buffer, unlike tokio-util's `FramedWrite`). Same bytes on the wire as `LengthDelimitedCodec`.
struct FrameWriter {
    io: OwnedWriteHalf,
    /// Frames not completely written yet, with their length prefixes.
    queue: VecDeque<([u8; 4], Bytes)>,
    /// Bytes of the front frame (prefix first) already written.
    front_done: usize,
    /// Bytes in `queue` not yet written.
    queued: usize,
}

impl FrameWriter {
    fn new(io: OwnedWriteHalf) -> FrameWriter {
        FrameWriter {
            io,
            queue: VecDeque::new(),
            front_done: 0,
            queued: 0,
        }
    }

    /// Writes out every queued frame.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut n = 0;
            let mut skip = self.front_done;
            for (prefix, frame) in self.queue.iter().take(FRAMES_PER_WRITE) {
                for part in [&prefix[..], &frame[..]] {
                    let cut = skip.min(part.len());
                    skip -= cut;
                    let part = &part[cut..];
                    if !part.is_empty() {
                        slices[n] = IoSlice::new(part);
                        n += 1;
                    }
                }
            }
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some((_, frame)) = self.queue.front() else {
                break;
            };
            let left = 4 + frame.len() - self.front_done;
            if n >= left {
                n -= left;
                self.queue.pop_front();
                self.front_done = 0;
            } else {
                self.front_done += n;
                n = 0;
            }
        }
    }
}

impl Sink<Bytes> for FrameWriter {
    type Error = TransportError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let this = self.get_mut();
        if this.queued >= WRITE_BACKPRESSURE {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> Result<(), TransportError> {
        // Frames we send are sealed records or handshake frames, bounded by the record layer.
        if frame.len() > MAX_RECORD_LEN {
            return Err(TransportError::FrameTooLarge {
                max: MAX_RECORD_LEN,
            });
        }
        let this = self.get_mut();
        this.queued += 4 + frame.len();
        this.queue
            .push_back(((frame.len() as u32).to_be_bytes(), frame));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(ready!(Pin::new(&mut this.io).poll_flush(cx)).map_err(Into::into))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(ready!(Pin::new(&mut this.io).poll_shutdown(cx)).map_err(Into::into))
    }
}

/// An authenticated, encrypted overlay connection.
#[derive(Debug)]
pub struct SecureConn {
    reader: SecureReader,
    writer: SecureWriter,
    local: SocketAddr,
}

impl SecureConn {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.reader.peer
    }

    /// Our address on this connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Splits into halves that separate tasks can own.
    pub fn into_split(self) -> (SecureReader, SecureWriter) {
        (self.reader, self.writer)
    }
}

/// Runs the overlay handshake on a freshly connected `stream` (`side` is
/// [`Side::Initiator`] for the side that connected). Both sides send their HELLO at once, so
/// neither waits on the other. The whole exchange must finish within `timeout`.
pub async fn handshake(
    stream: TcpStream,
    side: Side,
    psk: &Psk,
    timeout: Duration,
) -> Result<SecureConn, TransportError> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    // Keepalives and control messages are small and latency-sensitive; Nagle would hold them.
    stream.set_nodelay(true)?;

    let mut challenge = [0u8; CHALLENGE_LEN];
    OsRng.fill_bytes(&mut challenge);
    let hs = Handshake::new(side, psk, challenge);

    let (read_half, write_half) = stream.into_split();
    let mut frames_in = FramedRead::new(read_half, RecordCodec::new(HANDSHAKE_MAX_FRAME));
    let mut frames_out = FrameWriter::new(write_half);

    let (sealer, opener) =
        tokio::time::timeout(timeout, exchange(hs, &mut frames_in, &mut frames_out))
            .await
            .map_err(|_| TransportError::Timeout(timeout))??;

    // Safe to raise only now: FramedRead decodes one frame per poll, so nothing after the
    // peer's FINISHED has been decoded under the handshake limit.
    frames_in.decoder_mut().set_max_frame(MAX_RECORD_LEN);
    Ok(SecureConn {
        reader: SecureReader {
            frames: frames_in,
            opener,
            peer,
            failed: false,
        },
        writer: SecureWriter {
            frames: frames_out,
            sealer,
            peer,
        },
        local,
    })
}

async fn exchange(
    mut hs: Handshake,
    frames_in: &mut FrameReader,
    frames_out: &mut FrameWriter,
) -> Result<(Sealer, Opener), TransportError> {
    // Send and receive concurrently: if both sides waited to receive first, they would deadlock.
    let ((), peer_hello) =
        tokio::try_join!(frames_out.send(hs.hello()), next_handshake_frame(frames_in))?;
    let finished = hs.handle_hello(&peer_hello)?;
    let ((), peer_finished) = tokio::try_join!(
        frames_out.send(finished.freeze()),
        next_handshake_frame(frames_in)
    )?;
    Ok(hs.handle_finished(peer_finished)?)
}

async fn next_handshake_frame(frames_in: &mut FrameReader) -> Result<BytesMut, TransportError> {
    frames_in
        .next()
        .await
        .unwrap_or(Err(TransportError::ClosedDuringHandshake))
}

/// The receiving half of a [`SecureConn`].
pub struct SecureReader {
    frames: FrameReader,
    opener: Opener,
    peer: SocketAddr,
    failed: bool,
}

impl SecureReader {
    /// The next message's plaintext, or `Ok(None)` when the peer closed the connection cleanly at
    /// a frame boundary. Cancel-safe: a message is either returned or left for the next call.
    pub async fn recv(&mut self) -> Result<Option<BytesMut>, TransportError> {
        if self.failed {
            return Err(TransportError::AlreadyFailed);
        }
        let result = match self.frames.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(mut record)) => match self.opener.open(&mut record) {
                Ok(()) => Ok(Some(record)),
                Err(e) => Err(e.into()),
            },
        };
        // After a decode error FramedRead reports end-of-stream, which must not pass for a clean
        // close, so remember the failure ourselves.
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl std::fmt::Debug for SecureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReader")
            .field("peer", &self.peer)
            .field("opener", &self.opener)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The sending half of a [`SecureConn`].
pub struct SecureWriter {
    frames: FrameWriter,
    sealer: Sealer,
    peer: SocketAddr,
}

impl SecureWriter {
    /// Seals and sends one message, then flushes. Allocate `plaintext` with [`TAG_LEN`] bytes of
    /// spare capacity to save a reallocation. Messages over [`MAX_RECORD_PLAINTEXT`] are refused
    /// with [`RecordError::TooLong`] and leave the connection usable.
    pub async fn send(&mut self, plaintext: BytesMut) -> Result<(), TransportError> {
        self.feed(plaintext).await?;
        self.flush().await
    }

    /// Seals and queues one message without flushing, to batch several into fewer writes.
    ///
    /// Cancel-safe in the way that matters for the record layer: a message is sealed only once
    /// there is room to queue it, so a cancelled call never burns a sequence number (which would
    /// make every later record fail at the peer).
    pub async fn feed(&mut self, mut plaintext: BytesMut) -> Result<(), TransportError> {
        std::future::poll_fn(|cx| self.frames.poll_ready_unpin(cx)).await?;
        self.sealer.seal(&mut plaintext)?;
        self.frames.start_send_unpin(plaintext.freeze())
    }

    /// Writes out everything queued by [`SecureWriter::feed`].
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.frames.flush().await
    }

    /// Flushes and closes our direction of the connection; the peer's reader then sees a clean
    /// end of stream.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.frames.close().await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl std::fmt::Debug for SecureWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureWriter")
            .field("peer", &self.peer)
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::HELLO_LEN;
    use std::future::Future;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    /// Only turns a hang into a test failure; no test depends on how fast anything runs.
    const GUARD: Duration = Duration::from_secs(20);

    async fn guarded<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(GUARD, fut).await.expect("test hung")
    }

    fn psk(byte: u8) -> Psk {
        Psk::from_bytes([byte; 32])
    }

    fn msg(bytes: &[u8]) -> BytesMut {
        let mut buf = BytesMut::with_capacity(bytes.len() + TAG_LEN);
        buf.extend_from_slice(bytes);
        buf
    }

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Handshakes a real client (initiator) and server (responder) over loopback.
    async fn secure_pair(
        server_psk: &Psk,
        client_psk: &Psk,
    ) -> (
        Result<SecureConn, TransportError>,
        Result<SecureConn, TransportError>,
    ) {
        let (listener, addr) = listen().await;
        let server = async {
            let (stream, _) = listener.accept().await.unwrap();
            handshake(stream, Side::Responder, server_psk, GUARD).await
        };
        let client = async {
            let stream = TcpStream::connect(addr).await.unwrap();
            handshake(stream, Side::Initiator, client_psk, GUARD).await
        };
        tokio::join!(server, client)
    }

    /// A client that runs the sans-IO handshake by hand over raw frames, so tests can send
    /// whatever bytes they like afterwards.
    struct RawClient {
        framed: Framed<TcpStream, LengthDelimitedCodec>,
        sealer: Sealer,
    }

    impl RawClient {
        fn sealed(&mut self, plaintext: &[u8]) -> Bytes {
            let mut buf = msg(plaintext);
            self.sealer.seal(&mut buf).unwrap();
            buf.freeze()
        }

        async fn send_frame(&mut self, frame: Bytes) {
            self.framed.send(frame).await.unwrap();
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.framed.get_mut().write_all(bytes).await.unwrap();
        }
    }

    /// A real server (responder) and a hand-driven client, handshaken with the same key.
    async fn raw_pair() -> (RawClient, SecureReader, SecureWriter) {
        let key = psk(9);
        let (listener, addr) = listen().await;
        let server = async {
            let (stream, _) = listener.accept().await.unwrap();
            handshake(stream, Side::Responder, &key, GUARD)
                .await
                .unwrap()
        };
        let client = async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut framed = LengthDelimitedCodec::builder()
                .max_frame_length(usize::MAX)
                .new_framed(stream);
            let mut hs = Handshake::new(Side::Initiator, &key, [0x11; 32]);
            framed.send(hs.hello()).await.unwrap();
            let peer_hello = framed.next().await.unwrap().unwrap();
            let finished = hs.handle_hello(&peer_hello).unwrap();
            framed.send(finished.freeze()).await.unwrap();
            let peer_finished = framed.next().await.unwrap().unwrap();
            let (sealer, _opener) = hs.handle_finished(peer_finished).unwrap();
            RawClient { framed, sealer }
        };
        let (conn, raw) = tokio::join!(server, client);
        let (reader, writer) = conn.into_split();
        (raw, reader, writer)
    }

    /// Compile-time check: the futures can be spawned onto a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(stream: TcpStream, r: &mut SecureReader, w: &mut SecureWriter) {
        fn is_send<T: Send>(_: &T) {}
        let key = psk(0);
        is_send(&handshake(stream, Side::Initiator, &key, GUARD));
        is_send(&r.recv());
        is_send(&w.send(BytesMut::new()));
    }

    #[tokio::test]
    async fn same_key_messages_flow_both_ways() {
        guarded(async {
            let (server, client) = secure_pair(&psk(1), &psk(1)).await;
            let (server, client) = (server.unwrap(), client.unwrap());
            assert_eq!(server.peer_addr(), client.local_addr());
            assert_eq!(client.peer_addr(), server.local_addr());
            let (mut s_read, mut s_write) = server.into_split();
            let (mut c_read, mut c_write) = client.into_split();

            c_write.send(msg(b"hello from client")).await.unwrap();
            assert_eq!(
                &s_read.recv().await.unwrap().unwrap()[..],
                b"hello from client"
            );
            s_write.send(msg(b"hello from server")).await.unwrap();
            assert_eq!(
                &c_read.recv().await.unwrap().unwrap()[..],
                b"hello from server"
            );

            // Batched sends arrive in order.
            for n in 0..10u8 {
                c_write.feed(msg(&[n; 1000])).await.unwrap();
            }
            c_write.flush().await.unwrap();
            for n in 0..10u8 {
                assert_eq!(&s_read.recv().await.unwrap().unwrap()[..], &[n; 1000]);
            }

            // The largest record fits; one byte more is refused locally and nothing breaks.
            let big = vec![0x5a; MAX_RECORD_PLAINTEXT];
            let (sent, received) = tokio::join!(c_write.send(msg(&big)), s_read.recv());
            sent.unwrap();
            assert_eq!(received.unwrap().unwrap(), big);
            let err = c_write
                .send(BytesMut::zeroed(MAX_RECORD_PLAINTEXT + 1))
                .await
                .unwrap_err();
            assert!(
                matches!(err, TransportError::Record(RecordError::TooLong { .. })),
                "{err}"
            );
            c_write.send(msg(b"still fine")).await.unwrap();
            assert_eq!(&s_read.recv().await.unwrap().unwrap()[..], b"still fine");

            // A clean close is seen as end of stream.
            c_write.shutdown().await.unwrap();
            assert!(s_read.recv().await.unwrap().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn many_frames_survive_partial_vectored_writes() {
        // 40 MB of records of varied sizes, fed without reading at first: the socket buffers
        // fill, so writes stop mid-frame (inside a prefix or a record) and resume later.
        guarded(async {
            let (server, client) = secure_pair(&psk(4), &psk(4)).await;
            let (mut s_read, _s_write) = server.unwrap().into_split();
            let (_c_read, mut c_write) = client.unwrap().into_split();
            let sizes: Vec<usize> = (0..2000).map(|i| (i * 7919) % 40_000 + i % 3).collect();
            let body = |i: usize, len: usize| -> Vec<u8> {
                (0..len).map(|k| (i as u8).wrapping_add(k as u8)).collect()
            };
            let sender = async {
                for (i, &len) in sizes.iter().enumerate() {
                    c_write.feed(msg(&body(i, len))).await.unwrap();
                    if i % 37 == 0 {
                        c_write.flush().await.unwrap();
                    }
                }
                c_write.shutdown().await.unwrap();
            };
            let receiver = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                for (i, &len) in sizes.iter().enumerate() {
                    let got = s_read.recv().await.unwrap().unwrap();
                    assert_eq!(got.len(), len, "record {i}");
                    assert!(got[..] == body(i, len)[..], "record {i} differs");
                }
                assert!(s_read.recv().await.unwrap().is_none());
            };
            tokio::join!(sender, receiver);
        })
        .await;
    }

    #[tokio::test]
    async fn different_keys_fail_on_both_sides() {
        guarded(async {
            let (server, client) = secure_pair(&psk(1), &psk(2)).await;
            for err in [server.unwrap_err(), client.unwrap_err()] {
                assert!(
                    matches!(err, TransportError::Handshake(HandshakeError::KeyMismatch)),
                    "{err}"
                );
                assert!(err.to_string().contains("different --key-file?"));
            }
        })
        .await;
    }

    /// Accepts one connection and runs the server side of the handshake on it, while `client`
    /// plays the other end on a raw socket.
    async fn server_against<F, Fut>(timeout: Duration, client: F) -> TransportError
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (listener, addr) = listen().await;
        let server = async {
            let (stream, _) = listener.accept().await.unwrap();
            handshake(stream, Side::Responder, &psk(1), timeout).await
        };
        let client = async { client(TcpStream::connect(addr).await.unwrap()).await };
        let (result, ()) = tokio::join!(server, client);
        result.unwrap_err()
    }

    /// Reads (and ignores) whatever the server sends until it closes the connection.
    async fn read_until_closed(mut stream: TcpStream) {
        let mut buf = [0u8; 256];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
            if n == 0 {
                break;
            }
        }
    }

    #[tokio::test]
    async fn garbage_client_is_refused() {
        guarded(async {
            // Text where a length prefix should be reads as a huge frame.
            let err = server_against(GUARD, |mut s| async move {
                s.write_all(b"GET / HTTP/1.1\r\nHost: overlay\r\n\r\n")
                    .await
                    .unwrap();
                // Stay connected so that only the garbage can end the handshake.
                read_until_closed(s).await;
            })
            .await;
            assert!(matches!(err, TransportError::FrameTooLarge { .. }), "{err}");

            // A well-framed hello from something else.
            let err = server_against(GUARD, |mut s| async move {
                let mut frame = (HELLO_LEN as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(b"SSH-2.0-OpenSSH_9.6 garbage garbage");
                frame.resize(4 + HELLO_LEN, b'!');
                s.write_all(&frame).await.unwrap();
                read_until_closed(s).await;
            })
            .await;
            assert!(
                matches!(err, TransportError::Handshake(HandshakeError::BadMagic)),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        guarded(async {
            // Connected, says nothing, and stays until the server gives up.
            let err = server_against(Duration::from_millis(200), read_until_closed).await;
            assert!(matches!(err, TransportError::Timeout(_)), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn client_closing_mid_handshake_is_reported() {
        guarded(async {
            let err = server_against(GUARD, |s| async move { drop(s) }).await;
            assert!(
                matches!(err, TransportError::ClosedDuringHandshake),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn replayed_record_is_refused() {
        guarded(async {
            let (mut raw, mut reader, _writer) = raw_pair().await;
            let first = raw.sealed(b"chunk 1");
            raw.send_frame(first.clone()).await;
            assert_eq!(&reader.recv().await.unwrap().unwrap()[..], b"chunk 1");
            raw.send_frame(first).await;
            let err = reader.recv().await.unwrap_err();
            assert!(
                matches!(err, TransportError::Record(RecordError::Authentication)),
                "{err}"
            );
            // The reader stays failed instead of reporting a clean close.
            assert!(matches!(
                reader.recv().await.unwrap_err(),
                TransportError::AlreadyFailed
            ));
        })
        .await;
    }

    #[tokio::test]
    async fn flipped_bit_is_refused() {
        guarded(async {
            let (mut raw, mut reader, _writer) = raw_pair().await;
            let mut frame = BytesMut::from(&raw.sealed(b"video data")[..]);
            frame[2] ^= 0x04;
            raw.send_frame(frame.freeze()).await;
            let err = reader.recv().await.unwrap_err();
            assert!(
                matches!(err, TransportError::Record(RecordError::Authentication)),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn oversize_length_prefix_is_refused() {
        guarded(async {
            let (mut raw, mut reader, _writer) = raw_pair().await;
            let len = (MAX_RECORD_LEN + 1) as u32;
            raw.send_raw(&len.to_be_bytes()).await;
            let err = reader.recv().await.unwrap_err();
            assert!(
                matches!(err, TransportError::FrameTooLarge { max } if max == MAX_RECORD_LEN),
                "{err}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn frame_cut_by_eof_is_refused() {
        guarded(async {
            // Part of the body arrived.
            let (mut raw, mut reader, _writer) = raw_pair().await;
            let mut bytes = 100u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7; 50]);
            raw.send_raw(&bytes).await;
            raw.framed.get_mut().shutdown().await.unwrap();
            let err = reader.recv().await.unwrap_err();
            assert!(matches!(err, TransportError::TruncatedFrame), "{err}");

            // Only the length prefix arrived: the buffer is empty at EOF, yet a frame is open.
            let (mut raw, mut reader, _writer) = raw_pair().await;
            raw.send_raw(&100u32.to_be_bytes()).await;
            raw.framed.get_mut().shutdown().await.unwrap();
            let err = reader.recv().await.unwrap_err();
            assert!(matches!(err, TransportError::TruncatedFrame), "{err}");

            // Half a length prefix.
            let (mut raw, mut reader, _writer) = raw_pair().await;
            raw.send_raw(&[0, 0]).await;
            raw.framed.get_mut().shutdown().await.unwrap();
            let err = reader.recv().await.unwrap_err();
            assert!(matches!(err, TransportError::TruncatedFrame), "{err}");
        })
        .await;
    }
}
