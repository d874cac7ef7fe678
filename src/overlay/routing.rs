//! Floods and the parent table: which neighbours lead to which server, and how fast.
//!
//! Every server floods an announcement each interval (name, sequence number, wall-clock
//! timestamp, visited list, videos, `link_sum_us`). A node records, per (server, neighbour),
//! the EWMA (0.2 new / 0.8 old) of the one-way delay `receive wall time - sent_at_us` and the
//! skew-free `link_sum_us` (the sum of per-link RTT/2 along the path, to which the node adds the
//! RTT/2 of the link the flood came in on). Entries not refreshed for a few missed floods
//! expire; a neighbour's entries go at once when its link dies.
//!
//! Forwarding: a node forwards only the **first copy** of each (server, seq), to every
//! neighbour but the sender and those already in the visited list, and never a flood that
//! carries its own name. Later copies (same flood, other paths) are recorded, not forwarded.
//! This bounds the cost to one copy per overlay link and direction per flood (2·E messages per
//! server per interval, whatever the number of paths), where "forward every copy not yet
//! visited" grows with the number of simple paths and explodes on a meshed 1000-node overlay.
//! Ranking loses nothing: each neighbour still sends us the copy that reached *it* first, i.e.
//! its own best delay, which is exactly what choosing among neighbours needs. What is lost is
//! a neighbour whose fastest path runs through us: it never offers us a route, which is the
//! loop we would not want anyway.
//!
//! Ranking (see [`Routing::offers`]): delays to one server through different neighbours carry
//! the same clock skew (server clock vs ours), so comparing parents *for one server* by delay is
//! skew-free. Different servers are compared by `link_sum_us`, which never mixes two clocks.
//! One-way delays assume synchronised clocks only for display (true inside CORE, where all hosts
//! share one kernel clock).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::overlay::Flood;

/// EWMA weight of a new delay sample (the report's 20 %).
const EWMA_NEW: f64 = 0.2;

/// One route: a neighbour through which a server's floods arrive.
#[derive(Debug, Clone)]
pub struct Route {
    /// EWMA of one-way delay, µs; includes the clock skew between the server and us, so it
    /// is only comparable with other routes to the same server. May be negative.
    pub delay_us: f64,
    pub samples: u64,
    pub last_heard: Instant,
    /// Skew-free metric: summed per-link RTT/2 along the path of the latest copy, µs.
    pub link_sum_us: u64,
    /// Path of the latest copy (server first, the neighbour last).
    pub visited: Vec<String>,
}

/// What we know about one server.
#[derive(Debug, Clone)]
pub struct ServerRoutes {
    /// Videos offered in the server's latest flood.
    pub videos: Vec<String>,
    /// Highest flood sequence seen (and forwarded).
    pub last_seq: u64,
    /// Routes by neighbour name.
    pub parents: BTreeMap<String, Route>,
}

impl ServerRoutes {
    pub fn offers(&self, video: &str) -> bool {
        self.videos.iter().any(|v| v == video)
    }
}

/// Why a flood was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodIgnored {
    /// We are the server, or already in the visited list: it went round a loop.
    OwnName,
    /// The flood says it came from someone other than the neighbour that sent it.
    Malformed,
}

/// Outcome of a recorded flood.
#[derive(Debug, Clone)]
pub struct FloodRecorded {
    /// The copy to forward (visited and link sum already extended), if this is the first
    /// copy of this (server, seq).
    pub forward: Option<Flood>,
    /// A new (server, neighbour) route appeared or the server's video list changed.
    pub routes_changed: bool,
}

/// The parent table of every server (see module docs).
#[derive(Debug, Default)]
pub struct Routing {
    servers: BTreeMap<String, ServerRoutes>,
}

impl Routing {
    pub fn new() -> Self {
        Routing::default()
    }

