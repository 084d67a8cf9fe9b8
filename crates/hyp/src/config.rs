//! Per-guest limits of the mediator, and what a guest holds.

use teeshm_abi::limits::{
    DEFAULT_GUEST_THREADS, DEFAULT_MAX_BUFFER_PAGES, DEFAULT_MAX_OBJECTS,
    DEFAULT_MAX_REGISTERED_PAGES,
};

/// Per-guest limits of the mediator.
///
/// They bound what one guest can make the *hypervisor* hold (call records, shadow pages, pin
/// counts, page arrays), whatever the TEE would allow. Passing one refuses the request and
/// changes nothing: a new call gets `OPTEE_SMC_RETURN_ETHREAD_LIMIT`; a buffer, a pin or an
/// oversized buffer gets `TEE_ERROR_OUT_OF_MEMORY` in its message (as Xen), or a PA of 0 in an
/// `RPC_FUNC_ALLOC` answer, so the TEE fails that request cleanly.
///
/// Xen's limits (129 pages a buffer, 16 buffers, 16384 pages) were chosen to bound
/// non-preemptible loops and the Xen heap of a Tech-Preview feature; they make a guest fail
/// with buffers over 512 KiB. teeshm's defaults instead come from the same definitions as the
/// core's own per-guest quotas ([`teeshm_abi::limits`], which `teeshm_core::GuestQuotas` and
/// `CoreConfig::max_buffer_pages` use too), so the mediator never refuses what the TEE would
/// accept; a platform that needs a shorter worst case per SMC lowers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypLimits {
    /// Calls of one guest in flight at once (running or suspended in an RPC). Each costs a call
    /// record with a copy of the arg (≤ 4 KiB) and a shadow page. Default 16: at least as many
    /// threads as TEEs usually have (OP-TEE platforms run 2–16, the core
    /// [`DEFAULT_GUEST_THREADS`]), so the TEE's own thread limit is the one guests meet.
    /// `GET_THREAD_COUNT` reports no more than this.
    pub max_calls: u32,
    /// Buffers one guest holds pinned at once: registered buffers (also those unregistered with
    /// `BUSY` and not yet let go), temporary page lists of calls in flight, buffers obtained by
    /// RPC `SHM_ALLOC`, and RPC argument buffers. Default [`DEFAULT_MAX_OBJECTS`] (4096), the
    /// core's object quota: each of these is one object in the core too.
    pub max_buffers: u32,
    /// Pin references one guest holds at once (a page in two buffers counts twice). Bounds the
    /// pin table. Default four times [`DEFAULT_MAX_REGISTERED_PAGES`] (2^20, 4 GiB worth of
    /// pages): room for the core's registered-pages quota and every temporary and RPC buffer on
    /// top.
    pub max_pinned_pages: u64,
    /// Pages of one buffer. The mediator translates a buffer in one go (O(pages · log pages)),
    /// so this bounds the work of one SMC. Default [`DEFAULT_MAX_BUFFER_PAGES`] (2^15, 128 MiB),
    /// the core's own limit.
    pub max_buffer_pages: u64,
}

impl HypLimits {
    /// The defaults (see each field), as a constant so their relations to the core's defaults
    /// are checked when the crate compiles.
    pub const DEFAULT: Self = Self {
        max_calls: 16,
        max_buffers: DEFAULT_MAX_OBJECTS as u32,
        max_pinned_pages: 4 * DEFAULT_MAX_REGISTERED_PAGES,
        max_buffer_pages: DEFAULT_MAX_BUFFER_PAGES,
    };
}

// The mediator may not undercut the TEE behind it: checked at compile time, so a change of the
// shared defaults that breaks a relation fails the build instead of a guest's call.
const _: () = {
    let d = HypLimits::DEFAULT;
    assert!(d.max_calls >= DEFAULT_GUEST_THREADS);
    assert!(d.max_buffers as u64 == DEFAULT_MAX_OBJECTS);
    assert!(d.max_pinned_pages >= DEFAULT_MAX_REGISTERED_PAGES + DEFAULT_MAX_BUFFER_PAGES);
    assert!(d.max_buffer_pages >= DEFAULT_MAX_BUFFER_PAGES);
};

impl Default for HypLimits {
    /// [`HypLimits::DEFAULT`]: 16 calls, 4096 buffers, 2^20 pinned pages, 2^18 pages a buffer.
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the mediator holds for one guest, for leak checks and `teeshm inspect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Calls suspended in an RPC (a call that is running is inside `handle_guest_smc`).
    pub calls_in_flight: u32,
    /// Buffers held, of every kind (the quantity [`HypLimits::max_buffers`] bounds).
    pub buffers: u64,
    /// Registered buffers known by cookie.
    pub registered: u64,
    /// Buffers unregistered with `BUSY`, pinned until the TEE can no longer use them.
    pub draining: u64,
    /// Buffers handed to the TEE by RPC `SHM_ALLOC`, until its `SHM_FREE`.
    pub rpc_buffers: u64,
    /// RPC argument buffers (`RPC_FUNC_ALLOC`), until `RPC_FUNC_FREE` or `DISABLE_SHM_CACHE`.
    pub rpc_args: u64,
    /// Pin references held (what [`HypLimits::max_pinned_pages`] bounds).
    pub pinned_pages: u64,
    /// Hypervisor pages held as shadows (args, page lists, RPC args).
    pub shadow_pages: u64,
}
