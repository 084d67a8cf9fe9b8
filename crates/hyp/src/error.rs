//! Why the mediator refused something, and the GlobalPlatform code a guest then sees.

use crate::config::{HypCapacityError, Resource};
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::page_list::PageListError;

/// Why the mediator refused a request of the platform or of a guest.
///
/// Platform-facing calls ([`crate::Stage2::map`], [`crate::Mediator::create_guest`], ...) return
/// it; for a guest's message it becomes the `ret` of its `optee_msg_arg` (see
/// [`HypError::gp_code`]), with origin `TEE_ORIGIN_COMMS`, and the TEE is never reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypError {
    /// An address that must be 4 KiB aligned is not.
    #[error("address {addr:#x} is not 4 KiB aligned")]
    Unaligned {
        /// The address.
        addr: u64,
    },
    /// The IPA page is already mapped (remapping is refused).
    #[error("IPA page {ipa:#x} is already mapped")]
    AlreadyMapped {
        /// The IPA page.
        ipa: u64,
    },
    /// An address the guest named is not RAM of that guest (outside its stage 2: another
    /// guest's range, a hole, a device, or garbage).
    #[error("IPA {ipa:#x} is not RAM of the guest")]
    NotGuestRam {
        /// The address.
        ipa: u64,
    },
    /// The page is pinned for the TEE and cannot be unmapped now.
    #[error("IPA page {ipa:#x} is pinned for the TEE")]
    Pinned {
        /// The IPA page.
        ipa: u64,
    },
    /// The id cannot name a guest (0 is the hypervisor's own client id).
    #[error("{vm} cannot be a guest")]
    ReservedGuestId {
        /// The id.
        vm: GuestId,
    },
    /// A guest with this id exists already.
    #[error("{vm} exists already")]
    GuestExists {
        /// The id.
        vm: GuestId,
    },
    /// No guest has this id.
    #[error("{vm} does not exist")]
    UnknownGuest {
        /// The id.
        vm: GuestId,
    },
    /// The TEE refused a call the mediator made on its own behalf.
    #[error("the TEE answered {code:#x} to {call}")]
    TeeRefused {
        /// Which call.
        call: &'static str,
        /// The TEE's `a0`.
        code: u32,
    },
    /// A page list is malformed (zero size, bad offset, unaligned entry, ...).
    #[error("page list: {0}")]
    PageList(PageListError),
    /// A parameter is malformed; `index` counts from 0 in the message.
    #[error("parameter {index}: {problem}")]
    BadParam {
        /// Which parameter.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The guest already uses this cookie for a buffer of the same kind.
    #[error("cookie {cookie:#x} is already in use")]
    DuplicateCookie {
        /// The cookie.
        cookie: u64,
    },
    /// The guest holds [`crate::HypLimits::max_buffers`] buffers already.
    #[error("the guest holds {limit} buffers already")]
    TooManyBuffers {
        /// The limit.
        limit: u32,
    },
    /// Pinning would pass [`crate::HypLimits::max_pinned_pages`].
    #[error("{wanted} pinned pages would pass the limit of {limit}")]
    TooManyPins {
        /// What the total would have become.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// One buffer spans more than [`crate::HypLimits::max_buffer_pages`] pages.
    #[error("a buffer of {pages} pages passes the limit of {limit}")]
    BufferTooLarge {
        /// Pages the buffer spans.
        pages: u64,
        /// The limit.
        limit: u64,
    },
    /// The hypervisor has no page left for a shadow.
    #[error("no hypervisor page for a shadow")]
    NoShadowPage,
    /// The guest holds [`crate::HypLimits::max_shadow_pages`] shadow pages already.
    #[error("the guest holds {limit} shadow pages already")]
    TooManyShadowPages {
        /// The limit.
        limit: u64,
    },
    /// A new guest's share of `resource` cannot be reserved: the guests admitted already hold
    /// every share the mediator has (or the platform shrank the pool below their shares).
    #[error(
        "no share of {resource:?} is left for a new guest: {needed} needed, {available} available"
    )]
    NoShare {
        /// The resource.
        resource: Resource,
        /// What the guests' shares would add up to with the new one.
        needed: u64,
        /// What the mediator has.
        available: u64,
    },
    /// The configuration promises guests more than the mediator has ([`crate::Mediator::new`]).
    #[error("configuration: {0}")]
    Capacity(HypCapacityError),
    /// The hypervisor heap refused an allocation.
    #[error("hypervisor heap exhausted")]
    OutOfMemory,
}

