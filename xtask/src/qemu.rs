//! `cargo xtask qemu`: teeshm as TrustZone firmware on `qemu-system-aarch64 -M virt,secure=on`
//! (docs/firmware.md).
//!
//! 1. Debian's bare-metal toolchain and QEMU when missing (`apt-get update` once, then
//!    rustc-web, cargo-web, rust-web-src, lld, llvm, qemu-system-arm).
//! 2. The firmware workspace (`firmware/`) built with `/usr/bin/cargo` for
//!    `aarch64-unknown-none` (`RUSTC_BOOTSTRAP=1`, `-Zbuild-std=core,alloc`, its own target
//!    directory `target/firmware`): first the user TAs (`firmware/ta`, linked with
//!    `firmware/ta.ld`, stripped of debug info into `target/firmware/ta/`), then the images,
//!    with that directory in `TEESHM_TA_DIR` (the secure image links the TAs' ELF files),
//!    linked by `ld.lld` with `firmware/secure.ld` and `firmware/client.ld`, made flat by
//!    `llvm-objcopy`: `secure.bin` (`-bios`: the EL3 monitor with the S-EL1 core and the early
//!    TAs) and `client.bin` (the normal-world test client).
//! 3. QEMU runs with a timeout, the UART streams to stdout, and the run passes when QEMU exits
//!    0 and the UART shows what the run must show:
//!    - the client run: `N passed, 0 failed` (N > 0) alone on a line and no `FAIL` line;
//!    - the fault-test run (a second build with the `fault-test` features, where the core
//!      touches an unmapped VA on request): the `fault: data abort at VA ...` report of the
//!      S-EL1 exception handler and the monitor's `fault-test: passed`.
//!
//!    Neither run may show a secure panic, an exception at EL3 or a failed boot
//!    ([`secure_failure`]), and the client run no S-EL1 exception either, whatever QEMU's
//!    status. A failed run exits with QEMU's status (1 if QEMU exited 0 without what the run
//!    must show, or with a secure failure); a hung one is killed at the timeout and its last
//!    UART lines shown.
//!
//! Both builds have the core's test commands (the client checks WHERE's secure addresses);
//! [`Variant::Linux`], which `cargo xtask linux` boots, has not.
//!
//! `cargo xtask qemu [--client-only | --fault-test-only] [--timeout SECS] [--build-only]
//! [--smp N]` (4 CPUs by default; the client brings the others up with PSCI `CPU_ON`). The
//! client run writes the firmware's per-CPU counters to `target/qemu-report.json`.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::{ensure_debian_packages, run, workspace_root};

/// What the firmware build and run need from Debian.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld",
    "llvm",
    "qemu-system-arm",
];

/// Where the normal-world client is loaded and entered (QEMU keeps its device tree in the
/// first MiB of RAM).
pub const CLIENT_ADDR: u64 = 0x4020_0000;

/// How many UART lines a failed run shows.
const LAST_LINES: usize = 30;

/// The test commands of the core (the memtest pseudo-TA's WHERE tells secure VAs and PAs):
/// on in both builds `cargo xtask qemu` runs, whose client checks those addresses; off in
/// [`Variant::Linux`], the firmware a product would ship.
pub const TEST_COMMANDS: &str = "teeshm-fw-tee/test-commands";

/// The firmware builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The normal build: the client runs every case (test commands on).
    Client,
    /// `fault-test`: the core reads an unmapped VA on request; the fault must be reported
    /// (test commands on).
    FaultTest,
    /// The firmware `cargo xtask linux` boots Debian's kernel on: the monitor's `linux`
    /// feature, and no test commands, as a product would ship it.
    Linux,
    /// The firmware `cargo xtask xen` boots Xen on: as `Linux`, with the normal world entered
    /// at EL2 (the monitor's `xen` feature); its client is a Xen domU (`xen-domu`).
    Xen,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Client => "client",
            Variant::FaultTest => "fault-test",
            Variant::Linux => "linux",
            Variant::Xen => "xen",
        }
    }

    fn features(self) -> &'static [&'static str] {
        match self {
            Variant::Client => &[TEST_COMMANDS],
            Variant::FaultTest => &[
                TEST_COMMANDS,
                "teeshm-fw-monitor/fault-test",
                "teeshm-fw-client/fault-test",
            ],
            Variant::Linux => &["teeshm-fw-monitor/linux"],
            Variant::Xen => &["teeshm-fw-monitor/xen", "teeshm-fw-client/xen-domu"],
        }
    }
}

