//! Random operations over several guests with the agreement checker after every step.
//!
//! Besides the pseudo-TA's commands, the guests open sessions of the user TA
//! `teeshm.ta-memtest` (at most [`MAX_TA_SESSIONS`] at a time, each an instance in TA RAM) and
//! invoke it: FILL of a registered buffer followed at once by a CHECK of the same bytes, CHECK
//! of a temporary buffer, COPY, a TA-to-TA CALL_PEER, and now and then a WRITE_INPUT that kills
//! the instance (`TEE_ERROR_TARGET_DEAD`), whose session is closed next and a new one opened.
//! At the end of a run without violation every user TA session is closed and all of TA RAM must
//! be free again.
//!
//! A step is one operation per worker thread, run at the same time (each thread drives its own
//! guests, so calls of different guests overlap in the core); then the whole system is checked
//! while nothing runs, by the worker that finished its step last (no thread of its own: with
//! one worker a step hands nothing to another thread, so a loaded machine's scheduler does not
//! sit between every operation and its check). The operations of every step are kept, so a failing run can be written as
//! a replay file (docs/replay.md).

use crate::scenario::{Dir, Op, OpResult, ParamSpec, Runner, buffer_byte, read_buffer};
use crate::system::System;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use teeshm_abi::gp::TEE_ERROR_TARGET_DEAD;
use teeshm_core::pta::{cmd, pattern_byte};
use teeshm_ta::memtest::{self, cmd as ta_cmd};

/// The user TA the guests invoke.
pub const USER_TA: &str = memtest::PROGRAM.name;

/// User TA sessions a guest keeps open at most in the usual mix: with the peer a CALL_PEER
/// opens, three instances, well within a guest's share of TA RAM.
pub const MAX_TA_SESSIONS: usize = 2;

/// "No wrong byte" in a user TA's CHECK answer (GP values are 32 bits).
const NONE_WRONG: u64 = 0xffff_ffff;

/// A small, fast, seedable generator (SplitMix64), so a run is reproduced from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The first thing that went wrong.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Step (0-based) at which it was seen.
    pub step: u64,
    /// What was wrong.
    pub what: String,
}

/// The guest that exhausts everything it can reach in a run with the exhaustion mix.
pub const EXHAUSTER: u16 = 1;

/// Operations and successes of one guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestTally {
    /// Operations run for it.
    pub ops: u64,
    /// Those that answered success.
    pub succeeded: u64,
}

/// The outcome of a stress run.
#[derive(Debug, Clone)]
pub struct StressOutcome {
    /// Per guest (1-based id), what it ran and how much succeeded.
    pub per_guest: std::collections::BTreeMap<u16, GuestTally>,
    /// Steps run.
    pub steps: u64,
    /// Operations run.
    pub ops: u64,
    /// Operations whose answer was a success.
    pub succeeded: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// Every operation run, in order (the replay of the run).
    pub log: Vec<Op>,
}

/// One of `cookies`, at random.
fn pick(rng: &mut Rng, cookies: &[u64]) -> Option<u64> {
    cookies
        .get(rng.below(cookies.len() as u64) as usize)
        .copied()
}

/// Registers a fresh buffer of `size` bytes at `offset` in its first page under a new cookie.
fn register_op(rng: &mut Rng, guest: u16, size: u64, next_cookie: &mut u64) -> Op {
    *next_cookie += 1;
    Op::Register {
        guest,
        cookie: *next_cookie,
        size,
        offset: rng.below(4096),
    }
}

/// FILL of `size` bytes at `offset` of registered buffer `cookie` with a random seed.
fn fill_op(rng: &mut Rng, guest: u16, cookie: u64, offset: u64, size: u64) -> Op {
    Op::Invoke {
        guest,
        session: None,
        cmd: cmd::FILL,
        params: vec![
            ParamSpec::Registered {
                dir: Dir::Out,
                cookie,
                offset,
                size,
            },
            ParamSpec::Value {
                dir: Dir::In,
                a: rng.next_u64(),
                b: 0,
                c: 0,
            },
        ],
    }
}

/// COPY of a random temporary input of 1..=`max_in` bytes into a temporary output of `out`
/// bytes (at a random offset in its first page when `out_offset`).
fn copy_op(rng: &mut Rng, guest: u16, max_in: u64, out: u64, out_offset: bool) -> Op {
    Op::Invoke {
        guest,
        session: None,
        cmd: cmd::COPY,
        params: vec![
            ParamSpec::Temp {
                dir: Dir::In,
                size: 1 + rng.below(max_in),
                offset: rng.below(4096),
                seed: rng.next_u64(),
            },
            ParamSpec::Temp {
                dir: Dir::Out,
                size: out,
                offset: if out_offset { rng.below(4096) } else { 0 },
                seed: 0,
            },
        ],
    }
}

