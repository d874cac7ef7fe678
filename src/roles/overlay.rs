//! Wiring of the overlay roles (server, node, edge): key, bootstrap, listener, node loop, and
//! what hangs off the node's local port.
//!
//! A device loads the overlay key, asks the bootstrapper for its entry (retrying while the
//! bootstrapper is not up), then runs an overlay [`Node`] under the tokio [`NodeDriver`] until
//! SIGINT or SIGTERM. A server also keeps its video library (files added later are offered
//! too) and starts a live source for a video when the node asks for it, stopping it when the
//! last consumer leaves. An edge also runs the UDP client service, whose subscriptions become
//! the node's local consumers and which receives the node's delivered chunks. Every overlay
//! role also serves its control endpoint ([`control`]: status, metrics, traces) on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::media::relay::RelayConfig;
use crate::media::source::{Source, SourceHandle, SourceMode, VideoLibrary};
use crate::net::bootstrap_client::{self, RetryPolicy};
use crate::net::control;
use crate::net::edge_driver::{self, EdgeDriverConfig, EdgeEvent, EdgeInput};
use crate::net::edge_ffmpeg::{self, RelayStart};
use crate::net::node_driver::{DriverConfig, LocalEvent, LocalInput, LocalPort, NodeDriver};
use crate::net::reporter;
use crate::overlay::{LivenessConfig, Node, NodeConfig};
use crate::service::edge::EdgeConfig;
use crate::wire::overlay::OverlayRole;

/// How often a server looks for video files added to or removed from its folder.
const LIBRARY_SCAN: Duration = Duration::from_secs(2);

/// Which overlay role was asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Node,
    /// A node forced to be an edge whatever the topology says.
    Edge,
}

/// How a server turns files into live streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePreference {
    /// The built-in paced reader for plain MPEG-TS files, ffmpeg for the rest (see
    /// [`SourceMode::auto`]).
    Auto,
    Ffmpeg,
    Paced,
}

/// How an edge relays video to its clients (`--relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// ffmpeg when installed, else native.
    Auto,
    /// One ffmpeg child per client session, raw MPEG-TS ([`crate::net::edge_ffmpeg`]).
    Ffmpeg,
    /// The built-in relay: framed, numbered datagrams from the edge socket.
    Native,
}

/// Everything an overlay role needs from the command line.
#[derive(Debug, Clone)]
pub struct OverlayRoleConfig {
    pub name: String,
    pub kind: Kind,
    pub bootstrap: SocketAddr,
    pub bind: IpAddr,
    /// Control endpoint (status, metrics, traces); `None`: off. See [`crate::net::control`].
    pub control: Option<SocketAddr>,
    pub overlay_port: u16,
    pub key_file: PathBuf,
    pub liveness: LivenessConfig,
    pub videos: Option<PathBuf>,
    pub source: SourcePreference,
    pub flood_interval: Duration,
    pub switch_margin: f64,
    /// How long a better parent must stay better before a switch (`--switch-sustain-ms`).
    pub switch_sustain: Duration,
    /// A parent left because it stalled is not switched back to for this long (see
    /// [`crate::overlay::streams::StreamConfig::stall_damping`]).
    pub stall_damping: Duration,
    /// Suspect a parent silent beyond its stream's spacing (off: `--no-suspicion`).
    pub suspicion: bool,
    /// On SIGTERM, let children move elsewhere for at most this long (`--drain-ms`).
    pub drain: Duration,
    /// Withdraw the routes over a dead link to a server at once (off: `--no-route-withdrawal`).
    pub route_withdrawal: bool,
    pub edge_port: u16,
    /// Edge relay (ignored when the device is not an edge).
    pub relay: RelayMode,
    /// How the ffmpeg relay starts a session's child (`--ffmpeg-relay-start`).
    pub relay_start: RelayStart,
    /// Hitless redundancy for every stream (`--redundant`) ...
    pub redundant: bool,
    /// ... or for these videos (`--redundant-videos`).
    pub redundant_videos: Vec<String>,
    /// GOP cache bound per video in bytes, at the edge and in the overlay; 0: off
    /// (`--gop-cache-bytes`).
    pub gop_cache_bytes: usize,
    /// Most client sessions of an edge (`--max-clients`).
    pub max_clients: usize,
    /// How often to report to the bootstrapper's live map; `None`: never.
    pub report_interval: Option<Duration>,
    /// The bootstrapper's report port; `None`: its bootstrap port + 10.
    pub report_port: Option<u16>,
}

