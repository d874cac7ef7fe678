//! The real `overlayd --role client` binary against a bootstrapper process and an in-test edge
//! driver on loopback: in headless mode a recording with its summary and JSON statistics, and
//! the one-line failures (no edge answers, unknown video); in interactive mode on a terminal
//! (a pseudo-terminal the test opens), what it tells the user to type and the table it keeps,
//! with the built-in relay and with the ffmpeg relay.
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

/// The client binary on a pseudo-terminal, as a user runs it in a terminal: stdin and stdout
/// are the terminal (so it keeps its table on screen), stderr (its log) goes to a file.
struct OnTerminal {
    child: std::process::Child,
    master: std::fs::File,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: std::path::PathBuf,
}

impl OnTerminal {
    fn spawn(args: &[&str], log: std::path::PathBuf) -> OnTerminal {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fresh descriptors into the integers it is given.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = std::process::Command::new(common::BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
            .stdout(std::process::Stdio::from(slave))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // The child holds the only copies of the terminal's side now: when it exits, reads on
        // the master end with an error and the reader stops.
        let master = std::fs::File::from(master);
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let mut master = master.try_clone().unwrap();
            let screen = screen.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                while let Ok(n) = master.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    screen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        OnTerminal {
            child,
            master,
            screen,
            reader: Some(reader),
            log,
        }
    }

    /// Everything written to the terminal so far, escape sequences included.
    fn raw(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// The same as text: escape sequences and carriage returns removed.
    fn text(&self) -> String {
        plain(&self.raw())
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Waits until `pred` holds for the text on the terminal (up to `secs`).
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if pred(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < end,
                "no {what} on the terminal within {secs} s:\n{text}\nlog:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the client to exit (up to `secs`), returning its exit code.
    fn exit_code(&mut self, secs: u64) -> Option<i32> {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Terminal output as text: CSI sequences (`ESC [ ... letter`), `ESC 7`/`ESC 8` and carriage
/// returns removed.
fn plain(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The numbers that follow `word ` in the table's status lines ("chunks 12" gives 12).
fn counts_after(text: &str, word: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("video "))
        .filter_map(|l| {
            let rest = &l[l.find(&format!("  {word} "))? + word.len() + 3..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn interactive_args<'a>(bootstrap: &'a str, bind: &'a str) -> [&'a str; 10] {
    [
        "--role",
        "client",
        "--name",
        "C1",
        "--bootstrap",
        bootstrap,
        "--bind",
        bind,
        "--player",
        "none",
    ]
}

/// On a terminal, without `--video`: the client lists the edge's videos, then says what to type
/// (after the screen was cleared for the table, so the user sees it); the video's name starts
/// it, the table counts its chunks, and `quit` ends the client with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_client_says_what_to_type_after_the_list() {
    let dir = TempDir::new("edge-client-cli-tty");
    let _b = bootstrapper(&dir, "127.72.13.100", &["127.72.13.2"]);
    let (_edge, feeder) = fed_edge("127.72.13.2:7702").await;
    let log = dir.path("client.log");
    let outcome = tokio::task::spawn_blocking(move || {
        let mut t = OnTerminal::spawn(&interactive_args("127.72.13.100", "127.72.13.10"), log);
        let list = "videos on 127.72.13.2:7702: v1";
        let hint = "type a video's name and Enter to watch it (e.g. v1)";
        let text = t.wait_for("video list and what to type", 15, |s| s.contains(hint));
        assert!(
            text.find(list)
                .is_some_and(|l| l < text.find(hint).unwrap()),
            "the hint comes after the list:\n{text}"
        );
        let raw = t.raw();
        let clear = raw
            .rfind("\x1b[2J")
            .expect("the table clears the screen once");
        assert!(
            raw.rfind(hint).unwrap() > clear,
            "the hint was printed before the screen was cleared:\n{raw:?}"
        );
        t.type_line("v1");
        let text = t.wait_for("chunks counted in the table", 15, |s| {
            counts_after(s, "chunks").iter().any(|&n| n > 20)
        });
        let status = text.lines().rfind(|l| l.starts_with("video v1")).unwrap();
        println!("table status line: {status}");
        assert!(status.contains("stalls "), "{status}");
        t.type_line("quit");
        let code = t.exit_code(10);
        (code, t.text())
    })
    .await
    .unwrap();
    feeder.abort();
    assert_eq!(outcome.0, Some(0), "quit ends the client:\n{}", outcome.1);
}

/// The same with the edge relaying through ffmpeg (raw MPEG-TS, no chunk numbers): the table
/// counts bytes, datagrams and stalls, and never shows "chunks 0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_client_counts_raw_ts_from_an_ffmpeg_relay() {
    if common::prereq::lacking(
        "interactive_client_counts_raw_ts_from_an_ffmpeg_relay",
        &[common::prereq::FFMPEG],
    ) {
        return;
    }
    use overlayd::media::relay::RelayConfig;
    use overlayd::media::source::{Source, SourceMode};
    use overlayd::net::edge_driver::{self, EdgeDriverConfig};
    let dir = TempDir::new("edge-client-cli-tty-ffmpeg");
    let _b = bootstrapper(&dir, "127.72.14.100", &["127.72.14.2"]);
    let edge = edge_driver::spawn(EdgeDriverConfig {
        bind: "127.72.14.2:7702".parse().unwrap(),
        service: EdgeConfig::default(),
        relay: overlayd::net::edge_ffmpeg::relay(
            RelayConfig::default(),
            overlayd::net::edge_ffmpeg::RelayStart::Warm,
        ),
    })
    .await
    .unwrap();
    edge.input
        .send(EdgeInput::Videos(vec!["v1".into()]))
        .await
        .unwrap();
    // A real clip, in real time, as a server's source would send it.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source = Source::start(
        common::repo_videos().join("alpha.ts"),
        SourceMode::Paced,
        tx,
    )
    .await
    .unwrap();
    let input = edge.input.clone();
    let feeder = tokio::spawn(async move {
        let mut seq = 0;
        while let Some(chunk) = rx.recv().await {
            let _ = input.try_send(EdgeInput::Chunk {
                video: "v1".into(),
                epoch: 1,
                seq,
                keyframe: chunk.keyframe,
                payload: chunk.payload,
            });
            seq += 1;
        }
    });
    let log = dir.path("client.log");
    let outcome = tokio::task::spawn_blocking(move || {
        let mut t = OnTerminal::spawn(&interactive_args("127.72.14.100", "127.72.14.10"), log);
        t.wait_for("what to type", 15, |s| s.contains("(e.g. v1)"));
        t.type_line("v1");
        let text = t.wait_for("raw datagrams counted in the table", 20, |s| {
            counts_after(s, "datagrams").iter().any(|&n| n > 20)
        });
        let status = text.lines().rfind(|l| l.starts_with("video v1")).unwrap();
        println!("table status line: {status}");
        assert!(status.contains("(raw TS, no chunk numbers)"), "{status}");
        assert!(status.contains("stalls "), "{status}");
        assert!(!status.contains(" MB  chunks"), "{status}");
        let mb: f64 = status.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(mb > 0.0, "{status}");
        t.type_line("quit");
        let code = t.exit_code(10);
        (code, text)
    })
    .await
    .unwrap();
    feeder.abort();
    source.stop().await.unwrap();
    assert_eq!(outcome.0, Some(0), "quit ends the client:\n{}", outcome.1);
    // No status line ever claimed "chunks 0" while raw TS flowed.
    assert!(
        !outcome
            .1
            .lines()
            .any(|l| l.starts_with("video v1") && l.contains("chunks 0")),
        "{}",
        outcome.1
    );
}
