//! One named regression test per bug class of OP-TEE's shared-memory code and of Xen's OP-TEE
//! mediator (each test names the commit or the behaviour it comes from), each showing that
//! teeshm does not have it. Every test ends with the agreement checker.

use teeshm_abi::GuestId;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{cmd, pattern_byte};
use teeshm_core::{CoreConfig, GuestQuotas, NormalWorld, SmcRegs};
use teeshm_testkit::SECURE_RAM;
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;
use zerocopy::IntoBytes;

const G0: GuestId = GuestId::HYPERVISOR;

/// Writes `bytes` at the start of a fresh page and makes a CALL_WITH_ARG with it.
fn raw_call(w: &World, guest: GuestId, bytes: &[u8]) -> (u32, u64) {
    let page = w.alloc_page();
    w.mem.write(page, &[0u8; 4096]);
    w.mem.write(page, bytes);
    let (hi, lo) = split_pair(page);
    let out = w.smc(guest, OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]);
    (out.a[0] as u32, page)
}

fn arg_bytes(header: MsgArgHeader, params: &[MsgParam]) -> Vec<u8> {
    let mut b = header.as_bytes().to_vec();
    for p in params {
        b.extend_from_slice(p.as_bytes());
    }
    b
}

/// The arg of an INVOKE of RPC_BUFFER (a kernel buffer of `bytes` bytes) in `session`, with
/// `held` memrefs after its two value params (buffers the call holds while it waits).
fn rpc_buffer_arg(session: u32, bytes: u64, held: &[MsgParam]) -> Vec<u8> {
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(session);
    h.func.set(cmd::RPC_BUFFER);
    h.num_params.set(2 + held.len() as u32);
    let mut params = vec![
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, bytes, 1, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    params.extend_from_slice(held);
    arg_bytes(h, &params)
}

fn ret_at(w: &World, page: u64) -> u32 {
    let mut h = [0u8; 32];
    w.mem.read(page, &mut h);
    u32::from_le_bytes(h[20..24].try_into().unwrap())
}

fn noncontig_register(buf_ptr: u64, size: u64, cookie: u64) -> MsgParam {
    MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
        Tmem::new(buf_ptr, size, cookie),
    )
}

fn register_raw(w: &World, buf_ptr: u64, size: u64, cookie: u64) -> u32 {
    let r = w.call(
        G0,
        ArgMode::RpcArg,
        header(OPTEE_MSG_CMD_REGISTER_SHM),
        &[noncontig_register(buf_ptr, size, cookie)],
    );
    assert_eq!(r.a0, 0);
    r.ret()
}

/// OP-TEE bdc5282e7 (2017): the page list was validated before it was copied, so a normal world
/// that changed an entry between the check and the copy got a secure page mapped. Here the
/// normal world does exactly that: right after the TEE's read of the second list page it puts
/// a secure-RAM address in that page's entry. teeshm reads each list page once into secure
/// memory and uses only the copy, so the buffer holds the page the list named when it was read,
/// and every list page of a 1100-page buffer (3 list pages) is read exactly once. A list that
/// names a secure page when it is read is refused.
#[test]
fn regression_bdc5282e7_page_list_read_once_then_validated() {
    let w = World::default_world();
    let buf = w.buffer(1100 * PAGE, 0);
    let (buf_ptr, lists) = w.page_list(&buf);
    // Entry 700 is entry 189 of the second list page (511 entries and a next pointer a page).
    w.mem.trace_reads(true);
    w.mem
        .rewrite_after_reads(lists[1] + 189 * 8, 1, SECURE_RAM.0.to_le_bytes().to_vec());
    assert_eq!(register_raw(&w, buf_ptr, buf.size, 1), TEE_SUCCESS);
    for &l in &lists {
        assert_eq!(w.mem.reads_of(l), 1, "list page {l:#x} read once");
    }
    w.mem.trace_reads(false);
    let mut entry = [0u8; 8];
    w.mem.read(lists[1] + 189 * 8, &mut entry);
    assert_eq!(
        u64::from_le_bytes(entry),
        SECURE_RAM.0,
        "the list was changed"
    );
    let used = w.tee.use_registered(G0, 1).unwrap();
    assert_eq!(
        used.mobj().page(700).map(|p| p.get()),
        Some(buf.pages[700]),
        "the page named when the list was read, not the one written after"
    );
    assert!(
        used.mobj().pages().all(|p| p.get() != SECURE_RAM.0),
        "no secure page in the buffer"
    );
    drop(used);
    let mut bad = buf.clone();
    bad.pages[700] = SECURE_RAM.0;
    let (buf_ptr, _) = w.page_list(&bad);
    let before = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(
        register_raw(&w, buf_ptr, bad.size, 2),
        TEE_ERROR_BAD_PARAMETERS
    );
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    w.check();
}

/// OP-TEE a0c3590b4 (2018): the NONCONTIG offset was added twice. A temporary memref starting
/// 0x123 bytes into its first page is copied byte for byte.
#[test]
fn regression_a0c3590b4_noncontig_offset_applied_once() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let input = w.buffer(9000, 0x123);
    w.fill_buf(&input, |i| pattern_byte(1, i));
    let output = w.buffer(9000, 0xfff);
    let r = w.invoke(
        G0,
        s,
        cmd::COPY,
        &[
            w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &input),
            w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &output),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(w.read_buf(&output, 0, 9000), w.read_buf(&input, 0, 9000));
    w.check();
}

/// OP-TEE eecd6bd23 / 19cae8dc8 (2018): fields of the arg were read from normal-world memory
/// more than once, so a normal world could change them between the check and the use. Here it
/// does: after the TEE's read of the arg page (the header with its params, in one access) it
/// changes the command, the session and the fill seed. The call runs what was read — FILL in
/// the real session with seed 4 — and the arg page is read once in all, however the call goes.
/// (An arg of more than four params is read in two accesses: the next test.)
#[test]
fn regression_eecd6bd23_arg_read_once() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s);
    h.func.set(cmd::FILL);
    h.num_params.set(2);
    let out = w.buffer(100, 0);
    let params = [
        w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, &out),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 4, 0, 0),
    ];
    let page = w.alloc_page();
    w.mem.write(page, &arg_bytes(h, &params));
    w.mem.trace_reads(true);
    let mut changed = h;
    changed.func.set(cmd::SHA256);
    changed.session.set(s.wrapping_add(99));
    w.mem
        .rewrite_after_reads(page, 1, changed.as_bytes().to_vec());
    // The value param is the second one: 32 bytes of header, 32 of the tmem, then a (u64).
    w.mem
        .rewrite_after_reads(page + 32 + 32 + 8, 1, 9u64.to_le_bytes().to_vec());
    let r = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
    assert_eq!(w.mem.reads_of(page), 1);
    w.mem.trace_reads(false);
    assert_eq!(w.mem.pending_rewrites(), 0, "the arg was changed twice");
    assert_eq!(r.a[0], 0);
    assert_eq!(ret_at(&w, page), TEE_SUCCESS);
    let filled = w.read_buf(&out, 0, 100);
    assert!(
        filled
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(4, i as u64)),
        "FILL with the seed read once"
    );
    w.check();
}

