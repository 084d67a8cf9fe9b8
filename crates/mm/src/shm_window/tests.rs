//! Tests of the window: mapping, isolation, static mappings, exhaustion, and the agreement
//! checker against each kind of disagreement and random operations.

use super::*;
use crate::memmap::Region;
use alloc::vec::Vec;
use proptest::prelude::*;
use teeshm_platform::{RecordingTlb, TlbRequest};

const NS_RAM: u64 = 0x4000_0000;
const SECURE_RAM: u64 = 0x0e00_0000;
const WINDOW: u64 = 0x10_0000_0000;

fn memory_map() -> MemoryMap {
    let region = |start, len, kind| Region {
        range: PhysRange::new(PhysAddr(start), len).unwrap(),
        kind,
    };
    MemoryMap::new(&[
        region(NS_RAM, 0x4000_0000, RegionKind::NonSecureRam),
        region(SECURE_RAM, 0x100_0000, RegionKind::SecureRam),
        region(0x0900_0000, 0x1000, RegionKind::Device),
    ])
    .unwrap()
}

fn window(pages: u64, guard_pages: u64) -> ShmWindow<RecordingTlb> {
    let config = ShmWindowConfig {
        va: VaWindowConfig {
            base: VirtAddr(WINDOW),
            size: pages * PAGE_SIZE,
            guard_pages,
        },
        max_table_pages: 64,
    };
    ShmWindow::new(config, memory_map(), RecordingTlb::new()).unwrap()
}

fn ns(pages: &[u64]) -> Vec<PhysAddr> {
    pages
        .iter()
        .map(|p| PhysAddr(NS_RAM + p * PAGE_SIZE))
        .collect()
}

#[test]
fn map_lookup_unmap() {
    let mut w = window(1024, 1);
    let g1 = GuestId(1);
    let g2 = GuestId(2);
    let a = w
        .map(g1, &ns(&[7, 3, 9]), MemKind::NonSecureShared)
        .unwrap();
    // The same physical page mapped again, by another guest.
    let b = w.map(g2, &ns(&[3]), MemKind::NonSecureShared).unwrap();
    assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
    let pa3 = PhysAddr(NS_RAM + 3 * PAGE_SIZE + 0x10);
    assert_eq!(
        w.phys_to_virt(pa3, Some(g1)),
        Some(VirtAddr(a.start().get() + PAGE_SIZE + 0x10))
    );
    assert_eq!(
        w.phys_to_virt(pa3, Some(g2)),
        Some(VirtAddr(b.start().get() + 0x10))
    );
    assert_eq!(w.mappings_of(pa3).count(), 2);
    assert_eq!(
        w.virt_to_phys(VirtAddr(a.start().get() + 2 * PAGE_SIZE + 5)),
        Some(PhysAddr(NS_RAM + 9 * PAGE_SIZE + 5))
    );
    w.tlb_mut().clear();
    let removed = w.unmap(a.start()).unwrap();
    assert_eq!(removed.owner, g1);
    assert_eq!(
        w.tables().tlb().requests(),
        &[TlbRequest::Pages {
            va: a.start().get(),
            pages: 3
        }]
    );
    assert_eq!(w.phys_to_virt(pa3, Some(g1)), None);
    assert_eq!(
        w.phys_to_virt(pa3, None),
        Some(VirtAddr(b.start().get() + 0x10))
    );
    assert_eq!(
        w.unmap(a.start()),
        Err(WindowError::UnknownMapping(a.start().get()))
    );
    w.unmap(b.start()).unwrap();
    assert!(w.check_agreement().is_empty());
    assert_eq!(w.mapped_pages(), 0);
    assert_eq!(w.va_window().live_count(), 0);
}

