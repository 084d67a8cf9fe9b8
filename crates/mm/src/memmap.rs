//! The physical memory map: which physical ranges are secure RAM, non-secure RAM, the reserved
//! shared-memory pool, or devices, and the checks every mapping of shared memory goes through.

use crate::addr::{PhysAddr, PhysRange};
use alloc::vec::Vec;

/// What a physical region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// RAM only the secure world may reach.
    SecureRam,
    /// Normal-world RAM; the source of registered (dynamic) shared memory.
    NonSecureRam,
    /// The normal world's fixed shared-memory pool (the old carve-out, `GET_SHM_CONFIG`).
    ReservedShm,
    /// Device registers.
    Device,
}

impl RegionKind {
    /// Whether the normal world may own memory of this kind.
    pub const fn is_non_secure_memory(self) -> bool {
        matches!(self, RegionKind::NonSecureRam | RegionKind::ReservedShm)
    }
}

/// One typed region of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The physical range.
    pub range: PhysRange,
    /// What it is.
    pub kind: RegionKind,
}

/// The memory map could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemoryMapError {
    /// Two regions share at least one byte.
    #[error("region {first:?} overlaps region {second:?}")]
    Overlap {
        /// The lower region.
        first: PhysRange,
        /// The region that starts inside it.
        second: PhysRange,
    },
    /// The heap refused memory for the map.
    #[error("out of memory building the memory map")]
    OutOfMemory,
}

/// A sorted, non-overlapping set of typed regions. Lookups are O(log regions).
#[derive(Debug, Clone, Default)]
pub struct MemoryMap {
    /// Sorted by start; no two overlap.
    regions: Vec<Region>,
}

impl MemoryMap {
    /// Builds the map; the order of `regions` does not matter.
    ///
    /// # Errors
    /// [`MemoryMapError::Overlap`] names the first two regions that overlap.
    pub fn new(regions: &[Region]) -> Result<Self, MemoryMapError> {
        let mut sorted = Vec::new();
        sorted
            .try_reserve_exact(regions.len())
            .map_err(|_| MemoryMapError::OutOfMemory)?;
        sorted.extend_from_slice(regions);
        sorted.sort_unstable_by_key(|r| r.range.start());
        for pair in sorted.windows(2) {
            if let [a, b] = pair {
                if a.range.overlaps(b.range) {
                    return Err(MemoryMapError::Overlap {
                        first: a.range,
                        second: b.range,
                    });
                }
            }
        }
        Ok(Self { regions: sorted })
    }

    /// All regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Index of the region holding `pa`, if any.
    fn index_of(&self, pa: PhysAddr) -> Option<usize> {
        // First region that starts after `pa`; the one before it is the only candidate.
        let after = self.regions.partition_point(|r| r.range.start() <= pa);
        let index = after.checked_sub(1)?;
        let region = self.regions.get(index)?;
        (pa < region.range.end()).then_some(index)
    }

    /// The region holding `pa`.
    pub fn region_of(&self, pa: PhysAddr) -> Option<&Region> {
        self.index_of(pa).and_then(|i| self.regions.get(i))
    }

    /// The kind of memory of the whole `range`, if all of it lies in regions of one kind
    /// (adjacent regions of the same kind count as one). `None` for a hole or a mix.
    ///
    /// Cost: O(log regions) plus the number of regions the range spans.
    pub fn classify(&self, range: PhysRange) -> Option<RegionKind> {
        let first = self.index_of(range.start())?;
        let kind = self.regions.get(first)?.kind;
        let mut covered_to = self.regions.get(first)?.range.end();
        let mut next = first.saturating_add(1);
        while covered_to < range.end() {
            let region = self.regions.get(next)?;
            if region.range.start() != covered_to || region.kind != kind {
                return None;
            }
            covered_to = region.range.end();
            next = next.saturating_add(1);
        }
        Some(kind)
    }

    /// Whether all of `range` is normal-world memory (non-secure RAM or the reserved pool).
    pub fn is_non_secure(&self, range: PhysRange) -> bool {
        // Non-secure RAM next to the reserved pool is still non-secure as a whole.
        let Some(first) = self.index_of(range.start()) else {
            return false;
        };
        let mut index = first;
        let mut covered_to = range.start();
        loop {
            let Some(region) = self.regions.get(index) else {
                return false;
            };
            if region.range.start() > covered_to || !region.kind.is_non_secure_memory() {
                return false;
            }
            covered_to = region.range.end();
            if covered_to >= range.end() {
                return true;
            }
            index = index.saturating_add(1);
        }
    }

