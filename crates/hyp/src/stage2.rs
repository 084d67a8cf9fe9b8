//! A guest's stage-2 translation: which physical page backs each page of its IPA space.

use crate::error::HypError;
use alloc::collections::BTreeMap;

/// The page size of stage 2, of page lists and of OP-TEE's NONCONTIG data pages.
pub const PAGE_SIZE: u64 = 4096;
pub(crate) const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// A guest's stage-2 translation: IPA page → PA page (4 KiB), built by the platform (the
/// simulator scatters each guest's RAM over physical memory).
///
/// It is the mediator's only notion of "the guest's RAM": an IPA is guest RAM exactly when its
/// page is mapped here, so every address a guest hands over is checked against it. The map is
/// ordered (O(log pages) per translation) and sparse, so a guest may have holes, and two guests'
/// IPA ranges may be laid out anywhere. The platform keeps different guests' PAs disjoint; the
/// mediator relies on that for isolation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stage2 {
    pages: BTreeMap<u64, u64>,
    /// PA page → how many IPA pages it backs, so that "is this PA the guest's RAM" costs
    /// O(log pages) (the checker asks it of every pinned page after every step).
    backing: BTreeMap<u64, u32>,
}

impl Stage2 {
    /// An empty translation (a guest with no RAM yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Backs IPA page `ipa_page` with PA page `pa_page`.
    ///
    /// Remapping is refused: a page the TEE may hold through a pin must not change under it, and
    /// a platform that remaps by accident should hear about it. To move a page, unmap it first
    /// (which the mediator refuses while it is pinned).
    ///
    /// # Errors
    /// [`HypError::Unaligned`] for an address not 4 KiB aligned, [`HypError::AlreadyMapped`] if
    /// the IPA page is mapped.
    pub fn map(&mut self, ipa_page: u64, pa_page: u64) -> Result<(), HypError> {
        for addr in [ipa_page, pa_page] {
            if addr & PAGE_MASK != 0 {
                return Err(HypError::Unaligned { addr });
            }
        }
        if self.pages.contains_key(&ipa_page) {
            return Err(HypError::AlreadyMapped { ipa: ipa_page });
        }
        self.pages.insert(ipa_page, pa_page);
        *self.backing.entry(pa_page).or_default() += 1;
        Ok(())
    }

