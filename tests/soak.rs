//! Soak: a mid-size overlay on loopback (127.78.0.x, no root needed) — a bootstrapper, 2 servers,
//! 10 relays and 4 edges, all real `overlayd` processes with real ffmpeg sources — while 8 client
//! names join, leave (SIGTERM or the end of `--duration`) and fail (kill -9) at random, seeded.
//! Every daemon's RSS, open fds and child processes are sampled from /proc during the run.
//!
//! At the end it checks, and prints a table of:
//! - memory and fds are flat: over the churn window after a warm-up, the median of the last
//!   quarter of the samples is within the tolerance of the first quarter's (RSS: +25 % + 4 MiB;
//!   fds: +8), and the four quarter medians do not grow monotonically (RSS by more than
//!   10 % + 1 MiB, fds by more than 2);
//! - every client that left by itself got its stream: chunks ≥ 12 per second watched after a
//!   3 s start, no duplicate, no reordering, a clean exit;
//! - after the last client left, nothing flows: every daemon's route table and edge sessions
//!   empty, no ffmpeg source left, every `source started` matched by `source stopped`, and
//!   the link byte counters of every daemon (control endpoint `/status`) unchanged over 3 s;
//! - no daemon died.
//!
//! - the liveness counters (failovers, switches away from a suspected parent, suspicions) are
//!   printed; no overlay daemon is faulted, so with `SOAK_STRESS=N` (N busy loops at nice 0
//!   saturating the CPU) any failover or such switch is a false alarm and fails the run.
//!
//! `SOAK_SECS` (default 75) is the churn time, `SOAK_SEED` the seed (default: a fixed seed,
//! `CI_SEED`, when `SOAK_SECS` is not set, as in the suite; otherwise the clock; it is printed), `SOAK_NET` the loopback /24 (default 127.78.0), `SOAK_KEEP=1` keeps the run directory (kept anyway when a check fails),
//! `OVERLAYD_BIN` the binary of the daemons and clients. The 30-minute run is a README command:
//! `cargo build --release && OVERLAYD_BIN=target/release/overlayd SOAK_SECS=1800 cargo test
//! --test soak -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The binary under test: `OVERLAYD_BIN` (e.g. a release build for the long run) or the one
/// cargo built for this test.
fn bin() -> String {
    std::env::var("OVERLAYD_BIN").unwrap_or_else(|_| common::BIN.to_string())
}

/// The /24 of loopback the run uses: `SOAK_NET` (default 127.78.0), so two runs can coexist.
fn net() -> String {
    std::env::var("SOAK_NET").unwrap_or_else(|_| "127.78.0".to_string())
}

