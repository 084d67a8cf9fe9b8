//! `CALL_WITH_ARG`: the guest's arg copied once and checked, its page lists translated and
//! pinned, the TEE driven to the call's end or its next RPC, and the results copied back.

use super::{
    Ctx, Flow, HEADER_SIZE, LOW32, MEMREF_SIZE_AT, PAGE, PARAM_SIZE, RET_AT, RET_ORIGIN_AT,
    SESSION_AT, VALUE_AT,
};
use crate::error::HypError;
use crate::guest::{Call, Draining, Pending};
use crate::memory::MachineMemory;
use crate::stage2::{PAGE_MASK, PAGE_SIZE};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_BUSY, TEE_ERROR_ITEM_NOT_FOUND, TEE_ORIGIN_COMMS,
    TEE_SUCCESS,
};
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_CMD_CANCEL, OPTEE_MSG_CMD_CLOSE_SESSION, OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_OPEN_SESSION, OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM,
    ParamType, arg_size_checked, split_arg, split_arg_mut,
};
use teeshm_abi::smc::*;
use teeshm_abi::smc::{reg_pair, split_pair};
use zerocopy::{FromBytes, IntoBytes};

/// The message commands a guest may send (Xen's list); anything else is `EBADCMD`.
const ALLOWED_CMDS: [u32; 6] = [
    OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_CLOSE_SESSION,
    OPTEE_MSG_CMD_INVOKE_COMMAND,
    OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM,
];

