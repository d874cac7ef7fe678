//! Handshake HELLO parser: never panics on any first frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::crypto::{Handshake, Side};
use overlayd::keyfile::Psk;

fuzz_target!(|data: &[u8]| {
    let psk = Psk::from_bytes([7; 32]);
    let mut hs = Handshake::new(Side::Responder, &psk, [1; 32]);
    let _ = hs.handle_hello(data);
});
