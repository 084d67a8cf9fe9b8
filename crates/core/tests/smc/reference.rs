//! A reference model of the whole registry, run side by side with the real core.
//!
//! The model is plain maps and no cleverness: which guests live; each guest's sessions (with
//! the ids the core must hand out), its cookie table, and the objects behind it with their
//! bytes and whether the mapping cache holds them; the calls suspended in an RPC and the
//! buffers they hold; buffers unregistered while held (retired) and released with their last
//! holder. Random operation sequences over 8 guests run against the model and the core; after
//! every step every observable answer (a0, ret, session ids, the values TOUCH and RPC_BUFFER
//! return) and every counter of every guest (buffers, sessions, objects, registered pages,
//! mapped pages, threads), the live guests, the window's mappings and the thread states must
//! agree, and the core's agreement checker must find nothing.
//!
//! `cargo test -p teeshm-core reference_model` runs a bounded number of sequences; the long
//! run of the whole system is `teeshm stress` (docs/assurance.md).

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::SmcRegs;
use teeshm_core::pta::{cmd, pattern_byte};
use teeshm_core::thread::ThreadState;
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;
use zerocopy::IntoBytes;

const GUESTS: u16 = 8;
/// One thread reserved for each of the 8 guests, 4 shared.
const THREADS: usize = 12;
/// Threads one guest may hold (the default quota).
const GUEST_THREADS: usize = 8;
const MAX_SESSIONS: usize = 64;

