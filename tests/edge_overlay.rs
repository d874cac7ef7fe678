//! The whole path with real processes on loopback: a server streams a real clip through an
//! overlay node to edges, and headless clients record what their edge relays; ffprobe checks
//! that the recordings decode. Every test runs once per edge relay (`--relay native`, framed
//! datagrams from the built-in relay; `--relay ffmpeg`, raw MPEG-TS from one ffmpeg child per
//! client) with the same assertions.
//!
//! Topology of every test (addresses 127.73.N.x, N = 10·test + mode; the drain tests use
//! 127.125.N.x):
//!
//! ```text
//!   S1 (.1) ── O1 (.2) ─┬─ E1 (.3, edge) ── C1 (.5)    C1 lists E1, or E1 and E2
//!                       └─ E2 (.4, edge) ── C2 (.6)
//! ```
//!
//! Measured figures (frames, durations, gaps, counters) are printed; run with
//! `--no-capture` to see them. Bounds are generous: the machine is shared and noisy.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::media::sigterm;
use common::{bootstrapper, device, keygen, role_of, Daemon, TempDir};

const WAIT: Duration = Duration::from_secs(20);
const VIDEO: &str = "alpha";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Native,
    Ffmpeg,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Ffmpeg => "ffmpeg",
        }
    }
    fn index(self) -> u8 {
        match self {
            Mode::Native => 0,
            Mode::Ffmpeg => 1,
        }
    }
}

/// Runs a test body once per relay mode (each decodes its recordings: ffprobe is needed, and
/// ffmpeg for the ffmpeg relay).
macro_rules! both_relays {
    ($name:ident) => {
        mod $name {
            use crate::common::prereq::{lacking, FFMPEG, FFPROBE};
            #[test]
            fn native() {
                if lacking(concat!(stringify!($name), "::native"), &[FFPROBE]) {
                    return;
                }
                super::$name(super::Mode::Native)
            }
            #[test]
            fn ffmpeg() {
                if lacking(concat!(stringify!($name), "::ffmpeg"), &[FFMPEG, FFPROBE]) {
                    return;
                }
                super::$name(super::Mode::Ffmpeg)
            }
        }
    };
}

struct Net {
    /// Second octet of every address.
    octet: u8,
    net: u8,
    dir: TempDir,
    _bootstrapper: Daemon,
    daemons: Vec<Daemon>,
}

impl Net {
    fn ip(&self, host: u8) -> String {
        format!("127.{}.{}.{host}", self.octet, self.net)
    }

    fn boot(&self) -> String {
        self.ip(100)
    }

    fn daemon(&self, name: &str) -> &Daemon {
        self.daemons.iter().find(|d| d.name == name).unwrap()
    }

    fn daemon_mut(&mut self, name: &str) -> &mut Daemon {
        self.daemons.iter_mut().find(|d| d.name == name).unwrap()
    }

    /// Start bootstrapper, S1, O1, E1, E2; C1 lists `c1_edges` (names), C2 lists E2.
    fn start(test: u8, mode: Mode, c1_edges: &[&str]) -> Net {
        Net::start_on(73, test, mode, c1_edges)
    }

