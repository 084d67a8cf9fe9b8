//! Figures of the memory manager alone: P1 VA window alloc+free, P3 map and unmap per page
//! and TLB requests per unmap, P5 phys_to_virt.

use super::{Budget, Figure, Series, Stats, figure, ns_per_op_side_by_side};
use crate::fixtures;
use crate::peers::{TeeMm, TeeMmHandle};
use std::hint::black_box;
use teeshm_abi::GuestId;
use teeshm_mm::{
    MemKind, PAGE_SIZE, PhysAddr, ShmWindow, TranslationTables, VaWindow, VaWindowConfig, VirtAddr,
    VirtPages,
};
use teeshm_platform::RecordingTlb;

// ---- P1 -------------------------------------------------------------------------------------

/// Pages of the setup ranges and of the measured requests: a fixed mix of 1 to 8 pages.
fn size_of_range(i: u64) -> u64 {
    1 + (i * 5 + i / 3) % 8
}

/// OP-TEE's SHM VA space (`SHM_VASPACE_SIZE` in core/mm/core_mmu.c): 32 MiB, 8192 pages.
const OPTEE_SHM_PAGES: u64 = 8192;

/// The states every allocator is measured in, each reached by the same requests:
/// - `Packed(n)`: n ranges allocated back to back, the free space one run after them;
/// - `Holes(n)`: 2n allocated back to back, then every other one freed: n holes of 1 to 8 pages
///   between n live ranges, and the rest of the window after them;
/// - `Optee32m(n)`: OP-TEE's 32 MiB window after a seeded random churn: allocations up to n
///   live ranges, then 4n rounds of one random free and one allocation, so the free space is
///   fragmented as a long-running window's is, each allocator by its own placement.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Packed(u64),
    Holes(u64),
    Optee32m(u64),
}

impl Layout {
    fn id(self) -> String {
        let n = |n: u64| {
            if n % 1000 == 0 {
                format!("{}k", n / 1000)
            } else {
                n.to_string()
            }
        };
        match self {
            Layout::Packed(l) => format!("P1.packed.{}", n(l)),
            Layout::Holes(l) => format!("P1.holes.{}", n(l)),
            Layout::Optee32m(l) => format!("P1.optee32m.{}", n(l)),
        }
    }

    fn title(self) -> String {
        match self {
            Layout::Packed(l) => {
                format!("VA window alloc+free, {l} live ranges packed, free space after them")
            }
            Layout::Holes(l) => {
                format!("VA window alloc+free, {l} live ranges with a 1-8 page hole after each")
            }
            Layout::Optee32m(l) => format!(
                "VA window alloc+free in OP-TEE's 32 MiB SHM VA space, {l} live ranges after random churn"
            ),
        }
    }

    /// Pages of the window.
    fn pages(self) -> u64 {
        match self {
            Layout::Packed(l) => l * 9 + 4096,
            Layout::Holes(l) => 2 * l * 9 + 4096,
            Layout::Optee32m(_) => OPTEE_SHM_PAGES,
        }
    }
}

/// One allocator under P1: alloc of `pages` → a handle, free of the handle.
/// Every implementation's `alloc` and `free` are `#[inline(always)]`, so that each allocator
/// is inlined alike into the loop that measures it.
trait RangeAlloc {
    type Handle;
    fn alloc(&mut self, pages: u64) -> Option<Self::Handle>;
    fn free(&mut self, handle: Self::Handle);

