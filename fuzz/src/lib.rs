//! The harness shared by teeshm's fuzz targets (`fuzz_targets/`), kept out of the targets so a
//! crash input can be replayed by a plain test too (`cargo +nightly fuzz run TARGET FILE`, or a
//! regression test in the crate where the bug lives).
//!
//! - [`page_list`]: the NONCONTIG decoder over a normal-world memory made of the input, its
//!   contract checked on every success, and the encode/decode round trip.
//! - [`msg_arg`]: `split_arg` / `split_arg_mut` / `ParamType` over arbitrary bytes, then the
//!   same bytes as the arg page of a real call into a small core (to the pseudo-TA or a user
//!   TA).
//! - [`smc_surface`]: a small core with TA RAM and the user TAs (`teeshm.ta-memtest`,
//!   `teeshm.ta-peer`, run by the test kit's user mode) driven by a program decoded from the
//!   input: writes into normal-world memory, SMCs with registers from the OP-TEE function ids and
//!   arbitrary values, sessions of the pseudo-TA, a user TA or an unknown UUID, invokes of any
//!   command with any params, RPC answers (hostile or well-behaved), VM created / destroyed.
//!   After every step the core's agreement checker must find nothing; at the end every guest is
//!   destroyed and nothing may be left: no object, mapping, VA range, table page, thread or page
//!   of TA RAM.
//!
//! Every input does bounded work: few guests, small quotas, buffers of at most 16 pages, a
//! window of a few dozen pages, at most 16 RPC rounds per call.
//!
//! One file a concern: this one holds the small core every program runs against ([`FuzzCore`]);
//! `input` the reader of fuzz bytes, and one file per target.

use std::collections::BTreeMap;
use std::sync::Arc;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_abi::utee::layout;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::ta::resources::instance_charge;
use teeshm_core::thread::ThreadState;
use teeshm_core::{CoreConfig, GuestQuotas, Tee};
use teeshm_mm::{ShmWindowConfig, VaWindowConfig, VirtAddr};
use teeshm_testkit::{DEVICES, NS_RAM, PhysMemory, SECURE_RAM, STATIC_POOL, SimPlatform, TA_RAM};
use zerocopy::{FromBytes, IntoBytes};

mod input;
mod msg_arg;
mod page_list;
mod smc_surface;

pub use input::Input;
pub use msg_arg::msg_arg;
pub use page_list::page_list;
pub use smc_surface::smc_surface;
pub mod mediator;

const PAGE: u64 = 4096;

// ---- a small core --------------------------------------------------------------------------

/// First of the normal-world pages the harness uses.
pub const NS_BASE: u64 = NS_RAM.0;
/// Pages the harness writes and names (RPC answers use the upper quarter).
pub const NS_PAGES: u64 = 48;
/// Guest ids the programs use (plus arbitrary ones).
pub const GUESTS: [u16; 3] = [1, 2, 3];

/// The UUIDs a program opens sessions of: the pseudo-TA, the user TAs, and one no TA has.
pub const UUIDS: [[u8; 16]; 4] = [
    MEMTEST_UUID,
    teeshm_ta::memtest::UUID,
    teeshm_ta::peer::UUID,
    [
        0x74, 0x65, 0x65, 0x73, 0x68, 0x6d, 0x4d, 0x54, 0x8d, 0x6d, 0x65, 0x6d, 0x74, 0x65, 0x73,
        0x75,
    ],
];

/// Normal-world page `k` (modulo [`NS_PAGES`]).
pub fn ns_page(k: u64) -> u64 {
    NS_BASE + (k % NS_PAGES) * PAGE
}

/// Pages of an instance of one of the simulator's TAs (`teeshm_testkit::sim_ta_images`): its
/// code and data pages, its heap and its stack.
pub const SIM_TA_PAGES: u64 = 2 + (layout::HEAP_SIZE + layout::STACK_SIZE) / PAGE;

/// Secure heap of each guest for TA instances: two at once (teeshm.ta-memtest and the
/// teeshm.ta-peer its CALL_PEER opens), each charged its pages, its most table pages and its
/// bookkeeping (`teeshm_core::ta::resources::instance_charge`).
pub fn ta_secure_bytes() -> u64 {
    2 * instance_charge(SIM_TA_PAGES).unwrap_or(0)
}

