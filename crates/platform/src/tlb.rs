//! TLB maintenance requests from the memory manager.

use alloc::vec::Vec;

/// Invalidation of cached translations, issued by the memory manager after it clears entries.
///
/// The memory manager batches: one call covers every page of one unmap, so an implementation
/// may choose between per-page `TLBI VAE1IS` and a whole-TLB invalidate by the batch size.
pub trait TlbMaintenance {
    /// Invalidates the cached translations of `pages` consecutive 4 KiB pages from `va`.
    fn invalidate_pages(&mut self, va: u64, pages: u64);
    /// Invalidates every cached translation of this regime (after freeing table pages).
    fn invalidate_all(&mut self);
}

/// One request received by [`RecordingTlb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlbRequest {
    /// `invalidate_pages(va, pages)`.
    Pages {
        /// First virtual address.
        va: u64,
        /// Number of 4 KiB pages.
        pages: u64,
    },
    /// `invalidate_all()`.
    All,
}

/// Host implementation of [`TlbMaintenance`]: there is no TLB, so it records what was asked.
#[derive(Debug, Default, Clone)]
pub struct RecordingTlb {
    requests: Vec<TlbRequest>,
    recording: bool,
    count: u64,
}

impl RecordingTlb {
    /// A recorder that keeps every request (for tests).
    pub fn new() -> Self {
        Self {
            requests: Vec::new(),
            recording: true,
            count: 0,
        }
    }

    /// A recorder that only counts requests, so long runs and benchmarks don't grow memory.
    pub fn counting() -> Self {
        Self {
            requests: Vec::new(),
            recording: false,
            count: 0,
        }
    }

    /// The requests recorded so far (empty for a counting recorder).
    pub fn requests(&self) -> &[TlbRequest] {
        &self.requests
    }

    /// How many requests were made in all.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Forgets the recorded requests.
    pub fn clear(&mut self) {
        self.requests.clear();
    }

    fn push(&mut self, request: TlbRequest) {
        self.count = self.count.saturating_add(1);
        if self.recording {
            self.requests.push(request);
        }
    }
}

impl TlbMaintenance for RecordingTlb {
    fn invalidate_pages(&mut self, va: u64, pages: u64) {
        self.push(TlbRequest::Pages { va, pages });
    }

    fn invalidate_all(&mut self) {
        self.push(TlbRequest::All);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_counts() {
        let mut tlb = RecordingTlb::new();
        tlb.invalidate_pages(0x1000, 3);
        tlb.invalidate_all();
        assert_eq!(
            tlb.requests(),
            &[
                TlbRequest::Pages {
                    va: 0x1000,
                    pages: 3
                },
                TlbRequest::All
            ]
        );
        assert_eq!(tlb.count(), 2);
        let mut quiet = RecordingTlb::counting();
        quiet.invalidate_all();
        assert!(quiet.requests().is_empty());
        assert_eq!(quiet.count(), 1);
    }
}
