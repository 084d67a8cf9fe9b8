//! OP-TEE SMC function IDs, return codes and RPC return codes (`optee_smc.h`).
//!
//! Names keep their C spelling so they can be grepped against OP-TEE, Linux and Xen sources.
//! Every OP-TEE call is an SMC32 call, so function IDs and return codes are `u32` (`w0`).
//!
//! Register `a7` of every call carries the hypervisor client id; see [`HYP_CLNT_ID`] and
//! [`crate::GuestId`].

/// SMC32 calling convention (bit 30 clear); all OP-TEE calls use it.
pub const OPTEE_SMC_32: u32 = 0;
/// SMC64 calling convention (bit 30 set); never used by OP-TEE, kept to decode IDs.
pub const OPTEE_SMC_64: u32 = 0x4000_0000;
/// Fast call: atomic, runs with interrupts masked, never suspends for RPC (bit 31 set).
pub const OPTEE_SMC_FAST_CALL: u32 = 0x8000_0000;
/// Standard (yielding) call: runs on a TEE thread, may be suspended by RPCs and interrupts.
pub const OPTEE_SMC_STD_CALL: u32 = 0;

/// Mask of the 6-bit owner field.
pub const OPTEE_SMC_OWNER_MASK: u32 = 0x3F;
/// Position of the owner field.
pub const OPTEE_SMC_OWNER_SHIFT: u32 = 24;
/// Mask of the 16-bit function number.
pub const OPTEE_SMC_FUNC_MASK: u32 = 0xFFFF;

/// Owner: Arm architecture calls.
pub const OPTEE_SMC_OWNER_ARCH: u32 = 0;
/// Owner: CPU service calls.
pub const OPTEE_SMC_OWNER_CPU: u32 = 1;
/// Owner: SiP service calls.
pub const OPTEE_SMC_OWNER_SIP: u32 = 2;
/// Owner: OEM service calls.
pub const OPTEE_SMC_OWNER_OEM: u32 = 3;
/// Owner: standard service calls (PSCI, ...).
pub const OPTEE_SMC_OWNER_STANDARD: u32 = 4;
/// Owner: trusted application calls.
pub const OPTEE_SMC_OWNER_TRUSTED_APP: u32 = 48;
/// Owner: trusted OS calls; all OP-TEE function calls use it.
pub const OPTEE_SMC_OWNER_TRUSTED_OS: u32 = 50;
/// Owner: trusted OS calls handled by the OP-TEE dispatcher in EL3 (OPTEED).
pub const OPTEE_SMC_OWNER_TRUSTED_OS_OPTEED: u32 = 62;
/// Owner: trusted OS generic API calls (count, UID, revision).
pub const OPTEE_SMC_OWNER_TRUSTED_OS_API: u32 = 63;

/// Builds an SMC function ID as `OPTEE_SMC_CALL_VAL` does; owner and function number are masked
/// to their field widths, exactly like the C macro.
pub const fn optee_smc_call_val(ty: u32, cc: u32, owner: u32, func: u32) -> u32 {
    ty | cc
        | ((owner & OPTEE_SMC_OWNER_MASK) << OPTEE_SMC_OWNER_SHIFT)
        | (func & OPTEE_SMC_FUNC_MASK)
}

/// Builds a yielding (standard) SMC32 trusted-OS function ID (`OPTEE_SMC_STD_CALL_VAL`).
pub const fn optee_smc_std_call_val(func: u32) -> u32 {
    optee_smc_call_val(
        OPTEE_SMC_32,
        OPTEE_SMC_STD_CALL,
        OPTEE_SMC_OWNER_TRUSTED_OS,
        func,
    )
}

/// Builds a fast SMC32 trusted-OS function ID (`OPTEE_SMC_FAST_CALL_VAL`).
pub const fn optee_smc_fast_call_val(func: u32) -> u32 {
    optee_smc_call_val(
        OPTEE_SMC_32,
        OPTEE_SMC_FAST_CALL,
        OPTEE_SMC_OWNER_TRUSTED_OS,
        func,
    )
}

/// True for a fast call: the dispatcher must answer without blocking or suspending.
pub const fn is_fast_call(a0: u32) -> bool {
    a0 & OPTEE_SMC_FAST_CALL != 0
}

