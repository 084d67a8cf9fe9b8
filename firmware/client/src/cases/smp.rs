//! Every CPU at once: the boot CPU brings the others up with PSCI `CPU_ON`, and each runs a
//! driver of its own (its own pages, its own session) through register / invoke with every
//! memref kind / release rounds, its slice of a buffer the boot CPU registered for all, and
//! SCRUBs long enough that its timer's interrupt must be let through (`RPC_FOREIGN_INTR`,
//! served by the conduit as a handler would). One CPU unregisters a buffer the others are
//! filling, and one answers a call another CPU left waiting. Then each secondary CPU turns
//! itself off with `CPU_OFF`, which `AFFINITY_INFO` must show. The workers print nothing (the
//! UART is one for all CPUs): each leaves its outcome in [`OUTCOMES`], and the boot CPU
//! reports.

use super::suspend;
use super::{Ctx, buf, bytes, drv, fast, invoke_raw, marker, op, pattern_mismatch, ret_of, teec};
use crate::ram::NsRam;
use crate::smc::Conduit;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use sha2::{Digest, Sha256};
use teeshm_abi::gp::{TEE_ERROR_ACCESS_CONFLICT, TEE_ERROR_BAD_PARAMETERS, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_fw_common::cpu::MAX_CPUS;
use teeshm_fw_common::fid::psci;
use teeshm_fw_common::time;
use teeshm_nw::client::{Context, Param, Session, ShmFlags};
use teeshm_nw::{Driver, PAGE_SIZE};

/// Rounds each CPU runs.
const ROUNDS: u64 = 12;
/// Bytes of each CPU's slice of the shared buffer.
const SLICE: u64 = 5000;
/// Where CPU n's own pages lie: 16 MiB from `0x4f00_0000 + n * 16 MiB` (client.ld).
const POOLS: u64 = 0x4f00_0000;
const POOL_SIZE: u64 = 16 << 20;
/// How long the boot CPU waits for the others.
const WAIT_US: u64 = 120_000_000;

/// One CPU's outcome: `state` 0 = running, 1 = passed, 2 = failed (`why` then holds a line).
struct Outcome {
    state: AtomicU64,
    calls: AtomicU64,
    foreign_interrupts: AtomicU64,
}

static OUTCOMES: [Outcome; MAX_CPUS] = [const {
    Outcome {
        state: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        foreign_interrupts: AtomicU64::new(0),
    }
}; MAX_CPUS];
/// Why a CPU failed.
static WHY: spin::Mutex<[Option<String>; MAX_CPUS]> = spin::Mutex::new([const { None }; MAX_CPUS]);
/// The shared buffer's cookie and size, set by the boot CPU before any other CPU starts.
static SHARED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// A buffer the boot CPU registers, every CPU fills its slice of each round, and the first
/// other CPU unregisters in the middle of its rounds while the others may be filling it: its
/// cookie (0: none), whether its unregister may have started, and what the fills met
/// (SUCCESS; after the unregister also ACCESS_CONFLICT, a fill the revocation cut, or
/// BAD_PARAMETERS, the cookie unknown).
static VICTIM: AtomicU64 = AtomicU64::new(0);
static VICTIM_GONE: AtomicU64 = AtomicU64::new(0);
static VICTIM_SEEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// The round in which that CPU unregisters it.
const VICTIM_ROUND: u64 = ROUNDS / 2;

/// A TEE thread the boot CPU left waiting in an RPC for the first other CPU to answer
/// (`u64::MAX`: none), and what that CPU saw: the `a0` the call ended with.
static HANDED_OVER: AtomicU64 = AtomicU64::new(u64::MAX);
static HANDOVER_END: AtomicU64 = AtomicU64::new(u64::MAX);

/// Answers the RPCs of the boot CPU's waiting call from this CPU, as a normal world whose
/// task moved to another CPU would (every answer empty: the call ends with an error of its
/// own, cleanly); records how the call ended.
fn answer_handed_over_call() {
    let thread = HANDED_OVER.swap(u64::MAX, Ordering::AcqRel);
    if thread == u64::MAX {
        return;
    }
    let mut out = fast(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]);
    for _ in 0..8 {
        if !is_rpc_return(out.a0()) {
            break;
        }
        out = fast(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, out.a[3]]);
    }
    HANDOVER_END.store(out.a[0], Ordering::Release);
}

