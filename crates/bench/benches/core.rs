//! Benchmarks of the core through its SMC front end, each beside its peer in the same run
//! (issue 3; results in docs/performance.md, "Core (issue 3)").
//!
//! - `register`: `REGISTER_SHM` of an N-page list (N = 1, 256, 16384) through
//!   `Tee::handle_smc` — arg copy, page-list decode, check of every page, object, cookie
//!   table — beside [`OpteeModel`], a hand-written model of OP-TEE's way. Only the register is
//!   timed: the args are written before each batch and the buffers unregistered after it,
//!   outside the timing (`iter_custom`). The secure memory kept per registered page is printed
//!   before the group runs (`secure bytes/page`).
//! - `touch`: repeated `INVOKE_COMMAND` of the memtest pseudo-TA's TOUCH on a registered
//!   1 MiB buffer and a 4 KiB one whose mapping is cached, beside the same 1 MiB invoke when
//!   the mapping is not cached (two 1 MiB buffers used in turn by a guest whose mapped-pages
//!   quota holds only one, so every call maps its buffer and evicts the other: what OP-TEE's
//!   map-on-every-call costs). The whole SMC path of the test world is timed.
//! - `vm_destroyed`: `VM_DESTROYED` of a guest holding 1000 registered buffers of 64 pages,
//!   alone, and beside 63 other guests holding the same. Only the destroy is timed.
//!
//! Run with `cargo bench -p teeshm-bench --bench core` (or `cargo xtask bench`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use teeshm_abi::GuestId;
use teeshm_abi::gp::TEE_SUCCESS;
use teeshm_abi::msg::{
    MsgArgHeader, MsgParam, OPTEE_MSG_ATTR_NONCONTIG, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, OPTEE_MSG_CMD_REGISTER_SHM,
    OPTEE_MSG_CMD_UNREGISTER_SHM, Rmem, Tmem,
};
use teeshm_abi::smc::{OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_RETURN_OK, split_pair};
use teeshm_bench::fixtures::guests_config;
use teeshm_bench::peers::OpteeModel;
use teeshm_core::pta::cmd;
use teeshm_core::{CoreConfig, SmcRegs};
use teeshm_testkit::msg::{Buf, arg_bytes, header, rmem, value};
use teeshm_testkit::world::{PAGE, World};
use zerocopy::FromBytes;

const G0: GuestId = GuestId::HYPERVISOR;

// ---- raw messages --------------------------------------------------------------------------

/// Writes a `CALL_WITH_ARG` message (`header` with `params`) at the start of NS page `page`
/// and returns the registers of the SMC that passes it. No RPC arg is appended: the messages
/// used here need none.
fn write_arg(
    w: &World,
    guest: GuestId,
    page: u64,
    header: MsgArgHeader,
    params: &[MsgParam],
) -> SmcRegs {
    w.mem.write(page, &arg_bytes(header, params));
    let (hi, lo) = split_pair(page);
    SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(guest)
}

/// The result code the core wrote back into the arg at `page`.
fn arg_ret(w: &World, page: u64) -> u32 {
    let mut raw = [0u8; 32];
    w.mem.read(page, &mut raw);
    MsgArgHeader::read_from_prefix(&raw).unwrap().0.ret.get()
}

/// The SMC registers of `REGISTER_SHM` of the page list at `buf_ptr`, the arg written at `page`.
fn register_regs(
    w: &World,
    guest: GuestId,
    page: u64,
    buf_ptr: u64,
    size: u64,
    cookie: u64,
) -> SmcRegs {
    let p = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    );
    write_arg(w, guest, page, header(OPTEE_MSG_CMD_REGISTER_SHM), &[p])
}

/// Runs one message whose arg is at `page` and checks that it succeeded.
fn run_ok(w: &World, regs: SmcRegs, page: u64) {
    let out = w.tee.handle_smc(regs);
    assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_OK);
    assert_eq!(arg_ret(w, page), TEE_SUCCESS, "message refused");
}

fn register_raw(w: &World, guest: GuestId, page: u64, buf_ptr: u64, size: u64, cookie: u64) {
    run_ok(
        w,
        register_regs(w, guest, page, buf_ptr, size, cookie),
        page,
    );
}

fn unregister_raw(w: &World, guest: GuestId, page: u64, cookie: u64) {
    let p = MsgParam::from_rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, Rmem::new(0, 0, cookie));
    let regs = write_arg(w, guest, page, header(OPTEE_MSG_CMD_UNREGISTER_SHM), &[p]);
    run_ok(w, regs, page);
}

// ---- register -------------------------------------------------------------------------------

/// Buffers registered beforehand on both sides (one page each).
const BACKGROUND: u64 = 64;

