//! Fast calls, sessions, every memref kind, the three call forms, and RPC.

use teeshm_abi::GuestId;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_abi::uid;
use teeshm_core::pta::{cmd, pattern_byte};
use teeshm_core::{CoreConfig, NormalWorld};
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;

const G0: GuestId = GuestId::HYPERVISOR;

#[test]
fn identity_and_capabilities() {
    let w = World::default_world();
    let r = w.smc(G0, OPTEE_SMC_CALLS_UID, &[]);
    assert_eq!(
        [r.a[0], r.a[1], r.a[2], r.a[3]].map(|x| x as u32),
        uid::OPTEE_MSG_UID
    );
    let r = w.smc(G0, OPTEE_SMC_CALLS_REVISION, &[]);
    assert_eq!((r.a[0], r.a[1]), (2, 0));
    assert_eq!(w.smc(G0, OPTEE_SMC_CALLS_COUNT, &[]).a[0], 14);
    let r = w.smc(G0, OPTEE_SMC_CALL_GET_OS_UUID, &[]);
    assert_eq!(r.a[0] as u32, uid::OPTEE_MSG_OS_OPTEE_UUID[0]);
    let r = w.smc(G0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[1]);
    assert_eq!(r.a[0], 0);
    let caps = SecureCaps::from_bits_truncate(r.a[1] as u32);
    assert!(caps.contains(SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL | SecureCaps::RPC_ARG));
    assert!(!caps.contains(SecureCaps::HAVE_RESERVED_SHM));
    assert!(
        !caps.contains(SecureCaps::VIRTUALIZATION),
        "no hypervisor, no VIRTUALIZATION"
    );
    assert_eq!(r.a[3], 4);
    // Unknown normal-world capability bits are refused, as in OP-TEE.
    assert_eq!(w.smc(G0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[2]).a[0], 7);
    assert_eq!(
        w.smc(G0, OPTEE_SMC_GET_SHM_CONFIG, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    // The calls a caller may have at once: the guest's thread quota, not the core's 32.
    let r = w.smc(G0, OPTEE_SMC_GET_THREAD_COUNT, &[]);
    let quota = CoreConfig::default().quotas.max_threads;
    assert_eq!((r.a[0], r.a[1]), (0, quota.min(32)));
    assert_eq!(
        w.smc(G0, 0xB200_00FF, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    );
    assert_eq!(
        w.smc(G0, 0x3200_00FF, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    );
    // SMC64 variants of OP-TEE calls do not exist.
    assert_eq!(
        w.smc(G0, OPTEE_SMC_CALL_WITH_ARG | OPTEE_SMC_64, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_UNKNOWN_FUNCTION
    );
}

#[test]
fn without_a_hypervisor_vm_calls_are_unknown_and_a7_is_ignored() {
    let w = World::default_world();
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_UNKNOWN_FUNCTION);
    assert_eq!(w.destroy_guest(1), OPTEE_SMC_RETURN_UNKNOWN_FUNCTION);
    // Whatever a7 holds, the call is the one normal world's: a buffer registered with a7 = 0
    // is found with a7 = 7.
    let buf = w.buffer(5000, 3);
    assert_eq!(w.register(G0, 5, &buf), TEE_SUCCESS);
    assert_eq!(w.unregister(GuestId(7), 5), TEE_SUCCESS);
    assert!(w.tee.guest(GuestId(7)).is_none());
    w.check();
}

#[test]
fn under_a_hypervisor_guest_zero_makes_fast_calls_only() {
    let w = World::virtualized();
    let caps = w.smc(G0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]).a[1];
    assert!(SecureCaps::from_bits_truncate(caps as u32).contains(SecureCaps::VIRTUALIZATION));
    let buf = w.buffer(100, 0);
    let (hi, lo) = split_pair(buf.pages[0]);
    let r = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ENOTAVAIL);
    assert_eq!(
        w.smc(G0, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    assert_eq!(w.register(GuestId(1), 5, &buf), TEE_SUCCESS);
    w.check();
}

#[test]
fn vm_lifecycle_rules() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    assert_eq!(
        w.create_guest(1),
        OPTEE_SMC_RETURN_ENOTAVAIL,
        "second VM_CREATED"
    );
    assert_eq!(w.create_guest(0), OPTEE_SMC_RETURN_ENOTAVAIL, "guest id 0");
    // Only client id 0 may create or destroy.
    let r = w.smc(GuestId(1), OPTEE_SMC_VM_CREATED, &[2]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ENOTAVAIL);
    let r = w.smc(GuestId(1), OPTEE_SMC_VM_DESTROYED, &[1]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ENOTAVAIL);
    assert!(w.tee.guest(GuestId(1)).is_some());
    // An id above 16 bits is refused, not truncated.
    assert_eq!(
        w.smc(G0, OPTEE_SMC_VM_CREATED, &[0x1_0002]).a[0] as u32,
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    assert!(w.tee.guest(GuestId(2)).is_none());
    // Calls from a guest that was never created.
    let r = w.smc(GuestId(9), OPTEE_SMC_CALL_WITH_ARG, &[0, 0x4000_0000]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ENOTAVAIL);
    assert_eq!(w.destroy_guest(1), OPTEE_SMC_RETURN_OK);
    assert_eq!(
        w.destroy_guest(1),
        OPTEE_SMC_RETURN_OK,
        "unknown guest: OK as OP-TEE"
    );
    assert_eq!(w.destroy_guest(0), OPTEE_SMC_RETURN_ENOTAVAIL);
    w.check();
}

/// 64 guests, each with its share: a thread reserved, 8192 mappable pages, 4 MiB of heap.
fn sixty_four_guests() -> CoreConfig {
    let mut c = CoreConfig {
        normal_world: NormalWorld::Virtualized,
        threads: 64,
        max_guests: 64,
        max_buffer_pages: 8192,
        heap_budget: 512 << 20,
        ..CoreConfig::default()
    };
    c.quotas.max_mapped_pages = 8192;
    c.quotas.max_objects = 1024;
    c
}

#[test]
fn sixty_four_guests_at_once() {
    let w = World::new(sixty_four_guests());
    for id in 1..=64u16 {
        assert_eq!(w.create_guest(id), OPTEE_SMC_RETURN_OK, "guest {id}");
    }
    assert_eq!(
        w.create_guest(65),
        OPTEE_SMC_RETURN_ENOTAVAIL,
        "max_guests = 64"
    );
    for id in 1..=64u16 {
        let buf = w.buffer(5000, 7);
        assert_eq!(w.register(GuestId(id), 42, &buf), TEE_SUCCESS);
    }
    w.check();
    // The same cookie in another guest is another buffer.
    assert_eq!(w.unregister(GuestId(3), 42), TEE_SUCCESS);
    assert_eq!(w.unregister(GuestId(3), 42), TEE_ERROR_BAD_PARAMETERS);
    assert!(w.tee.use_registered(GuestId(4), 42).is_some());
    w.check();
}

#[test]
fn every_memref_kind_and_call_form() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let input = w.buffer(10_000, 0x123);
    w.fill_buf(&input, |i| pattern_byte(77, i));
    let output = w.buffer(10_000, 0xff0);
    let cookie_in = w.cookie();
    let cookie_out = w.cookie();
    assert_eq!(w.register(G0, cookie_in, &input), TEE_SUCCESS);
    assert_eq!(w.register(G0, cookie_out, &output), TEE_SUCCESS);
    // A registered arg buffer for CALL_WITH_REGD_ARG.
    let arg_buf = w.buffer(8192, 0);
    let arg_cookie = w.cookie();
    assert_eq!(w.register(G0, arg_cookie, &arg_buf), TEE_SUCCESS);
    let modes = [
        ArgMode::Plain,
        ArgMode::RpcArg,
        ArgMode::Regd {
            cookie: arg_cookie,
            offset: 224,
        },
    ];
    for mode in modes {
        // Whole registered memrefs.
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::COPY,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie_in, 0, 10_000),
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie_out, 0, 10_000),
            ],
        );
        assert_eq!((r.a0, r.ret()), (0, TEE_SUCCESS), "{mode:?}");
        assert_eq!(
            w.read_buf(&output, 0, 10_000),
            w.read_buf(&input, 0, 10_000)
        );
        // Partial registered memrefs.
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::COPY,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie_in, 4000, 100),
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT, cookie_out, 9000, 1000),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
        assert_eq!(
            r.params[1].rmem().size.get(),
            100,
            "output size written back"
        );
        assert_eq!(
            w.read_buf(&output, 9000, 100),
            w.read_buf(&input, 4000, 100)
        );
        // Temporary NONCONTIG memrefs, both directions.
        let tmp_out = w.buffer(3000, 17);
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::FILL,
            &[
                w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &tmp_out),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 5, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
        let expect: Vec<u8> = (0..3000).map(|i| pattern_byte(5, i)).collect();
        assert_eq!(w.read_buf(&tmp_out, 0, 3000), expect);
        // SHA-256 of a temporary input into a registered output; NULL memref input.
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::SHA256,
            &[
                w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &tmp_out),
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie_out, 0, 64),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&expect);
        assert_eq!(w.read_buf(&output, 0, 32), digest.as_slice());
        assert_eq!(r.params[1].rmem().size.get(), 32);
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::SHA256,
            &[
                MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, Tmem::new(0, 0, 0)),
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie_out, 0, 32),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS, "NULL memref");
        assert_eq!(
            w.read_buf(&output, 0, 32),
            sha2::Sha256::digest(b"").as_slice()
        );
        // Short output buffer: the needed size comes back.
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::SHA256,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie_in, 0, 10),
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie_out, 0, 16),
            ],
        );
        assert_eq!(r.ret(), TEE_ERROR_SHORT_BUFFER);
        assert_eq!(r.header.ret_origin.get(), TEE_ORIGIN_TRUSTED_APP);
        assert_eq!(r.params[1].rmem().size.get(), 32);
        // RPC buffer round trip.
        let r = w.invoke_as(
            G0,
            mode,
            s,
            cmd::RPC_BUFFER,
            &[
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 20_000, 1, 9),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS, "{mode:?}: {:#x}", r.ret());
        assert_eq!(r.value(1)[0], 20_000);
        assert_eq!(w.rpc_buffers_held(), 0, "every RPC buffer given back");
        w.check();
    }
    let snap = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(snap.registered_buffers, 3);
    assert_eq!(snap.objects, 3, "only the registered buffers remain");
}

