//! The built-in pseudo-TA `teeshm.memtest`, which exercises every memory path end to end.
//!
//! UUID `7465_6573-686d-4d45-8d54-657374505441` (the octets spell "teeshmME" "TestPTA" in
//! ASCII, with version and variant bits set). Commands ([`cmd`]):
//!
//! | id | name | params | does |
//! |---|---|---|---|
//! | 0 | SHA256 | memref in, memref out (≥ 32 B) | SHA-256 of the input into the output |
//! | 1 | FILL | memref out, value in `a` = seed | fills with [`pattern_byte`] |
//! | 2 | COPY | memref in, memref out | copies input to output (output size = input size) |
//! | 3 | WHERE | memref, value out, value out | `p1.a` = VA of the first byte, `p1.b` = its PA (both 0 unless the core is built with the feature `test-commands`: addresses are secrets of the secure world); `p2.a` = 1 if the mapping was cached, `p2.b` = pages mapped |
//! | 4 | TOUCH | memref in, value out | reads only the first and last byte: `p1.a`, `p1.b` |
//! | 5 | RPC_BUFFER | value in (`a` = bytes, `b` = SHM type, `c` = seed), value out | asks the normal world for a buffer by `OPTEE_RPC_CMD_SHM_ALLOC`, fills it with the pattern, reads it back, frees it by `SHM_FREE`; `p1.a` = bytes checked, `p1.b` = the buffer's cookie |
//! | 6 | SCRUB | memref out, value in (`a` = seed, `b` = rounds), value out | a long call: `rounds` times over the whole buffer, round `r` writes the pattern of seed `a + r` and reads each chunk back; the buffer ends with the last round's pattern; `p2.a` = bytes checked, `p2.b` = times the call let the normal world serve an interrupt; size × rounds at most [`SCRUB_MAX_BYTES`] |
//! | 7 | IO_PROBE | value out, value out | `ioremap`s the probe device (the memory map's highest device region: on QEMU `virt` the secure PL011), reads its identification registers through the window, unmaps it: `p0.a` = PeriphID0..3, `p0.b` = CellID0..3 (one byte each, low byte first; a PL011 answers `0x0014_1011`, `0xb105_f00d`); `p1.a`, `p1.b` = the GP codes of `ioremap` of a page of secure RAM and of normal-world RAM (both refused: `TEE_ERROR_BAD_PARAMETERS`) |
//!
//! SCRUB is preemptible: between chunks it asks the platform whether an interrupt of the
//! normal world is pending and, if one is (after at least one chunk of progress), suspends with
//! `OPTEE_SMC_RETURN_RPC_FOREIGN_INTR` so the normal world serves it, and goes on from where it
//! stopped when the normal world returns (`RETURN_FROM_RPC`), on whichever CPU.
//!
//! Errors come back with origin `TEE_ORIGIN_TRUSTED_APP`; a short output memref gets
//! `TEE_ERROR_SHORT_BUFFER` with the needed size written back.

use crate::arg::ArgCopy;
use crate::entry::Tee;
use crate::error::TeeError;
use crate::mobj::MobjKind;
use crate::msg::{
    Call, CallParam, MemrefBuf, RPC_VALUE_INPUT, RpcRequest, Step, Waiting, attr_type,
};
use crate::platform::Platform;
use sha2::{Digest, Sha256};
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::{
    MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, ParamType, Value,
};
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE, RpcShmType};

/// The pseudo-TA's UUID as 16 octets (`7465 6573 686d 4d45 8d54 6573 7450 5441`).
pub const MEMTEST_UUID: [u8; 16] = [
    0x74, 0x65, 0x65, 0x73, 0x68, 0x6d, 0x4d, 0x45, 0x8d, 0x54, 0x65, 0x73, 0x74, 0x50, 0x54, 0x41,
];

/// Command ids.
pub mod cmd {
    /// SHA-256 of memref 0 into memref 1.
    pub const SHA256: u32 = 0;
    /// Fill memref 0 with the pattern of seed `p1.a`.
    pub const FILL: u32 = 1;
    /// Copy memref 0 to memref 1.
    pub const COPY: u32 = 2;
    /// Report how memref 0 was reached.
    pub const WHERE: u32 = 3;
    /// Read the first and last byte of memref 0.
    pub const TOUCH: u32 = 4;
    /// Take a buffer from the normal world by RPC, fill, check, free it.
    pub const RPC_BUFFER: u32 = 5;
    /// Write and check patterns over memref 0, `p1.b` rounds; preemptible.
    pub const SCRUB: u32 = 6;
    /// `ioremap` the probe device, read its identification, unmap it; try secure and normal
    /// RAM (refused).
    pub const IO_PROBE: u32 = 7;
}

