//! The daemons the way CORE runs them, in the netns emulator: every topology file with real
//! (non-loopback) addresses built as namespaces, multi-homed routers forwarding between the
//! links and LANs, every daemon started without `--bind` (bound to all addresses, as the CORE
//! start scripts start them), and every client of the file running headless in its own
//! namespace, also without `--bind`.
//!
//! One emulation per topology and relay mode (`--relay native` and `--relay ffmpeg` on every
//! edge), and one of an IPv6 copy of scenario1 (native relay). In it:
//! - every client starts on its first edge (given with `--edge`, so the start is the same on
//!   every run) and its status line reads every edge it lists `up` with a finite RTT, the
//!   second edge included, which sits behind routers (its replies cross them);
//! - then the first edges are stopped, in phases planned so that no client loses both of its
//!   edges at once: kill -9 of the edge daemon, or a silent cut (`netns isolate`: the edge's
//!   host drops its own packets, no RST, no ICMP, while it keeps routing, because the client's
//!   other edge is reached *through* that host, as on a CORE router); the kinds alternate,
//!   and the ffmpeg run swaps them, so each topology sees both kinds in both modes;
//! - each client on a stopped edge switches to its other edge (routed), the switch time is
//!   printed (the client's "switched edge" log line against the fault), and the recording
//!   goes on; between phases the stopped edges come back (restart or rejoin) and the clients
//!   must read them up again;
//! - at the end every recording decodes (ffprobe), and in native mode it has 0 duplicates and
//!   0 reorderings (the edges number their datagrams; ffmpeg's raw TS cannot be counted, so
//!   there it must go on and decode).
//!
//! Clients with one edge (report-example's client1, complex's C1, C5, C6, C8, link-quality's C1
//! and C2) are checked for what makes sense: their edge reads up with a finite RTT and they
//! receive video that decodes; they are stopped before the first fault, which would leave them
//! nothing.
//!
//! `topology/demo.json` and `topology/loopback-diamond.json` use 127.x addresses: they run on
//! one machine without emulation (the emulator refuses them), each daemon bound to its own
//! address, and tests/emulate_demo.rs and the loopback tests cover them. A check without root
//! fails when a topology file is added that neither these tests build nor is loopback.
//!
//! Needs root, `ip netns`, ffprobe and nftables (the silent cut), and ffmpeg for the ffmpeg
//! relay (CI runs as root and bin/test installs them); without them a test fails under CI and
//! is reported as skipped elsewhere (`common::prereq`). Each test takes 7 s (one edge per client) to 20 s (complex),
//! about 140 s in all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::emu::*;
use common::prereq::{lacking, Need, FFMPEG, NFT};
use overlayd::emulate::{Net, Underlay};
use overlayd::topology::Topology;

const VIDEO: &str = "alpha";
/// The edges' UDP port (the default: the daemons run with their defaults, as in CORE).
const EDGE_PORT: u16 = 7702;
/// Long enough for every phase; the test ends the clients with SIGTERM when it is done.
const CLIENT_SECS: u32 = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Isolate,
}

impl Fault {
    fn what(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Isolate => "silent cut (isolate)",
        }
    }
}

/// A client of the topology and its edges, in the order the topology lists them.
struct Spec {
    name: String,
    /// (address and port, as the client prints them; edge name)
    edges: Vec<(String, String)>,
    /// Whether each edge shares a subnet with the client (else it is reached through routers).
    on_link: Vec<bool>,
}

fn specs(t: &Topology, u: &Underlay) -> Vec<Spec> {
    t.devices()
        .filter(|d| d.role == overlayd::topology::DeviceRole::Client)
        .map(|d| {
            let host = u.host(&d.name).expect("every device is a host").1;
            let nets: BTreeSet<Net> = host
                .ifaces
                .iter()
                .map(|f| u.subnets[f.subnet].net)
                .collect();
            Spec {
                name: d.name.clone(),
                edges: d
                    .neighbours
                    .iter()
                    .map(|n| {
                        let owner = t.owners_of(n.ip).next().expect("edge in the topology");
                        let at = std::net::SocketAddr::new(n.ip, EDGE_PORT);
                        (at.to_string(), owner.name.clone())
                    })
                    .collect(),
                on_link: d
                    .neighbours
                    .iter()
                    .map(|n| nets.contains(&Net::of(n.ip)))
                    .collect(),
            }
        })
        .collect()
}

