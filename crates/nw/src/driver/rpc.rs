//! The driver's answers to the TEE's RPCs (Linux `rpc.c`): RPC arg buffers, `SHM_ALLOC` and
//! `SHM_FREE` served from guest pages or the static pool.

use teeshm_abi::gp::{
    TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_NOT_IMPLEMENTED, TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS,
};
use teeshm_abi::msg::{
    MSG_ARG_HEADER_SIZE, MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, Tmem, arg_size_checked,
    split_arg_mut,
};
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE, RpcShmType};
use teeshm_abi::smc::*;
use zerocopy::{FromBytes, IntoBytes};

use crate::list;
use crate::ram::{GuestBuffer, GuestRam};

use super::{Driver, Held, MAX_RPC_ARG_BYTES, RpcBuffer, RpcUse};

impl<C: SmcConduit, R: GuestRam> Driver<C, R> {
    /// The registers that resume the call after serving the RPC in `out` (Linux
    /// `optee_handle_rpc`): a1..a3 echo the request (a3 is the thread), ALLOC adds the buffer
    /// in a1:a2 and its cookie in a4:a5. Every RPC is answered, even one the driver cannot
    /// serve, so a TEE thread is never left suspended.
    pub(super) fn answer_rpc(&mut self, out: &SmcRegs, appended: Option<(u64, u64)>) -> SmcRegs {
        let [_, a1, a2, a3, ..] = out.a;
        let mut answer = SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[a1, a2, a3]);
        match optee_smc_return_get_rpc_func(out.a0()) {
            OPTEE_SMC_RPC_FUNC_ALLOC => {
                let (pa, cookie) = self.rpc_alloc(a1).unwrap_or((0, 0));
                let (pa_hi, pa_lo) = split_pair(pa);
                let (c_hi, c_lo) = split_pair(cookie);
                answer = SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[pa_hi, pa_lo, a3, c_hi, c_lo],
                );
            }
            OPTEE_SMC_RPC_FUNC_FREE => {
                self.release_rpc_buffer(reg_pair(a1, a2), true);
            }
            OPTEE_SMC_RPC_FUNC_CMD => {
                let cookie = reg_pair(a1, a2);
                let at = match (cookie, appended) {
                    (0, Some(at)) => Some(at),
                    _ => self
                        .rpc_buffers
                        .get(&cookie)
                        .and_then(|b| match b.used_for {
                            RpcUse::Arg { addr, size } => Some((addr, size)),
                            RpcUse::Shm(_) => None,
                        }),
                };
                if let Some((addr, size)) = at {
                    self.serve_rpc_cmd(addr, size);
                }
            }
            // FOREIGN_INTR: the interrupt was taken in the normal world; just resume. Unknown
            // functions are resumed too, as Linux does.
            _ => {}
        }
        answer
    }

    /// `RPC_FUNC_ALLOC` of `size` bytes for RPC args: one contiguous private buffer (Linux
    /// `tee_shm_alloc_priv_buf`), at most [`MAX_RPC_ARG_BYTES`]. Returns its address and
    /// cookie.
    fn rpc_alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        if size == 0 || size > MAX_RPC_ARG_BYTES {
            return None;
        }
        let (addr, held) = self.alloc_private(size).ok()?;
        let cookie = self.new_cookie();
        self.rpc_buffers.insert(
            cookie,
            RpcBuffer {
                used_for: RpcUse::Arg { addr, size },
                held,
            },
        );
        Some((addr, cookie))
    }

    /// Frees the RPC buffer `cookie` if it is an RPC arg buffer (`arg`, for `RPC_FUNC_FREE`) or
    /// a payload (for `SHM_FREE`): a confused TEE cannot free one kind with the other's call.
    fn release_rpc_buffer(&mut self, cookie: u64, arg: bool) -> bool {
        let matches = self
            .rpc_buffers
            .get(&cookie)
            .is_some_and(|b| matches!(b.used_for, RpcUse::Arg { .. }) == arg);
        if !matches {
            return false;
        }
        if let Some(b) = self.rpc_buffers.remove(&cookie) {
            self.free_held(b.held);
        }
        true
    }

    /// Serves the RPC command whose arg lies at `addr` (at most `room` bytes): SHM_ALLOC and
    /// SHM_FREE; anything else gets `TEE_ERROR_NOT_IMPLEMENTED`.
    fn serve_rpc_cmd(&mut self, addr: u64, room: u64) {
        let mut head = [0u8; MSG_ARG_HEADER_SIZE];
        if self.ram.read(addr, &mut head).is_err() {
            return;
        }
        let Ok(mut header) = MsgArgHeader::read_from_bytes(&head) else {
            return;
        };
        let size = match arg_size_checked(header.num_params.get()) {
            Ok(size) if size as u64 <= room => size,
            _ => {
                header.ret.set(TEE_ERROR_BAD_PARAMETERS);
                let _ = self.ram.write(addr, header.as_bytes());
                return;
            }
        };
        let mut raw = alloc::vec![0u8; size];
        if self.ram.read(addr, &mut raw).is_err() {
            return;
        }
        let Ok((header, params)) = split_arg_mut(&mut raw) else {
            return;
        };
        let ret = match header.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => self.rpc_shm_alloc(params),
            OPTEE_RPC_CMD_SHM_FREE => self.rpc_shm_free(params),
            _ => TEE_ERROR_NOT_IMPLEMENTED,
        };
        header.ret.set(ret);
        let _ = self.ram.write(addr, &raw);
    }

    /// `OPTEE_RPC_CMD_SHM_ALLOC` (any of APPL, KERNEL, GLOBAL: this model has no supplicant,
    /// the driver serves all three): a `TMEM_OUTPUT | NONCONTIG` page list of fresh pages, or a
    /// contiguous `TMEM_OUTPUT` in the static pool when there is one.
    fn rpc_shm_alloc(&mut self, params: &mut [MsgParam]) -> u32 {
        let [param] = params else {
            return TEE_ERROR_BAD_PARAMETERS;
        };
        if param.attr() != OPTEE_MSG_ATTR_TYPE_VALUE_INPUT {
            return TEE_ERROR_BAD_PARAMETERS;
        }
        let v = param.value();
        let (Ok(shm_type), size) = (RpcShmType::try_from(v.a.get()), v.b.get()) else {
            return TEE_ERROR_BAD_PARAMETERS;
        };
        if size == 0 {
            return TEE_ERROR_BAD_PARAMETERS;
        }
        if size > self.max_rpc_shm_bytes {
            // Refused before anything is allocated, whatever the size.
            return TEE_ERROR_OUT_OF_MEMORY;
        }
        // The previous answer's list has been read by now (Linux frees it here too).
        self.free_call_lists();
        let cookie = self.new_cookie();
        let used_for = RpcUse::Shm(shm_type);
        if let Some(pool) = self.pool.as_mut() {
            let pages = GuestBuffer::pages_for(0, size);
            let Some(pa) = pool.alloc(pages) else {
                return TEE_ERROR_OUT_OF_MEMORY;
            };
            *param =
                MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, Tmem::new(pa, size, cookie));
            let held = Held::Pool(pa);
            self.rpc_buffers
                .insert(cookie, RpcBuffer { used_for, held });
            return TEE_SUCCESS;
        }
        let Ok(buf) = GuestBuffer::alloc(&mut self.ram, size, 0) else {
            return TEE_ERROR_OUT_OF_MEMORY;
        };
        let list = match list::build(&mut self.ram, &buf) {
            Ok(list) => list,
            Err(_) => {
                buf.free(&mut self.ram);
                return TEE_ERROR_OUT_OF_MEMORY;
            }
        };
        *param = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list.buf_ptr, size, cookie),
        );
        self.call_lists = list.list_pages;
        self.rpc_buffers.insert(
            cookie,
            RpcBuffer {
                used_for,
                held: Held::Pages(buf.pages),
            },
        );
        TEE_SUCCESS
    }

    /// `OPTEE_RPC_CMD_SHM_FREE`: value `b` is the cookie of an SHM_ALLOC buffer.
    fn rpc_shm_free(&mut self, params: &mut [MsgParam]) -> u32 {
        let [param] = params else {
            return TEE_ERROR_BAD_PARAMETERS;
        };
        if param.attr() != OPTEE_MSG_ATTR_TYPE_VALUE_INPUT {
            return TEE_ERROR_BAD_PARAMETERS;
        }
        let cookie = param.value().b.get();
        if self.release_rpc_buffer(cookie, false) {
            TEE_SUCCESS
        } else {
            TEE_ERROR_BAD_PARAMETERS
        }
    }

    pub(super) fn free_call_lists(&mut self) {
        let lists = core::mem::take(&mut self.call_lists);
        if !lists.is_empty() {
            self.ram.free_pages(&lists);
        }
    }
}
