//! Slow consumers must not slow their siblings or their parent (issue 8, item 4).
//!
//! (a) Overlay: node O1 feeds two children with the same video, an honest reader and a
//! "sloth" that completes the handshake, asks for the video and never reads again (with a
//! small receive buffer so its socket fills in seconds). O1's media queue for the sloth fills
//! and drops with the per-neighbour counter, the honest child gets every chunk, O1's parent
//! link sees no drop, and the sloth's link is closed once its writer made no progress for
//! `WRITE_STALL`. (b) Edge: see `tbf_limited_client_loses_alone` (network namespaces).
//!
//! Addresses: 127.76.10.x (a); netns `ovh-*` with 10.76.10.0/24 (b).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::consumer::{analyse, Consumer};
use common::veth::{sh, VethHost};
use common::{pair, some_video};
use overlayd::crypto::Side;
use overlayd::keyfile::Psk;
use overlayd::net::control::http_get;
use overlayd::net::node_driver::WRITE_STALL;
use overlayd::net::transport;
use overlayd::observe::snapshot::NodeStatus;
use overlayd::wire::overlay::{
    Hello, OverlayMsg, OverlayRole, Ping, VideoRequest, OVERLAY_VERSION,
};

const WAIT: Duration = Duration::from_secs(20);

fn status(ip: &str) -> NodeStatus {
    let addr = format!("{ip}:7704").parse().unwrap();
    let (code, body) = http_get(addr, "/status", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not a status ({e}): {body}"))
}

/// A child that handshakes, asks for `video`, then never reads. Dropping it closes the socket.
struct Sloth {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sloth {
    fn start(addr: SocketAddr, psk: Psk, video: &str) -> Sloth {
        let video = video.to_string();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let held = rt.block_on(async {
                let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
                // A small window: the daemon's writes stall after a few hundred KiB at most.
                sock.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
                let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
                let conn = transport::handshake(stream, Side::Initiator, &psk, WAIT)
                    .await
                    .map_err(|e| e.to_string())?;
                let (r, mut w) = conn.into_split();
                for msg in [
                    OverlayMsg::Hello(Hello {
                        name: "Sloth".into(),
                        role: OverlayRole::Node,
                        version: OVERLAY_VERSION,
                        listen_port: 1,
                    }),
                    OverlayMsg::VideoRequest(VideoRequest {
                        video: video.clone(),
                        path: vec!["Sloth".into()],
                        has: None,
                    }),
                ] {
                    let mut buf = BytesMut::new();
                    msg.encode(&mut buf).map_err(|e| e.to_string())?;
                    w.send(buf).await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>((r, w))
            });
            let ok = held.as_ref().map(|_| ()).map_err(|e| e.clone());
            let _ = ready_tx.send(ok);
            let Ok((reader, mut writer)) = held else {
                return;
            };
            // Read nothing, but stay alive: a ping every 200 ms (any frame counts as life), so
            // only the stalled writer can tell O1 that this child is gone.
            rt.block_on(async {
                let mut token = 0u64;
                while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                    token += 1;
                    let mut buf = BytesMut::new();
                    OverlayMsg::Ping(Ping { token }).encode(&mut buf).unwrap();
                    if writer.send(buf).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let _ = stop_rx.recv();
            drop(reader);
        });
        ready_rx
            .recv_timeout(WAIT)
            .expect("sloth never got ready")
            .expect("sloth handshake");
        Sloth {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Sloth {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_child_that_stops_reading_loses_alone() {
    let ip = |i: u8| format!("127.76.10.{i}");
    let overlay = pair::start("harden-slow", "127.76.10", WAIT);
    let o1 = &overlay.o1;
    let psk = overlayd::keyfile::load(&overlay.key).unwrap().psk;
    let addr: SocketAddr = format!("{}:7701", ip(2)).parse().unwrap();
    let video = some_video();

    let watcher = Consumer::start(addr, psk.clone(), "Watcher", &video);
    assert!(
        watcher.wait_chunks(20, WAIT),
        "no stream for the honest child"
    );
    let sloth = Sloth::start(addr, psk, &video);
    let t0 = Instant::now();
    let from = watcher.received().len();

    // The sloth's queue overflows first, then its stalled writer closes the link.
    let closed = o1.wait_for(
        &["neighbour down", "Sloth", "stopped reading"],
        WAIT + WRITE_STALL,
    );
    let closed_after = t0.elapsed();
    // The status is republished every 250 ms: wait for the one that saw the close.
    let deadline = Instant::now() + WAIT;
    let o1s = loop {
        let s = status(&ip(2));
        let seen = s
            .driver
            .as_ref()
            .is_some_and(|d| d.links_closed.contains_key("write_stalled"));
        if seen || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let d1 = o1s.driver.clone().unwrap();
    let sloth_drops = d1
        .media_dropped_by_neighbour
        .get("Sloth")
        .copied()
        .unwrap_or(0);
    let watcher_drops = d1
        .media_dropped_by_neighbour
        .get("Watcher")
        .copied()
        .unwrap_or(0);
    let sloth_out: u64 = o1s
        .links
        .iter()
        .filter(|l| l.neighbour == "Sloth")
        .map(|l| l.chunks_out)
        .sum();

    // The honest child keeps going after the sloth is gone.
    let n = watcher.received().len();
    assert!(
        watcher.wait_chunks(n + 30, WAIT),
        "the stream stopped after the close"
    );
    let rx = watcher.received();
    let d = analyse(&rx[from.saturating_sub(1)..]);
    let secs = t0.elapsed().as_secs_f64();
    let s1d = status(&ip(1)).driver.unwrap();
    println!(
        "sloth: O1 sent it {sloth_out} chunks, dropped {sloth_drops} (media queue full), link closed after {:.1} s: {closed}",
        closed_after.as_secs_f64()
    );
    println!(
        "watcher in {secs:.1} s: {d} ({:.1}/s), drops {watcher_drops}",
        d.chunks as f64 / secs
    );
    println!(
        "O1 links closed {:?}; S1 media drops {:?}",
        d1.links_closed, s1d.media_dropped_by_neighbour
    );
    assert!(sloth_drops > 0, "the sloth's queue never dropped: {d1:#?}");
    assert_eq!(watcher_drops, 0, "the honest child lost chunks at O1");
    assert_eq!(d.missing, 0, "the honest child missed chunks");
    assert_eq!(d.duplicates, 0);
    assert_eq!(d1.links_closed.get("write_stalled"), Some(&1), "{d1:#?}");
    assert!(
        s1d.media_dropped_by_neighbour.is_empty(),
        "the parent dropped chunks for O1: {s1d:#?}"
    );
    assert!(o1.matching(&["neighbour down", "S1"]).is_empty());
    drop(sloth);
}

// ---- (b) a UDP client behind a tbf-limited link ----

/// A namespace behind a veth pair whose root side is rate-limited; deleted on drop.
struct SlowLink {
    host: VethHost,
}

impl SlowLink {
    /// `ovh-slow<N>` with 10.76.10.2/24 inside, 10.76.10.1/24 on the root side, and a tbf of
    /// `rate` on the root side (the direction towards the namespace). None when a step failed.
    fn new(rate: &str) -> Option<SlowLink> {
        let n = std::process::id() % 100_000;
        let host = VethHost::new(
            &format!("ovh-slow{n}"),
            &format!("ovh{n}a"),
            &format!("ovh{n}b"),
            "10.76.10.1/24",
            &["10.76.10.2/24"],
        )?;
        let ok = sh(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &host.root_if,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "4kb",
            "latency",
            "100ms",
        ]);
        ok.then_some(SlowLink { host })
    }

    /// (packets sent, packets dropped) by the tbf, from `tc -s`.
    fn tbf_counters(&self) -> (u64, u64) {
        let out = std::process::Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", &self.host.root_if])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let after = |key: &str| -> u64 {
            text.split(key)
                .nth(1)
                .and_then(|r| {
                    r.split(|c: char| !c.is_ascii_digit())
                        .find(|t| !t.is_empty())
                })
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)
        };
        (after(" bytes "), after("dropped "))
    }
}

mod udp {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use overlayd::net::client_driver::{self, ClientCommand, ClientDriverConfig};
    use overlayd::service::client::{ClientService, ClientSettings, ClientStats, EdgeChoice};

    /// A real client pinned to `edge` that plays "v1" for `for_` and returns its statistics.
    pub async fn watch(bind: SocketAddr, edge: SocketAddr, for_: Duration) -> ClientStats {
        let service = ClientService::new(
            ClientSettings::default(),
            vec![edge],
            EdgeChoice::Pinned(edge),
            Instant::now(),
        );
        let mut c = client_driver::spawn(
            ClientDriverConfig {
                bind,
                media_queue: 16384,
            },
            service,
        )
        .await
        .unwrap();
        c.commands.send(ClientCommand::Play("v1".into())).unwrap();
        let end = tokio::time::Instant::now() + for_;
        while tokio::time::timeout_at(end, c.media.recv()).await.is_ok() {}
        c.shutdown().await.stats
    }
}

#[test]
fn tbf_limited_client_loses_alone() {
    use crate::common::edge::{edge, feed_v1};
    use crate::common::prereq::{Need, IP, TC};
    use overlayd::service::edge::EdgeConfig;

    const WATCH: Duration = Duration::from_secs(5);
    const CHUNK_EVERY: Duration = Duration::from_millis(25);
    if crate::common::prereq::lacking("tbf_limited_client_loses_alone", &[Need::Root, IP, TC]) {
        return;
    }
    let link = SlowLink::new("200kbit").expect("the tbf-limited veth host, as root (see above)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let edge_addr: SocketAddr = "10.76.10.1:7702".parse().unwrap();
    let e = rt.block_on(edge(&edge_addr.to_string(), EdgeConfig::default()));
    // 40 chunks/s of 7 TS packets: ~430 kbit/s of datagrams, twice what the tbf lets through.
    let feeder = {
        let _runtime = rt.enter();
        feed_v1(e.input.clone(), CHUNK_EVERY)
    };

    // The slow client runs in the namespace: its thread joins it before making sockets.
    let slow = link
        .host
        .block_on_inside(move || udp::watch("10.76.10.2:0".parse().unwrap(), edge_addr, WATCH));
    let mut sessions_rx = e.sessions.clone();
    let sampler = rt.spawn(async move {
        tokio::time::sleep(WATCH - Duration::from_secs(1)).await;
        sessions_rx.borrow_and_update().clone()
    });
    let normal = rt.block_on(udp::watch(
        "127.76.10.50:0".parse().unwrap(),
        edge_addr,
        WATCH,
    ));
    let slow = slow.join().unwrap();
    let (tbf_sent, tbf_dropped) = link.tbf_counters();
    let sessions = rt.block_on(sampler).unwrap();
    let sink_dropped = e
        .driver_counters
        .video_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    feeder.abort();
    rt.block_on(e.shutdown());

    let secs = WATCH.as_secs_f64();
    let fed = secs / CHUNK_EVERY.as_secs_f64();
    println!(
        "normal client: {} chunks ({:.1}/s of {:.0}/s fed), missing {}, gaps {}",
        normal.chunks,
        normal.chunks as f64 / secs,
        fed / secs,
        normal.missing_chunks,
        normal.gaps
    );
    println!(
        "tbf client (200 kbit/s): {} chunks ({:.1}/s), missing {}, gaps {}",
        slow.chunks,
        slow.chunks as f64 / secs,
        slow.missing_chunks,
        slow.gaps
    );
    println!(
        "edge: the tbf qdisc on its link sent {tbf_sent} packets, dropped {tbf_dropped}; edge sink drops {sink_dropped}; datagrams sent per session 1 s before the end {:?}",
        sessions
            .iter()
            .map(|s| (s.client.to_string(), s.datagrams_sent))
            .collect::<Vec<_>>()
    );
    assert!(
        normal.chunks as f64 > fed * 0.5,
        "the normal client got too little: {normal:?}"
    );
    assert_eq!(
        (normal.missing_chunks, normal.gaps),
        (0, 0),
        "the normal client lost chunks: {normal:?}"
    );
    assert!(slow.chunks > 0, "nothing reached the slow client: {slow:?}");
    assert!(
        slow.missing_chunks > 0 && tbf_dropped > 0,
        "the 200 kbit/s link did not limit the client: {slow:?}, tbf dropped {tbf_dropped}"
    );
}
