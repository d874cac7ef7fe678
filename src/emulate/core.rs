//! CORE scenario generation: a topology file becomes a CORE 9 XML scenario and a legacy `.imn`
//! file for the CORE 7/8 Tcl GUI.
//!
//! Both files describe the same network, the [`Underlay`] of the topology: one CORE node per
//! device (a `router` when it has two or more interfaces, a `PC` otherwise), a direct link per
//! point-to-point subnet and a switch per LAN, with exactly the topology's addresses and its
//! link parameters as CORE's own link options (the XML `<options>` element, the `.imn` link
//! fields; [`core_link_options`]). How the
//! routers learn routes is the [`Routing`]: with [`Routing::Static`] (the default) every node's
//! script installs the underlay's shortest-path routes and routers turn on forwarding, so no
//! routing daemon is needed and a stock CORE runs the file; with [`Routing::Ospf`] routers run
//! CORE's zebra/OSPF services (OSPF MDR must be installed) and only PCs get static routes.
//! Every node gets one start script, `overlayd.sh`, through a service:
//! in CORE 9 the custom service `Overlayd` (see `core-scenarios/overlayd_service.py`) whose
//! file template the XML overrides per node; in the legacy GUI the built-in `UserDefined`
//! service. The script sets the static routes, makes sure a shared key exists (the first
//! node to start generates it; every node of a session shares the host's `/tmp`), starts the
//! bootstrapper on its host (the topology is embedded in that host's script), and starts the
//! device's role. Clients are not started (they need a display for ffplay): their script writes
//! `client.sh`, the exact client command, into the node's directory.
//!
//! The generated files are committed in `core-scenarios/` and a test regenerates them to prove
//! they never drift; they are never edited by hand.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::topology::{DeviceRole, LinkParams};

use super::{shell_quote, Underlay};

/// Name of the CORE 9 custom service (see `core-scenarios/overlayd_service.py`).
pub const SERVICE_NAME: &str = "Overlayd";
/// The start script every node gets.
pub const SCRIPT_NAME: &str = "overlayd.sh";

/// Where things are on the CORE machine; the defaults match `core-scenarios/README.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreOptions {
    /// The `overlayd` binary (a name on PATH or an absolute path).
    pub bin: String,
    /// Video folder of servers; a sub-folder named after the server is preferred if present.
    pub videos: String,
    /// Directory (shared by all nodes of a session) holding the generated overlay key.
    pub key_dir: String,
}

impl Default for CoreOptions {
    fn default() -> Self {
        CoreOptions {
            bin: "overlayd".into(),
            videos: "/usr/local/share/overlayd/videos".into(),
            key_dir: "/tmp/overlayd-core".into(),
        }
    }
}

/// How a scenario's nodes get their routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// Every node's start script installs the underlay's shortest-path routes; routers forward
    /// through their script. Needs nothing beyond a stock CORE; routes are there as soon as
    /// the script ran, but do not follow a deleted link.
    #[default]
    Static,
    /// Routers run CORE's zebra, OSPFv2, OSPFv3 and IPForward services (OSPF MDR's zebra must
    /// be installed); PCs get static routes. Routes follow link changes, after OSPF converged.
    Ospf,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Static => "static",
            Routing::Ospf => "ospf",
        }
    }
}

/// The two generated files of one topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Base name (the topology file's stem).
    pub name: String,
    pub xml: String,
    pub imn: String,
}

/// Which formats to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xml,
    Imn,
    Both,
}

/// Generate both scenario files of a topology with the default (static) routing.
pub fn generate(
    u: &Underlay,
    name: &str,
    topology_text: &str,
    opts: &CoreOptions,
) -> Result<Scenario, String> {
    generate_routed(u, name, topology_text, opts, Routing::default())
}

