//! One world's saved CPU state: what the EL3 entry saves (x0..x30, SP_EL0, ELR_EL3,
//! SPSR_EL3) and the EL1 system registers the monitor swaps on every world switch.

use core::mem::offset_of;

/// EL1 (and EL0) system registers a world owns. Each world programs its own translation
/// regime, vectors, stack and thread pointers; swapping all of them keeps the normal world from
/// seeing or changing any of the secure world's, and the other way round.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct El1Regs {
    pub sctlr: u64,
    pub cpacr: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub mair: u64,
    pub amair: u64,
    pub vbar: u64,
    pub contextidr: u64,
    pub tpidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub sp_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub esr_el1: u64,
    pub far_el1: u64,
    pub par_el1: u64,
    pub afsr0_el1: u64,
    pub afsr1_el1: u64,
    pub cntkctl_el1: u64,
    pub csselr_el1: u64,
    pub mdscr_el1: u64,
}

/// SCTLR_EL1 at a world's first entry: the ARMv8.0 RES1 bits, MMU and caches off.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// CPACR_EL1 with FPEN = 0b11: FP/SIMD not trapped, so compiled Rust can run at once.
pub const CPACR_EL1_FP: u64 = 3 << 20;

impl El1Regs {
    /// A world's registers before its first entry.
    pub const RESET: Self = Self {
        sctlr: SCTLR_EL1_RESET,
        cpacr: CPACR_EL1_FP,
        ttbr0: 0,
        ttbr1: 0,
        tcr: 0,
        mair: 0,
        amair: 0,
        vbar: 0,
        contextidr: 0,
        tpidr_el1: 0,
        tpidr_el0: 0,
        tpidrro_el0: 0,
        sp_el1: 0,
        elr_el1: 0,
        spsr_el1: 0,
        esr_el1: 0,
        far_el1: 0,
        par_el1: 0,
        afsr0_el1: 0,
        afsr1_el1: 0,
        cntkctl_el1: 0,
        csselr_el1: 0,
        mdscr_el1: 0,
    };

    /// All zero.
    pub const ZERO: Self = Self {
        sctlr: 0,
        cpacr: 0,
        ..Self::RESET
    };
}

macro_rules! el1_registers {
    ($($field:ident => $reg:literal),* $(,)?) => {
        impl El1Regs {
            /// Reads every register from the CPU.
            pub fn save(&mut self) {
                $(
                    // SAFETY: reading an EL1 system register at EL3 has no side effect.
                    unsafe {
                        core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) self.$field,
                            options(nomem, nostack, preserves_flags));
                    }
                )*
            }

            /// Writes every register to the CPU (takes effect at the next `eret` to EL1).
            pub fn restore(&self) {
                $(
                    // SAFETY: EL3 runs with its own regime, stack and vectors: writing EL1
                    // registers changes nothing for the code running now, only the state the
                    // next `eret` enters.
                    unsafe {
                        core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) self.$field,
                            options(nomem, nostack, preserves_flags));
                    }
                )*
            }
        }
    };
}

el1_registers! {
    sctlr => "sctlr_el1",
    cpacr => "cpacr_el1",
    ttbr0 => "ttbr0_el1",
    ttbr1 => "ttbr1_el1",
    tcr => "tcr_el1",
    mair => "mair_el1",
    amair => "amair_el1",
    vbar => "vbar_el1",
    contextidr => "contextidr_el1",
    tpidr_el1 => "tpidr_el1",
    tpidr_el0 => "tpidr_el0",
    tpidrro_el0 => "tpidrro_el0",
    sp_el1 => "sp_el1",
    elr_el1 => "elr_el1",
    spsr_el1 => "spsr_el1",
    esr_el1 => "esr_el1",
    far_el1 => "far_el1",
    par_el1 => "par_el1",
    afsr0_el1 => "afsr0_el1",
    afsr1_el1 => "afsr1_el1",
    cntkctl_el1 => "cntkctl_el1",
    csselr_el1 => "csselr_el1",
    mdscr_el1 => "mdscr_el1",
}

/// FP/SIMD registers (q0..q31, FPSR, FPCR). SMCCC has the callee of an SMC preserve them, and
/// Linux keeps a task's FP state live in the registers across a syscall, while the monitor and
/// the core are compiled Rust that uses them (memcpy, zeroing, hashing). So the EL3 entry saves
/// them into the context of the world that was running and the exit restores those of the
/// world it resumes (`el3_lower_sync` / `el3_exit` in main.rs), before any Rust code runs.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy)]
pub struct FpRegs {
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

impl FpRegs {
    /// All zero (FPCR 0: round to nearest, no traps, no flush to zero).
    pub const ZERO: Self = Self {
        q: [0; 32],
        fpsr: 0,
        fpcr: 0,
    };
}

/// A world's saved state. The EL3 entry code (`el3_lower_sync` in main.rs) stores the
/// general registers at the offsets asserted below, through SP_EL3, which points at the
/// context of the world that is running.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// x0..x30.
    pub x: [u64; 31],
    pub sp_el0: u64,
    /// Where the world resumes.
    pub elr_el3: u64,
    /// PSTATE the world resumes with.
    pub spsr_el3: u64,
    pub el1: El1Regs,
    /// FP/SIMD state, at [`FP_OFFSET`].
    pub fp: FpRegs,
}

/// Offset of [`Context::fp`], for the assembly entry and exit.
pub const FP_OFFSET: usize = offset_of!(Context, fp);

const _: () = {
    assert!(FP_OFFSET % 16 == 0 && FP_OFFSET < 4096);
    assert!(offset_of!(FpRegs, fpsr) == 0x200 && offset_of!(FpRegs, fpcr) == 0x208);
    assert!(offset_of!(Context, x) == 0);
    assert!(offset_of!(Context, sp_el0) == 0xf8);
    assert!(offset_of!(Context, elr_el3) == 0x100);
    assert!(offset_of!(Context, spsr_el3) == 0x108);
};

/// SPSR for an entry at EL1 with SP_EL1 (EL1h) and D, A, I, F masked.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// SPSR for an entry at EL2 with SP_EL2 (EL2h) and D, A, I, F masked (a hypervisor).
pub const SPSR_EL2H_MASKED: u64 = 0x3c9;

impl Context {
    /// A world that enters at `entry` (EL1h, exceptions masked), MMU off, FP enabled.
    pub const fn new(entry: u64) -> Self {
        Self {
            x: [0; 31],
            sp_el0: 0,
            elr_el3: entry,
            spsr_el3: SPSR_EL1H_MASKED,
            el1: El1Regs::RESET,
            fp: FpRegs::ZERO,
        }
    }

    /// All zero: what `.el3` (NOLOAD, zeroed at boot) holds before the monitor sets a
    /// context up, so a static of it may live there.
    pub const ZERO: Self = Self {
        x: [0; 31],
        sp_el0: 0,
        elr_el3: 0,
        spsr_el3: 0,
        el1: El1Regs::ZERO,
        fp: FpRegs::ZERO,
    };
}
