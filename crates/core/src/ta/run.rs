//! Running a TA: one entry (open session, invoke command, close session) with its parameters
//! mapped for it, and every trap it makes until it returns: system calls (OP-TEE's numbers and
//! argument layout), faults on parameter pages (mapped then), and its death.

use super::instance::{Death, PageSource, TaInstance};
use crate::entry::Tee;
use crate::error::TeeError;
use crate::platform::{
    Platform, TrapAction, UserAccess, UserRegs, UserRoot, UserTrap, UserTrapHandler,
};
use alloc::sync::Arc;
use alloc::vec::Vec;
use teeshm_abi::gp;
use teeshm_abi::utee::{self, UteeParams, layout};
use teeshm_mm::{PAGE_SIZE, VirtAddr};
use zerocopy::{FromBytes, IntoBytes};

/// Deepest chain of TAs invoking TAs (the client's call is depth 1).
pub const MAX_DEPTH: usize = 4;

/// Longest message of `TEE_SCN_LOG` the core keeps (the rest is cut).
pub const MAX_LOG: u64 = 256;

/// Where the core writes an entry's `utee_params`: just below the top of the TA's stack, the
/// stack pointer then below it, as OP-TEE's `thread_enter_user_mode` leaves it.
const PARAMS_AT: u64 = layout::STACK_TOP - 0x60;

/// One parameter of an entry, in the TA's terms.
#[derive(Debug)]
pub(crate) enum TaParam {
    /// `TEE_PARAM_TYPE_NONE`.
    None,
    /// A value: its `TEE_PARAM_TYPE_VALUE_*` type and `a`, `b`.
    Value {
        /// The type.
        ty: u32,
        /// `a`.
        a: u64,
        /// `b`.
        b: u64,
    },
    /// A memref: its `TEE_PARAM_TYPE_MEMREF_*` type, the pages behind it (none: a NULL
    /// memref), and its size (for outputs, the size the TA wrote back).
    Memref {
        /// The type.
        ty: u32,
        /// The pages and the offset of the first byte in the first page.
        source: Option<(PageSource, u64, u64)>,
        /// Size in bytes.
        size: u64,
    },
}

impl TaParam {
    fn ty(&self) -> u32 {
        match self {
            TaParam::None => utee::TEE_PARAM_TYPE_NONE,
            TaParam::Value { ty, .. } | TaParam::Memref { ty, .. } => *ty,
        }
    }
}

/// Which entry function of a TA to run, for which session, with which command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `UTEE_ENTRY_FUNC_*`.
    pub func: u64,
    /// The session's id (as its opener knows it).
    pub session: u32,
    /// The command (invocations only).
    pub cmd: u32,
}

/// How an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Returned(u32),
    Died(Death),
}

/// Runs `entry` of `instance` with `params` and returns the TA's result; the
/// outputs are written back into `params`. `back_to` is the address space to make current
/// again afterwards (the calling TA's; `None` for the normal world's calls).
///
/// # Errors
/// [`TeeError::TargetDead`] if the TA dies (then and for ever), [`TeeError::TaBusy`] if it runs
/// another call, parameter errors.
pub(crate) fn run_entry<P: Platform>(
    tee: &Tee<P>,
    instance: &Arc<TaInstance>,
    entry: Entry,
    params: &mut [TaParam],
    depth: usize,
    back_to: Option<UserRoot>,
) -> Result<u32, TeeError> {
    let claim = instance.claim()?;
    let result = run_claimed(tee, instance, entry, params, depth);
    drop(claim);
    tee.platform.activate_user(back_to);
    result
}

