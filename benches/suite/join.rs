//! Join latency: from a client's video request to its first chunk and to its first decodable
//! frame, on a warm path (the edge already streams the video to another client) and a cold
//! 5-hop path (nothing flows; the request climbs E -> O4 -> O3 -> O2 -> O1 -> S1 and the
//! server starts its source), each with the edge's GOP cache on and off (`--gop-cache-bytes 0`,
//! the baseline). Real daemons on 127.91.1.x, light clients (see `edge.rs`) on 127.91.2-3.x.
//! The cold path is measured again with the server's old source start (`--source ffmpeg`:
//! ffprobe, then an ffmpeg child) on a second chain, 127.121.1.x (clients on 127.121.3.x).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use overlayd::wire::client::VIDEO_FLAG_CACHED;

use crate::edge::{runtime, ClientSpec, ClientStats, LightClient, Net};
use crate::report::{f1, median, pct, Report, Table};
use crate::Opts;

/// How long a joining client records: a whole GOP (1 s) plus the cold path's start-up.
const RECORD: Duration = Duration::from_millis(2500);

struct Join {
    first_chunk_ms: f64,
    first_keyframe_ms: Option<f64>,
    /// From ffprobe on what the client received; None when nothing decoded.
    first_frame_ms: Option<f64>,
    cached: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// ffprobe's first decoded video frame in `stats.bytes`, and when its last byte arrived.
/// The frame's data ends where the next video packet starts (or at the end of the file).
/// Byte offsets ffprobe gives for `entry` of the video stream of `file`.
pub fn probe(file: &Path, what: &str, entry: &str) -> Vec<usize> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", what])
        .args(["-show_entries", entry, "-of", "csv=p=0"])
        .arg(file)
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split(',').next()?.trim().parse().ok())
            .collect()
    })
    .unwrap_or_default()
}

fn first_frame_at(stats: &ClientStats, file: &Path) -> Option<Instant> {
    std::fs::write(file, &stats.bytes).ok()?;
    let frame_pos = *probe(file, "-show_frames", "frame=pkt_pos").first()?;
    let end = probe(file, "-show_packets", "packet=pos")
        .into_iter()
        .find(|&p| p > frame_pos)
        .unwrap_or(stats.bytes.len());
    stats
        .arrivals
        .iter()
        .find(|(_, off)| *off >= end)
        .map(|(t, _)| *t)
}

