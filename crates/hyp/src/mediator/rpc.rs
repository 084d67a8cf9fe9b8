//! RPCs of the TEE on the way to the guest, and the guest's answers on the way back: RPC arg
//! buffers shadowed, requests copied out, answers merged in, `SHM_ALLOC` buffers translated.

use super::{Ctx, Flow, HEADER_SIZE, PAGE, PARAM_SIZE, RET_AT, RET_ORIGIN_AT};
use crate::error::HypError;
use crate::guest::{Call, Pending, RpcArg};
use crate::memory::MachineMemory;
use crate::stage2::{PAGE_MASK, PAGE_SIZE};
use alloc::vec::Vec;
use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_COMMUNICATION, TEE_ORIGIN_COMMS, TEE_SUCCESS,
};
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Tmem, Value, arg_size_checked, split_arg, split_arg_mut,
};
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_abi::smc::{reg_pair, split_pair};
use zerocopy::{FromBytes, IntoBytes};

/// An `SHM_ALLOC` answer the mediator could not translate: why, and what the guest must free.
struct FailedAlloc {
    error: HypError,
    shm_type: u64,
    guest_cookie: u64,
}

/// Sets `ret` (origin COMMS) in an arg.
fn set_result(arg: &mut [u8], ret: u32) {
    if let Ok((hdr, _)) = split_arg_mut(arg) {
        hdr.ret.set(ret);
        hdr.ret_origin.set(TEE_ORIGIN_COMMS);
    }
}

