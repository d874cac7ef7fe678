//! Observability with real processes on loopback: a server and three nodes, a test consumer
//! on O3. `overlayd status --json` shows the neighbours and the stream's route (parent,
//! destinations); `/metrics` has per-stream chunk counters that grow; `overlayd trace` from the
//! server prints the path down to the consumer's node.
//!
//! Addresses: 127.74.N.x per test; every daemon's control endpoint is on its own --bind
//! address, port 7704.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::consumer::Consumer;
use common::{bootstrapper, device, keygen, role_of, run, some_video, TempDir};
use overlayd::net::control::http_get;
use overlayd::observe::snapshot::NodeStatus;
use overlayd::observe::trace::TraceResult;

const WAIT: Duration = Duration::from_secs(20);

/// S1 - O1 - {O2, O3} on 127.74.`net`.x (S1 .1, O1 .2, O2 .3, O3 .4).
fn topology(dir: &TempDir, net: u8) -> PathBuf {
    let a = |i: u8| format!("\"127.74.{net}.{i}\"");
    let text = format!(
        r#"{{
  "S1": {{ "neighbours": [{o1}], "addresses": [{s1}] }},
  "O1": {{ "neighbours": [{s1}, {o2}, {o3}], "addresses": [{o1}] }},
  "O2": {{ "neighbours": [{o1}], "addresses": [{o2}] }},
  "O3": {{ "neighbours": [{o1}], "addresses": [{o3}] }}
}}"#,
        s1 = a(1),
        o1 = a(2),
        o2 = a(3),
        o3 = a(4)
    );
    let path = dir.path("topology.json");
    std::fs::write(&path, text).unwrap();
    path
}

fn status_json(ip: &str) -> NodeStatus {
    let (code, out, err) = run(&["status", "--node", ip, "--json"]);
    assert_eq!(code, 0, "overlayd status --node {ip} --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a status ({e}): {out}"))
}

