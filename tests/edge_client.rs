//! Edge and client drivers over real UDP sockets on loopback: edge death and switching, the
//! cookie check against spoofed requests, lease expiry of a vanished client, and (with
//! ffmpeg installed) a real clip whose recording decodes from its first frame.
//!
//! Each test binds its own 127.72.N.x addresses so tests can run in parallel.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::edge::{edge, sa, stamped_chunk};
use common::prereq::{lacking, FFMPEG, FFPROBE};
use overlayd::net::client_driver::{self, ClientCommand, ClientDriverConfig, ClientHandle};
use overlayd::net::edge_driver::{EdgeEvent, EdgeHandle, EdgeInput};
use overlayd::service::client::{ClientEvent, ClientService, ClientSettings, EdgeChoice};
use overlayd::service::edge::{EdgeConfig, EdgeCounters};
use overlayd::wire::client::{ClientMsg, Probe, VideoRequest, TS_PACKET_LEN};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

async fn client(bind: &str, edges: Vec<SocketAddr>) -> ClientHandle {
    let service = ClientService::new(
        ClientSettings {
            first_stream: rand_stream(),
            ..ClientSettings::default()
        },
        edges,
        EdgeChoice::Auto,
        Instant::now(),
    );
    client_driver::spawn(
        ClientDriverConfig {
            bind: sa(bind),
            media_queue: 16384,
        },
        service,
    )
    .await
    .unwrap()
}

fn rand_stream() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn stamps(recording: &[u8]) -> Vec<(u64, u8)> {
    recording
        .chunks(TS_PACKET_LEN)
        .map(|p| (u64::from_be_bytes(p[1..9].try_into().unwrap()), p[9]))
        .collect()
}

/// Feeds every edge the same stamped chunks, as the overlay would: one chunk every 20 ms, a
/// keyframe every 25 chunks. Returns a stopper.
fn feed(edges: Vec<mpsc::Sender<EdgeInput>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0u64.. {
            tick.tick().await;
            for e in &edges {
                // A dead edge's queue is closed: ignore it.
                let _ = e.try_send(EdgeInput::Chunk {
                    video: "v1".into(),
                    epoch: 7,
                    seq,
                    keyframe: seq % 25 == 0,
                    payload: stamped_chunk(seq, 10),
                });
            }
        }
    })
}