/// True if the ID asks for the SMC64 convention, which OP-TEE never uses.
pub const fn is_smc64(a0: u32) -> bool {
    a0 & OPTEE_SMC_64 != 0
}

/// Function number of an SMC function ID (`OPTEE_SMC_FUNC_NUM`).
pub const fn optee_smc_func_num(a0: u32) -> u32 {
    a0 & OPTEE_SMC_FUNC_MASK
}

/// Owner of an SMC function ID (`OPTEE_SMC_OWNER_NUM`).
pub const fn optee_smc_owner_num(a0: u32) -> u32 {
    (a0 >> OPTEE_SMC_OWNER_SHIFT) & OPTEE_SMC_OWNER_MASK
}

// ---- Function numbers shared with optee_msg.h ----------------------------------------------

/// `OPTEE_MSG_FUNCID_CALLS_COUNT`.
pub const OPTEE_SMC_FUNCID_CALLS_COUNT: u32 = 0xFF00;
/// `OPTEE_MSG_FUNCID_CALLS_UID`.
pub const OPTEE_SMC_FUNCID_CALLS_UID: u32 = 0xFF01;
/// `OPTEE_MSG_FUNCID_CALLS_REVISION`.
pub const OPTEE_SMC_FUNCID_CALLS_REVISION: u32 = 0xFF03;
/// `OPTEE_MSG_FUNCID_GET_OS_UUID`.
pub const OPTEE_SMC_FUNCID_GET_OS_UUID: u32 = 0;
/// `OPTEE_MSG_FUNCID_GET_OS_REVISION`.
pub const OPTEE_SMC_FUNCID_GET_OS_REVISION: u32 = 1;
/// Function number of `OPTEE_SMC_CALL_RETURN_FROM_RPC`.
pub const OPTEE_SMC_FUNCID_RETURN_FROM_RPC: u32 = 3;
/// `OPTEE_MSG_FUNCID_CALL_WITH_ARG`.
pub const OPTEE_SMC_FUNCID_CALL_WITH_ARG: u32 = 4;
/// Function number of `OPTEE_SMC_GET_SHM_CONFIG`.
pub const OPTEE_SMC_FUNCID_GET_SHM_CONFIG: u32 = 7;
/// Function number of `OPTEE_SMC_L2CC_MUTEX`.
pub const OPTEE_SMC_FUNCID_L2CC_MUTEX: u32 = 8;
/// Function number of `OPTEE_SMC_EXCHANGE_CAPABILITIES`.
pub const OPTEE_SMC_FUNCID_EXCHANGE_CAPABILITIES: u32 = 9;
/// Function number of `OPTEE_SMC_DISABLE_SHM_CACHE`.
pub const OPTEE_SMC_FUNCID_DISABLE_SHM_CACHE: u32 = 10;
/// Function number of `OPTEE_SMC_ENABLE_SHM_CACHE`.
pub const OPTEE_SMC_FUNCID_ENABLE_SHM_CACHE: u32 = 11;
/// Function number of `OPTEE_SMC_BOOT_SECONDARY`.
pub const OPTEE_SMC_FUNCID_BOOT_SECONDARY: u32 = 12;
/// Function number of `OPTEE_SMC_VM_CREATED`.
pub const OPTEE_SMC_FUNCID_VM_CREATED: u32 = 13;
/// Function number of `OPTEE_SMC_VM_DESTROYED`.
pub const OPTEE_SMC_FUNCID_VM_DESTROYED: u32 = 14;
/// Function number of `OPTEE_SMC_GET_THREAD_COUNT`.
pub const OPTEE_SMC_FUNCID_GET_THREAD_COUNT: u32 = 15;
/// Function number of `OPTEE_SMC_ENABLE_ASYNC_NOTIF`.
pub const OPTEE_SMC_FUNCID_ENABLE_ASYNC_NOTIF: u32 = 16;
/// Function number of `OPTEE_SMC_GET_ASYNC_NOTIF_VALUE`.
pub const OPTEE_SMC_FUNCID_GET_ASYNC_NOTIF_VALUE: u32 = 17;
/// Function number of `OPTEE_SMC_CALL_WITH_RPC_ARG`.
pub const OPTEE_SMC_FUNCID_CALL_WITH_RPC_ARG: u32 = 18;
/// Function number of `OPTEE_SMC_CALL_WITH_REGD_ARG`.
pub const OPTEE_SMC_FUNCID_CALL_WITH_REGD_ARG: u32 = 19;
/// Function number of `OPTEE_SMC_GET_PROTMEM_CONFIG`.
pub const OPTEE_SMC_FUNCID_GET_PROTMEM_CONFIG: u32 = 20;

