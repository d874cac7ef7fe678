//! Wiring of the client role: edges from the bootstrapper, the client driver, the player or
//! recording, and the terminal interface.
//!
//! The client asks the bootstrapper for its edges, runs a [`ClientService`] under the client
//! driver, and hands the ordered raw TS to ffplay (on its stdin, or through a local UDP port
//! with `--player-input udp`; either way an edge switch never restarts the player) and/or to a
//! recording file. Two modes:
//! - **headless** (`--video NAME`): plays or records that video for `--duration` (or until
//!   Ctrl-C), then prints one `summary ...` line of `key=value` statistics (and writes them as
//!   JSON with `--stats-json`). It fails with a one-line reason when no edge answers, the video
//!   does not exist, or no video arrived at all;
//! - **interactive** (no `--video`): reads commands from stdin (`list`, `play NAME`, `stop`,
//!   `edge auto|N|IP`, `quit`).
//!
//! Either way a table of the edges (RTT, loss, the chosen one) is kept on screen when stdout
//! is a terminal (redrawn in place above a scrolling area), and printed as plain periodic
//! lines otherwise. Its status line counts what the relay mode lets a client count: chunks,
//! gaps and duplicates of the numbered datagrams of the built-in relay, or bytes, datagrams
//! and stalls of the raw MPEG-TS of an ffmpeg relay (which carries no chunk numbers).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::net::bootstrap_client::{self, RetryPolicy};
use crate::net::client_driver::{self, ClientCommand, ClientDriverConfig, ClientSnapshot};
use crate::service::client::{ClientEvent, ClientService, ClientSettings, EdgeChoice};
use crate::topology::NeighbourAddr;
use crate::wire::client::ErrorCode;

/// How long the bootstrapper is retried before the client gives up.
const BOOTSTRAP_GIVE_UP: Duration = Duration::from_secs(15);
/// Plain status lines (stdout not a terminal) every this long.
const PLAIN_STATUS_EVERY: Duration = Duration::from_secs(2);
/// A pause in the video at least this long is a stall. Sources deliver in bursts a few hundred
/// milliseconds apart, so a shorter pause is the normal rhythm of a live stream.
const STALL: Duration = Duration::from_secs(1);

/// Everything the client needs from the command line.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub bootstrap: SocketAddr,
    pub video: Option<String>,
    pub edge: String,
    pub player: bool,
    pub record: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub bind: IpAddr,
    pub client_port: u16,
    pub edge_port: u16,
    /// Write the final statistics as JSON here (headless mode).
    pub stats_json: Option<PathBuf>,
    /// How the TS reaches ffplay.
    pub player_input: PlayerInput,
    /// With [`PlayerInput::Udp`]: the local UDP port ffplay listens on (on 127.0.0.1); 0 picks
    /// a free one.
    pub player_port: u16,
    /// Shortest stream silence that makes the edge suspected; `None`: only the 1 s dead rule.
    pub edge_suspect: Option<Duration>,
    /// Latency budget of last-mile loss recovery (`--latency-ms`); `None`: from the edge's
    /// RTT; zero: off.
    pub latency: Option<Duration>,
}

/// How the ordered TS reaches ffplay (`--player-input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerInput {
    /// ffplay's stdin, a pipe open before ffplay runs: what arrives while it starts waits in
    /// the pipe (the GOP cache's keyframe first), and ffplay is told the format and probes a
    /// few packets, so it shows the picture as soon as it is up.
    Pipe,
    /// A local UDP port ffplay listens on (the way before `Pipe`): datagrams sent before ffplay
    /// has bound its port are lost, the first keyframe with them, and ffplay probes seconds of
    /// stream before it shows anything.
    Udp,
}

/// Datagrams waiting for the player's pipe; more are dropped (a stalled player must not stall
/// the client) and counted. About 4 s of our clips.
const PLAYER_QUEUE: usize = 256;

/// Where the TS goes to the player.
enum PlayerOut {
    Udp(UdpSocket, SocketAddr),
    Pipe(tokio::sync::mpsc::Sender<bytes::Bytes>),
}

/// Where the ordered TS goes: the player and/or a file.
struct MediaOut {
    record: Option<tokio::fs::File>,
    player: Option<PlayerOut>,
    child: Option<tokio::process::Child>,
    /// Datagrams the player's pipe queue refused.
    player_dropped: u64,
}

