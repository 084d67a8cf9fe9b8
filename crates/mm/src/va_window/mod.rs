//! The VA window allocator: hands out page-granular virtual ranges of the dynamic SHM window.
//!
//! A two-level segregated fit (TLSF) over page runs, with every piece of bookkeeping in side
//! tables sized once, when the window is built, from the window's size — so `alloc` and `free`
//! never allocate, and each costs O(1) plus at most one bitmap search of O(log₆₄ n) (4 words
//! for a 4 GiB window):
//!
//! - **Boundary tags** (`tags`, one `u32` a page): the first page of every run, free or live,
//!   holds its length and whether it is free; the last page of a free run holds the run's first
//!   page, the last page of a live range `LIVE_END`. Freeing a range reads the tag before it and
//!   the tag after it and merges with free neighbours in O(1), where OP-TEE's `tee_mm` walks a
//!   list.
//! - **Segregated free lists**: every length below 64 pages has a class of its own (so a small
//!   request gets an exact best fit), longer runs 16 classes per power of two. A free run of 4
//!   pages or more is a node of its class's doubly linked list (latest freed first), its two
//!   links kept in the tags of its own second and third pages. A free run of 1 to 3 pages, too
//!   short to hold links, is its class's head if it is the latest freed, else a bit in one of
//!   three page bitmaps. A two-level bitmap of the non-empty classes finds the smallest class
//!   that surely fits with two bit scans.
//! - **The top run**: the free run that reaches the window's end is in no class. A request that
//!   no listed run fits is cut from its start, and a range freed next to it joins it, by one
//!   comparison; so a window that fills from the bottom allocates and frees at its frontier with
//!   no list operation at all.
//! - **Live starts** (a page bitmap): exactly the first pages of live ranges, so freeing an
//!   unknown or already-freed address is an error that changes nothing, and `range_containing`
//!   is a previous-set-bit search.
//!
//! Memory: 4 bytes a window page for the tags and 4 bits a page for the bitmaps (with their
//! summary levels): 4.5 MiB for a 4 GiB window, 38 KiB for OP-TEE's 32 MiB one
//! ([`VaWindow::side_table_bytes`]).

mod bitmap;
mod check;
mod classes;
#[cfg(test)]
mod tests;

use crate::addr::{PAGE_SIZE, VirtAddr, VirtPages};
use alloc::vec;
use alloc::vec::Vec;
use bitmap::PageBitmap;

/// How many too-small-to-be-sure free runs an aligned allocation examines before it takes a run
/// that fits whatever its alignment (see [`VaWindow::alloc`]); also how many runs of its own
/// size class a large request examines when no larger class holds a run.
pub const ALIGNED_SCAN_LIMIT: usize = 64;

/// The largest window, in pages, the side tables index (2 TiB of 4 KiB pages).
pub const MAX_WINDOW_PAGES: u64 = 1 << 29;

/// Tag bit: this page starts a run (free or live).
const HEAD: u32 = 1 << 31;
/// Tag bit (on a head): the run is free.
const FREE: u32 = 1 << 30;
/// Tag of the last page of a live range of 2 pages or more (not a page number: those are
/// below `MAX_WINDOW_PAGES`).
const LIVE_END: u32 = 1 << 29;
/// Tag bits (on a head): the run's length in pages.
const LEN: u32 = LIVE_END - 1;
/// No run (end of a free list).
const NIL: u32 = u32::MAX;
/// Free runs shorter than this are kept in `small` bitmaps, longer ones in lists.
const SMALL: u32 = 4;
/// Lengths below this have a class of their own.
const EXACT: u32 = 64;
/// Classes per power of two above `EXACT` (as a shift).
const SUB_BITS: u32 = 4;
/// Number of size classes: exact ones, then 16 for each power of two from 2⁶ to 2²⁸.
const CLASSES: usize = EXACT as usize + (29 - 6) * (1 << SUB_BITS);
/// Words of the class bitmap.
const CLASS_WORDS: usize = CLASSES.div_ceil(64);

