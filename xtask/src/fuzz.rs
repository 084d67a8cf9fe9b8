//! `cargo xtask fuzz [--smoke | --long | --time SECONDS] [TARGET...]`: the cargo-fuzz targets of
//! `fuzz/` (docs/assurance.md), one after the other.
//!
//! - `--smoke` (CI): each target for 60 s.
//! - `--long`: each target for 30 minutes.
//! - `--time N`: each target for N seconds.
//! - `--runs N`: each target stops after N executions (or its time, whichever comes first).
//! - `--jobs N`: N libFuzzer processes of each target at once on its one corpus, each with
//!   the limits above (so `--runs` counts per process); their executions are summed.
//!
//! Installs cargo-fuzz with the nightly toolchain when `cargo +nightly fuzz` is missing (a clean
//! machine has only the toolchains). Builds with debug assertions, so arithmetic overflow panics
//! and counts as a crash, and without a sanitizer: the crates fuzzed forbid `unsafe`, and
//! AddressSanitizer would cost two thirds of the executions. Each run keeps its corpus in `fuzz/corpus/TARGET` and writes crashes to
//! `fuzz/artifacts/TARGET`, and replays `fuzz/regressions/TARGET` (inputs that once crashed)
//! first; a run that finds a crash, a leak, a timeout or an out-of-memory
//! fails. The last line of each run (`stat::number_of_executed_units`) is printed as
//! `xtask fuzz: TARGET: N executions in S s, 0 crashes`.

use crate::{run, workspace_root};
use std::process::Command;

/// The targets, in the order they run.
pub const TARGETS: &[&str] = &["page_list", "msg_arg", "smc_surface", "mediator"];

/// How the targets are built: optimized, with debug assertions (overflow checks), no sanitizer.
const BUILD_ARGS: &[&str] = &["-O", "--debug-assertions", "--sanitizer", "none"];

/// Limits of every run: an input taking over 10 s is a hang, over 2 GiB of memory a leak.
const LIBFUZZER_ARGS: &[&str] = &[
    "-rss_limit_mb=2048",
    "-timeout=10",
    "-max_len=4096",
    "-print_final_stats=1",
];

/// Runs the fuzz command with `args` (after `fuzz`).
pub fn main(args: &[String]) -> Result<(), String> {
    let mut seconds: u64 = 60;
    let mut runs: Option<u64> = None;
    let mut jobs: usize = 1;
    let mut targets: Vec<String> = Vec::new();
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        match a.as_str() {
            "--smoke" => seconds = 60,
            "--long" => seconds = 30 * 60,
            "--time" => {
                seconds = iter
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--time needs a number of seconds")?;
            }
            "--runs" => {
                runs = Some(
                    iter.next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--runs needs a number")?,
                );
            }
            "--jobs" => {
                jobs = iter
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&j| j > 0)
                    .ok_or("--jobs needs a number of processes")?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => {
                return Err(format!(
                    "fuzz: unknown argument {other} (targets: {})",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    run(nightly()
        .current_dir(&fuzz_dir)
        .args(["fuzz", "build"])
        .args(BUILD_ARGS))?;
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
        let mut command = nightly();
        command
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run"])
            .args(BUILD_ARGS)
            .arg(target)
            .arg(&corpus);
        // Inputs that once crashed (each also a regression test in its crate) run first.
        let regressions = fuzz_dir.join("regressions").join(target);
        if regressions.is_dir() {
            command.arg(&regressions);
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(LIBFUZZER_ARGS);
        if let Some(runs) = runs {
            command.arg(format!("-runs={runs}"));
        }
        let dict = fuzz_dir.join("dict").join(format!("{target}.dict"));
        if dict.exists() {
            command.arg(format!("-dict={}", dict.display()));
        }
        let shown = format!("{command:?}");
        eprintln!(
            "xtask: running {shown}{}",
            if jobs > 1 {
                format!(" in {jobs} processes at once (one corpus)")
            } else {
                String::new()
            }
        );
        let started = std::time::Instant::now();
        // Each process's log is read as it comes: libFuzzer's `pulse` lines (at every power of
        // two executions) are shown so that a long run can be followed, and the whole log is
        // kept for the final statistics and, on failure, its tail.
        let results: Vec<Result<(std::process::ExitStatus, String), String>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..jobs)
                    .map(|job| {
                        let mut command = clone_command(&command);
                        let shown = &shown;
                        scope.spawn(move || run_logged(&mut command, shown, target, job, started))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("a log reader panicked".into()))
                    })
                    .collect()
            });
        let mut total = 0u64;
        for result in results {
            let (status, log) = result?;
            let execs = log.lines().rev().find_map(|l| {
                l.strip_prefix("stat::number_of_executed_units:")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
            if !status.success() {
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!("{}", tail.join("\n"));
                return Err(format!(
                    "fuzz target {target} failed ({}) after {:.0} s: see fuzz/artifacts/{target}",
                    status,
                    started.elapsed().as_secs_f64()
                ));
            }
            total += execs.ok_or(format!("no execution count in the log of {target}"))?;
        }
        eprintln!(
            "xtask fuzz: {target}: {total} executions in {:.0} s{}, 0 crashes",
            started.elapsed().as_secs_f64(),
            if jobs > 1 {
                format!(" ({jobs} processes)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// A copy of `command` (program, arguments, directory and environment changes).
fn clone_command(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        copy.current_dir(dir);
    }
    for (key, value) in command.get_envs() {
        match value {
            Some(v) => copy.env(key, v),
            None => copy.env_remove(key),
        };
    }
    copy
}

/// Runs one libFuzzer process, showing its `pulse` lines; returns its status and its log.
fn run_logged(
    command: &mut Command,
    shown: &str,
    target: &str,
    job: usize,
    started: std::time::Instant,
) -> Result<(std::process::ExitStatus, String), String> {
    use std::io::BufRead;
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    let mut log = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.map_err(|e| format!("cannot read the log of {target}: {e}"))?;
            if line.contains("pulse") {
                eprintln!(
                    "xtask fuzz: {target}[{job}] ({:.0} s): {line}",
                    started.elapsed().as_secs_f64()
                );
            }
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for {shown}: {e}"))?;
    Ok((status, log))
}

fn nightly() -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    command
}

/// `cargo +nightly install cargo-fuzz --locked` unless `cargo +nightly fuzz --version` works.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = nightly()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it with the nightly toolchain");
    run(nightly().args(["install", "cargo-fuzz", "--locked"]))
}
