//! Exhaustion: the one normal world takes every resource of the TEE it can reach — memory
//! objects, sessions, registered pages, mapped pages, an RPC buffer larger than it has, threads
//! — each until the core refuses, and every refusal must be the clean OP-TEE or GlobalPlatform
//! code. Then it gives everything back, and the TEE must serve it as before, with the same
//! counts. The limits are not known here: they are found by counting, and printed.

use super::suspend::{self, Suspended};
use super::{Ctx, Outcome, bytes, case, check_core, drv, fast, free, invoke_raw, op, teec};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::RpcShmType;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_fw_common::println;
use teeshm_nw::client::{Param, Session, ShmFlags};
use teeshm_nw::{DEFAULT_THREAD_LIMIT_RETRIES, DriverError, GuestBuffer, GuestRam, PAGE_SIZE};

/// A count that meets no refusal by then is a failure (no quota at all).
const COUNT_LIMIT: usize = 1 << 16;
/// Pages of the large buffers (16 MiB), registered again and again.
const BIG_PAGES: u64 = 4096;
/// Bytes each waiting call's RPC_BUFFER asks for once it goes on.
const RPC_BYTES: u64 = 100;

/// What the first pass counted; the last case counts again and compares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// 1-page buffers registered when the next was refused.
    objects: usize,
    /// Sessions open when the next was refused (the client's own included).
    sessions: usize,
    /// Pages registered when a buffer of one page more was refused.
    registered_pages: u64,
    /// Calls waiting in RPCs when the next got `ETHREAD_LIMIT`.
    threads: usize,
}

/// What the cases of the group hand on to each other.
#[derive(Default)]
struct State {
    /// Window pages mapped before the group.
    mapped_before: u64,
    first: Counts,
    /// The pages of the large buffers.
    big: Option<GuestBuffer>,
    /// A page beyond them, for a temporary memref one page larger.
    extra: Option<u64>,
    /// Registered buffers made of `big`'s pages: cookie, pages.
    registered: Vec<(u64, u64)>,
    /// Calls waiting in an RPC.
    waiting: Vec<Suspended>,
    /// Of which the first `holders` hold registered buffers.
    holders: usize,
}

/// The group: each case prints its figures.
pub(super) fn group(ctx: &mut Ctx, s: &Session) {
    println!(
        "client: exhaustion: the normal world takes every resource it can reach until the TEE \
         refuses, then gives everything back"
    );
    let mut st = State {
        mapped_before: check_core().1,
        ..State::default()
    };
    case(
        "exhaust: memory objects: 1-page buffers registered until refused",
        || objects(ctx, s, &mut st),
    );
    case("exhaust: sessions opened until refused", || {
        sessions(ctx, s, &mut st)
    });
    case(
        "exhaust: registered pages: 16 MiB buffers, then halves, until refused",
        || registered_pages(ctx, &mut st),
    );
    case(
        "exhaust: mapped pages: buffers held by waiting calls, then a temporary memref",
        || mapped_pages(ctx, s, &mut st),
    );
    case(
        "exhaust: RPC buffers larger than the normal world has",
        || huge_rpc(ctx, s),
    );
    case("exhaust: threads: calls left waiting in RPCs", || {
        threads(ctx, s, &mut st)
    });
    case(
        "exhaust: everything given back (buffers held by waiting calls unregistered)",
        || release(ctx, &mut st),
    );
    case(
        "exhaust: the TEE serves the normal world as before, the same counts again",
        || again(ctx, s, &st),
    );
}

// ---- helpers -----------------------------------------------------------------------------

fn new_page(ctx: &mut Ctx) -> Result<u64, String> {
    ctx.driver_mut()
        .ram_mut()
        .alloc_pages(1)
        .map_err(|e| format!("guest RAM: {e}"))?
        .first()
        .copied()
        .ok_or_else(|| "no page".into())
}

