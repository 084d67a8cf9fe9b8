//! Two guests behind the mediator, against the real core: identity and capabilities, buffers
//! registered and passed by page list from guest IPAs, the pseudo-TA's bytes landing in the
//! right guest's memory, RPC buffers both ways, the SHM cache, and the read-once rule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use teeshm_abi::GuestId;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE, OPTEE_RPC_SHM_TYPE_KERNEL};
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_core::CoreConfig;
use teeshm_core::pta::cmd;
use teeshm_hyp::HypLimits;

const VIN: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT;
const VOUT: u64 = OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT;

#[test]
fn identity_capabilities_and_refused_calls() {
    // A virtualized core serves no static pool (it would be shared by every guest), so the
    // mediator's refusal of GET_SHM_CONFIG is the only answer a guest can get either way.
    let mut sys = System::with(
        virtualized(),
        HypLimits {
            max_calls: 3,
            ..HypLimits::default()
        },
    );
    let a = sys.guest(1, 0);
    // The TEE itself offers more than a guest may use.
    let full = sys.tee().capabilities();
    assert!(full.contains(SecureCaps::RPC_ARG | SecureCaps::VIRTUALIZATION));
    assert!(!full.contains(SecureCaps::HAVE_RESERVED_SHM));

    let out = a.smc(&sys, OPTEE_SMC_CALLS_UID, &[]);
    assert_eq!(
        [out.a0(), out.a[1] as u32, out.a[2] as u32, out.a[3] as u32],
        uid::OPTEE_MSG_UID
    );
    for ns_caps in [0, 1, 0xffff_fff0] {
        let out = a.smc(&sys, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[ns_caps]);
        assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
        assert_eq!(
            out.a[1],
            u64::from((SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL).bits())
        );
        assert_eq!(out.a[2..], [0; 6], "no RPC_ARG param count, nothing else");
    }
    assert_eq!(
        a.smc(&sys, OPTEE_SMC_GET_SHM_CONFIG, &[]).a0(),
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    let threads = a.smc(&sys, OPTEE_SMC_GET_THREAD_COUNT, &[]);
    assert_eq!(
        (threads.a0(), threads.a[1]),
        (OPTEE_SMC_RETURN_OK, 3),
        "min(the TEE's threads, max_calls)"
    );

    // Guests may not announce or end guests, whatever a1 says.
    for func in [OPTEE_SMC_VM_CREATED, OPTEE_SMC_VM_DESTROYED] {
        for who in [0u64, 1, 9] {
            assert_eq!(a.smc(&sys, func, &[who]).a0(), OPTEE_SMC_RETURN_ENOTAVAIL);
        }
    }
    assert!(sys.tee().guest(GuestId(9)).is_none());
    assert!(sys.tee().guest(a.id).is_some());
    // Never-offered call forms and anything unknown.
    for func in [
        OPTEE_SMC_CALL_WITH_RPC_ARG,
        OPTEE_SMC_CALL_WITH_REGD_ARG,
        OPTEE_SMC_BOOT_SECONDARY,
        OPTEE_SMC_L2CC_MUTEX,
        OPTEE_SMC_ENABLE_ASYNC_NOTIF,
        0x3200_0042,
    ] {
        assert_eq!(
            a.smc(&sys, func, &[1, 2, 3]).a0(),
            OPTEE_SMC_RETURN_UNKNOWN_FUNCTION,
            "{func:#x}"
        );
    }
    let mut regs = SmcRegs::call(OPTEE_SMC_CALLS_UID, &[]);
    regs.a[0] |= 1 << 40;
    assert_eq!(
        sys.hyp.handle_guest_smc(a.id, regs).a0(),
        OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    );
    // An unknown guest.
    let out = sys
        .hyp
        .handle_guest_smc(GuestId(77), SmcRegs::call(OPTEE_SMC_CALLS_UID, &[]));
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_ENOTAVAIL);
    sys.destroy_and_check(&a);
}