/// The same rule for an arg of six params, read in two accesses (the header with four params,
/// then the last two): the normal world changes the header after the first and the last param
/// after the second. The copy is what each access read: the header and the last param are
/// written back as they were first read, and the page is read twice in all.
#[test]
fn regression_eecd6bd23_arg_of_six_params_read_once() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(s);
    h.func.set(cmd::FILL);
    h.num_params.set(6);
    let params: Vec<MsgParam> = (0..6u64)
        .map(|i| value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, i, i, i))
        .collect();
    let page = w.alloc_page();
    w.mem.write(page, &arg_bytes(h, &params));
    w.mem.trace_reads(true);
    let mut changed = h;
    changed.session.set(s.wrapping_add(99));
    w.mem
        .rewrite_after_reads(page, 1, changed.as_bytes().to_vec());
    let last = page + 32 + 5 * 32;
    w.mem.rewrite_after_reads(
        last,
        2,
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INOUT, 9, 9, 9)
            .as_bytes()
            .to_vec(),
    );
    let r = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, page]);
    assert_eq!(w.mem.reads_of(page), 2);
    w.mem.trace_reads(false);
    assert_eq!(w.mem.pending_rewrites(), 0, "the arg was changed twice");
    assert_eq!(r.a[0], 0);
    let mut back = vec![0u8; 32 + 6 * 32];
    w.mem.read(page, &mut back);
    let (got, got_params) = parse_arg(&back);
    assert_eq!(got.session.get(), s, "the header as first read");
    assert_eq!(got_params[5], params[5], "the last param as read");
    w.check();
}

/// OP-TEE fa152a4ec (2018): uninitialised param types were copied back. Inputs come back as
/// they were sent; only outputs change.
#[test]
fn regression_fa152a4ec_inputs_written_back_unchanged() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(64, 0);
    let p0 = w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &buf);
    let p1 = value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 11, 22, 33);
    let r = w.invoke(G0, s, cmd::TOUCH, &[p0, p1]);
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.params[0], p0);
    assert_eq!(r.value(1)[2], 0, "output value written by the TA");
    w.check();
}

/// OP-TEE c6edc12ac (2018, Riscure): num_params unchecked before the arg size computation.
/// 128, 0x8000_0000 and u32::MAX params are refused with EBADCMD and change nothing.
#[test]
fn regression_c6edc12ac_num_params_bounded() {
    let w = World::default_world();
    let before = w.tee.guest(G0).unwrap().snapshot();
    for n in [128u32, 0x8000_0000, u32::MAX] {
        let mut h = header(OPTEE_MSG_CMD_CANCEL);
        h.num_params.set(n);
        let (a0, _) = raw_call(&w, G0, h.as_bytes());
        assert_eq!(a0, OPTEE_SMC_RETURN_EBADCMD, "num_params {n}");
    }
    // 127 params fit a page only at offset 0: at offset 8 the arg runs past its page.
    let mut h = header(OPTEE_MSG_CMD_CANCEL);
    h.num_params.set(127);
    let page = w.alloc_page();
    w.mem.write(page + 8, h.as_bytes());
    let out = w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, page + 8]);
    assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_EBADADDR);
    let (a0, _) = raw_call(&w, G0, h.as_bytes());
    assert_eq!(a0, 0);
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    w.check();
}

/// OP-TEE e1509d6e6 (2019, Netflix): buffer offset + size overflowed in the NONCONTIG path.
/// OP-TEE 8ad7af502: the registered size computation overflowed. Both are refused before any
/// normal-world memory is read.
#[test]
fn regression_e1509d6e6_8ad7af502_size_overflow() {
    let w = World::default_world();
    let list = w.alloc_page();
    w.mem.trace_reads(true);
    for (offset, size) in [
        (0xfff, u64::MAX),
        (1, u64::MAX - 1),
        (0, u64::MAX),
        (0x800, 1 << 63),
    ] {
        assert_eq!(
            register_raw(&w, list | offset, size, 5),
            TEE_ERROR_BAD_PARAMETERS
        );
    }
    assert_eq!(w.mem.reads_of(list), 0, "nothing read for a hopeless size");
    w.mem.trace_reads(false);
    w.check();
}

/// OP-TEE d5147581f (2019): SEC_CAP_VIRTUALIZATION had DYNAMIC_SHM's bit.
#[test]
fn regression_d5147581f_capability_bits_distinct() {
    let w = World::virtualized();
    let caps = w.smc(G0, OPTEE_SMC_EXCHANGE_CAPABILITIES, &[0]).a[1];
    assert_eq!(caps & (1 << 2), 1 << 2, "DYNAMIC_SHM is bit 2");
    assert_eq!(caps & (1 << 3), 1 << 3, "VIRTUALIZATION is bit 3");
    assert_eq!(SecureCaps::VIRTUALIZATION.bits(), 8);
}

/// OP-TEE cffe74d24 (2020): the registered size ignored the page offset, so memrefs could reach
/// up to 4095 bytes past the buffer. OP-TEE 4befaadc3 / 9c4aaf67f / 2667e1359: offset and
/// length checks of memrefs. A 6001-byte buffer at offset 0x321 (as xtest 1018) allows exactly
/// its bytes.
#[test]
fn regression_cffe74d24_memref_bounds_exact() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(6001, 0x321);
    assert_eq!(w.register(G0, 9, &buf), TEE_SUCCESS);
    let touch = |offs: u64, size: u64| {
        w.invoke(
            G0,
            s,
            cmd::TOUCH,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 9, offs, size),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        )
        .ret()
    };
    assert_eq!(touch(0, 6001), TEE_SUCCESS);
    assert_eq!(touch(6000, 1), TEE_SUCCESS);
    assert_eq!(touch(0, 6002), TEE_ERROR_SECURITY);
    assert_eq!(touch(6001, 1), TEE_ERROR_SECURITY);
    assert_eq!(touch(1, u64::MAX), TEE_ERROR_SECURITY);
    assert_eq!(touch(u64::MAX, 2), TEE_ERROR_SECURITY);
    assert_eq!(w.tee.use_registered(G0, 9).unwrap().mobj().size(), 6001);
    w.check();
}

