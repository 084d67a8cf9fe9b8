//! Default per-guest limits that the TEE core and a hypervisor mediator in front of it must agree
//! on.
//!
//! The mediator exists to bound what a guest can make the *hypervisor* hold; it must not refuse
//! what the TEE behind it would accept, or a guest meets a limit no TEE document names. Both
//! sides therefore take their defaults from here (`teeshm_core::GuestQuotas` and
//! `CoreConfig::max_buffer_pages` on one side, `teeshm_hyp::HypLimits` on the other), and the
//! mediator, which depends on this crate only, never needs to copy the core's numbers by hand.
//!
//! These are defaults, not part of the wire ABI: a platform configures either side as it needs.

/// Memory objects one guest may hold at once in the core (registered buffers, temporary page
/// lists of calls in flight, RPC buffers), and buffers the mediator keeps pinned for it: 4096.
pub const DEFAULT_MAX_OBJECTS: u64 = 4096;

/// Pages of one buffer (one page list): 2^15, 128 MiB of 4 KiB pages — no more than a guest
/// may map at once ([`DEFAULT_MAX_MAPPED_PAGES`]), so a guest can use every buffer it may
/// register.
pub const DEFAULT_MAX_BUFFER_PAGES: u64 = 1 << 15;

/// Pages of one guest mapped in the TEE's window at once: 2^15, 128 MiB (16 guests' worth fit
/// the default 4 GiB window with their guard pages).
pub const DEFAULT_MAX_MAPPED_PAGES: u64 = 1 << 15;

/// Pages of all of one guest's registered buffers together: 2^18, 1 GiB.
pub const DEFAULT_MAX_REGISTERED_PAGES: u64 = 1 << 18;

/// Yielding-call contexts of the TEE (OP-TEE's `CFG_NUM_THREADS`): 32, one reserved for each of
/// 16 guests and 16 shared. A thread of teeshm's core is a table slot and the state of a call
/// suspended in an RPC, not a stack, so they are cheap.
pub const DEFAULT_THREADS: u32 = 32;

/// Threads one guest may use at once: 8. A mediator allows at least as many calls in flight per
/// guest, so the TEE's own thread limit is the one guests meet.
pub const DEFAULT_GUEST_THREADS: u32 = 8;
