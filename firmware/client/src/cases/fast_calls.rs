//! Cases over raw fast calls: identity, capabilities, PSCI and SMCCC at EL3, FP/SIMD state
//! across SMCs, unknown function ids.

use super::{Outcome, fast};
use crate::smc;
use alloc::format;
use teeshm_abi::caps::{SecureCaps, rpc_arg_num_params};
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_fw_common::fid;

pub(super) fn identity() -> Outcome {
    let words = |r: SmcRegs| [r.a[0], r.a[1], r.a[2], r.a[3]].map(|w| (w & 0xffff_ffff) as u32);
    let got = words(fast(OPTEE_SMC_CALLS_UID, &[]));
    ensure!(got == uid::OPTEE_MSG_UID, "CALLS_UID {got:08x?}");
    let r = fast(OPTEE_SMC_CALLS_REVISION, &[]);
    ensure!(
        r.a[0] == u64::from(uid::OPTEE_MSG_REVISION_MAJOR)
            && r.a[1] == u64::from(uid::OPTEE_MSG_REVISION_MINOR),
        "CALLS_REVISION {}.{}",
        r.a[0],
        r.a[1]
    );
    let os = words(fast(OPTEE_SMC_CALL_GET_OS_UUID, &[]));
    ensure!(os == uid::OPTEE_MSG_OS_OPTEE_UUID, "GET_OS_UUID {os:08x?}");
    let r = fast(OPTEE_SMC_CALL_GET_OS_REVISION, &[]);
    ensure!(
        r.a[0] == u64::from(uid::TEESHM_OS_REVISION_MAJOR)
            && r.a[1] == u64::from(uid::TEESHM_OS_REVISION_MINOR),
        "GET_OS_REVISION {}.{}",
        r.a[0],
        r.a[1]
    );
    let count = fast(OPTEE_SMC_CALLS_COUNT, &[]).a[0];
    ensure!(
        count == u64::from(uid::TEESHM_API_CALL_COUNT),
        "CALLS_COUNT {count}"
    );
    Ok(format!(
        "OP-TEE message API UID {:08x}-..., revision {}.{}, OS UUID {:08x}-..., OS revision {}.{}, {count} calls",
        got[0],
        uid::OPTEE_MSG_REVISION_MAJOR,
        uid::OPTEE_MSG_REVISION_MINOR,
        os[0],
        uid::TEESHM_OS_REVISION_MAJOR,
        uid::TEESHM_OS_REVISION_MINOR
    ))
}

pub(super) fn capabilities() -> Outcome {
    let r = fast(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
    ensure!(
        r.a0() == OPTEE_SMC_RETURN_OK,
        "EXCHANGE_CAPABILITIES answered {:#x}",
        r.a[0]
    );
    let caps = SecureCaps::from_bits_truncate((r.a[1] & 0xffff_ffff) as u32);
    let want = SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL | SecureCaps::RPC_ARG;
    ensure!(caps.contains(want), "capabilities {caps:?}");
    // One normal world booted at NS-EL1, no hypervisor: the core does not offer it.
    ensure!(
        !caps.contains(SecureCaps::VIRTUALIZATION),
        "VIRTUALIZATION offered to a normal world without a hypervisor: {caps:?}"
    );
    ensure!(
        !caps.contains(SecureCaps::HAVE_RESERVED_SHM),
        "a reserved pool is reported"
    );
    let rpc_params = rpc_arg_num_params((r.a[3] & 0xffff_ffff) as u32);
    let unknown = fast(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0x8000_0000]).a0();
    ensure!(
        unknown != OPTEE_SMC_RETURN_OK,
        "unknown normal-world capability bits accepted"
    );
    let pool = fast(OPTEE_SMC_GET_SHM_CONFIG, &[]).a0();
    ensure!(
        pool == OPTEE_SMC_RETURN_ENOTAVAIL,
        "GET_SHM_CONFIG answered {pool:#x}"
    );
    let r = fast(OPTEE_SMC_GET_THREAD_COUNT, &[]);
    ensure!(
        r.a0() == OPTEE_SMC_RETURN_OK && r.a[1] > 0,
        "GET_THREAD_COUNT {:#x} {}",
        r.a[0],
        r.a[1]
    );
    Ok(format!(
        "{:#x} (dynamic SHM, NULL memrefs, RPC arg of {rpc_params} params; no virtualization), no static pool, {} threads",
        caps.bits(),
        r.a[1]
    ))
}

