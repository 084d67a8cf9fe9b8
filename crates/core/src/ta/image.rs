//! A trusted application's image: what the core loads into a new instance's address space.

use alloc::vec::Vec;

/// What a TA may do with a segment's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAccess {
    /// Read and execute (code).
    ReadExecute,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// One loadable segment: `data` at `vaddr`, then zeroes up to `mem_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Where the segment starts in the TA's address space (page aligned).
    pub vaddr: u64,
    /// The bytes the image holds for it (`p_filesz` of an ELF segment).
    pub data: &'static [u8],
    /// Bytes in memory (≥ `data.len()`; the rest is zeroed).
    pub mem_size: u64,
    /// Its permissions.
    pub access: SegmentAccess,
}

/// A TA's image, found by its UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaImage {
    /// The UUID as 16 octets (RFC 4122 order, as `OPEN_SESSION` carries it).
    pub uuid: [u8; 16],
    /// A name for logs and `teeshm inspect`.
    pub name: &'static str,
    /// Its segments, in address order, inside the private region below the heap.
    pub segments: Vec<Segment>,
    /// The entry point (`__utee_entry`'s address).
    pub entry: u64,
}
