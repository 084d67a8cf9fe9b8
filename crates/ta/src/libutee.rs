//! The TA's side of OP-TEE's system calls (`lib/libutee`'s `_utee_*`), with OP-TEE's argument
//! layout (`teeshm_abi::utee`), and the little a TA needs around them: its parameters, its
//! heap and its persistent state.
//!
//! Every pointer argument is an address in the TA's own memory, as on OP-TEE: a wrapper's
//! caller first writes the `struct utee_params` or `TEE_UUID` there ([`write_params`]), usually
//! in memory taken from the heap ([`heap_alloc`]).
//!
//! # The heap and the TA's state
//!
//! The heap is [`layout::HEAP_BASE`]`..+`[`layout::HEAP_SIZE`], zeroed when the instance is
//! made. Its first [`STATE_SIZE`] bytes are the instance's state, eight little-endian `u64`
//! slots: slot 0 is the bump allocator's next free offset (0 before the first allocation),
//! slots 1..8 belong to the program ([`state_get`], [`state_set`]). The state is in TA memory,
//! never in Rust statics: in the simulator every instance runs in the same host process.

use crate::env::{Stop, UserEnv};
use teeshm_abi::gp::{TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS};
use teeshm_abi::utee::{
    TEE_SCN_CHECK_ACCESS_RIGHTS, TEE_SCN_CLOSE_TA_SESSION, TEE_SCN_INVOKE_TA_COMMAND, TEE_SCN_LOG,
    TEE_SCN_OPEN_TA_SESSION, TEE_SCN_PANIC, TEE_SCN_RETURN, UTEE_ENTRY_FUNC_CLOSE_SESSION,
    UTEE_ENTRY_FUNC_INVOKE_COMMAND, UTEE_ENTRY_FUNC_OPEN_SESSION, UTEE_PARAMS_SIZE, UteeParams,
    layout,
};

/// `TEE_TIMEOUT_INFINITE`: the cancellation timeout of every call a TA makes here.
pub const TEE_TIMEOUT_INFINITE: u64 = 0xFFFF_FFFF;

/// A TA's invoke handler: command, its `utee_params` (outputs written in place) → result.
pub type InvokeFn = fn(&mut dyn UserEnv, u32, &mut UteeParams) -> Result<u32, Stop>;

/// What `__utee_entry` does for every TA here: an open session logs `opened` and succeeds, a
/// close succeeds, an invoke reads the `utee_params` at `params_va`, runs `invoke` and writes
/// the outputs back whatever the result (as libutee does: `SHORT_BUFFER` carries its size);
/// any other entry function, or a command that does not fit 32 bits, is
/// `TEE_ERROR_BAD_PARAMETERS`.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn dispatch(
    env: &mut dyn UserEnv,
    opened: &str,
    (func, params_va, cmd): (u64, u64, u64),
    invoke: InvokeFn,
) -> Result<u32, Stop> {
    match func {
        UTEE_ENTRY_FUNC_OPEN_SESSION => {
            log(env, opened)?;
            Ok(TEE_SUCCESS)
        }
        UTEE_ENTRY_FUNC_CLOSE_SESSION => Ok(TEE_SUCCESS),
        UTEE_ENTRY_FUNC_INVOKE_COMMAND => {
            let mut p = read_params(env, params_va)?;
            let result = match u32::try_from(cmd) {
                Ok(cmd) => invoke(env, cmd, &mut p)?,
                Err(_) => TEE_ERROR_BAD_PARAMETERS,
            };
            write_params(env, params_va, &p)?;
            Ok(result)
        }
        _ => Ok(TEE_ERROR_BAD_PARAMETERS),
    }
}

/// Most bytes of one log message (longer ones are cut).
pub const LOG_MAX: usize = 256;

