//! What the core needs from the machine beyond the memory manager's seam: reading and writing
//! shared memory through the core's own virtual addresses.
//!
//! The core never touches physical memory behind its own back. On the host the platform walks
//! the core's translation tables ([`Translate`]) and faults on a missing or wrong mapping; on
//! hardware the MMU does the same walk and the platform simply copies through the pointer.

use teeshm_mm::tables::Translation;
use teeshm_mm::{PhysAddr, ShmWindow, VirtAddr};
use teeshm_platform::TlbMaintenance;

/// The core's stage-1 translation, as the platform sees it.
pub trait Translate {
    /// The translation of the 4 KiB page at `page`, if a valid entry maps it.
    fn translate_page(&self, page: VirtAddr) -> Option<Translation>;
}

impl<T: TlbMaintenance> Translate for ShmWindow<T> {
    fn translate_page(&self, page: VirtAddr) -> Option<Translation> {
        self.tables().translate_page(page)
    }
}

/// An access through a virtual address that the translation does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessFault {
    /// No valid translation for the page of this address.
    #[error("translation fault at {0:#x}")]
    NotMapped(u64),
    /// The page is mapped, but not as memory the core may read or write (device memory, or
    /// attributes teeshm never writes).
    #[error("permission fault at {0:#x}")]
    Permission(u64),
    /// The access would run past the end of the address space.
    #[error("access at {0:#x} wraps the address space")]
    Wrap(u64),
    /// The physical memory behind a valid mapping does not exist (simulator only).
    #[error("no memory behind physical address {0:#x}")]
    NoMemory(u64),
}

/// Access to memory through the core's virtual addresses.
///
/// Implementations must translate every page of the access with `map` (or let the MMU do it)
/// and fail, without a partial side effect the caller relies on, when a page is not mapped.
pub trait Platform: Send + Sync + UserMode {
    /// The TLB maintenance the translation tables use on this machine.
    type Tlb: TlbMaintenance + Send;

    /// Copies `buf.len()` bytes from virtual address `va` into `buf`.
    ///
    /// # Errors
    /// An [`AccessFault`] naming the first address that could not be read.
    fn read(&self, map: &dyn Translate, va: VirtAddr, buf: &mut [u8]) -> Result<(), AccessFault>;

    /// Copies `data` to virtual address `va`.
    ///
    /// # Errors
    /// An [`AccessFault`] naming the first address that could not be written.
    fn write(&self, map: &dyn Translate, va: VirtAddr, data: &[u8]) -> Result<(), AccessFault>;

    /// Reads the 32-bit device register at `va` (4-byte aligned) with one single-copy atomic
    /// load, as device memory needs; `map` must translate the page as [`MemKind::Device`].
    ///
    /// # Errors
    /// An [`AccessFault`] when the page is not mapped as a device.
    ///
    /// [`MemKind::Device`]: teeshm_mm::MemKind::Device
    fn read_io32(&self, map: &dyn Translate, va: VirtAddr) -> Result<u32, AccessFault>;

    /// Whether an interrupt of the normal world is pending on this CPU. The secure world runs
    /// with interrupts masked; a long yielding call asks between chunks of its work and, when
    /// one is, suspends with `RPC_FOREIGN_INTR` so that the normal world serves it. Fast calls
    /// and the core's critical sections never ask. The default: never.
    fn foreign_interrupt_pending(&self) -> bool {
        false
    }
}

/// A TA's address space as the platform makes it current: the root of its translation tables
/// and its ASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRoot {
    /// Physical address of the root (level 1) table.
    pub table: PhysAddr,
    /// The space's address-space identifier (1..=255; 0 is the core's).
    pub asid: u16,
}

/// A TA's general-purpose registers, its stack pointer and its program counter: what the core
/// sets before entering it and reads and changes at each trap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// `x0`..`x30`.
    pub x: [u64; 31],
    /// `SP_EL0`.
    pub sp: u64,
    /// Where the TA goes on: its entry point, or after the trap (`ELR_EL1`).
    pub pc: u64,
}

