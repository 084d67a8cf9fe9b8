//! User mode on the host, driven by a stub of the core's user-TA side: real translation tables
//! per instance (`TranslationTables::new_user`), heap pages mapped on demand, OP-TEE's system
//! calls served for memtest and peer, a TA invoking a TA nested inside its system call.

use super::*;
use crate::layout::{NS_RAM, TA_RAM};
use crate::memory::PhysMemory;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use teeshm_abi::gp::{
    TEE_ERROR_ACCESS_DENIED, TEE_ERROR_ITEM_NOT_FOUND, TEE_ERROR_NOT_SUPPORTED,
    TEE_ERROR_TARGET_DEAD, TEE_ORIGIN_TEE, TEE_ORIGIN_TRUSTED_APP, TEE_SUCCESS,
};
use teeshm_abi::utee::{
    TEE_MEMORY_ACCESS_ANY_OWNER, TEE_MEMORY_ACCESS_WRITE, TEE_PARAM_TYPE_MEMREF_INOUT,
    TEE_PARAM_TYPE_MEMREF_INPUT, TEE_PARAM_TYPE_MEMREF_OUTPUT, TEE_PARAM_TYPE_NONE,
    TEE_PARAM_TYPE_VALUE_INPUT, TEE_PARAM_TYPE_VALUE_OUTPUT, TEE_SCN_CHECK_ACCESS_RIGHTS,
    TEE_SCN_CLOSE_TA_SESSION, TEE_SCN_INVOKE_TA_COMMAND, TEE_SCN_LOG, TEE_SCN_OPEN_TA_SESSION,
    TEE_SCN_PANIC, TEE_SCN_RETURN, UTEE_ENTRY_FUNC_CLOSE_SESSION, UTEE_ENTRY_FUNC_INVOKE_COMMAND,
    UTEE_ENTRY_FUNC_OPEN_SESSION, UTEE_PARAMS_SIZE, UteeParams, param_types, tee_uuid_to_octets,
};
use teeshm_core::Platform;
use teeshm_mm::tables::Translation;
use teeshm_mm::{PhysRange, TranslationTables, UserPage, VirtPages};
use teeshm_platform::RecordingTlb;
use teeshm_ta::libutee::{params_from_bytes, params_to_bytes};
use teeshm_ta::{memtest, pattern_byte, peer};

/// Where the stub core puts an entry's `struct utee_params`: the top page of the stack.
const PARAMS_VA: u64 = layout::STACK_TOP - PAGE_SIZE;

/// A TA's address space: its tables behind a `RefCell`, so that the core maps pages while
/// the TA runs (the TA only walks them).
struct Space {
    tables: RefCell<TranslationTables<RecordingTlb>>,
    root: UserRoot,
}

impl Translate for Space {
    fn translate_page(&self, page: VirtAddr) -> Option<Translation> {
        self.tables.borrow().translate_page(page)
    }
}

impl Space {
    fn new(asid: u16) -> Self {
        let tables = TranslationTables::new_user(64, RecordingTlb::counting(), asid).unwrap();
        let root = UserRoot {
            table: tables.root_address(),
            asid,
        };
        Self {
            tables: RefCell::new(tables),
            root,
        }
    }

    fn map(&self, va: u64, pa: u64, page: UserPage) {
        let range = VirtPages::new(VirtAddr(va), 1).unwrap();
        self.tables
            .borrow_mut()
            .map_pages(range, &[PhysAddr(pa)], MemKind::User(page))
            .unwrap();
    }

    fn unmap(&self, va: u64, pages: u64) {
        let range = VirtPages::new(VirtAddr(va), pages).unwrap();
        self.tables.borrow_mut().unmap(range);
    }
}

/// How an entry into a TA ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Returned(u32),
    Panicked(u64),
    Died(UserTrap),
}

/// One memref's pages as the core maps them into the callee: physical pages, the offset into
/// the first, and whether they are secure (another TA's) memory.
#[derive(Clone, Default)]
struct Memref {
    pages: Vec<u64>,
    offset: u64,
    secure: bool,
}

struct Instance {
    space: Rc<Space>,
    dead: bool,
}

/// A stub of the core's user-TA side.
struct Core {
    platform: SimPlatform,
    next_page: Cell<u64>,
    next_asid: Cell<u16>,
    next_session: Cell<u32>,
    heap_faults: Cell<u64>,
    log: RefCell<Vec<String>>,
    sessions: RefCell<HashMap<u32, Instance>>,
}

