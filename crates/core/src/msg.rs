//! The messages of yielding calls: REGISTER_SHM, UNREGISTER_SHM, OPEN_SESSION, INVOKE_COMMAND,
//! CLOSE_SESSION, CANCEL; their parameters; and the state a call keeps across RPCs.

use crate::arg::{ArgCopy, NsRef};
use crate::entry::Tee;
use crate::error::TeeError;
use crate::guest::{CachedRpcArg, GuestPartition};
use crate::mobj::{Mobj, MobjKind, MobjUse};
use crate::platform::Platform;
use crate::pta::{self, PtaWait};
use crate::ta::instance::PageSource;
use crate::ta::run::{Entry, TaParam, run_entry};
use crate::ta::{Session, TaInstance};
use alloc::collections::btree_map;
use alloc::sync::Arc;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ORIGIN_TEE, TEE_ORIGIN_TRUSTED_APP, TEE_SUCCESS};
use teeshm_abi::msg::{
    MsgParam, OPTEE_MSG_ATTR_META, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_MASK,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, OPTEE_MSG_CMD_CANCEL,
    OPTEE_MSG_CMD_CLOSE_SESSION, OPTEE_MSG_CMD_INVOKE_COMMAND, OPTEE_MSG_CMD_OPEN_SESSION,
    OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM, ParamType, TEE_NUM_PARAMS,
};
use teeshm_abi::msg::{Rmem, Tmem, Value};
use teeshm_abi::smc::reg_pair;
use teeshm_abi::utee::{
    self, UTEE_ENTRY_FUNC_CLOSE_SESSION, UTEE_ENTRY_FUNC_INVOKE_COMMAND,
    UTEE_ENTRY_FUNC_OPEN_SESSION,
};
use teeshm_mm::PAGE_SIZE;

/// A memory reference parameter's buffer: an object in use and the offset of the memref in it.
#[derive(Debug)]
pub struct MemrefBuf {
    /// The object.
    pub used: MobjUse,
    /// Offset of the memref's first byte in the object.
    pub offs: u64,
}

/// A parameter of a call, decoded from the secure copy and resolved to objects.
#[derive(Debug)]
pub enum CallParam {
    /// No parameter.
    None,
    /// A value parameter.
    Value {
        /// Its type (input, output, inout).
        ty: ParamType,
        /// `a`, `b`, `c`; outputs are written back from here.
        value: [u64; 3],
    },
    /// A memory reference (temporary, registered or NULL).
    Memref {
        /// Its type.
        ty: ParamType,
        /// The buffer; `None` for a NULL memref.
        buf: Option<MemrefBuf>,
        /// Size in bytes; for outputs, the size written back.
        size: u64,
    },
}

/// Where a call's RPC arg lies.
#[derive(Debug)]
pub(crate) enum RpcArgAt {
    /// None yet: the first RPC needs `RPC_FUNC_ALLOC`.
    Missing,
    /// At this offset of the call's own arg buffer, after its arg (`CALL_WITH_RPC_ARG`,
    /// `CALL_WITH_REGD_ARG`); the call's use of that buffer covers it until an RPC needs it
    /// (most calls make none, so they take no second use of the buffer).
    Appended(u64),
    /// The same, once an RPC needed it: a use of the buffer of its own.
    AppendedInUse(NsRef),
    /// A buffer the normal world allocated; `cookie` names it in `RPC_FUNC_FREE`.
    Allocated {
        /// The normal world's cookie.
        cookie: u64,
        /// The buffer.
        at: NsRef,
    },
}

/// What a suspended call waits for.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// `RPC_FUNC_ALLOC` of an RPC arg buffer; then the pseudo-TA goes on.
    RpcArgAlloc(PtaWait),
    /// The answer to an `RPC_CMD` of the pseudo-TA.
    Pta(PtaWait),
    /// `RPC_FUNC_FREE` of the RPC arg buffer; then the call ends.
    RpcArgFree,
}

/// What the secure world asks of the normal world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RpcRequest {
    /// `OPTEE_SMC_RETURN_RPC_ALLOC` of `size` bytes.
    Alloc(u64),
    /// `OPTEE_SMC_RETURN_RPC_FREE` of a cookie.
    Free(u64),
    /// `OPTEE_SMC_RETURN_RPC_CMD`, the RPC arg at the buffer with this cookie (0 when it is
    /// appended to the call's arg).
    Cmd(u64),
    /// `OPTEE_SMC_RETURN_RPC_FOREIGN_INTR`: an interrupt of the normal world is pending; it
    /// serves it and returns.
    ForeignInterrupt,
}

