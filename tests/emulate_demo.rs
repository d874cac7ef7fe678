//! `bin/demo`, the README's first command, run headless as a user would run it: it must tell
//! its story (trees before and after the kill, one line per client with no duplicate, no
//! reordering and a recording that decodes), exit 0, and leave nothing running.
//!
//! Uses the test build of overlayd (`OVERLAYD_BIN`), so it needs no release build; takes about
//! 35 s. Needs no root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_overlayd");

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

fn has(cmd: &str) -> bool {
    Command::new(cmd).arg("-version").output().is_ok()
}

#[test]
fn demo_tells_the_story_and_leaves_nothing_running() {
    let base = std::env::temp_dir().join(format!("overlayd-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let started = Instant::now();
    let out = Command::new(repo().join("bin/demo"))
        .args(["--headless"])
        .env("OVERLAYD_BIN", BIN)
        .env("OVERLAYD_DEMO_DIR", &base)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("bin/demo took {took:?}");
    assert!(out.status.success(), "bin/demo failed: {stdout}\n{stderr}");

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
        if has("ffprobe") {
            assert_eq!(f[10], "yes", "the recording does not decode: {r}");
        }
        println!("client row: {r}");
    }
    assert!(stdout.contains("RESULT: ok"), "{stdout}");
    assert!(stdout.contains("nothing left running"), "{stdout}");

    // Independently of the demo's own check: nothing of it runs any more, and it cleaned up.
    let left = processes_mentioning(&base.display().to_string());
    assert!(left.is_empty(), "processes left: {left:#?}");
    let left = processes_mentioning("127.0.9.");
    assert!(left.is_empty(), "demo daemons left: {left:#?}");
    let runs: Vec<_> = std::fs::read_dir(&base).unwrap().flatten().collect();
    assert!(
        runs.is_empty(),
        "a successful demo removes its run directory"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn demo_refuses_bad_arguments_in_one_line() {
    for args in [&["--bogus"][..], &["--duration", "x"], &["--duration", "3"]] {
        let out = Command::new(repo().join("bin/demo"))
            .args(args)
            .env("OVERLAYD_BIN", BIN)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let out = Command::new(repo().join("bin/demo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--headless"));
}
