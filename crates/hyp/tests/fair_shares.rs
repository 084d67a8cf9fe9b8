//! Fair shares: every resource the guests share in the mediator — the hypervisor's page pool
//! (shadow pages), pins, buffers, call records — has a per-guest budget, and the budgets of all
//! guests fit what the mediator has. A guest that holds all of its budgets at once cannot keep
//! another from registering, calling and getting RPC buffers; a guest whose share cannot be
//! reserved is not created; a configuration that promises more than the mediator has does not
//! start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::OPTEE_RPC_SHM_TYPE_KERNEL;
use teeshm_abi::smc::*;
use teeshm_core::pta::cmd;
use teeshm_hyp::{
    GuestStats, HypCapacityError, HypConfig, HypError, HypLimits, MachineMemory, Mediator,
    Resource, Stage2,
};

const VIN: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT;
const VOUT: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT;

/// Small budgets, so one guest can hold all of them in a few calls: 2 calls, 4 buffers, 34
/// pins, buffers of 16 pages, 4 shadow pages.
const LIMITS: HypLimits = HypLimits {
    max_calls: 2,
    max_buffers: 4,
    max_pinned_pages: 34,
    max_buffer_pages: 16,
    max_shadow_pages: 4,
};

/// Two guest slots with `limits` and a pool of exactly their two shadow shares: without
/// per-guest budgets, one guest could take the whole pool.
fn two_guests_with(limits: HypLimits) -> System {
    let hyp = HypConfig {
        max_guests: 2,
        limits,
        ..HypConfig::default()
    };
    System::with_hyp(
        virtualized(),
        hyp,
        Some(2 * limits.max_shadow_pages as usize),
    )
}

fn two_guests() -> System {
    two_guests_with(LIMITS)
}

fn rpc_call(g: &mut Guest, sys: &System, session: u32, bytes: u64, seed: u64) -> Started {
    g.start(
        sys,
        invoke_header(session, cmd::RPC_BUFFER),
        &[
            value(VIN, bytes, OPTEE_RPC_SHM_TYPE_KERNEL, seed),
            value(VOUT, 0, 0, 0),
        ],
        0,
    )
}

/// What a well-behaved guest does: register a buffer, fill it through the TEE and check it,
/// fill a temporary buffer, get an RPC buffer, unregister. Every step must succeed.
fn well_behaved(g: &mut Guest, sys: &System, session: u32, seed: u64) {
    let buf = g.buffer(16 * PAGE - 0x40, 0x40);
    let cookie = g.cookie();
    assert_eq!(g.register(sys, cookie, &buf), gp::TEE_SUCCESS, "register");
    let r = g.invoke(
        sys,
        session,
        cmd::FILL,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, buf.size),
            value(VIN, seed, 0, 0),
        ],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS), "fill");
    assert_eq!(g.read_buf(sys, &buf), pattern(seed, buf.size));
    let temp = g.buffer(3 * PAGE, 0);
    let p = g.tmem_list(sys, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &temp);
    let r = g.invoke(sys, session, cmd::FILL, &[p, value(VIN, seed + 1, 0, 0)]);
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS), "temporary fill");
    assert_eq!(g.read_buf(sys, &temp), pattern(seed + 1, temp.size));
    let s = rpc_call(g, sys, session, 2 * PAGE, seed);
    let r = g.finish(sys, s);
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS), "RPC buffer");
    assert_eq!(r.value(1)[0], 2 * PAGE);
    assert_eq!(g.unregister(sys, cookie), gp::TEE_SUCCESS, "unregister");
}

