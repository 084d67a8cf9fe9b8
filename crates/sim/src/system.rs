//! The system: machine, core, and guests behind their mediators.

use crate::machine::{Layout, Machine, PAGE, PageAllocator};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use teeshm_abi::GuestId;
use teeshm_abi::smc::{SmcConduit, SmcRegs};
use teeshm_core::io::{IO_OWNER, IoMapping};
use teeshm_core::{CoreConfig, Tee};
use teeshm_hyp::{HypConfig, HypLimits, MachineMemory, Mediator, Stage2};
use teeshm_mm::{PhysAddr, PhysRange};
use teeshm_nw::client::Context;
use teeshm_nw::{Driver, GuestRam, RamError};
use teeshm_testkit::{CoreConduit, DEVICES, SimPlatform, TA_RAM, sim_ta_images, write_pl011_id};

/// How a system is built.
#[derive(Debug, Clone, Copy)]
pub struct SystemConfig {
    /// Guest slots (guest ids 1..=guests).
    pub guests: u16,
    /// RAM of each guest, bytes (a multiple of 4 KiB).
    pub guest_ram: u64,
    /// Pages of the hypervisor's shadow pool set aside for each guest slot: its share, which
    /// no other guest can take (the pool has `guests` times as many).
    pub hyp_pages_per_guest: u64,
    /// The core. Every simulated system runs the user TAs: their instances take pages of the
    /// machine's TA RAM ([`TA_RAM`]), each charged to its guest's secure-heap quota.
    pub core: CoreConfig,
    /// The mediator's per-guest limits (its budgets; `max_shadow_pages` must fit the share).
    pub limits: HypLimits,
}

impl Default for SystemConfig {
    /// 4 guests of 64 MiB, 4 MiB of hypervisor pages each (the default shadow budget), a
    /// virtualized default core that keeps 4 arg pages a guest (the mediators pass args on
    /// their shadow pages), default limits; TA instances take the machine's [`TA_RAM`].
    fn default() -> Self {
        Self {
            guests: 4,
            guest_ram: 64 << 20,
            hyp_pages_per_guest: HypLimits::default().max_shadow_pages,
            core: CoreConfig {
                normal_world: teeshm_core::NormalWorld::Virtualized,
                // Each mediator passes a guest's args on its shadow pages.
                kept_arg_pages: 4,
                ..CoreConfig::default()
            },
            limits: HypLimits::default(),
        }
    }
}

/// Why the system refused something.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The core could not boot.
    #[error("core: {0}")]
    Boot(String),
    /// No guest slot has this id, or it is not running.
    #[error("guest {0} is not running")]
    NoGuest(u16),
    /// The guest already runs.
    #[error("guest {0} already runs")]
    GuestRuns(u16),
    /// The hypervisor refused.
    #[error("hypervisor: {0}")]
    Hyp(String),
    /// The guest's driver failed.
    #[error("driver: {0}")]
    Driver(String),
    /// A scenario named what does not exist (a session handle, a TA) or already does.
    #[error("{0}")]
    Scenario(String),
}

/// The hypervisor's view of machine memory, for one guest's mediator: the machine, and that
/// guest's share of the hypervisor's page pool.
///
/// The simulator runs one mediator per guest (so guests run on CPUs of their own), all drawing
/// shadow pages from the machine's one pool; each mediator's pool is therefore its guest's
/// share of it, counted here, so no guest's mediator can take another's pages.
pub struct HypMemory {
    /// The machine.
    pub machine: Machine,
    /// Pages of the pool this mediator may hold.
    pub share: u64,
    /// Pages it holds.
    pub held: u64,
    /// Pages it gave back and keeps for its next shadows (at most [`SPARE_HYP_PAGES`]): a
    /// guest's next call then takes the page its last call left, warm in its CPU's cache,
    /// without the machine's allocator lock. Taken from the share, so held and spare pages
    /// together never exceed it; given back to the machine when the mediator forgets a guest.
    pub spare: Vec<u64>,
}

/// Pages a mediator keeps after freeing them ([`HypMemory::spare`]).
pub const SPARE_HYP_PAGES: usize = 4;

