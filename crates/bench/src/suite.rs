//! The figures of `teeshm bench`, each measured beside its peer in the same run.

use crate::fixtures;
use crate::peers::{FirstFitList, OpteeModel};
use serde::Serialize;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use teeshm_abi::GuestId;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::*;
use teeshm_abi::smc::{OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_RETURN_OK, split_pair};
use teeshm_core::pta::cmd;
use teeshm_core::{CoreConfig, GuestQuotas, SmcRegs};
use teeshm_mm::{
    MemKind, PAGE_SIZE, PhysAddr, ShmWindow, TranslationTables, VaWindow, VaWindowConfig, VirtAddr,
    VirtPages,
};
use teeshm_platform::{RecordingTlb, TlbRequest};
use teeshm_testkit::msg::{arg_bytes, header, rmem, value};
use teeshm_testkit::world::{PAGE, World};
use zerocopy::IntoBytes;

/// One figure of the suite.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Id, e.g. `P1.10k`.
    pub id: String,
    /// What is measured.
    pub title: String,
    /// teeshm's value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The peer's value, measured in the same run.
    pub peer: Option<f64>,
    /// What the peer is.
    pub peer_name: String,
    /// The ratio the goal is stated in (see `ratio_meaning`).
    pub ratio: Option<f64>,
    /// How the ratio is formed.
    pub ratio_meaning: String,
    /// The goal.
    pub goal: String,
    /// Whether the goal is met (`None`: no goal for this line).
    pub met: Option<bool>,
    /// Why, when it is missed, or anything else worth knowing.
    pub note: String,
}

/// Points of a growth plot: (input size, teeshm, peer).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Id of the plot (`P1`, `P5`, `P6`).
    pub id: String,
    /// (x, teeshm value, peer value).
    pub points: Vec<(f64, f64, f64)>,
}

#[allow(clippy::too_many_arguments)]
fn figure(
    id: &str,
    title: &str,
    value: f64,
    unit: &str,
    peer: Option<(f64, &str)>,
    ratio: Option<(f64, &str)>,
    goal: &str,
    met: Option<bool>,
    note: &str,
) -> Figure {
    Figure {
        id: id.into(),
        title: title.into(),
        value,
        unit: unit.into(),
        peer: peer.map(|p| p.0),
        peer_name: peer.map_or(String::new(), |p| p.1.into()),
        ratio: ratio.map(|r| r.0),
        ratio_meaning: ratio.map_or(String::new(), |r| r.1.into()),
        goal: goal.into(),
        met,
        note: note.into(),
    }
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
struct Budget {
    per_figure: Duration,
}

/// Nanoseconds per call of `f`: batches sized to ~1/10 of the budget, the median of them.
fn ns_per_op(budget: Budget, mut f: impl FnMut()) -> f64 {
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() > budget.per_figure / 20 || batch > 1 << 30 {
            break;
        }
        batch *= 2;
    }
    let mut samples = Vec::new();
    let end = Instant::now() + budget.per_figure;
    while samples.len() < 5 || (Instant::now() < end && samples.len() < 21) {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        samples.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    median(samples)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---- P1 -------------------------------------------------------------------------------------

fn size_of_range(i: u64) -> u64 {
    1 + (i * 5 + i / 3) % 8
}

/// (teeshm ns, first-fit ns, range-alloc ns) per alloc+free with `live` packed live ranges.
fn p1_point(budget: Budget, live: u64) -> (f64, f64, f64) {
    let pages = live * 9 + 4096;
    let mut w = VaWindow::new(VaWindowConfig {
        base: VirtAddr(0x10_0000_0000),
        size: pages * PAGE_SIZE,
        guard_pages: 0,
    })
    .unwrap();
    let mut blocks = Vec::new();
    let mut at = 0;
    for i in 0..live {
        let s = size_of_range(i);
        w.alloc(s, PAGE_SIZE).unwrap();
        blocks.push((at, s));
        at += s;
    }
    let mut i = 0u64;
    let teeshm = ns_per_op(budget, || {
        i += 1;
        let r = w.alloc(black_box(size_of_range(i)), PAGE_SIZE).unwrap();
        w.free(r.start()).unwrap();
    });
    let mut list = FirstFitList::with_blocks(pages, blocks.iter().copied());
    let peer = ns_per_op(budget, || {
        i += 1;
        let at = list.alloc(black_box(size_of_range(i))).unwrap();
        list.free(at);
    });
    let mut ra = range_alloc::RangeAllocator::new(0..pages);
    for i in 0..live {
        ra.allocate_range(size_of_range(i)).unwrap();
    }
    let range_alloc = ns_per_op(budget, || {
        i += 1;
        let r = ra.allocate_range(black_box(size_of_range(i))).unwrap();
        ra.free_range(r);
    });
    (teeshm, peer, range_alloc)
}

fn p1(budget: Budget, quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
    let sizes: &[u64] = if quick {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000, 3_000, 10_000, 30_000, 100_000]
    };
    let mut s = Series {
        id: "P1".into(),
        ..Series::default()
    };
    let mut at = std::collections::BTreeMap::new();
    for &live in sizes {
        let (t, p, r) = p1_point(budget, live);
        s.points.push((live as f64, t, p));
        at.insert(live, t);
        if [1_000, 10_000, 100_000].contains(&live) {
            let goal = if live == 10_000 {
                "≥ 30× the first-fit list"
            } else {
                ""
            };
            out.push(figure(
                &format!("P1.{}k", live / 1000),
                &format!("VA window alloc+free, {live} live ranges (packed)"),
                t,
                "ns",
                Some((p, "first-fit sorted list (OP-TEE tee_mm)")),
                Some((p / t, "peer / teeshm (speed-up)")),
                goal,
                (live == 10_000).then_some(p / t >= 30.0),
                &format!(
                    "range-alloc 0.1 (best fit over a sorted vector) in the same run: {r:.1} ns"
                ),
            ));
        }
    }
    let growth = at[&100_000] / at[&1_000];
    out.push(figure(
        "P1.growth",
        "VA window alloc+free at 100k live ranges over 1k",
        growth,
        "×",
        None,
        None,
        "≤ 2",
        Some(growth <= 2.0),
        "logarithmic: two ordered trees",
    ));
    series.push(s);
}

// ---- P2 -------------------------------------------------------------------------------------

/// Writes a REGISTER_SHM arg for guest 0 at `page`.
fn register_arg(w: &World, page: u64, buf_ptr: u64, size: u64, cookie: u64) -> SmcRegs {
    let p = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    );
    w.mem
        .write(page, &arg_bytes(header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]));
    let (hi, lo) = split_pair(page);
    SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo])
}

