//! The overlay's handshake and AEAD record layer, as plain state machines (sans-IO).
//!
//! This module owns everything cryptographic about an overlay connection: proving that both ends
//! hold the pre-shared key, deriving per-connection keys, and sealing/opening records. It does no
//! I/O and reads no clock; `net::transport` moves its frames over TCP.
//!
//! # Handshake
//!
//! As soon as the TCP connection is up, each side sends a plaintext HELLO frame:
//! `b"OVLD"` | version `u8` (= 1) | 32-byte fresh random challenge ([`HELLO_LEN`] bytes). Neither
//! side waits for the other, so there is no ordering to deadlock on. On receiving the peer's
//! HELLO, both sides derive two session keys with HKDF-SHA256: ikm = the PSK, salt =
//! initiator challenge || responder challenge, info = `"overlayd v1 initiator->responder"` or
//! `"overlayd v1 responder->initiator"` (the initiator is the side that connected). Each side then
//! sends FINISHED: a record sealed with its send key at sequence 0 whose plaintext is a fixed
//! per-direction label (`"overlayd finished initiator"` / `"overlayd finished responder"`)
//! followed by SHA-256 of the transcript (both HELLO frames, initiator's first). A side accepts
//! the connection only after opening the peer's FINISHED and checking label and hash.
//!
//! Why this is enough: a FINISHED that opens proves the peer derived our session key, which needs
//! the PSK and *this* connection's challenges; since our challenge is fresh, a recorded
//! handshake cannot be replayed at us. Separate keys per direction (and a per-direction label)
//! stop a record from being reflected back at its sender, and a HELLO that echoes our own
//! challenge is refused outright. A peer without the key sees only random challenges and a
//! FINISHED it cannot open, so it learns nothing and gets no overlay message accepted.
//!
//! # Records
//!
//! AES-256-GCM with the direction's key, empty associated data, 16-byte tag appended. The nonce
//! is 4 zero bytes || the 64-bit big-endian record sequence number, which counts records per
//! direction (FINISHED is 0, the first application record is 1). A zero IV is safe here because
//! every connection has its own keys, derived from fresh challenges, so a (key, nonce) pair never
//! repeats. The sequence number is never sent: both sides count, so a replayed, reordered,
//! dropped, duplicated or truncated record fails authentication. Running out of sequence numbers
//! is an error, never a wrap. After any failure an [`Opener`] refuses everything, because the
//! connection must be closed.
//!
//! Sealing and opening work in place on a `BytesMut`, so a 64 KiB video chunk is not copied.
//!
//! The cipher is `ring`'s AES-256-GCM (hand-tuned AES-NI/PCLMULQDQ/AVX assembly with the CTR and
//! GHASH passes stitched). The first build used the `aes-gcm` crate; ring measured 4-7 times
//! faster per record here (BENCHMARKS.md, record layer) and produces identical records
//! (`tests/crypto_golden.rs` checks both byte for byte), so the two builds interoperate.
//! HKDF and SHA-256 come from `ring` too, so the daemon has one cryptographic library; the
//! golden test derives the same keys with the RustCrypto `hkdf` crate as an independent check.

use std::fmt;

use bytes::{Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::{digest, hkdf};
use thiserror::Error;

use crate::keyfile::Psk;

/// Magic bytes that open a HELLO frame.
pub const MAGIC: [u8; 4] = *b"OVLD";
/// Protocol version carried in HELLO.
pub const VERSION: u8 = 1;
/// Length of a handshake challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Length of a HELLO frame: magic, version, challenge.
pub const HELLO_LEN: usize = MAGIC.len() + 1 + CHALLENGE_LEN;
/// Length of the AES-GCM tag appended to every record.
pub const TAG_LEN: usize = 16;
/// Largest plaintext one record may carry (256 KiB: several video chunks, bounded memory).
pub const MAX_RECORD_PLAINTEXT: usize = 256 * 1024;
/// Largest sealed record on the wire.
pub const MAX_RECORD_LEN: usize = MAX_RECORD_PLAINTEXT + TAG_LEN;

const INFO_I2R: &[u8] = b"overlayd v1 initiator->responder";
const INFO_R2I: &[u8] = b"overlayd v1 responder->initiator";
const FINISHED_LABEL_INITIATOR: &[u8; 27] = b"overlayd finished initiator";
const FINISHED_LABEL_RESPONDER: &[u8; 27] = b"overlayd finished responder";
const FINISHED_PLAINTEXT_LEN: usize = FINISHED_LABEL_INITIATOR.len() + 32;
/// Length of a sealed FINISHED frame.
pub const FINISHED_LEN: usize = FINISHED_PLAINTEXT_LEN + TAG_LEN;

/// Which end of the TCP connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that connected.
    Initiator,
    /// The side that accepted.
    Responder,
}

