//! Making, using and releasing memory objects: page lists decoded into objects, one-page
//! places for args, contiguous RPC buffers, the static pool, and the release at the end of
//! each SMC.

use crate::arg::NsRef;
use crate::entry::Tee;
use crate::error::TeeError;
use crate::guest::{GuestPartition, KeptArgPage};
use crate::mobj::{Backing, FramesBuilder, Mobj, MobjId, MobjKind, MobjSpec, MobjUse};
use crate::msg::MemrefBuf;
use crate::platform::{AccessFault, Platform};
use crate::window::MapGuard;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use teeshm_abi::GuestId;
use teeshm_abi::page_list::{self, ListPage, NsMemory, PageListError};
use teeshm_mm::{PAGE_SIZE, PhysAddr, PhysRange};

/// Reads page-list pages for the decoder through transient one-page mappings of the window
/// (normal-world memory only), so a list page outside normal-world memory can never be read.
struct ListReader<'a, P: Platform> {
    tee: &'a Tee<P>,
}

impl<P: Platform> NsMemory for ListReader<'_, P> {
    type Error = AccessFault;

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        let page = PhysAddr(pa);
        let mut window = self.tee.window.write();
        let platform = &self.tee.platform;
        match window.with_transient_page(page, |shm, va| platform.read(shm, va, buf)) {
            Ok(read) => read,
            Err(_) => Err(AccessFault::Permission(pa)),
        }
    }
}

impl<P: Platform> Tee<P> {
    pub(crate) fn next_id(&self) -> MobjId {
        MobjId(self.next_mobj.fetch_add(1, Ordering::Relaxed))
    }

    /// A new object of `guest`, charged to its quotas.
    pub(crate) fn new_mobj(
        &self,
        guest: &GuestPartition,
        spec: MobjSpec,
    ) -> Result<Arc<Mobj>, TeeError> {
        let kind = spec.kind;
        let mobj = Mobj::new(
            self.next_id(),
            spec,
            guest.counters().clone(),
            self.releases.clone(),
        );
        let registered = if kind == MobjKind::Registered {
            mobj.num_pages()
        } else {
            0
        };
        let charge = || {
            guest
                .counters()
                .charge_object(&self.config.quotas, registered, mobj.charged_bytes())
        };
        match charge() {
            // Kept arg pages yield to the guest's quotas: they go, and the charge is tried
            // again (a kept page a call still uses goes with that call).
            Err(TeeError::Quota { .. }) if self.drop_kept_arg_pages(guest) => charge()?,
            charged => charged?,
        }
        Ok(Arc::new(mobj))
    }

    /// Lets go of every arg page `guest` keeps; whether it kept any.
    fn drop_kept_arg_pages(&self, guest: &GuestPartition) -> bool {
        let kept = core::mem::take(&mut guest.state.lock().kept_arg_pages);
        for k in &kept {
            self.discard(&k.mobj);
        }
        !kept.is_empty()
    }