impl Core {
    fn new() -> Self {
        let ta_ram = PhysRange::new(PhysAddr(TA_RAM.0), TA_RAM.1).unwrap();
        Self {
            platform: SimPlatform::new(Arc::new(PhysMemory::new())).with_ta_ram(ta_ram),
            next_page: Cell::new(TA_RAM.0),
            next_asid: Cell::new(1),
            next_session: Cell::new(1),
            heap_faults: Cell::new(0),
            log: RefCell::new(Vec::new()),
            sessions: RefCell::new(HashMap::new()),
        }
    }

    /// A fresh zeroed page of TA RAM.
    fn ta_page(&self) -> u64 {
        let pa = self.next_page.get();
        self.next_page.set(pa + PAGE_SIZE);
        self.platform
            .write_ta_ram(PhysAddr(pa), &[0; PAGE_SIZE as usize])
            .unwrap();
        pa
    }

    /// A new instance of `image`: its segments loaded and mapped, the stack's top page mapped;
    /// the heap comes page by page as the TA touches it.
    fn instance(&self, image: &TaImage) -> Space {
        let asid = self.next_asid.get();
        self.next_asid.set(asid + 1);
        let space = Space::new(asid);
        for seg in &image.segments {
            let kind = match seg.access {
                SegmentAccess::ReadExecute => UserPage::CODE,
                SegmentAccess::Read => UserPage::RODATA,
                SegmentAccess::ReadWrite => UserPage::DATA,
            };
            for (i, off) in (0..seg.mem_size).step_by(PAGE_SIZE as usize).enumerate() {
                let pa = self.ta_page();
                let data = seg.data.get(off as usize..).unwrap_or_default();
                let data = &data[..data.len().min(PAGE_SIZE as usize)];
                self.platform.write_ta_ram(PhysAddr(pa), data).unwrap();
                space.map(seg.vaddr + i as u64 * PAGE_SIZE, pa, kind);
            }
        }
        space.map(PARAMS_VA, self.ta_page(), UserPage::DATA);
        space
    }

    fn program_instance(&self, uuid: &[u8; 16]) -> Option<Space> {
        let images = sim_ta_images();
        let image = images.iter().find(|i| &i.uuid == uuid)?;
        Some(self.instance(image))
    }

    /// Enters `space` at `func` with `p`, its memrefs mapped into the parameter region (a
    /// guard page after each) for this entry only: how it ended and the params after.
    fn enter(
        &self,
        space: &Space,
        func: u64,
        session: u32,
        cmd: u64,
        mut p: UteeParams,
        memrefs: &[Memref; 4],
    ) -> (Outcome, UteeParams) {
        let mut next = layout::PARAM_BASE;
        let mut mapped = Vec::new();
        for (i, m) in memrefs.iter().enumerate() {
            if m.pages.is_empty() {
                continue;
            }
            let writable = p.param_type(i) != TEE_PARAM_TYPE_MEMREF_INPUT;
            for (k, &pa) in m.pages.iter().enumerate() {
                space.map(
                    next + k as u64 * PAGE_SIZE,
                    pa,
                    UserPage::shared(m.secure, writable),
                );
            }
            mapped.push((next, m.pages.len() as u64));
            p.set_pair(i, next + m.offset, p.pair(i).1);
            next += (m.pages.len() as u64 + 1) * PAGE_SIZE;
        }
        self.platform.activate_user(Some(space.root));
        self.platform
            .write(space, VirtAddr(PARAMS_VA), &params_to_bytes(&p))
            .unwrap();
        let mut regs = UserRegs {
            pc: layout::PRIVATE_BASE,
            sp: PARAMS_VA,
            ..UserRegs::default()
        };
        regs.x[..4].copy_from_slice(&[func, session.into(), PARAMS_VA, cmd]);
        let mut handler = Handler {
            core: self,
            space,
            outcome: None,
        };
        self.platform
            .enter_user(space.root, space, &mut regs, &mut handler);
        let outcome = handler.outcome.expect("the handler ended the TA");
        let mut raw = [0u8; UTEE_PARAMS_SIZE];
        self.platform
            .read(space, VirtAddr(PARAMS_VA), &mut raw)
            .unwrap();
        for (va, pages) in mapped {
            space.unmap(va, pages);
        }
        (outcome, params_from_bytes(&raw))
    }

