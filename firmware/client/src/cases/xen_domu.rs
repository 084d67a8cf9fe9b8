//! The client as a guest of Xen (`xen-domu`, `cargo xtask xen`'s domu3): the same driver and
//! SMCs, now trapped by Xen and passed through its unmodified OP-TEE mediator, which translates
//! every page address and limits each domain (docs/xen.md). A well-behaved part first, then a
//! guest that misbehaves on purpose and is destroyed by dom0 while it does: two calls left
//! waiting in RPCs nobody will answer, one holding a buffer the guest unregistered under it,
//! all of its threads taken, an RPC answer for a thread that waits for nothing. Only this guest
//! pays: the other domains run their tests meanwhile, and after `xl destroy` the core must hold
//! nothing of it (`target/xen/report.json`).
//!
//! No SiP call reaches the firmware from here (Xen answers them `SMC_UNK`), so this side checks
//! only what it sees; the core's agreement check runs after power-off.

use super::suspend::{self, Suspended};
use super::{
    Ctx, Outcome, buf, bytes, case, drv, free, invoke_raw, marker, op, pattern_mismatch, ret_of,
    teec,
};
use crate::ram::NsRam;
use crate::smc::Conduit;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use sha2::{Digest, Sha256};
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_fw_common::println;
use teeshm_nw::client::{Context, Param, Session, ShmFlags};
use teeshm_nw::{Driver, PAGE_SIZE};

/// Xen 4.17's bound on one buffer's pages (`MAX_SHM_BUFFER_PG` in its optee.c).
const XEN_MAX_BUFFER_PAGES: u64 = 129;

/// Runs the cases; returns a line naming the calls left waiting (they stay so, unanswered,
/// until Xen destroys the domain: dropping their records answers nothing).
pub fn run() -> String {
    println!(
        "client: teeshm's Rust client as a Xen domU (NS-EL1, MMU off), its SMCs trapped by Xen"
    );
    let ram = NsRam::new();
    let driver = match Driver::probe(Conduit::new(0), ram) {
        Ok(d) => d,
        Err(e) => {
            crate::FAILED.fetch_add(1, Ordering::Relaxed);
            println!("FAIL driver probe through Xen's mediator: {e}");
            return waiting_note(&[]);
        }
    };
    let caps = driver.caps();
    case("driver probe through Xen's mediator", || {
        ensure!(
            caps.contains(SecureCaps::DYNAMIC_SHM),
            "no DYNAMIC_SHM in {:#x}",
            caps.bits()
        );
        ensure!(
            !caps.contains(SecureCaps::RPC_ARG),
            "Xen 4.17 passes no RPC_ARG, yet {:#x}",
            caps.bits()
        );
        Ok(format!(
            "caps {:#x} (Xen's filter: DYNAMIC_SHM kept, RPC_ARG dropped): calls are CALL_WITH_ARG",
            caps.bits()
        ))
    });
    let mut ctx = Context::new(driver);
    let session = match ctx.open_session(MEMTEST_UUID) {
        Ok(s) => s,
        Err(e) => {
            crate::FAILED.fetch_add(1, Ordering::Relaxed);
            println!("FAIL open a session through Xen: {}", teec(e));
            return waiting_note(&[]);
        }
    };
    case("temporary memrefs up to Xen's 129 pages", || {
        // temporary_of's COPY output is 100 B longer than the size, at the same offset: at
        // 0xfff, this size makes it 129 pages.
        let largest = XEN_MAX_BUFFER_PAGES * PAGE_SIZE - 0xfff - 100;
        let total = super::memrefs::temporary_of(
            &mut ctx,
            &session,
            &[(0, 1), (0xfff, 2), (0xfff, largest)],
        )?;
        Ok(format!(
            "FILL and COPY of 1 B, 2 B across a page line, {largest} B at 0xfff (up to 129 pages): {total} bytes each way, every byte checked"
        ))
    });
    case(
        "a temporary memref of 130 pages: refused, the guest goes on",
        || over_xen_bound(&mut ctx, &session),
    );
    case(
        "a registered buffer of 40 scattered pages: FILL, SHA-256",
        || registered(&mut ctx, &session),
    );
    let mut waiting = Vec::new();
    case(
        "misbehaving: a call left waiting in an RPC, holding a buffer; the buffer unregistered under it",
        || left_waiting_then_unregistered(&mut ctx, &session, &mut waiting),
    );
    case(
        "misbehaving: every thread of this guest left waiting, the next call refused",
        || all_threads_waiting(&mut ctx, &session, &mut waiting),
    );
    case(
        "misbehaving: an RPC answer for a thread that waits for nothing",
        || answer_for_nobody(&mut ctx, &waiting),
    );
    waiting_note(&waiting)
}

