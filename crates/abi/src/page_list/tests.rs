use super::*;
use alloc::boxed::Box;
use alloc::vec;
use proptest::prelude::*;
use std::collections::HashMap;

/// Test memory: 4 KiB pages keyed by PA; records every read.
#[derive(Default)]
struct MockMem {
    pages: HashMap<u64, Box<[u8; LIST_PAGE_SIZE]>>,
    reads: Vec<(u64, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MockError {
    Unmapped(u64),
    CrossesPage { pa: u64, len: usize },
}

impl MockMem {
    fn store(&mut self, pa: u64, bytes: &[u8; LIST_PAGE_SIZE]) {
        assert_eq!(pa & 0xfff, 0);
        self.pages.insert(pa, Box::new(*bytes));
    }

    /// Builds a list page from entries and a next pointer.
    fn store_list(&mut self, pa: u64, entries: &[u64], next: u64) {
        let mut page = [0u8; LIST_PAGE_SIZE];
        for (i, e) in entries.iter().enumerate() {
            page[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        page[NEXT_POINTER_OFFSET..].copy_from_slice(&next.to_le_bytes());
        self.store(pa, &page);
    }
}

impl NsMemory for MockMem {
    type Error = MockError;

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), MockError> {
        self.reads.push((pa, buf.len()));
        let off = (pa & 0xfff) as usize;
        if off + buf.len() > LIST_PAGE_SIZE {
            return Err(MockError::CrossesPage { pa, len: buf.len() });
        }
        let page = self
            .pages
            .get(&(pa & !0xfff))
            .ok_or(MockError::Unmapped(pa))?;
        buf.copy_from_slice(&page[off..off + buf.len()]);
        Ok(())
    }
}

fn data_pa(i: usize) -> u64 {
    0x8_0000_0000 + (i as u64) * 0x3000
}

fn list_pa(j: usize) -> u64 {
    0x4000_0000 + (j as u64) * 0x5000
}

fn le(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Size that gives exactly `n` pages at `offset`.
fn size_for(n: u64, offset: u64) -> u64 {
    if offset == 0 {
        n * 4096
    } else {
        (n - 1) * 4096 + (4096 - offset)
    }
}

#[test]
fn constants() {
    assert_eq!(ENTRIES_PER_LIST_PAGE, 511);
    assert_eq!(LIST_PAGE_SIZE, 4096);
    assert_eq!(NEXT_POINTER_OFFSET, 4088);
}

#[test]
fn num_pages_values() {
    assert_eq!(num_pages(0, 1), Ok(1));
    assert_eq!(num_pages(0, 4096), Ok(1));
    assert_eq!(num_pages(0, 4097), Ok(2));
    assert_eq!(num_pages(4095, 1), Ok(1));
    assert_eq!(num_pages(4095, 2), Ok(2));
    assert_eq!(num_pages(1, 4096), Ok(2));
    assert_eq!(num_pages(0, u64::MAX), Ok(1 << 52));
    assert_eq!(num_pages(4095, u64::MAX - 4095), Ok(1 << 52));
    assert_eq!(num_pages(0, 0), Err(PageListError::ZeroSize));
    assert_eq!(num_pages(5, 0), Err(PageListError::ZeroSize));
    assert_eq!(
        num_pages(4096, 1),
        Err(PageListError::OffsetTooLarge { offset: 4096 })
    );
    assert_eq!(
        num_pages(1, u64::MAX),
        Err(PageListError::SizeOverflow {
            size: u64::MAX,
            offset: 1
        })
    );
}

#[test]
fn list_pages_needed_values() {
    let table = [
        (0, 0),
        (1, 1),
        (510, 1),
        (511, 1),
        (512, 2),
        (1022, 2),
        (1023, 3),
        (1024, 3),
        (u64::MAX, u64::MAX / 511 + 1),
    ];
    for (n, want) in table {
        assert_eq!(list_pages_needed(n), want, "n = {n}");
    }
}

/// Golden byte-level checks of the encoder at the list-page boundaries, then a decode of the
/// same bytes that counts every read.
#[test]
fn golden_boundaries() {
    let cases: [(usize, usize); 7] = [
        (1, 1),
        (510, 1),
        (511, 1),
        (512, 2),
        (1022, 2),
        (1023, 3),
        (1024, 3),
    ];
    for (n, want_lists) in cases {
        for offset in [0u64, 4095] {
            let data: Vec<u64> = (0..n).map(data_pa).collect();
            let lists: Vec<u64> = (0..want_lists).map(list_pa).collect();
            let size = size_for(n as u64, offset);
            assert_eq!(num_pages(offset, size), Ok(n as u64));
            assert_eq!(list_pages_needed(n as u64), want_lists as u64);

            let enc = encode(&data, offset, size, &lists).expect("encodes");
            assert_eq!(enc.pages.len(), want_lists, "n = {n}");
            assert_eq!(enc.buf_ptr, list_pa(0) | offset);
            assert_eq!(enc.buf_ptr & 0xfff, offset);
            assert_eq!(enc.size, size);
            assert_eq!(enc.tmem(9), Tmem::new(enc.buf_ptr, size, 9));

            for (j, page) in enc.pages.iter().enumerate() {
                let first = j * 511;
                let here = (n - first).min(511);
                // Entry 0 of every list page.
                assert_eq!(le(&page[0..8]), data_pa(first));
                // Last entry written.
                let last = (here - 1) * 8;
                assert_eq!(le(&page[last..last + 8]), data_pa(first + here - 1));
                // Entry 510 sits at byte 4080 on full pages.
                if here == 511 {
                    assert_eq!(le(&page[4080..4088]), data_pa(first + 510));
                }
                // Zero padding after the last entry.
                assert!(page[here * 8..NEXT_POINTER_OFFSET].iter().all(|&b| b == 0));
                // Next pointer at 4088: the next list page, or 0 at the end.
                let next = le(&page[4088..4096]);
                if j + 1 < want_lists {
                    assert_eq!(next, list_pa(j + 1));
                } else {
                    assert_eq!(next, 0);
                }
            }

            let mut mem = MockMem::default();
            for (&pa, page) in lists.iter().zip(&enc.pages) {
                mem.store(pa, page);
            }
            let dec = decode(&mut mem, enc.buf_ptr, size, 1024).expect("decodes");
            assert_eq!(dec.pages(), data.as_slice());
            assert_eq!(dec.num_pages(), n);
            assert_eq!(u64::from(dec.offset()), offset);
            assert_eq!(dec.size(), size);
            assert_eq!(dec.clone().into_pages().capacity(), n);

            // One read per list page: full pages when more follow, only the needed entries on
            // the last one (its next pointer is never read).
            assert_eq!(mem.reads.len(), want_lists);
            for (j, &(pa, len)) in mem.reads.iter().enumerate() {
                assert_eq!(pa, list_pa(j));
                if j + 1 < want_lists {
                    assert_eq!(len, 4096);
                } else {
                    assert_eq!(len, (n - j * 511) * 8);
                }
            }
        }
    }
}

#[test]
fn each_ns_byte_read_at_most_once() {
    let n = 2000;
    let data: Vec<u64> = (0..n).map(data_pa).collect();
    let lists: Vec<u64> = (0..4).map(list_pa).collect();
    let size = size_for(n as u64, 100);
    let mut mem = MockMem::default();
    let buf_ptr = encode_with(&data, 100, size, &lists, |pa, bytes| {
        mem.store(pa, bytes);
        Ok::<(), ()>(())
    })
    .expect("encodes");
    let dec = decode(&mut mem, buf_ptr, size, 2000).expect("decodes");
    assert_eq!(dec.pages(), data.as_slice());

    assert_eq!(mem.reads.len() as u64, list_pages_needed(n as u64));
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for &(pa, len) in &mem.reads {
        assert_eq!(pa & 0xfff, 0, "reads start on a page");
        assert!(len <= 4096, "reads stay inside one page");
        for b in pa..pa + len as u64 {
            *seen.entry(b).or_default() += 1;
        }
    }
    assert!(seen.values().all(|&c| c == 1));
    // Exactly the entries needed plus the next pointers of the non-last pages.
    assert_eq!(seen.len(), n * 8 + 3 * 8);
}

#[test]
fn cyclic_list_decodes_exactly_num_pages() {
    let a = 0x1000_0000;
    let entries: Vec<u64> = (0..511).map(data_pa).collect();
    let mut mem = MockMem::default();
    mem.store_list(a, &entries, a); // next points at itself
    let n = 1500u64;
    let dec = decode(&mut mem, a, n * 4096, 10_000).expect("decodes");
    assert_eq!(dec.num_pages(), 1500);
    for (i, &p) in dec.pages().iter().enumerate() {
        assert_eq!(p, data_pa(i % 511));
    }
    assert_eq!(
        mem.reads,
        vec![(a, 4096), (a, 4096), (a, (1500 - 1022) * 8)]
    );
}

#[test]
fn two_page_cycle_and_garbage_after_end() {
    let (a, b) = (0x2000_0000, 0x3000_0000);
    let mut mem = MockMem::default();
    let ea: Vec<u64> = (0..511).map(data_pa).collect();
    let mut eb: Vec<u64> = (511..1022).map(data_pa).collect();
    // Garbage in the unused part of page b must never be looked at.
    eb[300] = 0xdead_beef;
    mem.store_list(a, &ea, b);
    mem.store_list(b, &eb, 0x123); // unaligned next, beyond the end
    let dec = decode(&mut mem, a, 811 * 4096, 811).expect("decodes");
    assert_eq!(dec.num_pages(), 811);
    assert_eq!(dec.pages()[810], data_pa(810));
    assert_eq!(mem.reads, vec![(a, 4096), (b, 300 * 8)]);
}

#[test]
fn full_last_page_does_not_read_next() {
    let a = 0x5000_0000;
    let mut mem = MockMem::default();
    mem.store_list(a, &(0..511).map(data_pa).collect::<Vec<_>>(), 0xfff);
    let dec = decode(&mut mem, a, 511 * 4096, 511).expect("decodes");
    assert_eq!(dec.num_pages(), 511);
    assert_eq!(mem.reads, vec![(a, 4088)]);

    // One more page and the unaligned next pointer is read, and refused.
    let err = decode(&mut mem, a, 512 * 4096, 512).expect_err("next unaligned");
    assert_eq!(
        err,
        PageListError::NextPointerUnaligned {
            list_page: 0,
            next: 0xfff
        }
    );
}

#[test]
fn decode_errors_before_reading() {
    let mut mem = MockMem::default();
    type Outcome = Result<DecodedPageList, PageListError<MockError>>;
    let cases: Vec<(Outcome, PageListError<MockError>)> = vec![
        (decode(&mut mem, 0x1000, 0, 10), PageListError::ZeroSize),
        (
            decode_parts(&mut mem, 0x1000, 4096, 1, 10),
            PageListError::OffsetTooLarge { offset: 4096 },
        ),
        (
            decode(&mut mem, 0x1001, u64::MAX, 10),
            PageListError::SizeOverflow {
                size: u64::MAX,
                offset: 1,
            },
        ),
        (
            decode(&mut mem, 0x1000, 11 * 4096, 10),
            PageListError::TooManyPages { count: 11, max: 10 },
        ),
        (
            decode(&mut mem, 0x1fff, 2, 1),
            PageListError::TooManyPages { count: 2, max: 1 },
        ),
        (
            decode_parts(&mut mem, 0x1008, 0, 4096, 10),
            PageListError::ListPageUnaligned { pa: 0x1008 },
        ),
        (
            decode(&mut mem, 0, u64::MAX, u64::MAX),
            PageListError::OutOfMemory { pages: 1 << 52 },
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
    }
    assert!(mem.reads.is_empty(), "no NS read before validation");
}

#[test]
fn decode_entry_and_read_errors() {
    let a = 0x6000_0000;
    let b = 0x7000_0000;
    let mut mem = MockMem::default();
    let mut ea: Vec<u64> = (0..511).map(data_pa).collect();
    mem.store_list(a, &ea, b);
    // b is not mapped.
    assert_eq!(
        decode(&mut mem, a, 600 * 4096, 600),
        Err(PageListError::Read {
            pa: b,
            len: 89 * 8,
            error: MockError::Unmapped(b)
        })
    );
    ea[17] = data_pa(17) | 0x10;
    mem.store_list(a, &ea, b);
    assert_eq!(
        decode(&mut mem, a, 20 * 4096, 600),
        Err(PageListError::EntryUnaligned {
            index: 17,
            value: data_pa(17) | 0x10
        })
    );
    // Entry index counts across list pages.
    ea[17] = data_pa(17);
    mem.store_list(a, &ea, b);
    let mut eb = vec![0x9000; 511];
    eb[2] = 0x9001;
    mem.store_list(b, &eb, 0);
    assert_eq!(
        decode(&mut mem, a, 600 * 4096, 600),
        Err(PageListError::EntryUnaligned {
            index: 513,
            value: 0x9001
        })
    );
    // First list page unmapped.
    assert_eq!(
        decode(&mut mem, 0xabc_d000, 1, 1),
        Err(PageListError::Read {
            pa: 0xabc_d000,
            len: 8,
            error: MockError::Unmapped(0xabc_d000)
        })
    );
    let _ = MockError::CrossesPage { pa: 0, len: 0 };
}

#[test]
fn decode_through_mut_ref() {
    let mut mem = MockMem::default();
    mem.store_list(0x1000, &[0x5000], 0);
    let mut r = &mut mem;
    let dec = decode(&mut r, 0x1000 | 12, 100, 1).expect("decodes");
    assert_eq!(dec.pages(), &[0x5000]);
    assert_eq!(dec.offset(), 12);
}

#[test]
fn error_messages_name_values() {
    let e: PageListError<MockError> = PageListError::EntryUnaligned {
        index: 3,
        value: 0x1234,
    };
    assert_eq!(
        e.to_string(),
        "data page entry 3 = 0x1234 is not 4 KiB aligned"
    );
    let e: PageListError<MockError> = PageListError::TooManyPages { count: 9, max: 8 };
    assert_eq!(e.to_string(), "9 data pages exceed the limit of 8");
    let e = EncodeError::<()>::Layout(PageListError::ZeroSize);
    assert_eq!(e.to_string(), "buffer size is 0");
}

#[test]
fn encode_errors() {
    let data: Vec<u64> = (0..3).map(data_pa).collect();
    let lists = [list_pa(0)];
    assert_eq!(
        encode(&data, 0, 0, &lists),
        Err(EncodeError::Layout(PageListError::ZeroSize))
    );
    assert_eq!(
        encode(&data, 4096, 1, &lists),
        Err(EncodeError::Layout(PageListError::OffsetTooLarge {
            offset: 4096
        }))
    );
    assert_eq!(
        encode(&data, 4, u64::MAX, &lists),
        Err(EncodeError::Layout(PageListError::SizeOverflow {
            size: u64::MAX,
            offset: 4
        }))
    );
    assert_eq!(
        encode(&data, 0, 4 * 4096, &lists),
        Err(EncodeError::PageCountMismatch {
            expected: 4,
            got: 3
        })
    );
    let mut bad = data.clone();
    bad[2] |= 0x800;
    assert_eq!(
        encode(&bad, 0, 3 * 4096, &lists),
        Err(EncodeError::DataPageUnaligned {
            index: 2,
            pa: data_pa(2) | 0x800
        })
    );
    assert_eq!(
        encode(&data, 0, 3 * 4096, &[list_pa(0), list_pa(1)]),
        Err(EncodeError::ListPageCountMismatch {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        encode(&data, 0, 3 * 4096, &[]),
        Err(EncodeError::ListPageCountMismatch {
            expected: 1,
            got: 0
        })
    );
    let many: Vec<u64> = (0..600).map(data_pa).collect();
    assert_eq!(
        encode(&many, 0, 600 * 4096, &[list_pa(0), 0x1234]),
        Err(EncodeError::ListPageUnaligned {
            index: 1,
            pa: 0x1234
        })
    );
    // Nothing is written when validation fails; a failing writer stops the encoding.
    let mut writes = 0;
    let r = encode_with(&bad, 0, 3 * 4096, &lists, |_, _| {
        writes += 1;
        Ok::<(), &str>(())
    });
    assert!(matches!(r, Err(EncodeError::DataPageUnaligned { .. })));
    assert_eq!(writes, 0);
    let r = encode_with(&many, 0, 600 * 4096, &[list_pa(0), list_pa(1)], |pa, _| {
        writes += 1;
        if pa == list_pa(1) {
            Err("full")
        } else {
            Ok(())
        }
    });
    assert_eq!(
        r,
        Err(EncodeError::Write {
            pa: list_pa(1),
            error: "full"
        })
    );
    assert_eq!(writes, 2);
}

/// Memory full of deterministic garbage: any aligned PA reads as pseudo-random words; some
/// addresses fail. `aligned` masks the low 12 bits of every word so walks go deeper.
struct GarbageMem {
    seed: u64,
    aligned: bool,
    reads: u64,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl NsMemory for GarbageMem {
    type Error = u64;

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), u64> {
        assert_eq!(pa & 0xfff, 0);
        assert!(buf.len() <= 4096 && buf.len() % 8 == 0 && !buf.is_empty());
        self.reads += 1;
        if mix(pa ^ self.seed) % 61 == 0 {
            return Err(pa);
        }
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            let mut v = mix(self.seed ^ pa.wrapping_add(i as u64 * 8));
            if self.aligned {
                v &= !0xfff;
            }
            w.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
}

fn pages_and_lists() -> impl Strategy<Value = (Vec<u64>, u64, u64, Vec<u64>)> {
    (1usize..=2000).prop_flat_map(|n| {
        (
            proptest::collection::vec(any::<u64>().prop_map(|x| x & !0xfff), n),
            0u64..4096,
            any::<u64>(),
            (0u64..1 << 36).prop_map(|b| b << 12),
            1u64..16,
        )
            .prop_map(move |(data, offset, pick, base, stride)| {
                let n = n as u64;
                // Any size giving exactly n pages at this offset.
                let lo = ((n - 1) * 4096 + 1).saturating_sub(offset).max(1);
                let hi = n * 4096 - offset;
                let size = lo + pick % (hi - lo + 1);
                let lists = (0..list_pages_needed(n))
                    .map(|j| base + j * stride * 4096)
                    .collect();
                (data, offset, size, lists)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn encode_decode_round_trip((data, offset, size, lists) in pages_and_lists()) {
        prop_assert_eq!(num_pages(offset, size), Ok(data.len() as u64));
        let enc = encode(&data, offset, size, &lists).expect("valid input encodes");
        prop_assert_eq!(enc.pages.len(), lists.len());
        let mut mem = MockMem::default();
        for (&pa, page) in lists.iter().zip(&enc.pages) {
            mem.store(pa, page);
        }
        let dec = decode(&mut mem, enc.buf_ptr, size, data.len() as u64).expect("decodes");
        prop_assert_eq!(dec.pages(), data.as_slice());
        prop_assert_eq!(u64::from(dec.offset()), offset);
        prop_assert_eq!(dec.size(), size);
        prop_assert_eq!(mem.reads.len(), lists.len());
        let too_small = decode(&mut mem, enc.buf_ptr, size, data.len() as u64 - 1);
        prop_assert_eq!(
            too_small,
            Err(PageListError::TooManyPages { count: data.len() as u64, max: data.len() as u64 - 1 })
        );
    }

    #[test]
    fn decode_garbage_never_panics(
        seed: u64,
        aligned: bool,
        buf_ptr: u64,
        size in prop_oneof![any::<u64>(), 0u64..8_000_000],
        max_pages in 0u64..3000,
    ) {
        let mut mem = GarbageMem { seed, aligned, reads: 0 };
        match decode(&mut mem, buf_ptr, size, max_pages) {
            Ok(dec) => {
                prop_assert_eq!(Ok(dec.num_pages() as u64), num_pages(buf_ptr & 0xfff, size));
                prop_assert!(dec.pages().iter().all(|p| p & 0xfff == 0));
                prop_assert_eq!(mem.reads, list_pages_needed(dec.num_pages() as u64));
            }
            Err(_) => prop_assert!(mem.reads <= list_pages_needed(max_pages)),
        }
    }
}

#[test]
fn decode_each_visits_in_order_and_stops_where_refused() {
    let mut mem = MockMem::default();
    let first: Vec<u64> = (0..ENTRIES_PER_LIST_PAGE).map(data_pa).collect();
    mem.store_list(list_pa(0), &first, list_pa(1));
    mem.store_list(list_pa(1), &[data_pa(900), data_pa(901)], 0);
    let size = size_for(513, 7);
    let mut seen = Vec::new();
    let shape = decode_each(&mut mem, list_pa(0), 7, size, 1000, |i, pa| {
        seen.push((i, pa));
        true
    })
    .expect("decodes");
    assert_eq!(
        shape,
        ListShape {
            offset: 7,
            size,
            num_pages: 513
        }
    );
    assert_eq!(seen.len(), 513);
    assert_eq!(seen[511], (511, data_pa(900)));
    assert!(seen.iter().enumerate().all(|(k, &(i, _))| k as u64 == i));
    // A refusal names the entry and stops the walk: the second list page is never read.
    mem.reads.clear();
    let refused = decode_each(&mut mem, list_pa(0), 7, size, 1000, |i, _| i < 3);
    assert_eq!(
        refused,
        Err(PageListError::Refused {
            index: 3,
            value: data_pa(3)
        })
    );
    assert_eq!(mem.reads, [(list_pa(0), LIST_PAGE_SIZE)]);
}

proptest! {
    /// The chunked decoder agrees with visiting page by page: the same pages in the same order,
    /// and the same error (a refusal or an unaligned entry, whichever comes first) at the same
    /// index, for lists over two list pages with a refused and an unaligned entry anywhere.
    #[test]
    fn decode_chunks_agrees_with_decode_each(n in 1usize..1100, refuse in proptest::option::of(0usize..1100),
                                             unaligned in proptest::option::of(0usize..1100)) {
        let mut pages: Vec<u64> = (0..n).map(data_pa).collect();
        if let Some(u) = unaligned.filter(|&u| u < n) {
            pages[u] += 8;
        }
        let mut mem = MockMem::default();
        for (j, chunk) in pages.chunks(ENTRIES_PER_LIST_PAGE).enumerate() {
            mem.store_list(list_pa(j), chunk, list_pa(j + 1));
        }
        let size = size_for(n as u64, 0);
        let mut each = Vec::new();
        let by_each = decode_each(&mut mem, list_pa(0), 0, size, 2000, |i, pa| {
            each.push((i, pa));
            Some(i as usize) != refuse
        });
        let mut chunks = Vec::new();
        let by_chunks = decode_chunks(&mut mem, list_pa(0), 0, size, 2000, |first, entries| {
            for (k, e) in entries.iter().enumerate() {
                chunks.push((first + k as u64, e.get()));
                if Some(first as usize + k) == refuse {
                    return Err(k);
                }
            }
            Ok(())
        });
        prop_assert!(chunks.iter().all(|&(_, pa)| pa & 0xfff == 0), "a chunk holds aligned entries only");
        // The model: pages visited in order until the first refused or unaligned one; an
        // unaligned entry is never visited.
        let u = unaligned.filter(|&u| u < n);
        let r = refuse.filter(|&r| r < n);
        let (expected, visited) = match (u, r) {
            (Some(u), r) if r.is_none_or(|r| u <= r) => (
                Err(PageListError::EntryUnaligned { index: u as u64, value: pages[u] }),
                u,
            ),
            (_, Some(r)) => (
                Err(PageListError::Refused { index: r as u64, value: pages[r] }),
                r + 1,
            ),
            _ => (
                Ok(ListShape { offset: 0, size, num_pages: n as u64 }),
                n,
            ),
        };
        let model: Vec<(u64, u64)> = (0..visited).map(|i| (i as u64, pages[i])).collect();
        prop_assert_eq!(&by_chunks, &expected);
        prop_assert_eq!(&by_each, &expected);
        prop_assert_eq!(&chunks, &model);
        prop_assert_eq!(&each, &model);
    }

    /// A kept buffer (`decode_chunks_in`) decodes as a fresh one does, whatever it held: here
    /// the garbage `fill` and then a longer list decoded just before, whose entries and next
    /// pointer lie past what the shorter one reads.
    #[test]
    fn a_kept_buffer_decodes_as_a_fresh_one(first in 1usize..1100, second in 1usize..1100, fill in any::<u8>()) {
        let mut mem = MockMem::default();
        let lists = |mem: &mut MockMem, base: usize, n: usize| {
            let pages: Vec<u64> = (0..n).map(|i| data_pa(base + i)).collect();
            for (j, chunk) in pages.chunks(ENTRIES_PER_LIST_PAGE).enumerate() {
                mem.store_list(list_pa(base + j), chunk, list_pa(base + j + 1));
            }
        };
        lists(&mut mem, 0, first);
        lists(&mut mem, 3000, second);
        let mut kept = ListPage::new();
        kept.as_mut_bytes().fill(fill);
        let decode = |mem: &mut MockMem, page: Option<&mut ListPage>, base: usize, n: usize| {
            let mut got = Vec::new();
            let visit = |first: u64, entries: &[U64]| {
                got.extend(entries.iter().enumerate().map(|(k, e)| (first + k as u64, e.get())));
                Ok(())
            };
            let size = size_for(n as u64, 0);
            let shape = match page {
                Some(page) => decode_chunks_in(mem, page, list_pa(base), 0, size, 2000, visit),
                None => decode_chunks(mem, list_pa(base), 0, size, 2000, visit),
            };
            (shape, got)
        };
        let kept_first = decode(&mut mem, Some(&mut kept), 0, first);
        prop_assert_eq!(&kept_first, &decode(&mut mem, None, 0, first));
        let kept_second = decode(&mut mem, Some(&mut kept), 3000, second);
        prop_assert_eq!(&kept_second, &decode(&mut mem, None, 3000, second));
        prop_assert_eq!(kept_second.1.len(), second);
    }
}
