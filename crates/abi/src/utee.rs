//! OP-TEE's user-TA ABI, the part teeshm implements: the system-call numbers
//! (`lib/libutee/include/tee_syscall_numbers.h`), the entry functions of `__utee_entry`
//! (`lib/libutee/include/utee_types.h`), `struct utee_params`
//! (`lib/libutee/include/utee_types.h`), the GP parameter types and memory access flags
//! (`lib/libutee/include/tee_api_defines.h`), and `TEE_UUID`'s layout.
//!
//! On AArch64 a TA enters the core with `svc #0`, the call number in `x8` and up to eight
//! arguments in `x0`..`x7`; the result comes back in `x0`. The core enters a TA at its entry
//! point with `x0` = entry function, `x1` = session id, `x2` = address of a `utee_params`, `x3`
//! = command id, as OP-TEE's `thread_enter_user_mode` does for `__utee_entry`.
//!
//! The address-space layout ([`layout`]) is teeshm's own: OP-TEE places a TA with `ldelf`.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `TEE_SCN_RETURN`: the entry function is done; `x0` = its `TEE_Result`. Does not return.
pub const TEE_SCN_RETURN: u64 = 0;
/// `TEE_SCN_LOG`: `x0` = address, `x1` = length of a message for the secure console.
pub const TEE_SCN_LOG: u64 = 1;
/// `TEE_SCN_PANIC`: `x0` = panic code. Does not return: the TA instance is dead.
pub const TEE_SCN_PANIC: u64 = 2;
/// `TEE_SCN_GET_PROPERTY` (not implemented by teeshm: `TEE_ERROR_NOT_SUPPORTED`).
pub const TEE_SCN_GET_PROPERTY: u64 = 3;
/// `TEE_SCN_GET_PROPERTY_NAME_TO_INDEX` (not implemented by teeshm).
pub const TEE_SCN_GET_PROPERTY_NAME_TO_INDEX: u64 = 4;
/// `TEE_SCN_OPEN_TA_SESSION`: `x0` = `TEE_UUID *`, `x1` = cancellation timeout, `x2` =
/// `struct utee_params *`, `x3` = `uint32_t *` session out, `x4` = `uint32_t *` origin out.
pub const TEE_SCN_OPEN_TA_SESSION: u64 = 5;
/// `TEE_SCN_CLOSE_TA_SESSION`: `x0` = session.
pub const TEE_SCN_CLOSE_TA_SESSION: u64 = 6;
/// `TEE_SCN_INVOKE_TA_COMMAND`: `x0` = session, `x1` = cancellation timeout, `x2` = command,
/// `x3` = `struct utee_params *`, `x4` = `uint32_t *` origin out.
pub const TEE_SCN_INVOKE_TA_COMMAND: u64 = 7;
/// `TEE_SCN_CHECK_ACCESS_RIGHTS`: `x0` = flags, `x1` = address, `x2` = length.
pub const TEE_SCN_CHECK_ACCESS_RIGHTS: u64 = 8;

/// `UTEE_ENTRY_FUNC_OPEN_SESSION`.
pub const UTEE_ENTRY_FUNC_OPEN_SESSION: u64 = 0;
/// `UTEE_ENTRY_FUNC_CLOSE_SESSION`.
pub const UTEE_ENTRY_FUNC_CLOSE_SESSION: u64 = 1;
/// `UTEE_ENTRY_FUNC_INVOKE_COMMAND`.
pub const UTEE_ENTRY_FUNC_INVOKE_COMMAND: u64 = 2;

/// `TEE_PARAM_TYPE_NONE`.
pub const TEE_PARAM_TYPE_NONE: u32 = 0;
/// `TEE_PARAM_TYPE_VALUE_INPUT`.
pub const TEE_PARAM_TYPE_VALUE_INPUT: u32 = 1;
/// `TEE_PARAM_TYPE_VALUE_OUTPUT`.
pub const TEE_PARAM_TYPE_VALUE_OUTPUT: u32 = 2;
/// `TEE_PARAM_TYPE_VALUE_INOUT`.
pub const TEE_PARAM_TYPE_VALUE_INOUT: u32 = 3;
/// `TEE_PARAM_TYPE_MEMREF_INPUT`.
pub const TEE_PARAM_TYPE_MEMREF_INPUT: u32 = 5;
/// `TEE_PARAM_TYPE_MEMREF_OUTPUT`.
pub const TEE_PARAM_TYPE_MEMREF_OUTPUT: u32 = 6;
/// `TEE_PARAM_TYPE_MEMREF_INOUT`.
pub const TEE_PARAM_TYPE_MEMREF_INOUT: u32 = 7;

