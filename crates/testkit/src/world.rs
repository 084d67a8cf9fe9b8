//! A small normal world for the core's tests and benchmarks: simulated NS memory with a
//! scattering page allocator, page lists, args in all three call forms, and an RPC responder.
//! (The full normal-world driver model is the `nw` crate's job; this one exists so the core can
//! be tested alone, by physical address, with nothing between it and the normal world.)

use crate::layout::NsPages;
use crate::memory::PhysMemory;
use crate::msg::{Buf, Reply, arg_bytes, header, invoke_header, open_session_params, parse_arg};
use crate::platform::SimPlatform;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::{CoreConfig, NormalWorld, Tee};
use zerocopy::FromBytes;

/// Page size of the world.
pub const PAGE: u64 = teeshm_mm::PAGE_SIZE;

/// How a call passes its arg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgMode {
    /// `CALL_WITH_ARG`: arg alone at the start of a page; RPC args by RPC_ALLOC.
    Plain,
    /// `CALL_WITH_RPC_ARG`: RPC arg appended in the same page.
    RpcArg,
    /// `CALL_WITH_REGD_ARG` inside the registered buffer `cookie` at `offset`.
    Regd {
        /// The registered buffer holding the arg.
        cookie: u64,
        /// Where in it the arg lies.
        offset: u64,
    },
}

/// Takes a lock even after a panic elsewhere: a test that failed on another thread reports
/// its own failure, not a poisoned lock here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The core on the simulated platform, and a normal world that talks to it by SMC: every guest
/// id shares one normal-world memory and this world's allocator (guests are told apart only by
/// the client id in `a7`, as with a hypervisor that identity-maps them).
pub struct World {
    /// The core.
    pub tee: Tee<SimPlatform>,
    /// The machine's memory, shared with the core's platform.
    pub mem: Arc<PhysMemory>,
    pages: Mutex<NsPages>,
    next_cookie: AtomicU64,
    rpc_bufs: Mutex<HashMap<u64, (Buf, Vec<u64>)>>,
    registered: Mutex<HashMap<(u16, u64), Buf>>,
    /// Answer SHM_ALLOC with a contiguous buffer instead of a page list.
    pub contiguous_rpc: AtomicBool,
}

impl World {
    /// A core configured by `config` over fresh memory ([`sim_tee`](crate::sim_tee)).
    pub fn new(config: CoreConfig) -> Self {
        let (tee, mem) = crate::sim_tee(config);
        Self::with_tee(tee, mem)
    }

    /// A core configured by `config` with TA RAM and the simulator's user TAs
    /// ([`sim_tee_with_tas`](crate::sim_tee_with_tas)).
    pub fn with_user_tas(config: CoreConfig) -> Self {
        let (tee, mem) = crate::sim_tee_with_tas(config);
        Self::with_tee(tee, mem)
    }

    /// A world around a core the caller built over `mem`.
    pub fn with_tee(tee: Tee<SimPlatform>, mem: Arc<PhysMemory>) -> Self {
        Self {
            tee,
            mem,
            pages: Mutex::new(NsPages::new()),
            next_cookie: AtomicU64::new(0x1000),
            rpc_bufs: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            contiguous_rpc: false.into(),
        }
    }

    /// A core with [`CoreConfig::default`]: one normal world (guest 0), no hypervisor.
    pub fn default_world() -> Self {
        Self::new(CoreConfig::default())
    }

    /// A core under a hypervisor ([`NormalWorld::Virtualized`], the other defaults): guests
    /// come from `VM_CREATED`; guest 0 is the hypervisor and makes only fast calls.
    pub fn virtualized() -> Self {
        Self::new(CoreConfig {
            normal_world: NormalWorld::Virtualized,
            ..CoreConfig::default()
        })
    }

    /// One NS page; successive pages are scattered over the lower half of NS RAM.
    pub fn alloc_page(&self) -> u64 {
        lock(&self.pages)
            .page()
            .expect("simulated NS RAM exhausted")
    }

    /// `n` scattered NS pages.
    pub fn alloc_pages(&self, n: u64) -> Vec<u64> {
        (0..n).map(|_| self.alloc_page()).collect()
    }

    /// `n` physically contiguous pages (from the upper half of RAM, never handed out singly).
    pub fn alloc_contiguous(&self, n: u64) -> u64 {
        lock(&self.pages)
            .contiguous(n)
            .expect("simulated contiguous NS RAM exhausted")
    }

