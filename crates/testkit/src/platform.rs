//! The host [`Platform`]: the core's accesses to memory, translated page by page through the
//! core's own tables.
//!
//! An access through a missing mapping, or a mapping of the wrong kind, faults exactly as the MMU
//! would make it fault on the machine, so a test that passes here did not pass by reaching
//! memory the core never mapped.

use crate::memory::PhysMemory;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use teeshm_core::{AccessFault, Platform, Translate};
use teeshm_mm::tables::Translation;
use teeshm_mm::{MemKind, PAGE_SIZE, PhysRange, VirtAddr};
use teeshm_platform::{RecordingTlb, TlbListener};

/// Buckets of [`SimTlb`]'s invalidation generations (pages hash into them).
const BUCKETS: usize = 4096;
/// Entries of a simulated CPU's TLB (direct-mapped: a page's entry is at one index, and a walk
/// replaces whatever translation held it).
const TLB_ENTRIES: usize = 4096;

/// The simulated machine's TLBs: every simulated CPU (host thread) caches the translations it
/// walked, and each invalidation the core's memory manager issues (its `TLBI`, through
/// [`RecordingTlb`]) is broadcast to all of them at once by bumping a generation: a page's
/// bucket for `invalidate_pages`, the whole TLB's for `invalidate_all`. A cached translation
/// is used only while neither generation moved since the walk that filled it (read before the
/// walk), so it is always what the tables said after the last invalidation of its page — what
/// a TLB holds between two `TLBI`s. The core keeps the rule the MMU imposes: it invalidates
/// every page it unmaps (one request per unmap batch).
#[derive(Debug)]
pub struct SimTlb {
    id: u64,
    pages: Box<[AtomicU64]>,
    all: AtomicU64,
}

impl SimTlb {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            pages: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            all: AtomicU64::new(0),
        }
    }

    fn bucket(&self, page: u64) -> &AtomicU64 {
        // Cannot be out of range: the index is taken modulo the length.
        &self.pages[((page / PAGE_SIZE) % BUCKETS as u64) as usize]
    }

    /// The generations a translation of `page` walked now is valid for.
    fn generation(&self, page: u64) -> (u64, u64) {
        (
            self.bucket(page).load(Ordering::Acquire),
            self.all.load(Ordering::Acquire),
        )
    }
}

impl TlbListener for SimTlb {
    fn invalidate_pages(&self, va: u64, pages: u64) {
        if pages >= BUCKETS as u64 {
            self.all.fetch_add(1, Ordering::AcqRel);
            return;
        }
        for i in 0..pages {
            self.bucket(va.wrapping_add(i * PAGE_SIZE))
                .fetch_add(1, Ordering::AcqRel);
        }
    }