/// A core small enough for fast executions, under a hypervisor: 4 threads, 4 guests, tight
/// quotas, buffers of at most 16 pages, a window of 160 pages and a heap budget of 128 KiB and
/// the TA instances' share — just what the capacity check asks for 4 guests of 24 mapped pages
/// and 12 objects each, two TA instances each, and 4 calls in flight (`CoreConfig::capacity`).
/// Each guest's secure heap is 8 KiB for its objects and [`ta_secure_bytes`] for two TA
/// instances: objects and instances share it, so a guest with instances open meets the quota
/// with few objects.
/// `pool` is kept for the targets' input format but no longer used: the static pool belongs to
/// a normal world without a hypervisor (the core's front-end tests cover it).
pub fn small_config(pool: bool) -> CoreConfig {
    let _ = pool;
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
            max_secure_bytes: 8192 + ta_secure_bytes(),
        },
        // The guests' quotas must fit (CoreConfig::capacity): 4 x (12 guards + 24 pages) and
        // a list page with its guard per thread.
        window: ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(0x40_0000_0000),
                size: 160 * PAGE,
                guard_pages: 1,
            },
            max_table_pages: 8,
        },
        max_buffer_pages: 16,
        static_pool: None,
        heap_budget: (128 << 10) + 4 * ta_secure_bytes(),
        // As the firmware's presets: no arg page kept between calls (the simulator's setting).
        kept_arg_pages: 0,
        // `FuzzCore::with_user_tas` gives it the test kit's TA RAM.
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
        let (tee, mem) = teeshm_testkit::sim_tee(small_config(pool));
        Self::around(tee, mem)
    }

    /// Boots a small core with TA RAM (the test kit's [`TA_RAM`]; each instance is charged to
    /// its guest's secure heap, room for two a guest: [`small_config`]) and the user TAs
    /// registered, as `teeshm_testkit::sim_tee_with_tas` makes it.
    pub fn with_user_tas(pool: bool) -> Self {
        let (tee, mem) = teeshm_testkit::sim_tee_with_tas(small_config(pool));
        Self::around(tee, mem)
    }

    fn around(tee: Tee<SimPlatform>, mem: Arc<PhysMemory>) -> Self {
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
                let (p_hi, p_lo) = split_pair(page);
                let (c_hi, c_lo) = split_pair(cookie);
                SmcRegs::call(
                    OPTEE_SMC_CALL_RETURN_FROM_RPC,
                    &[p_hi, p_lo, thread, c_hi, c_lo],
                )
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let cookie = reg_pair(out.a[1], out.a[2]);
                let at = self.rpc_bufs.get(&cookie).copied().or(appended);
                if let Some(at) = at {
                    self.serve_cmd(at);
                }
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
            }
            _ => {
                let cookie = reg_pair(out.a[1], out.a[2]);
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
                    let buf_ptr = teeshm_abi::page_list::encode_with::<()>(
                        &data,
                        0,
                        size,
                        &[list],
                        |pa, b| {
                            mem.write(pa, b);
                            Ok(())
                        },
                    );
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

    /// Opens a session of the TA `uuid` (the memtest pseudo-TA's, a user TA's, any) for `guest`
    /// with an arg written at page `k`.
    pub fn open_session(&mut self, guest: u16, uuid: [u8; 16], k: u64) -> Option<u32> {
        let mut h = MsgArgHeader::default();
        h.cmd.set(OPTEE_MSG_CMD_OPEN_SESSION);
        h.num_params.set(2);
        let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
        let uuid_lo = u64::from_le_bytes(uuid[..8].try_into().ok()?);
        let uuid_hi = u64::from_le_bytes(uuid[8..].try_into().ok()?);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(
            MsgParam::from_value(meta, Value::new(uuid_lo, uuid_hi, 0)).as_bytes(),
        );
        bytes.extend_from_slice(MsgParam::from_value(meta, Value::new(0, 0, 0)).as_bytes());
        let page = ns_page(k);
        self.mem.write(page, &bytes);
        let (hi, lo) = split_pair(page);
        let out =
            self.smc(SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(GuestId(guest)));
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
        let Ok(buf_ptr) =
            teeshm_abi::page_list::encode_with::<()>(&data, 0, size, &[list], |pa, b| {
                mem.write(pa, b);
                Ok(())
            })
        else {
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
        let (hi, lo) = split_pair(page);
        let out =
            self.smc(SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(GuestId(guest)));
        self.finish(guest, out, None);
    }

    /// Destroys every guest and checks that nothing of any is left: no guest, object, mapping,
    /// VA range, table page beyond the baseline, busy thread, pending release or page of TA RAM
    /// (every TA instance, those TAs opened included, went with its guest).
    pub fn destroy_all_and_check_empty(&self) {
        if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
            for line in self.tee.platform().ta_logs() {
                eprintln!("ta log: {line}");
            }
        }
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
        let (free, total) = self.tee.platform().ta_ram_pages();
        assert_eq!(free, total, "a TA instance's pages outlived its guest");
        assert_eq!(
            self.tee.tas().resources().asids_in_use(),
            0,
            "a TA instance's ASID outlived its guest"
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
            TA_RAM.0,
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
