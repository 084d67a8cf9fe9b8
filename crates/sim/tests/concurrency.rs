//! Several CPUs on the SAME guest at once, and the guest destroyed while its calls are in
//! flight (docs/assurance.md, "Concurrency").
//!
//! The mediator is single-entry (one lock per guest), so calls that go through it never overlap
//! in the core. To make calls of one guest really overlap there, four "raw" CPUs issue SMCs
//! straight to the core with `a7` = the guest, as a hypervisor forwarding several vCPUs would,
//! building their args and page lists in the guest's own RAM (each CPU in its own pages). A
//! fifth CPU drives the guest's real driver through the mediator at the same time. They
//! register buffers, FILL and TOUCH them (each other's too), unregister buffers another CPU is
//! using (TEE_ERROR_BUSY or success), take an RPC and answer it, and invoke a user TA of their
//! own (FILL and CHECK of the shared buffers in the TA's address space, TA-to-TA CALL_PEER; a TA
//! that dies of a buffer revoked under it is closed and opened again); meanwhile a sixth CPU
//! destroys the guest. Afterwards no mapping, VA range, table page, thread, pin, shadow page,
//! page of TA RAM or counter of the guest is left, the system's checker finds nothing, and a
//! new guest with the same id finds nothing of the old one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use teeshm_abi::GuestId;
use teeshm_abi::gp::*;
use teeshm_abi::msg::*;
use teeshm_abi::page_list;
use teeshm_abi::smc::*;
use teeshm_core::pta::{MEMTEST_UUID, cmd};
use teeshm_core::thread::ThreadState;
use teeshm_sim::scenario::{Dir, Op, ParamSpec, Runner};
use teeshm_sim::stress::Rng;
use teeshm_sim::{System, SystemConfig};
use teeshm_ta::memtest::{UUID as USER_TA, cmd as ta_cmd};
use teeshm_testkit::msg::{
    arg_bytes, header, invoke_header, open_session_params, parse_arg, rmem, value,
};

const PAGE: u64 = 4096;
const GUEST: u16 = 1;
const RAW_CPUS: u64 = 4;
/// Guest pages each raw CPU owns (far above what the driver allocates in a short run).
const PAGES_PER_CPU: u64 = 1024;
const FIRST_RAW_PAGE: u64 = 8192;

/// One raw CPU of the guest: its pages and its session.
struct RawCpu {
    system: Arc<System>,
    /// Set when the hypervisor destroys the guest: its vCPUs stop, so no RPC is answered any
    /// more (a call left in an RPC then must not hold a thread for ever).
    gone: Arc<AtomicBool>,
    cpu: u64,
    next: u64,
    free: Vec<u64>,
    session: u32,
    /// Its session of the user TA (0: none open).
    ta_session: u32,
}

impl RawCpu {
    fn new(system: Arc<System>, gone: Arc<AtomicBool>, cpu: u64) -> Self {
        Self {
            system,
            gone,
            cpu,
            next: 0,
            free: Vec::new(),
            session: 0,
            ta_session: 0,
        }
    }

    /// A page of this CPU (machine PA of one of its guest pages).
    fn page(&mut self) -> u64 {
        if let Some(p) = self.free.pop() {
            return p;
        }
        let ipa_page = FIRST_RAW_PAGE + self.cpu * PAGES_PER_CPU + self.next % PAGES_PER_CPU;
        self.next += 1;
        let layout = self.system.machine.layout;
        layout.guest_pa(u64::from(GUEST - 1), ipa_page)
    }

    fn write(&self, pa: u64, bytes: &[u8]) {
        self.system.machine.memory.write(pa, bytes);
    }

    /// CALL_WITH_ARG of `header` + `params` from a fresh page; answers RPCs with "no memory"
    /// (PA 0), so an RPC_BUFFER call is suspended, resumed and ended. Returns a0 and ret.
    fn call(&mut self, header: MsgArgHeader, params: &[MsgParam]) -> (u32, u32) {
        let (a0, ret, _) = self.call_session(header, params);
        (a0, ret)
    }

