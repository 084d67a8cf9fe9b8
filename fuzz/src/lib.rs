//! The harness shared by teeshm's fuzz targets (`fuzz_targets/`), kept out of the targets so a
//! crash input can be replayed by a plain test too (`cargo +nightly fuzz run TARGET FILE`, or a
//! regression test in the crate where the bug lives).
//!
//! - [`page_list`]: the NONCONTIG decoder over a normal-world memory made of the input, its
//!   contract checked on every success, and the encode/decode round trip.
//! - [`msg_arg`]: `split_arg` / `split_arg_mut` / `ParamType` over arbitrary bytes, then the
//!   same bytes as the arg page of a real call into a small core.
//! - [`smc_surface`]: a small core driven by a program decoded from the input: writes into
//!   normal-world memory, SMCs with registers from the OP-TEE function ids and arbitrary values,
//!   RPC answers (hostile or well-behaved), VM created / destroyed. After every step the core's
//!   agreement checker must find nothing; at the end every guest is destroyed and nothing may be
//!   left: no object, mapping, VA range, table page or thread.
//!
//! Every input does bounded work: few guests, small quotas, buffers of at most 16 pages, a
//! window of a few dozen pages, at most 16 RPC rounds per call.

use std::collections::BTreeMap;
use std::sync::Arc;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::page_list::{self, NsMemory};
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::testing::{DEVICES, NS_RAM, PhysMemory, SECURE_RAM, STATIC_POOL, SimPlatform};
use teeshm_core::thread::ThreadState;
use teeshm_core::{CoreConfig, GuestQuotas, Tee};
use teeshm_mm::{PhysAddr, PhysRange, ShmWindowConfig, VaWindowConfig, VirtAddr};
use teeshm_platform::RecordingTlb;
use zerocopy::{FromBytes, IntoBytes};

pub mod mediator;

const PAGE: u64 = 4096;

// ---- input ---------------------------------------------------------------------------------

/// A cursor over the fuzz input; reads past the end give zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// The rest.
    pub fn rest(&mut self) -> &'a [u8] {
        let all = self.data;
        self.data = &[];
        all
    }

    fn le(&mut self, n: usize) -> u64 {
        let mut v = [0u8; 8];
        let b = self.bytes(n);
        v[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(v)
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }

    /// Two bytes.
    pub fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }

    /// Four bytes.
    pub fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }

    /// Eight bytes.
    pub fn u64(&mut self) -> u64 {
        self.le(8)
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

// ---- page_list -----------------------------------------------------------------------------

/// Normal-world memory made of the input: page `pa` is chunk `(pa / 4096) % chunks` (zeros past
/// the end), a read of the page `fail` fails. Counts reads and checks the decoder's contract.
struct InputMemory<'a> {
    data: &'a [u8],
    fail: Option<u64>,
    reads: u64,
}

impl NsMemory for InputMemory<'_> {
    type Error = ();

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), ()> {
        assert_eq!(pa % PAGE, 0, "the decoder reads whole aligned pages");
        assert!(buf.len() <= PAGE as usize, "one page at most per read");
        self.reads += 1;
        if self.fail == Some(pa) {
            return Err(());
        }
        let chunks = self.data.len().div_ceil(PAGE as usize).max(1) as u64;
        let start = ((pa / PAGE) % chunks) as usize * PAGE as usize;
        buf.fill(0);
        if let Some(src) = self.data.get(start..) {
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
        }
        Ok(())
    }
}

/// Memory holding exactly some list pages (a round trip).
struct MapMemory(BTreeMap<u64, [u8; 4096]>);

impl NsMemory for MapMemory {
    type Error = ();

    fn read(&mut self, pa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let page = self.0.get(&pa).ok_or(())?;
        buf.copy_from_slice(&page[..buf.len()]);
        Ok(())
    }
}

fn round_trip(pages: &[u64], offset: u64, size: u64) {
    let n = pages.len() as u64;
    let lists: Vec<u64> = (0..page_list::list_pages_needed(n))
        .map(|i| 0x7000_0000 + i * 2 * PAGE)
        .collect();
    let encoded = page_list::encode(pages, offset, size, &lists).expect("valid input encodes");
    let mut written = BTreeMap::new();
    let buf_ptr = page_list::encode_with::<()>(pages, offset, size, &lists, |pa, bytes| {
        written.insert(pa, *bytes);
        Ok(())
    })
    .expect("valid input encodes");
    assert_eq!(buf_ptr, encoded.buf_ptr);
    for (pa, bytes) in lists.iter().zip(&encoded.pages) {
        assert_eq!(written.get(pa), Some(bytes), "encode and encode_with agree");
    }
    let decoded = page_list::decode(&mut MapMemory(written), buf_ptr, size, n)
        .expect("an encoded list decodes");
    assert_eq!(decoded.pages(), pages);
    assert_eq!(u64::from(decoded.offset()), offset);
    assert_eq!(decoded.size(), size);
}

