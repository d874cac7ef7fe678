//! Snapshots: everything a node knows, at one instant, as one serialisable value.
//!
//! [`NodeStatus::build`] reads the [`Node`]'s views at `now` (no clock read, no I/O): neighbours
//! with their state and RTT, the parent table per server, the route table per stream in the
//! course's form `{stream, origin, metric, destinations, state}`, grandfathers, per-link chunk
//! and byte counters, per-stream counters and failover gaps, and the node's counters. The
//! driver adds its own counters ([`DriverStatus`]) and an edge the state of its client service
//! ([`EdgeServiceStatus`]). The control endpoint serves the value as JSON; [`super::metrics`]
//! and [`super::tables`] render it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::overlay::node::{Node, NodeCounters};
use crate::overlay::streams::{StreamCounters, StreamState};
use crate::wire::overlay::OverlayRole;

/// Version of the JSON layout (bumped on incompatible changes).
pub const STATUS_VERSION: u32 = 1;

/// See module docs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub version: u32,
    pub name: String,
    pub role: String,
    /// The node's wall clock when the snapshot was taken, µs since the UNIX epoch.
    pub wall_us: u64,
    pub neighbours: Vec<NeighbourStatus>,
    pub parents: Vec<ParentStatus>,
    pub routes: Vec<RouteStatus>,
    pub grandfathers: Vec<GrandfatherStatus>,
    pub links: Vec<LinkStatus>,
    pub streams: Vec<StreamStatus>,
    pub counters: NodeCounters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeServiceStatus>,
}

/// One overlay neighbour: a live link (`state: "up"`) or a wanted address without one
/// (`"connecting"` or `"down"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NeighbourStatus {
    /// Empty when the address never answered.
    pub name: String,
    pub addr: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
    #[serde(default)]
    pub outbound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default)]
    pub rtt_samples: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Failed dials since the last link (down neighbours).
    #[serde(default)]
    pub dial_failures: u32,
    /// From the topology, rather than a grandfather dialled for a while.
    #[serde(default)]
    pub configured: bool,
}

/// One parent-table line: a route to `server` through `neighbour`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParentStatus {
    pub server: String,
    pub neighbour: String,
    /// EWMA one-way delay (includes the clock skew to the server: ranks parents of one server).
    pub delay_us: i64,
    pub samples: u64,
    pub age_ms: u64,
    /// Skew-free summed per-link RTT/2 to the server (ranks servers).
    pub link_sum_us: u64,
    pub videos: Vec<String>,
    /// This neighbour is our parent for some stream.
    pub active: bool,
}

/// Route metric: delay through the parent and the skew-free link sum (µs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub delay_us: Option<i64>,
    pub link_sum_us: Option<u64>,
}

/// One route-table line, in the course's form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub stream: String,
    /// The server the stream comes from (ourselves when we are its source).
    pub origin: Option<String>,
    pub metric: Metric,
    /// Children by name, then `local×N` for local consumers.
    pub destinations: Vec<String>,
    /// `source`, `streaming`, `switching`, `grandfathers` or `pending`.
    pub state: String,
    pub parent: Option<String>,
    pub switching_to: Option<String>,
    /// The second parent of a redundant stream (hitless redundancy).
    #[serde(default)]
    pub second: Option<String>,
    /// Last (epoch, seq) forwarded.
    pub last: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrandfatherStatus {
    pub stream: String,
    pub name: String,
    pub addr: String,
}

/// Chunks and payload bytes per (neighbour, stream); `@source` and `@local` are our own
/// source and local consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub neighbour: String,
    pub stream: String,
    pub chunks_in: u64,
    pub bytes_in: u64,
    pub chunks_out: u64,
    pub bytes_out: u64,
}

/// Per-stream counters, payload bytes and failover gaps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub stream: String,
    pub counters: StreamCounters,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub failover_gaps_measured: u64,
    pub last_failover_gap_ms: Option<f64>,
    pub max_failover_gap_ms: Option<f64>,
}