/// OP-TEE d627f5569 (2021, RPC path) and 51d99cd24 (2026, NONCONTIG tmem params leaked their
/// object on every call): after a thousand calls with temporary memrefs and RPC buffers, the
/// guest holds exactly what it held before.
#[test]
fn regression_51d99cd24_d627f5569_no_leak_per_call() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let before = w.tee.guest(G0).unwrap().snapshot();
    let buf = w.buffer(5000, 3);
    for i in 0..500u64 {
        for ty in [0x209u64, 0x20a, 0x20b] {
            let r = w.invoke(
                G0,
                s,
                cmd::FILL,
                &[
                    w.tmem_list(ty & 0xff, &buf),
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, i, 0, 0),
                ],
            );
            let expected = if ty == 0x209 {
                TEE_ERROR_BAD_PARAMETERS
            } else {
                TEE_SUCCESS
            };
            assert_eq!(r.ret(), expected);
        }
    }
    for _ in 0..100 {
        let r = w.invoke(
            G0,
            s,
            cmd::RPC_BUFFER,
            &[
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 5000, 1, 0),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
    }
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    assert_eq!(w.tee.window().mapped_objects(), 0);
    w.check();
}

/// OP-TEE 42bb9a861 (2021): vm_pa2va looped for ever on an unknown PA. teeshm's reverse lookup
/// answers None for a PA nobody mapped, at once.
#[test]
fn regression_42bb9a861_phys_to_virt_of_unknown_pa() {
    let w = World::default_world();
    let window = w.tee.window();
    assert_eq!(
        window
            .shm()
            .phys_to_virt(teeshm_mm::PhysAddr(0x4000_0000), None),
        None
    );
    assert_eq!(
        window
            .shm()
            .phys_to_virt(teeshm_mm::PhysAddr(u64::MAX), None),
        None
    );
}

/// OP-TEE 06ea466f9 / 83a3d56a2 / 3d02add2d (map-count races) and 7c04952c7 (reference taken
/// after the list lock was dropped): four CPUs map, use and unregister the same cookies
/// concurrently; nothing panics, every answer is one of the expected ones, and everything
/// agrees afterwards.
#[test]
fn regression_06ea466f9_7c04952c7_map_count_and_lookup_races() {
    use std::sync::Arc;
    let w = Arc::new(World::default_world());
    let s = w.open_session(G0);
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let w = w.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..60u64 {
                let cookie = i % 4;
                if t == 0 {
                    let _ = w.unregister(G0, cookie);
                    let buf = w.buffer(2 * PAGE, 0);
                    let _ = w.register(G0, cookie, &buf);
                } else {
                    let r = w.invoke(
                        G0,
                        s,
                        cmd::TOUCH,
                        &[
                            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 100),
                            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                        ],
                    );
                    // Unregistered on another CPU before the lookup (BAD_PARAMETERS), or
                    // between the lookup and the access (revoked: ACCESS_CONFLICT).
                    assert!(
                        r.a0 == OPTEE_SMC_RETURN_ETHREAD_LIMIT
                            || [
                                TEE_SUCCESS,
                                TEE_ERROR_BAD_PARAMETERS,
                                TEE_ERROR_ACCESS_CONFLICT
                            ]
                            .contains(&r.ret()),
                        "{:#x} {:#x}",
                        r.a0,
                        r.ret()
                    );
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    w.check();
}

/// OP-TEE 728616b28 (2022): cleanup read saved attrs out of bounds when num_params > 4. More
/// than four TA params are refused, and nothing of the resolved ones leaks.
#[test]
fn regression_728616b28_more_than_four_params() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(100, 0);
    let before = w.tee.guest(G0).unwrap().snapshot();
    let params: Vec<MsgParam> = (0..6)
        .map(|_| w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &buf))
        .collect();
    let r = w.invoke(G0, s, cmd::TOUCH, &params);
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    w.check();
}

/// OP-TEE 2429722ff (2024): VM_CREATED with id 0 corrupted the heap and panicked.
#[test]
fn regression_2429722ff_vm_created_zero() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(0), OPTEE_SMC_RETURN_ENOTAVAIL);
    assert_eq!(w.tee.guests().len(), 0);
    assert_eq!(w.create_guest(1), OPTEE_SMC_RETURN_OK);
    w.check();
}

/// OP-TEE 3bb5c167a (2026): an overlap check missed a buffer's last page. A buffer whose last
/// page (only) is secure RAM, or a device, is refused.
#[test]
fn regression_3bb5c167a_last_page_checked() {
    let w = World::default_world();
    for bad_page in [
        SECURE_RAM.0 + SECURE_RAM.1 - PAGE,
        teeshm_testkit::DEVICES.0,
    ] {
        let mut buf = w.buffer(5 * PAGE, 0);
        *buf.pages.last_mut().unwrap() = bad_page;
        let (buf_ptr, _) = w.page_list(&buf);
        assert_eq!(
            register_raw(&w, buf_ptr, buf.size, 77),
            TEE_ERROR_BAD_PARAMETERS
        );
    }
    // The list page itself in secure RAM is refused too, without reading it.
    assert_eq!(
        register_raw(&w, SECURE_RAM.0, 100, 78),
        TEE_ERROR_BAD_PARAMETERS
    );
    w.check();
}

/// Possible panic race seen in OP-TEE's reg_shm_find_unlocked: a lookup of a cookie being
/// released. In teeshm an unregistered cookie is gone from lookup at once, even while a user
/// still holds the (revoked) buffer; a lookup gets BAD_PARAMETERS.
#[test]
fn regression_lookup_of_releasing_cookie() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let buf = w.buffer(PAGE, 0);
    assert_eq!(w.register(G0, 3, &buf), TEE_SUCCESS);
    let held = w.tee.use_registered(G0, 3).unwrap();
    assert_eq!(w.unregister(G0, 3), TEE_SUCCESS);
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 3, 0, 1),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    drop(held);
    w.tee.drain_releases();
    w.check();
}

