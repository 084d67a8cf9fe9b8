//! Translation-table pages for `aarch64-paging`, drawn from a reservation made before each map.

use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{PageTable, Translation};
use alloc::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One translation table of the EL1&0 regime (4 KiB, 512 descriptors).
type Table = PageTable<El1Attributes>;

/// Why table pages could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TablePoolError {
    /// The pool's configured capacity would be exceeded.
    Exhausted {
        /// Pages asked for.
        needed: usize,
        /// Pages the pool could still provide.
        available: usize,
    },
    /// The secure heap refused a page.
    OutOfMemory,
}

/// Counters of a [`TablePagePool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TablePoolStats {
    /// Pages in use as translation tables (root included).
    pub live: usize,
    /// Zeroed pages reserved and ready for the next map.
    pub spare: usize,
    /// Most pages the pool may hold at once (live + spare).
    pub capacity: usize,
    /// Pages handed out with the reservation empty. The memory manager reserves an upper bound
    /// before each map, so this stays 0; the agreement checker reports it if not.
    pub unreserved_allocations: u64,
}

/// Source of translation-table pages with a hard capacity, filled ahead of use.
///
/// `aarch64-paging` asks for table pages through [`Translation::allocate_table`], which cannot
/// fail. The memory manager therefore calls [`reserve`](Self::reserve) with an upper bound of the
/// tables a map can need *before* it touches the tables; the map then only pops reserved pages.
/// Freed tables are zeroed and kept as spares for the next map.
///
/// Addressing: a table page is reached at the virtual address equal to its physical address.
/// On the host the heap pointer serves as the "physical" address; in the firmware the secure RAM
/// that holds the heap is identity-mapped, so the same rule holds.
pub struct TablePagePool {
    // `aarch64_paging::paging::RootTable` only lends its translation by shared reference, so the
    // reservation is reached through `&self`: a lock (never contended: every change of the
    // tables is made under the core's window lock held for writing) and atomic counters, so
    // that CPUs walking the tables under the window's read lock may share the pool.
    spare: spin::Mutex<Vec<NonNull<Table>>>,
    capacity: usize,
    live: AtomicUsize,
    unreserved_allocations: AtomicU64,
}

// SAFETY: The pool exclusively owns every page in `spare` (no other pointer to them exists) and
// the pages handed out are owned by the table hierarchy that holds the pool. Moving the pool to
// another thread moves that ownership with it; nothing here is tied to a thread.
unsafe impl Send for TablePagePool {}

// SAFETY: Shared access reaches the pool's state only through its lock (`spare`) and atomics
// (`live`, `unreserved_allocations`); the raw page pointers in `spare` are only dereferenced
// by the pool's own methods under that lock (allocation, zeroing, freeing), and
// `physical_to_virtual` only turns an address into a pointer without reading through it.
unsafe impl Sync for TablePagePool {}

impl TablePagePool {
    const LAYOUT: Layout = Layout::new::<Table>();

    /// An empty pool that will never hold more than `capacity` pages.
    pub fn new(capacity: usize) -> Self {
        Self {
            spare: spin::Mutex::new(Vec::new()),
            capacity,
            live: AtomicUsize::new(0),
            unreserved_allocations: AtomicU64::new(0),
        }
    }

    /// Makes sure at least `pages` zeroed pages are ready, allocating the missing ones now.
    ///
    /// # Errors
    /// [`TablePoolError::Exhausted`] if live + spare pages would pass the capacity, and
    /// [`TablePoolError::OutOfMemory`] if the heap refuses; pages already reserved stay reserved.
    pub fn reserve(&self, pages: usize) -> Result<(), TablePoolError> {
        let mut spare = self.spare.lock();
        self.reserve_into(&mut spare, pages)
    }

    fn reserve_into(
        &self,
        spare: &mut Vec<NonNull<Table>>,
        pages: usize,
    ) -> Result<(), TablePoolError> {
        let missing = pages.saturating_sub(spare.len());
        if missing == 0 {
            return Ok(());
        }
        let held = self
            .live
            .load(Ordering::Relaxed)
            .saturating_add(spare.len());
        let available = self.capacity.saturating_sub(held);
        if missing > available {
            return Err(TablePoolError::Exhausted {
                needed: pages,
                available: available.saturating_add(spare.len()),
            });
        }
        spare
            .try_reserve(missing)
            .map_err(|_| TablePoolError::OutOfMemory)?;
        for _ in 0..missing {
            let page = Self::allocate_zeroed_page().ok_or(TablePoolError::OutOfMemory)?;
            spare.push(page);
        }
        Ok(())
    }

