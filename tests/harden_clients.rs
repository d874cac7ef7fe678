//! Hostile clients on the edge's UDP port (issue 8, item 3), with real sockets.
//!
//! An edge driver (the daemon's own, in process) is fed a stamped stream of chunks, as the
//! overlay would, and a real client driver watches it the whole time. Meanwhile:
//! - spoofed datagrams claiming a victim's address (raw IPv4 packets with a forged source,
//!   so the edge really sees the victim as the sender) ask for video, on loopback and from
//!   another host (a network namespace `ovh-spoof*`, 10.76.20.0/24, behind a veth pair): the
//!   victim's socket must receive no video byte, and no more bytes than the attacker sent;
//! - garbage datagrams, a request flood from one address, and 2000 fake clients from 20
//!   addresses that each take a cookie and ask for video, then go silent.
//!
//! The edge's limits must hold (sessions at most `max_sessions`, rate limits, leases expire
//! the fakes) with their counters moving, and the real client must get every chunk.
//!
//! Addresses: 127.76.20.x (edge, real client, victim, attacker), 127.76.21.x (fakes, garbage),
//! 10.76.20.x (the other host).

mod common;

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::edge::{edge, feed_v1, sa};
use common::prereq::{lacking, Need, IP};
use common::veth::VethHost;
use overlayd::net::client_driver::{self, ClientCommand, ClientDriverConfig, ClientHandle};
use overlayd::net::edge_driver::EdgeHandle;
use overlayd::service::client::{ClientService, ClientSettings, EdgeChoice};
use overlayd::service::edge::{EdgeConfig, EdgeCounters};
use overlayd::wire::client::{ClientMsg, Keepalive, ListRequest, Probe, VideoRequest, TS_SYNC};
use tokio::net::UdpSocket;

const CHUNK_EVERY: Duration = Duration::from_millis(25);

/// One chunk of 7 TS packets every 25 ms (40/s, ~420 kbit/s), a keyframe every 25.
fn feed(e: &EdgeHandle) -> tokio::task::JoinHandle<()> {
    feed_v1(e.input.clone(), CHUNK_EVERY)
}

async fn real_client(bind: &str, edge: SocketAddr) -> ClientHandle {
    let service = ClientService::new(
        ClientSettings::default(),
        vec![edge],
        EdgeChoice::Pinned(edge),
        Instant::now(),
    );
    let c = client_driver::spawn(
        ClientDriverConfig {
            bind: sa(bind),
            media_queue: 16384,
        },
        service,
    )
    .await
    .unwrap();
    c.commands.send(ClientCommand::Play("v1".into())).unwrap();
    c
}

/// Drains the client's media (so its queue never fills) until told to stop; returns the TS
/// bytes received and the client.
fn drain(
    mut c: ClientHandle,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(u64, ClientHandle)>,
) {
    let (tx, mut stop) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut bytes = 0u64;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                m = c.media.recv() => match m {
                    Some(b) => bytes += b.len() as u64,
                    None => break,
                },
            }
        }
        (bytes, c)
    });
    (tx, task)
}

/// Datagrams the kernel dropped at a UDP socket bound to `addr` (full receive buffer), from
/// the `drops` column of /proc/net/udp.
fn kernel_drops(addr: SocketAddr) -> u64 {
    let SocketAddr::V4(a) = addr else { return 0 };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

fn counters(e: &EdgeHandle) -> EdgeCounters {
    e.counters.borrow().clone()
}

/// Raw IPv4/UDP packets with any source address (needs root).
struct Spoofer {
    fd: libc::c_int,
}

impl Spoofer {
    fn new() -> Option<Spoofer> {
        // SAFETY: plain socket(2) call; the descriptor is owned by the Spoofer.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        (fd >= 0).then_some(Spoofer { fd })
    }

    fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> usize {
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, ttl, UDP, checksum (kernel)
        p.extend_from_slice(&from.ip().octets());
        p.extend_from_slice(&to.ip().octets());
        p.extend_from_slice(&from.port().to_be_bytes());
        p.extend_from_slice(&to.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        p.extend_from_slice(payload);
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address of the sizes given.
        let n = unsafe {
            libc::sendto(
                self.fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            p.len() as isize,
            "raw send failed: {}",
            std::io::Error::last_os_error()
        );
        payload.len()
    }
}

impl Drop for Spoofer {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// Probes `edge` from `sock` and returns the cookie of the ack.
async fn cookie(sock: &UdpSocket, edge: SocketAddr) -> Option<u64> {
    let probe = ClientMsg::Probe(Probe { token: 1 }).to_bytes().unwrap();
    sock.send_to(&probe, edge).await.ok()?;
    let mut buf = [0u8; 2048];
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
        if let Ok(ClientMsg::ProbeAck(a)) = ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])) {
            return Some(a.cookie);
        }
    }
    None
}

