//! Trusted applications in their own address spaces (user mode, S-EL0).

pub mod image;

pub use image::{Segment, SegmentAccess, TaImage};
