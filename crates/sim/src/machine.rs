//! The simulated machine: physical memory, its map, and how each guest's RAM and the
//! hypervisor's own pages are scattered over normal-world RAM.

use std::sync::{Arc, Mutex};
use teeshm_mm::MemoryMap;
use teeshm_testkit::{PhysMemory, machine_memory_map};

/// Page size of every layer.
pub const PAGE: u64 = 4096;
/// First byte of normal-world RAM (as on QEMU `virt`).
pub const NS_RAM_BASE: u64 = 0x4000_0000;

/// Where every page of the machine's normal-world RAM goes: `guests` guests of `guest_pages`
/// pages each, then `hyp_pages` for the hypervisor. Guest slot `s` (guest `g`'s IPA page `i` is
/// slot `g * guest_pages + i`) lives at physical page `(s * stride) mod guest_total`, a
/// bijection that scatters every guest's RAM over the guests' whole range; the hypervisor's
/// pages follow as one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Guests.
    pub guests: u64,
    /// Pages of RAM per guest.
    pub guest_pages: u64,
    /// Pages the hypervisor owns for shadows.
    pub hyp_pages: u64,
    stride: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Layout {
    /// A layout for `guests` guests of `guest_pages` pages and `hyp_pages` hypervisor pages.
    pub fn new(guests: u64, guest_pages: u64, hyp_pages: u64) -> Self {
        let total = guests * guest_pages;
        // A stride near the golden ratio of the total, made coprime with it.
        let mut stride = (total as f64 * 0.618_033_988_75) as u64 | 1;
        while total > 1 && gcd(stride, total) != 1 {
            stride += 2;
        }
        Self {
            guests,
            guest_pages,
            hyp_pages,
            stride: stride.max(1),
        }
    }

    /// Pages of normal-world RAM in all.
    pub fn total_pages(&self) -> u64 {
        self.guests * self.guest_pages + self.hyp_pages
    }

    fn slot_pa(&self, slot: u64) -> u64 {
        let total = (self.guests * self.guest_pages).max(1);
        let page = ((u128::from(slot) * u128::from(self.stride)) % u128::from(total)) as u64;
        NS_RAM_BASE + page * PAGE
    }

    /// Physical page of guest `index`'s IPA page `ipa_page`.
    pub fn guest_pa(&self, index: u64, ipa_page: u64) -> u64 {
        self.slot_pa(index * self.guest_pages + ipa_page)
    }

    /// Physical page of the hypervisor's `n`th page.
    pub fn hyp_pa(&self, n: u64) -> u64 {
        NS_RAM_BASE + (self.guests * self.guest_pages + n) * PAGE
    }

    /// Which hypervisor page `pa` is, if it is one.
    pub fn hyp_page_index(&self, pa: u64) -> Option<u64> {
        let n = pa.checked_sub(self.hyp_pa(0))? / PAGE;
        (n < self.hyp_pages).then_some(n)
    }

    /// The machine's memory map: secure RAM, devices and normal-world RAM.
    pub fn memory_map(&self) -> MemoryMap {
        machine_memory_map((NS_RAM_BASE, self.total_pages() * PAGE), None)
    }
}

/// A page allocator over `pages` page numbers: single pages from the bottom (freed ones first),
/// contiguous runs from the top quarter.
#[derive(Debug)]
pub struct PageAllocator {
    pages: u64,
    next_single: u64,
    free_single: Vec<u64>,
    next_run: u64,
    free_runs: Vec<(u64, u64)>,
}

impl PageAllocator {
    /// An allocator of page numbers `0..pages`.
    pub fn new(pages: u64) -> Self {
        Self {
            pages,
            next_single: 0,
            free_single: Vec::new(),
            next_run: pages - pages / 4,
            free_runs: Vec::new(),
        }
    }

    fn single_limit(&self) -> u64 {
        self.pages - self.pages / 4
    }

    /// One page.
    pub fn alloc(&mut self) -> Option<u64> {
        if let Some(p) = self.free_single.pop() {
            return Some(p);
        }
        if self.next_single < self.single_limit() {
            self.next_single += 1;
            return Some(self.next_single - 1);
        }
        None
    }

    /// `n` contiguous pages; the first.
    pub fn alloc_run(&mut self, n: u64) -> Option<u64> {
        if let Some(i) = self.free_runs.iter().position(|&(_, len)| len >= n) {
            let (start, len) = self.free_runs.swap_remove(i);
            if len > n {
                self.free_runs.push((start + n, len - n));
            }
            return Some(start);
        }
        if self.next_run + n <= self.pages {
            self.next_run += n;
            return Some(self.next_run - n);
        }
        None
    }

    /// Gives back a page (or the first page of a run of `n`).
    pub fn free(&mut self, page: u64, n: u64) {
        if page < self.single_limit() && n == 1 {
            self.free_single.push(page);
        } else {
            self.free_runs.push((page, n));
        }
    }

    /// Pages handed out and not given back.
    pub fn in_use(&self) -> u64 {
        let runs: u64 = self.free_runs.iter().map(|&(_, n)| n).sum();
        (self.next_single - self.free_single.len() as u64)
            + (self.next_run - self.single_limit()).saturating_sub(runs)
    }
}

/// The machine: physical memory and its layout.
#[derive(Debug, Clone)]
pub struct Machine {
    /// All physical memory (sparse).
    pub memory: Arc<PhysMemory>,
    /// Where guest and hypervisor pages lie.
    pub layout: Layout,
    hyp_pages: Arc<Mutex<PageAllocator>>,
}

impl Machine {
    /// A machine with `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            memory: Arc::new(PhysMemory::new()),
            layout,
            hyp_pages: Arc::new(Mutex::new(PageAllocator::new(layout.hyp_pages))),
        }
    }

    /// A hypervisor page (for shadows), as its last user left it: the mediator zeroes each
    /// shadow it takes ([`teeshm_hyp::MachineMemory::zero_page`]).
    pub fn alloc_hyp_page(&self) -> Option<u64> {
        let n = self.hyp_pages.lock().ok()?.alloc()?;
        Some(self.layout.hyp_pa(n))
    }

    /// Gives a hypervisor page back.
    pub fn free_hyp_page(&self, pa: u64) {
        if let (Some(n), Ok(mut pages)) = (self.layout.hyp_page_index(pa), self.hyp_pages.lock()) {
            pages.free(n, 1);
        }
    }

    /// Hypervisor pages in use.
    pub fn hyp_pages_in_use(&self) -> u64 {
        self.hyp_pages.lock().map(|p| p.in_use()).unwrap_or(0)
    }
}
