//! The VM life cycle as the hypervisor (client id 0) drives it: a guest created, used and
//! destroyed, and what it may not do itself.

use super::{
    Ctx, GUEST, Outcome, bytes, check_core, drv, fast_as, invoke_raw, op, pattern_mismatch, ret_of,
    teec,
};
use crate::ram::NsRam;
use crate::smc::Conduit;
use alloc::format;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_nw::client::{Context, Param, Session, ShmFlags};
use teeshm_nw::driver::header;
use teeshm_nw::{Driver, PAGE_SIZE};

pub(super) fn vm_lifecycle(ctx: &mut Ctx, s: &Session, ram: &NsRam) -> Outcome {
    let ok = |r: SmcRegs| r.a0() == OPTEE_SMC_RETURN_OK;
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "VM_CREATED({GUEST}) refused"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "a second VM_CREATED({GUEST}) accepted"
    );
    ensure!(
        !ok(fast_as(GUEST, OPTEE_SMC_VM_CREATED, &[6])),
        "VM_CREATED from client {GUEST} accepted"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[0])),
        "VM_CREATED(0) accepted"
    );
    // The normal world now calls for guest 5 (a7 = 5): probe, session, a registered buffer.
    let d5 = Driver::probe(Conduit::new(GUEST), ram.clone()).map_err(drv)?;
    let mut c5 = Context::new(d5);
    let s5 = c5.open_session(MEMTEST_UUID).map_err(teec)?;
    let shm5 = c5
        .allocate_shared_memory(2 * PAGE_SIZE + 5, ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm5),
        Param::ValueInput { a: 5, b: 0 },
        Param::None,
        Param::None,
    ]);
    c5.invoke_command(&s5, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        pattern_mismatch(&bytes(&c5, shm5.buffer())?, 5).is_none(),
        "guest {GUEST}'s FILL wrong"
    );
    // Guest 0 cannot use guest 5's cookie.
    let foreign = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, 16, shm5.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &foreign))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "guest 0 used guest {GUEST}'s cookie: {ret:#x}"
    );
    let (_, mapped_before, _, _) = check_core();
    // The hypervisor destroys guest 5: everything of it goes.
    ensure!(
        !ok(fast_as(GUEST, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "VM_DESTROYED from client {GUEST} accepted"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "VM_DESTROYED({GUEST}) refused"
    );
    let (disagreements, mapped_after, _, _) = check_core();
    ensure!(
        disagreements == 0,
        "{disagreements} disagreements after the sweep"
    );
    ensure!(
        mapped_after < mapped_before,
        "guest {GUEST}'s mapping survived: {mapped_before} -> {mapped_after} pages"
    );
    let reply = c5
        .driver_mut()
        .call(header(OPTEE_MSG_CMD_OPEN_SESSION), &[])
        .map_err(drv)?;
    ensure!(
        reply.a0 == OPTEE_SMC_RETURN_ENOTAVAIL,
        "a call with a7 = {GUEST} now answered {:#x}",
        reply.a0
    );
    let fast5 = fast_as(GUEST, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0();
    ensure!(
        fast5 == OPTEE_SMC_RETURN_ENOTAVAIL,
        "a fast call with a7 = {GUEST} answered {fast5:#x}"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "destroying an unknown guest is not OK"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[0])),
        "VM_DESTROYED(0) accepted"
    );
    // A new guest 5 knows nothing of the old one's cookie.
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "VM_CREATED({GUEST}) again refused"
    );
    let d5 = Driver::probe(Conduit::new(GUEST), ram.clone()).map_err(drv)?;
    let mut c5b = Context::new(d5);
    let s5b = c5b.open_session(MEMTEST_UUID).map_err(teec)?;
    let ret = ret_of(invoke_raw(&mut c5b, &s5b, cmd::FILL, &foreign))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "the new guest {GUEST} found the old cookie: {ret:#x}"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "final VM_DESTROYED refused"
    );
    // The TEE forgot guest 5's pages: the normal world may reuse them.
    let pages = shm5.buffer().clone();
    let mut ram5 = ram.clone();
    pages.free(&mut ram5);
    let (disagreements, _, _, _) = check_core();
    ensure!(
        disagreements == 0,
        "{disagreements} disagreements at the end"
    );
    Ok(format!(
        "guest {GUEST} made, used (session, buffer, FILL), swept by VM_DESTROYED ({mapped_before} -> {mapped_after} window pages); \
         then a7 = {GUEST} gets ENOTAVAIL; only client 0 may create or destroy"
    ))
}
