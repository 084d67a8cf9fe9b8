//! User TAs through the SMC interface: every memref kind into a TA (registered whole and
//! partial, temporary, NULL), outputs and short buffers, read-only inputs, a pointer kept past
//! its call, faults and panics (the TA dies alone), TA to TA, access rights, the TA RAM shares
//! of guests, their sweep, and `ioremap`.

use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_core::pta;
use teeshm_core::{CoreConfig, NormalWorld};
use teeshm_ta::memtest::{UUID as MEMTEST, cmd};
use teeshm_testkit::msg::*;
use teeshm_testkit::world::*;

const G0: GuestId = GuestId::HYPERVISOR;

fn world() -> World {
    World::with_user_tas(CoreConfig::default())
}

fn open(w: &World, guest: GuestId) -> u32 {
    let r = w.open_session_uuid(guest, MEMTEST);
    assert_eq!(r.ret(), TEE_SUCCESS, "open: {:#x}", r.ret());
    r.header.session.get()
}

fn close(w: &World, guest: GuestId, session: u32) -> u32 {
    let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
    h.session.set(session);
    w.call(guest, ArgMode::RpcArg, h, &[]).ret()
}

/// Every page and ASID of every instance given back (the checker checks the charges).
fn all_back(w: &World) {
    let (free, total) = w.tee.platform().ta_ram_pages();
    assert_eq!(free, total, "TA RAM all back");
    assert_eq!(w.tee.tas().resources().asids_in_use(), 0, "ASIDs all back");
}

fn seed(a: u64) -> MsgParam {
    value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, a, 0, 0)
}

fn out() -> MsgParam {
    value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0)
}

/// Registers a buffer of `size` bytes at `offset` in its first page; its cookie.
fn registered(w: &World, guest: GuestId, size: u64, offset: u64) -> (Buf, u64) {
    let buf = w.buffer(size, offset);
    let cookie = w.cookie();
    assert_eq!(w.register(guest, cookie, &buf), TEE_SUCCESS);
    (buf, cookie)
}

#[test]
fn every_memref_kind_reaches_the_ta_and_every_byte_comes_back() {
    let w = world();
    let s = open(&w, G0);
    // Registered, whole: the TA fills it, the normal world reads the pattern.
    let (buf, cookie) = registered(&w, G0, 3 * 4096 + 100, 0x123);
    let r = w.invoke(
        G0,
        s,
        cmd::FILL,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, buf.size),
            seed(7),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS, "{:#x}", r.ret());
    assert_eq!(w.read_buf(&buf, 0, buf.size), pattern(7, buf.size));
    // Registered, partial: the TA checks every byte of a window of it.
    let (offs, size) = (5000, 6000);
    w.write_buf(&buf, offs, &pattern(9, size));
    let r = w.invoke(
        G0,
        s,
        cmd::CHECK,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, offs, size),
            seed(9),
            out(),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.value(2)[..2], [size, 0xffff_ffff]);
    // Temporary (a page list): checked byte by byte, a wrong byte found where it is.
    let tmp = w.buffer(2 * 4096 + 7, 0x80);
    let mut data = pattern(3, tmp.size);
    data[5000] ^= 1;
    w.write_buf(&tmp, 0, &data);
    let r = w.invoke(
        G0,
        s,
        cmd::CHECK,
        &[
            w.tmem_list(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, &tmp),
            seed(3),
            out(),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.value(2)[..2], [tmp.size, 5000]);
    // NULL: the TA sees address 0 and refuses an empty TOUCH.
    let r = w.invoke(
        G0,
        s,
        cmd::TOUCH,
        &[value(OPTEE_MSG_ATTR_TYPE_TMEM_INPUT, 0, 0, 0), out()],
    );
    assert_eq!(r.ret(), TEE_ERROR_BAD_PARAMETERS);
    assert_eq!(r.origin(), TEE_ORIGIN_TRUSTED_APP);
    assert_eq!(close(&w, G0, s), TEE_SUCCESS);
    w.check();
    all_back(&w);
}

