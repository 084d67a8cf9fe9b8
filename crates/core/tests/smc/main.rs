//! Tests of the whole core through its SMC interface, on the simulated platform of
//! `teeshm-testkit` with its small normal world ([`teeshm_testkit::World`]). They are
//! integration tests, so they see the core as every other user does: through its public API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod front_end;
mod kept_args;
mod lifecycle;
mod model;
mod reference;
mod regressions;
mod user_ta;
