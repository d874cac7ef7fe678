//! Topology model: the bootstrapper's JSON file, parsed and checked.
//!
//! This module owns the file format (a JSON object keyed by device name, compatible with the
//! original report), its parsing into [`Topology`]/[`Device`], the per-device validation that
//! devices also apply to what the bootstrapper sends them ([`Device::from_json`]), and the
//! consistency checks behind `overlayd check-topology` ([`check`], [`run_check`]). It is sans-IO:
//! everything works on `&str`; only [`load`] and [`run_check`] touch the file system.
//!
//! Errors point at `FILE:LINE:COL` (1-based, columns in characters) because people edit these
//! files by hand: syntax errors come from serde_json, schema errors are located by a small
//! position-tracking scan of the (already valid) text.
//!
//! Roles: a device's role is its `"role"` field when present. Otherwise `"edge": true` makes it an
//! edge node, and else the role is inferred from the name, as in the report: a name starting with
//! `S` (e.g. `S1`, `server1`, case-insensitive) is a server, one starting with `C` (`C1`,
//! `client1`) a client, and anything else an overlay node. [`check`] warns when that inference
//! looks accidental (for example `core1` would be a client).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

/// Longest accepted device name, in bytes. Names travel in one bootstrap request line and appear
/// in every log line, so they are kept short.
pub const MAX_NAME_LEN: usize = 128;

/// The fields this module interprets; every other field of a device is kept untouched in `raw`.
const KNOWN_FIELDS: [&str; 4] = ["neighbours", "edge", "addresses", "role"];

/// Nesting limit of the position scanner; serde_json refuses deeper documents anyway (128).
const MAX_DEPTH: usize = 256;

// ---------------------------------------------------------------------------------------------
// Addresses

/// One entry of a `neighbours` list: an IP address with an optional port.
///
/// Without a port, the caller's default port applies (every device uses the same overlay port,
/// each bound to its own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl NeighbourAddr {
    /// The address to connect to, using `default_port` when the entry has none.
    pub fn to_socket_addr(&self, default_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(default_port))
    }
}

impl fmt::Display for NeighbourAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
        }
    }
}

/// Why a string is not a usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddrError(String);

impl FromStr for NeighbourAddr {
    type Err = AddrError;

    /// Accepts `IP`, `IP:PORT`, a bare IPv6 address, `[IPv6]` and `[IPv6]:PORT`.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if s.is_empty() {
            return Err(AddrError("empty address".into()));
        }
        if s.trim() != s {
            return Err(AddrError(format!(
                "'{}' has spaces around it",
                s.escape_debug()
            )));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NeighbourAddr { ip, port: None });
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(AddrError(format!("'{s}': port 0 is not a usable port")));
            }
            if let SocketAddr::V6(v6) = sa {
                if v6.scope_id() != 0 {
                    return Err(AddrError(format!(
                        "'{s}': IPv6 scope ids (%...) are not supported"
                    )));
                }
            }
            return Ok(NeighbourAddr {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() {
                return Ok(NeighbourAddr {
                    ip: IpAddr::V6(ip),
                    port: None,
                });
            }
        }
        // Say what is wrong with the port when the host part is fine: that is the usual slip.
        if let Some((host, port)) = s.rsplit_once(':') {
            let host_ok = host.parse::<std::net::Ipv4Addr>().is_ok()
                || host
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
            if host_ok {
                return Err(AddrError(format!(
                    "'{}': '{}' is not a port number (1-65535)",
                    s.escape_debug(),
                    port.escape_debug()
                )));
            }
        }
        Err(AddrError(format!(
            "'{}' is not an IP address, IP:PORT or [IPv6]:PORT",
            s.escape_debug()
        )))
    }
}

