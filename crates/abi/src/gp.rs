//! GlobalPlatform result codes and origins, as written into `optee_msg_arg.ret` and
//! `optee_msg_arg.ret_origin` (TEE Client API values, shared with OP-TEE).

/// Success.
pub const TEE_SUCCESS: u32 = 0;
/// Generic failure.
pub const TEE_ERROR_GENERIC: u32 = 0xFFFF_0000;
/// Access denied.
pub const TEE_ERROR_ACCESS_DENIED: u32 = 0xFFFF_0001;
/// Operation cancelled.
pub const TEE_ERROR_CANCEL: u32 = 0xFFFF_0002;
/// Concurrent accesses conflicted (teeshm: the buffer was unregistered while a call used it).
pub const TEE_ERROR_ACCESS_CONFLICT: u32 = 0xFFFF_0003;
/// Bad format of input.
pub const TEE_ERROR_BAD_FORMAT: u32 = 0xFFFF_0005;
/// Bad parameters: wrong param count/type, bad page list, bad size.
pub const TEE_ERROR_BAD_PARAMETERS: u32 = 0xFFFF_0006;
/// Operation not valid in the current state (e.g. a cookie already registered).
pub const TEE_ERROR_BAD_STATE: u32 = 0xFFFF_0007;
/// Item not found (e.g. unknown SHM cookie).
pub const TEE_ERROR_ITEM_NOT_FOUND: u32 = 0xFFFF_0008;
/// Not implemented.
pub const TEE_ERROR_NOT_IMPLEMENTED: u32 = 0xFFFF_0009;
/// Not supported by this configuration.
pub const TEE_ERROR_NOT_SUPPORTED: u32 = 0xFFFF_000A;
/// Out of secure memory (or over quota).
pub const TEE_ERROR_OUT_OF_MEMORY: u32 = 0xFFFF_000C;
/// Busy; retry later (e.g. SHM still in use).
pub const TEE_ERROR_BUSY: u32 = 0xFFFF_000D;
/// Communication with the normal world failed.
pub const TEE_ERROR_COMMUNICATION: u32 = 0xFFFF_000E;
/// Security violation (e.g. a page outside the caller's NS memory).
pub const TEE_ERROR_SECURITY: u32 = 0xFFFF_000F;
/// Output buffer too short.
pub const TEE_ERROR_SHORT_BUFFER: u32 = 0xFFFF_0010;
/// Arithmetic overflow.
pub const TEE_ERROR_OVERFLOW: u32 = 0xFFFF_300F;
/// The target TA is dead.
pub const TEE_ERROR_TARGET_DEAD: u32 = 0xFFFF_3024;

/// `ret_origin`: the client API.
pub const TEE_ORIGIN_API: u32 = 1;
/// `ret_origin`: the communication stack (driver, message transport).
pub const TEE_ORIGIN_COMMS: u32 = 2;
/// `ret_origin`: the TEE core.
pub const TEE_ORIGIN_TEE: u32 = 3;
/// `ret_origin`: the trusted application.
pub const TEE_ORIGIN_TRUSTED_APP: u32 = 4;
