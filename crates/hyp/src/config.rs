//! Per-guest limits of the mediator ([`HypLimits`]), what it has for all guests together
//! ([`HypConfig`]), the check that the guests' budgets never add up to more than that
//! ([`HypConfig::capacity`]), and what a guest holds ([`GuestStats`]).

use teeshm_abi::limits::{
    DEFAULT_GUEST_THREADS, DEFAULT_MAX_BUFFER_PAGES, DEFAULT_MAX_OBJECTS,
    DEFAULT_MAX_REGISTERED_PAGES,
};
use teeshm_abi::page_list::list_pages_needed;

/// Per-guest limits of the mediator: each guest's *budget* of every resource the guests share.
///
/// They bound what one guest can make the *hypervisor* hold (call records, shadow pages, pin
/// counts, page arrays), whatever the TEE would allow. Passing one refuses the request and
/// changes nothing: a new call gets `OPTEE_SMC_RETURN_ETHREAD_LIMIT` (calls) or
/// `OPTEE_SMC_RETURN_ENOMEM` (no shadow page for its arg); a buffer, a pin, a shadow list or an
/// oversized buffer gets `TEE_ERROR_OUT_OF_MEMORY` in its message (as Xen), or a PA of 0 in an
/// `RPC_FUNC_ALLOC` answer, so the TEE fails that request cleanly.
///
/// Because [`HypConfig::capacity`] keeps the budgets of all guests within what the mediator
/// has, a guest that stays within its own budgets is never refused for want of a resource
/// another guest took (Xen's mediator and OP-TEE let one guest take everything shared).
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
    /// pin table and the buffers' page arrays. Default twice [`DEFAULT_MAX_REGISTERED_PAGES`]
    /// (2^19, 2 GiB worth of pages): the core's registered-pages quota and as much again for
    /// temporary and RPC buffers.
    pub max_pinned_pages: u64,
    /// Pages of one buffer. The mediator translates a buffer in one go (O(pages · log pages)),
    /// so this bounds the work of one SMC. Default [`DEFAULT_MAX_BUFFER_PAGES`] (2^15, 128 MiB),
    /// the core's own limit.
    pub max_buffer_pages: u64,
    /// Hypervisor pages one guest holds as shadows at once: one per call in flight (its arg),
    /// one per 511 pages of each page list it hands the TEE (while the TEE reads it), one per
    /// RPC arg buffer. Default 1024 (4 MiB): every one of 16 calls in flight can carry 63 list
    /// pages (some 125 MiB of temporary buffers), and a guest holding nothing can always pass
    /// a buffer of `max_buffer_pages` (65 list pages).
    pub max_shadow_pages: u64,
}

