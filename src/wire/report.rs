//! The daemon → bootstrapper state report that feeds the live map.
//!
//! This module owns the report message and its codec. A report is one compact JSON object
//! carried in one sealed record of the overlay transport (same PSK handshake and AES-GCM
//! records as overlay links, on the bootstrapper's report port), so only key holders can
//! draw on the map. It is derived from a daemon's `NodeStatus`: who it is, which neighbours
//! are up or down, and per stream its parent, children, server, failover count and last
//! failover gap. Decoding checks sizes and names, so a key holder with a bug cannot blow up
//! the bootstrapper's memory or the page.

use serde::{Deserialize, Serialize};

use crate::topology::validate_name;

/// Version of the report layout; reports of another version are refused.
pub const REPORT_VERSION: u32 = 1;

/// TCP port of the report listener: the bootstrapper's port plus this.
pub const REPORT_PORT_OFFSET: u16 = 10;

/// Largest encoded report accepted.
pub const MAX_REPORT_LEN: usize = 64 * 1024;

/// Most neighbours, streams and children per stream a report may list.
pub const MAX_ITEMS: usize = 256;

/// One daemon's state, as sent every report interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// Device name, as in the topology file.
    pub name: String,
    /// `server`, `node` or `edge`.
    pub role: String,
    /// Report number since the daemon started (a restart starts again at 0).
    pub seq: u64,
    /// The overlay listening address (`ip:port`), so topology addresses map to names.
    pub listen: String,
    pub neighbours: Vec<ReportNeighbour>,
    pub streams: Vec<ReportStream>,
    /// An edge's client sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ReportClient>,
}

/// A client an edge is streaming to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportClient {
    /// The client's UDP address (`ip:port`).
    pub addr: String,
    pub video: String,
}

/// A neighbour as the reporter sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportNeighbour {
    /// Empty when the address never answered.
    pub name: String,
    pub addr: String,
    /// `up`, `connecting` or `down`.
    pub state: String,
}

/// A stream the reporter carries (or sources, or waits for).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportStream {
    pub video: String,
    /// The server it comes from (the reporter itself when it is the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Neighbours this stream is forwarded to.
    #[serde(default)]
    pub children: Vec<String>,
    /// Local consumers (an edge's clients, a test consumer).
    #[serde(default)]
    pub local: u32,
    /// `source`, `streaming`, `switching`, `grandfathers` or `pending`.
    pub state: String,
    #[serde(default)]
    pub failovers: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gap_ms: Option<f64>,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("report is not valid JSON: {0}")]
    Json(String),
    #[error("report version {0} is not spoken here (expected {REPORT_VERSION})")]
    Version(u32),
    #[error("report has a bad name: {0}")]
    Name(String),
    #[error("report lists more than {MAX_ITEMS} {0}")]
    TooMany(&'static str),
}

/// Encode a report as one compact JSON object.
pub fn encode_report(r: &Report) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(r).unwrap_or_default()
}

/// Decode and check a report.
pub fn decode_report(bytes: &[u8]) -> Result<Report, ReportError> {
    if bytes.len() > MAX_REPORT_LEN {
        return Err(ReportError::TooLarge {
            len: bytes.len(),
            max: MAX_REPORT_LEN,
        });
    }
    let r: Report = serde_json::from_slice(bytes).map_err(|e| ReportError::Json(e.to_string()))?;
    if r.version != REPORT_VERSION {
        return Err(ReportError::Version(r.version));
    }
    validate_name(&r.name).map_err(ReportError::Name)?;
    if r.neighbours.len() > MAX_ITEMS {
        return Err(ReportError::TooMany("neighbours"));
    }
    if r.streams.len() > MAX_ITEMS {
        return Err(ReportError::TooMany("streams"));
    }
    if r.clients.len() > MAX_ITEMS {
        return Err(ReportError::TooMany("clients"));
    }
    if r.streams.iter().any(|s| s.children.len() > MAX_ITEMS) {
        return Err(ReportError::TooMany("children"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            version: REPORT_VERSION,
            name: "O1".into(),
            role: "node".into(),
            seq: 7,
            listen: "127.0.0.2:7701".into(),
            neighbours: vec![
                ReportNeighbour {
                    name: "S1".into(),
                    addr: "127.0.0.1:7701".into(),
                    state: "up".into(),
                },
                ReportNeighbour {
                    name: String::new(),
                    addr: "127.0.0.9:7701".into(),
                    state: "down".into(),
                },
            ],
            streams: vec![ReportStream {
                video: "alpha".into(),
                server: Some("S1".into()),
                parent: Some("S1".into()),
                children: vec!["O3".into()],
                local: 1,
                state: "streaming".into(),
                failovers: 2,
                last_gap_ms: Some(812.5),
            }],
            clients: vec![ReportClient {
                addr: "127.0.0.31:7703".into(),
                video: "alpha".into(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = encode_report(&r);
        assert_eq!(decode_report(&bytes).unwrap(), r);
        // Compact: no pretty-printing whitespace.
        assert!(!bytes.contains(&b'\n'));
    }

    #[test]
    fn refuses_bad_reports() {
        assert!(matches!(
            decode_report(b"{not json"),
            Err(ReportError::Json(_))
        ));
        let mut r = sample();
        r.version = 99;
        assert_eq!(
            decode_report(&encode_report(&r)),
            Err(ReportError::Version(99))
        );
        let mut r = sample();
        r.name = String::new();
        assert!(matches!(
            decode_report(&encode_report(&r)),
            Err(ReportError::Name(_))
        ));
        let mut r = sample();
        r.streams[0].children = vec!["X".into(); MAX_ITEMS + 1];
        assert_eq!(
            decode_report(&encode_report(&r)),
            Err(ReportError::TooMany("children"))
        );
        let big = vec![b' '; MAX_REPORT_LEN + 1];
        assert!(matches!(
            decode_report(&big),
            Err(ReportError::TooLarge { .. })
        ));
    }
}
