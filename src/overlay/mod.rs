//! The overlay protocol as plain state machines: no tokio, no sockets, no clock reads.
//!
//! Drivers (`crate::net`) and the simulator (`crate::sim`) feed these machines with inputs
//! stamped with `now` and drain what they want done (`poll_output`) and when they next want to
//! be woken (`poll_timeout`). Everything time-dependent is decided from the injected `now`,
//! which is what lets the simulator replay whole overlays deterministically.
//!
//! [`Node`] is the one machine a daemon runs. It composes the neighbour table
//! ([`neighbours`]: links, dialling with backoff, keepalive liveness), the flood and parent
//! table ([`routing`]) and the streams ([`streams`], a folder of small parts: fan-out,
//! cancellation, make-before-break switching, in-order at-most-once delivery, failover and
//! grandfathers), drains their actions, and combines their exact deadlines in one timer table
//! (no scan tick).
//!
//! [`trace`] follows a video's tree hop by hop. [`budget`] is the token bucket that holds a
//! neighbour's withdrawals and pings to a rate. The node's views (`route_table`,
//! `parent_table`, `link_traffic`, counters, ...) are plain data; `crate::observe` turns them
//! into snapshots, metrics and tables.

pub mod budget;
pub mod neighbours;
pub mod node;
pub mod routing;
pub mod streams;
pub mod trace;

pub use neighbours::{LinkId, LivenessConfig, NeighbourTable};
pub use node::{GapWatch, LinkTraffic, Node, NodeConfig, NodeCounters, Output, ParentView};
pub use routing::Routing;
pub use streams::{RouteView, StreamConfig, StreamCounters, StreamState};
