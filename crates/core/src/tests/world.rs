//! A small normal world for the core's tests and benchmarks: simulated NS memory with a
//! scattering page allocator, page lists, args in all three call forms, and an RPC responder.
//! (The full normal-world driver model is the `nw` crate's job; this one exists so the core can
//! be tested alone.)
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
#[allow(unused_imports)]
use std::prelude::rust_2024::*;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
#[allow(unused_imports)]
use std::{format, vec};
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::testing::{NS_RAM, PhysMemory, SimPlatform, sim_memory_map};
use teeshm_core::{CoreConfig, SmcRegs, Tee};
use teeshm_platform::RecordingTlb;
use zerocopy::{FromBytes, IntoBytes};

pub const PAGE: u64 = 4096;

/// A buffer in NS memory: its data pages, the offset of its first byte, and its size.
#[derive(Debug, Clone)]
pub struct NwBuf {
    pub pages: Vec<u64>,
    pub offset: u64,
    pub size: u64,
}

/// How a call passes its arg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgMode {
    /// `CALL_WITH_ARG`: arg alone at the start of a page; RPC args by RPC_ALLOC.
    Plain,
    /// `CALL_WITH_RPC_ARG`: RPC arg appended in the same page.
    RpcArg,
    /// `CALL_WITH_REGD_ARG` inside the registered buffer `cookie` at `offset`.
    Regd { cookie: u64, offset: u64 },
}

/// The result of a call as the normal world sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub a0: u32,
    pub header: MsgArgHeader,
    pub params: Vec<MsgParam>,
    /// RPC codes answered on the way.
    pub rpcs: Vec<u32>,
}

impl Reply {
    pub fn ret(&self) -> u32 {
        self.header.ret.get()
    }
    pub fn value(&self, i: usize) -> [u64; 3] {
        let v = self.params[i].value();
        [v.a.get(), v.b.get(), v.c.get()]
    }
}

pub struct World {
    pub tee: Tee<SimPlatform>,
    pub mem: Arc<PhysMemory>,
    next_page: AtomicU64,
    free: Mutex<Vec<u64>>,
    next_cookie: AtomicU64,
    rpc_bufs: Mutex<HashMap<u64, (NwBuf, Vec<u64>)>>,
    registered: Mutex<HashMap<(u16, u64), NwBuf>>,
    /// Answer SHM_ALLOC with a contiguous buffer instead of a page list.
    pub contiguous_rpc: std::sync::atomic::AtomicBool,
}

const NS_PAGES: u64 = NS_RAM.1 / PAGE;

impl World {
    pub fn new(config: CoreConfig) -> Self {
        let mem = Arc::new(PhysMemory::new());
        let tee = Tee::new(
            config,
            sim_memory_map(),
            SimPlatform::new(mem.clone()),
            RecordingTlb::counting(),
        )
        .unwrap();
        Self {
            tee,
            mem,
            next_page: AtomicU64::new(0),
            free: Mutex::new(Vec::new()),
            next_cookie: AtomicU64::new(0x1000),
            rpc_bufs: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            contiguous_rpc: false.into(),
        }
    }

    pub fn default_world() -> Self {
        Self::new(CoreConfig::default())
    }

    /// One NS page; successive pages are scattered over the 4 GiB of NS RAM.
    pub fn alloc_page(&self) -> u64 {
        if let Some(p) = self.free.lock().unwrap().pop() {
            return p;
        }
        let n = self.next_page.fetch_add(1, Ordering::Relaxed);
        assert!(n < NS_PAGES / 2, "simulated NS RAM exhausted");
        // An odd multiplier is a bijection modulo 2^19: scattered over the lower half of RAM,
        // never repeated. The upper half is for contiguous runs.
        let index = n.wrapping_mul(0x0009_E377) % (NS_PAGES / 2);
        NS_RAM.0 + index * PAGE
    }

    pub fn alloc_pages(&self, n: u64) -> Vec<u64> {
        (0..n).map(|_| self.alloc_page()).collect()
    }

