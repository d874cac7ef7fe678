//! The emulation tools: `overlayd core-scenario` writes CORE scenario files from topology
//! files, `overlayd netns` builds a topology out of network namespaces, runs it and injects
//! faults. The work is in [`crate::emulate`]; here are the options and what each command prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::emulate::core;
use crate::emulate::netns::{self, RunState, UpOptions};
use crate::topology::{self, LinkParams};

#[derive(Args, Debug)]
pub struct CoreScenarioArgs {
    /// Topology JSON files (default: every non-loopback file in topology/).
    pub topology: Vec<PathBuf>,
    /// Where to write the scenarios.
    #[arg(long, default_value = "core-scenarios")]
    pub out_dir: PathBuf,
    /// Which files to write.
    #[arg(long, value_enum, default_value_t = CoreFormat::Both)]
    pub format: CoreFormat,
    /// How routers get routes: `static` (routes computed here, in each node's start script;
    /// runs on a stock CORE) or `ospf` (CORE's zebra/OSPF services; needs OSPF MDR).
    #[arg(long, value_enum, default_value_t = CoreRouting::Static)]
    pub routing: CoreRouting,
    /// The overlayd binary on the CORE machine (a name on PATH or an absolute path).
    #[arg(long, default_value = "overlayd")]
    pub bin: String,
    /// Video folder of servers on the CORE machine.
    #[arg(long, default_value = "/usr/local/share/overlayd/videos")]
    pub videos: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CoreRouting {
    Static,
    Ospf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CoreFormat {
    Xml,
    Imn,
    Both,
}

impl CoreScenarioArgs {
    /// Writes the scenario files of every topology and names each file written.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let files = if self.topology.is_empty() {
            core::scenario_topologies(Path::new("topology")).context("cannot list topology/")?
        } else {
            self.topology
        };
        let opts = core::CoreOptions {
            bin: self.bin,
            videos: self.videos,
            ..Default::default()
        };
        let format = match self.format {
            CoreFormat::Xml => core::Format::Xml,
            CoreFormat::Imn => core::Format::Imn,
            CoreFormat::Both => core::Format::Both,
        };
        let routing = match self.routing {
            CoreRouting::Static => core::Routing::Static,
            CoreRouting::Ospf => core::Routing::Ospf,
        };
        for f in files {
            let s = core::generate_file(&f, &opts, routing).map_err(|e| anyhow::anyhow!(e))?;
            for p in core::write(&s, &self.out_dir, format)
                .with_context(|| format!("cannot write into {}", self.out_dir.display()))?
            {
                println!("wrote {}", p.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args, Debug)]
pub struct NetnsArgs {
    /// Run id or run directory (default: the only run under the base directory).
    #[arg(long, global = true, value_name = "ID|DIR")]
    pub run: Option<String>,
    #[command(subcommand)]
    pub cmd: NetnsCmd,
}

#[derive(Subcommand, Debug)]
pub enum NetnsCmd {
    /// Build a topology as namespaces and start the bootstrapper and the overlay daemons.
    Up(UpArgs),
    /// Print the plan of a topology (namespaces, addresses, routes, commands); needs no root.
    Plan {
        topology: PathBuf,
        /// Run id to use in names.
        #[arg(long, default_value = "RUN")]
        run_id: String,
    },
    /// Which devices run, which links are cut.
    Status,
    /// kill -9 a device (its whole process group).
    Kill { device: String },
    /// Stop a device gracefully (SIGTERM: a relay or an edge first lets its children and
    /// clients move elsewhere; SIGKILL after its --drain-ms + 3 s), so it logs its final
    /// counters.
    Stop { device: String },
    /// Freeze a device (SIGSTOP to its process group).
    Hang { device: String },
    /// Unfreeze a hung device (SIGCONT).
    Resume { device: String },
    /// Start a device that is not running (e.g. a client, or after kill).
    Start { device: String },
    /// Kill a device if it runs, then start it again with the same arguments.
    Restart { device: String },
    /// Cut the link between two devices silently (no RST, no ICMP).
    Cut { a: String, b: String },
    /// Restore a cut link.
    Restore { a: String, b: String },
    /// Silence a device: drop everything to and from its own addresses (no RST, no ICMP)
    /// while its host keeps forwarding for others (needs nftables).
    Isolate { device: String },
    /// Undo `isolate`.
    Rejoin { device: String },
    /// Show or change a shaped link while the run goes on: B is the device at the other end
    /// of a point-to-point link, or a subnet of A (A's attachment to a LAN). Options not given
    /// keep their value; none shows the link.
    Link(LinkArgs),
    /// The shaper process of a run (started by `up`; not for direct use).
    #[command(hide = true)]
    Shaper,
    /// Run a command inside a device's namespace.
    Exec {
        device: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Tear a run down: kill its processes, delete its namespaces (works from any state).
    Down {
        /// Tear down every run of this emulator (every namespace named ovld-*).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct LinkArgs {
    pub a: String,
    pub b: String,
    /// One-way delay, e.g. 40ms, 500us.
    #[arg(long, value_parser = topology::parse_duration_str)]
    pub delay: Option<Duration>,
    /// Extra delay drawn in 0..JITTER per packet (never reorders).
    #[arg(long, value_parser = topology::parse_duration_str)]
    pub jitter: Option<Duration>,
    /// Random loss, e.g. 2%.
    #[arg(long, value_parser = topology::parse_percent_str)]
    pub loss: Option<f64>,
    /// Random duplication, e.g. 1%.
    #[arg(long, value_parser = topology::parse_percent_str)]
    pub duplicate: Option<f64>,
    /// Rate limit, e.g. 10Mbit; `none` removes it.
    #[arg(long, value_parser = parse_rate_or_none)]
    pub rate: Option<RateLimit>,
    /// Reset every parameter first (then apply the options given).
    #[arg(long)]
    pub ideal: bool,
}

/// `--rate`: a rate or `none`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit(Option<u64>);

fn parse_rate_or_none(s: &str) -> Result<RateLimit, String> {
    if s == "none" {
        return Ok(RateLimit(None));
    }
    topology::parse_rate_str(s).map(|r| RateLimit(Some(r)))
}

impl LinkArgs {
    fn changes(&self) -> bool {
        self.ideal
            || self.delay.is_some()
            || self.jitter.is_some()
            || self.loss.is_some()
            || self.duplicate.is_some()
            || self.rate.is_some()
    }

    fn apply(&self, p: &mut LinkParams) {
        if self.ideal {
            *p = LinkParams::default();
        }
        if let Some(d) = self.delay {
            p.delay = d;
        }
        if let Some(j) = self.jitter {
            p.jitter = j;
        }
        if let Some(l) = self.loss {
            p.loss = l;
        }
        if let Some(d) = self.duplicate {
            p.duplicate = d;
        }
        if let Some(RateLimit(r)) = self.rate {
            p.rate = r;
        }
    }
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Topology JSON file (every device must list its "addresses").
    pub topology: PathBuf,
    /// Run id (lower-case letters and digits, at most 8); random by default.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Video folder for servers (a sub-folder named after the server wins if present).
    #[arg(long)]
    pub videos: Option<PathBuf>,
    /// overlayd binary to run (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Build the network only; start nothing.
    #[arg(long)]
    pub no_start: bool,
    /// Also start the clients (give them --client-args, e.g. a video and a recording).
    #[arg(long)]
    pub clients: bool,
    /// Extra arguments for servers, nodes and edges (one string, split at spaces).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub daemon_args: Option<String>,
    /// How edges send video to clients (`--relay` of nodes and edges); their default
    /// when not given.
    #[arg(long, value_parser = ["native", "ffmpeg"])]
    pub relay: Option<String>,
    /// Extra arguments for clients; {name} and {run_dir} are replaced.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub client_args: Option<String>,
    /// Put every link through the shaper, so any link can be changed with `netns link`
    /// (without it, only links with parameters in the topology are shaped).
    #[arg(long)]
    pub shape_all: bool,
}

impl From<UpArgs> for UpOptions {
    fn from(a: UpArgs) -> UpOptions {
        let split = |s: Option<String>| -> Vec<String> {
            s.map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        UpOptions {
            topology: a.topology,
            run_id: a.run_id,
            videos: a.videos,
            bin: a.bin,
            no_start: a.no_start,
            clients: a.clients,
            daemon_args: split(a.daemon_args),
            relay: a.relay,
            client_args: split(a.client_args),
            shape_all: a.shape_all,
        }
    }
}

impl NetnsArgs {
    /// Runs one `overlayd netns` command and says what it did.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let code = self.run_command()?;
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }

    fn run_command(self) -> anyhow::Result<i32> {
        let load = |run: Option<&str>| -> anyhow::Result<RunState> {
            netns::require_root()?;
            RunState::load(&netns::resolve_run(run)?)
        };
        let r = self.run.as_deref();
        match self.cmd {
            NetnsCmd::Up(up) => {
                let mut opts = UpOptions::from(up);
                // `--run ID` names the new run too (a run directory does not).
                opts.run_id = opts.run_id.or(self.run.filter(|r| !r.contains('/')));
                netns::up(opts)?
            }
            NetnsCmd::Plan { topology, run_id } => netns::plan(&topology, &run_id)?,
            NetnsCmd::Status => print!("{}", load(r)?.status()),
            NetnsCmd::Kill { device } => {
                let pid = load(r)?.kill(&device)?;
                println!("killed {device} (pid {pid}, SIGKILL to its process group)");
            }
            NetnsCmd::Stop { device } => {
                if load(r)?.stop(&device)? {
                    println!("stopped {device} (SIGTERM)");
                } else {
                    println!("{device} did not stop in time after SIGTERM: killed (SIGKILL)");
                }
            }
            NetnsCmd::Hang { device } => {
                let pid = load(r)?.signal(&device, "STOP")?;
                println!("hung {device} (pid {pid}, SIGSTOP)");
            }
            NetnsCmd::Resume { device } => {
                let pid = load(r)?.signal(&device, "CONT")?;
                println!("resumed {device} (pid {pid}, SIGCONT)");
            }
            NetnsCmd::Start { device } => {
                let pid = load(r)?.start(&device)?;
                println!("started {device} (pid {pid})");
            }
            NetnsCmd::Restart { device } => {
                let pid = load(r)?.restart(&device)?;
                println!("restarted {device} (pid {pid})");
            }
            NetnsCmd::Cut { a, b } => {
                load(r)?.cut(&a, &b, true)?;
                println!("cut {a} – {b} (silently: frames are dropped)");
            }
            NetnsCmd::Restore { a, b } => {
                load(r)?.cut(&a, &b, false)?;
                println!("restored {a} – {b}");
            }
            NetnsCmd::Isolate { device } => {
                load(r)?.isolate(&device, true)?;
                println!(
                    "isolated {device} (silently: its own packets are dropped, it still forwards)"
                );
            }
            NetnsCmd::Rejoin { device } => {
                load(r)?.isolate(&device, false)?;
                println!("{device} rejoined the network");
            }
            NetnsCmd::Link(l) => {
                let mut st = load(r)?;
                if l.changes() {
                    let now = st.set_link(&l.a, &l.b, |p| l.apply(p))?;
                    println!("link {now}");
                } else {
                    println!("link {}", st.link(&l.a, &l.b)?);
                }
            }
            NetnsCmd::Shaper => load(r)?.run_shaper()?,
            NetnsCmd::Exec { device, cmd } => return load(r)?.exec(&device, &cmd),
            NetnsCmd::Down { all } => netns::down(r, all)?,
        }
        Ok(0)
    }
}
