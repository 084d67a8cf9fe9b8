//! Reverse map: which virtual pages of the window map a physical page, and for whom.
//!
//! OP-TEE never had this (`phys_to_virt` on the SHM window returns NULL). Entries are grouped by
//! the 2 MiB physical frame their page lies in: an ordered tree of frames (few, so its top stays
//! in cache) and, per frame, a sorted vector of packed `u64` (page in frame, owner, virtual page). A
//! lookup — all mappings of a page, or the one of a given owner — is a descent of the frame tree,
//! O(log frames), plus a binary search in one frame, O(log entries of the frame); an insert or
//! remove also moves at most the entries of one frame (at most 512 pages times the mappings of
//! each), never the whole map.

use crate::addr::{PhysAddr, VirtAddr};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
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

/// Pages per frame: 2 MiB of physical memory.
const FRAME_SHIFT: u32 = 9;
const FRAME_MASK: u64 = (1 << FRAME_SHIFT) - 1;

/// Bits of a slot holding the virtual page number: VAs below 2^51, far above the 2^39 the
/// translation tables cover ([`crate::tables::VA_SPACE_SIZE`]).
const VA_PAGE_BITS: u32 = 39;
const VA_PAGE_MASK: u64 = (1 << VA_PAGE_BITS) - 1;

/// An entry inside its frame, packed as (page in frame: 9 bits, owner: 16, virtual page: 39) so
/// that integer order is the sort order and a frame of 512 singly mapped pages fits in 4 KiB.
type Slot = u64;

fn slot(page_in_frame: u64, owner: GuestId, va_page: u64) -> Slot {
    (page_in_frame << (VA_PAGE_BITS + 16)) | (u64::from(owner.raw()) << VA_PAGE_BITS) | va_page
}

fn slot_page(s: Slot) -> u64 {
    s >> (VA_PAGE_BITS + 16)
}

/// Physical page → (owner, virtual page) for every page mapped in the window.
#[derive(Debug, Clone, Default)]
pub struct ReverseMap {
    frames: BTreeMap<u64, Vec<Slot>>,
    len: usize,
}

/// The frame and slot of `entry`, or `None` for a virtual page beyond the slot's 39 bits.
fn split(entry: ReverseEntry) -> Option<(u64, Slot)> {
    let page = entry.pa.page_number();
    let va_page = entry.va.page_number();
    if va_page > VA_PAGE_MASK {
        return None;
    }
    Some((
        page >> FRAME_SHIFT,
        slot(page & FRAME_MASK, entry.owner, va_page),
    ))
}

fn join(frame: u64, s: Slot) -> Option<ReverseEntry> {
    let page = (frame << FRAME_SHIFT) | slot_page(s);
    let owner = u16::try_from((s >> VA_PAGE_BITS) & 0xffff).ok()?;
    Some(ReverseEntry {
        pa: PhysAddr::from_page_number(page)?,
        owner: GuestId(owner),
        va: VirtAddr::from_page_number(s & VA_PAGE_MASK)?,
    })
}