fn parse_own_address(s: &str) -> Result<IpAddr, AddrError> {
    let a: NeighbourAddr = s.parse()?;
    match a.port {
        None => Ok(a.ip),
        Some(_) => Err(AddrError(format!(
            "'{s}': \"addresses\" are the device's own IPs, without a port"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Devices

/// What a device does in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceRole {
    Server,
    Node,
    /// An overlay node that also serves clients (`"edge": true`).
    Edge,
    Client,
}

impl DeviceRole {
    /// Servers, nodes and edges form the overlay; clients only talk to edges.
    pub fn is_overlay(self) -> bool {
        !matches!(self, DeviceRole::Client)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRole::Server => "server",
            DeviceRole::Node => "node",
            DeviceRole::Edge => "edge",
            DeviceRole::Client => "client",
        }
    }
}

impl fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `"role"` that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseRoleError(String);

impl FromStr for DeviceRole {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, ParseRoleError> {
        match s.to_ascii_lowercase().as_str() {
            "server" => Ok(DeviceRole::Server),
            "node" => Ok(DeviceRole::Node),
            "edge" => Ok(DeviceRole::Edge),
            "client" => Ok(DeviceRole::Client),
            _ => Err(ParseRoleError(format!(
                "unknown role '{}' (expected \"server\", \"node\", \"edge\" or \"client\")",
                s.escape_debug()
            ))),
        }
    }
}

/// The role a name implies when a device has no `"role"` field (the report's convention):
/// `S…`/`server…` is a server, `C…`/`client…` a client (case-insensitive), anything else a node.
pub fn infer_role_from_name(name: &str) -> DeviceRole {
    match name.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('s') => DeviceRole::Server,
        Some('c') => DeviceRole::Client,
        _ => DeviceRole::Node,
    }
}

/// True for names where the first-letter rule is clearly intended: `S1`, `server2`, `c-3`, `C`.
fn name_follows_convention(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let rest = ["server", "client", "s", "c"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .unwrap_or(&lower);
    !rest.starts_with(|c: char| c.is_alphabetic())
}

/// Checks a device name: non-empty, short, no surrounding spaces or control characters (it is
/// typed on command lines and printed in logs).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty device name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "device name is {} bytes long (at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    if name.trim() != name {
        return Err(format!(
            "device name '{}' has spaces around it",
            name.escape_debug()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "device name '{}' contains control characters",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// One device of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub name: String,
    /// Overlay neighbours (servers, nodes) or reachable edge nodes (clients).
    pub neighbours: Vec<NeighbourAddr>,
    /// True for edge nodes (also when `"role": "edge"`).
    pub edge: bool,
    /// The device's own addresses, when the file gives them (`"addresses"`).
    pub addresses: Vec<IpAddr>,
    pub role: DeviceRole,
    /// The file has no `"role"` for this device: it came from `"edge"` or from the name.
    pub role_inferred: bool,
    /// The device's original JSON object, extra fields included (the bootstrapper sends this).
    pub raw: Value,
}

/// One step of a path inside a device's JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A device entry that does not follow the schema. `path` leads from the device's object to the
/// offending value (empty: the object itself), so the file parser can turn it into a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DeviceError {
    pub device: String,
    pub path: Vec<PathSeg>,
    pub reason: String,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device '{}'", self.device.escape_debug())?;
        if !self.path.is_empty() {
            f.write_str(": ")?;
            for (i, seg) in self.path.iter().enumerate() {
                match seg {
                    PathSeg::Key(k) if i == 0 => write!(f, "{k}")?,
                    PathSeg::Key(k) => write!(f, ".{k}")?,
                    PathSeg::Index(n) => write!(f, "[{n}]")?,
                }
            }
        }
        write!(f, ": {}", self.reason)
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Device {
    /// Validates one device entry (a file's value for `name`, or what the bootstrapper sent).
    pub fn from_json(name: &str, value: &Value) -> Result<Device, DeviceError> {
        let err = |path: Vec<PathSeg>, reason: String| DeviceError {
            device: name.to_string(),
            path,
            reason,
        };
        let key = |k: &str| PathSeg::Key(k.to_string());
        validate_name(name).map_err(|r| err(vec![], r))?;
        let Some(obj) = value.as_object() else {
            return Err(err(
                vec![],
                format!(
                    "expected an object like {{\"neighbours\": [...]}}, found {}",
                    describe(value)
                ),
            ));
        };

        let neighbours = match obj.get("neighbours") {
            None => {
                let hint = obj
                    .keys()
                    .find(|k| similar_known_field(k) == Some("neighbours"))
                    .map(|k| format!(" (found \"{}\": did you mean \"neighbours\"?)", k))
                    .unwrap_or_default();
                return Err(err(
                    vec![],
                    format!("no \"neighbours\" list (write \"neighbours\": [] for none){hint}"),
                ));
            }
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = || vec![key("neighbours"), PathSeg::Index(i)];
                    let Value::String(s) = item else {
                        return Err(err(
                            path(),
                            format!(
                                "a neighbour must be a string \"IP\" or \"IP:PORT\", found {}",
                                describe(item)
                            ),
                        ));
                    };
                    out.push(s.parse().map_err(|e: AddrError| err(path(), e.0))?);
                }
                out
            }
            Some(Value::String(s)) => {
                return Err(err(
                    vec![key("neighbours")],
                    format!(
                        "\"neighbours\" must be a list: write [\"{}\"]",
                        s.escape_debug()
                    ),
                ))
            }
            Some(other) => {
                return Err(err(
                    vec![key("neighbours")],
                    format!(
                        "\"neighbours\" must be a list of addresses, found {}",
                        describe(other)
                    ),
                ))
            }
        };

        let edge_field = match obj.get("edge") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => {
                return Err(err(
                    vec![key("edge")],
                    format!("\"edge\" must be true or false without quotes, found \"{s}\""),
                ))
            }
            Some(other) => {
                return Err(err(
                    vec![key("edge")],
                    format!("\"edge\" must be true or false, found {}", describe(other)),
                ))
            }
        };

        let addresses = match obj.get("addresses") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = || vec![key("addresses"), PathSeg::Index(i)];
                    let Value::String(s) = item else {
                        return Err(err(
                            path(),
                            format!(
                                "an address must be a string \"IP\", found {}",
                                describe(item)
                            ),
                        ));
                    };
                    out.push(parse_own_address(s).map_err(|e| err(path(), e.0))?);
                }
                out
            }
            Some(other) => {
                return Err(err(
                    vec![key("addresses")],
                    format!(
                        "\"addresses\" must be a list of IP addresses, found {}",
                        describe(other)
                    ),
                ))
            }
        };

        let explicit_role = match obj.get("role") {
            None => None,
            Some(Value::String(s)) => Some(
                s.parse::<DeviceRole>()
                    .map_err(|e| err(vec![key("role")], e.0))?,
            ),
            Some(other) => {
                return Err(err(
                    vec![key("role")],
                    format!("\"role\" must be a string, found {}", describe(other)),
                ))
            }
        };

        let (role, role_inferred) =
            match (explicit_role, edge_field) {
                (Some(DeviceRole::Edge), Some(false)) => {
                    return Err(err(
                        vec![key("edge")],
                        "\"edge\": false contradicts \"role\": \"edge\"".into(),
                    ))
                }
                (Some(DeviceRole::Client), Some(true)) => return Err(err(
                    vec![key("edge")],
                    "a client cannot be an edge node (\"edge\": true with \"role\": \"client\")"
                        .into(),
                )),
                // "node" plus "edge": true is how the report marks edges.
                (Some(DeviceRole::Node), Some(true)) => (DeviceRole::Edge, false),
                (Some(r), _) => (r, false),
                // Only overlay nodes can be edges, so the flag outweighs the name.
                (None, Some(true)) => (DeviceRole::Edge, true),
                (None, _) => (infer_role_from_name(name), true),
            };
        let edge = role == DeviceRole::Edge || edge_field == Some(true);

        Ok(Device {
            name: name.to_string(),
            neighbours,
            edge,
            addresses,
            role,
            role_inferred,
            raw: value.clone(),
        })
    }

    /// Fields of the original object that this module does not interpret.
    pub fn extra_fields(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.raw
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
    }

    /// "O1 (role inferred as node from its name)" style note, empty when the role is explicit.
    fn inference_note(&self) -> String {
        if !self.role_inferred {
            String::new()
        } else if self.role == DeviceRole::Edge {
            format!(" ({}'s role 'edge' comes from \"edge\": true)", self.name)
        } else {
            format!(
                " ({}'s role '{}' was inferred from its name; set \"role\" to be explicit)",
                self.name, self.role
            )
        }
    }
}

/// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions ("egde").
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// The known field an unknown field name was probably meant to be ("neighbors" → "neighbours").
fn similar_known_field(key: &str) -> Option<&'static str> {
    if KNOWN_FIELDS.contains(&key) || key.len() > 32 {
        return None;
    }
    let lower = key.to_lowercase();
    let alias = match lower.as_str() {
        "neighbors" | "neighbor" | "neighbour" | "peers" | "links" => Some("neighbours"),
        "address" | "ip" | "ips" | "addrs" => Some("addresses"),
        "is_edge" | "isedge" | "edge_node" => Some("edge"),
        "type" | "kind" => Some("role"),
        _ => None,
    };
    alias.or_else(|| {
        KNOWN_FIELDS.iter().copied().find(|k| {
            let limit = if k.len() <= 5 { 1 } else { 2 };
            edit_distance(&lower, k) <= limit
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Topology and parsing

/// All devices of a topology file, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    devices: BTreeMap<String, Device>,
}

impl Topology {
    pub fn get(&self, name: &str) -> Option<&Device> {
        self.devices.get(name)
    }

    /// Devices in name order.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// Device names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices that list `ip` in their `"addresses"`.
    pub fn owners_of(&self, ip: IpAddr) -> impl Iterator<Item = &Device> {
        self.devices
            .values()
            .filter(move |d| d.addresses.contains(&ip))
    }
}

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
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut out = BTreeMap::new();
    for m in members {
        if let Some(&first) = first_seen.get(m.key.as_str()) {
            return Err(schema(
                m.key_at,
                format!(
                    "duplicate device name '{}' (first defined at line {})",
                    m.key.escape_debug(),
                    line_col(text, first).0
                ),
            ));
        }
        first_seen.insert(&m.key, m.key_at);
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

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = 1 + before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, 1 + before[line_start..].chars().count())
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

// ---------------------------------------------------------------------------------------------
// Position scanner: finds where each value and key starts in valid JSON text.

#[derive(Debug)]
struct Node {
    at: usize,
    kind: NodeKind,
}

#[derive(Debug)]
enum NodeKind {
    Object(Vec<Member>),
    Array(Vec<Node>),
    Scalar,
}

#[derive(Debug)]
struct Member {
    key: String,
    key_at: usize,
    value: Node,
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn document(mut self) -> Option<Node> {
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
fn locate(node: &Node, path: &[PathSeg]) -> usize {
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

/// The first repeated key in any object under `node`, as (offset of the repeat, reason).
fn find_duplicate_key(text: &str, node: &Node) -> Option<(usize, String)> {
    match &node.kind {
        NodeKind::Scalar => None,
        NodeKind::Array(items) => items.iter().find_map(|n| find_duplicate_key(text, n)),
        NodeKind::Object(members) => {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for m in members {
                if let Some(&first) = seen.get(m.key.as_str()) {
                    return Some((
                        m.key_at,
                        format!(
                            "duplicate key \"{}\" (first at line {})",
                            m.key.escape_debug(),
                            line_col(text, first).0
                        ),
                    ));
                }
                seen.insert(&m.key, m.key_at);
                if let Some(found) = find_duplicate_key(text, &m.value) {
                    return Some(found);
                }
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consistency checks

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found by [`check`]. `device` is empty for findings about the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub device: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.device.is_empty() {
            write!(f, "{}: {}", self.severity, self.message)
        } else {
            write!(f, "{}: {}: {}", self.severity, self.device, self.message)
        }
    }
}

fn usable(ip: IpAddr) -> Result<(), &'static str> {
    if ip.is_unspecified() {
        Err("is the unspecified address; nothing can connect to it")
    } else if ip.is_multicast() {
        Err("is a multicast address; overlay links are unicast TCP")
    } else {
        Ok(())
    }
}

/// Consistency checks a person editing the file would want to hear about. Errors make the
/// topology unusable for some device; warnings are likely mistakes.
pub fn check(t: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |severity, device: &str, message: String| {
        out.push(Finding {
            severity,
            device: device.to_string(),
            message,
        })
    };

    if t.is_empty() {
        push(Severity::Warning, "", "the topology has no devices".into());
        return out;
    }

    // Address ownership, for everything that needs to know whose address a neighbour is.
    let mut owners: BTreeMap<IpAddr, Vec<&Device>> = BTreeMap::new();
    for d in t.devices() {
        let mut seen = BTreeSet::new();
        for &ip in &d.addresses {
            if !seen.insert(ip) {
                push(
                    Severity::Warning,
                    &d.name,
                    format!("lists its own address {ip} twice in \"addresses\""),
                );
                continue;
            }
            if let Err(why) = usable(ip) {
                push(Severity::Error, &d.name, format!("address {ip} {why}"));
            }
            owners.entry(ip).or_default().push(d);
        }
    }
    for (ip, ds) in &owners {
        for d in ds.iter().skip(1) {
            push(
                Severity::Error,
                &d.name,
                format!(
                    "address {ip} is also listed in \"addresses\" of {}; an address belongs to one device",
                    ds[0].name
                ),
            );
        }
    }
    let any_addresses = !owners.is_empty();
    let without_addresses: Vec<&str> = t
        .devices()
        .filter(|d| d.addresses.is_empty())
        .map(|d| d.name.as_str())
        .collect();

    for d in t.devices() {
        // Role inference that looks accidental.
        if d.role_inferred {
            let by_name = infer_role_from_name(&d.name);
            if d.role == DeviceRole::Edge && by_name != DeviceRole::Node {
                push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "treated as an edge node because of \"edge\": true, although the name looks like a {by_name}; add \"role\" to be explicit"
                    ),
                );
            } else if d.role != DeviceRole::Edge
                && by_name != DeviceRole::Node
                && !name_follows_convention(&d.name)
            {
                push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "role '{}' was inferred from the first letter of the name; add \"role\": \"{}\" (or another role) to be explicit",
                        d.role, d.role
                    ),
                );
            }
        }
        if d.role == DeviceRole::Server && d.edge {
            push(
                Severity::Warning,
                &d.name,
                "\"edge\": true on a server: clients connect to edge nodes, not to servers".into(),
            );
        }
        for (k, _) in d.extra_fields() {
            if let Some(known) = similar_known_field(k) {
                push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "unknown field \"{}\" (did you mean \"{known}\"?); it is passed on untouched",
                        k.escape_debug()
                    ),
                );
            }
        }

        if d.neighbours.is_empty() {
            match d.role {
                DeviceRole::Client => push(
                    Severity::Error,
                    &d.name,
                    format!(
                        "client has no edge nodes in \"neighbours\"; it cannot receive video{}",
                        d.inference_note()
                    ),
                ),
                role => push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "{role} has no neighbours; it cannot join the overlay{}",
                        d.inference_note()
                    ),
                ),
            }
        }

        let mut seen = BTreeSet::new();
        for n in &d.neighbours {
            if !seen.insert(*n) {
                push(
                    Severity::Warning,
                    &d.name,
                    format!("lists neighbour {n} twice"),
                );
                continue;
            }
            if let Err(why) = usable(n.ip) {
                push(Severity::Error, &d.name, format!("neighbour {n} {why}"));
                continue;
            }
            if d.addresses.contains(&n.ip) {
                push(
                    Severity::Error,
                    &d.name,
                    format!("lists its own address {n} as a neighbour"),
                );
                continue;
            }
            if !any_addresses {
                continue;
            }
            let Some(target) = owners.get(&n.ip).and_then(|v| v.first()) else {
                let hint = if without_addresses.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; devices without \"addresses\": {}",
                        name_list(&without_addresses, 10)
                    )
                };
                push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "neighbour {n} is an unknown address: no device lists it in \"addresses\"{hint}"
                    ),
                );
                continue;
            };
            if target.name == d.name {
                continue; // its own address, reported above
            }
            match (d.role, target.role) {
                (DeviceRole::Client, DeviceRole::Edge) => {}
                (DeviceRole::Client, DeviceRole::Client) => push(
                    Severity::Error,
                    &d.name,
                    format!(
                        "lists {n}, which is client {}; clients connect to edge nodes{}{}",
                        target.name,
                        d.inference_note(),
                        target.inference_note()
                    ),
                ),
                (DeviceRole::Client, role) => push(
                    Severity::Error,
                    &d.name,
                    format!(
                        "lists {n}, which is {} ({role}), not an edge node; clients need edges (add \"edge\": true to {} or list an edge){}{}",
                        target.name,
                        target.name,
                        d.inference_note(),
                        target.inference_note()
                    ),
                ),
                (_, DeviceRole::Client) => push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "lists {n}, which is client {}; clients are not overlay neighbours{}",
                        target.name,
                        target.inference_note()
                    ),
                ),
                _ => {
                    let lists_back = target
                        .neighbours
                        .iter()
                        .any(|m| d.addresses.contains(&m.ip));
                    if !d.addresses.is_empty() && !lists_back {
                        push(
                            Severity::Warning,
                            &d.name,
                            format!(
                                "lists {n} ({}), but {} lists no address of {}: the link is one-sided",
                                target.name, target.name, d.name
                            ),
                        );
                    }
                }
            }
        }
    }

    if !t.devices().any(|d| d.role == DeviceRole::Server) {
        push(
            Severity::Warning,
            "",
            "no server in the topology (servers are named S…/server… or have \"role\": \"server\")"
                .into(),
        );
    }
    let mut by_lower: BTreeMap<String, &str> = BTreeMap::new();
    for name in t.names() {
        if let Some(other) = by_lower.insert(name.to_lowercase(), name) {
            push(
                Severity::Warning,
                "",
                format!("device names '{other}' and '{name}' differ only in case"),
            );
        }
    }

    // Group by device (file-wide findings last) so the output reads device by device.
    out.sort_by(|a, b| (a.device.is_empty(), &a.device).cmp(&(b.device.is_empty(), &b.device)));
    out
}

