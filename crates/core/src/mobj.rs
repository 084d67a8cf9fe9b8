//! Memory objects (MOBJs): one abstraction for every shared buffer the core reaches.
//!
//! A [`Mobj`] knows its owner, size, physical pages, memory type and cookie; it has no virtual
//! address of its own. A call that needs the bytes holds a [`MobjUse`] (a counted reference that
//! keeps the pages from being released) and asks the window for a
//! [`MapGuard`](crate::window::MapGuard). The object is released exactly once
//! ([`crate::lifecycle`]): when its owner has retired it and its last use is dropped.

use crate::error::TeeError;
use crate::guest::GuestCounters;
use crate::lifecycle::{CopyGate, CopyPass, MappingPins, UseCount};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_mm::{PAGE_SIZE, PhysAddr, PhysRange};
use zerocopy::little_endian::U64;

/// Identity of a memory object, unique for the life of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MobjId(pub u64);

/// What a memory object is for; decides how long it lives and whether its mapping is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MobjKind {
    /// The static SHM pool: contiguous, mapped at boot, never released.
    StaticPool,
    /// A buffer registered with `REGISTER_SHM`; found by cookie until unregistered.
    Registered,
    /// A NONCONTIG page list or argument page that lives for one call.
    Temporary,
    /// A buffer the normal world gave in answer to an RPC; lives until the matching free.
    RpcBuffer,
    /// A page that held a guest's `CALL_WITH_ARG` arg, kept (with its mapping) for the
    /// guest's next call with its arg on that page; lives until the guest keeps another page
    /// in its place, needs its quota, or is destroyed (docs/core.md, "Kept arg pages").
    ArgPage,
}

/// The memory type of a buffer, as asked for by OP-TEE's `mobj_matches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal-world RAM shared page by page (registered, temporary, RPC).
    NonSecure,
    /// The static SHM pool (also non-secure).
    StaticShm,
}

/// Physical frames of a page-list buffer, stored as compactly as the addresses allow:
/// 4 bytes a page while every page lies below 16 TiB (44-bit physical addresses), else 8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageFrames {
    /// Page frame numbers (`pa >> 12`).
    Narrow(Box<[u32]>),
    /// Full page addresses.
    Wide(Box<[u64]>),
}

impl PageFrames {
    /// Stores `pages` (4 KiB aligned physical addresses), narrowing when all fit.
    ///
    /// # Errors
    /// `None` when the heap refuses the array.
    pub fn from_pages(pages: Vec<u64>) -> Option<Self> {
        let mut builder = FramesBuilder::with_capacity(pages.len()).ok()?;
        for pa in pages {
            builder.push(pa).ok()?;
        }
        Some(builder.finish())
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        match self {
            Self::Narrow(p) => p.len(),
            Self::Wide(p) => p.len(),
        }
    }

    /// Whether there is no page.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th page.
    pub fn get(&self, index: usize) -> Option<PhysAddr> {
        match self {
            Self::Narrow(p) => p.get(index).map(|&pfn| PhysAddr(u64::from(pfn) << 12)),
            Self::Wide(p) => p.get(index).map(|&pa| PhysAddr(pa)),
        }
    }

    /// Bytes of secure memory the array takes.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Narrow(p) => p.len() * 4,
            Self::Wide(p) => p.len() * 8,
        }
    }
}

/// Builds [`PageFrames`] one page at a time, straight from the page-list decoder: narrow
/// frames while every page lies below 16 TiB, widened in place the first time one does not.
#[derive(Debug)]
pub struct FramesBuilder {
    narrow: Vec<u32>,
    wide: Option<Vec<u64>>,
    capacity: usize,
}

/// Pages below this address are stored as 32-bit frame numbers.
const NARROW_LIMIT: u64 = 1 << 44;