    /// A client's invocation of `cmd` with normal-world buffers.
    fn invoke(
        &self,
        space: &Space,
        cmd: u32,
        p: UteeParams,
        memrefs: &[Memref; 4],
    ) -> (Outcome, UteeParams) {
        self.enter(
            space,
            UTEE_ENTRY_FUNC_INVOKE_COMMAND,
            1,
            cmd.into(),
            p,
            memrefs,
        )
    }

    fn open(&self, space: &Space) -> Outcome {
        let none: [Memref; 4] = Default::default();
        let p = UteeParams::default();
        self.enter(space, UTEE_ENTRY_FUNC_OPEN_SESSION, 1, 0, p, &none)
            .0
    }

    fn read_user(&self, space: &Space, va: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0; len];
        self.platform.read(space, VirtAddr(va), &mut buf).ok()?;
        Some(buf)
    }

    fn write_user(&self, space: &Space, va: u64, data: &[u8]) -> bool {
        self.platform.write(space, VirtAddr(va), data).is_ok()
    }

    /// `OPEN_TA_SESSION` from the TA of `caller`.
    fn open_from(&self, caller: &Space, x: &[u64]) -> u32 {
        let Some(uuid) = self.read_user(caller, x[0], 16) else {
            return TEE_ERROR_ACCESS_DENIED;
        };
        let uuid = tee_uuid_to_octets(uuid.try_into().unwrap());
        let Some(callee) = self.program_instance(&uuid) else {
            return TEE_ERROR_ITEM_NOT_FOUND;
        };
        let outcome = self.open(&callee);
        // Back to the caller's space before touching its memory.
        self.platform.activate_user(Some(caller.root));
        let result = match outcome {
            Outcome::Returned(r) => r,
            _ => TEE_ERROR_TARGET_DEAD,
        };
        if result == TEE_SUCCESS {
            let id = self.next_session.get();
            self.next_session.set(id + 1);
            let instance = Instance {
                space: Rc::new(callee),
                dead: false,
            };
            self.sessions.borrow_mut().insert(id, instance);
            assert!(self.write_user(caller, x[3], &id.to_le_bytes()));
        }
        assert!(self.write_user(caller, x[4], &TEE_ORIGIN_TRUSTED_APP.to_le_bytes()));
        result
    }

    /// `INVOKE_TA_COMMAND` from the TA of `caller`: its memrefs are its own pages, mapped
    /// into the callee as secure memory.
    fn invoke_from(&self, caller: &Space, x: &[u64]) -> u32 {
        let (session, cmd, params_va, origin_va) = (x[0] as u32, x[2], x[3], x[4]);
        let Some((callee, dead)) = self
            .sessions
            .borrow()
            .get(&session)
            .map(|i| (i.space.clone(), i.dead))
        else {
            return TEE_ERROR_ITEM_NOT_FOUND;
        };
        let result = if dead {
            TEE_ERROR_TARGET_DEAD
        } else {
            self.invoke_callee(caller, &callee, session, cmd, params_va)
        };
        if result == TEE_ERROR_TARGET_DEAD {
            if let Some(i) = self.sessions.borrow_mut().get_mut(&session) {
                i.dead = true;
            }
        }
        let origin = if result == TEE_ERROR_TARGET_DEAD {
            TEE_ORIGIN_TEE
        } else {
            TEE_ORIGIN_TRUSTED_APP
        };
        assert!(self.write_user(caller, origin_va, &origin.to_le_bytes()));
        result
    }

    fn invoke_callee(
        &self,
        caller: &Space,
        callee: &Space,
        session: u32,
        cmd: u64,
        params_va: u64,
    ) -> u32 {
        let Some(raw) = self.read_user(caller, params_va, UTEE_PARAMS_SIZE) else {
            return TEE_ERROR_ACCESS_DENIED;
        };
        let mut p = params_from_bytes(&raw.try_into().unwrap());
        let mut memrefs: [Memref; 4] = Default::default();
        for (i, m) in memrefs.iter_mut().enumerate() {
            let t = p.param_type(i);
            if !matches!(
                t,
                TEE_PARAM_TYPE_MEMREF_INPUT
                    | TEE_PARAM_TYPE_MEMREF_OUTPUT
                    | TEE_PARAM_TYPE_MEMREF_INOUT
            ) {
                continue;
            }
            let (va, size) = p.pair(i);
            let first = va & !(PAGE_SIZE - 1);
            let end = (va + size).next_multiple_of(PAGE_SIZE);
            for page in (first..end).step_by(PAGE_SIZE as usize) {
                match caller.translate_page(VirtAddr(page)) {
                    Some(Translation {
                        pa,
                        kind: Some(MemKind::User(_)),
                    }) => m.pages.push(pa.get()),
                    _ => return TEE_ERROR_ACCESS_DENIED,
                }
            }
            m.offset = va % PAGE_SIZE;
            m.secure = true;
        }
        let func = UTEE_ENTRY_FUNC_INVOKE_COMMAND;
        let (outcome, out) = self.enter(callee, func, session, cmd, p, &memrefs);
        self.platform.activate_user(Some(caller.root));
        let Outcome::Returned(result) = outcome else {
            return TEE_ERROR_TARGET_DEAD;
        };
        p.take_outputs(&out);
        assert!(self.write_user(caller, params_va, &params_to_bytes(&p)));
        result
    }

    fn close_from(&self, caller: &Space, x: &[u64]) -> u32 {
        let Some(instance) = self.sessions.borrow_mut().remove(&(x[0] as u32)) else {
            return TEE_ERROR_ITEM_NOT_FOUND;
        };
        if !instance.dead {
            let none: [Memref; 4] = Default::default();
            let p = UteeParams::default();
            let func = UTEE_ENTRY_FUNC_CLOSE_SESSION;
            self.enter(&instance.space, func, x[0] as u32, 0, p, &none);
            self.platform.activate_user(Some(caller.root));
        }
        TEE_SUCCESS
    }

    /// `CHECK_ACCESS_RIGHTS`: every page mapped so, and the TA's own unless `ANY_OWNER`.
    fn check_access(&self, space: &Space, x: &[u64]) -> u32 {
        let (flags, va, len) = (x[0] as u32, x[1], x[2]);
        let first = va & !(PAGE_SIZE - 1);
        let end = (va + len).next_multiple_of(PAGE_SIZE);
        let ok = (first..end).step_by(PAGE_SIZE as usize).all(|page| {
            let param =
                (layout::PARAM_BASE..layout::PARAM_BASE + layout::PARAM_SIZE).contains(&page);
            match space.translate_page(VirtAddr(page)).and_then(|t| t.kind) {
                Some(MemKind::User(p)) => {
                    (p.writable || flags & TEE_MEMORY_ACCESS_WRITE == 0)
                        && (!param || flags & TEE_MEMORY_ACCESS_ANY_OWNER != 0)
                }
                _ => false,
            }
        });
        if ok {
            TEE_SUCCESS
        } else {
            TEE_ERROR_ACCESS_DENIED
        }
    }
}

