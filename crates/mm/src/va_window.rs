//! The VA window allocator: hands out page-granular virtual ranges of the dynamic SHM window.
//!
//! Two ordered trees hold the free space, one by address (to merge a freed range with its
//! neighbours) and one by (size, address) (to find the smallest run that fits), so alloc and free
//! cost O(log n) in the number of live ranges, where OP-TEE's `tee_mm` scans a list. A third tree
//! holds the live allocations, so freeing an unknown or already-freed range is an error and never
//! corrupts the free space.

use crate::addr::{PAGE_SIZE, VirtAddr, VirtPages};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// How many too-small-to-be-sure free runs an aligned allocation examines before it takes a run
/// that fits whatever its alignment (see [`VaWindow::alloc`]).
pub const ALIGNED_SCAN_LIMIT: usize = 64;

/// Where the window lies and how ranges are placed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaWindowConfig {
    /// First address of the window (4 KiB aligned).
    pub base: VirtAddr,
    /// Size of the window in bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// Unmapped pages kept after every range, so an overrun faults instead of reaching the next
    /// buffer.
    pub guard_pages: u64,
}

/// What went wrong in the VA window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VaWindowError {
    /// The configuration is unusable.
    #[error("bad VA window configuration: base {base:#x}, size {size:#x}")]
    BadConfig {
        /// Configured base.
        base: u64,
        /// Configured size.
        size: u64,
    },
    /// An allocation of zero pages.
    #[error("allocation of zero pages")]
    ZeroSize,
    /// Alignment is not a power of two multiple of 4 KiB.
    #[error("alignment {0:#x} is not a power of two of at least 4 KiB")]
    BadAlignment(u64),
    /// No free run can hold the request.
    #[error(
        "no room for {pages} pages (+{guard} guard) aligned to {align:#x}; largest free run is {largest_free} pages"
    )]
    NoSpace {
        /// Pages asked for.
        pages: u64,
        /// Guard pages added.
        guard: u64,
        /// Alignment in bytes.
        align: u64,
        /// Largest free run, in pages.
        largest_free: u64,
    },
    /// `free` of an address that starts no live range (never allocated or already freed).
    #[error("no live range starts at {0:#x}")]
    UnknownRange(u64),
}

/// A live allocation: `pages` usable pages followed by the guard pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allocation {
    pages: u64,
    reserved: u64,
}

/// The allocator. All positions are page numbers relative to the window base.
#[derive(Debug, Clone)]
pub struct VaWindow {
    config: VaWindowConfig,
    total_pages: u64,
    free_by_start: BTreeMap<u64, u64>,
    free_by_size: BTreeSet<(u64, u64)>,
    live: BTreeMap<u64, Allocation>,
    live_pages: u64,
}

impl VaWindow {
    /// An empty window.
    ///
    /// # Errors
    /// [`VaWindowError::BadConfig`] if the base or size is not page aligned, the size is 0, or the
    /// window would pass the top of the address space.
    pub fn new(config: VaWindowConfig) -> Result<Self, VaWindowError> {
        let bad = VaWindowError::BadConfig {
            base: config.base.get(),
            size: config.size,
        };
        if !config.base.is_page_aligned() || config.size == 0 || config.size % PAGE_SIZE != 0 {
            return Err(bad);
        }
        let total_pages = config.size / PAGE_SIZE;
        VirtPages::new(config.base, total_pages).map_err(|_| bad)?;
        let mut window = Self {
            config,
            total_pages,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            live: BTreeMap::new(),
            live_pages: 0,
        };
        window.insert_free(0, total_pages);
        Ok(window)
    }

    /// The configuration the window was built with.
    pub fn config(&self) -> VaWindowConfig {
        self.config
    }

