//! The OPTEE_MSG message ABI, revision 2.0 (`optee_msg.h`): `optee_msg_arg` and
//! `optee_msg_param` layouts, attribute bits and commands.
//!
//! Wire structs are zerocopy types of alignment 1 with little-endian fields, so they can be read
//! from (and written to) any byte buffer without `unsafe` and without alignment checks. The core
//! is expected to copy an arg out of normal-world memory once and parse the copy
//! ([`split_arg`]), never the shared original.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---- Attribute types (low 8 bits of `attr`) ------------------------------------------------

/// Unused parameter.
pub const OPTEE_MSG_ATTR_TYPE_NONE: u64 = 0x0;
/// Value parameter, input.
pub const OPTEE_MSG_ATTR_TYPE_VALUE_INPUT: u64 = 0x1;
/// Value parameter, output.
pub const OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT: u64 = 0x2;
/// Value parameter, input and output.
pub const OPTEE_MSG_ATTR_TYPE_VALUE_INOUT: u64 = 0x3;
/// Registered memory reference (offset into a registered SHM cookie), input.
pub const OPTEE_MSG_ATTR_TYPE_RMEM_INPUT: u64 = 0x5;
/// Registered memory reference, output.
pub const OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT: u64 = 0x6;
/// Registered memory reference, input and output.
pub const OPTEE_MSG_ATTR_TYPE_RMEM_INOUT: u64 = 0x7;
/// FF-A memory reference, input (same value as RMEM: the ABI in use decides).
pub const OPTEE_MSG_ATTR_TYPE_FMEM_INPUT: u64 = OPTEE_MSG_ATTR_TYPE_RMEM_INPUT;
/// FF-A memory reference, output.
pub const OPTEE_MSG_ATTR_TYPE_FMEM_OUTPUT: u64 = OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT;
/// FF-A memory reference, input and output.
pub const OPTEE_MSG_ATTR_TYPE_FMEM_INOUT: u64 = OPTEE_MSG_ATTR_TYPE_RMEM_INOUT;
/// Temporary memory reference (physical address, or page list with NONCONTIG), input.
pub const OPTEE_MSG_ATTR_TYPE_TMEM_INPUT: u64 = 0x9;
/// Temporary memory reference, output.
pub const OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT: u64 = 0xa;
/// Temporary memory reference, input and output.
pub const OPTEE_MSG_ATTR_TYPE_TMEM_INOUT: u64 = 0xb;

/// Mask of the type in `attr` (bits 7:0).
pub const OPTEE_MSG_ATTR_TYPE_MASK: u64 = 0xFF;
/// Meta parameter: not passed to the TA (e.g. the TA UUID and client login of OPEN_SESSION).
pub const OPTEE_MSG_ATTR_META: u64 = 1 << 8;
/// The tmem `buf_ptr` points to a NONCONTIG page list ([`crate::page_list`]), not to the data.
pub const OPTEE_MSG_ATTR_NONCONTIG: u64 = 1 << 9;
/// Position of the cache attributes in `attr`.
pub const OPTEE_MSG_ATTR_CACHE_SHIFT: u32 = 16;
/// Mask of the cache attributes (after shifting).
pub const OPTEE_MSG_ATTR_CACHE_MASK: u64 = 0x7;
/// Cache attributes: predefined by the platform (the only value in use).
pub const OPTEE_MSG_ATTR_CACHE_PREDEFINED: u64 = 0;

/// Page size of NONCONTIG page lists and of the data pages they name, whatever the OS page size.
pub const OPTEE_MSG_NONCONTIG_PAGE_SIZE: u64 = 4096;
/// FF-A `global_id` meaning "no memory object".
pub const OPTEE_MSG_FMEM_INVALID_GLOBAL_ID: u64 = u64::MAX;

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