fn request(cookie: u64, stream: u32) -> Vec<u8> {
    ClientMsg::VideoRequest(VideoRequest {
        cookie,
        stream,
        flags: 0,
        video: "v1".into(),
    })
    .to_bytes()
    .unwrap()
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_requests_send_no_video_to_the_victim() {
    let test = "spoofed_requests_send_no_video_to_the_victim";
    if lacking(test, &[Need::Root]) {
        return;
    }
    let spoofer = Spoofer::new().expect("a raw socket, as root");
    let e = edge("127.76.20.1:7702", EdgeConfig::default()).await;
    let edge_addr = e.local_addr();
    let feeder = feed(&e);
    let (stop_watcher, watcher) = drain(real_client("127.76.20.10:0", edge_addr).await);
    let victim = UdpSocket::bind("127.76.20.66:47000").await.unwrap();
    let victim_addr = v4(victim.local_addr().unwrap());
    // The attacker holds a real cookie for its own address and tries it under the victim's.
    let attacker = UdpSocket::bind("127.76.20.99:0").await.unwrap();
    let own_cookie = cookie(&attacker, edge_addr)
        .await
        .expect("attacker's own cookie");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counters(&e);

    let mut sent = 0usize;
    let mut sent_requests = 0u64;
    for round in 0..100u32 {
        for guess in [0u64, own_cookie, rand::random(), u64::from(round)] {
            sent += spoofer.send(victim_addr, v4(edge_addr), &request(guess, 7 + round));
            let ka = ClientMsg::Keepalive(Keepalive {
                cookie: guess,
                stream: 7 + round,
            });
            sent += spoofer.send(victim_addr, v4(edge_addr), &ka.to_bytes().unwrap());
            let list = ClientMsg::ListRequest(ListRequest { cookie: guess });
            sent += spoofer.send(victim_addr, v4(edge_addr), &list.to_bytes().unwrap());
            sent_requests += 1;
        }
        let probe = ClientMsg::Probe(Probe { token: 9 }).to_bytes().unwrap();
        sent += spoofer.send(victim_addr, v4(edge_addr), &probe);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Everything that reaches the victim, for two more seconds.
    let (mut got_bytes, mut got_video, mut got_msgs) = (0usize, 0usize, 0usize);
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, victim.recv_from(&mut buf)).await {
        got_msgs += 1;
        got_bytes += n;
        if matches!(
            ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])),
            Ok(ClientMsg::VideoData(_))
        ) || buf[0] == TS_SYNC
        {
            got_video += n;
        }
    }
    let after = counters(&e);
    feeder.abort();
    let _ = stop_watcher.send(());
    let (ts_bytes, c) = watcher.await.unwrap_or_else(|e| panic!("{e}"));
    let st = c.shutdown().await.stats;
    println!(
        "spoofing: attacker sent {sent} payload bytes as {victim_addr}; the victim got {got_msgs} datagrams, {got_bytes} bytes, {got_video} bytes of video"
    );
    println!(
        "edge: cookie_rejected +{}, sessions_opened +{}, rate_limited +{}; real client {} chunks, missing {}, gaps {} ({ts_bytes} TS bytes)",
        after.cookie_rejected - before.cookie_rejected,
        after.sessions_opened - before.sessions_opened,
        after.rate_limited - before.rate_limited,
        st.chunks,
        st.missing_chunks,
        st.gaps
    );
    assert_eq!(got_video, 0, "video reached the spoofed address");
    assert!(
        got_bytes <= sent,
        "amplification: {got_bytes} bytes for {sent}"
    );
    assert_eq!(
        after.sessions_opened, before.sessions_opened,
        "a spoofed request opened a session"
    );
    assert!(
        after.cookie_rejected + after.rate_limited - before.cookie_rejected - before.rate_limited
            >= sent_requests,
        "spoofed requests not refused: {after:?}"
    );
    assert!(st.chunks > 50, "the real client got too little: {st:?}");
    assert_eq!((st.missing_chunks, st.gaps), (0, 0), "{st:?}");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_floods_and_2000_fake_clients_leave_the_real_client_whole() {
    const FAKES: usize = 2000;
    const FAKE_IPS: usize = 20;
    let cfg = EdgeConfig::default();
    let (max_sessions, max_sources, lease) = (cfg.max_sessions, cfg.max_sources, cfg.lease);
    let e = edge("127.76.20.2:7702", cfg).await;
    let edge_addr = e.local_addr();
    let feeder = feed(&e);
    let (stop_watcher, watcher) = drain(real_client("127.76.20.11:0", edge_addr).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t0 = Instant::now();

    // 1. Garbage: random bytes, truncated messages, oversize datagrams, from one address.
    let junk = UdpSocket::bind("127.76.21.200:0").await.unwrap();
    let good = request(1, 1);
    for i in 0..3000usize {
        let d: Vec<u8> = match i % 3 {
            0 => (0..(i % 200 + 1)).map(|_| rand::random()).collect(),
            1 => good[..i % good.len()].to_vec(),
            _ => vec![0x5a; 1500 + i % 500],
        };
        let _ = junk.send_to(&d, edge_addr).await;
    }
    // 2. A probe flood from one address: 5000 valid probes, as fast as we can send them.
    let flood = UdpSocket::bind("127.76.21.201:0").await.unwrap();
    let probe = ClientMsg::Probe(Probe { token: 3 }).to_bytes().unwrap();
    for _ in 0..5000 {
        let _ = flood.send_to(&probe, edge_addr).await;
    }
    let after_floods = counters(&e);
    let kernel_dropped = kernel_drops(edge_addr);

    // 3. 2000 fake clients (20 addresses x 100 ports): each takes a cookie and asks for the
    // video, then never reads or sends again.
    let mut fakes = Vec::with_capacity(FAKES);
    let mut asked = 0;
    for i in 0..FAKES {
        let s = UdpSocket::bind(format!("127.76.21.{}:0", 1 + i % FAKE_IPS))
            .await
            .unwrap();
        let probe = ClientMsg::Probe(Probe { token: i as u64 })
            .to_bytes()
            .unwrap();
        let _ = s.send_to(&probe, edge_addr).await;
        fakes.push(s);
    }
    let mut buf = [0u8; 2048];
    for (i, s) in fakes.iter().enumerate() {
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(50), s.recv_from(&mut buf)).await
        else {
            continue; // rate-limited: no ack
        };
        if let Ok(ClientMsg::ProbeAck(a)) = ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])) {
            let _ = s.send_to(&request(a.cookie, i as u32 + 1), edge_addr).await;
            asked += 1;
            // Paced a little, so the requests reach the edge instead of overflowing the
            // kernel's socket buffer (that is what the probe flood above does).
            if asked % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = counters(&e);
    let peak_sessions = e.sessions.borrow().len();
    // The fakes stay silent: their leases run out, the real client's does not.
    tokio::time::sleep(lease + Duration::from_millis(1500)).await;
    let after = counters(&e);
    let sessions_left = e.sessions.borrow().len();
    let dropped_sink = e
        .driver_counters
        .video_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(fakes);
    feeder.abort();
    let secs = t0.elapsed().as_secs_f64();
    let _ = stop_watcher.send(());
    let (ts_bytes, c) = watcher.await.unwrap();
    let st = c.shutdown().await.stats;

    println!(
        "garbage: malformed {} (truncated {}, unknown tag {}, bad value {}, trailing {}, other {}); probe flood: rate_limited {}",
        after_floods.malformed_truncated
            + after_floods.malformed_unknown_tag
            + after_floods.malformed_bad_value
            + after_floods.malformed_trailing
            + after_floods.malformed_other,
        after_floods.malformed_truncated,
        after_floods.malformed_unknown_tag,
        after_floods.malformed_bad_value,
        after_floods.malformed_trailing,
        after_floods.malformed_other,
        after_floods.rate_limited
    );
    println!(
        "kernel drops at the edge socket (receive buffer full during the floods): {kernel_dropped}"
    );
    println!(
        "fakes: {FAKES} from {FAKE_IPS} addresses, {asked} got a cookie and asked; sessions at peak {peak_sessions} (limit {max_sessions}), busy {}, rate_limited {}, rate_table_full {} (table limit {max_sources}); after the lease: {sessions_left} sessions, expired {}",
        peak.busy, peak.rate_limited, peak.rate_table_full, after.sessions_expired
    );
    println!(
        "real client over {secs:.1} s: {} chunks ({:.1}/s; the feed is {:.0}/s), missing {}, gaps {}, duplicates {}; {ts_bytes} TS bytes; edge sink drops {dropped_sink}",
        st.chunks,
        st.chunks as f64 / secs,
        1.0 / CHUNK_EVERY.as_secs_f64(),
        st.missing_chunks,
        st.gaps,
        st.delivered_duplicates
    );
    assert!(after_floods.malformed_truncated + after_floods.malformed_unknown_tag > 0);
    assert!(
        after_floods.rate_limited > 0,
        "the probe flood was not limited"
    );
    assert!(
        asked > max_sessions,
        "too few fakes asked ({asked}) to test the session limit"
    );
    assert!(peak_sessions <= max_sessions, "{peak_sessions} sessions");
    assert!(peak.busy > 0, "no request was refused as busy: {peak:?}");
    assert!(
        after.sessions_expired >= (peak_sessions - 1) as u64,
        "{after:?}"
    );
    assert_eq!(sessions_left, 1, "only the real client should be left");
    assert_eq!(
        (st.missing_chunks, st.gaps),
        (0, 0),
        "the real client lost video: {st:?}"
    );
    assert_eq!(st.delivered_duplicates, 0);
    e.shutdown().await;
}

