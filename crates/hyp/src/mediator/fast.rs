//! Fast calls of a guest: identity, capabilities, thread count and the SHM cache, each
//! forwarded, filtered or refused (deny by default).

use super::{Ctx, LOW32, reg_pair, split_pair};
use crate::memory::MachineMemory;
use teeshm_abi::caps::{NonSecureCaps, SecureCaps};
use teeshm_abi::smc::*;

impl<T: SmcConduit, M: MachineMemory> Ctx<'_, T, M> {
    pub(super) fn fast_call(&mut self, func: u32, regs: &SmcRegs) -> SmcRegs {
        match func {
            OPTEE_SMC_CALLS_UID
            | OPTEE_SMC_CALLS_REVISION
            | OPTEE_SMC_CALLS_COUNT
            | OPTEE_SMC_CALL_GET_OS_UUID
            | OPTEE_SMC_CALL_GET_OS_REVISION => {
                // No arguments, no addresses in the answer: a0..a3 pass through.
                let out = self.forward(func, &[]);
                SmcRegs::call(out.a0(), &[out.a[1], out.a[2], out.a[3]])
            }
            OPTEE_SMC_GET_THREAD_COUNT => {
                let out = self.forward(func, &[]);
                if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
                    return SmcRegs::ret(out.a0());
                }
                let threads = out.a[1].min(u64::from(self.limits.max_calls));
                SmcRegs::call(OPTEE_SMC_RETURN_OK, &[threads])
            }
            OPTEE_SMC_EXCHANGE_CAPABILITIES => self.exchange_capabilities(regs.a[1]),
            // No static carve-out for guests: it would be shared by all of them.
            OPTEE_SMC_GET_SHM_CONFIG => SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL),
            OPTEE_SMC_ENABLE_SHM_CACHE => SmcRegs::ret(self.forward(func, &[]).a0()),
            OPTEE_SMC_DISABLE_SHM_CACHE => self.disable_shm_cache(),
            // Only the mediator announces and ends guests.
            OPTEE_SMC_VM_CREATED | OPTEE_SMC_VM_DESTROYED => {
                SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL)
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }

    fn exchange_capabilities(&mut self, a1: u64) -> SmcRegs {
        // Like Xen: only UNIPROCESSOR of the guest's caps goes to the TEE.
        let ns = a1 & u64::from(NonSecureCaps::UNIPROCESSOR.bits());
        let out = self.forward(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[ns]);
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return SmcRegs::ret(out.a0());
        }
        let caps = SecureCaps::from_bits_truncate((out.a[1] & LOW32) as u32)
            & (SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL);
        if !caps.contains(SecureCaps::DYNAMIC_SHM) {
            return SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
        SmcRegs::call(OPTEE_SMC_RETURN_OK, &[u64::from(caps.bits())])
    }

    /// Forwards `DISABLE_SHM_CACHE`; the cookie handed back names an RPC arg buffer the TEE has
    /// let go, whose shadow and pin go before the guest sees the cookie (Xen, with the right
    /// function id: its `1c3ed9c908` bug sent ENABLE here).
    fn disable_shm_cache(&mut self) -> SmcRegs {
        let out = self.forward(OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
        if out.a[0] != u64::from(OPTEE_SMC_RETURN_OK) {
            return SmcRegs::ret(out.a0());
        }
        let cookie = reg_pair(out.a[1], out.a[2]);
        if let Some(arg) = self.guest.rpc_args.remove(&cookie) {
            self.guest.release_rpc_arg(self.mem, arg);
        }
        let (hi, lo) = split_pair(cookie);
        SmcRegs::call(OPTEE_SMC_RETURN_OK, &[hi, lo])
    }
}
