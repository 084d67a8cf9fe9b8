//! What the mediator keeps for one guest: its stage 2, its pins, its buffers and its calls.

use crate::config::{GuestStats, HypLimits};
use crate::error::HypError;
use crate::memory::MachineMemory;
use crate::stage2::{PAGE_SIZE, Stage2};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use teeshm_abi::Count;

/// Pin references per physical page. A pinned page cannot leave the guest's stage 2, so the
/// TEE never writes into a page that the guest has given away.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// References per PA page; a page with none has no entry.
    counts: BTreeMap<u64, u64>,
    total: Count,
    /// Unpins of a page that held no pin (a double unpin), for the agreement checker.
    double_unpins: u64,
}

impl Pins {
    /// Pins every page of `pages` (PA pages), all or none, unless the total would pass `limit`.
    pub(crate) fn pin_all(&mut self, pages: &[u64], limit: u64) -> Result<(), HypError> {
        let wanted =
            self.total
                .get()
                .checked_add(pages.len() as u64)
                .ok_or(HypError::TooManyPins {
                    wanted: u64::MAX,
                    limit,
                })?;
        if wanted > limit {
            return Err(HypError::TooManyPins { wanted, limit });
        }
        for &page in pages {
            let count = self.counts.entry(page).or_insert(0);
            *count = count.saturating_add(1);
        }
        self.total = Count::new(wanted);
        Ok(())
    }

    /// Drops one pin reference of each page of `pages`. A page with no reference left is a
    /// double unpin: nothing changes for it, and it is recorded ([`Pins::underflows`]).
    pub(crate) fn unpin_all(&mut self, pages: &[u64]) {
        for page in pages {
            let Some(count) = self.counts.get_mut(page) else {
                self.double_unpins = self.double_unpins.saturating_add(1);
                continue;
            };
            match count.checked_sub(1) {
                Some(0) | None => {
                    self.counts.remove(page);
                }
                Some(left) => *count = left,
            }
            // An underflow here means `total` and `counts` disagree; it is recorded in the
            // count and the recount of the checker shows it too.
            let _ = self.total.sub(1);
        }
    }

    /// Whether PA page `page` is pinned.
    pub(crate) fn is_pinned(&self, page: u64) -> bool {
        self.counts.contains_key(&page)
    }

    /// Pin references held.
    pub(crate) fn total(&self) -> u64 {
        self.total.get()
    }

    /// Pin references per PA page, in page order.
    pub(crate) fn counts(&self) -> &BTreeMap<u64, u64> {
        &self.counts
    }

    /// Unpins that found nothing to unpin: of a page with no pin, or below a total of 0.
    pub(crate) fn underflows(&self) -> u64 {
        self.double_unpins.saturating_add(self.total.underflows())
    }
}

/// A buffer whose pages are pinned for the TEE: the PA pages (one pin reference each) and the
/// shadow list pages that describe them to the TEE (none once the TEE has read them).
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    pub(crate) pages: Vec<u64>,
    pub(crate) lists: Vec<u64>,
}

/// An RPC argument buffer (`RPC_FUNC_ALLOC`): the guest's page (pinned) and the shadow page the
/// TEE writes its RPC args into.
#[derive(Debug)]
pub(crate) struct RpcArg {
    /// Where the guest's buffer starts.
    pub(crate) ipa: u64,
    /// The pinned PA page under it.
    pub(crate) pa_page: u64,
    /// Bytes from `ipa` to the end of its page.
    pub(crate) room: u64,
    /// The shadow the TEE uses.
    pub(crate) shadow: u64,
}

/// What a suspended call waits for from its guest.
#[derive(Debug, Default)]
pub(crate) enum Pending {
    /// Nothing to translate: the guest's answer only resumes the thread (`RPC_FUNC_FREE`,
    /// `FOREIGN_INTR`, an unknown RPC).
    #[default]
    Resume,
    /// An `RPC_FUNC_ALLOC` of `size` bytes.
    Alloc {
        /// Bytes the TEE asked for.
        size: u64,
    },
    /// An `RPC_CMD` whose request (the TEE's, copied from the shadow) lies in the guest's RPC
    /// arg buffer `cookie`.
    Cmd {
        /// The RPC arg buffer.
        cookie: u64,
        /// The request as the TEE wrote it.
        request: Vec<u8>,
    },
    /// An `SHM_FREE` the mediator itself asked of the guest after an `SHM_ALLOC` answer it
    /// could not translate; the TEE then gets `request` back with `ret = code`.
    HypFree {
        /// The RPC arg buffer.
        cookie: u64,
        /// The TEE's `SHM_ALLOC` request.
        request: Vec<u8>,
        /// What the TEE is told.
        code: u32,
    },
}

