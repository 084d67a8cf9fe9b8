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
            "{:>5} {:>8} {:>12} {:>8} {:>14} {:>10} {:>10} {:>9} {:>10} {:>10}  fate",
            "guest",
            "buffers",
            "bytes",
            "invokes",
            "bytes checked",
            "1 MiB hit",
            "RPC bytes",
            "TA calls",
            "TA bytes",
            "TA deaths"
        );
        for l in &outcome.lines {
            println!(
                "{:>5} {:>8} {:>12} {:>8} {:>14} {:>10} {:>10} {:>9} {:>10} {:>10}  {}",
                l.guest,
                l.buffers,
                l.buffer_bytes,
                l.invokes,
                l.bytes_checked,
                if l.cache_hit { "cached" } else { "no" },
                l.rpc_bytes,
                l.ta_invokes,
                l.ta_bytes,
                l.ta_deaths,
                l.fate
            );
        }
        println!();
        println!(
            "memref kinds used: value in/out, temporary in/out (NONCONTIG), whole, partial, NULL; an RPC buffer"
        );
        println!(
            "user TA teeshm.ta-memtest, one instance per guest in its own address space: FILL and CHECK of a registered buffer (a changed byte found where it is), CALL_PEER to teeshm.ta-peer with a buffer of its own memory"
        );
        println!(
            "guest 2's second instance wrote into its input memref and died (TEE_ERROR_TARGET_DEAD); its first instance and the other guests went on"
        );
        println!(
            "guest 3 was destroyed while a call waited in an RPC: nothing of it is left (its TA instance's RAM included), the others are untouched"
        );
        let ram = outcome.system.ta_ram();
        println!(
            "TA RAM: {} of {} pages free; the console stays mapped by ioremap (PA {:#x} at VA {:#x})",
            ram.free_pages,
            ram.total_pages,
            outcome.system.console.pa.get(),
            outcome.system.console.va.get()
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
