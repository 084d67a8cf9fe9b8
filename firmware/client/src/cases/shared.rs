//! Cases of shared memory the TEE keeps: registered and allocated buffers, a buffer of 1100
//! scattered pages, RPC buffers with and without `RPC_ARG`, unregistration, and the
//! unregistration of a buffer a waiting call still holds (revocation).

use super::suspend;
use super::{
    Ctx, Outcome, adjacent, buf, bytes, check_core, drv, fill_shm, free, invoke_raw, marker, op,
    pattern_mismatch, ret_of, teec, where_is, window,
};
use crate::ram::NsRam;
use crate::smc::Conduit;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use sha2::{Digest, Sha256};
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::RpcShmType;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_nw::client::{Context, Direction, Param, Session, SharedMemory, ShmFlags};
use teeshm_nw::{Driver, DriverError, GuestBuffer, PAGE_SIZE};

/// FILL, COPY both ways and SHA-256 through whole and partial memrefs of `a` and `b`, every
/// byte checked (the same walk as crates/nw/tests/client.rs).
fn exercise_shared(
    ctx: &mut Ctx,
    s: &Session,
    a: &SharedMemory,
    b: &SharedMemory,
) -> Result<(), String> {
    let (na, nb) = (a.size(), b.size());
    // FILL the whole of a (RMEM output).
    let mut o = op([
        Param::Whole(a),
        Param::ValueInput { a: 3, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        o.returned_sizes[0] == Some(na),
        "FILL whole: size {:?}",
        o.returned_sizes[0]
    );
    ensure!(
        pattern_mismatch(&bytes(ctx, a.buffer())?, 3).is_none(),
        "FILL whole: wrong bytes"
    );
    // COPY part of a (RMEM input) into part of b (RMEM output).
    fill_shm(ctx, a, marker(9))?;
    fill_shm(ctx, b, |_| 0x11)?;
    let (off, len) = (PAGE_SIZE - 7, na.min(nb) - PAGE_SIZE);
    let mut o = op([
        Param::Partial {
            shm: a,
            offset: 5,
            size: len,
            dir: Direction::Input,
        },
        Param::Partial {
            shm: b,
            offset: off,
            size: nb - off,
            dir: Direction::Output,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::Partial { size, .. } if size == len),
        "partial output: size not written back"
    );
    let (ga, gb) = (bytes(ctx, a.buffer())?, bytes(ctx, b.buffer())?);
    let (off, len) = (off as usize, len as usize);
    ensure!(
        gb[..off].iter().all(|&x| x == 0x11),
        "COPY wrote before the partial output"
    );
    ensure!(
        gb[off..off + len] == ga[5..5 + len],
        "partial COPY: wrong bytes"
    );
    ensure!(
        gb[off + len..].iter().all(|&x| x == 0x11),
        "COPY wrote past the partial output"
    );
    // A temporary input into the whole of b; b back into a temporary.
    let t = buf(ctx, nb, 0x42, marker(4))?;
    let mut o = op([
        Param::TempInput(t),
        Param::Whole(b),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    let [Param::TempInput(t), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        bytes(ctx, b.buffer())? == bytes(ctx, &t)?,
        "COPY into whole b: wrong bytes"
    );
    let back = buf(ctx, nb, 0x900, |_| 0)?;
    let mut o = op([
        Param::Whole(b),
        Param::TempOutput(back),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(back), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        bytes(ctx, &back)? == bytes(ctx, &t)?,
        "COPY from whole b: wrong bytes"
    );
    // A partial inout (RMEM inout) of a, written from another temporary.
    fill_shm(ctx, a, |_| 0x22)?;
    let inout_len = na.min(nb) - 2 * PAGE_SIZE;
    let t2 = buf(ctx, inout_len, 0x42, marker(6))?;
    let mut o = op([
        Param::TempInput(t2),
        Param::Partial {
            shm: a,
            offset: 0x801,
            size: na - 0x801,
            dir: Direction::Inout,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::Partial { size, .. } if size == inout_len),
        "partial inout: size not written back"
    );
    let [Param::TempInput(t2), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let ga = bytes(ctx, a.buffer())?;
    let gt = bytes(ctx, &t2)?;
    let inout_len = inout_len as usize;
    ensure!(
        ga[0x801..0x801 + inout_len] == gt[..],
        "partial inout: wrong bytes"
    );
    ensure!(
        ga[..0x801].iter().all(|&x| x == 0x22),
        "partial inout: wrote before its offset"
    );
    ensure!(
        ga[0x801 + inout_len..].iter().all(|&x| x == 0x22),
        "partial inout: wrote past the copy"
    );
    free(ctx, t2);
    // SHA-256 of b through a partial memref and of the same bytes through a temporary agree,
    // and agree with this side's own SHA-256.
    let d1 = buf(ctx, 32, 0, |_| 0)?;
    let d2 = buf(ctx, 32, 0, |_| 0)?;
    let mut o = op([
        Param::Partial {
            shm: b,
            offset: 0,
            size: nb,
            dir: Direction::Input,
        },
        Param::TempOutput(d1),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(d1), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let mut o = op([
        Param::TempInput(t),
        Param::TempOutput(d2),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [Param::TempInput(t), Param::TempOutput(d2), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let local: [u8; 32] = Sha256::digest(bytes(ctx, &t)?).into();
    ensure!(
        bytes(ctx, &d1)? == local && bytes(ctx, &d2)? == local,
        "SHA-256 through the TEE differs from this side's"
    );
    for x in [t, back, d1, d2] {
        free(ctx, x);
    }
    Ok(())
}

pub(super) fn registered(ctx: &mut Ctx, s: &Session) -> Outcome {
    // The caller's own buffer, unaligned, on scattered pages, registered.
    let a_buf = buf(ctx, 5 * PAGE_SIZE + 100, 0x123, marker(1))?;
    let a = ctx
        .register_shared_memory(a_buf.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    // Fresh pages the client API allocates and registers.
    let b = ctx
        .allocate_shared_memory(4 * PAGE_SIZE + 7, ShmFlags::INOUT)
        .map_err(teec)?;
    exercise_shared(ctx, s, &a, &b)?;
    let (va, pa, cached, pages) = where_is(ctx, s, &a, 0)?;
    let first = a_buf.pages.first().copied().unwrap_or(0);
    ensure!(
        pa == first + 0x123,
        "WHERE: PA {pa:#x}, the buffer starts at {:#x}",
        first + 0x123
    );
    ensure!(
        window().contains(&va),
        "WHERE: VA {va:#x} outside the SHM window"
    );
    ensure!(
        va % PAGE_SIZE == 0x123,
        "WHERE: VA {va:#x} keeps not the offset"
    );
    ensure!(
        cached,
        "the registered buffer was not kept mapped between calls"
    );
    ensure!(
        pages == a_buf.pages.len() as u64,
        "WHERE: {pages} pages mapped"
    );
    ctx.release_shared_memory(a).map_err(teec)?;
    ctx.release_shared_memory(b).map_err(teec)?;
    let scattered = a_buf.pages.len() - 1 - adjacent(&a_buf.pages);
    free(ctx, a_buf);
    Ok(format!(
        "FILL whole, COPY partial->partial, temp->whole, whole->temp, temp->partial inout, SHA-256 x2 = local; \
         mapped at VA {va:#x} (cached, {pages} pages, {scattered} of 5 page steps non-adjacent)"
    ))
}

pub(super) fn large_registered(ctx: &mut Ctx, s: &Session) -> Outcome {
    let pages = 1100u64;
    let size = pages * PAGE_SIZE - 0x7ff - 5;
    let big = buf(ctx, size, 0x7ff, |_| 0)?;
    ensure!(big.pages.len() as u64 == pages, "{} pages", big.pages.len());
    let list_pages = teeshm_abi::page_list::list_pages_needed(pages);
    let shm = ctx
        .register_shared_memory(big.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    let (va, pa, cached, mapped) = where_is(ctx, s, &shm, 0)?;
    let first = big.pages.first().copied().unwrap_or(0);
    ensure!(
        pa == first + 0x7ff,
        "WHERE: PA {pa:#x}, the buffer starts at {:#x}",
        first + 0x7ff
    );
    ensure!(window().contains(&va), "VA {va:#x} outside the window");
    ensure!(
        !cached && mapped == pages,
        "first map: cached {cached}, {mapped} pages"
    );
    // The last byte: VA and PA of its own page.
    let (va_last, pa_last, cached, _) = where_is(ctx, s, &shm, size - 1)?;
    let last = big.pages.last().copied().unwrap_or(0);
    ensure!(
        pa_last == last + (0x7ff + size - 1) % PAGE_SIZE,
        "WHERE last byte: PA {pa_last:#x}"
    );
    ensure!(
        va_last == va + size - 1 && cached,
        "WHERE last byte: VA {va_last:#x}, cached {cached}"
    );
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x51, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let data = bytes(ctx, shm.buffer())?;
    if let Some(i) = pattern_mismatch(&data, 0x51) {
        return Err(format!("FILL of {size} bytes: byte {i} wrong"));
    }
    let d = buf(ctx, 32, 0x40, |_| 0)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::TempOutput(d),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(d), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let local: [u8; 32] = Sha256::digest(&data).into();
    ensure!(bytes(ctx, &d)? == local, "SHA-256 of {size} bytes differs");
    free(ctx, d);
    ctx.release_shared_memory(shm).map_err(teec)?;
    let adjacent = adjacent(&big.pages);
    free(ctx, big);
    Ok(format!(
        "{size} bytes, {list_pages} list pages; first byte at VA {va:#x} -> PA {pa:#x}, last at PA {pa_last:#x}; \
         FILL checked byte for byte, SHA-256 matches; {adjacent} of {} page steps adjacent",
        pages - 1
    ))
}

pub(super) fn rpc_buffers(ctx: &mut Ctx, s: &Session) -> Outcome {
    let rpcs_before = ctx.driver_mut().conduit_mut().rpcs;
    let mut count = 0;
    for shm_type in [RpcShmType::Appl, RpcShmType::Kernel, RpcShmType::Global] {
        for size in [1u32, 4096, 70_000] {
            let mut o = op([
                Param::ValueInput {
                    a: size,
                    b: shm_type.raw() as u32,
                },
                Param::ValueOutput { a: 0, b: 0 },
                Param::None,
                Param::None,
            ]);
            ctx.invoke_command(s, cmd::RPC_BUFFER, &mut o)
                .map_err(|e| format!("{shm_type:?} {size}: {}", teec(e)))?;
            ensure!(
                matches!(o.params[1], Param::ValueOutput { a, .. } if a == size),
                "{shm_type:?} {size}: the TEE checked {:?}",
                o.params[1]
            );
            count += 1;
        }
    }
    let rpcs = ctx.driver_mut().conduit_mut().rpcs - rpcs_before;
    ensure!(
        ctx.driver().rpc_buffers_held() == 0,
        "{} RPC buffers not freed",
        ctx.driver().rpc_buffers_held()
    );
    Ok(format!(
        "{count} buffers of 1, 4096, 70000 bytes (APPL, KERNEL, GLOBAL) allocated, filled, checked, freed; {rpcs} RPCs"
    ))
}

pub(super) fn rpc_without_rpc_arg(ram: &NsRam) -> Outcome {
    let mut conduit = Conduit::new(0);
    conduit.mask_rpc_arg = true;
    let d = Driver::probe(conduit, ram.clone()).map_err(drv)?;
    ensure!(
        !d.uses_rpc_arg() && d.shm_cache_enabled(),
        "the driver did not take the RPC_FUNC_ALLOC path"
    );
    let mut c = Context::new(d);
    let s = c.open_session(MEMTEST_UUID).map_err(teec)?;
    for size in [1u32, 70_000, 4096] {
        let mut o = op([
            Param::ValueInput {
                a: size,
                b: RpcShmType::Kernel.raw() as u32,
            },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ]);
        c.invoke_command(&s, cmd::RPC_BUFFER, &mut o)
            .map_err(teec)?;
        ensure!(
            matches!(o.params[1], Param::ValueOutput { a, .. } if a == size),
            "size {size}: {:?}",
            o.params[1]
        );
    }
    c.close_session(s).map_err(teec)?;
    let mut d = c.into_driver();
    let (calls, rpcs) = (d.conduit_mut().calls, d.conduit_mut().rpcs);
    let held = d.rpc_buffers_held();
    d.shutdown().map_err(drv)?;
    ensure!(
        d.rpc_buffers_held() == 0,
        "{} buffers still held after DISABLE_SHM_CACHE",
        d.rpc_buffers_held()
    );
    Ok(format!(
        "3 buffers through RPC_FUNC_ALLOC-ed args, {rpcs} RPCs in {calls} SMCs; {held} cached RPC arg(s) handed back by DISABLE_SHM_CACHE"
    ))
}

pub(super) fn unregister(ctx: &mut Ctx, s: &Session) -> Outcome {
    let shm = ctx
        .allocate_shared_memory(3 * PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let cookie = shm.cookie();
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 2, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let (_, mapped_before, _, _) = check_core();
    ctx.release_shared_memory(shm).map_err(teec)?;
    let (_, mapped_after, _, _) = check_core();
    ensure!(
        mapped_after + 3 == mapped_before,
        "unregister left the mapping: {mapped_before} -> {mapped_after} pages"
    );
    // The cookie is unknown now: as a memref, and to a second unregister.
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, PAGE_SIZE, cookie),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "a memref of the unregistered cookie answered {ret:#x}"
    );
    let again = ctx.driver_mut().unregister(cookie);
    ensure!(
        matches!(
            again,
            Err(DriverError::Tee {
                ret: TEE_ERROR_BAD_PARAMETERS,
                ..
            })
        ),
        "a second unregister answered {again:?}"
    );
    Ok(format!(
        "cookie {cookie}: its 3 mapped pages went with the unregister; then BAD_PARAMETERS as a memref and to a 2nd unregister"
    ))
}

pub(super) fn unregister_in_use(ctx: &mut Ctx, s: &Session) -> Outcome {
    // A buffer of the normal world's own pages, registered, mapped by a first FILL.
    let (_, mapped_first, _, _) = check_core();
    let size = 3 * PAGE_SIZE - 0x40;
    let b = buf(ctx, size, 0x40, |_| 0)?;
    let cookie = ctx.driver_mut().new_cookie();
    ctx.driver_mut().register(&b, cookie).map_err(drv)?;
    let fill = |ctx: &mut Ctx, cookie: u64, size: u64, seed: u64| {
        let params = [
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, Rmem::new(0, size, cookie)),
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(seed, 0, 0)),
        ];
        ret_of(invoke_raw(ctx, s, cmd::FILL, &params))
    };
    let ret = fill(ctx, cookie, size, 0x21)?;
    ensure!(ret == TEE_SUCCESS, "the first FILL answered {ret:#x}");
    ensure!(
        pattern_mismatch(&bytes(ctx, &b)?, 0x21).is_none(),
        "the first FILL wrote the wrong bytes"
    );
    // A call that holds it and waits in an RPC (RPC_BUFFER asking for its buffer).
    let call = match suspend::start(ctx, s, 64, 0x77, &[(cookie, size)])? {
        Ok(call) => call,
        Err(a0) => return Err(format!("the holding call was refused with {a0:#x}")),
    };
    let (_, mapped_before, _, _) = check_core();
    let thread = call.thread();
    // UNREGISTER while the call holds it: SUCCESS at once, and the mapping is gone now.
    let unregistered = ctx.driver_mut().unregister(cookie);
    let (disagreements, mapped_revoked, _, _) = check_core();
    let again = ctx.driver_mut().unregister(cookie);
    let as_memref = fill(ctx, cookie, size, 0x22);
    // The pages are the normal world's again: it writes its own bytes there, and the cookie
    // may name a new buffer at once.
    let ours: Vec<u8> = (0..size).map(marker(0x5a)).collect();
    b.write(ctx.driver().ram(), 0, &ours)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let other = buf(ctx, PAGE_SIZE, 0, |_| 0)?;
    let reused = ctx.driver_mut().register(&other, cookie);
    let reused_fill = match reused {
        Ok(()) => Some(fill(ctx, cookie, PAGE_SIZE, 0x23)),
        Err(_) => None,
    };
    let other_ok = pattern_mismatch(&bytes(ctx, &other)?, 0x23).is_none();
    if reused.is_ok() {
        ctx.driver_mut().unregister(cookie).map_err(drv)?;
    }
    free(ctx, other);
    // Then the call goes on: its RPCs answered, it ends as if nothing happened.
    let done = suspend::finish(ctx, call)?;
    let untouched = bytes(ctx, &b)? == ours;
    let (disagreements_end, mapped_end, _, _) = check_core();
    free(ctx, b);
    unregistered.map_err(|e| format!("UNREGISTER of the buffer in use: {e}"))?;
    ensure!(
        disagreements == 0 && disagreements_end == 0,
        "{disagreements} disagreements after the unregister, {disagreements_end} at the end"
    );
    let pages = GuestBuffer::pages_for(0x40, size);
    ensure!(
        mapped_revoked + pages == mapped_before,
        "the unregister left the mapping while the call held it: {mapped_before} -> \
         {mapped_revoked} pages"
    );
    ensure!(
        matches!(
            again,
            Err(DriverError::Tee {
                ret: TEE_ERROR_BAD_PARAMETERS,
                ..
            })
        ),
        "a second unregister while the call still held it answered {again:?}"
    );
    let as_memref = as_memref?;
    ensure!(
        as_memref == TEE_ERROR_BAD_PARAMETERS,
        "the unregistered cookie as a memref answered {as_memref:#x}"
    );
    reused.map_err(|e| format!("a new buffer under the freed cookie: {e}"))?;
    let reused_fill = reused_fill.ok_or("no FILL of the new buffer")??;
    ensure!(
        reused_fill == TEE_SUCCESS && other_ok,
        "the new buffer under the freed cookie: FILL {reused_fill:#x}, bytes right {other_ok}"
    );
    ensure!(
        done.ret == TEE_SUCCESS && done.checked == done.asked,
        "the call ended with {:#x} (origin {}), {} bytes checked",
        done.ret,
        done.origin,
        done.checked
    );
    ensure!(
        untouched,
        "the TEE wrote into the pages of the unregistered buffer"
    );
    ensure!(
        mapped_end == mapped_first,
        "{mapped_end} pages mapped at the end, {mapped_first} before the case"
    );
    Ok(format!(
        "a {pages}-page buffer held by an RPC_BUFFER call waiting in thread {thread}: UNREGISTER \
         answered SUCCESS at once and its mapping went with it ({mapped_before} -> \
         {mapped_revoked} pages); its cookie unknown at once (2nd unregister and memref: \
         BAD_PARAMETERS) and taken by a new buffer; the normal world rewrote the pages; the call \
         then ended with TEE_SUCCESS ({} RPCs, 64 bytes checked) and the pages kept the normal \
         world's bytes",
        done.rpcs
    ))
}
