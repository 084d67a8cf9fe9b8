//! Guest life cycle behind the mediator: creation rules, pinning against ballooning, an
//! unregister of a buffer in use (revoked by the core, pins released at once), and
//! destruction in the middle of everything.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::{OPTEE_RPC_SHM_TYPE_APPL, OPTEE_RPC_SHM_TYPE_KERNEL};
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_core::CoreConfig;
use teeshm_core::pta::cmd;
use teeshm_hyp::{GuestStats, HypError, HypLimits, Stage2};

const VIN: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT;
const VOUT: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT;

#[test]
fn creation_rules() {
    let config = CoreConfig {
        max_guests: 3,
        ..virtualized()
    };
    let mut sys = System::with(config, HypLimits::default());
    assert_eq!(
        sys.hyp.create_guest(GuestId(0), Stage2::new()),
        Err(HypError::ReservedGuestId { vm: GuestId(0) })
    );
    let a = sys.guest(1, 0);
    assert_eq!(
        sys.hyp.create_guest(GuestId(1), Stage2::new()),
        Err(HypError::GuestExists { vm: GuestId(1) })
    );
    sys.hyp
        .create_guest(GuestId(0xffff), Stage2::new())
        .unwrap();
    sys.hyp.create_guest(GuestId(2), Stage2::new()).unwrap();
    // The core admits three guests (the hypervisor not counted): the TEE refuses a fourth
    // (the mediator had room for it), nothing is kept.
    assert_eq!(
        sys.hyp.create_guest(GuestId(3), Stage2::new()),
        Err(HypError::TeeRefused {
            call: "VM_CREATED",
            code: OPTEE_SMC_RETURN_ENOTAVAIL
        })
    );
    assert!(sys.hyp.stats(GuestId(3)).is_none());
    assert_eq!(
        sys.hyp.guests().collect::<Vec<_>>(),
        [GuestId(1), GuestId(2), GuestId(0xffff)]
    );
    sys.hyp.destroy_guest(GuestId(2)).unwrap();
    assert_eq!(
        sys.hyp.destroy_guest(GuestId(3)),
        Err(HypError::UnknownGuest { vm: GuestId(3) })
    );
    sys.destroy_and_check(&a);
    sys.hyp.destroy_guest(GuestId(0xffff)).unwrap();
    // An id may come back.
    let mut a = sys.guest(1, 0);
    let buf = a.buffer(PAGE, 0);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_SUCCESS);
    sys.destroy_and_check(&a);
}

/// A page the TEE may use stays in the guest: the platform cannot balloon it out.
#[test]
fn pinned_pages_cannot_leave_the_guest() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let buf = a.buffer(2 * PAGE, 0x10);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_SUCCESS);
    let page = buf.pages[1];
    assert_eq!(
        sys.hyp.unmap_guest_page(a.id, page),
        Err(HypError::Pinned { ipa: page })
    );
    let free = a.alloc_page();
    let pa = sys.hyp.unmap_guest_page(a.id, free).unwrap();
    assert_eq!(pa, a.pa(free));
    assert_eq!(sys.hyp.stage2(a.id).unwrap().translate(free), None);
    sys.hyp.map_guest_page(a.id, free, pa).unwrap();
    assert_eq!(a.unregister(&sys, 1), gp::TEE_SUCCESS);
    assert_eq!(sys.hyp.unmap_guest_page(a.id, page), Ok(a.pa(page)));
    // A page that left the guest cannot be named any more.
    let mut again = a.buffer(PAGE, 0);
    again.pages[0] = page;
    assert_eq!(a.register(&sys, 2, &again), gp::TEE_ERROR_BAD_PARAMETERS);
    sys.destroy_and_check(&a);
}