/// Generate both scenario files of a topology. `topology_text` is the file's text, embedded in
/// the bootstrapper's script; `name` is the scenario's base name.
pub fn generate_routed(
    u: &Underlay,
    name: &str,
    topology_text: &str,
    opts: &CoreOptions,
    routing: Routing,
) -> Result<Scenario, String> {
    // Names go unquoted into Tcl lists (.imn), shell comments and CORE node names.
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !plain(name) {
        return Err(format!(
            "scenario name {name:?}: CORE scenario names use only letters, digits, '-', '_' and '.'"
        ));
    }
    for h in &u.hosts {
        if !plain(&h.name) {
            return Err(format!(
                "device name {:?}: CORE node names use only letters, digits, '-', '_' and '.'",
                h.name
            ));
        }
        for i in &h.ifaces {
            let v4 = i.addrs.iter().filter(|a| a.is_ipv4()).count();
            let v6 = i.addrs.len() - v4;
            if v4 > 1 || v6 > 1 {
                return Err(format!(
                    "{}: CORE interfaces carry one IPv4 and one IPv6 address, but {} has {} addresses on one subnet",
                    h.name,
                    i.name,
                    i.addrs.len()
                ));
            }
        }
    }
    // The legacy GUI finds an interface by its peer node, so two nodes can share one link
    // only; the underlay gives IPv4 and IPv6 their own subnets, hence links.
    for a in 0..u.hosts.len() {
        for b in a + 1..u.hosts.len() {
            if let [s1, s2, ..] = u.shared_subnets(a, b)[..] {
                return Err(format!(
                    "{} and {} share two subnets ({} and {}): a CORE scenario holds one link per pair of devices (dual-stack links are not supported; use one address family per link)",
                    u.hosts[a].name, u.hosts[b].name, u.subnets[s1].net, u.subnets[s2].net
                ));
            }
        }
    }
    // One script per node, the same in both formats.
    let scripts = (0..u.hosts.len())
        .map(|h| start_script_routed(u, h, name, topology_text, opts, routing))
        .collect::<Result<Vec<String>, String>>()?;
    let layout = Layout::new(u);
    Ok(Scenario {
        name: name.to_string(),
        xml: xml(u, name, &layout, &scripts, routing),
        imn: imn(u, name, &layout, &scripts, routing)?,
    })
}

/// Load, derive and generate the scenario of a topology file.
pub fn generate_file(
    path: &Path,
    opts: &CoreOptions,
    routing: Routing,
) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t =
        crate::topology::parse(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    let u = Underlay::from_topology(&t).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    generate_routed(&u, &name, &text, opts, routing).map_err(|e| format!("{}: {e}", path.display()))
}

/// Write the chosen formats into `out_dir`; returns the written paths.
pub fn write(s: &Scenario, out_dir: &Path, format: Format) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    let mut out = Vec::new();
    if format != Format::Imn {
        let p = out_dir.join(format!("{}.xml", s.name));
        std::fs::write(&p, &s.xml)?;
        out.push(p);
    }
    if format != Format::Xml {
        let p = out_dir.join(format!("{}.imn", s.name));
        std::fs::write(&p, &s.imn)?;
        out.push(p);
    }
    Ok(out)
}

/// True for hosts that CORE should run as routers (forwarding; OSPF with [`Routing::Ospf`]).
pub fn is_router(u: &Underlay, h: usize) -> bool {
    u.hosts[h].ifaces.len() >= 2
}

/// CORE node ids: the bootstrapper's host is node 1 (started first where CORE keeps order),
/// then the other hosts in start order, then one switch per LAN.
fn node_ids(u: &Underlay) -> (Vec<usize>, Vec<Option<usize>>) {
    let mut order = vec![u.bootstrapper];
    order.extend(u.start_order().into_iter().filter(|&h| h != u.bootstrapper));
    let mut ids = vec![0; u.hosts.len()];
    for (k, &h) in order.iter().enumerate() {
        ids[h] = k + 1;
    }
    let mut next = u.hosts.len() + 1;
    let switch_ids = u
        .subnets
        .iter()
        .map(|s| {
            s.is_lan().then(|| {
                next += 1;
                next - 1
            })
        })
        .collect();
    (ids, switch_ids)
}

/// The start script of host `h` with the default (static) routing; see [`start_script_routed`].
pub fn start_script(
    u: &Underlay,
    h: usize,
    scenario: &str,
    topology_text: &str,
    opts: &CoreOptions,
) -> Result<String, String> {
    start_script_routed(u, h, scenario, topology_text, opts, Routing::default())
}

