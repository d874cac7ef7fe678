//! Media helpers for the tests: the repository's clips, ffprobe's view of a file, a short
//! generated clip, and process liveness and SIGKILL by pid.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The crate root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed clip in videos/.
pub fn clip(name: &str) -> PathBuf {
    super::repo_videos().join(name)
}

/// ffprobe's JSON for a file (streams with counted frames, format, program tags).
pub fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,codec_type,width,height,r_frame_rate,nb_read_frames:format=duration,size:program_tags=service_name")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decoded frames of the first video stream.
pub fn video_frames(path: &Path) -> u64 {
    let v = ffprobe(path);
    v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["codec_type"] == "video")
        .and_then(|s| s["nb_read_frames"].as_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Make a short H.264/AAC TS clip with ffmpeg (for loop tests).
pub fn make_short_clip(path: &Path, seconds: u32) {
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=160x120:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=300"])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "25",
        ])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the field after the parenthesised command name
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

extern "C" {
    // From the C library std already links; saves a dependency and the procps `kill` binary.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Send signal `sig` to a process.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        kill(pid as i32, sig);
    }
}

/// SIGKILL a process.
pub fn kill9(pid: u32) {
    signal(pid, 9);
}

/// SIGTERM a process.
pub fn sigterm(pid: u32) {
    signal(pid, 15);
}
