//! How a core is set up: threads, guests, quotas, the SHM window and the optional static pool,
//! and the check ([`CoreConfig::capacity`]) that the guests' quotas together never promise more
//! than the TEE has.

use crate::mobj::OBJECT_BOOKKEEPING_BYTES;
use teeshm_abi::limits::{
    DEFAULT_GUEST_THREADS, DEFAULT_MAX_BUFFER_PAGES, DEFAULT_MAX_MAPPED_PAGES, DEFAULT_MAX_OBJECTS,
    DEFAULT_MAX_REGISTERED_PAGES, DEFAULT_THREADS,
};
use teeshm_mm::{PAGE_SIZE, PhysRange, ShmWindowConfig, VaWindowConfig, VirtAddr};

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
    /// Secure heap bytes its objects may take (each object's own size, its page frames and
    /// [`OBJECT_BOOKKEEPING_BYTES`]).
    pub max_secure_bytes: u64,
}

impl Default for GuestQuotas {
    /// 4096 objects, 262144 registered pages (1 GiB), 32768 mapped pages (128 MiB), 64
    /// sessions, 8 threads, 4 MiB of secure heap: 16 such guests fit the default core. The
    /// limits a hypervisor mediator must not undercut come from [`teeshm_abi::limits`], where
    /// `teeshm_hyp::HypLimits` takes its defaults too.
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            max_registered_pages: DEFAULT_MAX_REGISTERED_PAGES,
            max_mapped_pages: DEFAULT_MAX_MAPPED_PAGES,
            max_sessions: 64,
            max_threads: u64::from(DEFAULT_GUEST_THREADS),
            max_secure_bytes: 4 << 20,
        }
    }
}

/// The secure heap reckoned for each page a guest may map. The reverse map no longer takes heap
/// per mapped page (its nodes are side tables allocated with the window at boot, 20 bytes a
/// window page: `teeshm_mm::ReverseMap::side_table_bytes`); the 96 bytes the per-frame arrays
/// it replaced could cost are kept as a margin until the capacity check is re-derived.
pub const MAPPED_PAGE_BYTES: u64 = 96;

/// An upper bound of the secure heap a call in flight holds besides the frames of the list it
/// decodes: its state, its arg copy (at most 127 params of 32 bytes and the header), the RPC
/// arg it builds, and its list of owned objects.
pub const CALL_BYTES: u64 = 16 << 10;

/// The secure heap each guest keeps for decoding its page lists: one list page's secure copy
/// (`GuestPartition::list_page`), taken at its first registration and kept until it goes.
pub const LIST_PAGE_BYTES: u64 = teeshm_abi::page_list::LIST_PAGE_SIZE as u64;

/// An upper bound of the secure heap one open session costs (its entry in the guest's
/// session table, with its share of the B-tree's nodes).
pub const SESSION_BYTES: u64 = 64;

/// What the guests' quotas add up to, beside what the core has (see
/// [`CoreConfig::capacity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Guests whose quotas must fit at once.
    pub guests: u64,
    /// Window pages all of them may hold at once (mappings, their guard pages, each thread's
    /// one-page list mapping, the static pool).
    pub window_pages_promised: u64,
    /// Pages of the window.
    pub window_pages: u64,
    /// Translation-table pages a fully mapped window needs.
    pub table_pages_needed: u64,
    /// Table pages configured.
    pub table_pages: u64,
    /// Secure heap bytes all guests may take (objects and reverse-map entries).
    pub heap_promised: u64,
    /// The heap budget.
    pub heap_budget: u64,
}