/// `struct optee_msg_param` (32 bytes): an attribute word and a 24-byte union whose meaning
/// the attribute type selects; read it through the typed views ([`Tmem`], [`Rmem`], [`Fmem`],
/// [`Value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct MsgParam {
    /// Type, META/NONCONTIG flags and cache attributes.
    pub attr: U64,
    /// The C union `u`, as raw bytes.
    pub u: [u8; 24],
}

/// Temporary memory reference view of [`MsgParam::u`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Tmem {
    /// PA of the buffer, or with NONCONTIG the PA of the first list page | offset in first page.
    pub buf_ptr: U64,
    /// Buffer size in bytes.
    pub size: U64,
    /// Normal-world reference; for REGISTER_SHM the cookie the buffer will be known by.
    pub shm_ref: U64,
}

/// Registered memory reference view of [`MsgParam::u`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Rmem {
    /// Offset into the registered buffer.
    pub offs: U64,
    /// Size in bytes.
    pub size: U64,
    /// Cookie of the registered buffer.
    pub shm_ref: U64,
}

/// FF-A memory reference view of [`MsgParam::u`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Fmem {
    /// Low 32 bits of the offset.
    pub offs_low: U32,
    /// High 16 bits of the offset.
    pub offs_high: U16,
    /// Offset into the first page of the memory object.
    pub internal_offs: U16,
    /// Size in bytes.
    pub size: U64,
    /// FF-A global handle, or [`OPTEE_MSG_FMEM_INVALID_GLOBAL_ID`].
    pub global_id: U64,
}

/// Value view of [`MsgParam::u`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
pub struct Value {
    /// First value.
    pub a: U64,
    /// Second value.
    pub b: U64,
    /// Third value.
    pub c: U64,
}

const _: () = assert!(size_of::<MsgArgHeader>() == 32);
const _: () = assert!(size_of::<MsgParam>() == 32);
const _: () = assert!(size_of::<Tmem>() == 24);
const _: () = assert!(size_of::<Rmem>() == 24);
const _: () = assert!(size_of::<Fmem>() == 24);
const _: () = assert!(size_of::<Value>() == 24);
const _: () = assert!(align_of::<MsgArgHeader>() == 1 && align_of::<MsgParam>() == 1);

impl Tmem {
    /// Builds a tmem view.
    pub fn new(buf_ptr: u64, size: u64, shm_ref: u64) -> Self {
        Self {
            buf_ptr: U64::new(buf_ptr),
            size: U64::new(size),
            shm_ref: U64::new(shm_ref),
        }
    }
}

impl Rmem {
    /// Builds an rmem view.
    pub fn new(offs: u64, size: u64, shm_ref: u64) -> Self {
        Self {
            offs: U64::new(offs),
            size: U64::new(size),
            shm_ref: U64::new(shm_ref),
        }
    }
}

impl Fmem {
    /// Builds an fmem view; `offs` is split into `offs_low` / `offs_high` (48 bits are kept).
    pub fn new(offs: u64, internal_offs: u16, size: u64, global_id: u64) -> Self {
        Self {
            offs_low: U32::new((offs & 0xFFFF_FFFF) as u32),
            offs_high: U16::new(((offs >> 32) & 0xFFFF) as u16),
            internal_offs: U16::new(internal_offs),
            size: U64::new(size),
            global_id: U64::new(global_id),
        }
    }

    /// The 48-bit offset `offs_high:offs_low`.
    pub fn offs(&self) -> u64 {
        (u64::from(self.offs_high.get()) << 32) | u64::from(self.offs_low.get())
    }
}

impl Value {
    /// Builds a value view.
    pub fn new(a: u64, b: u64, c: u64) -> Self {
        Self {
            a: U64::new(a),
            b: U64::new(b),
            c: U64::new(c),
        }
    }
}

impl MsgParam {
    /// A param with the given attribute and an all-zero payload.
    pub fn new(attr: u64) -> Self {
        Self {
            attr: U64::new(attr),
            u: [0; 24],
        }
    }

    /// A param with a tmem payload.
    pub fn from_tmem(attr: u64, v: Tmem) -> Self {
        Self {
            attr: U64::new(attr),
            u: zerocopy::transmute!(v),
        }
    }

