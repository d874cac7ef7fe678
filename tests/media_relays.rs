//! Both relays deliver a live stream to a UDP socket, and what arrives decodes (ffprobe).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::media::*;
use common::TempDir;
use overlayd::media::relay::{Relay, RelayConfig, RelayKind};
use overlayd::media::source::{Source, SourceMode};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Mutex};

struct Received {
    bytes: Vec<u8>,
    datagrams: usize,
    first_after: Option<Duration>,
}

/// Stream a clip in real time through a relay of `kind` to a local UDP socket for `secs`.
async fn relay_for(
    kind: RelayKind,
    secs: f64,
    kill_child_midway: bool,
) -> (Received, overlayd::media::relay::RelayStats) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dest = socket.local_addr().unwrap();
    let relay = Arc::new(match kind {
        RelayKind::Native => Relay::native(dest, RelayConfig::default()).await.unwrap(),
        RelayKind::Ffmpeg => Relay::ffmpeg(dest, RelayConfig::default()).unwrap(),
    });
    let started = Instant::now();
    let received = Arc::new(Mutex::new(Received {
        bytes: Vec::new(),
        datagrams: 0,
        first_after: None,
    }));
    let done = Arc::new(AtomicBool::new(false));
    let rx_task = {
        let received = received.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
                {
                    let mut r = received.lock().await;
                    r.first_after.get_or_insert(started.elapsed());
                    r.bytes.extend_from_slice(&buf[..n]);
                    r.datagrams += 1;
                }
            }
        })
    };
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(clip("charlie.ts"), SourceMode::Paced, tx)
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut killed = None;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        relay.send(&chunk);
        if kill_child_midway
            && killed.is_none()
            && started.elapsed() > Duration::from_secs_f64(secs / 3.0)
        {
            let pid = relay.child_pid().expect("ffmpeg relay child");
            kill9(pid);
            killed = Some(pid);
        }
    }
    src.stop().await.unwrap();
    let stats = relay.stats();
    Arc::try_unwrap(relay).unwrap().stop().await;
    // Let the last datagrams land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    rx_task.await.unwrap();
    let r = Arc::try_unwrap(received).ok().unwrap().into_inner();
    (r, stats)
}

async fn check(kind: RelayKind) {
    let (r, stats) = relay_for(kind, 4.0, false).await;
    let dir = TempDir::new("relay");
    let file = dir.path("received.ts");
    std::fs::write(&file, &r.bytes).unwrap();
    let frames = video_frames(&file);
    eprintln!(
        "{kind:?} relay: {} bytes in {} datagrams, first after {:?}, {frames} frames decoded; {stats:?}",
        r.bytes.len(),
        r.datagrams,
        r.first_after
    );
    assert!(r.bytes.len() % 188 == 0);
    assert!(frames > 0, "{kind:?}: nothing decodes");
    assert!(
        frames >= 40,
        "{kind:?}: only {frames} frames from about 4 s of video"
    );
    assert_eq!(stats.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_relay_delivers_decodable_ts() {
    check(RelayKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_relay_delivers_decodable_ts() {
    check(RelayKind::Ffmpeg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_relay_restarts_a_killed_child() {
    let (r, stats) = relay_for(RelayKind::Ffmpeg, 6.0, true).await;
    assert!(stats.restarts >= 1, "{stats:?}");
    let dir = TempDir::new("relay-restart");
    let file = dir.path("received.ts");
    std::fs::write(&file, &r.bytes).unwrap();
    let frames = video_frames(&file);
    eprintln!(
        "ffmpeg relay with a restart: {} bytes, {frames} frames; {stats:?}",
        r.bytes.len()
    );
    assert!(frames >= 50, "{frames} frames");
}