/// UNREGISTER_SHM of a buffer suspended calls use: the core answers SUCCESS and revokes the
/// buffer (it never touches the pages again), so the mediator lets the pins go at once and the
/// guest may reuse or give away the pages; the calls still end well and the core lets the
/// object go with its last user.
#[test]
fn unregister_of_a_buffer_in_use_releases_the_pins_at_once() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    let buf = a.buffer(3 * PAGE, 0);
    assert_eq!(a.register(&sys, 7, &buf), gp::TEE_SUCCESS);
    // RPC_BUFFER takes two value params; the third, a memref of the registered buffer, is
    // held by the call while it waits for its RPC.
    let params = [
        value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 3),
        value(VOUT, 0, 0, 0),
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 7, 0, 16),
    ];
    let user = a.start(&sys, invoke_header(s, cmd::RPC_BUFFER), &params, 0);
    assert_eq!(user.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
    // Another call, also suspended, that does not hold the buffer.
    let other = a.start(
        &sys,
        invoke_header(s, cmd::RPC_BUFFER),
        &[
            value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_APPL, 4),
            value(VOUT, 0, 0, 0),
        ],
        0,
    );
    assert_eq!(other.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
    // The buffer and each suspended call's arg page.
    assert_eq!(sys.tee().guest(a.id).unwrap().snapshot().objects, 3);

    assert_eq!(a.unregister(&sys, 7), gp::TEE_SUCCESS);
    let st = sys.stats(&a);
    assert_eq!(
        (st.registered, st.draining, st.pinned_pages, st.buffers),
        (0, 0, 0, 0),
        "nothing is kept for a buffer the TEE gave up"
    );
    sys.check();
    // The pages are the guest's again: the platform may even take one away and give it back.
    let pa = sys.hyp.unmap_guest_page(a.id, buf.pages[0]).unwrap();
    sys.hyp.map_guest_page(a.id, buf.pages[0], pa).unwrap();
    // The guest reuses them at once, as Linux does.
    a.fill_buf(&sys, &buf, |i| (i % 251) as u8 ^ 0x5a);
    // The cookie is free again at once; a retry answers BAD_PARAMETERS.
    assert_eq!(a.unregister(&sys, 7), gp::TEE_ERROR_BAD_PARAMETERS);
    let reuse = a.buffer(PAGE, 0);
    assert_eq!(a.register(&sys, 7, &reuse), gp::TEE_SUCCESS);

    let r = a.finish(&sys, user);
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    let r = a.finish(&sys, other);
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    assert_eq!(
        a.read_buf(&sys, &buf),
        (0..buf.size)
            .map(|i| (i % 251) as u8 ^ 0x5a)
            .collect::<Vec<_>>(),
        "the TEE never wrote the revoked pages"
    );
    let st = sys.stats(&a);
    assert_eq!((st.draining, st.registered, st.pinned_pages), (0, 1, 1));
    assert_eq!(
        sys.tee().guest(a.id).unwrap().snapshot().objects,
        1,
        "the core let go of the old buffer with its last user"
    );
    assert_eq!(a.unregister(&sys, 7), gp::TEE_SUCCESS);
    assert_eq!(sys.stats(&a), GuestStats::default());
    sys.check();
    sys.destroy_and_check(&a);
}