    /// `n` physically contiguous pages (from the odd half of RAM, never handed out singly).
    pub fn alloc_contiguous(&self, n: u64) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let first = NEXT.fetch_add(n, Ordering::Relaxed);
        NS_RAM.0 + NS_RAM.1 / 2 + (first % (NS_PAGES / 4)) * PAGE
    }

    pub fn free_pages(&self, pages: &[u64]) {
        self.free.lock().unwrap().extend_from_slice(pages);
    }

    pub fn cookie(&self) -> u64 {
        self.next_cookie.fetch_add(1, Ordering::Relaxed)
    }

    /// A buffer of `size` bytes starting `offset` bytes into its first page.
    pub fn buffer(&self, size: u64, offset: u64) -> NwBuf {
        let n = page_list::num_pages(offset, size).unwrap();
        NwBuf {
            pages: self.alloc_pages(n),
            offset,
            size,
        }
    }

    pub fn free_buffer(&self, buf: &NwBuf) {
        self.free_pages(&buf.pages);
    }

    /// Writes `data` into `buf` at `at` (as the normal world).
    pub fn write_buf(&self, buf: &NwBuf, at: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let pa = self.buf_pa(buf, at + i as u64);
            self.mem.write(pa, std::slice::from_ref(b));
        }
    }

    /// Fast whole-buffer fill with a byte function.
    pub fn fill_buf(&self, buf: &NwBuf, f: impl Fn(u64) -> u8) {
        let bytes: Vec<u8> = (0..buf.size).map(f).collect();
        let mut done = 0u64;
        while done < buf.size {
            let pa = self.buf_pa(buf, done);
            let n = (PAGE - pa % PAGE).min(buf.size - done);
            self.mem
                .write(pa, &bytes[done as usize..(done + n) as usize]);
            done += n;
        }
    }

    pub fn read_buf(&self, buf: &NwBuf, at: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        let mut done = 0u64;
        while done < len {
            let pa = self.buf_pa(buf, at + done);
            let n = (PAGE - pa % PAGE).min(len - done);
            self.mem
                .read(pa, &mut out[done as usize..(done + n) as usize]);
            done += n;
        }
        out
    }

    pub fn buf_pa(&self, buf: &NwBuf, at: u64) -> u64 {
        let x = buf.offset + at;
        buf.pages[(x / PAGE) as usize] + x % PAGE
    }

    /// Writes the page list of `buf` into fresh NS pages; returns `buf_ptr` and the list pages.
    pub fn page_list(&self, buf: &NwBuf) -> (u64, Vec<u64>) {
        let lists = self.alloc_pages(page_list::list_pages_needed(buf.pages.len() as u64));
        let mem = &self.mem;
        let buf_ptr =
            page_list::encode_with::<()>(&buf.pages, buf.offset, buf.size, &lists, |pa, bytes| {
                mem.write(pa, bytes);
                Ok(())
            })
            .unwrap();
        (buf_ptr, lists)
    }

    pub fn smc(&self, guest: GuestId, func: u32, args: &[u64]) -> SmcRegs {
        self.tee
            .handle_smc(SmcRegs::call(func, args).from_client(guest))
    }

    pub fn create_guest(&self, id: u16) -> u32 {
        self.smc(GuestId::HYPERVISOR, OPTEE_SMC_VM_CREATED, &[u64::from(id)])
            .a[0] as u32
    }

    pub fn destroy_guest(&self, id: u16) -> u32 {
        self.smc(
            GuestId::HYPERVISOR,
            OPTEE_SMC_VM_DESTROYED,
            &[u64::from(id)],
        )
        .a[0] as u32
    }

    /// Runs a message to its end, answering every RPC as a well-behaved driver would.
    pub fn call(
        &self,
        guest: GuestId,
        mode: ArgMode,
        header: MsgArgHeader,
        params: &[MsgParam],
    ) -> Reply {
        let mut bytes = header.as_bytes().to_vec();
        for p in params {
            bytes.extend_from_slice(p.as_bytes());
        }
        let (hdr, _) = MsgArgHeader::mut_from_prefix(&mut bytes).unwrap();
        hdr.num_params.set(params.len() as u32);
        let arg_size = bytes.len() as u64;
        let (func, a1, a2, a3, arg_pa, page) = match mode {
            ArgMode::Plain | ArgMode::RpcArg => {
                let page = self.alloc_page();
                self.mem.write(page, &[0u8; PAGE as usize]);
                self.mem.write(page, &bytes);
                let func = if mode == ArgMode::Plain {
                    OPTEE_SMC_CALL_WITH_ARG
                } else {
                    OPTEE_SMC_CALL_WITH_RPC_ARG
                };
                (func, page >> 32, page & 0xffff_ffff, 0, page, Some(page))
            }
            ArgMode::Regd { cookie, offset } => {
                let buf = self.registered.lock().unwrap()[&(guest.raw(), cookie)].clone();
                let pa = self.buf_pa(&buf, offset);
                self.write_buf(&buf, offset, &bytes);
                (
                    OPTEE_SMC_CALL_WITH_REGD_ARG,
                    cookie >> 32,
                    cookie & 0xffff_ffff,
                    offset,
                    pa,
                    None,
                )
            }
        };
        let regd = match mode {
            ArgMode::Regd { cookie, offset } => Some((cookie, offset)),
            _ => None,
        };
        let mut out = self.smc(guest, func, &[a1, a2, a3]);
        let mut rpcs = Vec::new();
        let mut rounds = 0;
        while is_rpc_return(out.a[0] as u32) {
            rounds += 1;
            assert!(rounds < 64, "RPC loop");
            rpcs.push(out.a[0] as u32);
            let appended = match (mode, regd) {
                (ArgMode::RpcArg, _) => Some(arg_pa + arg_size),
                (_, Some((cookie, offset))) => {
                    let buf = self.registered.lock().unwrap()[&(guest.raw(), cookie)].clone();
                    Some(self.buf_pa(&buf, offset + arg_size))
                }
                _ => None,
            };
            let answer = self.answer_rpc(&out, appended);
            out = self.tee.handle_smc(answer.from_client(guest));
        }
        let mut back = vec![0u8; arg_size as usize];
        match regd {
            Some((cookie, offset)) => {
                let buf = self.registered.lock().unwrap()[&(guest.raw(), cookie)].clone();
                back = self.read_buf(&buf, offset, arg_size);
            }
            None => self.mem.read(arg_pa, &mut back),
        }
        if let Some(page) = page {
            self.free_pages(&[page]);
        }
        let (header, rest) = MsgArgHeader::read_from_prefix(&back).unwrap();
        let params = <[MsgParam]>::ref_from_bytes(rest).unwrap().to_vec();
        Reply {
            a0: out.a[0] as u32,
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
        let pair = |hi: u64, lo: u64| (hi << 32) | (lo & 0xffff_ffff);
        match a[0] as u32 {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let page = self.alloc_page();
                let cookie = self.cookie();
                self.rpc_bufs.lock().unwrap().insert(
                    cookie,
                    (
                        NwBuf {
                            pages: vec![page],
                            offset: 0,
                            size: PAGE,
                        },
                        vec![],
                    ),
                );
                SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[
                        page >> 32,
                        page & 0xffff_ffff,
                        thread,
                        cookie >> 32,
                        cookie & 0xffff_ffff,
                    ],
                )
            }
            OPTEE_SMC_RETURN_RPC_FREE => {
                let cookie = pair(a[1], a[2]);
                if let Some((buf, lists)) = self.rpc_bufs.lock().unwrap().remove(&cookie) {
                    self.free_buffer(&buf);
                    self.free_pages(&lists);
                }
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let at = appended.unwrap_or_else(|| {
                    let cookie = pair(a[1], a[2]);
                    self.rpc_bufs.lock().unwrap()[&cookie].0.pages[0]
                });
                self.serve_rpc_cmd(at);
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            other => std::panic!("unexpected RPC {other:#x}"),
        }
    }

    fn serve_rpc_cmd(&self, at: u64) {
        let mut raw = [0u8; 160];
        self.mem.read(at, &mut raw);
        let (hdr, rest) = MsgArgHeader::mut_from_prefix(&mut raw).unwrap();
        let n = hdr.num_params.get() as usize;
        let params = <[MsgParam]>::mut_from_prefix_with_elems(rest, n).unwrap().0;
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => {
                let v = params[0].value();
                let size = v.b.get();
                let cookie = self.cookie();
                if self.contiguous_rpc.load(Ordering::Relaxed) {
                    let pages = size.div_ceil(PAGE);
                    let first = self.alloc_contiguous(pages);
                    params[0] = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                        Tmem::new(first, size, cookie),
                    );
                    self.rpc_bufs.lock().unwrap().insert(
                        cookie,
                        (
                            NwBuf {
                                pages: vec![],
                                offset: 0,
                                size,
                            },
                            vec![],
                        ),
                    );
                } else {
                    let buf = self.buffer(size, 0);
                    let (buf_ptr, lists) = self.page_list(&buf);
                    params[0] = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(buf_ptr, size, cookie),
                    );
                    self.rpc_bufs.lock().unwrap().insert(cookie, (buf, lists));
                }
                hdr.ret.set(gp::TEE_SUCCESS);
            }
            OPTEE_RPC_CMD_SHM_FREE => {
                let cookie = params[0].value().b.get();
                let ok = match self.rpc_bufs.lock().unwrap().remove(&cookie) {
                    Some((buf, lists)) => {
                        self.free_buffer(&buf);
                        self.free_pages(&lists);
                        true
                    }
                    None => false,
                };
                hdr.ret.set(if ok {
                    gp::TEE_SUCCESS
                } else {
                    gp::TEE_ERROR_BAD_PARAMETERS
                });
            }
            _ => hdr.ret.set(gp::TEE_ERROR_NOT_IMPLEMENTED),
        }
        self.mem.write(at, &raw);
    }

    /// RPC buffers the normal world still holds for the core.
    pub fn rpc_buffers_held(&self) -> usize {
        self.rpc_bufs.lock().unwrap().len()
    }

    pub fn header(cmd: u32) -> MsgArgHeader {
        let mut h = MsgArgHeader::default();
        h.cmd.set(cmd);
        h
    }

    pub fn register_as(&self, guest: GuestId, mode: ArgMode, cookie: u64, buf: &NwBuf) -> u32 {
        let (buf_ptr, lists) = self.page_list(buf);
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, cookie),
        );
        let r = self.call(guest, mode, Self::header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
        self.free_pages(&lists);
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        if r.ret() == gp::TEE_SUCCESS {
            self.registered
                .lock()
                .unwrap()
                .insert((guest.raw(), cookie), buf.clone());
        }
        r.ret()
    }

    pub fn register(&self, guest: GuestId, cookie: u64, buf: &NwBuf) -> u32 {
        self.register_as(guest, ArgMode::RpcArg, cookie, buf)
    }

    pub fn unregister(&self, guest: GuestId, cookie: u64) -> u32 {
        let p = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
        let r = self.call(
            guest,
            ArgMode::RpcArg,
            Self::header(OPTEE_MSG_CMD_UNREGISTER_SHM),
            &[p],
        );
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        if r.ret() == gp::TEE_SUCCESS || r.ret() == gp::TEE_ERROR_BUSY {
            self.registered
                .lock()
                .unwrap()
                .remove(&(guest.raw(), cookie));
        }
        r.ret()
    }

    pub fn open_session(&self, guest: GuestId) -> u32 {
        let r = self.open_session_uuid(guest, MEMTEST_UUID);
        assert_eq!(r.ret(), gp::TEE_SUCCESS, "open session: {:#x}", r.ret());
        r.header.session.get()
    }

    pub fn open_session_uuid(&self, guest: GuestId, uuid: [u8; 16]) -> Reply {
        let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let a = u64::from_le_bytes(uuid[..8].try_into().unwrap());
        let b = u64::from_le_bytes(uuid[8..].try_into().unwrap());
        let params = [
            MsgParam::from_value(meta, Value::new(a, b, 0)),
            MsgParam::from_value(meta, Value::new(0, 0, 0)),
        ];
        self.call(
            guest,
            ArgMode::RpcArg,
            Self::header(OPTEE_MSG_CMD_OPEN_SESSION),
            &params,
        )
    }

    pub fn invoke_as(
        &self,
        guest: GuestId,
        mode: ArgMode,
        session: u32,
        func: u32,
        params: &[MsgParam],
    ) -> Reply {
        let mut h = Self::header(OPTEE_MSG_CMD_INVOKE_COMMAND);
        h.session.set(session);
        h.func.set(func);
        self.call(guest, mode, h, params)
    }

    pub fn invoke(&self, guest: GuestId, session: u32, func: u32, params: &[MsgParam]) -> Reply {
        self.invoke_as(guest, ArgMode::RpcArg, session, func, params)
    }

    /// A NONCONTIG tmem param for `buf` (its list pages are left allocated: tests are short).
    pub fn tmem_list(&self, ty: u64, buf: &NwBuf) -> MsgParam {
        let (buf_ptr, _) = self.page_list(buf);
        MsgParam::from_tmem(
            ty | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, 0),
        )
    }

    pub fn check(&self) {
        let d = self.tee.check_agreement();
        assert!(d.is_empty(), "disagreements: {d:#?}");
    }
}

pub fn value(ty: u64, a: u64, b: u64, c: u64) -> MsgParam {
    MsgParam::from_value(ty, Value::new(a, b, c))
}

pub fn rmem(ty: u64, cookie: u64, offs: u64, size: u64) -> MsgParam {
    MsgParam::from_rmem(ty, Rmem::new(offs, size, cookie))
}
