//! Life cycles: unregister of a buffer in use, guest destruction mid-call, the mapping cache's
//! eviction, quotas, and calls from several CPUs at once.

use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::cmd;
use teeshm_core::{CoreConfig, GuestQuotas, SmcRegs, TeeError};
use teeshm_mm::{ShmWindowConfig, VaWindowConfig, VirtAddr};
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;
use zerocopy::IntoBytes;

const G0: GuestId = GuestId::HYPERVISOR;

/// Starts RPC_BUFFER (CALL_WITH_ARG, so it first asks for an RPC arg) with a registered memref
/// as an extra parameter, and leaves it suspended. Returns the registers of the RPC and the
/// arg page.
fn start_suspended(w: &World, guest: GuestId, session: u32, cookie: u64) -> (SmcRegs, u64) {
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(session);
    h.func.set(cmd::RPC_BUFFER);
    h.num_params.set(3);
    let params = [
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 64, 1, 3),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 100),
    ];
    let page = w.alloc_page();
    w.mem.write(page, h.as_bytes());
    for (i, p) in params.iter().enumerate() {
        w.mem.write(page + 32 + 32 * i as u64, p.as_bytes());
    }
    let out = w.smc(guest, OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
    assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_RPC_ALLOC);
    (out, page)
}

fn finish(w: &World, guest: GuestId, mut out: SmcRegs) -> SmcRegs {
    while is_rpc_return(out.a[0] as u32) {
        let answer = w.answer_rpc(&out, None);
        out = w.tee.handle_smc(answer.from_client(guest));
    }
    out
}

fn arg_ret(w: &World, page: u64) -> u32 {
    let mut hdr = [0u8; 32];
    w.mem.read(page, &mut hdr);
    u32::from_le_bytes(hdr[20..24].try_into().unwrap())
}

#[test]
fn unregister_of_a_buffer_in_use_revokes_it_and_the_last_user_releases_it() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(8192, 0);
    let cookie = w.cookie();
    assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
    let before = w.tee.guest(G0).unwrap().snapshot();
    let (out, page) = start_suspended(&w, G0, s, cookie);
    // A user holding a mapping of it, as a pseudo-TA in the middle of a copy would.
    let used = w.tee.use_registered(G0, cookie).unwrap();
    let guard = w.tee.map(&used).unwrap();
    let mut byte = [0u8; 1];
    guard.read(0, &mut byte).unwrap();
    // Success at once (Linux frees the pages whatever the answer), and the cookie is gone.
    assert_eq!(w.unregister(G0, cookie), TEE_SUCCESS);
    // From here on the TEE never reaches those pages: the mapping is gone, the guard's
    // accesses fail, no new mapping is given.
    assert_eq!(
        guard.read(0, &mut byte),
        Err(TeeError::Revoked(used.mobj().id()))
    );
    assert_eq!(
        guard.write(0, &[1]),
        Err(TeeError::Revoked(used.mobj().id()))
    );
    assert!(
        w.tee
            .window()
            .object_mappings()
            .all(|m| m.mobj != used.mobj().id()),
        "the revoked buffer's mapping went with the unregister"
    );
    drop(guard);
    assert!(matches!(w.tee.map(&used), Err(TeeError::Revoked(_))));
    // The normal world reuses the pages at once; nothing the TEE does touches them.
    w.fill_buf(&buf, |i| (i as u8) ^ 0x5a);
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 1),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    assert_eq!(w.unregister(G0, cookie), TEE_ERROR_BAD_PARAMETERS);
    // The cookie may be used again at once for a new buffer.
    let other = w.buffer(100, 0);
    assert_eq!(w.register(G0, cookie, &other), TEE_SUCCESS);
    assert_eq!(w.unregister(G0, cookie), TEE_SUCCESS);
    w.check();
    let mid = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(mid.registered_buffers, before.registered_buffers - 1);
    assert!(
        mid.registered_pages >= 2,
        "the object lives while it is used"
    );
    drop(used);
    let out = finish(&w, G0, out);
    assert_eq!(out.a[0], 0);
    assert_eq!(arg_ret(&w, page), TEE_SUCCESS);
    let after = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(after.registered_pages, before.registered_pages - 2);
    assert_eq!(after.objects, before.objects - 1);
    assert_eq!(after.mapped_pages, 0);
    let reused = w.read_buf(&buf, 0, 8192);
    assert!(
        reused
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u8) ^ 0x5a),
        "the pages the normal world reused are untouched"
    );
    w.check();
}

