//! A small virtualized system for the mediator's tests: the real core over simulated memory,
//! the mediator in front of it, and guests whose RAM is scattered over normal-world RAM by
//! their stage 2. Guests build args, page lists and RPC answers with IPAs only, as a guest
//! kernel would (`teeshm_testkit::World` builds the same shapes with PAs, and the message
//! builders, replies and buffers here are its: `teeshm_testkit::msg`).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use teeshm_abi::GuestId;
use teeshm_abi::gp;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::{CoreConfig, NormalWorld, Tee};
use teeshm_hyp::{GuestStats, HypConfig, HypLimits, MachineMemory, Mediator, Stage2};
pub use teeshm_testkit::CoreConduit;
pub use teeshm_testkit::msg::*;
use teeshm_testkit::{NS_RAM, PhysMemory, SimPlatform, scattered_page, sim_tee};
use zerocopy::FromBytes;

pub const PAGE: u64 = 4096;
/// 16 MiB of RAM per guest.
pub const GUEST_PAGES: u64 = 4096;
/// IPA of guest slot 0's first page; slot `s` starts `s` guests further, so each guest's
/// range ends where the next one's begins.
pub const IPA_BASE: u64 = 0x8000_0000;
/// The hypervisor's own pages: the last 64 MiB of NS RAM.
pub const HYP_POOL: (u64, u64) = (NS_RAM.0 + NS_RAM.1 - (64 << 20), 64 << 20);

/// Machine memory as the hypervisor sees it: the same simulated memory, and a pool of pages
/// it owns. Freeing a page it does not hold panics (double-free detector).
pub struct HypMem {
    pub phys: Arc<PhysMemory>,
    next: u64,
    free: Vec<u64>,
    pub held: BTreeSet<u64>,
    /// Refuse pages beyond this many held (to test exhaustion).
    pub limit: Option<usize>,
}

impl MachineMemory for HypMem {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        self.phys.read(pa, buf);
    }
    fn write(&self, pa: u64, data: &[u8]) {
        self.phys.write(pa, data);
    }
    fn alloc_page(&mut self) -> Option<u64> {
        if self.limit.is_some_and(|l| self.held.len() >= l) {
            return None;
        }
        let pa = match self.free.pop() {
            Some(pa) => pa,
            None if self.next < HYP_POOL.1 / PAGE => {
                self.next += 1;
                HYP_POOL.0 + (self.next - 1) * PAGE
            }
            None => return None,
        };
        assert!(self.held.insert(pa));
        Some(pa)
    }
    fn free_page(&mut self, pa: u64) {
        assert!(self.held.remove(&pa), "free of a page not held: {pa:#x}");
        self.free.push(pa);
    }
    fn pool_pages(&self) -> u64 {
        let all = HYP_POOL.1 / PAGE;
        self.limit.map_or(all, |l| all.min(l as u64))
    }
}

pub type Hyp = Mediator<CoreConduit, HypMem>;

pub struct System {
    pub hyp: Hyp,
    pub phys: Arc<PhysMemory>,
}

/// Where guest slot `slot`'s page `i` lies: the scattered pages of the lower half of NS RAM
/// (`teeshm_testkit::scattered_page`), so no two guest pages share a frame and neighbours land
/// far apart.
pub fn scatter(slot: u64, i: u64) -> u64 {
    scattered_page(slot * GUEST_PAGES + i)
}

/// A core for a hypervisor: guests are announced by VM_CREATED, a7 names them.
pub fn virtualized() -> CoreConfig {
    CoreConfig {
        normal_world: NormalWorld::Virtualized,
        ..CoreConfig::default()
    }
}

impl System {
    pub fn new() -> Self {
        Self::with(virtualized(), HypLimits::default())
    }

    /// A system whose mediator gives every guest `limits` (16 guest slots, the whole pool).
    pub fn with(config: CoreConfig, limits: HypLimits) -> Self {
        Self::with_hyp(
            config,
            HypConfig {
                limits,
                ..HypConfig::default()
            },
            None,
        )
    }