    /// Brings the allocator to `layout`; the number of live ranges it holds then.
    fn build(&mut self, layout: Layout) -> usize {
        let mut live = Vec::new();
        match layout {
            Layout::Packed(n) => live.extend((0..n).filter_map(|i| self.alloc(size_of_range(i)))),
            Layout::Holes(n) => {
                let all: Vec<Option<Self::Handle>> =
                    (0..2 * n).map(|i| self.alloc(size_of_range(i))).collect();
                for (i, h) in all.into_iter().enumerate() {
                    match h {
                        Some(h) if i % 2 == 0 => self.free(h),
                        Some(h) => live.push(h),
                        None => {}
                    }
                }
            }
            Layout::Optee32m(n) => {
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                let mut rng = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                while (live.len() as u64) < n {
                    match self.alloc(size_of_range(rng())) {
                        Some(h) => live.push(h),
                        None => break,
                    }
                }
                for _ in 0..4 * n {
                    if !live.is_empty() {
                        let victim = live.swap_remove((rng() % live.len() as u64) as usize);
                        self.free(victim);
                    }
                    live.extend(self.alloc(size_of_range(rng())));
                }
            }
        }
        live.len()
    }
}

struct Teeshm(VaWindow);

impl RangeAlloc for Teeshm {
    type Handle = VirtAddr;
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<VirtAddr> {
        self.0.alloc(pages, PAGE_SIZE).ok().map(|r| r.start())
    }
    #[inline(always)]
    fn free(&mut self, start: VirtAddr) {
        let _ = self.0.free(start);
    }
}

impl RangeAlloc for TeeMm {
    type Handle = TeeMmHandle;
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<TeeMmHandle> {
        TeeMm::alloc(self, pages)
    }
    #[inline(always)]
    fn free(&mut self, handle: TeeMmHandle) {
        TeeMm::free(self, handle);
    }
    /// Packed and holes are built as lists directly (the same areas first fit would give:
    /// back to back, the even ones freed), since `tee_mm_alloc` would take O(n²) to get there.
    fn build(&mut self, layout: Layout) -> usize {
        let areas = |n: u64, keep: &dyn Fn(u64) -> bool| {
            let mut at = 0;
            let mut out = Vec::new();
            for i in 0..n {
                let s = size_of_range(i);
                if keep(i) {
                    out.push((at, s));
                }
                at += s;
            }
            out
        };
        let blocks = match layout {
            Layout::Packed(n) => areas(n, &|_| true),
            Layout::Holes(n) => areas(2 * n, &|i| i % 2 == 1),
            Layout::Optee32m(_) => {
                *self = TeeMm::new(layout.pages());
                return ByRequests(self).build(layout);
            }
        };
        *self = TeeMm::with_areas(layout.pages(), blocks.iter().copied());
        blocks.len()
    }
}

/// `TeeMm` built by its own requests (the trait's default `build`).
struct ByRequests<'a>(&'a mut TeeMm);

impl RangeAlloc for ByRequests<'_> {
    type Handle = TeeMmHandle;
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<TeeMmHandle> {
        self.0.alloc(pages)
    }
    #[inline(always)]
    fn free(&mut self, handle: TeeMmHandle) {
        self.0.free(handle);
    }
}

struct RangeAllocPeer(range_alloc::RangeAllocator<u64>);

impl RangeAlloc for RangeAllocPeer {
    type Handle = std::ops::Range<u64>;
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<Self::Handle> {
        self.0.allocate_range(pages).ok()
    }
    #[inline(always)]
    fn free(&mut self, range: Self::Handle) {
        self.0.free_range(range);
    }
}

struct OffsetAllocatorPeer(offset_allocator::Allocator<u32>);

impl RangeAlloc for OffsetAllocatorPeer {
    type Handle = offset_allocator::Allocation<u32>;
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<Self::Handle> {
        self.0.allocate(pages as u32)
    }
    #[inline(always)]
    fn free(&mut self, a: Self::Handle) {
        self.0.free(a);
    }
}

struct BuddyPeer(buddy_system_allocator::FrameAllocator<33>);

impl RangeAlloc for BuddyPeer {
    type Handle = (usize, usize);
    #[inline(always)]
    fn alloc(&mut self, pages: u64) -> Option<Self::Handle> {
        self.0.alloc(pages as usize).map(|at| (at, pages as usize))
    }
    #[inline(always)]
    fn free(&mut self, (at, pages): Self::Handle) {
        self.0.dealloc(at, pages);
    }
}