impl MachineMemory for HypMemory {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        self.machine.memory.read(pa, buf);
    }
    fn write(&self, pa: u64, data: &[u8]) {
        self.machine.memory.write(pa, data);
    }
    fn zero_page(&self, pa: u64) {
        self.machine.memory.zero_page(pa);
    }
    fn alloc_page(&mut self) -> Option<u64> {
        if self.held >= self.share {
            return None;
        }
        let pa = match self.spare.pop() {
            Some(pa) => pa,
            None => self.machine.alloc_hyp_page()?,
        };
        self.held += 1;
        Some(pa)
    }
    fn free_page(&mut self, pa: u64) {
        if self.spare.len() < SPARE_HYP_PAGES {
            self.spare.push(pa);
        } else {
            self.machine.free_hyp_page(pa);
        }
        self.held = self.held.saturating_sub(1);
    }
    fn give_back_spare(&mut self) {
        for pa in self.spare.drain(..) {
            self.machine.free_hyp_page(pa);
        }
    }
    fn pool_pages(&self) -> u64 {
        self.share
    }
}

/// One guest's mediator.
pub type GuestMediator = Mediator<CoreConduit, HypMemory>;

/// Whether `TEESHM_TRACE` asks for every guest SMC on stderr; read once (the environment's
/// lock would otherwise be taken by every SMC of every simulated CPU).
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("TEESHM_TRACE").is_some())
}

/// Conduit from a guest to its mediator (the hypervisor call path).
#[derive(Clone)]
pub struct GuestConduit {
    mediator: Arc<Mutex<GuestMediator>>,
    vm: GuestId,
}

impl SmcConduit for GuestConduit {
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs {
        match self.mediator.lock() {
            Ok(m) => {
                let out = m.handle_guest_smc(self.vm, regs);
                if tracing() {
                    eprintln!("smc {:x?} -> {:x?}", regs.a, out.a);
                }
                out
            }
            Err(_) => SmcRegs::ret(teeshm_abi::smc::OPTEE_SMC_RETURN_ENOTAVAIL),
        }
    }
}

/// Where every guest's RAM starts in its own address space (as on QEMU `virt`). Never 0: a
/// guest-physical 0 is ambiguous with NULL on the OP-TEE ABI (`buf_ptr` 0, an RPC_ALLOC answer
/// of 0 meaning failure).
pub const GUEST_RAM_BASE: u64 = 0x4000_0000;

/// A guest's RAM: IPAs `GUEST_RAM_BASE..GUEST_RAM_BASE + pages * 4096`, each page somewhere in
/// machine memory.
pub struct SimGuestRam {
    machine: Machine,
    index: u64,
    pages: u64,
    alloc: PageAllocator,
}

impl SimGuestRam {
    fn pa(&self, ipa: u64) -> Result<u64, RamError> {
        let page = ipa.wrapping_sub(GUEST_RAM_BASE) / PAGE;
        if ipa < GUEST_RAM_BASE || page >= self.pages {
            return Err(RamError::OutOfRange { ipa, len: 1 });
        }
        Ok(self.machine.layout.guest_pa(self.index, page) + ipa % PAGE)
    }

    fn pieces(&self, ipa: u64, len: usize) -> Result<Vec<(u64, std::ops::Range<usize>)>, RamError> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = ipa.checked_add(done as u64).ok_or(RamError::OutOfRange {
                ipa,
                len: len as u64,
            })?;
            let n = ((PAGE - at % PAGE) as usize).min(len - done);
            out.push((self.pa(at)?, done..done + n));
            done += n;
        }
        Ok(out)
    }

    /// Pages allocated and not freed.
    pub fn pages_in_use(&self) -> u64 {
        self.alloc.in_use()
    }
}

impl GuestRam for SimGuestRam {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        for (pa, range) in self.pieces(ipa, buf.len())? {
            self.machine.memory.read(pa, &mut buf[range]);
        }
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError> {
        for (pa, range) in self.pieces(ipa, data.len())? {
            self.machine.memory.write(pa, &data[range]);
        }
        Ok(())
    }

    fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError> {
        // More than the guest has is refused before anything is reserved: `n` may come from
        // the TEE (an RPC buffer's size), and must not size an allocation by itself.
        if n > self.pages.saturating_sub(self.alloc.in_use()) {
            return Err(RamError::OutOfMemory { pages: n });
        }
        let mut pages = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.alloc.alloc() {
                Some(p) => pages.push(GUEST_RAM_BASE + p * PAGE),
                None => {
                    for p in pages {
                        self.alloc.free((p - GUEST_RAM_BASE) / PAGE, 1);
                    }
                    return Err(RamError::OutOfMemory { pages: n });
                }
            }
        }
        Ok(pages)
    }

    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, RamError> {
        self.alloc
            .alloc_run(n)
            .map(|p| GUEST_RAM_BASE + p * PAGE)
            .ok_or(RamError::OutOfMemory { pages: n })
    }

    fn free_pages(&mut self, pages: &[u64]) {
        for &p in pages {
            if let Some(page) = p.checked_sub(GUEST_RAM_BASE) {
                self.alloc.free(page / PAGE, 1);
            }
        }
    }
}

