//! Yielding calls left waiting in an RPC. The driver of `teeshm-nw` runs a call to its end, so
//! these are sent by hand: the memtest pseudo-TA's RPC_BUFFER as a `CALL_WITH_RPC_ARG`, its arg
//! at offset 0 of a page of its own and the RPC arg right after it (as Linux places them), with
//! RMEM params naming registered buffers the call then holds while it waits. The call stops at
//! its first RPC (`SHM_ALLOC`); the client does what it likes meanwhile, and [`finish`] answers
//! the RPCs as a driver would: `SHM_ALLOC` from fresh scattered pages with a page list,
//! `SHM_FREE` by giving them back. Without `RPC_ARG` (a guest of Xen's mediator) the call is a
//! `CALL_WITH_ARG` that stops at its `RPC_FUNC_ALLOC`; such calls are only ever left waiting.

use super::{Ctx, drv};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE, RpcShmType};
use teeshm_abi::smc::*;
use teeshm_core::pta::cmd;
use teeshm_nw::client::Session;
use teeshm_nw::driver::header;
use teeshm_nw::list::PageList;
use teeshm_nw::{GuestBuffer, GuestRam};
use zerocopy::IntoBytes;

/// Most RPCs [`finish`] answers for one call (RPC_BUFFER makes two).
const MAX_RPCS: u32 = 16;
/// The largest buffer `SHM_ALLOC` is served (16 MiB; the client's whole pool is 64 MiB):
/// larger ones are refused before any page is taken.
const MAX_LEND_PAGES: u64 = 4096;

/// A call waiting in an RPC.
#[derive(Debug)]
pub(super) struct Suspended {
    /// The page holding the arg and, after it, the RPC arg.
    page: u64,
    /// Bytes of the arg (the RPC arg starts there).
    arg_size: usize,
    /// Whether the RPC arg follows the arg (`CALL_WITH_RPC_ARG`); [`finish`] serves only such
    /// calls.
    with_rpc_arg: bool,
    /// The TEE's last answer: the RPC request the call waits in.
    request: SmcRegs,
    /// The buffers lent by `SHM_ALLOC` and not freed yet: cookie, pages, their list.
    lent: Vec<(u64, GuestBuffer, PageList)>,
    /// Bytes RPC_BUFFER asks for (what it must report checked).
    bytes: u64,
}

impl Suspended {
    /// The RPC function the call waits in (`RPC_FUNC_ALLOC`, `RPC_FUNC_CMD`, ...).
    #[cfg_attr(not(feature = "xen-domu"), allow(dead_code))]
    pub(super) fn rpc_func(&self) -> u32 {
        optee_smc_return_get_rpc_func(self.request.a0())
    }

    /// The TEE thread the call waits in (`a3` of its RPC request).
    pub(super) fn thread(&self) -> u64 {
        self.request.a[3]
    }
}

/// How a call sent by [`start`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Finished {
    /// `ret` of the message.
    pub(super) ret: u32,
    /// `ret_origin` of the message.
    pub(super) origin: u32,
    /// Bytes RPC_BUFFER reports checked (`p1.a`).
    pub(super) checked: u64,
    /// Bytes it was asked for.
    pub(super) asked: u64,
    /// RPCs answered.
    pub(super) rpcs: u32,
}

