//! The agreement checker of the whole core: the memory manager's own check, plus the registry,
//! the mapping cache, the threads and every guest's counters against each other.
//!
//! Call it between SMCs (no call running on another CPU): counters are compared with the
//! objects they count, which a running call may be changing.

use crate::entry::Tee;
use crate::guest::GuestPartition;
use crate::mobj::{Mobj, MobjId, MobjKind};
use crate::platform::Platform;
use crate::thread::ThreadState;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_mm::{Disagreement, PAGE_SIZE, PhysAddr, VirtAddr};

/// A way the core's structures disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreDisagreement {
    /// The memory manager's structures disagree.
    Window(Disagreement),
    /// A cache entry's range is not a mapping of the window.
    EntryNotMapped {
        /// The object.
        mobj: MobjId,
    },
    /// A mapping of the window belongs to no object.
    MappingWithoutObject {
        /// Where it starts.
        start: VirtAddr,
    },
    /// A mapping's owner is not its object's owner.
    WrongOwner {
        /// The object.
        mobj: MobjId,
    },
    /// A mapped page is not the object's page.
    WrongPage {
        /// The object.
        mobj: MobjId,
        /// Page index in the object.
        index: u64,
        /// The object's page.
        expected: Option<PhysAddr>,
        /// What the tables translate to.
        found: Option<PhysAddr>,
    },
    /// The cache's idle index and its entries disagree.
    IdleIndex {
        /// The object.
        mobj: MobjId,
    },
    /// A mapping has guards but its object no use.
    GuardWithoutUse {
        /// The object.
        mobj: MobjId,
    },
    /// An object's own mapped flag disagrees with the window's record of it.
    MappedFlag {
        /// The object.
        mobj: MobjId,
    },
    /// A retired object nobody uses is still mapped or held: it was never released.
    NotReleased {
        /// The object.
        mobj: MobjId,
    },
    /// A registered buffer in a cookie table is retired or has the wrong cookie or owner.
    BadRegistration {
        /// The guest.
        guest: GuestId,
        /// The cookie.
        cookie: u64,
    },
    /// A kept arg page is retired, another guest's, not an arg page, not on its page, kept
    /// twice, or one more than the configuration keeps.
    BadArgPage {
        /// The guest.
        guest: GuestId,
        /// The page it is kept for.
        page: u64,
    },
    /// An object is owned by a guest that no longer exists.
    Orphan {
        /// The object.
        mobj: MobjId,
    },
    /// A guest's counter differs from what its objects add up to.
    Counter {
        /// The guest.
        guest: GuestId,
        /// Which counter.
        counter: &'static str,
        /// What the counter says.
        recorded: u64,
        /// What the objects add up to.
        recomputed: u64,
    },
    /// Objects wait for a release that should have happened at the end of the last SMC.
    PendingReleases,
    /// A guest's counter was refunded more than it was charged (a double release); the count
    /// itself stayed at 0, which alone would look right.
    Underflow {
        /// The guest.
        guest: GuestId,
        /// Which counter.
        counter: &'static str,
        /// How many refunds went below zero.
        underflows: u64,
    },
    /// A map guard of an object was released once more than it was taken.
    GuardUnderflow {
        /// The object.
        mobj: MobjId,
    },
    /// A guest's parked thread is not a thread the table counts running for it.
    BadParkedThread {
        /// The guest.
        guest: GuestId,
        /// The thread.
        thread: usize,
    },
    /// Threads or suspended calls are held for a guest the core does not know.
    UnknownGuest {
        /// The guest named by the thread or call.
        guest: GuestId,
    },
}

/// What a guest holds, recounted from the things themselves.
#[derive(Default)]
struct Recount {
    objects: BTreeMap<MobjId, Arc<Mobj>>,
    threads: u64,
    sessions: u64,
    mapped_pages: u64,
    /// Secure heap its TA instances were charged.
    ta_bytes: u64,
}

