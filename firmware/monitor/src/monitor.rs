//! The EL3 monitor: which world runs, what each SMC means, and the world switch.
//!
//! | SMC from | function | what the monitor does |
//! |---|---|---|
//! | normal world | OP-TEE (owners 50..61, 63: Trusted OS calls, yielding or fast) | forwards a0..a7 to the core's call entry |
//! | normal world | `SIP_TEESHM_CHECK`, `SIP_TEESHM_FAULT_TEST` | forwards to the core |
//! | normal world | `SIP_TEESHM_TEST_EXIT` | ends the run (status 0 only if the client's cases all passed and the secure world never faulted) |
//! | normal world | `SIP_TEESHM_MONITOR_STATS` | answers the monitor's counters |
//! | normal world | PSCI VERSION, FEATURES, CPU_ON, CPU_OFF, AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET | answers; CPU_ON releases a parked CPU, which runs the core's CPU_ON hook and then enters the normal world's entry; CPU_OFF parks the calling CPU; SYSTEM_OFF ends the run (status 0), SYSTEM_RESET too (status 3: this machine cannot reset) |
//! | normal world | SMCCC_VERSION, SMCCC_ARCH_FEATURES | answers |
//! | normal world | anything else (owner 62 included: only the core may use it) | `SMC_UNK` |
//! | secure world | `SECURE_ENTRY_DONE` | the core is up: enter the normal world at 0x4020_0000 |
//! | secure world | `SECURE_CPU_ON_DONE` | a secondary CPU's core hook is done: enter the normal world at its `CPU_ON` entry |
//! | secure world | `SECURE_CALL_DONE` | x1..x8 become the normal world's a0..a7 (RPC requests too) |
//! | secure world | `SECURE_FAULT`, `SECURE_PANIC` | the secure world is dead: end the run |
//!
//! The normal world's x8..x30 come back exactly as it left them; nothing of the secure world's
//! registers reaches it but the eight answer registers.
//!
//! Every CPU has its own pair of contexts and its own state: calls from several CPUs run in
//! the core at once, and a call suspended in an RPC on one CPU may be resumed from another (the
//! core keeps it in its thread table, not on a stack). The monitor runs with its MMU off, where
//! memory is Device-nGnRnE and exclusive accesses are not architecturally guaranteed, so the
//! only state CPUs share (power states, the release words) changes under a bakery lock made
//! of plain loads and stores.

use crate::context::{Context, El1Regs};
use core::cell::UnsafeCell;
use teeshm_abi::smc::OPTEE_SMC_RETURN_RPC_FOREIGN_INTR;
use teeshm_fw_common::fid::{self, arch, psci};
use teeshm_fw_common::{console, cpu, println, semihosting, time};

/// SCTLR_EL3: RES1 bits, SA (stack alignment check) and I (instruction cache); MMU, data
/// cache and alignment checks off. The monitor touches only secure RAM and the secure UART.
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
/// Normal-world RAM (`-m 1024`): where a `CPU_ON` entry point may lie.
const NS_RAM: (u64, u64) = (0x4000_0000, 1 << 30);
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
    /// The core boots, or runs its CPU_ON hook on this CPU (zero: the state `.el3` starts in).
    Booting = 0,
    /// The normal world runs; the core waits for a call.
    Ready = 1,
    /// The core serves a call the normal world made.
    InCall = 2,
    /// `linux`: the kernel powered off; the core runs its agreement checker before the run
    /// ends.
    FinalCheck = 3,
}

/// A CPU's power state, as PSCI's `AFFINITY_INFO` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Power {
    /// Parked at EL3 (zero: every CPU but the boot one starts so).
    Off = 0,
    /// Released by `CPU_ON`, not yet in the normal world.
    OnPending = 1,
    /// Running the normal world (or the core for it).
    On = 2,
}

