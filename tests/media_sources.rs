//! Live sources with real ffmpeg: real-time rate, whole TS packets, looping, restart of a
//! killed child, and no child outliving its parent (even after kill -9).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::media::*;
use common::prereq::{lacking, FFMPEG, FFPROBE};
use common::TempDir;
use overlayd::media::source::{Source, SourceError, SourceMode};
use overlayd::media::ts::{Chunk, PACKET_LEN, SYNC_BYTE};
use tokio::sync::mpsc;

/// Collect chunks for `secs` seconds (after the first chunk arrives).
async fn collect(rx: &mut mpsc::Receiver<Chunk>, secs: f64) -> Vec<Chunk> {
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no chunk within 10 s")
        .expect("source ended");
    let start = Instant::now();
    let mut out = vec![first];
    let end = start + Duration::from_secs_f64(secs);
    while let Ok(Some(c)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        out.push(c);
    }
    out
}

fn assert_whole_packets(chunks: &[Chunk]) {
    for c in chunks {
        assert!(!c.payload.is_empty() && c.payload.len() % PACKET_LEN == 0);
        assert!(c.payload.chunks(PACKET_LEN).all(|p| p[0] == SYNC_BYTE));
    }
}

fn file_bitrate(path: &Path) -> f64 {
    let v = ffprobe(path);
    let dur: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    std::fs::metadata(path).unwrap().len() as f64 * 8.0 / dur
}