/// Poll `f` until it holds or WAIT passes.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn status_metrics_and_trace_of_a_running_overlay() {
    let net = 1;
    let dir = TempDir::new("observe");
    let topo = topology(&dir, net);
    let key = dir.path("k");
    keygen(&key);
    let ip = |i: u8| format!("127.74.{net}.{i}");
    let boot_ip = ip(100);
    let _boot = bootstrapper(&topo, &boot_ip);
    let mut daemons = Vec::new();
    for (i, name) in ["S1", "O1", "O2", "O3"].iter().enumerate() {
        let extra: &[&str] = if *name == "S1" {
            &["--source", "paced"]
        } else {
            &[]
        };
        daemons.push(device(
            role_of(name),
            name,
            &ip(i as u8 + 1),
            &boot_ip,
            &key,
            extra,
        ));
    }
    let o3 = &daemons[3];
    o3.wait_for(&["neighbour up", "O1"], WAIT);
    o3.wait_for(&["control endpoint", &format!("{}:7704", ip(4))], WAIT);

    let video = some_video();
    let consumer = Consumer::at(&ip(4), &key, "TestConsumer", &video);
    assert!(
        consumer.wait_chunks(20, WAIT),
        "no stream reached the consumer; O3 log:\n{}",
        o3.log().join("\n")
    );

    // Status of O3: its neighbour O1, and the stream's route from S1 through O1 to the consumer.
    let mut st = status_json(&ip(4));
    eventually("O3's status shows the stream streaming", || {
        st = status_json(&ip(4));
        st.routes
            .iter()
            .any(|r| r.stream == video && r.state == "streaming")
    });
    assert_eq!(st.name, "O3");
    let o1 = st.neighbours.iter().find(|n| n.name == "O1").expect("O1");
    assert_eq!(o1.state, "up");
    assert_eq!(o1.addr, format!("{}:7701", ip(2)));
    assert!(o1.rtt_us.is_some(), "{o1:?}");
    let route = st.routes.iter().find(|r| r.stream == video).unwrap();
    assert_eq!(route.parent.as_deref(), Some("O1"), "{route:?}");
    assert_eq!(route.origin.as_deref(), Some("S1"), "{route:?}");
    assert_eq!(route.destinations, vec!["TestConsumer"], "{route:?}");
    assert!(route.metric.link_sum_us.is_some(), "{route:?}");
    assert!(st
        .parents
        .iter()
        .any(|p| p.server == "S1" && p.neighbour == "O1" && p.active));
    assert!(st
        .links
        .iter()
        .any(|l| l.neighbour == "TestConsumer" && l.stream == video && l.chunks_out > 0));
    // O1 forwards to O3 only; O2 carries nothing.
    let st1 = status_json(&ip(2));
    let r1 = st1.routes.iter().find(|r| r.stream == video).unwrap();
    assert_eq!(r1.parent.as_deref(), Some("S1"));
    assert_eq!(r1.destinations, vec!["O3"]);
    assert!(status_json(&ip(3)).routes.is_empty());
    // The tables.
    let (code, tables, err) = run(&["status", "--node", &ip(4)]);
    assert_eq!(code, 0, "{err}");
    println!("{tables}");
    for part in [
        "Neighbours:",
        "Parent table",
        "Route table:",
        "TestConsumer",
        "Link counters:",
    ] {
        assert!(tables.contains(part), "no {part:?} in:\n{tables}");
    }

    // Metrics: the per-stream chunk counter grows.
    let series = format!("overlayd_stream_chunks_in_total{{node=\"O3\",stream=\"{video}\"}}");
    let get_metrics = || {
        let (code, body) = http_get(
            format!("{}:7704", ip(4)).parse().unwrap(),
            "/metrics",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(code, 200);
        body
    };
    let first = metric(&get_metrics(), &series).unwrap_or_else(|| panic!("no {series}"));
    std::thread::sleep(Duration::from_millis(1000));
    let body = get_metrics();
    let second = metric(&body, &series).unwrap();
    println!("{series}: {first} then {second} one second later");
    assert!(second > first, "{first} -> {second}");
    assert!(body.contains("overlayd_handshakes_total{node=\"O3\",result=\"ok\"}"));
    assert!(body.contains(&format!(
        "overlayd_link_chunks_total{{node=\"O3\",neighbour=\"O1\",stream=\"{video}\",direction=\"in\"}}"
    )));

    // Trace from the server: S1 -> O1 -> O3, not O2.
    let (code, tree, err) = run(&["trace", &video, "--from", &ip(1)]);
    assert_eq!(code, 0, "{err}");
    println!("{tree}");
    assert!(tree.contains("3 node(s) answered"), "{tree}");
    assert!(tree.contains("\nS1\n└─ O1  +"), "{tree}");
    assert!(tree.contains("\n   └─ O3  +"), "{tree}");
    assert!(!tree.contains("O2"), "{tree}");
    let (code, json, err) = run(&[
        "trace",
        &video,
        "--from",
        &ip(1),
        "--json",
        "--wait-ms",
        "500",
    ]);
    assert_eq!(code, 0, "{err}");
    let t: TraceResult = serde_json::from_str(&json).unwrap();
    let longest: Vec<&str> = t
        .paths
        .iter()
        .max_by_key(|p| p.len())
        .unwrap()
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(longest, vec!["S1", "O1", "O3"]);

    // Errors are one line and non-zero.
    let (code, _, err) = run(&["trace", "no-such-video", "--from", &ip(1)]);
    assert_eq!(code, 1);
    assert!(err.contains("does not carry"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["status", "--node", &format!("{}:1", ip(4))]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");

    // The log line of the parent choice carries its metric.
    let chosen = o3.wait_for(&["parent chosen", &video], WAIT);
    assert!(chosen.contains("link_sum_us"), "{chosen}");
    consumer.stop().unwrap();
}
