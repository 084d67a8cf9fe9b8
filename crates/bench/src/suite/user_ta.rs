//! P9: a user TA's invoke with a 1 MiB registered memref over a 4 KiB one, beside OP-TEE's way
//! of mapping memref parameters (every page of every memref into the TA on every invocation).

use super::{Budget, Figure, Stats, figure, ratio_stats, rounds_side_by_side};
use crate::peers::OpteeParamMapModel;
use teeshm_abi::GuestId;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::{OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT};
use teeshm_core::CoreConfig;
use teeshm_mm::PhysAddr;
use teeshm_ta::memtest::{UUID as MEMTEST_TA, cmd};
use teeshm_testkit::msg::{rmem, value};
use teeshm_testkit::world::World;

/// The two buffers: (cookie, bytes, first byte, last byte).
const SMALL: (u64, u64, u8, u8) = (1, 4096, 0xa5, 0x5a);
const BIG: (u64, u64, u8, u8) = (2, 1 << 20, 0x3c, 0xc3);

/// `INVOKE_COMMAND` of the memtest user TA's TOUCH on the whole registered buffer `buf`
/// (p0 `RMEM_INPUT`, p1 value output) through the SMC front end (`CALL_WITH_RPC_ARG`); checks
/// that the TA read the buffer's first and last byte through its mapping.
fn touch(w: &World, g: GuestId, session: u32, buf: (u64, u64, u8, u8)) {
    let (cookie, size, first, last) = buf;
    let r = w.invoke(
        g,
        session,
        cmd::TOUCH,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(
        r.ret(),
        TEE_SUCCESS,
        "TOUCH of {size} bytes: {:#x}",
        r.ret()
    );
    assert_eq!(
        r.value(1)[..2],
        [u64::from(first), u64::from(last)],
        "TOUCH read the buffer's first and last byte"
    );
}

/// How the peer is built, for its figures' names.
const PEER: &str = "OP-TEE's way, composed: every page of the memref mapped into a TA's tables before teeshm's measured 4 KiB invoke and unmapped after it (vm_map_param / vm_clean_param, modelled: OpteeParamMapModel), the three timed together";

/// P9. teeshm: the same TA session invoked with TOUCH on a registered 4 KiB buffer and on a
/// registered 1 MiB one, through the SMC front end; the core maps a memref's pages into the TA
/// lazily, on its first touch of each (TOUCH touches two pages of the 1 MiB buffer, one of the
/// 4 KiB one). Peer, in the same rounds: OP-TEE maps every page of every memref into the TA on
/// every invocation, and unmaps them all after it. The core has no such mode; the peer is
/// composed: [`OpteeParamMapModel`] maps all of the buffer's pages (1 or 256) into user tables
/// built as the core builds a TA's, then teeshm's 4 KiB invoke runs, then the model unmaps —
/// the three timed together, for each size. The model alone is timed beside them too.
pub(super) fn p9(budget: Budget, out: &mut Vec<Figure>) {
    let g = GuestId::HYPERVISOR;
    let w = World::with_user_tas(CoreConfig::default());
    let r = w.open_session_uuid(g, MEMTEST_TA);
    assert_eq!(
        r.ret(),
        TEE_SUCCESS,
        "open the memtest user TA: {:#x}",
        r.ret()
    );
    let s = r.header.session.get();
    let mut pages_of = Vec::new();
    for buf @ (cookie, size, first, last) in [SMALL, BIG] {
        let b = w.buffer(size, 0);
        w.write_buf(&b, 0, &[first]);
        w.write_buf(&b, size - 1, &[last]);
        assert_eq!(w.register(g, cookie, &b), TEE_SUCCESS);
        pages_of.push(b.pages.iter().map(|&p| PhysAddr(p)).collect::<Vec<_>>());
        // Warm-up: the TA's instance, its tables and the call path are built.
        touch(&w, g, s, buf);
    }
    let (small_pages, big_pages) = (&pages_of[0], &pages_of[1]);
    assert_eq!((small_pages.len(), big_pages.len()), (1, 256));
    // The model's tables, one TA's for each size, under ASIDs no TA has (they are never made
    // current).
    let mut model_small = OpteeParamMapModel::new(u16::MAX);
    let mut model_big = OpteeParamMapModel::new(u16::MAX - 1);
    let eager = |model: &mut OpteeParamMapModel, pages: &[PhysAddr]| {
        let range = model.map(pages);
        touch(&w, g, s, SMALL);
        model.unmap(range);
    };
    let rounds = rounds_side_by_side(
        budget,
        &mut [
            &mut |n| (0..n).for_each(|_| touch(&w, g, s, SMALL)),
            &mut |n| (0..n).for_each(|_| touch(&w, g, s, BIG)),
            &mut |n| (0..n).for_each(|_| eager(&mut model_small, small_pages)),
            &mut |n| (0..n).for_each(|_| eager(&mut model_big, big_pages)),
        ],
    );
    // The model's work alone, in rounds of its own (what the peer adds to teeshm's invoke).
    let alone = |model: &mut OpteeParamMapModel, pages: &[PhysAddr], n: u64| {
        for _ in 0..n {
            let range = model.map(std::hint::black_box(pages));
            model.unmap(range);
        }
    };
    let mut model_1 = |n| alone(&mut model_small, small_pages, n);
    let mut model_256 = |n| alone(&mut model_big, big_pages, n);
    let model_rounds = rounds_side_by_side(budget, &mut [&mut model_1, &mut model_256]);
    let [small_r, big_r, peer_small_r, peer_big_r] = &rounds[..] else {
        unreachable!("four functions measured")
    };
    let [model_1, model_256] = [&model_rounds[0], &model_rounds[1]].map(|r| Stats::of(r.clone()));
    let [small, big, peer_small, peer_big] =
        [small_r, big_r, peer_small_r, peer_big_r].map(|r| Stats::of(r.clone()));
    let ratio = ratio_stats(big_r, small_r);
    let peer_ratio = ratio_stats(peer_big_r, peer_small_r);
    let peer_ratio_name = format!("{PEER}; `peer` is its ratio 1 MiB / 4 KiB, not ns");
    let mut f = figure(
        "P9",
        "repeat INVOKE of a user TA (TOUCH: first and last byte) with a 1 MiB registered memref, ns per invoke; ratio over a 4 KiB memref",
        big.median,
        "ns",
        Some((peer_ratio.median, &peer_ratio_name)),
        Some((ratio.median, "1 MiB / 4 KiB (median of each round's ratio)")),
        "ratio ≤ 1.2",
        Some(ratio.median <= 1.2),
        &format!(
            "teeshm: 4 KiB {:.0} ns [{:.0}–{:.0}], 1 MiB {:.0} ns [{:.0}–{:.0}], ratio {:.3} [{:.3}–{:.3}]; peer: 4 KiB {:.0} ns [{:.0}–{:.0}], 1 MiB {:.0} ns [{:.0}–{:.0}], ratio {:.3} [{:.3}–{:.3}] ({} rounds; a ratio's spread is of each round's ratio). TOUCH faults in 1 page of the 4 KiB memref and 2 of the 1 MiB one",
            small.median,
            small.min,
            small.max,
            big.median,
            big.min,
            big.max,
            ratio.median,
            ratio.min,
            ratio.max,
            peer_small.median,
            peer_small.min,
            peer_small.max,
            peer_big.median,
            peer_big.min,
            peer_big.max,
            peer_ratio.median,
            peer_ratio.min,
            peer_ratio.max,
            small_r.len(),
        ),
    );
    f.spread = Some(big.spread());
    f.peers_spread = vec![("OP-TEE's way, composed: ratio".into(), peer_ratio.spread())];
    out.push(f);

    for (id, what, ours, peer) in [
        ("P9.4k", "4 KiB", small, peer_small),
        ("P9.1m", "1 MiB", big, peer_big),
    ] {
        let mut f = figure(
            id,
            &format!(
                "INVOKE of a user TA (TOUCH) with a {what} registered memref through the SMC front end, ns per invoke"
            ),
            ours.median,
            "ns",
            Some((peer.median, &format!("{PEER}; {what} memref"))),
            Some((ours.median / peer.median, "teeshm / peer")),
            "",
            None,
            "",
        );
        f.spread = Some(ours.spread());
        f.peers_spread = vec![(format!("OP-TEE's way, composed: {what}"), peer.spread())];
        out.push(f);
    }
    for (id, pages, st) in [("P9.model.1", 1, model_1), ("P9.model.256", 256, model_256)] {
        let mut f = figure(
            id,
            &format!(
                "the peer's model alone: map + unmap of a {pages}-page memref in a TA's tables (what OP-TEE's way adds to an invoke), ns"
            ),
            st.median,
            "ns",
            None,
            None,
            "",
            None,
            "measured in rounds of its own, after P9's; generous to OP-TEE: one descriptor walk for the range, the TLBIs only counted (see OpteeParamMapModel)",
        );
        f.spread = Some(st.spread());
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// P9's entries have the suite's shape: ids, units, a measured spread ordered min ≤ median
    /// ≤ max around the value, P9's ratio and peer, and a goal judged.
    #[test]
    fn p9_entries_have_the_suite_shape() {
        let mut out = Vec::new();
        p9(
            Budget {
                per_figure: Duration::from_millis(2),
            },
            &mut out,
        );
        let ids: Vec<&str> = out.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["P9", "P9.4k", "P9.1m", "P9.model.1", "P9.model.256"]);
        for f in &out {
            assert_eq!(f.kind, "measured", "{}", f.id);
            assert_eq!(f.unit, "ns", "{}", f.id);
            let [min, median, max] = f.spread.expect("a spread");
            assert!(0.0 < min && min <= median && median <= max, "{}", f.id);
            assert_eq!(median, f.value, "{}", f.id);
        }
        let p9 = &out[0];
        let (ratio, peer) = (p9.ratio.unwrap(), p9.peer.unwrap());
        assert!(ratio.is_finite() && ratio > 0.0 && peer.is_finite() && peer > 0.0);
        assert_eq!(p9.met, Some(ratio <= 1.2));
        for f in &out[..3] {
            assert!(
                f.peer.is_some_and(|p| p > 0.0) && f.ratio.is_some(),
                "{}",
                f.id
            );
            assert_eq!(f.peers_spread.len(), 1, "{}", f.id);
            let [min, median, max] = f.peers_spread[0].1;
            assert!(0.0 < min && min <= median && median <= max, "{}", f.id);
        }
        assert_eq!(out[2].value, p9.value, "P9.1m is P9's value");
    }
}