    /// [`RawCpu::call`], also returning the session field written back.
    fn call_session(&mut self, header: MsgArgHeader, params: &[MsgParam]) -> (u32, u32, u32) {
        let page = self.page();
        let bytes = arg_bytes(header, params);
        self.write(page, &[0u8; PAGE as usize]);
        self.write(page, &bytes);
        let tee = &self.system.tee;
        let (hi, lo) = split_pair(page);
        let mut out = tee.handle_smc(
            SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[hi, lo]).from_client(GuestId(GUEST)),
        );
        let mut rounds = 0;
        while is_rpc_return(out.a0()) {
            if self.gone.load(Ordering::SeqCst) {
                break;
            }
            rounds += 1;
            assert!(rounds < 8, "RPC loop");
            let answer = SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, out.a[3]]);
            out = tee.handle_smc(answer.from_client(GuestId(GUEST)));
        }
        let mut back = [0u8; 32];
        self.system.machine.memory.read(page, &mut back);
        self.free.push(page);
        let (h, _) = parse_arg(&back);
        (out.a0(), h.ret.get(), h.session.get())
    }

    fn open_session(&mut self) -> bool {
        let h = header(OPTEE_MSG_CMD_OPEN_SESSION);
        let (a0, ret, session) = self.call_session(h, &open_session_params(MEMTEST_UUID));
        self.session = session;
        a0 == OPTEE_SMC_RETURN_OK && ret == TEE_SUCCESS
    }

    /// Opens a session of the user TA (an instance in TA RAM).
    fn open_user_ta(&mut self) -> (u32, u32) {
        let h = header(OPTEE_MSG_CMD_OPEN_SESSION);
        let (a0, ret, session) = self.call_session(h, &open_session_params(USER_TA));
        self.ta_session = if (a0, ret) == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS) {
            session
        } else {
            0
        };
        (a0, ret)
    }

    /// Closes the user TA's session.
    fn close_user_ta(&mut self) -> (u32, u32) {
        let mut h = header(OPTEE_MSG_CMD_CLOSE_SESSION);
        h.session.set(self.ta_session);
        self.ta_session = 0;
        self.call(h, &[])
    }

    /// Invokes the user TA (opening a session first if it has none; a TA that died is closed
    /// and opened again).
    fn invoke_user_ta(&mut self, func: u32, params: &[MsgParam]) -> (u32, u32) {
        if self.ta_session == 0 {
            let r = self.open_user_ta();
            if self.ta_session == 0 {
                return r;
            }
        }
        let r = self.call(invoke_header(self.ta_session, func), params);
        if r == (OPTEE_SMC_RETURN_OK, TEE_ERROR_TARGET_DEAD) {
            self.close_user_ta();
        }
        r
    }

    /// Registers a fresh buffer of `pages` pages as `cookie`.
    fn register(&mut self, cookie: u64, pages: u64) -> (u32, u32) {
        let data: Vec<u64> = (0..pages).map(|_| self.page()).collect();
        let list = self.page();
        let memory = self.system.machine.memory.clone();
        let buf_ptr = page_list::encode_with::<()>(&data, 0, pages * PAGE, &[list], |pa, b| {
            memory.write(pa, b);
            Ok(())
        })
        .unwrap();
        let h = header(OPTEE_MSG_CMD_REGISTER_SHM);
        let p = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(buf_ptr, pages * PAGE, cookie),
        );
        let r = self.call(h, &[p]);
        self.free.push(list);
        r
    }

    fn unregister(&mut self, cookie: u64) -> (u32, u32) {
        let h = header(OPTEE_MSG_CMD_UNREGISTER_SHM);
        self.call(h, &[rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, 0)])
    }

    fn invoke(&mut self, func: u32, params: &[MsgParam]) -> (u32, u32) {
        self.call(invoke_header(self.session, func), params)
    }
}

