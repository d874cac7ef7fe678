//! Record opener after a real handshake: never panics, never accepts forged records.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use overlayd::crypto::{Handshake, Side};
use overlayd::keyfile::Psk;

fuzz_target!(|data: &[u8]| {
    let psk = Psk::from_bytes([7; 32]);
    let mut a = Handshake::new(Side::Initiator, &psk, [1; 32]);
    let mut b = Handshake::new(Side::Responder, &psk, [2; 32]);
    let fin_a = a.handle_hello(&b.hello()).unwrap();
    let fin_b = b.handle_hello(&a.hello()).unwrap();
    let (_seal_a, _open_a) = a.handle_finished(fin_b).unwrap();
    let (_seal_b, mut open_b) = b.handle_finished(fin_a).unwrap();
    let mut buf = BytesMut::from(data);
    assert!(
        open_b.open(&mut buf).is_err(),
        "a forged record was accepted"
    );
});
