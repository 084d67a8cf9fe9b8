//! Tests of the whole core through its SMC interface.

mod world;

mod front_end;
mod lifecycle_tests;
mod model;
mod reference;
mod regressions;