/// A configuration whose quotas promise more than the core has, or disagree with each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// Zero threads, zero guests, or a guest limit of zero threads.
    #[error("a core needs at least one thread, one guest and one thread per guest")]
    Empty,
    /// Fewer threads than guests: each admitted guest has one reserved.
    #[error("{guests} guests need a reserved thread each, but there are {threads} threads")]
    Threads {
        /// Guests.
        guests: u64,
        /// Threads.
        threads: u64,
    },
    /// The guests' mapped-pages quotas exceed the window.
    #[error("the guests may map {promised} window pages, the window has {available}")]
    Window {
        /// Pages promised.
        promised: u64,
        /// Pages of the window.
        available: u64,
    },
    /// The table pages cannot map the whole window.
    #[error("a full window needs {needed} table pages, {available} are configured")]
    Tables {
        /// Needed.
        needed: u64,
        /// Configured.
        available: u64,
    },
    /// The guests' heap quotas exceed the heap budget.
    #[error("the guests may take {promised} bytes of secure heap, the budget is {available}")]
    Heap {
        /// Bytes promised.
        promised: u64,
        /// The budget.
        available: u64,
    },
    /// A guest may register or be handed a buffer larger than it may map.
    #[error("buffers of {buffer} pages are allowed, but a guest may map only {mapped}")]
    BufferLargerThanMappable {
        /// `max_buffer_pages`.
        buffer: u64,
        /// `max_mapped_pages`.
        mapped: u64,
    },
    /// A guest may hold its largest buffers but not afford their page frames.
    #[error(
        "{objects} objects and {pages} registered pages need {needed} bytes, the quota is {quota}"
    )]
    HeapQuotaTooSmall {
        /// `max_objects`.
        objects: u64,
        /// `max_registered_pages`.
        pages: u64,
        /// Bytes they need.
        needed: u64,
        /// `max_secure_bytes`.
        quota: u64,
    },
    /// A sum overflowed.
    #[error("the configuration's sums overflow")]
    Overflow,
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
    /// memory map. It is mapped once at boot and belongs to the single normal world (a
    /// virtualized core refuses it).
    pub static_pool: Option<PhysRange>,
    /// Secure heap bytes the guests together may take (their `max_secure_bytes` and the
    /// reverse-map entries of their mapped pages); the rest of the heap is the core's own.
    pub heap_budget: u64,
    /// Pages of `CALL_WITH_ARG` args each guest keeps, with their objects and mappings, for
    /// its next calls with an arg there (under a hypervisor only: the arg then lies on the
    /// mediator's shadow page, which it uses call after call). 0 (the default) keeps none:
    /// each such arg is a temporary object, mapped for its call and unmapped after. Kept
    /// pages are charged to the guest's quotas like any object, and yield to them.
    pub kept_arg_pages: u8,
}

impl CoreConfig {
    /// Guests whose quotas must fit at once: the created ones under a hypervisor, else one.
    pub fn quota_holders(&self) -> u64 {
        match self.normal_world {
            NormalWorld::Single => 1,
            NormalWorld::Virtualized => u64::from(self.max_guests),
        }
    }

    /// Checks that every guest can have all its quotas at once, whatever the others do: the
    /// sum over guests of window pages, table pages and heap stays within what the core has,
    /// each guest has a reserved thread, and a guest's quotas agree (it can map its largest
    /// buffer and afford its page frames). The core refuses to boot otherwise.
    ///
    /// # Errors
    /// The first resource that is promised more than once over.
    pub fn capacity(&self) -> Result<Capacity, CapacityError> {
        let q = &self.quotas;
        let guests = self.quota_holders();
        let threads = u64::from(self.threads);
        if threads == 0 || guests == 0 || q.max_threads == 0 {
            return Err(CapacityError::Empty);
        }
        if guests > threads {
            return Err(CapacityError::Threads { guests, threads });
        }
        if self.max_buffer_pages > q.max_mapped_pages {
            return Err(CapacityError::BufferLargerThanMappable {
                buffer: self.max_buffer_pages,
                mapped: q.max_mapped_pages,
            });
        }
        let of = |v: Option<u64>| v.ok_or(CapacityError::Overflow);
        let guard = self.window.va.guard_pages;
        // A guest's mappings: its pages, and a guard run after each of its objects.
        let per_guest = of(q
            .max_objects
            .checked_mul(guard)
            .and_then(|g| g.checked_add(q.max_mapped_pages)))?;
        // The window's transient page (list pages are read there, one at a time, under the
        // window's lock) and its guard.
        let transient = guard.saturating_add(1);
        let pool = self.static_pool.map_or(0, |p| p.len() / PAGE_SIZE + guard);
        let window_pages_promised = of(guests
            .checked_mul(per_guest)
            .and_then(|w| w.checked_add(transient))
            .and_then(|w| w.checked_add(pool)))?;
        let window_pages = self.window.va.size / PAGE_SIZE;
        if window_pages_promised > window_pages {
            return Err(CapacityError::Window {
                promised: window_pages_promised,
                available: window_pages,
            });
        }
        // Level 3 tables for every 2 MiB of the window, level 2 tables for every 1 GiB, two
        // more for a window that straddles either boundary, and the root.
        let table_pages_needed = window_pages.div_ceil(512) + window_pages.div_ceil(512 * 512) + 3;
        let table_pages = self.window.max_table_pages as u64;
        if table_pages_needed > table_pages {
            return Err(CapacityError::Tables {
                needed: table_pages_needed,
                available: table_pages,
            });
        }
        // Frames are 4 bytes a page (8 above 16 TiB): count 8.
        let needed = of(q
            .max_objects
            .checked_mul(OBJECT_BOOKKEEPING_BYTES + 128)
            .and_then(|b| b.checked_add(q.max_registered_pages.checked_mul(8)?)))?;
        if needed > q.max_secure_bytes {
            return Err(CapacityError::HeapQuotaTooSmall {
                objects: q.max_objects,
                pages: q.max_registered_pages,
                needed,
                quota: q.max_secure_bytes,
            });
        }
        // Each call in flight may hold, before its object is charged, the page frames of the
        // list it decodes (fallibly reserved) and a copy of its arg.
        let per_call = of(self
            .max_buffer_pages
            .checked_mul(8)
            .and_then(|b| b.checked_add(CALL_BYTES)))?;
        let heap_promised = of(q
            .max_mapped_pages
            .checked_mul(MAPPED_PAGE_BYTES)
            .and_then(|b| b.checked_add(q.max_sessions.checked_mul(SESSION_BYTES)?))
            .and_then(|b| b.checked_add(q.max_secure_bytes))
            .and_then(|b| b.checked_add(LIST_PAGE_BYTES))
            .and_then(|b| b.checked_mul(guests))
            .and_then(|b| b.checked_add(threads.checked_mul(per_call)?)))?;
        if heap_promised > self.heap_budget {
            return Err(CapacityError::Heap {
                promised: heap_promised,
                available: self.heap_budget,
            });
        }
        Ok(Capacity {
            guests,
            window_pages_promised,
            window_pages,
            table_pages_needed,
            table_pages,
            heap_promised,
            heap_budget: self.heap_budget,
        })
    }
}

