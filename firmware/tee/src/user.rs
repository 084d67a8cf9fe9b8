//! User mode: trusted applications at S-EL0, each in its own translation regime (its tables,
//! tagged with its ASID), entered from the core and trapping back to it.
//!
//! # Address spaces
//!
//! A TA's tables (built by the core with mm's `TranslationTables::new_user`) use only two
//! level-1 slots of the 39-bit VA space: slot 2, `PRIVATE_BASE` (0x8000_0000: its image, heap
//! and stack), and slot 3, `PARAM_BASE` (0xc000_0000: its memref parameters). The core's own
//! root never uses those two slots (checked at boot by [`init`], which fails the boot if it
//! does). Each CPU has a level-1 table of its own ([`USER_ROOTS`]): at boot every slot of the
//! core's root that holds a static mapping (code, data, stacks, heap, TA RAM, the UART: slot 0)
//! is copied into it. The core makes a TA's space current ([`activate`]); each time the CPU's
//! table is installed for it ([`prepare`]: entering the TA, resuming it after a trap, a copy
//! through its addresses), that TA's slots 2 and 3 are copied into it afresh from the TA's root,
//! since the core may have changed them meanwhile. `TTBR0_EL1` = that table | ASID << 48 while
//! the TA runs at EL0, and while the core copies from or to the TA's memory
//! ([`with_user_space`]); the core's own root (ASID 0) the rest of the time.
//!
//! The window's slot (256) is **not** in the per-CPU tables: the window's tables change under
//! the core's lock on any CPU, and its level-1 entry may even be reclaimed (an empty level-2
//! table freed by a compaction) and its page reused; a copy of that entry kept in a per-CPU
//! table could then be walked into freed memory. The static slots never change after boot
//! (static tables are never unmapped nor reclaimed). So the core's handlers of a TA's traps
//! run on the core's own root, where the window is exactly as the core keeps it, and the
//! per-CPU table is installed only around a copy through a TA address (nothing of the window
//! is touched then) and for EL0. The core's static mappings are global (nG = 0) and the same
//! in both roots, and a TA's are non-global (tagged with its ASID), so switching between the
//! two roots needs no TLB invalidation.
//!
//! # Entering and trapping
//!
//! [`enter_user`] (`tee_enter_user`, assembly) saves the core's callee-saved registers (x19 to
//! x30, d8 to d15, FPCR and FPSR) and a pointer to the entry's context ([`EnterCtx`]: the
//! `UserRegs`, the trap handler, the space) in an *enter frame* on the current stack, installs
//! the TA's `TTBR0_EL1`, and `eret`s to EL0 with `SPSR_EL1` = EL0t with D, A, I and F masked:
//! TAs run with interrupts masked, as the core does, so a TA is never preempted (a normal-world
//! interrupt stays pending until the TA traps and the core returns to the normal world), and
//! EL0 cannot unmask them (`SCTLR_EL1.UMA` = 0). SP_EL1 is then the enter frame: a trap from
//! EL0 (the lower-EL AArch64 synchronous vector, `tee_user_sync`) pushes a *trap frame* below
//! it with x0..x30, SP_EL0, ELR_EL1, ESR_EL1, FAR_EL1, SPSR_EL1 (for the TA's condition
//! flags), TPIDR_EL0, FPCR, FPSR and q0..q31, and calls
//! [`tee_user_trap`], which moves TTBR0 back to the core's root, copies the registers into the
//! entry's `UserRegs`, classifies the exception ([`classify`]) and calls the handler. `Resume`:
//! the space is made current again (the handler may have entered another TA, or mapped pages
//! into this one's slots), the `UserRegs` as the handler left them go back into the frame and
//! the TA's own FP/SIMD registers are restored with them; `Exit`: the trap frame is dropped,
//! the enter frame restored, and `tee_enter_user` returns to [`enter_user`].
//!
//! A handler may enter another TA (a TA invoking a TA): its enter frame goes below the first
//! TA's trap frame, the second TA's traps find their own context in it, and its `Exit` returns
//! to the first TA's handler, whose `Resume` goes back to the first TA. Entries nest at most
//! [`MAX_DEPTH`] deep on one CPU (each costs the core's handler frames on the CPU's 64 KiB
//! stack).
//!
//! A TA's FP/SIMD registers, condition flags and `TPIDR_EL0` are its own: zeroed when it is
//! entered (nothing of the core or of another TA shows through) and saved and restored around
//! every trap. (The core's own `TPIDR_EL0` is not used: nothing at S-EL1 reads it.)

