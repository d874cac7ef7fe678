//! The bootstrapper's live map: the report listener and the web page.
//!
//! This module owns two listeners. The report listener accepts daemons' reports over the
//! overlay transport (PSK handshake + AES-GCM records; a connection that fails the handshake is
//! refused, counted and logged) and feeds them to the [`MapState`]. The HTTP listener is a
//! small hand-written HTTP/1.1 server (the control endpoint's parser and bounds: GET only, one
//! request per connection, 8 KiB head, 3 s to send it, 32 connections at once):
//!
//! | path | answer |
//! |---|---|
//! | `/` | the map page (one self-contained HTML file; it polls `/map.json` every second) |
//! | `/map.json` | the [`MapModel`](crate::observe::map::MapModel) now |
//!
//! The page is plain HTTP without authentication and shows the topology: bind it to a
//! management or loopback address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::crypto::Side;
use crate::keyfile::Psk;
use crate::net::control::{parse_request, response, HttpError, Request};
use crate::net::transport;
use crate::observe::map::MapState;
use crate::topology::Topology;
use crate::wire::report::decode_report;

/// The page, embedded in the binary.
pub const MAP_PAGE: &str = include_str!("map.html");

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HTTP_CONNECTIONS: usize = 32;
/// Report connections at once (one per daemon; more wait in the backlog).
const MAX_REPORT_CONNECTIONS: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// A report connection silent this long is closed (daemons report every few seconds at most).
const REPORT_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct MapConfig {
    /// Where the page is served.
    pub http: SocketAddr,
    /// Where daemons' reports arrive.
    pub report: SocketAddr,
    pub psk: Psk,
    pub dead_after: Duration,
}

/// Both listeners, bound.
pub struct MapListeners {
    pub http: TcpListener,
    pub report: TcpListener,
}

impl MapListeners {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }
    pub fn report_addr(&self) -> Option<SocketAddr> {
        self.report.local_addr().ok()
    }
}

/// Bind the page and report listeners; the error names the flag to change.
pub async fn bind(cfg: &MapConfig) -> Result<MapListeners, (SocketAddr, std::io::Error)> {
    let http = super::bind::tcp_listener(cfg.http).map_err(|e| (cfg.http, e))?;
    let report = super::bind::tcp_listener(cfg.report).map_err(|e| (cfg.report, e))?;
    Ok(MapListeners { http, report })
}

type Shared = Arc<Mutex<MapState>>;

/// Serve the page and take reports until the task is aborted.
pub async fn serve(
    listeners: MapListeners,
    cfg: MapConfig,
    topology: watch::Receiver<Arc<Topology>>,
) {
    let state: Shared = Arc::new(Mutex::new(MapState::new(cfg.dead_after)));
    if let (Some(h), Some(r)) = (listeners.http_addr(), listeners.report_addr()) {
        info!(page = %format!("http://{h}/"), reports = %r, "live map on");
        if !h.ip().is_loopback() {
            warn!(page = %h, "the live map page has no authentication and shows the topology: keep {h} on a management network (--map-bind)");
        }
    }
    let reports = tokio::spawn(accept_reports(listeners.report, cfg.psk, state.clone()));
    serve_http(listeners.http, state, topology).await;
    reports.abort();
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, MapState> {
    // The state has no invariant a panicking holder could break halfway; keep serving.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_reports(listener: TcpListener, psk: Psk, state: Shared) {
    let slots = Arc::new(Semaphore::new(MAX_REPORT_CONNECTIONS));
    let mut next_conn = 0u64;
    let refusals = Arc::new(Mutex::new(RefusalLog::default()));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let peer = super::bind::canonical(peer);
                let (psk, state, refusals) = (psk.clone(), state.clone(), refusals.clone());
                // Connection ids start at 1 (0 is the model's "unknown connection").
                next_conn += 1;
                let conn = next_conn;
                tokio::spawn(async move {
                    let from = report_connection(stream, peer, conn, psk, &state, refusals).await;
                    if let Some(name) = from {
                        lock(&state).note_closed(&name, conn);
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "map: accepting a report connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Logs refused report connections at most once a second.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Serve one report connection; returns the name it reported as, if any.
async fn report_connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    psk: Psk,
    state: &Shared,
    refusals: Arc<Mutex<RefusalLog>>,
) -> Option<String> {
    let conn = match transport::handshake(stream, Side::Responder, &psk, HANDSHAKE_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            lock(state).note_auth_refused();
            let mut log = refusals.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if log
                .last
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
            {
                log.suppressed += 1;
            } else {
                let more = std::mem::take(&mut log.suppressed);
                warn!(%peer, error = %e, suppressed = more, "map: report refused: handshake failed (wrong or no key?)");
                log.last = Some(now);
            }
            return None;
        }
    };
    let (mut reader, _writer) = conn.into_split();
    let mut from: Option<String> = None;
    loop {
        let frame = match tokio::time::timeout(REPORT_IDLE, reader.recv()).await {
            Err(_) => {
                debug!(%peer, "map: report connection idle; closed");
                return from;
            }
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => {
                debug!(%peer, name = ?from, "map: reporter closed its connection");
                return from;
            }
            Ok(Err(e)) => {
                info!(%peer, name = ?from, error = %e, "map: report connection failed");
                return from;
            }
        };
        match decode_report(&frame) {
            Ok(r) => {
                if from.is_none() {
                    info!(%peer, name = %r.name, "map: daemon reporting");
                }
                from = Some(r.name.clone());
                let mut map = lock(state);
                map.note_bytes(frame.len());
                map.ingest_from(conn_id, r, Instant::now());
            }
            Err(e) => {
                lock(state).note_malformed();
                warn!(%peer, error = %e, "map: malformed report; connection closed");
                return from;
            }
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    state: Shared,
    topology: watch::Receiver<Arc<Topology>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (state, topology) = (state.clone(), topology.clone());
                tokio::spawn(async move {
                    handle_http(stream, peer, &state, &topology).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "map: accepting a page connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_http(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &Shared,
    topology: &watch::Receiver<Arc<Topology>>,
) {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(r) = parse_request(&buf)? {
                return Ok(r);
            }
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    return Err(HttpError {
                        status: 400,
                        reason: "connection closed mid-request".into(),
                    })
                }
                // parse_request refuses a head over its limit, so buf stays bounded.
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(HttpError {
                        status: 400,
                        reason: format!("read error: {e}"),
                    })
                }
            }
        }
    };
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => error_response(408, "request not received in time"),
        Ok(Err(e)) => error_response(e.status, &e.reason),
        Ok(Ok(req)) => {
            debug!(%peer, path = %req.path, "map request");
            route(&req, state, topology)
        }
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

fn error_response(status: u16, reason: &str) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        &format!("error: {}\n", reason.replace('\n', " ")),
    )
}

fn route(req: &Request, state: &Shared, topology: &watch::Receiver<Arc<Topology>>) -> Vec<u8> {
    if req.method != "GET" {
        return error_response(405, &format!("{} not allowed: only GET", req.method));
    }
    match req.path.as_str() {
        "/" | "/index.html" => response(200, "text/html; charset=utf-8", MAP_PAGE),
        "/map.json" => {
            let topo = topology.borrow().clone();
            let model = lock(state).model(&topo, Instant::now());
            match serde_json::to_string(&model) {
                Ok(body) => response(200, "application/json", &body),
                Err(e) => error_response(500, &format!("cannot encode the map: {e}")),
            }
        }
        other => error_response(404, &format!("no such page: {other} (try / or /map.json)")),
    }
}