/// A call of the guest in flight.
#[derive(Debug)]
pub(crate) struct Call {
    /// Unique among the mediator's calls (thread ids are reused; this is not).
    pub(crate) id: u64,
    /// Where the guest's arg lies, for the copy back.
    pub(crate) guest_arg_ipa: u64,
    /// The arg as forwarded (the validated copy, with translated params).
    pub(crate) arg: Vec<u8>,
    /// The hypervisor page holding the forwarded arg.
    pub(crate) shadow_arg: u64,
    /// The message command.
    pub(crate) cmd: u32,
    /// Translated NONCONTIG params, by param index.
    pub(crate) temps: Vec<(usize, Buffer)>,
    /// Shadow lists of the last `SHM_ALLOC` answer, kept until the TEE has surely read them
    /// (next `SHM_ALLOC` answer or end of the call, as Xen).
    pub(crate) stale_lists: Vec<u64>,
    /// What the call waits for.
    pub(crate) pending: Pending,
}

/// A registered buffer the TEE answered `BUSY` for: pinned until every call of the guest that
/// was in flight at that moment (the only possible users) has ended.
#[derive(Debug)]
pub(crate) struct Draining {
    pub(crate) buffer: Buffer,
    /// Ids of the calls still to end; empty from the start means "until the guest ends".
    pub(crate) waiting: BTreeSet<u64>,
}

/// One guest as the mediator knows it.
#[derive(Debug)]
pub(crate) struct GuestState {
    pub(crate) stage2: Stage2,
    pub(crate) pins: Pins,
    /// Buffers of every kind held, for [`HypLimits::max_buffers`].
    pub(crate) buffers: Count,
    /// Hypervisor pages held as shadows.
    pub(crate) shadow_pages: Count,
    /// Registered buffers by cookie (their shadow lists are gone).
    pub(crate) registered: BTreeMap<u64, Buffer>,
    /// Unregistered with `BUSY`, not yet let go.
    pub(crate) draining: Vec<Draining>,
    /// Buffers handed to the TEE by RPC `SHM_ALLOC`, by the guest's cookie.
    pub(crate) rpc_buffers: BTreeMap<u64, Buffer>,
    /// RPC argument buffers by the guest's cookie.
    pub(crate) rpc_args: BTreeMap<u64, RpcArg>,
    /// Calls suspended in an RPC, by TEE thread id.
    pub(crate) calls: BTreeMap<u64, Call>,
}

impl GuestState {
    pub(crate) fn new(stage2: Stage2) -> Self {
        Self {
            stage2,
            pins: Pins::default(),
            buffers: Count::ZERO,
            shadow_pages: Count::ZERO,
            registered: BTreeMap::new(),
            draining: Vec::new(),
            rpc_buffers: BTreeMap::new(),
            rpc_args: BTreeMap::new(),
            calls: BTreeMap::new(),
        }
    }

    pub(crate) fn stats(&self) -> GuestStats {
        GuestStats {
            calls_in_flight: u32::try_from(self.calls.len()).unwrap_or(u32::MAX),
            buffers: self.buffers.get(),
            registered: self.registered.len() as u64,
            draining: self.draining.len() as u64,
            rpc_buffers: self.rpc_buffers.len() as u64,
            rpc_args: self.rpc_args.len() as u64,
            pinned_pages: self.pins.total(),
            shadow_pages: self.shadow_pages.get(),
        }
    }

    /// Room for one more buffer under the limit.
    pub(crate) fn check_buffer_room(&self, limits: &HypLimits) -> Result<(), HypError> {
        if self.buffers.get() >= u64::from(limits.max_buffers) {
            return Err(HypError::TooManyBuffers {
                limit: limits.max_buffers,
            });
        }
        Ok(())
    }

    /// A zeroed hypervisor page for a shadow, within the guest's share of the pool.
    pub(crate) fn alloc_shadow<M: MachineMemory>(
        &mut self,
        mem: &mut M,
        limits: &HypLimits,
    ) -> Result<u64, HypError> {
        // The share is what makes the pool fair: without it one guest could hold every page.
        if self.shadow_pages.get() >= limits.max_shadow_pages {
            return Err(HypError::TooManyShadowPages {
                limit: limits.max_shadow_pages,
            });
        }
        let pa = mem.alloc_page().ok_or(HypError::NoShadowPage)?;
        if pa % PAGE_SIZE != 0 {
            // A platform bug; the page is not usable as a shadow.
            mem.free_page(pa);
            return Err(HypError::NoShadowPage);
        }
        mem.zero_page(pa);
        self.shadow_pages.add(1);
        Ok(pa)
    }

