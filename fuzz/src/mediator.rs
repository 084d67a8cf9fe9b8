//! The `mediator` target: guests' SMCs, args, page lists and RPC answers through `teeshm-hyp`
//! over a real core configured exactly as the QEMU firmware is
//! (`CoreConfig::qemu_virt(NormalWorld::Virtualized)`), with guests created and destroyed.
//!
//! A program of at most 64 steps is decoded from the input. Five guest slots (ids 1..=5, one
//! more than the mediator admits), each with 64 pages of RAM scattered over normal-world RAM at
//! IPAs 16 MiB apart, so another guest's addresses are never RAM of this one. Steps: guests
//! created and destroyed; raw bytes written into guest RAM; args built from the input (every
//! command, parameter type and flag, NONCONTIG lists of own, foreign, outside and arbitrary
//! IPAs, cookies live and dead) and called at any address; raw SMCs with any function and
//! registers (bogus resumes, fast calls, VM calls from a guest); RPC answers, well-behaved or
//! hostile (RPC args outside RAM or too small, duplicate cookies, SHM_ALLOC answers as lists,
//! contiguous ranges or garbage); ballooning (a page taken from a guest and given back); and a
//! *probe*: a guest that holds nothing in the mediator registers and unregisters one page,
//! which must succeed whatever the other guests hold (its shares are reserved).
//!
//! After every step: every answer to a guest is an OP-TEE code; the core's `check_agreement()`
//! and the mediator's `check()` find nothing; the hypervisor's pool holds exactly the pages the
//! mediator accounts for, and the live guests' shares fit the pool; the mediator and the core
//! know the same guests. At the end every guest is destroyed: no shadow page, pin, guest,
//! busy thread or window mapping is left.
//!
//! The mediator's budgets are small (4 calls, 8 buffers, 64 pins, buffers of 32 pages, 6
//! shadow pages) and its pool exactly four shares, so inputs reach every limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::testing::{NS_RAM, PhysMemory, SimPlatform, sim_memory_map};
use teeshm_core::thread::ThreadState;
use teeshm_core::{CoreConfig, NormalWorld, Tee};
use teeshm_hyp::{HypConfig, HypError, HypLimits, MachineMemory, Mediator, Stage2};
use teeshm_platform::RecordingTlb;
use zerocopy::{FromBytes, IntoBytes};

const PAGE: u64 = 4096;
/// Pages of RAM per guest.
const GUEST_PAGES: u64 = 64;
/// Guest slots (one more than the mediator admits).
const SLOTS: usize = 5;
/// Guest RAM starts here; slot `s` at `IPA_BASE + s * IPA_STRIDE`.
const IPA_BASE: u64 = 0x8000_0000;
const IPA_STRIDE: u64 = 16 << 20;
/// The mediator's budgets.
pub const LIMITS: HypLimits = HypLimits {
    max_calls: 4,
    max_buffers: 8,
    max_pinned_pages: 64,
    max_buffer_pages: 32,
    max_shadow_pages: 6,
};
/// Guests the mediator admits (the core's preset admits as many).
const MAX_GUESTS: u32 = 4;
/// The hypervisor's pool: exactly the guests' shares, at 8 MiB into NS RAM.
const POOL_PAGES: u64 = MAX_GUESTS as u64 * 6;
const POOL_BASE: u64 = NS_RAM.0 + (8 << 20);
/// Pages the probe uses (the last three of a guest's RAM): data, list, arg.
const PROBE_PAGES: u64 = GUEST_PAGES - 3;
/// The probe's cookie (never one the program picks).
const PROBE_COOKIE: u64 = 0x7072_6f62_6500;

/// A cursor over the fuzz input; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head.to_vec()
    }
    fn le(&mut self, n: usize) -> u64 {
        let mut v = [0u8; 8];
        let b = self.bytes(n);
        v[..b.len()].copy_from_slice(&b);
        u64::from_le_bytes(v)
    }
    fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }
    fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }
    fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }
    fn u64(&mut self) -> u64 {
        self.le(8)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

/// The core behind the mediator: an SMC is a call into it. Every answer to a yielding call is
/// checked to be an OP-TEE code.
struct Core {
    tee: Arc<Tee<SimPlatform>>,
}

impl SmcConduit for Core {
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs {
        let out = self.tee.handle_smc(regs);
        if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
            eprintln!("  tee {:x?}\n   -> {:x?}", regs.a, out.a);
        }
        if !is_fast_call(regs.a0()) {
            assert!(
                valid_yielding_answer(&out),
                "the core answered {:x?}",
                out.a
            );
        }
        out
    }
}

