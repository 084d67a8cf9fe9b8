//! The core's side of the SHM window: which memory object is mapped where, the mapping cache,
//! and the map guards through which the core reaches shared bytes.
//!
//! A mapping stays after its last guard goes, *idle*, for as long as its object lives: a
//! registered buffer until it is unregistered (so the next call finds it at once), a call's
//! temporary buffers until the call ends. Idle mappings are evicted least recently used first
//! when the window (or the guest's mapped-pages quota) needs the space. A mapping with a guard,
//! or whose object a call still uses, is never evicted. A retired object's mapping goes with its
//! last guard.
//!
//! A guard on a mapping that exists is taken and dropped without the window's lock: the
//! object's [`MappingPins`](crate::lifecycle::MappingPins) count it in one atomic word beside
//! whether the mapping exists, and only the window, under its lock, makes or takes mappings.
//! So two CPUs using their own (or the same) cached buffers share no lock; the lock is taken
//! to map, to unmap, and when a mapping goes idle for the first time.
//!
//! The eviction index is kept lazily for the same reason: a mapping enters the index when it
//! first goes idle and stays there while it is used again; each use only moves its object's
//! LRU stamp forward. Eviction walks the index from its oldest record and, before it evicts,
//! moves a record whose object was used since to that use's stamp, so what it evicts is the
//! least recently used idle mapping, as with an index updated on every use.

use crate::error::{QuotaKind, TeeError};
use crate::lifecycle::Unpinned;
use crate::mobj::{Mobj, MobjId, MobjKind, MobjUse};
use crate::platform::Platform;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use teeshm_abi::GuestId;
use teeshm_mm::{
    MemKind, PhysAddr, ShmWindow, TableError, VaWindowError, VirtAddr, VirtPages, WindowError,
};
use teeshm_platform::TlbMaintenance;

/// One object's mapping.
#[derive(Debug)]
pub(crate) struct WindowEntry {
    pub(crate) mobj: Arc<Mobj>,
    pub(crate) range: VirtPages,
    /// The stamp of its record in the eviction index, once it went idle a first time.
    pub(crate) indexed_at: Option<u64>,
}

impl WindowEntry {
    /// Live map guards (the static pool holds one for ever).
    pub(crate) fn guards(&self) -> u64 {
        self.mobj.pins().pins()
    }
}

/// Counters of the mapping cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Guards that had to map.
    pub misses: u64,
    /// Idle mappings removed to make room.
    pub evictions: u64,
}

/// One object's mapping, as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMapping {
    /// The object.
    pub mobj: MobjId,
    /// Its owner.
    pub owner: GuestId,
    /// What it is.
    pub kind: MobjKind,
    /// Its cookie, if any.
    pub cookie: Option<u64>,
    /// Where it is mapped.
    pub range: VirtPages,
    /// Live map guards.
    pub guards: u64,
    /// Whether it is idle (kept for the next use, evictable when its object is unused).
    pub idle: bool,
}

/// A record of the eviction index: its stamp and its object (stamps may repeat).
type IdleRecord = (u64, MobjId);

/// The window with the record of which object each mapping serves.
pub struct SharedWindow<T: TlbMaintenance> {
    shm: ShmWindow<T>,
    entries: BTreeMap<MobjId, WindowEntry>,
    /// The eviction index: cached mappings by the stamp of their record, oldest first (see
    /// the module's doc: a record may be older than its object's last use).
    idle: BTreeSet<IdleRecord>,
    /// The same, per guest, for evicting within a guest's quota.
    idle_by_guest: BTreeSet<(GuestId, u64, MobjId)>,
    max_mapped_pages: u64,
    stats: CacheStats,
    /// Objects whose guard was released once more than it was taken; the checker reports
    /// them (empty unless the core has a bug).
    guard_underflows: BTreeSet<MobjId>,
}

