//! The small HTTP/1.1 server the control endpoint and the live map share, on hyper.
//!
//! hyper parses the request and writes the answer; this module adds what both endpoints
//! promise: GET only, one request per connection (`Connection: close`), a request head of at
//! most [`MAX_REQUEST`] bytes (hyper answers 431 beyond it), [`REQUEST_TIMEOUT`] to send it
//! (then the connection is closed without an answer), a bound on the whole exchange, at most
//! [`MAX_CONNECTIONS`] connections at once (more wait in the listen backlog), and every refused
//! request counted by reason in [`Refusals`]. An endpoint is a [`Handler`]: it gets a decoded
//! [`Request`] and returns a [`Reply`] or an [`HttpError`], sent as one line of text.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest request head accepted (hyper's smallest read buffer is exactly this).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed to write an answer once it is ready.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A decoded GET request: path and query, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Decode hyper's request; a bad escape is a 400, a method other than GET a 405.
    fn decode<B>(req: &hyper::Request<B>) -> Result<Request, HttpError> {
        if req.method() != hyper::Method::GET {
            return Err(HttpError::new(
                405,
                format!("{} not allowed: only GET", req.method()),
            ));
        }
        let bad = || HttpError::new(400, "bad percent-encoding");
        let mut query = Vec::new();
        for pair in req.uri().query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            query.push((
                percent_decode(k).ok_or_else(bad)?,
                percent_decode(v).ok_or_else(bad)?,
            ));
        }
        Ok(Request {
            path: percent_decode(req.uri().path()).ok_or_else(bad)?,
            query,
        })
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn new(content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            content_type,
            body: body.into(),
        }
    }
}

/// Why a request was refused: status code and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: String,
}

impl HttpError {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        HttpError {
            status,
            reason: reason.into(),
        }
    }

    /// The counter a refusal with this status moves.
    fn counter(&self) -> &'static str {
        match self.status {
            400 => "malformed",
            404 => "not_found",
            405 => "method",
            408 => "timeout",
            431 => "too_large",
            _ => "other",
        }
    }
}

/// Requests refused, by reason: `too_large` (head over [`MAX_REQUEST`]), `timeout` (head not
/// sent within [`REQUEST_TIMEOUT`], or the answer not taken in time), `malformed` (not HTTP, or
/// a bad escape or parameter), `method` (not GET), `not_found`, `other` (the endpoint could not
/// answer: 409, 500, 503).
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<&'static str, u64>>);

