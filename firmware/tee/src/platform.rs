//! The core's platform on the machine: memory access through window VAs and TA VAs that the
//! MMU translates, device reads, user mode ([`crate::user`]), and TLB maintenance with `TLBI`.
//!
//! The `&dyn Translate` the core passes is not used: the hardware walks the tables. Before any
//! byte is copied, every page of the access is translated by the MMU itself, so an access
//! through a missing mapping is an [`AccessFault`] answered to the caller, not an abort, and
//! the copy touches nothing when any page fails. An access is either
//!
//! - inside the SHM window: every page translated with `AT S1E1R` / `AT S1E1W` and required to
//!   be a non-secure (NS=1) mapping: the core reaches normal-world memory only that way, and
//!   never reads secure memory through this path; or
//! - inside a TA's slots (`0x8000_0000..0x1_0000_0000`): the CPU's current user space (the
//!   core's `activate_user`) is installed for the copy, and every page translated with
//!   `AT S1E0R` / `AT S1E0W`, as EL0 would: the core acting for a TA reaches what the TA may
//!   reach (its own secure pages, the memrefs mapped for it), with the TA's permissions.
//!
//! Anything else is refused.

use crate::user::{self, FwUserTlb};
use core::sync::atomic::{AtomicU64, Ordering};
use teeshm_core::platform::{UserMode, UserRegs, UserRoot, UserTrapHandler};
use teeshm_core::{AccessFault, Platform, Translate};
use teeshm_fw_common::{println, volatile};
use teeshm_mm::{PAGE_SIZE, PhysAddr, VirtAddr};
use teeshm_platform::TlbMaintenance;

/// `PAR_EL1.F`: the translation failed.
const PAR_F: u64 = 1;
/// `PAR_EL1.NS`: the output address is in the non-secure PA space.
const PAR_NS: u64 = 1 << 9;
/// `PAR_EL1.FST` (bits [6:1] when F is set): its top four bits 0b0011 are a permission fault.
const PAR_FST_PERMISSION: u64 = 0b0011;
/// Above this many pages one unmap invalidates the whole TLB instead of page by page.
const TLBI_PAGE_LIMIT: u64 = 256;

static TLBI_BY_VA: AtomicU64 = AtomicU64::new(0);
static TLBI_ALL: AtomicU64 = AtomicU64::new(0);
static AT_CHECKS: AtomicU64 = AtomicU64::new(0);

/// Counters of what the platform did: `(TLBI VAE1IS issued, TLBI VMALLE1IS issued, AT
/// translations)`.
pub fn counters() -> (u64, u64, u64) {
    (
        TLBI_BY_VA.load(Ordering::Relaxed),
        TLBI_ALL.load(Ordering::Relaxed),
        AT_CHECKS.load(Ordering::Relaxed),
    )
}

/// The core's platform on QEMU.
#[derive(Debug, Clone, Copy)]
pub struct FwPlatform {
    window_start: u64,
    window_end: u64,
}

impl FwPlatform {
    /// A platform whose accesses must fall inside `[window_start, window_end)`.
    pub const fn new(window_start: u64, window_end: u64) -> Self {
        Self {
            window_start,
            window_end,
        }
    }

    /// Checks that `len` bytes at `va` lie in the window and that the MMU maps every page of
    /// them as non-secure memory, for reading (or writing).
    fn check(&self, va: VirtAddr, len: usize, write: bool) -> Result<(), AccessFault> {
        let start = va.get();
        let end = start
            .checked_add(len as u64)
            .ok_or(AccessFault::Wrap(start))?;
        if len == 0 {
            return Ok(());
        }
        if start < self.window_start || end > self.window_end {
            return Err(AccessFault::Permission(start));
        }
        // Table updates the core just made must be visible to the walker.
        barrier_for_new_entries();
        let mut page = start & !(PAGE_SIZE - 1);
        while page < end {
            let at = page.max(start);
            let par = translate(page, write);
            AT_CHECKS.fetch_add(1, Ordering::Relaxed);
            if par & PAR_F != 0 {
                return Err(AccessFault::NotMapped(at));
            }
            if par & PAR_NS == 0 {
                return Err(AccessFault::Permission(at));
            }
            page += PAGE_SIZE;
        }
        Ok(())
    }
}

/// Whether `len` bytes at `va` start in the TAs' slots (then they must end there too).
fn is_user(va: VirtAddr) -> bool {
    (user::USER_START..user::USER_END).contains(&va.get())
}

