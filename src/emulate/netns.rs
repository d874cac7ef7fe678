//! The network-namespace emulator: `overlayd netns ...` builds a topology's [`Underlay`] out of
//! Linux network namespaces, runs the daemons in it and injects faults.
//!
//! Design (the user guide is `topology/README.md`):
//! - one namespace per host, named `ovld-<run>-<device>`, plus one *hub* namespace `ovld-<run>`
//!   holding one bridge per subnet. Each host interface is a veth pair: `ethN` in the host,
//!   `h<host>e<N>` in the hub, enslaved to the subnet's bridge. A *shaped* port (its link has
//!   parameters, or `up --shape-all`) is a pair of TAP devices with the same names instead,
//!   and the run's shaper process (`overlayd netns shaper`, [`super::tap`]) carries its frames
//!   with the link's delay, jitter, loss, duplication and rate; `link` changes them at run time. Nothing is created in the root
//!   namespace, so deleting the namespaces removes every link, and names never collide
//!   between runs (the run id is random unless given);
//! - hosts carry the plan's static shortest-path routes, so any host reaches any address through
//!   the hosts in between (grandfather connections to non-neighbours work, and cutting a link
//!   also cuts the routed paths through it, as in a real network). As in CORE, only routers
//!   (hosts with two or more interfaces) forward, with the sysctls of CORE's `IPForward`
//!   service (no ICMP redirects, no reverse-path filter); a one-interface host is a CORE `PC`
//!   and does not forward. Daemons are started without `--bind`, bound to all addresses, as
//!   the CORE start scripts start them, so a multi-homed edge answers clients on any of its
//!   addresses and clients reach their other edges through routers;
//! - a silent link cut takes the link's hub ports down (point-to-point subnets): the frames
//!   vanish in the hub, nobody sends a RST or an ICMP error. Cutting one pair on a LAN needs
//!   nftables (a bridge-family drop rule between the two ports in the hub);
//! - isolating a device silences its daemon without touching its host's routing: an nftables
//!   table in the host's namespace drops every packet the host receives for itself or sends
//!   from itself (loopback excepted), while packets it forwards pass. A client whose other edge
//!   is reached *through* its silenced edge's host still reaches it, as when a daemon hangs on
//!   a CORE router that keeps routing (a link cut there would cut the client off entirely);
//! - daemons run as `ip netns exec NS overlayd --role ...`, each in its own process group (so a
//!   kill or SIGSTOP reaches the daemon's children too), detached from the caller, stdout and
//!   stderr appended to `<run dir>/logs/<device>.log`; the bootstrapper runs on the host the
//!   plan chose and logs to `logs/bootstrapper.log`;
//! - every command reads and updates `<run dir>/state.json`, which records the plan, what was
//!   created and the daemons' pids (with their start times, so a recycled pid is never
//!   signalled). `down` works from any state: it also finds the run's namespaces by name, kills
//!   every process inside them and deletes them.
//!
//! The plan (names and commands) is pure and unit-tested; the side effects are thin wrappers
//! around `ip`, `nft` and `kill` Its command line (`overlayd netns ...`) is
//! `cli::emulate`, which calls [`up`], [`plan`], [`down`] and the [`RunState`] methods.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::topology::{DeviceRole, LinkParams};

use super::Underlay;

/// Every namespace this emulator creates starts with this.
pub const NS_PREFIX: &str = "ovld-";
/// Name of the bootstrapper's entry in the daemon table.
pub const BOOTSTRAPPER: &str = "bootstrapper";
/// Environment variable overriding the directory that holds run directories.
pub const BASE_DIR_ENV: &str = "OVERLAYD_NETNS_DIR";

/// One daemon of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    /// Host index in the underlay.
    pub host: usize,
    /// Arguments after the binary.
    pub argv: Vec<String>,
    pub log: PathBuf,
    pub pid: Option<u32>,
    /// `/proc/PID/stat` start time of `pid`, to recognise a recycled pid.
    pub start_time: Option<u64>,
}

/// A cut link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub a: String,
    pub b: String,
}

/// Everything a run knows about itself (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub topology: PathBuf,
    pub bin: PathBuf,
    pub key_file: PathBuf,
    pub underlay: Underlay,
    /// Namespace of each host, in host order.
    pub host_ns: Vec<String>,
    pub hub_ns: String,
    pub daemons: BTreeMap<String, Daemon>,
    pub cuts: Vec<Cut>,
    /// Isolated devices (`isolate`).
    #[serde(default)]
    pub isolated: Vec<String>,
    /// Shaped ports, (host, interface): TAP pairs run by the shaper process instead of veths.
    #[serde(default)]
    pub shaped: Vec<(usize, usize)>,
    /// The shaper process (`overlayd netns shaper`), when the run has shaped ports. Its `host`
    /// is unused: it runs in the root namespace and enters the run's ones to open its TAPs.
    #[serde(default)]
    pub shaper: Option<Daemon>,
}

// ---------------------------------------------------------------------------------------------
// The plan (pure)

/// Hub namespace of a run.
pub fn hub_ns(run_id: &str) -> String {
    format!("{NS_PREFIX}{run_id}")
}

/// Host namespaces of a run, one per host: `ovld-<run>-<name>` with the name reduced to
/// letters, digits, `-` and `_` (made unique with the host index when that collides).
pub fn host_namespaces(run_id: &str, u: &Underlay) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    u.hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let clean: String = h
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect();
            let mut name = format!("{NS_PREFIX}{run_id}-{clean}");
            if !seen.insert(name.clone()) {
                name = format!("{NS_PREFIX}{run_id}-{clean}_{i}");
                seen.insert(name.clone());
            }
            name
        })
        .collect()
}

/// The hub-side veth of host `h`'s interface `i`.
pub fn hub_port(h: usize, i: usize) -> String {
    format!("h{h}e{i}")
}

/// The bridge of subnet `s` (in the hub).
pub fn bridge(s: usize) -> String {
    format!("br{s}")
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `ip -n NS ARGS...`: an `ip` command run inside namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) -> Vec<String> {
    let mut c = cmd(&["ip", "-n", ns]);
    c.extend(args.iter().map(|s| s.to_string()));
    c
}

/// The ports that get a shaper: those whose link has parameters, or every port with `all`.
pub fn shaped_ports(u: &Underlay, all: bool) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for (h, host) in u.hosts.iter().enumerate() {
        for (i, f) in host.ifaces.iter().enumerate() {
            if all || !f.link.is_ideal() {
                v.push((h, i));
            }
        }
    }
    v
}

