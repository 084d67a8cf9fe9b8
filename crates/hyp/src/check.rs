//! The mediator's agreement checker: each guest's counts (pins, buffers, shadow pages) against
//! what the guest's records hold, and every release below zero those counts saw.
//!
//! Call it between SMCs: a call inside `handle_guest_smc` holds buffers and shadows that no
//! record shows yet.

use crate::config::{HypLimits, Resource};
use crate::guest::{Buffer, GuestState};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use teeshm_abi::GuestId;

/// A way a guest's counts and records disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypDisagreement {
    /// A count was released more than it was taken (a double release); the count itself
    /// stayed at 0, which alone would look right.
    Underflow {
        /// The guest.
        vm: GuestId,
        /// Which count: `pins`, `buffers` or `shadow_pages`.
        counter: &'static str,
        /// How many releases went below zero.
        underflows: u64,
    },
    /// A count differs from what the guest's records add up to.
    Counter {
        /// The guest.
        vm: GuestId,
        /// Which count.
        counter: &'static str,
        /// What the count says.
        recorded: u64,
        /// What the records add up to.
        recomputed: u64,
    },
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
    /// A page's pin references differ from the buffers that name it.
    Pins {
        /// The guest.
        vm: GuestId,
        /// The PA page.
        page: u64,
        /// Its pin references.
        recorded: u64,
        /// Buffers (and RPC arg buffers) that hold it.
        recomputed: u64,
    },
}

/// What a guest holds, recounted from its records.
#[derive(Default)]
struct Recount {
    buffers: u64,
    shadow_pages: u64,
    /// Every page a record pins, once per record (sorted before use: a sort of one vector
    /// costs a fraction of a map's inserts, and the checker runs after every step).
    pins: Vec<u64>,
}

impl Recount {
    fn buffer(&mut self, buffer: &Buffer) {
        self.buffers += 1;
        self.shadow_pages += buffer.lists.len() as u64;
        self.pins.extend_from_slice(&buffer.pages);
    }
}

impl GuestState {
    /// Appends to `found` every disagreement of guest `vm`'s counts with its records.
    /// Cost: linear in the pages the guest has pinned and the records it holds.
    pub(crate) fn check_agreement(&self, vm: GuestId, found: &mut Vec<HypDisagreement>) {
        let mut r = Recount::default();
        for call in self.calls.values() {
            r.shadow_pages += 1 + call.stale_lists.len() as u64;
            for (_, buffer) in &call.temps {
                r.buffer(buffer);
            }
        }
        for buffer in self
            .registered
            .values()
            .chain(self.draining.iter().map(|d| &d.buffer))
            .chain(self.rpc_buffers.values())
        {
            r.buffer(buffer);
        }
        for arg in self.rpc_args.values() {
            r.buffers += 1;
            r.shadow_pages += 1;
            r.pins.push(arg.pa_page);
        }
        let underflows = [
            ("pins", self.pins.underflows()),
            ("buffers", self.buffers.underflows()),
            ("shadow_pages", self.shadow_pages.underflows()),
        ];
        for (counter, underflows) in underflows {
            if underflows != 0 {
                found.push(HypDisagreement::Underflow {
                    vm,
                    counter,
                    underflows,
                });
            }
        }
        let pinned = r.pins.len() as u64;
        let counts = [
            ("pins", self.pins.total(), pinned),
            ("buffers", self.buffers.get(), r.buffers),
            ("shadow_pages", self.shadow_pages.get(), r.shadow_pages),
        ];
        for (counter, recorded, recomputed) in counts {
            if recorded != recomputed {
                found.push(HypDisagreement::Counter {
                    vm,
                    counter,
                    recorded,
                    recomputed,
                });
            }
        }
        // Compared as two sorted lists; only when they differ, page by page (a page missing
        // from one side holds no reference there).
        r.pins.sort_unstable();
        let named: Vec<(u64, u64)> = r
            .pins
            .chunk_by(|a, b| a == b)
            .filter_map(|run| Some((*run.first()?, run.len() as u64)))
            .collect();
        let recorded = self.pins.counts();
        if named
            .iter()
            .copied()
            .ne(recorded.iter().map(|(&p, &n)| (p, n)))
        {
            let named: BTreeMap<u64, u64> = named.into_iter().collect();
            let pages: BTreeSet<u64> = recorded.keys().chain(named.keys()).copied().collect();
            for page in pages {
                let held = recorded.get(&page).copied().unwrap_or(0);
                let counted = named.get(&page).copied().unwrap_or(0);
                if held != counted {
                    found.push(HypDisagreement::Pins {
                        vm,
                        page,
                        recorded: held,
                        recomputed: counted,
                    });
                }
            }
        }
    }
}