/// `n` measured alloc+free pairs, each of the mix's next size (`i` counts them).
fn ops<A: RangeAlloc>(a: &mut A, i: &mut u64, n: u64) {
    for _ in 0..n {
        *i += 1;
        if let Some(h) = a.alloc(black_box(size_of_range(*i))) {
            a.free(h);
        }
    }
}

/// The peers of P1, in the order they are reported: name, what it is.
const P1_PEERS: [(&str, &str); 4] = [
    (
        "tee_mm",
        "OP-TEE's tee_mm (model): first fit over a sorted singly linked list, an entry malloc'd per alloc",
    ),
    (
        "range-alloc",
        "range-alloc 0.1: best fit over a sorted vector of free ranges",
    ),
    (
        "offset-allocator",
        "offset-allocator 0.2: O(1) TLSF-like bins with a node pool, no alignment",
    ),
    (
        "buddy_system_allocator",
        "buddy_system_allocator 0.13 FrameAllocator: binary buddy, a BTreeSet per order, sizes rounded to powers of two",
    ),
];

/// (teeshm, peers in `P1_PEERS` order, live ranges each holds) for one layout.
fn p1_point(budget: Budget, layout: Layout) -> (Stats, Vec<Stats>, Vec<usize>) {
    let pages = layout.pages();
    let mut teeshm = Teeshm(
        VaWindow::new(VaWindowConfig {
            base: VirtAddr(0x10_0000_0000),
            size: pages * PAGE_SIZE,
            guard_pages: 0,
        })
        .expect("a valid window"),
    );
    let mut tee_mm = TeeMm::new(pages);
    let mut range_alloc = RangeAllocPeer(range_alloc::RangeAllocator::new(0..pages));
    let max_allocs = (2 * pages).min(u64::from(u32::MAX) - 2) as u32;
    let mut offset = OffsetAllocatorPeer(offset_allocator::Allocator::with_max_allocs(
        pages as u32,
        max_allocs,
    ));
    let mut buddy = BuddyPeer(buddy_system_allocator::FrameAllocator::new());
    buddy.0.add_frame(0, pages as usize);
    let held = vec![
        teeshm.build(layout),
        tee_mm.build(layout),
        range_alloc.build(layout),
        offset.build(layout),
        buddy.build(layout),
    ];
    let (mut i0, mut i1, mut i2, mut i3, mut i4) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let stats = ns_per_op_side_by_side(
        budget,
        &mut [
            &mut |n| ops(&mut teeshm, &mut i0, n),
            &mut |n| ops(&mut tee_mm, &mut i1, n),
            &mut |n| ops(&mut range_alloc, &mut i2, n),
            &mut |n| ops(&mut offset, &mut i3, n),
            &mut |n| ops(&mut buddy, &mut i4, n),
        ],
    );
    debug_assert!(teeshm.0.check().is_empty());
    let mut stats = stats.into_iter();
    let teeshm = stats.next().expect("five measurements");
    (teeshm, stats.collect(), held)
}