/// The configuration of the QEMU `virt` firmware (`firmware/tee`): one place for the numbers, so
/// that the firmware boots with exactly what the fuzz targets and tests run
/// ([`CoreConfig::qemu_virt`]).
///
/// The machine has 16 MiB of secure RAM; code, data, stacks and the monitor's part take about
/// 0.3 MiB, the rest (15.7 MiB) is the S-EL1 heap (`firmware/tee/src/layout.rs`). The heap holds
/// the guests' share ([`HEAP_BUDGET`]), the translation tables ([`MAX_TABLE_PAGES`]) and the
/// core's own state (thread and guest tables, sessions, the static map) with the allocator's
/// rounding.
pub mod qemu_virt {
    /// Secure RAM of the machine.
    pub const SECURE_RAM_BYTES: u64 = 16 << 20;
    /// The dynamic SHM window's base: 256 GiB, far above every static mapping (all below 4 GiB,
    /// at VA == PA), inside the 39-bit VA space of mm's tables.
    pub const WINDOW_BASE: u64 = 0x40_0000_0000;
    /// The window: 512 MiB. The capacity check wants the table pages to map the whole window
    /// (so tables never run out before the window does): a 4 GiB window would need 2055 table
    /// pages, 8 MiB of the 15.7 MiB heap, for mappings no guest may make. 512 MiB needs 260
    /// (1 MiB) and still holds four times what the guests' quotas let them map (33,808 pages).
    pub const WINDOW_SIZE: u64 = 512 << 20;
    /// Translation-table pages (2 MiB of the heap): the window's 260, the static map's 11, and
    /// room to spare before lazily reclaimed tables are compacted.
    pub const MAX_TABLE_PAGES: usize = 512;
    /// Heap bytes the guests' quotas may take together: half the heap; the other half holds the
    /// table pages, the core's own state and the buddy allocator's rounding.
    pub const HEAP_BUDGET: u64 = 8 << 20;
    /// Threads: one reserved for each of [`MAX_GUESTS`] guests and as many shared.
    pub const THREADS: u32 = 8;
    /// Guests under a hypervisor.
    pub const MAX_GUESTS: u32 = 4;
}

impl CoreConfig {
    /// The QEMU `virt` firmware's configuration ([`qemu_virt`]) for `normal_world`: 8 threads;
    /// one normal world with the whole guests' share of the heap and window (1024 objects, 128
    /// MiB registered and mapped, buffers of 128 MiB, 4 MiB of secure heap), or 4 guests with a
    /// quarter each (256 objects, 32 MiB registered and mapped, buffers of 32 MiB, 1 MiB of
    /// secure heap, 4 threads). Both pass [`CoreConfig::capacity`].
    pub fn qemu_virt(normal_world: NormalWorld) -> Self {
        let (max_guests, quotas, max_buffer_pages) = match normal_world {
            NormalWorld::Single => (
                1,
                GuestQuotas {
                    max_objects: 1024,
                    max_registered_pages: 32_768,
                    max_mapped_pages: 32_768,
                    max_sessions: 16,
                    max_threads: qemu_virt::THREADS as u64,
                    // Its objects and their frames need at most 640 KiB (capacity()).
                    max_secure_bytes: 1 << 20,
                },
                32_768,
            ),
            NormalWorld::Virtualized => (
                qemu_virt::MAX_GUESTS,
                GuestQuotas {
                    max_objects: 256,
                    max_registered_pages: 8192,
                    max_mapped_pages: 8192,
                    max_sessions: 16,
                    // THREADS / MAX_GUESTS: every guest's calls up to its quota always find a
                    // thread, so no guest meets ETHREAD_LIMIT while under its quota (the number
                    // GET_THREAD_COUNT answers, which Xen's mediator caps each guest at; Xen
                    // 4.17 takes ETHREAD_LIMIT on a REGISTER_SHM for a registration).
                    max_threads: (qemu_virt::THREADS / qemu_virt::MAX_GUESTS) as u64,
                    max_secure_bytes: 1 << 20,
                },
                8192,
            ),
        };
        Self {
            threads: qemu_virt::THREADS,
            max_guests,
            normal_world,
            quotas,
            window: ShmWindowConfig {
                va: VaWindowConfig {
                    base: VirtAddr(qemu_virt::WINDOW_BASE),
                    size: qemu_virt::WINDOW_SIZE,
                    guard_pages: 1,
                },
                max_table_pages: qemu_virt::MAX_TABLE_PAGES,
            },
            max_buffer_pages,
            static_pool: None,
            heap_budget: qemu_virt::HEAP_BUDGET,
            kept_arg_pages: 0,
        }
    }
}

