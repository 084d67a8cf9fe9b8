//! The S-EL1 TEE core of the QEMU firmware: `teeshm-core` serving OP-TEE calls with the MMU
//! on, walking the translation tables `teeshm-mm` builds.
//!
//! - [`layout`]: where the linker put code, data, stacks and heap in secure RAM.
//! - [`heap`]: the global allocator over the secure heap (translation tables come from it).
//! - [`platform`]: the core's [`Platform`](teeshm_core::Platform): copies through window VAs,
//!   each page checked by the MMU itself (`AT S1E1R/W`) first; TLB maintenance with `TLBI`.
//! - [`mmu`]: MAIR/TCR/TTBR0/SCTLR for mm's tables.
//! - [`user`]: user mode: TAs at S-EL0 in their own translation regimes (per-CPU level-1
//!   tables, ASIDs), entered and trapped back, their TLB maintenance and TA RAM.
//! - [`tas`]: the early TAs, ELF files built by xtask and linked into the image.
//! - [`entry`]: the boot and call entry points the monitor `eret`s to, the exception vectors,
//!   and the Rust side of each.
//!
//! Everything that needs `unsafe` is here or in the monitor; the core crates build unchanged.
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod entry;
pub mod heap;
pub mod layout;
pub mod mmu;
pub mod platform;
pub mod tas;
pub mod user;

pub use entry::{FAULT_TEST_VA, report_panic, tee_boot_entry, tee_call_entry, tee_cpu_on_entry};

/// The dynamic SHM window: 512 MiB at 256 GiB, far above every static mapping (which are all
/// below 4 GiB, at VA == PA), inside the 39-bit VA space of mm's tables. The numbers are the
/// core's `qemu_virt` preset, which the fuzz targets run too (why these sizes: there).
pub const WINDOW_BASE: u64 = teeshm_core::config::qemu_virt::WINDOW_BASE;
/// Size of the window.
pub const WINDOW_SIZE: u64 = teeshm_core::config::qemu_virt::WINDOW_SIZE;
/// Translation-table pages the core may use, static mappings included (2 MiB).
pub const MAX_TABLE_PAGES: usize = teeshm_core::config::qemu_virt::MAX_TABLE_PAGES;