/// The flat images of one build.
#[derive(Debug, Clone)]
pub struct Images {
    /// The secure image for `-bios` (EL3 monitor + S-EL1 core).
    pub secure: PathBuf,
    /// The normal-world test client, to load at [`CLIENT_ADDR`].
    pub client: PathBuf,
}

struct Options {
    variants: Vec<Variant>,
    timeout: Duration,
    build_only: bool,
    smp: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        variants: vec![Variant::Client, Variant::FaultTest],
        timeout: Duration::from_secs(120),
        build_only: false,
        smp: 4,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--client-only" => options.variants = vec![Variant::Client],
            "--fault-test-only" | "--fault-test" => options.variants = vec![Variant::FaultTest],
            "--build-only" => options.build_only = true,
            "--smp" => options.smp = crate::counters::parse_smp(rest.next())?,
            "--timeout" => {
                let secs = rest
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("--timeout needs a number of seconds")?;
                options.timeout = Duration::from_secs(secs);
            }
            other => return Err(format!("qemu: unknown argument {other}")),
        }
    }
    Ok(options)
}

/// `cargo xtask qemu`: builds, runs each variant, and exits with QEMU's status on a failure.
pub fn qemu(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    ensure_debian_packages(PACKAGES)?;
    let mut results = Vec::new();
    for &variant in &options.variants {
        let started = Instant::now();
        let images = build(variant, &[])?;
        eprintln!(
            "xtask: qemu: {} firmware built in {:.1} s: {} ({} bytes), {} ({} bytes)",
            variant.name(),
            started.elapsed().as_secs_f64(),
            images.secure.display(),
            file_len(&images.secure),
            images.client.display(),
            file_len(&images.client)
        );
        if options.build_only {
            continue;
        }
        match run_qemu(variant, &images, options.timeout, options.smp) {
            Ok(summary) => results.push(summary),
            Err((status, why)) => {
                eprintln!("xtask: qemu: {why}");
                std::process::exit(status);
            }
        }
    }
    for line in &results {
        eprintln!("xtask: qemu: {line}");
    }
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The environment variable that tells the secure image's build where the TAs' ELF files are
/// (`firmware/tee/src/tas.rs`).
pub const TA_DIR_VAR: &str = "TEESHM_TA_DIR";

/// `/usr/bin/cargo build` of the firmware workspace for `aarch64-unknown-none`, with Debian's
/// compiler and `core` and `alloc` built from source, into `target_dir`.
fn firmware_cargo(root: &Path, target_dir: &Path) -> Command {
    let mut command = Command::new("/usr/bin/cargo");
    command
        .current_dir(root.join("firmware"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", "/usr/bin/rustc")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove(TA_DIR_VAR)
        .args([
            "build",
            "--release",
            "-Zbuild-std=core,alloc",
            "-Zunstable-options",
            "--target",
            "aarch64-unknown-none",
            "--target-dir",
        ])
        .arg(target_dir);
    command
}

/// Builds the user TAs (`firmware/ta`: one binary per program of `teeshm_ta::PROGRAMS`) and
/// leaves them, without debug info, in `target/firmware/ta/`, which it returns: the directory
/// the secure image's build links them from ([`TA_DIR_VAR`]). A file is replaced only when its
/// bytes change, so that an unchanged TA does not make the secure image build again.
///
/// # Errors
/// A build or objcopy failure, or no TA built.
pub fn build_tas(root: &Path, target_dir: &Path, objcopy: &Path) -> Result<PathBuf, String> {
    let dir = target_dir.join("ta");
    let elf_dir = target_dir.join(format!("ta-elf-{}", std::process::id()));
    let _ = fs::remove_dir_all(&elf_dir);
    let mut command = firmware_cargo(root, target_dir);
    command
        .args(["-p", "teeshm-fw-ta", "--artifact-dir"])
        .arg(&elf_dir);
    run(&mut command)?;
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut names: Vec<String> = fs::read_dir(&elf_dir)
        .map_err(|e| format!("cannot list {}: {e}", elf_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("ta-") && !name.contains('.'))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!("no TA binary in {}", elf_dir.display()));
    }
    for name in &names {
        let fresh = dir.join(format!(".{name}.{}", std::process::id()));
        run(Command::new(objcopy)
            .arg("--strip-debug")
            .arg(elf_dir.join(name))
            .arg(&fresh))?;
        let target = dir.join(name);
        let same = fs::read(&fresh)
            .ok()
            .is_some_and(|new| fs::read(&target).ok().is_some_and(|old| old == new));
        if same {
            let _ = fs::remove_file(&fresh);
        } else {
            fs::rename(&fresh, &target).map_err(|e| {
                format!(
                    "cannot move {} to {}: {e}",
                    fresh.display(),
                    target.display()
                )
            })?;
        }
    }
    let _ = fs::remove_dir_all(&elf_dir);
    eprintln!(
        "xtask: TAs built into {}: {}",
        dir.display(),
        names.join(", ")
    );
    Ok(dir)
}

/// Builds the firmware `variant` with `extra_features` (features of the firmware packages, as
/// `package/feature`) and returns its flat images, in `target/firmware/images/<variant>/`:
/// first the user TAs ([`build_tas`]), then the images, whose secure one links them. The
/// client build's images are also copied to `target/firmware/images/` itself.
///
/// # Errors
/// A build, link or objcopy failure.
pub fn build(variant: Variant, extra_features: &[&str]) -> Result<Images, String> {
    let root = workspace_root();
    let target_dir = root.join("target").join("firmware");
    let objcopy = find_objcopy()?;
    let ta_dir = build_tas(&root, &target_dir, &objcopy)?;
    let mut features: Vec<&str> = variant.features().to_vec();
    features.extend_from_slice(extra_features);
    let suffix = if extra_features.is_empty() {
        variant.name().to_string()
    } else {
        format!(
            "{}-{}",
            variant.name(),
            extra_features.join("-").replace('/', "_")
        )
    };
    let out = target_dir.join("images").join(suffix);
    // The ELFs of this very build, hard-linked by cargo while it holds the build lock: the
    // uplifted `release/teeshm-fw-*` may be replaced meanwhile by a build of other features.
    let elf_dir = out.join("elf");
    let mut command = firmware_cargo(&root, &target_dir);
    command
        .env(TA_DIR_VAR, &ta_dir)
        .args(["-p", "teeshm-fw-monitor", "-p", "teeshm-fw-client"])
        .arg("--artifact-dir")
        .arg(&elf_dir);
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    let _ = fs::remove_dir_all(&elf_dir);
    run(&mut command)?;
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let flat = |elf: &str, name: &str| -> Result<PathBuf, String> {
        let elf_path = elf_dir.join(elf);
        let bin = out.join(format!("{name}.bin"));
        run(Command::new(&objcopy)
            .args(["-O", "binary"])
            .arg(&elf_path)
            .arg(&bin))?;
        Ok(bin)
    };
    let images = Images {
        secure: flat("teeshm-fw-monitor", "secure")?,
        client: flat("teeshm-fw-client", "client")?,
    };
    if variant == Variant::Client && extra_features.is_empty() {
        let top = target_dir.join("images");
        for (from, name) in [
            (&images.secure, "secure.bin"),
            (&images.client, "client.bin"),
        ] {
            fs::copy(from, top.join(name))
                .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
        }
    }
    Ok(images)
}

/// `llvm-objcopy`, or Debian's versioned `llvm-objcopy-N` (the highest).
fn find_objcopy() -> Result<PathBuf, String> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(Path::new("llvm-objcopy")) {
        return Ok(PathBuf::from("llvm-objcopy"));
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/bin")
        .map_err(|e| format!("cannot list /usr/bin: {e}"))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let version = name.strip_prefix("llvm-objcopy-")?.parse().ok()?;
            Some((version, path))
        })
        .collect();
    versioned.sort();
    versioned
        .pop()
        .map(|(_, p)| p)
        .filter(|p| works(p))
        .ok_or_else(|| "no llvm-objcopy found (Debian package llvm)".to_string())
}

