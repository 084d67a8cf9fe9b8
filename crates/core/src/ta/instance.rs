//! One TA instance: its own translation regime (tables tagged with its ASID), its private
//! pages in TA RAM, and the memref parameters of the invocation it runs.
//!
//! A memref parameter is mapped for its invocation only, and lazily: the invocation reserves a
//! span of the parameter region for it (2 MiB aligned, so that the spans of one invocation are
//! unmapped with one table write per 2 MiB) and each page is mapped when the TA first touches
//! it (a translation fault the core resolves). An invocation with a 1 MiB registered buffer
//! thus costs the pages the TA touches, not the buffer's size (OP-TEE's issue #6142: it maps
//! every page of every memref on every invocation). When the invocation returns, the spans are
//! unmapped and the TLB invalidated by ASID: a pointer the TA kept faults.

use super::image::{SegmentAccess, TaImage};
use super::resources::{Held, TaResources};
use crate::error::TeeError;
use crate::guest::GuestCounters;
use crate::mobj::Mobj;
use crate::platform::{Translate, UserRoot};
use crate::sync::Mutex;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use teeshm_abi::GuestId;
use teeshm_abi::utee::layout;
use teeshm_mm::tables::Translation;
use teeshm_mm::{
    MemKind, PAGE_SIZE, PhysAddr, TableError, TranslationTables, UserPage, VirtAddr, VirtPages,
};
use teeshm_platform::TlbMaintenance;

/// The TLB maintenance of one TA's tables (by its ASID).
pub type UserTlb = Box<dyn TlbMaintenance + Send + Sync>;

/// A TA's translation tables; their TLB maintenance invalidates by the space's ASID.
pub type UserTables = TranslationTables<UserTlb>;

/// Copies bytes into TA RAM by physical address (the platform's `write_ta_ram`).
pub(crate) type LoadFn<'a> = &'a dyn Fn(PhysAddr, &[u8]) -> Result<(), TeeError>;

/// Most table pages one TA's tables may hold: the root, the private region's level-2 table and
/// its level-3 tables (an image of up to 4 MiB, the heap, the stack: at most 4), the parameter
/// region's level-2 table, and the rest for the level-3 tables of the parameter pages the TA
/// touches in one entry (each covers 2 MiB); when the TA touches more, the parameter pages
/// mapped so far are unmapped and fault in again as it goes on. Charged to the guest with the
/// instance.
pub const MAX_USER_TABLE_PAGES: usize = 16;

/// Bytes of the parameter region each memref's span starts on.
const PARAM_ALIGN: u64 = 2 << 20;

/// Where the pages of a memref parameter come from.
#[derive(Debug)]
pub(crate) enum PageSource {
    /// A client's shared-memory object, from its page `first` on.
    Object {
        /// The object (the invocation holds a use and a copy pass of it).
        mobj: Arc<Mobj>,
        /// Index of the object page mapped at the span's first page.
        first: u64,
    },
    /// Pages of a calling TA (its own memory, or memory mapped for it), in order.
    Pages {
        /// The physical pages.
        pages: Vec<PhysAddr>,
        /// Secure memory (the calling TA's own) rather than the normal world's.
        secure: bool,
    },
}

/// A memref parameter's span in the TA's parameter region.
#[derive(Debug)]
pub(crate) struct ParamSpan {
    /// First page of the span.
    start: u64,
    /// Pages of the span that may be mapped.
    pages: u64,
    /// The TA may write (an output or inout memref).
    writable: bool,
    source: PageSource,
}

impl ParamSpan {
    fn page(&self, index: u64) -> Option<(PhysAddr, bool)> {
        match &self.source {
            PageSource::Object { mobj, first } => {
                Some((mobj.page(first.checked_add(index)?)?, false))
            }
            PageSource::Pages { pages, secure } => {
                let i = usize::try_from(index).ok()?;
                Some((*pages.get(i)?, *secure))
            }
        }
    }
}

/// How a TA instance ended, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// It touched memory not mapped for it (or not with that access).
    Fault {
        /// The address.
        far: u64,
    },
    /// It called `TEE_Panic`.
    Panic {
        /// Its code.
        code: u64,
    },
    /// Another exception (an undefined instruction, say).
    Exception {
        /// `ESR_EL1`.
        esr: u64,
    },
}

/// The mutable part of an instance: its tables and the spans of its current invocation.
pub(crate) struct SpaceState {
    pub(crate) tables: UserTables,
    spans: Vec<ParamSpan>,
    /// End of the spans reserved so far (from `PARAM_BASE`).
    spans_end: u64,
    /// Sessions this instance opened to other TAs, by id.
    pub(crate) sessions: BTreeMap<u32, Arc<TaInstance>>,
    pub(crate) next_session: u32,
}