/// RPC_BUFFER of 1..=`max` bytes of a random SHM type.
fn rpc_buffer_op(rng: &mut Rng, guest: u16, max: u64) -> Op {
    Op::Invoke {
        guest,
        session: None,
        cmd: cmd::RPC_BUFFER,
        params: vec![
            ParamSpec::Value {
                dir: Dir::In,
                a: 1 + rng.below(max),
                b: rng.below(3),
                c: rng.next_u64(),
            },
            ParamSpec::Value {
                dir: Dir::Out,
                a: 0,
                b: 0,
                c: 0,
            },
        ],
    }
}

/// What a worker numbers and keeps between its operations: the next cookie and session
/// handle, and per guest the operation that must come next (the CHECK after a user TA's FILL).
#[derive(Debug)]
struct WorkerState {
    next_cookie: u64,
    next_session: u32,
    pending: BTreeMap<u16, Op>,
}

/// A value parameter.
fn value(dir: Dir, a: u64, b: u64) -> ParamSpec {
    ParamSpec::Value { dir, a, b, c: 0 }
}

/// An invoke of the user TA session `session`.
fn ta_invoke(guest: u16, session: u32, cmd: u32, params: Vec<ParamSpec>) -> Op {
    Op::Invoke {
        guest,
        cmd,
        params,
        session: Some(session),
    }
}

/// A seed for a user TA: GP values are 32 bits.
fn ta_seed(rng: &mut Rng) -> u64 {
    rng.next_u64() & 0xffff_ffff
}

/// Opens a new user TA session.
fn open_ta_op(guest: u16, state: &mut WorkerState) -> Op {
    state.next_session += 1;
    Op::OpenSession {
        guest,
        ta: USER_TA.into(),
        session: state.next_session,
        params: Vec::new(),
    }
}

/// An operation of the user TA for `guest`: a dead session is closed first, a guest without a
/// session opens one; otherwise FILL of one of its registered buffers (the CHECK of the same
/// bytes is queued to come next), CHECK or COPY of temporary buffers, CALL_PEER, the rare
/// WRITE_INPUT that kills the TA, another session opened or one closed.
fn user_ta_op(rng: &mut Rng, runner: &Runner, guest: u16, state: &mut WorkerState) -> Op {
    let sessions = runner.opened_sessions(guest);
    if let Some(dead) = sessions.iter().find(|s| s.dead) {
        return Op::CloseSession {
            guest,
            session: dead.handle,
        };
    }
    if sessions.is_empty() || (sessions.len() < MAX_TA_SESSIONS && rng.below(10) == 0) {
        return open_ta_op(guest, state);
    }
    let session = sessions[rng.below(sessions.len() as u64) as usize].handle;
    let cookies = runner.cookies(guest);
    let temp_in = |rng: &mut Rng, max: u64, seed: u64| ParamSpec::Temp {
        dir: Dir::In,
        size: 1 + rng.below(max),
        offset: rng.below(4096),
        seed,
    };
    match rng.below(20) {
        0..=7 if !cookies.is_empty() => {
            let cookie = pick(rng, &cookies).unwrap_or(0);
            let size = runner.buffer(guest, cookie).map_or(1, |b| b.size);
            let offset = rng.below(size);
            let len = 1 + rng.below((size - offset).min(256 << 10));
            let seed = ta_seed(rng);
            let region = |dir| ParamSpec::Registered {
                dir,
                cookie,
                offset,
                size: len,
            };
            state.pending.insert(
                guest,
                ta_invoke(
                    guest,
                    session,
                    ta_cmd::CHECK,
                    vec![
                        region(Dir::In),
                        value(Dir::In, seed, 0),
                        value(Dir::Out, 0, 0),
                    ],
                ),
            );
            ta_invoke(
                guest,
                session,
                ta_cmd::FILL,
                vec![region(Dir::Out), value(Dir::In, seed, 0)],
            )
        }
        0..=11 => {
            let seed = ta_seed(rng);
            ta_invoke(
                guest,
                session,
                ta_cmd::CHECK,
                vec![
                    temp_in(rng, 64 << 10, seed),
                    value(Dir::In, seed, 0),
                    value(Dir::Out, 0, 0),
                ],
            )
        }
        12..=14 => {
            let (seed, len) = (ta_seed(rng), 1 + rng.below(60 << 10));
            ta_invoke(
                guest,
                session,
                ta_cmd::CALL_PEER,
                vec![value(Dir::In, seed, len), value(Dir::Out, 0, 0)],
            )
        }
        15 => {
            let seed = ta_seed(rng);
            ta_invoke(
                guest,
                session,
                ta_cmd::WRITE_INPUT,
                vec![temp_in(rng, 8192, seed)],
            )
        }
        16..=17 => {
            let size = 1 + rng.below(16 << 10);
            let seed = ta_seed(rng);
            ta_invoke(
                guest,
                session,
                ta_cmd::COPY,
                vec![
                    temp_in(rng, size, seed),
                    ParamSpec::Temp {
                        dir: Dir::Out,
                        size,
                        offset: rng.below(4096),
                        seed: 0,
                    },
                ],
            )
        }
        18 if sessions.len() < MAX_TA_SESSIONS => open_ta_op(guest, state),
        _ => Op::CloseSession { guest, session },
    }
}