/// Starts ffplay reading the TS on its stdin, and the task that writes it there.
fn pipe_player(title: &str) -> anyhow::Result<(PlayerOut, tokio::process::Child)> {
    let mut child = tokio::process::Command::new("ffplay")
        .args(["-loglevel", "error", "-flags", "low_delay", "-infbuf"])
        // What -c copy or a decoder needs is in the first keyframe: no need to look further,
        // nor to estimate the frame rate. (-fflags nobuffer would drop what was probed.)
        .args(["-probesize", "16384", "-analyzeduration", "100000"])
        .args(["-fpsprobesize", "0"])
        .args(["-window_title", title])
        .args(["-f", "mpegts", "-i", "pipe:0"])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start ffplay (install ffmpeg, or use --player none)")?;
    let mut stdin = child.stdin.take().context("ffplay's stdin")?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(PLAYER_QUEUE);
    tokio::spawn(async move {
        while let Some(ts) = rx.recv().await {
            if stdin.write_all(&ts).await.is_err() {
                // The player is gone; its exit ends the client (see `player_exited`).
                break;
            }
        }
    });
    info!("ffplay started (TS on its stdin)");
    Ok((PlayerOut::Pipe(tx), child))
}

impl MediaOut {
    async fn open(cfg: &ClientConfig, title: &str) -> anyhow::Result<MediaOut> {
        let record =
            match &cfg.record {
                Some(path) => Some(tokio::fs::File::create(path).await.with_context(|| {
                    format!("cannot create --record file '{}'", path.display())
                })?),
                None => None,
            };
        let (player, child) = if cfg.player && cfg.player_input == PlayerInput::Pipe {
            let (player, child) = pipe_player(title)?;
            (Some(player), Some(child))
        } else if cfg.player {
            let port = match cfg.player_port {
                0 => free_udp_port()?,
                p => p,
            };
            let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let child = tokio::process::Command::new("ffplay")
                .args([
                    "-loglevel",
                    "error",
                    "-fflags",
                    "nobuffer",
                    "-flags",
                    "low_delay",
                ])
                .args(["-window_title", title])
                .arg("-i")
                .arg(format!("udp://127.0.0.1:{port}"))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start ffplay (install ffmpeg, or use --player none)")?;
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("cannot open the local socket to the player")?;
            info!(port, "ffplay started");
            (Some(PlayerOut::Udp(socket, target)), Some(child))
        } else {
            (None, None)
        };
        Ok(MediaOut {
            record,
            player,
            child,
            player_dropped: 0,
        })
    }