    /// A param with an rmem payload.
    pub fn from_rmem(attr: u64, v: Rmem) -> Self {
        Self {
            attr: U64::new(attr),
            u: zerocopy::transmute!(v),
        }
    }

    /// A param with an fmem payload.
    pub fn from_fmem(attr: u64, v: Fmem) -> Self {
        Self {
            attr: U64::new(attr),
            u: zerocopy::transmute!(v),
        }
    }

    /// A param with a value payload.
    pub fn from_value(attr: u64, v: Value) -> Self {
        Self {
            attr: U64::new(attr),
            u: zerocopy::transmute!(v),
        }
    }

    /// The attribute word.
    pub fn attr(&self) -> u64 {
        self.attr.get()
    }

    /// The decoded type (low 8 bits of `attr`).
    pub fn param_type(&self) -> Result<ParamType, ParamTypeError> {
        ParamType::try_from(self.attr())
    }

    /// True if [`OPTEE_MSG_ATTR_META`] is set.
    pub fn is_meta(&self) -> bool {
        self.attr() & OPTEE_MSG_ATTR_META != 0
    }

    /// True if [`OPTEE_MSG_ATTR_NONCONTIG`] is set.
    pub fn is_noncontig(&self) -> bool {
        self.attr() & OPTEE_MSG_ATTR_NONCONTIG != 0
    }

    /// The cache attributes field (bits 18:16).
    pub fn cache_attr(&self) -> u64 {
        (self.attr() >> OPTEE_MSG_ATTR_CACHE_SHIFT) & OPTEE_MSG_ATTR_CACHE_MASK
    }

    /// The payload read as tmem.
    pub fn tmem(&self) -> Tmem {
        zerocopy::transmute!(self.u)
    }

    /// The payload read as rmem.
    pub fn rmem(&self) -> Rmem {
        zerocopy::transmute!(self.u)
    }

    /// The payload read as fmem.
    pub fn fmem(&self) -> Fmem {
        zerocopy::transmute!(self.u)
    }

    /// The payload read as values.
    pub fn value(&self) -> Value {
        zerocopy::transmute!(self.u)
    }

    /// Overwrites the payload with a tmem view.
    pub fn set_tmem(&mut self, v: Tmem) {
        self.u = zerocopy::transmute!(v);
    }

    /// Overwrites the payload with an rmem view.
    pub fn set_rmem(&mut self, v: Rmem) {
        self.u = zerocopy::transmute!(v);
    }

    /// Overwrites the payload with an fmem view.
    pub fn set_fmem(&mut self, v: Fmem) {
        self.u = zerocopy::transmute!(v);
    }

    /// Overwrites the payload with a value view.
    pub fn set_value(&mut self, v: Value) {
        self.u = zerocopy::transmute!(v);
    }

    /// The payload as a mutable tmem, to update single fields (e.g. an output `size`).
    pub fn tmem_mut(&mut self) -> &mut Tmem {
        zerocopy::transmute_mut!(&mut self.u)
    }

    /// The payload as a mutable rmem.
    pub fn rmem_mut(&mut self) -> &mut Rmem {
        zerocopy::transmute_mut!(&mut self.u)
    }

    /// The payload as a mutable value.
    pub fn value_mut(&mut self) -> &mut Value {
        zerocopy::transmute_mut!(&mut self.u)
    }
}

// ---- Parameter type ------------------------------------------------------------------------