    /// A system whose mediator has `hyp` and a pool of `pool` pages (None: the whole pool).
    pub fn with_hyp(config: CoreConfig, hyp: HypConfig, pool: Option<usize>) -> Self {
        // A mediator sits only in front of a core that knows guests (a7 names them).
        assert_eq!(config.normal_world, NormalWorld::Virtualized);
        let (tee, phys) = sim_tee(config);
        let mem = HypMem {
            phys: phys.clone(),
            next: 0,
            free: Vec::new(),
            held: BTreeSet::new(),
            limit: pool,
        };
        Self {
            hyp: Mediator::new(CoreConduit(Arc::new(tee)), mem, hyp).unwrap(),
            phys,
        }
    }

    pub fn tee(&self) -> &Tee<SimPlatform> {
        &self.hyp.tee().0
    }

    /// The core, shared (to hold a buffer as a secure thread would while guests call).
    pub fn tee_arc(&self) -> Arc<Tee<SimPlatform>> {
        self.hyp.tee().0.clone()
    }

    /// A guest `id` in IPA slot `slot` with 16 MiB of scattered RAM, announced to the TEE.
    pub fn guest(&mut self, id: u16, slot: u64) -> Guest {
        let base = IPA_BASE + slot * GUEST_PAGES * PAGE;
        let mut stage2 = Stage2::new();
        let mut map = HashMap::new();
        for i in 0..GUEST_PAGES {
            let (ipa, pa) = (base + i * PAGE, scatter(slot, i));
            stage2.map(ipa, pa).unwrap();
            map.insert(ipa, pa);
        }
        self.hyp.create_guest(GuestId(id), stage2).unwrap();
        Guest {
            id: GuestId(id),
            base,
            map,
            next: 0,
            free: Vec::new(),
            rpc_bufs: HashMap::new(),
            next_cookie: 0x1000,
            rpc_mode: RpcMode::Good,
            served: Vec::new(),
            last_freed: None,
        }
    }

    /// Caps the hypervisor's page pool (None: the whole pool).
    pub fn hyp_memory_limit(&mut self, limit: Option<usize>) {
        self.hyp.memory_mut().limit = limit;
    }

    /// The core's agreement checker and the mediator's own.
    pub fn check(&self) {
        teeshm_testkit::assert_agreement(self.tee());
        let v = self.hyp.check_agreement();
        assert!(v.is_empty(), "mediator: {v:#?}");
    }

    pub fn stats(&self, g: &Guest) -> GuestStats {
        self.hyp.stats(g.id).unwrap()
    }

    /// Destroys `g` and checks that nothing of it is left anywhere.
    pub fn destroy_and_check(&mut self, g: &Guest) {
        self.hyp.destroy_guest(g.id).unwrap();
        assert_eq!(self.hyp.pinned_pages(g.id), 0);
        assert!(self.hyp.stats(g.id).is_none());
        assert!(
            self.tee().guest(g.id).is_none(),
            "the core still holds {}",
            g.id
        );
        self.check();
    }

    /// Shadow pages held by the hypervisor (its own count and the pool's must agree).
    pub fn shadows_held(&self) -> u64 {
        let counted = self.hyp.shadow_pages();
        assert_eq!(
            counted,
            self.hyp.memory().held.len() as u64,
            "shadow count vs pool"
        );
        counted
    }
}

/// How a guest answers RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcMode {
    /// As a good driver: page lists of IPAs.
    Good,
    /// SHM_ALLOC answered with a contiguous IPA range (scattered in machine memory).
    Contiguous,
    /// RPC_ALLOC answered with an IPA outside the guest's RAM.
    AllocOutside,
    /// SHM_ALLOC answered with a page list whose last page lies outside the guest's RAM.
    ShmAllocOutside,
    /// SHM_ALLOC answered with a list page outside the guest's RAM.
    ShmAllocListOutside,
    /// SHM_ALLOC answered with a memref that is not a TMEM_OUTPUT.
    ShmAllocBadAttr,
}

/// A call that returned to the guest (done, or waiting for an RPC answer).
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub out: SmcRegs,
    pub arg_ipa: u64,
    pub arg_size: u64,
}

