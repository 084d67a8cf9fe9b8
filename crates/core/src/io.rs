//! `ioremap`: device registers mapped through the same dynamic window and allocator as shared
//! memory, with device attributes (Device-nGnRE, never executable), listed, and released on
//! unmap. Only device regions of the memory map may be mapped: secure RAM and normal-world RAM
//! are refused (the window's own check, `WindowError::Forbidden`).

use crate::entry::Tee;
use crate::error::TeeError;
use crate::platform::Platform;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_mm::{MemKind, PAGE_SIZE, PhysAddr, VirtAddr};

/// The owner the window records for the core's own device mappings: no guest has this id
/// (a client id is at most `u16::MAX - 1` under Xen, whose domain ids end at 0x7fef).
pub const IO_OWNER: GuestId = GuestId(u16::MAX);

/// Most pages one `ioremap` may map.
pub const MAX_IO_PAGES: u64 = 256;

/// A device region mapped in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMapping {
    /// The first byte of the region.
    pub pa: PhysAddr,
    /// Where that byte is mapped.
    pub va: VirtAddr,
    /// Bytes asked for.
    pub size: u64,
}

impl IoMapping {
    /// The mapping's address of byte `offset`, if inside it.
    pub fn at(&self, offset: u64) -> Option<VirtAddr> {
        if offset >= self.size {
            return None;
        }
        self.va.checked_add(offset)
    }
}

impl<P: Platform> Tee<P> {
    /// Maps the device registers at `pa..pa + size` into the window with device attributes.
    ///
    /// # Errors
    /// [`TeeError::BadParameters`] for an empty, wrapping or too large range;
    /// [`TeeError::Window`] with `Forbidden` when any page is not a device region (secure RAM,
    /// normal-world RAM, nothing), or when the window is full. Nothing is mapped then.
    pub fn ioremap(&self, pa: u64, size: u64) -> Result<IoMapping, TeeError> {
        let end = pa
            .checked_add(size)
            .filter(|_| size != 0)
            .ok_or(TeeError::BadParameters("ioremap: empty or wrapping range"))?;
        let first = pa / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        if last - first > MAX_IO_PAGES {
            return Err(TeeError::BadParameters("ioremap: more than 256 pages"));
        }
        let pages: Vec<PhysAddr> = (first..last).map(|p| PhysAddr(p * PAGE_SIZE)).collect();
        let mut window = self.window.write();
        let range = window.shm_mut().map(IO_OWNER, &pages, MemKind::Device)?;
        let mapping = IoMapping {
            pa: PhysAddr(pa),
            va: VirtAddr(range.start().get() + pa % PAGE_SIZE),
            size,
        };
        self.io.lock().push(mapping);
        Ok(mapping)
    }

    /// Unmaps a region [`ioremap`](Self::ioremap) mapped (with its TLB invalidation).
    ///
    /// # Errors
    /// [`TeeError::BadParameters`] if `va` is not where an `ioremap` mapped its region.
    pub fn iounmap(&self, va: VirtAddr) -> Result<(), TeeError> {
        // Lock order: the window, then the list (as `ioremap` and the checker).
        let mut window = self.window.write();
        let mut io = self.io.lock();
        let index = io
            .iter()
            .position(|m| m.va == va)
            .ok_or(TeeError::BadParameters("iounmap: no ioremap there"))?;
        window
            .shm_mut()
            .unmap(va.page_base())
            .map_err(TeeError::Window)?;
        io.swap_remove(index);
        Ok(())
    }

    /// The device regions mapped now.
    pub fn io_mappings(&self) -> Vec<IoMapping> {
        self.io.lock().clone()
    }

    /// Reads the 32-bit register at `offset` of `mapping`.
    ///
    /// # Errors
    /// [`TeeError::BadParameters`] for an offset outside the mapping or not 4-byte aligned;
    /// the platform's fault otherwise.
    pub fn io_read32(&self, mapping: &IoMapping, offset: u64) -> Result<u32, TeeError> {
        let va = mapping
            .at(offset)
            .filter(|va| va.get() % 4 == 0 && offset + 4 <= mapping.size)
            .ok_or(TeeError::BadParameters("io read outside the mapping"))?;
        let window = self.window.read();
        Ok(self.platform.read_io32(window.shm(), va)?)
    }
}
