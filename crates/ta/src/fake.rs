//! A fake core and machine for the TAs' unit tests: page frames in a map, one page table per
//! instance, and the system calls served as the core serves them (memrefs mapped into the
//! callee's parameter region for one call, with a guard page after each; a TA that faults or
//! panics is dead and its caller gets `TEE_ERROR_TARGET_DEAD`).

use crate::env::{Stop, UserEnv};
use crate::libutee::{params_from_bytes, params_to_bytes};
use crate::{Program, find};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use teeshm_abi::gp::{
    TEE_ERROR_ACCESS_DENIED, TEE_ERROR_BAD_PARAMETERS, TEE_ERROR_ITEM_NOT_FOUND,
    TEE_ERROR_NOT_SUPPORTED, TEE_ERROR_TARGET_DEAD, TEE_ORIGIN_TEE, TEE_ORIGIN_TRUSTED_APP,
    TEE_SUCCESS,
};
use teeshm_abi::utee::{
    TEE_MEMORY_ACCESS_ANY_OWNER, TEE_MEMORY_ACCESS_WRITE, TEE_PARAM_TYPE_MEMREF_INOUT,
    TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPE_VALUE_INPUT, TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_SCN_CHECK_ACCESS_RIGHTS,
    TEE_SCN_CLOSE_TA_SESSION, TEE_SCN_INVOKE_TA_COMMAND, TEE_SCN_LOG, TEE_SCN_OPEN_TA_SESSION,
    TEE_SCN_PANIC, TEE_SCN_RETURN, UTEE_ENTRY_FUNC_CLOSE_SESSION, UTEE_ENTRY_FUNC_INVOKE_COMMAND,
    UTEE_ENTRY_FUNC_OPEN_SESSION, UTEE_PARAMS_SIZE, UteeParams, layout, param_types,
    tee_uuid_to_octets,
};

const PAGE: u64 = 4096;
/// Where the fake core puts an entry's `struct utee_params`: the top page of the stack.
const PARAMS_VA: u64 = layout::STACK_TOP - PAGE;

/// How an entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// RETURN with this result.
    Returned(u32),
    /// PANIC with this code.
    Panicked(u64),
    /// An access faulted at this address.
    Faulted(u64),
}

