//! What TA instances are made of and must give back: pages of TA RAM and ASIDs, with each
//! guest's share of the RAM.
//!
//! TA RAM is a carve-out of secure RAM that only TAs use (`CoreConfig::ta_ram`). Every guest
//! may hold at most its share of it, `pages / max_guests`, so that no guest can exhaust it for
//! another; instances a TA opens for another TA are charged to the guest whose call opened them.

use crate::error::TeeError;
use crate::sync::Mutex;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_mm::{PAGE_SIZE, PhysAddr, PhysRange};

/// The largest ASID with 8-bit ASIDs (`TCR_EL1.AS = 0`); 0 is the core's own.
pub const MAX_ASID: u16 = 255;

/// The free pages of TA RAM, the ASIDs in use, and what each guest holds.
#[derive(Debug)]
pub struct TaResources {
    inner: Mutex<Inner>,
    /// Pages each guest may hold.
    share: u64,
    /// Pages of TA RAM in all.
    total: u64,
}

#[derive(Debug)]
struct Inner {
    free_pages: Vec<PhysAddr>,
    asids: [u64; 4],
    held: BTreeMap<GuestId, u64>,
}

/// What an instance took: given back by [`TaResources::give_back`].
#[derive(Debug, Default)]
pub struct Held {
    /// Its ASID (0 once given back).
    pub asid: u16,
    /// Its pages.
    pub pages: Vec<PhysAddr>,
}

impl TaResources {
    /// Resources over `ram` (no TAs can run without it), shared by up to `guests` guests.
    pub fn new(ram: Option<PhysRange>, guests: u32) -> Self {
        let mut free_pages = Vec::new();
        if let Some(ram) = ram {
            let first = ram.start().get().div_ceil(PAGE_SIZE);
            let end = ram.end().get() / PAGE_SIZE;
            // Highest first, so that pages are handed out from the bottom.
            free_pages = (first..end)
                .rev()
                .map(|p| PhysAddr(p * PAGE_SIZE))
                .collect();
        }
        let total = free_pages.len() as u64;
        Self {
            inner: Mutex::new(Inner {
                free_pages,
                // ASID 0 is the core's.
                asids: [1, 0, 0, 0],
                held: BTreeMap::new(),
            }),
            share: total / u64::from(guests.max(1)),
            total,
        }
    }

    /// Pages of TA RAM in all.
    pub fn total_pages(&self) -> u64 {
        self.total
    }

    /// Pages each guest may hold.
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Pages of TA RAM free now.
    pub fn free_pages(&self) -> u64 {
        self.inner.lock().free_pages.len() as u64
    }

    /// Pages `guest` holds now.
    pub fn held_by(&self, guest: GuestId) -> u64 {
        self.inner.lock().held.get(&guest).copied().unwrap_or(0)
    }

    /// Takes an ASID and `pages` pages for an instance of `guest`'s.
    ///
    /// # Errors
    /// [`TeeError::OutOfMemory`] when no ASID or page is left, or the guest's share would be
    /// passed; nothing is taken then.
    pub fn take(&self, guest: GuestId, pages: u64) -> Result<Held, TeeError> {
        let mut inner = self.inner.lock();
        let held = inner.held.get(&guest).copied().unwrap_or(0);
        let wanted = held.checked_add(pages).ok_or(TeeError::OutOfMemory)?;
        if wanted > self.share {
            return Err(TeeError::Quota {
                kind: crate::error::QuotaKind::TaRam,
                wanted,
                limit: self.share,
            });
        }
        let count = usize::try_from(pages).map_err(|_| TeeError::OutOfMemory)?;
        if count > inner.free_pages.len() {
            return Err(TeeError::OutOfMemory);
        }
        let asid = (1..=MAX_ASID)
            .find(|&a| !bit(&inner.asids, a))
            .ok_or(TeeError::OutOfMemory)?;
        set_bit(&mut inner.asids, asid, true);
        let at = inner.free_pages.len() - count;
        let taken = inner.free_pages.split_off(at);
        inner.held.insert(guest, wanted);
        Ok(Held { asid, pages: taken })
    }

    /// Gives back what [`take`](Self::take) gave `guest`.
    pub fn give_back(&self, guest: GuestId, held: &mut Held) {
        let mut inner = self.inner.lock();
        let count = held.pages.len() as u64;
        inner.free_pages.append(&mut held.pages);
        if held.asid != 0 {
            set_bit(&mut inner.asids, held.asid, false);
            held.asid = 0;
        }
        let left = inner
            .held
            .get(&guest)
            .copied()
            .unwrap_or(0)
            .saturating_sub(count);
        if left == 0 {
            inner.held.remove(&guest);
        } else {
            inner.held.insert(guest, left);
        }
    }
}

fn bit(map: &[u64; 4], asid: u16) -> bool {
    map.get(usize::from(asid / 64))
        .is_some_and(|w| w & (1 << (asid % 64)) != 0)
}

fn set_bit(map: &mut [u64; 4], asid: u16, on: bool) {
    if let Some(w) = map.get_mut(usize::from(asid / 64)) {
        if on {
            *w |= 1 << (asid % 64);
        } else {
            *w &= !(1 << (asid % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(pages: u64) -> Option<PhysRange> {
        Some(PhysRange::new(PhysAddr(0x0ec0_0000), pages * PAGE_SIZE).unwrap())
    }

    #[test]
    fn each_guest_keeps_to_its_share_and_gets_it_back() {
        let r = TaResources::new(ram(8), 2);
        assert_eq!(r.share(), 4);
        let mut a = r.take(GuestId(1), 3).unwrap();
        assert_eq!(a.asid, 1);
        assert!(matches!(
            r.take(GuestId(1), 2),
            Err(TeeError::Quota {
                wanted: 5,
                limit: 4,
                ..
            })
        ));
        let mut b = r.take(GuestId(2), 4).unwrap();
        assert_eq!(b.asid, 2);
        assert_eq!(r.free_pages(), 1);
        r.give_back(GuestId(1), &mut a);
        assert_eq!(r.held_by(GuestId(1)), 0);
        assert_eq!(r.free_pages(), 4);
        let c = r.take(GuestId(1), 4).unwrap();
        assert_eq!(c.asid, 1, "a given-back ASID is used again");
        r.give_back(GuestId(2), &mut b);
        assert_eq!(r.free_pages(), 4);
    }

    #[test]
    fn asids_run_out_cleanly() {
        let r = TaResources::new(ram(1024), 1);
        let mut held = Vec::new();
        for _ in 1..=MAX_ASID {
            held.push(r.take(GuestId(1), 0).unwrap());
        }
        assert_eq!(r.take(GuestId(1), 0).unwrap_err(), TeeError::OutOfMemory);
        r.give_back(GuestId(1), &mut held[7]);
        assert_eq!(r.take(GuestId(1), 0).unwrap().asid, 8);
    }

    #[test]
    fn no_ram_means_no_instance() {
        let r = TaResources::new(None, 4);
        assert!(r.take(GuestId(1), 1).is_err());
    }
}
