//! RPC commands the secure world sends to the normal world (`optee_rpc_cmd.h`), carried in
//! `optee_msg_arg.cmd` of an RPC arg after `OPTEE_SMC_RETURN_RPC_CMD`.

/// Load a TA.
pub const OPTEE_RPC_CMD_LOAD_TA: u32 = 0;
/// RPMB access (legacy, through the supplicant).
pub const OPTEE_RPC_CMD_RPMB: u32 = 1;
/// REE file-system access.
pub const OPTEE_RPC_CMD_FS: u32 = 2;
/// Get REE time.
pub const OPTEE_RPC_CMD_GET_TIME: u32 = 3;
/// Wait-queue / notification sleep and wake.
pub const OPTEE_RPC_CMD_NOTIFICATION: u32 = 4;
/// Suspend the thread for a while.
pub const OPTEE_RPC_CMD_SUSPEND: u32 = 5;
/// Allocate SHM: `value[0].a` = [`RpcShmType`], `.b` = size, `.c` = alignment; out `memref[0]`.
pub const OPTEE_RPC_CMD_SHM_ALLOC: u32 = 6;
/// Free SHM: `value[0].a` = [`RpcShmType`], `.b` = cookie.
pub const OPTEE_RPC_CMD_SHM_FREE: u32 = 7;
/// Reserved (was SQL FS).
pub const OPTEE_RPC_CMD_SQL_FS_RESERVED: u32 = 8;
/// gprof profiling data.
pub const OPTEE_RPC_CMD_GPROF: u32 = 9;
/// Socket I/O.
pub const OPTEE_RPC_CMD_SOCKET: u32 = 10;
/// ftrace data.
pub const OPTEE_RPC_CMD_FTRACE: u32 = 11;
/// Supplicant plugin command.
pub const OPTEE_RPC_CMD_SUPP_PLUGIN: u32 = 12;
/// Benchmark buffer registration.
pub const OPTEE_RPC_CMD_BENCH_REG: u32 = 20;
/// I2C transfer.
pub const OPTEE_RPC_CMD_I2C_TRANSFER: u32 = 21;
/// Reset RPMB device probing.
pub const OPTEE_RPC_CMD_RPMB_PROBE_RESET: u32 = 22;
/// Probe the next RPMB device.
pub const OPTEE_RPC_CMD_RPMB_PROBE_NEXT: u32 = 23;
/// RPMB frames.
pub const OPTEE_RPC_CMD_RPMB_FRAMES: u32 = 24;

/// SHM shareable with normal-world user space (the supplicant).
pub const OPTEE_RPC_SHM_TYPE_APPL: u64 = 0;
/// SHM private to the normal-world kernel.
pub const OPTEE_RPC_SHM_TYPE_KERNEL: u64 = 1;
/// SHM in the kernel and exported to user space.
pub const OPTEE_RPC_SHM_TYPE_GLOBAL: u64 = 2;

/// Type of memory requested by `OPTEE_RPC_CMD_SHM_ALLOC` / released by `SHM_FREE`
/// (`value[0].a`), decoded so the normal-world side can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RpcShmType {
    /// [`OPTEE_RPC_SHM_TYPE_APPL`].
    Appl = 0,
    /// [`OPTEE_RPC_SHM_TYPE_KERNEL`].
    Kernel = 1,
    /// [`OPTEE_RPC_SHM_TYPE_GLOBAL`].
    Global = 2,
}

impl RpcShmType {
    /// The wire value for `value[0].a`.
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

/// An RPC SHM type value that is not one of [`RpcShmType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcShmTypeError {
    /// The offending `value[0].a`.
    #[error("unknown RPC SHM type {value:#x}")]
    Unknown {
        /// The value received.
        value: u64,
    },
}

impl TryFrom<u64> for RpcShmType {
    type Error = RpcShmTypeError;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        match value {
            OPTEE_RPC_SHM_TYPE_APPL => Ok(Self::Appl),
            OPTEE_RPC_SHM_TYPE_KERNEL => Ok(Self::Kernel),
            OPTEE_RPC_SHM_TYPE_GLOBAL => Ok(Self::Global),
            value => Err(RpcShmTypeError::Unknown { value }),
        }
    }
}

impl From<RpcShmType> for u64 {
    fn from(t: RpcShmType) -> u64 {
        t.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_values() {
        let cmds = [
            OPTEE_RPC_CMD_LOAD_TA,
            OPTEE_RPC_CMD_RPMB,
            OPTEE_RPC_CMD_FS,
            OPTEE_RPC_CMD_GET_TIME,
            OPTEE_RPC_CMD_NOTIFICATION,
            OPTEE_RPC_CMD_SUSPEND,
            OPTEE_RPC_CMD_SHM_ALLOC,
            OPTEE_RPC_CMD_SHM_FREE,
            OPTEE_RPC_CMD_SQL_FS_RESERVED,
            OPTEE_RPC_CMD_GPROF,
            OPTEE_RPC_CMD_SOCKET,
            OPTEE_RPC_CMD_FTRACE,
            OPTEE_RPC_CMD_SUPP_PLUGIN,
        ];
        for (i, c) in cmds.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert_eq!(
            [
                OPTEE_RPC_CMD_BENCH_REG,
                OPTEE_RPC_CMD_I2C_TRANSFER,
                OPTEE_RPC_CMD_RPMB_PROBE_RESET,
                OPTEE_RPC_CMD_RPMB_PROBE_NEXT,
                OPTEE_RPC_CMD_RPMB_FRAMES
            ],
            [20, 21, 22, 23, 24]
        );
    }

    #[test]
    fn shm_type_round_trip() {
        for t in [RpcShmType::Appl, RpcShmType::Kernel, RpcShmType::Global] {
            assert_eq!(RpcShmType::try_from(u64::from(t)), Ok(t));
        }
        assert_eq!(RpcShmType::try_from(0).map(u64::from), Ok(0));
        assert_eq!(RpcShmType::try_from(2).map(u64::from), Ok(2));
        assert_eq!(
            RpcShmType::try_from(3),
            Err(RpcShmTypeError::Unknown { value: 3 })
        );
        assert_eq!(
            RpcShmType::try_from(u64::MAX),
            Err(RpcShmTypeError::Unknown { value: u64::MAX })
        );
    }
}