pub struct Guest {
    pub id: GuestId,
    pub base: u64,
    map: HashMap<u64, u64>,
    next: u64,
    free: Vec<u64>,
    /// Buffers the guest gave the TEE by RPC, by cookie.
    pub rpc_bufs: HashMap<u64, Buf>,
    next_cookie: u64,
    pub rpc_mode: RpcMode,
    /// RPC commands served (cmd values), in order.
    pub served: Vec<u32>,
    /// The last buffer the TEE freed by `SHM_FREE` (its pages keep their bytes).
    pub last_freed: Option<Buf>,
}

impl Guest {
    /// The first IPA past the guest's RAM (the next guest's first page).
    pub fn end(&self) -> u64 {
        self.base + GUEST_PAGES * PAGE
    }

    pub fn alloc_page(&mut self) -> u64 {
        if let Some(p) = self.free.pop() {
            return p;
        }
        assert!(self.next < GUEST_PAGES, "guest RAM exhausted");
        self.next += 1;
        self.base + (self.next - 1) * PAGE
    }

    pub fn alloc_pages(&mut self, n: u64) -> Vec<u64> {
        (0..n).map(|_| self.alloc_page()).collect()
    }

    /// `n` IPA-contiguous pages (never handed out singly again).
    pub fn alloc_contiguous(&mut self, n: u64) -> u64 {
        assert!(self.next + n <= GUEST_PAGES, "guest RAM exhausted");
        self.next += n;
        self.base + (self.next - n) * PAGE
    }

    pub fn free_pages(&mut self, pages: &[u64]) {
        self.free.extend_from_slice(pages);
    }

    pub fn cookie(&mut self) -> u64 {
        self.next_cookie += 1;
        self.next_cookie
    }

    pub fn pa(&self, ipa: u64) -> u64 {
        self.map[&(ipa & !(PAGE - 1))] + ipa % PAGE
    }