/// OP-TEE accepts duplicate cookies and lets the newest shadow the older buffer. teeshm refuses
/// the second registration and keeps the first.
#[test]
fn regression_duplicate_cookie_refused() {
    let w = World::default_world();
    let first = w.buffer(PAGE, 0);
    assert_eq!(w.register(G0, 8, &first), TEE_SUCCESS);
    let before = w.tee.guest(G0).unwrap().snapshot();
    assert_eq!(
        w.register(G0, 8, &w.buffer(2 * PAGE, 0)),
        TEE_ERROR_BAD_PARAMETERS
    );
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    assert_eq!(w.tee.use_registered(G0, 8).unwrap().mobj().size(), PAGE);
    w.check();
}

/// OP-TEE's tee_mm_find kept offsets in 16 bits; a pool of more than 65536 granules would
/// truncate. teeshm's window maps and finds buffers beyond page 65536 of the window.
#[test]
fn regression_tee_mm_find_16_bit_offsets() {
    let w = World::new(CoreConfig {
        quotas: GuestQuotas {
            max_mapped_pages: 80_000,
            ..GuestQuotas::default()
        },
        max_buffer_pages: 80_000,
        ..CoreConfig::default()
    });
    let s = w.open_session(G0);
    let big = w.buffer(70_000 * PAGE, 0);
    assert_eq!(w.register(G0, 1, &big), TEE_SUCCESS);
    let small = w.buffer(PAGE, 0);
    assert_eq!(w.register(G0, 2, &small), TEE_SUCCESS);
    for (cookie, size) in [(1, big.size), (2, PAGE)] {
        let r = w.invoke(
            G0,
            s,
            cmd::TOUCH,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, size),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
    }
    let window = w.tee.window();
    let pa = teeshm_mm::PhysAddr(w.buf_pa(&small, 0));
    let va = window.shm().phys_to_virt(pa, Some(G0)).unwrap();
    assert!(
        va.get() - 0x40_0000_0000 >= 70_000 * PAGE,
        "beyond page 65536 of the window"
    );
    assert_eq!(window.shm().virt_to_phys(va), Some(pa));
    drop(window);
    w.check();
}

/// linaro-swg/linux#72: OP-TEE's unregister blocked a thread until the buffer's users were
/// done, and deadlocked when the user waited on the normal world. teeshm answers at once
/// (revoking the buffer) while the user waits in an RPC, with a thread to spare, and the
/// waiting call still ends normally.
#[test]
fn regression_linux72_unregister_never_blocks() {
    let w = World::new(CoreConfig {
        threads: 2,
        ..CoreConfig::default()
    });
    let s = w.open_session(G0);
    let buf = w.buffer(PAGE, 0);
    assert_eq!(w.register(G0, 4, &buf), TEE_SUCCESS);
    let held = [rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 4, 0, 1)];
    let (a0, page) = raw_call(&w, G0, &rpc_buffer_arg(s, 10, &held));
    assert_eq!(a0, OPTEE_SMC_RETURN_RPC_ALLOC);
    assert_eq!(w.unregister(G0, 4), TEE_SUCCESS);
    w.check();
    let thread = w
        .tee
        .thread_states()
        .iter()
        .position(|t| matches!(t, teeshm_core::thread::ThreadState::Suspended(_)))
        .unwrap() as u64;
    let mut out = SmcRegs::call(OPTEE_SMC_RETURN_RPC_ALLOC, &[56, 0, thread]);
    while is_rpc_return(out.a0()) {
        let answer = w.answer_rpc(&out, None);
        out = w.tee.handle_smc(answer.from_client(G0));
    }
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    assert_eq!(ret_at(&w, page), TEE_SUCCESS);
    w.check();
}

/// Xen 847c18e681 (unbounded buffer size): a buffer above `max_buffer_pages` is refused before
/// anything is read or allocated.
#[test]
fn regression_xen_847c18e681_buffer_size_bounded() {
    let w = World::new(CoreConfig {
        max_buffer_pages: 129,
        ..CoreConfig::default()
    });
    let list = w.alloc_page();
    w.mem.trace_reads(true);
    assert_eq!(
        register_raw(&w, list, 130 * PAGE, 1),
        TEE_ERROR_BAD_PARAMETERS
    );
    assert_eq!(w.mem.reads_of(list), 0);
    w.mem.trace_reads(false);
    assert_eq!(w.register(G0, 2, &w.buffer(129 * PAGE, 0)), TEE_SUCCESS);
    w.check();
}

/// Xen 96383955f6 ("zillions of one-byte buffers"): a guest's object quota bounds what it can
/// make the TEE allocate; past it, OUT_OF_MEMORY and nothing changes. Another guest is not
/// affected.
#[test]
fn regression_xen_96383955f6_buffer_count_bounded() {
    let w = World::new(CoreConfig {
        quotas: GuestQuotas {
            max_objects: 17,
            ..GuestQuotas::default()
        },
        normal_world: NormalWorld::Virtualized,
        ..CoreConfig::default()
    });
    assert_eq!(w.create_guest(1), 0);
    assert_eq!(w.create_guest(2), 0);
    let one = w.buffer(1, 0);
    let mut ok = 0;
    for c in 0..40 {
        if w.register(GuestId(1), c, &one) == TEE_SUCCESS {
            ok += 1;
        }
    }
    assert_eq!(ok, 16, "16 buffers + the arg page of the call");
    assert_eq!(w.register(GuestId(2), 0, &one), TEE_SUCCESS);
    w.check();
}

/// Xen 208bef44c6: relinquishing a dying domain's resources was not preemptible, so a domain
/// with many of them held the hypervisor for as long as it took. teeshm's sweep of a guest
/// visits only that guest's own objects: here guest 1 (10 buffers, 3 of them mapped) is
/// destroyed beside guest 2, which holds 40 times as much, all mapped. The sweep issues exactly
/// one TLB invalidation per mapping of guest 1 and none for guest 2, whose mappings and counters
/// stay as they were (the time side is the VM_DESTROYED benchmark, P6).
#[test]
fn regression_xen_208bef44c6_teardown_bounded_by_own_objects() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(1), 0);
    assert_eq!(w.create_guest(2), 0);
    let touch = |g: u16, s: u32, c: u64| {
        let r = w.invoke(
            GuestId(g),
            s,
            cmd::TOUCH,
            &[
                rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, c, 0, 10),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.ret(), TEE_SUCCESS);
    };
    let (s1, s2) = (w.open_session(GuestId(1)), w.open_session(GuestId(2)));
    for c in 0..10 {
        assert_eq!(
            w.register(GuestId(1), c, &w.buffer(3 * PAGE, 0)),
            TEE_SUCCESS
        );
    }
    for c in 0..3 {
        touch(1, s1, c);
    }
    for c in 0..400 {
        assert_eq!(
            w.register(GuestId(2), c, &w.buffer(3 * PAGE, 0)),
            TEE_SUCCESS
        );
        touch(2, s2, c);
    }
    let other = w.tee.guest(GuestId(2)).unwrap().snapshot();
    let mappings_of_2: Vec<_> = w
        .tee
        .window()
        .object_mappings()
        .filter(|m| m.owner == GuestId(2))
        .collect();
    let before = w.tee.window().shm_mut().tlb_mut().count();
    assert_eq!(w.destroy_guest(1), 0);
    assert_eq!(
        w.tee.window().shm_mut().tlb_mut().count() - before,
        3,
        "one TLB invalidation per mapping of guest 1, none for guest 2"
    );
    assert_eq!(w.tee.guest(GuestId(2)).unwrap().snapshot(), other);
    let after: Vec<_> = w
        .tee
        .window()
        .object_mappings()
        .filter(|m| m.owner == GuestId(2))
        .collect();
    assert_eq!(after, mappings_of_2);
    w.check();
}