#[test]
fn where_reports_cached_mapping_and_addresses() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(1 << 20, 0);
    let cookie = w.cookie();
    assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
    let params = [
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 4096 + 5, 10),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    let first = w.invoke(G0, s, cmd::WHERE, &params);
    assert_eq!(first.ret(), TEE_SUCCESS);
    assert_eq!(
        first.value(1)[1],
        w.buf_pa(&buf, 4096 + 5),
        "PA of the first byte"
    );
    assert_eq!(first.value(2), [0, 256, 0], "first use maps all 256 pages");
    let again = w.invoke(G0, s, cmd::WHERE, &params);
    assert_eq!(again.value(2)[0], 1, "second use hits the cache");
    assert_eq!(again.value(1)[0], first.value(1)[0], "same VA");
    // The VA really translates to the PA.
    let va = teeshm_mm::VirtAddr(first.value(1)[0]);
    assert_eq!(
        w.tee.window().shm().virt_to_phys(va).map(|p| p.get()),
        Some(w.buf_pa(&buf, 4096 + 5))
    );
    w.check();
    assert_eq!(w.unregister(G0, cookie), TEE_SUCCESS);
    assert!(
        w.tee.window().shm().virt_to_phys(va).is_none(),
        "unregister unmaps"
    );
    w.check();
}

