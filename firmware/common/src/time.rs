//! The generic counter (`CNTPCT_EL0`), readable at every EL the firmware runs at; on QEMU it
//! starts at 0 when the machine starts.

/// Counter ticks since the machine started.
pub fn ticks() -> u64 {
    let t: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effect; EL1 access is not trapped (no EL2, and
    // CNTKCTL only governs EL0).
    unsafe { core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) t, options(nomem, nostack)) };
    t
}

/// Counter frequency in Hz (`CNTFRQ_EL0`, set by QEMU).
pub fn frequency() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f.max(1)
}

/// Microseconds since the machine started.
pub fn micros() -> u64 {
    let f = u128::from(frequency());
    (u128::from(ticks()) * 1_000_000 / f) as u64
}
