//! The bootstrap client: how every device learns its own topology entry at startup.
//!
//! This module owns the device side of the bootstrap exchange: connect to the bootstrapper, send
//! one request line, read one reply line, validate the entry with the same rules as the
//! topology file ([`Device::from_json`]). Devices may start before the bootstrapper (or before
//! the emulated network has routes), so anything that looks transient (refused, reset, timed
//! out, closed without a reply) is retried with exponential backoff and jitter. An explicit
//! refusal, such as an unknown device name, is final: retrying would only hide a typo.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::topology::{validate_name, Device, DeviceError, NeighbourAddr};
use crate::wire::bootstrap::{
    decode_reply, encode_request, ErrorCode, Reply, Request, MAX_REPLY_LEN,
};

pub use crate::wire::bootstrap::DEFAULT_BOOTSTRAP_PORT;

/// Shortest delay between two attempts.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(10);

/// How a device keeps trying to reach the bootstrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry; it doubles after each failure.
    pub initial: Duration,
    /// Upper bound of the delay between attempts.
    pub max: Duration,
    /// Total time after which to stop trying; `None` tries forever.
    pub give_up_after: Option<Duration>,
    /// Limit of one attempt (connect, send, reply).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            give_up_after: None,
            attempt_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay after `failures` failed attempts (1 = the first), before jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The backoff with "equal jitter": uniformly between half of it and all of it, so devices
    /// started together (a whole emulated network) do not retry in lockstep.
    fn jittered(&self, failures: u32) -> Duration {
        let base = self.backoff(failures);
        // A floor, so a zero `initial` cannot turn retrying into a busy loop.
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
            .max(MIN_RETRY_DELAY)
    }
}

/// A device's entry as served by the bootstrapper.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapEntry {
    /// The entry, validated like a topology file entry.
    pub device: Device,
    /// The entry as received, extra fields included.
    pub raw: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapClientError {
    /// The bootstrapper is up but the name is not in its topology file.
    #[error("bootstrapper {bootstrapper} does not know device '{name}': {message}")]
    UnknownName {
        name: String,
        bootstrapper: SocketAddr,
        message: String,
    },
    /// Any other explicit refusal.
    #[error("bootstrapper {bootstrapper} refused the request for '{name}': {message}")]
    Refused {
        name: String,
        bootstrapper: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    #[error("bootstrapper {bootstrapper} sent an invalid entry: {source}")]
    InvalidEntry {
        bootstrapper: SocketAddr,
        #[source]
        source: DeviceError,
    },
    /// The peer answered with something that is not a bootstrap reply.
    #[error("{bootstrapper} is not a working bootstrapper: {reason}")]
    Protocol {
        bootstrapper: SocketAddr,
        reason: String,
    },
    #[error("invalid device name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    #[error(
        "gave up reaching bootstrapper {bootstrapper} after {} ms and {attempts} attempts: {last_error}",
        after.as_millis()
    )]
    GaveUp {
        bootstrapper: SocketAddr,
        after: Duration,
        attempts: u32,
        last_error: String,
    },
}

/// A `--bootstrap` argument that is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bootstrapper address '{input}': {reason}")]
pub struct BootstrapAddrError {
    pub input: String,
    pub reason: String,
}

/// Parses `IP`, `IP:PORT`, a bare IPv6 address or `[IPv6]:PORT`; `default_port` fills a missing
/// port.
pub fn parse_bootstrap_addr(s: &str, default_port: u16) -> Result<SocketAddr, BootstrapAddrError> {
    let err = |reason: String| BootstrapAddrError {
        input: s.escape_debug().to_string(),
        reason,
    };
    let addr: NeighbourAddr = s.parse().map_err(|e| err(format!("{e}")))?;
    if addr.ip.is_unspecified() {
        return Err(err("the unspecified address cannot be connected to".into()));
    }
    if addr.port.is_none() && default_port == 0 {
        return Err(err("no port given".into()));
    }
    Ok(addr.to_socket_addr(default_port))
}