/// Byte `index` of the pattern of `seed`: the top byte of
/// `(seed ^ index) * 0x9E37_79B9_7F4A_7C15` (wrapping). Cheap to compute on either side.
pub fn pattern_byte(seed: u64, index: u64) -> u8 {
    ((seed ^ index).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Where an RPC-using command is when it waits.
#[derive(Debug)]
pub(crate) enum PtaWait {
    /// RPC_BUFFER before its SHM_ALLOC was sent (waiting for an RPC arg buffer).
    BeforeAlloc,
    /// RPC_BUFFER waiting for the SHM_ALLOC answer.
    AfterAlloc { size: u64, shm_type: RpcShmType },
    /// RPC_BUFFER waiting for the SHM_FREE answer; then it reports `result`.
    AfterFree {
        result: Result<(u64, u64), TeeError>,
    },
    /// SCRUB suspended for a foreign interrupt, to go on from here.
    Scrub(ScrubProgress),
}

/// How far a SCRUB got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ScrubProgress {
    /// The round it is in.
    round: u64,
    /// The next byte of the buffer to write and check in that round.
    offset: u64,
    /// Times it suspended for a foreign interrupt.
    yields: u64,
}

const CHUNK: usize = 4096;

/// Runs command `func`.
pub(crate) fn invoke<P: Platform>(
    tee: &Tee<P>,
    call: &mut Call,
    func: u32,
) -> Result<Step, TeeError> {
    match func {
        cmd::SHA256 => sha256(tee, call),
        cmd::FILL => fill(tee, call),
        cmd::COPY => copy(tee, call),
        cmd::WHERE => where_is(tee, call),
        cmd::TOUCH => touch(tee, call),
        cmd::RPC_BUFFER => rpc_buffer_start(tee, call),
        cmd::SCRUB => scrub(tee, call, ScrubProgress::default()),
        cmd::IO_PROBE => io_probe(tee, call),
        other => Err(TeeError::UnknownFunction(other)),
    }
}

/// Goes on after the normal world answered an RPC.
pub(crate) fn resume<P: Platform>(
    tee: &Tee<P>,
    call: &mut Call,
    wait: PtaWait,
) -> Result<Step, TeeError> {
    match wait {
        PtaWait::BeforeAlloc => rpc_buffer_start(tee, call),
        PtaWait::AfterAlloc { size, shm_type } => rpc_buffer_allocated(tee, call, size, shm_type),
        PtaWait::AfterFree { result } => {
            let reply = read_rpc_reply(tee, call, 1)?;
            let (a, b) = result?;
            if reply.header().ret.get() != TEE_SUCCESS {
                return Err(TeeError::Rpc("SHM_FREE refused"));
            }
            set_value(call, 1, [a, b, 0])?;
            Ok(Step::Done)
        }
        PtaWait::Scrub(progress) => scrub(tee, call, progress),
    }
}

// ---- params ------------------------------------------------------------------------------

fn memref(call: &Call, i: usize) -> Result<(Option<&MemrefBuf>, u64, ParamType), TeeError> {
    match call.param(i) {
        Some(CallParam::Memref { ty, buf, size }) => Ok((buf.as_ref(), *size, *ty)),
        _ => Err(TeeError::BadParameters("memref parameter expected")),
    }
}

fn buffer(call: &Call, i: usize) -> Result<(&MemrefBuf, u64), TeeError> {
    match memref(call, i)? {
        (Some(buf), size, _) => Ok((buf, size)),
        (None, ..) => Err(TeeError::BadParameters(
            "NULL memref where a buffer is needed",
        )),
    }
}

fn output(call: &Call, i: usize) -> Result<(&MemrefBuf, u64), TeeError> {
    let (_, _, ty) = memref(call, i)?;
    if !ty.is_output() {
        return Err(TeeError::BadParameters("output memref expected"));
    }
    buffer(call, i)
}

fn value_in(call: &Call, i: usize) -> Result<[u64; 3], TeeError> {
    match call.param(i) {
        Some(CallParam::Value { ty, value }) if ty.is_input() => Ok(*value),
        _ => Err(TeeError::BadParameters("value input expected")),
    }
}

fn set_value(call: &mut Call, i: usize, v: [u64; 3]) -> Result<(), TeeError> {
    match call.param_mut(i) {
        Some(CallParam::Value { ty, value }) if ty.is_output() => {
            *value = v;
            Ok(())
        }
        _ => Err(TeeError::BadParameters("value output expected")),
    }
}

fn set_size(call: &mut Call, i: usize, new: u64) {
    if let Some(CallParam::Memref { size, .. }) = call.param_mut(i) {
        *size = new;
    }
}

/// Calls `f(offset, chunk)` over `size` bytes of `buf`, read through one mapping.
fn read_chunks<P: Platform>(
    tee: &Tee<P>,
    buf: &MemrefBuf,
    size: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), TeeError>,
) -> Result<(), TeeError> {
    let guard = tee.map(&buf.used)?;
    let mut chunk = [0u8; CHUNK];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(TeeError::OutOfMemory)?;
        guard.read(buf.offs + done, part)?;
        f(done, part)?;
        done += n as u64;
    }
    Ok(())
}