/// One CPU's worlds and counters.
struct Cpu {
    secure: Context,
    ns: Context,
    state: State,
    /// Calls forwarded to the core from this CPU (`RETURN_FROM_RPC`s included).
    calls: u64,
    switches: u64,
    /// Calls the core answered with `RPC_FOREIGN_INTR` on this CPU.
    foreign_interrupts: u64,
}

impl Cpu {
    const ZERO: Self = Self {
        secure: Context::ZERO,
        ns: Context::ZERO,
        state: State::Booting,
        calls: 0,
        switches: 0,
        foreign_interrupts: 0,
    };
}

/// Lamport's bakery lock over [`cpu::MAX_CPUS`] CPUs: mutual exclusion with plain loads and
/// stores (each followed by a barrier), which is what EL3 has with its MMU off.
struct Bakery {
    choosing: [u64; cpu::MAX_CPUS],
    number: [u64; cpu::MAX_CPUS],
}

/// What the CPUs share: written by the boot CPU before any other CPU runs, or under the
/// bakery lock.
struct Shared {
    ready_at_us: u64,
    /// CPUs the machine has (counted in the GIC).
    present: usize,
    /// The core's EL1 registers once it booted (its MMU on): a secondary CPU enters the core
    /// with them.
    secure_el1: El1Regs,
    /// Every CPU's power state (under the lock).
    power: [Power; cpu::MAX_CPUS],
}

/// The value of a release word that lets a parked CPU go (one that RAM is unlikely to hold
/// at reset by chance).
pub const RELEASE: u64 = 0x7465_6573_686d_4f4e;

/// The parked CPUs' release words: [`RELEASE`] once `CPU_ON` prepared that CPU's contexts.
/// main.rs's holding pen polls them from flash, before the image is even in secure RAM (they
/// are zeroed with `.el3` at boot, and only the pen and `CPU_ON` touch them, volatile).
struct ReleaseWords(UnsafeCell<[u64; cpu::MAX_CPUS]>);

// SAFETY: only volatile loads and stores reach the words (`release_word`, `set_release_word`,
// the pen's `ldr`); a word is written by `CPU_ON` under the lock while its CPU is off, and by
// its CPU when it consumes it.
unsafe impl Sync for ReleaseWords {}

#[unsafe(export_name = "monitor_release")]
#[unsafe(link_section = ".el3.bss")]
static RELEASE_WORDS: ReleaseWords = ReleaseWords(UnsafeCell::new([0; cpu::MAX_CPUS]));

fn set_release_word(index: usize, value: u64) {
    let words = RELEASE_WORDS.0.get().cast::<u64>();
    // SAFETY: a volatile store to one element (index modulo the length), see `ReleaseWords`;
    // the barriers order it after the CPU's contexts and make it visible before the SEV.
    unsafe {
        core::arch::asm!("dsb sy", options(nostack, preserves_flags));
        words.add(index % cpu::MAX_CPUS).write_volatile(value);
        core::arch::asm!("dsb sy", "sev", options(nostack, preserves_flags));
    }
}
struct Monitor {
    cpus: [Cpu; cpu::MAX_CPUS],
    shared: Shared,
    lock: Bakery,
}

impl Monitor {
    const ZERO: Self = Self {
        cpus: [Cpu::ZERO; cpu::MAX_CPUS],
        shared: Shared {
            ready_at_us: 0,
            present: 1,
            secure_el1: El1Regs::ZERO,
            power: [Power::Off; cpu::MAX_CPUS],
        },
        lock: Bakery {
            choosing: [0; cpu::MAX_CPUS],
            number: [0; cpu::MAX_CPUS],
        },
    };
}

struct MonitorCell(UnsafeCell<Monitor>);

// SAFETY: EL3 runs with every exception masked (it takes no interrupt), so on one CPU its
// handlers never overlap. Each CPU touches its own `Cpu` only, except that `CPU_ON` prepares a
// parked CPU's contexts (that CPU reads nothing of them before its release word is set, after
// them) and that counters are read across CPUs with volatile loads (`counters`); `Shared` is
// written by the boot CPU before any other CPU is released, or under the bakery lock; the
// lock's own arrays are only accessed volatile (see `locked`).
unsafe impl Sync for MonitorCell {}

