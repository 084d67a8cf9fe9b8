//! The mediator's own agreement checker: every count it keeps agrees with the records behind
//! it, every guest is within its budgets, the budgets of the live guests fit what the mediator
//! has, no shadow page is recorded twice, and every pinned page is RAM of its guest.
//!
//! Tests and the fuzz target run it after every step, beside the core's `check_agreement`.

use super::Mediator;
use crate::config::Resource;
use crate::guest::GuestState;
use crate::memory::MachineMemory;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use teeshm_abi::GuestId;
use teeshm_abi::smc::SmcConduit;

/// One disagreement [`Mediator::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HypViolation {
    /// A guest holds more of `resource` than its budget.
    OverBudget {
        /// The guest.
        vm: GuestId,
        /// What it holds too much of.
        resource: Resource,
        /// What it holds.
        held: u64,
        /// Its budget.
        limit: u64,
    },
    /// A count the mediator keeps disagrees with the records it counts.
    Count {
        /// The guest.
        vm: GuestId,
        /// Which count.
        what: &'static str,
        /// The count kept.
        recorded: u64,
        /// The count of the records.
        recomputed: u64,
    },
    /// The pin reference count of a page disagrees with the buffers that pin it.
    PinCount {
        /// The guest.
        vm: GuestId,
        /// The PA page.
        pa: u64,
        /// The count kept.
        recorded: u64,
        /// The references of the guest's buffers.
        recomputed: u64,
    },
    /// A pinned page is not RAM of the guest that pins it.
    PinOutsideGuest {
        /// The guest.
        vm: GuestId,
        /// The PA page.
        pa: u64,
    },
    /// A shadow page is recorded twice (for two owners, or twice for one).
    ShadowTwice {
        /// The page.
        pa: u64,
    },
    /// The live guests' shares exceed what the mediator has.
    SharesExceed {
        /// The resource.
        resource: Resource,
        /// What the live guests' shares add up to.
        promised: u64,
        /// What the mediator has.
        available: u64,
    },
}

impl<T: SmcConduit, M: MachineMemory> Mediator<T, M> {
    /// Every disagreement between the mediator's counts, its records, its budgets and what it
    /// has; empty when all agree. O(everything held), for tests and fuzzing.
    pub fn check(&self) -> Vec<HypViolation> {
        let mut found = Vec::new();
        let guests = self.guests.len() as u64;
        let max_guests = u64::from(self.config.max_guests);
        if guests > max_guests {
            found.push(HypViolation::SharesExceed {
                resource: Resource::Guests,
                promised: guests,
                available: max_guests,
            });
        }
        let promised = guests.saturating_mul(self.config.limits.max_shadow_pages);
        let pool = self.memory.pool_pages();
        if promised > pool {
            found.push(HypViolation::SharesExceed {
                resource: Resource::ShadowPages,
                promised,
                available: pool,
            });
        }
        let mut shadows = BTreeSet::new();
        for (&vm, guest) in &self.guests {
            self.check_guest(vm, guest, &mut shadows, &mut found);
        }
        found
    }

