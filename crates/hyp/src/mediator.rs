//! The mediator proper: one guest SMC in, the guest's registers out, the TEE called on the way
//! with translated addresses, shadows and the guest's id.

use crate::config::{GuestStats, HypLimits};
use crate::error::HypError;
use crate::guest::{Call, Draining, GuestState, Pending, RpcArg};
use crate::memory::MachineMemory;
use crate::stage2::{PAGE_MASK, PAGE_SIZE, Stage2};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::mem::offset_of;
use teeshm_abi::GuestId;
use teeshm_abi::caps::{NonSecureCaps, SecureCaps};
use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_BUSY, TEE_ERROR_COMMUNICATION, TEE_ERROR_ITEM_NOT_FOUND,
    TEE_ORIGIN_COMMS, TEE_SUCCESS,
};
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION, OPTEE_MSG_CMD_INVOKE_COMMAND, OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM, ParamType, Tmem, Value,
    arg_size_checked, split_arg, split_arg_mut,
};
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
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

/// Where the fields copied back to a guest lie in an `optee_msg_arg`.
const SESSION_AT: u64 = offset_of!(MsgArgHeader, session) as u64;
const RET_AT: u64 = offset_of!(MsgArgHeader, ret) as u64;
const RET_ORIGIN_AT: u64 = offset_of!(MsgArgHeader, ret_origin) as u64;
const HEADER_SIZE: u64 = size_of::<MsgArgHeader>() as u64;
const PARAM_SIZE: u64 = size_of::<MsgParam>() as u64;
const VALUE_AT: u64 = offset_of!(MsgParam, u) as u64;
const MEMREF_SIZE_AT: u64 = VALUE_AT + offset_of!(Tmem, size) as u64;

const PAGE: usize = PAGE_SIZE as usize;
const LOW32: u64 = 0xffff_ffff;

/// Where an RPC goes next.
enum Flow {
    /// To the guest, with these registers; the call waits for its answer.
    Guest(SmcRegs),
    /// Back to the TEE with these registers: the mediator answered it itself.
    Tee(SmcRegs),
}

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

/// The hypervisor's OP-TEE mediator: guests' SMCs in, the TEE behind `T`, machine memory
/// behind `M`.
///
/// It is one object for all guests so that guests share one TEE conduit and one pool of
/// hypervisor pages; every piece of state inside is per guest ([`Mediator::stats`]), and a
/// guest's SMC only ever touches its own. Calls are handled to completion or to their next RPC
/// inside [`Mediator::handle_guest_smc`]; a platform with several CPUs serialises entry (one
/// `&mut`), as the TEE's answers come back synchronously anyway.
pub struct Mediator<T: SmcConduit, M: MachineMemory> {
    tee: T,
    memory: M,
    limits: HypLimits,
    guests: BTreeMap<GuestId, GuestState>,
    next_call: u64,
}

impl<T: SmcConduit, M: MachineMemory> Mediator<T, M> {
    /// A mediator in front of `tee`, with `memory` for guest access and shadow pages, and
    /// `limits` for every guest. No guest exists yet.
    pub fn new(tee: T, memory: M, limits: HypLimits) -> Self {
        Self {
            tee,
            memory,
            limits,
            guests: BTreeMap::new(),
            next_call: 1,
        }
    }

