//! The TEE core of teeshm: memory objects, the guest registry, and the OP-TEE SMC and message
//! front end, with RPC and a built-in pseudo-TA.
//!
//! Where a call enters: [`Tee::handle_smc`] (in [`entry`]) decodes the SMC registers; fast
//! calls are answered at once, yielding calls take a thread ([`thread`]), copy their
//! `optee_msg_arg` into secure memory once ([`arg`]) and run the message ([`msg`]). Every shared
//! buffer is a memory object ([`mobj`], made and released in [`objects`]) owned by one guest
//! ([`guest`]); its virtual address comes
//! only from a [`MapGuard`] of the [`window`], which keeps registered buffers mapped between
//! calls (least recently used first out) and never evicts one in use.
//!
//! Lock order, outermost first: the guest table, one guest's state, the thread table, the window.
//! No lock is held while waiting for anything: nothing in the core blocks.
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

pub mod arg;
pub mod check;
pub mod config;
pub mod entry;
pub mod error;
pub mod guest;
pub mod io;
pub mod lifecycle;
pub mod mobj;
pub mod msg;
pub mod objects;
pub mod platform;
pub mod pta;
pub mod sync;
pub mod ta;
pub mod thread;
pub mod window;

pub use check::CoreDisagreement;
pub use config::{Capacity, CapacityError, CoreConfig, GuestQuotas, NormalWorld};
pub use entry::{SmcRegs, Tee};
pub use error::{CallError, TeeError};
pub use guest::{GuestCounters, GuestPartition, GuestSnapshot};
pub use mobj::{MemType, Mobj, MobjId, MobjKind, MobjSpec, MobjUse};
pub use platform::{AccessFault, Platform, Translate};
pub use window::{CacheStats, MapGuard, ObjectMapping, SharedWindow};