    /// Record a flood received from neighbour `from`. `wall_now_us` is our wall clock now;
    /// `link_half_rtt_us` the RTT/2 of the link it came on.
    pub fn on_flood(
        &mut self,
        now: Instant,
        me: &str,
        from: &str,
        wall_now_us: u64,
        link_half_rtt_us: u64,
        flood: &Flood,
    ) -> Result<FloodRecorded, FloodIgnored> {
        if flood.server == me || flood.visited.iter().any(|v| v == me) {
            return Err(FloodIgnored::OwnName);
        }
        // The sender appends itself before forwarding; anything else is a confused peer.
        if flood.visited.last().map(String::as_str) != Some(from)
            || flood.visited.first() != Some(&flood.server)
        {
            return Err(FloodIgnored::Malformed);
        }
        let sample = wall_now_us as f64 - flood.sent_at_us as f64;
        let link_sum_us = flood.link_sum_us.saturating_add(link_half_rtt_us);
        let entry = self
            .servers
            .entry(flood.server.clone())
            .or_insert_with(|| ServerRoutes {
                videos: Vec::new(),
                last_seq: 0,
                parents: BTreeMap::new(),
            });
        let first_copy = entry.parents.is_empty() || flood.seq > entry.last_seq;
        let mut routes_changed = false;
        if first_copy {
            entry.last_seq = flood.seq;
            if entry.videos != flood.videos {
                entry.videos = flood.videos.clone();
                routes_changed = true;
            }
        }
        match entry.parents.get_mut(from) {
            Some(r) => {
                r.delay_us = r.delay_us * (1.0 - EWMA_NEW) + sample * EWMA_NEW;
                r.samples += 1;
                r.last_heard = now;
                r.link_sum_us = link_sum_us;
                r.visited.clone_from(&flood.visited);
            }
            None => {
                routes_changed = true;
                entry.parents.insert(
                    from.to_string(),
                    Route {
                        delay_us: sample,
                        samples: 1,
                        last_heard: now,
                        link_sum_us,
                        visited: flood.visited.clone(),
                    },
                );
            }
        }
        let forward = first_copy.then(|| {
            let mut f = flood.clone();
            f.visited.push(me.to_string());
            f.link_sum_us = link_sum_us;
            f
        });
        Ok(FloodRecorded {
            forward,
            routes_changed,
        })
    }

    /// A neighbour's link died: its routes go at once. Returns true if any route went.
    pub fn neighbour_down(&mut self, name: &str) -> bool {
        let mut changed = false;
        for s in self.servers.values_mut() {
            changed |= s.parents.remove(name).is_some();
        }
        self.servers.retain(|_, s| !s.parents.is_empty());
        changed
    }

    /// Drop routes not refreshed within `expiry`. Returns true if any route went.
    pub fn expire(&mut self, now: Instant, expiry: Duration) -> bool {
        let mut changed = false;
        for s in self.servers.values_mut() {
            let before = s.parents.len();
            s.parents
                .retain(|_, r| now.saturating_duration_since(r.last_heard) < expiry);
            changed |= s.parents.len() != before;
        }
        // A server with no route left is forgotten, so a restarted server's floods (whatever
        // their sequence numbers) are forwarded again.
        self.servers.retain(|_, s| !s.parents.is_empty());
        changed
    }

    /// When the oldest route runs out without a fresh flood ([`Routing::expire`]'s deadline).
    pub fn next_expiry(&self, expiry: Duration) -> Option<Instant> {
        self.servers
            .values()
            .flat_map(|s| s.parents.values())
            .map(|r| r.last_heard + expiry)
            .min()
    }

