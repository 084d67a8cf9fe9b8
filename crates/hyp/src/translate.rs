//! IPA → PA translation of buffers: a guest's NONCONTIG page list (Xen's `translate_noncontig`)
//! or a contiguous IPA range becomes pinned PA pages and a shadow list the TEE reads.

use crate::config::HypLimits;
use crate::error::HypError;
use crate::guest::{Buffer, GuestState};
use crate::memory::{GuestReader, MachineMemory};
use crate::stage2::{PAGE_MASK, PAGE_SIZE};
use alloc::vec::Vec;
use core::convert::Infallible;
use teeshm_abi::page_list::{self, EncodeError};

impl GuestState {
    /// Translates the guest's NONCONTIG page list at `buf_ptr` (first list page IPA | offset)
    /// for a buffer of `size` bytes: each list page is read once from guest memory, every data
    /// page must be guest RAM and is pinned, and a shadow list of PAs is written into hypervisor
    /// pages. Returns the `buf_ptr` to give the TEE and the buffer (one more buffer held).
    ///
    /// Nothing is held when it fails.
    pub(crate) fn translate_noncontig<M: MachineMemory>(
        &mut self,
        mem: &mut M,
        limits: &HypLimits,
        buf_ptr: u64,
        size: u64,
    ) -> Result<(u64, Buffer), HypError> {
        self.check_buffer_room(limits)?;
        let list = {
            let mut reader = GuestReader {
                stage2: &self.stage2,
                mem: &*mem,
            };
            page_list::decode(&mut reader, buf_ptr, size, limits.max_buffer_pages)
                .map_err(HypError::from_page_list)?
        };
        let offset = u64::from(list.offset());
        let mut pages = list.into_pages();
        for page in &mut pages {
            *page = self
                .stage2
                .translate(*page)
                .ok_or(HypError::NotGuestRam { ipa: *page })?;
        }
        self.adopt(mem, limits, pages, offset, size)
    }

    /// Translates `size` bytes of guest memory from IPA `ipa` on (a contiguous range, as in a
    /// contiguous RPC `SHM_ALLOC` answer). Guest-contiguous is not machine-contiguous, so the
    /// TEE gets a NONCONTIG shadow list of the translated pages. Nothing is held when it fails.
    pub(crate) fn translate_contiguous<M: MachineMemory>(
        &mut self,
        mem: &mut M,
        limits: &HypLimits,
        ipa: u64,
        size: u64,
    ) -> Result<(u64, Buffer), HypError> {
        self.check_buffer_room(limits)?;
        let offset = ipa & PAGE_MASK;
        let count = page_list::num_pages(offset, size).map_err(HypError::PageList)?;
        if count > limits.max_buffer_pages {
            return Err(HypError::BufferTooLarge {
                pages: count,
                limit: limits.max_buffer_pages,
            });
        }
        let first = ipa & !PAGE_MASK;
        let mut pages = Vec::new();
        let cap = usize::try_from(count).map_err(|_| HypError::OutOfMemory)?;
        pages
            .try_reserve_exact(cap)
            .map_err(|_| HypError::OutOfMemory)?;
        for i in 0..count {
            let page_ipa = i
                .checked_mul(PAGE_SIZE)
                .and_then(|off| first.checked_add(off))
                .ok_or(HypError::NotGuestRam { ipa })?;
            let pa = self
                .stage2
                .translate(page_ipa)
                .ok_or(HypError::NotGuestRam { ipa: page_ipa })?;
            pages.push(pa);
        }
        self.adopt(mem, limits, pages, offset, size)
    }