fn write_pattern<P: Platform>(
    tee: &Tee<P>,
    buf: &MemrefBuf,
    size: u64,
    seed: u64,
) -> Result<(), TeeError> {
    let guard = tee.map(&buf.used)?;
    let mut chunk = [0u8; CHUNK];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(TeeError::OutOfMemory)?;
        for (i, b) in part.iter_mut().enumerate() {
            *b = pattern_byte(seed, done + i as u64);
        }
        guard.write(buf.offs + done, part)?;
        done += n as u64;
    }
    Ok(())
}

// ---- commands ----------------------------------------------------------------------------

fn sha256<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let mut hasher = Sha256::new();
    match memref(call, 0)? {
        (Some(input), size, _) => read_chunks(tee, input, size, |_, c| {
            hasher.update(c);
            Ok(())
        })?,
        (None, 0, _) => {}
        (None, ..) => return Err(TeeError::BadParameters("NULL input with a size")),
    }
    let digest = hasher.finalize();
    let (out, out_size) = match memref(call, 1)? {
        // A NULL output asks how big the output must be.
        (None, _, ty) if ty.is_output() => {
            set_size(call, 1, digest.len() as u64);
            return Err(TeeError::ShortBuffer {
                needed: digest.len() as u64,
            });
        }
        _ => output(call, 1)?,
    };
    if out_size < digest.len() as u64 {
        set_size(call, 1, digest.len() as u64);
        return Err(TeeError::ShortBuffer {
            needed: digest.len() as u64,
        });
    }
    tee.map(&out.used)?.write(out.offs, &digest)?;
    set_size(call, 1, digest.len() as u64);
    Ok(Step::Done)
}

fn fill<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let [seed, ..] = value_in(call, 1)?;
    let (out, size) = output(call, 0)?;
    write_pattern(tee, out, size, seed)?;
    Ok(Step::Done)
}

fn copy<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let (input, size) = buffer(call, 0)?;
    let (out, out_size) = output(call, 1)?;
    if out_size < size {
        set_size(call, 1, size);
        return Err(TeeError::ShortBuffer { needed: size });
    }
    let guard = tee.map(&out.used)?;
    read_chunks(tee, input, size, |at, c| guard.write(out.offs + at, c))?;
    drop(guard);
    set_size(call, 1, size);
    Ok(Step::Done)
}

/// The most bytes one SCRUB writes and checks (size × rounds): 64 MiB, under a second of
/// work at most, so that a call's length stays bounded where no interrupt preempts it (the
/// simulator, the fuzz targets); more is refused with `TEE_ERROR_BAD_PARAMETERS`.
pub const SCRUB_MAX_BYTES: u64 = 64 << 20;

/// SCRUB from `at`: chunk by chunk, each written with its round's pattern and read back;
/// suspends for a pending foreign interrupt once a chunk has been done since it started or
/// resumed.
fn scrub<P: Platform>(tee: &Tee<P>, call: &mut Call, at: ScrubProgress) -> Result<Step, TeeError> {
    let [seed, rounds, _] = value_in(call, 1)?;
    let (out, size) = output(call, 0)?;
    let checked = size
        .checked_mul(rounds)
        .filter(|&n| n <= SCRUB_MAX_BYTES)
        .ok_or(TeeError::BadParameters(
            "SCRUB: size × rounds over SCRUB_MAX_BYTES",
        ))?;
    let mut progress = at;
    let guard = tee.map(&out.used)?;
    let mut chunk = [0u8; CHUNK];
    let mut back = [0u8; CHUNK];
    let mut progressed = false;
    while progress.round < rounds {
        if progressed && tee.platform.foreign_interrupt_pending() {
            progress.yields += 1;
            drop(guard);
            return Ok(Step::Rpc(
                RpcRequest::ForeignInterrupt,
                Waiting::Pta(PtaWait::Scrub(progress)),
            ));
        }
        let pattern = seed.wrapping_add(progress.round);
        let n = (size - progress.offset).min(CHUNK as u64) as usize;
        let part = chunk.get_mut(..n).ok_or(TeeError::OutOfMemory)?;
        for (i, b) in part.iter_mut().enumerate() {
            *b = pattern_byte(pattern, progress.offset + i as u64);
        }
        guard.write(out.offs + progress.offset, part)?;
        let read = back.get_mut(..n).ok_or(TeeError::OutOfMemory)?;
        guard.read(out.offs + progress.offset, read)?;
        if let Some(i) = part.iter().zip(read.iter()).position(|(a, b)| a != b) {
            return Err(TeeError::Corrupt(progress.offset + i as u64));
        }
        progress.offset += n as u64;
        if progress.offset >= size {
            progress.offset = 0;
            progress.round += 1;
        }
        progressed = true;
    }
    drop(guard);
    set_value(call, 2, [checked, progress.yields, 0])?;
    Ok(Step::Done)
}

