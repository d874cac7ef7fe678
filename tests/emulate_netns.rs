//! The network-namespace emulator with the real binary: scenario 1 built in namespaces, every
//! overlay neighbour up through the underlay, a non-neighbour reachable through routing, kill -9,
//! SIGSTOP, a silent link cut and its restore, a restart, and a teardown that leaves no
//! namespace, link or process of the run behind. Also: the generated CORE start scripts, run in
//! namespaces the way CORE runs them, start every device; routers forward and PCs do not, as
//! in CORE; an isolated device is silent while the routes through its host still work.
//!
//! Needs root and `ip netns` (CI runs as root), some also nft or setpriv (bin/test installs
//! them). Without them a test fails under CI and elsewhere prints SKIPPED with the reason,
//! returns and is counted as skipped (`common::prereq`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlayd::emulate::core::{self, CoreOptions};
use overlayd::emulate::{netns, Underlay};
use overlayd::topology::{self, Topology};

mod common;

use common::emu::{repo, Emu};
use common::prereq::{lacking, Need, NFT, SETPRIV};
use common::BIN;

/// A device's log in a run.
fn dev_log(emu: &Emu, device: &str) -> Log {
    Log(emu.run_dir().join("logs").join(format!("{device}.log")))
}

/// A daemon's log file.
struct Log(PathBuf);

impl Log {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
    fn len(&self) -> usize {
        self.text().len()
    }
    /// Wait for a line after byte `from` containing all `parts`; returns the time it took.
    fn wait(&self, from: usize, parts: &[&str], timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let text = self.text();
            if text
                .get(from..)
                .unwrap_or("")
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: no line with {parts:?} within {timeout:?}; log:\n{text}",
                    self.0.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn load(name: &str) -> (PathBuf, String, Topology, Underlay) {
    let p = repo().join("topology").join(name);
    let text = std::fs::read_to_string(&p).unwrap();
    let t = topology::parse(&text, name).unwrap();
    let u = Underlay::from_topology(&t).unwrap();
    (p, text, t, u)
}

/// (device, neighbour name) for every overlay neighbour listed in the topology.
fn overlay_pairs(t: &Topology) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for d in t.devices().filter(|d| d.role.is_overlay()) {
        for n in &d.neighbours {
            let owner = t.owners_of(n.ip).next().unwrap();
            v.push((d.name.clone(), owner.name.clone()));
        }
    }
    v
}

/// How long a probe waits for an answer. Generous: bash itself may take a second to start on
/// a loaded machine; the probes of one check run in parallel, so a silent one costs it once.
const PROBE_SECS: &str = "4";

/// TCP connects to a closed port (9), each from a host to an address, all at once: 1 where the
/// address answers (refused at once), 124 where it is silent (no answer within [`PROBE_SECS`]).
fn probes(emu: &Emu, pairs: &[(&str, &str)]) -> Vec<i32> {
    let children: Vec<_> = pairs
        .iter()
        .map(|(from, to)| {
            Command::new(BIN)
                .args(["netns", "exec", "--run", &emu.id, from, "--"])
                .args(["timeout", PROBE_SECS, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{to}/9"))
                .env(netns::BASE_DIR_ENV, &emu.base)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap_or(-1))
        .collect()
}

fn wait_all_up(logs: &dyn Fn(&str) -> Log, pairs: &[(String, String)]) {
    for (d, n) in pairs {
        logs(d).wait(
            0,
            &["neighbour up", &format!("neighbour={n} ")],
            Duration::from_secs(15),
        );
    }
}

/// Processes whose command line mentions `needle` (zombies have none, so they do not count).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(format!("{name}: {c}"));
            }
        }
    }
    v
}

fn root_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|s| s.split('@').next().unwrap().to_string())
        })
        .collect()
}

/// The names of every link a run of `u` creates: hub ports and bridges (in the hub namespace)
/// and host interfaces (in the hosts' namespaces). None of them belongs in the root namespace.
fn run_link_names(u: &Underlay) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = (0..u.subnets.len()).map(netns::bridge).collect();
    for (h, host) in u.hosts.iter().enumerate() {
        for (i, f) in host.ifaces.iter().enumerate() {
            names.insert(netns::hub_port(h, i));
            names.insert(f.name.clone());
        }
    }
    names
}

/// Nothing of this run is left: none of its namespaces, no process started from its base
/// directory, and no link of its plan in the root namespace. Only what this run created is
/// looked at (its namespaces and files bear its own id; root links are new ones with the
/// plan's names), so another emulation on the machine (a CORE session, another test) with
/// its own links and namespaces does not fail it.
fn assert_torn_down(emu: &Emu, u: &Underlay, links_before: &BTreeSet<String>) {
    assert!(
        emu.namespaces().is_empty(),
        "namespaces left: {:?}",
        emu.namespaces()
    );
    let procs = processes_mentioning(&emu.base.display().to_string());
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let ours = run_link_names(u);
    let after = root_links();
    let new: Vec<&String> = after
        .difference(links_before)
        .filter(|l| ours.contains(*l))
        .collect();
    assert!(
        new.is_empty(),
        "links of this run left in the root namespace: {new:?}"
    );
}

