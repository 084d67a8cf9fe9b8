//! Figures of one guest's calls into the core: P2 registration cost and memory per page, P4
//! repeat invoke of 1 MiB vs 4 KiB.

use super::{
    Budget, Figure, Stats, figure, ns_per_op_side_by_side, ratio_stats, rounds_side_by_side,
};
use crate::peers::OpteeModel;
use std::hint::black_box;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_NOT_IMPLEMENTED, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::smc::{OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_CALLS_COUNT};
use teeshm_core::pta::cmd;
use teeshm_core::{CoreConfig, GuestQuotas, SmcRegs};
use teeshm_testkit::msg::{header, rmem, value};
use teeshm_testkit::world::{PAGE, World};
use zerocopy::IntoBytes;

// ---- P2 -------------------------------------------------------------------------------------

/// Writes a REGISTER_SHM arg for guest 0 at `page`.
fn register_arg(w: &World, page: u64, buf_ptr: u64, size: u64, cookie: u64) -> SmcRegs {
    let p = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    );
    write_arg(w, page, OPTEE_MSG_CMD_REGISTER_SHM, p)
}

/// Writes an UNREGISTER_SHM arg of `cookie` for guest 0 at `page`.
fn unregister_arg(w: &World, page: u64, cookie: u64) -> SmcRegs {
    let p = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
    write_arg(w, page, OPTEE_MSG_CMD_UNREGISTER_SHM, p)
}

fn write_arg(w: &World, page: u64, command: u32, p: MsgParam) -> SmcRegs {
    let mut h = header(command);
    h.num_params.set(1);
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(p.as_bytes());
    w.mem.write(page, &bytes);
    SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[page >> 32, page & 0xffff_ffff])
}

/// The result code the core wrote into the arg at `page`.
fn arg_ret(w: &World, page: u64) -> u32 {
    let mut ret = [0u8; 4];
    w.mem.read(page + 20, &mut ret);
    u32::from_le_bytes(ret)
}

/// Slots of register and unregister args written once and used in turn.
const SLOTS: usize = 64;

/// P2: a registration and its unregistration of `n` scattered pages through the SMC front end
/// (`CALL_WITH_ARG`, args written beforehand by the normal world), beside the OP-TEE model
/// doing the same two steps on the same list, side by side; then the secure memory kept per
/// page (computed: the core's charge and the model's type sizes).
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
        let buf = w.buffer(n * PAGE, 0);
        let (buf_ptr, _) = w.page_list(&buf);
        // 64 one-page buffers registered beforehand on both sides.
        let mut model = OpteeModel::new();
        let small = w.buffer(PAGE, 0);
        for c in 0..64 {
            assert_eq!(w.register(GuestId::HYPERVISOR, 1 + c, &small), TEE_SUCCESS);
            let (small_ptr, _) = w.page_list(&small);
            assert!(model.register(&w.mem, small_ptr, PAGE, 1 + c));
        }
        let reg_pages = w.alloc_pages(SLOTS as u64);
        let unreg_pages = w.alloc_pages(SLOTS as u64);
        let calls: Vec<(SmcRegs, SmcRegs, u64)> = (0..SLOTS)
            .map(|k| {
                let cookie = 1_000_000 + k as u64;
                let reg = register_arg(&w, reg_pages[k], buf_ptr, buf.size, cookie);
                let unreg = unregister_arg(&w, unreg_pages[k], cookie);
                (reg, unreg, unreg_pages[k])
            })
            .collect();
        let mut slot = 0usize;
        let mut teeshm = |ops: u64| {
            for _ in 0..ops {
                let (reg, unreg, unreg_page) = calls[slot];
                slot = (slot + 1) % SLOTS;
                black_box(w.tee.handle_smc(reg));
                black_box(w.tee.handle_smc(unreg));
                // The unregister succeeds only if the register did (else its cookie is
                // unknown), and a failed unregister fails the slot's next register.
                assert_eq!(arg_ret(&w, unreg_page), TEE_SUCCESS, "{n} pages");
            }
        };
        let mut cookie = 2_000_000u64;
        let mut peer = |ops: u64| {
            for _ in 0..ops {
                cookie += 1;
                assert!(model.register(&w.mem, black_box(buf_ptr), buf.size, cookie));
                assert!(model.unregister(black_box(cookie)));
            }
        };
        // The stages of a 1-page registration's fixed cost, timed beside it: the SMC alone (a
        // fast call), a yielding call that does nothing (a message of an unknown command: a
        // thread, the arg read and written back), and an unregister of an unknown cookie (that
        // and a cookie lookup).
        let empty_page = w.alloc_page();
        let empty = write_arg(
            &w,
            empty_page,
            0xdead,
            MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, 0)),
        );
        let unknown_page = w.alloc_page();
        let unknown = unregister_arg(&w, unknown_page, 7_000_000);
        let fast = SmcRegs::call(OPTEE_SMC_CALLS_COUNT, &[]);
        let mut fast_call = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(black_box(fast)));
            }
        };
        let mut empty_call = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(empty));
                assert_eq!(arg_ret(&w, empty_page), TEE_ERROR_NOT_IMPLEMENTED);
            }
        };
        let mut unknown_unregister = |ops: u64| {
            for _ in 0..ops {
                black_box(w.tee.handle_smc(unknown));
                assert_eq!(arg_ret(&w, unknown_page), TEE_ERROR_BAD_PARAMETERS);
            }
        };
        let stats = if n == 1 {
            ns_per_op_side_by_side(
                budget,
                &mut [
                    &mut teeshm,
                    &mut peer,
                    &mut fast_call,
                    &mut empty_call,
                    &mut unknown_unregister,
                ],
            )
        } else {
            ns_per_op_side_by_side(budget, &mut [&mut teeshm, &mut peer])
        };
        for (stage, what, st) in [
            (
                "smc",
                "a fast call (CALLS_COUNT) through Tee::handle_smc",
                stats.get(2),
            ),
            (
                "call",
                "a yielding call of an unknown message command (thread, arg read and written back)",
                stats.get(3),
            ),
            (
                "unregister_unknown",
                "UNREGISTER_SHM of an unknown cookie (a call and a cookie lookup)",
                stats.get(4),
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
        let (ours, theirs) = (per_page(&stats[0]), per_page(&stats[1]));
        let peer_name = "model of OP-TEE's registration, register + unregister (no SMC front end)";
        let (goal, met, note) = if n == 1 {
            (
                "≤ 4 × peer",
                ours.median <= 4.0 * theirs.median,
                "the fixed cost of two calls (thread, arg copy, list page, object, cookie table); the model has no front end",
            )
        } else {
            ("≤ peer", ours.median <= theirs.median, "")
        };
        let mut f = figure(
            &format!("P2.register.{n}"),
            &format!(
                "REGISTER_SHM + UNREGISTER_SHM of {n} scattered pages through the SMC front end, per page"
            ),
            ours.median,
            "ns/page",
            Some((theirs.median, peer_name)),
            Some((ours.median / theirs.median, "teeshm / peer")),
            goal,
            Some(met),
            note,
        );
        f.spread = Some(ours.spread());
        f.peers = vec![(peer_name.into(), theirs.median)];
        f.peers_spread = vec![(peer_name.into(), theirs.spread())];
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
