//! Media gap at a consumer when the active relay dies (kill -9), hangs (SIGSTOP) or its link
//! is cut silently (nftables drop on loopback, root only): real daemons on loopback in the
//! diamond of tests/overlay_stream.rs (S1 - O1 - {O2, O3} - O4), a test consumer on O4, a
//! fresh overlay per trial (addresses 127.74.N.x). Each fault is measured under the default
//! liveness (stall suspicion) and under the old rule (`--no-suspicion`: only
//! the 1 s dead timer), side by side in one run.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::consumer::{analyse, Consumer, Received};
use crate::common::diamond::{self, Diamond};
use crate::common::some_video;
use crate::report::{f1, max, median, pct, Report, Table};
use crate::Opts;

const WAIT: Duration = Duration::from_secs(20);
/// Goal for every fault under the default liveness: BFD's 3 x 50 ms.
const GOAL_MS: f64 = 150.0;
/// One more inter-chunk gap over this (and over twice the pre-fault maximum) after the fault
/// is a second gap.
const SECOND_GAP: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    Kill,
    Stop,
    /// Every packet between O4 and the chosen middle node dropped, both ways: no close.
    Cut,
    /// SIGTERM: the relay drains (its child moves first), then exits.
    Term,
}

/// An nftables table dropping loopback traffic between two addresses, removed on drop.
struct SilentCut(String);

impl SilentCut {
    fn new(net: u8, a: &str, b: &str) -> Result<SilentCut, String> {
        let table = format!("overlayd_bench_cut_{net}");
        let script = format!(
            "add table ip {table}\n\
             add chain ip {table} out {{ type filter hook output priority 0; }}\n\
             add rule ip {table} out ip saddr {a} ip daddr {b} drop\n\
             add rule ip {table} out ip saddr {b} ip daddr {a} drop\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e} (install nftables, run as root)"))?;
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
        match child.wait() {
            Ok(st) if st.success() => Ok(SilentCut(table)),
            _ => Err("nft refused the drop rules (run as root)".into()),
        }
    }
}

impl Drop for SilentCut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .status();
    }
}

pub fn addr(net: u8, i: u8) -> String {
    format!("127.74.{net}.{i}")
}

/// S1 - O1 - {O2, O3} - O4 on 127.74.`net`.1..5, bootstrapper on .100.
pub fn start_diamond(net: u8) -> Diamond {
    diamond::start("bench", "127.74", net, |_| vec![])
}

struct Trial {
    gap: Duration,
    normal: Duration,
    second_gap: bool,
    missing: u64,
    dup_reord: usize,
    chunks_per_s: f64,
}

fn trial(net: u8, fault: Fault, old_rule: bool) -> Result<Trial, String> {
    // The old rule: no stall suspicion, or (SIGTERM) no drain.
    let old = if fault == Fault::Term {
        "--drain-ms=0"
    } else {
        "--no-suspicion"
    };
    let mut ov = match old_rule {
        true => diamond::start("bench", "127.74", net, |_| vec![old]),
        false => start_diamond(net),
    };
    let video = some_video();
    let psk = overlayd::keyfile::load(&ov.key).unwrap().psk;
    let o4 = format!("{}:7701", addr(net, 5)).parse().unwrap();
    ov.daemon("O4").wait_for(&["neighbour up", "O2"], WAIT);
    ov.daemon("O4").wait_for(&["neighbour up", "O3"], WAIT);
    let consumer = Consumer::start(o4, psk, "TestConsumer", &video);
    if !consumer.wait_chunks(50, WAIT) {
        return Err("no stream reached the consumer".into());
    }
    let chosen = ov.daemon("O4").wait_for(&["parent chosen"], WAIT);
    let middle = if chosen.contains("O2") { "O2" } else { "O3" };
    // Steady state before the fault, for the normal inter-chunk gap.
    std::thread::sleep(Duration::from_millis(1500));
    if !ov.daemon("O4").matching(&["switching parent"]).is_empty() {
        return Err("O4 switched parent before the fault".into());
    }
    let middle_ip = addr(net, if middle == "O2" { 3 } else { 4 });
    let mut cut = None;
    let pid = ov.daemon(middle).pid() as i32;
    // The fault's instant is when it holds: a signal is delivered by the call; the drop rules
    // hold once nft returns (starting it takes milliseconds, during which chunks still pass).
    let fault_at = match fault {
        Fault::Kill => {
            ov.daemon(middle).kill();
            Instant::now()
        }
        Fault::Stop => signal(pid, libc::SIGSTOP),
        Fault::Cut => {
            cut = Some(SilentCut::new(net, &addr(net, 5), &middle_ip)?);
            Instant::now()
        }
        Fault::Term => signal(pid, libc::SIGTERM),
    };
    std::thread::sleep(OBSERVE);
    let rx = consumer.received();
    let _ = consumer.stop();
    drop(cut);
    let o4 = ov.daemon("O4");
    let moved = ["failover", "suspected", "parent draining"];
    if moved.iter().all(|m| o4.matching(&[m]).is_empty()) {
        return Err(format!("O4 logged no failover after the fault on {middle}"));
    }
    Ok(measure(&rx, fault_at))
}

