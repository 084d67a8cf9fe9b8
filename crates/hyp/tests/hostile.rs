//! Hostile guests: addresses outside their RAM (in the arg address, a page list, a list page,
//! an RPC answer), another guest's range, malformed args and params, bogus resumes, limits,
//! and random garbage. Every refusal must hold nothing and leave the TEE untouched.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE, OPTEE_RPC_SHM_TYPE_KERNEL};
use teeshm_abi::smc::*;
use teeshm_core::pta::cmd;
use teeshm_hyp::{GuestStats, HypLimits};
use zerocopy::IntoBytes;

const VIN: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT;
const VOUT: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT;
const REG: u64 = OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG;

fn register_param(buf_ptr: u64, size: u64, cookie: u64) -> MsgParam {
    MsgParam::from_tmem(REG, Tmem::new(buf_ptr, size, cookie))
}

/// The guest holds nothing in the mediator, and the TEE nothing for it.
fn assert_nothing_held(sys: &System, g: &Guest) {
    assert_eq!(sys.stats(g), GuestStats::default());
    assert_eq!(sys.shadows_held(), 0);
    let snap = sys.tee().guest(g.id).unwrap().snapshot();
    assert_eq!(
        (snap.registered_buffers, snap.objects, snap.threads),
        (0, 0, 0),
        "{snap:?}"
    );
    sys.check();
}

#[test]
fn arg_address_outside_guest_ram() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let b = sys.guest(2, 1);
    // A valid arg in B's first page, which A names (just past A's RAM).
    let buf = a.buffer(PAGE, 0);
    let (buf_ptr, _) = a.page_list(&sys, &buf);
    let bytes = arg_bytes(
        header(OPTEE_MSG_CMD_REGISTER_SHM),
        &[register_param(buf_ptr, PAGE, 1)],
    );
    b.write(&sys, b.base, &bytes);
    for ipa in [
        a.end(),
        a.base - PAGE,
        0,
        u64::MAX,
        0xffff_ffff_0000_0000,
        a.end() + 0x10,
    ] {
        let (hi, lo) = split_pair(ipa);
        let out = a.smc(&sys, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
        assert_eq!(out.a0(), OPTEE_SMC_RETURN_EBADADDR, "{ipa:#x}");
    }
    assert_nothing_held(&sys, &a);
    assert_eq!(sys.tee().guest(b.id).unwrap().snapshot().objects, 0);
}

#[test]
fn malformed_args() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let v = value(VIN, 1, 2, 3);
    // Crossing the end of its page (the core's rule): 64 bytes at 40 bytes before the end.
    let s = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[v], PAGE - 40);
    assert_eq!(s.out.a0(), OPTEE_SMC_RETURN_EBADADDR);
    // Not even a header.
    let s = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], PAGE - 16);
    assert_eq!(s.out.a0(), OPTEE_SMC_RETURN_EBADADDR);
    // Too many params, and an unknown command.
    let mut h = header(OPTEE_MSG_CMD_CANCEL);
    let page = a.alloc_page();
    h.num_params.set(128);
    a.write(&sys, page, h.as_bytes());
    let (hi, lo) = split_pair(page);
    let out = a.smc(&sys, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_EBADCMD);
    for cmd in [
        OPTEE_MSG_CMD_DO_BOTTOM_HALF,
        OPTEE_MSG_CMD_LEND_PROTMEM,
        0xdead,
    ] {
        let s = a.start(&sys, header(cmd), &[v], 0);
        assert_eq!(s.out.a0(), OPTEE_SMC_RETURN_EBADCMD, "cmd {cmd}");
    }
    // An unaligned arg that fits its page is fine (the core accepts it too).
    let s = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[v], PAGE - 64);
    let r = a.finish(&sys, s);
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_nothing_held(&sys, &a);
}