unsafe extern "C" {
    /// Where a CPU that `CPU_ON` brings up starts (main.rs; x0 = its index).
    fn client_secondary_entry();
}

/// A CPU's work; its outcome goes to [`OUTCOMES`].
pub(crate) fn worker(cpu: usize) {
    let result = work(cpu);
    let out = &OUTCOMES[cpu % MAX_CPUS];
    match result {
        Ok((calls, foreign)) => {
            out.calls.store(calls, Ordering::Relaxed);
            out.foreign_interrupts.store(foreign, Ordering::Relaxed);
            out.state.store(1, Ordering::Release);
        }
        Err(why) => {
            WHY.lock()[cpu % MAX_CPUS] = Some(why);
            out.state.store(2, Ordering::Release);
        }
    }
}

fn work(cpu: usize) -> Result<(u64, u64), String> {
    if cpu != 0 {
        answer_handed_over_call();
    }
    let base = POOLS + cpu as u64 * POOL_SIZE;
    let ticks = time::frequency() / 2000;
    let conduit = Conduit {
        serve_interrupts: Some(ticks),
        ..Conduit::new(0)
    };
    let mut driver = Driver::probe(conduit, NsRam::over(base, base + POOL_SIZE)).map_err(drv)?;
    // Cookies of its own: the CPUs' drivers share one normal world.
    driver.set_cookie_base((cpu as u64 + 1) << 40);
    let interrupts = crate::irq::init_cpu(cpu);
    let mut ctx = Context::new(driver);
    let s = ctx.open_session(MEMTEST_UUID).map_err(teec)?;
    let [shared, _] = SHARED.each_ref().map(|a| a.load(Ordering::Acquire));
    for r in 0..ROUNDS {
        let seed = cpu as u64 * 1000 + r;
        // Its own buffer, registered: FILL whole, SHA-256 partial into a temporary, COPY from a
        // temporary into part of it.
        let size = 3 * PAGE_SIZE + 100 + cpu as u64 * 333;
        let own = buf(&mut ctx, size, cpu as u64 * 17, |_| 0)?;
        let shm = ctx
            .register_shared_memory(own.clone(), ShmFlags::INOUT)
            .map_err(teec)?;
        let mut o = op([
            Param::Whole(&shm),
            Param::ValueInput {
                a: seed as u32,
                b: 0,
            },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::FILL, &mut o).map_err(teec)?;
        if let Some(i) = pattern_mismatch(&bytes(&ctx, &own)?, seed & 0xffff_ffff) {
            return Err(format!("round {r}: FILL byte {i}"));
        }
        let digest = buf(&mut ctx, 32, 0, |_| 0)?;
        let mut o = op([
            Param::Partial {
                shm: &shm,
                offset: 5,
                size: size - 10,
                dir: teeshm_nw::client::Direction::Input,
            },
            Param::TempOutput(digest),
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::SHA256, &mut o).map_err(teec)?;
        let [_, Param::TempOutput(digest), ..] = o.params else {
            return Err("params changed kind".into());
        };
        let whole = bytes(&ctx, &own)?;
        let want = Sha256::digest(whole.get(5..whole.len() - 5).unwrap_or_default());
        if bytes(&ctx, &digest)?.as_slice() != want.as_slice() {
            return Err(format!("round {r}: SHA-256 of a partial memref differs"));
        }
        let input = buf(&mut ctx, size / 2, 7, marker(seed))?;
        let mut o = op([
            Param::TempInput(input),
            Param::Partial {
                shm: &shm,
                offset: size / 4,
                size: size / 2,
                dir: teeshm_nw::client::Direction::Output,
            },
            Param::None,
            Param::None,
        ]);
        ctx.invoke_command(&s, cmd::COPY, &mut o).map_err(teec)?;
        let [Param::TempInput(input), ..] = o.params else {
            return Err("params changed kind".into());
        };
        let sent = bytes(&ctx, &input)?;
        let got = bytes(&ctx, &own)?;
        if got.get((size / 4) as usize..(size / 4 + size / 2) as usize) != Some(sent.as_slice()) {
            return Err(format!("round {r}: COPY into a partial memref differs"));
        }
        ctx.release_shared_memory(shm).map_err(teec)?;
        for b in [own, digest, input] {
            b.free(ctx.driver_mut().ram_mut());
        }
        // Its slice of the buffer the CPUs share (the boot CPU checks the slices).
        let params = [
            MsgParam::from_rmem(
                OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
                Rmem::new(cpu as u64 * SLICE, SLICE, shared),
            ),
            MsgParam::from_value(
                OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
                Value::new(0x100 + cpu as u64, 0, 0),
            ),
        ];
        let ret = ret_of(invoke_raw(&mut ctx, &s, cmd::FILL, &params))?;
        if ret != TEE_SUCCESS {
            return Err(format!(
                "round {r}: FILL of the shared slice answered {ret:#x}"
            ));
        }
        // Its slice of the victim buffer, which one CPU unregisters meanwhile.
        victim_round(&mut ctx, &s, cpu, r)?;
        // Now and then a long call, with the timer armed.
        if r % 4 == 3 {
            scrub(&mut ctx, &s, seed, interrupts.then_some(ticks))?;
        }
    }
    ctx.close_session(s).map_err(teec)?;
    let mut d = ctx.into_driver();
    // No `shutdown` here: the SHM cache (which it disables) is the whole normal world's, and
    // the core refuses to disable it while another CPU's call runs (EBUSY); Linux waits for a
    // call to end and retries. The boot CPU's driver shuts down after every CPU is done. With
    // RPC_ARG the cache is never on, so nothing is held in it.
    if d.rpc_buffers_held() != 0 {
        return Err(format!(
            "{} RPC buffers held at the end",
            d.rpc_buffers_held()
        ));
    }
    let c = d.conduit_mut();
    Ok((c.calls, c.foreign_interrupts))
}

/// One round's FILL of this CPU's slice of the victim buffer; the first other CPU (1)
/// unregisters it at [`VICTIM_ROUND`]. A FILL that started and ended with the buffer known
/// registered must pass; any other may also meet the unregister, as ACCESS_CONFLICT or
/// BAD_PARAMETERS, never anything else.
fn victim_round(ctx: &mut Ctx, s: &Session, cpu: usize, r: u64) -> Result<(), String> {
    let cookie = VICTIM.load(Ordering::Acquire);
    if cookie == 0 {
        return Ok(());
    }
    if cpu == 1 && r == VICTIM_ROUND {
        // Said before the UNREGISTER starts: a fill that began and ended before this store
        // had the buffer registered throughout.
        VICTIM_GONE.store(1, Ordering::Release);
        ctx.driver_mut()
            .unregister(cookie)
            .map_err(|e| format!("round {r}: UNREGISTER of the victim: {e}"))?;
        return Ok(());
    }
    let before = VICTIM_GONE.load(Ordering::Acquire);
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(cpu as u64 * SLICE, SLICE, cookie),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(r, 0, 0)),
    ];
    let ret = ret_of(invoke_raw(ctx, s, cmd::FILL, &params))?;
    let after = VICTIM_GONE.load(Ordering::Acquire);
    let kind = match ret {
        TEE_SUCCESS => 0,
        TEE_ERROR_ACCESS_CONFLICT => 1,
        TEE_ERROR_BAD_PARAMETERS => 2,
        other => return Err(format!("round {r}: FILL of the victim answered {other:#x}")),
    };
    if before == 0 && after == 0 && kind != 0 {
        return Err(format!(
            "round {r}: FILL of the victim answered {ret:#x} while it was registered"
        ));
    }
    VICTIM_SEEN[kind].fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A SCRUB of 256 KiB, 2 rounds, every byte checked; with `timer`, the timer armed that many
/// ticks ahead first (the conduit re-arms it at each interrupt, and it is stopped after).
fn scrub(ctx: &mut Ctx, s: &Session, seed: u64, timer: Option<u64>) -> Result<(), String> {
    let size = 256 * 1024;
    let b = buf(ctx, size, 0, |_| 0)?;
    let shm = ctx
        .register_shared_memory(b.clone(), ShmFlags::INOUT)
        .map_err(teec)?;
    let params = [
        MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            Rmem::new(0, size, shm.cookie()),
        ),
        MsgParam::from_value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Value::new(seed, 2, 0)),
        MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
    ];
    if let Some(ticks) = timer {
        crate::irq::arm_timer(ticks);
    }
    let reply = invoke_raw(ctx, s, cmd::SCRUB, &params);
    crate::irq::stop_timer();
    let reply = reply?;
    reply.check().map_err(drv)?;
    let checked = reply.params.get(2).ok_or("no param 2")?.value().a.get();
    let bad = pattern_mismatch(&bytes(ctx, &b)?, seed + 1);
    ctx.release_shared_memory(shm).map_err(teec)?;
    b.free(ctx.driver_mut().ram_mut());
    if checked != 2 * size {
        return Err(format!("SCRUB checked {checked} bytes"));
    }
    if let Some(i) = bad {
        return Err(format!("SCRUB left byte {i} wrong"));
    }
    Ok(())
}

