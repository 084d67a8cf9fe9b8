//! Hostile cases: page lists naming or stored in memory no guest may name, unaligned entries,
//! huge sizes, unknown cookies, bad args and registers; then the core still serves calls.

use super::{
    Ctx, Outcome, SECURE_RAM, bytes, check_core, drv, fast, fast_as, invoke_raw, op,
    pattern_mismatch, ret_of, teec,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::cmd;
use teeshm_nw::client::{Param, Session, ShmFlags};
use teeshm_nw::driver::header;
use teeshm_nw::{DriverError, GuestBuffer, GuestRam, PAGE_SIZE};
use zerocopy::IntoBytes;

/// REGISTER_SHM of a hand-made tmem; returns the message's `ret`.
fn register_raw(ctx: &mut Ctx, buf_ptr: u64, size: u64, cookie: u64) -> Result<u32, String> {
    let param = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    );
    ret_of(
        ctx.driver_mut()
            .call(header(OPTEE_MSG_CMD_REGISTER_SHM), &[param])
            .map_err(drv),
    )
}

/// A page of guest RAM holding `words` (a hand-made list page).
fn list_page(ctx: &mut Ctx, words: &[u64]) -> Result<u64, String> {
    let page = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| format!("guest RAM: {e}"))?
        .first()
        .copied()
        .ok_or("no page")?;
    let mut raw = vec![0u8; PAGE_SIZE as usize];
    for (chunk, w) in raw.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    ctx.driver()
        .ram()
        .write(page, &raw)
        .map_err(|e| format!("guest RAM: {e}"))?;
    Ok(page)
}

fn free_page(ctx: &mut Ctx, page: u64) {
    ctx.driver_mut().ram_mut().free_pages(&[page]);
}

pub(super) fn hostile_pages(ctx: &mut Ctx, s: &Session) -> Outcome {
    let good = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let good = good.first().copied().ok_or("no page")?;
    let mut n = 0;
    for (what, pa) in [
        ("secure RAM", SECURE_RAM + 0x10_0000),
        ("EL3's own state", SECURE_RAM),
        ("the UART", 0x0900_0000),
        ("secure flash", 0),
        ("no memory at all", 0x8000_0000),
    ] {
        let evil = GuestBuffer {
            pages: vec![good, pa],
            offset: 0,
            size: 2 * PAGE_SIZE,
        };
        let cookie = ctx.driver_mut().new_cookie();
        let r = ctx.driver_mut().register(&evil, cookie);
        ensure!(
            matches!(
                r,
                Err(DriverError::Tee {
                    ret: TEE_ERROR_BAD_PARAMETERS,
                    ..
                })
            ),
            "registering a list naming {what} ({pa:#x}) answered {r:?}"
        );
        // The same pages as a temporary output: the TEE would write there if it mapped them.
        let mut o = op([
            Param::TempOutput(evil),
            Param::ValueInput { a: 1, b: 0 },
            Param::None,
            Param::None,
        ]);
        let r = ctx.invoke_command(s, cmd::FILL, &mut o);
        ensure!(
            r.map_err(|e| e.code) == Err(TEE_ERROR_BAD_PARAMETERS),
            "FILL into a temporary memref on {what} answered {r:?}"
        );
        n += 2;
    }
    free_page(ctx, good);
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "{n} registrations and temporary memrefs refused with BAD_PARAMETERS; nothing mapped"
    ))
}

pub(super) fn hostile_list_location(ctx: &mut Ctx) -> Outcome {
    for (what, list) in [
        ("secure RAM", SECURE_RAM + 0x20_0000),
        ("EL3's own state", SECURE_RAM + 0x1000),
        ("the UART", 0x0900_0000),
        ("secure flash", 0x1000),
    ] {
        let cookie = ctx.driver_mut().new_cookie();
        let ret = register_raw(ctx, list, PAGE_SIZE, cookie)?;
        ensure!(
            ret != TEE_SUCCESS,
            "a list page in {what} ({list:#x}) was accepted"
        );
        ensure!(
            ret == TEE_ERROR_BAD_PARAMETERS,
            "a list page in {what}: {ret:#x}"
        );
    }
    // A chain whose second list page lies in secure RAM.
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(512)
        .map_err(|e| e.to_string())?;
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(SECURE_RAM + 0x30_0000);
    let first = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, first, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "a chain into secure RAM: {ret:#x}"
    );
    free_page(ctx, first);
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok("list pages in secure RAM, EL3's pages, the UART, flash, and a chain's next page in secure RAM: all refused".into())
}

pub(super) fn hostile_unaligned(ctx: &mut Ctx) -> Outcome {
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(512)
        .map_err(|e| e.to_string())?;
    // An unaligned data-page entry.
    let first = data.first().copied().unwrap_or(0);
    let list = list_page(ctx, &[first + 0x123])?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, list, 100, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "an unaligned entry: {ret:#x}"
    );
    free_page(ctx, list);
    // An unaligned next pointer.
    let second = list_page(ctx, &[data.last().copied().unwrap_or(0)])?;
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(second + 8);
    let list = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, list, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "an unaligned next pointer: {ret:#x}"
    );
    // The same chain, aligned, is fine (so the refusals were for the alignment).
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(second);
    let good = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, good, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_SUCCESS,
        "the aligned chain was refused: {ret:#x}"
    );
    ctx.driver_mut().unregister(cookie).map_err(drv)?;
    for p in [list, second, good] {
        free_page(ctx, p);
    }
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok("an entry at +0x123 and a next pointer at +8 refused; the same 512-page chain aligned is accepted".into())
}