// ---- Full function IDs ---------------------------------------------------------------------

/// Fast: number of calls in this API (see [`crate::uid::TEESHM_API_CALL_COUNT`]).
pub const OPTEE_SMC_CALLS_COUNT: u32 = optee_smc_call_val(
    OPTEE_SMC_32,
    OPTEE_SMC_FAST_CALL,
    OPTEE_SMC_OWNER_TRUSTED_OS_API,
    OPTEE_SMC_FUNCID_CALLS_COUNT,
);
/// Fast: API UID in a0..a3 ([`crate::uid::OPTEE_MSG_UID`]); the Linux driver probes with it.
pub const OPTEE_SMC_CALLS_UID: u32 = optee_smc_call_val(
    OPTEE_SMC_32,
    OPTEE_SMC_FAST_CALL,
    OPTEE_SMC_OWNER_TRUSTED_OS_API,
    OPTEE_SMC_FUNCID_CALLS_UID,
);
/// Fast: API revision in a0/a1 (2.0).
pub const OPTEE_SMC_CALLS_REVISION: u32 = optee_smc_call_val(
    OPTEE_SMC_32,
    OPTEE_SMC_FAST_CALL,
    OPTEE_SMC_OWNER_TRUSTED_OS_API,
    OPTEE_SMC_FUNCID_CALLS_REVISION,
);
/// Fast: trusted-OS UUID in a0..a3.
pub const OPTEE_SMC_CALL_GET_OS_UUID: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_OS_UUID);
/// Fast: trusted-OS revision in a0/a1, optional build id in a2.
pub const OPTEE_SMC_CALL_GET_OS_REVISION: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_OS_REVISION);
/// Yielding: resume a thread suspended by an RPC; a1..a3 carry the resume information.
pub const OPTEE_SMC_CALL_RETURN_FROM_RPC: u32 =
    optee_smc_std_call_val(OPTEE_SMC_FUNCID_RETURN_FROM_RPC);
/// Yielding: a1/a2 = PA (hi/lo) of an `optee_msg_arg`, a3 = cache attributes.
pub const OPTEE_SMC_CALL_WITH_ARG: u32 = optee_smc_std_call_val(OPTEE_SMC_FUNCID_CALL_WITH_ARG);
/// Fast: reserved (static) SHM: a1 = PA, a2 = size, a3 = cache attributes.
pub const OPTEE_SMC_GET_SHM_CONFIG: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_SHM_CONFIG);
/// Fast: configure the L2 cache controller mutex (legacy Arm32 platforms).
pub const OPTEE_SMC_L2CC_MUTEX: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_L2CC_MUTEX);
/// Fast: a1 in = normal-world caps, a1 out = secure caps ([`crate::caps`]).
pub const OPTEE_SMC_EXCHANGE_CAPABILITIES: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_EXCHANGE_CAPABILITIES);
/// Fast: hand back one cached RPC-arg SHM cookie (a1/a2) per call until `ENOTAVAIL`.
pub const OPTEE_SMC_DISABLE_SHM_CACHE: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_DISABLE_SHM_CACHE);
/// Fast: allow the secure world to cache RPC-arg SHM again.
pub const OPTEE_SMC_ENABLE_SHM_CACHE: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_ENABLE_SHM_CACHE);
/// Fast: release a secondary core (a1 = core, a2/a3 = NS entry PA).
pub const OPTEE_SMC_BOOT_SECONDARY: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_BOOT_SECONDARY);
/// Fast: hypervisor announces a guest (a1 = guest id); only valid with a7 = [`HYP_CLNT_ID`].
pub const OPTEE_SMC_VM_CREATED: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_VM_CREATED);
/// Fast: hypervisor reports a guest gone (a1 = guest id); only valid with a7 = [`HYP_CLNT_ID`].
pub const OPTEE_SMC_VM_DESTROYED: u32 = optee_smc_fast_call_val(OPTEE_SMC_FUNCID_VM_DESTROYED);
/// Fast: a1 = number of TEE threads (how many yielding calls may be in flight).
pub const OPTEE_SMC_GET_THREAD_COUNT: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_THREAD_COUNT);
/// Fast: enable asynchronous notifications.
pub const OPTEE_SMC_ENABLE_ASYNC_NOTIF: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_ENABLE_ASYNC_NOTIF);
/// Fast: fetch a pending asynchronous notification value.
pub const OPTEE_SMC_GET_ASYNC_NOTIF_VALUE: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_ASYNC_NOTIF_VALUE);
/// Yielding: like `CALL_WITH_ARG`, with the RPC `optee_msg_arg` placed right after the normal one.
pub const OPTEE_SMC_CALL_WITH_RPC_ARG: u32 =
    optee_smc_std_call_val(OPTEE_SMC_FUNCID_CALL_WITH_RPC_ARG);
