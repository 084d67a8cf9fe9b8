//! The guest's RAM as its driver sees it, and buffers in it.
//!
//! The driver never owns memory of its own: every page it hands the TEE (arguments, page lists,
//! RPC buffers) comes from the guest through [`GuestRam`], addressed by guest-physical address
//! (IPA). Without a hypervisor IPA == PA; with one, the hypervisor translates them on the way to
//! the TEE. Keeping allocation behind the trait lets tests count every page the driver takes and
//! check that it gives each one back.

use alloc::vec::Vec;
use teeshm_abi::page_list::{self, DATA_PAGE_SIZE};

/// Size of the pages the driver allocates and names in page lists (always 4 KiB, whatever the
/// guest kernel's own page size, as in OP-TEE's `OPTEE_MSG_NONCONTIG_PAGE_SIZE`).
pub const PAGE_SIZE: u64 = DATA_PAGE_SIZE;

/// Why guest memory could not be read, written or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RamError {
    /// The guest has no `pages` free pages (or no contiguous run of them).
    #[error("cannot allocate {pages} pages")]
    OutOfMemory {
        /// Pages asked for.
        pages: u64,
    },
    /// The bytes at `ipa` are not guest RAM.
    #[error("{len} bytes at IPA {ipa:#x} are not guest RAM")]
    OutOfRange {
        /// First address of the access.
        ipa: u64,
        /// Its length.
        len: u64,
    },
}

/// The guest's RAM as the driver sees it: guest-physical addresses (IPAs).
///
/// Accesses may cross page boundaries; allocations are of 4 KiB pages ([`PAGE_SIZE`]).
pub trait GuestRam {
    /// Copies `buf.len()` bytes at `ipa` into `buf`.
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError>;
    /// Copies `data` to `ipa`.
    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError>;
    /// `n` free 4 KiB pages, in any (scattered) order.
    fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError>;
    /// `n` physically (IPA-) contiguous pages; returns the first.
    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, RamError>;
    /// Gives pages back (from either allocator; contiguous runs page by page).
    fn free_pages(&mut self, pages: &[u64]);
}

/// A buffer in guest RAM: its data pages, the offset of its first byte in the first page, and
/// its size — exactly what a NONCONTIG page list describes, so a buffer can be shared without
/// copying it into contiguous memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBuffer {
    /// IPAs of the 4 KiB data pages, in buffer order.
    pub pages: Vec<u64>,
    /// Offset of the first byte in the first page (< 4096).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl GuestBuffer {
    /// A buffer of `size` bytes starting `offset` bytes into fresh pages of `ram` (scattered as
    /// the allocator likes), for callers that want guest memory without managing pages.
    pub fn alloc<R: GuestRam + ?Sized>(
        ram: &mut R,
        size: u64,
        offset: u64,
    ) -> Result<Self, RamError> {
        let pages = Self::pages_for(offset, size);
        Ok(Self {
            pages: ram.alloc_pages(pages)?,
            offset,
            size,
        })
    }

    /// Data pages a buffer of `size` bytes at `offset` spans: 0 for an empty buffer (it needs
    /// no page at all), `u64::MAX` for an offset of 4096 or more (no allocator can satisfy it).
    pub fn pages_for(offset: u64, size: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        page_list::num_pages(offset, size).unwrap_or(u64::MAX)
    }

    /// Gives the buffer's pages back to `ram`.
    pub fn free<R: GuestRam + ?Sized>(self, ram: &mut R) {
        ram.free_pages(&self.pages);
    }

    /// Whether the pages, offset and size agree (offset < 4096, pages aligned and exactly as
    /// many as the size needs): only such a buffer can be described by a page list.
    pub fn is_well_formed(&self) -> bool {
        self.offset < PAGE_SIZE
            && self.pages.iter().all(|p| p % PAGE_SIZE == 0)
            && Self::pages_for(self.offset, self.size) == self.pages.len() as u64
    }

    /// IPA of byte `at` of the buffer, or `None` past its end.
    pub fn ipa_at(&self, at: u64) -> Option<u64> {
        if at >= self.size {
            return None;
        }
        let x = self.offset.checked_add(at)?;
        let page = usize::try_from(x / PAGE_SIZE).ok()?;
        Some(self.pages.get(page)? + x % PAGE_SIZE)
    }

    /// Copies `buf.len()` bytes from byte `at` of the buffer, one page piece at a time (the pages
    /// need not be contiguous).
    pub fn read<R: GuestRam + ?Sized>(
        &self,
        ram: &R,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), RamError> {
        self.pieces(at, buf.len() as u64, |ipa, range| {
            match buf.get_mut(range) {
                Some(dst) => ram.read(ipa, dst),
                None => Err(RamError::OutOfRange { ipa, len: 0 }),
            }
        })
    }

    /// Copies `data` to byte `at` of the buffer.
    pub fn write<R: GuestRam + ?Sized>(
        &self,
        ram: &R,
        at: u64,
        data: &[u8],
    ) -> Result<(), RamError> {
        self.pieces(at, data.len() as u64, |ipa, range| match data.get(range) {
            Some(src) => ram.write(ipa, src),
            None => Err(RamError::OutOfRange { ipa, len: 0 }),
        })
    }

    /// Reads `len` bytes from byte `at` into a new vector.
    pub fn read_vec<R: GuestRam + ?Sized>(
        &self,
        ram: &R,
        at: u64,
        len: u64,
    ) -> Result<Vec<u8>, RamError> {
        let n = usize::try_from(len).map_err(|_| RamError::OutOfRange { ipa: at, len })?;
        let mut out = alloc::vec![0u8; n];
        self.read(ram, at, &mut out)?;
        Ok(out)
    }

    /// Calls `f(ipa, range)` for each piece of `len` bytes from `at` that lies in one page;
    /// refuses an access past the end before touching anything.
    fn pieces(
        &self,
        at: u64,
        len: u64,
        mut f: impl FnMut(u64, core::ops::Range<usize>) -> Result<(), RamError>,
    ) -> Result<(), RamError> {
        let out_of_range = RamError::OutOfRange { ipa: at, len };
        match at.checked_add(len) {
            Some(end) if end <= self.size => {}
            _ => return Err(out_of_range),
        }
        let mut done = 0u64;
        while done < len {
            let ipa = self.ipa_at(at + done).ok_or(out_of_range)?;
            let n = (PAGE_SIZE - ipa % PAGE_SIZE).min(len - done);
            let start = usize::try_from(done).map_err(|_| out_of_range)?;
            let end = usize::try_from(done + n).map_err(|_| out_of_range)?;
            f(ipa, start..end)?;
            done += n;
        }
        Ok(())
    }
}
