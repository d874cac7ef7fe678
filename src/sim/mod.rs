//! A deterministic many-node simulator for the overlay: virtual time, real [`Node`]s.
//!
//! It owns a virtual clock (a fixed base `Instant` plus an offset), an event queue ordered by
//! (time, insertion number), and a model of the network between nodes. Links behave like the
//! TCP connections the daemon uses: reliable and in order per direction, with a one-way delay,
//! jitter that never reorders within a connection, and loss modelled as a retransmission delay.
//! Links are declared one by one, or all at once from a topology file
//! ([`Sim::from_topology`]): its link parameters compounded along the underlay's routes.
//! A cut is silent (nothing passes, nothing closes; what was sent waits for the restore); a
//! crash closes every connection of the node (peers see the close one link delay later); a
//! hang freezes the node (it handles nothing and sends nothing, and peers must notice by
//! keepalive); a restart brings up a fresh `Node` with the same name and address.
//!
//! Every run with the same seed and the same script is identical: randomness comes only from
//! one seeded `StdRng`, and no iteration order depends on hashing. Servers get a synthetic
//! source (a chunk every `chunk_interval` while `SourceStart` holds). The simulator records what
//! each local consumer received, how many times each chunk crossed each overlay connection,
//! and lets tests read every node's tables.
//!
//! Time is driven exactly as the daemons' drivers drive it: each node has at most one timer
//! event queued, at its [`Node::poll_timeout`] (none when it returns `None`), and virtual time
//! jumps from one event to the next; nothing ticks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub mod fuzz;

use crate::overlay::{LinkId, Node, NodeConfig, Output};
use crate::topology::DeviceRole;
use crate::wire::overlay::{OverlayMsg, OverlayRole, TraceHop};

/// Wall clock (µs since the UNIX epoch) at virtual time zero, before per-node skew.
const WALL_BASE_US: u64 = 1_700_000_000_000_000;
/// Overlay port every simulated node listens on.
const PORT: u16 = 7700;

/// Behaviour of the path between two nodes: the topology's link description. Duplication and
/// rate are not modelled (TCP hides duplicates; the overlay's streams are far below any rate a
/// scenario gives), and loss is read per message (see [`LinkParams::loss`]).
pub use crate::topology::LinkParams;

/// One chunk a local consumer received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub at: Duration,
    pub epoch: u64,
    pub seq: u64,
}

/// What a consumer's delivered sequence looks like.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqReport {
    pub chunks: usize,
    /// Chunks delivered more than once.
    pub duplicates: usize,
    /// Chunks delivered after a later one of the same epoch.
    pub reorderings: usize,
    /// Chunks never delivered inside an epoch (holes in the sequence).
    pub missing: u64,
    /// Epoch changes seen (stream restarts).
    pub epoch_changes: usize,
    /// Longest time between two consecutive deliveries.
    pub max_gap: Duration,
    /// When the longest gap started.
    pub max_gap_at: Duration,
}