fn where_is<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let (buf, _) = buffer(call, 0)?;
    let guard = tee.map(&buf.used)?;
    // Secure virtual and machine physical addresses are secrets of the secure world: only a
    // test build (feature `test-commands`) tells them; a product answers 0 for both.
    let (va, pa) = if cfg!(any(test, feature = "test-commands")) {
        (
            guard.va().get() + buf.offs,
            buf.used.mobj().pa_at(buf.offs).map_or(0, |pa| pa.get()),
        )
    } else {
        (0, 0)
    };
    let (cached, pages) = (u64::from(guard.was_cached()), guard.range().pages());
    drop(guard);
    set_value(call, 1, [va, pa, 0])?;
    set_value(call, 2, [cached, pages, 0])?;
    Ok(Step::Done)
}

fn touch<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let (buf, size) = buffer(call, 0)?;
    let last = size
        .checked_sub(1)
        .ok_or(TeeError::BadParameters("empty memref"))?;
    let guard = tee.map(&buf.used)?;
    let (mut first, mut end) = ([0u8], [0u8]);
    guard.read(buf.offs, &mut first)?;
    guard.read(buf.offs + last, &mut end)?;
    drop(guard);
    set_value(call, 1, [first[0].into(), end[0].into(), 0])?;
    Ok(Step::Done)
}

fn io_probe<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    use teeshm_mm::RegionKind;
    let regions = tee.memory_map().regions();
    let first_of = |kind: RegionKind| {
        regions
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| r.range.start().get())
    };
    let device = regions
        .iter()
        .rev()
        .find(|r| r.kind == RegionKind::Device && r.range.len() >= 0x1000)
        .ok_or(TeeError::BadParameters("no device region to probe"))?;
    let mapping = tee.ioremap(device.range.start().get(), 0x1000)?;
    let id = |base: u64| -> Result<u64, TeeError> {
        let mut id = 0u64;
        for i in 0..4 {
            let reg = tee.io_read32(&mapping, base + 4 * i)?;
            id |= u64::from(reg & 0xff) << (8 * i);
        }
        Ok(id)
    };
    let read = id(0xfe0).and_then(|periph| Ok((periph, id(0xff0)?)));
    tee.iounmap(mapping.va)?;
    let (periph, cell) = read?;
    let refused = |pa: Option<u64>| match pa.map(|pa| tee.ioremap(pa, 0x1000)) {
        Some(Ok(m)) => {
            let _ = tee.iounmap(m.va);
            u64::from(TEE_SUCCESS)
        }
        Some(Err(e)) => u64::from(e.code()),
        None => u64::from(TEE_SUCCESS),
    };
    let secure = refused(first_of(RegionKind::SecureRam));
    let normal = refused(first_of(RegionKind::NonSecureRam));
    set_value(call, 0, [periph, cell, 0])?;
    set_value(call, 1, [secure, normal, 0])?;
    Ok(Step::Done)
}

// ---- RPC_BUFFER --------------------------------------------------------------------------

fn rpc_buffer_start<P: Platform>(tee: &Tee<P>, call: &mut Call) -> Result<Step, TeeError> {
    let [size, shm_type, _] = value_in(call, 0)?;
    let shm_type =
        RpcShmType::try_from(shm_type).map_err(|_| TeeError::BadParameters("unknown SHM type"))?;
    if size == 0 {
        return Err(TeeError::BadParameters("a buffer of 0 bytes"));
    }
    let request = ArgCopy::with_params(
        OPTEE_RPC_CMD_SHM_ALLOC,
        alloc::vec![MsgParam::from_value(
            RPC_VALUE_INPUT,
            Value::new(shm_type.raw(), size, 4096),
        )],
    )
    .map_err(|_| TeeError::OutOfMemory)?;
    send_rpc(
        tee,
        call,
        request,
        PtaWait::AfterAlloc { size, shm_type },
        || PtaWait::BeforeAlloc,
    )
}

