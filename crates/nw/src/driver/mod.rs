//! The driver: probe, registration, calls with their RPCs, and shutdown — the SMC half of
//! Linux's `drivers/tee/optee` (`smc_abi.c`, `call.c`, `rpc.c`), over [`SmcConduit`] and
//! [`GuestRam`].
//!
//! Where Linux has a choice, the driver takes the one Linux takes, so that a TEE tested against
//! it meets what it will meet in the field: args at offset 0 of their own page without
//! `RPC_ARG` (what the Xen mediator requires), the RPC arg appended in the same page with it,
//! the SHM cache enabled only without `RPC_ARG`, REGISTER_SHM with `TMEM_OUTPUT | NONCONTIG`,
//! page lists of RPC buffers kept until the next SHM_ALLOC or the end of the call.
//!
//! This file holds the driver and its calls; `error` what a call returns when it fails or
//! ends, `rpc` how the driver answers the TEE's RPCs.

mod error;
mod rpc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use teeshm_abi::caps::{SecureCaps, rpc_arg_num_params};
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_CMD_REGISTER_SHM, OPTEE_MSG_CMD_UNREGISTER_SHM,
    OPTEE_MSG_MAX_NUM_PARAMS, Rmem, Tmem, arg_size_checked,
};
use teeshm_abi::rpc::RpcShmType;
use teeshm_abi::smc::*;
use teeshm_abi::uid::{OPTEE_MSG_REVISION_MAJOR, OPTEE_MSG_UID};
use zerocopy::{FromBytes, IntoBytes};

use crate::list::{self, PageList};
use crate::pool::StaticPool;
use crate::ram::{GuestBuffer, GuestRam, PAGE_SIZE, RamError};

pub use error::{DriverError, MsgReply};

/// How often a yielding call is retried while every TEE thread is busy before the driver gives
/// up. Linux waits on its call queue instead; a model without other CPUs must bound the wait.
pub const DEFAULT_THREAD_LIMIT_RETRIES: u32 = 1000;

/// Most RPCs one call may make before the driver stops serving it: only a broken TEE gets
/// there, and a test should fail rather than hang.
pub const MAX_RPCS_PER_CALL: u32 = 1 << 20;

/// The largest RPC arg buffer (`RPC_FUNC_ALLOC`) the driver hands out: an `optee_msg_arg`
/// with the most params a message may have (127) fills exactly one page, so a larger request
/// comes only from a broken or hostile TEE and gets "no memory" (address 0), never an
/// allocation of its size.
pub const MAX_RPC_ARG_BYTES: u64 = PAGE_SIZE;

/// The default largest `SHM_ALLOC` the driver serves: 128 MiB, the largest buffer teeshm's core
/// takes (`CoreConfig::max_buffer_pages`, 32768 pages). A larger request is answered
/// `TEE_ERROR_OUT_OF_MEMORY` without allocating anything, so no TEE — nor a scenario that
/// makes the pseudo-TA ask — can make the normal world allocate without bound.
pub const DEFAULT_MAX_RPC_SHM_BYTES: u64 = 128 << 20;

/// How often a fast call answering `EBUSY` is retried (SHM cache on and off).
const BUSY_RETRIES: u32 = 1000;
/// Where memory the driver allocated came from, so it goes back to the same place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// Guest pages (contiguous runs listed page by page).
    Pages(Vec<u64>),
    /// A run of the static pool starting here.
    Pool(u64),
}

/// What an RPC buffer is for: an RPC arg (`RPC_FUNC_ALLOC`), which the driver reads and
/// writes itself and so needs where it lies, or a payload (`SHM_ALLOC`), which only the TEE
/// uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RpcUse {
    Arg {
        /// First byte.
        addr: u64,
        /// Bytes.
        size: u64,
    },
    Shm(RpcShmType),
}

/// A buffer the driver lent the TEE and must get back by cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RpcBuffer {
    used_for: RpcUse,
    held: Held,
}

/// The normal-world OP-TEE driver of one guest, over an SMC conduit (the hypervisor, the
/// monitor, or the core in a simulator) and the guest's RAM.
pub struct Driver<C: SmcConduit, R: GuestRam> {
    conduit: C,
    ram: R,
    caps: SecureCaps,
    /// Params of the RPC arg appended to each arg; 0 = `CALL_WITH_ARG` with RPC_ALLOC.
    rpc_param_count: u32,
    pool: Option<StaticPool>,
    shm_cache: bool,
    next_cookie: u64,
    rpc_buffers: BTreeMap<u64, RpcBuffer>,
    /// List pages of the running call's last SHM_ALLOC answer.
    call_lists: Vec<u64>,
    thread_limit_retries: u32,
    /// The largest `SHM_ALLOC` served.
    max_rpc_shm_bytes: u64,
}

