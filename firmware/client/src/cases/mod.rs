//! The cases of the normal-world test client, in the order they run. Each prints one line:
//! `ok   <case> [<ms> ms]: <what was seen>` or `FAIL <case> [<ms> ms]: <why>`.
//!
//! Everything goes over real SMCs: identity and capabilities as raw fast calls, sessions,
//! memrefs, registration and RPC through `teeshm-nw` (the Linux-shaped driver and the
//! GlobalPlatform-shaped client API), and the hostile cases as hand-made page lists, args and
//! registers. Every byte the TEE reads or writes is checked on this side.
#![cfg_attr(any(feature = "fault-test", feature = "xen-domu"), allow(unused))]

use crate::ram::NsRam;
use crate::smc::{self, Conduit};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_fw_common::{fid, println, time};
use teeshm_nw::client::{Context, Operation, Param, Session, SharedMemory, TeecError};
use teeshm_nw::driver::header;
use teeshm_nw::{Driver, DriverError, GuestBuffer, PAGE_SIZE};

type Ctx = Context<Conduit, NsRam>;
type Outcome = Result<String, String>;

/// Secure RAM (QEMU `virt`): what no page list may name.
const SECURE_RAM: u64 = 0x0e00_0000;
/// Where the S-EL1 core's SHM window lies: the window of the core's `qemu_virt` preset, which
/// the firmware boots with (`teeshm_fw_tee::WINDOW_BASE`, `WINDOW_SIZE`).
fn window() -> core::ops::Range<u64> {
    let va = teeshm_core::CoreConfig::qemu_virt(teeshm_core::NormalWorld::Single)
        .window
        .va;
    va.base.0..va.base.0 + va.size
}
/// A client id a hypervisor would give a guest: this core (one normal world) ignores it.
const GUEST: u64 = 5;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

// The groups of cases, in the order `run` calls them (the macro above is theirs too).
#[cfg(not(feature = "fault-test"))]
mod exhaust;
mod fast_calls;
#[cfg(not(feature = "fault-test"))]
mod hostile;
#[cfg(not(feature = "fault-test"))]
mod memrefs;
#[cfg(not(feature = "fault-test"))]
mod shared;
#[cfg(not(feature = "fault-test"))]
mod smp;
#[cfg(not(feature = "fault-test"))]
mod suspend;
#[cfg(not(feature = "fault-test"))]
mod ta;
#[cfg(not(feature = "fault-test"))]
mod vm;
#[cfg(all(feature = "xen-domu", not(feature = "fault-test")))]
pub mod xen_domu;

#[cfg(not(feature = "fault-test"))]
use fast_calls::unknown_ids;
use fast_calls::{capabilities, fp_preserved, identity, psci};
#[cfg(not(feature = "fault-test"))]
use hostile::{
    hostile_args, hostile_cookies, hostile_list_location, hostile_pages, hostile_registers,
    hostile_sizes, hostile_unaligned, still_alive,
};
#[cfg(not(feature = "fault-test"))]
use memrefs::{sha256, short_buffer, temporary, values};
#[cfg(not(feature = "fault-test"))]
use shared::{
    large_registered, registered, rpc_buffers, rpc_without_rpc_arg, unregister, unregister_in_use,
};
#[cfg(not(feature = "fault-test"))]
use vm::single_normal_world;

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
    check_core_with(0)
}

/// [`check_core`] with x1 = `flags` ([`fid::CHECK_FINAL`] for the run's last).
fn check_core_with(flags: u64) -> (u64, u64, u64, u64) {
    let r = fast(fid::SIP_TEESHM_CHECK, &[flags]);
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

/// A secondary CPU's part of the every-CPU group (see `smp`).
#[cfg(not(feature = "fault-test"))]
pub fn every_cpu_worker(cpu: usize) {
    smp::worker(cpu);
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
            "unregister of a buffer a waiting call holds: revoked at once",
            || unregister_in_use(&mut ctx, &session),
        );
        case("one normal world, no hypervisor: a7 names nobody", || {
            single_normal_world(&mut ctx, &session, &ram)
        });
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
        case(
            "hostile: RPC returns to threads that wait for nothing",
            hostile_registers,
        );
        exhaust::group(&mut ctx, &session);
        case("every CPU at once, each with a driver of its own", || {
            smp::every_cpu(&mut ctx, &session)
        });
        ta::group(&mut ctx, &session);
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
                let (disagreements, mapped, tables, calls) = check_core_with(fid::CHECK_FINAL);
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
