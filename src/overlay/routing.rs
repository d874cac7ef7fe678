//! Floods and the parent table: which neighbours lead to which server, and how fast.
//!
//! Every server floods an announcement each interval (name, sequence number, wall-clock
//! timestamp, visited list, videos, `link_sum_us`). A node records, per (server, neighbour),
//! the EWMA (0.2 new / 0.8 old) of the one-way delay `receive wall time - sent_at_us` and the
//! skew-free `link_sum_us` (the sum of per-link RTT/2 along the path, to which the node adds the
//! RTT/2 of the link the flood came in on). Entries not refreshed for a few missed floods
//! expire; a neighbour's entries go at once when its link dies.
//!
//! Withdrawals: when a node loses its link to a server (closed, or declared dead), it floods a
//! [`Withdrawal`] ("link S–N down, last sequence number k"), forwarded first-copy-only like
//! floods. Every node drops the routes whose path starts with that link (`visited` = S, N, …)
//! and that were learnt from a flood not newer than k. A dead server loses all its links, so
//! all its routes vanish within one flood's travel time instead of expiring after a few
//! missed floods; a single dead link takes only the routes over it; a restarted server floods
//! newer sequence numbers, which no withdrawal of its previous life touches.
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

use crate::wire::overlay::{Flood, Withdrawal};

/// EWMA weight of a new delay sample (the report's 20 %).
const EWMA_NEW: f64 = 0.2;

/// Withdrawals already seen are remembered this long (first-copy-only forwarding)...
const WITHDRAWAL_MEMORY: Duration = Duration::from_secs(30);
/// ... and at most this many (the oldest is forgotten first): a peer inventing withdrawals
/// cannot grow the set for ever.
const WITHDRAWALS_REMEMBERED: usize = 4096;

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
    /// Sequence number of the latest copy.
    pub seq: u64,
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

