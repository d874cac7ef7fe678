//! The live map's model: topology + the daemons' latest reports + staleness → what the page draws.
//!
//! This module owns the bootstrapper's view of the running overlay. [`MapState`] keeps the
//! latest [`Report`] of every daemon with the instant it arrived, turns report changes into
//! events (failovers with their gap, parent switches, restarts) and, at [`MapState::model`],
//! decides who is alive or dead, which topology links are up, and each stream's distribution
//! tree (an edge parent → child for every live reporter's parent) with the servers at its roots
//! now: those its viewers are reached from by walking the tree up (a server that still runs a
//! source nobody receives, or that a failover left, is not named). A node is dead when its
//! last report is older than `dead_after` (`silent`), when its report connection closed and no
//! new one reported yet (`exited`: a killed process closes it at once), or when every live
//! neighbour that knows it reports it down (`neighbours`: a hung process or a cut link is seen
//! by its neighbours before its reports go stale). The last rule waits `dead_after` after a
//! daemon starts reporting, so a daemon whose links are still coming up is not called dead.
//! Layout is deterministic: servers on top, nodes layered by hop count from the servers, edges
//! below, clients and other consumers at the bottom, or `x`/`y` from the topology file.
//! No sockets, no clock reads: `now` comes in, a serialisable [`MapModel`] comes out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::snapshot::NodeStatus;
use crate::topology::{DeviceRole, Topology};
use crate::wire::report::{
    Report, ReportClient, ReportNeighbour, ReportStream, MAX_ITEMS, REPORT_VERSION,
};

/// A node whose last report is older than this is dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(3);
/// Events kept (older ones are dropped).
pub const MAX_EVENTS: usize = 100;
/// Reporters remembered at most (a key holder inventing names cannot grow the map forever).
pub const MAX_REPORTERS: usize = 4096;
/// Stream colours, picked in order of first sight. No red: red marks the dead.
pub const PALETTE: &[&str] = &[
    "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b",
];
/// How long a node is highlighted after an event about it (failover, switch, ...).
pub const RECENT: Duration = Duration::from_secs(10);
/// Layout canvas width; rows are [`ROW_HEIGHT`] apart.
pub const MAP_WIDTH: f64 = 1000.0;
pub const ROW_HEIGHT: f64 = 130.0;
const TOP_MARGIN: f64 = 60.0;

/// Build the report a daemon sends from its status snapshot (and an edge's client sessions,
/// as `(client address, video)`). Lists are cut at [`MAX_ITEMS`], so the map always takes it.
pub fn report_from_status(
    st: &NodeStatus,
    listen: SocketAddr,
    seq: u64,
    clients: &[(SocketAddr, String)],
) -> Report {
    let neighbours = st
        .neighbours
        .iter()
        .take(MAX_ITEMS)
        .map(|n| ReportNeighbour {
            name: n.name.clone(),
            addr: n.addr.clone(),
            state: n.state.clone(),
        })
        .collect();
    let streams = st
        .routes
        .iter()
        .take(MAX_ITEMS)
        .map(|r| {
            let mut children = Vec::new();
            let mut local = 0;
            for d in &r.destinations {
                match d.strip_prefix("local×") {
                    Some(n) => local += n.parse::<u32>().unwrap_or(1),
                    None if children.len() < MAX_ITEMS => children.push(d.clone()),
                    None => {}
                }
            }
            let counters = st.streams.iter().find(|s| s.stream == r.stream);
            ReportStream {
                video: r.stream.clone(),
                server: r.origin.clone(),
                parent: r.parent.clone(),
                children,
                local,
                state: r.state.clone(),
                failovers: counters.map_or(0, |c| c.counters.failovers),
                last_gap_ms: counters.and_then(|c| c.last_failover_gap_ms),
            }
        })
        .collect();
    Report {
        version: REPORT_VERSION,
        name: st.name.clone(),
        role: st.role.clone(),
        seq,
        listen: listen.to_string(),
        neighbours,
        streams,
        clients: clients
            .iter()
            .take(MAX_ITEMS)
            .map(|(addr, video)| ReportClient {
                addr: addr.to_string(),
                video: video.clone(),
            })
            .collect(),
    }
}

/// Counters shown on the page and in `/map.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapCounters {
    pub reports_accepted: u64,
    /// Plaintext bytes of the accepted reports (their cost on the wire, AES-GCM adds 20 each).
    pub report_bytes: u64,
    /// Reports that decoded badly (the connection is closed).
    pub reports_malformed: u64,
    /// Report connections whose handshake failed (wrong or no key).
    pub auth_refused: u64,
    /// Reports from names beyond [`MAX_REPORTERS`].
    pub reports_dropped: u64,
    /// Page requests refused by the HTTP server, by reason (filled in by the server; absent
    /// while none was refused).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http_refused: BTreeMap<String, u64>,
}

