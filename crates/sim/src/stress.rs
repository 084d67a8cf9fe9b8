//! Random operations over several guests with the agreement checker after every step.
//!
//! A step is one operation per worker thread, run at the same time (each thread drives its own
//! guests, so calls of different guests overlap in the core); then the whole system is checked
//! while nothing runs, by the worker that finished its step last (no thread of its own: with
//! one worker a step hands nothing to another thread, so a loaded machine's scheduler does not
//! sit between every operation and its check). The operations of every step are kept, so a failing run can be written as
//! a replay file (docs/replay.md).

use crate::scenario::{Dir, Op, OpResult, ParamSpec, Runner, buffer_byte, read_buffer};
use crate::system::System;
use std::sync::{Arc, Barrier, Mutex};
use teeshm_core::pta::{cmd, pattern_byte};

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

/// Picks a random operation for `guest`, given what the runner knows it holds.
fn random_op(
    rng: &mut Rng,
    runner: &Runner,
    guest: u16,
    running: bool,
    next_cookie: &mut u64,
) -> Op {
    if !running {
        return Op::CreateGuest { guest };
    }
    let cookies = runner.cookies(guest);
    let roll = rng.below(100);
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
/// 1 MiB), maps them (FILL), asks for large temporary and RPC buffers, and rarely lets go, so
/// it runs into every quota it has, again and again. Each refusal must be clean and must cost
/// no other guest anything.
fn exhausting_op(rng: &mut Rng, runner: &Runner, guest: u16, next_cookie: &mut u64) -> Op {
    let cookies = runner.cookies(guest);
    match rng.below(100) {
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
fn judge(runner: &Runner, guest_known: bool, op: &Op, result: &OpResult) -> Result<(), String> {
    let expect_ok = match op {
        Op::CreateGuest { .. } | Op::DestroyGuest { .. } => true,
        Op::Register { .. } => true,
        Op::Unregister { cookie, .. } => *cookie != 0xdead,
        Op::Invoke { cmd: c, params, .. } => match params.first() {
            Some(ParamSpec::Null { .. }) => *c != cmd::TOUCH,
            _ => true,
        },
        _ => true,
    };
    if !guest_known {
        return Ok(());
    }
    if expect_ok && !result.ok {
        return Err(format!("{op:?} failed: {result:?}"));
    }
    if !expect_ok && result.ok {
        return Err(format!("{op:?} succeeded but should not: {result:?}"));
    }
    let _ = runner;
    Ok(())
}

/// After a FILL of a registered buffer, the guest's own memory must hold the pattern.
fn verify(runner: &Runner, op: &Op) -> Result<(), String> {
    let Op::Invoke {
        guest,
        cmd: c,
        params,
    } = op
    else {
        return Ok(());
    };
    if *c != cmd::FILL {
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
    for (i, b) in got.iter().enumerate() {
        if *b != pattern_byte(*seed, i as u64) {
            return Err(format!(
                "cookie {cookie:#x} byte {} is {b:#x}, the pseudo-TA wrote {:#x}",
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
                // Above 2^48: never the cookie 0xdead that stands for "unknown" (a run of a
                // million operations once registered cookie 0xdead on thread 0).
                let mut next_cookie = (t as u64 + 1) << 48;
                for step in 0..steps {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let guest = mine[rng.below(mine.len() as u64) as usize];
                    let running = system.guest(guest).is_some();
                    let exhausting = exhaust && guest == EXHAUSTER;
                    let op = if exhausting && running {
                        exhausting_op(&mut rng, &runner, guest, &mut next_cookie)
                    } else {
                        random_op(&mut rng, &runner, guest, running, &mut next_cookie)
                    };
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
                    // The exhauster's refusals only need to be clean: the checker after the
                    // step and everyone else's answers judge it.
                    let verdict = if exhausting {
                        Ok(())
                    } else {
                        judge(&runner, running, &op, &result).and_then(|()| verify(&runner, &op))
                    };
                    if let Err(what) = verdict {
                        let mut v = violation.lock().unwrap_or_else(|e| e.into_inner());
                        if v.is_none() {
                            *v = Some(Violation { step, what });
                        }
                    }
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((step, t, op));
                    // Everyone's step is done: the last to arrive checks, the others wait for
                    // it, and all see `stop` alike.
                    let checked = (step + 1) % check_every == 0 || step + 1 == steps;
                    if barrier.wait().is_leader() && checked {
                        let found = system.check();
                        let mut v = violation.lock().unwrap_or_else(|e| e.into_inner());
                        if v.is_none() {
                            if let Some(first) = found.first() {
                                *v = Some(Violation {
                                    step,
                                    what: first.clone(),
                                });
                            }
                        }
                        if v.is_some() {
                            stop.store(true, std::sync::atomic::Ordering::Release);
                        }
                        progress(step + 1);
                    }
                    barrier.wait();
                }
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
        steps: violation.as_ref().map_or(steps, |v| v.step + 1),
        ops: log.len() as u64,
        succeeded: succeeded.into_inner(),
        violation,
        log,
    }
}
