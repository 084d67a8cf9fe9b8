//! The platform seam of teeshm: the few services the memory manager needs from the machine.
//!
//! Everything here is small on purpose. It is the only host-side crate of teeshm that holds
//! `unsafe` code, and each block says why it is sound:
//!
//! - [`TablePagePool`] hands translation-table pages to `aarch64-paging`. The library's
//!   allocation hook cannot fail, so the pool is filled *before* each map ([`TablePagePool::reserve`])
//!   and running out of table memory becomes an error of the caller instead of a panic.
//! - [`TlbMaintenance`] is how the memory manager asks for TLB invalidation after it removes
//!   mappings. The host implementation [`RecordingTlb`] records the requests so tests can assert
//!   that each unmap batch issues exactly one; the firmware implements it with `TLBI`.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
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

mod table_pool;
mod tlb;

pub use table_pool::{TablePagePool, TablePoolError, TablePoolStats};
pub use tlb::{RecordingTlb, TlbListener, TlbMaintenance, TlbRequest};
