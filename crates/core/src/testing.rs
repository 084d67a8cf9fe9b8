//! The host platform: sparse simulated physical memory, reached by the core only through a
//! software walk of the core's own translation tables.
//!
//! This is the test platform of the core (and the base of the whole-system simulator): an
//! access through a missing mapping, or a mapping of the wrong kind, faults exactly as the MMU
//! would make it fault on the machine.

use crate::platform::{AccessFault, Platform, Translate};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use teeshm_mm::{MemKind, MemoryMap, PAGE_SIZE, PhysAddr, PhysRange, Region, RegionKind, VirtAddr};
use teeshm_platform::RecordingTlb;

/// Physical memory that costs only what is touched: 4 KiB pages made on first write; an
/// untouched page reads as zeros. Pages are spread over [`SHARDS`] locks, so simulated CPUs
/// touching different pages do not wait for each other.
#[derive(Debug)]
pub struct PhysMemory {
    shards: [crate::sync::Mutex<BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>>; SHARDS],
    tracing: core::sync::atomic::AtomicBool,
    /// Reads per page, while tracing (tests of the read-once rule).
    traced: crate::sync::Mutex<Option<BTreeMap<u64, u64>>>,
}

/// Locks the pages are spread over.
pub const SHARDS: usize = 64;

impl Default for PhysMemory {
    fn default() -> Self {
        Self {
            shards: core::array::from_fn(|_| crate::sync::Mutex::new(BTreeMap::new())),
            tracing: core::sync::atomic::AtomicBool::new(false),
            traced: crate::sync::Mutex::new(None),
        }
    }
}

impl PhysMemory {
    /// Empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts counting reads per page (forgetting earlier counts), or stops.
    pub fn trace_reads(&self, on: bool) {
        *self.traced.lock() = on.then(BTreeMap::new);
        self.tracing
            .store(on, core::sync::atomic::Ordering::Release);
    }

    /// Reads of the page holding `pa` since tracing started.
    pub fn reads_of(&self, pa: u64) -> u64 {
        self.traced
            .lock()
            .as_ref()
            .and_then(|t| t.get(&(pa / PAGE_SIZE)).copied())
            .unwrap_or(0)
    }

    fn shard(
        &self,
        page: u64,
    ) -> &crate::sync::Mutex<BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>> {
        let index = (page % SHARDS as u64) as usize;
        // `index < SHARDS` by construction; the fallback is never taken.
        self.shards.get(index).unwrap_or(&self.shards[0])
    }

    /// Calls `f(page, offset in page, range of the caller's buffer)` for each page piece of an
    /// access of `len` bytes at `pa`.
    fn pieces(pa: u64, len: usize, mut f: impl FnMut(u64, usize, core::ops::Range<usize>)) {
        let mut done = 0usize;
        while done < len {
            let at = pa.wrapping_add(done as u64);
            let in_page = (at % PAGE_SIZE) as usize;
            let n = (len - done).min(PAGE_SIZE as usize - in_page);
            f(at / PAGE_SIZE, in_page, done..done + n);
            done += n;
        }
    }

    /// Copies from physical memory (the normal world's or the machine's view: no checks).
    pub fn read(&self, pa: u64, buf: &mut [u8]) {
        if self.tracing.load(core::sync::atomic::Ordering::Acquire) {
            if let Some(traced) = self.traced.lock().as_mut() {
                let last = pa.saturating_add(buf.len().saturating_sub(1) as u64);
                for page in pa / PAGE_SIZE..=last / PAGE_SIZE {
                    *traced.entry(page).or_default() += 1;
                }
            }
        }
        Self::pieces(pa, buf.len(), |page, in_page, range| {
            let n = range.len();
            if let Some(dst) = buf.get_mut(range) {
                match self.shard(page).lock().get(&page) {
                    Some(p) => dst.copy_from_slice(p.get(in_page..in_page + n).unwrap_or(&[])),
                    None => dst.fill(0),
                }
            }
        });
    }

    /// Copies into physical memory.
    pub fn write(&self, pa: u64, data: &[u8]) {
        Self::pieces(pa, data.len(), |page, in_page, range| {
            let n = range.len();
            let mut shard = self.shard(page).lock();
            let p = shard
                .entry(page)
                .or_insert_with(|| Box::new([0; PAGE_SIZE as usize]));
            if let (Some(dst), Some(src)) = (p.get_mut(in_page..in_page + n), data.get(range)) {
                dst.copy_from_slice(src);
            }
        });
    }

