//! Bootstrap request decoder (JSON line from a device).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = overlayd::wire::bootstrap::decode_request(data);
});