/// Xen c2c141f0f4: a failed RPC SHM_ALLOC must end cleanly. A normal world that answers
/// SHM_ALLOC with a buffer in secure RAM gets the buffer freed (SHM_FREE with its cookie), and
/// the call fails; nothing of the secure page was mapped.
#[test]
fn regression_xen_c2c141f0f4_bad_shm_alloc_answer() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let page = w.alloc_page();
    w.mem.write(page, &rpc_buffer_arg(s, 100, &[]));
    let rpc_at = page + 32 + 64;
    let out = w.smc(G0, OPTEE_SMC_CALL_WITH_RPC_ARG, &[0, page]);
    assert_eq!(out.a[0] as u32, OPTEE_SMC_RETURN_RPC_CMD);
    let thread = out.a[3];
    // Hostile answer: a contiguous buffer in secure RAM.
    let mut rpc = [0u8; 160];
    w.mem.read(rpc_at, &mut rpc);
    let answer = MsgParam::from_tmem(
        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
        Tmem::new(SECURE_RAM.0, 4096, 0xc0ffee),
    );
    rpc[32..64].copy_from_slice(answer.as_bytes());
    w.mem.write(rpc_at, &rpc);
    let resume = SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).from_client(G0);
    let out = w.tee.handle_smc(resume);
    assert_eq!(
        out.a[0] as u32, OPTEE_SMC_RETURN_RPC_CMD,
        "SHM_FREE follows"
    );
    w.mem.read(rpc_at, &mut rpc);
    let (hdr, rest) = <MsgArgHeader as zerocopy::FromBytes>::read_from_prefix(&rpc).unwrap();
    assert_eq!(hdr.cmd.get(), teeshm_abi::rpc::OPTEE_RPC_CMD_SHM_FREE);
    let p = <MsgParam as zerocopy::FromBytes>::read_from_prefix(rest)
        .unwrap()
        .0;
    assert_eq!(p.value().b.get(), 0xc0ffee);
    assert!(
        w.tee
            .window()
            .shm()
            .mappings()
            .all(|m| !m.range.contains(teeshm_mm::VirtAddr(0)))
    );
    let resume = SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).from_client(G0);
    assert_eq!(w.tee.handle_smc(resume).a[0], 0);
    assert_eq!(ret_at(&w, page), TEE_ERROR_BAD_PARAMETERS);
    w.check();
}

/// Xen 664cc3c3d3 (leaks in translate_noncontig error paths): a registration that fails at
/// its last page leaves every counter where it was.
#[test]
fn regression_xen_664cc3c3d3_error_paths_do_not_leak() {
    let w = World::default_world();
    let before = w.tee.guest(G0).unwrap().snapshot();
    let buf = w.buffer(600 * PAGE, 0);
    let (buf_ptr, lists) = w.page_list(&buf);
    // Entry 599 (list page 1, slot 88) made unaligned behind the encoder's back.
    w.mem.write(lists[1] + 88 * 8, &0x10u64.to_le_bytes());
    assert_eq!(
        register_raw(&w, buf_ptr, buf.size, 1),
        TEE_ERROR_BAD_PARAMETERS
    );
    assert_eq!(w.tee.guest(G0).unwrap().snapshot(), before);
    assert_eq!(w.tee.window().mapped_objects(), 0);
    w.check();
}

/// Xen 1c3ed9c908: DISABLE_SHM_CACHE was forwarded as ENABLE, and Linux looped for ever. In
/// teeshm the DISABLE loop ends with ENOTAVAIL after handing back every cached buffer once.
#[test]
fn regression_xen_1c3ed9c908_disable_shm_cache_terminates() {
    let w = World::default_world();
    let s = w.open_session(G0);
    assert_eq!(w.smc(G0, OPTEE_SMC_ENABLE_SHM_CACHE, &[]).a[0], 0);
    let params = [
        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 10, 1, 0),
        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
    ];
    assert_eq!(
        w.invoke_as(G0, ArgMode::Plain, s, cmd::RPC_BUFFER, &params)
            .ret(),
        TEE_SUCCESS
    );
    let mut cookies = Vec::new();
    for _ in 0..10 {
        let r = w.smc(G0, OPTEE_SMC_DISABLE_SHM_CACHE, &[]);
        if r.a[0] as u32 == OPTEE_SMC_RETURN_ENOTAVAIL {
            break;
        }
        assert_eq!(r.a[0], 0);
        cookies.push(reg_pair(r.a[1], r.a[2]));
    }
    assert_eq!(cookies.len(), 1);
    w.check();
}

/// Xen 5b13eb1d97 / 5d2d5365ff (free ordering): the core lets go of an RPC buffer before it
/// asks the normal world to free it, so the pages may be reused at once. When SHM_FREE goes
/// out, no mapping of the buffer remains.
#[test]
fn regression_xen_5b13eb1d97_release_before_free_request() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let page = w.alloc_page();
    w.mem.write(page, &rpc_buffer_arg(s, 3 * PAGE, &[]));
    let rpc_at = page + 32 + 64;
    let mut out = w.smc(G0, OPTEE_SMC_CALL_WITH_RPC_ARG, &[0, page]);
    let mut saw_free = false;
    while is_rpc_return(out.a[0] as u32) {
        let mut hdr = [0u8; 4];
        w.mem.read(rpc_at, &mut hdr);
        if u32::from_le_bytes(hdr) == teeshm_abi::rpc::OPTEE_RPC_CMD_SHM_FREE {
            saw_free = true;
            // Only the arg page (the call's own) is mapped, if anything.
            let window = w.tee.window();
            assert!(
                window
                    .object_mappings()
                    .all(|m| m.kind != teeshm_core::MobjKind::RpcBuffer)
            );
        }
        let answer = w.answer_rpc(&out, Some(rpc_at));
        out = w.tee.handle_smc(answer.from_client(G0));
    }
    assert!(saw_free);
    assert_eq!(ret_at(&w, page), TEE_SUCCESS);
    w.check();
}