    // The releases below cannot act on an underflow (a double release): the count records it
    // and the agreement checker ([`GuestState::check_agreement`]) reports it.

    /// Gives back shadow pages.
    pub(crate) fn free_shadows<M: MachineMemory>(&mut self, mem: &mut M, pages: &[u64]) {
        for &pa in pages {
            mem.free_page(pa);
            let _ = self.shadow_pages.sub(1);
        }
    }

    /// Unpins a buffer, frees its shadow lists and forgets it.
    pub(crate) fn release_buffer<M: MachineMemory>(&mut self, mem: &mut M, buffer: Buffer) {
        self.pins.unpin_all(&buffer.pages);
        self.free_shadows(mem, &buffer.lists);
        let _ = self.buffers.sub(1);
    }

    /// Unpins an RPC arg buffer and frees its shadow.
    pub(crate) fn release_rpc_arg<M: MachineMemory>(&mut self, mem: &mut M, arg: RpcArg) {
        self.pins.unpin_all(&[arg.pa_page]);
        self.free_shadows(mem, &[arg.shadow]);
        let _ = self.buffers.sub(1);
    }

    /// Everything a call holds goes: its temporary buffers, its stale lists and its shadow arg;
    /// then the registered buffers that waited for it are let go.
    pub(crate) fn end_call<M: MachineMemory>(&mut self, mem: &mut M, call: Call) {
        let Call {
            id,
            temps,
            stale_lists,
            shadow_arg,
            ..
        } = call;
        for (_, buffer) in temps {
            self.release_buffer(mem, buffer);
        }
        self.free_shadows(mem, &stale_lists);
        self.free_shadows(mem, &[shadow_arg]);
        let mut done = Vec::new();
        let mut i = 0;
        while let Some(d) = self.draining.get_mut(i) {
            if d.waiting.remove(&id) && d.waiting.is_empty() {
                done.push(self.draining.swap_remove(i));
            } else {
                i = i.saturating_add(1);
            }
        }
        for d in done {
            self.release_buffer(mem, d.buffer);
        }
    }

    /// Everything the guest holds goes; returns the shadow pages to give back once the TEE has
    /// forgotten the guest (they are no longer counted).
    pub(crate) fn release_all(mut self) -> Vec<u64> {
        let mut shadows = Vec::new();
        let mut buffers = Vec::new();
        for (_, call) in core::mem::take(&mut self.calls) {
            shadows.push(call.shadow_arg);
            shadows.extend(call.stale_lists);
            buffers.extend(call.temps.into_iter().map(|(_, b)| b));
        }
        buffers.extend(core::mem::take(&mut self.registered).into_values());
        buffers.extend(core::mem::take(&mut self.rpc_buffers).into_values());
        buffers.extend(
            core::mem::take(&mut self.draining)
                .into_iter()
                .map(|d| d.buffer),
        );
        for (_, arg) in core::mem::take(&mut self.rpc_args) {
            self.pins.unpin_all(&[arg.pa_page]);
            shadows.push(arg.shadow);
        }
        for buffer in buffers {
            self.pins.unpin_all(&buffer.pages);
            shadows.extend(buffer.lists);
        }
        shadows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_count_references_and_respect_the_limit() {
        let mut p = Pins::default();
        p.pin_all(&[0x1000, 0x2000, 0x1000], 4).unwrap();
        assert_eq!(p.total(), 3);
        assert!(p.is_pinned(0x1000) && p.is_pinned(0x2000));
        assert_eq!(
            p.pin_all(&[0x3000, 0x4000], 4),
            Err(HypError::TooManyPins {
                wanted: 5,
                limit: 4
            })
        );
        assert!(!p.is_pinned(0x3000), "all or nothing");
        p.unpin_all(&[0x1000]);
        assert!(p.is_pinned(0x1000));
        p.unpin_all(&[0x1000, 0x2000]);
        assert!(!p.is_pinned(0x1000) && !p.is_pinned(0x2000));
        assert_eq!(p.total(), 0);
        assert_eq!(p.underflows(), 0);
        // Unpinning what is not pinned changes nothing, but is recorded.
        p.unpin_all(&[0x5000]);
        assert_eq!(p.total(), 0);
        assert_eq!(p.underflows(), 1);
    }
}