/// `TEE_PARAM_TYPES(t0, t1, t2, t3)`.
pub const fn param_types(t: [u32; 4]) -> u32 {
    t[0] | (t[1] << 4) | (t[2] << 8) | (t[3] << 12)
}

/// `TEE_PARAM_TYPE_GET(types, i)`.
pub const fn param_type(types: u64, i: usize) -> u32 {
    ((types >> (4 * i)) & 0xf) as u32
}

/// `TEE_MEMORY_ACCESS_READ`.
pub const TEE_MEMORY_ACCESS_READ: u32 = 0x1;
/// `TEE_MEMORY_ACCESS_WRITE`.
pub const TEE_MEMORY_ACCESS_WRITE: u32 = 0x2;
/// `TEE_MEMORY_ACCESS_ANY_OWNER`: the buffer may be shared with the client (not only the TA's
/// own memory).
pub const TEE_MEMORY_ACCESS_ANY_OWNER: u32 = 0x4;

/// `struct utee_params`: the parameter types (`TEE_PARAM_TYPES`) and, per parameter, two
/// values: a memref's address and size, or a value's `a` and `b`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UteeParams {
    /// `types`.
    pub types: U64,
    /// `vals[2 * i]`, `vals[2 * i + 1]` of parameter `i`.
    pub vals: [U64; 8],
}

/// Bytes of a [`UteeParams`].
pub const UTEE_PARAMS_SIZE: usize = 72;
const _: () = assert!(core::mem::size_of::<UteeParams>() == UTEE_PARAMS_SIZE);

impl UteeParams {
    /// The type of parameter `i` (0..4).
    pub fn param_type(&self, i: usize) -> u32 {
        param_type(self.types.get(), i)
    }

    /// `vals[2i]`, `vals[2i + 1]`; `(0, 0)` for `i` ≥ 4.
    pub fn pair(&self, i: usize) -> (u64, u64) {
        let a = self.vals.get(2 * i).map_or(0, |v| v.get());
        let b = self.vals.get(2 * i + 1).map_or(0, |v| v.get());
        (a, b)
    }

    /// Takes the outputs of `out` (what a TA wrote back into the copy it got of these params):
    /// output and inout values whole, and output and inout memrefs' sizes (their addresses stay
    /// the caller's).
    pub fn take_outputs(&mut self, out: &UteeParams) {
        for i in 0..4 {
            match self.param_type(i) {
                TEE_PARAM_TYPE_VALUE_OUTPUT | TEE_PARAM_TYPE_VALUE_INOUT => {
                    let (a, b) = out.pair(i);
                    self.set_pair(i, a, b);
                }
                TEE_PARAM_TYPE_MEMREF_OUTPUT | TEE_PARAM_TYPE_MEMREF_INOUT => {
                    self.set_pair(i, self.pair(i).0, out.pair(i).1);
                }
                _ => {}
            }
        }
    }

    /// Sets `vals[2i]`, `vals[2i + 1]` (nothing for `i` ≥ 4).
    pub fn set_pair(&mut self, i: usize, a: u64, b: u64) {
        if let Some(v) = self.vals.get_mut(2 * i) {
            v.set(a);
        }
        if let Some(v) = self.vals.get_mut(2 * i + 1) {
            v.set(b);
        }
    }
}

/// Bytes of a `TEE_UUID` (`timeLow` u32, `timeMid` u16, `timeHiAndVersion` u16,
/// `clockSeqAndNode` [u8; 8], in the TA's (little-endian) byte order).
pub const TEE_UUID_SIZE: usize = 16;

