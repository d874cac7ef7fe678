//! The bootstrapper role: serves each device its entry of the topology file over TCP.
//!
//! This module owns the bootstrapper's server loop, its per-connection handling and the hot
//! reload of the topology file. Every connection carries one request line and gets one reply
//! line (see [`crate::wire::bootstrap`]); a task per connection, capped in number, each bounded
//! in size and time, so a slow, broken or hostile client never holds up the others.
//!
//! The file is re-read every `reload_interval` and swapped in atomically when it parses; a broken
//! edit keeps the last good version in service and is reported once. Requests always see one
//! complete version of the file, never a mix.
//!
//! With a map configured ([`BootstrapperConfig::map`]) it also runs the live map
//! ([`crate::net::map_server`]): a report listener for the daemons' authenticated state reports
//! and an HTTP page that draws the overlay from the topology and those reports.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::net::map_server::{self, MapConfig, MapListeners};
use crate::topology::{self, Severity, Topology, TopologyError};
use crate::wire::bootstrap::{
    decode_request, encode_reply, unknown_name_message, ErrorCode, Reply, WireError, MAX_REPLY_LEN,
    MAX_REQUEST_LEN, PROTOCOL_VERSION,
};

pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// After replying, how long to wait for the client to close before closing ourselves. Closing a
/// socket with unread input makes the kernel send a reset, which can destroy the reply in flight.
const LINGER: Duration = Duration::from_secs(1);
/// How much unread input is drained during [`LINGER`] at most.
const LINGER_DRAIN: usize = 64 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Lower bound of the reload interval.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);
/// How long in-flight connections may finish after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct BootstrapperConfig {
    pub topology: PathBuf,
    pub bind: SocketAddr,
    /// How often the topology file is re-read.
    pub reload_interval: Duration,
    /// A client must send its whole request within this time (and take the reply within it).
    pub request_timeout: Duration,
    /// Connections beyond this many at once are closed at once.
    pub max_connections: usize,
    /// The live map (page + report listener); `None`: off.
    pub map: Option<MapConfig>,
}