#[test]
fn sessions_and_unknown_things() {
    let w = World::default_world();
    let r = w.open_session_uuid(G0, [0; 16]);
    assert_eq!(r.ret(), TEE_ERROR_ITEM_NOT_FOUND);
    let s = w.open_session(G0);
    let r = w.invoke(G0, s, 99, &[]);
    assert_eq!(r.ret(), TEE_ERROR_NOT_IMPLEMENTED);
    let r = w.invoke(G0, s + 1, cmd::TOUCH, &[]);
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS, "unknown session");
    let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
    h.session.set(s);
    assert_eq!(w.call(G0, ArgMode::RpcArg, h, &[]).ret(), TEE_SUCCESS);
    assert_eq!(
        w.call(G0, ArgMode::RpcArg, h, &[]).ret(),
        TEE_ERROR_BAD_PARAMETERS
    );
    let r = w.call(G0, ArgMode::RpcArg, header(77), &[]);
    assert_eq!(r.ret(), TEE_ERROR_NOT_IMPLEMENTED);
    let r = w.call(G0, ArgMode::RpcArg, header(OPTEE_MSG_CMD_CANCEL), &[]);
    assert_eq!(r.ret(), TEE_SUCCESS);
    w.check();
}

#[test]
fn static_pool_when_configured() {
    use teeshm_testkit::STATIC_POOL;
    let config = teeshm_core::CoreConfig {
        static_pool: Some(
            teeshm_mm::PhysRange::new(teeshm_mm::PhysAddr(STATIC_POOL.0), STATIC_POOL.1).unwrap(),
        ),
        ..Default::default()
    };
    let w = World::new(config);
    let r = w.smc(G0, OPTEE_SMC_GET_SHM_CONFIG, &[]);
    assert_eq!(
        (r.a[0], r.a[1], r.a[2], r.a[3]),
        (0, STATIC_POOL.0, STATIC_POOL.1, 1)
    );
    let r = w.smc(G0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]);
    assert!(SecureCaps::from_bits_truncate(r.a[1] as u32).contains(SecureCaps::HAVE_RESERVED_SHM));
    let s = w.open_session(G0);
    // A contiguous tmem inside the pool.
    let at = STATIC_POOL.0 + 0x2345;
    w.mem.write(at, b"pool bytes");
    let out_at = STATIC_POOL.0 + 0x10000;
    let r = w.invoke(
        G0,
        s,
        cmd::COPY,
        &[
            MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, Tmem::new(at, 10, 0)),
            MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, Tmem::new(out_at, 10, 0)),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    let mut got = [0u8; 10];
    w.mem.read(out_at, &mut got);
    assert_eq!(&got, b"pool bytes");
    // Running past the pool's end, or a contiguous tmem outside it, is refused.
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[
            MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
                Tmem::new(STATIC_POOL.0 + STATIC_POOL.1 - 4, 8, 0),
            ),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[
            MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, Tmem::new(0x4000_0000, 8, 0)),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    // An arg in the pool.
    let arg_at = STATIC_POOL.0 + 0x3000;
    let mut h = header(OPTEE_MSG_CMD_CANCEL);
    h.num_params.set(0);
    use zerocopy::IntoBytes;
    w.mem.write(arg_at, h.as_bytes());
    let r = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, arg_at]);
    assert_eq!(r.a[0], 0);
    w.check();
}

