//! Prometheus metrics: a [`NodeStatus`] rendered by `prometheus-client` for `/metrics`.
//!
//! The snapshot is already the truth at one instant, so nothing here keeps live metric objects:
//! a [`Collector`] walks the snapshot at scrape time and encodes each family (one HELP and TYPE)
//! with its samples as constant counters and gauges. The text is OpenMetrics (served as
//! [`CONTENT_TYPE`]): a counter family is named without its `_total` suffix on its HELP and TYPE
//! lines, its samples carry it (`overlayd_stream_chunks_in_total{...}`), and the text ends with
//! `# EOF`. Sample names, label names and label order are those of the hand-written renderer this
//! replaced, so scrapers and dashboards keep working.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::snapshot::{LinkStatus, NodeStatus, ParentStatus, StreamStatus, EDGE_DROP_REASONS};

/// Content type of [`NodeStatus::render_metrics`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl NodeStatus {
    /// The snapshot as OpenMetrics text (see module docs).
    pub fn render_metrics(&self) -> String {
        render(self, &BTreeMap::new())
    }
}

/// The snapshot and the control endpoint's own refusals by reason (see
/// `crate::net::http::Refusals`) as OpenMetrics text.
pub fn render(status: &NodeStatus, control_refused: &BTreeMap<String, u64>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(status.clone())));
    registry.register_collector(Box::new(RefusalCollector {
        node: status.name.clone(),
        refused: control_refused.clone(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail, and no collector here returns an error.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The control endpoint's refused requests.
#[derive(Debug)]
struct RefusalCollector {
    node: String,
    refused: BTreeMap<String, u64>,
}

impl Collector for RefusalCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        counters(
            &mut enc,
            "overlayd_control_refused",
            "Control endpoint requests refused, by reason (too_large, timeout, malformed, method, not_found, other)",
            self.refused
                .iter()
                .map(|(reason, v)| (labels(&self.node, &[("reason", reason)]), *v)),
        )
    }
}

/// A label value, escaped as the exposition format wants (backslash, double quote, newline);
/// the library writes values as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Value<'a>(&'a str);

impl EncodeLabelValue for Value<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, Value<'a>)>;

/// Encode one family from its samples; a family without samples is left out.
fn family<'a, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family; `name` without its `_total`.
fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(enc, name, help, MetricType::Counter, samples)
}

/// A gauge family (whole numbers, or seconds as `f64`).
fn gauges<'a, N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, N)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(enc, name, help, MetricType::Gauge, samples)
}

/// A family drawn from each item of a list: name, help and the item's value.
type PerItem<Item, T> = (&'static str, &'static str, fn(&Item) -> T);

/// A serialisable counter struct as `(field, value)` pairs, fields in name order.
fn fields(v: &impl serde::Serialize) -> Vec<(String, u64)> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
            .collect(),
        _ => Vec::new(),
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `node` first, then the family's own labels, in the order given.
fn labels<'a>(node: &'a str, more: &[(&'static str, &'a str)]) -> Labels<'a> {
    let mut l = vec![("node", Value(node))];
    l.extend(more.iter().map(|(k, v)| (*k, Value(v))));
    l
}

