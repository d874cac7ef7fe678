//! Parsing a topology file: text to [`Topology`], with errors at `FILE:LINE:COL`.
//!
//! People edit these files by hand, so every error names a position (1-based, columns in
//! characters, as editors show them). Syntax errors come from serde_json, with a hint for the
//! usual slips (comments, single quotes, a missing closing brace); schema errors come from
//! [`Device::from_json`] and are placed by the scan (`scan.rs`) of the already valid text.
//! Repeated device names and repeated keys inside a device are errors here, because serde_json
//! would silently keep the last one. A byte-order mark and CRLF line ends are accepted.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::device::{describe, validate_name, Device};
use super::scan::{find_duplicate_key, line_col, locate, Member, NodeKind, Scanner, SeenKeys};
use super::Topology;

/// A topology file that could not be loaded. Display: `FILE:LINE:COL: reason` (or `FILE: reason`
/// for I/O errors).
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{file}:{line}:{column}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        reason: String,
    },
    /// Valid JSON that is not a valid topology.
    #[error("{file}:{line}:{column}: {reason}")]
    Schema {
        file: String,
        line: usize,
        column: usize,
        reason: String,
    },
}

impl TopologyError {
    /// `(line, column)`, 1-based, for syntax and schema errors.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            TopologyError::Io { .. } => None,
            TopologyError::Syntax { line, column, .. }
            | TopologyError::Schema { line, column, .. } => Some((*line, *column)),
        }
    }

    /// The reason without the file and position.
    pub fn reason(&self) -> String {
        match self {
            TopologyError::Io { source, .. } => source.to_string(),
            TopologyError::Syntax { reason, .. } | TopologyError::Schema { reason, .. } => {
                reason.clone()
            }
        }
    }
}

/// Parses a topology file's text; `file` only names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Topology, TopologyError> {
    // Editors on Windows may save a byte-order mark; it is invisible, so positions ignore it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
    let schema = |at: usize, reason: String| {
        let (line, column) = line_col(text, at);
        TopologyError::Schema {
            file: file.to_string(),
            line,
            column,
            reason,
        }
    };
    // The text is valid JSON here, so the scan cannot fail; if it somehow does, errors fall back
    // to the start of the file rather than being lost.
    let root = Scanner::new(text).document();
    let root_at = root.as_ref().map_or(0, |n| n.at);

    let Value::Object(devices) = &value else {
        return Err(schema(
            root_at,
            format!(
                "the top level must be a JSON object keyed by device name, found {}",
                describe(&value)
            ),
        ));
    };
    let members: &[Member] = match root.as_ref().map(|n| &n.kind) {
        Some(NodeKind::Object(m)) => m,
        _ => &[],
    };

    // serde_json keeps the last of duplicate keys silently; a repeated device name is almost
    // always a copy-paste slip, so it is an error pointing at the second one.
    // Everything in one pass, so the error reported is the first one in the file.
    let mut seen = SeenKeys::default();
    let mut out = BTreeMap::new();
    for m in members {
        if let Some(first) = seen.repeat_of(m) {
            let name = m.key.escape_debug();
            let line = line_col(text, first).0;
            return Err(schema(
                m.key_at,
                format!("duplicate device name '{name}' (first defined at line {line})"),
            ));
        }
        validate_name(&m.key).map_err(|r| schema(m.key_at, r))?;
        if let Some((at, reason)) = find_duplicate_key(text, &m.value) {
            return Err(schema(
                at,
                format!("device '{}': {reason}", m.key.escape_debug()),
            ));
        }
        let Some(v) = devices.get(&m.key) else {
            continue;
        };
        let device = Device::from_json(&m.key, v)
            .map_err(|e| schema(locate(&m.value, &e.path), e.to_string()))?;
        out.insert(m.key.clone(), device);
    }
    // Only reached without the scan (impossible for valid JSON); keep the devices anyway.
    for (name, v) in devices {
        if !out.contains_key(name) {
            validate_name(name).map_err(|r| schema(root_at, r))?;
            let device = Device::from_json(name, v).map_err(|e| schema(root_at, e.to_string()))?;
            out.insert(name.clone(), device);
        }
    }
    Ok(Topology { devices: out })
}

/// Reads and parses a topology file.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TopologyError::Io {
        file: file.clone(),
        source,
    })?;
    parse_bytes(&bytes, &file)
}

