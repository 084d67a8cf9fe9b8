//! The driver against the real core: probe, registration of unaligned buffers from 1 byte to
//! 3 MiB, raw messages to the memtest pseudo-TA, RPC buffers of every type, the thread limit,
//! and a scripted TEE for the RPCs the core never makes.

mod common;

use common::*;
use teeshm_abi::GuestId;
use teeshm_abi::caps::SecureCaps;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::rpc::*;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd, pattern_byte};
use teeshm_nw::driver::header;
use teeshm_nw::{Driver, DriverError, GuestBuffer, GuestRam, MsgReply, PAGE_SIZE};
use teeshm_testkit::msg::value;

const G0: GuestId = GuestId::HYPERVISOR;

fn open(driver: &mut SimDriver) -> u32 {
    let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
    let a = u64::from_le_bytes(MEMTEST_UUID[..8].try_into().unwrap());
    let b = u64::from_le_bytes(MEMTEST_UUID[8..].try_into().unwrap());
    let params = [
        MsgParam::from_value(meta, Value::new(a, b, 0)),
        MsgParam::from_value(meta, Value::new(0, 0, 0)),
    ];
    let r = driver
        .call(header(OPTEE_MSG_CMD_OPEN_SESSION), &params)
        .unwrap();
    r.check().unwrap();
    r.header.session.get()
}

fn close(driver: &mut SimDriver, session: u32) {
    let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
    h.session.set(session);
    driver.call(h, &[]).unwrap().check().unwrap();
}

fn invoke(driver: &mut SimDriver, session: u32, func: u32, params: &[MsgParam]) -> MsgReply {
    let mut h = header(OPTEE_MSG_CMD_INVOKE_COMMAND);
    h.session.set(session);
    h.func.set(func);
    driver.call(h, params).unwrap()
}

#[test]
fn probe_follows_linux() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let caps = d.caps();
        assert!(caps.contains(SecureCaps::DYNAMIC_SHM | SecureCaps::MEMREF_NULL));
        assert_eq!(caps.contains(SecureCaps::RPC_ARG), !mode.no_rpc_arg);
        assert_eq!(caps.contains(SecureCaps::HAVE_RESERVED_SHM), mode.pool);
        let c = d.conduit_mut();
        assert_eq!(
            &c.sent[..3],
            &[
                OPTEE_SMC_CALLS_UID,
                OPTEE_SMC_CALLS_REVISION,
                OPTEE_SMC_EXCHANGE_CAPABILITIES
            ]
        );
        assert_eq!(c.count(OPTEE_SMC_GET_SHM_CONFIG), usize::from(mode.pool));
        // The SHM cache: drained of stale entries, then enabled, only without RPC_ARG.
        let cache = usize::from(mode.no_rpc_arg);
        assert_eq!(c.count(OPTEE_SMC_DISABLE_SHM_CACHE), cache);
        assert_eq!(c.count(OPTEE_SMC_ENABLE_SHM_CACHE), cache);
        if mode.pool {
            let pool = d.static_pool().unwrap();
            assert_eq!((pool.base(), pool.size()), teeshm_testkit::STATIC_POOL);
        } else {
            assert_eq!(d.rpc_param_count(), if mode.no_rpc_arg { 0 } else { 4 });
        }
        let snap = tee.guest(G0).unwrap().snapshot();
        assert_eq!(snap.shm_cache_enabled, mode.no_rpc_arg);
        finish(&tee, &mut d);
    }
}

fn probe_with(pool: bool, tamper: fn(u32, &mut SmcRegs)) -> Result<SimDriver, DriverError> {
    let (_tee, mut c, ram) = conduit(Mode {
        pool,
        no_rpc_arg: false,
    });
    c.tamper = Some(tamper);
    Driver::probe(c, ram)
}

