//! The peers every figure is measured beside: hand-written models of what OP-TEE does, kept
//! simple and honest (each says where it is generous to OP-TEE).

use teeshm_abi::gp::{TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS};
use teeshm_abi::msg::{OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM};
use teeshm_abi::page_list::ENTRIES_PER_LIST_PAGE;
use teeshm_abi::utee;
use teeshm_core::ta::instance::{MAX_USER_TABLE_PAGES, UserTables, UserTlb};
use teeshm_mm::tables::TranslationTables;
use teeshm_mm::{MemKind, PhysAddr, UserPage, VirtAddr, VirtPages};
use teeshm_platform::RecordingTlb;
use teeshm_testkit::{NS_RAM, PhysMemory};

const PAGE: u64 = 4096;

/// A model of OP-TEE's `tee_mm` allocator (core/mm/tee_mm.c, read at optee_os commit
/// 5f76bc75f7a0f5e906fed575c01e1c410d19fb85, the last to change it in the snapshot of
/// d5001fe0af66a4c059dc6816a7be08d7fb83ff1a), written in Rust from its algorithm:
///
/// - the pool is a singly linked list of the allocated areas sorted by offset, behind a
///   sentinel entry of offset 0 and size 0 (`pool->entry`);
/// - `tee_mm_alloc` allocates the new entry on the heap first (`malloc_flags`, before the pool
///   lock), then walks from the sentinel while the request does not fit the gap between an
///   entry's end and the next entry's start (first fit), checks the space after the last entry
///   if it reached the end, and links the new entry in after the one it stopped at;
/// - `tee_mm_free` walks from the sentinel to the entry (compared by identity), unlinks it and
///   frees it.
///
/// The pool's `TEE_MM_POOL_HI_ALLOC` mode and statistics are not modelled (the SHM VA pool,
/// `core_virt_shm_pool`, uses neither). Offsets and sizes are in pages (`shift` 12).
pub struct TeeMm {
    sentinel: TeeMmEntry,
    size: u64,
}

/// One allocated area (`tee_mm_entry_t`).
pub struct TeeMmEntry {
    offset: u64,
    size: u64,
    next: Option<Box<TeeMmEntry>>,
}

/// What `tee_mm_alloc` returns: the entry, kept by the caller (as OP-TEE's `mobj_reg_shm`
/// keeps `r->mm`) and given back to `tee_mm_free`. Only compared, never dereferenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeeMmHandle {
    entry: *const TeeMmEntry,
    /// The area's first page.
    pub offset: u64,
}

impl TeeMm {
    /// An empty pool of `size` pages (`tee_mm_init`).
    pub fn new(size: u64) -> Self {
        Self {
            sentinel: TeeMmEntry {
                offset: 0,
                size: 0,
                next: None,
            },
            size,
        }
    }

    /// A pool already holding `areas` (offset, size), sorted by offset and not overlapping:
    /// builds in O(n) the list `tee_mm_alloc` would take O(n²) to build.
    pub fn with_areas(size: u64, areas: impl DoubleEndedIterator<Item = (u64, u64)>) -> Self {
        let mut pool = Self::new(size);
        for (offset, len) in areas.rev() {
            let next = pool.sentinel.next.take();
            pool.sentinel.next = Some(Box::new(TeeMmEntry {
                offset,
                size: len,
                next,
            }));
        }
        pool
    }

    /// The handles of the areas, in address order (what the callers of `tee_mm_alloc` hold).
    pub fn handles(&self) -> Vec<TeeMmHandle> {
        let mut out = Vec::new();
        let mut entry = self.sentinel.next.as_deref();
        while let Some(e) = entry {
            out.push(TeeMmHandle {
                entry: e,
                offset: e.offset,
            });
            entry = e.next.as_deref();
        }
        out
    }

    /// `tee_mm_alloc` of `psize` pages: first fit from the pool's start.
    pub fn alloc(&mut self, psize: u64) -> Option<TeeMmHandle> {
        // malloc_flags(.., sizeof(tee_mm_entry_t)) before the lock.
        let mut nn = Box::new(TeeMmEntry {
            offset: 0,
            size: 0,
            next: None,
        });
        let mut entry = &mut self.sentinel;
        while let Some(next) = entry.next.as_deref() {
            if psize <= next.offset - entry.size - entry.offset {
                break;
            }
            entry = entry.next.as_deref_mut()?;
        }
        if entry.next.is_none() && self.size - (entry.offset + entry.size) < psize {
            return None; // the entry is freed (free_flags) on the way out
        }
        nn.offset = entry.offset + entry.size;
        nn.size = psize;
        nn.next = entry.next.take();
        let handle = TeeMmHandle {
            entry: &*nn,
            offset: nn.offset,
        };
        entry.next = Some(nn);
        Some(handle)
    }

