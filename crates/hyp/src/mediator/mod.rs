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
/// It is one object for all guests so that guests share one TEE conduit and one pool of
/// hypervisor pages; every piece of state inside is per guest ([`Mediator::stats`]), and a
/// guest's SMC only ever touches its own. What the guests share — the pool's pages, pins and
/// call records on the heap — is divided into per-guest budgets ([`HypConfig`]) that together
/// never exceed what the mediator has, so no guest can starve another. Calls are handled to
/// completion or to their next RPC inside [`Mediator::handle_guest_smc`]; a platform with
/// several CPUs serialises entry (one `&mut`), as the TEE's answers come back synchronously
/// anyway.
pub struct Mediator<T: SmcConduit, M: MachineMemory> {
    tee: T,
    memory: M,
    config: HypConfig,
    guests: BTreeMap<GuestId, GuestState>,
    next_call: u64,
}

impl<T: SmcConduit, M: MachineMemory> Mediator<T, M> {
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
            memory,
            config,
            guests: BTreeMap::new(),
            next_call: 1,
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
    pub fn create_guest(&mut self, vm: GuestId, stage2: Stage2) -> Result<(), HypError> {
        if vm.is_hypervisor() {
            return Err(HypError::ReservedGuestId { vm });
        }
        if self.guests.contains_key(&vm) {
            return Err(HypError::GuestExists { vm });
        }
        self.reserve_share()?;
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

    /// Checks that one more guest's budgets fit beside the live guests' (all guests have the
    /// same budgets, so a share is a guest slot and `max_shadow_pages` of the pool; the heap
    /// shares were checked for `max_guests` guests by [`Mediator::new`]).
    fn reserve_share(&self) -> Result<(), HypError> {
        let guests = (self.guests.len() as u64).saturating_add(1);
        let max = u64::from(self.config.max_guests);
        if guests > max {
            return Err(HypError::NoShare {
                resource: Resource::Guests,
                needed: guests,
                available: max,
            });
        }
        // The pool is asked again: the platform may have shrunk it since the start.
        let pool = self.memory.pool_pages();
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
            config,
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
            limits: &config.limits,
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
            .fold(0u64, |n, g| n.saturating_add(g.shadow_pages.get()))
    }

    /// Every disagreement of a guest's counts (pins, buffers, shadow pages) with its records,
    /// and every release below zero of those counts; empty when all agree. Call it between
    /// SMCs. Cost: linear in pinned pages and records.
    pub fn check_agreement(&self) -> Vec<HypDisagreement> {
        let mut found = Vec::new();
        // The live guests' shares must fit what the mediator has (its capacity check at
        // start and each admission keep it so).
        let guests = self.guests.len() as u64;
        let max_guests = u64::from(self.config.max_guests);
        if guests > max_guests {
            found.push(HypDisagreement::SharesExceed {
                resource: Resource::Guests,
                promised: guests,
                available: max_guests,
            });
        }
        let promised = guests.saturating_mul(self.config.limits.max_shadow_pages);
        let pool = self.memory.pool_pages();
        if promised > pool {
            found.push(HypDisagreement::SharesExceed {
                resource: Resource::ShadowPages,
                promised,
                available: pool,
            });
        }
        let mut shadows = alloc::collections::BTreeSet::new();
        for (&vm, guest) in &self.guests {
            guest.check_agreement(vm, &mut found);
            guest.check_budgets(vm, &self.config.limits, &mut shadows, &mut found);
        }
        found
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

    /// The limits (budgets) every guest gets.
    pub fn limits(&self) -> HypLimits {
        self.config.limits
    }

    /// The configuration: guest slots, budgets, heap budget.
    pub fn config(&self) -> HypConfig {
        self.config
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
}