fn register(c: &mut Criterion) {
    let w = World::default_world();
    let arg_pages: Vec<u64> = w.alloc_pages(64);
    let mut model = OpteeModel::new();
    // The objects already registered on both sides.
    let small = w.buffer(PAGE, 0);
    let (small_ptr, _) = w.page_list(&small);
    for cookie in 1..=BACKGROUND {
        register_raw(&w, G0, arg_pages[0], small_ptr, PAGE, cookie);
        assert!(model.register(&w.mem, small_ptr, PAGE, cookie));
    }
    let counters = w.tee.guest(G0).unwrap().counters().clone();
    let quota = CoreConfig::default().quotas.max_registered_pages;

    let sizes = [1u64, 256, 16384];
    let bufs: Vec<(Buf, u64)> = sizes
        .iter()
        .map(|&n| {
            let buf = w.buffer(n * PAGE, 0);
            let (buf_ptr, _) = w.page_list(&buf);
            (buf, buf_ptr)
        })
        .collect();

    // Secure memory kept per registered page: the guest's counter before and after.
    for (&n, (buf, buf_ptr)) in sizes.iter().zip(&bufs) {
        let before = counters.secure_bytes();
        register_raw(&w, G0, arg_pages[0], *buf_ptr, buf.size, 0xffff_0000);
        let kept = counters.secure_bytes() - before;
        unregister_raw(&w, G0, arg_pages[0], 0xffff_0000);
        assert_eq!(counters.secure_bytes(), before);
        let peer = OpteeModel::object_bytes(n);
        println!(
            "secure bytes/page N={n}: teeshm {kept} B = {:.2} B/page; OP-TEE model {peer} B = {:.2} B/page",
            kept as f64 / n as f64,
            peer as f64 / n as f64
        );
    }

    let mut group = c.benchmark_group("register");
    let mut next_cookie = 0x1_0000u64;
    for (&n, (buf, buf_ptr)) in sizes.iter().zip(&bufs) {
        let (buf_ptr, size) = (*buf_ptr, buf.size);
        group.throughput(Throughput::Elements(n));
        // As many live at once as the registered-pages quota allows, at most one per arg page.
        let batch_max = (arg_pages.len() as u64).min((quota - BACKGROUND) / n);
        group.bench_function(BenchmarkId::new("teeshm", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut outs = Vec::with_capacity(batch_max as usize);
                let mut done = 0;
                while done < iters {
                    let batch = batch_max.min(iters - done) as usize;
                    let regs: Vec<SmcRegs> = (0..batch)
                        .map(|k| {
                            register_regs(
                                &w,
                                G0,
                                arg_pages[k],
                                buf_ptr,
                                size,
                                next_cookie + k as u64,
                            )
                        })
                        .collect();
                    outs.clear();
                    let start = Instant::now();
                    for r in &regs {
                        outs.push(w.tee.handle_smc(black_box(*r)));
                    }
                    total += start.elapsed();
                    for (k, out) in outs.iter().enumerate() {
                        assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_OK);
                        assert_eq!(arg_ret(&w, arg_pages[k]), TEE_SUCCESS);
                        unregister_raw(&w, G0, arg_pages[k], next_cookie + k as u64);
                    }
                    next_cookie += batch as u64;
                    done += batch as u64;
                }
                total
            })
        });
        group.bench_function(BenchmarkId::new("optee_model", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let batch = batch_max.min(iters - done);
                    let start = Instant::now();
                    for k in 0..batch {
                        let ok = model.register(&w.mem, black_box(buf_ptr), size, next_cookie + k);
                        assert!(ok);
                    }
                    total += start.elapsed();
                    for k in 0..batch {
                        assert!(model.unregister(next_cookie + k));
                    }
                    next_cookie += batch;
                    done += batch;
                }
                total
            })
        });
    }
    group.finish();
    assert_eq!(
        w.tee.guest(G0).unwrap().snapshot().registered_buffers,
        BACKGROUND
    );
    w.check();
}

// ---- touch ----------------------------------------------------------------------------------

const G1: GuestId = GuestId(1);

