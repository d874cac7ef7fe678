//! Simulator set-ups shared by the sim tests and the scale bench: a named topology built in one
//! call (servers offering the video `V`, nodes, links), the warm-up that lets floods converge
//! and subscribes the consumers, the random mesh of the large scenarios, and the wait for a
//! tree that stopped switching.

use std::collections::BTreeSet;
use std::time::Duration;

use overlayd::sim::{LinkParams, Sim, SimConfig};
use rand::rngs::StdRng;
use rand::Rng;

/// The one video the simulated servers offer.
pub const V: &str = "movie";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A simulator with the default configuration but `seed`.
pub fn sim(seed: u64) -> Sim {
    Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    })
}

/// Adds `servers` (each offering `V`), then `nodes`, then `links`, in that order (the order
/// is part of a seeded run).
pub fn build(s: &mut Sim, servers: &[&str], nodes: &[&str], links: &[(&str, &str, LinkParams)]) {
    for n in servers {
        s.add_server(n, &[V]);
    }
    for n in nodes {
        s.add_node(n);
    }
    for (a, b, p) in links {
        s.link(a, b, *p);
    }
}

/// [`sim`] with `seed` and the topology of [`build`].
pub fn topology(
    seed: u64,
    servers: &[&str],
    nodes: &[&str],
    links: &[(&str, &str, LinkParams)],
) -> Sim {
    let mut s = sim(seed);
    build(&mut s, servers, nodes, links);
    s
}

/// Runs `converge` (floods settle), subscribes every one of `consumers` to `V`, then runs
/// `stream`. The caller has started the nodes it wants up.
pub fn subscribe_after(s: &mut Sim, converge: Duration, consumers: &[&str], stream: Duration) {
    s.run_for(converge);
    for c in consumers {
        s.subscribe(c, V);
    }
    s.run_for(stream);
}

/// Starts every node, then [`subscribe_after`].
pub fn start_and_subscribe(s: &mut Sim, converge: Duration, consumers: &[&str], stream: Duration) {
    s.start_all();
    subscribe_after(s, converge, consumers, stream);
}

/// Adds `n` nodes `N0..N{n-1}` joined by a random tree plus random extra links until there are
/// `2 n` (average degree about 4), each 2..20 ms, all drawn from `rng`. Returns the names and
/// the number of links added.
pub fn random_mesh(s: &mut Sim, rng: &mut StdRng, n: usize) -> (Vec<String>, usize) {
    let names: Vec<String> = (0..n).map(|i| format!("N{i}")).collect();
    for name in &names {
        s.add_node(name);
    }
    let mut edges = BTreeSet::new();
    // A random tree for connectivity, then the extra edges.
    for i in 1..n {
        edges.insert((rng.gen_range(0..i), i));
    }
    while edges.len() < 2 * n {
        let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    for (a, b) in &edges {
        let d = rng.gen_range(2..20);
        s.link(&names[*a], &names[*b], LinkParams::ms(d));
    }
    (names, edges.len())
}

/// Switches of `V` over every node so far.
pub fn switches(s: &Sim) -> u64 {
    s.names()
        .iter()
        .filter_map(|n| s.node(n).stream_counters(V).map(|c| c.switches))
        .sum()
}

/// Runs in 100 ms steps until no switch happened for `quiet`, or until `limit` after `t0`.
/// Returns when the last quiet spell began and the switches counted by then.
pub fn run_until_stable(
    s: &mut Sim,
    t0: Duration,
    quiet: Duration,
    limit: Duration,
) -> (Duration, u64) {
    let mut last = switches(s);
    let mut stable_since = s.now();
    while s.now() - stable_since < quiet && s.now() - t0 < limit {
        s.run_for(ms(100));
        let now = switches(s);
        if now != last {
            last = now;
            stable_since = s.now();
        }
    }
    (stable_since, last)
}
