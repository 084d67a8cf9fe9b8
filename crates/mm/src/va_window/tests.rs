use super::*;
use proptest::prelude::*;

const BASE: u64 = 0x8000_0000;

fn window(pages: u64, guard_pages: u64) -> VaWindow {
    VaWindow::new(VaWindowConfig {
        base: VirtAddr(BASE),
        size: pages * PAGE_SIZE,
        guard_pages,
    })
    .unwrap()
}

#[test]
fn config_is_checked() {
    for (base, size) in [
        (0x1001, 0x1000),
        (0x1000, 0),
        (0x1000, 0x1800),
        (!0xfff, 0x2000),
    ] {
        assert_eq!(
            VaWindow::new(VaWindowConfig {
                base: VirtAddr(base),
                size,
                guard_pages: 0
            })
            .unwrap_err(),
            VaWindowError::BadConfig { base, size }
        );
    }
}

#[test]
fn best_fit_and_merge() {
    let mut w = window(16, 0);
    let a = w.alloc(4, PAGE_SIZE).unwrap();
    let b = w.alloc(2, PAGE_SIZE).unwrap();
    let c = w.alloc(4, PAGE_SIZE).unwrap();
    assert_eq!(a.start(), VirtAddr(BASE));
    assert_eq!(b.start(), VirtAddr(BASE + 4 * PAGE_SIZE));
    w.free(b.start()).unwrap();
    // A 2-page hole and a 6-page tail: a 2-page request takes the hole (best fit).
    let d = w.alloc(2, PAGE_SIZE).unwrap();
    assert_eq!(d.start(), b.start());
    w.free(a.start()).unwrap();
    w.free(c.start()).unwrap();
    w.free(d.start()).unwrap();
    assert!(w.check().is_empty(), "{:?}", w.check());
    assert_eq!(w.largest_free_run(), 16);
    assert_eq!(w.live_count(), 0);
}

#[test]
fn double_and_unknown_free_are_errors() {
    let mut w = window(8, 0);
    let a = w.alloc(2, PAGE_SIZE).unwrap();
    w.free(a.start()).unwrap();
    assert_eq!(w.free(a.start()), Err(VaWindowError::UnknownRange(BASE)));
    assert_eq!(
        w.free(VirtAddr(BASE + 0x800)),
        Err(VaWindowError::UnknownRange(BASE + 0x800))
    );
    assert_eq!(w.free(VirtAddr(0)), Err(VaWindowError::UnknownRange(0)));
    let b = w.alloc(3, PAGE_SIZE).unwrap();
    // The middle of a live range is not its start.
    assert!(w.free(VirtAddr(b.start().get() + PAGE_SIZE)).is_err());
    assert!(w.check().is_empty());
    assert_eq!(w.free_pages(), 5);
}

#[test]
fn guard_pages_separate_ranges() {
    let mut w = window(8, 1);
    let a = w.alloc(2, PAGE_SIZE).unwrap();
    let b = w.alloc(2, PAGE_SIZE).unwrap();
    assert_eq!(b.start().get(), a.end().get() + PAGE_SIZE);
    assert_eq!(
        w.range_containing(a.end()),
        None,
        "the guard page belongs to nobody"
    );
    assert_eq!(w.free_pages(), 2);
    assert!(matches!(
        w.alloc(2, PAGE_SIZE),
        Err(VaWindowError::NoSpace {
            largest_free: 2,
            ..
        })
    ));
    w.alloc(1, PAGE_SIZE).unwrap();
}

#[test]
fn alignment() {
    let mut w = window(64, 0);
    w.alloc(1, PAGE_SIZE).unwrap();
    let big = w.alloc(4, 16 * PAGE_SIZE).unwrap();
    assert_eq!(big.start().get() % (16 * PAGE_SIZE), 0);
    assert_eq!(
        w.alloc(1, 3 * PAGE_SIZE),
        Err(VaWindowError::BadAlignment(3 * PAGE_SIZE))
    );
    assert_eq!(w.alloc(1, 0x800), Err(VaWindowError::BadAlignment(0x800)));
    assert_eq!(w.alloc(0, PAGE_SIZE), Err(VaWindowError::ZeroSize));
    assert!(w.check().is_empty());
}

