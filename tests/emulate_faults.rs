//! Fault tests in network namespaces: the real binary, real ffmpeg sources, headless clients
//! recording what they receive. Each test builds a topology with the netns emulator, starts
//! two or more clients, injects a fault (kill -9 or SIGSTOP of the active relay, a silent cut
//! on the active path, the chain case, late starts, restarts, everybody leaving), and checks
//! from the clients' stats JSON (duplicates and reorderings 0), the recordings (ffprobe
//! decodes them) and the daemons' logs and final counters that the overlay recovered.
//!
//! Gaps are measured at the clients and printed (and appended to
//! `$CARGO_TARGET_TMPDIR/emulate_faults_gaps.txt`): *stall* is the longest time a recording
//! did not grow across the fault (sampled every 20 ms), *normal* the same before the fault
//! (the sources deliver in bursts of about 0.35 s, so that is the floor), *lost* the chunks
//! missing in sequence (one chunk is about 35 ms of these clips).
//!
//! A failed test keeps its run directory (logs, recordings, stats) and says where;
//! `OVERLAYD_TEST_KEEP=1` keeps it always.
//!
//! Needs root and `ip netns` (CI runs as root); otherwise every test prints SKIPPED and
//! returns. Each test streams for 10 to 20 s; they are independent and run in parallel.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlayd::emulate::{netns, Underlay};
use overlayd::topology::{self, DeviceRole};

const BIN: &str = env!("CARGO_BIN_EXE_overlayd");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip(test: &str) -> bool {
    match netns::unavailable_reason() {
        Some(why) => {
            println!("SKIPPED {test}: the netns emulator is unavailable here: {why}");
            eprintln!("SKIPPED {test}: the netns emulator is unavailable here: {why}");
            true
        }
        None => false,
    }
}

fn sleep(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

// ---------------------------------------------------------------------------------------------
// Log lines

/// The value of `key=` in a tracing line (quotes removed).
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    let v = if let Some(r) = rest.strip_prefix('"') {
        r.split('"').next().unwrap_or("")
    } else {
        rest.split(' ').next().unwrap_or("")
    };
    Some(v.to_string())
}

fn about(line: &str, video: &str) -> bool {
    field(line, "video").as_deref() == Some(video)
}

/// The device's current parent for `video` according to its log (None: no stream).
fn parent_in(log: &str, video: &str) -> Option<String> {
    let mut p = None;
    for l in log.lines() {
        if l.starts_with("=== overlayd netns: start") {
            p = None; // a new life
        }
        if !about(l, video) {
            continue;
        }
        if l.contains("parent chosen")
            || l.contains("failover: parent lost")
            || l.contains("parent switch complete")
            || l.contains("grandfather connected")
        {
            p = field(l, "parent");
        } else if l.contains("failover: only parent lost, asking a grandfather") {
            p = field(l, "grandfather");
        } else if l.contains("failover: only parent lost, dialling a grandfather") {
            // Several may be dialled; the first to connect logs "grandfather connected".
            p = None;
        } else if l.contains("stream stopped") || l.contains("no parent and no grandfather") {
            p = None;
        }
    }
    p
}