/// EL3's state, in `.el3`: secure RAM that the S-EL1 core never maps.
#[unsafe(link_section = ".el3.bss")]
static MONITOR: MonitorCell = MonitorCell(UnsafeCell::new(Monitor::ZERO));

/// CPU `index`'s state. Only that CPU's EL3 handlers (see `MonitorCell`) and, for a parked
/// CPU, `CPU_ON` under the lock use it; callers never hold it across a return to a lower EL.
fn cpu_state(index: usize) -> &'static mut Cpu {
    // SAFETY: see `MonitorCell`: one CPU at a time uses a given `Cpu`, so this is the only
    // live reference to it; the place is projected from the raw pointer, so no reference to
    // the whole monitor is made; `index % MAX_CPUS` is in bounds.
    unsafe { &mut (*MONITOR.0.get()).cpus[index % cpu::MAX_CPUS] }
}

/// The shared state (see `Shared` for who writes it when).
fn shared() -> &'static mut Shared {
    // SAFETY: see `Shared` and `MonitorCell`: the boot CPU writes it before other CPUs run;
    // afterwards the power states and release words are touched under the bakery lock and
    // the rest is only read.
    unsafe { &mut (*MONITOR.0.get()).shared }
}

/// Runs `f` under the bakery lock, as CPU `me`.
fn locked<T>(me: usize, f: impl FnOnce(&mut Shared) -> T) -> T {
    let barrier = || {
        // SAFETY: a barrier only orders this CPU's memory accesses.
        unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) }
    };
    // SAFETY: the bakery's arrays are only ever accessed by volatile loads and stores through
    // these raw pointers (no reference to them is made), and every index is < MAX_CPUS.
    let (choosing, number) = unsafe {
        let lock = &raw mut (*MONITOR.0.get()).lock;
        (
            (&raw mut (*lock).choosing).cast::<u64>(),
            (&raw mut (*lock).number).cast::<u64>(),
        )
    };
    let me = me % cpu::MAX_CPUS;
    let get = |a: *mut u64, i: usize| {
        // SAFETY: see above.
        unsafe { a.add(i).read_volatile() }
    };
    let set = |a: *mut u64, i: usize, v: u64| {
        // SAFETY: see above.
        unsafe { a.add(i).write_volatile(v) };
        barrier();
    };
    set(choosing, me, 1);
    let mine = (0..cpu::MAX_CPUS)
        .map(|i| get(number, i))
        .max()
        .unwrap_or(0)
        + 1;
    set(number, me, mine);
    set(choosing, me, 0);
    for other in (0..cpu::MAX_CPUS).filter(|&i| i != me) {
        while get(choosing, other) != 0 {}
        loop {
            let theirs = get(number, other);
            if theirs == 0 || (theirs, other) > (mine, me) {
                break;
            }
        }
    }
    let out = f(shared());
    barrier();
    set(number, me, 0);
    out
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

/// A 32-bit GIC register (QEMU virt's GIC frames: device memory, reached physically at EL3
/// with the MMU off; nothing of Rust's lives there).
fn gic_reg(base: usize, offset: usize) -> *mut u32 {
    (base + offset) as *mut u32
}

/// The GIC's architecture version: 3 when this CPU has the GICv3 system-register interface
/// (`ID_AA64PFR0_EL1.GIC` ≠ 0, which QEMU sets with a GICv3), else 2. (The distributor's ID
/// registers lie at different offsets in the two, beyond a GICv2 frame's end for a GICv3's.)
fn gic_version() -> u32 {
    let pfr0: u64;
    // SAFETY: reading ID_AA64PFR0_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack)) };
    if (pfr0 >> 24) & 0xf != 0 { 3 } else { 2 }
}