/// Parses a topology file's raw content; invalid UTF-8 is a syntax error at its position.
pub fn parse_bytes(bytes: &[u8], file: &str) -> Result<Topology, TopologyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned();
        let (line, column) = line_col(&valid, valid.len());
        TopologyError::Syntax {
            file: file.to_string(),
            line,
            column,
            reason: "the file is not valid UTF-8 text".into(),
        }
    })?;
    parse(text, file)
}

/// Byte offset of serde_json's (line, 1-based byte column), clamped into the text.
fn offset_of(text: &str, line: usize, byte_col: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    let line_len = text[start..].find('\n').unwrap_or(text.len() - start);
    let mut at = start + byte_col.saturating_sub(1).min(line_len);
    // serde_json may point inside a multi-byte character (e.g. at the end of the input).
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn syntax_error(file: &str, text: &str, e: &serde_json::Error) -> TopologyError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut reason = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    let at = offset_of(text, e.line(), e.column());
    let rest = &text[at..];
    if text.trim().is_empty() {
        reason = "the file is empty; expected a JSON object keyed by device name".into();
    } else if rest.starts_with("//") || rest.starts_with("/*") {
        reason = format!("{reason}: comments are not allowed in JSON");
    } else if rest.starts_with('\'') {
        reason = format!("{reason}: JSON strings use double quotes");
    } else if reason.starts_with("EOF while parsing") {
        reason = format!("{reason}: the file ends early (a closing '}}' or ']' is missing?)");
    }
    let (line, column) = line_col(text, at);
    TopologyError::Syntax {
        file: file.to_string(),
        line,
        column,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{parse_err, parse_ok};
    use crate::topology::{check, DeviceRole, MAX_NAME_LEN};

    #[test]
    fn parses_the_design_example() {
        let t = parse_ok(
            r#"{ "S1": { "neighbours": ["10.0.1.1"] },
  "O1": { "neighbours": ["10.0.1.10", "10.0.2.2"], "edge": false },
  "O3": { "neighbours": ["10.0.2.1"], "edge": true },
  "C1": { "neighbours": ["10.0.3.1"] } }"#,
        );
        assert_eq!(t.names().collect::<Vec<_>>(), ["C1", "O1", "O3", "S1"]);
        let o1 = t.get("O1").unwrap();
        assert_eq!(o1.role, DeviceRole::Node);
        assert!(o1.role_inferred && !o1.edge);
        assert_eq!(o1.neighbours.len(), 2);
        assert_eq!(o1.neighbours[1].to_string(), "10.0.2.2");
        assert_eq!(t.get("O3").unwrap().role, DeviceRole::Edge);
        assert!(t.get("O3").unwrap().edge);
        assert_eq!(t.get("S1").unwrap().role, DeviceRole::Server);
        assert_eq!(t.get("C1").unwrap().role, DeviceRole::Client);
    }

    #[test]
    fn parses_the_report_example_file() {
        let t = parse_ok(include_str!("../../topology/report-example.json"));
        assert_eq!(t.len(), 5);
        assert_eq!(check(&t), vec![]);
        assert_eq!(t.get("server1").unwrap().role, DeviceRole::Server);
        assert_eq!(t.get("client1").unwrap().role, DeviceRole::Client);
        assert_eq!(t.get("O3").unwrap().role, DeviceRole::Edge);
        assert_eq!(
            t.owners_of("10.0.0.1".parse().unwrap())
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["O3"]
        );
    }

    // --- syntax errors -------------------------------------------------------------------

    #[test]
    fn syntax_error_positions() {
        // Missing comma between devices: reported where the next key starts.
        let text = "{\n  \"O1\": {\"neighbours\": []}\n  \"O2\": {\"neighbours\": []}\n}\n";
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("syntax", 3, 3));
        assert!(reason.contains("expected `,` or `}`"), "{reason}");

        // Trailing comma.
        let (kind, line, col, reason) =
            parse_err("{\n  \"O1\": {\"neighbours\": [\"10.0.0.1\",]}\n}");
        assert_eq!((kind, line, col), ("syntax", 2, 36));
        assert!(reason.contains("trailing comma"), "{reason}");

        // Comments copied from the report.
        let (kind, line, col, reason) =
            parse_err("{\n  \"O1\": { // a node\n    \"neighbours\": []\n  }\n}");
        assert_eq!((kind, line, col), ("syntax", 2, 11));
        assert!(reason.contains("comments are not allowed"), "{reason}");

        // Single quotes.
        let (_, line, col, reason) = parse_err("{'O1': {}}");
        assert_eq!((line, col), (1, 2));
        assert!(reason.contains("double quotes"), "{reason}");

        // Unclosed object.
        let (_, line, _, reason) = parse_err("{\n  \"O1\": {\"neighbours\": []}\n");
        assert_eq!(line, 3);
        assert!(reason.contains("EOF while parsing an object"), "{reason}");
        assert!(reason.contains("missing"), "{reason}");

        // Empty file.
        let (kind, line, col, reason) = parse_err("  \n");
        assert_eq!((kind, line, col), ("syntax", 2, 1));
        assert!(reason.contains("empty"), "{reason}");
    }

    #[test]
    fn syntax_error_inside_a_multibyte_character() {
        // Found by proptest: serde_json's position fell inside "\u{f99}" (3 bytes).
        let (kind, line, col, _) = parse_err("\"\u{f99}");
        assert_eq!((kind, line, col), ("syntax", 1, 2));
    }

    #[test]
    fn syntax_error_columns_count_characters() {
        // "é" is two bytes; the column is in characters, as editors show it.
        let (_, line, col, _) = parse_err("{\"é\": {\"neighbours\": []} x}");
        assert_eq!((line, col), (1, 26));
    }

    // --- schema errors -------------------------------------------------------------------

    #[test]
    fn schema_error_bad_neighbour() {
        let text = concat!(
            "{\n",
            "  \"O1\": {\n",
            "    \"neighbours\": [\"10.0.0.1\",\n",
            "                   \"10.0.1\"]\n",
            "  }\n",
            "}\n"
        );
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 4, 20));
        assert_eq!(
            reason,
            "device 'O1': neighbours[1]: '10.0.1' is not an IP address, IP:PORT or [IPv6]:PORT"
        );
    }

    #[test]
    fn schema_error_neighbour_not_a_string() {
        let (kind, line, col, reason) = parse_err("{\"O1\": {\"neighbours\": [\"10.0.0.1\", 42]}}");
        assert_eq!((kind, line, col), ("schema", 1, 36));
        assert!(reason.contains("found a number"), "{reason}");
    }

    #[test]
    fn schema_error_device_not_an_object() {
        let (kind, line, col, reason) = parse_err("{\n  \"O1\": [\"10.0.0.1\"]\n}");
        assert_eq!((kind, line, col), ("schema", 2, 9));
        assert!(reason.contains("expected an object"), "{reason}");
        assert!(reason.contains("found a list"), "{reason}");
    }

    #[test]
    fn schema_error_edge_not_bool() {
        let text = "{\n  \"O3\": {\"neighbours\": [],\n         \"edge\": \"true\"}\n}";
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 3, 18));
        assert!(reason.contains("without quotes"), "{reason}");

        let (_, line, col, reason) = parse_err("{\"O3\": {\"neighbours\": [], \"edge\": 1}}");
        assert_eq!((line, col), (1, 35));
        assert!(reason.contains("true or false, found a number"), "{reason}");
    }

    #[test]
    fn schema_error_empty_and_bad_names() {
        let (kind, line, col, reason) =
            parse_err("{\n  \"O1\": {\"neighbours\": []},\n  \"\": {}\n}");
        assert_eq!((kind, line, col), ("schema", 3, 3));
        assert_eq!(reason, "empty device name");

        let (_, line, col, reason) = parse_err("{\"O1 \": {\"neighbours\": []}}");
        assert_eq!((line, col), (1, 2));
        assert!(reason.contains("spaces"), "{reason}");

        let long = "x".repeat(MAX_NAME_LEN + 1);
        let (_, _, _, reason) = parse_err(&format!("{{\"{long}\": {{\"neighbours\": []}}}}"));
        assert!(reason.contains("at most"), "{reason}");
    }

    #[test]
    fn schema_error_top_level_not_object() {
        let (kind, line, col, reason) = parse_err("\n\n   [1, 2]");
        assert_eq!((kind, line, col), ("schema", 3, 4));
        assert!(
            reason.contains("top level must be a JSON object"),
            "{reason}"
        );
    }

    #[test]
    fn schema_error_missing_neighbours_suggests_spelling() {
        let (kind, line, col, reason) =
            parse_err("{\n  \"O1\": {\n    \"neighbors\": [\"10.0.0.1\"]\n  }\n}");
        assert_eq!((kind, line, col), ("schema", 2, 9));
        assert!(reason.contains("no \"neighbours\" list"), "{reason}");
        assert!(reason.contains("did you mean \"neighbours\""), "{reason}");
    }

    #[test]
    fn schema_error_addresses_and_role() {
        let (_, line, col, reason) =
            parse_err("{\"O1\": {\"neighbours\": [], \"addresses\": [\"10.0.0.1:80\"]}}");
        assert_eq!((line, col), (1, 41));
        assert!(reason.contains("without a port"), "{reason}");

        let (_, line, col, reason) =
            parse_err("{\"O1\": {\"neighbours\": [],\n \"role\": \"router\"}}");
        assert_eq!((line, col), (2, 10));
        assert!(reason.contains("unknown role 'router'"), "{reason}");

        let (_, line, col, reason) =
            parse_err("{\"O1\": {\"neighbours\": [], \"role\": \"edge\", \"edge\": false}}");
        assert_eq!((line, col), (1, 51));
        assert!(reason.contains("contradicts"), "{reason}");

        let (_, _, _, reason) = parse_err("{\"O1\": {\"neighbours\": \"10.0.0.1\"}}");
        assert!(reason.contains("write [\"10.0.0.1\"]"), "{reason}");
    }

    #[test]
    fn schema_error_in_link_parameters_points_at_the_value() {
        let text = concat!(
            "{\"O1\": {\"neighbours\": [],\n",
            "  \"links\": {\"O2\": {\"delay\": 20}}}}\n"
        );
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 2, 29));
        assert!(
            reason.starts_with("device 'O1': links.O2.delay: 20 has no unit"),
            "{reason}"
        );

        let (_, line, col, reason) =
            parse_err("{\"O1\": {\"neighbours\": [], \"links\": {\"10.0.2.1/24\": {}}}}");
        assert_eq!((line, col), (1, 52)); // the entry of the bad key
        assert!(
            reason.contains("host bits set: the subnet is 10.0.2.0/24"),
            "{reason}"
        );

        let (_, _, _, reason) = parse_err("{\"O1\": {\"neighbours\": [], \"links\": [\"O2\"]}}");
        assert!(reason.contains("\"links\" must be an object"), "{reason}");
    }

    #[test]
    fn schema_error_after_multibyte_text() {
        // Positions in characters also for schema errors.
        let (_, line, col, _) = parse_err("{\"Ó1\": {\"neighbours\": [\"x\"]}}");
        assert_eq!((line, col), (1, 24));
    }

    #[test]
    fn duplicate_device_names() {
        let text = concat!(
            "{\n",
            "  \"O1\": {\"neighbours\": []},\n",
            "  \"O2\": {\"neighbours\": []},\n",
            "  \"O1\": {\"neighbours\": [\"10.0.0.1\"]}\n",
            "}\n"
        );
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 4, 3));
        assert_eq!(
            reason,
            "duplicate device name 'O1' (first defined at line 2)"
        );
    }

    #[test]
    fn first_error_in_the_file_wins() {
        let text = "{\"O1\": {\"neighbours\": [\"x\"]},\n \"O2\": {}, \"O2\": {}}";
        let (_, line, col, reason) = parse_err(text);
        assert_eq!((line, col), (1, 24), "{reason}");
    }

    #[test]
    fn bom_and_crlf_are_accepted() {
        let t = parse_ok("\u{feff}{\r\n  \"O1\": {\"neighbours\": [\"10.0.0.1\"]}\r\n}\r\n");
        assert_eq!(t.len(), 1);
        let (_, line, col, _) = parse_err("\u{feff}{\r\n  \"O1\": {\"neighbours\": [1]}\r\n}");
        assert_eq!((line, col), (2, 25));
    }

    #[test]
    fn invalid_utf8_position() {
        let e = parse_bytes(b"{\n  \"O\xff\": {}}", "t.json").unwrap_err();
        assert_eq!(e.position(), Some((2, 5)));
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/dir/topo.json");
        let e = load(missing).unwrap_err();
        assert!(matches!(e, TopologyError::Io { .. }));
        assert!(
            e.to_string().starts_with("/nonexistent/dir/topo.json: "),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, "p.json");
        }

        #[test]
        fn parse_never_panics_on_jsonish(text in "[{}\\[\\]\":,a-z0-9. \n\\\\]{0,120}") {
            if let Ok(t) = parse(&text, "p.json") {
                let _ = crate::topology::check(&t);
            }
        }
    }
}
