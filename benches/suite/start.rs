//! Client start: from starting `overlayd --role client --video V --record F` (the real binary,
//! a new process) to the first decodable frame in its recording, as a user feels it. Real
//! daemons S1 - O1 - {E1, E2, E3} on 127.123.1.x: E1 runs the built-in relay, E2 the ffmpeg
//! relay as now (`--ffmpeg-relay-start warm`: children started ahead), E3 the ffmpeg relay as
//! before (`cold`: a child started per session), side by side in the same run; the client's
//! player input (ffplay on its stdin, now, or on a UDP port, before) likewise. Warm: another client already plays the video from the same edge; cold: nothing flows
//! (the server starts its source for the request).

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::BIN;
use crate::edge::Net;
use crate::join::{probe, wait_idle};
use crate::report::{f1, median, pct, Report, Table};
use crate::Opts;

const BOOT: &str = "127.123.1.100";
/// How long each measured client records.
const RECORD_SECS: &str = "2.5";

/// One client run: when its first byte and its first decodable frame reached the recording,
/// from the process start.
struct Start {
    first_byte_ms: f64,
    first_frame_ms: Option<f64>,
}

fn client(name: &str, bind: IpAddr, record: Option<&Path>, secs: &str) -> Child {
    client_with(name, bind, record, secs, &["--player", "none"])
}

fn client_with(
    name: &str,
    bind: IpAddr,
    record: Option<&Path>,
    secs: &str,
    extra: &[&str],
) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["--role", "client", "--name", name, "--bootstrap", BOOT])
        .args(["--bind", &bind.to_string(), "--video", "alpha"])
        .args(["--duration", secs])
        .args(extra)
        // ffplay's window goes to the bench's Xvfb (see `player`).
        .env("DISPLAY", DISPLAY)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = record {
        cmd.arg("--record").arg(r);
    }
    cmd.spawn().expect("overlayd client")
}

