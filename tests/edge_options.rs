//! The edge's command-line options `--gop-cache-bytes` and `--max-clients`: bad values are a
//! one-line argument error, and `--gop-cache-bytes 0` really turns the GOP cache off (a real
//! server feeding two real edges, one with the cache and one without; raw UDP clients).
//! Addresses 127.91.200.x.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{bootstrapper, keygen, run, Daemon, TempDir};
use overlayd::wire::client::{ClientMsg, Probe, VideoData, VideoRequest, VIDEO_FLAG_CACHED};

#[test]
fn bad_option_values_are_one_line_argument_errors() {
    for (opt, val) in [
        ("--gop-cache-bytes", "-1"),
        ("--gop-cache-bytes", "lots"),
        ("--max-clients", "0"),
        ("--max-clients", "many"),
    ] {
        let (code, _, err) = run(&[
            "--role",
            "edge",
            "--name",
            "E",
            "--bootstrap",
            "127.0.0.1",
            opt,
            val,
        ]);
        assert_eq!(code, 2, "{opt} {val}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{opt} {val}: {err}");
        assert!(err.contains(opt) || err.contains(val), "{opt} {val}: {err}");
    }
}

fn encode(m: ClientMsg) -> Bytes {
    let mut b = BytesMut::new();
    m.encode(&mut b).unwrap();
    b.freeze()
}

/// Probe for a cookie, request alpha, return the socket and the first video datagram.
fn join(edge: SocketAddr, ip: &str, stream: u32) -> (UdpSocket, VideoData) {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.connect(edge).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut cookie = None;
    let mut requested = Instant::now() - Duration::from_secs(1);
    while Instant::now() < deadline {
        match cookie {
            None => {
                s.send(&encode(ClientMsg::Probe(Probe { token: 1 })))
                    .unwrap();
            }
            Some(c) if requested.elapsed() > Duration::from_millis(300) => {
                requested = Instant::now();
                let req = ClientMsg::VideoRequest(VideoRequest {
                    cookie: c,
                    stream,
                    flags: 0,
                    video: "alpha".into(),
                });
                s.send(&encode(req)).unwrap();
            }
            Some(_) => {}
        }
        let Ok(n) = s.recv(&mut buf) else { continue };
        match ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])) {
            Ok(ClientMsg::ProbeAck(a)) => cookie = Some(a.cookie),
            Ok(ClientMsg::Challenge(c)) => cookie = Some(c.cookie),
            Ok(ClientMsg::VideoData(d)) => return (s, d),
            _ => {}
        }
    }
    panic!("no video from {edge} within 15 s");
}

#[test]
fn gop_cache_bytes_zero_turns_the_cache_off() {
    let dir = TempDir::new("edge-options");
    let ip = |i: u8| format!("127.91.200.{i}");
    let topo = dir.path("topology.json");
    std::fs::write(
        &topo,
        format!(
            r#"{{
  "S1": {{ "addresses": ["{s}"], "neighbours": ["{e1}", "{e2}"] }},
  "E1": {{ "addresses": ["{e1}"], "neighbours": ["{s}"], "edge": true }},
  "E2": {{ "addresses": ["{e2}"], "neighbours": ["{s}"], "edge": true }}
}}"#,
            s = ip(1),
            e1 = ip(2),
            e2 = ip(3)
        ),
    )
    .unwrap();
    let key = dir.path("k");
    keygen(&key);
    let _b = bootstrapper(&topo, &ip(100));
    let videos = concat!(env!("CARGO_MANIFEST_DIR"), "/videos");
    let common = |name: &str, n: u8| {
        vec![
            "--name".to_string(),
            name.into(),
            "--bind".into(),
            ip(n),
            "--bootstrap".into(),
            ip(100),
            "--key-file".into(),
            key.to_str().unwrap().into(),
        ]
    };
    let spawn = |name: &str, args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::spawn(name, &refs)
    };
    let mut a = vec![
        "--role".to_string(),
        "server".into(),
        "--videos".into(),
        videos.into(),
    ];
    a.extend(common("S1", 1));
    let _s1 = spawn("S1", a);
    let mut a = vec![
        "--role".to_string(),
        "edge".into(),
        "--relay".into(),
        "native".into(),
    ];
    a.extend(common("E1", 2));
    a.extend(["--gop-cache-bytes".into(), "0".into()]);
    let e1 = spawn("E1", a);
    let mut a = vec![
        "--role".to_string(),
        "edge".into(),
        "--relay".into(),
        "native".into(),
    ];
    a.extend(common("E2", 3));
    let e2 = spawn("E2", a);
    for e in [&e1, &e2] {
        e.wait_for(&["neighbour up"], Duration::from_secs(20));
    }
    let edge = |n: u8| -> SocketAddr { format!("{}:7702", ip(n)).parse().unwrap() };
    // A first client on each edge makes the video flow (its first datagram is live).
    let (_h1, first1) = join(edge(2), &ip(10), 1);
    let (_h2, first2) = join(edge(3), &ip(11), 1);
    assert_eq!(first1.flags & VIDEO_FLAG_CACHED, 0);
    assert_eq!(first2.flags & VIDEO_FLAG_CACHED, 0);
    // A second client: replayed from the cache on E2, live (the next keyframe) on E1.
    let (_j1, d1) = join(edge(2), &ip(12), 2);
    let (_j2, d2) = join(edge(3), &ip(13), 2);
    assert_ne!(
        d2.flags & VIDEO_FLAG_CACHED,
        0,
        "E2 (default cache): {d2:?}"
    );
    assert!(d2.is_keyframe(), "{d2:?}");
    assert_eq!(d1.flags & VIDEO_FLAG_CACHED, 0, "E1 (cache off): {d1:?}");
    assert!(d1.is_keyframe(), "{d1:?}");
}