/// "A, B, C and 4 more".
pub(crate) fn name_list<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let shown: Vec<&str> = names.iter().take(max).map(AsRef::as_ref).collect();
    let mut s = shown.join(", ");
    if names.len() > max {
        s.push_str(&format!(" and {} more", names.len() - max));
    }
    s
}

/// Loads and checks a file in one go (for the `check-topology` command and the bootstrapper).
pub fn check_file(path: &Path) -> (Result<Topology, TopologyError>, Vec<Finding>) {
    match load(path) {
        Ok(t) => {
            let findings = check(&t);
            (Ok(t), findings)
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

/// `overlayd check-topology FILE`: prints errors and warnings one per line, then a summary line.
/// Returns true when the file loads and has no errors (warnings are fine).
pub fn run_check(path: &Path, out: &mut impl Write) -> bool {
    let file = path.display();
    // Output failures (a closed pipe) must not turn into a panic; the result still says it all.
    match check_file(path) {
        (Err(e), _) => {
            let _ = writeln!(out, "error: {e}");
            let _ = writeln!(out, "{file}: not loaded (1 error)");
            false
        }
        (Ok(t), findings) => {
            for f in &findings {
                let _ = writeln!(out, "{f}");
            }
            let errors = findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            let warnings = findings.len() - errors;
            let count = |r: DeviceRole| t.devices().filter(|d| d.role == r).count();
            let _ = writeln!(
                out,
                "{file}: {} devices ({} servers, {} nodes, {} edges, {} clients): {errors} error{}, {warnings} warning{}",
                t.len(),
                count(DeviceRole::Server),
                count(DeviceRole::Node),
                count(DeviceRole::Edge),
                count(DeviceRole::Client),
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" },
            );
            errors == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Topology {
        match parse(text, "t.json") {
            Ok(t) => t,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// (kind, line, column, reason) of an error, for compact assertions.
    fn parse_err(text: &str) -> (&'static str, usize, usize, String) {
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

    fn findings(text: &str) -> Vec<String> {
        check(&parse_ok(text))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn has(fs: &[String], needle: &str) -> bool {
        fs.iter().any(|f| f.contains(needle))
    }

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
        let t = parse_ok(include_str!("../topology/report-example.json"));
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

    #[test]
    fn every_example_file_passes_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let t = load(&path).unwrap_or_else(|e| panic!("{e}"));
            let errors: Vec<_> = check(&t)
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            n += 1;
        }
        assert!(n >= 2);
    }

    #[test]
    fn loopback_diamond_is_clean() {
        let t = parse_ok(include_str!("../topology/loopback-diamond.json"));
        assert_eq!(check(&t), vec![]);
        assert_eq!(t.get("O4").unwrap().role, DeviceRole::Edge);
        assert!(t.devices().all(|d| d.addresses.len() == 1));
    }

    #[test]
    fn neighbour_address_forms() {
        let t = parse_ok(
            r#"{"O1": {"neighbours": ["10.0.0.1", "10.0.0.2:7000", "fe80::1", "[fe80::2]",
                "[2001:db8::3]:8000"]}}"#,
        );
        let n = &t.get("O1").unwrap().neighbours;
        let shown: Vec<String> = n.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.1",
                "10.0.0.2:7000",
                "fe80::1",
                "fe80::2",
                "[2001:db8::3]:8000"
            ]
        );
        assert_eq!(n[0].to_socket_addr(9000), "10.0.0.1:9000".parse().unwrap());
        assert_eq!(n[1].to_socket_addr(9000), "10.0.0.2:7000".parse().unwrap());
        assert_eq!(n[2].to_socket_addr(9000), "[fe80::1]:9000".parse().unwrap());
        assert_eq!(
            n[4].to_socket_addr(9000),
            "[2001:db8::3]:8000".parse().unwrap()
        );
        for s in &shown {
            assert_eq!(s.parse::<NeighbourAddr>().unwrap().to_string(), *s);
        }
    }

    #[test]
    fn bad_addresses_are_explained() {
        let e = |s: &str| s.parse::<NeighbourAddr>().unwrap_err().to_string();
        assert!(e("10.0.1").contains("not an IP address"));
        assert!(e("10.0.0.1:99999").contains("'99999' is not a port number"));
        assert!(e("10.0.0.1:0").contains("port 0"));
        assert!(e(" 10.0.0.1").contains("spaces"));
        assert!(e("").contains("empty"));
        assert!(e("host.example:80").contains("not an IP address"));
    }

    #[test]
    fn extra_fields_are_kept_in_raw() {
        let t = parse_ok(
            r#"{"O1": {"neighbours": [], "colour": "red", "meta": {"rack": 3, "tags": [1, 2]}}}"#,
        );
        let o1 = t.get("O1").unwrap();
        assert_eq!(o1.raw["colour"], "red");
        assert_eq!(o1.raw["meta"]["tags"][1], 2);
        assert_eq!(o1.raw["neighbours"], serde_json::json!([]));
        let extra: Vec<&str> = o1.extra_fields().map(|(k, _)| k.as_str()).collect();
        assert_eq!(extra, ["colour", "meta"]);
    }

    #[test]
    fn explicit_roles_and_edge_flag() {
        let t = parse_ok(
            r#"{"core1": {"neighbours": [], "role": "node", "edge": true},
                "x": {"neighbours": [], "role": "Server"},
                "e": {"neighbours": [], "role": "edge"},
                "C9": {"neighbours": [], "edge": true}}"#,
        );
        let core = t.get("core1").unwrap();
        assert_eq!(
            (core.role, core.role_inferred, core.edge),
            (DeviceRole::Edge, false, true)
        );
        assert_eq!(t.get("x").unwrap().role, DeviceRole::Server);
        assert!(t.get("e").unwrap().edge);
        // "edge": true outweighs the name, but check() says so.
        let c9 = t.get("C9").unwrap();
        assert_eq!((c9.role, c9.role_inferred), (DeviceRole::Edge, true));
        assert!(check(&t)
            .iter()
            .any(|f| f.device == "C9" && f.message.contains("looks like a client")));
    }

    #[test]
    fn role_inference_rule() {
        for (name, role) in [
            ("S1", DeviceRole::Server),
            ("server1", DeviceRole::Server),
            ("SERVER", DeviceRole::Server),
            ("C1", DeviceRole::Client),
            ("client1", DeviceRole::Client),
            ("O1", DeviceRole::Node),
            ("n7", DeviceRole::Node),
            ("01", DeviceRole::Node),
        ] {
            assert_eq!(infer_role_from_name(name), role, "{name}");
        }
        assert!(name_follows_convention("S1"));
        assert!(name_follows_convention("server-2"));
        assert!(name_follows_convention("C"));
        assert!(!name_follows_convention("core1"));
        assert!(!name_follows_convention("switch"));
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
    fn duplicate_fields_inside_a_device() {
        let text = "{\"O1\": {\"neighbours\": [],\n  \"edge\": true,\n  \"edge\": false}}";
        let (kind, line, col, reason) = parse_err(text);
        assert_eq!((kind, line, col), ("schema", 3, 3));
        assert_eq!(
            reason,
            "device 'O1': duplicate key \"edge\" (first at line 2)"
        );
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

    #[test]
    fn device_from_json_reports_paths() {
        let v = serde_json::json!({"neighbours": ["10.0.0.1", true]});
        let e = Device::from_json("O1", &v).unwrap_err();
        assert_eq!(
            e.path,
            vec![PathSeg::Key("neighbours".into()), PathSeg::Index(1)]
        );
        assert!(
            e.to_string().starts_with("device 'O1': neighbours[1]: "),
            "{e}"
        );
        assert!(Device::from_json("", &serde_json::json!({"neighbours": []})).is_err());
    }

    // --- checks --------------------------------------------------------------------------

    #[test]
    fn check_unknown_address() {
        let fs = findings(
            r#"{"S1": {"addresses": ["10.0.0.1"], "neighbours": ["10.0.0.2", "10.0.0.9"]},
                "O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.1"]}}"#,
        );
        assert!(
            has(&fs, "warning: S1: neighbour 10.0.0.9 is an unknown address"),
            "{fs:?}"
        );
        assert_eq!(fs.len(), 1, "{fs:?}");
    }

    #[test]
    fn check_unknown_address_hints_at_devices_without_addresses() {
        let fs = findings(
            r#"{"S1": {"addresses": ["10.0.0.1"], "neighbours": ["10.0.0.2"]},
                "O1": {"neighbours": ["10.0.0.1"]}}"#,
        );
        assert!(has(&fs, "devices without \"addresses\": O1"), "{fs:?}");
    }

    #[test]
    fn check_no_address_checks_without_addresses() {
        let fs = findings(
            r#"{"S1": {"neighbours": ["10.0.0.2"]}, "O1": {"neighbours": ["10.0.0.1"], "edge": true},
                "C1": {"neighbours": ["10.0.0.2"]}}"#,
        );
        assert_eq!(fs, Vec::<String>::new());
    }

    #[test]
    fn check_asymmetric_link() {
        let fs = findings(
            r#"{"S1": {"addresses": ["10.0.0.1"], "neighbours": ["10.0.0.2"]},
                "O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.3"]},
                "O2": {"addresses": ["10.0.0.3"], "neighbours": ["10.0.0.2"]}}"#,
        );
        assert_eq!(
            fs,
            ["warning: S1: lists 10.0.0.1 (O1), but O1 lists no address of S1: the link is one-sided"
                .replace("10.0.0.1 (O1)", "10.0.0.2 (O1)")]
        );
    }

    #[test]
    fn check_client_listing_a_non_edge() {
        let fs = findings(
            r#"{"O1": {"addresses": ["10.0.0.2"], "neighbours": []},
                "C1": {"addresses": ["10.0.0.5"], "neighbours": ["10.0.0.2"]}}"#,
        );
        let f = fs.iter().find(|f| f.starts_with("error: C1:")).unwrap();
        assert!(f.contains("which is O1 (node), not an edge node"), "{f}");
        assert!(f.contains("add \"edge\": true to O1"), "{f}");
        // Both roles were inferred from names, and the message says so for the client.
        assert!(
            f.contains("C1's role 'client' was inferred from its name"),
            "{f}"
        );
    }

    #[test]
    fn check_client_listing_a_client() {
        let fs = findings(
            r#"{"C2": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.5"]},
                "C1": {"role": "client", "addresses": ["10.0.0.5"], "neighbours": ["10.0.0.2"]}}"#,
        );
        assert!(
            has(&fs, "error: C1: lists 10.0.0.2, which is client C2"),
            "{fs:?}"
        );
    }

    #[test]
    fn check_node_listing_a_client() {
        let fs = findings(
            r#"{"O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.5"], "edge": true},
                "C1": {"addresses": ["10.0.0.5"], "neighbours": ["10.0.0.2"]}}"#,
        );
        assert!(
            has(&fs, "warning: O1: lists 10.0.0.5, which is client C1; clients are not overlay neighbours"),
            "{fs:?}"
        );
    }

    #[test]
    fn check_address_owned_twice() {
        let fs = findings(
            r#"{"O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.3"]},
                "O2": {"addresses": ["10.0.0.3", "10.0.0.2"], "neighbours": ["10.0.0.2"]}}"#,
        );
        assert!(
            has(
                &fs,
                "error: O2: address 10.0.0.2 is also listed in \"addresses\" of O1"
            ),
            "{fs:?}"
        );
    }

    #[test]
    fn check_own_address_as_neighbour() {
        let fs =
            findings(r#"{"O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.2:7000"]}}"#);
        assert!(
            has(
                &fs,
                "error: O1: lists its own address 10.0.0.2:7000 as a neighbour"
            ),
            "{fs:?}"
        );
    }

    #[test]
    fn check_no_neighbours() {
        let fs = findings(r#"{"S1": {"neighbours": []}, "O1": {"neighbours": []}}"#);
        assert!(
            has(&fs, "warning: S1: server has no neighbours; it cannot join the overlay (S1's role 'server' was inferred"),
            "{fs:?}"
        );
        assert!(has(&fs, "warning: O1: node has no neighbours"), "{fs:?}");
    }

    #[test]
    fn check_client_without_edges() {
        let fs = findings(
            r#"{"S1": {"neighbours": ["10.0.0.1"]}, "C1": {"role": "client", "neighbours": []}}"#,
        );
        assert!(
            has(
                &fs,
                "error: C1: client has no edge nodes in \"neighbours\"; it cannot receive video"
            ),
            "{fs:?}"
        );
    }

    #[test]
    fn check_duplicates_and_unusable_addresses() {
        let fs = findings(
            r#"{"S1": {"neighbours": ["10.0.0.1", "10.0.0.1", "0.0.0.0", "224.0.0.1"],
                       "addresses": ["10.0.0.9", "10.0.0.9"]}}"#,
        );
        assert!(
            has(&fs, "warning: S1: lists neighbour 10.0.0.1 twice"),
            "{fs:?}"
        );
        assert!(
            has(
                &fs,
                "error: S1: neighbour 0.0.0.0 is the unspecified address"
            ),
            "{fs:?}"
        );
        assert!(
            has(&fs, "error: S1: neighbour 224.0.0.1 is a multicast address"),
            "{fs:?}"
        );
        assert!(
            has(&fs, "warning: S1: lists its own address 10.0.0.9 twice"),
            "{fs:?}"
        );
    }

    #[test]
    fn check_accidental_inference_and_typos() {
        let fs = findings(
            r#"{"S1": {"neighbours": ["10.0.0.1"]},
                "core1": {"neighbours": ["10.0.0.1"], "egde": true, "neighbors": []}}"#,
        );
        assert!(
            has(
                &fs,
                "warning: core1: role 'client' was inferred from the first letter of the name"
            ),
            "{fs:?}"
        );
        assert!(
            has(&fs, "unknown field \"egde\" (did you mean \"edge\"?)"),
            "{fs:?}"
        );
        assert!(
            has(
                &fs,
                "unknown field \"neighbors\" (did you mean \"neighbours\"?)"
            ),
            "{fs:?}"
        );
        // Ordinary extra fields are not typos.
        let fs = findings(r#"{"S1": {"neighbours": ["10.0.0.1"], "comment": "x", "note": 1}}"#);
        assert_eq!(fs, Vec::<String>::new());
    }

    #[test]
    fn check_whole_file_findings() {
        let fs =
            findings(r#"{"O1": {"neighbours": ["10.0.0.1"]}, "o1": {"neighbours": ["10.0.0.2"]}}"#);
        assert!(has(&fs, "warning: no server in the topology"), "{fs:?}");
        assert!(
            has(
                &fs,
                "warning: device names 'O1' and 'o1' differ only in case"
            ),
            "{fs:?}"
        );
        assert_eq!(findings("{}"), ["warning: the topology has no devices"]);
    }

    #[test]
    fn check_server_marked_edge() {
        let fs =
            findings(r#"{"S1": {"role": "server", "edge": true, "neighbours": ["10.0.0.1"]}}"#);
        assert!(
            has(&fs, "warning: S1: \"edge\": true on a server"),
            "{fs:?}"
        );
    }

    #[test]
    fn run_check_output() {
        let dir =
            std::env::temp_dir().join(format!("overlayd-topo-run-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"S1": {"neighbours": []}}"#).unwrap();
        let mut out = Vec::new();
        assert!(run_check(&good, &mut out));
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("warning: S1: server has no neighbours"),
            "{out}"
        );
        assert!(
            out.trim_end().ends_with(
                "1 devices (1 servers, 0 nodes, 0 edges, 0 clients): 0 errors, 1 warning"
            ),
            "{out}"
        );

        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"S1\": {\"neighbours\": [\"nope\"]}}").unwrap();
        let mut out = Vec::new();
        assert!(!run_check(&bad, &mut out));
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with(&format!("error: {}:1:24: ", bad.display())),
            "{out}"
        );

        let errs = dir.join("errs.json");
        std::fs::write(
            &errs,
            r#"{"S1": {"neighbours": []}, "C1": {"neighbours": []}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(!run_check(&errs, &mut out));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, "p.json");
        }

        #[test]
        fn parse_never_panics_on_jsonish(text in "[{}\\[\\]\":,a-z0-9. \n\\\\]{0,120}") {
            if let Ok(t) = parse(&text, "p.json") {
                let _ = check(&t);
            }
        }

        #[test]
        fn neighbour_addr_round_trip(a: [u8; 4], v6: [u16; 8], port in proptest::option::of(1u16..)) {
            for ip in [IpAddr::from(a), IpAddr::from(v6)] {
                let n = NeighbourAddr { ip, port };
                proptest::prop_assert_eq!(n.to_string().parse::<NeighbourAddr>(), Ok(n));
            }
        }
    }
}