    /// [`Net::start`] on addresses 127.`octet`.N.x.
    fn start_on(octet: u8, test: u8, mode: Mode, c1_edges: &[&str]) -> Net {
        let net = test * 10 + mode.index();
        let dir = TempDir::new(&format!("edge-overlay-{octet}-{net}"));
        let ip = |h: u8| format!("\"127.{octet}.{net}.{h}\"");
        let host = |n: &str| match n {
            "E1" => 3,
            "E2" => 4,
            _ => unreachable!(),
        };
        let c1: Vec<String> = c1_edges.iter().map(|e| ip(host(e))).collect();
        let text = format!(
            r#"{{
  "S1": {{ "neighbours": [{o1}], "addresses": [{s1}] }},
  "O1": {{ "neighbours": [{s1}, {e1}, {e2}], "addresses": [{o1}] }},
  "E1": {{ "neighbours": [{o1}], "addresses": [{e1}], "edge": true }},
  "E2": {{ "neighbours": [{o1}], "addresses": [{e2}], "edge": true }},
  "C1": {{ "role": "client", "neighbours": [{c1}], "addresses": [{c1a}] }},
  "C2": {{ "role": "client", "neighbours": [{e2}], "addresses": [{c2a}] }}
}}"#,
            s1 = ip(1),
            o1 = ip(2),
            e1 = ip(3),
            e2 = ip(4),
            c1 = c1.join(", "),
            c1a = ip(5),
            c2a = ip(6),
        );
        let topo = dir.path("topology.json");
        std::fs::write(&topo, text).unwrap();
        let key = dir.path("k");
        keygen(&key);
        let boot = format!("127.{octet}.{net}.100");
        let b = bootstrapper(&topo, &boot);
        let mut daemons = Vec::new();
        for (i, name) in ["S1", "O1", "E1", "E2"].iter().enumerate() {
            let addr = format!("127.{octet}.{net}.{}", i + 1);
            let extra: &[&str] = if *name == "S1" {
                &[]
            } else {
                &["--relay", mode.flag()]
            };
            daemons.push(device(role_of(name), name, &addr, &boot, &key, extra));
        }
        let n = Net {
            octet,
            net,
            dir,
            _bootstrapper: b,
            daemons,
        };
        for e in ["E1", "E2"] {
            n.daemon(e).wait_for(
                &[
                    "edge serving clients",
                    &format!("relay=\"{}\"", mode.flag()),
                ],
                WAIT,
            );
            n.daemon(e).wait_for(&["neighbour up", "O1"], WAIT);
        }
        n.daemon("O1").wait_for(&["neighbour up", "S1"], WAIT);
        // A flood or two, so the edges know a route to the video before clients ask.
        std::thread::sleep(Duration::from_millis(2500));
        n
    }

    /// Start edge `name` again (after it exited) with the same arguments; waits until it
    /// serves clients and is linked to O1.
    fn start_edge_again(&mut self, name: &str, mode: Mode) {
        let addr = self.ip(if name == "E1" { 3 } else { 4 });
        let d = device(
            "node",
            name,
            &addr,
            &self.boot(),
            &self.dir.path("k"),
            &["--relay", mode.flag()],
        );
        d.wait_for(&["edge serving clients"], WAIT);
        d.wait_for(&["neighbour up", "O1"], WAIT);
        let slot = self.daemons.iter_mut().find(|d| d.name == name).unwrap();
        *slot = d;
    }

    /// A headless client recording for `secs`.
    fn client(&self, name: &str, secs: u32) -> (Daemon, PathBuf, PathBuf) {
        let host = if name == "C1" { 5 } else { 6 };
        let record = self.dir.path(&format!("{name}.ts"));
        let stats = self.dir.path(&format!("{name}.json"));
        let d = Daemon::spawn(
            name,
            &[
                "--role",
                "client",
                "--name",
                name,
                "--bind",
                &self.ip(host),
                "--bootstrap",
                &self.boot(),
                "--video",
                VIDEO,
                "--player",
                "none",
                "--record",
                record.to_str().unwrap(),
                "--duration",
                &secs.to_string(),
                "--stats-json",
                stats.to_str().unwrap(),
            ],
        );
        (d, record, stats)
    }

    /// SIGTERM every overlay daemon and wait for them to exit (so the final counters are logged).
    fn stop_all(&mut self) {
        for d in &self.daemons {
            sigterm(d.pid());
        }
        for d in &mut self.daemons {
            let name = d.name.clone();
            if let Some(pid) = alive_pid(d) {
                assert!(
                    d.wait_exit(Duration::from_secs(10)).is_some(),
                    "{name} (pid {pid}) did not exit on SIGTERM"
                );
            }
        }
    }
}