#[test]
fn thread_limit_and_shm_cache() {
    // Guest 1 may hold two threads (its reserved one and one of the two shared), guest 5 one.
    let mut config = CoreConfig {
        normal_world: NormalWorld::Virtualized,
        threads: 3,
        max_guests: 2,
        ..Default::default()
    };
    config.quotas.max_threads = 2;
    let w = World::new(config);
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    const G1: GuestId = GuestId(1);
    let s = w.open_session(G1);
    // Start two RPC_BUFFER calls with CALL_WITH_ARG and leave them suspended in RPC_ALLOC.
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s);
    h.func.set(cmd::RPC_BUFFER);
    h.num_params.set(2);
    let params = [
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 100, 1, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    let mut suspended = Vec::new();
    for _ in 0..2 {
        let page = w.alloc_page();
        use zerocopy::IntoBytes;
        w.mem.write(page, h.as_bytes());
        for (i, p) in params.iter().enumerate() {
            w.mem.write(page + 32 + 32 * i as u64, p.as_bytes());
        }
        let out = w.smc(G1, OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
        assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_RPC_ALLOC);
        suspended.push((out, page));
    }
    let r = w.smc(G1, OPTEE_SMC_CALL_WITH_ARG, &[0, w.alloc_page()]);
    assert_eq!(r.a[0] as u32, OPTEE_SMC_RETURN_ETHREAD_LIMIT);
    // The cache cannot be toggled while threads are in use.
    assert_eq!(
        w.smc(G1, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_EBUSY
    );
    // Resuming with a wrong thread id, or from another guest, is refused.
    assert_eq!(w.create_guest(5), OPTEE_SMC_RETURN_OK);
    let thread = suspended[0].0.a[3];
    let wrong = teeshm_core::SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0x4000_0000, 7])
        .from_client(G1);
    assert_eq!(
        w.tee.handle_smc(wrong).a[0] as u32,
        OPTEE_SMC_RETURN_ERESUME
    );
    let other =
        teeshm_core::SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0x4000_0000, thread])
            .from_client(GuestId(5));
    assert_eq!(
        w.tee.handle_smc(other).a[0] as u32,
        OPTEE_SMC_RETURN_ERESUME
    );
    // Finish both calls.
    for (out, page) in suspended {
        let mut out = out;
        while is_rpc_return(out.a[0] as u32) {
            let answer = w.answer_rpc(&out, None);
            out = w.tee.handle_smc(answer.from_client(G1));
        }
        assert_eq!(out.a[0], 0);
        let mut hdr = [0u8; 32];
        w.mem.read(page, &mut hdr);
        assert_eq!(
            u32::from_le_bytes(hdr[20..24].try_into().unwrap()),
            TEE_SUCCESS
        );
    }
    assert_eq!(w.rpc_buffers_held(), 0, "RPC args freed without the cache");
    // With the cache on, the RPC arg buffer stays for the next call; disabling hands it back.
    assert_eq!(w.smc(G1, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0], 0);
    let r = w.invoke_as(G1, ArgMode::Plain, s, cmd::RPC_BUFFER, &params);
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.rpcs.first(), Some(&OPTEE_SMC_RETURN_RPC_ALLOC));
    assert!(!r.rpcs.contains(&OPTEE_SMC_RETURN_RPC_FREE));
    let r = w.invoke_as(G1, ArgMode::Plain, s, cmd::RPC_BUFFER, &params);
    assert!(
        !r.rpcs.contains(&OPTEE_SMC_RETURN_RPC_ALLOC),
        "cached RPC arg reused"
    );
    assert_eq!(w.rpc_buffers_held(), 1);
    w.check();
    let r = w.smc(G1, OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
    assert_eq!(r.a[0], 0);
    assert_eq!(
        w.smc(G1, OPTEE_SMC_DISABLE_SHM_CACHE, &[]).a[0] as u32,
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    w.check();
}

/// SCRUB's params over `cookie` (the whole `size` bytes), `rounds` rounds of seed `seed`.
fn scrub_params(cookie: u64, size: u64, seed: u64, rounds: u64) -> [MsgParam; 3] {
    [
        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, size),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, seed, rounds, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ]
}