#[test]
fn scenario1_neighbours_faults_and_teardown() {
    if lacking("scenario1_neighbours_faults_and_teardown", &[Need::Netns]) {
        return;
    }
    let links_before = root_links();
    let (path, _, t, u) = load("scenario1.json");
    let emu = Emu::new("scenario1_neighbours_faults_and_teardown", "a");
    let out = emu.ok(&["up", path.to_str().unwrap(), "--run-id", &emu.id.clone()]);
    assert!(out.contains("started the bootstrapper on S1"), "{out}");
    let started = Instant::now();
    wait_all_up(&|d| dev_log(&emu, d), &overlay_pairs(&t));
    println!("all overlay neighbours up after {:?}", started.elapsed());

    // Non-neighbours reach each other through the routed underlay: C1 to S1's overlay port
    // (three hops), and edge O2 to edge O3 (a grandfather-style connection).
    for (from, to) in [("C1", "10.0.1.10"), ("O2", "10.0.3.2")] {
        let o = emu.cmd(&[
            "exec",
            "--run",
            &emu.id,
            from,
            "--",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{to}/7701"),
        ]);
        assert!(
            o.status.success(),
            "{from} cannot connect to {to}:7701: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Silent cut: both ends notice by keepalive (about a second), not by a reset.
    let (o1, o2) = (dev_log(&emu, "O1"), dev_log(&emu, "O2"));
    let (m1, m2) = (o1.len(), o2.len());
    emu.ok(&["cut", "O1", "O2"]);
    let took = o1.wait(
        m1,
        &["neighbour down", "neighbour=O2 ", "silent"],
        Duration::from_secs(4),
    );
    o2.wait(
        m2,
        &["neighbour down", "neighbour=O1 ", "silent"],
        Duration::from_secs(4),
    );
    println!("cut O1–O2 detected by O1 after {took:?}");
    assert!(
        took >= Duration::from_millis(500),
        "a silent cut cannot be seen at once ({took:?})"
    );
    assert!(emu.ok(&["status"]).contains("cut: O1 – O2"));
    let m1 = o1.len();
    emu.ok(&["restore", "O1", "O2"]);
    let took = o1.wait(
        m1,
        &["neighbour up", "neighbour=O2 "],
        Duration::from_secs(10),
    );
    println!("O1–O2 back up {took:?} after the restore");

    // kill -9: the kernel closes the sockets, the neighbour sees it at once.
    let m1 = o1.len();
    emu.ok(&["kill", "O3"]);
    o1.wait(
        m1,
        &["neighbour down", "neighbour=O3 "],
        Duration::from_secs(3),
    );
    let status = emu.ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("O3 ") && l.contains(" dead ")),
        "{status}"
    );

    // SIGSTOP: silent, detected by keepalive; SIGCONT brings it back.
    let m1 = o1.len();
    emu.ok(&["hang", "O2"]);
    o1.wait(
        m1,
        &["neighbour down", "neighbour=O2 ", "silent"],
        Duration::from_secs(4),
    );
    assert!(emu
        .ok(&["status"])
        .lines()
        .any(|l| l.starts_with("O2 ") && l.contains(" hung ")));
    let m1 = o1.len();
    emu.ok(&["resume", "O2"]);
    o1.wait(
        m1,
        &["neighbour up", "neighbour=O2 "],
        Duration::from_secs(10),
    );

    // Restart the killed node with the same name.
    let m1 = o1.len();
    emu.ok(&["restart", "O3"]);
    o1.wait(
        m1,
        &["neighbour up", "neighbour=O3 "],
        Duration::from_secs(10),
    );

    let out = emu.ok(&["down"]);
    assert!(out.contains("removed 7 namespace(s)"), "{out}");
    assert_torn_down(&emu, &u, &links_before);
}

