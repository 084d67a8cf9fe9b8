//! Physical and virtual addresses and page-granular ranges, with checked arithmetic.

use core::fmt;

/// Size of a translation granule and of every page teeshm shares with a normal world.
pub const PAGE_SIZE: u64 = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;
/// Mask of the offset bits inside a page.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;

/// An address or range did not fit the rules of its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The address is not 4 KiB aligned where it must be.
    #[error("address {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
    /// start + length passes the top of the 64-bit address space.
    #[error("range at {start:#x} of {len:#x} bytes wraps past the end of the address space")]
    Overflow {
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A range of zero bytes or pages where one is not allowed.
    #[error("empty range at {0:#x}")]
    Empty(u64),
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Whether the address is 4 KiB aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.0 & PAGE_MASK == 0
            }

            /// The offset of the address inside its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & PAGE_MASK
            }

            /// The start of the page holding the address.
            pub const fn page_base(self) -> Self {
                Self(self.0 & !PAGE_MASK)
            }

            /// The page number (address / 4 KiB).
            pub const fn page_number(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }

            /// The address of page number `n`, if it fits in 64 bits.
            pub const fn from_page_number(n: u64) -> Option<Self> {
                match n.checked_mul(PAGE_SIZE) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }

            /// `self + pages * 4 KiB`, or `None` on overflow.
            pub const fn checked_add_pages(self, pages: u64) -> Option<Self> {
                match pages.checked_mul(PAGE_SIZE) {
                    Some(bytes) => self.checked_add(bytes),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A physical address (in the secure or non-secure physical address space).
    PhysAddr,
    "PA"
);
address_type!(
    /// A virtual address of the TEE core's own translation regime.
    VirtAddr,
    "VA"
);

/// A byte range `[start, end)` of physical addresses; `end` never wraps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysRange {
    start: PhysAddr,
    end: PhysAddr,
}

impl PhysRange {
    /// The range of `len` bytes from `start`.
    ///
    /// # Errors
    /// [`AddrError::Empty`] for `len == 0`, [`AddrError::Overflow`] if the end passes 2^64.
    pub const fn new(start: PhysAddr, len: u64) -> Result<Self, AddrError> {
        if len == 0 {
            return Err(AddrError::Empty(start.0));
        }
        match start.0.checked_add(len) {
            Some(end) => Ok(Self {
                start,
                end: PhysAddr(end),
            }),
            None => Err(AddrError::Overflow {
                start: start.0,
                len,
            }),
        }
    }

    /// The whole 4 KiB page starting at `page`.
    ///
    /// # Errors
    /// [`AddrError::Unaligned`] unless `page` is 4 KiB aligned; overflow at the top page.
    pub const fn page(page: PhysAddr) -> Result<Self, AddrError> {
        if !page.is_page_aligned() {
            return Err(AddrError::Unaligned(page.0));
        }
        Self::new(page, PAGE_SIZE)
    }

    /// First address.
    pub const fn start(self) -> PhysAddr {
        self.start
    }

    /// First address after the range.
    pub const fn end(self) -> PhysAddr {
        self.end
    }

    /// Length in bytes (never 0).
    pub const fn len(self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Always false: a `PhysRange` holds at least one byte. Here for API symmetry.
    pub const fn is_empty(self) -> bool {
        false
    }

    /// Whether `other` lies entirely inside `self`.
    pub const fn contains_range(self, other: PhysRange) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: PhysRange) -> bool {
        self.start.0 < other.end.0 && other.start.0 < self.end.0
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PA:[{:#x}, {:#x})", self.start.0, self.end.0)
    }
}

/// `pages` consecutive 4 KiB pages of virtual addresses from a page-aligned `start`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtPages {
    start: VirtAddr,
    pages: u64,
}

impl VirtPages {
    /// The range of `pages` pages from `start`.
    ///
    /// # Errors
    /// [`AddrError::Unaligned`], [`AddrError::Empty`] for 0 pages, [`AddrError::Overflow`].
    pub const fn new(start: VirtAddr, pages: u64) -> Result<Self, AddrError> {
        if !start.is_page_aligned() {
            return Err(AddrError::Unaligned(start.0));
        }
        if pages == 0 {
            return Err(AddrError::Empty(start.0));
        }
        if start.checked_add_pages(pages).is_none() {
            return Err(AddrError::Overflow {
                start: start.0,
                len: pages.saturating_mul(PAGE_SIZE),
            });
        }
        Ok(Self { start, pages })
    }