async fn collect_media(media: &mut mpsc::Receiver<Bytes>, into: &mut Vec<u8>, for_: Duration) {
    let end = tokio::time::Instant::now() + for_;
    while let Ok(Some(b)) = tokio::time::timeout_at(end, media.recv()).await {
        into.extend_from_slice(&b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_moves_to_the_other_edge_when_its_edge_dies_with_no_duplicates_or_reordering() {
    let a = edge("127.72.1.1:0", EdgeConfig::default()).await;
    let b = edge("127.72.1.2:0", EdgeConfig::default()).await;
    let feeder = feed(vec![a.input.clone(), b.input.clone()]);
    let mut c = client("127.72.1.10:0", vec![a.local_addr(), b.local_addr()]).await;
    c.commands.send(ClientCommand::Play("v1".into())).unwrap();

    let mut recording = Vec::new();
    collect_media(&mut c.media, &mut recording, Duration::from_millis(2000)).await;
    let first = c.snapshot.borrow().current.expect("an edge chosen");
    assert!(!recording.is_empty(), "no video before the kill");
    // Kill the edge in use (its socket closes; nothing more from it).
    let (dead, alive) = if first == a.local_addr() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    dead.abort();
    let killed_at = Instant::now();
    collect_media(&mut c.media, &mut recording, Duration::from_millis(3000)).await;
    let after = c.snapshot.borrow().clone();
    assert_eq!(after.current, Some(alive.local_addr()));

    let snapshot = c.shutdown().await;
    feeder.abort();
    let st = snapshot.stats;
    // The recording, checked independently: every packet once, in order.
    let s = stamps(&recording);
    for w in s.windows(2) {
        assert!(
            w[0] < w[1],
            "duplicate or reordering in the recording: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let seqs_after_kill = s.iter().filter(|(seq, _)| *seq as f64 * 0.02 > 2.5).count();
    assert!(
        seqs_after_kill > 500,
        "too little video after the switch: {seqs_after_kill}"
    );
    assert_eq!(st.edges.len(), 2, "{st:?}");
    assert_eq!(st.edges[0].edge, first);
    assert_eq!(st.edges[1].edge, alive.local_addr());
    assert_eq!((st.delivered_duplicates, st.delivered_reorderings), (0, 0));
    // One hole: the chunks of 20 ms lost until the switch (a few chunk gaps with the stream
    // rule; 1 s, the dead rule, at most).
    println!(
        "edge killed: {} chunks missing in {} hole(s), {} suspicion(s), peak gap {} ms",
        st.missing_chunks, st.gaps, st.suspicions, st.gap_peak_ms
    );
    assert!(st.gaps <= 1, "{st:?}");
    assert!(st.missing_chunks <= 90, "{st:?}");
    assert_eq!(snapshot.media_dropped, 0);
    let _ = killed_at;
}

/// A raw video request for "v1" on stream 1 with `cookie`, sent from `from` to `edge`.
async fn request_v1(from: &UdpSocket, cookie: u64, edge: SocketAddr) {
    let req = ClientMsg::VideoRequest(VideoRequest {
        cookie,
        stream: 1,
        flags: 0,
        video: "v1".into(),
    });
    from.send_to(&req.to_bytes().unwrap(), edge).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_valid_cookie_gets_no_video() {
    let mut e = edge("127.72.2.1:0", EdgeConfig::default()).await;
    let feeder = feed(vec![e.input.clone()]);
    let spoofer = UdpSocket::bind("127.72.2.66:0").await.unwrap();
    let mut buf = vec![0u8; 4096];
    for cookie in [0u64, 0xdead_beef] {
        request_v1(&spoofer, cookie, e.local_addr()).await;
    }
    // Only challenges come back (9 bytes each), never video.
    let end = tokio::time::Instant::now() + Duration::from_millis(800);
    let mut received = Vec::new();
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, spoofer.recv_from(&mut buf)).await {
        received.push(ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])).unwrap());
    }
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received
        .iter()
        .all(|m| matches!(m, ClientMsg::Challenge(_))));
    assert!(
        e.events.try_recv().is_err(),
        "a spoofed request subscribed the edge"
    );
    assert_eq!(e.counters.borrow().cookie_rejected, 2);
    assert_eq!(e.counters.borrow().video_datagrams_out, 0);

    // Echoing the cookie is what it takes: then video flows.
    let ClientMsg::Challenge(ch) = received[0] else {
        unreachable!()
    };
    request_v1(&spoofer, ch.cookie, e.local_addr()).await;
    let mut video = 0;
    let end = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, spoofer.recv_from(&mut buf)).await {
        if matches!(
            ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])),
            Ok(ClientMsg::VideoData(_))
        ) {
            video += 1;
        }
    }
    assert!(video > 0);
    assert_eq!(
        e.events.recv().await,
        Some(EdgeEvent::Subscribe { video: "v1".into() })
    );
    // A probe is answered with an ack of the same size (no amplification).
    let probe = ClientMsg::Probe(Probe { token: 5 }).to_bytes().unwrap();
    let other = UdpSocket::bind("127.72.2.67:0").await.unwrap();
    other.send_to(&probe, e.local_addr()).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), other.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, probe.len());
    // Garbage is counted, not answered.
    other.send_to(b"\x42garbage", e.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_counters(&e, |k| k.malformed_unknown_tag == 1).await;
    feeder.abort();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_expired_by_lease_and_unsubscribe_comes_out() {
    let mut e = edge(
        "127.72.3.1:0",
        EdgeConfig {
            lease: Duration::from_millis(800),
            ..EdgeConfig::default()
        },
    )
    .await;
    let feeder = feed(vec![e.input.clone()]);
    let mut c = client("127.72.3.10:0", vec![e.local_addr()]).await;
    c.commands.send(ClientCommand::Play("v1".into())).unwrap();
    let sub = tokio::time::timeout(Duration::from_secs(5), e.events.recv())
        .await
        .unwrap();
    assert_eq!(sub, Some(EdgeEvent::Subscribe { video: "v1".into() }));
    let mut rec = Vec::new();
    collect_media(&mut c.media, &mut rec, Duration::from_millis(1500)).await;
    assert!(!rec.is_empty());
    // Keepalives held the session well past one lease.
    assert_eq!(e.counters.borrow().sessions_expired, 0);
    c.abort(); // no cancel: the client just disappears
    let gone = Instant::now();
    let unsub = tokio::time::timeout(Duration::from_secs(5), e.events.recv())
        .await
        .unwrap();
    assert_eq!(unsub, Some(EdgeEvent::Unsubscribe { video: "v1".into() }));
    assert!(gone.elapsed() < Duration::from_millis(2000));
    wait_counters(&e, |k| k.sessions_expired == 1).await;
    feeder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_at_once_and_the_video_list_is_served() {
    let mut e = edge("127.72.4.1:0", EdgeConfig::default()).await;
    let mut c = client("127.72.4.10:0", vec![e.local_addr()]).await;
    c.commands.send(ClientCommand::List).unwrap();
    let list = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.events.recv()).await {
            Ok(Some(ClientEvent::VideoList { videos, .. })) => break videos,
            Ok(Some(_)) => continue,
            other => panic!("no list: {other:?}"),
        }
    };
    assert_eq!(list, ["v1"]);
    c.commands.send(ClientCommand::Play("v1".into())).unwrap();
    let sub = tokio::time::timeout(Duration::from_secs(5), e.events.recv()).await;
    assert_eq!(
        sub.unwrap(),
        Some(EdgeEvent::Subscribe { video: "v1".into() })
    );
    let _ = c.shutdown().await;
    let unsub = tokio::time::timeout(Duration::from_millis(500), e.events.recv()).await;
    assert_eq!(
        unsub.unwrap(),
        Some(EdgeEvent::Unsubscribe { video: "v1".into() })
    );
    wait_counters(&e, |k| k.sessions_cancelled == 1).await;
}