/// A temporary memref one page over Xen's bound: an error for this call only.
fn over_xen_bound(ctx: &mut Ctx, s: &Session) -> Outcome {
    let size = XEN_MAX_BUFFER_PAGES * PAGE_SIZE + 1;
    let out = buf(ctx, size, 0, |_| 0x5a)?;
    let mut o = op([
        Param::TempOutput(out),
        Param::ValueInput { a: 9, b: 0 },
        Param::None,
        Param::None,
    ]);
    let refused = ctx.invoke_command(s, cmd::FILL, &mut o);
    let [Param::TempOutput(out), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let untouched = bytes(ctx, &out)?.iter().all(|&b| b == 0x5a);
    free(ctx, out);
    let e = match refused {
        Ok(()) => return Err("FILL of 130 pages passed Xen's 129-page bound".into()),
        Err(e) => e,
    };
    ensure!(untouched, "the refused FILL wrote into the buffer");
    let total = super::memrefs::temporary_of(ctx, s, &[(0x10, 3 * PAGE_SIZE)])?;
    Ok(format!(
        "{}, nothing written; a FILL and COPY of {total} B right after work",
        teec(e)
    ))
}

/// A registered buffer, filled by the TEE and hashed by it, checked here.
fn registered(ctx: &mut Ctx, s: &Session) -> Outcome {
    let size = 40 * PAGE_SIZE - 0x123 - 7;
    let b = buf(ctx, size, 0x123, |_| 0)?;
    let shm = ctx
        .register_shared_memory(b.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x61, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let filled = pattern_mismatch(&bytes(ctx, &b)?, 0x61);
    let data: Vec<u8> = (0..size).map(marker(0x62)).collect();
    b.write(ctx.driver().ram(), 0, &data)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let digest_buf = buf(ctx, 32, 0x40, |_| 0)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::TempOutput(digest_buf),
        Param::None,
        Param::None,
    ]);
    let hashed = ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec);
    let [_, Param::TempOutput(digest_buf), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let digest = bytes(ctx, &digest_buf)?;
    free(ctx, digest_buf);
    ctx.release_shared_memory(shm).map_err(teec)?;
    free(ctx, b);
    hashed?;
    if let Some(i) = filled {
        return Err(format!("FILL: byte {i} wrong"));
    }
    ensure!(
        digest.as_slice() == Sha256::digest(&data).as_slice(),
        "SHA-256 differs from the local one"
    );
    Ok(format!(
        "{size} B at offset 0x123 on 40 pages Xen translated: every byte filled, SHA-256 = local"
    ))
}

/// Starts RPC_BUFFER holding `hold` and leaves it waiting in its first RPC.
fn leave_waiting(
    ctx: &mut Ctx,
    s: &Session,
    hold: &[(u64, u64)],
    waiting: &mut Vec<Suspended>,
) -> Result<u64, String> {
    match suspend::start(ctx, s, 4096, 0x77, hold)? {
        Ok(call) => {
            let func = call.rpc_func();
            let thread = call.thread();
            waiting.push(call);
            ensure!(
                func == OPTEE_SMC_RPC_FUNC_ALLOC,
                "the first RPC is {func:#x}, not RPC_FUNC_ALLOC (no RPC arg under Xen)"
            );
            Ok(thread)
        }
        Err(a0) => Err(format!("the call was refused with {a0:#x}")),
    }
}