#[test]
fn probe_refuses_what_linux_refuses() {
    let e = probe_with(false, |f, out| {
        if f == OPTEE_SMC_CALLS_UID {
            out.a[2] ^= 1;
        }
    });
    assert!(matches!(e, Err(DriverError::NotOpTee { .. })), "{e:?}");
    let e = probe_with(false, |f, out| {
        if f == OPTEE_SMC_CALLS_REVISION {
            out.a[0] = 3;
        }
    });
    assert_eq!(e.unwrap_err(), DriverError::Revision { major: 3, minor: 0 });
    let e = probe_with(false, |f, out| {
        if f == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            *out = SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
    });
    assert!(matches!(e, Err(DriverError::Smc { code: 7, .. })), "{e:?}");
    let e = probe_with(false, |f, out| {
        if f == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[1] &= !u64::from(SecureCaps::DYNAMIC_SHM.bits());
        }
    });
    assert!(
        matches!(e, Err(DriverError::NoSharedMemory { .. })),
        "{e:?}"
    );
    let e = probe_with(false, |f, out| {
        if f == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[3] = 200;
        }
    });
    assert_eq!(e.unwrap_err(), DriverError::RpcParamCount(200));
    // Reserved SHM alone: the pool must be usable.
    let e = probe_with(true, |f, out| {
        if f == OPTEE_SMC_EXCHANGE_CAPABILITIES {
            out.a[1] &= !u64::from(SecureCaps::DYNAMIC_SHM.bits());
        }
        if f == OPTEE_SMC_GET_SHM_CONFIG {
            out.a[3] = 0;
        }
    });
    assert!(
        matches!(e, Err(DriverError::BadPool { attr: 0, .. })),
        "{e:?}"
    );
    // With dynamic SHM too, an unusable pool is simply not used.
    let d = probe_with(true, |f, out| {
        if f == OPTEE_SMC_GET_SHM_CONFIG {
            *out = SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
    })
    .unwrap();
    assert!(d.static_pool().is_none());
}

#[test]
fn register_unaligned_buffers_from_one_byte_to_three_mib() {
    let sizes = [
        1,
        2,
        PAGE_SIZE - 1,
        PAGE_SIZE,
        PAGE_SIZE + 1,
        511 * PAGE_SIZE,
        511 * PAGE_SIZE + 1,
        1 << 20,
        3 << 20,
    ];
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let session = open(&mut d);
        for offset in [0, 1, 0x800, 0xfff] {
            for size in sizes {
                let buf = buffer(&mut d, size, offset, marker(size ^ offset));
                let cookie = d.new_cookie();
                d.register(&buf, cookie).unwrap();
                {
                    // The core decoded the same pages, offset and size.
                    let used = tee.use_registered(G0, cookie).unwrap();
                    let mobj = used.mobj();
                    assert_eq!((mobj.size(), mobj.page_offset()), (size, offset));
                    let pages: Vec<u64> = mobj.pages().map(|p| p.get()).collect();
                    assert_eq!(pages, buf.pages);
                    assert_eq!(
                        mobj.pa_at(size - 1).unwrap().get(),
                        buf.ipa_at(size - 1).unwrap()
                    );
                }
                // And reads the bytes the guest wrote, at both ends.
                let r = invoke(
                    &mut d,
                    session,
                    cmd::TOUCH,
                    &[
                        MsgParam::from_rmem(
                            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
                            Rmem::new(0, size, cookie),
                        ),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                r.check().unwrap();
                let v = r.params[1].value();
                let m = marker(size ^ offset);
                assert_eq!(
                    (v.a.get(), v.b.get()),
                    (u64::from(m(0)), u64::from(m(size - 1)))
                );
                // A second registration under the same cookie is refused; the first stays.
                let again = d.register(&buf, cookie);
                assert_eq!(
                    again,
                    Err(DriverError::Tee {
                        ret: TEE_ERROR_BAD_PARAMETERS,
                        origin: TEE_ORIGIN_TEE
                    })
                );
                d.unregister(cookie).unwrap();
                assert_eq!(
                    d.unregister(cookie),
                    Err(DriverError::Tee {
                        ret: TEE_ERROR_BAD_PARAMETERS,
                        origin: TEE_ORIGIN_TEE
                    })
                );
                buf.free(d.ram_mut());
                agree(&tee);
            }
        }
        // An empty or malformed buffer never reaches the TEE.
        let sent = d.conduit_mut().sent.len();
        let empty = GuestBuffer {
            pages: vec![],
            offset: 0,
            size: 0,
        };
        assert!(matches!(
            d.register(&empty, 1),
            Err(DriverError::BadBuffer { .. })
        ));
        let wrong = GuestBuffer {
            pages: vec![0x4000_0000],
            offset: 0,
            size: PAGE_SIZE + 1,
        };
        assert!(matches!(
            d.register(&wrong, 1),
            Err(DriverError::BadBuffer { .. })
        ));
        assert_eq!(d.conduit_mut().sent.len(), sent);
        close(&mut d, session);
        finish(&tee, &mut d);
    }
}

#[test]
fn every_call_uses_the_form_the_capabilities_ask_for() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let session = open(&mut d);
        close(&mut d, session);
        let c = d.conduit_mut();
        let (with_arg, with_rpc_arg) = (
            c.count(OPTEE_SMC_CALL_WITH_ARG),
            c.count(OPTEE_SMC_CALL_WITH_RPC_ARG),
        );
        if mode.no_rpc_arg {
            assert_eq!((with_arg, with_rpc_arg), (2, 0));
        } else {
            assert_eq!((with_arg, with_rpc_arg), (0, 2));
        }
        finish(&tee, &mut d);
    }
}