/// Unverified Xen observation: a contiguous SHM_ALLOC answer was used without a check that it
/// is the guest's normal-world memory. teeshm checks every page of a contiguous answer against
/// the memory map (covered with secure RAM in the c2c141f0f4 test); a good contiguous answer
/// works.
#[test]
fn regression_xen_contiguous_rpc_answer_checked() {
    let w = World::default_world();
    w.contiguous_rpc
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let s = w.open_session(G0);
    let r = w.invoke(
        G0,
        s,
        cmd::RPC_BUFFER,
        &[
            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 3 * PAGE + 5, 1, 2),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.value(1)[0], 3 * PAGE + 5);
    w.check();
}

/// Found under Xen 4.17 (`cargo xtask xen`): its mediator passes a contiguous SHM_ALLOC answer
/// on untranslated (it only warns), so the address is the guest's IPA, not a physical address;
/// a core that wrote its pattern there wrote into another domain's memory (a domU's kernel text
/// in that run). Under a hypervisor a contiguous answer is refused before anything is mapped or
/// written, the buffer is still freed by SHM_FREE, and the call answers an error.
#[test]
fn regression_xen_contiguous_rpc_answer_refused_under_a_hypervisor() {
    let w = World::virtualized();
    assert_eq!(w.create_guest(1), 0);
    let g = GuestId(1);
    w.contiguous_rpc
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let s = w.open_session(g);
    let r = w.invoke(
        g,
        s,
        cmd::RPC_BUFFER,
        &[
            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 3 * PAGE + 5, 1, 2),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    assert!(
        r.rpcs.contains(&OPTEE_SMC_RETURN_RPC_CMD),
        "the answer's buffer is given back"
    );
    assert_eq!(w.rpc_buffers_held(), 0, "SHM_FREE came for it");
    // Nothing of the contiguous run was mapped.
    assert!(
        w.tee
            .window()
            .object_mappings()
            .all(|m| m.kind != teeshm_core::MobjKind::RpcBuffer)
    );
    w.check();
}

/// Xen: IPA 0 is ambiguous with NULL. A tmem with buf_ptr 0 is a NULL memref (MEMREF_NULL), a
/// CALL_WITH_ARG at PA 0 is a bad address.
#[test]
fn regression_xen_null_memref_and_pa_zero() {
    let w = World::default_world();
    let s = w.open_session(G0);
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[
            MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, Tmem::new(0, 0, 0)),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS, "TOUCH needs a buffer");
    assert_eq!(
        w.smc(G0, OPTEE_SMC_CALL_WITH_ARG, &[0, 0]).a[0] as u32,
        OPTEE_SMC_RETURN_EBADADDR
    );
    w.check();
}

/// Found by the benchmark work: a successful message must set `ret` itself. The normal world's
/// copy may hold anything there; a REGISTER_SHM whose arg came with `ret = 0x1234` must answer
/// TEE_SUCCESS, or the normal world believes it failed while the buffer stays registered.
#[test]
fn regression_success_sets_ret_whatever_the_normal_world_wrote() {
    let w = World::default_world();
    let buf = w.buffer(PAGE, 0);
    let (buf_ptr, _) = w.page_list(&buf);
    let mut h = header(OPTEE_MSG_CMD_REGISTER_SHM);
    h.ret.set(0x1234);
    h.ret_origin.set(0x99);
    let r = w.call(
        G0,
        ArgMode::RpcArg,
        h,
        &[noncontig_register(buf_ptr, buf.size, 5)],
    );
    assert_eq!((r.a0, r.ret()), (0, TEE_SUCCESS));
    assert_eq!(r.header.ret_origin.get(), TEE_ORIGIN_TEE);
    w.check();
}

/// A platform whose reads of one physical page wait until the test opens a gate, so a call can
/// be held in the middle of its work (between its start and its first RPC) while another CPU
/// acts. Reads of every other page go on.
struct GatedPlatform {
    inner: teeshm_testkit::SimPlatform,
    gate_page: std::sync::atomic::AtomicU64,
    reached: std::sync::atomic::AtomicBool,
    open: std::sync::atomic::AtomicBool,
}

impl teeshm_core::Platform for GatedPlatform {
    type Tlb = teeshm_platform::RecordingTlb;

    fn read(
        &self,
        map: &dyn teeshm_core::Translate,
        va: teeshm_mm::VirtAddr,
        buf: &mut [u8],
    ) -> Result<(), teeshm_core::AccessFault> {
        use std::sync::atomic::Ordering::SeqCst;
        let gate = self.gate_page.load(SeqCst);
        if gate != 0
            && map
                .translate_page(va.page_base())
                .is_some_and(|t| t.pa.get() == gate)
        {
            self.reached.store(true, SeqCst);
            while !self.open.load(SeqCst) {
                std::thread::yield_now();
            }
        }
        self.inner.read(map, va, buf)
    }

    fn write(
        &self,
        map: &dyn teeshm_core::Translate,
        va: teeshm_mm::VirtAddr,
        data: &[u8],
    ) -> Result<(), teeshm_core::AccessFault> {
        self.inner.write(map, va, data)
    }

    fn read_io32(
        &self,
        map: &dyn teeshm_core::Translate,
        va: teeshm_mm::VirtAddr,
    ) -> Result<u32, teeshm_core::AccessFault> {
        self.inner.read_io32(map, va)
    }
}

/// A core under a hypervisor on `inner` wrapped in a [`GatedPlatform`] (no page gated yet).
fn gated_tee(inner: teeshm_testkit::SimPlatform) -> teeshm_core::Tee<GatedPlatform> {
    let platform = GatedPlatform {
        inner,
        gate_page: 0.into(),
        reached: false.into(),
        open: false.into(),
    };
    teeshm_core::Tee::new(
        CoreConfig {
            normal_world: NormalWorld::Virtualized,
            ..CoreConfig::default()
        },
        teeshm_testkit::sim_memory_map(),
        platform,
        teeshm_platform::RecordingTlb::counting(),
    )
    .unwrap()
}

