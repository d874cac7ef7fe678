//! `bin/simfuzz`: plays many seeds of the randomized fault simulation
//! ([`overlayd::sim::fuzz`]) and prints one line per failing seed (its reproduction) and a
//! summary: seeds run, failures, worst recovery time after the last fault.
//!
//! Arguments: `--seeds N` (default 1000), `--from S` (first seed, default 1), `--nodes A-B`
//! (relays per run, default 10-40), `--seed S` (play one seed and print its event log);
//! `--help` says the same.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use overlayd::sim::fuzz::{run, FuzzConfig};

#[derive(Parser)]
#[command(about = "Randomized fault simulation over many seeds")]
struct Args {
    /// How many seeds to play.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Play this one seed and print its report or its violation with the events before it.
    #[arg(long)]
    seed: Option<u64>,
    /// Relays per run, drawn in A-B.
    #[arg(long, value_name = "A-B", value_parser = parse_nodes, default_value = "10-40")]
    nodes: (usize, usize),
}

fn parse_nodes(v: &str) -> Result<(usize, usize), String> {
    let range = v
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match range {
        Some((lo, hi)) if 2 <= lo && lo <= hi => Ok((lo, hi)),
        _ => Err(format!("'{v}' is not A-B with 2 <= A <= B")),
    }
}

fn main() -> ExitCode {
    let args = Args::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            e.exit(); // --help
        }
        let text = e.to_string();
        let line = text.lines().next().unwrap_or("bad arguments");
        eprintln!("simfuzz: {}", line.trim_start_matches("error: "));
        std::process::exit(2);
    });
    let (seeds, from, one) = (args.seeds, args.from, args.seed);
    let cfg = FuzzConfig {
        nodes: args.nodes,
        ..FuzzConfig::default()
    };
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