    /// Decodes a NONCONTIG page list of `guest` (`buf_ptr` = first list page | offset) into a
    /// new object, after checking that every data page is normal-world memory.
    pub(crate) fn page_list_mobj(
        &self,
        guest: &GuestPartition,
        buf_ptr: u64,
        size: u64,
        kind: MobjKind,
        cookie: Option<u64>,
    ) -> Result<Arc<Mobj>, TeeError> {
        let mut reader = ListReader { tee: self };
        let offset = buf_ptr & (PAGE_SIZE - 1);
        let max = self.config.max_buffer_pages;
        // Room for exactly the pages the list must have (none when the decode will refuse it
        // before reading anything).
        let count = page_list::num_pages(offset, size)
            .ok()
            .filter(|&n| n <= max)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let mut frames = FramesBuilder::with_capacity(count)?;
        let mut region: Option<PhysRange> = None;
        let mut refusal = None;
        // The guest's list-page buffer if no other CPU of it holds it (taken from the heap
        // once), else one cleared on the stack.
        let mut kept = guest.list_page.try_lock();
        let kept_page = kept.as_mut().and_then(|pages| {
            if pages.is_empty() && pages.try_reserve_exact(1).is_ok() {
                pages.push(ListPage::new());
            }
            pages.first_mut()
        });
        let mut fresh;
        let page = match kept_page {
            Some(page) => page,
            None => {
                fresh = ListPage::new();
                &mut fresh
            }
        };
        let decoded = page_list::decode_chunks_in(
            &mut reader,
            page,
            buf_ptr - offset,
            offset,
            size,
            max,
            |_, pages| {
                // A list page's worth inside the region of its first page (the usual case: a
                // buffer in one region of normal-world RAM) is checked and stored in one pass.
                if let Some(first) = pages.first() {
                    if let Err(e) = self.check_in_region(&mut region, first.get()) {
                        refusal = Some(e);
                        return Err(0);
                    }
                }
                if region.is_some_and(|r| frames.extend_within(r, pages)) {
                    return Ok(());
                }
                for (i, pa) in pages.iter().enumerate() {
                    let pa = pa.get();
                    if let Err(e) = self
                        .check_in_region(&mut region, pa)
                        .and_then(|()| frames.push(pa))
                    {
                        refusal = Some(e);
                        return Err(i);
                    }
                }
                Ok(())
            },
        );
        drop(kept);
        let shape = match decoded {
            Ok(shape) => shape,
            Err(PageListError::Refused { .. }) => {
                return Err(refusal.unwrap_or(TeeError::OutOfMemory));
            }
            Err(e) => return Err(e.into()),
        };
        let (offset, size) = (shape.offset, shape.size);
        let frames = frames.finish();
        self.new_mobj(
            guest,
            MobjSpec {
                kind,
                owner: guest.id(),
                cookie,
                size,
                page_offset: offset,
                backing: Backing::Pages(frames),
            },
        )
    }

    /// Checks that `pa` is a page of normal-world RAM (invariant 1); `region` remembers the
    /// region of the page before, so a list inside one region needs one lookup in all.
    pub(crate) fn check_in_region(
        &self,
        region: &mut Option<PhysRange>,
        pa: u64,
    ) -> Result<(), TeeError> {
        let page = PhysRange::page(PhysAddr(pa)).map_err(|_| TeeError::NotNonSecure(pa))?;
        if region.is_some_and(|r| r.contains_range(page)) {
            return Ok(());
        }
        *region = Some(self.non_secure_region(page)?);
        Ok(())
    }

    /// The normal-world region holding `page`.
    pub(crate) fn non_secure_region(&self, page: PhysRange) -> Result<PhysRange, TeeError> {
        match self.memory_map.region_of(page.start()) {
            Some(r) if r.kind.is_non_secure_memory() && r.range.contains_range(page) => Ok(r.range),
            _ => Err(TeeError::NotNonSecure(page.start().get())),
        }
    }

    /// One page must be normal-world RAM.
    pub(crate) fn check_non_secure(&self, pa: u64) -> Result<(), TeeError> {
        let page = PhysRange::page(PhysAddr(pa)).map_err(|_| TeeError::NotNonSecure(pa))?;
        self.non_secure_region(page).map(|_| ())
    }

    /// The bytes from physical address `pa` to the end of its page as a place the call uses:
    /// inside the static pool when it lies there, else a new one-page object of `kind`.
    pub(crate) fn ns_ref_at(
        &self,
        guest: &GuestPartition,
        pa: u64,
        kind: MobjKind,
        cookie: Option<u64>,
        owned: &mut Vec<Arc<Mobj>>,
    ) -> Result<NsRef, TeeError> {
        if let Some(MemrefBuf { used, offs }) = self.pool_ref(pa, 1) {
            return Ok(NsRef { used, offset: offs });
        }
        let page = pa & !(PAGE_SIZE - 1);
        let offset = pa - page;
        self.check_non_secure(page)?;
        let spec = MobjSpec {
            kind,
            owner: guest.id(),
            cookie,
            size: PAGE_SIZE - offset,
            page_offset: offset as u16,
            backing: Backing::Contiguous {
                first: PhysAddr(page),
                pages: 1,
            },
        };
        let mobj = self.new_mobj(guest, spec)?;
        let used = if kind == MobjKind::Temporary {
            self.use_owned(&mobj, owned)?
        } else {
            MobjUse::try_new(&mobj).ok_or(TeeError::OutOfMemory)?
        };
        Ok(NsRef { used, offset: 0 })
    }