/// A parameter as the client gives it.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// `TEE_PARAM_TYPE_NONE`.
    None,
    /// A NULL `MEMREF_INPUT` (address 0, size 0).
    Null,
    /// `VALUE_INPUT`.
    ValueIn(u64, u64),
    /// `VALUE_OUTPUT`.
    ValueOut,
    /// `MEMREF_INPUT`.
    MemIn(&'a Buffer),
    /// `MEMREF_OUTPUT`.
    MemOut(&'a Buffer),
    /// `MEMREF_INOUT`.
    MemInout(&'a Buffer),
}

/// A client's buffer: `len` bytes from `offset` into its first frame.
#[derive(Debug)]
pub struct Buffer {
    frames: Vec<u64>,
    offset: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pte {
    frame: u64,
    writable: bool,
    /// The TA's own memory (not a parameter).
    own: bool,
}

/// The pages of one memref to map into a callee, from `offset` into the first.
#[derive(Debug, Clone, Default)]
struct Pages {
    frames: Vec<u64>,
    offset: u64,
}

/// Frames, the console, which frames TAs read, and how many instances live.
#[derive(Default)]
pub struct Machine {
    frames: RefCell<HashMap<u64, Box<[u8; PAGE as usize]>>>,
    next_frame: Cell<u64>,
    read_frames: RefCell<HashSet<u64>>,
    log: RefCell<Vec<String>>,
    live: Cell<usize>,
}

impl Machine {
    pub fn new() -> Self {
        Self::default()
    }

    fn frame(&self) -> u64 {
        let f = self.next_frame.get() + 1;
        self.next_frame.set(f);
        self.frames
            .borrow_mut()
            .insert(f, Box::new([0; PAGE as usize]));
        f
    }

    fn copy_out(&self, frame: u64, at: u64, buf: &mut [u8]) {
        let frames = self.frames.borrow();
        let f = &frames[&frame];
        buf.copy_from_slice(&f[at as usize..at as usize + buf.len()]);
    }

    fn copy_in(&self, frame: u64, at: u64, data: &[u8]) {
        let mut frames = self.frames.borrow_mut();
        let f = frames.get_mut(&frame).unwrap();
        f[at as usize..at as usize + data.len()].copy_from_slice(data);
    }

    /// A new instance's address space: its heap and its stack's top page, zeroed.
    pub fn instance(&self) -> FakeEnv<'_> {
        let mut pages = HashMap::new();
        let own = (0..layout::HEAP_SIZE / PAGE)
            .map(|i| layout::HEAP_BASE + i * PAGE)
            .chain([PARAMS_VA]);
        for va in own {
            let pte = Pte {
                frame: self.frame(),
                writable: true,
                own: true,
            };
            pages.insert(va, pte);
        }
        self.live.set(self.live.get() + 1);
        FakeEnv {
            m: self,
            pages,
            sessions: HashMap::new(),
            next_session: 1,
            ended: None,
        }
    }

    /// Opens a session of `program` as a client: the instance, or the error it answered.
    pub fn open(&self, program: &'static Program) -> Result<Session<'_>, u32> {
        let mut s = Session {
            program,
            env: self.instance(),
            id: 1,
            dead: false,
        };
        match s
            .enter(
                UTEE_ENTRY_FUNC_OPEN_SESSION,
                0,
                UteeParams::default(),
                Default::default(),
            )
            .0
        {
            Ended::Returned(TEE_SUCCESS) => Ok(s),
            Ended::Returned(e) => Err(e),
            _ => Err(TEE_ERROR_TARGET_DEAD),
        }
    }

    /// Closes a client's session.
    pub fn close(&self, mut s: Session<'_>) {
        if !s.dead {
            s.enter(
                UTEE_ENTRY_FUNC_CLOSE_SESSION,
                0,
                UteeParams::default(),
                Default::default(),
            );
        }
    }

    /// What the TAs logged.
    pub fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    /// Instances alive.
    pub fn instances(&self) -> usize {
        self.live.get()
    }

    /// A client buffer holding `bytes` from `offset` into its first page.
    pub fn buffer(&self, bytes: &[u8], offset: usize) -> Buffer {
        let pages = (offset + bytes.len()).div_ceil(PAGE as usize).max(1);
        let b = Buffer {
            frames: (0..pages).map(|_| self.frame()).collect(),
            offset: offset as u64,
            len: bytes.len() as u64,
        };
        self.write_buffer(&b, bytes);
        b
    }

    /// The bytes of a client buffer.
    pub fn read_buffer(&self, b: &Buffer) -> Vec<u8> {
        let mut out = vec![0; b.len as usize];
        for (i, byte) in out.iter_mut().enumerate() {
            let at = b.offset + i as u64;
            let mut one = [0u8];
            self.copy_out(b.frames[(at / PAGE) as usize], at % PAGE, &mut one);
            *byte = one[0];
        }
        out
    }

    /// Overwrites a client buffer.
    pub fn write_buffer(&self, b: &Buffer, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = b.offset + i as u64;
            self.copy_in(b.frames[(at / PAGE) as usize], at % PAGE, &[byte]);
        }
    }

    /// Which pages of `b` (by index) a TA has read.
    pub fn reads_of(&self, b: &Buffer) -> Vec<usize> {
        let read = self.read_frames.borrow();
        (0..b.frames.len())
            .filter(|&i| read.contains(&b.frames[i]))
            .collect()
    }
}

/// An instance's address space and the sessions it opened.
pub struct FakeEnv<'m> {
    m: &'m Machine,
    pages: HashMap<u64, Pte>,
    sessions: HashMap<u32, Session<'m>>,
    next_session: u32,
    ended: Option<Ended>,
}

impl Drop for FakeEnv<'_> {
    fn drop(&mut self) {
        self.m.live.set(self.m.live.get() - 1);
    }
}

/// One open session: the instance, alive or dead.
pub struct Session<'m> {
    program: &'static Program,
    env: FakeEnv<'m>,
    id: u32,
    dead: bool,
}

