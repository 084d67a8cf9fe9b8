//! TLB maintenance requests from the memory manager.

use alloc::sync::Arc;
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

/// Who else hears of each invalidation: a simulated machine's TLBs (host only), which must
/// drop what they cached of the pages the memory manager unmapped, as a broadcast `TLBI` makes
/// every CPU's TLB drop them.
pub trait TlbListener: Send + Sync {
    /// `pages` pages from `va` were invalidated.
    fn invalidate_pages(&self, va: u64, pages: u64);
    /// Everything was invalidated.
    fn invalidate_all(&self);
}

/// Host implementation of [`TlbMaintenance`]: it records what was asked and passes it on to
/// its listener, if any (a simulated platform's TLBs).
#[derive(Default, Clone)]
pub struct RecordingTlb {
    requests: Vec<TlbRequest>,
    recording: bool,
    count: u64,
    listener: Option<Arc<dyn TlbListener>>,
}

impl core::fmt::Debug for RecordingTlb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordingTlb")
            .field("requests", &self.requests)
            .field("recording", &self.recording)
            .field("count", &self.count)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl RecordingTlb {
    /// A recorder that keeps every request (for tests).
    pub fn new() -> Self {
        Self {
            requests: Vec::new(),
            recording: true,
            count: 0,
            listener: None,
        }
    }

    /// A recorder that only counts requests, so long runs and benchmarks don't grow memory.
    pub fn counting() -> Self {
        Self {
            requests: Vec::new(),
            recording: false,
            count: 0,
            listener: None,
        }
    }

    /// A counting recorder that passes every request on to `listener` (a simulated
    /// platform's TLBs).
    pub fn counting_for(listener: Arc<dyn TlbListener>) -> Self {
        Self {
            listener: Some(listener),
            ..Self::counting()
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
        if let Some(listener) = &self.listener {
            listener.invalidate_pages(va, pages);
        }
    }

    fn invalidate_all(&mut self) {
        self.push(TlbRequest::All);
        if let Some(listener) = &self.listener {
            listener.invalidate_all();
        }
    }
}

impl<T: TlbMaintenance + ?Sized> TlbMaintenance for alloc::boxed::Box<T> {
    fn invalidate_pages(&mut self, va: u64, pages: u64) {
        (**self).invalidate_pages(va, pages);
    }

    fn invalidate_all(&mut self) {
        (**self).invalidate_all();
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