/// Hands every interrupt to the normal world, as secure firmware does before it starts a
/// normal-world OS or hypervisor: at reset every interrupt is secure (Group 0) and only the
/// secure state can change that. The test client uses no interrupts; Linux and Xen need their
/// timer and devices. Returns the GIC's version. The boot CPU runs it; every other CPU runs
/// [`gic_cpu_to_normal_world`] when `CPU_ON` brings it up.
fn gic_to_normal_world() -> u32 {
    let version = gic_version();
    if version >= 3 {
        gicv3_to_normal_world();
    } else {
        gicv2_to_normal_world();
    }
    gic_cpu_to_normal_world(version);
    version
}

/// What each CPU sets up itself: the GICv3 CPU interface's system-register access
/// (`ICC_SRE_EL3` is a register of the CPU), or the GICv2's banked SGI/PPI groups and CPU
/// interface.
fn gic_cpu_to_normal_world(version: u32) {
    if version >= 3 {
        // SAFETY: ICC_SRE_EL3 (S3_6_C12_C12_5) = SRE | DFB | DIB | Enable only says how this
        // CPU's GIC interface is reached (system registers at every EL) and lets EL2 and EL1
        // use ICC_SRE_ELx; no memory is touched.
        unsafe {
            core::arch::asm!(
                "msr S3_6_C12_C12_5, {}",
                "isb",
                in(reg) 0xf_u64,
                options(nomem, nostack)
            );
        }
    } else {
        // SAFETY: GICD_IGROUPR0 (SGIs and PPIs) and the GICC frame are banked per CPU in
        // QEMU virt's GICv2 (see `gic_reg`); written from the secure state.
        unsafe {
            gic_reg(GICD_BASE, 0x080).write_volatile(0xffff_ffff);
            gic_reg(GICC_BASE, 0x004).write_volatile(0xff);
            gic_reg(GICC_BASE, 0x000).write_volatile(0x3);
        }
    }
}

/// CPUs the machine has: GICv3 redistributors (one a CPU), or a GICv2's
/// `GICD_TYPER.CPUNumber` + 1; at most [`cpu::MAX_CPUS`].
fn cpus_present() -> usize {
    let count = if gic_version() >= 3 {
        let mut n = 1;
        let mut rd = GICR_BASE;
        // SAFETY: GICR_TYPER of QEMU virt's GICv3 redistributor frames, read only, walked up
        // to the one marked last (see `gic_reg`).
        while unsafe { ((rd + 0x008) as *const u64).read_volatile() } & GICR_TYPER_LAST == 0 {
            n += 1;
            rd += 0x2_0000;
        }
        n
    } else {
        // SAFETY: GICD_TYPER is a read-only register of the distributor.
        let typer = unsafe { gic_reg(GICD_BASE, 0x004).read_volatile() };
        ((typer >> 5) & 0x7) as usize + 1
    };
    count.min(cpu::MAX_CPUS)
}