#[test]
fn isolation_is_enforced_before_anything_changes() {
    let mut w = window(64, 0);
    for (pa, kind) in [
        (SECURE_RAM, MemKind::NonSecureShared),
        (0x0900_0000, MemKind::NonSecureShared),
        (0x3fff_f000, MemKind::NonSecureShared),
        (NS_RAM, MemKind::SecureRam),
        (NS_RAM, MemKind::Device),
    ] {
        let pages = [PhysAddr(NS_RAM), PhysAddr(pa)];
        assert_eq!(
            w.map(GuestId(1), &pages, kind),
            Err(WindowError::Forbidden { pa, kind })
        );
    }
    assert_eq!(
        w.map(
            GuestId(1),
            &[PhysAddr(NS_RAM + 1)],
            MemKind::NonSecureShared
        ),
        Err(WindowError::UnalignedPage(NS_RAM + 1))
    );
    assert_eq!(
        w.map(GuestId(1), &[], MemKind::NonSecureShared),
        Err(WindowError::Empty)
    );
    assert_eq!(w.va_window().live_count(), 0);
    assert_eq!(w.mapped_pages(), 0);
    w.map(GuestId(0), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam)
        .unwrap();
    w.map(GuestId(0), &[PhysAddr(0x0900_0000)], MemKind::Device)
        .unwrap();
    assert!(w.check_agreement().is_empty());
}

#[test]
fn static_mappings_share_the_tables_but_not_the_window() {
    let mut w = window(64, 1);
    let secure = |first: u64, n: u64| -> Vec<PhysAddr> {
        (0..n).map(|i| PhysAddr(first + i * PAGE_SIZE)).collect()
    };
    let code = VirtPages::new(VirtAddr(SECURE_RAM), 4).unwrap();
    w.map_static(code, &secure(SECURE_RAM, 4), MemKind::SecureCode)
        .unwrap();
    let data = VirtPages::new(VirtAddr(SECURE_RAM + 0x4000), 600).unwrap();
    w.map_static(data, &secure(SECURE_RAM + 0x4000, 600), MemKind::SecureRam)
        .unwrap();
    let uart = VirtPages::new(VirtAddr(0x0900_0000), 1).unwrap();
    w.map_static(uart, &[PhysAddr(0x0900_0000)], MemKind::Device)
        .unwrap();
    let tables = w.tables();
    assert_eq!(
        tables
            .translate_page(VirtAddr(SECURE_RAM + 0x3000))
            .map(|t| t.kind),
        Some(Some(MemKind::SecureCode))
    );
    assert_eq!(
        tables.virt_to_phys(VirtAddr(SECURE_RAM + 0x25_7123)),
        Some(PhysAddr(SECURE_RAM + 0x25_7123))
    );
    assert_eq!(
        tables.translate_page(VirtAddr(0x0900_0000)).map(|t| t.kind),
        Some(Some(MemKind::Device))
    );
    // Not window mappings: nothing recorded, and the checker (window only) is content.
    assert_eq!(w.mapped_pages(), 0);
    assert_eq!(w.mappings().count(), 0);
    assert_eq!(w.va_window().live_count(), 0);
    assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
    // The window works beside them, and its checker still sees only the window.
    let r = w
        .map(GuestId(1), &ns(&[5, 2]), MemKind::NonSecureShared)
        .unwrap();
    assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
    w.unmap(r.start()).unwrap();
    w.compact_tables();
    assert_eq!(
        w.tables().virt_to_phys(VirtAddr(SECURE_RAM)),
        Some(PhysAddr(SECURE_RAM)),
        "compaction keeps static tables"
    );
    assert!(w.check_agreement().is_empty());
}

