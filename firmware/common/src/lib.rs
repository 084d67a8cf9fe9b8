//! What the firmware worlds (EL3 monitor, S-EL1 core, NS-EL1 client, the S-EL0 TAs) share on
//! QEMU's `virt` machine: the PL011 console, the semihosting exit, the generic counter, the SMC
//! function ids the firmware defines beyond OP-TEE's, and volatile copies of shared memory.
#![no_std]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

pub mod console;
pub mod cpu;
pub mod fid;
pub mod semihosting;
pub mod time;
pub mod volatile;
