//! `cargo xtask linux`: Debian's own arm64 kernel, its tee and optee modules and Debian's libteec
//! as the normal world of teeshm's firmware on `qemu-system-aarch64 -M virt,secure=on`
//! (docs/linux.md).
//!
//! 1. Host tools from Debian (cross gcc, dtc, QEMU) when missing.
//! 2. Debian's arm64 packages (the kernel `linux-image-arm64` depends on, busybox-static,
//!    libteec1, libc6, optee-client-dev) downloaded once into `.cache/linux/debs` (ignored by
//!    git) and unpacked next to them.
//! 3. `linux/teeshm-test.c` built with `aarch64-linux-gnu-gcc` against Debian's libteec.
//! 4. An initramfs (`newc` cpio, written here): busybox, tee.ko, optee.ko, libteec, glibc, the
//!    test and `linux/init`.
//! 5. The device tree: QEMU's own (`-machine dumpdtb=`) plus the OP-TEE node, PSCI over SMC,
//!    secure RAM reserved, and `chosen` (command line, initrd), compiled by `dtc`.
//! 6. The firmware (`qemu::build(Variant::Linux)`): the monitor's `linux` feature, without the
//!    core's test commands (as a product ships it); the monitor enters the kernel at
//!    0x4020_0000, NS-EL1, with x0 = the device tree at 0x4800_0000.
//! 7. QEMU runs with a timeout; the UART is shown live and kept in `target/linux/uart.log`. The
//!    run passes when QEMU exits 0 (PSCI SYSTEM_OFF, which init asks for only when the test
//!    passed), the UART shows `N passed, 0 failed` (N > 0) and the test's user-TA group
//!    `user-ta: N passed, 0 failed` (N > 0), the monitor reports the core's agreement check
//!    after the power-off with `0 disagreements`, and no line reports a secure panic or
//!    exception (`qemu::secure_failure`). A hang is killed and reported with the last UART
//!    lines. `target/linux/report.json` has the counts.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ensure_debian_packages, run, workspace_root};

/// Host packages: the cross compiler and glibc for the test, dtc, QEMU, xz (6.12's modules).
mod debian;
mod xen;
use debian::{Kernel, debian_packages, unpack};
pub use xen::xen;

const HOST_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "device-tree-compiler",
    "qemu-system-arm",
    "xz-utils",
];

/// Debian arm64 packages besides the kernel (whose name comes from `linux-image-arm64`).
const ARM64_PACKAGES: &[&str] = &["busybox-static", "libteec1", "libc6", "optee-client-dev"];

/// The machine. `-cpu cortex-a57` boots Debian's kernel fastest under TCG (of the CPUs QEMU
/// 7.2 offers, tried on this project's machine); 1 GiB of RAM as the firmware expects; a
/// GICv3, which the monitor hands to the normal world (system registers, Group 1). The CPUs
/// are added by [`Machine`] (`--smp`).
const MACHINE: &[&str] = &[
    "-M",
    "virt,secure=on,gic-version=3",
    "-cpu",
    "cortex-a57",
    "-m",
    "1024",
    "-net",
    "none",
];

/// CPUs a run has unless `--smp` says otherwise.
const DEFAULT_SMP: usize = 4;

/// A QEMU machine: its options and its CPUs (the firmware serves up to
/// `teeshm_fw_common::cpu::MAX_CPUS` = 8).
#[derive(Debug, Clone, Copy)]
struct Machine {
    base: &'static [&'static str],
    smp: usize,
}

impl Machine {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.base.iter().map(|a| a.to_string()).collect();
        args.extend(["-smp".to_string(), self.smp.to_string()]);
        args
    }
}