    async fn write(&mut self, ts: &[u8]) -> anyhow::Result<()> {
        if let Some(f) = &mut self.record {
            f.write_all(ts)
                .await
                .context("cannot write the recording")?;
        }
        match &self.player {
            Some(PlayerOut::Udp(socket, target)) => {
                // The player may not be listening yet, or be gone: video is best effort.
                let _ = socket.send_to(ts, *target).await;
            }
            Some(PlayerOut::Pipe(tx))
                if tx.try_send(bytes::Bytes::copy_from_slice(ts)).is_err() =>
            {
                self.player_dropped += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Completes when the player exits (never without a player).
    async fn player_exited(&mut self) {
        match &mut self.child {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => std::future::pending().await,
        }
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(f) = &mut self.record {
            f.flush().await.context("cannot write the recording")?;
        }
        if self.player_dropped > 0 {
            warn!(
                datagrams = self.player_dropped,
                "the player did not keep up: video dropped on its way to it"
            );
        }
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        Ok(())
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free local port for the player")?;
    Ok(s.local_addr()?.port())
}

/// Parses `--edge`: `auto`, or an edge address (IP or IP:PORT, default `edge_port`).
pub fn parse_edge_choice(s: &str, edge_port: u16) -> anyhow::Result<EdgeChoice> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(EdgeChoice::Auto);
    }
    let addr: NeighbourAddr = s
        .parse()
        .map_err(|e| anyhow::anyhow!("bad --edge '{s}': {e} (expected auto or an IP[:PORT])"))?;
    Ok(EdgeChoice::Pinned(addr.to_socket_addr(edge_port)))
}

pub async fn run(cfg: ClientConfig) -> anyhow::Result<()> {
    let choice = parse_edge_choice(&cfg.edge, cfg.edge_port)?;
    let retry = RetryPolicy {
        give_up_after: Some(BOOTSTRAP_GIVE_UP),
        ..RetryPolicy::default()
    };
    let entry = bootstrap_client::fetch_entry(cfg.bootstrap, &cfg.name, retry).await?;
    let mut edges: Vec<SocketAddr> = entry
        .device
        .neighbours
        .iter()
        .map(|n| n.to_socket_addr(cfg.edge_port))
        .collect();
    if let EdgeChoice::Pinned(addr) = choice {
        if !edges.contains(&addr) {
            warn!(edge = %addr, "--edge is not one of the edges the bootstrapper lists; using it anyway");
            edges.push(addr);
        }
    }
    if edges.is_empty() {
        anyhow::bail!(
            "the bootstrapper lists no edges for client '{}' (its \"neighbours\")",
            cfg.name
        );
    }
    info!(name = %cfg.name, edges = %join(&edges), "got edges from bootstrapper {}", cfg.bootstrap);

    let settings = ClientSettings {
        suspect_floor: cfg.edge_suspect,
        latency: cfg.latency,
        first_stream: rand::random(),
        token_key: rand::random(),
        ..ClientSettings::default()
    };
    let service = ClientService::new(settings, edges.clone(), choice, Instant::now());
    let handle = client_driver::spawn(
        ClientDriverConfig {
            bind: SocketAddr::new(cfg.bind, cfg.client_port),
            media_queue: 8192,
        },
        service,
    )
    .await
    .with_context(|| format!("cannot bind UDP {}:{}", cfg.bind, cfg.client_port))?;
    info!(local = %handle.local_addr(), "client socket bound");
    let title = format!(
        "overlayd {}: {}",
        cfg.name,
        cfg.video.as_deref().unwrap_or("video")
    );
    let media = MediaOut::open(&cfg, &title).await?;
    let mut ui = Screen::new(edges.len());
    let result = match cfg.video.clone() {
        Some(video) => headless(&cfg, handle, media, &mut ui, &video, &edges).await,
        None => interactive(handle, media, &mut ui).await,
    };
    ui.close();
    result
}

async fn headless(
    cfg: &ClientConfig,
    mut handle: client_driver::ClientHandle,
    mut media: MediaOut,
    ui: &mut Screen,
    video: &str,
    edges: &[SocketAddr],
) -> anyhow::Result<()> {
    handle.commands.send(ClientCommand::List).ok();
    handle
        .commands
        .send(ClientCommand::Play(video.to_owned()))
        .ok();
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let until = crate::net::sleep_until_or_never(deadline);
    tokio::pin!(until);
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut redraw = tokio::time::interval(ui.period());
    let mut offered: Option<Vec<String>> = None;
    let mut stalls = Stalls::default();
    let started = Instant::now();
    let failure: Option<String> = loop {
        tokio::select! {
            _ = &mut until => break None,
            _ = &mut shutdown => break None,
            _ = media.player_exited() => break None,
            ts = handle.media.recv() => match ts {
                Some(ts) => {
                    stalls.data(Instant::now());
                    media.write(&ts).await?
                }
                None => break Some("the client driver stopped".into()),
            },
            ev = handle.events.recv() => match ev {
                Some(ClientEvent::NoEdge { waited }) => break Some(format!(
                    "no edge answered within {:.1} s (edges: {})",
                    waited.as_secs_f64(),
                    join(edges)
                )),
                Some(ClientEvent::VideoError { video, edge, code: ErrorCode::UnknownVideo }) => {
                    let offers = offered
                        .as_ref()
                        .map(|v| format!(" (it offers: {})", if v.is_empty() { "none".into() } else { v.join(", ") }))
                        .unwrap_or_default();
                    break Some(format!("video '{video}' does not exist on edge {edge}{offers}"));
                }
                Some(ClientEvent::VideoList { videos, .. }) => offered = Some(videos),
                Some(ev) => ui.event(&ev),
                None => break Some("the client driver stopped".into()),
            },
            _ = redraw.tick() => ui.draw(&handle.snapshot.borrow(), &stalls),
        }
    };
    // Whatever is still queued belongs to the recording.
    while let Ok(ts) = handle.media.try_recv() {
        media.write(&ts).await?;
    }
    let snapshot = handle.shutdown().await;
    media.finish().await?;
    ui.close();
    if let Some(reason) = failure {
        anyhow::bail!(reason);
    }
    let elapsed = started.elapsed();
    println!("{}", summary_line(video, &snapshot, elapsed));
    if let Some(path) = &cfg.stats_json {
        let json = summary_json(video, &snapshot, elapsed);
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write --stats-json '{}'", path.display()))?;
    }
    if snapshot.stats.bytes == 0 {
        anyhow::bail!(
            "no video data received for '{video}' in {:.1} s (edges: {})",
            elapsed.as_secs_f64(),
            join(edges)
        );
    }
    Ok(())
}

const HELP: &str =
    "commands: list | play NAME (or just NAME) | stop | edge auto|N|IP | table | help | quit";

/// What to type, printed after each video list (on a terminal the first redraw of the table
/// clears the screen, so a help line printed at start-up is gone by the time the list comes).
fn what_to_type(videos: &[String]) -> String {
    match videos.first() {
        Some(v) => format!(
            "type a video's name and Enter to watch it (e.g. {v}); then: stop | list | \
             edge auto|N|IP (N = row of the table) | table | help | quit"
        ),
        None => {
            "no video yet: type list to ask again, help for every command, quit to leave".into()
        }
    }
}

/// Pauses in the video the user watches, measured where the client hands it over.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stalls {
    /// Completed pauses of at least [`STALL`].
    pub count: u64,
    /// The longest of them.
    pub longest: Duration,
    last_data: Option<Instant>,
}

impl Stalls {
    /// Video arrived at `now`.
    pub fn data(&mut self, now: Instant) {
        if let Some(gap) = self.last_data.map(|t| now.saturating_duration_since(t)) {
            if gap >= STALL {
                self.count += 1;
                self.longest = self.longest.max(gap);
            }
        }
        self.last_data = Some(now);
    }