/// Class of a free run of `len` pages (`len` ≥ 1).
#[inline(always)]
fn class_of(len: u32) -> u32 {
    if len < EXACT {
        len
    } else {
        let fl = 31 - len.leading_zeros();
        let sl = (len >> (fl - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT + ((fl - 6) << SUB_BITS) + sl
    }
}

/// Shortest run of class `class`.
#[inline(always)]
fn class_min(class: u32) -> u32 {
    if class < EXACT {
        class
    } else {
        let fl = ((class - EXACT) >> SUB_BITS) + 6;
        let sl = (class - EXACT) & ((1 << SUB_BITS) - 1);
        (1 << fl) | (sl << (fl - SUB_BITS))
    }
}

/// The first class all of whose runs hold `need` pages.
#[inline(always)]
fn class_sure(need: u32) -> u32 {
    let class = class_of(need);
    if class_min(class) == need {
        class
    } else {
        class + 1
    }
}
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

/// The allocator. All positions are page numbers relative to the window base.
#[derive(Clone)]
pub struct VaWindow {
    config: VaWindowConfig,
    total_pages: u32,
    /// Boundary tags and free-list links, one a page (see the module's documentation).
    tags: Vec<u32>,
    /// First pages of live ranges.
    live: PageBitmap,
    /// Free runs of 1, 2 and 3 pages, by first page.
    small: [PageBitmap; SMALL as usize - 1],
    /// First run of each class's free list (classes `SMALL..`), the latest freed run of each
    /// class of 1 to 3 pages (the rest of which are in `small`), or `NIL`.
    heads: Vec<u32>,
    /// Bit c: class c holds a free run.
    class_bits: [u64; CLASS_WORDS],
    /// Bit w: `class_bits[w]` is not zero.
    class_words: u64,
    /// First page of the top run: the free run that ends at the window's end (`total_pages`
    /// when the last page is taken). It is in no class; requests no listed run fits come here.
    top: u32,
    live_count: usize,
    live_pages: u64,
}

impl core::fmt::Debug for VaWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VaWindow")
            .field("config", &self.config)
            .field("live_count", &self.live_count)
            .field("free_pages", &self.free_pages())
            .field("largest_free_run", &self.largest_free_run())
            .finish()
    }
}

impl VaWindow {
    /// An empty window.
    ///
    /// Its side tables are allocated here, once: [`VaWindow::side_table_bytes`] (4.5 bytes a
    /// window page); `alloc` and `free` allocate nothing.
    ///
    /// # Errors
    /// [`VaWindowError::BadConfig`] if the base or size is not page aligned, the size is 0 or
    /// above [`MAX_WINDOW_PAGES`] pages, or the window would pass the top of the address space.
    pub fn new(config: VaWindowConfig) -> Result<Self, VaWindowError> {
        let bad = VaWindowError::BadConfig {
            base: config.base.get(),
            size: config.size,
        };
        if !config.base.is_page_aligned() || config.size == 0 || config.size % PAGE_SIZE != 0 {
            return Err(bad);
        }
        let pages = config.size / PAGE_SIZE;
        VirtPages::new(config.base, pages).map_err(|_| bad)?;
        let total_pages = u32::try_from(pages)
            .ok()
            .filter(|&p| u64::from(p) <= MAX_WINDOW_PAGES)
            .ok_or(bad)?;
        let n = total_pages as usize;
        let mut window = Self {
            config,
            total_pages,
            tags: vec![0; n],
            live: PageBitmap::new(n),
            small: [PageBitmap::new(n), PageBitmap::new(n), PageBitmap::new(n)],
            heads: vec![NIL; CLASSES],
            class_bits: [0; CLASS_WORDS],
            class_words: 0,
            top: 0,
            live_count: 0,
            live_pages: 0,
        };
        window.write_free(0, total_pages);
        Ok(window)
    }

    /// The configuration the window was built with.
    pub fn config(&self) -> VaWindowConfig {
        self.config
    }