/// A parameter type decoded from the low 8 bits of `attr`, so the core can `match` on it.
///
/// FF-A `FMEM_*` share the `Rmem*` values; which one applies depends on the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParamType {
    /// [`OPTEE_MSG_ATTR_TYPE_NONE`].
    None = 0x0,
    /// [`OPTEE_MSG_ATTR_TYPE_VALUE_INPUT`].
    ValueInput = 0x1,
    /// [`OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT`].
    ValueOutput = 0x2,
    /// [`OPTEE_MSG_ATTR_TYPE_VALUE_INOUT`].
    ValueInout = 0x3,
    /// [`OPTEE_MSG_ATTR_TYPE_RMEM_INPUT`] (= FMEM_INPUT).
    RmemInput = 0x5,
    /// [`OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT`] (= FMEM_OUTPUT).
    RmemOutput = 0x6,
    /// [`OPTEE_MSG_ATTR_TYPE_RMEM_INOUT`] (= FMEM_INOUT).
    RmemInout = 0x7,
    /// [`OPTEE_MSG_ATTR_TYPE_TMEM_INPUT`].
    TmemInput = 0x9,
    /// [`OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT`].
    TmemOutput = 0xa,
    /// [`OPTEE_MSG_ATTR_TYPE_TMEM_INOUT`].
    TmemInout = 0xb,
}

impl ParamType {
    /// The type value as it appears in the low bits of `attr`.
    pub const fn raw(self) -> u64 {
        self as u64
    }

    /// A value (`a`, `b`, `c`) parameter.
    pub const fn is_value(self) -> bool {
        matches!(
            self,
            Self::ValueInput | Self::ValueOutput | Self::ValueInout
        )
    }

    /// A registered (or FF-A) memory reference.
    pub const fn is_rmem(self) -> bool {
        matches!(self, Self::RmemInput | Self::RmemOutput | Self::RmemInout)
    }

    /// A temporary memory reference.
    pub const fn is_tmem(self) -> bool {
        matches!(self, Self::TmemInput | Self::TmemOutput | Self::TmemInout)
    }

    /// The normal world supplies data in it.
    pub const fn is_input(self) -> bool {
        matches!(
            self,
            Self::ValueInput
                | Self::ValueInout
                | Self::RmemInput
                | Self::RmemInout
                | Self::TmemInput
                | Self::TmemInout
        )
    }

    /// The secure world writes results into it.
    pub const fn is_output(self) -> bool {
        matches!(
            self,
            Self::ValueOutput
                | Self::ValueInout
                | Self::RmemOutput
                | Self::RmemInout
                | Self::TmemOutput
                | Self::TmemInout
        )
    }
}

/// A parameter attribute whose type is not defined by OPTEE_MSG 2.0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamTypeError {
    /// Low 8 bits of `attr` are not a known type (0x4, 0x8, 0xc.. are undefined).
    #[error("unknown OPTEE_MSG param type {attr_type:#x}")]
    Unknown {
        /// The offending type byte.
        attr_type: u8,
    },
}

impl TryFrom<u64> for ParamType {
    type Error = ParamTypeError;

    /// Decodes the type from a whole `attr` word; flag bits above bit 7 are ignored here.
    fn try_from(attr: u64) -> Result<Self, Self::Error> {
        let attr_type = (attr & OPTEE_MSG_ATTR_TYPE_MASK) as u8;
        Ok(match attr_type {
            0x0 => Self::None,
            0x1 => Self::ValueInput,
            0x2 => Self::ValueOutput,
            0x3 => Self::ValueInout,
            0x5 => Self::RmemInput,
            0x6 => Self::RmemOutput,
            0x7 => Self::RmemInout,
            0x9 => Self::TmemInput,
            0xa => Self::TmemOutput,
            0xb => Self::TmemInout,
            attr_type => return Err(ParamTypeError::Unknown { attr_type }),
        })
    }
}

