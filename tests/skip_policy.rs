//! The one skip policy of `common::prereq`, exercised for real: this test binary re-runs its own
//! test as a child process (with `ROLE_ENV` set, the test plays a test that needs a tool no
//! machine has) under several values of `CI`, and checks that under CI the child fails with the
//! one-line message and elsewhere passes, prints its `SKIPPED` line and appends it to the file
//! `OVERLAYD_TEST_SKIP_FILE` names (and only prints without that variable).

mod common;

use std::process::{Command, Output};

use common::prereq::{lacking, Need, SKIP_FILE_ENV};
use common::TempDir;

const TEST: &str = "a_missing_prerequisite_fails_under_ci_and_is_reported_as_skipped_elsewhere";
const ROLE_ENV: &str = "OVERLAYD_SKIP_POLICY_CHILD";
const WHY: &str = "overlayd-no-such-tool is not installed";
const HOW: &str =
    "install the Debian package no-such-package (apt-get install no-such-package; bin/test installs it)";

/// This test in the child role: `CI` as given (None: unset), the skip file as given (None: unset).
fn child(ci: Option<&str>, skip_file: Option<&std::path::Path>) -> (Output, String) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "1")
        .env_remove("CI")
        .env_remove(SKIP_FILE_ENV);
    if let Some(v) = ci {
        c.env("CI", v);
    }
    if let Some(f) = skip_file {
        c.env(SKIP_FILE_ENV, f);
    }
    let o = c.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o, all)
}

#[test]
fn a_missing_prerequisite_fails_under_ci_and_is_reported_as_skipped_elsewhere() {
    if std::env::var_os(ROLE_ENV).is_some() {
        // The child: a test that needs a tool no machine has.
        if lacking(
            TEST,
            &[Need::Tool("overlayd-no-such-tool", "no-such-package")],
        ) {
            return;
        }
        panic!("{TEST}: overlayd-no-such-tool was found on the PATH");
    }
    let dir = TempDir::new("skip-policy");
    let marker = format!("SKIPPED {TEST}: {WHY}; {HOW}");

    // Under CI: the test fails, with the one-line message, and records nothing.
    for ci in ["true", "TRUE", "1"] {
        let file = dir.path(&format!("ci-{ci}.txt"));
        let (o, all) = child(Some(ci), Some(&file));
        assert!(!o.status.success(), "CI={ci}: the child passed:\n{all}");
        assert!(
            all.contains(&format!("{TEST}: cannot run here: {WHY}; {HOW}")),
            "CI={ci}: no failure message:\n{all}"
        );
        assert!(!all.contains("SKIPPED"), "CI={ci}:\n{all}");
        assert!(!file.exists(), "CI={ci}: a skip was recorded");
    }

    // Elsewhere: the test passes, prints the marker and appends it to the skip file.
    let file = dir.path("skipped.txt");
    for ci in [None, Some(""), Some("false"), Some("0")] {
        let (o, all) = child(ci, Some(&file));
        assert!(o.status.success(), "CI={ci:?}: the child failed:\n{all}");
        assert!(all.contains(&marker), "CI={ci:?}: no marker:\n{all}");
    }
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines, format!("{marker}\n").repeat(4), "{}", file.display());

    // Without the variable (plain `cargo test`): printing only.
    let (o, all) = child(None, None);
    assert!(o.status.success(), "{all}");
    assert!(all.contains(&marker), "{all}");
}