/// The group: run from the boot CPU with its context `ctx` (which registers the shared
/// buffer). Returns the case's line.
pub(super) fn every_cpu(ctx: &mut Ctx, session: &Session) -> Result<String, String> {
    let me = teeshm_fw_common::cpu::this();
    // The CPUs the machine has: AFFINITY_INFO is OFF for a parked one, INVALID_PARAMETERS
    // for none.
    let others: Vec<usize> = (0..MAX_CPUS)
        .filter(|&i| i != me)
        .filter(|&i| fast(psci::AFFINITY_INFO_64, &[i as u64, 0]).a[0] == psci::AFFINITY_OFF)
        .collect();
    let cpus = others.len() + 1;
    let shared = buf(ctx, cpus as u64 * SLICE, 0x80, |_| 0)?;
    let cookie = ctx.driver_mut().new_cookie();
    ctx.driver_mut().register(&shared, cookie).map_err(drv)?;
    SHARED[0].store(cookie, Ordering::Release);
    SHARED[1].store(cpus as u64 * SLICE, Ordering::Release);
    // The victim, when there is another CPU to unregister it.
    let victim = if others.contains(&1) {
        let v = buf(ctx, cpus as u64 * SLICE, 0x10, |_| 0)?;
        let c = ctx.driver_mut().new_cookie();
        ctx.driver_mut().register(&v, c).map_err(drv)?;
        VICTIM.store(c, Ordering::Release);
        Some(v)
    } else {
        None
    };
    // A call of this CPU left waiting in its first RPC, for another CPU to answer.
    let handed = if others.is_empty() {
        None
    } else {
        match suspend::start(ctx, session, 4096, 0x33, &[])? {
            Ok(call) => {
                HANDED_OVER.store(call.thread(), Ordering::Release);
                Some(call)
            }
            Err(a0) => return Err(format!("the call to hand over was refused with {a0:#x}")),
        }
    };
    for &i in &others {
        let r = fast(
            psci::CPU_ON_64,
            &[
                i as u64,
                client_secondary_entry as *const () as u64,
                i as u64,
            ],
        );
        if r.a[0] != 0 {
            return Err(format!("CPU_ON of CPU {i} answered {:#x}", r.a[0]));
        }
    }
    let again = fast(
        psci::CPU_ON_64,
        &[others.first().copied().unwrap_or(me) as u64, 0x4020_0000, 0],
    )
    .a[0];
    worker(me);
    let started = time::micros();
    let all: Vec<usize> = core::iter::once(me).chain(others.iter().copied()).collect();
    while all
        .iter()
        .any(|&i| OUTCOMES[i].state.load(Ordering::Acquire) == 0)
    {
        if time::micros().saturating_sub(started) > WAIT_US {
            return Err("a CPU never finished (see the monitor's counters)".into());
        }
        core::hint::spin_loop();
    }
    // Each secondary turns itself off after its work.
    let off_started = time::micros();
    for &i in &others {
        while fast(psci::AFFINITY_INFO_64, &[i as u64, 0]).a[0] != psci::AFFINITY_OFF {
            if time::micros().saturating_sub(off_started) > 10_000_000 {
                return Err(format!("CPU {i} did not turn off"));
            }
        }
    }
    // The handed-over call ended on the other CPU; answering it here now is refused.
    let mut handover = String::new();
    if let Some(call) = handed {
        let thread = call.thread();
        suspend::give_back(ctx, call);
        let ended = HANDOVER_END.load(Ordering::Acquire);
        let late = fast(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).a[0];
        if ended != u64::from(OPTEE_SMC_RETURN_OK) {
            return Err(format!(
                "the call answered from another CPU ended with {ended:#x}"
            ));
        }
        if late != u64::from(OPTEE_SMC_RETURN_ERESUME) {
            return Err(format!("a late answer for thread {thread} got {late:#x}"));
        }
        handover = format!(
            "; a call left waiting here ended when CPU {} answered its RPCs, a late answer from here got ERESUME",
            others.first().copied().unwrap_or(0)
        );
    }
    let mut victim_note = String::new();
    if let Some(v) = victim {
        // CPU 1 unregistered it; the pages are this normal world's again.
        v.free(ctx.driver_mut().ram_mut());
        if VICTIM_GONE.load(Ordering::Acquire) == 0 {
            return Err("CPU 1 never unregistered the victim buffer".into());
        }
        let [ok, conflict, unknown] = VICTIM_SEEN.each_ref().map(|a| a.load(Ordering::Relaxed));
        victim_note = format!(
            "; a buffer unregistered by CPU 1 while the others filled it: {ok} fills passed, {conflict} cut (ACCESS_CONFLICT), {unknown} after it (BAD_PARAMETERS)"
        );
    }
    let data = bytes(ctx, &shared)?;
    ctx.driver_mut().unregister(cookie).map_err(drv)?;
    shared.free(ctx.driver_mut().ram_mut());
    let why = WHY.lock();
    for &i in &all {
        if let Some(w) = &why[i] {
            return Err(format!("CPU {i}: {w}"));
        }
        let slice = data
            .get(i * SLICE as usize..(i + 1) * SLICE as usize)
            .ok_or("shared buffer too short")?;
        if let Some(b) = pattern_mismatch(slice, 0x100 + i as u64) {
            return Err(format!(
                "CPU {i}'s slice of the shared buffer: byte {b} wrong"
            ));
        }
    }
    if !others.is_empty() && again != psci::ALREADY_ON && again != psci::ON_PENDING {
        return Err(format!(
            "a second CPU_ON of a started CPU answered {again:#x}"
        ));
    }
    let calls: u64 = all
        .iter()
        .map(|&i| OUTCOMES[i].calls.load(Ordering::Relaxed))
        .sum();
    let foreign: u64 = all
        .iter()
        .map(|&i| OUTCOMES[i].foreign_interrupts.load(Ordering::Relaxed))
        .sum();
    Ok(format!(
        "{cpus} CPUs ({} brought up by CPU_ON, off again by CPU_OFF), {ROUNDS} rounds each: {calls} SMCs, {foreign} timer interrupts let through during SCRUBs and served, every slice of the shared buffer right{handover}{victim_note}",
        others.len()
    ))
}
