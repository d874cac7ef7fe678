//! The real `overlayd --role client` binary in headless mode against a bootstrapper process
//! and an in-test edge driver on loopback: a recording with its summary and JSON statistics,
//! and the one-line failures (no edge answers, unknown video).
//!
//! Each test uses its own 127.72.1N.x addresses so tests can run in parallel.

mod common;

use std::time::Duration;

use common::edge::{edge, stamped_chunk};
use common::{Daemon, TempDir};
use overlayd::net::edge_driver::{EdgeHandle, EdgeInput};
use overlayd::service::edge::EdgeConfig;
use overlayd::wire::client::TS_PACKET_LEN;

fn bootstrapper(dir: &TempDir, ip: &str, client_edges: &[&str]) -> Daemon {
    let path = dir.path("topology.json");
    let list: Vec<String> = client_edges.iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        &path,
        format!(r#"{{ "C1": {{ "neighbours": [{}] }} }}"#, list.join(", ")),
    )
    .unwrap();
    common::bootstrapper(&path, ip)
}

async fn fed_edge(bind: &str) -> (EdgeHandle, tokio::task::JoinHandle<()>) {
    let e = edge(bind, EdgeConfig::default()).await;
    let input = e.input.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0u64.. {
            tick.tick().await;
            let _ = input.try_send(EdgeInput::Chunk {
                video: "v1".into(),
                epoch: 3,
                seq,
                keyframe: seq % 25 == 0,
                payload: stamped_chunk(seq, 10),
            });
        }
    });
    (e, feeder)
}

fn run_client(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(common::BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_client_records_and_prints_its_statistics() {
    let dir = TempDir::new("edge-client-cli");
    let _b = bootstrapper(&dir, "127.72.10.100", &["127.72.10.2"]);
    let (edge, feeder) = fed_edge("127.72.10.2:7702").await;
    let rec = dir.path("rec.ts");
    let json = dir.path("stats.json");
    let args = [
        "--role",
        "client",
        "--name",
        "C1",
        "--bootstrap",
        "127.72.10.100",
        "--bind",
        "127.72.10.10",
        "--video",
        "v1",
        "--edge",
        "auto",
        "--player",
        "none",
        "--duration",
        "3",
        "--record",
        rec.to_str().unwrap(),
        "--stats-json",
        json.to_str().unwrap(),
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_client(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    feeder.abort();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    for key in [
        "video=v1",
        "duplicates=0",
        "reorderings=0",
        "edges=127.72.10.2:7702(",
    ] {
        assert!(summary.contains(key), "{summary}");
    }
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recording = std::fs::read(&rec).unwrap();
    assert_eq!(stats["bytes"].as_u64().unwrap(), recording.len() as u64);
    assert!(recording.len() > 100 * TS_PACKET_LEN, "{}", recording.len());
    let stamps: Vec<(u64, u8)> = recording
        .chunks(TS_PACKET_LEN)
        .map(|p| (u64::from_be_bytes(p[1..9].try_into().unwrap()), p[9]))
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]));
    // It started on a keyframe chunk (the edge's GOP cache or keyframe wait).
    assert_eq!(stamps[0].0 % 25, 0);
    // It cancelled on exit: the edge released the video without waiting for the lease.
    let mut counters = edge.counters.clone();
    let cancelled = tokio::time::timeout(
        Duration::from_secs(2),
        counters.wait_for(|k| k.sessions_cancelled == 1),
    )
    .await;
    assert!(cancelled.is_ok(), "{:?}", *edge.counters.borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_video_fails_with_a_one_line_reason() {
    let dir = TempDir::new("edge-client-cli-unknown");
    let _b = bootstrapper(&dir, "127.72.11.100", &["127.72.11.2"]);
    let (_edge, feeder) = fed_edge("127.72.11.2:7702").await;
    let args = [
        "--role",
        "client",
        "--name",
        "C1",
        "--bootstrap",
        "127.72.11.100",
        "--bind",
        "127.72.11.10",
        "--video",
        "nope",
        "--player",
        "none",
        "--duration",
        "10",
    ];
    let (code, out, err) = tokio::task::spawn_blocking(move || run_client(&args))
        .await
        .unwrap();
    feeder.abort();
    assert_ne!(code, 0);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("video 'nope' does not exist on edge 127.72.11.2:7702 (it offers: v1)"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn no_edge_answering_fails_with_a_one_line_reason() {
    let dir = TempDir::new("edge-client-cli-noedge");
    let _b = bootstrapper(&dir, "127.72.12.100", &["127.72.12.2", "127.72.12.3"]);
    let (code, out, err) = run_client(&[
        "--role",
        "client",
        "--name",
        "C1",
        "--bootstrap",
        "127.72.12.100",
        "--bind",
        "127.72.12.10",
        "--video",
        "v1",
        "--player",
        "none",
        "--duration",
        "20",
    ]);
    assert_ne!(code, 0);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("no edge answered within")
            && last.contains("127.72.12.2:7702, 127.72.12.3:7702"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn bad_duration_is_an_argument_error_not_a_panic() {
    for bad in ["--duration=-1", "--duration=nan", "--duration=inf"] {
        let (code, _, err) = run_client(&[
            "--role",
            "client",
            "--name",
            "C1",
            "--bootstrap",
            "127.0.0.1",
            bad,
        ]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--duration"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
