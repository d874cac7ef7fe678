//! Withdrawals: a node whose link to a server dies floods "the link S–N is down, last seq k"
//! (first copy only, like floods), and every node drops its routes to S over that link that
//! are not newer than k, so streams leave a dead server at once instead of waiting for its
//! routes to expire. The routing table owns the rule ([`on_withdrawal`](crate::overlay::routing::Routing::on_withdrawal)); this part
//! owns the sending, forwarding and per-neighbour budget.

use std::time::Instant;

use tracing::{debug, info};

use super::{Node, Output};
use crate::overlay::budget::Budget;
use crate::overlay::neighbours::LinkId;
use crate::overlay::routing::WithdrawalIgnored;
use crate::wire::overlay::{OverlayMsg, Withdrawal};

/// Withdrawals one neighbour may send us at once, and per second after that. One server's
/// death sends as many as it had links, and each reaches us once per neighbour: a burst of a
/// few dozen is legitimate, a steady stream is not.
pub const WITHDRAWAL_BURST: f64 = 64.0;
pub const WITHDRAWALS_PER_SEC: f64 = 16.0;

impl Node {
    pub(super) fn handle_withdrawal(
        &mut self,
        now: Instant,
        link: LinkId,
        from: &str,
        w: Withdrawal,
    ) {
        self.counters.withdrawals_received += 1;
        let within = self
            .withdrawal_budget
            .entry(from.to_string())
            .or_insert(Budget::full(WITHDRAWAL_BURST, now))
            .take(now, WITHDRAWAL_BURST, WITHDRAWALS_PER_SEC);
        if !within {
            self.counters.withdrawals_limited += 1;
            debug!(%link, from, "withdrawal over the neighbour's budget dropped");
            return;
        }
        match self.routing.on_withdrawal(now, &w) {
            Ok(changed) => {
                info!(server = %w.server, neighbour = %w.neighbour, last_seq = w.last_seq, from,
                    routes_withdrawn = changed, "link to a server down");
                self.send_withdrawal(&w, Some(link));
                if changed {
                    // A stream whose parent no longer offers a route moves at once.
                    self.with_streams(now, |s, ctx| s.routes_updated(ctx));
                }
            }
            Err(WithdrawalIgnored::Seen) => {}
            Err(WithdrawalIgnored::Malformed) => {
                self.counters.withdrawals_malformed += 1;
                debug!(%link, from, server = %w.server, "malformed withdrawal dropped");
            }
        }
    }

    /// Send a withdrawal to every neighbour but the one it came from.
    pub(super) fn send_withdrawal(&mut self, w: &Withdrawal, except: Option<LinkId>) {
        let targets: Vec<LinkId> = self
            .neighbours
            .neighbours()
            .into_iter()
            .filter(|n| Some(n.link) != except && n.name != w.server)
            .map(|n| n.link)
            .collect();
        for t in targets {
            if except.is_some() {
                self.counters.withdrawals_forwarded += 1;
            } else {
                self.counters.withdrawals_sent += 1;
            }
            self.outputs.push_back(Output::Send {
                link: t,
                msg: OverlayMsg::Withdrawal(w.clone()),
            });
        }
    }
}