impl Default for CoreConfig {
    /// One normal world; 32 threads and 16 guests when virtualized; default quotas; a 4 GiB
    /// window at 0x40_0000_0000 with one guard page, 4096 table pages, buffers of 128 MiB at
    /// most, no pool, a 192 MiB heap budget.
    fn default() -> Self {
        Self {
            threads: DEFAULT_THREADS,
            max_guests: 16,
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
            max_buffer_pages: DEFAULT_MAX_BUFFER_PAGES,
            static_pool: None,
            heap_budget: 192 << 20,
            kept_arg_pages: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn virtualized() -> CoreConfig {
        CoreConfig {
            normal_world: NormalWorld::Virtualized,
            ..CoreConfig::default()
        }
    }

    #[test]
    fn the_defaults_fit_in_both_modes() {
        let single = CoreConfig::default().capacity().unwrap();
        assert_eq!(single.guests, 1);
        let many = virtualized().capacity().unwrap();
        assert_eq!(many.guests, 16);
        assert!(many.window_pages_promised <= many.window_pages);
        assert!(many.table_pages_needed <= many.table_pages);
        assert!(many.heap_promised <= many.heap_budget);
    }

    #[test]
    fn each_overcommitted_resource_is_named() {
        let mut c = virtualized();
        c.max_guests = 33;
        assert_eq!(
            c.capacity(),
            Err(CapacityError::Threads {
                guests: 33,
                threads: 32
            })
        );

        let mut c = virtualized();
        c.quotas.max_mapped_pages = 65_536;
        c.max_buffer_pages = 65_536;
        assert!(matches!(c.capacity(), Err(CapacityError::Window { .. })));

        let mut c = virtualized();
        c.window.max_table_pages = 2000;
        assert!(matches!(c.capacity(), Err(CapacityError::Tables { .. })));

        let mut c = virtualized();
        c.heap_budget = 64 << 20;
        assert!(matches!(c.capacity(), Err(CapacityError::Heap { .. })));

        let mut c = virtualized();
        c.max_buffer_pages = c.quotas.max_mapped_pages + 1;
        assert!(matches!(
            c.capacity(),
            Err(CapacityError::BufferLargerThanMappable { .. })
        ));

        let mut c = virtualized();
        c.quotas.max_secure_bytes = 1 << 20;
        assert!(matches!(
            c.capacity(),
            Err(CapacityError::HeapQuotaTooSmall { .. })
        ));

        let mut c = virtualized();
        c.quotas.max_objects = u64::MAX;
        assert_eq!(c.capacity(), Err(CapacityError::Overflow));

        let mut c = virtualized();
        c.threads = 0;
        assert_eq!(c.capacity(), Err(CapacityError::Empty));
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    #[test]
    fn the_qemu_virt_preset_passes_capacity_in_both_modes() {
        for nw in [NormalWorld::Single, NormalWorld::Virtualized] {
            let c = CoreConfig::qemu_virt(nw);
            let cap = c.capacity().unwrap();
            assert!(
                cap.heap_promised <= qemu_virt::HEAP_BUDGET,
                "{nw:?}: {cap:?}"
            );
            assert_eq!(cap.table_pages_needed, 260, "{nw:?}");
            assert!(
                cap.window_pages_promised * 3 < cap.window_pages,
                "{nw:?}: {cap:?}"
            );
        }
        // The budget leaves half the heap: with the tables, under the 15.7 MiB of the heap.
        let tables = qemu_virt::MAX_TABLE_PAGES as u64 * PAGE_SIZE;
        assert!(qemu_virt::HEAP_BUDGET + tables + (4 << 20) < qemu_virt::SECURE_RAM_BYTES);
    }
}