impl From<ParamType> for u64 {
    fn from(t: ParamType) -> u64 {
        t.raw()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use proptest::prelude::*;

    #[test]
    fn attr_constants() {
        assert_eq!(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            0x20a
        );
        assert_eq!(OPTEE_MSG_ATTR_META, 0x100);
        assert_eq!(
            OPTEE_MSG_ATTR_TYPE_FMEM_INOUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_INOUT
        );
        assert_eq!(OPTEE_MSG_CMD_ASSIGN_PROTMEM, 11);
        assert_eq!(OPTEE_MSG_CMD_REGISTER_SHM, 4);
        assert_eq!(OPTEE_MSG_CMD_UNREGISTER_SHM, 5);
    }

    #[test]
    fn field_offsets() {
        assert_eq!(offset_of!(MsgArgHeader, cmd), 0);
        assert_eq!(offset_of!(MsgArgHeader, func), 4);
        assert_eq!(offset_of!(MsgArgHeader, session), 8);
        assert_eq!(offset_of!(MsgArgHeader, cancel_id), 12);
        assert_eq!(offset_of!(MsgArgHeader, pad), 16);
        assert_eq!(offset_of!(MsgArgHeader, ret), 20);
        assert_eq!(offset_of!(MsgArgHeader, ret_origin), 24);
        assert_eq!(offset_of!(MsgArgHeader, num_params), 28);
        assert_eq!(offset_of!(MsgParam, attr), 0);
        assert_eq!(offset_of!(MsgParam, u), 8);
        assert_eq!(offset_of!(Tmem, buf_ptr), 0);
        assert_eq!(offset_of!(Tmem, size), 8);
        assert_eq!(offset_of!(Tmem, shm_ref), 16);
        assert_eq!(offset_of!(Rmem, offs), 0);
        assert_eq!(offset_of!(Rmem, size), 8);
        assert_eq!(offset_of!(Rmem, shm_ref), 16);
        assert_eq!(offset_of!(Fmem, offs_low), 0);
        assert_eq!(offset_of!(Fmem, offs_high), 4);
        assert_eq!(offset_of!(Fmem, internal_offs), 6);
        assert_eq!(offset_of!(Fmem, size), 8);
        assert_eq!(offset_of!(Fmem, global_id), 16);
        assert_eq!(offset_of!(Value, a), 0);
        assert_eq!(offset_of!(Value, b), 8);
        assert_eq!(offset_of!(Value, c), 16);
    }

    fn header(cmd: u32, num_params: u32) -> MsgArgHeader {
        MsgArgHeader {
            cmd: U32::new(cmd),
            func: U32::new(0x1122_3344),
            session: U32::new(0x5566_7788),
            cancel_id: U32::new(0x99aa_bbcc),
            pad: U32::new(0),
            ret: U32::new(0xFFFF_0006),
            ret_origin: U32::new(3),
            num_params: U32::new(num_params),
        }
    }

    #[test]
    fn golden_register_shm_bytes() {
        let hdr = header(OPTEE_MSG_CMD_REGISTER_SHM, 2);
        let p0 = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(0x8000_1234, 0x2_0000, 0xdead_beef_0000_0001),
        );
        let p1 = MsgParam::from_fmem(
            OPTEE_MSG_ATTR_TYPE_FMEM_INPUT,
            Fmem::new(0xABCD_1234_5678, 0x0FED, 0x10, 0x0102_0304_0506_0708),
        );
        let mut bytes = alloc::vec::Vec::new();
        bytes.extend_from_slice(hdr.as_bytes());
        bytes.extend_from_slice(p0.as_bytes());
        bytes.extend_from_slice(p1.as_bytes());
        #[rustfmt::skip]
        let want: [u8; 96] = [
            // header
            0x04, 0, 0, 0,  0x44, 0x33, 0x22, 0x11,  0x88, 0x77, 0x66, 0x55,  0xcc, 0xbb, 0xaa, 0x99,
            0, 0, 0, 0,     0x06, 0, 0xff, 0xff,     0x03, 0, 0, 0,           0x02, 0, 0, 0,
            // param 0: attr 0x20a, buf_ptr, size, shm_ref
            0x0a, 0x02, 0, 0, 0, 0, 0, 0,
            0x34, 0x12, 0x00, 0x80, 0, 0, 0, 0,
            0, 0, 0x02, 0, 0, 0, 0, 0,
            0x01, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde,
            // param 1: attr 5, offs_low, offs_high, internal_offs, size, global_id
            0x05, 0, 0, 0, 0, 0, 0, 0,
            0x78, 0x56, 0x34, 0x12,  0xcd, 0xab,  0xed, 0x0f,
            0x10, 0, 0, 0, 0, 0, 0, 0,
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
        ];
        assert_eq!(bytes.as_slice(), want.as_slice());

        let (h, ps) = split_arg(&bytes).expect("valid arg");
        assert_eq!(*h, hdr);
        assert_eq!(ps, &[p0, p1]);
        assert_eq!(ps[0].param_type(), Ok(ParamType::TmemOutput));
        assert!(ps[0].is_noncontig());
        assert!(!ps[0].is_meta());
        assert_eq!(ps[0].tmem().buf_ptr.get(), 0x8000_1234);
        assert_eq!(ps[1].fmem().offs(), 0xABCD_1234_5678);
        assert_eq!(ps[1].fmem().internal_offs.get(), 0x0FED);
    }