/// The tokio driver's own counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverStatus {
    pub handshakes_ok: u64,
    pub handshakes_refused: u64,
    /// Video chunks dropped because a link's media queue was full.
    pub media_dropped_queue_full: u64,
    /// Chunks for local consumers dropped because they fell behind.
    pub delivered_dropped_queue_full: u64,
    pub frames_undecodable: u64,
    /// Inbound handshakes refused, by reason (`auth`: wrong key or replayed handshake,
    /// `malformed`, `oversize`, `timeout`: slow or silent peer, `closed`, `io`, `hello`).
    #[serde(default)]
    pub handshakes_refused_by_reason: BTreeMap<String, u64>,
    /// Records refused on established links, by reason (`auth`: tampered or replayed,
    /// `oversize`, `truncated`, `malformed`, `undecodable`).
    #[serde(default)]
    pub frames_rejected: BTreeMap<String, u64>,
    /// Inbound connections closed at once because too many handshakes were pending (in total
    /// or from one address).
    #[serde(default)]
    pub connections_over_limit: u64,
    /// Inbound connections still in their handshake now.
    #[serde(default)]
    pub handshakes_pending: u64,
    /// Links the driver closed itself, by reason (`control_queue_full`, `write_stalled`).
    #[serde(default)]
    pub links_closed: BTreeMap<String, u64>,
    /// Video chunks dropped because that neighbour's media queue was full, by neighbour.
    #[serde(default)]
    pub media_dropped_by_neighbour: BTreeMap<String, u64>,
}

/// An edge's client service: its clients with a lease and its counters (what a client
/// sees of an edge is `crate::service::client::EdgeStatus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeServiceStatus {
    pub sessions: Vec<SessionStatus>,
    /// The service's counters by name (see `crate::service::edge::EdgeCounters`).
    pub counters: BTreeMap<String, u64>,
    /// Video datagrams the relay dropped (queue full, send errors).
    pub video_dropped: u64,
}

/// One client with a lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub client: String,
    pub video: String,
    pub stream: u32,
    pub lease_left_ms: u64,
    pub datagrams_sent: u64,
}

/// The edge counters that are datagrams dropped, by reason (label values of the metric).
pub const EDGE_DROP_REASONS: &[&str] = &[
    "rate_limited",
    "rate_table_full",
    "malformed_truncated",
    "malformed_unknown_tag",
    "malformed_bad_value",
    "malformed_trailing",
    "malformed_other",
    "unexpected_kind",
    "cookie_rejected",
    "unknown_video",
    "busy",
    "unknown_stream",
];

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn role_name(r: OverlayRole) -> String {
    format!("{r}")
}

fn state_name(s: StreamState) -> &'static str {
    match s {
        StreamState::Source => "source",
        StreamState::Streaming => "streaming",
        StreamState::Switching => "switching",
        StreamState::Grandfathers => "grandfathers",
        StreamState::Pending => "pending",
    }
}