    /// How long the video has been paused at `now`, when that is a stall already.
    pub fn current(&self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_data?);
        (gap >= STALL).then_some(gap)
    }

    /// A new video (or none): its pauses are counted afresh, from its first data.
    pub fn reset(&mut self) {
        *self = Stalls::default();
    }
}

async fn interactive(
    mut handle: client_driver::ClientHandle,
    mut media: MediaOut,
    ui: &mut Screen,
) -> anyhow::Result<()> {
    ui.say(HELP);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut redraw = tokio::time::interval(ui.period());
    let mut listed = false;
    let mut stalls = Stalls::default();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ts = handle.media.recv() => match ts {
                Some(ts) => {
                    stalls.data(Instant::now());
                    media.write(&ts).await?
                }
                None => break,
            },
            ev = handle.events.recv() => match ev {
                Some(ClientEvent::EdgeChosen { .. }) if !listed => {
                    listed = true;
                    if let Some(ev) = &ev { ui.event(ev) }
                    handle.commands.send(ClientCommand::List).ok();
                }
                Some(ClientEvent::NoEdge { waited }) => {
                    let edges: Vec<SocketAddr> =
                        handle.snapshot.borrow().edges.iter().map(|e| e.addr).collect();
                    let _ = handle.shutdown().await;
                    media.finish().await?;
                    anyhow::bail!(
                        "no edge answered within {:.1} s (edges: {})",
                        waited.as_secs_f64(),
                        join(&edges)
                    );
                }
                Some(ClientEvent::VideoList { edge, videos }) => {
                    ui.say(&format!(
                        "videos on {edge}: {}",
                        if videos.is_empty() { "(none yet)".into() } else { videos.join(", ") }
                    ));
                    ui.say(&what_to_type(&videos));
                }
                Some(ev) => ui.event(&ev),
                None => break,
            },
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    let snap = handle.snapshot.borrow().clone();
                    match parse_command(line.trim(), &snap) {
                        Ok(Some(Command::Quit)) => break,
                        Ok(Some(Command::Table)) => {
                            ui.say(&render_table(&snap, &stalls, Instant::now()).join("\n"))
                        }
                        Ok(Some(Command::Help)) => ui.say(HELP),
                        Ok(Some(Command::Client(cmd))) => {
                            if matches!(cmd, ClientCommand::Play(_) | ClientCommand::Stop) {
                                stalls.reset();
                            }
                            handle.commands.send(cmd).ok();
                        }
                        Ok(None) => {}
                        Err(e) => ui.say(&e),
                    }
                }
                // End of input: keep playing until Ctrl-C when a video runs, else quit.
                _ => {
                    stdin_open = false;
                    if handle.snapshot.borrow().video.is_none() {
                        break;
                    }
                }
            },
            _ = redraw.tick() => ui.draw(&handle.snapshot.borrow(), &stalls),
        }
    }
    let _ = handle.shutdown().await;
    media.finish().await
}

enum Command {
    Client(ClientCommand),
    Table,
    Help,
    Quit,
}