/// Run an overlay role until a termination signal.
pub async fn run(cfg: OverlayRoleConfig) -> anyhow::Result<()> {
    let key = crate::keyfile::load(&cfg.key_file)?;
    for w in &key.warnings {
        warn!("{w}");
    }
    // The library is read before anything else so a typo in --videos fails fast.
    let library = match &cfg.videos {
        Some(dir) => {
            let mut lib = VideoLibrary::new(dir);
            lib.scan()
                .with_context(|| format!("cannot read --videos folder '{}'", dir.display()))?;
            let names: Vec<&str> = lib.videos().map(|v| v.name.as_str()).collect();
            if names.is_empty() {
                warn!(dir = %dir.display(), "no playable video in the folder (yet)");
            } else {
                info!(dir = %dir.display(), videos = %names.join(","), "video library");
            }
            Some(lib)
        }
        None => None,
    };

    let entry =
        bootstrap_client::fetch_entry(cfg.bootstrap, &cfg.name, RetryPolicy::default()).await?;
    let device = entry.device;
    let edge = cfg.kind == Kind::Edge || (cfg.kind == Kind::Node && device.edge);
    let role = match cfg.kind {
        Kind::Server => OverlayRole::Server,
        _ if edge => OverlayRole::Edge,
        _ => OverlayRole::Node,
    };
    let neighbours: Vec<SocketAddr> = device
        .neighbours
        .iter()
        .map(|n| n.to_socket_addr(cfg.overlay_port))
        .collect();
    info!(
        name = %cfg.name, role = %role,
        neighbours = %neighbours.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        "got topology entry from bootstrapper {}", cfg.bootstrap
    );

    let mut driver = NodeDriver::bind(DriverConfig {
        listen: SocketAddr::new(cfg.bind, cfg.overlay_port),
        dial_from: (!cfg.bind.is_unspecified()).then_some(cfg.bind),
        psk: key.psk.clone(),
        handshake_timeout: Duration::from_secs(3),
        drain: cfg.drain,
    })
    .await?;
    info!(listen = %driver.local_addr(), "overlay listening");

    let mut node_cfg = NodeConfig::new(&cfg.name, role, driver.local_addr().port(), neighbours);
    node_cfg.liveness = cfg.liveness.clone();
    node_cfg.flood_interval = cfg.flood_interval;
    node_cfg.streams.switch_margin = cfg.switch_margin;
    node_cfg.streams.switch_sustain = cfg.switch_sustain;
    node_cfg.streams.stall_damping = cfg.stall_damping;
    node_cfg.streams.suspect = cfg.suspicion;
    node_cfg.streams.gop_cache_bytes = cfg.gop_cache_bytes;
    node_cfg.route_withdrawal = cfg.route_withdrawal;
    node_cfg.streams.redundant = cfg.redundant;
    node_cfg.streams.redundant_videos = cfg.redundant_videos.clone();
    if cfg.redundant || !cfg.redundant_videos.is_empty() {
        info!(
            all = cfg.redundant, videos = %cfg.redundant_videos.join(","),
            "hitless redundancy on: two parents per stream where the overlay allows"
        );
    }
    if let Some(lib) = &library {
        node_cfg.videos = lib.videos().map(|v| v.name.clone()).collect();
    }
    let node = Node::new(node_cfg, Instant::now());

    let port = driver
        .take_local_port()
        .expect("the local port is taken once, here");
    let edge_handle = if edge {
        let bind = SocketAddr::new(cfg.bind, cfg.edge_port);
        let ffmpeg = crate::media::relay::ffmpeg_available();
        let mode = match cfg.relay {
            RelayMode::Auto if ffmpeg => RelayMode::Ffmpeg,
            RelayMode::Auto => RelayMode::Native,
            RelayMode::Ffmpeg if !ffmpeg => {
                anyhow::bail!("--relay ffmpeg: ffmpeg is not installed (or use --relay native)")
            }
            m => m,
        };
        let relay = match mode {
            RelayMode::Ffmpeg => edge_ffmpeg::relay(RelayConfig::default(), cfg.relay_start),
            // One chunk fans out to every client at once: room for a few such bursts.
            _ => edge_driver::Relay::Native {
                queue: (4 * cfg.max_clients).max(1024),
            },
        };
        let handle = edge_driver::spawn(EdgeDriverConfig {
            bind,
            service: EdgeConfig {
                gop_cache_bytes: cfg.gop_cache_bytes,
                max_sessions: cfg.max_clients,
                // An ffmpeg relay's clients get raw TS without numbers: nothing to NACK, and a
                // retransmission would be fed to the client's ffmpeg child as new video.
                retransmit_chunks: if mode == RelayMode::Ffmpeg {
                    0
                } else {
                    EdgeConfig::DEFAULT_RETRANSMIT_CHUNKS
                },
                ..EdgeConfig::default()
            },
            relay,
        })
        .await
        .with_context(|| format!("cannot open the edge's client port {bind}"))?;
        let relay = if mode == RelayMode::Ffmpeg {
            "ffmpeg"
        } else {
            "native"
        };
        info!(listen = %handle.local_addr(), relay, "edge serving clients over UDP");
        Some(handle)
    } else {
        None
    };
    let edge_view = edge_handle.as_ref().map(control::EdgeView::of);
    let sessions = edge_view.as_ref().map(|v| v.sessions.clone());
    let control = match cfg.control {
        Some(addr) => control::spawn(addr, driver.control_port(), edge_view).await,
        None => None,
    };
    let local = tokio::spawn(serve_local(port, library, cfg.source, edge_handle));
    let reporter = cfg.report_interval.and_then(|interval| {
        let port = cfg.report_port.or_else(|| {
            cfg.bootstrap
                .port()
                .checked_add(crate::wire::report::REPORT_PORT_OFFSET)
        })?;
        let (task, _) = reporter::spawn(
            reporter::ReporterConfig {
                to: SocketAddr::new(cfg.bootstrap.ip(), port),
                dial_from: (!cfg.bind.is_unspecified()).then_some(cfg.bind),
                psk: key.psk.clone(),
                interval,
                listen: driver.local_addr(),
            },
            driver.control_port().status,
            sessions,
        );
        Some(task)
    });

    driver.run(node, super::shutdown_signal()).await;
    if let Some(c) = control {
        c.abort();
    }
    if let Some(r) = reporter {
        r.abort();
    }
    // The driver is gone, so the local channels are closed: sources stop and children die.
    if tokio::time::timeout(Duration::from_secs(3), local)
        .await
        .is_err()
    {
        warn!("local services did not stop within 3 s");
    }
    info!("shut down");
    Ok(())
}