/// What the raw CPUs saw, for the test's own sanity (each class must have happened).
#[derive(Default)]
struct Seen {
    busy_unregisters: AtomicU64,
    ok_ops: AtomicU64,
    refused_after_destroy: AtomicU64,
    user_ta_ok: AtomicU64,
}

/// One raw CPU's work: register, FILL/TOUCH its own and others' buffers, unregister buffers
/// others may be using, RPC_BUFFER calls that suspend and resume; until the guest is gone.
fn raw_cpu(
    system: Arc<System>,
    cpu: u64,
    seed: u64,
    live: &Mutex<Vec<(u64, u64)>>,
    ready: &AtomicU64,
    gone: Arc<AtomicBool>,
    seen: &Seen,
) {
    let mut raw = RawCpu::new(system, gone.clone(), cpu);
    let mut rng = Rng::new(seed ^ cpu);
    let opened = raw.open_session();
    ready.fetch_add(1, Ordering::SeqCst);
    if !opened {
        return;
    }
    let mut next_cookie = (cpu + 1) << 40;
    let mut after = 0;
    while !gone.load(Ordering::SeqCst) || after <= 3 {
        let pick = |rng: &mut Rng| {
            let l = live.lock().unwrap();
            (!l.is_empty()).then(|| l[rng.below(l.len() as u64) as usize])
        };
        let (a0, ret) = match rng.below(13) {
            0..=2 => {
                next_cookie += 1;
                let pages = 1 + rng.below(8);
                let r = raw.register(next_cookie, pages);
                if r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS) {
                    live.lock().unwrap().push((next_cookie, pages));
                }
                r
            }
            3 => match pick(&mut rng) {
                Some((cookie, _)) => {
                    let r = raw.unregister(cookie);
                    if r.0 == OPTEE_SMC_RETURN_OK {
                        assert!(
                            [TEE_SUCCESS, TEE_ERROR_BUSY, TEE_ERROR_BAD_PARAMETERS].contains(&r.1),
                            "unregister: {:#x}",
                            r.1
                        );
                        if r.1 == TEE_ERROR_BUSY {
                            seen.busy_unregisters.fetch_add(1, Ordering::Relaxed);
                        }
                        live.lock().unwrap().retain(|(c, _)| *c != cookie);
                    }
                    r
                }
                None => continue,
            },
            4..=6 => match pick(&mut rng) {
                Some((cookie, pages)) => raw.invoke(
                    cmd::FILL,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT, cookie, 0, pages * PAGE),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, rng.next_u64(), 0, 0),
                    ],
                ),
                None => continue,
            },
            7 => match pick(&mut rng) {
                Some((cookie, pages)) => raw.invoke(
                    cmd::TOUCH,
                    &[
                        rmem(OPTEE_MSG_ATTR_TYPE_RMEM_INPUT, cookie, 0, pages * PAGE),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                ),
                None => continue,
            },
            8 | 9 => raw.invoke(
                cmd::RPC_BUFFER,
                &[
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 5000, 1, 3),
                    value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                ],
            ),
            // The user TA: FILL or CHECK a shared buffer in its own address space (another
            // CPU may fill or revoke it meanwhile), or call its peer.
            10 | 11 => match pick(&mut rng) {
                Some((cookie, pages)) => {
                    let (func, dir) = if rng.below(2) == 0 {
                        (ta_cmd::FILL, OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT)
                    } else {
                        (ta_cmd::CHECK, OPTEE_MSG_ATTR_TYPE_RMEM_INPUT)
                    };
                    let r = raw.invoke_user_ta(
                        func,
                        &[
                            rmem(dir, cookie, 0, pages * PAGE),
                            value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, rng.below(1 << 32), 0, 0),
                            value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                        ][..if func == ta_cmd::FILL { 2 } else { 3 }],
                    );
                    if r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS) {
                        seen.user_ta_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                }
                None => continue,
            },
            _ => {
                let r = raw.invoke_user_ta(
                    ta_cmd::CALL_PEER,
                    &[
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_INPUT, 7, 1 + rng.below(20_000), 0),
                        value(OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT, 0, 0, 0),
                    ],
                );
                if r == (OPTEE_SMC_RETURN_OK, TEE_SUCCESS) {
                    seen.user_ta_ok.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
        };
        // Every answer is one a correct core may give: a thread limit, the guest gone, or a
        // message result (a buffer unregistered by another CPU gives BAD_PARAMETERS; the RPC
        // buffer answered with "no memory" gives OUT_OF_MEMORY).
        match a0 {
            OPTEE_SMC_RETURN_OK => {
                if ret == TEE_SUCCESS {
                    seen.ok_ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            OPTEE_SMC_RETURN_ETHREAD_LIMIT => {}
            // An RPC left unanswered because the guest was destroyed meanwhile.
            a0 if is_rpc_return(a0) && gone.load(Ordering::SeqCst) => {}
            OPTEE_SMC_RETURN_ENOTAVAIL => {
                assert!(
                    gone.load(Ordering::SeqCst) || after > 0,
                    "refused while alive"
                );
                seen.refused_after_destroy.fetch_add(1, Ordering::Relaxed);
                after += 1;
            }
            other => panic!("cpu {cpu}: unexpected a0 {other:#x}"),
        }
    }
}