/// What a run must show, seen so far.
#[derive(Default)]
struct Seen {
    summary: Option<String>,
    /// The user-TA group's own count (`ta: N passed, M failed`).
    ta_summary: Option<String>,
    failed_case: Option<String>,
    fault_report: Option<String>,
    fault_test_passed: bool,
    core_ready: Option<f64>,
    /// The first report of a secure panic, an EL3 exception or a failed boot.
    secure_panic: Option<String>,
    /// The first report of an S-EL1 exception (expected only in the fault-test run).
    secure_fault: Option<String>,
    /// The firmware's counters of the run's CPUs.
    smp: crate::counters::SmpCounters,
    /// What the core's last agreement check found (`tee: check: N disagreements, ...`).
    disagreements: Option<u64>,
}

impl Seen {
    fn note(&mut self, t: f64, line: &str) {
        let line = line.trim();
        if is_summary(line) {
            self.summary = Some(line.to_string());
        }
        if let Some(rest) = line.strip_prefix("ta: ")
            && is_summary(rest)
        {
            self.ta_summary = Some(rest.to_string());
        }
        if line.starts_with("FAIL ") && self.failed_case.is_none() {
            self.failed_case = Some(line.to_string());
        }
        if line.starts_with("fault: data abort at VA ") {
            self.fault_report = Some(line.to_string());
        }
        if line.starts_with("fault-test: passed") {
            self.fault_test_passed = true;
        }
        self.smp.note(line);
        if let Some(rest) = line.strip_prefix("tee: check: ") {
            self.disagreements = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        if self.core_ready.is_none() && line.starts_with("monitor: S-EL1 core ready") {
            self.core_ready = Some(t);
        }
        match secure_failure(line) {
            Some(SecureFailure::Panic) if self.secure_panic.is_none() => {
                self.secure_panic = Some(line.to_string());
            }
            Some(SecureFailure::Fault) if self.secure_fault.is_none() => {
                self.secure_fault = Some(line.to_string());
            }
            _ => {}
        }
    }
}

/// How the firmware reports that its secure side died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureFailure {
    /// A panic of the S-EL1 core (`tee: panic: ...`, then the monitor's `the secure world
    /// panicked`) or of the monitor, an exception taken at EL3, an unexpected SMC or exception
    /// from a lower EL, or a core that could not boot.
    Panic,
    /// An exception taken at S-EL1 (`fault: ...` from its vector, then the monitor's `the
    /// secure world reported a fault`): the fault-test run provokes exactly one; any other run
    /// fails on it.
    Fault,
}