/// `_utee_log`: `msg` on the secure console. The message is copied into the TA's heap first,
/// so the core reads it from TA memory on either machine.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn log(env: &mut dyn UserEnv, msg: &str) -> Result<(), Stop> {
    let bytes = msg.as_bytes();
    let bytes = bytes.get(..bytes.len().min(LOG_MAX)).unwrap_or_default();
    let mark = heap_mark(env)?;
    // A full heap only loses the message.
    if let Some(va) = heap_alloc(env, bytes.len() as u64, 1)? {
        env.write(va, bytes)?;
        env.syscall(TEE_SCN_LOG, [va, bytes.len() as u64, 0, 0, 0, 0, 0, 0])?;
    }
    heap_release(env, mark)
}

/// `_utee_panic`: the TA is dead, `code` tells why. Returns only if the core resumed the TA,
/// which it must not do.
///
/// # Errors
/// [`Stop`]: the core ended the TA.
pub fn panic(env: &mut dyn UserEnv, code: u64) -> Result<(), Stop> {
    env.syscall(TEE_SCN_PANIC, [code, 0, 0, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// `_utee_return`: the entry function is done with `code`. Returns only if the core resumed the
/// TA, which it must not do.
///
/// # Errors
/// [`Stop`]: the core ended the TA (the normal way).
pub fn return_(env: &mut dyn UserEnv, code: u32) -> Result<(), Stop> {
    env.syscall(TEE_SCN_RETURN, [code.into(), 0, 0, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// `_utee_open_ta_session(dest, TEE_TIMEOUT_INFINITE, params, sess, ret_orig)`: `uuid_va` holds
/// a `TEE_UUID`, `params_va` a `struct utee_params` (updated with the outputs), the session id
/// (`u32`) and the origin (`u32`) are written at `session_out_va` and `origin_out_va`. Returns
/// the `TEE_Result`.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn open_ta_session(
    env: &mut dyn UserEnv,
    uuid_va: u64,
    params_va: u64,
    session_out_va: u64,
    origin_out_va: u64,
) -> Result<u32, Stop> {
    let args = [
        uuid_va,
        TEE_TIMEOUT_INFINITE,
        params_va,
        session_out_va,
        origin_out_va,
        0,
        0,
        0,
    ];
    Ok(env.syscall(TEE_SCN_OPEN_TA_SESSION, args)? as u32)
}

/// `_utee_invoke_ta_command(session, TEE_TIMEOUT_INFINITE, cmd, params, ret_orig)`: the
/// parameters at `params_va` are updated with the outputs, the origin (`u32`) is written at
/// `origin_out_va`. Returns the `TEE_Result`.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn invoke_ta_command(
    env: &mut dyn UserEnv,
    session: u32,
    cmd: u32,
    params_va: u64,
    origin_out_va: u64,
) -> Result<u32, Stop> {
    let args = [
        session.into(),
        TEE_TIMEOUT_INFINITE,
        cmd.into(),
        params_va,
        origin_out_va,
        0,
        0,
        0,
    ];
    Ok(env.syscall(TEE_SCN_INVOKE_TA_COMMAND, args)? as u32)
}

/// `_utee_close_ta_session(session)`. Returns the `TEE_Result`.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn close_ta_session(env: &mut dyn UserEnv, session: u32) -> Result<u32, Stop> {
    Ok(env.syscall(
        TEE_SCN_CLOSE_TA_SESSION,
        [session.into(), 0, 0, 0, 0, 0, 0, 0],
    )? as u32)
}

/// `_utee_check_access_rights(flags, buf, len)` (`TEE_MEMORY_ACCESS_*` flags). Returns the
/// `TEE_Result`: `TEE_SUCCESS` if the TA may access all of `va..va + len` so.
///
/// # Errors
/// [`Stop`] if the core ended the TA.
pub fn check_access_rights(
    env: &mut dyn UserEnv,
    flags: u32,
    va: u64,
    len: u64,
) -> Result<u32, Stop> {
    let args = [flags.into(), va, len, 0, 0, 0, 0, 0];
    Ok(env.syscall(TEE_SCN_CHECK_ACCESS_RIGHTS, args)? as u32)
}

// ---- Memory helpers ----------------------------------------------------------------------

/// The `u32` at `va` (little-endian).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn read_u32(env: &mut dyn UserEnv, va: u64) -> Result<u32, Stop> {
    let mut b = [0u8; 4];
    env.read(va, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Stores `v` at `va` (little-endian).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn write_u32(env: &mut dyn UserEnv, va: u64, v: u32) -> Result<(), Stop> {
    env.write(va, &v.to_le_bytes())
}

/// The `u64` at `va` (little-endian).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn read_u64(env: &mut dyn UserEnv, va: u64) -> Result<u64, Stop> {
    let mut b = [0u8; 8];
    env.read(va, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Stores `v` at `va` (little-endian).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn write_u64(env: &mut dyn UserEnv, va: u64, v: u64) -> Result<(), Stop> {
    env.write(va, &v.to_le_bytes())
}

/// The `struct utee_params` at `va`.
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn read_params(env: &mut dyn UserEnv, va: u64) -> Result<UteeParams, Stop> {
    let mut raw = [0u8; UTEE_PARAMS_SIZE];
    env.read(va, &mut raw)?;
    Ok(params_from_bytes(&raw))
}

/// Stores `p` as a `struct utee_params` at `va`.
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn write_params(env: &mut dyn UserEnv, va: u64, p: &UteeParams) -> Result<(), Stop> {
    env.write(va, &params_to_bytes(p))
}

/// A `struct utee_params` from its bytes: nine little-endian `u64`s.
pub fn params_from_bytes(raw: &[u8; UTEE_PARAMS_SIZE]) -> UteeParams {
    let mut words = [0u64; 9];
    for (w, b) in words.iter_mut().zip(raw.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        *w = u64::from_le_bytes(le);
    }
    let [types, rest @ ..] = words;
    let mut p = UteeParams::default();
    p.types.set(types);
    for (i, pair) in rest.chunks_exact(2).enumerate() {
        if let [a, b] = pair {
            p.set_pair(i, *a, *b);
        }
    }
    p
}

/// The bytes of `p` as a `struct utee_params`.
pub fn params_to_bytes(p: &UteeParams) -> [u8; UTEE_PARAMS_SIZE] {
    let mut raw = [0u8; UTEE_PARAMS_SIZE];
    let words = [p.types.get()].into_iter().chain((0..4).flat_map(|i| {
        let (a, b) = p.pair(i);
        [a, b]
    }));
    for (dst, w) in raw.chunks_exact_mut(8).zip(words) {
        dst.copy_from_slice(&w.to_le_bytes());
    }
    raw
}

/// Whether parameter `i`'s type is one of `allowed[i]`, for all four: the check every entry
/// makes before it touches a parameter (a TA trusts nothing of its caller).
pub fn types_are(p: &UteeParams, allowed: [&[u32]; 4]) -> bool {
    allowed
        .iter()
        .enumerate()
        .all(|(i, set)| set.contains(&p.param_type(i)))
}

// ---- Heap and state ----------------------------------------------------------------------

/// Bytes of the instance's state at the start of the heap.
pub const STATE_SIZE: u64 = 64;

/// Slots of the state (`u64` each); slot 0 is the allocator's.
pub const STATE_SLOTS: u64 = STATE_SIZE / 8;

/// The state slot `slot` (1..8; 0 is the allocator's and reads as its next free offset).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn state_get(env: &mut dyn UserEnv, slot: u64) -> Result<u64, Stop> {
    read_u64(env, layout::HEAP_BASE + 8 * (slot % STATE_SLOTS))
}

/// Sets the state slot `slot` (1..8) to `v`.
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn state_set(env: &mut dyn UserEnv, slot: u64, v: u64) -> Result<(), Stop> {
    write_u64(env, layout::HEAP_BASE + 8 * (slot % STATE_SLOTS), v)
}

/// The allocator's next free offset from the heap's base: what [`heap_release`] goes back to.
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn heap_mark(env: &mut dyn UserEnv) -> Result<u64, Stop> {
    let next = read_u64(env, layout::HEAP_BASE)?;
    // A fresh heap is all zeroes: nothing allocated after the state yet.
    Ok(next.max(STATE_SIZE))
}

/// Frees everything allocated since `mark` (from [`heap_mark`]).
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn heap_release(env: &mut dyn UserEnv, mark: u64) -> Result<(), Stop> {
    write_u64(
        env,
        layout::HEAP_BASE,
        mark.clamp(STATE_SIZE, layout::HEAP_SIZE),
    )
}

/// `size` bytes of the heap aligned to `align` (a power of two): their address, or `None` if
/// the heap has no room.
///
/// # Errors
/// [`Stop`] if the access faulted and the core ended the TA.
pub fn heap_alloc(env: &mut dyn UserEnv, size: u64, align: u64) -> Result<Option<u64>, Stop> {
    let next = heap_mark(env)?;
    let align = align.max(1);
    let Some(start) = next.checked_next_multiple_of(align) else {
        return Ok(None);
    };
    let Some(end) = start
        .checked_add(size)
        .filter(|&end| end <= layout::HEAP_SIZE)
    else {
        return Ok(None);
    };
    write_u64(env, layout::HEAP_BASE, end)?;
    Ok(Some(layout::HEAP_BASE + start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Machine;
    use teeshm_abi::utee::{TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_NONE, param_types};

    #[test]
    fn params_round_trip_through_bytes() {
        let mut p = UteeParams::default();
        p.types.set(0x7025);
        p.set_pair(0, 1, 2);
        p.set_pair(3, u64::MAX, 7);
        let raw = params_to_bytes(&p);
        assert_eq!(&raw[..8], &0x7025u64.to_le_bytes());
        assert_eq!(&raw[56..64], &u64::MAX.to_le_bytes());
        assert_eq!(params_from_bytes(&raw), p);
    }

    #[test]
    fn types_are_checked_per_param() {
        let mut p = UteeParams::default();
        p.types
            .set(param_types([TEE_PARAM_TYPE_MEMREF_INPUT, 0, 0, 0]).into());
        let none: &[u32] = &[TEE_PARAM_TYPE_NONE];
        assert!(types_are(
            &p,
            [&[TEE_PARAM_TYPE_MEMREF_INPUT], none, none, none]
        ));
        assert!(!types_are(&p, [none, none, none, none]));
    }

    #[test]
    fn the_heap_bumps_aligns_releases_and_runs_out() {
        let m = Machine::new();
        let mut env = m.instance();
        let first = heap_alloc(&mut env, 3, 1).unwrap().unwrap();
        assert_eq!(first, layout::HEAP_BASE + STATE_SIZE, "after the state");
        let mark = heap_mark(&mut env).unwrap();
        let page = heap_alloc(&mut env, 10, 4096).unwrap().unwrap();
        assert_eq!(page, layout::HEAP_BASE + 4096);
        heap_release(&mut env, mark).unwrap();
        assert_eq!(heap_alloc(&mut env, 1, 1).unwrap(), Some(first + 3));
        assert_eq!(heap_alloc(&mut env, layout::HEAP_SIZE, 1).unwrap(), None);
        assert_eq!(heap_alloc(&mut env, u64::MAX, 1).unwrap(), None);
        state_set(&mut env, 1, 42).unwrap();
        assert_eq!(state_get(&mut env, 1).unwrap(), 42);
        assert_eq!(
            heap_mark(&mut env).unwrap(),
            first + 4 - layout::HEAP_BASE,
            "state slots are not the allocator's"
        );
    }
}