/// How a step of a call ended.
#[derive(Debug)]
pub(crate) enum Step {
    /// The message is done; its result is in the copy.
    Done,
    /// The call suspends until the normal world answers.
    Rpc(RpcRequest, Waiting),
}

/// A yielding call in progress: its guest, its arg (where it lies and the secure copy), its
/// RPC arg, its resolved parameters, and what it waits for.
#[derive(Debug)]
pub struct Call {
    pub(crate) guest: Arc<GuestPartition>,
    pub(crate) thread: usize,
    pub(crate) arg_at: NsRef,
    pub(crate) arg: ArgCopy,
    pub(crate) rpc_at: RpcArgAt,
    pub(crate) params: Vec<CallParam>,
    /// Index in the message of `params[0]` (2 for OPEN_SESSION, after the meta params).
    pub(crate) params_base: usize,
    pub(crate) waiting: Option<Waiting>,
    /// Temporary objects the call made (its arg page, NONCONTIG params); retired when it ends,
    /// so their mappings serve every access of the call and go with it.
    pub(crate) owned: Vec<Arc<Mobj>>,
}

impl Drop for Call {
    /// The call's end, however it comes (its last step, or its guest's destruction): what it
    /// made is retired, and released with the uses the call still holds.
    fn drop(&mut self) {
        for mobj in &self.owned {
            mobj.retire_queued();
        }
        if let RpcArgAt::Allocated { at, .. } = &self.rpc_at {
            at.used.mobj().retire_queued();
        }
    }
}

impl Call {
    pub(crate) fn guest_id(&self) -> GuestId {
        self.guest.id()
    }

    /// Every object the call holds a use of.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &Arc<Mobj>> {
        let rpc = match &self.rpc_at {
            RpcArgAt::Missing | RpcArgAt::Appended(_) => None,
            RpcArgAt::AppendedInUse(at) | RpcArgAt::Allocated { at, .. } => Some(at.used.mobj()),
        };
        let params = self.params.iter().filter_map(|p| match p {
            CallParam::Memref { buf: Some(b), .. } => Some(b.used.mobj()),
            _ => None,
        });
        core::iter::once(self.arg_at.used.mobj())
            .chain(rpc)
            .chain(params)
    }

    /// The `i`th parameter of the pseudo-TA.
    pub(crate) fn param(&self, i: usize) -> Option<&CallParam> {
        self.params.get(i)
    }

    pub(crate) fn param_mut(&mut self, i: usize) -> Option<&mut CallParam> {
        self.params.get_mut(i)
    }
}

impl<P: Platform> Tee<P> {
    /// Runs the message of a new call up to its end or its first RPC.
    pub(crate) fn run_message(&self, call: &mut Call) -> Step {
        let header = call.arg.header();
        let result = match header.cmd.get() {
            OPTEE_MSG_CMD_REGISTER_SHM => self.register_shm(call).map(|()| Step::Done),
            OPTEE_MSG_CMD_UNREGISTER_SHM => self.unregister_shm(call).map(|()| Step::Done),
            OPTEE_MSG_CMD_OPEN_SESSION => self.open_session(call).map(|()| Step::Done),
            OPTEE_MSG_CMD_CLOSE_SESSION => self.close_session(call).map(|()| Step::Done),
            OPTEE_MSG_CMD_INVOKE_COMMAND => match self.invoke_prepare(call) {
                Ok(Session::Pta) => {
                    let step = pta::invoke(self, call, header.func.get());
                    return self.after_pta(call, step);
                }
                Ok(Session::User(instance)) => {
                    let entry = Entry {
                        func: UTEE_ENTRY_FUNC_INVOKE_COMMAND,
                        session: header.session.get(),
                        cmd: header.func.get(),
                    };
                    let result = self.run_user_entry(call, &instance, entry);
                    return self.after_user_entry(call, result);
                }
                Err(e) => Err(e),
            },
            OPTEE_MSG_CMD_CANCEL => Ok(Step::Done),
            other => Err(TeeError::UnknownCommand(other)),
        };
        self.after_message(call, result, TEE_ORIGIN_TEE)
    }

