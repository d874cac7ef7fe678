//! Control overhead per overlay link and idle memory: the diamond of the failover benchmark
//! without any stream. Bytes written per second by a node (/proc/PID/io `wchar`: its socket
//! writes, the log is quiet at info level when idle) divided by its links, checked against the
//! flood counters of `/metrics`; RSS from /proc/PID/status.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use overlayd::wire::overlay::{OverlayMsg, Ping};

use crate::failover::{addr, start_diamond};
use crate::report::{f1, f2, median, rss_mib, Report, Table};
use crate::Opts;

const WAIT: Duration = Duration::from_secs(20);

fn wchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A counter's value from the node's /metrics (first matching series).
fn metric(ip: &str, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect((ip, 7704)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("control overhead per link and idle memory");
    let secs = if opts.quick { 5.0 } else { 15.0 };
    let net = 250;
    let mut ov = start_diamond(net);
    for (n, peers) in [("O1", ["S1", "O2"]), ("O4", ["O2", "O3"])] {
        for p in peers {
            ov.daemon(n).wait_for(&["neighbour up", p], WAIT);
        }
    }
    // Let the floods settle (routes learned) before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let mut t = Table::new(
        "Control overhead per overlay link (idle overlay)",
        "<= 1% of a 1 Mbit/s stream (125 000 B/s), per link and direction",
        &format!(
            "The idle diamond (no stream): bytes a node wrote over {secs} s (/proc/PID/io wchar: \
             keepalives, pongs, forwarded floods, with framing and GCM tags) divided by its links. \
             Default timers: ping every 200 ms each way, a flood per server per second."
        ),
        &[
            "node",
            "links",
            "B/s written",
            "B/s per link",
            "% of 1 Mbit/s per link",
            "floods rx+fwd per s",
        ],
    );
    let nodes = [("S1", 1u8, 1usize), ("O1", 2, 3), ("O4", 5, 2)];
    let before: Vec<(u64, f64)> = nodes
        .iter()
        .map(|(n, i, _)| {
            let ip = addr(net, *i);
            let fl = metric(&ip, "overlayd_node_floods_received_total").unwrap_or(f64::NAN)
                + metric(&ip, "overlayd_node_floods_forwarded_total").unwrap_or(f64::NAN);
            (wchar(ov.daemon(n).pid()), fl)
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after_w: Vec<u64> = nodes
        .iter()
        .map(|(n, _, _)| wchar(ov.daemon(n).pid()))
        .collect();
    let el = t0.elapsed().as_secs_f64();
    let mut worst = 0.0f64;
    for (k, (n, i, links)) in nodes.iter().enumerate() {
        let ip = addr(net, *i);
        let fl = metric(&ip, "overlayd_node_floods_received_total").unwrap_or(f64::NAN)
            + metric(&ip, "overlayd_node_floods_forwarded_total").unwrap_or(f64::NAN);
        let rate = (after_w[k] - before[k].0) as f64 / el;
        let per_link = rate / *links as f64;
        let share = per_link / 125_000.0 * 100.0;
        worst = worst.max(share);
        t.row(vec![
            n.to_string(),
            links.to_string(),
            format!("{rate:.0}"),
            format!("{per_link:.0}"),
            f2(share),
            f1((fl - before[k].1) / el),
        ]);
    }
    let mut ping = bytes::BytesMut::new();
    OverlayMsg::Ping(Ping { token: u64::MAX })
        .encode(&mut ping)
        .unwrap();
    let record = 4 + overlayd::crypto::TAG_LEN + ping.len();
    let ping_estimate = 10.0 * record as f64;
    t.note(format!(
        "Arithmetic check: a ping of ours and a pong to the peer's ping per 200 ms are 10 \
         records/s written per link, each {record} bytes on the wire (4-byte length, 16-byte tag, \
         {}-byte message): {ping_estimate:.0} B/s per link before floods; the floods (column) add \
         one record each.",
        ping.len()
    ));
    t.verdict(
        worst <= 1.0,
        format!("{worst:.2}% of a 1 Mbit/s stream per link and direction at worst (goal 1%)."),
    );
    rep.add(t);

    let mut m = Table::new(
        "Memory (RSS) of an idle node",
        "<= 20 MB idle",
        "VmRSS of each daemon of the idle diamond after the measurement above.",
        &["daemon", "RSS MiB"],
    );
    let mut rss = Vec::new();
    for n in ["S1", "O1", "O2", "O3", "O4"] {
        let r = rss_mib(ov.daemon(n).pid());
        rss.push(r);
        m.row(vec![n.into(), f1(r)]);
    }
    let worst = rss.iter().copied().fold(0.0, f64::max);
    m.verdict(
        worst * 1.048_576 <= 20.0,
        format!(
            "median {:.1} MB, max {:.1} MB (goal 20 MB).",
            median(&rss) * 1.048_576,
            worst * 1.048_576
        ),
    );
    rep.add(m);
    drop(ov);
}
