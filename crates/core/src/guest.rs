//! Guest partitions: what each normal world holds in the core, and its counters and quotas.
//!
//! A guest's registered buffers sit in its own cookie table (an ordered map: O(log n) lookup),
//! so a cookie is visible to its own guest only and a guest's destruction visits its own objects
//! and nothing else.

use crate::config::GuestQuotas;
use crate::error::{QuotaKind, TeeError};
use crate::mobj::Mobj;
use crate::pta::PtaSession;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use teeshm_abi::GuestId;

/// Live counts of what a guest holds. Updated as things happen; the agreement checker
/// recomputes each from the objects themselves.
#[derive(Debug, Default)]
pub struct GuestCounters {
    objects: AtomicU64,
    registered_pages: AtomicU64,
    mapped_pages: AtomicU64,
    threads: AtomicU64,
    sessions: AtomicU64,
    secure_bytes: AtomicU64,
}

/// Adds `n` to `counter` unless that passes `limit`; returns the refused total on failure.
fn charge(counter: &AtomicU64, n: u64, limit: u64) -> Result<(), u64> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            v.checked_add(n).filter(|&t| t <= limit)
        })
        .map(|_| ())
        .map_err(|v| v.saturating_add(n))
}

fn refund(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

impl GuestCounters {
    /// Charges one object (and `registered_pages` pages, for a registered buffer, and
    /// `secure_bytes` of bookkeeping) against `quotas`.
    ///
    /// # Errors
    /// [`TeeError::Quota`] naming the limit; nothing is charged then.
    pub fn charge_object(
        &self,
        quotas: &GuestQuotas,
        registered_pages: u64,
        secure_bytes: u64,
    ) -> Result<(), TeeError> {
        charge(&self.objects, 1, quotas.max_objects).map_err(|wanted| TeeError::Quota {
            kind: QuotaKind::Objects,
            wanted,
            limit: quotas.max_objects,
        })?;
        if let Err(wanted) = charge(
            &self.registered_pages,
            registered_pages,
            quotas.max_registered_pages,
        ) {
            refund(&self.objects, 1);
            return Err(TeeError::Quota {
                kind: QuotaKind::RegisteredPages,
                wanted,
                limit: quotas.max_registered_pages,
            });
        }
        if let Err(wanted) = charge(&self.secure_bytes, secure_bytes, quotas.max_secure_bytes) {
            refund(&self.objects, 1);
            refund(&self.registered_pages, registered_pages);
            return Err(TeeError::Quota {
                kind: QuotaKind::SecureBytes,
                wanted,
                limit: quotas.max_secure_bytes,
            });
        }
        Ok(())
    }

    /// Refunds what [`charge_object`](Self::charge_object) charged.
    pub fn refund_object(&self, registered_pages: u64, secure_bytes: u64) {
        refund(&self.objects, 1);
        refund(&self.registered_pages, registered_pages);
        refund(&self.secure_bytes, secure_bytes);
    }

    pub(crate) fn charge_thread(&self, limit: u64) -> Result<(), TeeError> {
        charge(&self.threads, 1, limit).map_err(|wanted| TeeError::Quota {
            kind: QuotaKind::Threads,
            wanted,
            limit,
        })
    }

    pub(crate) fn refund_thread(&self) {
        refund(&self.threads, 1);
    }

    pub(crate) fn charge_session(&self, limit: u64) -> Result<(), TeeError> {
        charge(&self.sessions, 1, limit).map_err(|wanted| TeeError::Quota {
            kind: QuotaKind::Sessions,
            wanted,
            limit,
        })
    }

    pub(crate) fn refund_session(&self) {
        refund(&self.sessions, 1);
    }

    pub(crate) fn add_mapped(&self, pages: u64) {
        self.mapped_pages.fetch_add(pages, Ordering::AcqRel);
    }

    pub(crate) fn sub_mapped(&self, pages: u64) {
        refund(&self.mapped_pages, pages);
    }

    /// Live memory objects.
    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Acquire)
    }

    /// Pages of registered buffers.
    pub fn registered_pages(&self) -> u64 {
        self.registered_pages.load(Ordering::Acquire)
    }

    /// Pages mapped in the window.
    pub fn mapped_pages(&self) -> u64 {
        self.mapped_pages.load(Ordering::Acquire)
    }

    /// Threads in use (running or suspended).
    pub fn threads(&self) -> u64 {
        self.threads.load(Ordering::Acquire)
    }

    /// Open sessions.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Secure heap bytes the guest's memory objects keep.
    pub fn secure_bytes(&self) -> u64 {
        self.secure_bytes.load(Ordering::Acquire)
    }
}