use crate::layout;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use teeshm_abi::utee::layout as user_layout;
use teeshm_core::platform::{
    TrapAction, UserAccess, UserRegs, UserRoot, UserTrap, UserTrapHandler,
};
use teeshm_fw_common::cpu::{self, MAX_CPUS};
use teeshm_mm::PhysAddr;
use teeshm_platform::TlbMaintenance;

/// Entries of a level-1 table (4 KiB granule, 39-bit VAs).
const ENTRIES: usize = 512;
/// Bytes one level-1 entry maps.
const SLOT_SIZE: u64 = 1 << 30;
/// The level-1 slots of a TA's space: its private region and its parameter region.
pub const PRIVATE_SLOT: usize = (user_layout::PRIVATE_BASE / SLOT_SIZE) as usize;
/// See [`PRIVATE_SLOT`].
pub const PARAM_SLOT: usize = (user_layout::PARAM_BASE / SLOT_SIZE) as usize;
const _: () = assert!(
    PRIVATE_SLOT == 2
        && PARAM_SLOT == 3
        && user_layout::PRIVATE_BASE % SLOT_SIZE == 0
        && user_layout::PRIVATE_SIZE == SLOT_SIZE
        && user_layout::PARAM_BASE % SLOT_SIZE == 0
        && user_layout::PARAM_SIZE == SLOT_SIZE
);
/// The first and the end of the user VAs (slots 2 and 3).
pub const USER_START: u64 = user_layout::PRIVATE_BASE;
/// See [`USER_START`].
pub const USER_END: u64 = user_layout::PARAM_BASE + user_layout::PARAM_SIZE;

/// Most TA entries nested on one CPU (the core itself allows fewer: `ta::run::MAX_DEPTH`).
pub const MAX_DEPTH: usize = 8;

/// `SPSR_EL1` of a TA: EL0t (AArch64, SP_EL0), D, A, I and F masked.
const SPSR_EL0T_MASKED: u64 = 0b1111 << 6;

/// Descriptor bits [1:0] of a level-1 table descriptor (invalid entries are 0b00 or 0b10).
const TABLE_DESCRIPTOR: u64 = 0b11;

/// Above this many pages a user invalidation drops the whole ASID (`TLBI ASIDE1IS`) instead of
/// page by page: it costs only this TA's entries (the core's global ones and other TAs' stay,
/// unlike the core's `VMALLE1IS`, hence a lower limit than `FwTlb`'s 256), and a TA's space is
/// small, while each `TLBI VAE1IS` is a broadcast every CPU must serve.
pub const USER_TLBI_PAGE_LIMIT: u64 = 64;

/// A level-1 table, as the walker reads it (plain 64-bit stores, normal cacheable memory).
#[repr(C, align(4096))]
struct L1Table([AtomicU64; ENTRIES]);

/// Each CPU's level-1 table for user mode.
static USER_ROOTS: [L1Table; MAX_CPUS] =
    [const { L1Table([const { AtomicU64::new(0) }; ENTRIES]) }; MAX_CPUS];

/// `TTBR0_EL1` of the core: its root, ASID 0 (set once by [`init`]).
static CORE_TTBR0: AtomicU64 = AtomicU64::new(0);

/// Each CPU's current user space: its root table | ASID (the root is page aligned and an ASID
/// below 256), 0 for none. Only its own CPU reads or writes an entry.
static CURRENT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Each CPU's TA entries in progress (nested).
static DEPTH: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

static ENTERED: AtomicU64 = AtomicU64::new(0);
static TRAPS: AtomicU64 = AtomicU64::new(0);
static TLBI_BY_VA: AtomicU64 = AtomicU64::new(0);
static TLBI_ASID: AtomicU64 = AtomicU64::new(0);

/// Counters: `(TA entries, traps from EL0, TLBI VAE1IS by ASID issued, TLBI ASIDE1IS
/// issued)`.
pub fn counters() -> (u64, u64, u64, u64) {
    (
        ENTERED.load(Ordering::Relaxed),
        TRAPS.load(Ordering::Relaxed),
        TLBI_BY_VA.load(Ordering::Relaxed),
        TLBI_ASID.load(Ordering::Relaxed),
    )
}

