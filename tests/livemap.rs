//! The live map with real processes on loopback and a real browser: a bootstrapper with
//! `--map-port`, a server and three nodes in a diamond (S1 - {O1, O2} - O3) reporting to it,
//! a test consumer on O3. Headless Chromium renders the page; the test checks from the dumped
//! DOM that every node, every topology link and the stream's tree are drawn, and from a
//! screenshot that the tree is painted in the stream's colour. Then the relay on the tree is
//! killed with SIGKILL and the page must show it dead (red) and the tree through the other
//! relay. A reporter with the wrong key is refused and counted. With two servers offering one
//! video (reports sent over real report connections), the legend names the server the viewers
//! are fed from now, before and after a failover from one to the other.
//!
//! Addresses: 127.75.1.x (S1 .1, O1 .2, O2 .3, O3 .4, bootstrapper .100; map page port 7790,
//! report port 7710); 127.75.2.x and 127.75.3.x for the other tests.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::consumer::Consumer;
use common::prereq::{lacking, CHROMIUM, FFMPEG};
use common::{device, keygen, role_of, some_video, Daemon, TempDir};
use overlayd::net::control::http_get;
use overlayd::observe::map::MapModel;

const WAIT: Duration = Duration::from_secs(20);
const NET: &str = "127.75.1";

fn ip(i: u8) -> String {
    format!("{NET}.{i}")
}

fn topology(dir: &TempDir) -> PathBuf {
    let text = format!(
        r#"{{
  "S1": {{ "neighbours": ["{o1}", "{o2}"], "addresses": ["{s1}"] }},
  "O1": {{ "neighbours": ["{s1}", "{o3}"], "addresses": ["{o1}"] }},
  "O2": {{ "neighbours": ["{s1}", "{o3}"], "addresses": ["{o2}"] }},
  "O3": {{ "neighbours": ["{o1}", "{o2}"], "addresses": ["{o3}"] }}
}}"#,
        s1 = ip(1),
        o1 = ip(2),
        o2 = ip(3),
        o3 = ip(4)
    );
    let path = dir.path("topology.json");
    std::fs::write(&path, text).unwrap();
    path
}

fn map_addr() -> SocketAddr {
    format!("{}:7790", ip(100)).parse().unwrap()
}