#[test]
fn copy_between_buffers_and_a_short_output_gets_the_size_it_needs() {
    let w = world();
    let s = open(&w, G0);
    let (src, c1) = registered(&w, G0, 10_000, 0);
    let (dst, c2) = registered(&w, G0, 12_000, 0x40);
    w.write_buf(&src, 0, &pattern(5, src.size));
    let r = w.invoke(
        G0,
        s,
        cmd::COPY,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, c1, 0, src.size),
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, c2, 0, dst.size),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.params[1].rmem().size.get(), src.size);
    assert_eq!(w.read_buf(&dst, 0, src.size), pattern(5, src.size));
    let r = w.invoke(
        G0,
        s,
        cmd::COPY,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, c1, 0, src.size),
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, c2, 0, 100),
        ],
    );
    assert_eq!(r.ret(), TEE_ERROR_SHORT_BUFFER);
    assert_eq!(r.origin(), TEE_ORIGIN_TRUSTED_APP);
    assert_eq!(r.params[1].rmem().size.get(), src.size);
    w.check();
}

#[test]
fn an_input_is_read_only_and_the_ta_that_writes_it_dies_alone() {
    let w = world();
    let victim = open(&w, G0);
    let other = open(&w, G0);
    let (buf, cookie) = registered(&w, G0, 4096, 0);
    w.write_buf(&buf, 0, &[0x5a]);
    let r = w.invoke(
        G0,
        victim,
        cmd::WRITE_INPUT,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 4096)],
    );
    assert_eq!(r.ret(), TEE_ERROR_TARGET_DEAD);
    assert_eq!(r.origin(), TEE_ORIGIN_TEE);
    assert_eq!(w.read_buf(&buf, 0, 1), [0x5a], "the input is untouched");
    // Dead for good: every further call says so, and it closes.
    let r = w.invoke(
        G0,
        victim,
        cmd::TOUCH,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 1), out()],
    );
    assert_eq!(r.ret(), TEE_ERROR_TARGET_DEAD);
    // The other instance of the same TA goes on.
    let r = w.invoke(
        G0,
        other,
        cmd::TOUCH,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 1), out()],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.value(1)[0], 0x5a);
    assert_eq!(close(&w, G0, victim), TEE_SUCCESS);
    assert_eq!(close(&w, G0, other), TEE_SUCCESS);
    w.check();
}

#[test]
fn a_pointer_kept_past_its_call_faults() {
    let w = world();
    let s = open(&w, G0);
    let (_, cookie) = registered(&w, G0, 8192, 0);
    let r = w.invoke(
        G0,
        s,
        cmd::KEEP,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT, cookie, 0, 8192)],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    // Same buffer, same instance: the span it had is unmapped now.
    let r = w.invoke(G0, s, cmd::USE_KEPT, &[out()]);
    assert_eq!(r.ret(), TEE_ERROR_TARGET_DEAD);
    assert_eq!(close(&w, G0, s), TEE_SUCCESS);
    w.check();
}

#[test]
fn faults_and_panics_kill_only_their_instance() {
    let w = world();
    for command in [cmd::FAULT, cmd::PANIC] {
        let s = open(&w, G0);
        let r = w.invoke(G0, s, command, &[]);
        assert_eq!(r.ret(), TEE_ERROR_TARGET_DEAD, "command {command}");
        assert_eq!(close(&w, G0, s), TEE_SUCCESS);
    }
    // The pseudo-TA and a new instance still work.
    let pta_session = w.open_session(G0);
    let s = open(&w, G0);
    let (_, cookie) = registered(&w, G0, 4096, 0);
    let r = w.invoke(
        G0,
        s,
        cmd::FILL,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, 4096),
            seed(1),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    let r = w.invoke(
        G0,
        pta_session,
        pta::cmd::TOUCH,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 4096), out()],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(r.value(1)[0], u64::from(pattern(1, 1)[0]));
    w.check();
}

#[test]
fn a_ta_shares_exactly_its_buffer_with_another_ta() {
    let w = world();
    let s = open(&w, G0);
    for len in [1, 4096, 3 * 4096 + 17] {
        let r = w.invoke(
            G0,
            s,
            cmd::CALL_PEER,
            &[value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 11, len, 0), out()],
        );
        assert_eq!(r.ret(), TEE_SUCCESS, "len {len}: {:#x}", r.ret());
        assert_eq!(r.value(1)[..2], [len, u64::from(TEE_ERROR_TARGET_DEAD)]);
    }
    assert_eq!(close(&w, G0, s), TEE_SUCCESS);
    all_back(&w);
    w.check();
}

#[test]
fn access_rights_tell_a_memref_from_the_tas_own_memory() {
    let w = world();
    let s = open(&w, G0);
    let (_, cookie) = registered(&w, G0, 4096, 0);
    let r = w.invoke(
        G0,
        s,
        cmd::CHECK_ACCESS,
        &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INOUT, cookie, 0, 4096), out()],
    );
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(
        r.value(1)[..2],
        [u64::from(TEE_SUCCESS), u64::from(TEE_ERROR_ACCESS_DENIED)]
    );
    w.check();
}