impl ReverseMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `owner` maps physical page `pa` at virtual page `va`. Returns false if that
    /// exact entry was already there, or if `va` lies at or above 2^51 (outside any table).
    pub fn insert(&mut self, entry: ReverseEntry) -> bool {
        let Some((frame, slot)) = split(entry) else {
            return false;
        };
        let slots = self.frames.entry(frame).or_default();
        match slots.binary_search(&slot) {
            Ok(_) => false,
            Err(at) => {
                slots.insert(at, slot);
                self.len += 1;
                true
            }
        }
    }

    /// Forgets an entry. Returns false if it was not there.
    pub fn remove(&mut self, entry: ReverseEntry) -> bool {
        let Some((frame, slot)) = split(entry) else {
            return false;
        };
        let Some(slots) = self.frames.get_mut(&frame) else {
            return false;
        };
        let Ok(at) = slots.binary_search(&slot) else {
            return false;
        };
        slots.remove(at);
        if slots.is_empty() {
            self.frames.remove(&frame);
        }
        self.len -= 1;
        true
    }

    /// Whether exactly this entry is recorded.
    pub fn contains(&self, entry: ReverseEntry) -> bool {
        let Some((frame, slot)) = split(entry) else {
            return false;
        };
        self.frames
            .get(&frame)
            .is_some_and(|slots| slots.binary_search(&slot).is_ok())
    }

    /// A virtual address of `pa` (same page offset), preferring `owner`'s mapping when given:
    /// `Some(owner)` returns only that owner's lowest mapping, `None` the lowest of anyone's.
    pub fn phys_to_virt(&self, pa: PhysAddr, owner: Option<GuestId>) -> Option<VirtAddr> {
        let page = pa.page_number();
        let slots = self.frames.get(&(page >> FRAME_SHIFT))?;
        let page_in_frame = page & FRAME_MASK;
        let first = slot(page_in_frame, owner.unwrap_or(GuestId(0)), 0);
        let &found = slots.get(slots.partition_point(|s| *s < first))?;
        let entry = join(page >> FRAME_SHIFT, found)?;
        let wanted = slot_page(found) == page_in_frame && owner.is_none_or(|o| o == entry.owner);
        wanted.then_some(entry.va)?.checked_add(pa.page_offset())
    }

    /// Every mapping of the page holding `pa`, ordered by owner then address.
    pub fn mappings_of(&self, pa: PhysAddr) -> impl Iterator<Item = ReverseEntry> + '_ {
        let page = pa.page_number();
        let frame = page >> FRAME_SHIFT;
        let page_in_frame = page & FRAME_MASK;
        let slots = self.frames.get(&frame).map_or(&[][..], Vec::as_slice);
        // A slice iterator skips in O(1) and needs no fallback when `from` is the end.
        let from = slots.partition_point(|s| slot_page(*s) < page_in_frame);
        slots
            .iter()
            .skip(from)
            .take_while(move |s| slot_page(**s) == page_in_frame)
            .filter_map(move |&s| join(frame, s))
    }

    /// Every entry, ordered by physical page.
    pub fn iter(&self) -> impl Iterator<Item = ReverseEntry> + '_ {
        self.frames
            .iter()
            .flat_map(|(&frame, slots)| slots.iter().filter_map(move |&s| join(frame, s)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
        // A virtual page beyond the slot's width is refused, not truncated.
        assert!(!r.insert(entry(0x4000_0000, 1, 1 << 52)));
        assert!(!r.contains(entry(0x4000_0000, 1, 1 << 52)));
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
                let e = entry(pa * 97 * 4096, owner, va * 4096);
                if add {
                    prop_assert_eq!(r.insert(e), !model.contains(&e));
                    if !model.contains(&e) { model.push(e); }
                } else {
                    prop_assert_eq!(r.remove(e), model.contains(&e));
                    model.retain(|m| *m != e);
                }
            }
            prop_assert_eq!(r.len(), model.len());
            let mut sorted = model.clone();
            sorted.sort();
            prop_assert_eq!(r.iter().collect::<Vec<_>>(), sorted);
            for (pa, owner) in queries {
                let expected = model.iter()
                    .filter(|e| e.pa.get() == pa * 97 * 4096 && owner.is_none_or(|o| e.owner == GuestId(o)))
                    .min_by_key(|e| (e.owner, e.va))
                    .map(|e| VirtAddr(e.va.get() + 7));
                prop_assert_eq!(r.phys_to_virt(PhysAddr(pa * 97 * 4096 + 7), owner.map(GuestId)), expected);
                let all: Vec<ReverseEntry> = r.mappings_of(PhysAddr(pa * 97 * 4096)).collect();
                let mut model_all: Vec<ReverseEntry> = model.iter().copied().filter(|e| e.pa.get() == pa * 97 * 4096).collect();
                model_all.sort_by_key(|e| (e.owner, e.va));
                prop_assert_eq!(all, model_all);
            }
        }
    }
}