    /// Pins translated `pages` and writes their shadow list.
    fn adopt<M: MachineMemory>(
        &mut self,
        mem: &mut M,
        limits: &HypLimits,
        pages: Vec<u64>,
        offset: u64,
        size: u64,
    ) -> Result<(u64, Buffer), HypError> {
        self.pins.pin_all(&pages, limits.max_pinned_pages)?;
        let needed = page_list::list_pages_needed(pages.len() as u64);
        let mut lists = Vec::new();
        let reserved = usize::try_from(needed)
            .ok()
            .and_then(|n| lists.try_reserve_exact(n).ok());
        if reserved.is_none() {
            self.pins.unpin_all(&pages);
            return Err(HypError::OutOfMemory);
        }
        let mut buffer = Buffer { pages, lists };
        for _ in 0..needed {
            match self.alloc_shadow(mem, limits) {
                Ok(pa) => buffer.lists.push(pa),
                Err(e) => {
                    self.pins.unpin_all(&buffer.pages);
                    self.free_shadows(mem, &buffer.lists);
                    return Err(e);
                }
            }
        }
        let writer = &*mem;
        let encoded = page_list::encode_with::<Infallible>(
            &buffer.pages,
            offset,
            size,
            &buffer.lists,
            |pa, bytes| {
                writer.write(pa, bytes);
                Ok(())
            },
        );
        match encoded {
            Ok(buf_ptr) => {
                self.buffers.add(1);
                Ok((buf_ptr, buffer))
            }
            Err(e) => {
                self.pins.unpin_all(&buffer.pages);
                self.free_shadows(mem, &buffer.lists);
                Err(match e {
                    EncodeError::Layout(e) => HypError::PageList(e),
                    EncodeError::OutOfMemory { .. } => HypError::OutOfMemory,
                    _ => HypError::BadParam {
                        index: 0,
                        problem: "page list could not be rebuilt",
                    },
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stage2::Stage2;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::{BTreeSet, HashMap};
    use teeshm_abi::page_list::NsMemory;

    /// Byte-addressed sparse memory with a page pool for shadows.
    #[derive(Default)]
    pub(crate) struct TestMemory {
        pub(crate) bytes: RefCell<HashMap<u64, u8>>,
        pub(crate) next_free: u64,
        pub(crate) free: Vec<u64>,
        pub(crate) held: BTreeSet<u64>,
        pub(crate) limit: Option<usize>,
    }

    impl TestMemory {
        pub(crate) fn new() -> Self {
            Self {
                next_free: 0x9_0000_0000,
                ..Self::default()
            }
        }
    }

    impl MachineMemory for TestMemory {
        fn read(&self, pa: u64, buf: &mut [u8]) {
            let bytes = self.bytes.borrow();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes.get(&(pa + i as u64)).copied().unwrap_or(0);
            }
        }
        fn write(&self, pa: u64, data: &[u8]) {
            let mut bytes = self.bytes.borrow_mut();
            for (i, b) in data.iter().enumerate() {
                bytes.insert(pa + i as u64, *b);
            }
        }
        fn alloc_page(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.held.len() >= l) {
                return None;
            }
            let pa = self.free.pop().unwrap_or_else(|| {
                self.next_free += PAGE_SIZE;
                self.next_free
            });
            assert!(self.held.insert(pa));
            Some(pa)
        }
        fn free_page(&mut self, pa: u64) {
            assert!(self.held.remove(&pa), "double free of {pa:#x}");
            self.free.push(pa);
        }
        fn pool_pages(&self) -> u64 {
            self.limit.map_or(u64::MAX, |l| l as u64)
        }
    }

    /// Reads a PA list back (as the TEE would).
    struct PaReader<'a>(&'a TestMemory);
    impl NsMemory for PaReader<'_> {
        type Error = Infallible;
        fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), Infallible> {
            self.0.read(pa, buf);
            Ok(())
        }
    }

    /// A guest of `pages` pages at IPA 0x8000_0000 whose page i lies at PA 0x4000_0000 +
    /// ((i * 7919) % pages) pages.
    fn guest(pages: u64) -> GuestState {
        let mut s = Stage2::new();
        for i in 0..pages {
            s.map(
                0x8000_0000 + i * PAGE_SIZE,
                0x4000_0000 + (i * 7919 % pages) * PAGE_SIZE,
            )
            .unwrap();
        }
        GuestState::new(s)
    }

