//! User mode on the host: the simulator runs a TA of `teeshm_ta` as a host function whose every
//! load, store and system call goes through the TA's own translation tables and the core's trap
//! handler, so a TA faults exactly where the MMU would make it fault at EL0.
//!
//! - [`UserMode`] for [`SimPlatform`]: `activate_user` records this simulated CPU's `TTBR0`
//!   (per host thread), `enter_user` fetches the "instruction" at `pc` (the image's code page
//!   names the program: [`SIM_TA_MAGIC`] and an index into [`PROGRAMS`]) and runs it with a
//!   [`SimUserEnv`], `write_ta_ram` loads TA RAM ([`SimPlatform::with_ta_ram`]).
//! - [`sim_ta_images`]: the images the simulator's core finds TAs by.
//!
//! Nothing here is global but the per-thread current space: a system call may enter another
//! TA (a TA invoking a TA), whose run nests on the host stack inside the first one's.

use crate::platform::SimPlatform;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use teeshm_abi::utee::layout;
use teeshm_core::platform::{
    TaPages, TrapAction, UserAccess, UserMode, UserRegs, UserRoot, UserTrap, UserTrapHandler,
};
use teeshm_core::ta::{Segment, SegmentAccess, TaImage};
use teeshm_core::{AccessFault, Translate};
use teeshm_mm::{MemKind, PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};
use teeshm_platform::RecordingTlb;
use teeshm_ta::{PROGRAMS, Program, Stop, UserEnv};

/// The first bytes of a simulator TA's code page; a little-endian `u64` index into
/// [`PROGRAMS`] follows.
pub const SIM_TA_MAGIC: [u8; 8] = *b"teeshmTA";

/// Bytes the simulator fetches at a TA's `pc`: the magic and the index.
pub const SIM_CODE_SIZE: usize = 16;

/// Times the core may resume a TA at one fault (or one undefined instruction) without
/// resolving it before the simulator gives up: a real CPU would loop forever, a test should
/// fail instead.
const MAX_RESUMES: usize = 64;

thread_local! {
    /// This simulated CPU's current user space (its `TTBR0_EL1`), one per machine, since a
    /// test may run several machines on one thread.
    static ACTIVE_USER: RefCell<Vec<(u64, UserRoot)>> = const { RefCell::new(Vec::new()) };
}

impl SimPlatform {
    /// The user space active on this simulated CPU, if any.
    pub fn active_user(&self) -> Option<UserRoot> {
        let machine = self.machine;
        ACTIVE_USER.with(|a| {
            a.borrow()
                .iter()
                .find(|(m, _)| *m == machine)
                .map(|&(_, root)| root)
        })
    }
}

/// The code page of program `index`.
fn code_of(index: usize) -> [u8; SIM_CODE_SIZE] {
    let mut code = [0u8; SIM_CODE_SIZE];
    code[..8].copy_from_slice(&SIM_TA_MAGIC);
    code[8..].copy_from_slice(&(index as u64).to_le_bytes());
    code
}

/// The program whose code starts with `code`, if it is a simulator TA's.
pub fn sim_program(code: &[u8]) -> Option<&'static Program> {
    let (magic, index) = code.get(..SIM_CODE_SIZE)?.split_at(8);
    if magic != SIM_TA_MAGIC {
        return None;
    }
    let index = u64::from_le_bytes(index.try_into().ok()?);
    PROGRAMS.get(usize::try_from(index).ok()?)
}

/// One image per program of [`PROGRAMS`]: a read-execute code page at
/// [`layout::PRIVATE_BASE`] holding [`SIM_TA_MAGIC`] and the program's index (the entry), and
/// one zeroed read-write data page after it.
pub fn sim_ta_images() -> Vec<TaImage> {
    // Segments hold `&'static` bytes: the code pages are made once per process.
    static CODE: OnceLock<Vec<[u8; SIM_CODE_SIZE]>> = OnceLock::new();
    let code = CODE.get_or_init(|| (0..PROGRAMS.len()).map(code_of).collect());
    code.iter()
        .zip(PROGRAMS)
        .map(|(code, program)| TaImage {
            uuid: program.uuid,
            name: program.name,
            segments: vec![
                Segment {
                    vaddr: layout::PRIVATE_BASE,
                    data: code,
                    mem_size: PAGE_SIZE,
                    access: SegmentAccess::ReadExecute,
                },
                Segment {
                    vaddr: layout::PRIVATE_BASE + PAGE_SIZE,
                    data: &[],
                    mem_size: PAGE_SIZE,
                    access: SegmentAccess::ReadWrite,
                },
            ],
            entry: layout::PRIVATE_BASE,
        })
        .collect()
}

