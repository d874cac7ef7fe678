//! Real processes on loopback: encrypted overlay links between daemons, and what happens to
//! peers without the key or speaking garbage.
//!
//! Each test uses its own 127.70.N.0/24 addresses so tests can run in parallel.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{bootstrapper, device, keygen, Daemon, TempDir};
use overlayd::crypto::{Handshake, Side};
use overlayd::wire::overlay::{Hello, OverlayMsg, OverlayRole, Ping, OVERLAY_VERSION};

const WAIT: Duration = Duration::from_secs(15);

/// A two-node topology (O1 <-> O2) on 127.70.`net`.x, bootstrapper on .100.
fn pair_topology(dir: &TempDir, net: u8) -> std::path::PathBuf {
    let path = dir.path("topology.json");
    let text = format!(
        r#"{{
  "O1": {{ "neighbours": ["127.70.{net}.2"], "addresses": ["127.70.{net}.1"] }},
  "O2": {{ "neighbours": ["127.70.{net}.1"], "addresses": ["127.70.{net}.2"] }}
}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn node(name: &str, ip: &str, bootstrap: &str, key: &std::path::Path) -> Daemon {
    device("node", name, ip, bootstrap, key, &[])
}

#[test]
fn same_key_daemons_become_neighbours_and_notice_a_kill() {
    let dir = TempDir::new("samekey");
    let topo = pair_topology(&dir, 1);
    let key = dir.path("k");
    keygen(&key);
    let _b = bootstrapper(&topo, "127.70.1.100");
    let o1 = node("O1", "127.70.1.1", "127.70.1.100", &key);
    let mut o2 = node("O2", "127.70.1.2", "127.70.1.100", &key);
    o1.wait_for(&["neighbour up", "O2"], WAIT);
    o2.wait_for(&["neighbour up", "O1"], WAIT);
    // One link only, even though both dialled.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(o1.matching(&["neighbour up"]).len(), 1, "{:#?}", o1.log());
    assert_eq!(o2.matching(&["neighbour up"]).len(), 1, "{:#?}", o2.log());
    o2.kill();
    let down = o1.wait_for(&["neighbour down", "O2"], WAIT);
    assert!(
        down.contains("closed") || down.contains("reset") || down.contains("silent"),
        "{down}"
    );
}

#[test]
fn different_keys_refuse_each_other_and_say_why() {
    let dir = TempDir::new("diffkey");
    let topo = pair_topology(&dir, 2);
    let (k1, k2) = (dir.path("k1"), dir.path("k2"));
    keygen(&k1);
    keygen(&k2);
    let _b = bootstrapper(&topo, "127.70.2.100");
    let o1 = node("O1", "127.70.2.1", "127.70.2.100", &k1);
    let o2 = node("O2", "127.70.2.2", "127.70.2.100", &k2);
    for d in [&o1, &o2] {
        d.wait_for(&["overlay key"], WAIT);
    }
    // Give them several retry rounds: still nobody is a neighbour.
    std::thread::sleep(Duration::from_secs(2));
    for d in [&o1, &o2] {
        assert!(
            d.matching(&["neighbour up"]).is_empty(),
            "{} accepted a peer without the key:\n{}",
            d.name,
            d.log().join("\n")
        );
    }
}

// ---- raw sockets against a running daemon ----

fn write_frame(s: &mut TcpStream, body: &[u8]) {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    s.write_all(&f).unwrap();
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<BytesMut> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(BytesMut::from(&body[..]))
}

/// True when the daemon closes the connection within `timeout` (whatever it sent before).
fn disconnected(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return true, // reset
        }
    }
    false
}

/// A test peer that holds the key: handshake and hello done by hand over a raw socket, so
/// the test can replay or corrupt records.
struct RawPeer {
    stream: TcpStream,
    sealer: overlayd::crypto::Sealer,
    sent: Vec<Vec<u8>>,
}

impl RawPeer {
    fn connect(addr: SocketAddr, key: &std::path::Path) -> RawPeer {
        let psk = overlayd::keyfile::load(key).unwrap().psk;
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut hs = Handshake::new(Side::Initiator, &psk, rand::random());
        write_frame(&mut stream, &hs.hello());
        let their_hello = read_frame(&mut stream).unwrap();
        let fin = hs.handle_hello(&their_hello).unwrap();
        write_frame(&mut stream, &fin);
        let their_fin = read_frame(&mut stream).unwrap();
        let (sealer, _opener) = hs.handle_finished(their_fin).unwrap();
        let mut peer = RawPeer {
            stream,
            sealer,
            sent: Vec::new(),
        };
        peer.send(&OverlayMsg::Hello(Hello {
            name: "Intruder".into(),
            role: OverlayRole::Node,
            version: OVERLAY_VERSION,
            listen_port: 1,
        }));
        peer
    }

    fn send(&mut self, msg: &OverlayMsg) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).unwrap();
        self.sealer.seal(&mut buf).unwrap();
        self.sent.push(buf.to_vec());
        write_frame(&mut self.stream, &buf);
    }
}

#[test]
fn hostile_raw_connections_are_disconnected() {
    let dir = TempDir::new("hostile");
    let topo = pair_topology(&dir, 3);
    let key = dir.path("k");
    keygen(&key);
    let _b = bootstrapper(&topo, "127.70.3.100");
    let o1 = node("O1", "127.70.3.1", "127.70.3.100", &key);
    o1.wait_for(&["overlay listening"], WAIT);
    let addr: SocketAddr = "127.70.3.1:7701".parse().unwrap();

    // Garbage instead of a handshake.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\nthis is not an overlay peer")
        .unwrap();
    assert!(disconnected(&mut s, WAIT), "garbage peer kept open");

    // A length prefix over the frame limit.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(disconnected(&mut s, WAIT), "oversize frame kept open");

    // A key holder that completes the handshake is accepted...
    let mut peer = RawPeer::connect(addr, &key);
    peer.send(&OverlayMsg::Ping(Ping { token: 1 }));
    o1.wait_for(&["neighbour up", "Intruder"], WAIT);
    // ...until it replays a record it sent before.
    let captured = peer.sent[1].clone();
    write_frame(&mut peer.stream, &captured);
    assert!(
        disconnected(&mut peer.stream, WAIT),
        "replayed record accepted"
    );

    // A flipped bit in an otherwise valid record.
    let mut peer = RawPeer::connect(addr, &key);
    let mut buf = BytesMut::new();
    OverlayMsg::Ping(Ping { token: 2 })
        .encode(&mut buf)
        .unwrap();
    peer.sealer.seal(&mut buf).unwrap();
    buf[3] ^= 0x10;
    write_frame(&mut peer.stream, &buf);
    assert!(
        disconnected(&mut peer.stream, WAIT),
        "tampered record accepted"
    );

    // A record cut short by the end of the connection.
    let mut peer = RawPeer::connect(addr, &key);
    let mut buf = BytesMut::new();
    OverlayMsg::Ping(Ping { token: 3 })
        .encode(&mut buf)
        .unwrap();
    peer.sealer.seal(&mut buf).unwrap();
    let mut frame = (buf.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf[..buf.len() / 2]);
    peer.stream.write_all(&frame).unwrap();
    peer.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        disconnected(&mut peer.stream, WAIT),
        "truncated record kept open"
    );

    // The daemon logged each refusal and is still serving.
    o1.wait_for(&["inbound overlay link refused"], WAIT);
    let _still_fine = RawPeer::connect(addr, &key);
    assert!(o1.matching(&["panicked"]).is_empty());
}