pub(super) fn psci() -> Outcome {
    use fid::psci;
    let low = |v: u64| (v & 0xffff_ffff) as u32 as i32;
    let v = fast(psci::VERSION, &[]).a[0];
    ensure!(v == psci::VERSION_1_1, "PSCI_VERSION {v:#x}");
    for f in [
        psci::VERSION,
        psci::FEATURES,
        psci::SYSTEM_OFF,
        psci::SYSTEM_RESET,
        psci::CPU_ON_64,
        psci::CPU_OFF,
        psci::AFFINITY_INFO_64,
        psci::MIGRATE_INFO_TYPE,
    ] {
        let r = low(fast(psci::FEATURES, &[u64::from(f)]).a[0]);
        ensure!(r == 0, "PSCI_FEATURES({f:#x}) = {r}");
    }
    let me = teeshm_fw_common::cpu::mpidr() & 0xff_00ff_ffff;
    let err = |v: u64| low(v);
    let r = low(fast(psci::CPU_ON_64, &[me, 0x4020_0000, 0]).a[0]);
    ensure!(
        r == err(psci::ALREADY_ON),
        "CPU_ON of the calling CPU answered {r}"
    );
    let r = low(fast(psci::CPU_ON_64, &[0x100, 0x4020_0000, 0]).a[0]);
    ensure!(
        r == err(psci::INVALID_PARAMETERS),
        "CPU_ON of MPIDR 0x100 (no such CPU) answered {r}"
    );
    let r = fast(psci::AFFINITY_INFO_64, &[me, 0]).a[0];
    ensure!(
        r == psci::AFFINITY_ON,
        "AFFINITY_INFO of the calling CPU: {r:#x}"
    );
    let r = low(fast(psci::AFFINITY_INFO_64, &[0x100, 0]).a[0]);
    ensure!(
        r == err(psci::INVALID_PARAMETERS),
        "AFFINITY_INFO of MPIDR 0x100 answered {r}"
    );
    let r = fast(psci::MIGRATE_INFO_TYPE, &[]).a[0];
    ensure!(r == psci::TOS_NOT_PRESENT_MP, "MIGRATE_INFO_TYPE {r}");
    let r = fast(fid::arch::SMCCC_VERSION, &[]).a[0];
    ensure!(r == fid::arch::VERSION_1_1, "SMCCC_VERSION {r:#x}");
    Ok(
        "PSCI 1.1 (VERSION, FEATURES, CPU_ON: ALREADY_ON for itself, INVALID_PARAMETERS for no CPU; AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET), SMCCC 1.1"
            .into(),
    )
}

pub(super) fn fp_preserved() -> Outcome {
    let values = [
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
        0x5a5a_a5a5_3c3c_c3c3,
    ];
    let [a, b, c] = values;
    let want = [b, b, c, c, a];
    for (what, func) in [
        ("a call served by the core (CALLS_UID)", OPTEE_SMC_CALLS_UID),
        ("a call answered at EL3 (PSCI_VERSION)", fid::psci::VERSION),
    ] {
        let got = smc::fp_after_smc(func, values);
        ensure!(
            got[..5] == want,
            "after {what}: q0.hi, q8, q31 = {:x?}, expected {want:x?}",
            &got[..5]
        );
        ensure!(
            got[5] & 0xc0_0000 == 0xc0_0000,
            "after {what}: FPCR {:#x} lost its rounding mode",
            got[5]
        );
    }
    Ok("q0, q8, q31 and FPCR come back unchanged from the core and from EL3".into())
}

#[cfg(not(feature = "fault-test"))]
pub(super) fn unknown_ids() -> Outcome {
    let unk = u64::from(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION);
    for (what, func) in [
        ("an unknown Trusted OS fast call", 0xB200_00F0u32),
        ("an unknown yielding call", 0x3200_00F0),
        (
            "the dispatcher's CALL_DONE from the normal world",
            fid::SECURE_CALL_DONE,
        ),
        (
            "the dispatcher's ENTRY_DONE from the normal world",
            fid::SECURE_ENTRY_DONE,
        ),
        ("a Trusted Application call", 0xB000_0001),
        ("a hypervisor service call", 0xC500_0000),
        ("an unknown SiP call", 0x8200_0001),
        (
            "the fault-test call (absent from this build)",
            fid::SIP_TEESHM_FAULT_TEST,
        ),
    ] {
        let r = fast(func, &[1, 2, 3]).a[0] & 0xffff_ffff;
        ensure!(r == unk, "{what} ({func:#x}) answered {r:#x}");
    }
    Ok("8 ids, each answered UNKNOWN_FUNCTION and nothing else happened".into())
}
