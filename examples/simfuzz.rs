//! `bin/simfuzz`: plays many seeds of the randomized fault simulation
//! ([`overlayd::sim::fuzz`]) and prints one line per failing seed (its reproduction) and a
//! summary: seeds run, failures, worst recovery time after the last fault.
//!
//! Arguments: `--seeds N` (default 1000), `--from S` (first seed, default 1), `--nodes A-B`
//! (relays per run, default 10-40), `--seed S` (play one seed and print its event log).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use overlayd::sim::fuzz::{run, FuzzConfig};

fn main() -> ExitCode {
    let mut seeds = 1000u64;
    let mut from = 1u64;
    let mut one: Option<u64> = None;
    let mut cfg = FuzzConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| match args.next() {
            Some(v) => v,
            None => {
                eprintln!("simfuzz: {name} needs a value");
                std::process::exit(2);
            }
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("simfuzz: {name} takes a number, not '{v}'");
                std::process::exit(2);
            })
        };
        match a.as_str() {
            "--seeds" => seeds = number("--seeds", value("--seeds")),
            "--from" => from = number("--from", value("--from")),
            "--seed" => one = Some(number("--seed", value("--seed"))),
            "--nodes" => {
                let v = value("--nodes");
                let Some((lo, hi)) = v.split_once('-') else {
                    eprintln!("simfuzz: --nodes takes A-B, not '{v}'");
                    return ExitCode::from(2);
                };
                let (lo, hi) = (number("--nodes", lo.into()), number("--nodes", hi.into()));
                if lo < 2 || lo > hi {
                    eprintln!("simfuzz: --nodes A-B needs 2 <= A <= B");
                    return ExitCode::from(2);
                }
                cfg.nodes = (lo as usize, hi as usize);
            }
            _ => {
                eprintln!(
                    "simfuzz: unknown argument '{a}' (--seeds N, --from S, --seed S, --nodes A-B)"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(seed) = one {
        // One seed: RUST_LOG=debug shows what every node did (with the simulator's time).
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .without_time()
                .init();
        }
        return match run(seed, &cfg) {
            Ok(r) => {
                println!("{r:?}");
                ExitCode::SUCCESS
            }
            Err(v) => {
                println!("{v}");
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    let (mut failed, mut worst, mut worst_seed) = (0u64, Duration::ZERO, 0u64);
    for seed in from..from + seeds {
        match run(seed, &cfg) {
            Ok(r) => {
                if r.worst_recovery > worst {
                    (worst, worst_seed) = (r.worst_recovery, seed);
                }
            }
            Err(v) => {
                failed += 1;
                println!(
                    "FAIL seed {seed}: {} (replay: bin/simfuzz --seed {seed} --nodes {}-{})",
                    v.what, cfg.nodes.0, cfg.nodes.1
                );
            }
        }
    }
    println!(
        "{seeds} seeds ({from}..{}), {}-{} relays: {failed} failed; worst recovery after the last \
         fault {worst:?} (seed {worst_seed}); {:.0} s",
        from + seeds - 1,
        cfg.nodes.0,
        cfg.nodes.1,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