impl<C: SmcConduit, R: GuestRam> core::fmt::Debug for Driver<C, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("caps", &self.caps)
            .field("rpc_param_count", &self.rpc_param_count)
            .field("pool", &self.pool)
            .field("shm_cache", &self.shm_cache)
            .field("rpc_buffers", &self.rpc_buffers.len())
            .finish_non_exhaustive()
    }
}

impl<C: SmcConduit, R: GuestRam> Driver<C, R> {
    /// Probes like Linux's `optee_probe`: `CALLS_UID` (must be OP-TEE's), `CALLS_REVISION`
    /// (major 2), `EXCHANGE_CAPABILITIES` (needs `DYNAMIC_SHM` unless the TEE has
    /// `HAVE_RESERVED_SHM`), `GET_SHM_CONFIG` when it has `HAVE_RESERVED_SHM`, and, when the TEE
    /// does not report `RPC_ARG`, drains stale entries of the SHM cache and enables it.
    ///
    /// With a pool, client allocations and RPC payload buffers come from it; args and RPC arg
    /// buffers too when the TEE lacks `DYNAMIC_SHM` ([`Driver::pool_only`]), since such a TEE
    /// reads them nowhere else. (Linux ignores the pool when dynamic SHM exists; using it here
    /// keeps the pool paths of the TEE under test.)
    ///
    /// # Errors
    /// The first probe step that fails.
    pub fn probe(conduit: C, ram: R) -> Result<Self, DriverError> {
        let mut d = Self {
            conduit,
            ram,
            caps: SecureCaps::empty(),
            rpc_param_count: 0,
            pool: None,
            shm_cache: false,
            next_cookie: 1,
            rpc_buffers: BTreeMap::new(),
            call_lists: Vec::new(),
            thread_limit_retries: DEFAULT_THREAD_LIMIT_RETRIES,
            max_rpc_shm_bytes: DEFAULT_MAX_RPC_SHM_BYTES,
        };
        let r = d.fast(OPTEE_SMC_CALLS_UID, &[]);
        let uid = [r.a[0], r.a[1], r.a[2], r.a[3]].map(|w| (w & 0xffff_ffff) as u32);
        if uid != OPTEE_MSG_UID {
            return Err(DriverError::NotOpTee { uid });
        }
        let r = d.fast(OPTEE_SMC_CALLS_REVISION, &[]);
        let (major, minor) = (r.a0(), (r.a[1] & 0xffff_ffff) as u32);
        if major != OPTEE_MSG_REVISION_MAJOR {
            return Err(DriverError::Revision { major, minor });
        }
        let r = d.fast(OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
        if r.a0() != OPTEE_SMC_RETURN_OK {
            return Err(DriverError::Smc {
                func: OPTEE_SMC_EXCHANGE_CAPABILITIES,
                code: r.a0(),
            });
        }
        d.caps = SecureCaps::from_bits_truncate((r.a[1] & 0xffff_ffff) as u32);
        if !d
            .caps
            .intersects(SecureCaps::DYNAMIC_SHM | SecureCaps::HAVE_RESERVED_SHM)
        {
            return Err(DriverError::NoSharedMemory {
                caps: d.caps.bits(),
            });
        }
        if d.caps.contains(SecureCaps::RPC_ARG) {
            let count = rpc_arg_num_params((r.a[3] & 0xffff_ffff) as u32);
            if count > OPTEE_MSG_MAX_NUM_PARAMS {
                return Err(DriverError::RpcParamCount(count));
            }
            d.rpc_param_count = count;
        }
        if d.caps.contains(SecureCaps::HAVE_RESERVED_SHM) {
            d.setup_pool()?;
        }
        if d.rpc_param_count == 0 {
            d.drain_stale_shm_cache();
            d.enable_shm_cache();
        }
        Ok(d)
    }

    /// Takes the pool `GET_SHM_CONFIG` reports; without dynamic SHM it is the only way to share,
    /// so then a pool that cannot be used fails the probe.
    fn setup_pool(&mut self) -> Result<(), DriverError> {
        let dynamic = self.caps.contains(SecureCaps::DYNAMIC_SHM);
        let r = self.fast(OPTEE_SMC_GET_SHM_CONFIG, &[]);
        if r.a0() != OPTEE_SMC_RETURN_OK {
            if dynamic {
                return Ok(());
            }
            return Err(DriverError::Smc {
                func: OPTEE_SMC_GET_SHM_CONFIG,
                code: r.a0(),
            });
        }
        let (pa, size, attr) = (r.a[1], r.a[2], r.a[3]);
        let pool = StaticPool::new(pa, size).filter(|_| attr == u64::from(OPTEE_SMC_SHM_CACHED));
        match pool {
            Some(pool) => self.pool = Some(pool),
            None if dynamic => {}
            None => return Err(DriverError::BadPool { pa, size, attr }),
        }
        Ok(())
    }

    /// Linux's `optee_disable_unmapped_shm_cache`: a previous driver instance (before kexec)
    /// may have left RPC args cached; their cookies mean nothing now, so they are dropped
    /// without freeing.
    fn drain_stale_shm_cache(&mut self) {
        let mut busy = 0;
        for _ in 0..MAX_RPCS_PER_CALL {
            match self.fast(OPTEE_SMC_DISABLE_SHM_CACHE, &[]).a0() {
                OPTEE_SMC_RETURN_OK => {}
                OPTEE_SMC_RETURN_EBUSY if busy < BUSY_RETRIES => busy += 1,
                _ => return,
            }
        }
    }

    fn enable_shm_cache(&mut self) {
        for _ in 0..BUSY_RETRIES {
            match self.fast(OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a0() {
                OPTEE_SMC_RETURN_OK => {
                    self.shm_cache = true;
                    return;
                }
                OPTEE_SMC_RETURN_EBUSY => {}
                // A TEE without the cache: RPC args are freed by RPC_FREE instead.
                _ => return,
            }
        }
    }

    /// The secure capabilities the TEE reported (after any hypervisor masked them).
    pub fn caps(&self) -> SecureCaps {
        self.caps
    }

    /// The guest RAM.
    pub fn ram(&self) -> &R {
        &self.ram
    }

    /// The guest RAM, to allocate buffers to share.
    pub fn ram_mut(&mut self) -> &mut R {
        &mut self.ram
    }

    /// The conduit (tests reach their fault injection through it).
    pub fn conduit_mut(&mut self) -> &mut C {
        &mut self.conduit
    }

    /// Whether calls carry their RPC arg (`CALL_WITH_RPC_ARG`) rather than asking for RPC arg
    /// buffers by `RPC_FUNC_ALLOC`.
    pub fn uses_rpc_arg(&self) -> bool {
        self.rpc_param_count != 0
    }

    /// Params of the appended RPC arg (0 without `RPC_ARG`).
    pub fn rpc_param_count(&self) -> u32 {
        self.rpc_param_count
    }

    /// Whether the TEE may keep RPC arg buffers between calls.
    pub fn shm_cache_enabled(&self) -> bool {
        self.shm_cache
    }

    /// The static pool, when the TEE has one and the driver uses it.
    pub fn static_pool(&self) -> Option<&StaticPool> {
        self.pool.as_ref()
    }

    /// The static pool, to allocate from it.
    pub fn static_pool_mut(&mut self) -> Option<&mut StaticPool> {
        self.pool.as_mut()
    }

    /// Sets how often a call is retried while the TEE reports `ETHREAD_LIMIT`.
    pub fn set_thread_limit_retries(&mut self, tries: u32) {
        self.thread_limit_retries = tries.max(1);
    }

    /// The largest `SHM_ALLOC` the driver serves (default [`DEFAULT_MAX_RPC_SHM_BYTES`]); a
    /// larger request gets `TEE_ERROR_OUT_OF_MEMORY` and allocates nothing.
    pub fn set_max_rpc_shm_bytes(&mut self, bytes: u64) {
        self.max_rpc_shm_bytes = bytes;
    }

    /// The largest `SHM_ALLOC` the driver serves.
    pub fn max_rpc_shm_bytes(&self) -> u64 {
        self.max_rpc_shm_bytes
    }

    /// A cookie no other buffer of this driver has: registered buffers and RPC buffers draw
    /// from one counter (Linux uses the `tee_shm` pointer), so no two ever share one, and a
    /// hypervisor that keys buffers by cookie never sees a duplicate.
    pub fn new_cookie(&mut self) -> u64 {
        let c = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1).max(1);
        c
    }

    /// Makes the next cookies `base`, `base + 1`, ... (`base` 0 is taken as 1). Linux's
    /// cookies are its `tee_shm` pointers, unique in the kernel; several drivers in one normal
    /// world (a client that runs one per CPU) must draw from ranges of their own, or the TEE
    /// sees one cookie registered twice.
    pub fn set_cookie_base(&mut self, base: u64) {
        self.next_cookie = base.max(1);
    }

    /// Outstanding RPC buffers the driver holds for the TEE (for leak checks).
    pub fn rpc_buffers_held(&self) -> usize {
        self.rpc_buffers.len()
    }

    fn fast(&mut self, func: u32, args: &[u64]) -> SmcRegs {
        self.conduit.smc(SmcRegs::call(func, args))
    }

    /// Writes the page list of `buf` into fresh guest pages (free them with
    /// [`Driver::free_page_list`] once the TEE has read it).
    ///
    /// # Errors
    /// See [`crate::list::build`].
    pub fn page_list(&mut self, buf: &GuestBuffer) -> Result<PageList, DriverError> {
        list::build(&mut self.ram, buf)
    }

    /// Gives a page list's pages back.
    pub fn free_page_list(&mut self, list: PageList) {
        list.free(&mut self.ram);
    }

    /// Builds the NONCONTIG page list of `buf` in fresh guest pages and sends REGISTER_SHM with
    /// `cookie` (attr `TMEM_OUTPUT | NONCONTIG`, as Linux); frees the list pages afterwards.
    ///
    /// # Errors
    /// A malformed buffer, guest RAM, the SMC, or the TEE's result (e.g. a cookie in use).
    pub fn register(&mut self, buf: &GuestBuffer, cookie: u64) -> Result<(), DriverError> {
        let list = self.page_list(buf)?;
        let param = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list.buf_ptr, buf.size, cookie),
        );
        let reply = self.call(header(OPTEE_MSG_CMD_REGISTER_SHM), &[param]);
        self.free_page_list(list);
        reply?.check()
    }

    /// Sends UNREGISTER_SHM of `cookie` (one `RMEM_INPUT` param).
    ///
    /// # Errors
    /// The SMC, or the TEE's result: `TEE_ERROR_BUSY` when a call still uses the buffer (its
    /// pages must then not be reused yet), `TEE_ERROR_BAD_PARAMETERS` for an unknown cookie.
    pub fn unregister(&mut self, cookie: u64) -> Result<(), DriverError> {
        let param = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
        self.call(header(OPTEE_MSG_CMD_UNREGISTER_SHM), &[param])?
            .check()
    }

    /// Runs one message to its end: places the arg in guest memory as Linux does (with
    /// `RPC_ARG`: `CALL_WITH_RPC_ARG` with the RPC arg right after the arg in the same page;
    /// without: `CALL_WITH_ARG`, the arg at offset 0 of its own page), issues the SMC, answers
    /// every RPC, retries on `ETHREAD_LIMIT`, and returns the arg as the TEE wrote it back.
    /// `num_params` is set from `params`.
    ///
    /// # Errors
    /// Too many params, guest RAM, the thread limit, or a TEE that never stops asking for RPCs.
    /// A message the TEE ran and failed is *not* an error here: see [`MsgReply::check`].
    pub fn call(
        &mut self,
        header: MsgArgHeader,
        params: &[MsgParam],
    ) -> Result<MsgReply, DriverError> {
        let too_large = DriverError::ArgTooLarge {
            params: params.len(),
        };
        let n = u32::try_from(params.len()).map_err(|_| too_large.clone())?;
        let arg_size = arg_size_checked(n).map_err(|_| too_large.clone())?;
        let rpc_size = match self.rpc_param_count {
            0 => 0,
            count => arg_size_checked(count).map_err(|_| too_large.clone())?,
        };
        if (arg_size + rpc_size) as u64 > PAGE_SIZE {
            return Err(too_large);
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(arg_size + rpc_size)
            .map_err(|_| RamError::OutOfMemory { pages: 1 })?;
        let mut header = header;
        header.num_params.set(n);
        bytes.extend_from_slice(header.as_bytes());
        for p in params {
            bytes.extend_from_slice(p.as_bytes());
        }
        // The RPC arg area starts zeroed, as Linux clears the whole arg.
        bytes.resize(arg_size + rpc_size, 0);

        let (arg, held) = self.alloc_private(PAGE_SIZE)?;
        let result = self.run(arg, &bytes, arg_size, rpc_size);
        self.free_held(held);
        self.free_call_lists();
        result
    }

    /// Issues the call whose arg is `bytes` (placed at `arg`) and serves it to its end.
    fn run(
        &mut self,
        arg: u64,
        bytes: &[u8],
        arg_size: usize,
        rpc_size: usize,
    ) -> Result<MsgReply, DriverError> {
        self.ram.write(arg, bytes)?;
        let (func, appended) = if rpc_size > 0 {
            let at = arg + arg_size as u64;
            (OPTEE_SMC_CALL_WITH_RPC_ARG, Some((at, rpc_size as u64)))
        } else {
            (OPTEE_SMC_CALL_WITH_ARG, None)
        };
        let (hi, lo) = split_pair(arg);
        let start = SmcRegs::call(func, &[hi, lo, 0]);
        let mut out = self.conduit.smc(start);
        let mut tries = 1;
        let mut rpcs = 0;
        loop {
            let a0 = out.a0();
            if a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT {
                if tries >= self.thread_limit_retries {
                    return Err(DriverError::ThreadLimit { tries });
                }
                tries += 1;
                out = self.conduit.smc(start);
            } else if is_rpc_return(a0) {
                if rpcs >= MAX_RPCS_PER_CALL {
                    return Err(DriverError::RpcLoop {
                        max: MAX_RPCS_PER_CALL,
                    });
                }
                rpcs += 1;
                let answer = self.answer_rpc(&out, appended);
                out = self.conduit.smc(answer);
            } else {
                break;
            }
        }
        let mut back = alloc::vec![0u8; arg_size];
        self.ram.read(arg, &mut back)?;
        let short = RamError::OutOfRange {
            ipa: arg,
            len: arg_size as u64,
        };
        let (header, rest) = MsgArgHeader::read_from_prefix(&back).map_err(|_| short)?;
        let params = <[MsgParam]>::ref_from_bytes(rest)
            .map_err(|_| short)?
            .to_vec();
        Ok(MsgReply {
            a0: out.a0(),
            header,
            params,
            rpcs,
        })
    }
    /// Whether the TEE takes memory only from its static pool (no `DYNAMIC_SHM`): then args
    /// and RPC arg buffers must lie in the pool, and temporary memrefs go through it.
    pub fn pool_only(&self) -> bool {
        self.pool.is_some() && !self.caps.contains(SecureCaps::DYNAMIC_SHM)
    }

    /// At least `size` bytes of contiguous memory private to the driver (args, RPC arg
    /// buffers): from the static pool when the TEE reads them nowhere else ([`Driver::pool_only`]),
    /// else guest pages, as Linux's private allocations come from its page pool whenever the TEE
    /// has dynamic SHM.
    fn alloc_private(&mut self, size: u64) -> Result<(u64, Held), DriverError> {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        if self.pool_only() {
            if let Some(pool) = self.pool.as_mut() {
                let pa = pool.alloc(pages).ok_or(RamError::OutOfMemory { pages })?;
                return Ok((pa, Held::Pool(pa)));
            }
        }
        if pages == 1 {
            let got = self.ram.alloc_pages(1)?;
            let Some(&page) = got.first() else {
                self.ram.free_pages(&got);
                return Err(RamError::OutOfMemory { pages }.into());
            };
            return Ok((page, Held::Pages(got)));
        }
        let first = self.ram.alloc_contiguous(pages)?;
        let run = (0..pages).map(|i| first + i * PAGE_SIZE).collect();
        Ok((first, Held::Pages(run)))
    }

    fn free_held(&mut self, held: Held) {
        match held {
            Held::Pages(pages) => self.ram.free_pages(&pages),
            Held::Pool(pa) => {
                if let Some(pool) = self.pool.as_mut() {
                    pool.free(pa);
                }
            }
        }
    }

    /// At shutdown: `DISABLE_SHM_CACHE` until `ENOTAVAIL`, freeing each RPC arg buffer the TEE
    /// hands back (by cookie), as Linux's `optee_disable_shm_cache`.
    ///
    /// # Errors
    /// The TEE stayed busy (a call is still in a thread), or answered something unexpected.
    pub fn shutdown(&mut self) -> Result<(), DriverError> {
        let mut busy = 0;
        for _ in 0..MAX_RPCS_PER_CALL {
            let r = self.fast(OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
            match r.a0() {
                OPTEE_SMC_RETURN_OK => {
                    let cookie = reg_pair(r.a[1], r.a[2]);
                    if let Some(b) = self.rpc_buffers.remove(&cookie) {
                        self.free_held(b.held);
                    }
                }
                OPTEE_SMC_RETURN_ENOTAVAIL => {
                    self.shm_cache = false;
                    return Ok(());
                }
                OPTEE_SMC_RETURN_EBUSY if busy < BUSY_RETRIES => busy += 1,
                code => {
                    return Err(DriverError::Smc {
                        func: OPTEE_SMC_DISABLE_SHM_CACHE,
                        code,
                    });
                }
            }
        }
        Err(DriverError::RpcLoop {
            max: MAX_RPCS_PER_CALL,
        })
    }
}

/// A header with only `cmd` set, for [`Driver::call`] (which sets `num_params` itself).
pub fn header(cmd: u32) -> MsgArgHeader {
    let mut h = MsgArgHeader::default();
    h.cmd.set(cmd);
    h
}
