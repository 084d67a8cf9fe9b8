//! The whole-system simulator of teeshm: one machine, several guests, the hypervisor mediator,
//! and the TEE core, each the real crate, joined by SMC conduits that are function calls.
//!
//! - [`machine`]: sparse physical memory with secure and normal-world ranges; each guest's RAM
//!   scattered over normal-world RAM by its stage-2 map.
//! - [`System`]: guests (driver + client API on `teeshm-nw`), one mediator per guest
//!   (`teeshm-hyp`, so calls of different guests really overlap in the core), and the core
//!   (`teeshm-core`) on the simulated platform, whose reads and writes of shared memory go through
//!   a software walk of the core's own translation tables.
//! - [`scenario`]: the operations of scenario and replay files, and their results.
//! - [`stress`]: random operations with the agreement checker after every step.
//! - [`report`]: what the system holds, as tables or JSON, and the SVG picture of the window.
//!
//! The machine's memory and the core's platform are `teeshm-testkit`'s ([`PhysMemory`],
//! [`SimPlatform`]), the ones the core's, driver's and mediator's tests run on, and the core is
//! reached through its [`CoreConduit`]. The simulator depends on that crate instead of holding
//! the platform itself: a result here and a test result there then come from the same simulated
//! hardware, and the core's tests, which need that platform, do not have to build the
//! simulator's driver, mediator and scenarios to get it (the test-support crate depends on
//! abi, platform, mm and core only). The harnesses of that crate are test code and are not
//! part of the simulator's API.
//!
//! [`PhysMemory`]: teeshm_testkit::PhysMemory
//! [`SimPlatform`]: teeshm_testkit::SimPlatform
//! [`CoreConduit`]: teeshm_testkit::CoreConduit

pub mod demo;
pub mod machine;
pub mod report;
pub mod scenario;
pub mod stress;
pub mod system;

pub use machine::{Layout, Machine};
pub use system::{Guest, System, SystemConfig, SystemError};