impl BootstrapperConfig {
    /// A configuration with the default intervals and limits.
    pub fn new(topology: impl Into<PathBuf>, bind: SocketAddr) -> Self {
        BootstrapperConfig {
            topology: topology.into(),
            bind,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            map: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapperError {
    /// The topology file does not load at startup (later, a broken file only warns).
    #[error("{0}")]
    Topology(#[from] TopologyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound bootstrapper, ready to [`run`](Bootstrapper::run).
pub struct Bootstrapper {
    cfg: BootstrapperConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    current: watch::Sender<Arc<Topology>>,
    watcher: Watcher,
    map: Option<MapListeners>,
}

/// Loads the topology (fatal when broken) and binds the listening socket.
pub async fn bind(cfg: BootstrapperConfig) -> Result<Bootstrapper, BootstrapperError> {
    let file = cfg.topology.display().to_string();
    let bytes = tokio::fs::read(&cfg.topology)
        .await
        .map_err(|source| TopologyError::Io {
            file: file.clone(),
            source,
        })?;
    let topology = topology::parse_bytes(&bytes, &file)?;
    info!(
        "topology {file}: {} devices ({})",
        topology.len(),
        topology::name_list(&topology.names().collect::<Vec<_>>(), 20)
    );
    log_findings(&file, &topology);

    let listener =
        crate::net::bind::tcp_listener(cfg.bind).map_err(|source| BootstrapperError::Bind {
            addr: cfg.bind,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| BootstrapperError::Bind {
            addr: cfg.bind,
            source,
        })?;
    info!("bootstrapper listening on {local_addr}");
    let map = match &cfg.map {
        Some(m) => Some(
            map_server::bind(m)
                .await
                .map_err(|(addr, source)| BootstrapperError::Bind { addr, source })?,
        ),
        None => None,
    };
    let (current, _) = watch::channel(Arc::new(topology));
    let watcher = Watcher {
        path: cfg.topology.clone(),
        file,
        applied: bytes,
        pending_broken: None,
        reported_broken: None,
        last_read_error: None,
    };
    Ok(Bootstrapper {
        cfg,
        listener,
        local_addr,
        current,
        watcher,
        map,
    })
}

impl Bootstrapper {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live map's page and report addresses, when the map is on.
    pub fn map_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        let m = self.map.as_ref()?;
        Some((m.http_addr()?, m.report_addr()?))
    }

    /// The topology currently served.
    pub fn topology(&self) -> Arc<Topology> {
        self.current.borrow().clone()
    }

    /// Serves requests and reloads the file until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Bootstrapper {
            cfg,
            listener,
            local_addr,
            current,
            watcher,
            map,
        } = self;
        let rx = current.subscribe();
        let map = match (map, cfg.map.clone()) {
            (Some(listeners), Some(map_cfg)) => Some(tokio::spawn(map_server::serve(
                listeners,
                map_cfg,
                current.subscribe(),
            ))),
            _ => None,
        };
        // tokio's interval panics on a zero period; a few milliseconds is "as fast as possible".
        let interval = cfg.reload_interval.max(MIN_RELOAD_INTERVAL);
        let reload = tokio::spawn(watcher.run(current, interval));
        let permits = Arc::new(Semaphore::new(
            cfg.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut conns = JoinSet::new();
        let mut rejected = RejectLog::default();
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let rx = rx.clone();
                            let timeout = cfg.request_timeout;
                            conns.spawn(async move {
                                serve_connection(stream, peer, rx, timeout).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            // Dropping the stream closes it: no reply, the client retries later.
                            drop(stream);
                            rejected.note(peer, cfg.max_connections);
                        }
                    },
                    Err(e) => {
                        warn!("bootstrapper on {local_addr}: accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("bootstrapper connection task panicked: {e}");
                        }
                    }
                }
            }
        }

        info!("bootstrapper on {local_addr} shutting down");
        drop(listener);
        reload.abort();
        if let Some(m) = map {
            m.abort();
        }
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            conns.abort_all();
        }
    }
}

/// Logs refused connections at most once a second, so a flood does not flood the log too.
#[derive(Default)]
struct RejectLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RejectLog {
    fn note(&mut self, peer: SocketAddr, max: usize) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        let more = std::mem::take(&mut self.suppressed);
        let more = if more > 0 {
            format!(" (and {more} more refused since the last report)")
        } else {
            String::new()
        };
        warn!("bootstrapper at its limit of {max} connections: closed the connection from {peer}{more}");
        self.last = Some(now);
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

enum Incoming {
    Line(Vec<u8>),
    TooLong,
    Closed,
}

/// Reads one request line (at most [`MAX_REQUEST_LEN`] bytes, newline included). A request ended
/// by the client closing its side instead of a newline is accepted (`printf ... | nc -N`).
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Incoming> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Incoming::Closed
            } else {
                Incoming::Line(buf)
            });
        }
        let searched = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + i + 1;
            if end > MAX_REQUEST_LEN {
                return Ok(Incoming::TooLong);
            }
            buf.truncate(end);
            return Ok(Incoming::Line(buf));
        }
        if buf.len() >= MAX_REQUEST_LEN {
            return Ok(Incoming::TooLong);
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    topology: watch::Receiver<Arc<Topology>>,
    timeout: Duration,
) {
    let reply = match tokio::time::timeout(timeout, read_request(&mut stream)).await {
        Err(_) => {
            info!("bootstrap request from {peer}: no complete request within {timeout:?}, closing");
            Reply::error(
                ErrorCode::BadRequest,
                format!("no complete request line within {timeout:?}"),
            )
        }
        Ok(Err(e)) => {
            debug!("bootstrap connection from {peer}: read failed: {e}");
            return;
        }
        Ok(Ok(Incoming::Closed)) => {
            debug!("bootstrap connection from {peer}: closed without a request");
            return;
        }
        Ok(Ok(Incoming::TooLong)) => {
            info!("bootstrap request from {peer}: longer than {MAX_REQUEST_LEN} bytes, closing");
            Reply::error(
                ErrorCode::BadRequest,
                format!("request line longer than {MAX_REQUEST_LEN} bytes"),
            )
        }
        Ok(Ok(Incoming::Line(line))) => {
            // The newest good version, taken once: a reload mid-request cannot mix versions.
            let current = topology.borrow().clone();
            answer(&line, peer, &current)
        }
    };

    let bytes = encode_reply(&reply).unwrap_or_else(|e| {
        let name = match &reply {
            Reply::Found { name, .. } => name.as_str(),
            Reply::Error { .. } => "?",
        };
        warn!("bootstrap request from {peer}: cannot send the entry for '{name}': {e}");
        let fallback = Reply::error(
            ErrorCode::Internal,
            format!("the entry for '{name}' is too large to send (at most {MAX_REPLY_LEN} bytes)"),
        );
        encode_reply(&fallback).unwrap_or_default()
    });
    let send = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!("bootstrap reply to {peer} failed: {e}");
            return;
        }
        Err(_) => {
            debug!("bootstrap reply to {peer}: not taken within {timeout:?}");
            return;
        }
    }
    // Wait (briefly, boundedly) for the client to close first, so our close does not reset
    // a reply it has not read yet.
    let linger = async {
        let mut drained = 0;
        let mut sink = [0u8; 4096];
        while drained < LINGER_DRAIN {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER.min(timeout), linger).await;
}