    /// Guest start: allocates the guest's state and sends `VM_CREATED` (a1 = vm id, a7 = 0)
    /// to the TEE. VM ids are chosen by the caller (1..=0xffff: 0 is the hypervisor's own).
    ///
    /// # Errors
    /// [`HypError::ReservedGuestId`] for 0, [`HypError::GuestExists`], or
    /// [`HypError::TeeRefused`] when the TEE refuses the guest (nothing is kept then).
    pub fn create_guest(&mut self, vm: GuestId, stage2: Stage2) -> Result<(), HypError> {
        if vm.is_hypervisor() {
            return Err(HypError::ReservedGuestId { vm });
        }
        if self.guests.contains_key(&vm) {
            return Err(HypError::GuestExists { vm });
        }
        let out = self.tee.smc(
            SmcRegs::call(OPTEE_SMC_VM_CREATED, &[u64::from(vm.raw())])
                .from_client(GuestId::HYPERVISOR),
        );
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return Err(HypError::TeeRefused {
                call: "VM_CREATED",
                code: out.a0(),
            });
        }
        self.guests.insert(vm, GuestState::new(stage2));
        Ok(())
    }

    /// Guest end (its vCPUs stopped): every pin and record of the guest goes, then the TEE is
    /// told `VM_DESTROYED`, then the guest's shadow pages return to the hypervisor.
    ///
    /// Xen frees its shadow pages before `VM_DESTROYED`; here they are given back only after
    /// the TEE has forgotten the guest (its suspended calls, its cached RPC args), so a page the
    /// TEE may still reference is never handed out again in between. Guest pages are unpinned
    /// first, as in Xen: the guest's memory is only reclaimed by the platform afterwards.
    ///
    /// # Errors
    /// [`HypError::UnknownGuest`], or [`HypError::TeeRefused`] if the TEE refused
    /// `VM_DESTROYED` (the mediator has forgotten the guest all the same).
    pub fn destroy_guest(&mut self, vm: GuestId) -> Result<(), HypError> {
        let guest = self
            .guests
            .remove(&vm)
            .ok_or(HypError::UnknownGuest { vm })?;
        let shadows = guest.release_all();
        let out = self.tee.smc(
            SmcRegs::call(OPTEE_SMC_VM_DESTROYED, &[u64::from(vm.raw())])
                .from_client(GuestId::HYPERVISOR),
        );
        for pa in shadows {
            self.memory.free_page(pa);
        }
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return Err(HypError::TeeRefused {
                call: "VM_DESTROYED",
                code: out.a0(),
            });
        }
        Ok(())
    }

    /// One SMC from guest `vm` (its registers, with IPAs); returns what the guest sees.
    ///
    /// Never panics, whatever the registers and the guest's memory hold. An unknown guest gets
    /// `ENOTAVAIL` (as the TEE answers an unknown client id).
    pub fn handle_guest_smc(&mut self, vm: GuestId, regs: SmcRegs) -> SmcRegs {
        let Self {
            tee,
            memory,
            limits,
            guests,
            next_call,
        } = self;
        let Some(guest) = guests.get_mut(&vm) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        };
        Ctx {
            vm,
            tee,
            mem: memory,
            limits,
            guest,
            next_call,
        }
        .handle(&regs)
    }

    /// Pin references guest `vm` holds (0 for an unknown guest), for leak checks.
    pub fn pinned_pages(&self, vm: GuestId) -> u64 {
        self.guests.get(&vm).map_or(0, |g| g.pins.total())
    }

    /// What guest `vm` holds, or `None` if it does not exist.
    pub fn stats(&self, vm: GuestId) -> Option<GuestStats> {
        self.guests.get(&vm).map(GuestState::stats)
    }

    /// Shadow pages held for all guests together (0 when nothing leaks).
    pub fn shadow_pages(&self) -> u64 {
        self.guests
            .values()
            .fold(0u64, |n, g| n.saturating_add(g.shadow_pages))
    }

    /// The live guests, in id order.
    pub fn guests(&self) -> impl Iterator<Item = GuestId> + '_ {
        self.guests.keys().copied()
    }

    /// Guest `vm`'s stage 2.
    pub fn stage2(&self, vm: GuestId) -> Option<&Stage2> {
        self.guests.get(&vm).map(|g| &g.stage2)
    }

    /// Adds RAM to a live guest (ballooning in).
    ///
    /// # Errors
    /// [`HypError::UnknownGuest`], or what [`Stage2::map`] refuses.
    pub fn map_guest_page(
        &mut self,
        vm: GuestId,
        ipa_page: u64,
        pa_page: u64,
    ) -> Result<(), HypError> {
        self.guest_mut(vm)?.stage2.map(ipa_page, pa_page)
    }

    /// Takes RAM from a live guest (ballooning out), unless the TEE may use the page: a pinned
    /// page stays, which is what pinning is for.
    ///
    /// # Errors
    /// [`HypError::UnknownGuest`], [`HypError::Pinned`], or what [`Stage2::unmap`] refuses.
    pub fn unmap_guest_page(&mut self, vm: GuestId, ipa_page: u64) -> Result<u64, HypError> {
        let guest = self.guest_mut(vm)?;
        if let Some(pa) = guest.stage2.translate(ipa_page & !PAGE_MASK) {
            if guest.pins.is_pinned(pa) {
                return Err(HypError::Pinned { ipa: ipa_page });
            }
        }
        guest.stage2.unmap(ipa_page)
    }

    /// The limits every guest gets.
    pub fn limits(&self) -> HypLimits {
        self.limits
    }

    /// Machine memory (for the platform and tests).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Machine memory, mutably (for the platform: e.g. to grow or shrink the hypervisor's pool).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// The TEE conduit.
    pub fn tee(&self) -> &T {
        &self.tee
    }

    /// The TEE conduit, mutably (e.g. to reach the TEE behind a simulator conduit).
    pub fn tee_mut(&mut self) -> &mut T {
        &mut self.tee
    }

    fn guest_mut(&mut self, vm: GuestId) -> Result<&mut GuestState, HypError> {
        self.guests
            .get_mut(&vm)
            .ok_or(HypError::UnknownGuest { vm })
    }
}

