//! The neighbour table: which overlay neighbours we want, which links are up, and whether
//! each one is still alive.
//!
//! It owns three things. Dialling: every configured neighbour address (and any extra address
//! the protocol wants, such as a grandfather) is dialled until a link to it is up, retrying with
//! exponential backoff, because devices start in any order. Deduplication: when two neighbours
//! dial each other at once, both ends keep the same one of the two links (the one opened by the
//! lexicographically smaller name). Liveness: every link is pinged on a fixed interval in both
//! directions, whatever direction floods travel, and any frame heard counts as life; a link
//! silent for `dead_after` is declared dead, which catches hung processes and silently cut links
//! that TCP alone would notice only after minutes. A link the streams suspect (a parent silent
//! beyond its stream's chunk spacing that no other parent can replace) is probed fast instead:
//! pinged every `probe_interval`, and dead when nothing at all is heard for `probe_count` of
//! them and the grace the stream gives on a slow machine; any frame clears it. A stream may also ask for one ping at once (a probe).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::budget::Budget;
use crate::wire::overlay::{Hello, OverlayRole};

/// One overlay connection, numbered by the driver. A reconnection is a new link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Pings one neighbour may send us at once, and per second after that. A live peer pings
/// every `ping_interval` (200 ms), every `probe_interval` (50 ms) while it suspects us, and
/// once per doubt of a stream: a few dozen per second at most.
pub const PING_BURST: f64 = 50.0;
pub const PINGS_PER_SEC: f64 = 50.0;

/// Timers of dialling and keepalive.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    /// How often each link is pinged.
    pub ping_interval: Duration,
    /// A link silent for this long is dead.
    pub dead_after: Duration,
    /// First redial delay after a failed dial or a lost link.
    pub dial_backoff_initial: Duration,
    /// Redial delay cap.
    pub dial_backoff_max: Duration,
    /// Ping interval of a suspected link (BFD's 50 ms) ...
    pub probe_interval: Duration,
    /// ... which is dead when silent for this many intervals from the suspicion.
    pub probe_count: u32,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            ping_interval: Duration::from_millis(200),
            dead_after: Duration::from_millis(1000),
            dial_backoff_initial: Duration::from_millis(200),
            dial_backoff_max: Duration::from_secs(5),
            probe_interval: Duration::from_millis(50),
            probe_count: 3,
        }
    }
}

/// What the table wants done; the node turns these into driver outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dial(SocketAddr),
    Ping {
        link: LinkId,
        token: u64,
    },
    Pong {
        link: LinkId,
        token: u64,
    },
    Close {
        link: LinkId,
        reason: String,
    },
    Up {
        link: LinkId,
        name: String,
    },
    /// The neighbour moved from `old` to `new` (duplicate links resolved); still up.
    Replaced {
        old: LinkId,
        new: LinkId,
        name: String,
    },
    Down {
        link: LinkId,
        name: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialState {
    /// Next attempt at this instant.
    Waiting(Instant),
    /// The driver is connecting; it reports success or failure.
    InFlight,
    /// Satisfied by this link (outbound, or an inbound link from the same device).
    Linked(LinkId),
}

#[derive(Debug, Clone)]
struct Dial {
    state: DialState,
    backoff: Duration,
    failures: u32,
    /// Name learned from the first hello at this address.
    name: Option<String>,
    /// Configured by the topology (kept forever) rather than wanted for a while.
    configured: bool,
}

/// What we know of one live link.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub link: LinkId,
    pub name: String,
    pub role: OverlayRole,
    /// The peer's overlay listening address (its IP with the port it announced).
    pub listen_addr: SocketAddr,
    pub outbound: bool,
    pub up_since: Instant,
    pub last_heard: Instant,
    /// Smoothed round-trip time (EWMA 0.2 new / 0.8 old), once a pong has come back.
    pub rtt: Option<Duration>,
    pub rtt_samples: u64,
    next_ping: Instant,
    /// Suspected since (probed fast), until any frame is heard.
    pub probing_since: Option<Instant>,
    /// How much longer than `probe_count` intervals the fast probes wait (see `suspect`).
    pub probe_grace: Duration,
    /// It announced it is shutting down (a drain notice): no stream takes it as a parent.
    pub draining: bool,
    /// What the neighbour's pings may still make us answer.
    pub ping_budget: Budget,
}

