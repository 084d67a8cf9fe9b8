//! Benchmarks of the memory manager, each beside its peer in the same run.
//!
//! - `va_window`: alloc+free with 1k/10k/100k live ranges, teeshm's `VaWindow` beside a model of
//!   OP-TEE's `tee_mm` (first fit over a sorted linked list) and the `range-alloc` crate (best fit over a sorted
//!   vector of free ranges).
//! - `map_unmap`: map then unmap 1, 64 and 4096 scattered pages, through the whole `ShmWindow`
//!   (VA + tables + reverse map + records) and through the translation tables alone.
//! - `phys_to_virt`: lookups with 1k/10k/100k mapped pages, beside a scan of the mapping records
//!   (what a core without a reverse map must do).
//!
//! Run with `cargo xtask bench` (which also prints the summary table).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use teeshm_abi::GuestId;
use teeshm_bench::fixtures;
use teeshm_bench::peers::TeeMm;
use teeshm_mm::{
    MemKind, PAGE_SIZE, PhysAddr, ShmWindow, TranslationTables, VaWindow, VaWindowConfig, VirtAddr,
    VirtPages,
};
use teeshm_platform::RecordingTlb;

/// Deterministic pseudo-random numbers (xorshift), so every run measures the same work.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sizes (pages) of the setup ranges and of the measured requests: a mix from 1 to 8 pages.
fn size_of(i: u64) -> u64 {
    1 + (i * 5 + i / 3) % 8
}

/// The two steady states every allocator is measured in, with `n` live ranges of 1..8 pages:
/// - `packed`: n ranges allocated back to back (a long-running window whose low part is full);
/// - `holes`: 2n allocated, every other one freed, so n holes of 1..8 pages lie between them.
#[derive(Clone, Copy)]
enum Layout {
    Packed,
    Holes,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Packed => "packed",
            Layout::Holes => "holes",
        }
    }

    /// Sets the allocator up; `alloc` returns a handle, `free` takes it back.
    fn build<A, H>(
        self,
        n: u64,
        a: &mut A,
        alloc: impl Fn(&mut A, u64) -> H,
        free: impl Fn(&mut A, H),
    ) {
        match self {
            Layout::Packed => {
                for i in 0..n {
                    alloc(a, size_of(i));
                }
            }
            Layout::Holes => {
                let handles: Vec<H> = (0..2 * n).map(|i| alloc(a, size_of(i))).collect();
                for (i, h) in handles.into_iter().enumerate() {
                    if i % 2 == 0 {
                        free(a, h);
                    }
                }
            }
        }
    }
}

fn va_window(c: &mut Criterion) {
    for layout in [Layout::Packed, Layout::Holes] {
        let mut group = c.benchmark_group(format!("va_window_{}", layout.name()));
        for &live in &[1_000u64, 10_000, 100_000] {
            let pages = live * 2 * 9 + 4096;
            let mut i = 0u64;
            let mut w = VaWindow::new(VaWindowConfig {
                base: VirtAddr(0x10_0000_0000),
                size: pages * PAGE_SIZE,
                guard_pages: 0,
            })
            .unwrap();
            layout.build(
                live,
                &mut w,
                |w, s| w.alloc(s, PAGE_SIZE).unwrap().start(),
                |w, s| {
                    w.free(s).unwrap();
                },
            );
            group.bench_function(BenchmarkId::new("teeshm", live), |b| {
                b.iter(|| {
                    i += 1;
                    let r = w.alloc(black_box(size_of(i)), PAGE_SIZE).unwrap();
                    w.free(r.start()).unwrap();
                })
            });
            let mut list = TeeMm::new(pages);
            layout.build(
                live,
                &mut list,
                |l, s| l.alloc(s).unwrap(),
                |l, s| assert!(l.free(s)),
            );
            group.bench_function(BenchmarkId::new("first_fit_list", live), |b| {
                b.iter(|| {
                    i += 1;
                    let h = list.alloc(black_box(size_of(i))).unwrap();
                    assert!(list.free(h));
                })
            });
            let mut ra = range_alloc::RangeAllocator::new(0..pages);
            layout.build(
                live,
                &mut ra,
                |r, s| r.allocate_range(s).unwrap(),
                |r, range| r.free_range(range),
            );
            group.bench_function(BenchmarkId::new("range_alloc", live), |b| {
                b.iter(|| {
                    i += 1;
                    let r = ra.allocate_range(black_box(size_of(i))).unwrap();
                    ra.free_range(r);
                })
            });
        }
        group.finish();
    }
}

fn scattered(n: u64, rng: &mut Rng) -> Vec<PhysAddr> {
    fixtures::scattered(n, || rng.next())
}

fn window(pages: u64) -> ShmWindow<RecordingTlb> {
    fixtures::window(pages, RecordingTlb::counting())
}

/// Times only the maps: `iters` maps of `pages`, in batches that are unmapped untimed between.
fn time_maps(iters: u64, mut map: impl FnMut(usize), mut unmap_all: impl FnMut(usize)) -> Duration {
    const BATCH: u64 = 64;
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let batch = BATCH.min(iters - done);
        let start = Instant::now();
        for k in 0..batch as usize {
            map(k);
        }
        total += start.elapsed();
        unmap_all(batch as usize);
        done += batch;
    }
    total
}