/// Writes `request` to the call's RPC arg and suspends; when the call has no RPC arg yet, asks
/// for one first and comes back at `restart`.
fn send_rpc<P: Platform>(
    tee: &Tee<P>,
    call: &mut Call,
    request: ArgCopy,
    then: PtaWait,
    restart: impl FnOnce() -> PtaWait,
) -> Result<Step, TeeError> {
    let Some((at, cookie)) = tee.rpc_arg(call) else {
        return Ok(Step::Rpc(
            RpcRequest::Alloc(crate::arg::APPENDED_RPC_ARG),
            Waiting::RpcArgAlloc(restart()),
        ));
    };
    request.write_back(at, &tee.window, &tee.platform)?;
    Ok(Step::Rpc(RpcRequest::Cmd(cookie), Waiting::Pta(then)))
}

fn read_rpc_reply<P: Platform>(
    tee: &Tee<P>,
    call: &mut Call,
    sent_params: u32,
) -> Result<ArgCopy, TeeError> {
    let (at, _) = tee.rpc_arg(call).ok_or(TeeError::Rpc("RPC arg gone"))?;
    ArgCopy::read_rpc_reply(at, &tee.window, &tee.platform, sent_params)
}

fn rpc_buffer_allocated<P: Platform>(
    tee: &Tee<P>,
    call: &mut Call,
    size: u64,
    shm_type: RpcShmType,
) -> Result<Step, TeeError> {
    let reply = read_rpc_reply(tee, call, 1)?;
    let (header, params) = (reply.header(), reply.params());
    let param = params.first().ok_or(TeeError::Rpc("no param"))?;
    let t = param.tmem();
    let cookie = t.shm_ref.get();
    if header.ret.get() != TEE_SUCCESS || t.buf_ptr.get() == 0 {
        // Nothing was allocated, so nothing is to be freed.
        return Err(TeeError::OutOfMemory);
    }
    let [_, _, seed] = value_in(call, 0)?;
    let result = check_rpc_buffer(
        tee,
        call,
        param.attr(),
        t.buf_ptr.get(),
        t.size.get(),
        size,
        cookie,
        seed,
    );
    let request = ArgCopy::with_params(
        OPTEE_RPC_CMD_SHM_FREE,
        alloc::vec![MsgParam::from_value(
            RPC_VALUE_INPUT,
            Value::new(shm_type.raw(), cookie, 0),
        )],
    )
    .map_err(|_| TeeError::OutOfMemory)?;
    send_rpc(tee, call, request, PtaWait::AfterFree { result }, || {
        PtaWait::BeforeAlloc
    })
}

/// Adopts the normal world's buffer, fills it with the pattern, reads it back, and lets it go
/// (released before the SHM_FREE goes out).
#[allow(clippy::too_many_arguments)]
fn check_rpc_buffer<P: Platform>(
    tee: &Tee<P>,
    call: &Call,
    attr: u64,
    buf_ptr: u64,
    got: u64,
    wanted: u64,
    cookie: u64,
    seed: u64,
) -> Result<(u64, u64), TeeError> {
    if attr_type(attr) != OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT
        || attr & !(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG) != 0
    {
        return Err(TeeError::Rpc("SHM_ALLOC answer is not a TMEM_OUTPUT"));
    }
    if got < wanted {
        return Err(TeeError::Rpc("SHM_ALLOC answer smaller than asked"));
    }
    let buf = if attr & OPTEE_MSG_ATTR_NONCONTIG != 0 {
        let mobj =
            tee.page_list_mobj(&call.guest, buf_ptr, got, MobjKind::RpcBuffer, Some(cookie))?;
        MemrefBuf {
            used: tee.use_retired(&mobj)?,
            offs: 0,
        }
    } else {
        tee.contiguous_mobj(&call.guest, buf_ptr, got, MobjKind::RpcBuffer, Some(cookie))?
    };
    write_pattern(tee, &buf, wanted, seed)?;
    let mut bad = None;
    read_chunks(tee, &buf, wanted, |at, c| {
        if bad.is_none() {
            bad = c
                .iter()
                .enumerate()
                .find(|&(i, &b)| b != pattern_byte(seed, at + i as u64))
                .map(|(i, _)| at + i as u64);
        }
        Ok(())
    })?;
    match bad {
        Some(at) => Err(TeeError::Corrupt(at)),
        None => Ok((wanted, cookie)),
    }
}
