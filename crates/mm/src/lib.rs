//! The secure-world memory manager of teeshm.
//!
//! - [`addr`]: physical and virtual addresses and page ranges with checked arithmetic.
//! - [`memmap`]: the typed physical memory map and the non-secure checks.
//! - [`va_window`]: the allocator of the dynamic shared-memory VA window.
//! - [`tables`]: the core's translation tables on `aarch64-paging`.
//! - [`reverse_map`]: physical page → virtual addresses, per owner.
//! - [`shm_window`]: the four together, kept in agreement; where a page of shared memory gets
//!   mapped, and the agreement checker.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addr;
pub mod memmap;
pub mod tables;
pub mod va_window;

pub use addr::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr, VirtPages};
pub mod reverse_map;
pub mod shm_window;

pub use memmap::{MemoryMap, Region, RegionKind};
pub use reverse_map::{ReverseEntry, ReverseMap};
pub use shm_window::{Disagreement, Mapping, ShmWindow, ShmWindowConfig, WindowError};
pub use tables::{MemKind, TableError, TranslationTables, UserPage};
pub use va_window::{VaWindow, VaWindowConfig, VaWindowError};
