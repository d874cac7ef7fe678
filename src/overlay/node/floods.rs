//! Floods at the node: receiving one (the routing table records it and says whether to
//! forward it, first copy only), forwarding it to every neighbour not yet visited, and a
//! server's own floods (a new sequence number each interval, or the current one again for a
//! neighbour that just came up). The rules of routes and forwarding are the routing table's
//! ([`Routing`](crate::overlay::routing::Routing)).

use std::time::Instant;

use tracing::debug;

use super::{Node, Output};
use crate::overlay::neighbours::LinkId;
use crate::overlay::routing::FloodIgnored;
use crate::wire::overlay::{Flood, OverlayMsg};

impl Node {
    pub(super) fn handle_flood(&mut self, now: Instant, link: LinkId, from: &str, flood: Flood) {
        self.counters.floods_received += 1;
        let half_rtt_us = self
            .neighbours
            .get(link)
            .and_then(|n| n.rtt)
            .map_or(0, |rtt| rtt.as_micros() as u64 / 2);
        let wall = self.wall_us(now);
        match self
            .routing
            .on_flood(now, &self.config.name, from, wall, half_rtt_us, &flood)
        {
            Ok(rec) => {
                self.streams.flood_from(from, &flood.videos);
                // A draining node offers no path any more.
                if let Some(fwd) = rec.forward.filter(|_| self.draining.is_none()) {
                    let targets: Vec<LinkId> = self
                        .neighbours
                        .neighbours()
                        .into_iter()
                        .filter(|n| n.link != link && !fwd.visited.contains(&n.name))
                        .map(|n| n.link)
                        .collect();
                    for t in targets {
                        self.counters.floods_forwarded += 1;
                        self.outputs.push_back(Output::Send {
                            link: t,
                            msg: OverlayMsg::Flood(fwd.clone()),
                        });
                    }
                }
                // Any flood may make another parent clearly better (its delay moved) or
                // feed a waiting stream: streams look at once, not at a later scan.
                self.with_streams(now, |s, ctx| s.routes_updated(ctx));
            }
            Err(why) => {
                self.counters.floods_dropped += 1;
                if why == FloodIgnored::Malformed {
                    debug!(%link, server = %flood.server, "flood with a forged visited list dropped");
                }
            }
        }
    }

    /// Flood to every neighbour (a new sequence number), or re-send the current flood to one
    /// new neighbour so it learns our routes without waiting an interval.
    pub(super) fn send_flood(&mut self, now: Instant, only: Option<LinkId>) {
        let seq = match (self.flood_seq, only) {
            (Some(s), Some(_)) => s,
            (Some(s), None) => s + 1,
            // Start from wall milliseconds so a restarted server's floods are newer.
            (None, _) => self.wall_us(now) / 1000,
        };
        self.flood_seq = Some(seq);
        let flood = Flood {
            server: self.config.name.clone(),
            seq,
            sent_at_us: self.wall_us(now),
            link_sum_us: 0,
            visited: vec![self.config.name.clone()],
            videos: self.config.videos.clone(),
        };
        let links: Vec<LinkId> = match only {
            Some(l) => vec![l],
            None => self
                .neighbours
                .neighbours()
                .iter()
                .map(|n| n.link)
                .collect(),
        };
        for link in links {
            self.counters.floods_sent += 1;
            self.outputs.push_back(Output::Send {
                link,
                msg: OverlayMsg::Flood(flood.clone()),
            });
        }
    }
}
