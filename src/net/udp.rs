//! A UDP socket that answers from the address it was addressed at.
//!
//! This module owns [`ReplySocket`], the socket of every UDP service that answers peers (the
//! edge's client port). A host in CORE has one address per interface and the daemons bind all
//! of them (`0.0.0.0` or `::`). On such a wildcard socket the kernel picks the source address
//! of a reply from the route back to the peer, i.e. the address of the outgoing interface: a
//! client that addressed the edge at `10.0.21.1` through routers gets its answers from, say,
//! `10.0.13.2`, and rightly ignores them. So the socket reports, with every datagram, the local
//! address it was sent to (`IP_PKTINFO` / `IPV6_RECVPKTINFO`, through `quinn-udp`), and every
//! send says which local address it leaves from. A socket bound to one address needs none of
//! this, and gets the same interface.
//!
//! Addresses are given to callers in canonical form ([`canonical`]): an IPv4 peer of a
//! dual-stack `::` socket is `10.0.0.1`, not `::ffff:10.0.0.1` (the kernel takes either form
//! when sending).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

use super::bind::canonical;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// One datagram read from a [`ReplySocket`] (several when the kernel coalesced them: see
/// [`Received::datagrams`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The peer.
    pub from: SocketAddr,
    /// The local address the peer sent to; replies leave from it. `None` when the kernel did
    /// not say (never on Linux).
    pub local: Option<IpAddr>,
    len: usize,
    stride: usize,
}

impl Received {
    /// The datagrams in `buf` (the buffer given to [`ReplySocket::recv`]): usually one; the
    /// kernel's receive offload may hand over several of one peer at once, `stride` bytes
    /// apart.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let filled = &buf[..self.len.min(buf.len())];
        filled.chunks(self.stride.max(1))
    }
}

/// A UDP socket whose replies leave from the address each peer used (see the module doc).
#[derive(Debug)]
pub struct ReplySocket {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl ReplySocket {
    /// Binds `addr`; `::` is every address of both families (see [`super::bind`]).
    pub async fn bind(addr: SocketAddr) -> io::Result<ReplySocket> {
        let socket = super::bind::udp_socket(addr)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(ReplySocket { socket, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Buffer size that holds whatever one [`ReplySocket::recv`] may return when datagrams are
    /// at most `datagram` bytes.
    pub fn recv_buffer_len(&self, datagram: usize) -> usize {
        datagram * self.state.gro_segments().max(1)
    }

    /// Waits for the next datagram(s).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.socket
            .async_io(Interest::READABLE, || self.try_recv_now(buf))
            .await
    }

    fn try_recv_now(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut meta = [RecvMeta::default()];
        let n = self.state.recv(
            (&self.socket).into(),
            &mut [IoSliceMut::new(buf)],
            &mut meta,
        )?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let m = &meta[0];
        Ok(Received {
            from: canonical(m.addr),
            local: m.dst_ip.map(|ip| ip.to_canonical()),
            len: m.len,
            stride: if m.stride == 0 { m.len } else { m.stride },
        })
    }

    /// Sends `bytes` to `to` from `local` (the kernel's choice when `None`), waiting while the
    /// send buffer is full.
    pub async fn send_to(
        &self,
        bytes: &[u8],
        to: SocketAddr,
        local: Option<IpAddr>,
    ) -> io::Result<()> {
        self.socket
            .async_io(Interest::WRITABLE, || self.send_now(bytes, to, local))
            .await
    }

    /// Sends at once, or fails with `WouldBlock` when the send buffer is full.
    pub fn try_send_to(
        &self,
        bytes: &[u8],
        to: SocketAddr,
        local: Option<IpAddr>,
    ) -> io::Result<()> {
        self.socket
            .try_io(Interest::WRITABLE, || self.send_now(bytes, to, local))
    }

    fn send_now(&self, bytes: &[u8], to: SocketAddr, local: Option<IpAddr>) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            // A specific bind already fixes the source; a source of the other family than
            // the peer cannot be asked for.
            src_ip: local.filter(|ip| ip.is_ipv4() == to.is_ipv4()),
        };
        self.state.try_send((&self.socket).into(), &transmit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_addressed_ip_and_replies_from_it() {
        // Bound to all addresses, addressed at two loopback addresses in turn: each reply
        // leaves from the address its request went to.
        let server = ReplySocket::bind("0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let peer = UdpSocket::bind("127.76.31.9:0").await.unwrap();
        let mut buf = vec![0u8; server.recv_buffer_len(2048)];
        for target in ["127.76.31.1", "127.76.31.2"] {
            let target: IpAddr = target.parse().unwrap();
            peer.send_to(b"ping", (target, port)).await.unwrap();
            let got = server.recv(&mut buf).await.unwrap();
            assert_eq!(got.from, peer.local_addr().unwrap());
            assert_eq!(got.local, Some(target));
            let datagrams: Vec<&[u8]> = got.datagrams(&buf).collect();
            assert_eq!(datagrams, vec![&b"ping"[..]]);
            server.send_to(b"pong", got.from, got.local).await.unwrap();
            let mut reply = [0u8; 16];
            let (n, from) = peer.recv_from(&mut reply).await.unwrap();
            assert_eq!(
                (&reply[..n], from),
                (&b"pong"[..], SocketAddr::new(target, port))
            );
        }
    }

    #[tokio::test]
    async fn dual_stack_socket_gives_canonical_ipv4_addresses_and_answers_both_families() {
        let server = ReplySocket::bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = server.local_addr().unwrap().port();
        let mut buf = vec![0u8; server.recv_buffer_len(2048)];
        for (peer_at, target) in [("127.76.31.9:0", "127.76.31.3"), ("[::1]:0", "::1")] {
            let peer = UdpSocket::bind(peer_at).await.unwrap();
            let target: IpAddr = target.parse().unwrap();
            peer.send_to(b"ping", (target, port)).await.unwrap();
            let got = server.recv(&mut buf).await.unwrap();
            assert_eq!(
                got.from,
                peer.local_addr().unwrap(),
                "canonical peer address"
            );
            assert_eq!(got.local, Some(target));
            server.try_send_to(b"pong", got.from, got.local).unwrap();
            let mut reply = [0u8; 16];
            let (n, from) = peer.recv_from(&mut reply).await.unwrap();
            assert_eq!((&reply[..n], from.ip()), (&b"pong"[..], target));
        }
    }
}
