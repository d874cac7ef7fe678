//! Real processes on loopback, hitless redundancy: the diamond S1 - O1 - {O2, O3} - O4 with
//! O4 started `--redundant`, so it takes the stream from both O2 and O3 and merges them by
//! sequence number. kill -9 of either middle relay loses no chunk at the test consumer (a child
//! of O4), with no duplicate and no reordering. The extra bandwidth (bytes O4 takes in per
//! byte it delivers, from its /status) is printed.
//!
//! Addresses: 127.77.N.x per test.

mod common;

use std::net::SocketAddr;

use std::time::Duration;

use common::consumer::{analyse, Consumer};
use common::diamond::{self, Diamond};
use common::some_video;
use overlayd::net::control::http_get;
use overlayd::observe::NodeStatus;

// Generous: the machine is shared and often loaded far beyond its two cores.
const WAIT: Duration = Duration::from_secs(40);

fn ip(net: u8, i: u8) -> String {
    format!("127.77.{net}.{i}")
}

/// The diamond with O4 redundant.
fn start(net: u8) -> Diamond {
    diamond::start("redundant", "127.77", net, |name| {
        if name == "O4" {
            vec!["--redundant"]
        } else {
            vec![]
        }
    })
}

/// The value of `key=` in a log line (tracing's field format).
fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 2..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn status(net: u8) -> NodeStatus {
    let addr: SocketAddr = format!("{}:7704", ip(net, 5)).parse().unwrap();
    let (code, body) = http_get(addr, "/status", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Start the overlay and the consumer, wait until O4 has both parents and the stream flows;
/// print the measured extra bandwidth.
fn redundant_stream(net: u8, video: &str) -> (Diamond, Consumer) {
    let mut ov = start(net);
    let psk = overlayd::keyfile::load(&ov.key).unwrap().psk;
    let o4_addr = format!("{}:7701", ip(net, 5)).parse().unwrap();
    ov.daemon("O4").wait_for(&["neighbour up", "O2"], WAIT);
    ov.daemon("O4").wait_for(&["neighbour up", "O3"], WAIT);
    ov.daemon("O4").wait_for(&["hitless redundancy on"], WAIT);
    let consumer = Consumer::start(o4_addr, psk, "TestConsumer", video);
    assert!(
        consumer.wait_chunks(50, WAIT),
        "no stream reached the consumer; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    let second_line = ov
        .daemon("O4")
        .wait_for(&["second parent chosen", video], WAIT);
    let parent = field(&second_line, "parent");
    let second = field(&second_line, "second");
    assert_ne!(parent, second);
    assert!(["O2", "O3"].contains(&parent.as_str()), "{second_line}");
    assert!(["O2", "O3"].contains(&second.as_str()), "{second_line}");
    // Let both feeds run, then read what they cost.
    let n = consumer.received().len();
    assert!(consumer.wait_chunks(n + 200, WAIT));
    let st = status(net);
    let s = st.streams.iter().find(|s| s.stream == video).unwrap();
    let route = st.routes.iter().find(|r| r.stream == video).unwrap();
    // The two may have swapped roles since (near-equal paths, noisy delays): still a pair.
    let mut pair = [route.parent.clone().unwrap(), route.second.clone().unwrap()];
    pair.sort();
    assert_eq!(pair, ["O2", "O3"], "{route:?}");
    let ratio = s.bytes_in as f64 / s.bytes_out as f64;
    println!(
        "O4 with two parents ({parent} + {second}): bytes in {} / bytes delivered {} = {ratio:.3}; \
         redundant copies dropped {} ({} bytes)",
        s.bytes_in, s.bytes_out, s.counters.redundant_duplicates, s.counters.redundant_bytes
    );
    println!("O4 counters {:?}; links {:?}", s.counters, st.links);
    assert!(
        s.counters.redundant_duplicates > 0,
        "both parents feed O4: {:?}",
        s.counters
    );
    assert!(ratio > 1.5, "both parents feed O4: {ratio}");
    (ov, consumer)
}

fn kill_and_check(net: u8, which: &str) {
    let video = some_video();
    let (mut ov, consumer) = redundant_stream(net, &video);
    let st = status(net);
    let route = st.routes.iter().find(|r| r.stream == video).unwrap();
    let (parent, second) = (route.parent.clone().unwrap(), route.second.clone().unwrap());
    let (victim, survivor) = if which == "parent" {
        (parent, second)
    } else {
        (second, parent)
    };
    let before = consumer.received().len();
    ov.daemon(&victim).kill();
    assert!(
        consumer.wait_chunks(before + 300, WAIT),
        "stream did not go on after killing {victim}; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    // Which line depends on the role the victim had when it died (a swap may have raced the
    // status read just before the kill): either way the survivor feeds on alone.
    let line = ov.daemon("O4").wait_for(&["neighbour down", &victim], WAIT);
    let after: Vec<String> = ov
        .daemon("O4")
        .log()
        .into_iter()
        .skip_while(|l| *l != line)
        .filter(|l| l.contains("second parent takes over") || l.contains("second parent lost"))
        .collect();
    println!("O4 after the kill: {after:?}");
    assert!(
        !after.is_empty(),
        "O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    let st = status(net);
    let route = st.routes.iter().find(|r| r.stream == video).unwrap();
    assert_eq!(
        route.parent.as_deref(),
        Some(survivor.as_str()),
        "{route:?}; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    let rx = consumer.received();
    let d = analyse(&rx);
    println!("kill -9 of O4's {which} {victim}: {d}");
    assert_eq!(
        (d.missing, d.duplicates, d.reorderings),
        (0, 0, 0),
        "{d:?}; O4 log:\n{}",
        ov.daemon("O4").log().join("\n")
    );
    // The consumer leaves: the cancel climbs through the surviving parent to the server.
    consumer.stop().unwrap();
    for name in ["O4", survivor.as_str(), "O1"] {
        ov.daemon(name).wait_for(&["stream stopped", &video], WAIT);
    }
    ov.daemon("S1").wait_for(&["source stopped", &video], WAIT);
}

#[test]
fn kill_of_the_parent_relay_loses_no_chunk() {
    kill_and_check(1, "parent");
}

#[test]
fn kill_of_the_second_relay_loses_no_chunk() {
    kill_and_check(2, "second");
}

#[test]
fn an_empty_name_in_redundant_videos_is_a_one_line_error() {
    let (code, _, err) = common::run(&[
        "--role",
        "node",
        "--name",
        "O4",
        "--bootstrap",
        "127.77.9.1",
        "--redundant-videos",
        "alpha,,beta",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has an empty video name"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
