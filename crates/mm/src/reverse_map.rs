//! Reverse map: which virtual pages of the window map a physical page, and for whom.
//!
//! OP-TEE never had this (`phys_to_virt` on the SHM window returns NULL). Every page of the
//! window maps at most one physical page, so the entries need no memory of their own: node `i`
//! *is* virtual page `i` of the window, holding the physical page and owner it maps. The
//! physical page's hash picks one of a power of two of buckets (at least one a window page),
//! and each bucket is an AVL tree of its nodes ordered by (physical page, owner, virtual page).
//! Nodes and bucket roots live in side tables sized with the window when it is built (20 bytes
//! a window page, zeroed memory that costs nothing until a page is used), so an insert or
//! remove never allocates and never moves another entry: it relinks the O(log n) nodes of one
//! bucket's tree. A lookup — every mapping of a page, or the one of a given owner — is one
//! descent of one bucket's tree: about one node when the pages spread over the buckets, and
//! O(log n) (AVL height ≤ 1.44 log₂ n) however a guest picks its pages — even every page of
//! the window mapping the same physical page.

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr, VirtPages};
use alloc::vec;
use alloc::vec::Vec;
use teeshm_abi::GuestId;

/// One reverse-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReverseEntry {
    /// Physical page (aligned).
    pub pa: PhysAddr,
    /// The guest the mapping belongs to.
    pub owner: GuestId,
    /// Virtual page (aligned).
    pub va: VirtAddr,
}

/// No node (node 0 is never a page: window page `p` is node `p + 1`).
const NIL: u32 = 0;
/// A node's first word: key (physical page << 16 | owner) in the low 56 bits, AVL height above
/// (0: the page is not in the tree).
const HEIGHT_SHIFT: u32 = 56;
const KEY_MASK: u64 = (1 << HEIGHT_SHIFT) - 1;
/// Physical pages below 2^40 (physical addresses below 2^52, the architecture's largest).
const PA_PAGE_LIMIT: u64 = 1 << 40;
/// Deeper than any AVL tree of 2^32 nodes (1.44 × 32 + 2).
const MAX_DEPTH: usize = 64;

/// The sort key of a node: (physical page, owner, node) as one integer.
#[inline(always)]
fn order(key: u64, node: u32) -> u128 {
    (u128::from(key) << 32) | u128::from(node)
}

/// Physical page → (owner, virtual page) for every page mapped in the window.
#[derive(Debug, Clone)]
pub struct ReverseMap {
    /// The window's first virtual page number.
    base_page: u64,
    /// Node `i` (window page `i - 1`): `[key | height << 56, left | right << 32]`.
    nodes: Vec<[u64; 2]>,
    /// The root node of each bucket's tree.
    roots: Vec<u32>,
    /// `64 - log2(buckets)`: the shift that takes a hash to its bucket.
    bucket_shift: u32,
    len: usize,
}

impl ReverseMap {
    /// An empty map for the pages of `window`: its side tables (16 bytes a page for the nodes,
    /// 4 bytes a bucket, a power of two of buckets at least the window's pages) are allocated
    /// here, once, zeroed.
    pub fn new(window: VirtPages) -> Self {
        let pages = usize::try_from(window.pages()).unwrap_or(0);
        // Node ids are u32: a window of 2^31 pages (8 TiB) or fewer.
        let pages = pages.min(1 << 31);
        let buckets = pages.next_power_of_two();
        Self {
            base_page: window.start().page_number(),
            nodes: vec![[0; 2]; pages + 1],
            roots: vec![NIL; buckets],
            bucket_shift: 64 - buckets.trailing_zeros(),
            len: 0,
        }
    }

    /// Bytes of the side tables for a window of `pages` pages.
    pub fn side_table_bytes(pages: u64) -> u64 {
        let buckets = pages.checked_next_power_of_two().unwrap_or(u64::MAX);
        pages
            .saturating_add(1)
            .saturating_mul(16)
            .saturating_add(buckets.saturating_mul(4))
    }

