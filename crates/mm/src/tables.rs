//! The TEE core's translation tables, on `aarch64-paging`.
//!
//! Table pages come from a [`TablePagePool`] that is filled with an upper bound of what a map can
//! need *before* the map starts, so running out of table memory is an error, never a panic.
//! Mappings in the dynamic window are always 4 KiB pages (`NO_BLOCK_MAPPINGS`) so any page can be
//! unmapped on its own. TLB maintenance is issued by this module through the platform's
//! [`TlbMaintenance`], once per unmap batch; `aarch64-paging` itself is used without its own
//! TLB handling (its `Mapping` is never marked active: the firmware programs TTBR0 itself).

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr, VirtPages};
use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, VaRange};
use teeshm_platform::{TablePagePool, TablePoolError, TablePoolStats, TlbMaintenance};

/// Level of the root table: level 1 gives a 39-bit (512 GiB) VA space, `TCR_EL1.T0SZ = 25`.
pub const ROOT_LEVEL: usize = 1;
/// Bytes of virtual address space the tables cover.
pub const VA_SPACE_SIZE: u64 = 1 << 39;

/// MAIR_EL1 attribute index of Device-nGnRE memory.
pub const MAIR_INDEX_DEVICE: u64 = 0;
/// MAIR_EL1 attribute index of Normal, inner and outer write-back cacheable memory.
pub const MAIR_INDEX_NORMAL_WB: u64 = 1;
/// The MAIR_EL1 value these indices assume: attr0 = 0x04 (Device-nGnRE), attr1 = 0xff
/// (Normal WB read/write-allocate, inner and outer).
pub const MAIR_EL1_VALUE: u64 = 0xff04;

/// What a mapping maps, which decides its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemKind {
    /// Normal-world RAM shared with the TEE: NS=1, normal write-back cacheable, inner shareable,
    /// never executable.
    NonSecureShared,
    /// Secure RAM: NS=0, normal write-back cacheable, inner shareable, never executable.
    SecureRam,
    /// Device registers: Device-nGnRE, never executable.
    Device,
    /// The secure world's own code and read-only data: NS=0, normal write-back cacheable, inner
    /// shareable, read-only, executable at EL1 (never at EL0). Only boot-time static mappings
    /// outside the window use it ([`ShmWindow::map_static`](crate::ShmWindow::map_static)).
    SecureCode,
    /// A page of a trusted application's own address space, reachable at EL0: normal
    /// write-back cacheable, inner shareable, non-global (tagged with the space's ASID), never
    /// executable at EL1.
    User(UserPage),
}

/// What a user page is and what the TA may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserPage {
    /// Secure memory (the TA's own, or another TA's shared with it) rather than the normal
    /// world's (NS=1).
    pub secure: bool,
    /// The TA may write it.
    pub writable: bool,
    /// The TA may execute it (then never writable).
    pub executable: bool,
}

impl UserPage {
    /// The TA's code: secure, read-only, executable.
    pub const CODE: UserPage = UserPage {
        secure: true,
        writable: false,
        executable: true,
    };
    /// The TA's read-only data: secure, read-only.
    pub const RODATA: UserPage = UserPage {
        secure: true,
        writable: false,
        executable: false,
    };
    /// The TA's data, heap and stack: secure, read-write.
    pub const DATA: UserPage = UserPage {
        secure: true,
        writable: true,
        executable: false,
    };

    /// Every combination teeshm writes (executable pages are never writable, nor normal-world
    /// ones executable; a secure memref page is `RODATA` or `DATA`).
    const ALL: [UserPage; 5] = [
        UserPage::CODE,
        UserPage::RODATA,
        UserPage::DATA,
        UserPage::shared(false, false),
        UserPage::shared(false, true),
    ];

    /// A memref parameter's page: `secure` (another TA's memory) or the normal world's,
    /// writable or not, never executable.
    pub const fn shared(secure: bool, writable: bool) -> UserPage {
        UserPage {
            secure,
            writable,
            executable: false,
        }
    }
}

