//! The device ↔ bootstrapper protocol: one JSON request line, one JSON reply line, over TCP.
//!
//! This module owns the message types and their encode/decode. It is plain newline-delimited JSON
//! so a person can talk to a bootstrapper with `nc`:
//!
//! ```text
//! $ echo '{"name":"O1","version":1}' | nc 10.0.0.10 7700
//! {"ok":true,"name":"O1","entry":{"edge":false,"neighbours":["10.0.1.10","10.0.2.2"]}}
//! $ echo '{"name":"X","version":1}' | nc 10.0.0.10 7700
//! {"ok":false,"code":"unknown_name","error":"unknown device name 'X' (known: C1, O1, S1)"}
//! ```
//!
//! `entry` is the device's object from the topology file, extra fields included (as in the
//! report, where the bootstrapper answers with the original JSON object). Key order inside it is
//! not preserved (JSON objects are unordered). Error replies carry a machine-readable `code`
//! next to the human `error` text, so a device can tell "you are not in the file" (do not retry)
//! from other failures without parsing prose.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::topology::{name_list, validate_name};

/// Version of this protocol, sent in every request.
pub const PROTOCOL_VERSION: u32 = 1;

/// TCP port of the bootstrapper when an address gives none.
pub const DEFAULT_BOOTSTRAP_PORT: u16 = 7700;

/// Longest request line, newline included.
pub const MAX_REQUEST_LEN: usize = 4 * 1024;

/// Longest reply line, newline included.
pub const MAX_REPLY_LEN: usize = 1024 * 1024;

/// How many known names an "unknown device name" error lists.
pub const MAX_NAMES_IN_ERROR: usize = 20;

/// A device asking for its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub name: String,
    /// Defaults to 1 when absent, so `{"name":"O1"}` typed by hand works.
    #[serde(default = "default_version")]
    pub version: u32,
}

fn default_version() -> u32 {
    PROTOCOL_VERSION
}

impl Request {
    pub fn new(name: impl Into<String>) -> Self {
        Request {
            name: name.into(),
            version: PROTOCOL_VERSION,
        }
    }
}

/// Why the bootstrapper refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The name is not in the topology file. Retrying does not help until the file changes.
    UnknownName,
    /// The request line was not a valid request.
    BadRequest,
    /// The request's protocol version is not spoken by this bootstrapper.
    UnsupportedVersion,
    /// The bootstrapper could not produce a reply (e.g. an entry too large to send).
    Internal,
    /// A code from a newer bootstrapper.
    #[serde(other)]
    Other,
}

/// The bootstrapper's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Found { name: String, entry: Value },
    Error { code: ErrorCode, message: String },
}

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

/// The reply as it appears on the wire (flat, with `ok`).
#[derive(Serialize, Deserialize)]
struct WireReply {
    ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A line that is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("line too long: {len} bytes (at most {max})")]
    TooLong { len: usize, max: usize },
    #[error("line is not UTF-8 text")]
    NotUtf8,
    #[error("empty line")]
    Empty,
    /// Not JSON, or JSON of the wrong shape.
    #[error("{0}")]
    Invalid(String),
    #[error("invalid device name: {0}")]
    InvalidName(String),
}

/// Strips the line terminator ("\n" or "\r\n", as `nc -C` or telnet send) after the length check.
fn line_text(line: &[u8], max: usize) -> Result<&str, WireError> {
    if line.len() > max {
        return Err(WireError::TooLong {
            len: line.len(),
            max,
        });
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| WireError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(WireError::Empty);
    }
    Ok(text)
}