pub(super) fn hostile_sizes(ctx: &mut Ctx) -> Outcome {
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let list = list_page(ctx, &data)?;
    let mut n = 0;
    for (what, buf_ptr, size) in [
        ("1 TiB", list, 1u64 << 40),
        ("u64::MAX", list, u64::MAX),
        ("offset + size overflowing", list | 0xfff, u64::MAX - 0x10),
        (
            "more pages than a buffer may have",
            list,
            32_769 * PAGE_SIZE,
        ),
        ("zero", list, 0),
    ] {
        let cookie = ctx.driver_mut().new_cookie();
        let ret = register_raw(ctx, buf_ptr, size, cookie)?;
        ensure!(ret == TEE_ERROR_BAD_PARAMETERS, "size {what}: {ret:#x}");
        n += 1;
    }
    free_page(ctx, list);
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok(format!(
        "{n} sizes (1 TiB, u64::MAX, an overflowing offset, 32769 pages, 0) refused before the list is read"
    ))
}

pub(super) fn hostile_cookies(ctx: &mut Ctx, s: &Session) -> Outcome {
    for cookie in [0xdead_beefu64, 0, u64::MAX] {
        let params = [
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, Rmem::new(0, 16, cookie)),
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
        ];
        let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
        ensure!(
            ret == TEE_ERROR_BAD_PARAMETERS,
            "memref of cookie {cookie:#x}: {ret:#x}"
        );
        let r = ctx.driver_mut().unregister(cookie);
        ensure!(
            matches!(
                r,
                Err(DriverError::Tee {
                    ret: TEE_ERROR_BAD_PARAMETERS,
                    ..
                })
            ),
            "unregister of cookie {cookie:#x}: {r:?}"
        );
    }
    // A real buffer, addressed out of its bounds.
    let shm = ctx
        .allocate_shared_memory(PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(PAGE_SIZE - 8, 16, shm.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    ensure!(
        ret == TEE_ERROR_SECURITY,
        "a memref past its buffer: {ret:#x}"
    );
    ctx.release_shared_memory(shm).map_err(teec)?;
    Ok("cookies 0xdeadbeef, 0, u64::MAX: BAD_PARAMETERS as memrefs and to unregister; a memref past its buffer: SECURITY".into())
}

pub(super) fn hostile_args(ctx: &mut Ctx) -> Outcome {
    let call = |pa: u64| fast(OPTEE_SMC_CALL_WITH_ARG, &[pa >> 32, pa & 0xffff_ffff, 0]).a0();
    for (what, pa) in [
        ("in secure RAM", SECURE_RAM + 0x40_0000),
        ("in EL3's state", SECURE_RAM),
        ("in the UART", 0x0900_0000),
        ("at 0", 0),
        ("beyond RAM", 0x1_0000_0000),
    ] {
        let r = call(pa);
        ensure!(
            r == OPTEE_SMC_RETURN_EBADADDR,
            "an arg {what} ({pa:#x}): {r:#x}"
        );
    }
    // An arg whose params run past its page.
    let page = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let page = page.first().copied().ok_or("no page")?;
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.num_params.set(4);
    let at = page + PAGE_SIZE - 64;
    ctx.driver()
        .ram()
        .write(at, h.as_bytes())
        .map_err(|e| e.to_string())?;
    let r = call(at);
    ensure!(
        r == OPTEE_SMC_RETURN_EBADADDR,
        "an arg crossing its page: {r:#x}"
    );
    // Too many params.
    h.num_params.set(200);
    ctx.driver()
        .ram()
        .write(page, h.as_bytes())
        .map_err(|e| e.to_string())?;
    let r = call(page);
    ensure!(
        r == OPTEE_SMC_RETURN_EBADCMD,
        "an arg of 200 params: {r:#x}"
    );
    free_page(ctx, page);
    Ok("args in secure RAM, EL3, the UART, at 0, beyond RAM, crossing a page: EBADADDR; 200 params: EBADCMD".into())
}

pub(super) fn hostile_registers() -> Outcome {
    // Client ids are no refusal here: one normal world, a7 ignored (the single-world case
    // shows calls run whatever a7 holds). RETURN_FROM_RPC with nothing suspended is refused,
    // whatever a7 holds too.
    let threads = fast(OPTEE_SMC_GET_THREAD_COUNT, &[]).a[1];
    let mut n = 0;
    for thread in [
        0u64,
        3,
        threads.saturating_sub(1),
        threads,
        1 << 40,
        u64::MAX,
    ] {
        for a7 in [0, 0x1_0000] {
            let r = fast_as(a7, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).a0();
            ensure!(
                r == OPTEE_SMC_RETURN_ERESUME,
                "RETURN_FROM_RPC to thread {thread:#x} (a7 = {a7:#x}): {r:#x}"
            );
            n += 1;
        }
    }
    Ok(format!(
        "{n} RETURN_FROM_RPCs with no call suspended (threads 0, 3, the last, one past it, 2^40, \
         u64::MAX; a7 = 0 and 0x10000): ERESUME"
    ))
}

pub(super) fn still_alive(ctx: &mut Ctx, s: &Session) -> Outcome {
    let shm = ctx
        .allocate_shared_memory(7 * PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x77, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        pattern_mismatch(&bytes(ctx, shm.buffer())?, 0x77).is_none(),
        "FILL wrong"
    );
    ctx.release_shared_memory(shm).map_err(teec)?;
    let (disagreements, mapped, tables, calls) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "a 7-page buffer registered, filled, checked, released; {mapped} pages mapped, {tables} table pages, {calls} calls so far"
    ))
}
