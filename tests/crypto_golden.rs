//! Wire compatibility of the record layer: the daemon's Sealer / Opener (ring's AES-256-GCM)
//! must produce exactly the records the first implementation (the `aes-gcm` crate) produced, so
//! daemons of either build interoperate. Two checks: fixed vectors recorded from the aes-gcm
//! build (handshake FINISHED and the first application records for a fixed key and challenges),
//! and a side-by-side comparison against the aes-gcm crate (a dev-dependency) for many sizes,
//! with the session key derived here from the documented HKDF recipe.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use bytes::BytesMut;
use hkdf::Hkdf;
use overlayd::crypto::{Handshake, Opener, Sealer, Side, TAG_LEN};
use overlayd::keyfile::Psk;
use sha2::{Digest, Sha256};

const PSK: [u8; 32] = [7; 32];
const CH_I: [u8; 32] = [1; 32];
const CH_R: [u8; 32] = [2; 32];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Both sides' handshakes with fixed challenges: (initiator FINISHED, initiator's sealer,
/// responder's opener).
fn fixed_session() -> (BytesMut, Sealer, Opener) {
    let psk = Psk::from_bytes(PSK);
    let mut i = Handshake::new(Side::Initiator, &psk, CH_I);
    let mut r = Handshake::new(Side::Responder, &psk, CH_R);
    let fin_i = i.handle_hello(&r.hello()).unwrap();
    let fin_r = r.handle_hello(&i.hello()).unwrap();
    let finished = fin_i.clone();
    let (seal, _) = i.handle_finished(fin_r).unwrap();
    let (_, open) = r.handle_finished(fin_i).unwrap();
    (finished, seal, open)
}

fn pattern(len: usize, salt: u8) -> BytesMut {
    let mut b = BytesMut::with_capacity(len + TAG_LEN);
    b.extend((0..len).map(|k| (k as u8).wrapping_mul(31).wrapping_add(salt)));
    b
}

/// The initiator->responder session key, derived as src/crypto.rs documents.
fn i2r_key() -> [u8; 32] {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(&CH_I);
    salt[32..].copy_from_slice(&CH_R);
    let hk = Hkdf::<Sha256>::new(Some(&salt), &PSK);
    let mut key = [0u8; 32];
    hk.expand(b"overlayd v1 initiator->responder", &mut key)
        .unwrap();
    key
}

fn aes_gcm_seal(cipher: &Aes256Gcm, seq: u64, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    let mut buf = plain.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut buf)
        .unwrap();
    buf.extend_from_slice(&tag);
    buf
}

#[test]
fn records_match_vectors_recorded_from_the_aes_gcm_build() {
    let (finished, mut seal, mut open) = fixed_session();
    assert_eq!(
        hex(&finished),
        "686d5e6cc7a5af6cfa66c36eec816f8fbabb882fab7691ef47077ebb37f19a176bbf349c9bf3d22bb46eee3b5c08afede93e2d2d5faacc5cfaa9121f2cc30e0583a02022a38d490e7c0be4",
        "FINISHED record changed: the wire format is no longer compatible"
    );
    let mut small = BytesMut::from(&b"overlayd golden record"[..]);
    seal.seal(&mut small).unwrap();
    assert_eq!(
        hex(&small),
        "126c09a380f71b277102871a30e1be07daf259c3ae6bd18624326f081e238a32956387482f8b"
    );
    let mut chunk = pattern(1316, 0x47);
    seal.seal(&mut chunk).unwrap();
    assert_eq!(
        hex(&Sha256::digest(&chunk)),
        "12d4d6120d7ae789b482dac66b620ec6cc6235544a40d999c1f79f5e265f4da2"
    );
    // The responder opens what was sealed, in order.
    open.open(&mut small).unwrap();
    assert_eq!(&small[..], b"overlayd golden record");
    open.open(&mut chunk).unwrap();
    assert_eq!(chunk, pattern(1316, 0x47));
}

#[test]
fn sealer_and_opener_agree_with_the_aes_gcm_crate_byte_for_byte() {
    let (_, mut seal, mut open) = fixed_session();
    let cipher = Aes256Gcm::new((&i2r_key()).into());
    let sizes = [
        0usize, 1, 15, 16, 17, 63, 64, 255, 1316, 4096, 16383, 16384, 65536, 262_144,
    ];
    // Sequence 0 was the FINISHED record; application records start at 1.
    let mut seq = 1u64;
    for (k, &len) in sizes.iter().enumerate() {
        let plain = pattern(len, k as u8);
        let expected = aes_gcm_seal(&cipher, seq, &plain);
        let mut ours = plain.clone();
        seal.seal(&mut ours).unwrap();
        assert_eq!(ours.len(), len + TAG_LEN);
        assert!(
            ours[..] == expected[..],
            "record of {len} bytes at seq {seq} differs from aes-gcm"
        );
        // Records sealed by aes-gcm open with our Opener.
        let mut theirs = BytesMut::from(&expected[..]);
        open.open(&mut theirs).unwrap();
        assert_eq!(theirs, plain, "record of {len} bytes did not round-trip");
        seq += 1;
    }
    // A record aes-gcm sealed for the wrong sequence number is refused.
    let mut wrong = BytesMut::from(&aes_gcm_seal(&cipher, seq + 1, b"late")[..]);
    assert!(open.open(&mut wrong).is_err());
}
