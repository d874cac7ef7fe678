//! The netns emulator's shaper process: `overlayd netns shaper`, started by `netns up` when a
//! run has shaped ports. It owns the TAP devices of those ports and moves frames between them.
//!
//! A shaped port is a pair of TAP devices instead of a veth pair: `ethN` in the host's
//! namespace and `h<host>e<N>` in the hub, enslaved to the subnet's bridge (`netns up` creates
//! both as persistent TAPs). This process opens each TAP from inside its namespace (a short-lived
//! thread enters the namespace, opens `/dev/net/tun` and attaches; the descriptor keeps working
//! from any thread), and runs one thread per direction: it reads frames as they come, hands them
//! to the port's [`Direction`] (delay, jitter, loss, duplication, rate) and writes each one out
//! when it is due, sleeping with `ppoll` until the earlier of the next frame and the next
//! release (timer slack 1 µs, so a release is late by the scheduler's wake-up only).
//!
//! It listens on `<run dir>/shaper.sock` (a Unix stream socket, one JSON request a connection):
//! `{"set": {"port": "h3e1", "params": {...}}}` changes a port's parameters at once (frames
//! already queued keep their times), `{"stats": true}` returns every direction's counters. It
//! exits when the run's hub namespace is gone (torn down), or on SIGTERM/SIGKILL from `down`.
//! While it is stopped, its ports carry nothing, like a cut link.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::shaper::{Direction, DirectionCounters};
use crate::topology::LinkParams;

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the union is 24 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One port the shaper runs: the TAP in the host and its partner in the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapedPort {
    /// The hub-side name (`h<host>e<N>`), which also names the port in requests.
    pub port: String,
    pub host_ns: String,
    pub iface: String,
    pub hub_ns: String,
    pub params: LinkParams,
}

/// The counters of one port, host → hub (`out`) and hub → host (`in`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    pub out: DirectionCounters,
    #[serde(rename = "in")]
    pub inward: DirectionCounters,
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Set { port: String, params: LinkParams },
    Stats(bool),
}

/// The control socket of a run.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("shaper.sock")
}

/// The path of a named network namespace (as `ip netns` mounts it).
fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn last_os_error(what: &str) -> anyhow::Error {
    anyhow!("{what}: {}", std::io::Error::last_os_error())
}

/// Opens the persistent TAP `name` inside namespace `ns` (non-blocking).
pub fn open_tap(ns: &str, name: &str) -> anyhow::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name} is too long");
    }
    let ns_file = std::fs::File::open(ns_path(ns)).with_context(|| format!("no namespace {ns}"))?;
    let name = name.to_string();
    // setns changes the calling thread only: do it on a thread that ends right after, so no
    // other work ever runs in the wrong namespace. The TUN device is looked up in the namespace
    // current when /dev/net/tun is opened.
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<OwnedFd> {
            // SAFETY: setns on a valid namespace file descriptor, affecting this thread only.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(last_os_error(&format!("cannot enter namespace {ns}")));
            }
            // SAFETY: open(2) with a NUL-terminated literal path.
            let fd = unsafe {
                libc::open(
                    c"/dev/net/tun".as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(last_os_error("cannot open /dev/net/tun"));
            }
            // SAFETY: fd was just opened and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TAP | IFF_NO_PI,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads a struct ifreq, which IfReq lays out.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
                return Err(last_os_error(&format!(
                    "cannot attach to TAP {name} in {ns}"
                )));
            }
            Ok(fd)
        })
        .join()
        .map_err(|_| anyhow!("the thread opening {name} panicked"))?
    })
}

/// A port's two directions, shared by its two threads and the control socket.
struct PortState {
    out: Mutex<Direction>,
    inward: Mutex<Direction>,
}