/// Sends `sig` to `pid`; returns the instant it was sent.
fn signal(pid: i32, sig: i32) -> Instant {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
    Instant::now()
}

/// How long each trial watches the consumer after the fault: the old rule's 1 s dead
/// timer, and room for a second gap after it.
const OBSERVE: Duration = Duration::from_secs(3);

fn measure(rx: &[Received], fault_at: Instant) -> Trial {
    let before: Vec<&Received> = rx.iter().filter(|r| r.at <= fault_at).collect();
    let after: Vec<&Received> = rx.iter().filter(|r| r.at > fault_at).collect();
    let gaps = |v: &[&Received]| -> Vec<Duration> {
        v.windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .collect()
    };
    let window: Vec<&Received> = before
        .iter()
        .copied()
        .filter(|r| fault_at.duration_since(r.at) < Duration::from_secs(1))
        .collect();
    let normal = gaps(&window).into_iter().max().unwrap_or_default();
    // The gap: the longest silence from the last chunk before the fault on. Not just the
    // first one across the fault instant: chunks already on their way (in O4's socket, or
    // read but not yet forwarded) still arrive after it, and the stall comes next.
    let across: Vec<&Received> = before
        .last()
        .into_iter()
        .chain(after.iter())
        .copied()
        .collect();
    let after_gaps = gaps(&across);
    let gap = match after.is_empty() {
        true => Duration::MAX,
        false => after_gaps.iter().copied().max().unwrap_or_default(),
    };
    let threshold = SECOND_GAP.max(normal * 2);
    let second_gap = after_gaps.iter().filter(|g| **g > threshold).count() > 1;
    let d = analyse(rx);
    let span = window
        .last()
        .zip(window.first())
        .map(|(l, f)| l.at.duration_since(f.at).as_secs_f64())
        .unwrap_or(0.0);
    Trial {
        gap,
        normal,
        second_gap,
        missing: d.missing,
        dup_reord: d.duplicates + d.reorderings,
        chunks_per_s: if span > 0.0 {
            (window.len() - 1) as f64 / span
        } else {
            0.0
        },
    }
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("failover gap at a consumer");
    let mut t = Table::new(
        "Media gap at a consumer when the active relay fails",
        "every fault, default rules: <= 150 ms p95 over 20 trials, never a second gap, 0 dup+reord; \
         SIGTERM (drain): 0 chunks lost",
        "Real daemons on loopback, diamond S1 - O1 - {O2, O3} - O4 (tests/overlay_stream.rs), a test \
         consumer on O4 records the arrival of every chunk; the fault hits the middle node O4 chose. \
         Gap = longest inter-chunk gap from the last chunk before the fault (the signal sent, or the \
         drop rules in place) through the 3 s observed after it (chunks already on their way still \
         arrive first, so it is never below the stream's own rhythm); normal = longest inter-chunk \
         gap in the second before the fault (the stream's own floor); a second gap is one more \
         inter-chunk gap over max(100 ms, 2 x normal) in those 3 s. A silent cut drops every \
         packet between O4 and the middle node with nftables (root). A fresh overlay per trial; \
         default timers (ping 200 ms, dead 1000 ms). \"default\" = stall suspicion (a parent silent \
         for 2 x the stream's mean chunk gap, at least 25 ms, is probed; unanswered for 30 ms + RTT \
         it is left make-before-break, its link probed every 50 ms only when no other parent can \
         take over) and drain on \
         SIGTERM (children moved make-before-break before the exit, at most 2 s); \"old rule\" = \
         --no-suspicion, or --drain-ms=0 for SIGTERM (exit at once).",
        &[
            "fault",
            "liveness",
            "trials ok",
            "gap p50 ms",
            "gap p95 ms",
            "gap max ms",
            "normal p50 ms",
            "second gap",
            "chunks lost (total)",
            "dup+reord",
            "chunks/s",
        ],
    );
    let n = if opts.quick { 3 } else { 20 };
    let root = unsafe { libc::geteuid() } == 0;
    let mut net = 1u8;
    for (fault, fault_label) in [
        (Fault::Kill, "kill -9"),
        (Fault::Stop, "SIGSTOP"),
        (Fault::Cut, "silent cut"),
        (Fault::Term, "SIGTERM (drain)"),
    ] {
        for old_rule in [false, true] {
            let rule = if old_rule { "old rule" } else { "default" };
            let label = format!("{fault_label}, {rule}");
            if fault == Fault::Cut && !root {
                if !old_rule {
                    t.verdict(
                        false,
                        format!("{label}: not measured: the silent cut needs root (nftables)."),
                    );
                }
                continue;
            }
            let mut trials = Vec::new();
            let mut failed = Vec::new();
            for i in 0..n {
                let r = trial(net, fault, old_rule);
                net = net.wrapping_add(1).max(1);
                match r {
                    Ok(tr) => {
                        println!(
                        "  {label} trial {i}: gap {:.1} ms (normal {:.1} ms), second gap {}, lost {}",
                        tr.gap.as_secs_f64() * 1e3,
                        tr.normal.as_secs_f64() * 1e3,
                        tr.second_gap,
                        tr.missing
                    );
                        trials.push(tr);
                    }
                    Err(e) => {
                        println!("  {label} trial {i}: not measured: {e}");
                        failed.push(e);
                    }
                }
            }
            let ms = |f: &dyn Fn(&Trial) -> Duration| -> Vec<f64> {
                trials.iter().map(|x| f(x).as_secs_f64() * 1e3).collect()
            };
            let gaps = ms(&|x| x.gap);
            let normals = ms(&|x| x.normal);
            let rates: Vec<f64> = trials.iter().map(|x| x.chunks_per_s).collect();
            t.row(vec![
                fault_label.into(),
                rule.into(),
                format!("{}/{}", trials.len(), n),
                f1(median(&gaps)),
                f1(pct(&gaps, 95.0)),
                f1(max(&gaps)),
                f1(median(&normals)),
                format!(
                    "{} of {}",
                    trials.iter().filter(|x| x.second_gap).count(),
                    trials.len()
                ),
                trials.iter().map(|x| x.missing).sum::<u64>().to_string(),
                trials
                    .iter()
                    .map(|x| x.dup_reord)
                    .sum::<usize>()
                    .to_string(),
                f1(median(&rates)),
            ]);
            let p95 = pct(&gaps, 95.0);
            let lost: u64 = trials.iter().map(|x| x.missing).sum();
            let seconds = trials.iter().filter(|x| x.second_gap).count();
            let dups: usize = trials.iter().map(|x| x.dup_reord).sum();
            if !old_rule {
                let drain = fault == Fault::Term;
                t.verdict(
                    trials.len() == n
                        && p95 <= GOAL_MS
                        && seconds == 0
                        && dups == 0
                        && (!drain || lost == 0),
                    format!(
                        "{label}: {}/{n} trials measured, p95 {p95:.0} ms (goal {GOAL_MS:.0} ms), \
                         {seconds} second gaps, {dups} dup+reord{}.",
                        trials.len(),
                        if drain {
                            format!(", {lost} chunks lost (goal 0)")
                        } else {
                            String::new()
                        }
                    ),
                );
                if p95.is_nan() || p95 > GOAL_MS {
                    t.note(format!(
                        "{label}: to improve, compare the node-side gap \
                         (overlayd_stream_last_failover_gap_seconds) with the consumer's, and \
                         O4's suspicion log line (silent_ms, peak_gap_ms) with the stream's \
                         normal gap."
                    ));
                }
            }
            for e in failed {
                t.note(format!("{label}: a trial was not measured: {e}"));
            }
        }
    }
    rep.add(t);
}

