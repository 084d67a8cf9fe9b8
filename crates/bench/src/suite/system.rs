//! Figures of many guests at once: P6 VM destroy alone vs beside busy guests, P7 the largest
//! system held at once, P8 simulated invoke throughput on 1, 2 and 4 threads.

use super::calls::touch;
use super::{Budget, Figure, Series, figure, median};
use crate::peers::OpteeModel;
use std::sync::Arc;
use std::time::Instant;
use teeshm_abi::GuestId;
use teeshm_abi::msg::*;
use teeshm_abi::smc::{OPTEE_SMC_CALL_WITH_ARG, OPTEE_SMC_RETURN_OK};
use teeshm_core::pta::cmd;
use teeshm_testkit::msg::header;
use teeshm_testkit::world::{PAGE, World};
use zerocopy::IntoBytes;

// ---- P6 -------------------------------------------------------------------------------------

const BUFFERS: u64 = 1000;
const BUFFER_PAGES: u64 = 64;

fn fill_guest(w: &World, guest: u16, arg_page: u64, buf_ptr: u64) {
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.num_params.set(1);
    for cookie in 1..=BUFFERS {
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, BUFFER_PAGES * PAGE, cookie),
        );
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(p.as_bytes());
        w.mem.write(arg_page, &bytes);
        let o = w.smc(GuestId(guest), OPTEE_SMC_CALL_WITH_ARG, &[0, arg_page]);
        assert_eq!(o.a[0] as u32, OPTEE_SMC_RETURN_OK);
    }
}

/// Median time to destroy a guest of 1000 × 64-page buffers beside `others` guests holding the
/// same (the others also hold a mapped, cached buffer each: they are busy).
fn p6_point(rounds: usize, others: u16) -> f64 {
    let w = World::new(crate::fixtures::guests_config(u32::from(others) + 1));
    let buf = w.buffer(BUFFER_PAGES * PAGE, 0);
    let (buf_ptr, _) = w.page_list(&buf);
    let arg = w.alloc_page();
    for g in 1..=others {
        assert_eq!(w.create_guest(g), 0);
        fill_guest(&w, g, arg, buf_ptr);
        let s = w.open_session(GuestId(g));
        touch(&w, GuestId(g), s, 1, BUFFER_PAGES * PAGE);
    }
    const VICTIM: u16 = 100;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        assert_eq!(w.create_guest(VICTIM), 0);
        fill_guest(&w, VICTIM, arg, buf_ptr);
        let t = Instant::now();
        w.destroy_guest(VICTIM);
        samples.push(t.elapsed().as_nanos() as f64);
    }
    median(samples)
}

pub(super) fn p6(quick: bool, out: &mut Vec<Figure>, series: &mut Vec<Series>) {
    let rounds = if quick { 5 } else { 15 };
    let counts: &[u16] = if quick { &[0, 63] } else { &[0, 7, 31, 63] };
    let mut s = Series {
        id: "P6".into(),
        ..Series::default()
    };
    let mut alone = 0.0;
    for &others in counts {
        let t = p6_point(rounds, others);
        if others == 0 {
            alone = t;
        }
        s.points.push((f64::from(others) + 1.0, t, alone));
    }
    let beside = s.points.last().map_or(0.0, |p| p.1);
    out.push(figure(
        "P6",
        "VM_DESTROYED of a guest with 1000 buffers × 64 pages, beside 63 busy guests, over alone",
        beside / alone,
        "×",
        Some((alone, "the same destroy with no other guest (ns)")),
        Some((beside / alone, "beside / alone")),
        "≤ 1.2",
        Some(beside / alone <= 1.2),
        &format!(
            "alone {:.0} µs, beside 63 {:.0} µs",
            alone / 1e3,
            beside / 1e3
        ),
    ));
    series.push(s);
}

// ---- P7 -------------------------------------------------------------------------------------

