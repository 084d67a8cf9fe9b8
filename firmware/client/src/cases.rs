//! The cases of the normal-world test client, in the order they run. Each prints one line:
//! `ok   <case> [<ms> ms]: <what was seen>` or `FAIL <case> [<ms> ms]: <why>`.
//!
//! Everything goes over real SMCs: identity and capabilities as raw fast calls, sessions,
//! memrefs, registration and RPC through `teeshm-nw` (the Linux-shaped driver and the
//! GlobalPlatform-shaped client API), and the hostile cases as hand-made page lists, args and
//! registers. Every byte the TEE reads or writes is checked on this side.
#![cfg_attr(feature = "fault-test", allow(unused))]

use crate::ram::NsRam;
use crate::smc::{self, Conduit};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use sha2::{Digest, Sha256};
use teeshm_abi::caps::{SecureCaps, rpc_arg_num_params};
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::RpcShmType;
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_fw_common::{fid, println, time};
use teeshm_nw::client::{
    Context, Direction, Operation, Param, Session, SharedMemory, ShmFlags, TeecError,
};
use teeshm_nw::driver::header;
use teeshm_nw::{Driver, DriverError, GuestBuffer, GuestRam, PAGE_SIZE};
use zerocopy::IntoBytes;

type Ctx = Context<Conduit, NsRam>;
type Outcome = Result<String, String>;

/// Secure RAM (QEMU `virt`): what no page list may name.
const SECURE_RAM: u64 = 0x0e00_0000;
/// Where the S-EL1 core's SHM window lies (`teeshm_fw_tee::WINDOW_BASE`, 4 GiB).
const WINDOW: (u64, u64) = (0x40_0000_0000, 0x41_0000_0000);
/// The guest the normal world, acting as hypervisor, creates and destroys.
const GUEST: u64 = 5;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

fn case(name: &str, f: impl FnOnce() -> Outcome) {
    let started = time::micros();
    let outcome = f();
    let ms = time::micros().saturating_sub(started) / 1000;
    match outcome {
        Ok(detail) => {
            crate::PASSED.fetch_add(1, Ordering::Relaxed);
            println!("ok   {name} [{ms} ms]: {detail}");
        }
        Err(why) => {
            crate::FAILED.fetch_add(1, Ordering::Relaxed);
            println!("FAIL {name} [{ms} ms]: {why}");
        }
    }
}

/// A raw SMC as client 0.
fn fast(func: u32, args: &[u64]) -> SmcRegs {
    smc::raw(SmcRegs::call(func, args))
}

/// A raw SMC with client id `a7`.
fn fast_as(a7: u64, func: u32, args: &[u64]) -> SmcRegs {
    let mut regs = SmcRegs::call(func, args);
    regs.a[7] = a7;
    smc::raw(regs)
}

fn teec(e: TeecError) -> String {
    format!("TEEC error {:#x} (origin {})", e.code, e.origin)
}

fn drv(e: DriverError) -> String {
    format!("driver: {e}")
}

/// A buffer of `size` bytes at `offset` in fresh scattered pages, filled by `fill`.
fn buf(
    ctx: &mut Ctx,
    size: u64,
    offset: u64,
    fill: impl Fn(u64) -> u8,
) -> Result<GuestBuffer, String> {
    let b = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), size, offset)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let data: Vec<u8> = (0..size).map(fill).collect();
    b.write(ctx.driver().ram(), 0, &data)
        .map_err(|e| format!("guest RAM: {e}"))?;
    Ok(b)
}

fn bytes(ctx: &Ctx, b: &GuestBuffer) -> Result<Vec<u8>, String> {
    b.read_vec(ctx.driver().ram(), 0, b.size)
        .map_err(|e| format!("guest RAM: {e}"))
}

fn free(ctx: &mut Ctx, b: GuestBuffer) {
    b.free(ctx.driver_mut().ram_mut());
}

fn fill_shm(ctx: &Ctx, shm: &SharedMemory, f: impl Fn(u64) -> u8) -> Result<(), String> {
    let data: Vec<u8> = (0..shm.size()).map(f).collect();
    shm.buffer()
        .write(ctx.driver().ram(), 0, &data)
        .map_err(|e| format!("guest RAM: {e}"))
}

/// Bytes that differ from index to index and from seed to seed.
fn marker(seed: u64) -> impl Fn(u64) -> u8 {
    move |i| (i.wrapping_mul(0x9d) ^ (i >> 9) ^ seed.wrapping_mul(0x3b)) as u8
}

/// The first index where `data` is not the memtest pattern of `seed`.
fn pattern_mismatch(data: &[u8], seed: u64) -> Option<usize> {
    data.iter()
        .enumerate()
        .find(|&(i, &b)| b != pattern_byte(seed, i as u64))
        .map(|(i, _)| i)
}

/// How many neighbouring pages of a buffer are physically adjacent.
fn adjacent(pages: &[u64]) -> usize {
    pages
        .windows(2)
        .filter(|w| w[1] == w[0] + PAGE_SIZE)
        .count()
}

fn op(params: [Param<'_>; 4]) -> Operation<'_> {
    Operation::new(params)
}

/// Runs the SiP check of the core: its agreement checker over tables, VA allocator, reverse
/// map and registry. Returns (disagreements, window pages mapped, table pages, calls).
fn check_core() -> (u64, u64, u64, u64) {
    let r = fast(fid::SIP_TEESHM_CHECK, &[]);
    (r.a[1], r.a[2], r.a[3], r.a[4])
}

/// An invoke of the memtest pseudo-TA with raw params (64-bit values, hand-made memrefs).
fn invoke_raw(
    ctx: &mut Ctx,
    s: &Session,
    func: u32,
    params: &[MsgParam],
) -> Result<teeshm_nw::MsgReply, String> {
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s.id);
    h.func.set(func);
    ctx.driver_mut().call(h, params).map_err(drv)
}

/// WHERE through a registered buffer: (VA of byte `offs`, its PA, whether the mapping was
/// cached, pages mapped).
fn where_is(
    ctx: &mut Ctx,
    s: &Session,
    shm: &SharedMemory,
    offs: u64,
) -> Result<(u64, u64, bool, u64), String> {
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            Rmem::new(offs, shm.size() - offs, shm.cookie()),
        ),
        MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
        MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
    ];
    let reply = invoke_raw(ctx, s, cmd::WHERE, &params)?;
    reply.check().map_err(drv)?;
    let v1 = reply.params.get(1).ok_or("no param 1")?.value();
    let v2 = reply.params.get(2).ok_or("no param 2")?.value();
    Ok((v1.a.get(), v1.b.get(), v2.a.get() == 1, v2.b.get()))
}

/// The `ret` of a message, or why there is none.
fn ret_of(reply: Result<teeshm_nw::MsgReply, String>) -> Result<u32, String> {
    let reply = reply?;
    ensure!(
        reply.a0 == OPTEE_SMC_RETURN_OK,
        "the call itself was refused with {:#x}",
        reply.a0
    );
    Ok(reply.header.ret.get())
}