/// An RPC argument buffer the normal world allocated (`RPC_FUNC_ALLOC`) and the core keeps in
/// the SHM cache for the next call.
#[derive(Debug)]
pub(crate) struct CachedRpcArg {
    pub(crate) cookie: u64,
    pub(crate) mobj: Arc<Mobj>,
    /// Where in `mobj` the buffer starts (non-zero inside the static pool).
    pub(crate) offset: u64,
}

/// What one guest holds, behind its lock.
#[derive(Debug, Default)]
pub(crate) struct GuestState {
    /// Registered buffers by cookie.
    pub(crate) registered: BTreeMap<u64, Arc<Mobj>>,
    /// Open sessions by id.
    pub(crate) sessions: BTreeMap<u32, PtaSession>,
    pub(crate) next_session: u32,
    /// `ENABLE_SHM_CACHE` is in force.
    pub(crate) shm_cache_enabled: bool,
    /// RPC argument buffers kept by the SHM cache.
    pub(crate) cached_rpc_args: Vec<CachedRpcArg>,
}

/// One normal world (VM) as the core knows it.
#[derive(Debug)]
pub struct GuestPartition {
    id: GuestId,
    counters: Arc<GuestCounters>,
    pub(crate) state: crate::sync::Mutex<GuestState>,
    dying: AtomicBool,
}

impl GuestPartition {
    pub(crate) fn new(id: GuestId) -> Self {
        Self {
            id,
            counters: Arc::new(GuestCounters::default()),
            state: crate::sync::Mutex::new(GuestState {
                next_session: 1,
                ..GuestState::default()
            }),
            dying: AtomicBool::new(false),
        }
    }

    /// The guest's id.
    pub fn id(&self) -> GuestId {
        self.id
    }

    /// Its counters.
    pub fn counters(&self) -> &Arc<GuestCounters> {
        &self.counters
    }

    /// Whether `VM_DESTROYED` has begun its sweep.
    pub fn is_dying(&self) -> bool {
        self.dying.load(Ordering::Acquire)
    }

    pub(crate) fn mark_dying(&self) {
        self.dying.store(true, Ordering::Release);
    }

    /// A consistent picture of the guest for reports.
    pub fn snapshot(&self) -> GuestSnapshot {
        let state = self.state.lock();
        GuestSnapshot {
            id: self.id,
            registered_buffers: state.registered.len() as u64,
            sessions: state.sessions.len() as u64,
            shm_cache_enabled: state.shm_cache_enabled,
            cached_rpc_args: state.cached_rpc_args.len() as u64,
            objects: self.counters.objects(),
            registered_pages: self.counters.registered_pages(),
            mapped_pages: self.counters.mapped_pages(),
            threads: self.counters.threads(),
            secure_bytes: self.counters.secure_bytes(),
        }
    }
}

/// What a guest holds, for `teeshm inspect` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSnapshot {
    /// The guest.
    pub id: GuestId,
    /// Buffers in its cookie table.
    pub registered_buffers: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Whether its SHM cache is enabled.
    pub shm_cache_enabled: bool,
    /// RPC argument buffers in its SHM cache.
    pub cached_rpc_args: u64,
    /// Live memory objects (registered, temporary, RPC, retired but still in use).
    pub objects: u64,
    /// Pages of registered buffers.
    pub registered_pages: u64,
    /// Pages mapped in the window.
    pub mapped_pages: u64,
    /// Threads in use.
    pub threads: u64,
    /// Secure heap bytes its objects keep.
    pub secure_bytes: u64,
}