async fn real_time_rate(mode: SourceMode) {
    let path = clip("alpha.ts");
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(&path, mode, tx).await.unwrap();
    let secs = 4.0;
    let chunks = collect(&mut rx, secs).await;
    assert_whole_packets(&chunks);
    let bytes: usize = chunks.iter().map(|c| c.payload.len()).sum();
    let rate = bytes as f64 * 8.0 / secs;
    let ratio = rate / file_bitrate(&path);
    eprintln!("{mode:?} source: {:.0} kbit/s over {secs} s = {ratio:.2}x the file's bitrate, {} chunks, {} keyframe chunks", rate / 1e3, chunks.len(), chunks.iter().filter(|c| c.keyframe).count());
    assert!(
        (0.5..2.0).contains(&ratio),
        "{mode:?}: {ratio:.2}x real time"
    );
    assert!(chunks.iter().any(|c| c.keyframe));
    src.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_source_runs_in_real_time() {
    if lacking("ffmpeg_source_runs_in_real_time", &[FFMPEG, FFPROBE]) {
        return;
    }
    real_time_rate(SourceMode::Ffmpeg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_source_runs_in_real_time() {
    if lacking("paced_source_runs_in_real_time", &[FFPROBE]) {
        return;
    }
    real_time_rate(SourceMode::Paced).await;
}

async fn loops(mode: SourceMode) {
    let dir = TempDir::new("loop");
    let path = dir.path("short.ts");
    make_short_clip(&path, 1);
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(&path, mode, tx).await.unwrap();
    let chunks = collect(&mut rx, 3.5).await;
    src.stop().await.unwrap();
    assert_whole_packets(&chunks);
    let bytes: usize = chunks.iter().map(|c| c.payload.len()).sum();
    eprintln!("{mode:?} source: {bytes} bytes in 3.5 s from a {size}-byte 1 s clip");
    assert!(bytes >= 2 * size, "{mode:?}: {bytes} bytes, clip {size}");
    // The looped stream decodes as one stream: about 25 frames per second received.
    let rec = dir.path("rec.ts");
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.payload.to_vec()).collect();
    std::fs::write(&rec, all).unwrap();
    let frames = video_frames(&rec);
    eprintln!("{mode:?} source: recording of the loop decodes to {frames} frames");
    assert!(frames >= 50, "{mode:?}: {frames} frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_source_loops_a_short_clip() {
    if lacking("ffmpeg_source_loops_a_short_clip", &[FFMPEG, FFPROBE]) {
        return;
    }
    loops(SourceMode::Ffmpeg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_source_loops_a_short_clip() {
    if lacking("paced_source_loops_a_short_clip", &[FFMPEG, FFPROBE]) {
        return;
    }
    loops(SourceMode::Paced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ffmpeg_child_is_restarted() {
    if lacking("killed_ffmpeg_child_is_restarted", &[FFMPEG, FFPROBE]) {
        return;
    }
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(clip("bravo.ts"), SourceMode::Ffmpeg, tx)
        .await
        .unwrap();
    collect(&mut rx, 0.5).await;
    let old = src.child_pid().expect("a running child");
    kill9(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        // Keep draining so the source is never blocked on a full channel.
        while rx.try_recv().is_ok() {}
        if let Some(p) = src.child_pid().filter(|&p| p != old) {
            break p;
        }
        assert!(Instant::now() < deadline, "no new child after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = collect(&mut rx, 1.0).await;
    assert!(after.len() > 5, "chunks flow again");
    assert!(!alive(old));
    assert!(src.stats().restarts >= 1);
    src.stop().await.unwrap();
    // stop() kills and reaps the child.
    assert!(!alive(new), "child {new} survived stop()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_the_child() {
    if lacking("dropping_the_handle_kills_the_child", &[FFMPEG, FFPROBE]) {
        return;
    }
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(clip("alpha.ts"), SourceMode::Ffmpeg, tx)
        .await
        .unwrap();
    collect(&mut rx, 0.2).await;
    let pid = src.child_pid().unwrap();
    drop(src);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "child {pid} survived the drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unplayable_files_are_refused() {
    if lacking("unplayable_files_are_refused", &[FFPROBE]) {
        return;
    }
    let dir = TempDir::new("unplayable");
    let text = dir.path("notes.mp4");
    std::fs::write(&text, "not a video").unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let e = Source::start(&text, SourceMode::Ffmpeg, tx.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Probe { .. }), "{e}");
    let e = Source::start(&text, SourceMode::Paced, tx.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::NotTs(_)), "{e}");
    let e = Source::start(dir.path("missing.ts"), SourceMode::Paced, tx)
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::Io { .. }), "{e}");
}

const HELPER_ENV: &str = "OVERLAYD_MEDIA_HELPER";

/// The helper process of `ffmpeg_child_dies_with_its_parent` (that same test run again, with
/// [`HELPER_ENV`] set): starts a source, prints its ffmpeg pid and waits to be killed.
fn helper_source_process() {
    // A current-thread runtime, as the #[tokio::test] this helper used to be.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(helper_source());
}

async fn helper_source() {
    let (tx, mut rx) = mpsc::channel(64);
    let src = Source::start(clip("alpha.ts"), SourceMode::Ffmpeg, tx)
        .await
        .unwrap();
    rx.recv().await.unwrap();
    // A child with no pipe to us: only PR_SET_PDEATHSIG can end it when we die (ffmpeg also
    // dies of its broken stdout pipe, so it alone would not prove that).
    let sleeper = overlayd::media::child::command("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    println!("SLEEP {}", sleeper.id().unwrap());
    println!("PID {}", src.child_pid().unwrap());
    loop {
        // Keep consuming so ffmpeg keeps running.
        if rx.recv().await.is_none() {
            break;
        }
    }
}

/// The test binary re-runs this very test with [`HELPER_ENV`] set as the parent to kill: no
/// separate helper "test" is listed, and the helper never runs on its own.
#[test]
fn ffmpeg_child_dies_with_its_parent() {
    let test = "ffmpeg_child_dies_with_its_parent";
    if std::env::var_os(HELPER_ENV).is_some() {
        return helper_source_process();
    }
    if lacking(test, &[FFMPEG, FFPROBE]) {
        return;
    }
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let mut read_pid = |tag: &str| -> u32 {
        loop {
            let line = lines
                .next()
                .expect("helper ended before printing a pid")
                .unwrap();
            // libtest prints "test NAME ... " without a newline before the test's own output.
            if let Some(at) = line.find(tag) {
                break line[at + tag.len()..].trim().parse().unwrap();
            }
        }
    };
    let sleeper = read_pid("SLEEP ");
    let ffmpeg = read_pid("PID ");
    assert!(
        alive(ffmpeg) && alive(sleeper),
        "children should be running"
    );
    helper.kill().unwrap(); // SIGKILL: no destructor, no kill_on_drop runs in the helper
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(ffmpeg) || alive(sleeper) {
        if Instant::now() > deadline {
            kill9(ffmpeg);
            kill9(sleeper);
            panic!("a child outlived its parent killed with SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