impl<'m> Session<'m> {
    /// Invokes `cmd` as a client with `params`: how it ended and the params after.
    pub fn invoke(&mut self, cmd: u32, params: [Param<'_>; 4]) -> (Ended, UteeParams) {
        let mut p = UteeParams::default();
        let mut pages: [Pages; 4] = Default::default();
        let mut types = [TEE_PARAM_TYPE_NONE; 4];
        for (i, param) in params.iter().enumerate() {
            let (t, a, b, buf) = match *param {
                Param::None => (TEE_PARAM_TYPE_NONE, 0, 0, None),
                Param::Null => (TEE_PARAM_TYPE_MEMREF_INPUT, 0, 0, None),
                Param::ValueIn(a, b) => (TEE_PARAM_TYPE_VALUE_INPUT, a, b, None),
                Param::ValueOut => (TEE_PARAM_TYPE_VALUE_OUTPUT, 0, 0, None),
                Param::MemIn(b) => (TEE_PARAM_TYPE_MEMREF_INPUT, 0, b.len, Some(b)),
                Param::MemOut(b) => (TEE_PARAM_TYPE_MEMREF_OUTPUT, 0, b.len, Some(b)),
                Param::MemInout(b) => (TEE_PARAM_TYPE_MEMREF_INOUT, 0, b.len, Some(b)),
            };
            types[i] = t;
            p.set_pair(i, a, b);
            if let Some(buf) = buf {
                pages[i] = Pages {
                    frames: buf.frames.clone(),
                    offset: buf.offset,
                };
            }
        }
        p.types.set(param_types(types).into());
        if self.dead {
            return (Ended::Returned(TEE_ERROR_TARGET_DEAD), p);
        }
        self.enter(UTEE_ENTRY_FUNC_INVOKE_COMMAND, cmd.into(), p, pages)
    }

    /// Runs the entry `func`: maps the memrefs' pages into the parameter region (a guard page
    /// after each), puts the params on the stack, runs, reads them back and unmaps.
    fn enter(
        &mut self,
        func: u64,
        cmd: u64,
        mut p: UteeParams,
        pages: [Pages; 4],
    ) -> (Ended, UteeParams) {
        let mut next = layout::PARAM_BASE;
        let mut mapped = Vec::new();
        for (i, memref) in pages.iter().enumerate() {
            if memref.frames.is_empty() {
                continue;
            }
            let writable = p.param_type(i) != TEE_PARAM_TYPE_MEMREF_INPUT;
            for (k, &frame) in memref.frames.iter().enumerate() {
                let va = next + k as u64 * PAGE;
                self.env.pages.insert(
                    va,
                    Pte {
                        frame,
                        writable,
                        own: false,
                    },
                );
                mapped.push(va);
            }
            p.set_pair(i, next + memref.offset, p.pair(i).1);
            next += (memref.frames.len() as u64 + 1) * PAGE;
        }
        self.env.core_write(PARAMS_VA, &params_to_bytes(&p));
        self.env.ended = None;
        let ran = crate::run(
            self.program,
            &mut self.env,
            func,
            self.id.into(),
            PARAMS_VA,
            cmd,
        );
        assert!(
            ran.is_err(),
            "the fake core never resumes a TA after RETURN"
        );
        let ended = self
            .env
            .ended
            .take()
            .expect("the TA ended through the fake core");
        let raw: [u8; UTEE_PARAMS_SIZE] = self
            .env
            .core_read(PARAMS_VA, UTEE_PARAMS_SIZE)
            .unwrap()
            .try_into()
            .unwrap();
        for va in mapped {
            self.env.pages.remove(&va);
        }
        if !matches!(ended, Ended::Returned(_)) {
            self.dead = true;
        }
        (ended, params_from_bytes(&raw))
    }
}

impl FakeEnv<'_> {
    /// The core's read of TA memory (no fault recorded): `None` if a page is not mapped.
    fn core_read(&self, va: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = vec![0; len];
        for (i, b) in out.iter_mut().enumerate() {
            let at = va.checked_add(i as u64)?;
            let pte = self.pages.get(&(at & !(PAGE - 1)))?;
            let mut one = [0u8];
            self.m.copy_out(pte.frame, at % PAGE, &mut one);
            *b = one[0];
        }
        Some(out)
    }

