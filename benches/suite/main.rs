//! The benchmark suite (`cargo bench --bench suite`, driven by `bin/bench`): failover gaps with
//! real daemons, encrypted relay throughput and per-hop latency over loopback TCP against a
//! plain socat chain, the record layer alone, control overhead and idle memory, edges, joins,
//! client starts, fan-out, scale and the last mile. It prints figures and writes them to a
//! file; it never fails on timing.
//!
//! Arguments (after `--`): `--quick` (fewer trials, shorter runs), `--only NAME[,NAME]` (the
//! names in [`SECTIONS`]; server-death is the server-death part of failover alone, edgedrain
//! the edge-drain part of edgefail alone), `--out FILE`. Only a full run (neither `--quick`
//! nor `--only`) from a clean tree writes BENCHMARKS.md in the crate root; any other run writes
//! target/bench/ (or `--out`, which may not name BENCHMARKS.md then).

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

/// The names `--only` takes.
const SECTIONS: &[&str] = &[
    "failover",
    "server-death",
    "throughput",
    "latency",
    "record",
    "control",
    "edge",
    "edgefail",
    "edgedrain",
    "join",
    "start",
    "fanout",
    "scale",
    "lastmile",
];

fn main() {
    let mut opts = Opts {
        quick: false,
        only: None,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--out" => out = args.next().map(Into::into),
            "--only" => {
                opts.only = args
                    .next()
                    .map(|n| n.split(',').map(str::to_string).collect())
            }
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    if let Some(bad) = opts
        .only
        .iter()
        .flatten()
        .find(|n| !SECTIONS.contains(&n.as_str()))
    {
        eprintln!(
            "bench: --only {bad}: not a section (one of {})",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    let mut command = "bin/bench".to_string();
    if opts.quick {
        command.push_str(" --quick");
    }
    if let Some(o) = &opts.only {
        command.push_str(&format!(" --only {}", o.join(",")));
    }
    let run = report::Run::start(command);
    // BENCHMARKS.md is what one full run on a clean tree wrote; anything else goes under target/.
    let full = !opts.quick && opts.only.is_none();
    let official = root.join("BENCHMARKS.md");
    let elsewhere = root.join("target/bench").join(if full {
        "BENCHMARKS.md"
    } else {
        "BENCHMARKS-partial.md"
    });
    let out = match out {
        Some(o) if !(full && run.clean) && same_file(&o, &official) => {
            eprintln!(
                "bench: only a full run (no --quick, no --only) on a clean tree writes {}; \
                 use another --out",
                official.display()
            );
            std::process::exit(2);
        }
        Some(o) => o,
        None if full && run.clean => official,
        None => {
            if full {
                println!(
                    "bench: the tree has uncommitted changes, so this run writes {} (BENCHMARKS.md \
                     is written only from a clean tree)",
                    elsewhere.display()
                );
            }
            elsewhere
        }
    };
    let started = std::time::Instant::now();
    let mut rep = Report::new(run);
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

/// Whether two paths name the same file (the second exists; the first may not yet).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    let abs = |p: &std::path::Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(".".as_ref());
            std::fs::canonicalize(dir)
                .map(|d| d.join(p.file_name().unwrap_or_default()))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    abs(a) == abs(b)
}
