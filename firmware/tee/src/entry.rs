//! Where the monitor enters the S-EL1 core, and where the core gives control back.
//!
//! - `tee_boot_entry` (once, MMU off; x0 = the EL the monitor enters the normal world at, which
//!   picks the core's normal-world mode): stack, vectors, then [`tee_boot`] turns the MMU and
//!   caches on with boot tables (secure RAM normal, the UART device; the data cache invalidated
//!   first), builds the heap and the core, maps secure RAM and the UART statically into mm's
//!   tables, moves TTBR0 to them, and the entry ends with `SMC SECURE_ENTRY_DONE`.
//! - `tee_cpu_on_entry` (on a CPU PSCI `CPU_ON` brings up, MMU on with the core's registers):
//!   its stacks, vectors, [`tee_cpu_on`], `SMC SECURE_CPU_ON_DONE`.
//! - `tee_call_entry` (for every call the monitor forwards, x0..x7 = a0..a7 of the normal
//!   world): a fresh stack, [`tee_handle_call`], then `SMC SECURE_CALL_DONE` with the answer in
//!   x1..x8. Nothing stays on the stack between calls: a call suspended in an RPC is parked
//!   in the core's thread table, and the normal world's `RETURN_FROM_RPC` is a new entry.
//! - `tee_vectors`: every exception at S-EL1 is fatal: [`tee_exception`] prints the fault with
//!   its address and reports it to the monitor (`SMC SECURE_FAULT`), which ends the run. So are
//!   the lower EL's IRQ, FIQ and SError (a TA runs with them masked) and every AArch32 vector;
//!   the lower EL's AArch64 synchronous exceptions (a TA's system calls and faults) go to
//!   `tee_user_sync` ([`crate::user`]), which hands them to the core's trap handler.

use crate::layout;
use crate::platform::{FwPlatform, FwTlb};
use crate::{WINDOW_BASE, WINDOW_SIZE};
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use teeshm_abi::smc::{
    OPTEE_SMC_CALL_RETURN_FROM_RPC, OPTEE_SMC_RETURN_ETHREAD_LIMIT, OPTEE_SMC_RETURN_OK,
    OPTEE_SMC_RETURN_UNKNOWN_FUNCTION, OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED, SmcRegs,
    is_rpc_return,
};
use teeshm_core::{CoreConfig, NormalWorld, Tee};
use teeshm_fw_common::{fid, println, time};
use teeshm_mm::{
    MemKind, MemoryMap, PAGE_SIZE, PhysAddr, PhysRange, Region, RegionKind, ShmWindow, VirtAddr,
    VirtPages,
};

/// The VA the `fault-test` build touches: the last page of the first 2 MiB of the SHM window.
/// The window's first mappings share its last-level table, so the walk reaches level 3 and
/// finds this one entry invalid (the core checks it is unmapped before touching it).
pub const FAULT_TEST_VA: u64 = WINDOW_BASE + 0x20_0000 - PAGE_SIZE;

static TEE: spin::Once<Tee<FwPlatform>> = spin::Once::new();
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Calls in the core right now, over all CPUs, and the most there ever were at once.
static IN_CORE: AtomicU64 = AtomicU64::new(0);
static MAX_IN_CORE: AtomicU64 = AtomicU64::new(0);
/// `RETURN_FROM_RPC`s that resumed a call on another CPU than the one it suspended on.
static RESUMED_ELSEWHERE: AtomicU64 = AtomicU64::new(0);
/// Threads the core may run (`CoreConfig::threads` is at most this many in the firmware's
/// preset); a suspended thread's CPU is kept here (`u64::MAX`: none).
const TRACKED_THREADS: usize = 64;
static SUSPENDED_ON: [AtomicU64; TRACKED_THREADS] =
    [const { AtomicU64::new(u64::MAX) }; TRACKED_THREADS];
/// CPUs the core's CPU_ON hook brought up (the boot CPU counts).
static CPUS_ON: AtomicU64 = AtomicU64::new(1);
/// Every `VM_CREATED` and `VM_DESTROYED` the core acknowledged, in order, with what a
/// destroyed guest held: printed again by the agreement check, when the run ends on one CPU
/// (a line printed live may be cut by another CPU's output on the same UART).
static HISTORY: spin::Mutex<Vec<alloc::string::String>> = spin::Mutex::new(Vec::new());