/// A running copy of a TA, in its own address space.
pub struct TaInstance {
    image: Arc<TaImage>,
    owner: GuestId,
    counters: Arc<GuestCounters>,
    resources: Arc<TaResources>,
    held: Mutex<Held>,
    asid: u16,
    root: PhysAddr,
    pub(crate) space: Mutex<SpaceState>,
    busy: AtomicBool,
    death: Mutex<Option<Death>>,
}

impl core::fmt::Debug for TaInstance {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaInstance")
            .field("ta", &self.image.name)
            .field("owner", &self.owner)
            .field("asid", &self.asid)
            .finish_non_exhaustive()
    }
}

/// Pages an instance of `image` needs: its segments, heap and stack.
fn pages_needed(image: &TaImage) -> Result<u64, TeeError> {
    let mut pages = (layout::HEAP_SIZE + layout::STACK_SIZE) / PAGE_SIZE;
    for s in &image.segments {
        pages = pages
            .checked_add(s.mem_size.div_ceil(PAGE_SIZE))
            .ok_or(TeeError::OutOfMemory)?;
    }
    Ok(pages)
}

impl TaInstance {
    /// A new instance of `image` for `owner`: its pages taken and loaded (`write` copies into
    /// TA RAM), its tables built; the TA has not run yet.
    ///
    /// # Errors
    /// No TA RAM, ASID or table memory left, or the guest's share passed.
    pub(crate) fn new(
        image: Arc<TaImage>,
        owner: GuestId,
        (counters, limit): (Arc<GuestCounters>, u64),
        resources: Arc<TaResources>,
        make_tlb: &dyn Fn(u16) -> UserTlb,
        write: LoadFn<'_>,
    ) -> Result<Arc<Self>, TeeError> {
        let mut held = resources.take(&counters, limit, pages_needed(&image)?)?;
        match Self::load(&image, &held, make_tlb(held.asid), write) {
            Ok(tables) => {
                let root = tables.root_address();
                Ok(Arc::new(Self {
                    asid: held.asid,
                    image,
                    owner,
                    counters,
                    resources,
                    held: Mutex::new(held),
                    root,
                    space: Mutex::new(SpaceState {
                        tables,
                        spans: Vec::new(),
                        spans_end: 0,
                        sessions: BTreeMap::new(),
                        next_session: 1,
                    }),
                    busy: AtomicBool::new(false),
                    death: Mutex::new(None),
                }))
            }
            Err(e) => {
                resources.give_back(&counters, &mut held);
                Err(e)
            }
        }
    }

    fn load(
        image: &TaImage,
        held: &Held,
        tlb: UserTlb,
        write: LoadFn<'_>,
    ) -> Result<UserTables, TeeError> {
        let mut tables = UserTables::new_user(MAX_USER_TABLE_PAGES, tlb, held.asid)
            .map_err(|_| TeeError::OutOfMemory)?;
        let mut pages = held.pages.iter().copied();
        let zero = [0u8; PAGE_SIZE as usize];
        let mut place = |tables: &mut UserTables,
                         va: u64,
                         count: u64,
                         bytes: &[u8],
                         page: UserPage|
         -> Result<(), TeeError> {
            let mut frames = Vec::new();
            frames
                .try_reserve_exact(usize::try_from(count).map_err(|_| TeeError::OutOfMemory)?)
                .map_err(|_| TeeError::OutOfMemory)?;
            for i in 0..count {
                let pa = pages.next().ok_or(TeeError::OutOfMemory)?;
                let from = usize::try_from(i * PAGE_SIZE).map_err(|_| TeeError::OutOfMemory)?;
                let chunk = bytes.get(from..).unwrap_or(&[]);
                let chunk = chunk.get(..PAGE_SIZE as usize).unwrap_or(chunk);
                // The image's bytes, then zeroes to the end of the page (once each).
                write(pa, chunk)?;
                let rest = zero.get(chunk.len()..).unwrap_or(&[]);
                if !rest.is_empty() {
                    write(PhysAddr(pa.get() + chunk.len() as u64), rest)?;
                }
                frames.push(pa);
            }
            let range = VirtPages::new(VirtAddr(va), count)
                .map_err(|_| TeeError::BadParameters("TA segment misplaced"))?;
            tables
                .map_pages(range, &frames, MemKind::User(page))
                .map_err(|_| TeeError::OutOfMemory)
        };
        for s in &image.segments {
            let page = match s.access {
                SegmentAccess::ReadExecute => UserPage::CODE,
                SegmentAccess::Read => UserPage::RODATA,
                SegmentAccess::ReadWrite => UserPage::DATA,
            };
            place(
                &mut tables,
                s.vaddr,
                s.mem_size.div_ceil(PAGE_SIZE),
                s.data,
                page,
            )?;
        }
        place(
            &mut tables,
            layout::HEAP_BASE,
            layout::HEAP_SIZE / PAGE_SIZE,
            &[],
            UserPage::DATA,
        )?;
        place(
            &mut tables,
            layout::STACK_TOP - layout::STACK_SIZE,
            layout::STACK_SIZE / PAGE_SIZE,
            &[],
            UserPage::DATA,
        )?;
        Ok(tables)
    }