    /// Servers offering `video`, with their routes.
    pub fn offers<'a>(
        &'a self,
        video: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ServerRoutes)> + 'a {
        self.servers
            .iter()
            .filter(move |(_, s)| s.offers(video))
            .map(|(n, s)| (n.as_str(), s))
    }

    pub fn servers(&self) -> &BTreeMap<String, ServerRoutes> {
        &self.servers
    }

    /// Every video some server offers.
    pub fn videos(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .servers
            .values()
            .flat_map(|s| s.videos.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Neighbours with a route to some server offering `video`.
    pub fn providers(&self, video: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .servers
            .values()
            .filter(|s| s.offers(video))
            .flat_map(|s| s.parents.keys().map(String::as_str))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(server: &str, seq: u64, sent_at_us: u64, visited: &[&str]) -> Flood {
        Flood {
            server: server.into(),
            seq,
            sent_at_us,
            link_sum_us: 1000,
            visited: visited.iter().map(|s| s.to_string()).collect(),
            videos: vec!["v".into()],
        }
    }

    #[test]
    fn first_copy_is_forwarded_with_our_name_and_link_half_rtt() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        let f = flood("S", 5, 1_000_000, &["S", "A"]);
        let rec = r.on_flood(t0, "B", "A", 1_010_000, 300, &f).unwrap();
        let fwd = rec.forward.expect("first copy forwarded");
        assert_eq!(fwd.visited, vec!["S", "A", "B"]);
        assert_eq!(fwd.link_sum_us, 1300);
        assert!(rec.routes_changed);
        // Same seq through another neighbour: recorded, not forwarded.
        let f2 = flood("S", 5, 1_000_000, &["S", "C"]);
        let rec = r.on_flood(t0, "B", "C", 1_020_000, 100, &f2).unwrap();
        assert!(rec.forward.is_none());
        let s = &r.servers()["S"];
        assert_eq!(s.parents["A"].delay_us, 10_000.0);
        assert_eq!(s.parents["C"].delay_us, 20_000.0);
        assert_eq!(s.parents["C"].link_sum_us, 1100);
        // The next flood is a first copy again.
        let f3 = flood("S", 6, 2_000_000, &["S", "C"]);
        assert!(r
            .on_flood(t0, "B", "C", 2_010_000, 100, &f3)
            .unwrap()
            .forward
            .is_some());
        // EWMA 0.8 old + 0.2 new.
        assert_eq!(r.servers()["S"].parents["C"].delay_us, 18_000.0);
    }

    #[test]
    fn own_name_and_forged_senders_are_ignored() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        let own = flood("S", 1, 0, &["S", "B", "A"]);
        assert_eq!(
            r.on_flood(t0, "B", "A", 0, 0, &own).unwrap_err(),
            FloodIgnored::OwnName
        );
        let mine = flood("B", 1, 0, &["B", "A"]);
        assert_eq!(
            r.on_flood(t0, "B", "A", 0, 0, &mine).unwrap_err(),
            FloodIgnored::OwnName
        );
        let forged = flood("S", 1, 0, &["S", "X"]);
        assert_eq!(
            r.on_flood(t0, "B", "A", 0, 0, &forged).unwrap_err(),
            FloodIgnored::Malformed
        );
        assert!(r.servers().is_empty());
    }

    #[test]
    fn routes_expire_and_die_with_their_neighbour() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        r.on_flood(t0, "B", "A", 0, 0, &flood("S", 1, 0, &["S", "A"]))
            .unwrap();
        let t1 = t0 + Duration::from_secs(2);
        r.on_flood(t1, "B", "C", 0, 0, &flood("S", 2, 0, &["S", "C"]))
            .unwrap();
        assert_eq!(r.providers("v"), vec!["A", "C"]);
        assert!(r.expire(t0 + Duration::from_millis(3500), Duration::from_secs(3)));
        assert_eq!(r.providers("v"), vec!["C"]);
        assert!(r.neighbour_down("C"));
        assert!(r.providers("v").is_empty());
        assert!(
            r.servers().is_empty(),
            "a server without routes is forgotten"
        );
        // A restarted server with a smaller sequence number is forwarded again.
        let rec = r
            .on_flood(t1, "B", "A", 0, 0, &flood("S", 0, 0, &["S", "A"]))
            .unwrap();
        assert!(rec.forward.is_some());
    }
}