/// Guest A takes every budget it has — calls, buffers, pins, shadow pages — and is refused
/// each time it asks for more, while half the pool is still free: that half is B's, and B
/// registers, calls, fills temporary buffers and gets RPC buffers as if A were not there.
/// When A lets go, A works again.
#[test]
fn a_guest_holding_every_budget_starves_no_other() {
    let mut sys = two_guests();
    let mut a = sys.guest(1, 0);
    let mut b = sys.guest(2, 1);
    let (sa, sb) = (a.open_session(&sys), b.open_session(&sys));

    // Pins: two buffers of 16 pages, then 3 more pages would pass 34.
    let (b1, b2) = (a.buffer(16 * PAGE, 0), a.buffer(16 * PAGE, 0));
    assert_eq!(a.register(&sys, 1, &b1), gp::TEE_SUCCESS);
    assert_eq!(a.register(&sys, 2, &b2), gp::TEE_SUCCESS);
    let three = a.buffer(3 * PAGE, 0);
    let before = sys.stats(&a);
    assert_eq!(a.register(&sys, 3, &three), gp::TEE_ERROR_OUT_OF_MEMORY);
    assert_eq!(sys.stats(&a), before, "a refusal changes nothing");

    // Two calls suspended in SHM_ALLOC, each holding its arg's shadow and an RPC arg (shadow,
    // pin, buffer).
    let mut suspended = Vec::new();
    for seed in [1, 2] {
        let c = rpc_call(&mut a, &sys, sa, PAGE, seed);
        assert_eq!(c.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
        let answer = a.answer_rpc(&sys, &c.out);
        let out = a.smc(&sys, answer.a0(), &answer.a[1..6]);
        assert_eq!(out.a0(), OPTEE_SMC_RETURN_RPC_CMD);
        suspended.push(Started { out, ..c });
    }
    let full = GuestStats {
        calls_in_flight: 2,
        buffers: 4,
        registered: 2,
        draining: 0,
        rpc_buffers: 0,
        rpc_args: 2,
        pinned_pages: 34,
        shadow_pages: 4,
    };
    assert_eq!(sys.stats(&a), full, "every budget held");
    assert_eq!(
        sys.hyp.memory().held.len(),
        4,
        "half the pool is still free"
    );
    // Calls: refused, whatever the message (a registration would also pass the buffers).
    let c3 = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], 0);
    assert_eq!(c3.out.a0(), OPTEE_SMC_RETURN_ETHREAD_LIMIT);
    assert_eq!(sys.stats(&a), full);
    sys.check();

    // B is within its own budgets: everything works, more than once.
    for seed in 10..13 {
        well_behaved(&mut b, &sys, sb, seed);
        assert_eq!(sys.stats(&a), full, "B took nothing of A's");
        sys.check();
    }
    // B can even hold its own budgets at the same time as A.
    let bc = [
        rpc_call(&mut b, &sys, sb, PAGE, 20),
        rpc_call(&mut b, &sys, sb, PAGE, 21),
    ];
    assert!(bc.iter().all(|c| c.out.a0() == OPTEE_SMC_RETURN_RPC_ALLOC));
    for c in bc {
        assert_eq!(b.finish(&sys, c).ret(), gp::TEE_SUCCESS);
    }

    // A's own budgets bind A: the first call's SHM_ALLOC answer would be a fifth buffer, so
    // the mediator has the guest free it and the TEE hears OUT_OF_MEMORY; the call ends
    // cleanly. Then A lets go of its buffers, its other call ends well, and A works again.
    let r = a.finish(&sys, suspended.remove(0));
    assert_eq!(r.ret(), gp::TEE_ERROR_OUT_OF_MEMORY);
    assert_eq!(a.unregister(&sys, 1), gp::TEE_SUCCESS);
    assert_eq!(a.unregister(&sys, 2), gp::TEE_SUCCESS);
    assert_eq!(a.finish(&sys, suspended.remove(0)).ret(), gp::TEE_SUCCESS);
    assert_eq!(sys.stats(&a), GuestStats::default());
    well_behaved(&mut a, &sys, sa, 30);
    well_behaved(&mut b, &sys, sb, 31);
    sys.check();
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
    assert_eq!(sys.shadows_held(), 0);
}

