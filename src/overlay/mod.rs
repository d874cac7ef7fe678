//! The overlay protocol as plain state machines: no tokio, no sockets, no clock reads.
//!
//! Drivers (`crate::net`) and the simulator feed these machines with inputs stamped with `now`
//! and drain what they want done (`poll_output`) and when they next want to be woken
//! (`poll_timeout`). Everything time-dependent is decided from the injected `now`, which is what
//! lets the simulator replay whole overlays deterministically.
//!
//! [`Node`] is the one machine a daemon runs: it owns the neighbour table (who we are
//! connected to, dialling with backoff, keepalive liveness) and, in later layers, floods,
//! parent tables and streams.

pub mod neighbours;
pub mod node;

pub use neighbours::{LinkId, LivenessConfig, NeighbourTable};
pub use node::{Node, NodeConfig, Output};