/// Runs one client recording to `file`, watching the file's size every 2 ms; the first
/// decoded frame is complete when the next video packet starts (or at the end of the file).
fn start_once(name: &str, bind: IpAddr, file: &Path) -> Option<Start> {
    let _ = std::fs::remove_file(file);
    let t0 = Instant::now();
    let mut child = client(name, bind, Some(file), RECORD_SECS);
    let sizes: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sizes, done, file) = (sizes.clone(), done.clone(), file.to_path_buf());
        std::thread::spawn(move || {
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                if len != last {
                    sizes.lock().unwrap().push((Instant::now(), len));
                    last = len;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let _ = child.wait();
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let sizes = sizes.lock().unwrap().clone();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let first_byte_ms = ms(sizes.first()?.0);
    let first_frame_ms = probe(file, "-show_frames", "frame=pkt_pos")
        .first()
        .and_then(|&pos| {
            let len = std::fs::metadata(file).ok()?.len() as usize;
            let end = probe(file, "-show_packets", "packet=pos")
                .into_iter()
                .find(|&p| p > pos)
                .unwrap_or(len);
            sizes
                .iter()
                .find(|(_, l)| *l as usize >= end)
                .map(|s| ms(s.0))
        });
    Some(Start {
        first_byte_ms,
        first_frame_ms,
    })
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("start: client process start to first decodable frame");
    let trials = if opts.quick { 4 } else { 8 };
    let ip = |i: u8| format!("127.123.1.{i}");
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // (edge, relay label, edge arguments); each edge has its own client device.
    let setups = [
        ("E1", "native", args(&["--relay", "native"])),
        (
            "E2",
            "ffmpeg, warm start (new)",
            args(&["--relay", "ffmpeg", "--ffmpeg-relay-start", "warm"]),
        ),
        (
            "E3",
            "ffmpeg, cold start (before)",
            args(&["--relay", "ffmpeg", "--ffmpeg-relay-start", "cold"]),
        ),
    ];
    let mut devices: Vec<(&str, String, &str, Vec<String>)> = vec![
        ("S1", ip(1), "server", vec![]),
        ("O1", ip(2), "node", vec![]),
    ];
    let mut links = vec![("S1", "O1")];
    let clients = ["C1", "C2", "C3"];
    for (k, (edge, _, a)) in setups.iter().enumerate() {
        devices.push((edge, ip(3 + k as u8), "edge", a.clone()));
        devices.push((clients[k], ip(10 + k as u8), "client", vec![]));
        links.push(("O1", edge));
        links.push((clients[k], edge));
    }
    let net = Net::start(BOOT, &devices, &links);
    // A flood or two, so the edges know a route to the video.
    std::thread::sleep(Duration::from_millis(2500));
    let file = net.dir.path("start.ts");
    let mut t = Table::new(
        "Client start: process start to first decodable frame in its recording",
        "<= 300 ms warm, <= 500 ms cold, both relays",
        &format!(
            "Real daemons on loopback: S1 - O1 - {{E1, E2, E3}} (127.123.1.x), video alpha (H.264 \
             + AAC, a keyframe every 1 s, about 50 kB/s), default GOP cache. E1: `--relay \
             native`; E2: `--relay ffmpeg` (default `--ffmpeg-relay-start warm`: a child started \
             ahead per kind of session, `-max_interleave_delta` 20 ms, a 40 ms input probe, one \
             audio frame per PES out); E3: `--relay ffmpeg --ffmpeg-relay-start cold` (the \
             behaviour before: a child started per session, a 0.5 s probe, ffmpeg's default \
             PES). Each client device lists one edge. The clock starts when this \
             process spawns `overlayd --role client --video alpha --record F --player none \
             --duration {RECORD_SECS}` (bootstrap, probes, edge choice, request included); the \
             recording's size is read every 2 ms; ffprobe on the recording gives the first \
             decoded video frame, complete when the next video packet starts. Warm: another \
             client process has played from the same edge for 2 s, joins spread over the GOP; \
             cold: every source stopped before the start (the server starts ffmpeg; that start \
             is the server's, the same for every row). {trials} trials per row; ms."
        ),
        &[
            "edge relay",
            "path",
            "trials ok",
            "first byte p50",
            "first frame p50",
            "first frame p95",
            "first frame max",
        ],
    );
    let mut k = 0u8;
    let mut next_ip = || {
        k = k.wrapping_add(1);
        IpAddr::from([127, 123, 2, k])
    };
    for (i, (_, relay, _)) in setups.iter().enumerate() {
        let name = clients[i];
        let mut cold = Vec::new();
        for _ in 0..trials {
            wait_idle(&net);
            cold.extend(start_once(name, next_ip(), &file));
        }
        wait_idle(&net);
        let mut holder = client(name, IpAddr::from([127, 123, 3, i as u8 + 1]), None, "600");
        std::thread::sleep(Duration::from_secs(2));
        let mut warm = Vec::new();
        for _ in 0..trials {
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 1000));
            warm.extend(start_once(name, next_ip(), &file));
        }
        let _ = holder.kill();
        let _ = holder.wait();
        for (path, runs, goal) in [("warm", warm, 300.0), ("cold", cold, 500.0)] {
            let bytes: Vec<f64> = runs.iter().map(|r| r.first_byte_ms).collect();
            let frames: Vec<f64> = runs.iter().filter_map(|r| r.first_frame_ms).collect();
            println!("  {relay} {path}: first frames {frames:.0?} ms");
            let p95 = pct(&frames, 95.0);
            t.row(vec![
                relay.to_string(),
                path.to_string(),
                format!("{}/{trials} ({} decoded)", runs.len(), frames.len()),
                f1(median(&bytes)),
                f1(median(&frames)),
                f1(p95),
                f1(crate::report::max(&frames)),
            ]);
            // The cold-start ffmpeg relay is the old default, a baseline: no verdict.
            if relay.contains("before") {
                continue;
            }
            t.verdict(
                frames.len() == trials && p95 <= goal,
                format!(
                    "{relay}, {path}: {}/{trials} trials decoded, first frame p95 {p95:.0} ms \
                     (goal {goal:.0} ms).",
                    frames.len()
                ),
            );
        }
    }
    rep.add(t);
    player(opts, rep, &clients, &mut next_ip);
    drop(net);
}

/// The X display of the player measurement.
const DISPLAY: &str = ":123";

