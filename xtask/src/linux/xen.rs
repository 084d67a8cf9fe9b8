//! `cargo xtask xen`: the Xen hypervisor, built from Debian's own source package with its
//! unmodified OP-TEE mediator, as the normal world of teeshm's firmware on
//! `qemu-system-aarch64 -M virt,secure=on,virtualization=on` (docs/xen.md).
//!
//! 1. Debian's Xen source (`apt-get source xen`, bookworm main: a `deb-src` entry for the same
//!    mirror and suites as the machine's `deb` one is added when missing), unpacked and built
//!    once into `.cache/xen` (ignored by git): `defconfig` plus `CONFIG_UNSUPPORTED`,
//!    `CONFIG_TEE` and `CONFIG_OPTEE` (Debian's own hypervisor package is built without the
//!    mediator), nothing patched.
//! 2. dom0 is `cargo xtask linux`'s normal world: Debian's kernel, its tee and optee modules,
//!    Debian's libteec and the same test (`linux/teeshm-test.c`) in the same initramfs.
//! 3. The device tree: QEMU's own for this machine, the OP-TEE node, PSCI over SMC, secure RAM
//!    reserved, and Xen's boot modules in `/chosen` (dom0's kernel and initramfs, the command
//!    lines).
//! 4. The firmware with the monitor's `xen` feature: the normal world entered at EL2, so the
//!    core serves the guests Xen's mediator announces (`NormalWorld::Virtualized`).
//! 5. dom0's initramfs adds Debian's Xen toolstack (xen-utils-4.17: xenstored, xenconsoled,
//!    xl, and their libraries), Xen's device modules, and the domUs' kernel, initramfs
//!    (`linux/xen-domu-init`) and `xl` configurations (`tee = "optee"`), and a third domU that
//!    misbehaves on purpose: the firmware's Rust client built as a Xen guest (`xen-domu`). dom0's
//!    init (`linux/xen-dom0-init`) starts the toolstack, creates the three domUs, runs the
//!    libteec test while domu1 and domu2 run it too, destroys domu2 with `xl destroy` in the
//!    middle of its test loop and domu3 once it has left calls waiting in RPCs, a buffer
//!    unregistered under one of them and all its threads taken, waits for domu1 to power off
//!    and powers off; each domU's console (xenconsoled's log) is followed live on dom0's, each
//!    line prefixed with the domain's name.
//! 6. QEMU runs with a timeout; the UART (Xen's console, dom0's output on it) is shown live and
//!    kept in `target/xen/uart.log`; `target/xen/report.json` records each domain's results,
//!    the VM_CREATED and VM_DESTROYED calls the core acknowledged and what each guest still
//!    held in the core at its final check. The run passes when Xen's mediator probed the TEE,
//!    three domains ran the test, no domain failed a case, the misbehaving one ended its cases,
//!    the destroyed ones hold nothing in the core, QEMU exited 0 (dom0 powered off, Xen then PSCI SYSTEM_OFF) and the
//!    core's agreement check after power-off found 0 disagreements. Its last line is
//!    `xen: N passed, M failed` (test cases over all domains).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::debian::{Kernel, arm64_deb, debian_packages, ensure_arm64_architecture, unpack};
use super::{
    DEFAULT_KERNEL_META, DEFAULT_SMP, DTB_ADDR, Entry, HOST_PACKAGES, KERNEL_ADDR, Machine,
    build_test, initramfs_entries, is_summary, user_ta_line, user_ta_summary, write_cpio,
};
use crate::counters::fields;
use crate::{ensure_debian_packages, run, workspace_root};

/// Host packages Xen's build needs besides the cross compiler; dpkg-dev unpacks the source.
const XEN_BUILD_PACKAGES: &[&str] = &["flex", "bison", "dpkg-dev", "python3"];

/// The machine: as `cargo xtask linux`'s (a GICv3 the monitor hands to the normal world),
/// with EL2 for the hypervisor.
const MACHINE: &[&str] = &[
    "-M",
    "virt,secure=on,virtualization=on,gic-version=3",
    "-cpu",
    "cortex-a57",
    "-m",
    "1024",
    "-net",
    "none",
];

/// Where dom0's kernel and initramfs are loaded (Xen's boot modules): after the device tree,
/// 2 MiB aligned.
const DOM0_KERNEL_ADDR: u64 = 0x4a00_0000;

/// Xen's command line: its console on the PL011 (dom0's output goes there too), dom0's memory
/// (the machine's 1 GiB holds dom0, two domUs of 160 MiB, Xen and the boot modules), and at
/// most two vCPUs for dom0: with as many dom0 vCPUs as the 4 emulated CPUs (on this machine's
/// 2 host cores under TCG), each `xl create` took about 30 s (a run of 262 s against 32 s,
/// docs/xen.md), and single-threaded TCG made the kernel report a soft lockup in `xl`.
const XEN_BOOTARGS: &str = "console=dtuart dtuart=/pl011@9000000 dom0_mem=256M dom0_max_vcpus=2 \
     loglvl=all guest_loglvl=all";

/// Debian's Xen toolstack for dom0 (arm64, the same release as the hypervisor's source) and
/// the libraries it loads beside glibc.
const TOOLSTACK_PACKAGES: &[&str] = &[
    "xen-utils-4.17",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenstore4",
    "libxentoollog1",
    "libxenhypfs1",
    "libxendevicemodel1",
    "libxentoolcore1",
    "libgcc-s1",
    "libyajl2",
    "libfdt1",
    "libuuid1",
    "zlib1g",
];