/// Picks a random operation for `guest`, given what the runner knows it holds: a fifth of the
/// usual mix goes to the user TA ([`user_ta_op`]).
fn random_op(
    rng: &mut Rng,
    runner: &Runner,
    guest: u16,
    running: bool,
    state: &mut WorkerState,
) -> Op {
    if !running {
        return Op::CreateGuest { guest };
    }
    let roll = rng.below(125);
    if roll >= 100 {
        return user_ta_op(rng, runner, guest, state);
    }
    let next_cookie = &mut state.next_cookie;
    let cookies = runner.cookies(guest);
    // Keep each guest's registered buffers bounded, so long runs stay within its RAM.
    let roll = if roll < 25 && cookies.len() >= 32 {
        30
    } else {
        roll
    };
    match roll {
        0..=24 => {
            let size = match rng.below(4) {
                0 => 1 + rng.below(64),
                1 => 1 + rng.below(16 << 10),
                2 => 1 + rng.below(256 << 10),
                _ => 1 + rng.below(1 << 20),
            };
            register_op(rng, guest, size, next_cookie)
        }
        25..=39 => Op::Unregister {
            guest,
            cookie: pick(rng, &cookies).unwrap_or(0xdead),
        },
        40..=59 => match pick(rng, &cookies) {
            Some(cookie) => {
                let size = runner.buffer(guest, cookie).map_or(1, |b| b.size);
                let offset = rng.below(size);
                let len = 1 + rng.below(size - offset);
                fill_op(rng, guest, cookie, offset, len)
            }
            None => Op::Invoke {
                guest,
                session: None,
                cmd: cmd::SHA256,
                params: vec![
                    ParamSpec::Temp {
                        dir: Dir::In,
                        size: 1 + rng.below(100_000),
                        offset: rng.below(4096),
                        seed: rng.next_u64(),
                    },
                    ParamSpec::Temp {
                        dir: Dir::Out,
                        size: 32,
                        offset: 0,
                        seed: 0,
                    },
                ],
            },
        },
        60..=74 => copy_op(rng, guest, 50_000, 50_000, true),
        75..=89 => rpc_buffer_op(rng, guest, 200_000),
        90..=95 => Op::Invoke {
            guest,
            session: None,
            cmd: cmd::TOUCH,
            params: vec![
                match pick(rng, &cookies) {
                    Some(cookie) => ParamSpec::Registered {
                        dir: Dir::In,
                        cookie,
                        offset: 0,
                        size: runner.buffer(guest, cookie).map_or(1, |b| b.size),
                    },
                    None => ParamSpec::Null {
                        dir: Dir::In,
                        size: 0,
                    },
                },
                ParamSpec::Value {
                    dir: Dir::Out,
                    a: 0,
                    b: 0,
                    c: 0,
                },
            ],
        },
        _ => Op::DestroyGuest { guest },
    }
}