    /// `tee_mm_free`: walks to the entry, unlinks and frees it; false where OP-TEE panics
    /// ("invalid mm_entry").
    pub fn free(&mut self, handle: TeeMmHandle) -> bool {
        let mut entry = &mut self.sentinel;
        loop {
            match entry.next.as_deref() {
                Some(next) if std::ptr::eq(next, handle.entry) => break,
                Some(_) => {}
                None => return false,
            }
            let Some(next) = entry.next.as_deref_mut() else {
                return false;
            };
            entry = next;
        }
        let Some(mut found) = entry.next.take() else {
            return false;
        };
        entry.next = found.next.take();
        drop(found);
        true
    }
}

impl Drop for TeeMm {
    /// Unlinks iteratively: a recursive drop of a 200 000-entry list would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.sentinel.next.take();
        while let Some(mut entry) = next {
            next = entry.next.take();
        }
    }
}

/// One registered buffer in the model: OP-TEE's `struct mobj_reg_shm` (core/mm/mobj_dyn_shm.c)
/// reduced to what registration touches: the list link, the cookie, the offset and size, and
/// the page array of 8 bytes a page (`paddr_t pages[]`). Kept, not read, as OP-TEE keeps them.
#[allow(dead_code)]
struct OpteeRegShm {
    next: Option<Box<OpteeRegShm>>,
    cookie: u64,
    page_offset: u64,
    size: u64,
    pages: Box<[u64]>,
}

/// A hand-written model of how OP-TEE registers a buffer, kept simple and honest:
///
/// 1. `msg_param_extract_pages`: the page list is read, one list page at a time, into a
///    temporary array of 8 bytes a page (each list page read once, only the bytes needed, from
///    the same simulated memory the teeshm side reads; the model does not map the list pages,
///    which OP-TEE does with `core_mmu_add_mapping` — in the model's favour);
/// 2. `mobj_reg_shm_alloc`: every page is checked against a linear list of non-secure memory
///    ranges (`core_pbuf_is(CORE_MEM_NON_SEC, ..)`; here the simulated machine's one NS RAM
///    range, the same memory map teeshm uses); the object is allocated and the page array
///    copied into it;
/// 3. the registered objects form a singly linked list (`reg_shm_list`): it is scanned for a
///    duplicate cookie (as `mobj_reg_shm_get_by_cookie` scans it), then the object is pushed
///    at its head.
///
/// It has none of the SMC front end (arg copy, thread, quotas): it is a lower bound on
/// OP-TEE's cost of the same work.
pub struct OpteeModel {
    head: Option<Box<OpteeRegShm>>,
    nsec_ddr: Vec<(u64, u64)>,
}

impl Default for OpteeModel {
    fn default() -> Self {
        Self::new()
    }
}

impl OpteeModel {
    /// An empty registry over the simulated machine's NS RAM.
    pub fn new() -> Self {
        Self {
            head: None,
            nsec_ddr: vec![NS_RAM],
        }
    }

    /// Registers the list at `buf_ptr` like OP-TEE; false where OP-TEE refuses.
    pub fn register(&mut self, mem: &PhysMemory, buf_ptr: u64, size: u64, cookie: u64) -> bool {
        self.register_with(mem, buf_ptr, size, cookie, &mut |_| {})
    }