fn run_claimed<P: Platform>(
    tee: &Tee<P>,
    instance: &Arc<TaInstance>,
    entry: Entry,
    params: &mut [TaParam],
    depth: usize,
) -> Result<u32, TeeError> {
    let mut up = UteeParams::default();
    let mut types = 0u64;
    for (i, p) in params.iter_mut().enumerate().take(4) {
        types |= u64::from(p.ty()) << (4 * i);
        match p {
            TaParam::None => {}
            TaParam::Value { a, b, .. } => up.set_pair(i, *a, *b),
            TaParam::Memref { ty, source, size } => {
                let va = match source.take() {
                    None => 0,
                    Some((source, offset, pages)) => {
                        let writable = *ty != utee::TEE_PARAM_TYPE_MEMREF_INPUT;
                        instance.add_span(pages, writable, source)? + offset
                    }
                };
                up.set_pair(i, va, *size);
            }
        }
    }
    up.types.set(types);
    let root = instance.root();
    tee.platform.activate_user(Some(root));
    tee.platform
        .write(&**instance, VirtAddr(PARAMS_AT), up.as_bytes())?;
    let mut regs = UserRegs::default();
    regs.x[0] = entry.func;
    regs.x[1] = u64::from(entry.session);
    regs.x[2] = PARAMS_AT;
    regs.x[3] = u64::from(entry.cmd);
    regs.sp = PARAMS_AT & !0xf;
    regs.pc = instance.image().entry;
    let mut handler = Handler {
        tee,
        instance,
        depth,
        exit: None,
    };
    tee.platform
        .enter_user(root, &**instance, &mut regs, &mut handler);
    match handler.exit {
        Some(Exit::Returned(code)) => {
            tee.platform.activate_user(Some(root));
            let mut bytes = [0u8; utee::UTEE_PARAMS_SIZE];
            tee.platform
                .read(&**instance, VirtAddr(PARAMS_AT), &mut bytes)?;
            let out = UteeParams::read_from_bytes(&bytes).map_err(|_| TeeError::OutOfMemory)?;
            for (i, p) in params.iter_mut().enumerate() {
                let (a, b) = out.pair(i);
                match p {
                    TaParam::Value { ty, a: pa, b: pb }
                        if *ty != utee::TEE_PARAM_TYPE_VALUE_INPUT =>
                    {
                        *pa = a;
                        *pb = b;
                    }
                    TaParam::Memref { ty, size, .. }
                        if *ty != utee::TEE_PARAM_TYPE_MEMREF_INPUT =>
                    {
                        *size = b;
                    }
                    _ => {}
                }
            }
            Ok(code)
        }
        Some(Exit::Died(how)) => {
            instance.die(how);
            Err(TeeError::TargetDead)
        }
        None => {
            instance.die(Death::Exception { esr: 0 });
            Err(TeeError::TargetDead)
        }
    }
}

/// The core's side of one entry of a TA.
struct Handler<'a, P: Platform> {
    tee: &'a Tee<P>,
    instance: &'a Arc<TaInstance>,
    depth: usize,
    exit: Option<Exit>,
}

impl<P: Platform> UserTrapHandler for Handler<'_, P> {
    fn trap(&mut self, regs: &mut UserRegs, trap: UserTrap) -> TrapAction {
        match trap {
            UserTrap::Syscall => self.syscall(regs),
            UserTrap::Abort { far, access } => {
                let resolved = access != UserAccess::Execute
                    && self.instance.fault_in(far, access == UserAccess::Write);
                if resolved {
                    TrapAction::Resume
                } else {
                    self.exit = Some(Exit::Died(Death::Fault { far }));
                    TrapAction::Exit
                }
            }
            UserTrap::Other { esr } => {
                self.exit = Some(Exit::Died(Death::Exception { esr }));
                TrapAction::Exit
            }
        }
    }
}

/// A system call's answer in `x0`.
type Answer = Result<u32, u32>;

