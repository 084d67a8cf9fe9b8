//! Figures of one guest's calls into the core: P2 registration cost and memory per page, P4
//! repeat invoke of 1 MiB vs 4 KiB.

use super::{Budget, Figure, figure, ns_per_op};
use crate::peers::OpteeModel;
use std::hint::black_box;
use std::time::{Duration, Instant};
use teeshm_abi::GuestId;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::*;
use teeshm_abi::smc::OPTEE_SMC_CALL_WITH_ARG;
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
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.num_params.set(1);
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(p.as_bytes());
    w.mem.write(page, &bytes);
    SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[page >> 32, page & 0xffff_ffff])
}

pub(super) fn p2(budget: Budget, out: &mut Vec<Figure>) {
    for n in [1u64, 256, 16_384] {
        // A batch of 64 buffers of 16384 pages is 1M registered pages: over the default quota.
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
        let arg_pages = w.alloc_pages(64);
        let mut cookie = 1_000_000u64;
        // teeshm: batches of 64 registers timed, the unregisters not.
        let mut total = Duration::ZERO;
        let mut count = 0u64;
        let end = Instant::now() + budget.per_figure;
        while Instant::now() < end || count < 64 {
            let regs: Vec<SmcRegs> = arg_pages
                .iter()
                .map(|&p| {
                    cookie += 1;
                    register_arg(&w, p, buf_ptr, buf.size, cookie)
                })
                .collect();
            let t = Instant::now();
            for r in &regs {
                black_box(w.tee.handle_smc(*r));
            }
            total += t.elapsed();
            for &p in &arg_pages {
                let mut ret = [0u8; 4];
                w.mem.read(p + 20, &mut ret);
                assert_eq!(
                    u32::from_le_bytes(ret),
                    TEE_SUCCESS,
                    "register for {n} pages"
                );
            }
            count += regs.len() as u64;
            for c in cookie - 63..=cookie {
                assert_eq!(w.unregister(GuestId::HYPERVISOR, c), TEE_SUCCESS);
            }
        }
        let teeshm = total.as_nanos() as f64 / count as f64 / n as f64;
        // The model, on the same list.
        let mut model = OpteeModel::new();
        for c in 0..64 {
            model.register(&w.mem, buf_ptr, PAGE, u64::MAX - c);
        }
        let peer = ns_per_op(budget, || {
            cookie += 1;
            assert!(model.register(&w.mem, buf_ptr, buf.size, cookie));
            model.unregister(cookie);
        }) / n as f64;
        let goal_met = (n == 16_384).then_some(teeshm <= 5.0);
        out.push(figure(
            &format!("P2.register.{n}"),
            &format!("REGISTER_SHM of {n} scattered pages through the SMC front end, per page"),
            teeshm,
            "ns/page",
            Some((peer, "model of OP-TEE's registration (no SMC front end)")),
            Some((teeshm / peer, "teeshm / peer")),
            if n == 16_384 { "≤ 5 ns/page" } else { "" },
            goal_met,
            if n < 16_384 {
                "the fixed cost of a call (thread, arg copy, list-page mapping) dominates"
            } else {
                ""
            },
        ));
        // Memory kept.
        let before = w
            .tee
            .guest(GuestId::HYPERVISOR)
            .unwrap()
            .counters()
            .secure_bytes();
        let r = w.register(GuestId::HYPERVISOR, 42, &buf);
        assert_eq!(r, TEE_SUCCESS);
        let after = w
            .tee
            .guest(GuestId::HYPERVISOR)
            .unwrap()
            .counters()
            .secure_bytes();
        let per_page = (after - before) as f64 / n as f64;
        let model_per_page = OpteeModel::object_bytes(n) as f64 / n as f64;
        out.push(figure(
            &format!("P2.bytes.{n}"),
            &format!("secure memory kept per registered page, {n}-page buffer"),
            per_page,
            "B/page",
            Some((model_per_page, "OP-TEE's mobj_reg_shm (8 B/page + object)")),
            Some((per_page / model_per_page, "teeshm / peer")),
            if n >= 256 { "≤ 8.5 B/page" } else { "" },
            (n >= 256).then_some(per_page <= 8.5),
            if n == 1 {
                "a one-page buffer is its fixed object size; no design gets under 8.5 B there"
            } else {
                "4 B a page: 32-bit frame numbers below 16 TiB"
            },
        ));
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
    let small = ns_per_op(budget, || touch(&w, g, s, 1, 4096));
    let big = ns_per_op(budget, || touch(&w, g, s, 2, 1 << 20));
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
    let uncached = ns_per_op(budget, || {
        k += 1;
        touch(&u, g, us, 1 + k % 2, 1 << 20);
    });
    out.push(figure(
        "P4",
        "repeat INVOKE (TOUCH first and last byte) with a 1 MiB registered memref, over a 4 KiB one",
        big / small,
        "×",
        Some((uncached / small, "1 MiB remapped on every call (OP-TEE's way), over 4 KiB")),
        Some((big / small, "1 MiB / 4 KiB")),
        "≤ 1.2",
        Some(big / small <= 1.2),
        &format!("4 KiB: {small:.0} ns, 1 MiB cached: {big:.0} ns, 1 MiB remapped: {uncached:.0} ns per call"),
    ));
}
