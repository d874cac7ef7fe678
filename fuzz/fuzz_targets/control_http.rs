//! The control endpoint's HTTP server: arbitrary bytes sent as a request over an in-memory
//! connection to hyper and the endpoint's handler (with a node loop that answers traces). The
//! server never panics; it answers with one well-formed HTTP/1.x status line or closes without
//! an answer; only a GET is ever answered 200.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use overlayd::net::control::{ControlEndpoint, ANSWER_WITHIN};
use overlayd::net::http::{serve_connection, Refusals};
use overlayd::net::node_driver::{ControlPort, ControlRequest};
use overlayd::observe::NodeStatus;
use overlayd::wire::overlay::TraceHop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (_status_tx, status) = watch::channel(Arc::new(NodeStatus {
            name: "O1".into(),
            ..Default::default()
        }));
        let (requests, mut node_loop) = mpsc::channel(4);
        // A node loop that starts every trace and answers it with one path at once.
        tokio::spawn(async move {
            while let Some(ControlRequest::Trace {
                started, answers, ..
            }) = node_loop.recv().await
            {
                let _ = started.send(Ok(1));
                let hop = TraceHop {
                    name: "O1".into(),
                    at_us: 1,
                };
                let _ = answers.send(vec![hop]).await;
            }
        });
        let ctx = ControlEndpoint::new(ControlPort { status, requests }, None, Arc::default());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_connection(
            server,
            ctx,
            Arc::new(Refusals::default()),
            ANSWER_WITHIN,
        ));
        // The server may close before taking everything (an early refusal): that is fine.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        served.await.expect("the connection task does not panic");
        if out.is_empty() {
            return;
        }
        let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
        // An HTTP/1.0 request is answered in HTTP/1.0.
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.x status line: {head:?}"));
        assert!((200..600).contains(&status), "status {status}");
        if status == 200 {
            // Empty lines before the request line are allowed (RFC 9112, 2.2).
            let start = data
                .iter()
                .position(|b| !b"\r\n".contains(b))
                .unwrap_or(data.len());
            assert!(
                data[start..].starts_with(b"GET "),
                "200 for a request that is not a GET"
            );
        }
    });
});