impl NodeStatus {
    /// Read `node`'s views at `now` (see module docs). Driver and edge parts are left empty.
    pub fn build(node: &Node, now: Instant) -> NodeStatus {
        let routes = node.route_table();
        let parents_in_use: Vec<&str> = routes.iter().filter_map(|r| r.parent.as_deref()).collect();

        let mut neighbours: Vec<NeighbourStatus> = node
            .neighbours()
            .neighbours()
            .into_iter()
            .map(|n| NeighbourStatus {
                name: n.name.clone(),
                addr: n.listen_addr.to_string(),
                state: "up".into(),
                role: Some(role_name(n.role)),
                link: Some(n.link.0),
                outbound: n.outbound,
                rtt_us: n.rtt.map(|r| r.as_micros() as u64),
                rtt_samples: n.rtt_samples,
                up_for_ms: Some(ms(now.saturating_duration_since(n.up_since))),
                last_heard_ms: Some(ms(now.saturating_duration_since(n.last_heard))),
                dial_failures: 0,
                configured: true,
            })
            .collect();
        neighbours.sort_by(|a, b| a.name.cmp(&b.name));
        for u in node.neighbours().unlinked() {
            neighbours.push(NeighbourStatus {
                name: u.name.unwrap_or_default(),
                addr: u.addr.to_string(),
                state: if u.connecting { "connecting" } else { "down" }.into(),
                dial_failures: u.failures,
                configured: u.configured,
                ..Default::default()
            });
        }

        let parents = node
            .parent_table(now)
            .into_iter()
            .map(|p| ParentStatus {
                active: parents_in_use.contains(&p.neighbour.as_str()),
                server: p.server,
                neighbour: p.neighbour,
                delay_us: p.delay_us,
                samples: p.samples,
                age_ms: ms(p.age),
                link_sum_us: p.link_sum_us,
                videos: p.videos,
            })
            .collect();

        let mut grandfathers = Vec::new();
        for r in &routes {
            for g in node.grandfathers(&r.stream) {
                grandfathers.push(GrandfatherStatus {
                    stream: r.stream.clone(),
                    name: g.name.clone(),
                    addr: g.addr.to_string(),
                });
            }
        }
        let route_status = routes
            .into_iter()
            .map(|r| RouteStatus {
                origin: r
                    .origin
                    .or_else(|| (r.state == StreamState::Source).then(|| node.name().to_string())),
                metric: Metric {
                    delay_us: r.delay_us,
                    link_sum_us: r.link_sum_us,
                },
                destinations: r.destinations,
                state: state_name(r.state).into(),
                parent: r.parent,
                switching_to: r.switching_to,
                second: r.second,
                last: r.last,
                stream: r.stream,
            })
            .collect();

        let mut links = Vec::new();
        let mut bytes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (neighbour, per) in node.link_traffic() {
            for (stream, t) in per {
                links.push(LinkStatus {
                    neighbour: neighbour.clone(),
                    stream: stream.clone(),
                    chunks_in: t.chunks_in,
                    bytes_in: t.bytes_in,
                    chunks_out: t.chunks_out,
                    bytes_out: t.bytes_out,
                });
                let b = bytes.entry(stream.as_str()).or_default();
                b.0 += t.bytes_in;
                b.1 += t.bytes_out;
            }
        }
        let gaps = node.failover_gaps();
        let streams = node
            .all_stream_counters()
            .iter()
            .map(|(stream, c)| {
                let (bytes_in, bytes_out) = bytes.get(stream.as_str()).copied().unwrap_or_default();
                let g = gaps.get(stream);
                StreamStatus {
                    stream: stream.clone(),
                    counters: c.clone(),
                    bytes_in,
                    bytes_out,
                    failover_gaps_measured: g.map_or(0, |g| g.measured),
                    last_failover_gap_ms: g.and_then(|g| g.last_gap).map(|d| d.as_secs_f64() * 1e3),
                    max_failover_gap_ms: g.and_then(|g| g.max_gap).map(|d| d.as_secs_f64() * 1e3),
                }
            })
            .collect();

        NodeStatus {
            version: STATUS_VERSION,
            name: node.name().to_string(),
            role: role_name(node.config().role),
            wall_us: node.wall_us(now),
            neighbours,
            parents,
            routes: route_status,
            grandfathers,
            links,
            streams,
            counters: node.counters().clone(),
            driver: None,
            edge: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::overlay::NodeConfig;

    #[test]
    fn snapshot_of_a_fresh_node_lists_its_configured_neighbours_as_down() {
        let t0 = Instant::now();
        let cfg = NodeConfig::new(
            "O1",
            OverlayRole::Node,
            7701,
            vec!["127.0.0.2:7701".parse().unwrap()],
        );
        let node = Node::new(cfg, t0);
        let s = NodeStatus::build(&node, t0);
        assert_eq!(s.name, "O1");
        assert_eq!(s.role, "node");
        assert_eq!(s.neighbours.len(), 1);
        assert_eq!(s.neighbours[0].addr, "127.0.0.2:7701");
        assert_ne!(s.neighbours[0].state, "up");
        // JSON round trip.
        let json = serde_json::to_string(&s).unwrap();
        let back: NodeStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let tables = s.render_tables();
        assert!(tables.contains("Neighbours:"), "{tables}");
        assert!(tables.contains("127.0.0.2:7701"), "{tables}");
        assert!(tables.contains("Route table:\n  (none)"), "{tables}");
    }

    /// A status with a bit of everything (and a name that needs escaping), for the renderers'
    /// tests.
    pub(crate) fn sample_status() -> NodeStatus {
        NodeStatus {
            version: STATUS_VERSION,
            name: "O\"1".into(),
            role: "edge".into(),
            streams: vec![StreamStatus {
                stream: "movie".into(),
                counters: StreamCounters {
                    chunks_in: 42,
                    duplicates: 3,
                    failovers: 1,
                    ..Default::default()
                },
                bytes_in: 42 * 1316,
                bytes_out: 0,
                failover_gaps_measured: 1,
                last_failover_gap_ms: Some(250.5),
                max_failover_gap_ms: Some(250.5),
            }],
            links: vec![LinkStatus {
                neighbour: "S1".into(),
                stream: "movie".into(),
                chunks_in: 42,
                bytes_in: 42 * 1316,
                chunks_out: 0,
                bytes_out: 0,
            }],
            driver: Some(DriverStatus {
                handshakes_refused: 2,
                ..Default::default()
            }),
            edge: Some(EdgeServiceStatus {
                sessions: vec![SessionStatus {
                    client: "127.0.0.9:7703".into(),
                    video: "movie".into(),
                    stream: 1,
                    lease_left_ms: 2500,
                    datagrams_sent: 10,
                }],
                counters: [("rate_limited".to_string(), 5), ("probes".to_string(), 7)]
                    .into_iter()
                    .collect(),
                video_dropped: 0,
            }),
            ..Default::default()
        }
    }
}
