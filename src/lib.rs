//! overlayd: an application-layer multicast overlay for live video.
//!
//! The library holds everything the `overlayd` binary runs. Protocol logic lives in sans-IO
//! state machines (`topology`, `wire`, `crypto`, `overlay`); `net` and `roles` are the thin
//! tokio drivers that move bytes and time between sockets and those machines.

pub mod crypto;
pub mod emulate;
pub mod keyfile;
pub mod media;
pub mod net;
pub mod observe;
pub mod overlay;
pub mod roles;
pub mod service;
pub mod sim;
pub mod topology;
pub mod wire;