    /// Returns spare pages to the heap, keeping `keep` of them.
    pub fn shrink_spare(&self, keep: usize) {
        let mut spare = self.spare.lock();
        while spare.len() > keep {
            if let Some(page) = spare.pop() {
                Self::free_page(page);
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> TablePoolStats {
        TablePoolStats {
            live: self.live.load(Ordering::Relaxed),
            spare: self.spare.lock().len(),
            capacity: self.capacity,
            unreserved_allocations: self.unreserved_allocations.load(Ordering::Relaxed),
        }
    }

    fn allocate_zeroed_page() -> Option<NonNull<Table>> {
        // SAFETY: LAYOUT has a non-zero size (4096 bytes). All-zero bytes are a valid `PageTable`
        // (every descriptor invalid), which is what `PageTable::EMPTY` is too.
        NonNull::new(unsafe { alloc_zeroed(Self::LAYOUT) }.cast::<Table>())
    }

    fn free_page(page: NonNull<Table>) {
        // SAFETY: every page the pool frees came from `allocate_zeroed_page` with the same layout
        // and is owned by the pool alone at this point (popped from `spare` or returned to it).
        unsafe { dealloc(page.as_ptr().cast(), Self::LAYOUT) }
    }

    fn physical_address(page: NonNull<Table>) -> PhysicalAddress {
        PhysicalAddress(page.as_ptr().expose_provenance())
    }
}

impl Translation<El1Attributes> for TablePagePool {
    fn allocate_table(&mut self) -> (NonNull<Table>, PhysicalAddress) {
        let page = match self.spare.get_mut().pop() {
            Some(page) => page,
            None => {
                // The caller's bound was wrong. Stay correct anyway and let the checker say so.
                let count = self.unreserved_allocations.get_mut();
                *count = count.saturating_add(1);
                match Self::allocate_zeroed_page() {
                    Some(page) => page,
                    None => handle_alloc_error(Self::LAYOUT),
                }
            }
        };
        let live = self.live.get_mut();
        *live = live.saturating_add(1);
        (page, Self::physical_address(page))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<Table>) {
        // SAFETY: the caller guarantees `page_table` came from `allocate_table` on this pool and
        // is no longer used by the hierarchy, so we may write to it; zeroing keeps the rule that
        // every spare page is an empty table.
        unsafe { page_table.as_ptr().write(Table::EMPTY) };
        let live = self.live.get_mut();
        *live = live.saturating_sub(1);
        let spare = self.spare.get_mut();
        if spare.try_reserve(1).is_ok() {
            spare.push(page_table);
        } else {
            Self::free_page(page_table);
        }
    }

    #[expect(
        clippy::expect_used,
        reason = "a zero table address can only come from corrupted secure memory, never from input"
    )]
    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<Table> {
        // Identity addressing (see the type's documentation); the provenance was exposed when
        // the page was handed out.
        NonNull::new(core::ptr::with_exposed_provenance_mut::<Table>(pa.0))
            .expect("translation table at physical address 0")
    }
}

impl Drop for TablePagePool {
    fn drop(&mut self) {
        self.shrink_spare(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, RootTable, VaRange};

    #[test]
    fn reserve_respects_capacity() {
        let pool = TablePagePool::new(3);
        pool.reserve(2).unwrap();
        assert_eq!(pool.stats().spare, 2);
        assert_eq!(
            pool.reserve(4),
            Err(TablePoolError::Exhausted {
                needed: 4,
                available: 3
            })
        );
        pool.reserve(3).unwrap();
        assert_eq!(pool.stats().spare, 3);
        pool.shrink_spare(1);
        assert_eq!(pool.stats().spare, 1);
    }

    #[test]
    fn tables_come_from_the_reservation_and_return_zeroed() {
        let pool = TablePagePool::new(8);
        pool.reserve(3).unwrap();
        let mut root = RootTable::with_va_range(pool, 1, El1And0, VaRange::Lower);
        let region = MemoryRegion::new(0x4000_0000, 0x4000_1000);
        let flags = El1Attributes::VALID | El1Attributes::ACCESSED;
        root.map_range(
            &region,
            PhysicalAddress(0x8000_0000),
            flags,
            Constraints::NO_BLOCK_MAPPINGS,
        )
        .unwrap();
        let stats = root.translation().stats();
        assert_eq!(
            (stats.live, stats.spare, stats.unreserved_allocations),
            (3, 0, 0)
        );
        let mut found = None;
        root.walk_range(&region, &mut |_, d, level| {
            if level == 3 {
                found = Some(d.output_address());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(found, Some(PhysicalAddress(0x8000_0000)));
        // Unmapping the whole 2 MiB and 1 GiB ranges frees the two subtables back to the pool.
        root.map_range(
            &MemoryRegion::new(0x4000_0000, 0x8000_0000),
            PhysicalAddress(0),
            El1Attributes::empty(),
            Constraints::NO_BLOCK_MAPPINGS,
        )
        .unwrap();
        let stats = root.translation().stats();
        assert_eq!((stats.live, stats.spare), (1, 2));
    }

    #[test]
    fn allocation_without_reservation_is_counted() {
        let pool = TablePagePool::new(8);
        let root = RootTable::with_va_range(pool, 1, El1And0, VaRange::Lower);
        assert_eq!(root.translation().stats().unreserved_allocations, 1);
    }
}
