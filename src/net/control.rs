//! The control endpoint: an HTTP/1.1 server (hyper, through [`crate::net::http`]) on a loopback
//! address that shows what a running daemon knows, and the client side `overlayd status` and
//! `overlayd trace` use.
//!
//! Endpoints (GET only, one request per connection, `Connection: close`):
//!
//! | path | answer |
//! |---|---|
//! | `/status` | the [`NodeStatus`] snapshot as JSON (with the edge's clients when it is an edge) |
//! | `/metrics` | the same as Prometheus (OpenMetrics) text, plus the endpoint's own refusals |
//! | `/trace?video=V[&wait_ms=N]` | starts a trace of V's tree here, collects the answers for N ms (default 1000, at most 10000), returns a [`TraceResult`] as JSON |
//!
//! It is plain HTTP with no authentication: it must only ever listen on loopback or a
//! management address, never on an address the overlay (or anyone untrusted) can reach. The
//! role wiring binds it to loopback unless told otherwise explicitly (and warns when told).
//! Requests are bounded (8 KiB of head, 3 s to send it, 32 connections at once); refused
//! requests are counted by reason (`overlayd_control_refused_total`), bad ones get a one-line error
//! and the connection is closed; nothing here panics on input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::net::edge_driver::EdgeDriverCounters;
pub use crate::net::http::percent_encode;
use crate::net::http::{self, Handler, HttpError, Refusals, Reply, Request};
use crate::net::node_driver::{ControlPort, ControlRequest};
use crate::observe::metrics;
use crate::observe::snapshot::{EdgeServiceStatus, NodeStatus, SessionStatus};
use crate::observe::trace::TraceResult;
use crate::service::edge::{EdgeCounters, SessionInfo};

/// Default TCP port of the control endpoint.
pub const DEFAULT_CONTROL_PORT: u16 = 7704;
/// Default and largest time a trace collects answers.
pub const TRACE_WAIT: Duration = Duration::from_millis(1000);
const TRACE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Answers kept per trace.
const TRACE_ANSWERS: usize = 1024;
/// Time to answer once the request head is in: the longest trace, its start, and the write.
pub const ANSWER_WITHIN: Duration = TRACE_WAIT_MAX
    .saturating_add(TRACE_START)
    .saturating_add(http::WRITE_TIMEOUT);
/// Time the node loop has to start a trace.
const TRACE_START: Duration = Duration::from_secs(2);

/// What an edge shows on the control endpoint.
#[derive(Clone)]
pub struct EdgeView {
    pub sessions: watch::Receiver<Vec<SessionInfo>>,
    pub counters: watch::Receiver<EdgeCounters>,
    pub driver_counters: Arc<EdgeDriverCounters>,
}

impl EdgeView {
    fn status(&self, now: Instant) -> EdgeServiceStatus {
        let sessions = self
            .sessions
            .borrow()
            .iter()
            .map(|s| SessionStatus {
                client: s.client.to_string(),
                video: s.video.clone(),
                stream: s.stream,
                lease_left_ms: s.lease_until.saturating_duration_since(now).as_millis() as u64,
                datagrams_sent: s.datagrams_sent,
            })
            .collect();
        let counters = match serde_json::to_value(&*self.counters.borrow()) {
            Ok(serde_json::Value::Object(m)) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
                .collect(),
            _ => Default::default(),
        };
        EdgeServiceStatus {
            sessions,
            counters,
            video_dropped: self
                .driver_counters
                .video_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The running endpoint's shared state: the [`Handler`] of its requests.
#[derive(Clone)]
pub struct ControlEndpoint {
    port: ControlPort,
    edge: Option<EdgeView>,
    refusals: Arc<Refusals>,
}

impl ControlEndpoint {
    /// The endpoint of a node's control port (and an edge's view); `refusals` are the ones
    /// its server counts, shown on `/metrics`.
    pub fn new(
        port: ControlPort,
        edge: Option<EdgeView>,
        refusals: Arc<Refusals>,
    ) -> ControlEndpoint {
        ControlEndpoint {
            port,
            edge,
            refusals,
        }
    }

    fn status(&self) -> NodeStatus {
        let mut s = (**self.port.status.borrow()).clone();
        if let Some(e) = &self.edge {
            s.edge = Some(e.status(Instant::now()));
        }
        s
    }
}

/// Bind the endpoint's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    super::bind::tcp_listener(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for the control endpoint on {addr}: {e} (--control-port, --control-bind)"),
        )
    })
}

/// Serve until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, port: ControlPort, edge: Option<EdgeView>) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "control endpoint (plain HTTP: /status, /metrics, /trace)");
    }
    let refusals = Arc::new(Refusals::default());
    let ctx = ControlEndpoint::new(port, edge, refusals.clone());
    http::serve(listener, ctx, refusals, ANSWER_WITHIN).await;
}

