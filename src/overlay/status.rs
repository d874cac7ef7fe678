//! The status snapshot: everything a node knows, at one instant, as one serialisable value.
//!
//! [`NodeStatus::build`] reads the [`Node`]'s views at `now` (no clock read, no I/O): neighbours
//! with their state and RTT, the parent table per server, the route table per stream in the
//! course's form `{stream, origin, metric, destinations, state}`, grandfathers, per-link chunk
//! and byte counters, per-stream counters and failover gaps, and the node's counters. The
//! driver adds its own counters ([`DriverStatus`]) and an edge its client sessions
//! ([`EdgeStatus`]). The same value is served as JSON, rendered as Prometheus text
//! ([`NodeStatus::render_metrics`]) and printed as tables by `overlayd status`
//! ([`NodeStatus::render_tables`]); traces are printed as trees by [`render_trace`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::node::{Node, NodeCounters};
use super::streams::{StreamCounters, StreamState};
use crate::wire::overlay::{OverlayRole, TraceHop};

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
    pub edge: Option<EdgeStatus>,
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

/// An edge's client service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeStatus {
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

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render_metrics(&self) -> String {
        let mut m = Metrics::default();
        let node = [("node", self.name.as_str())];
        m.gauge(
            "overlayd_info",
            "Static information about this daemon",
            &[("node", &self.name), ("role", &self.role)],
            1.0,
        );
        for n in &self.neighbours {
            let l = [
                ("node", self.name.as_str()),
                ("neighbour", n.addr.as_str()),
                ("name", n.name.as_str()),
            ];
            m.gauge(
                "overlayd_neighbour_up",
                "1 when the overlay link to the neighbour is up",
                &l,
                if n.state == "up" { 1.0 } else { 0.0 },
            );
            if let Some(rtt) = n.rtt_us {
                m.gauge(
                    "overlayd_neighbour_rtt_seconds",
                    "Smoothed keepalive round-trip time",
                    &l,
                    rtt as f64 / 1e6,
                );
            }
        }
        for p in &self.parents {
            let l = [
                ("node", self.name.as_str()),
                ("server", p.server.as_str()),
                ("neighbour", p.neighbour.as_str()),
            ];
            m.gauge(
                "overlayd_route_delay_seconds",
                "EWMA one-way flood delay to the server through the neighbour (includes clock skew)",
                &l,
                p.delay_us as f64 / 1e6,
            );
            m.gauge(
                "overlayd_route_link_sum_seconds",
                "Skew-free summed per-link RTT/2 to the server through the neighbour",
                &l,
                p.link_sum_us as f64 / 1e6,
            );
        }
        for s in &self.streams {
            let l = [("node", self.name.as_str()), ("stream", s.stream.as_str())];
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&s.counters) {
                for (field, v) in fields {
                    let help = stream_counter_help(&field);
                    m.counter(
                        &format!("overlayd_stream_{field}_total"),
                        help,
                        &l,
                        v.as_u64().unwrap_or(0) as f64,
                    );
                }
            }
            m.counter(
                "overlayd_stream_bytes_in_total",
                "Payload bytes received (or produced by our source)",
                &l,
                s.bytes_in as f64,
            );
            m.counter(
                "overlayd_stream_bytes_out_total",
                "Payload bytes sent to children and local consumers",
                &l,
                s.bytes_out as f64,
            );
            m.counter(
                "overlayd_stream_failover_gaps_measured_total",
                "Failovers whose gap was measured (a chunk came from the new parent)",
                &l,
                s.failover_gaps_measured as f64,
            );
            if let Some(g) = s.last_failover_gap_ms {
                m.gauge(
                    "overlayd_stream_last_failover_gap_seconds",
                    "Time between the last chunk before the latest failover and the first after it",
                    &l,
                    g / 1e3,
                );
            }
            if let Some(g) = s.max_failover_gap_ms {
                m.gauge(
                    "overlayd_stream_max_failover_gap_seconds",
                    "Longest failover gap measured",
                    &l,
                    g / 1e3,
                );
            }
        }
        for r in &self.routes {
            let l = [
                ("node", self.name.as_str()),
                ("stream", r.stream.as_str()),
                ("parent", r.parent.as_deref().unwrap_or("")),
                ("state", r.state.as_str()),
            ];
            m.gauge(
                "overlayd_route_destinations",
                "Children and local consumers of the stream",
                &l,
                r.destinations.len() as f64,
            );
        }
        for k in &self.links {
            for (dir, chunks, bytes) in [
                ("in", k.chunks_in, k.bytes_in),
                ("out", k.chunks_out, k.bytes_out),
            ] {
                let l = [
                    ("node", self.name.as_str()),
                    ("neighbour", k.neighbour.as_str()),
                    ("stream", k.stream.as_str()),
                    ("direction", dir),
                ];
                m.counter(
                    "overlayd_link_chunks_total",
                    "Video chunks per neighbour, stream and direction",
                    &l,
                    chunks as f64,
                );
                m.counter(
                    "overlayd_link_bytes_total",
                    "Video payload bytes per neighbour, stream and direction",
                    &l,
                    bytes as f64,
                );
            }
        }
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.counters) {
            for (field, v) in fields {
                m.counter(
                    &format!("overlayd_node_{field}_total"),
                    "Node event counter",
                    &node,
                    v.as_u64().unwrap_or(0) as f64,
                );
            }
        }
        if let Some(d) = &self.driver {
            for (result, v) in [("ok", d.handshakes_ok), ("refused", d.handshakes_refused)] {
                m.counter(
                    "overlayd_handshakes_total",
                    "Overlay link handshakes by result (refused: wrong key, garbage, timeout)",
                    &[("node", &self.name), ("result", result)],
                    v as f64,
                );
            }
            for (reason, v) in [
                ("link_queue_full", d.media_dropped_queue_full),
                ("local_queue_full", d.delivered_dropped_queue_full),
            ] {
                m.counter(
                    "overlayd_media_dropped_total",
                    "Video chunks dropped by the driver, by reason",
                    &[("node", &self.name), ("reason", reason)],
                    v as f64,
                );
            }
            m.counter(
                "overlayd_frames_undecodable_total",
                "Authenticated frames that did not decode",
                &node,
                d.frames_undecodable as f64,
            );
            for (reason, v) in &d.handshakes_refused_by_reason {
                m.counter(
                    "overlayd_handshakes_refused_total",
                    "Inbound overlay handshakes refused, by reason",
                    &[("node", &self.name), ("reason", reason)],
                    *v as f64,
                );
            }
            for (reason, v) in &d.frames_rejected {
                m.counter(
                    "overlayd_frames_rejected_total",
                    "Records refused on established overlay links, by reason",
                    &[("node", &self.name), ("reason", reason)],
                    *v as f64,
                );
            }
            m.counter(
                "overlayd_connections_over_limit_total",
                "Inbound overlay connections closed at once: too many pending handshakes",
                &node,
                d.connections_over_limit as f64,
            );
            m.gauge(
                "overlayd_handshakes_pending",
                "Inbound overlay connections in their handshake now",
                &node,
                d.handshakes_pending as f64,
            );
            for (reason, v) in &d.links_closed {
                m.counter(
                    "overlayd_links_closed_total",
                    "Overlay links closed by the driver (peer not reading), by reason",
                    &[("node", &self.name), ("reason", reason)],
                    *v as f64,
                );
            }
            for (neighbour, v) in &d.media_dropped_by_neighbour {
                m.counter(
                    "overlayd_link_media_dropped_total",
                    "Video chunks dropped because this neighbour's media queue was full",
                    &[("node", &self.name), ("neighbour", neighbour)],
                    *v as f64,
                );
            }
        }
        if let Some(e) = &self.edge {
            m.gauge(
                "overlayd_edge_sessions",
                "Clients with a lease",
                &node,
                e.sessions.len() as f64,
            );
            for reason in EDGE_DROP_REASONS {
                m.counter(
                    "overlayd_edge_datagrams_dropped_total",
                    "UDP datagrams from clients dropped at the edge, by reason",
                    &[("node", &self.name), ("reason", reason)],
                    e.counters.get(*reason).copied().unwrap_or(0) as f64,
                );
            }
            m.counter(
                "overlayd_edge_video_datagrams_dropped_total",
                "Video datagrams to clients the relay dropped",
                &node,
                e.video_dropped as f64,
            );
            for (field, v) in &e.counters {
                if EDGE_DROP_REASONS.contains(&field.as_str()) {
                    continue;
                }
                m.counter(
                    &format!("overlayd_edge_{field}_total"),
                    "Edge service counter",
                    &node,
                    *v as f64,
                );
            }
        }
        m.finish()
    }

    /// Human-readable tables (what `overlayd status` prints).
    pub fn render_tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} ({})", self.name, self.role);

        let mut t = Table::new(&[
            "neighbour",
            "address",
            "state",
            "role",
            "rtt",
            "up for",
            "heard",
        ]);
        for n in &self.neighbours {
            t.row(vec![
                dash(&n.name),
                n.addr.clone(),
                if n.state == "up" {
                    "up".into()
                } else {
                    format!("{} ({} failed dials)", n.state, n.dial_failures)
                },
                n.role.clone().unwrap_or_else(|| "-".into()),
                n.rtt_us.map_or("-".into(), us),
                n.up_for_ms
                    .map_or("-".into(), |v| format!("{:.1}s", v as f64 / 1e3)),
                n.last_heard_ms.map_or("-".into(), |v| format!("{v}ms ago")),
            ]);
        }
        t.write(&mut out, "Neighbours");

        let mut t = Table::new(&[
            "server",
            "via",
            "delay (EWMA)",
            "link sum",
            "samples",
            "age",
            "videos",
            "",
        ]);
        for p in &self.parents {
            t.row(vec![
                p.server.clone(),
                p.neighbour.clone(),
                signed_us(p.delay_us),
                us(p.link_sum_us),
                p.samples.to_string(),
                format!("{}ms", p.age_ms),
                p.videos.join(","),
                if p.active { "*".into() } else { String::new() },
            ]);
        }
        t.write(&mut out, "Parent table (* = parent of a stream)");

        let mut t = Table::new(&[
            "stream",
            "origin",
            "parent",
            "metric (delay / link sum)",
            "destinations",
            "state",
            "last",
        ]);
        for r in &self.routes {
            let parent = match (&r.parent, &r.switching_to) {
                (Some(p), Some(n)) => format!("{p} -> {n}"),
                (Some(p), None) => p.clone(),
                (None, Some(n)) => format!("-> {n}"),
                (None, None) => "-".into(),
            };
            // The second parent of a redundant stream follows a `+`.
            let parent = match &r.second {
                Some(s) => format!("{parent} + {s}"),
                None => parent,
            };
            t.row(vec![
                r.stream.clone(),
                r.origin.clone().unwrap_or_else(|| "-".into()),
                parent,
                format!(
                    "{} / {}",
                    r.metric.delay_us.map_or("-".into(), signed_us),
                    r.metric.link_sum_us.map_or("-".into(), us)
                ),
                if r.destinations.is_empty() {
                    "-".into()
                } else {
                    r.destinations.join(",")
                },
                r.state.clone(),
                r.last.map_or("-".into(), |(e, s)| format!("{e}:{s}")),
            ]);
        }
        t.write(&mut out, "Route table");

        let mut t = Table::new(&["stream", "grandfather", "address"]);
        for g in &self.grandfathers {
            t.row(vec![g.stream.clone(), g.name.clone(), g.addr.clone()]);
        }
        t.write(&mut out, "Grandfathers");

        let mut t = Table::new(&[
            "neighbour",
            "stream",
            "chunks in",
            "bytes in",
            "chunks out",
            "bytes out",
        ]);
        for k in &self.links {
            t.row(vec![
                k.neighbour.clone(),
                k.stream.clone(),
                k.chunks_in.to_string(),
                k.bytes_in.to_string(),
                k.chunks_out.to_string(),
                k.bytes_out.to_string(),
            ]);
        }
        t.write(&mut out, "Link counters");

        let mut t = Table::new(&[
            "stream",
            "in",
            "out",
            "dups",
            "gaps",
            "switches",
            "failovers",
            "last gap",
        ]);
        for s in &self.streams {
            let c = &s.counters;
            t.row(vec![
                s.stream.clone(),
                c.chunks_in.to_string(),
                c.chunks_out.to_string(),
                c.duplicates.to_string(),
                c.gap_chunks.to_string(),
                c.switches.to_string(),
                c.failovers.to_string(),
                s.last_failover_gap_ms
                    .map_or("-".into(), |g| format!("{g:.1}ms")),
            ]);
        }
        t.write(&mut out, "Stream counters");
        for s in self
            .streams
            .iter()
            .filter(|s| s.counters.second_parents > 0)
        {
            let c = &s.counters;
            let _ = writeln!(
                out,
                "hitless redundancy, {}: redundant copies dropped {} ({} bytes), hitless failovers {}, second parents asked {}\n",
                s.stream, c.redundant_duplicates, c.redundant_bytes, c.hitless_failovers, c.second_parents
            );
        }

        if let Some(e) = &self.edge {
            let mut t = Table::new(&["client", "video", "stream", "lease left", "datagrams"]);
            for s in &e.sessions {
                t.row(vec![
                    s.client.clone(),
                    s.video.clone(),
                    s.stream.to_string(),
                    format!("{}ms", s.lease_left_ms),
                    s.datagrams_sent.to_string(),
                ]);
            }
            t.write(&mut out, "Edge clients");
            let dropped: Vec<String> = EDGE_DROP_REASONS
                .iter()
                .filter_map(|r| {
                    e.counters
                        .get(*r)
                        .filter(|v| **v > 0)
                        .map(|v| format!("{r}={v}"))
                })
                .collect();
            let _ = writeln!(
                out,
                "edge datagrams dropped: {}\n",
                if dropped.is_empty() {
                    "none".into()
                } else {
                    dropped.join(" ")
                }
            );
        }
        if let Some(d) = &self.driver {
            let _ = writeln!(
                out,
                "handshakes ok {} refused {}; media dropped (queue full) {}; local drops {}",
                d.handshakes_ok,
                d.handshakes_refused,
                d.media_dropped_queue_full,
                d.delivered_dropped_queue_full
            );
            let show = |m: &BTreeMap<String, u64>| {
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = writeln!(
                out,
                "inbound refused by reason: {}; frames rejected: {}; over the pending limit {}; pending {}; links closed: {}",
                show(&d.handshakes_refused_by_reason),
                show(&d.frames_rejected),
                d.connections_over_limit,
                d.handshakes_pending,
                show(&d.links_closed)
            );
        }
        out
    }
}