fn p2(budget: Budget, out: &mut Vec<Figure>) {
    for n in [1u64, 256, 16_384] {
        // A batch of 64 buffers of 16384 pages is 1M registered pages: over the default quota.
        let w = World::new(CoreConfig {
            quotas: GuestQuotas {
                max_registered_pages: 1 << 24,
                ..GuestQuotas::default()
            },
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

// ---- P3 -------------------------------------------------------------------------------------

fn scattered(n: u64, seed: u64) -> Vec<PhysAddr> {
    let mut x = seed | 1;
    fixtures::scattered(n, || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

fn window(pages: u64) -> ShmWindow<RecordingTlb> {
    fixtures::window(pages, RecordingTlb::new())
}

fn p3(budget: Budget, out: &mut Vec<Figure>) {
    for n in [64u64, 4096] {
        let pages = scattered(n, 0x9e37_79b9 ^ n);
        let range = VirtPages::new(VirtAddr(0x10_0000_0000), n).unwrap();
        // teeshm's tables: one map of the whole scattered list, one unmap (one TLB request).
        let mut t = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let teeshm = ns_per_op(budget, || {
            t.map_pages(range, black_box(&pages), MemKind::NonSecureShared)
                .unwrap();
            t.unmap(black_box(range));
        }) / n as f64;
        // Peer: OP-TEE's core_mmu_map_pages walks to each page's entry on its own; modelled as
        // one table map and one unmap per page (each unmap with its TLB request).
        let mut p = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let single =
            |i: usize| VirtPages::new(VirtAddr(0x10_0000_0000 + i as u64 * PAGE_SIZE), 1).unwrap();
        let peer = ns_per_op(budget, || {
            for (i, &pa) in pages.iter().enumerate() {
                p.map_pages(single(i), &[pa], MemKind::NonSecureShared)
                    .unwrap();
            }
            for i in 0..pages.len() {
                p.unmap(single(i));
            }
        }) / n as f64;
        // The whole window (VA allocation, records, reverse map) for the note.
        let mut w = window(1 << 16);
        let whole = ns_per_op(budget, || {
            let r = w
                .map(GuestId(1), black_box(&pages), MemKind::NonSecureShared)
                .unwrap();
            w.unmap(r.start()).unwrap();
        }) / n as f64;
        out.push(figure(
            &format!("P3.map_unmap.{n}"),
            &format!("map + unmap of {n} scattered pages in the translation tables, per page"),
            teeshm,
            "ns/page",
            Some((peer, "page-by-page map and unmap (OP-TEE's core_mmu_map_pages)")),
            Some((peer / teeshm, "peer / teeshm (speed-up)")),
            "≤ 30 ns/page",
            Some(teeshm <= 30.0),
            &format!(
                "through the whole window (VA allocation, mapping record, reverse map): {whole:.1} ns/page"
            ),
        ));
        if n == 4096 {
            let mut w = window(1 << 16);
            let r = w.map(GuestId(1), &pages, MemKind::NonSecureShared).unwrap();
            w.tlb_mut().clear();
            w.unmap(r.start()).unwrap();
            let requests = w
                .tlb_mut()
                .requests()
                .iter()
                .filter(|q| matches!(q, TlbRequest::Pages { .. } | TlbRequest::All))
                .count() as f64;
            out.push(figure(
                "P3.tlb",
                "TLB maintenance requests per unmap of a 4096-page mapping",
                requests,
                "requests",
                Some((n as f64, "one per page when pages are unmapped singly")),
                None,
                "1",
                Some(requests <= 1.0),
                "",
            ));
        }
    }
}

// ---- P4 -------------------------------------------------------------------------------------

fn touch(w: &World, g: GuestId, s: u32, cookie: u64, size: u64) {
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

fn p4(budget: Budget, out: &mut Vec<Figure>) {
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

// ---- P5 -------------------------------------------------------------------------------------

fn p5_point(budget: Budget, live: u64) -> (f64, f64) {
    let mut w = window(live * 2 + 4096);
    let mut records: Vec<(VirtPages, Vec<PhysAddr>)> = Vec::new();
    let mut mapped = Vec::new();
    for chunk in 0..live / 64 {
        let pages = scattered(64, 0x2545_f491 ^ (chunk * 7919 + live));
        let r = w.map(GuestId(1), &pages, MemKind::NonSecureShared).unwrap();
        mapped.extend(pages.iter().copied());
        records.push((r, pages));
    }
    let mut q = 0usize;
    let teeshm = ns_per_op(budget, || {
        q = (q + 7919) % mapped.len();
        black_box(w.phys_to_virt(
            black_box(PhysAddr(mapped[q].get() + 0x10)),
            Some(GuestId(1)),
        ));
    });
    let peer = ns_per_op(budget, || {
        q = (q + 7919) % mapped.len();
        let pa = mapped[q];
        let found = records.iter().find_map(|(r, pages)| {
            pages
                .iter()
                .position(|&p| p == pa)
                .map(|i| r.start().get() + i as u64 * PAGE_SIZE + 0x10)
        });
        black_box(found);
    });
    (teeshm, peer)
}

fn p5(budget: Budget, quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
    let sizes: &[u64] = if quick {
        &[1_024, 102_400]
    } else {
        &[1_024, 10_240, 102_400]
    };
    let mut s = Series {
        id: "P5".into(),
        ..Series::default()
    };
    for &live in sizes {
        let (t, p) = p5_point(budget, live);
        s.points.push((live as f64, t, p));
        if live == 1_024 || live == 102_400 {
            out.push(figure(
                &format!("P5.{}k", live / 1024),
                &format!("phys_to_virt with {live} mapped pages"),
                t,
                "ns",
                Some((p, "scan of the mapping records (no reverse map, as OP-TEE)")),
                Some((p / t, "peer / teeshm (speed-up)")),
                "≤ 100 ns",
                Some(t <= 100.0),
                "",
            ));
        }
    }
    series.push(s);
}

// ---- P6 -------------------------------------------------------------------------------------

const BUFFERS: u64 = 1000;
const BUFFER_PAGES: u64 = 64;

fn fill_guest(w: &World, guest: u16, arg_page: u64, buf_ptr: u64) {
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.num_params.set(1);
    for cookie in 1..=BUFFERS {
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, BUFFER_PAGES * PAGE, cookie),
        );
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(p.as_bytes());
        w.mem.write(arg_page, &bytes);
        let o = w.smc(GuestId(guest), OPTEE_SMC_CALL_WITH_ARG, &[0, arg_page]);
        assert_eq!(o.a[0] as u32, OPTEE_SMC_RETURN_OK);
    }
}

/// Median time to destroy a guest of 1000 × 64-page buffers beside `others` guests holding the
/// same (the others also hold a mapped, cached buffer each: they are busy).
fn p6_point(rounds: usize, others: u16) -> f64 {
    let w = World::default_world();
    let buf = w.buffer(BUFFER_PAGES * PAGE, 0);
    let (buf_ptr, _) = w.page_list(&buf);
    let arg = w.alloc_page();
    for g in 1..=others {
        assert_eq!(w.create_guest(g), 0);
        fill_guest(&w, g, arg, buf_ptr);
        let s = w.open_session(GuestId(g));
        touch(&w, GuestId(g), s, 1, BUFFER_PAGES * PAGE);
    }
    const VICTIM: u16 = 100;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        assert_eq!(w.create_guest(VICTIM), 0);
        fill_guest(&w, VICTIM, arg, buf_ptr);
        let t = Instant::now();
        w.destroy_guest(VICTIM);
        samples.push(t.elapsed().as_nanos() as f64);
    }
    median(samples)
}

fn p6(quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
    let rounds = if quick { 5 } else { 15 };
    let counts: &[u16] = if quick { &[0, 63] } else { &[0, 7, 31, 63] };
    let mut s = Series {
        id: "P6".into(),
        ..Series::default()
    };
    let mut alone = 0.0;
    for &others in counts {
        let t = p6_point(rounds, others);
        if others == 0 {
            alone = t;
        }
        s.points.push((f64::from(others) + 1.0, t, alone));
    }
    let beside = s.points.last().map_or(0.0, |p| p.1);
    out.push(figure(
        "P6",
        "VM_DESTROYED of a guest with 1000 buffers × 64 pages, beside 63 busy guests, over alone",
        beside / alone,
        "×",
        Some((alone, "the same destroy with no other guest (ns)")),
        Some((beside / alone, "beside / alone")),
        "≤ 1.2",
        Some(beside / alone <= 1.2),
        &format!(
            "alone {:.0} µs, beside 63 {:.0} µs",
            alone / 1e3,
            beside / 1e3
        ),
    ));
    series.push(s);
}

// ---- P7 -------------------------------------------------------------------------------------

fn p7(out: &mut Vec<Figure>) {
    const GUESTS: u16 = 64;
    const PER_GUEST: u64 = 16_384;
    const BUF_PAGES: u64 = 1024;
    let w = World::default_world();
    let buf = w.buffer(BUF_PAGES * PAGE, 0);
    let (buf_ptr, _) = w.page_list(&buf);
    let arg = w.alloc_page();
    let t = Instant::now();
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.num_params.set(1);
    for g in 1..=GUESTS {
        assert_eq!(w.create_guest(g), 0);
        for cookie in 0..PER_GUEST / BUF_PAGES {
            let p = MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                Tmem::new(buf_ptr, BUF_PAGES * PAGE, cookie),
            );
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(p.as_bytes());
            w.mem.write(arg, &bytes);
            let o = w.smc(GuestId(g), OPTEE_SMC_CALL_WITH_ARG, &[0, arg]);
            assert_eq!(o.a[0] as u32, OPTEE_SMC_RETURN_OK);
        }
    }
    let took = t.elapsed();
    let snaps = w.tee.snapshots();
    let pages: u64 = snaps.iter().map(|s| s.registered_pages).sum();
    let bytes: u64 = snaps.iter().map(|s| s.secure_bytes).sum();
    let model = OpteeModel::object_bytes(BUF_PAGES) * (pages / BUF_PAGES);
    assert!(w.tee.check_agreement().is_empty());
    out.push(figure(
        "P7",
        "registered pages held at once by 64 guests (16 buffers × 1024 pages each)",
        pages as f64,
        "pages",
        Some((model as f64 / pages as f64, "OP-TEE's bytes per page for the same (8 B + object)")),
        Some((bytes as f64 / pages as f64, "teeshm secure bytes per page")),
        "64 × 16384 pages held",
        Some(pages >= u64::from(GUESTS) * PER_GUEST),
        &format!(
            "{:.1} MiB of secure memory for {:.1} GiB of shared memory; built in {:.0} ms. OP-TEE's default of 2 guests would refuse guest 3",
            bytes as f64 / 1048576.0,
            (pages * PAGE) as f64 / (1u64 << 30) as f64,
            took.as_secs_f64() * 1e3
        ),
    ));
}

// ---- P8 -------------------------------------------------------------------------------------

/// Invokes per second on `threads` threads, each its own guest, through the whole simulated
/// system (driver, mediator, core).
fn p8_point(budget: Budget, threads: u16) -> f64 {
    use teeshm_nw::GuestBuffer;
    use teeshm_nw::client::{Operation, Param, ShmFlags};
    let system = Arc::new(
        teeshm_sim::System::new(teeshm_sim::SystemConfig {
            guests: threads,
            ..teeshm_sim::SystemConfig::default()
        })
        .unwrap(),
    );
    for g in 1..=threads {
        system.start_guest(g).unwrap();
    }
    let done = std::sync::atomic::AtomicU64::new(0);
    let end = Instant::now() + budget.per_figure * 2;
    std::thread::scope(|s| {
        for g in 1..=threads {
            let (system, done) = (&system, &done);
            s.spawn(move || {
                let guest = system.guest(g).unwrap();
                let mut ctx = guest.context();
                let session = ctx.open_session(teeshm_core::pta::MEMTEST_UUID).unwrap();
                let buf = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), 64 * 1024, 0).unwrap();
                let shm = ctx.register_shared_memory(buf, ShmFlags::INOUT).unwrap();
                let mut n = 0;
                while Instant::now() < end {
                    for _ in 0..64 {
                        let mut op = Operation::new([
                            Param::Whole(&shm),
                            Param::ValueOutput { a: 0, b: 0 },
                            Param::None,
                            Param::None,
                        ]);
                        ctx.invoke_command(&session, cmd::TOUCH, &mut op).unwrap();
                        n += 1;
                    }
                }
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    assert!(system.check().is_empty());
    done.into_inner() as f64 / (budget.per_figure * 2).as_secs_f64()
}

fn p8(budget: Budget, out: &mut Vec<Figure>) {
    let one = p8_point(budget, 1);
    for threads in [1u16, 2, 4] {
        let v = if threads == 1 {
            one
        } else {
            p8_point(budget, threads)
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ideal = f64::from(threads).min(cpus);
        out.push(figure(
            &format!("P8.{threads}"),
            &format!("invokes per second through driver, mediator and core, {threads} thread(s), one guest each"),
            v,
            "invokes/s",
            Some((one, "1 thread")),
            Some((v / one, "speed-up over 1 thread")),
            if threads == 1 {
                ""
            } else {
                "≥ 0.75 × min(threads, CPUs) speed-up"
            },
            (threads > 1).then_some(v / one >= 0.75 * ideal),
            &format!("this machine has {cpus} CPUs"),
        ));
    }
}

/// Runs the suite, or only the groups whose id (`P1`..`P8`) is in `only` when it is not empty.
/// `quick` finishes in under two minutes on a 2-core machine; `progress` is told each group as
/// it starts.
pub fn run(quick: bool, only: &[String], progress: &dyn Fn(&str)) -> (Vec<Figure>, Vec<Series>) {
    let budget = Budget {
        per_figure: if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(1500)
        },
    };
    let mut out = Vec::new();
    let mut series = Vec::new();
    let wanted = |id: &str, what: &str| {
        let yes = only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(id));
        if yes {
            progress(&format!("{id} {what}"));
        }
        yes
    };
    if wanted("P1", "VA window") {
        p1(budget, quick, &mut out, &mut series);
    }
    if wanted("P2", "registration") {
        p2(budget, &mut out);
    }
    if wanted("P3", "map and unmap") {
        p3(budget, &mut out);
    }
    if wanted("P4", "cached invoke") {
        p4(budget, &mut out);
    }
    if wanted("P5", "phys_to_virt") {
        p5(budget, quick, &mut out, &mut series);
    }
    if wanted("P6", "VM destroy") {
        p6(quick, &mut out, &mut series);
    }
    if wanted("P7", "largest system") {
        p7(&mut out);
    }
    if wanted("P8", "throughput") {
        p8(budget, &mut out);
    }
    (out, series)
}