impl Handler for ControlEndpoint {
    async fn handle(&self, req: Request) -> Result<Reply, HttpError> {
        match req.path.as_str() {
            "/" => Ok(Reply::new(
                "text/plain; charset=utf-8",
                "overlayd control endpoint: GET /status, /metrics, /trace?video=NAME[&wait_ms=N]\n",
            )),
            "/status" => {
                let body = serde_json::to_string_pretty(&self.status())
                    .map_err(|e| HttpError::new(500, format!("cannot encode status: {e}")))?;
                Ok(Reply::new("application/json", body))
            }
            "/metrics" => Ok(Reply::new(
                metrics::CONTENT_TYPE,
                metrics::render(&self.status(), &self.refusals.snapshot()),
            )),
            "/trace" => {
                let video = req
                    .param("video")
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| HttpError::new(400, "missing ?video=NAME"))?;
                let wait = match req.param("wait_ms") {
                    None => TRACE_WAIT,
                    Some(v) => Duration::from_millis(
                        v.parse()
                            .map_err(|_| HttpError::new(400, "wait_ms must be a number"))?,
                    )
                    .min(TRACE_WAIT_MAX),
                };
                let result = trace(&self.port, video, wait).await?;
                let body = serde_json::to_string_pretty(&result)
                    .map_err(|e| HttpError::new(500, format!("cannot encode trace: {e}")))?;
                Ok(Reply::new("application/json", body))
            }
            other => Err(HttpError::new(404, format!("no such endpoint: {other}"))),
        }
    }
}

/// Ask the node loop to start a trace and collect the answers for `wait`.
async fn trace(port: &ControlPort, video: &str, wait: Duration) -> Result<TraceResult, HttpError> {
    let (started_tx, started_rx) = oneshot::channel();
    let (answers_tx, mut answers_rx) = mpsc::channel(TRACE_ANSWERS);
    port.requests
        .send(ControlRequest::Trace {
            video: video.to_string(),
            started: started_tx,
            answers: answers_tx,
        })
        .await
        .map_err(|_| HttpError::new(503, "the node is shutting down"))?;
    let id = match tokio::time::timeout(TRACE_START, started_rx).await {
        Ok(Ok(Ok(id))) => id,
        Ok(Ok(Err(why))) => return Err(HttpError::new(409, why)),
        _ => return Err(HttpError::new(503, "the node did not start the trace")),
    };
    let mut paths = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, answers_rx.recv()).await {
        paths.push(p);
    }
    Ok(TraceResult {
        video: video.to_string(),
        id,
        waited_ms: wait.as_millis() as u64,
        paths,
    })
}

/// Where a daemon's control endpoint listens: `None` when `port` is 0 (disabled); the
/// explicit `control_bind` when given; else the daemon's own `--bind` address when it is a
/// loopback address (so several daemons on one machine each have one), else 127.0.0.1. A
/// non-loopback address is therefore only ever used when asked for explicitly.
pub fn control_addr(
    bind: std::net::IpAddr,
    control_bind: Option<std::net::IpAddr>,
    port: u16,
) -> Option<SocketAddr> {
    if port == 0 {
        return None;
    }
    let ip = match control_bind {
        Some(ip) => ip,
        None if bind.is_loopback() => bind,
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    };
    Some(SocketAddr::new(ip, port))
}

impl EdgeView {
    /// The view of a running edge driver.
    pub fn of(h: &crate::net::edge_driver::EdgeHandle) -> EdgeView {
        EdgeView {
            sessions: h.sessions.clone(),
            counters: h.counters.clone(),
            driver_counters: h.driver_counters.clone(),
        }
    }
}

/// Bind and serve in a task; a failure to bind is logged, not fatal (the overlay matters more
/// than its dashboard).
pub async fn spawn(
    addr: SocketAddr,
    port: ControlPort,
    edge: Option<EdgeView>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        warn!(%addr, "control endpoint on a non-loopback address: plain HTTP without authentication; never expose it to the overlay");
    }
    match bind(addr).await {
        Ok(l) => Some(tokio::spawn(serve(l, port, edge))),
        Err(e) => {
            warn!(error = %e, "control endpoint disabled");
            None
        }
    }
}

// ---- client side (overlayd status / trace) --------------------------------------------------

/// Parse `IP`, `IP:PORT` or `HOST[:PORT]` (resolved) into an address, with `default_port`.
pub fn parse_node_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    use std::net::ToSocketAddrs;
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| format!("'{s}' is not an address (IP, IP:PORT or HOST[:PORT])"))
}

