//! The performance suite of teeshm: every figure measured beside its peer in the same run
//! (`teeshm bench`), and the peers the criterion benchmarks share (`benches/`).
//!
//! Figures (ids as in issue 8): P1 VA window alloc+free, P2 registration cost and memory per
//! page, P3 map and unmap per page and TLB requests per unmap, P4 repeat invoke 1 MiB vs 4 KiB,
//! P5 phys_to_virt, P6 VM destroy alone vs beside 63 busy guests, P7 the largest system held at
//! once, P8 simulated invoke throughput on 1, 2 and 4 threads, P9 a user TA's invoke with a 1 MiB
//! memref vs 4 KiB (issue 17).

pub mod fixtures;
pub mod peers;
pub mod plot;
pub mod suite;

pub use suite::{Figure, Series, run};
