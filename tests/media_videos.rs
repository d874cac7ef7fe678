//! The sample clips and the script that makes them: valid H.264 in MPEG-TS, small, labelled.

mod common;

use common::media::*;
use common::prereq::{lacking, FFMPEG, FFPROBE};
use common::TempDir;
use std::process::Command;

fn check_clip(path: &std::path::Path, name: &str) {
    let size = std::fs::metadata(path).unwrap().len();
    assert!(size < 1_000_000, "{name}: {size} bytes");
    let v = ffprobe(path);
    let streams = v["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(video["codec_name"], "h264", "{name}");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(video["r_frame_rate"], "25/1");
    assert_eq!(video["nb_read_frames"], "250", "{name}: 10 s at 25 fps");
    assert!(
        streams.iter().any(|s| s["codec_name"] == "aac"),
        "{name}: audio"
    );
    let dur: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((9.5..10.5).contains(&dur), "{name}: {dur}s");
    // The script names the service after the clip (the picture carries the same label).
    assert_eq!(v["programs"][0]["tags"]["service_name"], name);
    // A keyframe every second.
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-skip_frame",
            "nokey",
        ])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(keys, 10, "{name}: keyframes");
}

#[test]
fn committed_clips_are_small_labelled_h264_ts() {
    if lacking("committed_clips_are_small_labelled_h264_ts", &[FFPROBE]) {
        return;
    }
    for name in ["alpha", "bravo", "charlie"] {
        check_clip(&clip(&format!("{name}.ts")), name);
    }
}

#[test]
fn make_videos_script_builds_the_same_clips() {
    if lacking(
        "make_videos_script_builds_the_same_clips",
        &[FFMPEG, FFPROBE],
    ) {
        return;
    }
    let dir = TempDir::new("make-videos");
    let run = || {
        Command::new(repo().join("bin/make-videos"))
            .arg(&dir.0)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["alpha", "bravo", "charlie"] {
        check_clip(&dir.path(&format!("{name}.ts")), name);
    }
    // Idempotent: a second run leaves the clips alone.
    let again = run();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("exists"));
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}
