//! overlayd: an application-layer multicast overlay for live video.
//!
//! The library holds everything the `overlayd` binary runs. The protocol is sans-IO state
//! machines that read no clock and touch no socket: `wire` (message encodings), `crypto`
//! (handshake and record layer), `overlay` (the overlay node) and `service` (the edge and
//! client services over UDP); `sim` drives those same machines in virtual time. `net` holds the
//! tokio drivers that feed them from sockets and timers, `media` the ffmpeg children and TS
//! pacing, `observe` what a daemon shows of itself (status snapshot, metrics, CLI tables, trace
//! view, the bootstrapper's live-map model), and `roles` assembles what each `--role` runs (the bootstrapper's TCP server among
//! them). `topology` is the topology file's model, parser and checks (pure apart from loading
//! a file), `keyfile` the overlay key on disk, `lateness` how late a machine's own timers fire (the
//! slack both suspicions give a saturated host), `emulate` CORE scenario generation and the
//! network-namespace emulator (which runs `ip` and `nft`), and `cli` the command line: each
//! role's options and their conversion into that role's configuration.

pub mod cli;
pub mod crypto;
pub mod emulate;
pub mod keyfile;
pub mod lateness;
pub mod media;
pub mod net;
pub mod observe;
pub mod overlay;
pub mod roles;
pub mod service;
pub mod sim;
pub mod topology;
pub mod wire;
