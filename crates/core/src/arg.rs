//! The `optee_msg_arg` of a call: where it lies in normal-world memory, and its secure copy.
//!
//! The header is read once and `num_params` taken from that copy; the params are read once
//! right after it; only the copy is used from then on, and the results are written back once,
//! when the call ends.

use crate::error::TeeError;
use crate::mobj::MobjUse;
use crate::platform::Platform;
use crate::window::{MapGuard, WindowLock};
use alloc::vec::Vec;
use teeshm_abi::msg::{
    ArgError, MSG_ARG_HEADER_SIZE, MsgArgHeader, MsgParam, OPTEE_MSG_MAX_NUM_PARAMS, RPC_ARG_SIZE,
    arg_size_checked, split_arg,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// A place in normal-world memory: bytes from `offset` of a memory object a call uses.
#[derive(Debug)]
pub struct NsRef {
    /// The object, held for the call.
    pub used: MobjUse,
    /// Offset of the first byte in it.
    pub offset: u64,
}

impl NsRef {
    /// Maps the object for one access.
    pub(crate) fn map<'a, P: Platform>(
        &'a self,
        window: &'a WindowLock<P::Tlb>,
        platform: &'a P,
    ) -> Result<MapGuard<'a, P>, TeeError> {
        MapGuard::new(window, platform, &self.used)
    }

    /// Bytes from `offset` to the end of the object.
    pub fn available(&self) -> u64 {
        self.used.mobj().size().saturating_sub(self.offset)
    }
}

/// Why an argument could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgReadError {
    /// It does not fit its page or buffer, lies where the core may not map it, or could not
    /// be read.
    BadAddress,
    /// `num_params` is above the limit.
    BadCommand,
    /// It could not be mapped or copied for want of room: the guest's mapped-pages quota (its
    /// own calls hold it), the window, or the heap (`OPTEE_SMC_RETURN_ENOMEM`, as OP-TEE).
    OutOfMemory,
}

impl ArgReadError {
    /// The refusal for a failed map of the arg: room (retryable) or address.
    fn of_map(e: &TeeError) -> Self {
        if e.code() == teeshm_abi::gp::TEE_ERROR_OUT_OF_MEMORY {
            Self::OutOfMemory
        } else {
            Self::BadAddress
        }
    }
}

/// The secure copy of an `optee_msg_arg`: its header and exactly `num_params` params.
///
/// Header and params are kept apart, and nothing hands out the header mutably, so `num_params`
/// and the params cannot disagree: every view of the copy is total, none needs a fallback.
#[derive(Debug, Clone)]
pub struct ArgCopy {
    header: MsgArgHeader,
    params: Params,
}

/// Params kept inline: what one access reads with the header (nearly every call's).
const INLINE_PARAMS: usize = 4;

/// An arg's params: up to [`INLINE_PARAMS`] inline (no heap allocation for a call), more on
/// the heap.
///
/// A struct, not an enum, and 8-byte aligned: as an enum of wire structs (alignment 1), the
/// copy was moved in pieces at odd offsets beside a tag byte, and the next read of its length
/// spanned two of those stores, which the CPU cannot forward: a stall on every call.
#[derive(Debug, Clone)]
#[repr(C, align(8))]
struct Params {
    inline: [MsgParam; INLINE_PARAMS],
    /// How many of `inline` are used; 0 when the params are on the heap.
    inline_len: usize,
    /// The params when more than [`INLINE_PARAMS`] (empty, not allocated, otherwise).
    heap: Vec<MsgParam>,
}

impl Params {
    /// No params.
    fn empty() -> Self {
        Self {
            inline: [MsgParam::new_zeroed(); INLINE_PARAMS],
            inline_len: 0,
            heap: Vec::new(),
        }
    }

