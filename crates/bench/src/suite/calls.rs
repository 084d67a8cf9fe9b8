//! Figures of one guest's calls into the core: P2 registration cost and memory per page, P4
//! repeat invoke of 1 MiB vs 4 KiB.

use super::{
    Budget, Figure, Stats, figure, ns_per_op_side_by_side, ratio_stats, rounds_side_by_side,
};
use crate::peers::{OpteeEntryModel, OpteeModel};
use std::hint::black_box;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_NOT_IMPLEMENTED, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::smc::{
    OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALL_WITH_REGD_ARG, OPTEE_SMC_CALLS_COUNT,
};
use teeshm_core::pta::cmd;
use teeshm_core::{CoreConfig, GuestQuotas, SmcRegs};
use teeshm_testkit::msg::Buf;
use teeshm_testkit::msg::{header, rmem, value};
use teeshm_testkit::world::{PAGE, World};
use zerocopy::IntoBytes;

// ---- P2 -------------------------------------------------------------------------------------

/// The bytes of an arg of `command` with the one param `p`.
fn arg_with(command: u32, p: MsgParam) -> Vec<u8> {
    let mut h = header(command);
    h.num_params.set(1);
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(p.as_bytes());
    bytes
}

/// The result code written into the arg at `offset` of `buf` (one read of simulated memory,
/// no allocation: the check both sides of P2 make after each pair).
fn ret_in(w: &World, buf: &Buf, offset: u64) -> u32 {
    let mut ret = [0u8; 4];
    w.mem.read(w.buf_pa(buf, offset + 20), &mut ret);
    u32::from_le_bytes(ret)
}

/// The cookie of the one-page buffer both sides keep their args in (Linux's arg cache).
const ARG_COOKIE: u64 = 999;
/// Where the unregister arg lies in that buffer (the register arg is at 0).
const UNREGISTER_AT: u64 = 2048;