/// dom0's kernel modules of Xen's devices (Debian builds them as modules), in load order
/// (xenfs uses privcmd's).
const XEN_MODULES: &[&str] = &[
    "xen-privcmd",
    "xenfs/xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
];

/// The Linux domUs dom0 creates: name and what their kernel command line adds
/// (`teeshm.loop`: the test runs until the domain is destroyed).
const DOMUS: &[(&str, &str)] = &[("domu1", ""), ("domu2", " teeshm.loop")];

/// The domU that misbehaves on purpose: the firmware's Rust client built as a Xen guest
/// (`xen-domu`), which leaves calls waiting in RPCs, unregisters a buffer a waiting call holds,
/// takes all its threads, and is destroyed by dom0 once it printed its summary.
const HOSTILE_DOMU: &str = "domu3";

/// Its configuration: 144 MiB (the client's image, heap and page pool lie in the first 128
/// MiB, and Xen's toolstack puts the device tree at 128 MiB), Xen's emulated SBSA UART as
/// its console (xenconsoled logs it as `guest-domu3-vuart0.log`).
const HOSTILE_CONFIG: &str = "name = \"domu3\"\nkernel = \"/boot/domu3.img\"\nmemory = 144\n\
     vcpus = 1\ntee = \"optee\"\nvuart = \"sbsa_uart\"\n";

/// dom0's command line (its console is Xen's, `hvc0`).
const DOM0_BOOTARGS: &str = "console=hvc0 panic=-1 oops=panic nokaslr";

/// What a run of Xen shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// dom0 and the three domUs, one destroyed mid-test and one misbehaving (the default).
    Domains,
    /// dom0 alone (`teeshm.dom0-alone` on its command line): Xen's own cost per call, for
    /// `--compare`.
    Dom0Alone,
}

/// `cargo xtask xen [--build-only] [--timeout SECS] [--compare RUNS] [--smp N]`.
pub fn xen(args: &[String]) -> Result<(), String> {
    let mut build_only = false;
    let mut smp = DEFAULT_SMP;
    let mut timeout = Duration::from_secs(600);
    let mut compare = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--build-only" => build_only = true,
            "--timeout" => {
                timeout = Duration::from_secs(
                    rest.next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--timeout needs a number of seconds")?,
                );
            }
            "--smp" => smp = crate::counters::parse_smp(rest.next())?,
            "--compare" => {
                compare = Some(
                    rest.next()
                        .and_then(|s| s.parse::<usize>().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--compare needs a number of runs")?,
                );
            }
            other => return Err(format!("xen: unknown argument {other}")),
        }
    }
    let started = Instant::now();
    let root = workspace_root();
    let out = root.join("target").join("xen");
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    ensure_debian_packages(crate::BARE_METAL_PACKAGES)?;
    ensure_debian_packages(HOST_PACKAGES)?;
    ensure_debian_packages(XEN_BUILD_PACKAGES)?;
    let xen = build_xen(&root.join(".cache").join("xen"))?;

    let linux_cache = root.join(".cache").join("linux");
    let packages = debian_packages(&linux_cache, DEFAULT_KERNEL_META)?;
    let sysroot = unpack(&linux_cache, DEFAULT_KERNEL_META, &packages)?;
    let kernel = Kernel::find(&sysroot, &out)?;
    let test = build_test(&root, &sysroot, &out)?;
    let toolstack = toolstack(&root.join(".cache").join("xen"))?;
    let (domu_cpio, _) = write_cpio(
        &initramfs_entries(&sysroot, &kernel, &test, &root.join("linux/xen-domu-init"))?,
        &out.join("domu.cpio"),
    )?;
    let images = crate::qemu::build(crate::qemu::Variant::Xen, &[])?;
    let firmware = images.secure;
    let mut entries =
        initramfs_entries(&sysroot, &kernel, &test, &root.join("linux/xen-dom0-init"))?;
    dom0_additions(
        &mut entries,
        &toolstack,
        &kernel,
        &domu_cpio,
        &images.client,
    )?;
    let (initramfs, initramfs_len) = write_cpio(&entries, &out.join("dom0.cpio"))?;
    let initrd_addr = (DOM0_KERNEL_ADDR + kernel.image_len).next_multiple_of(2 << 20);
    let modules = Modules {
        kernel: (DOM0_KERNEL_ADDR, kernel.image_len),
        initrd: (initrd_addr, initramfs_len),
    };
    eprintln!(
        "xtask: xen: {} ({} bytes), dom0 kernel {} ({} bytes), initramfs {} bytes; built in {:.1} s",
        xen.display(),
        fs::metadata(&xen).map_or(0, |m| m.len()),
        kernel.release,
        kernel.image_len,
        initramfs_len,
        started.elapsed().as_secs_f64()
    );
    let machine = Machine { base: MACHINE, smp };
    let dtb = build_dtb(&machine, &firmware, &modules, &out, Mode::Domains)?;
    if build_only {
        return Ok(());
    }
    let run = |dtb: &Path, mode: Mode| {
        let loads = [
            (xen.as_path(), KERNEL_ADDR),
            (dtb, DTB_ADDR),
            (kernel.image.as_path(), DOM0_KERNEL_ADDR),
            (initramfs.as_path(), initrd_addr),
        ];
        boot(&machine, &firmware, &loads, &out, timeout, mode)
    };
    let Some(runs) = compare else {
        return run(&dtb, Mode::Domains).map(|_| ());
    };
    let alone = build_dtb(&machine, &firmware, &modules, &out, Mode::Dom0Alone)?;
    compare_with_linux(runs, smp, &out, || {
        run(&alone, Mode::Dom0Alone)?
            .domains
            .iter()
            .find(|d| d.name == "dom0")
            .and_then(|d| d.churn)
            .ok_or_else(|| "dom0 under Xen printed no churn time".to_string())
    })
}