/// Registers `b` under a fresh cookie: `Ok(Ok(cookie))`, or `Ok(Err(ret))` when the TEE
/// refused it.
fn register(ctx: &mut Ctx, b: &GuestBuffer) -> Result<Result<u64, u32>, String> {
    let cookie = ctx.driver_mut().new_cookie();
    match ctx.driver_mut().register(b, cookie) {
        Ok(()) => Ok(Ok(cookie)),
        Err(DriverError::Tee { ret, .. }) => Ok(Err(ret)),
        Err(e) => Err(drv(e)),
    }
}

/// Unregisters every `(cookie, _)`; the first failure, if any.
fn unregister_all(ctx: &mut Ctx, cookies: impl IntoIterator<Item = u64>) -> Result<(), String> {
    let mut first = Ok(());
    for cookie in cookies {
        let r = ctx.driver_mut().unregister(cookie);
        if first.is_ok() {
            first = r.map_err(|e| format!("unregister of {cookie}: {e}"));
        }
    }
    first
}

/// TOUCH (first and last byte) of the registered buffer `cookie`: (a0, ret).
fn touch_registered(
    ctx: &mut Ctx,
    s: &Session,
    cookie: u64,
    size: u64,
) -> Result<(u32, u32), String> {
    let params = [
        MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, size, cookie)),
        MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
    ];
    let reply = invoke_raw(ctx, s, cmd::TOUCH, &params)?;
    Ok((reply.a0, reply.header.ret.get()))
}

/// TOUCH through a temporary memref of `b` (its page list built here): (a0, ret).
fn touch_temporary(ctx: &mut Ctx, s: &Session, b: &GuestBuffer) -> Result<(u32, u32), String> {
    let list = ctx.driver_mut().page_list(b).map_err(drv)?;
    let cookie = ctx.driver_mut().new_cookie();
    let params = [
        MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list.buf_ptr, b.size, cookie),
        ),
        MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
    ];
    let reply = invoke_raw(ctx, s, cmd::TOUCH, &params);
    ctx.driver_mut().free_page_list(list);
    let reply = reply?;
    Ok((reply.a0, reply.header.ret.get()))
}

/// `ret` must be the GP out-of-memory code of a message that ran.
fn out_of_memory(what: &str, (a0, ret): (u32, u32)) -> Result<(), String> {
    ensure!(
        a0 == OPTEE_SMC_RETURN_OK,
        "{what}: the call itself was refused with {a0:#x}, not the message"
    );
    ensure!(
        ret == TEE_ERROR_OUT_OF_MEMORY,
        "{what}: {ret:#x}, not TEE_ERROR_OUT_OF_MEMORY"
    );
    Ok(())
}

// ---- objects -----------------------------------------------------------------------------

/// Registers 1-page buffers until the TEE refuses one; at the limit, a call naming a
/// registered buffer must still run and one with a temporary memref must be refused. Gives
/// everything back. Returns the count and what was seen.
fn count_objects(ctx: &mut Ctx, s: &Session) -> Result<(usize, String), String> {
    let mut held: Vec<(u64, GuestBuffer)> = Vec::new();
    let seen = objects_until_refused(ctx, s, &mut held);
    let count = held.len();
    let cookies: Vec<u64> = held.iter().map(|(c, _)| *c).collect();
    let unregistered = unregister_all(ctx, cookies);
    for (_, b) in held {
        free(ctx, b);
    }
    let seen = seen?;
    unregistered?;
    Ok((count, seen))
}