/// The driver of a guest, on the simulated conduit and RAM.
pub type GuestDriver = Driver<GuestConduit, SimGuestRam>;
/// The client API of a guest.
pub type GuestContext = Context<GuestConduit, SimGuestRam>;

/// A running guest.
pub struct Guest {
    /// Its id (also its VM id at the hypervisor and the TEE).
    pub id: GuestId,
    /// Its mediator.
    pub mediator: Arc<Mutex<GuestMediator>>,
    /// Its normal-world client API (and driver, inside).
    pub context: Mutex<GuestContext>,
}

impl Guest {
    /// The client context, locked.
    pub fn context(&self) -> MutexGuard<'_, GuestContext> {
        self.context.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mediator, locked.
    pub fn mediator(&self) -> MutexGuard<'_, GuestMediator> {
        self.mediator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A raw SMC as the guest's kernel would issue it (through the hypervisor).
    pub fn smc(&self, regs: SmcRegs) -> SmcRegs {
        self.mediator().handle_guest_smc(self.id, regs)
    }
}

/// The whole system.
pub struct System {
    /// How it was built.
    pub config: SystemConfig,
    /// Machine memory and layout.
    pub machine: Machine,
    /// The TEE core.
    pub tee: Arc<Tee<SimPlatform>>,
    /// The UART the core mapped at boot with `ioremap` and keeps, as a real core keeps its
    /// console: a PL011 at the base of the devices ([`DEVICES`]).
    pub console: IoMapping,
    guests: Mutex<BTreeMap<u16, Arc<Guest>>>,
}

/// Bytes of the console's registers the core maps at boot (one page: a PL011's).
pub const CONSOLE_BYTES: u64 = 0x1000;

/// A PL011's PeriphID0 and CellID0 (at 0xfe0 and 0xff0 of its registers): what the core reads
/// through its `ioremap` at boot to know its console is there.
const PL011_IDS: [(u64, u32); 2] = [(0xfe0, 0x11), (0xff0, 0x0d)];

impl System {
    /// Boots the core as `teeshm_testkit::sim_tee_with_tas` does: TA RAM (the machine's
    /// [`TA_RAM`], where TA instances take their pages) and the simulator's user TAs
    /// registered; then the core maps its console (a PL011 whose identification registers the
    /// machine holds) with `ioremap`, checks the PL011's IDs through the mapping and keeps it.
    /// No guest runs yet.
    ///
    /// # Errors
    /// The core refused its configuration, a TA, or the console's mapping.
    pub fn new(config: SystemConfig) -> Result<Self, SystemError> {
        let boot = |e: teeshm_core::TeeError| SystemError::Boot(e.to_string());
        let layout = Layout::new(
            u64::from(config.guests),
            config.guest_ram / PAGE,
            u64::from(config.guests) * config.hyp_pages_per_guest,
        );
        let machine = Machine::new(layout);
        write_pl011_id(&machine.memory);
        let ta_ram = PhysRange::new(PhysAddr(TA_RAM.0), TA_RAM.1)
            .map_err(|e| SystemError::Boot(format!("TA RAM: {e:?}")))?;
        let (platform, tlb) = SimPlatform::with_tlb(machine.memory.clone());
        let tee = Tee::new(
            config.core,
            layout.memory_map(),
            platform.with_ta_ram(ta_ram),
            tlb,
        )
        .map_err(|e| SystemError::Boot(e.to_string()))?;
        for image in sim_ta_images() {
            tee.register_ta(image).map_err(boot)?;
        }
        let console = tee.ioremap(DEVICES.0, CONSOLE_BYTES).map_err(boot)?;
        for (offset, id) in PL011_IDS {
            let got = tee.io_read32(&console, offset).map_err(boot)?;
            if got != id {
                return Err(SystemError::Boot(format!(
                    "console: register {offset:#x} reads {got:#x}, a PL011 has {id:#x}"
                )));
            }
        }
        Ok(Self {
            config,
            machine,
            tee: Arc::new(tee),
            console,
            guests: Mutex::new(BTreeMap::new()),
        })
    }