/// TOUCH of the whole registered buffer `cookie` of `size` bytes.
fn touch(w: &World, session: u32, cookie: u64, size: u64) {
    let params = [
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    let r = w.invoke(G1, session, cmd::TOUCH, &params);
    assert_eq!(r.ret(), TEE_SUCCESS);
}

/// Whether the mapping of `cookie` was cached when WHERE asked for it.
fn was_cached(w: &World, session: u32, cookie: u64, size: u64) -> bool {
    let params = [
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    let r = w.invoke(G1, session, cmd::WHERE, &params);
    assert_eq!(r.ret(), TEE_SUCCESS);
    r.value(2)[0] == 1
}

/// A world with guest 1, a session, and registered buffers of the given sizes (cookies 1, 2..).
fn touch_world(config: CoreConfig, sizes: &[u64]) -> (World, u32) {
    let w = World::new(config);
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    let session = w.open_session(G1);
    for (i, &size) in sizes.iter().enumerate() {
        let buf = w.buffer(size, 0);
        assert_eq!(w.register(G1, i as u64 + 1, &buf), TEE_SUCCESS);
    }
    (w, session)
}

fn touch_group(c: &mut Criterion) {
    const MIB: u64 = 1 << 20;
    // Cached: the default quotas keep both mappings.
    let (cached, s) = touch_world(guests_config(1), &[MIB, PAGE]);
    touch(&cached, s, 1, MIB);
    touch(&cached, s, 2, PAGE);
    assert!(was_cached(&cached, s, 1, MIB) && was_cached(&cached, s, 2, PAGE));
    // Not cached: two 1 MiB buffers and room for one (256 pages) plus the arg page, so each
    // call maps its buffer and evicts the other's mapping.
    let mut config = guests_config(1);
    config.quotas.max_mapped_pages = 300;
    config.max_buffer_pages = 300;
    let (uncached, su) = touch_world(config, &[MIB, MIB]);
    touch(&uncached, su, 1, MIB);
    assert!(!was_cached(&uncached, su, 2, MIB));
    assert!(!was_cached(&uncached, su, 1, MIB));

    let mut group = c.benchmark_group("touch");
    group.bench_function("cached_4k", |b| {
        b.iter(|| touch(&cached, s, 2, black_box(PAGE)))
    });
    group.bench_function("cached_1m", |b| {
        b.iter(|| touch(&cached, s, 1, black_box(MIB)))
    });
    let mut turn = 0u64;
    let misses_before = uncached.tee.window().stats().misses;
    let mut calls = 0u64;
    group.bench_function("uncached_1m", |b| {
        b.iter(|| {
            turn ^= 1;
            calls += 1;
            touch(&uncached, su, 1 + turn, black_box(MIB));
        })
    });
    group.finish();
    // Every uncached call mapped (one miss for its buffer; the arg page is a temporary).
    let stats = cached.tee.window().stats();
    println!("touch: cached world window stats {stats:?}");
    let misses = uncached.tee.window().stats().misses - misses_before;
    println!("touch: uncached world {calls} calls, {misses} window misses");
    cached.check();
    uncached.check();
}

// ---- vm_destroyed ---------------------------------------------------------------------------

const BUFFERS: u64 = 1000;
const BUFFER_PAGES: u64 = 64;

/// Registers `BUFFERS` buffers for `guest`, all on the same 64 NS pages (registration does not
/// care that buffers share pages; 64 guests × 64 000 distinct pages would not fit the simulated
/// RAM), through raw `REGISTER_SHM` calls.
fn fill_guest(w: &World, guest: u16, arg_page: u64, buf_ptr: u64) {
    let id = GuestId(guest);
    for cookie in 1..=BUFFERS {
        register_raw(w, id, arg_page, buf_ptr, BUFFER_PAGES * PAGE, cookie);
    }
}

fn vm_destroyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("vm_destroyed");
    group.sample_size(10);
    const VICTIM: u16 = 64;
    for others in [0u16, 63] {
        let w = World::new(guests_config(64));
        let buf = w.buffer(BUFFER_PAGES * PAGE, 0);
        let (buf_ptr, _) = w.page_list(&buf);
        let arg_page = w.alloc_page();
        for g in 1..=others {
            assert_eq!(w.create_guest(g), OPTEE_SMC_RETURN_OK);
            fill_guest(&w, g, arg_page, buf_ptr);
        }
        let name = if others == 0 { "alone" } else { "beside_63" };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    assert_eq!(w.create_guest(VICTIM), OPTEE_SMC_RETURN_OK);
                    fill_guest(&w, VICTIM, arg_page, buf_ptr);
                    VICTIM
                },
                |id| {
                    let r = w.destroy_guest(black_box(id));
                    assert_eq!(r, OPTEE_SMC_RETURN_OK);
                },
                BatchSize::PerIteration,
            )
        });
        assert!(w.tee.guest(GuestId(VICTIM)).is_none());
        let held: u64 = w.tee.snapshots().iter().map(|s| s.registered_buffers).sum();
        assert_eq!(held, u64::from(others) * BUFFERS);
        w.check();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = register, touch_group, vm_destroyed
}
criterion_main!(benches);
