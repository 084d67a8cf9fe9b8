//! What a call of the driver returns: its errors, and the message as the TEE wrote it back.

use alloc::vec::Vec;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::{MsgArgHeader, MsgParam};
use teeshm_abi::smc::*;

use crate::ram::RamError;

/// Why the driver could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// `CALLS_UID` did not name OP-TEE's message API: this is some other trusted OS.
    #[error("not an OP-TEE API: UID {uid:08x?}")]
    NotOpTee {
        /// The four UID words received.
        uid: [u32; 4],
    },
    /// `CALLS_REVISION` reported a major revision other than 2.
    #[error("OPTEE_MSG API revision {major}.{minor} (2.x needed)")]
    Revision {
        /// Major revision.
        major: u32,
        /// Minor revision.
        minor: u32,
    },
    /// An SMC answered a code the driver cannot go on from.
    #[error("SMC {func:#x} answered {code:#x}")]
    Smc {
        /// Function id sent.
        func: u32,
        /// Return code received (`OPTEE_SMC_RETURN_*`).
        code: u32,
    },
    /// The TEE refused the yielding call itself (`EBADADDR`, `EBADCMD`, `ENOMEM`, ...): the
    /// message never ran.
    #[error("the TEE refused the call with {code:#x}")]
    CallRefused {
        /// Return code received (`OPTEE_SMC_RETURN_*`).
        code: u32,
    },
    /// The TEE offers neither dynamic nor reserved shared memory, so nothing can be shared.
    #[error("the TEE has neither dynamic nor reserved SHM (capabilities {caps:#x})")]
    NoSharedMemory {
        /// Secure capabilities reported.
        caps: u32,
    },
    /// The reserved SHM the TEE reported cannot be used (not cached, or not one whole page).
    #[error("static pool {pa:#x}+{size:#x} (attributes {attr:#x}) is unusable")]
    BadPool {
        /// Start.
        pa: u64,
        /// Size.
        size: u64,
        /// Cache attributes (`a3` of `GET_SHM_CONFIG`).
        attr: u64,
    },
    /// The TEE asked for more RPC params than fit an arg.
    #[error("RPC arg param count {0} exceeds the maximum")]
    RpcParamCount(u32),
    /// Every TEE thread stayed busy through all retries.
    #[error("all TEE threads busy after {tries} tries")]
    ThreadLimit {
        /// Calls attempted.
        tries: u32,
    },
    /// The message ran and the TEE reports failure.
    #[error("TEE result {ret:#x} (origin {origin})")]
    Tee {
        /// `optee_msg_arg.ret` (a `TEE_ERROR_*`).
        ret: u32,
        /// `optee_msg_arg.ret_origin` (a `TEE_ORIGIN_*`).
        origin: u32,
    },
    /// Guest memory could not be allocated, read or written.
    #[error("guest RAM: {0}")]
    Ram(#[from] RamError),
    /// The buffer's pages, offset and size disagree, or it is empty: no page list describes it.
    #[error("malformed buffer: {pages} pages, offset {offset:#x}, size {size:#x}")]
    BadBuffer {
        /// Pages given.
        pages: usize,
        /// Offset given.
        offset: u64,
        /// Size given.
        size: u64,
    },
    /// The arg (with its appended RPC arg) does not fit one page.
    #[error("an arg of {params} params does not fit one page")]
    ArgTooLarge {
        /// Params asked for.
        params: usize,
    },
    /// The TEE kept asking for RPCs past [`MAX_RPCS_PER_CALL`].
    #[error("more than {max} RPCs in one call")]
    RpcLoop {
        /// The limit.
        max: u32,
    },
}

/// A message as the TEE wrote it back, and how the SMC ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgReply {
    /// The final SMC return code (`OPTEE_SMC_RETURN_OK` when the message ran; otherwise the
    /// TEE refused the call itself, e.g. `EBADADDR`, and the arg is as the driver wrote it).
    pub a0: u32,
    /// The header: `ret`, `ret_origin`, `session`.
    pub header: MsgArgHeader,
    /// The params (as many as were sent), with output values and sizes.
    pub params: Vec<MsgParam>,
    /// RPCs answered during the call.
    pub rpcs: u32,
}

impl MsgReply {
    /// `Ok` when the SMC succeeded and the message reports `TEE_SUCCESS`; otherwise the
    /// failure, as the client API reports it.
    pub fn check(&self) -> Result<(), DriverError> {
        if self.a0 != OPTEE_SMC_RETURN_OK {
            return Err(DriverError::CallRefused { code: self.a0 });
        }
        match self.header.ret.get() {
            TEE_SUCCESS => Ok(()),
            ret => Err(DriverError::Tee {
                ret,
                origin: self.header.ret_origin.get(),
            }),
        }
    }
}
