//! Threads: the fixed set of yielding-call contexts. A call holds one from its SMC until its
//! result is written, across any RPCs; while it waits for the normal world, its whole state
//! lives in the slot.
//!
//! Fair shares: one thread is reserved for each guest the core may have at once (`max_guests`
//! under a hypervisor, the one normal world without), and the threads beyond those form a
//! shared pool that any guest may borrow from (up to its own `max_threads`). So a guest that
//! holds every thread it may — even suspended in RPCs it never answers — can keep no other
//! guest from its first thread: neither one that lives now nor one created later. OP-TEE lets
//! one guest take them all.
//!
//! A guest's call that ends while no other call of it runs leaves its thread parked for the
//! guest's next call instead of freeing it (`GuestLife`, in `lifecycle`): still counted here
//! as the guest's, so no other guest's share changes, and taken back without this table's lock.

use crate::msg::Call;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use teeshm_abi::GuestId;

/// One thread slot.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Free for a new call.
    Free,
    /// A call of this guest is running on some CPU.
    Running(GuestId),
    /// A call waits for the normal world's answer to an RPC.
    Suspended(Box<Call>),
}

/// What a thread is doing, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    /// Free.
    Free,
    /// Running a call of the guest.
    Running(GuestId),
    /// Waiting in an RPC to the guest.
    Suspended(GuestId),
}

/// A guest's standing in the table.
#[derive(Debug, Clone, Copy, Default)]
struct Holding {
    /// Threads it holds (running or suspended).
    threads: usize,
    /// Whether one thread is reserved for it (it was admitted and not yet destroyed).
    admitted: bool,
}

/// Why a guest could not be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdmitError {
    /// It is admitted already.
    Already,
    /// Every reserved thread belongs to an admitted guest already.
    NoThread,
}

/// The thread slots.
#[derive(Debug)]
pub(crate) struct ThreadTable {
    slots: Vec<Slot>,
    holdings: BTreeMap<GuestId, Holding>,
    /// Slots not free.
    in_use: usize,
    /// Guests with a reserved thread.
    admitted: usize,
    /// Threads set aside, one for each guest the core may have at once.
    reserved: usize,
    /// Admitted guests that hold at least one thread (their reserved one in use).
    admitted_holders: usize,
}

impl ThreadTable {
    /// `count` threads, of which `reserved` (at most `count`) are set aside one for each guest
    /// the core may have at once.
    pub(crate) fn new(count: usize, reserved: usize) -> Self {
        Self {
            slots: (0..count).map(|_| Slot::Free).collect(),
            holdings: BTreeMap::new(),
            in_use: 0,
            admitted: 0,
            reserved: reserved.min(count),
            admitted_holders: 0,
        }
    }

    /// Threads borrowed from the shared pool: every thread in use beyond each admitted
    /// holder's reserved one.
    fn borrowed(&self) -> usize {
        self.in_use.saturating_sub(self.admitted_holders)
    }

    /// Free slots.
    fn free_slots(&self) -> usize {
        self.slots.len().saturating_sub(self.in_use)
    }

    /// Admitted guests holding no thread: each must find one free.
    fn waiting(&self) -> usize {
        self.admitted.saturating_sub(self.admitted_holders)
    }

    /// The shared pool: threads beyond the reserved ones.
    fn shared(&self) -> usize {
        self.slots.len().saturating_sub(self.reserved)
    }

    /// Reserves a thread for `guest`.
    pub(crate) fn admit(&mut self, guest: GuestId) -> Result<(), AdmitError> {
        let holding = self.holdings.get(&guest).copied().unwrap_or_default();
        if holding.admitted {
            return Err(AdmitError::Already);
        }
        // The shared pool does not shrink: the thread was set aside for it from the start. A
        // destroyed guest's call still running may sit on one for a moment (`free_slots`).
        if self.admitted >= self.reserved || self.free_slots() <= self.waiting() {
            return Err(AdmitError::NoThread);
        }
        self.admitted += 1;
        if holding.threads > 0 {
            self.admitted_holders += 1;
        }
        self.holdings.insert(
            guest,
            Holding {
                admitted: true,
                ..holding
            },
        );
        Ok(())
    }

