//! Which CPU runs: the firmware serves QEMU `virt`'s first cluster, CPUs whose MPIDR_EL1 has
//! Aff1..Aff3 = 0 and Aff0 < [`MAX_CPUS`], and indexes its per-CPU state by Aff0.

/// The most CPUs the firmware serves.
pub const MAX_CPUS: usize = 8;

/// The index of the CPU with `mpidr`, or `None` for a CPU the firmware does not serve.
pub fn index_of(mpidr: u64) -> Option<usize> {
    let aff0 = (mpidr & 0xff) as usize;
    (mpidr & 0xff_00ff_ff00 == 0 && aff0 < MAX_CPUS).then_some(aff0)
}

/// MPIDR_EL1 of the running CPU.
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect and is allowed at EL1 and above.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// The running CPU's index (0 for a CPU the firmware does not serve, which never runs its
/// code: the boot parks it).
pub fn this() -> usize {
    index_of(mpidr()).unwrap_or(0)
}