impl FramesBuilder {
    /// Room for `pages` pages, reserved now.
    ///
    /// # Errors
    /// [`TeeError::OutOfMemory`] when the heap refuses.
    pub fn with_capacity(pages: usize) -> Result<Self, TeeError> {
        let mut narrow = Vec::new();
        narrow
            .try_reserve_exact(pages)
            .map_err(|_| TeeError::OutOfMemory)?;
        Ok(Self {
            narrow,
            wide: None,
            capacity: pages,
        })
    }

    /// Appends a page.
    ///
    /// # Errors
    /// [`TeeError::OutOfMemory`] past the capacity, or when widening finds no memory.
    pub fn push(&mut self, pa: u64) -> Result<(), TeeError> {
        if self.len() >= self.capacity {
            return Err(TeeError::OutOfMemory);
        }
        if self.wide.is_none() && pa >= NARROW_LIMIT {
            let mut wide = Vec::new();
            wide.try_reserve_exact(self.capacity)
                .map_err(|_| TeeError::OutOfMemory)?;
            wide.extend(self.narrow.iter().map(|&pfn| u64::from(pfn) << 12));
            self.narrow = Vec::new();
            self.wide = Some(wide);
        }
        match &mut self.wide {
            Some(wide) => wide.push(pa),
            None => self.narrow.push((pa >> 12) as u32),
        }
        Ok(())
    }

    /// Appends every page of `pages` if all of them lie inside `region` and below the narrow
    /// limit and the builder is still narrow; false (nothing appended) otherwise, for the caller
    /// to take the pages one by one. This is how a list page's worth of a buffer inside one
    /// region of normal-world RAM is stored, so it is one loop the compiler vectorizes: each
    /// page's 32-bit frame stored, its bits OR-ed (any above 16 TiB?) and its frame compared
    /// with the region's in 32 bits (four lanes a vector, not two in 64 bits).
    pub fn extend_within(&mut self, region: PhysRange, pages: &[U64]) -> bool {
        let Some(last_start) = region.end().get().checked_sub(PAGE_SIZE) else {
            return false;
        };
        // The region's whole pages, as frame numbers (below 2^32: the region ends below 16 TiB).
        let first_frame = region.start().get().div_ceil(PAGE_SIZE);
        let last_frame = last_start / PAGE_SIZE;
        let fits = self.wide.is_none()
            && last_start < NARROW_LIMIT
            && first_frame <= last_frame
            && self.len().saturating_add(pages.len()) <= self.capacity;
        let (Ok(first), Ok(last)) = (u32::try_from(first_frame), u32::try_from(last_frame)) else {
            return false;
        };
        if !fits {
            return false;
        }
        let span = last - first;
        let old_len = self.narrow.len();
        let (mut bits, mut outside) = (0u64, 0u32);
        self.narrow.extend(pages.iter().map(|p| {
            let pa = p.get();
            let frame = (pa >> 12) as u32;
            bits |= pa;
            // One comparison a frame: below `first` wraps above the span.
            outside |= u32::from(frame.wrapping_sub(first) > span);
            frame
        }));
        if outside != 0 || bits >= NARROW_LIMIT {
            self.narrow.truncate(old_len);
            return false;
        }
        true
    }

    fn len(&self) -> usize {
        self.wide.as_ref().map_or(self.narrow.len(), Vec::len)
    }

    /// The frames.
    pub fn finish(self) -> PageFrames {
        match self.wide {
            Some(wide) => PageFrames::Wide(wide.into_boxed_slice()),
            None => PageFrames::Narrow(self.narrow.into_boxed_slice()),
        }
    }
}

/// Where a buffer's bytes lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// `pages` physically contiguous pages from `first`.
    Contiguous {
        /// First page.
        first: PhysAddr,
        /// Number of pages.
        pages: u64,
    },
    /// Scattered pages in buffer order.
    Pages(PageFrames),
}

/// What a new memory object is: everything but its identity and its guest's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobjSpec {
    /// What it is for.
    pub kind: MobjKind,
    /// The owning guest.
    pub owner: GuestId,
    /// The normal world's cookie, if it has one.
    pub cookie: Option<u64>,
    /// Size in bytes (> 0).
    pub size: u64,
    /// Offset of the first byte in the first page (< 4096).
    pub page_offset: u16,
    /// The pages; they cover `page_offset + size` bytes.
    pub backing: Backing,
}