    /// Gives up `guest`'s reservation (it is destroyed); threads it still runs stay in use
    /// until they end.
    pub(crate) fn dismiss(&mut self, guest: GuestId) {
        let Some(holding) = self.holdings.get_mut(&guest) else {
            return;
        };
        if !holding.admitted {
            return;
        }
        holding.admitted = false;
        self.admitted -= 1;
        if holding.threads > 0 {
            self.admitted_holders -= 1;
        } else {
            self.holdings.remove(&guest);
        }
    }

    /// Takes a free slot for a call of `guest`: its reserved one if it holds none, else one
    /// of the shared pool if any is left.
    pub(crate) fn claim(&mut self, guest: GuestId) -> Option<usize> {
        let holding = self.holdings.get(&guest).copied()?;
        if !holding.admitted {
            return None;
        }
        if holding.threads > 0
            && (self.borrowed() >= self.shared() || self.free_slots() <= self.waiting())
        {
            return None;
        }
        let id = self.slots.iter().position(|s| matches!(s, Slot::Free))?;
        let slot = self.slots.get_mut(id)?;
        *slot = Slot::Running(guest);
        self.count_in(guest);
        Some(id)
    }

    fn count_in(&mut self, guest: GuestId) {
        if let Some(holding) = self.holdings.get_mut(&guest) {
            if holding.threads == 0 && holding.admitted {
                self.admitted_holders += 1;
            }
            holding.threads += 1;
            self.in_use += 1;
        }
    }

    fn count_out(&mut self, guest: GuestId) {
        let Some(holding) = self.holdings.get_mut(&guest) else {
            return;
        };
        holding.threads = holding.threads.saturating_sub(1);
        self.in_use = self.in_use.saturating_sub(1);
        if holding.threads == 0 {
            if holding.admitted {
                self.admitted_holders -= 1;
            } else {
                self.holdings.remove(&guest);
            }
        }
    }

    /// Parks the running call of slot `id` until the normal world answers.
    pub(crate) fn suspend(&mut self, id: usize, call: Box<Call>) {
        if let Some(slot) = self.slots.get_mut(id) {
            *slot = Slot::Suspended(call);
        }
    }

    /// Takes back the call suspended in slot `id`, if it belongs to `guest`.
    pub(crate) fn resume(&mut self, id: usize, guest: GuestId) -> Option<Box<Call>> {
        let slot = self.slots.get_mut(id)?;
        match slot {
            Slot::Suspended(call) if call.guest_id() == guest => {
                match core::mem::replace(slot, Slot::Running(guest)) {
                    Slot::Suspended(call) => Some(call),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Frees slot `id`.
    pub(crate) fn free(&mut self, id: usize) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        let holder = match core::mem::replace(slot, Slot::Free) {
            Slot::Free => None,
            Slot::Running(g) => Some(g),
            Slot::Suspended(call) => Some(call.guest_id()),
        };
        if let Some(g) = holder {
            self.count_out(g);
        }
    }

    /// Whether any slot serves `guest`.
    pub(crate) fn any_of(&self, guest: GuestId) -> bool {
        self.slots.iter().any(|s| match s {
            Slot::Free => false,
            Slot::Running(g) => *g == guest,
            Slot::Suspended(call) => call.guest_id() == guest,
        })
    }

    /// Ends every call of `guest` that waits in an RPC; the slots become free. Returns the
    /// calls, so the caller drops them (and their uses) outside the lock.
    pub(crate) fn end_suspended_of(&mut self, guest: GuestId) -> Vec<Call> {
        let mut ended = Vec::new();
        for slot in &mut self.slots {
            if matches!(slot, Slot::Suspended(call) if call.guest_id() == guest) {
                if let Slot::Suspended(call) = core::mem::replace(slot, Slot::Free) {
                    ended.push(*call);
                }
            }
        }
        for _ in &ended {
            self.count_out(guest);
        }
        ended
    }

    /// States of all slots.
    pub(crate) fn states(&self) -> Vec<ThreadState> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Free => ThreadState::Free,
                Slot::Running(g) => ThreadState::Running(*g),
                Slot::Suspended(call) => ThreadState::Suspended(call.guest_id()),
            })
            .collect()
    }