    fn guests_map(&self) -> MutexGuard<'_, BTreeMap<u16, Arc<Guest>>> {
        self.guests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts guest `id` (1..=guests): its stage-2 map, its mediator (which sends VM_CREATED),
    /// and its driver (which probes the TEE).
    ///
    /// # Errors
    /// An unknown slot, a running guest, or a refusal on the way.
    pub fn start_guest(&self, id: u16) -> Result<Arc<Guest>, SystemError> {
        if id == 0 || id > self.config.guests {
            return Err(SystemError::NoGuest(id));
        }
        if self.guests_map().contains_key(&id) {
            return Err(SystemError::GuestRuns(id));
        }
        let index = u64::from(id - 1);
        let layout = self.machine.layout;
        let mut stage2 = Stage2::new();
        for page in 0..layout.guest_pages {
            stage2
                .map(GUEST_RAM_BASE + page * PAGE, layout.guest_pa(index, page))
                .map_err(|e| SystemError::Hyp(e.to_string()))?;
        }
        let vm = GuestId(id);
        // One mediator per guest, its pool the guest's share of the machine's.
        let memory = HypMemory {
            machine: self.machine.clone(),
            share: self.config.hyp_pages_per_guest,
            held: 0,
            spare: Vec::new(),
        };
        let hyp = HypConfig {
            max_guests: 1,
            limits: self.config.limits,
            ..HypConfig::default()
        };
        let mediator = Mediator::new(CoreConduit(self.tee.clone()), memory, hyp)
            .map_err(|e| SystemError::Hyp(e.to_string()))?;
        mediator
            .create_guest(vm, stage2)
            .map_err(|e| SystemError::Hyp(e.to_string()))?;
        let mediator = Arc::new(Mutex::new(mediator));
        let ram = SimGuestRam {
            machine: self.machine.clone(),
            index,
            pages: layout.guest_pages,
            alloc: PageAllocator::new(layout.guest_pages),
        };
        let conduit = GuestConduit {
            mediator: mediator.clone(),
            vm,
        };
        let driver = Driver::probe(conduit, ram).map_err(|e| SystemError::Driver(e.to_string()))?;
        let guest = Arc::new(Guest {
            id: vm,
            mediator,
            context: Mutex::new(Context::new(driver)),
        });
        self.guests_map().insert(id, guest.clone());
        Ok(guest)
    }

    /// Ends guest `id`: the hypervisor drops its shadows and pins and sends VM_DESTROYED. Works
    /// while the guest has calls suspended in RPCs.
    ///
    /// # Errors
    /// The guest does not run, or the hypervisor refused.
    pub fn destroy_guest(&self, id: u16) -> Result<(), SystemError> {
        let guest = self
            .guests_map()
            .remove(&id)
            .ok_or(SystemError::NoGuest(id))?;
        let mediator = guest.mediator();
        mediator
            .destroy_guest(guest.id)
            .map_err(|e| SystemError::Hyp(e.to_string()))
    }

    /// Guest `id`, if it runs.
    pub fn guest(&self, id: u16) -> Option<Arc<Guest>> {
        self.guests_map().get(&id).cloned()
    }

    /// Running guests.
    pub fn guests(&self) -> Vec<Arc<Guest>> {
        self.guests_map().values().cloned().collect()
    }