#[test]
fn destroying_a_guest_ends_its_suspended_call_and_touches_no_one_else() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(3), 0);
    assert_eq!(w.create_guest(4), 0);
    let (g3, g4) = (GuestId(3), GuestId(4));
    let mut cookies = Vec::new();
    for g in [g3, g4] {
        for _ in 0..5 {
            let buf = w.buffer(20_000, 9);
            let c = w.cookie();
            assert_eq!(w.register(g, c, &buf), TEE_SUCCESS);
            cookies.push((g, c));
        }
    }
    let s3 = w.open_session(g3);
    let s4 = w.open_session(g4);
    // Map two of guest 4's buffers so it has cached mappings.
    for &(g, c) in cookies.iter().filter(|(g, _)| *g == g4).take(2) {
        let r = w.invoke(
            g,
            s4,
            cmd::TOUCH,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, c, 0, 20_000),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
    }
    let (_, c3) = cookies[0];
    let (out, _) = start_suspended(&w, g3, s3, c3);
    let thread = out.a[3];
    let g4_before = w.tee.guest(g4).unwrap().snapshot();
    let mappings_before: Vec<_> = w.tee.window().shm().mappings().copied().collect();
    assert_eq!(w.destroy_guest(3), 0);
    assert!(w.tee.guest(g3).is_none());
    w.check();
    // Nothing of guest 3 is left: no thread, no mapping, no object.
    assert!(
        w.tee
            .thread_states()
            .iter()
            .all(|t| *t == teeshm_core::thread::ThreadState::Free)
    );
    assert!(w.tee.window().shm().mappings().all(|m| m.owner != g3));
    // Guest 4 is exactly as it was.
    assert_eq!(w.tee.guest(g4).unwrap().snapshot(), g4_before);
    let mappings_after: Vec<_> = w.tee.window().shm().mappings().copied().collect();
    assert_eq!(
        mappings_before
            .into_iter()
            .filter(|m| m.owner != g3)
            .collect::<Vec<_>>(),
        mappings_after
    );
    // The ended call cannot be resumed.
    let resume =
        SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0x4000_0000, thread]).from_client(g3);
    assert_eq!(
        w.tee.handle_smc(resume).a[0] as u32,
        OPTEE_SMC_RETURN_ERESUME
    );
    // A guest with the same id starts empty.
    assert_eq!(w.create_guest(3), 0);
    let fresh = w.tee.guest(g3).unwrap().snapshot();
    assert_eq!(
        (fresh.objects, fresh.registered_pages, fresh.sessions),
        (0, 0, 0)
    );
    w.check();
}

/// A window of `pages` pages for one normal world that may map `mapped_quota` of them, with 2
/// threads and 8 objects (the capacity check wants the quota, a guard page per object and each
/// thread's list page inside the window).
fn small_window(pages: u64, mapped_quota: u64) -> CoreConfig {
    CoreConfig {
        threads: 2,
        max_buffer_pages: mapped_quota,
        window: ShmWindowConfig {
            va: VaWindowConfig {
                base: VirtAddr(0x40_0000_0000),
                size: pages * PAGE,
                guard_pages: 1,
            },
            max_table_pages: 64,
        },
        quotas: GuestQuotas {
            max_mapped_pages: mapped_quota,
            max_objects: 8,
            max_threads: 2,
            ..GuestQuotas::default()
        },
        ..CoreConfig::default()
    }
}