impl HypLimits {
    /// The defaults (see each field), as a constant so their relations to the core's defaults
    /// are checked when the crate compiles.
    pub const DEFAULT: Self = Self {
        max_calls: 16,
        max_buffers: DEFAULT_MAX_OBJECTS as u32,
        max_pinned_pages: 2 * DEFAULT_MAX_REGISTERED_PAGES,
        max_buffer_pages: DEFAULT_MAX_BUFFER_PAGES,
        max_shadow_pages: 1024,
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
    /// [`HypLimits::DEFAULT`]: 16 calls, 4096 buffers, 2^19 pinned pages, 2^15 pages a buffer,
    /// 1024 shadow pages.
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl HypLimits {
    /// Hypervisor heap bytes one guest within these limits can make the mediator hold at most:
    /// its call records, buffer records, pin references and shadow-page records (see the
    /// `*_BYTES` constants). `None` on overflow.
    pub fn heap_bytes(&self) -> Option<u64> {
        u64::from(self.max_calls)
            .checked_mul(CALL_RECORD_BYTES)?
            .checked_add(u64::from(self.max_buffers).checked_mul(BUFFER_RECORD_BYTES)?)?
            .checked_add(self.max_pinned_pages.checked_mul(PIN_BYTES)?)?
            .checked_add(self.max_shadow_pages.checked_mul(SHADOW_PAGE_BYTES)?)
    }
}

/// An upper bound of the hypervisor heap a call in flight costs: the copy of its arg and of a
/// pending RPC request (4 KiB each at most: 127 params), the record, its map entry and its
/// list of temporary buffers (4 params at most: a valid arg has 127, but each further
/// NONCONTIG param is also a buffer and counted as one).
pub const CALL_RECORD_BYTES: u64 = 12 << 10;
/// An upper bound of the heap a buffer's record costs beside its page array (counted per pin):
/// the record with its two arrays' headers, its entry in an ordered map (a B-tree node of up
/// to 11 entries is at least half full) and the allocator's rounding.
pub const BUFFER_RECORD_BYTES: u64 = 256;
/// An upper bound of the heap a pin reference costs: 8 bytes in its buffer's page array, and at
/// worst an entry of its own in the pin-count map (16 bytes in a node at least half full,
/// with its share of the inner nodes).
pub const PIN_BYTES: u64 = 64;
/// The heap a shadow page costs in the mediator's records (its address in a list).
pub const SHADOW_PAGE_BYTES: u64 = 16;

/// What the mediator has for all guests together, and each guest's budget of it.
///
/// Every resource the guests share has a per-guest budget ([`HypLimits`]), and
/// [`HypConfig::capacity`] checks that the budgets of `max_guests` guests together fit: the
/// shadow pages in the hypervisor's page pool ([`crate::MachineMemory::pool_pages`]), the
/// call records, buffer records and pins in `heap_budget`. The mediator refuses to start with a
/// configuration that promises more ([`crate::Mediator::new`]) and admits a guest only while
/// its share can be reserved ([`crate::Mediator::create_guest`]). Each guest is thereby sure of
/// its whole budget whatever the others do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypConfig {
    /// Guests admitted at once.
    pub max_guests: u32,
    /// Every guest's budgets.
    pub limits: HypLimits,
    /// Hypervisor heap bytes the guests' records together may take (what the platform sets
    /// aside for the mediator, beside the mediator's own few bytes per guest).
    pub heap_budget: u64,
}

impl Default for HypConfig {
    /// 16 guests (the core's default), default limits, 576 MiB of heap (16 guests of the
    /// default limits need some 531 MiB, almost all of it for pin references).
    fn default() -> Self {
        Self {
            max_guests: 16,
            limits: HypLimits::default(),
            heap_budget: 576 << 20,
        }
    }
}

/// Which shared resource a refusal or a violation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Guest slots ([`HypConfig::max_guests`]).
    Guests,
    /// Calls in flight ([`HypLimits::max_calls`]).
    Calls,
    /// Buffers held ([`HypLimits::max_buffers`]).
    Buffers,
    /// Pin references ([`HypLimits::max_pinned_pages`]).
    PinnedPages,
    /// Shadow pages of the hypervisor's pool ([`HypLimits::max_shadow_pages`]).
    ShadowPages,
    /// Hypervisor heap bytes ([`HypConfig::heap_budget`]).
    HeapBytes,
}

/// What the budgets of all guests add up to beside what the mediator has (see
/// [`HypConfig::capacity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypCapacity {
    /// Guests whose budgets fit at once.
    pub guests: u64,
    /// Shadow pages all of them may hold at once.
    pub shadow_pages_promised: u64,
    /// Pages of the hypervisor's pool.
    pub pool_pages: u64,
    /// Heap bytes all of them may make the mediator hold.
    pub heap_promised: u64,
    /// The heap budget.
    pub heap_budget: u64,
}

/// A configuration whose budgets promise more than the mediator has, or disagree with each
/// other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HypCapacityError {
    /// No guest, or a guest that could not make a single call or hold a single buffer.
    #[error("the mediator needs at least one guest, one call, one buffer and one page a buffer")]
    Empty,
    /// The guests' shadow budgets exceed the pool.
    #[error("the guests may hold {promised} shadow pages, the pool has {available}")]
    ShadowPages {
        /// Pages promised.
        promised: u64,
        /// Pages of the pool.
        available: u64,
    },
    /// The guests' records may take more heap than the budget.
    #[error("the guests may take {promised} bytes of hypervisor heap, the budget is {available}")]
    Heap {
        /// Bytes promised.
        promised: u64,
        /// The budget.
        available: u64,
    },
    /// A guest holding nothing could not pass its largest buffer: the arg's shadow and the
    /// buffer's shadow list exceed its shadow budget.
    #[error("a buffer of the largest size needs {needed} shadow pages, the budget is {budget}")]
    ShadowBudgetTooSmall {
        /// Shadow pages the largest buffer and its arg need.
        needed: u64,
        /// `max_shadow_pages`.
        budget: u64,
    },
    /// A guest may not pin as many pages as one buffer may have.
    #[error("buffers of {buffer} pages are allowed, but a guest may pin only {pins}")]
    PinsBelowBuffer {
        /// `max_pinned_pages`.
        pins: u64,
        /// `max_buffer_pages`.
        buffer: u64,
    },
    /// A sum overflowed.
    #[error("the configuration's sums overflow")]
    Overflow,
}

