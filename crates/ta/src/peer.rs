//! The user TA `teeshm.ta-peer`: the callee of [`memtest`](crate::memtest)'s CALL_PEER, which
//! gets a buffer of another TA's private memory.
//!
//! UUID `74656573-686d-4d50-8d54-412d70656572`: the octets spell `teeshmMP` `\x8d` `TA-peer`
//! in ASCII (version 4, RFC 4122 variant), [`UUID`].
//!
//! Commands ([`cmd`]); params not listed are `TEE_PARAM_TYPE_NONE`:
//!
//! | id | name | params | does |
//! |---|---|---|---|
//! | 0 | CHECK_AND_INVERT | p0 `MEMREF_INOUT`, p1 value in `a` = seed, p2 value out | reads every byte of p0 and compares it with [`pattern_byte`](crate::pattern_byte) of the seed: `p2.a` = bytes checked, `p2.b` = index of the first wrong byte or `0xffff_ffff`; then writes every byte back XOR 0xff |
//! | 1 | PROBE_BEYOND | p0 any memref | reads the first byte after p0's last page (`va + size` rounded up to 4 KiB): nothing of the caller but p0's pages is mapped, so the TA dies. `TEE_SUCCESS` if the read went through |
//!
//! Opening a session accepts any parameters and logs `ta-peer: open`. Unknown commands and
//! wrong parameter types: `TEE_ERROR_BAD_PARAMETERS`. Outputs are written back as
//! [`memtest`](crate::memtest)'s are.

use crate::Program;
use crate::env::{Stop, UserEnv};
use crate::libutee::{self, types_are};
use crate::pattern;
use teeshm_abi::gp::{TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS};
use teeshm_abi::utee::{
    TEE_PARAM_TYPE_MEMREF_INOUT, TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_VALUE_INOUT, TEE_PARAM_TYPE_VALUE_INPUT,
    TEE_PARAM_TYPE_VALUE_OUTPUT, UteeParams,
};

/// The TA's UUID as 16 octets (`7465 6573 686d 4d50 8d54 412d 7065 6572`).
pub const UUID: [u8; 16] = [
    0x74, 0x65, 0x65, 0x73, 0x68, 0x6d, 0x4d, 0x50, 0x8d, 0x54, 0x41, 0x2d, 0x70, 0x65, 0x65, 0x72,
];

/// The program.
pub const PROGRAM: Program = Program {
    uuid: UUID,
    name: "teeshm.ta-peer",
    entry,
};

/// Command ids (the table in the module doc).
pub mod cmd {
    /// Check memref 0 against the pattern of seed `p1.a`, then invert it.
    pub const CHECK_AND_INVERT: u32 = 0;
    /// Read the first byte after memref 0's last page.
    pub const PROBE_BEYOND: u32 = 1;
}

/// Page size of the TA's address space.
const PAGE: u64 = 4096;

const NONE: &[u32] = &[TEE_PARAM_TYPE_NONE];
const MEM_ANY: &[u32] = &[
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_MEMREF_INOUT,
];

/// `__utee_entry` of the TA.
///
/// # Errors
/// [`Stop`] if the core ended the TA (PROBE_BEYOND ends here).
pub fn entry(
    env: &mut dyn UserEnv,
    func: u64,
    _session: u64,
    params_va: u64,
    cmd: u64,
) -> Result<u32, Stop> {
    libutee::dispatch(env, "ta-peer: open", (func, params_va, cmd), invoke)
}

fn invoke(env: &mut dyn UserEnv, cmd: u32, p: &mut UteeParams) -> Result<u32, Stop> {
    match cmd {
        cmd::CHECK_AND_INVERT => {
            let expected: [&[u32]; 4] = [
                &[TEE_PARAM_TYPE_MEMREF_INOUT],
                &[TEE_PARAM_TYPE_VALUE_INPUT, TEE_PARAM_TYPE_VALUE_INOUT],
                &[TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_VALUE_INOUT],
                NONE,
            ];
            if !types_are(p, expected) {
                return Ok(TEE_ERROR_BAD_PARAMETERS);
            }
            let ((va, size), (seed, _)) = (p.pair(0), p.pair(1));
            let wrong = pattern::check(env, va, size, seed, 0)?;
            pattern::invert(env, va, size)?;
            p.set_pair(2, size, wrong.unwrap_or(crate::pattern::NONE_WRONG));
            Ok(TEE_SUCCESS)
        }
        cmd::PROBE_BEYOND => {
            if !types_are(p, [MEM_ANY, NONE, NONE, NONE]) {
                return Ok(TEE_ERROR_BAD_PARAMETERS);
            }
            let (va, size) = p.pair(0);
            let beyond = va.wrapping_add(size).wrapping_add(PAGE - 1) & !(PAGE - 1);
            let mut b = [0u8];
            env.read(beyond, &mut b)?;
            Ok(TEE_SUCCESS)
        }
        _ => Ok(TEE_ERROR_BAD_PARAMETERS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Ended, Machine, Param};
    use crate::pattern_byte;

    #[test]
    fn check_and_invert_checks_every_byte_and_inverts_them() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        assert_eq!(m.log(), ["ta-peer: open"]);
        let bytes: Vec<u8> = (0..5000).map(|i| pattern_byte(4, i)).collect();
        let buf = m.buffer(&bytes, 300);
        let (ended, out) = s.invoke(
            cmd::CHECK_AND_INVERT,
            [
                Param::MemInout(&buf),
                Param::ValueIn(4, 0),
                Param::ValueOut,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(out.pair(2), (5000, crate::pattern::NONE_WRONG));
        let inverted: Vec<u8> = bytes.iter().map(|b| b ^ 0xff).collect();
        assert_eq!(m.read_buffer(&buf), inverted);
        // Checking the inverted bytes against the pattern finds the first one wrong.
        let (_, out) = s.invoke(
            cmd::CHECK_AND_INVERT,
            [
                Param::MemInout(&buf),
                Param::ValueIn(4, 0),
                Param::ValueOut,
                Param::None,
            ],
        );
        assert_eq!(out.pair(2), (5000, 0));
        let (ended, _) = s.invoke(
            cmd::CHECK_AND_INVERT,
            [
                Param::MemIn(&buf),
                Param::ValueIn(4, 0),
                Param::ValueOut,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
    }

    #[test]
    fn probe_beyond_reads_the_page_after_the_memref() {
        for (offset, len) in [(0usize, 4096usize), (100, 10), (4000, 200)] {
            let m = Machine::new();
            let mut s = m.open(&PROGRAM).unwrap();
            let buf = m.buffer(&vec![1u8; len], offset);
            let (ended, _) = s.invoke(
                cmd::PROBE_BEYOND,
                [Param::MemIn(&buf), Param::None, Param::None, Param::None],
            );
            let pages = (offset + len).div_ceil(4096) as u64;
            assert_eq!(
                ended,
                Ended::Faulted(teeshm_abi::utee::layout::PARAM_BASE + pages * PAGE),
                "offset {offset} len {len}"
            );
        }
    }
}
