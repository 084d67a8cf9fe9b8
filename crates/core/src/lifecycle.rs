//! The use count of a memory object, and the one moment it is released.
//!
//! A memory object is *retired* by its owner (unregister, the end of the call that made a
//! temporary buffer, an RPC free, a guest's destruction) and *used* by calls. It is released
//! exactly once: by whoever makes "retired and no user" true, the retirer if nobody uses it,
//! otherwise the last user. One atomic word holds both facts, so there is no window in which
//! both sides, or neither, believe they release it — the race OP-TEE had to fix three times
//! (06ea466f9, 83a3d56a2, 7c04952c7).

use core::sync::atomic::{AtomicU32, Ordering};

const RETIRED: u32 = 1 << 31;
const USERS: u32 = RETIRED - 1;

/// Users of a memory object and whether its owner has retired it.
#[derive(Debug, Default)]
pub struct UseCount(AtomicU32);

/// What a retire found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Nobody used the object: the retirer releases it now.
    ReleaseNow,
    /// Calls still use it: the last of them releases it.
    InUse {
        /// Users at the moment of the retire.
        users: u32,
    },
    /// It had been retired before; nothing changed.
    AlreadyRetired,
}

impl UseCount {
    /// A live object with no users.
    pub const fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    /// Adds a user, unless the object is retired (or has 2^31 - 1 users).
    pub fn try_acquire(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & RETIRED == 0 && v & USERS < USERS).then_some(v + 1)
            })
            .is_ok()
    }

    /// Adds a user beside one the caller already holds (so the object cannot have been
    /// released), retired or not.
    pub fn add_user(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & USERS < USERS).then_some(v + 1)
            });
    }

    /// Drops a user. Returns true when the caller was the last user of a retired object and
    /// must release it.
    pub fn drop_user(&self) -> bool {
        let before = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & USERS != 0).then(|| v - 1)
            })
            .unwrap_or(0);
        before == RETIRED | 1
    }

    /// Retires the object (its owner lets go).
    pub fn retire(&self) -> Retire {
        let before = self.0.fetch_or(RETIRED, Ordering::AcqRel);
        if before & RETIRED != 0 {
            Retire::AlreadyRetired
        } else if before & USERS == 0 {
            Retire::ReleaseNow
        } else {
            Retire::InUse {
                users: before & USERS,
            }
        }
    }

    /// Current users.
    pub fn users(&self) -> u32 {
        self.0.load(Ordering::Acquire) & USERS
    }

    /// Whether the owner has retired the object.
    pub fn is_retired(&self) -> bool {
        self.0.load(Ordering::Acquire) & RETIRED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retire_idle_releases_now() {
        let c = UseCount::new();
        assert_eq!(c.retire(), Retire::ReleaseNow);
        assert!(!c.try_acquire());
        assert_eq!(c.retire(), Retire::AlreadyRetired);
    }

    #[test]
    fn last_user_releases() {
        let c = UseCount::new();
        assert!(c.try_acquire());
        assert!(c.try_acquire());
        assert_eq!(c.retire(), Retire::InUse { users: 2 });
        assert!(!c.drop_user());
        assert!(c.drop_user());
        assert!(!c.drop_user(), "no underflow, no second release");
    }

    #[test]
    fn threads_release_exactly_once() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        for _ in 0..200 {
            let c = Arc::new(UseCount::new());
            let releases = Arc::new(AtomicUsize::new(0));
            for _ in 0..4 {
                assert!(c.try_acquire());
            }
            let mut handles = std::vec::Vec::new();
            for _ in 0..4 {
                let (c, r) = (c.clone(), releases.clone());
                handles.push(std::thread::spawn(move || {
                    if c.drop_user() {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            if c.retire() == Retire::ReleaseNow {
                releases.fetch_add(1, Ordering::SeqCst);
            }
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(releases.load(Ordering::SeqCst), 1);
        }
    }

    proptest! {
        /// Any interleaving of acquire / drop / retire releases at most once, and exactly once
        /// when the object ends retired with no users.
        #[test]
        fn releases_at_most_once(ops in proptest::collection::vec(0u8..3, 0..64)) {
            let c = UseCount::new();
            let (mut users, mut retired, mut releases) = (0u32, false, 0u32);
            for op in ops {
                match op {
                    0 => {
                        let ok = c.try_acquire();
                        prop_assert_eq!(ok, !retired);
                        if ok { users += 1; }
                    }
                    1 => {
                        let expected = retired && users == 1;
                        let last = c.drop_user();
                        prop_assert_eq!(last, expected);
                        users = users.saturating_sub(1);
                        if last { releases += 1; }
                    }
                    _ => match c.retire() {
                        Retire::ReleaseNow => { prop_assert!(!retired && users == 0); retired = true; releases += 1; }
                        Retire::InUse { users: u } => { prop_assert!(!retired); prop_assert_eq!(u, users); retired = true; }
                        Retire::AlreadyRetired => prop_assert!(retired),
                    },
                }
                prop_assert_eq!(c.users(), users);
                prop_assert!(releases <= 1);
            }
            prop_assert_eq!(releases == 1, retired && users == 0);
        }
    }
}