/// Whether a case's line (after `ok ` or `FAIL `) is one of the test's user-TA group.
fn is_user_ta_case(case: &str) -> bool {
    case.trim_start().starts_with("user TA: ")
}

/// The calls of the test's churn case (300 rounds of register, invoke, release).
const CHURN_CALLS: f64 = 900.0;

/// The seconds of the test's churn case on a console line (`ok   300 register/invoke/release
/// rounds (T s)`).
fn churn_seconds(text: &str) -> Option<f64> {
    text.strip_prefix("ok   300 register/invoke/release rounds (")?
        .strip_suffix(" s)")?
        .parse()
        .ok()
}

/// `--compare RUNS`: the same test (`linux/teeshm-test.c`) on the same firmware and the same
/// CPUs, alternately directly under Linux (`cargo xtask linux --smp N`) and in dom0 alone under
/// Xen, RUNS times each;
/// prints calls per second of the churn case (min, median, max) side by side and writes
/// `target/xen/compare.json`.
fn compare_with_linux(
    runs: usize,
    smp: usize,
    out: &Path,
    mut xen_run: impl FnMut() -> Result<f64, String>,
) -> Result<(), String> {
    let root = workspace_root();
    let (mut direct, mut under_xen) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        super::linux(&["--smp".to_string(), smp.to_string()])?;
        let log = root.join("target/linux/uart.log");
        let text =
            fs::read_to_string(&log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
        let t = text
            .lines()
            .filter_map(|l| l.split_once("] ").map(|(_, rest)| rest))
            .find_map(churn_seconds)
            .ok_or("Linux printed no churn time")?;
        direct.push(CHURN_CALLS / t);
        under_xen.push(CHURN_CALLS / xen_run()?);
    }
    let spread = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        [v[0], v[v.len() / 2], v[v.len() - 1]]
    };
    let (d, x) = (spread(&mut direct), spread(&mut under_xen));
    println!(
        "xen: calls per second of the churn case ({runs} runs each, {smp} CPUs, min / median / max):"
    );
    println!("| where | calls/s |\n|---|---|");
    println!(
        "| Linux directly on the firmware | {:.0} / {:.0} / {:.0} |",
        d[0], d[1], d[2]
    );
    println!(
        "| dom0 alone under Xen | {:.0} / {:.0} / {:.0} |",
        x[0], x[1], x[2]
    );
    println!(
        "xen: Linux directly / dom0 under Xen (medians): {:.2}",
        d[1] / x[1]
    );
    let json = format!(
        "{{\"calls\": {CHURN_CALLS}, \"runs\": {runs}, \"smp\": {smp}, \"linux_calls_per_s\": {d:?}, \"xen_dom0_alone_calls_per_s\": {x:?}, \"ratio_of_medians\": {:.3}}}\n",
        d[1] / x[1]
    );
    let path = out.join("compare.json");
    fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Debian's arm64 toolstack packages, downloaded once into `cache/debs` and unpacked into
/// `cache/root`; returns that root.
fn toolstack(cache: &Path) -> Result<PathBuf, String> {
    let debs = cache.join("debs");
    let root = cache.join("root");
    let stamp = cache.join("root.stamp");
    let wanted = TOOLSTACK_PACKAGES.join("\n");
    if root.is_dir() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(root);
    }
    fs::create_dir_all(&debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    ensure_arm64_architecture()?;
    let _ = fs::remove_dir_all(&root);
    for name in TOOLSTACK_PACKAGES {
        let deb = arm64_deb(&debs, name)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(root)
}

/// What dom0's initramfs holds beside the test's: the toolstack (`/usr/lib/xen-4.17`, its
/// libraries), Xen's device modules, the domUs' kernel, initramfs and configurations, the
/// hostile domU's image (`hostile`, the firmware's client built as a Xen guest), and the
/// directories the toolstack writes.
fn dom0_additions(
    entries: &mut Vec<(String, Entry)>,
    toolstack: &Path,
    kernel: &Kernel,
    domu_cpio: &Path,
    hostile: &Path,
) -> Result<(), String> {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    for dir in [
        "usr/lib/xen-4.17",
        "usr/lib/aarch64-linux-gnu",
        "lib/aarch64-linux-gnu",
    ] {
        add_tree(entries, toolstack, dir)?;
    }
    entries.push(("lib/modules/xen".into(), Entry::Dir));
    entries.push(("lib/modules/xen/xenfs".into(), Entry::Dir));
    let xen_drivers = kernel
        .tee
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("xen"))
        .ok_or("no drivers directory")?;
    for module in XEN_MODULES {
        entries.push((
            format!("lib/modules/xen/{module}.ko"),
            Entry::File(read(&xen_drivers.join(format!("{module}.ko")))?, 0o644),
        ));
    }
    for dir in ["boot", "etc", "etc/xen", "var"] {
        entries.push((dir.into(), Entry::Dir));
    }
    entries.push((
        "boot/vmlinuz".into(),
        Entry::File(read(&kernel.image)?, 0o644),
    ));
    entries.push((
        "boot/domu.cpio".into(),
        Entry::File(read(domu_cpio)?, 0o644),
    ));
    entries.push((
        format!("boot/{HOSTILE_DOMU}.img"),
        Entry::File(read(hostile)?, 0o644),
    ));
    entries.push((
        format!("etc/xen/{HOSTILE_DOMU}.cfg"),
        Entry::File(HOSTILE_CONFIG.as_bytes().to_vec(), 0o644),
    ));
    entries.push(("etc/xen/xl.conf".into(), Entry::File(Vec::new(), 0o644)));
    for (name, extra) in DOMUS {
        let config = format!(
            "name = \"{name}\"\nkernel = \"/boot/vmlinuz\"\nramdisk = \"/boot/domu.cpio\"\n\
             extra = \"console=hvc0 panic=-1 oops=panic nokaslr{extra}\"\nmemory = 160\n\
             vcpus = 1\ntee = \"optee\"\n"
        );
        entries.push((
            format!("etc/xen/{name}.cfg"),
            Entry::File(config.into_bytes(), 0o644),
        ));
    }
    Ok(())
}

