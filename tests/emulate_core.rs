//! CORE scenario files: every non-loopback topology's generated XML and IMN are well formed and
//! faithful to the topology (unique ids, links between existing nodes, exactly the topology's
//! addresses, every device present and started with its role, name and the bootstrapper's
//! address), and the committed files in core-scenarios/ are exactly what the generator produces.
//! Every generated and committed .imn is also read by a real Tcl interpreter the way the legacy
//! CORE 7/8 GUI reads it (tests/imn_check.tcl, needs `tclsh`: Debian package `tcl`), and both
//! routing options put routes, forwarding and services where they belong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod common;

use overlayd::emulate::core::{self, CoreOptions};
use overlayd::emulate::Underlay;
use overlayd::topology::{self, DeviceRole, Topology};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topologies() -> Vec<PathBuf> {
    core::scenario_topologies(&repo().join("topology")).unwrap()
}

fn load(p: &Path) -> (String, Topology, Underlay) {
    let text = std::fs::read_to_string(p).unwrap();
    let t = topology::parse(&text, "t").unwrap();
    let u = Underlay::from_topology(&t).unwrap();
    (text, t, u)
}

// ---------------------------------------------------------------------------------------------
// A small strict XML reader: elements, attributes, text and CDATA, comments, the declaration.

#[derive(Debug, Default)]
struct El {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<El>,
    text: String,
}

impl El {
    fn child(&self, name: &str) -> &El {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("<{}> has no <{name}>", self.name))
    }
    fn all(&self, name: &str) -> impl Iterator<Item = &El> {
        let name = name.to_string();
        self.children.iter().filter(move |c| c.name == name)
    }
    fn attr(&self, k: &str) -> &str {
        self.attrs
            .get(k)
            .unwrap_or_else(|| panic!("<{}> has no attribute {k}", self.name))
    }
}

