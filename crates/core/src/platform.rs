//! What the core needs from the machine beyond the memory manager's seam: reading and writing
//! shared memory through the core's own virtual addresses.
//!
//! The core never touches physical memory behind its own back. On the host the platform walks
//! the core's translation tables ([`Translate`]) and faults on a missing or wrong mapping; on
//! hardware the MMU does the same walk and the platform simply copies through the pointer.

use teeshm_mm::tables::Translation;
use teeshm_mm::{ShmWindow, VirtAddr};
use teeshm_platform::TlbMaintenance;

/// The core's stage-1 translation, as the platform sees it.
pub trait Translate {
    /// The translation of the 4 KiB page at `page`, if a valid entry maps it.
    fn translate_page(&self, page: VirtAddr) -> Option<Translation>;
}

impl<T: TlbMaintenance> Translate for ShmWindow<T> {
    fn translate_page(&self, page: VirtAddr) -> Option<Translation> {
        self.tables().translate_page(page)
    }
}

/// An access through a virtual address that the translation does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessFault {
    /// No valid translation for the page of this address.
    #[error("translation fault at {0:#x}")]
    NotMapped(u64),
    /// The page is mapped, but not as memory the core may read or write (device memory, or
    /// attributes teeshm never writes).
    #[error("permission fault at {0:#x}")]
    Permission(u64),
    /// The access would run past the end of the address space.
    #[error("access at {0:#x} wraps the address space")]
    Wrap(u64),
    /// The physical memory behind a valid mapping does not exist (simulator only).
    #[error("no memory behind physical address {0:#x}")]
    NoMemory(u64),
}

/// Access to memory through the core's virtual addresses.
///
/// Implementations must translate every page of the access with `map` (or let the MMU do it)
/// and fail, without a partial side effect the caller relies on, when a page is not mapped.
pub trait Platform: Send + Sync {
    /// The TLB maintenance the translation tables use on this machine.
    type Tlb: TlbMaintenance + Send;

    /// Copies `buf.len()` bytes from virtual address `va` into `buf`.
    ///
    /// # Errors
    /// An [`AccessFault`] naming the first address that could not be read.
    fn read(&self, map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault>;

    /// Copies `data` to virtual address `va`.
    ///
    /// # Errors
    /// An [`AccessFault`] naming the first address that could not be written.
    fn write(&self, map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault>;

    /// Whether an interrupt of the normal world is pending on this CPU. The secure world runs
    /// with interrupts masked; a long yielding call asks between chunks of its work and, when
    /// one is, suspends with `RPC_FOREIGN_INTR` so that the normal world serves it. Fast calls
    /// and the core's critical sections never ask. The default: never.
    fn foreign_interrupt_pending(&self) -> bool {
        false
    }
}