/// Whether the screen of `DISPLAY` shows one colour only (None: no screenshot). XWD: a
/// big-endian header whose first word is its size, `ncolors` (word 19) colour entries of 12
/// bytes, then the pixels (32 bits each at depth 24).
fn screen_uniform() -> Option<bool> {
    let out = Command::new("xwd")
        .args(["-root", "-silent", "-display", DISPLAY])
        .output()
        .ok()?;
    let d = out.stdout;
    let word = |i: usize| {
        Some(u32::from_be_bytes(
            d.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    let start = word(0)? as usize + word(19)? as usize * 12;
    let pixels = d.get(start..)?;
    let first = pixels.get(..4)?;
    Some(pixels.chunks_exact(4).step_by(97).all(|p| p == first))
}

/// ffplay under Xvfb: from the client's start to a picture on the (black) screen, the pipe
/// into ffplay (now) against the local UDP port (before), from a warm edge of each relay.
fn player(opts: &Opts, rep: &mut Report, clients: &[&str], ip: &mut impl FnMut() -> IpAddr) {
    let mut t = Table::new(
        "ffplay: client process start to the picture on screen",
        "the picture within 1 s of the client's start",
        "The start bench's daemons; an Xvfb display (640x480, black background) and a client \
         process with ffplay (`--player ffplay`, `--player-input pipe`: the TS on ffplay's \
         stdin, told the format, a 16 KiB / 0.1 s probe; or `--player-input udp`, the way \
         before: ffplay on a local UDP port with its default probe). The clock starts when the \
         client is spawned; the screen is grabbed (`xwd -root`) every ~20 ms until it is not \
         one colour. Warm edge (another client plays from it). ms.",
        &[
            "edge relay",
            "player input",
            "trials ok",
            "p50",
            "p95",
            "max",
        ],
    );
    let have = |c: &str| overlayd::media::child::find_program(c).is_some();
    if !have("Xvfb") || !have("xwd") || !have("ffplay") {
        t.verdict(
            false,
            "not measured: Xvfb, xwd or ffplay is not installed (apt install xvfb x11-apps ffmpeg).",
        );
        rep.add(t);
        return;
    }
    let mut xvfb = Command::new("Xvfb")
        .args([
            DISPLAY,
            "-screen",
            "0",
            "640x480x24",
            "-br",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb");
    let deadline = Instant::now() + Duration::from_secs(10);
    while screen_uniform().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let trials = if opts.quick { 3 } else { 6 };
    for (c, relay) in [(0, "native"), (1, "ffmpeg, warm start")] {
        let mut holder = client(
            clients[c],
            IpAddr::from([127, 123, 3, 10 + c as u8]),
            None,
            "600",
        );
        std::thread::sleep(Duration::from_secs(2));
        for input in ["pipe", "udp"] {
            let mut shown = Vec::new();
            for _ in 0..trials {
                // The previous player's window is gone (its client ended it).
                let clear = Instant::now() + Duration::from_secs(5);
                while screen_uniform() != Some(true) && Instant::now() < clear {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if screen_uniform() != Some(true) {
                    println!("  ffplay {relay} {input}: the screen is not clear; trial skipped");
                    continue;
                }
                let t0 = Instant::now();
                let mut child = client_with(
                    clients[c],
                    ip(),
                    None,
                    "10",
                    &["--player", "ffplay", "--player-input", input],
                );
                let until = t0 + Duration::from_secs(9);
                while Instant::now() < until {
                    if screen_uniform() == Some(false) {
                        shown.push(t0.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // SIGTERM: the client stops its ffplay on the way out (SIGKILL would leave it).
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let _ = child.wait();
            }
            println!("  ffplay {relay} {input}: {shown:.0?} ms");
            let worst = crate::report::max(&shown);
            // UDP input is the way before, a baseline: no verdict.
            if input == "pipe" {
                t.verdict(
                    shown.len() == trials && worst <= 1000.0,
                    format!(
                    "{relay}, {input}: the picture in {}/{trials} trials, at most {worst:.0} ms \
                     after the client's start (goal 1000 ms).",
                    shown.len()
                ),
                );
            }
            t.row(vec![
                relay.to_string(),
                input.to_string(),
                format!("{}/{trials}", shown.len()),
                f1(median(&shown)),
                f1(pct(&shown, 95.0)),
                f1(crate::report::max(&shown)),
            ]);
        }
        let _ = holder.kill();
        let _ = holder.wait();
    }
    let _ = xvfb.kill();
    let _ = xvfb.wait();
    rep.add(t);
}
