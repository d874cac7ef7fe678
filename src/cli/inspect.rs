//! The tools that ask a running daemon through its control endpoint: `overlayd status` (what a
//! node knows, as tables or JSON) and `overlayd trace` (a video's tree below a node).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::de::DeserializeOwned;

use crate::net::control;
use crate::observe::trace::{render_trace, TraceResult};

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
        let body = get(addr, "/status", Duration::from_secs(5))?;
        show(
            addr,
            &body,
            self.json,
            "status",
            |s: crate::observe::NodeStatus| s.render_tables(),
        )
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
        let body = get(addr, &target, Duration::from_millis(self.wait_ms + 5000))?;
        show(addr, &body, self.json, "trace", |t: TraceResult| {
            render_trace(&t)
        })
    }
}

/// GET `target` from a control endpoint; the body of a 200 answer, anything else an error.
fn get(addr: SocketAddr, target: &str, timeout: Duration) -> anyhow::Result<String> {
    let (code, body) = control::http_get(addr, target, timeout).map_err(anyhow::Error::msg)?;
    if code != 200 {
        anyhow::bail!("{addr} answered {code}: {}", body.trim());
    }
    Ok(body)
}

/// Print the JSON answer as it came, or read it as a `T` (a `what` from `addr`) and print
/// `render` of it.
fn show<T: DeserializeOwned>(
    addr: SocketAddr,
    body: &str,
    json: bool,
    what: &str,
    render: impl FnOnce(T) -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", body.trim_end());
    } else {
        let value: T = serde_json::from_str(body)
            .with_context(|| format!("{addr} sent a {what} this version cannot read"))?;
        print!("{}", render(value));
    }
    Ok(ExitCode::SUCCESS)
}
