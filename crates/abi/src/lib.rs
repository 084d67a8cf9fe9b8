//! The OP-TEE wire ABI as teeshm speaks it: SMC function IDs and return codes, capability bits,
//! the `optee_msg_arg` / `optee_msg_param` layouts, RPC commands, the guest (client) id carried in
//! `a7`, and the NONCONTIG page-list codec.
//!
//! Everything here is pure data and pure functions: no global state, no `unsafe`, no panics
//! reachable from input. Values that come from the normal world are decoded into typed Rust values
//! (enums, newtypes, bitflags) with typed errors, so the layers above can `match` instead of
//! re-checking raw integers.
//!
//! Byte order: every wire structure uses zerocopy's `little_endian` integer types. The TEE and its
//! clients run little-endian on Arm, but spelling it out keeps the host simulator and tests honest
//! and makes every structure alignment-1, so it can be parsed from any byte buffer.
#![cfg_attr(not(test), no_std)]
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

pub mod caps;
pub mod count;
pub mod gp;
pub mod guest;
pub mod limits;
pub mod msg;
pub mod page_list;
pub mod rpc;
pub mod smc;
pub mod uid;
pub mod utee;

pub use count::{Count, Underflow};
pub use guest::{GuestId, GuestIdError};