/// Prints `line` and keeps it in [`HISTORY`].
fn log_guest_life(line: alloc::string::String) {
    println!("tee: {line}");
    HISTORY.lock().push(line);
}
/// Calls answered `OPTEE_SMC_RETURN_ETHREAD_LIMIT` (every thread busy).
static THREAD_LIMITS: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    // x9 = this CPU's block in .stacks (secure.ld): __tee_stacks_start + Aff0 * CPU_STACKS
    // (the monitor runs only CPUs with Aff0 < MAX_CPUS and Aff1..3 = 0). Clobbers x10, x11.
    .macro cpu_stacks
    mrs     x9, mpidr_el1
    and     x9, x9, #0xff
    ldr     x10, ={cpu_stacks}
    ldr     x11, =__tee_stacks_start
    madd    x9, x9, x10, x11
    .endm

    .section .text.tee_entry, "ax"
    .global tee_boot_entry
tee_boot_entry:
    cpu_stacks
    add     sp, x9, #{stack_top}
    ldr     x9, =tee_vectors
    msr     vbar_el1, x9
    isb
    bl      tee_boot
    ldr     x0, ={entry_done}
    smc     #0
0:  wfe
    b       0b

    .global tee_cpu_on_entry
tee_cpu_on_entry:
    cpu_stacks
    add     sp, x9, #{stack_top}
    ldr     x9, =tee_vectors
    msr     vbar_el1, x9
    isb
    bl      tee_cpu_on
    ldr     x0, ={cpu_on_done}
    smc     #0
3:  wfe
    b       3b

    .global tee_call_entry
