//! The EL3 monitor: which world runs, what each SMC means, and the world switch.
//!
//! | SMC from | function | what the monitor does |
//! |---|---|---|
//! | normal world | OP-TEE (owners 50..61, 63: Trusted OS calls, yielding or fast) | forwards a0..a7 to the core's call entry |
//! | normal world | `SIP_TEESHM_CHECK`, `SIP_TEESHM_FAULT_TEST` | forwards to the core |
//! | normal world | `SIP_TEESHM_TEST_EXIT` | ends the run (status 0 only if the client's cases all passed and the secure world never faulted) |
//! | normal world | `SIP_TEESHM_MONITOR_STATS` | answers the monitor's counters |
//! | normal world | PSCI VERSION, FEATURES, SYSTEM_OFF, SYSTEM_RESET, CPU_ON | answers; SYSTEM_OFF ends the run (status 0), SYSTEM_RESET too (status 3: this machine cannot reset); CPU_ON is refused (NOT_SUPPORTED) |
//! | normal world | SMCCC_VERSION, SMCCC_ARCH_FEATURES | answers |
//! | normal world | anything else (owner 62 included: only the core may use it) | `SMC_UNK` |
//! | secure world | `SECURE_ENTRY_DONE` | the core is up: enter the normal world at 0x4020_0000 |
//! | secure world | `SECURE_CALL_DONE` | x1..x8 become the normal world's a0..a7 (RPC requests too) |
//! | secure world | `SECURE_FAULT`, `SECURE_PANIC` | the secure world is dead: end the run |
//!
//! The normal world's x8..x30 come back exactly as it left them; nothing of the secure world's
//! registers reaches it but the eight answer registers.

use crate::context::Context;
use core::cell::UnsafeCell;
use teeshm_fw_common::fid::{self, arch, psci};
use teeshm_fw_common::{println, semihosting, time};

/// SCTLR_EL3: RES1 bits, SA (stack alignment check) and I (instruction cache); MMU, data
/// cache and alignment checks off. The monitor touches only secure RAM and the UART.
pub const SCTLR_EL3_VALUE: u64 = 0x30c5_0830 | (1 << 3) | (1 << 12);

/// SCR_EL3 for the secure world: RW (EL1 is AArch64), SIF (no secure instruction fetch from
/// non-secure memory), RES1 bits 5:4; FIQ, IRQ and SError stay at EL1; no EL2; SMC enabled.
const SCR_SECURE: u64 = (1 << 10) | (1 << 9) | (3 << 4);
/// SCR_EL3 for the normal world: the same with NS, and with the `xen` feature HCE (EL2
/// exists: the normal world is a hypervisor, entered at EL2, whose HVC works).
const SCR_NON_SECURE: u64 = SCR_SECURE | 1 | if cfg!(feature = "xen") { 1 << 8 } else { 0 };

/// ESR_EL3.EC of an SMC from AArch64.
const EC_SMC64: u64 = 0x17;

/// Where the normal-world client is loaded (`-device loader,...,addr=0x40200000`; QEMU keeps
/// the device tree in the first MiB of RAM). A Linux kernel Image is loaded there too.
pub const NS_ENTRY: u64 = 0x4020_0000;
/// The exception level the normal world is entered at: 1, an operating system (the test
/// client, or Linux), or with the `xen` feature 2, a hypervisor (SCR_EL3.HCE, an EL2h SPSR).
/// The core is told (x0 of its boot entry), and runs with one normal world at EL1 and under a
/// hypervisor at EL2 with the guests it announces (`NormalWorld`).
pub const NS_ENTRY_EL: u64 = if cfg!(feature = "xen") { 2 } else { 1 };
/// With the `linux` feature: where `cargo xtask linux` loads the kernel's device tree, passed
/// in x0 as the arm64 boot protocol asks.
const LINUX_DTB: u64 = 0x4800_0000;
/// QEMU `virt`'s GIC distributor (GICv2 and GICv3), GICv2 CPU interface and GICv3
/// redistributors (one 128 KiB pair of frames per CPU).
const GICD_BASE: usize = 0x0800_0000;
const GICC_BASE: usize = 0x0801_0000;
const GICR_BASE: usize = 0x080a_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum State {
    /// The core boots (zero: the state `.el3` starts in).
    Booting = 0,
    /// The normal world runs; the core waits for a call.
    Ready = 1,
    /// The core serves a call the normal world made.
    InCall = 2,
    /// `linux`: the kernel powered off; the core runs its agreement checker before the run
    /// ends.
    FinalCheck = 3,
}