impl<T: TlbMaintenance> SharedWindow<T> {
    /// Wraps an empty window; each guest may map at most `max_mapped_pages` pages.
    pub fn new(shm: ShmWindow<T>, max_mapped_pages: u64) -> Self {
        Self {
            shm,
            entries: BTreeMap::new(),
            idle: BTreeSet::new(),
            idle_by_guest: BTreeSet::new(),
            max_mapped_pages,
            stats: CacheStats::default(),
            guard_underflows: BTreeSet::new(),
        }
    }

    /// The memory manager's window (read only).
    pub fn shm(&self) -> &ShmWindow<T> {
        &self.shm
    }

    /// The memory manager's window, for the platform's TLB and for tests.
    pub fn shm_mut(&mut self) -> &mut ShmWindow<T> {
        &mut self.shm
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Mapped objects (with or without guards).
    pub fn mapped_objects(&self) -> usize {
        self.entries.len()
    }

    /// Idle cached mappings (no guard, kept for the next use).
    pub fn idle_mappings(&self) -> usize {
        self.idle
            .iter()
            .filter(|(_, id)| self.entries.get(id).is_some_and(|e| e.guards() == 0))
            .count()
    }

    /// Every object's mapping, by object id.
    pub fn object_mappings(&self) -> impl Iterator<Item = ObjectMapping> + '_ {
        self.entries.iter().map(|(&id, e)| {
            let guards = e.guards();
            ObjectMapping {
                mobj: id,
                owner: e.mobj.owner(),
                kind: e.mobj.kind(),
                cookie: e.mobj.cookie(),
                range: e.range,
                guards,
                idle: guards == 0 && e.indexed_at.is_some(),
            }
        })
    }

    /// The stamp of `id`'s record in the eviction index, if it has an entry and a record.
    pub(crate) fn indexed_at(&self, id: MobjId) -> Option<u64> {
        self.entries.get(&id).and_then(|e| e.indexed_at)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&MobjId, &WindowEntry)> {
        self.entries.iter()
    }

    pub(crate) fn guard_underflows(&self) -> &BTreeSet<MobjId> {
        &self.guard_underflows
    }

    pub(crate) fn idle_index(&self) -> (&BTreeSet<IdleRecord>, &BTreeSet<(GuestId, u64, MobjId)>) {
        (&self.idle, &self.idle_by_guest)
    }

    /// A guard's worth of mapping for `mobj`: the existing one (a guard taken here when a
    /// concurrent map or unmap held the lock) or a new one. Returns the range and whether it
    /// existed.
    pub(crate) fn acquire(&mut self, mobj: &Arc<Mobj>) -> Result<(VirtPages, bool), TeeError> {
        if mobj.is_revoked() {
            return Err(TeeError::Revoked(mobj.id()));
        }
        if let Some(entry) = self.entries.get(&mobj.id()) {
            // Published while its entry exists, and only the lock's holder unpublishes.
            mobj.pins().try_pin().ok_or(TeeError::Revoked(mobj.id()))?;
            return Ok((entry.range, true));
        }
        let range = self.map_object(mobj)?;
        mobj.pins().publish(range.start().get());
        self.entries.insert(
            mobj.id(),
            WindowEntry {
                mobj: mobj.clone(),
                range,
                indexed_at: None,
            },
        );
        self.stats.misses += 1;
        Ok((range, false))
    }

    /// Takes a revoked object's pages away from the core for good: its mapping, if any, goes
    /// now, guards or not (with its TLB invalidation). The caller revoked the object first
    /// ([`Mobj::revoke`], with no lock held), so no copy through the mapping runs or can
    /// begin; guards still held fail every access from here on, and no new guard is given.
    pub(crate) fn revoke(&mut self, mobj: &Arc<Mobj>) {
        debug_assert!(
            mobj.is_revoked(),
            "the copies are shut out before the unmap"
        );
        self.unmap_entry(mobj.id());
    }

