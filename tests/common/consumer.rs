//! A test consumer: an overlay peer holding the key that connects to a running node, asks for
//! a video like a child would, answers keepalives, and records every chunk it receives.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use overlayd::crypto::Side;
use overlayd::keyfile::Psk;
use overlayd::net::transport;
use overlayd::wire::overlay::{
    Hello, OverlayMsg, OverlayRole, Pong, VideoCancel, VideoRequest, OVERLAY_VERSION,
};

/// One received chunk.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub epoch: u64,
    pub seq: u64,
    pub at: Instant,
    /// The chunk is flagged as starting with a keyframe.
    pub keyframe: bool,
    /// A video PES (stream_id 0xE0..=0xEF) starts in one of its TS packets.
    pub video_start: bool,
}

/// What a consumer's received sequence looks like: the process tests' twin of
/// `overlayd::sim::SeqReport`.
#[derive(Debug, Default, Clone)]
pub struct SeqReport {
    pub chunks: usize,
    pub duplicates: usize,
    pub reorderings: usize,
    /// Sequence numbers skipped (within one epoch).
    pub missing: u64,
    /// Chunks older than one already received of the same epoch: the overlay's own ordering
    /// failures, whatever the sources did.
    pub reordered_in_epoch: usize,
    /// Moves from one epoch to another (a source restart, or a switch to another server
    /// streaming the same video: epochs of different servers are not ordered).
    pub epoch_changes: usize,
    /// Longest time between two consecutive chunks.
    pub max_gap: Duration,
}

impl std::fmt::Display for SeqReport {
    /// The one-line summary the process tests print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks, missing {}, duplicates {}, reorderings {}, longest gap {:.1} ms",
            self.chunks,
            self.missing,
            self.duplicates,
            self.reorderings,
            self.max_gap.as_secs_f64() * 1e3
        )
    }
}

pub fn analyse(rx: &[Received]) -> SeqReport {
    let mut d = SeqReport {
        chunks: rx.len(),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    let mut newest = std::collections::HashMap::new();
    let mut last: Option<Received> = None;
    for r in rx {
        if !seen.insert((r.epoch, r.seq)) {
            d.duplicates += 1;
            continue;
        }
        let top = newest.entry(r.epoch).or_insert(r.seq);
        if r.seq < *top {
            d.reordered_in_epoch += 1;
        }
        *top = (*top).max(r.seq);
        if let Some(l) = last {
            if r.epoch != l.epoch {
                d.epoch_changes += 1;
            }
            d.max_gap = d.max_gap.max(r.at.duration_since(l.at));
            if r.epoch == l.epoch {
                if r.seq < l.seq {
                    d.reorderings += 1;
                } else {
                    d.missing += r.seq - l.seq - 1;
                }
            } else if r.epoch < l.epoch {
                d.reorderings += 1;
            }
        }
        last = Some(*r);
    }
    d
}

pub struct Consumer {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Consumer {
    /// Connect to the node at `addr` as `name` and request `video`.
    pub fn start(addr: SocketAddr, psk: Psk, name: &str, video: &str) -> Consumer {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (name, video) = (name.to_string(), video.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(run(addr, psk, name, video, sink, stop_rx))
        });
        Consumer {
            received,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A consumer named `name` on the node bound to `ip` (overlay port 7701), with the key of
    /// `key_file`, asking for `video`.
    pub fn at(ip: &str, key_file: &std::path::Path, name: &str, video: &str) -> Consumer {
        let psk = overlayd::keyfile::load(key_file).unwrap().psk;
        let addr = format!("{ip}:7701").parse().unwrap();
        Consumer::start(addr, psk, name, video)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` chunks arrived.
    pub fn wait_chunks(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.received.lock().unwrap().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Cancel the video and disconnect; returns the consumer task's error, if any.
    pub fn stop(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err("consumer panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Sends one overlay message on an encrypted link.
pub async fn send(w: &mut transport::SecureWriter, msg: OverlayMsg) -> Result<(), String> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf).map_err(|e| e.to_string())?;
    w.send(buf).await.map_err(|e| e.to_string())
}

/// Connects to a node's overlay port at `addr`, handshakes with `psk` (within `handshake`) and
/// says hello as the node `name`: a child's link, ready for a video request.
pub async fn connect_as_child(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    psk: &Psk,
    name: &str,
    handshake: Duration,
) -> Result<(transport::SecureReader, transport::SecureWriter), String> {
    let stream = match from {
        None => tokio::net::TcpStream::connect(addr).await,
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
            sock.connect(addr).await
        }
    }
    .map_err(|e| e.to_string())?;
    let conn = transport::handshake(stream, Side::Initiator, psk, handshake)
        .await
        .map_err(|e| e.to_string())?;
    let (r, mut w) = conn.into_split();
    send(
        &mut w,
        OverlayMsg::Hello(Hello {
            name: name.to_string(),
            role: OverlayRole::Node,
            version: OVERLAY_VERSION,
            listen_port: 1,
        }),
    )
    .await?;
    Ok((r, w))
}

async fn run(
    addr: SocketAddr,
    psk: Psk,
    name: String,
    video: String,
    sink: Arc<Mutex<Vec<Received>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), String> {
    let (mut r, mut w) = connect_as_child(addr, None, &psk, &name, Duration::from_secs(5)).await?;
    send(
        &mut w,
        OverlayMsg::VideoRequest(VideoRequest {
            video: video.clone(),
            path: vec![name],
            has: None,
        }),
    )
    .await?;
    loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = send(&mut w, OverlayMsg::VideoCancel(VideoCancel { video })).await;
                return Ok(());
            }
            frame = r.recv() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => return Err("node closed the link".into()),
                    Err(e) => return Err(e.to_string()),
                };
                match OverlayMsg::decode(frame.freeze()).map_err(|e| e.to_string())? {
                    OverlayMsg::Ping(p) => send(&mut w, OverlayMsg::Pong(Pong { token: p.token })).await?,
                    OverlayMsg::VideoData(d) if *d.video == *video => {
                        let video_start = overlayd::media::ts::packets(&d.payload)
                            .any(|p| p.pes_stream_id().is_some_and(|id| (0xE0..=0xEF).contains(&id)));
                        let r = Received { epoch: d.epoch, seq: d.seq, at: Instant::now(), keyframe: d.is_keyframe(), video_start };
                        sink.lock().unwrap().push(r);
                    }
                    _ => {}
                }
            }
        }
    }
}
