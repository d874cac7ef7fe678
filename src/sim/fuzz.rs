//! Randomized fault simulation, the FoundationDB way: one seed draws a whole run (a random
//! overlay, a random schedule of faults and client churn), the simulator plays it, and the
//! protocol's invariants are checked along the way. A failing seed is its own reproduction.
//!
//! A run: 1–3 servers offering one video, a random connected mesh of relays (a random tree plus
//! extra links, 2–30 ms each), a few consumers. Some relays join late. During the fault phase,
//! every 200–1500 ms one event: crash, hang, resume, restart of a relay or a server, a silent
//! cut or its restore, a late node's join, a consumer leaving or (re)joining. Then every fault
//! is healed (cuts restored, hung nodes resumed, some crashed nodes restarted) and the run
//! settles. Checked:
//! - all along: no consumer receives a chunk twice, or a chunk older than one it already got of
//!   the same epoch, within one subscription (one life of the consumer);
//! - after the settle time: every subscribed consumer that reaches a running server through
//!   configured links that are up has been fed continuously since at most
//!   [`FuzzConfig::recovery_bound`] after the last fault (its recovery time is reported);
//! - after every consumer left and the sources' linger passed: no node carries the video and no
//!   source runs anywhere.
//!
//! [`run`] plays one seed and returns what it measured, or the first broken invariant.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{seq_report, LinkParams, Sim, SimConfig};

/// The one video of a fuzz run.
pub const VIDEO: &str = "movie";

/// How big the drawn runs are and how long their phases last.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    /// Relays in the mesh, drawn in this range.
    pub nodes: (usize, usize),
    /// Length of the fault phase.
    pub faults_for: Duration,
    /// Time left after the last fault before consumers must be fed.
    pub settle: Duration,
    /// A consumer that can be fed must be fed again within this after the last fault.
    pub recovery_bound: Duration,
    /// A consumer not fed in time is a violation (else it is only listed in
    /// [`FuzzReport::unfed`], for exploring a change that is known to starve some).
    pub feeding_must_hold: bool,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig {
            nodes: (10, 40),
            faults_for: Duration::from_secs(15),
            settle: Duration::from_secs(15),
            recovery_bound: Duration::from_secs(10),
            feeding_must_hold: true,
        }
    }
}

/// What one seed's run measured.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    pub seed: u64,
    pub nodes: usize,
    pub servers: usize,
    pub faults: usize,
    /// Consumers that had to be fed at the end.
    pub feedable: usize,
    /// The longest time from the last fault until a feedable consumer was fed for good.
    pub worst_recovery: Duration,
    /// Chunks delivered to consumers over the whole run.
    pub chunks: usize,
    /// Consumers not fed in time, with why (only when feeding need not hold).
    pub unfed: Vec<String>,
}