impl<T: SmcConduit, M: MachineMemory> Ctx<'_, T, M> {
    /// The TEE suspended `call` with an RPC (`out`): prepare what the guest must see, or answer
    /// the TEE directly when the guest cannot help.
    pub(super) fn rpc_to_guest(&mut self, call: &mut Call, out: &SmcRegs) -> Flow {
        let a0 = out.a0();
        let thread = out.a[3];
        match optee_smc_return_get_rpc_func(a0) {
            OPTEE_SMC_RPC_FUNC_ALLOC => {
                let size = out.a[1];
                if size == 0 || size > PAGE_SIZE {
                    // No shadow page can stand for it: the TEE gets "no memory".
                    return self.resume(thread, [0; 4]);
                }
                call.pending = Pending::Alloc { size };
                Flow::Guest(SmcRegs::call(a0, &[size, 0, thread]))
            }
            OPTEE_SMC_RPC_FUNC_FREE => {
                // Shadow and pin go before the guest sees the request, so the guest may reuse
                // the cookie at once (Xen 5d2d5365ff).
                let cookie = reg_pair(out.a[1], out.a[2]);
                if let Some(arg) = self.guest.rpc_args.remove(&cookie) {
                    self.guest.release_rpc_arg(self.mem, arg);
                }
                call.pending = Pending::Resume;
                let (hi, lo) = split_pair(cookie);
                Flow::Guest(SmcRegs::call(a0, &[hi, lo, thread]))
            }
            OPTEE_SMC_RPC_FUNC_CMD => {
                self.rpc_cmd_to_guest(call, reg_pair(out.a[1], out.a[2]), thread)
            }
            _ => {
                // FOREIGN_INTR and anything unknown: only the thread id goes out.
                call.pending = Pending::Resume;
                Flow::Guest(SmcRegs::call(a0, &[0, 0, thread]))
            }
        }
    }

    /// `RPC_CMD`: copies the TEE's request from the shadow into the guest's RPC arg buffer.
    fn rpc_cmd_to_guest(&mut self, call: &mut Call, cookie: u64, thread: u64) -> Flow {
        let Some(arg) = self.guest.rpc_args.get(&cookie) else {
            // Not a buffer of this guest: nothing can be served; the TEE reads its own request.
            return self.resume(thread, [0; 4]);
        };
        let (shadow, ipa, room) = (arg.shadow, arg.ipa, arg.room);
        let mut page = [0u8; PAGE];
        self.mem.read(shadow, &mut page);
        let request = MsgArgHeader::read_from_prefix(&page)
            .ok()
            .and_then(|(h, _)| arg_size_checked(h.num_params.get()).ok())
            .filter(|&size| size as u64 <= room)
            .and_then(|size| page.get(..size))
            .map(<[u8]>::to_vec);
        let (Some(request), Some(pa)) = (request, self.guest.stage2.translate(ipa)) else {
            self.fail_rpc(shadow);
            return self.resume(thread, [0; 4]);
        };
        self.mem.write(pa, &request);
        if let Ok((hdr, params)) = split_arg(&request) {
            if hdr.cmd.get() == OPTEE_RPC_CMD_SHM_FREE {
                // The TEE released the buffer before asking: unpin before the guest sees it
                // (Xen 5b13eb1d97).
                if let Some(p) = params.first() {
                    let freed = p.value().b.get();
                    if let Some(buffer) = self.guest.rpc_buffers.remove(&freed) {
                        self.guest.release_buffer(self.mem, buffer);
                    }
                }
            }
        }
        call.pending = Pending::Cmd { cookie, request };
        let (hi, lo) = split_pair(cookie);
        Flow::Guest(SmcRegs::call(OPTEE_SMC_RETURN_RPC_CMD, &[hi, lo, thread]))
    }

    /// Marks the TEE's RPC request in `shadow` as failed (`COMMUNICATION`).
    fn fail_rpc(&mut self, shadow: u64) {
        self.mem
            .write(shadow + RET_AT, &TEE_ERROR_COMMUNICATION.to_le_bytes());
        self.mem
            .write(shadow + RET_ORIGIN_AT, &TEE_ORIGIN_COMMS.to_le_bytes());
    }

    pub(super) fn return_from_rpc(&mut self, regs: &SmcRegs) -> SmcRegs {
        let thread = regs.a[3];
        let Some(mut call) = self.guest.calls.remove(&thread) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ERESUME);
        };
        let flow = match core::mem::take(&mut call.pending) {
            Pending::Resume => self.resume(thread, [0; 4]),
            Pending::Alloc { size } => self.rpc_alloc_answer(size, regs, thread),
            Pending::Cmd { cookie, request } => {
                self.rpc_cmd_answer(&mut call, cookie, request, thread)
            }
            Pending::HypFree {
                cookie,
                mut request,
                code,
            } => {
                // The guest freed the buffer it could not share; the TEE hears the reason.
                if let Ok((hdr, _)) = split_arg_mut(&mut request) {
                    hdr.ret.set(code);
                    hdr.ret_origin.set(TEE_ORIGIN_COMMS);
                }
                self.reply_to_tee(cookie, &request);
                self.resume(thread, [0; 4])
            }
        };
        match flow {
            Flow::Tee(next) => self.drive(call, next),
            Flow::Guest(to_guest) => self.suspend(call, thread, to_guest),
        }
    }

    /// Writes an RPC reply into the shadow of RPC arg buffer `cookie`.
    fn reply_to_tee(&mut self, cookie: u64, reply: &[u8]) {
        if let Some(arg) = self.guest.rpc_args.get(&cookie) {
            self.mem.write(arg.shadow, reply);
        }
    }

    /// The guest's answer to `RPC_FUNC_ALLOC`: a1:a2 = IPA of the buffer, a4:a5 = its cookie.
    /// The TEE gets a shadow page instead (Xen's `allocate_and_pin_shm_rpc`); the guest's page
    /// is pinned, for the copies of each RPC. Any refusal gives the TEE a PA of 0, which it
    /// takes as "no memory" and fails cleanly.
    fn rpc_alloc_answer(&mut self, size: u64, regs: &SmcRegs, thread: u64) -> Flow {
        let ipa = reg_pair(regs.a[1], regs.a[2]);
        let cookie = reg_pair(regs.a[4], regs.a[5]);
        let (chi, clo) = split_pair(cookie);
        match self.adopt_rpc_arg(ipa, cookie, size) {
            Ok(shadow) => {
                let (shi, slo) = split_pair(shadow);
                self.resume(thread, [shi, slo, chi, clo])
            }
            Err(_) => self.resume(thread, [0, 0, chi, clo]),
        }
    }

    fn adopt_rpc_arg(&mut self, ipa: u64, cookie: u64, size: u64) -> Result<u64, HypError> {
        if ipa == 0 {
            // Linux answers 0 when it has no memory.
            return Err(HypError::NotGuestRam { ipa });
        }
        if self.guest.rpc_args.contains_key(&cookie) {
            return Err(HypError::DuplicateCookie { cookie });
        }
        let pa = self
            .guest
            .stage2
            .translate(ipa)
            .ok_or(HypError::NotGuestRam { ipa })?;
        let room = PAGE_SIZE - (ipa & PAGE_MASK);
        if room < size {
            return Err(HypError::BadParam {
                index: 0,
                problem: "RPC arg buffer smaller than asked",
            });
        }
        self.guest.check_buffer_room(self.limits)?;
        let pa_page = pa & !PAGE_MASK;
        self.guest
            .pins
            .pin_all(&[pa_page], self.limits.max_pinned_pages)?;
        let shadow = match self.guest.alloc_shadow(self.mem, self.limits) {
            Ok(shadow) => shadow,
            Err(e) => {
                self.guest.pins.unpin_all(&[pa_page]);
                return Err(e);
            }
        };
        self.guest.buffers.add(1);
        self.guest.rpc_args.insert(
            cookie,
            RpcArg {
                ipa,
                pa_page,
                room,
                shadow,
            },
        );
        Ok(shadow)
    }

    /// The guest answered an `RPC_CMD`: its answer is read once, and only what it may answer
    /// goes into the TEE's request — `ret`, `ret_origin`, output values and memref sizes, and
    /// for `SHM_ALLOC` the buffer, translated and pinned. The rest stays as the TEE wrote it.
    fn rpc_cmd_answer(
        &mut self,
        call: &mut Call,
        cookie: u64,
        mut reply: Vec<u8>,
        thread: u64,
    ) -> Flow {
        let Some(arg) = self.guest.rpc_args.get(&cookie) else {
            return self.resume(thread, [0; 4]);
        };
        let (ipa, room) = (arg.ipa, arg.room);
        let guest_pa = self.guest.stage2.translate(ipa);
        let mut page = [0u8; PAGE];
        let answer = match (guest_pa, page.get_mut(..reply.len())) {
            (Some(pa), Some(answer)) => {
                self.mem.read(pa, answer);
                Some(&*answer)
            }
            _ => None,
        };
        if let Some(failed) = self.merge_answer(call, &mut reply, answer) {
            let code = failed.error.gp_code();
            if let Some(pa) = guest_pa {
                if self.write_shm_free(pa, room, failed.shm_type, failed.guest_cookie) {
                    call.pending = Pending::HypFree {
                        cookie,
                        request: reply,
                        code,
                    };
                    let (hi, lo) = split_pair(cookie);
                    return Flow::Guest(SmcRegs::call(OPTEE_SMC_RETURN_RPC_CMD, &[hi, lo, thread]));
                }
            }
            set_result(&mut reply, code);
        }
        self.reply_to_tee(cookie, &reply);
        self.resume(thread, [0; 4])
    }

    /// Merges the guest's `answer` into `reply` (the TEE's request). Returns the buffer the
    /// guest allocated for `SHM_ALLOC` when it cannot be handed to the TEE.
    fn merge_answer(
        &mut self,
        call: &mut Call,
        reply: &mut [u8],
        answer: Option<&[u8]>,
    ) -> Option<FailedAlloc> {
        let (r_hdr, r_params) = split_arg_mut(reply).ok()?;
        let guest_answer = answer
            .and_then(|a| split_arg(a).ok())
            .filter(|(g_hdr, _)| g_hdr.num_params.get() == r_hdr.num_params.get());
        let Some((g_hdr, g_params)) = guest_answer else {
            r_hdr.ret.set(TEE_ERROR_COMMUNICATION);
            r_hdr.ret_origin.set(TEE_ORIGIN_COMMS);
            return None;
        };
        r_hdr.ret = g_hdr.ret;
        r_hdr.ret_origin = g_hdr.ret_origin;
        for (r, g) in r_params.iter_mut().zip(g_params) {
            copy_output(r, g);
        }
        if r_hdr.cmd.get() != OPTEE_RPC_CMD_SHM_ALLOC || g_hdr.ret.get() != TEE_SUCCESS {
            return None;
        }
        // The answer has as many params as the request; with none, the guest named no buffer
        // (so there is none to free) and the TEE learns the request was malformed.
        let (Some(slot), Some(answer)) = (r_params.first_mut(), g_params.first()) else {
            r_hdr.ret.set(TEE_ERROR_BAD_PARAMETERS);
            r_hdr.ret_origin.set(TEE_ORIGIN_COMMS);
            return None;
        };
        let shm_type = slot.value().a.get();
        match self.translate_alloc_answer(call, answer) {
            Ok(param) => {
                *slot = param;
                None
            }
            Err(error) => Some(FailedAlloc {
                error,
                shm_type,
                guest_cookie: answer.tmem().shm_ref.get(),
            }),
        }
    }

    /// Writes an `SHM_FREE` request for the guest's buffer `guest_cookie` into the guest's RPC
    /// arg buffer at `guest_pa` (Xen's `issue_rpc_cmd_free`); false if it does not fit.
    fn write_shm_free(
        &mut self,
        guest_pa: u64,
        room: u64,
        shm_type: u64,
        guest_cookie: u64,
    ) -> bool {
        let mut header = MsgArgHeader::default();
        header.cmd.set(OPTEE_RPC_CMD_SHM_FREE);
        header.num_params.set(1);
        let param = MsgParam::from_value(
            OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
            Value::new(shm_type, guest_cookie, 0),
        );
        if HEADER_SIZE + PARAM_SIZE > room {
            return false;
        }
        self.mem.write(guest_pa, header.as_bytes());
        self.mem.write(guest_pa + HEADER_SIZE, param.as_bytes());
        true
    }

    /// An `SHM_ALLOC` answer the guest says succeeded: a `TMEM_OUTPUT`, NONCONTIG or not,
    /// becomes a NONCONTIG shadow list of pinned PAs (a contiguous guest range is scattered in
    /// machine memory; Xen forwarded it untranslated). `buf_ptr` 0 stays 0 ("no buffer").
    fn translate_alloc_answer(
        &mut self,
        call: &mut Call,
        g: &MsgParam,
    ) -> Result<MsgParam, HypError> {
        let bad = |problem| HypError::BadParam { index: 0, problem };
        let attr = g.attr();
        let noncontig = attr == OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG;
        if attr != OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT && !noncontig {
            return Err(bad("SHM_ALLOC answer is not a TMEM_OUTPUT"));
        }
        let t = g.tmem();
        let (buf_ptr, size, cookie) = (t.buf_ptr.get(), t.size.get(), t.shm_ref.get());
        if buf_ptr == 0 {
            return Ok(MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                Tmem::new(0, size, cookie),
            ));
        }
        if self.guest.rpc_buffers.contains_key(&cookie) {
            return Err(HypError::DuplicateCookie { cookie });
        }
        let (shadow_ptr, mut buffer) = if noncontig {
            self.guest
                .translate_noncontig(self.mem, self.limits, buf_ptr, size)?
        } else {
            self.guest
                .translate_contiguous(self.mem, self.limits, buf_ptr, size)?
        };
        // The TEE reads the list when it resumes; the previous answer's list is surely read by
        // now (Xen frees it at the next SHM_ALLOC too).
        let lists = core::mem::take(&mut buffer.lists);
        let stale = core::mem::replace(&mut call.stale_lists, lists);
        self.guest.free_shadows(self.mem, &stale);
        self.guest.rpc_buffers.insert(cookie, buffer);
        Ok(MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(shadow_ptr, size, cookie),
        ))
    }
}

/// Copies what a guest may answer into one param of an RPC reply: output values, output
/// memref sizes.
fn copy_output(reply: &mut MsgParam, answer: &MsgParam) {
    let Ok(ty) = reply.param_type() else {
        return;
    };
    if !ty.is_output() {
        return;
    }
    if ty.is_value() {
        reply.set_value(answer.value());
    } else if ty.is_tmem() {
        reply.tmem_mut().size = answer.tmem().size;
    } else if ty.is_rmem() {
        reply.rmem_mut().size = answer.rmem().size;
    }
}
