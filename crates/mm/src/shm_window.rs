//! The dynamic shared-memory window: where a page of shared memory gets mapped.
//!
//! [`ShmWindow`] owns the four structures that must agree — the VA window allocator, the
//! translation tables, the reverse map, and the record of each mapping — and changes them only
//! together. Before anything is mapped, every physical page is checked against the memory map
//! (invariant 1: an NS mapping only ever points at normal-world memory). [`ShmWindow::check_agreement`]
//! walks all of them and reports every disagreement; tests call it after every step.

use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr, VirtPages};
use crate::memmap::{MemoryMap, RegionKind};
use crate::reverse_map::{ReverseEntry, ReverseMap};
use crate::tables::{MemKind, TableError, TranslationTables};
use crate::va_window::{VaWindow, VaWindowConfig, VaWindowError};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_platform::{TablePoolStats, TlbMaintenance};

/// How the window is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmWindowConfig {
    /// Where the window lies, its size, and the guard pages after each mapping.
    pub va: VaWindowConfig,
    /// Most translation-table pages the core may use (root included).
    pub max_table_pages: usize,
}

/// Why a map or unmap was refused. State is unchanged whenever one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A map of zero pages.
    #[error("nothing to map")]
    Empty,
    /// A physical page is not 4 KiB aligned.
    #[error("physical page {0:#x} is not 4 KiB aligned")]
    UnalignedPage(u64),
    /// A physical page is not memory of the kind the mapping asks for (for shared memory: not
    /// normal-world RAM).
    #[error("physical page {pa:#x} may not be mapped as {kind:?}")]
    Forbidden {
        /// The page.
        pa: u64,
        /// The kind asked for.
        kind: MemKind,
    },
    /// No VA room.
    #[error(transparent)]
    Va(#[from] VaWindowError),
    /// No table memory (or another table failure).
    #[error(transparent)]
    Table(#[from] TableError),
    /// No mapping starts at that address.
    #[error("no mapping starts at {0:#x}")]
    UnknownMapping(u64),
    /// A static mapping would overlap the dynamic window.
    #[error("static range {0:?} overlaps the SHM window")]
    OverlapsWindow(VirtPages),
    /// A static mapping would replace a valid entry.
    #[error("virtual page {0:#x} is already mapped")]
    AlreadyMapped(u64),
}

/// One live mapping of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The guest it belongs to.
    pub owner: GuestId,
    /// Where it is mapped.
    pub range: VirtPages,
    /// What it maps.
    pub kind: MemKind,
}

/// A way the structures of the window disagree (see [`ShmWindow::check_agreement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disagreement {
    /// The VA allocator's own bookkeeping is broken.
    Allocator(String),
    /// The allocator holds a range no mapping records.
    RangeWithoutMapping(VirtPages),
    /// A mapping's range is not live in the allocator.
    MappingWithoutRange(VirtPages),
    /// A page of a mapping has no valid table entry.
    PageNotMapped(VirtAddr),
    /// A table entry has other attributes than its mapping's kind.
    WrongKind {
        /// The page.
        va: VirtAddr,
        /// Kind of the mapping.
        expected: MemKind,
        /// Kind decoded from the descriptor.
        found: Option<MemKind>,
    },
    /// A valid table entry in the window belongs to no mapping.
    StrayTableEntry {
        /// Virtual page.
        va: VirtAddr,
        /// Where it points.
        pa: PhysAddr,
    },
    /// A mapped page lacks its reverse-map entry.
    MissingReverse(ReverseEntry),
    /// A reverse-map entry matches no table entry of that owner's mappings.
    StrayReverse(ReverseEntry),
    /// A page is mapped as a kind its memory-map region does not allow.
    Isolation {
        /// Virtual page.
        va: VirtAddr,
        /// Where it points.
        pa: PhysAddr,
        /// The kind mapped.
        kind: MemKind,
    },
    /// Table pages were taken without a reservation (the bound in `tables` was wrong).
    UnreservedTablePages(u64),
}

/// The dynamic SHM window with its allocator, tables, reverse map and mapping records.
pub struct ShmWindow<T: TlbMaintenance> {
    memory_map: MemoryMap,
    va: VaWindow,
    tables: TranslationTables<T>,
    reverse: ReverseMap,
    mappings: BTreeMap<VirtAddr, Mapping>,
    mapped_pages: u64,
}