#[test]
fn static_mappings_are_checked_and_change_nothing_on_error() {
    let mut w = window(64, 1);
    let one = |va: u64| VirtPages::new(VirtAddr(va), 1).unwrap();
    // Overlapping the window, at its start or straddling its end.
    assert_eq!(
        w.map_static(one(WINDOW), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam),
        Err(WindowError::OverlapsWindow(one(WINDOW)))
    );
    let straddle = VirtPages::new(VirtAddr(WINDOW - PAGE_SIZE), 2).unwrap();
    assert_eq!(
        w.map_static(
            straddle,
            &[PhysAddr(SECURE_RAM), PhysAddr(SECURE_RAM + PAGE_SIZE)],
            MemKind::SecureRam
        ),
        Err(WindowError::OverlapsWindow(straddle))
    );
    let last = WINDOW + 63 * PAGE_SIZE;
    assert!(matches!(
        w.map_static(one(last), &[PhysAddr(SECURE_RAM)], MemKind::SecureRam),
        Err(WindowError::OverlapsWindow(_))
    ));
    // Kinds onto the wrong memory.
    for (pa, kind) in [
        (NS_RAM, MemKind::SecureCode),
        (NS_RAM, MemKind::SecureRam),
        (0x0900_0000, MemKind::SecureCode),
        (SECURE_RAM, MemKind::NonSecureShared),
        (SECURE_RAM, MemKind::Device),
    ] {
        assert_eq!(
            w.map_static(one(0x1000_0000), &[PhysAddr(pa)], kind),
            Err(WindowError::Forbidden { pa, kind })
        );
    }
    assert_eq!(
        w.map_static(
            one(0x1000_0000),
            &[PhysAddr(SECURE_RAM + 8)],
            MemKind::SecureRam
        ),
        Err(WindowError::UnalignedPage(SECURE_RAM + 8))
    );
    assert_eq!(
        w.map_static(one(0x1000_0000), &[], MemKind::SecureRam),
        Err(WindowError::Empty)
    );
    assert!(matches!(
        w.map_static(
            one(0x1000_0000),
            &[PhysAddr(SECURE_RAM), PhysAddr(SECURE_RAM)],
            MemKind::SecureRam
        ),
        Err(WindowError::Table(TableError::LengthMismatch { .. }))
    ));
    let mut any = false;
    w.tables().for_each_mapping(
        VirtPages::new(VirtAddr(0), 1 << 20).unwrap(),
        &mut |_, _| any = true,
    );
    assert!(!any, "nothing was mapped by a refused static map");
    // A second static map over a mapped page is refused and leaves the first as it was.
    w.map_static(
        one(0x1000_0000),
        &[PhysAddr(SECURE_RAM)],
        MemKind::SecureRam,
    )
    .unwrap();
    let two = VirtPages::new(VirtAddr(0x0fff_f000), 2).unwrap();
    assert_eq!(
        w.map_static(
            two,
            &[
                PhysAddr(SECURE_RAM + PAGE_SIZE),
                PhysAddr(SECURE_RAM + 2 * PAGE_SIZE)
            ],
            MemKind::SecureRam
        ),
        Err(WindowError::AlreadyMapped(0x1000_0000))
    );
    assert_eq!(w.tables().virt_to_phys(VirtAddr(0x0fff_f000)), None);
    assert_eq!(
        w.tables().virt_to_phys(VirtAddr(0x1000_0000)),
        Some(PhysAddr(SECURE_RAM))
    );
    assert!(w.check_agreement().is_empty());
}

