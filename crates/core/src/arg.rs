//! The `optee_msg_arg` of a call: where it lies in normal-world memory, and its secure copy.
//!
//! The header is read once and `num_params` taken from that copy; the params are read once
//! right after it; only the copy is used from then on, and the results are written back once,
//! when the call ends.

use crate::error::TeeError;
use crate::mobj::MobjUse;
use crate::platform::Platform;
use crate::window::{MapGuard, SharedWindow};
use alloc::vec::Vec;
use teeshm_abi::msg::{
    ArgError, MSG_ARG_HEADER_SIZE, MsgArgHeader, MsgParam, RPC_ARG_SIZE, arg_size_checked,
    split_arg, split_arg_mut,
};
use zerocopy::{FromBytes, IntoBytes};

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
        window: &'a crate::sync::Mutex<SharedWindow<P::Tlb>>,
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
    /// It does not fit its page or buffer, or could not be mapped or read.
    BadAddress,
    /// `num_params` is above the limit.
    BadCommand,
}

/// The secure copy of an `optee_msg_arg`: header and exactly `num_params` params.
#[derive(Debug, Clone)]
pub struct ArgCopy {
    bytes: Vec<u8>,
}

impl ArgCopy {
    /// Reads the arg at `at` once: the header, then `num_params` params; `reserve` more bytes
    /// (an appended RPC arg) must also fit the buffer.
    pub(crate) fn read<P: Platform>(
        at: &NsRef,
        window: &crate::sync::Mutex<SharedWindow<P::Tlb>>,
        platform: &P,
        reserve: u64,
    ) -> Result<Self, ArgReadError> {
        let available = at.available();
        if available < MSG_ARG_HEADER_SIZE as u64 {
            return Err(ArgReadError::BadAddress);
        }
        let guard = at
            .map(window, platform)
            .map_err(|_| ArgReadError::BadAddress)?;
        let mut header = MsgArgHeader::default();
        guard
            .read(at.offset, header.as_mut_bytes())
            .map_err(|_| ArgReadError::BadAddress)?;
        let num_params = header.num_params.get();
        let size = arg_size_checked(num_params).map_err(|_| ArgReadError::BadCommand)?;
        let needed = (size as u64).saturating_add(reserve);
        if needed > available {
            return Err(ArgReadError::BadAddress);
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(size)
            .map_err(|_| ArgReadError::BadAddress)?;
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(size, 0);
        let params_at = at.offset + MSG_ARG_HEADER_SIZE as u64;
        if let Some(params) = bytes.get_mut(MSG_ARG_HEADER_SIZE..) {
            guard
                .read(params_at, params)
                .map_err(|_| ArgReadError::BadAddress)?;
        }
        Ok(Self { bytes })
    }

    /// A fresh arg with `num_params` zeroed params (an RPC request).
    pub fn new(cmd: u32, num_params: u32) -> Result<Self, ArgError> {
        let size = arg_size_checked(num_params)?;
        let mut bytes = alloc::vec![0u8; size];
        if let Ok((header, _)) = split_arg_mut(&mut bytes) {
            header.cmd.set(cmd);
            header.num_params.set(num_params);
        }
        Ok(Self { bytes })
    }

    /// The header.
    pub fn header(&self) -> MsgArgHeader {
        MsgArgHeader::read_from_prefix(&self.bytes)
            .map(|(h, _)| h)
            .unwrap_or_default()
    }

    /// Header and params as a pair of views.
    pub fn split(&self) -> (&MsgArgHeader, &[MsgParam]) {
        // The copy was built with exactly num_params params, so the split cannot fail.
        split_arg(&self.bytes).unwrap_or((&EMPTY_HEADER, &[]))
    }

    /// Mutable views, to write results into the copy.
    pub fn split_mut(&mut self) -> Option<(&mut MsgArgHeader, &mut [MsgParam])> {
        split_arg_mut(&mut self.bytes).ok()
    }

    /// Sets `ret` and `ret_origin`.
    pub fn set_result(&mut self, ret: u32, origin: u32) {
        if let Some((header, _)) = self.split_mut() {
            header.ret.set(ret);
            header.ret_origin.set(origin);
        }
    }

    /// The bytes as they go back to the normal world.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes the copy back to `at`.
    pub(crate) fn write_back<P: Platform>(
        &self,
        at: &NsRef,
        window: &crate::sync::Mutex<SharedWindow<P::Tlb>>,
        platform: &P,
    ) -> Result<(), TeeError> {
        at.map(window, platform)?.write(at.offset, &self.bytes)
    }

    /// Reads back an RPC arg at `at` (after the normal world answered): header and up to
    /// four params in one read, and at most as many params as the request had.
    pub(crate) fn read_rpc_reply<P: Platform>(
        at: &NsRef,
        window: &crate::sync::Mutex<SharedWindow<P::Tlb>>,
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
        let size = arg_size_checked(sent_params).map_err(|_| TeeError::Rpc("bad num_params"))?;
        let bytes = raw
            .get(..size)
            .ok_or(TeeError::Rpc("RPC arg too big"))?
            .to_vec();
        Ok(Self { bytes })
    }
}

static EMPTY_HEADER: MsgArgHeader = MsgArgHeader {
    cmd: zerocopy::little_endian::U32::ZERO,
    func: zerocopy::little_endian::U32::ZERO,
    session: zerocopy::little_endian::U32::ZERO,
    cancel_id: zerocopy::little_endian::U32::ZERO,
    pad: zerocopy::little_endian::U32::ZERO,
    ret: zerocopy::little_endian::U32::ZERO,
    ret_origin: zerocopy::little_endian::U32::ZERO,
    num_params: zerocopy::little_endian::U32::ZERO,
};

/// Bytes an RPC arg takes after the normal arg (`CALL_WITH_RPC_ARG`, `CALL_WITH_REGD_ARG`).
pub const APPENDED_RPC_ARG: u64 = RPC_ARG_SIZE as u64;