    pub fn write(&self, sys: &System, ipa: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = ipa + done as u64;
            let n = ((PAGE - at % PAGE) as usize).min(data.len() - done);
            sys.phys.write(self.pa(at), &data[done..done + n]);
            done += n;
        }
    }

    pub fn read(&self, sys: &System, ipa: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        let mut done = 0usize;
        while done < out.len() {
            let at = ipa + done as u64;
            let n = ((PAGE - at % PAGE) as usize).min(out.len() - done);
            sys.phys.read(self.pa(at), &mut out[done..done + n]);
            done += n;
        }
        out
    }

    /// A buffer of `size` bytes starting `offset` bytes into its first page (pages: IPAs).
    pub fn buffer(&mut self, size: u64, offset: u64) -> Buf {
        Buf {
            pages: self.alloc_pages(Buf::pages_needed(size, offset)),
            offset,
            size,
        }
    }

    /// The whole of `buf`, read through the guest's stage 2.
    /// The IPA of byte `at` of `buf`.
    pub fn buf_ipa(&self, buf: &Buf, at: u64) -> u64 {
        let x = buf.offset + at;
        buf.pages[(x / PAGE) as usize] + x % PAGE
    }

    pub fn read_buf(&self, sys: &System, buf: &Buf) -> Vec<u8> {
        buf.pieces(0, buf.size)
            .flat_map(|(ipa, range)| self.read(sys, ipa, range.len() as u64))
            .collect()
    }

    /// Fills the whole of `buf` with `f(byte index)`, through the guest's stage 2.
    pub fn fill_buf(&self, sys: &System, buf: &Buf, f: impl Fn(u64) -> u8) {
        for (ipa, range) in buf.pieces(0, buf.size) {
            let bytes: Vec<u8> = (range.start as u64..range.end as u64).map(&f).collect();
            self.write(sys, ipa, &bytes);
        }
    }

    /// Writes the page list of `buf` (IPAs) into fresh guest pages; returns `buf_ptr` (an IPA)
    /// and the list pages.
    pub fn page_list(&mut self, sys: &System, buf: &Buf) -> (u64, Vec<u64>) {
        let lists = self.alloc_pages(page_list::list_pages_needed(buf.pages.len() as u64));
        let mut writes = Vec::new();
        let buf_ptr =
            page_list::encode_with::<()>(&buf.pages, buf.offset, buf.size, &lists, |ipa, bytes| {
                writes.push((ipa, bytes.to_vec()));
                Ok(())
            })
            .unwrap();
        for (ipa, bytes) in writes {
            self.write(sys, ipa, &bytes);
        }
        (buf_ptr, lists)
    }

    /// One SMC as the guest (with garbage in a7, which the mediator must overwrite).
    pub fn smc(&self, sys: &System, func: u32, args: &[u64]) -> SmcRegs {
        let mut regs = SmcRegs::call(func, args);
        regs.a[7] = 0xdead_0000 | 0x7;
        sys.hyp.handle_guest_smc(self.id, regs)
    }

    /// Writes the arg at `offset` in a fresh guest page and makes the CALL_WITH_ARG; returns
    /// at the first answer (done or RPC).
    pub fn start(
        &mut self,
        sys: &System,
        header: MsgArgHeader,
        params: &[MsgParam],
        offset: u64,
    ) -> Started {
        let bytes = arg_bytes(header, params);
        let page = self.alloc_page();
        self.write(sys, page, &vec![0u8; PAGE as usize]);
        let arg_ipa = page + offset;
        self.write(sys, arg_ipa, &bytes);
        let (hi, lo) = split_pair(arg_ipa);
        let out = self.smc(sys, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo, 0]);
        Started {
            out,
            arg_ipa,
            arg_size: bytes.len() as u64,
        }
    }

    /// Answers RPCs until the call ends, then reads the arg back.
    pub fn finish(&mut self, sys: &System, started: Started) -> Reply {
        let mut out = started.out;
        let mut rpcs = Vec::new();
        while is_rpc_return(out.a0()) {
            rpcs.push(out.a0());
            assert!(rpcs.len() < 64, "RPC loop");
            let answer = self.answer_rpc(sys, &out);
            out = self.smc(sys, answer.a0(), &answer.a[1..6]);
        }
        Reply {
            rpcs,
            ..self.reply(sys, out.a0(), started)
        }
    }

    /// Reads the arg of a call that ended with `a0` back (no RPCs recorded).
    pub fn reply(&mut self, sys: &System, a0: u32, started: Started) -> Reply {
        let back = self.read(sys, started.arg_ipa, started.arg_size);
        self.free_pages(&[started.arg_ipa & !(PAGE - 1)]);
        let (header, params) = parse_arg(&back);
        Reply {
            a0,
            header,
            params,
            rpcs: Vec::new(),
        }
    }

    pub fn call(&mut self, sys: &System, header: MsgArgHeader, params: &[MsgParam]) -> Reply {
        let s = self.start(sys, header, params, 0);
        self.finish(sys, s)
    }

    /// The registers this guest answers an RPC with (IPAs everywhere).
    pub fn answer_rpc(&mut self, sys: &System, out: &SmcRegs) -> SmcRegs {
        let a = out.a;
        let thread = a[3];
        match out.a0() {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let page = if self.rpc_mode == RpcMode::AllocOutside {
                    self.end()
                } else {
                    self.alloc_page()
                };
                let cookie = self.cookie();
                self.rpc_bufs.insert(
                    cookie,
                    Buf {
                        pages: vec![page],
                        offset: 0,
                        size: PAGE,
                    },
                );
                let (p_hi, p_lo) = split_pair(page);
                let (c_hi, c_lo) = split_pair(cookie);
                SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[p_hi, p_lo, thread, c_hi, c_lo],
                )
            }
            OPTEE_SMC_RETURN_RPC_FREE => {
                let cookie = reg_pair(a[1], a[2]);
                let buf = self
                    .rpc_bufs
                    .remove(&cookie)
                    .expect("RPC_FREE of an unknown cookie");
                self.free_pages(&buf.pages);
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let cookie = reg_pair(a[1], a[2]);
                let at = self.rpc_bufs[&cookie].pages[0];
                self.serve_rpc_cmd(sys, at);
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            _ => SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]),
        }
    }

    fn serve_rpc_cmd(&mut self, sys: &System, at: u64) {
        let mut raw = self.read(sys, at, 160);
        let (hdr, rest) = MsgArgHeader::mut_from_prefix(&mut raw).unwrap();
        let n = hdr.num_params.get() as usize;
        let params = <[MsgParam]>::mut_from_prefix_with_elems(rest, n).unwrap().0;
        self.served.push(hdr.cmd.get());
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => {
                let size = params[0].value().b.get();
                let cookie = self.cookie();
                let noncontig = OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG;
                match self.rpc_mode {
                    RpcMode::Contiguous => {
                        let n = size.div_ceil(PAGE);
                        let first = self.alloc_contiguous(n);
                        let buf = Buf {
                            pages: (0..n).map(|i| first + i * PAGE).collect(),
                            offset: 0,
                            size,
                        };
                        params[0] = MsgParam::from_tmem(
                            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                            Tmem::new(first, size, cookie),
                        );
                        self.rpc_bufs.insert(cookie, buf);
                    }
                    RpcMode::ShmAllocBadAttr => {
                        let buf = self.buffer(size, 0);
                        params[0] = MsgParam::from_rmem(
                            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
                            Rmem::new(0, size, cookie),
                        );
                        self.rpc_bufs.insert(cookie, buf);
                    }
                    mode => {
                        let mut buf = self.buffer(size, 0);
                        if mode == RpcMode::ShmAllocOutside {
                            *buf.pages.last_mut().unwrap() = self.end();
                        }
                        let (mut buf_ptr, lists) = self.page_list(sys, &buf);
                        if mode == RpcMode::ShmAllocListOutside {
                            buf_ptr = self.end();
                        }
                        self.free_pages(&lists);
                        params[0] =
                            MsgParam::from_tmem(noncontig, Tmem::new(buf_ptr, size, cookie));
                        self.rpc_bufs.insert(cookie, buf);
                    }
                }
                hdr.ret.set(gp::TEE_SUCCESS);
            }
            OPTEE_RPC_CMD_SHM_FREE => {
                let cookie = params[0].value().b.get();
                let ok = match self.rpc_bufs.remove(&cookie) {
                    Some(buf) => {
                        let own: Vec<u64> = buf
                            .pages
                            .iter()
                            .copied()
                            .filter(|&p| p < self.end())
                            .collect();
                        self.free_pages(&own);
                        self.last_freed = Some(buf);
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
        self.write(sys, at, &raw);
    }

    pub fn register(&mut self, sys: &System, cookie: u64, buf: &Buf) -> u32 {
        let (buf_ptr, lists) = self.page_list(sys, buf);
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, cookie),
        );
        let r = self.call(sys, header(OPTEE_MSG_CMD_REGISTER_SHM), &[p]);
        self.free_pages(&lists);
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        r.ret()
    }

    pub fn unregister(&mut self, sys: &System, cookie: u64) -> u32 {
        let p = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
        let r = self.call(sys, header(OPTEE_MSG_CMD_UNREGISTER_SHM), &[p]);
        assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
        r.ret()
    }

    pub fn open_session(&mut self, sys: &System) -> u32 {
        let params = open_session_params(MEMTEST_UUID);
        let r = self.call(sys, header(OPTEE_MSG_CMD_OPEN_SESSION), &params);
        assert_eq!((r.a0, r.ret()), (0, gp::TEE_SUCCESS), "open session");
        r.header.session.get()
    }

    pub fn invoke(&mut self, sys: &System, session: u32, func: u32, params: &[MsgParam]) -> Reply {
        self.call(sys, invoke_header(session, func), params)
    }

    /// A NONCONTIG tmem param for `buf` (its list pages stay allocated: tests are short).
    pub fn tmem_list(&mut self, sys: &System, ty: u64, buf: &Buf) -> MsgParam {
        let (buf_ptr, _) = self.page_list(sys, buf);
        MsgParam::from_tmem(
            ty | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, buf.size, 0),
        )
    }
}