fn model() -> MapModel {
    let (code, body) = http_get(map_addr(), "/map.json", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not a map ({e}): {body}"))
}

/// Poll the model until `f` holds or WAIT passes.
fn model_until(what: &str, f: impl Fn(&MapModel) -> bool) -> MapModel {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = model();
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never: {what}; last map: {m:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tree_edges(m: &MapModel, video: &str) -> Vec<(String, String)> {
    m.streams
        .iter()
        .filter(|s| s.video == video)
        .flat_map(|s| s.tree.iter().map(|e| (e.from.clone(), e.to.clone())))
        .collect()
}

/// The relay (O1 or O2) carrying the stream from S1 to O3, if the tree is complete.
fn relay(m: &MapModel, video: &str) -> Option<String> {
    let t = tree_edges(m, video);
    ["O1", "O2"]
        .into_iter()
        .find(|r| {
            t.contains(&("S1".to_string(), r.to_string()))
                && t.contains(&(r.to_string(), "O3".to_string()))
        })
        .map(str::to_string)
}

fn chromium(dir: &TempDir, extra: &[&str]) -> String {
    chromium_at(dir, map_addr(), extra)
}

/// Headless Chromium on the page at `page`: its stdout (e.g. the DOM with `--dump-dom`).
fn chromium_at(dir: &TempDir, page: SocketAddr, extra: &[&str]) -> String {
    let profile = dir.path("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            // Enough virtual time for the first poll of /map.json and a redraw or two.
            "--virtual-time-budget=2500",
        ])
        .args(extra)
        .arg(format!("http://{page}/"))
        .output()
        .expect("chromium runs (bin/test installs Debian's chromium package)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attributes of every opening `<tag ...>` in the dumped DOM.
fn tags(dom: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>').unwrap_or(after.len());
        let mut attrs = HashMap::new();
        let mut s = &after[..end];
        while let Some(eq) = s.find("=\"") {
            let key = s[..eq].trim().to_string();
            let val_start = &s[eq + 2..];
            let close = val_start.find('"').unwrap_or(val_start.len());
            attrs.insert(key, val_start[..close].replace("&amp;", "&"));
            s = &val_start[(close + 1).min(val_start.len())..];
        }
        found.push(attrs);
        rest = &after[end..];
    }
    found
}

fn has_class(a: &HashMap<String, String>, class: &str) -> bool {
    a.get("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

struct Dom {
    nodes: Vec<HashMap<String, String>>,
    lines: Vec<HashMap<String, String>>,
}

impl Dom {
    fn parse(dom: &str) -> Dom {
        Dom {
            nodes: tags(dom, "g")
                .into_iter()
                .filter(|a| has_class(a, "node"))
                .collect(),
            lines: tags(dom, "line"),
        }
    }

    fn node(&self, name: &str) -> &HashMap<String, String> {
        self.nodes
            .iter()
            .find(|a| a.get("data-name").map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no node {name} in the page: {:?}", self.nodes))
    }

    fn links(&self) -> Vec<(String, String, String)> {
        self.lines
            .iter()
            .filter(|a| has_class(a, "link"))
            .map(|a| {
                (
                    a["data-a"].clone(),
                    a["data-b"].clone(),
                    a["data-state"].clone(),
                )
            })
            .collect()
    }

    fn tree(&self, video: &str) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = self
            .lines
            .iter()
            .filter(|a| {
                has_class(a, "tree") && a.get("data-video").map(String::as_str) == Some(video)
            })
            .map(|a| (a["data-from"].clone(), a["data-to"].clone()))
            .collect();
        t.sort();
        t
    }
}

/// Pixels of the PNG within a small distance of `colour` (`#rrggbb`), decoded by ffmpeg.
/// A 1280x800 screenshot of the page into `NAME.png`; (pixels near `colour`, pixels near
/// [`DEAD_RED`]), printed.
fn screenshot(dir: &TempDir, name: &str, colour: &str) -> (usize, usize) {
    let shot = dir.path(&format!("{name}.png"));
    chromium(
        dir,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    );
    let coloured = pixels_near(&shot, colour);
    let red = pixels_near(&shot, DEAD_RED);
    eprintln!("{name} the kill: {coloured} pixels of {colour}, {red} of {DEAD_RED}");
    (coloured, red)
}

fn pixels_near(png: &Path, colour: &str) -> usize {
    let bytes = std::fs::read(png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(png)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = |i: usize| i32::from_str_radix(&colour[i..i + 2], 16).unwrap();
    let (r, g, b) = (hex(1), hex(3), hex(5));
    out.stdout
        .chunks_exact(3)
        .filter(|p| {
            (p[0] as i32 - r).abs() + (p[1] as i32 - g).abs() + (p[2] as i32 - b).abs() < 40
        })
        .count()
}

const DEAD_RED: &str = "#d62728";

#[test]
fn live_map_in_chromium_shows_the_tree_and_a_death() {
    // Screenshots are decoded by ffmpeg.
    if lacking(
        "live_map_in_chromium_shows_the_tree_and_a_death",
        &[CHROMIUM, FFMPEG],
    ) {
        return;
    }
    let dir = TempDir::new("livemap");
    let topo = topology(&dir);
    let key = dir.path("k");
    keygen(&key);
    let key_s = key.to_str().unwrap().to_string();
    let boot_ip = ip(100);
    let boot = Daemon::spawn(
        "bootstrapper",
        &[
            "--role",
            "bootstrapper",
            "--topology",
            topo.to_str().unwrap(),
            "--bind",
            &boot_ip,
            "--map-port",
            "7790",
            "--key-file",
            &key_s,
        ],
    );
    boot.wait_for(&["live map on", "7790", "7710"], WAIT);

    let mut daemons: HashMap<&str, Daemon> = HashMap::new();
    for (i, name) in ["S1", "O1", "O2", "O3"].into_iter().enumerate() {
        let mut extra = vec!["--control-port", "0", "--report-interval", "500"];
        if name == "S1" {
            extra.extend(["--source", "paced"]);
        }
        let d = device(
            role_of(name),
            name,
            &ip(i as u8 + 1),
            &boot_ip,
            &key,
            &extra,
        );
        daemons.insert(name, d);
    }
    daemons["O3"].wait_for(&["neighbour up", "O1"], WAIT);
    daemons["O3"].wait_for(&["neighbour up", "O2"], WAIT);

    // A reporter with another key is refused and counted.
    let stranger_key = dir.path("other");
    keygen(&stranger_key);
    let stranger = Daemon::spawn(
        "stranger",
        &[
            "--role",
            "node",
            "--name",
            "O2",
            "--bind",
            &ip(50),
            "--bootstrap",
            &boot_ip,
            "--key-file",
            stranger_key.to_str().unwrap(),
            "--overlay-port",
            "7799",
            "--control-port",
            "0",
        ],
    );
    boot.wait_for(&["report refused", "handshake failed"], WAIT);
    drop(stranger);

    let video = some_video();
    let consumer = Consumer::at(&ip(4), &key, "TestConsumer", &video);
    assert!(
        consumer.wait_chunks(20, WAIT),
        "no stream reached the consumer"
    );

    let m = model_until("the tree S1 -> O1|O2 -> O3 and all alive", |m| {
        relay(m, &video).is_some()
            && ["S1", "O1", "O2", "O3"]
                .iter()
                .all(|n| m.nodes.iter().any(|x| x.name == *n && x.state == "alive"))
    });
    assert!(m.counters.auth_refused >= 1, "{:?}", m.counters);
    assert!(m.counters.report_bytes > 0, "{:?}", m.counters);
    // While delays are first measured the stream may switch relay (make-before-break); wait
    // until the tree has kept its relay for 1.5 s, so the page shows the tree that is killed.
    let mut last = relay(&m, &video);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + WAIT;
    while stable_since.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "the tree never settled");
        std::thread::sleep(Duration::from_millis(250));
        let now = relay(&model(), &video);
        if now != last || now.is_none() {
            last = now;
            stable_since = Instant::now();
        }
    }
    let colour = m
        .streams
        .iter()
        .find(|s| s.video == video)
        .unwrap()
        .colour
        .clone();

    // The page, as a browser renders it.
    let dom = chromium(&dir, &["--dump-dom"]);
    let page = Dom::parse(&dom);
    for n in ["S1", "O1", "O2", "O3"] {
        let a = page.node(n);
        assert_eq!(a["data-state"], "alive", "{n}: {a:?}");
        assert!(has_class(a, "alive"), "{a:?}");
    }
    assert_eq!(page.node("S1")["data-role"], "server");
    assert_eq!(page.node("TestConsumer")["data-role"], "consumer");
    let links = page.links();
    for (a, b) in [("O1", "S1"), ("O2", "S1"), ("O1", "O3"), ("O2", "O3")] {
        assert!(
            links.contains(&(a.into(), b.into(), "up".into())),
            "link {a}-{b} not drawn up: {links:?}"
        );
    }
    let tree = page.tree(&video);
    // The relay as the page draws it (the one then killed).
    let relay_name = ["O1", "O2"]
        .into_iter()
        .find(|r| tree.contains(&(r.to_string(), "O3".to_string())))
        .unwrap_or_else(|| panic!("no relay into O3 drawn: {tree:?}"))
        .to_string();
    let other = if relay_name == "O1" { "O2" } else { "O1" };
    for e in [
        ("S1", relay_name.as_str()),
        (relay_name.as_str(), "O3"),
        ("O3", "TestConsumer"),
    ] {
        assert!(
            tree.contains(&(e.0.into(), e.1.into())),
            "tree edge {e:?} not drawn: {tree:?}"
        );
    }
    assert!(!tree.iter().any(|(f, _)| f == other), "{tree:?}");
    let legend = tags(&dom, "li")
        .into_iter()
        .find(|a| has_class(a, "stream"))
        .expect("a legend entry");
    assert_eq!(legend["data-video"], video);
    assert_eq!(legend["data-colour"], colour);
    assert_eq!(legend["data-servers"], "S1");

    let (_, json) = http_get(map_addr(), "/map.json", Duration::from_secs(5)).unwrap();
    let c = &model().counters;
    eprintln!(
        "reports: {} accepted, {} bytes on average; /map.json {} bytes",
        c.reports_accepted,
        c.report_bytes / c.reports_accepted.max(1),
        json.len()
    );

    let (coloured, red) = screenshot(&dir, "before", &colour);
    // The legend swatch alone is 28x12; the tree's three edges are far more.
    assert!(
        coloured > 1500,
        "only {coloured} pixels of the stream colour"
    );
    assert!(red < 100, "{red} red pixels with nobody dead");

    // Kill the relay on the tree.
    let killed_at = Instant::now();
    daemons.get_mut(relay_name.as_str()).unwrap().kill();
    let m = model_until("the relay dead and the tree through the other relay", |m| {
        relay(m, &video).as_deref() == Some(other)
            && m.nodes
                .iter()
                .any(|n| n.name == relay_name && n.state == "dead")
    });
    eprintln!(
        "map shows {relay_name} dead and the tree through {other} {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(
        m.events
            .iter()
            .any(|e| e.kind == "dead" && e.node == relay_name),
        "{:?}",
        m.events
    );

    let dom = chromium(&dir, &["--dump-dom"]);
    let page = Dom::parse(&dom);
    let dead = page.node(&relay_name);
    assert_eq!(dead["data-state"], "dead", "{dead:?}");
    assert!(has_class(dead, "dead"));
    assert!(dom.contains("DEAD ("), "no DEAD label");
    let tree = page.tree(&video);
    assert!(
        tree.contains(&("S1".into(), other.into())) && tree.contains(&(other.into(), "O3".into())),
        "tree not through {other}: {tree:?}"
    );
    assert!(
        !tree
            .iter()
            .any(|(f, t)| *f == relay_name || *t == relay_name),
        "tree still through the dead {relay_name}: {tree:?}"
    );
    // O3 just moved to the other relay: it wears the halo of a recent failover (or switch).
    let halo = tags(&dom, "circle")
        .into_iter()
        .filter(|a| has_class(a, "halo"))
        .map(|a| a["data-event"].clone())
        .collect::<Vec<_>>();
    let o3 = page.node("O3");
    assert!(
        has_class(o3, "recent-failover") || has_class(o3, "recent-switch"),
        "{o3:?}"
    );
    assert!(!halo.is_empty(), "no halo drawn");
    let links = page.links();
    assert!(
        links.contains(&(relay_name.clone(), "S1".into(), "down".into())),
        "{links:?}"
    );
    let events: Vec<_> = tags(&dom, "li")
        .into_iter()
        .filter(|a| has_class(a, "event"))
        .collect();
    assert!(
        events
            .iter()
            .any(|a| a["data-kind"] == "dead" && a["data-node"] == relay_name),
        "{events:?}"
    );

    let (coloured, red) = screenshot(&dir, "after", &colour);
    assert!(
        coloured > 1500,
        "only {coloured} pixels of the stream colour"
    );
    // The dead node is a red disc (radius 22 in map units).
    assert!(red > 500, "only {red} red pixels with {relay_name} dead");
    if let Ok(keep) = std::env::var("LIVEMAP_KEEP_SHOT") {
        let _ = std::fs::copy(dir.path("after.png"), keep);
    }

    consumer.stop().ok();
    drop(daemons);
    drop(boot);
}

/// Send `bytes` as one sealed report over a real handshake with `psk`; Ok when the handshake
/// passed.
fn send_report(to: SocketAddr, psk: &overlayd::keyfile::Psk, bytes: &[u8]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(to)
            .await
            .map_err(|e| e.to_string())?;
        let conn = overlayd::net::transport::handshake(
            stream,
            overlayd::crypto::Side::Initiator,
            psk,
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (_r, mut w) = conn.into_split();
        w.send(bytes::BytesMut::from(bytes))
            .await
            .map_err(|e| e.to_string())?;
        // Let the bootstrapper read it before we close.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    })
}

/// A bootstrapper of `topo` on `ip` with the live map (page 7790, reports 7791), up.
fn map_bootstrapper(topo: &Path, ip: &str, key: &Path) -> Daemon {
    let boot = Daemon::spawn(
        "bootstrapper",
        &[
            "--role",
            "bootstrapper",
            "--topology",
            topo.to_str().unwrap(),
            "--bind",
            ip,
            "--map-port",
            "7790",
            "--report-port",
            "7791",
            "--key-file",
            key.to_str().unwrap(),
        ],
    );
    boot.wait_for(&["live map on"], WAIT);
    boot
}

#[test]
fn map_ports_refuse_bad_input_and_count_it() {
    let dir = TempDir::new("livemap-bad");
    let net = "127.75.2";
    let topo = dir.path("t.json");
    std::fs::write(
        &topo,
        format!(
            r#"{{ "S1": {{ "neighbours": ["{net}.2"], "addresses": ["{net}.1"] }},
                 "O1": {{ "neighbours": ["{net}.1"], "addresses": ["{net}.2"] }} }}"#
        ),
    )
    .unwrap();
    let key = dir.path("k");
    keygen(&key);
    let boot_ip = format!("{net}.100");

    // The map needs the key: a missing key file is a one-line error, not a panic.
    let (code, _, err) = common::run(&[
        "--role",
        "bootstrapper",
        "--topology",
        topo.to_str().unwrap(),
        "--bind",
        &boot_ip,
        "--map-port",
        "7790",
        "--key-file",
        dir.path("missing").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("live map needs the overlay key"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let boot = map_bootstrapper(&topo, &boot_ip, &key);
    let page: SocketAddr = format!("{boot_ip}:7790").parse().unwrap();
    let reports: SocketAddr = format!("{boot_ip}:7791").parse().unwrap();
    let get = |target: &str| http_get(page, target, Duration::from_secs(5)).unwrap();

    let (code, body) = get("/");
    assert_eq!(code, 200);
    assert!(body.contains("<svg id=\"map\""), "{body}");
    assert_eq!(get("/nope").0, 404);
    // A request head over 8 KiB is refused (431; the server may close before reading the
    // rest, so the answer can be lost to a reset: the count below is what must hold).
    {
        use std::io::{Read, Write};
        let mut big = std::net::TcpStream::connect(page).unwrap();
        let _ = write!(big, "GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
    }
    let m: MapModel = serde_json::from_str(&get("/map.json").1).unwrap();
    let refused = |why: &str| m.counters.http_refused.get(why).copied();
    assert_eq!(
        (refused("not_found"), refused("too_large")),
        (Some(1), Some(1)),
        "{:?}",
        m.counters
    );
    // Nobody reported yet: the topology is drawn, every node unknown, the link unknown.
    assert_eq!(m.nodes.len(), 2);
    assert!(
        m.nodes.iter().all(|n| n.state == "unknown"),
        "{:?}",
        m.nodes
    );
    assert_eq!(m.links.len(), 1);
    assert_eq!(m.links[0].state, "unknown");

    // Wrong key: refused at the handshake, counted.
    let stranger = overlayd::keyfile::Psk::generate();
    assert!(send_report(reports, &stranger, b"{}").is_err());
    // Right key, garbage inside: counted as malformed.
    let psk = overlayd::keyfile::load(&key).unwrap().psk;
    send_report(reports, &psk, b"not a report").unwrap();
    // Right key, a good report: O1 reported (and, its connection closed, is shown exited).
    let good = overlayd::wire::report::Report {
        version: overlayd::wire::report::REPORT_VERSION,
        name: "O1".into(),
        role: "node".into(),
        seq: 0,
        listen: format!("{net}.2:7701"),
        ..Default::default()
    };
    send_report(reports, &psk, &overlayd::wire::report::encode_report(&good)).unwrap();
    let m = model_at(page, |m| {
        m.counters.auth_refused == 1
            && m.counters.reports_malformed == 1
            && m.nodes.iter().any(|n| n.name == "O1" && n.state == "dead")
    });
    assert_eq!(m.counters.reports_accepted, 1, "{:?}", m.counters);
    let o1 = m.nodes.iter().find(|n| n.name == "O1").unwrap();
    assert!(o1.report_age_ms.is_some(), "{o1:?}");
    assert_eq!(o1.state, "dead", "{o1:?}");
    assert_eq!(o1.dead_reason.as_deref(), Some("exited"), "{o1:?}");
    assert_eq!(
        m.nodes.iter().find(|n| n.name == "S1").unwrap().state,
        "unknown"
    );
    boot.wait_for(&["report refused", "handshake failed"], WAIT);
    boot.wait_for(&["malformed report"], WAIT);
}

fn model_at(page: SocketAddr, f: impl Fn(&MapModel) -> bool) -> MapModel {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(page, "/map.json", Duration::from_secs(5)).unwrap();
        let m: MapModel = serde_json::from_str(&body).unwrap();
        if f(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The legend entry of `video` in a dumped page: (its `data-servers`, its text).
fn legend_of(dom: &str, video: &str) -> (String, String) {
    let start = dom
        .find(&format!("<li class=\"stream\" data-video=\"{video}\""))
        .unwrap_or_else(|| panic!("no legend entry for {video}: {dom}"));
    let li = &dom[start..];
    let li = &li[..li.find("</li>").unwrap()];
    let attrs = tags(li, "li").remove(0);
    let text = li[li.rfind('>').unwrap() + 1..].to_string();
    (attrs.get("data-servers").cloned().unwrap_or_default(), text)
}

/// Two servers offer "alpha"; real report connections carry what the daemons would report.
/// First the consumer on O3 is fed from S2 (S2 → O2 → O3); then O3 fails over to S1 (S1 → O1
/// → O3) while S2 still runs its source towards O2, which no longer feeds anyone. The model
/// and the page's legend name the server the consumer is fed from at each moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legend_names_the_server_a_stream_comes_from_now() {
    if lacking(
        "legend_names_the_server_a_stream_comes_from_now",
        &[CHROMIUM],
    ) {
        return;
    }
    use overlayd::wire::report::{encode_report, Report, ReportNeighbour, ReportStream};
    let dir = TempDir::new("livemap-servers");
    let net = "127.75.3";
    let a = |i: u8| format!("{net}.{i}");
    let topo = dir.path("t.json");
    std::fs::write(
        &topo,
        format!(
            r#"{{
  "S1": {{ "neighbours": ["{o1}", "{o2}"], "addresses": ["{s1}"] }},
  "S2": {{ "neighbours": ["{o2}"], "addresses": ["{s2}"] }},
  "O1": {{ "neighbours": ["{s1}", "{o3}"], "addresses": ["{o1}"] }},
  "O2": {{ "neighbours": ["{s1}", "{s2}", "{o3}"], "addresses": ["{o2}"] }},
  "O3": {{ "neighbours": ["{o1}", "{o2}"], "addresses": ["{o3}"], "edge": true }}
}}"#,
            s1 = a(1),
            s2 = a(9),
            o1 = a(2),
            o2 = a(3),
            o3 = a(4)
        ),
    )
    .unwrap();
    let key = dir.path("k");
    keygen(&key);
    let boot_ip = a(100);
    let boot = map_bootstrapper(&topo, &boot_ip, &key);
    let page: SocketAddr = format!("{boot_ip}:7790").parse().unwrap();
    let psk = overlayd::keyfile::load(&key).unwrap().psk;

    // (name, address index, neighbours) of every reporter.
    let devices: [(&str, u8, &[&str]); 5] = [
        ("S1", 1, &["O1", "O2"]),
        ("S2", 9, &["O2"]),
        ("O1", 2, &["S1", "O3"]),
        ("O2", 3, &["S1", "S2", "O3"]),
        ("O3", 4, &["O1", "O2"]),
    ];
    let index = |n: &str| devices.iter().find(|d| d.0 == n).unwrap().1;
    let stream = |parent: Option<&str>, children: &[&str], state: &str| ReportStream {
        video: "alpha".into(),
        server: None,
        parent: parent.map(str::to_string),
        children: children.iter().map(|c| c.to_string()).collect(),
        local: 0,
        state: state.into(),
        failovers: 0,
        last_gap_ms: None,
    };
    // What each device reports about "alpha" in each phase.
    let before: Vec<Vec<ReportStream>> = vec![
        vec![],
        vec![stream(None, &["O2"], "source")],
        vec![],
        vec![stream(Some("S2"), &["O3"], "streaming")],
        vec![stream(Some("O2"), &["TC"], "streaming")],
    ];
    let after: Vec<Vec<ReportStream>> = vec![
        vec![stream(None, &["O1"], "source")],
        vec![stream(None, &["O2"], "source")],
        vec![stream(Some("S1"), &["O3"], "streaming")],
        vec![stream(Some("S2"), &[], "streaming")],
        vec![stream(Some("O1"), &["TC"], "streaming")],
    ];
    // One report connection per device, kept open (a closed one means the daemon exited),
    // each sending its device's report of the current phase every 300 ms.
    let phase = std::sync::Arc::new(std::sync::Mutex::new(before));
    let mut senders = Vec::new();
    for (i, (name, ip, nbs)) in devices.iter().enumerate() {
        let stream = tokio::net::TcpStream::connect(format!("{boot_ip}:7791"))
            .await
            .unwrap();
        let conn = overlayd::net::transport::handshake(
            stream,
            overlayd::crypto::Side::Initiator,
            &psk,
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        let (r, mut w) = conn.into_split();
        let phase = phase.clone();
        let report = Report {
            version: overlayd::wire::report::REPORT_VERSION,
            name: name.to_string(),
            role: if name.starts_with('S') {
                "server"
            } else {
                "node"
            }
            .into(),
            listen: format!("{}:7701", a(*ip)),
            neighbours: nbs
                .iter()
                .map(|n| ReportNeighbour {
                    name: n.to_string(),
                    addr: format!("{}:7701", a(index(n))),
                    state: "up".into(),
                })
                .collect(),
            ..Default::default()
        };
        senders.push(tokio::spawn(async move {
            let _keep = r;
            for seq in 0.. {
                let mut rep = report.clone();
                rep.seq = seq;
                rep.streams = phase.lock().unwrap()[i].clone();
                if w.send(bytes::BytesMut::from(&encode_report(&rep)[..]))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }

    let servers_now = |want: &'static [&'static str]| {
        let dir = &dir;
        async move {
            let m = tokio::task::spawn_blocking(move || {
                model_at(page, |m| {
                    m.streams
                        .iter()
                        .any(|s| s.video == "alpha" && s.servers == want)
                })
            })
            .await
            .unwrap();
            let dom = chromium_at(dir, page, &["--dump-dom"]);
            (m, legend_of(&dom, "alpha"))
        }
    };
    let (_, (servers, text)) = servers_now(&["S2"]).await;
    println!("legend before the failover: {text}");
    assert_eq!(servers, "S2");
    assert!(text.starts_with("alpha from S2:"), "{text}");

    *phase.lock().unwrap() = after;
    let (m, (servers, text)) = servers_now(&["S1"]).await;
    println!("legend after the failover: {text}");
    let alpha = m.streams.iter().find(|s| s.video == "alpha").unwrap();
    // The tree still shows S2's lingering branch; the legend names the server that feeds.
    assert!(
        alpha.tree.iter().any(|e| e.from == "S2" && e.to == "O2"),
        "{alpha:?}"
    );
    assert_eq!(servers, "S1", "{text}");
    assert!(text.starts_with("alpha from S1:"), "{text}");
    for s in senders {
        s.abort();
    }
    drop(boot);
}
