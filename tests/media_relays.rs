//! Both relays deliver a live stream to a UDP socket, and what arrives decodes (ffprobe).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::media::*;
use common::prereq::{lacking, FFMPEG, FFPROBE};
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
    relay_from(kind, SourceMode::Paced, secs, kill_child_midway).await
}

/// As [`relay_for`], from a source in `mode`.
async fn relay_from(
    kind: RelayKind,
    mode: SourceMode,
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
    let src = Source::start(clip("charlie.ts"), mode, tx).await.unwrap();
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
    if lacking("native_relay_delivers_decodable_ts", &[FFPROBE]) {
        return;
    }
    check(RelayKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_relay_delivers_decodable_ts() {
    if lacking("ffmpeg_relay_delivers_decodable_ts", &[FFMPEG, FFPROBE]) {
        return;
    }
    check(RelayKind::Ffmpeg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_relay_restarts_a_killed_child() {
    if lacking("ffmpeg_relay_restarts_a_killed_child", &[FFMPEG, FFPROBE]) {
        return;
    }
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

/// The audio track's PID and its (sample rate, channels) in a TS file, from ffprobe; None
/// when the file has no audio track with both known.
fn audio_track(path: &std::path::Path) -> Option<(u16, (String, u64))> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a", "-show_entries"])
        .args(["stream=id,sample_rate,channels", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = v["streams"].as_array()?.first()?.clone();
    let pid = u16::from_str_radix(s["id"].as_str()?.trim_start_matches("0x"), 16).ok()?;
    let rate = s["sample_rate"].as_str()?.to_string();
    let channels = s["channels"].as_u64().filter(|&c| c > 0)?;
    Some((pid, (rate, channels)))
}

/// Packets starting a PES (payload_unit_start) on `pid`.
fn pes_starts(ts: &[u8], pid: u16) -> usize {
    ts.chunks_exact(188)
        .filter(|p| p[0] == 0x47 && u16::from_be_bytes([p[1] & 0x1f, p[2]]) == pid)
        .filter(|p| p[1] & 0x40 != 0)
        .count()
}

/// Audio frames (AAC: 1024 samples) in `secs` of a 48 kHz track, about.
fn aac_frames(secs: f64) -> f64 {
    secs * 48_000.0 / 1024.0
}

/// The ffmpeg relay's short probe still finds the sound (the clips carry one AAC frame per
/// PES), and its output keeps one frame per PES (no 0.5 s audio bursts), from the paced reader
/// and from the ffmpeg source alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_relay_keeps_the_sound_one_audio_frame_per_pes() {
    if lacking(
        "ffmpeg_relay_keeps_the_sound_one_audio_frame_per_pes",
        &[FFMPEG, FFPROBE],
    ) {
        return;
    }
    for mode in [SourceMode::Paced, SourceMode::Ffmpeg] {
        let (r, stats) = relay_from(RelayKind::Ffmpeg, mode, 4.0, false).await;
        let dir = TempDir::new("relay-audio");
        let file = dir.path("received.ts");
        std::fs::write(&file, &r.bytes).unwrap();
        let (pid, (rate, channels)) = audio_track(&file).unwrap_or_else(|| {
            panic!("{mode:?}: no audio track with rate and channels ({stats:?})")
        });
        assert_eq!((rate.as_str(), channels), ("48000", 1), "{mode:?}");
        let starts = pes_starts(&r.bytes, pid);
        // About 4 s of sound went through (minus the start): a 0.5 s PES would make ~8 starts.
        eprintln!(
            "{mode:?}: audio PID {pid:#x}: {starts} PES in {} bytes",
            r.bytes.len()
        );
        assert!(
            starts as f64 > aac_frames(2.0),
            "{mode:?}: {starts} audio PES: frames are bundled"
        );
        assert!(video_frames(&file) >= 40, "{mode:?}: video missing");
    }
}