    /// Bytes of the side tables (tags, bitmaps, class heads), fixed when the window is built.
    pub fn side_table_bytes(&self) -> usize {
        self.tags.len() * 4
            + self.live.bytes()
            + self.small.iter().map(PageBitmap::bytes).sum::<usize>()
            + self.heads.len() * 4
            + CLASS_WORDS * 8
    }

    /// Allocates `pages` pages whose first address is a multiple of `align` bytes.
    ///
    /// A request of fewer than 64 pages (guard included) takes a free run of exactly its size if
    /// there is one (the latest freed, else for 1 to 3 pages the lowest), else one of the next
    /// size up, and so on: best fit among the listed runs. A larger request takes a run of the
    /// first size class whose every run fits (classes are 1/16 of a power of two wide). Failing
    /// that, the request is cut from the top run (the free run that reaches the window's end),
    /// and failing that too, from a run of its own class that fits among the first
    /// [`ALIGNED_SCAN_LIMIT`]. With an alignment above 4 KiB a run of
    /// `pages + guard + align/4K - 1` pages always fits; smaller runs fit only if their start
    /// happens to suit, and up to [`ALIGNED_SCAN_LIMIT`] of them are tried first. Either way the
    /// cost is O(1) plus at most one O(log₆₄ n) bitmap search, and nothing is allocated. Guard
    /// pages follow the range inside the window.
    ///
    /// # Errors
    /// [`VaWindowError::ZeroSize`], [`VaWindowError::BadAlignment`], [`VaWindowError::NoSpace`].
    #[inline(always)]
    pub fn alloc(&mut self, pages: u64, align: u64) -> Result<VirtPages, VaWindowError> {
        if pages == 0 {
            return Err(VaWindowError::ZeroSize);
        }
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(VaWindowError::BadAlignment(align));
        }
        let guard = self.config.guard_pages;
        // Built only on failure: the largest free run costs a class search.
        let no_space = |window: &Self| VaWindowError::NoSpace {
            pages,
            guard,
            align,
            largest_free: window.largest_free_run(),
        };
        let need = match pages.checked_add(guard) {
            Some(need) if need <= u64::from(self.total_pages) => need as u32,
            _ => return Err(no_space(self)),
        };
        let align_pages = align / PAGE_SIZE;
        let fit = if align_pages == 1 {
            self.find_fit(need)
        } else {
            self.find_aligned(need, align_pages)
        };
        let Some((run, len, at)) = fit else {
            return Err(no_space(self));
        };
        self.take(run, len, at, need);
        Ok(self.range_in_window(at, pages))
    }

    /// Frees the live range that starts at `start`, merging it with free neighbours.
    ///
    /// # Errors
    /// [`VaWindowError::UnknownRange`] if no live range starts there; nothing changes then.
    #[inline(always)]
    pub fn free(&mut self, start: VirtAddr) -> Result<VirtPages, VaWindowError> {
        let unknown = VaWindowError::UnknownRange(start.get());
        let p = self.page_index(start).ok_or(unknown)?;
        if !self.live.test_and_clear(p as usize) {
            return Err(unknown);
        }
        let head = self.tag(p);
        let len = head & LEN;
        let range = self.range_in_window(p, u64::from(len) - self.config.guard_pages);
        self.live_count -= 1;
        self.live_pages -= u64::from(len);
        // The free neighbours, if any: the run before, by the tag of its last page (a free
        // run's first page, the head of a 1-page run, or `LIVE_END`), and the run after.
        let (mut run, mut run_len) = (p, len);
        let mut before = None;
        if let Some(last) = p.checked_sub(1) {
            let end_tag = self.tag(last);
            let prev = if end_tag & HEAD != 0 {
                (end_tag & FREE != 0).then_some(last)
            } else {
                (end_tag != LIVE_END).then_some(end_tag)
            };
            if let Some(prev) = prev {
                before = Some((prev, p - prev));
                run = prev;
                run_len += p - prev;
            }
        }
        let after = p + len;
        if after == self.top {
            // Into the top run.
            if let Some((prev, prev_len)) = before {
                self.unlink(prev, prev_len);
            }
            self.top = run;
            return Ok(range);
        }
        let mut next = None;
        if after < self.total_pages {
            let next_head = self.tag(after);
            if next_head & FREE != 0 {
                next = Some(next_head & LEN);
                run_len += next_head & LEN;
            }
        }
        // Merge, keeping a neighbour's list node where the merged run stays in its class.
        let class = class_of(run_len);
        match (before, next) {
            (Some((prev, prev_len)), _) if class_of(prev_len) == class => {
                if let Some(next_len) = next {
                    self.unlink(after, next_len);
                }
                self.write_free(prev, run_len);
            }
            (_, Some(next_len)) if class_of(next_len) == class => {
                if let Some((prev, prev_len)) = before {
                    self.unlink(prev, prev_len);
                }
                self.move_node(after, run, class);
                self.write_free(run, run_len);
            }
            _ => {
                if let Some((prev, prev_len)) = before {
                    self.unlink(prev, prev_len);
                }
                if let Some(next_len) = next {
                    self.unlink(after, next_len);
                }
                self.link_free(run, run_len);
            }
        }
        Ok(range)
    }

    /// The live range holding `va`, if any (guard pages belong to no range).
    pub fn range_containing(&self, va: VirtAddr) -> Option<VirtPages> {
        let index = self.page_index(va.page_base())?;
        let start = self.live.prev_set(index as usize)? as u32;
        let range = self.live_range_at(start)?;
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
            .filter_map(|start| self.live_range_at(start as u32))
    }

    /// Number of live ranges.
    pub fn live_count(&self) -> usize {
        self.live_count
    }

    /// Pages of the window not held by a live range or its guard.
    pub fn free_pages(&self) -> u64 {
        u64::from(self.total_pages) - self.live_pages
    }

    /// The largest free run, in pages.
    ///
    /// The larger of the top run and the largest listed run: O(1) when the largest listed run
    /// is shorter than 64 pages (its class is its length); else a walk of the largest non-empty
    /// class's list, whose runs differ by less than 1/16. Called by `alloc` only when it fails.
    pub fn largest_free_run(&self) -> u64 {
        let top = u64::from(self.total_pages - self.top);
        let listed = match self.highest_class() {
            None => 0,
            Some(class) if class < EXACT => class,
            Some(class) => self
                .list(class)
                .map(|run| self.tag(run) & LEN)
                .max()
                .unwrap_or(0),
        };
        top.max(u64::from(listed))
    }

    /// The whole window as a page range.
    pub fn window(&self) -> Option<VirtPages> {
        VirtPages::new(self.config.base, u64::from(self.total_pages)).ok()
    }

    // ---- finding a run -------------------------------------------------------------------

    #[inline(always)]
    fn page_index(&self, va: VirtAddr) -> Option<u32> {
        if !va.is_page_aligned() {
            return None;
        }
        let offset = va.get().checked_sub(self.config.base.get())? / PAGE_SIZE;
        (offset < u64::from(self.total_pages)).then_some(offset as u32)
    }

    /// The range of `pages` (≥ 1) pages from page `index`, which lie in the window: the window's
    /// bounds were checked in `new`, so the address cannot overflow.
    #[inline(always)]
    fn range_in_window(&self, index: u32, pages: u64) -> VirtPages {
        let start = VirtAddr(
            self.config
                .base
                .get()
                .wrapping_add(u64::from(index).wrapping_mul(PAGE_SIZE)),
        );
        VirtPages::within_checked_bounds(start, pages)
    }

    fn live_range_at(&self, start: u32) -> Option<VirtPages> {
        let len = u64::from(self.tag(start) & LEN);
        self.range_of(start, len.checked_sub(self.config.guard_pages)?)
    }

    #[inline(always)]
    fn range_of(&self, index: u32, pages: u64) -> Option<VirtPages> {
        let start = self.config.base.checked_add_pages(u64::from(index))?;
        VirtPages::new(start, pages).ok()
    }
}