/// The stub core's trap handler for one entry into one TA.
struct Handler<'c> {
    core: &'c Core,
    space: &'c Space,
    outcome: Option<Outcome>,
}

impl UserTrapHandler for Handler<'_> {
    fn trap(&mut self, regs: &mut UserRegs, trap: UserTrap) -> TrapAction {
        let core = self.core;
        match trap {
            // The heap is mapped on demand: the access is retried.
            UserTrap::Abort { far, access }
                if access != UserAccess::Execute
                    && (layout::HEAP_BASE..layout::HEAP_BASE + layout::HEAP_SIZE)
                        .contains(&far)
                    && self
                        .space
                        .translate_page(VirtAddr(far & !(PAGE_SIZE - 1)))
                        .is_none() =>
            {
                self.space
                    .map(far & !(PAGE_SIZE - 1), core.ta_page(), UserPage::DATA);
                core.heap_faults.set(core.heap_faults.get() + 1);
                TrapAction::Resume
            }
            UserTrap::Abort { .. } | UserTrap::Other { .. } => {
                self.outcome = Some(Outcome::Died(trap));
                TrapAction::Exit
            }
            UserTrap::Syscall => {
                let x = regs.x;
                let result = match x[8] {
                    TEE_SCN_RETURN => {
                        self.outcome = Some(Outcome::Returned(x[0] as u32));
                        return TrapAction::Exit;
                    }
                    TEE_SCN_PANIC => {
                        self.outcome = Some(Outcome::Panicked(x[0]));
                        return TrapAction::Exit;
                    }
                    TEE_SCN_LOG => match core.read_user(self.space, x[0], x[1] as usize) {
                        Some(msg) => {
                            core.log.borrow_mut().push(String::from_utf8(msg).unwrap());
                            TEE_SUCCESS
                        }
                        None => TEE_ERROR_ACCESS_DENIED,
                    },
                    TEE_SCN_OPEN_TA_SESSION => core.open_from(self.space, &x),
                    TEE_SCN_INVOKE_TA_COMMAND => core.invoke_from(self.space, &x),
                    TEE_SCN_CLOSE_TA_SESSION => core.close_from(self.space, &x),
                    TEE_SCN_CHECK_ACCESS_RIGHTS => core.check_access(self.space, &x),
                    _ => TEE_ERROR_NOT_SUPPORTED,
                };
                regs.x[0] = result.into();
                TrapAction::Resume
            }
        }
    }
}

