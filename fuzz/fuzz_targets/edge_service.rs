//! The edge's client service driven by a hostile sequence of datagrams, chunks and timer
//! expiries from a handful of addresses: never panics, and its limits hold (sessions, sources).
//!
//! The input is a list of operations `[op, addr, len, body...]`. Datagrams of the kinds that
//! carry a cookie can get a valid cookie patched in (op 3), so the fuzzer reaches the states
//! behind the cookie check (sessions, leases, GOP cache) instead of only the challenge path.
#![no_main]
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use overlayd::service::edge::{EdgeConfig, EdgeService};

const MAX_SESSIONS: usize = 4;

mod ops;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let cfg = EdgeConfig {
        cookie_secret: [9; 32],
        max_sessions: MAX_SESSIONS,
        max_sources: 6,
        gop_cache_bytes: 188 * 20,
        ..EdgeConfig::default()
    };
    let mut edge = EdgeService::new(cfg, now);
    edge.set_videos(now, vec!["alpha".into(), "bravo".into()]);
    let mut seq = 0u64;
    for (op, who, body) in ops::ops(data) {
        let from = SocketAddr::from(([10, 0, 0, who % 8], 7000 + u16::from(who / 8 % 4)));
        // The edge address the datagram went to: one of two, as on a multi-homed edge.
        let local = Some(IpAddr::from([10, 0, 1, 1 + (who >> 7)]));
        match op % 5 {
            0 => edge.handle_datagram(now, from, local, Bytes::copy_from_slice(body)),
            1 => {
                now += Duration::from_millis(u64::from(who) * 40);
                edge.handle_timeout(now);
            }
            2 => {
                // A chunk from the overlay: whole or partial TS packets, any flags.
                seq += u64::from(who % 3);
                let video = if who % 2 == 0 { "alpha" } else { "bravo" };
                let mut payload = body.to_vec();
                payload.resize(188 * usize::from(who % 4), 0x47);
                edge.handle_chunk(
                    now,
                    video,
                    u64::from(op / 5),
                    seq,
                    who & 4 != 0,
                    payload.into(),
                );
            }
            3 => {
                let mut d = body.to_vec();
                if d.len() >= 9 && matches!(d[0], 0x03 | 0x05 | 0x06 | 0x07) {
                    d[1..9].copy_from_slice(&edge.cookie_for(from, now).to_be_bytes());
                }
                edge.handle_datagram(now, from, local, d.into());
            }
            _ => edge.set_videos(
                now,
                if who % 2 == 0 {
                    vec!["alpha".into()]
                } else {
                    vec![]
                },
            ),
        }
        while edge.poll_output().is_some() {}
        assert!(
            edge.sessions().count() <= MAX_SESSIONS,
            "session limit broken"
        );
    }
});
