//! Sans-IO state machines of the edge ↔ client service: the edge side ([`edge`]) and the
//! client side ([`client`], with its loss-recovery buffer [`recovery`]).
//!
//! Like `crate::overlay`, nothing here touches a socket or reads a clock: every input carries
//! `now`, outputs (datagrams to send, events) are polled, and each machine says when it next
//! wants [`handle_timeout`](edge::EdgeService::handle_timeout). The tokio drivers live in
//! `crate::net::edge_driver` and `crate::net::client_driver`; the bytes are `crate::wire::client`.

pub mod client;
pub mod edge;
pub mod recovery;