/// Every command that builds the network, in order (namespaces, bridges, veths or, for the
/// `shaped` ports, TAP pairs, addresses, forwarding, routes).
pub fn build_commands(
    u: &Underlay,
    hub: &str,
    host_ns: &[String],
    shaped: &[(usize, usize)],
) -> Vec<Vec<String>> {
    let mut c = vec![cmd(&["ip", "netns", "add", hub])];
    for ns in host_ns {
        c.push(cmd(&["ip", "netns", "add", ns]));
    }
    c.push(ip_in(hub, &["link", "set", "lo", "up"]));
    for s in 0..u.subnets.len() {
        let br = bridge(s);
        c.push(ip_in(hub, &["link", "add", &br, "type", "bridge"]));
        c.push(ip_in(hub, &["link", "set", &br, "up"]));
    }
    for (h, host) in u.hosts.iter().enumerate() {
        let ns = &host_ns[h];
        c.push(ip_in(ns, &["link", "set", "lo", "up"]));
        for (i, f) in host.ifaces.iter().enumerate() {
            let port = hub_port(h, i);
            if shaped.contains(&(h, i)) {
                // Two persistent TAPs; the shaper process attaches to both and moves frames.
                c.push(ip_in(hub, &["tuntap", "add", "dev", &port, "mode", "tap"]));
                c.push(ip_in(ns, &["tuntap", "add", "dev", &f.name, "mode", "tap"]));
            } else {
                c.push(ip_in(
                    hub,
                    &[
                        "link", "add", &port, "type", "veth", "peer", "name", &f.name, "netns", ns,
                    ],
                ));
            }
            c.push(ip_in(
                hub,
                &["link", "set", &port, "master", &bridge(f.subnet), "up"],
            ));
            c.push(ip_in(ns, &["link", "set", &f.name, "address", &f.mac]));
            let prefix = u.subnets[f.subnet].net.prefix;
            for a in &f.addrs {
                let cidr = format!("{a}/{prefix}");
                let mut v = ip_in(ns, &["addr", "add", &cidr, "dev", &f.name]);
                if a.is_ipv6() {
                    v.push("nodad".into());
                }
                c.push(v);
            }
            c.push(ip_in(ns, &["link", "set", &f.name, "up"]));
        }
        c.push(cmd(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &forwarding_script(u, h),
        ]));
        for r in &host.routes {
            let fam = if r.dest.is_v4() { "-4" } else { "-6" };
            c.push(cmd(&[
                "ip",
                fam,
                "-n",
                ns,
                "route",
                "add",
                &r.dest.to_string(),
                "via",
                &r.via.to_string(),
                "dev",
                &r.dev,
            ]));
        }
    }
    c
}

/// Whether host `h` forwards IP: the hosts CORE runs as routers (two or more interfaces).
pub fn forwards(u: &Underlay, h: usize) -> bool {
    super::core::is_router(u, h)
}

/// The sysctls of host `h`, as CORE sets them: a router gets those of CORE's `IPForward`
/// service (forwarding on, ICMP redirects off, reverse-path filter off, for every interface);
/// any other host forwards nothing (the kernel's default in a new namespace, made explicit in
/// case the machine makes namespaces inherit its own settings).
pub fn forwarding_script(u: &Underlay, h: usize) -> String {
    let sys = "/proc/sys/net";
    if !forwards(u, h) {
        return format!("echo 0 > {sys}/ipv4/ip_forward; echo 0 > {sys}/ipv6/conf/all/forwarding");
    }
    let mut s = format!("echo 1 > {sys}/ipv4/ip_forward");
    let mut devs = vec!["all".to_string(), "default".to_string()];
    devs.extend(u.hosts[h].ifaces.iter().map(|f| f.name.clone()));
    for d in &devs {
        s.push_str(&format!(
            "; echo 1 > {sys}/ipv4/conf/{d}/forwarding; echo 0 > {sys}/ipv4/conf/{d}/send_redirects; echo 0 > {sys}/ipv4/conf/{d}/rp_filter; echo 1 > {sys}/ipv6/conf/{d}/forwarding"
        ));
    }
    s
}

/// The nft ruleset (for `nft -f -` in a host's namespace) that isolates the host's own
/// traffic: input and output hooks see only packets addressed to or sent by the host itself,
/// so forwarded packets pass.
pub const ISOLATE_RULES: &str = "table inet ovld_isolate\ndelete table inet ovld_isolate\ntable inet ovld_isolate {\n  chain input {\n    type filter hook input priority -300; policy drop;\n    iifname \"lo\" accept\n  }\n  chain output {\n    type filter hook output priority -300; policy drop;\n    oifname \"lo\" accept\n  }\n}\n";

/// The commands that cut (`down`) or restore the link between hosts `a` and `b`: hub ports
/// down/up for point-to-point subnets, nft rules for LANs (the caller re-creates the LAN rule
/// set from the remaining cuts, see [`lan_rules`]). Errors when they share no subnet.
pub fn cut_commands(
    u: &Underlay,
    hub: &str,
    a: usize,
    b: usize,
    cut: bool,
) -> Result<(Vec<Vec<String>>, bool), String> {
    let shared = u.shared_subnets(a, b);
    if shared.is_empty() {
        return Err(format!(
            "{} and {} share no link (no common subnet); cut one of the links on the path instead",
            u.hosts[a].name, u.hosts[b].name
        ));
    }
    let mut c = Vec::new();
    let mut lan = false;
    for s in shared {
        if u.subnets[s].is_lan() {
            lan = true;
            continue;
        }
        for &(h, i) in &u.subnets[s].members {
            c.push(ip_in(
                hub,
                &[
                    "link",
                    "set",
                    &hub_port(h, i),
                    if cut { "down" } else { "up" },
                ],
            ));
        }
    }
    Ok((c, lan))
}