fn objects_until_refused(
    ctx: &mut Ctx,
    s: &Session,
    held: &mut Vec<(u64, GuestBuffer)>,
) -> Result<String, String> {
    let refusal = loop {
        ensure!(
            held.len() < COUNT_LIMIT,
            "{COUNT_LIMIT} buffers registered and none refused"
        );
        let b = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), PAGE_SIZE, 0)
            .map_err(|e| format!("guest RAM: {e}"))?;
        match register(ctx, &b) {
            Ok(Ok(cookie)) => held.push((cookie, b)),
            Ok(Err(ret)) => {
                free(ctx, b);
                break ret;
            }
            Err(e) => {
                free(ctx, b);
                return Err(format!("buffer {}: {e}", held.len() + 1));
            }
        }
    };
    ensure!(
        refusal == TEE_ERROR_OUT_OF_MEMORY,
        "buffer {} refused with {refusal:#x}, not TEE_ERROR_OUT_OF_MEMORY",
        held.len() + 1
    );
    // At the limit: a call on a registered buffer needs no new object but its arg.
    let &(cookie, _) = held.first().ok_or("the first buffer was refused")?;
    let touched = touch_registered(ctx, s, cookie, PAGE_SIZE)?;
    ensure!(
        touched == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
        "at the limit, a TOUCH of a registered buffer answered {touched:#x?}"
    );
    // One with a temporary memref needs one more.
    let t = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), PAGE_SIZE, 0)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let temp = touch_temporary(ctx, s, &t);
    free(ctx, t);
    out_of_memory("at the limit, a temporary memref", temp?)?;
    Ok(String::from(
        "the next refused with TEE_ERROR_OUT_OF_MEMORY; at the limit a TOUCH of a registered \
         buffer ran and a 1-page temporary memref was refused with TEE_ERROR_OUT_OF_MEMORY",
    ))
}

fn objects(ctx: &mut Ctx, s: &Session, st: &mut State) -> Outcome {
    let (count, seen) = count_objects(ctx, s)?;
    st.first.objects = count;
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "{count} buffers registered (each call's arg is an object too), {seen}; all unregistered"
    ))
}

// ---- sessions ----------------------------------------------------------------------------

/// Opens sessions until the TEE refuses one; closes them. Returns how many were open at the
/// refusal (the client's own `s` included).
fn count_sessions(ctx: &mut Ctx, s: &Session) -> Result<usize, String> {
    let mut opened = Vec::new();
    let refusal = loop {
        if opened.len() >= COUNT_LIMIT {
            break None;
        }
        match ctx.open_session(MEMTEST_UUID) {
            Ok(session) => opened.push(session),
            Err(e) => break Some(e),
        }
    };
    let count = opened.len() + 1;
    // At the limit the client's own session still serves a call.
    let at_limit = {
        let t = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), PAGE_SIZE, 0)
            .map_err(|e| format!("guest RAM: {e}"))?;
        let r = touch_temporary(ctx, s, &t);
        free(ctx, t);
        r
    };
    let mut closed = Ok(());
    for session in opened {
        let r = ctx.close_session(session).map_err(teec);
        if closed.is_ok() {
            closed = r;
        }
    }
    let refusal = refusal.ok_or_else(|| format!("{count} sessions open and none refused"))?;
    ensure!(
        refusal.code == TEE_ERROR_OUT_OF_MEMORY,
        "session {} refused with {}, not TEE_ERROR_OUT_OF_MEMORY",
        count + 1,
        teec(refusal)
    );
    ensure!(
        at_limit? == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
        "at the limit, the first session could not TOUCH a buffer"
    );
    closed?;
    Ok(count)
}

fn sessions(ctx: &mut Ctx, s: &Session, st: &mut State) -> Outcome {
    let count = count_sessions(ctx, s)?;
    st.first.sessions = count;
    Ok(format!(
        "{count} sessions open (the client's own included), the next refused with \
         TEE_ERROR_OUT_OF_MEMORY; the first still served a call; the others closed"
    ))
}

// ---- registered pages --------------------------------------------------------------------

/// Registers buffers of the pages of `big` — all of them while the TEE accepts, then half as
/// many, down to one page — until one page more is refused. Returns the buffers (cookie,
/// pages) and the sizes refused.
fn fill_registered(
    ctx: &mut Ctx,
    big: &GuestBuffer,
    out: &mut Vec<(u64, u64)>,
) -> Result<Vec<u64>, String> {
    let mut refused = Vec::new();
    let mut pages = big.pages.len() as u64;
    while pages > 0 {
        ensure!(
            out.len() < COUNT_LIMIT,
            "{COUNT_LIMIT} buffers registered and none refused"
        );
        let part = GuestBuffer {
            pages: big.pages.iter().take(pages as usize).copied().collect(),
            offset: 0,
            size: pages * PAGE_SIZE,
        };
        match register(ctx, &part)? {
            Ok(cookie) => out.push((cookie, pages)),
            Err(ret) => {
                ensure!(
                    ret == TEE_ERROR_OUT_OF_MEMORY,
                    "a buffer of {pages} pages refused with {ret:#x}, not TEE_ERROR_OUT_OF_MEMORY"
                );
                refused.push(pages);
                pages /= 2;
            }
        }
    }
    Ok(refused)
}

