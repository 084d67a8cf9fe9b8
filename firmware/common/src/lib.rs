//! What the three firmware worlds (EL3 monitor, S-EL1 core, NS-EL1 client) share on QEMU's
//! `virt` machine: the PL011 console, the semihosting exit, the generic counter, and the SMC
//! function ids the firmware defines beyond OP-TEE's.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod console;
pub mod cpu;
pub mod fid;
pub mod semihosting;
pub mod time;