/// Starts an RPC_BUFFER of `bytes` bytes (pattern `seed`) in session `s` that also holds the
/// registered buffers `hold` (cookie, size: each an `RMEM_INPUT` param the command never
/// touches). `Ok(Ok(call))` when the call waits in its first RPC; `Ok(Err(a0))` when the TEE
/// refused the call itself (`ETHREAD_LIMIT`, `ENOMEM`, ...), its page given back.
///
/// # Errors
/// Guest RAM, or a call that ended without an RPC.
pub(super) fn start(
    ctx: &mut Ctx,
    s: &Session,
    bytes: u64,
    seed: u64,
    hold: &[(u64, u64)],
) -> Result<Result<Suspended, u32>, String> {
    let n = 2 + hold.len() as u32;
    let arg_size = arg_size_checked(n).map_err(|e| format!("{e}"))?;
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s.id);
    h.func.set(cmd::RPC_BUFFER);
    h.num_params.set(n);
    let mut raw = Vec::with_capacity(arg_size + RPC_ARG_SIZE);
    raw.extend_from_slice(h.as_bytes());
    let value = Value::new(bytes, RpcShmType::Kernel.raw(), seed);
    raw.extend_from_slice(MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, value).as_bytes());
    raw.extend_from_slice(MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT).as_bytes());
    for &(cookie, size) in hold {
        let rmem = Rmem::new(0, size, cookie);
        raw.extend_from_slice(MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, rmem).as_bytes());
    }
    // With RPC_ARG the RPC arg follows, zeroed as Linux clears the whole arg; without it (under
    // Xen's mediator) the call is a CALL_WITH_ARG whose first RPC asks for an RPC arg buffer.
    let with_rpc_arg = ctx.driver().rpc_param_count() > 0;
    let (func, rpc_arg_size) = if with_rpc_arg {
        (OPTEE_SMC_CALL_WITH_RPC_ARG, RPC_ARG_SIZE)
    } else {
        (OPTEE_SMC_CALL_WITH_ARG, 0)
    };
    raw.resize(arg_size + rpc_arg_size, 0);
    let ram = ctx.driver_mut().ram_mut();
    let page = ram
        .alloc_pages(1)
        .map_err(|e| format!("guest RAM: {e}"))?
        .first()
        .copied()
        .ok_or("no page")?;
    ram.write(page, &raw)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let (hi, lo) = split_pair(page);
    let request = smc(ctx, SmcRegs::call(func, &[hi, lo, 0]));
    if is_rpc_return(request.a0()) {
        return Ok(Ok(Suspended {
            page,
            arg_size,
            with_rpc_arg,
            request,
            lent: Vec::new(),
            bytes,
        }));
    }
    ctx.driver_mut().ram_mut().free_pages(&[page]);
    if request.a0() == OPTEE_SMC_RETURN_OK {
        return Err("RPC_BUFFER ended without asking for its buffer".into());
    }
    Ok(Err(request.a0()))
}

/// One SMC through the driver's conduit (its a7, its counters).
fn smc(ctx: &mut Ctx, regs: SmcRegs) -> SmcRegs {
    ctx.driver_mut().conduit_mut().smc(regs)
}

/// Answers the RPCs of `call` until it ends, and reads its result.
///
/// # Errors
/// Guest RAM, a TEE that keeps asking, or a call the TEE refused at the end (`a0` not OK).
pub(super) fn finish(ctx: &mut Ctx, mut call: Suspended) -> Result<Finished, String> {
    if !call.with_rpc_arg {
        give_back(ctx, call);
        return Err("finish serves calls with their RPC arg appended only".into());
    }
    let mut rpcs = 0;
    let mut out = call.request;
    while is_rpc_return(out.a0()) {
        if rpcs == MAX_RPCS {
            give_back(ctx, call);
            return Err(format!("the call still asks after {MAX_RPCS} RPCs"));
        }
        rpcs += 1;
        let [_, a1, a2, a3, ..] = out.a;
        let answer = match optee_smc_return_get_rpc_func(out.a0()) {
            // This call has its RPC arg appended: it asks for no other (an answer of 0 is a
            // refusal).
            OPTEE_SMC_RPC_FUNC_ALLOC => {
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, a3, 0, 0])
            }
            OPTEE_SMC_RPC_FUNC_CMD if reg_pair(a1, a2) == 0 => {
                serve(ctx, &mut call)?;
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[a1, a2, a3])
            }
            _ => SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[a1, a2, a3]),
        };
        out = smc(ctx, answer);
    }
    let mut back = alloc::vec![0u8; call.arg_size];
    let read = ctx.driver().ram().read(call.page, &mut back);
    let (page, asked) = (call.page, call.bytes);
    give_back(ctx, call);
    read.map_err(|e| format!("guest RAM: {e}"))?;
    if out.a0() != OPTEE_SMC_RETURN_OK {
        return Err(format!("the call ended with {:#x}", out.a0()));
    }
    let (h, params) = split_arg(&back).map_err(|e| format!("arg at {page:#x}: {e}"))?;
    let checked = params.get(1).map_or(0, |p| p.value().a.get());
    Ok(Finished {
        ret: h.ret.get(),
        origin: h.ret_origin.get(),
        checked,
        asked,
        rpcs,
    })
}

