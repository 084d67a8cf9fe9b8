//! Physical memory that costs only what is touched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use teeshm_mm::PAGE_SIZE;

/// One simulated page frame.
type Frame = Box<[u8; PAGE_SIZE as usize]>;

/// One shard's lock, alone on its cache lines: CPUs touching pages of different shards write
/// no common line (simulated CPUs stand for a machine's, whose memory has no such lock).
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<BTreeMap<u64, Frame>>);

/// Physical memory that costs only what is touched: 4 KiB pages made on first write; an
/// untouched page reads as zeros. Pages are spread over [`SHARDS`] locks, so simulated CPUs
/// touching different pages do not wait for each other.
///
/// Every access is by physical address and unchecked: this is the normal world's and the
/// machine's view. The core reaches it only through [`crate::SimPlatform`], which walks the
/// core's own translation tables first.
#[derive(Debug)]
pub struct PhysMemory {
    shards: [Shard; SHARDS],
    tracing: AtomicBool,
    /// Reads per page, while tracing (tests of the read-once rule).
    traced: Mutex<Option<BTreeMap<u64, u64>>>,
    /// Writes a hostile normal world makes between the TEE's reads (see
    /// [`PhysMemory::rewrite_after_reads`]).
    rewrites: Mutex<Vec<Rewrite>>,
    /// Whether `watch` holds anything (the fast path of every access reads only this).
    watching: AtomicBool,
    /// Pages whose accesses are slowed down or recorded (tests of revocation).
    watch: Mutex<Watch>,
}

/// Pages a revocation test watches: accesses to `slow` pages take `delay` between their
/// translation and their copy (a slow bus, which widens any race with a revocation), and
/// accesses to `freed` pages are recorded in `hits`.
#[derive(Debug, Default)]
struct Watch {
    slow: std::collections::BTreeSet<u64>,
    delay: std::time::Duration,
    freed: std::collections::BTreeSet<u64>,
    hits: Vec<u64>,
}

/// Bytes to write at `pa` once the page holding `pa` has been read `after` times.
#[derive(Debug)]
struct Rewrite {
    pa: u64,
    after: u64,
    bytes: Vec<u8>,
}

/// Locks the pages are spread over.
pub const SHARDS: usize = 64;
const _: () = assert!(
    SHARDS.is_power_of_two(),
    "the shard hash takes the top bits"
);

/// Takes a lock even if a thread panicked while holding it: a page is plain bytes, so whatever a
/// panicking test left there is still memory the next access may see (as on a machine).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for PhysMemory {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard(Mutex::new(BTreeMap::new()))),
            tracing: AtomicBool::new(false),
            traced: Mutex::new(None),
            rewrites: Mutex::new(Vec::new()),
            watching: AtomicBool::new(false),
            watch: Mutex::new(Watch::default()),
        }
    }
}

impl PhysMemory {
    /// Empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts counting reads per page (forgetting earlier counts), or stops.
    pub fn trace_reads(&self, on: bool) {
        *lock(&self.traced) = on.then(BTreeMap::new);
        self.tracing.store(on, Ordering::Release);
    }

    /// Reads of the page holding `pa` since tracing started.
    pub fn reads_of(&self, pa: u64) -> u64 {
        lock(&self.traced)
            .as_ref()
            .and_then(|t| t.get(&(pa / PAGE_SIZE)).copied())
            .unwrap_or(0)
    }

    /// Plays a normal-world CPU that changes memory behind the TEE's back: once the page
    /// holding `pa` has been read `after` times (while tracing, which this turns on), `bytes`
    /// are written at `pa` — after that read completed and before any next one. A reader that
    /// reads a value twice then sees two different values (the time-of-check to time-of-use
    /// bugs of OP-TEE's history).
    pub fn rewrite_after_reads(&self, pa: u64, after: u64, bytes: Vec<u8>) {
        if !self.tracing.load(Ordering::Acquire) {
            self.trace_reads(true);
        }
        lock(&self.rewrites).push(Rewrite { pa, after, bytes });
    }

    /// Rewrites not yet made (a test shows its hostile writes did happen).
    pub fn pending_rewrites(&self) -> usize {
        lock(&self.rewrites).len()
    }

    /// Plays a slow bus for the pages holding `pages`: each access to one of them waits `delay`
    /// before its bytes are copied (after the core's translation, when there is one), so a
    /// test can make a copy last while another CPU revokes its buffer.
    pub fn slow_down(&self, pages: &[u64], delay: std::time::Duration) {
        let mut watch = lock(&self.watch);
        watch.slow.extend(pages.iter().map(|pa| pa / PAGE_SIZE));
        watch.delay = delay;
        self.watching.store(true, Ordering::Release);
    }

    /// Marks the pages holding `pages` as given back to the normal world's allocator (after
    /// an `UNREGISTER_SHM` returned): every later access to them is recorded
    /// ([`PhysMemory::accesses_to_freed`]).
    pub fn mark_freed(&self, pages: &[u64]) {
        let mut watch = lock(&self.watch);
        for pa in pages {
            watch.slow.remove(&(pa / PAGE_SIZE));
            watch.freed.insert(pa / PAGE_SIZE);
        }
        self.watching.store(true, Ordering::Release);
    }