fn alive_pid(d: &Daemon) -> Option<u32> {
    common::media::alive(d.pid()).then(|| d.pid())
}

/// Waits for a client to finish by itself and returns its stats JSON.
fn finish(client: &mut Daemon, stats: &Path, secs: u32) -> serde_json::Value {
    let code = client.wait_exit(Duration::from_secs(u64::from(secs) + 20));
    assert_eq!(
        code,
        Some(0),
        "client {} failed; log:\n{}",
        client.name,
        client.log().join("\n")
    );
    let text = std::fs::read_to_string(stats).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What ffprobe says about a recording.
#[derive(Debug)]
struct Probe {
    frames: u64,
    duration: f64,
    first_key: bool,
    first_type: String,
    /// Largest step between consecutive video packet timestamps (lost video), seconds.
    max_dts_step: f64,
    /// Video packets whose timestamp is not after the previous one (repeated or reordered).
    dts_backwards: u64,
}

fn probe(path: &Path) -> Probe {
    let v = common::media::ffprobe(path);
    let video = v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["codec_type"] == "video")
        .cloned()
        .unwrap_or_default();
    let frames = video["nb_read_frames"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    let first = ffprobe_csv(
        path,
        &[
            "-read_intervals",
            "%+#1",
            "-show_entries",
            "frame=key_frame,pict_type",
        ],
    );
    let first = first.lines().next().unwrap_or("").to_string();
    let fields: Vec<&str> = first.split(',').collect();
    let first_key = fields.first() == Some(&"1");
    let first_type = fields.get(1).unwrap_or(&"?").to_string();
    let dts: Vec<f64> = ffprobe_csv(path, &["-show_entries", "packet=dts_time"])
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    let mut max_dts_step: f64 = 0.0;
    let mut dts_backwards = 0;
    for w in dts.windows(2) {
        let step = w[1] - w[0];
        if step <= 0.0 {
            dts_backwards += 1;
        }
        max_dts_step = max_dts_step.max(step);
    }
    Probe {
        frames,
        duration,
        first_key,
        first_type,
        max_dts_step,
        dts_backwards,
    }
}

fn ffprobe_csv(path: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(args)
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `key=value` fields of a log line (values unquoted).
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// `final link copies` of `d` to `neighbour` for the test video.
fn link_copies(d: &Daemon, neighbour: &str) -> u64 {
    d.matching(&["final link copies"])
        .iter()
        .map(|l| fields(l))
        .filter(|f| {
            f.get("neighbour").map(String::as_str) == Some(neighbour)
                && f.get("video").map(String::as_str) == Some(VIDEO)
        })
        .filter_map(|f| f.get("chunks").and_then(|c| c.parse::<u64>().ok()))
        .sum()
}

/// `chunks_in` of `d`'s final stream counters for the test video.
fn chunks_in(d: &Daemon) -> u64 {
    d.matching(&["final stream counters"])
        .iter()
        .map(|l| fields(l))
        .filter(|f| f.get("video").map(String::as_str) == Some(VIDEO))
        .filter_map(|f| f.get("chunks_in").and_then(|c| c.parse::<u64>().ok()))
        .sum()
}

/// Children of a process (ffmpeg relays of an edge, the source of a server).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.get(1).and_then(|pp| pp.parse::<u32>().ok()) == Some(pid) && rest[0] != "Z" {
            out.push((p, comm));
        }
    }
    out
}