    /// The arg of a `CALL_WITH_ARG` at `pa`: inside the static pool when it lies there, else
    /// on a page the guest keeps for its args (`CoreConfig::kept_arg_pages` at most, most recently used
    /// first), so a guest that passes its args on the same pages — a mediator's shadow page,
    /// a driver's per-thread arg — finds the page's object, and its mapping, from its last
    /// call: no object made, no map or unmap, no lock but its own. A page not kept becomes a
    /// new object of kind [`MobjKind::ArgPage`], kept in the place of the least recently used.
    /// The kept pages yield to the guest's quotas: when a new object of the guest does not
    /// fit them, its kept pages are let go and the charge is tried again ([`Self::new_mobj`]).
    pub(crate) fn arg_ref_at(&self, guest: &GuestPartition, pa: u64) -> Result<NsRef, TeeError> {
        if let Some(MemrefBuf { used, offs }) = self.pool_ref(pa, 1) {
            return Ok(NsRef { used, offset: offs });
        }
        let page = pa & !(PAGE_SIZE - 1);
        let offset = pa - page;
        {
            let mut state = guest.state.lock();
            let kept = &mut state.kept_arg_pages;
            if let Some(i) = kept.iter().position(|k| k.page == page) {
                // Most recently used first.
                if let Some(front) = kept.get_mut(..=i) {
                    front.rotate_right(1);
                }
                if let Some(used) = kept.first().and_then(|k| MobjUse::try_new(&k.mobj)) {
                    return Ok(NsRef { used, offset });
                }
            }
        }
        self.check_non_secure(page)?;
        let spec = MobjSpec {
            kind: MobjKind::ArgPage,
            owner: guest.id(),
            cookie: None,
            size: PAGE_SIZE,
            page_offset: 0,
            backing: Backing::Contiguous {
                first: PhysAddr(page),
                pages: 1,
            },
        };
        let mobj = self.new_mobj(guest, spec)?;
        let used = MobjUse::try_new(&mobj).ok_or(TeeError::OutOfMemory)?;
        let evicted = {
            let mut state = guest.state.lock();
            let kept = &mut state.kept_arg_pages;
            // A guest being destroyed keeps nothing (its sweep may have passed already).
            if guest.is_dying() || kept.try_reserve(1).is_err() {
                None
            } else {
                kept.insert(
                    0,
                    KeptArgPage {
                        page,
                        mobj: mobj.clone(),
                    },
                );
                Some(if kept.len() > usize::from(self.config.kept_arg_pages) {
                    kept.pop()
                } else {
                    None
                })
            }
        };
        match evicted {
            // Not kept: retired now, it goes with this call's use.
            None => self.discard(&mobj),
            // The least recently used page goes (with its call, if one still uses it).
            Some(Some(old)) => self.discard(&old.mobj),
            Some(None) => {}
        }
        Ok(NsRef { used, offset })
    }

    /// A contiguous buffer the normal world named by physical address (an RPC SHM_ALLOC
    /// answer without NONCONTIG), for the running call only: the static pool if it lies there,
    /// else (one normal world only) a new object over its pages (all normal-world memory),
    /// retired at once so it is released with the returned use. Under a hypervisor only the
    /// static pool is taken.
    pub(crate) fn contiguous_mobj(
        &self,
        guest: &GuestPartition,
        pa: u64,
        size: u64,
        kind: MobjKind,
        cookie: Option<u64>,
    ) -> Result<MemrefBuf, TeeError> {
        if let Some(buf) = self.pool_ref(pa, size) {
            return Ok(buf);
        }
        if self.virtualized() {
            // Under a hypervisor a guest's contiguous address cannot be attributed to it: only
            // a page list is translated and pinned by every mediator, and Xen 4.17's passes a
            // contiguous SHM_ALLOC answer on untranslated (a guest IPA where a physical address
            // belongs: writing there reached another domain's memory, docs/xen.md).
            return Err(TeeError::BadParameters(
                "a contiguous buffer from a guest under a hypervisor",
            ));
        }
        let offset = pa & (PAGE_SIZE - 1);
        let pages = page_list::num_pages(offset, size).map_err(|_| TeeError::OutOfMemory)?;
        if pages > self.config.max_buffer_pages {
            return Err(TeeError::BadParameters("buffer too large"));
        }
        let first = PhysAddr(pa - offset);
        let range =
            PhysRange::new(first, pages * PAGE_SIZE).map_err(|_| TeeError::NotNonSecure(pa))?;
        if !self.memory_map.is_non_secure(range) {
            return Err(TeeError::NotNonSecure(pa));
        }
        let spec = MobjSpec {
            kind,
            owner: guest.id(),
            cookie,
            size,
            page_offset: offset as u16,
            backing: Backing::Contiguous { first, pages },
        };
        let mobj = self.new_mobj(guest, spec)?;
        Ok(MemrefBuf {
            used: self.use_retired(&mobj)?,
            offs: 0,
        })
    }

