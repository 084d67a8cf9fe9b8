//! The trusted applications teeshm runs in user mode (S-EL0), written once for both machines.
//!
//! A TA here is a plain function, its entry ([`Program::entry`]), that reaches its own memory
//! and the core only through a [`UserEnv`]: on the firmware the environment copies through raw
//! pointers (a fault traps to the core, which kills the TA) and enters the core with `svc #0`;
//! in the simulator (`teeshm_testkit`) it walks the TA's translation tables in software and
//! calls the core's trap handler. The system calls are OP-TEE's ([`libutee`]), so the core
//! serves these TAs as it would serve OP-TEE's own.
//!
//! - [`memtest`]: `teeshm.ta-memtest`, every way a memref reaches a TA and every way a TA dies.
//! - [`peer`]: `teeshm.ta-peer`, the callee of memtest's TA-to-TA call.
//!
//! A TA keeps no state in Rust statics: in the simulator every instance runs in the same host
//! process, so its state lives in its own memory (the first bytes of its heap, [`libutee`]).
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

pub mod env;
pub mod libutee;
pub mod memtest;
pub mod pattern;
pub mod peer;

#[cfg(test)]
mod fake;

pub use env::{Stop, UserEnv};
pub use pattern::pattern_byte;

/// A TA's entry, `__utee_entry(func, session, params, cmd)`: `x0` = entry function
/// (`UTEE_ENTRY_FUNC_*`), `x1` = session id, `x2` = address of a `struct utee_params` in the
/// TA's memory, `x3` = command id. Returns the `TEE_Result` for the RETURN system call, or
/// [`Stop`] if the core ended the TA on the way.
pub type Entry = fn(&mut dyn UserEnv, u64, u64, u64, u64) -> Result<u32, Stop>;

/// One TA program: what the core finds by UUID.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// The UUID as 16 octets (RFC 4122 order, as `OPEN_SESSION` carries it).
    pub uuid: [u8; 16],
    /// A name for logs.
    pub name: &'static str,
    /// The entry function.
    pub entry: Entry,
}

/// Every TA program. An image refers to its program by index here (the simulator's code page
/// holds the index; the firmware links one `_start` per program).
pub const PROGRAMS: &[Program] = &[memtest::PROGRAM, peer::PROGRAM];

/// The program with UUID `uuid` and its index in [`PROGRAMS`].
pub fn find(uuid: &[u8; 16]) -> Option<(usize, &'static Program)> {
    PROGRAMS.iter().enumerate().find(|(_, p)| &p.uuid == uuid)
}

/// Runs `program` as its `_start` does: the entry with `x0`..`x3`, then the RETURN system call
/// with its result.
///
/// # Errors
/// [`Stop`] when the core ended the TA: after RETURN (the normal way: the core does not resume
/// a TA that returned), on a fault, a panic, or a system call the core ended it in. `Ok` only
/// if the core resumed the TA after RETURN, which it must not do.
pub fn run(
    program: &Program,
    env: &mut dyn UserEnv,
    x0: u64,
    x1: u64,
    x2: u64,
    x3: u64,
) -> Result<(), Stop> {
    let result = (program.entry)(env, x0, x1, x2, x3)?;
    libutee::return_(env, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_have_distinct_uuids_and_are_found_by_them() {
        for (i, p) in PROGRAMS.iter().enumerate() {
            assert_eq!(find(&p.uuid).map(|(j, _)| j), Some(i), "{}", p.name);
            // RFC 4122: version 4, variant 10xx.
            assert_eq!(p.uuid[6] >> 4, 4, "{}", p.name);
            assert_eq!(p.uuid[8] >> 6, 0b10, "{}", p.name);
        }
        assert!(find(&[0; 16]).is_none());
    }
}