    /// [`Self::register`], calling `list_page(pa)` before each list page is read (where
    /// OP-TEE maps it: [`OpteeEntryModel`]).
    pub fn register_with(
        &mut self,
        mem: &PhysMemory,
        buf_ptr: u64,
        size: u64,
        cookie: u64,
        list_page: &mut dyn FnMut(u64),
    ) -> bool {
        let offset = buf_ptr & (PAGE - 1);
        let count = (offset + size).div_ceil(PAGE) as usize;
        // 1. The page list into a temporary array.
        let mut pages: Vec<u64> = Vec::with_capacity(count);
        let mut list = buf_ptr & !(PAGE - 1);
        let mut raw = [0u8; PAGE as usize];
        loop {
            let remaining = count - pages.len();
            let here = remaining.min(ENTRIES_PER_LIST_PAGE);
            let more = remaining > here;
            let len = if more { PAGE as usize } else { here * 8 };
            list_page(list);
            mem.read(list, &mut raw[..len]);
            for entry in raw[..here * 8].chunks_exact(8) {
                let pa = u64::from_le_bytes(entry.try_into().unwrap());
                if pa & (PAGE - 1) != 0 {
                    return false;
                }
                pages.push(pa);
            }
            if !more {
                break;
            }
            list = u64::from_le_bytes(raw[ENTRIES_PER_LIST_PAGE * 8..].try_into().unwrap());
        }
        // 2. Every page non-secure (linear range list), then the object with its own copy.
        for &pa in &pages {
            let ok = self
                .nsec_ddr
                .iter()
                .any(|&(start, len)| pa >= start && pa + PAGE <= start + len);
            if !ok {
                return false;
            }
        }
        // 3. Duplicate cookie scan of the list, then push at the head.
        let mut cursor = &self.head;
        while let Some(node) = cursor {
            if node.cookie == cookie {
                return false;
            }
            cursor = &node.next;
        }
        let node = Box::new(OpteeRegShm {
            next: self.head.take(),
            cookie,
            page_offset: offset,
            size,
            pages: pages.as_slice().into(),
        });
        drop(pages);
        self.head = Some(node);
        true
    }

    /// Unregisters `cookie`.
    pub fn unregister(&mut self, cookie: u64) -> bool {
        let mut cursor = &mut self.head;
        loop {
            match cursor {
                Some(node) if node.cookie == cookie => {
                    let next = node.next.take();
                    *cursor = next;
                    return true;
                }
                Some(node) => cursor = &mut node.next,
                None => return false,
            }
        }
    }

    /// The registered object `cookie`, found as `mobj_reg_shm_get_by_cookie` finds it (a walk
    /// of the list from its head).
    fn find(&self, cookie: u64) -> Option<&OpteeRegShm> {
        let mut cursor = &self.head;
        while let Some(node) = cursor {
            if node.cookie == cookie {
                return Some(node);
            }
            cursor = &node.next;
        }
        None
    }

    /// Secure bytes one registered object of `pages` pages keeps in the model.
    pub fn object_bytes(pages: u64) -> u64 {
        size_of::<OpteeRegShm>() as u64 + 8 * pages
    }
}

/// `CFG_NUM_THREADS` of the model: OP-TEE's threads (its default is 2; platforms set 4-16).
const OPTEE_THREADS: usize = 8;
/// OP-TEE's SHM VA space (`SHM_VASPACE_SIZE`, core/mm/core_mmu.c): 32 MiB of 4 KiB pages.
const SHM_VASPACE_PAGES: u64 = 8192;
/// Where the model's SHM VA space lies.
const SHM_VASPACE_BASE: u64 = 0x20_0000_0000;

/// One object OP-TEE maps for a call (`mobj_mapped_shm_alloc`'s `mobj_reg_shm` of one page):
/// allocated and freed with the call, as OP-TEE does. Kept, not read.
#[allow(dead_code)]
struct OpteeMappedPage {
    mm: TeeMmHandle,
    page: u64,
}

