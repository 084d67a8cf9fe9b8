//! The OPTEE_MSG message ABI, revision 2.0 (`optee_msg.h`): `optee_msg_arg` and
//! `optee_msg_param` layouts, attribute bits and commands.
//!
//! Wire structs are zerocopy types of alignment 1 with little-endian fields, so they can be read
//! from (and written to) any byte buffer without `unsafe` and without alignment checks. The core
//! is expected to copy an arg out of normal-world memory once and parse the copy
//! ([`split_arg`]), never the shared original.
//!
//! This file holds the commands, the header and the arg as a whole (size, split into header
//! and params); `param` holds the attribute bits, the param and its typed views.

mod param;
#[cfg(test)]
mod tests;

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use param::*;

// ---- Commands (`optee_msg_arg.cmd`) --------------------------------------------------------

/// Open a session with a TA.
pub const OPTEE_MSG_CMD_OPEN_SESSION: u32 = 0;
/// Invoke a command in a TA session.
pub const OPTEE_MSG_CMD_INVOKE_COMMAND: u32 = 1;
/// Close a TA session.
pub const OPTEE_MSG_CMD_CLOSE_SESSION: u32 = 2;
/// Cancel a pending request.
pub const OPTEE_MSG_CMD_CANCEL: u32 = 3;
/// Register normal-world memory: one `TMEM_OUTPUT | NONCONTIG` param (attr 0x20a in practice).
pub const OPTEE_MSG_CMD_REGISTER_SHM: u32 = 4;
/// Unregister SHM: one param whose `rmem.shm_ref` is the cookie.
pub const OPTEE_MSG_CMD_UNREGISTER_SHM: u32 = 5;
/// Run the bottom half of an asynchronous notification.
pub const OPTEE_MSG_CMD_DO_BOTTOM_HALF: u32 = 6;
/// Stop asynchronous notifications.
pub const OPTEE_MSG_CMD_STOP_ASYNC_NOTIF: u32 = 7;
/// Lend memory to become protected memory.
pub const OPTEE_MSG_CMD_LEND_PROTMEM: u32 = 8;
/// Reclaim lent protected memory.
pub const OPTEE_MSG_CMD_RECLAIM_PROTMEM: u32 = 9;
/// Query the protected-memory configuration.
pub const OPTEE_MSG_CMD_GET_PROTMEM_CONFIG: u32 = 10;
/// Assign protected memory.
pub const OPTEE_MSG_CMD_ASSIGN_PROTMEM: u32 = 11;

/// GlobalPlatform parameter count of OPEN_SESSION / INVOKE_COMMAND (OPEN_SESSION adds 2 META).
pub const TEE_NUM_PARAMS: u32 = 4;
/// Most params that fit with the header in one 4 KiB page: (4096 - 32) / 32 = 127. OP-TEE
/// refuses more (fix c6edc12ac, 2018), and so does [`arg_size_checked`].
pub const OPTEE_MSG_MAX_NUM_PARAMS: u32 = 127;
// ---- Wire structs --------------------------------------------------------------------------

/// Header of `struct optee_msg_arg` (32 bytes); `num_params` [`MsgParam`]s follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MsgArgHeader {
    /// Command, `OPTEE_MSG_CMD_*` (or `OPTEE_RPC_CMD_*` in an RPC arg).
    pub cmd: U32,
    /// TA function id for INVOKE_COMMAND.
    pub func: U32,
    /// Session id.
    pub session: U32,
    /// Cancellation id.
    pub cancel_id: U32,
    /// Padding; ignored.
    pub pad: U32,
    /// Result, a GlobalPlatform `TEE_Result` ([`crate::gp`]).
    pub ret: U32,
    /// Origin of `ret` (`TEE_ORIGIN_*`).
    pub ret_origin: U32,
    /// Number of params after the header.
    pub num_params: U32,
}

const _: () = assert!(size_of::<MsgArgHeader>() == 32);
const _: () = assert!(align_of::<MsgArgHeader>() == 1);

// ---- Arg size ------------------------------------------------------------------------------

