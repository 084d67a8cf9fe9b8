//! The normal-world side of teeshm: a model of the guest OS driver for an OP-TEE-compatible TEE
//! (Linux `drivers/tee/optee`, SMC ABI) and a GlobalPlatform-shaped client API on top.
//!
//! The TEE is only as good as what it is tested against; this crate is a driver that behaves
//! the way Linux does on the wire, so the core, the hypervisor mediator and the simulator meet
//! real traffic rather than hand-built registers:
//!
//! - [`ram`]: the guest's RAM ([`GuestRam`], by guest-physical address) and buffers in it
//!   ([`GuestBuffer`]: scattered pages, offset, size).
//! - [`list`]: NONCONTIG page lists written into fresh guest pages.
//! - [`pool`]: the client of the static pool a TEE without dynamic SHM needs.
//! - [`driver`]: probe, REGISTER/UNREGISTER_SHM, calls with every RPC answered (RPC arg buffers,
//!   SHM_ALLOC / SHM_FREE), the SHM cache, shutdown.
//! - [`client`]: sessions, shared memory and operations as in the TEE Client API.
//!
//! Everything the driver lends the TEE is accounted for: page lists and args are freed when the
//! TEE is done with them, RPC buffers are tracked by cookie ([`Driver::rpc_buffers_held`]), so
//! tests can prove nothing leaks on either side.
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

pub mod client;
pub mod driver;
pub mod list;
pub mod pool;
pub mod ram;

pub use driver::{
    DEFAULT_MAX_RPC_SHM_BYTES, DEFAULT_THREAD_LIMIT_RETRIES, Driver, DriverError,
    MAX_RPC_ARG_BYTES, MAX_RPCS_PER_CALL, MsgReply,
};
pub use list::PageList;
pub use pool::StaticPool;
pub use ram::{GuestBuffer, GuestRam, PAGE_SIZE, RamError};