/// One server-death trial on the two-server overlay S1 - O1 - O3 - O2 - S2 (both serving the
/// same clips; tests/overlay_stream.rs), a test consumer on O3: kill -9 of the server feeding
/// it. Gap = last chunk of the dead server's stream to the first of the other server's; lost =
/// chunks skipped within an epoch. `withdraw` false runs every daemon with
/// `--no-route-withdrawal` (the old behaviour: routes expire); `ffmpeg` runs the servers with
/// `--source ffmpeg` (the old source: ffprobe, then an ffmpeg child) instead of `auto` (the
/// built-in paced reader for these clips).
fn server_death_trial(net: u8, withdraw: bool, ffmpeg: bool) -> Result<Trial, String> {
    let extra = move |name: &str| {
        let mut v = vec![];
        if !withdraw {
            v.push("--no-route-withdrawal");
        }
        if ffmpeg && name.starts_with('S') {
            v.extend(["--source", "ffmpeg"]);
        }
        v
    };
    let mut ov = diamond::two_servers("bench-sd", "127.74", net, extra);
    let video = some_video();
    let psk = overlayd::keyfile::load(&ov.key).unwrap().psk;
    let o3 = format!("{}:7701", addr(net, 5)).parse().unwrap();
    ov.daemon("O3").wait_for(&["neighbour up", "O1"], WAIT);
    ov.daemon("O3").wait_for(&["neighbour up", "O2"], WAIT);
    // A flood of each server (every second) has reached O3.
    std::thread::sleep(Duration::from_millis(1500));
    let consumer = Consumer::start(o3, psk, "TestConsumer", &video);
    if !consumer.wait_chunks(50, WAIT) {
        return Err("no stream reached the consumer".into());
    }
    let chosen = ov.daemon("O3").wait_for(&["parent chosen"], WAIT);
    let server = if chosen.contains("server=S1") {
        "S1"
    } else {
        "S2"
    };
    std::thread::sleep(Duration::from_millis(1500));
    if !ov.daemon("O3").matching(&["switching parent"]).is_empty() {
        return Err("O3 switched parent before the fault".into());
    }
    let old_epoch = consumer.received().last().map(|r| r.epoch);
    let fault_at = Instant::now();
    ov.daemon(server).kill();
    std::thread::sleep(Duration::from_secs(3));
    let rx = consumer.received();
    let _ = consumer.stop();
    let last_old = rx.iter().rfind(|r| Some(r.epoch) == old_epoch);
    let first_new = rx
        .iter()
        .find(|r| r.at > fault_at && Some(r.epoch) != old_epoch);
    let (Some(last_old), Some(first_new)) = (last_old, first_new) else {
        return Err(format!(
            "not fed by the other server after kill -9 of {server}"
        ));
    };
    let mut t = measure(&rx, fault_at);
    t.gap = first_new.at.duration_since(last_old.at);
    Ok(t)
}