/// Checks that `len` bytes at `va` lie in the TAs' slots and that the current user space maps
/// every page of them for EL0, for reading (or writing). Runs with that space installed.
fn check_user(va: VirtAddr, len: usize, write: bool) -> Result<(), AccessFault> {
    let start = va.get();
    let end = start
        .checked_add(len as u64)
        .ok_or(AccessFault::Wrap(start))?;
    if end > user::USER_END {
        return Err(AccessFault::Permission(start));
    }
    // Entries the core just wrote in the TA's tables must be visible to the walker.
    barrier_for_new_entries();
    let mut page = start & !(PAGE_SIZE - 1);
    while page < end {
        let at = page.max(start);
        let par = translate_el0(page, write);
        AT_CHECKS.fetch_add(1, Ordering::Relaxed);
        if par & PAR_F != 0 {
            return Err(if (par >> 3) & 0xf == PAR_FST_PERMISSION {
                AccessFault::Permission(at)
            } else {
                AccessFault::NotMapped(at)
            });
        }
        page += PAGE_SIZE;
    }
    Ok(())
}

impl Platform for FwPlatform {
    type Tlb = FwTlb;

    fn read(&self, _map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault> {
        if is_user(va) {
            // The copy runs with the TA's space installed: `buf` is the core's (its stack or
            // heap, mapped the same there), never the window's.
            return user::with_user_space(|| {
                check_user(va, buf.len(), false)?;
                // SAFETY: `check_user` found every page of the range mapped readable for the
                // TA now installed; TA memory holds no Rust object.
                unsafe { volatile::read_bytes(buf, va.get() as usize) };
                Ok(())
            })
            .unwrap_or(Err(AccessFault::NotMapped(va.get())));
        }
        self.check(va, buf.len(), false)?;
        // SAFETY: `check` found every page of the range mapped readable (normal memory, NS=1)
        // right now; nothing of Rust's lives in the window. Normal-world memory can change
        // under the copy, hence the volatile copy, each byte read once.
        unsafe { volatile::read_bytes(buf, va.get() as usize) };
        Ok(())
    }

    fn write(&self, _map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault> {
        if is_user(va) {
            return user::with_user_space(|| {
                check_user(va, data.len(), true)?;
                // SAFETY: `check_user` found every page of the range mapped writable for the
                // TA now installed; TA memory holds no Rust object.
                unsafe { volatile::write_bytes(va.get() as usize, data) };
                Ok(())
            })
            .unwrap_or(Err(AccessFault::NotMapped(va.get())));
        }
        self.check(va, data.len(), true)?;
        // SAFETY: `check` found every page of the range mapped writable (normal memory, NS=1)
        // right now; nothing of Rust's lives in the window.
        unsafe { volatile::write_bytes(va.get() as usize, data) };
        Ok(())
    }

    /// One 32-bit load from a device page of the window (an `ioremap`): the page must
    /// translate (`AT S1E1R`) to device memory (`PAR_EL1.ATTR` 0b0000xx00).
    fn read_io32(&self, _map: &dyn Translate, va: VirtAddr) -> Result<u32, AccessFault> {
        let at = va.get();
        if at % 4 != 0 || at < self.window_start || at >= self.window_end {
            return Err(AccessFault::Permission(at));
        }
        barrier_for_new_entries();
        let par = translate(at & !(PAGE_SIZE - 1), false);
        AT_CHECKS.fetch_add(1, Ordering::Relaxed);
        if par & PAR_F != 0 {
            return Err(AccessFault::NotMapped(at));
        }
        if (par >> 56) & 0xf0 != 0 {
            return Err(AccessFault::Permission(at));
        }
        // SAFETY: the MMU maps the page of `at` (4-byte aligned, so the word is inside it) as
        // device memory right now, an `ioremap` of a device region of the memory map; a
        // volatile 32-bit load is the single access a device register needs, and nothing of
        // Rust's lives there.
        Ok(unsafe { (at as *const u32).read_volatile() })
    }

    /// `ISR_EL1`'s I or F bit: an interrupt is pending at this CPU while the core runs with
    /// them masked. The monitor puts every interrupt in the normal world's group, so any
    /// pending one is the normal world's: a GICv3 signals it to the secure state as FIQ, a
    /// GICv2 as IRQ.
    fn foreign_interrupt_pending(&self) -> bool {
        let isr: u64;
        // SAFETY: reading ISR_EL1 has no side effect.
        unsafe { core::arch::asm!("mrs {}, isr_el1", out(reg) isr, options(nomem, nostack)) };
        isr & (ISR_I | ISR_F) != 0
    }
}

/// `ISR_EL1.I` and `ISR_EL1.F`: an IRQ, an FIQ pending.
const ISR_I: u64 = 1 << 7;
const ISR_F: u64 = 1 << 6;

impl UserMode for FwPlatform {
    type UserTlb = FwUserTlb;

    fn user_tlb(&self, asid: u16) -> FwUserTlb {
        FwUserTlb::new(asid)
    }

    fn activate_user(&self, space: Option<UserRoot>) {
        user::activate(space);
    }

    fn enter_user(
        &self,
        space: UserRoot,
        _map: &dyn Translate,
        regs: &mut UserRegs,
        handler: &mut dyn UserTrapHandler,
    ) {
        user::enter_user(space, regs, handler);
    }

    fn ta_pages(&self) -> alloc::sync::Arc<dyn teeshm_core::platform::TaPages> {
        alloc::sync::Arc::new(user::HeapPages)
    }

    fn write_ta_ram(&self, pa: PhysAddr, data: &[u8]) -> Result<(), AccessFault> {
        user::write_ta_ram(pa.get(), data).ok_or(AccessFault::NoMemory(pa.get()))
    }

    /// `ta: <name>: <message>` on the UART, control characters shown as `.` (a TA's message
    /// cannot start a line of its own, such as one xtask reads as the firmware's).
    fn ta_log(&self, ta: &str, message: &str) {
        struct Clean<'a>(&'a str);
        impl core::fmt::Display for Clean<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                for c in self.0.chars() {
                    core::fmt::Write::write_char(f, if c.is_control() { '.' } else { c })?;
                }
                Ok(())
            }
        }
        println!("ta: {}: {}", Clean(ta), Clean(message));
    }
}

