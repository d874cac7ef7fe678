//! Message types and their encode/decode.
pub mod bootstrap;