/// A call holds a registered buffer and waits; the guest unregisters the buffer anyway.
fn left_waiting_then_unregistered(
    ctx: &mut Ctx,
    s: &Session,
    waiting: &mut Vec<Suspended>,
) -> Outcome {
    let size = 3 * PAGE_SIZE - 0x40;
    let b = buf(ctx, size, 0x40, |_| 0)?;
    let cookie = ctx.driver_mut().new_cookie();
    ctx.driver_mut().register(&b, cookie).map_err(drv)?;
    let fill = |ctx: &mut Ctx, seed: u64| {
        let params = [
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, Rmem::new(0, size, cookie)),
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(seed, 0, 0)),
        ];
        ret_of(invoke_raw(ctx, s, cmd::FILL, &params))
    };
    let first = fill(ctx, 0x21)?;
    ensure!(first == TEE_SUCCESS, "the first FILL answered {first:#x}");
    let thread = leave_waiting(ctx, s, &[(cookie, size)], waiting)?;
    // The Linux driver frees the pages whatever UNREGISTER answers; teeshm answers SUCCESS at
    // once and revokes the waiting call's use, so Xen unpins the pages too.
    let unregistered = ctx.driver_mut().unregister(cookie);
    let again = ctx.driver_mut().unregister(cookie);
    let as_memref = fill(ctx, 0x22)?;
    let ours: Vec<u8> = (0..size).map(marker(0x5a)).collect();
    b.write(ctx.driver().ram(), 0, &ours)
        .map_err(|e| format!("guest RAM: {e}"))?;
    // A fresh buffer works while the call still waits.
    let other = buf(ctx, 2 * PAGE_SIZE, 0x10, |_| 0)?;
    let other_cookie = ctx.driver_mut().new_cookie();
    ctx.driver_mut()
        .register(&other, other_cookie)
        .map_err(drv)?;
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, 2 * PAGE_SIZE, other_cookie),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(0x23, 0, 0)),
    ];
    let other_ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    let other_ok = pattern_mismatch(&bytes(ctx, &other)?, 0x23).is_none();
    ctx.driver_mut().unregister(other_cookie).map_err(drv)?;
    free(ctx, other);
    let untouched = bytes(ctx, &b)? == ours;
    // `b`'s pages stay lent: the waiting call is never answered (Xen destroys the domain).
    unregistered.map_err(|e| format!("UNREGISTER of the buffer in use: {e}"))?;
    ensure!(again.is_err(), "a second UNREGISTER of the cookie passed");
    ensure!(
        as_memref != TEE_SUCCESS,
        "a FILL through the unregistered cookie passed"
    );
    ensure!(
        other_ret == TEE_SUCCESS && other_ok,
        "a fresh buffer's FILL answered {other_ret:#x} (bytes right: {other_ok})"
    );
    ensure!(untouched, "the TEE wrote into the unregistered buffer");
    Ok(format!(
        "thread {thread} waits in RPC_FUNC_ALLOC holding the buffer; UNREGISTER: SUCCESS at once, \
         again: refused, FILL through the cookie: {as_memref:#x}; a fresh buffer works meanwhile"
    ))
}

/// Leaves calls waiting until the guest's threads are all taken: the next call is refused
/// with `ETHREAD_LIMIT` (by Xen, which counts a domain's calls against the thread count the
/// core gave it, or by the core). Xen answers a guest's `GET_THREAD_COUNT` itself (unknown),
/// so the bound is found by trying.
fn all_threads_waiting(ctx: &mut Ctx, s: &Session, waiting: &mut Vec<Suspended>) -> Outcome {
    const MOST: usize = 16;
    let refused = loop {
        ensure!(
            waiting.len() < MOST,
            "{MOST} calls waiting and none refused"
        );
        match suspend::start(ctx, s, 4096, 0x78, &[])? {
            Ok(call) => waiting.push(call),
            Err(a0) => break a0,
        }
    };
    ensure!(
        refused == OPTEE_SMC_RETURN_ETHREAD_LIMIT,
        "a call was refused with {refused:#x}"
    );
    ensure!(
        waiting.len() >= 2,
        "only {} call(s) could wait",
        waiting.len()
    );
    Ok(format!(
        "{} calls waiting in RPCs; one more: ETHREAD_LIMIT",
        waiting.len()
    ))
}

/// `RETURN_FROM_RPC` naming a thread none of this guest's calls waits in.
fn answer_for_nobody(ctx: &mut Ctx, waiting: &[Suspended]) -> Outcome {
    let busy: Vec<u64> = waiting.iter().map(Suspended::thread).collect();
    let nobody = (0..64).find(|t| !busy.contains(t)).unwrap_or(63) + 0x100;
    let r = ctx.driver_mut().conduit_mut().smc(SmcRegs::call(
        OPTEE_SMC_CALL_RETURN_FROM_RPC,
        &[0, 0, nobody],
    ));
    ensure!(
        r.a0() == OPTEE_SMC_RETURN_ERESUME,
        "RETURN_FROM_RPC to thread {nobody:#x} answered {:#x}",
        r.a0()
    );
    Ok(format!(
        "RETURN_FROM_RPC to thread {nobody:#x}: ERESUME; the waiting threads {busy:?} untouched"
    ))
}

/// What the domain prints before it waits to be destroyed.
fn waiting_note(waiting: &[Suspended]) -> String {
    let threads: Vec<u64> = waiting.iter().map(Suspended::thread).collect();
    format!(
        "client: {} calls left waiting in RPCs (threads {threads:?}); waiting to be destroyed",
        waiting.len()
    )
}