/// A secure thread holding a mapped buffer while its guest unregisters it (the guest sees
/// SUCCESS, its pins go): every later access of that thread fails with ACCESS_CONFLICT, no new
/// mapping is given, and the bytes the guest wrote into the pages afterwards stay as written.
#[test]
fn a_revoked_buffer_is_never_touched_again() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let buf = a.buffer(2 * PAGE - 100, 100);
    assert_eq!(a.register(&sys, 9, &buf), gp::TEE_SUCCESS);
    let tee = sys.tee_arc();
    let used = tee.use_registered(a.id, 9).unwrap();
    let guard = tee.map(&used).unwrap();
    guard.write(0, b"before").unwrap();
    assert_eq!(a.read(&sys, a.buf_ipa(&buf, 0), 6), b"before");

    assert_eq!(a.unregister(&sys, 9), gp::TEE_SUCCESS);
    assert_eq!(
        sys.stats(&a),
        GuestStats::default(),
        "pins released at once"
    );
    let mine: Vec<u8> = (0..buf.size).map(|i| (i * 7 % 256) as u8).collect();
    a.fill_buf(&sys, &buf, |i| mine[i as usize]);

    let conflict = gp::TEE_ERROR_ACCESS_CONFLICT;
    assert_eq!(guard.write(0, b"after").unwrap_err().code(), conflict);
    assert_eq!(guard.write(PAGE, &[0xee; 64]).unwrap_err().code(), conflict);
    let mut back = [0u8; 16];
    assert_eq!(guard.read(0, &mut back).unwrap_err().code(), conflict);
    assert_eq!(back, [0; 16], "nothing was read");
    assert_eq!(tee.map(&used).err().map(|e| e.code()), Some(conflict));
    assert_eq!(a.read_buf(&sys, &buf), mine, "the bytes are untouched");
    // (The core's checker is run once the use is gone: it finds objects through their guests'
    // tables and calls, and this use, taken by the test, belongs to no call.)
    assert!(sys.hyp.check_agreement().is_empty());

    // The core lets the object go with its last user (at the end of the next SMC).
    drop(guard);
    drop(used);
    drop(tee);
    let out = a.smc(&sys, OPTEE_SMC_CALLS_UID, &[]);
    assert_eq!(out.a0(), uid::OPTEE_MSG_UID[0]);
    assert_eq!(sys.tee().guest(a.id).unwrap().snapshot().objects, 0);
    assert_eq!(a.read_buf(&sys, &buf), mine);
    sys.check();
    sys.destroy_and_check(&a);
}

/// An RPC arg buffer the core refuses (here: the guest's object quota is full) comes back by
/// RPC_FUNC_FREE before the call ends, as OP-TEE's `thread_rpc_alloc_arg` does: the mediator
/// lets its shadow and pin go before the guest sees the request, and the call fails cleanly.
#[test]
fn an_rpc_arg_the_core_refuses_comes_back_at_once() {
    let mut config = virtualized();
    // The registered buffer and the call's own arg page: no room for an RPC arg.
    config.quotas.max_objects = 2;
    let mut sys = System::with(config, HypLimits::default());
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    let buf = a.buffer(PAGE, 0);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_SUCCESS);
    let c = a.start(
        &sys,
        invoke_header(s, cmd::RPC_BUFFER),
        &[
            value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
            value(VOUT, 0, 0, 0),
        ],
        0,
    );
    assert_eq!(c.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
    let answer = a.answer_rpc(&sys, &c.out);
    let out = a.smc(&sys, answer.a0(), &answer.a[1..6]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_RPC_FREE);
    let st = sys.stats(&a);
    assert_eq!(
        (st.rpc_args, st.buffers, st.pinned_pages, st.shadow_pages),
        (0, 1, 1, 1),
        "only the registered buffer and the call's shadow arg are left"
    );
    sys.check();
    let r = a.finish(&sys, Started { out, ..c });
    assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
    assert_ne!(r.ret(), gp::TEE_SUCCESS);
    assert!(a.rpc_bufs.is_empty(), "the guest got its buffer back");
    assert_eq!(a.unregister(&sys, 1), gp::TEE_SUCCESS);
    assert_eq!(sys.stats(&a), GuestStats::default());
    sys.destroy_and_check(&a);
}