/// A wanted address without a live link (see [`NeighbourTable::unlinked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlinkedView {
    pub addr: SocketAddr,
    pub name: Option<String>,
    pub failures: u32,
    pub connecting: bool,
    /// From the topology (redialled forever), rather than a grandfather wanted for a while.
    pub configured: bool,
}

/// The neighbour table (see module docs).
#[derive(Debug)]
pub struct NeighbourTable {
    my_name: String,
    config: LivenessConfig,
    /// Monotonic origin for ping tokens.
    epoch: Instant,
    dials: BTreeMap<SocketAddr, Dial>,
    // Ordered, so pings and closes come out in the same order on every run (simulator).
    links: BTreeMap<LinkId, Neighbour>,
    /// The link of each live neighbour, by name: streams look neighbours up by name once per
    /// child per chunk, so a scan of `links` made fan-out cost grow with the square of the
    /// children.
    names: HashMap<String, LinkId>,
    actions: VecDeque<Action>,
}

impl NeighbourTable {
    pub fn new(my_name: &str, config: LivenessConfig, now: Instant) -> Self {
        NeighbourTable {
            my_name: my_name.to_string(),
            config,
            epoch: now,
            dials: BTreeMap::new(),
            links: BTreeMap::new(),
            names: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Dial `addr` until a link to it is up. `configured` addresses are redialled forever;
    /// others until [`NeighbourTable::unwant`].
    pub fn want(&mut self, now: Instant, addr: SocketAddr, configured: bool) {
        if let Some(d) = self.dials.get_mut(&addr) {
            d.configured |= configured;
            return;
        }
        // Already linked to whoever listens there (it dialled us first)?
        let state = match self.links.values().find(|n| n.listen_addr == addr) {
            Some(n) => DialState::Linked(n.link),
            None => DialState::Waiting(now),
        };
        self.dials.insert(
            addr,
            Dial {
                state,
                backoff: self.config.dial_backoff_initial,
                failures: 0,
                name: None,
                configured,
            },
        );
    }

    /// Stop dialling a non-configured address. Live links are left alone.
    pub fn unwant(&mut self, addr: SocketAddr) {
        if self.dials.get(&addr).is_some_and(|d| !d.configured) {
            self.dials.remove(&addr);
        }
    }

    /// The driver failed to connect or to complete the handshake with `addr`.
    pub fn dial_failed(&mut self, now: Instant, addr: SocketAddr) -> Option<Duration> {
        let d = self.dials.get_mut(&addr)?;
        if d.state != DialState::InFlight {
            return None;
        }
        d.failures += 1;
        let delay = d.backoff;
        d.state = DialState::Waiting(now + delay);
        d.backoff = (d.backoff * 2).min(self.config.dial_backoff_max);
        Some(delay)
    }

    /// A link passed the handshake and the hello exchange. Returns false when the link is
    /// refused (to ourselves, or the losing half of a duplicate pair); the close is queued.
    pub fn link_up(
        &mut self,
        now: Instant,
        link: LinkId,
        remote: SocketAddr,
        dialled: Option<SocketAddr>,
        hello: &Hello,
    ) -> bool {
        if hello.name == self.my_name {
            self.close(link, "peer has our own name (connected to ourselves?)");
            if let Some(addr) = dialled {
                // Never dial ourselves again.
                self.dials.remove(&addr);
            }
            return false;
        }
        let listen_addr = SocketAddr::new(remote.ip(), hello.listen_port);
        let outbound = dialled.is_some();

        let old = self.names.get(&hello.name).and_then(|l| self.links.get(l));
        if let Some(old) = old.cloned() {
            // Both ends keep the link opened by the smaller name. When both links go the same
            // way (a racing redial, or a restarted peer whose old link is not yet known dead)
            // the old one stays: keepalive retires it if it is really gone.
            let keep_outbound = self.my_name < hello.name;
            if old.outbound == keep_outbound || outbound != keep_outbound {
                self.close(link, &format!("duplicate link to {}", hello.name));
                if let Some(addr) = dialled {
                    self.mark_linked(addr, old.link, &hello.name);
                }
                return false;
            }
            // The new link is the keeper: the neighbour moves onto it (its RTT and history
            // stay), and the old link is closed. The neighbour never went away, so this is a
            // replacement, not a down and up.
            self.links.remove(&old.link);
            self.close(old.link, &format!("duplicate link to {}", hello.name));
            for d in self.dials.values_mut() {
                if d.state == DialState::Linked(old.link) {
                    d.state = DialState::Linked(link);
                }
            }
            self.actions.push_back(Action::Replaced {
                old: old.link,
                new: link,
                name: hello.name.clone(),
            });
            self.links.insert(
                link,
                Neighbour {
                    link,
                    outbound,
                    last_heard: now,
                    ..old
                },
            );
            self.names.insert(hello.name.clone(), link);
        } else {
            self.actions.push_back(Action::Up {
                link,
                name: hello.name.clone(),
            });
            self.links.insert(
                link,
                Neighbour {
                    link,
                    name: hello.name.clone(),
                    role: hello.role,
                    listen_addr,
                    outbound,
                    up_since: now,
                    last_heard: now,
                    rtt: None,
                    rtt_samples: 0,
                    next_ping: now,
                    probing_since: None,
                    probe_grace: Duration::ZERO,
                    draining: false,
                    ping_budget: Budget::full(PING_BURST, now),
                },
            );
            self.names.insert(hello.name.clone(), link);
        }
        if let Some(addr) = dialled {
            self.mark_linked(addr, link, &hello.name);
        }
        // An inbound link satisfies our own dial to the same device.
        let names_match = |d: &Dial| d.name.as_deref() == Some(hello.name.as_str());
        for (addr, d) in self.dials.iter_mut() {
            if (*addr == listen_addr || names_match(d)) && !matches!(d.state, DialState::Linked(_))
            {
                // An in-flight dial will fail or produce a duplicate, which the rule above resolves.
                if d.state != DialState::InFlight {
                    d.state = DialState::Linked(link);
                }
                d.name = Some(hello.name.clone());
            }
        }
        true
    }

    fn mark_linked(&mut self, addr: SocketAddr, link: LinkId, name: &str) {
        if let Some(d) = self.dials.get_mut(&addr) {
            d.state = DialState::Linked(link);
            d.backoff = self.config.dial_backoff_initial;
            d.failures = 0;
            d.name = Some(name.to_string());
        }
    }

    /// The driver saw the link end (TCP close, I/O error, or our own close completing).
    /// Returns the neighbour that was on it, if it was a live neighbour link.
    pub fn link_down(&mut self, now: Instant, link: LinkId, reason: &str) -> Option<Neighbour> {
        let gone = self.links.remove(&link);
        if let Some(n) = &gone {
            if self.names.get(&n.name) == Some(&link) {
                self.names.remove(&n.name);
            }
            self.actions.push_back(Action::Down {
                link,
                name: n.name.clone(),
                reason: reason.to_string(),
            });
        }
        let first_retry = now + self.config.dial_backoff_initial;
        for d in self.dials.values_mut() {
            if d.state == DialState::Linked(link) {
                d.state = DialState::Waiting(first_retry);
            }
        }
        gone
    }

    /// Any frame from a link proves it alive (and clears a suspicion).
    pub fn heard(&mut self, now: Instant, link: LinkId) {
        if let Some(n) = self.links.get_mut(&link) {
            n.last_heard = now;
            n.probing_since = None;
        }
    }

    /// The neighbour on `link` announced it is draining; false if it had already (or the
    /// link is gone).
    pub fn set_draining(&mut self, link: LinkId) -> bool {
        match self.links.get_mut(&link) {
            Some(n) if !n.draining => {
                n.draining = true;
                true
            }
            _ => false,
        }
    }

    /// A stream doubts the neighbour on `link`: ping it now (its answer, like any frame,
    /// shows in `last_heard`).
    pub fn probe(&mut self, now: Instant, link: LinkId) {
        if let Some(n) = self.links.get_mut(&link) {
            n.next_ping = n.next_ping.min(now);
        }
    }

    /// A stream suspects the neighbour on `link` (module docs): ping it now and every
    /// `probe_interval`; nothing heard for `probe_count` intervals and `grace` more (the
    /// machine is slow now) and it is dead.
    pub fn suspect(&mut self, now: Instant, link: LinkId, grace: Duration) {
        if self.config.probe_count == 0 {
            return;
        }
        if let Some(n) = self.links.get_mut(&link) {
            if n.probing_since.is_none() {
                n.probing_since = Some(now);
                n.probe_grace = grace;
                n.next_ping = now;
            }
        }
    }

    /// When the link dies unless something is heard: its dead timer, or sooner while probed.
    fn dead_at(&self, n: &Neighbour) -> Instant {
        let quiet = n.last_heard + self.config.dead_after;
        match n.probing_since {
            Some(since) => quiet
                .min(since + self.config.probe_interval * self.config.probe_count + n.probe_grace),
            None => quiet,
        }
    }

    /// A ping on `link`: answered with a pong, within the neighbour's budget; false when it
    /// was over it (a peer pinging in a loop), and left unanswered.
    pub fn handle_ping(&mut self, now: Instant, link: LinkId, token: u64) -> bool {
        let Some(n) = self.links.get_mut(&link) else {
            return true;
        };
        if !n.ping_budget.take(now, PING_BURST, PINGS_PER_SEC) {
            return false;
        }
        self.actions.push_back(Action::Pong { link, token });
        true
    }

    /// A pong echoes the token we put in our ping: our own clock, so RTT needs no state.
    pub fn handle_pong(&mut self, now: Instant, link: LinkId, token: u64) {
        let now_us = self.micros(now);
        let Some(n) = self.links.get_mut(&link) else {
            return;
        };
        if token > now_us {
            return; // not a token of ours
        }
        let sample = Duration::from_micros(now_us - token);
        n.rtt = Some(match n.rtt {
            None => sample,
            Some(old) => old.mul_f64(0.8) + sample.mul_f64(0.2),
        });
        n.rtt_samples += 1;
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for (addr, d) in self.dials.iter_mut() {
            if let DialState::Waiting(at) = d.state {
                if at <= now {
                    d.state = DialState::InFlight;
                    self.actions.push_back(Action::Dial(*addr));
                }
            }
        }
        let now_us = self.micros(now);
        let mut dead = Vec::new();
        let dead_at: Vec<Instant> = self.links.values().map(|n| self.dead_at(n)).collect();
        for (n, dead_at) in self.links.values_mut().zip(dead_at) {
            let silent = now.saturating_duration_since(n.last_heard);
            if now >= dead_at {
                dead.push((n.link, silent, n.probing_since.is_some()));
                continue;
            }
            if n.next_ping <= now {
                self.actions.push_back(Action::Ping {
                    link: n.link,
                    token: now_us,
                });
                n.next_ping = now
                    + match n.probing_since {
                        Some(_) => self.config.probe_interval,
                        None => self.config.ping_interval,
                    };
            }
        }
        dead.sort();
        for (link, silent, probed) in dead {
            let reason = match probed {
                true => format!(
                    "silent for {} ms, unanswered fast probes",
                    silent.as_millis()
                ),
                false => format!("silent for {} ms", silent.as_millis()),
            };
            self.close(link, &reason);
            self.link_down(now, link, &reason);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let dials = self.dials.values().filter_map(|d| match d.state {
            DialState::Waiting(at) => Some(at),
            _ => None,
        });
        let links = self
            .links
            .values()
            .flat_map(|n| [n.next_ping, self.dead_at(n)]);
        dials.chain(links).min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn close(&mut self, link: LinkId, reason: &str) {
        self.actions.push_back(Action::Close {
            link,
            reason: reason.to_string(),
        });
    }

    /// Close a link on purpose (protocol violation, or no longer needed).
    pub fn drop_link(&mut self, now: Instant, link: LinkId, reason: &str) {
        self.close(link, reason);
        self.link_down(now, link, reason);
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Addresses we dial that have no live link (neighbours not up yet, or down): address,
    /// name once learnt, failed attempts, and whether the driver is connecting right now.
    pub fn unlinked(&self) -> Vec<UnlinkedView> {
        self.dials
            .iter()
            .filter(|(_, d)| !matches!(d.state, DialState::Linked(_)))
            .map(|(addr, d)| UnlinkedView {
                addr: *addr,
                name: d.name.clone(),
                failures: d.failures,
                connecting: d.state == DialState::InFlight,
                configured: d.configured,
            })
            .collect()
    }

    pub fn get(&self, link: LinkId) -> Option<&Neighbour> {
        self.links.get(&link)
    }

    pub fn by_name(&self, name: &str) -> Option<&Neighbour> {
        self.names.get(name).and_then(|l| self.links.get(l))
    }

    /// Live neighbours, sorted by name.
    pub fn neighbours(&self) -> Vec<&Neighbour> {
        let mut v: Vec<_> = self.links.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Addresses being dialled and how many attempts failed so far.
    pub fn pending_dials(&self) -> Vec<(SocketAddr, u32)> {
        self.dials
            .iter()
            .filter(|(_, d)| !matches!(d.state, DialState::Linked(_)))
            .map(|(a, d)| (*a, d.failures))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, port: u16) -> Hello {
        Hello {
            name: name.into(),
            role: OverlayRole::Node,
            version: crate::wire::overlay::OVERLAY_VERSION,
            listen_port: port,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn drain(t: &mut NeighbourTable) -> Vec<Action> {
        std::iter::from_fn(|| t.poll_action()).collect()
    }

    #[test]
    fn a_neighbour_pinging_in_a_loop_is_answered_within_its_budget_only() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new("A", LivenessConfig::default(), t0);
        assert!(t.link_up(
            t0,
            LinkId(1),
            addr("127.0.0.2:7701"),
            None,
            &hello("B", 7701)
        ));
        t.handle_timeout(t0);
        drain(&mut t);
        let answered = (0..80).filter(|i| t.handle_ping(t0, LinkId(1), *i)).count();
        assert_eq!(answered, PING_BURST as usize);
        let pongs = drain(&mut t);
        assert_eq!(pongs.len(), answered);
        assert!(pongs.iter().all(|a| matches!(a, Action::Pong { .. })));
        // The budget refills at PINGS_PER_SEC: a live peer's pace is always answered.
        let mut now = t0;
        for i in 0..100 {
            now += Duration::from_millis(50);
            assert!(t.handle_ping(now, LinkId(1), i), "ping {i}");
        }
    }

    #[test]
    fn a_suspected_link_is_probed_fast_and_dies_after_its_unanswered_probes() {
        let t0 = Instant::now();
        let cfg = LivenessConfig::default();
        let mut t = NeighbourTable::new("A", cfg.clone(), t0);
        let b = addr("127.0.0.2:7701");
        assert!(t.link_up(t0, LinkId(1), b, None, &hello("B", 7701)));
        t.handle_timeout(t0);
        drain(&mut t);
        let t1 = t0 + Duration::from_millis(30);
        t.heard(t1, LinkId(1));
        t.suspect(t1, LinkId(1), Duration::ZERO);
        // A ping at once, then every probe interval, and death at the third unanswered.
        assert_eq!(t.poll_timeout(), Some(t1));
        t.handle_timeout(t1);
        assert!(matches!(drain(&mut t)[..], [Action::Ping { .. }]));
        let dead_at = t1 + cfg.probe_interval * cfg.probe_count;
        let mut now = t1;
        for _ in 1..cfg.probe_count {
            now += cfg.probe_interval;
            assert_eq!(t.poll_timeout(), Some(now));
            t.handle_timeout(now);
            assert!(matches!(drain(&mut t)[..], [Action::Ping { .. }]));
        }
        assert_eq!(t.poll_timeout(), Some(dead_at));
        t.handle_timeout(dead_at);
        let acts = drain(&mut t);
        assert!(
            matches!(&acts[..], [Action::Close { reason, .. }, Action::Down { .. }] if reason.contains("fast probes")),
            "{acts:?}"
        );
        assert!(dead_at < t1 + cfg.dead_after);

        // On a slow machine the stream gives a grace: death that much later.
        let mut t = NeighbourTable::new("A", cfg.clone(), t0);
        assert!(t.link_up(t0, LinkId(1), b, None, &hello("B", 7701)));
        t.heard(t1, LinkId(1));
        let grace = Duration::from_millis(40);
        t.suspect(t1, LinkId(1), grace);
        t.handle_timeout(dead_at);
        assert!(!drain(&mut t)
            .iter()
            .any(|a| matches!(a, Action::Down { .. })));
        t.handle_timeout(dead_at + grace);
        assert!(drain(&mut t)
            .iter()
            .any(|a| matches!(a, Action::Down { .. })));

        // Any frame clears the suspicion: back to slow pings and the dead timer.
        let mut t = NeighbourTable::new("A", cfg.clone(), t0);
        assert!(t.link_up(t0, LinkId(1), b, None, &hello("B", 7701)));
        t.handle_timeout(t0);
        t.suspect(t0, LinkId(1), Duration::ZERO);
        t.handle_timeout(t0);
        drain(&mut t);
        t.heard(t0 + Duration::from_millis(10), LinkId(1));
        t.handle_timeout(t0 + Duration::from_millis(10));
        drain(&mut t);
        // The probe already planned still goes; the next one is a slow ping.
        assert_eq!(t.poll_timeout(), Some(t0 + cfg.probe_interval));
        t.handle_timeout(t0 + Duration::from_millis(60));
        drain(&mut t);
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + Duration::from_millis(60) + cfg.ping_interval)
        );
        t.handle_timeout(dead_at);
        assert!(drain(&mut t).is_empty(), "no death while heard recently");
        assert!(t.by_name("B").is_some());
    }

    #[test]
    fn dials_configured_neighbour_with_backoff_until_up() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new("A", LivenessConfig::default(), t0);
        let b = addr("127.0.0.2:7701");
        t.want(t0, b, true);
        t.handle_timeout(t0);
        assert_eq!(drain(&mut t), vec![Action::Dial(b)]);
        assert_eq!(t.dial_failed(t0, b), Some(Duration::from_millis(200)));
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(200)));
        t.handle_timeout(t0 + Duration::from_millis(199));
        assert!(
            drain(&mut t).is_empty(),
            "no dial before the backoff elapses"
        );
        let t1 = t0 + Duration::from_millis(200);
        t.handle_timeout(t1);
        assert_eq!(drain(&mut t), vec![Action::Dial(b)]);
        assert_eq!(t.dial_failed(t1, b), Some(Duration::from_millis(400)));
        // Backoff caps at the maximum.
        let mut now = t1;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            now += Duration::from_secs(10);
            t.handle_timeout(now);
            drain(&mut t);
            last = t.dial_failed(now, b).unwrap();
        }
        assert_eq!(last, Duration::from_secs(5));
        now += Duration::from_secs(10);
        t.handle_timeout(now);
        drain(&mut t);
        assert!(t.link_up(now, LinkId(1), b, Some(b), &hello("B", 7701)));
        assert!(matches!(
            drain(&mut t)[..],
            [Action::Up {
                link: LinkId(1),
                ..
            }]
        ));
        assert!(t.pending_dials().is_empty());
    }

    #[test]
    fn inbound_link_from_neighbour_satisfies_our_dial() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new("A", LivenessConfig::default(), t0);
        let b = addr("127.0.0.2:7701");
        t.want(t0, b, true);
        t.handle_timeout(t0);
        drain(&mut t);
        t.dial_failed(t0, b);
        // B starts later and dials us from an ephemeral port.
        assert!(t.link_up(
            t0,
            LinkId(7),
            addr("127.0.0.2:40000"),
            None,
            &hello("B", 7701)
        ));
        t.handle_timeout(t0 + Duration::from_secs(1) - Duration::from_millis(1));
        let actions = drain(&mut t);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Dial(_))),
            "no redial while linked: {actions:?}"
        );
    }

    #[test]
    fn simultaneous_dials_keep_the_same_link_at_both_ends() {
        let t0 = Instant::now();
        // A < B: both keep the link A opened.
        let mut a = NeighbourTable::new("A", LivenessConfig::default(), t0);
        let mut b = NeighbourTable::new("B", LivenessConfig::default(), t0);
        let (aa, ba) = (addr("127.0.0.1:7701"), addr("127.0.0.2:7701"));
        // At A: link 1 = A->B (outbound), link 2 = B->A (inbound).
        assert!(a.link_up(t0, LinkId(1), ba, Some(ba), &hello("B", 7701)));
        assert!(!a.link_up(
            t0,
            LinkId(2),
            addr("127.0.0.2:5555"),
            None,
            &hello("B", 7701)
        ));
        // At B: link 10 = B->A (outbound), link 11 = A->B (inbound).
        assert!(b.link_up(t0, LinkId(10), aa, Some(aa), &hello("A", 7701)));
        assert!(b.link_up(
            t0,
            LinkId(11),
            addr("127.0.0.1:6666"),
            None,
            &hello("A", 7701)
        ));
        assert_eq!(a.by_name("B").unwrap().link, LinkId(1));
        assert!(a.by_name("B").unwrap().outbound);
        assert!(!b.by_name("A").unwrap().outbound);
        let closes: Vec<_> = drain(&mut b)
            .into_iter()
            .filter(|x| matches!(x, Action::Close { .. }))
            .collect();
        assert!(matches!(
            closes[..],
            [Action::Close {
                link: LinkId(10),
                ..
            }]
        ));
        // Only one Up at each end, and B moved its neighbour onto the kept link.
        let ups = drain(&mut a)
            .into_iter()
            .filter(|x| matches!(x, Action::Up { .. }))
            .count();
        assert_eq!(ups, 1);
        assert_eq!(b.by_name("A").unwrap().link, LinkId(11));
        assert_eq!(b.neighbours().len(), 1);
    }

    #[test]
    fn silent_link_is_declared_dead_and_redialled() {
        let t0 = Instant::now();
        let cfg = LivenessConfig::default();
        let mut t = NeighbourTable::new("A", cfg.clone(), t0);
        let b = addr("127.0.0.2:7701");
        t.want(t0, b, true);
        t.handle_timeout(t0);
        drain(&mut t);
        t.link_up(t0, LinkId(1), b, Some(b), &hello("B", 7701));
        t.handle_timeout(t0);
        let first = drain(&mut t);
        assert!(first.iter().any(|x| matches!(x, Action::Ping { .. })));
        // Heard at 500 ms, then silence.
        t.heard(t0 + Duration::from_millis(500), LinkId(1));
        t.handle_timeout(t0 + Duration::from_millis(1400));
        assert!(t.get(LinkId(1)).is_some(), "900 ms of silence is not death");
        drain(&mut t);
        let dead_at = t0 + Duration::from_millis(1500);
        assert_eq!(
            t.poll_timeout().unwrap().min(dead_at),
            t.poll_timeout().unwrap()
        );
        t.handle_timeout(dead_at);
        let actions = drain(&mut t);
        assert!(actions.iter().any(|x| matches!(x, Action::Close { .. })));
        assert!(actions.iter().any(|x| matches!(x, Action::Down { .. })));
        assert!(t.get(LinkId(1)).is_none());
        t.handle_timeout(dead_at + cfg.dial_backoff_initial);
        assert_eq!(drain(&mut t), vec![Action::Dial(b)]);
    }

    #[test]
    fn pong_gives_rtt_and_pings_flow_regardless_of_role() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new("A", LivenessConfig::default(), t0);
        // An inbound child that never sends anything but pongs stays alive.
        t.link_up(
            t0,
            LinkId(3),
            addr("127.0.0.9:1"),
            None,
            &hello("Child", 7701),
        );
        let mut now = t0;
        for _ in 0..20 {
            t.handle_timeout(now);
            for a in drain(&mut t) {
                if let Action::Ping { token, .. } = a {
                    let back = now + Duration::from_millis(10);
                    t.heard(back, LinkId(3));
                    t.handle_pong(back, LinkId(3), token);
                }
            }
            now += Duration::from_millis(200);
        }
        let n = t.get(LinkId(3)).expect("child still alive");
        assert!(n.rtt_samples >= 19);
        assert_eq!(n.rtt, Some(Duration::from_millis(10)));
    }

    #[test]
    fn by_name_follows_a_replaced_link_and_forgets_a_dead_one() {
        let t0 = Instant::now();
        // "Z" > "B": A keeps the link B dialled (inbound to A) when both race.
        let mut t = NeighbourTable::new("Z", LivenessConfig::default(), t0);
        let b = addr("127.0.0.2:7701");
        t.want(t0, b, true);
        assert!(t.link_up(t0, LinkId(1), b, Some(b), &hello("B", 7701)));
        assert_eq!(t.by_name("B").map(|n| n.link), Some(LinkId(1)));
        // B's own dial arrives: the inbound link is the keeper, the neighbour moves onto it.
        let from_b = addr("127.0.0.2:40000");
        assert!(t.link_up(t0, LinkId(2), from_b, None, &hello("B", 7701)));
        assert_eq!(t.by_name("B").map(|n| n.link), Some(LinkId(2)));
        // The replaced link's close does not forget B.
        assert!(t.link_down(t0, LinkId(1), "duplicate").is_none());
        assert_eq!(t.by_name("B").map(|n| n.link), Some(LinkId(2)));
        assert!(t.link_down(t0, LinkId(2), "closed").is_some());
        assert!(t.by_name("B").is_none());
        assert!(t.by_name("C").is_none());
    }

    #[test]
    fn link_to_ourselves_is_refused_and_not_redialled() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new("A", LivenessConfig::default(), t0);
        let me = addr("127.0.0.1:7701");
        t.want(t0, me, true);
        t.handle_timeout(t0);
        drain(&mut t);
        assert!(!t.link_up(t0, LinkId(1), me, Some(me), &hello("A", 7701)));
        assert!(t.pending_dials().is_empty());
    }
}
