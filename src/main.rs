//! The `overlayd` binary: command line, logging and role dispatch.
//!
//! `overlayd --role ROLE [options]` runs one device of the overlay; `overlayd keygen` and
//! `overlayd check-topology` are tools. Each role has its own option set (and its own
//! `--help`), so the role is picked out of the arguments first and the rest is parsed by that
//! role's parser. Every argument error is one line on stderr and exit status 2.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use overlayd::net::bootstrap_client::DEFAULT_BOOTSTRAP_PORT;
use overlayd::roles;

const DEFAULT_OVERLAY_PORT: u16 = 7701;
const DEFAULT_EDGE_PORT: u16 = 7702;
const DEFAULT_CLIENT_PORT: u16 = 7703;
const DEFAULT_KEY_FILE: &str = "overlayd.key";

const ROLES_HELP: &str = "\
Roles (run `overlayd --role ROLE --help` for each role's options):
  bootstrapper  serves each device its entry of a topology JSON file
  server        streams the videos of a folder into the overlay
  node          overlay relay; an edge if the topology says \"edge\": true
  edge          overlay relay forced to be an edge (serves clients over UDP)
  client        asks an edge for a video and plays or records it

Examples:
  overlayd keygen --out overlayd.key
  overlayd check-topology topology/loopback-diamond.json
  overlayd --role bootstrapper --topology topology/loopback-diamond.json --bind 127.0.1.100
  overlayd --role node --name O1 --bootstrap 127.0.1.100 --bind 127.0.1.1
  overlayd status --node 127.0.1.1          # what O1 knows (its control endpoint)
  overlayd trace VIDEO --from 127.0.1.1     # the video's tree below O1, hop by hop
  overlayd --role bootstrapper --topology T.json --bind 127.0.1.100 --map-port 7790
                                            # live map at http://127.0.1.100:7790/

Default ports: bootstrapper 7700/tcp, overlay 7701/tcp, edge 7702/udp, client 7703/udp,
control endpoint 7704/tcp (plain HTTP, loopback only unless --control-bind), live map
reports 7710/tcp (bootstrap port + 10, encrypted with the overlay key).
Logging: --log-level or RUST_LOG (e.g. RUST_LOG=overlayd=debug).";

