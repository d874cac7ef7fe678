//! Real processes on loopback: a server streams a real clip through a diamond of nodes to a
//! test consumer; kill -9 or SIGSTOP of the active middle node moves the stream to the other
//! branch with no duplicate and no reordering, and SIGTERM (a drain) with no loss either; kill
//! -9 of the server feeding a consumer moves it to another server offering the same video. The
//! measured gaps are printed (timing goals are the
//! benchmarks' business; the bounds here are generous liveness bounds).
//!
//! Addresses: 127.72.N.x per test (127.79.N.x for the two-server overlay).

mod common;

use std::time::{Duration, Instant};

use common::consumer::{analyse, Consumer};
use common::diamond::{self, Diamond};
use common::{some_video, Daemon};

const WAIT: Duration = Duration::from_secs(20);

fn start_diamond(net: u8) -> Diamond {
    diamond::start("stream", "127.72", net, |_| vec![])
}

/// Once O4 has both its links up, a test consumer on O4 asks for the first clip; returns the
/// clip's name and the consumer.
fn consume_at_o4(ov: &mut Diamond, net: u8) -> (String, Consumer) {
    let video = some_video();
    ov.daemon("O4").wait_for(&["neighbour up", "O2"], WAIT);
    ov.daemon("O4").wait_for(&["neighbour up", "O3"], WAIT);
    let consumer = Consumer::at(&format!("127.72.{net}.5"), &ov.key, "TestConsumer", &video);
    (video, consumer)
}

/// The parent a daemon's log names last (chosen, switched to, or failed over to).
fn current_parent(d: &Daemon) -> Option<String> {
    d.log()
        .iter()
        .rev()
        .find(|l| {
            l.contains("parent chosen")
                || l.contains("parent switch complete")
                || l.contains("failover: parent lost")
                || l.contains("grandfather connected")
        })
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("parent="))
                .map(|p| p.trim_matches('"').to_string())
        })
}

#[test]
fn kill_of_the_active_middle_node_moves_the_stream_without_duplicates() {
    let (middle, gap, d, _) = fault_moves_the_stream(1, |ov, middle| ov.daemon(middle).kill());
    println!(
        "kill -9 of {middle}: gap at the consumer {:.1} ms; overall {d}",
        gap.as_secs_f64() * 1e3
    );
}

/// A hung relay closes nothing: O4 suspects it from the stream's silence alone (long before
/// the 1 s dead timer could) and moves make-before-break.
#[test]
fn a_hung_middle_node_is_suspected_and_left_without_duplicates() {
    // The stopped process is killed (SIGKILL works on it) when the overlay is dropped.
    let (middle, gap, d, o4_log) = fault_moves_the_stream(3, |ov, middle| {
        let pid = ov.daemon(middle).pid();
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    });
    println!(
        "SIGSTOP of {middle}: gap at the consumer {:.1} ms; overall {d}",
        gap.as_secs_f64() * 1e3
    );
    let suspicion = o4_log
        .iter()
        .find(|l| l.contains("parent stalled: suspected") && l.contains(&middle));
    let Some(suspicion) = suspicion else {
        panic!("O4 never suspected {middle}:\n{}", o4_log.join("\n"));
    };
    println!("O4: {suspicion}");
}

