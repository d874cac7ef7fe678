//! Whole-overlay scenarios in the deterministic simulator: each asserts the outcome (tree
//! shape, who feeds whom, chunks delivered, no duplicate, no reordering) and prints the
//! measured gaps.

use std::time::Duration;

use overlayd::sim::{seq_report, LinkParams, Sim, SimConfig};

const V: &str = "movie";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn sim(seed: u64) -> Sim {
    Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    })
}

/// Asserts a consumer's stream is clean and returns its longest gap after `from`.
fn clean(sim: &Sim, who: &str, from: Duration) -> Duration {
    let r = seq_report(sim.delivered(who, V), from);
    assert!(r.chunks > 0, "{who} received nothing");
    assert_eq!(r.duplicates, 0, "{who}: duplicates {r:?}");
    assert_eq!(r.reorderings, 0, "{who}: reorderings {r:?}");
    r.max_gap
}

#[test]
fn chain_streams_in_order() {
    let mut s = sim(1);
    s.add_server("S", &[V]);
    s.add_node("A");
    s.add_node("B");
    s.link("S", "A", LinkParams::ms(5));
    s.link("A", "B", LinkParams::ms(5));
    s.start_all();
    s.run_for(secs(2));
    s.subscribe("B", V);
    s.run_for(secs(2));
    assert_eq!(s.chain("B", V), vec!["B", "A", "S"]);
    let r = seq_report(s.delivered("B", V), Duration::ZERO);
    println!("chain: {r:?}");
    assert!(r.chunks > 90, "{r:?}");
    clean(&s, "B", Duration::ZERO);
    assert_eq!(r.missing, 0);
}