/// The nft ruleset (for `nft -f -` in the hub) dropping frames between the ports of every cut
/// pair on a LAN.
pub fn lan_rules(u: &Underlay, cuts: &[(usize, usize)]) -> String {
    let mut s = String::from(
        "table bridge ovld\ndelete table bridge ovld\ntable bridge ovld {\n  chain cuts {\n    type filter hook forward priority 0; policy accept;\n",
    );
    for &(a, b) in cuts {
        for sub in u.shared_subnets(a, b) {
            if !u.subnets[sub].is_lan() {
                continue;
            }
            let pa = hub_port(a, u.hosts[a].iface_on(sub).expect("member"));
            let pb = hub_port(b, u.hosts[b].iface_on(sub).expect("member"));
            s.push_str(&format!(
                "    iifname \"{pa}\" oifname \"{pb}\" drop\n    iifname \"{pb}\" oifname \"{pa}\" drop\n"
            ));
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Arguments (after the binary) of every daemon of a run: the bootstrapper, then each host's
/// role. `videos` is the servers' folder root; client arguments get `{name}`/`{run_dir}`
/// replaced.
#[allow(clippy::too_many_arguments)]
pub fn daemon_table(
    u: &Underlay,
    topology: &Path,
    run_dir: &Path,
    key_file: &Path,
    videos: &Path,
    daemon_args: &[String],
    relay: Option<&str>,
    client_args: &[String],
) -> BTreeMap<String, Daemon> {
    let logs = run_dir.join("logs");
    let mut t = BTreeMap::new();
    t.insert(
        BOOTSTRAPPER.to_string(),
        Daemon {
            host: u.bootstrapper,
            argv: vec![
                "--role".into(),
                "bootstrapper".into(),
                "--topology".into(),
                topology.display().to_string(),
            ],
            log: logs.join("bootstrapper.log"),
            pid: None,
            start_time: None,
        },
    );
    for (h, host) in u.hosts.iter().enumerate() {
        let mut argv = u.role_args(h);
        match host.role {
            DeviceRole::Client => {
                for a in client_args {
                    argv.push(
                        a.replace("{name}", &host.name)
                            .replace("{run_dir}", &run_dir.display().to_string()),
                    );
                }
            }
            role => {
                argv.push("--key-file".into());
                argv.push(key_file.display().to_string());
                if role == DeviceRole::Server {
                    let own = videos.join(&host.name);
                    let dir = if own.is_dir() {
                        own
                    } else {
                        videos.to_path_buf()
                    };
                    argv.push("--videos".into());
                    argv.push(dir.display().to_string());
                } else if let Some(relay) = relay {
                    argv.push("--relay".into());
                    argv.push(relay.to_string());
                }
                argv.extend(daemon_args.iter().cloned());
            }
        }
        t.insert(
            host.name.clone(),
            Daemon {
                host: h,
                argv,
                log: logs.join(format!("{}.log", host.name)),
                pid: None,
                start_time: None,
            },
        );
    }
    t
}

/// A run id: 1 to 8 lower-case letters and digits.
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 8
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------
// Processes and commands

/// The state of a process as `/proc` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    Stopped,
    Dead,
}

/// `(state char, start time)` from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of the full line is starttime; after the name it is index 22 - 3 = 19.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// A log file opened for appending.
fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Starts `cmd` detached (its own process group, no stdin, stdout and stderr appended to
/// `log`), so it outlives this command; its pid and `/proc` start time.
fn spawn_detached(mut cmd: Command, log: std::fs::File) -> std::io::Result<(u32, Option<u64>)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    Ok((pid, proc_stat(pid).map(|(_, s)| s)))
}

/// Whether a recorded daemon is alive (and still the same process).
pub fn daemon_state(d: &Daemon) -> ProcState {
    let (Some(pid), Some(start)) = (d.pid, d.start_time) else {
        return ProcState::Dead;
    };
    match proc_stat(pid) {
        Some((_, s)) if s != start => ProcState::Dead,
        Some(('Z' | 'X' | 'x', _)) | None => ProcState::Dead,
        Some(('T' | 't', _)) => ProcState::Stopped,
        Some(_) => ProcState::Running,
    }
}

/// The first non-empty line of a command's stderr (errors are one line).
fn first_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no message)")
        .to_string()
}

/// Run a command, failing with its stderr.
fn run(args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), first_line(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_with_stdin(args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", args[0]))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), first_line(&out.stderr));
    }
    Ok(())
}

/// Send a signal to a process group.
fn signal_group(pid: u32, sig: &str) -> anyhow::Result<()> {
    run(&[
        "kill".into(),
        "-s".into(),
        sig.into(),
        "--".into(),
        format!("-{pid}"),
    ])
    .map(|_| ())
}

/// Effective uid from `/proc/self/status`.
fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Fail unless we are root and `ip netns` works.
pub fn require_root() -> anyhow::Result<()> {
    if euid() != Some(0) {
        bail!("netns needs root (it creates network namespaces); run it as root or with sudo");
    }
    run(&cmd(&["ip", "netns", "list"]))
        .map_err(|e| anyhow!("`ip netns` is not usable here ({e}); install iproute2"))?;
    Ok(())
}

/// Why the emulator cannot run here, if it cannot (for tests that skip).
pub fn unavailable_reason() -> Option<String> {
    require_root().err().map(|e| e.to_string())
}