/// SIGTERM of the active middle node: it drains — O4 moves make-before-break to the other
/// branch while it still feeds — and exits by itself; the consumer loses nothing.
#[test]
fn a_terminated_middle_node_drains_its_child_away_without_losing_a_chunk() {
    let net = 4;
    let mut ov = start_diamond(net);
    let (_, consumer) = consume_at_o4(&mut ov, net);
    assert!(
        consumer.wait_chunks(50, WAIT),
        "no stream reached the consumer"
    );
    ov.daemon("O4").wait_for(&["parent chosen"], WAIT);
    let middle = current_parent(ov.daemon("O4")).expect("O4 logged its parent");
    assert!(middle == "O2" || middle == "O3", "parent {middle}");
    // Both branches must be usable before the drain, or there is nowhere to go.
    let other = if middle == "O2" { "O3" } else { "O2" };
    ov.daemon("O4").wait_for(&["neighbour up", other], WAIT);

    let before = consumer.received().len();
    let pid = ov.daemon(&middle).pid();
    let term_at = Instant::now();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let code = ov.daemon(&middle).wait_exit(Duration::from_secs(10));
    let exited_after = term_at.elapsed();
    assert_eq!(
        code,
        Some(0),
        "{middle} did not exit cleanly; its log:\n{}",
        ov.daemon(&middle).log().join("\n")
    );
    assert!(
        !ov.daemon(&middle)
            .matching(&["drained: every child and local client moved elsewhere"])
            .is_empty(),
        "{middle} exited without draining; its log:\n{}",
        ov.daemon(&middle).log().join("\n")
    );
    assert!(
        consumer.wait_chunks(before + 100, WAIT),
        "stream did not go on after {middle} drained; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    assert_eq!(current_parent(ov.daemon("O4")).as_deref(), Some(other));
    let rx = consumer.received();
    let d = analyse(&rx);
    let longest_after = rx
        .windows(2)
        .filter(|w| w[1].at > term_at)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default();
    println!(
        "SIGTERM of {middle}: exited after {:.0} ms, longest gap after it {:.1} ms; overall {d}",
        exited_after.as_secs_f64() * 1e3,
        longest_after.as_secs_f64() * 1e3
    );
    assert_eq!((d.missing, d.duplicates, d.reorderings), (0, 0, 0), "{d}");
    consumer.stop().unwrap();
}

/// O4 streams through a middle node; `fault` hits it; the stream must come back through the
/// other branch (or the grandfather O1) with no duplicate and no reordering. Returns the
/// middle node, the gap at the consumer, the consumer's analysis and O4's log.
fn fault_moves_the_stream(
    net: u8,
    fault: impl FnOnce(&mut Diamond, &str),
) -> (String, Duration, common::consumer::SeqReport, Vec<String>) {
    let mut ov = start_diamond(net);
    let (_, consumer) = consume_at_o4(&mut ov, net);
    assert!(
        consumer.wait_chunks(50, WAIT),
        "no stream reached the consumer; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    ov.daemon("O4").wait_for(&["parent chosen"], WAIT);

    // Well into the clip, where its GOP is longer than the GOP cache's bound: what a moving
    // child lacks comes from the recent ring.
    std::thread::sleep(Duration::from_millis(1500));
    // The parent now, read just before the fault: on near-equal loopback branches O4 may
    // switch at any time (a CI run saw it move from O3 to O2 during the wait above, so the
    // fault hit the branch it had left and nothing was suspected).
    let middle = current_parent(ov.daemon("O4")).expect("O4 logged its parent");
    let other = if middle == "O2" { "O3" } else { "O2" };
    assert!(middle == "O2" || middle == "O3", "parent {middle}");
    let before = consumer.received().len();
    let fault_at = Instant::now();
    fault(&mut ov, &middle);
    assert!(
        consumer.wait_chunks(before + 100, WAIT),
        "stream did not resume after the fault on {middle}; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    // O4 moves to the other branch, or (when it has no route through it yet, e.g. on a loaded
    // host where that branch's first flood is late) dials its grandfather O1 directly.
    let moved = |p: Option<String>| matches!(p.as_deref(), Some(p) if p == other || p == "O1");
    let deadline = Instant::now() + WAIT;
    while !moved(current_parent(ov.daemon("O4"))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        moved(current_parent(ov.daemon("O4"))),
        "O4 did not move to {other} or O1; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );

    let rx = consumer.received();
    let d = analyse(&rx);
    let first_after = rx.iter().find(|r| r.at > fault_at).map(|r| r.at);
    let last_before = rx.iter().rev().find(|r| r.at <= fault_at).map(|r| r.at);
    let gap = match (last_before, first_after) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    };
    assert_eq!(d.duplicates, 0, "{d}");
    assert_eq!(d.reorderings, 0, "{d}");
    // The new parent's parent replays what the dead or hung one took with it.
    assert_eq!(d.missing, 0, "{d}");
    assert!(gap < Duration::from_secs(5), "gap {gap:?}");
    consumer.stop().unwrap();
    let o4_log = ov.daemon("O4").log();
    (middle, gap, d, o4_log)
}

#[test]
fn cancel_stops_the_stream_all_the_way_to_the_server() {
    let net = 2;
    let mut ov = start_diamond(net);
    let (video, consumer) = consume_at_o4(&mut ov, net);
    assert!(consumer.wait_chunks(20, WAIT));
    consumer.stop().unwrap();
    // The cancel climbs to the server, which stops reading the file.
    for name in ["O4", "O1"] {
        ov.daemon(name).wait_for(&["stream stopped", &video], WAIT);
    }
    ov.daemon("S1").wait_for(&["stream stopped", &video], WAIT);
    ov.daemon("S1").wait_for(&["source stopped", &video], WAIT);
}

/// Two servers with the same clips, each behind its own node, both reaching O3 where the test
/// consumer is: S1 - O1 - O3 - O2 - S2, on 127.79.`net`.x. kill -9 of the server feeding O3:
/// its node withdraws the routes over the dead link at once, and O3 is fed by the other server.
/// The other server's source starts cold, in its default mode (`auto`: the paced reader for
/// these clips), and its stream begins on a keyframe: no chunk of the new epoch before the
/// first keyframe chunk holds video. Returns the time from the kill to the first chunk of the
/// other server at the consumer.
fn server_death(net: u8, withdraw: bool) -> Duration {
    let extra = move |_: &str| {
        if withdraw {
            vec![]
        } else {
            vec!["--no-route-withdrawal"]
        }
    };
    let mut ov = diamond::two_servers("server-death", "127.79", net, extra);
    let daemons = &mut ov.daemons;
    let o3 = 4;
    daemons[o3].wait_for(&["neighbour up", "O1"], WAIT);
    daemons[o3].wait_for(&["neighbour up", "O2"], WAIT);
    // A flood of each server (every second) has reached O3.
    std::thread::sleep(Duration::from_millis(1500));
    let video = some_video();
    let consumer = Consumer::at(&format!("127.79.{net}.5"), &ov.key, "TestConsumer", &video);
    assert!(
        consumer.wait_chunks(50, WAIT),
        "no stream reached the consumer; O3 log:\n{}",
        daemons[o3].log().join("\n")
    );
    let parent = current_parent(&daemons[o3]).expect("O3 logged its parent");
    let (feeder, other_node) = match parent.as_str() {
        "O1" => ("S1", "O2"),
        "O2" => ("S2", "O1"),
        p => panic!("O3 fed by {p}"),
    };
    let old_epoch = consumer.received().last().expect("fed").epoch;
    let killed_at = Instant::now();
    daemons
        .iter_mut()
        .find(|d| d.name == feeder)
        .expect("listed")
        .kill();
    let deadline = Instant::now() + WAIT;
    let first_new = loop {
        if let Some(r) = consumer
            .received()
            .into_iter()
            .find(|r| r.at > killed_at && r.epoch != old_epoch)
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer was not fed by the other server after kill -9 of {feeder}; O3 log:\n{}",
            daemons[o3].log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(consumer.wait_chunks(consumer.received().len() + 50, WAIT));
    assert_eq!(current_parent(&daemons[o3]).as_deref(), Some(other_node));
    let rx = consumer.received();
    let d = analyse(&rx);
    assert_eq!((d.duplicates, d.reordered_in_epoch), (0, 0), "{d}");
    // Fed by the other server: every chunk after the switch is of its epoch.
    let new: Vec<_> = rx.iter().filter(|r| r.at >= first_new.at).collect();
    assert!(new.iter().all(|r| r.epoch == first_new.epoch), "{d}");
    let key = new
        .iter()
        .position(|r| r.keyframe)
        .expect("a keyframe from the other server");
    assert!(
        new[..key].iter().all(|r| !r.video_start) && new[key].video_start,
        "the other server's stream does not begin on a keyframe: {:?}",
        &new[..=key]
    );
    let other_server = if feeder == "S1" { "S2" } else { "S1" };
    let other = daemons
        .iter()
        .find(|d| d.name == other_server)
        .expect("listed");
    let started = other.matching(&["source started", &video]);
    assert!(
        started.iter().any(|l| l.contains("mode=Paced")),
        "{other_server} did not start the paced reader: {started:?}"
    );
    consumer.stop().unwrap();
    first_new.at.duration_since(killed_at)
}

#[test]
fn kill_of_the_feeding_server_moves_the_consumer_to_the_other_server() {
    let new = server_death(1, true);
    let old = server_death(2, false);
    println!(
        "kill -9 of the feeding server, video on the other server: first chunk of the other \
         server {:.1} ms after the kill with withdrawals ({:.1} ms with --no-route-withdrawal)",
        new.as_secs_f64() * 1e3,
        old.as_secs_f64() * 1e3
    );
}

/// A chain S1 - O1 - O2 - O3 on 127.72.`net`.x: O3's only neighbour is O2. SIGTERM of O2: O3
/// has no other parent, so it dials its grandfather O1 while O2 still feeds it, moves there
/// make-before-break, and O2 exits drained, well before its bound; the consumer on O3 loses
/// nothing.
#[test]
fn an_only_parent_that_drains_hands_its_child_to_the_grandfather_without_loss() {
    let net = 6;
    let ip = |i: u8| format!("127.72.{net}.{i}");
    let dir = common::TempDir::new("drain-chain");
    let text = format!(
        r#"{{
  "S1": {{ "neighbours": ["{o1}"], "addresses": ["{s1}"] }},
  "O1": {{ "neighbours": ["{s1}", "{o2}"], "addresses": ["{o1}"] }},
  "O2": {{ "neighbours": ["{o1}", "{o3}"], "addresses": ["{o2}"] }},
  "O3": {{ "neighbours": ["{o2}"], "addresses": ["{o3}"] }}
}}"#,
        s1 = ip(1),
        o1 = ip(2),
        o2 = ip(3),
        o3 = ip(4)
    );
    let topo = dir.path("topology.json");
    std::fs::write(&topo, text).unwrap();
    let key = dir.path("k");
    common::keygen(&key);
    let boot = ip(100);
    let _b = common::bootstrapper(&topo, &boot);
    let mut daemons: Vec<Daemon> = ["S1", "O1", "O2", "O3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let role = common::role_of(name);
            common::device(role, name, &ip(i as u8 + 1), &boot, &key, &[])
        })
        .collect();
    daemons[3].wait_for(&["neighbour up", "O2"], WAIT);
    let video = some_video();
    let consumer = Consumer::at(&ip(4), &key, "TestConsumer", &video);
    assert!(
        consumer.wait_chunks(50, WAIT),
        "no stream reached O3; its log:\n{}",
        daemons[3].log().join("\n")
    );
    // O2 has told O3 its own provider, O1, by now (asked at the subscription).
    std::thread::sleep(Duration::from_millis(1500));
    let before = consumer.received().len();
    let pid = daemons[2].pid();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let term_at = Instant::now();
    let code = daemons[2].wait_exit(Duration::from_secs(10));
    let exited_after = term_at.elapsed();
    assert_eq!(code, Some(0), "O2 log:\n{}", daemons[2].log().join("\n"));
    assert!(
        !daemons[2]
            .matching(&["drained: every child and local client moved elsewhere"])
            .is_empty(),
        "O2 exited without draining (at its bound?); O3 log:\n{}",
        daemons[3].log().join("\n")
    );
    daemons[3].wait_for(&["grandfather connected, switching to it", "O1"], WAIT);
    assert!(
        consumer.wait_chunks(before + 100, WAIT),
        "the stream did not go on after O2 drained; O3 log:\n{}",
        daemons[3].log().join("\n")
    );
    assert_eq!(current_parent(&daemons[3]).as_deref(), Some("O1"));
    let rx = consumer.received();
    let d = analyse(&rx);
    println!(
        "SIGTERM of O2, O3's only parent: exited after {:.0} ms; {d}",
        exited_after.as_secs_f64() * 1e3
    );
    assert_eq!((d.missing, d.duplicates, d.reorderings), (0, 0, 0), "{d}");
    consumer.stop().unwrap();
}
