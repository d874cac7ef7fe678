//! The node's timer table, in quinn-proto's shape: one exact deadline per kind of timer, each
//! set from the part that owns it after every input, and the nearest one is what
//! [`super::Node::poll_timeout`] reports (`None` when nothing waits). There is no scan tick:
//! a part that has nothing pending has no deadline. A deadline is a wake-up, never an action:
//! at it the owning part re-checks its own state, so a deadline left early (a neighbour that
//! spoke again since) costs one look. A new kind of timer (a faster liveness probe, a drain's
//! bound) is one more variant here and one more arm in `Node::handle_timeout`.

use std::time::Instant;

/// What a node waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// The neighbour table: dial retries, keepalive pings, links silent for too long.
    Links,
    /// Our own next flood (servers).
    Flood,
    /// The oldest route runs out without a fresh flood.
    RouteExpiry,
    /// The nearest stream deadline (switch, stall, merge hole, linger, refusal end).
    Streams,
}

impl Timer {
    /// Every kind, in the order they are handled when several are due at once.
    pub const ALL: [Timer; 4] = [
        Timer::Links,
        Timer::Flood,
        Timer::RouteExpiry,
        Timer::Streams,
    ];
}

/// One deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer as usize] = at;
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// The nearest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// The timers due at `now`, in [`Timer::ALL`] order.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = Timer> + '_ {
        Timer::ALL
            .into_iter()
            .filter(move |t| self.get(*t).is_some_and(|at| at <= now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_nearest_deadline_wins_and_an_empty_table_waits_for_nothing() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        assert_eq!(t.due(t0 + Duration::from_secs(3600)).count(), 0);
        t.set(Timer::Streams, Some(t0 + Duration::from_millis(30)));
        t.set(Timer::Flood, Some(t0 + Duration::from_millis(20)));
        t.set(Timer::Links, Some(t0 + Duration::from_millis(50)));
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(20)));
        let due: Vec<Timer> = t.due(t0 + Duration::from_millis(30)).collect();
        assert_eq!(due, [Timer::Flood, Timer::Streams]);
        t.set(Timer::Flood, None);
        assert_eq!(t.next(), Some(t0 + Duration::from_millis(30)));
        assert_eq!(t.get(Timer::RouteExpiry), None);
    }

    #[test]
    fn a_lone_node_waits_for_nothing_and_a_server_for_its_next_flood() {
        use crate::overlay::{Node, NodeConfig};
        use crate::wire::overlay::OverlayRole;
        let t0 = Instant::now();
        let node = Node::new(NodeConfig::new("A", OverlayRole::Node, 7000, vec![]), t0);
        assert_eq!(node.poll_timeout(), None);
        let mut cfg = NodeConfig::new("S", OverlayRole::Server, 7000, vec![]);
        cfg.videos = vec!["v".into()];
        let interval = cfg.flood_interval;
        let mut server = Node::new(cfg, t0);
        assert_eq!(server.poll_timeout(), Some(t0 + interval));
        // Early: nothing happens, the deadline stays.
        server.handle_timeout(t0 + interval / 2);
        assert_eq!(server.poll_timeout(), Some(t0 + interval));
        server.handle_timeout(t0 + interval);
        assert_eq!(server.poll_timeout(), Some(t0 + interval * 2));
    }
}