impl Side {
    fn finished_label(self) -> &'static [u8; 27] {
        match self {
            Side::Initiator => FINISHED_LABEL_INITIATOR,
            Side::Responder => FINISHED_LABEL_RESPONDER,
        }
    }

    fn peer(self) -> Side {
        match self {
            Side::Initiator => Side::Responder,
            Side::Responder => Side::Initiator,
        }
    }
}

/// Why a handshake failed. Display strings are short enough for one log line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("peer is not an overlayd node (bad magic in hello)")]
    BadMagic,
    #[error("peer speaks protocol version {0}, we speak version {VERSION}")]
    BadVersion(u8),
    #[error("handshake frame has {got} bytes, expected {expected}")]
    BadLength { got: usize, expected: usize },
    #[error("peer echoed our own challenge (reflection attempt)")]
    SameChallenge,
    #[error("peer failed to prove it holds the overlay key (different --key-file?)")]
    KeyMismatch,
    #[error("peer's finished message does not match this handshake")]
    TranscriptMismatch,
    #[error("handshake message arrived out of order")]
    OutOfOrder,
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record failed authentication (tampered, replayed, reordered or truncated)")]
    Authentication,
    #[error("record of {0} bytes is shorter than the {TAG_LEN}-byte tag")]
    TooShort(usize),
    #[error("record of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("record sequence numbers exhausted; the connection must be re-established")]
    SequenceExhausted,
    #[error("an earlier record failed; the connection must be closed")]
    Poisoned,
}

/// One side's handshake in progress.
pub struct Handshake {
    side: Side,
    psk: Psk,
    challenge: [u8; CHALLENGE_LEN],
    state: State,
}

enum State {
    AwaitingHello,
    // Boxed: the ciphers carry expanded keys and GHASH tables (kilobytes).
    AwaitingFinished {
        sealer: Box<Sealer>,
        opener: Box<Opener>,
        transcript_hash: [u8; 32],
    },
    Failed,
}

impl Handshake {
    /// Starts a handshake. `challenge` must be fresh randomness for every connection; it is
    /// injected (rather than drawn here) so tests are deterministic.
    pub fn new(side: Side, psk: &Psk, challenge: [u8; CHALLENGE_LEN]) -> Handshake {
        Handshake {
            side,
            psk: psk.clone(),
            challenge,
            state: State::AwaitingHello,
        }
    }

    /// Our side of the connection.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The HELLO frame to send as soon as the connection is up.
    pub fn hello(&self) -> Bytes {
        Bytes::copy_from_slice(&hello_frame(&self.challenge))
    }