/// P2: a registration and its unregistration of `n` scattered pages through the SMC front end
/// as Linux 6.1 calls it when the TEE offers `OPTEE_SMC_SEC_CAP_RPC_ARG` (as teeshm does):
/// `CALL_WITH_REGD_ARG`, the args in a registered one-page buffer, written beforehand. The
/// peer is OP-TEE's whole call on the same args in the same memory ([`OpteeEntryModel`]);
/// the registration alone (no front end: [`OpteeModel`]) is timed beside it as a lower bound.
/// Then the secure memory kept per page (computed: the core's charge and the model's type
/// sizes).
pub(super) fn p2(budget: Budget, out: &mut Vec<Figure>) {
    for n in [1u64, 256, 16_384] {
        let w = World::new(CoreConfig {
            quotas: GuestQuotas {
                max_registered_pages: 1 << 24,
                // Room for the page frames of 2^24 registered pages.
                max_secure_bytes: 1 << 28,
                ..GuestQuotas::default()
            },
            heap_budget: 1 << 30,
            ..CoreConfig::default()
        });
        let g = GuestId::HYPERVISOR;
        let buf = w.buffer(n * PAGE, 0);
        let (buf_ptr, _) = w.page_list(&buf);
        // 64 one-page buffers registered beforehand on all sides, then the args' buffer (the
        // model's most recent registration, at the head of its list).
        let mut entry = OpteeEntryModel::new();
        let mut model = OpteeModel::new();
        let small = w.buffer(PAGE, 0);
        let (small_ptr, _) = w.page_list(&small);
        for c in 0..64 {
            assert_eq!(w.register(g, 1 + c, &small), TEE_SUCCESS);
            assert!(entry.registry.register(&w.mem, small_ptr, PAGE, 1 + c));
            assert!(model.register(&w.mem, small_ptr, PAGE, 1 + c));
        }
        let args = w.buffer(PAGE, 0);
        let (args_ptr, _) = w.page_list(&args);
        assert_eq!(w.register(g, ARG_COOKIE, &args), TEE_SUCCESS);
        assert!(entry.registry.register(&w.mem, args_ptr, PAGE, ARG_COOKIE));
        let cookie = 1_000_000;
        let reg = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, cookie),
        );
        let unreg = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
        w.write_buf(&args, 0, &arg_with(OPTEE_MSG_CMD_REGISTER_SHM, reg));
        w.write_buf(
            &args,
            UNREGISTER_AT,
            &arg_with(OPTEE_MSG_CMD_UNREGISTER_SHM, unreg),
        );
        let regd =
            |offset: u64| SmcRegs::call(OPTEE_SMC_CALL_WITH_REGD_ARG, &[0, ARG_COOKIE, offset]);
        let (reg_call, unreg_call) = (regd(0), regd(UNREGISTER_AT));
        let mut teeshm = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(reg_call));
                black_box(w.tee.handle_smc(unreg_call));
                // The unregister succeeds only if the register did (else its cookie is
                // unknown), and a failed unregister fails the next register.
                assert_eq!(ret_in(&w, &args, UNREGISTER_AT), TEE_SUCCESS, "{n} pages");
            }
        };
        let mut peer = |ops: u64| {
            for _ in 0..ops {
                assert_eq!(entry.call_regd(&w.mem, ARG_COOKIE, 0), Some(TEE_SUCCESS));
                assert_eq!(
                    entry.call_regd(&w.mem, ARG_COOKIE, UNREGISTER_AT),
                    Some(TEE_SUCCESS)
                );
                // The same check of the result in memory as teeshm's side makes.
                assert_eq!(ret_in(&w, &args, UNREGISTER_AT), TEE_SUCCESS, "{n} pages");
            }
        };
        let mut lower_cookie = 2_000_000u64;
        let mut lower_bound = |ops: u64| {
            for _ in 0..ops {
                lower_cookie += 1;
                assert!(model.register(&w.mem, black_box(buf_ptr), buf.size, lower_cookie));
                assert!(model.unregister(black_box(lower_cookie)));
            }
        };
        // The stages of a 1-page registration's fixed cost, timed beside it: the SMC alone (a
        // fast call), a yielding call that does nothing (a message of an unknown command: a
        // thread, the arg read and written back) with its arg in the registered buffer and
        // with it in a page of its own (CALL_WITH_ARG: mapped for the call), and an
        // unregister of an unknown cookie.
        let empty_arg = arg_with(
            0xdead,
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, 0)),
        );
        const EMPTY_AT: u64 = 1024;
        const UNKNOWN_AT: u64 = 3072;
        w.write_buf(&args, EMPTY_AT, &empty_arg);
        w.write_buf(
            &args,
            UNKNOWN_AT,
            &arg_with(
                OPTEE_MSG_CMD_UNREGISTER_SHM,
                MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, 7_000_000)),
            ),
        );
        let empty_page = w.alloc_page();
        w.mem.write(empty_page, &empty_arg);
        let empty_plain = SmcRegs::call(
            OPTEE_SMC_CALL_WITH_ARG,
            &[empty_page >> 32, empty_page & 0xffff_ffff],
        );
        let (empty_regd, unknown) = (regd(EMPTY_AT), regd(UNKNOWN_AT));
        let fast = SmcRegs::call(OPTEE_SMC_CALLS_COUNT, &[]);
        let mut fast_call = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(black_box(fast)));
            }
        };
        let mut empty_call = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(empty_regd));
                assert_eq!(ret_in(&w, &args, EMPTY_AT), TEE_ERROR_NOT_IMPLEMENTED);
            }
        };
        let mut empty_plain_call = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(empty_plain));
                let mut ret = [0u8; 4];
                w.mem.read(empty_page + 20, &mut ret);
                assert_eq!(u32::from_le_bytes(ret), TEE_ERROR_NOT_IMPLEMENTED);
            }
        };
        let mut unknown_unregister = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(unknown));
                assert_eq!(ret_in(&w, &args, UNKNOWN_AT), TEE_ERROR_BAD_PARAMETERS);
            }
        };
        let stats = if n == 1 {
            ns_per_op_side_by_side(
                budget,
                &mut [
                    &mut teeshm,
                    &mut peer,
                    &mut lower_bound,
                    &mut fast_call,
                    &mut empty_call,
                    &mut empty_plain_call,
                    &mut unknown_unregister,
                ],
            )
        } else {
            ns_per_op_side_by_side(budget, &mut [&mut teeshm, &mut peer, &mut lower_bound])
        };
        for (stage, what, st) in [
            (
                "smc",
                "a fast call (CALLS_COUNT) through Tee::handle_smc",
                stats.get(3),
            ),
            (
                "call",
                "a yielding call of an unknown message command, its arg in a registered buffer (CALL_WITH_REGD_ARG: thread, arg read and written back)",
                stats.get(4),
            ),
            (
                "call_plain",
                "the same with its arg in a page of its own (CALL_WITH_ARG: the page also mapped and unmapped for the call)",
                stats.get(5),
            ),
            (
                "unregister_unknown",
                "UNREGISTER_SHM of an unknown cookie (a REGD_ARG call and a cookie lookup)",
                stats.get(6),
            ),
        ] {
            let Some(st) = st else { continue };
            let mut f = figure(
                &format!("P2.stage.{stage}"),
                what,
                st.median,
                "ns",
                None,
                None,
                "",
                None,
                "a stage of P2.register.1's fixed cost, timed beside it",
            );
            f.spread = Some(st.spread());
            out.push(f);
        }
        let per_page = |s: &Stats| Stats {
            min: s.min / n as f64,
            median: s.median / n as f64,
            max: s.max / n as f64,
        };
        let (ours, theirs, lower) = (
            per_page(&stats[0]),
            per_page(&stats[1]),
            per_page(&stats[2]),
        );
        let peer_name = "model of OP-TEE's whole call (REGD_ARG front end, register + unregister)";
        let lower_name = "model of OP-TEE's registration alone (no front end): a lower bound";
        let (goal, met) = if n == 1 {
            ("≤ 4 × peer", ours.median <= 4.0 * theirs.median)
        } else {
            ("≤ peer", ours.median <= theirs.median)
        };
        let note = format!(
            "{:.2} × the registration alone{}",
            ours.median / lower.median,
            if n == 1 {
                "; the fixed cost of two calls (thread, arg copy, list page, object, cookie table)"
            } else {
                ""
            }
        );
        let mut f = figure(
            &format!("P2.register.{n}"),
            &format!(
                "REGISTER_SHM + UNREGISTER_SHM of {n} scattered pages through the SMC front end (CALL_WITH_REGD_ARG), per page"
            ),
            ours.median,
            "ns/page",
            Some((theirs.median, peer_name)),
            Some((ours.median / theirs.median, "teeshm / peer")),
            goal,
            Some(met),
            &note,
        );
        f.spread = Some(ours.spread());
        f.peers = vec![
            (peer_name.into(), theirs.median),
            (lower_name.into(), lower.median),
        ];
        f.peers_spread = vec![
            (peer_name.into(), theirs.spread()),
            (lower_name.into(), lower.spread()),
        ];
        out.push(f);
        // Memory kept.
        let before = w
            .tee
            .guest(GuestId::HYPERVISOR)
            .unwrap()
            .counters()
            .secure_bytes();
        let r = w.register(GuestId::HYPERVISOR, 42_000_000, &buf);
        assert_eq!(r, TEE_SUCCESS);
        let after = w
            .tee
            .guest(GuestId::HYPERVISOR)
            .unwrap()
            .counters()
            .secure_bytes();
        let per_page = (after - before) as f64 / n as f64;
        let model_per_page = OpteeModel::object_bytes(n) as f64 / n as f64;
        let mut f = figure(
            &format!("P2.bytes.{n}"),
            &format!("secure memory kept per registered page, {n}-page buffer"),
            per_page,
            "B/page",
            Some((model_per_page, "OP-TEE's mobj_reg_shm (8 B/page + object)")),
            Some((per_page / model_per_page, "teeshm / peer")),
            if n >= 256 { "≤ 8.5 B/page" } else { "" },
            (n >= 256).then_some(per_page <= 8.5),
            if n == 1 {
                "the core's charge (type sizes) and the model's type sizes: computed, not measured; a one-page buffer is its fixed object size"
            } else {
                "the core's charge (type sizes) and the model's type sizes: computed, not measured; 4 B a page: 32-bit frame numbers below 16 TiB"
            },
        );
        f.kind = "computed".into();
        out.push(f);
    }
}