impl HypConfig {
    /// Checks that `max_guests` guests can each hold their whole budget at once, whatever the
    /// others do, with a pool of `pool_pages` shadow pages: the guests' shadow budgets fit the
    /// pool, their records fit the heap budget, and a guest's budgets agree (it can pin and
    /// pass the largest buffer it may hand over).
    ///
    /// # Errors
    /// The first resource promised more than once over, or the first disagreement.
    pub fn capacity(&self, pool_pages: u64) -> Result<HypCapacity, HypCapacityError> {
        let l = &self.limits;
        let guests = u64::from(self.max_guests);
        if guests == 0 || l.max_calls == 0 || l.max_buffers == 0 || l.max_buffer_pages == 0 {
            return Err(HypCapacityError::Empty);
        }
        if l.max_pinned_pages < l.max_buffer_pages {
            return Err(HypCapacityError::PinsBelowBuffer {
                pins: l.max_pinned_pages,
                buffer: l.max_buffer_pages,
            });
        }
        // The arg's shadow and the largest buffer's shadow list, held together.
        let needed = list_pages_needed(l.max_buffer_pages)
            .checked_add(1)
            .ok_or(HypCapacityError::Overflow)?;
        if l.max_shadow_pages < needed {
            return Err(HypCapacityError::ShadowBudgetTooSmall {
                needed,
                budget: l.max_shadow_pages,
            });
        }
        let shadow_pages_promised = guests
            .checked_mul(l.max_shadow_pages)
            .ok_or(HypCapacityError::Overflow)?;
        if shadow_pages_promised > pool_pages {
            return Err(HypCapacityError::ShadowPages {
                promised: shadow_pages_promised,
                available: pool_pages,
            });
        }
        let heap_promised = l
            .heap_bytes()
            .and_then(|b| b.checked_mul(guests))
            .ok_or(HypCapacityError::Overflow)?;
        if heap_promised > self.heap_budget {
            return Err(HypCapacityError::Heap {
                promised: heap_promised,
                available: self.heap_budget,
            });
        }
        Ok(HypCapacity {
            guests,
            shadow_pages_promised,
            pool_pages,
            heap_promised,
            heap_budget: self.heap_budget,
        })
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
    /// Hypervisor pages held as shadows (what [`HypLimits::max_shadow_pages`] bounds).
    pub shadow_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit() {
        let c = HypConfig::default();
        let cap = c.capacity(16 * 1024).unwrap();
        assert_eq!(cap.shadow_pages_promised, 16 * 1024);
        assert!(cap.heap_promised <= cap.heap_budget);
        assert_eq!(
            c.capacity(16 * 1024 - 1),
            Err(HypCapacityError::ShadowPages {
                promised: 16 * 1024,
                available: 16 * 1024 - 1
            })
        );
    }

    #[test]
    fn refusals() {
        let c = HypConfig::default();
        let with = |limits: HypLimits| HypConfig { limits, ..c };
        assert_eq!(
            HypConfig { max_guests: 0, ..c }.capacity(1 << 20),
            Err(HypCapacityError::Empty)
        );
        assert_eq!(
            with(HypLimits {
                max_pinned_pages: 10,
                max_buffer_pages: 11,
                ..HypLimits::default()
            })
            .capacity(1 << 20),
            Err(HypCapacityError::PinsBelowBuffer {
                pins: 10,
                buffer: 11
            })
        );
        // 32768 pages need 65 list pages, plus the arg's shadow.
        assert_eq!(
            with(HypLimits {
                max_shadow_pages: 65,
                ..HypLimits::default()
            })
            .capacity(1 << 20),
            Err(HypCapacityError::ShadowBudgetTooSmall {
                needed: 66,
                budget: 65
            })
        );
        assert!(matches!(
            HypConfig {
                heap_budget: 1 << 20,
                ..c
            }
            .capacity(1 << 20),
            Err(HypCapacityError::Heap { .. })
        ));
        assert_eq!(
            with(HypLimits {
                max_pinned_pages: u64::MAX,
                ..HypLimits::default()
            })
            .capacity(1 << 20),
            Err(HypCapacityError::Overflow)
        );
    }
}