impl GuestState {
    /// Appends to `found` every budget of `limits` guest `vm` exceeds, every page it pins that
    /// is not its own RAM, and every shadow page recorded twice (`shadows` collects the shadow
    /// pages of all guests checked so far).
    pub(crate) fn check_budgets(
        &self,
        vm: GuestId,
        limits: &HypLimits,
        shadows: &mut BTreeSet<u64>,
        found: &mut Vec<HypDisagreement>,
    ) {
        let budgets = [
            (
                Resource::Calls,
                self.calls.len() as u64,
                u64::from(limits.max_calls),
            ),
            (
                Resource::Buffers,
                self.buffers.get(),
                u64::from(limits.max_buffers),
            ),
            (
                Resource::PinnedPages,
                self.pins.total(),
                limits.max_pinned_pages,
            ),
            (
                Resource::ShadowPages,
                self.shadow_pages.get(),
                limits.max_shadow_pages,
            ),
        ];
        for (resource, held, limit) in budgets {
            if held > limit {
                found.push(HypDisagreement::OverBudget {
                    vm,
                    resource,
                    held,
                    limit,
                });
            }
        }
        let pinned = self.pins.counts().keys().copied();
        for pa in self.stage2.not_backing(pinned) {
            found.push(HypDisagreement::PinOutsideGuest { vm, pa });
        }
        let buffers = self
            .registered
            .values()
            .chain(self.rpc_buffers.values())
            .chain(self.draining.iter().map(|d| &d.buffer))
            .chain(
                self.calls
                    .values()
                    .flat_map(|c| c.temps.iter().map(|(_, b)| b)),
            );
        let own = buffers
            .flat_map(|b| b.lists.iter().copied())
            .chain(self.rpc_args.values().map(|a| a.shadow))
            .chain(self.calls.values().map(|c| c.shadow_arg))
            .chain(
                self.calls
                    .values()
                    .flat_map(|c| c.stale_lists.iter().copied()),
            );
        for pa in own {
            if !shadows.insert(pa) {
                found.push(HypDisagreement::ShadowTwice { pa });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::RpcArg;
    use crate::memory::MachineMemory;
    use crate::stage2::{PAGE_SIZE, Stage2};
    use alloc::vec;

    /// Machine memory that hands out shadow pages and forgets them; nothing is read back.
    #[derive(Default)]
    struct Pages {
        next: u64,
    }

    impl MachineMemory for Pages {
        fn read(&self, _: u64, buf: &mut [u8]) {
            buf.fill(0);
        }
        fn write(&self, _: u64, _: &[u8]) {}
        fn alloc_page(&mut self) -> Option<u64> {
            self.next += 1;
            Some(0x8000_0000 + self.next * PAGE_SIZE)
        }
        fn free_page(&mut self, _: u64) {}
        fn pool_pages(&self) -> u64 {
            1 << 20
        }
    }

    const VM: GuestId = GuestId(7);

    fn check(g: &GuestState) -> Vec<HypDisagreement> {
        let mut found = Vec::new();
        g.check_agreement(VM, &mut found);
        found
    }

    /// A guest holding one registered buffer of two pages and one RPC arg buffer: what the
    /// checker must find in agreement.
    fn holding() -> (GuestState, Pages) {
        let mut g = GuestState::new(Stage2::new());
        let mut mem = Pages::default();
        g.pins.pin_all(&[0x4000_0000, 0x4000_1000], 16).unwrap();
        g.buffers.add(1);
        g.registered.insert(
            1,
            Buffer {
                pages: vec![0x4000_0000, 0x4000_1000],
                lists: vec![],
            },
        );
        g.pins.pin_all(&[0x4000_2000], 16).unwrap();
        let shadow = g.alloc_shadow(&mut mem, &HypLimits::DEFAULT).unwrap();
        g.buffers.add(1);
        g.rpc_args.insert(
            2,
            RpcArg {
                ipa: 0x1000,
                pa_page: 0x4000_2000,
                room: PAGE_SIZE,
                shadow,
            },
        );
        assert_eq!(check(&g), vec![]);
        (g, mem)
    }

    #[test]
    fn a_double_buffer_release_is_reported() {
        let (mut g, mut mem) = holding();
        let buffer = g.registered.remove(&1).unwrap();
        let pages = buffer.pages.clone();
        g.release_buffer(&mut mem, buffer);
        let arg = g.rpc_args.remove(&2).unwrap();
        g.release_rpc_arg(&mut mem, arg);
        assert_eq!(check(&g), vec![]);
        assert_eq!((g.buffers.get(), g.pins.total()), (0, 0));
        // The same buffer released again: the buffer count and both pages go below zero,
        // where a saturating count would have stayed at a plausible 0.
        g.release_buffer(
            &mut mem,
            Buffer {
                pages,
                lists: vec![],
            },
        );
        let found = check(&g);
        assert!(found.contains(&HypDisagreement::Underflow {
            vm: VM,
            counter: "buffers",
            underflows: 1,
        }));
        assert!(found.contains(&HypDisagreement::Underflow {
            vm: VM,
            counter: "pins",
            underflows: 2,
        }));
    }

    #[test]
    fn a_release_below_a_count_still_held_shows_in_the_recount() {
        let (mut g, mut mem) = holding();
        let buffer = g.registered.remove(&1).unwrap();
        let pages = buffer.pages.clone();
        g.release_buffer(&mut mem, buffer);
        g.release_buffer(
            &mut mem,
            Buffer {
                pages,
                lists: vec![],
            },
        );
        // The RPC arg buffer still holds the count at 1 → 0: no underflow of `buffers`, but
        // the recount (1 buffer held) disagrees.
        let found = check(&g);
        assert!(found.contains(&HypDisagreement::Counter {
            vm: VM,
            counter: "buffers",
            recorded: 0,
            recomputed: 1,
        }));
    }

    #[test]
    fn a_double_shadow_free_is_reported() {
        let (mut g, mut mem) = holding();
        let arg = g.rpc_args.remove(&2).unwrap();
        let shadow = arg.shadow;
        g.release_rpc_arg(&mut mem, arg);
        assert_eq!(check(&g), vec![]);
        g.free_shadows(&mut mem, &[shadow]);
        assert_eq!(
            check(&g),
            vec![HypDisagreement::Underflow {
                vm: VM,
                counter: "shadow_pages",
                underflows: 1,
            }]
        );
    }

    #[test]
    fn a_double_unpin_is_reported_even_when_the_total_stays_plausible() {
        let (mut g, _) = holding();
        // One page of the registered buffer unpinned behind the buffer's back, then again:
        // the total (3 → 1) still looks possible; the recount and the underflow show both.
        g.pins.unpin_all(&[0x4000_0000]);
        g.pins.unpin_all(&[0x4000_0000]);
        let found = check(&g);
        assert!(found.contains(&HypDisagreement::Underflow {
            vm: VM,
            counter: "pins",
            underflows: 1,
        }));
        assert!(found.contains(&HypDisagreement::Pins {
            vm: VM,
            page: 0x4000_0000,
            recorded: 0,
            recomputed: 1,
        }));
        assert!(found.contains(&HypDisagreement::Counter {
            vm: VM,
            counter: "pins",
            recorded: 2,
            recomputed: 3,
        }));
    }
}
