//! Bootstrap reply decoder (JSON line from the bootstrapper).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = overlayd::wire::bootstrap::decode_reply(data);
});