    /// Makes these `count` params, for the caller to fill (inline, they keep the bytes they
    /// held: zeros in a fresh set, and every caller overwrites all `count` of them).
    fn reset(&mut self, count: usize) -> Result<(), ArgReadError> {
        self.heap.clear();
        if count <= INLINE_PARAMS {
            self.inline_len = count;
            return Ok(());
        }
        self.inline_len = 0;
        self.heap
            .try_reserve_exact(count)
            .map_err(|_| ArgReadError::OutOfMemory)?;
        self.heap.resize(count, MsgParam::new_zeroed());
        Ok(())
    }

    /// Exactly `params`, on the heap.
    fn from_vec(params: Vec<MsgParam>) -> Self {
        Self {
            heap: params,
            ..Self::empty()
        }
    }

    fn as_slice(&self) -> &[MsgParam] {
        if self.heap.is_empty() {
            self.inline.get(..self.inline_len).unwrap_or(&[])
        } else {
            &self.heap
        }
    }

    fn as_mut_slice(&mut self) -> &mut [MsgParam] {
        if self.heap.is_empty() {
            self.inline.get_mut(..self.inline_len).unwrap_or(&mut [])
        } else {
            &mut self.heap
        }
    }
}

impl ArgCopy {
    /// A copy with no params, for [`Self::read_into`] to fill.
    pub(crate) fn empty() -> Self {
        Self {
            header: MsgArgHeader::new_zeroed(),
            params: Params::empty(),
        }
    }

    /// Reads the arg at `at` once into this copy: the header, then `num_params` params;
    /// `reserve` more bytes (an appended RPC arg) must also fit the buffer. The copy is filled
    /// where the call keeps it (returned by value, it was moved through each return, and each
    /// move stalled the next read of it).
    #[inline(always)]
    pub(crate) fn read_into<P: Platform>(
        &mut self,
        at: &NsRef,
        window: &WindowLock<P::Tlb>,
        platform: &P,
        reserve: u64,
    ) -> Result<(), ArgReadError> {
        let available = at.available();
        if available < MSG_ARG_HEADER_SIZE as u64 {
            return Err(ArgReadError::BadAddress);
        }
        let guard = match at.map(window, platform) {
            Ok(guard) => guard,
            Err(e) => return Err(ArgReadError::of_map(&e)),
        };
        // One access takes the header with up to four params (what nearly every call has);
        // params beyond those are read by a second access after them. No byte is read twice.
        let mut first = [0u8; RPC_ARG_SIZE];
        let first_len = usize::try_from(available).map_or(RPC_ARG_SIZE, |a| a.min(RPC_ARG_SIZE));
        let prefix = first.get_mut(..first_len).ok_or(ArgReadError::BadAddress)?;
        guard
            .read(at.offset, prefix)
            .map_err(|_| ArgReadError::BadAddress)?;
        let (header, in_prefix) =
            MsgArgHeader::read_from_prefix(prefix).map_err(|_| ArgReadError::BadAddress)?;
        let num_params = header.num_params.get();
        let size = arg_size_checked(num_params).map_err(|_| ArgReadError::BadCommand)?;
        let count = usize::try_from(num_params).map_err(|_| ArgReadError::BadCommand)?;
        let needed = (size as u64).saturating_add(reserve);
        if needed > available {
            return Err(ArgReadError::BadAddress);
        }
        self.params.reset(count)?;
        let bytes = self.params.as_mut_slice().as_mut_bytes();
        let have = in_prefix.len().min(bytes.len());
        let (copied, rest) = bytes.split_at_mut(have);
        copied.copy_from_slice(in_prefix.get(..have).ok_or(ArgReadError::BadAddress)?);
        if !rest.is_empty() {
            let rest_at = at.offset + (MSG_ARG_HEADER_SIZE + have) as u64;
            guard
                .read(rest_at, rest)
                .map_err(|_| ArgReadError::BadAddress)?;
        }
        self.header = header;
        Ok(())
    }

