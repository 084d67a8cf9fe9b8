//! The peers every figure is measured beside: hand-written models of what OP-TEE does, kept
//! simple and honest (each says where it is generous to OP-TEE).

use teeshm_abi::page_list::ENTRIES_PER_LIST_PAGE;
use teeshm_testkit::{NS_RAM, PhysMemory};

const PAGE: u64 = 4096;

/// A model of OP-TEE's `tee_mm` allocator (core/mm/tee_mm.c, read at optee_os commit
/// 5f76bc75f7a0f5e906fed575c01e1c410d19fb85, the last to change it in the snapshot of
/// d5001fe0af66a4c059dc6816a7be08d7fb83ff1a), written in Rust from its algorithm:
///
/// - the pool is a singly linked list of the allocated areas sorted by offset, behind a
///   sentinel entry of offset 0 and size 0 (`pool->entry`);
/// - `tee_mm_alloc` allocates the new entry on the heap first (`malloc_flags`, before the pool
///   lock), then walks from the sentinel while the request does not fit the gap between an
///   entry's end and the next entry's start (first fit), checks the space after the last entry
///   if it reached the end, and links the new entry in after the one it stopped at;
/// - `tee_mm_free` walks from the sentinel to the entry (compared by identity), unlinks it and
///   frees it.
///
/// The pool's `TEE_MM_POOL_HI_ALLOC` mode and statistics are not modelled (the SHM VA pool,
/// `core_virt_shm_pool`, uses neither). Offsets and sizes are in pages (`shift` 12).
pub struct TeeMm {
    sentinel: TeeMmEntry,
    size: u64,
}

/// One allocated area (`tee_mm_entry_t`).
pub struct TeeMmEntry {
    offset: u64,
    size: u64,
    next: Option<Box<TeeMmEntry>>,
}

/// What `tee_mm_alloc` returns: the entry, kept by the caller (as OP-TEE's `mobj_reg_shm`
/// keeps `r->mm`) and given back to `tee_mm_free`. Only compared, never dereferenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeeMmHandle {
    entry: *const TeeMmEntry,
    /// The area's first page.
    pub offset: u64,
}

impl TeeMm {
    /// An empty pool of `size` pages (`tee_mm_init`).
    pub fn new(size: u64) -> Self {
        Self {
            sentinel: TeeMmEntry {
                offset: 0,
                size: 0,
                next: None,
            },
            size,
        }
    }

    /// A pool already holding `areas` (offset, size), sorted by offset and not overlapping:
    /// builds in O(n) the list `tee_mm_alloc` would take O(n²) to build.
    pub fn with_areas(size: u64, areas: impl DoubleEndedIterator<Item = (u64, u64)>) -> Self {
        let mut pool = Self::new(size);
        for (offset, len) in areas.rev() {
            let next = pool.sentinel.next.take();
            pool.sentinel.next = Some(Box::new(TeeMmEntry {
                offset,
                size: len,
                next,
            }));
        }
        pool
    }

    /// The handles of the areas, in address order (what the callers of `tee_mm_alloc` hold).
    pub fn handles(&self) -> Vec<TeeMmHandle> {
        let mut out = Vec::new();
        let mut entry = self.sentinel.next.as_deref();
        while let Some(e) = entry {
            out.push(TeeMmHandle {
                entry: e,
                offset: e.offset,
            });
            entry = e.next.as_deref();
        }
        out
    }

    /// `tee_mm_alloc` of `psize` pages: first fit from the pool's start.
    pub fn alloc(&mut self, psize: u64) -> Option<TeeMmHandle> {
        // malloc_flags(.., sizeof(tee_mm_entry_t)) before the lock.
        let mut nn = Box::new(TeeMmEntry {
            offset: 0,
            size: 0,
            next: None,
        });
        let mut entry = &mut self.sentinel;
        while let Some(next) = entry.next.as_deref() {
            if psize <= next.offset - entry.size - entry.offset {
                break;
            }
            entry = entry.next.as_deref_mut()?;
        }
        if entry.next.is_none() && self.size - (entry.offset + entry.size) < psize {
            return None; // the entry is freed (free_flags) on the way out
        }
        nn.offset = entry.offset + entry.size;
        nn.size = psize;
        nn.next = entry.next.take();
        let handle = TeeMmHandle {
            entry: &*nn,
            offset: nn.offset,
        };
        entry.next = Some(nn);
        Some(handle)
    }

    /// `tee_mm_free`: walks to the entry, unlinks and frees it; false where OP-TEE panics
    /// ("invalid mm_entry").
    pub fn free(&mut self, handle: TeeMmHandle) -> bool {
        let mut entry = &mut self.sentinel;
        loop {
            match entry.next.as_deref() {
                Some(next) if std::ptr::eq(next, handle.entry) => break,
                Some(_) => {}
                None => return false,
            }
            let Some(next) = entry.next.as_deref_mut() else {
                return false;
            };
            entry = next;
        }
        let Some(mut found) = entry.next.take() else {
            return false;
        };
        entry.next = found.next.take();
        drop(found);
        true
    }
}

impl Drop for TeeMm {
    /// Unlinks iteratively: a recursive drop of a 200 000-entry list would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.sentinel.next.take();
        while let Some(mut entry) = next {
            next = entry.next.take();
        }
    }
}

/// One registered buffer in the model: OP-TEE's `struct mobj_reg_shm` (core/mm/mobj_dyn_shm.c)
/// reduced to what registration touches: the list link, the cookie, the offset and size, and
/// the page array of 8 bytes a page (`paddr_t pages[]`). Kept, not read, as OP-TEE keeps them.
#[allow(dead_code)]
struct OpteeRegShm {
    next: Option<Box<OpteeRegShm>>,
    cookie: u64,
    page_offset: u64,
    size: u64,
    pages: Box<[u64]>,
}