/// What kind of access faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAccess {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Execute,
}

/// Why a TA stopped and entered the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserTrap {
    /// `svc #0`: the call number is in `x8`, its arguments in `x0`..`x7`; `pc` is already past
    /// the instruction.
    Syscall,
    /// A translation or permission fault at `far`; `pc` is the faulting instruction, so
    /// resuming retries it.
    Abort {
        /// The faulting address (`FAR_EL1`).
        far: u64,
        /// What was tried.
        access: UserAccess,
    },
    /// Anything else (an undefined instruction, an alignment fault, a breakpoint): `esr` is
    /// `ESR_EL1` (0 on the host).
    Other {
        /// The exception syndrome.
        esr: u64,
    },
}

/// What the core does with a trapped TA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapAction {
    /// Go on at `regs.pc` with `regs` as the core left them.
    Resume,
    /// The TA is not resumed: [`Platform::enter_user`] returns.
    Exit,
}

/// The core's side of user mode: it handles every trap of a TA it entered.
pub trait UserTrapHandler {
    /// Handles `trap`; may change `regs` (a system call's result in `x0`).
    fn trap(&mut self, regs: &mut UserRegs, trap: UserTrap) -> TrapAction;
}

/// The source of TA instances' pages: on the firmware 4 KiB blocks of the secure heap (at VA ==
/// PA), in the simulator pages of a simulated secure region. The core charges each page to the
/// guest the instance belongs to (its secure-heap quota), so the heap budget covers them.
pub trait TaPages: Send + Sync {
    /// A free page, not zeroed (`None`: none left).
    fn alloc(&self) -> Option<PhysAddr>;
    /// Gives back a page [`alloc`](Self::alloc) gave.
    fn free(&self, page: PhysAddr);
}

/// User mode: running trusted applications at EL0, each in its own translation regime.
///
/// The core builds each TA's tables (its `UserRoot`); the platform switches to them and runs
/// the TA. A trap may enter another TA (a TA invoking a TA) before it returns: the platform
/// keeps one frame per entry, as a stack.
pub trait UserMode {
    /// The TLB maintenance of a user address space's tables: by its ASID.
    type UserTlb: TlbMaintenance + Send + Sync + 'static;

    /// The TLB maintenance for the tables of the space tagged `asid`.
    fn user_tlb(&self, asid: u16) -> Self::UserTlb;

    /// Makes `space` the current user address space of this CPU (`None`: none), so that the
    /// core's [`Platform::read`] and [`Platform::write`] through a TA's addresses reach it.
    fn activate_user(&self, space: Option<UserRoot>);

    /// Runs the TA of `space` (made current first) from `regs` at EL0 until `handler` answers
    /// [`TrapAction::Exit`] to one of its traps. `map` is the same space's translation, for
    /// platforms that walk it in software.
    fn enter_user(
        &self,
        space: UserRoot,
        map: &dyn Translate,
        regs: &mut UserRegs,
        handler: &mut dyn UserTrapHandler,
    );

    /// Where TA instances' pages come from (secure memory the core may hand a TA), shared by
    /// the instances, which give their pages back when they go.
    fn ta_pages(&self) -> alloc::sync::Arc<dyn TaPages>;

    /// Writes `data` at `pa` into a page [`TaPages::alloc`] gave (loading an image, zeroing a
    /// stack): memory that no TA can reach yet.
    ///
    /// # Errors
    /// [`AccessFault::NoMemory`] if `pa..pa + len` is not memory `TaPages` hands out.
    fn write_ta_ram(&self, pa: PhysAddr, data: &[u8]) -> Result<(), AccessFault>;

    /// A TA's `TEE_SCN_LOG` message, for the secure console (the default drops it).
    fn ta_log(&self, ta: &str, message: &str) {
        let _ = (ta, message);
    }
}