/// A model of OP-TEE's whole yielding call as Linux makes it when the TEE offers
/// `OPTEE_SMC_SEC_CAP_RPC_ARG` (Linux 6.1's `optee_smc_do_call_with_arg`: the arg inside a
/// registered buffer, `OPTEE_SMC_CALL_WITH_REGD_ARG`), written from OP-TEE's
/// `std_entry_with_regd_arg` (core/arch/arm/kernel/thread_optee_smc.c), `mobj_reg_shm_inc_map`
/// and `mobj_reg_shm_dec_map` (core/mm/mobj_dyn_shm.c), `msg_param_extract_pages`
/// (core/kernel/msg_param.c) and `core_mmu_map_pages` / `core_mmu_unmap_pages`
/// (core/mm/core_mmu.c):
///
/// 1. a thread is claimed: a spin lock and a scan of the thread array
///    (`thread_alloc_and_run`);
/// 2. the arg's buffer is found by its cookie (a walk of the registered list under
///    `reg_shm_slist_lock`) and mapped, as its map count goes from 0 to 1 (under
///    `reg_shm_map_lock`): its pages are allocated in the SHM VA space ([`TeeMm`], 32 MiB)
///    and mapped one by one (the P3 peer);
/// 3. the header is read, then its params (two reads of the simulated memory);
/// 4. `REGISTER_SHM`: [`OpteeModel`]'s registration, each list page first mapped as OP-TEE
///    maps it (`mobj_mapped_shm_alloc`: an object allocated, a page of SHM VA, one page
///    mapped; unmapped, freed and its VA freed once read), the object inserted under
///    `reg_shm_slist_lock`; `UNREGISTER_SHM`: the object found in the list and freed, under
///    the same lock;
/// 5. `ret` and `ret_origin` written back (one write of 8 bytes);
/// 6. the arg's mapping goes as its map count drops to 0 (unmapped page by page, VA freed,
///    under `reg_shm_map_lock`: `mobj_reg_shm_dec_map`), and the thread is freed.
///
/// Generous to OP-TEE: its TLB invalidation (`tlbi_all` after each unmap) is only counted;
/// the model reads memory by physical address without walking its own tables (teeshm's side
/// reads through its translation, the simulated TLB and its checks); the arg's buffer is the
/// most recently registered one (at the head of the list, found at once), and nothing else
/// lives in the SHM VA space.
pub struct OpteeEntryModel {
    /// The registered buffers.
    pub registry: OpteeModel,
    threads: spin::Mutex<[bool; OPTEE_THREADS]>,
    /// `reg_shm_slist_lock` and `reg_shm_map_lock` (spin locks in OP-TEE).
    slist_lock: spin::Mutex<()>,
    map_lock: spin::Mutex<()>,
    shm_va: TeeMm,
    tables: TranslationTables<RecordingTlb>,
}

impl Default for OpteeEntryModel {
    fn default() -> Self {
        Self::new()
    }
}

impl OpteeEntryModel {
    /// No thread busy, nothing registered or mapped.
    pub fn new() -> Self {
        Self {
            registry: OpteeModel::new(),
            threads: spin::Mutex::new([false; OPTEE_THREADS]),
            slist_lock: spin::Mutex::new(()),
            map_lock: spin::Mutex::new(()),
            shm_va: TeeMm::new(SHM_VASPACE_PAGES),
            tables: TranslationTables::new(1 << 12, RecordingTlb::counting())
                .expect("tables for the model"),
        }
    }

    /// Maps `pages` into the SHM VA space as `core_mmu_map_pages` does, one page at a time.
    fn map(
        shm_va: &mut TeeMm,
        tables: &mut TranslationTables<RecordingTlb>,
        pages: &[u64],
    ) -> Option<TeeMmHandle> {
        let mm = shm_va.alloc(pages.len() as u64)?;
        for (i, &pa) in pages.iter().enumerate() {
            tables
                .map_pages(
                    Self::page_at(mm, i),
                    &[PhysAddr(pa)],
                    MemKind::NonSecureShared,
                )
                .ok()?;
        }
        Some(mm)
    }

    /// Unmaps `pages` pages mapped at `mm` as `core_mmu_unmap_pages` does, and frees the VA.
    fn unmap(
        shm_va: &mut TeeMm,
        tables: &mut TranslationTables<RecordingTlb>,
        mm: TeeMmHandle,
        pages: usize,
    ) {
        for i in 0..pages {
            tables.unmap(Self::page_at(mm, i));
        }
        shm_va.free(mm);
    }

    fn page_at(mm: TeeMmHandle, i: usize) -> VirtPages {
        VirtPages::new(
            VirtAddr(SHM_VASPACE_BASE + (mm.offset + i as u64) * PAGE),
            1,
        )
        .expect("a page of the SHM VA space")
    }

