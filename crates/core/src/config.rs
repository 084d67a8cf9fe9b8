//! How a core is set up: threads, guests, quotas, the SHM window and the optional static pool.

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
    /// 8 threads.
    fn default() -> Self {
        Self {
            max_objects: 4096,
            max_registered_pages: 262_144,
            max_mapped_pages: 65_536,
            max_sessions: 64,
            max_threads: 8,
        }
    }
}

/// What sits below the TEE in the normal world: one operating system, or a hypervisor with
/// guests. The firmware picks it by what it boots (an OS at EL1, a hypervisor at EL2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormalWorld {
    /// One normal world and no hypervisor: `VM_CREATED` and `VM_DESTROYED` are unknown
    /// functions, the VIRTUALIZATION capability is not offered, and a7 is ignored: every call
    /// is the one normal world's (guest 0). The static pool, if any, is served.
    #[default]
    Single,
    /// A hypervisor below several guests: a7 names the guest; 0 is the hypervisor, which may
    /// only announce guests (`VM_CREATED`, `VM_DESTROYED`) and ask fast calls; a guest's
    /// yielding calls need a created id. No static pool exists (it belongs to a normal world
    /// without a hypervisor, and would be shared by every guest).
    Virtualized,
}

/// The core's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Yielding-call contexts (OP-TEE's `CFG_NUM_THREADS`); `GET_THREAD_COUNT` reports it.
    pub threads: u32,
    /// Guests alive at once under a hypervisor (the hypervisor itself not counted); 1 for a
    /// single normal world.
    pub max_guests: u32,
    /// Whether a hypervisor sits below the normal world.
    pub normal_world: NormalWorld,
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
            threads: 8,
            max_guests: 65,
            normal_world: NormalWorld::Single,
            quotas: GuestQuotas::default(),
            window: ShmWindowConfig {
                va: VaWindowConfig {
                    base: VirtAddr(0x40_0000_0000),
                    size: 4 << 30,
                    guard_pages: 1,
                },
                max_table_pages: 4096,
            },
            max_buffer_pages: 262_144,
            static_pool: None,
        }
    }
}