/// Where the `-device loader`s put the kernel, the device tree and the initramfs (non-secure
/// RAM starts at 0x4000_0000). The kernel Image wants a 2 MiB-aligned base (text_offset 0); it
/// goes where the monitor enters the normal world, as the bare-metal client does.
const KERNEL_ADDR: u64 = crate::qemu::CLIENT_ADDR;
/// The device tree blob: 8-byte aligned, clear of the kernel's `image_size`; the monitor's
/// `LINUX_DTB` (firmware/monitor/src/monitor.rs).
const DTB_ADDR: u64 = 0x4800_0000;
/// The initramfs, right after the device tree's 1 MiB.
const INITRD_ADDR: u64 = 0x4810_0000;
/// Secure RAM (QEMU `virt`): reserved in the device tree so Linux never touches it.
const SECURE_RAM: (u64, u64) = (0x0e00_0000, 0x0100_0000);

/// The kernel command line. `oops=panic panic=-1`: an oops becomes a reset at once (the
/// monitor turns it into a failed run) instead of a task stuck in D state; `nokaslr` keeps
/// addresses the same from run to run.
const BOOTARGS: &str = "console=ttyAMA0 panic=-1 oops=panic nokaslr";

/// The busybox applets the init script and a person at the UART use.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "lsmod", "dmesg", "grep", "ls", "cat", "echo", "poweroff", "reboot",
    "sleep", "uname", "mkdir", "head", "tail", "true", "false",
];

/// How many UART lines a failed run shows.
const LAST_LINES: usize = 40;

/// The meta package whose dependency names the kernel to boot (Debian 12's default: 6.1).
const DEFAULT_KERNEL_META: &str = "linux-image-arm64";

struct Options {
    build_only: bool,
    timeout: Duration,
    kernel_meta: String,
    smp: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        build_only: false,
        timeout: Duration::from_secs(300),
        kernel_meta: DEFAULT_KERNEL_META.to_string(),
        smp: DEFAULT_SMP,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--build-only" => options.build_only = true,
            "--timeout" => {
                let secs = rest
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("--timeout needs a number of seconds")?;
                options.timeout = Duration::from_secs(secs);
            }
            "--smp" => options.smp = crate::counters::parse_smp(rest.next())?,
            "--kernel" => {
                options.kernel_meta = rest
                    .next()
                    .filter(|m| m.starts_with("linux-image-") && !m.contains(['/', ' ']))
                    .ok_or("--kernel needs a Debian meta package, e.g. linux-image-6.12-arm64")?
                    .clone();
            }
            other => return Err(format!("linux: unknown argument {other}")),
        }
    }
    Ok(options)
}

/// `cargo xtask linux [--build-only] [--timeout SECS] [--kernel META] [--smp N]`.
pub fn linux(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    let started = Instant::now();
    let root = workspace_root();
    let cache = root.join(".cache").join("linux");
    let out = root.join("target").join("linux");
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    ensure_debian_packages(crate::BARE_METAL_PACKAGES)?;
    ensure_debian_packages(HOST_PACKAGES)?;
    let packages = debian_packages(&cache, &options.kernel_meta)?;
    let sysroot = unpack(&cache, &options.kernel_meta, &packages)?;
    let kernel = Kernel::find(&sysroot, &out)?;
    let test = build_test(&root, &sysroot, &out)?;
    let initramfs = build_initramfs(&root, &sysroot, &kernel, &test, &out)?;
    // The firmware with the monitor's `linux` feature: x0 = the device tree at `DTB_ADDR`, the
    // GIC's interrupts handed to the normal world.
    // The monitor's `linux` feature and no test commands: the firmware a product would ship
    // (linux/teeshm-test.c never asks WHERE for secure addresses).
    let firmware = crate::qemu::build(crate::qemu::Variant::Linux, &[])?.secure;
    let machine = Machine {
        base: MACHINE,
        smp: options.smp,
    };
    let dtb = build_dtb(&machine, &firmware, initramfs.1, &out)?;
    eprintln!(
        "xtask: linux: kernel {} ({} bytes), initramfs {} bytes, device tree {}; built in {:.1} s",
        kernel.release,
        kernel.image_len,
        initramfs.1,
        dtb.display(),
        started.elapsed().as_secs_f64()
    );
    if options.build_only {
        return Ok(());
    }
    boot(
        &machine,
        &firmware,
        &kernel.image,
        &dtb,
        &initramfs.0,
        &out,
        options.timeout,
    )
}