/// One guest's SMC in progress: the mediator's parts it needs, borrowed apart.
struct Ctx<'a, T: SmcConduit, M: MachineMemory> {
    vm: GuestId,
    tee: &'a mut T,
    mem: &'a mut M,
    limits: &'a HypLimits,
    guest: &'a mut GuestState,
    next_call: &'a mut u64,
}

impl<T: SmcConduit, M: MachineMemory> Ctx<'_, T, M> {
    fn handle(&mut self, regs: &SmcRegs) -> SmcRegs {
        let Ok(func) = u32::try_from(regs.a[0]) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION);
        };
        if is_fast_call(func) {
            return self.fast_call(func, regs);
        }
        match func {
            OPTEE_SMC_CALL_WITH_ARG => self.call_with_arg(regs),
            OPTEE_SMC_CALL_RETURN_FROM_RPC => self.return_from_rpc(regs),
            // Never offered (no RPC_ARG capability): the TEE would place RPC args in guest
            // memory the mediator does not shadow. Answered as a TEE without them would.
            OPTEE_SMC_CALL_WITH_RPC_ARG | OPTEE_SMC_CALL_WITH_REGD_ARG => {
                SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION)
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }

    /// The TEE's answer to `func` with `args`, on behalf of this guest (a7 = its id, whatever
    /// the guest put there).
    fn forward(&mut self, func: u32, args: &[u64]) -> SmcRegs {
        self.tee.smc(SmcRegs::call(func, args).from_client(self.vm))
    }

    // ---- fast calls ------------------------------------------------------------------------

    fn fast_call(&mut self, func: u32, regs: &SmcRegs) -> SmcRegs {
        match func {
            OPTEE_SMC_CALLS_UID
            | OPTEE_SMC_CALLS_REVISION
            | OPTEE_SMC_CALLS_COUNT
            | OPTEE_SMC_CALL_GET_OS_UUID
            | OPTEE_SMC_CALL_GET_OS_REVISION => {
                // No arguments, no addresses in the answer: a0..a3 pass through.
                let out = self.forward(func, &[]);
                SmcRegs::call(out.a0(), &[out.a[1], out.a[2], out.a[3]])
            }
            OPTEE_SMC_GET_THREAD_COUNT => {
                let out = self.forward(func, &[]);
                if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
                    return SmcRegs::ret(out.a0());
                }
                let threads = out.a[1].min(u64::from(self.limits.max_calls));
                SmcRegs::call(OPTEE_SMC_RETURN_OK, &[threads])
            }
            OPTEE_SMC_EXCHANGE_CAPABILITIES => self.exchange_capabilities(regs.a[1]),
            // No static carve-out for guests: it would be shared by all of them.
            OPTEE_SMC_GET_SHM_CONFIG => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
            OPTEE_SMC_ENABLE_SHM_CACHE => SmcRegs::ret(self.forward(func, &[]).a0()),
            OPTEE_SMC_DISABLE_SHM_CACHE => self.disable_shm_cache(),
            // Only the mediator announces and ends guests.
            OPTEE_SMC_VM_CREATED | OPTEE_SMC_VM_DESTROYED => {
                SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL)
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }

    fn exchange_capabilities(&mut self, a1: u64) -> SmcRegs {
        // Like Xen: only UNIPROCESSOR of the guest's caps goes to the TEE.
        let ns = a1 & u64::from(NonSecureCaps::UNIPROCESSOR.bits());
        let out = self.forward(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[ns]);
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return SmcRegs::ret(out.a0());
        }
        let caps = SecureCaps::from_bits_truncate((out.a[1] & LOW32) as u32)
            & (SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL);
        if !caps.contains(SecureCaps::DYNAMIC_SHM) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        SmcRegs::call(OPTEE_SMC_RETURN_OK, &[u64::from(caps.bits())])
    }

    /// Forwards `DISABLE_SHM_CACHE`; the cookie handed back names an RPC arg buffer the TEE has
    /// let go, whose shadow and pin go before the guest sees the cookie (Xen, with the right
    /// function id: its `1c3ed9c908` bug sent ENABLE here).
    fn disable_shm_cache(&mut self) -> SmcRegs {
        let out = self.forward(OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return SmcRegs::ret(out.a0());
        }
        let cookie = reg_pair(out.a[1], out.a[2]);
        if let Some(arg) = self.guest.rpc_args.remove(&cookie) {
            self.guest.release_rpc_arg(self.mem, arg);
        }
        let (hi, lo) = split_pair(cookie);
        SmcRegs::call(OPTEE_SMC_RETURN_OK, &[hi, lo])
    }

    // ---- CALL_WITH_ARG ---------------------------------------------------------------------

    fn call_with_arg(&mut self, regs: &SmcRegs) -> SmcRegs {
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
        let shadow = match self.guest.alloc_shadow(self.mem) {
            Ok(pa) => pa,
            Err(_) => {
                for (_, buffer) in temps {
                    self.guest.release_buffer(self.mem, buffer);
                }
                return SmcRegs::ret(OPTEE_SMC_RETURN_ENOMEM);
            }
        };
        self.mem.write(shadow, &arg);
        let id = *self.next_call;
        *self.next_call = id.wrapping_add(1);
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
    fn drive(&mut self, mut call: Call, mut regs: SmcRegs) -> SmcRegs {
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
    fn suspend(&mut self, call: Call, thread: u64, to_guest: SmcRegs) -> SmcRegs {
        if let Some(old) = self.guest.calls.insert(thread, call) {
            // The TEE reused a thread id of a call it had not finished: that call is over.
            self.guest.end_call(self.mem, old);
        }
        to_guest
    }

    /// Resumes the TEE's thread `thread` with `a1`, `a2`, `a4`, `a5`.
    fn resume(&self, thread: u64, a: [u64; 4]) -> Flow {
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
        let Ok((_, sent)) = split_arg(&call.arg) else {
            // Cannot happen (the arg was parsed before); keep the pins with the call's end.
            call.temps.push((0, buffer));
            return;
        };
        let cookie = sent.first().map_or(0, |p| p.tmem().shm_ref.get());
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
    /// - `SUCCESS`: the TEE holds nothing of the pages any more: unpin.
    /// - `BUSY`: the TEE forgot the cookie but a call still uses the buffer and releases it
    ///   when it ends. Its users can only be calls of this guest in flight now, so the pins are
    ///   kept until each of those has ended (a retry of the unregister cannot tell: the core
    ///   answers `BAD_PARAMETERS` for the forgotten cookie at once).
    /// - `ITEM_NOT_FOUND` / `BAD_PARAMETERS` to a well-formed request (one `RMEM_INPUT`): the
    ///   TEE does not know the cookie, so it holds nothing under it: unpin.
    /// - anything else: the TEE may still hold the buffer: keep it.
    ///
    /// A `BUSY` with no call in flight (which the core never answers) keeps the pins until the
    /// guest ends: there is then no event that would show the buffer free.
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

    // ---- RPCs ------------------------------------------------------------------------------

    /// The TEE suspended `call` with an RPC (`out`): prepare what the guest must see, or answer
    /// the TEE directly when the guest cannot help.
    fn rpc_to_guest(&mut self, call: &mut Call, out: &SmcRegs) -> Flow {
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

    fn return_from_rpc(&mut self, regs: &SmcRegs) -> SmcRegs {
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
        let shadow = match self.guest.alloc_shadow(self.mem) {
            Ok(shadow) => shadow,
            Err(e) => {
                self.guest.pins.unpin_all(&[pa_page]);
                return Err(e);
            }
        };
        self.guest.buffers = self.guest.buffers.saturating_add(1);
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
        let shm_type = r_params.first().map_or(0, |p| p.value().a.get());
        match self.translate_alloc_answer(call, g_params.first()) {
            Ok(param) => {
                if let Some(slot) = r_params.first_mut() {
                    *slot = param;
                }
                None
            }
            Err(error) => Some(FailedAlloc {
                error,
                shm_type,
                guest_cookie: g_params.first().map_or(0, |p| p.tmem().shm_ref.get()),
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
        answer: Option<&MsgParam>,
    ) -> Result<MsgParam, HypError> {
        let bad = |problem| HypError::BadParam { index: 0, problem };
        let g = answer.ok_or(bad("SHM_ALLOC answer without a parameter"))?;
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