/// The shadow budget binds on its own: A, with calls and buffers to spare, holds its four
/// shadow pages in suspended calls; a fifth call is refused (ENOMEM) though the pool still has
/// four free pages — B's, which B then uses.
#[test]
fn the_shadow_budget_binds_while_the_pool_has_pages() {
    let limits = HypLimits {
        max_calls: 8,
        max_buffers: 64,
        max_pinned_pages: 1024,
        ..LIMITS
    };
    let mut sys = two_guests_with(limits);
    let mut a = sys.guest(1, 0);
    let mut b = sys.guest(2, 1);
    let (sa, sb) = (a.open_session(&sys), b.open_session(&sys));
    let calls: Vec<Started> = (0..4)
        .map(|seed| rpc_call(&mut a, &sys, sa, PAGE, seed))
        .collect();
    assert!(
        calls
            .iter()
            .all(|c| c.out.a0() == OPTEE_SMC_RETURN_RPC_ALLOC)
    );
    assert_eq!(sys.stats(&a).shadow_pages, 4);
    let more = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], 0);
    assert_eq!(more.out.a0(), OPTEE_SMC_RETURN_ENOMEM);
    assert_eq!(sys.hyp.memory().held.len(), 4, "B's share is untouched");
    well_behaved(&mut b, &sys, sb, 7);
    sys.check();
    for c in calls {
        // Each answer needs an RPC arg's shadow: there is one as soon as a call has ended.
        let _ = a.finish(&sys, c);
    }
    assert_eq!(sys.stats(&a), GuestStats::default());
    well_behaved(&mut a, &sys, sa, 8);
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

/// A guest is created only while its share can be reserved: not beyond the guest slots, not
/// when the platform shrank the pool below the shares. Refused, nothing is kept and the TEE is
/// not told.
#[test]
fn guest_creation_needs_a_share() {
    let mut sys = two_guests();
    let a = sys.guest(1, 0);
    let b = sys.guest(2, 1);
    assert_eq!(
        sys.hyp.create_guest(GuestId(3), Stage2::new()),
        Err(HypError::NoShare {
            resource: Resource::Guests,
            needed: 3,
            available: 2
        })
    );
    assert!(sys.tee().guest(GuestId(3)).is_none(), "the TEE never heard");
    assert!(sys.hyp.stats(GuestId(3)).is_none());
    sys.destroy_and_check(&b);
    // The platform took half the pool back: only one share is left, and A has it.
    sys.hyp_memory_limit(Some(4));
    assert_eq!(
        sys.hyp.create_guest(GuestId(3), Stage2::new()),
        Err(HypError::NoShare {
            resource: Resource::ShadowPages,
            needed: 8,
            available: 4
        })
    );
    assert!(sys.tee().guest(GuestId(3)).is_none());
    sys.hyp_memory_limit(None);
    let mut c = sys.guest(3, 1);
    let s = c.open_session(&sys);
    well_behaved(&mut c, &sys, s, 5);
    sys.destroy_and_check(&c);
    sys.destroy_and_check(&a);
}

