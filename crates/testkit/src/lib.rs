//! Test support of teeshm: the simulated platform the core runs on in every host build, and the
//! harnesses the tests and benchmarks share.
//!
//! - [`PhysMemory`]: sparse physical memory, by physical address, unchecked (the machine's and
//!   the normal world's view).
//! - [`SimPlatform`]: the core's [`Platform`](teeshm_core::Platform) on the host; it reaches
//!   memory only by walking the core's own translation tables, so an access through a missing
//!   or wrong mapping faults as the MMU would.
//! - [`layout`]: the simulated machine's memory map ([`sim_memory_map`], [`machine_memory_map`])
//!   and a normal world's scattering page allocator ([`NsPages`]).
//! - [`user`]: user mode on the host (TAs of `teeshm_ta` run through their own tables, their
//!   traps handled by the core) and the simulator's TA images ([`sim_ta_images`]).
//! - [`msg`]: args, params, replies and buffers as a normal world builds and reads them.
//! - [`World`]: the core alone with a small normal world that talks to it by physical address
//!   (the core's integration tests and the benchmarks).
//! - [`sim_tee`], [`CoreConduit`], [`assert_agreement`]: a core over fresh simulated memory,
//!   the core behind an [`SmcConduit`] (for a mediator or driver in front of it), and the check
//!   every harness ends with.
//!
//! # Why a crate of its own
//!
//! The simulated platform used to live in the production core (`teeshm_core::testing`), so it
//! was compiled into every build of a no_std crate that has no use for it, and the benchmarks
//! reached into the core's test directory for the test world. Here it is a std crate that
//! depends on the core, so the core builds without any of it and its tests are integration
//! tests (`crates/core/tests/`) that use the core's public API only.
//!
//! The whole-system simulator (`teeshm-sim`) depends on this crate rather than holding the
//! platform itself: its machine is then the very platform the core's tests trust, while the
//! core's own tests get that platform without building the simulator's driver, mediator,
//! guests and scenarios. This crate depends on abi, platform, mm, core and the user TAs
//! (`teeshm-ta`) only; what is specific to the driver's or the mediator's tests stays in their
//! `tests/common`. It is `publish = false`: the benchmarks (and through them `teeshm bench`) use
//! [`World`], but nothing here is an API of the TEE.
#![deny(missing_docs)]

pub mod layout;
pub mod memory;
pub mod msg;
pub mod platform;
pub mod user;
pub mod world;

pub use layout::{
    DEVICES, NS_PAGES, NS_RAM, NsPages, SECURE_RAM, STATIC_POOL, TA_RAM, machine_memory_map,
    scattered_page, sim_memory_map,
};
pub use memory::PhysMemory;
pub use platform::SimPlatform;
pub use user::{SimUserEnv, sim_ta_images};
pub use world::{ArgMode, World};

use std::sync::Arc;
use teeshm_abi::smc::{SmcConduit, SmcRegs};
use teeshm_core::{CoreConfig, Tee};
use teeshm_mm::{PhysAddr, PhysRange};

/// A core configured by `config` on the simulated platform over fresh memory
/// ([`sim_memory_map`], simulated TLBs and a counting recorder), and that memory.
///
/// # Panics
/// If the core refuses `config` (a test's own configuration).
pub fn sim_tee(config: CoreConfig) -> (Tee<SimPlatform>, Arc<PhysMemory>) {
    let mem = Arc::new(PhysMemory::new());
    write_pl011_id(&mem);
    let (platform, tlb) = SimPlatform::with_tlb(mem.clone());
    let tee = Tee::new(config, sim_memory_map(), platform, tlb)
        .expect("the core boots with the test's configuration");
    (tee, mem)
}

/// A core as [`sim_tee`] makes it, with TA RAM ([`layout::TA_RAM`]) and the simulator's user
/// TAs ([`sim_ta_images`]) registered.
pub fn sim_tee_with_tas(config: CoreConfig) -> (Tee<SimPlatform>, Arc<PhysMemory>) {
    let mem = Arc::new(PhysMemory::new());
    write_pl011_id(&mem);
    let ta_ram = PhysRange::new(PhysAddr(layout::TA_RAM.0), layout::TA_RAM.1)
        .expect("TA_RAM is a valid range");
    let (platform, tlb) = SimPlatform::with_tlb(mem.clone());
    let tee = Tee::new(config, sim_memory_map(), platform.with_ta_ram(ta_ram), tlb)
        .expect("the core boots with the test's configuration");
    for image in sim_ta_images() {
        tee.register_ta(image)
            .expect("each simulated TA has its own UUID");
    }
    (tee, mem)
}

/// The identification registers of a PL011 at the base of the simulated devices (the probe
/// device of the pseudo-TA's `IO_PROBE`): PeriphID0..3 at 0xfe0 = 0x11, 0x10, 0x14, 0x00 and
/// CellID0..3 at 0xff0 = 0x0d, 0xf0, 0x05, 0xb1, one byte per 32-bit register.
pub fn write_pl011_id(mem: &PhysMemory) {
    let base = layout::DEVICES.0;
    for (i, byte) in [0x11u8, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]
        .into_iter()
        .enumerate()
    {
        // PeriphID0..3 then CellID0..3: eight consecutive 32-bit registers from 0xfe0.
        mem.write(base + 0xfe0 + 4 * i as u64, &u32::from(byte).to_le_bytes());
    }
}

/// Asserts that the core's agreement checker finds nothing, listing what it found if not.
///
/// # Panics
/// On any disagreement.
pub fn assert_agreement(tee: &Tee<SimPlatform>) {
    let d = tee.check_agreement();
    assert!(d.is_empty(), "disagreements: {d:#?}");
}

/// The core behind an [`SmcConduit`]: an SMC is a function call into
/// [`Tee::handle_smc`]. Shared (`Arc`), so several mediators (one per guest) can call one core.
#[derive(Clone)]
pub struct CoreConduit(pub Arc<Tee<SimPlatform>>);

impl SmcConduit for CoreConduit {
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs {
        self.0.handle_smc(regs)
    }
}
