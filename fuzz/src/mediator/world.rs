//! The fuzz world's steps: guests' SMCs, args, page lists and RPC answers through the
//! mediator, and the checks after each.

use super::*;

impl World {
    pub(super) fn new() -> Self {
        let phys = Arc::new(PhysMemory::new());
        let config = core_config();
        config
            .capacity()
            .expect("the firmware's configuration fits");
        let tee = Arc::new(
            Tee::new(
                config,
                sim_memory_map(),
                SimPlatform::new(phys.clone()),
                RecordingTlb::counting(),
            )
            .expect("the firmware's configuration boots"),
        );
        let pool = Pool {
            phys: phys.clone(),
            free: (0..POOL_PAGES)
                .rev()
                .map(|i| POOL_BASE + i * PAGE)
                .collect(),
            held: BTreeSet::new(),
        };
        let hyp_config = HypConfig {
            max_guests: MAX_GUESTS,
            limits: LIMITS,
            ..HypConfig::default()
        };
        let hyp = Mediator::new(Core { tee: tee.clone() }, pool, hyp_config)
            .expect("the budgets fit the pool");
        let baseline = window_baseline(&tee);
        Self {
            hyp,
            tee,
            phys,
            slots: (0..SLOTS)
                .map(|s| Slot {
                    next_cookie: 0x100 * (s as u64 + 1),
                    ..Slot::default()
                })
                .collect(),
            pending: Vec::new(),
            baseline,
        }
    }

    pub(super) fn live(&self, slot: usize) -> bool {
        self.hyp.stats(id(slot)).is_some()
    }

    /// A guest's SMC through the mediator (a7 full of garbage, which the mediator replaces).
    pub(super) fn smc(&mut self, slot: usize, regs: SmcRegs) -> SmcRegs {
        let mut regs = regs;
        regs.a[7] = 0xdead_0007;
        let out = self.hyp.handle_guest_smc(id(slot), regs);
        if std::env::var_os("TEESHM_FUZZ_TRACE").is_some() {
            eprintln!("guest {} {:x?}\n -> {:x?}", slot + 1, regs.a, out.a);
        }
        if !is_fast_call(regs.a0()) {
            assert!(
                valid_yielding_answer(&out),
                "the mediator answered guest {} {:x?}",
                slot + 1,
                out.a
            );
        }
        out
    }