/// Yielding: a1/a2 = cookie of registered SHM holding the arg, a3 = offset in it.
pub const OPTEE_SMC_CALL_WITH_REGD_ARG: u32 =
    optee_smc_std_call_val(OPTEE_SMC_FUNCID_CALL_WITH_REGD_ARG);
/// Fast: static protected-memory (SDP) range: a1 = PA, a2 = size, a3 = PA width.
pub const OPTEE_SMC_GET_PROTMEM_CONFIG: u32 =
    optee_smc_fast_call_val(OPTEE_SMC_FUNCID_GET_PROTMEM_CONFIG);

/// `OPTEE_SMC_L2CC_MUTEX` a1: get the mutex PA.
pub const OPTEE_SMC_L2CC_MUTEX_GET_ADDR: u32 = 0;
/// `OPTEE_SMC_L2CC_MUTEX` a1: set the mutex PA.
pub const OPTEE_SMC_L2CC_MUTEX_SET_ADDR: u32 = 1;
/// `OPTEE_SMC_L2CC_MUTEX` a1: enable the mutex.
pub const OPTEE_SMC_L2CC_MUTEX_ENABLE: u32 = 2;
/// `OPTEE_SMC_L2CC_MUTEX` a1: disable the mutex.
pub const OPTEE_SMC_L2CC_MUTEX_DISABLE: u32 = 3;

/// a3 of `CALL_WITH_ARG` / a3 of `GET_SHM_CONFIG`: normal cached (write-back) memory.
pub const OPTEE_SMC_SHM_CACHED: u32 = 1;

// ---- Return codes (a0 from the secure world) -----------------------------------------------

/// The function ID is not known to the trusted OS.
pub const OPTEE_SMC_RETURN_UNKNOWN_FUNCTION: u32 = 0xFFFF_FFFF;
/// Success.
pub const OPTEE_SMC_RETURN_OK: u32 = 0;
/// All TEE threads are busy; retry the yielding call later.
pub const OPTEE_SMC_RETURN_ETHREAD_LIMIT: u32 = 1;
/// The trusted OS is busy (e.g. shm cache not idle); retry later.
pub const OPTEE_SMC_RETURN_EBUSY: u32 = 2;
/// `RETURN_FROM_RPC` resume information was not valid.
pub const OPTEE_SMC_RETURN_ERESUME: u32 = 3;
/// Bad physical address (of the `optee_msg_arg`, a list page, ...).
pub const OPTEE_SMC_RETURN_EBADADDR: u32 = 4;
/// Bad or unknown command / sub-command.
pub const OPTEE_SMC_RETURN_EBADCMD: u32 = 5;
/// Out of secure memory.
pub const OPTEE_SMC_RETURN_ENOMEM: u32 = 6;
/// Not available (feature not configured, no more items, unknown NS capability bits).
pub const OPTEE_SMC_RETURN_ENOTAVAIL: u32 = 7;

