//! The normal world's timer interrupt, for the calls the secure world must let it through
//! (`RPC_FOREIGN_INTR`). The client runs with interrupts masked (PSTATE.I): an interrupt stays
//! pending in the GICv3 until the client acknowledges it itself. The monitor has put every
//! interrupt in Non-secure Group 1 and opened the system-register interface to EL1; while the
//! secure world runs, that pending interrupt is signalled to it (as FIQ), and a long call
//! returns to let the normal world serve it.

/// The EL1 virtual timer's interrupt (PPI 27 on QEMU `virt`).
const VTIMER_INTID: u64 = 27;
/// QEMU `virt`'s GICv3 redistributors: 128 KiB a CPU, SGI/PPI frame at +64 KiB.
const GICR_BASE: u64 = 0x080a_0000;
/// `GICR_ISENABLER0` in the SGI frame.
const GICR_ISENABLER0: u64 = 0x1_0100;

/// Whether this CPU has the GICv3 system-register interface (`ID_AA64PFR0_EL1.GIC`).
pub fn has_gicv3() -> bool {
    let pfr0: u64;
    // SAFETY: reading ID_AA64PFR0_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack)) };
    (pfr0 >> 24) & 0xf != 0
}

/// Opens this CPU's GICv3 interface to Group 1 interrupts and enables the virtual timer's
/// PPI in its redistributor (`cpu`: its index). Returns false without a GICv3.
pub fn init_cpu(cpu: usize) -> bool {
    if !has_gicv3() {
        return false;
    }
    let enable = (GICR_BASE + cpu as u64 * 0x2_0000 + GICR_ISENABLER0) as *mut u32;
    // SAFETY: ICC_SRE_EL1.SRE (the monitor allowed it), the priority mask fully open, Group 1
    // on: system registers of this CPU's GIC interface. `enable` is this CPU's
    // GICR_ISENABLER0 (QEMU virt, physical with the MMU off): writing a 1 enables PPI 27 only.
    unsafe {
        core::arch::asm!(
            "msr S3_0_C12_C12_5, {sre}",
            "isb",
            "msr S3_0_C4_C6_0, {pmr}",
            "msr S3_0_C12_C12_7, {one}",
            "isb",
            sre = in(reg) 1u64,
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nomem, nostack)
        );
        enable.write_volatile(1 << VTIMER_INTID);
    }
    true
}

/// Starts the virtual timer: its interrupt comes `ticks` counter ticks from now.
pub fn arm_timer(ticks: u64) {
    // SAFETY: CNTV_TVAL_EL0 and CNTV_CTL_EL0 (ENABLE, not IMASK) program this CPU's virtual
    // timer only.
    unsafe {
        core::arch::asm!(
            "msr cntv_tval_el0, {t}",
            "msr cntv_ctl_el0, {on}",
            "isb",
            t = in(reg) ticks,
            on = in(reg) 1u64,
            options(nomem, nostack)
        );
    }
}

/// Stops the virtual timer (its interrupt line goes low).
pub fn stop_timer() {
    // SAFETY: CNTV_CTL_EL0 = 0 disables this CPU's virtual timer only.
    unsafe { core::arch::asm!("msr cntv_ctl_el0, xzr", "isb", options(nomem, nostack)) };
}

/// Serves a pending interrupt as a handler would: acknowledges it (`ICC_IAR1_EL1`), stops
/// the timer if it was the timer's, and ends it (`ICC_EOIR1_EL1`). Returns its INTID (1023:
/// none was pending).
pub fn serve() -> u64 {
    let intid: u64;
    // SAFETY: reading ICC_IAR1_EL1 acknowledges this CPU's highest pending Group 1 interrupt.
    unsafe {
        core::arch::asm!("mrs {}, S3_0_C12_C12_0", out(reg) intid, options(nomem, nostack));
    }
    let intid = intid & 0xff_ffff;
    if intid < 1020 {
        if intid == VTIMER_INTID {
            stop_timer();
        }
        // SAFETY: ICC_EOIR1_EL1 ends the interrupt just acknowledged.
        unsafe {
            core::arch::asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) intid,
                options(nomem, nostack));
        }
    }
    intid
}
