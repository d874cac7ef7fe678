//! The control endpoint's HTTP request-head parser: never panics on any bytes; what it accepts
//! has a path starting at `/`, and an incomplete head (no blank line) is never accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::net::control::parse_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = parse_request(data) {
        assert!(req.path.starts_with('/'), "path {:?}", req.path);
        assert!(
            data.windows(2).any(|w| w == b"\n\n") || data.windows(4).any(|w| w == b"\r\n\r\n"),
            "accepted a head without its blank line"
        );
        let _ = req.param("video");
    }
});