    /// The range of `pages` pages from `start`, for a caller that knows `start` is page aligned,
    /// `pages` is not 0 and the range ends below 2⁶⁴ (the VA window, whose bounds were checked
    /// when it was built). Nothing is checked here: a wrong caller makes a wrong range, no more.
    pub(crate) const fn within_checked_bounds(start: VirtAddr, pages: u64) -> Self {
        Self { start, pages }
    }

    /// First address.
    pub const fn start(self) -> VirtAddr {
        self.start
    }

    /// Number of pages (never 0).
    pub const fn pages(self) -> u64 {
        self.pages
    }

    /// Length in bytes.
    pub const fn len_bytes(self) -> u64 {
        // Cannot overflow: checked in `new`.
        self.pages.wrapping_mul(PAGE_SIZE)
    }

    /// First address after the range.
    pub const fn end(self) -> VirtAddr {
        VirtAddr(self.start.0.wrapping_add(self.len_bytes()))
    }

    /// Whether `va` lies inside the range.
    pub const fn contains(self, va: VirtAddr) -> bool {
        self.start.0 <= va.0 && va.0 < self.end().0
    }
}

impl fmt::Debug for VirtPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VA:[{:#x}, {:#x})", self.start.0, self.end().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_helpers() {
        let pa = PhysAddr(0x4000_1234);
        assert!(!pa.is_page_aligned());
        assert_eq!(pa.page_offset(), 0x234);
        assert_eq!(pa.page_base(), PhysAddr(0x4000_1000));
        assert_eq!(pa.page_number(), 0x40001);
        assert_eq!(
            PhysAddr::from_page_number(0x40001),
            Some(PhysAddr(0x4000_1000))
        );
        assert_eq!(PhysAddr::from_page_number(u64::MAX), None);
        assert_eq!(VirtAddr(u64::MAX - 10).checked_add(11), None);
        assert_eq!(VirtAddr(0).checked_add_pages(u64::MAX), None);
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!(PhysRange::new(PhysAddr(5), 0), Err(AddrError::Empty(5)));
        assert!(matches!(
            PhysRange::new(PhysAddr(u64::MAX), 2),
            Err(AddrError::Overflow { .. })
        ));
        assert_eq!(
            PhysRange::page(PhysAddr(0x10)),
            Err(AddrError::Unaligned(0x10))
        );
        // The very last page ends exactly at 2^64, which does not fit: refused, not wrapped.
        assert!(PhysRange::page(PhysAddr(!PAGE_MASK)).is_err());
        let a = PhysRange::new(PhysAddr(0x1000), 0x2000).unwrap();
        let b = PhysRange::new(PhysAddr(0x2fff), 1).unwrap();
        let c = PhysRange::new(PhysAddr(0x3000), 1).unwrap();
        assert!(a.overlaps(b) && a.contains_range(b));
        assert!(!a.overlaps(c) && !a.contains_range(c));
        assert_eq!(a.len(), 0x2000);
    }

    #[test]
    fn virt_pages() {
        let r = VirtPages::new(VirtAddr(0x1000), 3).unwrap();
        assert_eq!(r.end(), VirtAddr(0x4000));
        assert!(r.contains(VirtAddr(0x3fff)) && !r.contains(VirtAddr(0x4000)));
        assert_eq!(
            VirtPages::new(VirtAddr(0x1001), 1),
            Err(AddrError::Unaligned(0x1001))
        );
        assert_eq!(
            VirtPages::new(VirtAddr(0x1000), 0),
            Err(AddrError::Empty(0x1000))
        );
        assert!(VirtPages::new(VirtAddr(!PAGE_MASK), 2).is_err());
    }
}
