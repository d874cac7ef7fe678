//! One device of a topology: its addresses, its role and its name, and the validation of its
//! JSON entry.
//!
//! [`Device::from_json`] is the schema of one entry, used by the file parser and by devices on
//! what the bootstrapper sends them; a failure is a [`DeviceError`] whose path leads to the
//! offending value, so the file parser can turn it into a line and column. Neighbour addresses
//! are `IP`, `IP:PORT` or `[IPv6]:PORT` ([`NeighbourAddr`]); a device's own `"addresses"` carry
//! no port. The role rule (explicit `"role"`, else `"edge": true`, else the name's first letter)
//! is described in the [module above](crate::topology).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde_json::Value;

use super::link::{LinkKey, LinkParams};

/// Longest accepted device name, in bytes. Names travel in one bootstrap request line and appear
/// in every log line, so they are kept short.
pub const MAX_NAME_LEN: usize = 128;

/// The fields this module interprets; every other field of a device is kept untouched in `raw`.
const KNOWN_FIELDS: [&str; 5] = ["neighbours", "edge", "addresses", "role", "links"];

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
pub(super) fn name_follows_convention(name: &str) -> bool {
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
    /// Parameters of the device's underlay links (`"links"`), in file order; which link a key
    /// names is resolved against the whole topology ([`super::resolve_links`]).
    pub links: Vec<(LinkKey, LinkParams)>,
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

pub(super) fn describe(v: &Value) -> &'static str {
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

        let links = match obj.get("links") {
            None => Vec::new(),
            Some(Value::Object(entries)) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let at = || vec![key("links"), key(k)];
                    let link_key = LinkKey::parse(k).map_err(|r| err(at(), r))?;
                    let params = LinkParams::from_json(v).map_err(|(field, reason)| {
                        let mut path = at();
                        path.extend(field.map(key));
                        err(path, reason)
                    })?;
                    out.push((link_key, params));
                }
                out
            }
            Some(other) => {
                return Err(err(
                    vec![key("links")],
                    format!(
                        "\"links\" must be an object keyed by a neighbour device or a subnet, e.g. {{\"O2\": {{\"delay\": \"20ms\"}}}}, found {}",
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
            links,
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
    pub(super) fn inference_note(&self) -> String {
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
pub(super) fn similar_known_field(key: &str) -> Option<&'static str> {
    if KNOWN_FIELDS.contains(&key) || key.len() > 32 {
        return None;
    }
    let lower = key.to_lowercase();
    let alias = match lower.as_str() {
        "neighbors" | "neighbor" | "neighbour" | "peers" => Some("neighbours"),
        "link" | "link_params" | "underlay" => Some("links"),
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::check;
    use crate::topology::testing::parse_ok;

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

    proptest::proptest! {
        #[test]
        fn neighbour_addr_round_trip(a: [u8; 4], v6: [u16; 8], port in proptest::option::of(1u16..)) {
            for ip in [IpAddr::from(a), IpAddr::from(v6)] {
                let n = NeighbourAddr { ip, port };
                proptest::prop_assert_eq!(n.to_string().parse::<NeighbourAddr>(), Ok(n));
            }
        }
    }
}