// ---- RPC return codes ----------------------------------------------------------------------

/// Mask selecting the RPC prefix of a return code.
pub const OPTEE_SMC_RETURN_RPC_PREFIX_MASK: u32 = 0xFFFF_0000;
/// Prefix of every RPC return code: the thread is suspended, the normal world must serve it.
pub const OPTEE_SMC_RETURN_RPC_PREFIX: u32 = 0xFFFF_0000;
/// Mask selecting the RPC function of an RPC return code.
pub const OPTEE_SMC_RETURN_RPC_FUNC_MASK: u32 = 0x0000_FFFF;

/// RPC function: allocate memory for an RPC `optee_msg_arg` (a1 = size).
pub const OPTEE_SMC_RPC_FUNC_ALLOC: u32 = 0;
/// RPC function: free memory from `RPC_FUNC_ALLOC` (a1/a2 = cookie).
pub const OPTEE_SMC_RPC_FUNC_FREE: u32 = 2;
/// RPC function: a foreign (normal-world) interrupt arrived; just resume.
pub const OPTEE_SMC_RPC_FUNC_FOREIGN_INTR: u32 = 4;
/// RPC function: serve the RPC command in the `optee_msg_arg` whose SHM cookie is in a1/a2.
pub const OPTEE_SMC_RPC_FUNC_CMD: u32 = 5;

/// Builds an RPC return code from an RPC function (`OPTEE_SMC_RPC_VAL`).
pub const fn optee_smc_rpc_val(func: u32) -> u32 {
    (func & OPTEE_SMC_RETURN_RPC_FUNC_MASK) | OPTEE_SMC_RETURN_RPC_PREFIX
}

/// `OPTEE_SMC_RETURN_RPC_ALLOC`.
pub const OPTEE_SMC_RETURN_RPC_ALLOC: u32 = optee_smc_rpc_val(OPTEE_SMC_RPC_FUNC_ALLOC);
/// `OPTEE_SMC_RETURN_RPC_FREE`.
pub const OPTEE_SMC_RETURN_RPC_FREE: u32 = optee_smc_rpc_val(OPTEE_SMC_RPC_FUNC_FREE);
/// `OPTEE_SMC_RETURN_RPC_FOREIGN_INTR`.
pub const OPTEE_SMC_RETURN_RPC_FOREIGN_INTR: u32 =
    optee_smc_rpc_val(OPTEE_SMC_RPC_FUNC_FOREIGN_INTR);
/// `OPTEE_SMC_RETURN_RPC_CMD`.
pub const OPTEE_SMC_RETURN_RPC_CMD: u32 = optee_smc_rpc_val(OPTEE_SMC_RPC_FUNC_CMD);

/// True if a0 returned by the secure world asks the normal world to serve an RPC.
///
/// `UNKNOWN_FUNCTION` (0xFFFF_FFFF) carries the RPC prefix too, but is not an RPC; like the Linux
/// driver (`OPTEE_SMC_RETURN_IS_RPC`) it is excluded.
pub const fn is_rpc_return(a0: u32) -> bool {
    a0 != OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
        && (a0 & OPTEE_SMC_RETURN_RPC_PREFIX_MASK) == OPTEE_SMC_RETURN_RPC_PREFIX
}

/// RPC function of an RPC return code (`OPTEE_SMC_RETURN_GET_RPC_FUNC`).
pub const fn optee_smc_return_get_rpc_func(a0: u32) -> u32 {
    a0 & OPTEE_SMC_RETURN_RPC_FUNC_MASK
}

/// Hypervisor client id: the value of `a7` for calls made by the hypervisor itself, or by the
/// only normal world when there is no hypervisor.
///
/// With NS-virtualization the hypervisor writes the calling guest's id into `a7` of every SMC it
/// forwards, so the TEE knows on whose behalf it acts; a guest cannot choose it. Id 0 is reserved
/// for the hypervisor (and for a non-virtualized normal world); only it may issue
/// `OPTEE_SMC_VM_CREATED` / `OPTEE_SMC_VM_DESTROYED`. See [`crate::GuestId`].
pub const HYP_CLNT_ID: u16 = 0;