/// The reply to one request line, with its log line.
fn answer(line: &[u8], peer: SocketAddr, topology: &Topology) -> Reply {
    let req = match decode_request(line) {
        Ok(req) => req,
        Err(e) => {
            let what = match &e {
                WireError::TooLong { .. } => "oversized request",
                _ => "bad request",
            };
            info!("bootstrap request from {peer}: {what}: {e}");
            return Reply::error(ErrorCode::BadRequest, format!("{what}: {e}"));
        }
    };
    if req.version != PROTOCOL_VERSION {
        info!(
            "bootstrap request from {peer} for '{}': unsupported protocol version {}",
            req.name, req.version
        );
        return Reply::error(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this bootstrapper speaks version {PROTOCOL_VERSION})",
                req.version
            ),
        );
    }
    match topology.get(&req.name) {
        Some(device) => {
            let n = device.neighbours.len();
            info!(
                "bootstrap request from {peer} for '{}': found ({}, {n} neighbour{})",
                req.name,
                device.role,
                if n == 1 { "" } else { "s" }
            );
            Reply::Found {
                name: req.name,
                entry: device.raw.clone(),
            }
        }
        None => {
            info!(
                "bootstrap request from {peer} for '{}': unknown device name",
                req.name
            );
            let known: Vec<&str> = topology.names().collect();
            Reply::error(
                ErrorCode::UnknownName,
                unknown_name_message(&req.name, &known),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hot reload

fn log_findings(file: &str, t: &Topology) {
    for f in topology::check(t) {
        match f.severity {
            Severity::Error => error!("topology {file}: {f}"),
            Severity::Warning => warn!("topology {file}: {f}"),
        }
    }
}

/// Polls the topology file. The whole content is read on every poll (topology files are small):
/// comparing content rather than only mtime and length also catches an edit within the same
/// timestamp tick that keeps the length.
struct Watcher {
    path: PathBuf,
    file: String,
    /// The content of the version in service.
    applied: Vec<u8>,
    /// Broken content seen once; it is reported only if the next poll still sees it, so an editor
    /// caught halfway through writing the file does not cause a spurious warning.
    pending_broken: Option<Vec<u8>>,
    /// Broken content already reported (reported once per distinct content).
    reported_broken: Option<Vec<u8>>,
    last_read_error: Option<String>,
}

impl Watcher {
    async fn run(mut self, current: watch::Sender<Arc<Topology>>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate and the file was just loaded
        loop {
            tick.tick().await;
            let _ = self.poll(&current).await;
        }
    }

    async fn poll(&mut self, current: &watch::Sender<Arc<Topology>>) -> Poll {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                let msg = e.to_string();
                if self.last_read_error.as_ref() == Some(&msg) {
                    return Poll::Quiet;
                }
                warn!(
                    "cannot read topology {}: {msg}; still serving the last good version",
                    self.file
                );
                self.last_read_error = Some(msg);
                return Poll::Warned;
            }
        };
        if self.last_read_error.take().is_some() {
            info!("topology {} is readable again", self.file);
        }
        if bytes == self.applied {
            // Reverted: a later save of the same broken content is news again.
            self.pending_broken = None;
            self.reported_broken = None;
            return Poll::Quiet;
        }
        if self.reported_broken.as_ref() == Some(&bytes) {
            return Poll::Quiet;
        }
        match topology::parse_bytes(&bytes, &self.file) {
            Ok(new) => {
                let old = current.borrow().clone();
                log_reload(&self.file, &old, &new);
                log_findings(&self.file, &new);
                current.send_replace(Arc::new(new));
                self.applied = bytes;
                self.pending_broken = None;
                self.reported_broken = None;
                Poll::Reloaded
            }
            Err(e) => {
                if self.pending_broken.as_ref() == Some(&bytes) {
                    warn!("topology not reloaded, still serving the last good version: {e}");
                    self.reported_broken = self.pending_broken.take();
                    Poll::Warned
                } else {
                    self.pending_broken = Some(bytes);
                    Poll::Quiet
                }
            }
        }
    }
}

/// What one poll did (for tests: how often a broken file is reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// Nothing new, or nothing worth saying yet.
    Quiet,
    Reloaded,
    /// Logged a warning: a broken file or an unreadable one.
    Warned,
}

