//! In-process UDP edges for the client tests: an edge driver offering the video "v1", and the
//! stamped TS chunks the tests feed it (each packet carries its chunk's seq and its index, so a
//! recording tells what arrived in which order).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use overlayd::net::edge_driver::{self, EdgeDriverConfig, EdgeHandle, EdgeInput, Relay};
use overlayd::service::edge::EdgeConfig;
use overlayd::wire::client::{TS_PACKET_LEN, TS_SYNC};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An edge driver bound to `bind` with `service`, offering "v1".
pub async fn edge(bind: &str, service: EdgeConfig) -> EdgeHandle {
    let h = edge_driver::spawn(EdgeDriverConfig {
        bind: sa(bind),
        service,
        relay: Relay::default(),
    })
    .await
    .unwrap();
    h.input
        .send(EdgeInput::Videos(vec!["v1".into()]))
        .await
        .unwrap();
    h
}

/// A chunk of `packets` TS packets stamped with (seq, index) in their first bytes.
pub fn stamped_chunk(seq: u64, packets: usize) -> Bytes {
    let mut v = Vec::with_capacity(packets * TS_PACKET_LEN);
    for i in 0..packets {
        let mut p = [0u8; TS_PACKET_LEN];
        p[0] = TS_SYNC;
        p[1..9].copy_from_slice(&seq.to_be_bytes());
        p[9] = i as u8;
        v.extend_from_slice(&p);
    }
    Bytes::from(v)
}

/// Feeds "v1" (epoch 1) into an edge on the current runtime: a stamped chunk of 7 packets
/// every `every`, a keyframe every 25 chunks, waiting for room in the edge's queue.
pub fn feed_v1(input: mpsc::Sender<EdgeInput>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        for seq in 0u64.. {
            tick.tick().await;
            let _ = input
                .send(EdgeInput::Chunk {
                    video: "v1".into(),
                    epoch: 1,
                    seq,
                    keyframe: seq % 25 == 0,
                    payload: stamped_chunk(seq, 7),
                })
                .await;
        }
    })
}
