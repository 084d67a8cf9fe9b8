//! The guest RAM the driver lends the TEE: NS pages of the pool in client.ld, at IPA == PA (no
//! hypervisor), with a scattering page allocator so buffers really lie on pages all over RAM.

use alloc::collections::BTreeSet;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use teeshm_nw::{GuestRam, PAGE_SIZE, RamError};

unsafe extern "C" {
    static __pages_start: u8;
    static __pages_end: u8;
}

/// The page pool: the lower half hands out scattered pages (successive pages are an odd
/// multiplier apart modulo the half's size, a bijection), the upper half contiguous runs.
#[derive(Debug)]
pub struct PagePool {
    base: u64,
    pages: u64,
    scattered: u64,
    contiguous: u64,
    free: Vec<u64>,
    live: BTreeSet<u64>,
}

impl PagePool {
    fn new() -> Self {
        Self::over(
            (&raw const __pages_start) as u64,
            (&raw const __pages_end) as u64,
        )
    }

    fn over(base: u64, end: u64) -> Self {
        Self {
            base,
            pages: (end - base) / PAGE_SIZE,
            scattered: 0,
            contiguous: 0,
            free: Vec::new(),
            live: BTreeSet::new(),
        }
    }

    fn page(&mut self) -> Result<u64, RamError> {
        if let Some(p) = self.free.pop() {
            return Ok(p);
        }
        let half = self.pages / 2;
        if self.scattered >= half {
            return Err(RamError::OutOfMemory { pages: 1 });
        }
        let index = self.scattered.wrapping_mul(0x9E37) % half;
        self.scattered += 1;
        Ok(self.base + index * PAGE_SIZE)
    }

    fn contains(&self, ipa: u64, len: usize) -> bool {
        let end = self.base + self.pages * PAGE_SIZE;
        ipa >= self.base && ipa.checked_add(len as u64).is_some_and(|e| e <= end)
    }
}

/// A handle on the shared pool: every driver of the client (guest 0's, and the ones acting
/// for other guests) allocates from the same pages.
#[derive(Debug, Clone)]
pub struct NsRam(Rc<RefCell<PagePool>>);

impl NsRam {
    /// The pool of client.ld.
    pub fn new() -> Self {
        Self(Rc::new(RefCell::new(PagePool::new())))
    }

    /// A pool of its own over `base..end` (page aligned NS RAM that nothing else uses): what
    /// another CPU's driver lends from (client.ld).
    pub fn over(base: u64, end: u64) -> Self {
        Self(Rc::new(RefCell::new(PagePool::over(base, end))))
    }

    /// Pages handed out and not given back.
    #[cfg_attr(feature = "fault-test", allow(dead_code))]
    pub fn live_pages(&self) -> usize {
        self.0.borrow().live.len()
    }
}

impl GuestRam for NsRam {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        if !self.0.borrow().contains(ipa, buf.len()) {
            return Err(RamError::OutOfRange {
                ipa,
                len: buf.len() as u64,
            });
        }
        // SAFETY: the range lies in this pool (client.ld's, or another CPU's own): NS RAM that
        // only this client's driver on one CPU (and the TEE, while it waits in an SMC) uses,
        // never a Rust object.
        unsafe {
            core::ptr::copy_nonoverlapping(ipa as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError> {
        if !self.0.borrow().contains(ipa, data.len()) {
            return Err(RamError::OutOfRange {
                ipa,
                len: data.len() as u64,
            });
        }
        // SAFETY: as for `read`.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), ipa as usize as *mut u8, data.len())
        };
        Ok(())
    }

    fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError> {
        let mut pool = self.0.borrow_mut();
        let mut pages = Vec::new();
        for _ in 0..n {
            match pool.page() {
                Ok(p) => pages.push(p),
                Err(e) => {
                    pool.free.extend_from_slice(&pages);
                    return Err(e);
                }
            }
        }
        pool.live.extend(pages.iter().copied());
        Ok(pages)
    }

    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, RamError> {
        let mut pool = self.0.borrow_mut();
        let half = pool.pages / 2;
        if pool.contiguous + n > pool.pages - half {
            return Err(RamError::OutOfMemory { pages: n });
        }
        let first = pool.base + (half + pool.contiguous) * PAGE_SIZE;
        pool.contiguous += n;
        for i in 0..n {
            pool.live.insert(first + i * PAGE_SIZE);
        }
        Ok(first)
    }

    fn free_pages(&mut self, pages: &[u64]) {
        let mut pool = self.0.borrow_mut();
        for &p in pages {
            if pool.live.remove(&p) {
                pool.free.push(p);
            }
        }
    }
}