/// Gives back the call's page and whatever `SHM_ALLOC` lent that was not freed (also for a
/// call another CPU answered).
pub(super) fn give_back(ctx: &mut Ctx, call: Suspended) {
    let ram = ctx.driver_mut().ram_mut();
    ram.free_pages(&[call.page]);
    for (_, buf, list) in call.lent {
        buf.free(ram);
        list.free(ram);
    }
}

/// Serves the RPC command in the call's RPC arg: `SHM_ALLOC`, `SHM_FREE`; anything else is
/// answered `TEE_ERROR_NOT_IMPLEMENTED`.
fn serve(ctx: &mut Ctx, call: &mut Suspended) -> Result<(), String> {
    let at = call.page + call.arg_size as u64;
    let mut raw = alloc::vec![0u8; RPC_ARG_SIZE];
    ctx.driver()
        .ram()
        .read(at, &mut raw)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let (h, params) = split_arg_mut(&mut raw).map_err(|e| format!("RPC arg: {e}"))?;
    let ret = match (h.cmd.get(), params) {
        (OPTEE_RPC_CMD_SHM_ALLOC, [p]) if p.attr() == OPTEE_MSG_ATTR_TYPE_VALUE_INPUT => {
            let size = p.value().b.get();
            match lend(ctx, size) {
                Some((cookie, buf, list)) => {
                    *p = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(list.buf_ptr, size, cookie),
                    );
                    call.lent.push((cookie, buf, list));
                    TEE_SUCCESS
                }
                None => TEE_ERROR_OUT_OF_MEMORY,
            }
        }
        (OPTEE_RPC_CMD_SHM_FREE, [p]) if p.attr() == OPTEE_MSG_ATTR_TYPE_VALUE_INPUT => {
            let cookie = p.value().b.get();
            match call.lent.iter().position(|(c, _, _)| *c == cookie) {
                Some(i) => {
                    let (_, buf, list) = call.lent.swap_remove(i);
                    let ram = ctx.driver_mut().ram_mut();
                    buf.free(ram);
                    list.free(ram);
                    TEE_SUCCESS
                }
                None => TEE_ERROR_BAD_PARAMETERS,
            }
        }
        _ => TEE_ERROR_NOT_IMPLEMENTED,
    };
    h.ret.set(ret);
    ctx.driver()
        .ram()
        .write(at, &raw)
        .map_err(|e| format!("guest RAM: {e}"))
}

/// `size` bytes of fresh pages and their page list, under a new cookie; `None` when the
/// normal world has not that much memory (a size that does not fit its pages included).
fn lend(ctx: &mut Ctx, size: u64) -> Option<(u64, GuestBuffer, PageList)> {
    if size == 0 || GuestBuffer::pages_for(0, size) > MAX_LEND_PAGES {
        return None;
    }
    let buf = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), size, 0).ok()?;
    match ctx.driver_mut().page_list(&buf).map_err(drv) {
        Ok(list) => {
            let cookie = ctx.driver_mut().new_cookie();
            Some((cookie, buf, list))
        }
        Err(_) => {
            buf.free(ctx.driver_mut().ram_mut());
            None
        }
    }
}