/// A registration whose page list names memory the guest does not own fails in the mediator:
/// `BAD_PARAMETERS` from origin COMMS, the TEE never sees it.
#[test]
fn page_lists_outside_guest_ram() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let b = sys.guest(2, 1);
    b.write(&sys, b.base, b"B's secret");
    let size = 3 * PAGE;

    // A data page in B's range (just past A's RAM), in a hole below A, far away.
    for bad in [
        a.end(),
        b.base + 5 * PAGE,
        a.base - PAGE,
        0x4000_0000,
        1 << 52,
    ] {
        let mut buf = a.buffer(size, 0);
        buf.pages[1] = bad;
        let (buf_ptr, _) = a.page_list(&sys, &buf);
        let r = a.call(
            &sys,
            header(OPTEE_MSG_CMD_REGISTER_SHM),
            &[register_param(buf_ptr, size, 1)],
        );
        assert_eq!(
            (r.a0, r.ret(), r.origin()),
            (0, gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS),
            "{bad:#x}"
        );
        assert_nothing_held(&sys, &a);
    }
    // The list page itself outside (B's first page holds a list of B's own pages).
    let mut list = vec![0u8; PAGE as usize];
    for i in 0..3u64 {
        let at = i as usize * 8;
        list[at..at + 8].copy_from_slice(&(b.base + (1 + i) * PAGE).to_le_bytes());
    }
    b.write(&sys, b.base + 8 * PAGE, &list);
    let r = a.call(
        &sys,
        header(OPTEE_MSG_CMD_REGISTER_SHM),
        &[register_param(b.base + 8 * PAGE, size, 2)],
    );
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS)
    );
    assert_nothing_held(&sys, &a);

    // The same in a temporary memref of an invoke: B's page is never written.
    let s = a.open_session(&sys);
    let mut buf = a.buffer(size, 0);
    buf.pages[0] = b.base;
    let p = a.tmem_list(&sys, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &buf);
    let r = a.invoke(&sys, s, cmd::FILL, &[p, value(VIN, 1, 0, 0)]);
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS)
    );
    assert_eq!(b.read(&sys, b.base, 10), b"B's secret");
    // A list page in B's range for a temporary memref.
    let p = MsgParam::from_tmem(REG, Tmem::new(b.base + 8 * PAGE, size, 0));
    let r = a.invoke(&sys, s, cmd::FILL, &[p, value(VIN, 1, 0, 0)]);
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS)
    );
    for i in 1..4 {
        assert!(
            b.read(&sys, b.base + i * PAGE, PAGE)
                .iter()
                .all(|&x| x == 0)
        );
    }
    // A good param before a bad one: the good one's pins go too.
    let good = a.buffer(PAGE, 0);
    let p0 = a.tmem_list(&sys, OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &good);
    let mut bad = a.buffer(PAGE, 0);
    bad.pages[0] = a.end();
    let p1 = a.tmem_list(&sys, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &bad);
    let r = a.invoke(&sys, s, cmd::COPY, &[p0, p1]);
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS)
    );
    let st = sys.stats(&a);
    assert_eq!((st.pinned_pages, st.buffers, st.shadow_pages), (0, 0, 0));
    sys.check();
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