/// A memory object.
#[derive(Debug)]
pub struct Mobj {
    id: MobjId,
    kind: MobjKind,
    owner: GuestId,
    cookie: Option<u64>,
    size: u64,
    page_offset: u16,
    backing: Backing,
    uses: UseCount,
    /// Its window mapping's guards, and whether the window holds a mapping of it (so a
    /// release of an object never mapped need not take the window's lock).
    pins: MappingPins,
    /// The copies in flight through its mapping, and whether the normal world took the
    /// buffer back (`UNREGISTER_SHM`) while calls still used it: from then on no access
    /// reaches its pages (see [`CopyGate`]).
    copies: CopyGate,
    counters: Arc<GuestCounters>,
    /// The core's release queue, where its last use queues it once it is retired (held here,
    /// not by each use: a use then writes no word that every call shares).
    releases: Arc<ReleaseQueue>,
}

impl Mobj {
    /// A new, live object. The caller charges it to `counters` (see
    /// [`GuestCounters::charge_object`]); the release refunds it. `releases` is the core's
    /// release queue.
    pub(crate) fn new(
        id: MobjId,
        spec: MobjSpec,
        counters: Arc<GuestCounters>,
        releases: Arc<ReleaseQueue>,
    ) -> Self {
        let MobjSpec {
            kind,
            owner,
            cookie,
            size,
            page_offset,
            backing,
        } = spec;
        Self {
            id,
            kind,
            owner,
            cookie,
            size,
            page_offset,
            backing,
            uses: UseCount::new(),
            pins: MappingPins::new(),
            copies: CopyGate::new(),
            counters,
            releases,
        }
    }

    /// Retires it for its owner; when nobody uses it, it is queued for release now.
    pub(crate) fn retire_queued(self: &Arc<Self>) {
        self.releases.retire(self);
    }

    /// Its identity.
    pub fn id(&self) -> MobjId {
        self.id
    }

    /// What it is for.
    pub fn kind(&self) -> MobjKind {
        self.kind
    }

    /// The guest that owns it.
    pub fn owner(&self) -> GuestId {
        self.owner
    }

    /// The normal world's cookie (registered and RPC buffers).
    pub fn cookie(&self) -> Option<u64> {
        self.cookie
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset of the first byte in the first page.
    pub fn page_offset(&self) -> u64 {
        u64::from(self.page_offset)
    }

    /// Number of physical pages.
    pub fn num_pages(&self) -> u64 {
        match &self.backing {
            Backing::Contiguous { pages, .. } => *pages,
            Backing::Pages(frames) => frames.len() as u64,
        }
    }

    /// The `index`th physical page.
    pub fn page(&self, index: u64) -> Option<PhysAddr> {
        match &self.backing {
            Backing::Contiguous { first, pages } => {
                if index < *pages {
                    first.checked_add_pages(index)
                } else {
                    None
                }
            }
            Backing::Pages(frames) => frames.get(usize::try_from(index).ok()?),
        }
    }

    /// Every physical page, in buffer order.
    pub fn pages(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        (0..self.num_pages()).filter_map(|i| self.page(i))
    }

    /// Physical address of the byte at `offset`, if inside the buffer.
    pub fn pa_at(&self, offset: u64) -> Option<PhysAddr> {
        if offset >= self.size {
            return None;
        }
        let at = offset.checked_add(self.page_offset())?;
        self.page(at / PAGE_SIZE)?.checked_add(at % PAGE_SIZE)
    }

    /// Its memory type.
    pub fn mem_type(&self) -> MemType {
        match self.kind {
            MobjKind::StaticPool => MemType::StaticShm,
            _ => MemType::NonSecure,
        }
    }

    /// Whether it may serve where memory of type `wanted` is required. Every shared buffer is
    /// non-secure; only the pool is static SHM.
    pub fn matches(&self, wanted: MemType) -> bool {
        wanted == MemType::NonSecure || self.mem_type() == wanted
    }

    /// Users and retirement.
    /// Whether the window holds a mapping of it.
    pub fn is_mapped(&self) -> bool {
        self.pins.is_published()
    }

    /// Its window mapping's guards (see [`MappingPins`]).
    pub(crate) fn pins(&self) -> &MappingPins {
        &self.pins
    }

    /// Whether the normal world took it back while calls used it (their accesses now fail).
    pub fn is_revoked(&self) -> bool {
        self.copies.is_revoked()
    }

    /// Revokes it: no copy through its mapping begins from now on, and this returns once the
    /// copies in flight on other CPUs have ended; its mapping may then go. Called with no lock
    /// held (a copier takes the window's read lock for its table walks on the host).
    pub(crate) fn revoke(&self) {
        self.copies.revoke(crate::sync::relax);
    }

    /// Starts a copy through its mapping, unless it is revoked: while the pass lives, a
    /// revocation waits before it takes the mapping away.
    pub(crate) fn begin_copy(&self) -> Option<CopyPass<'_>> {
        self.copies.begin()
    }