/// Top-level command line (no role given).
#[derive(Parser, Debug)]
#[command(
    name = "overlayd",
    version,
    about = "Application-layer multicast overlay for live video",
    after_help = ROLES_HELP
)]
struct Cli {
    /// Which device to run (see the list below).
    #[arg(long, value_enum)]
    role: Option<RoleName>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum RoleName {
    Bootstrapper,
    Server,
    Node,
    Edge,
    Client,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Write a new random pre-shared overlay key (hex, mode 0600).
    Keygen {
        /// Where to write it.
        #[arg(long, default_value = DEFAULT_KEY_FILE)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check a topology file: print errors and warnings, exit non-zero on errors.
    CheckTopology {
        /// The topology JSON file.
        file: PathBuf,
    },
    /// Show what a running daemon knows: neighbours, parent and route tables, grandfathers,
    /// link counters, edge clients (from its control endpoint).
    Status {
        /// The daemon's control endpoint: IP or IP:PORT (default port 7704).
        #[arg(long, value_name = "ADDR[:PORT]", default_value = "127.0.0.1")]
        node: String,
        /// Print the raw JSON snapshot instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Trace a video's distribution tree from a node down, with the delay of every hop.
    Trace {
        /// The video to trace.
        video: String,
        /// Control endpoint of the node to start from (usually the server): IP or IP:PORT.
        #[arg(long, value_name = "NODE_ADDR[:PORT]", default_value = "127.0.0.1")]
        from: String,
        /// How long to collect answers, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        wait_ms: u64,
        /// Print the raw JSON answer instead of a tree.
        #[arg(long)]
        json: bool,
    },
    /// Generate CORE scenario files (CORE 9 .xml, legacy .imn) from topology files.
    CoreScenario {
        /// Topology JSON files (default: every non-loopback file in topology/).
        topology: Vec<PathBuf>,
        /// Where to write the scenarios.
        #[arg(long, default_value = "core-scenarios")]
        out_dir: PathBuf,
        /// Which files to write.
        #[arg(long, value_enum, default_value_t = CoreFormat::Both)]
        format: CoreFormat,
        /// How routers get routes: `static` (routes computed here, in each node's start script;
        /// runs on a stock CORE) or `ospf` (CORE's zebra/OSPF services; needs OSPF MDR).
        #[arg(long, value_enum, default_value_t = CoreRouting::Static)]
        routing: CoreRouting,
        /// The overlayd binary on the CORE machine (a name on PATH or an absolute path).
        #[arg(long, default_value = "overlayd")]
        bin: String,
        /// Video folder of servers on the CORE machine.
        #[arg(long, default_value = "/usr/local/share/overlayd/videos")]
        videos: String,
    },
    /// Network-namespace emulator: build a topology, run it, inject faults (needs root).
    Netns(overlayd::emulate::netns::NetnsArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum CoreRouting {
    Static,
    Ospf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum CoreFormat {
    Xml,
    Imn,
    Both,
}

/// Logging options shared by every role.
#[derive(Args, Debug, Clone)]
struct LogArgs {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
}

/// Options every overlay device (server, node, edge) shares.
#[derive(Args, Debug, Clone)]
struct OverlayArgs {
    /// This device's name in the topology file.
    #[arg(long)]
    name: String,
    /// Bootstrapper address, IP or IP:PORT (default port 7700).
    #[arg(long, value_name = "IP[:PORT]")]
    bootstrap: String,
    /// Local address to bind (and to dial from). Default `::`: every IPv4 and IPv6 address
    /// (0.0.0.0 on a host without IPv6), as in CORE. On one machine give each device its own
    /// 127.x address.
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// TCP port for overlay links, the same on every device unless the topology says IP:PORT.
    #[arg(long, default_value_t = DEFAULT_OVERLAY_PORT)]
    overlay_port: u16,
    /// Pre-shared overlay key (see `overlayd keygen`).
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    key_file: PathBuf,
    /// Keepalive ping interval in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    ping_ms: u64,
    /// Hysteresis: switch parent only for a path better by this fraction (0.2 = 20%).
    #[arg(long, default_value_t = 0.2, value_parser = parse_margin)]
    switch_margin: f64,
    /// ... and only once the better path has stayed better this long (milliseconds), so a
    /// delay spike of a loaded host does not move streams back and forth.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    switch_sustain_ms: u64,
    /// A neighbour silent this long (milliseconds) is dead.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    dead_ms: u64,
    /// TCP port of the control endpoint (plain HTTP: /status, /metrics, /trace); 0 turns it off.
    #[arg(long, default_value_t = overlayd::net::control::DEFAULT_CONTROL_PORT)]
    control_port: u16,
    /// Address of the control endpoint. Default: the --bind address when it is a loopback
    /// address, else 127.0.0.1. It has no authentication: never give an address the overlay
    /// (or anyone untrusted) can reach.
    #[arg(long, value_name = "IP")]
    control_bind: Option<IpAddr>,
    /// Send a state report to the bootstrapper's live map every this many milliseconds
    /// (100 to 10000; encrypted with the overlay key); 0 turns reporting off. Keep it well
    /// under the bootstrapper's --map-dead-ms.
    #[arg(long, default_value_t = 1000, value_parser = parse_report_interval)]
    report_interval: u64,
    /// The bootstrapper's report port (default: the bootstrap port + 10).
    #[arg(long, value_name = "PORT")]
    report_port: Option<u16>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role bootstrapper",
    about = "Serve each device its topology entry"
)]
struct BootstrapperArgs {
    /// Topology JSON file; edits are picked up without a restart.
    #[arg(long)]
    topology: PathBuf,
    /// Address to listen on (default `::`: every IPv4 and IPv6 address).
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// TCP port to listen on.
    #[arg(long, default_value_t = DEFAULT_BOOTSTRAP_PORT)]
    port: u16,
    /// How often to look for edits of the topology file, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    reload_ms: u64,
    /// Serve the live map (a web page of the overlay, its trees and failures) on this TCP port;
    /// off when absent. Daemons report to the report port (--report-port).
    #[arg(long, value_name = "PORT")]
    map_port: Option<u16>,
    /// Address of the map page (default: --bind). Plain HTTP without authentication: use a
    /// management or loopback address.
    #[arg(long, value_name = "IP")]
    map_bind: Option<IpAddr>,
    /// TCP port where daemons' reports arrive (encrypted with the overlay key); default: --port + 10.
    #[arg(long, value_name = "PORT")]
    report_port: Option<u16>,
    /// Overlay key, to authenticate reports (with --map-port).
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    key_file: PathBuf,
    /// A daemon whose last report is older than this (milliseconds) is shown dead.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    map_dead_ms: u64,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role server",
    about = "Stream the videos of a folder into the overlay"
)]
struct ServerArgs {
    #[command(flatten)]
    overlay: OverlayArgs,
    /// Folder of video files to stream.
    #[arg(long)]
    videos: PathBuf,
    /// How files become live streams: ffmpeg child, built-in paced reader (.ts only), or auto
    /// (ffmpeg when installed).
    #[arg(long, value_enum, default_value_t = SourceArg::Auto)]
    source: SourceArg,
    /// Flood interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    flood_ms: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum SourceArg {
    Auto,
    Ffmpeg,
    Paced,
}

fn parse_max_clients(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (1..=1_000_000).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of clients between 1 and 1000000"
        )),
    }
}

fn parse_report_interval(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == 0 || (100..=10_000).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} ms: give 0 (off) or 100 to 10000"))
    }
}