impl<T: SmcConduit, M: MachineMemory> Ctx<'_, T, M> {
    pub(super) fn call_with_arg(&mut self, regs: &SmcRegs) -> SmcRegs {
        if self.guest.calls.len() >= self.limits.max_calls as usize {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ETHREAD_LIMIT);
        }
        let ipa = reg_pair(regs.a[1], regs.a[2]);
        let Some(pa) = self.guest.stage2.translate(ipa) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADADDR);
        };
        // The arg must lie in one page (as the core requires): copy the rest of the page once,
        // and decide everything on the copy.
        let room = PAGE_SIZE - (ipa & PAGE_MASK);
        let mut page = [0u8; PAGE];
        let Some(copy) = page.get_mut(..room as usize) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADADDR);
        };
        self.mem.read(pa, copy);
        let Ok((header, _)) = MsgArgHeader::read_from_prefix(copy) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADADDR);
        };
        let Ok(size) = arg_size_checked(header.num_params.get()) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADCMD);
        };
        let Some(bytes) = copy.get(..size) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADADDR);
        };
        let cmd = header.cmd.get();
        if !ALLOWED_CMDS.contains(&cmd) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBADCMD);
        }
        let mut arg = Vec::new();
        if arg.try_reserve_exact(size).is_err() {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOMEM);
        }
        arg.extend_from_slice(bytes);

        let mut temps = Vec::new();
        if let Err(e) = self.translate_params(cmd, &mut arg, &mut temps) {
            for (_, buffer) in temps {
                self.guest.release_buffer(self.mem, buffer);
            }
            // As Xen: the message fails, the TEE is never reached, the SMC succeeds.
            self.write_result(ipa, e.gp_code());
            return SmcRegs::ret(OPTEE_SMC_RETURN_OK);
        }
        let shadow = match self.guest.alloc_shadow(self.mem, self.limits) {
            Ok(pa) => pa,
            Err(_) => {
                for (_, buffer) in temps {
                    self.guest.release_buffer(self.mem, buffer);
                }
                return SmcRegs::ret(OPTEE_SMC_RETURN_ENOMEM);
            }
        };
        self.mem.write(shadow, &arg);
        let id = self
            .next_call
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        let call = Call {
            id,
            guest_arg_ipa: ipa,
            arg,
            shadow_arg: shadow,
            cmd,
            temps,
            stale_lists: Vec::new(),
            pending: Pending::Resume,
        };
        let (hi, lo) = split_pair(shadow);
        let regs = SmcRegs::call(
            OPTEE_SMC_CALL_WITH_ARG,
            &[hi, lo, u64::from(OPTEE_SMC_SHM_CACHED)],
        )
        .from_client(self.vm);
        self.drive(call, regs)
    }

    /// Translates the params of the copy in place (Xen's `translate_params`): NONCONTIG tmem
    /// lists become shadow lists of pinned PAs, contiguous tmem only as NULL, rmem and values
    /// pass. On error, `temps` holds what was translated so far, for the caller to release.
    fn translate_params(
        &mut self,
        cmd: u32,
        arg: &mut [u8],
        temps: &mut Vec<(usize, crate::guest::Buffer)>,
    ) -> Result<(), HypError> {
        let (_, params) = split_arg_mut(arg).map_err(|_| HypError::BadParam {
            index: 0,
            problem: "malformed arg",
        })?;
        if cmd == OPTEE_MSG_CMD_REGISTER_SHM {
            if let Some(p) = params.first() {
                let cookie = p.tmem().shm_ref.get();
                if self.guest.registered.contains_key(&cookie) {
                    return Err(HypError::DuplicateCookie { cookie });
                }
            }
        }
        for (index, p) in params.iter_mut().enumerate() {
            let attr = p.attr();
            let ty = ParamType::try_from(attr).map_err(|_| HypError::BadParam {
                index,
                problem: "unknown parameter type",
            })?;
            let noncontig = attr & OPTEE_MSG_ATTR_NONCONTIG != 0;
            if noncontig && !ty.is_tmem() {
                return Err(HypError::BadParam {
                    index,
                    problem: "NONCONTIG on a parameter that is not a tmem",
                });
            }
            if !ty.is_tmem() {
                continue;
            }
            let t = p.tmem();
            if !noncontig {
                if t.buf_ptr.get() != 0 {
                    return Err(HypError::BadParam {
                        index,
                        problem: "contiguous tmem: only NULL or a NONCONTIG list is mediated",
                    });
                }
                continue;
            }
            temps.try_reserve(1).map_err(|_| HypError::OutOfMemory)?;
            let (buf_ptr, buffer) = self.guest.translate_noncontig(
                self.mem,
                self.limits,
                t.buf_ptr.get(),
                t.size.get(),
            )?;
            p.tmem_mut().buf_ptr.set(buf_ptr);
            temps.push((index, buffer));
        }
        Ok(())
    }

    /// Writes `ret` (origin COMMS) into the guest's arg at `ipa`: the message failed in the
    /// mediator.
    fn write_result(&mut self, ipa: u64, ret: u32) {
        let Some(pa) = self.guest.stage2.translate(ipa) else {
            return;
        };
        if let (Some(at_ret), Some(at_origin)) =
            (pa.checked_add(RET_AT), pa.checked_add(RET_ORIGIN_AT))
        {
            self.mem.write(at_ret, &ret.to_le_bytes());
            self.mem.write(at_origin, &TEE_ORIGIN_COMMS.to_le_bytes());
        }
    }

    /// Calls the TEE with `regs` for `call` and follows its answers until the call ends or the
    /// guest must answer an RPC.
    pub(super) fn drive(&mut self, mut call: Call, mut regs: SmcRegs) -> SmcRegs {
        loop {
            let out = self.tee.smc(regs);
            let a0 = out.a0();
            if out.a[0] > LOW32 || !is_rpc_return(a0) {
                return self.complete(call, a0);
            }
            let thread = out.a[3];
            match self.rpc_to_guest(&mut call, &out) {
                Flow::Tee(next) => regs = next,
                Flow::Guest(to_guest) => return self.suspend(call, thread, to_guest),
            }
        }
    }

    /// Parks `call` under its TEE thread id until the guest answers.
    pub(super) fn suspend(&mut self, call: Call, thread: u64, to_guest: SmcRegs) -> SmcRegs {
        if let Some(old) = self.guest.calls.insert(thread, call) {
            // The TEE reused a thread id of a call it had not finished: that call is over.
            self.guest.end_call(self.mem, old);
        }
        to_guest
    }

    /// Resumes the TEE's thread `thread` with `a1`, `a2`, `a4`, `a5`.
    pub(super) fn resume(&self, thread: u64, a: [u64; 4]) -> Flow {
        Flow::Tee(
            SmcRegs::call(
                OPTEE_SMC_CALL_RETURN_FROM_RPC,
                &[a[0], a[1], thread, a[2], a[3]],
            )
            .from_client(self.vm),
        )
    }

    /// The call ended with `a0`: copy results back (only on OK), settle registrations, and
    /// release what the call held.
    fn complete(&mut self, mut call: Call, a0: u32) -> SmcRegs {
        if a0 == OPTEE_SMC_RETURN_OK {
            let mut page = [0u8; PAGE];
            if let Some(result) = page.get_mut(..call.arg.len()) {
                self.mem.read(call.shadow_arg, result);
                if let (Ok((hdr, out)), Ok((_, sent))) = (split_arg(result), split_arg(&call.arg)) {
                    self.copy_back(call.guest_arg_ipa, hdr, sent, out);
                    let ret = hdr.ret.get();
                    match call.cmd {
                        OPTEE_MSG_CMD_REGISTER_SHM if ret == TEE_SUCCESS => {
                            self.keep_registered(&mut call);
                        }
                        OPTEE_MSG_CMD_UNREGISTER_SHM => self.after_unregister(&call, ret),
                        _ => {}
                    }
                }
            }
        }
        self.guest.end_call(self.mem, call);
        SmcRegs::ret(a0)
    }

    /// Xen's `copy_std_request_back`: only `ret`, `ret_origin`, `session`, output values and
    /// output memref sizes reach the guest, never the translated addresses. The guest's arg
    /// page is translated again (it may have left the guest; then nothing is written).
    fn copy_back(&mut self, ipa: u64, hdr: &MsgArgHeader, sent: &[MsgParam], out: &[MsgParam]) {
        let Some(pa) = self.guest.stage2.translate(ipa) else {
            return;
        };
        let put = |at: u64, bytes: &[u8]| {
            if let Some(to) = pa.checked_add(at) {
                self.mem.write(to, bytes);
            }
        };
        put(SESSION_AT, hdr.session.as_bytes());
        put(RET_AT, hdr.ret.as_bytes());
        put(RET_ORIGIN_AT, hdr.ret_origin.as_bytes());
        for (i, (s, o)) in (0u64..).zip(sent.iter().zip(out)) {
            let Ok(ty) = s.param_type() else { continue };
            if !ty.is_output() {
                continue;
            }
            let base = HEADER_SIZE + i * PARAM_SIZE;
            if ty.is_value() {
                put(base + VALUE_AT, o.value().as_bytes());
            } else {
                put(base + MEMREF_SIZE_AT, o.tmem().size.as_bytes());
            }
        }
    }

    /// REGISTER_SHM succeeded: its buffer stays pinned under its cookie; its shadow list was
    /// read by the TEE and goes.
    fn keep_registered(&mut self, call: &mut Call) {
        let Some(at) = call.temps.iter().position(|(index, _)| *index == 0) else {
            return;
        };
        let (_, mut buffer) = call.temps.swap_remove(at);
        // A temp at index 0 means param 0 was parsed before; without it there is no cookie to
        // keep the buffer under (not cookie 0), so the pins go with the call's end.
        let Some(cookie) = split_arg(&call.arg)
            .ok()
            .and_then(|(_, sent)| sent.first())
            .map(|p| p.tmem().shm_ref.get())
        else {
            call.temps.push((0, buffer));
            return;
        };
        let lists = core::mem::take(&mut buffer.lists);
        self.guest.free_shadows(self.mem, &lists);
        if let Some(old) = self.guest.registered.insert(cookie, buffer) {
            // The TEE accepted a cookie twice (the core refuses): keep the older pinned until
            // the guest ends, since the TEE may still use it.
            self.guest.draining.push(Draining {
                buffer: old,
                waiting: BTreeSet::new(),
            });
        }
    }

    /// UNREGISTER_SHM answered `ret`.
    ///
    /// - `SUCCESS`: the TEE will never touch the pages again: unpin at once. teeshm's core
    ///   answers `SUCCESS` also for a buffer a call still uses: it *revokes* the buffer before
    ///   answering (its mapping goes, every later access of the call fails with
    ///   `TEE_ERROR_ACCESS_CONFLICT`), because Linux frees and reuses the pages whatever the
    ///   answer. So the guest may give the pages away as soon as it sees the answer.
    /// - `BUSY` (a core that answers it, as teeshm's did before revocation): the TEE forgot the
    ///   cookie but a call still uses the buffer and releases it when it ends. Its users can
    ///   only be calls of this guest in flight now, so the pins are kept until each of those
    ///   has ended (a retry of the unregister cannot tell: such a core answers
    ///   `BAD_PARAMETERS` for the forgotten cookie at once).
    /// - `ITEM_NOT_FOUND` / `BAD_PARAMETERS` to a well-formed request (one `RMEM_INPUT`): the
    ///   TEE does not know the cookie, so it holds nothing under it: unpin.
    /// - anything else: the TEE may still hold the buffer: keep it.
    ///
    /// A `BUSY` with no call in flight keeps the pins until the guest ends: there is then no
    /// event that would show the buffer free.
    fn after_unregister(&mut self, call: &Call, ret: u32) {
        let Ok((_, sent)) = split_arg(&call.arg) else {
            return;
        };
        let [param] = sent else {
            return;
        };
        let cookie = param.rmem().shm_ref.get();
        let well_formed = param.attr() == OPTEE_MSG_ATTR_TYPE_RMEM_INPUT;
        match ret {
            TEE_SUCCESS => {}
            TEE_ERROR_ITEM_NOT_FOUND | TEE_ERROR_BAD_PARAMETERS if well_formed => {}
            TEE_ERROR_BUSY => {
                if let Some(buffer) = self.guest.registered.remove(&cookie) {
                    let waiting = self.guest.calls.values().map(|c| c.id).collect();
                    self.guest.draining.push(Draining { buffer, waiting });
                }
                return;
            }
            _ => return,
        }
        if let Some(buffer) = self.guest.registered.remove(&cookie) {
            self.guest.release_buffer(self.mem, buffer);
        }
    }
}
