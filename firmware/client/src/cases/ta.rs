//! The user-TA group: sessions to `teeshm.ta-memtest`, a TA at S-EL0 in its own address space,
//! with every kind of memref (temporary, registered whole and partial, allocated, NULL), a
//! short output, a read-only input a TA writes (it dies alone), a pointer kept past its call,
//! a fault and a panic, a TA sharing its own memory with another TA, access rights, a 1 MiB
//! buffer invoked again and again, and `ioremap` (the pseudo-TA's IO_PROBE). Counted apart:
//! `ta: N passed, M failed`.

use super::{Ctx, Outcome, buf, bytes, free, op, pattern_mismatch, teec};
use alloc::format;
use core::sync::atomic::{AtomicU32, Ordering};
use teeshm_abi::gp::*;
use teeshm_fw_common::{println, time};
use teeshm_nw::PAGE_SIZE;
use teeshm_nw::client::{Direction, Param, Session, ShmFlags};
use teeshm_ta::memtest::{UUID, cmd};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

fn ta_case(name: &str, f: impl FnOnce() -> Outcome) {
    let before = crate::FAILED.load(Ordering::Relaxed);
    super::case(name, f);
    if crate::FAILED.load(Ordering::Relaxed) == before {
        PASSED.fetch_add(1, Ordering::Relaxed);
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
}

fn open(ctx: &mut Ctx) -> Result<Session, alloc::string::String> {
    ctx.open_session(UUID).map_err(teec)
}

/// An invoke whose `TEE_Result` is expected to be `code` (with `origin`).
fn expect_code(
    ctx: &mut Ctx,
    s: &Session,
    func: u32,
    params: [Param<'_>; 4],
    code: u32,
    origin: u32,
) -> Result<(), alloc::string::String> {
    let mut o = op(params);
    match ctx.invoke_command(s, func, &mut o) {
        Ok(()) if code == TEE_SUCCESS => Ok(()),
        Ok(()) => Err(format!("command {func} succeeded, {code:#x} expected")),
        Err(e) if e.code == code && e.origin == origin => Ok(()),
        Err(e) => Err(format!(
            "command {func}: {:#x} origin {}, {code:#x} origin {origin} expected",
            e.code, e.origin
        )),
    }
}

pub(super) fn group(ctx: &mut Ctx, pta: &Session) {
    ta_case(
        "user TA: memrefs of every kind, every byte both ways",
        || memrefs(ctx),
    );
    ta_case("user TA: a short output gets the size it needs", || {
        short_output(ctx)
    });
    ta_case(
        "user TA: writing a read-only input kills that TA alone",
        || read_only_input(ctx),
    );
    ta_case("user TA: a pointer kept past its call faults", || {
        stale_pointer(ctx)
    });
    ta_case("user TA: a fault and a panic kill their TA", || deaths(ctx));
    ta_case(
        "user TA: a TA shares exactly its own buffer with another TA",
        || ta_to_ta(ctx),
    );
    ta_case(
        "user TA: access rights of a memref and of its own memory",
        || access_rights(ctx),
    );
    ta_case(
        "user TA: TOUCH of a 1 MiB and of a 4 KiB buffer, 100 times each",
        || repeat_large(ctx),
    );
    ta_case(
        "ioremap: the secure UART mapped as a device, RAM refused",
        || io_probe(ctx, pta),
    );
    println!(
        "ta: {} passed, {} failed",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
}

fn memrefs(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    let mut total = 0u64;
    // Temporary, output: the TA fills, this side checks.
    for (size, offset) in [
        (1u64, 0u64),
        (PAGE_SIZE, 0),
        (10_000, 0x123),
        ((1 << 20) + 3, 1),
    ] {
        let out = buf(ctx, size, offset, |_| 0)?;
        let mut o = op([
            Param::TempOutput(out),
            Param::ValueInput { a: 21, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::FILL, &mut o).map_err(teec)?;
        let [Param::TempOutput(out), ..] = o.params else {
            return Err("params changed kind".into());
        };
        if let Some(i) = pattern_mismatch(&bytes(ctx, &out)?, 21) {
            return Err(format!("FILL of {size} B: byte {i} wrong"));
        }
        // Temporary, input: the TA checks what this side wrote.
        let mut o = op([
            Param::TempInput(out),
            Param::ValueInput { a: 21, b: 0 },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::CHECK, &mut o).map_err(teec)?;
        let Param::ValueOutput { a, b } = o.params[2] else {
            return Err("params changed kind".into());
        };
        ensure!(
            u64::from(a) == size && b == u32::MAX,
            "CHECK of {size} B: {a} checked, first wrong {b}"
        );
        let [Param::TempInput(out), ..] = o.params else {
            return Err("params changed kind".into());
        };
        free(ctx, out);
        total += size;
    }
    // Registered, whole and partial; allocated.
    let reg = buf(ctx, 5 * PAGE_SIZE + 77, 0x321, |_| 0)?;
    let shm = ctx
        .register_shared_memory(reg.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    let alloc = ctx
        .allocate_shared_memory(3 * PAGE_SIZE + 5, ShmFlags::INOUT)
        .map_err(teec)?;
    for (shm, seed) in [(&shm, 31u32), (&alloc, 32)] {
        let mut o = op([
            Param::Whole(shm),
            Param::ValueInput { a: seed, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::FILL, &mut o).map_err(teec)?;
        let data = shm
            .buffer()
            .read_vec(ctx.driver().ram(), 0, shm.size())
            .map_err(|e| format!("guest RAM: {e}"))?;
        if let Some(i) = pattern_mismatch(&data, u64::from(seed)) {
            return Err(format!("FILL of a whole shared memory: byte {i} wrong"));
        }
        total += shm.size();
    }
    let (offset, size) = (5000u64, 9000u64);
    let mut o = op([
        Param::Partial {
            shm: &shm,
            offset,
            size,
            dir: Direction::Output,
        },
        Param::ValueInput { a: 33, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&s, cmd::FILL, &mut o).map_err(teec)?;
    let data = shm
        .buffer()
        .read_vec(ctx.driver().ram(), 0, shm.size())
        .map_err(|e| format!("guest RAM: {e}"))?;
    let inside = data
        .get(offset as usize..(offset + size) as usize)
        .ok_or("partial out of range")?;
    if let Some(i) = pattern_mismatch(inside, 33) {
        return Err(format!("partial FILL: byte {i} wrong"));
    }
    ensure!(
        pattern_mismatch(data.get(..offset as usize).unwrap_or(&[]), 31).is_none(),
        "partial FILL wrote before its window"
    );
    // NULL: the TA sees no buffer and refuses TOUCH of nothing.
    expect_code(
        ctx,
        &s,
        cmd::TOUCH,
        [
            Param::Null {
                dir: Direction::Input,
                size: 0,
            },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ],
        TEE_ERROR_BAD_PARAMETERS,
        TEE_ORIGIN_TRUSTED_APP,
    )?;
    ctx.release_shared_memory(shm).map_err(teec)?;
    ctx.release_shared_memory(alloc).map_err(teec)?;
    ctx.close_session(s).map_err(teec)?;
    free(ctx, reg);
    Ok(format!(
        "{total} bytes through temporary (1 B to 1 MiB + 3), registered and allocated memrefs, a partial one within its window, NULL refused by the TA"
    ))
}

fn short_output(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    let src = buf(ctx, 6000, 0, |i| i as u8)?;
    let dst = buf(ctx, 100, 0, |_| 0)?;
    let mut o = op([
        Param::TempInput(src),
        Param::TempOutput(dst),
        Param::None,
        Param::None,
    ]);
    let r = ctx.invoke_command(&s, cmd::COPY, &mut o);
    let e = r.err().ok_or("COPY into 100 B succeeded")?;
    ensure!(
        e.code == TEE_ERROR_SHORT_BUFFER && e.origin == TEE_ORIGIN_TRUSTED_APP,
        "COPY: {:#x} origin {}",
        e.code,
        e.origin
    );
    let [Param::TempInput(src), Param::TempOutput(dst), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(dst.size == 6000, "needed size {} written back", dst.size);
    free(ctx, src);
    free(ctx, dst);
    ctx.close_session(s).map_err(teec)?;
    Ok("TEE_ERROR_SHORT_BUFFER from the TA, 6000 written back as the size".into())
}

fn read_only_input(ctx: &mut Ctx) -> Outcome {
    let victim = open(ctx)?;
    let other = open(ctx)?;
    let input = buf(ctx, 64, 0, |_| 0x5a)?;
    let mut o = op([
        Param::TempInput(input),
        Param::None,
        Param::None,
        Param::None,
    ]);
    let e = ctx
        .invoke_command(&victim, cmd::WRITE_INPUT, &mut o)
        .err()
        .ok_or("the TA wrote an input memref")?;
    ensure!(
        e.code == TEE_ERROR_TARGET_DEAD,
        "WRITE_INPUT: {:#x}, TARGET_DEAD expected",
        e.code
    );
    let [Param::TempInput(input), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        bytes(ctx, &input)?.iter().all(|&b| b == 0x5a),
        "the input changed"
    );
    expect_code(
        ctx,
        &victim,
        cmd::FAULT,
        [Param::None, Param::None, Param::None, Param::None],
        TEE_ERROR_TARGET_DEAD,
        TEE_ORIGIN_TEE,
    )?;
    let mut o = op([
        Param::TempInput(input),
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&other, cmd::TOUCH, &mut o)
        .map_err(teec)?;
    ensure!(
        o.params[1] == Param::ValueOutput { a: 0x5a, b: 0x5a },
        "the other instance read {:?}",
        o.params[1]
    );
    let [Param::TempInput(input), ..] = o.params else {
        return Err("params changed kind".into());
    };
    free(ctx, input);
    ctx.close_session(victim).map_err(teec)?;
    ctx.close_session(other).map_err(teec)?;
    Ok(
        "TARGET_DEAD then and after, the input untouched, another instance of the same TA unharmed"
            .into(),
    )
}

fn stale_pointer(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    let b = buf(ctx, 2 * PAGE_SIZE, 0, |_| 7)?;
    let mut o = op([Param::TempInout(b), Param::None, Param::None, Param::None]);
    ctx.invoke_command(&s, cmd::KEEP, &mut o).map_err(teec)?;
    let [Param::TempInout(b), ..] = o.params else {
        return Err("params changed kind".into());
    };
    expect_code(
        ctx,
        &s,
        cmd::USE_KEPT,
        [
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
            Param::None,
        ],
        TEE_ERROR_TARGET_DEAD,
        TEE_ORIGIN_TEE,
    )?;
    free(ctx, b);
    ctx.close_session(s).map_err(teec)?;
    Ok("the address a TA kept from its last call faults in the next: TARGET_DEAD".into())
}

fn deaths(ctx: &mut Ctx) -> Outcome {
    for func in [cmd::FAULT, cmd::PANIC] {
        let s = open(ctx)?;
        expect_code(
            ctx,
            &s,
            func,
            [Param::None, Param::None, Param::None, Param::None],
            TEE_ERROR_TARGET_DEAD,
            TEE_ORIGIN_TEE,
        )?;
        ctx.close_session(s).map_err(teec)?;
    }
    Ok("an unmapped load and TEE_Panic: TARGET_DEAD, each session closes".into())
}

fn ta_to_ta(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    for len in [1u32, 4096, 3 * 4096 + 17] {
        let mut o = op([
            Param::ValueInput { a: 77, b: len },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::CALL_PEER, &mut o)
            .map_err(teec)?;
        ensure!(
            o.params[1]
                == Param::ValueOutput {
                    a: len,
                    b: TEE_ERROR_TARGET_DEAD
                },
            "CALL_PEER of {len} B: {:?}",
            o.params[1]
        );
    }
    ctx.close_session(s).map_err(teec)?;
    Ok("1 B, 4 KiB and 12 KiB + 17 of a TA's heap checked and inverted by the peer; the peer's read past them faulted".into())
}

fn access_rights(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    let b = buf(ctx, 100, 0, |_| 0)?;
    let mut o = op([
        Param::TempInout(b),
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(&s, cmd::CHECK_ACCESS, &mut o)
        .map_err(teec)?;
    ensure!(
        o.params[1]
            == Param::ValueOutput {
                a: TEE_SUCCESS,
                b: TEE_ERROR_ACCESS_DENIED
            },
        "CHECK_ACCESS: {:?}",
        o.params[1]
    );
    let [Param::TempInout(b), ..] = o.params else {
        return Err("params changed kind".into());
    };
    free(ctx, b);
    ctx.close_session(s).map_err(teec)?;
    Ok("READ|WRITE|ANY_OWNER granted on a memref, READ alone (own memory only) denied".into())
}

/// Microseconds per TOUCH of `shm` over `rounds` invokes.
fn touch_rounds(
    ctx: &mut Ctx,
    s: &Session,
    shm: &teeshm_nw::client::SharedMemory,
    rounds: u32,
) -> Result<u64, alloc::string::String> {
    let started = time::micros();
    for _ in 0..rounds {
        let mut o = op([
            Param::Whole(shm),
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(s, cmd::TOUCH, &mut o).map_err(teec)?;
        let Param::ValueOutput { a, b } = o.params[1] else {
            return Err("params changed kind".into());
        };
        ensure!(
            (a, b) == (0x11, 0x22),
            "TOUCH read {a:#x}, {b:#x}; 0x11, 0x22 expected"
        );
    }
    Ok(time::micros().saturating_sub(started) / u64::from(rounds))
}

fn repeat_large(ctx: &mut Ctx) -> Outcome {
    let s = open(ctx)?;
    let big = ctx
        .allocate_shared_memory(1 << 20, ShmFlags::INOUT)
        .map_err(teec)?;
    let small = ctx
        .allocate_shared_memory(PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    for shm in [&big, &small] {
        let mut data = alloc::vec![0u8; shm.size() as usize];
        if let Some(first) = data.first_mut() {
            *first = 0x11;
        }
        if let Some(last) = data.last_mut() {
            *last = 0x22;
        }
        shm.buffer()
            .write(ctx.driver().ram(), 0, &data)
            .map_err(|e| format!("guest RAM: {e}"))?;
    }
    let rounds = 50;
    // Warm both once, then alternate the measurements so a slow stretch hits both.
    touch_rounds(ctx, &s, &big, 1)?;
    touch_rounds(ctx, &s, &small, 1)?;
    let (mut t_big, mut t_small) = (0, 0);
    for _ in 0..2 {
        t_big += touch_rounds(ctx, &s, &big, rounds)?;
        t_small += touch_rounds(ctx, &s, &small, rounds)?;
    }
    ctx.release_shared_memory(big).map_err(teec)?;
    ctx.release_shared_memory(small).map_err(teec)?;
    ctx.close_session(s).map_err(teec)?;
    let ratio_x100 = t_big * 100 / t_small.max(1);
    Ok(format!(
        "TOUCH of 1 MiB {} us, of 4 KiB {} us per invoke ({}.{:02}x; informational, QEMU's timer: the figure is P9 of docs/performance.md), the first and last byte right every time",
        t_big / 2,
        t_small / 2,
        ratio_x100 / 100,
        ratio_x100 % 100
    ))
}

fn io_probe(ctx: &mut Ctx, pta: &Session) -> Outcome {
    let mut o = op([
        Param::ValueOutput { a: 0, b: 0 },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(pta, teeshm_core::pta::cmd::IO_PROBE, &mut o)
        .map_err(teec)?;
    ensure!(
        o.params[0]
            == Param::ValueOutput {
                a: 0x0014_1011,
                b: 0xb105_f00d
            },
        "the probe device answered {:?}, a PL011's identification expected",
        o.params[0]
    );
    ensure!(
        o.params[1]
            == Param::ValueOutput {
                a: TEE_ERROR_BAD_PARAMETERS,
                b: TEE_ERROR_BAD_PARAMETERS
            },
        "ioremap of secure and normal RAM: {:?}",
        o.params[1]
    );
    Ok("PL011 PeriphID 0x00141011, CellID 0xb105f00d read through the window; secure and normal RAM refused".into())
}