fn stream_counter_help(field: &str) -> &'static str {
    match field {
        "chunks_in" => "Chunks received from any neighbour (or produced by our source)",
        "chunks_out" => "Chunk copies sent to children",
        "delivered_local" => "Chunks handed to local consumers",
        "duplicates" => "Chunks dropped as already forwarded (duplicates)",
        "stray" => "Chunks from a neighbour that is not our parent",
        "gap_chunks" => "Sequence numbers skipped (chunks that never came)",
        "epochs" => "Stream (re)starts forwarded",
        "switches" => "Completed make-before-break parent switches",
        "failovers" => "Parent losses handled",
        "held" => "Chunks held in the reorder buffer during a switch",
        "loops_refused" => "Requests refused because they would close a loop",
        "grandfather_dials" => "Grandfather dials after the only parent died",
        "redundant_duplicates" => {
            "Copies dropped because the other of two redundant parents delivered them first"
        }
        "redundant_bytes" => "Payload bytes of redundant copies (redundancy's extra bandwidth)",
        "hitless_failovers" => "Parent losses where the second parent took over with no gap",
        "second_parents" => "Second parents asked (hitless redundancy)",
        _ => "Stream counter",
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Microseconds, readably.
fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1e3)
    } else {
        format!("{:.2}ms", v as f64 / 1e3)
    }
}

