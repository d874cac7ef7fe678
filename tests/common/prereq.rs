//! The one policy for a test that cannot run here (not root, a tool missing): it fails under
//! CI and is counted as skipped elsewhere, never passes silently. A test that needs root, `ip
//! netns`, nft, tc, setpriv, raw sockets, ffmpeg/ffprobe, chromium or tclsh asks [`lacking`]
//! (or, for a prerequisite found missing some other way, calls [`skip`]) before it starts, and
//! returns at once when told to:
//!
//! - under CI — the environment variable `CI` is `true` (any case) or `1`, as GitHub Actions,
//!   GitLab CI and most others set it; unset, empty, `false`, `0` or anything else is not CI —
//!   the test panics with one line: `<test>: cannot run here: <why>; <how>`, where *how* names
//!   the package to install or says to run as root;
//! - otherwise it prints `SKIPPED <test>: <why>; <how>` (stdout and stderr) and, when
//!   `OVERLAYD_TEST_SKIP_FILE` names a file, appends that line to it: nextest hides a passing
//!   test's output, so bin/test sets the variable, collects the lines after the run and reports
//!   them with the count of skipped tests. Plain `cargo test` (no variable) only prints.
//!
//! Only std and libc: the library's own unit tests include this file too (`#[path]`, e.g. in
//! src/net/edge_ffmpeg.rs), so one policy holds for every test of the crate.

use std::io::Write;
use std::path::Path;

/// The file (named by bin/test) a skipped test appends its `SKIPPED` line to.
pub const SKIP_FILE_ENV: &str = "OVERLAYD_TEST_SKIP_FILE";

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Effective uid 0 (network namespaces, veth pairs, tc, nft, raw sockets).
    Root,
    /// Root and a working `ip netns` (the netns emulator's own check).
    Netns,
    /// A command on the PATH, and the Debian package that has it.
    Tool(&'static str, &'static str),
}

pub const FFMPEG: Need = Need::Tool("ffmpeg", "ffmpeg");
pub const FFPROBE: Need = Need::Tool("ffprobe", "ffmpeg");
pub const NFT: Need = Need::Tool("nft", "nftables");
pub const TC: Need = Need::Tool("tc", "iproute2");
pub const IP: Need = Need::Tool("ip", "iproute2");
pub const SETPRIV: Need = Need::Tool("setpriv", "util-linux");
pub const CHROMIUM: Need = Need::Tool("chromium", "chromium");
pub const TCLSH: Need = Need::Tool("tclsh", "tcl");

/// Whether this run is CI's (see the module text for the values that count).
pub fn is_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// An executable file named `cmd` in a directory of PATH.
pub fn on_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(cmd))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const AS_ROOT: &str = "run the tests as root (sudo bin/test; CI runs as root)";

/// Why `need` is not met here and how to meet it; None when it is.
pub fn unmet(need: Need) -> Option<(String, String)> {
    match need {
        Need::Root if !root() => Some(("needs root".into(), AS_ROOT.into())),
        Need::Root => None,
        // What `overlayd netns` itself requires (emulate::netns::require_root).
        Need::Netns => unmet(Need::Root).or_else(|| unmet(IP)).or_else(|| {
            let o = std::process::Command::new("ip").args(["netns", "list"]).output();
            match o {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Some(e.to_string()),
            }
            .map(|e| {
                (
                    format!("`ip netns` does not work here ({e})"),
                    "run as root where network namespaces are allowed (not in an unprivileged container)".into(),
                )
            })
        }),
        Need::Tool(cmd, package) if !on_path(cmd) => Some((
            format!("{cmd} is not installed"),
            format!("install the Debian package {package} (apt-get install {package}; bin/test installs it)"),
        )),
        Need::Tool(..) => None,
    }
}

/// True when `test` cannot run here for want of one of `needs` (checked in order): the first
/// one missing is reported by [`skip`] — a panic under CI — and the caller returns at once.
pub fn lacking(test: &str, needs: &[Need]) -> bool {
    for need in needs {
        if let Some((why, how)) = unmet(*need) {
            skip(test, &why, &how);
            return true;
        }
    }
    false
}

/// `test` cannot run here because of `why`; `how` says what to install or how to run. Under CI
/// this panics; otherwise it prints and records the `SKIPPED` line and returns (the caller then
/// returns from the test).
pub fn skip(test: &str, why: &str, how: &str) {
    if is_ci() {
        panic!("{test}: cannot run here: {why}; {how}");
    }
    let line = format!("SKIPPED {test}: {why}; {how}");
    println!("{line}");
    eprintln!("{line}");
    if let Some(file) = std::env::var_os(SKIP_FILE_ENV) {
        record(Path::new(&file), &line);
    }
}

/// Appends `line` to `file` in one write (tests of several processes append to it at once).
fn record(file: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap_or_else(|e| panic!("cannot open {} ({SKIP_FILE_ENV}): {e}", file.display()));
    f.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to {} ({SKIP_FILE_ENV}): {e}", file.display()));
}