    /// Goes on with a suspended call after the normal world answered (`a1`..`a5` of
    /// `RETURN_FROM_RPC`).
    pub(crate) fn resume_message(&self, call: &mut Call, answer: [u64; 5]) -> Step {
        match call.waiting.take() {
            Some(Waiting::RpcArgAlloc(then)) => match self.adopt_rpc_arg(call, answer) {
                Ok(()) => {
                    let step = pta::resume(self, call, then);
                    self.after_pta(call, step)
                }
                Err((e, None)) => self.after_pta(call, Err(e)),
                Err((e, Some(cookie))) => {
                    // The normal world did allocate: it gets its buffer back by RPC_FREE
                    // before the call ends, as OP-TEE's `thread_rpc_alloc_arg` does.
                    let _ = self.after_pta(call, Err(e));
                    Step::Rpc(RpcRequest::Free(cookie), Waiting::RpcArgFree)
                }
            },
            Some(Waiting::Pta(wait)) => {
                let step = pta::resume(self, call, wait);
                self.after_pta(call, step)
            }
            Some(Waiting::RpcArgFree) | None => Step::Done,
        }
    }

    /// Ends a message whose user TA returned `result`: its outputs are written back on success
    /// and on `TEE_ERROR_SHORT_BUFFER` (the needed sizes), as OP-TEE does.
    fn after_user_entry(&self, call: &mut Call, result: Result<u32, TeeError>) -> Step {
        let step = match result {
            Ok(TEE_SUCCESS) => {
                self.write_back_params(call);
                Ok(Step::Done)
            }
            Ok(code) => {
                if code == teeshm_abi::gp::TEE_ERROR_SHORT_BUFFER {
                    self.write_back_params(call);
                }
                Err(TeeError::TaResult(code))
            }
            Err(e) => Err(e),
        };
        self.after_message(call, step, TEE_ORIGIN_TRUSTED_APP)
    }

    /// Runs entry `func` of a user TA's `instance` with the call's parameters, mapped into the
    /// TA for the entry only; its outputs go back into the call's parameters.
    fn run_user_entry(
        &self,
        call: &mut Call,
        instance: &Arc<TaInstance>,
        entry: Entry,
    ) -> Result<u32, TeeError> {
        // The client's buffers stay mapped in the TA while it runs: each is held by a copy pass
        // for the entry, so that an unregistration waits for it (docs/core.md, revocation).
        let mut objects: Vec<Arc<Mobj>> = Vec::new();
        let mut params = Vec::new();
        for p in &call.params {
            params.push(match p {
                CallParam::None => TaParam::None,
                CallParam::Value { ty, value } => TaParam::Value {
                    ty: tee_param_type(*ty),
                    a: value[0] & 0xffff_ffff,
                    b: value[1] & 0xffff_ffff,
                },
                CallParam::Memref { ty, buf, size } => {
                    let source = match buf {
                        Some(MemrefBuf { used, offs }) if *size != 0 => {
                            let mobj = used.mobj();
                            let start = mobj
                                .page_offset()
                                .checked_add(*offs)
                                .ok_or(TeeError::BadParameters("memref offset overflows"))?;
                            let in_page = start % PAGE_SIZE;
                            let pages = (in_page + *size).div_ceil(PAGE_SIZE);
                            objects.push(mobj.clone());
                            let source = PageSource::Object {
                                mobj: mobj.clone(),
                                first: start / PAGE_SIZE,
                            };
                            Some((source, in_page, pages))
                        }
                        _ => None,
                    };
                    TaParam::Memref {
                        ty: tee_param_type(*ty),
                        source,
                        size: *size,
                    }
                }
            });
        }
        let passes = objects
            .iter()
            .map(|m| m.begin_copy().ok_or(TeeError::Revoked(m.id())))
            .collect::<Result<Vec<_>, _>>()?;
        let result = run_entry(self, instance, entry, &mut params, 1, None);
        drop(passes);
        for (p, out) in call.params.iter_mut().zip(&params) {
            match (p, out) {
                (CallParam::Value { ty, value }, TaParam::Value { a, b, .. }) if ty.is_output() => {
                    // GP values are 32 bits; `utee_params` carries them in 64.
                    value[0] = *a & 0xffff_ffff;
                    value[1] = *b & 0xffff_ffff;
                }
                (CallParam::Memref { ty, size, .. }, TaParam::Memref { size: out, .. })
                    if ty.is_output() =>
                {
                    *size = *out;
                }
                _ => {}
            }
        }
        result
    }

