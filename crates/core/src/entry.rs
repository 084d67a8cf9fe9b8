//! Where every call enters: the SMC front end ([`Tee::handle_smc`]), fast calls, the start and
//! resumption of yielding calls, and guest creation and destruction.

use crate::arg::{APPENDED_RPC_ARG, ArgCopy, ArgReadError, NsRef};
use crate::config::{CoreConfig, NormalWorld};
use crate::error::{CallError, TeeError};
use crate::guest::{GuestPartition, GuestSnapshot};
use crate::mobj::{Backing, Mobj, MobjKind, MobjSpec, MobjUse, ReleaseQueue};
use crate::msg::{Call, RpcArgAt, RpcRequest, Step, Waiting};
use crate::platform::Platform;
use crate::thread::{ThreadState, ThreadTable};
use crate::window::SharedWindow;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use teeshm_abi::GuestId;
use teeshm_abi::caps::{NonSecureCaps, SecureCaps, THREAD_RPC_MAX_NUM_PARAMS};
pub use teeshm_abi::smc::SmcRegs;
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_mm::{MemoryMap, PAGE_SIZE, PhysRange, RegionKind, ShmWindow, WindowError};

/// Why a core could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The window could not be set up.
    #[error("SHM window: {0}")]
    Window(#[from] WindowError),
    /// A configuration value is unusable.
    #[error("configuration: {0}")]
    Config(&'static str),
    /// The static pool could not be mapped.
    #[error("static pool: {0}")]
    Pool(TeeError),
    /// The guests' quotas promise more than the core has.
    #[error("capacity: {0}")]
    Capacity(#[from] crate::config::CapacityError),
}

/// The TEE core: guests, threads, memory objects and the SHM window, behind the SMC interface.
pub struct Tee<P: Platform> {
    pub(crate) config: CoreConfig,
    pub(crate) platform: P,
    pub(crate) memory_map: MemoryMap,
    pub(crate) window: crate::window::WindowLock<P::Tlb>,
    guests: crate::guest::GuestTable,
    pub(crate) threads: crate::sync::Mutex<ThreadTable>,
    pub(crate) releases: Arc<ReleaseQueue>,
    pub(crate) next_mobj: AtomicU64,
    pub(crate) pool: Option<(PhysRange, Arc<Mobj>)>,
    pub(crate) tas: crate::ta::TaSystem,
    pub(crate) io: crate::sync::Mutex<alloc::vec::Vec<crate::io::IoMapping>>,
}

impl<P: Platform> Tee<P> {
    /// A core over `memory_map`, with `platform` for memory access and `tlb` for the tables.
    ///
    /// # Errors
    /// A bad configuration, or a static pool that is not a `ReservedShm` region.
    pub fn new(
        config: CoreConfig,
        memory_map: MemoryMap,
        platform: P,
        tlb: P::Tlb,
    ) -> Result<Self, BootError> {
        config.capacity()?;
        let shm = ShmWindow::new(config.window, memory_map.clone(), tlb)?;
        let ta_pages = platform.ta_pages();
        let mut tee = Self {
            config,
            platform,
            memory_map,
            window: crate::window::WindowLock::new(SharedWindow::new(
                shm,
                config.quotas.max_mapped_pages,
            )),
            guests: crate::guest::GuestTable::default(),
            threads: crate::sync::Mutex::new(ThreadTable::new(
                config.threads as usize,
                usize::try_from(config.quota_holders()).unwrap_or(usize::MAX),
            )),
            releases: Arc::new(ReleaseQueue::default()),
            next_mobj: AtomicU64::new(1),
            pool: None,
            io: crate::sync::Mutex::new(alloc::vec::Vec::new()),
            tas: crate::ta::TaSystem::new(crate::ta::TaResources::new(ta_pages)),
        };
        if config.normal_world == NormalWorld::Single {
            let threads = &tee.threads;
            tee.guests
                .insert(GuestId::HYPERVISOR, 1, || {
                    threads.lock().admit(GuestId::HYPERVISOR).map_err(|_| ())
                })
                .map_err(|()| BootError::Config("no thread for the normal world"))?;
        }
        if let Some(range) = config.static_pool {
            if config.normal_world == NormalWorld::Virtualized {
                return Err(BootError::Config(
                    "the static pool belongs to a normal world without a hypervisor",
                ));
            }
            if !tee.memory_map.is_kind(range, RegionKind::ReservedShm) {
                return Err(BootError::Config(
                    "the static pool must be a ReservedShm region",
                ));
            }
            let pages = range.len() / PAGE_SIZE;
            let spec = MobjSpec {
                kind: MobjKind::StaticPool,
                owner: GuestId::HYPERVISOR,
                cookie: None,
                size: range.len(),
                page_offset: 0,
                backing: Backing::Contiguous {
                    first: range.start(),
                    pages,
                },
            };
            let mobj = Arc::new(Mobj::new(
                tee.next_id(),
                spec,
                Arc::default(),
                tee.releases.clone(),
            ));
            tee.window.write().pin(&mobj).map_err(BootError::Pool)?;
            tee.pool = Some((range, mobj));
        }
        Ok(tee)
    }

    /// Handles one SMC and returns the registers for the caller. Never panics, never blocks:
    /// whatever the registers and normal-world memory hold, the answer is an OP-TEE code.
    pub fn handle_smc(&self, regs: SmcRegs) -> SmcRegs {
        let func = (regs.a[0] & 0xffff_ffff) as u32;
        let out = if is_fast_call(func) {
            self.fast_call(func, &regs)
        } else {
            match func {
                OPTEE_SMC_CALL_WITH_ARG
                | OPTEE_SMC_CALL_WITH_RPC_ARG
                | OPTEE_SMC_CALL_WITH_REGD_ARG => self.start_call(func, &regs),
                OPTEE_SMC_CALL_RETURN_FROM_RPC => self.return_from_rpc(&regs),
                _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
            }
        };
        self.drain_releases();
        out
    }

    // ---- fast calls --------------------------------------------------------------------

    fn fast_call(&self, func: u32, regs: &SmcRegs) -> SmcRegs {
        let words = |w: [u32; 4]| SmcRegs::call(w[0], &[w[1].into(), w[2].into(), w[3].into()]);
        match func {
            OPTEE_SMC_CALLS_UID => words(uid::OPTEE_MSG_UID),
            OPTEE_SMC_CALLS_REVISION => SmcRegs::call(
                uid::OPTEE_MSG_REVISION_MAJOR,
                &[uid::OPTEE_MSG_REVISION_MINOR.into()],
            ),
            OPTEE_SMC_CALLS_COUNT => SmcRegs::ret(uid::TEESHM_API_CALL_COUNT),
            OPTEE_SMC_CALL_GET_OS_UUID => words(uid::OPTEE_MSG_OS_OPTEE_UUID),
            OPTEE_SMC_CALL_GET_OS_REVISION => SmcRegs::call(
                uid::TEESHM_OS_REVISION_MAJOR,
                &[uid::TEESHM_OS_REVISION_MINOR.into(), 0],
            ),
            OPTEE_SMC_EXCHANGE_CAPABILITIES => self.exchange_capabilities(regs.a[1]),
            OPTEE_SMC_GET_SHM_CONFIG => match &self.pool {
                Some((range, _)) => SmcRegs::call(
                    OPTEE_SMC_RETURN_OK,
                    &[
                        range.start().get(),
                        range.len(),
                        OPTEE_SMC_SHM_CACHED.into(),
                    ],
                ),
                None => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
            },
            OPTEE_SMC_ENABLE_SHM_CACHE => self.enable_shm_cache(regs.a[7]),
            OPTEE_SMC_DISABLE_SHM_CACHE => self.disable_shm_cache(regs.a[7]),
            OPTEE_SMC_GET_THREAD_COUNT => {
                // The calls a caller may have in the core at once: its guest's thread quota
                // (OP-TEE under a hypervisor answers its per-guest CFG_NUM_THREADS). Xen's
                // mediator caps each guest's calls at this number, so a guest never meets
                // ETHREAD_LIMIT from its own calls (Xen 4.17 would take such an answer to a
                // REGISTER_SHM for a success and keep the buffer).
                let threads = u64::from(self.config.threads).min(self.config.quotas.max_threads);
                SmcRegs::call(OPTEE_SMC_RETURN_OK, &[threads])
            }
            OPTEE_SMC_VM_CREATED if self.virtualized() => self.vm_created(regs.a[1], regs.a[7]),
            OPTEE_SMC_VM_DESTROYED if self.virtualized() => self.vm_destroyed(regs.a[1], regs.a[7]),
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }

    /// Whether a hypervisor sits below the normal world.
    pub fn virtualized(&self) -> bool {
        self.config.normal_world == NormalWorld::Virtualized
    }

    /// The capabilities this core reports.
    pub fn capabilities(&self) -> SecureCaps {
        let mut caps = SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL | SecureCaps::RPC_ARG;
        if self.virtualized() {
            caps |= SecureCaps::VIRTUALIZATION;
        }
        if self.pool.is_some() {
            caps |= SecureCaps::HAVE_RESERVED_SHM;
        }
        caps
    }

    fn exchange_capabilities(&self, a1: u64) -> SmcRegs {
        if a1 & !u64::from(NonSecureCaps::UNIPROCESSOR.bits()) != 0 {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        SmcRegs::call(
            OPTEE_SMC_RETURN_OK,
            &[
                self.capabilities().bits().into(),
                0,
                THREAD_RPC_MAX_NUM_PARAMS.into(),
            ],
        )
    }

    fn enable_shm_cache(&self, a7: u64) -> SmcRegs {
        let Ok(guest) = self.calling_guest(a7) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        };
        if self.has_calls(&guest) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBUSY);
        }
        guest.state.lock().shm_cache_enabled = true;
        SmcRegs::ret(OPTEE_SMC_RETURN_OK)
    }

    fn disable_shm_cache(&self, a7: u64) -> SmcRegs {
        let Ok(guest) = self.calling_guest(a7) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        };
        if self.has_calls(&guest) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_EBUSY);
        }
        let cached = {
            let mut state = guest.state.lock();
            state.shm_cache_enabled = false;
            state.cached_rpc_args.pop()
        };
        match cached {
            Some(cached) => {
                self.discard(&cached.mobj);
                let (hi, lo) = split_pair(cached.cookie);
                SmcRegs::call(OPTEE_SMC_RETURN_OK, &[hi, lo])
            }
            None => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
        }
    }

    // ---- guests ------------------------------------------------------------------------

    fn vm_created(&self, a1: u64, a7: u64) -> SmcRegs {
        if a7 != u64::from(HYP_CLNT_ID) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        match self.create_guest(a1) {
            Ok(()) => SmcRegs::ret(OPTEE_SMC_RETURN_OK),
            Err(()) => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
        }
    }

    fn create_guest(&self, a1: u64) -> Result<(), ()> {
        let id = GuestId::from_client_id(a1).map_err(|_| ())?;
        if id.is_hypervisor() {
            return Err(());
        }
        // Its reserved thread first: a guest that could never run a call is not admitted.
        self.guests.insert(id, self.config.max_guests as usize, || {
            self.threads.lock().admit(id).map_err(|_| ())
        })
    }

    fn vm_destroyed(&self, a1: u64, a7: u64) -> SmcRegs {
        if a7 != u64::from(HYP_CLNT_ID) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        match GuestId::from_client_id(a1) {
            Ok(id) if !id.is_hypervisor() => {
                self.destroy_guest(id);
                SmcRegs::ret(OPTEE_SMC_RETURN_OK)
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
        }
    }

    /// Sweeps `id`: its calls waiting in RPCs are ended, its registered buffers, sessions and
    /// cached RPC args are retired, its mappings go. Visits only that guest's own objects.
    /// A call of it still running on another CPU finishes, and what it holds is released when
    /// it ends. Destroying an unknown guest does nothing (OP-TEE answers OK too).
    pub fn destroy_guest(&self, id: GuestId) {
        let Some(guest) = self.guests.remove(id) else {
            return;
        };
        // Dying before the suspended calls are ended: a call still running on another CPU
        // checks this under the thread lock before it would suspend, so it is either ended
        // here or ends itself (`suspend_call`); none waits in an RPC for a guest that is gone.
        // The thread its last call parked is freed with them.
        let parked = guest.life.die();
        let ended = {
            let mut threads = self.threads.lock();
            if let Some(parked) = parked {
                threads.free(parked);
            }
            threads.dismiss(id);
            threads.end_suspended_of(id)
        };
        for _ in &ended {
            guest.counters().refund_thread();
        }
        drop(ended);
        let (registered, sessions, cached, kept_args) = {
            let mut state = guest.state.lock();
            (
                core::mem::take(&mut state.registered),
                core::mem::take(&mut state.sessions),
                core::mem::take(&mut state.cached_rpc_args),
                core::mem::take(&mut state.kept_arg_pages),
            )
        };
        for mobj in registered.values() {
            self.discard(mobj);
        }
        for _ in 0..sessions.len() {
            guest.counters().refund_session();
        }
        for c in &cached {
            self.discard(&c.mobj);
        }
        for k in &kept_args {
            self.discard(&k.mobj);
        }
        self.drain_releases();
    }

    /// The guest a call with client id `a7` comes from: the one normal world whatever a7
    /// holds, or, under a hypervisor, the created guest a7 names (never the hypervisor itself).
    fn caller_id(&self, a7: u64) -> Result<GuestId, CallError> {
        if !self.virtualized() {
            return Ok(GuestId::HYPERVISOR);
        }
        match GuestId::from_client_id(a7) {
            Ok(id) if !id.is_hypervisor() => Ok(id),
            _ => Err(CallError::UnknownGuest),
        }
    }

    /// The live guest making a call with client id `a7`.
    fn calling_guest(&self, a7: u64) -> Result<Arc<GuestPartition>, CallError> {
        let id = self.caller_id(a7)?;
        self.guest(id)
            .filter(|g| !g.is_dying())
            .ok_or(CallError::UnknownGuest)
    }

    /// The live guest `id`.
    pub fn guest(&self, id: GuestId) -> Option<Arc<GuestPartition>> {
        self.guests.get(id)
    }

    /// Every live guest.
    pub fn guests(&self) -> Vec<Arc<GuestPartition>> {
        self.guests.all()
    }

    /// A picture of every live guest.
    pub fn snapshots(&self) -> Vec<GuestSnapshot> {
        self.guests().iter().map(|g| g.snapshot()).collect()
    }

    /// What each thread is doing.
    pub fn thread_states(&self) -> Vec<ThreadState> {
        let mut states = self.threads.lock().states();
        // A thread parked for a guest's next call runs no call: it is free for that guest.
        for guest in self.guests() {
            if let Some(state) = guest.life.parked().and_then(|t| states.get_mut(t)) {
                *state = ThreadState::Free;
            }
        }
        states
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The memory map.
    pub fn memory_map(&self) -> &MemoryMap {
        &self.memory_map
    }

    /// The window, locked (for reports and tests; hold it briefly).
    pub fn window(&self) -> crate::sync::RwLockWriteGuard<'_, SharedWindow<P::Tlb>> {
        self.window.write()
    }

    /// The static pool's range, if configured.
    pub fn static_pool(&self) -> Option<PhysRange> {
        self.pool.as_ref().map(|(range, _)| *range)
    }

    // ---- yielding calls ----------------------------------------------------------------

    fn start_call(&self, func: u32, regs: &SmcRegs) -> SmcRegs {
        let guest = match self.calling_guest(regs.a[7]) {
            Ok(g) => g,
            Err(e) => return SmcRegs::ret(e.smc_code()),
        };
        if guest
            .counters()
            .charge_thread(self.config.quotas.max_threads)
            .is_err()
        {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ETHREAD_LIMIT);
        }
        // The thread its last call parked, else one from the table.
        let thread = match guest.life.take_parked() {
            Some(thread) => thread,
            None => {
                let Some(thread) = self.threads.lock().claim(guest.id()) else {
                    guest.counters().refund_thread();
                    return SmcRegs::ret(OPTEE_SMC_RETURN_ETHREAD_LIMIT);
                };
                thread
            }
        };
        let mut owned = Vec::new();
        let arg_at = match self.locate_arg(&guest, func, regs, &mut owned) {
            Ok(at) => at,
            Err(e) => return self.refuse_call(thread, &guest, &owned, e),
        };
        // On the stack, and dropped where it lies once done: boxed only if it suspends in an
        // RPC (most calls never do). Moved out of here, it was copied whole twice a call.
        let (thread, guest) = {
            let mut call = Call {
                guest,
                thread,
                arg_at,
                arg: ArgCopy::empty(),
                rpc_at: RpcArgAt::Missing,
                params: Vec::new(),
                params_base: 0,
                waiting: None,
                owned,
            };
            if let Err(e) = self.read_arg(&mut call, func) {
                let owned = core::mem::take(&mut call.owned);
                let (thread, guest) = (call.thread, call.guest.clone());
                drop(call);
                return self.refuse_call(thread, &guest, &owned, e);
            }
            match self.run_message(&mut call) {
                Step::Rpc(request, waiting) => {
                    return self.suspend_call(Box::new(call), request, waiting);
                }
                Step::Done => self.finish_call(&call),
            }
        };
        self.end_thread(thread, &guest);
        SmcRegs::ret(OPTEE_SMC_RETURN_OK)
    }

    fn return_from_rpc(&self, regs: &SmcRegs) -> SmcRegs {
        let Ok(guest) = self.caller_id(regs.a[7]) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ERESUME);
        };
        let Ok(thread) = usize::try_from(regs.a[3]) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ERESUME);
        };
        let answer = [regs.a[1], regs.a[2], regs.a[3], regs.a[4], regs.a[5]];
        let (thread, guest) = {
            let Some(mut call) = self.threads.lock().resume(thread, guest) else {
                return SmcRegs::ret(CallError::NotSuspended.smc_code());
            };
            match self.resume_message(&mut call, answer) {
                Step::Rpc(request, waiting) => return self.suspend_call(call, request, waiting),
                Step::Done => self.finish_call(&call),
            }
        };
        self.end_thread(thread, &guest);
        SmcRegs::ret(OPTEE_SMC_RETURN_OK)
    }

    /// Writes the results of a call that is done back to its arg (a write-back that faults
    /// leaves the normal world without results; the call itself has run, so its SMC still
    /// succeeds, as in OP-TEE; a destroyed guest's memory is not written). Returns its thread
    /// and guest, to end the thread once the call is dropped.
    fn finish_call(&self, call: &Call) -> (usize, Arc<GuestPartition>) {
        if !call.guest.is_dying() {
            let _ = call
                .arg
                .write_back(&call.arg_at, &self.window, &self.platform);
        }
        (call.thread, call.guest.clone())
    }

    /// Suspends `call` in its thread until the normal world answers `request`.
    fn suspend_call(&self, mut call: Box<Call>, request: RpcRequest, waiting: Waiting) -> SmcRegs {
        call.waiting = Some(waiting);
        let id = call.thread;
        let thread = id as u64;
        let regs = match request {
            RpcRequest::Alloc(size) => {
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_ALLOC, &[size, 0, thread])
            }
            RpcRequest::Free(cookie) => {
                let (hi, lo) = split_pair(cookie);
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_FREE, &[hi, lo, thread])
            }
            RpcRequest::Cmd(cookie) => {
                let (hi, lo) = split_pair(cookie);
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_CMD, &[hi, lo, thread])
            }
            RpcRequest::ForeignInterrupt => {
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, &[0, 0, thread])
            }
        };
        let mut threads = self.threads.lock();
        if call.guest.is_dying() {
            // Its guest was destroyed while it ran: nobody will answer, so the call ends here
            // instead of waiting in its thread for ever.
            drop(threads);
            let guest = call.guest.clone();
            drop(call);
            self.end_thread(id, &guest);
            return SmcRegs::ret(CallError::UnknownGuest.smc_code());
        }
        threads.suspend(id, call);
        regs
    }

    /// Ends a call's hold of `thread`: parked for the guest's next call when no other call of
    /// it runs (see [`GuestLife`](crate::lifecycle::GuestLife)), else freed.
    fn end_thread(&self, thread: usize, guest: &GuestPartition) {
        guest.counters().refund_thread();
        let to_free = if guest.counters().threads() == 0 {
            guest.life.park(thread)
        } else {
            Some(thread)
        };
        if let Some(thread) = to_free {
            self.threads.lock().free(thread);
        }
    }

    /// Whether a call of `guest` holds a thread; the thread parked for it, which no call holds,
    /// is freed first.
    fn has_calls(&self, guest: &GuestPartition) -> bool {
        let mut threads = self.threads.lock();
        if let Some(parked) = guest.life.take_parked() {
            threads.free(parked);
        }
        threads.any_of(guest.id())
    }

    /// Ends a call refused before its message ran: the temporaries it made go, its thread is
    /// freed, and the SMC answers `e`.
    fn refuse_call(
        &self,
        thread: usize,
        guest: &GuestPartition,
        owned: &[Arc<Mobj>],
        e: CallError,
    ) -> SmcRegs {
        for mobj in owned {
            self.discard(mobj);
        }
        self.end_thread(thread, guest);
        SmcRegs::ret(e.smc_code())
    }

    /// Finds the arg of a new call.
    fn locate_arg(
        &self,
        guest: &Arc<GuestPartition>,
        func: u32,
        regs: &SmcRegs,
        owned: &mut Vec<Arc<Mobj>>,
    ) -> Result<NsRef, CallError> {
        if func == OPTEE_SMC_CALL_WITH_REGD_ARG {
            let cookie = reg_pair(regs.a[1], regs.a[2]);
            let offset = regs.a[3] & 0xffff_ffff;
            let state = guest.state.lock();
            let mobj = state.registered.get(&cookie).ok_or(CallError::BadAddress)?;
            let used = MobjUse::try_new(mobj).ok_or(CallError::BadAddress)?;
            Ok(NsRef { used, offset })
        } else {
            let pa = reg_pair(regs.a[1], regs.a[2]);
            if pa == 0 {
                return Err(CallError::BadAddress);
            }
            // Under a hypervisor every guest call comes this way, its arg on the mediator's
            // shadow page (RPC_ARG is hidden from guests): those pages may be kept.
            let at = if func == OPTEE_SMC_CALL_WITH_ARG
                && self.virtualized()
                && self.config.kept_arg_pages > 0
            {
                self.arg_ref_at(guest, pa)
            } else {
                self.ns_ref_at(guest, pa, MobjKind::Temporary, None, owned)
            };
            at.map_err(|e| match e {
                TeeError::Quota { .. } | TeeError::OutOfMemory => CallError::OutOfMemory,
                _ => CallError::BadAddress,
            })
        }
    }

    /// Copies the arg of a new call into it (see [`crate::arg`]), with the place of its RPC
    /// arg when the arg's buffer holds one after it.
    #[inline(always)]
    fn read_arg(&self, call: &mut Call, func: u32) -> Result<(), CallError> {
        let reserve = if func == OPTEE_SMC_CALL_WITH_ARG {
            0
        } else {
            APPENDED_RPC_ARG
        };
        call.arg
            .read_into(&call.arg_at, &self.window, &self.platform, reserve)
            .map_err(|e| match e {
                ArgReadError::BadAddress => CallError::BadAddress,
                ArgReadError::BadCommand => CallError::BadCommand,
                ArgReadError::OutOfMemory => CallError::OutOfMemory,
            })?;
        if reserve != 0 {
            call.rpc_at = RpcArgAt::Appended(call.arg_at.offset + call.arg.size() as u64);
        }
        Ok(())
    }
}