impl<T: TlbMaintenance> ShmWindow<T> {
    /// An empty window over `memory_map`.
    ///
    /// # Errors
    /// A bad VA configuration, or a table pool too small for the root table.
    pub fn new(
        config: ShmWindowConfig,
        memory_map: MemoryMap,
        tlb: T,
    ) -> Result<Self, WindowError> {
        let va = VaWindow::new(config.va)?;
        let window = va.window().ok_or(VaWindowError::BadConfig {
            base: config.va.base.get(),
            size: config.va.size,
        })?;
        if window.end().get() > crate::tables::VA_SPACE_SIZE {
            return Err(TableError::OutOfRange(window.start().get()).into());
        }
        Ok(Self {
            memory_map,
            va,
            tables: TranslationTables::new(config.max_table_pages, tlb)?,
            reverse: ReverseMap::new(),
            mappings: BTreeMap::new(),
            mapped_pages: 0,
        })
    }

    /// Maps `pages` (in order, scattered) at a fresh contiguous VA range for `owner`.
    ///
    /// Every page is checked first: aligned, and of memory `kind` may map (normal-world memory for
    /// [`MemKind::NonSecureShared`]). If table memory runs short, empty tables are reclaimed once
    /// and the map retried.
    ///
    /// # Errors
    /// See [`WindowError`]; on error nothing changed.
    pub fn map(
        &mut self,
        owner: GuestId,
        pages: &[PhysAddr],
        kind: MemKind,
    ) -> Result<VirtPages, WindowError> {
        if pages.is_empty() {
            return Err(WindowError::Empty);
        }
        for &pa in pages {
            let page = PhysRange::page(pa).map_err(|_| WindowError::UnalignedPage(pa.get()))?;
            if !self.allowed(page, kind) {
                return Err(WindowError::Forbidden { pa: pa.get(), kind });
            }
        }
        let range = self.va.alloc(pages.len() as u64, PAGE_SIZE)?;
        let mut result = self.tables.map_pages(range, pages, kind);
        if matches!(result, Err(TableError::OutOfTableMemory { .. })) {
            self.tables.compact();
            result = self.tables.map_pages(range, pages, kind);
        }
        if let Err(e) = result {
            // Cannot fail: the range was allocated just above.
            let _ = self.va.free(range.start());
            return Err(e.into());
        }
        let mut va = range.start();
        for &pa in pages {
            self.reverse.insert(ReverseEntry { pa, owner, va });
            va = VirtAddr(va.get() + PAGE_SIZE);
        }
        self.mappings
            .insert(range.start(), Mapping { owner, range, kind });
        self.mapped_pages += range.pages();
        Ok(range)
    }

    /// Maps `pages` (in order) at `range`, outside the window, into the same tables: the boot-time
    /// static mappings of the secure world itself (its code, data, heap and devices), so one root
    /// table serves both. Such a mapping is not recorded as a window mapping, has no owner and no
    /// reverse entries, and stays for the life of the tables; [`check_agreement`](Self::check_agreement)
    /// keeps looking at the window only.
    ///
    /// Every page is checked against the memory map as for [`map`](Self::map) (secure kinds only
    /// onto secure RAM, devices only onto device regions, shared memory only onto normal-world
    /// memory), the range may not overlap the window, and no page of it may be mapped already.
    ///
    /// # Errors
    /// [`WindowError::OverlapsWindow`], [`WindowError::AlreadyMapped`], the errors of
    /// [`map`](Self::map) about pages, or a table error (length mismatch, range outside the
    /// tables, no table memory); on error nothing changed.
    pub fn map_static(
        &mut self,
        range: VirtPages,
        pages: &[PhysAddr],
        kind: MemKind,
    ) -> Result<(), WindowError> {
        if pages.is_empty() {
            return Err(WindowError::Empty);
        }
        if let Some(window) = self.va.window() {
            if range.start() < window.end() && window.start() < range.end() {
                return Err(WindowError::OverlapsWindow(range));
            }
        }
        for &pa in pages {
            let page = PhysRange::page(pa).map_err(|_| WindowError::UnalignedPage(pa.get()))?;
            if !self.allowed(page, kind) {
                return Err(WindowError::Forbidden { pa: pa.get(), kind });
            }
        }
        let mut taken = None;
        self.tables.for_each_mapping(range, &mut |va, _| {
            taken.get_or_insert(va);
        });
        if let Some(va) = taken {
            return Err(WindowError::AlreadyMapped(va.get()));
        }
        let mut result = self.tables.map_pages(range, pages, kind);
        if matches!(result, Err(TableError::OutOfTableMemory { .. })) {
            self.tables.compact();
            result = self.tables.map_pages(range, pages, kind);
        }
        result.map_err(WindowError::from)
    }

