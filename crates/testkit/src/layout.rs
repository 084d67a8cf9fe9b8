//! The simulated machine's physical address map, and where the simulated normal world takes its
//! pages from.

use teeshm_mm::{MemoryMap, PAGE_SIZE, PhysAddr, PhysRange, Region, RegionKind};

/// Secure RAM of the simulated machine (as on QEMU `virt`): 16 MiB at 0x0e00_0000.
pub const SECURE_RAM: (u64, u64) = (0x0e00_0000, 16 << 20);
/// Where a simulated core takes its TAs' pages ([`crate::SimPlatform::with_ta_ram`]): 128 MiB
/// of secure memory at 8 GiB, above everything else. The firmware takes them from its heap,
/// whose budget the guests' secure-heap quotas fit; here the region holds every guest's whole
/// quota at once (16 guests of 4 MiB, the default, need 64 MiB), so a guest within its quota
/// never finds it empty.
pub const TA_RAM: (u64, u64) = (0x2_0000_0000, 128 << 20);
/// Device registers (the UART page and around): 16 MiB at 0x0900_0000.
pub const DEVICES: (u64, u64) = (0x0900_0000, 16 << 20);
/// Normal-world RAM: 4 GiB at 0x4000_0000 (address 0 means NULL on the OP-TEE ABI, so no
/// buffer may live there).
pub const NS_RAM: (u64, u64) = (0x4000_0000, 4 << 30);
/// The static SHM pool, when a test configures one: 4 MiB at 0x1_4000_0000 (just above RAM).
pub const STATIC_POOL: (u64, u64) = (0x1_4000_0000, 4 << 20);

/// Pages of [`NS_RAM`].
pub const NS_PAGES: u64 = NS_RAM.1 / PAGE_SIZE;

/// The memory map of the simulated machine: secure RAM, TA RAM, devices, NS RAM and the static
/// pool region.
pub fn sim_memory_map() -> MemoryMap {
    machine_memory_map(NS_RAM, Some(STATIC_POOL))
}

/// A simulated machine's memory map: [`SECURE_RAM`], [`TA_RAM`] (secure), [`DEVICES`],
/// normal-world RAM at
/// `ns_ram` (start, length) and, if given, a static pool region. A region that is not a valid
/// range (empty, unaligned) is left out, and regions that do not make a map (overlaps) give the
/// empty map: the simulator builds its map from command-line sizes, so this never panics.
pub fn machine_memory_map(ns_ram: (u64, u64), pool: Option<(u64, u64)>) -> MemoryMap {
    let regions: Vec<Region> = [
        (SECURE_RAM, RegionKind::SecureRam),
        (TA_RAM, RegionKind::SecureRam),
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

/// The `n`th page of the lower half of [`NS_RAM`] in scattered order (for `n` below
/// `NS_PAGES / 2`, never the same page twice).
///
/// An odd multiplier is a bijection modulo 2^19, so successive pages land far apart and a
/// buffer's pages are never physically contiguous by accident: what a real normal world's
/// allocator gives after a while, and what makes page lists worth having.
pub const fn scattered_page(n: u64) -> u64 {
    NS_RAM.0 + (n.wrapping_mul(0x0009_E377) % (NS_PAGES / 2)) * PAGE_SIZE
}

/// A simulated normal world's page allocator over [`NS_RAM`]: single pages scattered over the
/// lower half ([`scattered_page`], freed ones first), contiguous runs from the upper half (never
/// handed out singly, never given back).
#[derive(Debug, Default)]
pub struct NsPages {
    scattered: u64,
    contiguous: u64,
    free: Vec<u64>,
}

impl NsPages {
    /// An allocator that has handed out nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// One page, or `None` when the lower half is used up.
    pub fn page(&mut self) -> Option<u64> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        if self.scattered >= NS_PAGES / 2 {
            return None;
        }
        self.scattered += 1;
        Some(scattered_page(self.scattered - 1))
    }

    /// `n` physically contiguous pages (the first), or `None` when the upper half is used up.
    pub fn contiguous(&mut self, n: u64) -> Option<u64> {
        if self.contiguous.checked_add(n)? > NS_PAGES / 2 {
            return None;
        }
        let first = NS_RAM.0 + NS_RAM.1 / 2 + self.contiguous * PAGE_SIZE;
        self.contiguous += n;
        Some(first)
    }

    /// Gives single pages back, for the next [`NsPages::page`].
    pub fn free(&mut self, pages: &[u64]) {
        self.free.extend_from_slice(pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Scattered pages are distinct, page aligned, inside the lower half of NS RAM and not
    /// neighbours; contiguous runs come from the upper half.
    #[test]
    fn pages_are_distinct_scattered_and_in_their_half() {
        let mut pages = NsPages::new();
        let singles: Vec<u64> = (0..4096).map(|_| pages.page().unwrap()).collect();
        let set: BTreeSet<u64> = singles.iter().copied().collect();
        assert_eq!(set.len(), singles.len());
        let half = NS_RAM.0 + NS_RAM.1 / 2;
        assert!(
            singles
                .iter()
                .all(|&p| p % PAGE_SIZE == 0 && p >= NS_RAM.0 && p < half)
        );
        assert!(singles.windows(2).all(|w| w[0].abs_diff(w[1]) > PAGE_SIZE));
        let run = pages.contiguous(16).unwrap();
        assert_eq!(run, half);
        assert_eq!(pages.contiguous(1), Some(half + 16 * PAGE_SIZE));
        pages.free(&[singles[7]]);
        assert_eq!(pages.page(), Some(singles[7]));
        assert_eq!(pages.contiguous(NS_PAGES), None);
    }
}