// ---- the test program, the initramfs and the device tree ----------------------------------

fn build_test(root: &Path, sysroot: &Path, out: &Path) -> Result<PathBuf, String> {
    let source = root.join("linux").join("teeshm-test.c");
    let binary = out.join("teeshm-test");
    let libdir = sysroot.join("usr/lib/aarch64-linux-gnu");
    run(Command::new("aarch64-linux-gnu-gcc")
        .args(["-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(sysroot.join("usr/include"))
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .arg("-L")
        .arg(&libdir)
        .args(["-l:libteec.so.1", "-lpthread"]))?;
    Ok(binary)
}

/// Files of the initramfs, as (path in the archive, contents).
enum Entry {
    Dir,
    File(Vec<u8>, u32),
    Symlink(String),
    CharDev(u32, u32),
}

/// Builds `initramfs.cpio` and returns it with its size.
fn build_initramfs(
    root: &Path,
    sysroot: &Path,
    kernel: &Kernel,
    test: &Path,
    out: &Path,
) -> Result<(PathBuf, u64), String> {
    let entries = initramfs_entries(sysroot, kernel, test, &root.join("linux").join("init"))?;
    write_cpio(&entries, &out.join("initramfs.cpio"))
}

/// Writes `entries` as a `newc` cpio archive at `path`; returns it with its size.
fn write_cpio(entries: &[(String, Entry)], path: &Path) -> Result<(PathBuf, u64), String> {
    let archive = cpio_newc(entries);
    fs::write(path, &archive).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((path.to_path_buf(), archive.len() as u64))
}

/// The initramfs's files: busybox, tee.ko and optee.ko, glibc's loader and libc, libteec, the
/// test, and `init` as /init.
fn initramfs_entries(
    sysroot: &Path,
    kernel: &Kernel,
    test: &Path,
    init: &Path,
) -> Result<Vec<(String, Entry)>, String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let gnu = sysroot.join("lib/aarch64-linux-gnu");
    let usr_gnu = sysroot.join("usr/lib/aarch64-linux-gnu");
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/aarch64-linux-gnu",
        "lib/modules",
        "usr",
        "usr/lib",
        "usr/lib/aarch64-linux-gnu",
    ] {
        entries.push((dir.to_string(), Entry::Dir));
    }
    entries.push(("dev/console".into(), Entry::CharDev(5, 1)));
    entries.push((
        "bin/busybox".into(),
        Entry::File(read(&sysroot.join("bin/busybox"))?, 0o755),
    ));
    for applet in APPLETS {
        entries.push((format!("bin/{applet}"), Entry::Symlink("busybox".into())));
    }
    entries.push(("init".into(), Entry::File(read(init)?, 0o755)));
    entries.push(("bin/teeshm-test".into(), Entry::File(read(test)?, 0o755)));
    entries.push((
        "lib/modules/tee.ko".into(),
        Entry::File(read(&kernel.tee)?, 0o644),
    ));
    entries.push((
        "lib/modules/optee.ko".into(),
        Entry::File(read(&kernel.optee)?, 0o644),
    ));
    // glibc's loader and libc (all libteec and the test need), and libteec itself.
    entries.push((
        "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1".into(),
        Entry::File(read(&gnu.join("ld-linux-aarch64.so.1"))?, 0o755),
    ));
    entries.push((
        "lib/ld-linux-aarch64.so.1".into(),
        Entry::Symlink("aarch64-linux-gnu/ld-linux-aarch64.so.1".into()),
    ));
    entries.push((
        "lib/aarch64-linux-gnu/libc.so.6".into(),
        Entry::File(read(&gnu.join("libc.so.6"))?, 0o755),
    ));
    let libteec =
        fs::canonicalize(usr_gnu.join("libteec.so.1")).map_err(|e| format!("libteec.so.1: {e}"))?;
    entries.push((
        "usr/lib/aarch64-linux-gnu/libteec.so.1".into(),
        Entry::File(read(&libteec)?, 0o755),
    ));
    Ok(entries)
}

