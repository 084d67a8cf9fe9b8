//! Typed errors of the core, and the OP-TEE return codes they become at the front end.

use crate::platform::AccessFault;
use teeshm_abi::gp;
use teeshm_abi::page_list::PageListError;
use teeshm_mm::WindowError;

/// Which per-guest limit a request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Memory objects.
    Objects,
    /// Registered pages.
    RegisteredPages,
    /// Pages mapped in the window.
    MappedPages,
    /// Sessions.
    Sessions,
    /// Threads.
    Threads,
    /// Secure heap bytes.
    SecureBytes,
    /// Pages of TA RAM held by its TA instances (its share: `pages / max_guests`).
    TaRam,
}

/// Why a message (the `optee_msg_arg` of a yielding call) failed. It is reported in
/// `optee_msg_arg.ret` with origin `TEE_ORIGIN_TEE`; all state stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeeError {
    /// `REGISTER_SHM` with a cookie this guest already uses. OP-TEE accepts it and shadows the
    /// older buffer; teeshm refuses (stricter, `TEE_ERROR_BAD_PARAMETERS`).
    #[error("cookie {0:#x} is already registered")]
    DuplicateCookie(u64),
    /// No buffer of this guest has the cookie (or it is being released).
    #[error("no registered buffer with cookie {0:#x}")]
    UnknownCookie(u64),
    /// An access to a buffer the normal world unregistered while this call used it: its pages
    /// are no longer the TEE's to touch (`TEE_ERROR_ACCESS_CONFLICT`).
    #[error("buffer {0:?} was unregistered while in use")]
    Revoked(crate::mobj::MobjId),
    /// A per-guest limit.
    #[error("{kind:?} quota: {wanted} wanted, limit {limit}")]
    Quota {
        /// The limit.
        kind: QuotaKind,
        /// What the request would have made the count.
        wanted: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The secure heap refused an allocation.
    #[error("out of secure memory")]
    OutOfMemory,
    /// A page list could not be decoded.
    #[error("page list: {0}")]
    PageList(PageListError<AccessFault>),
    /// A physical page may not be shared (not normal-world RAM).
    #[error("page {0:#x} is not normal-world memory")]
    NotNonSecure(u64),
    /// Mapping into the window failed.
    #[error("window: {0}")]
    Window(WindowError),
    /// An access through a mapping faulted.
    #[error("access: {0}")]
    Access(AccessFault),
    /// A parameter is malformed; `index` counts from 0 in the message.
    #[error("parameter {index}: {problem}")]
    BadParam {
        /// Which parameter.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A memory reference reaches outside its buffer (`TEE_ERROR_SECURITY`, as OP-TEE).
    #[error("memref {offs:#x}+{size:#x} outside a buffer of {buf_size:#x} bytes")]
    OutOfBounds {
        /// Offset asked for.
        offs: u64,
        /// Size asked for.
        size: u64,
        /// Size of the buffer.
        buf_size: u64,
    },
    /// Wrong number or kind of parameters for the command.
    #[error("bad parameters: {0}")]
    BadParameters(&'static str),
    /// The message command is unknown.
    #[error("unknown message command {0}")]
    UnknownCommand(u32),
    /// No trusted application has this UUID.
    #[error("no trusted application with that UUID")]
    UnknownTa,
    /// No open session has this id.
    #[error("no session {0}")]
    UnknownSession(u32),
    /// The pseudo-TA does not know the command.
    #[error("unknown command {0} for the pseudo-TA")]
    UnknownFunction(u32),
    /// An output buffer is too small; the needed size is written back.
    #[error("output buffer too small: {needed} bytes needed")]
    ShortBuffer {
        /// Bytes needed.
        needed: u64,
    },
    /// The normal world's answer to an RPC was malformed or refused.
    #[error("RPC: {0}")]
    Rpc(&'static str),
    /// A check of data the pseudo-TA wrote and read back failed.
    #[error("data check failed at byte {0}")]
    Corrupt(u64),
    /// The trusted application died (it faulted or panicked) in this call or before it; its
    /// session only closes.
    #[error("the trusted application is dead")]
    TargetDead,
    /// The session's TA instance is running another call (one call at a time per instance).
    #[error("the trusted application is busy")]
    TaBusy,
    /// The calling guest is being destroyed: what the call would have made for it is not
    /// kept (`TEE_ERROR_BAD_STATE`; a destroyed guest reads no answer).
    #[error("the guest is being destroyed")]
    GuestGone,
    /// The trusted application answered with this result (origin `TEE_ORIGIN_TRUSTED_APP`).
    #[error("the trusted application returned {0:#x}")]
    TaResult(u32),
}

impl TeeError {
    /// The GlobalPlatform code written into `optee_msg_arg.ret`.
    pub fn code(&self) -> u32 {
        match self {
            Self::DuplicateCookie(_)
            | Self::UnknownCookie(_)
            | Self::PageList(_)
            | Self::NotNonSecure(_)
            | Self::BadParam { .. }
            | Self::BadParameters(_)
            | Self::UnknownSession(_) => gp::TEE_ERROR_BAD_PARAMETERS,
            Self::Revoked(_) => gp::TEE_ERROR_ACCESS_CONFLICT,
            Self::Quota { .. } | Self::OutOfMemory => gp::TEE_ERROR_OUT_OF_MEMORY,
            Self::Window(e) => match e {
                WindowError::Forbidden { .. } | WindowError::UnalignedPage(_) => {
                    gp::TEE_ERROR_BAD_PARAMETERS
                }
                _ => gp::TEE_ERROR_OUT_OF_MEMORY,
            },
            Self::Access(_) | Self::Corrupt(_) => gp::TEE_ERROR_GENERIC,
            Self::OutOfBounds { .. } => gp::TEE_ERROR_SECURITY,
            Self::UnknownCommand(_) | Self::UnknownFunction(_) => gp::TEE_ERROR_NOT_IMPLEMENTED,
            Self::UnknownTa => gp::TEE_ERROR_ITEM_NOT_FOUND,
            Self::ShortBuffer { .. } => gp::TEE_ERROR_SHORT_BUFFER,
            Self::Rpc(_) => gp::TEE_ERROR_COMMUNICATION,
            Self::TargetDead => gp::TEE_ERROR_TARGET_DEAD,
            Self::TaBusy => gp::TEE_ERROR_BUSY,
            Self::GuestGone => gp::TEE_ERROR_BAD_STATE,
            Self::TaResult(code) => *code,
        }
    }
}

impl From<WindowError> for TeeError {
    fn from(e: WindowError) -> Self {
        Self::Window(e)
    }
}

impl From<AccessFault> for TeeError {
    fn from(e: AccessFault) -> Self {
        Self::Access(e)
    }
}

impl From<PageListError<AccessFault>> for TeeError {
    fn from(e: PageListError<AccessFault>) -> Self {
        match e {
            PageListError::OutOfMemory { .. } => Self::OutOfMemory,
            e => Self::PageList(e),
        }
    }
}

/// Why a yielding call failed before (or instead of) running its message. It is reported in
/// `a0` as an `OPTEE_SMC_RETURN_*` code; the message, if any, is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Every thread is busy (or the guest's thread quota is used up).
    #[error("no free thread")]
    ThreadLimit,
    /// The argument's address is unusable: not normal-world memory, unaligned, the arg does
    /// not fit its page or buffer, or an unknown cookie for `CALL_WITH_REGD_ARG`.
    #[error("bad argument address")]
    BadAddress,
    /// `num_params` above 127, or a malformed argument.
    #[error("bad command")]
    BadCommand,
    /// The calling guest does not exist (no `VM_CREATED`) or is being destroyed.
    #[error("unknown guest")]
    UnknownGuest,
    /// No secure memory for the call's bookkeeping.
    #[error("out of memory")]
    OutOfMemory,
    /// `RETURN_FROM_RPC` names no thread of this guest that waits for an RPC.
    #[error("nothing to resume")]
    NotSuspended,
}

impl CallError {
    /// The `OPTEE_SMC_RETURN_*` code for `a0`.
    pub fn smc_code(self) -> u32 {
        use teeshm_abi::smc::*;
        match self {
            Self::ThreadLimit => OPTEE_SMC_RETURN_ETHREAD_LIMIT,
            Self::BadAddress => OPTEE_SMC_RETURN_EBADADDR,
            Self::BadCommand => OPTEE_SMC_RETURN_EBADCMD,
            Self::UnknownGuest => OPTEE_SMC_RETURN_ENOTAVAIL,
            Self::OutOfMemory => OPTEE_SMC_RETURN_ENOMEM,
            Self::NotSuspended => OPTEE_SMC_RETURN_ERESUME,
        }
    }
}
