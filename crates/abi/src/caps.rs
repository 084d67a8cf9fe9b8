//! Capabilities exchanged by `OPTEE_SMC_EXCHANGE_CAPABILITIES`.
//!
//! The normal world sends [`NonSecureCaps`] in a1; the secure world answers with
//! [`SecureCaps`] in a1 (plus extra values in a2/a3 for some bits).

use bitflags::bitflags;

bitflags! {
    /// Secure-world capabilities (`OPTEE_SMC_SEC_CAP_*`), returned in a1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SecureCaps: u32 {
        /// A reserved (static, carve-out) SHM pool exists; see `OPTEE_SMC_GET_SHM_CONFIG`.
        const HAVE_RESERVED_SHM = 1 << 0;
        /// Calls may use unregistered SHM. Defined by OP-TEE but never set by it.
        const UNREGISTERED_SHM = 1 << 1;
        /// REGISTER_SHM / UNREGISTER_SHM work: buffers may lie anywhere in NS RAM.
        const DYNAMIC_SHM = 1 << 2;
        /// Built for several normal worlds (guest id in a7). Was wrongly `1 << 2` before 2019.
        const VIRTUALIZATION = 1 << 3;
        /// A memref with `buf_ptr == 0` is a NULL memref.
        const MEMREF_NULL = 1 << 4;
        /// Asynchronous notifications; a2 = highest notification value.
        const ASYNC_NOTIF = 1 << 5;
        /// `CALL_WITH_RPC_ARG` / `CALL_WITH_REGD_ARG`; a3 bits 7:0 = RPC arg param count.
        const RPC_ARG = 1 << 6;
        /// The secure world can probe for an RPMB device through RPC.
        const RPMB_PROBE = 1 << 7;
        /// A static protected-memory range exists; see `OPTEE_SMC_GET_PROTMEM_CONFIG`.
        const PROTMEM = 1 << 8;
        /// Protected memory can be lent dynamically (`LEND_PROTMEM` / `RECLAIM_PROTMEM`).
        const DYNAMIC_PROTMEM = 1 << 9;
    }
}

bitflags! {
    /// Normal-world capabilities (`OPTEE_SMC_NSEC_CAP_*`), sent in a1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NonSecureCaps: u32 {
        /// The normal world is uniprocessor (affects shareability of SHM mappings).
        const UNIPROCESSOR = 1 << 0;
    }
}

/// `OPTEE_SMC_NSEC_CAP_UNIPROCESSOR`.
pub const OPTEE_SMC_NSEC_CAP_UNIPROCESSOR: u32 = NonSecureCaps::UNIPROCESSOR.bits();

/// Number of params the secure world reserves in an RPC `optee_msg_arg`
/// (`THREAD_RPC_MAX_NUM_PARAMS`); RPC arg size is therefore 32 + 4 * 32 = 160 bytes.
pub const THREAD_RPC_MAX_NUM_PARAMS: u32 = 4;

/// Mask of a3 in the `EXCHANGE_CAPABILITIES` reply when [`SecureCaps::RPC_ARG`] is set:
/// bits 7:0 carry the RPC arg param count the normal world must allocate for.
pub const RPC_ARG_NUM_PARAMS_MASK: u32 = 0xFF;

/// Builds a3 of the `EXCHANGE_CAPABILITIES` reply for [`SecureCaps::RPC_ARG`].
pub const fn rpc_arg_a3(num_params: u8) -> u32 {
    num_params as u32
}

/// Reads the RPC arg param count from a3 of the `EXCHANGE_CAPABILITIES` reply.
pub const fn rpc_arg_num_params(a3: u32) -> u32 {
    a3 & RPC_ARG_NUM_PARAMS_MASK
}

/// Why normal-world capabilities were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// a1 had bits this TEE does not know; OP-TEE answers `OPTEE_SMC_RETURN_ENOTAVAIL`.
    #[error("unknown normal-world capability bits {unknown:#x} in a1 = {a1:#x}")]
    UnknownNonSecureCaps {
        /// The whole a1 value.
        a1: u32,
        /// The bits not defined in [`NonSecureCaps`].
        unknown: u32,
    },
}

/// Decodes a1 of `EXCHANGE_CAPABILITIES`, refusing unknown bits so that a newer normal world
/// never believes a feature was agreed to.
pub fn parse_nonsecure_caps(a1: u32) -> Result<NonSecureCaps, CapsError> {
    NonSecureCaps::from_bits(a1).ok_or(CapsError::UnknownNonSecureCaps {
        a1,
        unknown: a1 & !NonSecureCaps::all().bits(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_cap_bits() {
        let expect = [
            (SecureCaps::HAVE_RESERVED_SHM, 0),
            (SecureCaps::UNREGISTERED_SHM, 1),
            (SecureCaps::DYNAMIC_SHM, 2),
            (SecureCaps::VIRTUALIZATION, 3),
            (SecureCaps::MEMREF_NULL, 4),
            (SecureCaps::ASYNC_NOTIF, 5),
            (SecureCaps::RPC_ARG, 6),
            (SecureCaps::RPMB_PROBE, 7),
            (SecureCaps::PROTMEM, 8),
            (SecureCaps::DYNAMIC_PROTMEM, 9),
        ];
        for (flag, bit) in expect {
            assert_eq!(flag.bits(), 1 << bit, "{flag:?}");
        }
        assert_eq!(SecureCaps::all().bits(), 0x3FF);
    }

    #[test]
    fn nonsecure_caps_parse() {
        assert_eq!(parse_nonsecure_caps(0), Ok(NonSecureCaps::empty()));
        assert_eq!(parse_nonsecure_caps(1), Ok(NonSecureCaps::UNIPROCESSOR));
        assert_eq!(OPTEE_SMC_NSEC_CAP_UNIPROCESSOR, 1);
        assert_eq!(
            parse_nonsecure_caps(0x8000_0003),
            Err(CapsError::UnknownNonSecureCaps {
                a1: 0x8000_0003,
                unknown: 0x8000_0002
            })
        );
    }

    #[test]
    fn rpc_arg_a3_round_trip() {
        assert_eq!(rpc_arg_num_params(rpc_arg_a3(4)), THREAD_RPC_MAX_NUM_PARAMS);
        assert_eq!(rpc_arg_num_params(0xFFFF_FF04), 4);
    }
}