#[test]
fn window_full_is_an_error_with_state_kept() {
    let mut w = window(4, 0);
    w.map(GuestId(1), &ns(&[1, 2, 3]), MemKind::NonSecureShared)
        .unwrap();
    let err = w
        .map(GuestId(1), &ns(&[4, 5]), MemKind::NonSecureShared)
        .unwrap_err();
    assert!(
        matches!(
            err,
            WindowError::Va(VaWindowError::NoSpace {
                largest_free: 1,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(w.mapped_pages(), 3);
    assert!(w.check_agreement().is_empty());
}

#[test]
fn table_memory_is_reclaimed_lazily_then_refused() {
    // Root + L2 + one L3 fit; a mapping in a second 2 MiB span needs another L3.
    let config = ShmWindowConfig {
        va: VaWindowConfig {
            base: VirtAddr(WINDOW),
            size: 1024 * PAGE_SIZE,
            guard_pages: 0,
        },
        max_table_pages: 3,
    };
    let mut w = ShmWindow::new(config, memory_map(), RecordingTlb::new()).unwrap();
    let a = w
        .map(GuestId(1), &ns(&[0; 500]), MemKind::NonSecureShared)
        .unwrap();
    let err = w
        .map(GuestId(1), &ns(&[1; 20]), MemKind::NonSecureShared)
        .unwrap_err();
    assert!(
        matches!(err, WindowError::Table(TableError::OutOfTableMemory { .. })),
        "{err:?}"
    );
    assert!(w.check_agreement().is_empty());
    w.unmap(a.start()).unwrap();
    // The L3 table is now empty but still linked; the map reclaims it and succeeds.
    let b = w
        .map(GuestId(1), &ns(&[1; 20]), MemKind::NonSecureShared)
        .unwrap();
    assert!(b.start().get() >= WINDOW);
    assert!(w.check_agreement().is_empty(), "{:?}", w.check_agreement());
}

#[test]
fn checker_sees_each_kind_of_disagreement() {
    let mut w = window(64, 0);
    let a = w
        .map(GuestId(1), &ns(&[1, 2]), MemKind::NonSecureShared)
        .unwrap();
    // A reverse entry lost.
    let entry = ReverseEntry {
        pa: PhysAddr(NS_RAM + PAGE_SIZE),
        owner: GuestId(1),
        va: a.start(),
    };
    w.reverse.remove(entry);
    assert_eq!(w.check_agreement(), [Disagreement::MissingReverse(entry)]);
    w.reverse.insert(entry);
    // A reverse entry at a page of the window no mapping holds.
    let stray = ReverseEntry {
        owner: GuestId(2),
        va: VirtAddr(a.start().get() + 30 * PAGE_SIZE),
        ..entry
    };
    w.reverse.insert(stray);
    assert_eq!(w.check_agreement(), [Disagreement::StrayReverse(stray)]);
    w.reverse.remove(stray);
    // A table entry outside every mapping, pointing at secure RAM.
    let rogue = VirtPages::new(VirtAddr(WINDOW + 40 * PAGE_SIZE), 1).unwrap();
    w.tables
        .map_pages(rogue, &[PhysAddr(SECURE_RAM)], MemKind::SecureRam)
        .unwrap();
    assert_eq!(
        w.check_agreement(),
        [Disagreement::StrayTableEntry {
            va: rogue.start(),
            pa: PhysAddr(SECURE_RAM)
        }]
    );
    w.tables.unmap(rogue);
    // A page of a mapping unmapped behind the window's back.
    let second = VirtPages::new(VirtAddr(a.start().get() + PAGE_SIZE), 1).unwrap();
    w.tables.unmap(second);
    let found = w.check_agreement();
    assert!(
        found.contains(&Disagreement::PageNotMapped(second.start())),
        "{found:?}"
    );
    // Mapped again with other attributes.
    w.tables
        .map_pages(second, &ns(&[2]), MemKind::SecureRam)
        .unwrap();
    assert_eq!(
        w.check_agreement(),
        [Disagreement::WrongKind {
            va: second.start(),
            expected: MemKind::NonSecureShared,
            found: Some(MemKind::SecureRam)
        }]
    );
    // Mapped again as shared memory, but pointing at secure RAM.
    w.tables.unmap(second);
    w.tables
        .map_pages(second, &[PhysAddr(SECURE_RAM)], MemKind::NonSecureShared)
        .unwrap();
    let found = w.check_agreement();
    let isolation = Disagreement::Isolation {
        va: second.start(),
        pa: PhysAddr(SECURE_RAM),
        kind: MemKind::NonSecureShared,
    };
    assert!(found.contains(&isolation), "{found:?}");
    // The VA range freed behind the window's back.
    w.va.free(a.start()).unwrap();
    assert!(
        w.check_agreement()
            .contains(&Disagreement::MappingWithoutRange(a))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        owner: u16,
        pages: Vec<u64>,
        secure: bool,
    },
    Unmap {
        pick: usize,
    },
    UnmapBogus {
        page: u64,
    },
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..4, proptest::collection::vec(0u64..64, 1..40), proptest::bool::weighted(0.1))
            .prop_map(|(owner, pages, secure)| Op::Map { owner, pages, secure }),
        3 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
        1 => (0u64..600).prop_map(|page| Op::UnmapBogus { page }),
        1 => Just(Op::Compact),
    ]
}

proptest! {
    /// Random maps (several owners, repeated physical pages, some refused) and unmaps: the
    /// checker finds no disagreement after any step, and lookups agree with a plain model.
    #[test]
    fn window_stays_in_agreement(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = window(512, 1);
        let mut live: Vec<(VirtPages, GuestId, Vec<PhysAddr>)> = Vec::new();
        for op in ops {
            match op {
                Op::Map { owner, pages, secure } => {
                    let mut list = ns(&pages);
                    if secure { list.push(PhysAddr(SECURE_RAM)); }
                    let before = w.mapped_pages();
                    match w.map(GuestId(owner), &list, MemKind::NonSecureShared) {
                        Ok(range) => {
                            prop_assert!(!secure);
                            live.push((range, GuestId(owner), list));
                        }
                        Err(WindowError::Forbidden { pa, .. }) => {
                            prop_assert!(secure);
                            prop_assert_eq!(pa, SECURE_RAM);
                            prop_assert_eq!(w.mapped_pages(), before);
                        }
                        Err(WindowError::Va(VaWindowError::NoSpace { .. })) => {}
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Unmap { pick } => {
                    if live.is_empty() { continue; }
                    let (range, owner, _) = live.swap_remove(pick % live.len());
                    let m = w.unmap(range.start()).unwrap();
                    prop_assert_eq!((m.range, m.owner), (range, owner));
                }
                Op::UnmapBogus { page } => {
                    let va = VirtAddr(WINDOW + page * PAGE_SIZE);
                    if !live.iter().any(|(r, _, _)| r.start() == va) {
                        prop_assert_eq!(w.unmap(va), Err(WindowError::UnknownMapping(va.get())));
                    }
                }
                Op::Compact => w.compact_tables(),
            }
            let problems = w.check_agreement();
            prop_assert!(problems.is_empty(), "{:?}", problems);
        }
        // Lookups agree with the model both ways.
        for (range, owner, list) in &live {
            for (i, pa) in list.iter().enumerate() {
                let va = VirtAddr(range.start().get() + i as u64 * PAGE_SIZE);
                prop_assert_eq!(w.virt_to_phys(va), Some(*pa));
                let mine = w.phys_to_virt(*pa, Some(*owner)).unwrap();
                // The owner's lowest mapping of that page.
                let expected = live.iter().filter(|(_, o, _)| o == owner).flat_map(|(r, _, l)| {
                    l.iter().enumerate().filter(|(_, p)| *p == pa).map(move |(j, _)| r.start().get() + j as u64 * PAGE_SIZE)
                }).min().unwrap();
                prop_assert_eq!(mine, VirtAddr(expected));
            }
        }
    }
}

/// A transient page is mapped for its closure alone (the right frame, as normal-world memory),
/// leaves nothing behind (no VA, record, reverse entry or table entry),
/// refuses a secure page before anything changes, and reports a full window.
#[test]
fn transient_page_is_mapped_for_its_closure_only() {
    let mut w = window(4, 0);
    let pa = ns(&[7])[0];
    let seen = w
        .with_transient_page(pa, MemKind::NonSecureShared, |shm, va| {
            (
                shm.virt_to_phys(va),
                shm.tables().translate_page(va).and_then(|t| t.kind),
                shm.phys_to_virt(pa, None),
                va,
            )
        })
        .unwrap();
    assert_eq!(seen.0, Some(pa));
    assert_eq!(seen.1, Some(MemKind::NonSecureShared));
    assert_eq!(seen.2, None, "never in the reverse map");
    assert_eq!(w.virt_to_phys(seen.3), None, "unmapped afterwards");
    assert_eq!(w.va_window().live_count(), 0);
    assert_eq!(w.mapped_pages(), 0);
    assert!(w.check_agreement().is_empty());
    assert_eq!(
        w.with_transient_page(PhysAddr(SECURE_RAM), MemKind::NonSecureShared, |_, _| ()),
        Err(WindowError::Forbidden {
            pa: SECURE_RAM,
            kind: MemKind::NonSecureShared
        })
    );
    w.map(GuestId(1), &ns(&[1, 2, 3, 4]), MemKind::NonSecureShared)
        .unwrap();
    assert!(matches!(
        w.with_transient_page(pa, MemKind::NonSecureShared, |_, _| ()),
        Err(WindowError::Va(VaWindowError::NoSpace { .. }))
    ));
    assert!(w.check_agreement().is_empty());
}