    /// Maps `mobj` for ever (the static pool): one guard that is never dropped.
    pub(crate) fn pin(&mut self, mobj: &Arc<Mobj>) -> Result<VirtPages, TeeError> {
        self.acquire(mobj).map(|(range, _)| range)
    }

    /// What follows the drop of a mapping's last guard that needs the lock: a live object's
    /// mapping enters the eviction index the first time it goes idle; a retired one's goes
    /// now. Nothing is done if a guard pinned it again meanwhile (its drop will do this).
    pub(crate) fn after_last_guard(&mut self, id: MobjId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.guards() > 0 {
            return;
        }
        let mobj = entry.mobj.clone();
        if crate::lifecycle::keep_idle_after_last_guard(mobj.uses()) {
            if mobj.kind() == MobjKind::Temporary || entry.indexed_at.is_some() {
                // A call's temporary (its arg page, a page-list param) is used by its call
                // until it is retired and released with it, so it can never be evicted and
                // stays outside the eviction index.
                return;
            }
            let stamp = mobj.pins().last_used();
            entry.indexed_at = Some(stamp);
            mobj.pins().set_indexed(true);
            self.idle.insert((stamp, id));
            self.idle_by_guest.insert((mobj.owner(), stamp, id));
        } else if mobj.pins().try_unpublish() {
            self.unmap_entry(id);
        }
    }

    /// Records a guard dropped once more than it was taken (the checker reports it).
    pub(crate) fn guard_underflow(&mut self, id: MobjId) {
        self.guard_underflows.insert(id);
    }

    /// Removes the mapping of a released object, if it has one.
    pub(crate) fn forget(&mut self, id: MobjId) {
        self.unmap_entry(id);
    }

