//! The mediator proper: one guest SMC in, the guest's registers out, the TEE called on the way
//! with translated addresses, shadows and the guest's id.
//!
//! One concern a file: this one holds the [`Mediator`] (guests in and out, the entry of every
//! SMC) and the per-SMC context; `fast` the fast calls, `yielding` `CALL_WITH_ARG` from the
//! guest's arg to the copy back, `rpc` the RPCs and the guest's answers to them.

#[cfg(test)]
mod check_tests;
mod fast;
mod rpc;
mod yielding;

use crate::check::HypDisagreement;
use crate::config::{GuestStats, HypConfig, HypLimits, Resource};
use crate::error::HypError;
use crate::guest::GuestState;
use crate::memory::MachineMemory;
use crate::stage2::{PAGE_MASK, PAGE_SIZE, Stage2};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem::offset_of;
use core::sync::atomic::AtomicU64;
use teeshm_abi::GuestId;
use teeshm_abi::msg::{MsgArgHeader, MsgParam, Tmem};
use teeshm_abi::smc::*;

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

/// The hypervisor's OP-TEE mediator: guests' SMCs in, the TEE behind `T`, machine memory
/// behind `M`.
///
/// It is one object for all guests so that guests share one pool of hypervisor pages; every
/// piece of state inside is per guest ([`Mediator::stats`]), and a guest's SMC only ever
/// touches its own. What the guests share — the pool's pages, pins and call records on the
/// heap — is divided into per-guest budgets ([`HypConfig`]) that together never exceed what
/// the mediator has, so no guest can starve another. Calls are handled to completion or to
/// their next RPC inside [`Mediator::handle_guest_smc`].
///
/// Different guests are served at once, on as many CPUs as call ([`Mediator::handle_guest_smc`]
/// takes `&self`): each guest's state sits under its own lock with its own clone of the TEE
/// conduit, so one guest's SMC — the TEE's work inside it included — never waits for
/// another's; the pool is behind a short lock taken for each page and each copy; the table of
/// guests is read-locked by every SMC and write-locked only to admit or remove a guest. One
/// guest's SMCs (its vCPUs) are served one at a time. Lock order: the guest table, one
/// guest's state, the pool.
pub struct Mediator<T: SmcConduit + Clone, M: MachineMemory> {
    /// The conduit the hypervisor's own calls (`VM_CREATED`, `VM_DESTROYED`) are made on, and
    /// the one each guest's is cloned from.
    tee: T,
    memory: spin::Mutex<M>,
    config: HypConfig,
    guests: spin::RwLock<BTreeMap<GuestId, spin::Mutex<GuestSlot<T>>>>,
    next_call: AtomicU64,
}

/// One guest's state and its conduit to the TEE.
struct GuestSlot<T> {
    state: GuestState,
    tee: T,
}

/// The pool as one SMC reaches it: the mediator's lock taken for each access, never held
/// across a call into the TEE.
struct Pool<'a, M>(&'a spin::Mutex<M>);

impl<M: MachineMemory> MachineMemory for Pool<'_, M> {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        self.0.lock().read(pa, buf);
    }
    fn write(&self, pa: u64, data: &[u8]) {
        self.0.lock().write(pa, data);
    }
    fn alloc_page(&mut self) -> Option<u64> {
        self.0.lock().alloc_page()
    }
    fn free_page(&mut self, pa: u64) {
        self.0.lock().free_page(pa);
    }
    fn pool_pages(&self) -> u64 {
        self.0.lock().pool_pages()
    }
}

impl<T: SmcConduit + Clone, M: MachineMemory> Mediator<T, M> {
    /// A mediator in front of `tee`, with `memory` for guest access and shadow pages, and
    /// `config` for the guests' budgets. No guest exists yet.
    ///
    /// # Errors
    /// [`HypError::Capacity`] when `config.max_guests` guests' budgets do not fit the pool of
    /// `memory` or the heap budget, or disagree ([`HypConfig::capacity`]).
    pub fn new(tee: T, memory: M, config: HypConfig) -> Result<Self, HypError> {
        config
            .capacity(memory.pool_pages())
            .map_err(HypError::Capacity)?;
        Ok(Self {
            tee,
            memory: spin::Mutex::new(memory),
            config,
            guests: spin::RwLock::new(BTreeMap::new()),
            next_call: AtomicU64::new(1),
        })
    }