#[test]
fn malformed_params() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    let bad_params = [
        // A contiguous tmem naming memory: only NULL or a page list is mediated.
        MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, Tmem::new(a.base, 16, 0)),
        // Unknown type, NONCONTIG on an rmem and on a value.
        MsgParam::new(4),
        rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            1,
            0,
            1,
        ),
        value(VIN | OPTEE_MSG_ATTR_NONCONTIG, 1, 0, 0),
        // A page list of size 0.
        MsgParam::from_tmem(REG, Tmem::new(a.base, 0, 0)),
    ];
    for p in bad_params {
        let r = a.invoke(&sys, s, cmd::FILL, &[p, value(VIN, 1, 0, 0)]);
        assert_eq!(
            (r.a0, r.ret(), r.origin()),
            (0, gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS),
            "{p:?}"
        );
    }
    // A NULL memref passes to the TEE, which refuses it itself (origin: the TA).
    let null = MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, Tmem::new(0, 16, 0));
    let r = a.invoke(&sys, s, cmd::FILL, &[null, value(VIN, 1, 0, 0)]);
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_TRUSTED_APP)
    );
    // A duplicate registration is refused before anything is pinned.
    let buf = a.buffer(PAGE, 0);
    assert_eq!(a.register(&sys, 9, &buf), gp::TEE_SUCCESS);
    let other = a.buffer(2 * PAGE, 0);
    let (buf_ptr, _) = a.page_list(&sys, &other);
    let r = a.call(
        &sys,
        header(OPTEE_MSG_CMD_REGISTER_SHM),
        &[register_param(buf_ptr, 2 * PAGE, 9)],
    );
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_COMMS)
    );
    assert_eq!(sys.hyp.pinned_pages(a.id), 1);
    // A registration refused by the TEE itself (it wants one param) unpins.
    let r = a.call(
        &sys,
        header(OPTEE_MSG_CMD_REGISTER_SHM),
        &[register_param(buf_ptr, 2 * PAGE, 10), value(VIN, 0, 0, 0)],
    );
    assert_eq!(
        (r.ret(), r.origin()),
        (gp::TEE_ERROR_BAD_PARAMETERS, gp::TEE_ORIGIN_TEE)
    );
    assert_eq!(sys.hyp.pinned_pages(a.id), 1);
    // An unregister of an unknown cookie changes nothing; of the right one, unpins.
    assert_eq!(a.unregister(&sys, 77), gp::TEE_ERROR_BAD_PARAMETERS);
    assert_eq!(sys.hyp.pinned_pages(a.id), 1);
    assert_eq!(a.unregister(&sys, 9), gp::TEE_SUCCESS);
    assert_eq!(sys.stats(&a), GuestStats::default());
    sys.destroy_and_check(&a);
}

fn rpc_buffer(a: &mut Guest, sys: &System, session: u32, bytes: u64) -> Reply {
    a.invoke(
        sys,
        session,
        cmd::RPC_BUFFER,
        &[
            value(VIN, bytes, OPTEE_RPC_SHM_TYPE_KERNEL, 5),
            value(VOUT, 0, 0, 0),
        ],
    )
}

/// RPC answers naming memory outside the guest: the RPC arg buffer (the TEE gets no buffer),
/// an SHM_ALLOC page list with a foreign page or list page, or a memref of the wrong kind (the
/// mediator asks the guest to free its buffer, then tells the TEE).
#[test]
fn hostile_rpc_answers() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let b = sys.guest(2, 1);
    b.write(&sys, b.base, &[0x5a; 64]);
    let s = a.open_session(&sys);

    a.rpc_mode = RpcMode::AllocOutside;
    let r = rpc_buffer(&mut a, &sys, s, 2 * PAGE);
    assert_eq!(r.a0, 0);
    assert_ne!(r.ret(), gp::TEE_SUCCESS);
    assert!(a.served.is_empty(), "no RPC arg buffer, no RPC command");
    a.rpc_bufs.clear();
    assert_nothing_held(&sys, &a);

    for mode in [
        RpcMode::ShmAllocOutside,
        RpcMode::ShmAllocListOutside,
        RpcMode::ShmAllocBadAttr,
    ] {
        a.rpc_mode = mode;
        a.served.clear();
        let r = rpc_buffer(&mut a, &sys, s, 2 * PAGE);
        assert_eq!(r.a0, 0);
        assert_ne!(r.ret(), gp::TEE_SUCCESS, "{mode:?}");
        // The guest was asked to free what it allocated; only then did the TEE hear.
        assert_eq!(
            a.served,
            [OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE],
            "{mode:?}"
        );
        assert!(
            a.rpc_bufs.is_empty(),
            "{mode:?}: the guest freed its buffers"
        );
        assert_nothing_held(&sys, &a);
    }
    assert_eq!(b.read(&sys, b.base, 64), [0x5a; 64]);

    // And a good answer still works afterwards.
    a.rpc_mode = RpcMode::Good;
    let r = rpc_buffer(&mut a, &sys, s, 2 * PAGE);
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    assert_nothing_held(&sys, &a);
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

