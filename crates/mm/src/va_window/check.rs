//! The allocator's self-check, which the window's agreement checker runs.

use super::*;

impl VaWindow {
    /// Checks the allocator's own bookkeeping and returns every inconsistency found.
    ///
    /// Walks the runs by their head tags: they tile the window exactly; every run's flags agree
    /// with its neighbours and with the live bitmap; free runs never touch (they are merged),
    /// their end tags point back at them, and each is in exactly its class's list or bitmap; the
    /// class bitmap says which classes hold runs; the counters match. O(n) in the window's pages.
    pub fn check(&self) -> Vec<alloc::string::String> {
        use alloc::format;
        let mut problems = Vec::new();
        let total = self.total_pages;
        let mut page = 0u32;
        let mut previous_free = false;
        let (mut live_seen, mut live_pages, mut free_seen) = (0usize, 0u64, 0usize);
        if self.top > total {
            problems.push(format!("top run at page {} past the window", self.top));
        }
        while page < self.top.min(total) {
            let head = self.tag(page);
            let len = head & LEN;
            if head & HEAD == 0
                || len == 0
                || u64::from(page) + u64::from(len) > u64::from(self.top)
            {
                problems.push(format!(
                    "no valid run starts at page {page} (tag {head:#x})"
                ));
                break;
            }
            let free = head & FREE != 0;
            if free {
                free_seen += 1;
                if previous_free {
                    problems.push(format!(
                        "free run at page {page} not merged with its predecessor"
                    ));
                }
                if self.live.test(page as usize) {
                    problems.push(format!("free run at page {page} marked live"));
                }
                if len > 1 && self.tag(page + len - 1) != page {
                    problems.push(format!("free run {page}+{len} has a wrong end tag"));
                }
                let class = class_of(len);
                let listed = if len < SMALL {
                    self.heads.get(class as usize) == Some(&page)
                        || self.small_map(class).is_some_and(|m| m.test(page as usize))
                } else {
                    self.list(class).any(|run| run == page)
                };
                if !listed {
                    problems.push(format!("free run {page}+{len} missing from class {class}"));
                }
            } else {
                live_seen += 1;
                live_pages += u64::from(len);
                if !self.live.test(page as usize) {
                    problems.push(format!(
                        "live range at page {page} missing from the live bitmap"
                    ));
                }
                if len > 1 && self.tag(page + len - 1) != LIVE_END {
                    problems.push(format!("live range {page}+{len} has a wrong end tag"));
                }
                if u64::from(len) <= self.config.guard_pages {
                    problems.push(format!(
                        "live range at page {page} has no page past its guard"
                    ));
                }
            }
            previous_free = free;
            page += len;
        }
        if page == self.top && self.top < total && previous_free {
            problems.push(format!(
                "top run at page {page} not merged with its predecessor"
            ));
        }
        let live_bits = self.live.iter().count();
        if live_bits != live_seen {
            problems.push(format!(
                "{live_bits} live starts marked, {live_seen} live ranges"
            ));
        }
        if live_seen != self.live_count {
            problems.push(format!(
                "live counter {} but {live_seen} live ranges",
                self.live_count
            ));
        }
        if live_pages != self.live_pages {
            problems.push(format!(
                "live page counter {} but live ranges hold {live_pages}",
                self.live_pages
            ));
        }
        // Every listed run is a free run of its class, listed once, with sound back links.
        let mut listed = 0usize;
        for class in 1..CLASSES as u32 {
            let mut count = 0usize;
            let mut prev = NIL;
            for run in self.runs_of(class) {
                count += 1;
                let head = self.tag(run);
                if head & (HEAD | FREE) != HEAD | FREE || class_of(head & LEN) != class {
                    problems.push(format!(
                        "class {class} lists page {run}, not a free run of it"
                    ));
                } else if class >= SMALL && self.tag(run + 1) != prev {
                    problems.push(format!("free run at page {run} has a wrong back link"));
                }
                prev = run;
            }
            listed += count;
            let marked = self
                .class_bits
                .get((class / 64) as usize)
                .is_some_and(|b| b & (1 << (class % 64)) != 0);
            if marked != (count > 0) {
                problems.push(format!("class {class} holds {count} runs, marked {marked}"));
            }
        }
        for (word, bits) in self.class_bits.iter().enumerate() {
            if (self.class_words & (1 << word) != 0) != (*bits != 0) {
                problems.push(format!("class word {word} summary disagrees"));
            }
        }
        if listed != free_seen {
            problems.push(format!("{listed} runs listed, {free_seen} free runs"));
        }
        problems
    }
}
