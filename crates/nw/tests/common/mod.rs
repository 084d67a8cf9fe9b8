//! The world the driver's integration tests run in: the real core over simulated memory, guest
//! RAM identity-mapped over NS RAM with a scattering allocator that remembers every page it
//! handed out, and a conduit into `Tee::handle_smc` that can mask capabilities (as the Xen
//! mediator does) and inject `ETHREAD_LIMIT`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use teeshm_abi::GuestId;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::smc::*;
use teeshm_core::{CoreConfig, Tee};
use teeshm_mm::{PhysAddr, PhysRange};
use teeshm_nw::{Driver, GuestBuffer, GuestRam, PAGE_SIZE, RamError};
use teeshm_testkit::{NS_RAM, NsPages, PhysMemory, STATIC_POOL, SimPlatform, sim_tee};

pub type SimTee = Tee<SimPlatform>;
pub type SimDriver = Driver<TeeConduit, SimRam>;

/// Guest RAM with IPA == PA over NS RAM (and the static pool, which the guest reaches too):
/// the test kit's scattering allocator, with a record of every page handed out so a test can
/// show the driver gave back exactly what it took.
pub struct SimRam {
    pub mem: Arc<PhysMemory>,
    pages: NsPages,
    /// Pages handed out and not yet given back.
    pub live: BTreeSet<u64>,
    /// Frees of pages that were not handed out (double frees, foreign pages).
    pub bad_frees: Vec<u64>,
}

impl SimRam {
    pub fn new(mem: Arc<PhysMemory>) -> Self {
        Self {
            mem,
            pages: NsPages::new(),
            live: BTreeSet::new(),
            bad_frees: Vec::new(),
        }
    }

    fn check(ipa: u64, len: usize) -> Result<(), RamError> {
        let end = ipa.checked_add(len as u64);
        let inside =
            |(start, size): (u64, u64)| ipa >= start && end.is_some_and(|e| e <= start + size);
        if inside(NS_RAM) || inside(STATIC_POOL) {
            Ok(())
        } else {
            Err(RamError::OutOfRange {
                ipa,
                len: len as u64,
            })
        }
    }
}

impl GuestRam for SimRam {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), RamError> {
        Self::check(ipa, buf.len())?;
        self.mem.read(ipa, buf);
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), RamError> {
        Self::check(ipa, data.len())?;
        self.mem.write(ipa, data);
        Ok(())
    }

    fn alloc_pages(&mut self, n: u64) -> Result<Vec<u64>, RamError> {
        let mut pages = Vec::new();
        for _ in 0..n {
            match self.pages.page() {
                Some(p) => pages.push(p),
                None => {
                    self.pages.free(&pages);
                    return Err(RamError::OutOfMemory { pages: 1 });
                }
            }
        }
        for &p in &pages {
            assert!(self.live.insert(p), "page {p:#x} handed out twice");
        }
        Ok(pages)
    }

    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, RamError> {
        let first = self
            .pages
            .contiguous(n)
            .ok_or(RamError::OutOfMemory { pages: n })?;
        for i in 0..n {
            assert!(self.live.insert(first + i * PAGE_SIZE));
        }
        Ok(first)
    }

    fn free_pages(&mut self, pages: &[u64]) {
        for &p in pages {
            if self.live.remove(&p) {
                self.pages.free(&[p]);
            } else {
                self.bad_frees.push(p);
            }
        }
    }
}

/// Calls the core as guest 0 (a7 = 0), with optional meddling.
pub struct TeeConduit {
    pub tee: Rc<SimTee>,
    /// Clear `RPC_ARG` from `EXCHANGE_CAPABILITIES` (what the Xen mediator does).
    pub mask_rpc_arg: bool,
    /// Clear `DYNAMIC_SHM` too: an old OP-TEE that shares only its static pool.
    pub mask_dynamic_shm: bool,
    /// Answer this many new yielding calls with `ETHREAD_LIMIT` without passing them on.
    pub inject_thread_limit: u32,
    /// Change an answer before the driver sees it.
    pub tamper: Option<fn(u32, &mut SmcRegs)>,
    /// Every function id sent.
    pub sent: Vec<u32>,
    /// Every RPC code received.
    pub rpcs: Vec<u32>,
    /// The arg address (a1:a2) of every yielding call started.
    pub args: Vec<u64>,
}

impl SmcConduit for TeeConduit {
    fn smc(&mut self, mut regs: SmcRegs) -> SmcRegs {
        regs.a[7] = 0;
        let func = regs.a0();
        self.sent.push(func);
        let starts = matches!(
            func,
            OPTEE_SMC_CALL_WITH_ARG | OPTEE_SMC_CALL_WITH_RPC_ARG | OPTEE_SMC_CALL_WITH_REGD_ARG
        );
        if starts {
            self.args.push(reg_pair(regs.a[1], regs.a[2]));
        }
        if starts && self.inject_thread_limit > 0 {
            self.inject_thread_limit -= 1;
            return SmcRegs::ret(OPTEE_SMC_RETURN_ETHREAD_LIMIT);
        }
        let mut out = self.tee.handle_smc(regs);
        if self.mask_rpc_arg && func == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[1] &= !u64::from(SecureCaps::RPC_ARG.bits());
        }
        if self.mask_dynamic_shm && func == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[1] &= !u64::from(SecureCaps::DYNAMIC_SHM.bits());
        }
        if let Some(tamper) = self.tamper {
            tamper(func, &mut out);
        }
        if is_rpc_return(out.a0()) {
            self.rpcs.push(out.a0());
        }
        out
    }
}