std::thread_local! {
    static OK: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    static REVOKED: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    static THREAD_LIMITED: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

#[derive(Debug, Clone)]
enum Op {
    Create(u16),
    Destroy(u16),
    OpenSession(u16),
    CloseSession(u16, u8),
    Register {
        guest: u16,
        cookie: u64,
        pages: u64,
        offset: u64,
    },
    Unregister(u16, u64),
    Fill {
        guest: u16,
        cookie: u64,
        offs: u64,
        size: u64,
        seed: u64,
    },
    Touch {
        guest: u16,
        cookie: u64,
        offs: u64,
        size: u64,
    },
    TmemFill(u16, u64),
    Suspend(u16, u64),
    Resume(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let g = 1u16..=GUESTS;
    let c = 0u64..5;
    prop_oneof![
        2 => g.clone().prop_map(Op::Create),
        1 => g.clone().prop_map(Op::Destroy),
        6 => g.clone().prop_map(Op::OpenSession),
        1 => (g.clone(), any::<u8>()).prop_map(|(g, i)| Op::CloseSession(g, i)),
        12 => (g.clone(), c.clone(), 1u64..4, 0u64..4096).prop_map(|(guest, cookie, pages, offset)| {
            Op::Register { guest, cookie, pages, offset }
        }),
        6 => (g.clone(), c.clone()).prop_map(|(g, c)| Op::Unregister(g, c)),
        9 => (g.clone(), c.clone(), 0u64..13_000, 0u64..13_000, any::<u64>()).prop_map(
            |(guest, cookie, offs, size, seed)| Op::Fill { guest, cookie, offs, size, seed }
        ),
        9 => (g.clone(), c.clone(), 0u64..13_000, 0u64..13_000).prop_map(
            |(guest, cookie, offs, size)| Op::Touch { guest, cookie, offs, size }
        ),
        2 => (g.clone(), 1u64..4).prop_map(|(g, p)| Op::TmemFill(g, p)),
        9 => (g, c).prop_map(|(g, c)| Op::Suspend(g, c)),
        4 => any::<u8>().prop_map(Op::Resume),
    ]
}

/// A buffer the model knows: its owner, cookie, pages, bytes, whether the cache maps it,
/// whether it was unregistered while held, and how many suspended calls hold it.
#[derive(Debug, Clone)]
struct Obj {
    guest: u16,
    pages: u64,
    bytes: Vec<u8>,
    mapped: bool,
    retired: bool,
    holders: u32,
}

#[derive(Debug, Default, Clone)]
struct GuestModel {
    sessions: BTreeSet<u32>,
    next_session: u32,
    cookies: BTreeMap<u64, usize>,
}

struct Suspended {
    guest: u16,
    out: SmcRegs,
    obj: usize,
}

#[derive(Default)]
struct Model {
    guests: BTreeMap<u16, GuestModel>,
    objs: BTreeMap<usize, Obj>,
    next_obj: usize,
    suspended: Vec<Suspended>,
}

impl Model {
    /// Threads lent from the shared pool: those in use beyond each live holder's reserved one.
    fn borrowed(&self) -> usize {
        let holders: BTreeSet<u16> = self.suspended.iter().map(|s| s.guest).collect();
        self.suspended.len() - holders.len()
    }

    /// The a0 a yielding call of `guest` gets before its message runs, if it does not run:
    /// its reserved thread if it holds none, else one of the shared pool (the threads beyond
    /// one per guest the core may have) if any is left and every other live guest still finds
    /// a free one.
    fn refused(&self, guest: u16) -> Option<u32> {
        if !self.guests.contains_key(&guest) {
            return Some(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        let held = self.suspended.iter().filter(|s| s.guest == guest).count();
        let shared = THREADS - usize::from(GUESTS);
        let free = THREADS - self.suspended.len();
        let waiting = self
            .guests
            .keys()
            .filter(|g| !self.suspended.iter().any(|s| s.guest == **g))
            .count();
        let full = held >= GUEST_THREADS
            || free == 0
            || (held > 0 && (self.borrowed() >= shared || free <= waiting));
        if full {
            THREAD_LIMITED.with(|c| c.set(c.get() + 1));
        }
        full.then_some(OPTEE_SMC_RETURN_ETHREAD_LIMIT)
    }

    /// Whether a new guest gets its thread: one is set aside for each of the `GUESTS` the core
    /// may have, so always (no call of a destroyed guest outlives its destruction here).
    fn admits(&self) -> bool {
        self.guests.len() < usize::from(GUESTS)
    }

    fn session_of(&self, guest: u16) -> u32 {
        self.guests[&guest]
            .sessions
            .first()
            .copied()
            .unwrap_or(0xdead)
    }

    /// The object behind `cookie`, with the bounds check of an RMEM param.
    fn resolve(&self, guest: u16, cookie: u64, offs: u64, size: u64) -> Result<usize, u32> {
        let g = &self.guests[&guest];
        if !g.sessions.contains(&self.session_of(guest)) {
            return Err(TEE_ERROR_BAD_PARAMETERS);
        }
        let &id = g.cookies.get(&cookie).ok_or(TEE_ERROR_BAD_PARAMETERS)?;
        match offs.checked_add(size) {
            Some(end) if end <= self.objs[&id].bytes.len() as u64 => Ok(id),
            _ => Err(TEE_ERROR_SECURITY),
        }
    }

    fn release_if_done(&mut self, id: usize) {
        if self
            .objs
            .get(&id)
            .is_some_and(|o| o.retired && o.holders == 0)
        {
            self.objs.remove(&id);
        }
    }
}

/// Expected and actual answers must be the same.
fn same(step: usize, what: &str, expected: u32, got: u32) {
    if expected == TEE_SUCCESS && what.chars().all(|c| c.is_ascii_uppercase() || c == ' ') {
        OK.with(|c| c.set(c.get() + 1));
    }
    assert_eq!(
        got, expected,
        "step {step}: {what}: core {got:#x}, model {expected:#x}"
    );
}

/// Compares everything observable after a step.
fn compare(w: &World, m: &Model, step: usize) {
    let found = w.tee.check_agreement();
    assert!(found.is_empty(), "step {step}: {found:#?}");
    let live: BTreeSet<u16> = w
        .tee
        .guests()
        .iter()
        .map(|g| g.id().raw())
        .filter(|&id| id != 0)
        .collect();
    assert_eq!(live, m.guests.keys().copied().collect(), "step {step}");
    for (&id, g) in &m.guests {
        let snap = w.tee.guest(GuestId(id)).unwrap().snapshot();
        let objs: Vec<&Obj> = m.objs.values().filter(|o| o.guest == id).collect();
        let held = m.suspended.iter().filter(|s| s.guest == id).count() as u64;
        let expected = (
            g.cookies.len() as u64,
            g.sessions.len() as u64,
            objs.len() as u64 + held,
            objs.iter().map(|o| o.pages).sum::<u64>(),
            objs.iter()
                .filter(|o| o.mapped)
                .map(|o| o.pages)
                .sum::<u64>()
                + held,
            held,
        );
        let got = (
            snap.registered_buffers,
            snap.sessions,
            snap.objects,
            snap.registered_pages,
            snap.mapped_pages,
            snap.threads,
        );
        assert_eq!(
            got, expected,
            "step {step} guest {id}: (buffers, sessions, objects, registered pages, mapped pages, threads)"
        );
    }
    let mapped = m.objs.values().filter(|o| o.mapped).count() + m.suspended.len();
    assert_eq!(w.tee.window().mapped_objects(), mapped, "step {step}");
    let busy = w
        .tee
        .thread_states()
        .iter()
        .filter(|t| **t != ThreadState::Free)
        .count();
    assert_eq!(busy, m.suspended.len(), "step {step}");
}

/// Runs `ops` on the core and the model; returns how many messages succeeded, how many
/// unregisters of buffers in use (revoked) and the most calls suspended at once.
fn run(ops: Vec<Op>) -> (u64, u64, usize) {
    let mut config = teeshm_core::CoreConfig {
        normal_world: teeshm_core::NormalWorld::Virtualized,
        threads: THREADS as u32,
        max_guests: u32::from(GUESTS),
        ..Default::default()
    };
    config.quotas.max_threads = GUEST_THREADS as u64;
    let w = World::new(config);
    let mut m = Model::default();
    let (mut ok, mut busy, mut most) = (0u64, 0u64, 0usize);
    // Every guest starts alive with a session; the sequence then creates and destroys at will.
    let start = (1..=GUESTS).flat_map(|g| [Op::Create(g), Op::OpenSession(g)]);
    for (step, op) in start.chain(ops).enumerate() {
        most = most.max(m.suspended.len());
        match op {
            Op::Create(id) => {
                let admits = m.admits();
                let expected = match m.guests.entry(id) {
                    std::collections::btree_map::Entry::Occupied(_) => OPTEE_SMC_RETURN_ENOTAVAIL,
                    std::collections::btree_map::Entry::Vacant(_) if !admits => {
                        OPTEE_SMC_RETURN_ENOTAVAIL
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(GuestModel {
                            next_session: 1,
                            ..GuestModel::default()
                        });
                        OPTEE_SMC_RETURN_OK
                    }
                };
                same(step, "VM_CREATED", expected, w.create_guest(id));
            }
            Op::Destroy(id) => {
                same(step, "VM_DESTROYED", 0, w.destroy_guest(id));
                m.guests.remove(&id);
                m.suspended.retain(|s| s.guest != id);
                m.objs.retain(|_, o| o.guest != id);
            }
            Op::OpenSession(id) => {
                let r = w.open_session_uuid(GuestId(id), teeshm_core::pta::MEMTEST_UUID);
                if let Some(a0) = m.refused(id) {
                    same(step, "OPEN_SESSION a0", a0, r.a0);
                    continue;
                }
                same(step, "OPEN_SESSION a0", 0, r.a0);
                let g = m.guests.get_mut(&id).unwrap();
                if g.sessions.len() >= MAX_SESSIONS {
                    same(step, "OPEN_SESSION", TEE_ERROR_OUT_OF_MEMORY, r.ret());
                    continue;
                }
                let mut sid = g.next_session;
                while sid == 0 || g.sessions.contains(&sid) {
                    sid = sid.wrapping_add(1);
                }
                g.next_session = sid.wrapping_add(1);
                g.sessions.insert(sid);
                same(step, "OPEN_SESSION", TEE_SUCCESS, r.ret());
                same(step, "session id", sid, r.header.session.get());
            }
            Op::CloseSession(id, pick) => {
                let sid = m.guests.get(&id).map_or(1, |g| {
                    let all: Vec<u32> = g.sessions.iter().copied().collect();
                    if all.is_empty() || pick % 4 == 0 {
                        u32::from(pick) + 100
                    } else {
                        all[usize::from(pick) % all.len()]
                    }
                });
                let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
                h.session.set(sid);
                let r = w.call(GuestId(id), ArgMode::RpcArg, h, &[]);
                if let Some(a0) = m.refused(id) {
                    same(step, "CLOSE_SESSION a0", a0, r.a0);
                    continue;
                }
                let known = m.guests.get_mut(&id).unwrap().sessions.remove(&sid);
                let expected = if known {
                    TEE_SUCCESS
                } else {
                    TEE_ERROR_BAD_PARAMETERS
                };
                same(step, "CLOSE_SESSION", expected, r.ret());
            }
            Op::Register {
                guest,
                cookie,
                pages,
                offset,
            } => {
                let size = pages * PAGE - offset;
                let buf = w.buffer(size, offset);
                w.fill_buf(&buf, |i| pattern_byte(cookie, i));
                let (buf_ptr, lists) = w.page_list(&buf);
                let p = MsgParam::from_tmem(
                    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                    Tmem::new(buf_ptr, size, cookie),
                );
                let r = w.call(
                    GuestId(guest),
                    ArgMode::RpcArg,
                    header(OPTEE_MSG_CMD_REGISTER_SHM),
                    &[p],
                );
                w.free_pages(&lists);
                if let Some(a0) = m.refused(guest) {
                    same(step, "REGISTER a0", a0, r.a0);
                    continue;
                }
                same(step, "REGISTER a0", 0, r.a0);
                let g = m.guests.get_mut(&guest).unwrap();
                if g.cookies.contains_key(&cookie) {
                    same(
                        step,
                        "REGISTER duplicate",
                        TEE_ERROR_BAD_PARAMETERS,
                        r.ret(),
                    );
                    continue;
                }
                same(step, "REGISTER", TEE_SUCCESS, r.ret());
                let id = m.next_obj;
                m.next_obj += 1;
                g.cookies.insert(cookie, id);
                m.objs.insert(
                    id,
                    Obj {
                        guest,
                        pages,
                        bytes: (0..size).map(|i| pattern_byte(cookie, i)).collect(),
                        mapped: false,
                        retired: false,
                        holders: 0,
                    },
                );
            }
            Op::Unregister(guest, cookie) => {
                let p =
                    MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
                let r = w.call(
                    GuestId(guest),
                    ArgMode::RpcArg,
                    header(OPTEE_MSG_CMD_UNREGISTER_SHM),
                    &[p],
                );
                if let Some(a0) = m.refused(guest) {
                    same(step, "UNREGISTER a0", a0, r.a0);
                    continue;
                }
                same(step, "UNREGISTER a0", 0, r.a0);
                match m.guests.get_mut(&guest).unwrap().cookies.remove(&cookie) {
                    None => same(
                        step,
                        "UNREGISTER unknown",
                        TEE_ERROR_BAD_PARAMETERS,
                        r.ret(),
                    ),
                    Some(id) => {
                        let o = m.objs.get_mut(&id).unwrap();
                        o.retired = true;
                        // A held buffer is revoked: success all the same.
                        if o.holders > 0 {
                            REVOKED.with(|c| c.set(c.get() + 1));
                            // Its mapping goes with the revocation, not with its last user.
                            o.mapped = false;
                        }
                        same(step, "UNREGISTER", TEE_SUCCESS, r.ret());
                        m.release_if_done(id);
                    }
                }
            }
            Op::Fill {
                guest,
                cookie,
                offs,
                size,
                seed,
            } => {
                let session = m.guests.get(&guest).map_or(0, |_| m.session_of(guest));
                let r = w.invoke(
                    GuestId(guest),
                    session,
                    cmd::FILL,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, offs, size),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, seed, 0, 0),
                    ],
                );
                if let Some(a0) = m.refused(guest) {
                    same(step, "FILL a0", a0, r.a0);
                    continue;
                }
                same(step, "FILL a0", 0, r.a0);
                match m.resolve(guest, cookie, offs, size) {
                    Err(code) => same(step, "FILL refused", code, r.ret()),
                    Ok(id) => {
                        same(step, "FILL", TEE_SUCCESS, r.ret());
                        let o = m.objs.get_mut(&id).unwrap();
                        for i in 0..size {
                            o.bytes[(offs + i) as usize] = pattern_byte(seed, i);
                        }
                        o.mapped = true;
                    }
                }
            }
            Op::Touch {
                guest,
                cookie,
                offs,
                size,
            } => {
                let session = m.guests.get(&guest).map_or(0, |_| m.session_of(guest));
                let r = w.invoke(
                    GuestId(guest),
                    session,
                    cmd::TOUCH,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, offs, size),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                if let Some(a0) = m.refused(guest) {
                    same(step, "TOUCH a0", a0, r.a0);
                    continue;
                }
                same(step, "TOUCH a0", 0, r.a0);
                match m.resolve(guest, cookie, offs, size) {
                    Err(code) => same(step, "TOUCH refused", code, r.ret()),
                    Ok(_) if size == 0 => {
                        same(step, "TOUCH empty", TEE_ERROR_BAD_PARAMETERS, r.ret())
                    }
                    Ok(id) => {
                        same(step, "TOUCH", TEE_SUCCESS, r.ret());
                        let o = m.objs.get_mut(&id).unwrap();
                        o.mapped = true;
                        let first = u64::from(o.bytes[offs as usize]);
                        let last = u64::from(o.bytes[(offs + size - 1) as usize]);
                        assert_eq!(r.value(1), [first, last, 0], "step {step}: TOUCH values");
                    }
                }
            }
            Op::TmemFill(guest, pages) => {
                let session = m.guests.get(&guest).map_or(0, |_| m.session_of(guest));
                let buf = w.buffer(pages * PAGE - 9, 9);
                let r = w.invoke(
                    GuestId(guest),
                    session,
                    cmd::FILL,
                    &[
                        w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &buf),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, pages, 0, 0),
                    ],
                );
                if let Some(a0) = m.refused(guest) {
                    same(step, "TMEM FILL a0", a0, r.a0);
                    continue;
                }
                let expected = if m.guests[&guest].sessions.contains(&session) {
                    TEE_SUCCESS
                } else {
                    TEE_ERROR_BAD_PARAMETERS
                };
                same(step, "TMEM FILL", expected, r.ret());
                if expected == TEE_SUCCESS {
                    assert_eq!(w.read_buf(&buf, 0, 1)[0], pattern_byte(pages, 0));
                }
            }
            Op::Suspend(guest, cookie) => {
                // RPC_BUFFER holding registered buffer `cookie`, left waiting in its first RPC.
                let session = m.guests.get(&guest).map_or(0, |_| m.session_of(guest));
                let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
                h.session.set(session);
                h.func.set(cmd::RPC_BUFFER);
                h.num_params.set(3);
                let params = [
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 50, 1, 0),
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 1),
                ];
                let page = w.alloc_page();
                let mut bytes = h.as_bytes().to_vec();
                for p in &params {
                    bytes.extend_from_slice(p.as_bytes());
                }
                w.mem.write(page, &[0u8; 4096]);
                w.mem.write(page, &bytes);
                let out = w.smc(GuestId(guest), OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
                if let Some(a0) = m.refused(guest) {
                    same(step, "SUSPEND a0", a0, out.a0());
                    continue;
                }
                match m.resolve(guest, cookie, 0, 1) {
                    Err(code) => {
                        same(step, "SUSPEND a0", 0, out.a0());
                        let mut back = [0u8; 32];
                        w.mem.read(page, &mut back);
                        let ret = u32::from_le_bytes(back[20..24].try_into().unwrap());
                        same(step, "SUSPEND refused", code, ret);
                    }
                    Ok(id) => {
                        same(step, "SUSPEND a0", OPTEE_SMC_RETURN_RPC_ALLOC, out.a0());
                        m.objs.get_mut(&id).unwrap().holders += 1;
                        m.suspended.push(Suspended {
                            guest,
                            out,
                            obj: id,
                        });
                    }
                }
            }
            Op::Resume(pick) => {
                if m.suspended.is_empty() {
                    continue;
                }
                let s = m.suspended.remove(usize::from(pick) % m.suspended.len());
                let mut out = s.out;
                let mut rounds = 0;
                while is_rpc_return(out.a0()) {
                    rounds += 1;
                    assert!(rounds < 16, "step {step}: RPC loop");
                    let answer = w.answer_rpc(&out, None);
                    out = w.tee.handle_smc(answer.from_client(GuestId(s.guest)));
                }
                same(step, "RESUMED a0", 0, out.a0());
                if let Some(o) = m.objs.get_mut(&s.obj) {
                    o.holders -= 1;
                }
                m.release_if_done(s.obj);
            }
        }
        compare(&w, &m, step);
    }
    // Ending every call and destroying every guest leaves nothing.
    for id in 1..=GUESTS {
        w.destroy_guest(id);
    }
    w.check();
    assert_eq!(w.tee.window().mapped_objects(), 0);
    assert!(
        w.tee
            .thread_states()
            .iter()
            .all(|t| *t == ThreadState::Free)
    );
    ok += OK.with(|c| c.replace(0));
    busy += REVOKED.with(|c| c.replace(0));
    (ok, busy, most)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn reference_model_agrees_with_the_core_over_8_guests(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        run(ops);
    }
}

/// A fixed long sequence (3000 steps, seeded), so every run also covers the thread limit and busy
/// unregisters at depth.
#[test]
fn reference_model_long_fixed_sequence() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let ops = proptest::collection::vec(op(), 3000)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let (ok, revoked, most) = run(ops);
    // The sequence reaches deep: many successes, revoked buffers, the thread limit.
    eprintln!(
        "{ok} successful messages, {revoked} unregisters of buffers in use, {most} calls suspended at most"
    );
    assert!(ok > 150, "{ok} successful messages");
    assert!(revoked > 0, "no unregister of a buffer in use");
    let limited = THREAD_LIMITED.with(|c| c.replace(0));
    assert!(limited > 0, "no call met a thread limit");
    assert!(
        most > THREADS - usize::from(GUESTS),
        "{most} calls suspended at most: the shared pool was never lent out whole"
    );
}