/// Why one attempt failed.
enum Failure {
    /// Worth retrying; the text says what happened ("connection refused").
    Transient(String),
    Final(BootstrapClientError),
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "timed out".into(),
        K::BrokenPipe | K::NotConnected => "connection closed".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// Fetches `name`'s entry from the bootstrapper at `bootstrap`, retrying per `retry`.
pub async fn fetch_entry(
    bootstrap: SocketAddr,
    name: &str,
    retry: RetryPolicy,
) -> Result<BootstrapEntry, BootstrapClientError> {
    validate_name(name).map_err(|reason| BootstrapClientError::InvalidName {
        name: name.escape_debug().to_string(),
        reason,
    })?;
    let line =
        encode_request(&Request::new(name)).map_err(|e| BootstrapClientError::InvalidName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        let remaining = retry
            .give_up_after
            .map(|g| g.saturating_sub(started.elapsed()));
        let budget = remaining.map_or(retry.attempt_timeout, |r| r.min(retry.attempt_timeout));
        let why = match tokio::time::timeout(budget, attempt(bootstrap, &line)).await {
            Ok(Ok(reply)) => return interpret(reply, bootstrap, name),
            Ok(Err(Failure::Final(e))) => return Err(e),
            Ok(Err(Failure::Transient(why))) => why,
            Err(_) => format!("no reply within {} ms", budget.as_millis()),
        };
        failures += 1;
        let mut delay = retry.jittered(failures);
        if let Some(limit) = retry.give_up_after {
            let elapsed = started.elapsed();
            if elapsed >= limit {
                return Err(BootstrapClientError::GaveUp {
                    bootstrapper: bootstrap,
                    after: elapsed,
                    attempts: failures,
                    last_error: why,
                });
            }
            // The last retry happens right at the limit rather than never.
            delay = delay.min(limit - elapsed);
        }
        info!(
            "bootstrapper {bootstrap} not reachable ({why}), retrying in {} ms",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

/// One connection: send the request, read one reply line.
async fn attempt(bootstrap: SocketAddr, line: &[u8]) -> Result<Reply, Failure> {
    let transient = |e: std::io::Error| Failure::Transient(describe_io(&e));
    let mut stream = TcpStream::connect(bootstrap).await.map_err(transient)?;
    stream.write_all(line).await.map_err(transient)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(transient)?;
        if n == 0 {
            // Closed without a (complete) reply: a bootstrapper at its connection limit does
            // this, and so does one being restarted.
            return Err(Failure::Transient(if buf.is_empty() {
                "closed the connection without replying".into()
            } else {
                "closed the connection in the middle of the reply".into()
            }));
        }
        let searched = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        let end = buf[searched..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| searched + i + 1);
        let too_long = match end {
            Some(end) => end > MAX_REPLY_LEN,
            None => buf.len() >= MAX_REPLY_LEN,
        };
        if too_long {
            return Err(Failure::Final(BootstrapClientError::Protocol {
                bootstrapper: bootstrap,
                reason: format!("reply longer than {MAX_REPLY_LEN} bytes"),
            }));
        }
        if let Some(end) = end {
            debug!("bootstrapper {bootstrap} replied with {end} bytes");
            return decode_reply(&buf[..end]).map_err(|e| {
                Failure::Final(BootstrapClientError::Protocol {
                    bootstrapper: bootstrap,
                    reason: e.to_string(),
                })
            });
        }
    }
}

fn interpret(
    reply: Reply,
    bootstrap: SocketAddr,
    name: &str,
) -> Result<BootstrapEntry, BootstrapClientError> {
    match reply {
        Reply::Found {
            name: replied,
            entry,
        } => {
            if replied != name {
                return Err(BootstrapClientError::Protocol {
                    bootstrapper: bootstrap,
                    reason: format!(
                        "asked for '{name}', got the entry of '{}'",
                        replied.escape_debug()
                    ),
                });
            }
            let device = Device::from_json(name, &entry).map_err(|source| {
                BootstrapClientError::InvalidEntry {
                    bootstrapper: bootstrap,
                    source,
                }
            })?;
            Ok(BootstrapEntry { device, raw: entry })
        }
        Reply::Error {
            code: ErrorCode::UnknownName,
            message,
        } => Err(BootstrapClientError::UnknownName {
            name: name.to_string(),
            bootstrapper: bootstrap,
            message,
        }),
        Reply::Error { code, message } => Err(BootstrapClientError::Refused {
            name: name.to_string(),
            bootstrapper: bootstrap,
            code,
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::bootstrapper::{bind, BootstrapperConfig};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::net::TcpListener;

    const TOPO: &str = r#"{
        "S1": {"neighbours": ["10.0.0.2"]},
        "O1": {"neighbours": ["10.0.0.1", "10.0.0.3:7000"], "edge": true, "colour": "red"}
    }"#;

    fn quick() -> RetryPolicy {
        // Logs show up for failing tests only.
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            give_up_after: Some(Duration::from_secs(10)),
            attempt_timeout: Duration::from_secs(2),
        }
    }

    fn topology_file(tag: &str) -> (PathBuf, PathBuf) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "overlayd-bootstrap-client-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("topology.json");
        std::fs::write(&file, TOPO).unwrap();
        (dir, file)
    }

    /// A loopback address with nothing listening (bound once, then released).
    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    async fn serve(file: &std::path::Path, addr: SocketAddr) -> tokio::sync::oneshot::Sender<()> {
        let b = bind(BootstrapperConfig::new(file, addr)).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(b.run(async {
            let _ = rx.await;
        }));
        tx
    }

    #[tokio::test]
    async fn fetches_and_validates_the_entry() {
        let (dir, file) = topology_file("fetch");
        let addr = free_addr();
        let stop = serve(&file, addr).await;
        let e = fetch_entry(addr, "O1", quick()).await.unwrap();
        assert_eq!(e.device.name, "O1");
        assert!(e.device.edge);
        assert_eq!(
            e.device.neighbours[1].to_socket_addr(1),
            "10.0.0.3:7000".parse().unwrap()
        );
        assert_eq!(e.raw["colour"], "red");
        assert_eq!(e.device.raw, e.raw);
        let _ = stop.send(());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn client_started_before_the_bootstrapper_succeeds() {
        let (dir, file) = topology_file("early");
        let addr = free_addr();
        let started = Instant::now();
        let client = tokio::spawn(async move { fetch_entry(addr, "S1", quick()).await });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!client.is_finished(), "still retrying");
        let stop = serve(&file, addr).await;
        let e = tokio::time::timeout(Duration::from_secs(5), client)
            .await
            .expect("done soon after the bootstrapper is up")
            .unwrap()
            .unwrap();
        assert_eq!(e.device.name, "S1");
        assert!(started.elapsed() >= Duration::from_millis(600));
        let _ = stop.send(());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn unknown_name_is_not_retried() {
        let (dir, file) = topology_file("unknown");
        let addr = free_addr();
        let stop = serve(&file, addr).await;
        let started = Instant::now();
        let err = fetch_entry(addr, "X", RetryPolicy::default())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(err, BootstrapClientError::UnknownName { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "bootstrapper {addr} does not know device 'X': unknown device name 'X' (known: O1, S1)"
            )
        );
        let _ = stop.send(());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn give_up_after_is_respected() {
        let addr = free_addr();
        let policy = RetryPolicy {
            give_up_after: Some(Duration::from_millis(700)),
            ..quick()
        };
        let started = Instant::now();
        let err = fetch_entry(addr, "S1", policy).await.unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_millis(2000), "{took:?}");
        match &err {
            BootstrapClientError::GaveUp {
                attempts,
                last_error,
                ..
            } => {
                assert!(*attempts >= 3, "{attempts}");
                assert_eq!(last_error, "connection refused");
            }
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with(&format!("gave up reaching bootstrapper {addr} after ")));
    }

    #[tokio::test]
    async fn silent_server_times_out_per_attempt() {
        // Accepts, reads, never answers: each attempt ends at attempt_timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            give_up_after: Some(Duration::from_millis(800)),
            ..quick()
        };
        let started = Instant::now();
        let err = fetch_entry(addr, "S1", policy).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(2500));
        assert!(
            matches!(&err, BootstrapClientError::GaveUp { last_error, .. } if last_error.starts_with("no reply within")),
            "{err:?}"
        );
        server.abort();
    }

    /// A fake bootstrapper that answers each connection with the next canned bytes
    /// (closing at once after writing them).
    async fn fake(replies: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for reply in replies {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn closed_without_reply_is_retried() {
        // Like a bootstrapper at its connection limit: close, close, then answer.
        let addr = fake(vec![
            b"",
            b"{\"ok\":true,\"na",
            b"{\"ok\":true,\"name\":\"S1\",\"entry\":{\"neighbours\":[]}}\n",
        ])
        .await;
        let e = fetch_entry(addr, "S1", quick()).await.unwrap();
        assert_eq!(e.device.name, "S1");
    }

    #[tokio::test]
    async fn invalid_entry_and_garbage_are_final() {
        let addr = fake(vec![
            b"{\"ok\":true,\"name\":\"S1\",\"entry\":{\"neighbours\":[\"nope\"]}}\n",
        ])
        .await;
        let err = fetch_entry(addr, "S1", quick()).await.unwrap_err();
        assert!(
            matches!(err, BootstrapClientError::InvalidEntry { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("neighbours[0]: 'nope'"), "{err}");

        let addr = fake(vec![b"SSH-2.0-OpenSSH_9.6\r\n"]).await;
        let err = fetch_entry(addr, "S1", quick()).await.unwrap_err();
        assert!(
            matches!(err, BootstrapClientError::Protocol { .. }),
            "{err:?}"
        );

        let addr = fake(vec![
            b"{\"ok\":true,\"name\":\"O1\",\"entry\":{\"neighbours\":[]}}\n",
        ])
        .await;
        let err = fetch_entry(addr, "S1", quick()).await.unwrap_err();
        assert!(err.to_string().contains("got the entry of 'O1'"), "{err}");

        let addr = fake(vec![
            b"{\"ok\":false,\"code\":\"unsupported_version\",\"error\":\"no\"}\n",
        ])
        .await;
        let err = fetch_entry(addr, "S1", quick()).await.unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapClientError::Refused {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_connecting() {
        let err = fetch_entry(free_addr(), "", quick()).await.unwrap_err();
        assert!(matches!(err, BootstrapClientError::InvalidName { .. }));
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (1..=8).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(5));
        for n in 1..10 {
            let d = p.jittered(n);
            assert!(d >= p.backoff(n) / 2 && d <= p.backoff(n), "{d:?}");
        }
        let zero = RetryPolicy {
            initial: Duration::ZERO,
            ..p
        };
        assert_eq!(zero.jittered(1), MIN_RETRY_DELAY);
    }

    #[test]
    fn bootstrap_address_forms() {
        let p = |s| parse_bootstrap_addr(s, DEFAULT_BOOTSTRAP_PORT);
        assert_eq!(p("10.0.0.10").unwrap(), "10.0.0.10:7700".parse().unwrap());
        assert_eq!(
            p("10.0.0.10:8000").unwrap(),
            "10.0.0.10:8000".parse().unwrap()
        );
        assert_eq!(p("::1").unwrap(), "[::1]:7700".parse().unwrap());
        assert_eq!(p("[::1]:8000").unwrap(), "[::1]:8000".parse().unwrap());
        assert_eq!(p("[fe80::1]").unwrap(), "[fe80::1]:7700".parse().unwrap());
        let e = p("bootstrapper.local").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid bootstrapper address 'bootstrapper.local': "),
            "{e}"
        );
        assert!(p("0.0.0.0").is_err());
        assert!(p("10.0.0.1:70000").is_err());
    }
}