/// A broken invariant, with enough to replay it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
    /// The last events before it, oldest first.
    pub events: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed {} at {:?}: {}", self.seed, self.at, self.what)?;
        for e in &self.events {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// The run being played: the simulator and what the fuzzer knows about it.
struct Run {
    seed: u64,
    s: Sim,
    rng: StdRng,
    servers: Vec<String>,
    relays: Vec<String>,
    consumers: Vec<String>,
    links: Vec<(String, String)>,
    /// Consumers subscribed now, with the index of their first delivery in this subscription.
    subscribed: BTreeMap<String, usize>,
    events: VecDeque<String>,
    faults: usize,
}

const KEEP_EVENTS: usize = 40;

impl Run {
    fn log(&mut self, e: String) {
        if self.events.len() == KEEP_EVENTS {
            self.events.pop_front();
        }
        self.events
            .push_back(format!("{:>8.3}s {e}", self.s.now().as_secs_f64()));
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at: self.s.now(),
            what,
            events: self.events.iter().cloned().collect(),
        }
    }

    fn subscribe(&mut self, c: &str) {
        let from = self.s.delivered(c, VIDEO).len();
        self.s.subscribe(c, VIDEO);
        self.subscribed.insert(c.to_string(), from);
        self.log(format!("{c} subscribes"));
    }

    /// The in-order, at-most-once check of one subscription, up to now.
    fn check_order(&self, c: &str, from: usize) -> Result<(), Violation> {
        let d = &self.s.delivered(c, VIDEO)[from..];
        let r = seq_report(d, Duration::ZERO);
        if r.duplicates > 0 || r.reorderings > 0 {
            return Err(self.violation(format!(
                "{c} got {} duplicates and {} reorderings in one subscription",
                r.duplicates, r.reorderings
            )));
        }
        Ok(())
    }

    fn check_all_orders(&self) -> Result<(), Violation> {
        for (c, &from) in &self.subscribed {
            self.check_order(c, from)?;
        }
        Ok(())
    }

    /// One random fault or churn event.
    fn event(&mut self) -> Result<(), Violation> {
        let roll = self.rng.gen_range(0..100);
        let pick = |rng: &mut StdRng, v: &[String]| v[rng.gen_range(0..v.len())].clone();
        match roll {
            0..=14 => {
                let n = pick(&mut self.rng, &self.relays);
                if self.s.is_up(&n) {
                    if let Some(from) = self.subscribed.remove(&n) {
                        self.check_order(&n, from)?;
                    }
                    self.s.crash(&n);
                    self.log(format!("crash {n}"));
                    self.faults += 1;
                }
            }
            15..=24 => {
                let n = pick(&mut self.rng, &self.relays);
                if self.s.is_up(&n) {
                    self.s.hang(&n);
                    self.log(format!("hang {n}"));
                    self.faults += 1;
                }
            }
            25..=34 => {
                let n = pick(&mut self.rng, &self.relays);
                if self.s.is_hung(&n) {
                    self.s.resume(&n);
                    self.log(format!("resume {n}"));
                } else if self.s.is_down(&n) {
                    self.s.start(&n);
                    self.log(format!("start {n}"));
                }
            }
            35..=49 => {
                let (a, b) = self.links[self.rng.gen_range(0..self.links.len())].clone();
                if self.s.is_cut(&a, &b) {
                    self.s.restore(&a, &b);
                    self.log(format!("restore {a}-{b}"));
                } else {
                    self.s.cut(&a, &b);
                    self.log(format!("cut {a}-{b}"));
                    self.faults += 1;
                }
            }
            50..=59 => {
                let n = pick(&mut self.rng, &self.servers);
                if self.s.is_up(&n) {
                    self.s.crash(&n);
                    self.log(format!("server death {n}"));
                    self.faults += 1;
                } else if self.s.is_down(&n) {
                    self.s.start(&n);
                    self.log(format!("server return {n}"));
                }
            }
            _ => {
                let c = pick(&mut self.rng, &self.consumers);
                if self.s.is_hung(&c) {
                    // A frozen process does nothing, its viewers' requests included.
                    return Ok(());
                }
                if let Some(from) = self.subscribed.get(&c).copied() {
                    self.check_order(&c, from)?;
                    self.subscribed.remove(&c);
                    if self.rng.gen_bool(0.5) {
                        self.s.unsubscribe(&c, VIDEO);
                        self.log(format!("{c} leaves"));
                    } else {
                        // The consumer's process dies: its subscription with it.
                        self.s.crash(&c);
                        self.log(format!("crash consumer {c}"));
                        self.faults += 1;
                    }
                } else {
                    if self.s.is_down(&c) {
                        self.s.start(&c);
                        self.log(format!("start consumer {c}"));
                    }
                    self.subscribe(&c);
                }
            }
        }
        Ok(())
    }

    /// Consumers subscribed now that reach a running server through configured links that are
    /// up, every hop running.
    fn feedable(&self) -> Vec<String> {
        let running = |n: &str| self.s.is_up(n);
        let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in &self.links {
            if running(a) && running(b) && !self.s.is_cut(a, b) {
                adj.entry(a).or_default().push(b);
                adj.entry(b).or_default().push(a);
            }
        }
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = self
            .servers
            .iter()
            .map(String::as_str)
            .filter(|n| running(n))
            .collect();
        while let Some(n) = todo.pop() {
            if reached.insert(n) {
                todo.extend(adj.get(n).into_iter().flatten().copied());
            }
        }
        self.subscribed
            .keys()
            .filter(|c| reached.contains(c.as_str()))
            .cloned()
            .collect()
    }
}