    /// Whether all of `range` is of kind `kind`.
    pub fn is_kind(&self, range: PhysRange, kind: RegionKind) -> bool {
        self.classify(range) == Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(start: u64, len: u64, kind: RegionKind) -> Region {
        Region {
            range: PhysRange::new(PhysAddr(start), len).unwrap(),
            kind,
        }
    }

    fn qemu_like() -> MemoryMap {
        MemoryMap::new(&[
            region(0x4000_0000, 0x4000_0000, RegionKind::NonSecureRam),
            region(0x0e00_0000, 0x0100_0000, RegionKind::SecureRam),
            region(0x0900_0000, 0x1000, RegionKind::Device),
            region(0x8000_0000, 0x0020_0000, RegionKind::ReservedShm),
        ])
        .unwrap()
    }

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr(start), len).unwrap()
    }

    #[test]
    fn classifies_regions() {
        let map = qemu_like();
        assert_eq!(
            map.classify(range(0x4000_0000, 0x1000)),
            Some(RegionKind::NonSecureRam)
        );
        assert_eq!(
            map.classify(range(0x0e00_0000, 0x1000)),
            Some(RegionKind::SecureRam)
        );
        assert_eq!(
            map.classify(range(0x0900_0000, 4)),
            Some(RegionKind::Device)
        );
        assert_eq!(
            map.classify(range(0x0f00_0000, 0x1000)),
            None,
            "just past secure RAM"
        );
        assert_eq!(
            map.classify(range(0x7fff_f000, 0x2000)),
            None,
            "NS RAM then pool: a mix"
        );
        assert!(
            map.is_non_secure(range(0x7fff_f000, 0x2000)),
            "but all of it is non-secure"
        );
        assert!(!map.is_non_secure(range(0x0e00_0000, 0x1000)));
        assert!(
            !map.is_non_secure(range(0x801f_f000, 0x2000)),
            "runs off the end of the pool"
        );
        assert!(
            !map.is_non_secure(range(0x3fff_f000, 0x2000)),
            "starts in a hole"
        );
        assert!(map.is_kind(range(0x8000_0000, 0x20_0000), RegionKind::ReservedShm));
    }

    #[test]
    fn overlap_is_refused() {
        let err = MemoryMap::new(&[
            region(0x1000, 0x2000, RegionKind::SecureRam),
            region(0x2fff, 0x10, RegionKind::NonSecureRam),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            MemoryMapError::Overlap {
                first: range(0x1000, 0x2000),
                second: range(0x2fff, 0x10)
            }
        );
        // Touching is fine.
        MemoryMap::new(&[
            region(0x1000, 0x1000, RegionKind::SecureRam),
            region(0x2000, 0x10, RegionKind::NonSecureRam),
        ])
        .unwrap();
    }

    proptest! {
        /// The map agrees with a linear scan of the same regions for any query.
        #[test]
        fn agrees_with_linear_model(
            lens in proptest::collection::vec((1u64..8, 0u64..3, 0usize..4), 1..12),
            q_start in 0u64..64, q_len in 1u64..16,
        ) {
            let kinds = [RegionKind::SecureRam, RegionKind::NonSecureRam, RegionKind::ReservedShm, RegionKind::Device];
            let mut regions = Vec::new();
            let mut at = 0;
            for (len, gap, k) in lens {
                at += gap;
                regions.push(region(at, len, kinds[k]));
                at += len;
            }
            let map = MemoryMap::new(&regions).unwrap();
            let kind_at = |a: u64| regions.iter().find(|r| r.range.start().0 <= a && a < r.range.end().0).map(|r| r.kind);
            let bytes: Vec<_> = (q_start..q_start + q_len).map(kind_at).collect();
            let model_classify = match bytes.first().copied().flatten() {
                Some(k) if bytes.iter().all(|b| *b == Some(k)) => Some(k),
                _ => None,
            };
            let model_ns = bytes.iter().all(|b| b.is_some_and(|k| k.is_non_secure_memory()));
            let q = range(q_start, q_len);
            prop_assert_eq!(map.classify(q), model_classify);
            prop_assert_eq!(map.is_non_secure(q), model_ns);
        }
    }
}