/// With ffmpeg and ffprobe installed: a real H.264 clip cut into chunks (keyframe chunks start
/// on a random access point), a client joining mid-stream, and a recording that decodes from
/// its very first frame thanks to the GOP cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_mid_stream_records_a_clip_that_decodes_from_a_keyframe() {
    if lacking(
        "a_client_joining_mid_stream_records_a_clip_that_decodes_from_a_keyframe",
        &[FFMPEG, FFPROBE],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overlayd-edge-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip = dir.join("clip.ts");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=320x240:rate=25")
        .args([
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-mpegts_flags",
            "+pat_pmt_at_frames",
            "-f",
            "mpegts",
        ])
        .arg(&clip)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not make the test clip");
    let ts = std::fs::read(&clip).unwrap();
    let chunks = chunk_at_keyframes(&ts);
    assert!(chunks.iter().filter(|(k, _)| *k).count() >= 3);

    let e = edge("127.72.5.1:0", EdgeConfig::default()).await;
    let input = e.input.clone();
    let n = chunks.len() as u64;
    // 4 s of video over about 4 s.
    let per_chunk = Duration::from_secs(4) / n as u32;
    let feeder = tokio::spawn(async move {
        for (seq, (keyframe, payload)) in chunks.into_iter().enumerate() {
            input
                .send(EdgeInput::Chunk {
                    video: "v1".into(),
                    epoch: 1,
                    seq: seq as u64,
                    keyframe,
                    payload,
                })
                .await
                .unwrap();
            tokio::time::sleep(per_chunk).await;
        }
    });
    // Someone is already watching, so the stream (and the GOP cache) runs.
    let early = client("127.72.5.10:0", vec![e.local_addr()]).await;
    early
        .commands
        .send(ClientCommand::Play("v1".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut late = client("127.72.5.11:0", vec![e.local_addr()]).await;
    late.commands
        .send(ClientCommand::Play("v1".into()))
        .unwrap();
    let mut rec = Vec::new();
    collect_media(&mut late.media, &mut rec, Duration::from_millis(3500)).await;
    feeder.await.unwrap();
    let out = dir.join("late.ts");
    std::fs::write(&out, &rec).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=key_frame", "-of", "csv=p=0"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    let frames: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(frames.len() > 25, "only {} frames decoded", frames.len());
    assert!(
        frames[0].starts_with('1'),
        "first frame is not a keyframe: {frames:?}"
    );
    drop(early);
}

/// The counters are published right after the events of the same step: wait for them.
async fn wait_counters(e: &EdgeHandle, ok: impl Fn(&EdgeCounters) -> bool) {
    let mut rx = e.counters.clone();
    let res = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|k| ok(k))).await;
    assert!(res.is_ok(), "counters: {:?}", *e.counters.borrow());
}

/// Cuts a TS file into chunks of up to 7 packets. A packet with the random access indicator
/// set (a keyframe) starts a keyframe chunk, together with the tables (SDT, PAT, PMT) sent
/// just before it, so a player starting on that chunk can decode at once.
fn chunk_at_keyframes(ts: &[u8]) -> Vec<(bool, Bytes)> {
    let pid = |p: &[u8]| (usize::from(p[1] & 0x1f) << 8) | usize::from(p[2]);
    let mut chunks: Vec<(bool, Vec<&[u8]>)> = Vec::new();
    for p in ts.chunks_exact(TS_PACKET_LEN) {
        let has_adaptation = p[3] & 0x20 != 0;
        let rai = has_adaptation && p[4] > 0 && p[5] & 0x40 != 0;
        if rai {
            let mut tables = Vec::new();
            if let Some((_, last)) = chunks.last_mut() {
                while last
                    .last()
                    .is_some_and(|q| matches!(pid(q), 0x00 | 0x11 | 0x1000))
                {
                    tables.insert(0, last.pop().unwrap());
                }
            }
            chunks.retain(|(_, c)| !c.is_empty());
            tables.push(p);
            chunks.push((true, tables));
            continue;
        }
        if chunks.last().map_or(true, |(_, c)| c.len() >= 7) {
            chunks.push((false, Vec::new()));
        }
        chunks.last_mut().unwrap().1.push(p);
    }
    chunks
        .into_iter()
        .map(|(k, c)| (k, Bytes::from(c.concat())))
        .collect()
}
