//! The user TA `teeshm.ta-memtest`: every kind of memref into a TA, a TA calling a TA with its
//! own memory, and every way a TA dies.
//!
//! UUID `74656573-686d-4d54-8d6d-656d74657374`: the octets spell `teeshmMT` `\x8d` `memtest`
//! in ASCII (version 4, RFC 4122 variant), [`UUID`].
//!
//! Commands ([`cmd`]); params not listed are `TEE_PARAM_TYPE_NONE`; "memref in" accepts
//! `MEMREF_INPUT` or `MEMREF_INOUT`, "memref out" `MEMREF_OUTPUT` or `MEMREF_INOUT`, "value in"
//! `VALUE_INPUT` or `VALUE_INOUT`, "value out" `VALUE_OUTPUT` or `VALUE_INOUT`:
//!
//! | id | name | params | does |
//! |---|---|---|---|
//! | 0 | FILL | p0 memref out, p1 value in `a` = seed | fills p0 with [`pattern_byte`](crate::pattern_byte) of the seed |
//! | 1 | CHECK | p0 memref in, p1 value in `a` = seed, p2 value out | reads every byte of p0: `p2.a` = bytes checked, `p2.b` = index of the first byte that is not the pattern, or `0xffff_ffff` (GP values are 32 bits) |
//! | 2 | COPY | p0 memref in, p1 memref out | copies p0 into p1; p1's size becomes p0's; `TEE_ERROR_SHORT_BUFFER` with the needed size if p1 is smaller |
//! | 3 | TOUCH | p0 memref in, p1 value out | reads only the first and the last byte: `p1.a`, `p1.b` (empty memref: `TEE_ERROR_BAD_PARAMETERS`) |
//! | 4 | KEEP | p0 any memref | reads p0's first byte (so its page is mapped during the call) and keeps p0's address and size in the instance's state |
//! | 5 | USE_KEPT | p0 value out | reads the byte at the kept address into `p0.a` (`TEE_ERROR_BAD_STATE` if nothing is kept). After the call that gave the memref has ended this must fault: the TA dies |
//! | 6 | FAULT | none | reads `PARAM_BASE + PARAM_SIZE - 8`, which nothing maps: the TA dies |
//! | 7 | WRITE_INPUT | p0 `MEMREF_INPUT` | inverts p0's first byte: an input memref is mapped read-only, so the TA dies |
//! | 8 | CALL_PEER | p0 value in (`a` = seed, `b` = len), p1 value out | see below; `p1.a` = bytes the peer checked, `p1.b` = the `TEE_Result` of the probe (`TEE_ERROR_TARGET_DEAD` expected) |
//! | 9 | CHECK_ACCESS | p0 any memref, p1 value out | `p1.a` = `check_access_rights(READ \| WRITE \| ANY_OWNER)` on p0, `p1.b` = `check_access_rights(READ)` (without `ANY_OWNER`: only the TA's own memory passes) |
//! | 10 | PANIC | none | `TEE_Panic(0xdead)`: the TA dies |
//!
//! CALL_PEER takes `len` bytes of its own heap (page aligned, so the peer's page holds nothing
//! else of this TA's state), fills them with the pattern of the seed, opens a session to
//! [`peer`] by its UUID, invokes its CHECK_AND_INVERT with the buffer as
//! `MEMREF_INOUT` and the seed, checks that the peer found the pattern and wrote back every byte
//! inverted, invokes its PROBE_BEYOND with the same buffer (the peer reads the first byte after
//! the buffer's last page and dies), closes the session and frees the buffer. It fails with
//! `TEE_ERROR_OUT_OF_MEMORY` if `len` does not fit in the heap (at most 60 KiB), with the
//! peer's error if opening or CHECK_AND_INVERT fails, and with `TEE_ERROR_GENERIC` if the
//! peer's work is wrong.
//!
//! Opening a session accepts any parameters and logs `ta-memtest: open`. An unknown command,
//! or parameters of the wrong types, get `TEE_ERROR_BAD_PARAMETERS` (as OP-TEE's example TAs
//! answer an unknown command). As OP-TEE's libutee does, the outputs are written back into the
//! caller's `struct utee_params` whatever the result: values into `vals[2i]`, `vals[2i + 1]`,
//! a memref's size into `vals[2i + 1]`.

