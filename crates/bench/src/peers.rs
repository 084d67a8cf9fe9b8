//! The peers every figure is measured beside: hand-written models of what OP-TEE does, kept
//! simple and honest (each says where it is generous to OP-TEE).

use teeshm_abi::page_list::ENTRIES_PER_LIST_PAGE;
use teeshm_testkit::{NS_RAM, PhysMemory};

const PAGE: u64 = 4096;

/// A first-fit allocator over a sorted singly linked list of live blocks, as OP-TEE's `tee_mm`:
/// alloc walks the gaps between consecutive blocks from the bottom; free walks to the block.
pub struct FirstFitList {
    head: Option<Box<Node>>,
    size: u64,
}

struct Node {
    offset: u64,
    size: u64,
    next: Option<Box<Node>>,
}

impl FirstFitList {
    /// An empty allocator over `size` units.
    pub fn new(size: u64) -> Self {
        Self { head: None, size }
    }

    /// A list already holding `blocks` (offset, size), sorted by offset and not overlapping:
    /// builds in O(n), where `alloc` would take O(n²) to get there.
    pub fn with_blocks(size: u64, blocks: impl DoubleEndedIterator<Item = (u64, u64)>) -> Self {
        let mut head = None;
        for (offset, len) in blocks.rev() {
            head = Some(Box::new(Node {
                offset,
                size: len,
                next: head,
            }));
        }
        Self { head, size }
    }

    /// First fit of `size` units; the offset.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let mut cursor = &mut self.head;
        let mut end_of_previous = 0;
        loop {
            match cursor {
                Some(node) if node.offset - end_of_previous < size => {
                    end_of_previous = node.offset + node.size;
                    cursor = &mut cursor.as_mut()?.next;
                }
                _ => break,
            }
        }
        if cursor.is_none() && self.size - end_of_previous < size {
            return None;
        }
        let next = cursor.take();
        *cursor = Some(Box::new(Node {
            offset: end_of_previous,
            size,
            next,
        }));
        Some(end_of_previous)
    }

    /// Frees the block at `offset`.
    pub fn free(&mut self, offset: u64) -> bool {
        let mut cursor = &mut self.head;
        loop {
            match cursor {
                Some(node) if node.offset == offset => {
                    let next = node.next.take();
                    *cursor = next;
                    return true;
                }
                Some(node) => cursor = &mut node.next,
                None => return false,
            }
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

    /// Secure bytes one registered object of `pages` pages keeps in the model.
    pub fn object_bytes(pages: u64) -> u64 {
        size_of::<OpteeRegShm>() as u64 + 8 * pages
    }
}