/// An operation of the exhausting guest: it registers buffers without end (any size up to
/// 1 MiB), maps them (FILL), asks for large temporary and RPC buffers, opens user TA sessions
/// without end (each an instance in its share of TA RAM) and has them call their peers, and
/// rarely lets go, so it runs into every quota it has, again and again. Each refusal must be
/// clean and must cost no other guest anything.
fn exhausting_op(rng: &mut Rng, runner: &Runner, guest: u16, state: &mut WorkerState) -> Op {
    let cookies = runner.cookies(guest);
    let roll = rng.below(115);
    if roll >= 100 {
        let sessions = runner.opened_sessions(guest);
        return match (rng.below(10), sessions.is_empty()) {
            (0..=4, _) | (_, true) => open_ta_op(guest, state),
            (5..=8, false) => {
                let s = sessions[rng.below(sessions.len() as u64) as usize].handle;
                let (seed, len) = (ta_seed(rng), 1 + rng.below(60 << 10));
                ta_invoke(
                    guest,
                    s,
                    ta_cmd::CALL_PEER,
                    vec![value(Dir::In, seed, len), value(Dir::Out, 0, 0)],
                )
            }
            _ => Op::CloseSession {
                guest,
                session: sessions[rng.below(sessions.len() as u64) as usize].handle,
            },
        };
    }
    let next_cookie = &mut state.next_cookie;
    match roll {
        0..=49 => {
            let size = match rng.below(3) {
                0 => 1 + rng.below(4096),
                1 => 1 + rng.below(64 << 10),
                _ => 1 + rng.below(1 << 20),
            };
            register_op(rng, guest, size, next_cookie)
        }
        50..=54 => Op::Unregister {
            guest,
            cookie: pick(rng, &cookies).unwrap_or(0xdead),
        },
        55..=79 => match pick(rng, &cookies) {
            Some(cookie) => {
                let size = runner.buffer(guest, cookie).map_or(1, |b| b.size);
                fill_op(rng, guest, cookie, 0, size)
            }
            None => Op::Unregister {
                guest,
                cookie: 0xdead,
            },
        },
        80..=89 => rpc_buffer_op(rng, guest, 64 << 20),
        _ => copy_op(rng, guest, 4 << 20, 4 << 20, false),
    }
}

/// Whether `result` of `op` is what a correct system answers, given what the runner holds.
/// Operations whose outcome may legitimately vary (a hostile or unknown cookie) only need to
/// fail cleanly.
fn judge(guest_known: bool, op: &Op, result: &OpResult) -> Result<(), String> {
    if !guest_known {
        return Ok(());
    }
    if let Op::Invoke {
        cmd: c,
        params,
        session: Some(_),
        ..
    } = op
    {
        return judge_user_ta(*c, params, result).map_err(|what| format!("{op:?}: {what}"));
    }
    let expect_ok = match op {
        Op::Unregister { cookie, .. } => *cookie != 0xdead,
        Op::Invoke { cmd: c, params, .. } => match params.first() {
            Some(ParamSpec::Null { .. }) => *c != cmd::TOUCH,
            _ => true,
        },
        _ => true,
    };
    if expect_ok && !result.ok {
        return Err(format!("{op:?} failed: {result:?}"));
    }
    if !expect_ok && result.ok {
        return Err(format!("{op:?} succeeded but should not: {result:?}"));
    }
    Ok(())
}

/// Values `a` and `b` of output parameter `i` of a result.
fn result_value(result: &OpResult, i: usize) -> Option<(u64, u64)> {
    let v = result.params.get(i)?.get("value")?.as_array()?;
    Some((v.first()?.as_u64()?, v.get(1)?.as_u64()?))
}

/// The size a memref spec asks for.
fn spec_size(spec: Option<&ParamSpec>) -> u64 {
    match spec {
        Some(ParamSpec::Temp { size, .. } | ParamSpec::Registered { size, .. }) => *size,
        _ => 0,
    }
}

/// The answer the user TA `teeshm.ta-memtest` owes to command `c` with `params`: WRITE_INPUT
/// kills it (`TEE_ERROR_TARGET_DEAD`); CHECK finds the pattern in every byte; CALL_PEER's peer
/// checked every byte and died at its probe; everything else succeeds.
fn judge_user_ta(c: u32, params: &[ParamSpec], result: &OpResult) -> Result<(), String> {
    if c == ta_cmd::WRITE_INPUT {
        return if result.a0 == Some(0) && result.ret == Some(TEE_ERROR_TARGET_DEAD) {
            Ok(())
        } else {
            Err(format!(
                "writing an input memref did not kill the TA: {result:?}"
            ))
        };
    }
    if !result.ok {
        return Err(format!("failed: {result:?}"));
    }
    match c {
        ta_cmd::CHECK => {
            let want = (spec_size(params.first()), NONE_WRONG);
            match result_value(result, 2) {
                Some(got) if got == want => Ok(()),
                got => Err(format!(
                    "CHECK answered (bytes, first wrong) {got:?}, not {want:?}"
                )),
            }
        }
        ta_cmd::CALL_PEER => {
            let len = match params.first() {
                Some(ParamSpec::Value { b, .. }) => *b,
                _ => 0,
            };
            let want = (len, u64::from(TEE_ERROR_TARGET_DEAD));
            match result_value(result, 1) {
                Some(got) if got == want => Ok(()),
                got => Err(format!(
                    "CALL_PEER answered (bytes the peer checked, its probe) {got:?}, not {want:?}"
                )),
            }
        }
        _ => Ok(()),
    }
}