/// Resuming a thread the guest does not own, or none at all.
#[test]
fn bogus_resumes() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let mut b = sys.guest(2, 1);
    let s = a.open_session(&sys);
    let started = a.start(
        &sys,
        invoke_header(s, cmd::RPC_BUFFER),
        &[
            value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
            value(VOUT, 0, 0, 0),
        ],
        0,
    );
    assert_eq!(started.out.a0(), OPTEE_SMC_RETURN_RPC_ALLOC);
    let thread = started.out.a[3];
    assert_eq!(sys.stats(&a).calls_in_flight, 1);
    // B answers A's RPC with a page of its own: refused, A's call untouched.
    let page = b.alloc_page();
    let (hi, lo) = split_pair(page);
    let out = b.smc(
        &sys,
        OPTEE_SMC_CALL_RETURN_FROM_RPC,
        &[hi, lo, thread, 0, 1],
    );
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_ERESUME);
    for t in [thread + 1, u64::MAX, 1 << 40] {
        let out = a.smc(&sys, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, t]);
        assert_eq!(out.a0(), OPTEE_SMC_RETURN_ERESUME, "{t:#x}");
    }
    let r = a.finish(&sys, started);
    assert_eq!(r.ret(), gp::TEE_SUCCESS);
    assert_eq!(sys.stats(&a).calls_in_flight, 0);
    // A resume after the call ended.
    let out = a.smc(&sys, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_ERESUME);
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

#[test]
fn limits() {
    let limits = HypLimits {
        max_calls: 2,
        max_buffers: 3,
        max_pinned_pages: 10,
        max_buffer_pages: 6,
        ..HypLimits::default()
    };
    let mut sys = System::with(virtualized(), limits);
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);

    // Calls: two suspended in an RPC, the third is refused.
    let rpc = [
        value(VIN, PAGE, OPTEE_RPC_SHM_TYPE_KERNEL, 1),
        value(VOUT, 0, 0, 0),
    ];
    let c1 = a.start(&sys, invoke_header(s, cmd::RPC_BUFFER), &rpc, 0);
    let c2 = a.start(&sys, invoke_header(s, cmd::RPC_BUFFER), &rpc, 0);
    assert!(is_rpc_return(c1.out.a0()) && is_rpc_return(c2.out.a0()));
    let c3 = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], 0);
    assert_eq!(c3.out.a0(), OPTEE_SMC_RETURN_ETHREAD_LIMIT);
    assert_eq!(a.finish(&sys, c1).ret(), gp::TEE_SUCCESS);
    assert_eq!(a.finish(&sys, c2).ret(), gp::TEE_SUCCESS);
    let c3 = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], 0);
    assert_eq!(a.finish(&sys, c3).ret(), gp::TEE_SUCCESS);

    // One buffer of 7 pages is too large.
    let big = a.buffer(7 * PAGE, 0);
    assert_eq!(a.register(&sys, 1, &big), gp::TEE_ERROR_OUT_OF_MEMORY);
    // Pins: 6 + 3 fit, 2 more do not.
    let (b6, b3, b2) = (
        a.buffer(6 * PAGE, 0),
        a.buffer(3 * PAGE, 0),
        a.buffer(2 * PAGE, 0),
    );
    assert_eq!(a.register(&sys, 1, &b6), gp::TEE_SUCCESS);
    assert_eq!(a.register(&sys, 2, &b3), gp::TEE_SUCCESS);
    assert_eq!(a.register(&sys, 3, &b2), gp::TEE_ERROR_OUT_OF_MEMORY);
    assert_eq!(sys.hyp.pinned_pages(a.id), 9);
    // Buffers: a third fits, a fourth does not.
    let one = a.buffer(1, 0);
    assert_eq!(a.register(&sys, 3, &one), gp::TEE_SUCCESS);
    let other = a.buffer(1, 0);
    assert_eq!(a.register(&sys, 4, &other), gp::TEE_ERROR_OUT_OF_MEMORY);
    // An RPC buffer now finds no room: the call fails cleanly, nothing more is held.
    let r = rpc_buffer(&mut a, &sys, s, PAGE);
    assert_ne!(r.ret(), gp::TEE_SUCCESS);
    a.rpc_bufs.clear();
    let st = sys.stats(&a);
    assert_eq!(
        (st.buffers, st.pinned_pages, st.registered, st.shadow_pages),
        (3, 10, 3, 0)
    );
    sys.check();
    for c in 1..=3 {
        assert_eq!(a.unregister(&sys, c), gp::TEE_SUCCESS);
    }
    assert_eq!(sys.stats(&a), GuestStats::default());
    sys.destroy_and_check(&a);
}