/// The phases: sets of edges stopped together, chosen greedily so that every client with two
/// edges has its first edge stopped once, and no client is ever on a stopped edge whose other
/// edge is stopped too.
fn plan(specs: &[Spec]) -> Vec<Vec<String>> {
    let multi: Vec<&Spec> = specs.iter().filter(|s| s.edges.len() >= 2).collect();
    for s in &multi {
        assert_eq!(
            s.edges.len(),
            2,
            "{} lists {} edges: this test plans for two (extend plan())",
            s.name,
            s.edges.len()
        );
    }
    // Each client's current edge (index into its edges).
    let mut cur: BTreeMap<&str, usize> = multi.iter().map(|s| (s.name.as_str(), 0)).collect();
    let mut todo: Vec<String> = Vec::new();
    for s in &multi {
        if !todo.contains(&s.edges[0].1) {
            todo.push(s.edges[0].1.clone());
        }
    }
    let mut phases = Vec::new();
    while !todo.is_empty() {
        let mut phase: Vec<String> = Vec::new();
        for e in &todo {
            let mut f = phase.clone();
            f.push(e.clone());
            let safe = multi.iter().all(|s| {
                let c = cur[s.name.as_str()];
                !f.contains(&s.edges[c].1) || !f.contains(&s.edges[1 - c].1)
            });
            if safe {
                phase = f;
            }
        }
        assert!(!phase.is_empty(), "no safe phase for {todo:?}");
        todo.retain(|e| !phase.contains(e));
        for s in &multi {
            let c = cur.get_mut(s.name.as_str()).unwrap();
            if phase.contains(&s.edges[*c].1) {
                *c = 1 - *c;
            }
        }
        phases.push(phase);
    }
    phases
}