fn boot() -> String {
    format!("{}.100", net())
}
const VIDEOS: [&str; 3] = ["alpha", "bravo", "charlie"];
const CLIENTS: usize = 8;
/// The slowest clip delivers about 26 chunks per second; half of that is the floor.
const MIN_CHUNKS_PER_S: f64 = 12.0;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn sleep(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

// ---------------------------------------------------------------------------------------------
// The topology: S1, S2 on top, O1..O10 in three layers, E1..E4, C1..C8 with two edges each.

fn addr(name: &str) -> String {
    let n: u32 = name[1..].parse().unwrap();
    let last = match &name[..1] {
        "S" => n,
        "O" => 10 + n,
        "E" => 20 + n,
        "C" => 30 + n,
        _ => unreachable!(),
    };
    format!("{}.{last}", net())
}

fn links() -> Vec<(&'static str, &'static str)> {
    vec![
        ("S1", "O1"),
        ("S1", "O2"),
        ("S2", "O3"),
        ("S2", "O4"),
        ("O1", "O2"),
        ("O2", "O3"),
        ("O3", "O4"),
        ("O1", "O5"),
        ("O1", "O6"),
        ("O2", "O6"),
        ("O2", "O7"),
        ("O3", "O7"),
        ("O4", "O8"),
        ("O5", "O6"),
        ("O7", "O8"),
        ("O5", "O9"),
        ("O6", "O9"),
        ("O6", "O10"),
        ("O7", "O10"),
        ("O8", "O10"),
        ("O9", "E1"),
        ("O5", "E1"),
        ("O9", "E2"),
        ("O10", "E2"),
        ("O10", "E3"),
        ("O7", "E3"),
        ("O8", "E4"),
        ("O10", "E4"),
    ]
}

fn overlay_names() -> Vec<String> {
    let mut v = vec!["S1".to_string(), "S2".to_string()];
    v.extend((1..=10).map(|i| format!("O{i}")));
    v.extend((1..=4).map(|i| format!("E{i}")));
    v
}

fn client_edges(i: usize) -> [String; 2] {
    let a = (i - 1) % 4 + 1;
    let b = a % 4 + 1;
    [format!("E{a}"), format!("E{b}")]
}

fn topology_json() -> String {
    let mut m = serde_json::Map::new();
    for name in overlay_names() {
        let neighbours: Vec<String> = links()
            .iter()
            .filter_map(|(a, b)| {
                if *a == name {
                    Some(addr(b))
                } else if *b == name {
                    Some(addr(a))
                } else {
                    None
                }
            })
            .collect();
        let role = match &name[..1] {
            "S" => "server",
            "E" => "edge",
            _ => "node",
        };
        m.insert(
            name.clone(),
            serde_json::json!({"role": role, "edge": role == "edge",
                "addresses": [addr(&name)], "neighbours": neighbours}),
        );
    }
    for i in 1..=CLIENTS {
        let name = format!("C{i}");
        let edges: Vec<String> = client_edges(i).iter().map(|e| addr(e)).collect();
        m.insert(
            name.clone(),
            serde_json::json!({"role": "client", "addresses": [addr(&name)], "neighbours": edges}),
        );
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: f64,
    rss_kib: u64,
    fds: u64,
    children: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// How many processes have each pid as their parent (one scan of /proc).
fn children_by_parent() -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so cut after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            *m.entry(ppid).or_insert(0) += 1;
        }
    }
    m
}

/// `GET path` from a control endpoint; the body.
fn http_get(ip: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:7704").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn status(ip: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(ip, "/status")?).ok()
}