#[test]
fn a_guest_pays_for_its_instances_from_its_own_quota_and_its_sweep_refunds_them() {
    let config = CoreConfig {
        normal_world: NormalWorld::Virtualized,
        max_guests: 2,
        ..CoreConfig::default()
    };
    let quota = config.quotas.max_secure_bytes;
    let w = World::with_user_tas(config);
    let (a, b) = (GuestId(1), GuestId(2));
    assert_eq!(w.create_guest(1), 0);
    assert_eq!(w.create_guest(2), 0);
    let mut sessions = Vec::new();
    let refused = loop {
        let r = w.open_session_uuid(a, MEMTEST);
        if r.ret() != TEE_SUCCESS {
            break r.ret();
        }
        sessions.push(r.header.session.get());
        assert!(sessions.len() < 64, "no limit reached");
    };
    assert_eq!(refused, TEE_ERROR_OUT_OF_MEMORY);
    let counters = |g: GuestId| w.tee.guest(g).unwrap().counters().secure_bytes();
    let per_instance = counters(a) / sessions.len() as u64;
    assert!(counters(a) <= quota && counters(a) + per_instance > quota);
    // The other guest's quota is whole.
    let mut others = Vec::new();
    for _ in 0..sessions.len() {
        others.push(open(&w, b));
    }
    assert_eq!(counters(b), counters(a));
    assert_eq!(w.destroy_guest(1), 0);
    for s in others {
        assert_eq!(close(&w, b, s), TEE_SUCCESS);
    }
    assert_eq!(counters(b), 0);
    all_back(&w);
    w.check();
}

#[test]
fn an_unknown_uuid_is_item_not_found() {
    let w = world();
    let mut uuid = MEMTEST;
    uuid[15] ^= 1;
    assert_eq!(
        w.open_session_uuid(G0, uuid).ret(),
        TEE_ERROR_ITEM_NOT_FOUND
    );
    // Without TA RAM no instance can be made.
    let bare = World::default_world();
    assert_eq!(
        bare.open_session_uuid(G0, MEMTEST).ret(),
        TEE_ERROR_ITEM_NOT_FOUND
    );
}

#[test]
fn ioremap_maps_a_device_and_refuses_ram() {
    let w = world();
    let s = w.open_session(G0);
    let r = w.invoke(G0, s, pta::cmd::IO_PROBE, &[out(), out()]);
    assert_eq!(r.ret(), TEE_SUCCESS);
    assert_eq!(
        r.value(0)[..2],
        [0x0014_1011, 0xb105_f00d],
        "a PL011's identification"
    );
    assert_eq!(
        r.value(1)[..2],
        [
            u64::from(TEE_ERROR_BAD_PARAMETERS),
            u64::from(TEE_ERROR_BAD_PARAMETERS)
        ]
    );
    assert!(w.tee.io_mappings().is_empty(), "released on unmap");
    let m = w.tee.ioremap(0x0900_0000, 8).unwrap();
    assert_eq!(
        w.tee.io_read32(&m, 0xfe0).ok(),
        None,
        "outside the 8 bytes mapped"
    );
    assert_eq!(w.tee.io_mappings(), vec![m]);
    w.check();
    w.tee.iounmap(m.va).unwrap();
    assert!(w.tee.iounmap(m.va).is_err());
    w.check();
}

#[test]
fn a_ta_touching_more_parameters_than_its_tables_hold_goes_on() {
    // 24 MiB: 12 level-3 tables of parameter pages, more than the 10 a TA's tables keep; the
    // pages mapped so far are dropped and fault in again, and every byte is still checked.
    let w = world();
    let s = open(&w, G0);
    let (buf, cookie) = registered(&w, G0, 24 << 20, 0);
    w.write_buf(&buf, 0, &pattern(4, buf.size));
    let r = w.invoke(
        G0,
        s,
        cmd::CHECK,
        &[
            rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, buf.size),
            seed(4),
            out(),
        ],
    );
    assert_eq!(r.ret(), TEE_SUCCESS, "{:#x}", r.ret());
    assert_eq!(r.value(2)[..2], [buf.size, 0xffff_ffff]);
    assert_eq!(close(&w, G0, s), TEE_SUCCESS);
    all_back(&w);
    w.check();
}
