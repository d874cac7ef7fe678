//! Emulation: turning a topology file into an emulated network.
//!
//! This module owns the *underlay* derived from a topology file: which hosts exist, which
//! interfaces and addresses they have, which subnets (links or LANs) join them, the static
//! routes that make every address reachable from every host (so grandfather connections to
//! non-neighbours work), and which host runs the bootstrapper. Two back ends consume it:
//! [`core`] writes CORE scenario files (CORE 9 XML and legacy .imn) and [`netns`] builds the same
//! network out of Linux network namespaces and runs the daemons in it; there, links with
//! parameters go through the user-space shaper ([`shaper`] the model, [`tap`] the process).
//!
//! Derivation rules (documented for users in `topology/README.md`):
//! - every device is one host; every device must list its own `"addresses"`;
//! - each address belongs to the subnet given by a fixed prefix length (/24 for IPv4, /64 for
//!   IPv6); addresses of one device in one subnet share one interface;
//! - a subnet with two members is a point-to-point link, with more a LAN (a switch in CORE, a
//!   bridge in the emulator); subnets are numbered in address order, interfaces `eth0..` in
//!   subnet order;
//! - routes: for each host and each subnet it is not on, a route via the first hop of a
//!   shortest path over subnets of the destination's address family (fewest subnets crossed;
//!   ties broken by host order), so the plan is deterministic; both back ends install these
//!   same routes (the netns emulator itself, the CORE scenarios in each node's start script);
//! - link parameters (a device's `"links"`, see [`crate::topology::LinkParams`]) sit on
//!   ports: a point-to-point link's on its first member's interface, a LAN member's on its own
//!   interface (its link to the switch, as in CORE); a packet crossing a subnet meets the
//!   sender's port then the receiver's ([`Underlay::path_params`]);
//! - the bootstrapper runs on the host of the device marked `"bootstrapper": true` (at most
//!   one), or else on the first server in name order (else the first device); every device is
//!   given that host's first address as `--bootstrap`.
//!
//! The derivation in this file is pure: no commands run, no files are read. The back ends are
//! not: [`core`] reads topology files and writes scenario files, and [`netns`] runs `ip`, `nft`,
//! `kill` and the daemons themselves (keeping its plan, the list of commands, pure and
//! unit-tested).

pub mod core;
pub mod netns;
pub mod shaper;
pub mod tap;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::topology::{self, DeviceRole, LinkParams, Topology};
pub use crate::topology::{Net, V4_PREFIX, V6_PREFIX};

/// How long a stop waits for a daemon run with `argv` to exit after SIGTERM before SIGKILL:
/// its drain bound (`--drain-ms`, else the default), in which a relay or an edge lets its
/// children and clients move elsewhere, plus 3 s to log its final counters and exit.
pub fn stop_wait(argv: &[String]) -> std::time::Duration {
    let mut drain_ms = crate::net::node_driver::DEFAULT_DRAIN_MS;
    let mut args = argv.iter();
    while let Some(a) = args.next() {
        let value = match a.strip_prefix("--drain-ms") {
            Some("") => args.next().map(String::as_str),
            Some(v) => v.strip_prefix('='),
            None => None,
        };
        if let Some(ms) = value.and_then(|v| v.parse().ok()) {
            drain_ms = ms;
        }
    }
    std::time::Duration::from_millis(drain_ms + 3000)
}

/// One interface of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    /// `eth0`, `eth1`, ... in subnet order.
    pub name: String,
    /// Index into [`Underlay::subnets`].
    pub subnet: usize,
    /// The device's addresses on this subnet (usually one).
    pub addrs: Vec<IpAddr>,
    /// A locally administered MAC address, unique in the plan.
    pub mac: String,
    /// How this port's link behaves, both directions: a point-to-point link's parameters sit
    /// on its first member's port, a LAN member's on its own port (its link to the switch).
    #[serde(default)]
    pub link: LinkParams,
}

/// A static route of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dest: Net,
    pub via: IpAddr,
    /// The interface the next hop is on.
    pub dev: String,
}

/// One emulated host: one topology device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    #[serde(with = "role_serde")]
    pub role: DeviceRole,
    pub ifaces: Vec<Iface>,
    pub routes: Vec<Route>,
}