/// The eight argument registers of an SMC (`a0`..`a7`), in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmcRegs {
    /// `a0`..`a7`.
    pub a: [u64; 8],
}

impl SmcRegs {
    /// Registers with `a0 = func` and the given `a1`.. values.
    pub fn call(func: u32, args: &[u64]) -> Self {
        let mut a = [0u64; 8];
        a[0] = u64::from(func);
        for (dst, src) in a.iter_mut().skip(1).zip(args) {
            *dst = *src;
        }
        Self { a }
    }

    /// The same registers with `a7` (the client id) set.
    pub fn from_client(mut self, guest: crate::GuestId) -> Self {
        self.a[7] = u64::from(guest.raw());
        self
    }

    /// Registers carrying only the return code `code` in `a0`.
    pub fn ret(code: u32) -> Self {
        Self::call(code, &[])
    }

    /// `a0` as the 32-bit function id or return code it carries.
    pub fn a0(&self) -> u32 {
        (self.a[0] & 0xffff_ffff) as u32
    }
}

/// A 64-bit value from a pair of 32-bit registers, high word first (OP-TEE's
/// `reg_pair_to_64`). The upper halves of both registers are ignored: on SMC32 calls they are
/// not part of the value, and a caller may leave anything there.
pub const fn reg_pair(hi: u64, lo: u64) -> u64 {
    ((hi & 0xffff_ffff) << 32) | (lo & 0xffff_ffff)
}

/// A 64-bit value as the pair of 32-bit registers that carries it, high word first (OP-TEE's
/// `reg_pair_from_64`); the inverse of [`reg_pair`].
pub const fn split_pair(v: u64) -> (u64, u64) {
    (v >> 32, v & 0xffff_ffff)
}

/// Where SMCs go: the instruction on the machine, a function call in the simulator, or the next
/// layer down (a hypervisor forwarding to the TEE).
pub trait SmcConduit {
    /// Issues one SMC and returns the registers the callee answered with.
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reg_pair_round_trips_and_ignores_upper_halves() {
        for v in [
            0,
            1,
            0xffff_ffff,
            0x1_0000_0000,
            0x1234_5678_9abc_def0,
            u64::MAX,
        ] {
            let (hi, lo) = split_pair(v);
            assert!(hi <= 0xffff_ffff && lo <= 0xffff_ffff);
            assert_eq!(reg_pair(hi, lo), v);
        }
        assert_eq!(
            reg_pair(0xdead_0000_0000_0001, 0xbeef_0000_0000_0002),
            0x1_0000_0002
        );
    }

    #[test]
    fn function_ids_match_study_table() {
        let table: &[(u32, u32)] = &[
            (OPTEE_SMC_CALLS_COUNT, 0xBF00_FF00),
            (OPTEE_SMC_CALLS_UID, 0xBF00_FF01),
            (OPTEE_SMC_CALLS_REVISION, 0xBF00_FF03),
            (OPTEE_SMC_CALL_GET_OS_UUID, 0xB200_0000),
            (OPTEE_SMC_CALL_GET_OS_REVISION, 0xB200_0001),
            (OPTEE_SMC_CALL_RETURN_FROM_RPC, 0x3200_0003),
            (OPTEE_SMC_CALL_WITH_ARG, 0x3200_0004),
            (OPTEE_SMC_GET_SHM_CONFIG, 0xB200_0007),
            (OPTEE_SMC_L2CC_MUTEX, 0xB200_0008),
            (OPTEE_SMC_EXCHANGE_CAPABILITIES, 0xB200_0009),
            (OPTEE_SMC_DISABLE_SHM_CACHE, 0xB200_000A),
            (OPTEE_SMC_ENABLE_SHM_CACHE, 0xB200_000B),
            (OPTEE_SMC_BOOT_SECONDARY, 0xB200_000C),
            (OPTEE_SMC_VM_CREATED, 0xB200_000D),
            (OPTEE_SMC_VM_DESTROYED, 0xB200_000E),
            (OPTEE_SMC_GET_THREAD_COUNT, 0xB200_000F),
            (OPTEE_SMC_ENABLE_ASYNC_NOTIF, 0xB200_0010),
            (OPTEE_SMC_GET_ASYNC_NOTIF_VALUE, 0xB200_0011),
            (OPTEE_SMC_CALL_WITH_RPC_ARG, 0x3200_0012),
            (OPTEE_SMC_CALL_WITH_REGD_ARG, 0x3200_0013),
            (OPTEE_SMC_GET_PROTMEM_CONFIG, 0xB200_0014),
        ];
        for &(got, want) in table {
            assert_eq!(got, want, "{got:#x} != {want:#x}");
        }
    }