/// A TA's view of the simulated machine while it runs: its accesses walk `map` (its own
/// tables) and need a user page that allows them; a fault or a system call traps to the core's
/// `handler` with `regs`.
pub struct SimUserEnv<'a> {
    platform: &'a SimPlatform,
    space: UserRoot,
    map: &'a dyn Translate,
    regs: &'a mut UserRegs,
    handler: &'a mut dyn UserTrapHandler,
}

impl<'a> SimUserEnv<'a> {
    /// The environment of the TA of `space` (translated by `map`) running with `regs`.
    pub fn new(
        platform: &'a SimPlatform,
        space: UserRoot,
        map: &'a dyn Translate,
        regs: &'a mut UserRegs,
        handler: &'a mut dyn UserTrapHandler,
    ) -> Self {
        Self {
            platform,
            space,
            map,
            regs,
            handler,
        }
    }

    /// Traps to the core. A TA resumes in the space current on its CPU, so the core must have
    /// made this TA's current again (after entering another TA, say) before it resumes it.
    fn trap(&mut self, trap: UserTrap) -> TrapAction {
        let action = self.handler.trap(self.regs, trap);
        if action == TrapAction::Resume {
            let active = self.platform.active_user();
            assert_eq!(
                active,
                Some(self.space),
                "the core resumed the TA of ASID {} with another user space current",
                self.space.asid
            );
        }
        action
    }

    /// The physical address of `va` for `access`, after the faults the core resolves (it may
    /// map the page and resume: the access is retried).
    fn translate(&mut self, va: u64, access: UserAccess) -> Result<u64, Stop> {
        for _ in 0..=MAX_RESUMES {
            let page = VirtAddr(va & !(PAGE_SIZE - 1));
            let allowed = match (self.map.translate_page(page), access) {
                (Some(t), UserAccess::Read) => {
                    matches!(t.kind, Some(MemKind::User(_))).then_some(t)
                }
                (Some(t), UserAccess::Write) => {
                    matches!(t.kind, Some(MemKind::User(p)) if p.writable).then_some(t)
                }
                (Some(t), UserAccess::Execute) => {
                    matches!(t.kind, Some(MemKind::User(p)) if p.executable).then_some(t)
                }
                (None, _) => None,
            };
            if let Some(t) = allowed {
                return Ok(t.pa.get() + va % PAGE_SIZE);
            }
            if self.trap(UserTrap::Abort { far: va, access }) == TrapAction::Exit {
                return Err(Stop);
            }
        }
        panic!(
            "the core resumed a TA {MAX_RESUMES} times at a fault at {va:#x} ({access:?}) without resolving it"
        );
    }

    /// Calls `f(memory, pa, range)` for each page piece of an access of `len` bytes at `va`,
    /// each page translated when the access reaches it (as a copy loop faults part way).
    fn access(
        &mut self,
        va: u64,
        len: usize,
        access: UserAccess,
        mut f: impl FnMut(&crate::PhysMemory, u64, std::ops::Range<usize>),
    ) -> Result<(), Stop> {
        let mut done = 0usize;
        while done < len {
            let at = va.wrapping_add(done as u64);
            let pa = self.translate(at, access)?;
            let n = (len - done).min((PAGE_SIZE - at % PAGE_SIZE) as usize);
            f(self.platform.memory(), pa, done..done + n);
            done += n;
        }
        Ok(())
    }

    /// The program at `pc`: fetched through an executable page, else the TA traps as an
    /// undefined instruction would.
    fn fetch(&mut self) -> Result<&'static Program, Stop> {
        for _ in 0..=MAX_RESUMES {
            let mut code = [0u8; SIM_CODE_SIZE];
            let pc = self.regs.pc;
            self.access(pc, SIM_CODE_SIZE, UserAccess::Execute, |m, pa, r| {
                m.read(pa, &mut code[r]);
            })?;
            if let Some(program) = sim_program(&code) {
                return Ok(program);
            }
            if self.trap(UserTrap::Other { esr: 0 }) == TrapAction::Exit {
                return Err(Stop);
            }
        }
        panic!("the core resumed a TA {MAX_RESUMES} times at an undefined instruction");
    }

    /// After its program: the TA has nothing left to run, as if it ran into an undefined
    /// instruction, until the core ends it.
    fn run_off_the_end(&mut self) {
        for _ in 0..=MAX_RESUMES {
            if self.trap(UserTrap::Other { esr: 0 }) == TrapAction::Exit {
                return;
            }
        }
        panic!("the core resumed a TA {MAX_RESUMES} times after its program ended");
    }
}