pub(super) fn p1(budget: Budget, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
    let mut s = Series {
        id: "P1".into(),
        ..Series::default()
    };
    let layouts = [1_000u64, 10_000, 100_000]
        .into_iter()
        .map(Layout::Packed)
        .chain([1_000u64, 10_000, 100_000].into_iter().map(Layout::Holes))
        .chain([800u64, 1_500].into_iter().map(Layout::Optee32m));
    for layout in layouts {
        let (t, peers, held) = p1_point(budget, layout);
        if let (Layout::Packed(n), Some(tee_mm)) = (layout, peers.first()) {
            s.points.push((n as f64, t.median, tee_mm.median));
        }
        let best = peers.iter().map(|p| p.median).fold(f64::INFINITY, f64::min);
        let mut note = String::new();
        for (((name, what), p), &h) in P1_PEERS.iter().zip(&peers).zip(held.iter().skip(1)) {
            note.push_str(&format!(
                "{name} ({what}): {:.1} ns [{:.1}, {:.1}]",
                p.median, p.min, p.max
            ));
            if h != held[0] {
                note.push_str(&format!(" (holds {h} live ranges, teeshm {})", held[0]));
            }
            note.push_str("; ");
        }
        note.push_str(&format!(
            "teeshm {:.1} ns [{:.1}, {:.1}]; guard pages 0 on every side",
            t.median, t.min, t.max
        ));
        let mut f = figure(
            &layout.id(),
            &layout.title(),
            t.median,
            "ns",
            peers.first().map(|p| (p.median, P1_PEERS[0].1)),
            Some((
                best / t.median,
                "fastest peer / teeshm (> 1: teeshm faster than every peer)",
            )),
            "below every peer",
            Some(t.median < best),
            &note,
        );
        f.spread = Some(t.spread());
        f.peers = P1_PEERS
            .iter()
            .zip(&peers)
            .map(|((name, _), p)| ((*name).to_owned(), p.median))
            .collect();
        f.peers_spread = P1_PEERS
            .iter()
            .zip(&peers)
            .map(|((name, _), p)| ((*name).to_owned(), p.spread()))
            .collect();
        out.push(f);
    }
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

/// P3: the window map (`ShmWindow::map` + `unmap`: VA allocation, tables, mapping record,
/// reverse map) and the translation tables alone, beside OP-TEE's page-by-page mapping, per page.
/// The three run side by side (`ns_per_op_side_by_side`), each op a map of `n` scattered pages
/// and its unmap.
pub(super) fn p3(budget: Budget, out: &mut Vec<Figure>) {
    for n in [64u64, 4096] {
        let pages = scattered(n, 0x9e37_79b9 ^ n);
        let range = VirtPages::new(VirtAddr(0x10_0000_0000), n).unwrap();
        // teeshm's window: the operation the core performs.
        let mut w = window(1 << 16);
        let mut whole = |ops: u64| {
            for _ in 0..ops {
                let r = w
                    .map(GuestId(1), black_box(&pages), MemKind::NonSecureShared)
                    .unwrap();
                w.unmap(r.start()).unwrap();
            }
        };
        // teeshm's tables alone: one map of the whole scattered list, one unmap (one TLB request).
        let mut t = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let mut tables = |ops: u64| {
            for _ in 0..ops {
                t.map_pages(range, black_box(&pages), MemKind::NonSecureShared)
                    .unwrap();
                t.unmap(black_box(range));
            }
        };
        // Peer: OP-TEE's core_mmu_map_pages (core/mm/core_mmu.c) walks from the root to each
        // page's entry on its own, and core_mmu_unmap_pages likewise; modelled as one table map
        // and one unmap per page (each unmap with its TLB request), in the same tables code.
        let mut p = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let single =
            |i: usize| VirtPages::new(VirtAddr(0x10_0000_0000 + i as u64 * PAGE_SIZE), 1).unwrap();
        let mut page_by_page = |ops: u64| {
            for _ in 0..ops {
                for (i, &pa) in pages.iter().enumerate() {
                    p.map_pages(single(i), &[pa], MemKind::NonSecureShared)
                        .unwrap();
                }
                for i in 0..pages.len() {
                    p.unmap(single(i));
                }
            }
        };
        let stats =
            ns_per_op_side_by_side(budget, &mut [&mut whole, &mut tables, &mut page_by_page]);
        let per_page = |s: &Stats| {
            let k = n as f64;
            Stats {
                min: s.min / k,
                median: s.median / k,
                max: s.max / k,
            }
        };
        let [whole, tables, peer] = [
            per_page(&stats[0]),
            per_page(&stats[1]),
            per_page(&stats[2]),
        ];
        let peer_name =
            "page-by-page map and unmap (OP-TEE's core_mmu_map_pages / core_mmu_unmap_pages)";
        let mut f = figure(
            &format!("P3.window.{n}"),
            &format!(
                "ShmWindow::map + unmap of {n} scattered pages (VA allocation, tables, mapping record, reverse map), per page"
            ),
            whole.median,
            "ns/page",
            Some((peer.median, peer_name)),
            Some((whole.median / peer.median, "teeshm / peer")),
            "≤ peer",
            Some(whole.median <= peer.median),
            "",
        );
        f.spread = Some(whole.spread());
        f.peers = vec![(peer_name.into(), peer.median)];
        f.peers_spread = vec![(peer_name.into(), peer.spread())];
        out.push(f);
        let mut f = figure(
            &format!("P3.tables.{n}"),
            &format!(
                "map + unmap of {n} scattered pages in the translation tables alone, per page"
            ),
            tables.median,
            "ns/page",
            Some((peer.median, peer_name)),
            Some((tables.median / peer.median, "teeshm / peer")),
            "",
            None,
            "the tables' share of P3.window",
        );
        f.spread = Some(tables.spread());
        f.peers = vec![(peer_name.into(), peer.median)];
        f.peers_spread = vec![(peer_name.into(), peer.spread())];
        out.push(f);
    }
}

// ---- P5 -------------------------------------------------------------------------------------

/// phys_to_virt of a random mapped page with `live` pages mapped (64 scattered pages a
/// mapping, one owner), ns per lookup: `[min, median, max]` of the batches.
fn p5_point(budget: Budget, live: u64) -> Stats {
    let mut w = window(live * 2 + 4096);
    let mut mapped = Vec::new();
    for chunk in 0..live / 64 {
        let pages = scattered(64, 0x2545_f491 ^ (chunk * 7919 + live));
        w.map(GuestId(1), &pages, MemKind::NonSecureShared).unwrap();
        mapped.extend(pages.iter().copied());
    }
    let mut q = 0usize;
    let mut lookup = |ops: u64| {
        for _ in 0..ops {
            q = (q + 7919) % mapped.len();
            let found = w.phys_to_virt(
                black_box(PhysAddr(mapped[q].get() + 0x10)),
                Some(GuestId(1)),
            );
            assert!(found.is_some());
            black_box(found);
        }
    };
    ns_per_op_side_by_side(budget, &mut [&mut lookup])[0]
}

/// P5: phys_to_virt at 1k and 100k mapped pages and its growth between them. No peer: OP-TEE
/// has no reverse lookup of the SHM window (its `phys_to_virt` returns NULL there).
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
    let mut small = None;
    for &live in sizes {
        let t = p5_point(budget, live);
        s.points.push((live as f64, t.median, f64::NAN));
        if live == 1_024 || live == 102_400 {
            let mut f = figure(
                &format!("P5.{}k", live / 1024),
                &format!("phys_to_virt with {live} mapped pages"),
                t.median,
                "ns",
                None,
                None,
                "≤ 100 ns",
                Some(t.median <= 100.0),
                "no peer: OP-TEE returns NULL for a page of its SHM window",
            );
            f.spread = Some(t.spread());
            out.push(f);
        }
        if live == 1_024 {
            small = Some(t.median);
        }
        if let (102_400, Some(small)) = (live, small) {
            let growth = t.median / small;
            let mut f = figure(
                "P5.growth",
                "phys_to_virt at 102400 mapped pages over 1024 (100× the pages)",
                growth,
                "×",
                None,
                None,
                "",
                None,
                "the ratio of the medians of P5.100k and P5.1k; a lookup visits about one node at \
                 either size (pages hashed over as many buckets as window pages), so what grows is \
                 cache misses: the side tables are 4.3 MiB at 100k against 131 KiB at 1k",
            );
            f.kind = "computed".into();
            out.push(f);
        }
    }
    series.push(s);
}
