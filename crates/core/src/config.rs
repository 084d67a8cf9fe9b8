//! How a core is set up: threads, guests, quotas, the SHM window and the optional static pool.

use teeshm_abi::limits::{
    DEFAULT_MAX_BUFFER_PAGES, DEFAULT_MAX_OBJECTS, DEFAULT_MAX_REGISTERED_PAGES, DEFAULT_THREADS,
};
use teeshm_mm::{PhysRange, ShmWindowConfig, VaWindowConfig, VirtAddr};

/// Per-guest limits. Exceeding one is refused with `TEE_ERROR_OUT_OF_MEMORY` (the code OP-TEE
/// gives when its heap runs out), and nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestQuotas {
    /// Memory objects alive at once: registered buffers, temporary page lists of calls in
    /// flight and RPC buffers all count (as in the Xen mediator).
    pub max_objects: u64,
    /// Pages of all registered buffers together.
    pub max_registered_pages: u64,
    /// Pages of this guest mapped in the SHM window at once (cached mappings included; the
    /// guest's own idle cached mappings are evicted first when it would pass the limit).
    pub max_mapped_pages: u64,
    /// Open sessions.
    pub max_sessions: u64,
    /// Threads (yielding calls) in use at once, running or suspended in an RPC.
    pub max_threads: u64,
}

impl Default for GuestQuotas {
    /// Defaults sized so 64 guests can each hold 16k registered pages and 1k buffers at once:
    /// 4096 objects, 262144 registered pages (1 GiB), 65536 mapped pages (256 MiB), 64 sessions,
    /// 8 threads. The limits a hypervisor mediator must not undercut come from
    /// [`teeshm_abi::limits`], where `teeshm_hyp::HypLimits` takes its defaults too.
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            max_registered_pages: DEFAULT_MAX_REGISTERED_PAGES,
            max_mapped_pages: 65_536,
            max_sessions: 64,
            max_threads: u64::from(DEFAULT_THREADS),
        }
    }
}

/// The core's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Yielding-call contexts (OP-TEE's `CFG_NUM_THREADS`); `GET_THREAD_COUNT` reports it.
    pub threads: u32,
    /// Guests alive at once (guest 0 included when [`CoreConfig::guest_zero`] is set).
    pub max_guests: u32,
    /// Whether guest 0 (the hypervisor, or the only normal world of a system without one)
    /// exists from boot and may make yielding calls. OP-TEE with virtualization refuses yielding
    /// calls from client id 0; a system without a hypervisor needs them.
    pub guest_zero: bool,
    /// Limits applied to every guest.
    pub quotas: GuestQuotas,
    /// The dynamic SHM window (VA range, guard pages, table pages).
    pub window: ShmWindowConfig,
    /// Most data pages one buffer (page list) may have.
    pub max_buffer_pages: u64,
    /// The static SHM pool (`GET_SHM_CONFIG`), if any; it must be a `ReservedShm` region of the
    /// memory map. It is mapped once at boot and shared by every guest, so it suits systems with
    /// one normal world; with several, use registered memory.
    pub static_pool: Option<PhysRange>,
}

impl Default for CoreConfig {
    /// 8 threads, 65 guests (guest 0 and 64 others), default quotas, a 4 GiB window at
    /// 0x40_0000_0000 with one guard page, 4096 table pages, 1 GiB buffers at most, no pool.
    fn default() -> Self {
        Self {
            threads: DEFAULT_THREADS,
            max_guests: 65,
            guest_zero: true,
            quotas: GuestQuotas::default(),
            window: ShmWindowConfig {
                va: VaWindowConfig {
                    base: VirtAddr(0x40_0000_0000),
                    size: 4 << 30,
                    guard_pages: 1,
                },
                max_table_pages: 4096,
            },
            max_buffer_pages: DEFAULT_MAX_BUFFER_PAGES,
            static_pool: None,
        }
    }
}
