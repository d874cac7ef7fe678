//! The smallest overlay of real daemons: server S1 (`NET.1`, serving the repository's clips) and
//! node O1 (`NET.2`) as neighbours, a bootstrapper on `NET.100` and a fresh key; started and
//! waited for until O1 has S1 as a neighbour.

use std::path::PathBuf;
use std::time::Duration;

use super::{bootstrapper, device, keygen, Daemon, TempDir};

/// The running pair; dropping it stops the daemons (fields drop in order), then removes the
/// directory.
pub struct Pair {
    pub o1: Daemon,
    pub s1: Daemon,
    pub boot: Daemon,
    pub key: PathBuf,
    pub dir: TempDir,
}

/// Start S1 - O1 on `net` (e.g. "127.76.1") in a temporary directory tagged `tag`; returns once
/// O1 logs S1 as a neighbour (within `wait`).
pub fn start(tag: &str, net: &str, wait: Duration) -> Pair {
    let dir = TempDir::new(tag);
    let ip = |i: u8| format!("{net}.{i}");
    let topo = dir.path("topology.json");
    std::fs::write(
        &topo,
        format!(
            r#"{{ "S1": {{ "neighbours": ["{o1}"], "addresses": ["{s1}"] }},
                 "O1": {{ "neighbours": ["{s1}"], "addresses": ["{o1}"] }} }}"#,
            s1 = ip(1),
            o1 = ip(2)
        ),
    )
    .unwrap();
    let key = dir.path("k");
    keygen(&key);
    let boot_ip = ip(100);
    let boot = bootstrapper(&topo, &boot_ip);
    let s1 = device("server", "S1", &ip(1), &boot_ip, &key, &[]);
    let o1 = device("node", "O1", &ip(2), &boot_ip, &key, &[]);
    o1.wait_for(&["neighbour up", "S1"], wait);
    Pair {
        dir,
        key,
        boot,
        s1,
        o1,
    }
}