/// A counter of the last `final stream counters` line of `video` in a log.
fn final_counter(log: &str, video: &str, key: &str) -> Option<u64> {
    log.lines()
        .rfind(|l| l.contains("final stream counters") && about(l, video))
        .and_then(|l| field(l, key))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// One emulation run

struct Emu {
    test: &'static str,
    base: PathBuf,
    id: String,
    t: topology::Topology,
    u: Underlay,
    ns: Vec<String>,
}

impl Emu {
    /// Build `topology` (a file of topology/) as namespaces; `start`: start the bootstrapper
    /// and every server and node (else nothing).
    fn up(test: &'static str, tag: &str, topo: &str, start: bool) -> Emu {
        let id = format!("{tag}{:x}", std::process::id() & 0xfff);
        let base = std::env::temp_dir().join(format!("overlayd-faults-{id}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let path = repo().join("topology").join(topo);
        let t = topology::load(&path).unwrap();
        let u = Underlay::from_topology(&t).unwrap();
        let ns = netns::host_namespaces(&id, &u);
        let emu = Emu {
            test,
            base,
            id,
            t,
            u,
            ns,
        };
        let p = path.display().to_string();
        let videos = repo().join("videos").display().to_string();
        let id = emu.id.clone();
        // The built-in relay numbers the datagrams, so the clients can count duplicates.
        let mut args = vec![
            "up", &p, "--run-id", &id, "--videos", &videos, "--relay", "native",
        ];
        if !start {
            args.push("--no-start");
        }
        emu.ok(&args);
        emu
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("netns")
            .args(args)
            .env(netns::BASE_DIR_ENV, &self.base)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// `overlayd netns ARGS --run ID`, which must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend(["--run", &self.id]);
        let o = self.cmd(&a);
        assert!(
            o.status.success(),
            "netns {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn run_dir(&self) -> PathBuf {
        self.base.join(&self.id)
    }

    fn log(&self, device: &str) -> String {
        std::fs::read_to_string(self.run_dir().join("logs").join(format!("{device}.log")))
            .unwrap_or_default()
    }

    fn mark(&self, device: &str) -> usize {
        self.log(device).len()
    }

    /// Wait for a line of `device`'s log after byte `from` containing every part; returns it.
    fn wait_log(&self, device: &str, from: usize, parts: &[&str], secs: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let text = self.log(device);
            if let Some(l) = text
                .get(from..)
                .unwrap_or("")
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {device} logged no line with {parts:?} within {secs} s; its log:\n{text}",
                self.test
            );
            sleep(0.02);
        }
    }

    fn host(&self, name: &str) -> usize {
        self.u.host(name).unwrap().0
    }

    fn overlay_devices(&self) -> Vec<String> {
        self.u
            .hosts
            .iter()
            .filter(|h| h.role != DeviceRole::Client)
            .map(|h| h.name.clone())
            .collect()
    }

    fn is_edge(&self, name: &str) -> bool {
        self.u.hosts[self.host(name)].role == DeviceRole::Edge
    }

    /// Every overlay neighbour of the given devices logged "neighbour up" (or 20 s).
    fn wait_neighbours(&self, devices: &[&str]) {
        for d in devices {
            let t = &self.t;
            let dev = t.devices().find(|x| x.name == *d).unwrap();
            for n in &dev.neighbours {
                let owner = t.owners_of(n.ip).next().unwrap();
                if devices.contains(&owner.name.as_str()) {
                    self.wait_log(
                        d,
                        0,
                        &["neighbour up", &format!("neighbour={} ", owner.name)],
                        20.0,
                    );
                }
            }
        }
    }

    /// Start a headless client recording `video` for `secs` seconds.
    fn client(&self, name: &str, video: &str, secs: u32) -> Client {
        let dir = self.run_dir();
        let rec = dir.join(format!("{name}.ts"));
        let stats = dir.join(format!("{name}.json"));
        let log = std::fs::File::create(dir.join("logs").join(format!("{name}.log"))).unwrap();
        let out = std::fs::File::create(dir.join("logs").join(format!("{name}.out"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[self.host(name)], BIN])
            .args(["--role", "client", "--name", name, "--bootstrap"])
            .arg(self.u.bootstrap_ip.to_string())
            .args(["--video", video, "--player", "none", "--duration"])
            .arg(secs.to_string())
            .arg("--record")
            .arg(&rec)
            .arg("--stats-json")
            .arg(&stats)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2, rec2) = (samples.clone(), stop.clone(), rec.clone());
        let sampler = std::thread::spawn(move || {
            let mut last = 0;
            while !stop2.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&rec2).map(|m| m.len()).unwrap_or(0);
                if size > last {
                    last = size;
                    s2.lock().unwrap().push((Instant::now(), size));
                }
                sleep(0.02);
            }
        });
        Client {
            name: name.to_string(),
            video: video.to_string(),
            secs,
            child: Some(child),
            rec,
            stats,
            samples,
            stop,
            sampler: Some(sampler),
        }
    }

    /// The relay among `candidates` that feeds the most edges serving clients `video` now.
    fn active_relay(&self, video: &str, candidates: &[&str]) -> (String, Vec<String>) {
        let mut fed: Vec<(String, String)> = Vec::new();
        for e in self.overlay_devices().iter().filter(|d| self.is_edge(d)) {
            let log = self.log(e);
            let opened = log
                .lines()
                .filter(|l| l.contains("client session opened") && about(l, video))
                .count();
            let closed = log
                .lines()
                .filter(|l| l.contains("client session closed") && about(l, video))
                .count();
            if opened > closed {
                if let Some(p) = parent_in(&log, video) {
                    fed.push((p, e.clone()));
                }
            }
        }
        let best = candidates
            .iter()
            .max_by_key(|c| fed.iter().filter(|(p, _)| p == *c).count())
            .unwrap()
            .to_string();
        let edges: Vec<String> = fed
            .iter()
            .filter(|(p, _)| *p == best)
            .map(|(_, e)| e.clone())
            .collect();
        assert!(
            !edges.is_empty(),
            "{}: no edge serving {video} is fed by one of {candidates:?}: {fed:?}",
            self.test
        );
        (best, edges)
    }

    /// Bytes per second through each hub port (every underlay interface) over `secs`.
    fn port_rates(&self, secs: f64) -> Vec<(String, f64)> {
        let read = || -> Vec<(String, u64)> {
            let o = Command::new("ip")
                .args(["netns", "exec", &netns::hub_ns(&self.id), "sh", "-c"])
                .arg("for i in /sys/class/net/h*; do echo ${i##*/} $(cat $i/statistics/rx_bytes); done")
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(' ')?;
                    Some((a.to_string(), b.trim().parse().ok()?))
                })
                .collect()
        };
        let a = read();
        sleep(secs);
        let b = read();
        a.iter()
            .zip(b.iter())
            .map(|((n, x), (_, y))| (n.clone(), (y - x) as f64 / secs))
            .collect()
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", "--run", &self.id]);
        if std::thread::panicking() || std::env::var_os("OVERLAYD_TEST_KEEP").is_some() {
            eprintln!(
                "{}: logs and recordings kept in {}",
                self.test,
                self.run_dir().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients and their measurements

struct Client {
    name: String,
    video: String,
    secs: u32,
    child: Option<Child>,
    rec: PathBuf,
    stats: PathBuf,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Wait until the recording has `bytes` (or panic after `secs`).
    fn wait_bytes(&self, bytes: u64, secs: f64) {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while self.samples.lock().unwrap().last().map_or(0, |s| s.1) < bytes {
            assert!(
                Instant::now() < deadline,
                "{}: the recording has fewer than {bytes} bytes after {secs} s",
                self.name
            );
            sleep(0.02);
        }
    }

    /// Wait until the recording grows after `t` (the stream came back); returns when.
    fn wait_growth_after(&self, t: Instant, secs: f64) -> Instant {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            if let Some(s) = self.samples.lock().unwrap().iter().find(|s| s.0 > t) {
                return s.0;
            }
            assert!(
                Instant::now() < deadline,
                "{} ({}): no data within {secs} s after the fault",
                self.name,
                self.video
            );
            sleep(0.02);
        }
    }

    /// Wait for the client to exit; returns what it received.
    fn finish(mut self) -> Received {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(self.secs as u64 + 25);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                panic!("{}: the client did not exit", self.name);
            }
            sleep(0.05);
        };
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.take().unwrap().join().unwrap();
        let stats: serde_json::Value = std::fs::read_to_string(&self.stats)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let frames = ffprobe_frames(&self.rec);
        Received {
            name: self.name.clone(),
            video: self.video.clone(),
            ok: status.success(),
            log: std::fs::read_to_string(
                self.rec
                    .parent()
                    .unwrap()
                    .join("logs")
                    .join(format!("{}.log", self.name)),
            )
            .unwrap_or_default(),
            stats,
            samples: self.samples.lock().unwrap().clone(),
            frames,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Decoded video frames (ffprobe), or an error line.
fn ffprobe_frames(path: &PathBuf) -> Result<u64, String> {
    let o = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .map_err(|e| format!("ffprobe: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    // One line per program and per stream: the first number is the count.
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .parse()
        .map_err(|_| format!("ffprobe said {:?}", String::from_utf8_lossy(&o.stdout)))
}

struct Received {
    name: String,
    video: String,
    ok: bool,
    log: String,
    stats: serde_json::Value,
    samples: Vec<(Instant, u64)>,
    frames: Result<u64, String>,
}

impl Received {
    fn n(&self, key: &str) -> u64 {
        self.stats[key].as_u64().unwrap_or(u64::MAX)
    }

    /// The longest time without growth across `t` (a growth after `t`, the one before it
    /// before `until`).
    fn stall_across(&self, t: Instant, until: Option<Instant>) -> Option<Duration> {
        self.samples
            .windows(2)
            .filter(|w| w[1].0 > t && until.map_or(true, |u| w[0].0 < u))
            .map(|w| w[1].0 - w[0].0)
            .max()
    }

    /// The longest time without growth before `t` (from 2 s after the first byte).
    fn normal_stall(&self, t: Instant) -> Duration {
        let Some(first) = self.samples.first() else {
            return Duration::ZERO;
        };
        self.samples
            .windows(2)
            .filter(|w| w[0].0 > first.0 + Duration::from_secs(2) && w[1].0 < t)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The common checks: exited well, enough chunks, no duplicate, no reordering, decodes.
    fn check(&self, test: &str, min_chunks: u64) {
        assert!(
            self.ok,
            "{test}: client {} failed; its log:\n{}",
            self.name, self.log
        );
        assert!(
            self.n("chunks") >= min_chunks,
            "{test}: {} got {} chunks (< {min_chunks}): {}",
            self.name,
            self.n("chunks"),
            self.stats
        );
        assert_eq!(
            self.n("duplicates"),
            0,
            "{test}: {}: {}",
            self.name,
            self.stats
        );
        assert_eq!(
            self.n("reorderings"),
            0,
            "{test}: {}: {}",
            self.name,
            self.stats
        );
        match &self.frames {
            Ok(f) => assert!(
                *f >= self.n("chunks") / 2,
                "{test}: {}'s recording decodes to only {f} frames for {} chunks",
                self.name,
                self.n("chunks")
            ),
            Err(e) => panic!("{test}: {}'s recording does not decode: {e}", self.name),
        }
    }
}

/// Print (and append to the report file) one row per client and fault.
fn report(test: &str, fault: &str, r: &Received, t: Instant, until: Option<Instant>) {
    let stall = r
        .stall_across(t, until)
        .map_or("none".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    let edges: Vec<String> = r.stats["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["edge"].as_str().map(str::to_string))
        .collect();
    let line = format!(
        "{test:<28} {fault:<34} {:<3} {:<7} chunks {:>4}  lost {:>3}  stall {:>7}  normal {:.2} s  epochs {}  dup {} reord {}  frames {}  edges {}",
        r.name,
        r.video,
        r.n("chunks"),
        r.n("missing_chunks"),
        stall,
        r.normal_stall(t).as_secs_f64(),
        r.n("epoch_changes"),
        r.n("duplicates"),
        r.n("reorderings"),
        r.frames.as_ref().map_or("-".to_string(), |f| f.to_string()),
        edges.join(",")
    );
    println!("GAP {line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emulate_faults_gaps.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// The relay faults on scenario 2 (S1 – O1 – {O2, O3} – edges {O4, O5}, clients C1, C2)

#[derive(Clone, Copy, Debug)]
enum RelayFault {
    Kill,
    Hang,
    Cut,
}

fn relay_fault(test: &'static str, tag: &str, fault: RelayFault) {
    let emu = Emu::up(test, tag, "scenario2.json", true);
    emu.wait_neighbours(&["S1", "O1", "O2", "O3", "O4", "O5"]);
    sleep(1.5); // floods: every node knows its routes
    let clients = [emu.client("C1", "alpha", 14), emu.client("C2", "alpha", 14)];
    for c in &clients {
        c.wait_bytes(50_000, 10.0);
    }
    sleep(2.0);
    let (relay, edges) = emu.active_relay("alpha", &["O2", "O3"]);
    let marks: Vec<usize> = edges.iter().map(|e| emu.mark(e)).collect();
    let t = Instant::now();
    let what = match fault {
        RelayFault::Kill => {
            emu.ok(&["kill", &relay]);
            format!("kill -9 {relay}")
        }
        RelayFault::Hang => {
            emu.ok(&["hang", &relay]);
            format!("SIGSTOP {relay}")
        }
        RelayFault::Cut => {
            emu.ok(&["cut", &edges[0], &relay]);
            format!("cut {}–{relay}", edges[0])
        }
    };
    println!("{test}: {what} (it fed {edges:?})");
    // Every edge it fed fails over (the cut: the edge on the cut link).
    let affected = match fault {
        RelayFault::Cut => vec![edges[0].clone()],
        _ => edges.clone(),
    };
    for (e, m) in edges.iter().zip(&marks) {
        if !affected.contains(e) {
            continue;
        }
        let line = emu.wait_log(e, *m, &["failover", "alpha"], 5.0);
        let took = t.elapsed();
        println!("{test}: {e} failed over after {took:?}: {line}");
        match fault {
            // A kill closes the sockets: seen at once.
            RelayFault::Kill => assert!(took < Duration::from_millis(900), "{took:?}"),
            // Silent: seen by keepalive (dead after 1 s of silence).
            _ => assert!(
                took >= Duration::from_millis(500) && took < Duration::from_secs(3),
                "{took:?}"
            ),
        }
        assert_ne!(
            parent_in(&emu.log(e), "alpha").as_deref(),
            Some(relay.as_str())
        );
    }
    for c in &clients {
        c.wait_growth_after(t, 5.0);
    }
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for r in &got {
        r.check(test, 250);
        report(test, &what, r, t, None);
    }
    // The daemons' counters (graceful stop): each affected edge counted its failover.
    if let RelayFault::Hang = fault {
        emu.ok(&["resume", &relay]);
    }
    for e in &affected {
        emu.ok(&["stop", e]);
        let log = emu.log(e);
        let failovers = final_counter(&log, "alpha", "failovers");
        assert!(
            failovers >= Some(1),
            "{test}: {e} counted no failover: {log}"
        );
        assert!(
            final_counter(&log, "alpha", "duplicates").is_some(),
            "{log}"
        );
    }
}

#[test]
fn kill9_of_the_active_relay() {
    if skip("kill9_of_the_active_relay") {
        return;
    }
    relay_fault("kill9_of_the_active_relay", "fk", RelayFault::Kill);
}

#[test]
fn sigstop_of_the_active_relay() {
    if skip("sigstop_of_the_active_relay") {
        return;
    }
    relay_fault("sigstop_of_the_active_relay", "fh", RelayFault::Hang);
}

#[test]
fn silent_cut_on_the_active_path() {
    if skip("silent_cut_on_the_active_path") {
        return;
    }
    relay_fault("silent_cut_on_the_active_path", "fc", RelayFault::Cut);
}

// ---------------------------------------------------------------------------------------------
// The chain case (complex.json: O5 → O8 → O9 → O10, clients C6 and C8 on edge O10)

#[test]
fn chain_parent_then_grandparents_replacement_dies() {
    let test = "chain_parent_then_grandparents_replacement_dies";
    if skip(test) {
        return;
    }
    let emu = Emu::up(test, "fg", "complex.json", true);
    emu.wait_neighbours(&["O5", "O8", "O9", "O10"]);
    sleep(2.0);
    let clients = [emu.client("C6", "alpha", 18), emu.client("C8", "alpha", 18)];
    for c in &clients {
        c.wait_bytes(50_000, 12.0);
    }
    assert_eq!(parent_in(&emu.log("O10"), "alpha").as_deref(), Some("O9"));
    assert_eq!(parent_in(&emu.log("O9"), "alpha").as_deref(), Some("O8"));
    assert_eq!(parent_in(&emu.log("O8"), "alpha").as_deref(), Some("O5"));
    sleep(1.5);
    // The parent dies: O10's only provider; its grandfather O8 is not a neighbour.
    let m = emu.mark("O10");
    let t1 = Instant::now();
    emu.ok(&["kill", "O9"]);
    let l = emu.wait_log("O10", m, &["grandfather=O8", "alpha"], 3.0);
    println!("{test}: O9 killed; O10: {l}");
    for c in &clients {
        c.wait_growth_after(t1, 6.0);
    }
    // O10's grandfathers are now O8's parents: O5.
    sleep(3.0);
    let m = emu.mark("O10");
    let t2 = Instant::now();
    emu.ok(&["kill", "O8"]);
    let l = emu.wait_log("O10", m, &["grandfather=O5", "alpha"], 3.0);
    println!("{test}: O8 killed; O10: {l}");
    for c in &clients {
        c.wait_growth_after(t2, 6.0);
    }
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for r in &got {
        r.check(test, 300);
        report(test, "kill -9 O9 (parent)", r, t1, Some(t2));
        report(test, "then kill -9 O8 (grandparent)", r, t2, None);
    }
    emu.ok(&["stop", "O10"]);
    let log = emu.log("O10");
    assert!(
        final_counter(&log, "alpha", "failovers") >= Some(2),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Start orders, restarts and joins (scenario 2 unless said)

/// Start every server and node of a `--no-start` run except `skip`, bootstrapper first.
fn start_all_but(emu: &Emu, skip: &[&str]) {
    emu.ok(&["start", netns::BOOTSTRAPPER]);
    for d in emu.overlay_devices() {
        if !skip.contains(&d.as_str()) {
            emu.ok(&["start", &d]);
        }
    }
}

#[test]
fn bootstrapper_started_last() {
    let test = "bootstrapper_started_last";
    if skip(test) {
        return;
    }
    let emu = Emu::up(test, "fb", "scenario2.json", false);
    for d in emu.overlay_devices() {
        emu.ok(&["start", &d]);
    }
    let clients = [emu.client("C1", "alpha", 14), emu.client("C2", "bravo", 14)];
    sleep(3.0);
    let t = Instant::now();
    emu.ok(&["start", netns::BOOTSTRAPPER]);
    let mut first = Vec::new();
    for c in &clients {
        first.push(c.wait_growth_after(t, 10.0) - t);
    }
    println!("{test}: first bytes {first:?} after the bootstrapper started");
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for (r, f) in got.iter().zip(first) {
        r.check(test, 150);
        report(
            test,
            &format!("bootstrapper 3 s late; +{:.2} s", f.as_secs_f64()),
            r,
            t,
            None,
        );
    }
}

/// Restart (kill -9, then start with the same name) `device` while C1 and C2 watch.
fn restart(test: &'static str, tag: &str, device: &str) {
    let emu = Emu::up(test, tag, "scenario2.json", true);
    emu.wait_neighbours(&["S1", "O1", "O2", "O3", "O4", "O5"]);
    sleep(1.5);
    let clients = [emu.client("C1", "alpha", 16), emu.client("C2", "alpha", 16)];
    for c in &clients {
        c.wait_bytes(50_000, 10.0);
    }
    sleep(2.0);
    let neighbour = if device == "O1" { "S1" } else { "O1" };
    let m = emu.mark(neighbour);
    let marks: Vec<(String, usize)> = emu
        .overlay_devices()
        .into_iter()
        .map(|d| {
            let m = emu.mark(&d);
            (d, m)
        })
        .collect();
    let t = Instant::now();
    emu.ok(&["restart", device]);
    emu.wait_log(
        neighbour,
        m,
        &["neighbour up", &format!("neighbour={device} ")],
        10.0,
    );
    for c in &clients {
        c.wait_growth_after(t, 10.0);
    }
    // How the overlay got around it (a dead daemon's host still routes, so grandfathers
    // reach past it).
    for (d, m) in &marks {
        for l in emu.log(d)[*m..].lines().filter(|l| l.contains("failover")) {
            println!("{test}: {d}: {l}");
        }
    }
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for r in &got {
        r.check(test, 250);
        report(test, &format!("restart {device}"), r, t, None);
    }
}

#[test]
fn server_restarted() {
    if skip("server_restarted") {
        return;
    }
    restart("server_restarted", "fs", "S1");
}

#[test]
fn node_killed_and_restarted_with_the_same_name() {
    if skip("node_killed_and_restarted_with_the_same_name") {
        return;
    }
    restart("node_killed_and_restarted_with_the_same_name", "fn", "O1");
}

#[test]
fn late_node_join_carries_the_stream() {
    let test = "late_node_join_carries_the_stream";
    if skip(test) {
        return;
    }
    let emu = Emu::up(test, "fj", "scenario2.json", false);
    start_all_but(&emu, &["O3"]);
    emu.wait_neighbours(&["S1", "O1", "O2", "O4", "O5"]);
    sleep(1.5);
    let clients = [emu.client("C1", "alpha", 16), emu.client("C2", "alpha", 16)];
    for c in &clients {
        c.wait_bytes(50_000, 10.0);
    }
    // O3 joins late; then O2, the only relay so far, dies: O3 must carry the stream.
    let m = emu.mark("O1");
    let tj = Instant::now();
    emu.ok(&["start", "O3"]);
    emu.wait_log("O1", m, &["neighbour up", "neighbour=O3 "], 10.0);
    println!("{test}: O3 joined, up with O1 after {:?}", tj.elapsed());
    sleep(2.5);
    let t = Instant::now();
    emu.ok(&["kill", "O2"]);
    for c in &clients {
        c.wait_growth_after(t, 6.0);
    }
    sleep(1.0);
    for e in ["O4", "O5"] {
        if parent_in(&emu.log(e), "alpha").is_some() {
            assert_eq!(
                parent_in(&emu.log(e), "alpha").as_deref(),
                Some("O3"),
                "{e}"
            );
        }
    }
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for r in &got {
        r.check(test, 250);
        report(test, "O3 joins late, then kill -9 O2", r, t, None);
    }
}

#[test]
fn late_server_join_serves_and_takes_over() {
    let test = "late_server_join_serves_and_takes_over";
    if skip(test) {
        return;
    }
    // complex.json: S1 streams videos/S1 (alpha, bravo), S2 videos/S2 (bravo, charlie).
    let emu = Emu::up(test, "fl", "complex.json", false);
    start_all_but(&emu, &["S2"]);
    emu.wait_neighbours(&["S1", "O1", "O3", "O4", "O5", "O6", "O7"]);
    sleep(1.5);
    let bravo = [emu.client("C1", "bravo", 18), emu.client("C5", "bravo", 18)];
    for c in &bravo {
        c.wait_bytes(50_000, 10.0);
    }
    let m = emu.mark("S2");
    let tj = Instant::now();
    emu.ok(&["start", "S2"]);
    emu.wait_log("S2", m, &["neighbour up"], 10.0);
    sleep(2.5);
    // A video only the late server has.
    let charlie = emu.client("C8", "charlie", 8);
    charlie.wait_bytes(20_000, 10.0);
    println!(
        "{test}: S2 joined; charlie flowing {:?} later",
        tj.elapsed()
    );
    // The first server dies: bravo moves to the late one.
    let t = Instant::now();
    emu.ok(&["kill", "S1"]);
    for c in &bravo {
        c.wait_growth_after(t, 8.0);
    }
    let mut got: Vec<Received> = bravo.into_iter().map(Client::finish).collect();
    got.push(charlie.finish());
    for r in &got {
        r.check(test, if r.video == "charlie" { 100 } else { 250 });
        report(test, "S2 joins late, then kill -9 S1", r, t, None);
    }
    for r in &got[..2] {
        assert!(r.n("epoch_changes") >= 1, "{}: {}", r.name, r.stats);
    }
}

#[test]
fn all_clients_leave_and_no_stream_keeps_flowing() {
    let test = "all_clients_leave_and_no_stream_keeps_flowing";
    if skip(test) {
        return;
    }
    let emu = Emu::up(test, "fa", "scenario2.json", true);
    emu.wait_neighbours(&["S1", "O1", "O2", "O3", "O4", "O5"]);
    sleep(1.5);
    let clients = [emu.client("C1", "alpha", 8), emu.client("C2", "bravo", 8)];
    for c in &clients {
        c.wait_bytes(50_000, 10.0);
    }
    let during = emu.port_rates(1.5);
    let busiest = during.iter().map(|p| p.1).fold(0.0, f64::max);
    println!("{test}: busiest underlay port while streaming: {busiest:.0} B/s");
    assert!(busiest > 20_000.0, "video must be visible: {during:?}");
    let t = Instant::now();
    let got: Vec<Received> = clients.into_iter().map(Client::finish).collect();
    for r in &got {
        r.check(test, 150);
        report(test, "clients leave", r, t, None);
    }
    // Every source stops; every device that carried a stream says it stopped.
    for v in ["alpha", "bravo"] {
        emu.wait_log("S1", 0, &["source stopped", v], 10.0);
    }
    let left = Instant::now();
    for d in emu.overlay_devices() {
        let log = emu.log(&d);
        for v in ["alpha", "bravo"] {
            if log
                .lines()
                .any(|l| l.contains("parent chosen") && about(l, v))
            {
                emu.wait_log(&d, 0, &["stream stopped", v], 8.0);
                assert_eq!(parent_in(&emu.log(&d), v), None, "{d} {v}");
            }
        }
    }
    println!(
        "{test}: all streams stopped {:?} after the clients exited",
        left.elapsed() + (left - t)
    );
    // And nothing flows: only keepalives and floods (a few hundred bytes per second).
    let after = emu.port_rates(2.0);
    let busiest = after.iter().map(|p| p.1).fold(0.0, f64::max);
    println!("{test}: busiest underlay port after: {busiest:.0} B/s");
    assert!(
        busiest < 6_000.0,
        "a stream keeps flowing after every client left: {after:?}"
    );
}
