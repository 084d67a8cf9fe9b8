//! The `page_list` target: the NONCONTIG decoder over a normal-world memory made of the
//! input, its contract checked on every success, and the encode/decode round trip.

use crate::{Input, PAGE};
use std::collections::BTreeMap;
use teeshm_abi::page_list::{self, NsMemory};

/// Normal-world memory made of the input: page `pa` is chunk `(pa / 4096) % chunks` (zeros past
/// the end), a read of the page `fail` fails. Counts reads and checks the decoder's contract.
struct InputMemory<'a> {
    data: &'a [u8],
    fail: Option<u64>,
    reads: u64,
}

impl NsMemory for InputMemory<'_> {
    type Error = ();

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), ()> {
        assert_eq!(pa % PAGE, 0, "the decoder reads whole aligned pages");
        assert!(buf.len() <= PAGE as usize, "one page at most per read");
        self.reads += 1;
        if self.fail == Some(pa) {
            return Err(());
        }
        let chunks = self.data.len().div_ceil(PAGE as usize).max(1) as u64;
        let start = ((pa / PAGE) % chunks) as usize * PAGE as usize;
        buf.fill(0);
        if let Some(src) = self.data.get(start..) {
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
        }
        Ok(())
    }
}

/// Memory holding exactly some list pages (a round trip).
struct MapMemory(BTreeMap<u64, [u8; 4096]>);

impl NsMemory for MapMemory {
    type Error = ();

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let page = self.0.get(&pa).ok_or(())?;
        buf.copy_from_slice(&page[..buf.len()]);
        Ok(())
    }
}

fn round_trip(pages: &[u64], offset: u64, size: u64) {
    let n = pages.len() as u64;
    let lists: Vec<u64> = (0..page_list::list_pages_needed(n))
        .map(|i| 0x7000_0000 + i * 2 * PAGE)
        .collect();
    let encoded = page_list::encode(pages, offset, size, &lists).expect("valid input encodes");
    let mut written = BTreeMap::new();
    let buf_ptr = page_list::encode_with::<()>(pages, offset, size, &lists, |pa, bytes| {
        written.insert(pa, *bytes);
        Ok(())
    })
    .expect("valid input encodes");
    assert_eq!(buf_ptr, encoded.buf_ptr);
    for (pa, bytes) in lists.iter().zip(&encoded.pages) {
        assert_eq!(written.get(pa), Some(bytes), "encode and encode_with agree");
    }
    let decoded = page_list::decode(&mut MapMemory(written), buf_ptr, size, n)
        .expect("an encoded list decodes");
    assert_eq!(decoded.pages(), pages);
    assert_eq!(u64::from(decoded.offset()), offset);
    assert_eq!(decoded.size(), size);
}

/// The page-list target: decode an arbitrary list, check the contract of every success, and
/// round-trip arbitrary valid buffers through encode and decode.
pub fn page_list(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let buf_ptr = input.u64();
    let size = if flags & 1 == 0 {
        u64::from(input.u16()) * 8
    } else {
        input.u64()
    };
    let max_pages = u64::from(input.u16() % 2048);
    let fail = (flags & 2 != 0).then(|| input.u64() & !(PAGE - 1));
    let memory = input.rest();
    let mut mem = InputMemory {
        data: memory,
        fail,
        reads: 0,
    };
    match page_list::decode(&mut mem, buf_ptr, size, max_pages) {
        Ok(list) => {
            let offset = buf_ptr & (PAGE - 1);
            let count = page_list::num_pages(offset, size).expect("accepted layout is valid");
            assert_eq!(list.num_pages() as u64, count);
            assert!(count <= max_pages);
            assert_eq!(u64::from(list.offset()), offset);
            assert_eq!(list.size(), size);
            assert!(list.pages().iter().all(|p| p % PAGE == 0));
            assert_eq!(
                mem.reads,
                page_list::list_pages_needed(count),
                "one read a list page"
            );
            // Decoding is a function of memory: the same list again gives the same answer.
            let mut again = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            assert_eq!(
                page_list::decode(&mut again, buf_ptr, size, max_pages).ok(),
                Some(list.clone())
            );
            round_trip(list.pages(), offset, size);
            // The visitor form sees the same pages in the same order, and a refusal at any
            // index stops it there.
            let mut seen = Vec::new();
            let mut visit = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            let shape = page_list::decode_each(
                &mut visit,
                buf_ptr & !(PAGE - 1),
                offset,
                size,
                max_pages,
                |i, pa| {
                    assert_eq!(i, seen.len() as u64, "pages in order");
                    seen.push(pa);
                    true
                },
            )
            .expect("decode_each accepts what decode accepts");
            assert_eq!(seen, list.pages());
            assert_eq!(shape.num_pages, count);
            let stop = u64::from(flags) % count;
            let mut refuse = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            let refused = page_list::decode_each(
                &mut refuse,
                buf_ptr & !(PAGE - 1),
                offset,
                size,
                max_pages,
                |i, _| i != stop,
            );
            assert!(
                matches!(refused, Err(page_list::PageListError::Refused { index, .. }) if index == stop)
            );
        }
        Err(e) => {
            if size == 0 {
                assert_eq!(e, page_list::PageListError::ZeroSize);
                assert_eq!(mem.reads, 0, "refused before any read");
            }
            if let Ok(count) = page_list::num_pages(buf_ptr & (PAGE - 1), size)
                && count > max_pages
            {
                assert_eq!(mem.reads, 0, "too many pages refused before any read");
            }
        }
    }
    // An arbitrary valid buffer of up to 1200 pages (three list pages) survives the round trip.
    let n = u64::from(flags >> 2) * 19 + 1;
    let offset = buf_ptr & (PAGE - 1);
    let span = (size % PAGE).max(1);
    let size = ((n - 1) * PAGE).saturating_sub(offset) + span;
    if page_list::num_pages(offset, size) == Ok(n) {
        let seed = buf_ptr | 1;
        let pages: Vec<u64> = (0..n)
            .map(|i| (seed.wrapping_mul(i + 0x9E37_79B9) >> 8) & !(PAGE - 1))
            .collect();
        round_trip(&pages, offset, size);
    }
}
