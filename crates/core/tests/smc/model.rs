//! Property test: random sequences of VM create / destroy, register, unregister, invokes with
//! every memref kind, RPCs, and calls left suspended, over several guests. After every step the
//! whole core's agreement checker runs, and each guest's counters are compared with a plain
//! model of what it should hold.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::SmcRegs;
use teeshm_core::pta::cmd;
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;
use zerocopy::IntoBytes;

#[derive(Debug, Clone)]
enum Op {
    Create(u16),
    Destroy(u16),
    Register {
        guest: u16,
        cookie: u64,
        pages: u64,
        offset: u64,
    },
    Unregister {
        guest: u16,
        cookie: u64,
    },
    Touch {
        guest: u16,
        cookie: u64,
    },
    TmemFill {
        guest: u16,
        pages: u64,
    },
    RpcBuffer {
        guest: u16,
        bytes: u64,
    },
    Suspend {
        guest: u16,
        cookie: u64,
    },
    ResumeOldest,
}

fn op() -> impl Strategy<Value = Op> {
    // Guests 1..=3 come and go; guest 4 lives through the whole run.
    let g = 1u16..5;
    let c = 0u64..6;
    prop_oneof![
        (1u16..4).prop_map(Op::Create),
        (1u16..4).prop_map(Op::Destroy),
        (g.clone(), c.clone(), 1u64..20, 0u64..4096).prop_map(|(guest, cookie, pages, offset)| {
            Op::Register {
                guest,
                cookie,
                pages,
                offset,
            }
        }),
        (g.clone(), c.clone()).prop_map(|(guest, cookie)| Op::Unregister { guest, cookie }),
        (g.clone(), c.clone()).prop_map(|(guest, cookie)| Op::Touch { guest, cookie }),
        (g.clone(), 1u64..10).prop_map(|(guest, pages)| Op::TmemFill { guest, pages }),
        (g.clone(), 1u64..30_000).prop_map(|(guest, bytes)| Op::RpcBuffer { guest, bytes }),
        (g, c).prop_map(|(guest, cookie)| Op::Suspend { guest, cookie }),
        Just(Op::ResumeOldest),
    ]
}

/// What the model says a guest holds.
#[derive(Debug, Default, Clone)]
struct GuestModel {
    /// Registered cookie -> pages.
    registered: BTreeMap<u64, u64>,
    /// Pages of buffers unregistered while a suspended call used them.
    retired_in_use: u64,
    session: u32,
}

struct Suspended {
    guest: u16,
    out: SmcRegs,
    /// Pages of the registered buffer the call holds, and whether it was unregistered since.
    held: Option<(u64, u64)>,
}

fn pages_of(offset: u64, pages: u64) -> u64 {
    // A buffer of `pages` * 4096 - offset bytes at `offset` spans exactly `pages` pages.
    let size = pages * PAGE - offset;
    teeshm_abi::page_list::num_pages(offset, size.max(1)).unwrap()
}