fn valid_yielding_answer(out: &SmcRegs) -> bool {
    let a0 = out.a0();
    out.a[0] >> 32 == 0
        && (a0 <= OPTEE_SMC_RETURN_ENOTAVAIL
            || a0 == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
            || is_rpc_return(a0))
}

/// The hypervisor's pool over simulated memory: `POOL_PAGES` pages, a double free or a free of
/// a page not handed out is a crash.
struct Pool {
    phys: Arc<PhysMemory>,
    free: Vec<u64>,
    held: BTreeSet<u64>,
}

impl MachineMemory for Pool {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        self.phys.read(pa, buf);
    }
    fn write(&self, pa: u64, data: &[u8]) {
        self.phys.write(pa, data);
    }
    fn alloc_page(&mut self) -> Option<u64> {
        let pa = self.free.pop()?;
        assert!(self.held.insert(pa));
        Some(pa)
    }
    fn free_page(&mut self, pa: u64) {
        assert!(
            self.held.remove(&pa),
            "the mediator freed {pa:#x}, which it does not hold"
        );
        self.free.push(pa);
    }
    fn pool_pages(&self) -> u64 {
        POOL_PAGES
    }
}

/// What the harness's normal world of one slot knows.
#[derive(Default)]
struct Slot {
    /// RPC arg buffers it gave, by cookie: their IPA.
    rpc_args: BTreeMap<u64, u64>,
    /// Cookies it registered successfully (as far as it knows).
    cookies: Vec<u64>,
    /// Sessions it opened.
    sessions: Vec<u32>,
    next_cookie: u64,
}

fn id(slot: usize) -> GuestId {
    GuestId(slot as u16 + 1)
}

fn base(slot: usize) -> u64 {
    IPA_BASE + slot as u64 * IPA_STRIDE
}

/// PA of slot `slot`'s page `i`: an odd multiplier is a bijection modulo 512, so guests never
/// share a frame and neighbouring pages land far apart (all in the first 2 MiB of NS RAM).
fn guest_pa(slot: usize, i: u64) -> u64 {
    let x = slot as u64 * GUEST_PAGES + i;
    NS_RAM.0 + (x.wrapping_mul(97) % 512) * PAGE
}

fn stage2(slot: usize) -> Stage2 {
    let mut s = Stage2::new();
    for i in 0..GUEST_PAGES {
        s.map(base(slot) + i * PAGE, guest_pa(slot, i))
            .expect("fresh pages");
    }
    s
}

/// The window with no guest: compacted, for the comparison at the end.
fn window_baseline(tee: &Tee<SimPlatform>) -> (usize, usize, usize) {
    let mut window = tee.window();
    window.shm_mut().compact_tables();
    (
        window.shm().mappings().count(),
        window.shm().va_window().live_count(),
        window.shm().table_stats().live,
    )
}

struct World {
    hyp: Mediator<Core, Pool>,
    tee: Arc<Tee<SimPlatform>>,
    phys: Arc<PhysMemory>,
    slots: Vec<Slot>,
    /// Calls waiting for their guest's RPC answer: slot and the registers the guest got.
    pending: Vec<(usize, SmcRegs)>,
    baseline: (usize, usize, usize),
}

/// The configuration the firmware boots with, virtualized: what this target fuzzes.
pub fn core_config() -> CoreConfig {
    CoreConfig::qemu_virt(NormalWorld::Virtualized)
}