    /// The core's write into TA memory: `false` if a page is not mapped writable.
    fn core_write(&self, va: u64, data: &[u8]) -> bool {
        let ok = (0..data.len() as u64).all(|i| {
            self.pages
                .get(&((va + i) & !(PAGE - 1)))
                .is_some_and(|p| p.writable)
        });
        if ok {
            for (i, &b) in data.iter().enumerate() {
                let at = va + i as u64;
                self.m
                    .copy_in(self.pages[&(at & !(PAGE - 1))].frame, at % PAGE, &[b]);
            }
        }
        ok
    }

    /// The TA's own access: each byte's page must be mapped (writable for a store).
    fn access(&mut self, va: u64, len: usize, write: bool) -> Result<Vec<Pte>, Stop> {
        let mut ptes = Vec::with_capacity(len);
        for i in 0..len as u64 {
            let at = va.wrapping_add(i);
            match self.pages.get(&(at & !(PAGE - 1))) {
                Some(p) if p.writable || !write => ptes.push(*p),
                _ => {
                    self.ended = Some(Ended::Faulted(at));
                    return Err(Stop);
                }
            }
        }
        Ok(ptes)
    }

    /// A caller's memref as pages to map into the callee: `Err` with the `TEE_Result` if the
    /// caller may not give them so.
    fn memref_pages(&self, t: u32, va: u64, size: u64) -> Result<Pages, u32> {
        if va == 0 && size == 0 {
            return Ok(Pages::default());
        }
        let first = va & !(PAGE - 1);
        let end = (va + size).next_multiple_of(PAGE);
        let mut frames = Vec::new();
        for page in (first..end).step_by(PAGE as usize) {
            match self.pages.get(&page) {
                Some(p) if p.writable || t == TEE_PARAM_TYPE_MEMREF_INPUT => frames.push(p.frame),
                _ => return Err(TEE_ERROR_ACCESS_DENIED),
            }
        }
        Ok(Pages {
            frames,
            offset: va % PAGE,
        })
    }

    fn open_session(&mut self, args: [u64; 8]) -> u32 {
        let Some(uuid) = self.core_read(args[0], 16) else {
            return TEE_ERROR_ACCESS_DENIED;
        };
        let Some((_, program)) = find(&tee_uuid_to_octets(uuid.try_into().unwrap())) else {
            return TEE_ERROR_ITEM_NOT_FOUND;
        };
        let id = self.next_session;
        self.next_session += 1;
        let mut s = Session {
            program,
            env: self.m.instance(),
            id,
            dead: false,
        };
        let (ended, _) = s.enter(
            UTEE_ENTRY_FUNC_OPEN_SESSION,
            0,
            UteeParams::default(),
            Default::default(),
        );
        let result = match ended {
            Ended::Returned(r) => r,
            _ => TEE_ERROR_TARGET_DEAD,
        };
        if result == TEE_SUCCESS {
            self.sessions.insert(id, s);
            assert!(self.core_write(args[3], &id.to_le_bytes()));
        }
        assert!(self.core_write(args[4], &TEE_ORIGIN_TRUSTED_APP.to_le_bytes()));
        result
    }

    fn invoke(&mut self, args: [u64; 8]) -> u32 {
        let [session, _, cmd, params_va, origin_va, ..] = args;
        let Some(mut s) = self.sessions.remove(&(session as u32)) else {
            return TEE_ERROR_ITEM_NOT_FOUND;
        };
        let result = self.invoke_in(&mut s, cmd, params_va);
        self.sessions.insert(session as u32, s);
        let origin = if result == TEE_ERROR_TARGET_DEAD {
            TEE_ORIGIN_TEE
        } else {
            TEE_ORIGIN_TRUSTED_APP
        };
        assert!(self.core_write(origin_va, &origin.to_le_bytes()));
        result
    }