/// One blocking GET: returns (status, body). Errors are one line.
pub fn http_get(
    addr: SocketAddr,
    target: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
        format!("cannot reach the control endpoint at {addr}: {e} (is the daemon running, with this --control-port?)")
    })?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send the request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("no complete answer from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed answer from {addr}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed status line from {addr}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn control_binds_loopback_unless_told_explicitly() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            control_addr(ip("0.0.0.0"), None, 7704),
            at("127.0.0.1:7704")
        );
        assert_eq!(
            control_addr(ip("10.0.0.1"), None, 7704),
            at("127.0.0.1:7704")
        );
        assert_eq!(
            control_addr(ip("127.74.0.3"), None, 7704),
            at("127.74.0.3:7704")
        );
        assert_eq!(
            control_addr(ip("10.0.0.1"), Some(ip("10.9.0.1")), 1),
            at("10.9.0.1:1")
        );
        assert_eq!(control_addr(ip("127.0.0.1"), None, 0), None);
    }

    #[test]
    fn node_addresses_take_the_default_port() {
        assert_eq!(
            parse_node_addr("127.0.0.5", 7704).unwrap(),
            "127.0.0.5:7704".parse().unwrap()
        );
        assert_eq!(
            parse_node_addr("127.0.0.5:9", 7704).unwrap(),
            "127.0.0.5:9".parse().unwrap()
        );
        assert!(parse_node_addr("not an address", 7704).is_err());
    }

    #[tokio::test]
    async fn an_edge_shows_its_counters_and_drops_by_reason() {
        use crate::net::edge_driver::{self, EdgeDriverConfig, Relay};
        let h = edge_driver::spawn(EdgeDriverConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            service: Default::default(),
            relay: Relay::Native { queue: 8 },
        })
        .await
        .unwrap();
        let view = EdgeView::of(&h);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&[0xEE, 1, 2, 3], h.local_addr())
            .await
            .unwrap();
        let mut counters = view.counters.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            while counters.borrow().datagrams_in == 0 {
                counters.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        let e = view.status(Instant::now());
        assert!(e.sessions.is_empty());
        assert_eq!(e.counters.get("datagrams_in"), Some(&1));
        assert_eq!(e.counters.values().sum::<u64>(), 2, "{:?}", e.counters);
        let status = NodeStatus {
            name: "E".into(),
            edge: Some(e),
            ..Default::default()
        };
        let text = status.render_metrics();
        let dropped: u64 = text
            .lines()
            .filter(|l| l.starts_with("overlayd_edge_datagrams_dropped_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(dropped, 1, "{text}");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn served_over_tcp_with_errors_for_bad_requests() {
        let (_status_tx, status_rx) = watch::channel(Arc::new(NodeStatus {
            name: "O1".into(),
            ..Default::default()
        }));
        let (req_tx, mut req_rx) = mpsc::channel(4);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            ControlPort {
                status: status_rx,
                requests: req_tx,
            },
            None,
        ));
        // A fake node loop: refuses traces of "nothing", answers others with two paths.
        tokio::spawn(async move {
            while let Some(ControlRequest::Trace {
                video,
                started,
                answers,
            }) = req_rx.recv().await
            {
                if video == "nothing" {
                    let _ = started.send(Err("O1 does not carry 'nothing'".into()));
                    continue;
                }
                let _ = started.send(Ok(5));
                let hop = |n: &str| crate::wire::overlay::TraceHop {
                    name: n.into(),
                    at_us: 1,
                };
                let _ = answers.send(vec![hop("O1")]).await;
                let _ = answers.send(vec![hop("O1"), hop("O2")]).await;
            }
        });
        let get = move |target: &'static str| {
            tokio::task::spawn_blocking(move || http_get(addr, target, Duration::from_secs(5)))
        };
        let (code, body) = get("/status").await.unwrap().unwrap();
        assert_eq!(code, 200);
        let s: NodeStatus = serde_json::from_str(&body).unwrap();
        assert_eq!(s.name, "O1");
        let (code, body) = get("/metrics").await.unwrap().unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("# TYPE overlayd_info gauge"), "{body}");
        let (code, body) = get("/trace?video=movie&wait_ms=200")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let t: TraceResult = serde_json::from_str(&body).unwrap();
        assert_eq!((t.id, t.paths.len()), (5, 2));
        let (code, body) = get("/trace?video=nothing").await.unwrap().unwrap();
        assert_eq!(code, 409);
        assert_eq!(body, "error: O1 does not carry 'nothing'\n");
        assert_eq!(get("/trace").await.unwrap().unwrap().0, 400);
        assert_eq!(get("/nope").await.unwrap().unwrap().0, 404);
        // Raw garbage and a non-GET method.
        for (raw, code) in [
            (&b"BLAH\r\n\r\n"[..], "400"),
            (&b"POST /status HTTP/1.1\r\n\r\n"[..], "405"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(raw).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {code} ")), "{out}");
        }
        // Every refusal above is counted, by reason, on /metrics.
        let (code, body) = get("/metrics").await.unwrap().unwrap();
        assert_eq!(code, 200);
        for (reason, n) in [
            ("malformed", 2),
            ("not_found", 1),
            ("method", 1),
            ("other", 1),
        ] {
            let line =
                format!("overlayd_control_refused_total{{node=\"O1\",reason=\"{reason}\"}} {n}\n");
            assert!(body.contains(&line), "no {line} in\n{body}");
        }
        server.abort();
    }
}