/// User mode as the simulated platform has it.
impl teeshm_core::platform::UserMode for GatedPlatform {
    type UserTlb = teeshm_platform::RecordingTlb;

    fn user_tlb(&self, asid: u16) -> Self::UserTlb {
        self.inner.user_tlb(asid)
    }

    fn activate_user(&self, space: Option<teeshm_core::platform::UserRoot>) {
        self.inner.activate_user(space);
    }

    fn enter_user(
        &self,
        space: teeshm_core::platform::UserRoot,
        map: &dyn teeshm_core::Translate,
        regs: &mut teeshm_core::platform::UserRegs,
        handler: &mut dyn teeshm_core::platform::UserTrapHandler,
    ) {
        self.inner.enter_user(space, map, regs, handler);
    }

    fn ta_pages(&self) -> std::sync::Arc<dyn teeshm_core::platform::TaPages> {
        self.inner.ta_pages()
    }

    fn write_ta_ram(
        &self,
        pa: teeshm_mm::PhysAddr,
        data: &[u8],
    ) -> Result<(), teeshm_core::AccessFault> {
        self.inner.write_ta_ram(pa, data)
    }
}

/// Found while writing the host stress test of several CPUs per guest
/// (crates/sim/tests/concurrency.rs, which catches it too, in about one run of four):
/// a call of a guest still *running* when the hypervisor destroyed the guest went on to its
/// first RPC and was parked in its thread for ever — a thread lost, objects of a dead guest
/// kept (and mapped), and a later guest with the same id could resume the dead guest's call.
/// Now a call of a dying guest ends at the point it would suspend: its thread is free, what it
/// made is released, and nothing is left to resume.
#[test]
fn regression_call_of_a_destroyed_guest_never_suspends() {
    use std::sync::atomic::Ordering::SeqCst;
    let mem = std::sync::Arc::new(teeshm_testkit::PhysMemory::new());
    let tee = gated_tee(teeshm_testkit::SimPlatform::new(mem.clone()));
    let g1 = GuestId(1);
    let hyp = |func: u32, id: u64| tee.handle_smc(SmcRegs::call(func, &[id]).from_client(G0));
    assert_eq!(hyp(OPTEE_SMC_VM_CREATED, 1).a0(), OPTEE_SMC_RETURN_OK);
    let page = |i: u64| 0x4000_0000 + i * PAGE;
    let call = |arg_page: u64| {
        let (hi, lo) = split_pair(arg_page);
        tee.handle_smc(SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(g1))
    };
    // A session of guest 1.
    let open = arg_bytes(
        header(OPTEE_MSG_CMD_OPEN_SESSION),
        &open_session_params(teeshm_core::pta::MEMTEST_UUID),
    );
    let mut open = open;
    open[28..32].copy_from_slice(&2u32.to_le_bytes());
    mem.write(page(1), &open);
    assert_eq!(call(page(1)).a0(), OPTEE_SMC_RETURN_OK);
    let mut h = [0u8; 32];
    mem.read(page(1), &mut h);
    let session = u32::from_le_bytes(h[8..12].try_into().unwrap());
    assert_eq!(
        u32::from_le_bytes(h[20..24].try_into().unwrap()),
        TEE_SUCCESS
    );
    // RPC_BUFFER with a temporary page list (list at page 3 naming page 4): the call reads the
    // list after its session was found, and stops at the gate there.
    mem.write(page(3), &page(4).to_le_bytes());
    let mut header = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    header.session.set(session);
    header.func.set(cmd::RPC_BUFFER);
    header.num_params.set(3);
    let invoke = arg_bytes(
        header,
        &[
            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 100, 1, 7),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                Tmem::new(page(3), 100, 0),
            ),
        ],
    );
    mem.write(page(2), &invoke);
    tee.platform().gate_page.store(page(3), SeqCst);
    let out = std::thread::scope(|s| {
        let running = s.spawn(|| call(page(2)));
        while !tee.platform().reached.load(SeqCst) {
            std::thread::yield_now();
        }
        // Guest 1 is destroyed while its call runs on the other CPU (it has no registered
        // buffer, so the sweep needs no lock the held call has).
        assert_eq!(hyp(OPTEE_SMC_VM_DESTROYED, 1).a0(), OPTEE_SMC_RETURN_OK);
        tee.platform().open.store(true, SeqCst);
        running.join().unwrap()
    });
    assert!(
        !is_rpc_return(out.a0()),
        "the call of a destroyed guest asked for an RPC: {:#x}",
        out.a0()
    );
    assert!(
        tee.thread_states()
            .iter()
            .all(|t| *t == teeshm_core::thread::ThreadState::Free),
        "a thread still holds a call of the destroyed guest: {:?}",
        tee.thread_states()
    );
    assert!(tee.check_agreement().is_empty());
    assert_eq!(tee.window().mapped_objects(), 0);
    // A new guest 1 finds nothing of the old one to resume.
    assert_eq!(hyp(OPTEE_SMC_VM_CREATED, 1).a0(), OPTEE_SMC_RETURN_OK);
    for thread in 0..8 {
        let resumed = tee.handle_smc(
            SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]).from_client(g1),
        );
        assert_eq!(resumed.a0(), OPTEE_SMC_RETURN_ERESUME, "thread {thread}");
    }
    assert!(tee.check_agreement().is_empty());
}

/// Found by the `smc_surface` fuzz target (crash-9a644ed4, docs/assurance.md): an
/// `RPC_FUNC_ALLOC` answer naming a buffer too small for an RPC arg (here the last byte of a
/// page) was refused, but the object made for it was never retired, so its charge stayed on
/// the guest's counters for ever — one object leaked per such answer. And, as OP-TEE's
/// `thread_rpc_alloc_arg` does, the refused buffer goes back to the normal world by
/// `RPC_FUNC_FREE` with its cookie before the call ends.
#[test]
fn regression_fuzz_too_small_rpc_arg_buffer_released() {
    let w = World::virtualized();
    let g = GuestId(1);
    assert_eq!(w.create_guest(1), 0);
    let session = w.open_session(g);
    let before = w.tee.guest(g).unwrap().snapshot();
    let (a0, page) = raw_call(&w, g, &rpc_buffer_arg(session, 100, &[]));
    assert_eq!(a0, OPTEE_SMC_RETURN_RPC_ALLOC);
    let thread = w
        .tee
        .thread_states()
        .iter()
        .position(|t| *t == teeshm_core::thread::ThreadState::Suspended(g))
        .unwrap() as u64;
    // The buffer: one byte, at the end of a normal-world page.
    let tiny = w.alloc_page() + 0xfff;
    let (hi, lo) = split_pair(tiny);
    let out = w.smc(g, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[hi, lo, thread, 0, 7]);
    assert_eq!(
        out.a0(),
        OPTEE_SMC_RETURN_RPC_FREE,
        "the refused buffer is handed back"
    );
    assert_eq!(reg_pair(out.a[1], out.a[2]), 7, "by its cookie");
    let out = w.smc(g, OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread]);
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    assert_eq!(ret_at(&w, page), TEE_ERROR_COMMUNICATION);
    w.check();
    let after = w.tee.guest(g).unwrap().snapshot();
    assert_eq!(
        (after.objects, after.secure_bytes, after.mapped_pages),
        (before.objects, before.secure_bytes, before.mapped_pages)
    );
}