    /// Maps one normal-world page for the duration of `f` (reading a page-list page; the
    /// window's lock, held, keeps the mapping to this caller, so it needs no record and no
    /// reverse entry), evicting idle mappings while the window or its tables are short;
    /// nothing of it remains afterwards.
    pub(crate) fn with_transient_page<R>(
        &mut self,
        page: PhysAddr,
        f: impl FnOnce(&ShmWindow<T>, VirtAddr) -> R,
    ) -> Result<R, TeeError> {
        let mut f = Some(f);
        loop {
            let attempt =
                self.shm
                    .with_transient_page(page, MemKind::NonSecureShared, |shm, va| {
                        f.take().map(|f| f(shm, va))
                    });
            match attempt {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => return Err(TeeError::OutOfMemory),
                Err(
                    e @ (WindowError::Va(VaWindowError::NoSpace { .. })
                    | WindowError::Table(TableError::OutOfTableMemory { .. })),
                ) => {
                    if !self.evict_oldest(None) {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn map_object(&mut self, mobj: &Arc<Mobj>) -> Result<VirtPages, TeeError> {
        let n = mobj.num_pages();
        let counters = mobj.counters();
        let wanted = counters.mapped_pages().saturating_add(n);
        if wanted > self.max_mapped_pages && mobj.kind() != MobjKind::StaticPool {
            self.evict_own(mobj.owner(), wanted - self.max_mapped_pages);
            let wanted = counters.mapped_pages().saturating_add(n);
            if wanted > self.max_mapped_pages {
                return Err(TeeError::Quota {
                    kind: QuotaKind::MappedPages,
                    wanted,
                    limit: self.max_mapped_pages,
                });
            }
        }
        let range = if n == 1 {
            // One page (every call's arg): no list to allocate under the lock.
            let page = mobj.pages().next().ok_or(TeeError::OutOfMemory)?;
            self.map_with_eviction(mobj.owner(), &[page])?
        } else {
            let mut pages: Vec<PhysAddr> = Vec::new();
            pages
                .try_reserve_exact(usize::try_from(n).map_err(|_| TeeError::OutOfMemory)?)
                .map_err(|_| TeeError::OutOfMemory)?;
            pages.extend(mobj.pages());
            self.map_with_eviction(mobj.owner(), &pages)?
        };
        counters.add_mapped(range.pages());
        Ok(range)
    }

    /// Maps `pages`, evicting idle mappings (oldest first) while the window or its tables are
    /// short.
    fn map_with_eviction(
        &mut self,
        owner: GuestId,
        pages: &[PhysAddr],
    ) -> Result<VirtPages, TeeError> {
        loop {
            match self.shm.map(owner, pages, MemKind::NonSecureShared) {
                Ok(range) => return Ok(range),
                Err(
                    e @ (WindowError::Va(VaWindowError::NoSpace { .. })
                    | WindowError::Table(TableError::OutOfTableMemory { .. })),
                ) => {
                    if !self.evict_oldest(None) {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Evicts `guest`'s idle mappings, oldest first, until `pages` pages are freed or none is
    /// left.
    fn evict_own(&mut self, guest: GuestId, pages: u64) {
        let mut freed = 0;
        while freed < pages {
            let before = self.shm.mapped_pages();
            if !self.evict_oldest(Some(guest)) {
                return;
            }
            freed += before.saturating_sub(self.shm.mapped_pages());
        }
    }

    /// Evicts the least recently used idle mapping (of `guest`, if given) whose object no call
    /// uses. Returns false when there is none.
    ///
    /// Records are visited oldest first. One whose object was used since it was written moves
    /// to that use's stamp, later in the walk; one whose object is in use (a guard, or a call)
    /// is passed over and stays. So every record is passed at most twice.
    fn evict_oldest(&mut self, guest: Option<GuestId>) -> bool {
        use core::ops::Bound::{Excluded, Unbounded};
        let mut after: Option<IdleRecord> = None;
        loop {
            let next = match (guest, after) {
                (None, None) => self.idle.iter().next().copied(),
                (None, Some(r)) => self.idle.range((Excluded(r), Unbounded)).next().copied(),
                (Some(g), from) => {
                    let (stamp, id) = from.unwrap_or((0, MobjId(0)));
                    let lower = (g, stamp, id);
                    let mut records = self
                        .idle_by_guest
                        .range((
                            if from.is_some() {
                                Excluded(lower)
                            } else {
                                core::ops::Bound::Included(lower)
                            },
                            Unbounded,
                        ))
                        .take_while(|(owner, _, _)| *owner == g);
                    records.next().map(|&(_, s, id)| (s, id))
                }
            };
            let Some((stamp, id)) = next else {
                return false;
            };
            after = Some((stamp, id));
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let mobj = entry.mobj.clone();
            if !crate::lifecycle::evictable(mobj.pins().pins(), mobj.uses()) {
                continue;
            }
            let last_used = mobj.pins().last_used();
            if last_used > stamp {
                entry.indexed_at = Some(last_used);
                self.idle.remove(&(stamp, id));
                self.idle_by_guest.remove(&(mobj.owner(), stamp, id));
                self.idle.insert((last_used, id));
                self.idle_by_guest.insert((mobj.owner(), last_used, id));
                continue;
            }
            if !mobj.pins().try_unpublish() {
                // A guard pinned it since the check above.
                continue;
            }
            self.unmap_entry(id);
            self.stats.evictions += 1;
            return true;
        }
    }

    fn unmap_entry(&mut self, id: MobjId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        if let Some(stamp) = entry.indexed_at {
            self.idle.remove(&(stamp, id));
            self.idle_by_guest.remove(&(entry.mobj.owner(), stamp, id));
        }
        // No guard can pin it from here on.
        entry.mobj.pins().unpublish();
        // Cannot fail: every entry's range is a live mapping of the window.
        let _ = self.shm.unmap(entry.range.start());
        entry.mobj.counters().sub_mapped(entry.range.pages());
    }
}

/// The window's lock and the cache's clock.
///
/// The lock is a reader-writer lock, taken for writing by everything that changes the window
/// (map, unmap, the cache's bookkeeping) and for reading, one table walk at a time, by the
/// host platform's software walker ([`WindowWalk`]). No copy of a buffer's bytes runs under
/// it, and a guard on a mapping that exists does not take it ([`MapGuard`]).
pub(crate) struct WindowLock<T: TlbMaintenance> {
    window: crate::sync::RwLock<SharedWindow<T>>,
    /// The LRU clock: the number of changes of the window (each taking of its write lock).
    clock: AtomicU64,
}

impl<T: TlbMaintenance> WindowLock<T> {
    pub(crate) fn new(window: SharedWindow<T>) -> Self {
        Self {
            window: crate::sync::RwLock::new(window),
            clock: AtomicU64::new(0),
        }
    }

    /// The window, for changing it; each change moves the LRU clock on.
    pub(crate) fn write(&self) -> crate::sync::RwLockWriteGuard<'_, SharedWindow<T>> {
        let window = self.window.write();
        self.clock.fetch_add(1, Ordering::Relaxed);
        window
    }

    /// The window, for reading it (a table walk, a report).
    pub(crate) fn read(&self) -> crate::sync::RwLockReadGuard<'_, SharedWindow<T>> {
        self.window.read()
    }

    /// The LRU stamp of a use now: the count of the window's changes so far. Uses between
    /// two changes share a stamp, and no eviction needs their order: one runs only in a change
    /// (under the write lock, which moves the clock on), and sees every use before it as older
    /// than what that change maps. Read, not written, by a use: a word every CPU wrote on
    /// every guard's drop was a cache line passed from CPU to CPU on every call.
    fn now(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Drops a guard of `mobj` (a [`MapGuard`]'s drop). The lock is taken only when the last
    /// guard of a mapping goes and something must follow: the mapping's first entry into the
    /// eviction index, or the unmap of a retired object's mapping.
    pub(crate) fn release_guard(&self, mobj: &Mobj) {
        // A temporary's mapping is never in the LRU order (it goes with its call); a kept arg
        // page's is, with no use stamped (an arg page is the cheapest mapping to make again):
        // it is the first evicted when the window is short.
        let now = if matches!(mobj.kind(), MobjKind::Temporary | MobjKind::ArgPage) {
            0
        } else {
            self.now()
        };
        match mobj.pins().unpin(now) {
            Unpinned::Others
            | Unpinned::Last {
                published: false, ..
            } => {}
            Unpinned::Last {
                indexed,
                published: true,
            } => {
                let settled =
                    !mobj.uses().is_retired() && (indexed || mobj.kind() == MobjKind::Temporary);
                if !settled {
                    self.write().after_last_guard(mobj.id());
                }
            }
            Unpinned::Underflow => self.write().guard_underflow(mobj.id()),
        }
    }
}

/// The core's stage-1 translation as a map guard hands it to the platform: each page's walk
/// takes the window's read lock for the walk alone, as the MMU reads one descriptor at a time
/// while other CPUs change other entries. The mapping walked cannot change under a copy: its
/// guard keeps it from eviction and release, and its object's copy pass holds off a
/// revocation (docs/core.md, "Copies and revocation").
pub(crate) struct WindowWalk<'a, T: TlbMaintenance>(pub(crate) &'a WindowLock<T>);

impl<T: TlbMaintenance> crate::platform::Translate for WindowWalk<'_, T> {
    fn translate_page(&self, page: VirtAddr) -> Option<teeshm_mm::tables::Translation> {
        self.0.read().shm().tables().translate_page(page)
    }
}

/// The only way to the bytes of a memory object: a mapping held for as long as the guard
/// lives. The mapping is made on first need and, for a registered buffer, kept after the last
/// guard until the object is released or the space is needed.
///
/// A guard on a mapping that exists is a pin of the object's [`MappingPins`], taken and
/// dropped without the window's lock (the module's doc). Its copies run with no lock held:
/// the pin keeps the mapping from eviction and release, and each copy holds its object's
/// [`CopyPass`](crate::lifecycle::CopyPass), which a revocation waits for before it takes the
/// mapping away.
///
/// [`MappingPins`]: crate::lifecycle::MappingPins
pub struct MapGuard<'a, P: Platform> {
    window: &'a WindowLock<P::Tlb>,
    platform: &'a P,
    mobj: &'a Arc<Mobj>,
    range: VirtPages,
    was_cached: bool,
}

impl<'a, P: Platform> MapGuard<'a, P> {
    // Inlined: its result is then not moved through memory (a `TeeError`'s odd-offset fields
    // made the move a pair of stores that the next load could not be forwarded from).
    #[inline]
    pub(crate) fn new(
        window: &'a WindowLock<P::Tlb>,
        platform: &'a P,
        used: &'a MobjUse,
    ) -> Result<Self, TeeError> {
        let mobj = used.mobj();
        if mobj.is_revoked() {
            return Err(TeeError::Revoked(mobj.id()));
        }
        let (range, was_cached) = match mobj.pins().try_pin() {
            Some(start) => match VirtPages::new(VirtAddr(start), mobj.num_pages()) {
                Ok(range) => (range, true),
                Err(_) => {
                    // Cannot happen for a published mapping; the pin is not kept.
                    window.release_guard(mobj);
                    return Err(TeeError::OutOfMemory);
                }
            },
            None => window.write().acquire(mobj)?,
        };
        Ok(Self {
            window,
            platform,
            mobj,
            range,
            was_cached,
        })
    }

    /// Virtual address of the buffer's first byte.
    pub fn va(&self) -> VirtAddr {
        VirtAddr(self.range.start().get() + self.mobj.page_offset())
    }

    /// The pages mapped.
    pub fn range(&self) -> VirtPages {
        self.range
    }

    /// Whether the mapping existed before this guard (a cache hit).
    pub fn was_cached(&self) -> bool {
        self.was_cached
    }

    fn va_of(&self, offset: u64, len: usize) -> Result<VirtAddr, TeeError> {
        let size = self.mobj.size();
        let out = TeeError::OutOfBounds {
            offs: offset,
            size: len as u64,
            buf_size: size,
        };
        let end = offset.checked_add(len as u64).ok_or(out.clone())?;
        if end > size {
            return Err(out);
        }
        Ok(VirtAddr(self.va().get() + offset))
    }

    /// Copies `buf.len()` bytes at `offset` of the buffer into secure memory, holding no lock.
    ///
    /// # Errors
    /// Out of the buffer's bounds, [`TeeError::Revoked`] once the normal world took the
    /// buffer back, or a fault of the access.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), TeeError> {
        let va = self.va_of(offset, buf.len())?;
        let _copy = self.begin_copy()?;
        Ok(self.platform.read(&WindowWalk(self.window), va, buf)?)
    }

    /// Copies `data` to `offset` of the buffer, holding no lock.
    ///
    /// # Errors
    /// Out of the buffer's bounds, [`TeeError::Revoked`] once the normal world took the
    /// buffer back, or a fault of the access.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), TeeError> {
        let va = self.va_of(offset, data.len())?;
        let _copy = self.begin_copy()?;
        Ok(self.platform.write(&WindowWalk(self.window), va, data)?)
    }

    /// The copy's pass: refused once the object is revoked; while it lives, a revocation
    /// waits before the mapping goes, so the copy reaches the buffer's pages or nothing.
    fn begin_copy(&self) -> Result<crate::lifecycle::CopyPass<'a>, TeeError> {
        self.mobj
            .begin_copy()
            .ok_or(TeeError::Revoked(self.mobj.id()))
    }
}

impl<P: Platform> Drop for MapGuard<'_, P> {
    fn drop(&mut self) {
        self.window.release_guard(self.mobj);
    }
}
