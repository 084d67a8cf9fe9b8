//! Guest partitions: what each normal world holds in the core, and its counters and quotas.
//!
//! A guest's registered buffers sit in its own cookie table (an ordered map: O(log n) lookup),
//! so a cookie is visible to its own guest only and a guest's destruction visits its own objects
//! and nothing else.

use crate::config::GuestQuotas;
use crate::error::{QuotaKind, TeeError};
use crate::lifecycle::GuestLife;
use crate::mobj::Mobj;
use crate::ta::Session;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use teeshm_abi::GuestId;

/// One of a guest's counters: updated by several CPUs at once, never below zero, and each
/// refund of more than was charged remembered, so that the agreement checker reports a double
/// refund instead of a count that quietly stayed at zero.
#[derive(Debug, Default)]
struct GuestCount {
    value: AtomicU64,
    underflows: AtomicU64,
}

impl GuestCount {
    /// Adds `n` unless that passes `limit`; returns the refused total on failure.
    fn charge(&self, n: u64, limit: u64) -> Result<(), u64> {
        self.value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                v.checked_add(n).filter(|&t| t <= limit)
            })
            .map(|_| ())
            .map_err(|v| v.saturating_add(n))
    }

    /// Adds `n`, with no limit (what is counted was already allowed elsewhere).
    fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes `n` away. Less than `n` held is an underflow: the count goes to 0 and the
    /// underflow is recorded, for [`GuestCounters::underflows`] and the agreement checker
    /// (the callers, releases of all kinds, could do nothing better with it).
    fn refund(&self, n: u64) {
        let (Ok(held) | Err(held)) =
            self.value
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                });
        if held < n {
            self.underflows.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    fn underflows(&self) -> u64 {
        self.underflows.load(Ordering::Acquire)
    }
}

/// Live counts of what a guest holds. Updated as things happen; the agreement checker
/// recomputes each from the objects themselves, and reports every refund below zero.
///
/// A refund below zero is a bug of the core (a double release): the count stays at 0 and the
/// underflow is recorded ([`GuestCounters::underflows`]), which the checker reports.
#[derive(Debug, Default)]
pub struct GuestCounters {
    objects: GuestCount,
    registered_pages: GuestCount,
    mapped_pages: GuestCount,
    threads: GuestCount,
    sessions: GuestCount,
    secure_bytes: GuestCount,
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
        self.objects
            .charge(1, quotas.max_objects)
            .map_err(|wanted| TeeError::Quota {
                kind: QuotaKind::Objects,
                wanted,
                limit: quotas.max_objects,
            })?;
        if let Err(wanted) = self
            .registered_pages
            .charge(registered_pages, quotas.max_registered_pages)
        {
            self.objects.refund(1);
            return Err(TeeError::Quota {
                kind: QuotaKind::RegisteredPages,
                wanted,
                limit: quotas.max_registered_pages,
            });
        }
        if let Err(wanted) = self
            .secure_bytes
            .charge(secure_bytes, quotas.max_secure_bytes)
        {
            self.objects.refund(1);
            self.registered_pages.refund(registered_pages);
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
        self.objects.refund(1);
        self.registered_pages.refund(registered_pages);
        self.secure_bytes.refund(secure_bytes);
    }

    /// Charges `bytes` of secure heap that are not an object's (a TA instance's) against
    /// `limit`; the count it would have reached if refused.
    pub(crate) fn charge_secure(&self, bytes: u64, limit: u64) -> Result<(), u64> {
        self.secure_bytes.charge(bytes, limit)
    }

    /// Refunds what [`charge_secure`](Self::charge_secure) charged.
    pub(crate) fn refund_secure(&self, bytes: u64) {
        self.secure_bytes.refund(bytes);
    }

    pub(crate) fn charge_thread(&self, limit: u64) -> Result<(), TeeError> {
        self.threads
            .charge(1, limit)
            .map_err(|wanted| TeeError::Quota {
                kind: QuotaKind::Threads,
                wanted,
                limit,
            })
    }

    pub(crate) fn refund_thread(&self) {
        self.threads.refund(1);
    }

    pub(crate) fn charge_session(&self, limit: u64) -> Result<(), TeeError> {
        self.sessions
            .charge(1, limit)
            .map_err(|wanted| TeeError::Quota {
                kind: QuotaKind::Sessions,
                wanted,
                limit,
            })
    }

    pub(crate) fn refund_session(&self) {
        self.sessions.refund(1);
    }

