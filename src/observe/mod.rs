//! What a running overlay shows to people and tools: snapshots, metrics, tables, traces and
//! the live map.
//!
//! The protocol machines in [`crate::overlay`] keep only protocol state and read-only views;
//! this module turns those views into presentation. [`snapshot`] reads a [`crate::overlay::Node`]
//! at one instant into a serialisable [`NodeStatus`] (the control endpoint's `/status` JSON,
//! with the driver's and an edge's parts added by their drivers); [`metrics`] renders it as
//! Prometheus text (`/metrics`) and [`tables`] as the tables `overlayd status` prints;
//! [`trace`] holds what a trace collected and the tree `overlayd trace` prints; [`map`] is the
//! bootstrapper's live-map model (reports in, a [`map::MapModel`] out). Like the protocol it
//! is sans-IO: `now` comes in, values come out; the HTTP servers are in `crate::net`.

pub mod map;
pub mod metrics;
pub mod snapshot;
pub mod tables;
pub mod trace;

pub use snapshot::NodeStatus;