impl<P: Platform> Tee<P> {
    /// Walks the whole core and returns every disagreement (empty when all agree).
    /// Cost: linear in objects, mapped pages and threads.
    pub fn check_agreement(&self) -> Vec<CoreDisagreement> {
        let mut found = Vec::new();
        if !self.releases.is_empty() {
            found.push(CoreDisagreement::PendingReleases);
        }
        let guests = self.guests();
        // Every guest has its recount from here on; whatever names another id is reported.
        let mut recount: BTreeMap<GuestId, Recount> = BTreeMap::new();
        for guest in &guests {
            let state = guest.state.lock();
            let r = recount.entry(guest.id()).or_default();
            for (&cookie, mobj) in &state.registered {
                if mobj.uses().is_retired()
                    || mobj.cookie() != Some(cookie)
                    || mobj.owner() != guest.id()
                    || mobj.kind() != MobjKind::Registered
                {
                    found.push(CoreDisagreement::BadRegistration {
                        guest: guest.id(),
                        cookie,
                    });
                }
                r.objects.insert(mobj.id(), mobj.clone());
            }
            for cached in &state.cached_rpc_args {
                if cached.mobj.kind() != MobjKind::StaticPool {
                    r.objects.insert(cached.mobj.id(), cached.mobj.clone());
                }
            }
            let too_many = state.kept_arg_pages.len() > usize::from(self.config.kept_arg_pages);
            for (i, kept) in state.kept_arg_pages.iter().enumerate() {
                let m = &kept.mobj;
                let twice = state
                    .kept_arg_pages
                    .get(..i)
                    .is_some_and(|before| before.iter().any(|k| k.page == kept.page));
                if too_many
                    || twice
                    || m.uses().is_retired()
                    || m.owner() != guest.id()
                    || m.kind() != MobjKind::ArgPage
                    || m.page(0) != Some(PhysAddr(kept.page))
                {
                    found.push(CoreDisagreement::BadArgPage {
                        guest: guest.id(),
                        page: kept.page,
                    });
                }
                r.objects.insert(m.id(), m.clone());
            }
            r.sessions = state.sessions.len() as u64;
            r.ta_bytes = state
                .sessions
                .values()
                .filter_map(|s| match s {
                    crate::ta::Session::User(instance) => Some(instance.charged_bytes()),
                    crate::ta::Session::Pta => None,
                })
                .sum();
        }
        {
            let threads = self.threads.lock();
            let states = threads.states();
            for state in &states {
                let g = match *state {
                    ThreadState::Free => continue,
                    ThreadState::Running(g) | ThreadState::Suspended(g) => g,
                };
                recount.entry(g).or_default().threads += 1;
            }
            // A parked thread is held in the table, but by no call: the counters count calls.
            for guest in &guests {
                let Some(thread) = guest.life.parked() else {
                    continue;
                };
                if states.get(thread) == Some(&ThreadState::Running(guest.id())) {
                    let r = recount.entry(guest.id()).or_default();
                    r.threads = r.threads.saturating_sub(1);
                } else {
                    found.push(CoreDisagreement::BadParkedThread {
                        guest: guest.id(),
                        thread,
                    });
                }
            }
            for call in threads.suspended() {
                let r = recount.entry(call.guest_id()).or_default();
                for mobj in call.objects() {
                    if mobj.kind() != MobjKind::StaticPool {
                        r.objects.insert(mobj.id(), mobj.clone());
                    }
                }
            }
        }
        let window = self.window.read();
        found.extend(
            window
                .shm()
                .check_agreement()
                .into_iter()
                .map(CoreDisagreement::Window),
        );
        let mut starts = BTreeMap::new();
        let mut mapped_ids = alloc::collections::BTreeSet::new();
        let (idle, idle_by_guest) = window.idle_index();
        found.extend(
            window
                .guard_underflows()
                .iter()
                .map(|&mobj| CoreDisagreement::GuardUnderflow { mobj }),
        );
        for (&id, entry) in window.entries() {
            let mobj = &entry.mobj;
            starts.insert(entry.range.start(), id);
            mapped_ids.insert(id);
            match window.shm().mapping_at(entry.range.start()) {
                Some(m) if m.range == entry.range => {
                    if m.owner != mobj.owner() {
                        found.push(CoreDisagreement::WrongOwner { mobj: id });
                    }
                }
                _ => found.push(CoreDisagreement::EntryNotMapped { mobj: id }),
            }
            for index in 0..entry.range.pages() {
                let va = VirtAddr(entry.range.start().get() + index * PAGE_SIZE);
                let (expected, found_pa) = (mobj.page(index), window.shm().virt_to_phys(va));
                if expected != found_pa {
                    found.push(CoreDisagreement::WrongPage {
                        mobj: id,
                        index,
                        expected,
                        found: found_pa,
                    });
                }
            }
            // A record in the index: the one the entry names, no younger than its last use,
            // and the object's pins say it is indexed exactly when it is.
            let pins = mobj.pins();
            let record_ok = pins.is_published()
                && pins.is_indexed() == entry.indexed_at.is_some()
                && entry.indexed_at.is_none_or(|stamp| {
                    idle.contains(&(stamp, id))
                        && idle_by_guest.contains(&(mobj.owner(), stamp, id))
                        && pins.last_used() >= stamp
                });
            let guards = entry.guards();
            let idle_ok = record_ok
                && if guards > 0 {
                    true
                } else if mobj.kind() == MobjKind::Temporary {
                    // A call's temporary between two guards: never evictable while its call
                    // uses it, so never in the eviction index.
                    entry.indexed_at.is_none() && mobj.uses().users() > 0
                } else {
                    // An idle mapping is in the index (else it could never be evicted), and its
                    // object is live, or retired while a call still uses it (a busy unregister
                    // after the mapping went idle: it goes with the release).
                    entry.indexed_at.is_some()
                        && (!mobj.uses().is_retired() || mobj.uses().users() > 0)
                };
            if !idle_ok {
                found.push(CoreDisagreement::IdleIndex { mobj: id });
            }
            if mobj.kind() == MobjKind::StaticPool {
                continue;
            }
            if guards > 0 && mobj.uses().users() == 0 {
                found.push(CoreDisagreement::GuardWithoutUse { mobj: id });
            }
            match recount.get_mut(&mobj.owner()) {
                Some(r) => {
                    r.mapped_pages += entry.range.pages();
                    r.objects.insert(id, mobj.clone());
                }
                None => found.push(CoreDisagreement::Orphan { mobj: id }),
            }
        }
        if idle.len() != idle_by_guest.len()
            || idle
                .iter()
                .any(|&(stamp, id)| window.indexed_at(id) != Some(stamp))
        {
            found.push(CoreDisagreement::IdleIndex { mobj: MobjId(0) });
        }
        let io = self.io_mappings();
        for m in window.shm().mappings() {
            let io_mapping = m.owner == crate::io::IO_OWNER
                && m.kind == teeshm_mm::MemKind::Device
                && io.iter().any(|i| i.va.page_base() == m.range.start());
            if !starts.contains_key(&m.range.start()) && !io_mapping {
                found.push(CoreDisagreement::MappingWithoutObject {
                    start: m.range.start(),
                });
            }
        }
        drop(window);

        let by_id: BTreeMap<GuestId, &Arc<GuestPartition>> =
            guests.iter().map(|g| (g.id(), g)).collect();
        for (id, r) in recount {
            let Some(guest) = by_id.get(&id) else {
                found.push(CoreDisagreement::UnknownGuest { guest: id });
                continue;
            };
            for (&mobj_id, mobj) in &r.objects {
                if mobj.uses().is_retired() && mobj.uses().users() == 0 {
                    found.push(CoreDisagreement::NotReleased { mobj: mobj_id });
                }
                if mobj.is_mapped() != mapped_ids.contains(&mobj_id) {
                    found.push(CoreDisagreement::MappedFlag { mobj: mobj_id });
                }
            }
            let objects = r.objects.len() as u64;
            let registered: u64 = r
                .objects
                .values()
                .filter(|m| m.kind() == MobjKind::Registered)
                .map(|m| m.num_pages())
                .sum();
            let bytes: u64 =
                r.objects.values().map(|m| m.charged_bytes()).sum::<u64>() + r.ta_bytes;
            let c = guest.counters();
            let checks = [
                ("objects", c.objects(), objects),
                ("registered_pages", c.registered_pages(), registered),
                ("mapped_pages", c.mapped_pages(), r.mapped_pages),
                ("threads", c.threads(), r.threads),
                ("sessions", c.sessions(), r.sessions),
                ("secure_bytes", c.secure_bytes(), bytes),
            ];
            for (counter, recorded, recomputed) in checks {
                if recorded != recomputed {
                    found.push(CoreDisagreement::Counter {
                        guest: id,
                        counter,
                        recorded,
                        recomputed,
                    });
                }
            }
            for (counter, underflows) in c.underflows() {
                if underflows != 0 {
                    found.push(CoreDisagreement::Underflow {
                        guest: id,
                        counter,
                        underflows,
                    });
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoreConfig;
    use crate::mobj::{Backing, MobjSpec};
    use crate::platform::{AccessFault, Platform, Translate};
    use std::vec;
    use teeshm_mm::{MemoryMap, PhysRange, Region, RegionKind};
    use teeshm_platform::RecordingTlb;

    /// A platform whose memory cannot be reached: these tests change counts and mappings only,
    /// and never read or write a shared byte.
    struct NoAccess;

    impl Platform for NoAccess {
        type Tlb = RecordingTlb;

        fn read(&self, _: &dyn Translate, va: VirtAddr, _: &mut [u8]) -> Result<(), AccessFault> {
            Err(AccessFault::NoMemory(va.get()))
        }

        fn write(&self, _: &dyn Translate, va: VirtAddr, _: &[u8]) -> Result<(), AccessFault> {
            Err(AccessFault::NoMemory(va.get()))
        }

        fn read_io32(&self, _: &dyn Translate, va: VirtAddr) -> Result<u32, AccessFault> {
            Err(AccessFault::NoMemory(va.get()))
        }
    }

    /// No page for a TA.
    struct NoPages;

    impl crate::platform::TaPages for NoPages {
        fn alloc(&self) -> Option<PhysAddr> {
            None
        }

        fn free(&self, _: PhysAddr) {}
    }

    /// No user mode either: no page for a TA, so no TA is ever entered.
    impl crate::platform::UserMode for NoAccess {
        type UserTlb = RecordingTlb;

        fn user_tlb(&self, _: u16) -> RecordingTlb {
            RecordingTlb::counting()
        }

        fn activate_user(&self, _: Option<crate::platform::UserRoot>) {}

        fn ta_pages(&self) -> alloc::sync::Arc<dyn crate::platform::TaPages> {
            alloc::sync::Arc::new(NoPages)
        }

        fn enter_user(
            &self,
            _: crate::platform::UserRoot,
            _: &dyn Translate,
            regs: &mut crate::platform::UserRegs,
            handler: &mut dyn crate::platform::UserTrapHandler,
        ) {
            let _ = handler.trap(regs, crate::platform::UserTrap::Other { esr: 0 });
        }

        fn write_ta_ram(&self, pa: PhysAddr, _: &[u8]) -> Result<(), AccessFault> {
            Err(AccessFault::NoMemory(pa.get()))
        }
    }

    const NS_RAM: u64 = 0x4000_0000;

    fn tee() -> Tee<NoAccess> {
        let ns = Region {
            range: PhysRange::new(PhysAddr(NS_RAM), 16 << 20).unwrap(),
            kind: RegionKind::NonSecureRam,
        };
        let map = MemoryMap::new(&[ns]).unwrap();
        let tee = Tee::new(
            CoreConfig::default(),
            map,
            NoAccess,
            RecordingTlb::default(),
        )
        .unwrap();
        assert_eq!(tee.check_agreement(), vec![]);
        tee
    }

    #[test]
    fn a_refund_below_zero_of_each_guest_counter_is_reported() {
        type Refund = fn(&crate::guest::GuestCounters);
        let kinds: [(&str, Refund); 6] = [
            ("objects", |c| c.refund_object(0, 0)),
            ("registered_pages", |c| c.refund_object(1, 0)),
            ("secure_bytes", |c| c.refund_object(0, 1)),
            ("mapped_pages", |c| c.sub_mapped(1)),
            ("threads", |c| c.refund_thread()),
            ("sessions", |c| c.refund_session()),
        ];
        for (counter, refund) in kinds {
            let tee = tee();
            let guest = tee.guest(GuestId::HYPERVISOR).unwrap();
            // A refund of nothing held: a saturating count stays at a plausible 0, and the
            // recount (nothing held) agrees with it; only the recorded underflow shows it.
            refund(guest.counters());
            let found: Vec<_> = tee
                .check_agreement()
                .into_iter()
                .filter(|d| matches!(d, CoreDisagreement::Underflow { counter: c, .. } if *c == counter))
                .collect();
            assert_eq!(
                found,
                vec![CoreDisagreement::Underflow {
                    guest: GuestId::HYPERVISOR,
                    counter,
                    underflows: 1,
                }],
                "{counter}"
            );
        }
    }

    #[test]
    fn a_map_guard_released_twice_is_reported() {
        let tee = tee();
        let guest = tee.guest(GuestId::HYPERVISOR).unwrap();
        let spec = MobjSpec {
            kind: MobjKind::Registered,
            owner: GuestId::HYPERVISOR,
            cookie: None,
            size: 2 * PAGE_SIZE,
            page_offset: 0,
            backing: Backing::Contiguous {
                first: PhysAddr(NS_RAM),
                pages: 2,
            },
        };
        let mobj = tee.new_mobj(&guest, spec).unwrap();
        let id = mobj.id();
        tee.window.write().acquire(&mobj).unwrap();
        tee.window.release_guard(&mobj);
        // One guard taken and released: the mapping is idle, cached for the next use.
        assert_eq!(tee.check_agreement(), vec![]);
        tee.window.release_guard(&mobj);
        assert_eq!(
            tee.check_agreement(),
            vec![CoreDisagreement::GuardUnderflow { mobj: id }]
        );
    }
}