#[test]
fn temporary_memrefs_by_raw_messages() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let session = open(&mut d);
        for (offset, size) in [
            (0, 1),
            (0xfff, 2),
            (0x10, 3 * PAGE_SIZE),
            (0x7, (2 << 20) + 9),
        ] {
            let input = buffer(&mut d, size, offset, marker(size));
            let output = buffer(&mut d, size + 5, 0xfff - offset, |_| 0);
            let li = d.page_list(&input).unwrap();
            let lo = d.page_list(&output).unwrap();
            let r = invoke(
                &mut d,
                session,
                cmd::COPY,
                &[
                    MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_INPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(li.buf_ptr, size, 1),
                    ),
                    MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                        Tmem::new(lo.buf_ptr, size + 5, 2),
                    ),
                ],
            );
            d.free_page_list(li);
            d.free_page_list(lo);
            r.check().unwrap();
            assert_eq!(r.params[1].tmem().size.get(), size);
            let got = contents(&d, &output);
            assert_eq!(&got[..size as usize], &contents(&d, &input)[..]);
            assert_eq!(&got[size as usize..], &[0; 5]);
            input.free(d.ram_mut());
            output.free(d.ram_mut());
        }
        close(&mut d, session);
        finish(&tee, &mut d);
    }
}

#[test]
fn rpc_buffers_of_every_type_and_size() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let session = open(&mut d);
        for shm_type in [RpcShmType::Appl, RpcShmType::Kernel, RpcShmType::Global] {
            for size in [1, 160, PAGE_SIZE, PAGE_SIZE + 1, 3 << 20] {
                let seed = size ^ 0x5eed;
                let before = d.conduit_mut().rpcs.len();
                let r = invoke(
                    &mut d,
                    session,
                    cmd::RPC_BUFFER,
                    &[
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, size, shm_type.raw(), seed),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                r.check().unwrap();
                assert_eq!(r.params[1].value().a.get(), size);
                let rpcs = d.conduit_mut().rpcs[before..].to_vec();
                assert_eq!(r.rpcs as usize, rpcs.len());
                // SHM_ALLOC and SHM_FREE by RPC_CMD; without RPC_ARG the first call also
                // needs an RPC arg buffer, which the SHM cache then keeps.
                let cmds = rpcs
                    .iter()
                    .filter(|&&c| c == OPTEE_SMC_RETURN_RPC_CMD)
                    .count();
                assert_eq!(cmds, 2);
                assert!(!rpcs.contains(&OPTEE_SMC_RETURN_RPC_FREE));
                if !mode.no_rpc_arg {
                    assert_eq!(rpcs.len(), 2);
                }
                assert_eq!(d.rpc_buffers_held(), usize::from(mode.no_rpc_arg));
                agree(&tee);
            }
        }
        let allocs = d
            .conduit_mut()
            .rpcs
            .iter()
            .filter(|&&c| c == OPTEE_SMC_RETURN_RPC_ALLOC)
            .count();
        assert_eq!(allocs, usize::from(mode.no_rpc_arg));
        if mode.no_rpc_arg {
            assert_eq!(tee.guest(G0).unwrap().snapshot().cached_rpc_args, 1);
        }
        close(&mut d, session);
        finish(&tee, &mut d);
    }
}

