//! The benchmark suite (`cargo bench --bench suite`, driven by `bin/bench`): failover gaps with
//! real daemons, encrypted relay throughput and per-hop latency over loopback TCP against a
//! plain socat chain, the record layer alone, control overhead and idle memory. It prints
//! figures and writes BENCHMARKS.md; it never fails on timing.
//!
//! Arguments (after `--`): `--quick` (fewer trials, shorter runs), `--out FILE` (default
//! BENCHMARKS.md in the crate root), `--only NAME[,NAME]` (failover, throughput, latency,
//! record, control, edge, edgefail, join, start, fanout, scale, lastmile; server-death is the
//! server-death part of failover alone, edgedrain the edge-drain part of edgefail alone).

#[path = "../../tests/common/mod.rs"]
mod common;

mod chain;
mod edge;
mod failover;
mod fanout;
mod idle;
mod join;
mod lastmile;
mod record;
mod report;
mod scale;
mod start;

use report::Report;

pub struct Opts {
    pub quick: bool,
    pub only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, name: &str) -> bool {
        match &self.only {
            None => true,
            Some(o) => o.iter().any(|n| n == name),
        }
    }
}

fn main() {
    let mut opts = Opts {
        quick: false,
        only: None,
    };
    let mut out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--out" => out = args.next().expect("--out FILE").into(),
            "--only" => {
                opts.only = Some(
                    args.next()
                        .expect("--only NAMES")
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    let started = std::time::Instant::now();
    let mut rep = Report::new(opts.quick);
    rep.set_only(opts.only.clone());
    if opts.wants("failover") {
        failover::run(&opts, &mut rep);
    }
    if opts.wants("failover") || opts.wants("server-death") {
        failover::run_server_death(&opts, &mut rep);
    }
    if opts.wants("throughput") {
        chain::throughput(&opts, &mut rep);
    }
    if opts.wants("latency") {
        chain::latency(&opts, &mut rep);
    }
    if opts.wants("record") {
        record::run(&opts, &mut rep);
    }
    if opts.wants("control") {
        idle::run(&opts, &mut rep);
    }
    if opts.wants("edge") {
        edge::run(&opts, &mut rep);
    }
    if opts.wants("edgefail") {
        edge::failover(&opts, &mut rep);
    }
    if opts.wants("edgefail") || opts.wants("edgedrain") {
        edge::edge_drain(&opts, &mut rep);
    }
    if opts.wants("join") {
        join::run(&opts, &mut rep);
    }
    if opts.wants("start") {
        start::run(&opts, &mut rep);
    }
    if opts.wants("fanout") {
        fanout::run(&opts, &mut rep);
    }
    if opts.wants("scale") {
        scale::run(&opts, &mut rep);
    }
    if opts.wants("lastmile") {
        lastmile::run(&opts, &mut rep);
    }
    rep.finish(started.elapsed(), &out);
    println!("wrote {}", out.display());
}
