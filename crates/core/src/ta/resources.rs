//! What TA instances are made of and must give back: pages (from the platform's
//! [`TaPages`]) and ASIDs, each instance's pages charged to its guest.
//!
//! An instance is charged to the secure-heap quota (`GuestQuotas::max_secure_bytes`) of the
//! guest whose call made it — a TA's instance for another TA to the same guest — for its pages,
//! the most table pages its tables may hold and its bookkeeping: the core's heap budget, which
//! the capacity check proves the heap can hold, thus covers every TA a guest may make, and no
//! guest can take another's share. 255 ASIDs bound the live instances of all guests together.

use super::instance::MAX_USER_TABLE_PAGES;
use crate::error::{QuotaKind, TeeError};
use crate::guest::GuestCounters;
use crate::platform::TaPages;
use crate::sync::Mutex;
use alloc::sync::Arc;
use alloc::vec::Vec;
use teeshm_mm::{PAGE_SIZE, PhysAddr};

/// The largest ASID with 8-bit ASIDs (`TCR_EL1.AS = 0`); 0 is the core's own.
pub const MAX_ASID: u16 = 255;

/// Bytes of an instance's bookkeeping on the heap besides its pages and tables (the instance,
/// its sessions and spans), charged with them.
pub const INSTANCE_BOOKKEEPING: u64 = 1024;

/// The ASIDs in use and where pages come from.
pub struct TaResources {
    asids: Mutex<[u64; 4]>,
    pages: Arc<dyn TaPages>,
}

impl core::fmt::Debug for TaResources {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TaResources")
            .field("asids_in_use", &self.asids_in_use())
            .finish_non_exhaustive()
    }
}

/// What an instance took: given back by [`TaResources::give_back`].
#[derive(Debug, Default)]
pub struct Held {
    /// Its ASID (0 once given back).
    pub asid: u16,
    /// Its pages.
    pub pages: Vec<PhysAddr>,
    /// Bytes charged to its guest.
    pub charged: u64,
}

/// Bytes an instance of `pages` pages is charged.
pub fn instance_charge(pages: u64) -> Option<u64> {
    pages
        .checked_add(MAX_USER_TABLE_PAGES as u64)?
        .checked_mul(PAGE_SIZE)?
        .checked_add(INSTANCE_BOOKKEEPING)
}

impl TaResources {
    /// Resources with pages from `pages`.
    pub fn new(pages: Arc<dyn TaPages>) -> Self {
        Self {
            // ASID 0 is the core's.
            asids: Mutex::new([1, 0, 0, 0]),
            pages,
        }
    }

    /// ASIDs of live instances.
    pub fn asids_in_use(&self) -> u32 {
        let map = self.asids.lock();
        map.iter().map(|w| w.count_ones()).sum::<u32>() - 1
    }

    /// Charges `counters` (quota `limit`) for an instance of `pages` pages, then takes an ASID
    /// and the pages.
    ///
    /// # Errors
    /// [`TeeError::Quota`] (`SecureBytes`) past the guest's quota, [`TeeError::OutOfMemory`]
    /// when no ASID or page is left; nothing is taken then.
    pub fn take(&self, counters: &GuestCounters, limit: u64, pages: u64) -> Result<Held, TeeError> {
        let charged = instance_charge(pages).ok_or(TeeError::OutOfMemory)?;
        counters
            .charge_secure(charged, limit)
            .map_err(|wanted| TeeError::Quota {
                kind: QuotaKind::SecureBytes,
                wanted,
                limit,
            })?;
        let mut held = Held {
            asid: 0,
            pages: Vec::new(),
            charged,
        };
        let taken = self.take_uncharged(&mut held, pages);
        if taken.is_err() {
            self.give_back(counters, &mut held);
        }
        taken.map(|()| held)
    }

    fn take_uncharged(&self, held: &mut Held, pages: u64) -> Result<(), TeeError> {
        let count = usize::try_from(pages).map_err(|_| TeeError::OutOfMemory)?;
        held.pages
            .try_reserve_exact(count)
            .map_err(|_| TeeError::OutOfMemory)?;
        {
            let mut map = self.asids.lock();
            let asid = (1..=MAX_ASID)
                .find(|&a| !bit(&map, a))
                .ok_or(TeeError::OutOfMemory)?;
            set_bit(&mut map, asid, true);
            held.asid = asid;
        }
        for _ in 0..count {
            held.pages
                .push(self.pages.alloc().ok_or(TeeError::OutOfMemory)?);
        }
        Ok(())
    }