fn parse_command(line: &str, snap: &ClientSnapshot) -> Result<Option<Command>, String> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let rest: Vec<&str> = words.collect();
    let cmd = match (first, rest.as_slice()) {
        ("list" | "ls", []) => Command::Client(ClientCommand::List),
        ("stop", []) => Command::Client(ClientCommand::Stop),
        ("quit" | "exit" | "q", []) => Command::Quit,
        ("table" | "t", []) => Command::Table,
        ("help" | "?", []) => Command::Help,
        ("play", [name]) => Command::Client(ClientCommand::Play((*name).to_owned())),
        ("edge", ["auto"]) => Command::Client(ClientCommand::Choose(EdgeChoice::Auto)),
        ("edge", [which]) => {
            let addr = match which.parse::<usize>() {
                Ok(n) if n >= 1 && n <= snap.edges.len() => snap.edges[n - 1].addr,
                Ok(_) => return Err(format!("no edge number {which} (see the table)")),
                Err(_) => {
                    let port = snap.edges.first().map_or(0, |e| e.addr.port());
                    match parse_edge_choice(which, port) {
                        Ok(EdgeChoice::Pinned(a)) => a,
                        _ => return Err(format!("not an edge: {which}")),
                    }
                }
            };
            if !snap.edges.iter().any(|e| e.addr == addr) {
                return Err(format!("{addr} is not one of this client's edges"));
            }
            Command::Client(ClientCommand::Choose(EdgeChoice::Pinned(addr)))
        }
        (name, []) => Command::Client(ClientCommand::Play(name.to_owned())),
        _ => return Err(format!("unknown command '{line}'; {HELP}")),
    };
    Ok(Some(cmd))
}

/// The edge table and a status line of what the client can count at `now`.
pub fn render_table(s: &ClientSnapshot, stalls: &Stalls, now: Instant) -> Vec<String> {
    let mut lines = vec![format!(
        "   #  {:<24} {:>9} {:>6}  {:<5} {:>8}",
        "edge", "rtt", "loss", "state", "used"
    )];
    for (i, e) in s.edges.iter().enumerate() {
        let rtt = e.rtt.map_or("-".into(), |r| {
            format!("{:.1} ms", r.as_secs_f64() * 1000.0)
        });
        lines.push(format!(
            "{} {:>2}  {:<24} {:>9} {:>5.0}%  {:<5} {:>7.1}s",
            if e.chosen { "*" } else { " " },
            i + 1,
            e.addr.to_string(),
            rtt,
            e.loss * 100.0,
            if e.alive { "up" } else { "down" },
            e.time_used.as_secs_f64()
        ));
    }
    lines.push(status_line(s, stalls, now));
    lines
}

/// One line: the video and its counters. Numbered datagrams (built-in relay) give chunks, gaps
/// and dropped duplicates; raw TS (ffmpeg relay) has no chunk numbers, so then the line shows
/// what can be counted: bytes, datagrams and stalls. Before the first byte, neither.
fn status_line(s: &ClientSnapshot, stalls: &Stalls, now: Instant) -> String {
    let st = &s.stats;
    let mut stall = format!("stalls {}", stalls.count);
    if stalls.count > 0 {
        stall += &format!(" (longest {:.1} s)", stalls.longest.as_secs_f64());
    }
    if let Some(now) = stalls.current(now) {
        stall += &format!(", stalled {:.1} s", now.as_secs_f64());
    }
    let video = s.video.as_deref().unwrap_or("-");
    let mb = st.bytes as f64 / 1e6;
    if st.bytes == 0 {
        // Nothing yet tells which relay mode the edge uses; a "chunks 0" would be a guess.
        format!(
            "video {video}  no data yet  {stall}  switches {}",
            st.edge_switches
        )
    } else if st.raw_datagrams > 0 && st.chunks == 0 {
        format!(
            "video {video}  {mb:.2} MB  datagrams {} (raw TS, no chunk numbers)  {stall}  switches {}",
            st.raw_datagrams, st.edge_switches
        )
    } else {
        format!(
            "video {video}  {mb:.2} MB  chunks {}  gaps {}  dup-dropped {}  late-dropped {}  {stall}  switches {}",
            st.chunks, st.gaps, st.duplicates_dropped, st.reordered_dropped, st.edge_switches
        )
    }
}

