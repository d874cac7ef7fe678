//! The node: the one state machine an overlay daemon (server, node or edge) runs.
//!
//! Inputs are link events and decoded overlay messages, each stamped with `now`; outputs are
//! dials, messages to send on a link and links to close, plus the next instant it wants to be
//! woken. This layer keeps the neighbour table and answers keepalives; floods, parent tables,
//! streams and grandfathers are added on top of it by the overlay-core work, through the same
//! `handle_*` / `poll_*` surface, so drivers and the simulator never change shape.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::neighbours::{Action, LinkId, LivenessConfig, NeighbourTable};
use crate::wire::overlay::{Hello, OverlayMsg, OverlayRole, Ping, Pong, OVERLAY_VERSION};

/// Static configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: OverlayRole,
    /// Port we accept overlay links on, announced in our hello.
    pub listen_port: u16,
    /// Overlay neighbours from the topology.
    pub neighbours: Vec<SocketAddr>,
    pub liveness: LivenessConfig,
}

/// What the node wants its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open an overlay link to this address; report `handle_link_up` or `handle_dial_failed`.
    Dial(SocketAddr),
    /// Send a message on a link.
    Send { link: LinkId, msg: OverlayMsg },
    /// Close a link; the driver then reports `handle_link_down`.
    Close { link: LinkId, reason: String },
}

/// Counters a driver or a test can read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeCounters {
    pub links_up: u64,
    pub links_down: u64,
    pub dials: u64,
    pub dial_failures: u64,
    /// Messages this layer does not handle yet, or that make no sense after the hello.
    pub messages_ignored: u64,
}

/// See module docs.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    neighbours: NeighbourTable,
    outputs: VecDeque<Output>,
    counters: NodeCounters,
}

impl Node {
    pub fn new(config: NodeConfig, now: Instant) -> Node {
        let mut neighbours = NeighbourTable::new(&config.name, config.liveness.clone(), now);
        for addr in &config.neighbours {
            neighbours.want(now, *addr, true);
        }
        let mut node = Node {
            config,
            neighbours,
            outputs: VecDeque::new(),
            counters: NodeCounters::default(),
        };
        node.handle_timeout(now);
        node
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The hello this node sends first on every link.
    pub fn hello(&self) -> Hello {
        Hello {
            name: self.config.name.clone(),
            role: self.config.role,
            version: OVERLAY_VERSION,
            listen_port: self.config.listen_port,
        }
    }

    pub fn neighbours(&self) -> &NeighbourTable {
        &self.neighbours
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr, reason: &str) {
        self.counters.dial_failures += 1;
        match self.neighbours.dial_failed(now, addr) {
            Some(delay) => info!(
                %addr, reason, retry_in_ms = delay.as_millis() as u64,
                "neighbour not reachable, retrying"
            ),
            None => debug!(%addr, reason, "dial failed for an address no longer wanted"),
        }
        self.flush_actions();
    }

    /// A link passed the encrypted handshake and the hello exchange. `dialled` is the address
    /// we dialled for an outbound link, `None` for an inbound one.
    pub fn handle_link_up(
        &mut self,
        now: Instant,
        link: LinkId,
        remote: SocketAddr,
        dialled: Option<SocketAddr>,
        hello: Hello,
    ) {
        if hello.version != OVERLAY_VERSION {
            warn!(%link, peer = %hello.name, version = hello.version, "incompatible protocol version");
            self.outputs.push_back(Output::Close {
                link,
                reason: format!(
                    "protocol version {} (we speak {})",
                    hello.version, OVERLAY_VERSION
                ),
            });
            if let Some(addr) = dialled {
                self.neighbours.dial_failed(now, addr);
            }
            return;
        }
        self.neighbours.link_up(now, link, remote, dialled, &hello);
        self.flush_actions();
    }

    pub fn handle_link_down(&mut self, now: Instant, link: LinkId, reason: &str) {
        self.neighbours.link_down(now, link, reason);
        self.flush_actions();
    }

    pub fn handle_message(&mut self, now: Instant, link: LinkId, msg: OverlayMsg) {
        if self.neighbours.get(link).is_none() {
            // A late frame on a link we already retired.
            self.counters.messages_ignored += 1;
            return;
        }
        self.neighbours.heard(now, link);
        match msg {
            OverlayMsg::Ping(Ping { token }) => self.neighbours.handle_ping(link, token),
            OverlayMsg::Pong(Pong { token }) => self.neighbours.handle_pong(now, link, token),
            other => {
                self.counters.messages_ignored += 1;
                debug!(%link, kind = other.kind(), "message not handled by this node");
            }
        }
        self.flush_actions();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.neighbours.handle_timeout(now);
        self.flush_actions();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.neighbours.poll_timeout()
    }

    fn flush_actions(&mut self) {
        while let Some(action) = self.neighbours.poll_action() {
            match action {
                Action::Dial(addr) => {
                    self.counters.dials += 1;
                    self.outputs.push_back(Output::Dial(addr));
                }
                Action::Ping { link, token } => self.outputs.push_back(Output::Send {
                    link,
                    msg: OverlayMsg::Ping(Ping { token }),
                }),
                Action::Pong { link, token } => self.outputs.push_back(Output::Send {
                    link,
                    msg: OverlayMsg::Pong(Pong { token }),
                }),
                Action::Close { link, reason } => {
                    self.outputs.push_back(Output::Close { link, reason })
                }
                Action::Up { link, name } => {
                    self.counters.links_up += 1;
                    let n = self.neighbours.get(link);
                    info!(
                        %link, neighbour = %name,
                        role = ?n.map(|n| n.role),
                        addr = %n.map(|n| n.listen_addr.to_string()).unwrap_or_default(),
                        "neighbour up"
                    );
                }
                Action::Replaced { old, new, name } => {
                    debug!(%old, %new, neighbour = %name, "duplicate link resolved");
                }
                Action::Down { link, name, reason } => {
                    self.counters.links_down += 1;
                    info!(%link, neighbour = %name, reason, "neighbour down");
                }
            }
        }
    }
}
