//! ffmpeg child processes: this module owns how they are found, spawned and tied to the
//! daemon's life, and the restart loop with backoff shared by sources and relays
//! ([`supervise`]: run the child, count restarts, log why it stopped, wait, start it again).
//!
//! A child must never outlive the daemon, whatever way the daemon ends:
//! - `kill_on_drop`: an orderly shutdown or a dropped handle kills the child;
//! - its own process group: a Ctrl-C in the terminal reaches only the daemon, which then
//!   shuts its children down itself (ffmpeg would otherwise catch SIGINT and linger to finish
//!   its output);
//! - on Linux, `PR_SET_PDEATHSIG = SIGKILL` set between fork and exec: the kernel kills the
//!   child when the daemon dies, even by `kill -9` or a panic with `panic = "abort"`.
//!
//! Caveat of PDEATHSIG: the "parent" is the thread that spawned the child. Children must be
//! spawned from long-lived threads (tokio worker threads or a `block_on` thread, as here),
//! never from `spawn_blocking`, whose idle threads exit and would take the child with them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// Program name of ffmpeg, looked up on PATH.
pub const FFMPEG: &str = "ffmpeg";
/// Program name of ffprobe, looked up on PATH.
pub const FFPROBE: &str = "ffprobe";

/// Full path of an executable on PATH, if any.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether ffmpeg is installed (on PATH). Cheap: no process is started.
pub fn ffmpeg_available() -> bool {
    find_program(FFMPEG).is_some()
}

/// Whether ffprobe is installed (on PATH).
pub fn ffprobe_available() -> bool {
    find_program(FFPROBE).is_some()
}

/// A command for a child that dies with the daemon (see the module documentation).
/// stdin, stdout and stderr are null; callers pipe what they use.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.kill_on_drop(true)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid) and builds an io::Error without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if linux::prctl(linux::PR_SET_PDEATHSIG, linux::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon may have died before prctl took effect: then we were reparented
                // and no signal will ever come, so refuse to start.
                if std::os::unix::process::parent_id() != parent {
                    return Err(std::io::Error::from_raw_os_error(linux::ESRCH));
                }
                Ok(())
            });
        }
    }
    cmd
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{c_int, c_ulong};

    // Values from <linux/prctl.h>, <signal.h>, <errno.h>; identical on every Linux target.
    pub const PR_SET_PDEATHSIG: c_int = 1;
    pub const SIGKILL: c_ulong = 9;
    pub const ESRCH: i32 = 3;

    extern "C" {
        // glibc/musl: int prctl(int option, ...). Declared here rather than pulling in the
        // libc crate for one function.
        pub fn prctl(option: c_int, ...) -> c_int;
    }
}

/// Log a child's stderr lines (ffmpeg runs with `-loglevel error`, so every line matters).
pub fn log_stderr(stderr: ChildStderr, what: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!(target: "overlayd::media", "{what}: {line}");
        }
    });
}

/// Kill a child and reap it.
pub async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// How one run of a supervised child ended.
pub(crate) enum Ended {
    /// Stop for good (cancelled, or nobody consumes the output any more).
    Stop,
    /// The child died or became useless: start another after the backoff.
    Died,
}

/// Which pipe of a supervised ffmpeg child carries the video.
pub(crate) enum VideoPipe {
    /// The video goes in on stdin (a relay).
    Stdin,
    /// The video comes out on stdout (a source).
    Stdout,
}

/// How [`supervise`] starts its ffmpeg child.
pub(crate) struct FfmpegChild {
    /// ffmpeg's arguments.
    pub args: Vec<String>,
    /// Which pipe is opened besides stderr.
    pub video: VideoPipe,
    /// Name of the child in its stderr lines (see [`log_stderr`]).
    pub label: String,
}

/// One kind of ffmpeg child kept running by [`supervise`]: what to do with it while it runs
/// and how to wait before the next start. Each kind logs in its own words.
pub(crate) trait Supervised {
    /// Logs a failed spawn; the supervisor then backs off and tries again.
    fn spawn_failed(&self, e: std::io::Error);
    /// Feeds or drains the running child until it ends; kills or reaps it before returning,
    /// and logs a death. `started` is when this run began.
    async fn run(&mut self, child: &mut Child, started: Instant) -> Ended;
    /// Waits `delay` before the next start; false stops the supervisor instead.
    async fn pause(&mut self, delay: Duration) -> bool;
}

/// Runs `child` for `job` until the job stops for good, starting it again after `backoff`
/// whenever it dies or fails to start. `restarts` counts the starts after the first;
/// `child_pid` holds the running child's pid (0 while none runs).
pub(crate) async fn supervise<S: Supervised>(
    child: &FfmpegChild,
    job: &mut S,
    backoff: &mut Backoff,
    restarts: &AtomicU64,
    child_pid: &AtomicU32,
) {
    let mut first = true;
    loop {
        if !first {
            restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let started = Instant::now();
        let mut cmd = command(FFMPEG);
        cmd.args(&child.args).stderr(Stdio::piped());
        match child.video {
            VideoPipe::Stdin => cmd.stdin(Stdio::piped()),
            VideoPipe::Stdout => cmd.stdout(Stdio::piped()),
        };
        match cmd.spawn() {
            Err(e) => job.spawn_failed(e),
            Ok(mut ch) => {
                child_pid.store(ch.id().unwrap_or(0), Ordering::Relaxed);
                if let Some(err) = ch.stderr.take() {
                    log_stderr(err, child.label.clone());
                }
                let ended = job.run(&mut ch, started).await;
                child_pid.store(0, Ordering::Relaxed);
                if let Ended::Stop = ended {
                    return;
                }
            }
        }
        if !job.pause(backoff.next(started.elapsed())).await {
            return;
        }
    }
}

/// Exponential restart backoff: `min`, doubling up to `max`, back to `min` once a child has
/// run for `healthy` (a child that crashes at once is not restarted in a tight loop; one that
/// ran for a long time and died is restarted quickly).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub healthy: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            healthy: Duration::from_secs(10),
            current: min,
        }
    }

    /// Delay before the next start, given how long the last child ran.
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.healthy {
            self.current = self.min;
        }
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let short = Duration::from_millis(10);
        let got: Vec<_> = (0..4).map(|_| b.next(short).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        assert_eq!(b.next(Duration::from_secs(60)).as_millis(), 100);
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-not-a-program-name").is_none());
    }
}