// ---- P4 -------------------------------------------------------------------------------------

pub(super) fn touch(w: &World, g: GuestId, s: u32, cookie: u64, size: u64) {
    let r = w.invoke(
        g,
        s,
        cmd::TOUCH,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
}

pub(super) fn p4(budget: Budget, out: &mut Vec<Figure>) {
    let g = GuestId::HYPERVISOR;
    let w = World::default_world();
    let s = w.open_session(g);
    for (c, size) in [(1u64, 4096u64), (2, 1 << 20)] {
        assert_eq!(w.register(g, c, &w.buffer(size, 0)), TEE_SUCCESS);
        touch(&w, g, s, c, size);
    }
    // Peer: the same 1 MiB invoke when the mapping is not kept (two buffers under a quota that
    // holds one): what mapping on every call, as OP-TEE does, costs.
    let u = World::new(CoreConfig {
        quotas: GuestQuotas {
            max_mapped_pages: 300,
            ..GuestQuotas::default()
        },
        max_buffer_pages: 300,
        ..CoreConfig::default()
    });
    let us = u.open_session(g);
    for c in [1u64, 2] {
        assert_eq!(u.register(g, c, &u.buffer(1 << 20, 0)), TEE_SUCCESS);
    }
    let mut k = 0u64;
    // The three side by side, so that each round's ratio is a sample of the figure.
    let rounds = rounds_side_by_side(
        budget,
        &mut [
            &mut |n| (0..n).for_each(|_| touch(&w, g, s, 1, 4096)),
            &mut |n| (0..n).for_each(|_| touch(&w, g, s, 2, 1 << 20)),
            &mut |n| {
                for _ in 0..n {
                    k += 1;
                    touch(&u, g, us, 1 + k % 2, 1 << 20);
                }
            },
        ],
    );
    let [small_rounds, big_rounds, uncached_rounds] = &rounds[..] else {
        unreachable!("three functions measured")
    };
    let (small, big, uncached) = (
        Stats::of(small_rounds.clone()).median,
        Stats::of(big_rounds.clone()).median,
        Stats::of(uncached_rounds.clone()).median,
    );
    let ratio = ratio_stats(big_rounds, small_rounds);
    let peer = ratio_stats(uncached_rounds, small_rounds);
    let mut f = figure(
        "P4",
        "repeat INVOKE (TOUCH first and last byte) with a 1 MiB registered memref, over a 4 KiB one",
        ratio.median,
        "×",
        Some((
            peer.median,
            "1 MiB remapped on every call (OP-TEE's way), over 4 KiB",
        )),
        Some((ratio.median, "1 MiB / 4 KiB")),
        "≤ 1.2",
        Some(ratio.median <= 1.2),
        &format!(
            "4 KiB: {small:.0} ns, 1 MiB cached: {big:.0} ns, 1 MiB remapped: {uncached:.0} ns per call (medians); the spread is of each round's ratio"
        ),
    );
    f.spread = Some(ratio.spread());
    f.peers_spread = vec![("1 MiB remapped".into(), peer.spread())];
    out.push(f);
}