    /// One `CALL_WITH_REGD_ARG` of the arg at `offset` of the registered buffer `arg_cookie`:
    /// runs `REGISTER_SHM` or `UNREGISTER_SHM` and returns the `ret` written back, or `None`
    /// where OP-TEE would refuse the SMC itself.
    pub fn call_regd(&mut self, mem: &PhysMemory, arg_cookie: u64, offset: u64) -> Option<u32> {
        let thread = {
            let mut threads = self.threads.lock();
            let free = threads.iter().position(|busy| !busy)?;
            threads[free] = true;
            free
        };
        let (arg_pa, arg_pages, arg_mm) = {
            let listed = self.slist_lock.lock();
            let arg = self.registry.find(arg_cookie)?;
            drop(listed);
            let at = arg.page_offset + offset;
            let pa = *arg.pages.get((at / PAGE) as usize)? + at % PAGE;
            let mapping = self.map_lock.lock();
            let mm = Self::map(&mut self.shm_va, &mut self.tables, &arg.pages)?;
            drop(mapping);
            (pa, arg.pages.len(), mm)
        };
        let mut header = [0u8; 32];
        mem.read(arg_pa, &mut header);
        let cmd = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let num_params = u32::from_le_bytes(header[28..32].try_into().unwrap()) as usize;
        let mut params = [0u8; 4 * 32];
        let ret = if num_params != 1 {
            TEE_ERROR_BAD_PARAMETERS
        } else {
            mem.read(arg_pa + 32, &mut params[..32]);
            let word = |i: usize| u64::from_le_bytes(params[8 * i..8 * i + 8].try_into().unwrap());
            let ok = match cmd {
                OPTEE_MSG_CMD_REGISTER_SHM => {
                    let (shm_va, tables) = (&mut self.shm_va, &mut self.tables);
                    let map_lock = &self.map_lock;
                    let mut map_list_page = |pa: u64| {
                        // mobj_mapped_shm_alloc(&pa, 1, 0, 0), then its mobj_put once read.
                        let mapping = map_lock.lock();
                        let Some(mm) = Self::map(shm_va, tables, &[pa]) else {
                            return;
                        };
                        drop(mapping);
                        let mapped = Box::new(OpteeMappedPage { mm, page: pa });
                        let _unmapping = map_lock.lock();
                        Self::unmap(shm_va, tables, mapped.mm, 1);
                    };
                    // The list's scan and insertion run under reg_shm_slist_lock in OP-TEE;
                    // here the lock is held once around the whole registration.
                    let _listed = self.slist_lock.lock();
                    self.registry
                        .register_with(mem, word(1), word(2), word(3), &mut map_list_page)
                }
                OPTEE_MSG_CMD_UNREGISTER_SHM => {
                    let _listed = self.slist_lock.lock();
                    self.registry.unregister(word(3))
                }
                _ => false,
            };
            if ok {
                TEE_SUCCESS
            } else {
                TEE_ERROR_BAD_PARAMETERS
            }
        };
        let mut back = [0u8; 8];
        back[..4].copy_from_slice(&ret.to_le_bytes());
        mem.write(arg_pa + 20, &back);
        let unmapping = self.map_lock.lock();
        Self::unmap(&mut self.shm_va, &mut self.tables, arg_mm, arg_pages);
        drop(unmapping);
        self.threads.lock()[thread] = false;
        Some(ret)
    }
}

/// A model of how OP-TEE maps a user TA's memref parameters for one invocation: every page of
/// every memref, on every invocation, then all unmapped at its end (OP-TEE's issue #6142).
/// Written from `vm_map_param`, `vm_map_pad`, `set_um_region`, `set_reg_in_table`,
/// `vm_clean_param` and `rem_um_region` (core/mm/vm.c, read at optee_os commit
/// 01e40b302cf186bb2cad98f7476ad4d2a209d797); P9 runs teeshm's own 4 KiB invoke between the
/// model's map and unmap:
///
/// 1. `vm_map_param` rounds each memref to whole pages (`CORE_MMU_USER_PARAM_SIZE`) and maps
///    it with `vm_map(.., TEE_MATTR_PRW | TEE_MATTR_URW, VM_FLAG_EPHEMERAL | ..)`: user
///    read-write whatever the memref's direction;
/// 2. `set_um_region` → `set_reg_in_table` walks the region one physical granule at a time
///    (`mobj_get_phys_granule` of a registered buffer is one page): `mobj_get_pa` of the page,
///    then `set_pa_range` writes its descriptor into the 2 MiB table it already holds — no walk
///    from the root per page;
/// 3. after the TA returns, `vm_clean_param` → `rem_um_region` clears the region's entries
///    (`pgt_clear_range`) and invalidates its TLB entries page by page
///    (`tlbi_va_range_asid(.., SMALL_PAGE_SIZE, asid)`).
///
/// Here: one [`TranslationTables::map_pages`] of all the memref's pages at the TA's parameter
/// address, in user tables built as the core builds a TA's ([`UserTables::new_user`] with the
/// core's table budget and the simulator's user TLB maintenance), as the core maps a parameter
/// page (`MemKind::User`, normal-world memory) but writable, as OP-TEE maps it; then one
/// [`TranslationTables::unmap`] of the same pages.
///
/// Generous to OP-TEE: `map_pages` writes the descriptors in one walk of the range and the page
/// addresses come from a ready array (OP-TEE calls `mobj_get_pa` through the object's ops for
/// each page and converts the attributes for each descriptor); the page-by-page TLBIs (one
/// broadcast `TLBI VALE1IS` a page on hardware) are one counted request here; the
/// `vm_region`'s `calloc`, its insertion in the TA's sorted region list, `param_mem`'s sort and
/// merge, and the 2 MiB table taken from and given back to the `pgt` cache are not modelled.
pub struct OpteeParamMapModel {
    tables: UserTables,
}