/// The level-1 slots the window spans (the core's dynamic part, never copied).
fn window_slots() -> core::ops::RangeInclusive<usize> {
    let first = crate::WINDOW_BASE / SLOT_SIZE;
    let last = (crate::WINDOW_BASE + crate::WINDOW_SIZE - 1) / SLOT_SIZE;
    first as usize..=last as usize
}

/// Entry `slot` of the level-1 table at `table` (a page of the heap, identity-mapped).
fn read_entry(table: u64, slot: usize) -> u64 {
    let at = table + (slot as u64) * 8;
    // SAFETY: `table` is a translation-table page the core allocated from the heap (checked
    // by the callers: page aligned, inside the heap), which the core's map keeps at VA == PA;
    // `slot` < 512 keeps the read inside that page. A volatile read of an aligned u64 there
    // is a plain load; the entry may be rewritten by its owner meanwhile, which only gives the
    // old or the new value.
    unsafe { (at as *const u64).read_volatile() }
}

/// Whether `table` may be a translation-table page of the core (page aligned, in the heap).
fn is_table_page(table: u64) -> bool {
    table % 4096 == 0 && table != 0 && layout::heap().contains(&table)
}

/// Prepares user mode once, on the boot CPU, after the MMU runs on the core's root `core_root`
/// (TTBR0_EL1, ASID 0): copies the core's static slots into every CPU's user table. Returns
/// how many slots were copied.
///
/// # Errors
/// The core maps something in the TAs' slots 2 or 3 (they must be the TAs' alone), or its
/// root is not a table page of the heap.
pub fn init(core_root: u64) -> Result<usize, &'static str> {
    if !is_table_page(core_root) {
        return Err("the core's root table is not a page of the heap");
    }
    for slot in [PRIVATE_SLOT, PARAM_SLOT] {
        if read_entry(core_root, slot) != 0 {
            return Err("the core maps something in the TAs' level-1 slots 2 and 3");
        }
    }
    let mut copied = 0;
    for slot in 0..ENTRIES {
        let entry = if window_slots().contains(&slot) {
            0
        } else {
            read_entry(core_root, slot)
        };
        if entry != 0 {
            copied += 1;
        }
        for table in &USER_ROOTS {
            if let Some(e) = table.0.get(slot) {
                e.store(entry, Ordering::Relaxed);
            }
        }
    }
    CORE_TTBR0.store(core_root, Ordering::Release);
    barrier_for_table_writes();
    Ok(copied)
}

