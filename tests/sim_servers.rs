//! Two servers offering one video, in the deterministic simulator: a consumer's stream stays
//! on the server it is fed from unless another server's path is clearly better, because a
//! move to another server is a jump in the video (a new epoch).

mod common;

use common::sim::{ms, secs, topology, V};
use std::time::Duration;

use overlayd::sim::{seq_report, LinkParams, Sim};

/// S1 - A - C (10 + 10 ms) and S2 - B - C (30 + 9 ms, improved later); A also reaches S2 over
/// a direct 25 ms link, so the parent C uses offers a (worse) route to the other server too.
fn two_servers(seed: u64) -> Sim {
    let mut s = topology(
        seed,
        &["S1", "S2"],
        &["A", "B", "C"],
        &[
            ("S1", "A", LinkParams::ms(10)),
            ("A", "C", LinkParams::ms(10)),
            ("S2", "B", LinkParams::ms(30)),
            ("B", "C", LinkParams::ms(9)),
            ("A", "S2", LinkParams::ms(25)),
        ],
    );
    s.start_all();
    s.run_for(secs(3));
    s.subscribe("C", V);
    s.run_for(secs(3));
    assert_eq!(s.chain("C", V), vec!["C", "A", "S1"]);
    s
}

#[test]
fn a_slightly_better_other_server_does_not_move_the_stream() {
    for seed in 1..4 {
        let mut s = two_servers(seed);
        // S2 via B is now 18 ms against 20 ms via A to S1: better, but within the 20% margin.
        // (A's own route to S2, 35 ms, is far worse than B's: it is not what C is fed by.)
        s.set_link("S2", "B", LinkParams::ms(9));
        let t = s.now();
        s.run_for(secs(20));
        let r = seq_report(s.delivered("C", V), t);
        println!("seed {seed}: slightly better other server: {r:?}");
        assert_eq!(s.chain("C", V), vec!["C", "A", "S1"], "seed {seed}");
        assert_eq!(r.epoch_changes, 0, "seed {seed}: the video jumped: {r:?}");
        assert_eq!(s.node("C").stream_counters(V).unwrap().switches, 0);
    }
}

#[test]
fn a_clearly_better_other_server_takes_the_stream_once() {
    let mut s = two_servers(7);
    // S2 via B is now 6 ms against 20 ms: well past the margin.
    s.set_link("S2", "B", LinkParams::ms(3));
    s.set_link("B", "C", LinkParams::ms(3));
    let t = s.now();
    let moved = s
        .run_until_cond(ms(50), secs(20), |s| s.chain("C", V) == ["C", "B", "S2"])
        .expect("the stream moved to the clearly better server");
    s.run_for(secs(5));
    let r = seq_report(s.delivered("C", V), t);
    println!(
        "clearly better other server: moved after {:?}: {r:?}",
        moved - t
    );
    assert_eq!(s.chain("C", V), vec!["C", "B", "S2"]);
    assert_eq!(r.epoch_changes, 1, "one jump, no flapping: {r:?}");
    assert_eq!(r.duplicates, 0, "{r:?}");
    assert_eq!(r.reorderings, 0, "{r:?}");
}

/// S1 reaches the consumer C over A or B (a diamond: S1-A, S1-B, A-C, B-C, 10 ms each); S2 is
/// further, over D (S2-D 30 ms, D-C 20 ms). S1 dies (its links close): how long until C is fed
/// by S2? With withdrawals (`withdraw`) A and B tell the overlay at once; without, C keeps the
/// stale routes to S1 until they expire. Returns the gap at C.
fn server_death_gap(seed: u64, withdraw: bool) -> Duration {
    let mut s = topology(
        seed,
        &["S1", "S2"],
        &["A", "B", "C", "D"],
        &[
            ("S1", "A", LinkParams::ms(10)),
            ("S1", "B", LinkParams::ms(10)),
            ("A", "C", LinkParams::ms(10)),
            ("B", "C", LinkParams::ms(10)),
            ("S2", "D", LinkParams::ms(30)),
            ("D", "C", LinkParams::ms(20)),
        ],
    );
    for n in s.names() {
        s.config_mut(&n).route_withdrawal = withdraw;
    }
    s.start_all();
    s.run_for(secs(3));
    s.subscribe("C", V);
    s.run_for(secs(3));
    assert_eq!(s.chain("C", V).last().map(String::as_str), Some("S1"));
    let killed = s.now();
    s.crash("S1");
    s.run_until_cond(ms(10), secs(20), |s| s.chain("C", V) == ["C", "D", "S2"])
        .unwrap_or_else(|| panic!("seed {seed}: C is not fed by S2: {:?}", s.chain("C", V)));
    s.run_for(secs(3));
    let d = s.delivered("C", V);
    let old = d
        .iter()
        .rfind(|x| x.at < killed)
        .expect("fed before the kill");
    // The last chunk of S1's stream (some were still on their way) and the first of S2's.
    let last_old = d
        .iter()
        .filter(|x| x.epoch == old.epoch)
        .map(|x| x.at)
        .max();
    let first_new = d.iter().find(|x| x.at >= killed && x.epoch != old.epoch);
    let first_new = first_new.unwrap_or_else(|| panic!("seed {seed}: nothing from S2"));
    let r = seq_report(d, killed);
    assert_eq!((r.duplicates, r.reorderings), (0, 0), "seed {seed}: {r:?}");
    first_new.at - last_old.expect("present")
}

#[test]
fn a_dead_server_is_withdrawn_at_once_and_its_consumers_move_to_the_other() {
    let mut gaps = Vec::new();
    for seed in 1..=5 {
        let old = server_death_gap(seed, false);
        let new = server_death_gap(seed, true);
        println!("seed {seed}: server death, video on the other server: gap at the consumer {old:?} with expiry, {new:?} with withdrawals");
        gaps.push((old, new));
    }
    let worst = gaps.iter().map(|g| g.1).max().expect("seeds ran");
    let worst_old = gaps.iter().map(|g| g.0).max().expect("seeds ran");
    println!("server death: worst gap {worst:?} with withdrawals, {worst_old:?} with expiry only");
}
