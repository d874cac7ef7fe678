//! Scale: (1) the deterministic simulator with 1000 nodes (the topology of
//! tests/sim_scenarios.rs: a random tree plus random extra links, average degree 4, two servers),
//! timing flood convergence, every consumer fed and the tree stable, in simulated time, plus the
//! wall clock the simulation took; (2) 50+ real daemons on loopback (127.81.0.x): a layered
//! random graph with 2 servers, relay layers and 6 leaf nodes with 2 test consumers each,
//! timing start to every neighbour link up and to every consumer served, with the daemons' RSS
//! and CPU totals.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use overlayd::sim::LinkParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::consumer::{analyse, Consumer};
use crate::common::sim::{self, V};
use crate::common::{bootstrapper, device, keygen, role_of, Daemon, TempDir};
use crate::report::{cpu_seconds, f1, median, rss_mib, Report, Table};
use crate::Opts;

struct SimRun {
    floods: Duration,
    fed: Duration,
    stable: Duration,
    wall: Duration,
    events: u64,
}

fn sim_run(seed: u64) -> Option<SimRun> {
    const N: usize = 1000;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = sim::sim(seed);
    s.add_server("S1", &[V]);
    s.add_server("S2", &[V]);
    let (names, _) = sim::random_mesh(&mut s, &mut rng, N);
    for (server, attach) in [("S1", [0, 1]), ("S2", [500, 900])] {
        for a in attach {
            s.link(server, &names[a], LinkParams::ms(5));
        }
    }
    let wall = Instant::now();
    s.start_all();
    let t_start = s.now();
    // Floods converged: every node ranks a parent towards both servers.
    let floods = s.run_until_cond(Duration::from_millis(20), Duration::from_secs(10), |s| {
        let now = s.instant();
        names.iter().all(|n| {
            let t = s.node(n).parent_table(now);
            t.iter().any(|p| p.server == "S1") && t.iter().any(|p| p.server == "S2")
        })
    })? - t_start;
    s.run_for(Duration::from_secs(1));
    let mut picked = BTreeSet::new();
    while picked.len() < 100 {
        picked.insert(rng.gen_range(0..N));
    }
    let consumers: Vec<&String> = picked.iter().map(|&i| &names[i]).collect();
    let t0 = s.now();
    for c in &consumers {
        s.subscribe(c, V);
    }
    // From the request on, every node's parent for V is sampled each 20 ms: the tree is stable
    // from its last change once no change follows for 1 s (first choices count as changes).
    let step = Duration::from_millis(20);
    let parents = |s: &overlayd::sim::Sim| -> Vec<Option<String>> {
        names
            .iter()
            .map(|n| s.node(n).parent_of(V).map(str::to_string))
            .collect()
    };
    let mut tree = parents(&s);
    let mut changed = t0;
    let mut fed = None;
    loop {
        s.run_for(step);
        let now = s.now();
        if fed.is_none() && consumers.iter().all(|c| !s.delivered(c, V).is_empty()) {
            fed = Some(now - t0);
        }
        let next = parents(&s);
        if next != tree {
            tree = next;
            changed = now;
        }
        if fed.is_some() && now - changed >= Duration::from_secs(1) {
            break;
        }
        if now - t0 > Duration::from_secs(20) {
            return None;
        }
    }
    let fed = fed?;
    Some(SimRun {
        floods,
        fed,
        stable: changed - t0,
        wall: wall.elapsed(),
        events: s.events,
    })
}

