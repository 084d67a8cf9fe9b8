//! The client of the static (reserved) SHM pool that `GET_SHM_CONFIG` reports.
//!
//! An old OP-TEE without dynamic SHM accepts memory only inside its carve-out, so a driver that
//! finds one hands out every buffer the TEE sees from it, as Linux's reserved-memory pool does.
//! The allocator is a first-fit free list of page runs with coalescing: the pool is small (a few
//! MiB) and allocations are few, so simplicity wins over speed here.

use alloc::collections::BTreeMap;

use crate::ram::PAGE_SIZE;

/// The static pool's range and its allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPool {
    base: u64,
    pages: u64,
    /// Free runs: first page index → length in pages; never adjacent (always coalesced).
    free: BTreeMap<u64, u64>,
    /// Allocated runs: first page index → length, so a free names only what was handed out.
    used: BTreeMap<u64, u64>,
}

impl StaticPool {
    /// A pool over `size` bytes at `pa`, shrunk inward to whole pages; `None` when no whole page
    /// remains (a pool the driver cannot use).
    pub fn new(pa: u64, size: u64) -> Option<Self> {
        let base = pa.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
        let end = pa.checked_add(size)? & !(PAGE_SIZE - 1);
        let pages = end.checked_sub(base)? / PAGE_SIZE;
        if pages == 0 {
            return None;
        }
        let mut free = BTreeMap::new();
        free.insert(0, pages);
        Some(Self {
            base,
            pages,
            free,
            used: BTreeMap::new(),
        })
    }

    /// First address of the pool.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size of the pool in bytes.
    pub fn size(&self) -> u64 {
        self.pages * PAGE_SIZE
    }

    /// Whether `size` bytes at `pa` lie inside the pool.
    pub fn contains(&self, pa: u64, size: u64) -> bool {
        pa >= self.base
            && pa
                .checked_add(size)
                .is_some_and(|end| end <= self.base + self.size())
    }

    /// Pages currently handed out (for leak checks).
    pub fn pages_in_use(&self) -> u64 {
        self.used.values().sum()
    }

    /// `n` contiguous pages (first fit); returns the address of the first.
    pub fn alloc(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let (&start, &len) = self.free.iter().find(|&(_, &len)| len >= n)?;
        self.free.remove(&start);
        if len > n {
            self.free.insert(start + n, len - n);
        }
        self.used.insert(start, n);
        Some(self.base + start * PAGE_SIZE)
    }

    /// Gives back the run that starts at `pa`; returns its length in pages, or `None` (and changes
    /// nothing) if no run starts there.
    pub fn free(&mut self, pa: u64) -> Option<u64> {
        let index = pa.checked_sub(self.base)?;
        if index % PAGE_SIZE != 0 {
            return None;
        }
        let mut start = index / PAGE_SIZE;
        let mut len = self.used.remove(&start)?;
        let n = len;
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_to_whole_pages() {
        let p = StaticPool::new(0x1000_0800, 0x3000).unwrap();
        assert_eq!((p.base(), p.size()), (0x1000_1000, 0x2000));
        assert!(StaticPool::new(0x1000_0800, 0x1000).is_none());
        assert!(StaticPool::new(u64::MAX - 10, 0x3000).is_none());
        assert!(p.contains(0x1000_1000, 0x2000));
        assert!(!p.contains(0x1000_1000, 0x2001));
        assert!(!p.contains(0x1000_0fff, 1));
    }

    #[test]
    fn first_fit_and_coalescing() {
        let mut p = StaticPool::new(0x10_0000, 8 * PAGE_SIZE).unwrap();
        let a = p.alloc(3).unwrap();
        let b = p.alloc(2).unwrap();
        let c = p.alloc(3).unwrap();
        assert_eq!((a, b, c), (0x10_0000, 0x10_3000, 0x10_5000));
        assert_eq!(p.alloc(1), None);
        assert_eq!(p.pages_in_use(), 8);
        assert_eq!(p.free(b + 1), None);
        assert_eq!(p.free(b), Some(2));
        assert_eq!(p.free(b), None);
        assert_eq!(p.alloc(3), None);
        assert_eq!(p.free(a), Some(3));
        // a and b coalesced: 5 pages at the start.
        assert_eq!(p.alloc(5), Some(0x10_0000));
        assert_eq!(p.free(0x10_0000), Some(5));
        assert_eq!(p.free(c), Some(3));
        assert_eq!(p.pages_in_use(), 0);
        assert_eq!(p.alloc(8), Some(0x10_0000));
        assert_eq!(p.alloc(0), None);
    }
}