    fn invoke_in(&mut self, s: &mut Session<'_>, cmd: u64, params_va: u64) -> u32 {
        if s.dead {
            return TEE_ERROR_TARGET_DEAD;
        }
        let Some(raw) = self.core_read(params_va, UTEE_PARAMS_SIZE) else {
            return TEE_ERROR_ACCESS_DENIED;
        };
        let mut p = params_from_bytes(&raw.try_into().unwrap());
        let mut pages: [Pages; 4] = Default::default();
        for (i, slot) in pages.iter_mut().enumerate() {
            let t = p.param_type(i);
            if matches!(
                t,
                TEE_PARAM_TYPE_MEMREF_INPUT
                    | TEE_PARAM_TYPE_MEMREF_OUTPUT
                    | TEE_PARAM_TYPE_MEMREF_INOUT
            ) {
                let (va, size) = p.pair(i);
                match self.memref_pages(t, va, size) {
                    Ok(found) => *slot = found,
                    Err(e) => return e,
                }
            }
        }
        let (ended, out) = s.enter(UTEE_ENTRY_FUNC_INVOKE_COMMAND, cmd, p, pages);
        let Ended::Returned(result) = ended else {
            return TEE_ERROR_TARGET_DEAD;
        };
        // The outputs go back into the caller's params; a memref keeps the caller's address.
        p.take_outputs(&out);
        assert!(self.core_write(params_va, &params_to_bytes(&p)));
        result
    }

    fn check_access(&self, flags: u32, va: u64, len: u64) -> u32 {
        let first = va & !(PAGE - 1);
        let end = (va + len).next_multiple_of(PAGE);
        let ok = (first..end).step_by(PAGE as usize).all(|page| {
            self.pages.get(&page).is_some_and(|p| {
                (p.writable || flags & TEE_MEMORY_ACCESS_WRITE == 0)
                    && (p.own || flags & TEE_MEMORY_ACCESS_ANY_OWNER != 0)
            })
        });
        if ok {
            TEE_SUCCESS
        } else {
            TEE_ERROR_ACCESS_DENIED
        }
    }
}

impl UserEnv for FakeEnv<'_> {
    fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Stop> {
        let ptes = self.access(va, buf.len(), false)?;
        for (i, (b, pte)) in buf.iter_mut().zip(ptes).enumerate() {
            let mut one = [0u8];
            self.m.copy_out(pte.frame, (va + i as u64) % PAGE, &mut one);
            self.m.read_frames.borrow_mut().insert(pte.frame);
            *b = one[0];
        }
        Ok(())
    }

    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Stop> {
        let ptes = self.access(va, data.len(), true)?;
        for (i, (&b, pte)) in data.iter().zip(ptes).enumerate() {
            self.m.copy_in(pte.frame, (va + i as u64) % PAGE, &[b]);
        }
        Ok(())
    }

    fn syscall(&mut self, nr: u64, args: [u64; 8]) -> Result<u64, Stop> {
        let result = match nr {
            TEE_SCN_RETURN => {
                self.ended = Some(Ended::Returned(args[0] as u32));
                return Err(Stop);
            }
            TEE_SCN_PANIC => {
                self.ended = Some(Ended::Panicked(args[0]));
                return Err(Stop);
            }
            TEE_SCN_LOG => match self.core_read(args[0], args[1] as usize) {
                Some(msg) => {
                    self.m
                        .log
                        .borrow_mut()
                        .push(String::from_utf8(msg).unwrap());
                    TEE_SUCCESS
                }
                None => TEE_ERROR_ACCESS_DENIED,
            },
            TEE_SCN_OPEN_TA_SESSION => self.open_session(args),
            TEE_SCN_INVOKE_TA_COMMAND => self.invoke(args),
            TEE_SCN_CLOSE_TA_SESSION => match self.sessions.remove(&(args[0] as u32)) {
                Some(s) => {
                    self.m.close(s);
                    TEE_SUCCESS
                }
                None => TEE_ERROR_BAD_PARAMETERS,
            },
            TEE_SCN_CHECK_ACCESS_RIGHTS => self.check_access(args[0] as u32, args[1], args[2]),
            _ => TEE_ERROR_NOT_SUPPORTED,
        };
        Ok(result.into())
    }
}
