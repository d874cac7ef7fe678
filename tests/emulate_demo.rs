//! `bin/demo`, the README's first command, run headless as a user would run it: it must tell
//! its story (trees before and after the kill, one line per client with no duplicate, no
//! reordering and a recording that decodes), exit 0, and leave nothing running. The relay it
//! kills by itself never cuts a video off; a victim named with `--kill` that does (O3, the only
//! neighbour of S2, the only server of charlie) is told as such, and without ffprobe the story
//! does not claim that the recordings decode.
//!
//! Uses the test build of overlayd (`OVERLAYD_BIN`), so it needs no release build; takes about
//! 35 s and 20 s. Needs no root; the first needs ffprobe (`common::prereq`). Each test has its
//! own addresses (`OVERLAYD_DEMO_NET`: 127.0.91.x and 127.0.92.x), so they run side by side and
//! never meet a user's demo on 127.0.9.x; a second run of the same test on this machine waits
//! for the first (bin/demo's lock).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod common;

use common::BIN;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Processes (other than this test) whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{name}: {c}"));
            }
        }
    }
    v
}

/// Runs `bin/demo ARGS` headless with the test build on 127.0.`net`.x, its run directory under
/// `base`, and `PATH` as given (or inherited); returns (success, stdout).
fn demo(
    args: &[&str],
    net: u8,
    base: &std::path::Path,
    path: Option<&std::ffi::OsStr>,
) -> (bool, String) {
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base).unwrap();
    let started = Instant::now();
    let mut cmd = Command::new(repo().join("bin/demo"));
    cmd.arg("--headless")
        .args(args)
        .env("OVERLAYD_BIN", BIN)
        .env("OVERLAYD_DEMO_DIR", base)
        .env("OVERLAYD_DEMO_NET", net.to_string())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("RUST_LOG");
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("bin/demo {args:?} took {:?}", started.elapsed());
    (out.status.success(), stdout)
}

/// Nothing of a demo run under `base` runs any more, and a successful one removed its run
/// directory. Every process of a run names its run directory (key, topology, recording), so
/// this looks at this run only: the other test's demo may be running by now.
fn nothing_left(base: &std::path::Path) {
    let left = processes_mentioning(&base.display().to_string());
    assert!(left.is_empty(), "processes left: {left:#?}");
    let runs: Vec<_> = std::fs::read_dir(base).unwrap().flatten().collect();
    assert!(
        runs.is_empty(),
        "a successful demo removes its run directory"
    );
    let _ = std::fs::remove_dir_all(base);
}

/// The client rows of the story's table, split in fields.
fn client_rows(stdout: &str) -> Vec<Vec<String>> {
    let table = stdout.find("Per client:").expect("a table");
    stdout[table..]
        .lines()
        .filter(|l| l.trim_start().starts_with('C'))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn demo_tells_the_story_and_leaves_nothing_running() {
    // The story's decode claims are checked: ffprobe is needed (the other test runs without).
    if common::prereq::lacking(
        "demo_tells_the_story_and_leaves_nothing_running",
        &[common::prereq::FFPROBE],
    ) {
        return;
    }
    let base = std::env::temp_dir().join(format!("overlayd-demo-test-{}", std::process::id()));
    let (ok, stdout) = demo(&[], 91, &base, None);
    assert!(ok, "bin/demo failed: {stdout}");

    // The story, in order.
    let pos = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in the story:\n{stdout}"))
    };
    let (before, kill, after, table) = (
        pos("Tree before the fault"),
        pos("kill -9 "),
        pos("Tree after the fault"),
        pos("Per client:"),
    );
    assert!(before < kill && kill < after && after < table, "{stdout}");
    let victim = stdout[kill + "kill -9 ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(victim.starts_with('O'), "the victim is a relay: {victim}");
    assert!(
        stdout.contains("the busiest relay whose loss cuts no video off"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("unreachable"),
        "a video was cut off:\n{stdout}"
    );
    // Before: every client is served, through paths from a server.
    let before_tree = &stdout[before..kill];
    for c in ["C1", "C2", "C3", "C4"] {
        assert!(
            before_tree
                .lines()
                .any(|l| l.contains(c) && (l.contains("S1 →") || l.contains("S2 →"))),
            "{c} has no path before the fault:\n{before_tree}"
        );
    }
    assert!(
        before_tree.contains(&format!(" {victim} →")),
        "the killed relay {victim} was on an active path:\n{before_tree}"
    );
    // After: every client is served again, and never through the dead relay.
    let after_tree = &stdout[after..table];
    for c in ["C1", "C2", "C3", "C4"] {
        assert!(
            after_tree.lines().any(|l| l.contains(c)
                && (l.contains("S1 →") || l.contains("S2 →"))
                && !l.contains("(no parent)")),
            "{c} has no path after the fault:\n{after_tree}"
        );
    }
    assert!(
        !after_tree.contains(&format!("{victim} →")),
        "a path still runs through the dead {victim}:\n{after_tree}"
    );
    // One line per client: duplicates 0, reorderings 0, decodes.
    let rows: Vec<&str> = stdout[table..]
        .lines()
        .filter(|l| l.trim_start().starts_with('C'))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        let f: Vec<&str> = r.split_whitespace().collect();
        // client video edge chunks stall normal lost dup reord epochs decodes...
        assert!(f.len() >= 11, "{r}");
        let chunks: u64 = f[3].parse().unwrap();
        assert!(chunks > 300, "too few chunks: {r}");
        assert_eq!(f[7], "0", "duplicates: {r}");
        assert_eq!(f[8], "0", "reorderings: {r}");
        assert_eq!(f[10], "yes", "the recording does not decode: {r}");
        println!("client row: {r}");
    }
    assert!(stdout.contains("RESULT: ok"), "{stdout}");
    assert!(stdout.contains("every recording decodes"), "{stdout}");
    assert!(stdout.contains("nothing left running"), "{stdout}");

    // Independently of the demo's own check: nothing of it runs any more, and it cleaned up.
    nothing_left(&base);
}

/// A PATH with every command of this one except those of the ffmpeg package (links in `dir`):
/// a machine without ffmpeg, where servers use their built-in paced reader.
fn path_without_ffmpeg(dir: &std::path::Path) -> std::ffi::OsString {
    std::fs::create_dir_all(dir).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name();
            let ffmpeg = ["ffmpeg", "ffprobe", "ffplay"].iter().any(|f| name == *f);
            if !ffmpeg && !dir.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(e.path(), dir.join(&name));
            }
        }
    }
    dir.as_os_str().to_owned()
}

