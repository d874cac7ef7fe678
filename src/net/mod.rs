//! Thin tokio drivers that move bytes between sockets and the protocol logic.
pub mod bootstrap_client;