    #[test]
    fn golden_value_param_bytes() {
        let p = MsgParam::from_value(
            OPTEE_MSG_ATTR_TYPE_VALUE_INOUT
                | OPTEE_MSG_ATTR_META
                | (5 << OPTEE_MSG_ATTR_CACHE_SHIFT),
            Value::new(1, 0x0200, 0x0003_0000),
        );
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0x03, 0x01, 0x05, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 0, 0, 0, 0,
            0, 2, 0, 0, 0, 0, 0, 0,
            0, 0, 3, 0, 0, 0, 0, 0,
        ];
        assert_eq!(p.as_bytes(), &want);
        assert!(p.is_meta());
        assert_eq!(p.cache_attr(), 5);
        assert_eq!(p.param_type(), Ok(ParamType::ValueInout));
    }

    #[test]
    fn views_alias_the_same_bytes() {
        let mut p = MsgParam::new(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT);
        p.set_rmem(Rmem::new(0x10, 0x20, 0x30));
        assert_eq!(p.value(), Value::new(0x10, 0x20, 0x30));
        assert_eq!(p.tmem(), Tmem::new(0x10, 0x20, 0x30));
        p.rmem_mut().size = U64::new(0x99);
        assert_eq!(p.rmem().size.get(), 0x99);
        p.tmem_mut().shm_ref = U64::new(7);
        assert_eq!(p.value().c.get(), 7);
        p.value_mut().a = U64::new(1);
        p.set_tmem(p.tmem());
        assert_eq!(p.rmem().offs.get(), 1);
        p.set_value(Value::new(4, 5, 6));
        p.set_fmem(p.fmem());
        assert_eq!(p.value(), Value::new(4, 5, 6));
    }

    #[test]
    fn param_type_decoding() {
        let known = [
            (0x0, ParamType::None),
            (0x1, ParamType::ValueInput),
            (0x2, ParamType::ValueOutput),
            (0x3, ParamType::ValueInout),
            (0x5, ParamType::RmemInput),
            (0x6, ParamType::RmemOutput),
            (0x7, ParamType::RmemInout),
            (0x9, ParamType::TmemInput),
            (0xa, ParamType::TmemOutput),
            (0xb, ParamType::TmemInout),
        ];
        for (raw, t) in known {
            assert_eq!(ParamType::try_from(raw), Ok(t));
            assert_eq!(ParamType::try_from(raw | 0x3_0300), Ok(t));
            assert_eq!(u64::from(t), raw);
            assert_eq!(t.is_input(), raw & 1 != 0 && raw != 0);
            assert_eq!(t.is_output(), raw & 2 != 0);
            assert_eq!(
                u8::from(t.is_value()) + u8::from(t.is_rmem()) + u8::from(t.is_tmem()),
                u8::from(t != ParamType::None)
            );
        }
        for bad in [0x4u64, 0x8, 0xc, 0xff, 0x1_0004] {
            assert_eq!(
                ParamType::try_from(bad),
                Err(ParamTypeError::Unknown {
                    attr_type: (bad & 0xff) as u8
                })
            );
        }
    }

    #[test]
    fn arg_sizes() {
        assert_eq!(get_arg_size(0), Some(32));
        assert_eq!(get_arg_size(4), Some(160));
        assert_eq!(get_arg_size(127), Some(4096));
        assert_eq!(arg_size_checked(127), Ok(4096));
        assert_eq!(
            arg_size_checked(128),
            Err(ArgError::TooManyParams {
                num_params: 128,
                max: 127
            })
        );
        assert_eq!(
            arg_size_checked(u32::MAX),
            Err(ArgError::TooManyParams {
                num_params: u32::MAX,
                max: 127
            })
        );
        assert_eq!(RPC_ARG_SIZE, 160);
    }

    #[test]
    fn split_arg_errors() {
        assert_eq!(
            split_arg(&[0u8; 31]),
            Err(ArgError::Truncated {
                needed: 32,
                available: 31
            })
        );
        let mut buf = alloc::vec![0u8; 32 + 32 * 3];
        buf[28] = 4; // num_params = 4, only 3 present
        assert_eq!(
            split_arg(&buf),
            Err(ArgError::Truncated {
                needed: 160,
                available: 128
            })
        );
        buf[28] = 200;
        assert_eq!(
            split_arg(&buf),
            Err(ArgError::TooManyParams {
                num_params: 200,
                max: 127
            })
        );
        buf[28] = 2;
        let (h, ps) = split_arg(&buf).expect("fits");
        assert_eq!(h.num_params.get(), 2);
        assert_eq!(ps.len(), 2);

        let (h, ps) = split_arg_mut(&mut buf).expect("fits");
        h.ret = U32::new(crate::gp::TEE_ERROR_BAD_PARAMETERS);
        ps[1].set_value(Value::new(1, 2, 3));
        assert_eq!(&buf[20..24], &[6, 0, 0xff, 0xff]);
        assert_eq!(buf[32 + 32 + 8], 1);
        buf[28] = 128;
        assert!(matches!(
            split_arg_mut(&mut buf),
            Err(ArgError::TooManyParams {
                num_params: 128,
                ..
            })
        ));
        assert!(matches!(
            split_arg_mut(&mut buf[..10]),
            Err(ArgError::Truncated {
                needed: 32,
                available: 10
            })
        ));
    }

    proptest! {
        #[test]
        fn param_round_trip(attr: u64, a: u64, b: u64, c: u64) {
            let p = MsgParam::from_value(attr, Value::new(a, b, c));
            let back = MsgParam::read_from_bytes(p.as_bytes()).expect("32 bytes");
            prop_assert_eq!(back, p);
            prop_assert_eq!(back.tmem(), Tmem::new(a, b, c));
            prop_assert_eq!(back.rmem(), Rmem::new(a, b, c));
            let f = back.fmem();
            prop_assert_eq!(f.offs() & 0xFFFF_FFFF, a & 0xFFFF_FFFF);
            prop_assert_eq!(MsgParam::from_fmem(attr, f), p);
            prop_assert_eq!(back.param_type().is_ok(), matches!(attr & 0xff, 0..=3 | 5..=7 | 9..=11));
        }

        #[test]
        fn split_arg_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok((h, ps)) = split_arg(&bytes) {
                prop_assert_eq!(ps.len() as u32, h.num_params.get());
                prop_assert!(32 + 32 * ps.len() <= bytes.len());
            }
        }

        #[test]
        fn arg_header_round_trip(words: [u32; 8]) {
            let mut raw = [0u8; 32];
            for (i, w) in words.iter().enumerate() {
                raw[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let h = MsgArgHeader::read_from_bytes(&raw).expect("32 bytes");
            prop_assert_eq!(h.cmd.get(), words[0]);
            prop_assert_eq!(h.num_params.get(), words[7]);
            prop_assert_eq!(h.as_bytes(), &raw);
        }
    }
}
