//! Edge <-> client datagram decoder: never panics, and whatever decodes re-encodes to the same
//! bytes (the encoding is canonical).
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use overlayd::wire::client::ClientMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMsg::decode(Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).expect("a decoded datagram re-encodes");
        assert_eq!(&out[..], data, "encoding is canonical");
    }
});
