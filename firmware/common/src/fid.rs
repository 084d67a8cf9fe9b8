//! SMC function ids the firmware uses beyond the OP-TEE ABI (`teeshm_abi::smc`) and PSCI.

/// S-EL1 → EL3: the core has booted and can take calls (OP-TEE's
/// `TEESMC_OPTEED_RETURN_ENTRY_DONE`, owner 62 "OP-TEE dispatcher").
pub const SECURE_ENTRY_DONE: u32 = 0xBE00_0000;
/// S-EL1 → EL3: the call is done, x1..x8 are a0..a7 for the normal world (OP-TEE's
/// `TEESMC_OPTEED_RETURN_CALL_DONE`). RPC requests come back this way too.
pub const SECURE_CALL_DONE: u32 = 0xBE00_0005;
/// S-EL1 → EL3: the core took an exception it cannot return from; x1 = ESR_EL1,
/// x2 = FAR_EL1, x3 = ELR_EL1, x4 = the vector it came through.
pub const SECURE_FAULT: u32 = 0xBE00_00F0;
/// S-EL1 → EL3: the core panicked.
pub const SECURE_PANIC: u32 = 0xBE00_00F1;

/// Owner of the "OP-TEE dispatcher" ids above; the monitor refuses them from the normal world.
pub const OWNER_OPTEED: u32 = 62;

/// NS → S-EL1 (SiP fast call): the core runs its agreement checker and answers
/// a0 = 0, a1 = disagreements found, a2 = pages mapped in the SHM window, a3 = live table
/// pages, a4 = calls served.
pub const SIP_TEESHM_CHECK: u32 = 0x8200_0F01;
/// x1 of a `SIP_TEESHM_CHECK` made at the end of a run (by the monitor after the normal world
/// powered off, or the test client's last case): the core then also prints the CPUs' counters
/// (`tee: smp: ...`), which it otherwise prints only once several CPUs or calls were in it.
pub const CHECK_FINAL: u64 = 1;
/// NS → S-EL1 (SiP fast call), only in a `fault-test` build: the core reads a VA that no
/// table maps, to show the fault is caught and reported rather than read.
pub const SIP_TEESHM_FAULT_TEST: u32 = 0x8200_0F0F;
/// NS → EL3 (SiP fast call): the test client is done; x1 = cases passed, x2 = cases failed.
/// The monitor ends the run with status 0 only if none failed, some passed and the secure
/// world never faulted.
pub const SIP_TEESHM_TEST_EXIT: u32 = 0x8200_0F10;

/// NS → EL3 (SiP fast call): the monitor's counters: a1 = calls forwarded to the core,
/// a2 = world switches, a3 = microseconds since the core was ready, a4 = CPUs on.
pub const SIP_TEESHM_MONITOR_STATS: u32 = 0x8200_0F11;

/// S-EL1 → EL3: a secondary CPU's core hook is done (OP-TEE's
/// `TEESMC_OPTEED_RETURN_ON_DONE`): the monitor enters the normal world's `CPU_ON` entry.
pub const SECURE_CPU_ON_DONE: u32 = 0xBE00_0001;

/// First and last function number of the firmware's SiP range.
pub const SIP_TEESHM_RANGE: (u32, u32) = (0x8200_0F00, 0x8200_0FFF);

/// SMCCC "unknown function" (`SMC_UNK`).
pub const SMC_UNKNOWN: u64 = 0xFFFF_FFFF;

/// PSCI function ids (PSCI 1.1, SMC32 forms; CPU_ON also as SMC64).
pub mod psci {
    /// `PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON` (SMC32).
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// `CPU_ON` (SMC64).
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// `AFFINITY_INFO` (SMC32).
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// `AFFINITY_INFO` (SMC64).
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// `MIGRATE_INFO_TYPE`.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_FEATURES`.
    pub const FEATURES: u32 = 0x8400_000A;
    /// The version reported: 1.1.
    pub const VERSION_1_1: u64 = 0x0001_0001;
    /// `PSCI_RET_NOT_SUPPORTED` (-1, sign-extended in x0, as every error below).
    pub const NOT_SUPPORTED: u64 = -1_i64 as u64;
    /// `PSCI_RET_INVALID_PARAMETERS` (-2).
    pub const INVALID_PARAMETERS: u64 = -2_i64 as u64;
    /// `PSCI_RET_DENIED` (-3).
    pub const DENIED: u64 = -3_i64 as u64;
    /// `PSCI_RET_ALREADY_ON` (-4).
    pub const ALREADY_ON: u64 = -4_i64 as u64;
    /// `PSCI_RET_ON_PENDING` (-5).
    pub const ON_PENDING: u64 = -5_i64 as u64;
    /// `PSCI_RET_INVALID_ADDRESS` (-9).
    pub const INVALID_ADDRESS: u64 = -9_i64 as u64;
    /// `AFFINITY_INFO` answers: the CPU is on, off, or being turned on.
    pub const AFFINITY_ON: u64 = 0;
    /// See [`AFFINITY_ON`].
    pub const AFFINITY_OFF: u64 = 1;
    /// See [`AFFINITY_ON`].
    pub const AFFINITY_ON_PENDING: u64 = 2;
    /// `MIGRATE_INFO_TYPE`: the Trusted OS runs on every CPU and needs no migration.
    pub const TOS_NOT_PRESENT_MP: u64 = 2;
}

/// Arm architecture calls (SMCCC).
pub mod arch {
    /// `SMCCC_VERSION`.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// `SMCCC_ARCH_FEATURES`.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// The version reported: 1.1.
    pub const VERSION_1_1: u64 = 0x0001_0001;
}

/// Owner (bits 29:24) of a function id.
pub const fn owner(fid: u32) -> u32 {
    (fid >> 24) & 0x3f
}