/// Whether a UART line is the firmware's report of a secure panic or exception (see
/// firmware/tee/src/entry.rs `report_panic` and `tee_exception`, and the monitor's
/// `from_secure`, `el3_handle_lower`, `el3_fatal_rust` and panic handler).
pub fn secure_failure(line: &str) -> Option<SecureFailure> {
    const PANICS: &[&str] = &[
        "tee: panic",
        "tee: boot failed",
        "monitor: panic",
        "monitor: the secure world panicked",
        "monitor: exception at EL3",
        "monitor: unexpected exception",
        "monitor: unexpected SMC",
    ];
    const FAULTS: &[&str] = &["fault: ", "monitor: the secure world reported a fault"];
    let line = line.trim();
    if PANICS.iter().any(|p| line.starts_with(p)) {
        Some(SecureFailure::Panic)
    } else if FAULTS.iter().any(|p| line.starts_with(p)) {
        Some(SecureFailure::Fault)
    } else {
        None
    }
}

/// `N passed, M failed` alone on a line.
fn is_summary(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(
        words.as_slice(),
        [n, "passed,", m, "failed"] if n.parse::<u64>().is_ok() && m.parse::<u64>().is_ok()
    )
}

/// Runs QEMU on `images`; `Ok(summary)` when the run shows what it must, else `(exit status,
/// why)`.
fn run_qemu(
    variant: Variant,
    images: &Images,
    timeout: Duration,
    smp: usize,
) -> Result<String, (i32, String)> {
    let mut command = Command::new("qemu-system-aarch64");
    command
        .args([
            "-M",
            "virt,secure=on,gic-version=3",
            "-cpu",
            "cortex-a57",
            "-smp",
            &smp.to_string(),
            "-m",
            "1024",
            "-display",
            "none",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-semihosting",
            "-no-reboot",
        ])
        .arg("-bios")
        .arg(&images.secure)
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={CLIENT_ADDR:#x},force-raw=on",
            images.client.display()
        ));
    let secure_console = workspace_root()
        .join("target")
        .join(format!("qemu-{}-secure-uart.log", variant.name()));
    eprintln!(
        "xtask: running {command:?} (secure UART: {})",
        secure_console.display()
    );
    let mut seen = Seen::default();
    let started = Instant::now();
    let run = run_streaming(
        &mut command,
        &secure_console,
        timeout,
        LAST_LINES,
        |t, line| {
            println!("{line}");
            seen.note(t, line);
        },
    )
    .map_err(|e| (1, e))?;
    let (status, timed_out, last) = (run.status, run.timed_out, run.last);
    let total = started.elapsed().as_secs_f64();
    let failure = |status: i32, why: String| {
        let mut text = format!("{} run FAILED: {why}\nlast UART lines:\n", variant.name());
        for line in &last {
            text.push_str("  | ");
            text.push_str(line);
            text.push('\n');
        }
        Err((status, text))
    };
    if timed_out {
        return failure(
            124,
            format!("no end after {} s; QEMU was killed", timeout.as_secs()),
        );
    }
    let code = status.and_then(|s| s.code());
    let ready = seen
        .core_ready
        .map_or("-".to_string(), |t| format!("{:.2} s", t));
    if let Some(report) = &seen.secure_panic {
        return failure(
            code.filter(|&c| c != 0).unwrap_or(1),
            format!("the secure world died: `{report}`"),
        );
    }
    match variant {
        Variant::Linux | Variant::Xen => failure(
            1,
            "the Linux and Xen firmware is run by `cargo xtask linux` and `cargo xtask xen`".into(),
        ),
        Variant::Client if seen.secure_fault.is_some() => failure(
            code.filter(|&c| c != 0).unwrap_or(1),
            format!(
                "the secure world took an exception: `{}`",
                seen.secure_fault.as_deref().unwrap_or_default()
            ),
        ),
        Variant::Client => {
            let all_passed = |s: &Option<String>| {
                s.as_deref()
                    .is_some_and(|s| s.ends_with(" 0 failed") && !s.starts_with("0 passed"))
            };
            let summary_ok = all_passed(&seen.summary) && all_passed(&seen.ta_summary);
            let counters = seen.smp.verdict(smp, None, true);
            let report = crate::workspace_root()
                .join("target")
                .join("qemu-report.json");
            let json = seen
                .smp
                .report(smp, seen.disagreements, seen.summary.as_deref());
            if let Err(e) = fs::write(&report, json) {
                eprintln!("xtask: qemu: cannot write {}: {e}", report.display());
            }
            match (code, &seen.summary, &seen.failed_case) {
                (Some(0), Some(summary), None) if summary_ok && counters.is_ok() => Ok(format!(
                    "client run passed: {summary}, user TAs ta: {} (S-EL1 core ready {ready}, QEMU exit 0 after {total:.2} s); on {smp} CPUs: {} calls in the core at once at most, {} normal-world interrupts let through",
                    seen.ta_summary.as_deref().unwrap_or_default(),
                    seen.smp.max_concurrent_calls.unwrap_or(0),
                    seen.smp
                        .cpus
                        .iter()
                        .map(|c| c.foreign_interrupts)
                        .sum::<u64>()
                )),
                (Some(0), Some(_), None) if summary_ok => failure(
                    1,
                    format!("the CPUs' counters: {}", counters.err().unwrap_or_default()),
                ),
                (code, summary, failed) => failure(
                    code.filter(|&c| c != 0).unwrap_or(1),
                    format!(
                        "QEMU exit status {}, summary {}, user-TA group {}, first failed case {}",
                        code.map_or("none (killed by a signal)".to_string(), |c| c.to_string()),
                        summary.as_deref().unwrap_or("missing"),
                        seen.ta_summary.as_deref().unwrap_or("missing"),
                        failed.as_deref().unwrap_or("none")
                    ),
                ),
            }
        }
        Variant::FaultTest => match (code, &seen.fault_report) {
            (Some(0), Some(report)) if seen.fault_test_passed => Ok(format!(
                "fault-test run passed: `{report}` (QEMU exit 0 after {total:.2} s)"
            )),
            (code, report) => failure(
                code.filter(|&c| c != 0).unwrap_or(1),
                format!(
                    "QEMU exit status {}, fault report {}",
                    code.map_or("none (killed by a signal)".to_string(), |c| c.to_string()),
                    report.as_deref().unwrap_or("missing")
                ),
            ),
        },
    }
}

