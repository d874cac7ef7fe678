//! An edge on a multi-homed host, bound to all addresses as in CORE, reached at an address that
//! is not the one of the interface its replies leave by: every datagram it sends the client
//! (probe ack, video ok, video, in both relay modes) must come from the address the client
//! addressed, over IPv4 and IPv6.
//!
//! The edge host is a network namespace behind a veth pair: e.g. 10.76.40.2/24 and
//! fd76:40::2/64 on the link, and its "client LAN" addresses 10.76.41.1 and fd76:41::1 on
//! another interface
//! (its loopback: this kernel has no dummy interfaces), reached from our side through a route via the link. Without source-address control the
//! kernel answers from the link's address (10.76.40.2), which a client cannot match to the
//! edge it asked: the bug seen in CORE with a client's second edge behind routers.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::edge::{feed_v1, sa};
use common::prereq::{lacking, Need, FFMPEG, IP};
use common::veth::{sh, VethHost};
use overlayd::media::relay::RelayConfig;
use overlayd::net::edge_driver::{self, EdgeDriverConfig, EdgeInput, Relay};
use overlayd::net::edge_ffmpeg;
use overlayd::service::edge::EdgeConfig;
use overlayd::wire::client::{is_raw_ts, ClientMsg, Probe, VideoRequest};
use tokio::net::UdpSocket;

/// The addresses of one edge host. Each test has its own (`k`): tests run in parallel, and the
/// routes to the LAN addresses live in the root namespace.
struct Addrs {
    k: u8,
}

impl Addrs {
    fn root_v4(&self) -> String {
        format!("10.76.{}.1", 40 + 2 * self.k)
    }
    fn link_v4(&self) -> String {
        format!("10.76.{}.2", 40 + 2 * self.k)
    }
    fn lan_v4(&self) -> IpAddr {
        format!("10.76.{}.1", 41 + 2 * self.k).parse().unwrap()
    }
    fn root_v6(&self) -> String {
        format!("fd76:{}::1", 40 + 2 * self.k)
    }
    fn link_v6(&self) -> String {
        format!("fd76:{}::2", 40 + 2 * self.k)
    }
    fn lan_v6(&self) -> IpAddr {
        format!("fd76:{}::1", 41 + 2 * self.k).parse().unwrap()
    }
}

/// The edge host (the test has checked it runs as root): a set-up that fails fails the test.
/// Routes we add in the root namespace go with the veth pair when the host drops.
fn edge_host(tag: &str, a: &Addrs) -> VethHost {
    let n = std::process::id() % 100_000;
    let host = VethHost::new(
        &format!("ovh-mh{tag}{n}"),
        &format!("ovm{tag}{n}a"),
        &format!("ovm{tag}{n}b"),
        &format!("{}/24", a.root_v4()),
        &[&format!("{}/24", a.link_v4())],
    )
    .expect("a namespace behind a veth pair");
    let ns = host.ns.clone();
    let dev = format!("ovm{tag}{n}b");
    let inside = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &ns];
        v.extend_from_slice(args);
        sh(&v)
    };
    let root_if = host.root_if.clone();
    let (lan_v4, lan_v6) = (a.lan_v4().to_string(), a.lan_v6().to_string());
    let ok = sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/64", a.root_v6()),
        "dev",
        &root_if,
        "nodad",
    ]) && inside(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/64", a.link_v6()),
        "dev",
        &dev,
        "nodad",
    ]) && inside(&["ip", "addr", "add", &format!("{lan_v4}/32"), "dev", "lo"])
        && inside(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{lan_v6}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        && inside(&["ip", "route", "add", "default", "via", &a.root_v4()])
        && inside(&["ip", "-6", "route", "add", "default", "via", &a.root_v6()])
        && sh(&[
            "ip",
            "route",
            "add",
            &format!("{lan_v4}/32"),
            "via",
            &a.link_v4(),
        ])
        && sh(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{lan_v6}/128"),
            "via",
            &a.link_v6(),
        ]);
    assert!(
        ok,
        "setting up the edge host's addresses and routes failed (see above)"
    );
    host
}