fn where_cached(w: &World, s: u32, cookie: u64, size: u64) -> (u32, u64) {
    let r = w.invoke(
        G0,
        s,
        cmd::WHERE,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    (r.ret(), r.value(2)[0])
}

#[test]
fn the_cache_evicts_least_recently_used_and_never_a_buffer_in_use() {
    // Room in the guest's mapped quota for 3 buffers of 20 pages and a call's arg page.
    let w = World::new(small_window(80, 62));
    let s = w.open_session(G0);
    let size = 20 * PAGE;
    let cookies: Vec<u64> = (0..4)
        .map(|_| {
            let c = w.cookie();
            assert_eq!(w.register(G0, c, &w.buffer(size, 0)), TEE_SUCCESS);
            c
        })
        .collect();
    for &c in &cookies[..3] {
        assert_eq!(where_cached(&w, s, c, size), (TEE_SUCCESS, 0));
    }
    // Touch 0 again, so 1 is the least recently used.
    assert_eq!(where_cached(&w, s, cookies[0], size), (TEE_SUCCESS, 1));
    assert_eq!(where_cached(&w, s, cookies[3], size), (TEE_SUCCESS, 0));
    assert_eq!(w.tee.window().stats().evictions, 1);
    assert_eq!(where_cached(&w, s, cookies[0], size).1, 1, "0 stayed");
    assert_eq!(where_cached(&w, s, cookies[1], size).1, 0, "1 was evicted");
    w.check();
    // A call suspended with buffer 1 in use: it may not be evicted while the call waits.
    let (out, _) = start_suspended(&w, G0, s, cookies[1]);
    let before = w.tee.window().stats().evictions;
    for &c in &[cookies[2], cookies[3], cookies[0]] {
        let _ = where_cached(&w, s, c, size);
    }
    let window = w.tee.window();
    let still: Vec<_> = window
        .object_mappings()
        .filter(|m| m.cookie == Some(cookies[1]))
        .collect();
    assert_eq!(still.len(), 1, "buffer in use never evicted");
    assert!(window.stats().evictions > before);
    drop(window);
    w.check();
    assert_eq!(finish(&w, G0, out).a[0], 0);
    w.check();
}

#[test]
fn mapped_quota_evicts_own_idle_mappings_then_refuses() {
    let w = World::new(small_window(1 << 12, 30));
    let s = w.open_session(G0);
    let size = 20 * PAGE;
    let (a, b) = (w.cookie(), w.cookie());
    assert_eq!(w.register(G0, a, &w.buffer(size, 0)), TEE_SUCCESS);
    assert_eq!(w.register(G0, b, &w.buffer(size, 0)), TEE_SUCCESS);
    assert_eq!(where_cached(&w, s, a, size), (TEE_SUCCESS, 0));
    assert_eq!(where_cached(&w, s, b, size), (TEE_SUCCESS, 0));
    assert_eq!(w.tee.guest(G0).unwrap().counters().mapped_pages(), 20);
    // Two 20-page memrefs in one call cannot both be mapped under a 30-page quota.
    let r = w.invoke(
        G0,
        s,
        cmd::COPY,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, a, 0, size),
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, b, 0, size),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_OUT_OF_MEMORY);
    w.check();
}

#[test]
fn quotas_refuse_cleanly() {
    let config = CoreConfig {
        quotas: GuestQuotas {
            max_objects: 3,
            max_registered_pages: 10,
            max_sessions: 1,
            ..GuestQuotas::default()
        },
        ..CoreConfig::default()
    };
    let w = World::new(config);
    let big = w.buffer(11 * PAGE, 0);
    assert_eq!(w.register(G0, 1, &big), TEE_ERROR_OUT_OF_MEMORY, "pages");
    assert_eq!(w.register(G0, 1, &w.buffer(PAGE, 0)), TEE_SUCCESS);
    // The arg page of each call is an object too: 1 registered + arg = 2, so one more fits.
    assert_eq!(w.register(G0, 2, &w.buffer(PAGE, 0)), TEE_SUCCESS);
    let before = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(
        w.register(G0, 3, &w.buffer(PAGE, 0)),
        TEE_ERROR_OUT_OF_MEMORY,
        "objects"
    );
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before, "state kept");
    assert_eq!(w.unregister(G0, 2), TEE_SUCCESS);
    w.open_session(G0);
    let r = w.open_session_uuid(G0, teeshm_core::pta::MEMTEST_UUID);
    assert_eq!(r.ret(), TEE_ERROR_OUT_OF_MEMORY, "sessions");
    w.check();
}

