//! What "all addresses" means for a listening socket, and peer addresses in one form.
//!
//! This module owns the listening side of every socket a daemon binds without `--bind` (the
//! way the CORE start scripts run it). The default, `::`, is every IPv4 and IPv6 address of
//! the host: one dual-stack socket, whatever families the topology uses. On a host without
//! IPv6 (disabled in the kernel) it falls back to `0.0.0.0`. An explicit address, `0.0.0.0`
//! included, is bound as given.
//!
//! A dual-stack socket sees IPv4 peers as `::ffff:a.b.c.d`; [`canonical`] turns them back into
//! `a.b.c.d`, so that a peer has one address everywhere (neighbour tables, limits per source,
//! logs, client sessions) whichever socket it came through.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// Pending connections a listener holds (what tokio's own `bind` asks for).
const BACKLOG: i32 = 1024;

/// `addr` as the kernel would report an IPv4 peer on an IPv4 socket.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A TCP listener on `addr` (dual-stack for `::`, see the module doc).
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = with_fallback(addr, Type::STREAM, Protocol::TCP)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket on `addr` (dual-stack for `::`, see the module doc).
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = with_fallback(addr, Type::DGRAM, Protocol::UDP)?;
    UdpSocket::from_std(socket.into())
}

/// A non-blocking socket bound to `addr`; `::` is dual-stack, or `0.0.0.0` where the host has
/// no IPv6.
fn with_fallback(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    if !(addr.is_ipv6() && addr.ip().is_unspecified()) {
        return bound(addr, ty, proto, false);
    }
    match bound(addr, ty, proto, true) {
        // No IPv6 in this kernel (or on this host): every address is every IPv4 one.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            bound(v4, ty, proto, false)
        }
        other => other,
    }
}

fn bound(addr: SocketAddr, ty: Type, proto: Protocol, dual_stack: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if dual_stack {
        s.set_only_v6(false)?;
    }
    if ty == Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn all_addresses_take_both_families_and_peers_come_out_canonical() {
        let listener = tcp_listener("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        for (dial_from, to) in [("127.76.32.5:0", "127.76.32.1"), ("[::1]:0", "::1")] {
            let from: SocketAddr = dial_from.parse().unwrap();
            let sock = if from.is_ipv4() {
                tokio::net::TcpSocket::new_v4().unwrap()
            } else {
                tokio::net::TcpSocket::new_v6().unwrap()
            };
            sock.bind(from).unwrap();
            let mut c = sock
                .connect(SocketAddr::new(to.parse().unwrap(), port))
                .await
                .unwrap();
            c.write_all(b"x").await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(canonical(peer), c.local_addr().unwrap());
        }
        let udp = udp_socket("[::]:0".parse().unwrap()).unwrap();
        let port = udp.local_addr().unwrap().port();
        let peer = UdpSocket::bind("127.76.32.6:0").await.unwrap();
        peer.send_to(b"x", ("127.76.32.1", port)).await.unwrap();
        let mut buf = [0u8; 4];
        let (_, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(canonical(from), peer.local_addr().unwrap());
    }

    #[test]
    fn an_explicit_ipv4_wildcard_stays_ipv4() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let l = tcp_listener("0.0.0.0:0".parse().unwrap()).unwrap();
        assert!(l.local_addr().unwrap().is_ipv4());
    }
}
