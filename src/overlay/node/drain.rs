//! Drain: a node told to stop (SIGTERM) first lets its streams move elsewhere. It tells
//! every neighbour with a [`Drain`] notice (and any neighbour that links up later), forwards
//! no more floods, and keeps feeding its children until each has moved make-before-break to
//! another parent and cancelled; [`Node::drained`] then says the driver may exit (the driver
//! bounds the wait). A neighbour's notice marks it draining in the neighbour table, so no
//! stream takes it as a parent again, and moves the streams it feeds (see
//! [`Streams::neighbour_draining`](super::Streams)). Notices are idempotent: a repeated one
//! changes nothing and is only counted, so a peer sending many costs nothing. An edge's own
//! clients are local consumers: the edge's client service drains them
//! ([`crate::service::edge`]), and [`Node::serves_local`] tells the driver when they are gone.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Node, Output};
use crate::overlay::neighbours::LinkId;
use crate::wire::overlay::{Drain, OverlayMsg};

impl Node {
    /// Start draining: neighbours are told we exit within `within`. Idempotent.
    pub fn start_drain(&mut self, within: Duration) {
        if self.draining.is_some() {
            return;
        }
        self.draining = Some(within);
        let links: Vec<LinkId> = self
            .neighbours
            .neighbours()
            .iter()
            .map(|n| n.link)
            .collect();
        info!(
            neighbours = links.len(),
            within_ms = within.as_millis() as u64,
            "draining: neighbours told to move their streams elsewhere"
        );
        for link in links {
            self.send_drain_notice(link);
        }
        self.rearm();
    }

    /// Whether we are draining.
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// True when nothing depends on us any more: no neighbour takes a stream from us.
    pub fn drained(&self) -> bool {
        !self.streams.feeds_a_child()
    }

    /// True while a local consumer (an edge's clients) takes a stream from us: a draining
    /// edge's driver waits for its clients too, which leave through the edge's own drain.
    pub fn serves_local(&self) -> bool {
        self.streams.feeds_local()
    }

    pub(super) fn send_drain_notice(&mut self, link: LinkId) {
        let within_ms = self
            .draining
            .map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        self.counters.drain_notices_sent += 1;
        self.outputs.push_back(Output::Send {
            link,
            msg: OverlayMsg::Drain(Drain { within_ms }),
        });
    }

    /// A neighbour announced it is draining.
    pub(super) fn handle_drain_notice(&mut self, now: Instant, link: LinkId, from: &str, d: Drain) {
        if !self.neighbours.set_draining(link) {
            self.counters.drain_notices_repeated += 1;
            debug!(%link, neighbour = %from, "repeated drain notice ignored");
            return;
        }
        self.counters.drain_notices_received += 1;
        info!(%link, neighbour = %from, within_ms = d.within_ms, "neighbour draining: its streams move elsewhere");
        self.with_streams(now, |s, ctx| {
            s.neighbour_draining(ctx, from);
            s.reconcile(ctx);
        });
    }
}