/// The start script of host `h` (POSIX sh), the same in both formats. CORE 9 renders it as a
/// Mako template (so no `${`, and no line starting with `%` or `##`); the legacy GUI stores it
/// inside a Tcl brace block of a file it reads as one Tcl list (so no braces, backslashes or
/// empty lines, and the embedded topology is base64; the heredoc uses `<<-` in case tabs end
/// up in front of lines).
pub fn start_script_routed(
    u: &Underlay,
    h: usize,
    scenario: &str,
    topology_text: &str,
    opts: &CoreOptions,
    routing: Routing,
) -> Result<String, String> {
    let host = &u.hosts[h];
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "#!/bin/sh");
    let _ = writeln!(
        w,
        "# overlayd on {} ({}), scenario {scenario}, routing {}: generated by `overlayd core-scenario`, do not edit.",
        host.name,
        host.role,
        routing.as_str()
    );
    let _ = writeln!(w, "OVERLAYD={}", shell_quote(&opts.bin));
    let _ = writeln!(w, "KEYDIR={}", shell_quote(&opts.key_dir));
    let _ = writeln!(w, "KEY=$KEYDIR/overlayd.key");
    let _ = writeln!(w, "if [ \"$1\" = stop ]; then");
    let _ = writeln!(
        w,
        "  for f in overlayd.pid bootstrapper.pid; do [ -f $f ] && kill $(cat $f) 2>/dev/null; done"
    );
    // SIGTERM makes a relay or an edge drain (its children and clients move elsewhere
    // first, --drain-ms) and then exit by itself: CORE must not tear the node down before.
    let polls = crate::emulate::stop_wait(&[]).as_millis() / 100;
    let _ = writeln!(
        w,
        "  # Each daemon drains (--drain-ms) and exits by itself; SIGKILL after {:.0} s.",
        polls as f64 / 10.0
    );
    let _ = writeln!(w, "  i=0");
    let _ = writeln!(w, "  while [ $i -lt {polls} ]; do");
    let _ = writeln!(w, "    up=0");
    let _ = writeln!(
        w,
        "    for f in overlayd.pid bootstrapper.pid; do [ -f $f ] && kill -0 $(cat $f) 2>/dev/null && up=1; done"
    );
    let _ = writeln!(w, "    [ $up = 0 ] && exit 0");
    let _ = writeln!(w, "    sleep 0.1; i=$((i + 1))");
    let _ = writeln!(w, "  done");
    let _ = writeln!(
        w,
        "  for f in overlayd.pid bootstrapper.pid; do [ -f $f ] && kill -9 $(cat $f) 2>/dev/null; done"
    );
    let _ = writeln!(w, "  exit 0");
    let _ = writeln!(w, "fi");
    let static_router = routing == Routing::Static && is_router(u, h);
    if static_router {
        // No routing daemon: this node forwards by itself. Reverse-path filtering is off (as
        // CORE's IPForward service does) because a shortest path may differ per direction.
        let _ = writeln!(w, "sysctl -q -w net.ipv4.ip_forward=1");
        let _ = writeln!(w, "sysctl -q -w net.ipv4.conf.all.rp_filter=0");
        for i in &host.ifaces {
            let _ = writeln!(w, "sysctl -q -w net.ipv4.conf.{}.rp_filter=0", i.name);
        }
        if host
            .ifaces
            .iter()
            .flat_map(|i| &i.addrs)
            .any(|a| a.is_ipv6())
        {
            let _ = writeln!(w, "sysctl -q -w net.ipv6.conf.all.forwarding=1");
        }
    }
    if static_router || !is_router(u, h) {
        for r in &host.routes {
            let fam = if r.dest.is_v4() { "" } else { " -6" };
            let _ = writeln!(
                w,
                "ip{fam} route replace {} via {} dev {}",
                r.dest, r.via, r.dev
            );
        }
    }
    if host.role != DeviceRole::Client || h == u.bootstrapper {
        let _ = writeln!(w, "mkdir -p $KEYDIR");
        let _ = writeln!(w, "if [ ! -f $KEY ]; then");
        let _ = writeln!(
            w,
            "  $OVERLAYD keygen --out $KEY.$$ >/dev/null && ln $KEY.$$ $KEY 2>/dev/null"
        );
        let _ = writeln!(w, "  rm -f $KEY.$$");
        let _ = writeln!(w, "fi");
    }
    if h == u.bootstrapper {
        let eof = "OVERLAYD_TOPOLOGY_EOF"; // base64 never contains it
        let _ = writeln!(
            w,
            "# This host runs the bootstrapper; every device uses --bootstrap {}.",
            u.bootstrap_ip
        );
        let _ = writeln!(w, "base64 -d > topology.json <<-'{eof}'");
        let b64 = base64(topology_text.as_bytes());
        for chunk in b64.as_bytes().chunks(76) {
            let _ = writeln!(w, "{}", String::from_utf8_lossy(chunk));
        }
        let _ = writeln!(w, "{eof}");
        let _ = writeln!(
            w,
            "setsid $OVERLAYD --role bootstrapper --topology topology.json </dev/null >>bootstrapper.log 2>&1 &"
        );
        let _ = writeln!(w, "echo $! > bootstrapper.pid");
    }
    let args: Vec<String> = u.role_args(h).iter().map(|a| shell_quote(a)).collect();
    let args = args.join(" ");
    match host.role {
        DeviceRole::Client => {
            let _ = writeln!(
                w,
                "# Clients need a display: open a terminal on this node and run sh client.sh"
            );
            let _ = writeln!(w, "echo '#!/bin/sh' > client.sh");
            let _ = writeln!(w, "echo \"exec $OVERLAYD {args}\" '\"$@\"' >> client.sh");
        }
        role => {
            let mut extra = String::from(" --key-file $KEY");
            if role == DeviceRole::Server {
                let _ = writeln!(w, "VIDEOS={}", shell_quote(&opts.videos));
                let _ = writeln!(
                    w,
                    "[ -d $VIDEOS/{0} ] && VIDEOS=$VIDEOS/{0}",
                    shell_quote(&host.name)
                );
                extra.push_str(" --videos $VIDEOS");
            }
            let _ = writeln!(
                w,
                "setsid $OVERLAYD {args}{extra} </dev/null >>overlayd.log 2>&1 &"
            );
            let _ = writeln!(w, "echo $! > overlayd.pid");
        }
    }
    for (n, line) in s.lines().enumerate() {
        let t = line.trim_start();
        if line.contains("${") || t.starts_with('%') || t.starts_with("##") || line.contains("<%") {
            return Err(format!(
                "{}: line {} of the start script would be read as a CORE 9 template directive: {line}",
                host.name,
                n + 1
            ));
        }
        if line.contains(['{', '}', '\\']) {
            return Err(format!(
                "{}: line {} of the start script has a brace or backslash, which the legacy .imn format cannot hold: {line}",
                host.name,
                n + 1
            ));
        }
        if line.trim().is_empty() {
            return Err(format!(
                "{}: line {} of the start script is empty",
                host.name,
                n + 1
            ));
        }
    }
    Ok(s)
}

