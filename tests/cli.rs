//! The command line of the real binary: help, one-line argument errors, keygen,
//! check-topology, and the device side of the bootstrap (unknown name, late bootstrapper).
//!
//! Addresses: 127.71.N.x per test.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{bootstrapper, device, keygen, run, Daemon, TempDir};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn help_lists_roles_and_each_role_has_its_own_help() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for role in ["bootstrapper", "server", "node", "edge", "client", "keygen"] {
        assert!(out.contains(role), "--help does not mention {role}:\n{out}");
    }
    let (code, out, _) = run(&["--role", "node", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--bootstrap") && out.contains("--key-file"),
        "{out}"
    );
    let (code, out, _) = run(&["--role=bootstrapper", "--help"]);
    assert_eq!(code, 0);
    assert!(
        // Its own options (the live map's key included), not the overlay devices'.
        out.contains("--topology")
            && out.contains("--map-port")
            && !out.contains("--switch-margin"),
        "{out}"
    );
    let (code, out, _) = run(&["--role", "client", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--record") && out.contains("--player"),
        "{out}"
    );
}

#[test]
fn bad_arguments_give_one_line_and_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["--role"],
        &["--role", "toaster"],
        &["--role", "node"],
        &[
            "--role",
            "node",
            "--name",
            "O1",
            "--bootstrap",
            "10.0.0.1",
            "--bogus",
        ],
        &[
            "--role",
            "bootstrapper",
            "--topology",
            "t.json",
            "--port",
            "99999",
        ],
        &[
            "--role",
            "node",
            "--name",
            "O1",
            "--bootstrap",
            "x",
            "--ping-ms",
            "abc",
        ],
        &[
            "--role",
            "node",
            "--name",
            "O1",
            "--bootstrap",
            "x",
            "--log-level",
            "loud",
        ],
        &["frobnicate"],
    ];
    for args in cases {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: exit {code}, stderr {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
        assert!(err.starts_with("overlayd: "), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: stdout {out}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bad_bootstrap_address_is_one_line() {
    let dir = TempDir::new("badboot");
    let key = dir.path("k");
    keygen(&key);
    let (code, _, err) = run(&[
        "--role",
        "node",
        "--name",
        "O1",
        "--bootstrap",
        "not-an-ip",
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not-an-ip"), "{err}");
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = TempDir::new("keygen");
    let key = dir.path("overlay.key");
    keygen(&key);
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_ne!(code, 0, "overwrote an existing key");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    let (code, _, _) = run(&["keygen", "--out", key.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0);
    assert_ne!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "not a new key"
    );
}

#[test]
fn missing_key_file_points_at_keygen() {
    let (code, _, err) = run(&[
        "--role",
        "node",
        "--name",
        "O1",
        "--bootstrap",
        "127.71.9.1",
        "--key-file",
        "/nonexistent/overlayd.key",
    ]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("overlayd keygen"), "{err}");
}

/// A list of videos is one value: it parses (this used to panic inside clap) and the node goes
/// on to the next step, loading its key.
#[test]
fn redundant_videos_takes_a_comma_separated_list() {
    let (code, _, err) = run(&[
        "--role",
        "edge",
        "--name",
        "O1",
        "--bootstrap",
        "127.71.9.1",
        "--redundant-videos",
        "alpha,beta",
        "--key-file",
        "/nonexistent/overlayd.key",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("overlayd keygen"), "{err}");
}

#[test]
fn check_topology_reports_errors_with_position_and_exit_code() {
    let dir = TempDir::new("checktopo");
    let good = dir.path("good.json");
    std::fs::write(
        &good,
        r#"{ "S1": { "neighbours": ["10.0.0.2"], "addresses": ["10.0.0.1"] },
  "O1": { "neighbours": ["10.0.0.1"], "addresses": ["10.0.0.2"], "edge": true },
  "C1": { "neighbours": ["10.0.0.2"], "addresses": ["10.0.0.3"] } }"#,
    )
    .unwrap();
    let (code, out, err) = run(&["check-topology", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    refused_at(
        &dir,
        "broken.json",
        "{\n  \"O1\": { \"neighbours\": [\"10.0.0.1\",] }\n}\n",
        2,
    );
    refused_at(
        &dir,
        "badaddr.json",
        "{\n  \"O1\": {\n    \"neighbours\": [\"10.0.0.300\"] }\n}\n",
        3,
    );
}

/// Writes `text` to `name` in `dir`; `check-topology` must refuse it, naming `name:line:`.
fn refused_at(dir: &TempDir, name: &str, text: &str, line: u32) {
    let path = dir.path(name);
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = run(&["check-topology", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{name}");
    let all = format!("{out}{err}");
    assert!(
        all.contains(&format!("{name}:{line}:")),
        "no file:line in {all}"
    );
}

fn topology(dir: &TempDir, net: u8) -> std::path::PathBuf {
    let path = dir.path("topology.json");
    std::fs::write(
        &path,
        format!(r#"{{ "O1": {{ "neighbours": ["127.71.{net}.2"] }} }}"#),
    )
    .unwrap();
    path
}

#[test]
fn unknown_name_exits_naming_the_name_and_the_bootstrapper() {
    let dir = TempDir::new("unknown");
    let topo = topology(&dir, 1);
    let key = dir.path("k");
    keygen(&key);
    let _b = bootstrapper(&topo, "127.71.1.100");
    for role in ["node", "server", "client"] {
        let mut args = vec![
            "--role",
            role,
            "--name",
            "Nobody",
            "--bootstrap",
            "127.71.1.100",
        ];
        if role != "client" {
            args.extend(["--key-file", key.to_str().unwrap()]);
        }
        if role == "server" {
            args.extend(["--videos", dir.0.to_str().unwrap()]);
        }
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{role}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("Nobody") && last.contains("127.71.1.100:7700"),
            "{role}: {err}"
        );
    }
}

#[test]
fn device_started_before_the_bootstrapper_waits_for_it() {
    let dir = TempDir::new("late");
    let topo = topology(&dir, 2);
    let key = dir.path("k");
    keygen(&key);
    let o1 = device("node", "O1", "127.71.2.1", "127.71.2.100", &key, &[]);
    o1.wait_for(&["retrying"], WAIT);
    std::thread::sleep(Duration::from_millis(700));
    let _b = bootstrapper(&topo, "127.71.2.100");
    o1.wait_for(&["overlay listening"], WAIT);
    // It now dials its (absent) neighbour with backoff instead of dying.
    o1.wait_for(&["neighbour not reachable", "127.71.2.2:7701"], WAIT);
}

#[test]
fn world_readable_key_file_is_warned_about() {
    let dir = TempDir::new("perm");
    let key = dir.path("k");
    keygen(&key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // No bootstrapper: the daemon warns about the key, then retries the bootstrapper.
    let d = Daemon::spawn(
        "O1",
        &[
            "--role",
            "node",
            "--name",
            "O1",
            "--bootstrap",
            "127.71.4.100",
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    d.wait_for(&["WARN", "accessible by other users", "chmod 600"], WAIT);
}