#[test]
fn calls_from_several_cpus_at_once() {
    use std::sync::Arc;
    let w = Arc::new(World::virtualized());
    for g in 1..=3u16 {
        assert_eq!(w.create_guest(g), 0);
    }
    let mut handles = Vec::new();
    for t in 0..6u64 {
        let w = w.clone();
        handles.push(std::thread::spawn(move || {
            let g = GuestId(1 + (t % 3) as u16);
            let s = w.open_session(g);
            for i in 0..40u64 {
                let cookie = (t << 32) | i;
                let buf = w.buffer(3 * PAGE + 100, 100);
                assert_eq!(w.register(g, cookie, &buf), TEE_SUCCESS);
                let r = w.invoke(
                    g,
                    s,
                    cmd::FILL,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, buf.size),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, i, 0, 0),
                    ],
                );
                // Another CPU may hold every thread for a moment.
                assert!(
                    r.a0 == 0 || r.a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT,
                    "{:#x}",
                    r.a0
                );
                if r.a0 == 0 {
                    assert_eq!(r.ret(), TEE_SUCCESS);
                    assert_eq!(
                        w.read_buf(&buf, buf.size - 1, 1)[0],
                        teeshm_core::pta::pattern_byte(i, buf.size - 1)
                    );
                }
                assert_eq!(w.unregister(g, cookie), TEE_SUCCESS);
                w.free_buffer(&buf);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    w.check();
    for g in 1..=3u16 {
        let s = w.tee.guest(GuestId(g)).unwrap().snapshot();
        assert_eq!(
            (s.objects, s.registered_pages, s.mapped_pages, s.threads),
            (0, 0, 0, 0)
        );
    }
}

/// A copy racing the revocation of its buffer: once `UNREGISTER_SHM` returns, the TEE never
/// reads or writes the buffer's pages again (invariant 5), although map guards copy with no
/// lock held. Each round a call FILLs a 64-page registered buffer over a slow bus (every access
/// to its pages waits 200 µs after its translation, so a revocation lands in the middle of a
/// copy), the normal world unregisters the buffer while the call holds a guard, and from the
/// moment the unregister returns every access to those pages is recorded: there must be none.
#[test]
fn a_copy_racing_a_revocation_never_touches_the_pages_after_unregister_returns() {
    use std::sync::Arc;
    use std::time::Duration;
    let w = Arc::new(World::default_world());
    let s = w.open_session(G0);
    let mut conflicts = 0;
    for round in 0..12u64 {
        let buf = w.buffer(64 * PAGE, 0);
        let cookie = w.cookie();
        assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
        w.mem.slow_down(&buf.pages, Duration::from_micros(200));
        let size = buf.size;
        let copier = {
            let w = w.clone();
            std::thread::spawn(move || {
                w.invoke(
                    G0,
                    s,
                    cmd::FILL,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, size),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, round, 0, 0),
                    ],
                )
            })
        };
        // Wait until the call holds a guard of the buffer (it is copying), then a little more
        // (0 to 2.2 ms, a different moment each round).
        while !w
            .tee
            .window()
            .object_mappings()
            .any(|m| m.cookie == Some(cookie) && m.guards > 0)
        {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(round * 200));
        assert_eq!(w.unregister(G0, cookie), TEE_SUCCESS);
        // The driver frees the pages now; from here on no access may reach them.
        w.mem.mark_freed(&buf.pages);
        let r = copier.join().unwrap();
        assert_eq!(r.a0, 0);
        if r.ret() == TEE_ERROR_ACCESS_CONFLICT {
            conflicts += 1;
        } else {
            assert_eq!(
                r.ret(),
                TEE_SUCCESS,
                "a FILL that ended before the revocation"
            );
        }
    }
    assert_eq!(
        w.mem.accesses_to_freed(),
        Vec::<u64>::new(),
        "accesses to pages after their UNREGISTER_SHM returned"
    );
    assert!(conflicts > 0, "some revocation landed while a copy ran");
    w.check();
}

