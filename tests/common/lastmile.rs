//! A shaped last mile for edge → client tests and benchmarks: the edge's host and the client's
//! host as two network namespaces (`hnack-e<id>` and `hnack-c<id>`) joined by one veth pair,
//! with nftables random drop (`numgen random mod 100 lt N drop`) on what the client's namespace
//! receives from the link. The overlay (bootstrapper, server S1, edge E1) runs in the edge's
//! namespace, the clients in the client's, so every datagram between an edge and its clients
//! crosses the lossy link and nothing else does. Addresses are 10.77.K.x (K per test): the
//! edge side has .1 (E1), .3 (S1) and .4 (the bootstrapper), the client side .2, .5 and .6.
//! Root and nft only: [`LastMile::new`] says why not otherwise. The namespaces (and with them
//! the pair and the nftables table) are deleted on drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::veth::sh;
use super::{keygen, Daemon, TempDir};

/// The two namespaces and their link; see the module docs.
pub struct LastMile {
    pub edge_ns: String,
    pub client_ns: String,
    pub edge_if: String,
    pub client_if: String,
    /// The first three bytes of every address, e.g. "10.77.1".
    pub net: String,
}

/// Client-side host numbers, in the order clients are placed.
pub const CLIENT_HOSTS: [u8; 3] = [2, 5, 6];

