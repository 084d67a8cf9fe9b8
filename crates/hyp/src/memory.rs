//! Machine memory as the hypervisor reaches it, and guest memory read through a stage 2.

use crate::error::HypError;
use crate::stage2::{PAGE_MASK, PAGE_SIZE, Stage2};
use teeshm_abi::page_list::NsMemory;

/// What the hypervisor itself may do with machine memory: read and write any PA, and own a
/// few pages for shadow args and shadow page lists.
///
/// The mediator reaches guest memory only through this trait, after translating the guest's
/// IPA with its [`Stage2`], so a guest can never make it touch memory outside its own RAM.
/// Shadow pages must be normal-world memory the TEE may map (the TEE checks), 4 KiB aligned,
/// and outside every guest's stage 2, so no guest can read or change them.
///
/// The pages [`MachineMemory::alloc_page`] hands out form one pool shared by every guest of
/// the mediator; the mediator divides it into per-guest shares ([`crate::HypConfig`]) and is
/// then its only user, so a guest within its share always finds a page.
pub trait MachineMemory {
    /// Copies `buf.len()` bytes at `pa` into `buf`.
    fn read(&self, pa: u64, buf: &mut [u8]);
    /// Copies `data` to `pa`.
    fn write(&self, pa: u64, data: &[u8]);
    /// Zeroes the page at `pa` (page aligned).
    fn zero_page(&self, pa: u64) {
        self.write(pa, &[0u8; PAGE_SIZE as usize]);
    }
    /// A hypervisor-owned NS page (for shadows), or `None` when none is left. Its content is
    /// whatever its last user left: the mediator zeroes a shadow before use.
    fn alloc_page(&mut self) -> Option<u64>;
    /// Gives back a page from [`MachineMemory::alloc_page`].
    fn free_page(&mut self, pa: u64);
    /// Gives the pool every page given back but kept for reuse, if the implementation keeps
    /// any (the mediator calls it when it forgets a guest). Nothing by default.
    fn give_back_spare(&mut self) {}
    /// Pages of the pool in all, held or free: what the mediator divides among guests. No
    /// default: a pool of unknown size cannot be shared fairly.
    fn pool_pages(&self) -> u64;
}

/// Guest memory for the page-list decoder: IPAs in, each read translated through the guest's
/// stage 2 and confined to one page.
pub(crate) struct GuestReader<'a, M: MachineMemory> {
    pub(crate) stage2: &'a Stage2,
    pub(crate) mem: &'a M,
}

impl<M: MachineMemory> NsMemory for GuestReader<'_, M> {
    type Error = HypError;

    fn read(&mut self, ipa: u64, buf: &mut [u8]) -> Result<(), HypError> {
        let pa = self
            .stage2
            .translate(ipa)
            .ok_or(HypError::NotGuestRam { ipa })?;
        let end = (ipa & PAGE_MASK).checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > PAGE_SIZE) {
            return Err(HypError::NotGuestRam { ipa });
        }
        self.mem.read(pa, buf);
        Ok(())
    }
}