/// Size of the header.
pub const MSG_ARG_HEADER_SIZE: usize = size_of::<MsgArgHeader>();
/// Size of one param.
pub const MSG_PARAM_SIZE: usize = size_of::<MsgParam>();

/// Bytes of an `optee_msg_arg` with `num_params` params (`OPTEE_MSG_GET_ARG_SIZE`), or `None`
/// if that does not fit `usize`.
pub fn get_arg_size(num_params: u32) -> Option<usize> {
    usize::try_from(num_params)
        .ok()?
        .checked_mul(MSG_PARAM_SIZE)?
        .checked_add(MSG_ARG_HEADER_SIZE)
}

/// Why an `optee_msg_arg` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// `num_params` above [`OPTEE_MSG_MAX_NUM_PARAMS`]: the arg would not fit one page.
    #[error("num_params {num_params} exceeds the maximum {max}")]
    TooManyParams {
        /// The offending count.
        num_params: u32,
        /// The limit.
        max: u32,
    },
    /// The buffer is shorter than the header plus `num_params` params.
    #[error("arg needs {needed} bytes but only {available} are available")]
    Truncated {
        /// Bytes the header says are needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// Like [`get_arg_size`], but refuses more than [`OPTEE_MSG_MAX_NUM_PARAMS`] params.
pub fn arg_size_checked(num_params: u32) -> Result<usize, ArgError> {
    let too_many = ArgError::TooManyParams {
        num_params,
        max: OPTEE_MSG_MAX_NUM_PARAMS,
    };
    if num_params > OPTEE_MSG_MAX_NUM_PARAMS {
        return Err(too_many);
    }
    get_arg_size(num_params).ok_or(too_many)
}

/// Size of the RPC arg the secure world asks for: header + [`crate::caps::THREAD_RPC_MAX_NUM_PARAMS`]
/// params = 160 bytes.
pub const RPC_ARG_SIZE: usize =
    MSG_ARG_HEADER_SIZE + MSG_PARAM_SIZE * crate::caps::THREAD_RPC_MAX_NUM_PARAMS as usize;
const _: () = assert!(RPC_ARG_SIZE == 160);

/// Splits a (secure copy of an) `optee_msg_arg` into its header and exactly `num_params`
/// params, checking `num_params` against the limit and the buffer length. Trailing bytes are
/// ignored.
pub fn split_arg(bytes: &[u8]) -> Result<(&MsgArgHeader, &[MsgParam]), ArgError> {
    let available = bytes.len();
    let (hdr, rest) = MsgArgHeader::ref_from_prefix(bytes).map_err(|_| ArgError::Truncated {
        needed: MSG_ARG_HEADER_SIZE,
        available,
    })?;
    let (needed, n) = params_of(hdr)?;
    let (params, _) = <[MsgParam]>::ref_from_prefix_with_elems(rest, n)
        .map_err(|_| ArgError::Truncated { needed, available })?;
    Ok((hdr, params))
}

/// Mutable form of [`split_arg`], to write results (`ret`, output params) into a secure copy.
pub fn split_arg_mut(bytes: &mut [u8]) -> Result<(&mut MsgArgHeader, &mut [MsgParam]), ArgError> {
    let available = bytes.len();
    let (hdr, rest) = MsgArgHeader::mut_from_prefix(bytes).map_err(|_| ArgError::Truncated {
        needed: MSG_ARG_HEADER_SIZE,
        available,
    })?;
    let (needed, n) = params_of(hdr)?;
    let (params, _) = <[MsgParam]>::mut_from_prefix_with_elems(rest, n)
        .map_err(|_| ArgError::Truncated { needed, available })?;
    Ok((hdr, params))
}

/// Total size and param count (as usize) named by a header.
fn params_of(hdr: &MsgArgHeader) -> Result<(usize, usize), ArgError> {
    let num_params = hdr.num_params.get();
    let needed = arg_size_checked(num_params)?;
    let n = usize::try_from(num_params).map_err(|_| ArgError::TooManyParams {
        num_params,
        max: OPTEE_MSG_MAX_NUM_PARAMS,
    })?;
    Ok((needed, n))
}