    /// Takes the peer's HELLO frame and returns our FINISHED record to send.
    pub fn handle_hello(&mut self, frame: &[u8]) -> Result<BytesMut, HandshakeError> {
        if !matches!(self.state, State::AwaitingHello) {
            self.state = State::Failed;
            return Err(HandshakeError::OutOfOrder);
        }
        // Any failure leaves the handshake unusable, so nothing can be retried on it.
        self.state = State::Failed;
        let peer_challenge = parse_hello(frame)?;
        if peer_challenge == self.challenge {
            return Err(HandshakeError::SameChallenge);
        }

        let (initiator, responder) = match self.side {
            Side::Initiator => (&self.challenge, &peer_challenge),
            Side::Responder => (&peer_challenge, &self.challenge),
        };
        let mut salt = [0u8; 2 * CHALLENGE_LEN];
        salt[..CHALLENGE_LEN].copy_from_slice(initiator);
        salt[CHALLENGE_LEN..].copy_from_slice(responder);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(self.psk.as_bytes());
        let i2r = expand_key(&prk, INFO_I2R);
        let r2i = expand_key(&prk, INFO_R2I);
        let (send_key, recv_key) = match self.side {
            Side::Initiator => (i2r, r2i),
            Side::Responder => (r2i, i2r),
        };

        let mut transcript = digest::Context::new(&digest::SHA256);
        transcript.update(&hello_frame(initiator));
        transcript.update(&hello_frame(responder));
        let transcript_hash: [u8; 32] = transcript
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 digests are 32 bytes");

        let mut sealer = Sealer::new(&send_key);
        let mut finished = BytesMut::with_capacity(FINISHED_LEN);
        finished.extend_from_slice(self.side.finished_label());
        finished.extend_from_slice(&transcript_hash);
        sealer
            .seal(&mut finished)
            .expect("a fresh sealer always seals a 59-byte record");

        self.state = State::AwaitingFinished {
            sealer: Box::new(sealer),
            opener: Box::new(Opener::new(&recv_key)),
            transcript_hash,
        };
        Ok(finished)
    }

    /// Takes the peer's FINISHED record; on success the connection is authenticated and the
    /// returned sealer/opener carry application records (starting at sequence 1).
    pub fn handle_finished(self, mut frame: BytesMut) -> Result<(Sealer, Opener), HandshakeError> {
        let State::AwaitingFinished {
            sealer,
            mut opener,
            transcript_hash,
        } = self.state
        else {
            return Err(HandshakeError::OutOfOrder);
        };
        if frame.len() != FINISHED_LEN {
            return Err(HandshakeError::BadLength {
                got: frame.len(),
                expected: FINISHED_LEN,
            });
        }
        // Only a peer that derived our receive key can produce a record that opens here.
        opener
            .open(&mut frame)
            .map_err(|_| HandshakeError::KeyMismatch)?;
        let (label, hash) = frame.split_at(FINISHED_LABEL_INITIATOR.len());
        if label != self.side.peer().finished_label() || hash != transcript_hash {
            return Err(HandshakeError::TranscriptMismatch);
        }
        Ok((*sealer, *opener))
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitingHello => "awaiting hello",
            State::AwaitingFinished { .. } => "awaiting finished",
            State::Failed => "failed",
        };
        f.debug_struct("Handshake")
            .field("side", &self.side)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

fn hello_frame(challenge: &[u8; CHALLENGE_LEN]) -> [u8; HELLO_LEN] {
    let mut frame = [0u8; HELLO_LEN];
    frame[..4].copy_from_slice(&MAGIC);
    frame[4] = VERSION;
    frame[5..].copy_from_slice(challenge);
    frame
}

fn parse_hello(frame: &[u8]) -> Result<[u8; CHALLENGE_LEN], HandshakeError> {
    let bad_length = HandshakeError::BadLength {
        got: frame.len(),
        expected: HELLO_LEN,
    };
    // Magic and version are checked before the exact length so that a future version with a
    // longer hello is reported as a version mismatch, not as garbage.
    let (Some(magic), Some(&version)) = (frame.get(..4), frame.get(4)) else {
        return Err(bad_length);
    };
    if magic != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if version != VERSION {
        return Err(HandshakeError::BadVersion(version));
    }
    frame
        .get(5..)
        .and_then(|c| <[u8; CHALLENGE_LEN]>::try_from(c).ok())
        .ok_or(bad_length)
}

fn expand_key(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    // HKDF-SHA256 can produce up to 8160 bytes; 32 always fits. The length is given to ring as
    // `AES_256_GCM`, whose key length is 32.
    prk.expand(&[info], &AES_256_GCM)
        .and_then(|okm| okm.fill(&mut key))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn nonce_for(seq: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    // ring's LessSafeKey takes the nonce per call; uniqueness is ours to keep (sequence numbers
    // that never repeat under a per-connection key, see the module doc).
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is a valid AES-256-GCM key"),
    )
}

/// Encrypts outgoing records for one direction of a connection.
pub struct Sealer {
    cipher: LessSafeKey,
    /// Sequence number of the next record; `u64::MAX` is never used, so it marks exhaustion.
    next_seq: u64,
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: cipher(key),
            next_seq: 0,
        }
    }

    /// Encrypts `buf` in place and appends the tag. Give `buf` [`TAG_LEN`] bytes of spare
    /// capacity to avoid a reallocation. On error `buf` is unchanged and no sequence number is
    /// used.
    pub fn seal(&mut self, buf: &mut BytesMut) -> Result<(), RecordError> {
        if buf.len() > MAX_RECORD_PLAINTEXT {
            return Err(RecordError::TooLong {
                len: buf.len(),
                max: MAX_RECORD_PLAINTEXT,
            });
        }
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce_for(seq), Aad::empty(), buf)
            // Only fails for plaintexts over 64 GiB, which the length check above rules out.
            .map_err(|_| RecordError::TooLong {
                len: buf.len(),
                max: MAX_RECORD_PLAINTEXT,
            })?;
        buf.extend_from_slice(tag.as_ref());
        self.next_seq = seq + 1;
        Ok(())
    }

    /// Sequence number the next sealed record will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Decrypts and authenticates incoming records for one direction of a connection.