impl<P: Platform> Handler<'_, P> {
    fn syscall(&mut self, regs: &mut UserRegs) -> TrapAction {
        let [a0, a1, a2, a3, a4, ..] = [
            regs.x[0], regs.x[1], regs.x[2], regs.x[3], regs.x[4], regs.x[5], regs.x[6], regs.x[7],
        ];
        let answer: Answer = match regs.x[8] {
            utee::TEE_SCN_RETURN => {
                self.exit = Some(Exit::Returned(a0 as u32));
                return TrapAction::Exit;
            }
            utee::TEE_SCN_PANIC => {
                self.exit = Some(Exit::Died(Death::Panic { code: a0 }));
                return TrapAction::Exit;
            }
            utee::TEE_SCN_LOG => self.log(a0, a1),
            utee::TEE_SCN_OPEN_TA_SESSION => self.open_session(a0, a2, a3, a4),
            utee::TEE_SCN_INVOKE_TA_COMMAND => self.invoke(a0, a2, a3, a4),
            utee::TEE_SCN_CLOSE_TA_SESSION => self.close_session(a0),
            utee::TEE_SCN_CHECK_ACCESS_RIGHTS => {
                let flags = a0 as u32;
                let write = flags & utee::TEE_MEMORY_ACCESS_WRITE != 0;
                let own_only = flags & utee::TEE_MEMORY_ACCESS_ANY_OWNER == 0;
                if self.instance.check_access(a1, a2, write, own_only) {
                    Ok(gp::TEE_SUCCESS)
                } else {
                    Err(gp::TEE_ERROR_ACCESS_DENIED)
                }
            }
            _ => Err(gp::TEE_ERROR_NOT_SUPPORTED),
        };
        regs.x[0] = u64::from(answer.unwrap_or_else(|e| e));
        TrapAction::Resume
    }

    /// Makes `va..va + len` reachable for a copy: every page the TA's own (writable, for
    /// `write`), parameter pages mapped on the way, and the TA's space current on this CPU.
    fn reach(&self, va: u64, len: usize, write: bool) -> Result<(), u32> {
        if !self.instance.check_access(va, len as u64, write, false) {
            return Err(gp::TEE_ERROR_ACCESS_DENIED);
        }
        self.tee.platform.activate_user(Some(self.instance.root()));
        Ok(())
    }

    /// Reads the TA's memory at `va` (the copy goes through the TA's mapping, which
    /// [`reach`](Self::reach) just proved).
    fn read_user(&self, va: u64, buf: &mut [u8]) -> Result<(), u32> {
        self.reach(va, buf.len(), false)?;
        let read = self.tee.platform.read(&**self.instance, VirtAddr(va), buf);
        read.map_err(|_| gp::TEE_ERROR_ACCESS_DENIED)
    }

    /// Writes into the TA's memory at `va`.
    fn write_user(&self, va: u64, data: &[u8]) -> Result<(), u32> {
        self.reach(va, data.len(), true)?;
        let written = self
            .tee
            .platform
            .write(&**self.instance, VirtAddr(va), data);
        written.map_err(|_| gp::TEE_ERROR_ACCESS_DENIED)
    }

    fn log(&self, va: u64, len: u64) -> Answer {
        let mut buf = [0u8; MAX_LOG as usize];
        let n = len.min(MAX_LOG) as usize;
        let msg = buf.get_mut(..n).ok_or(gp::TEE_ERROR_BAD_PARAMETERS)?;
        self.read_user(va, msg)?;
        let text = core::str::from_utf8(msg).unwrap_or("(not UTF-8)");
        self.tee.platform.ta_log(self.instance.image().name, text);
        Ok(gp::TEE_SUCCESS)
    }

    /// The parameters a TA gives another TA: its `utee_params` at `at`, each memref resolved
    /// to the pages under it in the caller's space.
    fn params_from_user(&self, at: u64) -> Result<(UteeParams, Vec<TaParam>), u32> {
        let mut bytes = [0u8; utee::UTEE_PARAMS_SIZE];
        self.read_user(at, &mut bytes)?;
        let up = UteeParams::read_from_bytes(&bytes).map_err(|_| gp::TEE_ERROR_BAD_PARAMETERS)?;
        let mut params = Vec::new();
        for i in 0..4 {
            let ty = up.param_type(i);
            let (a, b) = up.pair(i);
            let p = match ty {
                utee::TEE_PARAM_TYPE_NONE => TaParam::None,
                utee::TEE_PARAM_TYPE_VALUE_INPUT
                | utee::TEE_PARAM_TYPE_VALUE_OUTPUT
                | utee::TEE_PARAM_TYPE_VALUE_INOUT => TaParam::Value { ty, a, b },
                utee::TEE_PARAM_TYPE_MEMREF_INPUT
                | utee::TEE_PARAM_TYPE_MEMREF_OUTPUT
                | utee::TEE_PARAM_TYPE_MEMREF_INOUT => {
                    let source = if a == 0 || b == 0 {
                        None
                    } else {
                        let write = ty != utee::TEE_PARAM_TYPE_MEMREF_INPUT;
                        let (pages, secure) = self
                            .instance
                            .pages_of(a, b, write)
                            .map_err(|_| gp::TEE_ERROR_ACCESS_DENIED)?;
                        let count = pages.len() as u64;
                        Some((PageSource::Pages { pages, secure }, a % PAGE_SIZE, count))
                    };
                    TaParam::Memref {
                        ty,
                        source,
                        size: b,
                    }
                }
                _ => return Err(gp::TEE_ERROR_BAD_PARAMETERS),
            };
            params.push(p);
        }
        Ok((up, params))
    }

    /// Writes the callee's outputs back into the caller's `utee_params` at `at`.
    fn params_to_user(&self, at: u64, mut up: UteeParams, params: &[TaParam]) -> Result<(), u32> {
        for (i, p) in params.iter().enumerate() {
            match p {
                TaParam::Value { a, b, .. } => up.set_pair(i, *a, *b),
                TaParam::Memref { size, .. } => {
                    let (va, _) = up.pair(i);
                    up.set_pair(i, va, *size);
                }
                TaParam::None => {}
            }
        }
        self.write_user(at, up.as_bytes())
    }

    fn write_u32(&self, va: u64, value: u32) -> Result<(), u32> {
        if va == 0 {
            return Ok(());
        }
        self.write_user(va, &value.to_le_bytes())
    }

    /// Runs the callee's entry and turns its end into a result and an origin.
    fn call(&self, callee: &Arc<TaInstance>, entry: Entry, params: &mut [TaParam]) -> (u32, u32) {
        let back = Some(self.instance.root());
        match run_entry(self.tee, callee, entry, params, self.depth + 1, back) {
            Ok(code) => (code, gp::TEE_ORIGIN_TRUSTED_APP),
            Err(e) => (e.code(), gp::TEE_ORIGIN_TEE),
        }
    }

    fn open_session(
        &mut self,
        uuid_at: u64,
        params_at: u64,
        session_at: u64,
        origin_at: u64,
    ) -> Answer {
        let mut raw = [0u8; utee::TEE_UUID_SIZE];
        self.read_user(uuid_at, &mut raw)?;
        let uuid = utee::tee_uuid_to_octets(raw);
        let (up, mut params) = self.params_from_user(params_at)?;
        if self.depth >= MAX_DEPTH {
            self.write_u32(origin_at, gp::TEE_ORIGIN_TEE)?;
            return Err(gp::TEE_ERROR_BUSY);
        }
        let callee = match self.tee.new_ta_instance(
            uuid,
            self.instance.owner(),
            self.instance.counters().clone(),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.write_u32(origin_at, gp::TEE_ORIGIN_TEE)?;
                return Err(e.code());
            }
        };
        let id = {
            let mut space = self.instance.space.lock();
            let mut id = space.next_session;
            while id == 0 || space.sessions.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            space.next_session = id.wrapping_add(1);
            id
        };
        let entry = Entry {
            func: utee::UTEE_ENTRY_FUNC_OPEN_SESSION,
            session: id,
            cmd: 0,
        };
        let (code, origin) = self.call(&callee, entry, &mut params);
        self.write_u32(origin_at, origin)?;
        if code != gp::TEE_SUCCESS {
            return Err(code);
        }
        self.params_to_user(params_at, up, &params)?;
        self.write_u32(session_at, id)?;
        self.instance.space.lock().sessions.insert(id, callee);
        Ok(gp::TEE_SUCCESS)
    }

    fn invoke(&mut self, session: u64, cmd: u64, params_at: u64, origin_at: u64) -> Answer {
        let id = u32::try_from(session).map_err(|_| gp::TEE_ERROR_BAD_PARAMETERS)?;
        let callee = self
            .instance
            .space
            .lock()
            .sessions
            .get(&id)
            .cloned()
            .ok_or(gp::TEE_ERROR_BAD_PARAMETERS)?;
        let (up, mut params) = self.params_from_user(params_at)?;
        let entry = Entry {
            func: utee::UTEE_ENTRY_FUNC_INVOKE_COMMAND,
            session: id,
            cmd: cmd as u32,
        };
        let (code, origin) = self.call(&callee, entry, &mut params);
        self.write_u32(origin_at, origin)?;
        if code == gp::TEE_SUCCESS || code == gp::TEE_ERROR_SHORT_BUFFER {
            self.params_to_user(params_at, up, &params)?;
        }
        if code == gp::TEE_SUCCESS {
            Ok(code)
        } else {
            Err(code)
        }
    }

    fn close_session(&mut self, session: u64) -> Answer {
        let id = u32::try_from(session).map_err(|_| gp::TEE_ERROR_BAD_PARAMETERS)?;
        let callee = self
            .instance
            .space
            .lock()
            .sessions
            .remove(&id)
            .ok_or(gp::TEE_ERROR_BAD_PARAMETERS)?;
        if callee.death().is_none() {
            let entry = Entry {
                func: utee::UTEE_ENTRY_FUNC_CLOSE_SESSION,
                session: id,
                cmd: 0,
            };
            let _ = self.call(&callee, entry, &mut []);
        }
        Ok(gp::TEE_SUCCESS)
    }
}