pub fn run() {
    println!("client: teeshm normal-world test client at NS-EL1 (MMU off), speaking only SMC");
    let started = time::micros();
    case("calls UID, revision, OS UUID and revision", identity);
    case("capabilities, thread count, SHM config", capabilities);
    case("PSCI and SMCCC at EL3", psci);
    case("FP/SIMD registers and FPCR survive SMCs", fp_preserved);
    #[cfg(not(feature = "fault-test"))]
    case("unknown and reserved function ids", unknown_ids);

    let ram = NsRam::new();
    let driver = match Driver::probe(Conduit::new(0), ram.clone()) {
        Ok(d) => {
            crate::PASSED.fetch_add(1, Ordering::Relaxed);
            println!(
                "ok   driver probe (teeshm-nw): caps {:#x}, RPC arg with {} params",
                d.caps().bits(),
                d.rpc_param_count()
            );
            d
        }
        Err(e) => {
            crate::FAILED.fetch_add(1, Ordering::Relaxed);
            println!("FAIL driver probe (teeshm-nw): {e}");
            return;
        }
    };
    let mut ctx = Context::new(driver);
    let session = match ctx.open_session(MEMTEST_UUID) {
        Ok(s) => {
            crate::PASSED.fetch_add(1, Ordering::Relaxed);
            println!(
                "ok   open a session with the memtest pseudo-TA: session {}",
                s.id
            );
            s
        }
        Err(e) => {
            crate::FAILED.fetch_add(1, Ordering::Relaxed);
            println!(
                "FAIL open a session with the memtest pseudo-TA: {}",
                teec(e)
            );
            return;
        }
    };

    #[cfg(feature = "fault-test")]
    {
        case("a buffer works before the fault test", || {
            let out = buf(&mut ctx, 3 * PAGE_SIZE, 0x10, |_| 0)?;
            let mut o = op([
                Param::TempOutput(out),
                Param::ValueInput { a: 1, b: 0 },
                Param::None,
                Param::None,
            ]);
            ctx.invoke_command(&session, cmd::FILL, &mut o)
                .map_err(teec)?;
            let [Param::TempOutput(out), ..] = o.params else {
                return Err("params".into());
            };
            ensure!(
                pattern_mismatch(&bytes(&ctx, &out)?, 1).is_none(),
                "FILL wrong"
            );
            Ok("FILL of 3 pages through the window".into())
        });
        println!(
            "client: fault test: asking the core to read an unmapped VA; the run must end in a reported fault"
        );
        let r = fast(fid::SIP_TEESHM_FAULT_TEST, &[]);
        println!(
            "FAIL fault test: the call returned ({:#x}, {:#x}): the secure world did not fault",
            r.a[0], r.a[1]
        );
        crate::FAILED.fetch_add(1, Ordering::Relaxed);
        return;
    }

    #[cfg(not(feature = "fault-test"))]
    {
        case("values in, out and inout", || values(&mut ctx, &session));
        case(
            "temporary memrefs in, out, inout (unaligned, up to 1 MiB)",
            || temporary(&mut ctx, &session),
        );
        case("short output buffer gets the size it needs", || {
            short_buffer(&mut ctx, &session)
        });
        case(
            "SHA-256 across a page boundary and of a NULL memref",
            || sha256(&mut ctx, &session),
        );
        case(
            "registered and allocated memory: whole and partial memrefs in, out, inout",
            || registered(&mut ctx, &session),
        );
        case(
            "a buffer of 1100 scattered pages (3 list pages, offset 0x7ff)",
            || large_registered(&mut ctx, &session),
        );
        case(
            "RPC buffers by SHM_ALLOC / SHM_FREE (CALL_WITH_RPC_ARG)",
            || rpc_buffers(&mut ctx, &session),
        );
        case(
            "RPC buffers without RPC_ARG (RPC_FUNC_ALLOC, the SHM cache)",
            || rpc_without_rpc_arg(&ram),
        );
        case("unregister, then the cookie is gone", || {
            unregister(&mut ctx, &session)
        });
        case(
            "VM created and destroyed by the hypervisor (client id 0)",
            || vm_lifecycle(&mut ctx, &session, &ram),
        );
        case(
            "hostile: a page list naming secure RAM, EL3, a device, flash",
            || hostile_pages(&mut ctx, &session),
        );
        case(
            "hostile: a page list stored in secure RAM or a device",
            || hostile_list_location(&mut ctx),
        );
        case(
            "hostile: unaligned page-list entries and next pointers",
            || hostile_unaligned(&mut ctx),
        );
        case("hostile: huge and overflowing sizes", || {
            hostile_sizes(&mut ctx)
        });
        case("hostile: unknown cookies", || {
            hostile_cookies(&mut ctx, &session)
        });
        case(
            "hostile: args in secure RAM, crossing pages, with too many params",
            || hostile_args(&mut ctx),
        );
        case("hostile: bad client ids and RPC returns", hostile_registers);
        case("the core still serves calls after all of it", || {
            still_alive(&mut ctx, &session)
        });
        case("close the session and shut the driver down", move || {
            ctx.close_session(session).map_err(teec)?;
            let mut d = ctx.into_driver();
            d.shutdown().map_err(drv)?;
            ensure!(
                d.rpc_buffers_held() == 0,
                "{} RPC buffers held",
                d.rpc_buffers_held()
            );
            let (calls, rpcs) = (d.conduit_mut().calls, d.conduit_mut().rpcs);
            Ok(format!(
                "{calls} SMCs made by this driver, {rpcs} RPCs answered"
            ))
        });
        case(
            "the core's tables, window, reverse map and registry agree",
            || {
                let (disagreements, mapped, tables, calls) = check_core();
                ensure!(
                    disagreements == 0,
                    "{disagreements} disagreements (see the tee: lines)"
                );
                ensure!(
                    mapped == 0,
                    "{mapped} pages still mapped in the window after everything was released"
                );
                Ok(format!(
                    "0 disagreements, window empty again, {tables} table pages, {calls} calls served, {} pages still lent by the client",
                    ram.live_pages()
                ))
            },
        );
    }
    println!(
        "client: all cases done in {} ms",
        time::micros().saturating_sub(started) / 1000
    );
}

fn identity() -> Outcome {
    let words = |r: SmcRegs| [r.a[0], r.a[1], r.a[2], r.a[3]].map(|w| (w & 0xffff_ffff) as u32);
    let got = words(fast(OPTEE_SMC_CALLS_UID, &[]));
    ensure!(got == uid::OPTEE_MSG_UID, "CALLS_UID {got:08x?}");
    let r = fast(OPTEE_SMC_CALLS_REVISION, &[]);
    ensure!(
        r.a[0] == u64::from(uid::OPTEE_MSG_REVISION_MAJOR)
            && r.a[1] == u64::from(uid::OPTEE_MSG_REVISION_MINOR),
        "CALLS_REVISION {}.{}",
        r.a[0],
        r.a[1]
    );
    let os = words(fast(OPTEE_SMC_CALL_GET_OS_UUID, &[]));
    ensure!(os == uid::OPTEE_MSG_OS_OPTEE_UUID, "GET_OS_UUID {os:08x?}");
    let r = fast(OPTEE_SMC_CALL_GET_OS_REVISION, &[]);
    ensure!(
        r.a[0] == u64::from(uid::TEESHM_OS_REVISION_MAJOR)
            && r.a[1] == u64::from(uid::TEESHM_OS_REVISION_MINOR),
        "GET_OS_REVISION {}.{}",
        r.a[0],
        r.a[1]
    );
    let count = fast(OPTEE_SMC_CALLS_COUNT, &[]).a[0];
    ensure!(
        count == u64::from(uid::TEESHM_API_CALL_COUNT),
        "CALLS_COUNT {count}"
    );
    Ok(format!(
        "OP-TEE message API UID {:08x}-..., revision {}.{}, OS UUID {:08x}-..., OS revision {}.{}, {count} calls",
        got[0],
        uid::OPTEE_MSG_REVISION_MAJOR,
        uid::OPTEE_MSG_REVISION_MINOR,
        os[0],
        uid::TEESHM_OS_REVISION_MAJOR,
        uid::TEESHM_OS_REVISION_MINOR
    ))
}