/// A hand-written model of how OP-TEE registers a buffer, kept simple and honest:
///
/// 1. `msg_param_extract_pages`: the page list is read, one list page at a time, into a
///    temporary array of 8 bytes a page (each list page read once, only the bytes needed, from
///    the same simulated memory the teeshm side reads; the model does not map the list pages,
///    which OP-TEE does with `core_mmu_add_mapping` — in the model's favour);
/// 2. `mobj_reg_shm_alloc`: every page is checked against a linear list of non-secure memory
///    ranges (`core_pbuf_is(CORE_MEM_NON_SEC, ..)`; here the simulated machine's one NS RAM
///    range, the same memory map teeshm uses); the object is allocated and the page array
///    copied into it;
/// 3. the registered objects form a singly linked list (`reg_shm_list`): it is scanned for a
///    duplicate cookie (as `mobj_reg_shm_get_by_cookie` scans it), then the object is pushed
///    at its head.
///
/// It has none of the SMC front end (arg copy, thread, quotas): it is a lower bound on
/// OP-TEE's cost of the same work.
pub struct OpteeModel {
    head: Option<Box<OpteeRegShm>>,
    nsec_ddr: Vec<(u64, u64)>,
}

impl Default for OpteeModel {
    fn default() -> Self {
        Self::new()
    }
}

impl OpteeModel {
    /// An empty registry over the simulated machine's NS RAM.
    pub fn new() -> Self {
        Self {
            head: None,
            nsec_ddr: vec![NS_RAM],
        }
    }

    /// Registers the list at `buf_ptr` like OP-TEE; false where OP-TEE refuses.
    pub fn register(&mut self, mem: &PhysMemory, buf_ptr: u64, size: u64, cookie: u64) -> bool {
        let offset = buf_ptr & (PAGE - 1);
        let count = (offset + size).div_ceil(PAGE) as usize;
        // 1. The page list into a temporary array.
        let mut pages: Vec<u64> = Vec::with_capacity(count);
        let mut list = buf_ptr & !(PAGE - 1);
        let mut raw = [0u8; PAGE as usize];
        loop {
            let remaining = count - pages.len();
            let here = remaining.min(ENTRIES_PER_LIST_PAGE);
            let more = remaining > here;
            let len = if more { PAGE as usize } else { here * 8 };
            mem.read(list, &mut raw[..len]);
            for entry in raw[..here * 8].chunks_exact(8) {
                let pa = u64::from_le_bytes(entry.try_into().unwrap());
                if pa & (PAGE - 1) != 0 {
                    return false;
                }
                pages.push(pa);
            }
            if !more {
                break;
            }
            list = u64::from_le_bytes(raw[ENTRIES_PER_LIST_PAGE * 8..].try_into().unwrap());
        }
        // 2. Every page non-secure (linear range list), then the object with its own copy.
        for &pa in &pages {
            let ok = self
                .nsec_ddr
                .iter()
                .any(|&(start, len)| pa >= start && pa + PAGE <= start + len);
            if !ok {
                return false;
            }
        }
        // 3. Duplicate cookie scan of the list, then push at the head.
        let mut cursor = &self.head;
        while let Some(node) = cursor {
            if node.cookie == cookie {
                return false;
            }
            cursor = &node.next;
        }
        let node = Box::new(OpteeRegShm {
            next: self.head.take(),
            cookie,
            page_offset: offset,
            size,
            pages: pages.as_slice().into(),
        });
        drop(pages);
        self.head = Some(node);
        true
    }

    /// Unregisters `cookie`.
    pub fn unregister(&mut self, cookie: u64) -> bool {
        let mut cursor = &mut self.head;
        loop {
            match cursor {
                Some(node) if node.cookie == cookie => {
                    let next = node.next.take();
                    *cursor = next;
                    return true;
                }
                Some(node) => cursor = &mut node.next,
                None => return false,
            }
        }
    }

    /// Secure bytes one registered object of `pages` pages keeps in the model.
    pub fn object_bytes(pages: u64) -> u64 {
        size_of::<OpteeRegShm>() as u64 + 8 * pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First fit from the pool's start, the new entry linked in after the gap's left entry;
    /// free by identity; the pool end checked.
    #[test]
    fn tee_mm_model_is_first_fit_over_a_sorted_list() {
        let mut pool = TeeMm::new(16);
        let a = pool.alloc(4).unwrap();
        let b = pool.alloc(2).unwrap();
        let c = pool.alloc(4).unwrap();
        assert_eq!((a.offset, b.offset, c.offset), (0, 4, 6));
        assert!(pool.free(b));
        assert!(!pool.free(b), "an entry is freed once");
        // A 2-page gap at 4 and 6 free pages at 10: a 1-page request takes the first gap.
        assert_eq!(pool.alloc(1).unwrap().offset, 4);
        assert_eq!(pool.alloc(3).unwrap().offset, 10);
        assert_eq!(pool.alloc(4), None, "3 pages left at the end");
        assert_eq!(pool.alloc(3).unwrap().offset, 13);
        let offsets: Vec<u64> = pool.handles().iter().map(|h| h.offset).collect();
        assert_eq!(offsets, [0, 4, 6, 10, 13]);
        let built = TeeMm::with_areas(16, [(0, 4), (6, 4)].into_iter());
        assert_eq!(
            built.handles().iter().map(|h| h.offset).collect::<Vec<_>>(),
            [0, 6]
        );
    }
}
