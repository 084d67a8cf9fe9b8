//! The guest (normal-world VM) identity carried in `a7` of every SMC.

use core::fmt;

use crate::smc::HYP_CLNT_ID;

/// Id of the normal world on whose behalf a call is made, taken from `a7` (the hypervisor
/// client id register).
///
/// With a hypervisor, the hypervisor writes the calling guest's id into `a7` of every SMC it
/// forwards; 0 ([`GuestId::HYPERVISOR`]) is the hypervisor itself, or the only normal world when
/// there is no hypervisor. Every object the TEE creates is owned by exactly one `GuestId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestId(pub u16);

impl GuestId {
    /// The hypervisor, or a non-virtualized normal world ([`HYP_CLNT_ID`]).
    pub const HYPERVISOR: GuestId = GuestId(HYP_CLNT_ID);

    /// Reads the guest id from `a7`.
    ///
    /// OP-TEE truncates `a7` to 16 bits, so 0x1_0001 would act as guest 1. teeshm refuses any
    /// value above `u16::MAX` instead: a hypervisor that sends one is confused, and aliasing it to
    /// another guest would break isolation.
    pub fn from_client_id(a7: u64) -> Result<GuestId, GuestIdError> {
        u16::try_from(a7)
            .map(GuestId)
            .map_err(|_| GuestIdError::TooLarge { a7 })
    }

    /// True for the hypervisor / non-virtualized normal world.
    pub const fn is_hypervisor(self) -> bool {
        self.0 == HYP_CLNT_ID
    }

    /// The id as written into `a7` (or `a1` of `VM_CREATED` / `VM_DESTROYED`).
    pub const fn raw(self) -> u16 {
        self.0
    }
}

impl fmt::Display for GuestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest {}", self.0)
    }
}

impl From<GuestId> for u16 {
    fn from(g: GuestId) -> u16 {
        g.0
    }
}

impl From<u16> for GuestId {
    fn from(v: u16) -> GuestId {
        GuestId(v)
    }
}

/// Why a client id register could not name a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestIdError {
    /// `a7` does not fit the 16-bit guest id.
    #[error("client id {a7:#x} in a7 does not fit a 16-bit guest id")]
    TooLarge {
        /// The offending register value.
        a7: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_client_id_accepts_u16_refuses_larger() {
        assert_eq!(GuestId::from_client_id(0), Ok(GuestId::HYPERVISOR));
        assert!(GuestId::HYPERVISOR.is_hypervisor());
        assert_eq!(GuestId::from_client_id(7), Ok(GuestId(7)));
        assert!(!GuestId(7).is_hypervisor());
        assert_eq!(GuestId::from_client_id(0xFFFF), Ok(GuestId(u16::MAX)));
        assert_eq!(
            GuestId::from_client_id(0x1_0001),
            Err(GuestIdError::TooLarge { a7: 0x1_0001 })
        );
        assert_eq!(
            GuestId::from_client_id(u64::MAX),
            Err(GuestIdError::TooLarge { a7: u64::MAX })
        );
    }

    #[test]
    fn display_and_order() {
        assert_eq!(GuestId(3).to_string(), "guest 3");
        assert!(GuestId(1) < GuestId(2));
        assert_eq!(u16::from(GuestId(9)), 9);
        assert_eq!(GuestId::from(9u16).raw(), 9);
        assert_eq!(
            GuestIdError::TooLarge { a7: 0x10000 }.to_string(),
            "client id 0x10000 in a7 does not fit a 16-bit guest id"
        );
    }
}
