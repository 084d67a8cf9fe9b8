//! The conduit: the `SMC` instruction with a0..a7 in x0..x7.

use teeshm_abi::caps::SecureCaps;
use teeshm_abi::smc::{OPTEE_SMC_EXCHANGE_CAPABILITIES, SmcConduit, SmcRegs};

/// Issues one SMC and returns x0..x7 as the monitor left them.
pub fn raw(regs: SmcRegs) -> SmcRegs {
    let mut a = regs.a;
    // SAFETY: SMC traps to the EL3 monitor, which restores every register but x0..x7 (declared
    // in and out here) before it returns after the instruction; x8..x17 are declared clobbered
    // as SMCCC allows. No memory of the client is touched by the monitor.
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") a[0],
            inout("x1") a[1],
            inout("x2") a[2],
            inout("x3") a[3],
            inout("x4") a[4],
            inout("x5") a[5],
            inout("x6") a[6],
            inout("x7") a[7],
            lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
            lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
            lateout("x16") _, lateout("x17") _,
            options(nostack)
        );
    }
    SmcRegs { a }
}

/// The normal world's conduit to the TEE: every SMC carries `client_id` in a7 (0: the
/// hypervisor or the only normal world; another id: this normal world acts for that guest, as
/// a hypervisor forwarding its calls would).
#[derive(Debug, Clone, Default)]
pub struct Conduit {
    /// The a7 of every call.
    pub client_id: u64,
    /// Clears `RPC_ARG` from the capabilities the driver sees (as the Xen mediator does), so
    /// the driver asks for RPC args by `RPC_FUNC_ALLOC` and uses the SHM cache.
    pub mask_rpc_arg: bool,
    /// Calls made.
    pub calls: u64,
    /// RPC requests answered.
    pub rpcs: u64,
    /// Serve the normal world's pending interrupt when the TEE returns `RPC_FOREIGN_INTR`
    /// (`crate::irq::serve`, as an interrupt handler would before the driver resumes), and
    /// re-arm the timer with this many ticks (0: leave it stopped).
    pub serve_interrupts: Option<u64>,
    /// `RPC_FOREIGN_INTR` returns seen.
    pub foreign_interrupts: u64,
}

impl Conduit {
    /// A conduit for client id `client_id`.
    pub fn new(client_id: u64) -> Self {
        Self {
            client_id,
            ..Self::default()
        }
    }
}

impl SmcConduit for Conduit {
    fn smc(&mut self, mut regs: SmcRegs) -> SmcRegs {
        regs.a[7] = self.client_id;
        let func = regs.a0();
        let mut out = raw(regs);
        self.calls += 1;
        if teeshm_abi::smc::is_rpc_return(out.a0()) {
            self.rpcs += 1;
        }
        if out.a0() == teeshm_abi::smc::OPTEE_SMC_RETURN_RPC_FOREIGN_INTR {
            self.foreign_interrupts += 1;
            if let Some(rearm) = self.serve_interrupts {
                crate::irq::serve();
                if rearm > 0 {
                    crate::irq::arm_timer(rearm);
                }
            }
        }
        if self.mask_rpc_arg && func == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[1] &= !u64::from(SecureCaps::RPC_ARG.bits());
        }
        out
    }
}

/// Loads known values into q0, q8, q31 and a non-default FPCR (round towards zero), makes the
/// SMC `func` (which should run the secure world), and returns what those registers hold after
/// it: `[q0.hi, q8.lo, q8.hi, q31.lo, q31.hi, FPCR]`. SMCCC has the callee preserve them; the
/// monitor and the core are compiled Rust that uses the vector registers.
pub fn fp_after_smc(func: u32, values: [u64; 3]) -> [u64; 6] {
    let [a, b, c] = values;
    let (q0_hi, q8_lo, q8_hi, q31_lo, q31_hi, fpcr): (u64, u64, u64, u64, u64, u64);
    // SAFETY: as for `raw`: the SMC returns after the instruction with x0..x17 possibly changed
    // (declared), v0, v8, v31 are declared clobbered, and FPCR is put back as it was before the
    // block ends; no memory is touched.
    unsafe {
        core::arch::asm!(
            "mrs {saved}, fpcr",
            "orr {tmp}, {saved}, #0xc00000",
            "msr fpcr, {tmp}",
            "fmov d0, {a}",
            "mov v0.d[1], {b}",
            "fmov d8, {b}",
            "mov v8.d[1], {c}",
            "fmov d31, {c}",
            "mov v31.d[1], {a}",
            "smc #0",
            "mov {q0_hi}, v0.d[1]",
            "fmov {q8_lo}, d8",
            "mov {q8_hi}, v8.d[1]",
            "fmov {q31_lo}, d31",
            "mov {q31_hi}, v31.d[1]",
            "mrs {fpcr}, fpcr",
            "msr fpcr, {saved}",
            a = in(reg) a,
            b = in(reg) b,
            c = in(reg) c,
            saved = out(reg) _,
            tmp = out(reg) _,
            q0_hi = out(reg) q0_hi,
            q8_lo = out(reg) q8_lo,
            q8_hi = out(reg) q8_hi,
            q31_lo = out(reg) q31_lo,
            q31_hi = out(reg) q31_hi,
            fpcr = out(reg) fpcr,
            inout("x0") u64::from(func) => _,
            lateout("x1") _, lateout("x2") _, lateout("x3") _, lateout("x4") _,
            lateout("x5") _, lateout("x6") _, lateout("x7") _, lateout("x8") _,
            lateout("x9") _, lateout("x10") _, lateout("x11") _, lateout("x12") _,
            lateout("x13") _, lateout("x14") _, lateout("x15") _, lateout("x16") _,
            lateout("x17") _,
            out("v0") _, out("v8") _, out("v31") _,
            options(nostack)
        );
    }
    [q0_hi, q8_lo, q8_hi, q31_lo, q31_hi, fpcr]
}