fn log_reload(file: &str, old: &Topology, new: &Topology) {
    let added: Vec<&str> = new.names().filter(|n| old.get(n).is_none()).collect();
    let removed: Vec<&str> = old.names().filter(|n| new.get(n).is_none()).collect();
    let changed: Vec<&str> = new
        .devices()
        .filter(|d| old.get(&d.name).is_some_and(|o| o.raw != d.raw))
        .map(|d| d.name.as_str())
        .collect();
    let mut parts = Vec::new();
    for (label, names) in [
        ("added", &added),
        ("removed", &removed),
        ("changed", &changed),
    ] {
        if !names.is_empty() {
            parts.push(format!("{label} {}", topology::name_list(names, 20)));
        }
    }
    if parts.is_empty() {
        parts.push("no device entry changed".into());
    }
    info!(
        "topology {file} reloaded ({} devices): {}",
        new.len(),
        parts.join("; ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bootstrap::decode_reply;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const TOPO: &str = r#"{
        "S1": {"neighbours": ["10.0.0.2"]},
        "O1": {"neighbours": ["10.0.0.1", "10.0.0.3"], "edge": false, "colour": "red"},
        "C1": {"neighbours": ["10.0.0.3"]}
    }"#;

    /// A unique directory per test, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "overlayd-bootstrapper-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Running {
        _dir: TempDir,
        file: PathBuf,
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    impl Running {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(5), &mut self.task)
                .await
                .expect("run() returns after shutdown")
                .unwrap();
        }
    }

    async fn start_with(
        tag: &str,
        text: &str,
        tune: impl FnOnce(&mut BootstrapperConfig),
    ) -> Running {
        // Logs show up for failing tests only.
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = TempDir::new(tag);
        let file = dir.0.join("topology.json");
        std::fs::write(&file, text).unwrap();
        let mut cfg = BootstrapperConfig::new(&file, "127.0.0.1:0".parse().unwrap());
        cfg.reload_interval = Duration::from_millis(30);
        cfg.request_timeout = Duration::from_millis(500);
        tune(&mut cfg);
        let b = bind(cfg).await.unwrap();
        let addr = b.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(b.run(async {
            let _ = rx.await;
        }));
        Running {
            _dir: dir,
            file,
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn start(tag: &str, text: &str) -> Running {
        start_with(tag, text, |_| {}).await
    }

    /// Sends `line` and reads until the server closes.
    async fn ask_raw(addr: SocketAddr, line: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(line).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("reply within 5 s")
            .unwrap();
        out
    }

    async fn ask(addr: SocketAddr, name: &str) -> Reply {
        let line = format!("{{\"name\":\"{name}\",\"version\":1}}\n");
        decode_reply(&ask_raw(addr, line.as_bytes()).await).unwrap()
    }

    fn entry(reply: &Reply) -> &serde_json::Value {
        match reply {
            Reply::Found { entry, .. } => entry,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn known_name_gets_its_original_entry() {
        let b = start("known", TOPO).await;
        let reply = ask(b.addr, "O1").await;
        assert_eq!(
            reply,
            Reply::Found {
                name: "O1".into(),
                entry: serde_json::json!({
                    "neighbours": ["10.0.0.1", "10.0.0.3"], "edge": false, "colour": "red"
                }),
            }
        );
        b.stop().await;
    }

    #[tokio::test]
    async fn unknown_name_gets_an_explicit_error() {
        let b = start("unknown", TOPO).await;
        let raw = ask_raw(b.addr, b"{\"name\":\"O9\",\"version\":1}\n").await;
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "{\"ok\":false,\"code\":\"unknown_name\",\"error\":\"unknown device name 'O9' (known: C1, O1, S1)\"}\n"
        );
        b.stop().await;
    }

    #[tokio::test]
    async fn hand_typed_requests_work() {
        let b = start("nc", TOPO).await;
        // No version, CRLF (nc -C).
        let r = decode_reply(&ask_raw(b.addr, b"{\"name\":\"S1\"}\r\n").await).unwrap();
        assert_eq!(entry(&r)["neighbours"][0], "10.0.0.2");
        // No newline, the client half-closes instead (printf ... | nc -N).
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(b"{\"name\":\"C1\"}").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert!(matches!(decode_reply(&out).unwrap(), Reply::Found { name, .. } if name == "C1"));
        b.stop().await;
    }

    #[tokio::test]
    async fn unsupported_version_is_refused() {
        let b = start("version", TOPO).await;
        let r = decode_reply(&ask_raw(b.addr, b"{\"name\":\"S1\",\"version\":2}\n").await).unwrap();
        assert!(
            matches!(
                r,
                Reply::Error {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }
            ),
            "{r:?}"
        );
        b.stop().await;
    }

    #[tokio::test]
    async fn hundred_concurrent_clients_are_all_answered() {
        let b = start("concurrent", TOPO).await;
        let mut set = JoinSet::new();
        for i in 0..100 {
            let addr = b.addr;
            let name = ["S1", "O1", "C1"][i % 3];
            set.spawn(async move { (name, ask(addr, name).await) });
        }
        let mut answered = 0;
        while let Some(res) = set.join_next().await {
            let (name, reply) = res.unwrap();
            assert!(
                matches!(&reply, Reply::Found { name: n, .. } if n == name),
                "{reply:?}"
            );
            answered += 1;
        }
        assert_eq!(answered, 100);
        b.stop().await;
    }

    #[tokio::test]
    async fn garbage_gets_an_error_and_the_server_goes_on() {
        let b = start("garbage", TOPO).await;
        for junk in [
            &b"hello\n"[..],
            b"\xff\xfe\n",
            b"{\"name\": 5}\n",
            b"\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            let r = decode_reply(&ask_raw(b.addr, junk).await).unwrap();
            match r {
                Reply::Error { code, message } => {
                    assert_eq!(code, ErrorCode::BadRequest);
                    assert!(message.starts_with("bad request"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(ask(b.addr, "O1").await, Reply::Found { .. }));
        b.stop().await;
    }

    #[tokio::test]
    async fn oversize_line_closes_the_connection() {
        let b = start("oversize", TOPO).await;
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        let big = vec![b'a'; 1024 * 1024];
        let started = Instant::now();
        // The server stops reading after 4 KiB; our write may fail with a reset once it closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&big)).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "connection closed");
        if !out.is_empty() {
            let r = decode_reply(&out).unwrap();
            assert!(
                matches!(r, Reply::Error { code: ErrorCode::BadRequest, ref message } if message.contains("longer than 4096")),
                "{r:?}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(matches!(ask(b.addr, "S1").await, Reply::Found { .. }));
        b.stop().await;
    }

    #[tokio::test]
    async fn half_open_client_is_dropped_and_others_are_served_meanwhile() {
        let b = start_with("halfopen", TOPO, |c| {
            c.request_timeout = Duration::from_secs(2)
        })
        .await;
        let mut idle = TcpStream::connect(b.addr).await.unwrap();
        let started = Instant::now();
        // Others are served at once while the idle client holds its connection.
        for _ in 0..5 {
            assert!(matches!(ask(b.addr, "O1").await, Reply::Found { .. }));
        }
        assert!(started.elapsed() < Duration::from_millis(1500));
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut out))
            .await
            .expect("idle connection closed by the server")
            .unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1900), "{waited:?}");
        let r = decode_reply(&out).unwrap();
        assert!(
            matches!(r, Reply::Error { code: ErrorCode::BadRequest, ref message } if message.contains("no complete request")),
            "{r:?}"
        );
        b.stop().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let b = start_with("cap", TOPO, |c| {
            c.max_connections = 2;
            c.request_timeout = Duration::from_secs(3);
        })
        .await;
        let _idle1 = TcpStream::connect(b.addr).await.unwrap();
        let _idle2 = TcpStream::connect(b.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(b.addr).await.unwrap();
        let mut out = Vec::new();
        let started = Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut out)).await;
        assert!(
            res.is_ok(),
            "closed at once, long before the request timeout"
        );
        assert!(out.is_empty());
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(_idle1);
        drop(_idle2);
        // Once the idle connections are gone, service resumes.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut s = TcpStream::connect(b.addr).await.unwrap();
            s.write_all(b"{\"name\":\"S1\"}\n").await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            if !out.is_empty() {
                assert!(matches!(decode_reply(&out).unwrap(), Reply::Found { .. }));
                break;
            }
            assert!(Instant::now() < deadline, "service resumed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b.stop().await;
    }

    /// Asks until `ok` holds for the reply or 3 s pass.
    async fn eventually(addr: SocketAddr, name: &str, ok: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = ask(addr, name).await;
            if ok(&r) || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn hot_reload_keeps_the_last_good_version() {
        let b = start("reload", TOPO).await;
        assert!(matches!(
            ask(b.addr, "O2").await,
            Reply::Error {
                code: ErrorCode::UnknownName,
                ..
            }
        ));

        // A good edit: O2 appears, O1 changes.
        let v2 = r#"{"S1": {"neighbours": ["10.0.0.2"]},
                     "O1": {"neighbours": ["10.0.0.9"]},
                     "O2": {"neighbours": ["10.0.0.1"], "edge": true}}"#;
        std::fs::write(&b.file, v2).unwrap();
        let r = eventually(b.addr, "O2", |r| matches!(r, Reply::Found { .. })).await;
        assert_eq!(entry(&r)["edge"], true);
        assert_eq!(entry(&ask(b.addr, "O1").await)["neighbours"][0], "10.0.0.9");

        // A broken edit: the last good version stays in service.
        std::fs::write(
            &b.file,
            "{\"S1\": {\"neighbours\": [\"10.0.0.2\"]},\n \"O2\": {",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(entry(&ask(b.addr, "O2").await)["edge"], true);
        // Also a schema error (valid JSON, bad address).
        std::fs::write(&b.file, r#"{"O2": {"neighbours": ["nope"]}}"#).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(entry(&ask(b.addr, "O2").await)["edge"], true);
        assert!(matches!(ask(b.addr, "S1").await, Reply::Found { .. }));

        // Fixed again: the new content is served.
        std::fs::write(&b.file, r#"{"O2": {"neighbours": ["10.0.0.7"]}}"#).unwrap();
        let r = eventually(
            b.addr,
            "O2",
            |r| matches!(r, Reply::Found { entry, .. } if entry["neighbours"][0] == "10.0.0.7"),
        )
        .await;
        assert_eq!(entry(&r)["neighbours"][0], "10.0.0.7");
        assert!(matches!(
            ask(b.addr, "S1").await,
            Reply::Error {
                code: ErrorCode::UnknownName,
                ..
            }
        ));

        // A deleted file also keeps the last good version.
        std::fs::remove_file(&b.file).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(ask(b.addr, "O2").await, Reply::Found { .. }));
        b.stop().await;
    }

    /// Writes (or removes) the file, then polls three times.
    async fn poll_after(
        w: &mut Watcher,
        current: &watch::Sender<Arc<Topology>>,
        file: &std::path::Path,
        text: Option<&str>,
    ) -> [Poll; 3] {
        match text {
            Some(t) => std::fs::write(file, t).unwrap(),
            None => std::fs::remove_file(file).unwrap(),
        }
        [
            w.poll(current).await,
            w.poll(current).await,
            w.poll(current).await,
        ]
    }

    #[tokio::test]
    async fn broken_content_is_reported_once_per_distinct_content() {
        let dir = TempDir::new("watcher");
        let file = dir.0.join("t.json");
        std::fs::write(&file, TOPO).unwrap();
        let b = bind(BootstrapperConfig::new(
            &file,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .await
        .unwrap();
        let Bootstrapper {
            current,
            mut watcher,
            ..
        } = b;
        use Poll::{Quiet, Reloaded, Warned};
        let good = r#"{"S1": {"neighbours": []}}"#;
        // What the file becomes (None: removed), then what the next three polls do.
        let steps = [
            (Some(TOPO), [Quiet, Quiet, Quiet]),
            // Broken: seen once (maybe an editor mid-write), reported on the next poll, then
            // quiet.
            (Some("{\"S1\": "), [Quiet, Warned, Quiet]),
            // Another broken content is a new report.
            (Some("{\"S1\": [}"), [Quiet, Warned, Quiet]),
            // Back to the version in service: nothing to say.
            (Some(TOPO), [Quiet, Quiet, Quiet]),
            // The same broken content as before is reported again after a good phase.
            (Some("{\"S1\": [}"), [Quiet, Warned, Quiet]),
            (Some(good), [Reloaded, Quiet, Quiet]),
            // A removed file is reported at once; the version in service stays.
            (None, [Warned, Quiet, Quiet]),
            (Some(good), [Quiet, Quiet, Quiet]),
        ];
        for (i, (text, expect)) in steps.into_iter().enumerate() {
            let got = poll_after(&mut watcher, &current, &file, text).await;
            assert_eq!(got, expect, "step {i}: {text:?}");
        }
        // The good version with one device is in service (the first one had three).
        assert_eq!(current.borrow().len(), 1);
    }

    #[tokio::test]
    async fn broken_file_at_startup_is_fatal_with_its_position() {
        let dir = TempDir::new("broken");
        let file = dir.0.join("t.json");
        std::fs::write(&file, "{\n  \"O1\": {\"neighbours\": [\"10.0.0\"]}\n}\n").unwrap();
        let cfg = BootstrapperConfig::new(&file, "127.0.0.1:0".parse().unwrap());
        let err = bind(cfg).await.err().expect("a broken file is fatal");
        assert!(matches!(err, BootstrapperError::Topology(_)));
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2:25: ", file.display())),
            "{err}"
        );

        let cfg =
            BootstrapperConfig::new(dir.0.join("missing.json"), "127.0.0.1:0".parse().unwrap());
        let err = bind(cfg).await.err().expect("a missing file is fatal");
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    #[tokio::test]
    async fn degenerate_settings_do_not_panic() {
        let b = start_with("zero", TOPO, |c| {
            c.reload_interval = Duration::ZERO;
            c.max_connections = usize::MAX;
        })
        .await;
        assert!(matches!(ask(b.addr, "S1").await, Reply::Found { .. }));
        b.stop().await;
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let b = start("inuse", TOPO).await;
        let cfg = BootstrapperConfig::new(&b.file, b.addr);
        let err = bind(cfg).await.err().expect("address in use");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {}", b.addr)),
            "{err}"
        );
        b.stop().await;
    }
}