/// The daemon's side of the node: sources (server), the client service (edge).
async fn serve_local(
    port: LocalPort,
    mut library: Option<VideoLibrary>,
    preference: SourcePreference,
    mut edge: Option<edge_driver::EdgeHandle>,
) {
    let LocalPort {
        input,
        mut events,
        mut delivered,
    } = port;
    let mut sources: HashMap<String, (SourceHandle, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut scan = tokio::time::interval(LIBRARY_SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let edge_input = edge.as_ref().map(|h| h.input.clone());

    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break,
                Some(LocalEvent::SourceStart(video)) => {
                    if sources.contains_key(&video) {
                        continue;
                    }
                    let Some(path) = library.as_ref().and_then(|l| l.get(&video)).map(|v| v.path.clone()) else {
                        warn!(video, "asked to stream a video that is not in the library");
                        continue;
                    };
                    let mode = match preference {
                        SourcePreference::Ffmpeg => Some(SourceMode::Ffmpeg),
                        SourcePreference::Paced => Some(SourceMode::Paced),
                        SourcePreference::Auto => SourceMode::auto(&path),
                    };
                    let Some(mode) = mode else {
                        warn!(video, path = %path.display(), "cannot play this file: ffmpeg is not installed and it is not .ts");
                        continue;
                    };
                    let (tx, mut rx) = mpsc::channel(64);
                    match Source::start(path.clone(), mode, tx).await {
                        Ok(handle) => {
                            info!(video, ?mode, path = %path.display(), "source started");
                            let input = input.clone();
                            let name = video.clone();
                            let pump = tokio::spawn(async move {
                                while let Some(chunk) = rx.recv().await {
                                    let msg = LocalInput::SourceChunk {
                                        video: name.clone(),
                                        payload: chunk.payload,
                                        keyframe: chunk.keyframe,
                                    };
                                    if input.send(msg).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            sources.insert(video, (handle, pump));
                        }
                        Err(e) => warn!(video, error = %e, "cannot start the source"),
                    }
                }
                Some(LocalEvent::SourceStop(video)) => {
                    if let Some((handle, pump)) = sources.remove(&video) {
                        pump.abort();
                        if let Err(e) = handle.stop().await {
                            warn!(video, error = %e, "source ended with an error");
                        }
                        info!(video, "source stopped");
                    }
                }
                Some(LocalEvent::Videos(videos)) => {
                    if let Some(tx) = &edge_input {
                        let _ = tx.send(EdgeInput::Videos(videos)).await;
                    }
                }
                Some(LocalEvent::Drain(within)) => {
                    if let Some(tx) = &edge_input {
                        let _ = tx.send(EdgeInput::Drain(within)).await;
                    }
                }
            },
            Some(d) = delivered.recv() => {
                if let Some(tx) = &edge_input {
                    let chunk = EdgeInput::Chunk {
                        video: d.video,
                        epoch: d.data.epoch,
                        seq: d.data.seq,
                        keyframe: d.data.is_keyframe(),
                        payload: d.data.payload,
                    };
                    // Media: never wait for a slow client service.
                    let _ = tx.try_send(chunk);
                }
            }
            Some(ev) = async { match edge.as_mut() { Some(h) => h.events.recv().await, None => std::future::pending().await } } => {
                let msg = match ev {
                    EdgeEvent::Subscribe { video } => LocalInput::Subscribe(video),
                    EdgeEvent::Unsubscribe { video } => LocalInput::Unsubscribe(video),
                };
                if input.send(msg).await.is_err() {
                    break;
                }
            }
            _ = scan.tick(), if library.is_some() => {
                let lib = library.as_mut().expect("checked");
                match lib.scan() {
                    Ok(changes) if !changes.is_empty() => {
                        for v in &changes.added {
                            info!(video = %v.name, path = %v.path.display(), "video added");
                        }
                        for v in &changes.removed {
                            info!(video = %v.name, "video removed");
                        }
                        let names = lib.videos().map(|v| v.name.clone()).collect();
                        let _ = input.send(LocalInput::SetVideos(names)).await;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot rescan the video folder"),
                }
            }
        }
    }
    for (_, (handle, pump)) in sources.drain() {
        pump.abort();
        let _ = handle.stop().await;
    }
    if let Some(h) = edge {
        h.shutdown().await;
    }
}