    /// Pages that have been written.
    pub fn touched_pages(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The host [`Platform`]: every access is translated page by page through the core's tables
/// and faults unless the page is mapped as normal-world shared memory or secure RAM.
#[derive(Debug, Clone, Default)]
pub struct SimPlatform {
    memory: Arc<PhysMemory>,
}

impl SimPlatform {
    /// A platform over `memory` (which the simulated normal world shares).
    pub fn new(memory: Arc<PhysMemory>) -> Self {
        Self { memory }
    }

    /// The physical memory.
    pub fn memory(&self) -> &Arc<PhysMemory> {
        &self.memory
    }

    /// Calls `f(pa, range)` for each page-sized piece of an access of `len` bytes at `va`.
    fn walk(
        map: &dyn Translate,
        va: VirtAddr,
        len: usize,
        mut f: impl FnMut(u64, core::ops::Range<usize>),
    ) -> Result<(), AccessFault> {
        let mut done = 0usize;
        while done < len {
            let at = va
                .get()
                .checked_add(done as u64)
                .ok_or(AccessFault::Wrap(va.get()))?;
            let page = VirtAddr(at).page_base();
            let translation = map.translate_page(page).ok_or(AccessFault::NotMapped(at))?;
            match translation.kind {
                Some(MemKind::NonSecureShared | MemKind::SecureRam) => {}
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

impl Platform for SimPlatform {
    type Tlb = RecordingTlb;

    fn read(&self, map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault> {
        // Translate everything first, so a fault leaves `buf` untouched by later pages.
        Self::walk(map, va, buf.len(), |_, _| {})?;
        Self::walk(map, va, buf.len(), |pa, range| {
            if let Some(dst) = buf.get_mut(range) {
                self.memory.read(pa, dst);
            }
        })
    }

    fn write(&self, map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault> {
        Self::walk(map, va, data.len(), |_, _| {})?;
        Self::walk(map, va, data.len(), |pa, range| {
            if let Some(src) = data.get(range) {
                self.memory.write(pa, src);
            }
        })
    }
}

/// Secure RAM of the simulated machine (as on QEMU `virt`): 16 MiB at 0x0e00_0000.
pub const SECURE_RAM: (u64, u64) = (0x0e00_0000, 16 << 20);
/// Device registers (the UART page and around): 16 MiB at 0x0900_0000.
pub const DEVICES: (u64, u64) = (0x0900_0000, 16 << 20);
/// Normal-world RAM: 4 GiB at 0x4000_0000.
pub const NS_RAM: (u64, u64) = (0x4000_0000, 4 << 30);
/// The static SHM pool, when a test configures one: 4 MiB at 0x1_4000_0000 (just above RAM).
pub const STATIC_POOL: (u64, u64) = (0x1_4000_0000, 4 << 20);

/// The memory map of the simulated machine: secure RAM, devices, NS RAM and the static pool
/// region.
pub fn sim_memory_map() -> MemoryMap {
    machine_memory_map(NS_RAM, Some(STATIC_POOL))
}

/// A simulated machine's memory map: [`SECURE_RAM`], [`DEVICES`], normal-world RAM at
/// `ns_ram` (start, length) and, if given, a static pool region.
pub fn machine_memory_map(ns_ram: (u64, u64), pool: Option<(u64, u64)>) -> MemoryMap {
    let regions: alloc::vec::Vec<Region> = [
        (SECURE_RAM, RegionKind::SecureRam),
        (DEVICES, RegionKind::Device),
        (ns_ram, RegionKind::NonSecureRam),
    ]
    .into_iter()
    .chain(pool.map(|p| (p, RegionKind::ReservedShm)))
    .filter_map(|((start, len), kind)| {
        Some(Region {
            range: PhysRange::new(PhysAddr(start), len).ok()?,
            kind,
        })
    })
    .collect();
    MemoryMap::new(&regions).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use teeshm_abi::GuestId;
    use teeshm_mm::{ShmWindow, ShmWindowConfig, VaWindowConfig};

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