pub(super) fn p7(out: &mut Vec<Figure>) {
    const GUESTS: u16 = 64;
    const PER_GUEST: u64 = 16_384;
    const BUF_PAGES: u64 = 1024;
    let w = World::new(crate::fixtures::guests_config(u32::from(GUESTS)));
    let buf = w.buffer(BUF_PAGES * PAGE, 0);
    let (buf_ptr, _) = w.page_list(&buf);
    let arg = w.alloc_page();
    let t = Instant::now();
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.num_params.set(1);
    for g in 1..=GUESTS {
        assert_eq!(w.create_guest(g), 0);
        for cookie in 0..PER_GUEST / BUF_PAGES {
            let p = MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                Tmem::new(buf_ptr, BUF_PAGES * PAGE, cookie),
            );
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(p.as_bytes());
            w.mem.write(arg, &bytes);
            let o = w.smc(GuestId(g), OPTEE_SMC_CALL_WITH_ARG, &[0, arg]);
            assert_eq!(o.a[0] as u32, OPTEE_SMC_RETURN_OK);
        }
    }
    let took = t.elapsed();
    let snaps = w.tee.snapshots();
    let pages: u64 = snaps.iter().map(|s| s.registered_pages).sum();
    let bytes: u64 = snaps.iter().map(|s| s.secure_bytes).sum();
    let model = OpteeModel::object_bytes(BUF_PAGES) * (pages / BUF_PAGES);
    assert!(w.tee.check_agreement().is_empty());
    // The pages are counted after registering them; the bytes are the counters' charges and
    // the model's type sizes: arithmetic, not a measurement.
    let mut f = figure(
        "P7",
        "registered pages held at once by 64 guests (16 buffers × 1024 pages each)",
        pages as f64,
        "pages",
        Some((
            model as f64 / pages as f64,
            "OP-TEE's bytes per page for the same (8 B + object)",
        )),
        Some((bytes as f64 / pages as f64, "teeshm secure bytes per page")),
        "64 × 16384 pages held",
        Some(pages >= u64::from(GUESTS) * PER_GUEST),
        &format!(
            "{:.1} MiB of secure memory for {:.1} GiB of shared memory; built in {:.0} ms. OP-TEE's default of 2 guests would refuse guest 3",
            bytes as f64 / 1048576.0,
            (pages * PAGE) as f64 / (1u64 << 30) as f64,
            took.as_secs_f64() * 1e3
        ),
    );
    f.kind = "computed".into();
    out.push(f);
}

// ---- P8 -------------------------------------------------------------------------------------

/// Invokes per second on `threads` threads, each its own guest, through the whole simulated
/// system (driver, mediator, core).
fn p8_point(budget: Budget, threads: u16) -> f64 {
    use teeshm_nw::GuestBuffer;
    use teeshm_nw::client::{Operation, Param, ShmFlags};
    let system = Arc::new(
        teeshm_sim::System::new(teeshm_sim::SystemConfig {
            guests: threads,
            ..teeshm_sim::SystemConfig::default()
        })
        .unwrap(),
    );
    for g in 1..=threads {
        system.start_guest(g).unwrap();
    }
    let done = std::sync::atomic::AtomicU64::new(0);
    let end = Instant::now() + budget.per_figure * 2;
    std::thread::scope(|s| {
        for g in 1..=threads {
            let (system, done) = (&system, &done);
            s.spawn(move || {
                let guest = system.guest(g).unwrap();
                let mut ctx = guest.context();
                let session = ctx.open_session(teeshm_core::pta::MEMTEST_UUID).unwrap();
                let buf = GuestBuffer::alloc(ctx.driver_mut().ram_mut(), 64 * 1024, 0).unwrap();
                let shm = ctx.register_shared_memory(buf, ShmFlags::INOUT).unwrap();
                let mut n = 0;
                while Instant::now() < end {
                    for _ in 0..64 {
                        let mut op = Operation::new([
                            Param::Whole(&shm),
                            Param::ValueOutput { a: 0, b: 0 },
                            Param::None,
                            Param::None,
                        ]);
                        ctx.invoke_command(&session, cmd::TOUCH, &mut op).unwrap();
                        n += 1;
                    }
                }
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    assert!(system.check().is_empty());
    done.into_inner() as f64 / (budget.per_figure * 2).as_secs_f64()
}

pub(super) fn p8(budget: Budget, out: &mut Vec<Figure>) {
    let one = p8_point(budget, 1);
    for threads in [1u16, 2, 4] {
        let v = if threads == 1 {
            one
        } else {
            p8_point(budget, threads)
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ideal = f64::from(threads).min(cpus);
        out.push(figure(
            &format!("P8.{threads}"),
            &format!("invokes per second through driver, mediator and core, {threads} thread(s), one guest each"),
            v,
            "invokes/s",
            Some((one, "1 thread")),
            Some((v / one, "speed-up over 1 thread")),
            if threads == 1 {
                ""
            } else {
                "≥ 0.75 × min(threads, CPUs) speed-up"
            },
            (threads > 1).then_some(v / one >= 0.75 * ideal),
            &format!("this machine has {cpus} CPUs"),
        ));
    }
}