impl TeeConduit {
    pub fn new(tee: Rc<SimTee>) -> Self {
        Self {
            tee,
            mask_rpc_arg: false,
            mask_dynamic_shm: false,
            inject_thread_limit: 0,
            tamper: None,
            sent: Vec::new(),
            rpcs: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn count(&self, func: u32) -> usize {
        self.sent.iter().filter(|&&f| f == func).count()
    }
}

/// How a test world is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// The core has a static pool.
    pub pool: bool,
    /// The conduit hides `RPC_ARG`: `CALL_WITH_ARG`, RPC_ALLOC and the SHM cache.
    pub no_rpc_arg: bool,
}

pub const MODES: [Mode; 4] = [
    Mode {
        pool: false,
        no_rpc_arg: false,
    },
    Mode {
        pool: false,
        no_rpc_arg: true,
    },
    Mode {
        pool: true,
        no_rpc_arg: false,
    },
    Mode {
        pool: true,
        no_rpc_arg: true,
    },
];

pub fn tee(pool: bool) -> (Rc<SimTee>, Arc<PhysMemory>) {
    let (tee, mem) = sim_tee(CoreConfig {
        static_pool: pool.then(|| PhysRange::new(PhysAddr(STATIC_POOL.0), STATIC_POOL.1).unwrap()),
        ..CoreConfig::default()
    });
    (Rc::new(tee), mem)
}

pub fn conduit(mode: Mode) -> (Rc<SimTee>, TeeConduit, SimRam) {
    let (tee, mem) = tee(mode.pool);
    let mut c = TeeConduit::new(tee.clone());
    c.mask_rpc_arg = mode.no_rpc_arg;
    (tee, c, SimRam::new(mem))
}

/// A TEE with a static pool whose `DYNAMIC_SHM` the conduit hides: everything goes through
/// the pool.
pub fn pool_only_world(no_rpc_arg: bool) -> (Rc<SimTee>, SimDriver) {
    let (tee, mut c, ram) = conduit(Mode {
        pool: true,
        no_rpc_arg,
    });
    c.mask_dynamic_shm = true;
    let driver = Driver::probe(c, ram).unwrap();
    assert!(driver.pool_only());
    (tee, driver)
}

pub fn in_pool(addr: u64) -> bool {
    addr >= STATIC_POOL.0 && addr < STATIC_POOL.0 + STATIC_POOL.1
}

pub fn world(mode: Mode) -> (Rc<SimTee>, SimDriver) {
    let (tee, c, ram) = conduit(mode);
    let driver = Driver::probe(c, ram).unwrap();
    assert_eq!(driver.uses_rpc_arg(), !mode.no_rpc_arg);
    assert_eq!(driver.shm_cache_enabled(), mode.no_rpc_arg);
    assert_eq!(driver.static_pool().is_some(), mode.pool);
    (tee, driver)
}

pub fn agree(tee: &SimTee) {
    teeshm_testkit::assert_agreement(tee);
}

/// Shuts the driver down and checks that nothing is left anywhere: no disagreement in the
/// core, no object, buffer, session, thread or cached RPC arg of guest 0, no RPC buffer in
/// the driver, no guest page or pool page still handed out (the test must have freed its own).
pub fn finish(tee: &SimTee, driver: &mut SimDriver) {
    agree(tee);
    driver.shutdown().unwrap();
    assert_eq!(driver.rpc_buffers_held(), 0);
    assert!(!driver.shm_cache_enabled());
    agree(tee);
    let g0 = tee.guest(GuestId::HYPERVISOR).unwrap().snapshot();
    assert_eq!(g0.registered_buffers, 0, "{g0:?}");
    assert_eq!(g0.objects, 0, "{g0:?}");
    assert_eq!(g0.cached_rpc_args, 0, "{g0:?}");
    assert_eq!(g0.threads, 0, "{g0:?}");
    assert_eq!(g0.sessions, 0, "{g0:?}");
    assert!(
        driver.ram().bad_frees.is_empty(),
        "bad frees: {:x?}",
        driver.ram().bad_frees
    );
    assert!(
        driver.ram().live.is_empty(),
        "{} guest pages never freed",
        driver.ram().live.len()
    );
    if let Some(pool) = driver.static_pool() {
        assert_eq!(pool.pages_in_use(), 0);
    }
}

/// A guest buffer of `size` bytes at `offset` in its first page, filled with `fill(i)`.
pub fn buffer(
    driver: &mut SimDriver,
    size: u64,
    offset: u64,
    fill: impl Fn(u64) -> u8,
) -> GuestBuffer {
    let buf = GuestBuffer::alloc(driver.ram_mut(), size, offset).unwrap();
    let bytes: Vec<u8> = (0..size).map(fill).collect();
    buf.write(driver.ram(), 0, &bytes).unwrap();
    buf
}

pub fn contents(driver: &SimDriver, buf: &GuestBuffer) -> Vec<u8> {
    buf.read_vec(driver.ram(), 0, buf.size).unwrap()
}

/// A byte pattern distinct from the pseudo-TA's, so copies cannot pass by accident.
pub fn marker(seed: u64) -> impl Fn(u64) -> u8 {
    move |i| ((i.wrapping_mul(31) ^ seed ^ (i >> 12)) & 0xff) as u8
}