fn signed_us(v: i64) -> String {
    if v < 0 {
        format!("-{}", us(v.unsigned_abs()))
    } else {
        us(v as u64)
    }
}

/// A plain text table with aligned columns.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    fn write(&self, out: &mut String, title: &str) {
        let _ = writeln!(out, "{title}:");
        if self.rows.is_empty() {
            let _ = writeln!(out, "  (none)\n");
            return;
        }
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(x) = w.get_mut(i) {
                    *x = (*x).max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from(" ");
            for (i, c) in cells.iter().enumerate() {
                let pad = w
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
                s.push(' ');
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&self.head));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
        out.push('\n');
    }
}

/// Builder of the Prometheus text format: one HELP and TYPE per metric family, samples grouped
/// under their family.
#[derive(Default)]
struct Metrics {
    families: BTreeMap<String, (String, &'static str, Vec<String>)>,
    order: Vec<String>,
}

impl Metrics {
    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
            self.families
                .insert(name.to_string(), (help.to_string(), kind, Vec::new()));
        }
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape_label(val));
            }
            line.push('}');
        }
        let _ = write!(line, " {}", fmt_value(v));
        self.families.get_mut(name).expect("inserted").2.push(line);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, help, "counter", labels, v);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, help, "gauge", labels, v);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let (help, kind, lines) = &self.families[name];
            let _ = writeln!(
                out,
                "# HELP {name} {}",
                help.replace('\\', "\\\\").replace('\n', "\\n")
            );
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn fmt_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// What a trace collected: every path from the originator to a node that answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceResult {
    pub video: String,
    pub id: u64,
    /// How long the collector waited for answers, ms.
    pub waited_ms: u64,
    pub paths: Vec<Vec<TraceHop>>,
}

