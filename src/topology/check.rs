//! Consistency checks of a parsed topology, behind `overlayd check-topology`.
//!
//! A file can parse and still be wrong for the people using it: an address listed by two
//! devices, a client whose "edge" is a plain node, a link listed on one side only, a role that
//! came from a name by accident, a misspelt field, link parameters on a link the device does not
//! have. [`check()`] reports these as [`Finding`]s, errors
//! (the topology cannot work for some device) and warnings (likely mistakes), grouped by device.
//! [`run_check`] prints them for the command line; the bootstrapper logs them on every reload.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use super::device::{infer_role_from_name, name_follows_convention, similar_known_field};
use super::link::resolve_links;
use super::parse::{load, TopologyError};
use super::{Device, DeviceRole, Topology};

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

    // Link parameters that name no link of their device, or that the two ends disagree on.
    for (device, problem) in resolve_links(t).1 {
        push(Severity::Error, &device, problem);
    }
    for d in t.devices() {
        for (key, p) in &d.links {
            let pct = p.duplicate * 100.0;
            if pct > 0.0 && (pct - pct.round()).abs() > 1e-9 {
                push(
                    Severity::Warning,
                    &d.name,
                    format!(
                        "links: {key}: duplicate {pct}% is not a whole percent; CORE stores whole percents (core-scenario writes {}%), the netns emulator and the simulator use {pct}%",
                        pct.round().max(1.0)
                    ),
                );
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
    use crate::topology::testing::parse_ok;
    use crate::topology::{LinkAt, Net};

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
        let t = parse_ok(include_str!("../../topology/loopback-diamond.json"));
        assert_eq!(check(&t), vec![]);
        assert_eq!(t.get("O4").unwrap().role, DeviceRole::Edge);
        assert!(t.devices().all(|d| d.addresses.len() == 1));
    }

    // --- checks --------------------------------------------------------------------------

    /// S1 – O1 point-to-point (10.0.1), O1 on a LAN with C1 and C2 (10.0.3).
    const LINKED: &str = r#"{
        "S1": {"addresses": ["10.0.1.10"], "neighbours": ["10.0.1.1"], LINKS_S1},
        "O1": {"addresses": ["10.0.1.1", "10.0.3.1"], "neighbours": ["10.0.1.10"], "role": "edge", LINKS_O1},
        "C1": {"addresses": ["10.0.3.20"], "neighbours": ["10.0.3.1"], LINKS_C1},
        "C2": {"addresses": ["10.0.3.21"], "neighbours": ["10.0.3.1"]}
    }"#;

    fn linked(s1: &str, o1: &str, c1: &str) -> String {
        LINKED
            .replace("LINKS_S1", &format!("\"links\": {{{s1}}}"))
            .replace("LINKS_O1", &format!("\"links\": {{{o1}}}"))
            .replace("LINKS_C1", &format!("\"links\": {{{c1}}}"))
    }

    #[test]
    fn link_parameters_name_a_link_of_their_device() {
        // By peer on a point-to-point link, by subnet on the LAN, the same link from both ends.
        let ok = linked(
            r#""O1": {"delay": "20ms"}"#,
            r#""10.0.1.0/24": {"delay": "20ms"}"#,
            r#""10.0.3.0/24": {"loss": "5%"}"#,
        );
        assert_eq!(findings(&ok), Vec::<String>::new());
        let t = parse_ok(&ok);
        let (links, problems) = resolve_links(&t);
        assert!(problems.is_empty());
        let lan: Net = "10.0.3.0/24".parse().unwrap();
        let p2p: Net = "10.0.1.0/24".parse().unwrap();
        assert_eq!(
            links.keys().cloned().collect::<Vec<_>>(),
            [
                LinkAt {
                    net: p2p,
                    device: None
                },
                LinkAt {
                    net: lan,
                    device: Some("C1".into())
                }
            ]
        );

        let fs = findings(&linked(r#""O9": {}"#, "", ""));
        assert!(
            has(&fs, "error: S1: links: no device is named 'O9'"),
            "{fs:?}"
        );
        let fs = findings(&linked(r#""C1": {}"#, "", ""));
        assert!(has(&fs, "S1 and C1 share no subnet"), "{fs:?}");
        let fs = findings(&linked("", "", r#""O1": {"delay": "1ms"}"#));
        assert!(has(&fs, "O1 is on the LAN 10.0.3.0/24 with C1"), "{fs:?}");
        assert!(has(&fs, "key it by the subnet, \"10.0.3.0/24\""), "{fs:?}");
        let fs = findings(&linked(r#""10.0.3.0/24": {}"#, "", ""));
        assert!(has(&fs, "10.0.3.0/24 is not a subnet of S1"), "{fs:?}");
        let fs = findings(&linked(
            r#""O1": {"delay": "20ms"}"#,
            r#""S1": {"delay": "30ms"}"#,
            "",
        ));
        assert!(
            has(&fs, "the link 10.0.1.0/24 is given twice with different parameters (O1: delay 30ms; S1: delay 20ms)"),
            "{fs:?}"
        );
    }

    #[test]
    fn a_duplication_core_cannot_hold_is_a_warning() {
        let fs = findings(&linked(r#""O1": {"duplicate": "0.5%"}"#, "", ""));
        assert!(
            has(&fs, "warning: S1: links: O1: duplicate 0.5% is not a whole percent; CORE stores whole percents (core-scenario writes 1%)"),
            "{fs:?}"
        );
        assert_eq!(
            findings(&linked(r#""O1": {"duplicate": "2%"}"#, "", "")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn link_parameters_need_the_devices_addresses() {
        let fs = findings(r#"{"S1": {"neighbours": [], "links": {"O1": {"delay": "5ms"}}}}"#);
        assert!(
            has(
                &fs,
                "error: S1: \"links\" needs the device's own \"addresses\""
            ),
            "{fs:?}"
        );
    }

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
}