/// Table pages and mappings of a system with no guest: the root, and the console the core
/// mapped at boot (its tables and its one mapping). Measured on a fresh system of the same
/// configuration.
fn baseline(system: &System) -> (usize, usize) {
    let fresh = System::new(system.config).unwrap();
    let mut window = fresh.tee.window();
    window.shm_mut().compact_tables();
    (
        window.shm().table_stats().live,
        window.shm().mappings().count(),
    )
}

/// One round: guest 1 starts, four raw CPUs and the driver hammer it, a sixth CPU destroys it
/// mid-flight; then everything of it must be gone.
fn round(system: &Arc<System>, seed: u64, destroy_after_ops: u64) -> (u64, u64) {
    system.start_guest(GUEST).unwrap();
    let partition = system.tee.guest(GuestId(GUEST)).unwrap();
    let live = Mutex::new(Vec::new());
    let ready = AtomicU64::new(0);
    let gone = Arc::new(AtomicBool::new(false));
    let seen = Seen::default();
    std::thread::scope(|s| {
        for cpu in 0..RAW_CPUS {
            let (system, live, ready, gone, seen) =
                (system.clone(), &live, &ready, gone.clone(), &seen);
            s.spawn(move || raw_cpu(system, cpu, seed, live, ready, gone, seen));
        }
        // The driver, through the mediator, on a fifth CPU.
        let driver_system = system.clone();
        let gone_ref = &*gone;
        s.spawn(move || {
            let mut runner = Runner::new(driver_system);
            let mut rng = Rng::new(seed);
            for i in 0..200u64 {
                if gone_ref.load(Ordering::SeqCst) {
                    return;
                }
                let cookie = 0xd00 + i;
                runner.run(&Op::Register {
                    guest: GUEST,
                    cookie,
                    size: 1 + rng.below(20_000),
                    offset: rng.below(4096),
                });
                runner.run(&Op::Invoke {
                    guest: GUEST,
                    session: None,
                    cmd: cmd::COPY,
                    params: vec![
                        ParamSpec::Temp {
                            dir: Dir::In,
                            size: 1 + rng.below(9000),
                            offset: rng.below(4096),
                            seed: i,
                        },
                        ParamSpec::Temp {
                            dir: Dir::Out,
                            size: 9000,
                            offset: 0,
                            seed: 0,
                        },
                    ],
                });
                if i % 3 == 0 {
                    runner.run(&Op::Unregister {
                        guest: GUEST,
                        cookie,
                    });
                }
            }
        });
        // The destroyer: once every raw CPU has its session and some work is done.
        while ready.load(Ordering::SeqCst) < RAW_CPUS
            || seen.ok_ops.load(Ordering::Relaxed) < destroy_after_ops
        {
            std::thread::yield_now();
        }
        gone.store(true, Ordering::SeqCst);
        system.destroy_guest(GUEST).unwrap();
    });

    // Nothing of the guest is left anywhere.
    let found = system.check();
    assert!(found.is_empty(), "{found:#?}");
    assert!(system.tee.guest(GuestId(GUEST)).is_none());
    assert!(
        system
            .tee
            .thread_states()
            .iter()
            .all(|t| *t == ThreadState::Free),
        "{:?}",
        system.tee.thread_states()
    );
    {
        // What the core keeps of its own: the console's ioremap (its mapping, VA range and
        // tables) and nothing else.
        let (baseline_tables, io) = baseline(system);
        let mut window = system.tee.window();
        assert_eq!(window.mapped_objects(), 0, "no mapping");
        assert_eq!(window.shm().mappings().count(), io, "the console's only");
        assert_eq!(window.shm().va_window().live_count(), io, "no VA range");
        window.shm_mut().compact_tables();
        assert_eq!(
            window.shm().table_stats().live,
            baseline_tables,
            "no table page beyond the root and the console's"
        );
    }
    let ta = system.ta_ram();
    assert!(
        ta.all_free() && ta.instances == 0,
        "every TA instance of the guest is gone: {ta:?}"
    );
    let c = partition.counters();
    assert_eq!(
        (
            c.objects(),
            c.registered_pages(),
            c.mapped_pages(),
            c.threads(),
            c.sessions(),
            c.secure_bytes()
        ),
        (0, 0, 0, 0, 0, 0),
        "the destroyed guest's counters"
    );
    assert_eq!(system.machine.hyp_pages_in_use(), 0, "no shadow page");
    eprintln!(
        "round: {} successful messages ({} of the user TA), {} BUSY unregisters, {} calls refused after the destroy",
        seen.ok_ops.load(Ordering::Relaxed),
        seen.user_ta_ok.load(Ordering::Relaxed),
        seen.busy_unregisters.load(Ordering::Relaxed),
        seen.refused_after_destroy.load(Ordering::Relaxed)
    );
    (
        seen.busy_unregisters.load(Ordering::Relaxed),
        seen.refused_after_destroy.load(Ordering::Relaxed),
    )
}

