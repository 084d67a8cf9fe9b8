//! One normal world and no hypervisor, as this firmware boots it (the client at NS-EL1): the
//! core answers the hypervisor's VM calls as unknown functions, does not offer VIRTUALIZATION,
//! and ignores a7: every call is the normal world's own, whatever a7 holds.

use super::{
    Ctx, GUEST, Outcome, bytes, check_core, drv, fast_as, invoke_raw, pattern_mismatch, ret_of,
    teec,
};
use crate::ram::NsRam;
use crate::smc::Conduit;
use alloc::format;
use alloc::string::String;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_nw::client::{Context, Session, SharedMemory, ShmFlags};
use teeshm_nw::{Driver, PAGE_SIZE};

/// Client ids a yielding call carries in a7, each of which must change nothing: 0, small ones,
/// the largest 16-bit VM id, ones a hypervisor would refuse (above 0xffff), all ones.
const A7S: [u64; 8] = [0, 1, GUEST, 77, 0xffff, 0x1_0000, 1 << 32, u64::MAX];

/// FILL of the whole of `shm` with `seed` through a raw RMEM (so any session and any a7 can
/// name it); returns the message's `ret`.
fn fill_by_cookie(
    ctx: &mut Ctx,
    s: &Session,
    shm: &SharedMemory,
    seed: u64,
) -> Result<u32, String> {
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, shm.size(), shm.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(seed, 0, 0)),
    ];
    ret_of(invoke_raw(ctx, s, cmd::FILL, &params))
}

pub(super) fn single_normal_world(ctx: &mut Ctx, s: &Session, ram: &NsRam) -> Outcome {
    // The hypervisor's calls: from a7 = 0, where a hypervisor would make them, and from 5.
    for a7 in [0, GUEST] {
        for (what, func) in [
            ("VM_CREATED", OPTEE_SMC_VM_CREATED),
            ("VM_DESTROYED", OPTEE_SMC_VM_DESTROYED),
        ] {
            let r = fast_as(a7, func, &[GUEST]).a0();
            ensure!(
                r == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
                "{what}({GUEST}) with a7 = {a7} answered {r:#x}"
            );
        }
    }
    // The capabilities do not depend on a7 and never offer VIRTUALIZATION.
    let caps0 = fast_as(0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
    let caps5 = fast_as(GUEST, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
    ensure!(
        caps0.a0() == OPTEE_SMC_RETURN_OK && caps0.a[..4] == caps5.a[..4],
        "EXCHANGE_CAPABILITIES with a7 = 0 {:#x?}, with a7 = {GUEST} {:#x?}",
        &caps0.a[..4],
        &caps5.a[..4]
    );
    let caps = SecureCaps::from_bits_truncate((caps5.a[1] & 0xffff_ffff) as u32);
    ensure!(
        !caps.contains(SecureCaps::VIRTUALIZATION),
        "VIRTUALIZATION offered: {caps:?}"
    );

    // A buffer registered with a7 = 0 is found with a7 = 5, in a session opened with a7 = 0.
    let shm = ctx
        .allocate_shared_memory(2 * PAGE_SIZE + 5, ShmFlags::INOUT)
        .map_err(teec)?;
    let d5 = Driver::probe(Conduit::new(GUEST), ram.clone()).map_err(drv)?;
    let mut c5 = Context::new(d5);
    let ret = fill_by_cookie(&mut c5, s, &shm, 5)?;
    ensure!(
        ret == TEE_SUCCESS,
        "a7 = {GUEST}: FILL of a buffer registered with a7 = 0 answered {ret:#x}"
    );
    ensure!(
        pattern_mismatch(&bytes(ctx, shm.buffer())?, 5).is_none(),
        "a7 = {GUEST}: FILL wrote the wrong bytes"
    );
    // And the other way: what a7 = 5 opened and registered, a7 = 0 uses, unregisters, closes.
    let s5 = c5.open_session(MEMTEST_UUID).map_err(teec)?;
    let shm5 = c5
        .allocate_shared_memory(PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let ret = fill_by_cookie(ctx, &s5, &shm5, 6)?;
    ensure!(
        ret == TEE_SUCCESS,
        "a7 = 0: FILL of a buffer registered with a7 = {GUEST}, in its session: {ret:#x}"
    );
    ensure!(
        pattern_mismatch(&bytes(ctx, shm5.buffer())?, 6).is_none(),
        "a7 = 0: FILL wrote the wrong bytes"
    );
    ctx.driver_mut().unregister(shm5.cookie()).map_err(drv)?;
    ctx.close_session(s5).map_err(teec)?;
    let mut pool = ram.clone();
    shm5.buffer().clone().free(&mut pool);
    drop(c5);

    // A yielding call runs whatever a7 holds, and a fast call is answered.
    for (i, &a7) in A7S.iter().enumerate() {
        ctx.driver_mut().conduit_mut().client_id = a7;
        let ret = fill_by_cookie(ctx, s, &shm, 0x100 + i as u64);
        let threads = fast_as(a7, OPTEE_SMC_GET_THREAD_COUNT, &[]);
        ctx.driver_mut().conduit_mut().client_id = 0;
        let ret = ret?;
        ensure!(ret == TEE_SUCCESS, "a7 = {a7:#x}: FILL answered {ret:#x}");
        ensure!(
            pattern_mismatch(&bytes(ctx, shm.buffer())?, 0x100 + i as u64).is_none(),
            "a7 = {a7:#x}: FILL wrote the wrong bytes"
        );
        ensure!(
            threads.a0() == OPTEE_SMC_RETURN_OK,
            "a7 = {a7:#x}: GET_THREAD_COUNT answered {:#x}",
            threads.a0()
        );
    }
    ctx.release_shared_memory(shm).map_err(teec)?;
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "VM_CREATED and VM_DESTROYED (a7 = 0 and {GUEST}): UNKNOWN_FUNCTION; capabilities the \
         same for a7 = {GUEST}, no VIRTUALIZATION; a7 = {GUEST} FILLs a buffer registered with \
         a7 = 0, a7 = 0 uses, unregisters and closes what a7 = {GUEST} registered and opened; \
         FILL ran with a7 = {}",
        A7S.map(|a| format!("{a:#x}")).join(", ")
    ))
}