    /// Guest start: reserves the guest's share of everything the guests share, allocates its
    /// state and sends `VM_CREATED` (a1 = vm id, a7 = 0) to the TEE. VM ids are chosen by the
    /// caller (1..=0xffff: 0 is the hypervisor's own).
    ///
    /// # Errors
    /// [`HypError::ReservedGuestId`] for 0, [`HypError::GuestExists`],
    /// [`HypError::NoShare`] when its share cannot be reserved (`max_guests` guests run, or the
    /// platform shrank the pool below the shares), or [`HypError::TeeRefused`] when the TEE
    /// refuses the guest. Nothing is kept and the TEE is not told when it fails.
    pub fn create_guest(&self, vm: GuestId, stage2: Stage2) -> Result<(), HypError> {
        if vm.is_hypervisor() {
            return Err(HypError::ReservedGuestId { vm });
        }
        // Admission under the table's write lock: two guests admitted at once cannot both
        // take the last share.
        let mut guests = self.guests.write();
        if guests.contains_key(&vm) {
            return Err(HypError::GuestExists { vm });
        }
        self.reserve_share(guests.len())?;
        let mut tee = self.tee.clone();
        let out = tee.smc(
            SmcRegs::call(OPTEE_SMC_VM_CREATED, &[u64::from(vm.raw())])
                .from_client(GuestId::HYPERVISOR),
        );
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return Err(HypError::TeeRefused {
                call: "VM_CREATED",
                code: out.a0(),
            });
        }
        guests.insert(
            vm,
            spin::Mutex::new(GuestSlot {
                state: GuestState::new(stage2),
                tee,
            }),
        );
        Ok(())
    }

    /// Checks that one more guest's budgets fit beside the live guests' (all guests have the
    /// same budgets, so a share is a guest slot and `max_shadow_pages` of the pool; the heap
    /// shares were checked for `max_guests` guests by [`Mediator::new`]).
    fn reserve_share(&self, live: usize) -> Result<(), HypError> {
        let guests = (live as u64).saturating_add(1);
        let max = u64::from(self.config.max_guests);
        if guests > max {
            return Err(HypError::NoShare {
                resource: Resource::Guests,
                needed: guests,
                available: max,
            });
        }
        // The pool is asked again: the platform may have shrunk it since the start.
        let pool = self.memory.lock().pool_pages();
        let shadows = guests.saturating_mul(self.config.limits.max_shadow_pages);
        if shadows > pool {
            return Err(HypError::NoShare {
                resource: Resource::ShadowPages,
                needed: shadows,
                available: pool,
            });
        }
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
    pub fn destroy_guest(&self, vm: GuestId) -> Result<(), HypError> {
        let slot = self
            .guests
            .write()
            .remove(&vm)
            .ok_or(HypError::UnknownGuest { vm })?;
        let GuestSlot { state, mut tee } = slot.into_inner();
        let shadows = state.release_all();
        let out = tee.smc(
            SmcRegs::call(OPTEE_SMC_VM_DESTROYED, &[u64::from(vm.raw())])
                .from_client(GuestId::HYPERVISOR),
        );
        let mut memory = self.memory.lock();
        for pa in shadows {
            memory.free_page(pa);
        }
        memory.give_back_spare();
        drop(memory);
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
    ///
    /// Takes `&self`: SMCs of different guests run at once (see [`Mediator`]).
    pub fn handle_guest_smc(&self, vm: GuestId, regs: SmcRegs) -> SmcRegs {
        let guests = self.guests.read();
        let Some(slot) = guests.get(&vm) else {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        };
        let mut slot = slot.lock();
        let GuestSlot { state, tee } = &mut *slot;
        let mut pool = Pool(&self.memory);
        Ctx {
            vm,
            tee,
            mem: &mut pool,
            limits: &self.config.limits,
            guest: state,
            next_call: &self.next_call,
        }
        .handle(&regs)
    }

    /// Pin references guest `vm` holds (0 for an unknown guest), for leak checks.
    pub fn pinned_pages(&self, vm: GuestId) -> u64 {
        self.guests
            .read()
            .get(&vm)
            .map_or(0, |g| g.lock().state.pins.total())
    }

    /// What guest `vm` holds, or `None` if it does not exist.
    pub fn stats(&self, vm: GuestId) -> Option<GuestStats> {
        self.guests.read().get(&vm).map(|g| g.lock().state.stats())
    }

    /// Shadow pages held for all guests together (0 when nothing leaks).
    pub fn shadow_pages(&self) -> u64 {
        self.guests.read().values().fold(0u64, |n, g| {
            n.saturating_add(g.lock().state.shadow_pages.get())
        })
    }

    /// Every disagreement of a guest's counts (pins, buffers, shadow pages) with its records,
    /// and every release below zero of those counts; empty when all agree. Call it between
    /// SMCs (it waits for the SMCs in flight, guest by guest). Cost: linear in pinned pages
    /// and records.
    pub fn check_agreement(&self) -> Vec<HypDisagreement> {
        let mut found = Vec::new();
        let table = self.guests.read();
        // The live guests' shares must fit what the mediator has (its capacity check at
        // start and each admission keep it so).
        let guests = table.len() as u64;
        let max_guests = u64::from(self.config.max_guests);
        if guests > max_guests {
            found.push(HypDisagreement::SharesExceed {
                resource: Resource::Guests,
                promised: guests,
                available: max_guests,
            });
        }
        let promised = guests.saturating_mul(self.config.limits.max_shadow_pages);
        let pool = self.memory.lock().pool_pages();
        if promised > pool {
            found.push(HypDisagreement::SharesExceed {
                resource: Resource::ShadowPages,
                promised,
                available: pool,
            });
        }
        let mut shadows = alloc::collections::BTreeSet::new();
        for (&vm, slot) in table.iter() {
            let guest = &slot.lock().state;
            guest.check_agreement(vm, &mut found);
            guest.check_budgets(vm, &self.config.limits, &mut shadows, &mut found);
        }
        found
    }

    /// The live guests, in id order (a snapshot: guests may come and go on other CPUs).
    pub fn guests(&self) -> impl Iterator<Item = GuestId> + use<T, M> {
        self.guests
            .read()
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The machine address guest `vm`'s stage 2 gives `ipa` now, if it maps it (what a
    /// platform's own accesses on the guest's behalf use; cheaper than [`Mediator::stage2`]).
    pub fn translate_ipa(&self, vm: GuestId, ipa: u64) -> Option<u64> {
        self.guests
            .read()
            .get(&vm)
            .and_then(|g| g.lock().state.stage2.translate(ipa))
    }

    /// Guest `vm`'s stage 2 (a copy: the live one may change under other CPUs).
    pub fn stage2(&self, vm: GuestId) -> Option<Stage2> {
        self.guests
            .read()
            .get(&vm)
            .map(|g| g.lock().state.stage2.clone())
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

    /// The limits (budgets) every guest gets.
    pub fn limits(&self) -> HypLimits {
        self.config.limits
    }

    /// The configuration: guest slots, budgets, heap budget.
    pub fn config(&self) -> HypConfig {
        self.config
    }

    /// Machine memory (for the platform and tests), locked: hold it briefly, and never while
    /// calling the mediator.
    pub fn memory(&self) -> spin::MutexGuard<'_, M> {
        self.memory.lock()
    }

    /// Machine memory, mutably (for the platform: e.g. to grow or shrink the hypervisor's pool).
    pub fn memory_mut(&mut self) -> &mut M {
        self.memory.get_mut()
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
            .get_mut()
            .get_mut(&vm)
            .map(|slot| &mut slot.get_mut().state)
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
    next_call: &'a AtomicU64,
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
}