/// Why a withdrawal was not applied nor forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawalIgnored {
    /// A copy of it (or our own) was already handled.
    Seen,
    /// A server cannot lose a link to itself, and names are never empty.
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
    /// Withdrawals handled, by (server, neighbour, last_seq), with when.
    withdrawals_seen: BTreeMap<(String, String, u64), Instant>,
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
        if from == flood.server && flood.seq < entry.last_seq {
            // Straight from the server (one TCP stream, in order), yet older: a new life of
            // the server that counts from lower numbers (its clock stepped back). The routes
            // of its previous life are stale; without this its floods would never be
            // forwarded again until they all expired.
            entry.parents.clear();
        }
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
                r.seq = flood.seq;
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
                        seq: flood.seq,
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

    /// Our link to neighbour `name` is going down: if it is a server we had a direct route
    /// to, the withdrawal to flood ("link name–me down, last seq k"), already marked seen so
    /// its copies coming back are not handled again. Call before [`Routing::neighbour_down`].
    pub fn withdrawal_for(&mut self, now: Instant, me: &str, name: &str) -> Option<Withdrawal> {
        let s = self.servers.get(name)?;
        if !s.parents.contains_key(name) {
            return None;
        }
        let w = Withdrawal {
            server: name.to_string(),
            neighbour: me.to_string(),
            last_seq: s.last_seq,
        };
        self.remember(now, &w);
        Some(w)
    }

    /// A withdrawal arrived: on its first copy, drop the routes over its link learnt from
    /// floods not newer than its `last_seq` (Ok(true) if any went); the caller forwards it to
    /// every neighbour but the sender. Later copies, and malformed ones, are ignored.
    pub fn on_withdrawal(
        &mut self,
        now: Instant,
        w: &Withdrawal,
    ) -> Result<bool, WithdrawalIgnored> {
        if w.server.is_empty() || w.neighbour.is_empty() || w.server == w.neighbour {
            return Err(WithdrawalIgnored::Malformed);
        }
        if !self.remember(now, w) {
            return Err(WithdrawalIgnored::Seen);
        }
        let Some(s) = self.servers.get_mut(&w.server) else {
            return Ok(false);
        };
        let before = s.parents.len();
        s.parents.retain(|_, r| {
            let over_link =
                r.visited.first() == Some(&w.server) && r.visited.get(1) == Some(&w.neighbour);
            !(over_link && r.seq <= w.last_seq)
        });
        let changed = s.parents.len() != before;
        // Forgotten without routes, as on expiry: the server's next life is a first copy.
        self.servers.retain(|_, s| !s.parents.is_empty());
        Ok(changed)
    }

    /// Note a withdrawal as handled; false if it already was.
    fn remember(&mut self, now: Instant, w: &Withdrawal) -> bool {
        self.withdrawals_seen
            .retain(|_, at| now.saturating_duration_since(*at) < WITHDRAWAL_MEMORY);
        let key = (w.server.clone(), w.neighbour.clone(), w.last_seq);
        if self.withdrawals_seen.contains_key(&key) {
            return false;
        }
        if self.withdrawals_seen.len() >= WITHDRAWALS_REMEMBERED {
            let oldest = self
                .withdrawals_seen
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.withdrawals_seen.remove(&k);
            }
        }
        self.withdrawals_seen.insert(key, now);
        true
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

    fn withdrawal(server: &str, neighbour: &str, last_seq: u64) -> Withdrawal {
        Withdrawal {
            server: server.into(),
            neighbour: neighbour.into(),
            last_seq,
        }
    }

    #[test]
    fn a_withdrawal_takes_the_routes_over_its_link_and_no_others() {
        // B hears S over A (path S-A) and over C (path S-X-C).
        let t0 = Instant::now();
        let mut r = Routing::new();
        r.on_flood(t0, "B", "A", 0, 0, &flood("S", 5, 0, &["S", "A"]))
            .unwrap();
        r.on_flood(t0, "B", "C", 0, 0, &flood("S", 5, 0, &["S", "X", "C"]))
            .unwrap();
        // Link S-A down after seq 5: the route via A goes, the one via C stays.
        assert_eq!(r.on_withdrawal(t0, &withdrawal("S", "A", 5)), Ok(true));
        assert_eq!(r.providers("v"), vec!["C"]);
        // A copy of the same withdrawal (over another path) is not handled again.
        assert_eq!(
            r.on_withdrawal(t0, &withdrawal("S", "A", 5)),
            Err(WithdrawalIgnored::Seen)
        );
        // Link S-X down: the last route goes and the server is forgotten.
        assert_eq!(r.on_withdrawal(t0, &withdrawal("S", "X", 5)), Ok(true));
        assert!(r.servers().is_empty());
        // A withdrawal about a server we never heard of is still a first copy (forwarded).
        assert_eq!(r.on_withdrawal(t0, &withdrawal("T", "A", 1)), Ok(false));
    }

    #[test]
    fn a_withdrawal_spares_routes_newer_than_its_last_seq() {
        // The server restarted (or the link came back) and flooded seq 7 over the same link
        // before the withdrawal of its previous life (last seq 5) arrived: the route stays.
        let t0 = Instant::now();
        let mut r = Routing::new();
        r.on_flood(t0, "B", "A", 0, 0, &flood("S", 7, 0, &["S", "A"]))
            .unwrap();
        assert_eq!(r.on_withdrawal(t0, &withdrawal("S", "A", 5)), Ok(false));
        assert_eq!(r.providers("v"), vec!["A"]);
        // And after a withdrawal took every route, the next flood of the server is a first
        // copy again, whatever its number.
        assert_eq!(r.on_withdrawal(t0, &withdrawal("S", "A", 7)), Ok(true));
        let rec = r
            .on_flood(t0, "B", "A", 0, 0, &flood("S", 8, 0, &["S", "A"]))
            .unwrap();
        assert!(rec.forward.is_some() && rec.routes_changed);
    }

    #[test]
    fn the_neighbour_of_a_server_starts_a_withdrawal_only_for_a_direct_server_link() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        r.on_flood(t0, "A", "S", 0, 0, &flood("S", 9, 0, &["S"]))
            .unwrap();
        r.on_flood(t0, "A", "B", 0, 0, &flood("T", 3, 0, &["T", "B"]))
            .unwrap();
        // B is not a server we hear directly: nothing to withdraw.
        assert!(r.withdrawal_for(t0, "A", "B").is_none());
        let w = r
            .withdrawal_for(t0, "A", "S")
            .expect("a direct server link");
        assert_eq!(w, withdrawal("S", "A", 9));
        // Our own withdrawal coming back is not handled again.
        assert_eq!(r.on_withdrawal(t0, &w), Err(WithdrawalIgnored::Seen));
    }

    #[test]
    fn malformed_withdrawals_are_refused_and_the_memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        for bad in [
            withdrawal("S", "S", 1),
            withdrawal("", "A", 1),
            withdrawal("S", "", 1),
        ] {
            assert_eq!(r.on_withdrawal(t0, &bad), Err(WithdrawalIgnored::Malformed));
        }
        // A peer inventing withdrawals: the memory stays bounded, the oldest forgotten first.
        for seq in 0..(WITHDRAWALS_REMEMBERED as u64 + 10) {
            let t = t0 + Duration::from_micros(seq);
            assert_eq!(r.on_withdrawal(t, &withdrawal("S", "A", seq)), Ok(false));
        }
        assert_eq!(r.withdrawals_seen.len(), WITHDRAWALS_REMEMBERED);
        // Forgotten after a while: the same withdrawal is a first copy again.
        let later = t0 + WITHDRAWAL_MEMORY + Duration::from_secs(1);
        assert_eq!(
            r.on_withdrawal(later, &withdrawal("S", "A", 5_000)),
            Ok(false)
        );
        assert_eq!(r.withdrawals_seen.len(), 1);
    }

    #[test]
    fn a_server_flooding_straight_to_us_with_an_older_number_starts_a_new_life() {
        let t0 = Instant::now();
        let mut r = Routing::new();
        r.on_flood(t0, "B", "S", 0, 0, &flood("S", 50, 0, &["S"]))
            .unwrap();
        r.on_flood(t0, "B", "C", 0, 0, &flood("S", 50, 0, &["S", "C"]))
            .unwrap();
        // Its clock stepped back: 10 < 50, straight from it over one in-order link.
        let rec = r
            .on_flood(t0, "B", "S", 0, 0, &flood("S", 10, 0, &["S"]))
            .unwrap();
        assert!(
            rec.forward.is_some(),
            "forwarded, not taken for an old copy"
        );
        assert_eq!(
            r.providers("v"),
            vec!["S"],
            "the old life's routes are gone"
        );
        // An older copy over another neighbour is only recorded.
        let rec = r
            .on_flood(t0, "B", "C", 0, 0, &flood("S", 9, 0, &["S", "C"]))
            .unwrap();
        assert!(rec.forward.is_none());
    }
}
