//! The daemon side of the live map: sends this node's state to the bootstrapper's report port.
//!
//! This module owns one task per overlay daemon. Every `interval` it reads the latest
//! `NodeStatus` from the driver's watch channel (never touching the node loop itself), turns it
//! into a [`Report`](crate::wire::report::Report) and sends it as one sealed record over the
//! overlay transport (PSK handshake + AES-GCM, as overlay links). Reporting never slows the
//! overlay: only the newest snapshot is ever sent, one send at a time; a send that does not
//! finish within the interval drops the connection (the report is lost, a counter grows) and
//! the task reconnects with backoff (0.5 s doubling to 10 s). A bootstrapper without the map
//! just refuses the connection, which is logged once and retried quietly.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::crypto::Side;
use crate::keyfile::Psk;
use crate::net::transport::{self, SecureWriter};
use crate::observe::map::report_from_status;
use crate::observe::snapshot::NodeStatus;
use crate::service::edge::SessionInfo;
use crate::wire::report::{encode_report, MAX_REPORT_LEN};

/// Default time between reports.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// The bootstrapper's report listener.
    pub to: SocketAddr,
    /// Local address to dial from (each daemon its own 127.x on one machine).
    pub dial_from: Option<IpAddr>,
    pub psk: Psk,
    pub interval: Duration,
    /// Our overlay listening address, sent so the map can tie topology addresses to names.
    pub listen: SocketAddr,
}

/// What the reporter did, for logs and tests.
#[derive(Debug, Default)]
pub struct ReporterCounters {
    pub sent: AtomicU64,
    /// Reports lost because a send did not finish in time or failed.
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
}

/// Start reporting (with an edge's client `sessions`); the task runs until aborted.
pub fn spawn(
    cfg: ReporterConfig,
    status: watch::Receiver<Arc<NodeStatus>>,
    sessions: Option<watch::Receiver<Vec<SessionInfo>>>,
) -> (JoinHandle<()>, Arc<ReporterCounters>) {
    let counters = Arc::new(ReporterCounters::default());
    let task = tokio::spawn(run(cfg, status, sessions, counters.clone()));
    (task, counters)
}

/// Connect and handshake; also returns the address to report as ours: the overlay listening
/// address, or, when that is a wildcard, the port on the address this connection leaves from
/// (the one the neighbours most likely know us by).
async fn connect(cfg: &ReporterConfig) -> Result<(SecureWriter, SocketAddr), String> {
    let attempt = async {
        let socket = if cfg.to.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = cfg.dial_from.filter(|ip| ip.is_ipv4() == cfg.to.is_ipv4()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("cannot bind {ip}: {e}"))?;
        }
        let stream: TcpStream = socket.connect(cfg.to).await.map_err(|e| e.to_string())?;
        let listen = match stream.local_addr() {
            Ok(local) if cfg.listen.ip().is_unspecified() => {
                SocketAddr::new(local.ip(), cfg.listen.port())
            }
            _ => cfg.listen,
        };
        let conn = transport::handshake(stream, Side::Initiator, &cfg.psk, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        // The bootstrapper never answers; its half is dropped here.
        Ok::<_, String>((conn.into_split().1, listen))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn run(
    cfg: ReporterConfig,
    mut status: watch::Receiver<Arc<NodeStatus>>,
    sessions: Option<watch::Receiver<Vec<SessionInfo>>>,
    counters: Arc<ReporterCounters>,
) {
    let mut seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    let mut oversize_logged = false;
    // Sends get at least a second, so a short interval does not make a busy host flap.
    let send_timeout = cfg.interval.max(Duration::from_secs(1));
    loop {
        let (mut writer, listen) = match connect(&cfg).await {
            Ok(w) => w,
            Err(e) => {
                if !warned {
                    info!(to = %cfg.to, error = %e, "map reporter: cannot reach the bootstrapper's report port (is its --map-port on?); retrying quietly");
                    warned = true;
                } else {
                    debug!(to = %cfg.to, error = %e, "map reporter: connect failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        warned = false;
        counters.connects.fetch_add(1, Ordering::Relaxed);
        info!(to = %cfg.to, "map reporter: reporting to the bootstrapper");
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let snapshot = status.borrow_and_update().clone();
            // The driver publishes an empty status until its loop has started.
            if snapshot.name.is_empty() {
                continue;
            }
            let clients: Vec<(SocketAddr, String)> = sessions
                .as_ref()
                .map(|s| {
                    s.borrow()
                        .iter()
                        .map(|c| (c.client, c.video.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let report = report_from_status(&snapshot, listen, seq, &clients);
            seq += 1;
            let encoded = encode_report(&report);
            if encoded.len() > MAX_REPORT_LEN {
                // Lists are capped, so only absurdly long names get here; the map would
                // refuse it, so do not send it.
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !oversize_logged {
                    warn!(
                        bytes = encoded.len(),
                        max = MAX_REPORT_LEN,
                        "map reporter: report too large; not sent"
                    );
                    oversize_logged = true;
                }
                continue;
            }
            let bytes = BytesMut::from(&encoded[..]);
            match tokio::time::timeout(send_timeout, writer.send(bytes)).await {
                Ok(Ok(())) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    info!(to = %cfg.to, error = %e, "map reporter: connection lost; reconnecting");
                    break;
                }
                Err(_) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    info!(to = %cfg.to, "map reporter: bootstrapper too slow to take a report; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