/// How a streamed QEMU run ended.
pub struct StreamedRun {
    /// QEMU's exit status (`None` if it could not be read).
    pub status: Option<std::process::ExitStatus>,
    /// Whether the run was ended by the timeout.
    pub timed_out: bool,
    /// The last lines it printed.
    pub last: VecDeque<String>,
}

/// Spawns `command` with the machine's two UARTs added (serial0, the normal world's, on
/// stdout; serial1, the secure UART the firmware writes to, in the file `secure_console`),
/// hands every line of both to `on_line(seconds since start, line)` as it comes (stderr lines
/// prefixed `qemu: `), and kills it at `timeout`. Lines of the two UARTs are each whole: the
/// worlds no longer write into each other's lines. Shared by `cargo xtask qemu`, `linux` and
/// `xen`.
pub fn run_streaming(
    command: &mut Command,
    secure_console: &Path,
    timeout: Duration,
    keep_last: usize,
    mut on_line: impl FnMut(f64, &str),
) -> Result<StreamedRun, String> {
    let started = Instant::now();
    let secure = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(secure_console)
        .map_err(|e| format!("cannot create {}: {e}", secure_console.display()))?;
    let mut serial1 = std::ffi::OsString::from("file:");
    serial1.push(secure_console);
    command
        .args(["-serial", "stdio", "-serial"])
        .arg(serial1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-aarch64: {e}"))?;
    // One thread per stream sends lines; this thread hands them on and watches the clock.
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward(stdout, &tx, "")));
    }
    if let Some(stderr) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward(stderr, &tx, "qemu: ")));
    }
    let qemu_ended = Arc::new(AtomicBool::new(false));
    {
        let tx = tx.clone();
        let ended = Arc::clone(&qemu_ended);
        readers.push(std::thread::spawn(move || {
            forward(
                FollowedFile {
                    file: secure,
                    ended,
                },
                &tx,
                "",
            )
        }));
    }
    drop(tx);
    let mut last: VecDeque<String> = VecDeque::with_capacity(keep_last);
    let deadline = started + timeout;
    let mut status = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                on_line(started.elapsed().as_secs_f64(), &line);
                if last.len() == keep_last {
                    last.pop_front();
                }
                last.push_back(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = child.wait().ok();
                }
                break;
            }
        }
        if status.is_none() {
            status = child.try_wait().ok().flatten();
        }
        if status.is_none() && Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            status = child.wait().ok();
        }
        if status.is_some() {
            // The secure console's reader takes what QEMU wrote last, then ends.
            qemu_ended.store(true, Ordering::Release);
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    Ok(StreamedRun {
        status,
        timed_out,
        last,
    })
}