    /// Gives pages back to the allocator.
    pub fn free_pages(&self, pages: &[u64]) {
        lock(&self.pages).free(pages);
    }

    /// A fresh cookie (for registrations and RPC buffers).
    pub fn cookie(&self) -> u64 {
        self.next_cookie.fetch_add(1, Ordering::Relaxed)
    }

    /// A buffer of `size` bytes starting `offset` bytes into its first page.
    pub fn buffer(&self, size: u64, offset: u64) -> Buf {
        Buf {
            pages: self.alloc_pages(Buf::pages_needed(size, offset)),
            offset,
            size,
        }
    }

    /// Gives a buffer's pages back.
    pub fn free_buffer(&self, buf: &Buf) {
        self.free_pages(&buf.pages);
    }

    /// Writes `data` into `buf` at `at` (as the normal world).
    pub fn write_buf(&self, buf: &Buf, at: u64, data: &[u8]) {
        for (pa, range) in buf.pieces(at, data.len() as u64) {
            self.mem.write(pa, &data[range]);
        }
    }

    /// Fills the whole buffer with `f(byte index)`.
    pub fn fill_buf(&self, buf: &Buf, f: impl Fn(u64) -> u8) {
        let bytes: Vec<u8> = (0..buf.size).map(f).collect();
        self.write_buf(buf, 0, &bytes);
    }

    /// `len` bytes of `buf` from `at`.
    pub fn read_buf(&self, buf: &Buf, at: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        for (pa, range) in buf.pieces(at, len) {
            self.mem.read(pa, &mut out[range]);
        }
        out
    }

    /// The physical address of byte `at` of `buf`.
    pub fn buf_pa(&self, buf: &Buf, at: u64) -> u64 {
        buf.addr(at)
    }

    /// Writes the page list of `buf` into fresh NS pages; returns `buf_ptr` and the list pages.
    pub fn page_list(&self, buf: &Buf) -> (u64, Vec<u64>) {
        let lists = self.alloc_pages(page_list::list_pages_needed(buf.pages.len() as u64));
        let mem = &self.mem;
        let buf_ptr =
            page_list::encode_with::<()>(&buf.pages, buf.offset, buf.size, &lists, |pa, bytes| {
                mem.write(pa, bytes);
                Ok(())
            })
            .expect("a page list of a valid buffer");
        (buf_ptr, lists)
    }

    /// One SMC as `guest`.
    pub fn smc(&self, guest: GuestId, func: u32, args: &[u64]) -> SmcRegs {
        self.tee
            .handle_smc(SmcRegs::call(func, args).from_client(guest))
    }

    /// `VM_CREATED` of guest `id` from the hypervisor; the answer's `a0`.
    pub fn create_guest(&self, id: u16) -> u32 {
        self.smc(GuestId::HYPERVISOR, OPTEE_SMC_VM_CREATED, &[u64::from(id)])
            .a0()
    }

    /// `VM_DESTROYED` of guest `id` from the hypervisor; the answer's `a0`.
    pub fn destroy_guest(&self, id: u16) -> u32 {
        self.smc(
            GuestId::HYPERVISOR,
            OPTEE_SMC_VM_DESTROYED,
            &[u64::from(id)],
        )
        .a0()
    }

    /// The registered buffer `cookie` of `guest`, as this world registered it.
    fn registered_buf(&self, guest: GuestId, cookie: u64) -> Buf {
        lock(&self.registered)
            .get(&(guest.raw(), cookie))
            .cloned()
            .expect("an arg in a buffer this world registered")
    }

