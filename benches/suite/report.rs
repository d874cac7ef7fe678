//! Statistics (median, percentiles) and the BENCHMARKS.md writer: the run (command, start,
//! commit, whether the tree was clean), the machine, a summary of the goal verdicts, then one
//! table per metric with its verdicts and notes. The file holds only what this run measured.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; NaN when empty.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    pct(samples, 50.0)
}

pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NAN, f64::max)
}

/// One metric's table.
pub struct Table {
    pub title: String,
    pub goal: String,
    pub method: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Verdicts against the goal, each computed from this run's figures.
    pub verdicts: Vec<Verdict>,
    /// Remarks on the figures (coarse clocks, trials not measured, what would improve them).
    pub notes: Vec<String>,
}

/// Whether a figure of this run meets its goal, and the figure in words.
pub struct Verdict {
    pub met: bool,
    pub what: String,
}

impl Table {
    pub fn new(title: &str, goal: &str, method: &str, headers: &[&str]) -> Table {
        Table {
            title: title.into(),
            goal: goal.into(),
            method: method.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            verdicts: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        println!("  {}", cells.join(" | "));
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        println!("  note: {n}");
        self.notes.push(n);
    }

    /// A verdict against the goal: `met` is computed by the caller from this run's figures and
    /// `what` states them; the file says "meets" or "misses" from `met` alone.
    pub fn verdict(&mut self, met: bool, what: impl Into<String>) {
        let v = Verdict {
            met,
            what: what.into(),
        };
        println!("  {}: {}", word(v.met), v.what);
        self.verdicts.push(v);
    }
}

fn word(met: bool) -> &'static str {
    if met {
        "meets the goal"
    } else {
        "misses the goal"
    }
}

/// The run that wrote a file: its command, start, commit and whether the tree was clean.
pub struct Run {
    pub command: String,
    pub date: String,
    pub commit: String,
    /// `git status --porcelain` was empty when the run started and when it ended.
    pub clean: bool,
}

impl Run {
    /// Taken when the run starts; [`Report::finish`] checks the tree again at the end.
    pub fn start(command: String) -> Run {
        Run {
            command,
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: sh("git", &["rev-parse", "--short", "HEAD"]),
            clean: tree_clean(),
        }
    }
}

/// No change to tracked files and no untracked file outside .gitignore.
pub fn tree_clean() -> bool {
    Command::new("git")
        .args(["status", "--porcelain"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
}

pub struct Report {
    run: Run,
    tables: Vec<Table>,
}

impl Report {
    pub fn new(run: Run) -> Report {
        Report {
            run,
            tables: Vec::new(),
        }
    }

    pub fn start(&self, title: &str) {
        println!("\n== {title}");
    }

    pub fn add(&mut self, t: Table) {
        if t.verdicts.is_empty() {
            println!("  (no verdict against the goal: {})", t.goal);
        }
        self.tables.push(t);
    }

    /// Writes every table of this run, and nothing else, to `out`.
    pub fn finish(&mut self, elapsed: Duration, out: &Path) {
        let run = &mut self.run;
        let now_commit = sh("git", &["rev-parse", "--short", "HEAD"]);
        // Files the run itself left untracked do not change what was measured.
        let tracked_clean = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty());
        run.clean = run.clean && tracked_clean && now_commit == run.commit;
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Written by `{}` (the suite is `benches/suite/`, run as `cargo bench --bench suite`); \
             nothing in this file is typed by hand, and every verdict is computed from the figures \
             of this run. What was changed because of earlier runs, with their figures, is in \
             BENCHMARKS-HISTORY.md (hand-written). Figures are medians (and percentiles where \
             asked) of several runs on a shared, noisy machine; compare the ratios to the \
             baselines measured in the same run rather than absolute numbers. Benchmarks never \
             run in CI and never fail on timing.\n",
            run.command
        );
        let _ = writeln!(
            md,
            "- command: `{}` ({:.0} s, {:.0} min)",
            run.command,
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(md, "- started: {}", run.date);
        let _ = writeln!(
            md,
            "- commit: {}{}",
            run.commit,
            if run.clean {
                " (clean tree)"
            } else {
                " (with uncommitted changes, or HEAD moved during the run)"
            }
        );
        let _ = writeln!(md, "- machine: {}", machine());
        let _ = writeln!(md, "- rustc: {}", sh("rustc", &["--version"]));
        let _ = writeln!(md, "- socat: {}", socat_version());
        let _ = writeln!(md, "- ffmpeg: {}", ffmpeg_version());

        let met = self
            .tables
            .iter()
            .flat_map(|t| &t.verdicts)
            .filter(|v| v.met)
            .count();
        let all = self.tables.iter().map(|t| t.verdicts.len()).sum::<usize>();
        let _ = writeln!(md, "\n## Goals\n");
        let _ = writeln!(md, "{met} of {all} verdicts meet their goal in this run.\n");
        let _ = writeln!(md, "| section | goal | verdict |");
        let _ = writeln!(md, "|---|---|---|");
        for t in &self.tables {
            if t.verdicts.is_empty() {
                let _ = writeln!(md, "| {} | {} | no verdict |", t.title, t.goal);
            }
            for v in &t.verdicts {
                let _ = writeln!(
                    md,
                    "| {} | {} | {}: {} |",
                    t.title,
                    t.goal,
                    word(v.met),
                    v.what
                );
            }
        }
        for t in &self.tables {
            let _ = writeln!(md, "\n## {}\n", t.title);
            let _ = writeln!(md, "Goal: {}. {}\n", t.goal, t.method);
            let _ = writeln!(md, "| {} |", t.headers.join(" | "));
            let _ = writeln!(
                md,
                "|{}",
                t.headers.iter().map(|_| "---|").collect::<String>()
            );
            for r in &t.rows {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
            if !t.verdicts.is_empty() || !t.notes.is_empty() {
                md.push('\n');
            }
            for v in &t.verdicts {
                let _ = writeln!(md, "- **{}**: {}", word(v.met), v.what);
            }
            for n in &t.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(out, md) {
            eprintln!("cannot write {}: {e}", out.display());
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn ffmpeg_version() -> String {
    sh("ffmpeg", &["-version"])
        .lines()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn socat_version() -> String {
    let v = sh("socat", &["-V"]);
    v.lines()
        .find(|l| l.contains("socat version"))
        .map(|l| l.trim().to_string())
        .unwrap_or(v)
}

/// Cores, CPU model and the crypto-relevant flags from /proc/cpuinfo.
pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("?");
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    let wanted = [
        "aes",
        "pclmulqdq",
        "avx",
        "avx2",
        "vaes",
        "vpclmulqdq",
        "sha_ni",
    ];
    let have: Vec<String> = wanted
        .iter()
        .map(|w| {
            if flags.contains(w) {
                w.to_string()
            } else {
                format!("no {w}")
            }
        })
        .collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {model}; CPU flags: {}", have.join(", "))
}

/// utime + stime of a process or thread from its /proc stat file, in seconds.
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The command name may hold spaces; fields start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    sh("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0)
}

/// VmRSS of a process in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn f1(x: f64) -> String {
    format!("{x:.1}")
}

pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}