/// Registers an unaligned buffer in each of two guests, fills and copies through the
/// pseudo-TA, and checks every byte in each guest's own memory (read through its own IPAs).
#[test]
fn bytes_land_in_the_right_guest() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let mut b = sys.guest(2, 1);
    assert_eq!(a.end(), b.base, "B's RAM begins where A's ends");

    let size = 3 * PAGE + 77;
    let (buf_a, copy_a) = (a.buffer(size, 0x123), a.buffer(size, 0xff8));
    let buf_b = b.buffer(size, 0x7);
    a.fill_buf(&sys, &copy_a, |_| 0xee);
    assert_eq!(a.register(&sys, 0x10, &buf_a), gp::TEE_SUCCESS);
    assert_eq!(a.register(&sys, 0x11, &copy_a), gp::TEE_SUCCESS);
    // B uses the same cookie: cookies are per guest.
    assert_eq!(b.register(&sys, 0x10, &buf_b), gp::TEE_SUCCESS);
    let pages = |buf: &Buf| buf.pages.len() as u64;
    assert_eq!(sys.hyp.pinned_pages(a.id), pages(&buf_a) + pages(&copy_a));
    assert_eq!(sys.hyp.pinned_pages(b.id), pages(&buf_b));
    assert_eq!(
        sys.shadows_held(),
        0,
        "registered lists are gone once the TEE has read them"
    );
    assert_eq!(
        sys.tee().guest(a.id).unwrap().snapshot().registered_buffers,
        2
    );
    assert_eq!(
        sys.tee().guest(b.id).unwrap().snapshot().registered_buffers,
        1
    );

    let (sa, sb) = (a.open_session(&sys), b.open_session(&sys));
    let out = OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT;
    let r = a.invoke(
        &sys,
        sa,
        cmd::FILL,
        &[rmem(out, 0x10, 0, size), value(VIN, 11, 0, 0)],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    let r = b.invoke(
        &sys,
        sb,
        cmd::FILL,
        &[rmem(out, 0x10, 0, size), value(VIN, 22, 0, 0)],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_eq!(a.read_buf(&sys, &buf_a), pattern(11, size));
    assert_eq!(b.read_buf(&sys, &buf_b), pattern(22, size));

    // COPY from one registered buffer to the other, with an offset into each.
    let inp = OPTEE_MSG_ATTR_TYPE_RMEM_INPUT;
    let r = a.invoke(
        &sys,
        sa,
        cmd::COPY,
        &[rmem(inp, 0x10, 5, 5000), rmem(out, 0x11, 9, 5000)],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_eq!(
        r.params[1].rmem().size.get(),
        5000,
        "output size copied back"
    );
    let copied = a.read_buf(&sys, &copy_a);
    assert_eq!(&copied[9..5009], &pattern(11, size)[5..5005]);
    assert!(
        copied[..9]
            .iter()
            .chain(&copied[5009..])
            .all(|&x| x == 0xee)
    );

    // A temporary page list, unaligned: filled, then gone.
    let tmp = a.buffer(2 * PAGE + 1, 0x801);
    let p = a.tmem_list(&sys, OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &tmp);
    let r = a.invoke(&sys, sa, cmd::FILL, &[p, value(VIN, 33, 0, 0)]);
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_eq!(a.read_buf(&sys, &tmp), pattern(33, tmp.size));
    assert_eq!(
        r.params[0].tmem().buf_ptr.get(),
        p.tmem().buf_ptr.get(),
        "the guest never sees the shadow list's PA"
    );
    assert_eq!(sys.hyp.pinned_pages(a.id), pages(&buf_a) + pages(&copy_a));
    assert_eq!(sys.shadows_held(), 0);
    // B's buffer was not touched by A's calls.
    assert_eq!(b.read_buf(&sys, &buf_b), pattern(22, size));
    sys.check();

    assert_eq!(a.unregister(&sys, 0x10), gp::TEE_SUCCESS);
    assert_eq!(sys.hyp.pinned_pages(a.id), pages(&copy_a));
    assert_eq!(a.unregister(&sys, 0x11), gp::TEE_SUCCESS);
    assert_eq!(sys.hyp.pinned_pages(a.id), 0);
    assert_eq!(sys.stats(&a).buffers, 0);
    sys.destroy_and_check(&a);
    // B still works after A is gone.
    let r = b.invoke(
        &sys,
        sb,
        cmd::FILL,
        &[rmem(out, 0x10, 0, size), value(VIN, 44, 0, 0)],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_eq!(b.read_buf(&sys, &buf_b), pattern(44, size));
    sys.destroy_and_check(&b);
    assert_eq!(sys.shadows_held(), 0);
}

/// The guest's a7 is replaced by its own id: naming another guest does not act as it.
#[test]
fn a7_is_the_callers_own_id() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let b = sys.guest(2, 1);
    let buf = a.buffer(PAGE, 0);
    let (buf_ptr, _) = a.page_list(&sys, &buf);
    let p = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, PAGE, 5),
    );
    let bytes = arg_bytes(header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
    let arg = a.alloc_page();
    a.write(&sys, arg, &bytes);
    let (hi, lo) = split_pair(arg);
    let mut regs = SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
    regs.a[7] = u64::from(b.id.raw());
    assert_eq!(
        sys.hyp.handle_guest_smc(a.id, regs).a0(),
        OPTEE_SMC_RETURN_OK
    );
    assert_eq!(
        sys.tee().guest(a.id).unwrap().snapshot().registered_buffers,
        1
    );
    assert_eq!(
        sys.tee().guest(b.id).unwrap().snapshot().registered_buffers,
        0
    );
    sys.destroy_and_check(&a);
    sys.destroy_and_check(&b);
}

/// More than 511 pages: two guest list pages become two shadow list pages.
#[test]
fn large_buffer_over_two_list_pages() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let size = 600 * PAGE - 0x200;
    let buf = a.buffer(size, 0x100);
    assert_eq!(buf.pages.len(), 600);
    assert_eq!(a.register(&sys, 1, &buf), gp::TEE_SUCCESS);
    assert_eq!(sys.hyp.pinned_pages(a.id), 600);
    let s = a.open_session(&sys);
    let r = a.invoke(
        &sys,
        s,
        cmd::FILL,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, 1, 0, size),
            value(VIN, 7, 0, 0),
        ],
    );
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    assert_eq!(a.read_buf(&sys, &buf), pattern(7, size));
    sys.check();
    sys.destroy_and_check(&a);
    assert_eq!(sys.shadows_held(), 0);
}