/// Found by the reference model (reference.rs): a registered buffer whose mapping was
/// idle in the cache, unregistered while a suspended call held it, kept that idle mapping
/// until the call ended, which the agreement checker reported as an `IdleIndex`
/// disagreement. Since revocation the mapping goes with the unregister itself (the call may
/// not reach the pages any more), and the object with the call's end.
#[test]
fn regression_idle_mapping_of_busy_unregistered_buffer() {
    let w = World::virtualized();
    let g = GuestId(1);
    assert_eq!(w.create_guest(1), 0);
    let session = w.open_session(g);
    let buf = w.buffer(2 * PAGE, 0);
    assert_eq!(w.register(g, 1, &buf), TEE_SUCCESS);
    let r = w.invoke(
        g,
        session,
        cmd::TOUCH,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 1, 0, 1),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(
        w.tee.window().idle_mappings(),
        1,
        "the buffer's mapping is cached"
    );
    // A call holding buffer 1 waits in its first RPC.
    let held = [rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, 1, 0, 1)];
    let (a0, _) = raw_call(&w, g, &rpc_buffer_arg(session, 50, &held));
    assert_eq!(a0, OPTEE_SMC_RETURN_RPC_ALLOC);
    assert_eq!(w.unregister(g, 1), TEE_SUCCESS);
    w.check();
    assert!(
        w.tee
            .window()
            .object_mappings()
            .all(|m| m.cookie != Some(1)),
        "revoked: unmapped at once"
    );
    assert_eq!(
        w.tee.guest(g).unwrap().snapshot().registered_pages,
        2,
        "the object lives on with its user"
    );
    // The call ends: the buffer is released and its mapping goes.
    let thread = w
        .tee
        .thread_states()
        .iter()
        .position(|t| *t == teeshm_core::thread::ThreadState::Suspended(g))
        .unwrap() as u64;
    let mut out = SmcRegs::call(OPTEE_SMC_RETURN_RPC_ALLOC, &[56, 0, thread]);
    while is_rpc_return(out.a0()) {
        let answer = w.answer_rpc(&out, None);
        out = w.tee.handle_smc(answer.from_client(g));
    }
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    w.check();
    assert_eq!(w.tee.window().mapped_objects(), 0);
    assert_eq!(w.tee.guest(g).unwrap().snapshot().registered_pages, 0);
}

/// Found by the host stress test of several CPUs per guest (crates/sim/tests/concurrency.rs,
/// about one run of six) once user TAs came: an `OPEN_SESSION` of a guest destroyed while the
/// call ran kept its new session after the sweep had taken the guest's sessions, so its TA
/// instance (ASID, pages, charge) lived on with whatever still held the guest. Now the session
/// of a dying guest is not kept: its instance goes at once.
#[test]
fn regression_session_opened_while_its_guest_is_destroyed_is_not_kept() {
    use std::sync::atomic::Ordering::SeqCst;
    let mem = std::sync::Arc::new(teeshm_testkit::PhysMemory::new());
    let ta_ram = teeshm_mm::PhysRange::new(
        teeshm_mm::PhysAddr(teeshm_testkit::TA_RAM.0),
        teeshm_testkit::TA_RAM.1,
    )
    .unwrap();
    let tee = gated_tee(teeshm_testkit::SimPlatform::new(mem.clone()).with_ta_ram(ta_ram));
    for image in teeshm_testkit::sim_ta_images() {
        tee.register_ta(image).unwrap();
    }
    let g1 = GuestId(1);
    let hyp = |func: u32, id: u64| tee.handle_smc(SmcRegs::call(func, &[id]).from_client(G0));
    assert_eq!(hyp(OPTEE_SMC_VM_CREATED, 1).a0(), OPTEE_SMC_RETURN_OK);
    let partition = tee.guest(g1).unwrap();
    let page = |i: u64| 0x4000_0000 + i * PAGE;
    // OPEN_SESSION of the user TA with a temporary page list (list at page 3 naming page 4):
    // the call reads the list as it resolves its parameters, before it makes the instance, and
    // stops at the gate there.
    mem.write(page(3), &page(4).to_le_bytes());
    let [uuid, client] = open_session_params(teeshm_ta::memtest::UUID);
    let open = arg_bytes(
        header(OPTEE_MSG_CMD_OPEN_SESSION),
        &[
            uuid,
            client,
            MsgParam::from_tmem(
                OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                Tmem::new(page(3), 100, 0),
            ),
        ],
    );
    let mut open = open;
    open[28..32].copy_from_slice(&3u32.to_le_bytes());
    mem.write(page(2), &open);
    tee.platform().gate_page.store(page(3), SeqCst);
    let out = std::thread::scope(|s| {
        let running = s.spawn(|| {
            let (hi, lo) = split_pair(page(2));
            tee.handle_smc(SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(g1))
        });
        while !tee.platform().reached.load(SeqCst) {
            std::thread::yield_now();
        }
        assert_eq!(hyp(OPTEE_SMC_VM_DESTROYED, 1).a0(), OPTEE_SMC_RETURN_OK);
        tee.platform().open.store(true, SeqCst);
        running.join().unwrap()
    });
    assert_eq!(out.a0(), OPTEE_SMC_RETURN_OK);
    assert_eq!(
        partition.snapshot().sessions,
        0,
        "a session kept after the sweep"
    );
    assert_eq!(
        tee.tas().resources().asids_in_use(),
        0,
        "the instance outlived its guest"
    );
    assert_eq!(partition.counters().secure_bytes(), 0);
    assert_eq!(partition.counters().sessions(), 0);
    let (free, total) = tee.platform().inner.ta_ram_pages();
    assert_eq!(free, total);
    assert!(tee.check_agreement().is_empty());
}