// ---- spoofing from another host (a network namespace) ----

/// `ovh-spoof<N>`: a host behind a veth pair, 10.76.20.1/24 on our side, 10.76.20.2/24 and
/// the victim's 10.76.20.66/24 on its side. Deleted on drop; None when a step failed.
fn other_host() -> Option<VethHost> {
    let n = std::process::id() % 100_000;
    VethHost::new(
        &format!("ovh-spoof{n}"),
        &format!("ovh{n}c"),
        &format!("ovh{n}d"),
        "10.76.20.1/24",
        &["10.76.20.2/24", "10.76.20.66/24"],
    )
}

#[test]
fn spoofed_requests_from_another_host_send_no_video_to_the_victim() {
    let test = "spoofed_requests_from_another_host_send_no_video_to_the_victim";
    if lacking(test, &[Need::Root, IP]) {
        return;
    }
    let host = other_host().expect("the veth host, as root (the failing command is above)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(edge("10.76.20.1:7702", EdgeConfig::default()));
    let edge_addr = e.local_addr();
    let feeder = {
        let _runtime = rt.enter();
        feed(&e)
    };
    let (stop_watcher, watcher) =
        rt.block_on(async { drain(real_client("127.76.20.12:0", edge_addr).await) });
    // The real client's session first, so that any session opened later is the attacker's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters(&e).sessions_opened == 0 {
        assert!(
            Instant::now() < deadline,
            "the real client never got a session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = counters(&e);

    // On the other host: the victim listens on 10.76.20.66:47000; the attacker (10.76.20.2)
    // sends requests with the victim's address as source, then the victim counts what came.
    let other = host.block_on_inside(move || async move {
        let victim = UdpSocket::bind("10.76.20.66:47000").await.unwrap();
        let victim_addr = v4(victim.local_addr().unwrap());
        let spoofer = Spoofer::new().expect("raw socket");
        let attacker = UdpSocket::bind("10.76.20.2:0").await.unwrap();
        let own_cookie = cookie(&attacker, edge_addr)
            .await
            .expect("attacker's cookie");
        let mut sent = 0usize;
        for round in 0..100u32 {
            for guess in [0u64, own_cookie, rand::random()] {
                sent += spoofer.send(victim_addr, v4(edge_addr), &request(guess, 3 + round));
            }
            let probe = ClientMsg::Probe(Probe { token: 9 }).to_bytes().unwrap();
            sent += spoofer.send(victim_addr, v4(edge_addr), &probe);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (mut bytes, mut video, mut datagrams) = (0usize, 0usize, 0usize);
        let mut buf = [0u8; 4096];
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, victim.recv_from(&mut buf)).await {
            datagrams += 1;
            bytes += n;
            if matches!(
                ClientMsg::decode(Bytes::copy_from_slice(&buf[..n])),
                Ok(ClientMsg::VideoData(_))
            ) || buf[0] == TS_SYNC
            {
                video += n;
            }
        }
        (sent, datagrams, bytes, video)
    });
    let (sent, datagrams, bytes, video) = other.join().unwrap();
    let after = counters(&e);
    feeder.abort();
    let _ = stop_watcher.send(());
    let (_, c) = rt.block_on(watcher).unwrap();
    let st = rt.block_on(c.shutdown()).stats;
    rt.block_on(e.shutdown());
    println!(
        "spoofing from another host: sent {sent} payload bytes as 10.76.20.66:47000; the victim got {datagrams} datagrams, {bytes} bytes, {video} bytes of video; cookie_rejected +{}, rate_limited +{}, sessions_opened +{}; real client {} chunks, missing {}",
        after.cookie_rejected - before.cookie_rejected,
        after.rate_limited - before.rate_limited,
        after.sessions_opened - before.sessions_opened,
        st.chunks,
        st.missing_chunks
    );
    assert!(
        datagrams > 0,
        "nothing came back: the spoofed packets never reached the edge"
    );
    assert_eq!(video, 0, "video reached the spoofed address");
    assert!(bytes <= sent, "amplification: {bytes} bytes for {sent}");
    assert_eq!(after.sessions_opened, before.sessions_opened);
    assert!(after.cookie_rejected > before.cookie_rejected);
    assert_eq!((st.missing_chunks, st.gaps), (0, 0), "{st:?}");
}