fn unescape(s: &str) -> String {
    assert!(!s.contains('<'), "raw '<' in attribute or text: {s}");
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').expect("unterminated entity") + i;
        out.push_str(match &rest[i + 1..end] {
            "amp" => "&",
            "lt" => "<",
            "gt" => ">",
            "quot" => "\"",
            "apos" => "'",
            e => panic!("unknown entity &{e};"),
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn parse_xml(s: &str) -> El {
    let mut stack: Vec<El> = vec![El::default()];
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if s[i..].starts_with("<?") {
            assert_eq!(i, 0, "declaration must come first");
            i += s[i..].find("?>").expect("unterminated declaration") + 2;
        } else if s[i..].starts_with("<!--") {
            let end = s[i + 4..].find("-->").expect("unterminated comment") + i + 4;
            assert!(!s[i + 4..end].contains("--"), "'--' inside a comment");
            i = end + 3;
        } else if s[i..].starts_with("<![CDATA[") {
            let end = s[i..].find("]]>").expect("unterminated CDATA") + i;
            stack.last_mut().unwrap().text.push_str(&s[i + 9..end]);
            i = end + 3;
        } else if s[i..].starts_with("</") {
            let end = s[i..].find('>').unwrap() + i;
            let name = s[i + 2..end].trim();
            let el = stack.pop().unwrap();
            assert_eq!(el.name, name, "mismatched closing tag");
            stack.last_mut().unwrap().children.push(el);
            i = end + 1;
        } else if b[i] == b'<' {
            let end = s[i..].find('>').unwrap() + i;
            let mut inner = &s[i + 1..end];
            let self_closing = inner.ends_with('/');
            if self_closing {
                inner = &inner[..inner.len() - 1];
            }
            let name_end = inner
                .find(|c: char| c.is_whitespace())
                .unwrap_or(inner.len());
            let mut el = El {
                name: inner[..name_end].to_string(),
                ..Default::default()
            };
            assert!(
                el.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad element name {:?}",
                el.name
            );
            let mut rest = inner[name_end..].trim();
            while !rest.is_empty() {
                let eq = rest.find('=').expect("attribute without value");
                let key = rest[..eq].trim().to_string();
                let after = &rest[eq + 1..];
                let q = after.chars().next().unwrap();
                assert!(q == '"' || q == '\'', "unquoted attribute {key}");
                let close = after[1..].find(q).expect("unterminated attribute") + 1;
                let val = unescape(&after[1..close]);
                assert!(
                    el.attrs.insert(key.clone(), val).is_none(),
                    "duplicate attribute {key}"
                );
                rest = after[close + 1..].trim_start();
            }
            if self_closing {
                stack.last_mut().unwrap().children.push(el);
            } else {
                stack.push(el);
            }
            i = end + 1;
        } else {
            let end = s[i..].find('<').map(|e| e + i).unwrap_or(s.len());
            let text = unescape(&s[i..end]);
            if stack.len() == 1 {
                assert!(text.trim().is_empty(), "text outside the root: {text:?}");
            }
            stack.last_mut().unwrap().text.push_str(&text);
            i = end;
        }
    }
    assert_eq!(
        stack.len(),
        1,
        "unclosed element {}",
        stack.last().unwrap().name
    );
    let mut doc = stack.pop().unwrap();
    assert_eq!(doc.children.len(), 1, "one root element");
    doc.children.pop().unwrap()
}

// ---------------------------------------------------------------------------------------------

/// The start command every device must have in its script.
fn expected_command(u: &Underlay, d: &topology::Device) -> String {
    format!(
        "--role {} --name {} --bootstrap {}",
        d.role, d.name, u.bootstrap_ip
    )
}

fn addresses_of(t: &Topology, name: &str) -> BTreeSet<IpAddr> {
    t.get(name).unwrap().addresses.iter().copied().collect()
}

#[test]
fn xml_scenarios_are_well_formed_and_match_their_topologies() {
    let files = topologies();
    assert!(
        files.len() >= 3,
        "scenario1, scenario2, complex at least: {files:?}"
    );
    for f in files {
        let (text, t, u) = load(&f);
        let s = core::generate(&u, "x", &text, &CoreOptions::default()).unwrap();
        let root = parse_xml(&s.xml);
        assert_eq!(root.name, "scenario");
        let ctx = f.display();

        // Unique ids over devices and networks.
        let mut ids = BTreeMap::new();
        let mut devices = BTreeMap::new();
        for d in root.child("devices").all("device") {
            let id: u32 = d.attr("id").parse().unwrap();
            assert!(
                ids.insert(id, d.attr("name").to_string()).is_none(),
                "{ctx}: id {id} twice"
            );
            assert!(matches!(d.attr("type"), "router" | "PC"), "{ctx}");
            devices.insert(d.attr("name").to_string(), (id, d));
        }
        let mut switches = BTreeSet::new();
        for n in root.child("networks").all("network") {
            let id: u32 = n.attr("id").parse().unwrap();
            assert!(
                ids.insert(id, n.attr("name").to_string()).is_none(),
                "{ctx}: id {id} twice"
            );
            assert_eq!(n.attr("type"), "SWITCH");
            switches.insert(id);
        }
        // Every topology device is a device, and nothing else is.
        let names: BTreeSet<String> = t.names().map(str::to_string).collect();
        assert_eq!(
            names,
            devices.keys().cloned().collect::<BTreeSet<_>>(),
            "{ctx}"
        );
        // The bootstrapper's host is node 1.
        assert_eq!(ids[&1], u.hosts[u.bootstrapper].name, "{ctx}");

        // Links reference existing nodes; addresses per device equal the topology's.
        let mut addrs: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut iface_names: BTreeSet<(String, String)> = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        for l in root.child("links").all("link") {
            let n1: u32 = l.attr("node1").parse().unwrap();
            let n2: u32 = l.attr("node2").parse().unwrap();
            assert!(
                ids.contains_key(&n1) && ids.contains_key(&n2),
                "{ctx}: dangling link"
            );
            assert_ne!(n1, n2);
            assert!(pairs.insert((n1.min(n2), n1.max(n2))), "{ctx}: link twice");
            for (tag, node) in [("iface1", n1), ("iface2", n2)] {
                let Some(i) = l.children.iter().find(|c| c.name == tag) else {
                    assert!(switches.contains(&node), "{ctx}: device end without {tag}");
                    continue;
                };
                assert!(
                    !switches.contains(&node),
                    "{ctx}: switch ends have no interface"
                );
                let dev = ids[&node].clone();
                assert!(
                    iface_names.insert((dev.clone(), i.attr("name").to_string())),
                    "{ctx}: {dev} iface twice"
                );
                let ip: IpAddr = i.attr("ip4").parse().unwrap();
                assert_eq!(i.attr("ip4_mask"), "24");
                assert!(
                    addrs.entry(dev).or_default().insert(ip),
                    "{ctx}: {ip} twice"
                );
            }
        }
        for name in t.names() {
            assert_eq!(
                addrs.get(name).cloned().unwrap_or_default(),
                addresses_of(&t, name),
                "{ctx}: {name}"
            );
        }

        // Every device runs the Overlayd service with its own start command.
        let mut scripts = BTreeMap::new();
        for sc in root.child("service_configurations").all("service") {
            assert_eq!(sc.attr("name"), core::SERVICE_NAME);
            let id: u32 = sc.attr("node").parse().unwrap();
            let tpl = sc.child("templates").child("template");
            assert_eq!(tpl.attr("name"), core::SCRIPT_NAME);
            assert!(scripts.insert(ids[&id].clone(), tpl.text.clone()).is_none());
        }
        for d in t.devices() {
            let (_, el) = devices[&d.name];
            assert!(
                el.child("services")
                    .all("service")
                    .any(|s| s.attr("name") == core::SERVICE_NAME),
                "{ctx}: {} lacks the service",
                d.name
            );
            let script = &scripts[&d.name];
            assert!(!script.contains("${"), "{ctx}: Mako would expand ${{");
            let cmd = expected_command(&u, d);
            let line = script
                .lines()
                .find(|l| l.contains(&cmd))
                .unwrap_or_else(|| panic!("{ctx}: {} has no `{cmd}`:\n{script}", d.name));
            if d.role == DeviceRole::Client {
                assert!(line.contains(">> client.sh"), "{line}");
            } else {
                assert!(line.starts_with("setsid $OVERLAYD "), "{line}");
                assert!(line.contains("--key-file $KEY"), "{line}");
            }
            let runs_bootstrapper = script.contains("--role bootstrapper --topology topology.json");
            assert_eq!(
                runs_bootstrapper,
                d.name == u.hosts[u.bootstrapper].name,
                "{ctx}: {}",
                d.name
            );
            if runs_bootstrapper {
                assert_eq!(embedded_topology(script), text, "{ctx}: embedded topology");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IMN: a Tcl-like brace structure.

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    assert_eq!(clean.len() % 4, 0);
    let mut out = Vec::new();
    for q in clean.chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q
            .iter()
            .map(|&c| if c == b'=' { 0 } else { val(c) })
            .fold(0u32, |a, v| (a << 6) | v);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

/// The topology a bootstrapper's start script writes (base64 in a heredoc).
fn embedded_topology(script: &str) -> String {
    let start = script
        .find("base64 -d > topology.json <<-'OVERLAYD_TOPOLOGY_EOF'\n")
        .expect("the script writes topology.json");
    let b64: String = script[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != "OVERLAYD_TOPOLOGY_EOF")
        .collect();
    String::from_utf8(decode_base64(&b64)).unwrap()
}

/// Top-level blocks `KIND NAME {BODY}` of an imn file; panics on unbalanced braces.
fn imn_blocks(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut head = String::new();
    let mut body = String::new();
    for line in s.lines() {
        if depth == 0 {
            if line.trim().is_empty() {
                continue;
            }
            // The GUI reads the file as one Tcl list: `#` starts no comment there.
            assert!(!line.starts_with('#'), "top-level '#' line: {line}");
            assert!(
                line.ends_with('{'),
                "top-level line must open a block: {line}"
            );
            head = line.trim_end_matches('{').trim().to_string();
            body.clear();
            depth = 1;
            continue;
        }
        assert!(!line.contains('\\'), "backslash in imn: {line}");
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "unbalanced braces at {line}");
        }
        if depth == 0 {
            assert_eq!(line, "}", "block must close on its own line");
            out.push((head.clone(), body.clone()));
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert_eq!(depth, 0, "unbalanced braces at the end");
    out
}

#[test]
fn imn_scenarios_are_balanced_and_match_their_topologies() {
    for f in topologies() {
        let (text, t, u) = load(&f);
        let ctx = f.display();
        let s = core::generate(&u, "x", &text, &CoreOptions::default()).unwrap();
        let blocks = imn_blocks(&s.imn);
        let mut nodes: BTreeMap<String, String> = BTreeMap::new();
        let mut links = Vec::new();
        for (head, body) in &blocks {
            let mut w = head.split_whitespace();
            match (w.next(), w.next()) {
                (Some("node"), Some(n)) => assert!(
                    nodes.insert(n.to_string(), body.clone()).is_none(),
                    "{ctx}: {n} twice"
                ),
                (Some("link"), Some(_)) => links.push(body.clone()),
                (Some("canvas" | "option"), _) | (Some("comments"), None) => {}
                other => panic!("{ctx}: unexpected block {other:?}"),
            }
        }
        // Hostnames, addresses and peers.
        let mut by_host = BTreeMap::new();
        let mut peers: BTreeSet<(String, String)> = BTreeSet::new();
        for (n, body) in &nodes {
            let host = body
                .lines()
                .find_map(|l| l.trim().strip_prefix("hostname "))
                .unwrap()
                .to_string();
            for l in body.lines() {
                if let Some(p) = l.trim().strip_prefix("interface-peer {") {
                    let peer = p.trim_end_matches('}').split_whitespace().nth(1).unwrap();
                    assert!(
                        nodes.contains_key(peer),
                        "{ctx}: {n} peers with missing {peer}"
                    );
                    peers.insert((n.clone(), peer.to_string()));
                }
            }
            by_host.insert(host, (n.clone(), body.clone()));
        }
        for (a, b) in &peers {
            assert!(
                peers.contains(&(b.clone(), a.clone())),
                "{ctx}: {a}–{b} one-sided"
            );
        }
        let mut link_pairs = BTreeSet::new();
        for l in &links {
            let inner = l
                .trim()
                .strip_prefix("nodes {")
                .unwrap()
                .split('}')
                .next()
                .unwrap();
            let v: Vec<&str> = inner.split_whitespace().collect();
            assert_eq!(v.len(), 2);
            assert!(
                nodes.contains_key(v[0]) && nodes.contains_key(v[1]),
                "{ctx}: dangling link"
            );
            assert!(
                peers.contains(&(v[0].to_string(), v[1].to_string())),
                "{ctx}: link without peers"
            );
            assert!(link_pairs.insert((v[0].min(v[1]).to_string(), v[0].max(v[1]).to_string())));
        }
        assert_eq!(
            link_pairs.len() * 2,
            peers.len(),
            "{ctx}: every peering is a link"
        );
        for d in t.devices() {
            let (_, body) = by_host
                .get(&d.name)
                .unwrap_or_else(|| panic!("{ctx}: no node {}", d.name));
            let got: BTreeSet<IpAddr> = body
                .lines()
                .filter_map(|l| l.trim().strip_prefix("ip address "))
                .map(|a| a.split('/').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(got, addresses_of(&t, &d.name), "{ctx}: {}", d.name);
            assert!(
                body.contains("UserDefined}"),
                "{ctx}: {} lacks UserDefined",
                d.name
            );
            assert!(
                body.contains("cmdup=('sh overlayd.sh', )"),
                "{ctx}: {}",
                d.name
            );
            assert!(
                body.contains(&expected_command(&u, d)),
                "{ctx}: {} not started right",
                d.name
            );
            if d.name == u.hosts[u.bootstrapper].name {
                assert!(body.contains("--role bootstrapper"));
                assert_eq!(embedded_topology(body), text, "{ctx}");
            }
        }
        let device_nodes = nodes
            .values()
            .filter(|b| b.contains("hostname") && b.contains("type router"))
            .count();
        assert_eq!(device_nodes, t.len(), "{ctx}");
    }
}

#[test]
fn committed_scenarios_equal_the_generator_output() {
    let dir = repo().join("core-scenarios");
    let mut expected = BTreeSet::from(["README.md".to_string(), "overlayd_service.py".to_string()]);
    for f in topologies() {
        let s = core::generate_file(&f, &CoreOptions::default(), core::Routing::Static).unwrap();
        for (ext, body) in [("xml", &s.xml), ("imn", &s.imn)] {
            let name = format!("{}.{ext}", s.name);
            let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == *body,
                "core-scenarios/{name} is stale or missing: run `overlayd core-scenario` (never edit it by hand)"
            );
            expected.insert(name);
        }
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected,
        "core-scenarios/ holds exactly the generated files"
    );
}

#[test]
fn the_cli_writes_the_chosen_formats() {
    let out = std::env::temp_dir().join(format!("overlayd-core-{}", std::process::id()));
    let topo = repo().join("topology/scenario1.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args([
            "core-scenario",
            topo.to_str().unwrap(),
            "--format",
            "xml",
            "--out-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("scenario1.xml").is_file());
    assert!(!out.join("scenario1.imn").exists());
    let _ = std::fs::remove_dir_all(&out);
    // --routing ospf gives the OSPF form, identical to the library's.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args([
            "core-scenario",
            topo.to_str().unwrap(),
            "--routing",
            "ospf",
            "--out-dir",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ospf = core::generate_file(&topo, &CoreOptions::default(), core::Routing::Ospf).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("scenario1.imn")).unwrap(),
        ospf.imn
    );
    assert_eq!(
        std::fs::read_to_string(out.join("scenario1.xml")).unwrap(),
        ospf.xml
    );
    assert!(ospf.xml.contains("<service name=\"zebra\"/>"));
    let _ = std::fs::remove_dir_all(&out);
    // Loopback topologies are refused with one line.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(["core-scenario"])
        .arg(repo().join("topology/loopback-diamond.json"))
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("loopback"), "{err}");
    // Bad arguments exit 2.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(["core-scenario", "--format", "pdf"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .args(["core-scenario", "--routing", "rip"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn base64_matches_the_decoder() {
    for s in ["", "a", "ab", "abc", "abcd", "{\"S1\": {}}\n"] {
        assert_eq!(decode_base64(&core::base64(s.as_bytes())), s.as_bytes());
    }
    assert_eq!(core::base64(b"hello"), "aGVsbG8=");
}

// ---------------------------------------------------------------------------------------------
// IMN as the legacy GUI reads it: tests/imn_check.tcl, run by a real Tcl interpreter, reads the
// file exactly as CORE 7/8's loader does (one Tcl list of objects) and prints what it got.

/// What the GUI holds for one node of an .imn file.
#[derive(Debug, Default)]
struct ImnNode {
    fields: BTreeMap<String, String>,
    hostname: String,
    /// Interface -> addresses with prefix.
    addrs: BTreeMap<String, Vec<String>>,
    /// Interface -> peer node id.
    peers: BTreeMap<String, String>,
    services: Vec<String>,
    /// custom-config-id -> config lines.
    configs: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default)]
struct ImnView {
    objects: Vec<(String, String)>,
    comments: Vec<String>,
    nodes: BTreeMap<String, ImnNode>,
    links: Vec<(String, String)>,
    /// (link id, field) -> value, the options the GUI reads.
    link_options: BTreeMap<(String, String), String>,
}

/// Run tests/imn_check.tcl on `path` and parse its report.
fn tcl_view(path: &Path) -> ImnView {
    let o = std::process::Command::new("tclsh")
        .arg(repo().join("tests/imn_check.tcl"))
        .arg(path)
        .output()
        .expect("tclsh (apt-get install tcl; bin/test installs it)");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.is_empty(),
        "{}: the legacy GUI's way of reading fails: {stderr}",
        path.display()
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let mut v = ImnView::default();
    let mut lines = out.lines();
    // `HEAD... N` followed by N raw lines.
    let take = |lines: &mut std::str::Lines, n: &str| -> Vec<String> {
        let n: usize = n.parse().unwrap();
        (0..n).map(|_| lines.next().unwrap().to_string()).collect()
    };
    while let Some(l) = lines.next() {
        let w: Vec<&str> = l.split(' ').collect();
        match w[0] {
            "object" => v.objects.push((w[1].into(), w[2].into())),
            "comments" => v.comments = take(&mut lines, w[1]),
            "node" => {
                v.nodes
                    .entry(w[1].into())
                    .or_default()
                    .fields
                    .insert(w[2].into(), w[3..].join(" "));
            }
            "hostname" => v.nodes.entry(w[1].into()).or_default().hostname = w[2].into(),
            "address" => v
                .nodes
                .entry(w[1].into())
                .or_default()
                .addrs
                .entry(w[2].into())
                .or_default()
                .push(w[3].into()),
            "peer" => {
                let prev = v
                    .nodes
                    .entry(w[1].into())
                    .or_default()
                    .peers
                    .insert(w[2].into(), w[3].into());
                assert!(prev.is_none(), "{l}: interface peered twice");
            }
            "services" => {
                v.nodes.entry(w[1].into()).or_default().services =
                    w[2..].iter().map(|s| s.to_string()).collect()
            }
            "config" => {
                let body = take(&mut lines, w[3]);
                let prev = v
                    .nodes
                    .entry(w[1].into())
                    .or_default()
                    .configs
                    .insert(w[2].into(), body);
                assert!(prev.is_none(), "{l}: twice");
            }
            "link" => v.links.push((w[2].into(), w[3].into())),
            "linkopt" => {
                v.link_options
                    .insert((w[1].into(), w[2].into()), w[3].into());
            }
            other => panic!("imn_check.tcl printed an unknown fact {other}: {l}"),
        }
    }
    v
}

/// Device name -> start script, from a CORE 9 XML scenario.
fn xml_scripts(xml: &str) -> BTreeMap<String, String> {
    let root = parse_xml(xml);
    let names: BTreeMap<String, String> = root
        .child("devices")
        .all("device")
        .map(|d| (d.attr("id").to_string(), d.attr("name").to_string()))
        .collect();
    root.child("service_configurations")
        .all("service")
        .map(|s| {
            (
                names[s.attr("node")].clone(),
                s.child("templates").child("template").text.clone(),
            )
        })
        .collect()
}

/// Check what the legacy GUI reads from `imn` against the topology and the XML's scripts.
fn check_imn_view(
    ctx: &str,
    v: &ImnView,
    t: &Topology,
    u: &Underlay,
    xml: &str,
    routing: core::Routing,
) {
    // Provenance is a comments block, first, as in CORE's samples.
    assert_eq!(
        v.objects[0],
        ("comments".to_string(), "-".to_string()),
        "{ctx}"
    );
    assert!(
        v.comments
            .iter()
            .any(|l| l.contains("overlayd core-scenario")
                && l.contains(&format!("routing {}", routing.as_str()))),
        "{ctx}: {:?}",
        v.comments
    );
    for (class, id) in &v.objects[1..] {
        assert!(
            matches!(class.as_str(), "node" | "link" | "canvas" | "option"),
            "{ctx}: object {class} {id}"
        );
    }
    let node_ids: BTreeSet<&String> = v
        .objects
        .iter()
        .filter(|(c, _)| c == "node")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        node_ids.len(),
        v.nodes.len(),
        "{ctx}: facts about undeclared nodes"
    );
    let lans = u.subnets.iter().filter(|s| s.is_lan()).count();
    assert_eq!(
        v.nodes.len(),
        u.hosts.len() + lans,
        "{ctx}: one node per device and LAN"
    );
    let by_name: BTreeMap<&str, &String> = v
        .nodes
        .iter()
        .map(|(id, n)| (n.hostname.as_str(), id))
        .collect();
    assert_eq!(by_name.len(), v.nodes.len(), "{ctx}: hostnames unique");
    let scripts = xml_scripts(xml);
    let ospf = routing == core::Routing::Ospf;

    for d in t.devices() {
        let (_, host) = u.host(&d.name).unwrap();
        let id = by_name
            .get(d.name.as_str())
            .unwrap_or_else(|| panic!("{ctx}: no node {}", d.name));
        let n = &v.nodes[*id];
        let c = format!("{ctx}: {}", d.name);
        assert_eq!(n.fields["type"], "router", "{c}");
        let router = host.ifaces.len() >= 2;
        assert_eq!(
            n.fields["model"],
            if router { "router" } else { "PC" },
            "{c}"
        );
        // Interfaces: exactly the topology's addresses, each interface peered.
        let got: BTreeSet<IpAddr> = n
            .addrs
            .values()
            .flatten()
            .map(|a| {
                let (ip, prefix) = a.split_once('/').unwrap();
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(prefix, if ip.is_ipv4() { "24" } else { "64" }, "{c}: {a}");
                ip
            })
            .collect();
        assert_eq!(got, addresses_of(t, &d.name), "{c}");
        for f in &host.ifaces {
            let subnet = &u.subnets[f.subnet];
            let peer = n
                .peers
                .get(&f.name)
                .unwrap_or_else(|| panic!("{c}: {} has no interface-peer", f.name));
            let p = &v.nodes[peer];
            let members: BTreeSet<&str> = subnet
                .members
                .iter()
                .map(|&(m, _)| u.hosts[m].name.as_str())
                .collect();
            if subnet.is_lan() {
                assert_eq!(p.fields["type"], "lanswitch", "{c}");
                let on_switch: BTreeSet<&str> = p
                    .peers
                    .values()
                    .map(|id| v.nodes[id].hostname.as_str())
                    .collect();
                assert_eq!(on_switch, members, "{c}: switch of {}", subnet.net);
            } else {
                let other = members.iter().find(|m| **m != d.name).unwrap();
                assert_eq!(p.hostname, *other, "{c}: {}", f.name);
            }
        }
        assert_eq!(n.peers.len(), host.ifaces.len(), "{c}: peers");
        // Services.
        let mut want: Vec<&str> = if ospf && router {
            vec!["zebra", "OSPFv2", "OSPFv3", "IPForward"]
        } else {
            vec![]
        };
        want.push("UserDefined");
        assert_eq!(n.services, want, "{c}");
        let svc = &n.configs["service:UserDefined"];
        for want in [
            "files=('overlayd.sh', )",
            "cmdup=('sh overlayd.sh', )",
            "cmddown=('sh overlayd.sh stop', )",
        ] {
            assert!(svc.iter().any(|l| l == want), "{c}: {svc:?} lacks {want}");
        }
        // The script as the GUI sends it to the daemon (lines joined by newlines) is the XML's.
        let script = n.configs["service:UserDefined:overlayd.sh"].join("\n");
        assert_eq!(
            script,
            scripts[&d.name].trim_end_matches('\n'),
            "{c}: script"
        );
        assert!(script.contains(&expected_command(u, d)), "{c}");
    }
    // Links: exactly the peerings, each once.
    let mut peerings = BTreeSet::new();
    for (id, n) in &v.nodes {
        for p in n.peers.values() {
            assert!(
                v.nodes[p].peers.values().any(|q| q == id),
                "{ctx}: {id}–{p} one-sided"
            );
            peerings.insert((id.min(p).clone(), id.max(p).clone()));
        }
    }
    let links: BTreeSet<(String, String)> = v
        .links
        .iter()
        .map(|(a, b)| (a.min(b).clone(), a.max(b).clone()))
        .collect();
    assert_eq!(links.len(), v.links.len(), "{ctx}: a link twice");
    assert_eq!(links, peerings, "{ctx}: links and interface peers");
}

#[test]
fn the_legacy_gui_reads_every_generated_imn() {
    if common::prereq::lacking(
        "the_legacy_gui_reads_every_generated_imn",
        &[common::prereq::TCLSH],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overlayd-imn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in topologies() {
        let (text, t, u) = load(&f);
        for routing in [core::Routing::Static, core::Routing::Ospf] {
            let s =
                core::generate_routed(&u, "x", &text, &CoreOptions::default(), routing).unwrap();
            let p = dir.join("x.imn");
            std::fs::write(&p, &s.imn).unwrap();
            let ctx = format!("{} ({})", f.display(), routing.as_str());
            check_imn_view(&ctx, &tcl_view(&p), &t, &u, &s.xml, routing);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_legacy_gui_reads_every_committed_imn() {
    if common::prereq::lacking(
        "the_legacy_gui_reads_every_committed_imn",
        &[common::prereq::TCLSH],
    ) {
        return;
    }
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("core-scenarios")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "imn") {
            continue;
        }
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        let (_, t, u) = load(&repo().join(format!("topology/{stem}.json")));
        let xml = std::fs::read_to_string(p.with_extension("xml")).unwrap();
        check_imn_view(
            &p.display().to_string(),
            &tcl_view(&p),
            &t,
            &u,
            &xml,
            core::Routing::Static,
        );
        n += 1;
    }
    assert!(n >= 3, "scenario1, scenario2, complex at least");
}

/// The checker itself refuses what the GUI cannot read: the old `#` first line, an unknown
/// class, a field without its value.
#[test]
fn the_imn_checker_refuses_what_the_gui_cannot_read() {
    if common::prereq::lacking(
        "the_imn_checker_refuses_what_the_gui_cannot_read",
        &[common::prereq::TCLSH],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overlayd-imnbad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = core::generate_file(
        &repo().join("topology/scenario1.json"),
        &CoreOptions::default(),
        core::Routing::Static,
    )
    .unwrap()
    .imn;
    for (what, bad) in [
        (
            "unknown object class '#'",
            format!("# Generated by hand\n{good}"),
        ),
        (
            "not one Tcl list",
            good.replacen("node n1 {", "node n1 {{", 1),
        ),
        (
            "a field without a value",
            good.replacen("    canvas c1\n", "    canvas\n", 1),
        ),
    ] {
        let p = dir.join("bad.imn");
        std::fs::write(&p, bad).unwrap();
        let o = std::process::Command::new("tclsh")
            .arg(repo().join("tests/imn_check.tcl"))
            .arg(&p)
            .output()
            .expect("tclsh (apt-get install tcl; bin/test installs it)");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(what), "{what}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Static routing: every node's script installs exactly the underlay's routes (the routes the
/// netns emulator also uses) and routers forward by themselves, with no routing service. OSPF:
/// routers run zebra/OSPF and only PCs carry routes.
#[test]
fn routing_options_put_routes_and_services_where_they_belong() {
    for f in topologies() {
        let (text, _, u) = load(&f);
        for routing in [core::Routing::Static, core::Routing::Ospf] {
            let s =
                core::generate_routed(&u, "x", &text, &CoreOptions::default(), routing).unwrap();
            let root = parse_xml(&s.xml);
            let scripts = xml_scripts(&s.xml);
            for (h, host) in u.hosts.iter().enumerate() {
                let ctx = format!("{} ({}): {}", f.display(), routing.as_str(), host.name);
                let router = core::is_router(&u, h);
                let script = &scripts[&host.name];
                let got: Vec<&str> = script
                    .lines()
                    .filter(|l| l.starts_with("ip route") || l.starts_with("ip -6 route"))
                    .collect();
                let want: Vec<String> = if routing == core::Routing::Ospf && router {
                    vec![]
                } else {
                    host.routes
                        .iter()
                        .map(|r| format!("ip route replace {} via {} dev {}", r.dest, r.via, r.dev))
                        .collect()
                };
                assert_eq!(got, want, "{ctx}");
                let forwards = script.contains("sysctl -q -w net.ipv4.ip_forward=1");
                assert_eq!(
                    forwards,
                    routing == core::Routing::Static && router,
                    "{ctx}"
                );
                if forwards {
                    for i in &host.ifaces {
                        let rp = format!("net.ipv4.conf.{}.rp_filter=0", i.name);
                        assert!(script.contains(&rp), "{ctx}: {rp}");
                    }
                }
                let device = root
                    .child("devices")
                    .all("device")
                    .find(|d| d.attr("name") == host.name)
                    .unwrap();
                assert_eq!(
                    device.attr("type"),
                    if router { "router" } else { "PC" },
                    "{ctx}"
                );
                let services: Vec<&str> = device
                    .child("services")
                    .all("service")
                    .map(|s| s.attr("name"))
                    .collect();
                let want: &[&str] = if routing == core::Routing::Ospf && router {
                    &["zebra", "OSPFv2", "OSPFv3", "IPForward", core::SERVICE_NAME]
                } else {
                    &[core::SERVICE_NAME]
                };
                assert_eq!(services, want, "{ctx}");
            }
        }
    }
}

/// IPv6: routes and forwarding in the scripts, addresses in the .imn as the GUI reads them;
/// dual-stack links (two subnets between the same devices, two links) are refused in one line.
#[test]
fn ipv6_topologies_get_ipv6_routes_and_forwarding() {
    let text = r#"{
        "S1": {"role": "server", "addresses": ["fd00:1::10"], "neighbours": ["fd00:1::1"]},
        "O1": {"role": "node", "addresses": ["fd00:1::1", "fd00:2::1"], "neighbours": ["fd00:1::10", "fd00:2::2"]},
        "O2": {"role": "edge", "addresses": ["fd00:2::2", "fd00:3::1"], "neighbours": ["fd00:2::1"]},
        "C1": {"role": "client", "addresses": ["fd00:3::20"], "neighbours": ["fd00:3::1"]}
    }"#;
    let t = topology::parse(text, "t").unwrap();
    let u = Underlay::from_topology(&t).unwrap();
    let s = core::generate_routed(
        &u,
        "v6",
        text,
        &CoreOptions::default(),
        core::Routing::Static,
    )
    .unwrap();
    let scripts = xml_scripts(&s.xml);
    assert!(scripts["O1"].contains("sysctl -q -w net.ipv6.conf.all.forwarding=1\n"));
    assert!(scripts["O1"].contains("ip -6 route replace fd00:3::/64 via fd00:2::2 dev eth1\n"));
    assert!(scripts["C1"].contains("ip -6 route replace default via fd00:3::1 dev eth0\n"));
    assert!(!scripts["C1"].contains("forwarding"));
    let dir = std::env::temp_dir().join(format!("overlayd-v6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("v6.imn");
    std::fs::write(&p, &s.imn).unwrap();
    check_imn_view("ipv6", &tcl_view(&p), &t, &u, &s.xml, core::Routing::Static);
    let _ = std::fs::remove_dir_all(&dir);

    let dual = text
        .replace("\"fd00:1::10\"]", "\"fd00:1::10\", \"10.0.1.10\"]")
        .replace("[\"fd00:1::1\", ", "[\"fd00:1::1\", \"10.0.1.1\", ");
    let u = Underlay::from_topology(&topology::parse(&dual, "t").unwrap()).unwrap();
    let e = core::generate(&u, "ds", &dual, &CoreOptions::default()).unwrap_err();
    assert!(e.contains("O1 and S1 share two subnets"), "{e}");
}

/// The static routing of the scripts alone makes every address reachable from every node:
/// the emulator builds the namespaces, the test then removes every route it installed, turns
/// forwarding off and reverse-path filtering to strict, and runs only the routing lines
/// (`sysctl`, `ip route`) of each node's generated script. Then every node opens a TCP
/// connection to every other node's every address (a closed port: the refusal proves the round
/// trip), through up to five routers in complex.json. Root only (else a failure under CI, a skip
/// elsewhere: `common::prereq`).
#[test]
fn static_routing_lines_alone_connect_every_address() {
    if common::prereq::lacking(
        "static_routing_lines_alone_connect_every_address",
        &[common::prereq::Need::Netns],
    ) {
        return;
    }
    let t0 = std::time::Instant::now();
    let emu = common::emu::Emu::up(
        "static_routing_lines_alone_connect_every_address",
        "cr",
        "complex.json",
        false,
    );
    let u = emu.underlay().clone();
    let text = std::fs::read_to_string(repo().join("topology/complex.json")).unwrap();
    let sh = |ns: &str, script: &str| {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Undo the emulator's routing.
    for host in &u.hosts {
        let mut undo = String::from(
            "ip -4 route flush proto boot && ip -6 route flush proto boot && \
             sysctl -q -w net.ipv4.ip_forward=0 && sysctl -q -w net.ipv4.conf.all.rp_filter=1",
        );
        for i in &host.ifaces {
            undo.push_str(&format!(
                " && sysctl -q -w net.ipv4.conf.{}.rp_filter=1",
                i.name
            ));
        }
        let (ok, _, err) = sh(emu.ns_of(&host.name), &undo);
        assert!(ok, "{}: {err}", host.name);
    }
    // One probe script per node: a TCP connection to port 9 of each address.
    let probe = |from: &str| -> Vec<(String, String)> {
        let addrs: Vec<String> = u
            .hosts
            .iter()
            .filter(|h| h.name != from)
            .flat_map(|h| h.ifaces.iter().flat_map(|i| &i.addrs))
            .map(|a| a.to_string())
            .collect();
        let script = format!(
            "for a in {}; do r=$(timeout 5 bash -c \"exec 3<>/dev/tcp/$a/9\" 2>&1); \
             case $r in *refused*) echo ok $a;; *) echo lost $a;; esac; done",
            addrs.join(" ")
        );
        let (_, out, _) = sh(emu.ns_of(from), &script);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(r, a)| (r.to_string(), a.to_string()))
            .collect()
    };
    // Without routes, C1 reaches its own LAN only: the probe can tell.
    let before = probe("C1");
    assert!(
        before.iter().any(|(r, a)| r == "ok" && a == "10.0.20.1"),
        "{before:?}"
    );
    assert!(
        before.iter().any(|(r, a)| r == "lost" && a == "10.0.22.1"),
        "{before:?}"
    );
    // The routing lines of each node's generated script (static routing).
    for (h, host) in u.hosts.iter().enumerate() {
        let script = core::start_script_routed(
            &u,
            h,
            "complex",
            &text,
            &CoreOptions::default(),
            core::Routing::Static,
        )
        .unwrap();
        let lines: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("sysctl ") || l.starts_with("ip "))
            .collect();
        assert!(!lines.is_empty(), "{}", host.name);
        let (ok, _, err) = sh(emu.ns_of(&host.name), &lines.join(" && "));
        assert!(ok && err.is_empty(), "{}: {err}", host.name);
    }
    // Every node, in parallel, to every address.
    let results: Vec<(String, Vec<(String, String)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = u
            .hosts
            .iter()
            .map(|h| (h.name.clone(), s.spawn(|| probe(&h.name))))
            .collect();
        handles
            .into_iter()
            .map(|(n, j)| (n, j.join().unwrap()))
            .collect()
    });
    let mut probes = 0;
    for (from, res) in &results {
        let want = u
            .hosts
            .iter()
            .filter(|h| &h.name != from)
            .map(|h| h.ifaces.iter().map(|i| i.addrs.len()).sum::<usize>())
            .sum::<usize>();
        assert_eq!(res.len(), want, "{from}: {res:?}");
        let lost: Vec<&String> = res
            .iter()
            .filter(|(r, _)| r != "ok")
            .map(|(_, a)| a)
            .collect();
        assert!(lost.is_empty(), "{from} cannot reach {lost:?}");
        probes += res.len();
    }
    println!(
        "static routing: {probes} node-to-address connections, all answered; {:.1} s in all",
        t0.elapsed().as_secs_f64()
    );
}

/// topology/link-quality.json's link parameters, as CORE holds them: (end, end) -> options
/// in CORE's units. A LAN member's parameters are its link to the switch ("LAN"). Our jitter
/// adds 0..J, CORE's netem D ± J: CORE gets D + J/2 ± J/2. The queue is the shaper's.
fn link_quality_options() -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let opts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !m.is_empty() {
            m.insert("buffer".into(), "1000".into());
        }
        m
    };
    let key = |a: &str, b: &str| (a.min(b).to_string(), a.max(b).to_string());
    BTreeMap::from([
        (
            key("O1", "S1"),
            opts(&[("bandwidth", "100000000"), ("delay", "2000")]),
        ),
        (
            key("O1", "O2"),
            opts(&[("delay", "5500"), ("jitter", "500")]),
        ),
        (
            key("O1", "O3"),
            opts(&[("delay", "21000"), ("jitter", "1000")]),
        ),
        (
            key("O2", "O4"),
            opts(&[("delay", "5500"), ("jitter", "500")]),
        ),
        (
            key("O3", "O4"),
            opts(&[("delay", "21000"), ("jitter", "1000")]),
        ),
        (
            key("C1", "LAN"),
            opts(&[("bandwidth", "10000000"), ("delay", "1000")]),
        ),
        (
            key("C2", "LAN"),
            opts(&[("bandwidth", "10000000"), ("delay", "1000"), ("loss", "5")]),
        ),
        (key("LAN", "O4"), opts(&[])),
    ])
}

#[test]
fn link_parameters_become_cores_own_link_options_in_both_formats() {
    let f = repo().join("topology/link-quality.json");
    let (text, _, u) = load(&f);
    let s = core::generate(&u, "link-quality", &text, &CoreOptions::default()).unwrap();
    let want = link_quality_options();

    // CORE 9 XML: <options delay=".." .../> inside each <link>.
    let root = parse_xml(&s.xml);
    let mut names = BTreeMap::new();
    for d in root.child("devices").all("device") {
        names.insert(d.attr("id").to_string(), d.attr("name").to_string());
    }
    for n in root.child("networks").all("network") {
        names.insert(n.attr("id").to_string(), "LAN".to_string());
    }
    let mut got = BTreeMap::new();
    for l in root.child("links").all("link") {
        let (a, b) = (&names[l.attr("node1")], &names[l.attr("node2")]);
        let options = l
            .children
            .iter()
            .find(|c| c.name == "options")
            .map(|o| o.attrs.clone())
            .unwrap_or_default();
        got.insert((a.min(b).clone(), a.max(b).clone()), options);
    }
    assert_eq!(got, want, "XML link options");

    // The legacy GUI: the link fields as its loader and getLink* read them (loss is `ber`,
    // duplication `duplicate`).
    let dir = std::env::temp_dir().join(format!("overlayd-imnlq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("link-quality.imn");
    std::fs::write(&p, &s.imn).unwrap();
    let v = tcl_view(&p);
    let _ = std::fs::remove_dir_all(&dir);
    let name = |id: &str| -> String {
        match v.nodes.get(id) {
            Some(n) if !n.hostname.starts_with("lan") => n.hostname.clone(),
            _ => "LAN".to_string(),
        }
    };
    let mut got = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for (k, (a, b)) in v.links.iter().enumerate() {
        let (a, b) = (name(a), name(b));
        ids.insert(format!("l{}", k + 1), (a.clone().min(b.clone()), a.max(b)));
    }
    for key in ids.values() {
        got.insert(key.clone(), BTreeMap::new());
    }
    for ((link, field), value) in &v.link_options {
        let field = if field == "ber" {
            "loss"
        } else {
            field.as_str()
        };
        if field == "bandwidth" && value == "0" {
            continue; // "unlimited", as the GUI writes it
        }
        got.get_mut(&ids[link])
            .unwrap()
            .insert(field.to_string(), value.clone());
    }
    // The legacy format has no queue field.
    let mut want = want;
    for o in want.values_mut() {
        o.remove("buffer");
    }
    assert_eq!(got, want, "IMN link fields");
}