#[test]
fn several_cpus_per_guest_then_destroy_in_flight_leave_nothing() {
    let system = Arc::new(
        System::new(SystemConfig {
            guests: 1,
            ..SystemConfig::default()
        })
        .unwrap(),
    );
    let (mut busy, mut refused) = (0, 0);
    for (round_no, destroy_after) in [20u64, 60, 150, 300, 450, 600, 800, 1000]
        .into_iter()
        .enumerate()
    {
        let (b, r) = round(&system, 0x5eed + round_no as u64, destroy_after);
        busy += b;
        refused += r;
        // A new guest with the same id finds nothing of the old one to resume.
        let guest = system.start_guest(GUEST).unwrap();
        for thread in 0..u64::from(system.config.core.threads) {
            let out = system.tee.handle_smc(
                SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &[0, 0, thread])
                    .from_client(GuestId(GUEST)),
            );
            assert_eq!(out.a0(), OPTEE_SMC_RETURN_ERESUME);
        }
        let snap = system.tee.guest(GuestId(GUEST)).unwrap().snapshot();
        assert_eq!((snap.objects, snap.registered_buffers), (0, 0));
        drop(guest);
        system.destroy_guest(GUEST).unwrap();
        assert!(system.check().is_empty());
    }
    assert!(
        refused > 0,
        "the guest was destroyed while calls were in flight"
    );
    // BUSY answers depend on timing (a few per run on two cores): reported, not required.
    eprintln!("busy unregisters: {busy}, calls refused after destroy: {refused}");
}