/// Payload bytes moved over links so far (in + out, every neighbour and stream).
fn link_bytes(st: &serde_json::Value) -> u64 {
    st["links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["bytes_in"].as_u64().unwrap_or(0) + l["bytes_out"].as_u64().unwrap_or(0))
        .sum()
}

fn busy(st: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = st["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("route {}", r["stream"]))
        .collect();
    v.extend(
        st["edge"]["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("session {}", s["client"])),
    );
    v
}

// ---------------------------------------------------------------------------------------------
// The run

struct Daemon {
    name: String,
    ip: String,
    child: Child,
    log: PathBuf,
    samples: Vec<Sample>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// Watches until its own `--duration` ends.
    Stays,
    /// SIGTERM at this second of the run.
    Leaves(f64),
    /// kill -9 at this second of the run.
    Fails(f64),
}

struct Session {
    client: usize,
    n: usize,
    video: &'static str,
    start: f64,
    fate: Fate,
    child: Child,
    stats: PathBuf,
    rec: PathBuf,
    log: PathBuf,
}

struct Ended {
    name: String,
    video: &'static str,
    fate: Fate,
    watched: f64,
    ok: bool,
    stats: serde_json::Value,
    log: PathBuf,
}

/// Edge switches in a client's log that took it away from an edge it found stalled or dead
/// (not the ones to a better edge, or away from a busy or draining one).
fn edge_alarms_in(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("edge chosen"))
        .filter(|l| l.contains("reason=\"edge stalled\"") || l.contains("reason=\"edge dead\""))
        .count() as u64
}

impl Ended {
    fn n(&self, k: &str) -> u64 {
        self.stats[k].as_u64().unwrap_or(u64::MAX)
    }
}

struct Run {
    dir: PathBuf,
    t0: Instant,
    daemons: Vec<Daemon>,
    sessions: Vec<Session>,
    ended: Vec<Ended>,
    idle: Vec<usize>,
    next_n: usize,
    failures: Vec<String>,
}

impl Run {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn start_client(&mut self, rng: &mut StdRng, churn_end: f64) {
        if self.idle.is_empty() {
            return;
        }
        let now = self.now();
        let left = churn_end - now;
        if left < 8.0 {
            return;
        }
        let client = self.idle.remove(rng.gen_range(0..self.idle.len()));
        let video = VIDEOS[rng.gen_range(0..VIDEOS.len())];
        let secs = rng
            .gen_range(6.0..40.0_f64)
            .min(left - 1.0)
            .floor()
            .max(6.0);
        let fate = match rng.gen_range(0..4) {
            0 => Fate::Leaves(now + rng.gen_range(3.0..secs)),
            1 => Fate::Fails(now + rng.gen_range(3.0..secs)),
            _ => Fate::Stays,
        };
        self.next_n += 1;
        let n = self.next_n;
        let name = format!("C{client}");
        let rec = self.dir.join(format!("{name}-{n}.ts"));
        let stats = self.dir.join(format!("{name}-{n}.json"));
        let log = self.dir.join("logs").join(format!("{name}-{n}.log"));
        let child = spawn(
            &[
                "--role",
                "client",
                "--name",
                &name,
                "--bind",
                &addr(&name),
                "--bootstrap",
                &boot(),
                "--video",
                video,
                "--player",
                "none",
                "--duration",
                &format!("{secs}"),
                "--record",
                rec.to_str().unwrap(),
                "--stats-json",
                stats.to_str().unwrap(),
            ],
            &log,
        );
        self.sessions.push(Session {
            client,
            n,
            video,
            start: now,
            fate,
            child,
            stats,
            rec,
            log,
        });
    }

    /// Signal the sessions whose fate is due; collect the ones that exited.
    fn tend_clients(&mut self) {
        let now = self.now();
        let mut i = 0;
        while i < self.sessions.len() {
            let s = &mut self.sessions[i];
            match s.fate {
                Fate::Leaves(at) if now >= at => signal_group(s.child.id(), "-TERM"),
                Fate::Fails(at) if now >= at => signal_group(s.child.id(), "-KILL"),
                _ => {}
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                let s = self.sessions.remove(i);
                let stats = std::fs::read_to_string(&s.stats)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(serde_json::Value::Null);
                // Recordings are not needed afterwards; the disk stays small over 30 minutes.
                let _ = std::fs::remove_file(&s.rec);
                self.ended.push(Ended {
                    name: format!("C{}-{}", s.client, s.n),
                    video: s.video,
                    fate: s.fate,
                    watched: now - s.start,
                    ok: st.success(),
                    stats,
                    log: s.log,
                });
                self.idle.push(s.client);
            } else {
                i += 1;
            }
        }
    }

    fn sample(&mut self) {
        let at = self.now();
        let kids = children_by_parent();
        for d in &mut self.daemons {
            let pid = d.child.id();
            if let (Some(rss_kib), Some(fds)) = (rss_kib(pid), fd_count(pid)) {
                d.samples.push(Sample {
                    at,
                    rss_kib,
                    fds,
                    children: kids.get(&pid).copied().unwrap_or(0),
                });
            }
        }
    }

    fn fail(&mut self, what: String) {
        println!("FAIL {what}");
        self.failures.push(what);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for s in &self.sessions {
            signal_group(s.child.id(), "-KILL");
        }
        for d in &self.daemons {
            signal_group(d.child.id(), "-KILL");
        }
        for s in &mut self.sessions {
            let _ = s.child.wait();
        }
        for d in &mut self.daemons {
            let _ = d.child.wait();
        }
        if !self.failures.is_empty()
            || std::thread::panicking()
            || std::env::var_os("SOAK_KEEP").is_some()
        {
            eprintln!("soak: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The medians of four consecutive quarters of `xs`.
fn quarter_medians(xs: &[u64]) -> [u64; 4] {
    let q = xs.len() / 4;
    let mut out = [0; 4];
    for (i, o) in out.iter_mut().enumerate() {
        let end = if i == 3 { xs.len() } else { (i + 1) * q };
        *o = median(&mut xs[i * q..end].to_vec());
    }
    out
}

fn increasing(m: &[u64; 4]) -> bool {
    m.windows(2).all(|w| w[1] > w[0])
}

/// `SOAK_STRESS` busy loops at nice 0 (the test's own threads) competing with the daemons for
/// the CPU for the whole run; they stop when this is dropped.
struct Stress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stress {
    fn start(n: usize) -> Stress {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        if n > 0 {
            println!("soak: {n} busy loop(s) at nice 0 saturate the CPU");
        }
        Stress { stop, threads }
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The seed of the suite's soak run.
const CI_SEED: u64 = 20261202;

#[test]
fn soak_churn_keeps_memory_fds_flat_and_stops_every_stream() {
    // The servers run ffmpeg sources (`--source ffmpeg`), which probe with ffprobe.
    if common::prereq::lacking(
        "soak_churn_keeps_memory_fds_flat_and_stops_every_stream",
        &[common::prereq::FFMPEG, common::prereq::FFPROBE],
    ) {
        return;
    }
    let secs = env_u64("SOAK_SECS").unwrap_or(75).max(30) as f64;
    // The suite's run (no SOAK_SECS) always replays the same seed, so a CI failure repeats; a
    // long run by hand draws one from the clock unless SOAK_SEED is given (printed either way).
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        if std::env::var_os("SOAK_SECS").is_none() {
            CI_SEED
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        }
    });
    let sample_every = (secs / 120.0).clamp(1.0, 10.0);
    let warmup = (secs * 0.2).max(20.0);
    println!(
        "soak: {secs} s of churn, seed {seed} (SOAK_SEED={seed} repeats it), samples every {sample_every} s, warm-up {warmup} s"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let stress = env_u64("SOAK_STRESS").unwrap_or(0) as usize;
    let _stress = Stress::start(stress);

    let dir = std::env::temp_dir().join(format!("overlayd-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let topo = dir.join("topology.json");
    std::fs::write(&topo, topology_json()).unwrap();
    let key = dir.join("overlayd.key");
    common::keygen(&key);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    let mut run = Run {
        dir: dir.clone(),
        t0: Instant::now(),
        daemons: Vec::new(),
        sessions: Vec::new(),
        ended: Vec::new(),
        idle: (1..=CLIENTS).collect(),
        next_n: 0,
        failures: Vec::new(),
    };
    let boot_log = dir.join("logs").join("bootstrapper.log");
    let boot_child = spawn(
        &[
            "--role",
            "bootstrapper",
            "--topology",
            topo.to_str().unwrap(),
            "--bind",
            &boot(),
        ],
        &boot_log,
    );
    run.daemons.push(Daemon {
        name: "bootstrapper".into(),
        ip: boot(),
        child: boot_child,
        log: boot_log,
        samples: Vec::new(),
    });
    for name in overlay_names() {
        let log = dir.join("logs").join(format!("{name}.log"));
        let ip = addr(&name);
        let videos = repo.join("videos").join(&name);
        let b = boot();
        let mut args = vec![
            "--role",
            if name.starts_with('S') {
                "server"
            } else {
                "node"
            },
            "--name",
            &name,
            "--bind",
            &ip,
            "--bootstrap",
            &b,
            "--key-file",
            key.to_str().unwrap(),
        ];
        let v = videos.to_str().unwrap().to_string();
        if name.starts_with('S') {
            // ffmpeg children, so that their lifecycle is soaked too (auto would pick the
            // built-in paced reader for these clips).
            args.extend(["--videos", &v, "--source", "ffmpeg"]);
        } else {
            args.extend(["--relay", "native"]);
        }
        let child = spawn(&args, &log);
        run.daemons.push(Daemon {
            name: name.clone(),
            ip,
            child,
            log,
            samples: Vec::new(),
        });
    }
    // Every link up at both ends (or 30 s), then a few floods.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up: usize = run
            .daemons
            .iter()
            .map(|d| {
                std::fs::read_to_string(&d.log)
                    .unwrap_or_default()
                    .matches("neighbour up")
                    .count()
            })
            .sum();
        if up >= 2 * links().len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {up} of {} neighbour ends up after 30 s; logs in {}",
            2 * links().len(),
            dir.display()
        );
        sleep(0.1);
    }
    sleep(2.0);
    println!(
        "soak: overlay up ({} daemons, {} links) after {:.1} s",
        run.daemons.len(),
        links().len(),
        run.now()
    );

    // Churn. The clock restarts so the warm-up and quarters are about the churn window.
    run.t0 = Instant::now();
    let churn_end = secs;
    for _ in 0..4 {
        run.start_client(&mut rng, churn_end);
    }
    let mut next_sample = 0.0;
    let mut next_event = rng.gen_range(0.5..4.0);
    let mut max_active = 0;
    // Long runs say how they go now and then.
    let progress_every = (secs / 10.0).max(60.0);
    let mut next_progress = progress_every;
    while run.now() < churn_end || !run.sessions.is_empty() {
        let now = run.now();
        if now >= next_progress {
            next_progress += progress_every;
            let rss: u64 = run
                .daemons
                .iter()
                .filter_map(|d| d.samples.last())
                .map(|s| s.rss_kib)
                .sum();
            println!(
                "soak: {now:.0} s: {} sessions ended, {} watching; daemons' RSS {:.1} MiB in all",
                run.ended.len(),
                run.sessions.len(),
                rss as f64 / 1024.0
            );
        }
        if now >= next_sample {
            run.sample();
            next_sample += sample_every;
        }
        if now >= next_event && now < churn_end {
            run.start_client(&mut rng, churn_end);
            next_event = now + rng.gen_range(0.5..4.0);
        }
        run.tend_clients();
        max_active = max_active.max(run.sessions.len());
        for d in &mut run.daemons {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!(
                    "{} died during the soak ({st}); logs in {}",
                    d.name,
                    dir.display()
                );
            }
        }
        assert!(
            now < churn_end + 60.0,
            "clients still running 60 s after the churn ended"
        );
        sleep(0.1);
    }
    let last_left = run.now();
    println!(
        "soak: churn over; {} client sessions (at most {max_active} at once); the last one left at {last_left:.1} s",
        run.ended.len()
    );

    // After the last client left: every route, session and source goes away…
    let quiet_deadline = Instant::now() + Duration::from_secs(20);
    let mut leftovers;
    loop {
        leftovers = Vec::new();
        let kids = children_by_parent();
        for d in run.daemons.iter().filter(|d| d.name != "bootstrapper") {
            match status(&d.ip) {
                Some(st) => {
                    for b in busy(&st) {
                        leftovers.push(format!("{}: {b}", d.name));
                    }
                }
                None => leftovers.push(format!("{}: no /status", d.name)),
            }
            if let Some(k) = kids.get(&d.child.id()) {
                leftovers.push(format!("{}: {k} child process(es)", d.name));
            }
        }
        if leftovers.is_empty() || Instant::now() > quiet_deadline {
            break;
        }
        sleep(0.25);
    }
    let quiet_after = run.now() - last_left;
    if !leftovers.is_empty() {
        run.fail(format!(
            "20 s after the last client left, still busy: {leftovers:?}"
        ));
    } else {
        println!("soak: every route, edge session and source gone {quiet_after:.1} s after the last client left");
    }
    // No relay, edge or server was faulted: every failover, and every switch away from a
    // suspected parent, was a false alarm. Checked when the machine is saturated on purpose
    // (SOAK_STRESS); printed always.
    let (mut failovers, mut suspected_switches, mut suspicions, mut cleared, mut retries) =
        (0, 0, 0, 0, 0);
    for d in run.daemons.iter().filter(|d| d.name != "bootstrapper") {
        let Some(st) = status(&d.ip) else { continue };
        for c in st["streams"].as_array().into_iter().flatten() {
            let n = |k: &str| c["counters"][k].as_u64().unwrap_or(0);
            failovers += n("failovers");
            suspected_switches += n("suspected_switches");
            suspicions += n("suspicions");
            cleared += n("suspicions_cleared");
            retries += n("parent_retries");
        }
    }
    println!(
        "soak: liveness with {stress} busy loop(s) at nice 0: {failovers} failovers, \
         {suspected_switches} switches away from a suspected parent, {suspicions} suspicions \
         ({cleared} cleared by the parent speaking again), {retries} requests moved on from a \
         parent that had not fed yet (setup races: not a failover); no overlay daemon was faulted"
    );
    if stress > 0 && failovers + suspected_switches > 0 {
        run.fail(format!(
            "false alarms under load: {failovers} failovers, {suspected_switches} switches away \
             from a suspected parent, with no overlay daemon faulted"
        ));
    }
    // …and no byte moves on any link.
    let before: Vec<u64> = run
        .daemons
        .iter()
        .skip(1)
        .map(|d| status(&d.ip).map_or(0, |s| link_bytes(&s)))
        .collect();
    // The counters are cumulative: zero here would mean the check sees nothing.
    let total: u64 = before.iter().sum();
    if total == 0 {
        run.fail("the link counters show no traffic at all during the soak".into());
    }
    sleep(3.0);
    let moving: Vec<String> = run
        .daemons
        .iter()
        .skip(1)
        .zip(&before)
        .filter_map(|(d, b)| {
            let a = status(&d.ip).map_or(0, |s| link_bytes(&s));
            (a != *b).then(|| format!("{}: {} bytes in 3 s", d.name, a.saturating_sub(*b)))
        })
        .collect();
    if !moving.is_empty() {
        run.fail(format!(
            "media still moves after the last client left: {moving:?}"
        ));
    }
    let mut unstopped = Vec::new();
    for d in run.daemons.iter().filter(|d| d.name.starts_with('S')) {
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        let (started, stopped) = (
            log.matches("source started").count(),
            log.matches("source stopped").count(),
        );
        println!(
            "soak: {}: sources started {started}, stopped {stopped}",
            d.name
        );
        if started != stopped {
            unstopped.push(format!(
                "{}: {started} sources started, {stopped} stopped",
                d.name
            ));
        }
    }
    for u in unstopped {
        run.fail(u);
    }

    // Memory and fds.
    println!();
    println!("daemon        samples  RSS first-q  last-q  change   fds first-q last-q  children max  verdict");
    let mut flat_failures = Vec::new();
    for d in &run.daemons {
        let xs: Vec<&Sample> = d
            .samples
            .iter()
            .filter(|s| s.at >= warmup && s.at <= churn_end)
            .collect();
        if xs.len() < 8 {
            flat_failures.push(format!(
                "{}: only {} samples after the warm-up",
                d.name,
                xs.len()
            ));
            continue;
        }
        let rss = quarter_medians(&xs.iter().map(|s| s.rss_kib).collect::<Vec<_>>());
        let fds = quarter_medians(&xs.iter().map(|s| s.fds).collect::<Vec<_>>());
        let kids = d.samples.iter().map(|s| s.children).max().unwrap_or(0);
        let mut verdict = Vec::new();
        if rss[3] as f64 > rss[0] as f64 * 1.25 + 4096.0 {
            verdict.push("RSS grew");
        }
        if increasing(&rss) && rss[3] as f64 > rss[0] as f64 * 1.10 + 1024.0 {
            verdict.push("RSS grows monotonically");
        }
        if fds[3] > fds[0] + 8 {
            verdict.push("fds grew");
        }
        if increasing(&fds) && fds[3] > fds[0] + 2 {
            verdict.push("fds grow monotonically");
        }
        println!(
            "{:<12} {:>8}  {:>8.1} MiB {:>6.1}  {:>+5.1}%  {:>9} {:>6}  {:>12}  {}",
            d.name,
            xs.len(),
            rss[0] as f64 / 1024.0,
            rss[3] as f64 / 1024.0,
            (rss[3] as f64 / rss[0] as f64 - 1.0) * 100.0,
            fds[0],
            fds[3],
            kids,
            if verdict.is_empty() {
                "flat".to_string()
            } else {
                verdict.join(", ")
            }
        );
        if !verdict.is_empty() {
            flat_failures.push(format!(
                "{}: {} (RSS quarter medians {rss:?} KiB, fds {fds:?})",
                d.name,
                verdict.join(", ")
            ));
        }
    }
    for f in flat_failures {
        run.fail(f);
    }

    // Clients.
    let mut counts = BTreeMap::new();
    let mut rates = Vec::new();
    let (mut dup, mut reord, mut epochs, mut switches, mut edge_alarms) = (0, 0, 0, 0, 0);
    let mut bad = Vec::new();
    for e in &run.ended {
        let kind = match e.fate {
            Fate::Stays => "stayed to the end",
            Fate::Leaves(_) => "left (SIGTERM)",
            Fate::Fails(_) => "failed (kill -9)",
        };
        *counts.entry(kind).or_insert(0) += 1;
        if let Fate::Fails(_) = e.fate {
            continue;
        }
        let chunks = e.n("chunks");
        let rate = chunks as f64 / e.watched;
        rates.push((rate, e.name.clone(), e.video));
        let need = (MIN_CHUNKS_PER_S * (e.watched - 3.0)).max(1.0) as u64;
        if !e.ok || chunks < need || e.n("duplicates") != 0 || e.n("reorderings") != 0 {
            bad.push(format!(
                "{} ({}, {kind}, watched {:.1} s, exit ok {}): chunks {chunks} (need {need}), stats {}; log {}",
                e.name,
                e.video,
                e.watched,
                e.ok,
                e.stats,
                e.log.display()
            ));
        } else {
            dup += e.n("duplicates");
            reord += e.n("reorderings");
            epochs += e.n("epoch_changes");
            switches += e.n("switches");
            edge_alarms += edge_alarms_in(&e.log);
        }
    }
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!();
    println!("client sessions: {counts:?}");
    if let (Some(lo), Some(mid)) = (rates.first(), rates.get(rates.len() / 2)) {
        println!(
            "chunks per second watched (sessions that ended by themselves): lowest {:.1} ({} {}), median {:.1}; duplicates {dup}, reorderings {reord}, epoch changes {epochs}, edge switches {switches} ({edge_alarms} away from an edge found stalled or dead)",
            lo.0, lo.1, lo.2, mid.0
        );
    }
    // No edge was faulted either: a client leaving its edge as stalled or dead is a false alarm.
    if stress > 0 && edge_alarms > 0 {
        run.fail(format!(
            "false alarms under load: {edge_alarms} client switches away from an edge found \
             stalled or dead, with no edge faulted"
        ));
    }
    for b in bad {
        run.fail(format!("client {b}"));
    }
    println!(
        "after the last client left: quiet after {quiet_after:.1} s; link bytes moving over 3 s: {} (of {:.1} MB carried in all)",
        if moving.is_empty() { "none" } else { "SOME" },
        total as f64 / 1e6
    );
    let verdict = if run.failures.is_empty() {
        "RESULT: ok".to_string()
    } else {
        format!("RESULT: {} failure(s)", run.failures.len())
    };
    println!("{verdict} (seed {seed})");
    assert!(
        counts.values().sum::<i32>() >= 6,
        "too few client sessions: {counts:?}"
    );
    assert!(run.failures.is_empty(), "{:#?}", run.failures);
}