    pub(crate) fn add_mapped(&self, pages: u64) {
        self.mapped_pages.add(pages);
    }

    pub(crate) fn sub_mapped(&self, pages: u64) {
        self.mapped_pages.refund(pages);
    }

    /// Live memory objects.
    pub fn objects(&self) -> u64 {
        self.objects.get()
    }

    /// Pages of registered buffers.
    pub fn registered_pages(&self) -> u64 {
        self.registered_pages.get()
    }

    /// Pages mapped in the window.
    pub fn mapped_pages(&self) -> u64 {
        self.mapped_pages.get()
    }

    /// Threads in use (running or suspended).
    pub fn threads(&self) -> u64 {
        self.threads.get()
    }

    /// Open sessions.
    pub fn sessions(&self) -> u64 {
        self.sessions.get()
    }

    /// Secure heap bytes the guest's memory objects keep.
    pub fn secure_bytes(&self) -> u64 {
        self.secure_bytes.get()
    }

    /// Refunds below zero so far, per counter (all 0 unless something was released twice).
    pub fn underflows(&self) -> [(&'static str, u64); 6] {
        [
            ("objects", self.objects.underflows()),
            ("registered_pages", self.registered_pages.underflows()),
            ("mapped_pages", self.mapped_pages.underflows()),
            ("threads", self.threads.underflows()),
            ("sessions", self.sessions.underflows()),
            ("secure_bytes", self.secure_bytes.underflows()),
        ]
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

/// A page that held one of the guest's call args, kept with its object (and so its mapping)
/// for the next call whose arg lies there.
#[derive(Debug)]
pub(crate) struct KeptArgPage {
    /// The page's physical address.
    pub(crate) page: u64,
    pub(crate) mobj: Arc<Mobj>,
}

/// What one guest holds, behind its lock.
#[derive(Debug, Default)]
pub(crate) struct GuestState {
    /// Registered buffers by cookie.
    pub(crate) registered: BTreeMap<u64, Arc<Mobj>>,
    /// Open sessions by id.
    pub(crate) sessions: BTreeMap<u32, Session>,
    pub(crate) next_session: u32,
    /// `ENABLE_SHM_CACHE` is in force.
    pub(crate) shm_cache_enabled: bool,
    /// RPC argument buffers kept by the SHM cache.
    pub(crate) cached_rpc_args: Vec<CachedRpcArg>,
    /// Pages of its recent `CALL_WITH_ARG` args, most recently used first, at most
    /// `CoreConfig::kept_arg_pages`.
    pub(crate) kept_arg_pages: Vec<KeptArgPage>,
}

/// One normal world (VM) as the core knows it.
#[derive(Debug)]
pub struct GuestPartition {
    id: GuestId,
    counters: Arc<GuestCounters>,
    pub(crate) state: crate::sync::Mutex<GuestState>,
    /// Whether its sweep has begun, and the thread its last call parked.
    pub(crate) life: GuestLife,
    /// The secure copy its page lists are decoded into, kept (4 KiB, taken from the heap at
    /// its first registration) so that a registration does not clear a fresh one; a decode
    /// that finds it in use by another CPU of the guest clears one of its own.
    pub(crate) list_page: crate::sync::Mutex<Vec<teeshm_abi::page_list::ListPage>>,
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
            life: GuestLife::default(),
            list_page: crate::sync::Mutex::new(Vec::new()),
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
        self.life.is_dying()
    }

    /// A consistent picture of the guest for reports.
    pub fn snapshot(&self) -> GuestSnapshot {
        let state = self.state.lock();
        GuestSnapshot {
            id: self.id,
            registered_buffers: state.registered.len() as u64,
            sessions: state.sessions.len() as u64,
            ta_instances: state
                .sessions
                .values()
                .map(|s| match s {
                    Session::User(instance) => instance.instances(),
                    Session::Pta => 0,
                })
                .sum(),
            shm_cache_enabled: state.shm_cache_enabled,
            cached_rpc_args: state.cached_rpc_args.len() as u64,
            kept_arg_pages: state.kept_arg_pages.len() as u64,
            objects: self.counters.objects(),
            registered_pages: self.counters.registered_pages(),
            mapped_pages: self.counters.mapped_pages(),
            threads: self.counters.threads(),
            secure_bytes: self.counters.secure_bytes(),
        }
    }
}

/// Shards of the guest table (a power of two): guests whose ids differ in their low bits
/// never share one.
const GUEST_SHARDS: usize = 16;

/// One shard of the guest table, alone on its cache lines: a call reads its guest's shard
/// only, so calls of guests in different shards write no common lock word.
#[repr(align(128))]
#[derive(Debug, Default)]
struct GuestShard(crate::sync::RwLock<BTreeMap<GuestId, Arc<GuestPartition>>>);

/// The live guests by id, in shards by the id's low bits. Lookups (every call's) take their
/// shard's read lock; creation and destruction (rare) are serialised by one more lock, which
/// keeps the count of guests.
#[derive(Debug, Default)]
pub(crate) struct GuestTable {
    shards: [GuestShard; GUEST_SHARDS],
    /// Guests alive, for the limit; held while a guest is made or removed.
    live: crate::sync::Mutex<usize>,
}

impl GuestTable {
    fn shard(&self, id: GuestId) -> &crate::sync::RwLock<BTreeMap<GuestId, Arc<GuestPartition>>> {
        let [first, ..] = &self.shards;
        &self
            .shards
            .get(usize::from(id.raw()) % GUEST_SHARDS)
            .unwrap_or(first)
            .0
    }

    /// The live guest `id`.
    pub(crate) fn get(&self, id: GuestId) -> Option<Arc<GuestPartition>> {
        self.shard(id).read().get(&id).cloned()
    }

    /// Adds guest `id` unless it exists or `max` guests live; `admit` runs first (with the
    /// table's creation lock held) and may refuse it.
    pub(crate) fn insert(
        &self,
        id: GuestId,
        max: usize,
        admit: impl FnOnce() -> Result<(), ()>,
    ) -> Result<(), ()> {
        let mut live = self.live.lock();
        let shard = self.shard(id);
        if shard.read().contains_key(&id) || *live >= max {
            return Err(());
        }
        admit()?;
        shard.write().insert(id, Arc::new(GuestPartition::new(id)));
        *live = live.saturating_add(1);
        Ok(())
    }

    /// Removes guest `id`.
    pub(crate) fn remove(&self, id: GuestId) -> Option<Arc<GuestPartition>> {
        let mut live = self.live.lock();
        let guest = self.shard(id).write().remove(&id)?;
        *live = live.saturating_sub(1);
        Some(guest)
    }

    /// Every live guest, by id.
    pub(crate) fn all(&self) -> Vec<Arc<GuestPartition>> {
        let mut all: Vec<Arc<GuestPartition>> = self
            .shards
            .iter()
            .flat_map(|s| s.0.read().values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|g| g.id());
        all
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
    /// Live user-TA instances: its sessions' and those their TAs opened to other TAs (each
    /// charged to its `secure_bytes`).
    pub ta_instances: u64,
    /// Whether its SHM cache is enabled.
    pub shm_cache_enabled: bool,
    /// RPC argument buffers in its SHM cache.
    pub cached_rpc_args: u64,
    /// Pages of its `CALL_WITH_ARG` args kept for its next calls
    /// ([`CoreConfig::kept_arg_pages`](crate::CoreConfig::kept_arg_pages)).
    pub kept_arg_pages: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The sharded table behaves as one map with a limit: inserts of a new id under the
        /// limit succeed, lookups and the ordered list agree with a model map.
        #[test]
        fn guest_table_agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u16..48), 0..200)) {
            const MAX: usize = 20;
            let table = GuestTable::default();
            let mut model = alloc::collections::BTreeSet::new();
            for (insert, raw) in ops {
                let id = GuestId(raw);
                if insert {
                    let ok = table.insert(id, MAX, || Ok(())).is_ok();
                    prop_assert_eq!(ok, !model.contains(&id) && model.len() < MAX);
                    if ok {
                        model.insert(id);
                    }
                } else {
                    prop_assert_eq!(table.remove(id).map(|g| g.id()), model.take(&id));
                }
                prop_assert_eq!(table.get(id).is_some(), model.contains(&id));
                let all: Vec<GuestId> = table.all().iter().map(|g| g.id()).collect();
                prop_assert_eq!(all, model.iter().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_refused_admission_adds_no_guest() {
        let table = GuestTable::default();
        assert!(table.insert(GuestId(3), 4, || Err(())).is_err());
        assert!(table.get(GuestId(3)).is_none());
        assert!(table.insert(GuestId(3), 4, || Ok(())).is_ok());
        assert!(table.insert(GuestId(3), 4, || Ok(())).is_err(), "twice");
    }
}