fn parse_margin(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0 <= margin < 1"))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role node",
    about = "Overlay relay (an edge if the topology says so)"
)]
struct NodeArgs {
    #[command(flatten)]
    overlay: OverlayArgs,
    /// UDP port for clients, used when this node is an edge.
    #[arg(long, default_value_t = DEFAULT_EDGE_PORT)]
    edge_port: u16,
    /// How an edge sends video to its clients: an ffmpeg child per client (raw MPEG-TS) or the
    /// built-in relay (numbered datagrams). Default: ffmpeg when it is installed, else native.
    #[arg(long, value_enum)]
    relay: Option<RelayArg>,
    /// Hitless redundancy for every stream consumed here or below: keep a second parent on
    /// another path and merge both by sequence number (costs one extra feed of bandwidth in).
    #[arg(long)]
    redundant: bool,
    /// Hitless redundancy for these videos only (comma-separated names).
    #[arg(long, value_name = "A,B", value_parser = parse_video_list)]
    redundant_videos: Option<Vec<String>>,
    /// Bound of an edge's GOP cache per video, in bytes (the chunks since the last keyframe,
    /// replayed to a joining client so its player starts at once); 0 turns the cache off.
    #[arg(long, default_value_t = overlayd::service::edge::EdgeConfig::DEFAULT_GOP_CACHE_BYTES)]
    gop_cache_bytes: usize,
    /// Most client sessions an edge serves at once; more are refused as busy.
    #[arg(long, default_value_t = overlayd::service::edge::EdgeConfig::DEFAULT_MAX_SESSIONS,
          value_parser = parse_max_clients)]
    max_clients: usize,
}

fn parse_video_list(s: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = s.split(',').map(|v| v.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err(format!("'{s}' has an empty video name"));
    }
    Ok(names)
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum RelayArg {
    Ffmpeg,
    Native,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Player {
    Ffplay,
    None,
}

#[derive(Parser, Debug)]
#[command(
    name = "overlayd --role client",
    about = "Watch or record a video from an edge"
)]
struct ClientArgs {
    /// This device's name in the topology file.
    #[arg(long)]
    name: String,
    /// Bootstrapper address, IP or IP:PORT (default port 7700).
    #[arg(long, value_name = "IP[:PORT]")]
    bootstrap: String,
    /// Video to play; without it the client lists the videos and asks.
    #[arg(long)]
    video: Option<String>,
    /// Edge to use: `auto` (best measured) or an address.
    #[arg(long, default_value = "auto")]
    edge: String,
    /// Player for the stream.
    #[arg(long, value_enum, default_value_t = Player::Ffplay)]
    player: Player,
    /// Record the received MPEG-TS stream to this file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Stop after this many seconds (headless runs).
    #[arg(long)]
    duration: Option<f64>,
    /// Local address to bind (default `::`: every IPv4 and IPv6 address).
    #[arg(long, default_value_t = IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Local UDP port the edge streams to.
    #[arg(long, default_value_t = DEFAULT_CLIENT_PORT)]
    client_port: u16,
    /// The edges' UDP port.
    #[arg(long, default_value_t = DEFAULT_EDGE_PORT)]
    edge_port: u16,
    /// With --video: write the final statistics as JSON to this file.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Local port (on 127.0.0.1) ffplay listens on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    player_port: u16,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined, never a backtrace.
            eprintln!("overlayd: {:#}", e);
            ExitCode::from(1)
        }
    }
}