    /// Runs a message to its end, answering every RPC as a well-behaved driver would.
    pub fn call(
        &self,
        guest: GuestId,
        mode: ArgMode,
        header: MsgArgHeader,
        params: &[MsgParam],
    ) -> Reply {
        let bytes = arg_bytes(header, params);
        let arg_size = bytes.len() as u64;
        let (func, arg, a3, arg_pa, page) = match mode {
            ArgMode::Plain | ArgMode::RpcArg => {
                let page = self.alloc_page();
                self.mem.write(page, &[0u8; PAGE as usize]);
                self.mem.write(page, &bytes);
                let func = if mode == ArgMode::Plain {
                    OPTEE_SMC_CALL_WITH_ARG
                } else {
                    OPTEE_SMC_CALL_WITH_RPC_ARG
                };
                (func, page, 0, page, Some(page))
            }
            ArgMode::Regd { cookie, offset } => {
                let buf = self.registered_buf(guest, cookie);
                self.write_buf(&buf, offset, &bytes);
                let pa = buf.addr(offset);
                (OPTEE_SMC_CALL_WITH_REGD_ARG, cookie, offset, pa, None)
            }
        };
        let (a1, a2) = split_pair(arg);
        let mut out = self.smc(guest, func, &[a1, a2, a3]);
        let mut rpcs = Vec::new();
        while is_rpc_return(out.a0()) {
            rpcs.push(out.a0());
            assert!(rpcs.len() < 1 << 16, "RPC loop");
            let appended = match mode {
                ArgMode::RpcArg => Some(arg_pa + arg_size),
                ArgMode::Regd { cookie, offset } => {
                    Some(self.registered_buf(guest, cookie).addr(offset + arg_size))
                }
                ArgMode::Plain => None,
            };
            let answer = self.answer_rpc(&out, appended);
            out = self.tee.handle_smc(answer.from_client(guest));
        }
        let back = match mode {
            ArgMode::Regd { cookie, offset } => {
                self.read_buf(&self.registered_buf(guest, cookie), offset, arg_size)
            }
            _ => {
                let mut back = vec![0u8; arg_size as usize];
                self.mem.read(arg_pa, &mut back);
                back
            }
        };
        if let Some(page) = page {
            self.free_pages(&[page]);
        }
        let (header, params) = parse_arg(&back);
        Reply {
            a0: out.a0(),
            header,
            params,
            rpcs,
        }
    }