/// The final `key=value` line.
pub fn summary_line(video: &str, s: &ClientSnapshot, elapsed: Duration) -> String {
    let st = &s.stats;
    let edges: Vec<String> = st
        .edges
        .iter()
        .map(|u| format!("{}({:.1}s)", u.edge, u.time.as_secs_f64()))
        .collect();
    format!(
        "summary video={video} seconds={:.1} bytes={} datagrams={} chunks={} raw_datagrams={} \
         gaps={} missing_chunks={} duplicates={} reorderings={} duplicates_dropped={} \
         reordered_dropped={} stale_dropped={} switches={} suspicions={} suspicions_cleared={} \
         drain_notices={} drain_notices_repeated={} drain_notices_ignored={} raw_repeated_ms={} raw_trimmed_packets={} gap_peak_ms={} \
         latency_budget_ms={} nacks_sent={} retransmits_received={} recovered={} unrecovered_holes={} held_for_recovery={} recovery_delay_max_ms={:.1} \
         media_dropped={} edges={}",
        elapsed.as_secs_f64(),
        st.bytes,
        st.datagrams,
        st.chunks,
        st.raw_datagrams,
        st.gaps,
        st.missing_chunks,
        st.delivered_duplicates,
        st.delivered_reorderings,
        st.duplicates_dropped,
        st.reordered_dropped,
        st.stale_dropped,
        st.edge_switches,
        st.suspicions,
        st.suspicions_cleared,
        st.drain_notices,
        st.drain_notices_repeated,
        st.drain_notices_ignored,
        st.raw_repeated_ms,
        st.raw_trimmed_packets,
        st.gap_peak_ms,
        st.latency_budget_ms,
        st.nacks_sent,
        st.retransmits_received,
        st.recovered,
        st.unrecovered_holes,
        st.held_for_recovery,
        st.recovery_delay_max_us as f64 / 1000.0,
        s.media_dropped,
        if edges.is_empty() {
            "-".into()
        } else {
            edges.join(",")
        }
    )
}

