//! The S-EL1 MMU set up for mm's tables: 4 KiB granule, root at level 1 (39-bit VAs, T0SZ 25),
//! TTBR0 only, MAIR as mm's `MemKind`s assume, walks cacheable and inner shareable.

use core::cell::UnsafeCell;
use core::ops::Range;
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

/// The boot tables: a level-1 table whose first entry points at a level-2 table of 2 MiB
/// blocks for the first GiB, and a level-3 table of pages for the 2 MiB where the normal range
/// starts (so that nothing below its start, EL3's state, is mapped). They map the normal range
/// as normal write-back memory and the UART's 2 MiB as device memory, at VA == PA, so that the
/// core can boot with its MMU and caches on: its heap's locks then live in normal memory, as
/// exclusive accesses require, and every table it builds is written through the cache it is
/// walked through.
#[repr(C, align(4096))]
struct BootTables {
    l1: [u64; 512],
    l2: [u64; 512],
    l3: [u64; 512],
}

struct BootTablesCell(UnsafeCell<BootTables>);

// SAFETY: written once, by the boot CPU before its MMU goes on, and never again (the other
// CPUs start with the core's own tables).
unsafe impl Sync for BootTablesCell {}

static BOOT_TABLES: BootTablesCell = BootTablesCell(UnsafeCell::new(BootTables {
    l1: [0; 512],
    l2: [0; 512],
    l3: [0; 512],
}));

/// Descriptor bits: a block (level 2), a table (levels 1, 2), a page (level 3), the access
/// flag, inner shareable, the MAIR index of normal memory (1) and of device memory (0), never
/// executable.
const BLOCK: u64 = 0b01;
const TABLE: u64 = 0b11;
const PAGE: u64 = 0b11;
const AF: u64 = 1 << 10;
const INNER_SHAREABLE: u64 = 3 << 8;
const ATTR_NORMAL: u64 = 1 << 2;
const ATTR_DEVICE: u64 = 0;
const XN: u64 = (1 << 54) | (1 << 53);
const BLOCK_SIZE: u64 = 2 << 20;

/// Invalidates the data cache over `range` by VA (`DC IVAC`, line by line), dropping whatever
/// lines it may hold from before this boot; the range was written only with the MMU off
/// (non-cacheable), so no line of it is dirty with data of this boot.
fn invalidate_dcache(range: Range<u64>) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut at = range.start & !(line - 1);
    while at < range.end {
        // SAFETY: DC IVAC of a line of secure RAM that nothing cached holds valid data of
        // (see above); it only drops cache lines.
        unsafe { core::arch::asm!("dc ivac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: a barrier only orders the maintenance before what follows.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Turns the MMU and caches on with the boot tables (see [`BootTables`]), which map `normal`
/// (2 MiB aligned, in the first GiB) as normal memory and `device` (in the first GiB) as
/// device memory. Before that, invalidates the data cache over `normal` and the instruction
/// cache, as the architecture requires of memory written with the MMU off.
///
/// # Safety
/// Once, on the boot CPU, MMU off. `normal` (page aligned, ending on a 2 MiB boundary) must
/// hold everything the running code uses (its code, stack and data) and `device` the UART;
/// nothing in `normal` may hold data written with the caches on.
pub unsafe fn enable_boot(normal: Range<u64>, device: Range<u64>) {
    let tables = BOOT_TABLES.0.get();
    // SAFETY: the only access to the boot tables, on one CPU, before anything walks them.
    let t = unsafe { &mut *tables };
    let normal_attrs = AF | INNER_SHAREABLE | ATTR_NORMAL;
    // The first 2 MiB of the normal range page by page, from its start; the rest in blocks.
    let first_block = normal.start / BLOCK_SIZE;
    for (entry, page) in t.l3.iter_mut().enumerate() {
        let at = first_block * BLOCK_SIZE + entry as u64 * 4096;
        *page = if normal.contains(&at) {
            at | PAGE | normal_attrs
        } else {
            0
        };
    }
    let blocks = |r: &Range<u64>| (r.start / BLOCK_SIZE)..r.end.div_ceil(BLOCK_SIZE);
    for (entry, block) in t.l2.iter_mut().enumerate() {
        let at = entry as u64;
        *block = if at == first_block {
            (&raw const t.l3) as u64 | TABLE
        } else if blocks(&normal).contains(&at) {
            at * BLOCK_SIZE | BLOCK | normal_attrs
        } else if blocks(&device).contains(&at) {
            at * BLOCK_SIZE | BLOCK | AF | ATTR_DEVICE | XN
        } else {
            0
        };
    }
    t.l1[0] = (&raw const t.l2) as u64 | TABLE;
    invalidate_dcache(normal);
    // SAFETY: the tables identity-map `normal` (the code, stack and data in use) and `device`
    // (the UART), so the instruction after the SCTLR write, and all that follows, translates
    // to where it was; the instruction cache is invalidated first.
    unsafe {
        core::arch::asm!(
            "ic iallu",
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
            ttbr = in(reg) tables as u64,
            sctlr = in(reg) SCTLR_EL1_VALUE,
            options(nostack)
        );
    }
}

/// Moves the running MMU to `root` as TTBR0_EL1 (the core's own tables, after the boot ones).
///
/// # Safety
/// `root` must be the root of tables that map, at VA == PA and with the same attributes as the
/// boot tables, everything the running code uses: its code, stacks, data and heap, and the
/// UART.
pub unsafe fn switch_to(root: u64) {
    // SAFETY: the caller guarantees the new tables map everything in use as the old ones did;
    // their entries were written with the caches on, through which the walker reads them.
    unsafe {
        core::arch::asm!(
            "dsb ish",
            "msr ttbr0_el1, {ttbr}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            ttbr = in(reg) root,
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