    /// Users and retirement.
    pub fn uses(&self) -> &UseCount {
        &self.uses
    }

    /// The counters of the owning guest.
    pub(crate) fn counters(&self) -> &Arc<GuestCounters> {
        &self.counters
    }

    /// Secure memory this object keeps: the struct and its page array.
    pub fn heap_bytes(&self) -> usize {
        let frames = match &self.backing {
            Backing::Contiguous { .. } => 0,
            Backing::Pages(frames) => frames.heap_bytes(),
        };
        size_of::<Self>() + frames
    }

    /// Secure memory charged to its owner: [`heap_bytes`](Self::heap_bytes) and the
    /// bookkeeping every object adds elsewhere ([`OBJECT_BOOKKEEPING_BYTES`]).
    pub fn charged_bytes(&self) -> u64 {
        self.heap_bytes() as u64 + OBJECT_BOOKKEEPING_BYTES
    }
}

/// An upper bound of the secure memory an object costs outside itself: its `Arc` header, its
/// share of the cookie table's and the window's B-tree nodes (a node of up to 11 entries is at
/// least half full, so an entry costs at most 2/11 of a node) and of the release queue.
pub const OBJECT_BOOKKEEPING_BYTES: u64 = 256;

/// Objects whose last use ended after they were retired; the core releases them at the end of
/// the SMC in which that happened (a use may end where no lock may be taken).
#[derive(Debug, Default)]
pub struct ReleaseQueue {
    queue: crate::sync::Mutex<Vec<Arc<Mobj>>>,
    /// Whether the queue may hold something: written only under the lock, read without it,
    /// so the drain at the end of every SMC takes the lock (a full barrier, costly after a
    /// call's copies) only when there is something to release. A CPU that queues an object
    /// sees its own write at the end of its SMC, so nothing waits past that SMC.
    queued: core::sync::atomic::AtomicBool,
}

impl ReleaseQueue {
    fn push(&self, mobj: Arc<Mobj>) {
        let mut queue = self.queue.lock();
        queue.push(mobj);
        self.queued
            .store(true, core::sync::atomic::Ordering::Release);
    }

    /// Retires `mobj` for its owner; when nobody uses it, it is queued for release now.
    pub(crate) fn retire(&self, mobj: &Arc<Mobj>) {
        // The static pool lives as long as the core: a buffer inside it is retired by its
        // owner, never the pool.
        if mobj.kind == MobjKind::StaticPool {
            return;
        }
        if mobj.uses.retire() == crate::lifecycle::Retire::ReleaseNow {
            self.push(mobj.clone());
        }
    }