/// Destroying a guest with everything in flight: registered and draining buffers, a call
/// suspended with an RPC buffer pinned, another suspended before its RPC arg exists, cached RPC
/// args. Nothing of it is left in the mediator or the TEE; the other guest goes on.
#[test]
fn destroy_in_the_middle_of_everything() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let mut b = sys.guest(2, 1);
    let (sa, sb) = (a.open_session(&sys), b.open_session(&sys));
    let buf_b = b.buffer(2 * PAGE, 0x20);
    assert_eq!(b.register(&sys, 1, &buf_b), gp::TEE_SUCCESS);
    let b_before = sys.stats(&b);

    assert_eq!(
        a.smc(&sys, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0(),
        OPTEE_SMC_RETURN_OK
    );
    // One finished call leaves a cached RPC arg.
    let r = a.invoke(
        &sys,
        sa,
        cmd::RPC_BUFFER,
        &[
            value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
            value(VOUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    for cookie in 1..=3 {
        let buf = a.buffer(5 * PAGE, 0x30);
        assert_eq!(a.register(&sys, cookie, &buf), gp::TEE_SUCCESS);
    }
    // A call holding buffer 3, left suspended at its SHM_FREE.
    let rpc = [
        value(VIN, 3 * PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 2),
        value(VOUT, 0, 0, 0),
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 3, 0, 1),
    ];
    let c1 = a.start(&sys, invoke_header(sa, cmd::RPC_BUFFER), &rpc, 0);
    // It reuses the cached RPC arg: straight to RPC_CMD (SHM_ALLOC).
    assert_eq!(c1.out.a0(), OPTEE_SMC_RETURN_RPC_CMD);
    let answer = a.answer_rpc(&sys, &c1.out);
    let out = a.smc(&sys, answer.a0(), &answer.a[1..6]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_RPC_CMD, "now SHM_FREE");
    // Unregister 3 while c1 holds it: SUCCESS (the core revokes it), its pins go at once.
    assert_eq!(a.unregister(&sys, 3), gp::TEE_SUCCESS);
    // A second call suspended at RPC_ALLOC (the cache is empty now).
    let c2 = a.start(
        &sys,
        invoke_header(sa, cmd::RPC_BUFFER),
        &[
            value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 3),
            value(VOUT, 0, 0, 0),
        ],
        0,
    );
    assert_eq!(c2.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
    let st = sys.stats(&a);
    assert_eq!(st.calls_in_flight, 2);
    assert_eq!((st.registered, st.draining, st.rpc_args), (2, 0, 1));
    assert_eq!(st.pinned_pages, 2 * 6 + 1, "{st:?}");
    assert!(sys.shadows_held() >= 3);
    assert!(sys.tee().guest(a.id).unwrap().snapshot().threads >= 2);

    sys.destroy_and_check(&a);
    assert_eq!(sys.shadows_held(), 0, "B holds no shadow, A's are all back");
    assert_eq!(sys.stats(&b), b_before);
    // B is untouched and goes on.
    let r = b.invoke(
        &sys,
        sb,
        cmd::FILL,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, 1, 0, buf_b.size),
            value(VIN, 9, 0, 0),
        ],
    );
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    assert_eq!(b.read_buf(&sys, &buf_b), pattern(9, buf_b.size));
    let r = b.invoke(
        &sys,
        sb,
        cmd::RPC_BUFFER,
        &[
            value(VIN, 2 * PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
            value(VOUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    // A's old thread ids mean nothing to B.
    assert_eq!(
        b.smc(&sys, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, c2.out.a[3]])
            .a0(),
        OPTEE_SMC_RETURN_ERESUME
    );
    sys.destroy_and_check(&b);
    assert_eq!(sys.shadows_held(), 0);
    assert_eq!(sys.hyp.memory().held.len(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Register { pages: u64, offset: u64, bad: bool },
    Unregister(usize),
    Fill(usize, u64),
    TempFill { pages: u64, bad: bool },
    RpcBuffer { mode: u8, bytes: u64 },
    Suspend,
    Resume(usize),
    Cache(bool),
}

fn op() -> impl proptest::strategy::Strategy<Value = (bool, Op)> {
    use proptest::prelude::*;
    let op = prop_oneof![
        (1u64..20, 0u64..4096, proptest::bool::weighted(0.2))
            .prop_map(|(pages, offset, bad)| Op::Register { pages, offset, bad }),
        any::<usize>().prop_map(Op::Unregister),
        (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::Fill(i, s)),
        (1u64..6, proptest::bool::weighted(0.3))
            .prop_map(|(pages, bad)| Op::TempFill { pages, bad }),
        (0u8..6, 1u64..5 * PAGE).prop_map(|(mode, bytes)| Op::RpcBuffer { mode, bytes }),
        Just(Op::Suspend),
        any::<usize>().prop_map(Op::Resume),
        any::<bool>().prop_map(Op::Cache),
    ];
    (any::<bool>(), op)
}

struct Model {
    g: Guest,
    session: u32,
    registered: Vec<(u64, Buf)>,
    suspended: Vec<Started>,
}

impl Model {
    fn step(&mut self, sys: &System, op: &Op) {
        let g = &mut self.g;
        match op.clone() {
            Op::Register { pages, offset, bad } => {
                let size = pages * PAGE - offset.min(PAGE - 1);
                let mut buf = g.buffer(size, offset.min(PAGE - 1));
                if bad {
                    buf.pages[0] = g.end();
                }
                let cookie = g.cookie();
                let ret = g.register(sys, cookie, &buf);
                if bad {
                    assert_eq!(ret, gp::TEE_ERROR_BAD_PARAMETERS);
                } else {
                    assert_eq!(ret, gp::TEE_SUCCESS);
                    self.registered.push((cookie, buf));
                }
            }
            Op::Unregister(i) if !self.registered.is_empty() => {
                let (cookie, _) = self.registered.swap_remove(i % self.registered.len());
                assert_eq!(g.unregister(sys, cookie), gp::TEE_SUCCESS);
            }
            Op::Fill(i, seed) if !self.registered.is_empty() => {
                let (cookie, buf) = &self.registered[i % self.registered.len()];
                let r = g.invoke(
                    sys,
                    self.session,
                    cmd::FILL,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, *cookie, 0, buf.size),
                        value(VIN, seed, 0, 0),
                    ],
                );
                assert_eq!(r.ret(), gp::TEE_SUCCESS);
                assert_eq!(g.read_buf(sys, buf), pattern(seed, buf.size));
            }
            Op::TempFill { pages, bad } => {
                let mut buf = g.buffer(pages * PAGE - 3, 3);
                if bad {
                    let last = buf.pages.len() - 1;
                    buf.pages[last] = g.base - PAGE;
                }
                let p = g.tmem_list(sys, OPTEE_MSG_ATTR_TYPE_TMEM_INOUT, &buf);
                let r = g.invoke(sys, self.session, cmd::FILL, &[p, value(VIN, pages, 0, 0)]);
                if bad {
                    assert_eq!(r.ret(), gp::TEE_ERROR_BAD_PARAMETERS);
                } else {
                    assert_eq!(r.ret(), gp::TEE_SUCCESS);
                    assert_eq!(g.read_buf(sys, &buf), pattern(pages, buf.size));
                }
            }
            Op::RpcBuffer { mode, bytes } => {
                let mode = [
                    RpcMode::Good,
                    RpcMode::Contiguous,
                    RpcMode::AllocOutside,
                    RpcMode::ShmAllocOutside,
                    RpcMode::ShmAllocListOutside,
                    RpcMode::ShmAllocBadAttr,
                ][mode as usize];
                g.rpc_mode = mode;
                let r = g.invoke(
                    sys,
                    self.session,
                    cmd::RPC_BUFFER,
                    &[
                        value(VIN, bytes, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
                        value(VOUT, 0, 0, 0),
                    ],
                );
                g.rpc_mode = RpcMode::Good;
                match mode {
                    RpcMode::Good | RpcMode::Contiguous => assert_eq!(r.ret(), gp::TEE_SUCCESS),
                    // With the SHM cache, a cached RPC arg means no RPC_ALLOC is asked.
                    RpcMode::AllocOutside => {}
                    _ => assert_ne!(r.ret(), gp::TEE_SUCCESS, "{mode:?}"),
                }
                if mode == RpcMode::AllocOutside {
                    // The buffer the guest named outside its RAM was never taken.
                    let end = g.end();
                    g.rpc_bufs.retain(|_, b| b.pages[0] < end);
                }
            }
            Op::Suspend if self.suspended.len() < 4 => {
                let s = g.start(
                    sys,
                    invoke_header(self.session, cmd::RPC_BUFFER),
                    &[
                        value(VIN, 2 * PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 2),
                        value(VOUT, 0, 0, 0),
                    ],
                    0,
                );
                assert!(is_rpc_return(s.out.a0()), "{:#x}", s.out.a0());
                self.suspended.push(s);
            }
            Op::Resume(i) if !self.suspended.is_empty() => {
                let s = self.suspended.swap_remove(i % self.suspended.len());
                assert_eq!(g.finish(sys, s).ret(), gp::TEE_SUCCESS);
            }
            Op::Cache(true) => {
                let a0 = g.smc(sys, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0();
                assert!(
                    a0 == OPTEE_SMC_RETURN_OK
                        || (a0 == OPTEE_SMC_RETURN_EBUSY && !self.suspended.is_empty())
                );
            }
            Op::Cache(false) => self.drain_cache(sys),
            _ => {}
        }
    }

    fn drain_cache(&mut self, sys: &System) {
        loop {
            let out = self.g.smc(sys, OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
            match out.a0() {
                OPTEE_SMC_RETURN_OK => {
                    let cookie = reg_pair(out.a[1], out.a[2]);
                    assert!(self.g.rpc_bufs.remove(&cookie).is_some());
                }
                OPTEE_SMC_RETURN_ENOTAVAIL => return,
                OPTEE_SMC_RETURN_EBUSY => {
                    assert!(!self.suspended.is_empty());
                    return;
                }
                other => panic!("DISABLE_SHM_CACHE: {other:#x}"),
            }
        }
    }

    /// Ends everything; the guest must then hold nothing anywhere.
    fn wind_down(&mut self, sys: &System) {
        for s in std::mem::take(&mut self.suspended) {
            assert_eq!(self.g.finish(sys, s).ret(), gp::TEE_SUCCESS);
        }
        for (cookie, _) in std::mem::take(&mut self.registered) {
            assert_eq!(self.g.unregister(sys, cookie), gp::TEE_SUCCESS);
        }
        self.drain_cache(sys);
        assert_eq!(sys.stats(&self.g), GuestStats::default());
        assert!(self.g.rpc_bufs.is_empty(), "{:?}", self.g.rpc_bufs);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random operations of two guests, good and hostile: the TEE's agreement checker holds
    /// after every step; winding one guest down leaves nothing held; destroying the other with
    /// whatever it holds leaves nothing anywhere.
    #[test]
    fn random_operations_leave_nothing(ops in proptest::collection::vec(op(), 1..40)) {
        let mut sys = System::new();
        let mut models = [0u16, 1].map(|i| {
            let mut g = sys.guest(i + 1, u64::from(i));
            let session = g.open_session(&sys);
            Model { g, session, registered: Vec::new(), suspended: Vec::new() }
        });
        for (second, op) in &ops {
            models[usize::from(*second)].step(&sys, op);
            let d = sys.tee().check_agreement();
            proptest::prop_assert!(d.is_empty(), "{:?}", d);
        }
        let [mut a, b] = models;
        a.wind_down(&sys);
        sys.destroy_and_check(&a.g);
        sys.destroy_and_check(&b.g);
        proptest::prop_assert_eq!(sys.shadows_held(), 0);
        proptest::prop_assert!(sys.hyp.memory().held.is_empty());
    }
}