#[test]
fn scrub_lets_foreign_interrupts_through_and_goes_on_where_it_stopped() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let size = 64 * 1024 + 123;
    let buf = w.buffer(size, 0x10);
    let cookie = w.cookie();
    assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
    // No interrupt: one SMC, no RPC.
    let r = w.invoke(G0, s, cmd::SCRUB, &scrub_params(cookie, size, 7, 2));
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert!(r.rpcs.is_empty());
    assert_eq!(r.value(2), [2 * size, 0, 0]);
    // An interrupt at every third chunk boundary: the call suspends with FOREIGN_INTR each
    // time, and every byte ends as the last round's pattern.
    w.tee.platform().set_foreign_interrupt_every(3);
    let r = w.invoke(G0, s, cmd::SCRUB, &scrub_params(cookie, size, 40, 3));
    w.tee.platform().set_foreign_interrupt_every(0);
    assert_eq!(r.ret(), TEE_SUCCESS, "{:#x}", r.ret());
    let yields = r
        .rpcs
        .iter()
        .filter(|&&a0| a0 == OPTEE_SMC_RETURN_RPC_FOREIGN_INTR)
        .count() as u64;
    assert_eq!(yields, r.rpcs.len() as u64, "only FOREIGN_INTR RPCs");
    assert!(yields > 5, "{yields} interrupts let through");
    assert_eq!(r.value(2), [3 * size, yields, 0]);
    let data = w.read_buf(&buf, 0, size);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(42, i as u64)),
        "the buffer holds the last round's pattern"
    );
    w.check();
}