/// The page-list target: decode an arbitrary list, check the contract of every success, and
/// round-trip arbitrary valid buffers through encode and decode.
pub fn page_list(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let buf_ptr = input.u64();
    let size = if flags & 1 == 0 {
        u64::from(input.u16()) * 8
    } else {
        input.u64()
    };
    let max_pages = u64::from(input.u16() % 2048);
    let fail = (flags & 2 != 0).then(|| input.u64() & !(PAGE - 1));
    let memory = input.rest();
    let mut mem = InputMemory {
        data: memory,
        fail,
        reads: 0,
    };
    match page_list::decode(&mut mem, buf_ptr, size, max_pages) {
        Ok(list) => {
            let offset = buf_ptr & (PAGE - 1);
            let count = page_list::num_pages(offset, size).expect("accepted layout is valid");
            assert_eq!(list.num_pages() as u64, count);
            assert!(count <= max_pages);
            assert_eq!(u64::from(list.offset()), offset);
            assert_eq!(list.size(), size);
            assert!(list.pages().iter().all(|p| p % PAGE == 0));
            assert_eq!(
                mem.reads,
                page_list::list_pages_needed(count),
                "one read a list page"
            );
            // Decoding is a function of memory: the same list again gives the same answer.
            let mut again = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            assert_eq!(
                page_list::decode(&mut again, buf_ptr, size, max_pages).ok(),
                Some(list.clone())
            );
            round_trip(list.pages(), offset, size);
            // The visitor form sees the same pages in the same order, and a refusal at any
            // index stops it there.
            let mut seen = Vec::new();
            let mut visit = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            let shape = page_list::decode_each(
                &mut visit,
                buf_ptr & !(PAGE - 1),
                offset,
                size,
                max_pages,
                |i, pa| {
                    assert_eq!(i, seen.len() as u64, "pages in order");
                    seen.push(pa);
                    true
                },
            )
            .expect("decode_each accepts what decode accepts");
            assert_eq!(seen, list.pages());
            assert_eq!(shape.num_pages, count);
            let stop = u64::from(flags) % count;
            let mut refuse = InputMemory {
                data: memory,
                fail,
                reads: 0,
            };
            let refused = page_list::decode_each(
                &mut refuse,
                buf_ptr & !(PAGE - 1),
                offset,
                size,
                max_pages,
                |i, _| i != stop,
            );
            assert!(
                matches!(refused, Err(page_list::PageListError::Refused { index, .. }) if index == stop)
            );
        }
        Err(e) => {
            if size == 0 {
                assert_eq!(e, page_list::PageListError::ZeroSize);
                assert_eq!(mem.reads, 0, "refused before any read");
            }
            if let Ok(count) = page_list::num_pages(buf_ptr & (PAGE - 1), size)
                && count > max_pages
            {
                assert_eq!(mem.reads, 0, "too many pages refused before any read");
            }
        }
    }
    // An arbitrary valid buffer of up to 1200 pages (three list pages) survives the round trip.
    let n = u64::from(flags >> 2) * 19 + 1;
    let offset = buf_ptr & (PAGE - 1);
    let span = (size % PAGE).max(1);
    let size = ((n - 1) * PAGE).saturating_sub(offset) + span;
    if page_list::num_pages(offset, size) == Ok(n) {
        let seed = buf_ptr | 1;
        let pages: Vec<u64> = (0..n)
            .map(|i| (seed.wrapping_mul(i + 0x9E37_79B9) >> 8) & !(PAGE - 1))
            .collect();
        round_trip(&pages, offset, size);
    }
}

// ---- a small core --------------------------------------------------------------------------

/// First of the normal-world pages the harness uses.
pub const NS_BASE: u64 = NS_RAM.0;
/// Pages the harness writes and names (RPC answers use the upper quarter).
pub const NS_PAGES: u64 = 48;
/// Guest ids the programs use (plus arbitrary ones).
pub const GUESTS: [u16; 3] = [1, 2, 3];