/// A `newc` cpio archive (what the kernel unpacks as an initramfs): owner root, mtime 0.
fn cpio_newc(entries: &[(String, Entry)]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    fn record(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    }
    let mut out = Vec::new();
    for (i, (name, entry)) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match entry {
            Entry::Dir => record(&mut out, ino, name, 0o040_755, (0, 0), &[]),
            Entry::File(data, perm) => record(&mut out, ino, name, 0o100_000 | perm, (0, 0), data),
            Entry::Symlink(target) => {
                record(&mut out, ino, name, 0o120_777, (0, 0), target.as_bytes())
            }
            Entry::CharDev(major, minor) => {
                record(&mut out, ino, name, 0o020_600, (*major, *minor), &[])
            }
        }
    }
    record(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// QEMU's device tree for this machine and firmware, with what Linux needs added.
fn build_dtb(
    machine: &Machine,
    firmware: &Path,
    initrd_len: u64,
    out: &Path,
) -> Result<PathBuf, String> {
    device_tree(
        machine,
        firmware,
        &dts_additions(initrd_len, machine.smp),
        &out.join("teeshm-virt"),
    )
}

/// QEMU's own device tree for `machine` and `firmware` (`-machine dumpdtb=`), with `additions`
/// (a second root block, which dtc merges into the first), compiled by dtc to `<stem>.dtb`
/// (the source kept beside it as `<stem>.dts`).
fn device_tree(
    machine: &Machine,
    firmware: &Path,
    additions: &str,
    stem: &Path,
) -> Result<PathBuf, String> {
    let dumped = stem.with_extension("qemu.dtb");
    let mut dump = Command::new("qemu-system-aarch64");
    dump.args(machine.args())
        .args(["-display", "none"])
        .arg("-bios")
        .arg(firmware)
        .arg("-machine")
        .arg(format!("dumpdtb={}", dumped.display()));
    run(&mut dump)?;
    let base = Command::new("dtc")
        .args(["-q", "-I", "dtb", "-O", "dts"])
        .arg(&dumped)
        .output()
        .map_err(|e| format!("cannot run dtc: {e}"))?;
    if !base.status.success() {
        return Err(format!(
            "dtc could not read {}: {}",
            dumped.display(),
            String::from_utf8_lossy(&base.stderr)
        ));
    }
    let mut dts = String::from_utf8_lossy(&base.stdout).into_owned();
    dts.push_str(additions);
    let source = stem.with_extension("dts");
    fs::write(&source, &dts).map_err(|e| format!("cannot write {}: {e}", source.display()))?;
    let dtb = stem.with_extension("dtb");
    run(Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&dtb)
        .arg(&source))?;
    Ok(dtb)
}

/// The QEMU command that boots `firmware` on `machine` with `loads` (file, address) put in
/// RAM by `-device loader`, semihosting on, no reboot (`run_streaming` adds the UARTs).
fn qemu_command(machine: &Machine, firmware: &Path, loads: &[(&Path, u64)]) -> Command {
    let mut command = Command::new("qemu-system-aarch64");
    command.args(machine.args()).args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-semihosting",
        "-no-reboot",
    ]);
    command.arg("-bios").arg(firmware);
    for (file, addr) in loads {
        command.args([
            "-device",
            &format!("loader,file={},addr={addr:#x},force-raw=on", file.display()),
        ]);
    }
    command
}