/// Summarise a delivered sequence, optionally only deliveries at or after `from`.
pub fn seq_report(d: &[Delivery], from: Duration) -> SeqReport {
    let mut r = SeqReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut prev: Option<&Delivery> = None;
    for x in d.iter().filter(|x| x.at >= from) {
        r.chunks += 1;
        if !seen.insert((x.epoch, x.seq)) {
            r.duplicates += 1;
        }
        if let Some(p) = prev {
            if p.epoch != x.epoch {
                r.epoch_changes += 1;
            } else if x.seq < p.seq {
                r.reorderings += 1;
            } else if x.seq > p.seq + 1 {
                r.missing += x.seq - p.seq - 1;
            }
            let gap = x.at - p.at;
            if gap > r.max_gap {
                r.max_gap = gap;
                r.max_gap_at = p.at;
            }
        }
        prev = Some(x);
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Defined but not started, or crashed.
    Down,
    Up,
    /// Frozen (SIGSTOP): events wait in the backlog.
    Hung,
}

struct SimNode {
    name: String,
    addr: SocketAddr,
    config: NodeConfig,
    node: Option<Node>,
    state: State,
    /// Incarnation: bumped at every crash, so stale events are dropped.
    generation: u64,
    skew_us: i64,
    timer_at: Option<Duration>,
    backlog: VecDeque<Event>,
    /// Active sources: video -> run number.
    sources: BTreeMap<String, u64>,
    links: BTreeMap<LinkId, u64>,
    delivered: BTreeMap<String, Vec<Delivery>>,
}

/// One TCP connection: side 0 dialled, side 1 accepted.
struct Conn {
    ends: [usize; 2],
    generations: [u64; 2],
    links: [LinkId; 2],
    open: [bool; 2],
    /// Latest scheduled arrival towards each side (keeps per-direction order).
    last_arrival: [Duration; 2],
    /// Messages waiting out a cut, towards each side (`None` is the close).
    stalled: [VecDeque<Option<OverlayMsg>>; 2],
}

#[derive(Debug)]
enum Event {
    Timer {
        node: usize,
        generation: u64,
    },
    /// A message (or, with `None`, the peer's close) arrives at `side` of `conn`.
    Arrive {
        conn: u64,
        side: usize,
        msg: Option<OverlayMsg>,
    },
    /// The handshake completed at `side` of `conn`.
    LinkUp {
        conn: u64,
        side: usize,
    },
    DialFailed {
        node: usize,
        generation: u64,
        addr: SocketAddr,
        reason: &'static str,
    },
    SourceTick {
        node: usize,
        generation: u64,
        video: String,
        run: u64,
    },
}

impl Event {
    fn target(&self, conns: &BTreeMap<u64, Conn>) -> Option<(usize, u64)> {
        match self {
            Event::Timer { node, generation }
            | Event::DialFailed {
                node, generation, ..
            }
            | Event::SourceTick {
                node, generation, ..
            } => Some((*node, *generation)),
            Event::Arrive { conn, side, .. } | Event::LinkUp { conn, side } => conns
                .get(conn)
                .map(|c| (c.ends[*side], c.generations[*side])),
        }
    }
}

struct Queued {
    at: Duration,
    order: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Path used between nodes with no explicit link (grandfather connections).
    pub default_link: LinkParams,
    /// Synthetic source rate.
    pub chunk_interval: Duration,
    /// Chunk payload size (bytes).
    pub chunk_size: usize,
    /// A keyframe every this many chunks.
    pub keyframe_every: u64,
    /// A dial towards a silent host fails after this.
    pub handshake_timeout: Duration,
    /// Template for every node's configuration (name, role, neighbours, videos are set per
    /// node).
    pub node: NodeConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            default_link: LinkParams::ms(10),
            chunk_interval: Duration::from_millis(20),
            chunk_size: 188,
            keyframe_every: 25,
            handshake_timeout: Duration::from_secs(3),
            node: NodeConfig::default(),
        }
    }
}