fn rpc_buffer(a: &mut Guest, sys: &System, session: u32, bytes: u64, seed: u64) -> Reply {
    a.invoke(
        sys,
        session,
        cmd::RPC_BUFFER,
        &[
            value(VIN, bytes, OPTEE_RPC_SHM_TYPE_KERNEL, seed),
            value(VOUT, 0, 0, 0),
        ],
    )
}

/// RPC_BUFFER: the TEE asks the guest for an RPC arg buffer, then for a data buffer by
/// SHM_ALLOC (answered as a page list of IPAs, or as a contiguous IPA range that is scattered
/// in machine memory), fills it, frees it. The pattern lands in the guest's pages.
#[test]
fn rpc_buffers_both_ways() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    for (mode, bytes, seed) in [
        (RpcMode::Good, 3 * PAGE + 5, 1),
        (RpcMode::Contiguous, 5 * PAGE, 2),
        (RpcMode::Good, 1, 3),
        (RpcMode::Contiguous, 100, 4),
    ] {
        a.rpc_mode = mode;
        a.served.clear();
        let r = rpc_buffer(&mut a, &sys, s, bytes, seed);
        assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS), "{mode:?}");
        assert_eq!(r.value(1)[0], bytes);
        assert_eq!(a.served, [OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE]);
        let freed = a.last_freed.take().unwrap();
        assert_eq!(
            a.read_buf(
                &sys,
                &Buf {
                    size: bytes,
                    ..freed
                }
            ),
            pattern(seed, bytes)
        );
        // The RPC arg buffer was given back by RPC_FREE (no SHM cache): nothing is held.
        assert!(a.rpc_bufs.is_empty());
        assert_eq!(sys.stats(&a), teeshm_hyp::GuestStats::default(), "{mode:?}");
        assert_eq!(sys.shadows_held(), 0);
        sys.check();
    }
    sys.destroy_and_check(&a);
}