    /// The suspended calls.
    pub(crate) fn suspended(&self) -> impl Iterator<Item = &Call> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Suspended(call) => Some(&**call),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn free_slots(t: &ThreadTable) -> usize {
        t.states()
            .iter()
            .filter(|s| **s == ThreadState::Free)
            .count()
    }

    /// The fairness guarantee: every admitted guest that holds no thread can get one, however
    /// the others behave.
    fn check(t: &ThreadTable) {
        let in_use = t.slots.len() - free_slots(t);
        assert_eq!(t.in_use, in_use);
        let waiting = t
            .holdings
            .values()
            .filter(|h| h.admitted && h.threads == 0)
            .count();
        assert!(
            free_slots(t) >= waiting,
            "{} free, {waiting} admitted guests without a thread",
            free_slots(t)
        );
        assert_eq!(
            t.admitted,
            t.holdings.values().filter(|h| h.admitted).count()
        );
    }

    #[test]
    fn a_greedy_guest_leaves_each_other_guest_its_thread() {
        // 5 threads, 4 of them set aside for 4 guests, 1 shared.
        let mut t = ThreadTable::new(5, 4);
        for g in 1..=3 {
            t.admit(GuestId(g)).unwrap();
        }
        // Guest 1 takes what it can: its own and the one shared thread.
        let taken: Vec<_> = core::iter::from_fn(|| t.claim(GuestId(1))).collect();
        assert_eq!(taken.len(), 2);
        assert!(t.claim(GuestId(2)).is_some());
        assert!(t.claim(GuestId(3)).is_some());
        assert!(t.claim(GuestId(2)).is_none(), "nothing shared is left");
        // A guest created now still finds its thread.
        assert_eq!(t.admit(GuestId(4)), Ok(()));
        assert_eq!(t.admit(GuestId(4)), Err(AdmitError::Already));
        assert!(t.claim(GuestId(4)).is_some());
        // A fifth guest has no thread set aside.
        assert_eq!(t.admit(GuestId(5)), Err(AdmitError::NoThread));
        check(&t);
    }

    #[test]
    fn a_dismissed_guest_keeps_its_running_threads_until_they_end() {
        let mut t = ThreadTable::new(2, 1);
        t.admit(GuestId(1)).unwrap();
        let a = t.claim(GuestId(1)).unwrap();
        t.dismiss(GuestId(1));
        assert!(t.claim(GuestId(1)).is_none(), "not admitted any more");
        // Guest 2 takes the place set aside; its first thread is the other, free one.
        t.admit(GuestId(2)).unwrap();
        t.admit(GuestId(3)).unwrap_err();
        let b = t.claim(GuestId(2)).unwrap();
        t.free(a);
        t.free(b);
        assert!(!t.holdings.contains_key(&GuestId(1)));
        check(&t);
    }

    proptest! {
        #[test]
        fn fair_shares_hold_after_every_step(
            threads in 1usize..8,
            reserved in 1usize..8,
            ops in proptest::collection::vec((0u8..4, 1u16..6, 0usize..8), 0..200),
        ) {
            let mut t = ThreadTable::new(threads, reserved);
            for (op, g, slot) in ops {
                let g = GuestId(g);
                match op {
                    0 => { let _ = t.admit(g); }
                    1 => t.dismiss(g),
                    2 => {
                        let zero = t.holdings.get(&g).is_some_and(|h| h.admitted && h.threads == 0);
                        let got = t.claim(g);
                        if zero {
                            prop_assert!(got.is_some(), "an admitted guest without a thread was refused");
                        }
                    }
                    _ => t.free(slot % threads),
                }
                check(&t);
            }
        }
    }
}
