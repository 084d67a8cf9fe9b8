//! The S-EL1 MMU set up for mm's tables: 4 KiB granule, root at level 1 (39-bit VAs, T0SZ 25),
//! TTBR0 only, MAIR as mm's `MemKind`s assume, walks cacheable and inner shareable.

use teeshm_mm::tables::{MAIR_EL1_VALUE, ROOT_LEVEL, VA_SPACE_SIZE};

/// `TCR_EL1.T0SZ` for a 39-bit VA space.
pub const T0SZ: u64 = 25;

const _: () = assert!(ROOT_LEVEL == 1 && VA_SPACE_SIZE == 1 << (64 - T0SZ));

/// T0SZ = 25, IRGN0 = ORGN0 = write-back write-allocate, SH0 = inner shareable, TG0 = 4 KiB,
/// T1SZ = 25 with EPD1 (no TTBR1 walks), IPS = 40 bits.
pub const TCR_EL1_VALUE: u64 =
    T0SZ | (1 << 8) | (1 << 10) | (3 << 12) | (T0SZ << 16) | (1 << 23) | (2 << 32);

/// SCTLR_EL1: the RES1 bits of ARMv8.0, M (MMU), C (data cache), SA (stack alignment
/// check), I (instruction cache). A (alignment check) stays off; WXN is not needed, as no
/// mapping is both writable and executable.
pub const SCTLR_EL1_VALUE: u64 = 0x30d0_0800 | 1 | (1 << 2) | (1 << 3) | (1 << 12);

/// Turns the MMU on with `root` as TTBR0_EL1.
///
/// # Safety
/// `root` must be the root of tables that map, at VA == PA, everything the running code uses:
/// its code, stack, data and heap, and the UART.
pub unsafe fn enable(root: u64) {
    // SAFETY: the caller guarantees the tables identity-map everything in use, so the
    // instruction after the SCTLR write, and all that follows, translates to where it was.
    unsafe {
        core::arch::asm!(
            "dsb ish",
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) MAIR_EL1_VALUE,
            tcr = in(reg) TCR_EL1_VALUE,
            ttbr = in(reg) root,
            sctlr = in(reg) SCTLR_EL1_VALUE,
            options(nostack)
        );
    }
}

/// SCTLR_EL1 as it is now.
pub fn sctlr() -> u64 {
    let v: u64;
    // SAFETY: reading a system register has no side effect.
    unsafe { core::arch::asm!("mrs {}, sctlr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// TTBR0_EL1 as it is now.
pub fn ttbr0() -> u64 {
    let v: u64;
    // SAFETY: reading a system register has no side effect.
    unsafe { core::arch::asm!("mrs {}, ttbr0_el1", out(reg) v, options(nomem, nostack)) };
    v
}