    /// Takes everything queued.
    pub(crate) fn take(&self) -> Vec<Arc<Mobj>> {
        if !self.queued.load(core::sync::atomic::Ordering::Acquire) {
            return Vec::new();
        }
        let mut queue = self.queue.lock();
        self.queued
            .store(false, core::sync::atomic::Ordering::Relaxed);
        core::mem::take(&mut *queue)
    }

    /// Whether nothing waits for release.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().is_empty()
    }
}

/// A counted use of a memory object: while it lives, the object's pages are not released.
#[derive(Debug)]
pub struct MobjUse {
    mobj: Arc<Mobj>,
}

impl MobjUse {
    /// A use of `mobj`, unless it is retired.
    pub(crate) fn try_new(mobj: &Arc<Mobj>) -> Option<Self> {
        mobj.uses.try_acquire().then(|| Self { mobj: mobj.clone() })
    }

    /// The object used.
    pub fn mobj(&self) -> &Arc<Mobj> {
        &self.mobj
    }
}

impl Clone for MobjUse {
    /// A second use of the same object; valid even when it is retired, since this one keeps it
    /// from being released.
    fn clone(&self) -> Self {
        self.mobj.uses.add_user();
        Self {
            mobj: self.mobj.clone(),
        }
    }
}

impl Drop for MobjUse {
    fn drop(&mut self) {
        if self.mobj.uses.drop_user() {
            self.mobj.releases.push(self.mobj.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(size: u64, page_offset: u16, backing: Backing) -> Mobj {
        let spec = MobjSpec {
            kind: MobjKind::Registered,
            owner: GuestId(1),
            cookie: Some(7),
            size,
            page_offset,
            backing,
        };
        Mobj::new(
            MobjId(1),
            spec,
            Arc::new(GuestCounters::default()),
            Arc::new(ReleaseQueue::default()),
        )
    }

    #[test]
    fn pa_at_walks_scattered_pages() {
        let frames = PageFrames::from_pages(std::vec![0x8000_3000, 0x8000_1000]).unwrap();
        assert!(matches!(frames, PageFrames::Narrow(_)));
        let m = obj(5000, 0x10, Backing::Pages(frames));
        assert_eq!(m.pa_at(0), Some(PhysAddr(0x8000_3010)));
        assert_eq!(m.pa_at(4095 - 0x10), Some(PhysAddr(0x8000_3fff)));
        assert_eq!(m.pa_at(4096 - 0x10), Some(PhysAddr(0x8000_1000)));
        assert_eq!(
            m.pa_at(4999),
            Some(PhysAddr(0x8000_1000 + 4999 + 0x10 - 4096))
        );
        assert_eq!(m.pa_at(5000), None);
        assert_eq!(m.pa_at(u64::MAX), None);
        assert!(m.matches(MemType::NonSecure));
        assert!(!m.matches(MemType::StaticShm));
    }

    #[test]
    fn wide_frames_above_16_tib() {
        let frames = PageFrames::from_pages(std::vec![1 << 44, 0x1000]).unwrap();
        assert!(matches!(frames, PageFrames::Wide(_)));
        assert_eq!(frames.get(0), Some(PhysAddr(1 << 44)));
        assert_eq!(frames.heap_bytes(), 16);
    }

    #[test]
    fn builder_widens_in_place_and_keeps_order() {
        let mut b = FramesBuilder::with_capacity(3).unwrap();
        b.push(0x1000).unwrap();
        b.push(1 << 44).unwrap();
        b.push(0x3000).unwrap();
        assert_eq!(
            b.push(0x4000),
            Err(TeeError::OutOfMemory),
            "past the capacity"
        );
        let f = b.finish();
        assert!(matches!(f, PageFrames::Wide(_)));
        assert_eq!(
            (0..3)
                .map(|i| f.get(i).unwrap().get())
                .collect::<std::vec::Vec<_>>(),
            [0x1000, 1 << 44, 0x3000]
        );
    }

    #[test]
    fn contiguous_backing() {
        let m = obj(
            8192,
            0,
            Backing::Contiguous {
                first: PhysAddr(0x4000_0000),
                pages: 2,
            },
        );
        assert_eq!(
            m.pages().collect::<std::vec::Vec<_>>(),
            [PhysAddr(0x4000_0000), PhysAddr(0x4000_1000)]
        );
        assert_eq!(m.page(2), None);
    }

    #[test]
    fn last_use_of_retired_object_is_queued_once() {
        let m = Arc::new(obj(
            1,
            0,
            Backing::Contiguous {
                first: PhysAddr(0),
                pages: 1,
            },
        ));
        let q = m.releases.clone();
        let a = MobjUse::try_new(&m).unwrap();
        let b = MobjUse::try_new(&m).unwrap();
        assert_eq!(
            m.uses().retire(),
            crate::lifecycle::Retire::InUse { users: 2 }
        );
        assert!(MobjUse::try_new(&m).is_none());
        drop(a);
        assert!(q.is_empty());
        drop(b);
        assert_eq!(q.take().len(), 1);
    }

    proptest! {
        #[test]
        fn frames_round_trip(pfns in proptest::collection::vec(0u64..(1 << 40), 1..64), wide in any::<bool>()) {
            let pages: std::vec::Vec<u64> = pfns.iter().map(|p| (p + if wide { 1 << 32 } else { 0 }) << 12).collect();
            let frames = PageFrames::from_pages(pages.clone()).unwrap();
            prop_assert_eq!(frames.len(), pages.len());
            for (i, pa) in pages.iter().enumerate() {
                prop_assert_eq!(frames.get(i), Some(PhysAddr(*pa)));
            }
            prop_assert_eq!(frames.get(pages.len()), None);
        }

        /// Chunks appended in one pass when inside the region, else page by page: the frames
        /// are those of pushing every page, a chunk outside the region or past the capacity
        /// appends nothing, and a wide page later widens what the chunks stored.
        #[test]
        fn chunks_store_what_pushes_store(chunks in proptest::collection::vec(
                proptest::collection::vec(0u64..64, 0..12), 1..6),
            capacity in 0usize..40, wide_at in proptest::option::of(0usize..6)) {
            // The region: pages 16..48 of a 64-page space at 4 GiB.
            let base = 1u64 << 32;
            let region = PhysRange::new(PhysAddr(base + 16 * PAGE_SIZE), 32 * PAGE_SIZE).unwrap();
            let mut builder = FramesBuilder::with_capacity(capacity).unwrap();
            let mut pushed: std::vec::Vec<u64> = std::vec::Vec::new();
            for (k, chunk) in chunks.iter().enumerate() {
                let mut pages: std::vec::Vec<u64> = chunk.iter().map(|p| base + p * PAGE_SIZE).collect();
                if wide_at == Some(k) {
                    // Above 16 TiB, with the low 32 bits of its frame those of a page inside
                    // the region: only its high bits tell it apart.
                    pages.push(NARROW_LIMIT + base + 20 * PAGE_SIZE);
                }
                let words: std::vec::Vec<U64> = pages.iter().map(|&p| U64::new(p)).collect();
                let inside = pages.iter().all(|&p| region.contains_range(PhysRange::page(PhysAddr(p)).unwrap()));
                let room = pushed.len() + pages.len() <= capacity;
                let narrow = pushed.iter().all(|&p| p < NARROW_LIMIT);
                let took = builder.extend_within(region, &words);
                prop_assert_eq!(took, inside && room && narrow);
                if !took {
                    for &p in &pages {
                        if builder.push(p).is_err() {
                            prop_assert!(pushed.len() >= capacity);
                            break;
                        }
                        pushed.push(p);
                    }
                } else {
                    pushed.extend(&pages);
                }
            }
            let frames = builder.finish();
            prop_assert_eq!(frames.len(), pushed.len());
            for (i, &pa) in pushed.iter().enumerate() {
                prop_assert_eq!(frames.get(i), Some(PhysAddr(pa)));
            }
        }
    }
}