    fn check_guest(
        &self,
        vm: GuestId,
        g: &GuestState,
        all_shadows: &mut BTreeSet<u64>,
        found: &mut Vec<HypViolation>,
    ) {
        let limits = &self.config.limits;
        let mut buffers = 0u64;
        let mut pins: BTreeMap<u64, u64> = BTreeMap::new();
        let mut shadows: Vec<u64> = Vec::new();
        let mut pin = |pages: &[u64]| {
            for &pa in pages {
                let n = pins.entry(pa).or_insert(0);
                *n = n.saturating_add(1);
            }
        };
        for b in g
            .registered
            .values()
            .chain(g.rpc_buffers.values())
            .chain(g.draining.iter().map(|d| &d.buffer))
        {
            buffers = buffers.saturating_add(1);
            pin(&b.pages);
            shadows.extend_from_slice(&b.lists);
        }
        for a in g.rpc_args.values() {
            buffers = buffers.saturating_add(1);
            pin(&[a.pa_page]);
            shadows.push(a.shadow);
        }
        for c in g.calls.values() {
            shadows.push(c.shadow_arg);
            shadows.extend_from_slice(&c.stale_lists);
            for (_, b) in &c.temps {
                buffers = buffers.saturating_add(1);
                pin(&b.pages);
                shadows.extend_from_slice(&b.lists);
            }
        }
        let counts = [
            ("buffers", g.buffers, buffers),
            ("shadow pages", g.shadow_pages, shadows.len() as u64),
            (
                "pin references",
                g.pins.total(),
                pins.values().fold(0u64, |n, c| n.saturating_add(*c)),
            ),
        ];
        for (what, recorded, recomputed) in counts {
            if recorded != recomputed {
                found.push(HypViolation::Count {
                    vm,
                    what,
                    recorded,
                    recomputed,
                });
            }
        }
        let budgets = [
            (
                Resource::Calls,
                g.calls.len() as u64,
                u64::from(limits.max_calls),
            ),
            (Resource::Buffers, g.buffers, u64::from(limits.max_buffers)),
            (
                Resource::PinnedPages,
                g.pins.total(),
                limits.max_pinned_pages,
            ),
            (
                Resource::ShadowPages,
                g.shadow_pages,
                limits.max_shadow_pages,
            ),
        ];
        for (resource, held, limit) in budgets {
            if held > limit {
                found.push(HypViolation::OverBudget {
                    vm,
                    resource,
                    held,
                    limit,
                });
            }
        }
        // Every page counted in the pin table, and every page the buffers pin, agree.
        let mut pages: BTreeSet<u64> = pins.keys().chain(g.pins.pages()).copied().collect();
        for &pa in &pages {
            let recorded = g.pins.count(pa);
            let recomputed = pins.get(&pa).copied().unwrap_or(0);
            if recorded != recomputed {
                found.push(HypViolation::PinCount {
                    vm,
                    pa,
                    recorded,
                    recomputed,
                });
            }
        }
        // And each is RAM of the guest: one pass over its stage 2 strikes off the pages found
        // (the stage 2 maps IPA to PA only; usually far fewer pages are pinned than mapped).
        if !pages.is_empty() {
            for (_, pa) in g.stage2.iter() {
                pages.remove(&pa);
            }
        }
        for pa in pages {
            found.push(HypViolation::PinOutsideGuest { vm, pa });
        }
        for pa in shadows {
            if !all_shadows.insert(pa) {
                found.push(HypViolation::ShadowTwice { pa });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HypConfig, HypLimits};
    use crate::guest::Buffer;
    use crate::stage2::Stage2;
    use crate::translate::tests::TestMemory;
    use teeshm_abi::smc::SmcRegs;

    /// A TEE that accepts every guest.
    struct Yes;
    impl SmcConduit for Yes {
        fn smc(&mut self, _: SmcRegs) -> SmcRegs {
            SmcRegs::ret(0)
        }
    }

    fn mediator() -> Mediator<Yes, TestMemory> {
        let mut mem = TestMemory::new();
        mem.limit = Some(8);
        let config = HypConfig {
            max_guests: 2,
            limits: HypLimits {
                max_buffer_pages: 4,
                max_pinned_pages: 4,
                max_shadow_pages: 4,
                ..HypLimits::default()
            },
            ..HypConfig::default()
        };
        let mut m = Mediator::new(Yes, mem, config).unwrap();
        let mut s = Stage2::new();
        s.map(0x8000_0000, 0x4000_0000).unwrap();
        m.create_guest(GuestId(1), s).unwrap();
        m
    }

    #[test]
    fn the_checker_sees_each_kind_of_disagreement() {
        let mut m = mediator();
        assert_eq!(m.check(), []);
        let vm = GuestId(1);
        let g = m.guests.get_mut(&vm).unwrap();
        // A buffer recorded without its count, its pin outside the guest's RAM, and a pin
        // reference nobody holds.
        g.registered.insert(
            7,
            Buffer {
                pages: std::vec![0x5000_0000],
                lists: std::vec::Vec::new(),
            },
        );
        g.pins
            .pin_all(&[0x5000_0000, 0x4000_0000], u64::MAX)
            .unwrap();
        g.shadow_pages = 9;
        let found = m.check();
        assert!(found.contains(&HypViolation::Count {
            vm,
            what: "buffers",
            recorded: 0,
            recomputed: 1
        }));
        assert!(found.contains(&HypViolation::PinCount {
            vm,
            pa: 0x4000_0000,
            recorded: 1,
            recomputed: 0
        }));
        assert!(found.contains(&HypViolation::PinOutsideGuest {
            vm,
            pa: 0x5000_0000
        }));
        assert!(found.contains(&HypViolation::OverBudget {
            vm,
            resource: Resource::ShadowPages,
            held: 9,
            limit: 4
        }));
        // The pool shrank below the live guests' shares.
        let mut m = mediator();
        m.memory_mut().limit = Some(3);
        assert_eq!(
            m.check(),
            [HypViolation::SharesExceed {
                resource: Resource::ShadowPages,
                promised: 4,
                available: 3
            }]
        );
    }
}
