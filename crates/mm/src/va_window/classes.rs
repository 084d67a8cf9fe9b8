//! The free runs' size classes: finding a run that fits, taking from it, and linking and
//! unlinking free runs in their class's list or small-run bitmap, with the tags of their
//! boundary pages.

use super::*;

impl VaWindow {
    /// (run, its length, where the range starts) for an unaligned request.
    #[inline(always)]
    pub(super) fn find_fit(&self, need: u32) -> Option<(u32, u32, u32)> {
        if let Some(class) = self.class_from(class_sure(need)) {
            let run = self.first_run(class)?;
            return Some((run, self.tag(run) & LEN, run));
        }
        let top = self.total_pages - self.top;
        if top >= need {
            return Some((self.top, top, self.top));
        }
        // Runs of the request's own class may still hold it.
        let class = class_of(need);
        if class_min(class) == need {
            return None;
        }
        self.list(class)
            .take(ALIGNED_SCAN_LIMIT)
            .map(|run| (run, self.tag(run) & LEN))
            .find(|&(_, len)| len >= need)
            .map(|(run, len)| (run, len, run))
    }

    /// The same for an alignment of `align_pages` (> 1) pages relative to address 0.
    #[inline(never)]
    pub(super) fn find_aligned(&self, need: u32, align_pages: u64) -> Option<(u32, u32, u32)> {
        let base_pfn = self.config.base.page_number();
        let fits = |run: u32, len: u32| -> Option<u32> {
            let absolute = base_pfn.checked_add(u64::from(run))?;
            let at = absolute.checked_next_multiple_of(align_pages)? - base_pfn;
            let end = at.checked_add(u64::from(need))?;
            (end <= u64::from(run) + u64::from(len)).then_some(at as u32)
        };
        let sure = u64::from(need) + align_pages - 1;
        let sure_class = u32::try_from(sure)
            .ok()
            .filter(|&s| s <= LEN)
            .map(class_sure);
        // Runs that may fit: classes from the request's up to (not including) the sure one.
        let mut tried = 0;
        let mut class = self.class_from(class_of(need));
        while let Some(c) = class {
            if sure_class.is_some_and(|s| c >= s) || tried >= ALIGNED_SCAN_LIMIT {
                break;
            }
            for run in self.runs_of(c).take(ALIGNED_SCAN_LIMIT - tried) {
                tried += 1;
                let len = self.tag(run) & LEN;
                if let Some(at) = fits(run, len) {
                    return Some((run, len, at));
                }
            }
            class = self.class_from(c + 1);
        }
        if let Some(class) = sure_class.and_then(|c| self.class_from(c)) {
            let run = self.first_run(class)?;
            let len = self.tag(run) & LEN;
            return fits(run, len).map(|at| (run, len, at));
        }
        let len = self.total_pages - self.top;
        fits(self.top, len).map(|at| (self.top, len, at))
    }

    /// The lowest non-empty class at or above `class`.
    #[inline(always)]
    pub(super) fn class_from(&self, class: u32) -> Option<u32> {
        let word = (class / 64) as usize;
        let bits = *self.class_bits.get(word)? & (!0u64 << (class % 64));
        if bits != 0 {
            return Some(word as u32 * 64 + bits.trailing_zeros());
        }
        let words = self.class_words & (!1u64).checked_shl(word as u32)?;
        if words == 0 {
            return None;
        }
        let word = words.trailing_zeros();
        let bits = *self.class_bits.get(word as usize)?;
        Some(word * 64 + bits.trailing_zeros())
    }

    /// The highest non-empty class.
    pub(super) fn highest_class(&self) -> Option<u32> {
        let word = 63u32.checked_sub(self.class_words.leading_zeros())?;
        let bits = *self.class_bits.get(word as usize)?;
        Some(word * 64 + 63u32.checked_sub(bits.leading_zeros())?)
    }

    /// The first free run of a non-empty class.
    #[inline(always)]
    pub(super) fn first_run(&self, class: u32) -> Option<u32> {
        let head = self
            .heads
            .get(class as usize)
            .copied()
            .filter(|&h| h != NIL);
        if class < SMALL && head.is_none() {
            self.small_map(class)?.first().map(|p| p as u32)
        } else {
            head
        }
    }

