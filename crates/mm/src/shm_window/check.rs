//! The window's agreement checker: the allocator, the tables, the reverse map and the mapping
//! records walked against each other.

use super::ShmWindow;
use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr, VirtPages};
use crate::reverse_map::ReverseEntry;
use crate::tables::MemKind;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use teeshm_platform::TlbMaintenance;

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
    /// The reverse map's own tree is broken (order, balance, heights or count).
    ReverseShape(&'static str),
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

impl<T: TlbMaintenance> ShmWindow<T> {
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
        // The reverse entries found where they belong, and the pages they map.
        let mut reverse_found = 0usize;
        let mut mapped_pas = Vec::new();
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
                    if self.reverse.contains(entry) {
                        reverse_found += 1;
                    } else {
                        found.push(Disagreement::MissingReverse(entry));
                    }
                    mapped_pas.push(translation.pa);
                });
        }
        // The trees the mapped pages' entries are in keep their shape; an entry elsewhere is a
        // stray, found below by the count.
        if let Err(fault) = self.reverse.check_buckets_of(mapped_pas.into_iter()) {
            found.push(Disagreement::ReverseShape(fault));
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
        // A window page holds one entry at most, so when every mapped page's entry was found
        // and there are no more, there is no stray: the full scan (every bucket of the
        // window) runs only to name them.
        if self.reverse.len() != reverse_found {
            if let Err(fault) = self.reverse.check() {
                found.push(Disagreement::ReverseShape(fault));
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
        }
        let unreserved = self.tables.pool_stats().unreserved_allocations;
        if unreserved != 0 {
            found.push(Disagreement::UnreservedTablePages(unreserved));
        }
        found
    }
}