/// Normal-world page `k` (modulo [`NS_PAGES`]).
pub fn ns_page(k: u64) -> u64 {
    NS_BASE + (k % NS_PAGES) * PAGE
}

/// A core small enough for fast executions: 4 threads, 4 guests, tight quotas, a window of 160
/// pages (176 with a static pool of 16), buffers of at most 16 pages.
pub fn small_config(pool: bool) -> CoreConfig {
    let pool_pages = 16;
    CoreConfig {
        threads: 4,
        max_guests: 4,
        normal_world: teeshm_core::NormalWorld::Virtualized,
        quotas: GuestQuotas {
            max_objects: 12,
            max_registered_pages: 40,
            max_mapped_pages: 24,
            max_sessions: 3,
            max_threads: 3,
            max_secure_bytes: 16 << 10,
        },
        // The guests' quotas must fit (CoreConfig::capacity): 4 x (12 guards + 24 pages) and
        // a list page with its guard per thread.
        window: ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(0x40_0000_0000),
                size: if pool { 176 * PAGE } else { 160 * PAGE },
                guard_pages: 1,
            },
            max_table_pages: 8,
        },
        max_buffer_pages: 16,
        static_pool: if pool {
            PhysRange::new(PhysAddr(STATIC_POOL.0), pool_pages * PAGE).ok()
        } else {
            None
        },
        heap_budget: 128 << 10,
    }
}

/// What the window holds with no guest: the static pool's mapping, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Baseline {
    objects: usize,
    mappings: usize,
    va_ranges: usize,
    table_pages: usize,
}

/// A core on simulated memory with a well-behaved RPC responder at hand.
pub struct FuzzCore {
    /// The core.
    pub tee: Tee<SimPlatform>,
    /// Physical memory (the normal world writes here directly).
    pub mem: Arc<PhysMemory>,
    rpc_bufs: BTreeMap<u64, u64>,
    next_cookie: u64,
    next_rpc_page: u64,
    baseline: Baseline,
}

fn baseline_of(tee: &Tee<SimPlatform>) -> Baseline {
    let mut window = tee.window();
    window.shm_mut().compact_tables();
    Baseline {
        objects: window.mapped_objects(),
        mappings: window.shm().mappings().count(),
        va_ranges: window.shm().va_window().live_count(),
        table_pages: window.shm().table_stats().live,
    }
}

impl FuzzCore {
    /// Boots a small core.
    pub fn new(pool: bool) -> Self {
        let mem = Arc::new(PhysMemory::new());
        let tee = Tee::new(
            small_config(pool),
            teeshm_core::testing::sim_memory_map(),
            SimPlatform::new(mem.clone()),
            RecordingTlb::counting(),
        )
        .expect("the small configuration boots");
        let baseline = baseline_of(&tee);
        Self {
            tee,
            mem,
            rpc_bufs: BTreeMap::new(),
            next_cookie: 0x100,
            next_rpc_page: 0,
            baseline,
        }
    }