/// The simulator (see module docs).
pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Duration,
    rng: StdRng,
    nodes: Vec<SimNode>,
    by_name: HashMap<String, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    links: BTreeMap<(usize, usize), LinkParams>,
    cuts: std::collections::BTreeSet<(usize, usize)>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    next_link: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    order: u64,
    next_run: u64,
    payload: Bytes,
    /// Crossings per (connection pair, video, epoch, seq).
    crossings: HashMap<(usize, usize, Arc<str>, u64, u64), u32>,
    /// Trace answers per (originating node, trace id), in arrival order.
    traces: BTreeMap<(usize, u64), Vec<Vec<TraceHop>>>,
    /// Events handled so far.
    pub events: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let payload = Bytes::from(vec![0x47u8; cfg.chunk_size]);
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            links: BTreeMap::new(),
            cuts: Default::default(),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_link: 1,
            queue: BinaryHeap::new(),
            order: 0,
            next_run: 1,
            payload,
            crossings: HashMap::new(),
            traces: BTreeMap::new(),
            events: 0,
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The `Instant` nodes see now (for views that take `now`).
    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Define a node (not started). Servers list their videos.
    pub fn add(&mut self, name: &str, role: OverlayRole, videos: &[&str]) -> usize {
        let i = self.nodes.len();
        let ip = Ipv4Addr::new(
            10,
            (i / 62_500) as u8,
            (i / 250 % 250) as u8,
            (i % 250) as u8 + 1,
        );
        let addr = SocketAddr::new(IpAddr::V4(ip), PORT);
        let mut config = self.cfg.node.clone();
        config.name = name.to_string();
        config.role = role;
        config.listen_port = PORT;
        config.videos = videos.iter().map(|v| v.to_string()).collect();
        self.nodes.push(SimNode {
            name: name.to_string(),
            addr,
            config,
            node: None,
            state: State::Down,
            generation: 0,
            skew_us: 0,
            timer_at: None,
            backlog: VecDeque::new(),
            sources: BTreeMap::new(),
            links: BTreeMap::new(),
            delivered: BTreeMap::new(),
        });
        self.by_name.insert(name.to_string(), i);
        self.by_addr.insert(addr, i);
        i
    }

    pub fn add_server(&mut self, name: &str, videos: &[&str]) -> usize {
        self.add(name, OverlayRole::Server, videos)
    }

    pub fn add_node(&mut self, name: &str) -> usize {
        self.add(name, OverlayRole::Node, &[])
    }

    pub fn idx(&self, name: &str) -> usize {
        *self
            .by_name
            .get(name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Declare an overlay link (both ends list each other as neighbours).
    pub fn link(&mut self, a: &str, b: &str, params: LinkParams) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        self.links.insert(pair(ia, ib), params);
        let (aa, ab) = (self.nodes[ia].addr, self.nodes[ib].addr);
        if !self.nodes[ia].config.neighbours.contains(&ab) {
            self.nodes[ia].config.neighbours.push(ab);
        }
        if !self.nodes[ib].config.neighbours.contains(&aa) {
            self.nodes[ib].config.neighbours.push(aa);
        }
    }

    /// A simulator holding a topology file's overlay: every server, node and edge (clients are
    /// not simulated; subscribe nodes instead), each linked to the devices its `"neighbours"`
    /// name, and every pair of them (grandfather connections too) given the parameters of the
    /// underlay route between them: delays and jitters add along the route, losses compound.
    /// `videos` gives each server's videos.
    pub fn from_topology(
        t: &crate::topology::Topology,
        cfg: SimConfig,
        videos: impl Fn(&str) -> Vec<String>,
    ) -> Result<Sim, String> {
        let u = crate::emulate::Underlay::from_topology(t)?;
        let mut sim = Sim::new(cfg);
        let overlay: Vec<usize> = (0..u.hosts.len())
            .filter(|&h| u.hosts[h].role.is_overlay())
            .collect();
        for &h in &overlay {
            let host = &u.hosts[h];
            let role = match host.role {
                DeviceRole::Server => OverlayRole::Server,
                DeviceRole::Edge => OverlayRole::Edge,
                _ => OverlayRole::Node,
            };
            let v = videos(&host.name);
            let v: Vec<&str> = v.iter().map(String::as_str).collect();
            sim.add(&host.name, role, &v);
        }
        for &a in &overlay {
            for &b in &overlay {
                if a >= b {
                    continue;
                }
                let to_b = u.path_params(a, u.hosts[b].first_addr())?;
                let (na, nb) = (&u.hosts[a].name, &u.hosts[b].name);
                let listed = |x: &str, y: usize| {
                    t.get(x).is_some_and(|d| {
                        d.neighbours
                            .iter()
                            .any(|n| u.hosts[y].ifaces.iter().any(|f| f.addrs.contains(&n.ip)))
                    })
                };
                if listed(na, b) || listed(nb, a) {
                    sim.link(na, nb, to_b);
                } else {
                    sim.set_link(na, nb, to_b);
                }
            }
        }
        Ok(sim)
    }

    /// Change a path's behaviour from now on.
    pub fn set_link(&mut self, a: &str, b: &str, params: LinkParams) {
        let (ia, ib) = (self.idx(a), self.idx(b));
        self.links.insert(pair(ia, ib), params);
    }

    /// Clock skew of a node relative to true time (µs, may be negative). Set before start.
    pub fn set_skew(&mut self, name: &str, skew_us: i64) {
        let i = self.idx(name);
        self.nodes[i].skew_us = skew_us;
    }

    /// Change a node's configuration (before start or restart).
    pub fn config_mut(&mut self, name: &str) -> &mut NodeConfig {
        let i = self.idx(name);
        &mut self.nodes[i].config
    }

    /// Start (or restart after a crash) a node.
    pub fn start(&mut self, name: &str) {
        let i = self.idx(name);
        assert_eq!(
            self.nodes[i].state,
            State::Down,
            "{name} is already running"
        );
        let now = self.instant();
        let wall =
            (WALL_BASE_US as i64 + self.now.as_micros() as i64 + self.nodes[i].skew_us) as u64;
        let mut node = Node::new(self.nodes[i].config.clone(), now);
        node.set_wall_clock(now, wall);
        let n = &mut self.nodes[i];
        n.node = Some(node);
        n.state = State::Up;
        n.generation += 1;
        n.timer_at = None;
        self.pump(i);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].state == State::Down {
                let name = self.nodes[i].name.clone();
                self.start(&name);
            }
        }
    }

    /// Kill the process: every connection closes (peers see it one link delay later).
    pub fn crash(&mut self, name: &str) {
        let i = self.idx(name);
        let conns: Vec<(u64, usize)> = self.nodes[i]
            .links
            .values()
            .filter_map(|c| {
                let conn = self.conns.get(c)?;
                let side = if conn.ends[0] == i { 0 } else { 1 };
                Some((*c, side))
            })
            .collect();
        for (c, side) in conns {
            self.close_side(c, side);
        }
        let n = &mut self.nodes[i];
        n.node = None;
        n.state = State::Down;
        n.generation += 1;
        n.links.clear();
        n.sources.clear();
        n.backlog.clear();
        n.timer_at = None;
    }

    /// Freeze the process (SIGSTOP).
    pub fn hang(&mut self, name: &str) {
        let i = self.idx(name);
        assert_eq!(self.nodes[i].state, State::Up);
        self.nodes[i].state = State::Hung;
    }

    /// Thaw a hung process (SIGCONT): it handles its backlog now.
    pub fn resume(&mut self, name: &str) {
        let i = self.idx(name);
        assert_eq!(self.nodes[i].state, State::Hung);
        self.nodes[i].state = State::Up;
        let backlog = std::mem::take(&mut self.nodes[i].backlog);
        for ev in backlog {
            self.handle(ev);
        }
        self.nodes[i].timer_at = None;
        // Source ticks were lost while frozen: the reader resumes.
        let videos: Vec<String> = self.nodes[i].sources.keys().cloned().collect();
        for video in videos {
            // A new run number retires any tick still queued from before the freeze.
            self.start_source(i, video);
        }
        self.pump(i);
    }

    /// Cut the path between two nodes silently.
    pub fn cut(&mut self, a: &str, b: &str) {
        let p = pair(self.idx(a), self.idx(b));
        self.cuts.insert(p);
    }

    /// Restore a cut path: what waited is delivered, in order.
    pub fn restore(&mut self, a: &str, b: &str) {
        let p = pair(self.idx(a), self.idx(b));
        self.cuts.remove(&p);
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| pair(c.ends[0], c.ends[1]) == p)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            for side in 0..2 {
                let stalled =
                    std::mem::take(&mut self.conns.get_mut(&id).expect("listed").stalled[side]);
                for msg in stalled {
                    self.transmit(id, side, msg);
                }
            }
        }
    }

    /// A local consumer on `name` subscribes to `video`.
    pub fn subscribe(&mut self, name: &str, video: &str) {
        let i = self.idx(name);
        let _span = tracing::debug_span!("sim", node = %name, t = ?self.now).entered();
        let now = self.instant();
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.subscribe_local(now, video);
        }
        self.pump(i);
    }

    pub fn unsubscribe(&mut self, name: &str, video: &str) {
        let i = self.idx(name);
        let _span = tracing::debug_span!("sim", node = %name, t = ?self.now).entered();
        let now = self.instant();
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.unsubscribe_local(now, video);
        }
        self.pump(i);
    }

    /// Start a trace of `video` from `name` (see [`Node::start_trace`]).
    pub fn start_trace(&mut self, name: &str, id: u64, video: &str) -> Result<(), String> {
        let i = self.idx(name);
        let now = self.instant();
        let r = match self.nodes[i].node.as_mut() {
            Some(n) => n.start_trace(now, id, video),
            None => Err(format!("{name} is not running")),
        };
        self.pump(i);
        r
    }

    /// The paths that answered trace `id` started at `name`, in arrival order.
    pub fn trace_paths(&self, name: &str, id: u64) -> &[Vec<TraceHop>] {
        self.traces
            .get(&(self.idx(name), id))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The running node of that name.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes[self.idx(name)]
            .node
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    pub fn is_up(&self, name: &str) -> bool {
        self.nodes[self.idx(name)].state == State::Up
    }

    /// Frozen by [`Sim::hang`], not yet resumed.
    pub fn is_hung(&self, name: &str) -> bool {
        self.nodes[self.idx(name)].state == State::Hung
    }

    /// Not started yet, or crashed.
    pub fn is_down(&self, name: &str) -> bool {
        self.nodes[self.idx(name)].state == State::Down
    }

    /// Whether the node's synthetic source of `video` runs (it was told `SourceStart` and not
    /// `SourceStop` since).
    pub fn source_running(&self, name: &str, video: &str) -> bool {
        self.nodes[self.idx(name)].sources.contains_key(video)
    }

    /// Whether the path between two nodes is cut.
    pub fn is_cut(&self, a: &str, b: &str) -> bool {
        self.cuts.contains(&pair(self.idx(a), self.idx(b)))
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Who feeds `name` with `video` (its parent), if anyone.
    pub fn feeder(&self, name: &str, video: &str) -> Option<String> {
        let n = self.nodes[self.idx(name)].node.as_ref()?;
        n.parent_of(video).map(str::to_string)
    }

    /// The chain of parents from `name` up to the source.
    pub fn chain(&self, name: &str, video: &str) -> Vec<String> {
        let mut out = vec![name.to_string()];
        let mut cur = name.to_string();
        while let Some(p) = self.feeder(&cur, video) {
            if out.contains(&p) || out.len() > self.nodes.len() {
                out.push(format!("{p} (loop)"));
                break;
            }
            out.push(p.clone());
            cur = p;
        }
        out
    }

    pub fn delivered(&self, name: &str, video: &str) -> &[Delivery] {
        self.nodes[self.idx(name)]
            .delivered
            .get(video)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The largest number of times any one chunk crossed any one overlay connection pair.
    pub fn max_crossings(&self) -> u32 {
        self.crossings.values().copied().max().unwrap_or(0)
    }

    /// The chunks that crossed one connection more than `n` times: (from, to, epoch, seq).
    pub fn crossings_over(&self, n: u32) -> Vec<((String, String, u64, u64), u32)> {
        self.crossings
            .iter()
            .filter(|(_, c)| **c > n)
            .map(|((a, b, _, e, s), c)| {
                let names = (self.nodes[*a].name.clone(), self.nodes[*b].name.clone());
                ((names.0, names.1, *e, *s), *c)
            })
            .collect()
    }

    /// Overlay pairs that carried `video`, with the number of chunks each carried.
    pub fn links_carrying(&self, video: &str) -> BTreeMap<(String, String), u64> {
        let mut m = BTreeMap::new();
        for (a, b, v, _, _) in self.crossings.keys() {
            if &**v == video {
                *m.entry((self.nodes[*a].name.clone(), self.nodes[*b].name.clone()))
                    .or_insert(0) += 1;
            }
        }
        m
    }

    /// Forget crossing counts (e.g. after convergence).
    pub fn reset_crossings(&mut self) {
        self.crossings.clear();
    }

    // ---- running ---------------------------------------------------------------------------

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(q)) = self.queue.peek() {
            if q.at > until {
                break;
            }
            let Reverse(q) = self.queue.pop().expect("peeked");
            self.now = q.at;
            self.events += 1;
            self.handle(q.event);
        }
        self.now = until;
    }

    /// Run until `cond` holds (checked every `step`) or `limit` passes; returns when it held.
    pub fn run_until_cond(
        &mut self,
        step: Duration,
        limit: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return Some(self.now);
            }
            self.run_for(step);
        }
        cond(self).then_some(self.now)
    }

    /// Starts (or restarts) node `i`'s source of `video` under a new run number, which
    /// retires any tick of an earlier run still queued; its first tick is now.
    fn start_source(&mut self, i: usize, video: String) {
        let run = self.next_run;
        self.next_run += 1;
        self.nodes[i].sources.insert(video.clone(), run);
        self.push_source_tick(self.now, i, video, run);
    }

    /// Queues the next chunk of node `i`'s source of `video` (run `run`) at `at`.
    fn push_source_tick(&mut self, at: Duration, i: usize, video: String, run: u64) {
        let generation = self.nodes[i].generation;
        self.push(
            at,
            Event::SourceTick {
                node: i,
                generation,
                video,
                run,
            },
        );
    }

    fn push(&mut self, at: Duration, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at,
            order: self.order,
            event,
        }));
    }

    fn params(&self, a: usize, b: usize) -> LinkParams {
        self.links
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.cfg.default_link)
    }

    fn handle(&mut self, ev: Event) {
        let Some((i, generation)) = ev.target(&self.conns) else {
            return;
        };
        if self.nodes[i].generation != generation {
            // Meant for an earlier incarnation. A handshake towards a dead dialler fails.
            return;
        }
        match self.nodes[i].state {
            State::Down => return,
            State::Hung => {
                if !matches!(ev, Event::Timer { .. } | Event::SourceTick { .. }) {
                    self.nodes[i].backlog.push_back(ev);
                }
                return;
            }
            State::Up => {}
        }
        let now = self.instant();
        // Logs of the machines say which node and when (virtual time).
        let _span =
            tracing::debug_span!("sim", node = %self.nodes[i].name, t = ?self.now).entered();
        match ev {
            Event::Timer { .. } => {
                if self.nodes[i].timer_at != Some(self.now) {
                    return;
                }
                self.nodes[i].timer_at = None;
                self.node_mut(i).handle_timeout(now);
            }
            Event::Arrive { conn, side, msg } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                if !c.open[side] {
                    return;
                }
                let link = c.links[side];
                match msg {
                    Some(msg) => self.node_mut(i).handle_message(now, link, msg),
                    None => {
                        self.conns.get_mut(&conn).expect("present").open[side] = false;
                        self.nodes[i].links.remove(&link);
                        self.node_mut(i)
                            .handle_link_down(now, link, "connection closed by peer");
                    }
                }
            }
            Event::LinkUp { conn, side } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let other = c.ends[1 - side];
                let alive = self.nodes[other].generation == c.generations[1 - side]
                    && self.nodes[other].state != State::Down;
                if !alive {
                    if side == 0 {
                        let addr = self.nodes[other].addr;
                        self.conns.remove(&conn);
                        self.node_mut(i).handle_dial_failed(
                            now,
                            addr,
                            "peer died during handshake",
                        );
                    }
                } else {
                    let link = c.links[side];
                    let hello = self.nodes[other]
                        .node
                        .as_ref()
                        .map(Node::hello)
                        .expect("alive peer has a node");
                    let (remote, dialled) = if side == 0 {
                        (self.nodes[other].addr, Some(self.nodes[other].addr))
                    } else {
                        let ip = self.nodes[other].addr.ip();
                        (SocketAddr::new(ip, 40000 + (conn % 20000) as u16), None)
                    };
                    self.conns.get_mut(&conn).expect("present").open[side] = true;
                    self.nodes[i].links.insert(link, conn);
                    self.node_mut(i)
                        .handle_link_up(now, link, remote, dialled, hello);
                }
            }
            Event::DialFailed { addr, reason, .. } => {
                self.node_mut(i).handle_dial_failed(now, addr, reason);
            }
            Event::SourceTick { video, run, .. } => {
                if self.nodes[i].sources.get(&video) != Some(&run) {
                    return;
                }
                let tick = self.now.as_micros() / self.cfg.chunk_interval.as_micros().max(1);
                let keyframe = tick % u128::from(self.cfg.keyframe_every.max(1)) == 0;
                let payload = self.payload.clone();
                self.node_mut(i)
                    .handle_source_chunk(now, &video, payload, keyframe);
                let next = self.now + self.cfg.chunk_interval;
                self.push_source_tick(next, i, video, run);
            }
        }
        self.pump(i);
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].node.as_mut().expect("running node")
    }

    /// Carry out a node's outputs and re-arm its timer.
    fn pump(&mut self, i: usize) {
        if self.nodes[i].state != State::Up {
            return;
        }
        while let Some(out) = self.nodes[i].node.as_mut().and_then(Node::poll_output) {
            match out {
                Output::Dial(addr) => self.dial(i, addr),
                Output::Send { link, msg } => {
                    let Some(&conn) = self.nodes[i].links.get(&link) else {
                        continue;
                    };
                    let side = usize::from(self.conns[&conn].ends[0] != i);
                    // A GOP replay re-sends on purpose what a child lacks (it may have
                    // dropped it as stray before): not a copy the tree made twice.
                    if let Some(d) = match &msg {
                        OverlayMsg::VideoData(d) if !d.is_replayed() => Some(d),
                        _ => None,
                    } {
                        let c = &self.conns[&conn];
                        let (a, b) = pair(c.ends[0], c.ends[1]);
                        *self
                            .crossings
                            .entry((a, b, d.video.clone(), d.epoch, d.seq))
                            .or_insert(0) += 1;
                    }
                    self.transmit(conn, 1 - side, Some(msg));
                }
                Output::Close { link, reason } => {
                    if let Some(conn) = self.nodes[i].links.remove(&link) {
                        let side = usize::from(self.conns[&conn].ends[0] != i);
                        self.close_side(conn, side);
                    }
                    let now = self.instant();
                    self.node_mut(i).handle_link_down(now, link, &reason);
                }
                Output::SourceStart { video } => self.start_source(i, video),
                Output::SourceStop { video } => {
                    self.nodes[i].sources.remove(&video);
                }
                Output::TraceReply { id, hops, .. } => {
                    self.traces.entry((i, id)).or_default().push(hops);
                }
                Output::Deliver { video, data } => {
                    let at = self.now;
                    self.nodes[i]
                        .delivered
                        .entry(video)
                        .or_default()
                        .push(Delivery {
                            at,
                            epoch: data.epoch,
                            seq: data.seq,
                        });
                }
            }
        }
        // Virtual time jumps straight to the node's next deadline; with none, it sleeps
        // until an input comes.
        let Some(t) = self.nodes[i].node.as_ref().and_then(Node::poll_timeout) else {
            self.nodes[i].timer_at = None;
            return;
        };
        let at = t.saturating_duration_since(self.base).max(self.now);
        if self.nodes[i].timer_at != Some(at) {
            self.nodes[i].timer_at = Some(at);
            let generation = self.nodes[i].generation;
            self.push(
                at,
                Event::Timer {
                    node: i,
                    generation,
                },
            );
        }
    }

    /// Side `side` of `conn` closes: the peer sees the close after the delay (or after a cut).
    fn close_side(&mut self, conn: u64, side: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open[side] && !c.open[1 - side] {
            return;
        }
        c.open[side] = false;
        self.transmit(conn, 1 - side, None);
    }

    /// Schedule a message (or close) towards `to` on `conn`, in order, through cuts.
    fn transmit(&mut self, conn: u64, to: usize, msg: Option<OverlayMsg>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (from_node, to_node) = (c.ends[1 - to], c.ends[to]);
        if self.cuts.contains(&pair(from_node, to_node)) {
            self.conns.get_mut(&conn).expect("present").stalled[to].push_back(msg);
            return;
        }
        let p = self.params(from_node, to_node);
        let mut d = p.delay;
        if !p.jitter.is_zero() {
            d += p.jitter.mul_f64(self.rng.gen::<f64>());
        }
        if p.loss > 0.0 && self.rng.gen::<f64>() < p.loss {
            d += (p.delay * 4).max(Duration::from_millis(200));
        }
        let c = self.conns.get_mut(&conn).expect("present");
        let at = (self.now + d).max(c.last_arrival[to]);
        c.last_arrival[to] = at;
        self.push(
            at,
            Event::Arrive {
                conn,
                side: to,
                msg,
            },
        );
    }

    fn dial(&mut self, i: usize, addr: SocketAddr) {
        let generation = self.nodes[i].generation;
        let fail = |sim: &mut Sim, after: Duration, reason: &'static str| {
            let at = sim.now + after;
            sim.push(
                at,
                Event::DialFailed {
                    node: i,
                    generation,
                    addr,
                    reason,
                },
            );
        };
        let timeout = self.cfg.handshake_timeout;
        let Some(&j) = self.by_addr.get(&addr) else {
            fail(self, timeout, "no route to host");
            return;
        };
        let p = self.params(i, j);
        if self.cuts.contains(&pair(i, j)) {
            fail(self, timeout, "timed out");
            return;
        }
        match self.nodes[j].state {
            State::Down => {
                fail(self, p.delay * 2, "connection refused");
                return;
            }
            State::Hung => {
                // The kernel accepts; the frozen process never answers the handshake.
                fail(self, timeout, "timed out");
                return;
            }
            State::Up => {}
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let links = [LinkId(self.next_link), LinkId(self.next_link + 1)];
        self.next_link += 2;
        self.conns.insert(
            id,
            Conn {
                ends: [i, j],
                generations: [generation, self.nodes[j].generation],
                links,
                open: [false, false],
                last_arrival: [Duration::ZERO; 2],
                stalled: [VecDeque::new(), VecDeque::new()],
            },
        );
        // TCP and the encrypted handshake: the acceptor is up after 2 one-way delays, the
        // dialler after 3 (it hears the acceptor's hello last).
        self.push(self.now + p.delay * 2, Event::LinkUp { conn: id, side: 1 });
        self.push(self.now + p.delay * 3, Event::LinkUp { conn: id, side: 0 });
        let c = self.conns.get_mut(&id).expect("inserted");
        c.last_arrival = [self.now + p.delay * 3, self.now + p.delay * 2];
    }
}
