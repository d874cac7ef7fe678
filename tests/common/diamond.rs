//! The loopback diamond S1 - O1 - {O2, O3} - O4 of real daemons that the stream, redundancy
//! and failover-bench tests share: a topology on `PREFIX.NET.1..5` (bootstrapper on `.100`), a
//! fresh key, S1 serving the repository's clips, and every daemon's log at hand; and its
//! two-server sibling S1 - O1 - O3 - O2 - S2 (both servers serving the same clips) for the
//! server-death test and bench.

use std::path::PathBuf;

use super::{bootstrapper, device, keygen, role_of, Daemon, TempDir};

/// The running diamond; dropping it stops every daemon and removes its directory.
pub struct Diamond {
    _dir: TempDir,
    pub key: PathBuf,
    _bootstrapper: Daemon,
    pub daemons: Vec<Daemon>,
}

impl Diamond {
    pub fn daemon(&mut self, name: &str) -> &mut Daemon {
        self.daemons.iter_mut().find(|d| d.name == name).unwrap()
    }
}

/// Start the diamond on `prefix.net.x` (e.g. prefix "127.72"); `extra(name)` gives a device's
/// arguments beyond role, name, bind, bootstrap, key (and S1's `--videos`).
pub fn start(
    tag: &str,
    prefix: &str,
    net: u8,
    extra: impl Fn(&str) -> Vec<&'static str>,
) -> Diamond {
    let ip = |i: u8| format!("{prefix}.{net}.{i}");
    let dir = TempDir::new(tag);
    let a = |i: u8| format!("\"{}\"", ip(i));
    let text = format!(
        r#"{{
  "S1": {{ "neighbours": [{o1}], "addresses": [{s1}] }},
  "O1": {{ "neighbours": [{s1}, {o2}, {o3}], "addresses": [{o1}] }},
  "O2": {{ "neighbours": [{o1}, {o4}], "addresses": [{o2}] }},
  "O3": {{ "neighbours": [{o1}, {o4}], "addresses": [{o3}] }},
  "O4": {{ "neighbours": [{o2}, {o3}], "addresses": [{o4}] }}
}}"#,
        s1 = a(1),
        o1 = a(2),
        o2 = a(3),
        o3 = a(4),
        o4 = a(5)
    );
    let topo = dir.path("topology.json");
    std::fs::write(&topo, text).unwrap();
    let key = dir.path("k");
    keygen(&key);
    let boot_ip = ip(100);
    let b = bootstrapper(&topo, &boot_ip);
    let daemons = ["S1", "O1", "O2", "O3", "O4"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let bind = ip(i as u8 + 1);
            device(role_of(name), name, &bind, &boot_ip, &key, &extra(name))
        })
        .collect();
    Diamond {
        _dir: dir,
        key,
        _bootstrapper: b,
        daemons,
    }
}

/// Two servers with the same clips, each behind its own node, both reaching O3:
/// S1 - O1 - O3 - O2 - S2 on `prefix.net.1..5` (S1, S2, O1, O2, O3; bootstrapper on `.100`).
/// `extra` as for [`start`].
pub fn two_servers(
    tag: &str,
    prefix: &str,
    net: u8,
    extra: impl Fn(&str) -> Vec<&'static str>,
) -> Diamond {
    let ip = |i: u8| format!("{prefix}.{net}.{i}");
    let dir = TempDir::new(tag);
    let q = |i: u8| format!("\"{}\"", ip(i));
    let text = format!(
        r#"{{
  "S1": {{ "neighbours": [{o1}], "addresses": [{s1}] }},
  "S2": {{ "neighbours": [{o2}], "addresses": [{s2}] }},
  "O1": {{ "neighbours": [{s1}, {o3}], "addresses": [{o1}] }},
  "O2": {{ "neighbours": [{s2}, {o3}], "addresses": [{o2}] }},
  "O3": {{ "neighbours": [{o1}, {o2}], "addresses": [{o3}] }}
}}"#,
        s1 = q(1),
        s2 = q(2),
        o1 = q(3),
        o2 = q(4),
        o3 = q(5)
    );
    let topo = dir.path("topology.json");
    std::fs::write(&topo, text).unwrap();
    let key = dir.path("k");
    keygen(&key);
    let boot_ip = ip(100);
    let b = bootstrapper(&topo, &boot_ip);
    let daemons = ["S1", "S2", "O1", "O2", "O3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let bind = ip(i as u8 + 1);
            device(role_of(name), name, &bind, &boot_ip, &key, &extra(name))
        })
        .collect();
    Diamond {
        _dir: dir,
        key,
        _bootstrapper: b,
        daemons,
    }
}