/// Runs `command` (see [`crate::qemu::run_streaming`]; the secure UART in
/// `out/secure-uart.log`), prints every UART line with its time and keeps it in `out/uart.log`,
/// notes the milestones, and hands each line to `on_line` too; returns the run, its milestones
/// and the log's path.
fn run_logged(
    command: &mut Command,
    out: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<(crate::qemu::StreamedRun, Milestones, PathBuf), String> {
    eprintln!("xtask: running {command:?}");
    let log_path = out.join("uart.log");
    let mut log = fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut seen = Milestones::default();
    let run = crate::qemu::run_streaming(
        command,
        &out.join("secure-uart.log"),
        timeout,
        LAST_LINES,
        |t, line| {
            println!("[{t:7.3}] {line}");
            let _ = writeln!(log, "[{t:7.3}] {line}");
            note_milestone(&mut seen, t, line);
            on_line(line);
        },
    )?;
    let _ = log.flush();
    Ok((run, seen, log_path))
}

/// The nodes added to QEMU's tree (a second root block, which dtc merges into the first).
fn dts_additions(initrd_len: u64, smp: usize) -> String {
    let cells = |v: u64| format!("<{:#x} {:#x}>", v >> 32, v & 0xffff_ffff);
    format!(
        r#"{firmware}
/* Added by `cargo xtask linux` (xtask/src/linux/mod.rs). */
/ {{
	chosen {{
		bootargs = "{BOOTARGS}";
		linux,initrd-start = {initrd_start};
		linux,initrd-end = {initrd_end};
		/delete-property/ kaslr-seed;
	}};
}};
"#,
        firmware = firmware_nodes(smp),
        initrd_start = cells(INITRD_ADDR),
        initrd_end = cells(INITRD_ADDR + initrd_len),
    )
}

/// What any normal world of teeshm's firmware needs in QEMU's tree: PSCI over SMC, the OP-TEE
/// node, secure RAM reserved.
fn firmware_nodes(smp: usize) -> String {
    let (secure_base, secure_size) = SECURE_RAM;
    let secure_reg = format!(
        "<{:#x} {:#x} {:#x} {:#x}>",
        secure_base >> 32,
        secure_base & 0xffff_ffff,
        secure_size >> 32,
        secure_size & 0xffff_ffff
    );
    // QEMU gives its CPUs no enable method when firmware runs EL3: each is brought up by
    // PSCI CPU_ON through the monitor.
    let cpus: String = (0..smp)
        .map(|n| {
            format!("\tcpus {{\n\t\tcpu@{n} {{\n\t\t\tenable-method = \"psci\";\n\t\t}};\n\t}};\n")
        })
        .collect();
    format!(
        r#"
/* Added by `cargo xtask` (xtask/src/linux/mod.rs): teeshm's firmware. */
/ {{
	/* The monitor implements PSCI 1.1 at EL3: CPU_ON, CPU_OFF, AFFINITY_INFO,
	   MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET, FEATURES. */
	psci {{
		compatible = "arm,psci-1.0", "arm,psci-0.2";
		method = "smc";
	}};
{cpus}
	firmware {{
		optee {{
			compatible = "linaro,optee-tz";
			method = "smc";
		}};
	}};

	reserved-memory {{
		#address-cells = <2>;
		#size-cells = <2>;
		ranges;

		/* teeshm's EL3 monitor and S-EL1 core (QEMU's secure RAM). */
		teeshm-secure@{secure_base:x} {{
			reg = {secure_reg};
			no-map;
		}};
	}};
}};
"#
    )
}

// ---- the run ------------------------------------------------------------------------------

/// What the UART showed, with the time each milestone appeared.
#[derive(Default)]
struct Milestones {
    kernel: Option<f64>,
    init: Option<f64>,
    probed: Option<f64>,
    summary: Option<(f64, String)>,
    /// The test's user-TA group: its `user-ta: N passed, M failed` line, (N, M).
    user_ta: Option<(u32, u32)>,
    /// The monitor's report of the core's agreement check after SYSTEM_OFF.
    agreement: Option<String>,
    /// The first report of a secure panic or exception (`qemu::secure_failure`).
    secure_failure: Option<String>,
    /// The firmware's counters of the run's CPUs.
    smp: crate::counters::SmpCounters,
}

fn boot(
    machine: &Machine,
    firmware: &Path,
    image: &Path,
    dtb: &Path,
    initramfs: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let mut command = qemu_command(
        machine,
        firmware,
        &[
            (image, KERNEL_ADDR),
            (dtb, DTB_ADDR),
            (initramfs, INITRD_ADDR),
        ],
    );
    let started = Instant::now();
    let (run, seen, log_path) = run_logged(&mut command, out, timeout, |_| {})?;
    let (status, timed_out, last) = (run.status, run.timed_out, run.last);
    let total = started.elapsed().as_secs_f64();

    let fmt_t = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.2} s"));
    eprintln!(
        "xtask: linux: kernel banner {}, /init {}, driver probed {}, test done {}, QEMU exit {total:.2} s",
        fmt_t(seen.kernel),
        fmt_t(seen.init),
        fmt_t(seen.probed),
        fmt_t(seen.summary.as_ref().map(|s| s.0)),
    );
    let failure = |why: String| {
        let mut text = format!("{why}\nlast UART lines:\n");
        for line in &last {
            let _ = writeln!(text, "  | {line}");
        }
        let _ = write!(text, "(whole log: {})", log_path.display());
        Err(text)
    };
    if timed_out {
        return failure(format!(
            "linux: TIMEOUT: no end after {} s; QEMU was killed",
            timeout.as_secs()
        ));
    }
    let code = status.and_then(|s| s.code());
    let summary_ok = seen
        .summary
        .as_ref()
        .is_some_and(|(_, s)| s.ends_with(" 0 failed") && !s.starts_with("0 passed"));
    let agreement_ok = seen.agreement.as_deref() == Some("0 disagreements");
    let user_ta_ok = seen.user_ta.is_some_and(|(p, f)| p > 0 && f == 0);
    let report = out.join("report.json");
    let summary = seen.summary.as_ref().map(|(_, s)| s.as_str());
    fs::write(
        &report,
        with_field(
            &seen.smp.report(machine.smp, seen.disagreements(), summary),
            "user_ta",
            &user_ta_json(seen.user_ta),
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", report.display()))?;
    if let Some(report) = &seen.secure_failure {
        return failure(format!("linux: FAILED: the secure world died: `{report}`"));
    }
    let counters = seen.smp.verdict(machine.smp, None, true);
    match (code, &seen.summary, counters) {
        (Some(0), Some((_, summary)), Ok(())) if summary_ok && agreement_ok && user_ta_ok => {
            eprintln!(
                "xtask: linux: {summary} ({}); QEMU exited 0 (PSCI SYSTEM_OFF); the core's agreement check after power-off: 0 disagreements; on {} CPUs: {} calls in the core at once at most, {} resumed on another CPU, {} normal-world interrupts let through; report {}",
                user_ta_line(seen.user_ta),
                machine.smp,
                seen.smp.max_concurrent_calls.unwrap_or(0),
                seen.smp.resumed_on_other_cpu.unwrap_or(0),
                seen.smp
                    .cpus
                    .iter()
                    .map(|c| c.foreign_interrupts)
                    .sum::<u64>(),
                report.display()
            );
            println!("linux: OK");
            Ok(())
        }
        (code, summary, counters) => failure(format!(
            "linux: FAILED: QEMU exit status {}, agreement check {}, test summary {}, user-TA group `{}`, CPUs: {}",
            code.map_or("none (killed by a signal)".to_string(), |c| c.to_string()),
            seen.agreement.as_deref().unwrap_or("missing"),
            summary
                .as_ref()
                .map_or("missing".to_string(), |(_, s)| format!("`{s}`")),
            user_ta_line(seen.user_ta),
            counters.err().unwrap_or_else(|| "as wanted".into()),
        )),
    }
}

impl Milestones {
    /// What the core's agreement check after power-off found, from the monitor's line.
    fn disagreements(&self) -> Option<u64> {
        self.agreement
            .as_deref()
            .and_then(|a| a.strip_suffix(" disagreements"))
            .and_then(|n| n.parse().ok())
    }
}

fn note_milestone(seen: &mut Milestones, t: f64, line: &str) {
    if seen.secure_failure.is_none() && crate::qemu::secure_failure(line).is_some() {
        seen.secure_failure = Some(line.trim().to_string());
    }
    if seen.kernel.is_none() && line.contains("Booting Linux on physical CPU") {
        seen.kernel = Some(t);
    }
    if seen.init.is_none() && line.contains("Run /init as init process") {
        seen.init = Some(t);
    }
    if seen.probed.is_none() && line.contains("optee: initialized driver") {
        seen.probed = Some(t);
    }
    if let Some(at) = line.find("agreement check: ") {
        seen.agreement = line
            .get(at + "agreement check: ".len()..)
            .map(str::to_string);
    }
    if is_summary(line) {
        seen.summary = Some((t, line.trim().to_string()));
    }
    if let Some(counts) = user_ta_summary(line) {
        seen.user_ta = Some(counts);
    }
    seen.smp.note(line);
}

/// `user-ta: N passed, M failed` alone on a line (the test's user-TA group): (N, M).
fn user_ta_summary(line: &str) -> Option<(u32, u32)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["user-ta:", n, "passed,", m, "failed"] => Some((n.parse().ok()?, m.parse().ok()?)),
        _ => None,
    }
}