struct Monitor {
    secure: Context,
    ns: Context,
    state: State,
    calls: u64,
    switches: u64,
    ready_at_us: u64,
}

impl Monitor {
    const ZERO: Self = Self {
        secure: Context::ZERO,
        ns: Context::ZERO,
        state: State::Booting,
        calls: 0,
        switches: 0,
        ready_at_us: 0,
    };
}

struct MonitorCell(UnsafeCell<Monitor>);

// SAFETY: the monitor state is touched only at EL3, on the one CPU that runs (the others are
// parked at boot), with every exception masked (EL3 is entered with DAIF set and takes no
// interrupt), so no two accesses ever overlap.
unsafe impl Sync for MonitorCell {}

/// EL3's state, in `.el3`: secure RAM that the S-EL1 core never maps.
#[unsafe(link_section = ".el3.bss")]
static MONITOR: MonitorCell = MonitorCell(UnsafeCell::new(Monitor::ZERO));

/// The monitor state. Callers are `monitor_main` and `el3_handle_lower`, which run one at a
/// time (see `MonitorCell`) and never hold the reference across a return to a lower EL.
fn monitor() -> &'static mut Monitor {
    // SAFETY: see `MonitorCell`: exactly one EL3 handler runs at a time, so this is the only
    // live reference while it runs. The assembly entry writes the contexts only before the
    // handler starts and reads them only after it returned.
    unsafe { &mut *MONITOR.0.get() }
}

unsafe extern "C" {
    /// Restores the world whose context is `ctx` and `eret`s to it (main.rs).
    fn el3_exit(ctx: *mut Context) -> !;
}

fn write_scr(value: u64) {
    // SAFETY: SCR_EL3 controls the security state of the lower ELs only; the new value takes
    // effect for the `eret` that follows.
    unsafe { core::arch::asm!("msr scr_el3, {}", "isb", in(reg) value, options(nostack)) };
}

fn read_esr_el3() -> u64 {
    let v: u64;
    // SAFETY: reading ESR_EL3 has no side effect.
    unsafe { core::arch::asm!("mrs {}, esr_el3", out(reg) v, options(nomem, nostack)) };
    v
}

fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// A 32-bit GIC register (QEMU virt's GIC frames: device memory, reached physically at EL3
/// with the MMU off; nothing of Rust's lives there).
fn gic_reg(base: usize, offset: usize) -> *mut u32 {
    (base + offset) as *mut u32
}

/// The GIC's architecture version from the distributor's `GICD_PIDR2.ArchRev` (2 or 3; 4 is
/// a GICv4, which is a GICv3 here).
fn gic_version() -> u32 {
    // SAFETY: GICD_PIDR2 (offset 0xffe8) is a read-only ID register of the distributor, at the
    // same offset in GICv2 and GICv3; reading it has no side effect.
    let pidr2 = unsafe { gic_reg(GICD_BASE, 0xffe8).read_volatile() };
    (pidr2 >> 4) & 0xf
}

/// Hands every interrupt to the normal world, as secure firmware does before it starts a
/// normal-world OS or hypervisor: at reset every interrupt is secure (Group 0) and only the
/// secure state can change that. The test client uses no interrupts; Linux and Xen need their
/// timer and devices. Returns the GIC's version.
fn gic_to_normal_world() -> u32 {
    let version = gic_version();
    if version >= 3 {
        gicv3_to_normal_world();
    } else {
        gicv2_to_normal_world();
    }
    version
}

