//! `optee_msg_param`: the attribute bits, the param, its typed views (tmem, rmem, fmem, value)
//! and the decoded parameter type.

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
// ---- The param and its views ---------------------------------------------------------------

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

const _: () = assert!(size_of::<MsgParam>() == 32);
const _: () = assert!(size_of::<Tmem>() == 24);
const _: () = assert!(size_of::<Rmem>() == 24);
const _: () = assert!(size_of::<Fmem>() == 24);
const _: () = assert!(size_of::<Value>() == 24);
const _: () = assert!(align_of::<MsgParam>() == 1);

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