/// Found by the `mediator` fuzz target: the core used to set a thread aside only for the guests
/// alive, so while guest A held every thread it may (suspended in RPCs), the TEE refused a new
/// guest though the mediator had a share for it. Now one thread is set aside for each guest the
/// core may have: A holds its own and the one shared thread, and guest B, created meanwhile,
/// runs its calls at once.
#[test]
fn regression_fuzz_a_new_guest_finds_its_thread_while_another_holds_all_it_may() {
    let core = teeshm_core::CoreConfig {
        threads: 5,
        max_guests: 4,
        quotas: teeshm_core::GuestQuotas {
            max_threads: 4,
            ..teeshm_core::GuestQuotas::default()
        },
        ..virtualized()
    };
    let hyp = HypConfig {
        max_guests: 2,
        limits: HypLimits {
            max_calls: 4,
            max_shadow_pages: 8,
            ..LIMITS
        },
        ..HypConfig::default()
    };
    let mut sys = System::with_hyp(core, hyp, Some(16));
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    let calls: Vec<Started> = (0..4)
        .map(|seed| rpc_call(&mut a, &sys, s, PAGE, seed))
        .collect();
    let waiting = calls
        .iter()
        .filter(|c| c.out.a0() == OPTEE_SMC_RETURN_RPC_ALLOC)
        .count();
    assert_eq!(waiting, 2, "its own thread and the one shared");
    let mut b = sys.guest(2, 1);
    let sb = b.open_session(&sys);
    well_behaved(&mut b, &sys, sb, 3);
    sys.check();
    for c in calls {
        if c.out.a0() == OPTEE_SMC_RETURN_RPC_ALLOC {
            assert_eq!(a.finish(&sys, c).ret(), gp::TEE_SUCCESS);
        }
    }
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

/// A pool of a fixed number of pages, for [`Mediator::new`]'s refusal.
struct Pool(u64);

impl MachineMemory for Pool {
    fn read(&self, _: u64, buf: &mut [u8]) {
        buf.fill(0);
    }
    fn write(&self, _: u64, _: &[u8]) {}
    fn alloc_page(&mut self) -> Option<u64> {
        None
    }
    fn free_page(&mut self, _: u64) {}
    fn pool_pages(&self) -> u64 {
        self.0
    }
}

#[derive(Clone)]
struct NoTee;

impl SmcConduit for NoTee {
    fn smc(&mut self, _: SmcRegs) -> SmcRegs {
        panic!("the mediator must not call the TEE when it refuses to start")
    }
}

/// A configuration whose budgets promise more than the mediator has does not start.
#[test]
fn a_mediator_promising_more_than_it_has_does_not_start() {
    let config = HypConfig {
        max_guests: 2,
        limits: LIMITS,
        ..HypConfig::default()
    };
    assert!(Mediator::new(NoTee, Pool(8), config).is_ok());
    assert_eq!(
        Mediator::new(NoTee, Pool(7), config).err(),
        Some(HypError::Capacity(HypCapacityError::ShadowPages {
            promised: 8,
            available: 7
        }))
    );
    let heap = HypConfig {
        heap_budget: 2 * LIMITS.heap_bytes().unwrap() - 1,
        ..config
    };
    assert!(matches!(
        Mediator::new(NoTee, Pool(8), heap).err(),
        Some(HypError::Capacity(HypCapacityError::Heap { .. }))
    ));
    let tiny = HypConfig {
        limits: HypLimits {
            max_shadow_pages: 1,
            ..LIMITS
        },
        ..config
    };
    assert_eq!(
        Mediator::new(NoTee, Pool(8), tiny).err(),
        Some(HypError::Capacity(HypCapacityError::ShadowBudgetTooSmall {
            needed: 2,
            budget: 1
        }))
    );
}

#[derive(Debug, Clone)]
enum Greedy {
    Register(u64),
    Unregister(usize),
    Suspend,
    /// Answers one RPC of a suspended call (its RPC arg, then its SHM_ALLOC, ...).
    Advance(usize),
    Resume(usize),
    TempFill(u64),
}

fn greedy() -> impl Strategy<Value = Greedy> {
    prop_oneof![
        (1u64..=17).prop_map(Greedy::Register),
        any::<usize>().prop_map(Greedy::Unregister),
        Just(Greedy::Suspend),
        any::<usize>().prop_map(Greedy::Advance),
        any::<usize>().prop_map(Greedy::Resume),
        (1u64..=20).prop_map(Greedy::TempFill),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whatever a greedy guest does within (and against) its budgets, after each of its steps
    /// a well-behaved guest's whole round of work succeeds, and both checkers agree.
    #[test]
    fn a_greedy_guest_never_starves_a_well_behaved_one(ops in proptest::collection::vec(greedy(), 1..30)) {
        let mut sys = two_guests();
        let mut a = sys.guest(1, 0);
        let mut b = sys.guest(2, 1);
        let (sa, sb) = (a.open_session(&sys), b.open_session(&sys));
        let mut registered: Vec<u64> = Vec::new();
        let mut suspended: Vec<Started> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match op {
                Greedy::Register(pages) => {
                    let buf = a.buffer(pages * PAGE, 0);
                    let cookie = a.cookie();
                    // Refused for want of a call record (ETHREAD_LIMIT) or of a shadow page
                    // for the arg (ENOMEM), or in the message (OUT_OF_MEMORY): A's budgets.
                    let (buf_ptr, _) = a.page_list(&sys, &buf);
                    let p = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(buf_ptr, buf.size, cookie),
                    );
                    let r = a.call(&sys, header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
                    match (r.a0, r.ret()) {
                        (OPTEE_SMC_RETURN_OK, gp::TEE_SUCCESS) => registered.push(cookie),
                        (OPTEE_SMC_RETURN_OK, ret) => {
                            prop_assert_eq!(ret, gp::TEE_ERROR_OUT_OF_MEMORY)
                        }
                        (a0, _) => prop_assert!(
                            [OPTEE_SMC_RETURN_ETHREAD_LIMIT, OPTEE_SMC_RETURN_ENOMEM]
                                .contains(&a0),
                            "{:#x}", a0
                        ),
                    }
                }
                Greedy::Unregister(i) if !registered.is_empty() => {
                    let at = i % registered.len();
                    let p = rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, registered[at], 0, 0);
                    let r = a.call(&sys, header(OPTEE_MSG_CMD_UNREGISTER_SHM), &[p]);
                    // Even an unregister needs a call record and a shadow for its arg.
                    if r.a0 == OPTEE_SMC_RETURN_OK {
                        prop_assert_eq!(r.ret(), gp::TEE_SUCCESS);
                        registered.swap_remove(at);
                    } else {
                        prop_assert!(
                            [OPTEE_SMC_RETURN_ETHREAD_LIMIT, OPTEE_SMC_RETURN_ENOMEM]
                                .contains(&r.a0),
                            "{:#x}", r.a0
                        );
                    }
                }
                Greedy::Suspend => {
                    let s = rpc_call(&mut a, &sys, sa, PAGE, step as u64);
                    if is_rpc_return(s.out.a0()) {
                        suspended.push(s);
                    } else {
                        prop_assert!(
                            [OPTEE_SMC_RETURN_ETHREAD_LIMIT, OPTEE_SMC_RETURN_ENOMEM]
                                .contains(&s.out.a0()),
                            "{:#x}", s.out.a0()
                        );
                    }
                }
                Greedy::Advance(i) if !suspended.is_empty() => {
                    let at = i % suspended.len();
                    let s = suspended[at];
                    let answer = a.answer_rpc(&sys, &s.out);
                    let out = a.smc(&sys, answer.a0(), &answer.a[1..6]);
                    if is_rpc_return(out.a0()) {
                        suspended[at] = Started { out, ..s };
                    } else {
                        prop_assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
                        suspended.swap_remove(at);
                        a.reply(&sys, 0, s);
                    }
                }
                Greedy::Resume(i) if !suspended.is_empty() => {
                    let s = suspended.swap_remove(i % suspended.len());
                    // It may fail (its RPC arg may pass A's budgets), but cleanly.
                    let r = a.finish(&sys, s);
                    prop_assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
                }
                Greedy::TempFill(pages) => {
                    let temp = a.buffer(pages * PAGE, 0);
                    let p = a.tmem_list(&sys, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &temp);
                    let s = a.start(&sys, invoke_header(sa, cmd::FILL), &[p, value(VIN, 1, 0, 0)], 0);
                    if s.out.a0() == OPTEE_SMC_RETURN_OK {
                        let r = a.reply(&sys, 0, s);
                        prop_assert!(
                            [gp::TEE_SUCCESS, gp::TEE_ERROR_OUT_OF_MEMORY].contains(&r.ret()),
                            "{:#x}", r.ret()
                        );
                    }
                }
                _ => {}
            }
            sys.check();
            well_behaved(&mut b, &sys, sb, step as u64);
            prop_assert_eq!(sys.stats(&b), GuestStats::default());
            sys.check();
        }
        for s in suspended {
            let _ = a.finish(&sys, s);
        }
        sys.destroy_and_check(&a);
        sys.destroy_and_check(&b);
        prop_assert_eq!(sys.shadows_held(), 0);
    }
}