use crate::Program;
use crate::env::{Stop, UserEnv};
use crate::libutee::{self, read_params, state_get, state_set, types_are, write_params};
use crate::pattern::{self, NONE_WRONG};
use crate::peer;
use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_BAD_STATE, TEE_ERROR_GENERIC, TEE_ERROR_OUT_OF_MEMORY,
    TEE_ERROR_SHORT_BUFFER, TEE_SUCCESS,
};
use teeshm_abi::utee::{
    TEE_MEMORY_ACCESS_ANY_OWNER, TEE_MEMORY_ACCESS_READ, TEE_MEMORY_ACCESS_WRITE,
    TEE_PARAM_TYPE_MEMREF_INOUT, TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_NONE, TEE_PARAM_TYPE_VALUE_INOUT, TEE_PARAM_TYPE_VALUE_INPUT,
    TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_UUID_SIZE, UTEE_PARAMS_SIZE, UteeParams, layout, param_types,
    tee_uuid_from_octets,
};

/// The TA's UUID as 16 octets (`7465 6573 686d 4d54 8d6d 656d 7465 7374`).
pub const UUID: [u8; 16] = [
    0x74, 0x65, 0x65, 0x73, 0x68, 0x6d, 0x4d, 0x54, 0x8d, 0x6d, 0x65, 0x6d, 0x74, 0x65, 0x73, 0x74,
];

/// The program.
pub const PROGRAM: Program = Program {
    uuid: UUID,
    name: "teeshm.ta-memtest",
    entry,
};

/// Command ids (the table in the module doc).
pub mod cmd {
    /// Fill memref 0 with the pattern of seed `p1.a`.
    pub const FILL: u32 = 0;
    /// Check memref 0 against the pattern of seed `p1.a`.
    pub const CHECK: u32 = 1;
    /// Copy memref 0 into memref 1.
    pub const COPY: u32 = 2;
    /// Read the first and the last byte of memref 0.
    pub const TOUCH: u32 = 3;
    /// Keep memref 0's address for a later USE_KEPT.
    pub const KEEP: u32 = 4;
    /// Read through the kept address.
    pub const USE_KEPT: u32 = 5;
    /// Read an address nothing maps.
    pub const FAULT: u32 = 6;
    /// Write into an input memref.
    pub const WRITE_INPUT: u32 = 7;
    /// Share a buffer of the TA's own memory with the peer TA.
    pub const CALL_PEER: u32 = 8;
    /// `TEE_CheckMemoryAccessRights` on memref 0.
    pub const CHECK_ACCESS: u32 = 9;
    /// `TEE_Panic(0xdead)`.
    pub const PANIC: u32 = 10;
}

/// The code PANIC panics with.
pub const PANIC_CODE: u64 = 0xdead;

/// State slots (libutee's heap state): whether a memref is kept, its address and size.
const SLOT_KEPT: u64 = 1;
const SLOT_KEPT_VA: u64 = 2;
const SLOT_KEPT_SIZE: u64 = 3;

const NONE: &[u32] = &[TEE_PARAM_TYPE_NONE];
const MEM_IN: &[u32] = &[TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_INOUT];
const MEM_OUT: &[u32] = &[TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_MEMREF_INOUT];
const MEM_ANY: &[u32] = &[
    TEE_PARAM_TYPE_MEMREF_INPUT,
    TEE_PARAM_TYPE_MEMREF_OUTPUT,
    TEE_PARAM_TYPE_MEMREF_INOUT,
];
const VAL_IN: &[u32] = &[TEE_PARAM_TYPE_VALUE_INPUT, TEE_PARAM_TYPE_VALUE_INOUT];
const VAL_OUT: &[u32] = &[TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_PARAM_TYPE_VALUE_INOUT];

/// `__utee_entry` of the TA.
///
/// # Errors
/// [`Stop`] if the core ended the TA (the commands that die on purpose end here).
pub fn entry(
    env: &mut dyn UserEnv,
    func: u64,
    _session: u64,
    params_va: u64,
    cmd: u64,
) -> Result<u32, Stop> {
    libutee::dispatch(env, "ta-memtest: open", (func, params_va, cmd), invoke)
}