    fn after_pta(&self, call: &mut Call, step: Result<Step, TeeError>) -> Step {
        if step.is_ok() {
            self.write_back_params(call);
        }
        self.after_message(call, step, TEE_ORIGIN_TRUSTED_APP)
    }

    /// Records the message's result; when it is done, gives back an RPC arg buffer that the
    /// SHM cache does not keep.
    fn after_message(&self, call: &mut Call, step: Result<Step, TeeError>, origin: u32) -> Step {
        match step {
            Ok(Step::Rpc(request, waiting)) => return Step::Rpc(request, waiting),
            // `ret` is set on success too: the normal world's copy may hold anything.
            Ok(Step::Done) => call.arg.set_result(TEE_SUCCESS, origin),
            Err(e) => {
                let origin = match e {
                    TeeError::ShortBuffer { .. }
                    | TeeError::UnknownFunction(_)
                    | TeeError::TaResult(_) => origin,
                    TeeError::BadParameters(_) if origin == TEE_ORIGIN_TRUSTED_APP => origin,
                    _ => TEE_ORIGIN_TEE,
                };
                if let TeeError::ShortBuffer { .. } = e {
                    self.write_back_params(call);
                }
                call.arg.set_result(e.code(), origin);
            }
        }
        self.give_back_rpc_arg(call)
    }

    fn give_back_rpc_arg(&self, call: &mut Call) -> Step {
        let RpcArgAt::Allocated { cookie, .. } = call.rpc_at else {
            return Step::Done;
        };
        let rpc_at = core::mem::replace(&mut call.rpc_at, RpcArgAt::Missing);
        let RpcArgAt::Allocated { at, .. } = rpc_at else {
            return Step::Done;
        };
        let mut state = call.guest.state.lock();
        if state.shm_cache_enabled && !call.guest.is_dying() {
            state.cached_rpc_args.push(CachedRpcArg {
                cookie,
                mobj: at.used.mobj().clone(),
                offset: at.offset,
            });
            return Step::Done;
        }
        drop(state);
        self.releases.retire(at.used.mobj());
        Step::Rpc(RpcRequest::Free(cookie), Waiting::RpcArgFree)
    }

    /// Takes the buffer the normal world allocated for RPC args (`a1:a2` = PA, `a4:a5` =
    /// cookie). A refusal names the cookie to hand back when the normal world did allocate.
    fn adopt_rpc_arg(
        &self,
        call: &mut Call,
        answer: [u64; 5],
    ) -> Result<(), (TeeError, Option<u64>)> {
        let [a1, a2, _, a4, a5] = answer;
        let pa = reg_pair(a1, a2);
        let cookie = reg_pair(a4, a5);
        if pa == 0 {
            return Err((TeeError::OutOfMemory, None));
        }
        let refused = |e: TeeError| (e, Some(cookie));
        let at = self
            .ns_ref_at(
                &call.guest,
                pa,
                MobjKind::RpcBuffer,
                Some(cookie),
                &mut call.owned,
            )
            .map_err(|_| refused(TeeError::Rpc("RPC arg buffer unusable")))?;
        if at.available() < crate::arg::APPENDED_RPC_ARG {
            // Nobody else holds the new object: retired now, it is released with this use.
            self.releases.retire(at.used.mobj());
            return Err(refused(TeeError::Rpc("RPC arg buffer too small")));
        }
        call.rpc_at = RpcArgAt::Allocated { cookie, at };
        Ok(())
    }