    /// Allocates `pages` pages whose first address is a multiple of `align` bytes.
    ///
    /// Picks the smallest free run that fits (lowest address among equals). With an alignment
    /// above 4 KiB a run of `pages + align/4K - 1` pages always fits; smaller runs fit only if
    /// their start happens to suit, and up to [`ALIGNED_SCAN_LIMIT`] of them are tried first, so
    /// the cost stays O(log n). Guard pages follow the range inside the window.
    ///
    /// # Errors
    /// [`VaWindowError::ZeroSize`], [`VaWindowError::BadAlignment`], [`VaWindowError::NoSpace`].
    pub fn alloc(&mut self, pages: u64, align: u64) -> Result<VirtPages, VaWindowError> {
        if pages == 0 {
            return Err(VaWindowError::ZeroSize);
        }
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(VaWindowError::BadAlignment(align));
        }
        let guard = self.config.guard_pages;
        // Built only on failure: the largest free run costs a tree lookup.
        let no_space = |window: &Self| VaWindowError::NoSpace {
            pages,
            guard,
            align,
            largest_free: window.largest_free_run(),
        };
        let need = pages.checked_add(guard).ok_or_else(|| no_space(self))?;
        // Alignment relative to the window base; the base itself may be less aligned.
        let align_pages = align / PAGE_SIZE;
        let base_pfn = self.config.base.page_number();
        let (run_start, run_len, at) = self
            .find_fit(need, align_pages, base_pfn)
            .ok_or_else(|| no_space(self))?;
        self.remove_free(run_start, run_len);
        let head = at - run_start;
        let tail = run_len - head - need;
        if head > 0 {
            self.insert_free(run_start, head);
        }
        if tail > 0 {
            self.insert_free(at + need, tail);
        }
        self.live.insert(
            at,
            Allocation {
                pages,
                reserved: need,
            },
        );
        self.live_pages += need;
        self.range_of(at, pages).ok_or_else(|| no_space(self))
    }

    /// Frees the live range that starts at `start`, merging it with free neighbours.
    ///
    /// # Errors
    /// [`VaWindowError::UnknownRange`] if no live range starts there; nothing changes then.
    pub fn free(&mut self, start: VirtAddr) -> Result<VirtPages, VaWindowError> {
        let unknown = VaWindowError::UnknownRange(start.get());
        let offset = self.page_index(start).ok_or(unknown)?;
        let allocation = self.live.remove(&offset).ok_or(unknown)?;
        self.live_pages -= allocation.reserved;
        let mut free_start = offset;
        let mut free_len = allocation.reserved;
        if let Some((&prev_start, &prev_len)) = self.free_by_start.range(..offset).next_back() {
            if prev_start + prev_len == offset {
                self.remove_free(prev_start, prev_len);
                free_start = prev_start;
                free_len += prev_len;
            }
        }
        let after = offset + allocation.reserved;
        if let Some(&next_len) = self.free_by_start.get(&after) {
            self.remove_free(after, next_len);
            free_len += next_len;
        }
        self.insert_free(free_start, free_len);
        self.range_of(offset, allocation.pages).ok_or(unknown)
    }

    /// The live range holding `va`, if any (guard pages belong to no range).
    pub fn range_containing(&self, va: VirtAddr) -> Option<VirtPages> {
        let index = self.page_index(va.page_base())?;
        let (&start, allocation) = self.live.range(..=index).next_back()?;
        let range = self.range_of(start, allocation.pages)?;
        range.contains(va).then_some(range)
    }

    /// Whether `va` lies inside the window.
    pub fn contains(&self, va: VirtAddr) -> bool {
        self.page_index(va.page_base()).is_some()
    }

    /// Live ranges in address order.
    pub fn live_ranges(&self) -> impl Iterator<Item = VirtPages> + '_ {
        self.live
            .iter()
            .filter_map(|(&start, a)| self.range_of(start, a.pages))
    }

    /// Number of live ranges.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Pages of the window not held by a live range or its guard.
    pub fn free_pages(&self) -> u64 {
        self.total_pages - self.live_pages
    }

    /// The largest free run, in pages.
    pub fn largest_free_run(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(len, _)| len)
    }

    /// The whole window as a page range.
    pub fn window(&self) -> Option<VirtPages> {
        VirtPages::new(self.config.base, self.total_pages).ok()
    }

    /// Checks the allocator's own bookkeeping and returns every inconsistency found.
    ///
    /// Both free trees hold the same runs; free runs never touch (they are merged); free and live
    /// ranges never overlap, lie inside the window, and together cover it exactly.
    pub fn check(&self) -> Vec<alloc::string::String> {
        use alloc::format;
        let mut problems = Vec::new();
        if self.free_by_start.len() != self.free_by_size.len() {
            problems.push(format!(
                "free trees disagree: {} runs by address, {} by size",
                self.free_by_start.len(),
                self.free_by_size.len()
            ));
        }
        for (&start, &len) in &self.free_by_start {
            if !self.free_by_size.contains(&(len, start)) {
                problems.push(format!("free run {start}+{len} missing from the size tree"));
            }
        }
        // Merge both kinds of runs in address order and walk them.
        let mut runs: Vec<(u64, u64, bool)> = self
            .free_by_start
            .iter()
            .map(|(&s, &l)| (s, l, true))
            .chain(self.live.iter().map(|(&s, a)| (s, a.reserved, false)))
            .collect();
        runs.sort_unstable();
        let mut expected = 0u64;
        let mut previous_free = false;
        let mut live_pages = 0u64;
        for (start, len, is_free) in runs {
            if len == 0 {
                problems.push(format!("empty run at page {start}"));
            }
            if start != expected {
                problems.push(format!(
                    "run at page {start} but the previous run ended at page {expected}"
                ));
            }
            if is_free && previous_free && start == expected {
                problems.push(format!(
                    "free run at page {start} not merged with its predecessor"
                ));
            }
            if !is_free {
                live_pages += len;
            }
            previous_free = is_free;
            expected = start.saturating_add(len);
        }
        if expected != self.total_pages {
            problems.push(format!(
                "runs end at page {expected}, window has {} pages",
                self.total_pages
            ));
        }
        if live_pages != self.live_pages {
            problems.push(format!(
                "live page counter {} but live runs hold {live_pages}",
                self.live_pages
            ));
        }
        problems
    }

    fn find_fit(&self, need: u64, align_pages: u64, base_pfn: u64) -> Option<(u64, u64, u64)> {
        let aligned_start = |start: u64| -> Option<u64> {
            let absolute = base_pfn.checked_add(start)?;
            let rounded = absolute.checked_next_multiple_of(align_pages)?;
            Some(rounded - base_pfn)
        };
        let fits = |start: u64, len: u64| -> Option<u64> {
            let at = aligned_start(start)?;
            (at - start).checked_add(need).filter(|&used| used <= len)?;
            Some(at)
        };
        if align_pages > 1 {
            let sure = need.checked_add(align_pages - 1)?;
            for &(len, start) in self
                .free_by_size
                .range((need, 0)..(sure, 0))
                .take(ALIGNED_SCAN_LIMIT)
            {
                if let Some(at) = fits(start, len) {
                    return Some((start, len, at));
                }
            }
            let &(len, start) = self.free_by_size.range((sure, 0)..).next()?;
            return fits(start, len).map(|at| (start, len, at));
        }
        let &(len, start) = self.free_by_size.range((need, 0)..).next()?;
        Some((start, len, start))
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.free_by_start.insert(start, len);
        self.free_by_size.insert((len, start));
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        self.free_by_start.remove(&start);
        self.free_by_size.remove(&(len, start));
    }

    fn page_index(&self, va: VirtAddr) -> Option<u64> {
        if !va.is_page_aligned() {
            return None;
        }
        let offset = va.get().checked_sub(self.config.base.get())? / PAGE_SIZE;
        (offset < self.total_pages).then_some(offset)
    }

    fn range_of(&self, index: u64, pages: u64) -> Option<VirtPages> {
        let start = self.config.base.checked_add_pages(index)?;
        VirtPages::new(start, pages).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: u64 = 0x8000_0000;

    fn window(pages: u64, guard_pages: u64) -> VaWindow {
        VaWindow::new(VaWindowConfig {
            base: VirtAddr(BASE),
            size: pages * PAGE_SIZE,
            guard_pages,
        })
        .unwrap()
    }

    #[test]
    fn config_is_checked() {
        for (base, size) in [
            (0x1001, 0x1000),
            (0x1000, 0),
            (0x1000, 0x1800),
            (!0xfff, 0x2000),
        ] {
            assert_eq!(
                VaWindow::new(VaWindowConfig {
                    base: VirtAddr(base),
                    size,
                    guard_pages: 0
                })
                .unwrap_err(),
                VaWindowError::BadConfig { base, size }
            );
        }
    }

    #[test]
    fn best_fit_and_merge() {
        let mut w = window(16, 0);
        let a = w.alloc(4, PAGE_SIZE).unwrap();
        let b = w.alloc(2, PAGE_SIZE).unwrap();
        let c = w.alloc(4, PAGE_SIZE).unwrap();
        assert_eq!(a.start(), VirtAddr(BASE));
        assert_eq!(b.start(), VirtAddr(BASE + 4 * PAGE_SIZE));
        w.free(b.start()).unwrap();
        // A 2-page hole and a 6-page tail: a 2-page request takes the hole (best fit).
        let d = w.alloc(2, PAGE_SIZE).unwrap();
        assert_eq!(d.start(), b.start());
        w.free(a.start()).unwrap();
        w.free(c.start()).unwrap();
        w.free(d.start()).unwrap();
        assert!(w.check().is_empty(), "{:?}", w.check());
        assert_eq!(w.largest_free_run(), 16);
        assert_eq!(w.live_count(), 0);
    }

    #[test]
    fn double_and_unknown_free_are_errors() {
        let mut w = window(8, 0);
        let a = w.alloc(2, PAGE_SIZE).unwrap();
        w.free(a.start()).unwrap();
        assert_eq!(w.free(a.start()), Err(VaWindowError::UnknownRange(BASE)));
        assert_eq!(
            w.free(VirtAddr(BASE + 0x800)),
            Err(VaWindowError::UnknownRange(BASE + 0x800))
        );
        assert_eq!(w.free(VirtAddr(0)), Err(VaWindowError::UnknownRange(0)));
        let b = w.alloc(3, PAGE_SIZE).unwrap();
        // The middle of a live range is not its start.
        assert!(w.free(VirtAddr(b.start().get() + PAGE_SIZE)).is_err());
        assert!(w.check().is_empty());
        assert_eq!(w.free_pages(), 5);
    }

    #[test]
    fn guard_pages_separate_ranges() {
        let mut w = window(8, 1);
        let a = w.alloc(2, PAGE_SIZE).unwrap();
        let b = w.alloc(2, PAGE_SIZE).unwrap();
        assert_eq!(b.start().get(), a.end().get() + PAGE_SIZE);
        assert_eq!(
            w.range_containing(a.end()),
            None,
            "the guard page belongs to nobody"
        );
        assert_eq!(w.free_pages(), 2);
        assert!(matches!(
            w.alloc(2, PAGE_SIZE),
            Err(VaWindowError::NoSpace {
                largest_free: 2,
                ..
            })
        ));
        w.alloc(1, PAGE_SIZE).unwrap();
    }

    #[test]
    fn alignment() {
        let mut w = window(64, 0);
        w.alloc(1, PAGE_SIZE).unwrap();
        let big = w.alloc(4, 16 * PAGE_SIZE).unwrap();
        assert_eq!(big.start().get() % (16 * PAGE_SIZE), 0);
        assert_eq!(
            w.alloc(1, 3 * PAGE_SIZE),
            Err(VaWindowError::BadAlignment(3 * PAGE_SIZE))
        );
        assert_eq!(w.alloc(1, 0x800), Err(VaWindowError::BadAlignment(0x800)));
        assert_eq!(w.alloc(0, PAGE_SIZE), Err(VaWindowError::ZeroSize));
        assert!(w.check().is_empty());
    }

    #[test]
    fn huge_requests_fail_cleanly() {
        let mut w = window(8, 1);
        assert!(matches!(
            w.alloc(u64::MAX, PAGE_SIZE),
            Err(VaWindowError::NoSpace { .. })
        ));
        assert!(matches!(
            w.alloc(5, 1 << 63),
            Err(VaWindowError::NoSpace { .. })
        ));
        assert!(w.check().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { pages: u64, align_shift: u32 },
        Free { pick: usize },
        FreeBogus { page: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..12, 0u32..4).prop_map(|(pages, align_shift)| Op::Alloc { pages, align_shift }),
            2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
            1 => (0u64..80).prop_map(|page| Op::FreeBogus { page }),
        ]
    }

    proptest! {
        /// Against a model that keeps one flag per page: every allocation lands on free pages with
        /// the right alignment, fails only when no suitable run exists, and bookkeeping stays sound.
        #[test]
        fn matches_page_flag_model(ops in proptest::collection::vec(op(), 1..200), guard in 0u64..2) {
            const PAGES: u64 = 64;
            let mut w = window(PAGES, guard);
            let mut used = [false; PAGES as usize];
            let mut live: Vec<(VirtPages, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc { pages, align_shift } => {
                        let align = PAGE_SIZE << align_shift;
                        let need = pages + guard;
                        let a = 1u64 << align_shift;
                        let model_fits = (0..PAGES).filter(|s| (BASE / PAGE_SIZE + s) % a == 0).any(|s| {
                            s + need <= PAGES && (s..s + need).all(|p| !used[p as usize])
                        });
                        match w.alloc(pages, align) {
                            Ok(r) => {
                                let s = (r.start().get() - BASE) / PAGE_SIZE;
                                prop_assert_eq!(r.pages(), pages);
                                prop_assert_eq!(r.start().get() % align, 0);
                                for p in s..s + need {
                                    prop_assert!(p < PAGES && !used[p as usize]);
                                    used[p as usize] = true;
                                }
                                live.push((r, need));
                            }
                            Err(VaWindowError::NoSpace { .. }) => prop_assert!(!model_fits),
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    }
                    Op::Free { pick } => {
                        if live.is_empty() { continue; }
                        let (r, need) = live.swap_remove(pick % live.len());
                        prop_assert_eq!(w.free(r.start()), Ok(r));
                        let s = (r.start().get() - BASE) / PAGE_SIZE;
                        for p in s..s + need { used[p as usize] = false; }
                        prop_assert_eq!(w.free(r.start()), Err(VaWindowError::UnknownRange(r.start().get())));
                    }
                    Op::FreeBogus { page } => {
                        let va = VirtAddr(BASE + page * PAGE_SIZE);
                        if !live.iter().any(|(r, _)| r.start() == va) {
                            prop_assert_eq!(w.free(va), Err(VaWindowError::UnknownRange(va.get())));
                        }
                    }
                }
                prop_assert!(w.check().is_empty(), "{:?}", w.check());
                prop_assert_eq!(w.free_pages(), used.iter().filter(|u| !**u).count() as u64);
                prop_assert_eq!(w.live_count(), live.len());
            }
        }
    }
}