    /// The bucket of a key: a multiplicative hash of its physical page (all owners and
    /// addresses of a page share its bucket).
    #[inline(always)]
    fn bucket(&self, key: u64) -> usize {
        ((key >> 16).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .checked_shr(self.bucket_shift)
            .unwrap_or(0) as usize
    }

    #[inline(always)]
    fn root(&self, bucket: usize) -> u32 {
        self.roots.get(bucket).copied().unwrap_or(NIL)
    }

    #[inline(always)]
    fn set_root(&mut self, bucket: usize, n: u32) {
        if let Some(r) = self.roots.get_mut(bucket) {
            *r = n;
        }
    }

    #[inline(always)]
    fn word(&self, n: u32) -> [u64; 2] {
        self.nodes.get(n as usize).copied().unwrap_or([0; 2])
    }

    #[inline(always)]
    fn key(&self, n: u32) -> u64 {
        self.word(n)[0] & KEY_MASK
    }

    #[inline(always)]
    fn height(&self, n: u32) -> u64 {
        self.word(n)[0] >> HEIGHT_SHIFT
    }

    #[inline(always)]
    fn child(&self, n: u32, right: bool) -> u32 {
        let links = self.word(n)[1];
        (if right { links >> 32 } else { links }) as u32
    }

    #[inline(always)]
    fn set_child(&mut self, n: u32, right: bool, c: u32) {
        if let Some(w) = self.nodes.get_mut(n as usize) {
            w[1] = if right {
                (w[1] & 0xffff_ffff) | (u64::from(c) << 32)
            } else {
                (w[1] & !0xffff_ffff) | u64::from(c)
            };
        }
    }

    #[inline(always)]
    fn set_height(&mut self, n: u32, h: u64) {
        if let Some(w) = self.nodes.get_mut(n as usize) {
            w[0] = (w[0] & KEY_MASK) | (h << HEIGHT_SHIFT);
        }
    }

    /// The node of virtual page `va` and the key of `entry`, or `None` when `va` lies outside
    /// the window or the physical page beyond 2^52.
    fn locate(&self, entry: ReverseEntry) -> Option<(u32, u64)> {
        let index = entry.va.page_number().checked_sub(self.base_page)?;
        let node = u32::try_from(index.checked_add(1)?).ok()?;
        if node as usize >= self.nodes.len() {
            return None;
        }
        let pa_page = entry.pa.page_number();
        (pa_page < PA_PAGE_LIMIT).then_some((node, (pa_page << 16) | u64::from(entry.owner.raw())))
    }

    fn entry_of(&self, n: u32) -> Option<ReverseEntry> {
        let key = self.key(n);
        let va = self
            .base_page
            .checked_add(u64::from(n.checked_sub(1)?))?
            .checked_mul(PAGE_SIZE)?;
        Some(ReverseEntry {
            pa: PhysAddr::from_page_number(key >> 16)?,
            owner: GuestId((key & 0xffff) as u16),
            va: VirtAddr(va),
        })
    }

    /// Recomputes `n`'s height and restores the AVL balance below it; the subtree's new root.
    #[inline(always)]
    fn rebalance(&mut self, n: u32) -> u32 {
        let (l, r) = (self.child(n, false), self.child(n, true));
        let (hl, hr) = (self.height(l), self.height(r));
        if hl > hr + 1 {
            if self.height(self.child(l, false)) < self.height(self.child(l, true)) {
                let nl = self.rotate(l, false);
                self.set_child(n, false, nl);
            }
            self.rotate(n, true)
        } else if hr > hl + 1 {
            if self.height(self.child(r, true)) < self.height(self.child(r, false)) {
                let nr = self.rotate(r, true);
                self.set_child(n, true, nr);
            }
            self.rotate(n, false)
        } else {
            self.set_height(n, hl.max(hr) + 1);
            n
        }
    }

    /// Rotates the subtree at `n` to the right (`right`) or left; its new root.
    #[inline(always)]
    fn rotate(&mut self, n: u32, right: bool) -> u32 {
        // Rotating right lifts the left child: n.left = c.right, c.right = n.
        let c = self.child(n, !right);
        let inner = self.child(c, right);
        self.set_child(n, !right, inner);
        self.set_child(c, right, n);
        self.fix_height(n);
        self.fix_height(c);
        c
    }

    #[inline(always)]
    fn fix_height(&mut self, n: u32) {
        let h = self
            .height(self.child(n, false))
            .max(self.height(self.child(n, true)));
        self.set_height(n, h + 1);
    }

    /// Rebalances the nodes of `path` from its end up to the root, stopping where a subtree
    /// kept both its root and its height (nothing above it changed).
    fn retrace(&mut self, bucket: usize, path: &[(u32, bool)]) {
        for i in (0..path.len()).rev() {
            let Some(&(n, _)) = path.get(i) else { return };
            let before = self.height(n);
            let top = self.rebalance(n);
            match i.checked_sub(1).and_then(|p| path.get(p)) {
                Some(&(parent, dir)) => self.set_child(parent, dir, top),
                None => self.set_root(bucket, top),
            }
            if top == n && self.height(n) == before {
                return;
            }
        }
    }

    /// Records that `owner` maps physical page `pa` at virtual page `va`. Returns false (and
    /// changes nothing) if `va` already has an entry, lies outside the window, or `pa` lies at
    /// or above 2^52.
    pub fn insert(&mut self, entry: ReverseEntry) -> bool {
        let Some((node, key)) = self.locate(entry) else {
            return false;
        };
        if self.height(node) != 0 {
            return false;
        }
        if let Some(w) = self.nodes.get_mut(node as usize) {
            *w = [key | (1 << HEIGHT_SHIFT), 0];
        }
        self.len += 1;
        let bucket = self.bucket(key);
        if self.root(bucket) == NIL {
            // The common case when pages spread over the buckets: a tree of one.
            self.set_root(bucket, node);
            return true;
        }
        let wanted = order(key, node);
        let mut path = [(NIL, false); MAX_DEPTH];
        let mut depth = 0;
        let mut cur = self.root(bucket);
        while cur != NIL {
            let dir = wanted > order(self.key(cur), cur);
            let Some(slot) = path.get_mut(depth) else {
                break;
            };
            *slot = (cur, dir);
            depth += 1;
            let next = self.child(cur, dir);
            if next == NIL {
                self.set_child(cur, dir, node);
                break;
            }
            cur = next;
        }
        if depth == 0 {
            self.set_root(bucket, node);
        }
        self.retrace(bucket, path.get(..depth).unwrap_or(&[]));
        true
    }

    /// Forgets an entry. Returns false if it was not there.
    pub fn remove(&mut self, entry: ReverseEntry) -> bool {
        match self.locate(entry) {
            Some((node, key)) if self.height(node) != 0 && self.key(node) == key => {
                self.unlink(node, key)
            }
            _ => false,
        }
    }

    /// Forgets the entry of virtual page `va`, whatever it maps; the entry, or `None` if the
    /// page had none. An unmap uses it: the node holds what the page mapped, so no table walk
    /// is needed to find it.
    pub fn remove_page(&mut self, va: VirtAddr) -> Option<ReverseEntry> {
        let node = u32::try_from(
            va.page_number()
                .checked_sub(self.base_page)?
                .checked_add(1)?,
        )
        .ok()?;
        if self.height(node) == 0 {
            return None;
        }
        let entry = self.entry_of(node)?;
        self.unlink(node, self.key(node)).then_some(entry)
    }

    /// Takes node `node` (in the tree, with key `key`) out of its bucket's tree.
    fn unlink(&mut self, node: u32, key: u64) -> bool {
        let bucket = self.bucket(key);
        if self.root(bucket) == node && self.word(node)[1] == 0 {
            // A tree of one.
            self.set_root(bucket, NIL);
            if let Some(w) = self.nodes.get_mut(node as usize) {
                *w = [0; 2];
            }
            self.len -= 1;
            return true;
        }
        let wanted = order(key, node);
        let mut path = [(NIL, false); MAX_DEPTH];
        let mut depth = 0;
        let mut cur = self.root(bucket);
        while cur != node && cur != NIL {
            let dir = wanted > order(self.key(cur), cur);
            let Some(slot) = path.get_mut(depth) else {
                return false;
            };
            *slot = (cur, dir);
            depth += 1;
            cur = self.child(cur, dir);
        }
        if cur != node {
            return false;
        }
        let parent_link = depth.checked_sub(1).and_then(|p| path.get(p)).copied();
        let (l, r) = (self.child(node, false), self.child(node, true));
        let replacement = if l != NIL && r != NIL {
            // The successor (leftmost of the right subtree) takes the node's place.
            let at = depth;
            let Some(slot) = path.get_mut(depth) else {
                return false;
            };
            *slot = (node, true);
            depth += 1;
            let mut s = r;
            while self.child(s, false) != NIL {
                let Some(slot) = path.get_mut(depth) else {
                    return false;
                };
                *slot = (s, false);
                depth += 1;
                s = self.child(s, false);
            }
            // Unlink the successor: its parent (the node itself, or a node of the right
            // subtree) takes its right child.
            if let Some(&(parent, dir)) = depth.checked_sub(1).and_then(|p| path.get(p)) {
                let sr = self.child(s, true);
                self.set_child(parent, dir, sr);
            }
            // Then it takes the node's children (read after the unlink) and height, and the
            // node's step in the path.
            let (nl, nr) = (self.child(node, false), self.child(node, true));
            self.set_child(s, false, nl);
            self.set_child(s, true, nr);
            self.set_height(s, self.height(node));
            if let Some(slot) = path.get_mut(at) {
                *slot = (s, true);
            }
            s
        } else if l != NIL {
            l
        } else {
            r
        };
        match parent_link {
            Some((parent, dir)) => self.set_child(parent, dir, replacement),
            None => self.set_root(bucket, replacement),
        }
        if let Some(w) = self.nodes.get_mut(node as usize) {
            *w = [0; 2];
        }
        self.len -= 1;
        self.retrace(bucket, path.get(..depth).unwrap_or(&[]));
        true
    }

    /// Whether exactly this entry is recorded.
    pub fn contains(&self, entry: ReverseEntry) -> bool {
        self.locate(entry)
            .is_some_and(|(node, key)| self.height(node) != 0 && self.key(node) == key)
    }

    /// The first node at or after `wanted` in the order of `bucket`'s tree.
    fn lower_bound(&self, bucket: usize, wanted: u128) -> u32 {
        let mut best = NIL;
        let mut cur = self.root(bucket);
        while cur != NIL {
            let here = order(self.key(cur), cur) >= wanted;
            if here {
                best = cur;
            }
            cur = self.child(cur, !here);
        }
        best
    }

    /// A virtual address of `pa` (same page offset), preferring `owner`'s mapping when given:
    /// `Some(owner)` returns only that owner's lowest mapping, `None` the lowest of anyone's.
    pub fn phys_to_virt(&self, pa: PhysAddr, owner: Option<GuestId>) -> Option<VirtAddr> {
        let pa_page = pa.page_number();
        let first = (pa_page << 16) | u64::from(owner.map_or(0, GuestId::raw));
        let found = self.lower_bound(self.bucket(first), order(first, 0));
        let key = self.key(found);
        let wanted = found != NIL
            && key >> 16 == pa_page
            && owner.is_none_or(|o| key & 0xffff == u64::from(o.raw()));
        wanted
            .then(|| self.entry_of(found))??
            .va
            .checked_add(pa.page_offset())
    }

    /// Every mapping of the page holding `pa`, ordered by owner then address.
    pub fn mappings_of(&self, pa: PhysAddr) -> impl Iterator<Item = ReverseEntry> + '_ {
        let pa_page = pa.page_number();
        let first = pa_page << 16;
        let bucket = self.bucket(first);
        let start = if pa_page < PA_PAGE_LIMIT {
            self.lower_bound(bucket, order(first, 0))
        } else {
            NIL
        };
        self.walk(bucket, start)
            .take_while(move |e| e.pa.page_number() == pa_page)
    }

