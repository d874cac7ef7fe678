//! Topology file parser and checker: never panic, whatever the file holds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = overlayd::topology::parse_bytes(data, "fuzz.json") {
        let _ = overlayd::topology::check(&t);
    }
});