impl HypError {
    /// The GlobalPlatform code a guest's message gets for this refusal: `OUT_OF_MEMORY` for a
    /// limit or an exhausted resource (as Xen and the core), `BAD_PARAMETERS` for bad input.
    pub fn gp_code(&self) -> u32 {
        match self {
            Self::TooManyBuffers { .. }
            | Self::TooManyPins { .. }
            | Self::BufferTooLarge { .. }
            | Self::NoShadowPage
            | Self::TooManyShadowPages { .. }
            | Self::NoShare { .. }
            | Self::Capacity(_)
            | Self::OutOfMemory => gp::TEE_ERROR_OUT_OF_MEMORY,
            Self::TeeRefused { .. } | Self::UnknownGuest { .. } | Self::GuestExists { .. } => {
                gp::TEE_ERROR_GENERIC
            }
            Self::Unaligned { .. }
            | Self::AlreadyMapped { .. }
            | Self::NotGuestRam { .. }
            | Self::Pinned { .. }
            | Self::ReservedGuestId { .. }
            | Self::PageList(_)
            | Self::BadParam { .. }
            | Self::DuplicateCookie { .. } => gp::TEE_ERROR_BAD_PARAMETERS,
        }
    }

    /// Folds a page-list decoding error whose reads went through guest memory into a plain
    /// refusal: a read error is already a [`HypError`], the size limit and allocation failures
    /// become their own variants, the layout errors are kept as they are.
    pub(crate) fn from_page_list(e: PageListError<HypError>) -> Self {
        match e {
            PageListError::Read { error, .. } => error,
            PageListError::TooManyPages { count, max } => Self::BufferTooLarge {
                pages: count,
                limit: max,
            },
            PageListError::OutOfMemory { .. } => Self::OutOfMemory,
            PageListError::ZeroSize => Self::PageList(PageListError::ZeroSize),
            PageListError::OffsetTooLarge { offset } => {
                Self::PageList(PageListError::OffsetTooLarge { offset })
            }
            PageListError::SizeOverflow { size, offset } => {
                Self::PageList(PageListError::SizeOverflow { size, offset })
            }
            PageListError::ListPageUnaligned { pa } => {
                Self::PageList(PageListError::ListPageUnaligned { pa })
            }
            PageListError::NextPointerUnaligned { list_page, next } => {
                Self::PageList(PageListError::NextPointerUnaligned { list_page, next })
            }
            PageListError::EntryUnaligned { index, value } => {
                Self::PageList(PageListError::EntryUnaligned { index, value })
            }
            PageListError::Refused { index, value } => {
                Self::PageList(PageListError::Refused { index, value })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            HypError::NotGuestRam { ipa: 1 }.gp_code(),
            gp::TEE_ERROR_BAD_PARAMETERS
        );
        assert_eq!(
            HypError::TooManyPins {
                wanted: 2,
                limit: 1
            }
            .gp_code(),
            gp::TEE_ERROR_OUT_OF_MEMORY
        );
        assert_eq!(
            HypError::from_page_list(PageListError::TooManyPages { count: 9, max: 8 }),
            HypError::BufferTooLarge { pages: 9, limit: 8 }
        );
        assert_eq!(
            HypError::from_page_list(PageListError::Read {
                pa: 0x1000,
                len: 8,
                error: HypError::NotGuestRam { ipa: 0x1000 }
            }),
            HypError::NotGuestRam { ipa: 0x1000 }
        );
        assert_eq!(
            HypError::from_page_list(PageListError::ZeroSize).gp_code(),
            gp::TEE_ERROR_BAD_PARAMETERS
        );
        assert_eq!(
            HypError::from_page_list(PageListError::OutOfMemory { pages: 3 }).gp_code(),
            gp::TEE_ERROR_OUT_OF_MEMORY
        );
    }
}
