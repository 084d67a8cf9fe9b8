//! Identity answers: API UID, OS UUID, revisions and the call count.
//!
//! teeshm answers `OPTEE_SMC_CALLS_UID` with OP-TEE's API UID: it speaks that API, and the Linux
//! driver and Xen mediator refuse to probe a TEE that reports anything else. It also reports
//! OP-TEE's OS UUID (the OS is meant to be a drop-in OP-TEE), and distinguishes itself only by its
//! OS revision ([`TEESHM_OS_REVISION_MAJOR`].[`TEESHM_OS_REVISION_MINOR`]).

/// API UID word 0 (a0 of `OPTEE_SMC_CALLS_UID`); UID 384fb3e0-e7f8-11e3-af63-0002a5d5c51b.
pub const OPTEE_MSG_UID_0: u32 = 0x384f_b3e0;
/// API UID word 1 (a1).
pub const OPTEE_MSG_UID_1: u32 = 0xe7f8_11e3;
/// API UID word 2 (a2).
pub const OPTEE_MSG_UID_2: u32 = 0xaf63_0002;
/// API UID word 3 (a3).
pub const OPTEE_MSG_UID_3: u32 = 0xa5d5_c51b;
/// The API UID as returned in a0..a3.
pub const OPTEE_MSG_UID: [u32; 4] = [
    OPTEE_MSG_UID_0,
    OPTEE_MSG_UID_1,
    OPTEE_MSG_UID_2,
    OPTEE_MSG_UID_3,
];

/// OS UUID word 0 (a0 of `OPTEE_SMC_CALL_GET_OS_UUID`); UUID 486178e0-e7f8-11e3-bc5e-0002a5d5c51b.
pub const OPTEE_MSG_OS_OPTEE_UUID_0: u32 = 0x4861_78e0;
/// OS UUID word 1 (a1).
pub const OPTEE_MSG_OS_OPTEE_UUID_1: u32 = 0xe7f8_11e3;
/// OS UUID word 2 (a2).
pub const OPTEE_MSG_OS_OPTEE_UUID_2: u32 = 0xbc5e_0002;
/// OS UUID word 3 (a3).
pub const OPTEE_MSG_OS_OPTEE_UUID_3: u32 = 0xa5d5_c51b;
/// The OS UUID as returned in a0..a3.
pub const OPTEE_MSG_OS_OPTEE_UUID: [u32; 4] = [
    OPTEE_MSG_OS_OPTEE_UUID_0,
    OPTEE_MSG_OS_OPTEE_UUID_1,
    OPTEE_MSG_OS_OPTEE_UUID_2,
    OPTEE_MSG_OS_OPTEE_UUID_3,
];

/// Major revision of the OPTEE_MSG API (a0 of `OPTEE_SMC_CALLS_REVISION`); drivers require 2.
pub const OPTEE_MSG_REVISION_MAJOR: u32 = 2;
/// Minor revision of the OPTEE_MSG API (a1 of `OPTEE_SMC_CALLS_REVISION`).
pub const OPTEE_MSG_REVISION_MINOR: u32 = 0;

/// Call count OP-TEE reports without NS-virtualization.
pub const OPTEE_API_CALL_COUNT: u32 = 12;
/// Extra calls OP-TEE counts with NS-virtualization (`VM_CREATED`, `VM_DESTROYED`).
pub const OPTEE_API_CALL_COUNT_VIRT_EXTRA: u32 = 2;
/// What teeshm answers to `OPTEE_SMC_CALLS_COUNT`: 14, the OP-TEE count with virtualization,
/// since teeshm always supports `VM_CREATED` / `VM_DESTROYED`. Nobody is known to check it;
/// it is informational, as in OP-TEE.
pub const TEESHM_API_CALL_COUNT: u32 = OPTEE_API_CALL_COUNT + OPTEE_API_CALL_COUNT_VIRT_EXTRA;

/// teeshm's own OS major revision (a0 of `OPTEE_SMC_CALL_GET_OS_REVISION`). 0 while the ABI
/// beyond OP-TEE compatibility is unstable; Linux only prints it.
pub const TEESHM_OS_REVISION_MAJOR: u32 = 0;
/// teeshm's own OS minor revision (a1 of `OPTEE_SMC_CALL_GET_OS_REVISION`).
pub const TEESHM_OS_REVISION_MINOR: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_words() {
        assert_eq!(
            OPTEE_MSG_UID,
            [0x384fb3e0, 0xe7f811e3, 0xaf630002, 0xa5d5c51b]
        );
        assert_eq!(
            OPTEE_MSG_OS_OPTEE_UUID,
            [0x486178e0, 0xe7f811e3, 0xbc5e0002, 0xa5d5c51b]
        );
        assert_eq!((OPTEE_MSG_REVISION_MAJOR, OPTEE_MSG_REVISION_MINOR), (2, 0));
        assert_eq!(TEESHM_API_CALL_COUNT, 14);
        assert_eq!((TEESHM_OS_REVISION_MAJOR, TEESHM_OS_REVISION_MINOR), (0, 1));
    }
}