    /// The TA's image.
    pub fn image(&self) -> &TaImage {
        &self.image
    }

    /// The guest whose call made it.
    pub fn owner(&self) -> GuestId {
        self.owner
    }

    /// The counters of that guest, which it is charged to.
    pub(crate) fn counters(&self) -> &Arc<GuestCounters> {
        &self.counters
    }

    /// Its address space, as the platform makes it current.
    pub fn root(&self) -> UserRoot {
        UserRoot {
            table: self.root,
            asid: self.asid,
        }
    }

    /// Bytes charged to its guest for it and for the instances of the sessions it opened.
    pub fn charged_bytes(&self) -> u64 {
        let own = self.held.lock().charged;
        let sessions: alloc::vec::Vec<Arc<TaInstance>> =
            self.space.lock().sessions.values().cloned().collect();
        sessions
            .iter()
            .fold(own, |sum, s| sum.saturating_add(s.charged_bytes()))
    }

    /// This instance and those of the sessions it opened, and theirs.
    pub fn instances(&self) -> u64 {
        let sessions: alloc::vec::Vec<Arc<TaInstance>> =
            self.space.lock().sessions.values().cloned().collect();
        sessions
            .iter()
            .fold(1, |n, s| n.saturating_add(s.instances()))
    }

    /// How it died, if it did.
    pub fn death(&self) -> Option<Death> {
        *self.death.lock()
    }

    pub(crate) fn die(&self, how: Death) {
        let mut death = self.death.lock();
        if death.is_none() {
            *death = Some(how);
        }
    }

