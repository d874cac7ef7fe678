//! A node's surroundings for the streams' unit tests: a neighbour table with live links, a
//! flood table fed with real floods, a clock the test moves, and the actions the streams
//! produced, with each send resolved to the neighbour's name.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Ctx, StreamAction, StreamConfig, Streams, View};
use crate::overlay::neighbours::{LinkId, LivenessConfig, NeighbourTable};
use crate::overlay::routing::Routing;
use crate::wire::overlay::{
    Flood, Hello, OverlayMsg, OverlayRole, VideoData, VideoRequest, OVERLAY_VERSION,
};

/// Our wall clock in the tests (µs); floods are stamped `delay` earlier.
const WALL_US: u64 = 1_000_000_000_000;

/// Messages sent as (to, kind).
pub(super) type Sent = Vec<(String, &'static str)>;

pub(super) struct Harness {
    pub streams: Streams,
    pub routing: Routing,
    pub neighbours: NeighbourTable,
    pub cfg: StreamConfig,
    pub now: Instant,
    me: String,
    next_link: u64,
    flood_seq: u64,
    /// Links the streams asked to probe ("probe": once, "suspect": fast), in order.
    probed: Vec<(&'static str, String)>,
}

/// What the streams decided, sends resolved to names.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Did {
    Send(String, OverlayMsg),
    Other(StreamAction),
}

impl Harness {
    pub fn new(me: &str) -> Self {
        let now = Instant::now();
        Harness {
            streams: Streams::new(Vec::new()),
            routing: Routing::new(),
            neighbours: NeighbourTable::new(me, LivenessConfig::default(), now),
            cfg: StreamConfig {
                switch_sustain: Duration::ZERO,
                ..StreamConfig::default()
            },
            now,
            me: me.to_string(),
            next_link: 1,
            flood_seq: 1,
            probed: Vec::new(),
        }
    }

    pub fn addr_of(name: &str) -> SocketAddr {
        let n = name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        SocketAddr::from(([10, 0, 0, n], 7000))
    }

    /// A link to `name` comes up.
    pub fn link(&mut self, name: &str) {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let hello = Hello {
            name: name.into(),
            role: OverlayRole::Node,
            version: OVERLAY_VERSION,
            listen_port: 7000,
        };
        let addr = Self::addr_of(name);
        self.neighbours.link_up(self.now, link, addr, None, &hello);
        while self.neighbours.poll_action().is_some() {}
    }

    /// The link to `name` goes down: its routes go first, then the streams hear of it.
    pub fn unlink(&mut self, name: &str) {
        let link = self.neighbours.by_name(name).expect("linked").link;
        self.neighbours.link_down(self.now, link, "test");
        while self.neighbours.poll_action().is_some() {}
        self.routing.neighbour_down(name);
        self.run(|s, ctx| {
            s.neighbour_down(ctx, name);
            s.reconcile(ctx);
        });
    }

    /// A flood of `server` offering `videos` arrives from `via` (last relay), having crossed
    /// `relays` before it, `delay_ms` after it was sent.
    pub fn flood(
        &mut self,
        server: &str,
        relays: &[&str],
        via: &str,
        delay_ms: u64,
        videos: &[&str],
    ) {
        let mut visited = vec![server.to_string()];
        visited.extend(relays.iter().map(|r| r.to_string()));
        if via != server {
            visited.push(via.to_string());
        }
        let flood = Flood {
            server: server.into(),
            seq: self.flood_seq,
            sent_at_us: WALL_US - delay_ms * 1000,
            link_sum_us: delay_ms * 1000,
            visited,
            videos: videos.iter().map(|v| v.to_string()).collect(),
        };
        self.flood_seq += 1;
        self.routing
            .on_flood(self.now, &self.me, via, WALL_US, 0, &flood)
            .expect("a well-formed flood");
    }

    pub fn run<R>(&mut self, f: impl FnOnce(&mut Streams, &mut Ctx<'_>) -> R) -> R {
        let view = View {
            now: self.now,
            me: &self.me,
            wall_us: WALL_US,
            cfg: &self.cfg,
            routing: &self.routing,
            neighbours: &self.neighbours,
        };
        self.streams.with(&view, f)
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Everything decided since the last call (probes are also kept for [`Self::probes`]).
    pub fn did(&mut self) -> Vec<Did> {
        let actions: Vec<_> = std::iter::from_fn(|| self.streams.poll_action()).collect();
        actions
            .into_iter()
            .map(|a| match a {
                StreamAction::Send { link, msg } => {
                    let name = self.neighbours.get(link).expect("a live link").name.clone();
                    Did::Send(name, msg)
                }
                other => {
                    let probe = match &other {
                        StreamAction::Probe { link } => Some(("probe", *link)),
                        StreamAction::Suspect { link, .. } => Some(("suspect", *link)),
                        _ => None,
                    };
                    if let Some((kind, link)) = probe {
                        let name = self.neighbours.get(link).expect("a live link").name.clone();
                        self.probed.push((kind, name));
                    }
                    Did::Other(other)
                }
            })
            .collect()
    }

    /// The links the streams asked to probe since the last call, as (kind, neighbour).
    pub fn probes(&mut self) -> Vec<(&'static str, String)> {
        self.did();
        std::mem::take(&mut self.probed)
    }

    /// The messages sent since the last call, as (to, kind, video).
    pub fn sent(&mut self) -> Sent {
        self.did()
            .into_iter()
            .filter_map(|d| match d {
                Did::Send(to, msg) => Some((to, msg.kind())),
                Did::Other(_) => None,
            })
            .collect()
    }

    /// A chunk of `video` arrives from `from`.
    pub fn chunk(&mut self, from: &str, video: &str, epoch: u64, seq: u64) {
        let data = VideoData {
            video: video.into(),
            epoch,
            seq,
            flags: 0,
            payload: bytes::Bytes::from_static(b"ts"),
        };
        self.run(|s, ctx| s.on_data(ctx, from, data));
    }

    /// (messages sent as (to, kind), chunks delivered locally as (epoch, seq)) since the
    /// last call.
    pub fn drain(&mut self) -> (Sent, Vec<(u64, u64)>) {
        let mut sent = Vec::new();
        let mut delivered = Vec::new();
        for d in self.did() {
            match d {
                Did::Send(to, msg) => sent.push((to, msg.kind())),
                Did::Other(StreamAction::Deliver { data, .. }) => {
                    delivered.push((data.epoch, data.seq))
                }
                Did::Other(_) => {}
            }
        }
        (sent, delivered)
    }
    /// `me` linked to `routes` and `others`, with a route to server S (offering "v") through
    /// each of `routes` (name, delay in ms).
    pub fn with_routes(me: &str, routes: &[(&str, u64)], others: &[&str]) -> Self {
        let mut h = Harness::new(me);
        for (n, _) in routes {
            h.link(n);
        }
        for n in others {
            h.link(n);
        }
        for (n, ms) in routes {
            h.flood("S", &[], n, *ms, &["v"]);
        }
        h
    }

    /// B takes "v" from A (5 ms) and, redundantly, from X (10 ms) on a disjoint path.
    pub fn redundant() -> Self {
        let mut h = Harness::new("B");
        h.cfg.redundant_videos = vec!["v".into()];
        h.link("A");
        h.link("X");
        h.flood("S", &["R1"], "A", 5, &["v"]);
        h.flood("S", &["R2"], "X", 10, &["v"]);
        h.run(|s, ctx| s.subscribe_local(ctx, "v"));
        h.run(|s, ctx| s.reconcile(ctx));
        h
    }

    /// `child` asks us for "v".
    pub fn request_from(&mut self, child: &str) {
        self.run(|s, ctx| s.on_request(ctx, child, req("v", &[child])));
    }

    /// Time moves on by `by`, and the streams' deadlines run.
    pub fn expire(&mut self, by: Duration) {
        self.advance(by);
        self.run(|s, ctx| s.handle_timeout(ctx));
    }

    /// How long from now until the streams' next deadline.
    pub fn next_deadline_in(&self) -> Option<Duration> {
        self.streams
            .poll_timeout(&self.cfg)
            .map(|t| t.saturating_duration_since(self.now))
    }
}

/// A request for `video` carrying `path` (the asker's subtree, the asker last).
pub(super) fn req(video: &str, path: &[&str]) -> VideoRequest {
    VideoRequest {
        video: video.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        has: None,
    }
}