/// A chunk feed for the ffmpeg relay: a clip of the repository cut as a server cuts it (7
/// packets a chunk, a new chunk at each keyframe, flagged), looped, a chunk every 10 ms.
fn feed_clip(input: tokio::sync::mpsc::Sender<EdgeInput>) -> tokio::task::JoinHandle<()> {
    let ts = std::fs::read(common::media::clip("alpha.ts")).expect("videos/alpha.ts");
    let mut chunker = overlayd::media::ts::Chunker::new(7).unwrap();
    chunker.push(&ts);
    let mut chunks = Vec::new();
    while let Some(c) = chunker.poll_chunk() {
        chunks.push(c);
    }
    chunks.extend(chunker.flush());
    assert!(
        chunks.iter().filter(|c| c.keyframe).count() > 2,
        "a clip with keyframes"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for (seq, c) in chunks.iter().cycle().enumerate() {
            tick.tick().await;
            let chunk = EdgeInput::Chunk {
                video: "v1".into(),
                epoch: 1,
                seq: seq as u64,
                keyframe: c.keyframe,
                payload: c.payload.clone(),
            };
            if input.send(chunk).await.is_err() {
                return;
            }
        }
    })
}

/// Video datagrams a watch waits for.
const ENOUGH_VIDEO: usize = 40;
/// Longest a watch waits for them.
const WATCH_LIMIT: Duration = Duration::from_secs(20);

/// What the client saw: the sources of every kind of datagram, by kind.
#[derive(Debug, Default)]
struct Seen {
    ack_from: Vec<SocketAddr>,
    ok_from: Vec<SocketAddr>,
    video_from: Vec<SocketAddr>,
    raw: usize,
}

/// Probes `edge`, asks for "v1" with the cookie, and collects what comes back until
/// [`ENOUGH_VIDEO`] video datagrams arrived (an ffmpeg relay starts its child first: seconds on
/// a loaded machine) or [`WATCH_LIMIT`] passed.
async fn watch(local: &str, edge: SocketAddr) -> Seen {
    let s = UdpSocket::bind(local).await.unwrap();
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 2048];
    s.send_to(
        &ClientMsg::Probe(Probe { token: 7 }).to_bytes().unwrap(),
        edge,
    )
    .await
    .unwrap();
    let mut cookie = None;
    let end = Instant::now() + WATCH_LIMIT;
    let mut requested = false;
    while Instant::now() < end && seen.video_from.len() < ENOUGH_VIDEO {
        let r = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await;
        let Ok(Ok((n, from))) = r else { continue };
        let d = bytes::Bytes::copy_from_slice(&buf[..n]);
        if is_raw_ts(&d) {
            seen.video_from.push(from);
            seen.raw += 1;
            continue;
        }
        match ClientMsg::decode(d) {
            Ok(ClientMsg::ProbeAck(a)) => {
                seen.ack_from.push(from);
                cookie = Some(a.cookie);
            }
            Ok(ClientMsg::VideoOk(_)) => seen.ok_from.push(from),
            Ok(ClientMsg::VideoData(_)) => seen.video_from.push(from),
            _ => {}
        }
        if let (Some(cookie), false) = (cookie, requested) {
            requested = true;
            let req = ClientMsg::VideoRequest(VideoRequest {
                cookie,
                stream: 1,
                flags: 0,
                video: "v1".into(),
            });
            s.send_to(&req.to_bytes().unwrap(), edge).await.unwrap();
        }
    }
    seen
}

/// Runs an edge inside `host` bound to `bind` with `relay`, and a client on our side that
/// addresses it at each of `targets` in turn; returns what each client saw.
fn run(host: &VethHost, bind: &str, ffmpeg: bool, targets: &[(&str, IpAddr)]) -> Vec<Seen> {
    let bind = sa(bind);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let edge_thread = host.block_on_inside(move || async move {
        let relay = if ffmpeg {
            edge_ffmpeg::relay(RelayConfig::default(), edge_ffmpeg::RelayStart::Warm)
        } else {
            Relay::default()
        };
        let e = edge_driver::spawn(EdgeDriverConfig {
            bind,
            service: EdgeConfig::default(),
            relay,
        })
        .await
        .unwrap();
        e.input
            .send(EdgeInput::Videos(vec!["v1".into()]))
            .await
            .unwrap();
        let feeder = if ffmpeg {
            feed_clip(e.input.clone())
        } else {
            feed_v1(e.input.clone(), Duration::from_millis(10))
        };
        ready_tx.send(e.local_addr().port()).unwrap();
        let _ = stop_rx.await;
        feeder.abort();
        e.shutdown().await;
    });
    let port = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("edge started");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = targets
        .iter()
        .map(|(local, ip)| rt.block_on(watch(local, SocketAddr::new(*ip, port))))
        .collect();
    let _ = stop_tx.send(());
    edge_thread.join().unwrap();
    seen
}