/// Runs the shaper for `ports` until the hub namespace `hub_ns` is gone. `run_dir` holds the
/// control socket.
pub fn run(run_dir: &Path, hub_ns: &str, ports: &[ShapedPort]) -> anyhow::Result<()> {
    let mut states: BTreeMap<String, Arc<PortState>> = BTreeMap::new();
    for (k, p) in ports.iter().enumerate() {
        let host = Arc::new(open_tap(&p.host_ns, &p.iface)?);
        let hub = Arc::new(open_tap(&p.hub_ns, &p.port)?);
        let state = Arc::new(PortState {
            out: Mutex::new(Direction::new(p.params)),
            inward: Mutex::new(Direction::new(p.params)),
        });
        states.insert(p.port.clone(), state.clone());
        for (dir, from, to) in [(0, host.clone(), hub.clone()), (1, hub, host)] {
            let state = state.clone();
            let seed = (k as u64) << 1 | dir;
            // Each runs until the process exits (the run torn down, or killed).
            std::thread::Builder::new()
                .name(format!(
                    "{}-{}",
                    p.port,
                    if dir == 0 { "out" } else { "in" }
                ))
                .spawn(move || {
                    let d = if dir == 0 { &state.out } else { &state.inward };
                    forward(&from, &to, d, seed)
                })?;
        }
    }
    println!(
        "shaper: {} port(s): {}",
        ports.len(),
        ports
            .iter()
            .map(|p| format!("{} ({}:{}) {}", p.port, p.host_ns, p.iface, p.params))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sock = socket_path(run_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    listener.set_nonblocking(true)?;
    loop {
        if !ns_path(hub_ns).exists() {
            println!("shaper: the run's namespaces are gone; exiting");
            let _ = std::fs::remove_file(&sock);
            return Ok(());
        }
        match listener.accept() {
            Ok((conn, _)) => {
                if let Err(e) = serve(conn, &states) {
                    eprintln!("shaper: control request failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!("control socket: {e}"),
        }
    }
}

fn serve(conn: UnixStream, states: &BTreeMap<String, Arc<PortState>>) -> anyhow::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    // One request line, bounded.
    BufReader::new(std::io::Read::take(&conn, 64 * 1024)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Set { port, params }) => match states.get(&port) {
            Some(s) => {
                s.out
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .set_params(params);
                s.inward
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .set_params(params);
                println!("shaper: {port} now {params}");
                serde_json::json!({"ok": true})
            }
            None => serde_json::json!({"error": format!("no shaped port {port}")}),
        },
        Ok(Request::Stats(_)) => {
            let mut all = BTreeMap::new();
            for (port, s) in states {
                let c = PortCounters {
                    out: s.out.lock().map_err(|_| anyhow!("poisoned"))?.counters(),
                    inward: s.inward.lock().map_err(|_| anyhow!("poisoned"))?.counters(),
                };
                all.insert(port.clone(), c);
            }
            serde_json::json!({"ok": true, "ports": all})
        }
        Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
    };
    let mut w = &conn;
    writeln!(w, "{reply}")?;
    Ok(())
}

/// Sends one request to a run's shaper and returns its JSON answer.
pub fn request(run_dir: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let sock = socket_path(run_dir);
    let mut conn = UnixStream::connect(&sock).with_context(|| {
        format!(
            "the run's shaper does not answer on {} (is it running?)",
            sock.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(conn, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bad answer from the shaper: {line}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("shaper: {e}");
    }
    Ok(v)
}

fn read_frame(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid, writable buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn write_frame(fd: RawFd, frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: writing from a valid buffer of the given length.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` has passed (`ppoll`: sub-millisecond timeouts).
fn wait_readable(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
}

/// One direction of one port: frames from `from` through `dir` to `to`, forever. Errors on
/// writing (the far TAP down: a cut) lose the frame, as a cut does.
fn forward(from: &OwnedFd, to: &OwnedFd, dir: &Mutex<Direction>, seed: u64) {
    // Wake-ups as close to the release time as the scheduler allows.
    // SAFETY: prctl with an integer argument, affecting this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 ^ seed);
    let mut buf = vec![0u8; 65_536];
    let idle = Duration::from_millis(200);
    loop {
        let next = dir.lock().map(|d| d.next_release()).unwrap_or(None);
        let now = Instant::now();
        let timeout = next.map_or(idle, |at| at.saturating_duration_since(now));
        let readable = match wait_readable(from.as_raw_fd(), timeout) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("shaper: poll failed: {e}");
                return;
            }
        };
        let Ok(mut d) = dir.lock() else { return };
        if readable {
            loop {
                match read_frame(from.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => d.offer(buf[..n].to_vec(), Instant::now(), &mut rng),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // The TAP went away (namespace deleted): nothing more to do here.
                    Err(_) => return,
                }
            }
        }
        let now = Instant::now();
        while let Some(frame) = d.pop_due(now) {
            let _ = write_frame(to.as_raw_fd(), &frame);
        }
    }
}
