//! Traces as the operator sees them: what a trace collected ([`TraceResult`], the control
//! endpoint's JSON) and the tree `overlayd trace` prints, with each hop's delay. The probe
//! itself is protocol ([`crate::overlay::trace`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::tables::signed_us;
use crate::wire::overlay::TraceHop;

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
/// Per-hop delays of a path, µs (`at_us` differences; wall clocks, so skew shows here).
pub fn hop_delays(hops: &[TraceHop]) -> Vec<i64> {
    hops.windows(2)
        .map(|w| w[1].at_us as i64 - w[0].at_us as i64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hop_delays_are_differences() {
        let hop = |n: &str, at: u64| TraceHop {
            name: n.into(),
            at_us: at,
        };
        assert_eq!(
            hop_delays(&[hop("S", 0), hop("A", 1000), hop("B", 2000)]),
            vec![1000, 1000]
        );
        assert!(hop_delays(&[]).is_empty());
    }
}
