//! Helpers for tests that run the real `overlayd` binary: temp dirs, key files, topology
//! files, and daemons whose stderr is collected so a test can wait for a log line.
#![allow(dead_code)]

pub mod consumer;
pub mod diamond;
pub mod edge;
pub mod emu;
pub mod lastmile;
pub mod media;
pub mod pair;
pub mod prereq;
pub mod sim;
pub mod veth;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_overlayd");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "overlayd-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Run `overlayd ARGS` to completion, returning (status code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository's committed clips (videos/).
pub fn repo_videos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("videos")
}

/// The first video a server given [`repo_videos`] offers: its first `.ts` clip by file stem.
pub fn some_video() -> String {
    let mut names: Vec<String> = std::fs::read_dir(repo_videos())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".ts").map(str::to_string))
        .collect();
    names.sort();
    names.into_iter().next().expect("a .ts clip in videos/")
}

/// Write a fresh key file with `overlayd keygen`.
pub fn keygen(path: &Path) {
    let (code, _, err) = run(&["keygen", "--out", path.to_str().unwrap()]);
    assert_eq!(code, 0, "keygen failed: {err}");
}

/// A running daemon; killed on drop. Its stderr lines are collected.
pub struct Daemon {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(name: &str, args: &[&str]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Daemon::spawn_command(name, cmd)
    }

    /// [`Daemon::spawn`] inside network namespace `ns` (`ip netns exec` execs the daemon, so
    /// the pid is the daemon's).
    pub fn spawn_in(ns: &str, name: &str, args: &[&str]) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]).args(args);
        Daemon::spawn_command(name, cmd)
    }

    fn spawn_command(name: &str, mut cmd: Command) -> Daemon {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("OVERLAYD_TEST_ECHO").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            name: name.to_string(),
            child,
            lines,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Lines containing every one of `parts`.
    pub fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Wait until a log line contains every one of `parts`; panic with the log otherwise.
    pub fn wait_for(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.matching(parts).into_iter().next() {
                return l;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no log line with {:?} within {:?}; log:\n{}",
                    self.name,
                    parts,
                    timeout,
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the stderr thread catch up.
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Start an overlay device `name` of `role` ("server" or "node") bound to `bind`, registered
/// with the bootstrapper on `boot`, sharing the key file `key`. A server serves
/// [`repo_videos`]; `extra` arguments follow.
pub fn device(
    role: &str,
    name: &str,
    bind: &str,
    boot: &str,
    key: &Path,
    extra: &[&str],
) -> Daemon {
    let videos = repo_videos();
    let mut args = vec![
        "--role",
        role,
        "--name",
        name,
        "--bind",
        bind,
        "--bootstrap",
        boot,
        "--key-file",
        key.to_str().unwrap(),
    ];
    if role == "server" {
        args.extend(["--videos", videos.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    Daemon::spawn(name, &args)
}

/// The role of a device in the tests' topologies: `S*` are servers, the rest nodes.
pub fn role_of(name: &str) -> &'static str {
    if name.starts_with('S') {
        "server"
    } else {
        "node"
    }
}

/// Start a bootstrapper serving `topology` on `ip` (default port) and wait until it listens.
pub fn bootstrapper(topology: &Path, ip: &str) -> Daemon {
    let b = Daemon::spawn(
        "bootstrapper",
        &[
            "--role",
            "bootstrapper",
            "--topology",
            topology.to_str().unwrap(),
            "--bind",
            ip,
        ],
    );
    // As long as the slowest caller used to wait: a loaded CI host starts daemons slowly.
    b.wait_for(&["listening"], Duration::from_secs(20));
    b
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