pub struct Opener {
    cipher: LessSafeKey,
    /// Sequence number the next record must carry; `u64::MAX` is never used.
    next_seq: u64,
    poisoned: bool,
}

impl Opener {
    fn new(key: &[u8; 32]) -> Opener {
        Opener {
            cipher: cipher(key),
            next_seq: 0,
            poisoned: false,
        }
    }

    /// Authenticates and decrypts `buf` in place, stripping the tag. On error the contents of
    /// `buf` are unspecified and this opener refuses every later record.
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<(), RecordError> {
        if self.poisoned {
            return Err(RecordError::Poisoned);
        }
        let result = self.open_inner(buf);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn open_inner(&mut self, buf: &mut BytesMut) -> Result<(), RecordError> {
        let len = buf.len();
        if len < TAG_LEN {
            return Err(RecordError::TooShort(len));
        }
        if len > MAX_RECORD_LEN {
            return Err(RecordError::TooLong {
                len,
                max: MAX_RECORD_LEN,
            });
        }
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let body_len = len - TAG_LEN;
        self.cipher
            .open_in_place(nonce_for(seq), Aad::empty(), buf)
            .map_err(|_| RecordError::Authentication)?;
        buf.truncate(body_len);
        self.next_seq = seq + 1;
        Ok(())
    }

    /// Sequence number the next record must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("next_seq", &self.next_seq)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn psk(byte: u8) -> Psk {
        Psk::from_bytes([byte; 32])
    }

    /// Runs both handshakes to completion and returns each side's sealer/opener results.
    #[allow(clippy::type_complexity)]
    fn run(
        psk_i: &Psk,
        psk_r: &Psk,
    ) -> (
        Result<(Sealer, Opener), HandshakeError>,
        Result<(Sealer, Opener), HandshakeError>,
    ) {
        let mut i = Handshake::new(Side::Initiator, psk_i, [1; 32]);
        let mut r = Handshake::new(Side::Responder, psk_r, [2; 32]);
        let fin_i = i.handle_hello(&r.hello()).unwrap();
        let fin_r = r.handle_hello(&i.hello()).unwrap();
        (i.handle_finished(fin_r), r.handle_finished(fin_i))
    }

    fn pair() -> ((Sealer, Opener), (Sealer, Opener)) {
        let (i, r) = run(&psk(7), &psk(7));
        (i.unwrap(), r.unwrap())
    }