    fn invalidate_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

/// One cached translation: the TLB it belongs to, its page, what it maps, and the
/// generations it was walked under.
#[derive(Clone, Copy)]
struct CpuTlbEntry {
    tlb: u64,
    page: u64,
    translation: Translation,
    generation: (u64, u64),
}

/// The index of `page` of TLB `tlb` in a CPU's direct-mapped TLB.
fn tlb_index(tlb: u64, page: u64) -> usize {
    ((page / PAGE_SIZE) ^ tlb.wrapping_mul(0x9e37_79b9)) as usize % TLB_ENTRIES
}

thread_local! {
    /// This simulated CPU's TLB (each host thread is a CPU).
    static CPU_TLB: RefCell<Vec<Option<CpuTlbEntry>>> = RefCell::new(vec![None; TLB_ENTRIES]);
}

/// The host [`Platform`]: every access is translated page by page through the core's tables
/// (or the simulated TLB, when the platform has one: [`SimPlatform::with_tlb`]) and faults
/// unless the page is mapped as normal-world shared memory or secure RAM, or as a TA's page
/// while a user address space is active (user mode: `crate::user`).
#[derive(Debug, Clone)]
pub struct SimPlatform {
    memory: Arc<PhysMemory>,
    /// Which machine this is (clones are the same one): the key of each simulated CPU's
    /// current user space.
    pub(crate) machine: u64,
    tlb: Option<Arc<SimTlb>>,
    interrupts: Arc<ForeignInterrupts>,
    /// The secure RAM TAs are loaded into ([`SimPlatform::with_ta_ram`]); none by default.
    pub(crate) ta_ram: Option<Arc<crate::user::SimTaRam>>,
    /// What the TAs logged, the last lines ([`SimPlatform::ta_logs`]).
    pub(crate) ta_log_lines: Arc<Mutex<VecDeque<String>>>,
}

/// Simulated normal-world interrupts: one is pending at every `every`-th time the core asks
/// (0: never), so that the preemption of long calls can be tested.
#[derive(Debug, Default)]
struct ForeignInterrupts {
    every: AtomicU64,
    asked: AtomicU64,
    pending: AtomicU64,
}

impl Default for SimPlatform {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

/// A new machine's id.
fn next_machine() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl SimPlatform {
    /// A platform over `memory` (which the simulated normal world shares), with no TLB: every
    /// access walks the tables.
    pub fn new(memory: Arc<PhysMemory>) -> Self {
        Self {
            memory,
            machine: next_machine(),
            tlb: None,
            interrupts: Arc::default(),
            ta_ram: None,
            ta_log_lines: Arc::default(),
        }
    }

    /// The same platform with `range` as the secure RAM for TAs, the only memory
    /// [`UserMode::write_ta_ram`](teeshm_core::platform::UserMode::write_ta_ram) writes.
    #[must_use]
    pub fn with_ta_ram(mut self, range: PhysRange) -> Self {
        self.ta_ram = Some(Arc::new(crate::user::SimTaRam::new(range)));
        self
    }

    /// The TA RAM's pages: (free now, in all); (0, 0) without TA RAM.
    pub fn ta_ram_pages(&self) -> (u64, u64) {
        self.ta_ram
            .as_ref()
            .map_or((0, 0), |r| (r.free_pages(), r.total_pages()))
    }

    /// From now on, a normal-world interrupt is pending at every `every`-th time the core
    /// asks (0: never, the default).
    pub fn set_foreign_interrupt_every(&self, every: u64) {
        self.interrupts.every.store(every, Ordering::Relaxed);
        self.interrupts.asked.store(0, Ordering::Relaxed);
    }

    /// How many times the core found an interrupt pending.
    pub fn foreign_interrupts_seen(&self) -> u64 {
        self.interrupts.pending.load(Ordering::Relaxed)
    }

    /// A platform over `memory` with simulated TLBs, and the TLB maintenance the core must be
    /// built with ([`teeshm_core::Tee::new`]) so that its invalidations reach them.
    pub fn with_tlb(memory: Arc<PhysMemory>) -> (Self, RecordingTlb) {
        let tlb = Arc::new(SimTlb::new());
        let maintenance = RecordingTlb::counting_for(tlb.clone());
        (
            Self {
                memory,
                machine: next_machine(),
                tlb: Some(tlb),
                interrupts: Arc::default(),
                ta_ram: None,
                ta_log_lines: Arc::default(),
            },
            maintenance,
        )
    }

    /// The translation of `page`: this CPU's TLB entry while it is valid, else a walk.
    fn translate(&self, map: &dyn Translate, page: VirtAddr) -> Option<Translation> {
        let Some(tlb) = &self.tlb else {
            return map.translate_page(page);
        };
        let generation = tlb.generation(page.get());
        let index = tlb_index(tlb.id, page.get());
        let cached = CPU_TLB.with(|t| match t.borrow().get(index) {
            Some(Some(e))
                if e.tlb == tlb.id && e.page == page.get() && e.generation == generation =>
            {
                Some(e.translation)
            }
            _ => None,
        });
        if cached.is_some() {
            return cached;
        }
        let walked = map.translate_page(page)?;
        // A user page is not cached: TA address spaces share their VAs and this TLB has no
        // ASIDs, so it is walked each time (what a TLB flushed at every switch would do).
        if matches!(walked.kind, Some(MemKind::User(_))) {
            return Some(walked);
        }
        CPU_TLB.with(|t| {
            if let Some(slot) = t.borrow_mut().get_mut(index) {
                *slot = Some(CpuTlbEntry {
                    tlb: tlb.id,
                    page: page.get(),
                    translation: walked,
                    generation,
                });
            }
        });
        Some(walked)
    }

    /// The physical memory.
    pub fn memory(&self) -> &Arc<PhysMemory> {
        &self.memory
    }

    /// Calls `f(pa, range)` for each page-sized piece of an access of `len` bytes at `va` (a
    /// store if `write`).
    fn walk(
        &self,
        map: &dyn Translate,
        va: VirtAddr,
        len: usize,
        write: bool,
        mut f: impl FnMut(u64, std::ops::Range<usize>),
    ) -> Result<(), AccessFault> {
        let mut done = 0usize;
        while done < len {
            let at = va
                .get()
                .checked_add(done as u64)
                .ok_or(AccessFault::Wrap(va.get()))?;
            let page = VirtAddr(at).page_base();
            let translation = self
                .translate(map, page)
                .ok_or(AccessFault::NotMapped(at))?;
            match translation.kind {
                Some(MemKind::NonSecureShared | MemKind::SecureRam) => {}
                // The core reaches a TA's page only with that TA's space active (TTBR0), and
                // stores only where the TA may store (the page's AP bits bind EL1 too).
                Some(MemKind::User(page))
                    if self.active_user().is_some() && (page.writable || !write) => {}
                _ => return Err(AccessFault::Permission(at)),
            }
            let in_page = at % PAGE_SIZE;
            let n = (len - done).min((PAGE_SIZE - in_page) as usize);
            f(translation.pa.get() + in_page, done..done + n);
            done += n;
        }
        Ok(())
    }
}

impl SimPlatform {
    /// Every page piece of an access, translated before any byte moves (so a fault leaves
    /// memory and `buf` untouched): the access's own TLB. Each page is walked once; the
    /// translations are used after the walk, as the MMU uses its TLB entries, and the core
    /// keeps them valid for the access (a map guard's mapping is neither evicted nor released
    /// while it lives, and a revocation waits for the copy: docs/core.md).
    fn translate_all(
        &self,
        map: &dyn Translate,
        va: VirtAddr,
        len: usize,
        write: bool,
    ) -> Result<Vec<(u64, std::ops::Range<usize>)>, AccessFault> {
        let mut pieces = Vec::with_capacity(len / PAGE_SIZE as usize + 2);
        self.walk(map, va, len, write, |pa, range| pieces.push((pa, range)))?;
        Ok(pieces)
    }
}

impl SimPlatform {
    /// The physical address of an access of `len` bytes at `va` that lies within one page
    /// (most of the core's accesses: an arg, a list page), translated without a list of pieces;
    /// `None` for an access over several pages or none.
    fn within_one_page(
        &self,
        map: &dyn Translate,
        va: VirtAddr,
        len: usize,
        write: bool,
    ) -> Result<Option<u64>, AccessFault> {
        let in_page = va.get() % PAGE_SIZE;
        if len == 0 || in_page.saturating_add(len as u64) > PAGE_SIZE {
            return Ok(None);
        }
        let mut found = None;
        self.walk(map, va, len, write, |pa, _| found = Some(pa))?;
        Ok(found)
    }
}

impl Platform for SimPlatform {
    type Tlb = RecordingTlb;