impl Refusals {
    pub fn note(&self, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn get(&self, reason: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(reason).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

/// An endpoint: what to answer to one request.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Result<Reply, HttpError>> + Send;
}

fn response(status: u16, content_type: &'static str, body: String) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The one-line text answer of a refusal.
pub fn error_response(e: &HttpError) -> hyper::Response<Full<Bytes>> {
    response(
        e.status,
        "text/plain; charset=utf-8",
        format!("error: {}\n", e.reason.replace('\n', " ")),
    )
}

/// Serve one connection: one request, one answer, within `REQUEST_TIMEOUT + answer_within`.
/// Generic over the byte stream so that tests and the fuzzer can drive it in memory.
pub async fn serve_connection<I, H>(
    io: I,
    handler: H,
    refusals: Arc<Refusals>,
    answer_within: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let counted = refusals.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (handler, refusals) = (handler.clone(), counted.clone());
        async move {
            let answer = match Request::decode(&req) {
                Ok(r) => {
                    debug!(path = %r.path, "http request");
                    handler.handle(r).await
                }
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(match answer {
                Ok(r) => response(200, r.content_type, r.body),
                Err(e) => {
                    refusals.note(e.counter());
                    error_response(&e)
                }
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    match tokio::time::timeout(REQUEST_TIMEOUT + answer_within, conn).await {
        Ok(Ok(())) => {}
        Err(_) => refusals.note("timeout"),
        Ok(Err(e)) if e.is_parse_too_large() => refusals.note("too_large"),
        Ok(Err(e)) if e.is_parse() => refusals.note("malformed"),
        Ok(Err(e)) if e.is_timeout() => refusals.note("timeout"),
        Ok(Err(e)) => debug!(error = %e, "http connection ended early"),
    }
}

/// Accept connections and serve each (see module docs) until the task is aborted.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    refusals: Arc<Refusals>,
    answer_within: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "http connection");
                let (handler, refusals) = (handler.clone(), refusals.clone());
                tokio::spawn(async move {
                    serve_connection(stream, handler, refusals, answer_within).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `%XX` and `+` decoding; None on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `%`-encode a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers `/echo?x=V` with V; everything else is a 404.
    #[derive(Clone)]
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, req: Request) -> Result<Reply, HttpError> {
            match req.path.as_str() {
                "/echo" => Ok(Reply::new(
                    "text/plain",
                    req.param("x").unwrap_or("").to_string(),
                )),
                other => Err(HttpError::new(404, format!("no {other}"))),
            }
        }
    }

    /// Send `raw` over an in-memory connection (closing our side after it when `close`);
    /// returns what came back.
    async fn exchange(raw: &[u8], close: bool, refusals: &Arc<Refusals>) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve_connection(
            server,
            Echo,
            refusals.clone(),
            WRITE_TIMEOUT,
        ));
        client.write_all(raw).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_get_with_a_query_is_decoded_and_answered() {
        let r = Arc::new(Refusals::default());
        let out = exchange(
            b"GET /echo?x=big%20buck+bunny&y HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
            &r,
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nbig buck bunny"), "{out}");
        // Bare LF line ends (nc, hand-typed) are accepted too.
        let out = exchange(b"GET /echo?x=1 HTTP/1.0\n\n", false, &r).await;
        assert!(out.ends_with("\r\n\r\n1"), "{out}");
        assert!(r.snapshot().is_empty(), "{:?}", r.snapshot());
    }

    #[tokio::test]
    async fn refusals_get_a_status_and_one_line_and_are_counted() {
        let r = Arc::new(Refusals::default());
        let status = |out: &str| out.split(' ').nth(1).unwrap_or("").to_string();
        let out = exchange(b"POST /echo HTTP/1.1\r\n\r\n", false, &r).await;
        assert_eq!(status(&out), "405", "{out}");
        assert!(
            out.ends_with("error: POST not allowed: only GET\n"),
            "{out}"
        );
        let out = exchange(b"GET /nope HTTP/1.1\r\n\r\n", false, &r).await;
        assert_eq!(status(&out), "404", "{out}");
        let out = exchange(b"GET /echo?x=%zz HTTP/1.1\r\n\r\n", false, &r).await;
        assert_eq!(status(&out), "400", "{out}");
        let out = exchange(b"GET /echo?x=%ff HTTP/1.1\r\n\r\n", false, &r).await;
        assert_eq!(status(&out), "400", "{out}");
        let out = exchange(b"GARBAGE\r\n\r\n", false, &r).await;
        assert_eq!(status(&out), "400", "{out}");
        assert_eq!(
            (r.get("method"), r.get("not_found"), r.get("malformed")),
            (1, 1, 3),
            "{:?}",
            r.snapshot()
        );
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused_with_431_and_counted() {
        let r = Arc::new(Refusals::default());
        let mut big = b"GET /echo?x=".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 1));
        big.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let out = exchange(&big, false, &r).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert_eq!(r.get("too_large"), 1, "{:?}", r.snapshot());
        // A head just under the limit is served.
        let mut ok = b"GET /echo?x=".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_REQUEST - 200));
        ok.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert!(exchange(&ok, false, &r).await.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_off_and_counted() {
        let r = Arc::new(Refusals::default());
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(serve_connection(server, Echo, r.clone(), WRITE_TIMEOUT));
        client.write_all(b"GET /echo HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        // The head never completes: the server closes the connection without an answer.
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        let waited = started.elapsed();
        println!("slow head cut off after {waited:?}");
        assert!(waited >= REQUEST_TIMEOUT, "closed after {waited:?}");
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(r.get("timeout"), 1, "{:?}", r.snapshot());
    }

    #[tokio::test]
    async fn arbitrary_bytes_get_an_answer_or_a_close() {
        use rand::{Rng, SeedableRng};
        let r = Arc::new(Refusals::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.gen_range(0..300);
            let mut v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                v.extend_from_slice(b"\r\n\r\n");
            }
            let out = exchange(&v, true, &r).await;
            assert!(
                out.is_empty() || out.starts_with("HTTP/1.1 ") || out.starts_with("HTTP/1.0 "),
                "{out}"
            );
        }
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["movie", "a b/c?d&e=f", "clipé"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("%4"), None);
    }
}