fn simulator(opts: &Opts, rep: &mut Report) {
    let seeds: Vec<u64> = if opts.quick {
        vec![11, 12]
    } else {
        vec![11, 12, 13, 14, 15]
    };
    let mut t = Table::new(
        "Scale: simulator, 1000 nodes",
        "convergence time; all consumers served",
        &format!(
            "src/sim.rs with the protocol's state machines: 1000 nodes, a random tree plus random \
             links (2000 links, 2-20 ms each), 2 servers attached at 2 nodes each, default \
             timers. Floods: start to every node ranking a parent towards both servers. Then 100 \
             random consumers subscribe: time from the request to all fed, and to the last \
             change of any node's parent for the video (first choices included) after which \
             none follows for 1 s (sampled every 20 ms). Simulated time; wall = real time the whole run took on one core. {} seeds \
             (one row each) and the median.",
            seeds.len()
        ),
        &[
            "seed",
            "floods converged s",
            "100 consumers fed ms",
            "tree stable ms",
            "events",
            "wall s",
        ],
    );
    let mut runs = Vec::new();
    for seed in seeds {
        match sim_run(seed) {
            Some(r) => {
                t.row(vec![
                    seed.to_string(),
                    format!("{:.2}", r.floods.as_secs_f64()),
                    format!("{:.0}", r.fed.as_secs_f64() * 1e3),
                    format!("{:.0}", r.stable.as_secs_f64() * 1e3),
                    r.events.to_string(),
                    f1(r.wall.as_secs_f64()),
                ]);
                runs.push(r);
            }
            None => t.row(vec![
                seed.to_string(),
                "did not converge within 10 s".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    let m = |f: fn(&SimRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    t.row(vec![
        "median".into(),
        format!("{:.2}", m(|r| r.floods.as_secs_f64())),
        format!("{:.0}", m(|r| r.fed.as_secs_f64() * 1e3)),
        format!("{:.0}", m(|r| r.stable.as_secs_f64() * 1e3)),
        format!("{:.0}", m(|r| r.events as f64)),
        f1(m(|r| r.wall.as_secs_f64())),
    ]);
    let tried = t.rows.len() - 1;
    t.verdict(
        runs.len() == tried,
        format!(
            "{} of {tried} seeds converged and fed all 100 consumers.",
            runs.len()
        ),
    );
    rep.add(t);
}

/// The layered graph: layer sizes (servers first, leaves last), each node linked to 2 random
/// nodes of the layer above and, with probability 1/3, one node of its own layer.
fn layered(rng: &mut StdRng, layers: &[usize]) -> (Vec<String>, BTreeSet<(usize, usize)>) {
    let mut names = Vec::new();
    let mut start = Vec::new();
    for (l, &n) in layers.iter().enumerate() {
        start.push(names.len());
        for i in 0..n {
            names.push(match l {
                0 => format!("S{}", i + 1),
                _ if l == layers.len() - 1 => format!("E{}", i + 1),
                _ => format!("L{l}n{}", i + 1),
            });
        }
    }
    let mut links = BTreeSet::new();
    for l in 1..layers.len() {
        let (up, n_up) = (start[l - 1], layers[l - 1]);
        for i in 0..layers[l] {
            let me = start[l] + i;
            let mut ups = BTreeSet::new();
            while ups.len() < 2.min(n_up) {
                ups.insert(up + rng.gen_range(0..n_up));
            }
            for u in ups {
                links.insert((u.min(me), u.max(me)));
            }
            if l < layers.len() - 1 && layers[l] > 1 && rng.gen_range(0..3) == 0 {
                let other = start[l] + rng.gen_range(0..layers[l]);
                if other != me {
                    links.insert((other.min(me), other.max(me)));
                }
            }
        }
    }
    // Every upper node must have a child, or it is a dead end (harmless, but wasteful).
    (names, links)
}

fn ip(i: usize) -> String {
    format!("127.81.{}.{}", i / 200, i % 200 + 1)
}

fn real_daemons(opts: &Opts, rep: &mut Report) {
    // 2 servers, 45 relays in 4 layers, 6 leaf nodes: 53 daemons.
    let layers = [2usize, 8, 12, 13, 12, 6];
    let mut rng = StdRng::seed_from_u64(7);
    let (names, links) = layered(&mut rng, &layers);
    let dir = TempDir::new("scale");
    let mut topo = String::from("{\n");
    for (i, n) in names.iter().enumerate() {
        let nb: Vec<String> = links
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .map(|j| format!("\"{}\"", ip(j)))
            .collect();
        topo.push_str(&format!(
            "  \"{n}\": {{ \"neighbours\": [{}], \"addresses\": [\"{}\"] }}{}\n",
            nb.join(", "),
            ip(i),
            if i + 1 < names.len() { "," } else { "" }
        ));
    }
    topo.push('}');
    let topo_path = dir.path("topology.json");
    std::fs::write(&topo_path, &topo).unwrap();
    let key = dir.path("k");
    keygen(&key);
    let psk = overlayd::keyfile::load(&key).unwrap().psk;
    let boot_ip = "127.81.9.100";
    let _boot = bootstrapper(&topo_path, boot_ip);
    let degree = |i: usize| links.iter().filter(|&&(a, b)| a == i || b == i).count();

    let t_start = Instant::now();
    let mut daemons = Vec::new();
    for (i, n) in names.iter().enumerate() {
        daemons.push(device(role_of(n), n, &ip(i), boot_ip, &key, &[]));
    }
    let spawned = t_start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all_up = loop {
        // Distinct neighbours logged up (a replaced duplicate link logs twice).
        let done = daemons.iter().enumerate().all(|(i, d)| {
            let up: BTreeSet<String> = d
                .matching(&["neighbour up"])
                .iter()
                .filter_map(|l| l.split("neighbour=").nth(1))
                .filter_map(|r| r.split_whitespace().next().map(str::to_string))
                .collect();
            up.len() >= degree(i)
        });
        if done {
            break Some(t_start.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the floods rank parents before asking for streams.
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle: f64 = daemons.iter().map(|d| rss_mib(d.pid())).sum();

    let vids = ["alpha", "bravo", "charlie"];
    let leaves: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].starts_with('E'))
        .collect();
    let t_req = Instant::now();
    let mut consumers = Vec::new();
    for (k, &leaf) in leaves.iter().enumerate() {
        for j in 0..2 {
            let addr: SocketAddr = format!("{}:7701", ip(leaf)).parse().unwrap();
            let video = vids[(k * 2 + j) % vids.len()];
            consumers.push(Consumer::start(
                addr,
                psk.clone(),
                &format!("T{k}x{j}"),
                video,
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let served_at = loop {
        if consumers.iter().all(|c| !c.received().is_empty()) {
            break Some(t_req.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let served = consumers
        .iter()
        .filter(|c| !c.received().is_empty())
        .count();
    // Totals while streaming.
    let secs = if opts.quick { 4.0 } else { 10.0 };
    let cpu = |ds: &Vec<Daemon>| -> f64 {
        ds.iter()
            .map(|d| cpu_seconds(&format!("/proc/{}/stat", d.pid())))
            .sum()
    };
    let c0 = cpu(&daemons);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let cores = (cpu(&daemons) - c0) / t0.elapsed().as_secs_f64();
    let rss_stream: f64 = daemons.iter().map(|d| rss_mib(d.pid())).sum();
    let rss_max = daemons.iter().map(|d| rss_mib(d.pid())).fold(0.0, f64::max);
    let (mut lost, mut dup, mut switches) = (0u64, 0usize, 0usize);
    for c in &consumers {
        let d = analyse(&c.received());
        lost += d.missing;
        dup += d.duplicates + d.reordered_in_epoch;
        switches += d.epoch_changes;
    }
    drop(consumers);
    // A daemon that exited is a zombie (Z) until reaped, or gone.
    let alive = daemons
        .iter()
        .filter(|d| {
            std::fs::read_to_string(format!("/proc/{}/stat", d.pid()))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
                .is_some_and(|r| !r.starts_with('Z'))
        })
        .count();

    let mut t = Table::new(
        "Scale: real daemons on this machine",
        "convergence time; all consumers served",
        &format!(
            "{} daemons (release build) and a bootstrapper on 127.81.0.x: a layered random graph \
             (layers of {layers:?}: 2 servers streaming videos/, 45 relays, 6 leaf nodes), {} \
             links, each node linked to 2 random nodes of the layer above and sometimes one of \
             its own. Times from spawning the daemons; 2 test consumers per leaf (12, \
             alpha/bravo/charlie round robin) request their video 2 s after every link is up. \
             CPU = utime+stime of all daemons over {secs} s of streaming; one run.",
            names.len(),
            links.len()
        ),
        &["measure", "value"],
    );
    let opt_s = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "not reached".into())
    };
    t.row(vec![
        "daemons spawned".into(),
        format!("{:.2} s", spawned.as_secs_f64()),
    ]);
    t.row(vec![
        format!("all {} links up at both ends", links.len()),
        opt_s(all_up),
    ]);
    t.row(vec![
        "request to all consumers served (first chunk)".into(),
        opt_s(served_at),
    ]);
    t.row(vec![
        "consumers served".into(),
        format!("{served}/{}", leaves.len() * 2),
    ]);
    t.row(vec![
        "chunks lost in sequence / duplicated or reordered in an epoch (all consumers)".into(),
        format!("{lost} / {dup}"),
    ]);
    t.row(vec![
        "moves to another server's epoch (all consumers)".into(),
        switches.to_string(),
    ]);
    t.row(vec!["RSS total idle (MiB)".into(), f1(rss_idle)]);
    t.row(vec![
        "RSS total streaming (MiB); max one daemon".into(),
        format!("{} ; {}", f1(rss_stream), f1(rss_max)),
    ]);
    t.row(vec![
        "CPU total streaming (cores)".into(),
        format!("{cores:.3}"),
    ]);
    t.row(vec![
        "daemons still running at the end".into(),
        format!("{alive}/{}", names.len()),
    ]);
    if dup > 0 {
        t.note(format!(
            "{dup} chunks reached a test consumer twice, or after a newer chunk of the same \
             epoch (the consumers are raw overlay children and see exactly what their leaf \
             forwards): an ordering failure of src/overlay/streams.rs."
        ));
    }
    t.verdict(
        served == leaves.len() * 2 && all_up.is_some() && dup == 0,
        format!(
            "links up: {}; consumers served: {served}/{}; {dup} chunks duplicated or reordered.",
            if all_up.is_some() { "all" } else { "not all" },
            leaves.len() * 2
        ),
    );
    rep.add(t);
}

pub fn run(opts: &Opts, rep: &mut Report) {
    rep.start("scale: simulator 1000 nodes, 50+ real daemons");
    crate::fanout::raise_nofile();
    simulator(opts, rep);
    real_daemons(opts, rep);
}
