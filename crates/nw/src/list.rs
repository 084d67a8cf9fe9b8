//! Building NONCONTIG page lists in guest memory (Linux `optee_fill_pages_list`).
//!
//! The list goes into fresh guest pages, not into the buffer, so the buffer keeps every byte;
//! the list pages need not be contiguous (each names the next), which keeps the driver free of
//! any need for contiguous memory however large the buffer.

use alloc::vec::Vec;
use teeshm_abi::page_list::{EncodeError, encode_with, list_pages_needed};

use crate::driver::DriverError;
use crate::ram::{GuestBuffer, GuestRam};

/// A page list written into guest memory: what goes into the tmem `buf_ptr`, and the list pages
/// to give back once the TEE has read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageList {
    /// IPA of the first list page | offset of the buffer in its first data page.
    pub buf_ptr: u64,
    /// The list pages, in chain order.
    pub list_pages: Vec<u64>,
}

impl PageList {
    /// Gives the list pages back.
    pub fn free<R: GuestRam + ?Sized>(self, ram: &mut R) {
        ram.free_pages(&self.list_pages);
    }
}

/// Writes the page list of `buf` into fresh pages of `ram`. On failure nothing stays
/// allocated.
///
/// # Errors
/// [`DriverError::BadBuffer`] for an empty or malformed buffer (a page list cannot describe
/// 0 bytes), [`DriverError::Ram`] when pages run out or a write fails.
pub fn build<R: GuestRam + ?Sized>(
    ram: &mut R,
    buf: &GuestBuffer,
) -> Result<PageList, DriverError> {
    let bad = DriverError::BadBuffer {
        pages: buf.pages.len(),
        offset: buf.offset,
        size: buf.size,
    };
    if buf.size == 0 || !buf.is_well_formed() {
        return Err(bad);
    }
    let lists = ram.alloc_pages(list_pages_needed(buf.pages.len() as u64))?;
    let shared: &R = ram;
    let written = encode_with(&buf.pages, buf.offset, buf.size, &lists, |pa, bytes| {
        shared.write(pa, bytes)
    });
    match written {
        Ok(buf_ptr) => Ok(PageList {
            buf_ptr,
            list_pages: lists,
        }),
        Err(e) => {
            ram.free_pages(&lists);
            Err(match e {
                EncodeError::Write { error, .. } => DriverError::Ram(error),
                _ => bad,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::{PAGE_SIZE, RamError};
    use alloc::collections::{BTreeMap, BTreeSet};
    use proptest::prelude::*;
    use std::vec;
    use teeshm_abi::page_list::{ENTRIES_PER_LIST_PAGE, NsMemory, decode};

    /// Sparse RAM with a scattering allocator that remembers what is allocated.
    #[derive(Default)]
    struct MapRam {
        bytes: core::cell::RefCell<BTreeMap<u64, u8>>,
        next: u64,
        live: BTreeSet<u64>,
        fail_writes: bool,
    }

    impl GuestRam for MapRam {
        fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError> {
            let bytes = self.bytes.borrow();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes.get(&(ipa + i as u64)).copied().unwrap_or(0);
            }
            Ok(())
        }
        fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError> {
            if self.fail_writes {
                return Err(RamError::OutOfRange {
                    ipa,
                    len: data.len() as u64,
                });
            }
            let mut bytes = self.bytes.borrow_mut();
            for (i, b) in data.iter().enumerate() {
                bytes.insert(ipa + i as u64, *b);
            }
            Ok(())
        }
        fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError> {
            let pages: Vec<u64> = (0..n)
                .map(|_| {
                    self.next += 1;
                    // An odd multiplier modulo 2^20: scattered, never repeated.
                    0x4000_0000 + (self.next.wrapping_mul(0x9E37) % 0x10_0000) * PAGE_SIZE
                })
                .collect();
            for p in &pages {
                assert!(self.live.insert(*p), "page {p:#x} handed out twice");
            }
            Ok(pages)
        }
        fn alloc_contiguous(&mut self, _n: u64) -> Result<u64, RamError> {
            Err(RamError::OutOfMemory { pages: 0 })
        }
        fn free_pages(&mut self, pages: &[u64]) {
            for p in pages {
                assert!(self.live.remove(p), "page {p:#x} freed but not allocated");
            }
        }
    }

    struct Reader<'a>(&'a MapRam);

    impl NsMemory for Reader<'_> {
        type Error = RamError;
        fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), RamError> {
            GuestRam::read(self.0, pa, buf)
        }
    }

    fn list_words(ram: &MapRam, page: u64) -> Vec<u64> {
        let mut raw = vec![0u8; PAGE_SIZE as usize];
        GuestRam::read(ram, page, &mut raw).unwrap();
        raw.chunks(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect()
    }

    /// Builds the list of an `offset`/`size` buffer and checks it word by word and through the
    /// secure side's decoder.
    fn check(offset: u64, size: u64) {
        let mut ram = MapRam::default();
        let buf = GuestBuffer::alloc(&mut ram, size, offset).unwrap();
        let list = build(&mut ram, &buf).unwrap();
        let n = buf.pages.len();
        assert_eq!(list.buf_ptr & (PAGE_SIZE - 1), offset);
        assert_eq!(list.buf_ptr & !(PAGE_SIZE - 1), list.list_pages[0]);
        assert_eq!(
            list.list_pages.len(),
            n.div_ceil(ENTRIES_PER_LIST_PAGE),
            "{offset}+{size}"
        );
        for (i, &lp) in list.list_pages.iter().enumerate() {
            let words = list_words(&ram, lp);
            let first = i * ENTRIES_PER_LIST_PAGE;
            for (j, &w) in words[..ENTRIES_PER_LIST_PAGE].iter().enumerate() {
                let want = buf.pages.get(first + j).copied().unwrap_or(0);
                assert_eq!(w, want, "list page {i} entry {j}");
            }
            let next = list.list_pages.get(i + 1).copied().unwrap_or(0);
            assert_eq!(
                words[ENTRIES_PER_LIST_PAGE], next,
                "next pointer of list page {i}"
            );
        }
        let decoded = decode(&mut Reader(&ram), list.buf_ptr, size, u64::MAX).unwrap();
        assert_eq!(decoded.pages(), buf.pages.as_slice());
        assert_eq!(u64::from(decoded.offset()), offset);
        assert_eq!(decoded.size(), size);
        list.free(&mut ram);
        buf.free(&mut ram);
        assert!(ram.live.is_empty());
    }

    #[test]
    fn unaligned_buffers_from_one_byte_to_several_list_pages() {
        let per_list = ENTRIES_PER_LIST_PAGE as u64 * PAGE_SIZE;
        for offset in [0, 1, 8, 0x7ff, 0xfff] {
            for size in [
                1,
                2,
                PAGE_SIZE - offset,
                PAGE_SIZE - offset + 1,
                PAGE_SIZE,
                PAGE_SIZE + 1,
                3 * PAGE_SIZE + 17,
                per_list - offset,
                per_list - offset + 1,
                per_list,
                per_list + 1,
                2 * per_list - offset,
                2 * per_list - offset + 1,
                3 * per_list + 5,
            ] {
                check(offset, size);
            }
        }
    }

    #[test]
    fn page_and_list_page_counts_at_the_edges() {
        // 511 pages fit one list page; the 512th needs a second.
        let per_list = ENTRIES_PER_LIST_PAGE as u64 * PAGE_SIZE;
        for (offset, size, pages, lists) in [
            (0, 1, 1, 1),
            (0xfff, 1, 1, 1),
            (0xfff, 2, 2, 1),
            (0, per_list, 511, 1),
            (1, per_list, 512, 2),
            (0, per_list + 1, 512, 2),
            (0, 2 * per_list, 1022, 2),
            (0, 2 * per_list + 1, 1023, 3),
        ] {
            let mut ram = MapRam::default();
            let buf = GuestBuffer::alloc(&mut ram, size, offset).unwrap();
            assert_eq!(buf.pages.len(), pages, "{offset}+{size}");
            let list = build(&mut ram, &buf).unwrap();
            assert_eq!(list.list_pages.len(), lists, "{offset}+{size}");
        }
    }

    #[test]
    fn malformed_buffers_are_refused_and_nothing_leaks() {
        let mut ram = MapRam::default();
        let good = GuestBuffer::alloc(&mut ram, 5000, 100).unwrap();
        for bad in [
            GuestBuffer {
                size: 0,
                pages: vec![],
                ..good.clone()
            },
            GuestBuffer {
                size: 100_000,
                ..good.clone()
            },
            GuestBuffer {
                offset: 4096,
                ..good.clone()
            },
            GuestBuffer {
                pages: vec![good.pages[0] + 1, good.pages[1]],
                ..good.clone()
            },
        ] {
            assert!(matches!(
                build(&mut ram, &bad),
                Err(DriverError::BadBuffer { .. })
            ));
        }
        ram.fail_writes = true;
        assert!(matches!(build(&mut ram, &good), Err(DriverError::Ram(_))));
        good.free(&mut ram);
        assert!(ram.live.is_empty());
    }

    #[test]
    fn buffer_access_crosses_scattered_pages() {
        let mut ram = MapRam::default();
        let buf = GuestBuffer::alloc(&mut ram, 3 * PAGE_SIZE, 0xffe).unwrap();
        let data: Vec<u8> = (0..buf.size).map(|i| (i * 7) as u8).collect();
        buf.write(&ram, 0, &data).unwrap();
        assert_eq!(buf.read_vec(&ram, 0, buf.size).unwrap(), data);
        assert_eq!(buf.ipa_at(0), Some(buf.pages[0] + 0xffe));
        assert_eq!(buf.ipa_at(2), Some(buf.pages[1]));
        assert_eq!(buf.ipa_at(buf.size), None);
        let mut one = [0u8];
        GuestRam::read(&ram, buf.pages[1] + 5, &mut one).unwrap();
        assert_eq!(one[0], data[7]);
        assert!(buf.write(&ram, buf.size - 1, &[1, 2]).is_err());
        assert!(buf.read(&ram, u64::MAX, &mut one).is_err());
    }

    proptest! {
        #[test]
        fn any_unaligned_buffer_round_trips(offset in 0u64..4096, size in 1u64..(3 * 511 * 4096 + 4096)) {
            check(offset, size);
        }
    }
}
