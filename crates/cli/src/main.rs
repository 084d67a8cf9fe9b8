//! The `teeshm` command. Today it knows the commands it will grow into; `demo` reports what is
//! built so far.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// teeshm: the shared-memory core of a TrustZone TEE, and its whole-system simulator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demonstration scenario (four guests sharing one TEE).
    Demo,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo => {
            println!("teeshm demo: the whole-system simulator is not built yet.");
            println!("Built so far: the OP-TEE wire ABI (teeshm-abi) and the secure-world memory");
            println!("manager (teeshm-mm). Run `cargo test --workspace` to exercise them, and");
            println!("`cargo xtask bench` to measure them.");
            ExitCode::SUCCESS
        }
    }
}