fn params(types: [u32; 4], pairs: [(u64, u64); 4]) -> UteeParams {
    let mut p = UteeParams::default();
    p.types.set(param_types(types).into());
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        p.set_pair(i, a, b);
    }
    p
}

/// `pages` normal-world pages (not contiguous) holding `bytes` from `offset` into the first.
fn ns_buffer(memory: &PhysMemory, first: u64, bytes: &[u8], offset: u64) -> Memref {
    let count = (offset + bytes.len() as u64).div_ceil(PAGE_SIZE);
    let pages: Vec<u64> = (0..count)
        .map(|i| NS_RAM.0 + first + 2 * i * PAGE_SIZE)
        .collect();
    let m = Memref {
        pages,
        offset,
        secure: false,
    };
    ns_write(memory, &m, bytes);
    m
}

fn ns_write(memory: &PhysMemory, m: &Memref, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let at = m.offset + i as u64;
        memory.write(m.pages[(at / PAGE_SIZE) as usize] + at % PAGE_SIZE, &[b]);
    }
}

fn ns_read(memory: &PhysMemory, m: &Memref, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let at = m.offset + i as u64;
            let mut b = [0u8];
            memory.read(m.pages[(at / PAGE_SIZE) as usize] + at % PAGE_SIZE, &mut b);
            b[0]
        })
        .collect()
}

fn memtest(core: &Core) -> Space {
    let space = core.program_instance(&memtest::UUID).unwrap();
    assert_eq!(core.open(&space), Outcome::Returned(TEE_SUCCESS));
    space
}

fn one(m: Memref) -> [Memref; 4] {
    [m, Memref::default(), Memref::default(), Memref::default()]
}

const NONE: u32 = TEE_PARAM_TYPE_NONE;

/// The TA runs through its own tables: opening logs from heap pages the core maps on
/// demand (the faulting access is retried), FILL writes a normal-world buffer mapped into
/// the parameter region, and the result comes back by RETURN.
#[test]
fn memtest_fills_a_buffer_through_its_own_tables() {
    let core = Core::new();
    let space = memtest(&core);
    assert_eq!(*core.log.borrow(), ["ta-memtest: open"]);
    assert!(core.heap_faults.get() > 0, "the heap was mapped on demand");
    let memory = core.platform.memory().clone();
    let buf = ns_buffer(&memory, 0x10_0000, &[0u8; 9000], 123);
    let p = params(
        [
            TEE_PARAM_TYPE_MEMREF_OUTPUT,
            TEE_PARAM_TYPE_VALUE_INPUT,
            NONE,
            NONE,
        ],
        [(0, 9000), (77, 0), (0, 0), (0, 0)],
    );
    let (outcome, out) = core.invoke(&space, memtest::cmd::FILL, p, &one(buf.clone()));
    assert_eq!(outcome, Outcome::Returned(TEE_SUCCESS));
    assert_eq!(out.pair(0).1, 9000);
    let want: Vec<u8> = (0..9000).map(|i| pattern_byte(77, i)).collect();
    assert_eq!(ns_read(&memory, &buf, 9000), want);
}

/// A fault kills the TA: the core sees where and what, and the TA does not go on.
#[test]
fn a_fault_reaches_the_core_with_its_address_and_access() {
    let core = Core::new();
    let space = memtest(&core);
    let p = params([NONE; 4], [(0, 0); 4]);
    let none: [Memref; 4] = Default::default();
    let (outcome, _) = core.invoke(&space, memtest::cmd::FAULT, p, &none);
    let far = layout::PARAM_BASE + layout::PARAM_SIZE - 8;
    let access = UserAccess::Read;
    assert_eq!(outcome, Outcome::Died(UserTrap::Abort { far, access }));
}