impl World {
    fn new() -> Self {
        let phys = Arc::new(PhysMemory::new());
        let config = core_config();
        config
            .capacity()
            .expect("the firmware's configuration fits");
        let tee = Arc::new(
            Tee::new(
                config,
                sim_memory_map(),
                SimPlatform::new(phys.clone()),
                RecordingTlb::counting(),
            )
            .expect("the firmware's configuration boots"),
        );
        let pool = Pool {
            phys: phys.clone(),
            free: (0..POOL_PAGES)
                .rev()
                .map(|i| POOL_BASE + i * PAGE)
                .collect(),
            held: BTreeSet::new(),
        };
        let hyp_config = HypConfig {
            max_guests: MAX_GUESTS,
            limits: LIMITS,
            ..HypConfig::default()
        };
        let hyp = Mediator::new(Core { tee: tee.clone() }, pool, hyp_config)
            .expect("the budgets fit the pool");
        let baseline = window_baseline(&tee);
        Self {
            hyp,
            tee,
            phys,
            slots: (0..SLOTS)
                .map(|s| Slot {
                    next_cookie: 0x100 * (s as u64 + 1),
                    ..Slot::default()
                })
                .collect(),
            pending: Vec::new(),
            baseline,
        }
    }

    fn live(&self, slot: usize) -> bool {
        self.hyp.stats(id(slot)).is_some()
    }

