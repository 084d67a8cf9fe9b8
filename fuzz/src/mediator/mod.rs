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
//! After every step: every answer to a guest is an OP-TEE code; the mediator's
//! `check_agreement()` finds nothing; the hypervisor's pool holds exactly the pages the mediator
//! accounts for, and the live guests' shares fit the pool; the mediator and the core know the
//! same guests. At the end every guest is destroyed, the core's `check_agreement()` finds
//! nothing, and no shadow page, pin, guest, busy thread or window mapping is left. (The core's
//! checker walks the whole 512 MiB window's tables and allocator: run after every step it cost
//! 7 of every 8 executions, 300 against 2 200 a second, and after every destruction 2 of 3. A
//! disagreement a step leaves in the core's state is found at the end; one a later step
//! happens to repair is missed.)
//!
//! The mediator's budgets are small (4 calls, 8 buffers, 64 pins, buffers of 32 pages, 6
//! shadow pages) and its pool exactly four shares, so inputs reach every limit.

use crate::Input;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use teeshm_abi::GuestId;
use teeshm_abi::gp::{TEE_ERROR_OUT_OF_MEMORY, TEE_SUCCESS};
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::rpc::{OPTEE_RPC_CMD_SHM_ALLOC, OPTEE_RPC_CMD_SHM_FREE};
use teeshm_abi::smc::*;
use teeshm_core::pta::MEMTEST_UUID;
use teeshm_core::thread::ThreadState;
use teeshm_core::{CoreConfig, NormalWorld, Tee};
use teeshm_hyp::{HypConfig, HypError, HypLimits, MachineMemory, Mediator, Stage2};
use teeshm_platform::RecordingTlb;
use teeshm_testkit::{NS_RAM, PhysMemory, SimPlatform, sim_memory_map};
use zerocopy::{FromBytes, IntoBytes};

mod world;

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

/// The core behind the mediator: an SMC is a call into it. Every answer to a yielding call is
/// checked to be an OP-TEE code.
#[derive(Clone)]
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

/// The mediator target: a program of at most 64 steps, checked after each (`World::check`).
pub fn mediator(data: &[u8]) {
    let mut input = Input::new(data);
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
                        assert!(
                            matches!(e, HypError::GuestExists { .. } | HypError::NoShare { .. }),
                            "guest {} refused: {e}",
                            slot + 1
                        );
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