    /// Writes a guest page list for `ipas` into guest pages starting at `list_ipa`.
    fn write_list(
        g: &GuestState,
        mem: &TestMemory,
        ipas: &[u64],
        offset: u64,
        size: u64,
        list_ipa: u64,
    ) -> u64 {
        let n = page_list::list_pages_needed(ipas.len() as u64);
        let lists: Vec<u64> = (0..n).map(|i| list_ipa + i * PAGE_SIZE).collect();
        page_list::encode_with::<()>(ipas, offset, size, &lists, |ipa, bytes| {
            mem.write(g.stage2.translate(ipa).unwrap(), bytes);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn noncontig_round_trip_over_two_list_pages() {
        let mut g = guest(2048);
        let mut mem = TestMemory::new();
        let limits = HypLimits::default();
        let ipas: Vec<u64> = (0..600)
            .map(|i| 0x8000_0000 + (100 + i) * PAGE_SIZE)
            .collect();
        let size = 600 * PAGE_SIZE - 0x123 - 7;
        let buf_ptr = write_list(&g, &mem, &ipas, 0x123, size, 0x8000_0000 + 1000 * PAGE_SIZE);
        let (shadow_ptr, buffer) = g
            .translate_noncontig(&mut mem, &limits, buf_ptr, size)
            .unwrap();
        assert_eq!(shadow_ptr & PAGE_MASK, 0x123);
        assert_eq!(buffer.lists.len(), 2);
        assert_eq!(g.shadow_pages.get(), 2);
        assert_eq!(g.pins.total(), 600);
        assert_eq!(g.buffers.get(), 1);
        let decoded = page_list::decode(&mut PaReader(&mem), shadow_ptr, size, 1 << 20).unwrap();
        let want: Vec<u64> = ipas
            .iter()
            .map(|&i| g.stage2.translate(i).unwrap())
            .collect();
        assert_eq!(decoded.pages(), &want[..]);
        assert_eq!(buffer.pages, want);
        g.release_buffer(&mut mem, buffer);
        assert_eq!(
            (g.pins.total(), g.shadow_pages.get(), g.buffers.get()),
            (0, 0, 0)
        );
        assert!(mem.held.is_empty());
    }

    #[test]
    fn refusals_hold_nothing() {
        let mut g = guest(64);
        let mut mem = TestMemory::new();
        let limits = HypLimits::default();
        let inside = 0x8000_0000;
        let outside = 0x8000_0000 + 64 * PAGE_SIZE;
        // A data page outside guest RAM.
        let buf_ptr = write_list(
            &g,
            &mem,
            &[inside, outside],
            0,
            2 * PAGE_SIZE,
            inside + PAGE_SIZE,
        );
        assert_eq!(
            g.translate_noncontig(&mut mem, &limits, buf_ptr, 2 * PAGE_SIZE)
                .unwrap_err(),
            HypError::NotGuestRam { ipa: outside }
        );
        // The list page outside guest RAM.
        assert_eq!(
            g.translate_noncontig(&mut mem, &limits, outside | 8, 10)
                .unwrap_err(),
            HypError::NotGuestRam { ipa: outside }
        );
        // Size 0, too large.
        assert!(matches!(
            g.translate_noncontig(&mut mem, &limits, buf_ptr, 0),
            Err(HypError::PageList(_))
        ));
        let small = HypLimits {
            max_buffer_pages: 1,
            ..limits
        };
        assert_eq!(
            g.translate_noncontig(&mut mem, &small, buf_ptr, 2 * PAGE_SIZE)
                .unwrap_err(),
            HypError::BufferTooLarge { pages: 2, limit: 1 }
        );
        // Pins and buffers limits.
        let pins = HypLimits {
            max_pinned_pages: 1,
            ..limits
        };
        assert!(matches!(
            g.translate_contiguous(&mut mem, &pins, inside, 2 * PAGE_SIZE),
            Err(HypError::TooManyPins { .. })
        ));
        let none = HypLimits {
            max_buffers: 0,
            ..limits
        };
        assert!(matches!(
            g.translate_contiguous(&mut mem, &none, inside, 1),
            Err(HypError::TooManyBuffers { .. })
        ));
        // No shadow page.
        mem.limit = Some(0);
        assert_eq!(
            g.translate_contiguous(&mut mem, &limits, inside, 1)
                .unwrap_err(),
            HypError::NoShadowPage
        );
        // The guest's share of the pool is spent: refused before the pool is asked.
        mem.limit = None;
        let spent = HypLimits {
            max_shadow_pages: 0,
            ..limits
        };
        assert_eq!(
            g.translate_contiguous(&mut mem, &spent, inside, 1)
                .unwrap_err(),
            HypError::TooManyShadowPages { limit: 0 }
        );
        // A contiguous range running off the end of guest RAM, or wrapping.
        assert_eq!(
            g.translate_contiguous(&mut mem, &limits, outside - 16, 32)
                .unwrap_err(),
            HypError::NotGuestRam { ipa: outside }
        );
        assert!(
            g.translate_contiguous(&mut mem, &limits, u64::MAX - 8, 32)
                .is_err()
        );
        assert_eq!(
            (g.pins.total(), g.shadow_pages.get(), g.buffers.get()),
            (0, 0, 0)
        );
        assert!(mem.held.is_empty());
    }

    #[test]
    fn contiguous_becomes_a_shadow_list() {
        let mut g = guest(16);
        let mut mem = TestMemory::new();
        let (ptr, buffer) = g
            .translate_contiguous(&mut mem, &HypLimits::default(), 0x8000_0ff0, 0x20)
            .unwrap();
        assert_eq!(ptr & PAGE_MASK, 0xff0);
        let decoded = page_list::decode(&mut PaReader(&mem), ptr, 0x20, 16).unwrap();
        assert_eq!(
            decoded.pages(),
            &[
                g.stage2.translate(0x8000_0000).unwrap(),
                g.stage2.translate(0x8000_1000).unwrap()
            ]
        );
        assert_eq!(buffer.pages.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any list of guest pages (some possibly outside RAM) either translates to exactly the
        /// stage-2 translation of each page, or is refused holding nothing.
        #[test]
        fn translation_matches_stage2(
            picks in proptest::collection::vec(0u64..80, 1..700),
            offset in 0u64..4096,
            trim in 0u64..4096,
        ) {
            let mut g = guest(64);
            let mut mem = TestMemory::new();
            let limits = HypLimits::default();
            let ipas: Vec<u64> = picks.iter().map(|p| 0x8000_0000 + p * PAGE_SIZE).collect();
            let n = ipas.len() as u64;
            // Any size in ((n - 1) pages - offset, n pages - offset] spans exactly n pages.
            prop_assume!(offset + trim < n * PAGE_SIZE);
            let size = n * PAGE_SIZE - offset - trim;
            prop_assert_eq!(page_list::num_pages(offset, size).unwrap(), n);
            // Lists live in guest memory too, where the picks are; write them in a scratch
            // stage 2 mapping beyond RAM that the test maps for this purpose.
            let list_ipa = 0x9000_0000;
            let list_pages = page_list::list_pages_needed(n);
            for i in 0..list_pages {
                g.stage2.map(list_ipa + i * PAGE_SIZE, 0x7000_0000 + i * PAGE_SIZE).unwrap();
            }
            let buf_ptr = write_list(&g, &mem, &ipas, offset, size, list_ipa);
            let result = g.translate_noncontig(&mut mem, &limits, buf_ptr, size);
            let outside = ipas.iter().any(|&i| g.stage2.translate(i).is_none());
            match result {
                Ok((ptr, buffer)) => {
                    prop_assert!(!outside);
                    let decoded = page_list::decode(&mut PaReader(&mem), ptr, size, 1 << 20).unwrap();
                    let want: Vec<u64> = ipas.iter().map(|&i| g.stage2.translate(i).unwrap()).collect();
                    prop_assert_eq!(decoded.pages(), &want[..]);
                    prop_assert_eq!(u64::from(decoded.offset()), offset);
                    prop_assert_eq!(g.pins.total(), n);
                    g.release_buffer(&mut mem, buffer);
                }
                Err(e) => {
                    prop_assert!(outside, "refused: {e}");
                    prop_assert!(matches!(e, HypError::NotGuestRam { .. }), "{}", e);
                }
            }
            prop_assert_eq!((g.pins.total(), g.shadow_pages.get(), g.buffers.get()), (0, 0, 0));
            prop_assert!(mem.held.is_empty());
        }

        /// Garbage in guest list pages never panics and never leaks.
        #[test]
        fn garbage_lists(words in proptest::collection::vec(any::<u64>(), 512), buf_ptr: u64, size: u64) {
            let mut g = guest(4);
            let mut mem = TestMemory::new();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            mem.write(g.stage2.translate(0x8000_0000).unwrap(), &bytes);
            let limits = HypLimits { max_buffer_pages: 2048, ..HypLimits::default() };
            for ptr in [buf_ptr, 0x8000_0000 | (buf_ptr & PAGE_MASK)] {
                if let Ok((_, buffer)) = g.translate_noncontig(&mut mem, &limits, ptr, size) {
                    g.release_buffer(&mut mem, buffer);
                }
            }
            prop_assert_eq!((g.pins.total(), g.shadow_pages.get(), g.buffers.get()), (0, 0, 0));
        }
    }
}