    /// The free runs of a class: in list order, or the latest freed then address order.
    pub(super) fn runs_of(&self, class: u32) -> impl Iterator<Item = u32> + '_ {
        let latest = (class < SMALL)
            .then(|| self.heads.get(class as usize).copied())
            .flatten()
            .filter(|&h| h != NIL);
        let small = (class < SMALL)
            .then(|| self.small_map(class))
            .flatten()
            .into_iter()
            .flat_map(|map| map.iter().map(|p| p as u32));
        let small = latest.into_iter().chain(small);
        let listed = (class >= SMALL)
            .then(|| self.list(class))
            .into_iter()
            .flatten();
        small.chain(listed)
    }

    /// The free list of a class (`SMALL..`), bounded by the number of pages.
    pub(super) fn list(&self, class: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.heads.get(class as usize).copied().unwrap_or(NIL);
        core::iter::from_fn(move || {
            let run = (next != NIL).then_some(next)?;
            next = self.tag(run + 2);
            Some(run)
        })
        .take(self.total_pages as usize)
    }

    pub(super) fn small_map(&self, class: u32) -> Option<&PageBitmap> {
        self.small.get(class.checked_sub(1)? as usize)
    }

    // ---- changing runs -------------------------------------------------------------------

    /// Turns `need` pages at `at` of the free run `run` (`len` pages) into a live range.
    #[inline(always)]
    pub(super) fn take(&mut self, run: u32, len: u32, at: u32, need: u32) {
        let before = at - run;
        let after = len - before - need;
        let end = at + need;
        if run == self.top {
            // From the top run: what is left after the range stays the top run.
            if before > 0 {
                self.link_free(run, before);
            }
            self.top = end;
        } else if before == 0 && len >= SMALL && class_of(after) == class_of(len) {
            // The rest stays in the run's class: move its node instead of relinking.
            self.move_node(run, end, class_of(len));
            self.write_free(end, after);
        } else {
            self.unlink(run, len);
            if before > 0 {
                self.link_free(run, before);
            }
            if after > 0 {
                self.link_free(end, after);
            }
        }
        self.set_tag(at, HEAD | need);
        if need > 1 {
            self.set_tag(end - 1, LIVE_END);
        }
        self.live.set(at as usize);
        self.live_count += 1;
        self.live_pages += u64::from(need);
    }

    /// Writes the tags of a free run (head, end) without touching its class's structure.
    #[inline(always)]
    pub(super) fn write_free(&mut self, run: u32, len: u32) {
        self.set_tag(run, HEAD | FREE | len);
        if len > 1 {
            self.set_tag(run + len - 1, run);
        }
    }

    /// Makes `run` (`len` pages) a free run of its class.
    #[inline(always)]
    pub(super) fn link_free(&mut self, run: u32, len: u32) {
        self.write_free(run, len);
        let class = class_of(len);
        if len < SMALL {
            // The latest freed run of the class is its head; the one it replaces goes to the
            // class's bitmap.
            let old = self.heads.get(class as usize).copied().unwrap_or(NIL);
            if old != NIL {
                if let Some(map) = self.small.get_mut(class as usize - 1) {
                    map.set(old as usize);
                }
            }
            if let Some(head) = self.heads.get_mut(class as usize) {
                *head = run;
            }
        } else {
            let old = self.heads.get(class as usize).copied().unwrap_or(NIL);
            self.set_tag(run + 1, NIL);
            self.set_tag(run + 2, old);
            if old != NIL {
                self.set_tag(old + 1, run);
            }
            if let Some(head) = self.heads.get_mut(class as usize) {
                *head = run;
            }
        }
        self.mark_class(class);
    }

    /// Takes the free run `run` (`len` pages) out of its class.
    #[inline(always)]
    pub(super) fn unlink(&mut self, run: u32, len: u32) {
        let class = class_of(len);
        let empty = if len < SMALL {
            let head = self.heads.get_mut(class as usize);
            let latest = head.as_ref().is_some_and(|h| **h == run);
            let none_latest = match head {
                Some(h) if latest => {
                    *h = NIL;
                    true
                }
                Some(h) => *h == NIL,
                None => true,
            };
            match self.small.get_mut(class as usize - 1) {
                Some(map) if latest => map.is_empty(),
                Some(map) => map.clear(run as usize) && none_latest,
                None => none_latest,
            }
        } else {
            let prev = self.tag(run + 1);
            let next = self.tag(run + 2);
            if next != NIL {
                self.set_tag(next + 1, prev);
            }
            if prev != NIL {
                self.set_tag(prev + 2, next);
                false
            } else {
                if let Some(head) = self.heads.get_mut(class as usize) {
                    *head = next;
                }
                next == NIL
            }
        };
        if empty {
            self.unmark_class(class);
        }
    }

    /// Moves the list node of a free run from `from` to `to` (same class, so at least
    /// `SMALL` pages; the links are read before they are written, so the slots may overlap).
    #[inline(always)]
    pub(super) fn move_node(&mut self, from: u32, to: u32, class: u32) {
        let prev = self.tag(from + 1);
        let next = self.tag(from + 2);
        self.set_tag(to + 1, prev);
        self.set_tag(to + 2, next);
        if next != NIL {
            self.set_tag(next + 1, to);
        }
        if prev != NIL {
            self.set_tag(prev + 2, to);
        } else if let Some(head) = self.heads.get_mut(class as usize) {
            *head = to;
        }
    }

    #[inline(always)]
    pub(super) fn mark_class(&mut self, class: u32) {
        if let Some(bits) = self.class_bits.get_mut((class / 64) as usize) {
            *bits |= 1 << (class % 64);
            self.class_words |= 1 << (class / 64);
        }
    }

    #[inline(always)]
    pub(super) fn unmark_class(&mut self, class: u32) {
        if let Some(bits) = self.class_bits.get_mut((class / 64) as usize) {
            *bits &= !(1 << (class % 64));
            if *bits == 0 {
                self.class_words &= !(1 << (class / 64));
            }
        }
    }

    #[inline(always)]
    pub(super) fn tag(&self, page: u32) -> u32 {
        self.tags.get(page as usize).copied().unwrap_or(0)
    }

    #[inline(always)]
    pub(super) fn set_tag(&mut self, page: u32, value: u32) {
        if let Some(tag) = self.tags.get_mut(page as usize) {
            *tag = value;
        }
    }
}