/// The recording's audio track as "sample_rate,channels" (ffprobe), empty without one.
fn audio_track(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0"])
        .args([
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    // The stream shows under its program and again on its own: the first line.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().unwrap_or("").trim().to_string()
}

fn show(p: &Probe) -> String {
    format!(
        "frames {}, duration {:.2} s, first frame {} (key {}), largest timestamp step {:.3} s, timestamps not increasing {}",
        p.frames, p.duration, p.first_type, p.first_key, p.max_dts_step, p.dts_backwards
    )
}

// ---- the tests -------------------------------------------------------------------------------

/// A client records 10 s; the recording decodes, lasts about 10 s and starts on a keyframe.
fn record_ten_seconds(mode: Mode) {
    let t0 = Instant::now();
    let net = Net::start(1, mode, &["E1"]);
    let (mut c1, rec, stats) = net.client("C1", 10);
    let st = finish(&mut c1, &stats, 10);
    let p = probe(&rec);
    println!(
        "[{}] 10 s recording: {}; client: bytes {}, datagrams {}, chunks {}, raw datagrams {}, gaps {}, duplicates {}, reorderings {}; test {:.1} s",
        mode.flag(),
        show(&p),
        st["bytes"],
        st["datagrams"],
        st["chunks"],
        st["raw_datagrams"],
        st["gaps"],
        st["duplicates"],
        st["reorderings"],
        t0.elapsed().as_secs_f64()
    );
    assert!(p.frames > 0, "no decodable frame: {p:?}");
    assert!(
        (8.0..=12.0).contains(&p.duration),
        "duration {:.2} s not close to 10 s",
        p.duration
    );
    assert!(p.first_key, "first video frame is not a keyframe: {p:?}");
    if mode == Mode::Native {
        assert!(st["chunks"].as_u64().unwrap() > 0);
        assert_eq!(st["raw_datagrams"], 0);
    } else {
        assert!(st["raw_datagrams"].as_u64().unwrap() > 0);
    }
    assert_eq!(st["duplicates"], 0);
    assert_eq!(st["reorderings"], 0);
}
both_relays!(record_ten_seconds);

/// Two clients on E1 and E2, which share O1: the S1→O1 link carries each chunk once.
fn shared_upstream_link_carries_one_copy(mode: Mode) {
    let t0 = Instant::now();
    let mut net = Net::start(2, mode, &["E1"]);
    let (mut c1, rec1, st1) = net.client("C1", 10);
    let (mut c2, rec2, st2) = net.client("C2", 10);
    let s1 = finish(&mut c1, &st1, 10);
    let s2 = finish(&mut c2, &st2, 10);
    // Let the stream stop everywhere, so the counters are final before the daemons are.
    net.daemon("S1").wait_for(&["source stopped", VIDEO], WAIT);
    net.stop_all();
    let up = link_copies(net.daemon("S1"), "O1");
    let to_e1 = link_copies(net.daemon("O1"), "E1");
    let to_e2 = link_copies(net.daemon("O1"), "E2");
    let o1_in = chunks_in(net.daemon("O1"));
    let (e1_in, e2_in) = (chunks_in(net.daemon("E1")), chunks_in(net.daemon("E2")));
    let (p1, p2) = (probe(&rec1), probe(&rec2));
    println!(
        "[{}] shared link: S1->O1 {up} chunks (O1 received {o1_in}), O1->E1 {to_e1} (E1 received {e1_in}), O1->E2 {to_e2} (E2 received {e2_in}); C1: {}; C2: {}; C1 bytes {}, C2 bytes {}; test {:.1} s",
        mode.flag(),
        show(&p1),
        show(&p2),
        s1["bytes"],
        s2["bytes"],
        t0.elapsed().as_secs_f64()
    );
    assert!(to_e1 > 0 && to_e2 > 0, "an edge got nothing");
    // One copy: the parent sent the shared node about as many chunks as the busier edge got,
    // far fewer than both edges together (two copies would be about their sum).
    assert!(
        up >= to_e1.max(to_e2),
        "S1->O1 {up} < an edge's {}",
        to_e1.max(to_e2)
    );
    assert!(
        (up as f64) < 0.75 * (to_e1 + to_e2) as f64,
        "S1->O1 carried {up} chunks for {} delivered to the edges: more than one copy",
        to_e1 + to_e2
    );
    assert_eq!(o1_in, up, "O1 received what S1 sent");
    for p in [&p1, &p2] {
        assert!(p.frames > 0 && p.first_key, "{p:?}");
    }
}
both_relays!(shared_upstream_link_carries_one_copy);

/// A client killed with SIGKILL: its lease expires and the stream stops up to the server.
fn killed_client_lease_expires_and_stream_stops_upstream(mode: Mode) {
    let t0 = Instant::now();
    let net = Net::start(3, mode, &["E1"]);
    let (mut c1, rec, _) = net.client("C1", 60);
    c1.wait_for(&["receiving video from edge"], WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let e1_pid = net.daemon("E1").pid();
    let relays_before: Vec<_> = children(e1_pid);
    let killed = Instant::now();
    c1.kill();
    let at = |d: &str, what: &[&str]| {
        net.daemon(d).wait_for(what, WAIT);
        killed.elapsed().as_secs_f64()
    };
    let expired = at("E1", &["client session closed", "Expired"]);
    let e1_stop = at("E1", &["stream stopped", VIDEO]);
    let o1_stop = at("O1", &["stream stopped", VIDEO]);
    let s1_stop = at("S1", &["stream stopped", VIDEO]);
    let source = at("S1", &["source stopped", VIDEO]);
    let relays_after = children(e1_pid);
    let p = probe(&rec);
    println!(
        "[{}] SIGKILL of the client: lease expired after {expired:.2} s, stream stopped at E1 {e1_stop:.2} s, O1 {o1_stop:.2} s, S1 {s1_stop:.2} s, source stopped {source:.2} s; E1 children before {:?}, after {:?}; partial recording: {}; test {:.1} s",
        mode.flag(),
        relays_before,
        relays_after,
        show(&p),
        t0.elapsed().as_secs_f64()
    );
    if mode == Mode::Ffmpeg {
        assert!(
            relays_before.iter().any(|(_, c)| c == "ffmpeg"),
            "no ffmpeg relay under E1 while the client watched"
        );
        net.daemon("E1").wait_for(&["ffmpeg relay stopped"], WAIT);
    }
    // With the ffmpeg relay E1 keeps two children started ahead for the next sessions (a
    // fresh and a continuing one, see src/net/edge_ffmpeg.rs); the session's own must go.
    let spares = if mode == Mode::Ffmpeg { 2 } else { 0 };
    let deadline = Instant::now() + Duration::from_secs(5);
    while children(e1_pid).len() > spares && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = children(e1_pid);
    assert_eq!(
        after.len(),
        spares,
        "E1 still has the session's child: {after:?}"
    );
    assert!(
        after.iter().all(|c| relays_before.contains(c)),
        "E1 started children after the session ended: {after:?}, before {relays_before:?}"
    );
    assert!(p.frames > 0);
}
both_relays!(killed_client_lease_expires_and_stream_stops_upstream);

/// Waits until `d`'s log has `n` lines containing every one of `parts`; returns when.
fn wait_count(d: &Daemon, parts: &[&str], n: usize) -> Instant {
    let deadline = Instant::now() + WAIT;
    while d.matching(parts).len() < n {
        assert!(
            Instant::now() < deadline,
            "{}: fewer than {n} log lines with {parts:?}; log:\n{}",
            d.name,
            d.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Instant::now()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// The client's edge hangs mid-stream (SIGSTOP: nothing closes, nothing answers): the client
/// moves to the other edge; the hung edge wakes up (SIGCONT), then the other edge is killed
/// (kill -9): the client moves back. The recording goes on and decodes; with the built-in relay
/// it has no duplicate and no reordering; with ffmpeg's raw TS what the new edge's child
/// repeats is trimmed by the client (no video timestamp goes back in the recording), and the
/// span still repeated (PCR) is printed. The sound is there (the children's short probe). The time from each fault to the client's first
/// video from the other edge (its log, polled every 5 ms) is printed, not asserted.
fn edge_hang_then_death_move_the_client(mode: Mode) {
    let t0 = Instant::now();
    let mut net = Net::start(4, mode, &["E1", "E2"]);
    let secs = 20;
    let (mut c1, rec, stats) = net.client("C1", secs);
    let line = c1.wait_for(&["receiving video from edge"], WAIT);
    let (first, other) = if line.contains(&format!("{}:", net.ip(3))) {
        ("E1", "E2")
    } else {
        ("E2", "E1")
    };
    let ip_of = |e: &str| net.ip(if e == "E1" { 3 } else { 4 });
    let (first_ip, other_ip) = (format!("{}:", ip_of(first)), format!("{}:", ip_of(other)));
    std::thread::sleep(Duration::from_secs(3));

    let first_pid = net.daemon(first).pid();
    let hung = Instant::now();
    signal(first_pid, "-STOP");
    let moved = wait_count(&c1, &["receiving video from edge", &other_ip], 1);
    let hang_move = moved.duration_since(hung).as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    signal(first_pid, "-CONT");
    // The woken edge drops the session the client cancelled and serves again.
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    net.daemon_mut(other).kill();
    let back = wait_count(&c1, &["receiving video from edge", &first_ip], 2);
    let kill_move = back.duration_since(killed).as_secs_f64();

    let st = finish(&mut c1, &stats, secs);
    let p = probe(&rec);
    let audio = audio_track(&rec);
    let edges = st["edges"].to_string();
    println!(
        "[{}] SIGSTOP of {first}: client receiving from {other} after {hang_move:.3} s; kill -9 of {other}: back on {first} after {kill_move:.3} s; recording: {}; client: switches {}, suspicions {} (cleared {}), gap peak {} ms, gaps {}, missing chunks {}, duplicates {}, reorderings {}, raw repeated {} ms, raw trimmed {} packets, raw datagrams {}, audio {audio}, edges {edges}; test {:.1} s",
        mode.flag(),
        show(&p),
        st["switches"],
        st["suspicions"],
        st["suspicions_cleared"],
        st["gap_peak_ms"],
        st["gaps"],
        st["missing_chunks"],
        st["duplicates"],
        st["reorderings"],
        st["raw_repeated_ms"],
        st["raw_trimmed_packets"],
        st["raw_datagrams"],
        t0.elapsed().as_secs_f64()
    );
    assert!(
        st["switches"].as_u64().unwrap() >= 2,
        "fewer than two switches"
    );
    assert!(
        edges.contains(&other_ip) && edges.contains(&first_ip),
        "{edges}"
    );
    assert!(p.frames > 0 && p.first_key, "{p:?}");
    // Video after both faults is in the recording.
    assert!(
        p.duration > 12.0,
        "recording of {:.2} s did not go on after the switches",
        p.duration
    );
    if mode == Mode::Native {
        assert_eq!(st["duplicates"], 0);
        assert_eq!(st["reorderings"], 0);
    }
    assert_eq!(
        p.dts_backwards,
        0,
        "video repeated or reordered: {}",
        show(&p)
    );
    assert_eq!(audio, "48000,1", "the recording's sound");
}
both_relays!(edge_hang_then_death_move_the_client);

/// Drain of an edge (native relay): SIGTERM on the client's edge makes it tell the client (a
/// drain notice) and keep feeding it until the client has moved to the other edge
/// make-before-break; the edge then exits by itself, well before its bound. The edge is started
/// again, and the other edge is stopped the same way: the client moves back. Across both
/// drains and the restart the client loses no chunk and hands the player no duplicate and no
/// reordering. Times (SIGTERM to the client's first video from the other edge, to the edge's
/// exit) are printed, not asserted.
#[test]
fn edge_drain_moves_the_client_without_loss_and_a_restart_costs_nothing() {
    if common::prereq::lacking(
        "edge_drain_moves_the_client_without_loss_and_a_restart_costs_nothing",
        &[common::prereq::FFPROBE],
    ) {
        return;
    }
    let t0 = Instant::now();
    let mode = Mode::Native;
    let mut net = Net::start_on(125, 1, mode, &["E1", "E2"]);
    let secs = 24;
    let (mut c1, rec, stats) = net.client("C1", secs);
    let line = c1.wait_for(&["receiving video from edge"], WAIT);
    let (first, other) = if line.contains(&format!("{}:", net.ip(3))) {
        ("E1", "E2")
    } else {
        ("E2", "E1")
    };
    let ip_of = |e: &str| net.ip(if e == "E1" { 3 } else { 4 });
    let (first_ip, other_ip) = (format!("{}:", ip_of(first)), format!("{}:", ip_of(other)));
    std::thread::sleep(Duration::from_secs(3));

    // Drain 1: the client's edge.
    let mut figures = Vec::new();
    for (round, (leaving, target, target_ip)) in [
        (first, other, other_ip.clone()),
        (other, first, first_ip.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        let stopped = Instant::now();
        sigterm(net.daemon(leaving).pid());
        let moved = wait_count(&c1, &["receiving video from edge", &target_ip], 1 + round);
        let code = net.daemon_mut(leaving).wait_exit(Duration::from_secs(10));
        let exited = stopped.elapsed().as_secs_f64();
        let d = net.daemon(leaving);
        assert_eq!(
            code,
            Some(0),
            "{leaving} did not exit by itself; log:\n{}",
            d.log().join("\n")
        );
        // Its last lines (the log reader may lag behind the exit a little).
        d.wait_for(&["edge drained: every client left"], WAIT);
        d.wait_for(
            &["drained: every child and local client moved elsewhere"],
            WAIT,
        );
        d.wait_for(&["shut down"], WAIT);
        assert!(
            d.matching(&["drain timed out"]).is_empty(),
            "{leaving} hit its drain bound"
        );
        figures.push(format!(
            "SIGTERM of {leaving}: client receiving from {target} after {:.3} s, {leaving} exited after {exited:.3} s",
            moved.duration_since(stopped).as_secs_f64()
        ));
        if round == 0 {
            // Restart: the edge comes back and the client's next move goes to it.
            net.start_edge_again(leaving, mode);
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    assert_eq!(
        c1.matching(&["edge draining: moving to the next-best edge"])
            .len(),
        2,
        "the client did not take both drain notices; log:\n{}",
        c1.log().join("\n")
    );

    let st = finish(&mut c1, &stats, secs);
    let p = probe(&rec);
    println!(
        "[drain] {}; recording: {}; client: switches {}, drain notices {} (repeated {}, ignored {}), suspicions {}, gaps {}, missing chunks {}, duplicates {}, reorderings {}, edges {}; test {:.1} s",
        figures.join("; "),
        show(&p),
        st["switches"],
        st["drain_notices"],
        st["drain_notices_repeated"],
        st["drain_notices_ignored"],
        st["suspicions"],
        st["gaps"],
        st["missing_chunks"],
        st["duplicates"],
        st["reorderings"],
        st["edges"],
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(st["drain_notices"], 2);
    assert_eq!(st["drain_notices_ignored"], 0);
    assert!(st["switches"].as_u64().unwrap() >= 2);
    assert_eq!(st["missing_chunks"], 0, "chunks lost across the drains");
    assert_eq!(st["gaps"], 0, "holes across the drains");
    assert_eq!(st["duplicates"], 0);
    assert_eq!(st["reorderings"], 0);
    assert!(p.frames > 0 && p.first_key, "{p:?}");
    assert!(p.duration > 15.0, "recording of {:.2} s", p.duration);
    net.stop_all();
}
