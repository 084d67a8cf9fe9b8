//! `cargo xtask`: everything beyond `cargo run` and `cargo test`.
//!
//! - `cargo xtask bench [--quick]` runs the criterion benchmarks of the memory manager, then
//!   those of the core.
//! - `cargo xtask tools` installs the bare-metal toolchain (Debian's rustc-web, cargo-web,
//!   rust-web-src, lld, llvm tools, qemu-system-arm) when missing.
//! - `cargo xtask no-std` builds the no_std crates for `aarch64-unknown-none` with that toolchain,
//!   installing it first when missing.
//! - `cargo xtask fuzz [--smoke | --long | --time S] [TARGET...]` runs the fuzz targets
//!   (`fuzz.rs`).
//! - `cargo xtask loom` runs the loom models of the core (`loom.rs`).
//! - `cargo xtask linux [--build-only] [--timeout S] [--kernel META]` boots Debian's arm64
//!   kernel, optee driver and libteec on the firmware under QEMU and runs the libteec test
//!   (`linux.rs`, docs/linux.md).
//! - `cargo xtask xen [--build-only] [--timeout S] [--compare RUNS]` builds Xen from Debian's
//!   source with its OP-TEE mediator and boots it on the firmware: dom0 and two Linux domUs
//!   run the same libteec test, a third domU misbehaves, two are destroyed; `--compare` times
//!   the test directly under Linux and in dom0 alone under Xen instead (`linux/xen.rs`,
//!   docs/xen.md).
//! - `cargo xtask qemu [--client-only | --fault-test-only] [--timeout S] [--build-only]` builds
//!   the firmware (EL3 monitor, S-EL1 core, NS-EL1 test client) and runs it under QEMU
//!   (`qemu.rs`, docs/firmware.md).

mod counters;
mod fuzz;
mod linux;
mod loom;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages of the bare-metal build: rustc-web and cargo-web with rust-web-src give a
/// compiler that can build `core` and `alloc` for `aarch64-unknown-none` (docs/firmware.md).
const BARE_METAL_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld",
    "llvm",
    "qemu-system-arm",
];

/// The no_std crates that must build unchanged for the secure world.
const NO_STD_CRATES: &[&str] = &[
    "teeshm-abi",
    "teeshm-platform",
    "teeshm-mm",
    "teeshm-core",
    "teeshm-nw",
    "teeshm-hyp",
    "teeshm-ta",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(args.iter().any(|a| a == "--quick")),
        Some("tools") => ensure_debian_packages(BARE_METAL_PACKAGES),
        Some("no-std") => no_std_build(),
        Some("fuzz") => fuzz::main(args.get(1..).unwrap_or(&[])),
        Some("loom") => loom::main(),
        Some("linux") => linux::linux(args.get(1..).unwrap_or(&[])),
        Some("xen") => linux::xen(args.get(1..).unwrap_or(&[])),
        Some("qemu") => qemu::qemu(args.get(1..).unwrap_or(&[])),
        _ => {
            eprintln!(
                "usage: cargo xtask <bench [--quick] | tools | no-std | fuzz [--smoke|--long|--time S] [--runs N] [--jobs N] [TARGET...] | loom | linux [--build-only] [--timeout S] [--kernel META] | xen [--build-only] [--timeout S] [--compare RUNS] | qemu [--client-only|--fault-test-only] [--timeout S] [--build-only]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let status = command
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn bench(quick: bool) -> Result<(), String> {
    for (package, bench) in [("teeshm-bench", "mm"), ("teeshm-bench", "core")] {
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(workspace_root())
            .args(["bench", "-p", package, "--bench", bench, "--"]);
        if quick {
            command.args(["--warm-up-time", "0.5", "--measurement-time", "1"]);
        }
        run(&mut command)?;
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing: `apt-get update` once, then one
/// `apt-get install`. Uses sudo when not root.
fn ensure_debian_packages(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages present: {}", packages.join(" "));
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut command = if as_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    run(&mut apt(&install))
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// Builds the no_std crates for aarch64-unknown-none with Debian's toolchain and build-std, in a
/// target directory of its own so the host build is untouched.
fn no_std_build() -> Result<(), String> {
    ensure_debian_packages(&["rustc-web", "cargo-web", "rust-web-src"])?;
    let root = workspace_root();
    let mut command = Command::new("/usr/bin/cargo");
    command
        .current_dir(&root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", "/usr/bin/rustc")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "build",
            "--release",
            "-Zbuild-std=core,alloc",
            "--target",
            "aarch64-unknown-none",
            "--target-dir",
        ])
        .arg(root.join("target").join("bare-metal"));
    for krate in NO_STD_CRATES {
        command.args(["-p", krate]);
    }
    run(&mut command)?;
    eprintln!(
        "xtask: {} build for aarch64-unknown-none",
        NO_STD_CRATES.join(", ")
    );
    Ok(())
}