/// Namespaces whose name is `prefix` or starts with `prefix-`.
fn list_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = run(&cmd(&["ip", "netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n == prefix || n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect())
}

fn ns_pids(ns: &str) -> Vec<u32> {
    run(&cmd(&["ip", "netns", "pids", ns]))
        .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Runs

/// Directory holding run directories.
pub fn base_dir() -> PathBuf {
    std::env::var_os(BASE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/overlayd-netns"))
}

impl RunState {
    fn state_path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<RunState> {
        let p = Self::state_path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("no run at {} (cannot read {})", dir.display(), p.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", p.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let p = Self::state_path(&self.run_dir);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(())
    }

    fn host_index(&self, device: &str) -> anyhow::Result<usize> {
        self.underlay.host(device).map(|(i, _)| i).ok_or_else(|| {
            anyhow!(
                "no device '{device}' in this run (devices: {})",
                self.underlay
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    fn daemon(&self, device: &str) -> anyhow::Result<&Daemon> {
        self.daemons.get(device).ok_or_else(|| {
            anyhow!(
                "no device '{device}' in this run (devices: {})",
                self.daemons.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Start one daemon (the bootstrapper or a device) in its namespace.
    pub fn start(&mut self, device: &str) -> anyhow::Result<u32> {
        let d = self.daemon(device)?.clone();
        if daemon_state(&d) != ProcState::Dead {
            bail!("{device} is already running (pid {})", d.pid.unwrap_or(0));
        }
        let ns = &self.host_ns[d.host];
        if let Some(parent) = d.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut log = open_log(&d.log)?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        writeln!(
            log,
            "=== overlayd netns: start {device} in {ns} at {unix:.3}: {} {}",
            self.bin.display(),
            d.argv.join(" ")
        )?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(&self.bin).args(&d.argv);
        let (pid, start_time) =
            spawn_detached(cmd, log).with_context(|| format!("cannot start {device}"))?;
        let entry = self.daemons.get_mut(device).expect("exists");
        entry.pid = Some(pid);
        entry.start_time = start_time;
        self.save()?;
        Ok(pid)
    }

    /// Signal a running daemon's process group.
    pub fn signal(&self, device: &str, sig: &str) -> anyhow::Result<u32> {
        let d = self.daemon(device)?;
        if daemon_state(d) == ProcState::Dead {
            bail!("{device} is not running");
        }
        let pid = d.pid.expect("alive has a pid");
        signal_group(pid, sig)?;
        Ok(pid)
    }

    /// kill -9 a device and wait (up to 2 s) until it is gone.
    pub fn kill(&mut self, device: &str) -> anyhow::Result<u32> {
        let pid = self.signal(device, "KILL")?;
        let d = self.daemon(device)?.clone();
        let deadline = Instant::now() + Duration::from_secs(2);
        while daemon_state(&d) != ProcState::Dead && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pid)
    }

    /// SIGTERM a device and wait until it exits (it drains first: [`super::stop_wait`]);
    /// SIGKILL if it does not. Returns whether it exited on its own.
    pub fn stop(&mut self, device: &str) -> anyhow::Result<bool> {
        let pid = self.signal(device, "TERM")?;
        let d = self.daemon(device)?.clone();
        // A hung device cannot handle SIGTERM.
        let _ = signal_group(pid, "CONT");
        let deadline = Instant::now() + super::stop_wait(&d.argv);
        while daemon_state(&d) != ProcState::Dead {
            if Instant::now() >= deadline {
                self.kill(device)?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(true)
    }

    pub fn cut(&mut self, a: &str, b: &str, cut: bool) -> anyhow::Result<()> {
        let (ia, ib) = (self.host_index(a)?, self.host_index(b)?);
        let is_cut = self
            .cuts
            .iter()
            .any(|c| (c.a == a && c.b == b) || (c.a == b && c.b == a));
        if cut && is_cut {
            bail!("the link {a}–{b} is already cut");
        }
        if !cut && !is_cut {
            bail!("the link {a}–{b} is not cut");
        }
        let (cmds, lan) =
            cut_commands(&self.underlay, &self.hub_ns, ia, ib, cut).map_err(|e| anyhow!(e))?;
        if cut {
            self.cuts.push(Cut {
                a: a.into(),
                b: b.into(),
            });
        } else {
            self.cuts
                .retain(|c| !((c.a == a && c.b == b) || (c.a == b && c.b == a)));
        }
        for c in &cmds {
            run(c)?;
        }
        if lan {
            if run(&cmd(&["sh", "-c", "command -v nft"])).is_err() {
                bail!("cutting {a}–{b} on a shared LAN needs nftables (`nft`): apt-get install nftables");
            }
            let pairs: Vec<(usize, usize)> = self
                .cuts
                .iter()
                .filter_map(|c| Some((self.host_index(&c.a).ok()?, self.host_index(&c.b).ok()?)))
                .collect();
            let rules = lan_rules(&self.underlay, &pairs);
            run_with_stdin(
                &["ip", "netns", "exec", &self.hub_ns, "nft", "-f", "-"],
                &rules,
            )?;
        }
        self.save()
    }

    /// Kill a device if it runs, then start it again with the same arguments; the new pid.
    pub fn restart(&mut self, device: &str) -> anyhow::Result<u32> {
        if daemon_state(self.daemon(device)?) != ProcState::Dead {
            self.kill(device)?;
        }
        self.start(device)
    }

    /// Run `cmd` inside a device's namespace and wait for it; its exit status.
    pub fn exec(&self, device: &str, cmd: &[String]) -> anyhow::Result<i32> {
        let h = self.host_index(device)?;
        let Some(program) = cmd.first() else {
            bail!("no command to run in {device}");
        };
        let status = Command::new("ip")
            .args(["netns", "exec", &self.host_ns[h]])
            .args(cmd)
            .status()
            .with_context(|| format!("cannot run {program}"))?;
        Ok(status.code().unwrap_or(1))
    }

    /// Isolate a device (`on`) or let it rejoin: see [`ISOLATE_RULES`].
    pub fn isolate(&mut self, device: &str, on: bool) -> anyhow::Result<()> {
        let h = self.host_index(device)?;
        let is = self.isolated.iter().any(|d| d == device);
        if on && is {
            bail!("{device} is already isolated");
        }
        if !on && !is {
            bail!("{device} is not isolated");
        }
        if run(&cmd(&["sh", "-c", "command -v nft"])).is_err() {
            bail!("isolating a device needs nftables (`nft`): apt-get install nftables");
        }
        let ns = &self.host_ns[h];
        if on {
            run_with_stdin(
                &["ip", "netns", "exec", ns, "nft", "-f", "-"],
                ISOLATE_RULES,
            )?;
            self.isolated.push(device.to_string());
        } else {
            run(&cmd(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "delete",
                "table",
                "inet",
                "ovld_isolate",
            ]))?;
            self.isolated.retain(|d| d != device);
        }
        self.save()
    }

    /// One line per daemon and per cut.
    pub fn status(&self) -> String {
        let present = list_namespaces(&hub_ns(&self.run_id)).unwrap_or_default();
        let mut s = format!(
            "run {} in {} ({} of {} namespaces present)\n",
            self.run_id,
            self.run_dir.display(),
            present.len(),
            self.host_ns.len() + 1
        );
        for (name, d) in &self.daemons {
            let role = if name == BOOTSTRAPPER {
                format!("bootstrapper on {}", self.underlay.hosts[d.host].name)
            } else {
                self.underlay.hosts[d.host].role.to_string()
            };
            let state = match (daemon_state(d), d.pid) {
                (ProcState::Running, Some(p)) => format!("running  pid {p}"),
                (ProcState::Stopped, Some(p)) => format!("hung     pid {p}"),
                (_, Some(_)) => "dead".to_string(),
                (_, None) => "not started".to_string(),
            };
            s.push_str(&format!(
                "{name:<14} {role:<22} {state:<20} ns {}  log {}\n",
                self.host_ns[d.host],
                d.log.display()
            ));
        }
        for c in &self.cuts {
            s.push_str(&format!("cut: {} – {}\n", c.a, c.b));
        }
        for d in &self.isolated {
            s.push_str(&format!("isolated: {d}\n"));
        }
        if let Some(d) = &self.shaper {
            let state = match (daemon_state(d), d.pid) {
                (ProcState::Running, Some(p)) => format!("running pid {p}"),
                (ProcState::Stopped, Some(p)) => format!("stopped pid {p}"),
                _ => "dead: shaped links carry nothing".to_string(),
            };
            s.push_str(&format!("shaper: {state}, log {}\n", d.log.display()));
        }
        for &(h, i) in &self.shaped {
            s.push_str(&format!("link: {}\n", self.port_description(h, i)));
        }
        s
    }

    /// "O1 eth1 (10.0.2.0/24, to O2): delay 20ms loss 1%".
    fn port_description(&self, h: usize, i: usize) -> String {
        let u = &self.underlay;
        let f = &u.hosts[h].ifaces[i];
        let subnet = &u.subnets[f.subnet];
        let others: Vec<&str> = subnet
            .members
            .iter()
            .filter(|(m, _)| *m != h)
            .map(|(m, _)| u.hosts[*m].name.as_str())
            .collect();
        let to = if subnet.is_lan() {
            "the LAN".to_string()
        } else {
            format!("to {}", others.join(", "))
        };
        format!(
            "{} {} ({}, {to}): {}",
            u.hosts[h].name, f.name, subnet.net, f.link
        )
    }

    /// Starts the shaper process when the run has shaped ports and waits until it listens.
    fn start_shaper(&mut self) -> anyhow::Result<()> {
        if self.shaped.is_empty() {
            return Ok(());
        }
        let exe = std::env::current_exe().context("cannot find the overlayd binary")?;
        let log_path = self.run_dir.join("logs").join("shaper.log");
        let log = open_log(&log_path)?;
        let argv: Vec<String> = vec![
            "netns".into(),
            "--run".into(),
            self.run_dir.display().to_string(),
            "shaper".into(),
        ];
        let sock = super::tap::socket_path(&self.run_dir);
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(&exe);
        cmd.args(&argv);
        let (pid, start_time) = spawn_detached(cmd, log).context("cannot start the shaper")?;
        self.shaper = Some(Daemon {
            host: self.underlay.bootstrapper,
            argv,
            log: log_path.clone(),
            pid: Some(pid),
            start_time,
        });
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline
                || daemon_state(self.shaper.as_ref().expect("set")) == ProcState::Dead
            {
                bail!(
                    "the shaper did not start (see {}): {}",
                    log_path.display(),
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .lines()
                        .last()
                        .unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the shaper if it runs; true if it did.
    fn stop_shaper(&mut self) -> bool {
        let Some(d) = self.shaper.as_mut() else {
            return false;
        };
        let alive = daemon_state(d) != ProcState::Dead;
        if alive {
            if let Some(pid) = d.pid {
                let _ = signal_group(pid, "KILL");
            }
        }
        d.pid = None;
        d.start_time = None;
        alive
    }

    /// The shaped port a link change names: `b` a device (the point-to-point link `a` shares
    /// with it) or a subnet of `a` (its attachment: the whole link if point-to-point).
    fn link_port(&self, a: &str, b: &str) -> anyhow::Result<(usize, usize)> {
        let ia = self.host_index(a)?;
        let u = &self.underlay;
        let s = match crate::topology::LinkKey::parse(b).map_err(|e| anyhow!(e))? {
            crate::topology::LinkKey::Subnet(net) => u.hosts[ia]
                .ifaces
                .iter()
                .map(|f| f.subnet)
                .find(|&s| u.subnets[s].net == net)
                .ok_or_else(|| anyhow!("{a} has no address in {net}"))?,
            crate::topology::LinkKey::Peer(peer) => {
                let ib = self.host_index(&peer)?;
                match u.shared_subnets(ia, ib).as_slice() {
                    [] => bail!("{a} and {peer} share no link (a path through routers has one link per hop)"),
                    [s] if u.subnets[*s].is_lan() => bail!(
                        "{a} and {peer} meet on the LAN {}: name {a}'s attachment by its subnet, e.g. `netns link {a} {}`",
                        u.subnets[*s].net, u.subnets[*s].net
                    ),
                    [s] => *s,
                    _ => bail!("{a} and {peer} share several subnets: name one, e.g. `netns link {a} SUBNET`"),
                }
            }
        };
        let (h, i) = u.subnets[s].parameter_port(ia).expect("a's subnet");
        if !self.shaped.contains(&(h, i)) {
            bail!(
                "the link {a}–{b} has no shaper: give it parameters in the topology (\"links\", even {{\"delay\": \"0ms\"}}) or start the run with `netns up --shape-all`"
            );
        }
        Ok((h, i))
    }

    /// The description of a shaped link, named as for [`RunState::set_link`].
    pub fn link(&self, a: &str, b: &str) -> anyhow::Result<String> {
        let (h, i) = self.link_port(a, b)?;
        Ok(self.port_description(h, i))
    }

    /// Changes a shaped link's parameters while the run goes on: `b` is the device at the other
    /// end of a point-to-point link, or a subnet of `a` (its attachment to a LAN); `change`
    /// edits the current parameters. Returns the link's description after the change.
    pub fn set_link(
        &mut self,
        a: &str,
        b: &str,
        change: impl FnOnce(&mut LinkParams),
    ) -> anyhow::Result<String> {
        let (h, i) = self.link_port(a, b)?;
        let mut params = self.underlay.hosts[h].ifaces[i].link;
        change(&mut params);
        super::tap::request(
            &self.run_dir,
            &super::tap::Request::Set {
                port: hub_port(h, i),
                params,
            },
        )?;
        self.underlay.hosts[h].ifaces[i].link = params;
        self.save()?;
        Ok(self.port_description(h, i))
    }

    /// Runs the shaper of this run in the calling process (`overlayd netns shaper`), until the
    /// run is torn down.
    pub fn run_shaper(&self) -> anyhow::Result<()> {
        let ports: Vec<super::tap::ShapedPort> = self
            .shaped
            .iter()
            .map(|&(h, i)| super::tap::ShapedPort {
                port: hub_port(h, i),
                host_ns: self.host_ns[h].clone(),
                iface: self.underlay.hosts[h].ifaces[i].name.clone(),
                hub_ns: self.hub_ns.clone(),
                params: self.underlay.hosts[h].ifaces[i].link,
            })
            .collect();
        super::tap::run(&self.run_dir, &self.hub_ns, &ports)
    }
}

/// Kill every process in the namespaces and delete them. Returns (namespaces, processes).
fn teardown(namespaces: &[String]) -> anyhow::Result<(usize, usize)> {
    let mut killed = 0;
    for ns in namespaces {
        for pid in ns_pids(ns) {
            if run(&["kill".into(), "-9".into(), pid.to_string()]).is_ok() {
                killed += 1;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while namespaces.iter().any(|ns| !ns_pids(ns).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut errors = Vec::new();
    for ns in namespaces {
        if let Err(e) = run(&cmd(&["ip", "netns", "del", ns])) {
            errors.push(e.to_string());
        }
    }
    if let Some(e) = errors.first() {
        bail!(
            "{} namespace(s) could not be deleted; first: {e}",
            errors.len()
        );
    }
    Ok((namespaces.len(), killed))
}

/// Resolve `--run`: a path (with a `/`), an id under the base directory, or the only run.
pub fn resolve_run(run: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(r) = run {
        return Ok(if r.contains('/') {
            PathBuf::from(r)
        } else {
            base_dir().join(r)
        });
    }
    let base = base_dir();
    let mut runs: Vec<PathBuf> = std::fs::read_dir(&base)
        .map(|it| {
            it.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("state.json").is_file())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|id| list_namespaces(&hub_ns(id)).is_ok_and(|v| !v.is_empty()))
                })
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    match runs.len() {
        1 => Ok(runs.remove(0)),
        0 => bail!(
            "no running emulation under {} (give --run ID|DIR)",
            base.display()
        ),
        _ => bail!(
            "several runs under {}: give --run with one of {}",
            base.display(),
            runs.iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn random_run_id() -> String {
    use rand::Rng;
    let n: u32 = rand::thread_rng().gen();
    format!("{:06x}", n & 0xff_ffff)
}

/// Wait until `log` has a line containing `needle` after byte `from`.
fn wait_for_log(log: &Path, from: u64, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read(log) {
            let tail = &text[(from as usize).min(text.len())..];
            if String::from_utf8_lossy(tail).contains(needle) {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `overlayd netns up` builds and starts.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Topology JSON file (every device must list its "addresses").
    pub topology: PathBuf,
    /// Run id; random when absent.
    pub run_id: Option<String>,
    /// Video folder for servers; `videos/` of the working directory when absent.
    pub videos: Option<PathBuf>,
    /// overlayd binary to run; this one when absent.
    pub bin: Option<PathBuf>,
    /// Build the network only; start nothing.
    pub no_start: bool,
    /// Also start the clients.
    pub clients: bool,
    /// Extra arguments for servers, nodes and edges.
    pub daemon_args: Vec<String>,
    /// `--relay` of nodes and edges, when given.
    pub relay: Option<String>,
    /// Extra arguments for clients; {name} and {run_dir} are replaced.
    pub client_args: Vec<String>,
    /// Give every port a shaper, so any link can be changed at run time (`netns link`);
    /// otherwise only ports whose link has parameters get one.
    pub shape_all: bool,
}

/// `overlayd netns up`: build the run's namespaces and start its daemons.
pub fn up(opts: UpOptions) -> anyhow::Result<()> {
    let UpOptions {
        topology,
        run_id,
        videos,
        bin,
        no_start,
        clients,
        daemon_args,
        relay,
        client_args,
        shape_all,
    } = opts;
    let topology = std::fs::canonicalize(&topology)
        .with_context(|| format!("cannot open topology {}", topology.display()))?;
    let t = crate::topology::load(&topology).map_err(|e| anyhow!("{e}"))?;
    let u = Underlay::from_topology(&t).map_err(|e| anyhow!("{}: {e}", topology.display()))?;
    require_root()?;
    let run_id = run_id.unwrap_or_else(random_run_id);
    if !valid_run_id(&run_id) {
        bail!("bad run id '{run_id}': use 1 to 8 lower-case letters and digits");
    }
    let hub = hub_ns(&run_id);
    if !list_namespaces(&hub)?.is_empty() {
        bail!("run id '{run_id}' is in use (namespaces {hub}*): pick another or tear it down");
    }
    let run_dir = base_dir().join(&run_id);
    std::fs::create_dir_all(run_dir.join("logs"))
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let key_file = run_dir.join("overlayd.key");
    crate::keyfile::write_new(&key_file, true)
        .with_context(|| format!("cannot write {}", key_file.display()))?;
    let videos = match videos {
        Some(v) => {
            std::fs::canonicalize(&v).with_context(|| format!("no video folder {}", v.display()))?
        }
        None => match std::fs::canonicalize("videos") {
            Ok(v) => v,
            Err(_) => {
                let v = run_dir.join("videos");
                std::fs::create_dir_all(&v)?;
                v
            }
        },
    };
    let bin = match bin {
        Some(b) => b,
        None => std::env::current_exe().context("cannot find the overlayd binary")?,
    };
    let host_ns = host_namespaces(&run_id, &u);
    let shaped = shaped_ports(&u, shape_all);
    let daemons = daemon_table(
        &u,
        &topology,
        &run_dir,
        &key_file,
        &videos,
        &daemon_args,
        relay.as_deref(),
        &client_args,
    );
    let mut st = RunState {
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        topology,
        bin,
        key_file,
        underlay: u,
        host_ns,
        hub_ns: hub,
        daemons,
        cuts: Vec::new(),
        isolated: Vec::new(),
        shaped,
        shaper: None,
    };
    // Saved before anything exists, so `down` knows the run whatever happens next.
    st.save()?;
    let started = Instant::now();
    let built = build_commands(&st.underlay, &st.hub_ns, &st.host_ns, &st.shaped)
        .iter()
        .try_for_each(|c| run(c).map(drop))
        .and_then(|()| st.start_shaper());
    if let Err(e) = built {
        st.stop_shaper();
        let cleanup = list_namespaces(&st.hub_ns).and_then(|ns| teardown(&ns));
        let note = match cleanup {
            Ok(_) => "everything created was removed".to_string(),
            Err(e2) => {
                format!("cleanup failed too ({e2}); run `overlayd netns down --run {run_id}`")
            }
        };
        bail!("building the network failed: {e}; {note}");
    }
    println!(
        "run {run_id}: {} hosts, {} subnets built in {:.1} s (namespaces {}-*, state {})",
        st.host_ns.len(),
        st.underlay.subnets.len(),
        started.elapsed().as_secs_f64(),
        st.hub_ns,
        run_dir.join("state.json").display()
    );
    for n in &st.underlay.notes {
        println!("note: {n}");
    }
    if !st.shaped.is_empty() {
        println!(
            "shaper: {} port(s) shaped (pid {}); change a link with `overlayd netns link --run {run_id} A B --delay 40ms`",
            st.shaped.len(),
            st.shaper.as_ref().and_then(|d| d.pid).unwrap_or(0)
        );
    }
    if no_start {
        println!("nothing started (--no-start); start devices with `overlayd netns start --run {run_id} NAME`");
        return Ok(());
    }
    let blog = st.daemon(BOOTSTRAPPER)?.log.clone();
    let from = std::fs::metadata(&blog).map(|m| m.len()).unwrap_or(0);
    st.start(BOOTSTRAPPER)?;
    if !wait_for_log(&blog, from, "listening", Duration::from_secs(5)) {
        eprintln!(
            "overlayd netns: warning: the bootstrapper has not said it listens within 5 s; see {}",
            blog.display()
        );
    }
    for h in st.underlay.start_order() {
        let host = &st.underlay.hosts[h];
        if host.role == DeviceRole::Client && !clients {
            continue;
        }
        let name = host.name.clone();
        st.start(&name)?;
    }
    println!(
        "started the bootstrapper on {} ({}) and {} device(s); logs in {}",
        st.underlay.hosts[st.underlay.bootstrapper].name,
        st.underlay.bootstrap_ip,
        st.daemons
            .iter()
            .filter(|(n, d)| *n != BOOTSTRAPPER && d.pid.is_some())
            .count(),
        run_dir.join("logs").display()
    );
    println!("status: overlayd netns status --run {run_id}   teardown: overlayd netns down --run {run_id}");
    Ok(())
}

/// `overlayd netns plan`: print what `up` would build, without root.
pub fn plan(topology: &Path, run_id: &str) -> anyhow::Result<()> {
    let t = crate::topology::load(topology).map_err(|e| anyhow!("{e}"))?;
    let u = Underlay::from_topology(&t).map_err(|e| anyhow!("{}: {e}", topology.display()))?;
    let mut out = String::new();
    macro_rules! outln {
        ($o:expr, $($t:tt)*) => {{
            $o.push_str(&format!($($t)*));
            $o.push('\n');
        }};
    }
    let hub = hub_ns(run_id);
    let host_ns = host_namespaces(run_id, &u);
    outln!(
        out,
        "bootstrapper on {} at {}",
        u.hosts[u.bootstrapper].name,
        u.bootstrap_ip
    );
    for (s, sub) in u.subnets.iter().enumerate() {
        let members: Vec<String> = sub
            .members
            .iter()
            .map(|&(h, i)| format!("{}:{}", u.hosts[h].name, u.hosts[h].ifaces[i].name))
            .collect();
        let kind = if sub.is_lan() { "LAN " } else { "link" };
        outln!(
            out,
            "{kind} {} ({}): {}",
            sub.net,
            bridge(s),
            members.join(" ")
        );
    }
    for (h, host) in u.hosts.iter().enumerate() {
        let fwd = if forwards(&u, h) {
            ", router: forwards IP"
        } else {
            ""
        };
        outln!(out, "{} ({}) in {}{fwd}", host.name, host.role, host_ns[h]);
        for f in &host.ifaces {
            let a: Vec<String> = f.addrs.iter().map(|a| a.to_string()).collect();
            let shaped = if f.link.is_ideal() {
                String::new()
            } else {
                format!("  (shaped: {})", f.link)
            };
            outln!(out, "  {} {}{shaped}", f.name, a.join(" "));
        }
        for r in &host.routes {
            outln!(out, "  route {} via {} dev {}", r.dest, r.via, r.dev);
        }
    }
    for n in &u.notes {
        outln!(out, "note: {n}");
    }
    outln!(out, "commands:");
    for c in build_commands(&u, &hub, &host_ns, &shaped_ports(&u, false)) {
        outln!(
            out,
            "  {}",
            c.iter()
                .map(|a| super::shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // Ignore a closed pipe (`| head`).
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}

/// `overlayd netns down`: kill a run's processes and delete its namespaces (or every run's).
pub fn down(run: Option<&str>, all: bool) -> anyhow::Result<()> {
    require_root()?;
    if all {
        let ns = list_namespaces(NS_PREFIX.trim_end_matches('-'))?;
        let ns: Vec<String> = ns
            .into_iter()
            .filter(|n| n.starts_with(NS_PREFIX))
            .collect();
        let (n, k) = teardown(&ns)?;
        println!("removed {n} namespace(s) of every run, killed {k} process(es)");
        return Ok(());
    }
    let dir = resolve_run(run)?;
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut state = RunState::load(&dir).ok();
    let run_id = state.as_ref().map(|s| s.run_id.clone()).unwrap_or(run_id);
    if !valid_run_id(&run_id) {
        bail!(
            "'{}' is not a run directory of this emulator",
            dir.display()
        );
    }
    // Daemons first (by pid, in case one left its namespace), then everything in the namespaces.
    let mut killed = 0;
    if let Some(st) = state.as_mut() {
        if st.stop_shaper() {
            killed += 1;
        }
        for d in st.daemons.values() {
            if daemon_state(d) != ProcState::Dead {
                if let Some(pid) = d.pid {
                    if signal_group(pid, "KILL").is_ok() {
                        killed += 1;
                    }
                }
            }
        }
    }
    let ns = list_namespaces(&hub_ns(&run_id))?;
    let (n, k) = teardown(&ns)?;
    if let Some(mut st) = state {
        for d in st.daemons.values_mut() {
            d.pid = None;
            d.start_time = None;
        }
        st.cuts.clear();
        st.isolated.clear();
        st.save()?;
    }
    println!(
        "run {run_id}: removed {n} namespace(s), killed {} process(es); logs stay in {}",
        killed.max(k),
        dir.join("logs").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCEN: &str = r#"{
        "S1": {"addresses": ["10.0.1.10"], "neighbours": ["10.0.1.1"]},
        "O1": {"addresses": ["10.0.1.1", "10.0.2.1"], "neighbours": ["10.0.1.10", "10.0.2.2"]},
        "O2": {"addresses": ["10.0.2.2", "10.0.3.1"], "neighbours": ["10.0.2.1"], "edge": true},
        "C1": {"addresses": ["10.0.3.20"], "neighbours": ["10.0.3.1"]},
        "C2": {"addresses": ["10.0.3.21"], "neighbours": ["10.0.3.1"]}
    }"#;

    fn underlay() -> Underlay {
        Underlay::from_topology(&crate::topology::parse(SCEN, "t").unwrap()).unwrap()
    }

    #[test]
    fn names_are_prefixed_unique_and_short() {
        let u = underlay();
        let ns = host_namespaces("ab12", &u);
        assert_eq!(ns[0], "ovld-ab12-C1");
        assert!(ns.iter().all(|n| n.starts_with("ovld-ab12-")));
        assert_eq!(hub_ns("ab12"), "ovld-ab12");
        assert!(hub_port(999, 99).len() <= 15);
        assert!(valid_run_id("ab12") && !valid_run_id("AB") && !valid_run_id("123456789"));
    }

    #[test]
    fn build_commands_cover_every_interface_and_route() {
        let u = underlay();
        let ns = host_namespaces("t", &u);
        let c = build_commands(&u, "ovld-t", &ns, &[]);
        let joined: Vec<String> = c.iter().map(|c| c.join(" ")).collect();
        assert_eq!(joined[0], "ip netns add ovld-t");
        for h in &u.hosts {
            for f in &h.ifaces {
                for a in &f.addrs {
                    assert!(joined
                        .iter()
                        .any(|l| l.contains(&format!("addr add {a}/24"))));
                }
            }
        }
        let routes: usize = u.hosts.iter().map(|h| h.routes.len()).sum();
        assert_eq!(
            joined.iter().filter(|l| l.contains(" route add ")).count(),
            routes
        );
        // Nothing is ever created outside our namespaces.
        assert!(c
            .iter()
            .all(|c| c[1] == "netns" || c.contains(&"-n".to_string())));
    }

    #[test]
    fn shaped_ports_are_tap_pairs_and_the_others_veths() {
        let u = underlay();
        assert!(
            shaped_ports(&u, false).is_empty(),
            "SCEN has no link parameters"
        );
        let all = shaped_ports(&u, true);
        assert_eq!(
            all.len(),
            u.hosts.iter().map(|h| h.ifaces.len()).sum::<usize>()
        );
        let ns = host_namespaces("t", &u);
        let (o1, _) = u.host("O1").unwrap();
        let c = build_commands(&u, "ovld-t", &ns, &[(o1, 1)]);
        let joined: Vec<String> = c.iter().map(|v| v.join(" ")).collect();
        let port = hub_port(o1, 1);
        assert!(joined.contains(&format!("ip -n ovld-t tuntap add dev {port} mode tap")));
        assert!(joined.contains(&format!("ip -n {} tuntap add dev eth1 mode tap", ns[o1])));
        assert!(!joined
            .iter()
            .any(|l| l.contains(&format!("add {port} type veth"))));
        // Every other port is still a veth pair.
        let veths = joined.iter().filter(|l| l.contains("type veth")).count();
        assert_eq!(veths, all.len() - 1);
    }

    #[test]
    fn only_routers_forward_with_cores_sysctls() {
        let u = underlay();
        for (h, host) in u.hosts.iter().enumerate() {
            let script = forwarding_script(&u, h);
            if host.ifaces.len() >= 2 {
                assert!(forwards(&u, h), "{}", host.name);
                assert!(script.contains("echo 1 > /proc/sys/net/ipv4/ip_forward"));
                for f in &host.ifaces {
                    let d = &f.name;
                    assert!(
                        script.contains(&format!("echo 0 > /proc/sys/net/ipv4/conf/{d}/rp_filter"))
                    );
                    assert!(script.contains(&format!(
                        "echo 0 > /proc/sys/net/ipv4/conf/{d}/send_redirects"
                    )));
                }
            } else {
                assert!(!forwards(&u, h), "{}", host.name);
                assert!(
                    script.contains("echo 0 > /proc/sys/net/ipv4/ip_forward"),
                    "{script}"
                );
                assert!(!script.contains("echo 1"), "{script}");
            }
        }
        let ns = host_namespaces("t", &u);
        let c = build_commands(&u, "ovld-t", &ns, &[]);
        let (o1, _) = u.host("O1").unwrap();
        assert!(c
            .iter()
            .any(|c| c.contains(&ns[o1]) && c.last() == Some(&forwarding_script(&u, o1))));
    }

    #[test]
    fn isolation_drops_only_the_hosts_own_traffic() {
        // Input and output hooks (the host's own packets), never forward (what it routes).
        assert!(ISOLATE_RULES.contains("hook input") && ISOLATE_RULES.contains("hook output"));
        assert!(!ISOLATE_RULES.contains("forward"));
        assert_eq!(ISOLATE_RULES.matches("policy drop").count(), 2);
        assert!(ISOLATE_RULES.contains("iifname \"lo\" accept"));
    }

    #[test]
    fn cuts_take_ports_down_or_use_nft_on_lans() {
        let u = underlay();
        let (s1, o1) = (u.host("S1").unwrap().0, u.host("O1").unwrap().0);
        let (c, lan) = cut_commands(&u, "hub", s1, o1, true).unwrap();
        assert!(!lan);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.last().unwrap() == "down"));
        let (c1, o2) = (u.host("C1").unwrap().0, u.host("O2").unwrap().0);
        let (c, lan) = cut_commands(&u, "hub", c1, o2, true).unwrap();
        assert!(lan && c.is_empty());
        let rules = lan_rules(&u, &[(c1, o2)]);
        assert!(rules.contains("drop"), "{rules}");
        assert!(cut_commands(&u, "hub", s1, c1, true).is_err());
    }

    #[test]
    fn daemon_table_has_roles_keys_and_client_substitution() {
        let u = underlay();
        let t = daemon_table(
            &u,
            Path::new("/t.json"),
            Path::new("/run"),
            Path::new("/run/k"),
            Path::new("/nonexistent-videos"),
            &["--ping-ms".into(), "100".into()],
            Some("native"),
            &["--record".into(), "{run_dir}/{name}.ts".into()],
        );
        assert_eq!(t[BOOTSTRAPPER].argv[1], "bootstrapper");
        assert_eq!(t[BOOTSTRAPPER].host, u.host("S1").unwrap().0);
        let s1 = t["S1"].argv.join(" ");
        assert!(s1.starts_with("--role server --name S1 --bootstrap 10.0.1.10 --key-file /run/k --videos /nonexistent-videos --ping-ms 100"), "{s1}");
        assert_eq!(t["O2"].argv[1], "edge");
        let o2 = t["O2"].argv.join(" ");
        assert!(o2.contains("--relay native --ping-ms 100"), "{o2}");
        assert!(!s1.contains("--relay"), "servers take no --relay: {s1}");
        assert_eq!(
            t["C1"].argv.join(" "),
            "--role client --name C1 --bootstrap 10.0.1.10 --record /run/C1.ts"
        );
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let (state, start) = proc_stat(std::process::id()).unwrap();
        assert!(matches!(state, 'R' | 'S'));
        assert!(start > 0);
    }
}