/// The statistics as JSON (`--stats-json`).
pub fn summary_json(video: &str, s: &ClientSnapshot, elapsed: Duration) -> serde_json::Value {
    let st = &s.stats;
    serde_json::json!({
        "video": video,
        "seconds": elapsed.as_secs_f64(),
        "bytes": st.bytes,
        "datagrams": st.datagrams,
        "chunks": st.chunks,
        "raw_datagrams": st.raw_datagrams,
        "gaps": st.gaps,
        "missing_chunks": st.missing_chunks,
        "duplicates": st.delivered_duplicates,
        "reorderings": st.delivered_reorderings,
        "duplicates_dropped": st.duplicates_dropped,
        "reordered_dropped": st.reordered_dropped,
        "stale_dropped": st.stale_dropped,
        "epoch_changes": st.epoch_changes,
        "switches": st.edge_switches,
        "suspicions": st.suspicions,
        "suspicions_cleared": st.suspicions_cleared,
        "drain_notices": st.drain_notices,
        "drain_notices_repeated": st.drain_notices_repeated,
        "drain_notices_ignored": st.drain_notices_ignored,
        "raw_repeated_ms": st.raw_repeated_ms,
        "raw_trimmed_packets": st.raw_trimmed_packets,
        "gap_peak_ms": st.gap_peak_ms,
        "latency_budget_ms": st.latency_budget_ms,
        "nacks_sent": st.nacks_sent,
        "nack_holes": st.nack_holes,
        "retransmits_received": st.retransmits_received,
        "recovered": st.recovered,
        "unrecovered_holes": st.unrecovered_holes,
        "nack_missed_chunks": st.nack_missed_chunks,
        "held_for_recovery": st.held_for_recovery,
        "recovery_delay_max_us": st.recovery_delay_max_us,
        "recovery_delay_total_us": st.recovery_delay_total_us,
        "media_dropped": s.media_dropped,
        "edges": st.edges.iter().map(|u| serde_json::json!({
            "edge": u.edge.to_string(),
            "seconds": u.time.as_secs_f64(),
            "bytes": u.bytes,
        })).collect::<Vec<_>>(),
    })
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terminal: a table kept at the top (TTY) or plain periodic lines.
struct Screen {
    tty: bool,
    height: usize,
    started: bool,
    last_plain: Option<Instant>,
}

impl Screen {
    fn new(edges: usize) -> Screen {
        Screen {
            tty: std::io::stdout().is_terminal(),
            height: edges + 2,
            started: false,
            last_plain: None,
        }
    }

    fn period(&self) -> Duration {
        if self.tty {
            Duration::from_millis(500)
        } else {
            PLAIN_STATUS_EVERY
        }
    }

    fn draw(&mut self, s: &ClientSnapshot, stalls: &Stalls) {
        let lines = render_table(s, stalls, Instant::now());
        let mut out = std::io::stdout().lock();
        if self.tty {
            if !self.started {
                self.started = true;
                // Clear, keep the top lines for the table, let the rest scroll.
                let _ = write!(out, "\x1b[2J\x1b[{};r\x1b[999;1H", self.height + 2);
            }
            let _ = write!(out, "\x1b7\x1b[1;1H");
            for l in lines.iter().take(self.height + 1) {
                let _ = write!(out, "\x1b[2K{l}\r\n");
            }
            let _ = write!(out, "\x1b[2K\x1b8");
        } else {
            if self
                .last_plain
                .is_some_and(|t| t.elapsed() < PLAIN_STATUS_EVERY / 2)
            {
                return;
            }
            self.last_plain = Some(Instant::now());
            let edges: Vec<String> = s
                .edges
                .iter()
                .map(|e| {
                    format!(
                        "{}{}:rtt={}:loss={:.0}%:{}",
                        if e.chosen { "*" } else { "" },
                        e.addr,
                        e.rtt
                            .map_or("-".into(), |r| format!("{:.1}ms", r.as_secs_f64() * 1000.0)),
                        e.loss * 100.0,
                        if e.alive { "up" } else { "down" }
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "edges {} video={} bytes={} gaps={} stalls={}",
                edges.join(" "),
                s.video.as_deref().unwrap_or("-"),
                s.stats.bytes,
                s.stats.gaps,
                stalls.count
            );
        }
        let _ = out.flush();
    }

    fn say(&mut self, text: &str) {
        println!("{text}");
    }

    fn event(&mut self, ev: &ClientEvent) {
        let text = match ev {
            ClientEvent::EdgeChosen {
                edge,
                previous: Some(p),
                reason,
            } => format!("switched edge {p} -> {edge} ({})", reason.as_str()),
            ClientEvent::EdgeChosen { edge, reason, .. } => {
                format!("using edge {edge} ({})", reason.as_str())
            }
            ClientEvent::NoEdge { waited } => {
                format!("no edge answers yet ({:.0} s)", waited.as_secs_f64())
            }
            ClientEvent::EdgeLost { edge } => {
                format!("edge {edge} is silent and no other edge answers")
            }
            ClientEvent::VideoList { edge, videos } => {
                format!("videos on {edge}: {}", videos.join(", "))
            }
            ClientEvent::Accepted { video, edge } => format!("{edge} accepted '{video}'"),
            ClientEvent::FirstData { video, edge } => format!("receiving '{video}' from {edge}"),
            ClientEvent::VideoError { video, edge, code } => {
                format!("'{video}' on {edge}: {}", code.as_str())
            }
        };
        if self.tty {
            self.say(&text);
        } else {
            // Plain mode: events are logged, stdout stays for status and the summary.
            info!("{text}");
        }
    }

    fn close(&mut self) {
        if self.tty && self.started {
            self.started = false;
            // Give the whole screen back.
            let _ = write!(std::io::stdout(), "\x1b[r\x1b[999;1H\r\n");
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_choice_parses_auto_ip_and_ip_port() {
        assert_eq!(parse_edge_choice("auto", 7702).unwrap(), EdgeChoice::Auto);
        assert_eq!(parse_edge_choice("AUTO", 7702).unwrap(), EdgeChoice::Auto);
        assert_eq!(
            parse_edge_choice("10.0.0.1", 7702).unwrap(),
            EdgeChoice::Pinned("10.0.0.1:7702".parse().unwrap())
        );
        assert_eq!(
            parse_edge_choice("10.0.0.1:9", 7702).unwrap(),
            EdgeChoice::Pinned("10.0.0.1:9".parse().unwrap())
        );
        assert!(parse_edge_choice("best", 7702).is_err());
    }

    #[test]
    fn commands_parse() {
        let snap = ClientSnapshot {
            edges: vec![crate::service::client::EdgeStatus {
                addr: "10.0.0.1:7702".parse().unwrap(),
                rtt: None,
                loss: 0.0,
                samples: 0,
                alive: true,
                chosen: false,
                score: None,
                time_used: Duration::ZERO,
                bytes: 0,
            }],
            ..ClientSnapshot::default()
        };
        let cmd = |l: &str| parse_command(l, &snap);
        assert!(
            matches!(cmd("v1"), Ok(Some(Command::Client(ClientCommand::Play(v)))) if v == "v1")
        );
        assert!(
            matches!(cmd("play v2"), Ok(Some(Command::Client(ClientCommand::Play(v)))) if v == "v2")
        );
        assert!(matches!(
            cmd("stop"),
            Ok(Some(Command::Client(ClientCommand::Stop)))
        ));
        assert!(matches!(
            cmd("edge 1"),
            Ok(Some(Command::Client(ClientCommand::Choose(
                EdgeChoice::Pinned(_)
            ))))
        ));
        assert!(matches!(
            cmd("edge 10.0.0.1"),
            Ok(Some(Command::Client(ClientCommand::Choose(
                EdgeChoice::Pinned(_)
            ))))
        ));
        assert!(cmd("edge 2").is_err());
        assert!(cmd("edge 10.9.9.9").is_err());
        assert!(matches!(cmd("quit"), Ok(Some(Command::Quit))));
        assert!(matches!(cmd(""), Ok(None)));
        assert!(cmd("play a b").is_err());
    }

    #[test]
    fn a_pause_of_a_second_or_more_is_a_stall() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut s = Stalls::default();
        assert_eq!(s.current(ms(5000)), None, "nothing arrived yet: no stall");
        s.data(ms(0));
        s.data(ms(400));
        s.data(ms(1300)); // 0.9 s: the rhythm of a bursty source, not a stall
        assert_eq!(s.count, 0);
        s.data(ms(2800));
        s.data(ms(5300));
        assert_eq!((s.count, s.longest), (2, Duration::from_millis(2500)));
        assert_eq!(s.current(ms(5900)), None);
        assert_eq!(s.current(ms(6800)), Some(Duration::from_millis(1500)));
        s.reset();
        assert_eq!((s.count, s.current(ms(9000))), (0, None));
    }

    #[test]
    fn the_status_line_counts_what_the_relay_mode_allows() {
        let now = Instant::now();
        let mut snap = ClientSnapshot {
            video: Some("alpha".into()),
            ..ClientSnapshot::default()
        };
        snap.stats.bytes = 2_000_000;
        snap.stats.datagrams = 1500;
        snap.stats.chunks = 1500;
        let mut stalls = Stalls::default();
        stalls.data(now - Duration::from_secs(3));
        stalls.data(now - Duration::from_millis(1200));
        // Numbered datagrams (built-in relay): chunks and what was dropped.
        let native = status_line(&snap, &stalls, now);
        assert!(native.contains("chunks 1500"), "{native}");
        assert!(native.contains("stalls 1 (longest 1.8 s)"), "{native}");
        // Raw TS (ffmpeg relay): no chunk numbers, so datagrams and stalls, never "chunks 0".
        snap.stats.chunks = 0;
        snap.stats.raw_datagrams = 1400;
        let raw = status_line(&snap, &stalls, now + Duration::from_millis(900));
        assert!(!raw.contains("chunks"), "{raw}");
        assert!(raw.contains("2.00 MB"), "{raw}");
        assert!(raw.contains("datagrams 1400 (raw TS"), "{raw}");
        assert!(
            raw.contains("stalls 1 (longest 1.8 s), stalled 2.1 s"),
            "{raw}"
        );
        // Nothing yet: no counter that depends on the mode.
        let waiting = status_line(&ClientSnapshot::default(), &Stalls::default(), now);
        assert!(
            waiting.contains("no data yet") && !waiting.contains("chunks"),
            "{waiting}"
        );
    }

    #[test]
    fn after_the_list_the_client_says_what_to_type() {
        let hint = what_to_type(&["alpha".into(), "bravo".into()]);
        assert!(hint.contains("e.g. alpha"), "{hint}");
        for cmd in ["stop", "edge auto", "quit"] {
            assert!(hint.contains(cmd), "{hint}");
        }
        assert!(what_to_type(&[]).contains("list"));
    }

    #[test]
    fn summary_has_every_statistic() {
        let line = summary_line("v1", &ClientSnapshot::default(), Duration::from_secs(2));
        for key in [
            "bytes=",
            "chunks=",
            "gaps=",
            "duplicates=",
            "reorderings=",
            "edges=",
        ] {
            assert!(line.contains(key), "{line}");
        }
        let json = summary_json("v1", &ClientSnapshot::default(), Duration::from_secs(2));
        assert_eq!(json["duplicates"], 0);
        assert!(json["edges"].is_array());
    }
}
