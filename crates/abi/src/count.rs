//! A count of things held whose release below zero is an error, and is remembered.
//!
//! The core's and the mediator's counters of what a guest holds used to saturate at zero: a
//! double release left the count plausible, and an agreement checker that compares a count
//! with the things it counts could not tell. A [`Count`] answers such a release with
//! [`Underflow`] and keeps how often it happened, for the checkers to report.
//!
//! It lives here because the wire ABI is the one crate both the core and the mediator use.

/// A release of more than was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("released {released} of a count of {held}")]
pub struct Underflow {
    /// What the count held before.
    pub held: u64,
    /// What the release asked for.
    pub released: u64,
}

/// A count that never goes below zero and remembers each attempt to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    value: u64,
    underflows: u64,
}

impl Count {
    /// Nothing held, no underflow seen.
    pub const ZERO: Self = Self {
        value: 0,
        underflows: 0,
    };

    /// `value` held, no underflow seen.
    pub const fn new(value: u64) -> Self {
        Self {
            value,
            underflows: 0,
        }
    }

    /// What is held.
    pub const fn get(self) -> u64 {
        self.value
    }

    /// Releases that asked for more than was held, since the count was made.
    pub const fn underflows(self) -> u64 {
        self.underflows
    }

    /// Adds `n`. Counts are bounded by quotas far below `u64::MAX`; past it the count stays at
    /// the maximum.
    pub fn add(&mut self, n: u64) {
        self.value = self.value.saturating_add(n);
    }

    /// Takes `n` away.
    ///
    /// # Errors
    /// [`Underflow`] when less than `n` is held: the count is then 0 (nothing can still be
    /// held), and the underflow is recorded in [`Count::underflows`].
    pub fn sub(&mut self, n: u64) -> Result<(), Underflow> {
        match self.value.checked_sub(n) {
            Some(left) => {
                self.value = left;
                Ok(())
            }
            None => {
                let held = self.value;
                self.value = 0;
                self.underflows = self.underflows.saturating_add(1);
                Err(Underflow { held, released: n })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_below_zero_is_refused_and_remembered() {
        let mut c = Count::ZERO;
        c.add(2);
        assert_eq!(c.sub(1), Ok(()));
        assert_eq!((c.get(), c.underflows()), (1, 0));
        assert_eq!(
            c.sub(2),
            Err(Underflow {
                held: 1,
                released: 2
            })
        );
        assert_eq!((c.get(), c.underflows()), (0, 1));
        // A double release of what is already gone: another underflow, still 0.
        assert!(c.sub(1).is_err());
        assert_eq!((c.get(), c.underflows()), (0, 2));
        assert_eq!(c.sub(0), Ok(()));
        c.add(u64::MAX);
        c.add(1);
        assert_eq!(c.get(), u64::MAX);
    }
}
