//! Prometheus metrics: a [`NodeStatus`] as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::snapshot::{NodeStatus, EDGE_DROP_REASONS};

impl NodeStatus {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::snapshot::tests::sample_status;

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
}