/// Print a trace as a tree: each node with the delay of the hop that reached it (from its
/// parent's stamp to its own, wall clocks) and the total from the root.
pub fn render_trace(t: &TraceResult) -> String {
    // Node -> children, and each node's best-known stamp, from the paths.
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stamp: BTreeMap<String, u64> = BTreeMap::new();
    let mut root: Option<String> = None;
    for path in &t.paths {
        let Some(first) = path.first() else { continue };
        root.get_or_insert_with(|| first.name.clone());
        for (i, h) in path.iter().enumerate() {
            stamp.entry(h.name.clone()).or_insert(h.at_us);
            if i > 0 {
                let parent = &path[i - 1].name;
                let c = children.entry(parent.clone()).or_default();
                if !c.contains(&h.name) {
                    c.push(h.name.clone());
                }
            }
        }
    }
    let mut out = String::new();
    let Some(root) = root else {
        let _ = writeln!(out, "trace of '{}': no answer", t.video);
        return out;
    };
    let answered = stamp.len();
    let _ = writeln!(
        out,
        "trace of '{}' from {root}: {answered} node(s) answered within {} ms (hop delay: wall clock of the node minus that of its parent)",
        t.video, t.waited_ms
    );
    let root_at = stamp[&root];
    let _ = writeln!(out, "{root}");
    let mut visited = std::collections::BTreeSet::new();
    visited.insert(root.clone());
    fn walk(
        out: &mut String,
        node: &str,
        prefix: &str,
        children: &BTreeMap<String, Vec<String>>,
        stamp: &BTreeMap<String, u64>,
        root_at: u64,
        visited: &mut std::collections::BTreeSet<String>,
    ) {
        let kids = children.get(node).cloned().unwrap_or_default();
        let n = kids.len();
        for (i, k) in kids.into_iter().enumerate() {
            if !visited.insert(k.clone()) {
                continue;
            }
            let last = i + 1 == n;
            let hop = stamp[&k] as i64 - stamp[node] as i64;
            let total = stamp[&k] as i64 - root_at as i64;
            let _ = writeln!(
                out,
                "{prefix}{} {k}  +{} (total {})",
                if last { "└─" } else { "├─" },
                signed_us(hop),
                signed_us(total)
            );
            let next = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(out, &k, &next, children, stamp, root_at, visited);
        }
    }
    walk(
        &mut out,
        &root,
        "",
        &children,
        &stamp,
        root_at,
        &mut visited,
    );
    out
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn route_table_shows_the_second_parent_and_the_redundancy_cost() {
        let mut s = sample_status();
        s.routes.push(RouteStatus {
            stream: "movie".into(),
            origin: Some("S1".into()),
            state: "streaming".into(),
            parent: Some("O2".into()),
            second: Some("O3".into()),
            ..Default::default()
        });
        s.streams[0].counters.second_parents = 1;
        s.streams[0].counters.redundant_duplicates = 40;
        s.streams[0].counters.redundant_bytes = 52_640;
        let tables = s.render_tables();
        assert!(tables.contains("O2 + O3"), "{tables}");
        assert!(
            tables.contains("redundant copies dropped 40 (52640 bytes)"),
            "{tables}"
        );
        // A status from a version without the field still reads.
        let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
        json["routes"][0].as_object_mut().unwrap().remove("second");
        let back: NodeStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back.routes[0].second, None);
        assert_eq!(back.routes[0].parent.as_deref(), Some("O2"));
    }

    fn sample_status() -> NodeStatus {
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
            edge: Some(EdgeStatus {
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

    #[test]
    fn metrics_are_prometheus_text_with_one_help_per_family() {
        let text = sample_status().render_metrics();
        assert!(
            text.contains("# TYPE overlayd_stream_chunks_in_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("overlayd_stream_chunks_in_total{node=\"O\\\"1\",stream=\"movie\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("overlayd_stream_duplicates_total{node=\"O\\\"1\",stream=\"movie\"} 3\n")
        );
        assert!(text.contains(
            "overlayd_stream_last_failover_gap_seconds{node=\"O\\\"1\",stream=\"movie\"} 0.2505\n"
        ));
        assert!(text.contains(
            "overlayd_link_bytes_total{node=\"O\\\"1\",neighbour=\"S1\",stream=\"movie\",direction=\"in\"} 55272\n"
        ));
        assert!(text.contains("overlayd_handshakes_total{node=\"O\\\"1\",result=\"refused\"} 2\n"));
        assert!(text.contains(
            "overlayd_edge_datagrams_dropped_total{node=\"O\\\"1\",reason=\"rate_limited\"} 5\n"
        ));
        assert!(text.contains("overlayd_edge_probes_total{node=\"O\\\"1\"} 7\n"));
        assert!(text.contains("overlayd_edge_sessions{node=\"O\\\"1\"} 1\n"));
        // Every family has exactly one HELP and one TYPE, and every sample line parses.
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_string()), "TYPE twice for {name}");
            } else if !line.starts_with('#') {
                let (_, value) = line.rsplit_once(' ').unwrap();
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {line}"));
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(seen.contains(name), "sample before its TYPE: {line}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(fmt_value(3.0), "3");
        assert_eq!(fmt_value(0.25), "0.25");
    }

    #[test]
    fn tables_show_edge_clients_and_drops() {
        let t = sample_status().render_tables();
        assert!(t.contains("Edge clients:"), "{t}");
        assert!(t.contains("127.0.0.9:7703"), "{t}");
        assert!(t.contains("rate_limited=5"), "{t}");
        assert!(t.contains("250.5ms"), "{t}");
    }

    #[test]
    fn trace_tree_merges_paths_and_shows_hop_delays() {
        let hop = |n: &str, at: u64| TraceHop {
            name: n.into(),
            at_us: at,
        };
        let t = TraceResult {
            video: "movie".into(),
            id: 9,
            waited_ms: 1000,
            paths: vec![
                vec![hop("S1", 1_000_000)],
                vec![hop("S1", 1_000_000), hop("O1", 1_000_500)],
                vec![
                    hop("S1", 1_000_000),
                    hop("O1", 1_000_500),
                    hop("O2", 1_001_500),
                ],
                vec![
                    hop("S1", 1_000_000),
                    hop("O1", 1_000_500),
                    hop("O3", 1_002_000),
                ],
            ],
        };
        let out = render_trace(&t);
        assert!(out.contains("4 node(s) answered"), "{out}");
        assert!(out.contains("S1\n└─ O1  +0.50ms (total 0.50ms)\n"), "{out}");
        assert!(out.contains("   ├─ O2  +1.00ms (total 1.50ms)\n"), "{out}");
        assert!(out.contains("   └─ O3  +1.50ms (total 2.00ms)\n"), "{out}");
        assert!(render_trace(&TraceResult::default()).contains("no answer"));
    }
}