tee_call_entry:
    cpu_stacks
    add     sp, x9, #{stack_top}
    sub     sp, sp, #64
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    mov     x0, sp
    bl      tee_handle_call
    ldp     x1, x2, [sp, #0]
    ldp     x3, x4, [sp, #16]
    ldp     x5, x6, [sp, #32]
    ldp     x7, x8, [sp, #48]
    ldr     x0, ={call_done}
    smc     #0
1:  wfe
    b       1b

    .section .text.vectors.tee, "ax"
    .balign 0x800
    .global tee_vectors
tee_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7
    .balign 0x80
    mov     x0, #\kind
    b       tee_vector_common
    .endr
    // 8: synchronous from a lower EL in AArch64: a TA's system call or fault (user.rs).
    .balign 0x80
    b       tee_user_sync
    .irp kind, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\kind
    b       tee_vector_common
    .endr

tee_vector_common:
    cpu_stacks
    add     sp, x9, #{cpu_stacks}
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    bl      tee_exception
2:  wfe
    b       2b
    .ltorg
"#,
    entry_done = const fid::SECURE_ENTRY_DONE,
    call_done = const fid::SECURE_CALL_DONE,
    cpu_on_done = const fid::SECURE_CPU_ON_DONE,
    cpu_stacks = const layout::CPU_STACKS,
    stack_top = const layout::STACK_TOP,
);

unsafe extern "C" {
    /// Where the monitor enters the core at boot (S-EL1, MMU off).
    pub fn tee_boot_entry();
    /// Where the monitor enters the core for each call (S-EL1, MMU on).
    pub fn tee_call_entry();
    /// Where the monitor enters the core on a CPU that PSCI `CPU_ON` brings up (S-EL1, MMU on
    /// with the boot CPU's registers; x0 = the CPU's index): OP-TEE's CPU_ON hook.
    pub fn tee_cpu_on_entry();
}

/// Why the core could not boot.
#[derive(Debug)]
#[allow(dead_code, reason = "the fields are printed with Debug")]
enum BootError {
    Core(teeshm_core::entry::BootError),
    Map(&'static str, teeshm_mm::WindowError),
    Range(&'static str),
    MemoryMap,
    User(&'static str),
    Ta(&'static str, teeshm_core::ta::elf::ElfError),
    Register(&'static str, teeshm_core::TeeError),
}

fn memory_map() -> Result<MemoryMap, BootError> {
    let region = |(start, len): (u64, u64), kind| -> Result<Region, BootError> {
        Ok(Region {
            range: PhysRange::new(PhysAddr(start), len).map_err(|_| BootError::MemoryMap)?,
            kind,
        })
    };
    MemoryMap::new(&[
        region(layout::SECURE_RAM, RegionKind::SecureRam)?,
        region(layout::UART, RegionKind::Device)?,
        region(layout::SECURE_UART, RegionKind::Device)?,
        region(layout::NS_RAM, RegionKind::NonSecureRam)?,
    ])
    .map_err(|_| BootError::MemoryMap)
}

/// The core's configuration on QEMU: the core's `qemu_virt` preset (quotas sized to the 16 MiB
/// of secure RAM; the mediator fuzz target runs the same), in the mode of what the monitor
/// boots in the normal world: an operating system at EL1 (`ns_el` 1: one normal world, a7 names
/// no guest) or a hypervisor at EL2 (`ns_el` 2: guests it announces).
pub fn config(ns_el: u64) -> CoreConfig {
    CoreConfig::qemu_virt(if ns_el == 2 {
        NormalWorld::Virtualized
    } else {
        NormalWorld::Single
    })
}

/// Maps `range` (page aligned) at VA == PA as `kind`, outside the window.
fn map_identity(
    shm: &mut ShmWindow<FwTlb>,
    what: &'static str,
    range: Range<u64>,
    kind: MemKind,
) -> Result<u64, BootError> {
    let pages = range.end.saturating_sub(range.start) / PAGE_SIZE;
    let va = VirtPages::new(VirtAddr(range.start), pages).map_err(|_| BootError::Range(what))?;
    let mut list = Vec::new();
    list.try_reserve_exact(pages as usize)
        .map_err(|_| BootError::Range(what))?;
    list.extend((0..pages).map(|i| PhysAddr(range.start + i * PAGE_SIZE)));
    shm.map_static(va, &list, kind)
        .map_err(|e| BootError::Map(what, e))?;
    Ok(pages)
}

fn boot(ns_el: u64) -> Result<(), BootError> {
    let started = time::micros();
    // SAFETY: the boot CPU, MMU off; the image, its stacks and heap lie in secure RAM after
    // EL3's part (written by EL3 and this entry with the MMU off, never cached), the secure
    // UART in its 2 MiB block.
    unsafe {
        crate::mmu::enable_boot(
            layout::code().start..layout::SECURE_RAM.0 + layout::SECURE_RAM.1,
            layout::SECURE_UART.0..layout::SECURE_UART.0 + layout::SECURE_UART.1,
        )
    };
    crate::heap::init(layout::heap());
    let tee = Tee::new(
        config(ns_el),
        memory_map()?,
        FwPlatform::new(WINDOW_BASE, WINDOW_BASE + WINDOW_SIZE),
        FwTlb,
    )
    .map_err(BootError::Core)?;
    let (root, table_pages) = {
        let mut window = tee.window();
        let shm = window.shm_mut();
        let code = map_identity(shm, "code", layout::code(), MemKind::SecureCode)?;
        let data = map_identity(shm, "data", layout::data(), MemKind::SecureRam)?;
        let mut rest = map_identity(shm, "heap", layout::heap(), MemKind::SecureRam)?;
        for cpu in 0..teeshm_fw_common::cpu::MAX_CPUS {
            rest += map_identity(shm, "stacks", layout::stacks(cpu), MemKind::SecureRam)?;
        }
        map_identity(
            shm,
            "secure uart",
            layout::SECURE_UART.0..layout::SECURE_UART.0 + layout::SECURE_UART.1,
            MemKind::Device,
        )?;
        println!(
            "tee: static map: code+rodata {code} pages RX, data {data} pages RW, \
             stacks+heap {rest} pages RW, secure UART 1 page device; \
             unmapped: EL3 {:#x}..{:#x}, a stack guard page below each CPU's stack ({:#x}, \
             ...)",
            layout::el3().start,
            layout::el3().end,
            layout::stack_guard(0).start
        );
        (shm.tables().root_address().get(), shm.table_stats().live)
    };
    // SAFETY: the tables identity-map the code, data, stacks and heap in use and the secure
    // UART (just above) with the boot tables' attributes, and nothing of them moves: the tables
    // live on the heap, reached by the `Tee` that goes into the static below.
    unsafe { crate::mmu::switch_to(root) };
    let copied = crate::user::init(root).map_err(BootError::User)?;
    let images = crate::tas::images().map_err(|(name, e)| BootError::Ta(name, e))?;
    let mut names = Vec::new();
    for image in images {
        let name = image.name;
        let segments = image.segments.len();
        tee.register_ta(image)
            .map_err(|e| BootError::Register(name, e))?;
        names.push(alloc::format!("{name} ({segments} segments)"));
    }
    println!(
        "tee: user mode: per-CPU level-1 tables with the core's {copied} static slot(s), TA slots \
         2 and 3; TA pages from the heap; early TAs: {}",
        names.join(", ")
    );
    let normal_world = tee.config().normal_world;
    TEE.call_once(|| tee);
    println!(
        "tee: S-EL1 core up in {} us: MMU on (SCTLR_EL1 {:#x}, TTBR0_EL1 {:#x}), {} table \
         pages, SHM window {:#x}..{:#x} empty, heap {} KiB",
        time::micros().saturating_sub(started),
        crate::mmu::sctlr(),
        crate::mmu::ttbr0(),
        table_pages,
        WINDOW_BASE,
        WINDOW_BASE + WINDOW_SIZE,
        crate::heap::total() / 1024
    );
    let normal_world = match normal_world {
        NormalWorld::Single => "one normal world, no hypervisor (a7 ignored)",
        NormalWorld::Virtualized => "guests under a hypervisor (a7 names the guest)",
    };
    if cfg!(feature = "test-commands") {
        println!(
            "tee: {normal_world}; test commands ON: the memtest pseudo-TA's WHERE tells secure \
             VAs and PAs (a test build, never a product's)"
        );
    } else {
        println!("tee: {normal_world}; test commands off: WHERE answers 0 for secure addresses");
    }
    Ok(())
}

/// Boots the core (called once by `tee_boot_entry`, MMU off).
#[unsafe(no_mangle)]
extern "C" fn tee_boot(ns_el: u64) {
    if let Err(e) = boot(ns_el) {
        println!("tee: boot failed: {e:?}");
        stop(fid::SECURE_PANIC, [0; 4]);
    }
}

/// Serves one call (called by `tee_call_entry`); `regs` holds a0..a7 in and out.
#[unsafe(no_mangle)]
extern "C" fn tee_handle_call(regs: &mut [u64; 8]) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let Some(tee) = TEE.get() else {
        *regs = SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION).a;
        return;
    };
    let func = (regs[0] & 0xffff_ffff) as u32;
    let cpu = teeshm_fw_common::cpu::this() as u64;
    let now = IN_CORE.fetch_add(1, Ordering::AcqRel) + 1;
    // Written only when a new most is reached: every call reads it, few write it.
    if now > MAX_IN_CORE.load(Ordering::Relaxed) {
        MAX_IN_CORE.fetch_max(now, Ordering::AcqRel);
    }
    if func == OPTEE_SMC_CALL_RETURN_FROM_RPC {
        let thread = regs[3] as usize;
        if let Some(slot) = SUSPENDED_ON.get(thread) {
            let was = slot.swap(u64::MAX, Ordering::AcqRel);
            if was != u64::MAX && was != cpu {
                RESUMED_ELSEWHERE.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    *regs = match func {
        fid::SIP_TEESHM_CHECK => check(tee, regs[1] == fid::CHECK_FINAL),
        #[cfg(feature = "fault-test")]
        fid::SIP_TEESHM_FAULT_TEST => fault_test(tee),
        _ => {
            let client = regs[1];
            // What a guest the hypervisor destroys still holds, to be swept by this call.
            let held = (func == OPTEE_SMC_VM_DESTROYED)
                .then(|| {
                    tee.snapshots()
                        .into_iter()
                        .find(|g| u64::from(g.id.0) == client)
                })
                .flatten();
            let out = tee.handle_smc(SmcRegs { a: *regs }).a;
            // A guest's life, as the hypervisor announces it: logged, so a run can tell what
            // the core was told and swept (`cargo xtask xen`'s report).
            if out[0] == u64::from(OPTEE_SMC_RETURN_OK) {
                if func == OPTEE_SMC_VM_CREATED {
                    log_guest_life(alloc::format!("VM_CREATED client {client}"));
                } else if func == OPTEE_SMC_VM_DESTROYED {
                    log_guest_life(match held {
                        Some(g) => alloc::format!(
                            "VM_DESTROYED client {client}: swept objects {} registered_pages {} \
                             mapped_pages {} sessions {} threads {}",
                            g.objects,
                            g.registered_pages,
                            g.mapped_pages,
                            g.sessions,
                            g.threads
                        ),
                        None => alloc::format!("VM_DESTROYED client {client}: not a guest here"),
                    });
                }
            }
            if out[0] == u64::from(OPTEE_SMC_RETURN_ETHREAD_LIMIT) {
                THREAD_LIMITS.fetch_add(1, Ordering::Relaxed);
            }
            if is_rpc_return(out[0] as u32) {
                if let Some(slot) = SUSPENDED_ON.get(out[3] as usize) {
                    slot.store(cpu, Ordering::Release);
                }
            }
            out
        }
    };
    IN_CORE.fetch_sub(1, Ordering::AcqRel);
}

/// The core's CPU_ON hook (from `tee_cpu_on_entry`, on the CPU that comes up, MMU on).
#[unsafe(no_mangle)]
extern "C" fn tee_cpu_on(cpu: u64) {
    let on = CPUS_ON.fetch_add(1, Ordering::AcqRel) + 1;
    println!("tee: CPU {cpu} up (its stacks, the core's tables and vectors); {on} CPUs on");
}

/// Runs the core's agreement checker and reports counters.
fn check(tee: &Tee<FwPlatform>, last: bool) -> [u64; 8] {
    let found = tee.check_agreement();
    for d in found.iter().take(8) {
        println!("tee: disagreement: {d:?}");
    }
    let (mapped, live) = {
        let window = tee.window();
        (window.shm().mapped_pages(), window.shm().table_stats().live)
    };
    for line in HISTORY.lock().iter() {
        println!("tee: history: {line}");
    }
    // What each guest still holds (after a run, what its normal world left behind).
    for g in tee.snapshots() {
        println!(
            "tee: guest client {} objects {} mapped_pages {} registered_pages {} sessions {} \
             threads {}",
            g.id.0, g.objects, g.mapped_pages, g.registered_pages, g.sessions, g.threads
        );
    }
    // The CPUs' counters at the end of a run, or once there is something to tell (the test
    // client checks often).
    let (cpus_on, most) = (
        CPUS_ON.load(Ordering::Acquire),
        MAX_IN_CORE.load(Ordering::Acquire),
    );
    if last || cpus_on > 1 || most > 1 {
        println!(
            "tee: smp: cpus_on {cpus_on} max_concurrent_calls {most} resumed_on_other_cpu {}",
            RESUMED_ELSEWHERE.load(Ordering::Acquire)
        );
    }
    let (entered, traps, user_by_va, by_asid) = crate::user::counters();
    println!(
        "tee: user: {entered} TA entries, {traps} traps from EL0, TLBI VAE1IS (by ASID) \
         x{user_by_va}, TLBI ASIDE1IS x{by_asid}"
    );
    let (by_va, all, at) = crate::platform::counters();
    println!(
        "tee: check: {} disagreements, {mapped} window pages mapped, {live} table pages, {} \
         calls ({} answered ETHREAD_LIMIT), TLBI VAE1IS x{by_va}, TLBI VMALLE1IS x{all}, AT \
         x{at}, heap in use {} KiB",
        found.len(),
        CALLS.load(Ordering::Relaxed),
        THREAD_LIMITS.load(Ordering::Relaxed),
        crate::heap::allocated() / 1024
    );
    [
        0,
        found.len() as u64,
        mapped,
        live as u64,
        CALLS.load(Ordering::Relaxed),
        0,
        0,
        0,
    ]
}

/// Reads a VA that no table maps: the abort must be caught and reported.
#[cfg(feature = "fault-test")]
fn fault_test(tee: &Tee<FwPlatform>) -> [u64; 8] {
    let va = FAULT_TEST_VA;
    if tee.window().shm().virt_to_phys(VirtAddr(va)).is_some() {
        println!("tee: fault test: {va:#x} is mapped, nothing to show");
        return SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION).a;
    }
    println!("tee: fault test: reading VA {va:#x}, which no translation table maps");
    // SAFETY: deliberately not sound: this read must fault (the VA has no valid descriptor), and
    // the fault ends the run through `tee_exception`. If it were to return a value, the caller
    // reports that as a failure of the test.
    let value = unsafe { (va as *const u64).read_volatile() };
    println!("tee: fault test: the read returned {value:#x}: NOT caught");
    [0, value, 0, 0, 0, 0, 0, 0]
}

/// Names of the 16 vectors, in table order.
const VECTORS: [&str; 16] = [
    "sync (EL1, SP0)",
    "IRQ (EL1, SP0)",
    "FIQ (EL1, SP0)",
    "SError (EL1, SP0)",
    "sync",
    "IRQ",
    "FIQ",
    "SError",
    "sync from EL0",
    "IRQ from EL0",
    "FIQ from EL0",
    "SError from EL0",
    "sync from AArch32 EL0",
    "IRQ from AArch32 EL0",
    "FIQ from AArch32 EL0",
    "SError from AArch32 EL0",
];

/// Describes an exception from its syndrome.
fn describe(esr: u64) -> (&'static str, &'static str, u64) {
    let ec = (esr >> 26) & 0x3f;
    let what = match ec {
        0x25 => "data abort",
        0x24 => "data abort from EL0",
        0x21 => "instruction abort",
        0x20 => "instruction abort from EL0",
        0x22 => "PC alignment fault",
        0x26 => "SP alignment fault",
        0x00 => "unknown instruction",
        0x3c => "BRK",
        _ => "exception",
    };
    let fsc = esr & 0x3f;
    let status = if matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) {
        match fsc >> 2 {
            0b0001 => "translation fault",
            0b0010 => "access flag fault",
            0b0011 => "permission fault",
            0b0000 => "address size fault",
            _ if fsc == 0x21 => "alignment fault",
            _ => "other fault",
        }
    } else {
        ""
    };
    (what, status, fsc & 3)
}

/// Reports an exception taken at S-EL1 and stops the secure world.
#[unsafe(no_mangle)]
extern "C" fn tee_exception(kind: u64, esr: u64, far: u64, elr: u64) -> ! {
    let vector = VECTORS.get(kind as usize).copied().unwrap_or("?");
    let (what, status, level) = describe(esr);
    if kind % 4 == 0 {
        println!(
            "fault: {what} at VA {far:#x} (FAR_EL1), ESR {esr:#x}, ELR {elr:#x}; {status}, \
             level {level} [{vector}]"
        );
    } else {
        println!("fault: unexpected {vector} exception at S-EL1, ELR {elr:#x}, ESR {esr:#x}");
    }
    stop(fid::SECURE_FAULT, [esr, far, elr, kind]);
}

/// Reports a panic of the S-EL1 core to the monitor (called by the image's panic handler).
pub fn report_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("tee: panic: {info}");
    stop(fid::SECURE_PANIC, [0; 4]);
}

/// Hands control to the monitor for good.
fn stop(func: u32, args: [u64; 4]) -> ! {
    // SAFETY: the monitor never returns from SECURE_FAULT / SECURE_PANIC (it ends the run); if
    // it did, the loop after the SMC keeps the core parked.
    unsafe {
        core::arch::asm!(
            "smc #0",
            "0: wfe",
            "b 0b",
            in("x0") u64::from(func),
            in("x1") args[0],
            in("x2") args[1],
            in("x3") args[2],
            in("x4") args[3],
            options(noreturn)
        );
    }
}