fn map_unmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("map");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sizes = [1u64, 64, 4096];
    let lists: Vec<Vec<PhysAddr>> = sizes.iter().map(|&n| scattered(n, &mut rng)).collect();
    for (&n, pages) in sizes.iter().zip(&lists) {
        group.throughput(Throughput::Elements(n));
        // Translation tables alone: map at 64 distinct VA ranges, unmap them untimed.
        let mut t = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let stride = (n + 1) * PAGE_SIZE;
        let range =
            |k: usize| VirtPages::new(VirtAddr(0x10_0000_0000 + k as u64 * stride), n).unwrap();
        group.bench_function(BenchmarkId::new("tables", n), |b| {
            b.iter_custom(|iters| {
                let t = std::cell::RefCell::new(&mut t);
                time_maps(
                    iters,
                    |k| {
                        t.borrow_mut()
                            .map_pages(range(k), black_box(pages), MemKind::NonSecureShared)
                            .unwrap()
                    },
                    |count| (0..count).for_each(|k| t.borrow_mut().unmap(range(k))),
                )
            })
        });
        // The whole window: VA allocation, memory-map checks, tables, reverse map, record.
        let mut w = window(1 << 20);
        group.bench_function(BenchmarkId::new("window", n), |b| {
            b.iter_custom(|iters| {
                let w = std::cell::RefCell::new(&mut w);
                let mut starts = Vec::new();
                let starts_cell = std::cell::RefCell::new(&mut starts);
                time_maps(
                    iters,
                    |_| {
                        let r = w
                            .borrow_mut()
                            .map(GuestId(1), black_box(pages), MemKind::NonSecureShared)
                            .unwrap();
                        starts_cell.borrow_mut().push(r.start());
                    },
                    |_| {
                        for s in starts_cell.borrow_mut().drain(..) {
                            w.borrow_mut().unmap(s).unwrap();
                        }
                    },
                )
            })
        });
    }
    group.finish();
    // Map then unmap (one TLB request per unmap), so unmap cost = this minus the map above.
    let mut group = c.benchmark_group("map_unmap");
    for (&n, pages) in sizes.iter().zip(&lists) {
        group.throughput(Throughput::Elements(n));
        let mut t = TranslationTables::new(1 << 16, RecordingTlb::counting()).unwrap();
        let range = VirtPages::new(VirtAddr(0x10_0000_0000), n).unwrap();
        group.bench_function(BenchmarkId::new("tables", n), |b| {
            b.iter(|| {
                t.map_pages(range, black_box(pages), MemKind::NonSecureShared)
                    .unwrap();
                t.unmap(black_box(range));
            })
        });
        let mut w = window(1 << 16);
        group.bench_function(BenchmarkId::new("window", n), |b| {
            b.iter(|| {
                let r = w
                    .map(GuestId(1), black_box(pages), MemKind::NonSecureShared)
                    .unwrap();
                w.unmap(r.start()).unwrap();
            })
        });
    }
    group.finish();
}

fn phys_to_virt(c: &mut Criterion) {
    let mut group = c.benchmark_group("phys_to_virt");
    for &live in &[1_000u64, 10_000, 100_000] {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ live);
        let mut w = window(live * 2 + 4096);
        let mut mapped = Vec::new();
        // 64-page mappings, four owners.
        let mut records = Vec::new();
        for chunk in 0..live / 64 {
            let pages = scattered(64, &mut rng);
            let owner = GuestId(1 + (chunk % 4) as u16);
            let r = w.map(owner, &pages, MemKind::NonSecureShared).unwrap();
            records.push((r, owner, pages.clone()));
            mapped.extend(pages.into_iter().map(|p| (p, owner)));
        }
        let queries: Vec<(PhysAddr, GuestId)> = (0..4096)
            .map(|_| mapped[(rng.next() % mapped.len() as u64) as usize])
            .collect();
        let mut q = 0usize;
        group.bench_function(BenchmarkId::new("reverse_map", live), |b| {
            b.iter(|| {
                q = (q + 1) % queries.len();
                let (pa, owner) = queries[q];
                black_box(
                    w.phys_to_virt(black_box(PhysAddr(pa.get() + 0x10)), Some(owner))
                        .unwrap(),
                );
            })
        });
        if live <= 10_000 {
            group.bench_function(BenchmarkId::new("record_scan", live), |b| {
                b.iter(|| {
                    q = (q + 1) % queries.len();
                    let (pa, owner) = queries[q];
                    let found =
                        records
                            .iter()
                            .filter(|(_, o, _)| *o == owner)
                            .find_map(|(r, _, pages)| {
                                pages
                                    .iter()
                                    .position(|p| *p == pa)
                                    .map(|i| r.start().get() + i as u64 * PAGE_SIZE + 0x10)
                            });
                    black_box(found.unwrap());
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = va_window, map_unmap, phys_to_virt
}
criterion_main!(benches);