/// Plays seed `seed` with `cfg`: Ok with what it measured, or the first broken invariant.
pub fn run(seed: u64, cfg: &FuzzConfig) -> Result<FuzzReport, Violation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_servers = rng.gen_range(1..=3);
    let n_relays = rng.gen_range(cfg.nodes.0..=cfg.nodes.1);
    let n_consumers = rng.gen_range(2..=6).min(n_relays);
    let mut s = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let servers: Vec<String> = (0..n_servers).map(|i| format!("S{i}")).collect();
    let relays: Vec<String> = (0..n_relays).map(|i| format!("N{i}")).collect();
    for n in &servers {
        s.add_server(n, &[VIDEO]);
    }
    for n in &relays {
        s.add_node(n);
    }
    // A random tree over relays and servers, then extra links up to an average degree of ~3.
    let all: Vec<&String> = servers.iter().chain(&relays).collect();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut linked: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut add = |s: &mut Sim, rng: &mut StdRng, a: usize, b: usize| {
        let key = (a.min(b), a.max(b));
        if a == b || !linked.insert(key) {
            return;
        }
        s.link(all[a], all[b], LinkParams::ms(rng.gen_range(2..=30)));
        links.push((all[a].clone(), all[b].clone()));
    };
    for i in 1..all.len() {
        let j = rng.gen_range(0..i);
        add(&mut s, &mut rng, i, j);
    }
    for _ in 0..all.len() / 2 {
        let (a, b) = (rng.gen_range(0..all.len()), rng.gen_range(0..all.len()));
        add(&mut s, &mut rng, a, b);
    }
    // Consumers are relays too (a consumer is any node with local viewers).
    let mut consumers: Vec<String> = Vec::new();
    while consumers.len() < n_consumers {
        let c = relays[rng.gen_range(0..relays.len())].clone();
        if !consumers.contains(&c) {
            consumers.push(c);
        }
    }
    // Late joiners: a few relays that are not consumers start during the fault phase.
    let late: BTreeSet<String> = relays
        .iter()
        .filter(|n| !consumers.contains(n) && rng.gen_bool(0.1))
        .cloned()
        .collect();
    for n in servers.iter().chain(&relays) {
        if !late.contains(n) {
            s.start(n);
        }
    }
    let mut run = Run {
        seed,
        s,
        rng,
        servers,
        relays,
        consumers: consumers.clone(),
        links,
        subscribed: BTreeMap::new(),
        events: VecDeque::new(),
        faults: 0,
    };
    run.s.run_for(Duration::from_secs(3));
    for c in &consumers {
        run.subscribe(c);
    }
    run.s.run_for(Duration::from_secs(2));

    let faults_end = run.s.now() + cfg.faults_for;
    let mut late: Vec<String> = late.into_iter().collect();
    while run.s.now() < faults_end {
        let wait = Duration::from_millis(run.rng.gen_range(200..=1500));
        run.s.run_for(wait);
        if !late.is_empty() && run.rng.gen_bool(0.2) {
            // A fault event may have started it already.
            let n = late.remove(0);
            if run.s.is_down(&n) {
                run.s.start(&n);
                run.log(format!("late join {n}"));
            }
        }
        run.event()?;
        run.check_all_orders()?;
    }

    // Heal: every cut restored, every hung node resumed, crashed relays and servers restarted
    // with probability 1/2 (the others stay dead), late joiners started.
    for (a, b) in run.links.clone() {
        if run.s.is_cut(&a, &b) {
            run.s.restore(&a, &b);
            run.log(format!("heal: restore {a}-{b}"));
        }
    }
    let everyone: Vec<String> = run.servers.iter().chain(&run.relays).cloned().collect();
    for n in &everyone {
        if run.s.is_hung(n) {
            run.s.resume(n);
            run.log(format!("heal: resume {n}"));
        } else if run.s.is_down(n) && !run.consumers.contains(n) && run.rng.gen_bool(0.5) {
            run.s.start(n);
            run.log(format!("heal: start {n}"));
        }
    }
    let last_fault = run.s.now();
    run.s.run_for(cfg.settle);
    run.check_all_orders()?;

    // Every consumer that can be fed is fed, continuously, since at most the bound.
    let feedable = run.feedable();
    let end = run.s.now();
    // Fed at an instant: a chunk within the last 300 ms (15 chunk intervals).
    let fed_gap = Duration::from_millis(300);
    let mut worst = Duration::ZERO;
    let mut unfed = Vec::new();
    for c in &feedable {
        let from = run.subscribed[c];
        let d = &run.s.delivered(c, VIDEO)[from..];
        let recent: Vec<Duration> = d
            .iter()
            .map(|x| x.at)
            .filter(|&t| t >= last_fault)
            .collect();
        // Fed for good from the first chunk after the last gap longer than fed_gap (or after
        // the last fault), through to the end.
        let mut fed_since = None;
        let mut prev = last_fault;
        for &t in &recent {
            if t - prev > fed_gap || fed_since.is_none() {
                fed_since = Some(t);
            }
            prev = t;
        }
        let recovered = match fed_since {
            Some(t) if end - prev <= fed_gap => t - last_fault,
            _ => {
                let node = run.s.node(c);
                let parents: Vec<String> = node
                    .parent_table(run.s.instant())
                    .into_iter()
                    .map(|p| format!("{} via {}", p.server, p.neighbour))
                    .collect();
                let route: Vec<String> = node
                    .route_table()
                    .into_iter()
                    .filter(|r| r.stream == VIDEO)
                    .map(|r| format!("parent {:?}, {:?}", r.parent, r.state))
                    .collect();
                unfed.push(format!(
                    "{c} can reach a server but was not fed at the end ({} chunks since the \
                     last fault, the last at {:?}); its routes {parents:?}, its stream {route:?}",
                    recent.len(),
                    recent.last()
                ));
                continue;
            }
        };
        if recovered > cfg.recovery_bound {
            unfed.push(format!(
                "{c} was fed for good only {recovered:?} after the last fault (bound {:?})",
                cfg.recovery_bound
            ));
            continue;
        }
        worst = worst.max(recovered);
    }
    if cfg.feeding_must_hold {
        if let Some(first) = unfed.first() {
            return Err(run.violation(first.clone()));
        }
    }

    // Everyone leaves: nothing may remain.
    let chunks: usize = run
        .consumers
        .iter()
        .map(|c| run.s.delivered(c, VIDEO).len())
        .sum();
    for c in run.subscribed.keys().cloned().collect::<Vec<_>>() {
        run.s.unsubscribe(&c, VIDEO);
        run.log(format!("{c} leaves (end)"));
    }
    run.subscribed.clear();
    run.s.run_for(Duration::from_secs(10));
    let mut left = Vec::new();
    for n in &everyone {
        if !run.s.is_up(n) {
            continue;
        }
        if let Some(r) = run
            .s
            .node(n)
            .route_table()
            .into_iter()
            .find(|r| r.stream == VIDEO)
        {
            left.push(format!(
                "{n} carries it (parent {:?}, switching to {:?}, destinations {:?}, {:?})",
                r.parent, r.switching_to, r.destinations, r.state
            ));
        }
        if run.s.source_running(n, VIDEO) {
            left.push(format!("{n} runs its source"));
        }
    }
    if !left.is_empty() {
        return Err(run.violation(format!(
            "10 s after every consumer left: {}",
            left.join("; ")
        )));
    }
    Ok(FuzzReport {
        seed,
        nodes: n_relays,
        servers: n_servers,
        faults: run.faults,
        feedable: feedable.len(),
        worst_recovery: worst,
        chunks,
        unfed,
    })
}