#[test]
fn the_pseudo_ta_fills_registered_and_pool_memory() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        let session = open(&mut d);
        let buf = buffer(&mut d, 70_000, 0x321, |_| 0xee);
        let cookie = d.new_cookie();
        d.register(&buf, cookie).unwrap();
        let r = invoke(
            &mut d,
            session,
            cmd::FILL,
            &[
                MsgParam::from_rmem(
                    OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
                    Rmem::new(1000, 50_000, cookie),
                ),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 99, 0, 0),
            ],
        );
        r.check().unwrap();
        let got = contents(&d, &buf);
        for (i, &b) in got.iter().enumerate() {
            let i = i as u64;
            let want = if (1000..51_000).contains(&i) {
                pattern_byte(99, i - 1000)
            } else {
                0xee
            };
            assert_eq!(b, want, "byte {i}");
        }
        d.unregister(cookie).unwrap();
        buf.free(d.ram_mut());
        if mode.pool {
            // A contiguous tmem inside the pool.
            let pool = d.static_pool_mut().unwrap();
            let pa = pool.alloc(2).unwrap();
            let r = invoke(
                &mut d,
                session,
                cmd::FILL,
                &[
                    MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                        Tmem::new(pa + 7, 6000, 0),
                    ),
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 5, 0, 0),
                ],
            );
            r.check().unwrap();
            let mut got = vec![0u8; 6000];
            d.ram().read(pa + 7, &mut got).unwrap();
            assert!(
                got.iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern_byte(5, i as u64))
            );
            d.static_pool_mut().unwrap().free(pa);
        }
        close(&mut d, session);
        finish(&tee, &mut d);
    }
}

#[test]
fn thread_limit_is_retried_then_reported() {
    for mode in MODES {
        let (tee, mut d) = world(mode);
        d.conduit_mut().inject_thread_limit = 5;
        let session = open(&mut d);
        let starts = if mode.no_rpc_arg {
            OPTEE_SMC_CALL_WITH_ARG
        } else {
            OPTEE_SMC_CALL_WITH_RPC_ARG
        };
        assert_eq!(d.conduit_mut().count(starts), 6);
        d.set_thread_limit_retries(10);
        d.conduit_mut().inject_thread_limit = u32::MAX;
        let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
        h.session.set(session);
        assert_eq!(d.call(h, &[]), Err(DriverError::ThreadLimit { tries: 10 }));
        d.conduit_mut().inject_thread_limit = 0;
        close(&mut d, session);
        finish(&tee, &mut d);
    }
}

#[test]
fn refused_calls_and_oversized_args() {
    let (tee, mut d) = world(MODES[0]);
    // More than fits one page with its RPC arg.
    let params = vec![MsgParam::new(OPTEE_MSG_ATTR_TYPE_NONE); 124];
    assert_eq!(
        d.call(header(OPTEE_MSG_CMD_CANCEL), &params),
        Err(DriverError::ArgTooLarge { params: 124 })
    );
    let params = vec![MsgParam::new(OPTEE_MSG_ATTR_TYPE_NONE); 200];
    assert!(matches!(
        d.call(header(OPTEE_MSG_CMD_CANCEL), &params),
        Err(DriverError::ArgTooLarge { .. })
    ));
    // A call the TEE refuses at the SMC level comes back with its code (the conduit fakes the
    // refusal after the core ran the message).
    d.conduit_mut().tamper = Some(|f, out| {
        if f == OPTEE_SMC_CALL_WITH_RPC_ARG {
            *out = SmcRegs::ret(OPTEE_SMC_RETURN_EBADADDR);
        }
    });
    let r = d.call(header(OPTEE_MSG_CMD_CANCEL), &[]).unwrap();
    assert_eq!(r.a0, OPTEE_SMC_RETURN_EBADADDR);
    assert_eq!(r.check(), Err(DriverError::CallRefused { code: 4 }));
    d.conduit_mut().tamper = None;
    // An unknown message command runs and fails in the TEE.
    let r = d.call(header(77), &[]).unwrap();
    assert_eq!(r.a0, OPTEE_SMC_RETURN_OK);
    assert_eq!(
        r.check(),
        Err(DriverError::Tee {
            ret: TEE_ERROR_NOT_IMPLEMENTED,
            origin: TEE_ORIGIN_TEE
        })
    );
    finish(&tee, &mut d);
}

/// A scripted TEE for RPCs the core never makes: it probes as OP-TEE with `RPC_ARG`, and
/// answers the first yielding call with a list of RPCs, writing each RPC command into the
/// appended RPC arg and recording what the driver answered.
struct Scripted {
    ram: SimRam,
    arg: u64,
    script: Vec<Step>,
    answers: Vec<(u32, [u64; 6])>,
}

#[derive(Clone, Copy)]
enum Step {
    /// An RPC command (cmd, params as value a, b, attr).
    Cmd(u32, u64, u64, u64),
    /// A bare RPC function.
    Func(u32, u64, u64),
}

impl Scripted {
    fn rpc_arg_at(&self) -> u64 {
        let mut head = [0u8; 32];
        self.ram.read(self.arg, &mut head).unwrap();
        let n = u32::from_le_bytes(head[28..32].try_into().unwrap());
        self.arg + get_arg_size(n).unwrap() as u64
    }

