//! Figures of the memory manager alone: P1 VA window alloc+free, P3 map and unmap per page
//! and TLB requests per unmap, P5 phys_to_virt.

use super::{Budget, Figure, Series, figure, ns_per_op};
use crate::fixtures;
use crate::peers::FirstFitList;
use std::hint::black_box;
use teeshm_abi::GuestId;
use teeshm_mm::{
    MemKind, PAGE_SIZE, PhysAddr, ShmWindow, TranslationTables, VaWindow, VaWindowConfig, VirtAddr,
    VirtPages,
};
use teeshm_platform::{RecordingTlb, TlbRequest};

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

pub(super) fn p1(budget: Budget, quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
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

pub(super) fn p3(budget: Budget, out: &mut Vec<Figure>) {
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

pub(super) fn p5(budget: Budget, quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
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