/// An input memref is mapped read-only: the TA's store faults and the buffer is untouched.
#[test]
fn an_input_memref_is_read_only_to_the_ta() {
    let core = Core::new();
    let space = memtest(&core);
    let memory = core.platform.memory().clone();
    let buf = ns_buffer(&memory, 0x20_0000, &[0x5a; 32], 8);
    let p = params(
        [TEE_PARAM_TYPE_MEMREF_INPUT, NONE, NONE, NONE],
        [(0, 32), (0, 0), (0, 0), (0, 0)],
    );
    let (outcome, _) = core.invoke(&space, memtest::cmd::WRITE_INPUT, p, &one(buf.clone()));
    let far = layout::PARAM_BASE + 8;
    let access = UserAccess::Write;
    assert_eq!(outcome, Outcome::Died(UserTrap::Abort { far, access }));
    assert_eq!(ns_read(&memory, &buf, 32), [0x5a; 32]);
}

/// A pointer kept past its call faults: the core unmapped the memref when the call returned.
#[test]
fn a_kept_pointer_faults_in_the_next_call() {
    let core = Core::new();
    let space = memtest(&core);
    let memory = core.platform.memory().clone();
    let buf = ns_buffer(&memory, 0x30_0000, &[1; 64], 0);
    let p = params(
        [TEE_PARAM_TYPE_MEMREF_INOUT, NONE, NONE, NONE],
        [(0, 64), (0, 0), (0, 0), (0, 0)],
    );
    let (outcome, _) = core.invoke(&space, memtest::cmd::KEEP, p, &one(buf));
    assert_eq!(outcome, Outcome::Returned(TEE_SUCCESS));
    let p = params([TEE_PARAM_TYPE_VALUE_OUTPUT, NONE, NONE, NONE], [(0, 0); 4]);
    let none: [Memref; 4] = Default::default();
    let (outcome, _) = core.invoke(&space, memtest::cmd::USE_KEPT, p, &none);
    let access = UserAccess::Read;
    let far = layout::PARAM_BASE;
    assert_eq!(outcome, Outcome::Died(UserTrap::Abort { far, access }));
}

/// A TA invokes a TA: the peer runs nested inside memtest's system call (a second
/// `enter_user` on the same host stack), gets exactly memtest's heap buffer mapped, inverts
/// it, and dies probing past it; memtest goes on and reports.
#[test]
fn call_peer_runs_the_peer_nested_in_a_system_call() {
    let core = Core::new();
    let space = memtest(&core);
    let p = params(
        [
            TEE_PARAM_TYPE_VALUE_INPUT,
            TEE_PARAM_TYPE_VALUE_OUTPUT,
            NONE,
            NONE,
        ],
        [(5, 10_000), (0, 0), (0, 0), (0, 0)],
    );
    let none: [Memref; 4] = Default::default();
    let (outcome, out) = core.invoke(&space, memtest::cmd::CALL_PEER, p, &none);
    assert_eq!(
        outcome,
        Outcome::Returned(TEE_SUCCESS),
        "{:?}",
        core.log.borrow()
    );
    assert_eq!(out.pair(1), (10_000, TEE_ERROR_TARGET_DEAD.into()));
    assert!(core.log.borrow().iter().any(|l| l == "ta-peer: open"));
    assert!(
        core.sessions.borrow().is_empty(),
        "memtest closed its session"
    );
    // A second round opens a new peer.
    let p = params(
        [
            TEE_PARAM_TYPE_VALUE_INPUT,
            TEE_PARAM_TYPE_VALUE_OUTPUT,
            NONE,
            NONE,
        ],
        [(6, 1), (0, 0), (0, 0), (0, 0)],
    );
    let (outcome, out) = core.invoke(&space, memtest::cmd::CALL_PEER, p, &none);
    assert_eq!(outcome, Outcome::Returned(TEE_SUCCESS));
    assert_eq!(out.pair(1), (1, TEE_ERROR_TARGET_DEAD.into()));
}