    fn next(&mut self) -> SmcRegs {
        if self.script.is_empty() {
            return SmcRegs::ret(OPTEE_SMC_RETURN_OK);
        }
        match self.script.remove(0) {
            Step::Cmd(c, a, b, attr) => {
                let at = self.rpc_arg_at();
                let mut h = header(c);
                h.num_params.set(1);
                let p = MsgParam::from_value(attr, Value::new(a, b, 0));
                self.ram
                    .write(at, zerocopy::IntoBytes::as_bytes(&h))
                    .unwrap();
                self.ram
                    .write(at + 32, zerocopy::IntoBytes::as_bytes(&p))
                    .unwrap();
                SmcRegs::call(OPTEE_SMC_RETURN_RPC_CMD, &[0, 0, 3])
            }
            Step::Func(f, a1, a2) => SmcRegs::call(f, &[a1, a2, 3]),
        }
    }
}

impl SmcConduit for Scripted {
    fn smc(&mut self, regs: SmcRegs) -> SmcRegs {
        match regs.a0() {
            OPTEE_SMC_CALLS_UID => {
                let w = teeshm_abi::uid::OPTEE_MSG_UID.map(u64::from);
                SmcRegs::call(w[0] as u32, &w[1..])
            }
            OPTEE_SMC_CALLS_REVISION => SmcRegs::call(2, &[0]),
            OPTEE_SMC_EXCHANGE_CAPABILITIES => SmcRegs::call(
                0,
                &[
                    u64::from((SecureCaps::DYNAMIC_SHM | SecureCaps::RPC_ARG).bits()),
                    0,
                    4,
                ],
            ),
            OPTEE_SMC_CALL_WITH_RPC_ARG => {
                self.arg = reg_pair(regs.a[1], regs.a[2]);
                self.next()
            }
            OPTEE_SMC_CALL_RETURN_FROM_RPC => {
                let at = self.rpc_arg_at();
                let mut head = [0u8; 32];
                self.ram.read(at, &mut head).unwrap();
                let ret = u32::from_le_bytes(head[20..24].try_into().unwrap());
                self.answers.push((
                    ret,
                    [regs.a[1], regs.a[2], regs.a[3], regs.a[4], regs.a[5], 0],
                ));
                self.next()
            }
            _ => SmcRegs::ret(OPTEE_SMC_RETURN_UNKNOWN_FUNCTION),
        }
    }
}

#[test]
fn rpcs_the_driver_cannot_serve_are_answered_anyway() {
    let (_tee, mem) = tee(false);
    let scripted = Scripted {
        ram: SimRam::new(mem.clone()),
        arg: 0,
        script: vec![
            Step::Cmd(
                OPTEE_RPC_CMD_GET_TIME,
                0,
                0,
                OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
            ),
            Step::Cmd(
                OPTEE_RPC_CMD_SHM_FREE,
                1,
                0xdead,
                OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
            ),
            Step::Cmd(
                OPTEE_RPC_CMD_SHM_ALLOC,
                7,
                100,
                OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
            ),
            Step::Cmd(
                OPTEE_RPC_CMD_SHM_ALLOC,
                1,
                0,
                OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
            ),
            Step::Cmd(
                OPTEE_RPC_CMD_SHM_ALLOC,
                1,
                100,
                OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
            ),
            Step::Func(OPTEE_SMC_RETURN_RPC_FOREIGN_INTR, 0, 0),
            Step::Func(OPTEE_SMC_RETURN_RPC_FREE, 0, 0xbad),
            Step::Func(0xFFFF_0042, 1, 2),
        ],
        answers: Vec::new(),
    };
    let mut d = Driver::probe(scripted, SimRam::new(mem)).unwrap();
    assert!(d.uses_rpc_arg() && !d.shm_cache_enabled());
    let r = d.call(header(OPTEE_MSG_CMD_CANCEL), &[]).unwrap();
    assert_eq!((r.a0, r.rpcs), (OPTEE_SMC_RETURN_OK, 8));
    let answers: Vec<u32> = d.conduit_mut().answers.iter().map(|a| a.0).collect();
    assert_eq!(
        &answers[..5],
        &[
            TEE_ERROR_NOT_IMPLEMENTED,
            TEE_ERROR_BAD_PARAMETERS,
            TEE_ERROR_BAD_PARAMETERS,
            TEE_ERROR_BAD_PARAMETERS,
            TEE_ERROR_BAD_PARAMETERS
        ]
    );
    // Every RPC resumes the same thread (a3), echoing a1:a2.
    for (_, regs) in &d.conduit_mut().answers {
        assert_eq!(regs[2], 3);
    }
    assert_eq!(d.conduit_mut().answers[7].1[..2], [1, 2]);
    assert_eq!(d.rpc_buffers_held(), 0);
    assert!(d.ram().live.is_empty() && d.ram().bad_frees.is_empty());
}