fn invoke(env: &mut dyn UserEnv, cmd: u32, p: &mut UteeParams) -> Result<u32, Stop> {
    let expected: [&[u32]; 4] = match cmd {
        cmd::FILL => [MEM_OUT, VAL_IN, NONE, NONE],
        cmd::CHECK => [MEM_IN, VAL_IN, VAL_OUT, NONE],
        cmd::COPY => [MEM_IN, MEM_OUT, NONE, NONE],
        cmd::TOUCH => [MEM_IN, VAL_OUT, NONE, NONE],
        cmd::KEEP => [MEM_ANY, NONE, NONE, NONE],
        cmd::USE_KEPT => [VAL_OUT, NONE, NONE, NONE],
        cmd::FAULT | cmd::PANIC => [NONE, NONE, NONE, NONE],
        cmd::WRITE_INPUT => [&[TEE_PARAM_TYPE_MEMREF_INPUT], NONE, NONE, NONE],
        cmd::CALL_PEER => [VAL_IN, VAL_OUT, NONE, NONE],
        cmd::CHECK_ACCESS => [MEM_ANY, VAL_OUT, NONE, NONE],
        _ => return Ok(TEE_ERROR_BAD_PARAMETERS),
    };
    if !types_are(p, expected) {
        return Ok(TEE_ERROR_BAD_PARAMETERS);
    }
    match cmd {
        cmd::FILL => {
            let ((va, size), (seed, _)) = (p.pair(0), p.pair(1));
            pattern::fill(env, va, size, seed, 0)?;
            Ok(TEE_SUCCESS)
        }
        cmd::CHECK => {
            let ((va, size), (seed, _)) = (p.pair(0), p.pair(1));
            let wrong = pattern::check(env, va, size, seed, 0)?;
            p.set_pair(2, size, wrong.unwrap_or(NONE_WRONG));
            Ok(TEE_SUCCESS)
        }
        cmd::COPY => {
            let ((from, size), (to, room)) = (p.pair(0), p.pair(1));
            // The needed size goes back either way, as TEE_MemMove's callers report it.
            p.set_pair(1, to, size);
            if room < size {
                return Ok(TEE_ERROR_SHORT_BUFFER);
            }
            pattern::copy(env, from, to, size)?;
            Ok(TEE_SUCCESS)
        }
        cmd::TOUCH => {
            let (va, size) = p.pair(0);
            let Some(last) = size.checked_sub(1) else {
                return Ok(TEE_ERROR_BAD_PARAMETERS);
            };
            let (mut first, mut end) = ([0u8], [0u8]);
            env.read(va, &mut first)?;
            env.read(va.wrapping_add(last), &mut end)?;
            p.set_pair(1, first[0].into(), end[0].into());
            Ok(TEE_SUCCESS)
        }
        cmd::KEEP => {
            let (va, size) = p.pair(0);
            // Touch the page first, so that it is mapped when the call ends: what must go then
            // is a mapping, not merely an address that was never reached.
            if size != 0 {
                env.read(va, &mut [0u8])?;
            }
            state_set(env, SLOT_KEPT_VA, va)?;
            state_set(env, SLOT_KEPT_SIZE, size)?;
            state_set(env, SLOT_KEPT, 1)?;
            Ok(TEE_SUCCESS)
        }
        cmd::USE_KEPT => {
            if state_get(env, SLOT_KEPT)? != 1 {
                return Ok(TEE_ERROR_BAD_STATE);
            }
            let va = state_get(env, SLOT_KEPT_VA)?;
            let mut b = [0u8];
            env.read(va, &mut b)?;
            p.set_pair(0, b[0].into(), 0);
            Ok(TEE_SUCCESS)
        }
        cmd::FAULT => {
            let mut b = [0u8; 8];
            env.read(layout::PARAM_BASE + layout::PARAM_SIZE - 8, &mut b)?;
            // Still alive: the core mapped what it must not have.
            Ok(TEE_ERROR_GENERIC)
        }
        cmd::WRITE_INPUT => {
            let (va, size) = p.pair(0);
            if size == 0 {
                return Ok(TEE_ERROR_BAD_PARAMETERS);
            }
            // Inverted, so a client sees the damage if the write ever went through.
            let mut b = [0u8];
            env.read(va, &mut b)?;
            env.write(va, &[!b[0]])?;
            Ok(TEE_SUCCESS)
        }
        cmd::CALL_PEER => {
            let (seed, len) = p.pair(0);
            call_peer(env, seed, len, p)
        }
        cmd::CHECK_ACCESS => {
            let (va, size) = p.pair(0);
            let any =
                TEE_MEMORY_ACCESS_READ | TEE_MEMORY_ACCESS_WRITE | TEE_MEMORY_ACCESS_ANY_OWNER;
            let shared = libutee::check_access_rights(env, any, va, size)?;
            let own = libutee::check_access_rights(env, TEE_MEMORY_ACCESS_READ, va, size)?;
            p.set_pair(1, shared.into(), own.into());
            Ok(TEE_SUCCESS)
        }
        cmd::PANIC => {
            libutee::panic(env, PANIC_CODE)?;
            Ok(TEE_ERROR_GENERIC)
        }
        _ => Ok(TEE_ERROR_BAD_PARAMETERS),
    }
}