    /// A guest's SMC through the mediator (a7 full of garbage, which the mediator replaces).
    fn smc(&mut self, slot: usize, regs: SmcRegs) -> SmcRegs {
        let mut regs = regs;
        regs.a[7] = 0xdead_0007;
        let out = self.hyp.handle_guest_smc(id(slot), regs);
        if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
            eprintln!("guest {} {:x?}\n -> {:x?}", slot + 1, regs.a, out.a);
        }
        if !is_fast_call(regs.a0()) {
            assert!(
                valid_yielding_answer(&out),
                "the mediator answered guest {} {:x?}",
                slot + 1,
                out.a
            );
        }
        out
    }

    fn write(&self, slot: usize, ipa: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = ipa.wrapping_add(done as u64);
            let n = ((PAGE - at % PAGE) as usize).min(data.len() - done);
            if let Some(pa) = self.hyp.stage2(id(slot)).and_then(|s| s.translate(at)) {
                self.phys.write(pa, &data[done..done + n]);
            }
            done += n;
        }
    }

    fn read(&self, slot: usize, ipa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let at = ipa.wrapping_add(done as u64);
            let n = ((PAGE - at % PAGE) as usize).min(len - done);
            if let Some(pa) = self.hyp.stage2(id(slot)).and_then(|s| s.translate(at)) {
                self.phys.read(pa, &mut out[done..done + n]);
            }
            done += n;
        }
        out
    }

    /// Addresses a program picks from: the guest's own pages (with and without an offset),
    /// another guest's, just outside its RAM, edges, anything.
    fn address(&self, slot: usize, input: &mut Input) -> u64 {
        match input.u8() % 10 {
            0..=4 => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
            5 => {
                base(slot)
                    + u64::from(input.u8()) % GUEST_PAGES * PAGE
                    + u64::from(input.u16() % 4096)
            }
            6 => base((slot + 1 + usize::from(input.u8())) % SLOTS) + u64::from(input.u8()) * PAGE,
            7 => input.pick(&[
                base(slot) - PAGE,
                base(slot) + GUEST_PAGES * PAGE,
                base(slot) + GUEST_PAGES * PAGE - 8,
                0,
                u64::MAX,
                !(PAGE - 1),
                guest_pa(slot, 0),
                POOL_BASE,
            ]),
            8 => u64::from(input.u16()),
            _ => input.u64(),
        }
    }

    fn cookie(&mut self, slot: usize, input: &mut Input) -> u64 {
        let s = &self.slots[slot];
        match input.u8() % 6 {
            0..=2 if !s.cookies.is_empty() => s.cookies[usize::from(input.u8()) % s.cookies.len()],
            3 => u64::from(input.u8() % 8),
            4 => input.u64(),
            _ => {
                let s = &mut self.slots[slot];
                s.next_cookie += 1;
                s.next_cookie
            }
        }
    }

    /// Writes a NONCONTIG page list at own page `list` (offset `offset`) naming `n` pages;
    /// returns `buf_ptr` (an IPA).
    fn write_list(&self, slot: usize, input: &mut Input, list: u64, n: usize) -> u64 {
        let mut entries = vec![0u64; 512];
        for e in entries.iter_mut().take(n.min(511)) {
            *e = match input.u8() % 8 {
                0 => self.address(slot, input),
                _ => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
            };
        }
        entries[511] = match input.u8() % 4 {
            0 => self.address(slot, input),
            _ => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
        };
        let list_ipa = base(slot) + list % GUEST_PAGES * PAGE;
        self.write(slot, list_ipa, entries.as_bytes());
        list_ipa | u64::from(input.u16() % 4096)
    }

    /// Builds an arg from the input in guest page `page` at `offset`; returns its IPA.
    fn write_arg(&mut self, slot: usize, input: &mut Input) -> u64 {
        let page = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
        let offset = match input.u8() % 4 {
            0 => u64::from(input.u16() % 4096),
            _ => u64::from(input.u8() % 32) * 8,
        };
        let cmd = match input.u8() % 16 {
            0..=2 => OPTEE_MSG_CMD_REGISTER_SHM,
            3..=4 => OPTEE_MSG_CMD_UNREGISTER_SHM,
            5..=9 => OPTEE_MSG_CMD_INVOKE_COMMAND,
            10..=11 => OPTEE_MSG_CMD_OPEN_SESSION,
            12 => OPTEE_MSG_CMD_CLOSE_SESSION,
            13 => OPTEE_MSG_CMD_CANCEL,
            14 => u32::from(input.u8()),
            _ => input.u32(),
        };
        let mut h = MsgArgHeader::default();
        h.cmd.set(cmd);
        h.func.set(u32::from(input.u8() % 7));
        let sessions = &self.slots[slot].sessions;
        h.session
            .set(if sessions.is_empty() || input.u8() % 4 == 0 {
                u32::from(input.u8() % 4)
            } else {
                sessions[usize::from(input.u8()) % sessions.len()]
            });
        let n = match input.u8() % 16 {
            15 => input.u32(),
            k => u32::from(k % 5),
        };
        h.num_params.set(n);
        let mut params = Vec::new();
        if cmd == OPTEE_MSG_CMD_OPEN_SESSION && input.u8() % 4 != 0 {
            let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
            let lo = u64::from_le_bytes(MEMTEST_UUID[..8].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(MEMTEST_UUID[8..].try_into().expect("8 bytes"));
            params.push(MsgParam::from_value(meta, Value::new(lo, hi, 0)));
            params.push(MsgParam::from_value(meta, Value::new(0, 0, 0)));
        }
        while params.len() < n.min(6) as usize {
            params.push(self.param(slot, cmd, params.len(), input));
        }
        let mut bytes = h.as_bytes().to_vec();
        for p in &params {
            bytes.extend_from_slice(p.as_bytes());
        }
        let ipa = page + offset;
        let room = (PAGE - offset) as usize;
        self.write(slot, ipa, &bytes[..bytes.len().min(room)]);
        ipa
    }

    fn param(&mut self, slot: usize, cmd: u32, index: usize, input: &mut Input) -> MsgParam {
        const TMEM: [u64; 3] = [
            OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
            OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
        ];
        const RMEM: [u64; 3] = [
            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
        ];
        let kind = match (cmd, index) {
            (OPTEE_MSG_CMD_REGISTER_SHM, 0) if input.u8() % 4 != 0 => 0,
            (OPTEE_MSG_CMD_UNREGISTER_SHM, 0) if input.u8() % 4 != 0 => 1,
            _ => input.u8() % 6,
        };
        match kind {
            0 => {
                // A NONCONTIG list, mostly of own pages.
                let n = usize::from(input.u8() % 40) + 1;
                let list = u64::from(input.u8());
                let buf_ptr = self.write_list(slot, input, list, n);
                let size = match input.u8() % 4 {
                    0 => input.u64(),
                    _ => (n as u64 * PAGE)
                        .saturating_sub(buf_ptr % PAGE + u64::from(input.u16() % 4096)),
                };
                let ty = if cmd == OPTEE_MSG_CMD_REGISTER_SHM {
                    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT
                } else {
                    input.pick(&TMEM)
                };
                let cookie = self.cookie(slot, input);
                MsgParam::from_tmem(
                    ty | OPTEE_MSG_ATTR_NONCONTIG,
                    Tmem::new(buf_ptr, size, cookie),
                )
            }
            1 => {
                let ty = if cmd == OPTEE_MSG_CMD_UNREGISTER_SHM {
                    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT
                } else {
                    input.pick(&RMEM)
                };
                let cookie = self.cookie(slot, input);
                let offs = u64::from(input.u16() % 8192);
                let size = u64::from(input.u16() % 20_000);
                MsgParam::from_rmem(ty, Rmem::new(offs, size, cookie))
            }
            2 => {
                // A contiguous tmem: NULL (mediated) or an address (refused).
                let ptr = if input.u8() % 2 == 0 {
                    0
                } else {
                    self.address(slot, input)
                };
                MsgParam::from_tmem(input.pick(&TMEM), Tmem::new(ptr, u64::from(input.u16()), 0))
            }
            3 => MsgParam::from_value(
                input.u64() % 0x100,
                Value::new(input.u64(), input.u64(), input.u64()),
            ),
            _ => MsgParam::from_value(
                input.pick(&[
                    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
                    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
                    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
                ]),
                Value::new(
                    match input.u8() % 3 {
                        0 => u64::from(input.u16()),
                        1 => u64::from(input.u8() % 4) * PAGE + u64::from(input.u8()),
                        _ => input.u64(),
                    },
                    u64::from(input.u8() % 4),
                    u64::from(input.u8()),
                ),
            ),
        }
    }

    /// Reads back the arg of a finished call and learns sessions and cookies from it.
    fn learn(&mut self, slot: usize, ipa: u64) {
        let bytes = self.read(slot, ipa, 64);
        let Ok((h, rest)) = MsgArgHeader::read_from_prefix(&bytes) else {
            return;
        };
        trace(format_args!(
            "guest {} message {:#x}: ret {:#x} origin {}",
            slot + 1,
            h.cmd.get(),
            h.ret.get(),
            h.ret_origin.get()
        ));
        if h.ret.get() != TEE_SUCCESS {
            return;
        }
        let s = &mut self.slots[slot];
        match h.cmd.get() {
            OPTEE_MSG_CMD_OPEN_SESSION if s.sessions.len() < 8 => s.sessions.push(h.session.get()),
            OPTEE_MSG_CMD_REGISTER_SHM => {
                if let Ok((p, _)) = MsgParam::read_from_prefix(rest) {
                    if s.cookies.len() < 16 {
                        s.cookies.push(p.tmem().shm_ref.get());
                    }
                }
            }
            _ => {}
        }
    }

    /// Remembers or forgets a call by what the mediator answered the guest.
    fn track(&mut self, slot: usize, out: SmcRegs) {
        if is_rpc_return(out.a0()) {
            self.pending
                .retain(|(s, o)| !(*s == slot && o.a[3] == out.a[3]));
            self.pending.push((slot, out));
        }
    }

    /// The guest's answer to the RPC `out`: well-behaved (`good`) or hostile.
    fn answer(&mut self, slot: usize, out: &SmcRegs, good: bool, input: &mut Input) -> SmcRegs {
        let thread = out.a[3];
        let pair = |hi: u64, lo: u64| ((hi & 0xffff_ffff) << 32) | (lo & 0xffff_ffff);
        let resume = |a: [u64; 5]| SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &a);
        match out.a0() {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let ipa = if good {
                    // A page of its own (from the upper half, away from most args).
                    base(slot) + (32 + u64::from(input.u8()) % 28) * PAGE
                } else {
                    match input.u8() % 3 {
                        0 => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE + PAGE - 64,
                        _ => self.address(slot, input),
                    }
                };
                let cookie = if good || input.u8() % 2 == 0 {
                    let s = &mut self.slots[slot];
                    s.next_cookie += 1;
                    s.next_cookie
                } else {
                    self.cookie(slot, input)
                };
                self.slots[slot].rpc_args.insert(cookie, ipa);
                resume([
                    ipa >> 32,
                    ipa & 0xffff_ffff,
                    thread,
                    cookie >> 32,
                    cookie & 0xffff_ffff,
                ])
            }
            OPTEE_SMC_RETURN_RPC_FREE => {
                self.slots[slot].rpc_args.remove(&pair(out.a[1], out.a[2]));
                resume([0, 0, thread, 0, 0])
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let cookie = pair(out.a[1], out.a[2]);
                if let Some(&at) = self.slots[slot].rpc_args.get(&cookie) {
                    if good {
                        self.serve_cmd(slot, at, input);
                    } else {
                        let n = usize::from(input.u8() % 200);
                        let bytes = input.bytes(n);
                        let at = at.wrapping_add(u64::from(input.u8() % 64));
                        self.write(slot, at, &bytes);
                    }
                }
                resume([0, 0, thread, 0, 0])
            }
            _ => resume([0, 0, thread, 0, 0]),
        }
    }

    /// Serves the RPC command in the guest's RPC arg at `at`: SHM_ALLOC with a page list (or a
    /// contiguous range), SHM_FREE.
    fn serve_cmd(&mut self, slot: usize, at: u64, input: &mut Input) {
        let mut raw = self.read(slot, at, 64);
        let Ok((hdr, rest)) = MsgArgHeader::mut_from_prefix(&mut raw[..]) else {
            return;
        };
        let Ok((param, _)) = MsgParam::mut_from_prefix(rest) else {
            return;
        };
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => {
                let size = param.value().b.get();
                let pages = size.div_ceil(PAGE);
                if size == 0 || pages > 40 {
                    hdr.ret.set(TEE_ERROR_OUT_OF_MEMORY);
                } else if input.u8() % 4 == 0 {
                    // A contiguous range of its RAM.
                    let first = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
                    let cookie = self.cookie(slot, input);
                    *param = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                        Tmem::new(first, size, cookie),
                    );
                    hdr.ret.set(TEE_SUCCESS);
                } else {
                    let data: Vec<u64> = (0..pages)
                        .map(|_| base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE)
                        .collect();
                    let list = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
                    let mut writes = Vec::new();
                    let encoded =
                        page_list::encode_with::<()>(&data, 0, size, &[list], |ipa, b| {
                            writes.push((ipa, b.to_vec()));
                            Ok(())
                        });
                    for (ipa, b) in writes {
                        self.write(slot, ipa, &b);
                    }
                    let cookie = self.cookie(slot, input);
                    match encoded {
                        Ok(buf_ptr) => {
                            *param = MsgParam::from_tmem(
                                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                Tmem::new(buf_ptr, size, cookie),
                            );
                            hdr.ret.set(TEE_SUCCESS);
                        }
                        Err(_) => hdr.ret.set(TEE_ERROR_OUT_OF_MEMORY),
                    }
                }
            }
            OPTEE_RPC_CMD_SHM_FREE => hdr.ret.set(TEE_SUCCESS),
            _ => hdr.ret.set(TEE_ERROR_OUT_OF_MEMORY),
        }
        self.write(slot, at, &raw);
    }

    /// A guest holding nothing in the mediator registers and unregisters one page: its shares
    /// are reserved, so this must succeed whatever the other guests hold.
    fn probe(&mut self, slot: usize) {
        trace(format_args!("guest {} probe", slot + 1));
        let data = base(slot) + PROBE_PAGES * PAGE;
        let list = data + PAGE;
        let arg = list + PAGE;
        let mut entries = vec![0u64; 512];
        entries[0] = data;
        self.write(slot, list, entries.as_bytes());
        let run = |w: &mut World, cmd: u32, p: MsgParam, what: &str| {
            let mut h = MsgArgHeader::default();
            h.cmd.set(cmd);
            h.num_params.set(1);
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(p.as_bytes());
            w.write(slot, arg, &bytes);
            let out = w.smc(
                slot,
                SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[arg >> 32, arg & 0xffff_ffff]),
            );
            let back = w.read(slot, arg, 32);
            let (r, _) = MsgArgHeader::read_from_prefix(&back).expect("32 bytes");
            assert_eq!(
                (out.a0(), r.ret.get()),
                (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
                "guest {} holds nothing in the mediator, yet its {what} failed; mediator: \
                 {:?}, core: {:?}",
                slot + 1,
                w.hyp.stats(id(slot)),
                w.tee.guest(id(slot)).map(|g| g.snapshot())
            );
        };
        let register = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list, PAGE, PROBE_COOKIE),
        );
        run(self, OPTEE_MSG_CMD_REGISTER_SHM, register, "registration");
        let unregister = MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            Rmem::new(0, 0, PROBE_COOKIE),
        );
        run(
            self,
            OPTEE_MSG_CMD_UNREGISTER_SHM,
            unregister,
            "unregistration",
        );
    }

    /// Whether the core can reserve no thread for one more guest: every thread beyond one per
    /// admitted guest is lent out (the core's admission rule, `thread.rs`).
    fn threads_all_lent(&self) -> bool {
        let states = self.tee.thread_states();
        let admitted = self.tee.guests().len();
        let in_use = states.iter().filter(|t| **t != ThreadState::Free).count();
        let holders: BTreeSet<GuestId> = states
            .iter()
            .filter_map(|t| match t {
                ThreadState::Running(g) | ThreadState::Suspended(g) => Some(*g),
                ThreadState::Free => None,
            })
            .collect();
        let borrowed = in_use - holders.len();
        let shared_after = states.len().saturating_sub(admitted + 1);
        borrowed > shared_after
    }

    /// Everything that must hold after every step.
    fn check(&self) {
        let found = self.tee.check_agreement();
        assert!(
            found.is_empty(),
            "the core disagrees with itself: {found:#?}"
        );
        let found = self.hyp.check();
        assert!(
            found.is_empty(),
            "the mediator disagrees with itself: {found:#?}"
        );
        let held = self.hyp.memory().held.len() as u64;
        assert_eq!(
            held,
            self.hyp.shadow_pages(),
            "pool pages held vs accounted"
        );
        for slot in 0..SLOTS {
            assert_eq!(
                self.live(slot),
                self.tee.guest(id(slot)).is_some(),
                "the mediator and the core disagree on guest {}",
                slot + 1
            );
        }
    }

    /// Destroys every guest and checks that nothing is left anywhere.
    fn end(mut self) {
        for slot in 0..SLOTS {
            if self.live(slot) {
                self.hyp.destroy_guest(id(slot)).expect("a live guest");
            }
        }
        self.check();
        assert!(self.hyp.memory().held.is_empty(), "shadow pages left");
        assert!(self.tee.guests().is_empty(), "a guest survived in the core");
        assert!(
            self.tee
                .thread_states()
                .iter()
                .all(|t| *t == ThreadState::Free),
            "a thread still serves a destroyed guest"
        );
        assert_eq!(
            window_baseline(&self.tee),
            self.baseline,
            "something of a destroyed guest is left in the window"
        );
    }
}