/// The user-TA group's line as the test prints it (`missing` without one).
fn user_ta_line(counts: Option<(u32, u32)>) -> String {
    counts.map_or("user-ta: missing".to_string(), |(p, f)| {
        format!("user-ta: {p} passed, {f} failed")
    })
}

/// The user-TA group's counts in a report: `{"passed": N, "failed": M}`, or `null`.
fn user_ta_json(counts: Option<(u32, u32)>) -> String {
    counts.map_or("null".to_string(), |(p, f)| {
        format!("{{\"passed\": {p}, \"failed\": {f}}}")
    })
}

/// `report` (one JSON object, a newline after it) with `"name": value` added as its last field.
fn with_field(report: &str, name: &str, value: &str) -> String {
    let body = report.trim_end();
    let body = body.strip_suffix('}').unwrap_or(body);
    format!("{body}, \"{name}\": {value}}}\n")
}

/// `N passed, M failed` alone on a line.
fn is_summary(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), [n, "passed,", m, "failed"]
        if n.parse::<u32>().is_ok() && m.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        assert!(is_summary("41 passed, 0 failed"));
        assert!(is_summary("  3 passed, 2 failed "));
        assert!(!is_summary("ok 3 passed, 2 failed"));
        assert!(!is_summary("tests: 3 passed, 2 failed, 0 ignored"));
    }

    #[test]
    fn user_ta_summary_line() {
        assert_eq!(
            user_ta_summary("user-ta: 31 passed, 0 failed"),
            Some((31, 0))
        );
        assert_eq!(
            user_ta_summary(" user-ta: 2 passed, 5 failed "),
            Some((2, 5))
        );
        assert_eq!(user_ta_summary("31 passed, 0 failed"), None);
        assert_eq!(user_ta_summary("domu1| user-ta: 31 passed, 0 failed"), None);
        assert_eq!(user_ta_summary("user-ta touch: 1 passed, 0 failed"), None);
        assert!(!is_summary("user-ta: 31 passed, 0 failed"));
        assert_eq!(
            with_field(
                "{\"smp\": 4, \"summary\": null}\n",
                "user_ta",
                &user_ta_json(Some((3, 0)))
            ),
            "{\"smp\": 4, \"summary\": null, \"user_ta\": {\"passed\": 3, \"failed\": 0}}\n"
        );
        assert_eq!(user_ta_json(None), "null");
    }

    #[test]
    fn cpio_is_newc_and_aligned() {
        let archive = cpio_newc(&[
            ("bin".into(), Entry::Dir),
            ("bin/x".into(), Entry::File(vec![1, 2, 3], 0o755)),
        ]);
        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn additions_name_initrd_and_optee() {
        let dts = dts_additions(0x1234, 2);
        assert!(dts.contains("linux,initrd-start = <0x0 0x48100000>"));
        assert!(dts.contains("cpu@1 {\n\t\t\tenable-method = \"psci\";"));
        assert!(!dts.contains("cpu@2"));
        assert!(dts.contains("linux,initrd-end = <0x0 0x48101234>"));
        assert!(dts.contains("compatible = \"linaro,optee-tz\""));
        assert!(dts.contains("reg = <0x0 0xe000000 0x0 0x1000000>"));
    }
}