/// After a FILL of a registered buffer (by the pseudo-TA or the user TA), the guest's own
/// memory must hold the pattern.
fn verify(runner: &Runner, op: &Op) -> Result<(), String> {
    let Op::Invoke {
        guest,
        cmd: c,
        params,
        session,
    } = op
    else {
        return Ok(());
    };
    let fill = match session {
        None => cmd::FILL,
        Some(_) => ta_cmd::FILL,
    };
    if *c != fill {
        return Ok(());
    }
    let (
        Some(ParamSpec::Registered {
            cookie,
            offset,
            size,
            ..
        }),
        Some(ParamSpec::Value { a: seed, .. }),
    ) = (params.first(), params.get(1))
    else {
        return Ok(());
    };
    let Some(buf) = runner.buffer(*guest, *cookie) else {
        return Ok(());
    };
    let Some(g) = runner.system.guest(*guest) else {
        return Ok(());
    };
    let ctx = g.context();
    let len = (*size).min(4096);
    let got = read_buffer(ctx.driver().ram(), buf, *offset, len).map_err(|e| e.to_string())?;
    let who = if session.is_some() {
        "the user TA"
    } else {
        "the pseudo-TA"
    };
    for (i, b) in got.iter().enumerate() {
        if *b != pattern_byte(*seed, i as u64) {
            return Err(format!(
                "cookie {cookie:#x} byte {} is {b:#x}, {who} wrote {:#x}",
                offset + i as u64,
                pattern_byte(*seed, i as u64)
            ));
        }
    }
    let _ = buffer_byte;
    Ok(())
}

/// What a stress run does.
#[derive(Debug, Clone, Copy)]
pub struct StressPlan {
    /// Guests, 1..=guests.
    pub guests: u16,
    /// Operations in all.
    pub ops: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Worker threads, each driving its own guests.
    pub threads: usize,
    /// Guest [`EXHAUSTER`] runs the exhaustion mix (its refusals only need to be clean) while
    /// the others run the usual mix and must succeed as if it were not there.
    pub exhaust: bool,
    /// The whole system is checked after every `check_every`-th step and after the last (1:
    /// after every step). Each operation's answer is judged whatever this is; the checker's
    /// cost grows with what the guests hold (an exhauster holding its whole quota makes it
    /// milliseconds), which is what a sparser check is for in a long run.
    pub check_every: u64,
}

impl StressPlan {
    /// `ops` operations over `guests` guests on one thread from `seed`, checked after every
    /// step, the usual mix.
    pub fn new(guests: u16, ops: u64, seed: u64) -> Self {
        Self {
            guests,
            ops,
            seed,
            threads: 1,
            exhaust: false,
            check_every: 1,
        }
    }
}