/// GICv2: every SPI in Group 1, both groups on (the banked part: `gic_cpu_to_normal_world`).
fn gicv2_to_normal_world() {
    // SAFETY: GICD is QEMU virt's GICv2 distributor (see `gic_reg`); these 32-bit registers
    // are written from the secure state, as the security extensions require.
    unsafe {
        let typer = gic_reg(GICD_BASE, 0x004).read_volatile();
        let lines = (typer & 0x1f) as usize + 1;
        for n in 1..lines {
            gic_reg(GICD_BASE, 0x080 + 4 * n).write_volatile(0xffff_ffff);
        }
        gic_reg(GICD_BASE, 0x000).write_volatile(0x3);
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
/// affinity routing on, every SPI, SGI and PPI in Non-secure Group 1 (`IGROUPR` = 1,
/// `IGRPMODR` = 0), and every CPU's redistributor awake (`GICR_WAKER.ProcessorSleep` is
/// writable from the secure state only while security is enabled, as in QEMU `secure=on`);
/// the system-register interface is per CPU (`gic_cpu_to_normal_world`). The normal world
/// then enables its group and sets its priority mask itself.
fn gicv3_to_normal_world() {
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

/// Invalidates this CPU's secure EL1&0 TLB entries before it first enters the core (a CPU's
/// TLBs hold anything at reset; the core's later maintenance is broadcast).
fn invalidate_secure_el1_tlb() {
    // SAFETY: TLBI ALLE1 at EL3 with SCR_EL3.NS = 0 drops this CPU's secure EL1&0 entries,
    // which the core's tables rebuild on demand; no memory is touched.
    unsafe { core::arch::asm!("tlbi alle1", "dsb nsh", "isb", options(nostack)) };
}

/// First Rust code at EL3 on the boot CPU (from `_start`, on its EL3 stack): enters the S-EL1
/// core's boot.
#[unsafe(no_mangle)]
extern "C" fn monitor_main() -> ! {
    // The secure world's lines go to the secure UART (QEMU's serial1) from the first one on,
    // EL3's and the S-EL1 core's alike (one console, set before any other CPU runs).
    console::use_uart_at(console::SECURE_UART_BASE);
    let shared = shared();
    let me = cpu_state(0);
    println!();
    println!(
        "monitor: teeshm EL3 monitor up at {} us (cortex-a57, MPIDR {:#x}); secure image in \
         secure RAM, EL3 state at {:#x}",
        time::micros(),
        cpu::mpidr(),
        (&raw const MONITOR) as usize
    );
    shared.present = cpus_present();
    shared.power[0] = Power::OnPending;
    me.secure = Context::new(teeshm_fw_tee::tee_boot_entry as *const () as u64);
    me.secure.x[0] = NS_ENTRY_EL;
    me.ns = Context::new(NS_ENTRY);
    if NS_ENTRY_EL == 2 {
        me.ns.spsr_el3 = crate::context::SPSR_EL2H_MASKED;
    }
    let gic = gic_to_normal_world();
    if cfg!(feature = "linux") {
        me.ns.x[0] = LINUX_DTB;
        println!("monitor: Linux mode: x0 = device tree at {LINUX_DTB:#x}");
    }
    println!(
        "monitor: GICv{gic} interrupts handed to the normal world (Non-secure Group 1); {} \
         CPUs, the others parked until PSCI CPU_ON",
        shared.present
    );
    me.state = State::Booting;
    me.secure.el1.restore();
    write_scr(SCR_SECURE);
    invalidate_secure_el1_tlb();
    let ctx = &raw mut me.secure;
    // SAFETY: `ctx` is the secure context just set up: S-EL1 boot entry, EL1h with exceptions
    // masked, MMU off, FP enabled; SCR_EL3 selects the secure state.
    unsafe { el3_exit(ctx) }
}

/// First Rust code at EL3 on a secondary CPU, once `CPU_ON` released it (from `_start`'s
/// holding pen, on its EL3 stack, `cpu` its index): its GIC CPU interface to the normal world,
/// then the core's CPU_ON hook at S-EL1 with the core's own registers (MMU on), which ends with
/// `SECURE_CPU_ON_DONE`.
#[unsafe(no_mangle)]
extern "C" fn monitor_secondary(cpu: usize) -> ! {
    let me = cpu_state(cpu);
    set_release_word(cpu, 0);
    gic_cpu_to_normal_world(gic_version());
    me.secure = Context::new(teeshm_fw_tee::tee_cpu_on_entry as *const () as u64);
    me.secure.el1 = shared().secure_el1;
    me.secure.x[0] = cpu as u64;
    me.state = State::Booting;
    me.secure.el1.restore();
    write_scr(SCR_SECURE);
    invalidate_secure_el1_tlb();
    let ctx = &raw mut me.secure;
    // SAFETY: `ctx` is this CPU's secure context just set up: the core's CPU_ON hook, EL1h
    // with exceptions masked, the core's translation regime and vectors as the boot CPU left
    // them, this CPU's TLB clean; SCR_EL3 selects the secure state.
    unsafe { el3_exit(ctx) }
}

/// An SMC (or any synchronous exception) from EL1 or EL2 of either world on this CPU. `ctx`
/// is the context the entry saved into; returns the context to resume.
#[unsafe(no_mangle)]
extern "C" fn el3_handle_lower(ctx: *mut Context) -> *mut Context {
    let index = cpu::this();
    let me = cpu_state(index);
    let from_secure = core::ptr::eq(ctx, &raw mut me.secure);
    let esr = read_esr_el3();
    if (esr >> 26) & 0x3f != EC_SMC64 {
        let (world, elr) = if from_secure {
            ("secure", me.secure.elr_el3)
        } else {
            ("normal", me.ns.elr_el3)
        };
        println!(
            "monitor: unexpected exception from the {world} world on CPU {index}: ESR_EL3 \
             {esr:#x}, ELR_EL3 {elr:#x}"
        );
        end_run(1);
    }
    if from_secure {
        me.from_secure(index)
    } else {
        me.from_normal(index)
    }
}

impl Cpu {
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

    fn from_normal(&mut self, index: usize) -> *mut Context {
        let func = (self.ns.x[0] & 0xffff_ffff) as u32;
        let owner = fid::owner(func);
        if self.state != State::Ready {
            println!(
                "monitor: SMC {func:#x} from the normal world on CPU {index} while the core is \
                 busy there"
            );
            end_run(1);
        }
        match owner {
            50..=61 | 63 => self.forward(),
            fid::OWNER_OPTEED => self.answer(&[fid::SMC_UNKNOWN]),
            2 if (fid::SIP_TEESHM_RANGE.0..=fid::SIP_TEESHM_RANGE.1).contains(&func) => {
                match func {
                    fid::SIP_TEESHM_TEST_EXIT => self.test_exit(),
                    fid::SIP_TEESHM_MONITOR_STATS => {
                        let (calls, switches) = totals();
                        let since = time::micros().saturating_sub(shared().ready_at_us);
                        let on = locked(index, |s| {
                            s.power.iter().filter(|p| **p == Power::On).count() as u64
                        });
                        self.answer(&[0, calls, switches, since, on])
                    }
                    fid::SIP_TEESHM_CHECK | fid::SIP_TEESHM_FAULT_TEST => self.forward(),
                    _ => self.answer(&[fid::SMC_UNKNOWN]),
                }
            }
            4 => self.psci(index, func),
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

    fn from_secure(&mut self, index: usize) -> *mut Context {
        let func = (self.secure.x[0] & 0xffff_ffff) as u32;
        match (func, self.state) {
            (fid::SECURE_ENTRY_DONE, State::Booting) if index == 0 => {
                let shared = shared();
                shared.ready_at_us = time::micros();
                println!(
                    "monitor: S-EL1 core ready at {} us; entering the normal world at {NS_ENTRY:#x} (NS-EL{NS_ENTRY_EL})",
                    shared.ready_at_us
                );
                self.state = State::Ready;
                let next = self.switch_to_normal();
                // The core's registers with its MMU on: what a secondary CPU enters it with.
                shared.secure_el1 = self.secure.el1;
                locked(index, |s| s.power[index] = Power::On);
                next
            }
            (fid::SECURE_CPU_ON_DONE, State::Booting) if index != 0 => {
                self.state = State::Ready;
                locked(index, |s| s.power[index] = Power::On);
                self.switch_to_normal()
            }
            (fid::SECURE_CALL_DONE, State::FinalCheck) => self.final_check_done(),
            (fid::SECURE_CALL_DONE, State::InCall) => {
                let mut answer = [0u64; 8];
                for (dst, src) in answer.iter_mut().zip(self.secure.x.iter().skip(1)) {
                    *dst = *src;
                }
                if answer[0] == u64::from(OPTEE_SMC_RETURN_RPC_FOREIGN_INTR) {
                    self.foreign_interrupts += 1;
                }
                self.state = State::Ready;
                self.answer(&answer);
                self.switch_to_normal()
            }
            (fid::SECURE_FAULT, _) => self.secure_fault(),
            (fid::SECURE_PANIC, _) => {
                println!("monitor: the secure world panicked on CPU {index}; ending the run");
                end_run(1)
            }
            (other, state) => {
                println!(
                    "monitor: unexpected SMC {other:#x} from the secure world on CPU {index} \
                     ({state:?})"
                );
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
        print_cpu_counters();
        end_run(if failed == 0 && passed > 0 { 0 } else { 1 })
    }

    /// `linux`: the kernel powered off (its init does so only when the libteec test passed).
    /// Before the run ends, the core runs its agreement checker on all that Linux's driver
    /// left (a `SIP_TEESHM_CHECK` call the monitor makes itself).
    fn final_check(&mut self) -> *mut Context {
        self.secure.x = [0; 31];
        self.secure.x[0] = u64::from(fid::SIP_TEESHM_CHECK);
        self.secure.x[1] = fid::CHECK_FINAL;
        self.secure.elr_el3 = teeshm_fw_tee::tee_call_entry as *const () as u64;
        self.secure.spsr_el3 = crate::context::SPSR_EL1H_MASKED;
        self.state = State::FinalCheck;
        self.switch_to_secure()
    }

    /// The core's answer to the final check (x1 = 0, x2 = disagreements found): the run
    /// passes only if tables, window, reverse map and registry agree.
    fn final_check_done(&mut self) -> ! {
        let (status, disagreements) = (self.secure.x[1], self.secure.x[2]);
        let (calls, switches) = totals();
        println!(
            "monitor: Linux is off: {calls} calls forwarded, {switches} world switches, {} us \
             since the core was ready; agreement check: {disagreements} disagreements",
            time::micros().saturating_sub(shared().ready_at_us)
        );
        print_cpu_counters();
        end_run(if status == 0 && disagreements == 0 {
            0
        } else {
            1
        })
    }

    fn psci(&mut self, index: usize, func: u32) -> *mut Context {
        match func {
            psci::VERSION => self.answer(&[psci::VERSION_1_1]),
            psci::FEATURES => {
                let asked = (self.ns.x[1] & 0xffff_ffff) as u32;
                let v = match asked {
                    psci::VERSION
                    | psci::FEATURES
                    | psci::CPU_ON_32
                    | psci::CPU_ON_64
                    | psci::CPU_OFF
                    | psci::AFFINITY_INFO_32
                    | psci::AFFINITY_INFO_64
                    | psci::MIGRATE_INFO_TYPE
                    | psci::SYSTEM_OFF
                    | psci::SYSTEM_RESET
                    | arch::SMCCC_VERSION => 0,
                    _ => psci::NOT_SUPPORTED,
                };
                self.answer(&[v])
            }
            psci::CPU_ON_32 | psci::CPU_ON_64 => {
                let wide = func == psci::CPU_ON_64;
                let arg = |v: u64| if wide { v } else { v & 0xffff_ffff };
                let (target, entry, context) =
                    (arg(self.ns.x[1]), arg(self.ns.x[2]), arg(self.ns.x[3]));
                let v = cpu_on(index, target, entry, context);
                self.answer(&[v])
            }
            psci::CPU_OFF => self.cpu_off(index),
            psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => {
                let (target, level) = (self.ns.x[1], self.ns.x[2]);
                let target = if func == psci::AFFINITY_INFO_32 {
                    target & 0xffff_ffff
                } else {
                    target
                };
                let v = match cpu::index_of(target) {
                    Some(t) if level == 0 && t < shared().present => {
                        locked(index, |s| match s.power[t] {
                            Power::On => psci::AFFINITY_ON,
                            Power::Off => psci::AFFINITY_OFF,
                            Power::OnPending => psci::AFFINITY_ON_PENDING,
                        })
                    }
                    _ => psci::INVALID_PARAMETERS,
                };
                self.answer(&[v])
            }
            psci::MIGRATE_INFO_TYPE => self.answer(&[psci::TOS_NOT_PRESENT_MP]),
            psci::SYSTEM_OFF if cfg!(feature = "linux") => {
                println!(
                    "monitor: PSCI SYSTEM_OFF from the normal world on CPU {index}; the core \
                     checks its state"
                );
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
            _ => self.answer(&[psci::NOT_SUPPORTED]),
        }
    }

    /// `CPU_OFF`: this CPU leaves the normal world and parks at EL3 until a `CPU_ON` releases
    /// it again. The last CPU on may not go (`DENIED`), nor may one the core still serves.
    fn cpu_off(&mut self, index: usize) -> *mut Context {
        // Once this CPU is marked off, a `CPU_ON` on another CPU may prepare its contexts at
        // once: nothing of this CPU's state is touched after the lock (its state is set first).
        self.state = State::Booting;
        let allowed = locked(index, |s| {
            let others = (0..s.present.min(cpu::MAX_CPUS))
                .filter(|&i| i != index && s.power[i] != Power::Off)
                .count();
            if others == 0 {
                return false;
            }
            s.power[index] = Power::Off;
            true
        });
        if !allowed {
            self.state = State::Ready;
            return self.answer(&[psci::DENIED]);
        }
        // SAFETY: `park` never returns and uses no Rust state: this frame (and its reference to
        // this CPU's `Cpu`) is abandoned, and the CPU waits on its release word until `CPU_ON`
        // has prepared its contexts again.
        unsafe { park(index) }
    }
}

unsafe extern "C" {
    /// Waits (at EL3, WFE) until CPU `index`'s release word is [`RELEASE`], then enters
    /// [`monitor_secondary`] on a fresh EL3 stack (main.rs's holding pen).
    fn park(index: usize) -> !;
}

/// `CPU_ON` as CPU `me`: prepares CPU `target`'s normal-world context (entered at `entry`, at
/// the normal world's EL, MMU off, x0 = `context`), marks it on-pending and releases it.
fn cpu_on(me: usize, target: u64, entry: u64, context: u64) -> u64 {
    let Some(t) = cpu::index_of(target).filter(|&t| t < shared().present) else {
        return psci::INVALID_PARAMETERS;
    };
    let (ns_base, ns_len) = NS_RAM;
    if entry < ns_base || entry >= ns_base + ns_len || entry % 4 != 0 {
        return psci::INVALID_ADDRESS;
    }
    locked(me, |s| match s.power[t] {
        Power::On => psci::ALREADY_ON,
        Power::OnPending => psci::ON_PENDING,
        Power::Off => {
            let c = cpu_state(t);
            c.ns = Context::new(entry);
            c.ns.x[0] = context;
            if NS_ENTRY_EL == 2 {
                c.ns.spsr_el3 = crate::context::SPSR_EL2H_MASKED;
            }
            s.power[t] = Power::OnPending;
            set_release_word(t, RELEASE);
            0
        }
    })
}

/// CPU `index`'s counters (calls forwarded, world switches, foreign interrupts), read from
/// any CPU.
fn counters(index: usize) -> (u64, u64, u64) {
    // SAFETY: volatile loads of three counters of one `Cpu` (index modulo the array's length)
    // through raw places, no reference made; a counter is only ever written by its own CPU.
    unsafe {
        let c = &raw const (*MONITOR.0.get()).cpus[index % cpu::MAX_CPUS];
        (
            (&raw const (*c).calls).read_volatile(),
            (&raw const (*c).switches).read_volatile(),
            (&raw const (*c).foreign_interrupts).read_volatile(),
        )
    }
}

/// Each CPU's counters, at the end of a run (`cargo xtask` reads them).
fn print_cpu_counters() {
    for i in 0..shared().present {
        let (calls, _, foreign) = counters(i);
        println!("monitor: cpu {i} secure_entries {calls} foreign_interrupts {foreign}");
    }
}

/// Calls forwarded and world switches over all CPUs.
fn totals() -> (u64, u64) {
    (0..cpu::MAX_CPUS)
        .map(counters)
        .fold((0, 0), |(c, s), (calls, switches, _)| {
            (c + calls, s + switches)
        })
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