    /// One SMC. Yielding calls must answer an OP-TEE code or an RPC request.
    pub fn smc(&self, regs: SmcRegs) -> SmcRegs {
        let out = self.tee.handle_smc(regs);
        if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
            eprintln!("smc {:x?}\n -> {:x?}", regs.a, out.a);
        }
        let func = regs.a0();
        if !is_fast_call(func) {
            let a0 = out.a0();
            assert!(
                a0 <= OPTEE_SMC_RETURN_ENOTAVAIL
                    || a0 == OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
                    || matches!(
                        a0,
                        OPTEE_SMC_RETURN_RPC_ALLOC
                            | OPTEE_SMC_RETURN_RPC_FREE
                            | OPTEE_SMC_RETURN_RPC_CMD
                    ),
                "a0 {a0:#x} is no OP-TEE answer"
            );
            assert_eq!(out.a[0] >> 32, 0, "a0 carries a 32-bit code");
        }
        out
    }

    /// Runs the agreement checker; any disagreement is a crash.
    pub fn check(&self) {
        let found = self.tee.check_agreement();
        assert!(
            found.is_empty(),
            "the core disagrees with itself: {found:#?}"
        );
    }

    /// `VM_CREATED` / `VM_DESTROYED` from the hypervisor.
    pub fn vm(&self, created: bool, id: u64) -> u32 {
        let func = if created {
            OPTEE_SMC_VM_CREATED
        } else {
            OPTEE_SMC_VM_DESTROYED
        };
        self.smc(SmcRegs::call(func, &[id])).a0()
    }

    /// A page for an RPC answer (the upper quarter of the harness's pages, in turn).
    fn rpc_page(&mut self) -> u64 {
        self.next_rpc_page += 1;
        ns_page(NS_PAGES * 3 / 4 + self.next_rpc_page % (NS_PAGES / 4))
    }

    /// The answer a well-behaved driver gives to the RPC request `out`. `appended` is where the
    /// call's RPC arg lies when it carries one.
    pub fn answer(&mut self, out: &SmcRegs, appended: Option<u64>) -> SmcRegs {
        let thread = out.a[3];
        match out.a0() {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let page = self.rpc_page();
                self.next_cookie += 1;
                let cookie = self.next_cookie;
                self.rpc_bufs.insert(cookie, page);
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
            OPTEE_SMC_RETURN_RPC_CMD => {
                let cookie = ((out.a[1] & 0xffff_ffff) << 32) | (out.a[2] & 0xffff_ffff);
                let at = self.rpc_bufs.get(&cookie).copied().or(appended);
                if let Some(at) = at {
                    self.serve_cmd(at);
                }
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            _ => {
                let cookie = ((out.a[1] & 0xffff_ffff) << 32) | (out.a[2] & 0xffff_ffff);
                self.rpc_bufs.remove(&cookie);
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
        }
    }

    fn serve_cmd(&mut self, at: u64) {
        let mut raw = [0u8; 160];
        self.mem.read(at, &mut raw);
        let Ok((hdr, rest)) = MsgArgHeader::mut_from_prefix(&mut raw[..]) else {
            return;
        };
        let n = (hdr.num_params.get() as usize).min(4);
        let Ok((params, _)) = <[MsgParam]>::mut_from_prefix_with_elems(rest, n) else {
            return;
        };
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC if n >= 1 => {
                let size = params[0].value().b.get();
                let pages = size.div_ceil(PAGE);
                if size == 0 || pages > 16 {
                    hdr.ret.set(TEE_ERROR_OUT_OF_MEMORY);
                } else {
                    let data: Vec<u64> = (0..pages).map(|_| self.rpc_page()).collect();
                    let list = self.rpc_page();
                    let mem = &self.mem;
                    let buf_ptr = page_list::encode_with::<()>(&data, 0, size, &[list], |pa, b| {
                        mem.write(pa, b);
                        Ok(())
                    });
                    self.next_cookie += 1;
                    match buf_ptr {
                        Ok(buf_ptr) => {
                            params[0] = MsgParam::from_tmem(
                                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                Tmem::new(buf_ptr, size, self.next_cookie),
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
        self.mem.write(at, &raw);
    }

    /// Answers every RPC of a call well (at most 16 rounds, then leaves it suspended).
    pub fn finish(&mut self, guest: u16, mut out: SmcRegs, appended: Option<u64>) -> SmcRegs {
        for _ in 0..16 {
            if !is_rpc_return(out.a0()) {
                break;
            }
            let answer = self.answer(&out, appended);
            out = self.smc(answer.from_client(GuestId(guest)));
        }
        out
    }

    /// Opens a session of the memtest pseudo-TA for `guest` with an arg written at page `k`.
    pub fn open_session(&mut self, guest: u16, k: u64) -> Option<u32> {
        let mut h = MsgArgHeader::default();
        h.cmd.set(OPTEE_MSG_CMD_OPEN_SESSION);
        h.num_params.set(2);
        let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let uuid_lo = u64::from_le_bytes(MEMTEST_UUID[..8].try_into().ok()?);
        let uuid_hi = u64::from_le_bytes(MEMTEST_UUID[8..].try_into().ok()?);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(
            MsgParam::from_value(meta, Value::new(uuid_lo, uuid_hi, 0)).as_bytes(),
        );
        bytes.extend_from_slice(MsgParam::from_value(meta, Value::new(0, 0, 0)).as_bytes());
        let page = ns_page(k);
        self.mem.write(page, &bytes);
        let out = self.smc(
            SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[page >> 32, page & 0xffff_ffff])
                .from_client(GuestId(guest)),
        );
        let out = self.finish(guest, out, None);
        let mut back = [0u8; 32];
        self.mem.read(page, &mut back);
        let (h, _) = MsgArgHeader::read_from_prefix(&back).ok()?;
        (out.a0() == 0 && h.ret.get() == TEE_SUCCESS).then(|| h.session.get())
    }

    /// Registers `pages` (harness page indexes) as buffer `cookie` of `guest`, the list at page
    /// `list` and the arg at page `arg`.
    pub fn register(&mut self, guest: u16, cookie: u64, pages: &[u64], list: u64, arg: u64) {
        let data: Vec<u64> = pages.iter().map(|&k| ns_page(k)).collect();
        let size = data.len() as u64 * PAGE;
        let list = ns_page(list);
        let mem = &self.mem;
        let Ok(buf_ptr) = page_list::encode_with::<()>(&data, 0, size, &[list], |pa, b| {
            mem.write(pa, b);
            Ok(())
        }) else {
            return;
        };
        let mut h = MsgArgHeader::default();
        h.cmd.set(OPTEE_MSG_CMD_REGISTER_SHM);
        h.num_params.set(1);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(
            MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                Tmem::new(buf_ptr, size, cookie),
            )
            .as_bytes(),
        );
        let page = ns_page(arg);
        self.mem.write(page, &bytes);
        let out = self.smc(
            SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[page >> 32, page & 0xffff_ffff])
                .from_client(GuestId(guest)),
        );
        self.finish(guest, out, None);
    }

    /// Destroys every guest and checks that nothing of any is left: no guest, object, mapping,
    /// VA range, table page beyond the baseline, busy thread or pending release.
    pub fn destroy_all_and_check_empty(&self) {
        for g in self.tee.guests() {
            self.vm(false, u64::from(g.id().raw()));
        }
        self.check();
        assert!(self.tee.guests().is_empty(), "a guest survived");
        assert!(
            self.tee
                .thread_states()
                .iter()
                .all(|t| *t == ThreadState::Free),
            "a thread still serves a destroyed guest: {:?}",
            self.tee.thread_states()
        );
        let now = baseline_of(&self.tee);
        assert_eq!(
            now, self.baseline,
            "something of a destroyed guest is left in the window"
        );
    }
}

/// Addresses and values a program picks from: the harness's pages (with and without an
/// offset), the other kinds of memory, edges, and arbitrary values.
fn interesting(input: &mut Input) -> u64 {
    match input.u8() % 12 {
        0..=3 => ns_page(u64::from(input.u8())),
        4 => ns_page(u64::from(input.u8())) + u64::from(input.u16() % 4096),
        5 => u64::from(input.u8() % 16),
        6 => input.pick(&[
            SECURE_RAM.0,
            DEVICES.0,
            STATIC_POOL.0,
            STATIC_POOL.0 + 15 * PAGE,
            NS_RAM.0 + NS_RAM.1 - PAGE,
            NS_RAM.0 + NS_RAM.1,
            0,
            u64::MAX,
            !(PAGE - 1),
            1 << 32,
        ]),
        7 => u64::from(input.u16()),
        _ => input.u64(),
    }
}

// ---- msg_arg -------------------------------------------------------------------------------

fn check_split(bytes: &[u8]) {
    let mut copy = bytes.to_vec();
    let mutable = split_arg_mut(&mut copy).map(|(h, p)| (*h, p.to_vec()));
    match split_arg(bytes) {
        Ok((hdr, params)) => {
            let n = hdr.num_params.get();
            assert!(n <= OPTEE_MSG_MAX_NUM_PARAMS);
            assert_eq!(params.len(), n as usize);
            let size = arg_size_checked(n).expect("accepted count");
            assert!(size <= bytes.len());
            assert_eq!(Some(size), get_arg_size(n));
            let (mh, mp) = mutable.expect("split_arg_mut agrees");
            assert_eq!(mh.as_bytes(), hdr.as_bytes());
            assert_eq!(mp.as_bytes(), params.as_bytes());
            for p in params {
                if let Ok(ty) = ParamType::try_from(p.attr()) {
                    let kinds = [ty.is_value(), ty.is_rmem(), ty.is_tmem()];
                    let count = kinds.iter().filter(|k| **k).count();
                    assert_eq!(count, usize::from(ty != ParamType::None));
                    assert_eq!(ty.raw(), p.attr() & OPTEE_MSG_ATTR_TYPE_MASK);
                    assert!(ty == ParamType::None || ty.is_input() || ty.is_output());
                } else {
                    assert!(matches!(p.attr() & 0xff, 4 | 8 | 0xc..=0xff));
                }
            }
        }
        Err(_) => assert!(mutable.is_err(), "split_arg and split_arg_mut agree"),
    }
}

/// The message-argument target: the decoders over arbitrary bytes, then the bytes as the arg of
/// a call (CALL_WITH_ARG, CALL_WITH_RPC_ARG or CALL_WITH_REGD_ARG) of a guest that has a
/// session and a registered buffer, with well-behaved RPC answers.
pub fn msg_arg(data: &[u8]) {
    check_split(data);
    let mut input = Input::new(data);
    let flags = input.u8();
    let at = u64::from(input.u16() % 4096) & !7;
    let arg: Vec<u8> = input.rest().to_vec();
    check_split(&arg);
    let _ = arg_size_checked(u32::from_le_bytes(
        data.get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    ));

    let mut core = FuzzCore::new(flags & 0x80 != 0);
    assert_eq!(core.vm(true, 1), OPTEE_SMC_RETURN_OK);
    let session = core.open_session(1, 0).unwrap_or(0);
    // Buffer 1: pages 10..14, its list at page 9. Temporary lists (page 8) name pages 16..19.
    core.register(1, 1, &[10, 11, 12, 13], 9, 1);
    let list = ns_page(8);
    let tmp: Vec<u64> = (16..20).map(ns_page).collect();
    let mem = core.mem.clone();
    let _ = page_list::encode_with::<()>(&tmp, 0, 4 * PAGE, &[list], |pa, b| {
        mem.write(pa, b);
        Ok(())
    });
    core.check();

    let mut arg = arg;
    arg.truncate((PAGE - at) as usize);
    if let Ok((hdr, params)) = split_arg_mut(&mut arg) {
        if flags & 1 != 0 {
            hdr.session.set(session);
        }
        for p in params.iter_mut() {
            let attr = p.attr();
            if flags & 2 != 0 && attr & OPTEE_MSG_ATTR_NONCONTIG != 0 {
                let t = p.tmem_mut();
                t.buf_ptr.set(list | (t.buf_ptr.get() & 0xfff));
                t.size.set(t.size.get() % (4 * PAGE + 1));
            }
            if flags & 4 != 0 && matches!(attr & 0xff, 5..=7) {
                let r = p.rmem_mut();
                r.shm_ref.set(r.shm_ref.get() & 1);
            }
        }
    }
    let (func, a1, a2, a3, page) = match flags / 8 % 3 {
        0 => {
            let page = ns_page(2);
            core.mem.write(page, &[0u8; 4096]);
            core.mem.write(page + at, &arg);
            (OPTEE_SMC_CALL_WITH_ARG, page + at, 0, 0, Some(page + at))
        }
        1 => {
            let page = ns_page(2);
            core.mem.write(page, &[0u8; 4096]);
            core.mem.write(page + at, &arg);
            (
                OPTEE_SMC_CALL_WITH_RPC_ARG,
                page + at,
                0,
                0,
                Some(page + at),
            )
        }
        _ => {
            // Inside registered buffer 1 (pages 10..14, 16 KiB).
            let offset = at;
            let pa = ns_page(10) + offset;
            core.mem.write(pa, &arg);
            (OPTEE_SMC_CALL_WITH_REGD_ARG, 0, 1, offset, Some(pa))
        }
    };
    let regs = if func == OPTEE_SMC_CALL_WITH_REGD_ARG {
        SmcRegs::call(func, &[a1, a2, a3])
    } else {
        SmcRegs::call(func, &[a1 >> 32, a1 & 0xffff_ffff, a3])
    };
    let _ = a2;
    let out = core.smc(regs.from_client(GuestId(1)));
    let appended = page.map(|p| p + arg.len() as u64);
    core.finish(1, out, appended);
    core.check();
    core.destroy_all_and_check_empty();
}

// ---- smc_surface ---------------------------------------------------------------------------

/// Every SMC function id the core knows, and a few it does not.
const FUNCS: [u32; 22] = [
    OPTEE_SMC_CALLS_COUNT,
    OPTEE_SMC_CALLS_UID,
    OPTEE_SMC_CALLS_REVISION,
    OPTEE_SMC_CALL_GET_OS_UUID,
    OPTEE_SMC_CALL_GET_OS_REVISION,
    OPTEE_SMC_CALL_RETURN_FROM_RPC,
    OPTEE_SMC_CALL_WITH_ARG,
    OPTEE_SMC_GET_SHM_CONFIG,
    OPTEE_SMC_L2CC_MUTEX,
    OPTEE_SMC_EXCHANGE_CAPABILITIES,
    OPTEE_SMC_DISABLE_SHM_CACHE,
    OPTEE_SMC_ENABLE_SHM_CACHE,
    OPTEE_SMC_BOOT_SECONDARY,
    OPTEE_SMC_VM_CREATED,
    OPTEE_SMC_VM_DESTROYED,
    OPTEE_SMC_GET_THREAD_COUNT,
    OPTEE_SMC_ENABLE_ASYNC_NOTIF,
    OPTEE_SMC_GET_ASYNC_NOTIF_VALUE,
    OPTEE_SMC_CALL_WITH_RPC_ARG,
    OPTEE_SMC_CALL_WITH_REGD_ARG,
    OPTEE_SMC_GET_PROTMEM_CONFIG,
    0x3200_0000,
];

const ATTRS: [u64; 16] = [
    OPTEE_MSG_ATTR_TYPE_NONE,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_TMEM_INOUT | OPTEE_MSG_ATTR_NONCONTIG,
    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META,
    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
    0x4,
];

fn guest_id(input: &mut Input) -> u64 {
    match input.u8() % 8 {
        0..=5 => u64::from(GUESTS[usize::from(input.u8()) % GUESTS.len()]),
        6 => 0,
        _ => input.u64(),
    }
}

/// Writes an `optee_msg_arg` made of the input at page `k` (offset `at`); returns its size.
fn write_arg(core: &FuzzCore, input: &mut Input, page: u64) -> u64 {
    let mut h = MsgArgHeader::default();
    h.cmd.set(u32::from(input.u8() % 8));
    h.func.set(u32::from(input.u8() % 7));
    h.session.set(u32::from(input.u8() % 4));
    let n = match input.u8() % 16 {
        15 => input.u32(),
        k => u32::from(k % 6),
    };
    h.num_params.set(n);
    h.ret.set(input.u32());
    let mut bytes = h.as_bytes().to_vec();
    for _ in 0..n.min(6) {
        let attr = match input.u8() % 16 {
            15 => input.u64(),
            _ => input.pick(&ATTRS),
        };
        let p = match attr & 0xff {
            5..=7 => MsgParam::from_rmem(
                attr,
                Rmem::new(
                    u64::from(input.u16() % 8192),
                    u64::from(input.u16() % 20_000),
                    u64::from(input.u8() % 6),
                ),
            ),
            9..=0xb => MsgParam::from_tmem(
                attr,
                Tmem::new(
                    interesting(input),
                    u64::from(input.u16() % 20_000),
                    u64::from(input.u8() % 6),
                ),
            ),
            _ => MsgParam::from_value(
                attr,
                Value::new(interesting(input), interesting(input), interesting(input)),
            ),
        };
        bytes.extend_from_slice(p.as_bytes());
    }
    core.mem.write(page, &bytes);
    bytes.len() as u64
}

/// Writes a page list at page `k`: up to 12 entries, mostly harness pages, and a next pointer.
fn write_list(core: &FuzzCore, input: &mut Input, page: u64) {
    let n = usize::from(input.u8() % 13);
    let mut entries = vec![0u64; 512];
    for e in entries.iter_mut().take(n) {
        *e = match input.u8() % 8 {
            0 => interesting(input),
            _ => ns_page(u64::from(input.u8())),
        };
    }
    entries[511] = match input.u8() % 4 {
        0 => interesting(input),
        _ => ns_page(u64::from(input.u8())),
    };
    core.mem.write(page, entries.as_bytes());
}

/// A suspended call the program may answer.
#[derive(Debug, Clone, Copy)]
struct Pending {
    guest: u64,
    out: SmcRegs,
    appended: Option<u64>,
}

/// The whole-SMC-surface target: a program of at most 64 steps over a small core, the
/// agreement checker after every step, and nothing left after every guest is destroyed.
pub fn smc_surface(data: &[u8]) {
    let mut input = Input::new(data);
    let mut core = FuzzCore::new(input.u8() & 1 != 0);
    for id in GUESTS {
        assert_eq!(core.vm(true, u64::from(id)), OPTEE_SMC_RETURN_OK);
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut last_arg: Option<(u64, u64)> = None;
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % 10 {
            0 => {
                // Raw bytes anywhere in the harness's pages.
                let pa = ns_page(u64::from(input.u8())) + u64::from(input.u16() % 4096);
                let n = usize::from(input.u8() % 64);
                let bytes = input.bytes(n).to_vec();
                let room = (PAGE - pa % PAGE) as usize;
                core.mem.write(pa, &bytes[..bytes.len().min(room)]);
            }
            1 => {
                let at = u64::from(input.u8() % 64) * 8;
                let page = ns_page(u64::from(input.u8())) + at;
                let size = write_arg(&core, &mut input, page);
                last_arg = Some((page, size));
            }
            2 => {
                let page = ns_page(u64::from(input.u8()));
                write_list(&core, &mut input, page);
            }
            3 | 4 => {
                // An SMC: a yielding call at the last arg, or anything.
                let guest = guest_id(&mut input);
                let func = match input.u8() % 8 {
                    0..=2 => OPTEE_SMC_CALL_WITH_ARG,
                    3 => OPTEE_SMC_CALL_WITH_RPC_ARG,
                    4 => OPTEE_SMC_CALL_WITH_REGD_ARG,
                    5 => input.u32(),
                    _ => input.pick(&FUNCS),
                };
                let mut a = [0u64; 6];
                for v in &mut a {
                    *v = interesting(&mut input);
                }
                let use_arg = !input.u8().is_multiple_of(4);
                if let (true, Some((pa, _))) = (use_arg, last_arg) {
                    if func == OPTEE_SMC_CALL_WITH_REGD_ARG {
                        a[0] = 0;
                        a[1] = u64::from(input.u8() % 6);
                        a[2] = pa % PAGE;
                    } else {
                        a[0] = pa >> 32;
                        a[1] = pa & 0xffff_ffff;
                    }
                }
                let mut regs = SmcRegs::call(func, &a);
                regs.a[7] = guest;
                let out = core.smc(regs);
                let appended = last_arg.map(|(pa, size)| pa + size);
                if is_rpc_return(out.a0()) {
                    pending.retain(|p| p.out.a[3] != out.a[3]);
                    pending.push(Pending {
                        guest,
                        out,
                        appended,
                    });
                }
            }
            5 | 6 => {
                // An answer to a suspended call: well-behaved, hostile, or to the wrong guest.
                if pending.is_empty() {
                    continue;
                }
                let i = usize::from(input.u8()) % pending.len();
                let p = pending.remove(i);
                let mut answer = match input.u8() % 4 {
                    0 | 1 => core.answer(&p.out, p.appended),
                    _ => {
                        let mut a = [0u64; 5];
                        for v in &mut a {
                            *v = interesting(&mut input);
                        }
                        a[2] = p.out.a[3];
                        if input.u8().is_multiple_of(4) {
                            a[2] = u64::from(input.u8() % 6);
                        }
                        SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &a)
                    }
                };
                answer.a[7] = if input.u8().is_multiple_of(8) {
                    guest_id(&mut input)
                } else {
                    p.guest
                };
                let out = core.smc(answer);
                if is_rpc_return(out.a0()) {
                    pending.retain(|q| q.out.a[3] != out.a[3]);
                    pending.push(Pending {
                        guest: answer.a[7],
                        out,
                        appended: p.appended,
                    });
                } else if out.a0() == OPTEE_SMC_RETURN_ERESUME {
                    // Not resumed: the call still waits (if it existed).
                    pending.push(p);
                }
            }
            7 => {
                let created = input.u8() & 1 == 0;
                let id = match input.u8() % 4 {
                    0 => input.u64(),
                    k => u64::from(k),
                };
                let from = if input.u8().is_multiple_of(8) {
                    input.u64()
                } else {
                    0
                };
                let func = if created {
                    OPTEE_SMC_VM_CREATED
                } else {
                    OPTEE_SMC_VM_DESTROYED
                };
                let mut regs = SmcRegs::call(func, &[id]);
                regs.a[7] = from;
                let out = core.smc(regs);
                if !created && from == 0 && out.a0() == OPTEE_SMC_RETURN_OK {
                    pending.retain(|p| p.guest != id);
                }
            }
            8 => {
                let guest = GUESTS[usize::from(input.u8()) % GUESTS.len()];
                let k = u64::from(input.u8());
                core.open_session(guest, k);
            }
            _ => {
                let guest = GUESTS[usize::from(input.u8()) % GUESTS.len()];
                let cookie = u64::from(input.u8() % 6);
                let n = usize::from(input.u8() % 5) + 1;
                let pages: Vec<u64> = (0..n).map(|_| u64::from(input.u8())).collect();
                let (list, arg) = (u64::from(input.u8()), u64::from(input.u8()));
                core.register(guest, cookie, &pages, list, arg);
            }
        }
        core.check();
    }
    core.destroy_all_and_check_empty();
}