/// Adds `rel` (a directory of `root`) with everything under it: directories, files, symlinks.
fn add_tree(entries: &mut Vec<(String, Entry)>, root: &Path, rel: &str) -> Result<(), String> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        entries.push((
            rel.to_string(),
            Entry::Symlink(target.to_string_lossy().into_owned()),
        ));
    } else if meta.is_dir() {
        if !entries.iter().any(|(p, _)| p == rel) {
            entries.push((rel.to_string(), Entry::Dir));
        }
        let mut names: Vec<String> = fs::read_dir(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            add_tree(entries, root, &format!("{rel}/{name}"))?;
        }
    } else {
        let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let data = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        entries.push((rel.to_string(), Entry::File(data, mode)));
    }
    Ok(())
}

/// Debian's Xen source, unpacked and built with the OP-TEE mediator; returns the hypervisor
/// image (`xen/xen`, an arm64 Image Xen boots from). Cached: a second call only checks it.
fn build_xen(cache: &Path) -> Result<PathBuf, String> {
    let src = cache.join("src");
    let image = src.join("xen").join("xen");
    let config = src.join("xen").join(".config");
    let has_mediator =
        fs::read_to_string(&config).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_OPTEE=y"));
    if image.is_file() && has_mediator {
        eprintln!("xtask: xen: built before: {}", image.display());
        return Ok(image);
    }
    fs::create_dir_all(cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    if !src.join("xen").is_dir() {
        ensure_deb_src()?;
        run(Command::new("apt-get")
            .current_dir(cache)
            .args(["source", "--download-only", "xen"]))?;
        let dsc = fs::read_dir(cache)
            .map_err(|e| format!("cannot list {}: {e}", cache.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "dsc"))
            .ok_or("apt-get source xen gave no .dsc")?;
        let _ = fs::remove_dir_all(&src);
        run(Command::new("dpkg-source")
            .current_dir(cache)
            .args(["-x", "--no-check"])
            .arg(&dsc)
            .arg(&src))?;
    }
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.current_dir(&src).args([
            "-C",
            "xen",
            "XEN_TARGET_ARCH=arm64",
            "CROSS_COMPILE=aarch64-linux-gnu-",
        ]);
        c.args(args);
        c
    };
    run(&mut make(&["defconfig"]))?;
    let mut text = fs::read_to_string(&config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    // The mediator depends on CONFIG_UNSUPPORTED in Xen 4.17.
    text.push_str("CONFIG_UNSUPPORTED=y\nCONFIG_TEE=y\nCONFIG_OPTEE=y\n");
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    run(&mut make(&["olddefconfig"]))?;
    let applied = fs::read_to_string(&config).unwrap_or_default();
    if !applied.lines().any(|l| l == "CONFIG_OPTEE=y") {
        return Err("Xen's configuration refused CONFIG_OPTEE".into());
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    run(&mut make(&[&format!("-j{jobs}")]))?;
    Ok(image)
}

/// Adds a `deb-src` entry for the machine's Debian mirror and suites (the `deb` entry's) when
/// none is there, and updates the package lists.
fn ensure_deb_src() -> Result<(), String> {
    let listed = Command::new("apt-cache")
        .args(["showsrc", "xen"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if listed {
        return Ok(());
    }
    let sources = Path::new("/etc/apt/sources.list.d/debian.sources");
    let text = fs::read_to_string(sources)
        .map_err(|e| format!("cannot read {}: {e}", sources.display()))?;
    // The first stanza (the Debian mirror's), as deb-src.
    let stanza: Vec<&str> = text
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    if !stanza.iter().any(|l| l.trim() == "Types: deb") {
        return Err(format!("no deb stanza first in {}", sources.display()));
    }
    let entry = stanza
        .iter()
        .map(|l| {
            if l.trim() == "Types: deb" {
                "Types: deb-src"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = Path::new("/etc/apt/sources.list.d/teeshm-deb-src.sources");
    fs::write(path, format!("{entry}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    run(Command::new("apt-get").args(["update", "-q"]))
}

/// Xen's boot modules: (address, length) of dom0's kernel and initramfs.
struct Modules {
    kernel: (u64, u64),
    initrd: (u64, u64),
}

/// QEMU's device tree for this machine and firmware, with what Xen and dom0 need added.
fn build_dtb(
    machine: &Machine,
    firmware: &Path,
    modules: &Modules,
    out: &Path,
    mode: Mode,
) -> Result<PathBuf, String> {
    let (name, dom0_args) = match mode {
        Mode::Domains => ("teeshm-xen", DOM0_BOOTARGS.to_string()),
        Mode::Dom0Alone => (
            "teeshm-xen-dom0-alone",
            format!("{DOM0_BOOTARGS} teeshm.dom0-alone"),
        ),
    };
    let additions = super::firmware_nodes(machine.smp) + &chosen(modules, &dom0_args);
    super::device_tree(machine, firmware, &additions, &out.join(name))
}

/// `/chosen` for Xen: its command line and its boot modules (dom0's kernel with dom0's command
/// line, and its initramfs), as Xen's docs/misc/arm/device-tree/booting.txt describes them.
fn chosen(modules: &Modules, dom0_args: &str) -> String {
    let reg = |(addr, len): (u64, u64)| {
        format!(
            "<{:#x} {:#x} {:#x} {:#x}>",
            addr >> 32,
            addr & 0xffff_ffff,
            len >> 32,
            len & 0xffff_ffff
        )
    };
    format!(
        r#"
/* Added by `cargo xtask xen` (xtask/src/linux/xen.rs). */
/ {{
	chosen {{
		#address-cells = <2>;
		#size-cells = <2>;
		xen,xen-bootargs = "{XEN_BOOTARGS}";
		/delete-property/ kaslr-seed;

		module@{kernel_at:x} {{
			compatible = "multiboot,kernel", "multiboot,module";
			reg = {kernel_reg};
			bootargs = "{dom0_args}";
		}};

		module@{initrd_at:x} {{
			compatible = "multiboot,ramdisk", "multiboot,module";
			reg = {initrd_reg};
		}};
	}};
}};
"#,
        kernel_at = modules.kernel.0,
        kernel_reg = reg(modules.kernel),
        initrd_at = modules.initrd.0,
        initrd_reg = reg(modules.initrd),
    )
}

/// One domain's test, as its console showed it.
#[derive(Debug, Default, Clone)]
struct Domain {
    name: String,
    domid: Option<u32>,
    /// `ok` and `FAIL` lines of its test (over every round).
    passed: u32,
    failed: u32,
    /// Its last `N passed, M failed` line.
    summary: Option<(u32, u32)>,
    /// `ok` and `FAIL` lines of its test's user-TA group (`user TA: ` cases, every round).
    user_ta_passed: u32,
    user_ta_failed: u32,
    /// Its last `user-ta: N passed, M failed` line.
    user_ta: Option<(u32, u32)>,
    /// Seconds of its first churn case (300 register/invoke/release rounds).
    churn: Option<f64>,
    destroyed: bool,
}

/// A guest the core still knew at the final check.
#[derive(Debug, Clone)]
struct CoreGuest {
    client_id: u64,
    objects: u64,
    mapped_pages: u64,
    registered_pages: u64,
}

/// What the core swept when Xen destroyed a guest (its `VM_DESTROYED` line).
#[derive(Debug, Clone)]
struct Swept {
    client_id: u64,
    objects: u64,
    registered_pages: u64,
    mapped_pages: u64,
    sessions: u64,
    /// Threads in use, calls left waiting in RPCs included.
    threads: u64,
}

/// What the UART told about the whole system.
#[derive(Debug, Default)]
struct XenRun {
    mediator_probed: bool,
    domains: Vec<Domain>,
    vm_created: u32,
    vm_destroyed: u32,
    guests: Vec<CoreGuest>,
    swept: Vec<Swept>,
    /// The last lines of every console on the UART, by source (`Xen`, `firmware`, `dom0`,
    /// each domU's name), for a run that fails or hangs.
    consoles: Vec<(String, std::collections::VecDeque<String>)>,
    /// The firmware's counters of the machine's CPUs.
    smp: crate::counters::SmpCounters,
}

/// Whether `name` is one of the domUs this run creates (a line cut by another console's
/// output may start with something else that looks like a domain's prefix).
fn is_domu(name: &str) -> bool {
    name == HOSTILE_DOMU || DOMUS.iter().any(|(domu, _)| *domu == name)
}

/// Lines kept of each console.
const CONSOLE_LINES: usize = 12;

impl XenRun {
    fn domain(&mut self, name: &str) -> &mut Domain {
        if let Some(i) = self.domains.iter().position(|d| d.name == name) {
            return &mut self.domains[i];
        }
        self.domains.push(Domain {
            name: name.to_string(),
            ..Domain::default()
        });
        let last = self.domains.len() - 1;
        &mut self.domains[last]
    }

    /// Keeps `line` among the last lines of the console it came from.
    fn keep_console_line(&mut self, line: &str) {
        let source = match line.split_once("| ") {
            Some((name, _)) if is_domu(name) => name,
            _ if line.starts_with("(XEN)") => "Xen",
            _ if line.starts_with("tee: ") || line.starts_with("monitor: ") => "firmware",
            _ => "dom0",
        };
        let i = match self.consoles.iter().position(|(s, _)| s == source) {
            Some(i) => i,
            None => {
                self.consoles.push((source.to_string(), Default::default()));
                self.consoles.len() - 1
            }
        };
        let lines = &mut self.consoles[i].1;
        if lines.len() == CONSOLE_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    fn note(&mut self, line: &str) {
        let line = line.trim_end();
        self.keep_console_line(line);
        self.smp.note(line);
        // The firmware writes to the UART directly, so its lines may start in the middle of a
        // line of Xen's console: they are found anywhere in a line.
        let after = |marker: &str| line.find(marker).map(|i| &line[i + marker.len()..]);
        if line.contains("(XEN) Using TEE mediator for OP-TEE") {
            self.mediator_probed = true;
        }
        if let Some(rest) = line.strip_prefix("dom0-init: domain ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                [name, "created,", "domid", id] => self.domain(name).domid = id.parse().ok(),
                [name, "destroyed"] => self.domain(name).destroyed = true,
                _ => {}
            }
        }
        // The guests' lives from the core's history, printed at its final check while only one
        // CPU runs (a live line may be cut by another CPU's output on the same UART).
        if let Some(client) = after("tee: history: VM_CREATED client ") {
            if client.trim().parse::<u64>().is_ok() {
                self.vm_created += 1;
            }
        }
        if let Some(rest) = after("tee: history: VM_DESTROYED client ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(client_id) = words
                .first()
                .and_then(|v| v.trim_end_matches(':').parse().ok())
            {
                self.vm_destroyed += 1;
                let keys = [
                    "objects",
                    "registered_pages",
                    "mapped_pages",
                    "sessions",
                    "threads",
                ];
                if let Some([objects, registered_pages, mapped_pages, sessions, threads]) =
                    fields(&words, keys)
                {
                    self.swept.push(Swept {
                        client_id,
                        objects,
                        registered_pages,
                        mapped_pages,
                        sessions,
                        threads,
                    });
                }
            }
        }
        if let Some(rest) = after("tee: guest client ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let keys = ["objects", "mapped_pages", "registered_pages"];
            if let (Some(client_id), Some([objects, mapped_pages, registered_pages])) = (
                words.first().and_then(|v| v.parse().ok()),
                fields(&words, keys),
            ) {
                self.guests.push(CoreGuest {
                    client_id,
                    objects,
                    mapped_pages,
                    registered_pages,
                });
            }
        }
        // A domain's console: dom0's test writes to the UART itself, each domU's is followed
        // live by dom0, every line prefixed with the domain's name.
        let (name, text) = match line.split_once("| ") {
            Some((name, text)) if is_domu(name) => (name, text),
            _ if line.starts_with("ok ")
                || line.starts_with("FAIL ")
                || is_summary(line)
                || user_ta_summary(line).is_some() =>
            {
                ("dom0", line)
            }
            _ => return,
        };
        let domain = self.domain(name);
        if name == "dom0" {
            domain.domid = Some(0);
        }
        if let Some(case) = text.strip_prefix("ok ") {
            domain.passed += 1;
            domain.user_ta_passed += u32::from(is_user_ta_case(case));
            if domain.churn.is_none() {
                domain.churn = churn_seconds(text);
            }
        } else if let Some(case) = text.strip_prefix("FAIL ") {
            domain.failed += 1;
            domain.user_ta_failed += u32::from(is_user_ta_case(case));
        } else if let Some(counts) = user_ta_summary(text) {
            domain.user_ta = Some(counts);
        } else if is_summary(text) {
            let words: Vec<&str> = text.split_whitespace().collect();
            if let [p, _, f, _] = words.as_slice() {
                domain.summary = p.parse().ok().zip(f.parse().ok());
            }
        }
    }

    /// The core's record of a domain (client id = domid + 1, as Xen's mediator numbers them).
    fn core_guest(&self, domid: Option<u32>) -> Option<&CoreGuest> {
        let client = u64::from(domid?) + 1;
        self.guests.iter().find(|g| g.client_id == client)
    }

    /// `target/xen/report.json`.
    fn json(&self, disagreements: Option<u64>) -> String {
        let domains: Vec<String> = self
            .domains
            .iter()
            .map(|d| {
                format!(
                    "{{\"name\": \"{}\", \"domid\": {}, \"passed\": {}, \"failed\": {}, \"destroyed\": {}, \"user_ta\": {{\"passed\": {}, \"failed\": {}, \"summary\": {}}}}}",
                    d.name,
                    d.domid.map_or("null".into(), |i| i.to_string()),
                    d.passed,
                    d.failed,
                    d.destroyed,
                    d.user_ta_passed,
                    d.user_ta_failed,
                    d.user_ta
                        .map_or("null".into(), |c| format!("\"{}\"", user_ta_line(Some(c))))
                )
            })
            .collect();
        let mut guests: Vec<String> = self
            .guests
            .iter()
            .map(|g| {
                format!(
                    "{{\"client_id\": {}, \"objects\": {}, \"mapped_pages\": {}, \"registered_pages\": {}, \"in_core\": true}}",
                    g.client_id, g.objects, g.mapped_pages, g.registered_pages
                )
            })
            .collect();
        // A destroyed domain the core no longer knows holds nothing there: listed with its
        // zeros, `in_core: false` (the core removed its guest) and what the core swept when
        // Xen destroyed it.
        for d in self.domains.iter().filter(|d| d.destroyed) {
            if let (Some(domid), None) = (d.domid, self.core_guest(d.domid)) {
                let client = u64::from(domid) + 1;
                let swept = self.swept.iter().find(|w| w.client_id == client).map_or(
                    "null".to_string(),
                    |w| {
                        format!(
                            "{{\"objects\": {}, \"registered_pages\": {}, \"mapped_pages\": {}, \"sessions\": {}, \"threads\": {}}}",
                            w.objects, w.registered_pages, w.mapped_pages, w.sessions, w.threads
                        )
                    },
                );
                guests.push(format!(
                    "{{\"client_id\": {client}, \"objects\": 0, \"mapped_pages\": 0, \"registered_pages\": 0, \"in_core\": false, \"swept_at_destroy\": {swept}}}"
                ));
            }
        }
        format!(
            "{{\"mediator_probed\": {}, \"domains\": [{}], \"vm_created\": {}, \"vm_destroyed\": {}, \"core\": {{\"disagreements\": {}, \"guests\": [{}]}}, \"firmware\": {{{}}}}}\n",
            self.mediator_probed,
            domains.join(", "),
            self.vm_created,
            self.vm_destroyed,
            disagreements.map_or("null".into(), |d| d.to_string()),
            guests.join(", "),
            self.smp.json_fields(disagreements)
        )
    }

    /// Why the run fails, if it does (besides QEMU's status and the agreement check).
    fn verdict(&self, mode: Mode) -> Result<(), String> {
        if !self.mediator_probed {
            return Err("Xen's OP-TEE mediator did not probe the TEE".into());
        }
        if mode == Mode::Dom0Alone {
            return match self.domains.as_slice() {
                [d] if d.name == "dom0"
                    && d.failed == 0
                    && d.summary.is_some_and(|(p, f)| p > 0 && f == 0)
                    && d.user_ta.is_some_and(|(p, f)| p > 0 && f == 0) =>
                {
                    Ok(())
                }
                other => Err(format!("dom0 alone: {other:?}")),
            };
        }
        let tested = self.domains.iter().filter(|d| d.passed > 0).count();
        if tested < 3 {
            return Err(format!("{tested} domains ran the test, 3 wanted"));
        }
        for d in &self.domains {
            // No domain may fail a case, a destroyed one neither (up to where it was cut).
            if d.failed != 0 || d.summary.is_some_and(|(_, f)| f != 0) {
                return Err(format!(
                    "{}: {} passed, {} failed, summary {:?}",
                    d.name, d.passed, d.failed, d.summary
                ));
            }
            if d.destroyed {
                // Destroyed: the core holds nothing of it (its guest is gone, or empty).
                if let Some(g) = self.core_guest(d.domid) {
                    if g.objects + g.mapped_pages + g.registered_pages != 0 {
                        return Err(format!("the destroyed {} still holds {g:?}", d.name));
                    }
                }
                if d.domid.is_none() {
                    return Err(format!("the destroyed {} has no domid", d.name));
                }
            } else if d.failed != 0 || d.summary.is_none_or(|(p, f)| f != 0 || p == 0) {
                return Err(format!(
                    "{}: {} passed, {} failed, summary {:?}",
                    d.name, d.passed, d.failed, d.summary
                ));
            }
            // The user-TA group: no case failed anywhere, and every Linux guest that ran the
            // test to its end (all but the destroyed; the misbehaving client has no such
            // group) printed `user-ta: N passed, 0 failed` with N > 0.
            let group_failed = d.user_ta_failed != 0 || d.user_ta.is_some_and(|(_, f)| f != 0);
            let group_missing =
                !d.destroyed && d.name != HOSTILE_DOMU && d.user_ta.is_none_or(|(p, _)| p == 0);
            if group_failed || group_missing {
                return Err(format!(
                    "{}: the user-TA group: {} ok and {} FAIL lines, last line `{}`",
                    d.name,
                    d.user_ta_passed,
                    d.user_ta_failed,
                    user_ta_line(d.user_ta)
                ));
            }
        }
        if !self.domains.iter().any(|d| d.destroyed) {
            return Err("no domain was destroyed".into());
        }
        // The hostile domU ran all its cases before it was destroyed, and the core swept the
        // calls it left waiting in RPCs (two at least: its thread quota under Xen).
        let hostile = self.domains.iter().find(|d| d.name == HOSTILE_DOMU);
        match hostile {
            Some(d) if d.destroyed && d.summary.is_some_and(|(p, _)| p > 0) => {}
            other => {
                return Err(format!(
                    "the misbehaving {HOSTILE_DOMU} did not end its cases and get destroyed: {other:?}"
                ));
            }
        }
        let client = hostile.and_then(|d| d.domid).map(|id| u64::from(id) + 1);
        match self.swept.iter().find(|w| Some(w.client_id) == client) {
            Some(w) if w.threads >= 2 => {}
            other => {
                return Err(format!(
                    "the core did not sweep {HOSTILE_DOMU}'s waiting calls when Xen destroyed it: {other:?}"
                ));
            }
        }
        if self.vm_destroyed == 0 {
            return Err("the core was told of no destroyed domain".into());
        }
        Ok(())
    }
}

/// Boots Xen and its domains, shows the UART live, writes the report and judges the run.
fn boot(
    machine: &Machine,
    firmware: &Path,
    loads: &[(&Path, u64)],
    out: &Path,
    timeout: Duration,
    mode: Mode,
) -> Result<XenRun, String> {
    let mut command = super::qemu_command(machine, firmware, loads);
    let mut system = XenRun::default();
    let (run, seen, log_path) =
        super::run_logged(&mut command, out, timeout, |line| system.note(line))?;
    let disagreements = seen.disagreements();
    let report = out.join(match mode {
        Mode::Domains => "report.json",
        Mode::Dom0Alone => "report-dom0-alone.json",
    });
    fs::write(&report, system.json(disagreements))
        .map_err(|e| format!("cannot write {}: {e}", report.display()))?;
    let (passed, failed): (u32, u32) = system
        .domains
        .iter()
        .fold((0, 0), |(p, f), d| (p + d.passed, f + d.failed));
    let verdict = system
        .verdict(mode)
        // Which CPUs call is Xen's scheduler's choice (dom0 has two vCPUs): two at least.
        .and_then(|()| system.smp.verdict(machine.smp, Some(2), true));
    // A surviving domain without its summary counts as a failure.
    let missing = system
        .domains
        .iter()
        .filter(|d| !d.destroyed && d.summary.is_none())
        .count() as u32;
    let verdict_line = format!("xen: {passed} passed, {} failed", failed + missing);
    let (ut_passed, ut_failed): (u32, u32) = system.domains.iter().fold((0, 0), |(p, f), d| {
        (p + d.user_ta_passed, f + d.user_ta_failed)
    });
    // The user-TA group over all domains (its cases are in the line above too).
    let user_ta_verdict = format!("xen: user-ta: {ut_passed} passed, {ut_failed} failed");
    let failure = |why: String| {
        let mut text = format!("{why}\nlast UART lines:\n");
        for line in &run.last {
            text.push_str(&format!("  | {line}\n"));
        }
        for (source, lines) in &system.consoles {
            text.push_str(&format!("last lines of {source}:\n"));
            for line in lines {
                text.push_str(&format!("  | {line}\n"));
            }
        }
        text.push_str(&format!(
            "(whole log: {}, report: {})",
            log_path.display(),
            report.display()
        ));
        println!("{user_ta_verdict}");
        println!("{verdict_line}");
        Err(text)
    };
    if run.timed_out {
        return failure(format!(
            "xen: TIMEOUT: no end after {} s; QEMU was killed",
            timeout.as_secs()
        ));
    }
    if let Some(report) = &seen.secure_failure {
        return failure(format!("xen: FAILED: the secure world died: `{report}`"));
    }
    let code = run.status.and_then(|s| s.code());
    match (code, disagreements, verdict) {
        (Some(0), Some(0), Ok(())) => {
            eprintln!(
                "xtask: xen: {} domains tested ({}), {} VM_CREATED and {} VM_DESTROYED seen by the core; QEMU exited 0; the core's agreement check after power-off: 0 disagreements; report {}",
                system.domains.len(),
                system
                    .domains
                    .iter()
                    .map(|d| format!(
                        "{} {}/{} (user TA {}/{}){}",
                        d.name,
                        d.passed,
                        d.failed,
                        d.user_ta_passed,
                        d.user_ta_failed,
                        if d.destroyed { " destroyed" } else { "" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                system.vm_created,
                system.vm_destroyed,
                report.display()
            );
            println!("{user_ta_verdict}");
            println!("{verdict_line}");
            Ok(system)
        }
        (code, disagreements, verdict) => failure(format!(
            "xen: FAILED: QEMU exit status {}, agreement check {}, {}",
            code.map_or("none (killed by a signal)".to_string(), |c| c.to_string()),
            disagreements.map_or("missing".to_string(), |d| format!("{d} disagreements")),
            verdict.err().unwrap_or_else(|| "the domains passed".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ta_lines_are_counted_per_domain() {
        let mut run = XenRun::default();
        for line in [
            "ok   register 1 bytes at page offset 1 (0.010 s)",
            "ok   user TA: TEEC_OpenSession to teeshm.ta-memtest (S-EL0) by UUID (0.002 s)",
            "user-ta: 1 passed, 0 failed",
            "2 passed, 0 failed",
            "domu1| ok   user TA: CALL_PEER of 1 bytes (0.1 s)",
            "domu1| FAIL user TA: PANIC (TEE_Panic) kills the TA alone: result 0x00000000",
            "domu1| user-ta: 1 passed, 1 failed",
            "domu1| user-ta touch: 528284 B 1.000 ms per call",
        ] {
            run.note(line);
        }
        let dom0 = &run.domains[0];
        assert_eq!(
            (dom0.name.as_str(), dom0.passed, dom0.user_ta_passed),
            ("dom0", 2, 1)
        );
        assert_eq!((dom0.user_ta, dom0.summary), (Some((1, 0)), Some((2, 0))));
        let domu1 = &run.domains[1];
        assert_eq!(
            (domu1.user_ta_passed, domu1.user_ta_failed, domu1.user_ta),
            (1, 1, Some((1, 1)))
        );
        assert!(run.json(Some(0)).contains(
            "\"user_ta\": {\"passed\": 1, \"failed\": 1, \"summary\": \"user-ta: 1 passed, 1 failed\"}"
        ));
    }

    /// A line of the CI run of 2026-12-02, where the firmware wrote into domu1's line on the
    /// same UART: its cut prefix is no domain of the run.
    #[test]
    fn a_cut_line_makes_no_domain() {
        let mut run = XenRun::default();
        run.note("domu1ta| ok   use: tr TA: TOUCH of eesha NULL m.ta-memmemreftest: t ansa-memtest: open");
        run.note("domu1| 2 passed, 0 failed");
        let names: Vec<&str> = run.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["domu1"]);
        assert_eq!(run.domains[0].summary, Some((2, 0)));
    }
}