#[test]
fn down_works_from_any_state_and_commands_explain_errors() {
    if lacking(
        "down_works_from_any_state_and_commands_explain_errors",
        &[Need::Netns, SETPRIV],
    ) {
        return;
    }
    let links_before = root_links();
    let (path, _, _, u) = load("scenario2.json");
    let emu = Emu::new("down_works_from_any_state_and_commands_explain_errors", "b");
    emu.up_no_start(&path);
    assert_eq!(emu.namespaces().len(), 9);
    // A second run with the same id is refused and creates nothing.
    let o = emu.cmd(&["up", path.to_str().unwrap(), "--run-id", &emu.id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));
    // Faults on unknown devices or non-links are one-line errors.
    for args in [
        vec!["kill", "X9"],
        vec!["cut", "S1", "O5"],
        vec!["restore", "S1", "O1"],
        vec!["hang", "O1"],
    ] {
        let mut a = args.clone();
        a.extend(["--run", &emu.id]);
        let o = emu.cmd(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // Start one device by hand, then lose the state file: down still finds everything by name.
    emu.ok(&["start", "O1"]);
    std::fs::remove_file(emu.run_dir().join("state.json")).unwrap();
    let out = emu.ok(&["down"]);
    assert!(out.contains("removed 9 namespace(s)"), "{out}");
    assert_torn_down(&emu, &u, &links_before);
    // down on a run that is gone is harmless.
    emu.ok(&["down"]);

    // Without root: one line, non-zero exit.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "netns",
            "status",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs root"), "{err}");
}

/// The start script of every node, as CORE would write it: from the XML templates, or from the
/// legacy .imn config blocks (one leading tab removed).
fn core_scripts(
    u: &Underlay,
    text: &str,
    opts: &CoreOptions,
    legacy: bool,
) -> Vec<(String, String)> {
    let s = core::generate(u, "t", text, opts).unwrap();
    if !legacy {
        return (0..u.hosts.len())
            .map(|h| {
                (
                    u.hosts[h].name.clone(),
                    core::start_script(u, h, "t", text, opts).unwrap(),
                )
            })
            .collect();
    }
    let mut out = Vec::new();
    let mut host = String::new();
    let mut lines = s.imn.lines();
    while let Some(l) = lines.next() {
        if let Some(h) = l.trim().strip_prefix("hostname ") {
            host = h.to_string();
        }
        if l.trim() == format!("custom-config-id service:UserDefined:{}", core::SCRIPT_NAME) {
            assert_eq!(
                lines.next().unwrap().trim(),
                format!("custom-command {}", core::SCRIPT_NAME)
            );
            assert_eq!(lines.next().unwrap().trim(), "config {");
            let mut script = String::new();
            for l in lines.by_ref() {
                if l == "\t}" {
                    break;
                }
                script.push_str(l.strip_prefix('\t').unwrap_or(l));
                script.push('\n');
            }
            out.push((host.clone(), script));
        }
    }
    assert_eq!(out.len(), u.hosts.len());
    out
}

fn core_scripts_start_every_device(topo: &str, tag: &str, legacy: bool) {
    let links_before = root_links();
    let (path, text, t, u) = load(topo);
    let emu = Emu::new("core_scripts_start_every_device", tag);
    emu.up_no_start(&path);
    let bin_dir = Path::new(BIN).parent().unwrap();
    let opts = CoreOptions {
        bin: "overlayd".into(),
        videos: emu.base.join("videos").display().to_string(),
        key_dir: emu.base.join("key").display().to_string(),
    };
    std::fs::create_dir_all(&opts.videos).unwrap();
    let ns = netns::host_namespaces(&emu.id, &u);
    let node_dir = |name: &str| emu.base.join("core").join(name);
    for (name, script) in core_scripts(&u, &text, &opts, legacy) {
        let dir = node_dir(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(core::SCRIPT_NAME), script).unwrap();
        let h = u.host(&name).unwrap().0;
        // CORE runs `sh overlayd.sh` in the node's directory and waits for it.
        let o = Command::new("ip")
            .args(["netns", "exec", &ns[h], "sh", core::SCRIPT_NAME])
            .current_dir(&dir)
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()),
            )
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    wait_all_up(
        &|d| Log(node_dir(d).join("overlayd.log")),
        &overlay_pairs(&t),
    );
    // Clients got their command; the bootstrapper's host got the topology.
    let client = std::fs::read_to_string(node_dir("C1").join("client.sh")).unwrap();
    assert!(
        client.contains(&format!(
            "--role client --name C1 --bootstrap {}",
            u.bootstrap_ip
        )),
        "{client}"
    );
    let boot = &u.hosts[u.bootstrapper].name;
    assert_eq!(
        std::fs::read_to_string(node_dir(boot).join("topology.json"))
            .unwrap()
            .trim_end(),
        text.trim_end()
    );
    // `sh overlayd.sh stop` (the service's shutdown) stops what the script started.
    for h in &u.hosts {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns[u.host(&h.name).unwrap().0],
                "sh",
                core::SCRIPT_NAME,
                "stop",
            ])
            .current_dir(node_dir(&h.name))
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_mentioning(&opts.key_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = processes_mentioning(&opts.key_dir);
    assert!(left.is_empty(), "the stop command left {left:#?}");
    // The bootstrapper too: nothing runs in any namespace any more.
    let running = |n: &String| {
        let o = Command::new("ip")
            .args(["netns", "pids", n])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while ns.iter().any(running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy: Vec<&String> = ns.iter().filter(|n| running(n)).collect();
    assert!(
        busy.is_empty(),
        "processes still run in {busy:?} after stop"
    );
    emu.ok(&["down"]);
    assert_torn_down(&emu, &u, &links_before);
}

#[test]
fn core9_start_scripts_start_every_device_in_namespaces() {
    if lacking(
        "core9_start_scripts_start_every_device_in_namespaces",
        &[Need::Netns],
    ) {
        return;
    }
    core_scripts_start_every_device("scenario1.json", "c", false);
}

#[test]
fn legacy_imn_start_scripts_start_every_device_in_namespaces() {
    if lacking(
        "legacy_imn_start_scripts_start_every_device_in_namespaces",
        &[Need::Netns],
    ) {
        return;
    }
    core_scripts_start_every_device("scenario2.json", "d", true);
}

#[test]
fn lan_cut_drops_only_the_cut_pair() {
    if lacking("lan_cut_drops_only_the_cut_pair", &[Need::Netns, NFT]) {
        return;
    }
    let links_before = root_links();
    let (path, _, _, u) = load("complex.json");
    let emu = Emu::new("lan_cut_drops_only_the_cut_pair", "e");
    emu.up_no_start(&path);
    // LAN 10.0.20.0/24: O6 .1, C1 .21, C2 .22, C3 .23.
    assert_eq!(probes(&emu, &[("C1", "10.0.20.1")]), [1]);
    emu.ok(&["cut", "C1", "O6"]);
    // C1–O6 is cut silently; C2–O6 and C1–C2 are untouched.
    assert_eq!(
        probes(
            &emu,
            &[
                ("C1", "10.0.20.1"),
                ("C2", "10.0.20.1"),
                ("C1", "10.0.20.22")
            ]
        ),
        [124, 1, 1]
    );
    emu.ok(&["cut", "C2", "O6"]);
    emu.ok(&["restore", "C1", "O6"]);
    // C1–O6 is back, C2–O6 stays cut.
    assert_eq!(
        probes(&emu, &[("C1", "10.0.20.1"), ("C2", "10.0.20.1")]),
        [1, 124]
    );
    emu.ok(&["down"]);
    assert_torn_down(&emu, &u, &links_before);
}

#[test]
fn isolate_silences_a_device_but_not_the_routes_through_it() {
    let test = "isolate_silences_a_device_but_not_the_routes_through_it";
    if lacking(test, &[Need::Netns, NFT]) {
        return;
    }
    let links_before = root_links();
    let (path, _, _, u) = load("scenario1.json");
    let emu = Emu::new(test, "i");
    emu.up_no_start(&path);
    let sysctl = |dev: &str, key: &str| -> String {
        let o = emu.cmd(&[
            "exec",
            "--run",
            &emu.id,
            dev,
            "--",
            "cat",
            &format!("/proc/sys/net/{key}"),
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    // As in CORE: routers forward (IPForward's sysctls), one-interface hosts (PCs) do not.
    assert_eq!(sysctl("O2", "ipv4/ip_forward"), "1");
    assert_eq!(sysctl("O2", "ipv4/conf/all/rp_filter"), "0");
    assert_eq!(sysctl("O2", "ipv4/conf/eth1/send_redirects"), "0");
    assert_eq!(sysctl("C1", "ipv4/ip_forward"), "0");
    // C1 (10.0.4.20) sits behind edge O2 (10.0.4.1); edge O3 (10.0.5.1) is reached through
    // O2's host, O1 and O3's host.
    assert_eq!(
        probes(&emu, &[("C1", "10.0.4.1"), ("C1", "10.0.5.1")]),
        [1, 1]
    );
    emu.ok(&["isolate", "O2"]);
    assert!(emu.ok(&["status"]).contains("isolated: O2"));
    // O2 is silent on every address, to its clients and its neighbours; its host still
    // routes C1 to O3.
    assert_eq!(
        probes(
            &emu,
            &[
                ("C1", "10.0.4.1"),
                ("C1", "10.0.2.2"),
                ("O1", "10.0.2.2"),
                ("C1", "10.0.5.1")
            ]
        ),
        [124, 124, 124, 1]
    );
    let o = emu.cmd(&["isolate", "O2", "--run", &emu.id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already isolated") && err.lines().count() == 1,
        "{err}"
    );
    emu.ok(&["rejoin", "O2"]);
    assert!(!emu.ok(&["status"]).contains("isolated"));
    assert_eq!(probes(&emu, &[("C1", "10.0.4.1")]), [1], "O2 is back");
    emu.ok(&["down"]);
    assert_torn_down(&emu, &u, &links_before);
}