    #[test]
    fn fast_and_std_classification() {
        for id in [
            OPTEE_SMC_CALL_RETURN_FROM_RPC,
            OPTEE_SMC_CALL_WITH_ARG,
            OPTEE_SMC_CALL_WITH_RPC_ARG,
            OPTEE_SMC_CALL_WITH_REGD_ARG,
        ] {
            assert!(!is_fast_call(id), "{id:#x}");
            assert!(!is_smc64(id));
            assert_eq!(optee_smc_owner_num(id), OPTEE_SMC_OWNER_TRUSTED_OS);
        }
        for id in [
            OPTEE_SMC_CALLS_COUNT,
            OPTEE_SMC_EXCHANGE_CAPABILITIES,
            OPTEE_SMC_VM_CREATED,
            OPTEE_SMC_GET_PROTMEM_CONFIG,
        ] {
            assert!(is_fast_call(id), "{id:#x}");
        }
        assert_eq!(
            optee_smc_owner_num(OPTEE_SMC_CALLS_UID),
            OPTEE_SMC_OWNER_TRUSTED_OS_API
        );
        assert_eq!(optee_smc_func_num(OPTEE_SMC_VM_DESTROYED), 14);
        assert!(is_smc64(optee_smc_call_val(OPTEE_SMC_64, 0, 50, 4)));
        // Owner and function are masked to their field widths, like the C macro.
        assert_eq!(
            optee_smc_call_val(0, 0, 0x40 | 50, 0x1_0004),
            OPTEE_SMC_CALL_WITH_ARG
        );
    }

    #[test]
    fn return_codes() {
        assert_eq!(OPTEE_SMC_RETURN_RPC_ALLOC, 0xFFFF_0000);
        assert_eq!(OPTEE_SMC_RETURN_RPC_FREE, 0xFFFF_0002);
        assert_eq!(OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0xFFFF_0004);
        assert_eq!(OPTEE_SMC_RETURN_RPC_CMD, 0xFFFF_0005);
        for rc in [
            OPTEE_SMC_RETURN_RPC_ALLOC,
            OPTEE_SMC_RETURN_RPC_FREE,
            OPTEE_SMC_RETURN_RPC_FOREIGN_INTR,
            OPTEE_SMC_RETURN_RPC_CMD,
        ] {
            assert!(is_rpc_return(rc), "{rc:#x}");
        }
        assert_eq!(optee_smc_return_get_rpc_func(OPTEE_SMC_RETURN_RPC_CMD), 5);
        for rc in [
            OPTEE_SMC_RETURN_OK,
            OPTEE_SMC_RETURN_ETHREAD_LIMIT,
            OPTEE_SMC_RETURN_EBUSY,
            OPTEE_SMC_RETURN_ERESUME,
            OPTEE_SMC_RETURN_EBADADDR,
            OPTEE_SMC_RETURN_EBADCMD,
            OPTEE_SMC_RETURN_ENOMEM,
            OPTEE_SMC_RETURN_ENOTAVAIL,
            OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
        ] {
            assert!(!is_rpc_return(rc), "{rc:#x}");
        }
        assert_eq!(
            [
                OPTEE_SMC_RETURN_OK,
                OPTEE_SMC_RETURN_ETHREAD_LIMIT,
                OPTEE_SMC_RETURN_EBUSY,
                OPTEE_SMC_RETURN_ERESUME,
                OPTEE_SMC_RETURN_EBADADDR,
                OPTEE_SMC_RETURN_EBADCMD,
                OPTEE_SMC_RETURN_ENOMEM,
                OPTEE_SMC_RETURN_ENOTAVAIL
            ],
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(HYP_CLNT_ID, 0);
    }
}