    fn record(text: &[u8]) -> BytesMut {
        let mut buf = BytesMut::with_capacity(text.len() + TAG_LEN);
        buf.extend_from_slice(text);
        buf
    }

    #[test]
    fn handshake_then_records_both_ways() {
        let ((mut seal_i, mut open_i), (mut seal_r, mut open_r)) = pair();
        assert_eq!(seal_i.next_seq(), 1);
        assert_eq!(open_r.next_seq(), 1);
        for n in 0..5u8 {
            let mut buf = record(&[n; 100]);
            seal_i.seal(&mut buf).unwrap();
            assert_eq!(buf.len(), 100 + TAG_LEN);
            open_r.open(&mut buf).unwrap();
            assert_eq!(&buf[..], &[n; 100]);

            let mut buf = record(b"pong");
            seal_r.seal(&mut buf).unwrap();
            open_i.open(&mut buf).unwrap();
            assert_eq!(&buf[..], b"pong");
        }
        // Empty records are fine too (e.g. a bare keepalive).
        let mut buf = BytesMut::new();
        seal_i.seal(&mut buf).unwrap();
        open_r.open(&mut buf).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn hello_layout() {
        let hs = Handshake::new(Side::Initiator, &psk(1), [9; 32]);
        let hello = hs.hello();
        assert_eq!(hello.len(), HELLO_LEN);
        assert_eq!(HELLO_LEN, 37);
        assert_eq!(&hello[..4], b"OVLD");
        assert_eq!(hello[4], 1);
        assert_eq!(&hello[5..], &[9; 32]);
    }

    #[test]
    fn different_keys_fail_on_both_sides() {
        let (i, r) = run(&psk(1), &psk(2));
        assert_eq!(i.unwrap_err(), HandshakeError::KeyMismatch);
        assert_eq!(r.unwrap_err(), HandshakeError::KeyMismatch);
        assert!(HandshakeError::KeyMismatch
            .to_string()
            .contains("different --key-file?"));
    }

    #[test]
    fn recorded_finished_does_not_replay_into_a_new_handshake() {
        // An attacker records a responder's FINISHED and plays it to a new initiator that
        // drew a different challenge: the keys differ, so it is refused.
        let key = psk(3);
        let mut i1 = Handshake::new(Side::Initiator, &key, [1; 32]);
        let mut r1 = Handshake::new(Side::Responder, &key, [2; 32]);
        i1.handle_hello(&r1.hello()).unwrap();
        let recorded = r1.handle_hello(&i1.hello()).unwrap();

        let mut i2 = Handshake::new(Side::Initiator, &key, [5; 32]);
        i2.handle_hello(&r1.hello()).unwrap();
        assert_eq!(
            i2.handle_finished(recorded).unwrap_err(),
            HandshakeError::KeyMismatch
        );
    }

    #[test]
    fn reflected_finished_is_refused() {
        // Sending our own FINISHED back at us fails: it is sealed with the other direction's key.
        let key = psk(3);
        let mut i = Handshake::new(Side::Initiator, &key, [1; 32]);
        let r = Handshake::new(Side::Responder, &key, [2; 32]);
        let ours = i.handle_hello(&r.hello()).unwrap();
        assert_eq!(
            i.handle_finished(ours).unwrap_err(),
            HandshakeError::KeyMismatch
        );
    }

    #[test]
    fn reflected_hello_is_refused() {
        let mut hs = Handshake::new(Side::Responder, &psk(1), [4; 32]);
        let own = hs.hello();
        assert_eq!(
            hs.handle_hello(&own).unwrap_err(),
            HandshakeError::SameChallenge
        );
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let good = Handshake::new(Side::Initiator, &psk(1), [1; 32]).hello();
        let fresh = || Handshake::new(Side::Responder, &psk(1), [2; 32]);

        let mut bad_magic = good.to_vec();
        bad_magic[0] = b'X';
        assert_eq!(
            fresh().handle_hello(&bad_magic).unwrap_err(),
            HandshakeError::BadMagic
        );

        let mut bad_version = good.to_vec();
        bad_version[4] = 2;
        assert_eq!(
            fresh().handle_hello(&bad_version).unwrap_err(),
            HandshakeError::BadVersion(2)
        );

        for len in [0, 3, 5, HELLO_LEN - 1, HELLO_LEN + 1] {
            let mut frame = good.to_vec();
            frame.resize(len, 0);
            assert_eq!(
                fresh().handle_hello(&frame).unwrap_err(),
                HandshakeError::BadLength {
                    got: len,
                    expected: HELLO_LEN
                },
                "len {len}"
            );
        }
    }

    #[test]
    fn messages_out_of_order_are_refused() {
        let peer = Handshake::new(Side::Initiator, &psk(1), [1; 32]).hello();
        let hs = Handshake::new(Side::Responder, &psk(1), [2; 32]);
        assert_eq!(
            hs.handle_finished(BytesMut::from(&[0u8; FINISHED_LEN][..]))
                .unwrap_err(),
            HandshakeError::OutOfOrder
        );
        let mut hs = Handshake::new(Side::Responder, &psk(1), [2; 32]);
        hs.handle_hello(&peer).unwrap();
        assert_eq!(
            hs.handle_hello(&peer).unwrap_err(),
            HandshakeError::OutOfOrder
        );
    }

    #[test]
    fn finished_with_wrong_length_is_refused() {
        let key = psk(1);
        let mut i = Handshake::new(Side::Initiator, &key, [1; 32]);
        let mut r = Handshake::new(Side::Responder, &key, [2; 32]);
        i.handle_hello(&r.hello()).unwrap();
        let mut fin = r.handle_hello(&i.hello()).unwrap();
        fin.truncate(FINISHED_LEN - 1);
        assert_eq!(
            i.handle_finished(fin).unwrap_err(),
            HandshakeError::BadLength {
                got: FINISHED_LEN - 1,
                expected: FINISHED_LEN
            }
        );
    }

    #[test]
    fn tampered_record_fails() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut buf = record(b"video chunk");
        seal.seal(&mut buf).unwrap();
        buf[3] ^= 0x01;
        assert_eq!(open.open(&mut buf), Err(RecordError::Authentication));

        // A flipped bit in the tag fails just the same.
        let ((mut seal, _), (_, mut open)) = pair();
        let mut buf = record(b"video chunk");
        seal.seal(&mut buf).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0x80;
        assert_eq!(open.open(&mut buf), Err(RecordError::Authentication));
    }