/// The hypervisor out of pages: no shadow arg (ENOMEM), no shadow list (OUT_OF_MEMORY).
#[test]
fn hypervisor_pages_exhausted() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let buf = a.buffer(PAGE, 0);
    sys.hyp_memory_limit(Some(0));
    let s = a.start(&sys, header(OPTEE_MSG_CMD_CANCEL), &[], 0);
    assert_eq!(s.out.a0(), OPTEE_SMC_RETURN_ENOMEM);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_ERROR_OUT_OF_MEMORY);
    // One page: the shadow list takes it, the shadow arg finds none; the list goes back.
    sys.hyp_memory_limit(Some(1));
    let (buf_ptr, _) = a.page_list(&sys, &buf);
    let p = MsgParam::from_tmem(REG, Tmem::new(buf_ptr, PAGE, 1));
    let r = a.call(&sys, header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
    assert_eq!(r.a0, OPTEE_SMC_RETURN_ENOMEM);
    assert_eq!(sys.stats(&a), GuestStats::default());
    sys.hyp_memory_limit(None);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_SUCCESS);
    assert_eq!(sys.shadows_held(), 0);
    sys.destroy_and_check(&a);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Garbage registers and garbage in guest memory: the mediator never panics, the TEE stays
    /// consistent, and after destruction nothing is held.
    #[test]
    fn garbage_never_panics_or_leaks(
        memory in proptest::collection::vec((0u64..8, 0u64..512, any::<u64>()), 0..64),
        calls in proptest::collection::vec((0usize..6, any::<[u64; 6]>(), 0u64..8, 0u64..4096), 1..24),
    ) {
        let mut sys = System::new();
        let mut a = sys.guest(1, 0);
        let b = sys.guest(2, 1);
        let pages = a.alloc_pages(8);
        // Some structure: a plausible header in page 0, list-like words everywhere.
        let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
        h.num_params.set(1);
        a.write(&sys, pages[0], h.as_bytes());
        for (page, word, v) in memory {
            let v = if v % 3 == 0 { pages[(v as usize / 3) % 8] | (v & 0xfff) } else { v };
            a.write(&sys, pages[page as usize] + word * 8, &v.to_le_bytes());
        }
        let funcs = [
            OPTEE_SMC_CALL_WITH_ARG,
            OPTEE_SMC_CALL_RETURN_FROM_RPC,
            OPTEE_SMC_EXCHANGE_CAPABILITIES,
            OPTEE_SMC_DISABLE_SHM_CACHE,
            OPTEE_SMC_ENABLE_SHM_CACHE,
            OPTEE_SMC_VM_DESTROYED,
        ];
        for (f, mut regs, page, offset) in calls {
            if f == 0 && regs[0] % 2 == 0 {
                let ipa = pages[page as usize] + (offset & !7);
                (regs[0], regs[1]) = split_pair(ipa);
            }
            let out = a.smc(&sys, funcs[f], &regs);
            if is_rpc_return(out.a0()) {
                // Answer with garbage too.
                let _ = a.smc(&sys, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[regs[3], regs[4], out.a[3], regs[5], regs[0]]);
            }
            let d = sys.tee().check_agreement();
            prop_assert!(d.is_empty(), "{:?}", d);
        }
        sys.destroy_and_check(&a);
        prop_assert_eq!(sys.shadows_held(), 0);
        prop_assert!(sys.tee().guest(b.id).is_some());
        sys.destroy_and_check(&b);
    }
}
