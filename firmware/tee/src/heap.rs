//! The global allocator of the secure image: a buddy allocator over the secure heap.
//!
//! Only the S-EL1 core allocates (the monitor never does). Translation-table pages come from
//! here too (`teeshm_platform::TablePagePool` allocates 4 KiB-aligned pages from the global
//! allocator), which is why the whole heap is identity-mapped.

use buddy_system_allocator::LockedHeap;
use core::ops::Range;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands `range` (page aligned, unused by anything else) to the allocator. Called once, at
/// boot, before the first allocation.
pub fn init(range: Range<u64>) {
    let size = range.end.saturating_sub(range.start) as usize;
    // SAFETY: `range` is the heap of the linker script: secure RAM that nothing else uses, that
    // lives for the whole run, and that the S-EL1 map keeps at VA == PA; init runs once, before
    // any allocation.
    unsafe { HEAP.lock().init(range.start as usize, size) };
}

/// Bytes the allocator has handed out and not got back.
pub fn allocated() -> usize {
    HEAP.lock().stats_alloc_actual()
}

/// Bytes the allocator manages in all.
pub fn total() -> usize {
    HEAP.lock().stats_total_bytes()
}