    /// A fresh arg (an RPC request): command `cmd` with exactly `params`.
    ///
    /// # Errors
    /// [`ArgError::TooManyParams`] when `params` would not fit one page.
    pub fn with_params(cmd: u32, params: Vec<MsgParam>) -> Result<Self, ArgError> {
        let too_many = ArgError::TooManyParams {
            num_params: u32::MAX,
            max: OPTEE_MSG_MAX_NUM_PARAMS,
        };
        let num_params = u32::try_from(params.len()).map_err(|_| too_many)?;
        arg_size_checked(num_params)?;
        let mut header = MsgArgHeader::new_zeroed();
        header.cmd.set(cmd);
        header.num_params.set(num_params);
        Ok(Self {
            header,
            params: Params::from_vec(params),
        })
    }

    /// The header.
    pub fn header(&self) -> MsgArgHeader {
        self.header
    }

    /// The params, exactly `num_params` of them.
    pub fn params(&self) -> &[MsgParam] {
        self.params.as_slice()
    }

    /// The params, to write results (output values and sizes) into the copy.
    pub fn params_mut(&mut self) -> &mut [MsgParam] {
        self.params.as_mut_slice()
    }

    /// Sets the session id (an `OPEN_SESSION` that succeeded).
    pub fn set_session(&mut self, session: u32) {
        self.header.session.set(session);
    }

    /// Sets `ret` and `ret_origin`.
    pub fn set_result(&mut self, ret: u32, origin: u32) {
        self.header.ret.set(ret);
        self.header.ret_origin.set(origin);
    }

    /// Bytes the arg takes in normal-world memory (header and params).
    pub fn size(&self) -> usize {
        MSG_ARG_HEADER_SIZE + self.params().as_bytes().len()
    }

    /// Writes the copy back to `at`.
    pub(crate) fn write_back<P: Platform>(
        &self,
        at: &NsRef,
        window: &WindowLock<P::Tlb>,
        platform: &P,
    ) -> Result<(), TeeError> {
        let guard = at.map(window, platform)?;
        // One access for the whole arg (a stack copy for up to four params).
        let params = self.params().as_bytes();
        let mut small = [0u8; RPC_ARG_SIZE];
        let whole_len = MSG_ARG_HEADER_SIZE + params.len();
        if let Some(whole) = small.get_mut(..whole_len) {
            let (h, p) = whole.split_at_mut(MSG_ARG_HEADER_SIZE);
            h.copy_from_slice(self.header.as_bytes());
            p.copy_from_slice(params);
            return guard.write(at.offset, whole);
        }
        guard.write(at.offset, self.header.as_bytes())?;
        guard.write(at.offset + MSG_ARG_HEADER_SIZE as u64, params)
    }

    /// Reads back an RPC arg at `at` (after the normal world answered): header and up to
    /// four params in one read, and at most as many params as the request had.
    pub(crate) fn read_rpc_reply<P: Platform>(
        at: &NsRef,
        window: &WindowLock<P::Tlb>,
        platform: &P,
        sent_params: u32,
    ) -> Result<Self, TeeError> {
        let mut raw = [0u8; RPC_ARG_SIZE];
        at.map(window, platform)?.read(at.offset, &mut raw)?;
        let (header, _) =
            MsgArgHeader::read_from_prefix(&raw).map_err(|_| TeeError::Rpc("short RPC arg"))?;
        if header.num_params.get() != sent_params {
            return Err(TeeError::Rpc("RPC reply changed num_params"));
        }
        let (_, params) = split_arg(&raw).map_err(|e| match e {
            ArgError::TooManyParams { .. } => TeeError::Rpc("bad num_params"),
            ArgError::Truncated { .. } => TeeError::Rpc("RPC arg too big"),
        })?;
        let mut copy = Params::empty();
        copy.reset(params.len())
            .map_err(|_| TeeError::OutOfMemory)?;
        copy.as_mut_slice().copy_from_slice(params);
        Ok(Self {
            header,
            params: copy,
        })
    }
}

/// Bytes an RPC arg takes after the normal arg (`CALL_WITH_RPC_ARG`, `CALL_WITH_REGD_ARG`).
pub const APPENDED_RPC_ARG: u64 = RPC_ARG_SIZE as u64;