impl Host {
    /// The first address of the first interface.
    pub fn first_addr(&self) -> IpAddr {
        self.ifaces[0].addrs[0]
    }

    /// Index of the interface on `subnet`.
    pub fn iface_on(&self, subnet: usize) -> Option<usize> {
        self.ifaces.iter().position(|i| i.subnet == subnet)
    }

    /// The command-line role name for `overlayd --role`.
    pub fn role_arg(&self) -> &'static str {
        self.role.as_str()
    }
}

/// A subnet with its members (host index, interface index), in host order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub net: Net,
    pub members: Vec<(usize, usize)>,
}

impl Subnet {
    /// A subnet of two hosts is a point-to-point link; more make a LAN.
    pub fn is_lan(&self) -> bool {
        self.members.len() > 2
    }

    /// The port (host, interface) that carries the parameters of member `h`'s link on this
    /// subnet: a point-to-point link's sit on its first member's port, a LAN member's on its
    /// own (its link to the switch). None when `h` is not a member.
    pub fn parameter_port(&self, h: usize) -> Option<(usize, usize)> {
        let own = self.members.iter().find(|(m, _)| *m == h).copied()?;
        Some(if self.is_lan() { own } else { self.members[0] })
    }
}

/// The whole emulated network of one topology file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlay {
    /// In topology (name) order.
    pub hosts: Vec<Host>,
    /// In address order.
    pub subnets: Vec<Subnet>,
    /// Index of the host that runs the bootstrapper.
    pub bootstrapper: usize,
    /// The address every device is given as `--bootstrap`.
    pub bootstrap_ip: IpAddr,
    /// Things worth telling the user (unreachable subnets, neighbours off-link).
    pub notes: Vec<String>,
}

/// Field marking the device whose host runs the bootstrapper.
pub const BOOTSTRAPPER_FIELD: &str = "bootstrapper";

