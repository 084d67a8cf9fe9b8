//! The hypervisor mediator of teeshm: what sits between guest VMs and the TEE when several
//! normal worlds share one TEE, modelled on Xen's OP-TEE mediator (`xen/arch/arm/tee/optee.c`).
//!
//! A guest names memory by *intermediate* physical address (IPA); the TEE needs real physical
//! addresses (PA) and must be told which guest is calling. The [`Mediator`] takes each SMC a
//! guest makes ([`Mediator::handle_guest_smc`]), writes the guest's id into `a7`, and for the
//! calls that carry addresses:
//!
//! - copies the guest's `optee_msg_arg` **once** into a *shadow page* the hypervisor owns,
//!   validates the copy, and hands the TEE the shadow — the guest never sees a translated PA,
//!   and cannot change the arg after it was checked;
//! - walks each NONCONTIG page list in guest memory (each list page read once), translates every
//!   data page through the guest's [`Stage2`], **pins** it, and writes a shadow list of PAs;
//! - keeps registered buffers pinned until the TEE lets go of them, and gives the TEE shadow
//!   pages for RPC arguments, copying requests to the guest and answers back (translating the
//!   page lists of `SHM_ALLOC` answers);
//! - enforces per-guest budgets of everything guests share ([`HypLimits`]), whose sum over all
//!   guests fits what the mediator has ([`HypConfig`]), so no guest can starve another; and
//!   sweeps everything of a guest when it ends ([`Mediator::destroy_guest`]), then tells the
//!   TEE (`VM_DESTROYED`);
//! - checks each guest's counts (pins, buffers, shadow pages) against its records, and reports
//!   every release below zero ([`Mediator::check_agreement`]).
//!
//! # Capabilities a guest sees
//!
//! `EXCHANGE_CAPABILITIES` answers are masked to `DYNAMIC_SHM | MEMREF_NULL`:
//! - `HAVE_RESERVED_SHM` goes (and `GET_SHM_CONFIG` answers `ENOTAVAIL`): a static carve-out is
//!   shared by every guest and would give no isolation between them; no guest gets one.
//! - `RPC_ARG` goes: with it a guest would use `CALL_WITH_RPC_ARG` / `CALL_WITH_REGD_ARG`, where
//!   the TEE writes RPC args into guest memory (after the arg, or in a registered buffer) that
//!   the mediator never sees translated — an RPC `SHM_ALLOC` answer would then reach the TEE
//!   with guest IPAs in it. Without it a guest uses `CALL_WITH_ARG` and RPC args allocated by
//!   `RPC_FUNC_ALLOC` (with the SHM cache), which the mediator shadows. Both calls are refused
//!   with `UNKNOWN_FUNCTION`, what a TEE without the feature answers.
//! - `VIRTUALIZATION` goes: it concerns the hypervisor, not the guest.
//! - `ASYNC_NOTIF`, `RPMB_PROBE`, `PROTMEM`, `UNREGISTERED_SHM` go: the mediator does not
//!   mediate the calls they enable. Without `DYNAMIC_SHM` the answer is `ENOTAVAIL` (as Xen).
//!
//! # Where teeshm's mediator differs from Xen's
//!
//! | topic | Xen | teeshm |
//! |---|---|---|
//! | arg address | must be 4 KiB aligned; copies 4 KiB | any address whose page holds the whole arg (as the core); copies the page remainder once |
//! | contiguous `SHM_ALLOC` answer | forwarded untranslated (§1.9: the guest's IPA used as PA) | every page translated and pinned, forwarded as a NONCONTIG shadow list |
//! | RPC answers copied back | the whole `optee_msg_arg` | only `ret`, `ret_origin`, output values and memref sizes (and the translated `SHM_ALLOC` memref); the TEE's request is kept otherwise |
//! | failed `SHM_ALLOC` translation | fabricated `SHM_FREE` to the guest, then `TEEC_ERROR_GENERIC` | the same `SHM_FREE`, then the code of the failure (`OUT_OF_MEMORY` for a limit, `BAD_PARAMETERS` for a bad address) |
//! | `UNREGISTER_SHM` of a buffer in use | (OP-TEE blocks instead) | teeshm's core answers `SUCCESS` and revokes the buffer: pins released at once; a core answering `BUSY` gets its pins kept until every call of the guest in flight at that moment has ended |
//! | limits | 129 pages a buffer, 16 buffers, 16384 pinned pages, TEE threads a guest | configurable ([`HypLimits`]); defaults follow the core's own quotas |
//! | shared resources | one Xen heap and page pool for all guests: one guest can take all | a per-guest budget of every shared resource (shadow pages of the pool, pins, buffers, call records); the budgets of all guests fit what the mediator has ([`HypConfig::capacity`]), checked at start and at each guest's creation |
//! | destruction | shadows freed, pages unpinned, then `VM_DESTROYED` | pages unpinned, `VM_DESTROYED`, then shadow pages returned, so a page the TEE may still reference is never reused in between |
//! | `GET_THREAD_COUNT` | passed through | the smaller of the TEE's count and [`HypLimits::max_calls`] |
//! | lookups | linear lists under one lock | ordered maps: O(log n) |
//! | IPA 0 | ambiguous with NULL | the TEE sees only shadow PAs; only a contiguous tmem with `buf_ptr` 0 is NULL, and an RPC_ALLOC answer of 0 means "no buffer" (as Linux) |
//! | fast calls | a fixed list, the rest unknown | the same deny-by-default list: identity, caps, thread count, SHM cache; `BOOT_SECONDARY`, `L2CC_MUTEX` and async notifications are the platform's, not a guest's (`UNKNOWN_FUNCTION`) |
//! | pinning | a page reference per buffer page | a pin count per PA page; [`Mediator::unmap_guest_page`] refuses a pinned page |
//!
//! The RPC arg buffer of `RPC_FUNC_ALLOC` is handled as Xen does: the guest's page is pinned,
//! the TEE writes into a hypervisor shadow page, and each `RPC_CMD` is copied to the guest and
//! its answer back. A guest's `RETURN_FROM_RPC` is matched to its own suspended calls by TEE
//! thread id; any other thread id gets `ERESUME` without reaching the TEE.
//!
//! Everything a guest sends is hostile: registers and guest memory are copied once, checked on
//! the copy with checked arithmetic, and nothing here panics on input.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod check;
mod config;
mod error;
mod guest;
mod mediator;
mod memory;
mod stage2;
mod translate;

pub use check::HypDisagreement;
pub use config::{
    BUFFER_RECORD_BYTES, CALL_RECORD_BYTES, GuestStats, HypCapacity, HypCapacityError, HypConfig,
    HypLimits, PIN_BYTES, Resource, SHADOW_PAGE_BYTES,
};
pub use error::HypError;
pub use mediator::Mediator;
pub use memory::MachineMemory;
pub use stage2::{PAGE_SIZE, Stage2};
pub use teeshm_abi::GuestId;