/// What the page draws.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapModel {
    pub version: u32,
    pub width: f64,
    pub height: f64,
    pub dead_after_ms: u64,
    pub nodes: Vec<MapNode>,
    pub links: Vec<MapLink>,
    pub streams: Vec<MapStream>,
    /// Newest first.
    pub events: Vec<MapEvent>,
    pub counters: MapCounters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapNode {
    pub name: String,
    /// `server`, `node`, `edge`, `client` or `consumer` (a child that is in no topology).
    pub role: String,
    /// `alive`, `dead` or `unknown` (never reported, nobody says it is up).
    pub state: String,
    /// Why it is dead (`silent` reports, `neighbours` report it down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    pub in_topology: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// Local consumers summed over its streams.
    pub local: u32,
    /// Kind of the newest event about it within [`RECENT`] (`failover`, `switch`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<String>,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLink {
    pub a: String,
    pub b: String,
    /// `up`, `down` or `unknown`; `access` for client ↔ edge.
    pub state: String,
    /// From the topology file (else a link a daemon reports, e.g. to a grandfather).
    pub configured: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapStream {
    pub video: String,
    pub colour: String,
    /// The servers whose trees reach the stream's viewers now, by name: one as a rule, two
    /// when each feeds part of the overlay, none when no viewer's path reaches a server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    pub tree: Vec<TreeEdge>,
    /// Failovers summed over the live nodes carrying it.
    pub failovers: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEdge {
    pub from: String,
    pub to: String,
    /// The child's route state (`streaming`, `switching`, ...).
    pub state: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapEvent {
    pub ago_ms: u64,
    /// `failover`, `switch`, `dead`, `back` or `restart`.
    pub kind: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
    pub text: String,
}

struct Received {
    report: Report,
    at: Instant,
    /// Reporting without a break (no restart, death or closed connection) since then.
    since: Instant,
    /// The report connection it came on, and whether that connection has closed.
    conn: u64,
    closed: bool,
}

/// See module docs.
pub struct MapState {
    dead_after: Duration,
    reports: BTreeMap<String, Received>,
    /// Names currently shown dead, to log transitions once.
    dead: BTreeSet<String>,
    events: VecDeque<(Instant, MapEvent)>,
    colours: BTreeMap<String, usize>,
    counters: MapCounters,
}

impl MapState {
    pub fn new(dead_after: Duration) -> MapState {
        MapState {
            dead_after,
            reports: BTreeMap::new(),
            dead: BTreeSet::new(),
            events: VecDeque::new(),
            colours: BTreeMap::new(),
            counters: MapCounters::default(),
        }
    }

    pub fn counters(&self) -> &MapCounters {
        &self.counters
    }

    pub fn note_auth_refused(&mut self) {
        self.counters.auth_refused += 1;
    }

    /// An accepted report was `n` bytes long.
    pub fn note_bytes(&mut self, n: usize) {
        self.counters.report_bytes += n as u64;
    }

    pub fn note_malformed(&mut self) {
        self.counters.reports_malformed += 1;
    }

    fn event(&mut self, now: Instant, kind: &str, node: &str, video: Option<&str>, text: String) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((
            now,
            MapEvent {
                ago_ms: 0,
                kind: kind.into(),
                node: node.into(),
                video: video.map(str::to_string),
                text,
            },
        ));
    }

    /// Take in a daemon's report received at `now`.
    /// Take in a daemon's report received at `now` (on connection 0).
    pub fn ingest(&mut self, report: Report, now: Instant) {
        self.ingest_from(0, report, now)
    }

    /// A report connection closed: its reporter is dead until it reports again.
    pub fn note_closed(&mut self, name: &str, conn: u64) {
        if let Some(r) = self.reports.get_mut(name) {
            // A late close of an old connection must not hide a newer one.
            if r.conn == conn {
                r.closed = true;
            }
        }
    }

    /// Take in a daemon's report received at `now` on report connection `conn`.
    pub fn ingest_from(&mut self, conn: u64, report: Report, now: Instant) {
        if !self.reports.contains_key(&report.name) && self.reports.len() >= MAX_REPORTERS {
            self.counters.reports_dropped += 1;
            return;
        }
        self.counters.reports_accepted += 1;
        let mut sorted: Vec<&str> = report.streams.iter().map(|s| s.video.as_str()).collect();
        sorted.sort_unstable();
        for v in sorted {
            let next = self.colours.len();
            self.colours.entry(v.to_string()).or_insert(next);
        }
        let mut new_events = Vec::new();
        if let Some(prev) = self.reports.get(&report.name) {
            let prev = &prev.report;
            if report.seq < prev.seq {
                new_events.push(("restart", None, format!("{} restarted", report.name)));
            } else {
                for s in &report.streams {
                    let Some(old) = prev.streams.iter().find(|o| o.video == s.video) else {
                        continue;
                    };
                    let from = old.parent.as_deref().unwrap_or("-");
                    let to = s.parent.as_deref().unwrap_or("-");
                    if s.failovers > old.failovers {
                        let gap = s
                            .last_gap_ms
                            .map(|g| format!(", gap {g:.0} ms"))
                            .unwrap_or_default();
                        new_events.push((
                            "failover",
                            Some(s.video.clone()),
                            format!("{}: {} failover {from} → {to}{gap}", report.name, s.video),
                        ));
                    } else if old.parent.is_some() && s.parent.is_some() && old.parent != s.parent {
                        new_events.push((
                            "switch",
                            Some(s.video.clone()),
                            format!("{}: {} switched {from} → {to}", report.name, s.video),
                        ));
                    }
                }
            }
        }
        let name = report.name.clone();
        let restarted = new_events.iter().any(|(k, _, _)| *k == "restart");
        for (kind, video, text) in new_events {
            self.event(now, kind, &name, video.as_deref(), text);
        }
        let since = match self.reports.get(&name) {
            Some(p) if !restarted && !p.closed && !self.dead.contains(&name) => p.since,
            _ => now,
        };
        self.reports.insert(
            name,
            Received {
                report,
                at: now,
                since,
                conn,
                closed: false,
            },
        );
    }

    fn fresh(&self, name: &str, now: Instant) -> Option<&Report> {
        self.reports
            .get(name)
            .filter(|r| now.saturating_duration_since(r.at) <= self.dead_after)
            .map(|r| &r.report)
    }

    /// The map at `now` for `topology`.
    pub fn model(&mut self, topology: &Topology, now: Instant) -> MapModel {
        let names = NameBook::new(topology, self.reports.values().map(|r| &r.report));

        // What each fresh reporter says about each neighbour it can name.
        let mut said: BTreeMap<(String, String), bool> = BTreeMap::new();
        for r in self.reports.values() {
            if now.saturating_duration_since(r.at) > self.dead_after {
                continue;
            }
            for n in &r.report.neighbours {
                if let Some(other) = names.resolve(n) {
                    if other != r.report.name {
                        let up = n.state == "up";
                        let e = said.entry((r.report.name.clone(), other)).or_insert(up);
                        *e |= up;
                    }
                }
            }
        }

        // Clients an edge streams to, by topology name when their address is known.
        let mut watching: Vec<(String, String, String)> = Vec::new(); // (edge, client, video)
        for r in self.reports.values() {
            if now.saturating_duration_since(r.at) > self.dead_after {
                continue;
            }
            for c in &r.report.clients {
                let name = c
                    .addr
                    .parse::<SocketAddr>()
                    .ok()
                    .and_then(|sa| names.by_addr(sa.ip(), None))
                    .unwrap_or_else(|| c.addr.clone());
                watching.push((r.report.name.clone(), name, c.video.clone()));
            }
        }

        // Liveness of everyone we know of.
        let mut all: BTreeSet<String> = topology.names().map(str::to_string).collect();
        all.extend(self.reports.keys().cloned());
        let mut state: BTreeMap<String, (&'static str, Option<&'static str>)> = BTreeMap::new();
        let mut views_of: BTreeMap<&str, Vec<bool>> = BTreeMap::new();
        for ((_, other), up) in &said {
            views_of.entry(other.as_str()).or_default().push(*up);
        }
        for name in &all {
            let views = views_of.get(name.as_str()).map_or(&[][..], |v| &v[..]);
            let all_down = !views.is_empty() && views.iter().all(|up| !up);
            let rec = self.reports.get(name);
            let closed = rec.is_some_and(|r| r.closed);
            let settled =
                rec.is_some_and(|r| now.saturating_duration_since(r.since) >= self.dead_after);
            let s = match (rec.is_some(), self.fresh(name, now)) {
                (_, Some(_)) if closed => ("dead", Some("exited")),
                (_, Some(_)) if all_down && settled => ("dead", Some("neighbours")),
                (_, Some(_)) => ("alive", None),
                (true, None) => ("dead", Some("silent")),
                (false, None) if views.iter().any(|up| *up) => ("alive", None),
                (false, None) if watching.iter().any(|(_, c, _)| c == name) => ("alive", None),
                (false, None) => ("unknown", None),
            };
            state.insert(name.clone(), s);
        }
        for (name, (s, why)) in &state {
            let was_dead = self.dead.contains(name);
            if *s == "dead" && !was_dead {
                self.dead.insert(name.clone());
                let why = match why {
                    Some("neighbours") => "its neighbours report it down",
                    Some("exited") => "its report connection closed",
                    _ => "its reports stopped",
                };
                self.event(now, "dead", name, None, format!("{name} dead: {why}"));
            } else if *s == "alive" && was_dead {
                self.dead.remove(name);
                self.event(now, "back", name, None, format!("{name} is back"));
            }
        }
        let alive = |n: &str| state.get(n).is_some_and(|(s, _)| *s == "alive");

        // Links: the topology's, then live ones only the daemons know of.
        let mut links: BTreeMap<(String, String), MapLink> = BTreeMap::new();
        for d in topology.devices() {
            for addr in &d.neighbours {
                let Some(other) = names.by_addr(addr.ip, addr.port) else {
                    continue;
                };
                if other == d.name {
                    continue;
                }
                let client = d.role == DeviceRole::Client
                    || topology
                        .get(&other)
                        .is_some_and(|o| o.role == DeviceRole::Client);
                let key = pair(&d.name, &other);
                let link = links.entry(key.clone()).or_insert_with(|| MapLink {
                    a: key.0.clone(),
                    b: key.1.clone(),
                    state: String::new(),
                    configured: true,
                });
                if client {
                    link.state = "access".into();
                }
            }
        }
        for ((from, to), up) in &said {
            if *up && alive(from) {
                let key = pair(from, to);
                links.entry(key.clone()).or_insert_with(|| MapLink {
                    a: key.0,
                    b: key.1,
                    state: String::new(),
                    configured: false,
                });
            }
        }
        for link in links.values_mut() {
            if link.state == "access" {
                continue;
            }
            let views: Vec<bool> = [(&link.a, &link.b), (&link.b, &link.a)]
                .iter()
                .filter(|(x, _)| alive(x))
                .filter_map(|(x, y)| said.get(&((*x).clone(), (*y).clone())).copied())
                .collect();
            let dead_end = [&link.a, &link.b]
                .iter()
                .any(|n| state.get(*n).is_some_and(|(s, _)| *s == "dead"));
            link.state = if dead_end || (!views.is_empty() && views.iter().all(|up| !up)) {
                "down"
            } else if views.iter().any(|up| *up) {
                "up"
            } else {
                "unknown"
            }
            .into();
        }

        // Trees: every live reporter's parent edge, plus children that cannot report.
        let mut streams: BTreeMap<String, MapStream> = BTreeMap::new();
        let mut consumers: BTreeSet<String> = BTreeSet::new();
        let mut local: BTreeMap<String, u32> = BTreeMap::new();
        // Per video: who reports it, who is its source, who has local viewers of it.
        let mut carriers: BTreeMap<String, Carriers> = BTreeMap::new();
        for r in self.reports.values() {
            let rep = &r.report;
            if !alive(&rep.name) {
                continue;
            }
            for s in &rep.streams {
                let colour = self
                    .colours
                    .get(&s.video)
                    .map_or(PALETTE[0], |i| PALETTE[i % PALETTE.len()]);
                let ms = streams.entry(s.video.clone()).or_insert_with(|| MapStream {
                    video: s.video.clone(),
                    colour: colour.to_string(),
                    ..Default::default()
                });
                let c = carriers.entry(s.video.clone()).or_default();
                c.reporters.insert(rep.name.clone());
                if s.state == "source" {
                    c.sources.insert(rep.name.clone());
                }
                if s.local > 0 {
                    c.viewers.insert(rep.name.clone());
                }
                ms.failovers += s.failovers;
                *local.entry(rep.name.clone()).or_default() += s.local;
                if let Some(p) = &s.parent {
                    ms.tree.push(TreeEdge {
                        from: p.clone(),
                        to: rep.name.clone(),
                        state: s.state.clone(),
                    });
                }
                for c in &s.children {
                    if self.reports.contains_key(c) {
                        continue;
                    }
                    if topology.get(c).is_none() {
                        consumers.insert(c.clone());
                    }
                    ms.tree.push(TreeEdge {
                        from: rep.name.clone(),
                        to: c.clone(),
                        state: "streaming".into(),
                    });
                }
            }
        }
        for (edge, client, video) in &watching {
            if !alive(edge) {
                continue;
            }
            let Some(ms) = streams.get_mut(video) else {
                continue;
            };
            if topology.get(client).is_none() {
                consumers.insert(client.clone());
            }
            ms.tree.push(TreeEdge {
                from: edge.clone(),
                to: client.clone(),
                state: "streaming".into(),
            });
        }
        for s in streams.values_mut() {
            s.tree
                .sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
            s.tree.dedup_by(|a, b| a.from == b.from && a.to == b.to);
            if let Some(c) = carriers.get(&s.video) {
                s.servers = c.feeding(&s.tree);
            }
        }

        // Nodes and layout.
        let role_of = |name: &str| -> String {
            if let Some(d) = topology.get(name) {
                return d.role.as_str().to_string();
            }
            if let Some(r) = self.reports.get(name) {
                return r.report.role.clone();
            }
            "consumer".into()
        };
        let mut nodes: Vec<MapNode> = all
            .iter()
            .chain(consumers.iter().filter(|c| !all.contains(*c)))
            .map(|name| {
                let (s, why) = state.get(name).copied().unwrap_or(("alive", None));
                MapNode {
                    name: name.clone(),
                    role: role_of(name),
                    state: s.into(),
                    dead_reason: why.filter(|_| s == "dead").map(str::to_string),
                    in_topology: topology.get(name).is_some(),
                    report_age_ms: self
                        .reports
                        .get(name)
                        .map(|r| now.saturating_duration_since(r.at).as_millis() as u64),
                    local: local.get(name).copied().unwrap_or(0),
                    recent: None,
                    x: 0.0,
                    y: 0.0,
                }
            })
            .collect();
        for n in nodes.iter_mut() {
            n.recent = self
                .events
                .iter()
                .rev()
                .take_while(|(at, _)| now.saturating_duration_since(*at) < RECENT)
                .find(|(_, e)| e.node == n.name)
                .map(|(_, e)| e.kind.clone());
        }
        let height = layout(&mut nodes, &links, topology);

        let events = self
            .events
            .iter()
            .rev()
            .map(|(at, e)| MapEvent {
                ago_ms: now.saturating_duration_since(*at).as_millis() as u64,
                ..e.clone()
            })
            .collect();
        MapModel {
            version: 1,
            width: MAP_WIDTH,
            height,
            dead_after_ms: self.dead_after.as_millis() as u64,
            nodes,
            links: links.into_values().collect(),
            streams: streams.into_values().collect(),
            events,
            counters: self.counters.clone(),
        }
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The reporters of one video, for finding the servers its viewers are fed from.
#[derive(Debug, Default)]
struct Carriers {
    /// Live reporters carrying the video.
    reporters: BTreeSet<String>,
    /// Those that are its source (servers).
    sources: BTreeSet<String>,
    /// Those with local viewers of it.
    viewers: BTreeSet<String>,
}

impl Carriers {
    /// The sources the viewers are reached from, walking `tree` up from every viewer: the
    /// reporters with local viewers, and every child that does not report the video itself
    /// (clients, test consumers). Without any viewer, the sources that feed someone.
    fn feeding(&self, tree: &[TreeEdge]) -> Vec<String> {
        let mut parents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in tree {
            parents
                .entry(e.to.as_str())
                .or_default()
                .push(e.from.as_str());
        }
        let mut todo: Vec<&str> = tree
            .iter()
            .map(|e| e.to.as_str())
            .filter(|to| !self.reporters.contains(*to))
            .chain(self.viewers.iter().map(String::as_str))
            .collect();
        if todo.is_empty() {
            return self
                .sources
                .iter()
                .filter(|s| tree.iter().any(|e| e.from == **s))
                .cloned()
                .collect();
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                todo.extend(parents.get(n).into_iter().flatten());
            }
        }
        self.sources
            .iter()
            .filter(|s| seen.contains(s.as_str()))
            .cloned()
            .collect()
    }
}

/// Addresses → device names, from the topology's `addresses` and from what daemons report.
struct NameBook {
    by_socket: HashMap<SocketAddr, String>,
    by_ip: HashMap<IpAddr, String>,
}

impl NameBook {
    fn new<'a>(topology: &Topology, reports: impl Iterator<Item = &'a Report>) -> NameBook {
        let mut book = NameBook {
            by_socket: HashMap::new(),
            by_ip: HashMap::new(),
        };
        for d in topology.devices() {
            for ip in &d.addresses {
                book.by_ip.entry(*ip).or_insert_with(|| d.name.clone());
            }
        }
        for r in reports {
            book.learn(&r.listen, &r.name);
            for n in r.neighbours.iter().filter(|n| !n.name.is_empty()) {
                book.learn(&n.addr, &n.name);
            }
        }
        book
    }

    fn learn(&mut self, addr: &str, name: &str) {
        let Ok(sa) = addr.parse::<SocketAddr>() else {
            return;
        };
        // A wildcard listen address names nobody.
        if sa.ip().is_unspecified() {
            return;
        }
        self.by_socket.insert(sa, name.to_string());
        self.by_ip
            .entry(sa.ip())
            .or_insert_with(|| name.to_string());
    }

    fn by_addr(&self, ip: IpAddr, port: Option<u16>) -> Option<String> {
        port.and_then(|p| self.by_socket.get(&SocketAddr::new(ip, p)))
            .or_else(|| self.by_ip.get(&ip))
            .cloned()
    }

    fn resolve(&self, n: &ReportNeighbour) -> Option<String> {
        if !n.name.is_empty() {
            return Some(n.name.clone());
        }
        let sa = n.addr.parse::<SocketAddr>().ok()?;
        self.by_addr(sa.ip(), Some(sa.port()))
    }
}

/// Place nodes in rows (see module docs); returns the canvas height.
fn layout(
    nodes: &mut [MapNode],
    links: &BTreeMap<(String, String), MapLink>,
    topo: &Topology,
) -> f64 {
    // Hop count from the servers over non-client links.
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in links.values().filter(|l| l.state != "access") {
        adj.entry(&l.a).or_default().push(&l.b);
        adj.entry(&l.b).or_default().push(&l.a);
    }
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    let mut queue: VecDeque<&str> = VecDeque::new();
    for n in nodes.iter().filter(|n| n.role == "server") {
        depth.insert(&n.name, 0);
        queue.push_back(&n.name);
    }
    while let Some(n) = queue.pop_front() {
        let d = depth[n];
        for m in adj.get(n).into_iter().flatten() {
            if !depth.contains_key(m) {
                depth.insert(m, d + 1);
                queue.push_back(m);
            }
        }
    }
    let node_rows: Vec<usize> = nodes
        .iter()
        .filter(|n| n.role == "node")
        .map(|n| depth.get(n.name.as_str()).copied().unwrap_or(1).max(1))
        .collect();
    let max_node = node_rows.iter().copied().max().unwrap_or(0);
    let edge_row = max_node + 1;
    // Without edges, clients and consumers sit right under the nodes.
    let bottom_row = if nodes.iter().any(|n| n.role == "edge") {
        edge_row + 1
    } else {
        edge_row
    };
    let rows: Vec<usize> = nodes
        .iter()
        .map(|n| match n.role.as_str() {
            "server" => 0,
            "node" => depth.get(n.name.as_str()).copied().unwrap_or(1).max(1),
            "edge" => edge_row,
            _ => bottom_row,
        })
        .collect();
    let last = rows.iter().copied().max().unwrap_or(0);
    for row in 0..=last {
        let members: Vec<usize> = (0..nodes.len()).filter(|i| rows[*i] == row).collect();
        let count = members.len() as f64;
        for (k, i) in members.into_iter().enumerate() {
            nodes[i].x = MAP_WIDTH * (k as f64 + 1.0) / (count + 1.0);
            nodes[i].y = TOP_MARGIN + ROW_HEIGHT * row as f64;
        }
    }
    // Positions from the topology file win.
    for n in nodes.iter_mut() {
        if let Some(d) = topo.get(&n.name) {
            if let (Some(x), Some(y)) = (
                d.raw.get("x").and_then(|v| v.as_f64()),
                d.raw.get("y").and_then(|v| v.as_f64()),
            ) {
                n.x = x;
                n.y = y;
            }
        }
    }
    let bottom = nodes.iter().map(|n| n.y).fold(0.0, f64::max);
    bottom + TOP_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology;

    /// S1 - {O1, O2} - O3 (edge), with addresses 10.0.0.N.
    fn diamond(extra_o3: &str) -> Topology {
        let text = format!(
            r#"{{
  "S1": {{ "neighbours": ["10.0.0.2", "10.0.0.3"], "addresses": ["10.0.0.1"] }},
  "O1": {{ "neighbours": ["10.0.0.1", "10.0.0.4"], "addresses": ["10.0.0.2"] }},
  "O2": {{ "neighbours": ["10.0.0.1", "10.0.0.4"], "addresses": ["10.0.0.3"] }},
  "O3": {{ "neighbours": ["10.0.0.2", "10.0.0.3"], "addresses": ["10.0.0.4"], "edge": true {extra_o3} }}
}}"#
        );
        topology::parse(&text, "t.json").unwrap()
    }

    fn nb(name: &str, ip: u8, state: &str) -> ReportNeighbour {
        ReportNeighbour {
            name: name.into(),
            addr: format!("10.0.0.{ip}:7701"),
            state: state.into(),
        }
    }

    fn stream(parent: Option<&str>, children: &[&str], state: &str) -> ReportStream {
        ReportStream {
            video: "alpha".into(),
            server: Some("S1".into()),
            parent: parent.map(str::to_string),
            children: children.iter().map(|c| c.to_string()).collect(),
            local: 0,
            state: state.into(),
            failovers: 0,
            last_gap_ms: None,
        }
    }

    fn report(
        name: &str,
        ip: u8,
        seq: u64,
        nbs: Vec<ReportNeighbour>,
        s: Vec<ReportStream>,
    ) -> Report {
        Report {
            version: REPORT_VERSION,
            name: name.into(),
            role: if name.starts_with('S') {
                "server"
            } else {
                "node"
            }
            .into(),
            seq,
            listen: format!("10.0.0.{ip}:7701"),
            neighbours: nbs,
            streams: s,
            clients: vec![],
        }
    }

    fn node<'a>(m: &'a MapModel, name: &str) -> &'a MapNode {
        m.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn link<'a>(m: &'a MapModel, a: &str, b: &str) -> &'a MapLink {
        m.links.iter().find(|l| l.a == a && l.b == b).unwrap()
    }

    fn tree(m: &MapModel) -> Vec<(String, String)> {
        m.streams[0]
            .tree
            .iter()
            .map(|e| (e.from.clone(), e.to.clone()))
            .collect()
    }

    fn edges(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Reports of the healthy diamond at `seq`, the stream going S1 → O1 → O3 → consumer TC.
    fn healthy(map: &mut MapState, seq: u64, now: Instant) {
        map.ingest(
            report(
                "S1",
                1,
                seq,
                vec![nb("O1", 2, "up"), nb("O2", 3, "up")],
                vec![stream(None, &["O1"], "source")],
            ),
            now,
        );
        map.ingest(
            report(
                "O1",
                2,
                seq,
                vec![nb("S1", 1, "up"), nb("O3", 4, "up")],
                vec![stream(Some("S1"), &["O3"], "streaming")],
            ),
            now,
        );
        map.ingest(
            report(
                "O2",
                3,
                seq,
                vec![nb("S1", 1, "up"), nb("O3", 4, "up")],
                vec![],
            ),
            now,
        );
        map.ingest(
            report(
                "O3",
                4,
                seq,
                vec![nb("O1", 2, "up"), nb("O2", 3, "up")],
                vec![stream(Some("O1"), &["TC"], "streaming")],
            ),
            now,
        );
    }

    #[test]
    fn healthy_overlay_shows_nodes_links_and_tree() {
        let topo = diamond("");
        let t0 = Instant::now();
        let mut map = MapState::new(DEFAULT_DEAD_AFTER);
        healthy(&mut map, 1, t0);
        let m = map.model(&topo, t0 + Duration::from_millis(500));
        for n in ["S1", "O1", "O2", "O3"] {
            assert_eq!(node(&m, n).state, "alive", "{n}");
            assert!(node(&m, n).in_topology);
        }
        assert_eq!(node(&m, "O3").role, "edge");
        // The consumer is in no topology: drawn as a consumer below the edge.
        let tc = node(&m, "TC");
        assert_eq!(tc.role, "consumer");
        assert!(tc.y > node(&m, "O3").y);
        assert!(node(&m, "S1").y < node(&m, "O1").y);
        assert!(node(&m, "O1").y < node(&m, "O3").y);
        assert_eq!(m.links.len(), 4, "{:?}", m.links);
        assert!(m.links.iter().all(|l| l.state == "up" && l.configured));
        assert_eq!(m.streams.len(), 1);
        assert_eq!(m.streams[0].servers, ["S1"]);
        assert_eq!(m.streams[0].colour, PALETTE[0]);
        assert_eq!(tree(&m), edges(&[("O1", "O3"), ("O3", "TC"), ("S1", "O1")]));
        assert!(m.events.is_empty(), "{:?}", m.events);
    }

    /// A report of `name` at `ip` with every neighbour up and the given streams of "alpha".
    fn up_report(
        name: &str,
        ip: u8,
        seq: u64,
        neighbours: &[(&str, u8)],
        s: Vec<ReportStream>,
    ) -> Report {
        let nbs = neighbours.iter().map(|(n, i)| nb(n, *i, "up")).collect();
        report(name, ip, seq, nbs, s)
    }

    /// The diamond plus a second server S2 (10.0.0.9) behind O2, both servers offering
    /// "alpha". `s1`, `s2`, `o1`, `o2`, `o3`: what each reports about the stream.
    fn two_servers(
        map: &mut MapState,
        seq: u64,
        now: Instant,
        [s1, s2, o1, o2, o3]: [Vec<ReportStream>; 5],
    ) {
        for r in [
            up_report("S1", 1, seq, &[("O1", 2), ("O2", 3)], s1),
            up_report("S2", 9, seq, &[("O2", 3)], s2),
            up_report("O1", 2, seq, &[("S1", 1), ("O3", 4)], o1),
            up_report("O2", 3, seq, &[("S1", 1), ("S2", 9), ("O3", 4)], o2),
            up_report("O3", 4, seq, &[("O1", 2), ("O2", 3)], o3),
        ] {
            map.ingest(r, now);
        }
    }

    /// The legend's server is the one whose tree reaches the viewers now: after a failover from
    /// S2 to S1, S2 may still run its source for a while (or O2 still carry the stream), but the
    /// consumer is fed from S1.
    #[test]
    fn the_stream_is_named_after_the_server_that_feeds_its_viewers_now() {
        let topo = diamond("");
        let t0 = Instant::now();
        let mut map = MapState::new(DEFAULT_DEAD_AFTER);
        // Before: S2 → O2 → O3 → TC; S1 does not carry alpha.
        two_servers(
            &mut map,
            1,
            t0,
            [
                vec![],
                vec![stream(None, &["O2"], "source")],
                vec![],
                vec![stream(Some("S2"), &["O3"], "streaming")],
                vec![stream(Some("O2"), &["TC"], "streaming")],
            ],
        );
        let m = map.model(&topo, t0 + Duration::from_millis(100));
        assert_eq!(m.streams[0].servers, ["S2"], "{:?}", m.streams);
        // After: O3 moved to S1 → O1; S2 still runs its source towards O2, which no longer
        // feeds anyone.
        let t1 = t0 + Duration::from_secs(1);
        two_servers(
            &mut map,
            2,
            t1,
            [
                vec![stream(None, &["O1"], "source")],
                vec![stream(None, &["O2"], "source")],
                vec![stream(Some("S1"), &["O3"], "streaming")],
                vec![stream(Some("S2"), &[], "streaming")],
                vec![stream(Some("O1"), &["TC"], "streaming")],
            ],
        );
        let m = map.model(&topo, t1 + Duration::from_millis(100));
        assert_eq!(m.streams[0].servers, ["S1"], "{:?}", m.streams);
        // Both servers feed a viewer each (O2 has a local one from S2): both are named.
        let mut o2 = stream(Some("S2"), &[], "streaming");
        o2.local = 1;
        two_servers(
            &mut map,
            3,
            t1,
            [
                vec![stream(None, &["O1"], "source")],
                vec![stream(None, &["O2"], "source")],
                vec![stream(Some("S1"), &["O3"], "streaming")],
                vec![o2],
                vec![stream(Some("O1"), &["TC"], "streaming")],
            ],
        );
        let m = map.model(&topo, t1 + Duration::from_millis(200));
        assert_eq!(m.streams[0].servers, ["S1", "S2"], "{:?}", m.streams);
        // O3 lost its parent and nothing feeds it: no server is named, though S1 runs a source.
        two_servers(
            &mut map,
            4,
            t1,
            [
                vec![stream(None, &[], "source")],
                vec![],
                vec![],
                vec![],
                vec![stream(None, &["TC"], "pending")],
            ],
        );
        let m = map.model(&topo, t1 + Duration::from_millis(300));
        assert!(m.streams[0].servers.is_empty(), "{:?}", m.streams);
    }

    #[test]
    fn a_killed_relay_is_dead_and_the_tree_moves() {
        let topo = diamond("");
        let t0 = Instant::now();
        let mut map = MapState::new(DEFAULT_DEAD_AFTER);
        healthy(&mut map, 1, t0);
        healthy(&mut map, 2, t0 + Duration::from_secs(3));
        // O1 hangs: its reports stop; a second later its neighbours report it down and O3
        // has failed over to O2.
        let t1 = t0 + Duration::from_secs(4);
        map.ingest(
            report(
                "S1",
                1,
                2,
                vec![nb("", 2, "down"), nb("O2", 3, "up")],
                vec![stream(None, &["O2"], "source")],
            ),
            t1,
        );
        map.ingest(
            report(
                "O2",
                3,
                2,
                vec![nb("S1", 1, "up"), nb("O3", 4, "up")],
                vec![stream(Some("S1"), &["O3"], "streaming")],
            ),
            t1,
        );
        let mut s = stream(Some("O2"), &["TC"], "streaming");
        s.failovers = 1;
        s.last_gap_ms = Some(420.0);
        map.ingest(
            report(
                "O3",
                4,
                2,
                vec![nb("O1", 2, "down"), nb("O2", 3, "up")],
                vec![s],
            ),
            t1,
        );
        let m = map.model(&topo, t1 + Duration::from_millis(100));
        let o1 = node(&m, "O1");
        assert_eq!(o1.state, "dead");
        assert_eq!(o1.dead_reason.as_deref(), Some("neighbours"));
        assert_eq!(link(&m, "O1", "S1").state, "down");
        assert_eq!(link(&m, "O1", "O3").state, "down");
        assert_eq!(link(&m, "O2", "S1").state, "up");
        assert_eq!(tree(&m), edges(&[("O2", "O3"), ("O3", "TC"), ("S1", "O2")]));
        assert_eq!(m.streams[0].failovers, 1);
        // O3 just failed over: highlighted for a while, not forever.
        assert_eq!(node(&m, "O3").recent.as_deref(), Some("failover"));
        assert_eq!(node(&m, "O2").recent, None);
        let kinds: Vec<&str> = m.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["dead", "failover"]);
        assert!(m.events[1].text.contains("O1 → O2"), "{}", m.events[1].text);
        assert!(
            m.events[1].text.contains("gap 420 ms"),
            "{}",
            m.events[1].text
        );
        // The death is announced once.
        let m = map.model(&topo, t1 + Duration::from_millis(200));
        assert_eq!(m.events.len(), 2);
        // The failover halo goes after a while (O3 is silent by then: its newest event is
        // its own death).
        let later = map.model(&topo, t1 + RECENT + Duration::from_secs(1));
        assert_ne!(node(&later, "O3").recent.as_deref(), Some("failover"));
        assert_eq!(node(&later, "O1").recent, None);
    }

    #[test]
    fn silence_means_dead_and_a_new_report_brings_it_back() {
        let topo = diamond("");
        let t0 = Instant::now();
        let mut map = MapState::new(Duration::from_secs(3));
        map.ingest(report("O2", 3, 5, vec![], vec![]), t0);
        assert_eq!(
            node(&map.model(&topo, t0 + Duration::from_secs(3)), "O2").state,
            "alive"
        );
        let m = map.model(&topo, t0 + Duration::from_millis(3001));
        assert_eq!(node(&m, "O2").state, "dead");
        assert_eq!(node(&m, "O2").dead_reason.as_deref(), Some("silent"));
        // Never reported, nobody knows: unknown, not dead.
        assert_eq!(node(&m, "O1").state, "unknown");
        assert_eq!(link(&m, "O1", "S1").state, "unknown");
        // A restarted daemon counts again from 0.
        let t2 = t0 + Duration::from_secs(5);
        map.ingest(report("O2", 3, 0, vec![], vec![]), t2);
        let m = map.model(&topo, t2);
        assert_eq!(node(&m, "O2").state, "alive");
        let kinds: Vec<&str> = m.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["back", "restart", "dead"]);
    }

    #[test]
    fn layout_is_stable_and_topology_positions_win() {
        let topo = diamond(r#", "x": 123, "y": 456"#);
        let t0 = Instant::now();
        let mut a = MapState::new(DEFAULT_DEAD_AFTER);
        let mut b = MapState::new(DEFAULT_DEAD_AFTER);
        healthy(&mut a, 1, t0);
        healthy(&mut b, 1, t0);
        let ma = a.model(&topo, t0);
        let mb = b.model(&topo, t0);
        assert_eq!(ma.nodes, mb.nodes);
        let o3 = node(&ma, "O3");
        assert_eq!((o3.x, o3.y), (123.0, 456.0));
        // O1 and O2 share a row, side by side.
        assert_eq!(node(&ma, "O1").y, node(&ma, "O2").y);
        assert!(node(&ma, "O1").x < node(&ma, "O2").x);
        assert!(ma.height >= 456.0);
    }

    #[test]
    fn a_starting_daemon_is_not_dead_and_a_closed_reporter_is() {
        let topo = diamond("");
        let t0 = Instant::now();
        let mut map = MapState::new(DEFAULT_DEAD_AFTER);
        // O2 has just started: its links are not up yet, and S1 and O3 say so.
        map.ingest_from(
            7,
            report("O2", 3, 0, vec![nb("", 1, "connecting")], vec![]),
            t0,
        );
        map.ingest(
            report("S1", 1, 0, vec![nb("", 3, "connecting")], vec![]),
            t0,
        );
        map.ingest(report("O3", 4, 0, vec![nb("", 3, "down")], vec![]), t0);
        let m = map.model(&topo, t0 + Duration::from_secs(1));
        assert_eq!(node(&m, "O2").state, "alive");
        // Still cut off once it has been reporting for dead_after: dead by its neighbours.
        let t1 = t0 + Duration::from_secs(3);
        map.ingest_from(7, report("O2", 3, 1, vec![nb("", 1, "down")], vec![]), t1);
        map.ingest(report("S1", 1, 1, vec![nb("", 3, "down")], vec![]), t1);
        map.ingest(report("O3", 4, 1, vec![nb("", 3, "down")], vec![]), t1);
        let m = map.model(&topo, t1);
        assert_eq!(node(&m, "O2").dead_reason.as_deref(), Some("neighbours"));

        // S1's report connection closes (killed): dead at once, though its report is fresh.
        map.note_closed("S1", 0);
        let m = map.model(&topo, t1 + Duration::from_millis(10));
        assert_eq!(node(&m, "S1").state, "dead");
        assert_eq!(node(&m, "S1").dead_reason.as_deref(), Some("exited"));
        // The late close of an older connection of O3 changes nothing.
        map.note_closed("O3", 99);
        let m = map.model(&topo, t1 + Duration::from_millis(20));
        assert_eq!(node(&m, "O3").state, "alive");
        // S1 back on a new connection (restarted: seq from 0).
        map.ingest_from(
            8,
            report("S1", 1, 0, vec![], vec![]),
            t1 + Duration::from_secs(1),
        );
        let m = map.model(&topo, t1 + Duration::from_secs(1));
        assert_eq!(node(&m, "S1").state, "alive");
        assert_eq!(m.events[0].kind, "back");
    }

    #[test]
    fn an_edges_clients_are_drawn_watching() {
        let topo = topology::parse(
            r#"{
  "S1": { "neighbours": ["10.0.0.4"], "addresses": ["10.0.0.1"] },
  "O3": { "neighbours": ["10.0.0.1"], "addresses": ["10.0.0.4"], "edge": true },
  "C1": { "neighbours": ["10.0.0.4"], "addresses": ["10.0.0.31"] },
  "C2": { "neighbours": ["10.0.0.4"], "addresses": ["10.0.0.32"] }
}"#,
            "t.json",
        )
        .unwrap();
        let t0 = Instant::now();
        let mut map = MapState::new(DEFAULT_DEAD_AFTER);
        map.ingest(
            report(
                "S1",
                1,
                0,
                vec![nb("O3", 4, "up")],
                vec![stream(None, &["O3"], "source")],
            ),
            t0,
        );
        let mut o3 = report(
            "O3",
            4,
            0,
            vec![nb("S1", 1, "up")],
            vec![stream(Some("S1"), &[], "streaming")],
        );
        o3.clients = vec![
            ReportClient {
                addr: "10.0.0.31:7703".into(),
                video: "alpha".into(),
            },
            // A client the topology does not know: drawn by its address.
            ReportClient {
                addr: "10.0.0.99:7703".into(),
                video: "alpha".into(),
            },
        ];
        map.ingest(o3, t0);
        let m = map.model(&topo, t0);
        assert_eq!(node(&m, "C1").state, "alive");
        assert_eq!(node(&m, "C2").state, "unknown");
        assert_eq!(node(&m, "10.0.0.99:7703").role, "consumer");
        assert_eq!(link(&m, "C1", "O3").state, "access");
        assert_eq!(
            tree(&m),
            edges(&[("O3", "10.0.0.99:7703"), ("O3", "C1"), ("S1", "O3")])
        );
        // Clients sit below the edge.
        assert!(node(&m, "C1").y > node(&m, "O3").y);
    }

    #[test]
    fn report_from_status_splits_children_and_local_consumers() {
        use crate::observe::snapshot::{NeighbourStatus, RouteStatus, StreamStatus};
        let mut st = NodeStatus {
            name: "O3".into(),
            role: "edge".into(),
            ..Default::default()
        };
        st.neighbours.push(NeighbourStatus {
            name: "O1".into(),
            addr: "10.0.0.2:7701".into(),
            state: "up".into(),
            ..Default::default()
        });
        st.routes.push(RouteStatus {
            stream: "alpha".into(),
            origin: Some("S1".into()),
            destinations: vec!["O4".into(), "local×2".into()],
            state: "streaming".into(),
            parent: Some("O1".into()),
            ..Default::default()
        });
        let mut ss = StreamStatus {
            stream: "alpha".into(),
            last_failover_gap_ms: Some(12.5),
            ..Default::default()
        };
        ss.counters.failovers = 3;
        st.streams.push(ss);
        let clients = [("10.0.0.31:7703".parse().unwrap(), "alpha".to_string())];
        let r = report_from_status(&st, "10.0.0.4:7701".parse().unwrap(), 9, &clients);
        assert_eq!(r.clients[0].addr, "10.0.0.31:7703");
        assert_eq!(r.name, "O3");
        assert_eq!(r.seq, 9);
        assert_eq!(r.neighbours[0].name, "O1");
        let s = &r.streams[0];
        assert_eq!(s.children, ["O4"]);
        assert_eq!(s.local, 2);
        assert_eq!(s.parent.as_deref(), Some("O1"));
        assert_eq!((s.failovers, s.last_gap_ms), (3, Some(12.5)));
        // And it survives the codec.
        let bytes = crate::wire::report::encode_report(&r);
        assert_eq!(crate::wire::report::decode_report(&bytes).unwrap(), r);

        // A huge node's lists are cut, so the map still takes its report.
        st.neighbours = vec![st.neighbours[0].clone(); MAX_ITEMS + 50];
        st.routes[0].destinations = (0..MAX_ITEMS + 50).map(|i| format!("N{i}")).collect();
        let r = report_from_status(&st, "10.0.0.4:7701".parse().unwrap(), 10, &[]);
        assert_eq!(r.neighbours.len(), MAX_ITEMS);
        assert_eq!(r.streams[0].children.len(), MAX_ITEMS);
        let bytes = crate::wire::report::encode_report(&r);
        assert!(crate::wire::report::decode_report(&bytes).is_ok());
    }
}