    /// Removes the mapping that starts at `start`: reverse entries, table entries (one TLB
    /// request for the batch), then the VA range.
    ///
    /// # Errors
    /// [`WindowError::UnknownMapping`] if no mapping starts there; nothing changes then.
    pub fn unmap(&mut self, start: VirtAddr) -> Result<Mapping, WindowError> {
        let mapping = self
            .mappings
            .remove(&start)
            .ok_or(WindowError::UnknownMapping(start.get()))?;
        let reverse = &mut self.reverse;
        let owner = mapping.owner;
        self.tables
            .for_each_mapping(mapping.range, &mut |va, translation| {
                reverse.remove(ReverseEntry {
                    pa: translation.pa,
                    owner,
                    va,
                });
            });
        self.tables.unmap(mapping.range);
        let _ = self.va.free(start);
        self.mapped_pages -= mapping.range.pages();
        Ok(mapping)
    }

    /// The mapping holding `va`, if any.
    pub fn mapping_at(&self, va: VirtAddr) -> Option<&Mapping> {
        let (_, mapping) = self.mappings.range(..=va).next_back()?;
        mapping.range.contains(va).then_some(mapping)
    }

    /// Live mappings in address order.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> + '_ {
        self.mappings.values()
    }

    /// Pages mapped in the window.
    pub fn mapped_pages(&self) -> u64 {
        self.mapped_pages
    }

    /// Physical address of `va`, by a walk of the tables.
    pub fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        self.tables.virt_to_phys(va)
    }

    /// Virtual address of `pa` in the window: `owner`'s mapping if given, else anyone's.
    pub fn phys_to_virt(&self, pa: PhysAddr, owner: Option<GuestId>) -> Option<VirtAddr> {
        self.reverse.phys_to_virt(pa, owner)
    }

    /// Every mapping of the page holding `pa`.
    pub fn mappings_of(&self, pa: PhysAddr) -> impl Iterator<Item = ReverseEntry> + '_ {
        self.reverse.mappings_of(pa)
    }

    /// The VA allocator (read only).
    pub fn va_window(&self) -> &VaWindow {
        &self.va
    }

    /// The translation tables (read only).
    pub fn tables(&self) -> &TranslationTables<T> {
        &self.tables
    }

    /// The translation tables' TLB maintenance, for tests and the platform.
    pub fn tlb_mut(&mut self) -> &mut T {
        self.tables.tlb_mut()
    }

    /// The memory map the window checks against.
    pub fn memory_map(&self) -> &MemoryMap {
        &self.memory_map
    }

    /// Table-page counters.
    pub fn table_stats(&self) -> TablePoolStats {
        self.tables.pool_stats()
    }

    /// Frees empty translation tables now (normally done lazily when table memory runs short).
    pub fn compact_tables(&mut self) {
        self.tables.compact();
    }

    fn allowed(&self, page: PhysRange, kind: MemKind) -> bool {
        match kind {
            MemKind::NonSecureShared => self.memory_map.is_non_secure(page),
            MemKind::SecureRam | MemKind::SecureCode => {
                self.memory_map.is_kind(page, RegionKind::SecureRam)
            }
            MemKind::Device => self.memory_map.is_kind(page, RegionKind::Device),
        }
    }

    /// Walks the allocator, the tables, the reverse map and the mapping records, and returns
    /// every disagreement between them (empty when all agree).
    ///
    /// Checks: the allocator is sound and its live ranges are exactly the mappings' ranges; every
    /// page of every mapping has a valid entry of the mapping's kind whose physical page the
    /// memory map allows for that kind and whose reverse entry exists; no other valid entry exists
    /// in the window; no reverse entry lacks its table entry; no table page was taken unreserved.
    /// Cost: linear in mapped pages and live ranges, plus a walk of the window's tables.
    pub fn check_agreement(&self) -> Vec<Disagreement> {
        let mut found = Vec::new();
        found.extend(self.va.check().into_iter().map(Disagreement::Allocator));
        let live: Vec<VirtPages> = self.va.live_ranges().collect();
        for range in &live {
            if self.mappings.get(&range.start()).map(|m| m.range) != Some(*range) {
                found.push(Disagreement::RangeWithoutMapping(*range));
            }
        }
        for mapping in self.mappings.values() {
            if self.va.range_containing(mapping.range.start()) != Some(mapping.range) {
                found.push(Disagreement::MappingWithoutRange(mapping.range));
            }
        }
        // One walk over the whole window: each valid entry must belong to a mapping.
        let mut seen_pages = 0u64;
        let mut seen = BTreeSet::<VirtAddr>::new();
        if let Some(window) = self.va.window() {
            self.tables
                .for_each_mapping(window, &mut |va, translation| {
                    let Some(mapping) = self.mapping_at(va) else {
                        found.push(Disagreement::StrayTableEntry {
                            va,
                            pa: translation.pa,
                        });
                        return;
                    };
                    seen_pages += 1;
                    seen.insert(va);
                    if translation.kind != Some(mapping.kind) {
                        found.push(Disagreement::WrongKind {
                            va,
                            expected: mapping.kind,
                            found: translation.kind,
                        });
                    }
                    let allowed = PhysRange::page(translation.pa)
                        .is_ok_and(|page| self.allowed(page, mapping.kind));
                    if !allowed {
                        found.push(Disagreement::Isolation {
                            va,
                            pa: translation.pa,
                            kind: mapping.kind,
                        });
                    }
                    let entry = ReverseEntry {
                        pa: translation.pa,
                        owner: mapping.owner,
                        va,
                    };
                    if !self.reverse.contains(entry) {
                        found.push(Disagreement::MissingReverse(entry));
                    }
                });
        }
        if seen_pages != self.mapped_pages {
            for mapping in self.mappings.values() {
                let mut va = mapping.range.start();
                while va < mapping.range.end() {
                    if !seen.contains(&va) {
                        found.push(Disagreement::PageNotMapped(va));
                    }
                    va = VirtAddr(va.get() + PAGE_SIZE);
                }
            }
        }
        for entry in self.reverse.iter() {
            let matches = self
                .mapping_at(entry.va)
                .is_some_and(|m| m.owner == entry.owner)
                && self
                    .tables
                    .translate_page(entry.va)
                    .is_some_and(|t| t.pa == entry.pa);
            if !matches {
                found.push(Disagreement::StrayReverse(entry));
            }
        }
        let unreserved = self.tables.pool_stats().unreserved_allocations;
        if unreserved != 0 {
            found.push(Disagreement::UnreservedTablePages(unreserved));
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::Region;
    use proptest::prelude::*;
    use teeshm_platform::{RecordingTlb, TlbRequest};

    const NS_RAM: u64 = 0x4000_0000;
    const SECURE_RAM: u64 = 0x0e00_0000;
    const WINDOW: u64 = 0x10_0000_0000;

    fn memory_map() -> MemoryMap {
        let region = |start, len, kind| Region {
            range: PhysRange::new(PhysAddr(start), len).unwrap(),
            kind,
        };
        MemoryMap::new(&[
            region(NS_RAM, 0x4000_0000, RegionKind::NonSecureRam),
            region(SECURE_RAM, 0x100_0000, RegionKind::SecureRam),
            region(0x0900_0000, 0x1000, RegionKind::Device),
        ])
        .unwrap()
    }

    fn window(pages: u64, guard_pages: u64) -> ShmWindow<RecordingTlb> {
        let config = ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(WINDOW),
                size: pages * PAGE_SIZE,
                guard_pages,
            },
            max_table_pages: 64,
        };
        ShmWindow::new(config, memory_map(), RecordingTlb::new()).unwrap()
    }

    fn ns(pages: &[u64]) -> Vec<PhysAddr> {
        pages
            .iter()
            .map(|p| PhysAddr(NS_RAM + p * PAGE_SIZE))
            .collect()
    }

    #[test]
    fn map_lookup_unmap() {
        let mut w = window(1024, 1);
        let g1 = GuestId(1);
        let g2 = GuestId(2);
        let a = w
            .map(g1, &ns(&[7, 3, 9]), MemKind::NonSecureShared)
            .unwrap();
        // The same physical page mapped again, by another guest.
        let b = w.map(g2, &ns(&[3]), MemKind::NonSecureShared).unwrap();
        assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
        let pa3 = PhysAddr(NS_RAM + 3 * PAGE_SIZE + 0x10);
        assert_eq!(
            w.phys_to_virt(pa3, Some(g1)),
            Some(VirtAddr(a.start().get() + PAGE_SIZE + 0x10))
        );
        assert_eq!(
            w.phys_to_virt(pa3, Some(g2)),
            Some(VirtAddr(b.start().get() + 0x10))
        );
        assert_eq!(w.mappings_of(pa3).count(), 2);
        assert_eq!(
            w.virt_to_phys(VirtAddr(a.start().get() + 2 * PAGE_SIZE + 5)),
            Some(PhysAddr(NS_RAM + 9 * PAGE_SIZE + 5))
        );
        w.tlb_mut().clear();
        let removed = w.unmap(a.start()).unwrap();
        assert_eq!(removed.owner, g1);
        assert_eq!(
            w.tables().tlb().requests(),
            &[TlbRequest::Pages {
                va: a.start().get(),
                pages: 3
            }]
        );
        assert_eq!(w.phys_to_virt(pa3, Some(g1)), None);
        assert_eq!(
            w.phys_to_virt(pa3, None),
            Some(VirtAddr(b.start().get() + 0x10))
        );
        assert_eq!(
            w.unmap(a.start()),
            Err(WindowError::UnknownMapping(a.start().get()))
        );
        w.unmap(b.start()).unwrap();
        assert!(w.check_agreement().is_empty());
        assert_eq!(w.mapped_pages(), 0);
        assert_eq!(w.va_window().live_count(), 0);
    }

    #[test]
    fn isolation_is_enforced_before_anything_changes() {
        let mut w = window(64, 0);
        for (pa, kind) in [
            (SECURE_RAM, MemKind::NonSecureShared),
            (0x0900_0000, MemKind::NonSecureShared),
            (0x3fff_f000, MemKind::NonSecureShared),
            (NS_RAM, MemKind::SecureRam),
            (NS_RAM, MemKind::Device),
        ] {
            let pages = [PhysAddr(NS_RAM), PhysAddr(pa)];
            assert_eq!(
                w.map(GuestId(1), &pages, kind),
                Err(WindowError::Forbidden { pa, kind })
            );
        }
        assert_eq!(
            w.map(
                GuestId(1),
                &[PhysAddr(NS_RAM + 1)],
                MemKind::NonSecureShared
            ),
            Err(WindowError::UnalignedPage(NS_RAM + 1))
        );
        assert_eq!(
            w.map(GuestId(1), &[], MemKind::NonSecureShared),
            Err(WindowError::Empty)
        );
        assert_eq!(w.va_window().live_count(), 0);
        assert_eq!(w.mapped_pages(), 0);
        w.map(GuestId(0), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam)
            .unwrap();
        w.map(GuestId(0), &[PhysAddr(0x0900_0000)], MemKind::Device)
            .unwrap();
        assert!(w.check_agreement().is_empty());
    }

    #[test]
    fn static_mappings_share_the_tables_but_not_the_window() {
        let mut w = window(64, 1);
        let secure = |first: u64, n: u64| -> Vec<PhysAddr> {
            (0..n).map(|i| PhysAddr(first + i * PAGE_SIZE)).collect()
        };
        let code = VirtPages::new(VirtAddr(SECURE_RAM), 4).unwrap();
        w.map_static(code, &secure(SECURE_RAM, 4), MemKind::SecureCode)
            .unwrap();
        let data = VirtPages::new(VirtAddr(SECURE_RAM + 0x4000), 600).unwrap();
        w.map_static(data, &secure(SECURE_RAM + 0x4000, 600), MemKind::SecureRam)
            .unwrap();
        let uart = VirtPages::new(VirtAddr(0x0900_0000), 1).unwrap();
        w.map_static(uart, &[PhysAddr(0x0900_0000)], MemKind::Device)
            .unwrap();
        let tables = w.tables();
        assert_eq!(
            tables
                .translate_page(VirtAddr(SECURE_RAM + 0x3000))
                .map(|t| t.kind),
            Some(Some(MemKind::SecureCode))
        );
        assert_eq!(
            tables.virt_to_phys(VirtAddr(SECURE_RAM + 0x25_7123)),
            Some(PhysAddr(SECURE_RAM + 0x25_7123))
        );
        assert_eq!(
            tables.translate_page(VirtAddr(0x0900_0000)).map(|t| t.kind),
            Some(Some(MemKind::Device))
        );
        // Not window mappings: nothing recorded, and the checker (window only) is content.
        assert_eq!(w.mapped_pages(), 0);
        assert_eq!(w.mappings().count(), 0);
        assert_eq!(w.va_window().live_count(), 0);
        assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
        // The window works beside them, and its checker still sees only the window.
        let r = w
            .map(GuestId(1), &ns(&[5, 2]), MemKind::NonSecureShared)
            .unwrap();
        assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
        w.unmap(r.start()).unwrap();
        w.compact_tables();
        assert_eq!(
            w.tables().virt_to_phys(VirtAddr(SECURE_RAM)),
            Some(PhysAddr(SECURE_RAM)),
            "compaction keeps static tables"
        );
        assert!(w.check_agreement().is_empty());
    }

    #[test]
    fn static_mappings_are_checked_and_change_nothing_on_error() {
        let mut w = window(64, 1);
        let one = |va: u64| VirtPages::new(VirtAddr(va), 1).unwrap();
        // Overlapping the window, at its start or straddling its end.
        assert_eq!(
            w.map_static(one(WINDOW), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam),
            Err(WindowError::OverlapsWindow(one(WINDOW)))
        );
        let straddle = VirtPages::new(VirtAddr(WINDOW - PAGE_SIZE), 2).unwrap();
        assert_eq!(
            w.map_static(
                straddle,
                &[PhysAddr(SECURE_RAM), PhysAddr(SECURE_RAM + PAGE_SIZE)],
                MemKind::SecureRam
            ),
            Err(WindowError::OverlapsWindow(straddle))
        );
        let last = WINDOW + 63 * PAGE_SIZE;
        assert!(matches!(
            w.map_static(one(last), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam),
            Err(WindowError::OverlapsWindow(_))
        ));
        // Kinds onto the wrong memory.
        for (pa, kind) in [
            (NS_RAM, MemKind::SecureCode),
            (NS_RAM, MemKind::SecureRam),
            (0x0900_0000, MemKind::SecureCode),
            (SECURE_RAM, MemKind::NonSecureShared),
            (SECURE_RAM, MemKind::Device),
        ] {
            assert_eq!(
                w.map_static(one(0x1000_0000), &[PhysAddr(pa)], kind),
                Err(WindowError::Forbidden { pa, kind })
            );
        }
        assert_eq!(
            w.map_static(
                one(0x1000_0000),
                &[PhysAddr(SECURE_RAM + 8)],
                MemKind::SecureRam
            ),
            Err(WindowError::UnalignedPage(SECURE_RAM + 8))
        );
        assert_eq!(
            w.map_static(one(0x1000_0000), &[], MemKind::SecureRam),
            Err(WindowError::Empty)
        );
        assert!(matches!(
            w.map_static(
                one(0x1000_0000),
                &[PhysAddr(SECURE_RAM), PhysAddr(SECURE_RAM)],
                MemKind::SecureRam
            ),
            Err(WindowError::Table(TableError::LengthMismatch { .. }))
        ));
        let mut any = false;
        w.tables().for_each_mapping(
            VirtPages::new(VirtAddr(0), 1 << 20).unwrap(),
            &mut |_, _| any = true,
        );
        assert!(!any, "nothing was mapped by a refused static map");
        // A second static map over a mapped page is refused and leaves the first as it was.
        w.map_static(
            one(0x1000_0000),
            &[PhysAddr(SECURE_RAM)],
            MemKind::SecureRam,
        )
        .unwrap();
        let two = VirtPages::new(VirtAddr(0x0fff_f000), 2).unwrap();
        assert_eq!(
            w.map_static(
                two,
                &[
                    PhysAddr(SECURE_RAM + PAGE_SIZE),
                    PhysAddr(SECURE_RAM + 2 * PAGE_SIZE)
                ],
                MemKind::SecureRam
            ),
            Err(WindowError::AlreadyMapped(0x1000_0000))
        );
        assert_eq!(w.tables().virt_to_phys(VirtAddr(0x0fff_f000)), None);
        assert_eq!(
            w.tables().virt_to_phys(VirtAddr(0x1000_0000)),
            Some(PhysAddr(SECURE_RAM))
        );
        assert!(w.check_agreement().is_empty());
    }

    #[test]
    fn window_full_is_an_error_with_state_kept() {
        let mut w = window(4, 0);
        w.map(GuestId(1), &ns(&[1, 2, 3]), MemKind::NonSecureShared)
            .unwrap();
        let err = w
            .map(GuestId(1), &ns(&[4, 5]), MemKind::NonSecureShared)
            .unwrap_err();
        assert!(
            matches!(
                err,
                WindowError::Va(VaWindowError::NoSpace {
                    largest_free: 1,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(w.mapped_pages(), 3);
        assert!(w.check_agreement().is_empty());
    }

    #[test]
    fn table_memory_is_reclaimed_lazily_then_refused() {
        // Root + L2 + one L3 fit; a mapping in a second 2 MiB span needs another L3.
        let config = ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(WINDOW),
                size: 1024 * PAGE_SIZE,
                guard_pages: 0,
            },
            max_table_pages: 3,
        };
        let mut w = ShmWindow::new(config, memory_map(), RecordingTlb::new()).unwrap();
        let a = w
            .map(GuestId(1), &ns(&[0; 500]), MemKind::NonSecureShared)
            .unwrap();
        let err = w
            .map(GuestId(1), &ns(&[1; 20]), MemKind::NonSecureShared)
            .unwrap_err();
        assert!(
            matches!(err, WindowError::Table(TableError::OutOfTableMemory { .. })),
            "{err:?}"
        );
        assert!(w.check_agreement().is_empty());
        w.unmap(a.start()).unwrap();
        // The L3 table is now empty but still linked; the map reclaims it and succeeds.
        let b = w
            .map(GuestId(1), &ns(&[1; 20]), MemKind::NonSecureShared)
            .unwrap();
        assert!(b.start().get() >= WINDOW);
        assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
    }

    #[test]
    fn checker_sees_each_kind_of_disagreement() {
        let mut w = window(64, 0);
        let a = w
            .map(GuestId(1), &ns(&[1, 2]), MemKind::NonSecureShared)
            .unwrap();
        // A reverse entry lost.
        let entry = ReverseEntry {
            pa: PhysAddr(NS_RAM + PAGE_SIZE),
            owner: GuestId(1),
            va: a.start(),
        };
        w.reverse.remove(entry);
        assert_eq!(w.check_agreement(), [Disagreement::MissingReverse(entry)]);
        w.reverse.insert(entry);
        // A reverse entry for another owner that has no such mapping.
        let stray = ReverseEntry {
            owner: GuestId(2),
            ..entry
        };
        w.reverse.insert(stray);
        assert_eq!(w.check_agreement(), [Disagreement::StrayReverse(stray)]);
        w.reverse.remove(stray);
        // A table entry outside every mapping, pointing at secure RAM.
        let rogue = VirtPages::new(VirtAddr(WINDOW + 40 * PAGE_SIZE), 1).unwrap();
        w.tables
            .map_pages(rogue, &[PhysAddr(SECURE_RAM)], MemKind::SecureRam)
            .unwrap();
        assert_eq!(
            w.check_agreement(),
            [Disagreement::StrayTableEntry {
                va: rogue.start(),
                pa: PhysAddr(SECURE_RAM)
            }]
        );
        w.tables.unmap(rogue);
        // A page of a mapping unmapped behind the window's back.
        let second = VirtPages::new(VirtAddr(a.start().get() + PAGE_SIZE), 1).unwrap();
        w.tables.unmap(second);
        let found = w.check_agreement();
        assert!(
            found.contains(&Disagreement::PageNotMapped(second.start())),
            "{found:?}"
        );
        // Mapped again with other attributes.
        w.tables
            .map_pages(second, &ns(&[2]), MemKind::SecureRam)
            .unwrap();
        assert_eq!(
            w.check_agreement(),
            [Disagreement::WrongKind {
                va: second.start(),
                expected: MemKind::NonSecureShared,
                found: Some(MemKind::SecureRam)
            }]
        );
        // Mapped again as shared memory, but pointing at secure RAM.
        w.tables.unmap(second);
        w.tables
            .map_pages(second, &[PhysAddr(SECURE_RAM)], MemKind::NonSecureShared)
            .unwrap();
        let found = w.check_agreement();
        let isolation = Disagreement::Isolation {
            va: second.start(),
            pa: PhysAddr(SECURE_RAM),
            kind: MemKind::NonSecureShared,
        };
        assert!(found.contains(&isolation), "{found:?}");
        // The VA range freed behind the window's back.
        w.va.free(a.start()).unwrap();
        assert!(
            w.check_agreement()
                .contains(&Disagreement::MappingWithoutRange(a))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map {
            owner: u16,
            pages: Vec<u64>,
            secure: bool,
        },
        Unmap {
            pick: usize,
        },
        UnmapBogus {
            page: u64,
        },
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u16..4, proptest::collection::vec(0u64..64, 1..40), proptest::bool::weighted(0.1))
                .prop_map(|(owner, pages, secure)| Op::Map { owner, pages, secure }),
            3 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
            1 => (0u64..600).prop_map(|page| Op::UnmapBogus { page }),
            1 => Just(Op::Compact),
        ]
    }

    proptest! {
        /// Random maps (several owners, repeated physical pages, some refused) and unmaps: the
        /// checker finds no disagreement after any step, and lookups agree with a plain model.
        #[test]
        fn window_stays_in_agreement(ops in proptest::collection::vec(op(), 1..60)) {
            let mut w = window(512, 1);
            let mut live: Vec<(VirtPages, GuestId, Vec<PhysAddr>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Map { owner, pages, secure } => {
                        let mut list = ns(&pages);
                        if secure { list.push(PhysAddr(SECURE_RAM)); }
                        let before = w.mapped_pages();
                        match w.map(GuestId(owner), &list, MemKind::NonSecureShared) {
                            Ok(range) => {
                                prop_assert!(!secure);
                                live.push((range, GuestId(owner), list));
                            }
                            Err(WindowError::Forbidden { pa, .. }) => {
                                prop_assert!(secure);
                                prop_assert_eq!(pa, SECURE_RAM);
                                prop_assert_eq!(w.mapped_pages(), before);
                            }
                            Err(WindowError::Va(VaWindowError::NoSpace { .. })) => {}
                            Err(e) => prop_assert!(false, "unexpected {e:?}"),
                        }
                    }
                    Op::Unmap { pick } => {
                        if live.is_empty() { continue; }
                        let (range, owner, _) = live.swap_remove(pick % live.len());
                        let m = w.unmap(range.start()).unwrap();
                        prop_assert_eq!((m.range, m.owner), (range, owner));
                    }
                    Op::UnmapBogus { page } => {
                        let va = VirtAddr(WINDOW + page * PAGE_SIZE);
                        if !live.iter().any(|(r, _, _)| r.start() == va) {
                            prop_assert_eq!(w.unmap(va), Err(WindowError::UnknownMapping(va.get())));
                        }
                    }
                    Op::Compact => w.compact_tables(),
                }
                let problems = w.check_agreement();
                prop_assert!(problems.is_empty(), "{:?}", problems);
            }
            // Lookups agree with the model both ways.
            for (range, owner, list) in &live {
                for (i, pa) in list.iter().enumerate() {
                    let va = VirtAddr(range.start().get() + i as u64 * PAGE_SIZE);
                    prop_assert_eq!(w.virt_to_phys(va), Some(*pa));
                    let mine = w.phys_to_virt(*pa, Some(*owner)).unwrap();
                    // The owner's lowest mapping of that page.
                    let expected = live.iter().filter(|(_, o, _)| o == owner).flat_map(|(r, _, l)| {
                        l.iter().enumerate().filter(|(_, p)| *p == pa).map(move |(j, _)| r.start().get() + j as u64 * PAGE_SIZE)
                    }).min().unwrap();
                    prop_assert_eq!(mine, VirtAddr(expected));
                }
            }
        }
    }
}