fn to_line(v: &impl Serialize, max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = serde_json::to_vec(v).map_err(|e| WireError::Invalid(e.to_string()))?;
    out.push(b'\n');
    if out.len() > max {
        return Err(WireError::TooLong {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// The request line, newline included.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, WireError> {
    validate_name(&req.name).map_err(WireError::InvalidName)?;
    to_line(req, MAX_REQUEST_LEN)
}

/// Decodes one request line (with or without its terminator).
pub fn decode_request(line: &[u8]) -> Result<Request, WireError> {
    let text = line_text(line, MAX_REQUEST_LEN)?;
    let req: Request = serde_json::from_str(text).map_err(|e| {
        WireError::Invalid(format!(
            "expected one JSON line like {{\"name\":\"O1\",\"version\":{PROTOCOL_VERSION}}} ({e})"
        ))
    })?;
    validate_name(&req.name).map_err(WireError::InvalidName)?;
    Ok(req)
}

/// The reply line, newline included; `TooLong` when it would exceed [`MAX_REPLY_LEN`].
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, WireError> {
    let wire = match reply {
        Reply::Found { name, entry } => WireReply {
            ok: Some(true),
            name: Some(name.clone()),
            entry: Some(entry.clone()),
            code: None,
            error: None,
        },
        Reply::Error { code, message } => WireReply {
            ok: Some(false),
            name: None,
            entry: None,
            code: Some(*code),
            error: Some(message.clone()),
        },
    };
    to_line(&wire, MAX_REPLY_LEN)
}

/// Decodes one reply line (with or without its terminator).
pub fn decode_reply(line: &[u8]) -> Result<Reply, WireError> {
    let text = line_text(line, MAX_REPLY_LEN)?;
    let wire: WireReply = serde_json::from_str(text)
        .map_err(|e| WireError::Invalid(format!("not a bootstrap reply ({e})")))?;
    match wire {
        WireReply {
            ok: Some(true),
            name: Some(name),
            entry: Some(entry @ Value::Object(_)),
            ..
        } => Ok(Reply::Found { name, entry }),
        WireReply { ok: Some(true), .. } => Err(WireError::Invalid(
            "reply has \"ok\": true but no \"name\" or no \"entry\" object".into(),
        )),
        WireReply {
            ok: Some(false),
            error: Some(message),
            code,
            ..
        } => Ok(Reply::Error {
            code: code.unwrap_or(ErrorCode::Other),
            message,
        }),
        WireReply {
            ok: Some(false), ..
        } => Err(WireError::Invalid(
            "reply has \"ok\": false but no \"error\" text".into(),
        )),
        WireReply { ok: None, .. } => Err(WireError::Invalid("reply has no \"ok\" field".into())),
    }
}

/// The text of an "unknown device name" error: the name and up to [`MAX_NAMES_IN_ERROR`] of the
/// known names, so a typo is obvious from the device's own log.
pub fn unknown_name_message<S: AsRef<str>>(name: &str, known: &[S]) -> String {
    let name = name.escape_debug();
    if known.is_empty() {
        format!("unknown device name '{name}' (the topology has no devices)")
    } else {
        format!(
            "unknown device name '{name}' (known: {})",
            name_list(known, MAX_NAMES_IN_ERROR)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_golden() {
        assert_eq!(
            encode_request(&Request::new("O1")).unwrap(),
            b"{\"name\":\"O1\",\"version\":1}\n"
        );
        assert_eq!(
            decode_request(b"{\"name\":\"O1\",\"version\":1}\n").unwrap(),
            Request::new("O1")
        );
    }

    #[test]
    fn request_hand_typed_forms() {
        // nc -C / telnet send CRLF; a missing version means 1; no newline at EOF is fine.
        for line in [
            &b"{\"name\":\"O1\",\"version\":1}\r\n"[..],
            b"{\"name\":\"O1\"}\n",
            b"  {\"name\": \"O1\", \"version\": 1}  ",
            b"{\"version\":1,\"name\":\"O1\",\"extra\":true}",
        ] {
            assert_eq!(
                decode_request(line).unwrap(),
                Request::new("O1"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn request_rejections() {
        assert_eq!(decode_request(b"\n"), Err(WireError::Empty));
        assert_eq!(decode_request(b"\xff\n"), Err(WireError::NotUtf8));
        assert!(matches!(
            decode_request(b"O1\n"),
            Err(WireError::Invalid(m)) if m.contains("expected one JSON line like")
        ));
        assert!(matches!(
            decode_request(b"{\"version\":1}"),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            decode_request(b"{\"name\":\"\"}"),
            Err(WireError::InvalidName(_))
        ));
        let long = format!("{{\"name\":\"{}\"}}\n", "x".repeat(MAX_REQUEST_LEN));
        assert_eq!(
            decode_request(long.as_bytes()),
            Err(WireError::TooLong {
                len: long.len(),
                max: MAX_REQUEST_LEN
            })
        );
        assert!(encode_request(&Request::new("")).is_err());
    }

    #[test]
    fn reply_golden() {
        let found = Reply::Found {
            name: "O1".into(),
            entry: json!({"neighbours": ["10.0.1.10", "10.0.2.2"], "edge": false}),
        };
        assert_eq!(
            String::from_utf8(encode_reply(&found).unwrap()).unwrap(),
            "{\"ok\":true,\"name\":\"O1\",\"entry\":{\"edge\":false,\"neighbours\":[\"10.0.1.10\",\"10.0.2.2\"]}}\n"
        );
        let err = Reply::error(
            ErrorCode::UnknownName,
            unknown_name_message("X", &["C1", "O1", "S1"]),
        );
        assert_eq!(
            String::from_utf8(encode_reply(&err).unwrap()).unwrap(),
            "{\"ok\":false,\"code\":\"unknown_name\",\"error\":\"unknown device name 'X' (known: C1, O1, S1)\"}\n"
        );
    }

    #[test]
    fn reply_round_trip_keeps_extra_fields() {
        let reply = Reply::Found {
            name: "C1".into(),
            entry: json!({"neighbours": ["10.0.3.1"], "colour": "red", "meta": {"rack": 3}}),
        };
        assert_eq!(decode_reply(&encode_reply(&reply).unwrap()).unwrap(), reply);
        for code in [
            ErrorCode::UnknownName,
            ErrorCode::BadRequest,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Internal,
        ] {
            let reply = Reply::error(code, "why");
            assert_eq!(decode_reply(&encode_reply(&reply).unwrap()).unwrap(), reply);
        }
    }

    #[test]
    fn reply_from_a_newer_or_older_bootstrapper() {
        // An unknown code and a missing code both decode.
        assert_eq!(
            decode_reply(b"{\"ok\":false,\"code\":\"overloaded\",\"error\":\"busy\"}").unwrap(),
            Reply::error(ErrorCode::Other, "busy")
        );
        assert_eq!(
            decode_reply(b"{\"ok\":false,\"error\":\"nope\"}").unwrap(),
            Reply::error(ErrorCode::Other, "nope")
        );
    }

    #[test]
    fn reply_rejections() {
        for line in [
            &b"{\"ok\":true,\"name\":\"O1\"}"[..],
            b"{\"ok\":true,\"name\":\"O1\",\"entry\":[1]}",
            b"{\"ok\":false}",
            b"{\"name\":\"O1\"}",
            b"HTTP/1.1 400 Bad Request",
        ] {
            assert!(
                matches!(decode_reply(line), Err(WireError::Invalid(_))),
                "{line:?}"
            );
        }
        let big = Reply::Found {
            name: "O1".into(),
            entry: json!({"neighbours": [], "blob": "x".repeat(MAX_REPLY_LEN)}),
        };
        assert!(matches!(encode_reply(&big), Err(WireError::TooLong { .. })));
        let line = vec![b' '; MAX_REPLY_LEN + 1];
        assert!(matches!(
            decode_reply(&line),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn unknown_name_lists_at_most_twenty() {
        let names: Vec<String> = (0..25).map(|i| format!("O{i:02}")).collect();
        let m = unknown_name_message("X", &names);
        assert!(
            m.starts_with("unknown device name 'X' (known: O00, O01,"),
            "{m}"
        );
        assert!(m.ends_with("O19 and 5 more)"), "{m}");
        assert_eq!(
            unknown_name_message::<&str>("X", &[]),
            "unknown device name 'X' (the topology has no devices)"
        );
        assert!(unknown_name_message::<&str>("a\"\n", &[]).contains("'a\\\"\\n'"));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn request_round_trip(name in "[A-Za-z0-9_.-]{1,40}", version: u32) {
            let req = Request { name, version };
            proptest::prop_assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
        }

        #[test]
        fn reply_round_trip(name in "\\PC{1,20}", key in "\\PC{0,10}", val in "\\PC{0,30}") {
            let reply = Reply::Found { name, entry: json!({ key: val }) };
            proptest::prop_assert_eq!(decode_reply(&encode_reply(&reply).unwrap()).unwrap(), reply);
        }
    }
}