    /// The call's RPC arg, taking one from the guest's SHM cache if it has none; `None` when
    /// the normal world must allocate one first.
    pub(crate) fn rpc_arg<'c>(&self, call: &'c mut Call) -> Option<(&'c NsRef, u64)> {
        if matches!(call.rpc_at, RpcArgAt::Missing) {
            let cached = call.guest.state.lock().cached_rpc_args.pop();
            if let Some(cached) = cached {
                match MobjUse::try_new(&cached.mobj) {
                    Some(used) => {
                        call.rpc_at = RpcArgAt::Allocated {
                            cookie: cached.cookie,
                            at: NsRef {
                                used,
                                offset: cached.offset,
                            },
                        };
                    }
                    None => return None,
                }
            }
        }
        if let RpcArgAt::Appended(offset) = call.rpc_at {
            call.rpc_at = RpcArgAt::AppendedInUse(NsRef {
                used: call.arg_at.used.clone(),
                offset,
            });
        }
        match &call.rpc_at {
            RpcArgAt::Missing | RpcArgAt::Appended(_) => None,
            RpcArgAt::AppendedInUse(at) => Some((at, 0)),
            RpcArgAt::Allocated { cookie, at } => Some((at, *cookie)),
        }
    }

    fn register_shm(&self, call: &mut Call) -> Result<(), TeeError> {
        let params = call.arg.params();
        let [param] = params else {
            return Err(TeeError::BadParameters("REGISTER_SHM takes one parameter"));
        };
        if param.attr() != OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG {
            return Err(TeeError::BadParam {
                index: 0,
                problem: "REGISTER_SHM needs a TMEM_OUTPUT | NONCONTIG page list",
            });
        }
        let Tmem {
            buf_ptr,
            size,
            shm_ref,
        } = param.tmem();
        let cookie = shm_ref.get();
        if call.guest.state.lock().registered.contains_key(&cookie) {
            return Err(TeeError::DuplicateCookie(cookie));
        }
        let mobj = self.page_list_mobj(
            &call.guest,
            buf_ptr.get(),
            size.get(),
            MobjKind::Registered,
            Some(cookie),
        )?;
        let mut state = call.guest.state.lock();
        // One lookup: the cookie is checked and taken under the same lock.
        if let btree_map::Entry::Vacant(vacant) = state.registered.entry(cookie)
            && !call.guest.is_dying()
        {
            vacant.insert(mobj);
            return Ok(());
        }
        drop(state);
        self.discard(&mobj);
        Err(TeeError::DuplicateCookie(cookie))
    }

    fn unregister_shm(&self, call: &mut Call) -> Result<(), TeeError> {
        let params = call.arg.params();
        let [param] = params else {
            return Err(TeeError::BadParameters(
                "UNREGISTER_SHM takes one parameter",
            ));
        };
        let cookie = param.rmem().shm_ref.get();
        let mobj = call
            .guest
            .state
            .lock()
            .registered
            .remove(&cookie)
            .ok_or(TeeError::UnknownCookie(cookie))?;
        // Linux frees and reuses the pages as soon as this returns, whatever it answers
        // (invariant 5): a buffer still in use is revoked now — its mapping goes and its users'
        // further accesses fail — and the object itself goes with its last user.
        match mobj.uses().retire() {
            crate::lifecycle::Retire::ReleaseNow => self.release(&mobj),
            crate::lifecycle::Retire::InUse { .. } | crate::lifecycle::Retire::AlreadyRetired => {
                // First no copy may run (this waits, holding no lock, for the copies in flight
                // on other CPUs), then the mapping goes with its TLB invalidation.
                mobj.revoke();
                self.window.write().revoke(&mobj);
            }
        }
        Ok(())
    }

    fn open_session(&self, call: &mut Call) -> Result<(), TeeError> {
        let params = call.arg.params();
        let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let (Some(uuid), Some(client)) = (params.first(), params.get(1)) else {
            return Err(TeeError::BadParameters(
                "OPEN_SESSION needs two meta parameters",
            ));
        };
        if uuid.attr() != meta || client.attr() != meta {
            return Err(TeeError::BadParameters(
                "OPEN_SESSION meta parameters malformed",
            ));
        }
        let v = uuid.value();
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&v.a.get().to_le_bytes());
        octets[8..].copy_from_slice(&v.b.get().to_le_bytes());
        let is_pta = octets == pta::MEMTEST_UUID;
        if !is_pta && self.tas.image(octets).is_none() {
            return Err(TeeError::UnknownTa);
        }
        self.resolve_params(call, 2)?;
        call.guest
            .counters()
            .charge_session(self.config.quotas.max_sessions)?;
        let id = self.free_session_id(&call.guest);
        let session = if is_pta {
            Session::Pta
        } else {
            match self.open_user_session(call, octets, id) {
                Ok(instance) => Session::User(instance),
                Err(e) => {
                    call.guest.counters().refund_session();
                    return Err(e);
                }
            }
        };
        let mut state = call.guest.state.lock();
        if call.guest.is_dying() {
            // Destroyed while this call ran: its sweep has taken its sessions (it marks the
            // guest dying before it takes this lock), so a session kept now would outlive the
            // guest with its TA instance and charge. It goes here instead.
            drop(state);
            call.guest.counters().refund_session();
            drop(session);
            return Err(TeeError::GuestGone);
        }
        let mut id = id;
        while id == 0 || state.sessions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        state.next_session = id.wrapping_add(1);
        state.sessions.insert(id, session);
        drop(state);
        call.arg.set_session(id);
        Ok(())
    }

    /// A session id the guest does not use now (taken for good when the session is made).
    fn free_session_id(&self, guest: &GuestPartition) -> u32 {
        let state = guest.state.lock();
        let mut id = state.next_session;
        while id == 0 || state.sessions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    /// A new instance of the user TA `uuid` for the call's guest, its open-session entry run
    /// with the call's parameters.
    fn open_user_session(
        &self,
        call: &mut Call,
        uuid: [u8; 16],
        id: u32,
    ) -> Result<Arc<TaInstance>, TeeError> {
        let instance =
            self.new_ta_instance(uuid, call.guest_id(), call.guest.counters().clone())?;
        let entry = Entry {
            func: UTEE_ENTRY_FUNC_OPEN_SESSION,
            session: id,
            cmd: 0,
        };
        let result = self.run_user_entry(call, &instance, entry);
        match result {
            Ok(TEE_SUCCESS) => Ok(instance),
            Ok(code) => Err(TeeError::TaResult(code)),
            Err(e) => Err(e),
        }
    }

    fn close_session(&self, call: &mut Call) -> Result<(), TeeError> {
        let id = call.arg.header().session.get();
        let session = call
            .guest
            .state
            .lock()
            .sessions
            .remove(&id)
            .ok_or(TeeError::UnknownSession(id))?;
        call.guest.counters().refund_session();
        if let Session::User(instance) = session
            && instance.death().is_none()
        {
            // The TA's answer does not matter: the session closes (GP: TA_CloseSessionEntryPoint
            // returns nothing).
            let entry = Entry {
                func: UTEE_ENTRY_FUNC_CLOSE_SESSION,
                session: id,
                cmd: 0,
            };
            let _ = run_entry(self, &instance, entry, &mut [], 1, None);
        }
        Ok(())
    }

    fn invoke_prepare(&self, call: &mut Call) -> Result<Session, TeeError> {
        let id = call.arg.header().session.get();
        let session = call
            .guest
            .state
            .lock()
            .sessions
            .get(&id)
            .cloned()
            .ok_or(TeeError::UnknownSession(id))?;
        self.resolve_params(call, 0)?;
        Ok(session)
    }

    /// Decodes the pseudo-TA's parameters from index `base` of the copy and resolves their
    /// buffers: registered by cookie, temporary page lists, the static pool, NULL.
    fn resolve_params(&self, call: &mut Call, base: usize) -> Result<(), TeeError> {
        // OPEN_SESSION checked its two meta params before it asked for the rest; an arg
        // shorter than `base` is refused all the same rather than read as "no params".
        let params = call
            .arg
            .params()
            .get(base..)
            .ok_or(TeeError::BadParameters(
                "fewer parameters than the meta parameters",
            ))?;
        if params.len() > TEE_NUM_PARAMS as usize {
            return Err(TeeError::BadParameters("more than four parameters"));
        }
        let mut resolved = Vec::new();
        resolved
            .try_reserve_exact(params.len())
            .map_err(|_| TeeError::OutOfMemory)?;
        for (i, p) in params.iter().enumerate() {
            let index = base + i;
            resolved.push(self.resolve_param(&call.guest, index, p, &mut call.owned)?);
        }
        call.params = resolved;
        call.params_base = base;
        Ok(())
    }

    fn resolve_param(
        &self,
        guest: &Arc<GuestPartition>,
        index: usize,
        p: &MsgParam,
        owned: &mut Vec<Arc<Mobj>>,
    ) -> Result<CallParam, TeeError> {
        let bad = |problem| TeeError::BadParam { index, problem };
        let attr = p.attr();
        if attr & OPTEE_MSG_ATTR_META != 0 {
            return Err(bad("meta parameter where none belongs"));
        }
        let ty = ParamType::try_from(attr).map_err(|_| bad("unknown parameter type"))?;
        if attr & OPTEE_MSG_ATTR_NONCONTIG != 0 && !ty.is_tmem() {
            return Err(bad("NONCONTIG on a parameter that is not a tmem"));
        }
        if ty == ParamType::None {
            return Ok(CallParam::None);
        }
        if ty.is_value() {
            let Value { a, b, c } = p.value();
            return Ok(CallParam::Value {
                ty,
                value: [a.get(), b.get(), c.get()],
            });
        }
        if ty.is_rmem() {
            let Rmem {
                offs,
                size,
                shm_ref,
            } = p.rmem();
            let (offs, size, cookie) = (offs.get(), size.get(), shm_ref.get());
            let used = {
                let state = guest.state.lock();
                let mobj = state
                    .registered
                    .get(&cookie)
                    .ok_or(TeeError::UnknownCookie(cookie))?;
                MobjUse::try_new(mobj).ok_or(TeeError::UnknownCookie(cookie))?
            };
            check_bounds(offs, size, used.mobj().size())?;
            return Ok(CallParam::Memref {
                ty,
                buf: Some(MemrefBuf { used, offs }),
                size,
            });
        }
        // A temporary memref.
        let Tmem { buf_ptr, size, .. } = p.tmem();
        let (buf_ptr, size) = (buf_ptr.get(), size.get());
        if attr & OPTEE_MSG_ATTR_NONCONTIG != 0 {
            let mobj = self.page_list_mobj(guest, buf_ptr, size, MobjKind::Temporary, None)?;
            let used = self.use_owned(&mobj, owned)?;
            return Ok(CallParam::Memref {
                ty,
                buf: Some(MemrefBuf { used, offs: 0 }),
                size,
            });
        }
        if buf_ptr == 0 {
            return Ok(CallParam::Memref {
                ty,
                buf: None,
                size,
            });
        }
        let pool = self.pool_ref(buf_ptr, size).ok_or(bad(
            "contiguous tmem outside the static pool (only NONCONTIG lists may lie elsewhere)",
        ))?;
        Ok(CallParam::Memref {
            ty,
            buf: Some(pool),
            size,
        })
    }

    /// Writes output values and memref sizes into the arg copy.
    fn write_back_params(&self, call: &mut Call) {
        let base = call.params_base;
        let Call { arg, params, .. } = call;
        let out = arg.params_mut();
        for (i, p) in params.iter().enumerate() {
            let Some(slot) = out.get_mut(base + i) else {
                continue;
            };
            match p {
                CallParam::Value { ty, value } if ty.is_output() => {
                    slot.set_value(Value::new(value[0], value[1], value[2]));
                }
                CallParam::Memref { ty, size, .. } if ty.is_output() => {
                    if ty.is_rmem() {
                        slot.rmem_mut().size.set(*size);
                    } else {
                        slot.tmem_mut().size.set(*size);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `offs + size` must stay inside a buffer of `buf_size` bytes (with overflow checks).
pub(crate) fn check_bounds(offs: u64, size: u64, buf_size: u64) -> Result<(), TeeError> {
    match offs.checked_add(size) {
        Some(end) if end <= buf_size => Ok(()),
        _ => Err(TeeError::OutOfBounds {
            offs,
            size,
            buf_size,
        }),
    }
}

/// The attr of an RPC SHM_ALLOC request param: one VALUE_INPUT.
pub(crate) const RPC_VALUE_INPUT: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT;

/// The GP type (`TEE_PARAM_TYPE_*`) of a message parameter type.
fn tee_param_type(ty: ParamType) -> u32 {
    let base = if ty.is_value() {
        utee::TEE_PARAM_TYPE_VALUE_INPUT - 1
    } else {
        utee::TEE_PARAM_TYPE_MEMREF_INPUT - 1
    };
    match (ty.is_input(), ty.is_output()) {
        (true, true) => base + 3,
        (false, true) => base + 2,
        (true, false) => base + 1,
        (false, false) => utee::TEE_PARAM_TYPE_NONE,
    }
}

/// Type bits of an attr.
pub(crate) fn attr_type(attr: u64) -> u64 {
    attr & OPTEE_MSG_ATTR_TYPE_MASK
}
