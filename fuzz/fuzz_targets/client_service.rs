//! The client's service fed hostile datagrams (from its edges and from strangers) and timer
//! expiries: never panics, whatever arrives and in whatever order.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use overlayd::service::client::{ClientService, ClientSettings, EdgeChoice};

mod ops;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let edges: Vec<SocketAddr> = vec![
        SocketAddr::from(([10, 0, 0, 1], 7702)),
        SocketAddr::from(([10, 0, 0, 2], 7702)),
    ];
    let mut client = ClientService::new(ClientSettings::default(), edges, EdgeChoice::Auto, now);
    client.play(now, "alpha");
    for (op, who, body) in ops::ops(data) {
        let from = SocketAddr::from(([10, 0, 0, who % 4], 7702 - u16::from(who / 4 % 2)));
        match op % 4 {
            0 | 1 => client.handle_datagram(now, from, Bytes::copy_from_slice(body)),
            2 => {
                now += Duration::from_millis(u64::from(who) * 30);
                client.handle_timeout(now);
            }
            _ => match who % 3 {
                0 => client.stop(now),
                1 => {
                    client.play(now, "bravo");
                }
                _ => client.request_list(now),
            },
        }
        while client.poll_output().is_some() {}
        let _ = client.stats(now);
    }
});