/// GICv2: every interrupt in Group 1, both groups on, the priority mask open.
fn gicv2_to_normal_world() {
    // SAFETY: GICD and GICC are QEMU virt's GICv2 frames (see `gic_reg`); these 32-bit
    // registers are written from the secure state, as the security extensions require.
    unsafe {
        let typer = gic_reg(GICD_BASE, 0x004).read_volatile();
        let lines = (typer & 0x1f) as usize + 1;
        for n in 0..lines {
            gic_reg(GICD_BASE, 0x080 + 4 * n).write_volatile(0xffff_ffff);
        }
        gic_reg(GICD_BASE, 0x000).write_volatile(0x3);
        gic_reg(GICC_BASE, 0x004).write_volatile(0xff);
        gic_reg(GICC_BASE, 0x000).write_volatile(0x3);
    }
}

/// `GICD_CTLR` (secure view): affinity routing for both states, Non-secure Group 1 on.
const GICD_CTLR_ARE_S: u32 = 1 << 4;
const GICD_CTLR_ARE_NS: u32 = 1 << 5;
const GICD_CTLR_ENABLE_G1NS: u32 = 1 << 1;
/// `GICD_CTLR.RWP`: a write to the control register is still taking effect.
const GICD_CTLR_RWP: u32 = 1 << 31;
/// `GICR_WAKER`: ProcessorSleep and ChildrenAsleep.
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// `GICR_TYPER.Last`: the last redistributor of the region.
const GICR_TYPER_LAST: u64 = 1 << 4;

/// GICv3 (GIC architecture specification, IHI 0069, "Configuration" and "Power management"):
/// the system-register interface open to the lower ELs (`ICC_SRE_EL3`: SRE, DFB, DIB,
/// Enable), affinity routing on, every SPI, SGI and PPI in Non-secure Group 1 (`IGROUPR` = 1,
/// `IGRPMODR` = 0), and every CPU's redistributor awake (`GICR_WAKER.ProcessorSleep` is
/// writable from the secure state only while security is enabled, as in QEMU `secure=on`).
/// The normal world then enables its group and sets its priority mask itself.
fn gicv3_to_normal_world() {
    // SAFETY: ICC_SRE_EL3 (S3_6_C12_C12_5) only says how the GIC's CPU interface is reached
    // (system registers at every EL) and lets EL2/EL1 use ICC_SRE_ELx; no memory is touched.
    unsafe {
        core::arch::asm!(
            "msr S3_6_C12_C12_5, {}",
            "isb",
            in(reg) 0xf_u64,
            options(nomem, nostack)
        );
    }
    // SAFETY: GICD and the GICR frames are QEMU virt's GICv3 register frames (see `gic_reg`);
    // the GICR frames are walked only up to the one whose GICR_TYPER says it is the last, and
    // each register is accessed with its architected width.
    unsafe {
        let wait_rwp = || while gic_reg(GICD_BASE, 0x000).read_volatile() & GICD_CTLR_RWP != 0 {};
        gic_reg(GICD_BASE, 0x000).write_volatile(GICD_CTLR_ARE_S | GICD_CTLR_ARE_NS);
        wait_rwp();
        let typer = gic_reg(GICD_BASE, 0x004).read_volatile();
        let lines = (typer & 0x1f) as usize + 1;
        // IGROUPR0 covers SGIs and PPIs, which live in the redistributors under affinity
        // routing; the SPIs start at IGROUPR1.
        for n in 1..lines {
            gic_reg(GICD_BASE, 0x080 + 4 * n).write_volatile(0xffff_ffff);
            gic_reg(GICD_BASE, 0xd00 + 4 * n).write_volatile(0);
        }
        let mut rd = GICR_BASE;
        loop {
            let waker = gic_reg(rd, 0x014);
            waker.write_volatile(waker.read_volatile() & !GICR_WAKER_PROCESSOR_SLEEP);
            while waker.read_volatile() & GICR_WAKER_CHILDREN_ASLEEP != 0 {}
            let sgi = rd + 0x1_0000;
            gic_reg(sgi, 0x080).write_volatile(0xffff_ffff);
            gic_reg(sgi, 0xd00).write_volatile(0);
            let typer = (rd + 0x008) as *const u64;
            if typer.read_volatile() & GICR_TYPER_LAST != 0 {
                break;
            }
            rd += 0x2_0000;
        }
        gic_reg(GICD_BASE, 0x000)
            .write_volatile(GICD_CTLR_ARE_S | GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1NS);
        wait_rwp();
    }
}