    /// Every entry, bucket by bucket (ordered by physical page, owner and address within a
    /// bucket only): O(window pages + entries · log), for the agreement checker.
    pub fn iter(&self) -> impl Iterator<Item = ReverseEntry> + '_ {
        (0..self.roots.len()).flat_map(move |b| self.walk(b, self.lower_bound(b, 0)))
    }

    /// The entries of `bucket` from node `start` on, in order: each step is one descent for
    /// the successor (O(log n), no allocation).
    fn walk(&self, bucket: usize, start: u32) -> impl Iterator<Item = ReverseEntry> + '_ {
        let mut cur = start;
        core::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let here = cur;
            cur = self.lower_bound(bucket, order(self.key(here), here) + 1);
            self.entry_of(here)
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the trees' own shape: each node in its bucket, order, AVL balance, recorded
    /// heights, and the count; the first fault found. Visits every bucket: O(window pages).
    pub fn check(&self) -> Result<(), &'static str> {
        let mut count = 0usize;
        for b in 0..self.roots.len() {
            self.check_subtree(b, self.root(b), 0, u128::MAX, &mut count, 0)?;
        }
        if count != self.len {
            return Err("entry count differs from the tree");
        }
        Ok(())
    }

    /// [`check`](Self::check) of the trees of the buckets holding `pages` only, each once,
    /// without the count: O(entries of those trees). The agreement checker calls it with the
    /// window's mapped pages and compares [`len`](Self::len) itself, so a check costs what is
    /// mapped, not the window's size.
    pub fn check_buckets_of(
        &self,
        pages: impl Iterator<Item = PhysAddr>,
    ) -> Result<(), &'static str> {
        let mut buckets: Vec<usize> = pages
            .filter(|pa| pa.page_number() < PA_PAGE_LIMIT)
            .map(|pa| self.bucket(pa.page_number() << 16))
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        let mut count = 0usize;
        for b in buckets {
            self.check_subtree(b, self.root(b), 0, u128::MAX, &mut count, 0)?;
        }
        Ok(())
    }

    fn check_subtree(
        &self,
        bucket: usize,
        n: u32,
        low: u128,
        high: u128,
        count: &mut usize,
        depth: usize,
    ) -> Result<u64, &'static str> {
        if n == NIL {
            return Ok(0);
        }
        if depth > MAX_DEPTH {
            return Err("tree deeper than an AVL tree can be");
        }
        let here = order(self.key(n), n);
        if here < low || here > high {
            return Err("tree out of order");
        }
        if self.bucket(self.key(n)) != bucket || self.height(n) == 0 {
            return Err("node in a bucket not its own");
        }
        *count += 1;
        let hl = self.check_subtree(
            bucket,
            self.child(n, false),
            low,
            here.saturating_sub(1),
            count,
            depth + 1,
        )?;
        let hr = self.check_subtree(
            bucket,
            self.child(n, true),
            here.saturating_add(1),
            high,
            count,
            depth + 1,
        )?;
        if hl.abs_diff(hr) > 1 {
            return Err("tree out of balance");
        }
        if self.height(n) != hl.max(hr) + 1 {
            return Err("tree height recorded wrong");
        }
        Ok(hl.max(hr) + 1)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A window of 64 pages at 0x1000.
    const BASE: u64 = 0x1000;
    const PAGES: u64 = 64;

    fn map() -> ReverseMap {
        ReverseMap::new(VirtPages::new(VirtAddr(BASE), PAGES).unwrap())
    }

    fn entry(pa: u64, owner: u16, va: u64) -> ReverseEntry {
        ReverseEntry {
            pa: PhysAddr(pa),
            owner: GuestId(owner),
            va: VirtAddr(va),
        }
    }

    #[test]
    fn same_page_at_two_addresses() {
        let mut r = map();
        assert!(r.insert(entry(0x4000_0000, 2, 0x9000)));
        assert!(r.insert(entry(0x4000_0000, 1, 0x5000)));
        assert!(!r.insert(entry(0x4000_0000, 1, 0x5000)));
        assert!(
            !r.insert(entry(0x4000_1000, 1, 0x5000)),
            "a virtual page maps one page"
        );
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), None),
            Some(VirtAddr(0x5123))
        );
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), Some(GuestId(2))),
            Some(VirtAddr(0x9123))
        );
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0123), Some(GuestId(3))),
            None
        );
        assert_eq!(r.phys_to_virt(PhysAddr(0x4000_1000), None), None);
        assert_eq!(r.mappings_of(PhysAddr(0x4000_0fff)).count(), 2);
        assert!(r.remove(entry(0x4000_0000, 1, 0x5000)));
        assert!(!r.remove(entry(0x4000_0000, 1, 0x5000)));
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0000), None),
            Some(VirtAddr(0x9000))
        );
        assert_eq!(r.len(), 1);
        // Outside the window (below, at its end, far above) is refused, not wrapped.
        for va in [0, BASE + PAGES * PAGE_SIZE, 1 << 52] {
            assert!(!r.insert(entry(0x4000_0000, 1, va)));
            assert!(!r.contains(entry(0x4000_0000, 1, va)));
        }
        // So is a physical page beyond 2^52.
        assert!(!r.insert(entry(1 << 52, 1, 0x2000)));
        assert_eq!(r.len(), 1);
        assert_eq!(r.check(), Ok(()));
    }

    /// The side tables are what `side_table_bytes` says: 16 B a node (one a window page and
    /// the unused node 0) and 4 B a bucket, buckets a power of two at least the pages.
    #[test]
    fn side_tables_are_sized_with_the_window() {
        for pages in [1u64, 64, 100, 4096] {
            let r = ReverseMap::new(VirtPages::new(VirtAddr(BASE), pages).unwrap());
            let bytes = r.nodes.len() * 16 + r.roots.len() * 4;
            assert_eq!(ReverseMap::side_table_bytes(pages), bytes as u64);
        }
        // The default 4 GiB window: 20 MiB.
        assert_eq!(ReverseMap::side_table_bytes(1 << 20), (20 << 20) + 16);
    }

    /// Every window page mapping the same physical page (the worst case for a map grouped by
    /// frame): still a balanced tree, every lookup right, and removals in any order keep it so.
    #[test]
    fn one_page_mapped_everywhere_stays_balanced() {
        let pages = 4096u64;
        let mut r = ReverseMap::new(VirtPages::new(VirtAddr(BASE), pages).unwrap());
        for i in 0..pages {
            assert!(r.insert(entry(0x4000_0000, (i % 3) as u16, BASE + i * PAGE_SIZE)));
        }
        assert_eq!(r.check(), Ok(()));
        // One bucket, an AVL tree: height at most 1.44 log2(n + 2).
        let root = r.root(r.bucket(0x4_0000 << 16));
        assert!(r.height(root) <= 18, "height {}", r.height(root));
        assert_eq!(
            r.phys_to_virt(PhysAddr(0x4000_0000), Some(GuestId(2))),
            Some(VirtAddr(BASE + 2 * PAGE_SIZE))
        );
        assert_eq!(r.mappings_of(PhysAddr(0x4000_0000)).count(), pages as usize);
        for i in (0..pages).rev().step_by(2) {
            assert!(r.remove(entry(0x4000_0000, (i % 3) as u16, BASE + i * PAGE_SIZE)));
        }
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.len(), pages as usize / 2);
    }

    proptest! {
        /// Against a plain list: every answer is what a linear scan gives, and the tree keeps
        /// its order, balance and count after every step.
        #[test]
        fn agrees_with_list_model(ops in proptest::collection::vec((0u64..6, 0u16..4, 0u64..72, 0u8..3), 1..300),
                                  queries in proptest::collection::vec((0u64..8, proptest::option::of(0u16..4)), 1..20)) {
            let mut r = map();
            let mut model: Vec<ReverseEntry> = Vec::new();
            for (pa, owner, va, action) in ops {
                // Pages 0..72 of which 1..=64 lie in the window.
                let e = entry(pa * 97 * 4096, owner, va * 4096);
                match action {
                    0 => {
                        let fits = (BASE..BASE + PAGES * PAGE_SIZE).contains(&e.va.get())
                            && !model.iter().any(|m| m.va == e.va);
                        prop_assert_eq!(r.insert(e), fits);
                        if fits { model.push(e); }
                    }
                    1 => {
                        prop_assert_eq!(r.remove(e), model.contains(&e));
                        model.retain(|m| *m != e);
                    }
                    _ => {
                        let held = model.iter().copied().find(|m| m.va == e.va);
                        prop_assert_eq!(r.remove_page(e.va), held);
                        model.retain(|m| m.va != e.va);
                    }
                }
                prop_assert_eq!(r.check(), Ok(()));
                prop_assert_eq!(r.check_buckets_of(model.iter().map(|m| m.pa)), Ok(()));
            }
            prop_assert_eq!(r.len(), model.len());
            let mut sorted = model.clone();
            sorted.sort();
            let mut all = r.iter().collect::<Vec<_>>();
            all.sort();
            prop_assert_eq!(all, sorted);
            for (pa, owner) in queries {
                let expected = model.iter()
                    .filter(|e| e.pa.get() == pa * 97 * 4096 && owner.is_none_or(|o| e.owner == GuestId(o)))
                    .min_by_key(|e| (e.owner, e.va))
                    .map(|e| VirtAddr(e.va.get() + 7));
                prop_assert_eq!(r.phys_to_virt(PhysAddr(pa * 97 * 4096 + 7), owner.map(GuestId)), expected);
                let all: Vec<ReverseEntry> = r.mappings_of(PhysAddr(pa * 97 * 4096)).collect();
                let mut model_all: Vec<ReverseEntry> = model.iter().copied().filter(|e| e.pa.get() == pa * 97 * 4096).collect();
                model_all.sort_by_key(|e| (e.owner, e.va));
                prop_assert_eq!(all, model_all);
            }
        }
    }
}