fn run(ops: Vec<Op>) {
    let w = World::virtualized();
    let mut model: BTreeMap<u16, GuestModel> = BTreeMap::new();
    assert_eq!(w.create_guest(4), 0);
    model.insert(
        4,
        GuestModel {
            session: w.open_session(GuestId(4)),
            ..Default::default()
        },
    );
    let mut suspended: Vec<Suspended> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let live = |id: u16, m: &BTreeMap<u16, GuestModel>| m.contains_key(&id);
        match op {
            Op::Create(id) => {
                let a0 = w.create_guest(id);
                if live(id, &model) {
                    assert_eq!(a0, OPTEE_SMC_RETURN_ENOTAVAIL);
                } else {
                    assert_eq!(a0, 0);
                    let session = w.open_session(GuestId(id));
                    model.insert(
                        id,
                        GuestModel {
                            session,
                            ..Default::default()
                        },
                    );
                }
            }
            Op::Destroy(id) => {
                assert_eq!(w.destroy_guest(id), 0);
                model.remove(&id);
                suspended.retain(|s| s.guest != id);
            }
            Op::Register {
                guest,
                cookie,
                pages,
                offset,
            } => {
                let buf = w.buffer(pages * PAGE - offset, offset);
                if !live(guest, &model) {
                    continue;
                }
                let ret = w.register(GuestId(guest), cookie, &buf);
                let m = model.get_mut(&guest).unwrap();
                match m.registered.entry(cookie) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(ret, TEE_ERROR_BAD_PARAMETERS, "step {step}: duplicate");
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        assert_eq!(ret, TEE_SUCCESS, "step {step}");
                        slot.insert(pages_of(offset, pages));
                    }
                }
            }
            Op::Unregister { guest, cookie } => {
                if !live(guest, &model) {
                    continue;
                }
                let ret = w.unregister(GuestId(guest), cookie);
                let m = model.get_mut(&guest).unwrap();
                match m.registered.remove(&cookie) {
                    None => assert_eq!(ret, TEE_ERROR_BAD_PARAMETERS),
                    Some(pages) => {
                        let holder = suspended.iter_mut().find(|s| {
                            s.guest == guest && matches!(s.held, Some((c, _)) if c == cookie)
                        });
                        match holder {
                            Some(s) => {
                                // Revoked: success at once, the object lives on with its user.
                                assert_eq!(ret, TEE_SUCCESS, "step {step}");
                                s.held = Some((u64::MAX, pages));
                                m.retired_in_use += pages;
                            }
                            None => assert_eq!(ret, TEE_SUCCESS, "step {step}"),
                        }
                    }
                }
            }
            Op::Touch { guest, cookie } => {
                let Some(m) = model.get(&guest) else { continue };
                let r = w.invoke(
                    GuestId(guest),
                    m.session,
                    cmd::TOUCH,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 1),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                let expected = if m.registered.contains_key(&cookie) {
                    TEE_SUCCESS
                } else {
                    TEE_ERROR_BAD_PARAMETERS
                };
                assert!(
                    r.a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT || r.ret() == expected,
                    "step {step}"
                );
            }
            Op::TmemFill { guest, pages } => {
                let Some(m) = model.get(&guest) else { continue };
                let buf = w.buffer(pages * PAGE - 7, 7);
                let r = w.invoke(
                    GuestId(guest),
                    m.session,
                    cmd::FILL,
                    &[
                        w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &buf),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 1, 0, 0),
                    ],
                );
                assert!(r.a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT || r.ret() == TEE_SUCCESS);
            }
            Op::RpcBuffer { guest, bytes } => {
                let Some(m) = model.get(&guest) else { continue };
                let r = w.invoke_as(
                    GuestId(guest),
                    ArgMode::Plain,
                    m.session,
                    cmd::RPC_BUFFER,
                    &[
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, bytes, 1, 5),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                assert!(r.a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT || r.ret() == TEE_SUCCESS);
            }
            Op::Suspend { guest, cookie } => {
                let Some(m) = model.get(&guest) else { continue };
                let Some(&pages) = m.registered.get(&cookie) else {
                    continue;
                };
                let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
                h.session.set(m.session);
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
                w.mem.write(page, &bytes);
                let out = w.smc(GuestId(guest), OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
                if out.a[0] as u32 == OPTEE_SMC_RETURN_ETHREAD_LIMIT {
                    continue;
                }
                assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_RPC_ALLOC, "step {step}");
                suspended.push(Suspended {
                    guest,
                    out,
                    held: Some((cookie, pages)),
                });
            }
            Op::ResumeOldest => {
                if suspended.is_empty() {
                    continue;
                }
                let s = suspended.remove(0);
                let mut out = s.out;
                while is_rpc_return(out.a[0] as u32) {
                    let answer = w.answer_rpc(&out, None);
                    out = w.tee.handle_smc(answer.from_client(GuestId(s.guest)));
                }
                assert_eq!(out.a[0], 0);
                if let Some((u64::MAX, pages)) = s.held {
                    model.get_mut(&s.guest).unwrap().retired_in_use -= pages;
                }
            }
        }
        let found = w.tee.check_agreement();
        assert!(found.is_empty(), "step {step}: {found:#?}");
        let live_ids: BTreeSet<u16> = w.tee.guests().iter().map(|g| g.id().raw()).collect();
        assert_eq!(live_ids, model.keys().copied().collect(), "step {step}");
        for (&id, m) in &model {
            let snap = w.tee.guest(GuestId(id)).unwrap().snapshot();
            assert_eq!(
                snap.registered_buffers,
                m.registered.len() as u64,
                "step {step} guest {id}"
            );
            let pages: u64 = m.registered.values().sum::<u64>() + m.retired_in_use;
            assert_eq!(snap.registered_pages, pages, "step {step} guest {id}");
            let held = suspended.iter().filter(|s| s.guest == id).count() as u64;
            assert_eq!(snap.threads, held, "step {step} guest {id}");
        }
    }
    // Ending every call and destroying every guest leaves nothing behind.
    for s in suspended {
        let mut out = s.out;
        while is_rpc_return(out.a[0] as u32) {
            let answer = w.answer_rpc(&out, None);
            out = w.tee.handle_smc(answer.from_client(GuestId(s.guest)));
        }
    }
    for id in 1..4 {
        w.destroy_guest(id);
    }
    for &cookie in model[&4].registered.keys() {
        assert_eq!(w.unregister(GuestId(4), cookie), TEE_SUCCESS);
    }
    w.check();
    assert_eq!(w.tee.window().mapped_objects(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_sequences_keep_everything_in_agreement(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// Hostile input: SMCs with random registers, args of random bytes (with plausible commands and
/// attrs mixed in), and random answers to RPCs. Nothing panics, every answer is an OP-TEE code,
/// and the core stays in agreement.
fn garbage(seed_ops: Vec<(u8, [u64; 6], Vec<u8>)>) {
    let w = World::default_world();
    w.create_guest(1);
    let s = w.open_session(GuestId(1));
    let buf = w.buffer(3 * PAGE, 0);
    assert_eq!(w.register(GuestId(1), 1, &buf), TEE_SUCCESS);
    let funcs = [
        OPTEE_SMC_CALL_WITH_ARG,
        OPTEE_SMC_CALL_WITH_RPC_ARG,
        OPTEE_SMC_CALL_WITH_REGD_ARG,
        OPTEE_SMC_CALL_RETURN_FROM_RPC,
        OPTEE_SMC_VM_CREATED,
        OPTEE_SMC_VM_DESTROYED,
        OPTEE_SMC_DISABLE_SHM_CACHE,
        OPTEE_SMC_ENABLE_SHM_CACHE,
        OPTEE_SMC_EXCHANGE_CAPABILITIES,
    ];
    let page = w.alloc_page();
    for (f, regs, mut bytes) in seed_ops {
        // Make the bytes look like an arg often enough to reach the message code.
        if bytes.len() >= 32 && f % 2 == 0 {
            bytes[0..4].copy_from_slice(&u32::from(f % 6).to_le_bytes());
            bytes[8..12].copy_from_slice(&s.to_le_bytes());
            bytes[28..32].copy_from_slice(&u32::from(f % 5).to_le_bytes());
            let mut at = 32;
            while at + 8 <= bytes.len() {
                let attr = [
                    0x1u64, 0x2, 0x3, 0x5, 0x6, 0x7, 0x9, 0xa, 0x20a, 0x209, 0x101,
                ][(regs[0] as usize + at) % 11];
                bytes[at..at + 8].copy_from_slice(&attr.to_le_bytes());
                at += 32;
            }
        }
        w.mem.write(page, &bytes);
        let func = funcs[f as usize % funcs.len()];
        let (a1, a2) = if f % 3 == 0 {
            split_pair(page)
        } else {
            (regs[0], regs[1])
        };
        let guest = [0u64, 1, 2, regs[5]][(f / 16) as usize % 4];
        let mut regs_in = SmcRegs::call(func, &[a1, a2, regs[2], regs[3], regs[4], 0]);
        regs_in.a[7] = guest;
        let mut out = w.tee.handle_smc(regs_in);
        // Answer RPCs with garbage a few times, then properly.
        let mut rounds = 0;
        while is_rpc_return(out.a[0] as u32) {
            rounds += 1;
            let answer = if rounds < 3 {
                w.mem.write(page, &bytes);
                SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[regs[1], regs[2], out.a[3], regs[3], regs[4], 0],
                )
            } else {
                w.answer_rpc(&out, Some(page))
            };
            let mut answer = answer;
            answer.a[7] = guest;
            out = w.tee.handle_smc(answer);
            assert!(rounds < 50);
        }
        let found = w.tee.check_agreement();
        assert!(found.is_empty(), "{found:#?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn garbage_never_panics_and_keeps_agreement(
        ops in proptest::collection::vec(
            (any::<u8>(), any::<[u64; 6]>(), proptest::collection::vec(any::<u8>(), 0..300)),
            1..40,
        )
    ) {
        garbage(ops);
    }
}
