//! The bootstrapper's live map: the report listener and the web page.
//!
//! This module owns two listeners. The report listener accepts daemons' reports over the
//! overlay transport (PSK handshake + AES-GCM records; a connection that fails the handshake is
//! refused, counted and logged) and feeds them to the [`MapState`]. The HTTP listener is the
//! control endpoint's server ([`crate::net::http`], on hyper: GET only, one request per
//! connection, 8 KiB head, 3 s to send it, 32 connections at once, refusals counted in the
//! model's `counters.http_refused`):
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

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::crypto::Side;
use crate::keyfile::Psk;
use crate::net::http::{self, Handler, HttpError, Refusals, Reply, Request};
use crate::net::transport;
use crate::observe::map::MapState;
use crate::topology::Topology;
use crate::wire::report::decode_report;

/// The page, embedded in the binary.
pub const MAP_PAGE: &str = include_str!("map.html");

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
    let refusals = Arc::new(Refusals::default());
    let site = Site {
        state,
        topology,
        refusals: refusals.clone(),
    };
    http::serve(listeners.http, site, refusals, http::WRITE_TIMEOUT).await;
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

/// The page's [`Handler`]: the page itself and the model now.
#[derive(Clone)]
struct Site {
    state: Shared,
    topology: watch::Receiver<Arc<Topology>>,
    refusals: Arc<Refusals>,
}

impl Handler for Site {
    async fn handle(&self, req: Request) -> Result<Reply, HttpError> {
        match req.path.as_str() {
            "/" | "/index.html" => Ok(Reply::new("text/html; charset=utf-8", MAP_PAGE)),
            "/map.json" => {
                let topo = self.topology.borrow().clone();
                let mut model = lock(&self.state).model(&topo, Instant::now());
                model.counters.http_refused = self.refusals.snapshot();
                serde_json::to_string(&model)
                    .map(|body| Reply::new("application/json", body))
                    .map_err(|e| HttpError::new(500, format!("cannot encode the map: {e}")))
            }
            other => Err(HttpError::new(
                404,
                format!("no such page: {other} (try / or /map.json)"),
            )),
        }
    }
}