#[test]
fn scrub_makes_progress_when_an_interrupt_is_always_pending() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let size = 4 * 4096;
    let buf = w.buffer(size, 0);
    let cookie = w.cookie();
    assert_eq!(w.register(G0, cookie, &buf), TEE_SUCCESS);
    w.tee.platform().set_foreign_interrupt_every(1);
    let r = w.invoke(G0, s, cmd::SCRUB, &scrub_params(cookie, size, 1, 1));
    w.tee.platform().set_foreign_interrupt_every(0);
    assert_eq!(r.ret(), TEE_SUCCESS);
    // One chunk per entry: four chunks, three suspensions between them.
    assert_eq!(r.value(2), [size, 3, 0]);
    assert_eq!(r.rpcs.len(), 3);
    w.check();
}

#[test]
fn scrub_refuses_bad_params_and_a_suspended_one_dies_with_its_guest() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    const G1: GuestId = GuestId(1);
    let s = w.open_session(G1);
    let size = 8 * 4096;
    let buf = w.buffer(size, 0);
    let cookie = w.cookie();
    assert_eq!(w.register(G1, cookie, &buf), TEE_SUCCESS);
    // size × rounds overflowing or over the bound, an input memref: refused.
    let r = w.invoke(G1, s, cmd::SCRUB, &scrub_params(cookie, size, 1, u64::MAX));
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    let over = teeshm_core::pta::SCRUB_MAX_BYTES / size + 1;
    let r = w.invoke(G1, s, cmd::SCRUB, &scrub_params(cookie, size, 1, over));
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    let mut input = scrub_params(cookie, size, 1, 1);
    input[0] = rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size);
    assert_eq!(
        w.invoke(G1, s, cmd::SCRUB, &input).ret(),
        TEE_ERROR_BAD_PARAMETERS
    );
    let r = w.invoke(G1, s, cmd::SCRUB, &scrub_params(cookie, size, 1, 0));
    assert_eq!((r.ret(), r.value(2)), (TEE_SUCCESS, [0, 0, 0]));
    // Left suspended in FOREIGN_INTR by a guest that never comes back, then destroyed.
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s);
    h.func.set(cmd::SCRUB);
    h.num_params.set(3);
    let page = w.alloc_page();
    use zerocopy::IntoBytes;
    w.mem.write(page, h.as_bytes());
    for (i, p) in scrub_params(cookie, size, 1, 4).iter().enumerate() {
        w.mem.write(page + 32 + 32 * i as u64, p.as_bytes());
    }
    w.tee.platform().set_foreign_interrupt_every(2);
    let out = w.smc(G1, OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
    w.tee.platform().set_foreign_interrupt_every(0);
    assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_RPC_FOREIGN_INTR);
    assert_eq!(w.tee.guest(G1).unwrap().snapshot().threads, 1);
    assert_eq!(w.destroy_guest(1), 0);
    assert!(w.tee.guest(G1).is_none());
    let resumed = teeshm_core::SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, out.a[3]])
        .from_client(G1);
    assert_eq!(
        w.tee.handle_smc(resumed).a[0] as u32,
        OPTEE_SMC_RETURN_ERESUME
    );
    w.check();
}