/// Parse with clap; argument errors become one line and exit status 2.
fn parse<T: Parser>(args: Vec<OsString>) -> Result<T, ExitCode> {
    match T::command().try_get_matches_from(args) {
        Ok(m) => T::from_arg_matches(&m).map_err(|e| arg_error(&e)),
        Err(e) => Err(arg_error(&e)),
    }
}

fn arg_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("overlayd: {first} (see --help)");
            ExitCode::from(2)
        }
    }
}

/// Take `--role X` / `--role=X` out of the arguments.
fn take_role(args: &mut Vec<OsString>) -> Result<Option<String>, ExitCode> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if a == "--" {
            break;
        }
        if a == "--role" {
            if i + 1 >= args.len() {
                eprintln!(
                    "overlayd: --role needs a value: bootstrapper, server, node, edge or client"
                );
                return Err(ExitCode::from(2));
            }
            let v = args[i + 1].to_string_lossy().into_owned();
            args.drain(i..i + 2);
            return Ok(Some(v));
        }
        if let Some(v) = a.strip_prefix("--role=") {
            let v = v.to_string();
            args.remove(i);
            return Ok(Some(v));
        }
        i += 1;
    }
    Ok(None)
}

fn run(mut args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    let role = match take_role(&mut args) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let Some(role) = role else {
        let cli: Cli = match parse(args) {
            Ok(c) => c,
            Err(code) => return Ok(code),
        };
        return match cli.command {
            Some(Tool::Keygen { out, force }) => {
                overlayd::keyfile::write_new(&out, force)
                    .with_context(|| format!("cannot write key file '{}'", out.display()))?;
                println!(
                    "wrote a new overlay key to {} (mode 0600); copy it to every overlay host",
                    out.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Some(Tool::CheckTopology { file }) => {
                let ok = overlayd::topology::run_check(&file, &mut std::io::stdout());
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            Some(Tool::Status { node, json }) => status_command(&node, json),
            Some(Tool::Trace {
                video,
                from,
                wait_ms,
                json,
            }) => trace_command(&video, &from, wait_ms, json),
            Some(Tool::CoreScenario {
                topology,
                out_dir,
                format,
                routing,
                bin,
                videos,
            }) => {
                use overlayd::emulate::core;
                let files = if topology.is_empty() {
                    core::scenario_topologies(std::path::Path::new("topology"))
                        .context("cannot list topology/")?
                } else {
                    topology
                };
                let opts = core::CoreOptions {
                    bin,
                    videos,
                    ..Default::default()
                };
                let format = match format {
                    CoreFormat::Xml => core::Format::Xml,
                    CoreFormat::Imn => core::Format::Imn,
                    CoreFormat::Both => core::Format::Both,
                };
                let routing = match routing {
                    CoreRouting::Static => core::Routing::Static,
                    CoreRouting::Ospf => core::Routing::Ospf,
                };
                for f in files {
                    let s =
                        core::generate_file(&f, &opts, routing).map_err(|e| anyhow::anyhow!(e))?;
                    for p in core::write(&s, &out_dir, format)
                        .with_context(|| format!("cannot write into {}", out_dir.display()))?
                    {
                        println!("wrote {}", p.display());
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Some(Tool::Netns(args)) => {
                let code = overlayd::emulate::netns::main(args)?;
                Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
            }
            None => {
                eprintln!("overlayd: give --role ROLE or a command (see --help)");
                Ok(ExitCode::from(2))
            }
        };
    };
    let role = match RoleName::from_str(&role, true) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "overlayd: unknown role '{role}': expected bootstrapper, server, node, edge or client"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let role_name = format!("{role:?}").to_lowercase();
    args[0] = format!("overlayd --role {role_name}").into();

    match role {
        RoleName::Bootstrapper => {
            let a: BootstrapperArgs = match parse(args) {
                Ok(a) => a,
                Err(code) => return Ok(code),
            };
            init_logging(&a.log);
            let mut cfg =
                roles::bootstrapper::BootstrapperConfig::new(a.topology, (a.bind, a.port).into());
            cfg.reload_interval = Duration::from_millis(a.reload_ms);
            if let Some(map_port) = a.map_port {
                let report_port = match a.report_port {
                    Some(p) => p,
                    None => a
                        .port
                        .checked_add(overlayd::wire::report::REPORT_PORT_OFFSET)
                        .context("--port + 10 is past 65535: give --report-port")?,
                };
                let key = overlayd::keyfile::load(&a.key_file)
                    .context("the live map needs the overlay key to authenticate reports")?;
                for w in &key.warnings {
                    tracing::warn!("{w}");
                }
                cfg.map = Some(overlayd::net::map_server::MapConfig {
                    http: (a.map_bind.unwrap_or(a.bind), map_port).into(),
                    report: (a.bind, report_port).into(),
                    psk: key.psk,
                    dead_after: Duration::from_millis(a.map_dead_ms),
                });
            }
            runtime()?.block_on(async {
                let b = roles::bootstrapper::bind(cfg).await?;
                b.run(roles::shutdown_signal()).await;
                anyhow::Ok(())
            })?;
        }
        RoleName::Server => {
            let a: ServerArgs = match parse(args) {
                Ok(a) => a,
                Err(code) => return Ok(code),
            };
            init_logging(&a.overlay.log);
            let mut cfg = overlay_config(&a.overlay, roles::overlay::Kind::Server)?;
            cfg.videos = Some(a.videos);
            cfg.source = match a.source {
                SourceArg::Auto => roles::overlay::SourcePreference::Auto,
                SourceArg::Ffmpeg => roles::overlay::SourcePreference::Ffmpeg,
                SourceArg::Paced => roles::overlay::SourcePreference::Paced,
            };
            cfg.flood_interval = Duration::from_millis(a.flood_ms);
            runtime()?.block_on(roles::overlay::run(cfg))?;
        }
        RoleName::Node | RoleName::Edge => {
            let a: NodeArgs = match parse(args) {
                Ok(a) => a,
                Err(code) => return Ok(code),
            };
            init_logging(&a.overlay.log);
            let kind = if role == RoleName::Edge {
                roles::overlay::Kind::Edge
            } else {
                roles::overlay::Kind::Node
            };
            let mut cfg = overlay_config(&a.overlay, kind)?;
            cfg.edge_port = a.edge_port;
            cfg.relay = match a.relay {
                None => roles::overlay::RelayMode::Auto,
                Some(RelayArg::Ffmpeg) => roles::overlay::RelayMode::Ffmpeg,
                Some(RelayArg::Native) => roles::overlay::RelayMode::Native,
            };
            cfg.redundant = a.redundant;
            cfg.redundant_videos = a.redundant_videos.unwrap_or_default();
            cfg.gop_cache_bytes = a.gop_cache_bytes;
            cfg.max_clients = a.max_clients;
            runtime()?.block_on(roles::overlay::run(cfg))?;
        }
        RoleName::Client => {
            let a: ClientArgs = match parse(args) {
                Ok(a) => a,
                Err(code) => return Ok(code),
            };
            init_logging(&a.log);
            let bootstrap = parse_bootstrap(&a.bootstrap)?;
            let duration = match a.duration.map(Duration::try_from_secs_f64).transpose() {
                Ok(d) => d,
                Err(_) => {
                    eprintln!("overlayd: --duration must be a non-negative number of seconds");
                    return Ok(ExitCode::from(2));
                }
            };
            let cfg = roles::client::ClientConfig {
                name: a.name,
                bootstrap,
                video: a.video,
                edge: a.edge,
                player: a.player == Player::Ffplay,
                record: a.record,
                duration,
                bind: a.bind,
                client_port: a.client_port,
                edge_port: a.edge_port,
                stats_json: a.stats_json,
                player_port: a.player_port,
            };
            return runtime()?
                .block_on(roles::client::run(cfg))
                .map(|()| ExitCode::SUCCESS);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `overlayd status`: GET /status, print tables or the JSON.
fn status_command(node: &str, json: bool) -> anyhow::Result<ExitCode> {
    use overlayd::net::control;
    let addr = control::parse_node_addr(node, control::DEFAULT_CONTROL_PORT)
        .map_err(|e| anyhow::anyhow!("bad --node: {e}"))?;
    let (code, body) =
        control::http_get(addr, "/status", Duration::from_secs(5)).map_err(anyhow::Error::msg)?;
    if code != 200 {
        anyhow::bail!("{addr} answered {code}: {}", body.trim());
    }
    if json {
        println!("{}", body.trim_end());
    } else {
        let s: overlayd::observe::NodeStatus = serde_json::from_str(&body)
            .with_context(|| format!("{addr} sent a status this version cannot read"))?;
        print!("{}", s.render_tables());
    }
    Ok(ExitCode::SUCCESS)
}

/// `overlayd trace`: GET /trace on the starting node, print the tree or the JSON.
fn trace_command(video: &str, from: &str, wait_ms: u64, json: bool) -> anyhow::Result<ExitCode> {
    use overlayd::net::control;
    let addr = control::parse_node_addr(from, control::DEFAULT_CONTROL_PORT)
        .map_err(|e| anyhow::anyhow!("bad --from: {e}"))?;
    let target = format!(
        "/trace?video={}&wait_ms={wait_ms}",
        control::percent_encode(video)
    );
    let (code, body) = control::http_get(addr, &target, Duration::from_millis(wait_ms + 5000))
        .map_err(anyhow::Error::msg)?;
    if code != 200 {
        anyhow::bail!("{addr} answered {code}: {}", body.trim());
    }
    if json {
        println!("{}", body.trim_end());
    } else {
        let t: overlayd::observe::trace::TraceResult = serde_json::from_str(&body)
            .with_context(|| format!("{addr} sent a trace this version cannot read"))?;
        print!("{}", overlayd::observe::trace::render_trace(&t));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_bootstrap(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    overlayd::net::bootstrap_client::parse_bootstrap_addr(s, DEFAULT_BOOTSTRAP_PORT)
        .with_context(|| format!("bad --bootstrap '{s}'"))
}

fn overlay_config(
    a: &OverlayArgs,
    kind: roles::overlay::Kind,
) -> anyhow::Result<roles::overlay::OverlayRoleConfig> {
    Ok(roles::overlay::OverlayRoleConfig {
        name: a.name.clone(),
        kind,
        bootstrap: parse_bootstrap(&a.bootstrap)?,
        bind: a.bind,
        control: overlayd::net::control::control_addr(a.bind, a.control_bind, a.control_port),
        overlay_port: a.overlay_port,
        key_file: a.key_file.clone(),
        liveness: overlayd::overlay::LivenessConfig {
            ping_interval: Duration::from_millis(a.ping_ms),
            dead_after: Duration::from_millis(a.dead_ms),
            ..Default::default()
        },
        videos: None,
        source: roles::overlay::SourcePreference::Auto,
        switch_margin: a.switch_margin,
        switch_sustain: Duration::from_millis(a.switch_sustain_ms),
        flood_interval: Duration::from_secs(1),
        edge_port: DEFAULT_EDGE_PORT,
        relay: roles::overlay::RelayMode::Auto,
        redundant: false,
        redundant_videos: Vec::new(),
        gop_cache_bytes: overlayd::service::edge::EdgeConfig::DEFAULT_GOP_CACHE_BYTES,
        max_clients: overlayd::service::edge::EdgeConfig::DEFAULT_MAX_SESSIONS,
        report_interval: (a.report_interval > 0).then(|| Duration::from_millis(a.report_interval)),
        report_port: a.report_port,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