/// Ends the run with `status` (semihosting). A failed end says so; a passed one prints
/// nothing, so the client's summary stays the last line of the run.
fn end_run(status: u32) -> ! {
    if status != 0 {
        println!("monitor: end of run, exit status {status}");
    }
    semihosting::exit(status)
}

/// First Rust code at EL3 (from `_start`, on the EL3 stack): enters the S-EL1 core's boot.
#[unsafe(no_mangle)]
extern "C" fn monitor_main() -> ! {
    let m = monitor();
    println!();
    println!(
        "monitor: teeshm EL3 monitor up at {} us (cortex-a57, MPIDR {:#x}); secure image in \
         secure RAM, EL3 state at {:#x}",
        time::micros(),
        mpidr(),
        (&raw const MONITOR) as usize
    );
    m.secure = Context::new(teeshm_fw_tee::tee_boot_entry as *const () as u64);
    m.secure.x[0] = NS_ENTRY_EL;
    m.ns = Context::new(NS_ENTRY);
    if NS_ENTRY_EL == 2 {
        m.ns.spsr_el3 = crate::context::SPSR_EL2H_MASKED;
    }
    if cfg!(feature = "linux") {
        m.ns.x[0] = LINUX_DTB;
        let gic = gic_to_normal_world();
        println!(
            "monitor: Linux mode: GICv{gic} interrupts handed to the normal world (Non-secure \
             Group 1), x0 = device tree at {LINUX_DTB:#x}"
        );
    }
    m.state = State::Booting;
    m.secure.el1.restore();
    write_scr(SCR_SECURE);
    let ctx = &raw mut m.secure;
    // SAFETY: `ctx` is the secure context just set up: S-EL1 boot entry, EL1h with exceptions
    // masked, MMU off, FP enabled; SCR_EL3 selects the secure state.
    unsafe { el3_exit(ctx) }
}

/// An SMC (or any synchronous exception) from EL1 of either world. `ctx` is the context the
/// entry saved into; returns the context to resume.
#[unsafe(no_mangle)]
extern "C" fn el3_handle_lower(ctx: *mut Context) -> *mut Context {
    let m = monitor();
    let from_secure = core::ptr::eq(ctx, &raw mut m.secure);
    let esr = read_esr_el3();
    if (esr >> 26) & 0x3f != EC_SMC64 {
        let (world, elr) = if from_secure {
            ("secure", m.secure.elr_el3)
        } else {
            ("normal", m.ns.elr_el3)
        };
        println!(
            "monitor: unexpected exception from the {world} world: ESR_EL3 {esr:#x}, ELR_EL3 {elr:#x}"
        );
        end_run(1);
    }
    if from_secure {
        m.from_secure()
    } else {
        m.from_normal()
    }
}

impl Monitor {
    /// Saves the running world's EL1 registers, loads the other's, and returns its context.
    fn switch_to_secure(&mut self) -> *mut Context {
        self.ns.el1.save();
        self.secure.el1.restore();
        write_scr(SCR_SECURE);
        self.switches += 1;
        &raw mut self.secure
    }

    fn switch_to_normal(&mut self) -> *mut Context {
        self.secure.el1.save();
        self.ns.el1.restore();
        write_scr(SCR_NON_SECURE);
        self.switches += 1;
        &raw mut self.ns
    }

    fn answer(&mut self, values: &[u64]) -> *mut Context {
        for (dst, src) in self.ns.x.iter_mut().zip(values) {
            *dst = *src;
        }
        &raw mut self.ns
    }