    pub(super) fn write(&self, slot: usize, ipa: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = ipa.wrapping_add(done as u64);
            let n = ((PAGE - at % PAGE) as usize).min(data.len() - done);
            if let Some(pa) = self.hyp.translate_ipa(id(slot), at) {
                self.phys.write(pa, &data[done..done + n]);
            }
            done += n;
        }
    }

    pub(super) fn read(&self, slot: usize, ipa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let at = ipa.wrapping_add(done as u64);
            let n = ((PAGE - at % PAGE) as usize).min(len - done);
            if let Some(pa) = self.hyp.translate_ipa(id(slot), at) {
                self.phys.read(pa, &mut out[done..done + n]);
            }
            done += n;
        }
        out
    }

    /// Addresses a program picks from: the guest's own pages (with and without an offset),
    /// another guest's, just outside its RAM, edges, anything.
    pub(super) fn address(&self, slot: usize, input: &mut Input) -> u64 {
        match input.u8() % 10 {
            0..=4 => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
            5 => {
                base(slot)
                    + u64::from(input.u8()) % GUEST_PAGES * PAGE
                    + u64::from(input.u16() % 4096)
            }
            6 => base((slot + 1 + usize::from(input.u8())) % SLOTS) + u64::from(input.u8()) * PAGE,
            7 => input.pick(&[
                base(slot) - PAGE,
                base(slot) + GUEST_PAGES * PAGE,
                base(slot) + GUEST_PAGES * PAGE - 8,
                0,
                u64::MAX,
                !(PAGE - 1),
                guest_pa(slot, 0),
                POOL_BASE,
            ]),
            8 => u64::from(input.u16()),
            _ => input.u64(),
        }
    }

    pub(super) fn cookie(&mut self, slot: usize, input: &mut Input) -> u64 {
        let s = &self.slots[slot];
        match input.u8() % 6 {
            0..=2 if !s.cookies.is_empty() => s.cookies[usize::from(input.u8()) % s.cookies.len()],
            3 => u64::from(input.u8() % 8),
            4 => input.u64(),
            _ => {
                let s = &mut self.slots[slot];
                s.next_cookie += 1;
                s.next_cookie
            }
        }
    }

    /// Writes a NONCONTIG page list at own page `list` (offset `offset`) naming `n` pages;
    /// returns `buf_ptr` (an IPA).
    pub(super) fn write_list(&self, slot: usize, input: &mut Input, list: u64, n: usize) -> u64 {
        let mut entries = vec![0u64; 512];
        for e in entries.iter_mut().take(n.min(511)) {
            *e = match input.u8() % 8 {
                0 => self.address(slot, input),
                _ => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
            };
        }
        entries[511] = match input.u8() % 4 {
            0 => self.address(slot, input),
            _ => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE,
        };
        let list_ipa = base(slot) + list % GUEST_PAGES * PAGE;
        self.write(slot, list_ipa, entries.as_bytes());
        list_ipa | u64::from(input.u16() % 4096)
    }

    /// Builds an arg from the input in guest page `page` at `offset`; returns its IPA.
    pub(super) fn write_arg(&mut self, slot: usize, input: &mut Input) -> u64 {
        let page = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
        let offset = match input.u8() % 4 {
            0 => u64::from(input.u16() % 4096),
            _ => u64::from(input.u8() % 32) * 8,
        };
        let cmd = match input.u8() % 16 {
            0..=2 => OPTEE_MSG_CMD_REGISTER_SHM,
            3..=4 => OPTEE_MSG_CMD_UNREGISTER_SHM,
            5..=9 => OPTEE_MSG_CMD_INVOKE_COMMAND,
            10..=11 => OPTEE_MSG_CMD_OPEN_SESSION,
            12 => OPTEE_MSG_CMD_CLOSE_SESSION,
            13 => OPTEE_MSG_CMD_CANCEL,
            14 => u32::from(input.u8()),
            _ => input.u32(),
        };
        let mut h = MsgArgHeader::default();
        h.cmd.set(cmd);
        h.func.set(u32::from(input.u8() % 7));
        let sessions = &self.slots[slot].sessions;
        h.session
            .set(if sessions.is_empty() || input.u8() % 4 == 0 {
                u32::from(input.u8() % 4)
            } else {
                sessions[usize::from(input.u8()) % sessions.len()]
            });
        let n = match input.u8() % 16 {
            15 => input.u32(),
            k => u32::from(k % 5),
        };
        h.num_params.set(n);
        let mut params = Vec::new();
        if cmd == OPTEE_MSG_CMD_OPEN_SESSION && input.u8() % 4 != 0 {
            let meta = OPTEE_MSG_ATTR_TYPE_VALUE_INPUT | OPTEE_MSG_ATTR_META;
            let lo = u64::from_le_bytes(MEMTEST_UUID[..8].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(MEMTEST_UUID[8..].try_into().expect("8 bytes"));
            params.push(MsgParam::from_value(meta, Value::new(lo, hi, 0)));
            params.push(MsgParam::from_value(meta, Value::new(0, 0, 0)));
        }
        while params.len() < n.min(6) as usize {
            params.push(self.param(slot, cmd, params.len(), input));
        }
        let mut bytes = h.as_bytes().to_vec();
        for p in &params {
            bytes.extend_from_slice(p.as_bytes());
        }
        let ipa = page + offset;
        let room = (PAGE - offset) as usize;
        self.write(slot, ipa, &bytes[..bytes.len().min(room)]);
        ipa
    }

    pub(super) fn param(
        &mut self,
        slot: usize,
        cmd: u32,
        index: usize,
        input: &mut Input,
    ) -> MsgParam {
        const TMEM: [u64; 3] = [
            OPTEE_MSG_ATTR_TYPE_TMEM_INPUT,
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
            OPTEE_MSG_ATTR_TYPE_TMEM_INOUT,
        ];
        const RMEM: [u64; 3] = [
            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_OUTPUT,
            OPTEE_MSG_ATTR_TYPE_RMEM_INOUT,
        ];
        let kind = match (cmd, index) {
            (OPTEE_MSG_CMD_REGISTER_SHM, 0) if input.u8() % 4 != 0 => 0,
            (OPTEE_MSG_CMD_UNREGISTER_SHM, 0) if input.u8() % 4 != 0 => 1,
            _ => input.u8() % 6,
        };
        match kind {
            0 => {
                // A NONCONTIG list, mostly of own pages.
                let n = usize::from(input.u8() % 40) + 1;
                let list = u64::from(input.u8());
                let buf_ptr = self.write_list(slot, input, list, n);
                let size = match input.u8() % 4 {
                    0 => input.u64(),
                    _ => (n as u64 * PAGE)
                        .saturating_sub(buf_ptr % PAGE + u64::from(input.u16() % 4096)),
                };
                let ty = if cmd == OPTEE_MSG_CMD_REGISTER_SHM {
                    OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT
                } else {
                    input.pick(&TMEM)
                };
                let cookie = self.cookie(slot, input);
                MsgParam::from_tmem(
                    ty | OPTEE_MSG_ATTR_NONCONTIG,
                    Tmem::new(buf_ptr, size, cookie),
                )
            }
            1 => {
                let ty = if cmd == OPTEE_MSG_CMD_UNREGISTER_SHM {
                    OPTEE_MSG_ATTR_TYPE_RMEM_INPUT
                } else {
                    input.pick(&RMEM)
                };
                let cookie = self.cookie(slot, input);
                let offs = u64::from(input.u16() % 8192);
                let size = u64::from(input.u16() % 20_000);
                MsgParam::from_rmem(ty, Rmem::new(offs, size, cookie))
            }
            2 => {
                // A contiguous tmem: NULL (mediated) or an address (refused).
                let ptr = if input.u8() % 2 == 0 {
                    0
                } else {
                    self.address(slot, input)
                };
                MsgParam::from_tmem(input.pick(&TMEM), Tmem::new(ptr, u64::from(input.u16()), 0))
            }
            3 => MsgParam::from_value(
                input.u64() % 0x100,
                Value::new(input.u64(), input.u64(), input.u64()),
            ),
            _ => MsgParam::from_value(
                input.pick(&[
                    OPTEE_MSG_ATTR_TYPE_VALUE_INPUT,
                    OPTEE_MSG_ATTR_TYPE_VALUE_OUTPUT,
                    OPTEE_MSG_ATTR_TYPE_VALUE_INOUT,
                ]),
                Value::new(
                    match input.u8() % 3 {
                        0 => u64::from(input.u16()),
                        1 => u64::from(input.u8() % 4) * PAGE + u64::from(input.u8()),
                        _ => input.u64(),
                    },
                    u64::from(input.u8() % 4),
                    u64::from(input.u8()),
                ),
            ),
        }
    }

    /// Reads back the arg of a finished call and learns sessions and cookies from it.
    pub(super) fn learn(&mut self, slot: usize, ipa: u64) {
        let bytes = self.read(slot, ipa, 64);
        let Ok((h, rest)) = MsgArgHeader::read_from_prefix(&bytes) else {
            return;
        };
        trace(format_args!(
            "guest {} message {:#x}: ret {:#x} origin {}",
            slot + 1,
            h.cmd.get(),
            h.ret.get(),
            h.ret_origin.get()
        ));
        if h.ret.get() != TEE_SUCCESS {
            return;
        }
        let s = &mut self.slots[slot];
        match h.cmd.get() {
            OPTEE_MSG_CMD_OPEN_SESSION if s.sessions.len() < 8 => s.sessions.push(h.session.get()),
            OPTEE_MSG_CMD_REGISTER_SHM => {
                if let Ok((p, _)) = MsgParam::read_from_prefix(rest) {
                    if s.cookies.len() < 16 {
                        s.cookies.push(p.tmem().shm_ref.get());
                    }
                }
            }
            _ => {}
        }
    }

    /// Remembers or forgets a call by what the mediator answered the guest.
    pub(super) fn track(&mut self, slot: usize, out: SmcRegs) {
        if is_rpc_return(out.a0()) {
            self.pending
                .retain(|(s, o)| !(*s == slot && o.a[3] == out.a[3]));
            self.pending.push((slot, out));
        }
    }

    /// The guest's answer to the RPC `out`: well-behaved (`good`) or hostile.
    pub(super) fn answer(
        &mut self,
        slot: usize,
        out: &SmcRegs,
        good: bool,
        input: &mut Input,
    ) -> SmcRegs {
        let thread = out.a[3];
        let pair = |hi: u64, lo: u64| ((hi & 0xffff_ffff) << 32) | (lo & 0xffff_ffff);
        let resume = |a: [u64; 5]| SmcRegs::call(OPTEE_SMC_CALL_RETURN_FROM_RPC, &a);
        match out.a0() {
            OPTEE_SMC_RETURN_RPC_ALLOC => {
                let ipa = if good {
                    // A page of its own (from the upper half, away from most args).
                    base(slot) + (32 + u64::from(input.u8()) % 28) * PAGE
                } else {
                    match input.u8() % 3 {
                        0 => base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE + PAGE - 64,
                        _ => self.address(slot, input),
                    }
                };
                let cookie = if good || input.u8() % 2 == 0 {
                    let s = &mut self.slots[slot];
                    s.next_cookie += 1;
                    s.next_cookie
                } else {
                    self.cookie(slot, input)
                };
                self.slots[slot].rpc_args.insert(cookie, ipa);
                resume([
                    ipa >> 32,
                    ipa & 0xffff_ffff,
                    thread,
                    cookie >> 32,
                    cookie & 0xffff_ffff,
                ])
            }
            OPTEE_SMC_RETURN_RPC_FREE => {
                self.slots[slot].rpc_args.remove(&pair(out.a[1], out.a[2]));
                resume([0, 0, thread, 0, 0])
            }
            OPTEE_SMC_RETURN_RPC_CMD => {
                let cookie = pair(out.a[1], out.a[2]);
                if let Some(&at) = self.slots[slot].rpc_args.get(&cookie) {
                    if good {
                        self.serve_cmd(slot, at, input);
                    } else {
                        let n = usize::from(input.u8() % 200);
                        let bytes = input.bytes(n);
                        let at = at.wrapping_add(u64::from(input.u8() % 64));
                        self.write(slot, at, &bytes);
                    }
                }
                resume([0, 0, thread, 0, 0])
            }
            _ => resume([0, 0, thread, 0, 0]),
        }
    }

    /// Serves the RPC command in the guest's RPC arg at `at`: SHM_ALLOC with a page list (or a
    /// contiguous range), SHM_FREE.
    pub(super) fn serve_cmd(&mut self, slot: usize, at: u64, input: &mut Input) {
        let mut raw = self.read(slot, at, 64);
        let Ok((hdr, rest)) = MsgArgHeader::mut_from_prefix(&mut raw[..]) else {
            return;
        };
        let Ok((param, _)) = MsgParam::mut_from_prefix(rest) else {
            return;
        };
        match hdr.cmd.get() {
            OPTEE_RPC_CMD_SHM_ALLOC => {
                let size = param.value().b.get();
                let pages = size.div_ceil(PAGE);
                if size == 0 || pages > 40 {
                    hdr.ret.set(TEE_ERROR_OUT_OF_MEMORY);
                } else if input.u8() % 4 == 0 {
                    // A contiguous range of its RAM.
                    let first = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
                    let cookie = self.cookie(slot, input);
                    *param = MsgParam::from_tmem(
                        OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT,
                        Tmem::new(first, size, cookie),
                    );
                    hdr.ret.set(TEE_SUCCESS);
                } else {
                    let data: Vec<u64> = (0..pages)
                        .map(|_| base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE)
                        .collect();
                    let list = base(slot) + u64::from(input.u8()) % GUEST_PAGES * PAGE;
                    let mut writes = Vec::new();
                    let encoded =
                        page_list::encode_with::<()>(&data, 0, size, &[list], |ipa, b| {
                            writes.push((ipa, b.to_vec()));
                            Ok(())
                        });
                    for (ipa, b) in writes {
                        self.write(slot, ipa, &b);
                    }
                    let cookie = self.cookie(slot, input);
                    match encoded {
                        Ok(buf_ptr) => {
                            *param = MsgParam::from_tmem(
                                OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
                                Tmem::new(buf_ptr, size, cookie),
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
        self.write(slot, at, &raw);
    }

    /// A guest holding nothing in the mediator registers and unregisters one page: its shares
    /// are reserved, so this must succeed whatever the other guests hold.
    pub(super) fn probe(&mut self, slot: usize) {
        trace(format_args!("guest {} probe", slot + 1));
        let data = base(slot) + PROBE_PAGES * PAGE;
        let list = data + PAGE;
        let arg = list + PAGE;
        let mut entries = vec![0u64; 512];
        entries[0] = data;
        self.write(slot, list, entries.as_bytes());
        let run = |w: &mut World, cmd: u32, p: MsgParam, what: &str| {
            let mut h = MsgArgHeader::default();
            h.cmd.set(cmd);
            h.num_params.set(1);
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(p.as_bytes());
            w.write(slot, arg, &bytes);
            let out = w.smc(
                slot,
                SmcRegs::call(OPTEE_SMC_CALL_WITH_ARG, &[arg >> 32, arg & 0xffff_ffff]),
            );
            let back = w.read(slot, arg, 32);
            let (r, _) = MsgArgHeader::read_from_prefix(&back).expect("32 bytes");
            assert_eq!(
                (out.a0(), r.ret.get()),
                (OPTEE_SMC_RETURN_OK, TEE_SUCCESS),
                "guest {} holds nothing in the mediator, yet its {what} failed; mediator: \
                 {:?}, core: {:?}",
                slot + 1,
                w.hyp.stats(id(slot)),
                w.tee.guest(id(slot)).map(|g| g.snapshot())
            );
        };
        let register = MsgParam::from_tmem(
            OPTEE_MSG_ATTR_TYPE_TMEM_OUTPUT | OPTEE_MSG_ATTR_NONCONTIG,
            Tmem::new(list, PAGE, PROBE_COOKIE),
        );
        run(self, OPTEE_MSG_CMD_REGISTER_SHM, register, "registration");
        let unregister = MsgParam::from_rmem(
            OPTEE_MSG_ATTR_TYPE_RMEM_INPUT,
            Rmem::new(0, 0, PROBE_COOKIE),
        );
        run(
            self,
            OPTEE_MSG_CMD_UNREGISTER_SHM,
            unregister,
            "unregistration",
        );
    }

    /// The core's whole agreement checker (a walk of the whole window).
    pub(super) fn check_core(&self) {
        let found = self.tee.check_agreement();
        assert!(
            found.is_empty(),
            "the core disagrees with itself: {found:#?}"
        );
    }

    /// What must hold after every step and costs little next to the step.
    pub(super) fn check(&self) {
        let found = self.hyp.check_agreement();
        assert!(
            found.is_empty(),
            "the mediator disagrees with itself: {found:#?}"
        );
        let held = self.hyp.memory().held.len() as u64;
        assert_eq!(
            held,
            self.hyp.shadow_pages(),
            "pool pages held vs accounted"
        );
        for slot in 0..SLOTS {
            assert_eq!(
                self.live(slot),
                self.tee.guest(id(slot)).is_some(),
                "the mediator and the core disagree on guest {}",
                slot + 1
            );
        }
    }

    /// Destroys every guest and checks that nothing is left anywhere.
    pub(super) fn end(self) {
        for slot in 0..SLOTS {
            if self.live(slot) {
                self.hyp.destroy_guest(id(slot)).expect("a live guest");
            }
        }
        self.check();
        self.check_core();
        assert!(self.hyp.memory().held.is_empty(), "shadow pages left");
        assert!(self.tee.guests().is_empty(), "a guest survived in the core");
        assert!(
            self.tee
                .thread_states()
                .iter()
                .all(|t| *t == ThreadState::Free),
            "a thread still serves a destroyed guest"
        );
        assert_eq!(
            window_baseline(&self.tee),
            self.baseline,
            "something of a destroyed guest is left in the window"
        );
    }
}