    /// Gives back what [`take`](Self::take) gave, and refunds its charge.
    pub fn give_back(&self, counters: &GuestCounters, held: &mut Held) {
        for page in held.pages.drain(..) {
            self.pages.free(page);
        }
        if held.asid != 0 {
            set_bit(&mut self.asids.lock(), held.asid, false);
            held.asid = 0;
        }
        counters.refund_secure(core::mem::take(&mut held.charged));
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
    use std::sync::Mutex as StdMutex;

    /// `n` pages from 0x1000 up, and what was freed.
    struct Pool(StdMutex<Vec<PhysAddr>>);

    impl Pool {
        fn new(n: u64) -> Arc<Self> {
            Arc::new(Pool(StdMutex::new(
                (1..=n).rev().map(|i| PhysAddr(i * PAGE_SIZE)).collect(),
            )))
        }
        fn left(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl TaPages for Pool {
        fn alloc(&self) -> Option<PhysAddr> {
            self.0.lock().unwrap().pop()
        }
        fn free(&self, page: PhysAddr) {
            self.0.lock().unwrap().push(page);
        }
    }

    #[test]
    fn an_instance_is_charged_to_its_guest_and_refunded() {
        let pool = Pool::new(8);
        let r = TaResources::new(pool.clone());
        let (a, b) = (GuestCounters::default(), GuestCounters::default());
        let one = instance_charge(3).unwrap();
        let mut held = r.take(&a, 2 * one, 3).unwrap();
        assert_eq!((held.asid, a.secure_bytes(), pool.left()), (1, one, 5));
        // Past the quota: refused with nothing taken.
        let e = r.take(&a, 2 * one - 1, 3).unwrap_err();
        assert!(matches!(
            e,
            TeeError::Quota {
                kind: QuotaKind::SecureBytes,
                ..
            }
        ));
        assert_eq!((a.secure_bytes(), pool.left()), (one, 5));
        // Another guest has its own quota; pages running out refund its charge.
        assert_eq!(r.take(&b, u64::MAX, 6).unwrap_err(), TeeError::OutOfMemory);
        assert_eq!((b.secure_bytes(), pool.left(), r.asids_in_use()), (0, 5, 1));
        r.give_back(&a, &mut held);
        assert_eq!((a.secure_bytes(), pool.left(), r.asids_in_use()), (0, 8, 0));
    }

    proptest::proptest! {
        /// Any order of takes and give-backs: no ASID or page is held twice, the charge is
        /// exactly what is held, and everything comes back.
        #[test]
        fn takes_and_give_backs_keep_every_asid_page_and_byte_once(
            ops in proptest::collection::vec((0u64..4, proptest::bool::ANY), 1..200),
        ) {
            let pool = Pool::new(64);
            let r = TaResources::new(pool.clone());
            let c = GuestCounters::default();
            let mut held: Vec<Held> = Vec::new();
            for (pages, give) in ops {
                if give && !held.is_empty() {
                    let mut h = held.remove(pages as usize % held.len());
                    r.give_back(&c, &mut h);
                } else if let Ok(h) = r.take(&c, 40 * instance_charge(1).unwrap(), pages) {
                    held.push(h);
                }
                let mut asids: Vec<u16> = held.iter().map(|h| h.asid).collect();
                let mut pages: Vec<u64> =
                    held.iter().flat_map(|h| h.pages.iter().map(|p| p.get())).collect();
                let (n_asids, n_pages) = (asids.len(), pages.len());
                asids.sort_unstable();
                asids.dedup();
                pages.sort_unstable();
                pages.dedup();
                proptest::prop_assert_eq!((asids.len(), pages.len()), (n_asids, n_pages));
                proptest::prop_assert!(asids.iter().all(|&a| (1..=MAX_ASID).contains(&a)));
                proptest::prop_assert_eq!(r.asids_in_use() as usize, n_asids);
                proptest::prop_assert_eq!(pool.left() + n_pages, 64);
                let charged: u64 = held.iter().map(|h| h.charged).sum();
                proptest::prop_assert_eq!(c.secure_bytes(), charged);
            }
            for mut h in held {
                r.give_back(&c, &mut h);
            }
            proptest::prop_assert_eq!((pool.left(), r.asids_in_use(), c.secure_bytes()), (64, 0, 0));
        }
    }

    #[test]
    fn asids_run_out_cleanly_and_are_used_again() {
        let r = TaResources::new(Pool::new(0));
        let c = GuestCounters::default();
        let mut held: Vec<Held> = (1..=MAX_ASID)
            .map(|_| r.take(&c, u64::MAX, 0).unwrap())
            .collect();
        assert_eq!(r.take(&c, u64::MAX, 0).unwrap_err(), TeeError::OutOfMemory);
        r.give_back(&c, &mut held[7]);
        assert_eq!(r.take(&c, u64::MAX, 0).unwrap().asid, 8);
    }
}