/// "Server death, video on another server", old (expiry) and new (withdrawal) side by side.
pub fn run_server_death(opts: &Opts, rep: &mut Report) {
    rep.start("server death, video on another server");
    let mut t = Table::new(
        "Media gap at a consumer when the server feeding it dies and another server has the video",
        "fed by the other server within 100 ms of the kill (issue 13 item 4)",
        "Real daemons on loopback, S1 - O1 - O3 - O2 - S2, both servers serving the same clips \
         (tests/overlay_stream.rs); a test consumer on O3; kill -9 of the server O3 is fed from. \
         Gap = last chunk of the dead server's stream to the first chunk of the other server's \
         (its source starts cold); lost = chunks skipped within an epoch. Old: every daemon with \
         --no-route-withdrawal (routes to the dead server expire after ~3.5 s); new: its \
         neighbour floods a withdrawal. Source: `auto` (the default; the built-in paced reader \
         for these .ts clips, no child process) or `--source ffmpeg` (ffprobe of the file, then \
         an ffmpeg child), the old source start. A fresh overlay per trial.",
        &[
            "behaviour",
            "trials ok",
            "gap p50 ms",
            "gap p95 ms",
            "gap max ms",
            "chunks lost (total)",
            "dup+reord",
        ],
    );
    let n = if opts.quick { 5 } else { 20 };
    let mut net = 101u8;
    let mut p50s = Vec::new();
    for (withdraw, ffmpeg, label) in [
        (false, true, "old: routes expire, ffmpeg source"),
        (true, true, "route withdrawal, ffmpeg source"),
        (true, false, "new: route withdrawal, paced source (auto)"),
    ] {
        let mut trials = Vec::new();
        let mut failed = Vec::new();
        for i in 0..n {
            let r = server_death_trial(net, withdraw, ffmpeg);
            net = net.wrapping_add(1).max(101);
            match r {
                Ok(tr) => {
                    println!(
                        "  server death ({label}) trial {i}: gap {:.1} ms, lost {}",
                        tr.gap.as_secs_f64() * 1e3,
                        tr.missing
                    );
                    trials.push(tr);
                }
                Err(e) => {
                    println!("  server death ({label}) trial {i}: not measured: {e}");
                    failed.push(e);
                }
            }
        }
        let gaps: Vec<f64> = trials.iter().map(|x| x.gap.as_secs_f64() * 1e3).collect();
        t.row(vec![
            label.into(),
            format!("{}/{}", trials.len(), n),
            f1(median(&gaps)),
            f1(pct(&gaps, 95.0)),
            f1(max(&gaps)),
            trials.iter().map(|x| x.missing).sum::<u64>().to_string(),
            trials
                .iter()
                .map(|x| x.dup_reord)
                .sum::<usize>()
                .to_string(),
        ]);
        p50s.push(median(&gaps));
        if withdraw && !ffmpeg {
            let p95 = pct(&gaps, 95.0);
            let dups: usize = trials.iter().map(|x| x.dup_reord).sum();
            t.verdict(
                trials.len() == n && p95 <= 100.0 && dups == 0,
                format!(
                    "{label}: {}/{n} trials measured, fed by the other server {p95:.0} ms after \
                     the kill at p95 (goal 100 ms), {dups} dup+reord.",
                    trials.len()
                ),
            );
        }
        for e in failed {
            t.note(format!("{label}: a trial was not measured: {e}"));
        }
    }
    if let [_, ffmpeg, paced] = p50s[..] {
        t.note(format!(
            "With route withdrawal the ffmpeg source's gap p50 is {ffmpeg:.0} ms and the paced \
             source's {paced:.0} ms: the difference, {:.0} ms, is the other server's cold \
             source start (ffprobe of the file, then ffmpeg's first chunk).",
            ffmpeg - paced
        ));
    }
    rep.add(t);
}