fn registered_pages(ctx: &mut Ctx, st: &mut State) -> Outcome {
    let big = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), BIG_PAGES * PAGE_SIZE, 0)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let refused = fill_registered(ctx, &big, &mut st.registered);
    st.big = Some(big);
    let refused = refused?;
    let total: u64 = st.registered.iter().map(|&(_, p)| p).sum();
    let whole = st
        .registered
        .iter()
        .filter(|&&(_, p)| p == BIG_PAGES)
        .count();
    st.first.registered_pages = total;
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    Ok(format!(
        "{total} pages registered ({whole} buffers of {BIG_PAGES} pages, the same pages each \
         time, and {} smaller), then {} refused with TEE_ERROR_OUT_OF_MEMORY; kept registered",
        st.registered.len() - whole,
        sizes(&refused)
    ))
}

/// `4096, 2048, ..., 1 page(s)`.
fn sizes(pages: &[u64]) -> String {
    match pages {
        [] => "nothing".into(),
        [one] => format!("{one} page(s)"),
        [first, .., last] => format!("{first}, ..., {last} page(s) ({} sizes)", pages.len()),
    }
}

// ---- mapped pages ------------------------------------------------------------------------

fn mapped_pages(ctx: &mut Ctx, s: &Session, st: &mut State) -> Outcome {
    let big = st
        .big
        .clone()
        .ok_or("no large buffer (the previous case failed)")?;
    ensure!(
        st.registered.len() >= 2,
        "{} registered buffers: too few to hold",
        st.registered.len()
    );
    // In turn: every buffer mapped by its TOUCH, kept mapped while the quota allows; a map
    // beyond it evicts the oldest idle mapping, so nothing is ever refused.
    let buffers = st.registered.clone();
    for &(cookie, pages) in &buffers {
        let r = touch_registered(ctx, s, cookie, pages * PAGE_SIZE)?;
        ensure!(
            r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
            "TOUCH of a registered buffer of {pages} pages answered {r:#x?}"
        );
    }
    let (_, mapped_in_turn, _, _) = check_core();
    let registered_total: u64 = buffers.iter().map(|&(_, p)| p).sum();
    // Held: each waiting call holds two buffers (mapped just before), which are then never
    // evicted. All but the last buffer are held.
    let (held, _last) = buffers.split_at(buffers.len() - 1);
    for pair in held.chunks(2) {
        let mut hold = Vec::new();
        for &(cookie, pages) in pair {
            let r = touch_registered(ctx, s, cookie, pages * PAGE_SIZE)?;
            ensure!(
                r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
                "TOUCH before holding answered {r:#x?}"
            );
            hold.push((cookie, pages * PAGE_SIZE));
        }
        let seed = st.waiting.len() as u64;
        match suspend::start(ctx, s, RPC_BYTES, seed, &hold)? {
            Ok(call) => {
                st.waiting.push(call);
                st.holders += 1;
            }
            Err(a0) => return Err(format!("a holding call was refused with {a0:#x}")),
        }
    }
    let held_pages: u64 = held.iter().map(|&(_, p)| p).sum();
    let (_, mapped_held, _, _) = check_core();
    // Beside them, temporary memrefs of the big buffer's pages (and one more page): the largest
    // that maps, found by bisection; the next is refused.
    let extra = new_page(ctx)?;
    st.extra = Some(extra);
    let temp = |t: u64| {
        let mut pages: Vec<u64> = big.pages.iter().take(t as usize).copied().collect();
        if t > big.pages.len() as u64 {
            pages.push(extra);
        }
        GuestBuffer {
            pages,
            offset: 0,
            size: t * PAGE_SIZE,
        }
    };
    let (mut lo, mut hi) = (0u64, big.pages.len() as u64 + 1);
    let top = touch_temporary(ctx, s, &temp(hi))?;
    ensure!(
        top != (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
        "a temporary memref of {hi} pages mapped beside {held_pages} held pages: the quota \
         did not bind"
    );
    out_of_memory(&format!("a temporary memref of {hi} pages"), top)?;
    let mut probes = 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let r = touch_temporary(ctx, s, &temp(mid))?;
        probes += 1;
        if r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS) {
            lo = mid;
        } else {
            out_of_memory(&format!("a temporary memref of {mid} pages"), r)?;
            hi = mid;
        }
    }
    let (disagreements, _, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    // Mapped at the largest: the held buffers, the temporary memref, and one arg page for each
    // call (the waiting ones and the TOUCH), which the calls keep mapped while they last.
    let calls = st.holders as u64 + 1;
    Ok(format!(
        "{} buffers ({registered_total} pages) TOUCHed in turn: never refused, idle mappings \
         evicted to make room ({mapped_in_turn} window pages mapped after); then {} buffers \
         ({held_pages} pages) held by {} calls waiting in RPCs ({mapped_held} window pages \
         mapped): beside them a temporary memref of {lo} pages maps, one of {hi} is refused with \
         TEE_ERROR_OUT_OF_MEMORY ({probes} probes): {held_pages} + {lo} + {calls} arg pages = \
         {} pages mapped at most",
        buffers.len(),
        held.len(),
        st.holders,
        held_pages + lo + calls
    ))
}