    /// Removes the mapping of IPA page `ipa_page` and returns the PA page that backed it (for
    /// ballooning; [`crate::Mediator::unmap_guest_page`] refuses pinned pages).
    ///
    /// # Errors
    /// [`HypError::Unaligned`], or [`HypError::NotGuestRam`] if the page is not mapped.
    pub fn unmap(&mut self, ipa_page: u64) -> Result<u64, HypError> {
        if ipa_page & PAGE_MASK != 0 {
            return Err(HypError::Unaligned { addr: ipa_page });
        }
        let pa_page = self
            .pages
            .remove(&ipa_page)
            .ok_or(HypError::NotGuestRam { ipa: ipa_page })?;
        if let Some(n) = self.backing.get_mut(&pa_page) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.backing.remove(&pa_page);
            }
        }
        Ok(pa_page)
    }

    /// Whether PA page `pa_page` backs some page of this guest's RAM.
    pub fn backs(&self, pa_page: u64) -> bool {
        self.backing.contains_key(&pa_page)
    }

    /// Of `pa_pages` (sorted, no repeats), those that back no page of this guest's RAM. Merges
    /// the two sorted sets when `pa_pages` is a sizeable fraction of the RAM, looks each up
    /// otherwise; either way at most O(RAM pages).
    pub fn not_backing<'a>(
        &'a self,
        pa_pages: impl ExactSizeIterator<Item = u64> + 'a,
    ) -> impl Iterator<Item = u64> + 'a {
        let merge = pa_pages.len().saturating_mul(16) >= self.backing.len();
        let mut backed = self.backing.keys().copied().peekable();
        pa_pages.filter(move |&pa| {
            if merge {
                while backed.next_if(|&b| b < pa).is_some() {}
                backed.peek() != Some(&pa)
            } else {
                !self.backing.contains_key(&pa)
            }
        })
    }

    /// The PA of `ipa` (same offset within the page), or `None` when it is not guest RAM.
    pub fn translate(&self, ipa: u64) -> Option<u64> {
        let pa_page = self.pages.get(&(ipa & !PAGE_MASK))?;
        Some(pa_page | (ipa & PAGE_MASK))
    }

    /// Pages of guest RAM.
    pub fn ram_pages(&self) -> u64 {
        self.pages.len() as u64
    }

    /// Every mapping, `(ipa_page, pa_page)`, in IPA order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.iter().map(|(&ipa, &pa)| (ipa, pa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn map_translate_unmap() {
        let mut s = Stage2::new();
        assert_eq!(s.ram_pages(), 0);
        assert_eq!(s.translate(0), None);
        s.map(0x8000_0000, 0x4123_4000).unwrap();
        s.map(0x8000_1000, 0x4000_0000).unwrap();
        assert_eq!(s.ram_pages(), 2);
        assert_eq!(s.translate(0x8000_0000), Some(0x4123_4000));
        assert_eq!(s.translate(0x8000_0fff), Some(0x4123_4fff));
        assert_eq!(s.translate(0x8000_1234), Some(0x4000_0234));
        assert_eq!(s.translate(0x8000_2000), None);
        assert_eq!(s.translate(0x7fff_ffff), None);
        assert_eq!(
            s.iter().collect::<std::vec::Vec<_>>(),
            [(0x8000_0000, 0x4123_4000), (0x8000_1000, 0x4000_0000)]
        );
        assert!(s.backs(0x4123_4000) && s.backs(0x4000_0000) && !s.backs(0x4000_1000));
        assert_eq!(s.unmap(0x8000_0000), Ok(0x4123_4000));
        assert_eq!(s.translate(0x8000_0010), None);
        assert!(!s.backs(0x4123_4000));
        assert_eq!(
            s.unmap(0x8000_0000),
            Err(HypError::NotGuestRam { ipa: 0x8000_0000 })
        );
        assert_eq!(
            s.unmap(0x8000_0001),
            Err(HypError::Unaligned { addr: 0x8000_0001 })
        );
    }

    #[test]
    fn refuses_unaligned_and_remap() {
        let mut s = Stage2::new();
        assert_eq!(
            s.map(0x1001, 0x2000),
            Err(HypError::Unaligned { addr: 0x1001 })
        );
        assert_eq!(
            s.map(0x1000, 0x2800),
            Err(HypError::Unaligned { addr: 0x2800 })
        );
        s.map(0x1000, 0x2000).unwrap();
        assert_eq!(
            s.map(0x1000, 0x2000),
            Err(HypError::AlreadyMapped { ipa: 0x1000 })
        );
        assert_eq!(
            s.map(0x1000, 0x3000),
            Err(HypError::AlreadyMapped { ipa: 0x1000 })
        );
        assert_eq!(s.translate(0x1000), Some(0x2000));
        // The top page of the address space works and its offsets do not wrap.
        s.map(!PAGE_MASK, 0x5000).unwrap();
        assert_eq!(s.translate(u64::MAX), Some(0x5fff));
    }

    proptest! {
        /// Against a plain hash map: translate keeps the offset, every unmapped page answers
        /// None, remaps are refused and leave the old mapping, and a PA backs the guest's RAM
        /// while some IPA maps it (PAs drawn from few pages, so that they alias).
        #[test]
        fn agrees_with_model(
            ops in proptest::collection::vec((0u64..64, 0u64..32, any::<bool>()), 1..200),
            probes in proptest::collection::vec(0u64..64 * 4096 + 100, 1..50),
        ) {
            let mut s = Stage2::new();
            let mut model: HashMap<u64, u64> = HashMap::new();
            for (ipa, pa, unmap) in ops {
                let (ipa, pa) = (ipa * PAGE_SIZE, pa * PAGE_SIZE);
                if unmap {
                    prop_assert_eq!(s.unmap(ipa).ok(), model.remove(&ipa));
                } else if let std::collections::hash_map::Entry::Vacant(e) = model.entry(ipa) {
                    prop_assert_eq!(s.map(ipa, pa), Ok(()));
                    e.insert(pa);
                } else {
                    prop_assert_eq!(s.map(ipa, pa), Err(HypError::AlreadyMapped { ipa }));
                }
                prop_assert_eq!(s.ram_pages(), model.len() as u64);
                for pa in 0..32 {
                    let pa = pa * PAGE_SIZE;
                    prop_assert_eq!(s.backs(pa), model.values().any(|&p| p == pa));
                }
                // Both ways of `not_backing`: few pages (lookups) and many (a merge).
                for n in [1, 32] {
                    let pages: std::vec::Vec<u64> = (0..n).map(|p| p * PAGE_SIZE).collect();
                    let want: std::vec::Vec<u64> =
                        pages.iter().copied().filter(|&p| !s.backs(p)).collect();
                    let got: std::vec::Vec<u64> = s.not_backing(pages.into_iter()).collect();
                    prop_assert_eq!(got, want);
                }
            }
            for ipa in probes {
                let want = model.get(&(ipa & !PAGE_MASK)).map(|pa| pa + ipa % PAGE_SIZE);
                prop_assert_eq!(s.translate(ipa), want);
            }
        }

        #[test]
        fn translate_never_panics(ipa: u64, pa_page in 0u64..1 << 40) {
            let mut s = Stage2::new();
            s.map(ipa & !PAGE_MASK, pa_page * PAGE_SIZE).unwrap();
            prop_assert_eq!(s.translate(ipa), Some(pa_page * PAGE_SIZE + (ipa & PAGE_MASK)));
            prop_assert_eq!(s.translate(ipa ^ (1 << 63)), None);
        }
    }
}