    /// Pages (by address) accessed after [`PhysMemory::mark_freed`] named them, one entry an
    /// access.
    pub fn accesses_to_freed(&self) -> Vec<u64> {
        lock(&self.watch).hits.clone()
    }

    /// What the watch makes of an access to `page`: delayed if slow, then recorded if the page
    /// is freed by the time the access lands.
    fn watched(&self, page: u64) {
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        let delay = {
            let watch = lock(&self.watch);
            watch.slow.contains(&page).then_some(watch.delay)
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut watch = lock(&self.watch);
        if watch.freed.contains(&page) {
            watch.hits.push(page * PAGE_SIZE);
        }
    }

    fn shard(&self, page: u64) -> &Mutex<BTreeMap<u64, Frame>> {
        // A multiplicative hash (Fibonacci hashing) of the page number: pages at the same
        // offset of different guests' RAM (whose sizes are multiples of the shard count) land
        // in different shards, as do a guest's consecutive pages.
        let hash = page.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.trailing_zeros());
        &self.shards[hash as usize % SHARDS].0
    }

    /// Calls `f(page, offset in page, range of the caller's buffer)` for each page piece of an
    /// access of `len` bytes at `pa`.
    fn pieces(pa: u64, len: usize, mut f: impl FnMut(u64, usize, std::ops::Range<usize>)) {
        let mut done = 0usize;
        while done < len {
            let at = pa.wrapping_add(done as u64);
            let in_page = (at % PAGE_SIZE) as usize;
            let n = (len - done).min(PAGE_SIZE as usize - in_page);
            f(at / PAGE_SIZE, in_page, done..done + n);
            done += n;
        }
    }

    /// Copies from physical memory (the normal world's or the machine's view: no checks).
    pub fn read(&self, pa: u64, buf: &mut [u8]) {
        if self.tracing.load(Ordering::Acquire) {
            if let Some(traced) = lock(&self.traced).as_mut() {
                let last = pa.saturating_add(buf.len().saturating_sub(1) as u64);
                for page in pa / PAGE_SIZE..=last / PAGE_SIZE {
                    *traced.entry(page).or_default() += 1;
                }
            }
        }
        Self::pieces(pa, buf.len(), |page, in_page, range| {
            self.watched(page);
            let n = range.len();
            let dst = &mut buf[range];
            match lock(self.shard(page)).get(&page) {
                Some(p) => dst.copy_from_slice(&p[in_page..in_page + n]),
                None => dst.fill(0),
            }
        });
        if self.tracing.load(Ordering::Acquire) {
            let due: Vec<Rewrite> = {
                let mut rewrites = lock(&self.rewrites);
                let (due, keep) = std::mem::take(&mut *rewrites)
                    .into_iter()
                    .partition(|r| self.reads_of(r.pa) >= r.after);
                *rewrites = keep;
                due
            };
            for r in due {
                self.write(r.pa, &r.bytes);
            }
        }
    }

    /// Zeroes the page holding `pa` in place (an untouched page is zero already): what
    /// writing a page of zeros does, without the page of zeros.
    pub fn zero_page(&self, pa: u64) {
        let page = pa / PAGE_SIZE;
        self.watched(page);
        if let Some(p) = lock(self.shard(page)).get_mut(&page) {
            p.fill(0);
        }
    }

    /// Copies into physical memory.
    pub fn write(&self, pa: u64, data: &[u8]) {
        Self::pieces(pa, data.len(), |page, in_page, range| {
            self.watched(page);
            let n = range.len();
            let mut shard = lock(self.shard(page));
            let p = shard
                .entry(page)
                .or_insert_with(|| Box::new([0; PAGE_SIZE as usize]));
            p[in_page..in_page + n].copy_from_slice(&data[range]);
        });
    }

    /// Pages that have been written.
    pub fn touched_pages(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeroing a page clears every byte of it and nothing of its neighbours, and makes no
    /// frame for an untouched page.
    #[test]
    fn zero_page_clears_one_page_in_place() {
        let m = PhysMemory::new();
        m.write(0x1ff0, &[0xaa; 0x20]);
        m.zero_page(0x1234);
        let mut b = [0xffu8; 0x20];
        m.read(0x1ff0, &mut b);
        assert_eq!(&b[..0x10], &[0; 0x10]);
        assert_eq!(&b[0x10..], &[0xaa; 0x10]);
        let touched = m.touched_pages();
        m.zero_page(0x9000);
        assert_eq!(m.touched_pages(), touched);
    }

    /// An access across a page boundary lands in both pages; untouched memory reads as zeros
    /// and costs nothing; tracing counts each page an access touches once.
    #[test]
    fn accesses_span_pages_and_cost_only_what_is_touched() {
        let m = PhysMemory::new();
        let mut z = [1u8; 8];
        m.read(0x4000_0000, &mut z);
        assert_eq!(z, [0; 8]);
        assert_eq!(m.touched_pages(), 0);
        m.write(0x4000_0ffe, b"abcd");
        assert_eq!(m.touched_pages(), 2);
        m.trace_reads(true);
        let mut got = [0u8; 4];
        m.read(0x4000_0ffe, &mut got);
        assert_eq!(&got, b"abcd");
        assert_eq!((m.reads_of(0x4000_0000), m.reads_of(0x4000_1000)), (1, 1));
        m.trace_reads(false);
        assert_eq!(m.reads_of(0x4000_0000), 0);
    }
}