    #[test]
    fn replayed_record_fails() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut buf = record(b"once");
        seal.seal(&mut buf).unwrap();
        let copy = buf.clone();
        open.open(&mut buf).unwrap();
        let mut replay = copy;
        assert_eq!(open.open(&mut replay), Err(RecordError::Authentication));
    }

    #[test]
    fn reordered_records_fail() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut first = record(b"first");
        let mut second = record(b"second");
        seal.seal(&mut first).unwrap();
        seal.seal(&mut second).unwrap();
        assert_eq!(open.open(&mut second), Err(RecordError::Authentication));
    }

    #[test]
    fn dropped_record_fails_the_next_one() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut lost = record(b"lost");
        let mut next = record(b"next");
        seal.seal(&mut lost).unwrap();
        seal.seal(&mut next).unwrap();
        assert_eq!(open.open(&mut next), Err(RecordError::Authentication));
    }

    #[test]
    fn truncated_record_fails() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut buf = record(b"some video bytes");
        seal.seal(&mut buf).unwrap();
        buf.truncate(buf.len() - 1);
        assert_eq!(open.open(&mut buf), Err(RecordError::Authentication));

        let ((_, _), (_, mut open)) = pair();
        let mut short = BytesMut::from(&[0u8; TAG_LEN - 1][..]);
        assert_eq!(open.open(&mut short), Err(RecordError::TooShort(15)));
    }

    #[test]
    fn opener_stays_closed_after_a_failure() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut good = record(b"good");
        let mut bad = good.clone();
        bad.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(open.open(&mut bad), Err(RecordError::Authentication));
        seal.seal(&mut good).unwrap();
        assert_eq!(open.open(&mut good), Err(RecordError::Poisoned));
    }

    #[test]
    fn each_record_uses_a_new_nonce() {
        let ((mut seal, _), _) = pair();
        let mut a = record(b"same plaintext");
        let mut b = record(b"same plaintext");
        seal.seal(&mut a).unwrap();
        seal.seal(&mut b).unwrap();
        assert_ne!(a, b);
        assert_eq!(nonce_for(1).as_ref(), &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            nonce_for(0x0102_0304_0506_0708).as_ref(),
            &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn directions_use_different_keys() {
        // The same plaintext at the same sequence number differs per direction.
        let ((mut seal_i, _), (mut seal_r, _)) = pair();
        let mut a = record(b"x");
        let mut b = record(b"x");
        seal_i.seal(&mut a).unwrap();
        seal_r.seal(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn size_limits() {
        let ((mut seal, _), (_, mut open)) = pair();
        let mut max = BytesMut::zeroed(MAX_RECORD_PLAINTEXT);
        seal.seal(&mut max).unwrap();
        assert_eq!(max.len(), MAX_RECORD_LEN);
        open.open(&mut max).unwrap();
        assert_eq!(max.len(), MAX_RECORD_PLAINTEXT);

        let mut over = BytesMut::zeroed(MAX_RECORD_PLAINTEXT + 1);
        let before = seal.next_seq();
        assert!(matches!(
            seal.seal(&mut over),
            Err(RecordError::TooLong { .. })
        ));
        assert_eq!(over.len(), MAX_RECORD_PLAINTEXT + 1);
        assert_eq!(seal.next_seq(), before, "a refused record uses no sequence");

        let mut over = BytesMut::zeroed(MAX_RECORD_LEN + 1);
        assert!(matches!(
            open.open(&mut over),
            Err(RecordError::TooLong { .. })
        ));
    }

    #[test]
    fn sequence_exhaustion_is_an_error_not_a_wrap() {
        let ((mut seal, _), (_, mut open)) = pair();
        seal.next_seq = u64::MAX - 1;
        open.next_seq = u64::MAX - 1;
        let mut last = record(b"last");
        seal.seal(&mut last).unwrap();
        open.open(&mut last).unwrap();
        let mut more = record(b"more");
        assert_eq!(seal.seal(&mut more), Err(RecordError::SequenceExhausted));
        assert_eq!(&more[..], b"more");
        assert_eq!(
            open.open(&mut BytesMut::zeroed(TAG_LEN)),
            Err(RecordError::SequenceExhausted)
        );
    }

    proptest! {
        #[test]
        fn garbage_hello_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut hs = Handshake::new(Side::Responder, &psk(1), [2; 32]);
            let _ = hs.handle_hello(&frame);
        }

        #[test]
        fn garbage_finished_never_panics_nor_passes(
            frame in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            let mut hs = Handshake::new(Side::Responder, &psk(1), [2; 32]);
            let peer = Handshake::new(Side::Initiator, &psk(1), [1; 32]);
            hs.handle_hello(&peer.hello()).unwrap();
            prop_assert!(hs.handle_finished(BytesMut::from(&frame[..])).is_err());
        }

        #[test]
        fn garbage_records_never_panic_nor_pass(
            frame in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let (_, (_, mut open)) = pair();
            let mut buf = BytesMut::from(&frame[..]);
            prop_assert!(open.open(&mut buf).is_err());
        }

        #[test]
        fn records_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8)
        ) {
            let ((mut seal, _), (_, mut open)) = pair();
            for chunk in chunks {
                let mut buf = BytesMut::from(&chunk[..]);
                seal.seal(&mut buf).unwrap();
                open.open(&mut buf).unwrap();
                prop_assert_eq!(&buf[..], &chunk[..]);
            }
        }
    }
}
