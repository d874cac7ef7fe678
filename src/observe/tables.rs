//! The tables `overlayd status` prints: a [`NodeStatus`] as aligned plain-text tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::snapshot::{NodeStatus, EDGE_DROP_REASONS};

impl NodeStatus {
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

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Microseconds, readably.
pub(crate) fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1e3)
    } else {
        format!("{:.2}ms", v as f64 / 1e3)
    }
}

pub(crate) fn signed_us(v: i64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::snapshot::tests::sample_status;
    use crate::observe::snapshot::RouteStatus;

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

    #[test]
    fn tables_show_edge_clients_and_drops() {
        let t = sample_status().render_tables();
        assert!(t.contains("Edge clients:"), "{t}");
        assert!(t.contains("127.0.0.9:7703"), "{t}");
        assert!(t.contains("rate_limited=5"), "{t}");
        assert!(t.contains("250.5ms"), "{t}");
    }
}