impl UserEnv for SimUserEnv<'_> {
    fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Stop> {
        self.access(va, buf.len(), UserAccess::Read, |m, pa, r| {
            m.read(pa, &mut buf[r]);
        })
    }

    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Stop> {
        self.access(va, data.len(), UserAccess::Write, |m, pa, r| {
            m.write(pa, &data[r]);
        })
    }

    fn syscall(&mut self, nr: u64, args: [u64; 8]) -> Result<u64, Stop> {
        self.regs.x[..8].copy_from_slice(&args);
        self.regs.x[8] = nr;
        match self.trap(UserTrap::Syscall) {
            TrapAction::Resume => Ok(self.regs.x[0]),
            TrapAction::Exit => Err(Stop),
        }
    }
}

/// The simulated secure RAM TA instances take their pages from: a free list over its pages
/// (none in the default one).
#[derive(Debug, Default)]
pub struct SimTaRam {
    range: Option<PhysRange>,
    free: Mutex<Vec<PhysAddr>>,
}

impl SimTaRam {
    /// Every page of `range` free.
    pub fn new(range: PhysRange) -> Self {
        let first = range.start().get().div_ceil(PAGE_SIZE);
        let end = range.end().get() / PAGE_SIZE;
        Self {
            range: Some(range),
            // Highest first, so that pages are handed out from the bottom.
            free: Mutex::new(
                (first..end)
                    .rev()
                    .map(|p| PhysAddr(p * PAGE_SIZE))
                    .collect(),
            ),
        }
    }

    /// Pages free now.
    pub fn free_pages(&self) -> u64 {
        self.free.lock().map_or(0, |f| f.len() as u64)
    }

    /// Pages in all.
    pub fn total_pages(&self) -> u64 {
        self.range.map_or(0, |r| r.len() / PAGE_SIZE)
    }
}

impl TaPages for SimTaRam {
    fn alloc(&self) -> Option<PhysAddr> {
        self.free.lock().ok()?.pop()
    }

    fn free(&self, page: PhysAddr) {
        if let Ok(mut free) = self.free.lock() {
            free.push(page);
        }
    }
}

impl UserMode for SimPlatform {
    /// User translations are never cached by the simulated TLBs (`SimPlatform::translate`),
    /// so a user space's invalidations are only counted.
    type UserTlb = RecordingTlb;

    fn user_tlb(&self, _asid: u16) -> RecordingTlb {
        RecordingTlb::counting()
    }

    fn activate_user(&self, space: Option<UserRoot>) {
        let machine = self.machine;
        ACTIVE_USER.with(|a| {
            let mut a = a.borrow_mut();
            a.retain(|(m, _)| *m != machine);
            if let Some(root) = space {
                a.push((machine, root));
            }
        });
    }

    fn enter_user(
        &self,
        space: UserRoot,
        map: &dyn Translate,
        regs: &mut UserRegs,
        handler: &mut dyn UserTrapHandler,
    ) {
        self.activate_user(Some(space));
        let [x0, x1, x2, x3] = [regs.x[0], regs.x[1], regs.x[2], regs.x[3]];
        let mut env = SimUserEnv::new(self, space, map, regs, handler);
        let Ok(program) = env.fetch() else {
            return;
        };
        if teeshm_ta::run(program, &mut env, x0, x1, x2, x3).is_ok() {
            // The core resumed the TA after its RETURN.
            env.run_off_the_end();
        }
    }

    fn ta_pages(&self) -> Arc<dyn TaPages> {
        match &self.ta_ram {
            Some(ram) => ram.clone(),
            None => Arc::new(SimTaRam::default()),
        }
    }

    fn write_ta_ram(&self, pa: PhysAddr, data: &[u8]) -> Result<(), AccessFault> {
        let inside = self
            .ta_ram
            .as_ref()
            .and_then(|r| r.range)
            .is_some_and(|ram| {
                pa.get() >= ram.start().get()
                    && pa
                        .get()
                        .checked_add(data.len() as u64)
                        .is_some_and(|end| end <= ram.end().get())
            });
        if !inside {
            return Err(AccessFault::NoMemory(pa.get()));
        }
        self.memory().write(pa.get(), data);
        Ok(())
    }

    fn ta_log(&self, ta: &str, message: &str) {
        let mut log = self
            .ta_log_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if log.len() == TA_LOG_KEPT {
            log.pop_front();
        }
        log.push_back(format!("{ta}: {message}"));
    }
}

/// Lines of TA logs a platform keeps (the last ones).
pub const TA_LOG_KEPT: usize = 1024;

impl SimPlatform {
    /// The last [`TA_LOG_KEPT`] lines the TAs logged (`TEE_SCN_LOG`), oldest first, each as
    /// `"<TA name>: <message>"`.
    pub fn ta_logs(&self) -> Vec<String> {
        let log = self
            .ta_log_lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