    fn from_normal(&mut self) -> *mut Context {
        let func = (self.ns.x[0] & 0xffff_ffff) as u32;
        let owner = fid::owner(func);
        if self.state != State::Ready {
            println!("monitor: SMC {func:#x} from the normal world while the core is busy");
            end_run(1);
        }
        match owner {
            50..=61 | 63 => self.forward(),
            fid::OWNER_OPTEED => self.answer(&[fid::SMC_UNKNOWN]),
            2 if (fid::SIP_TEESHM_RANGE.0..=fid::SIP_TEESHM_RANGE.1).contains(&func) => {
                match func {
                    fid::SIP_TEESHM_TEST_EXIT => self.test_exit(),
                    fid::SIP_TEESHM_MONITOR_STATS => {
                        let since = time::micros().saturating_sub(self.ready_at_us);
                        self.answer(&[0, self.calls, self.switches, since])
                    }
                    fid::SIP_TEESHM_CHECK | fid::SIP_TEESHM_FAULT_TEST => self.forward(),
                    _ => self.answer(&[fid::SMC_UNKNOWN]),
                }
            }
            4 => self.psci(func),
            0 => match func {
                arch::SMCCC_VERSION => self.answer(&[arch::VERSION_1_1]),
                arch::SMCCC_ARCH_FEATURES => {
                    let asked = (self.ns.x[1] & 0xffff_ffff) as u32;
                    let v = if asked == arch::SMCCC_VERSION || asked == arch::SMCCC_ARCH_FEATURES {
                        0
                    } else {
                        psci::NOT_SUPPORTED
                    };
                    self.answer(&[v])
                }
                _ => self.answer(&[fid::SMC_UNKNOWN]),
            },
            _ => self.answer(&[fid::SMC_UNKNOWN]),
        }
    }

    /// Passes a0..a7 to the core's call entry, in a fresh secure context (nothing of the
    /// secure world runs between calls).
    fn forward(&mut self) -> *mut Context {
        self.secure.x = [0; 31];
        let (args, _) = self.ns.x.split_at(8);
        for (dst, src) in self.secure.x.iter_mut().zip(args) {
            *dst = *src;
        }
        self.secure.elr_el3 = teeshm_fw_tee::tee_call_entry as *const () as u64;
        self.secure.spsr_el3 = crate::context::SPSR_EL1H_MASKED;
        self.state = State::InCall;
        self.calls += 1;
        self.switch_to_secure()
    }

    fn from_secure(&mut self) -> *mut Context {
        let func = (self.secure.x[0] & 0xffff_ffff) as u32;
        match (func, self.state) {
            (fid::SECURE_ENTRY_DONE, State::Booting) => {
                self.ready_at_us = time::micros();
                println!(
                    "monitor: S-EL1 core ready at {} us; entering the normal world at {NS_ENTRY:#x} (NS-EL{NS_ENTRY_EL})",
                    self.ready_at_us
                );
                self.state = State::Ready;
                self.switch_to_normal()
            }
            (fid::SECURE_CALL_DONE, State::FinalCheck) => self.final_check_done(),
            (fid::SECURE_CALL_DONE, State::InCall) => {
                let mut answer = [0u64; 8];
                for (dst, src) in answer.iter_mut().zip(self.secure.x.iter().skip(1)) {
                    *dst = *src;
                }
                self.state = State::Ready;
                self.answer(&answer);
                self.switch_to_normal()
            }
            (fid::SECURE_FAULT, _) => self.secure_fault(),
            (fid::SECURE_PANIC, _) => {
                println!("monitor: the secure world panicked; ending the run");
                end_run(1)
            }
            (other, state) => {
                println!("monitor: unexpected SMC {other:#x} from the secure world ({state:?})");
                end_run(1)
            }
        }
    }

    fn secure_fault(&mut self) -> ! {
        let (esr, far) = (self.secure.x[1], self.secure.x[2]);
        println!("monitor: the secure world reported a fault (ESR {esr:#x}, FAR {far:#x})");
        if cfg!(feature = "fault-test") {
            let data_abort = (esr >> 26) & 0x3f == 0x25;
            let translation_fault = (esr & 0x3c) == 0x04;
            if data_abort && translation_fault && far == teeshm_fw_tee::FAULT_TEST_VA {
                println!(
                    "fault-test: passed: the S-EL1 read of unmapped VA {far:#x} faulted, was \
                     caught and reported, and returned nothing"
                );
                end_run(0);
            }
            println!("fault-test: FAILED: not the fault the test provokes");
        }
        end_run(1)
    }