/// Runs `plan` on `system`, calling `progress(steps_done)` after every check.
pub fn run(
    system: Arc<System>,
    plan: StressPlan,
    progress: &(dyn Fn(u64) + Sync),
) -> StressOutcome {
    let StressPlan {
        guests,
        ops,
        seed,
        threads,
        exhaust,
        check_every,
    } = plan;
    let check_every = check_every.max(1);
    let threads = threads.clamp(1, usize::from(guests.max(1)));
    let steps = ops.div_ceil(threads as u64);
    let barrier = Barrier::new(threads);
    let log: Mutex<Vec<(u64, usize, Op)>> = Mutex::new(Vec::new());
    let violation: Mutex<Option<Violation>> = Mutex::new(None);
    let succeeded = std::sync::atomic::AtomicU64::new(0);
    let per_guest: Mutex<std::collections::BTreeMap<u16, GuestTally>> = Mutex::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (system, barrier, log, violation, succeeded, stop, per_guest) = (
                system.clone(),
                &barrier,
                &log,
                &violation,
                &succeeded,
                &stop,
                &per_guest,
            );
            scope.spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                let mut runner = Runner::new(system.clone());
                let mine: Vec<u16> = (1..=guests)
                    .filter(|g| usize::from(*g - 1) % threads == t)
                    .collect();
                let mut state = WorkerState {
                    // Above 2^48: never the cookie 0xdead that stands for "unknown" (a run of a
                    // million operations once registered cookie 0xdead on thread 0).
                    next_cookie: (t as u64 + 1) << 48,
                    next_session: 0,
                    pending: BTreeMap::new(),
                };
                let flag = |step: u64, what: String| {
                    let mut v = violation.lock().unwrap_or_else(|e| e.into_inner());
                    if v.is_none() {
                        *v = Some(Violation { step, what });
                    }
                };
                // Runs `op` of `guest` at `step`, counts, judges (`strict`: it must answer as
                // a correct system does; else only the checker judges it) and logs it.
                let run_one = |runner: &mut Runner, step: u64, guest: u16, op: Op, strict: bool| {
                    let running = system.guest(guest).is_some();
                    let result = runner.run(&op);
                    if result.ok {
                        succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    {
                        let mut tally = per_guest.lock().unwrap_or_else(|e| e.into_inner());
                        let t = tally.entry(guest).or_default();
                        t.ops += 1;
                        t.succeeded += u64::from(result.ok);
                    }
                    if strict {
                        let verdict =
                            judge(running, &op, &result).and_then(|()| verify(runner, &op));
                        if let Err(what) = verdict {
                            flag(step, what);
                        }
                    }
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((step, t, op));
                };
                // Everyone's step is done: the last to arrive checks (`extra` adds what else
                // must hold then), the others wait for it, and all see `stop` alike.
                let step_end = |step: u64, checked: bool, extra: &dyn Fn() -> Vec<String>| {
                    if barrier.wait().is_leader() && checked {
                        let mut found = system.check();
                        found.extend(extra());
                        if let Some(first) = found.into_iter().next() {
                            flag(step, first);
                        }
                        if violation
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_some()
                        {
                            stop.store(true, std::sync::atomic::Ordering::Release);
                        }
                        progress((step + 1).min(steps));
                    }
                    barrier.wait();
                };
                for step in 0..steps {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let guest = mine[rng.below(mine.len() as u64) as usize];
                    let running = system.guest(guest).is_some();
                    let exhausting = exhaust && guest == EXHAUSTER;
                    let op = match state.pending.remove(&guest) {
                        Some(op) if running => op,
                        _ if exhausting && running => {
                            exhausting_op(&mut rng, &runner, guest, &mut state)
                        }
                        _ => random_op(&mut rng, &runner, guest, running, &mut state),
                    };
                    // The exhauster's refusals only need to be clean: the checker after the
                    // step and everyone else's answers judge it.
                    run_one(&mut runner, step, guest, op, !exhausting);
                    let checked = (step + 1) % check_every == 0 || step + 1 == steps;
                    step_end(step, checked, &|| Vec::new());
                }
                // The end of a run that found nothing: every user TA session is closed (each
                // close must succeed, the exhauster's too), then all of TA RAM must be free.
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                for &guest in &mine {
                    for s in runner.opened_sessions(guest) {
                        let op = Op::CloseSession {
                            guest,
                            session: s.handle,
                        };
                        run_one(&mut runner, steps, guest, op, true);
                    }
                }
                step_end(steps, true, &|| {
                    let ram = system.ta_ram();
                    if ram.all_free() && ram.instances == 0 {
                        Vec::new()
                    } else {
                        vec![format!(
                            "every user TA session is closed, but only {} of {} pages of TA RAM are free",
                            ram.free_pages, ram.total_pages
                        )]
                    }
                });
            });
        }
    });
    let mut log = log.into_inner().unwrap_or_else(|e| e.into_inner());
    log.sort_by_key(|(step, t, _)| (*step, *t));
    let violation = violation.into_inner().unwrap_or_else(|e| e.into_inner());
    let last = violation.as_ref().map_or(u64::MAX, |v| v.step);
    let log: Vec<Op> = log
        .into_iter()
        .filter(|(step, _, _)| *step <= last)
        .map(|(_, _, op)| op)
        .collect();
    StressOutcome {
        per_guest: per_guest.into_inner().unwrap_or_else(|e| e.into_inner()),
        steps: violation
            .as_ref()
            .map_or(steps, |v| (v.step + 1).min(steps)),
        ops: log.len() as u64,
        succeeded: succeeded.into_inner(),
        violation,
        log,
    }
}
