//! Helpers shared by the topology unit tests: parse a text that must load, or one that must
//! fail, with the error taken apart for compact assertions.

use super::{parse, Topology, TopologyError};

pub(super) fn parse_ok(text: &str) -> Topology {
    match parse(text, "t.json") {
        Ok(t) => t,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// (kind, line, column, reason) of an error, for compact assertions.
pub(super) fn parse_err(text: &str) -> (&'static str, usize, usize, String) {
    match parse(text, "t.json") {
        Ok(_) => panic!("expected an error for {text}"),
        Err(e) => {
            let kind = match e {
                TopologyError::Syntax { .. } => "syntax",
                TopologyError::Schema { .. } => "schema",
                TopologyError::Io { .. } => "io",
            };
            let (line, col) = e.position().unwrap_or((0, 0));
            assert!(
                e.to_string().starts_with(&format!("t.json:{line}:{col}: ")),
                "{e}"
            );
            (kind, line, col, e.reason())
        }
    }
}