/// A file another process appends to, read as a stream: at its end, waits for more until
/// `ended` is set, then reads what is left and reports its end.
struct FollowedFile {
    file: fs::File,
    ended: Arc<AtomicBool>,
}

impl std::io::Read for FollowedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // Read `ended` first: what QEMU wrote before it ended is in the file then.
            let ended = self.ended.load(Ordering::Acquire);
            let n = self.file.read(buf)?;
            if n > 0 || ended {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends each line of `stream` to `tx` (UART lines end in `\r\n`; stray `\r`s are dropped).
fn forward(stream: impl std::io::Read, tx: &mpsc::Sender<String>, prefix: &str) {
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&raw);
                let line = text.trim_end_matches(['\r', '\n']).replace('\r', "");
                if tx.send(format!("{prefix}{line}")).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        assert!(is_summary("26 passed, 0 failed"));
        assert!(is_summary("  3 passed, 2 failed \r"));
        assert!(!is_summary("tests: 3 passed, 0 failed, 0 ignored"));
        assert!(!is_summary("ok   x: 3 passed, 0 failed"));
    }

    #[test]
    fn what_a_run_must_show() {
        let mut seen = Seen::default();
        seen.note(
            0.1,
            "monitor: S-EL1 core ready at 6000 us; entering the normal world",
        );
        seen.note(0.2, "FAIL hostile: unknown cookies [0 ms]: 0xffff0006");
        seen.note(0.2, "ta: 9 passed, 0 failed");
        assert_eq!(seen.ta_summary.as_deref(), Some("9 passed, 0 failed"));
        assert_eq!(seen.summary, None, "the group's line is not the run's");
        seen.note(0.3, "25 passed, 1 failed\r");
        assert_eq!(seen.core_ready, Some(0.1));
        assert!(seen.failed_case.is_some());
        assert_eq!(seen.summary.as_deref(), Some("25 passed, 1 failed"));
        seen.note(
            0.4,
            "fault: data abort at VA 0x40001ff000 (FAR_EL1), ESR 0x96000007",
        );
        seen.note(0.5, "fault-test: passed: caught");
        assert!(seen.fault_report.is_some() && seen.fault_test_passed);
        assert!(seen.secure_fault.is_some() && seen.secure_panic.is_none());
        seen.note(
            0.6,
            "tee: panic: panicked at crates/core/src/msg.rs:1:1: boom\r",
        );
        assert!(seen.secure_panic.is_some());
    }

    #[test]
    fn secure_failures_are_recognised() {
        for line in [
            "tee: panic: panicked at x.rs:1:1",
            "monitor: the secure world panicked; ending the run",
            "monitor: panic: oops",
            "monitor: exception at EL3 (vector 4): ESR_EL3 0x0",
            "monitor: unexpected exception from the secure world: ESR_EL3 0x0, ELR_EL3 0x0",
            "monitor: unexpected SMC 0xbe000009 from the secure world (InCall)",
            "tee: boot failed: Core(Capacity)",
        ] {
            assert_eq!(secure_failure(line), Some(SecureFailure::Panic), "{line}");
        }
        for line in [
            "fault: data abort at VA 0x40001ff000 (FAR_EL1), ESR 0x96000007",
            "monitor: the secure world reported a fault (ESR 0x96000007, FAR 0x0)",
        ] {
            assert_eq!(secure_failure(line), Some(SecureFailure::Fault), "{line}");
        }
        for line in [
            "ok   exhaust: threads [3 ms]: 8 calls suspended",
            "tee: check: 0 disagreements",
            "client: panic: x",
            "FAIL hostile: x",
        ] {
            assert_eq!(secure_failure(line), None, "{line}");
        }
    }
}