/// Node positions on a 1000 x 750 canvas: rows by hop distance from the servers.
struct Layout {
    hosts: Vec<(f64, f64)>,
    switches: Vec<(f64, f64)>,
}

impl Layout {
    fn new(u: &Underlay) -> Layout {
        let n = u.hosts.len();
        let mut dist = vec![usize::MAX; n];
        let mut q = std::collections::VecDeque::new();
        for (h, host) in u.hosts.iter().enumerate() {
            if host.role == DeviceRole::Server {
                dist[h] = 0;
                q.push_back(h);
            }
        }
        if q.is_empty() {
            dist[0] = 0;
            q.push_back(0);
        }
        while let Some(a) = q.pop_front() {
            for i in &u.hosts[a].ifaces {
                for &(b, _) in &u.subnets[i.subnet].members {
                    if dist[b] == usize::MAX {
                        dist[b] = dist[a] + 1;
                        q.push_back(b);
                    }
                }
            }
        }
        let deepest = dist
            .iter()
            .filter(|d| **d != usize::MAX)
            .max()
            .copied()
            .unwrap_or(0);
        for d in &mut dist {
            if *d == usize::MAX {
                *d = deepest + 1;
            }
        }
        let rows = dist.iter().max().copied().unwrap_or(0) + 1;
        let row_h = (650.0 / rows as f64).min(120.0);
        let mut hosts = vec![(0.0, 0.0); n];
        for row in 0..rows {
            let members: Vec<usize> = (0..n).filter(|&h| dist[h] == row).collect();
            let step = 1000.0 / (members.len() as f64 + 1.0);
            for (k, &h) in members.iter().enumerate() {
                hosts[h] = (
                    (step * (k as f64 + 1.0)).round(),
                    (60.0 + row_h * row as f64).round(),
                );
            }
        }
        let switches = u
            .subnets
            .iter()
            .map(|s| {
                let k = s.members.len() as f64;
                let (x, y) = s.members.iter().fold((0.0, 0.0), |(x, y), &(h, _)| {
                    (x + hosts[h].0, y + hosts[h].1)
                });
                ((x / k).round() + 30.0, (y / k).round())
            })
            .collect();
        Layout { hosts, switches }
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn iface_attrs(addrs: &[IpAddr], prefix: u8) -> String {
    let mut s = String::new();
    for a in addrs {
        match a {
            IpAddr::V4(v4) => {
                let _ = write!(s, " ip4=\"{v4}\" ip4_mask=\"{prefix}\"");
            }
            IpAddr::V6(v6) => {
                let _ = write!(s, " ip6=\"{v6}\" ip6_mask=\"{prefix}\"");
            }
        }
    }
    s
}

/// The routing services of host `h` (none with static routing: its script does the work).
fn router_services(u: &Underlay, h: usize, routing: Routing) -> &'static [&'static str] {
    if routing == Routing::Ospf && is_router(u, h) {
        &["zebra", "OSPFv2", "OSPFv3", "IPForward"]
    } else {
        &[]
    }
}

/// The CORE 9 XML scenario.
fn xml(u: &Underlay, name: &str, layout: &Layout, scripts: &[String], routing: Routing) -> String {
    let (ids, switch_ids) = node_ids(u);
    let mut order: Vec<usize> = (0..u.hosts.len()).collect();
    order.sort_by_key(|&h| ids[h]);
    let mut w = String::new();
    let _ = writeln!(w, "<?xml version='1.0' encoding='UTF-8'?>");
    let _ = writeln!(
        w,
        "<!-- Generated by `overlayd core-scenario` from topology/{}.json (routing {}); do not edit. Needs the Overlayd service (core-scenarios/README.md). -->",
        xml_escape(name),
        routing.as_str()
    );
    let _ = writeln!(w, "<scenario name=\"{}\">", xml_escape(name));
    let _ = writeln!(w, "  <networks>");
    for (s, subnet) in u.subnets.iter().enumerate() {
        if let Some(id) = switch_ids[s] {
            let (x, y) = layout.switches[s];
            let _ = writeln!(
                w,
                "    <network id=\"{id}\" name=\"lan{s}\" icon=\"\" canvas=\"1\" type=\"SWITCH\">"
            );
            let _ = writeln!(w, "      <position x=\"{x:.1}\" y=\"{y:.1}\"/>");
            let _ = writeln!(w, "    </network>");
            let _ = subnet;
        }
    }
    let _ = writeln!(w, "  </networks>");
    let _ = writeln!(w, "  <devices>");
    for &h in &order {
        let host = &u.hosts[h];
        let (x, y) = layout.hosts[h];
        let model = if is_router(u, h) { "router" } else { "PC" };
        let _ = writeln!(
            w,
            "    <device id=\"{}\" name=\"{}\" icon=\"\" canvas=\"1\" type=\"{model}\" class=\"\" image=\"\">",
            ids[h],
            xml_escape(&host.name)
        );
        let _ = writeln!(w, "      <position x=\"{x:.1}\" y=\"{y:.1}\"/>");
        let _ = writeln!(w, "      <services>");
        for svc in router_services(u, h, routing)
            .iter()
            .chain([SERVICE_NAME].iter())
        {
            let _ = writeln!(w, "        <service name=\"{svc}\"/>");
        }
        let _ = writeln!(w, "      </services>");
        let _ = writeln!(w, "    </device>");
    }
    let _ = writeln!(w, "  </devices>");
    let _ = writeln!(w, "  <links>");
    for (s, subnet) in u.subnets.iter().enumerate() {
        let iface = |tag: &str, (h, i): (usize, usize)| {
            let f = &u.hosts[h].ifaces[i];
            format!(
                "<{tag} id=\"{i}\" name=\"{}\" mac=\"{}\"{}/>",
                f.name,
                f.mac,
                iface_attrs(&f.addrs, subnet.net.prefix)
            )
        };
        // CORE's <options> element, in CORE's units, only for links that have parameters.
        let options = |w: &mut String, p: &LinkParams| {
            let attrs: String = core_link_options(p)
                .iter()
                .map(|(k, v)| format!(" {}=\"{v}\"", k.xml))
                .collect();
            if !attrs.is_empty() {
                let _ = writeln!(w, "      <options{attrs}/>");
            }
        };
        match switch_ids[s] {
            Some(sw) => {
                for &m in &subnet.members {
                    let _ = writeln!(w, "    <link node1=\"{}\" node2=\"{sw}\">", ids[m.0]);
                    let _ = writeln!(w, "      {}", iface("iface1", m));
                    options(&mut w, &u.hosts[m.0].ifaces[m.1].link);
                    let _ = writeln!(w, "    </link>");
                }
            }
            None if subnet.members.len() == 2 => {
                let (a, b) = (subnet.members[0], subnet.members[1]);
                let _ = writeln!(
                    w,
                    "    <link node1=\"{}\" node2=\"{}\">",
                    ids[a.0], ids[b.0]
                );
                let _ = writeln!(w, "      {}", iface("iface1", a));
                let _ = writeln!(w, "      {}", iface("iface2", b));
                options(&mut w, &u.port_params(a.0, s).then(&u.port_params(b.0, s)));
                let _ = writeln!(w, "    </link>");
            }
            None => {} // a subnet with one member: the interface has no peer
        }
    }
    let _ = writeln!(w, "  </links>");
    let _ = writeln!(w, "  <service_configurations>");
    for &h in &order {
        let _ = writeln!(
            w,
            "    <service name=\"{SERVICE_NAME}\" node=\"{}\">",
            ids[h]
        );
        let _ = writeln!(w, "      <templates>");
        let body = scripts[h].replace("]]>", "]]]]><![CDATA[>");
        let _ = writeln!(
            w,
            "        <template name=\"{SCRIPT_NAME}\"><![CDATA[{body}]]></template>"
        );
        let _ = writeln!(w, "      </templates>");
        let _ = writeln!(w, "    </service>");
    }
    let _ = writeln!(w, "  </service_configurations>");
    let _ = writeln!(w, "</scenario>");
    w
}

/// The legacy `.imn` scenario (CORE 7/8 Tcl GUI).
fn imn(
    u: &Underlay,
    name: &str,
    layout: &Layout,
    scripts: &[String],
    routing: Routing,
) -> Result<String, String> {
    let (ids, switch_ids) = node_ids(u);
    let mut order: Vec<usize> = (0..u.hosts.len()).collect();
    order.sort_by_key(|&h| ids[h]);
    // Peers of every interface: (host, iface) -> node id of the other end.
    let peer_of = |h: usize, i: usize| -> Option<String> {
        let s = u.hosts[h].ifaces[i].subnet;
        if let Some(sw) = switch_ids[s] {
            return Some(format!("n{sw}"));
        }
        u.subnets[s]
            .members
            .iter()
            .find(|(m, _)| *m != h)
            .map(|(m, _)| format!("n{}", ids[*m]))
    };
    // The GUI reads the whole file as one Tcl list, where `#` starts no comment: provenance
    // goes into a `comments` block, as in CORE's own sample files.
    let mut w = String::new();
    let _ = writeln!(w, "comments {{");
    let _ = writeln!(
        w,
        "Generated by `overlayd core-scenario` from topology/{name}.json (routing {}); do not edit.",
        routing.as_str()
    );
    let _ = writeln!(w, "See core-scenarios/README.md.");
    let _ = writeln!(w, "}}");
    let _ = writeln!(w);
    for &h in &order {
        let host = &u.hosts[h];
        let (x, y) = layout.hosts[h];
        let model = if is_router(u, h) { "router" } else { "PC" };
        let _ = writeln!(w, "node n{} {{", ids[h]);
        let _ = writeln!(w, "    type router");
        let _ = writeln!(w, "    model {model}");
        let _ = writeln!(w, "    network-config {{");
        let _ = writeln!(w, "\thostname {}", host.name);
        let _ = writeln!(w, "\t!");
        for f in &host.ifaces {
            let prefix = u.subnets[f.subnet].net.prefix;
            let _ = writeln!(w, "\tinterface {}", f.name);
            for a in &f.addrs {
                let kw = if a.is_ipv4() { "ip" } else { "ipv6" };
                let _ = writeln!(w, "\t {kw} address {a}/{prefix}");
            }
            let _ = writeln!(w, "\t!");
        }
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    canvas c1");
        let _ = writeln!(w, "    iconcoords {{{x:.1} {y:.1}}}");
        let _ = writeln!(w, "    labelcoords {{{x:.1} {:.1}}}", y + 28.0);
        for (i, f) in host.ifaces.iter().enumerate() {
            if let Some(p) = peer_of(h, i) {
                let _ = writeln!(w, "    interface-peer {{{} {p}}}", f.name);
            }
        }
        let mut services: Vec<&str> = router_services(u, h, routing).to_vec();
        services.push("UserDefined");
        let _ = writeln!(w, "    services {{{}}}", services.join(" "));
        let _ = writeln!(w, "    custom-config {{");
        let _ = writeln!(w, "\tcustom-config-id service:UserDefined:{SCRIPT_NAME}");
        let _ = writeln!(w, "\tcustom-command {SCRIPT_NAME}");
        let _ = writeln!(w, "\tconfig {{");
        for line in scripts[h].lines() {
            let _ = writeln!(w, "\t{line}");
        }
        let _ = writeln!(w, "\t}}");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    custom-config {{");
        let _ = writeln!(w, "\tcustom-config-id service:UserDefined");
        let _ = writeln!(w, "\tcustom-command UserDefined");
        let _ = writeln!(w, "\tconfig {{");
        let _ = writeln!(w, "\tfiles=('{SCRIPT_NAME}', )");
        let _ = writeln!(w, "\tstartidx=90");
        let _ = writeln!(w, "\tcmdup=('sh {SCRIPT_NAME}', )");
        let _ = writeln!(w, "\tcmddown=('sh {SCRIPT_NAME} stop', )");
        let _ = writeln!(w, "\t}}");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "}}");
        let _ = writeln!(w);
    }
    for (s, subnet) in u.subnets.iter().enumerate() {
        let Some(sw) = switch_ids[s] else { continue };
        let (x, y) = layout.switches[s];
        let _ = writeln!(w, "node n{sw} {{");
        let _ = writeln!(w, "    type lanswitch");
        let _ = writeln!(w, "    network-config {{");
        let _ = writeln!(w, "\thostname lan{s}");
        let _ = writeln!(w, "\t!");
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w, "    canvas c1");
        let _ = writeln!(w, "    iconcoords {{{x:.1} {y:.1}}}");
        let _ = writeln!(w, "    labelcoords {{{x:.1} {:.1}}}", y + 28.0);
        for (k, &(h, _)) in subnet.members.iter().enumerate() {
            let _ = writeln!(w, "    interface-peer {{e{k} n{}}}", ids[h]);
        }
        let _ = writeln!(w, "}}");
        let _ = writeln!(w);
    }
    let mut l = 0;
    for (s, subnet) in u.subnets.iter().enumerate() {
        let pairs: Vec<(usize, usize, LinkParams)> = match switch_ids[s] {
            Some(sw) => subnet
                .members
                .iter()
                .map(|&(h, i)| (ids[h], sw, u.hosts[h].ifaces[i].link))
                .collect(),
            None if subnet.members.len() == 2 => {
                let (a, b) = (subnet.members[0].0, subnet.members[1].0);
                let p = u.port_params(a, s).then(&u.port_params(b, s));
                vec![(ids[a], ids[b], p)]
            }
            None => vec![],
        };
        for (a, b, p) in pairs {
            l += 1;
            let _ = writeln!(w, "link l{l} {{");
            let _ = writeln!(w, "    nodes {{n{a} n{b}}}");
            let fields = core_link_options(&p);
            if !fields.iter().any(|(k, _)| k.imn == "bandwidth") {
                let _ = writeln!(w, "    bandwidth 0");
            }
            for (k, v) in fields.iter().filter(|(k, _)| !k.imn.is_empty()) {
                let _ = writeln!(w, "    {} {v}", k.imn);
            }
            let _ = writeln!(w, "}}");
            let _ = writeln!(w);
        }
    }
    let _ = writeln!(w, "canvas c1 {{");
    let _ = writeln!(w, "    name {{Canvas1}}");
    let _ = writeln!(w, "}}");
    let _ = writeln!(w);
    let _ = writeln!(w, "option global {{");
    for (k, v) in [
        ("interface_names", "no"),
        ("ip_addresses", "yes"),
        ("ipv6_addresses", "no"),
        ("node_labels", "yes"),
        ("link_labels", "yes"),
        ("show_api", "no"),
        ("background_images", "no"),
        ("annotations", "yes"),
        ("grid", "yes"),
        ("traffic_start", "0"),
    ] {
        let _ = writeln!(w, "    {k} {v}");
    }
    let _ = writeln!(w, "}}");
    let _ = writeln!(w);
    let _ = writeln!(w, "option session {{");
    let _ = writeln!(w, "}}");
    Ok(w)
}

/// One CORE link option: its attribute in the XML `<options>` element and its field in a
/// legacy `.imn` link block (empty: the legacy format has none).
pub struct CoreLinkOption {
    pub xml: &'static str,
    pub imn: &'static str,
}

/// A link's parameters as CORE's link options, in CORE's units (delay and jitter in µs, loss in
/// percent, duplication in whole percents as CORE stores it, bandwidth in bits/s), only those
/// that are set.
///
/// Jitter: ours adds `0..jitter` to the delay, CORE's netem draws `delay ± jitter`; CORE is
/// given `delay + jitter/2 ± jitter/2`, the same range and mean. The queue (`buffer`, XML
/// only: the legacy format has no field for it) is the netns shaper's 1000 frames; without it
/// CORE sizes netem's queue from rate × delay, 2 packets on a 10 Mbit, 1 ms link, and drops a
/// burst the emulator would carry.
pub fn core_link_options(p: &LinkParams) -> Vec<(CoreLinkOption, String)> {
    let opt = |xml, imn| CoreLinkOption { xml, imn };
    let mut out = Vec::new();
    if let Some(rate) = p.rate {
        out.push((opt("bandwidth", "bandwidth"), rate.to_string()));
    }
    let half_jitter = p.jitter.as_micros() / 2;
    let delay = p.delay.as_micros() + half_jitter;
    if delay > 0 {
        out.push((opt("delay", "delay"), delay.to_string()));
    }
    if half_jitter > 0 {
        out.push((opt("jitter", "jitter"), half_jitter.to_string()));
    }
    if p.loss > 0.0 {
        let pct = format!("{:.6}", p.loss * 100.0);
        let pct = pct.trim_end_matches('0').trim_end_matches('.');
        out.push((opt("loss", "ber"), pct.to_string()));
    }
    if p.duplicate > 0.0 {
        // CORE reads `dup` as an integer; the smallest duplication it can express is 1 %.
        let pct = (p.duplicate * 100.0).round().max(1.0) as u64;
        out.push((opt("dup", "duplicate"), pct.to_string()));
    }
    if !out.is_empty() {
        out.push((opt("buffer", ""), super::shaper::QUEUE_LIMIT.to_string()));
    }
    out
}

/// The topology files that get scenarios: every `*.json` in `dir` whose devices use no
/// loopback address, in name order.
pub fn scenario_topologies(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| crate::topology::parse(&t, "").ok())
                .is_some_and(|t| {
                    t.devices().all(|d| {
                        !d.addresses.is_empty() && d.addresses.iter().all(|a| !a.is_loopback())
                    })
                })
        })
        .collect();
    v.sort();
    Ok(v)
}