impl Underlay {
    /// Derive the underlay of a topology. Refuses topologies with check errors, devices without
    /// addresses, and loopback addresses (those run on one machine, without emulation).
    pub fn from_topology(t: &Topology) -> Result<Underlay, String> {
        let errors: Vec<String> = topology::check(t)
            .into_iter()
            .filter(|f| f.severity == topology::Severity::Error)
            .map(|f| f.to_string())
            .collect();
        if let Some(first) = errors.first() {
            return Err(format!(
                "the topology has {} error(s) (run `overlayd check-topology`); first: {first}",
                errors.len()
            ));
        }
        if t.is_empty() {
            return Err("the topology has no devices".into());
        }
        for d in t.devices() {
            if d.addresses.is_empty() {
                return Err(format!(
                    "device {} has no \"addresses\"; emulation needs every device's own addresses",
                    d.name
                ));
            }
            if let Some(ip) = d.addresses.iter().find(|ip| ip.is_loopback()) {
                return Err(format!(
                    "device {} uses loopback address {ip}: loopback topologies run on one machine without emulation",
                    d.name
                ));
            }
        }

        // Subnets in address order.
        let mut nets: BTreeMap<Net, Vec<(usize, IpAddr)>> = BTreeMap::new();
        let devices: Vec<_> = t.devices().collect();
        for (h, d) in devices.iter().enumerate() {
            for &ip in &d.addresses {
                nets.entry(Net::of(ip)).or_default().push((h, ip));
            }
        }
        let net_index: BTreeMap<Net, usize> =
            nets.keys().enumerate().map(|(i, n)| (*n, i)).collect();

        let mut hosts: Vec<Host> = devices
            .iter()
            .map(|d| Host {
                name: d.name.clone(),
                role: d.role,
                ifaces: Vec::new(),
                routes: Vec::new(),
            })
            .collect();
        let mut subnets: Vec<Subnet> = nets
            .keys()
            .map(|n| Subnet {
                net: *n,
                members: Vec::new(),
            })
            .collect();
        for (net, owners) in &nets {
            let s = net_index[net];
            for &(h, ip) in owners {
                let host = &mut hosts[h];
                match host.ifaces.iter_mut().find(|i| i.subnet == s) {
                    Some(i) => i.addrs.push(ip),
                    None => {
                        let k = host.ifaces.len();
                        host.ifaces.push(Iface {
                            name: format!("eth{k}"),
                            subnet: s,
                            addrs: vec![ip],
                            mac: format!("02:0e:{:02x}:{:02x}:00:{:02x}", h >> 8, h & 0xff, k),
                            link: LinkParams::default(),
                        });
                        subnets[s].members.push((h, k));
                    }
                }
            }
        }
        for s in &mut subnets {
            s.members.sort();
        }
        for (at, params) in topology::resolve_links(t).0 {
            let subnet = &subnets[net_index[&at.net]];
            let member = match &at.device {
                None => subnet.members[0].0,
                Some(name) => devices
                    .iter()
                    .position(|d| d.name == *name)
                    .expect("a device"),
            };
            let (h, i) = subnet
                .parameter_port(member)
                .expect("resolve_links only names members of the subnet");
            hosts[h].ifaces[i].link = params;
        }

        let mut notes = Vec::new();
        compute_routes(&mut hosts, &subnets, &mut notes);

        // Neighbours that are not on a shared subnet are reached through routes; say so.
        for (h, d) in devices.iter().enumerate() {
            if !d.role.is_overlay() {
                continue; // clients reach their edges through routing by design
            }
            for n in &d.neighbours {
                let on_link = hosts[h]
                    .ifaces
                    .iter()
                    .any(|i| subnets[i.subnet].net == Net::of(n.ip));
                if !on_link {
                    notes.push(format!(
                        "{}: neighbour {} is not on a directly attached subnet; it is reached through routing",
                        d.name, n.ip
                    ));
                }
            }
        }

        let marked: Vec<usize> = devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.raw.get(BOOTSTRAPPER_FIELD) == Some(&serde_json::Value::Bool(true)))
            .map(|(i, _)| i)
            .collect();
        let bootstrapper = match marked.as_slice() {
            [] => devices
                .iter()
                .position(|d| d.role == DeviceRole::Server)
                .unwrap_or(0),
            [one] => *one,
            many => {
                return Err(format!(
                    "{} devices are marked \"bootstrapper\": true ({}); mark at most one",
                    many.len(),
                    many.iter()
                        .map(|&i| devices[i].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let bootstrap_ip = hosts[bootstrapper].first_addr();
        Ok(Underlay {
            hosts,
            subnets,
            bootstrapper,
            bootstrap_ip,
            notes,
        })
    }

    pub fn host(&self, name: &str) -> Option<(usize, &Host)> {
        self.hosts.iter().enumerate().find(|(_, h)| h.name == name)
    }

    /// Subnets shared by hosts `a` and `b`.
    pub fn shared_subnets(&self, a: usize, b: usize) -> Vec<usize> {
        self.hosts[a]
            .ifaces
            .iter()
            .map(|i| i.subnet)
            .filter(|s| self.hosts[b].iface_on(*s).is_some())
            .collect()
    }

    /// The `overlayd` arguments (after the binary) that start host `h`'s role, without
    /// `--key-file`/`--videos` (those depend on where it runs).
    pub fn role_args(&self, h: usize) -> Vec<String> {
        let host = &self.hosts[h];
        vec![
            "--role".into(),
            host.role_arg().into(),
            "--name".into(),
            host.name.clone(),
            "--bootstrap".into(),
            self.bootstrap_ip.to_string(),
        ]
    }

    /// The hops a packet from host `from` to `dst` takes under the plan's routes: (host reached,
    /// subnet crossed), in order; empty when `dst` is `from`'s own.
    pub fn route(&self, from: usize, dst: IpAddr) -> Result<Vec<(usize, usize)>, String> {
        let net = Net::of(dst);
        let mut steps = Vec::new();
        let mut cur = from;
        loop {
            let host = &self.hosts[cur];
            if let Some(iface) = host
                .ifaces
                .iter()
                .find(|i| self.subnets[i.subnet].net == net)
            {
                let s = iface.subnet;
                let owner = self.subnets[s]
                    .members
                    .iter()
                    .find(|&&(m, k)| self.hosts[m].ifaces[k].addrs.contains(&dst))
                    .ok_or(format!("{}: nobody has {dst} on its subnet", host.name))?;
                if owner.0 != cur {
                    steps.push((owner.0, s));
                }
                return Ok(steps);
            }
            let r = host
                .routes
                .iter()
                .find(|r| r.dest == net)
                .or_else(|| {
                    host.routes
                        .iter()
                        .find(|r| r.dest.prefix == 0 && r.dest.is_v4() == dst.is_ipv4())
                })
                .ok_or(format!("{} has no route to {dst}", host.name))?;
            let out = host
                .ifaces
                .iter()
                .find(|i| i.name == r.dev)
                .ok_or(format!("{}: route via missing {}", host.name, r.dev))?;
            let next = self.subnets[out.subnet]
                .members
                .iter()
                .find(|&&(m, k)| self.hosts[m].ifaces[k].addrs.contains(&r.via))
                .ok_or(format!(
                    "{}: next hop {} is not on {}",
                    host.name, r.via, r.dev
                ))?
                .0;
            if next == from || steps.iter().any(|&(h, _)| h == next) {
                return Err(format!(
                    "routing loop towards {dst} at {}",
                    self.hosts[next].name
                ));
            }
            steps.push((next, out.subnet));
            cur = next;
        }
    }

    /// The link parameters of host `h`'s port on subnet `s` (ideal when it has none there).
    pub fn port_params(&self, h: usize, s: usize) -> LinkParams {
        self.hosts[h]
            .iface_on(s)
            .map(|i| self.hosts[h].ifaces[i].link)
            .unwrap_or_default()
    }

    /// What a packet from host `from` to `dst` meets along its route: every subnet crossed
    /// costs the sender's port then the receiver's (a point-to-point link keeps its parameters
    /// on one of them, a LAN has one per member).
    pub fn path_params(&self, from: usize, dst: IpAddr) -> Result<LinkParams, String> {
        let mut at = from;
        let mut p = LinkParams::default();
        for (next, s) in self.route(from, dst)? {
            p = p
                .then(&self.port_params(at, s))
                .then(&self.port_params(next, s));
            at = next;
        }
        Ok(p)
    }

    /// Host indices in start order: servers, then nodes and edges, then clients (each in name
    /// order). The bootstrapper is started before all of them by the back ends.
    pub fn start_order(&self) -> Vec<usize> {
        let rank = |r: DeviceRole| match r {
            DeviceRole::Server => 0,
            DeviceRole::Node | DeviceRole::Edge => 1,
            DeviceRole::Client => 2,
        };
        let mut v: Vec<usize> = (0..self.hosts.len()).collect();
        v.sort_by_key(|&h| (rank(self.hosts[h].role), h));
        v
    }
}

/// Shortest-path static routes for every host to every subnet it is not attached to. Each
/// address family is routed over its own subnets (an IPv6 packet can only be forwarded to a
/// next hop with an IPv6 address on the shared subnet).
fn compute_routes(hosts: &mut [Host], subnets: &[Subnet], notes: &mut Vec<String>) {
    let n = hosts.len();
    for h in 0..n {
        let mut routes = Vec::new();
        for v4 in [true, false] {
            // Host adjacency through this family's subnets: (neighbour host, subnet), in
            // subnet then host order.
            let adj = |x: usize| {
                hosts[x]
                    .ifaces
                    .iter()
                    .filter(|i| subnets[i.subnet].net.is_v4() == v4)
                    .flat_map(move |i| {
                        subnets[i.subnet]
                            .members
                            .iter()
                            .filter(move |&&(m, _)| m != x)
                            .map(move |&(m, _)| (m, i.subnet))
                    })
            };
            // BFS: first hop (neighbour host, subnet) towards each host.
            let mut first: Vec<Option<(usize, usize)>> = vec![None; n];
            let mut dist = vec![usize::MAX; n];
            dist[h] = 0;
            let mut q = VecDeque::from([h]);
            while let Some(u) = q.pop_front() {
                for (v, s) in adj(u) {
                    if dist[v] == usize::MAX {
                        dist[v] = dist[u] + 1;
                        first[v] = if u == h { Some((v, s)) } else { first[u] };
                        q.push_back(v);
                    }
                }
            }
            for (s, subnet) in subnets.iter().enumerate() {
                if subnet.net.is_v4() != v4 || hosts[h].iface_on(s).is_some() {
                    continue;
                }
                let best = subnet
                    .members
                    .iter()
                    .map(|&(m, _)| m)
                    .filter(|&m| dist[m] != usize::MAX)
                    .min_by_key(|&m| (dist[m], m));
                let Some(m) = best else {
                    notes.push(format!(
                        "{}: subnet {} is unreachable (the underlay is not connected)",
                        hosts[h].name, subnet.net
                    ));
                    continue;
                };
                let (hop, via_subnet) = first[m].expect("reachable host has a first hop");
                let hop_iface = hosts[hop].iface_on(via_subnet).expect("member");
                // The next hop's address on the shared subnet (of this family by construction).
                let Some(via) = hosts[hop].ifaces[hop_iface]
                    .addrs
                    .iter()
                    .copied()
                    .find(|a| a.is_ipv4() == v4)
                else {
                    notes.push(format!(
                        "{}: no next hop of the right address family towards {}",
                        hosts[h].name, subnet.net
                    ));
                    continue;
                };
                let dev = hosts[h].ifaces[hosts[h].iface_on(via_subnet).expect("attached")]
                    .name
                    .clone();
                routes.push(Route {
                    dest: subnet.net,
                    via,
                    dev,
                });
            }
        }
        hosts[h].routes = collapse_to_default(routes);
    }
}

/// A host whose routes of one address family all leave through one next hop gets a single
/// default route for that family instead (the usual shape for leaf hosts).
fn collapse_to_default(routes: Vec<Route>) -> Vec<Route> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        let fam: Vec<&Route> = routes.iter().filter(|r| r.dest.is_v4() == v4).collect();
        let Some(first) = fam.first() else { continue };
        if fam.len() > 1 && fam.iter().all(|r| r.via == first.via) {
            let addr = if v4 {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            out.push(Route {
                dest: Net { addr, prefix: 0 },
                via: first.via,
                dev: first.dev.clone(),
            });
        } else {
            out.extend(fam.into_iter().cloned());
        }
    }
    out
}

/// `DeviceRole` as its lower-case name in state files.
mod role_serde {
    use super::DeviceRole;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &DeviceRole, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceRole, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Quote a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(text: &str) -> Topology {
        topology::parse(text, "t.json").unwrap()
    }

    const CHAIN: &str = r#"{
        "S1": {"addresses": ["10.0.1.10"], "neighbours": ["10.0.1.1"]},
        "O1": {"addresses": ["10.0.1.1", "10.0.2.1"], "neighbours": ["10.0.1.10", "10.0.2.2"]},
        "O2": {"addresses": ["10.0.2.2", "10.0.3.1"], "neighbours": ["10.0.2.1"], "edge": true},
        "C1": {"addresses": ["10.0.3.20"], "neighbours": ["10.0.3.1"]}
    }"#;

    #[test]
    fn stop_waits_for_the_drain_bound_plus_three_seconds() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(stop_wait(&[]), std::time::Duration::from_millis(5000));
        assert_eq!(
            stop_wait(&args(&["--role", "node", "--drain-ms", "8000"])),
            std::time::Duration::from_millis(11_000)
        );
        assert_eq!(
            stop_wait(&args(&["--drain-ms=0", "--name", "E1"])),
            std::time::Duration::from_millis(3000)
        );
        // A value that is no number leaves the default (the daemon refuses it anyway).
        assert_eq!(
            stop_wait(&args(&["--drain-ms", "soon"])),
            std::time::Duration::from_millis(5000)
        );
    }

    #[test]
    fn subnets_interfaces_and_routes() {
        let u = Underlay::from_topology(&topo(CHAIN)).unwrap();
        assert_eq!(u.subnets.len(), 3);
        let (c1, c) = u.host("C1").unwrap();
        assert_eq!(c.ifaces.len(), 1);
        assert_eq!(c.ifaces[0].name, "eth0");
        // C1 reaches 10.0.1.0/24 and 10.0.2.0/24 via O2 (10.0.3.1): a default route.
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].dest.to_string(), "default");
        assert_eq!(c.routes[0].via.to_string(), "10.0.3.1");
        let (s1, s) = u.host("S1").unwrap();
        assert!(s.routes.iter().all(|r| r.via.to_string() == "10.0.1.1"));
        assert_eq!(u.bootstrapper, s1);
        assert_eq!(u.bootstrap_ip.to_string(), "10.0.1.10");
        let (o1, _) = u.host("O1").unwrap();
        // O1 to 10.0.3.0/24 via O2's 10.0.2.2.
        let r = &u.hosts[o1].routes[0];
        assert_eq!(r.dest.to_string(), "10.0.3.0/24");
        assert_eq!(r.via.to_string(), "10.0.2.2");
        assert_eq!(u.shared_subnets(c1, o1), Vec::<usize>::new());
        assert_eq!(u.role_args(c1)[1], "client");
        assert!(u.notes.is_empty(), "{:?}", u.notes);
    }

    #[test]
    fn refuses_missing_addresses_loopback_and_two_bootstrappers() {
        let e = Underlay::from_topology(&topo(
            r#"{"S1": {"neighbours": ["10.0.0.2"]}, "O1": {"addresses": ["10.0.0.2"], "neighbours": []}}"#,
        ))
        .unwrap_err();
        assert!(e.contains("S1 has no \"addresses\""), "{e}");
        let e = Underlay::from_topology(&topo(
            r#"{"S1": {"addresses": ["127.0.1.1"], "neighbours": []}}"#,
        ))
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = Underlay::from_topology(&topo(
            r#"{"S1": {"addresses": ["10.0.0.1"], "neighbours": [], "bootstrapper": true},
                "O1": {"addresses": ["10.0.0.2"], "neighbours": [], "bootstrapper": true}}"#,
        ))
        .unwrap_err();
        assert!(e.contains("mark at most one"), "{e}");
    }

    #[test]
    fn marked_bootstrapper_and_lan() {
        let u = Underlay::from_topology(&topo(
            r#"{"S1": {"addresses": ["10.0.0.1"], "neighbours": ["10.0.0.2"]},
                "O1": {"addresses": ["10.0.0.2"], "neighbours": ["10.0.0.1"], "edge": true, "bootstrapper": true},
                "C1": {"addresses": ["10.0.0.3"], "neighbours": ["10.0.0.2"]}}"#,
        ))
        .unwrap();
        assert_eq!(u.hosts[u.bootstrapper].name, "O1");
        assert_eq!(u.subnets.len(), 1);
        assert!(u.subnets[0].is_lan());
        assert!(u.hosts.iter().all(|h| h.routes.is_empty()));
    }

    /// Follow the routes hop by hop, as the kernel would (attached subnet first, then the
    /// subnet's route, then the default route), from host `from` to address `dst`. Returns the
    /// hosts visited, or why the packet is lost.
    fn walk(u: &Underlay, from: usize, dst: IpAddr) -> Result<Vec<usize>, String> {
        let steps = u.route(from, dst)?;
        Ok(std::iter::once(from)
            .chain(steps.iter().map(|&(h, _)| h))
            .collect())
    }

    /// Fewest hosts crossed from `a` to `b` (breadth-first over shared subnets).
    fn hops(u: &Underlay, a: usize, b: usize) -> usize {
        let mut dist = vec![usize::MAX; u.hosts.len()];
        dist[a] = 0;
        let mut q = VecDeque::from([a]);
        while let Some(x) = q.pop_front() {
            for i in &u.hosts[x].ifaces {
                for &(y, _) in &u.subnets[i.subnet].members {
                    if dist[y] == usize::MAX {
                        dist[y] = dist[x] + 1;
                        q.push_back(y);
                    }
                }
            }
        }
        dist[b]
    }

    #[test]
    fn link_parameters_sit_on_ports_and_compound_along_routes() {
        // S1 –5ms– O1 –20ms, 10 % loss– O2, and C1 on O2's LAN with C2, its own attachment
        // lossy (4 %).
        let u = Underlay::from_topology(&topo(
            r#"{
            "S1": {"addresses": ["10.0.1.10"], "neighbours": ["10.0.1.1"],
                   "links": {"O1": {"delay": "5ms"}}},
            "O1": {"addresses": ["10.0.1.1", "10.0.2.1"], "neighbours": ["10.0.1.10", "10.0.2.2"],
                   "links": {"O2": {"delay": "20ms", "loss": "10%", "rate": "2Mbit"}}},
            "O2": {"addresses": ["10.0.2.2", "10.0.3.1"], "neighbours": ["10.0.2.1"], "edge": true},
            "C1": {"addresses": ["10.0.3.20"], "neighbours": ["10.0.3.1"],
                   "links": {"10.0.3.0/24": {"loss": "4%", "delay": "1ms"}}},
            "C2": {"addresses": ["10.0.3.21"], "neighbours": ["10.0.3.1"]}
        }"#,
        ))
        .unwrap();
        let (c1, _) = u.host("C1").unwrap();
        let (o1, _) = u.host("O1").unwrap();
        let (s1, _) = u.host("S1").unwrap();
        let (o2, _) = u.host("O2").unwrap();
        // Point-to-point: on the first member's port only (C1 sorts first; O1 before O2/S1).
        let s_o1 = u.shared_subnets(s1, o1)[0];
        assert_eq!(u.port_params(o1, s_o1), LinkParams::ms(5));
        assert!(u.port_params(s1, s_o1).is_ideal());
        // The LAN: C1's own port, nobody else's.
        let lan = u.shared_subnets(c1, o2)[0];
        assert!((u.port_params(c1, lan).loss - 0.04).abs() < 1e-12);
        assert!(u.port_params(o2, lan).is_ideal());
        // S1 to C1: 5 + 20 + 1 ms; loss 1 - 0.9 * 0.96; the slowest rate.
        let p = u.path_params(s1, "10.0.3.20".parse().unwrap()).unwrap();
        assert_eq!(p.delay, std::time::Duration::from_millis(26));
        assert!((p.loss - (1.0 - 0.9 * 0.96)).abs() < 1e-9, "{p}");
        assert_eq!(p.rate, Some(2_000_000));
        // And back, the same.
        assert_eq!(u.path_params(c1, "10.0.1.10".parse().unwrap()).unwrap(), p);
        // C2 crosses the LAN without C1's port.
        let p = u.path_params(s1, "10.0.3.21".parse().unwrap()).unwrap();
        assert_eq!(p.delay, std::time::Duration::from_millis(25));
        assert!((p.loss - 0.1).abs() < 1e-9);
        assert!(u
            .path_params(s1, "10.0.1.10".parse().unwrap())
            .unwrap()
            .is_ideal());
    }

    #[test]
    fn a_leaf_reaches_a_leaf_only_through_two_routers() {
        // C1 and S1 share a LAN with R1; R1 and R2 share a link; C2 sits behind R2.
        let u = Underlay::from_topology(&topo(
            r#"{
            "S1": {"addresses": ["10.0.1.10"], "neighbours": ["10.0.1.1"]},
            "C1": {"addresses": ["10.0.1.20"], "neighbours": ["10.0.3.1"]},
            "R1": {"addresses": ["10.0.1.1", "10.0.2.1"], "neighbours": ["10.0.1.10", "10.0.2.2"]},
            "R2": {"addresses": ["10.0.2.2", "10.0.3.1"], "neighbours": ["10.0.2.1"], "edge": true},
            "C2": {"addresses": ["10.0.3.20"], "neighbours": ["10.0.3.1"]}
        }"#,
        ))
        .unwrap();
        let id = |n: &str| u.host(n).unwrap().0;
        let routes = |n: &str| -> Vec<String> {
            u.hosts[id(n)]
                .routes
                .iter()
                .map(|r| format!("{} via {} dev {}", r.dest, r.via, r.dev))
                .collect()
        };
        assert_eq!(routes("C1"), ["default via 10.0.1.1 dev eth0"]);
        assert_eq!(routes("C2"), ["default via 10.0.3.1 dev eth0"]);
        assert_eq!(routes("R1"), ["10.0.3.0/24 via 10.0.2.2 dev eth1"]);
        assert_eq!(routes("R2"), ["10.0.1.0/24 via 10.0.2.1 dev eth0"]);
        let c2: IpAddr = "10.0.3.20".parse().unwrap();
        let c1: IpAddr = "10.0.1.20".parse().unwrap();
        assert_eq!(
            walk(&u, id("C1"), c2),
            Ok(vec![id("C1"), id("R1"), id("R2"), id("C2")])
        );
        assert_eq!(
            walk(&u, id("C2"), c1),
            Ok(vec![id("C2"), id("R2"), id("R1"), id("C1")])
        );
        // The far side of a router (its second address) too: C1 to R2's 10.0.3.1.
        assert_eq!(
            walk(&u, id("C1"), "10.0.3.1".parse().unwrap()),
            Ok(vec![id("C1"), id("R1"), id("R2")])
        );
        // The walk notices a missing route.
        let mut broken = u.clone();
        broken.hosts[id("R1")].routes.clear();
        assert!(walk(&broken, id("C1"), c2)
            .unwrap_err()
            .contains("R1 has no route"));
    }

    /// IPv6 is routed over IPv6 subnets only (a first hop over an IPv4 subnet could not carry
    /// it), in a dual-stack chain where the IPv4 subnets come first.
    #[test]
    fn each_address_family_is_routed_over_its_own_subnets() {
        let u = Underlay::from_topology(&topo(
            r#"{
            "S1": {"addresses": ["10.0.1.10", "fd00:1::10"], "neighbours": ["10.0.1.1"]},
            "O1": {"addresses": ["10.0.1.1", "fd00:1::1", "10.0.2.1", "fd00:2::1"], "neighbours": ["10.0.1.10"]},
            "O2": {"addresses": ["10.0.2.2", "fd00:2::2", "10.0.3.1", "fd00:3::1"], "neighbours": ["10.0.2.1"], "edge": true},
            "C1": {"addresses": ["10.0.3.20", "fd00:3::20"], "neighbours": ["10.0.3.1"]}
        }"#,
        ))
        .unwrap();
        assert!(u.notes.is_empty(), "{:?}", u.notes);
        let (c1, c) = u.host("C1").unwrap();
        let v6: Vec<String> = c
            .routes
            .iter()
            .filter(|r| !r.dest.is_v4())
            .map(|r| format!("{} via {} dev {}", r.dest, r.via, r.dev))
            .collect();
        assert_eq!(v6, ["default via fd00:3::1 dev eth1"]);
        let (s1, _) = u.host("S1").unwrap();
        for (from, to) in [(c1, s1), (s1, c1)] {
            for dst in u.hosts[to].ifaces.iter().flat_map(|i| &i.addrs) {
                let path = walk(&u, from, *dst).unwrap();
                assert_eq!(path.len(), 4, "{dst}: {path:?}");
            }
        }
    }

    /// Every host reaches every address of every host along a shortest path to its subnet, in every
    /// topology file that gets emulated (grandfather connections and clients' second edges
    /// need routes to non-neighbours).
    #[test]
    fn every_host_reaches_every_address_by_a_shortest_path() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topology");
        let files = super::core::scenario_topologies(&dir).unwrap();
        assert!(files.len() >= 4, "{files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let u = Underlay::from_topology(&topo(&text)).unwrap();
            assert!(
                u.notes.iter().all(|n| !n.contains("unreachable")),
                "{:?}",
                u.notes
            );
            for a in 0..u.hosts.len() {
                for (b, host) in u.hosts.iter().enumerate() {
                    for dst in host.ifaces.iter().flat_map(|i| &i.addrs) {
                        let path = walk(&u, a, *dst).unwrap_or_else(|e| {
                            panic!("{}: {} to {dst}: {e}", f.display(), u.hosts[a].name)
                        });
                        assert_eq!(*path.last().unwrap(), b, "{}: {dst}", f.display());
                        // Shortest: the packet reaches the address's subnet by a shortest
                        // path (to its nearest member), then crosses it at most once.
                        let s = host
                            .ifaces
                            .iter()
                            .find(|i| i.addrs.contains(dst))
                            .unwrap()
                            .subnet;
                        let near = u.subnets[s]
                            .members
                            .iter()
                            .map(|&(m, _)| hops(&u, a, m))
                            .min()
                            .unwrap();
                        let on_subnet = path
                            .iter()
                            .position(|&x| u.hosts[x].iface_on(s).is_some())
                            .unwrap();
                        assert!(
                            on_subnet == near && path.len() - 1 <= near + 1,
                            "{}: {} to {dst} takes {path:?}, the subnet is {near} hops away",
                            f.display(),
                            u.hosts[a].name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc-1.2"), "abc-1.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