/// Prints a line of the trace when `TEESHM_FUZZ_TRACE` is set.
fn trace(line: std::fmt::Arguments) {
    if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
        eprintln!("{line}");
    }
}

/// Raw SMC function ids a program picks from.
const FUNCS: [u32; 14] = [
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
];

/// The mediator target: a program of at most 64 steps, both checkers after each.
pub fn mediator(data: &[u8]) {
    let mut input = Input(data);
    let mut w = World::new();
    // Two guests from the start, so most programs reach calls at once.
    for slot in [0, 1] {
        w.hyp
            .create_guest(id(slot), stage2(slot))
            .expect("room for two guests");
    }
    let mut last_arg: [Option<u64>; SLOTS] = [None; SLOTS];
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        let slot = usize::from(input.u8()) % SLOTS;
        match input.u8() % 16 {
            0 => {
                let live: Vec<_> = w.hyp.guests().collect();
                let before: Vec<_> = live.iter().map(|&g| w.hyp.stats(g)).collect();
                // (A live guest's stage 2 is not built again: refused before it is used.)
                let s2 = if w.live(slot) {
                    Stage2::new()
                } else {
                    stage2(slot)
                };
                let created = w.hyp.create_guest(id(slot), s2);
                trace(format_args!("create guest {}: {created:?}", slot + 1));
                match created {
                    Ok(()) => {
                        assert!(live.len() < MAX_GUESTS as usize);
                        w.slots[slot] = Slot {
                            next_cookie: w.slots[slot].next_cookie,
                            ..Slot::default()
                        };
                    }
                    Err(e) => {
                        let legitimate = match e {
                            HypError::GuestExists { .. } | HypError::NoShare { .. } => true,
                            // The core admits a guest only while a thread can be reserved for
                            // it; threads the live guests borrowed do not count.
                            HypError::TeeRefused { .. } => w.threads_all_lent(),
                            _ => false,
                        };
                        assert!(legitimate, "guest {} refused: {e}", slot + 1);
                        // Nothing changed.
                        assert_eq!(w.hyp.guests().collect::<Vec<_>>(), live);
                        let after: Vec<_> = live.iter().map(|&g| w.hyp.stats(g)).collect();
                        assert_eq!(after, before);
                    }
                }
            }
            1 => {
                if w.hyp.destroy_guest(id(slot)).is_ok() {
                    assert_eq!(w.hyp.pinned_pages(id(slot)), 0);
                    w.pending.retain(|(s, _)| *s != slot);
                    w.slots[slot].rpc_args.clear();
                    w.slots[slot].cookies.clear();
                    w.slots[slot].sessions.clear();
                } else {
                    assert!(!w.live(slot));
                }
            }
            2 => {
                let ipa = w.address(slot, &mut input);
                let n = usize::from(input.u8() % 64);
                let bytes = input.bytes(n);
                w.write(slot, ipa, &bytes);
            }
            3..=6 => {
                let ipa = w.write_arg(slot, &mut input);
                last_arg[slot] = Some(ipa);
                let at = if input.u8() % 8 == 0 {
                    w.address(slot, &mut input)
                } else {
                    ipa
                };
                let out = w.smc(
                    slot,
                    SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[at >> 32, at & 0xffff_ffff, 0]),
                );
                if out.a0() == OPTEE_SMC_RETURN_OK {
                    w.learn(slot, ipa);
                }
                w.track(slot, out);
            }
            7 => {
                let func = match input.u8() % 4 {
                    0 => input.u32(),
                    _ => input.pick(&FUNCS),
                };
                let mut a = [0u64; 6];
                for v in &mut a {
                    *v = match input.u8() % 4 {
                        0 => w.address(slot, &mut input),
                        1 => u64::from(input.u8() % 8),
                        _ => input.u64(),
                    };
                }
                if func == OPTEE_SMC_CALL_RETURN_FROM_RPC && input.u8() % 2 == 0 {
                    // A resume of some call, maybe another guest's, maybe waiting for
                    // something else.
                    if let Some(&(_, o)) = w
                        .pending
                        .get(usize::from(input.u8()) % w.pending.len().max(1))
                    {
                        a[2] = o.a[3];
                    }
                }
                let regs = SmcRegs::call(func, &a);
                let out = w.smc(slot, regs);
                if func == OPTEE_SMC_CALL_RETURN_FROM_RPC && out.a0() != OPTEE_SMC_RETURN_ERESUME {
                    // The call it resumed moved on: forget its old request.
                    w.pending.retain(|(s, o)| !(*s == slot && o.a[3] == a[2]));
                }
                if func == OPTEE_SMC_CALL_WITH_ARG && out.a0() == OPTEE_SMC_RETURN_OK {
                    if let Some(ipa) = last_arg[slot] {
                        w.learn(slot, ipa);
                    }
                }
                w.track(slot, out);
            }
            8..=11 => {
                if w.pending.is_empty() {
                    continue;
                }
                let i = usize::from(input.u8()) % w.pending.len();
                let (s, out) = w.pending.remove(i);
                let good = input.u8() % 4 != 0;
                let answer = w.answer(s, &out, good, &mut input);
                let mut regs = answer;
                if !good && input.u8() % 4 == 0 {
                    regs.a[3] = input.u64() % 8;
                }
                let back = w.smc(s, regs);
                if back.a0() == OPTEE_SMC_RETURN_ERESUME {
                    // Not resumed: it still waits, if it existed.
                    if regs.a[3] == out.a[3] {
                        w.pending.push((s, out));
                    }
                } else {
                    w.track(s, back);
                }
            }
            12 => {
                // Ballooning: a page leaves the guest (refused while pinned) and comes back.
                let ipa = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
                if let Ok(pa) = w.hyp.unmap_guest_page(id(slot), ipa) {
                    w.hyp
                        .map_guest_page(id(slot), ipa, pa)
                        .expect("the page comes back");
                }
            }
            13 => {
                if w.hyp.stats(id(slot)) == Some(Default::default()) {
                    w.probe(slot);
                }
            }
            _ => {
                // The SHM cache, on or off, as a driver would at probe or shutdown.
                let func = if input.u8() % 2 == 0 {
                    OPTEE_SMC_ENABLE_SHM_CACHE
                } else {
                    OPTEE_SMC_DISABLE_SHM_CACHE
                };
                let out = w.smc(slot, SmcRegs::call(func, &[]));
                if func == OPTEE_SMC_DISABLE_SHM_CACHE && out.a0() == OPTEE_SMC_RETURN_OK {
                    let cookie = ((out.a[1] & 0xffff_ffff) << 32) | (out.a[2] & 0xffff_ffff);
                    w.slots[slot].rpc_args.remove(&cookie);
                }
            }
        }
        w.check();
    }
    w.end();
}
