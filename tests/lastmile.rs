//! Loss recovery on the last mile with real daemons: a bootstrapper, a server and an edge in
//! one network namespace, clients in another, one veth between them, and nftables dropping
//! 5 % of what the clients' namespace receives (see `common::lastmile`). Two clients watch the
//! same video side by side: one with recovery (the default budget), one with `--latency-ms 0`
//! (no recovery), so the test shows both that the loss is real and that recovery removes it.
//!
//! Needs root, nft and ffmpeg: without them it fails under CI and is reported as skipped
//! elsewhere (`common::prereq`).

mod common;

use std::time::Duration;

use common::lastmile::{cc_loss, decode_errors, read_stats, LastMile, CLIENT_HOSTS};
use common::prereq::{lacking, Need, FFMPEG, IP, NFT};
use common::{repo_videos, some_video, TempDir};

const SECS: f64 = 12.0;

#[test]
fn five_percent_random_loss_on_the_client_link_is_recovered_within_the_budget() {
    let test = "five_percent_random_loss_on_the_client_link_is_recovered_within_the_budget";
    if lacking(test, &[Need::Root, IP, NFT, FFMPEG]) {
        return;
    }
    let link = LastMile::new("t", 1).unwrap_or_else(|why| panic!("{test}: {why}"));
    let dir = TempDir::new("lastmile");
    let _overlay = link.start_overlay(&dir, &repo_videos(), &["C1", "C2"], &["--relay", "native"]);
    assert!(link.set_loss(5), "nft rule");
    let video = some_video();
    let (rec1, rec2) = (dir.path("c1.ts"), dir.path("c2.ts"));
    let (st1, st2) = (dir.path("c1.json"), dir.path("c2.json"));
    let mut c1 = link.client("C1", CLIENT_HOSTS[0], &video, SECS, &rec1, &st1, &[]);
    let mut c2 = link.client(
        "C2",
        CLIENT_HOSTS[1],
        &video,
        SECS,
        &rec2,
        &st2,
        &["--latency-ms", "0"],
    );
    let limit = Duration::from_secs_f64(SECS + 30.0);
    for c in [&mut c1, &mut c2] {
        let code = c.wait_exit(limit);
        assert_eq!(code, Some(0), "{} log:\n{}", c.name, c.log().join("\n"));
    }
    let (with, without) = (read_stats(&st1), read_stats(&st2));
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    let (p1, cc1) = cc_loss(&std::fs::read(&rec1).unwrap());
    let (p2, cc2) = cc_loss(&std::fs::read(&rec2).unwrap());
    println!(
        "5 % loss, {video}, {SECS} s: with recovery (budget {} ms): {} chunks, {} missing, {} \
         holes unrecovered, {} recovered of {} retransmissions, {} NACKs, longest hold {:.1} ms, \
         TS packets lost by CC {cc1} of {p1}; without recovery: {} chunks, {} missing in {} \
         holes, TS packets lost by CC {cc2} of {p2}",
        n(&with, "latency_budget_ms"),
        n(&with, "chunks"),
        n(&with, "missing_chunks"),
        n(&with, "unrecovered_holes"),
        n(&with, "recovered"),
        n(&with, "retransmits_received"),
        n(&with, "nacks_sent"),
        n(&with, "recovery_delay_max_us") as f64 / 1000.0,
        n(&without, "chunks"),
        n(&without, "missing_chunks"),
        n(&without, "gaps"),
    );
    // The loss is real: the client without recovery misses about 5 % of the chunks.
    let chunks = n(&without, "chunks");
    assert!(chunks > 200, "too little video: {without}");
    assert!(
        n(&without, "missing_chunks") * 100 >= chunks,
        "the link lost less than 1 %: {without}"
    );
    assert_eq!(n(&without, "nacks_sent"), 0);
    // With recovery: everything in order, nothing (or next to nothing) missing.
    assert!(n(&with, "chunks") > 200, "{with}");
    assert_eq!((n(&with, "duplicates"), n(&with, "reorderings")), (0, 0));
    assert!(n(&with, "recovered") >= 5, "{with}");
    assert!(
        n(&with, "missing_chunks") * 1000 <= n(&with, "chunks"),
        "more than 0.1 % of the chunks missing: {with}"
    );
    assert!(cc1 * 1000 <= p1, "TS packets lost: {cc1} of {p1}");
    // Added delay within the budget (a timer fires a little late on a loaded host).
    let budget_us = n(&with, "latency_budget_ms") * 1000;
    assert!(
        n(&with, "recovery_delay_max_us") <= budget_us + 50_000,
        "{with}"
    );
    // What arrives decodes.
    let (e1, e2) = (decode_errors(&rec1), decode_errors(&rec2));
    println!("ffmpeg decode errors: with recovery {e1:?}, without {e2:?}");
    let e1 = e1.expect("ffmpeg runs");
    assert!(e1 <= 2, "decode errors with recovery: {e1}");
}
