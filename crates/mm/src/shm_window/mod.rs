//! The dynamic shared-memory window: where a page of shared memory gets mapped.
//!
//! [`ShmWindow`] owns the four structures that must agree — the VA window allocator, the
//! translation tables, the reverse map, and the record of each mapping — and changes them only
//! together. Before anything is mapped, every physical page is checked against the memory map
//! (invariant 1: an NS mapping only ever points at normal-world memory). [`ShmWindow::check_agreement`]
//! walks all of them and reports every disagreement; tests call it after every step.

mod check;
#[cfg(test)]
mod tests;

use crate::addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr, VirtPages};
use crate::memmap::{MemoryMap, RegionKind};
use crate::reverse_map::{ReverseEntry, ReverseMap};
use crate::tables::{MemKind, TableError, TranslationTables};
use crate::va_window::{VaWindow, VaWindowConfig, VaWindowError};
use alloc::collections::BTreeMap;
use teeshm_abi::GuestId;
use teeshm_platform::{TablePoolStats, TlbMaintenance};

pub use check::Disagreement;

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
            reverse: ReverseMap::new(window),
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
        // Each page's reverse node holds what it maps: no table walk to find the entries.
        let mut va = mapping.range.start();
        while va < mapping.range.end() {
            self.reverse.remove_page(va);
            va = VirtAddr(va.get() + PAGE_SIZE);
        }
        self.tables.unmap(mapping.range);
        let _ = self.va.free(start);
        self.mapped_pages -= mapping.range.pages();
        Ok(mapping)
    }

    /// Maps the page `pa` as `kind` for the duration of `f` (reading one page of a page list):
    /// a page of VA and its table entry, with no record and no reverse entry, as nothing but
    /// `f` can reach the mapping while `&mut self` is held (a checker run inside `f` would
    /// report it). Unmapped, with its TLB invalidation, and its VA freed before this returns.
    ///
    /// # Errors
    /// [`WindowError::UnalignedPage`], [`WindowError::Forbidden`] (`pa` may not be mapped as
    /// `kind`), [`WindowError::Va`] when the window is full, or [`WindowError::Table`] when no
    /// table page is left; nothing is changed then.
    pub fn with_transient_page<R>(
        &mut self,
        pa: PhysAddr,
        kind: MemKind,
        f: impl FnOnce(&Self, VirtAddr) -> R,
    ) -> Result<R, WindowError> {
        let page = PhysRange::page(pa).map_err(|_| WindowError::UnalignedPage(pa.get()))?;
        if !self.allowed(page, kind) {
            return Err(WindowError::Forbidden { pa: pa.get(), kind });
        }
        let range = self.va.alloc(1, PAGE_SIZE)?;
        let mut result = self.tables.map_pages(range, &[pa], kind);
        if matches!(result, Err(TableError::OutOfTableMemory { .. })) {
            self.tables.compact();
            result = self.tables.map_pages(range, &[pa], kind);
        }
        if let Err(e) = result {
            let _ = self.va.free(range.start());
            return Err(e.into());
        }
        let out = f(self, range.start());
        self.tables.unmap(range);
        let _ = self.va.free(range.start());
        Ok(out)
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
            // A TA's pages live in its own address space, never in the core's window.
            MemKind::User(_) => false,
        }
    }
}
