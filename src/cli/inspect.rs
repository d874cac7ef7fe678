//! The tools that ask a running daemon through its control endpoint: `overlayd status` (what a
//! node knows, as tables or JSON) and `overlayd trace` (a video's tree below a node).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::net::control;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The daemon's control endpoint: IP or IP:PORT (default port 7704).
    #[arg(long, value_name = "ADDR[:PORT]", default_value = "127.0.0.1")]
    pub node: String,
    /// Print the raw JSON snapshot instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// GET /status, print tables or the JSON.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let addr = control::parse_node_addr(&self.node, control::DEFAULT_CONTROL_PORT)
            .map_err(|e| anyhow::anyhow!("bad --node: {e}"))?;
        let (code, body) = control::http_get(addr, "/status", Duration::from_secs(5))
            .map_err(anyhow::Error::msg)?;
        if code != 200 {
            anyhow::bail!("{addr} answered {code}: {}", body.trim());
        }
        if self.json {
            println!("{}", body.trim_end());
        } else {
            let s: crate::overlay::NodeStatus = serde_json::from_str(&body)
                .with_context(|| format!("{addr} sent a status this version cannot read"))?;
            print!("{}", s.render_tables());
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The video to trace.
    pub video: String,
    /// Control endpoint of the node to start from (usually the server): IP or IP:PORT.
    #[arg(long, value_name = "NODE_ADDR[:PORT]", default_value = "127.0.0.1")]
    pub from: String,
    /// How long to collect answers, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub wait_ms: u64,
    /// Print the raw JSON answer instead of a tree.
    #[arg(long)]
    pub json: bool,
}

impl TraceArgs {
    /// GET /trace on the starting node, print the tree or the JSON.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let addr = control::parse_node_addr(&self.from, control::DEFAULT_CONTROL_PORT)
            .map_err(|e| anyhow::anyhow!("bad --from: {e}"))?;
        let target = format!(
            "/trace?video={}&wait_ms={}",
            control::percent_encode(&self.video),
            self.wait_ms
        );
        let (code, body) =
            control::http_get(addr, &target, Duration::from_millis(self.wait_ms + 5000))
                .map_err(anyhow::Error::msg)?;
        if code != 200 {
            anyhow::bail!("{addr} answered {code}: {}", body.trim());
        }
        if self.json {
            println!("{}", body.trim_end());
        } else {
            let t: crate::overlay::status::TraceResult = serde_json::from_str(&body)
                .with_context(|| format!("{addr} sent a trace this version cannot read"))?;
            print!("{}", crate::overlay::status::render_trace(&t));
        }
        Ok(ExitCode::SUCCESS)
    }
}
