//! The network-namespace emulation harness shared by the fault, restart, routed and netns
//! tests: an `Emu` run of `overlayd netns` under a run id of its own (random, taken only when
//! no namespace or directory bears it, so concurrent runs never touch each other) with its own
//! base directory (torn down on drop, kept when the test fails), log helpers that follow a
//! device's parent for a video, headless recording clients (no `--bind`, as in CORE; on their
//! first edge unless told otherwise) sampled every 20 ms with their status lines parsed, and
//! the checks and `GAP` report lines made from what they received.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlayd::emulate::{netns, Underlay};
use overlayd::topology::{self, DeviceRole};

use super::BIN;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `test` cannot run here (not root, no `ip netns`, or no ffprobe, with which the
/// recordings of [`Received::check`] are decoded): reported by the one skip policy of
/// [`super::prereq`] (a failure under CI), and the test returns at once. Tests that record
/// nothing ask `prereq` for [`Need::Netns`](super::prereq::Need::Netns) alone.
pub fn skip(test: &str) -> bool {
    use super::prereq::{lacking, Need, FFPROBE};
    lacking(test, &[Need::Netns, FFPROBE])
}

pub fn sleep(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

// ---------------------------------------------------------------------------------------------
// Log lines

/// The value of `key=` in a tracing line (quotes removed).
pub fn field(line: &str, key: &str) -> Option<String> {
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

pub fn about(line: &str, video: &str) -> bool {
    field(line, "video").as_deref() == Some(video)
}

/// The device's current parent for `video` according to its log (None: no stream).
pub fn parent_in(log: &str, video: &str) -> Option<String> {
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
pub fn final_counter(log: &str, video: &str, key: &str) -> Option<u64> {
    log.lines()
        .rfind(|l| l.contains("final stream counters") && about(l, video))
        .and_then(|l| field(l, key))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// One emulation run

pub struct Emu {
    pub test: &'static str,
    pub base: PathBuf,
    pub id: String,
    /// The topology built by `up` (None for a bare run the test builds itself).
    net: Option<Net>,
}

struct Net {
    t: topology::Topology,
    u: Underlay,
    ns: Vec<String>,
}

impl Emu {
    /// A run id and an empty base directory; nothing built yet (the test runs `up` itself).
    ///
    /// The id is the tag and random hex digits (8 characters in all), and is taken only when
    /// no namespace and no base directory of that id exist: other sessions run emulations on
    /// the same machine at the same time, and everything a run creates (namespaces, links,
    /// processes, files) is named after its id, so a run never touches another run's things.
    pub fn new(test: &'static str, tag: &str) -> Emu {
        assert!(
            !tag.is_empty() && tag.len() <= 3 && netns::valid_run_id(tag),
            "tag {tag:?}: 1 to 3 lower-case letters or digits"
        );
        let width = 8 - tag.len();
        loop {
            let r: u32 = rand::random();
            let id = format!("{tag}{:0width$x}", r & ((1 << (4 * width)) - 1));
            let base = std::env::temp_dir().join(format!("overlayd-emu-{id}"));
            let hub = netns::hub_ns(&id);
            let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
            let taken = String::from_utf8_lossy(&ns.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .any(|n| n == hub || n.starts_with(&format!("{hub}-")));
            // create_dir (not _all) fails when the directory exists: the id is ours alone.
            if taken || std::fs::create_dir(&base).is_err() {
                continue;
            }
            return Emu {
                test,
                base,
                id,
                net: None,
            };
        }
    }

    /// Build `topology` (a file of topology/) as namespaces; `start`: start the bootstrapper
    /// and every server and node (else nothing). Edges use the built-in relay, which numbers
    /// the datagrams, so the clients can count duplicates.
    pub fn up(test: &'static str, tag: &str, topo: &str, start: bool) -> Emu {
        Emu::up_with(test, tag, topo, start, "native", &[])
    }

    /// `up` with the edges' relay (`native` or `ffmpeg`) and more arguments for
    /// `overlayd netns up` (e.g. `--daemon-args`).
    pub fn up_with(
        test: &'static str,
        tag: &str,
        topo: &str,
        start: bool,
        relay: &str,
        extra: &[&str],
    ) -> Emu {
        let mut emu = Emu::new(test, tag);
        let path = repo().join("topology").join(topo);
        let t = topology::load(&path).unwrap();
        let u = Underlay::from_topology(&t).unwrap();
        let ns = netns::host_namespaces(&emu.id, &u);
        emu.net = Some(Net { t, u, ns });
        let p = path.display().to_string();
        let videos = repo().join("videos").display().to_string();
        let id = emu.id.clone();
        let mut args = vec![
            "up", &p, "--run-id", &id, "--videos", &videos, "--relay", relay,
        ];
        if !start {
            args.push("--no-start");
        }
        args.extend(extra);
        emu.ok(&args);
        emu
    }

    /// `netns up PATH` under this run id with `--no-start`: the namespaces and the underlay,
    /// no daemon (the test starts what it needs).
    pub fn up_no_start(&self, path: &Path) -> String {
        let p = path.to_str().unwrap();
        self.ok(&["up", p, "--run-id", &self.id, "--no-start"])
    }

    fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("this Emu was not built by Emu::up: it knows no topology")
    }

    /// The topology and underlay of a run built by `up`.
    pub fn topology(&self) -> &topology::Topology {
        &self.net().t
    }

    pub fn underlay(&self) -> &Underlay {
        &self.net().u
    }

    /// The namespace of a host of a run built by `up`.
    pub fn ns_of(&self, name: &str) -> &str {
        &self.net().ns[self.host(name)]
    }

    /// The namespaces of this run that exist now (hub and hosts).
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let hub = netns::hub_ns(&self.id);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n == hub || n.starts_with(&format!("{hub}-")))
            .map(str::to_string)
            .collect()
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("netns")
            .args(args)
            .env(netns::BASE_DIR_ENV, &self.base)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// `overlayd netns ARGS --run ID`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
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

    pub fn run_dir(&self) -> PathBuf {
        self.base.join(&self.id)
    }

    pub fn log(&self, device: &str) -> String {
        std::fs::read_to_string(self.run_dir().join("logs").join(format!("{device}.log")))
            .unwrap_or_default()
    }

    pub fn mark(&self, device: &str) -> usize {
        self.log(device).len()
    }

    /// Wait for a line of `device`'s log after byte `from` containing every part; returns it.
    pub fn wait_log(&self, device: &str, from: usize, parts: &[&str], secs: f64) -> String {
        self.wait_log_any(device, from, &[parts], secs)
    }

    /// The first line (from byte `from` of `device`'s log) that has all the parts of one of
    /// `alternatives`, waiting up to `secs`.
    pub fn wait_log_any(
        &self,
        device: &str,
        from: usize,
        alternatives: &[&[&str]],
        secs: f64,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let text = self.log(device);
            if let Some(l) = text.get(from..).unwrap_or("").lines().find(|l| {
                alternatives
                    .iter()
                    .any(|parts| parts.iter().all(|p| l.contains(p)))
            }) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {device} logged no line with {alternatives:?} within {secs} s; its log:\n{text}",
                self.test
            );
            sleep(0.02);
        }
    }

    /// Start every server and node of a `--no-start` run except `skip`, bootstrapper first.
    pub fn start_all_but(&self, skip: &[&str]) {
        self.ok(&["start", netns::BOOTSTRAPPER]);
        for d in self.overlay_devices() {
            if !skip.contains(&d.as_str()) {
                self.ok(&["start", &d]);
            }
        }
    }

    pub fn host(&self, name: &str) -> usize {
        self.net().u.host(name).unwrap().0
    }

    pub fn overlay_devices(&self) -> Vec<String> {
        self.net()
            .u
            .hosts
            .iter()
            .filter(|h| h.role != DeviceRole::Client)
            .map(|h| h.name.clone())
            .collect()
    }

    pub fn is_edge(&self, name: &str) -> bool {
        self.net().u.hosts[self.host(name)].role == DeviceRole::Edge
    }

    /// Every overlay neighbour of the given devices logged "neighbour up" (or 20 s).
    pub fn wait_neighbours(&self, devices: &[&str]) {
        for d in devices {
            let t = &self.net().t;
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
    pub fn client(&self, name: &str, video: &str, secs: u32) -> Client {
        self.client_with(name, name, video, secs, &[])
    }

    /// A client whose files (recording, stats, log) are named `stem` (a second life of the
    /// same client needs other files), with more arguments.
    ///
    /// Unless `extra` says `--edge`, the client is given its first edge (`--edge IP`): it
    /// starts there and leaves it only when it dies. With `auto` a client may start on its
    /// other edge, reached through routers, since both answer within a millisecond here; the
    /// fault tests cut links next to a client's own edge and count on its path not crossing
    /// them (the automatic choice is tested in tests/edge_client.rs).
    pub fn client_with(
        &self,
        name: &str,
        stem: &str,
        video: &str,
        secs: u32,
        extra: &[&str],
    ) -> Client {
        let first_edge: Vec<String> = if extra.contains(&"--edge") {
            Vec::new()
        } else {
            let t = &self.net().t;
            let dev = t.devices().find(|d| d.name == name).expect("a device");
            dev.neighbours
                .first()
                .map(|n| vec!["--edge".to_string(), n.ip.to_string()])
                .unwrap_or_default()
        };
        let dir = self.run_dir();
        let rec = dir.join(format!("{stem}.ts"));
        let stats = dir.join(format!("{stem}.json"));
        let log = std::fs::File::create(dir.join("logs").join(format!("{stem}.log"))).unwrap();
        let out_path = dir.join("logs").join(format!("{stem}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns_of(name), BIN])
            .args(["--role", "client", "--name", name, "--bootstrap"])
            .arg(self.net().u.bootstrap_ip.to_string())
            .args(["--video", video, "--player", "none", "--duration"])
            .arg(secs.to_string())
            .arg("--record")
            .arg(&rec)
            .arg("--stats-json")
            .arg(&stats)
            .args(first_edge)
            .args(extra)
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
            name: stem.to_string(),
            video: video.to_string(),
            secs,
            child: Some(child),
            rec,
            stats,
            out: out_path,
            samples,
            stop,
            sampler: Some(sampler),
        }
    }

    /// The relay among `candidates` that feeds the most edges serving clients `video` now.
    pub fn active_relay(&self, video: &str, candidates: &[&str]) -> (String, Vec<String>) {
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
    pub fn port_rates(&self, secs: f64) -> Vec<(String, f64)> {
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
        // The id was free when this run took it (see `new`), so whatever bears it is ours.
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

pub struct Client {
    pub name: String,
    pub video: String,
    pub secs: u32,
    pub child: Option<Child>,
    pub rec: PathBuf,
    pub stats: PathBuf,
    /// The client's stdout: its status lines (plain mode, every 2 s) and the summary.
    pub out: PathBuf,
    pub samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    pub stop: Arc<AtomicBool>,
    pub sampler: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    /// Wait until the recording has `bytes` (or panic after `secs`).
    pub fn wait_bytes(&self, bytes: u64, secs: f64) {
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
    pub fn wait_growth_after(&self, t: Instant, secs: f64) -> Instant {
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

    /// The client's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            self.rec
                .parent()
                .unwrap()
                .join("logs")
                .join(format!("{}.log", self.name)),
        )
        .unwrap_or_default()
    }

    /// The client's stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Wait (up to `secs`) for a status line printed after byte `from` of stdout in which
    /// `ok` holds for the edge table; returns that table. Panics with the last status line.
    pub fn wait_edges(
        &self,
        from: usize,
        secs: f64,
        what: &str,
        ok: impl Fn(&[EdgeRow]) -> bool,
    ) -> Vec<EdgeRow> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let out = self.stdout();
            let lines: Vec<&str> = out
                .get(from..)
                .unwrap_or("")
                .lines()
                .filter(|l| l.starts_with("edges "))
                .collect();
            if let Some(t) = lines.iter().map(|l| edge_rows(l)).find(|t| ok(t)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no status line within {secs} s in which {what}; last one: {:?}",
                self.name,
                lines.last().copied().unwrap_or("(none)")
            );
            sleep(0.05);
        }
    }

    /// SIGTERM: the client stops as at the end of `--duration` (stats written).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", c.id())])
                .status();
        }
    }

    /// Wait for the client to exit; returns what it received.
    pub fn finish(mut self) -> Received {
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

/// One edge of a client's status line: `*10.0.4.1:7702:rtt=0.5ms:loss=0%:up`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRow {
    pub addr: String,
    pub chosen: bool,
    /// Milliseconds; None before the first probe ack (`rtt=-`).
    pub rtt_ms: Option<f64>,
    pub loss_pct: f64,
    pub up: bool,
}

impl EdgeRow {
    /// Up with a finite round-trip time.
    pub fn answers(&self) -> bool {
        self.up && self.rtt_ms.is_some_and(f64::is_finite)
    }
}

/// The edges of a status line (`edges A B ... video=...`).
pub fn edge_rows(line: &str) -> Vec<EdgeRow> {
    line.split_whitespace()
        .skip(1)
        .take_while(|w| !w.starts_with("video="))
        .filter_map(|w| {
            let (chosen, w) = match w.strip_prefix('*') {
                Some(rest) => (true, rest),
                None => (false, w),
            };
            let parts: Vec<&str> = w.rsplitn(4, ':').collect();
            let [state, loss, rtt, addr] = parts.as_slice() else {
                return None;
            };
            Some(EdgeRow {
                addr: addr.to_string(),
                chosen,
                rtt_ms: rtt
                    .strip_prefix("rtt=")?
                    .strip_suffix("ms")
                    .and_then(|v| v.parse().ok()),
                loss_pct: loss
                    .strip_prefix("loss=")?
                    .trim_end_matches('%')
                    .parse()
                    .ok()?,
                up: *state == "up",
            })
        })
        .collect()
}

/// Seconds since the Unix epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-02T00:06:52.435934Z ...`).
pub fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<f64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [h, min, sec]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Decoded video frames (ffprobe), or an error line.
pub fn ffprobe_frames(path: &PathBuf) -> Result<u64, String> {
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

pub struct Received {
    pub name: String,
    pub video: String,
    pub ok: bool,
    pub log: String,
    pub stats: serde_json::Value,
    pub samples: Vec<(Instant, u64)>,
    pub frames: Result<u64, String>,
}

impl Received {
    pub fn n(&self, key: &str) -> u64 {
        self.stats[key].as_u64().unwrap_or(u64::MAX)
    }

    /// The longest time without growth across `t` (a growth after `t`, the one before it
    /// before `until`).
    pub fn stall_across(&self, t: Instant, until: Option<Instant>) -> Option<Duration> {
        self.samples
            .windows(2)
            .filter(|w| w[1].0 > t && until.map_or(true, |u| w[0].0 < u))
            .map(|w| w[1].0 - w[0].0)
            .max()
    }

    /// The longest time without growth before `t` (from 2 s after the first byte).
    pub fn normal_stall(&self, t: Instant) -> Duration {
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
    pub fn check(&self, test: &str, min_chunks: u64) {
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
pub fn report(test: &str, fault: &str, r: &Received, t: Instant, until: Option<Instant>) {
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