// ---- RPC buffers -------------------------------------------------------------------------

fn huge_rpc(ctx: &mut Ctx, s: &Session) -> Outcome {
    let mut n = 0;
    for size in [1u64 << 40, 1 << 63, u64::MAX] {
        let params = [
            MsgParam::from_value(
                OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
                Value::new(size, RpcShmType::Kernel.raw(), 7),
            ),
            MsgParam::new(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT),
        ];
        let reply = invoke_raw(ctx, s, cmd::RPC_BUFFER, &params)?;
        out_of_memory(
            &format!("RPC_BUFFER of {size:#x} bytes"),
            (reply.a0, reply.header.ret.get()),
        )?;
        ensure!(
            reply.rpcs >= 1,
            "RPC_BUFFER of {size:#x} bytes was refused without asking the normal world"
        );
        n += reply.rpcs;
    }
    ensure!(
        ctx.driver().rpc_buffers_held() == 0,
        "{} RPC buffers still lent",
        ctx.driver().rpc_buffers_held()
    );
    // A size the normal world has goes through as usual, beside everything held.
    let mut o = op([
        Param::ValueInput {
            a: 70_000,
            b: RpcShmType::Kernel.raw() as u32,
        },
        Param::ValueOutput { a: 0, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::RPC_BUFFER, &mut o)
        .map_err(teec)?;
    ensure!(
        matches!(o.params[1], Param::ValueOutput { a: 70_000, .. }),
        "RPC_BUFFER of 70000 bytes: {:?}",
        o.params[1]
    );
    Ok(format!(
        "SHM_ALLOC of 1 TiB, 2^63 and 2^64-1 bytes: the normal world has not that much, the \
         call ends with TEE_ERROR_OUT_OF_MEMORY ({n} RPCs), nothing lent; one of 70000 bytes \
         then works"
    ))
}

// ---- threads -----------------------------------------------------------------------------

/// Starts calls that wait in RPCs until the TEE answers `ETHREAD_LIMIT`; they go into
/// `waiting`. Returns what was seen at the limit.
fn fill_threads(ctx: &mut Ctx, s: &Session, waiting: &mut Vec<Suspended>) -> Result<(), String> {
    let refusal = loop {
        ensure!(
            waiting.len() < COUNT_LIMIT,
            "{COUNT_LIMIT} calls waiting and none refused"
        );
        let seed = 0x100 + waiting.len() as u64;
        match suspend::start(ctx, s, RPC_BYTES, seed, &[])? {
            Ok(call) => waiting.push(call),
            Err(a0) => break a0,
        }
    };
    ensure!(
        refusal == OPTEE_SMC_RETURN_ETHREAD_LIMIT,
        "call {} refused with {refusal:#x}, not ETHREAD_LIMIT",
        waiting.len() + 1
    );
    let mut threads: Vec<u64> = waiting.iter().map(Suspended::thread).collect();
    threads.sort_unstable();
    threads.dedup();
    ensure!(
        threads.len() == waiting.len(),
        "two waiting calls report the same thread: {threads:?}"
    );
    // At the limit: fast calls are answered; a yielding call gets ETHREAD_LIMIT again.
    let uid = fast(OPTEE_SMC_CALLS_UID, &[]).a[0];
    ensure!(
        uid & 0xffff_ffff == u64::from(teeshm_abi::uid::OPTEE_MSG_UID[0]),
        "CALLS_UID at the limit: {uid:#x}"
    );
    ctx.driver_mut().set_thread_limit_retries(1);
    let r = ctx.driver_mut().unregister(0x7fff_0000);
    ctx.driver_mut()
        .set_thread_limit_retries(DEFAULT_THREAD_LIMIT_RETRIES);
    ensure!(
        matches!(r, Err(DriverError::ThreadLimit { .. })),
        "a driver call at the limit: {r:?}"
    );
    Ok(())
}

/// Finishes every call of `waiting`; each must end as RPC_BUFFER does.
fn finish_all(ctx: &mut Ctx, waiting: &mut Vec<Suspended>) -> Result<Vec<u64>, String> {
    let mut threads = Vec::new();
    let mut first = Ok(());
    for call in waiting.drain(..) {
        threads.push(call.thread());
        let r = suspend::finish(ctx, call).and_then(|done| {
            ensure!(
                done.ret == TEE_SUCCESS && done.checked == done.asked,
                "a waiting call ended with {:#x} (origin {}), {} of {} bytes checked",
                done.ret,
                done.origin,
                done.checked,
                done.asked
            );
            Ok(())
        });
        if first.is_ok() {
            first = r;
        }
    }
    first.map(|()| threads)
}

fn threads(ctx: &mut Ctx, s: &Session, st: &mut State) -> Outcome {
    let count = fast(OPTEE_SMC_GET_THREAD_COUNT, &[]).a[1];
    let before = st.waiting.len();
    fill_threads(ctx, s, &mut st.waiting)?;
    let waiting = st.waiting.len();
    st.first.threads = waiting;
    ensure!(
        waiting as u64 <= count,
        "{waiting} calls waiting, the TEE has {count} threads"
    );
    Ok(format!(
        "{waiting} calls waiting in RPCs ({before} holding buffers, {} more), the next got \
         ETHREAD_LIMIT (GET_THREAD_COUNT: {count}); at the limit CALLS_UID answered and a \
         driver call got ETHREAD_LIMIT",
        waiting - before
    ))
}

// ---- release -----------------------------------------------------------------------------

fn release(ctx: &mut Ctx, st: &mut State) -> Outcome {
    let (_, mapped_full, _, _) = check_core();
    // The calls that hold nothing end first: the unregisters need a thread.
    let mut holders: Vec<Suspended> = st.waiting.drain(..).collect();
    let mut others = holders.split_off(st.holders.min(holders.len()));
    st.holders = 0;
    let (n_holders, n_others) = (holders.len(), others.len());
    let others_done = finish_all(ctx, &mut others);
    // The held buffers are unregistered while their calls still wait: each at once.
    let registered: Vec<u64> = st.registered.drain(..).map(|(c, _)| c).collect();
    let buffers = registered.len();
    let unregistered = unregister_all(ctx, registered);
    let (_, mapped_revoked, _, _) = check_core();
    let holders_done = finish_all(ctx, &mut holders);
    if let Some(big) = st.big.take() {
        free(ctx, big);
    }
    if let Some(page) = st.extra.take() {
        ctx.driver_mut().ram_mut().free_pages(&[page]);
    }
    let mut threads = others_done?;
    unregistered?;
    threads.extend(holders_done?);
    for &t in &threads {
        let r = fast(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, t]).a0();
        ensure!(
            r == OPTEE_SMC_RETURN_ERESUME,
            "thread {t} still waits for something: {r:#x}"
        );
    }
    let (disagreements, mapped_after, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    ensure!(
        mapped_after == st.mapped_before,
        "{mapped_after} window pages mapped after it all, {} before",
        st.mapped_before
    );
    // What is left mapped while the holders still wait: their own args, no buffer.
    ensure!(
        mapped_revoked <= st.mapped_before + n_holders as u64,
        "{mapped_revoked} pages still mapped after the unregisters ({n_holders} calls waiting)"
    );
    ensure!(
        ctx.driver().rpc_buffers_held() == 0,
        "{} RPC buffers lent",
        ctx.driver().rpc_buffers_held()
    );
    Ok(format!(
        "{n_others} calls holding nothing answered first; {buffers} buffers unregistered while \
         {n_holders} waiting calls held them: SUCCESS each, at once, their mappings gone \
         ({mapped_full} -> {mapped_revoked} window pages); those calls then answered: all \
         {} ended with TEE_SUCCESS; no thread waits; {mapped_after} pages mapped, 0 \
         disagreements",
        n_others + n_holders
    ))
}

// ---- again -------------------------------------------------------------------------------

fn again(ctx: &mut Ctx, s: &Session, st: &State) -> Outcome {
    // Served as before: a buffer registered, filled, every byte checked.
    let shm = ctx
        .allocate_shared_memory(5 * PAGE_SIZE + 3, ShmFlags::INOUT)
        .map_err(teec)?;
    let mut o = op([
        Param::Whole(&shm),
        Param::ValueInput { a: 0x99, b: 0 },
        Param::None,
        Param::None,
    ]);
    ctx.invoke_command(s, cmd::FILL, &mut o).map_err(teec)?;
    let data = bytes(ctx, shm.buffer())?;
    ctx.release_shared_memory(shm).map_err(teec)?;
    ensure!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(0x99, i as u64)),
        "FILL after the exhaustion wrote the wrong bytes"
    );
    // The same counts.
    let (objects, _) = count_objects(ctx, s)?;
    let sessions = count_sessions(ctx, s)?;
    let big = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), BIG_PAGES * PAGE_SIZE, 0)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let mut registered = Vec::new();
    let refused = fill_registered(ctx, &big, &mut registered);
    let unregistered = unregister_all(ctx, registered.iter().map(|&(c, _)| c));
    free(ctx, big);
    refused?;
    unregistered?;
    let registered_pages: u64 = registered.iter().map(|&(_, p)| p).sum();
    let mut waiting = Vec::new();
    let filled = fill_threads(ctx, s, &mut waiting);
    let threads = waiting.len();
    let finished = finish_all(ctx, &mut waiting);
    filled?;
    finished?;
    let now = Counts {
        objects,
        sessions,
        registered_pages,
        threads,
    };
    ensure!(
        now == st.first,
        "counts now {now:?}, the first time {:?}",
        st.first
    );
    let (disagreements, mapped, _, _) = check_core();
    ensure!(disagreements == 0, "{disagreements} disagreements");
    ensure!(
        mapped == st.mapped_before,
        "{mapped} window pages mapped, {} before",
        st.mapped_before
    );
    Ok(format!(
        "a {}-byte buffer registered, filled, every byte checked; again {objects} buffers, \
         {sessions} sessions, {registered_pages} registered pages, {threads} waiting calls \
         before the refusals, as the first time",
        5 * PAGE_SIZE + 3
    ))
}
