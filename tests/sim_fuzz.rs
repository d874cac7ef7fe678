//! Randomized fault simulation in CI: 300 seeds of `overlayd::sim::fuzz` (random overlays of
//! 10–40 relays and 1–3 servers, random crashes, hangs, cuts, restarts, server deaths, late
//! joins and client churn). `bin/simfuzz --seeds 10000` runs many more, larger ones too.
//!
//! Asserted for every seed: no consumer ever gets a duplicate or a reordering within an epoch,
//! and after every consumer left no stream and no source remains anywhere. Feeding after the
//! last fault (every consumer that reaches a running server through up links is fed within
//! 10 s) is counted and printed here but asserted only by `bin/simfuzz`: about 1 seed in 150
//! fails it today (consumers left without routes after a server returns; issue 13), and a CI
//! test that fails on a known open bug would only teach people to ignore it.

use overlayd::sim::fuzz::{run, FuzzConfig};

#[test]
fn random_faults_never_duplicate_reorder_or_leak_a_stream() {
    let cfg = FuzzConfig {
        feeding_must_hold: false,
        ..FuzzConfig::default()
    };
    let (mut unfed, mut worst, mut faults, mut chunks) = (0, std::time::Duration::ZERO, 0, 0);
    let seeds = 1..=300u64;
    for seed in seeds.clone() {
        let r =
            run(seed, &cfg).unwrap_or_else(|v| panic!("{v}\nreplay: bin/simfuzz --seed {seed}"));
        for u in &r.unfed {
            println!("seed {seed}: {u}");
        }
        unfed += r.unfed.len();
        worst = worst.max(r.worst_recovery);
        faults += r.faults;
        chunks += r.chunks;
    }
    println!(
        "{} seeds, {faults} faults, {chunks} chunks delivered: no duplicate, reordering or leak; \
         consumers not fed in time {unfed}; worst recovery after the last fault {worst:?}",
        seeds.count()
    );
    assert!(
        chunks > 0,
        "the runs delivered nothing: the fuzzer is not exercising streams"
    );
}