impl MemKind {
    /// The stage-1 descriptor attributes of this kind (without `VALID`/`TABLE_OR_PAGE`).
    pub fn attributes(self) -> El1Attributes {
        let common = El1Attributes::ACCESSED | El1Attributes::UXN | El1Attributes::PXN;
        match self {
            MemKind::NonSecureShared => {
                common
                    | El1Attributes::NS
                    | El1Attributes::INNER_SHAREABLE
                    | El1Attributes::ATTRIBUTE_INDEX_1
            }
            MemKind::SecureRam => {
                common | El1Attributes::INNER_SHAREABLE | El1Attributes::ATTRIBUTE_INDEX_1
            }
            MemKind::Device => common | El1Attributes::ATTRIBUTE_INDEX_0,
            MemKind::SecureCode => {
                El1Attributes::ACCESSED
                    | El1Attributes::UXN
                    | El1Attributes::READ_ONLY
                    | El1Attributes::INNER_SHAREABLE
                    | El1Attributes::ATTRIBUTE_INDEX_1
            }
            MemKind::User(page) => {
                let mut a = El1Attributes::ACCESSED
                    | El1Attributes::USER
                    | El1Attributes::NON_GLOBAL
                    | El1Attributes::PXN
                    | El1Attributes::INNER_SHAREABLE
                    | El1Attributes::ATTRIBUTE_INDEX_1;
                if !page.secure {
                    a |= El1Attributes::NS;
                }
                if !page.writable {
                    a |= El1Attributes::READ_ONLY;
                }
                if !page.executable {
                    a |= El1Attributes::UXN;
                }
                a
            }
        }
    }

    /// The kind whose attributes are exactly `attributes` (ignoring `VALID`/`TABLE_OR_PAGE`).
    pub fn from_attributes(attributes: El1Attributes) -> Option<MemKind> {
        let bare = attributes - (El1Attributes::VALID | El1Attributes::TABLE_OR_PAGE);
        [
            MemKind::NonSecureShared,
            MemKind::SecureRam,
            MemKind::Device,
            MemKind::SecureCode,
        ]
        .into_iter()
        .chain(UserPage::ALL.into_iter().map(MemKind::User))
        .find(|k| k.attributes() == bare)
    }
}

/// What went wrong in the translation tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No table memory left for the tables this map needs.
    #[error("out of translation-table memory: {needed} pages needed, {available} available")]
    OutOfTableMemory {
        /// Table pages the map could need.
        needed: usize,
        /// Table pages the pool could provide.
        available: usize,
    },
    /// The heap refused memory.
    #[error("out of memory")]
    OutOfMemory,
    /// A physical page address is not 4 KiB aligned.
    #[error("physical page {0:#x} is not 4 KiB aligned")]
    UnalignedPage(u64),
    /// The number of pages given differs from the VA range's.
    #[error("{pages} physical pages for a VA range of {range_pages} pages")]
    LengthMismatch {
        /// Physical pages given.
        pages: u64,
        /// Pages in the VA range.
        range_pages: u64,
    },
    /// The VA range lies outside what the tables cover.
    #[error("virtual range {0:#x}.. is outside the translation tables")]
    OutOfRange(u64),
    /// aarch64-paging refused the update.
    #[error("translation table update refused: {0}")]
    Paging(&'static str),
}

impl From<TablePoolError> for TableError {
    fn from(e: TablePoolError) -> Self {
        match e {
            TablePoolError::Exhausted { needed, available } => {
                TableError::OutOfTableMemory { needed, available }
            }
            TablePoolError::OutOfMemory => TableError::OutOfMemory,
        }
    }
}

/// One page found by a walk: where it maps and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical page.
    pub pa: PhysAddr,
    /// Its memory kind (`None` if the attributes match no kind teeshm writes).
    pub kind: Option<MemKind>,
}

