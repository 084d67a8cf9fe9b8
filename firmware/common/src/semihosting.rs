//! Arm semihosting: the only way this firmware ends a QEMU run with a status (QEMU's own PSCI
//! is off when it runs firmware at EL3). Needs QEMU's `-semihosting`.

/// `SYS_EXIT`.
const SYS_EXIT: u32 = 0x18;
/// `ADP_Stopped_ApplicationExit`: with AArch64 semihosting the second word is the exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Ends the QEMU run with `status` as QEMU's exit status.
pub fn exit(status: u32) -> ! {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: `hlt #0xf000` is the AArch64 semihosting trap; QEMU reads the two-word parameter
    // block at x1 (a live local) and ends the process. Without semihosting it is an undefined
    // instruction, handled by the caller's exception vectors.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("w0") SYS_EXIT,
            in("x1") block.as_ptr(),
            options(nostack)
        );
    }
    loop {
        core::hint::spin_loop();
    }
}