fn join_once(
    rt: &tokio::runtime::Runtime,
    edge: SocketAddr,
    ip: IpAddr,
    stream: u32,
    file: &std::path::Path,
) -> Option<Join> {
    let c = LightClient::spawn(
        rt.handle(),
        ClientSpec {
            bind: ip,
            edge,
            video: "alpha".into(),
            stream,
            record: true,
        },
    );
    // Record RECORD from the first chunk (or give up after 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut until = None;
    while Instant::now() < deadline {
        let first = c.stats.lock().unwrap().first_data;
        if let Some(f) = first {
            let u = *until.get_or_insert(f + RECORD);
            if Instant::now() >= u {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.stop();
    let s = c.snapshot();
    rt.block_on(c.join());
    let req = s.request_sent?;
    let first = s.first_data?;
    Some(Join {
        first_chunk_ms: ms(first - req),
        first_keyframe_ms: s.first_keyframe.map(|t| ms(t - req)),
        first_frame_ms: first_frame_at(&s, file).map(|t| ms(t - req)),
        cached: s.first_flags & VIDEO_FLAG_CACHED != 0,
    })
}

/// Waits until the server has stopped every source it started (the whole path is idle).
pub fn wait_idle(net: &Net) {
    let s1 = net.daemon("S1");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let started = s1.matching(&["source started"]).len();
        let stopped = s1.matching(&["source stopped"]).len();
        if started == stopped {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// `trials` cold joins at `edge`, each after the whole path went idle; clients bind
/// `client_net.k`.
fn cold_joins(
    rt: &tokio::runtime::Runtime,
    net: &Net,
    edge: SocketAddr,
    client_net: [u8; 3],
    trials: usize,
    stream: &mut u32,
    file: &std::path::Path,
) -> Vec<Join> {
    let mut cold = Vec::new();
    for k in 0..trials {
        wait_idle(net);
        *stream += 1;
        let [a, b, c] = client_net;
        let client = IpAddr::from([a, b, c, (k + 1) as u8]);
        match join_once(rt, edge, client, *stream, file) {
            Some(j) => {
                println!(
                    "  cold join {edge} trial {k}: first chunk {:.1} ms, first frame {:?} ms",
                    j.first_chunk_ms, j.first_frame_ms
                );
                cold.push(j);
            }
            None => println!("  cold join {edge} trial {k}: nothing received"),
        }
    }
    cold
}

/// The chain S1 - O1 - O2 - O3 - O4 - {E1 (GOP cache on), E2 (off)} on `prefix.x`, S1 with
/// `server_args`.
fn start_chain(prefix: &str, boot: &str, server_args: &[&str]) -> Net {
    let ip = |i: u8| format!("{prefix}.{i}");
    let chain = ["S1", "O1", "O2", "O3", "O4"];
    let mut devices: Vec<(&str, String, &str, Vec<String>)> = chain
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (role, args) = match *n {
                "S1" => (
                    "server",
                    server_args.iter().map(|a| a.to_string()).collect(),
                ),
                _ => ("node", vec![]),
            };
            (*n, ip(i as u8 + 1), role, args)
        })
        .collect();
    let native = || vec!["--relay".to_string(), "native".to_string()];
    devices.push(("E1", ip(6), "edge", native()));
    let mut off = native();
    off.extend(["--gop-cache-bytes".into(), "0".into()]);
    devices.push(("E2", ip(7), "edge", off));
    let links = [
        ("S1", "O1"),
        ("O1", "O2"),
        ("O2", "O3"),
        ("O3", "O4"),
        ("O4", "E1"),
        ("O4", "E2"),
    ];
    let net = Net::start(boot, &devices, &links);
    // A flood of the server (every second) has reached the edges, so that the first cold join
    // does not include the wait for it (the client retries an unknown video).
    std::thread::sleep(Duration::from_millis(1500));
    net
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("join: request to first chunk and to first decodable frame");
    let trials = if opts.quick { 4 } else { 10 };
    let ip = |i: u8| format!("127.91.1.{i}");
    let net = start_chain("127.91.1", "127.91.1.100", &[]);
    let rt = runtime();
    let file = net.dir.path("join.ts");
    let mut t = Table::new(
        "Join: request to first chunk and to first decodable frame",
        "first chunk <= 100 ms on a warm path; first decodable frame <= 0.5 s with the GOP cache \
         (baseline: the same edge setup without the cache)",
        &format!(
            "Real daemons S1 - O1 - O2 - O3 - O4 - {{E1, E2}} on loopback (127.91.1.x); E1 runs \
             the default GOP cache, E2 `--gop-cache-bytes 0`; built-in relay; alpha (H.264, a \
             keyframe every 1 s), server source `auto` (the built-in paced reader for these clips). A light client probes for a \
             cookie, then the clock starts when it sends its video request. First chunk: first \
             video datagram; keyframe flag: first datagram flagged keyframe by the edge; first \
             decodable frame: the client's {:.1} s of received TS given to ffprobe, whose first \
             decoded video frame is complete when the next video packet starts: the arrival of \
             that byte. Warm: another client on the same edge has streamed for 1.5 s and joins \
             are spread over the GOP (random 0-1 s pauses); cold: every source stopped before \
             the request, so it climbs 5 hops and the server starts its source. The cold path \
             with the cache is measured again on a second chain (127.121.1.x) whose server runs \
             `--source ffmpeg` (the old source start: ffprobe, then an ffmpeg child). {trials} \
             trials per row; p50 and p95 in ms.",
            RECORD.as_secs_f64()
        ),
        &[
            "path",
            "server source",
            "GOP cache",
            "trials ok",
            "first chunk p50",
            "first chunk p95",
            "keyframe flag p50",
            "first frame p50",
            "first frame p95",
            "started from cache",
        ],
    );
    let auto = "auto (paced)";
    let mut results: Vec<(&str, &str, &str, Vec<Join>)> = Vec::new();
    let mut stream = 1u32;
    for (edge_name, cache) in [("E1", "on"), ("E2", "off")] {
        let edge_ip = if edge_name == "E1" { ip(6) } else { ip(7) };
        let edge: SocketAddr = format!("{edge_ip}:7702").parse().unwrap();
        // Cold: the path is idle before each request.
        let cold = cold_joins(&rt, &net, edge, [127, 91, 3], trials, &mut stream, &file);
        // Warm: a holder keeps the video flowing to this edge.
        wait_idle(&net);
        let holder = LightClient::spawn(
            rt.handle(),
            ClientSpec {
                bind: IpAddr::from([127, 91, 2, 1]),
                edge,
                video: "alpha".into(),
                stream: 1,
                record: false,
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while holder.stats.lock().unwrap().first_data.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let mut warm = Vec::new();
        for k in 0..trials {
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 1000));
            stream += 1;
            let client = IpAddr::from([127, 91, 3, (100 + k) as u8]);
            if let Some(j) = join_once(&rt, edge, client, stream, &file) {
                warm.push(j);
            }
        }
        holder.stop();
        rt.block_on(holder.join());
        results.push(("warm", auto, cache, warm));
        results.push(("cold 5-hop", auto, cache, cold));
    }
    drop(net);
    // The old source start, same path, GOP cache on.
    let old = start_chain("127.121.1", "127.121.1.100", &["--source", "ffmpeg"]);
    let edge: SocketAddr = "127.121.1.6:7702".parse().unwrap();
    let file = old.dir.path("join.ts");
    let cold = cold_joins(&rt, &old, edge, [127, 121, 3], trials, &mut stream, &file);
    results.push(("cold 5-hop", "ffmpeg", "on", cold));
    drop(old);
    results.sort_by_key(|r| (r.0 != "warm", r.2 != "on", r.1 != auto));
    let mut p50 = std::collections::HashMap::new();
    for (path, source, cache, runs) in &results {
        let chunk: Vec<f64> = runs.iter().map(|j| j.first_chunk_ms).collect();
        let key: Vec<f64> = runs.iter().filter_map(|j| j.first_keyframe_ms).collect();
        let frame: Vec<f64> = runs.iter().filter_map(|j| j.first_frame_ms).collect();
        let row = (*path, *cache, *source == auto);
        p50.insert(row, (median(&chunk), median(&frame), pct(&frame, 95.0)));
        t.row(vec![
            path.to_string(),
            source.to_string(),
            cache.to_string(),
            format!("{}/{trials} ({} decoded)", runs.len(), frame.len()),
            f1(median(&chunk)),
            f1(pct(&chunk, 95.0)),
            f1(median(&key)),
            f1(median(&frame)),
            f1(pct(&frame, 95.0)),
            format!("{}", runs.iter().filter(|j| j.cached).count()),
        ]);
    }
    if let (Some(on), Some(off)) = (
        p50.get(&("warm", "on", true)),
        p50.get(&("warm", "off", true)),
    ) {
        t.verdict(
            on.0 <= 100.0,
            format!(
                "warm, GOP cache on: first chunk p50 {:.1} ms (goal 100 ms).",
                on.0
            ),
        );
        t.verdict(
            on.2 <= 500.0,
            format!(
                "warm, GOP cache on: first decodable frame p50 {:.0} ms, p95 {:.0} ms (goal 500 ms).",
                on.1, on.2
            ),
        );
        t.note(format!(
            "Baseline without the cache (warm): first chunk p50 {:.0} ms, first frame p50 {:.0} \
             ms, p95 {:.0} ms: the cache cuts the first frame by {:.0}x at p50 (a joining client \
             otherwise waits for the next keyframe, up to one GOP = 1 s).",
            off.0,
            off.1,
            off.2,
            off.1 / on.1
        ));
    }
    if let Some(c) = p50.get(&("cold 5-hop", "on", true)) {
        t.verdict(
            c.1 <= 150.0,
            format!(
                "cold 5-hop: first chunk p50 {:.0} ms, first frame p50 {:.0} ms (goal 150 ms); the \
                 cache cannot help (nothing cached yet); it includes the server starting its \
                 source.",
                c.0, c.1
            ),
        );
    }
    if let Some(f) = p50.get(&("cold 5-hop", "on", false)) {
        t.note(format!(
            "Cold 5-hop with the old source start (`--source ffmpeg`): first chunk p50 {:.0} ms, \
             first frame p50 {:.0} ms (the baseline of the row above).",
            f.0, f.1
        ));
    }
    rep.add(t);
}