    /// `size` bytes at `pa` inside the static pool, if they lie there.
    pub(crate) fn pool_ref(&self, pa: u64, size: u64) -> Option<MemrefBuf> {
        let (range, mobj) = self.pool.as_ref()?;
        let offs = pa.checked_sub(range.start().get())?;
        let end = offs.checked_add(size)?;
        if end > range.len() {
            return None;
        }
        let used = MobjUse::try_new(mobj)?;
        Some(MemrefBuf { used, offs })
    }

    /// A use of a fresh object that nobody else will ever find: it is retired at once and
    /// released with this use.
    pub(crate) fn use_retired(&self, mobj: &Arc<Mobj>) -> Result<MobjUse, TeeError> {
        let used = MobjUse::try_new(mobj).ok_or(TeeError::OutOfMemory)?;
        mobj.uses().retire();
        Ok(used)
    }

    /// A use of a fresh object owned by a call, which retires it when it ends.
    pub(crate) fn use_owned(
        &self,
        mobj: &Arc<Mobj>,
        owned: &mut Vec<Arc<Mobj>>,
    ) -> Result<MobjUse, TeeError> {
        let used = MobjUse::try_new(mobj).ok_or(TeeError::OutOfMemory)?;
        owned.try_reserve(1).map_err(|_| TeeError::OutOfMemory)?;
        owned.push(mobj.clone());
        Ok(used)
    }

    /// Retires `mobj` and releases it now if nobody uses it.
    pub(crate) fn discard(&self, mobj: &Arc<Mobj>) {
        if mobj.kind() != MobjKind::StaticPool
            && mobj.uses().retire() == crate::lifecycle::Retire::ReleaseNow
        {
            self.release(mobj);
        }
    }

    /// Releases a retired object nobody uses: its mapping goes and its charge is refunded.
    pub(crate) fn release(&self, mobj: &Arc<Mobj>) {
        // Only an object that was mapped needs the window's lock (a guest's destruction
        // releases thousands that never were).
        if mobj.is_mapped() {
            self.window.write().forget(mobj.id());
        }
        let registered = if mobj.kind() == MobjKind::Registered {
            mobj.num_pages()
        } else {
            0
        };
        mobj.counters()
            .refund_object(registered, mobj.charged_bytes());
    }

    /// Releases the objects whose last use ended during this SMC.
    pub fn drain_releases(&self) {
        for mobj in self.releases.take() {
            self.release(&mobj);
        }
    }

    /// Maps `used` for access (see [`MapGuard`]).
    ///
    /// # Errors
    /// The window or the guest's mapped-pages quota has no room even after eviction.
    pub fn map<'a>(&'a self, used: &'a MobjUse) -> Result<MapGuard<'a, P>, TeeError> {
        MapGuard::new(&self.window, &self.platform, used)
    }

    /// A use of `guest`'s registered buffer `cookie` (for tests and tools).
    pub fn use_registered(&self, guest: GuestId, cookie: u64) -> Option<MobjUse> {
        let guest = self.guest(guest)?;
        let state = guest.state.lock();
        MobjUse::try_new(state.registered.get(&cookie)?)
    }
}
