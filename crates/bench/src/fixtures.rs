//! Fixtures the memory-manager figures share: a machine with 4 GiB of NS RAM, and a window.

use teeshm_mm::{
    MemoryMap, PAGE_SIZE, PhysAddr, ShmWindow, ShmWindowConfig, VaWindowConfig, VirtAddr,
};
use teeshm_platform::RecordingTlb;

/// First byte of NS RAM (the simulated machine's, `teeshm_testkit::NS_RAM`).
pub const NS_RAM: u64 = teeshm_testkit::NS_RAM.0;
/// Bytes of NS RAM (4 GiB).
pub const NS_RAM_SIZE: u64 = teeshm_testkit::NS_RAM.1;

/// The simulated machine's map with 4 GiB of NS RAM and no static pool.
pub fn memory_map() -> MemoryMap {
    teeshm_testkit::machine_memory_map(teeshm_testkit::NS_RAM, None)
}

/// `n` scattered NS pages from the 64-bit random values `next` yields.
pub fn scattered(n: u64, mut next: impl FnMut() -> u64) -> Vec<PhysAddr> {
    (0..n)
        .map(|_| PhysAddr(NS_RAM + (next() % (NS_RAM_SIZE / PAGE_SIZE)) * PAGE_SIZE))
        .collect()
}

/// An empty window of `pages` pages at 0x10_0000_0000, one guard page, plenty of table pages.
pub fn window(pages: u64, tlb: RecordingTlb) -> ShmWindow<RecordingTlb> {
    let config = ShmWindowConfig {
        va: VaWindowConfig {
            base: VirtAddr(0x10_0000_0000),
            size: pages * PAGE_SIZE,
            guard_pages: 1,
        },
        max_table_pages: 1 << 16,
    };
    ShmWindow::new(config, memory_map(), tlb).expect("a valid window")
}

/// A core under a hypervisor with room for `guests` guests of the benchmarks' size at once:
/// a thread set aside for each, 1100 objects and 8192 mappable pages each (the capacity check
/// wants every guest's share to fit), a heap budget to match.
pub fn guests_config(guests: u32) -> teeshm_core::CoreConfig {
    let mut c = teeshm_core::CoreConfig {
        normal_world: teeshm_core::NormalWorld::Virtualized,
        threads: guests,
        max_guests: guests,
        max_buffer_pages: 8192,
        heap_budget: 1 << 30,
        ..teeshm_core::CoreConfig::default()
    };
    c.quotas.max_objects = 1100;
    c.quotas.max_mapped_pages = 8192;
    c
}