#[test]
fn huge_requests_fail_cleanly() {
    let mut w = window(8, 1);
    assert!(matches!(
        w.alloc(u64::MAX, PAGE_SIZE),
        Err(VaWindowError::NoSpace { .. })
    ));
    assert!(matches!(
        w.alloc(5, 1 << 63),
        Err(VaWindowError::NoSpace { .. })
    ));
    assert!(w.check().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { pages: u64, align_shift: u32 },
    Free { pick: usize },
    FreeBogus { page: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..12, 0u32..4).prop_map(|(pages, align_shift)| Op::Alloc { pages, align_shift }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (0u64..80).prop_map(|page| Op::FreeBogus { page }),
    ]
}

proptest! {
    /// Against a model that keeps one flag per page: every allocation lands on free pages with
    /// the right alignment, fails only when no suitable run exists, and bookkeeping stays sound.
    #[test]
    fn matches_page_flag_model(ops in proptest::collection::vec(op(), 1..200), guard in 0u64..2) {
        const PAGES: u64 = 64;
        let mut w = window(PAGES, guard);
        let mut used = [false; PAGES as usize];
        let mut live: Vec<(VirtPages, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { pages, align_shift } => {
                    let align = PAGE_SIZE << align_shift;
                    let need = pages + guard;
                    let a = 1u64 << align_shift;
                    let model_fits = (0..PAGES).filter(|s| (BASE / PAGE_SIZE + s) % a == 0).any(|s| {
                        s + need <= PAGES && (s..s + need).all(|p| !used[p as usize])
                    });
                    match w.alloc(pages, align) {
                        Ok(r) => {
                            let s = (r.start().get() - BASE) / PAGE_SIZE;
                            prop_assert_eq!(r.pages(), pages);
                            prop_assert_eq!(r.start().get() % align, 0);
                            for p in s..s + need {
                                prop_assert!(p < PAGES && !used[p as usize]);
                                used[p as usize] = true;
                            }
                            live.push((r, need));
                        }
                        Err(VaWindowError::NoSpace { .. }) => prop_assert!(!model_fits),
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Free { pick } => {
                    if live.is_empty() { continue; }
                    let (r, need) = live.swap_remove(pick % live.len());
                    prop_assert_eq!(w.free(r.start()), Ok(r));
                    let s = (r.start().get() - BASE) / PAGE_SIZE;
                    for p in s..s + need { used[p as usize] = false; }
                    prop_assert_eq!(w.free(r.start()), Err(VaWindowError::UnknownRange(r.start().get())));
                }
                Op::FreeBogus { page } => {
                    let va = VirtAddr(BASE + page * PAGE_SIZE);
                    if !live.iter().any(|(r, _)| r.start() == va) {
                        prop_assert_eq!(w.free(va), Err(VaWindowError::UnknownRange(va.get())));
                    }
                }
            }
            prop_assert!(w.check().is_empty(), "{:?}", w.check());
            prop_assert_eq!(w.free_pages(), used.iter().filter(|u| !**u).count() as u64);
            prop_assert_eq!(w.live_count(), live.len());
        }
    }
}

#[test]
fn classes_tile_the_lengths() {
    let mut len = 1u32;
    while len < LEN {
        let class = class_of(len);
        assert!(class_min(class) <= len, "{len}");
        assert!(class_min(class + 1) > len, "{len}");
        assert!((class as usize) < CLASSES);
        assert!(class_min(class_sure(len)) >= len);
        len = len + 1 + len / 37;
    }
    assert_eq!(class_of(63), 63);
    assert_eq!(class_of(64), 64);
    assert_eq!(class_sure(65), class_of(65) + 1);
}

#[test]
fn side_tables_are_sized_once_from_the_window() {
    // The core's default window: 4 GiB, 1 Mi pages.
    let w = window(1 << 20, 1);
    let bytes = w.side_table_bytes();
    assert!(
        bytes > 4 << 20 && bytes < (4 << 20) + (600 << 10),
        "{bytes}"
    );
    // OP-TEE's SHM VA space: 32 MiB.
    let small = window(8192, 0).side_table_bytes();
    assert!(small < 40 << 10, "{small}");
    assert_eq!(
        VaWindow::new(VaWindowConfig {
            base: VirtAddr(0),
            size: (MAX_WINDOW_PAGES + 1) * PAGE_SIZE,
            guard_pages: 0,
        })
        .unwrap_err(),
        VaWindowError::BadConfig {
            base: 0,
            size: (MAX_WINDOW_PAGES + 1) * PAGE_SIZE
        }
    );
}

#[test]
fn large_runs_split_and_merge_through_the_lists() {
    let mut w = window(4096, 1);
    let mut ranges = Vec::new();
    for pages in [100u64, 3, 700, 1, 64, 63, 2, 1000] {
        ranges.push(w.alloc(pages, PAGE_SIZE).unwrap());
        assert!(w.check().is_empty(), "{:?}", w.check());
    }
    for r in ranges.iter().step_by(2) {
        w.free(r.start()).unwrap();
        assert!(w.check().is_empty(), "{:?}", w.check());
    }
    // The 101-page hole (100 + guard) is the best fit for 90 pages; the tail is larger.
    let again = w.alloc(90, PAGE_SIZE).unwrap();
    assert_eq!(again.start(), ranges[0].start());
    assert_eq!(
        w.range_containing(VirtAddr(again.start().get() + 89 * PAGE_SIZE)),
        Some(again)
    );
    assert_eq!(w.range_containing(again.end()), None);
    let aligned = w.alloc(5, 256 * PAGE_SIZE).unwrap();
    assert_eq!(aligned.start().get() % (256 * PAGE_SIZE), 0);
    for r in ranges.iter().skip(1).step_by(2).chain([&again, &aligned]) {
        w.free(r.start()).unwrap();
        assert!(w.check().is_empty(), "{:?}", w.check());
    }
    assert_eq!(w.live_count(), 0);
    assert_eq!(w.largest_free_run(), 4096);
    assert_eq!(w.free_pages(), 4096);
}

proptest! {
    /// The same against the page-flag model in a 1024-page window with requests up to 300
    /// pages and alignments up to 64 pages: lists, large classes and node moves. An unaligned
    /// request fails only if no run fits; an aligned one only if no run fits or the request
    /// had more than `ALIGNED_SCAN_LIMIT` runs to try and none of the size that surely fits.
    /// Also `range_containing`, `live_ranges` and `largest_free_run` against the model.
    #[test]
    fn matches_page_flag_model_at_scale(
        ops in proptest::collection::vec(
            prop_oneof![
                4 => (1u64..300, prop_oneof![4 => Just(0u32), 1 => 1u32..7], 0u64..4)
                    .prop_map(|(p, a, small)| Op::Alloc { pages: if small > 0 { small } else { p }, align_shift: a }),
                3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
                1 => (0u64..1100).prop_map(|page| Op::FreeBogus { page }),
            ],
            1..150,
        ),
        guard in 0u64..2,
        probes in proptest::collection::vec(0u64..1024, 8),
    ) {
        const PAGES: u64 = 1024;
        let mut w = window(PAGES, guard);
        let mut owner = vec![None::<usize>; PAGES as usize];
        let mut live: Vec<(VirtPages, u64)> = Vec::new();
        let mut next_id = 0usize;
        let mut ids: Vec<usize> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { pages, align_shift } => {
                    let a = 1u64 << align_shift;
                    let need = pages + guard;
                    let free_at = |s: u64, n: u64| s + n <= PAGES && (s..s + n).all(|p| owner[p as usize].is_none());
                    let model_fits = (0..PAGES).filter(|s| (BASE / PAGE_SIZE + s) % a == 0).any(|s| free_at(s, need));
                    let surely = (0..PAGES).any(|s| free_at(s, need + a - 1));
                    match w.alloc(pages, PAGE_SIZE << align_shift) {
                        Ok(r) => {
                            let s = (r.start().get() - BASE) / PAGE_SIZE;
                            prop_assert_eq!(r.pages(), pages);
                            prop_assert_eq!(r.start().get() % (PAGE_SIZE << align_shift), 0);
                            for p in s..s + need {
                                prop_assert!(p < PAGES && owner[p as usize].is_none());
                                owner[p as usize] = Some(next_id);
                            }
                            live.push((r, need));
                            ids.push(next_id);
                            next_id += 1;
                        }
                        Err(VaWindowError::NoSpace { largest_free, .. }) => {
                            if a == 1 { prop_assert!(!model_fits); } else { prop_assert!(!surely); }
                            let mut best = 0u64;
                            let mut run = 0u64;
                            for o in &owner {
                                run = if o.is_none() { run + 1 } else { 0 };
                                best = best.max(run);
                            }
                            prop_assert_eq!(largest_free, best);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Free { pick } => {
                    if live.is_empty() { continue; }
                    let i = pick % live.len();
                    let (r, need) = live.swap_remove(i);
                    ids.swap_remove(i);
                    prop_assert_eq!(w.free(r.start()), Ok(r));
                    let s = (r.start().get() - BASE) / PAGE_SIZE;
                    for p in s..s + need { owner[p as usize] = None; }
                }
                Op::FreeBogus { page } => {
                    let va = VirtAddr(BASE + page * PAGE_SIZE);
                    if !live.iter().any(|(r, _)| r.start() == va) {
                        prop_assert_eq!(w.free(va), Err(VaWindowError::UnknownRange(va.get())));
                    }
                }
            }
            prop_assert!(w.check().is_empty(), "{:?}", w.check());
            prop_assert_eq!(w.free_pages(), owner.iter().filter(|o| o.is_none()).count() as u64);
            prop_assert_eq!(w.live_count(), live.len());
        }
        let mut sorted: Vec<VirtPages> = live.iter().map(|(r, _)| *r).collect();
        sorted.sort_by_key(|r| r.start());
        prop_assert_eq!(w.live_ranges().collect::<Vec<_>>(), sorted.clone());
        for page in probes {
            let va = VirtAddr(BASE + page * PAGE_SIZE + 0x10);
            let expected = sorted.iter().copied().find(|r| r.contains(va));
            prop_assert_eq!(w.range_containing(va), expected);
        }
        let mut best = 0u64;
        let mut run = 0u64;
        for o in &owner {
            run = if o.is_none() { run + 1 } else { 0 };
            best = best.max(run);
        }
        prop_assert_eq!(w.largest_free_run(), best);
    }
}