/// `--kill O3`: O3 is S2's only neighbour and S2 the only server of charlie, so C3 loses its
/// video for good. The story says so and why, judges C3 on what it got before the kill, and
/// the others recover as usual. Run without ffmpeg and ffprobe on the PATH: the story must not
/// claim that the recordings decode.
#[test]
fn demo_says_which_video_a_named_victim_cuts_off() {
    let base = std::env::temp_dir().join(format!("overlayd-demo-test-cut-{}", std::process::id()));
    let bin_dir = std::env::temp_dir().join(format!("overlayd-demo-path-{}", std::process::id()));
    let path = path_without_ffmpeg(&bin_dir);
    let (ok, stdout) = demo(
        &["--kill", "O3", "--duration", "10"],
        92,
        &base,
        Some(&path),
    );
    let _ = std::fs::remove_dir_all(&bin_dir);
    assert!(ok, "bin/demo failed: {stdout}");
    let kill = stdout.find("kill -9 O3").expect("the kill");
    assert!(
        stdout[kill..]
            .contains("charlie is now unreachable for C3: S2's only neighbour O3 is dead."),
        "{stdout}"
    );
    let after = stdout.find("Tree after the fault").unwrap();
    assert!(
        stdout[after..].contains("(charlie for C3: unreachable, S2's only neighbour O3 is dead)"),
        "{stdout}"
    );
    let rows = client_rows(&stdout);
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        assert!(r.len() >= 11, "{r:?}");
        assert_eq!(
            (r[7].as_str(), r[8].as_str()),
            ("0", "0"),
            "dup/reord: {r:?}"
        );
        assert_eq!(r[4] == "cut", r[0] == "C3", "only C3 is cut off: {r:?}");
        // About 35 chunks a second: C3 until the kill (4 s), the others for 10 s.
        let chunks: u64 = r[3].parse().unwrap();
        let least = if r[0] == "C3" { 40 } else { 150 };
        assert!(chunks > least, "too few chunks: {r:?}");
        assert_eq!(r[10], "(ffprobe", "{r:?}");
    }
    assert!(
        stdout.contains(
            "RESULT: ok — cut off by the loss of O3, as the topology says: charlie (C3): \
             S2's only neighbour O3 is dead; every other client recovered"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("every recording decodes"), "{stdout}");
    assert!(
        stdout.contains("recordings not checked for decoding (ffprobe not installed"),
        "{stdout}"
    );
    nothing_left(&base);
}

#[test]
fn demo_refuses_bad_arguments_in_one_line() {
    for args in [
        &["--bogus"][..],
        &["--duration", "x"],
        &["--duration", "3"],
        &["--kill", "C1"],
        &["--kill", "O9"],
    ] {
        let out = Command::new(repo().join("bin/demo"))
            .args(args)
            .env("OVERLAYD_BIN", BIN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    for net in ["x", "0", "255", "09"] {
        let out = Command::new(repo().join("bin/demo"))
            .env("OVERLAYD_BIN", BIN)
            .env("OVERLAYD_DEMO_NET", net)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{net}: {err}");
        assert!(
            err.contains("OVERLAYD_DEMO_NET") && err.lines().count() == 1,
            "{err}"
        );
    }
    let out = Command::new(repo().join("bin/demo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--headless"));
}
