//! Where things are in JSON text: the start of every key and value, and line/column numbers.
//!
//! serde_json's `Value` forgets positions, so after a file has parsed as JSON a small scanner
//! walks the same (valid) text once more and records where each object member and array item
//! starts ([`Scanner`], [`Node`]). The parser uses it to point a schema error at the offending
//! value ([`locate`]), to find repeated keys that serde_json would silently drop
//! ([`find_duplicate_key`]), and to turn byte offsets into what editors show ([`line_col`]).
//! It never judges the text: on anything it does not expect it gives up (`None`).

use std::collections::HashMap;

use super::device::PathSeg;

/// Nesting limit of the position scanner; serde_json refuses deeper documents anyway (128).
const MAX_DEPTH: usize = 256;

/// 1-based line and character column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = 1 + before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, 1 + before[line_start..].chars().count())
}
#[derive(Debug)]
pub(super) struct Node {
    pub(super) at: usize,
    pub(super) kind: NodeKind,
}

#[derive(Debug)]
pub(super) enum NodeKind {
    Object(Vec<Member>),
    Array(Vec<Node>),
    Scalar,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) key: String,
    pub(super) key_at: usize,
    pub(super) value: Node,
}

pub(super) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
        }
    }

    pub(super) fn document(mut self) -> Option<Node> {
        self.value()
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.skip_ws();
        (self.peek() == Some(b)).then(|| self.pos += 1)
    }

    fn value(&mut self) -> Option<Node> {
        self.skip_ws();
        let at = self.pos;
        let kind = match self.peek()? {
            b'{' => self.nested(Self::object)?,
            b'[' => self.nested(Self::array)?,
            b'"' => {
                self.string_end()?;
                NodeKind::Scalar
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
                NodeKind::Scalar
            }
        };
        Some(Node { at, kind })
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<NodeKind>) -> Option<NodeKind> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn object(&mut self) -> Option<NodeKind> {
        self.pos += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(NodeKind::Object(members));
        }
        loop {
            self.skip_ws();
            let key_at = self.pos;
            if self.peek() != Some(b'"') {
                return None;
            }
            let end = self.string_end()?;
            let key: String = serde_json::from_str(&self.text[key_at..end]).ok()?;
            self.expect(b':')?;
            let value = self.value()?;
            members.push(Member { key, key_at, value });
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(NodeKind::Object(members));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self) -> Option<NodeKind> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(NodeKind::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(NodeKind::Array(items));
                }
                _ => return None,
            }
        }
    }

    /// Skips a string starting at the current '"'; returns the offset just past its closing '"'.
    fn string_end(&mut self) -> Option<usize> {
        self.pos += 1;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Some(self.pos);
                }
                _ => self.pos += 1,
            }
        }
    }
}

/// Where the value at `path` starts; the deepest existing step when the path runs out.
pub(super) fn locate(node: &Node, path: &[PathSeg]) -> usize {
    let mut cur = node;
    for seg in path {
        let next = match (seg, &cur.kind) {
            (PathSeg::Key(k), NodeKind::Object(members)) => {
                members.iter().rev().find(|m| &m.key == k).map(|m| &m.value)
            }
            (PathSeg::Index(i), NodeKind::Array(items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur.at
}

/// The keys of one object met so far, with where each first stood.
#[derive(Default)]
pub(super) struct SeenKeys<'a>(HashMap<&'a str, usize>);

impl<'a> SeenKeys<'a> {
    /// Where an earlier member had `m`'s key; `None` (and `m` remembered) when it is new.
    pub(super) fn repeat_of(&mut self, m: &'a Member) -> Option<usize> {
        match self.0.get(m.key.as_str()) {
            Some(&first) => Some(first),
            None => {
                self.0.insert(&m.key, m.key_at);
                None
            }
        }
    }
}

/// The first repeated key in any object under `node`, as (offset of the repeat, reason).
pub(super) fn find_duplicate_key(text: &str, node: &Node) -> Option<(usize, String)> {
    match &node.kind {
        NodeKind::Scalar => None,
        NodeKind::Array(items) => items.iter().find_map(|n| find_duplicate_key(text, n)),
        NodeKind::Object(members) => {
            let mut seen = SeenKeys::default();
            for m in members {
                if let Some(first) = seen.repeat_of(m) {
                    let key = m.key.escape_debug();
                    let line = line_col(text, first).0;
                    return Some((
                        m.key_at,
                        format!("duplicate key \"{key}\" (first at line {line})"),
                    ));
                }
                if let Some(found) = find_duplicate_key(text, &m.value) {
                    return Some(found);
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::parse_err;

    #[test]
    fn duplicate_fields_inside_a_device() {
        let text = "{\"O1\": {\"neighbours\": [],\n  \"edge\": true,\n  \"edge\": false}}";
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 3, 3));
        assert_eq!(
            reason,
            "device 'O1': duplicate key \"edge\" (first at line 2)"
        );
    }

    fn key(k: &str) -> PathSeg {
        PathSeg::Key(k.into())
    }

    #[test]
    fn locate_finds_keys_items_and_the_deepest_existing_step() {
        let text = "{\"a\": [1, {\"b\": \"x\"}],\n \"c\": true}";
        let root = Scanner::new(text).document().unwrap();
        let at = |path: &[PathSeg]| &text[locate(&root, path)..];
        assert!(at(&[]).starts_with("{\"a\""));
        assert!(at(&[key("a")]).starts_with("[1,"));
        assert!(at(&[key("a"), PathSeg::Index(1)]).starts_with("{\"b\""));
        assert!(at(&[key("a"), PathSeg::Index(1), key("b")]).starts_with("\"x\""));
        assert!(at(&[key("c")]).starts_with("true}"));
        // A path that runs out stops at its last existing step.
        assert!(at(&[key("a"), PathSeg::Index(7)]).starts_with("[1,"));
        assert!(at(&[key("zz")]).starts_with("{\"a\""));
        assert_eq!(line_col(text, locate(&root, &[key("c")])), (2, 7));
    }

    #[test]
    fn repeated_keys_are_found_at_any_depth_and_escapes_are_keys_too() {
        let text = "{\"x\": [{\"k\": 1, \"k\": 2}]}";
        let root = Scanner::new(text).document().unwrap();
        let (at, reason) = find_duplicate_key(text, &root).unwrap();
        assert_eq!(&text[at..at + 3], "\"k\"");
        assert_eq!(at, 16);
        assert_eq!(reason, "duplicate key \"k\" (first at line 1)");
        // "\u0061" is the key "a": the same key spelt differently.
        let text = "{\"a\": 1, \"\\u0061\": 2}";
        let root = Scanner::new(text).document().unwrap();
        assert!(find_duplicate_key(text, &root).is_some());
        let text = "{\"a\": {\"a\": 1}}";
        let root = Scanner::new(text).document().unwrap();
        assert_eq!(find_duplicate_key(text, &root), None);
    }

    #[test]
    fn gives_up_on_what_is_not_json_and_on_deep_nesting() {
        assert!(Scanner::new("{\"a\" 1}").document().is_none());
        assert!(Scanner::new("[1 2]").document().is_none());
        assert!(Scanner::new("{\"a\": \"open").document().is_none());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(Scanner::new(&deep).document().is_none());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Scanner::new(&ok).document().is_some());
    }

    #[test]
    fn line_col_counts_characters_and_never_splits_one() {
        let text = "ab\né€x";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        // Byte 4 is inside "é": the column of the character that holds it.
        assert_eq!(line_col(text, 4), (2, 1));
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 999), (2, 4));
    }
}