/// The core's stage-1 translation tables with their table-page pool and TLB maintenance.
pub struct TranslationTables<T: TlbMaintenance> {
    root: Mapping<TablePagePool, El1And0>,
    tlb: T,
}

impl<T: TlbMaintenance> TranslationTables<T> {
    /// Empty tables that may use at most `max_table_pages` pages (the root included).
    ///
    /// # Errors
    /// [`TableError::OutOfTableMemory`] if not even the root fits.
    pub fn new(max_table_pages: usize, tlb: T) -> Result<Self, TableError> {
        let pool = TablePagePool::new(max_table_pages);
        pool.reserve(1)?;
        let root = Mapping::with_asid_and_va_range(pool, 0, ROOT_LEVEL, El1And0, VaRange::Lower);
        Ok(Self { root, tlb })
    }

    /// Empty tables of a user address space tagged with `asid` (its TLB maintenance `tlb`
    /// invalidates by that ASID).
    ///
    /// # Errors
    /// [`TableError::OutOfTableMemory`] if not even the root fits.
    pub fn new_user(max_table_pages: usize, tlb: T, asid: u16) -> Result<Self, TableError> {
        let pool = TablePagePool::new(max_table_pages);
        pool.reserve(1)?;
        let root = Mapping::with_asid_and_va_range(
            pool,
            usize::from(asid),
            ROOT_LEVEL,
            El1And0,
            VaRange::Lower,
        );
        Ok(Self { root, tlb })
    }

    /// Physical address of the root table, for TTBR0_EL1.
    pub fn root_address(&self) -> PhysAddr {
        PhysAddr(self.root.root_address().0 as u64)
    }

    /// Table-page counters.
    pub fn pool_stats(&self) -> TablePoolStats {
        self.root.translation().stats()
    }

    /// The platform's TLB maintenance (the host recorder lets tests read what was asked).
    pub fn tlb(&self) -> &T {
        &self.tlb
    }

    /// Mutable access to the TLB maintenance (for tests that reset a recorder).
    pub fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// Maps `pages` (scattered physical pages, in order) at the consecutive pages of `range`.
    ///
    /// The range must be unmapped (the VA window guarantees it). Two passes: the first maps the
    /// range's first page in each 2 MiB span, which creates that span's last-level table; the
    /// second writes every page descriptor in one walk of the range. No TLB maintenance is needed:
    /// the entries were invalid, and invalid entries are never cached.
    ///
    /// # Errors
    /// Misaligned pages, a length mismatch, a range outside the tables, or no table memory; on
    /// error nothing stays mapped.
    pub fn map_pages(
        &mut self,
        range: VirtPages,
        pages: &[PhysAddr],
        kind: MemKind,
    ) -> Result<(), TableError> {
        let count = pages.len() as u64;
        if count != range.pages() {
            return Err(TableError::LengthMismatch {
                pages: count,
                range_pages: range.pages(),
            });
        }
        if let Some(bad) = pages.iter().find(|p| !p.is_page_aligned()) {
            return Err(TableError::UnalignedPage(bad.get()));
        }
        self.check_in_range(range)?;
        self.root.translation().reserve(tables_needed(range))?;
        let result = self.write_pages(range, pages, kind.attributes() | El1Attributes::VALID);
        if result.is_err() {
            self.unmap(range);
        }
        result
    }