    /// Every disagreement in the system: the core's checker, each mediator's checker, plus the
    /// hypervisor's view — a guest that no longer runs must hold nothing in the core, and the
    /// hypervisor must hold no page for it.
    pub fn check(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .tee
            .check_agreement()
            .into_iter()
            .map(|d| format!("core: {d:?}"))
            .collect();
        let running: Vec<u16> = self.guests_map().keys().copied().collect();
        for g in self.tee.guests() {
            let id = g.id().raw();
            if !running.contains(&id) {
                found.push(format!("core still holds guest {id}, which does not run"));
            }
        }
        let mut shadows = 0u64;
        for g in self.guests() {
            let mediator = g.mediator();
            found.extend(
                mediator
                    .check_agreement()
                    .into_iter()
                    .map(|v| format!("mediator of guest {}: {v:?}", g.id.raw())),
            );
            let (counted, held, spare) = {
                let memory = mediator.memory();
                (
                    mediator.shadow_pages(),
                    memory.held,
                    memory.spare.len() as u64,
                )
            };
            if counted != held {
                found.push(format!(
                    "the mediator of guest {} holds {held} pool pages but accounts for {counted}",
                    g.id.raw()
                ));
            }
            if held + spare > mediator.memory().share {
                found.push(format!(
                    "the mediator of guest {} holds {held} and keeps {spare} pool pages, beyond its share",
                    g.id.raw()
                ));
            }
            shadows += counted + spare;
        }
        let in_use = self.machine.hyp_pages_in_use();
        if shadows != in_use {
            found.push(format!(
                "the hypervisor holds {in_use} pages but its mediators account for {shadows}"
            ));
        }
        found.extend(self.check_ta_ram());
        let io = self.tee.io_mappings();
        if !io.contains(&self.console) {
            found.push(format!(
                "the console's mapping {:?} is no longer listed",
                self.console
            ));
        }
        let window = self.tee.window();
        for m in window.shm().mappings() {
            if m.owner == IO_OWNER {
                if !io.iter().any(|i| i.va.page_base() == m.range.start()) {
                    found.push(format!(
                        "window maps {:?} for devices, which no ioremap lists",
                        m.range
                    ));
                }
                continue;
            }
            if !running.contains(&m.owner.raw()) && !m.owner.is_hypervisor() {
                found.push(format!(
                    "window maps {:?} for guest {}, which does not run",
                    m.range,
                    m.owner.raw()
                ));
            }
        }
        found
    }

    /// TA RAM now: pages in all and free, and the TA instances alive (of every guest).
    pub fn ta_ram(&self) -> TaRam {
        let (free_pages, total_pages) = self.tee.platform().ta_ram_pages();
        TaRam {
            total_pages,
            free_pages,
            instances: u64::from(self.tee.tas().resources().asids_in_use()),
        }
    }

    /// TA RAM agrees with the guests (call it while no call runs): no page is free twice, an
    /// instance holds pages, and with no guest in the core no instance lives and every page is
    /// free. (Each instance's charge to its guest is the core's checker's.)
    fn check_ta_ram(&self) -> Vec<String> {
        let mut found = Vec::new();
        let ram = self.ta_ram();
        if ram.free_pages > ram.total_pages {
            found.push(format!(
                "TA RAM has {} pages free of {} in all",
                ram.free_pages, ram.total_pages
            ));
        }
        if (ram.instances == 0) != ram.all_free() {
            found.push(format!(
                "{} TA instances live and {} of {} pages of TA RAM are free",
                ram.instances, ram.free_pages, ram.total_pages
            ));
        }
        if self.tee.guests().is_empty() && ram.instances != 0 {
            found.push(format!(
                "no guest is left but {} TA instances live",
                ram.instances
            ));
        }
        found
    }
}

/// TA RAM, the secure RAM user TA instances take their pages from, and the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaRam {
    /// Pages in all.
    pub total_pages: u64,
    /// Pages free now.
    pub free_pages: u64,
    /// TA instances alive (their ASIDs), of every guest.
    pub instances: u64,
}

impl TaRam {
    /// Whether every page is free.
    pub fn all_free(&self) -> bool {
        self.free_pages == self.total_pages
    }

    /// Pages TA instances hold.
    pub fn used_pages(&self) -> u64 {
        self.total_pages.saturating_sub(self.free_pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Layout;

    /// A mediator's pages, held and kept, stay within its share; a page given back is taken
    /// again first; the kept pages go back to the machine when asked.
    #[test]
    fn spare_pages_stay_within_the_share_and_go_back() {
        let machine = Machine::new(Layout::new(1, 16, 8));
        let mut m = HypMemory {
            machine: machine.clone(),
            share: 6,
            held: 0,
            spare: Vec::new(),
        };
        let pages: Vec<u64> = (0..6).map(|_| m.alloc_page().unwrap()).collect();
        assert_eq!(m.alloc_page(), None, "the share is full");
        for &pa in &pages {
            m.free_page(pa);
            assert!(m.held + m.spare.len() as u64 <= m.share);
        }
        assert_eq!((m.held, m.spare.len()), (0, SPARE_HYP_PAGES));
        assert_eq!(machine.hyp_pages_in_use(), SPARE_HYP_PAGES as u64);
        // The pages beyond the spare's room went back to the machine; the last one kept is
        // taken first.
        let last = pages[SPARE_HYP_PAGES - 1];
        assert_eq!(m.alloc_page(), Some(last), "the last page kept");
        m.free_page(last);
        m.give_back_spare();
        assert_eq!(
            (m.held, m.spare.len(), machine.hyp_pages_in_use()),
            (0, 0, 0)
        );
    }
}