impl LastMile {
    /// Builds the link for test or bench `tag` (a few letters) on 10.77.`k`.x; `Err` says why
    /// it cannot here (the bench notes it as not measured; the test has checked root and nft
    /// through `prereq` first, so an `Err` fails it).
    pub fn new(tag: &str, k: u8) -> Result<LastMile, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (ip netns, veth, nftables)".into());
        }
        if Command::new("nft").arg("--version").output().is_err() {
            return Err("nft (nftables) is not installed".into());
        }
        let id = format!("{tag}{}", std::process::id() % 100_000);
        let m = LastMile {
            edge_ns: format!("hnack-e{id}"),
            client_ns: format!("hnack-c{id}"),
            edge_if: format!("hnE{id}"),
            client_if: format!("hnC{id}"),
            net: format!("10.77.{k}"),
        };
        for ns in [&m.edge_ns, &m.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &m.edge_if])
            .output();
        let addr = |h: u8| format!("{}.{h}/24", m.net);
        let ok = sh(&["ip", "netns", "add", &m.edge_ns])
            && sh(&["ip", "netns", "add", &m.client_ns])
            && sh(&[
                "ip",
                "link",
                "add",
                &m.edge_if,
                "type",
                "veth",
                "peer",
                "name",
                &m.client_if,
            ])
            && sh(&["ip", "link", "set", &m.edge_if, "netns", &m.edge_ns])
            && sh(&["ip", "link", "set", &m.client_if, "netns", &m.client_ns])
            && m.in_edge(&["ip", "link", "set", "lo", "up"])
            && m.in_client(&["ip", "link", "set", "lo", "up"])
            && [1, 3, 4]
                .iter()
                .all(|&h| m.in_edge(&["ip", "addr", "add", &addr(h), "dev", &m.edge_if]))
            && CLIENT_HOSTS
                .iter()
                .all(|&h| m.in_client(&["ip", "addr", "add", &addr(h), "dev", &m.client_if]))
            && m.in_edge(&["ip", "link", "set", &m.edge_if, "up"])
            && m.in_client(&["ip", "link", "set", &m.client_if, "up"]);
        if ok {
            Ok(m)
        } else {
            Err("setting up the namespaces failed (see above)".into())
        }
    }

    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.net)
    }

    fn in_ns(ns: &str, args: &[&str]) -> bool {
        let mut a = vec!["ip", "netns", "exec", ns];
        a.extend_from_slice(args);
        sh(&a)
    }

    pub fn in_edge(&self, args: &[&str]) -> bool {
        Self::in_ns(&self.edge_ns, args)
    }

    pub fn in_client(&self, args: &[&str]) -> bool {
        Self::in_ns(&self.client_ns, args)
    }

    /// Drops `percent` % of the packets the client's namespace receives from the link, at
    /// random (0: none).
    pub fn set_loss(&self, percent: u32) -> bool {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.client_ns])
            .args(["nft", "delete", "table", "inet", "hnack"])
            .output();
        if percent == 0 {
            return true;
        }
        let n = percent.to_string();
        self.in_client(&["nft", "add", "table", "inet", "hnack"])
            && self.in_client(&[
                "nft",
                "add",
                "chain",
                "inet",
                "hnack",
                "input",
                "{ type filter hook input priority 0 ; policy accept ; }",
            ])
            && self.in_client(&[
                "nft",
                "add",
                "rule",
                "inet",
                "hnack",
                "input",
                "iifname",
                &self.client_if,
                "numgen",
                "random",
                "mod",
                "100",
                "lt",
                &n,
                "drop",
            ])
    }

    /// Bytes the edge's namespace has sent on the link (Ethernet frames), from its counters.
    pub fn edge_tx_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.edge_ns, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/tx_bytes",
                self.edge_if
            ))
            .output()
            .expect("ip netns exec cat");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Starts the bootstrapper, server S1 serving `videos` and edge E1 (with `edge_args`) in
    /// the edge's namespace, with `clients` (names, placed at [`CLIENT_HOSTS`] in order) as
    /// E1's clients; returns once E1 serves clients and has S1 as a neighbour. The daemons are
    /// returned in start order.
    pub fn start_overlay(
        &self,
        dir: &TempDir,
        videos: &Path,
        clients: &[&str],
        edge_args: &[&str],
    ) -> Vec<Daemon> {
        let (e1, s1, boot) = (self.ip(1), self.ip(3), self.ip(4));
        let mut entries = vec![
            format!(r#""S1": {{ "neighbours": ["{e1}"], "addresses": ["{s1}"] }}"#),
            format!(r#""E1": {{ "neighbours": ["{s1}"], "addresses": ["{e1}"], "edge": true }}"#),
        ];
        for (name, host) in clients.iter().zip(CLIENT_HOSTS) {
            entries.push(format!(
                r#""{name}": {{ "neighbours": ["{e1}"], "addresses": ["{}"] }}"#,
                self.ip(host)
            ));
        }
        let topo = dir.path("topology.json");
        std::fs::write(&topo, format!("{{ {} }}\n", entries.join(",\n  "))).unwrap();
        let key = dir.path("k");
        keygen(&key);
        let key = key.to_str().unwrap().to_string();
        let b = Daemon::spawn_in(
            &self.edge_ns,
            "bootstrapper",
            &[
                "--role",
                "bootstrapper",
                "--topology",
                topo.to_str().unwrap(),
                "--bind",
                &boot,
            ],
        );
        b.wait_for(&["listening"], Duration::from_secs(20));
        let s = Daemon::spawn_in(
            &self.edge_ns,
            "S1",
            &[
                "--role",
                "server",
                "--name",
                "S1",
                "--bind",
                &s1,
                "--bootstrap",
                &boot,
                "--key-file",
                &key,
                "--videos",
                videos.to_str().unwrap(),
            ],
        );
        let mut args = vec![
            "--role",
            "edge",
            "--name",
            "E1",
            "--bind",
            &e1,
            "--bootstrap",
            &boot,
            "--key-file",
            &key,
        ];
        args.extend_from_slice(edge_args);
        let e = Daemon::spawn_in(&self.edge_ns, "E1", &args);
        e.wait_for(&["neighbour up"], Duration::from_secs(20));
        e.wait_for(&["edge serving clients"], Duration::from_secs(20));
        vec![b, s, e]
    }

    /// A headless client `name` on client host `host` recording `video` for `secs` seconds
    /// to `record`, its statistics as JSON to `stats`; `extra` arguments follow.
    #[allow(clippy::too_many_arguments)]
    pub fn client(
        &self,
        name: &str,
        host: u8,
        video: &str,
        secs: f64,
        record: &Path,
        stats: &Path,
        extra: &[&str],
    ) -> Daemon {
        let (boot, bind, secs) = (self.ip(4), self.ip(host), secs.to_string());
        let mut args = vec![
            "--role",
            "client",
            "--name",
            name,
            "--bootstrap",
            &boot,
            "--bind",
            &bind,
            "--video",
            video,
            "--player",
            "none",
            "--duration",
            &secs,
            "--record",
            record.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::spawn_in(&self.client_ns, name, &args)
    }
}

impl Drop for LastMile {
    fn drop(&mut self) {
        for ns in [&self.edge_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// TS packets in `ts` and the packets missing by their continuity counters (per PID with a
/// payload; a repeated counter is a legal duplicate). A lower bound of the loss: a run of 16
/// or more lost packets of one PID is seen modulo 16.
pub fn cc_loss(ts: &[u8]) -> (u64, u64) {
    let mut last: std::collections::HashMap<u16, u8> = Default::default();
    let (mut packets, mut lost) = (0u64, 0u64);
    for p in ts.chunks_exact(188) {
        packets += 1;
        if p[0] != 0x47 {
            continue;
        }
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        if pid == 0x1fff || p[3] & 0x10 == 0 {
            continue;
        }
        let cc = p[3] & 0x0f;
        if let Some(prev) = last.insert(pid, cc) {
            let want = (prev + 1) & 0x0f;
            if cc != want && cc != prev {
                lost += u64::from(cc.wrapping_sub(want) & 0x0f);
            }
        }
    }
    (packets, lost)
}

/// Lines ffmpeg prints at level `error` while decoding the whole file (decode errors of the
/// picture and sound); `None` without ffmpeg.
pub fn decode_errors(path: &Path) -> Option<u64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stderr).lines().count() as u64)
}

/// The client's `--stats-json` file.
pub fn read_stats(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (the client wrote no statistics)", path.display()));
    serde_json::from_str(&text).unwrap()
}