/// CHECK_ACCESS: a memref is memory of another owner (it passes with ANY_OWNER only).
#[test]
fn check_access_rights_reach_the_core() {
    let core = Core::new();
    let space = memtest(&core);
    let memory = core.platform.memory().clone();
    let buf = ns_buffer(&memory, 0x40_0000, &[0; 100], 0);
    let p = params(
        [
            TEE_PARAM_TYPE_MEMREF_INOUT,
            TEE_PARAM_TYPE_VALUE_OUTPUT,
            NONE,
            NONE,
        ],
        [(0, 100), (0, 0), (0, 0), (0, 0)],
    );
    let (outcome, out) = core.invoke(&space, memtest::cmd::CHECK_ACCESS, p, &one(buf));
    assert_eq!(outcome, Outcome::Returned(TEE_SUCCESS));
    assert_eq!(
        out.pair(1),
        (TEE_SUCCESS.into(), TEE_ERROR_ACCESS_DENIED.into())
    );
}

/// PANIC reaches the core with its code.
#[test]
fn a_panic_reaches_the_core() {
    let core = Core::new();
    let space = memtest(&core);
    let none: [Memref; 4] = Default::default();
    let p = params([NONE; 4], [(0, 0); 4]);
    let (outcome, _) = core.invoke(&space, memtest::cmd::PANIC, p, &none);
    assert_eq!(outcome, Outcome::Panicked(memtest::PANIC_CODE));
}

/// The TA's code must be on an executable user page and be a simulator image; else the TA
/// traps at its first instruction.
#[test]
fn code_must_be_executable_and_a_simulator_image() {
    let core = Core::new();
    let none: [Memref; 4] = Default::default();
    let p = UteeParams::default();
    let open = UTEE_ENTRY_FUNC_OPEN_SESSION;

    let space = Space::new(40);
    let code = core.ta_page();
    core.platform
        .write_ta_ram(PhysAddr(code), sim_ta_images()[0].segments[0].data)
        .unwrap();
    space.map(layout::PRIVATE_BASE, code, UserPage::RODATA);
    space.map(PARAMS_VA, core.ta_page(), UserPage::DATA);
    let (outcome, _) = core.enter(&space, open, 1, 0, p, &none);
    let (far, access) = (layout::PRIVATE_BASE, UserAccess::Execute);
    assert_eq!(outcome, Outcome::Died(UserTrap::Abort { far, access }));

    let space = Space::new(41);
    let garbage = core.ta_page();
    core.platform
        .write_ta_ram(PhysAddr(garbage), b"not a TA at all!")
        .unwrap();
    space.map(layout::PRIVATE_BASE, garbage, UserPage::CODE);
    space.map(PARAMS_VA, core.ta_page(), UserPage::DATA);
    let (outcome, _) = core.enter(&space, open, 1, 0, p, &none);
    assert_eq!(outcome, Outcome::Died(UserTrap::Other { esr: 0 }));
}

/// The core's own accesses reach a TA's pages only while a user space is active, and store
/// only into pages the TA may write.
#[test]
fn the_core_reaches_user_pages_only_with_a_user_space_active() {
    let core = Core::new();
    let space = Space::new(7);
    let (data, code) = (core.ta_page(), core.ta_page());
    space.map(layout::HEAP_BASE, data, UserPage::DATA);
    space.map(layout::PRIVATE_BASE, code, UserPage::CODE);
    let mut buf = [0u8; 4];
    core.platform.activate_user(None);
    assert_eq!(
        core.platform
            .read(&space, VirtAddr(layout::HEAP_BASE), &mut buf),
        Err(AccessFault::Permission(layout::HEAP_BASE))
    );
    core.platform.activate_user(Some(space.root));
    assert_eq!(core.platform.active_user(), Some(space.root));
    core.platform
        .write(&space, VirtAddr(layout::HEAP_BASE), b"abcd")
        .unwrap();
    core.platform
        .read(&space, VirtAddr(layout::HEAP_BASE), &mut buf)
        .unwrap();
    assert_eq!(&buf, b"abcd");
    assert_eq!(
        core.platform
            .write(&space, VirtAddr(layout::PRIVATE_BASE), b"x"),
        Err(AccessFault::Permission(layout::PRIVATE_BASE))
    );
    // Another machine on the same thread has its own current space.
    let other = SimPlatform::new(Arc::new(PhysMemory::new()));
    assert_eq!(other.active_user(), None);
    core.platform.activate_user(None);
}