fn assert_all_from(seen: &Seen, edge: IpAddr, what: &str) {
    assert!(
        !seen.ack_from.is_empty(),
        "{what}: no probe ack at all: {seen:?}"
    );
    assert!(!seen.ok_from.is_empty(), "{what}: no video ok: {seen:?}");
    assert!(
        seen.video_from.len() >= ENOUGH_VIDEO,
        "{what}: too little video: {seen:?}"
    );
    for from in seen
        .ack_from
        .iter()
        .chain(&seen.ok_from)
        .chain(&seen.video_from)
    {
        assert_eq!(
            from.ip(),
            edge,
            "{what}: a datagram came from {from}, not from the address the client sent to"
        );
    }
}

#[test]
fn native_relay_answers_from_the_addressed_ip_v4_and_v6() {
    if lacking(
        "native_relay_answers_from_the_addressed_ip_v4_and_v6",
        &[Need::Root, IP],
    ) {
        return;
    }
    let a = Addrs { k: 0 };
    let host = edge_host("n", &a);
    let (lan_v4, lan_v6) = (a.lan_v4(), a.lan_v6());
    let link_v4: IpAddr = a.link_v4().parse().unwrap();
    let (root_v4, root_v6) = (format!("{}:0", a.root_v4()), format!("[{}]:0", a.root_v6()));
    // Dual-stack wildcard: both families, and both of the host's IPv4 addresses.
    let seen = run(
        &host,
        "[::]:0",
        false,
        &[
            (root_v4.as_str(), lan_v4),
            (root_v6.as_str(), lan_v6),
            (root_v4.as_str(), link_v4),
        ],
    );
    assert_all_from(&seen[0], lan_v4, "IPv4 LAN address, [::] socket");
    assert_all_from(&seen[1], lan_v6, "IPv6 LAN address, [::] socket");
    assert_all_from(&seen[2], link_v4, "IPv4 link address, [::] socket");
    // The IPv4 wildcard, as the daemons bind by default.
    let seen = run(&host, "0.0.0.0:0", false, &[(root_v4.as_str(), lan_v4)]);
    assert_all_from(&seen[0], lan_v4, "IPv4 LAN address, 0.0.0.0 socket");
    println!(
        "native relay: {} / {} / {} / {} video datagrams, each from the address addressed",
        seen[0].video_from.len(),
        seen[0].ack_from.len(),
        seen[0].ok_from.len(),
        seen[0].raw
    );
}

#[test]
fn ffmpeg_relay_answers_from_the_addressed_ip_v4_and_v6() {
    if lacking(
        "ffmpeg_relay_answers_from_the_addressed_ip_v4_and_v6",
        &[Need::Root, IP, FFMPEG],
    ) {
        return;
    }
    let a = Addrs { k: 1 };
    let host = edge_host("f", &a);
    let (lan_v4, lan_v6) = (a.lan_v4(), a.lan_v6());
    let (root_v4, root_v6) = (format!("{}:0", a.root_v4()), format!("[{}]:0", a.root_v6()));
    let seen = run(
        &host,
        "[::]:0",
        true,
        &[(root_v4.as_str(), lan_v4), (root_v6.as_str(), lan_v6)],
    );
    for (s, ip, what) in [(&seen[0], lan_v4, "IPv4"), (&seen[1], lan_v6, "IPv6")] {
        assert!(
            s.raw >= ENOUGH_VIDEO,
            "{what}: the ffmpeg relay sent no raw TS: {s:?}"
        );
        assert_all_from(s, ip, what);
        println!(
            "ffmpeg relay over {what}: {} raw TS datagrams from {ip}",
            s.raw
        );
    }
}