    fn read(&self, map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault> {
        if let Some(pa) = self.within_one_page(map, va, buf.len(), false)? {
            self.memory.read(pa, buf);
            return Ok(());
        }
        for (pa, range) in self.translate_all(map, va, buf.len(), false)? {
            if let Some(dst) = buf.get_mut(range) {
                self.memory.read(pa, dst);
            }
        }
        Ok(())
    }

    fn write(&self, map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault> {
        if let Some(pa) = self.within_one_page(map, va, data.len(), true)? {
            self.memory.write(pa, data);
            return Ok(());
        }
        for (pa, range) in self.translate_all(map, va, data.len(), true)? {
            if let Some(src) = data.get(range) {
                self.memory.write(pa, src);
            }
        }
        Ok(())
    }

    /// A device register: the simulated machine's devices are bytes of [`PhysMemory`] (a test
    /// writes what a device would answer); the page must be mapped as a device, as on the MMU.
    fn read_io32(&self, map: &dyn Translate, va: VirtAddr) -> Result<u32, AccessFault> {
        if va.get() % 4 != 0 {
            return Err(AccessFault::Permission(va.get()));
        }
        let translation = self
            .translate(map, va.page_base())
            .ok_or(AccessFault::NotMapped(va.get()))?;
        if translation.kind != Some(MemKind::Device) {
            return Err(AccessFault::Permission(va.get()));
        }
        let mut word = [0u8; 4];
        self.memory
            .read(translation.pa.get() + va.page_offset(), &mut word);
        Ok(u32::from_le_bytes(word))
    }

    fn foreign_interrupt_pending(&self) -> bool {
        let every = self.interrupts.every.load(Ordering::Relaxed);
        if every == 0 {
            return false;
        }
        let asked = self.interrupts.asked.fetch_add(1, Ordering::Relaxed) + 1;
        let pending = asked % every == 0;
        if pending {
            self.interrupts.pending.fetch_add(1, Ordering::Relaxed);
        }
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{DEVICES, NS_RAM, sim_memory_map};
    use teeshm_abi::GuestId;
    use teeshm_mm::{PhysAddr, ShmWindow, ShmWindowConfig, VaWindowConfig};

    /// The simulated TLB never serves a translation the tables no longer hold: an access
    /// fills it, the unmap's invalidation reaches it, and the same access then faults; a new
    /// mapping at the same VA is walked afresh.
    #[test]
    fn the_tlb_forgets_what_the_memory_manager_invalidates() {
        let memory = Arc::new(PhysMemory::new());
        let (platform, tlb) = SimPlatform::with_tlb(memory.clone());
        let config = ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(0x40_0000_0000),
                size: 64 * PAGE_SIZE,
                guard_pages: 0,
            },
            max_table_pages: 16,
        };
        let mut w = ShmWindow::new(config, sim_memory_map(), tlb).unwrap();
        let (a, b) = (PhysAddr(NS_RAM.0 + 0x5000), PhysAddr(NS_RAM.0 + 0x9000));
        memory.write(a.get(), b"first");
        memory.write(b.get(), b"other");
        let r = w.map(GuestId(1), &[a], MemKind::NonSecureShared).unwrap();
        let mut buf = [0u8; 5];
        platform.read(&w, r.start(), &mut buf).unwrap();
        platform.read(&w, r.start(), &mut buf).unwrap();
        assert_eq!(&buf, b"first");
        w.unmap(r.start()).unwrap();
        assert_eq!(
            platform.read(&w, r.start(), &mut buf),
            Err(AccessFault::NotMapped(r.start().get()))
        );
        let again = w.map(GuestId(1), &[b], MemKind::NonSecureShared).unwrap();
        assert_eq!(again.start(), r.start(), "the VA is reused");
        platform.read(&w, again.start(), &mut buf).unwrap();
        assert_eq!(&buf, b"other", "the new mapping, not the cached one");
    }

    /// The software walk faults exactly where the MMU would: an unmapped page, a page mapped
    /// as device memory, an access running off the end of a mapping.
    #[test]
    fn accesses_fault_through_missing_or_wrong_mappings() {
        let memory = Arc::new(PhysMemory::new());
        let platform = SimPlatform::new(memory.clone());
        let config = ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(0x40_0000_0000),
                size: 64 * PAGE_SIZE,
                guard_pages: 1,
            },
            max_table_pages: 16,
        };
        let mut w = ShmWindow::new(config, sim_memory_map(), RecordingTlb::new()).unwrap();
        let ns = PhysAddr(NS_RAM.0 + 0x5000);
        memory.write(ns.get() + 8, b"shared");
        let r = w.map(GuestId(1), &[ns], MemKind::NonSecureShared).unwrap();
        let mut buf = [0u8; 6];
        platform
            .read(&w, VirtAddr(r.start().get() + 8), &mut buf)
            .unwrap();
        assert_eq!(&buf, b"shared");
        // Off the end of the one-page mapping: the guard page is not mapped.
        let mut two = [0u8; 2];
        let last = VirtAddr(r.start().get() + PAGE_SIZE - 1);
        assert_eq!(
            platform.read(&w, last, &mut two),
            Err(AccessFault::NotMapped(r.start().get() + PAGE_SIZE))
        );
        assert_eq!(two, [0, 0], "nothing copied from a faulting access");
        // After the unmap the same VA faults.
        w.unmap(r.start()).unwrap();
        assert_eq!(
            platform.read(&w, r.start(), &mut buf),
            Err(AccessFault::NotMapped(r.start().get()))
        );
        assert_eq!(
            platform.write(&w, r.start(), b"x"),
            Err(AccessFault::NotMapped(r.start().get()))
        );
        // Device memory is no memory the core copies shared data from.
        let dev = w
            .map(GuestId(1), &[PhysAddr(DEVICES.0)], MemKind::Device)
            .unwrap();
        assert_eq!(
            platform.read(&w, dev.start(), &mut buf),
            Err(AccessFault::Permission(dev.start().get()))
        );
        assert_eq!(
            platform.read(&w, VirtAddr(u64::MAX), &mut buf),
            Err(AccessFault::NotMapped(u64::MAX))
        );
    }
}