/// Only TA RAM is written by `write_ta_ram`.
#[test]
fn write_ta_ram_writes_only_ta_ram() {
    let memory = Arc::new(PhysMemory::new());
    let bare = SimPlatform::new(memory.clone());
    assert_eq!(
        bare.write_ta_ram(PhysAddr(TA_RAM.0), b"x"),
        Err(AccessFault::NoMemory(TA_RAM.0))
    );
    let ram = PhysRange::new(PhysAddr(TA_RAM.0), TA_RAM.1).unwrap();
    let platform = bare.with_ta_ram(ram);
    platform
        .write_ta_ram(PhysAddr(TA_RAM.0 + 8), b"loaded")
        .unwrap();
    let mut buf = [0u8; 6];
    memory.read(TA_RAM.0 + 8, &mut buf);
    assert_eq!(&buf, b"loaded");
    let end = TA_RAM.0 + TA_RAM.1;
    assert_eq!(
        platform.write_ta_ram(PhysAddr(end - 2), b"abc"),
        Err(AccessFault::NoMemory(end - 2))
    );
    assert_eq!(
        platform.write_ta_ram(PhysAddr(TA_RAM.0 - 1), b"a"),
        Err(AccessFault::NoMemory(TA_RAM.0 - 1))
    );
}

/// Each image names its program by index, starts at its code, and has a data page.
#[test]
fn sim_images_name_their_programs() {
    let images = sim_ta_images();
    assert_eq!(images.len(), PROGRAMS.len());
    for (image, program) in images.iter().zip(PROGRAMS) {
        assert_eq!(image.uuid, program.uuid);
        assert_eq!(image.entry, layout::PRIVATE_BASE);
        let code = &image.segments[0];
        assert_eq!(code.access, SegmentAccess::ReadExecute);
        assert_eq!(sim_program(code.data).map(|p| p.name), Some(program.name));
        let data = &image.segments[1];
        assert_eq!(
            (data.access, data.mem_size),
            (SegmentAccess::ReadWrite, PAGE_SIZE)
        );
    }
    assert!(std::ptr::eq(
        sim_ta_images()[0].segments[0].data,
        images[0].segments[0].data
    ));
    assert_eq!(teeshm_ta::find(&peer::UUID).map(|(i, _)| i), Some(1));
}

/// The user TAs' pattern is the pseudo-TA's, so a client checks either the same way.
#[test]
fn the_user_tas_pattern_is_the_pseudo_tas() {
    for seed in [0, 1, 0xdead_beef, u64::MAX] {
        for index in [0, 1, 4095, 4096, 1 << 40, u64::MAX] {
            assert_eq!(
                pattern_byte(seed, index),
                teeshm_core::pta::pattern_byte(seed, index)
            );
        }
    }
}

/// A core that resumes a TA with another space current is caught: the TA would run in the
/// wrong address space on the machine.
#[test]
#[should_panic(expected = "another user space current")]
fn resuming_a_ta_in_another_space_is_caught() {
    struct Careless<'p> {
        platform: &'p SimPlatform,
        other: UserRoot,
    }
    impl UserTrapHandler for Careless<'_> {
        fn trap(&mut self, regs: &mut UserRegs, _: UserTrap) -> TrapAction {
            self.platform.activate_user(Some(self.other));
            regs.x[0] = 0;
            TrapAction::Resume
        }
    }
    let core = Core::new();
    let space = core.program_instance(&memtest::UUID).unwrap();
    let mut regs = UserRegs {
        pc: layout::PRIVATE_BASE,
        ..UserRegs::default()
    };
    regs.x[..4].copy_from_slice(&[UTEE_ENTRY_FUNC_OPEN_SESSION, 1, PARAMS_VA, 0]);
    let other = Space::new(99).root;
    let mut handler = Careless {
        platform: &core.platform,
        other,
    };
    core.platform
        .enter_user(space.root, &space, &mut regs, &mut handler);
}

/// The platform keeps the last lines the TAs logged, named by TA.
#[test]
fn ta_logs_keep_the_last_lines() {
    let platform = SimPlatform::default();
    for i in 0..TA_LOG_KEPT + 3 {
        platform.ta_log("teeshm.ta-memtest", &format!("line {i}"));
    }
    let logs = platform.ta_logs();
    assert_eq!(logs.len(), TA_LOG_KEPT);
    assert_eq!(logs[0], "teeshm.ta-memtest: line 3");
    assert_eq!(
        logs.last().map(String::as_str),
        Some(format!("teeshm.ta-memtest: line {}", TA_LOG_KEPT + 2).as_str())
    );
    assert_eq!(
        platform.clone().ta_logs().len(),
        TA_LOG_KEPT,
        "clones share it"
    );
}