/// Where CALL_PEER keeps what it passes to the system calls, in its heap.
struct Scratch {
    params: u64,
    uuid: u64,
    session: u64,
    origin: u64,
}

/// CALL_PEER: takes the heap back whatever happens (a TA that dies loses its heap anyway).
fn call_peer(env: &mut dyn UserEnv, seed: u64, len: u64, p: &mut UteeParams) -> Result<u32, Stop> {
    if len == 0 {
        return Ok(TEE_ERROR_BAD_PARAMETERS);
    }
    let mark = libutee::heap_mark(env)?;
    let result = call_peer_in_heap(env, seed, len, p);
    libutee::heap_release(env, mark)?;
    result
}

fn call_peer_in_heap(
    env: &mut dyn UserEnv,
    seed: u64,
    len: u64,
    p: &mut UteeParams,
) -> Result<u32, Stop> {
    // The scratch first, then the buffer on pages of its own: the peer gets the buffer's pages
    // mapped, and nothing else of this TA should be on them.
    let scratch_bytes = UTEE_PARAMS_SIZE as u64 + TEE_UUID_SIZE as u64 + 8;
    let (Some(base), Some(buf)) = (
        libutee::heap_alloc(env, scratch_bytes, 8)?,
        libutee::heap_alloc(env, len, 4096)?,
    ) else {
        return Ok(TEE_ERROR_OUT_OF_MEMORY);
    };
    let s = Scratch {
        params: base,
        uuid: base + UTEE_PARAMS_SIZE as u64,
        session: base + UTEE_PARAMS_SIZE as u64 + TEE_UUID_SIZE as u64,
        origin: base + UTEE_PARAMS_SIZE as u64 + TEE_UUID_SIZE as u64 + 4,
    };
    pattern::fill(env, buf, len, seed, 0)?;

    env.write(s.uuid, &tee_uuid_from_octets(peer::UUID))?;
    write_params(env, s.params, &UteeParams::default())?;
    let opened = libutee::open_ta_session(env, s.uuid, s.params, s.session, s.origin)?;
    if opened != TEE_SUCCESS {
        libutee::log(env, "ta-memtest: the peer did not open")?;
        return Ok(opened);
    }
    let session = libutee::read_u32(env, s.session)?;

    // CHECK_AND_INVERT: the peer checks the pattern and inverts every byte in place.
    let mut q = UteeParams::default();
    q.types.set(
        param_types([
            TEE_PARAM_TYPE_MEMREF_INOUT,
            TEE_PARAM_TYPE_VALUE_INPUT,
            TEE_PARAM_TYPE_VALUE_OUTPUT,
            TEE_PARAM_TYPE_NONE,
        ])
        .into(),
    );
    q.set_pair(0, buf, len);
    q.set_pair(1, seed, 0);
    write_params(env, s.params, &q)?;
    let checked = libutee::invoke_ta_command(
        env,
        session,
        peer::cmd::CHECK_AND_INVERT,
        s.params,
        s.origin,
    )?;
    let q = read_params(env, s.params)?;
    let (peer_checked, peer_wrong) = q.pair(2);
    p.set_pair(1, peer_checked, 0);
    if checked != TEE_SUCCESS {
        libutee::close_ta_session(env, session)?;
        return Ok(checked);
    }
    let inverted_ok = pattern::check(env, buf, len, seed, 0xff)?.is_none();

    // PROBE_BEYOND: the peer reads past the buffer's last page, which must kill it.
    let mut r = UteeParams::default();
    r.types
        .set(param_types([TEE_PARAM_TYPE_MEMREF_INOUT, 0, 0, 0]).into());
    r.set_pair(0, buf, len);
    write_params(env, s.params, &r)?;
    let probe =
        libutee::invoke_ta_command(env, session, peer::cmd::PROBE_BEYOND, s.params, s.origin)?;
    // A dead peer's session is still the caller's to close.
    libutee::close_ta_session(env, session)?;
    p.set_pair(1, peer_checked, probe.into());

    if peer_wrong != NONE_WRONG || peer_checked != len {
        libutee::log(env, "ta-memtest: the peer did not find the pattern")?;
        return Ok(TEE_ERROR_GENERIC);
    }
    if !inverted_ok {
        libutee::log(
            env,
            "ta-memtest: the peer's bytes are not the inverted pattern",
        )?;
        return Ok(TEE_ERROR_GENERIC);
    }
    Ok(TEE_SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Ended, Machine, Param};
    use crate::pattern_byte;
    use teeshm_abi::gp::{TEE_ERROR_ACCESS_DENIED, TEE_ERROR_TARGET_DEAD};

    fn patterned(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| pattern_byte(seed, i)).collect()
    }

    #[test]
    fn open_logs_and_close_succeeds() {
        let m = Machine::new();
        let s = m.open(&PROGRAM).unwrap();
        assert_eq!(m.log(), ["ta-memtest: open"]);
        m.close(s);
    }

    #[test]
    fn fill_then_check_find_the_pattern_at_any_offset() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let buf = m.buffer(&vec![0u8; 9000], 100);
        let (ended, out) = s.invoke(
            cmd::FILL,
            [
                Param::MemOut(&buf),
                Param::ValueIn(7, 0),
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(out.pair(0).1, 9000, "the size stays");
        assert_eq!(m.read_buffer(&buf), patterned(7, 9000));

        let (ended, out) = s.invoke(
            cmd::CHECK,
            [
                Param::MemIn(&buf),
                Param::ValueIn(7, 0),
                Param::ValueOut,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(out.pair(2), (9000, NONE_WRONG));

        let mut bad = patterned(7, 9000);
        bad[5000] ^= 1;
        m.write_buffer(&buf, &bad);
        let (_, out) = s.invoke(
            cmd::CHECK,
            [
                Param::MemInout(&buf),
                Param::ValueIn(7, 0),
                Param::ValueOut,
                Param::None,
            ],
        );
        assert_eq!(out.pair(2), (9000, 5000));
    }

    #[test]
    fn fill_refuses_an_input_memref_and_unknown_commands_are_bad_parameters() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let buf = m.buffer(&[0u8; 16], 0);
        let (ended, _) = s.invoke(
            cmd::FILL,
            [
                Param::MemIn(&buf),
                Param::ValueIn(7, 0),
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
        assert_eq!(m.read_buffer(&buf), [0u8; 16], "untouched");
        let (ended, _) = s.invoke(99, [Param::None; 4]);
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
        let (ended, _) = s.invoke(
            cmd::FAULT,
            [Param::ValueIn(1, 2), Param::None, Param::None, Param::None],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
    }

    #[test]
    fn copy_copies_or_asks_for_room() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let src = m.buffer(&patterned(3, 5000), 4000);
        let small = m.buffer(&[0u8; 100], 0);
        let (ended, out) = s.invoke(
            cmd::COPY,
            [
                Param::MemIn(&src),
                Param::MemOut(&small),
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_SHORT_BUFFER));
        assert_eq!(out.pair(1).1, 5000, "the needed size");
        let dst = m.buffer(&[0u8; 6000], 10);
        let (ended, out) = s.invoke(
            cmd::COPY,
            [
                Param::MemIn(&src),
                Param::MemOut(&dst),
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(out.pair(1).1, 5000);
        assert_eq!(&m.read_buffer(&dst)[..5000], &patterned(3, 5000)[..]);
    }

    #[test]
    fn touch_reads_the_first_and_last_byte() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let mut bytes = vec![0u8; 3 * 4096];
        bytes[0] = 0x11;
        bytes[3 * 4096 - 1] = 0x22;
        let buf = m.buffer(&bytes, 0);
        let (ended, out) = s.invoke(
            cmd::TOUCH,
            [
                Param::MemIn(&buf),
                Param::ValueOut,
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(out.pair(1), (0x11, 0x22));
        assert_eq!(
            m.reads_of(&buf),
            vec![0, 2],
            "only the first and last page were read"
        );
        let (ended, _) = s.invoke(
            cmd::TOUCH,
            [Param::Null, Param::ValueOut, Param::None, Param::None],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
    }

    #[test]
    fn a_kept_pointer_faults_after_its_call() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let (ended, _) = s.invoke(
            cmd::USE_KEPT,
            [Param::ValueOut, Param::None, Param::None, Param::None],
        );
        assert_eq!(
            ended,
            Ended::Returned(TEE_ERROR_BAD_STATE),
            "nothing kept yet"
        );
        let buf = m.buffer(&[5u8; 64], 0);
        let (ended, _) = s.invoke(
            cmd::KEEP,
            [Param::MemIn(&buf), Param::None, Param::None, Param::None],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        let (ended, _) = s.invoke(
            cmd::USE_KEPT,
            [Param::ValueOut, Param::None, Param::None, Param::None],
        );
        assert!(
            matches!(ended, Ended::Faulted(far) if far >= layout::PARAM_BASE),
            "{ended:?}"
        );
    }

    #[test]
    fn fault_write_input_and_panic_kill_the_ta() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let (ended, _) = s.invoke(cmd::FAULT, [Param::None; 4]);
        assert_eq!(
            ended,
            Ended::Faulted(layout::PARAM_BASE + layout::PARAM_SIZE - 8)
        );

        let mut s = m.open(&PROGRAM).unwrap();
        let buf = m.buffer(&[9u8; 8], 0);
        let (ended, _) = s.invoke(
            cmd::WRITE_INPUT,
            [Param::MemIn(&buf), Param::None, Param::None, Param::None],
        );
        assert!(matches!(ended, Ended::Faulted(_)), "{ended:?}");
        assert_eq!(m.read_buffer(&buf), [9u8; 8]);

        let mut s = m.open(&PROGRAM).unwrap();
        let (ended, _) = s.invoke(cmd::PANIC, [Param::None; 4]);
        assert_eq!(ended, Ended::Panicked(PANIC_CODE));
    }

    #[test]
    fn check_access_tells_shared_from_own_memory() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        let buf = m.buffer(&[0u8; 100], 0);
        let (ended, out) = s.invoke(
            cmd::CHECK_ACCESS,
            [
                Param::MemInout(&buf),
                Param::ValueOut,
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_SUCCESS));
        assert_eq!(
            out.pair(1),
            (TEE_SUCCESS.into(), TEE_ERROR_ACCESS_DENIED.into())
        );
        let (_, out) = s.invoke(
            cmd::CHECK_ACCESS,
            [
                Param::MemIn(&buf),
                Param::ValueOut,
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(
            out.pair(1).0,
            u64::from(TEE_ERROR_ACCESS_DENIED),
            "read-only: no WRITE"
        );
    }

    #[test]
    fn call_peer_shares_its_own_memory_and_the_probe_kills_the_peer_only() {
        let m = Machine::new();
        let mut s = m.open(&PROGRAM).unwrap();
        for len in [1u64, 4095, 4096, 10_000, 60 << 10] {
            let (ended, out) = s.invoke(
                cmd::CALL_PEER,
                [
                    Param::ValueIn(11, len),
                    Param::ValueOut,
                    Param::None,
                    Param::None,
                ],
            );
            assert_eq!(
                ended,
                Ended::Returned(TEE_SUCCESS),
                "len {len}: {:?}",
                m.log()
            );
            assert_eq!(
                out.pair(1),
                (len, TEE_ERROR_TARGET_DEAD.into()),
                "len {len}"
            );
        }
        assert_eq!(m.instances(), 1, "every peer session closed");
        let (ended, _) = s.invoke(
            cmd::CALL_PEER,
            [
                Param::ValueIn(11, (60 << 10) + 1),
                Param::ValueOut,
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_OUT_OF_MEMORY));
        let (ended, _) = s.invoke(
            cmd::CALL_PEER,
            [
                Param::ValueIn(11, 0),
                Param::ValueOut,
                Param::None,
                Param::None,
            ],
        );
        assert_eq!(ended, Ended::Returned(TEE_ERROR_BAD_PARAMETERS));
    }
}
