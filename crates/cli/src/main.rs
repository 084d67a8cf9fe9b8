//! The `teeshm` command: the demonstration, random stress with the agreement checker, a look
//! inside the system after a scenario, and replay of scenario files.

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use teeshm_sim::report::SystemReport;
use teeshm_sim::scenario::{self, Op, Runner};
use teeshm_sim::stress;
use teeshm_sim::{System, SystemConfig};

mod bench;
mod demo;

/// teeshm: the shared-memory core of a TrustZone TEE, and its whole-system simulator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Four guests share one TEE: buffers of mixed sizes, every memref kind, an RPC buffer, and
    /// one guest destroyed in the middle of a call. Ends with `demo: OK` or what failed.
    Demo {
        /// Where to write the SVG picture of the SHM window.
        #[arg(long, default_value = "teeshm-demo.svg")]
        svg: PathBuf,
        /// Print the summary as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Random operations over several guests, the agreement checker after every step.
    Stress {
        /// Guests.
        #[arg(long, default_value_t = 4)]
        guests: u16,
        /// Operations in all.
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        /// Seed of the random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads (simulated CPUs), each driving its own guests.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Where a failing run is written as a replay file.
        #[arg(long, default_value = "teeshm-stress-failure.jsonl")]
        replay_out: PathBuf,
        /// The exhaustion mix: guest 1 exhausts every resource it can reach while the others
        /// run the usual mix and must still succeed; prints each guest's success rate.
        #[arg(long)]
        exhaust: bool,
        /// Check the whole system after every N-th step (and after the last) instead of after
        /// every step; every operation's answer is still judged.
        #[arg(long, default_value_t = 1)]
        check_every: u64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Guests, objects, mappings, quotas and counters after a scenario (the demo's, or a file).
    Inspect {
        /// A scenario file to run first instead of the demo.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The performance suite: every figure beside its peer in the same run (docs/performance.md).
    Bench {
        /// Shorter measurements: the whole suite in under two minutes.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object keyed by figure id.
        #[arg(long)]
        json: bool,
        /// Print a Markdown table and its notes (docs/performance.md's form).
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Write SVG plots of how P1, P5 and P6 grow with their input into this folder.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Only these figure groups (P1 .. P9; repeatable).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Runs a scenario file (JSON lines, docs/replay.md); prints each result as a JSON line.
    Replay {
        /// The file.
        file: PathBuf,
        /// Guest slots of the simulated machine.
        #[arg(long, default_value_t = 4)]
        guests: u16,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo { svg, json } => demo::run(&svg, json),
        Command::Stress {
            guests,
            ops,
            seed,
            threads,
            replay_out,
            exhaust,
            check_every,
            json,
        } => stress_command(
            stress::StressPlan {
                guests,
                ops,
                seed,
                threads,
                exhaust,
                check_every,
            },
            &replay_out,
            json,
        ),
        Command::Inspect { scenario, json } => inspect(scenario, json),
        Command::Replay { file, guests } => replay(&file, guests),
        Command::Bench {
            quick,
            json,
            markdown,
            plots,
            only,
        } => {
            let output = match (json, markdown) {
                (true, _) => bench::Output::Json,
                (_, true) => bench::Output::Markdown,
                _ => bench::Output::Table,
            };
            bench::run(quick, &only, output, plots.as_deref())
        }
    }
}

fn system(guests: u16) -> Result<Arc<System>, ExitCode> {
    let config = SystemConfig {
        guests,
        ..SystemConfig::default()
    };
    System::new(config).map(Arc::new).map_err(|e| {
        eprintln!("teeshm: {e}");
        ExitCode::from(2)
    })
}

fn stress_command(plan: stress::StressPlan, replay_out: &PathBuf, json: bool) -> ExitCode {
    let stress::StressPlan {
        guests,
        ops,
        seed,
        threads,
        exhaust,
        check_every,
    } = plan;
    if guests == 0 || ops == 0 {
        eprintln!("teeshm stress: --guests and --ops must be at least 1");
        return ExitCode::from(2);
    }
    let system = match system(guests) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let threads = threads.clamp(1, usize::from(guests));
    let steps = ops.div_ceil(threads as u64);
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} steps {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let outcome = stress::run(system, plan, &|done| bar.set_position(done));
    let rate = |t: &stress::GuestTally| {
        if t.ops == 0 {
            0.0
        } else {
            t.succeeded as f64 / t.ops as f64
        }
    };
    bar.finish_and_clear();
    let violations = u64::from(outcome.violation.is_some());
    if json {
        let v = serde_json::json!({
            "guests": guests, "ops": outcome.ops, "steps": outcome.steps, "seed": seed,
            "threads": threads, "succeeded": outcome.succeeded, "violations": violations,
            "exhaust": exhaust, "check_every": check_every,
            "guests_detail": outcome.per_guest.iter().map(|(g, t)| serde_json::json!({
                "guest": g, "ops": t.ops, "succeeded": t.succeeded, "success_rate": rate(t),
                "exhausting": exhaust && *g == stress::EXHAUSTER,
            })).collect::<Vec<_>>(),
            "first_violation": outcome.violation.as_ref().map(|v| serde_json::json!({"step": v.step, "what": v.what})),
        });
        println!("{v}");
    } else {
        println!(
            "stress: {} guests, {} operations in {} steps on {} threads, seed {}, checked after every {} step(s); {} answered success",
            guests,
            outcome.ops,
            outcome.steps,
            threads,
            seed,
            check_every.max(1),
            outcome.succeeded
        );
        if exhaust {
            for (g, t) in &outcome.per_guest {
                let role = if *g == stress::EXHAUSTER {
                    "exhausting"
                } else {
                    "beside it"
                };
                println!(
                    "guest {g} ({role}): {} operations, {} succeeded ({:.1}%)",
                    t.ops,
                    t.succeeded,
                    100.0 * rate(t)
                );
            }
        }
        println!("violations: {violations}");
    }
    match outcome.violation {
        None => ExitCode::SUCCESS,
        Some(v) => {
            let lines: Vec<String> = outcome
                .log
                .iter()
                .filter_map(|op| serde_json::to_string(op).ok())
                .collect();
            let written = std::fs::write(replay_out, lines.join("\n") + "\n");
            eprintln!(
                "first violation at step {} (seed {seed}, --guests {guests} --threads {threads}): {}",
                v.step, v.what
            );
            match written {
                Ok(()) => eprintln!(
                    "the run up to it is in {} (teeshm replay)",
                    replay_out.display()
                ),
                Err(e) => eprintln!("could not write {}: {e}", replay_out.display()),
            }
            ExitCode::FAILURE
        }
    }
}

fn read_scenario(file: &PathBuf) -> Result<Vec<(usize, Op)>, ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        eprintln!("teeshm: cannot read {}: {e}", file.display());
        ExitCode::from(2)
    })?;
    scenario::parse(&text).map_err(|e| {
        eprintln!("teeshm: {}: {e}", file.display());
        ExitCode::from(2)
    })
}

fn replay(file: &PathBuf, guests: u16) -> ExitCode {
    let ops = match read_scenario(file) {
        Ok(ops) => ops,
        Err(code) => return code,
    };
    let system = match system(guests) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut runner = Runner::new(system);
    let mut failed = 0;
    let mut out = std::io::stdout().lock();
    for (line, op) in ops {
        let mut result = runner.run(&op);
        result.line = line;
        if !result.ok {
            failed += 1;
        }
        // A reader that went away (a pipe to `head`) ends the output, not the run.
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&result).unwrap_or_default()
        );
    }
    let found = runner.system.check();
    let _ = writeln!(
        out,
        "{}",
        serde_json::json!({"summary": true, "failed_ops": failed, "violations": found.len(), "first_violation": found.first()})
    );
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn inspect(scenario: Option<PathBuf>, json: bool) -> ExitCode {
    let system = match scenario {
        Some(file) => {
            let ops = match read_scenario(&file) {
                Ok(ops) => ops,
                Err(code) => return code,
            };
            let system = match system(4) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let mut runner = Runner::new(system.clone());
            for (_, op) in ops {
                let _ = runner.run(&op);
            }
            system
        }
        None => match demo::scenario() {
            Ok(outcome) => outcome.system,
            Err(e) => {
                eprintln!("teeshm inspect: the demo scenario failed: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let report = SystemReport::take(&system);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.to_table());
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