/// The `TEE_UUID` a TA keeps in its memory for `uuid` as 16 octets in RFC 4122 order (the
/// order of `OPEN_SESSION`'s meta parameter).
pub fn tee_uuid_from_octets(uuid: [u8; 16]) -> [u8; TEE_UUID_SIZE] {
    let mut out = uuid;
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

/// The octets of a `TEE_UUID` read from a TA's memory (the inverse of
/// [`tee_uuid_from_octets`]).
pub fn tee_uuid_to_octets(tee_uuid: [u8; TEE_UUID_SIZE]) -> [u8; 16] {
    tee_uuid_from_octets(tee_uuid)
}

/// teeshm's user address-space layout (the same for every TA instance: each has its own
/// translation regime, with its own ASID).
pub mod layout {
    /// First byte of the TA's private region: its image is linked here (code first).
    pub const PRIVATE_BASE: u64 = 0x8000_0000;
    /// Bytes of the private region (one level-1 slot: 1 GiB).
    pub const PRIVATE_SIZE: u64 = 1 << 30;
    /// First byte of the region where an invocation's memref parameters are mapped.
    pub const PARAM_BASE: u64 = 0xc000_0000;
    /// Bytes of the parameter region (one level-1 slot: 1 GiB).
    pub const PARAM_SIZE: u64 = 1 << 30;
    /// The TA's heap: a fixed place, so that a TA's state lives in its own memory.
    pub const HEAP_BASE: u64 = 0x8080_0000;
    /// Bytes of the heap.
    pub const HEAP_SIZE: u64 = 64 << 10;
    /// Top of the TA's stack (it grows down; an unmapped guard page lies below it).
    pub const STACK_TOP: u64 = 0x80c0_0000;
    /// Bytes of the stack.
    pub const STACK_SIZE: u64 = 16 << 10;
    /// Most bytes of an image's loadable segments.
    pub const IMAGE_MAX: u64 = 4 << 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_types_pack_as_optee_does() {
        let t = param_types([
            TEE_PARAM_TYPE_MEMREF_INPUT,
            TEE_PARAM_TYPE_VALUE_OUTPUT,
            TEE_PARAM_TYPE_NONE,
            TEE_PARAM_TYPE_MEMREF_INOUT,
        ]);
        assert_eq!(t, 0x7025);
        assert_eq!(param_type(t as u64, 0), TEE_PARAM_TYPE_MEMREF_INPUT);
        assert_eq!(param_type(t as u64, 3), TEE_PARAM_TYPE_MEMREF_INOUT);
    }

    #[test]
    fn uuid_round_trips_and_swaps_the_first_three_fields() {
        let octets = [
            0x8a, 0xaa, 0xf2, 0x00, 0x24, 0x50, 0x11, 0xe4, 0xab, 0xe2, 0x00, 0x02, 0xa5, 0xd5,
            0xc5, 0x1b,
        ];
        let t = tee_uuid_from_octets(octets);
        assert_eq!(&t[..8], &[0x00, 0xf2, 0xaa, 0x8a, 0x50, 0x24, 0xe4, 0x11]);
        assert_eq!(&t[8..], &octets[8..]);
        assert_eq!(tee_uuid_to_octets(t), octets);
    }

    #[test]
    fn outputs_are_taken_and_inputs_and_addresses_kept() {
        let mut mine = UteeParams::default();
        mine.types.set(u64::from(param_types([
            TEE_PARAM_TYPE_VALUE_INPUT,
            TEE_PARAM_TYPE_VALUE_INOUT,
            TEE_PARAM_TYPE_MEMREF_OUTPUT,
            TEE_PARAM_TYPE_MEMREF_INPUT,
        ])));
        for i in 0..4 {
            mine.set_pair(i, 10 + i as u64, 20 + i as u64);
        }
        let mut out = UteeParams::default();
        for i in 0..4 {
            out.set_pair(i, 100 + i as u64, 200 + i as u64);
        }
        mine.take_outputs(&out);
        assert_eq!(mine.pair(0), (10, 20));
        assert_eq!(mine.pair(1), (101, 201));
        assert_eq!(mine.pair(2), (12, 202));
        assert_eq!(mine.pair(3), (13, 23));
    }

    #[test]
    fn pairs_outside_the_four_params_are_ignored() {
        let mut p = UteeParams::default();
        p.set_pair(1, 7, 8);
        p.set_pair(4, 9, 9);
        assert_eq!(p.pair(1), (7, 8));
        assert_eq!(p.pair(4), (0, 0));
    }
}
