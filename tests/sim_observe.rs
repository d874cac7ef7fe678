//! Observability in the deterministic simulator: a trace follows the active tree and reports
//! each hop's delay; the status snapshot shows the route table, link counters and the failover
//! gap the node measured itself.

mod common;

use common::sim::{ms, start_and_subscribe, topology, V};
use overlayd::observe::snapshot::NodeStatus;
use overlayd::observe::trace::{hop_delays, render_trace, TraceResult};
use overlayd::sim::{LinkParams, Sim};

/// S -5ms- A; A -10ms- B; A -20ms- C; B -7ms- D. Consumers at C and D.
fn tree() -> Sim {
    let mut s = topology(
        11,
        &["S"],
        &["A", "B", "C", "D"],
        &[
            ("S", "A", LinkParams::ms(5)),
            ("A", "B", LinkParams::ms(10)),
            ("A", "C", LinkParams::ms(20)),
            ("B", "D", LinkParams::ms(7)),
        ],
    );
    start_and_subscribe(&mut s, ms(2000), &["C", "D"], ms(2000));
    s
}

fn names(p: &[overlayd::wire::overlay::TraceHop]) -> Vec<&str> {
    p.iter().map(|h| h.name.as_str()).collect()
}

#[test]
fn trace_from_the_server_answers_from_every_node_of_the_tree() {
    let mut s = tree();
    s.start_trace("S", 42, V).unwrap();
    s.run_for(ms(500));
    let paths = s.trace_paths("S", 42).to_vec();
    let mut got: Vec<Vec<&str>> = paths.iter().map(|p| names(p)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            vec!["S"],
            vec!["S", "A"],
            vec!["S", "A", "B"],
            vec!["S", "A", "B", "D"],
            vec!["S", "A", "C"],
        ]
    );
    // Hop delays are the link delays (the simulator's wall clocks have no skew here).
    let d = paths.iter().find(|p| p.len() == 4).unwrap();
    assert_eq!(hop_delays(d), vec![5_000, 10_000, 7_000]);
    let c = paths.iter().find(|p| names(p) == ["S", "A", "C"]).unwrap();
    assert_eq!(hop_delays(c), vec![5_000, 20_000]);
    // Answers come back along the reverse path: the deepest one after 2 × 22 ms.
    let tree = render_trace(&TraceResult {
        video: V.into(),
        id: 42,
        waited_ms: 500,
        paths,
    });
    println!("{tree}");
    assert!(tree.contains("5 node(s) answered"), "{tree}");
    assert!(tree.contains("└─ D  +7.00ms (total 22.0ms)"), "{tree}");

    // Each node forwards a trace id once, and a node off the tree refuses to start one.
    assert_eq!(s.node("A").counters().traces_answered, 1);
    assert_eq!(s.node("A").counters().traces_forwarded, 2);
    assert!(s.start_trace("B", 43, "other").is_err());
    // A trace from the middle covers only its subtree.
    s.start_trace("B", 44, V).unwrap();
    s.run_for(ms(200));
    let mut sub: Vec<Vec<&str>> = s.trace_paths("B", 44).iter().map(|p| names(p)).collect();
    sub.sort();
    assert_eq!(sub, vec![vec!["B"], vec!["B", "D"]]);
}

#[test]
fn status_snapshot_shows_routes_links_and_the_failover_gap() {
    // S feeds C through A (fast) or B (slow); A crashes.
    let (fast, slow) = (LinkParams::ms(5), LinkParams::ms(20));
    let mut s = topology(
        12,
        &["S"],
        &["A", "B", "C"],
        &[
            ("S", "A", fast),
            ("S", "B", slow),
            ("A", "C", fast),
            ("B", "C", slow),
        ],
    );
    start_and_subscribe(&mut s, ms(2000), &["C"], ms(2000));

    let st = NodeStatus::build(s.node("A"), s.instant());
    let route = st.routes.iter().find(|r| r.stream == V).unwrap();
    assert_eq!(route.origin.as_deref(), Some("S"));
    assert_eq!(route.parent.as_deref(), Some("S"));
    assert_eq!(route.destinations, vec!["C"]);
    assert_eq!(route.state, "streaming");
    assert!(route.metric.link_sum_us.unwrap() >= 5_000, "{route:?}");
    let up: Vec<&str> = st
        .neighbours
        .iter()
        .filter(|n| n.state == "up")
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(up, vec!["C", "S"]);
    assert!(st.neighbours.iter().all(|n| n.rtt_us.is_some()));
    let to_c = st
        .links
        .iter()
        .find(|l| l.neighbour == "C" && l.stream == V)
        .unwrap();
    let from_s = st
        .links
        .iter()
        .find(|l| l.neighbour == "S" && l.stream == V)
        .unwrap();
    assert!(to_c.chunks_out > 50, "{to_c:?}");
    assert_eq!(to_c.bytes_out, to_c.chunks_out * 188);
    assert!(from_s.chunks_in >= to_c.chunks_out);
    let server = NodeStatus::build(s.node("S"), s.instant());
    let src = server
        .links
        .iter()
        .find(|l| l.neighbour == "@source")
        .unwrap();
    assert!(src.chunks_in > 50, "{src:?}");
    assert_eq!(server.routes[0].state, "source");
    assert_eq!(server.routes[0].origin.as_deref(), Some("S"));
    let c = NodeStatus::build(s.node("C"), s.instant());
    assert_eq!(c.routes[0].destinations, vec!["local×1"]);
    assert!(c
        .parents
        .iter()
        .any(|p| p.server == "S" && p.neighbour == "A" && p.active));
    assert!(c
        .parents
        .iter()
        .any(|p| p.server == "S" && p.neighbour == "B" && !p.active));
    assert!(c
        .render_metrics()
        .contains("overlayd_stream_chunks_in_total{node=\"C\",stream=\"movie\"}"));

    s.crash("A");
    s.run_for(ms(2000));
    let c = NodeStatus::build(s.node("C"), s.instant());
    assert_eq!(c.routes[0].parent.as_deref(), Some("B"));
    let stream = c.streams.iter().find(|x| x.stream == V).unwrap();
    assert_eq!(stream.failover_gaps_measured, 1, "{stream:?}");
    let gap = stream.last_failover_gap_ms.unwrap();
    println!("failover gap measured at C: {gap:.1} ms");
    // A crash is seen one link delay later; the new path is 40 ms long, plus the request.
    assert!((40.0..200.0).contains(&gap), "gap {gap} ms");
}