    fn test_exit(&mut self) -> *mut Context {
        let (passed, failed) = (self.ns.x[1], self.ns.x[2]);
        if cfg!(feature = "fault-test") {
            println!("fault-test: FAILED: the run ended without the fault the test provokes");
            end_run(1);
        }
        end_run(if failed == 0 && passed > 0 { 0 } else { 1 })
    }

    /// `linux`: the kernel powered off (its init does so only when the libteec test passed).
    /// Before the run ends, the core runs its agreement checker on all that Linux's driver
    /// left (a `SIP_TEESHM_CHECK` call the monitor makes itself).
    fn final_check(&mut self) -> *mut Context {
        self.secure.x = [0; 31];
        self.secure.x[0] = u64::from(fid::SIP_TEESHM_CHECK);
        self.secure.elr_el3 = teeshm_fw_tee::tee_call_entry as *const () as u64;
        self.secure.spsr_el3 = crate::context::SPSR_EL1H_MASKED;
        self.state = State::FinalCheck;
        self.switch_to_secure()
    }

    /// The core's answer to the final check (x1 = 0, x2 = disagreements found): the run
    /// passes only if tables, window, reverse map and registry agree.
    fn final_check_done(&mut self) -> ! {
        let (status, disagreements) = (self.secure.x[1], self.secure.x[2]);
        println!(
            "monitor: Linux is off: {} calls forwarded, {} world switches, {} us since the core \
             was ready; agreement check: {disagreements} disagreements",
            self.calls,
            self.switches,
            time::micros().saturating_sub(self.ready_at_us)
        );
        end_run(if status == 0 && disagreements == 0 { 0 } else { 1 })
    }

    fn psci(&mut self, func: u32) -> *mut Context {
        match func {
            psci::VERSION => self.answer(&[psci::VERSION_1_1]),
            psci::FEATURES => {
                let asked = (self.ns.x[1] & 0xffff_ffff) as u32;
                let v = match asked {
                    psci::VERSION
                    | psci::FEATURES
                    | psci::SYSTEM_OFF
                    | psci::SYSTEM_RESET
                    | arch::SMCCC_VERSION => 0,
                    _ => psci::NOT_SUPPORTED,
                };
                self.answer(&[v])
            }
            psci::SYSTEM_OFF if cfg!(feature = "linux") => {
                println!("monitor: PSCI SYSTEM_OFF from Linux; the core checks its state");
                self.final_check()
            }
            psci::SYSTEM_OFF => {
                println!("monitor: PSCI SYSTEM_OFF");
                end_run(if cfg!(feature = "fault-test") { 1 } else { 0 })
            }
            psci::SYSTEM_RESET => {
                // A test run never resets on purpose: a reset is a normal world that gave up
                // (a Linux kernel resets on a panic), so the run ends as failed.
                println!(
                    "monitor: PSCI SYSTEM_RESET: this machine cannot reset; the run ends as failed"
                );
                end_run(3)
            }
            // One CPU: bringing up others is refused for now.
            psci::CPU_ON_32 | psci::CPU_ON_64 => self.answer(&[psci::NOT_SUPPORTED]),
            _ => self.answer(&[psci::NOT_SUPPORTED]),
        }
    }
}

/// An exception taken at EL3 itself: a monitor bug. Prints what is known and ends the run.
#[unsafe(no_mangle)]
extern "C" fn el3_fatal_rust(kind: u64, esr: u64, elr: u64, far: u64, spsr: u64) -> ! {
    println!(
        "monitor: exception at EL3 (vector {kind}): ESR_EL3 {esr:#x}, ELR_EL3 {elr:#x}, \
         FAR_EL3 {far:#x}, SPSR_EL3 {spsr:#x}"
    );
    end_run(2)
}