    fn write_pages(
        &mut self,
        range: VirtPages,
        pages: &[PhysAddr],
        flags: El1Attributes,
    ) -> Result<(), TableError> {
        let start = range.start().get();
        let end = range.end().get();
        let span = granularity(2);
        let mut va = start;
        while va < end {
            let index = usize::try_from((va - start) / PAGE_SIZE).unwrap_or(usize::MAX);
            let pa = pages.get(index).ok_or(TableError::Paging("page index"))?;
            self.root
                .map_range(
                    &region_of(va, PAGE_SIZE),
                    PhysicalAddress(pa.get() as usize),
                    flags,
                    Constraints::NO_BLOCK_MAPPINGS,
                )
                .map_err(|e| TableError::Paging(map_error_name(&e)))?;
            va = (va / span + 1) * span;
        }
        if range.pages() == 1 {
            return Ok(());
        }
        let leaf_flags = flags | El1Attributes::TABLE_OR_PAGE;
        self.root
            .modify_range(
                &region_of(start, range.len_bytes()),
                &|chunk, descriptor| {
                    if descriptor.level() != 3 {
                        return Err(());
                    }
                    let offset = (chunk.start().0 as u64).wrapping_sub(start) / PAGE_SIZE;
                    let index = usize::try_from(offset).map_err(|_| ())?;
                    let pa = pages.get(index).ok_or(())?;
                    descriptor.set(PhysicalAddress(pa.get() as usize), leaf_flags)
                },
            )
            .map_err(|e| TableError::Paging(map_error_name(&e)))
    }

    /// Unmaps every page of `range` and then asks for one TLB invalidation of the whole batch.
    /// Tables that became entirely empty are freed by the library when a whole table's span is
    /// unmapped; partly empty ones wait for [`compact`](Self::compact).
    pub fn unmap(&mut self, range: VirtPages) {
        if self.check_in_range(range).is_err() {
            return;
        }
        let region = region_of(range.start().get(), range.len_bytes());
        // Without NO_BLOCK_MAPPINGS an aligned span that holds a subtable is cleared with one
        // descriptor write and its subtable freed, instead of being split.
        let _ = self.root.map_range(
            &region,
            PhysicalAddress(0),
            El1Attributes::empty(),
            Constraints::empty(),
        );
        self.tlb
            .invalidate_pages(range.start().get(), range.pages());
    }

    /// Frees translation tables left empty by unmaps, then invalidates the whole TLB (walk caches
    /// may hold the freed tables). Costs a walk of every table, so it runs only when table memory
    /// runs short or when asked.
    pub fn compact(&mut self) {
        self.root.compact_subtables();
        self.tlb.invalidate_all();
    }

    /// The physical address `va` translates to, by a table walk.
    pub fn virt_to_phys(&self, va: VirtAddr) -> Option<PhysAddr> {
        let page = self.translate_page(va.page_base())?;
        page.pa.checked_add(va.page_offset())
    }

    /// The translation of the page at `page` (4 KiB aligned), if valid.
    pub fn translate_page(&self, page: VirtAddr) -> Option<Translation> {
        if !page.is_page_aligned() || page.get() >= VA_SPACE_SIZE {
            return None;
        }
        let mut found = None;
        let region = region_of(page.get(), PAGE_SIZE);
        let _ = self.root.walk_range(&region, &mut |_, descriptor, level| {
            if level == 3 && descriptor.is_valid() {
                found = Some(Translation {
                    pa: PhysAddr(descriptor.output_address().0 as u64),
                    kind: MemKind::from_attributes(descriptor.flags()),
                });
            }
            Ok(())
        });
        found
    }

    /// Calls `f(va, translation)` for every valid page mapping inside `range`, in address order.
    /// A valid block mapping (never written by teeshm) is reported page by page with kind `None`.
    pub fn for_each_mapping(&self, range: VirtPages, f: &mut dyn FnMut(VirtAddr, Translation)) {
        if self.check_in_range(range).is_err() {
            return;
        }
        let region = region_of(range.start().get(), range.len_bytes());
        let _ = self
            .root
            .walk_range(&region, &mut |chunk, descriptor, level| {
                if !descriptor.is_valid() {
                    return Ok(());
                }
                let block_kind = if level == 3 {
                    MemKind::from_attributes(descriptor.flags())
                } else {
                    None
                };
                let mut va = chunk.start().0 as u64;
                while va < chunk.end().0 as u64 {
                    let offset_in_block = va % granularity(level);
                    let pa = (descriptor.output_address().0 as u64).wrapping_add(offset_in_block);
                    f(
                        VirtAddr(va),
                        Translation {
                            pa: PhysAddr(pa),
                            kind: block_kind,
                        },
                    );
                    va += PAGE_SIZE;
                }
                Ok(())
            });
    }

