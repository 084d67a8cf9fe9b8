//! A hierarchical bitmap over the pages of the window: one bit a page, and above it one bit a
//! word of the level below, up to a single word. Set, clear and test cost O(1) (a clear or set
//! that empties or fills a word climbs, at most one word a level); the next or previous set bit
//! from any position costs O(log₆₄ n): 4 levels for a 4 GiB window of 4 KiB pages.

use alloc::vec;
use alloc::vec::Vec;

/// Bits per word.
const W: usize = 64;

/// The bitmap: `bits` one bit a page, `upper[k]` one bit a word of the level below (`bits`
/// for k = 0), up to a single word.
#[derive(Clone)]
pub(super) struct PageBitmap {
    bits: Vec<u64>,
    upper: Vec<Vec<u64>>,
}

impl PageBitmap {
    /// All clear, `bits` bits.
    pub(super) fn new(bits: usize) -> Self {
        let words = bits.max(1).div_ceil(W);
        let mut upper = Vec::new();
        let mut n = words;
        while n > 1 {
            n = n.div_ceil(W);
            upper.push(vec![0u64; n]);
        }
        Self {
            bits: vec![0u64; words],
            upper,
        }
    }

    /// Bytes the bitmap holds.
    pub(super) fn bytes(&self) -> usize {
        (self.bits.len() + self.upper.iter().map(Vec::len).sum::<usize>()) * 8
    }

    fn level(&self, level: usize) -> Option<&Vec<u64>> {
        match level.checked_sub(1) {
            None => Some(&self.bits),
            Some(up) => self.upper.get(up),
        }
    }

    fn levels(&self) -> usize {
        self.upper.len() + 1
    }

    /// Whether bit `i` is set.
    #[inline(always)]
    pub(super) fn test(&self, i: usize) -> bool {
        self.bits
            .get(i / W)
            .is_some_and(|w| w & (1 << (i % W)) != 0)
    }

    /// Sets bit `i`.
    #[inline(always)]
    pub(super) fn set(&mut self, i: usize) {
        let Some(word) = self.bits.get_mut(i / W) else {
            return;
        };
        let was = *word;
        *word = was | 1 << (i % W);
        if was == 0 {
            self.set_upper(i / W);
        }
    }

    fn set_upper(&mut self, mut i: usize) {
        for level in &mut self.upper {
            let Some(word) = level.get_mut(i / W) else {
                return;
            };
            let was = *word;
            *word = was | 1 << (i % W);
            if was != 0 {
                return;
            }
            i /= W;
        }
    }

    /// Clears bit `i`; whether the bitmap is empty then.
    #[inline(always)]
    pub(super) fn clear(&mut self, i: usize) -> bool {
        let Some(word) = self.bits.get_mut(i / W) else {
            return false;
        };
        *word &= !(1 << (i % W));
        *word == 0 && self.clear_upper(i / W)
    }

    /// Clears bit `i`; whether it was set.
    #[inline(always)]
    pub(super) fn test_and_clear(&mut self, i: usize) -> bool {
        let Some(word) = self.bits.get_mut(i / W) else {
            return false;
        };
        let bit = 1 << (i % W);
        let was = *word;
        *word = was & !bit;
        if was == bit {
            let _ = self.clear_upper(i / W);
        }
        was & bit != 0
    }

    /// Clears the summary bits of an emptied word; whether the whole bitmap is empty then.
    fn clear_upper(&mut self, mut i: usize) -> bool {
        for level in &mut self.upper {
            let Some(word) = level.get_mut(i / W) else {
                return false;
            };
            *word &= !(1 << (i % W));
            if *word != 0 {
                return false;
            }
            i /= W;
        }
        true
    }

    /// Whether no bit is set.
    #[inline(always)]
    pub(super) fn is_empty(&self) -> bool {
        self.upper
            .last()
            .unwrap_or(&self.bits)
            .first()
            .is_none_or(|&w| w == 0)
    }

    /// The lowest set bit: one word a level, from the top.
    #[inline(always)]
    pub(super) fn first(&self) -> Option<usize> {
        let mut idx = 0usize;
        for level in self.upper.iter().rev() {
            let word = *level.get(idx)?;
            if word == 0 {
                return None;
            }
            idx = idx * W + word.trailing_zeros() as usize;
        }
        let word = *self.bits.get(idx)?;
        (word != 0).then(|| idx * W + word.trailing_zeros() as usize)
    }

    /// The lowest set bit at or after `i`.
    pub(super) fn next_set(&self, i: usize) -> Option<usize> {
        // Climb until a word holds a set bit at or after the position.
        let mut level = 0;
        let mut idx = i;
        loop {
            let words = self.level(level)?;
            let w = idx / W;
            let word = *words.get(w)?;
            let masked = word & (!0u64 << (idx % W));
            if masked != 0 {
                idx = w * W + masked.trailing_zeros() as usize;
                break;
            }
            level += 1;
            idx = w + 1;
            if level >= self.levels() {
                return None;
            }
        }
        // Descend along the lowest set bits.
        while level > 0 {
            level -= 1;
            let word = *self.level(level)?.get(idx)?;
            idx = idx * W + word.trailing_zeros() as usize;
        }
        Some(idx)
    }

    /// The highest set bit at or before `i`.
    pub(super) fn prev_set(&self, i: usize) -> Option<usize> {
        let mut level = 0;
        let mut idx = i;
        loop {
            let words = self.level(level)?;
            let w = idx / W;
            // A position beyond the level's last word looks at that last word, whole.
            let (w, masked) = match words.get(w) {
                Some(&word) => (w, word & (!0u64 >> (W - 1 - idx % W))),
                None => {
                    let last = words.len().checked_sub(1)?;
                    (last, *words.get(last)?)
                }
            };
            if masked != 0 {
                idx = w * W + (W - 1 - masked.leading_zeros() as usize);
                break;
            }
            level += 1;
            idx = w.checked_sub(1)?;
            if level >= self.levels() {
                return None;
            }
        }
        while level > 0 {
            level -= 1;
            let word = *self.level(level)?.get(idx)?;
            idx = idx * W + (W - 1 - word.leading_zeros() as usize);
        }
        Some(idx)
    }

    /// The set bits in increasing order.
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let mut next = self.first();
        core::iter::from_fn(move || {
            let at = next?;
            next = self.next_set(at + 1);
            Some(at)
        })
    }
}

impl core::fmt::Debug for PageBitmap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageBitmap")
            .field("set", &self.iter().count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Against a set: next and previous set bit from every position, after random changes.
        #[test]
        fn matches_a_set(bits in 1usize..20_000, ops in proptest::collection::vec((any::<bool>(), any::<usize>()), 0..300)) {
            let mut b = PageBitmap::new(bits);
            let mut model = BTreeSet::new();
            for (set, at) in ops {
                let at = at % bits;
                if set { b.set(at); model.insert(at); } else { b.clear(at); model.remove(&at); }
            }
            prop_assert_eq!(b.is_empty(), model.is_empty());
            prop_assert_eq!(b.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            for probe in (0..bits).step_by(bits / 97 + 1).chain([0, bits - 1, bits, bits + 100]) {
                prop_assert_eq!(b.next_set(probe), model.range(probe..).next().copied());
                prop_assert_eq!(b.prev_set(probe), model.range(..=probe).next_back().copied());
                prop_assert_eq!(b.test(probe), model.contains(&probe));
            }
        }
    }
}