/// When the guest's own calls hold its whole mapped-pages quota, its next call cannot map its
/// arg: a lack of room (`ENOMEM`, which the driver may retry), not a bad address.
#[test]
fn an_arg_that_cannot_be_mapped_for_want_of_room_is_enomem() {
    let w = World::new(small_window(1 << 12, 10));
    let s = w.open_session(G0);
    let buf = w.buffer(9 * PAGE, 0);
    let cookie = w.cookie();
    assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
    assert_eq!(where_cached(&w, s, cookie, 9 * PAGE), (TEE_SUCCESS, 0));
    // A call holds the buffer (9 pages, not evictable while used) and its own arg page (1).
    let (out, _) = start_suspended(&w, G0, s, cookie);
    assert_eq!(w.tee.guest(G0).unwrap().counters().mapped_pages(), 10);
    let r = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, w.alloc_page()]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ENOMEM);
    w.check();
    assert_eq!(finish(&w, G0, out).a[0], 0);
    w.check();
}

#[test]
fn a_thread_parked_between_calls_costs_no_other_guest_and_goes_with_its_guest() {
    // Two threads, both set aside (one for each of two guests), none shared.
    let mut config = CoreConfig {
        normal_world: teeshm_core::NormalWorld::Virtualized,
        threads: 2,
        max_guests: 2,
        ..Default::default()
    };
    config.quotas.max_threads = 2;
    let w = World::new(config);
    let (g1, g2, g3) = (GuestId(1), GuestId(2), GuestId(3));
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    assert_eq!(w.create_guest(2), OPTEE_SMC_RETURN_OK);
    // Each guest's calls end with its thread parked: no call holds a thread.
    let s1 = w.open_session(g1);
    let c1 = w.cookie();
    assert_eq!(w.register(g1, c1, &w.buffer(PAGE, 0)), TEE_SUCCESS);
    w.open_session(g2);
    assert!(
        w.tee
            .thread_states()
            .iter()
            .all(|t| *t == teeshm_core::thread::ThreadState::Free)
    );
    w.check();
    // Guest 1's next call takes its parked thread; a second one at once finds none (nothing
    // is shared), while guest 2 still has its own.
    let (out, _) = start_suspended(&w, g1, s1, c1);
    let empty_arg = |g| w.smc(g, OPTEE_SMC_CALL_WITH_ARG, &[0, w.alloc_page()]).a[0] as u32;
    assert_eq!(empty_arg(g1), OPTEE_SMC_RETURN_ETHREAD_LIMIT);
    assert_eq!(empty_arg(g2), OPTEE_SMC_RETURN_OK);
    w.check();
    // The cache cannot be toggled while guest 1's call waits, and can once it ended.
    assert_eq!(
        w.smc(g1, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_EBUSY
    );
    assert_eq!(finish(&w, g1, out).a[0], 0);
    assert_eq!(w.smc(g1, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0], 0);
    w.check();
    // Guest 1 goes, its parked thread with it, so a guest created in its place runs calls.
    assert_eq!(empty_arg(g1), OPTEE_SMC_RETURN_OK);
    assert_eq!(w.destroy_guest(1), OPTEE_SMC_RETURN_OK);
    assert_eq!(w.create_guest(3), OPTEE_SMC_RETURN_OK);
    let s3 = w.open_session(g3);
    let c3 = w.cookie();
    assert_eq!(w.register(g3, c3, &w.buffer(PAGE, 0)), TEE_SUCCESS);
    let (out, _) = start_suspended(&w, g3, s3, c3);
    assert_eq!(finish(&w, g3, out).a[0], 0);
    w.check();
}