/// `dsb ishst`: table writes complete before any walk that follows.
fn barrier_for_table_writes() {
    // SAFETY: a barrier only orders memory accesses.
    unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// Sets `TTBR0_EL1` (root | ASID << 48) and synchronises.
fn set_ttbr0(value: u64) {
    // SAFETY: every TTBR0 value this module installs is the core's root or a CPU's user table,
    // which map the code, stacks, data, heap and UART the running code uses identically (the
    // same static level-1 entries, global mappings), so execution goes on as before; only the
    // TAs' slots 2 and 3 (and the window's, on the core's root) differ. Global entries match
    // every ASID and are the same under both roots, and the TAs' are tagged with their ASIDs,
    // so no TLB invalidation is needed (the asm is a compiler barrier: table writes before it
    // are emitted before it).
    unsafe {
        core::arch::asm!(
            "msr ttbr0_el1, {}",
            "isb",
            in(reg) value,
            options(nostack, preserves_flags)
        )
    };
}

/// This CPU's user table | `asid` << 48.
fn user_ttbr(cpu: usize, asid: u16) -> u64 {
    let table = USER_ROOTS.get(cpu).map_or(0, |t| (&raw const *t) as u64);
    table | (u64::from(asid) << 48)
}

/// Whether `space` can be made current: an ASID of a TA (1..=255 with 8-bit ASIDs;
/// `TCR_EL1.AS` = 0) and a root that is a table page of the heap.
fn valid(space: &UserRoot) -> bool {
    (1..=255).contains(&space.asid) && is_table_page(space.table.get())
}

/// Makes `space` this CPU's current user space, or none (`UserMode::activate_user`). An
/// invalid space (see [`valid`]) is none. TTBR0 stays the core's root: the space's slots are
/// written into the CPU's table each time it is installed ([`prepare`]).
pub fn activate(space: Option<UserRoot>) {
    let cpu = cpu::this();
    let Some(current) = CURRENT.get(cpu) else {
        return;
    };
    let space = space.filter(valid);
    current.store(
        space.map_or(0, |s| s.table.get() | u64::from(s.asid)),
        Ordering::Relaxed,
    );
    if space.is_none()
        && let Some(table) = USER_ROOTS.get(cpu)
    {
        for slot in [PRIVATE_SLOT, PARAM_SLOT] {
            if let Some(e) = table.0.get(slot) {
                e.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Prepares this CPU's table for the current user space: its slots 2 and 3 fresh from the
/// space's root (the core may have changed them since it made the space current: a level-2
/// table made for the first parameter, or reclaimed) and returns the TTBR0 to install; `None`
/// if no space is current. Called only while TTBR0 is the core's root, so the CPU's table is
/// never changed while it is walked.
fn prepare(cpu: usize) -> Option<u64> {
    let current = CURRENT.get(cpu)?.load(Ordering::Relaxed);
    if current == 0 {
        return None;
    }
    let (root, asid) = (current & !0xfff, (current & 0xfff) as u16);
    let table = USER_ROOTS.get(cpu)?;
    for slot in [PRIVATE_SLOT, PARAM_SLOT] {
        // Only a table descriptor (or nothing) is taken from the TA's root: mm builds a TA's
        // tables page by page, never with 1 GiB blocks.
        let entry = Some(read_entry(root, slot))
            .filter(|e| e & TABLE_DESCRIPTOR == TABLE_DESCRIPTOR)
            .unwrap_or(0);
        table.0.get(slot)?.store(entry, Ordering::Relaxed);
    }
    barrier_for_table_writes();
    Some(user_ttbr(cpu, asid))
}

/// Runs `f` with this CPU's current user space installed (TTBR0 = its user table with the
/// space's ASID), then the core's root again; `None` if no space is current. `f` must touch
/// nothing of the window (it is not mapped meanwhile): a copy between a TA address and the
/// core's own memory.
pub fn with_user_space<R>(f: impl FnOnce() -> R) -> Option<R> {
    let ttbr = prepare(cpu::this())?;
    set_ttbr0(ttbr);
    let result = f();
    set_ttbr0(CORE_TTBR0.load(Ordering::Relaxed));
    Some(result)
}

/// A TA's registers at a trap, as `tee_user_sync` saves them (offsets used by the assembly):
/// besides what `UserRegs` has, its syndrome, its FP/SIMD state, its condition flags (from
/// `SPSR_EL1`: a faulting access that the core resolves is retried, and the flags set before it
/// must still be there) and `TPIDR_EL0` (which EL0 may write: each TA keeps its own).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct TrapFrame {
    x: [u64; 31],
    sp: u64,
    pc: u64,
    esr: u64,
    far: u64,
    fpcr: u64,
    fpsr: u64,
    spsr: u64,
    tpidr: u64,
    _pad: u64,
    q: [u128; 32],
}

const F_SP: usize = core::mem::offset_of!(TrapFrame, sp);
const F_ESR: usize = core::mem::offset_of!(TrapFrame, esr);
const F_FPCR: usize = core::mem::offset_of!(TrapFrame, fpcr);
const F_SPSR: usize = core::mem::offset_of!(TrapFrame, spsr);
const F_Q: usize = core::mem::offset_of!(TrapFrame, q);
const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
// The assembly stores x0..x30 from offset 0, then SP_EL0, ELR (pc), ESR, FAR, FPCR, FPSR in
// pairs; the q registers in pairs at 16-byte aligned offsets; the frame keeps SP aligned.
const _: () = assert!(
    core::mem::offset_of!(TrapFrame, x) == 0
        && F_SP == 0xf8
        && core::mem::offset_of!(TrapFrame, pc) == F_SP + 8
        && core::mem::offset_of!(TrapFrame, far) == F_ESR + 8
        && core::mem::offset_of!(TrapFrame, fpsr) == F_FPCR + 8
        && core::mem::offset_of!(TrapFrame, tpidr) == F_SPSR + 8
        && F_Q % 16 == 0
        && F_Q + 0x1f0 <= 1008
        && FRAME_SIZE % 16 == 0
);

/// Bytes of the enter frame `tee_enter_user` pushes, and where in it the context pointer is.
const ENTER_SIZE: usize = 0xc0;
const ENTER_CTX: usize = 0xb0;

impl TrapFrame {
    /// The frame a TA starts from: `regs`, FP/SIMD registers zeroed, default FPCR.
    fn start(regs: &UserRegs) -> Self {
        TrapFrame {
            x: regs.x,
            sp: regs.sp,
            pc: regs.pc,
            esr: 0,
            far: 0,
            fpcr: 0,
            fpsr: 0,
            spsr: 0,
            tpidr: 0,
            _pad: 0,
            q: [0; 32],
        }
    }
}

/// One entry of a TA: what its traps need (found through the enter frame).
struct EnterCtx<'a> {
    regs: *mut UserRegs,
    handler: *mut (dyn UserTrapHandler + 'a),
    space: UserRoot,
}

/// What the trap from EL0 with syndrome `esr` at `far` is, for the core.
pub fn classify(esr: u64, far: u64) -> UserTrap {
    let ec = (esr >> 26) & 0x3f;
    let iss = esr & 0x1ff_ffff;
    // Translation (0b0001xx), access flag (0b0010xx) and permission (0b0011xx) faults are
    // the aborts the core resolves or kills for; alignment, external aborts and the rest are
    // "other".
    let fault = matches!((iss & 0x3f) >> 2, 0b0001..=0b0011);
    match ec {
        0x15 if iss & 0xffff == 0 => UserTrap::Syscall,
        0x24 if fault => UserTrap::Abort {
            far,
            access: if esr & (1 << 6) != 0 {
                UserAccess::Write
            } else {
                UserAccess::Read
            },
        },
        0x20 if fault => UserTrap::Abort {
            far,
            access: UserAccess::Execute,
        },
        _ => UserTrap::Other { esr },
    }
}

core::arch::global_asm!(
    r#"
    .section .text.tee_user, "ax"

    // x0 = a trap frame: loads the TA's SP_EL0, ELR_EL1, SPSR_EL1 (EL0t, DAIF masked, the TA's
    // condition flags NZCV and nothing else of the saved SPSR), TPIDR_EL0, FPCR, FPSR,
    // q0..q31, x0..x30 from it and returns to EL0. SP_EL1 must already be where the next trap
    // may push its frame.
    .macro eret_to_user
    ldp     x1, x2, [x0, #{f_sp}]
    msr     sp_el0, x1
    msr     elr_el1, x2
    ldp     x1, x2, [x0, #{f_spsr}]
    and     x1, x1, #0xf0000000
    orr     x1, x1, #{spsr}
    msr     spsr_el1, x1
    msr     tpidr_el0, x2
    ldp     x1, x2, [x0, #{f_fpcr}]
    msr     fpcr, x1
    msr     fpsr, x2
    ldp     q0, q1, [x0, #{f_q} + 0x000]
    ldp     q2, q3, [x0, #{f_q} + 0x020]
    ldp     q4, q5, [x0, #{f_q} + 0x040]
    ldp     q6, q7, [x0, #{f_q} + 0x060]
    ldp     q8, q9, [x0, #{f_q} + 0x080]
    ldp     q10, q11, [x0, #{f_q} + 0x0a0]
    ldp     q12, q13, [x0, #{f_q} + 0x0c0]
    ldp     q14, q15, [x0, #{f_q} + 0x0e0]
    ldp     q16, q17, [x0, #{f_q} + 0x100]
    ldp     q18, q19, [x0, #{f_q} + 0x120]
    ldp     q20, q21, [x0, #{f_q} + 0x140]
    ldp     q22, q23, [x0, #{f_q} + 0x160]
    ldp     q24, q25, [x0, #{f_q} + 0x180]
    ldp     q26, q27, [x0, #{f_q} + 0x1a0]
    ldp     q28, q29, [x0, #{f_q} + 0x1c0]
    ldp     q30, q31, [x0, #{f_q} + 0x1e0]
    ldr     x1, [x0, #8]
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldr     x0, [x0, #0]
    eret
    .endm

    // tee_enter_user(ctx: x0, start: x1 = the TA's first frame, ttbr: x2). Returns when the
    // core's handler answers Exit to one of the TA's traps.
    .global tee_enter_user
    .type tee_enter_user, %function
tee_enter_user:
    sub     sp, sp, #{enter_size}
    stp     x19, x20, [sp, #0x00]
    stp     x21, x22, [sp, #0x10]
    stp     x23, x24, [sp, #0x20]
    stp     x25, x26, [sp, #0x30]
    stp     x27, x28, [sp, #0x40]
    stp     x29, x30, [sp, #0x50]
    stp     d8, d9, [sp, #0x60]
    stp     d10, d11, [sp, #0x70]
    stp     d12, d13, [sp, #0x80]
    stp     d14, d15, [sp, #0x90]
    mrs     x9, fpcr
    mrs     x10, fpsr
    stp     x9, x10, [sp, #0xa0]
    str     x0, [sp, #{enter_ctx}]
    msr     ttbr0_el1, x2
    isb
    mov     x0, x1
    eret_to_user

    // The lower-EL AArch64 synchronous vector (VBAR_EL1 + 0x400 branches here). SP is SP_EL1,
    // as the last eret to EL0 left it: the entry's enter frame.
    .global tee_user_sync
    .type tee_user_sync, %function
tee_user_sync:
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x0, sp_el0
    stp     x30, x0, [sp, #240]
    mrs     x0, elr_el1
    mrs     x1, esr_el1
    stp     x0, x1, [sp, #{f_sp} + 8]
    mrs     x0, far_el1
    str     x0, [sp, #{f_esr} + 8]
    mrs     x0, fpcr
    mrs     x1, fpsr
    stp     x0, x1, [sp, #{f_fpcr}]
    mrs     x0, spsr_el1
    mrs     x1, tpidr_el0
    stp     x0, x1, [sp, #{f_spsr}]
    stp     q0, q1, [sp, #{f_q} + 0x000]
    stp     q2, q3, [sp, #{f_q} + 0x020]
    stp     q4, q5, [sp, #{f_q} + 0x040]
    stp     q6, q7, [sp, #{f_q} + 0x060]
    stp     q8, q9, [sp, #{f_q} + 0x080]
    stp     q10, q11, [sp, #{f_q} + 0x0a0]
    stp     q12, q13, [sp, #{f_q} + 0x0c0]
    stp     q14, q15, [sp, #{f_q} + 0x0e0]
    stp     q16, q17, [sp, #{f_q} + 0x100]
    stp     q18, q19, [sp, #{f_q} + 0x120]
    stp     q20, q21, [sp, #{f_q} + 0x140]
    stp     q22, q23, [sp, #{f_q} + 0x160]
    stp     q24, q25, [sp, #{f_q} + 0x180]
    stp     q26, q27, [sp, #{f_q} + 0x1a0]
    stp     q28, q29, [sp, #{f_q} + 0x1c0]
    stp     q30, q31, [sp, #{f_q} + 0x1e0]
    // The core's FPCR for its own code (the TA's is in the frame).
    ldr     x0, [sp, #{frame_size} + 0xa0]
    msr     fpcr, x0
    mov     x0, sp
    ldr     x1, [sp, #{frame_size} + {enter_ctx}]
    bl      tee_user_trap
    cbz     x0, 1f
    // Resume: the TA's TTBR0, then its registers from the frame (which the trap handler
    // updated); SP_EL1 goes back to the enter frame for the next trap.
    msr     ttbr0_el1, x0
    isb
    mov     x0, sp
    add     sp, sp, #{frame_size}
    eret_to_user
1:  // Exit: drop the trap frame, restore the enter frame, return from tee_enter_user.
    add     sp, sp, #{frame_size}
    ldp     x9, x10, [sp, #0xa0]
    msr     fpcr, x9
    msr     fpsr, x10
    ldp     d8, d9, [sp, #0x60]
    ldp     d10, d11, [sp, #0x70]
    ldp     d12, d13, [sp, #0x80]
    ldp     d14, d15, [sp, #0x90]
    ldp     x19, x20, [sp, #0x00]
    ldp     x21, x22, [sp, #0x10]
    ldp     x23, x24, [sp, #0x20]
    ldp     x25, x26, [sp, #0x30]
    ldp     x27, x28, [sp, #0x40]
    ldp     x29, x30, [sp, #0x50]
    add     sp, sp, #{enter_size}
    ret
"#,
    f_sp = const F_SP,
    f_esr = const F_ESR,
    f_fpcr = const F_FPCR,
    f_spsr = const F_SPSR,
    f_q = const F_Q,
    frame_size = const FRAME_SIZE,
    enter_size = const ENTER_SIZE,
    enter_ctx = const ENTER_CTX,
    spsr = const SPSR_EL0T_MASKED,
);

unsafe extern "C" {
    /// Saves the core's callee-saved state and `ctx` in an enter frame, installs `ttbr` and
    /// enters EL0 with the registers of `start`; returns when a trap's handler answers Exit.
    fn tee_enter_user(ctx: *mut u8, start: *const TrapFrame, ttbr: u64);
}

/// Runs the TA of `space` from `regs` until `handler` answers [`TrapAction::Exit`]
/// (`UserMode::enter_user`). `space` is made current and stays current afterwards. A space that
/// cannot be made current (see [`valid`]) or an entry nested deeper than [`MAX_DEPTH`] is not
/// entered: the handler gets one `UserTrap::Other { esr: 0 }` and `enter_user` returns.
pub fn enter_user(space: UserRoot, regs: &mut UserRegs, handler: &mut dyn UserTrapHandler) {
    let cpu = cpu::this();
    let Some(depth) = DEPTH.get(cpu) else {
        return;
    };
    activate(Some(space));
    let ttbr = prepare(cpu).filter(|_| depth.load(Ordering::Relaxed) < MAX_DEPTH);
    let Some(ttbr) = ttbr else {
        let _ = handler.trap(regs, UserTrap::Other { esr: 0 });
        return;
    };
    depth.fetch_add(1, Ordering::Relaxed);
    ENTERED.fetch_add(1, Ordering::Relaxed);
    let start = TrapFrame::start(regs);
    let mut ctx = EnterCtx {
        regs: regs as *mut UserRegs,
        handler: handler as *mut (dyn UserTrapHandler + '_),
        space,
    };
    // SAFETY: `tee_enter_user` keeps the callee-saved registers, FPCR/FPSR and SP of this
    // frame in its enter frame and returns here with them (through `tee_user_sync` on Exit),
    // so to this function it is an ordinary `extern "C"` call. Until it returns, `ctx` (and
    // through it `regs` and `handler`, not used here meanwhile) is reached only by
    // `tee_user_trap` on this CPU, one trap at a time. The TA runs at EL0 under its own
    // translation (the CPU's user table with its ASID), which maps nothing of the core's for
    // EL0, with interrupts masked; it can only trap back.
    unsafe { tee_enter_user((&raw mut ctx).cast(), &raw const start, ttbr) };
    depth.fetch_sub(1, Ordering::Relaxed);
}

/// The Rust side of a trap from EL0 (called by `tee_user_sync` on the core's stack, below the
/// trap frame `frame`; `ctx` is the entry's [`EnterCtx`]). Returns the TTBR0 to resume the TA
/// with, or 0 when the handler answered Exit.
#[unsafe(no_mangle)]
extern "C" fn tee_user_trap(frame: *mut TrapFrame, ctx: *mut u8) -> u64 {
    // The handler runs on the core's root, where the window is as the core keeps it.
    set_ttbr0(CORE_TTBR0.load(Ordering::Relaxed));
    TRAPS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `frame` is the trap frame `tee_user_sync` just pushed on this stack, used by no
    // one else until this function returns; `ctx` is the `EnterCtx` that `enter_user` put in
    // the enter frame above it, alive in `enter_user`'s frame (which is still running: it is
    // waiting in `tee_enter_user`), and reached by nothing else meanwhile.
    let (frame, ctx) = unsafe { (&mut *frame, &mut *ctx.cast::<EnterCtx<'_>>()) };
    // SAFETY: `regs` and `handler` are the `&mut` borrows `enter_user` was given, which it does
    // not use while the TA runs; nested entries have contexts of their own.
    let (regs, handler) = unsafe { (&mut *ctx.regs, &mut *ctx.handler) };
    regs.x = frame.x;
    regs.sp = frame.sp;
    regs.pc = frame.pc;
    let trap = classify(frame.esr, frame.far);
    match handler.trap(regs, trap) {
        TrapAction::Exit => 0,
        TrapAction::Resume => {
            // The handler may have entered another TA (making it current) or mapped pages in
            // this one's slots: this TA's slots again, from its root. (It cannot fail: the
            // space was valid when entered; 0 would end the entry as an Exit.)
            activate(Some(ctx.space));
            frame.x = regs.x;
            frame.sp = regs.sp;
            frame.pc = regs.pc;
            prepare(cpu::this()).unwrap_or(0)
        }
    }
}

/// The TLB maintenance of one TA's tables: by its ASID, broadcast to the inner-shareable
/// domain.
#[derive(Debug, Clone, Copy)]
pub struct FwUserTlb {
    asid: u16,
}

impl FwUserTlb {
    /// The maintenance of the space tagged `asid`.
    pub const fn new(asid: u16) -> Self {
        Self { asid }
    }

    fn asid_operand(&self) -> u64 {
        u64::from(self.asid) << 48
    }
}

impl TlbMaintenance for FwUserTlb {
    fn invalidate_pages(&mut self, va: u64, pages: u64) {
        if pages > USER_TLBI_PAGE_LIMIT {
            self.invalidate_all();
            return;
        }
        crate::platform::invalidate_by_va(self.asid, va, pages);
        TLBI_BY_VA.fetch_add(pages, Ordering::Relaxed);
    }

    fn invalidate_all(&mut self) {
        // SAFETY: as for `invalidate_pages`, for every entry tagged with this ASID (the core's
        // global entries and other TAs' are left alone).
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi aside1is, {}",
                "dsb ish",
                "isb",
                in(reg) self.asid_operand(),
                options(nostack, preserves_flags)
            );
        }
        TLBI_ASID.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pages of TA instances: 4 KiB blocks of the secure heap, at VA == PA (the core charges
/// each to its guest's heap quota, so the heap budget covers them).
pub struct HeapPages;

const TA_PAGE: core::alloc::Layout = match core::alloc::Layout::from_size_align(4096, 4096) {
    Ok(layout) => layout,
    Err(_) => panic!("4 KiB pages"),
};

impl teeshm_core::platform::TaPages for HeapPages {
    fn alloc(&self) -> Option<PhysAddr> {
        // SAFETY: a non-zero-sized layout; the block is the core's until `free`.
        let page = unsafe { alloc::alloc::alloc(TA_PAGE) };
        (!page.is_null()).then(|| PhysAddr(page as u64))
    }

    fn free(&self, page: PhysAddr) {
        if !in_heap(page.get(), 4096) || page.get() % 4096 != 0 {
            return;
        }
        // SAFETY: the core gives back exactly the pages `alloc` gave it, once each (its
        // `Held` drains them), with the layout they were allocated with.
        unsafe { alloc::alloc::dealloc(page.get() as *mut u8, TA_PAGE) };
    }
}

/// Whether `pa..pa + len` lies in the heap.
fn in_heap(pa: u64, len: u64) -> bool {
    let heap = layout::heap();
    pa >= heap.start && pa.checked_add(len).is_some_and(|end| end <= heap.end)
}

/// Copies `data` into a TA page at physical address `pa` (`UserMode::write_ta_ram`): the heap
/// is mapped at S-EL1 at VA == PA as secure RAM, so this is a plain copy; then the data cache
/// is cleaned to the point of unification and the instruction cache invalidated, since the
/// bytes may be a TA's code that EL0 fetches next (and the pages may have held another TA's).
///
/// # Errors
/// `None` if `pa..pa + len` is not inside the heap.
pub fn write_ta_ram(pa: u64, data: &[u8]) -> Option<()> {
    let end = pa.checked_add(data.len() as u64)?;
    if !in_heap(pa, data.len() as u64) {
        return None;
    }
    if data.is_empty() {
        return Some(());
    }
    // SAFETY: `pa..end` lies in the heap, which the core's map keeps at VA == PA, writable at
    // S-EL1; the core writes only into pages `HeapPages::alloc` gave it for an instance that no
    // TA can reach yet (it is being made), so no Rust reference and no TA reads them meanwhile.
    // `data` is the core's own buffer, another heap block.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), pa as *mut u8, data.len()) };
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut at = pa & !(line - 1);
    while at < end {
        // SAFETY: cleaning a line of mapped secure RAM to the point of unification writes
        // back what this CPU wrote; nothing else changes.
        unsafe { core::arch::asm!("dc cvau, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: barriers and an instruction-cache invalidation: instruction fetches after it see
    // the bytes just written; no data changes.
    unsafe {
        core::arch::asm!(
            "dsb ish",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
    Some(())
}