    fn check_in_range(&self, range: VirtPages) -> Result<(), TableError> {
        if range.end().get() > VA_SPACE_SIZE {
            return Err(TableError::OutOfRange(range.start().get()));
        }
        Ok(())
    }
}

/// Upper bound of the new tables a map of `range` can need: below the root, one table per
/// distinct span of the level above that the range touches.
fn tables_needed(range: VirtPages) -> usize {
    let first = range.start().get();
    let last = range.end().get() - 1;
    let mut total = 0usize;
    for level in (ROOT_LEVEL + 1)..=3 {
        let span = granularity(level - 1);
        let count = last / span - first / span + 1;
        total = total.saturating_add(usize::try_from(count).unwrap_or(usize::MAX));
    }
    total
}

/// Bytes covered by one entry of a table at `level`.
const fn granularity(level: usize) -> u64 {
    PAGE_SIZE << (9 * (3 - level))
}

fn region_of(va: u64, bytes: u64) -> MemoryRegion {
    MemoryRegion::new(va as usize, (va + bytes) as usize)
}

fn map_error_name(e: &aarch64_paging::MapError) -> &'static str {
    use aarch64_paging::MapError;
    match e {
        MapError::AddressRange(_) => "address out of range",
        MapError::InvalidVirtualAddress(_) => "invalid virtual address",
        MapError::RegionBackwards(_) => "region backwards",
        MapError::PteUpdateFault(_) => "descriptor update fault",
        MapError::InvalidFlags(_) => "invalid flags",
        MapError::BreakBeforeMakeViolation(_) => "break-before-make violation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use teeshm_platform::{RecordingTlb, TlbRequest};

    fn tables() -> TranslationTables<RecordingTlb> {
        TranslationTables::new(64, RecordingTlb::new()).unwrap()
    }

    fn pages(list: &[u64]) -> Vec<PhysAddr> {
        list.iter().map(|&p| PhysAddr(p)).collect()
    }

    #[test]
    fn scattered_pages_map_with_ns_attributes() {
        let mut t = tables();
        let range = VirtPages::new(VirtAddr(0x1_0000_0000), 3).unwrap();
        t.map_pages(
            range,
            &pages(&[0x4000_5000, 0x4000_6000, 0x4123_0000]),
            MemKind::NonSecureShared,
        )
        .unwrap();
        assert_eq!(
            t.virt_to_phys(VirtAddr(0x1_0000_0123)),
            Some(PhysAddr(0x4000_5123))
        );
        assert_eq!(
            t.virt_to_phys(VirtAddr(0x1_0000_2fff)),
            Some(PhysAddr(0x4123_0fff))
        );
        assert_eq!(t.virt_to_phys(VirtAddr(0x1_0000_3000)), None);
        let tr = t.translate_page(VirtAddr(0x1_0000_1000)).unwrap();
        assert_eq!(tr.kind, Some(MemKind::NonSecureShared));
        let attrs = MemKind::NonSecureShared.attributes();
        assert!(attrs.contains(El1Attributes::NS | El1Attributes::UXN | El1Attributes::PXN));
        assert!(attrs.contains(El1Attributes::INNER_SHAREABLE | El1Attributes::ATTRIBUTE_INDEX_1));
        assert!(
            !MemKind::Device
                .attributes()
                .contains(El1Attributes::ATTRIBUTE_INDEX_1)
        );
        assert!(
            t.tlb().requests().is_empty(),
            "mapping invalid entries needs no TLB maintenance"
        );
    }

    #[test]
    fn secure_code_is_read_only_and_executable_at_el1_only() {
        let code = MemKind::SecureCode.attributes();
        assert!(code.contains(El1Attributes::READ_ONLY | El1Attributes::UXN));
        assert!(!code.contains(El1Attributes::PXN), "executable at EL1");
        assert!(!code.contains(El1Attributes::NS), "secure memory");
        assert!(code.contains(El1Attributes::INNER_SHAREABLE | El1Attributes::ATTRIBUTE_INDEX_1));
        // W^X: every other kind is writable and never executable.
        for kind in [
            MemKind::NonSecureShared,
            MemKind::SecureRam,
            MemKind::Device,
        ] {
            let attrs = kind.attributes();
            assert!(
                attrs.contains(El1Attributes::PXN | El1Attributes::UXN),
                "{kind:?}"
            );
            assert!(!attrs.contains(El1Attributes::READ_ONLY), "{kind:?}");
        }
        for kind in [
            MemKind::NonSecureShared,
            MemKind::SecureRam,
            MemKind::Device,
            MemKind::SecureCode,
        ] {
            let valid = kind.attributes() | El1Attributes::VALID | El1Attributes::TABLE_OR_PAGE;
            assert_eq!(MemKind::from_attributes(valid), Some(kind));
        }
        let mut t = tables();
        let range = VirtPages::new(VirtAddr(0x0e00_0000), 2).unwrap();
        t.map_pages(
            range,
            &pages(&[0x0e00_0000, 0x0e00_1000]),
            MemKind::SecureCode,
        )
        .unwrap();
        assert_eq!(
            t.translate_page(VirtAddr(0x0e00_1000)),
            Some(Translation {
                pa: PhysAddr(0x0e00_1000),
                kind: Some(MemKind::SecureCode)
            })
        );
    }

    #[test]
    fn aligned_contiguous_run_still_uses_pages() {
        // 2 MiB aligned in VA and PA: a block would be legal, but the window must use pages so
        // a single page can be unmapped later.
        let mut t = tables();
        let range = VirtPages::new(VirtAddr(0x20_0000), 512).unwrap();
        let list: Vec<PhysAddr> = (0..512)
            .map(|i| PhysAddr(0x4020_0000 + i * PAGE_SIZE))
            .collect();
        t.map_pages(range, &list, MemKind::NonSecureShared).unwrap();
        let mut levels = Vec::new();
        t.for_each_mapping(range, &mut |_, tr| levels.push(tr.kind));
        assert_eq!(levels.len(), 512);
        assert!(levels.iter().all(|k| *k == Some(MemKind::NonSecureShared)));
        t.unmap(VirtPages::new(VirtAddr(0x20_1000), 1).unwrap());
        assert_eq!(t.virt_to_phys(VirtAddr(0x20_1000)), None);
        assert_eq!(
            t.virt_to_phys(VirtAddr(0x20_2000)),
            Some(PhysAddr(0x4020_2000))
        );
    }

    #[test]
    fn unmap_issues_one_tlb_request_per_batch() {
        let mut t = tables();
        let range = VirtPages::new(VirtAddr(0x40_0000), 64).unwrap();
        let list: Vec<PhysAddr> = (0..64)
            .map(|i| PhysAddr(0x5000_0000 + i * 3 * PAGE_SIZE))
            .collect();
        t.map_pages(range, &list, MemKind::NonSecureShared).unwrap();
        t.unmap(range);
        assert_eq!(
            t.tlb().requests(),
            &[TlbRequest::Pages {
                va: 0x40_0000,
                pages: 64
            }]
        );
        let mut any = false;
        t.for_each_mapping(range, &mut |_, _| any = true);
        assert!(!any);
    }

    #[test]
    fn out_of_table_memory_is_an_error_and_leaves_nothing() {
        // Root + L2 + L3 = 3 pages; the second 2 MiB span needs a 4th.
        let mut t = TranslationTables::new(3, RecordingTlb::new()).unwrap();
        let r1 = VirtPages::new(VirtAddr(0x0), 1).unwrap();
        t.map_pages(r1, &pages(&[0x4000_0000]), MemKind::NonSecureShared)
            .unwrap();
        let r2 = VirtPages::new(VirtAddr(0x20_0000), 1).unwrap();
        let err = t
            .map_pages(r2, &pages(&[0x4000_1000]), MemKind::NonSecureShared)
            .unwrap_err();
        assert!(
            matches!(err, TableError::OutOfTableMemory { .. }),
            "{err:?}"
        );
        assert_eq!(t.virt_to_phys(VirtAddr(0x20_0000)), None);
        assert_eq!(t.pool_stats().unreserved_allocations, 0);
        // Freeing the first span's table makes room again.
        t.unmap(r1);
        t.compact();
        t.map_pages(r2, &pages(&[0x4000_1000]), MemKind::NonSecureShared)
            .unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let mut t = tables();
        let r = VirtPages::new(VirtAddr(0x1000), 2).unwrap();
        assert_eq!(
            t.map_pages(r, &pages(&[0x4000_0000]), MemKind::NonSecureShared),
            Err(TableError::LengthMismatch {
                pages: 1,
                range_pages: 2
            })
        );
        assert_eq!(
            t.map_pages(
                r,
                &pages(&[0x4000_0000, 0x4000_0010]),
                MemKind::NonSecureShared
            ),
            Err(TableError::UnalignedPage(0x4000_0010))
        );
        let far = VirtPages::new(VirtAddr(VA_SPACE_SIZE - PAGE_SIZE), 2).unwrap();
        assert_eq!(
            t.map_pages(far, &pages(&[0, 0x1000]), MemKind::NonSecureShared),
            Err(TableError::OutOfRange(VA_SPACE_SIZE - PAGE_SIZE))
        );
        assert_eq!(t.translate_page(VirtAddr(VA_SPACE_SIZE)), None);
    }

    #[test]
    fn bound_counts_spans() {
        let r = VirtPages::new(VirtAddr(0x1F_F000), 2).unwrap();
        assert_eq!(tables_needed(r), 1 + 2, "one L2 table, two L3 tables");
        let r = VirtPages::new(VirtAddr(0x3FFF_F000), 2).unwrap();
        assert_eq!(tables_needed(r), 2 + 2, "crosses a 1 GiB line too");
    }

    proptest! {
        /// Against a map model: random maps and unmaps of small ranges over a few 2 MiB spans;
        /// every page translates as the model says, the bound is never exceeded, and each unmap
        /// issues one TLB request.
        #[test]
        fn agrees_with_map_model(ops in proptest::collection::vec((0u64..1200, 1u64..40, any::<bool>(), any::<u32>()), 1..40)) {
            let mut t = TranslationTables::new(64, RecordingTlb::new()).unwrap();
            let mut model = std::collections::BTreeMap::<u64, u64>::new();
            for (page, count, map, seed) in ops {
                let range = VirtPages::new(VirtAddr(page * PAGE_SIZE), count).unwrap();
                let free = (page..page + count).all(|p| !model.contains_key(&p));
                if map && free {
                    let list: Vec<PhysAddr> = (0..count)
                        .map(|i| PhysAddr(0x4000_0000 + ((seed as u64).wrapping_mul(i + 7) % 4096) * PAGE_SIZE))
                        .collect();
                    t.map_pages(range, &list, MemKind::NonSecureShared).unwrap();
                    for (i, pa) in list.iter().enumerate() { model.insert(page + i as u64, pa.get()); }
                } else if !map && (page..page + count).all(|p| model.contains_key(&p)) {
                    let before = t.tlb().requests().len();
                    t.unmap(range);
                    prop_assert_eq!(t.tlb().requests().len(), before + 1);
                    for p in page..page + count { model.remove(&p); }
                }
                prop_assert_eq!(t.pool_stats().unreserved_allocations, 0);
            }
            let all = VirtPages::new(VirtAddr(0), 1300).unwrap();
            let mut seen = std::collections::BTreeMap::new();
            t.for_each_mapping(all, &mut |va, tr| { seen.insert(va.page_number(), tr.pa.get()); });
            prop_assert_eq!(seen, model);
        }
    }
}
