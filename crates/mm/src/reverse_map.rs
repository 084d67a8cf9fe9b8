//! Reverse map: which virtual pages of the window map a physical page, and for whom.
//!
//! OP-TEE never had this (`phys_to_virt` on the SHM window returns NULL). Keys are ordered
//! (physical page, owner, virtual page), so every lookup — all mappings of a page, or the one of a
//! given owner — is one O(log n) descent, also when the same page is mapped at several addresses.
//! The three parts are packed into one `u128` (page numbers of 64-bit addresses take 52 bits,
//! owners 16), which keeps tree nodes small and comparisons cheap.

use crate::addr::{PhysAddr, VirtAddr};
use alloc::collections::BTreeSet;
use teeshm_abi::GuestId;

/// One reverse-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReverseEntry {
    /// Physical page (aligned).
    pub pa: PhysAddr,
    /// The guest the mapping belongs to.
    pub owner: GuestId,
    /// Virtual page (aligned).
    pub va: VirtAddr,
}

/// Physical page → (owner, virtual page) for every page mapped in the window.
#[derive(Debug, Clone, Default)]
pub struct ReverseMap {
    entries: BTreeSet<u128>,
}

const PAGE_BITS: u32 = 56;
const PAGE_FIELD: u128 = (1 << PAGE_BITS) - 1;

/// Packs (physical page, owner, virtual page) so that integer order is tuple order.
fn key(pa_page: u64, owner: GuestId, va_page: u64) -> u128 {
    (u128::from(pa_page) << (PAGE_BITS + 16))
        | (u128::from(owner.raw()) << PAGE_BITS)
        | (u128::from(va_page) & PAGE_FIELD)
}

fn key_of(entry: ReverseEntry) -> u128 {
    key(entry.pa.page_number(), entry.owner, entry.va.page_number())
}

impl ReverseMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `owner` maps physical page `pa` at virtual page `va`. Returns false if that
    /// exact entry was already there.
    pub fn insert(&mut self, entry: ReverseEntry) -> bool {
        self.entries.insert(key_of(entry))
    }

    /// Forgets an entry. Returns false if it was not there.
    pub fn remove(&mut self, entry: ReverseEntry) -> bool {
        self.entries.remove(&key_of(entry))
    }

    /// Whether exactly this entry is recorded.
    pub fn contains(&self, entry: ReverseEntry) -> bool {
        self.entries.contains(&key_of(entry))
    }

    /// A virtual address of `pa` (same page offset), preferring `owner`'s mapping when given:
    /// `Some(owner)` returns only that owner's lowest mapping, `None` the lowest of anyone's.
    pub fn phys_to_virt(&self, pa: PhysAddr, owner: Option<GuestId>) -> Option<VirtAddr> {
        let page = pa.page_number();
        let (low, high) = match owner {
            Some(owner) => (key(page, owner, 0), key(page, owner, u64::MAX)),
            None => (
                key(page, GuestId(0), 0),
                key(page, GuestId(u16::MAX), u64::MAX),
            ),
        };
        let found = self.entries.range(low..=high).next()?;
        let entry = to_entry(found)?;
        entry.va.checked_add(pa.page_offset())
    }

    /// Every mapping of the page holding `pa`, ordered by owner then address.
    pub fn mappings_of(&self, pa: PhysAddr) -> impl Iterator<Item = ReverseEntry> + '_ {
        let page = pa.page_number();
        self.entries
            .range(key(page, GuestId(0), 0)..=key(page, GuestId(u16::MAX), u64::MAX))
            .filter_map(to_entry)
    }

    /// Every entry, ordered by physical page.
    pub fn iter(&self) -> impl Iterator<Item = ReverseEntry> + '_ {
        self.entries.iter().filter_map(to_entry)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn to_entry(&packed: &u128) -> Option<ReverseEntry> {
    let pa = u64::try_from(packed >> (PAGE_BITS + 16)).ok()?;
    let owner = u16::try_from((packed >> PAGE_BITS) & 0xffff).ok()?;
    let va = u64::try_from(packed & PAGE_FIELD).ok()?;
    Some(ReverseEntry {
        pa: PhysAddr::from_page_number(pa)?,
        owner: GuestId(owner),
        va: VirtAddr::from_page_number(va)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn entry(pa: u64, owner: u16, va: u64) -> ReverseEntry {
        ReverseEntry {
            pa: PhysAddr(pa),
            owner: GuestId(owner),
            va: VirtAddr(va),
        }
    }

    #[test]
    fn same_page_at_two_addresses() {
        let mut r = ReverseMap::new();
        assert!(r.insert(entry(0x4000_0000, 2, 0x9000)));
        assert!(r.insert(entry(0x4000_0000, 1, 0x5000)));
        assert!(!r.insert(entry(0x4000_0000, 1, 0x5000)));
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), None),
            Some(VirtAddr(0x5123))
        );
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), Some(GuestId(2))),
            Some(VirtAddr(0x9123))
        );
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), Some(GuestId(3))),
            None
        );
        assert_eq!(r.phys_to_virt(PhysAddr(0x4000_1000), None), None);
        assert_eq!(r.mappings_of(PhysAddr(0x4000_0fff)).count(), 2);
        assert!(r.remove(entry(0x4000_0000, 1, 0x5000)));
        assert!(!r.remove(entry(0x4000_0000, 1, 0x5000)));
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0000), None),
            Some(VirtAddr(0x9000))
        );
        assert_eq!(r.len(), 1);
    }

    proptest! {
        /// Against a plain list: lookups return what a linear scan would.
        #[test]
        fn agrees_with_list_model(ops in proptest::collection::vec((0u64..16, 0u16..4, 0u64..16, any::<bool>()), 1..100),
                                  queries in proptest::collection::vec((0u64..16, proptest::option::of(0u16..4)), 1..20)) {
            let mut r = ReverseMap::new();
            let mut model: Vec<ReverseEntry> = Vec::new();
            for (pa, owner, va, add) in ops {
                let e = entry(pa * 4096, owner, va * 4096);
                if add {
                    prop_assert_eq!(r.insert(e), !model.contains(&e));
                    if !model.contains(&e) { model.push(e); }
                } else {
                    prop_assert_eq!(r.remove(e), model.contains(&e));
                    model.retain(|m| *m != e);
                }
            }
            prop_assert_eq!(r.len(), model.len());
            for (pa, owner) in queries {
                let expected = model.iter()
                    .filter(|e| e.pa.get() == pa * 4096 && owner.is_none_or(|o| e.owner == GuestId(o)))
                    .min_by_key(|e| (e.owner, e.va))
                    .map(|e| VirtAddr(e.va.get() + 7));
                prop_assert_eq!(r.phys_to_virt(PhysAddr(pa * 4096 + 7), owner.map(GuestId)), expected);
            }
        }
    }
}