/// The MMU's translation of `page` for EL0 in the current regime (`PAR_EL1` after
/// `AT S1E0R`/`AT S1E0W`).
fn translate_el0(page: u64, write: bool) -> u64 {
    let par: u64;
    // SAFETY: as `translate`: AT only writes PAR_EL1 and cannot fault.
    unsafe {
        if write {
            core::arch::asm!("at s1e0w, {va}", "isb", "mrs {par}, par_el1",
                va = in(reg) page, par = out(reg) par, options(nostack, preserves_flags));
        } else {
            core::arch::asm!("at s1e0r, {va}", "isb", "mrs {par}, par_el1",
                va = in(reg) page, par = out(reg) par, options(nostack, preserves_flags));
        }
    }
    par
}

/// `dsb ishst; isb`: translation-table writes complete before the next walk.
fn barrier_for_new_entries() {
    // SAFETY: barriers only order memory accesses; no Rust-visible state changes.
    unsafe { core::arch::asm!("dsb ishst", "isb", options(nostack, preserves_flags)) };
}

/// The MMU's translation of `page` at EL1 (`PAR_EL1` after `AT S1E1R`/`AT S1E1W`).
fn translate(page: u64, write: bool) -> u64 {
    let par: u64;
    // SAFETY: AT only writes PAR_EL1 (part of the secure EL1 context the monitor saves; the
    // core does not otherwise use it) and cannot fault, whatever the address.
    unsafe {
        if write {
            core::arch::asm!("at s1e1w, {va}", "isb", "mrs {par}, par_el1",
                va = in(reg) page, par = out(reg) par, options(nostack, preserves_flags));
        } else {
            core::arch::asm!("at s1e1r, {va}", "isb", "mrs {par}, par_el1",
                va = in(reg) page, par = out(reg) par, options(nostack, preserves_flags));
        }
    }
    par
}

/// `TLBI VAE1IS` of `pages` pages from `va` tagged `asid`, between the barriers it needs:
/// the descriptor writes before, the invalidations complete after (the caller counts them).
pub(crate) fn invalidate_by_va(asid: u16, va: u64, pages: u64) {
    // SAFETY: the barrier orders the descriptor writes before the invalidations.
    unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
    for i in 0..pages {
        // TLBI VAE1IS: ASID in bits [63:48], VA[55:12] in bits [43:0].
        let operand = (u64::from(asid) << 48) | ((va >> 12).wrapping_add(i) & ((1 << 44) - 1));
        // SAFETY: invalidating TLB entries only makes the MMU walk the tables again; it cannot
        // make any access succeed that the tables do not allow.
        unsafe {
            core::arch::asm!("tlbi vae1is, {}", in(reg) operand, options(nostack, preserves_flags));
        }
    }
    // SAFETY: barriers only: the invalidations complete before anything that follows.
    unsafe { core::arch::asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// TLB maintenance of the secure EL1&0 regime, broadcast to the inner-shareable domain.
#[derive(Debug, Default, Clone, Copy)]
pub struct FwTlb;

impl TlbMaintenance for FwTlb {
    fn invalidate_pages(&mut self, va: u64, pages: u64) {
        if pages > TLBI_PAGE_LIMIT {
            self.invalidate_all();
            return;
        }
        // ASID 0: the core's mappings are global, which a TLBI by VA drops whatever its ASID.
        invalidate_by_va(0, va, pages);
        TLBI_BY_VA.fetch_add(pages, Ordering::Relaxed);
    }

    fn invalidate_all(&mut self) {
        // SAFETY: as for `invalidate_pages`, for every entry of the regime.
        unsafe {
            core::arch::asm!(
                "dsb ishst",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            );
        }
        TLBI_ALL.fetch_add(1, Ordering::Relaxed);
    }
}