/// Encodes one snapshot at scrape time.
#[derive(Debug)]
struct SnapshotCollector(NodeStatus);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let name = s.name.as_str();
        let enc = &mut enc;
        gauges(
            enc,
            "overlayd_info",
            "Static information about this daemon",
            [(labels(name, &[("role", &s.role)]), 1)],
        )?;
        gauges(
            enc,
            "overlayd_neighbour_up",
            "1 when the overlay link to the neighbour is up",
            s.neighbours.iter().map(|n| {
                let l = labels(name, &[("neighbour", &n.addr), ("name", &n.name)]);
                (l, i64::from(n.state == "up"))
            }),
        )?;
        gauges(
            enc,
            "overlayd_neighbour_rtt_seconds",
            "Smoothed keepalive round-trip time",
            s.neighbours.iter().filter_map(|n| {
                let l = labels(name, &[("neighbour", &n.addr), ("name", &n.name)]);
                n.rtt_us.map(|rtt| (l, rtt as f64 / 1e6))
            }),
        )?;
        let per_parent: [PerItem<ParentStatus, f64>; 2] = [
            (
                "overlayd_route_delay_seconds",
                "EWMA one-way flood delay to the server through the neighbour (includes clock skew)",
                |p| p.delay_us as f64 / 1e6,
            ),
            (
                "overlayd_route_link_sum_seconds",
                "Skew-free summed per-link RTT/2 to the server through the neighbour",
                |p| p.link_sum_us as f64 / 1e6,
            ),
        ];
        for (family, help, value) in per_parent {
            let samples = s.parents.iter().map(|p| {
                let l = labels(name, &[("server", &p.server), ("neighbour", &p.neighbour)]);
                (l, value(p))
            });
            gauges(enc, family, help, samples)?;
        }

        // Per-stream counters: one family per field of the streams' counters.
        let per_stream: Vec<(&str, Vec<(String, u64)>)> = s
            .streams
            .iter()
            .map(|st| (st.stream.as_str(), fields(&st.counters)))
            .collect();
        let field_names: Vec<String> = per_stream
            .first()
            .map(|(_, f)| f.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        for (i, field) in field_names.iter().enumerate() {
            counters(
                enc,
                &format!("overlayd_stream_{field}"),
                stream_counter_help(field),
                per_stream.iter().filter_map(|(stream, f)| {
                    let v = f.get(i).map(|(_, v)| *v)?;
                    Some((labels(name, &[("stream", stream)]), v))
                }),
            )?;
        }
        let stream_counters: [PerItem<StreamStatus, u64>; 3] = [
            (
                "overlayd_stream_bytes_in",
                "Payload bytes received (or produced by our source)",
                |st| st.bytes_in,
            ),
            (
                "overlayd_stream_bytes_out",
                "Payload bytes sent to children and local consumers",
                |st| st.bytes_out,
            ),
            (
                "overlayd_stream_failover_gaps_measured",
                "Failovers whose gap was measured (a chunk came from the new parent)",
                |st| st.failover_gaps_measured,
            ),
        ];
        for (family, help, value) in stream_counters {
            let samples = s
                .streams
                .iter()
                .map(|st| (labels(name, &[("stream", &st.stream)]), value(st)));
            counters(enc, family, help, samples)?;
        }
        let stream_gaps: [PerItem<StreamStatus, Option<f64>>; 2] = [
            (
                "overlayd_stream_last_failover_gap_seconds",
                "Time between the last chunk before the latest failover and the first after it",
                |st| st.last_failover_gap_ms,
            ),
            (
                "overlayd_stream_max_failover_gap_seconds",
                "Longest failover gap measured",
                |st| st.max_failover_gap_ms,
            ),
        ];
        for (family, help, gap_ms) in stream_gaps {
            let samples = s.streams.iter().filter_map(|st| {
                gap_ms(st).map(|g| (labels(name, &[("stream", &st.stream)]), g / 1e3))
            });
            gauges(enc, family, help, samples)?;
        }
        gauges(
            enc,
            "overlayd_route_destinations",
            "Children and local consumers of the stream",
            s.routes.iter().map(|r| {
                let parent = r.parent.as_deref().unwrap_or("");
                let l = labels(
                    name,
                    &[
                        ("stream", &r.stream),
                        ("parent", parent),
                        ("state", &r.state),
                    ],
                );
                (l, saturating_i64(r.destinations.len() as u64))
            }),
        )?;
        // Per (neighbour, stream) in both directions: in then out for each link line.
        let link = |pick: fn(&LinkStatus) -> (u64, u64)| {
            s.links.iter().flat_map(move |k| {
                let (i, o) = pick(k);
                [("in", i), ("out", o)].map(|(dir, v)| {
                    let l = labels(
                        name,
                        &[
                            ("neighbour", &k.neighbour),
                            ("stream", &k.stream),
                            ("direction", dir),
                        ],
                    );
                    (l, v)
                })
            })
        };
        counters(
            enc,
            "overlayd_link_chunks",
            "Video chunks per neighbour, stream and direction",
            link(|k| (k.chunks_in, k.chunks_out)),
        )?;
        counters(
            enc,
            "overlayd_link_bytes",
            "Video payload bytes per neighbour, stream and direction",
            link(|k| (k.bytes_in, k.bytes_out)),
        )?;
        for (field, v) in fields(&s.counters) {
            counters(
                enc,
                &format!("overlayd_node_{field}"),
                "Node event counter",
                [(labels(name, &[]), v)],
            )?;
        }
        if let Some(d) = &s.driver {
            counters(
                enc,
                "overlayd_handshakes",
                "Overlay link handshakes by result (refused: wrong key, garbage, timeout)",
                [("ok", d.handshakes_ok), ("refused", d.handshakes_refused)]
                    .map(|(result, v)| (labels(name, &[("result", result)]), v)),
            )?;
            counters(
                enc,
                "overlayd_media_dropped",
                "Video chunks dropped by the driver, by reason",
                [
                    ("link_queue_full", d.media_dropped_queue_full),
                    ("local_queue_full", d.delivered_dropped_queue_full),
                ]
                .map(|(reason, v)| (labels(name, &[("reason", reason)]), v)),
            )?;
            counters(
                enc,
                "overlayd_frames_undecodable",
                "Authenticated frames that did not decode",
                [(labels(name, &[]), d.frames_undecodable)],
            )?;
            counters(
                enc,
                "overlayd_handshakes_refused",
                "Inbound overlay handshakes refused, by reason",
                d.handshakes_refused_by_reason
                    .iter()
                    .map(|(reason, v)| (labels(name, &[("reason", reason)]), *v)),
            )?;
            counters(
                enc,
                "overlayd_frames_rejected",
                "Records refused on established overlay links, by reason",
                d.frames_rejected
                    .iter()
                    .map(|(reason, v)| (labels(name, &[("reason", reason)]), *v)),
            )?;
            counters(
                enc,
                "overlayd_connections_over_limit",
                "Inbound overlay connections closed at once: too many pending handshakes",
                [(labels(name, &[]), d.connections_over_limit)],
            )?;
            gauges(
                enc,
                "overlayd_handshakes_pending",
                "Inbound overlay connections in their handshake now",
                [(labels(name, &[]), saturating_i64(d.handshakes_pending))],
            )?;
            counters(
                enc,
                "overlayd_links_closed",
                "Overlay links closed by the driver (peer not reading), by reason",
                d.links_closed
                    .iter()
                    .map(|(reason, v)| (labels(name, &[("reason", reason)]), *v)),
            )?;
            counters(
                enc,
                "overlayd_link_media_dropped",
                "Video chunks dropped because this neighbour's media queue was full",
                d.media_dropped_by_neighbour
                    .iter()
                    .map(|(neighbour, v)| (labels(name, &[("neighbour", neighbour)]), *v)),
            )?;
        }
        if let Some(e) = &s.edge {
            gauges(
                enc,
                "overlayd_edge_sessions",
                "Clients with a lease",
                [(labels(name, &[]), saturating_i64(e.sessions.len() as u64))],
            )?;
            counters(
                enc,
                "overlayd_edge_datagrams_dropped",
                "UDP datagrams from clients dropped at the edge, by reason",
                EDGE_DROP_REASONS.iter().map(|reason| {
                    let v = e.counters.get(*reason).copied().unwrap_or(0);
                    (labels(name, &[("reason", reason)]), v)
                }),
            )?;
            counters(
                enc,
                "overlayd_edge_video_datagrams_dropped",
                "Video datagrams to clients the relay dropped",
                [(labels(name, &[]), e.video_dropped)],
            )?;
            for (field, v) in &e.counters {
                if EDGE_DROP_REASONS.contains(&field.as_str()) {
                    continue;
                }
                counters(
                    enc,
                    &format!("overlayd_edge_{field}"),
                    "Edge service counter",
                    [(labels(name, &[]), *v)],
                )?;
            }
        }
        Ok(())
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
        "failovers" => "Losses of a parent that had fed the stream",
        "held" => "Chunks held in the reorder buffer during a switch",
        "loops_refused" => "Requests refused because they would close a loop",
        "grandfather_dials" => "Grandfather dials after the only parent died",
        "redundant_duplicates" => {
            "Copies dropped because the other of two redundant parents delivered them first"
        }
        "redundant_bytes" => "Payload bytes of redundant copies (redundancy's extra bandwidth)",
        "hitless_failovers" => "Parent losses where the second parent took over with no gap",
        "second_parents" => "Second parents asked (hitless redundancy)",
        "suspicions" => "Parents suspected: silent beyond the stream's own chunk spacing",
        "suspicions_cleared" => "Suspected parents that spoke again before the stream moved",
        "suspected_switches" => "Parent switches that left a suspected (silent) parent",
        "gop_chunks_sent" => "Cached chunks since the last keyframe sent to joining children",
        "parent_retries" => "Losses of a parent asked but not yet feeding (request moved on)",
        _ => "Stream counter",
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
            text.contains("# TYPE overlayd_stream_chunks_in counter\n"),
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
        // Every family has exactly one HELP and one TYPE, every sample line parses and follows
        // its family's TYPE (a counter's samples add `_total`), and the text ends with EOF.
        let mut seen = std::collections::BTreeMap::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    seen.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice for {name}"
                );
                current = Some((name.to_string(), kind.to_string()));
            } else if !line.starts_with('#') {
                let (_, value) = line.rsplit_once(' ').unwrap();
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {line}"));
                let name = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = current.as_ref().expect("a sample before any TYPE");
                let want = match kind.as_str() {
                    "counter" => format!("{family}_total"),
                    _ => family.clone(),
                };
                assert_eq!(name, want, "sample outside its family: {line}");
            }
        }
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(seen.get("overlayd_info").map(String::as_str), Some("gauge"));
    }

    #[test]
    fn label_values_are_escaped_and_whole_numbers_print_whole() {
        let s = NodeStatus {
            name: "a\"b\\c\nd".into(),
            role: "node".into(),
            ..Default::default()
        };
        let text = s.render_metrics();
        assert!(
            text.contains("overlayd_info{node=\"a\\\"b\\\\c\\nd\",role=\"node\"} 1\n"),
            "{text}"
        );
    }
}
