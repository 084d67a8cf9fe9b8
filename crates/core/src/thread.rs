//! Threads: the fixed set of yielding-call contexts. A call holds one from its SMC until its
//! result is written, across any RPCs; while it waits for the normal world, its whole state
//! lives in the slot.

use crate::msg::Call;
use alloc::boxed::Box;
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

/// The thread slots.
#[derive(Debug)]
pub(crate) struct ThreadTable {
    slots: Vec<Slot>,
}

impl ThreadTable {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            slots: (0..count).map(|_| Slot::Free).collect(),
        }
    }

    /// Takes a free slot for a call of `guest`.
    pub(crate) fn claim(&mut self, guest: GuestId) -> Option<usize> {
        let id = self.slots.iter().position(|s| matches!(s, Slot::Free))?;
        let slot = self.slots.get_mut(id)?;
        *slot = Slot::Running(guest);
        Some(id)
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
        if let Some(slot) = self.slots.get_mut(id) {
            *slot = Slot::Free;
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
