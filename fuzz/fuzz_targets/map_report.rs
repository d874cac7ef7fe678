//! Live-map reports: the decoder never panics, what decodes re-encodes to a report that decodes
//! to the same value (floats aside), and the bootstrapper's map model takes any sequence of decoded reports
//! (from several connections, some closed) without panicking.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use overlayd::observe::map::MapState;
use overlayd::topology;
use overlayd::wire::report::{decode_report, encode_report};

fuzz_target!(|data: &[u8]| {
    let topology = topology::parse(
        r#"{"S1": {"neighbours": ["10.0.0.2"], "addresses": ["10.0.0.1"]},
            "O1": {"neighbours": ["10.0.0.1"], "addresses": ["10.0.0.2"]}}"#,
        "fuzz.json",
    )
    .expect("fixed topology parses");
    let start = Instant::now();
    let mut map = MapState::new(Duration::from_secs(3));
    // Reports separated by newlines, each from connection (its index % 3).
    for (i, part) in data.split(|&b| b == b'\n').enumerate() {
        let now = start + Duration::from_millis(i as u64 * 700);
        let Ok(r) = decode_report(part) else {
            map.note_malformed();
            continue;
        };
        let mut again = decode_report(&encode_report(&r)).expect("an encoded report decodes");
        // Floats may come back one ulp off (serde_json parses fast, not exactly); the rest
        // must round-trip.
        let mut same = r.clone();
        for s in again.streams.iter_mut().chain(same.streams.iter_mut()) {
            s.last_gap_ms = None;
        }
        assert_eq!(again, same, "encode/decode round trip");
        let name = r.name.clone();
        map.ingest_from((i % 3) as u64, r, now);
        if i % 4 == 3 {
            map.note_closed(&name, (i % 3) as u64);
        }
        let _ = map.model(&topology, now);
    }
});