fn capabilities() -> Outcome {
    let r = fast(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
    ensure!(
        r.a0() == OPTEE_SMC_RETURN_OK,
        "EXCHANGE_CAPABILITIES answered {:#x}",
        r.a[0]
    );
    let caps = SecureCaps::from_bits_truncate((r.a[1] & 0xffff_ffff) as u32);
    let want = SecureCaps::DYNAMIC_SHM
        | SecureCaps::VIRTUALIZATION
        | SecureCaps::MEMREF_NULL
        | SecureCaps::RPC_ARG;
    ensure!(caps.contains(want), "capabilities {caps:?}");
    ensure!(
        !caps.contains(SecureCaps::HAVE_RESERVED_SHM),
        "a reserved pool is reported"
    );
    let rpc_params = rpc_arg_num_params((r.a[3] & 0xffff_ffff) as u32);
    let unknown = fast(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0x8000_0000]).a0();
    ensure!(
        unknown != OPTEE_SMC_RETURN_OK,
        "unknown normal-world capability bits accepted"
    );
    let pool = fast(OPTEE_SMC_GET_SHM_CONFIG, &[]).a0();
    ensure!(
        pool == OPTEE_SMC_RETURN_ENOTAVAIL,
        "GET_SHM_CONFIG answered {pool:#x}"
    );
    let r = fast(OPTEE_SMC_GET_THREAD_COUNT, &[]);
    ensure!(
        r.a0() == OPTEE_SMC_RETURN_OK && r.a[1] > 0,
        "GET_THREAD_COUNT {:#x} {}",
        r.a[0],
        r.a[1]
    );
    Ok(format!(
        "{:#x} (dynamic SHM, virtualization, NULL memrefs, RPC arg of {rpc_params} params), no static pool, {} threads",
        caps.bits(),
        r.a[1]
    ))
}

fn psci() -> Outcome {
    use fid::psci;
    let low = |v: u64| (v & 0xffff_ffff) as u32 as i32;
    let v = fast(psci::VERSION, &[]).a[0];
    ensure!(v == psci::VERSION_1_1, "PSCI_VERSION {v:#x}");
    for f in [
        psci::VERSION,
        psci::FEATURES,
        psci::SYSTEM_OFF,
        psci::SYSTEM_RESET,
    ] {
        let r = low(fast(psci::FEATURES, &[u64::from(f)]).a[0]);
        ensure!(r == 0, "PSCI_FEATURES({f:#x}) = {r}");
    }
    let r = low(fast(psci::FEATURES, &[u64::from(psci::CPU_ON_64)]).a[0]);
    ensure!(r == -1, "PSCI_FEATURES(CPU_ON) = {r}");
    let r = low(fast(psci::CPU_ON_64, &[1, 0x4020_0000, 0]).a[0]);
    ensure!(r == -1, "CPU_ON answered {r}");
    let r = fast(fid::arch::SMCCC_VERSION, &[]).a[0];
    ensure!(r == fid::arch::VERSION_1_1, "SMCCC_VERSION {r:#x}");
    Ok("PSCI 1.1 (VERSION, FEATURES, SYSTEM_OFF, SYSTEM_RESET; CPU_ON refused), SMCCC 1.1".into())
}

fn fp_preserved() -> Outcome {
    let values = [
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
        0x5a5a_a5a5_3c3c_c3c3,
    ];
    let [a, b, c] = values;
    let want = [b, b, c, c, a];
    for (what, func) in [
        ("a call served by the core (CALLS_UID)", OPTEE_SMC_CALLS_UID),
        ("a call answered at EL3 (PSCI_VERSION)", fid::psci::VERSION),
    ] {
        let got = smc::fp_after_smc(func, values);
        ensure!(
            got[..5] == want,
            "after {what}: q0.hi, q8, q31 = {:x?}, expected {want:x?}",
            &got[..5]
        );
        ensure!(
            got[5] & 0xc0_0000 == 0xc0_0000,
            "after {what}: FPCR {:#x} lost its rounding mode",
            got[5]
        );
    }
    Ok("q0, q8, q31 and FPCR come back unchanged from the core and from EL3".into())
}

#[cfg(not(feature = "fault-test"))]
fn unknown_ids() -> Outcome {
    let unk = u64::from(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION);
    for (what, func) in [
        ("an unknown Trusted OS fast call", 0xB200_00F0u32),
        ("an unknown yielding call", 0x3200_00F0),
        (
            "the dispatcher's CALL_DONE from the normal world",
            fid::SECURE_CALL_DONE,
        ),
        (
            "the dispatcher's ENTRY_DONE from the normal world",
            fid::SECURE_ENTRY_DONE,
        ),
        ("a Trusted Application call", 0xB000_0001),
        ("a hypervisor service call", 0xC500_0000),
        ("an unknown SiP call", 0x8200_0001),
        (
            "the fault-test call (absent from this build)",
            fid::SIP_TEESHM_FAULT_TEST,
        ),
    ] {
        let r = fast(func, &[1, 2, 3]).a[0] & 0xffff_ffff;
        ensure!(r == unk, "{what} ({func:#x}) answered {r:#x}");
    }
    Ok("8 ids, each answered UNKNOWN_FUNCTION and nothing else happened".into())
}

