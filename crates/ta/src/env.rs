//! What a TA runs on: its own memory and the core's system calls.

/// The core ended the TA (after RETURN or PANIC, on a fault, or in a system call): the TA does
/// not go on, so every function of a TA returns at once with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop;

/// A TA's view of the machine: loads and stores by its own virtual addresses, and `svc #0`.
///
/// An access the TA's translation does not allow traps to the core; the core either maps the
/// page and resumes (the access is retried) or kills the TA ([`Stop`]).
pub trait UserEnv {
    /// Loads `buf.len()` bytes from `va`.
    ///
    /// # Errors
    /// [`Stop`] if the access faulted and the core ended the TA.
    fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Stop>;

    /// Stores `data` at `va`.
    ///
    /// # Errors
    /// [`Stop`] if the access faulted and the core ended the TA.
    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Stop>;

    /// System call `nr` (`x8`) with `args` (`x0`..`x7`); the result is `x0` after it.
    ///
    /// # Errors
    /// [`Stop`] if the core did not resume the TA.
    fn syscall(&mut self, nr: u64, args: [u64; 8]) -> Result<u64, Stop>;
}
