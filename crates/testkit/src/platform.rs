//! The host [`Platform`]: the core's accesses to memory, translated page by page through the
//! core's own tables.
//!
//! An access through a missing mapping, or a mapping of the wrong kind, faults exactly as the MMU
//! would make it fault on the machine, so a test that passes here did not pass by reaching
//! memory the core never mapped.

use crate::memory::PhysMemory;
use std::sync::Arc;
use teeshm_core::{AccessFault, Platform, Translate};
use teeshm_mm::{MemKind, PAGE_SIZE, VirtAddr};
use teeshm_platform::RecordingTlb;

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
        mut f: impl FnMut(u64, std::ops::Range<usize>),
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

impl SimPlatform {
    /// Every page piece of an access, translated before any byte moves (so a fault leaves
    /// memory and `buf` untouched): the access's own TLB. Each page is walked once; the
    /// translations are used after the walk, as the MMU uses its TLB entries, and the core
    /// keeps them valid for the access (a map guard's mapping is neither evicted nor released
    /// while it lives, and a revocation waits for the copy: docs/core.md).
    fn translate_all(
        map: &dyn Translate,
        va: VirtAddr,
        len: usize,
    ) -> Result<Vec<(u64, std::ops::Range<usize>)>, AccessFault> {
        let mut pieces = Vec::with_capacity(len / PAGE_SIZE as usize + 2);
        Self::walk(map, va, len, |pa, range| pieces.push((pa, range)))?;
        Ok(pieces)
    }
}

impl Platform for SimPlatform {
    type Tlb = RecordingTlb;

    fn read(&self, map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault> {
        for (pa, range) in Self::translate_all(map, va, buf.len())? {
            if let Some(dst) = buf.get_mut(range) {
                self.memory.read(pa, dst);
            }
        }
        Ok(())
    }

    fn write(&self, map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault> {
        for (pa, range) in Self::translate_all(map, va, data.len())? {
            if let Some(src) = data.get(range) {
                self.memory.write(pa, src);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{DEVICES, NS_RAM, sim_memory_map};
    use teeshm_abi::GuestId;
    use teeshm_mm::{PhysAddr, ShmWindow, ShmWindowConfig, VaWindowConfig};

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