#[test]
fn rpc_arg_buffers_without_the_shm_cache_are_freed_by_rpc_free() {
    // A TEE that does not report RPC_ARG and refuses to enable the SHM cache: the RPC arg
    // buffer of each call comes back by RPC_FREE at its end.
    let (tee, mut c, ram) = conduit(Mode {
        pool: false,
        no_rpc_arg: true,
    });
    c.tamper = Some(|f, out| {
        if f == OPTEE_SMC_ENABLE_SHM_CACHE {
            *out = SmcRegs::ret(OPTEE_SMC_RETURN_ENOTAVAIL);
        }
    });
    // The core really enables it, so disable it again behind the driver's back.
    let mut d = Driver::probe(c, ram).unwrap();
    assert!(!d.shm_cache_enabled());
    assert_eq!(
        tee.handle_smc(SmcRegs::call(OPTEE_SMC_DISABLE_SHM_CACHE, &[]))
            .a0(),
        OPTEE_SMC_RETURN_ENOTAVAIL
    );
    let session = open(&mut d);
    for _ in 0..3 {
        let r = invoke(
            &mut d,
            session,
            cmd::RPC_BUFFER,
            &[
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 5000, 1, 3),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        r.check().unwrap();
        assert_eq!(d.rpc_buffers_held(), 0);
    }
    let rpcs = &d.conduit_mut().rpcs;
    let count = |c| rpcs.iter().filter(|&&x| x == c).count();
    assert_eq!(
        (
            count(OPTEE_SMC_RETURN_RPC_ALLOC),
            count(OPTEE_SMC_RETURN_RPC_FREE),
            count(OPTEE_SMC_RETURN_RPC_CMD)
        ),
        (3, 3, 6)
    );
    close(&mut d, session);
    finish(&tee, &mut d);
}

/// Regression (found by this crate's tests, fixed in the core): the SHM cache kept an RPC arg
/// buffer as its memory object only, without the offset. An RPC arg buffer in the static pool
/// (`RPC_FUNC_ALLOC` answered inside the pool, which is what a TEE without dynamic SHM needs) was
/// kept as *the pool object*: the next call that took it from the cache wrote its RPC at offset 0
/// of the pool instead of in the buffer, the agreement checker counted the pool as an object of
/// guest 0, and `DISABLE_SHM_CACHE` retired and released the pool itself, after which no
/// contiguous memref in the pool worked for anyone.
#[test]
fn rpc_arg_buffers_in_the_static_pool_survive_the_shm_cache() {
    let (tee, mut d) = pool_only_world(true);
    assert!(d.shm_cache_enabled());
    let session = open(&mut d);
    for size in [1, 4096] {
        let r = invoke(
            &mut d,
            session,
            cmd::RPC_BUFFER,
            &[
                value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, size, 0, 1),
                value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
            ],
        );
        assert_eq!(r.check(), Ok(()), "RPC_BUFFER of {size}");
        agree(&tee);
    }
    d.shutdown().unwrap();
    let pa = d.static_pool_mut().unwrap().alloc(1).unwrap();
    let r = invoke(
        &mut d,
        session,
        cmd::FILL,
        &[
            MsgParam::from_tmem(OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT, Tmem::new(pa, 100, 0)),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 1, 0, 0),
        ],
    );
    assert_eq!(r.check(), Ok(()), "the pool after DISABLE_SHM_CACHE");
}

#[test]
fn pool_only_with_rpc_arg_puts_every_arg_in_the_pool() {
    let (tee, mut d) = pool_only_world(false);
    let session = open(&mut d);
    let r = invoke(
        &mut d,
        session,
        cmd::RPC_BUFFER,
        &[
            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 10_000, 2, 1),
            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
        ],
    );
    r.check().unwrap();
    close(&mut d, session);
    let args = d.conduit_mut().args.clone();
    assert!(
        args.len() == 3 && args.iter().all(|&a| in_pool(a)),
        "{args:x?}"
    );
    finish(&tee, &mut d);
}