    /// Claims the instance for one invocation.
    pub(crate) fn claim(&self) -> Result<Claim<'_>, TeeError> {
        if self.death().is_some() {
            return Err(TeeError::TargetDead);
        }
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| TeeError::TaBusy)?;
        Ok(Claim(self))
    }

    /// Reserves a span of the parameter region for `pages` pages from `source`, and returns the
    /// address of its first page.
    pub(crate) fn add_span(
        &self,
        pages: u64,
        writable: bool,
        source: PageSource,
    ) -> Result<u64, TeeError> {
        let mut space = self.space.lock();
        let start = layout::PARAM_BASE + space.spans_end;
        let bytes = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|b| b.checked_next_multiple_of(PARAM_ALIGN))
            .ok_or(TeeError::BadParameters("memref too large for a TA"))?;
        let end = space
            .spans_end
            .checked_add(bytes.max(PARAM_ALIGN))
            .filter(|&e| e <= layout::PARAM_SIZE)
            .ok_or(TeeError::BadParameters(
                "memref parameters larger than a TA's parameter region (1 GiB)",
            ))?;
        space
            .spans
            .try_reserve(1)
            .map_err(|_| TeeError::OutOfMemory)?;
        space.spans.push(ParamSpan {
            start,
            pages,
            writable,
            source,
        });
        space.spans_end = end;
        Ok(start)
    }

    /// Maps the page of `va` if it lies in a span of the current invocation and `write` is
    /// allowed there: the answer to a translation fault. `false`: the TA touched what is not
    /// its own.
    pub(crate) fn fault_in(&self, va: u64, write: bool) -> bool {
        let mut space = self.space.lock();
        let page_va = va & !(PAGE_SIZE - 1);
        let Some((pa, secure, writable)) = space.spans.iter().find_map(|s| {
            let index = page_va.checked_sub(s.start)? / PAGE_SIZE;
            if index >= s.pages {
                return None;
            }
            let (pa, secure) = s.page(index)?;
            Some((pa, secure, s.writable))
        }) else {
            return false;
        };
        if write && !writable {
            return false;
        }
        if space.tables.translate_page(VirtAddr(page_va)).is_some() {
            // Mapped already (another access of the same instruction): a permission fault.
            return false;
        }
        let Ok(range) = VirtPages::new(VirtAddr(page_va), 1) else {
            return false;
        };
        let kind = MemKind::User(UserPage::shared(secure, writable));
        match space.tables.map_pages(range, &[pa], kind) {
            Ok(()) => true,
            Err(TableError::OutOfTableMemory { .. }) => {
                // The parameter pages act as a cache: drop what is mapped and go on.
                unmap_spans(&mut space);
                space.tables.map_pages(range, &[pa], kind).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Whether every page of `va..va + len` is the TA's to read (and to write, if `write`),
    /// mapping parameter pages on the way. `own_only`: memref parameters do not count
    /// (`TEE_MEMORY_ACCESS_ANY_OWNER` not given).
    pub(crate) fn check_access(&self, va: u64, len: u64, write: bool, own_only: bool) -> bool {
        let Some(span) = page_span(va, len) else {
            return false;
        };
        let pages = pages_of_span(span);
        let params = layout::PARAM_BASE..layout::PARAM_BASE + layout::PARAM_SIZE;
        let allowed = |t: Option<Translation>| matches!(t, Some(Translation { kind: Some(MemKind::User(p)), .. }) if !write || p.writable);
        for page in pages.clone() {
            let in_params = params.contains(&page);
            if in_params && own_only {
                return false;
            }
            let mapped = self.space.lock().tables.translate_page(VirtAddr(page));
            let reachable = allowed(mapped) || (in_params && self.fault_in(page, write));
            if !reachable {
                return false;
            }
        }
        // Mapping a page may have dropped the parameter pages mapped before it (when the
        // tables were full): the core's copy that follows must find every page mapped.
        let space = self.space.lock();
        pages_of_span(span).all(|page| allowed(space.tables.translate_page(VirtAddr(page))))
    }

    /// The physical pages under `va..va + len` (each the TA's to read, and to write if
    /// `write`), and whether all are secure: what a TA hands to another TA as a memref.
    pub(crate) fn pages_of(
        &self,
        va: u64,
        len: u64,
        write: bool,
    ) -> Result<(Vec<PhysAddr>, bool), TeeError> {
        let span = page_span(va, len).filter(|_| self.check_access(va, len, write, false));
        let Some(span) = span else {
            return Err(TeeError::BadParameters(
                "memref not in the calling TA's memory",
            ));
        };
        let (first, count) = span;
        let mut pages = Vec::new();
        pages
            .try_reserve_exact(usize::try_from(count).map_err(|_| TeeError::OutOfMemory)?)
            .map_err(|_| TeeError::OutOfMemory)?;
        let mut secure = true;
        let space = self.space.lock();
        for i in 0..count {
            let at = VirtAddr(first + i * PAGE_SIZE);
            match space.tables.translate_page(at) {
                Some(Translation {
                    pa,
                    kind: Some(MemKind::User(p)),
                }) => {
                    secure &= p.secure;
                    pages.push(pa);
                }
                // Unmapped since the check (the parameter cache was dropped): refuse.
                _ => {
                    return Err(TeeError::BadParameters(
                        "memref not in the calling TA's memory",
                    ));
                }
            }
        }
        Ok((pages, secure))
    }

    /// Unmaps every span of the invocation that ends (one TLB invalidation by ASID) and forgets
    /// them.
    pub(crate) fn end_invocation(&self) {
        let mut space = self.space.lock();
        unmap_spans(&mut space);
        space.spans.clear();
        space.spans_end = 0;
    }
}

/// The pages under `va..va + len`: the first page's address and how many (none for `len` 0;
/// `None` if the range wraps).
fn page_span(va: u64, len: u64) -> Option<(u64, u64)> {
    if len == 0 {
        return Some((0, 0));
    }
    let last = va.checked_add(len - 1)?;
    let first = va & !(PAGE_SIZE - 1);
    Some((first, (last - first) / PAGE_SIZE + 1))
}

/// The page addresses of a [`page_span`].
fn pages_of_span((first, count): (u64, u64)) -> impl Iterator<Item = u64> + Clone {
    (0..count).map(move |i| first + i * PAGE_SIZE)
}

fn unmap_spans(space: &mut SpaceState) {
    if space.spans_end == 0 {
        return;
    }
    if let Ok(range) = VirtPages::new(VirtAddr(layout::PARAM_BASE), space.spans_end / PAGE_SIZE) {
        space.tables.unmap(range);
    }
}

impl Translate for TaInstance {
    fn translate_page(&self, page: VirtAddr) -> Option<Translation> {
        self.space.lock().tables.translate_page(page)
    }
}

impl Drop for TaInstance {
    fn drop(&mut self) {
        // No TLB may keep a translation of this ASID once its pages and the ASID are reused.
        self.space.lock().tables.tlb_mut().invalidate_all();
        let mut held = self.held.lock();
        self.resources.give_back(&self.counters, &mut held);
    }
}

/// One invocation's hold of an instance; dropping it ends the invocation.
pub(crate) struct Claim<'a>(&'a TaInstance);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.end_invocation();
        self.0.busy.store(false, Ordering::Release);
    }
}