impl OpteeParamMapModel {
    /// Empty user tables of `asid`, built as the core builds a TA's.
    pub fn new(asid: u16) -> Self {
        let tlb: UserTlb = Box::new(RecordingTlb::counting());
        Self {
            tables: UserTables::new_user(MAX_USER_TABLE_PAGES, tlb, asid)
                .expect("user tables for the model"),
        }
    }

    /// `vm_map_param` of one memref of `pages` (the registered buffer's pages, in order): every
    /// page mapped at the TA's parameter address. Returns the range, for [`unmap`](Self::unmap).
    ///
    /// # Panics
    /// If the tables refuse (more pages than the parameter region, no table memory).
    pub fn map(&mut self, pages: &[PhysAddr]) -> VirtPages {
        let range = VirtPages::new(VirtAddr(utee::layout::PARAM_BASE), pages.len() as u64)
            .expect("a range of the parameter region");
        self.tables
            .map_pages(range, pages, MemKind::User(UserPage::shared(false, true)))
            .expect("the model maps the memref");
        range
    }

    /// `vm_clean_param`: the memref's pages unmapped, one TLB invalidation request.
    pub fn unmap(&mut self, range: VirtPages) {
        self.tables.unmap(range);
    }

    /// The model's translation of `page` (for tests).
    pub fn translate(&self, page: VirtAddr) -> Option<teeshm_mm::tables::Translation> {
        self.tables.translate_page(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The param-map model maps every page of the memref at the TA's parameter address, user
    /// read-write, in order, and unmaps them all.
    #[test]
    fn param_map_model_maps_every_page_and_unmaps_all() {
        let mut model = OpteeParamMapModel::new(7);
        let pages: Vec<PhysAddr> = (0..256u64)
            .map(|i| PhysAddr(NS_RAM.0 + ((i * 37) % 4096) * PAGE))
            .collect();
        for _ in 0..2 {
            let range = model.map(&pages);
            for (i, pa) in pages.iter().enumerate() {
                let va = VirtAddr(utee::layout::PARAM_BASE + i as u64 * PAGE);
                let t = model.translate(va).expect("mapped");
                assert_eq!(t.pa, *pa);
                assert_eq!(t.kind, Some(MemKind::User(UserPage::shared(false, true))));
            }
            model.unmap(range);
            for i in 0..256u64 {
                let va = VirtAddr(utee::layout::PARAM_BASE + i * PAGE);
                assert_eq!(model.translate(va), None);
            }
        }
    }

    /// First fit from the pool's start, the new entry linked in after the gap's left entry;
    /// free by identity; the pool end checked.
    #[test]
    fn tee_mm_model_is_first_fit_over_a_sorted_list() {
        let mut pool = TeeMm::new(16);
        let a = pool.alloc(4).unwrap();
        let b = pool.alloc(2).unwrap();
        let c = pool.alloc(4).unwrap();
        assert_eq!((a.offset, b.offset, c.offset), (0, 4, 6));
        assert!(pool.free(b));
        assert!(!pool.free(b), "an entry is freed once");
        // A 2-page gap at 4 and 6 free pages at 10: a 1-page request takes the first gap.
        assert_eq!(pool.alloc(1).unwrap().offset, 4);
        assert_eq!(pool.alloc(3).unwrap().offset, 10);
        assert_eq!(pool.alloc(4), None, "3 pages left at the end");
        assert_eq!(pool.alloc(3).unwrap().offset, 13);
        let offsets: Vec<u64> = pool.handles().iter().map(|h| h.offset).collect();
        assert_eq!(offsets, [0, 4, 6, 10, 13]);
        let built = TeeMm::with_areas(16, [(0, 4), (6, 4)].into_iter());
        assert_eq!(
            built.handles().iter().map(|h| h.offset).collect::<Vec<_>>(),
            [0, 6]
        );
    }
}
