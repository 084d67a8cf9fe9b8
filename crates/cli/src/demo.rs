//! `teeshm demo`: runs the demonstration scenario of `teeshm_sim::demo` and reports it.

use std::path::Path;
use std::process::ExitCode;
pub use teeshm_sim::demo::scenario;

/// Runs the demo, prints its table (or JSON), writes the SVG, ends with `demo: OK` or what
/// failed.
pub fn run(svg: &Path, json: bool) -> ExitCode {
    let outcome = match scenario() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: could not run: {e}");
            return ExitCode::FAILURE;
        }
    };
    let picture = teeshm_sim::demo::picture(&outcome.system);
    let written = std::fs::write(svg, picture);
    if json {
        let v = serde_json::json!({
            "guests": outcome.lines,
            "failures": outcome.failures,
            "svg": svg.display().to_string(),
            "ok": outcome.failures.is_empty() && written.is_ok(),
        });
        println!("{v}");
    } else {
        println!("teeshm demo: 4 guests share one TEE, each on its own simulated CPU\n");
        println!(
            "{:>5} {:>8} {:>12} {:>8} {:>14} {:>10} {:>10}  fate",
            "guest", "buffers", "bytes", "invokes", "bytes checked", "1 MiB hit", "RPC bytes"
        );
        for l in &outcome.lines {
            println!(
                "{:>5} {:>8} {:>12} {:>8} {:>14} {:>10} {:>10}  {}",
                l.guest,
                l.buffers,
                l.buffer_bytes,
                l.invokes,
                l.bytes_checked,
                if l.cache_hit { "cached" } else { "no" },
                l.rpc_bytes,
                l.fate
            );
        }
        println!();
        println!(
            "memref kinds used: value in/out, temporary in/out (NONCONTIG), whole, partial, NULL; an RPC buffer"
        );
        println!(
            "guest 3 was destroyed while a call waited in an RPC: nothing of it is left, the others are untouched"
        );
        match &written {
            Ok(()) => println!("picture of the SHM window: {}", svg.display()),
            Err(e) => println!("could not write {}: {e}", svg.display()),
        }
    }
    if outcome.failures.is_empty() && written.is_ok() {
        if !json {
            println!("demo: OK");
        }
        ExitCode::SUCCESS
    } else {
        if !json {
            for f in &outcome.failures {
                println!("FAILED: {f}");
            }
            println!("demo: FAILED ({} problems)", outcome.failures.len());
        }
        ExitCode::FAILURE
    }
}