    /// The registers a well-behaved driver answers an RPC with. `appended` is where the RPC
    /// arg lies when the call carries one.
    pub fn answer_rpc(&self, out: &SmcRegs, appended: Option<u64>) -> SmcRegs {
        let a = out.a;
        let thread = a[3];
        match out.a0() {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let page = self.alloc_page();
                let cookie = self.cookie();
                let buf = Buf {
                    pages: vec![page],
                    offset: 0,
                    size: PAGE,
                };
                lock(&self.rpc_bufs).insert(cookie, (buf, vec![]));
                let (p_hi, p_lo) = split_pair(page);
                let (c_hi, c_lo) = split_pair(cookie);
                SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[p_hi, p_lo, thread, c_hi, c_lo],
                )
            }
            OPTEE_SMC_RETURN_RPC_FREE => {
                if let Some((buf, lists)) = lock(&self.rpc_bufs).remove(&reg_pair(a[1], a[2])) {
                    self.free_buffer(&buf);
                    self.free_pages(&lists);
                }
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let at = appended
                    .unwrap_or_else(|| lock(&self.rpc_bufs)[&reg_pair(a[1], a[2])].0.pages[0]);
                self.serve_rpc_cmd(at);
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            // The interrupt was served in the normal world (as Linux does): just resume.
            OPTEE_SMC_RETURN_RPC_FOREIGN_INTR => {
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[a[1], a[2], thread])
            }
            other => panic!("unexpected RPC {other:#x}"),
        }
    }

    /// Serves the RPC command whose arg lies at `at`: `SHM_ALLOC` and `SHM_FREE`; anything
    /// else is answered `NOT_IMPLEMENTED`.
    fn serve_rpc_cmd(&self, at: u64) {
        let mut raw = [0u8; 160];
        self.mem.read(at, &mut raw);
        let (hdr, rest) = MsgArgHeader::mut_from_prefix(&mut raw).expect("a whole header");
        let n = hdr.num_params.get() as usize;
        let params = <[MsgParam]>::mut_from_prefix_with_elems(rest, n)
            .expect("an RPC arg's params fit its 160 bytes")
            .0;
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => {
                let size = params[0].value().b.get();
                let cookie = self.cookie();
                if self.contiguous_rpc.load(Ordering::Relaxed) {
                    let first = self.alloc_contiguous(size.div_ceil(PAGE));
                    params[0] = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                        Tmem::new(first, size, cookie),
                    );
                    // Contiguous runs are never given back, so the record holds no pages.
                    let record = Buf {
                        pages: vec![],
                        offset: 0,
                        size,
                    };
                    lock(&self.rpc_bufs).insert(cookie, (record, vec![]));
                } else {
                    let buf = self.buffer(size, 0);
                    let (buf_ptr, lists) = self.page_list(&buf);
                    params[0] = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(buf_ptr, size, cookie),
                    );
                    lock(&self.rpc_bufs).insert(cookie, (buf, lists));
                }
                hdr.ret.set(gp::TEE_SUCCESS);
            }
            OPTEE_RPC_CMD_SHM_FREE => {
                let cookie = params[0].value().b.get();
                let held = lock(&self.rpc_bufs).remove(&cookie);
                hdr.ret.set(match held {
                    Some((buf, lists)) => {
                        self.free_buffer(&buf);
                        self.free_pages(&lists);
                        gp::TEE_SUCCESS
                    }
                    None => gp::TEE_ERROR_BAD_PARAMETERS,
                });
            }
            _ => hdr.ret.set(gp::TEE_ERROR_NOT_IMPLEMENTED),
        }
        self.mem.write(at, &raw);
    }

    /// RPC buffers the normal world still holds for the core.
    pub fn rpc_buffers_held(&self) -> usize {
        lock(&self.rpc_bufs).len()
    }

    /// Registers `buf` as `cookie` of `guest` by a call in `mode`; the result code.
    pub fn register_as(&self, guest: GuestId, mode: ArgMode, cookie: u64, buf: &Buf) -> u32 {
        let (buf_ptr, lists) = self.page_list(buf);
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, cookie),
        );
        let r = self.call(guest, mode, header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
        self.free_pages(&lists);
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        if r.ret() == gp::TEE_SUCCESS {
            lock(&self.registered).insert((guest.raw(), cookie), buf.clone());
        }
        r.ret()
    }

    /// Registers `buf` as `cookie` of `guest` (`CALL_WITH_RPC_ARG`); the result code.
    pub fn register(&self, guest: GuestId, cookie: u64, buf: &Buf) -> u32 {
        self.register_as(guest, ArgMode::RpcArg, cookie, buf)
    }

    /// Unregisters `cookie` of `guest`; the result code (`BUSY` forgets it too: the core
    /// releases it when its last user is done).
    pub fn unregister(&self, guest: GuestId, cookie: u64) -> u32 {
        let p = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
        let r = self.call(
            guest,
            ArgMode::RpcArg,
            header(OPTEE_MSG_CMD_UNREGISTER_SHM),
            &[p],
        );
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        if r.ret() == gp::TEE_SUCCESS || r.ret() == gp::TEE_ERROR_BUSY {
            lock(&self.registered).remove(&(guest.raw(), cookie));
        }
        r.ret()
    }

    /// Opens a session to the memtest pseudo-TA; its id.
    pub fn open_session(&self, guest: GuestId) -> u32 {
        let r = self.open_session_uuid(guest, MEMTEST_UUID);
        assert_eq!(r.ret(), gp::TEE_SUCCESS, "open session: {:#x}", r.ret());
        r.header.session.get()
    }

    /// `OPEN_SESSION` of the TA `uuid`, whatever the answer.
    pub fn open_session_uuid(&self, guest: GuestId, uuid: [u8; 16]) -> Reply {
        self.call(
            guest,
            ArgMode::RpcArg,
            header(OPTEE_MSG_CMD_OPEN_SESSION),
            &open_session_params(uuid),
        )
    }

    /// `INVOKE_COMMAND` of `func` in `session`, by a call in `mode`.
    pub fn invoke_as(
        &self,
        guest: GuestId,
        mode: ArgMode,
        session: u32,
        func: u32,
        params: &[MsgParam],
    ) -> Reply {
        self.call(guest, mode, invoke_header(session, func), params)
    }

    /// `INVOKE_COMMAND` of `func` in `session` (`CALL_WITH_RPC_ARG`).
    pub fn invoke(&self, guest: GuestId, session: u32, func: u32, params: &[MsgParam]) -> Reply {
        self.invoke_as(guest, ArgMode::RpcArg, session, func, params)
    }

    /// A NONCONTIG tmem param for `buf` (its list pages are left allocated: tests are short).
    pub fn tmem_list(&self, ty: u64, buf: &Buf) -> MsgParam {
        let (buf_ptr, _) = self.page_list(buf);
        MsgParam::from_tmem(
            ty | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, 0),
        )
    }

    /// Asserts the core's agreement checker finds nothing.
    pub fn check(&self) {
        crate::assert_agreement(&self.tee);
    }
}