/// With the SHM cache the TEE keeps the RPC arg buffer (the mediator's shadow) between calls;
/// DISABLE_SHM_CACHE hands its cookie back and the shadow and pin go.
#[test]
fn shm_cache_keeps_and_returns_rpc_args() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    assert_eq!(
        a.smc(&sys, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0(),
        OPTEE_SMC_RETURN_OK
    );
    for seed in 0..3 {
        let r = rpc_buffer(&mut a, &sys, s, 2 * PAGE, seed);
        assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    }
    let st = sys.stats(&a);
    assert_eq!(
        (st.rpc_args, st.pinned_pages, st.shadow_pages, st.buffers),
        (1, 1, 1, 1)
    );
    assert_eq!(a.rpc_bufs.len(), 1, "one RPC arg buffer served every call");
    let cookie = *a.rpc_bufs.keys().next().unwrap();
    let out = a.smc(&sys, OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    assert_eq!(reg_pair(out.a[1], out.a[2]), cookie);
    a.rpc_bufs.remove(&cookie);
    assert_eq!(
        a.smc(&sys, OPTEE_SMC_DISABLE_SHM_CACHE, &[]).a0(),
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    assert_eq!(sys.stats(&a), teeshm_hyp::GuestStats::default());
    assert_eq!(sys.shadows_held(), 0);
    sys.check();
    sys.destroy_and_check(&a);
}

/// Each byte of the guest's arg and list pages is read once by the mediator; the TEE reads
/// only the shadows.
#[test]
fn guest_arg_and_list_pages_are_read_once() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let buf = a.buffer(700 * PAGE, 0);
    let (buf_ptr, lists) = a.page_list(&sys, &buf);
    assert_eq!(lists.len(), 2);
    let p = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, buf.size, 3),
    );
    let bytes = arg_bytes(header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
    let arg = a.alloc_page() + 0x40;
    a.write(&sys, arg, &bytes);
    sys.phys.trace_reads(true);
    let (hi, lo) = split_pair(arg);
    let out = a.smc(&sys, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    for page in [arg, lists[0], lists[1]] {
        assert_eq!(sys.phys.reads_of(a.pa(page)), 1, "page {page:#x}");
    }
    for data in &buf.pages {
        assert_eq!(
            sys.phys.reads_of(a.pa(*data)),
            0,
            "data pages are not read to register"
        );
    }
    sys.phys.trace_reads(false);
    let ret = u32::from_le_bytes(a.read(&sys, arg + 20, 4).try_into().unwrap());
    assert_eq!(ret, gp::TEE_SUCCESS);
    assert_eq!(sys.hyp.pinned_pages(a.id), 700);
    sys.destroy_and_check(&a);
}

/// The mediator's default limits come from the definitions the core's default quotas use, so a
/// guest behind the default mediator meets the TEE's limits, never stricter ones of its own.
#[test]
fn default_limits_never_undercut_the_cores_defaults() {
    let (limits, core) = (HypLimits::default(), CoreConfig::default());
    assert_eq!(u64::from(limits.max_buffers), core.quotas.max_objects);
    assert_eq!(limits.max_buffer_pages, core.max_buffer_pages);
    assert!(limits.max_pinned_pages >= core.quotas.max_registered_pages + core.max_buffer_pages);
    // A guest holds at most its own thread quota of the core's threads (the rest are other
    // guests' reserved ones or shared), so that is what the mediator's calls must cover.
    assert!(u64::from(limits.max_calls) >= core.quotas.max_threads);
}

/// One mediator serves different guests at once: four guests on four threads register
/// buffers, have the pseudo-TA fill them, check every byte in their own memory and unregister
/// them, all through the same mediator (its `handle_guest_smc` takes `&self`). Afterwards the
/// core's and the mediator's checkers agree, and no guest holds a pin, a shadow or a buffer.
#[test]
fn one_mediator_serves_guests_on_several_cpus_at_once() {
    let mut sys = System::new();
    let mut guests: Vec<Guest> = (0..4u16).map(|i| sys.guest(1 + i, u64::from(i))).collect();
    let sys = &sys;
    std::thread::scope(|s| {
        for g in &mut guests {
            s.spawn(move || {
                let session = g.open_session(sys);
                for i in 0..25u64 {
                    let buf = g.buffer(3 * PAGE + 100, 100);
                    let cookie = g.cookie();
                    assert_eq!(g.register(sys, cookie, &buf), gp::TEE_SUCCESS);
                    let seed = (u64::from(g.id.raw()) << 32) | i;
                    let out = OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT;
                    let r = g.invoke(
                        sys,
                        session,
                        cmd::FILL,
                        &[rmem(out, cookie, 0, buf.size), value(VIN, seed, 0, 0)],
                    );
                    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
                    assert_eq!(g.read_buf(sys, &buf), pattern(seed, buf.size));
                    assert_eq!(g.unregister(sys, cookie), gp::TEE_SUCCESS);
                }
            });
        }
    });
    sys.check();
    for g in &guests {
        let stats = sys.stats(g);
        assert_eq!(sys.hyp.pinned_pages(g.id), 0, "{stats:?}");
        assert_eq!(
            sys.tee().guest(g.id).unwrap().snapshot().registered_buffers,
            0
        );
    }
    assert_eq!(sys.shadows_held(), 0);
}

/// A long call through the mediator: SCRUB lets the normal world's interrupts through
/// (`RPC_FOREIGN_INTR`, which the mediator passes on with only the thread id) and goes on where
/// it stopped after each return; every byte lands in the guest's own pages.
#[test]
fn a_long_call_lets_interrupts_through_the_mediator() {
    let mut sys = System::new();
    let mut a = sys.guest(1, 0);
    let s = a.open_session(&sys);
    let size = 40 * PAGE + 77;
    let buf = a.buffer(size, 0x21);
    let cookie = a.cookie();
    assert_eq!(a.register(&sys, cookie, &buf), gp::TEE_SUCCESS);
    sys.tee().platform().set_foreign_interrupt_every(5);
    let r = a.invoke(
        &sys,
        s,
        cmd::SCRUB,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, size),
            value(VIN, 900, 3, 0),
            value(VOUT, 0, 0, 0),
        ],
    );
    sys.tee().platform().set_foreign_interrupt_every(0);
    assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS));
    let [checked, yields, _] = r.value(2);
    assert_eq!(checked, 3 * size);
    assert!(yields >= 20, "{yields} interrupts let through");
    assert_eq!(a.read_buf(&sys, &buf), pattern(902, size));
    assert_eq!(a.unregister(&sys, cookie), gp::TEE_SUCCESS);
    sys.check();
    sys.destroy_and_check(&a);
}