fn routed(test: &'static str, tag: &str, topo: &str, relay: &str) {
    let native = relay == "native";
    let t0 = Instant::now();
    let emu = Emu::up_with(test, tag, topo, true, relay, &[]);
    let overlay = emu.overlay_devices();
    let refs: Vec<&str> = overlay.iter().map(String::as_str).collect();
    emu.wait_neighbours(&refs);
    println!(
        "{test}: {topo} with --relay {relay}: built, and every overlay neighbour up after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    sleep(1.5); // floods: every edge knows where the video comes from

    let specs = specs(emu.topology(), emu.underlay());
    assert!(!specs.is_empty(), "{topo} has no client");
    let phases = plan(&specs);
    println!("{test}: fault phases {phases:?}");
    let clients: Vec<Client> = specs
        .iter()
        .map(|s| {
            let first = &s.edges[0].0;
            emu.client_with(&s.name, &s.name, VIDEO, CLIENT_SECS, &["--edge", first])
        })
        .collect();

    // Every client on its first edge, every listed edge up with a finite RTT, video flowing.
    for (s, c) in specs.iter().zip(&clients) {
        c.wait_bytes(50_000, 15.0);
        let addrs: Vec<&str> = s.edges.iter().map(|e| e.0.as_str()).collect();
        let table = c.wait_edges(
            0,
            10.0,
            &format!(
                "every edge of {} ({}) reads up with a finite RTT",
                s.name,
                s.edges
                    .iter()
                    .zip(&s.on_link)
                    .map(|(e, l)| format!("{} {}{}", e.1, e.0, if *l { "" } else { " routed" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            |t| {
                addrs
                    .iter()
                    .all(|a| t.iter().any(|r| r.addr == *a && r.answers()))
            },
        );
        let first = &s.edges[0].0;
        assert!(
            c.log().contains(&format!("using edge {first} (initial)")),
            "{test}: {} did not start on its first edge {first}; its log:\n{}",
            s.name,
            c.log()
        );
        let rtts: Vec<String> = table
            .iter()
            .map(|r| format!("{} {:.1} ms", r.addr, r.rtt_ms.unwrap_or(f64::NAN)))
            .collect();
        println!(
            "{test}: {} on {} ({}): {}",
            s.name,
            s.edges[0].1,
            first,
            rtts.join(", ")
        );
    }

    // Clients with one edge: checked now, stopped before any fault.
    type Run = Vec<(Spec, Client)>;
    let (singles, clients): (Run, Run) = specs
        .into_iter()
        .zip(clients)
        .partition(|(s, _)| s.edges.len() < 2);
    for (_, c) in &singles {
        c.terminate();
    }
    for (s, c) in singles {
        let r = c.finish();
        check_recording(test, native, &r, 30);
        report(
            test,
            &format!("one edge ({})", s.edges[0].1),
            &r,
            Instant::now(),
            None,
        );
    }

    // The phases: stop the first edges, watch the clients move to their routed edge.
    let mut cur: BTreeMap<String, usize> =
        clients.iter().map(|(s, _)| (s.name.clone(), 0)).collect();
    // The switches each client made ("O2 -> O3").
    let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut kind = if native { Fault::Kill } else { Fault::Isolate };
    let mut fault_times = Vec::new();
    for (p, phase) in phases.iter().enumerate() {
        sleep(2.0); // the recordings grow before the fault, too
        let faults: Vec<(String, Fault)> = phase
            .iter()
            .map(|e| {
                let f = (e.clone(), kind);
                kind = if kind == Fault::Kill {
                    Fault::Isolate
                } else {
                    Fault::Kill
                };
                f
            })
            .collect();
        let marks: Vec<usize> = clients.iter().map(|(_, c)| c.log().len()).collect();
        let (at, at_unix) = (Instant::now(), unix_now());
        let fault_marks: Vec<usize> = faults.iter().map(|(e, _)| emu.mark(e)).collect();
        for (e, f) in &faults {
            match f {
                Fault::Kill => emu.ok(&["kill", e]),
                Fault::Isolate => emu.ok(&["isolate", e]),
            };
        }
        fault_times.push(at);
        let what: Vec<String> = faults
            .iter()
            .map(|(e, f)| format!("{} {e}", f.what()))
            .collect();
        let what = what.join(" + ");
        println!("{test}: phase {}: {what}", p + 1);
        for ((s, c), mark) in clients.iter().zip(&marks) {
            let i = cur[&s.name];
            let Some((_, f)) = faults.iter().find(|(e, _)| *e == s.edges[i].1) else {
                continue;
            };
            let (from, to) = (&s.edges[i].0, &s.edges[1 - i].0);
            let needle = format!("switched edge {from} -> {to}");
            let deadline = Instant::now() + Duration::from_secs(10);
            let line = loop {
                let log = c.log();
                if let Some(l) = log
                    .get(*mark..)
                    .unwrap_or("")
                    .lines()
                    .find(|l| l.contains(&needle))
                {
                    break l.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "{test}: {} did not switch from {} ({from}) to {} ({to}) within 10 s of {}; its log:\n{log}",
                    s.name,
                    s.edges[i].1,
                    s.edges[1 - i].1,
                    f.what()
                );
                sleep(0.02);
            };
            let switched = log_time(&line).map(|t| t - at_unix);
            let again = c.wait_growth_after(at + Duration::from_millis(100), 10.0) - at;
            let routed = if s.on_link[1 - i] {
                "on-link"
            } else {
                "routed"
            };
            println!(
                "{test}: SWITCH {} {} {}: {} -> {} ({routed}) after {} s, recording growing again after {:.2} s",
                s.name,
                relay,
                f.what(),
                s.edges[i].1,
                s.edges[1 - i].1,
                switched.map_or("?".into(), |d| format!("{d:.2}")),
                again.as_secs_f64()
            );
            history.entry(s.name.clone()).or_default().push(format!(
                "{} -> {}",
                s.edges[i].1,
                s.edges[1 - i].1
            ));
            *cur.get_mut(&s.name).unwrap() = 1 - i;
        }
        if p + 1 == phases.len() {
            break;
        }
        // Bring the stopped edges back; every client that lists one must read it up again.
        let marks: Vec<usize> = clients.iter().map(|(_, c)| c.stdout().len()).collect();
        for ((e, f), fm) in faults.iter().zip(&fault_marks) {
            if *f == Fault::Isolate {
                // The cut lasts until the isolated device has given its links up (their dead
                // timer): its clients move within a fraction of that, and a shorter cut would
                // leave the links standing (nothing to come "up" again).
                emu.wait_log(e, *fm, &["neighbour down"], 10.0);
            }
            let m = emu.mark(e);
            match f {
                Fault::Kill => emu.ok(&["start", e]),
                Fault::Isolate => emu.ok(&["rejoin", e]),
            };
            emu.wait_log(e, m, &["neighbour up"], 10.0);
        }
        for ((s, c), m) in clients.iter().zip(&marks) {
            for (addr, name) in &s.edges {
                if phase.contains(name) {
                    c.wait_edges(*m, 10.0, &format!("{name} ({addr}) reads up again"), |t| {
                        t.iter().any(|r| r.addr == *addr && r.answers())
                    });
                }
            }
        }
    }
    sleep(2.5); // and the recordings go on after the last switch

    for (_, c) in &clients {
        c.terminate();
    }
    for (s, c) in clients {
        let r = c.finish();
        check_recording(test, native, &r, 150);
        let used: BTreeSet<String> = r.stats["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["bytes"].as_u64() > Some(0))
            .filter_map(|e| e["edge"].as_str().map(str::to_string))
            .collect();
        for (addr, name) in &s.edges {
            assert!(
                used.contains(addr),
                "{test}: {} received nothing from {name} ({addr}): {}",
                s.name,
                r.stats
            );
        }
        let h = history.remove(&s.name).unwrap_or_default();
        assert!(
            r.n("switches") >= h.len() as u64,
            "{test}: {} counted {} switches, made {:?}: {}",
            s.name,
            r.n("switches"),
            h,
            r.stats
        );
        report(
            test,
            &format!("{relay}: {}", h.join(", ")),
            &r,
            fault_times[0],
            None,
        );
    }
}

/// The client exited well, received enough, the recording decodes; in native mode it has no
/// duplicate and no reordering (raw TS from ffmpeg carries no numbers to count them by).
fn check_recording(test: &str, native: bool, r: &Received, min_chunks: u64) {
    if native {
        r.check(test, min_chunks);
        return;
    }
    assert!(
        r.ok,
        "{test}: client {} failed; its log:\n{}",
        r.name, r.log
    );
    assert!(
        r.n("raw_datagrams") > 0 && r.n("bytes") >= min_chunks * 1316,
        "{test}: {} received too little raw TS: {}",
        r.name,
        r.stats
    );
    match &r.frames {
        Ok(f) => assert!(*f > 0, "{test}: {}'s recording decodes to no frame", r.name),
        Err(e) => panic!("{test}: {}'s recording does not decode: {e}", r.name),
    }
}

macro_rules! routed_test {
    ($name:ident, $tag:literal, $topo:literal, $relay:literal) => {
        #[test]
        fn $name() {
            // The silent cuts are nftables rules; the ffmpeg relay needs ffmpeg.
            let ffmpeg: &[Need] = if $relay == "ffmpeg" { &[FFMPEG] } else { &[] };
            if skip(stringify!($name)) || lacking(stringify!($name), &[&[NFT], ffmpeg].concat()) {
                return;
            }
            routed(stringify!($name), $tag, $topo, $relay);
        }
    };
}

/// scenario1.json with every address moved to IPv6 (`10.0.N.H` becomes `fd00:0:0:N::H`),
/// written next to the test's other files; returns its path.
fn ipv6_copy(topo: &str) -> String {
    let text = std::fs::read_to_string(repo().join("topology").join(topo)).unwrap();
    let mut t: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v6 = |a: &serde_json::Value| -> serde_json::Value {
        let ip: std::net::Ipv4Addr = a.as_str().unwrap().parse().unwrap();
        let [_, _, n, h] = ip.octets();
        format!("fd00:0:0:{n}::{h}").into()
    };
    for d in t.as_object_mut().unwrap().values_mut() {
        for key in ["addresses", "neighbours"] {
            let list: Vec<serde_json::Value> = d[key].as_array().unwrap().iter().map(v6).collect();
            d[key] = list.into();
        }
    }
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("routed-ipv6-{}-{topo}", std::process::id()));
    std::fs::write(&p, serde_json::to_string_pretty(&t).unwrap()).unwrap();
    p.display().to_string()
}

/// The topology files of topology/ these tests build, and those they cannot (loopback).
const COVERED: [&str; 5] = [
    "report-example.json",
    "scenario1.json",
    "scenario2.json",
    "complex.json",
    "link-quality.json",
];
const LOOPBACK: [&str; 2] = ["demo.json", "loopback-diamond.json"];

#[test]
fn the_fault_plan_stops_every_first_edge_and_never_both_edges_of_a_client() {
    let phases = |topo: &str| {
        let t = overlayd::topology::load(&repo().join("topology").join(topo)).unwrap();
        let u = Underlay::from_topology(&t).unwrap();
        plan(&specs(&t, &u))
    };
    // scenario1 and 2: each client's second edge is the other's first: one at a time.
    assert_eq!(phases("scenario1.json"), [["O2"], ["O3"]]);
    assert_eq!(phases("scenario2.json"), [["O4"], ["O5"]]);
    // complex: O6 first (C2, C3 move to O7), then O7 and O10 together (C2, C3, C4, C7 to O6).
    assert_eq!(phases("complex.json"), vec![vec!["O6"], vec!["O7", "O10"]]);
    // One edge per client: nothing to stop.
    assert!(phases("report-example.json").is_empty());
}

#[test]
fn every_topology_file_is_covered_or_loopback() {
    let mut seen = Vec::new();
    for e in std::fs::read_dir(repo().join("topology")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let t = overlayd::topology::load(&p).unwrap();
        match Underlay::from_topology(&t) {
            Ok(_) => assert!(
                COVERED.contains(&name.as_str()),
                "topology/{name} can be emulated: add its routed tests here"
            ),
            Err(e) => assert!(
                e.contains("loopback") && LOOPBACK.contains(&name.as_str()),
                "topology/{name}: {e}"
            ),
        }
        seen.push(name);
    }
    for f in COVERED.iter().chain(&LOOPBACK) {
        assert!(seen.iter().any(|s| s == f), "topology/{f} is gone");
    }
}

routed_test!(report_example_native, "xr", "report-example.json", "native");
routed_test!(report_example_ffmpeg, "xs", "report-example.json", "ffmpeg");
routed_test!(scenario1_native, "xa", "scenario1.json", "native");
routed_test!(scenario1_ffmpeg, "xb", "scenario1.json", "ffmpeg");
routed_test!(scenario2_native, "xc", "scenario2.json", "native");
routed_test!(scenario2_ffmpeg, "xd", "scenario2.json", "ffmpeg");
routed_test!(complex_native, "xe", "complex.json", "native");
routed_test!(complex_ffmpeg, "xf", "complex.json", "ffmpeg");
routed_test!(link_quality_native, "xq", "link-quality.json", "native");
routed_test!(link_quality_ffmpeg, "xl", "link-quality.json", "ffmpeg");

#[test]
fn scenario1_ipv6_native() {
    let test = "scenario1_ipv6_native";
    if skip(test) || lacking(test, &[NFT]) {
        return;
    }
    let path = ipv6_copy("scenario1.json");
    // `routed` takes a file of topology/; an absolute path replaces that folder.
    routed(test, "xv", &path, "native");
    let _ = std::fs::remove_file(&path);
}