#[cfg(not(feature = "fault-test"))]
fn values(ctx: &mut Ctx, s: &Session) -> Outcome {
    // FILL takes its seed as VALUE_INOUT: read by the TEE, and back unchanged.
    let out = buf(ctx, 100, 7, |_| 0)?;
    let mut o = op([
        Param::TempOutput(out),
        Param::ValueInout { a: 9, b: 0xdead },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::ValueInout { a: 9, b: 0xdead }),
        "inout value came back as {:?}",
        o.params[1]
    );
    let [Param::TempOutput(out), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        pattern_mismatch(&bytes(ctx, &out)?, 9).is_none(),
        "FILL with an inout seed wrote the wrong bytes"
    );
    // WHERE answers in a VALUE_OUTPUT and a VALUE_INOUT (32-bit in the client API).
    let first = out.pages.first().copied().unwrap_or(0);
    let mut o = op([
        Param::TempInput(out),
        Param::ValueOutput { a: 0, b: 0 },
        Param::ValueInout { a: 7, b: 7 },
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::WHERE, &mut o).map_err(teec)?;
    let (
        Param::ValueOutput { a: va, b: pa },
        Param::ValueInout {
            a: cached,
            b: pages,
        },
    ) = (&o.params[1], &o.params[2])
    else {
        return Err("params changed kind".into());
    };
    ensure!(
        u64::from(*pa) == first + 7,
        "WHERE says PA {pa:#x}, the buffer is at {:#x}",
        first + 7
    );
    ensure!(
        *cached == 0 && *pages == 1,
        "WHERE: cached {cached}, pages {pages}"
    );
    let (va, pa) = (*va, *pa);
    let [Param::TempInput(out), ..] = o.params else {
        return Err("params".into());
    };
    free(ctx, out);
    Ok(format!(
        "inout seed read and returned unchanged; WHERE: first byte at window VA ..{va:08x} -> PA {pa:#x}, a fresh 1-page mapping"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn temporary(ctx: &mut Ctx, s: &Session) -> Outcome {
    let mut total = 0;
    for (offset, size) in [(0, 1), (0xfff, 2), (0x123, 10_000), (1, (1 << 20) + 3)] {
        // FILL: the TEE writes every byte of a temporary output.
        let out = buf(ctx, size, offset, |_| 0x5a)?;
        let mut o = op([
            Param::TempOutput(out),
            Param::ValueInput { a: 77, b: 0 },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(s, cmd::FILL, &mut o)
            .map_err(|e| format!("FILL {size} at {offset:#x}: {}", teec(e)))?;
        ensure!(
            o.returned_sizes[0] == Some(size),
            "FILL returned size {:?}",
            o.returned_sizes[0]
        );
        let [Param::TempOutput(out), ..] = o.params else {
            return Err("params changed kind".into());
        };
        if let Some(i) = pattern_mismatch(&bytes(ctx, &out)?, 77) {
            return Err(format!("FILL {size} at {offset:#x}: byte {i} wrong"));
        }
        // COPY: the TEE reads every byte of a temporary input into a bigger inout.
        let input = buf(ctx, size, 0xfff - offset, marker(size))?;
        let bigger = buf(ctx, size + 100, offset, |_| 0)?;
        let mut o = op([
            Param::TempInput(input),
            Param::TempInout(bigger),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(s, cmd::COPY, &mut o)
            .map_err(|e| format!("COPY {size}: {}", teec(e)))?;
        let [Param::TempInput(input), Param::TempInout(mut bigger), ..] = o.params else {
            return Err("params changed kind".into());
        };
        ensure!(bigger.size == size, "COPY wrote back size {}", bigger.size);
        ensure!(
            bytes(ctx, &bigger)? == bytes(ctx, &input)?,
            "COPY of {size} bytes: output differs from input"
        );
        bigger.size = size + 100;
        let all = bytes(ctx, &bigger)?;
        ensure!(
            all.iter().skip(size as usize).all(|&b| b == 0),
            "COPY wrote past the size"
        );
        for b in [out, input, bigger] {
            free(ctx, b);
        }
        total += size;
    }
    Ok(format!(
        "FILL and COPY of 1 B, 2 B across a page line, 10000 B at 0x123, 1 MiB + 3 at 1: {total} bytes each way, every byte checked"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn short_buffer(ctx: &mut Ctx, s: &Session) -> Outcome {
    let input = buf(ctx, 5000, 3, marker(1))?;
    let small = buf(ctx, 4000, 3, |_| 0)?;
    let mut o = op([
        Param::TempInput(input),
        Param::TempOutput(small),
        Param::None,
        Param::None,
    ]);
    let r = ctx.invoke_command(s, cmd::COPY, &mut o);
    ensure!(
        r == Err(TeecError {
            code: TEE_ERROR_SHORT_BUFFER,
            origin: TEE_ORIGIN_TRUSTED_APP
        }),
        "COPY into a short buffer answered {r:?}"
    );
    ensure!(
        o.returned_sizes[1] == Some(5000),
        "needed size {:?}",
        o.returned_sizes[1]
    );
    let [Param::TempInput(input), Param::TempOutput(mut small), ..] = o.params else {
        return Err("params changed kind".into());
    };
    small.size = 4000;
    ensure!(
        bytes(ctx, &small)?.iter().all(|&b| b == 0),
        "the short buffer was written"
    );
    free(ctx, input);
    free(ctx, small);
    Ok("TEE_ERROR_SHORT_BUFFER with the needed size 5000, the 4000-byte output untouched".into())
}

#[cfg(not(feature = "fault-test"))]
fn sha256(ctx: &mut Ctx, s: &Session) -> Outcome {
    const SHA_ABC: [u8; 32] = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];
    let abc = buf(ctx, 3, 0xffe, |i| b"abc"[i as usize])?;
    let digest = buf(ctx, 32, 0xff0, |_| 0)?;
    let mut o = op([
        Param::TempInput(abc),
        Param::TempOutput(digest),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [Param::TempInput(abc), Param::TempOutput(digest), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(bytes(ctx, &digest)? == SHA_ABC, "SHA-256(\"abc\") wrong");
    let mut o = op([
        Param::Null {
            dir: Direction::Input,
            size: 0,
        },
        Param::TempOutput(digest),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(digest), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let empty: [u8; 32] = Sha256::digest([]).into();
    ensure!(
        bytes(ctx, &digest)? == empty,
        "SHA-256 of a NULL memref wrong"
    );
    // A NULL output asks for the size.
    let mut o = op([
        Param::TempInput(abc),
        Param::Null {
            dir: Direction::Output,
            size: 0,
        },
        Param::None,
        Param::None,
    ]);
    let r = ctx.invoke_command(s, cmd::SHA256, &mut o);
    ensure!(
        r.map_err(|e| e.code) == Err(TEE_ERROR_SHORT_BUFFER),
        "NULL output answered {r:?}"
    );
    ensure!(
        o.returned_sizes[1] == Some(32),
        "NULL output: size {:?}",
        o.returned_sizes[1]
    );
    let [Param::TempInput(abc), ..] = o.params else {
        return Err("params changed kind".into());
    };
    free(ctx, abc);
    free(ctx, digest);
    Ok("\"abc\" split over two pages hashes right; NULL input hashes as empty; NULL output learns 32".into())
}

/// FILL, COPY both ways and SHA-256 through whole and partial memrefs of `a` and `b`, every
/// byte checked (the same walk as crates/nw/tests/client.rs).
#[cfg(not(feature = "fault-test"))]
fn exercise_shared(
    ctx: &mut Ctx,
    s: &Session,
    a: &SharedMemory,
    b: &SharedMemory,
) -> Result<(), String> {
    let (na, nb) = (a.size(), b.size());
    // FILL the whole of a (RMEM output).
    let mut o = op([
        Param::Whole(a),
        Param::ValueInput { a: 3, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        o.returned_sizes[0] == Some(na),
        "FILL whole: size {:?}",
        o.returned_sizes[0]
    );
    ensure!(
        pattern_mismatch(&bytes(ctx, a.buffer())?, 3).is_none(),
        "FILL whole: wrong bytes"
    );
    // COPY part of a (RMEM input) into part of b (RMEM output).
    fill_shm(ctx, a, marker(9))?;
    fill_shm(ctx, b, |_| 0x11)?;
    let (off, len) = (PAGE_SIZE - 7, na.min(nb) - PAGE_SIZE);
    let mut o = op([
        Param::Partial {
            shm: a,
            offset: 5,
            size: len,
            dir: Direction::Input,
        },
        Param::Partial {
            shm: b,
            offset: off,
            size: nb - off,
            dir: Direction::Output,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::Partial { size, .. } if size == len),
        "partial output: size not written back"
    );
    let (ga, gb) = (bytes(ctx, a.buffer())?, bytes(ctx, b.buffer())?);
    let (off, len) = (off as usize, len as usize);
    ensure!(
        gb[..off].iter().all(|&x| x == 0x11),
        "COPY wrote before the partial output"
    );
    ensure!(
        gb[off..off + len] == ga[5..5 + len],
        "partial COPY: wrong bytes"
    );
    ensure!(
        gb[off + len..].iter().all(|&x| x == 0x11),
        "COPY wrote past the partial output"
    );
    // A temporary input into the whole of b; b back into a temporary.
    let t = buf(ctx, nb, 0x42, marker(4))?;
    let mut o = op([
        Param::TempInput(t),
        Param::Whole(b),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    let [Param::TempInput(t), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        bytes(ctx, b.buffer())? == bytes(ctx, &t)?,
        "COPY into whole b: wrong bytes"
    );
    let back = buf(ctx, nb, 0x900, |_| 0)?;
    let mut o = op([
        Param::Whole(b),
        Param::TempOutput(back),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(back), ..] = o.params else {
        return Err("params changed kind".into());
    };
    ensure!(
        bytes(ctx, &back)? == bytes(ctx, &t)?,
        "COPY from whole b: wrong bytes"
    );
    // A partial inout (RMEM inout) of a, written from another temporary.
    fill_shm(ctx, a, |_| 0x22)?;
    let inout_len = na.min(nb) - 2 * PAGE_SIZE;
    let t2 = buf(ctx, inout_len, 0x42, marker(6))?;
    let mut o = op([
        Param::TempInput(t2),
        Param::Partial {
            shm: a,
            offset: 0x801,
            size: na - 0x801,
            dir: Direction::Inout,
        },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::COPY, &mut o).map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::Partial { size, .. } if size == inout_len),
        "partial inout: size not written back"
    );
    let [Param::TempInput(t2), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let ga = bytes(ctx, a.buffer())?;
    let gt = bytes(ctx, &t2)?;
    let inout_len = inout_len as usize;
    ensure!(
        ga[0x801..0x801 + inout_len] == gt[..],
        "partial inout: wrong bytes"
    );
    ensure!(
        ga[..0x801].iter().all(|&x| x == 0x22),
        "partial inout: wrote before its offset"
    );
    ensure!(
        ga[0x801 + inout_len..].iter().all(|&x| x == 0x22),
        "partial inout: wrote past the copy"
    );
    free(ctx, t2);
    // SHA-256 of b through a partial memref and of the same bytes through a temporary agree,
    // and agree with this side's own SHA-256.
    let d1 = buf(ctx, 32, 0, |_| 0)?;
    let d2 = buf(ctx, 32, 0, |_| 0)?;
    let mut o = op([
        Param::Partial {
            shm: b,
            offset: 0,
            size: nb,
            dir: Direction::Input,
        },
        Param::TempOutput(d1),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(d1), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let mut o = op([
        Param::TempInput(t),
        Param::TempOutput(d2),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [Param::TempInput(t), Param::TempOutput(d2), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let local: [u8; 32] = Sha256::digest(bytes(ctx, &t)?).into();
    ensure!(
        bytes(ctx, &d1)? == local && bytes(ctx, &d2)? == local,
        "SHA-256 through the TEE differs from this side's"
    );
    for x in [t, back, d1, d2] {
        free(ctx, x);
    }
    Ok(())
}

#[cfg(not(feature = "fault-test"))]
fn registered(ctx: &mut Ctx, s: &Session) -> Outcome {
    // The caller's own buffer, unaligned, on scattered pages, registered.
    let a_buf = buf(ctx, 5 * PAGE_SIZE + 100, 0x123, marker(1))?;
    let a = ctx
        .register_shared_memory(a_buf.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    // Fresh pages the client API allocates and registers.
    let b = ctx
        .allocate_shared_memory(4 * PAGE_SIZE + 7, ShmFlags::INOUT)
        .map_err(teec)?;
    exercise_shared(ctx, s, &a, &b)?;
    let (va, pa, cached, pages) = where_is(ctx, s, &a, 0)?;
    let first = a_buf.pages.first().copied().unwrap_or(0);
    ensure!(
        pa == first + 0x123,
        "WHERE: PA {pa:#x}, the buffer starts at {:#x}",
        first + 0x123
    );
    ensure!(
        (WINDOW.0..WINDOW.1).contains(&va),
        "WHERE: VA {va:#x} outside the SHM window"
    );
    ensure!(
        va % PAGE_SIZE == 0x123,
        "WHERE: VA {va:#x} keeps not the offset"
    );
    ensure!(
        cached,
        "the registered buffer was not kept mapped between calls"
    );
    ensure!(
        pages == a_buf.pages.len() as u64,
        "WHERE: {pages} pages mapped"
    );
    ctx.release_shared_memory(a).map_err(teec)?;
    ctx.release_shared_memory(b).map_err(teec)?;
    let scattered = a_buf.pages.len() - 1 - adjacent(&a_buf.pages);
    free(ctx, a_buf);
    Ok(format!(
        "FILL whole, COPY partial->partial, temp->whole, whole->temp, temp->partial inout, SHA-256 x2 = local; \
         mapped at VA {va:#x} (cached, {pages} pages, {scattered} of 5 page steps non-adjacent)"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn large_registered(ctx: &mut Ctx, s: &Session) -> Outcome {
    let pages = 1100u64;
    let size = pages * PAGE_SIZE - 0x7ff - 5;
    let big = buf(ctx, size, 0x7ff, |_| 0)?;
    ensure!(big.pages.len() as u64 == pages, "{} pages", big.pages.len());
    let list_pages = teeshm_abi::page_list::list_pages_needed(pages);
    let shm = ctx
        .register_shared_memory(big.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    let (va, pa, cached, mapped) = where_is(ctx, s, &shm, 0)?;
    let first = big.pages.first().copied().unwrap_or(0);
    ensure!(
        pa == first + 0x7ff,
        "WHERE: PA {pa:#x}, the buffer starts at {:#x}",
        first + 0x7ff
    );
    ensure!(
        (WINDOW.0..WINDOW.1).contains(&va),
        "VA {va:#x} outside the window"
    );
    ensure!(
        !cached && mapped == pages,
        "first map: cached {cached}, {mapped} pages"
    );
    // The last byte: VA and PA of its own page.
    let (va_last, pa_last, cached, _) = where_is(ctx, s, &shm, size - 1)?;
    let last = big.pages.last().copied().unwrap_or(0);
    ensure!(
        pa_last == last + (0x7ff + size - 1) % PAGE_SIZE,
        "WHERE last byte: PA {pa_last:#x}"
    );
    ensure!(
        va_last == va + size - 1 && cached,
        "WHERE last byte: VA {va_last:#x}, cached {cached}"
    );
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x51, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let data = bytes(ctx, shm.buffer())?;
    if let Some(i) = pattern_mismatch(&data, 0x51) {
        return Err(format!("FILL of {size} bytes: byte {i} wrong"));
    }
    let d = buf(ctx, 32, 0x40, |_| 0)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::TempOutput(d),
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::SHA256, &mut o).map_err(teec)?;
    let [_, Param::TempOutput(d), ..] = o.params else {
        return Err("params changed kind".into());
    };
    let local: [u8; 32] = Sha256::digest(&data).into();
    ensure!(bytes(ctx, &d)? == local, "SHA-256 of {size} bytes differs");
    free(ctx, d);
    ctx.release_shared_memory(shm).map_err(teec)?;
    let adjacent = adjacent(&big.pages);
    free(ctx, big);
    Ok(format!(
        "{size} bytes, {list_pages} list pages; first byte at VA {va:#x} -> PA {pa:#x}, last at PA {pa_last:#x}; \
         FILL checked byte for byte, SHA-256 matches; {adjacent} of {} page steps adjacent",
        pages - 1
    ))
}

#[cfg(not(feature = "fault-test"))]
fn rpc_buffers(ctx: &mut Ctx, s: &Session) -> Outcome {
    let rpcs_before = ctx.driver_mut().conduit_mut().rpcs;
    let mut count = 0;
    for shm_type in [RpcShmType::Appl, RpcShmType::Kernel, RpcShmType::Global] {
        for size in [1u32, 4096, 70_000] {
            let mut o = op([
                Param::ValueInput {
                    a: size,
                    b: shm_type.raw() as u32,
                },
                Param::ValueOutput { a: 0, b: 0 },
                Param::None,
                Param::None,
            ]);
            ctx.invoke_command(s, cmd::RPC_BUFFER, &mut o)
                .map_err(|e| format!("{shm_type:?} {size}: {}", teec(e)))?;
            ensure!(
                matches!(o.params[1], Param::ValueOutput { a, .. } if a == size),
                "{shm_type:?} {size}: the TEE checked {:?}",
                o.params[1]
            );
            count += 1;
        }
    }
    let rpcs = ctx.driver_mut().conduit_mut().rpcs - rpcs_before;
    ensure!(
        ctx.driver().rpc_buffers_held() == 0,
        "{} RPC buffers not freed",
        ctx.driver().rpc_buffers_held()
    );
    Ok(format!(
        "{count} buffers of 1, 4096, 70000 bytes (APPL, KERNEL, GLOBAL) allocated, filled, checked, freed; {rpcs} RPCs"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn rpc_without_rpc_arg(ram: &NsRam) -> Outcome {
    let mut conduit = Conduit::new(0);
    conduit.mask_rpc_arg = true;
    let d = Driver::probe(conduit, ram.clone()).map_err(drv)?;
    ensure!(
        !d.uses_rpc_arg() && d.shm_cache_enabled(),
        "the driver did not take the RPC_FUNC_ALLOC path"
    );
    let mut c = Context::new(d);
    let s = c.open_session(MEMTEST_UUID).map_err(teec)?;
    for size in [1u32, 70_000, 4096] {
        let mut o = op([
            Param::ValueInput {
                a: size,
                b: RpcShmType::Kernel.raw() as u32,
            },
            Param::ValueOutput { a: 0, b: 0 },
            Param::None,
            Param::None,
        ]);
        c.invoke_command(&s, cmd::RPC_BUFFER, &mut o)
            .map_err(teec)?;
        ensure!(
            matches!(o.params[1], Param::ValueOutput { a, .. } if a == size),
            "size {size}: {:?}",
            o.params[1]
        );
    }
    c.close_session(s).map_err(teec)?;
    let mut d = c.into_driver();
    let (calls, rpcs) = (d.conduit_mut().calls, d.conduit_mut().rpcs);
    let held = d.rpc_buffers_held();
    d.shutdown().map_err(drv)?;
    ensure!(
        d.rpc_buffers_held() == 0,
        "{} buffers still held after DISABLE_SHM_CACHE",
        d.rpc_buffers_held()
    );
    Ok(format!(
        "3 buffers through RPC_FUNC_ALLOC-ed args, {rpcs} RPCs in {calls} SMCs; {held} cached RPC arg(s) handed back by DISABLE_SHM_CACHE"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn unregister(ctx: &mut Ctx, s: &Session) -> Outcome {
    let shm = ctx
        .allocate_shared_memory(3 * PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let cookie = shm.cookie();
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 2, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let (_, mapped_before, _, _) = check_core();
    ctx.release_shared_memory(shm).map_err(teec)?;
    let (_, mapped_after, _, _) = check_core();
    ensure!(
        mapped_after + 3 == mapped_before,
        "unregister left the mapping: {mapped_before} -> {mapped_after} pages"
    );
    // The cookie is unknown now: as a memref, and to a second unregister.
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, PAGE_SIZE, cookie),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "a memref of the unregistered cookie answered {ret:#x}"
    );
    let again = ctx.driver_mut().unregister(cookie);
    ensure!(
        matches!(
            again,
            Err(DriverError::Tee {
                ret: TEE_ERROR_BAD_PARAMETERS,
                ..
            })
        ),
        "a second unregister answered {again:?}"
    );
    Ok(format!(
        "cookie {cookie}: its 3 mapped pages went with the unregister; then BAD_PARAMETERS as a memref and to a 2nd unregister"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn vm_lifecycle(ctx: &mut Ctx, s: &Session, ram: &NsRam) -> Outcome {
    let ok = |r: SmcRegs| r.a0() == OPTEE_SMC_RETURN_OK;
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "VM_CREATED({GUEST}) refused"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "a second VM_CREATED({GUEST}) accepted"
    );
    ensure!(
        !ok(fast_as(GUEST, OPTEE_SMC_VM_CREATED, &[6])),
        "VM_CREATED from client {GUEST} accepted"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[0])),
        "VM_CREATED(0) accepted"
    );
    // The normal world now calls for guest 5 (a7 = 5): probe, session, a registered buffer.
    let d5 = Driver::probe(Conduit::new(GUEST), ram.clone()).map_err(drv)?;
    let mut c5 = Context::new(d5);
    let s5 = c5.open_session(MEMTEST_UUID).map_err(teec)?;
    let shm5 = c5
        .allocate_shared_memory(2 * PAGE_SIZE + 5, ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm5),
        Param::ValueInput { a: 5, b: 0 },
        Param::None,
        Param::None,
    ]);
    c5.invoke_command(&s5, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        pattern_mismatch(&bytes(&c5, shm5.buffer())?, 5).is_none(),
        "guest {GUEST}'s FILL wrong"
    );
    // Guest 0 cannot use guest 5's cookie.
    let foreign = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, 16, shm5.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &foreign))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "guest 0 used guest {GUEST}'s cookie: {ret:#x}"
    );
    let (_, mapped_before, _, _) = check_core();
    // The hypervisor destroys guest 5: everything of it goes.
    ensure!(
        !ok(fast_as(GUEST, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "VM_DESTROYED from client {GUEST} accepted"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "VM_DESTROYED({GUEST}) refused"
    );
    let (disagreements, mapped_after, _, _) = check_core();
    ensure!(
        disagreements == 0,
        "{disagreements} disagreements after the sweep"
    );
    ensure!(
        mapped_after < mapped_before,
        "guest {GUEST}'s mapping survived: {mapped_before} -> {mapped_after} pages"
    );
    let reply = c5
        .driver_mut()
        .call(header(OPTEE_MSG_CMD_OPEN_SESSION), &[])
        .map_err(drv)?;
    ensure!(
        reply.a0 == OPTEE_SMC_RETURN_ENOTAVAIL,
        "a call with a7 = {GUEST} now answered {:#x}",
        reply.a0
    );
    let fast5 = fast_as(GUEST, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0();
    ensure!(
        fast5 == OPTEE_SMC_RETURN_ENOTAVAIL,
        "a fast call with a7 = {GUEST} answered {fast5:#x}"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "destroying an unknown guest is not OK"
    );
    ensure!(
        !ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[0])),
        "VM_DESTROYED(0) accepted"
    );
    // A new guest 5 knows nothing of the old one's cookie.
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_CREATED, &[GUEST])),
        "VM_CREATED({GUEST}) again refused"
    );
    let d5 = Driver::probe(Conduit::new(GUEST), ram.clone()).map_err(drv)?;
    let mut c5b = Context::new(d5);
    let s5b = c5b.open_session(MEMTEST_UUID).map_err(teec)?;
    let ret = ret_of(invoke_raw(&mut c5b, &s5b, cmd::FILL, &foreign))?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "the new guest {GUEST} found the old cookie: {ret:#x}"
    );
    ensure!(
        ok(fast_as(0, OPTEE_SMC_VM_DESTROYED, &[GUEST])),
        "final VM_DESTROYED refused"
    );
    // The TEE forgot guest 5's pages: the normal world may reuse them.
    let pages = shm5.buffer().clone();
    let mut ram5 = ram.clone();
    pages.free(&mut ram5);
    let (disagreements, _, _, _) = check_core();
    ensure!(
        disagreements == 0,
        "{disagreements} disagreements at the end"
    );
    Ok(format!(
        "guest {GUEST} made, used (session, buffer, FILL), swept by VM_DESTROYED ({mapped_before} -> {mapped_after} window pages); \
         then a7 = {GUEST} gets ENOTAVAIL; only client 0 may create or destroy"
    ))
}

/// REGISTER_SHM of a hand-made tmem; returns the message's `ret`.
#[cfg(not(feature = "fault-test"))]
fn register_raw(ctx: &mut Ctx, buf_ptr: u64, size: u64, cookie: u64) -> Result<u32, String> {
    let param = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    );
    ret_of(
        ctx.driver_mut()
            .call(header(OPTEE_MSG_CMD_REGISTER_SHM), &[param])
            .map_err(drv),
    )
}

/// A page of guest RAM holding `words` (a hand-made list page).
#[cfg(not(feature = "fault-test"))]
fn list_page(ctx: &mut Ctx, words: &[u64]) -> Result<u64, String> {
    let page = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| format!("guest RAM: {e}"))?
        .first()
        .copied()
        .ok_or("no page")?;
    let mut raw = vec![0u8; PAGE_SIZE as usize];
    for (chunk, w) in raw.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    ctx.driver()
        .ram()
        .write(page, &raw)
        .map_err(|e| format!("guest RAM: {e}"))?;
    Ok(page)
}

#[cfg(not(feature = "fault-test"))]
fn free_page(ctx: &mut Ctx, page: u64) {
    ctx.driver_mut().ram_mut().free_pages(&[page]);
}

#[cfg(not(feature = "fault-test"))]
fn hostile_pages(ctx: &mut Ctx, s: &Session) -> Outcome {
    let good = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let good = good.first().copied().ok_or("no page")?;
    let mut n = 0;
    for (what, pa) in [
        ("secure RAM", SECURE_RAM + 0x10_0000),
        ("EL3's own state", SECURE_RAM),
        ("the UART", 0x0900_0000),
        ("secure flash", 0),
        ("no memory at all", 0x8000_0000),
    ] {
        let evil = GuestBuffer {
            pages: vec![good, pa],
            offset: 0,
            size: 2 * PAGE_SIZE,
        };
        let cookie = ctx.driver_mut().new_cookie();
        let r = ctx.driver_mut().register(&evil, cookie);
        ensure!(
            matches!(
                r,
                Err(DriverError::Tee {
                    ret: TEE_ERROR_BAD_PARAMETERS,
                    ..
                })
            ),
            "registering a list naming {what} ({pa:#x}) answered {r:?}"
        );
        // The same pages as a temporary output: the TEE would write there if it mapped them.
        let mut o = op([
            Param::TempOutput(evil),
            Param::ValueInput { a: 1, b: 0 },
            Param::None,
            Param::None,
        ]);
        let r = ctx.invoke_command(s, cmd::FILL, &mut o);
        ensure!(
            r.map_err(|e| e.code) == Err(TEE_ERROR_BAD_PARAMETERS),
            "FILL into a temporary memref on {what} answered {r:?}"
        );
        n += 2;
    }
    free_page(ctx, good);
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "{n} registrations and temporary memrefs refused with BAD_PARAMETERS; nothing mapped"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn hostile_list_location(ctx: &mut Ctx) -> Outcome {
    for (what, list) in [
        ("secure RAM", SECURE_RAM + 0x20_0000),
        ("EL3's own state", SECURE_RAM + 0x1000),
        ("the UART", 0x0900_0000),
        ("secure flash", 0x1000),
    ] {
        let cookie = ctx.driver_mut().new_cookie();
        let ret = register_raw(ctx, list, PAGE_SIZE, cookie)?;
        ensure!(
            ret != TEE_SUCCESS,
            "a list page in {what} ({list:#x}) was accepted"
        );
        ensure!(
            ret == TEE_ERROR_BAD_PARAMETERS,
            "a list page in {what}: {ret:#x}"
        );
    }
    // A chain whose second list page lies in secure RAM.
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(512)
        .map_err(|e| e.to_string())?;
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(SECURE_RAM + 0x30_0000);
    let first = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, first, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "a chain into secure RAM: {ret:#x}"
    );
    free_page(ctx, first);
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok("list pages in secure RAM, EL3's pages, the UART, flash, and a chain's next page in secure RAM: all refused".into())
}

#[cfg(not(feature = "fault-test"))]
fn hostile_unaligned(ctx: &mut Ctx) -> Outcome {
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(512)
        .map_err(|e| e.to_string())?;
    // An unaligned data-page entry.
    let first = data.first().copied().unwrap_or(0);
    let list = list_page(ctx, &[first + 0x123])?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, list, 100, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "an unaligned entry: {ret:#x}"
    );
    free_page(ctx, list);
    // An unaligned next pointer.
    let second = list_page(ctx, &[data.last().copied().unwrap_or(0)])?;
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(second + 8);
    let list = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, list, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_ERROR_BAD_PARAMETERS,
        "an unaligned next pointer: {ret:#x}"
    );
    // The same chain, aligned, is fine (so the refusals were for the alignment).
    let mut words: Vec<u64> = data.iter().take(511).copied().collect();
    words.push(second);
    let good = list_page(ctx, &words)?;
    let cookie = ctx.driver_mut().new_cookie();
    let ret = register_raw(ctx, good, 512 * PAGE_SIZE, cookie)?;
    ensure!(
        ret == TEE_SUCCESS,
        "the aligned chain was refused: {ret:#x}"
    );
    ctx.driver_mut().unregister(cookie).map_err(drv)?;
    for p in [list, second, good] {
        free_page(ctx, p);
    }
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok("an entry at +0x123 and a next pointer at +8 refused; the same 512-page chain aligned is accepted".into())
}

#[cfg(not(feature = "fault-test"))]
fn hostile_sizes(ctx: &mut Ctx) -> Outcome {
    let data = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let list = list_page(ctx, &data)?;
    let mut n = 0;
    for (what, buf_ptr, size) in [
        ("1 TiB", list, 1u64 << 40),
        ("u64::MAX", list, u64::MAX),
        ("offset + size overflowing", list | 0xfff, u64::MAX - 0x10),
        (
            "more pages than a buffer may have",
            list,
            32_769 * PAGE_SIZE,
        ),
        ("zero", list, 0),
    ] {
        let cookie = ctx.driver_mut().new_cookie();
        let ret = register_raw(ctx, buf_ptr, size, cookie)?;
        ensure!(ret == TEE_ERROR_BAD_PARAMETERS, "size {what}: {ret:#x}");
        n += 1;
    }
    free_page(ctx, list);
    ctx.driver_mut().ram_mut().free_pages(&data);
    Ok(format!(
        "{n} sizes (1 TiB, u64::MAX, an overflowing offset, 32769 pages, 0) refused before the list is read"
    ))
}

#[cfg(not(feature = "fault-test"))]
fn hostile_cookies(ctx: &mut Ctx, s: &Session) -> Outcome {
    for cookie in [0xdead_beefu64, 0, u64::MAX] {
        let params = [
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, Rmem::new(0, 16, cookie)),
            MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
        ];
        let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
        ensure!(
            ret == TEE_ERROR_BAD_PARAMETERS,
            "memref of cookie {cookie:#x}: {ret:#x}"
        );
        let r = ctx.driver_mut().unregister(cookie);
        ensure!(
            matches!(
                r,
                Err(DriverError::Tee {
                    ret: TEE_ERROR_BAD_PARAMETERS,
                    ..
                })
            ),
            "unregister of cookie {cookie:#x}: {r:?}"
        );
    }
    // A real buffer, addressed out of its bounds.
    let shm = ctx
        .allocate_shared_memory(PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(PAGE_SIZE - 8, 16, shm.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(1, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    ensure!(
        ret == TEE_ERROR_SECURITY,
        "a memref past its buffer: {ret:#x}"
    );
    ctx.release_shared_memory(shm).map_err(teec)?;
    Ok("cookies 0xdeadbeef, 0, u64::MAX: BAD_PARAMETERS as memrefs and to unregister; a memref past its buffer: SECURITY".into())
}

#[cfg(not(feature = "fault-test"))]
fn hostile_args(ctx: &mut Ctx) -> Outcome {
    let call = |pa: u64| fast(OPTEE_SMC_CALL_WITH_ARG, &[pa >> 32, pa & 0xffff_ffff, 0]).a0();
    for (what, pa) in [
        ("in secure RAM", SECURE_RAM + 0x40_0000),
        ("in EL3's state", SECURE_RAM),
        ("in the UART", 0x0900_0000),
        ("at 0", 0),
        ("beyond RAM", 0x1_0000_0000),
    ] {
        let r = call(pa);
        ensure!(
            r == OPTEE_SMC_RETURN_EBADADDR,
            "an arg {what} ({pa:#x}): {r:#x}"
        );
    }
    // An arg whose params run past its page.
    let page = ctx
        .driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| e.to_string())?;
    let page = page.first().copied().ok_or("no page")?;
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.num_params.set(4);
    let at = page + PAGE_SIZE - 64;
    ctx.driver()
        .ram()
        .write(at, h.as_bytes())
        .map_err(|e| e.to_string())?;
    let r = call(at);
    ensure!(
        r == OPTEE_SMC_RETURN_EBADADDR,
        "an arg crossing its page: {r:#x}"
    );
    // Too many params.
    h.num_params.set(200);
    ctx.driver()
        .ram()
        .write(page, h.as_bytes())
        .map_err(|e| e.to_string())?;
    let r = call(page);
    ensure!(
        r == OPTEE_SMC_RETURN_EBADCMD,
        "an arg of 200 params: {r:#x}"
    );
    free_page(ctx, page);
    Ok("args in secure RAM, EL3, the UART, at 0, beyond RAM, crossing a page: EBADADDR; 200 params: EBADCMD".into())
}

#[cfg(not(feature = "fault-test"))]
fn hostile_registers() -> Outcome {
    let r = fast_as(0x1_0000, OPTEE_SMC_CALL_WITH_ARG, &[0, 0x4400_0000, 0]).a0();
    ensure!(r == OPTEE_SMC_RETURN_ENOTAVAIL, "a7 = 0x10000: {r:#x}");
    let r = fast_as(u64::MAX, OPTEE_SMC_CALL_WITH_ARG, &[0, 0x4400_0000, 0]).a0();
    ensure!(r == OPTEE_SMC_RETURN_ENOTAVAIL, "a7 = u64::MAX: {r:#x}");
    let r = fast_as(77, OPTEE_SMC_CALL_WITH_ARG, &[0, 0x4400_0000, 0]).a0();
    ensure!(
        r == OPTEE_SMC_RETURN_ENOTAVAIL,
        "a7 of a guest never created: {r:#x}"
    );
    for thread in [0u64, 3, 4, 1 << 40, u64::MAX] {
        let r = fast(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).a0();
        ensure!(
            r == OPTEE_SMC_RETURN_ERESUME,
            "RETURN_FROM_RPC to thread {thread:#x}: {r:#x}"
        );
    }
    Ok("client ids 0x10000, u64::MAX, 77: ENOTAVAIL; RETURN_FROM_RPC with no call suspended (5 threads): ERESUME".into())
}

#[cfg(not(feature = "fault-test"))]
fn still_alive(ctx: &mut Ctx, s: &Session) -> Outcome {
    let shm = ctx
        .allocate_shared_memory(7 * PAGE_SIZE, ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x77, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    ensure!(
        pattern_mismatch(&bytes(ctx, shm.buffer())?, 0x77).is_none(),
        "FILL wrong"
    );
    ctx.release_shared_memory(shm).map_err(teec)?;
    let (disagreements, mapped, tables, calls) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "a 7-page buffer registered, filled, checked, released; {mapped} pages mapped, {tables} table pages, {calls} calls so far"
    ))
}
