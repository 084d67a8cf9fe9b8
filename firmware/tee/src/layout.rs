//! The secure RAM layout the linker script (`firmware/secure.ld`) makes, as address ranges.

use core::ops::Range;

unsafe extern "C" {
    static __text_start: u8;
    static __ro_end: u8;
    static __rw_start: u8;
    static __tee_stacks_start: u8;
    static __heap_start: u8;
    static __heap_end: u8;
    static __el3_start: u8;
    static __el3_end: u8;
}

macro_rules! addr {
    ($sym:ident) => {
        // Only the address of the linker symbol is taken; nothing is read through it.
        (&raw const $sym) as usize as u64
    };
}

/// Secure RAM: 16 MiB at 0x0e00_0000.
pub const SECURE_RAM: (u64, u64) = (0x0e00_0000, 16 << 20);
/// Normal-world RAM as QEMU is started (`-m 1024`): 1 GiB at 0x4000_0000.
pub const NS_RAM: (u64, u64) = (0x4000_0000, 1 << 30);
/// The normal world's PL011 UART page (a device region of the core's memory map).
pub const UART: (u64, u64) = (0x0900_0000, 0x1000);
/// The secure PL011 of QEMU `virt` with `secure=on` (`VIRT_SECURE_UART`, only on the secure
/// side of the bus): the firmware's console, mapped statically at VA == PA; the core's
/// `ioremap` maps it once more in the window when the pseudo-TA probes it.
pub const SECURE_UART: (u64, u64) = (teeshm_fw_common::console::SECURE_UART_BASE as u64, 0x1000);

/// Code and read-only data (mapped read-only, executable).
pub fn code() -> Range<u64> {
    addr!(__text_start)..addr!(__ro_end)
}

/// Initialised and zeroed data, up to the stacks (read-write, never executable).
pub fn data() -> Range<u64> {
    addr!(__rw_start)..addr!(__tee_stacks_start)
}

/// Bytes of each CPU's block in `.stacks` (secure.ld): a guard page, the stack, the exception
/// stack. `entry.rs`'s assembly takes a CPU's stacks at the same offsets.
pub const CPU_STACKS: u64 = 0x13000;
/// Where in a CPU's block its stack ends (its top) and its exception stack starts.
pub const STACK_TOP: u64 = 0x11000;

/// CPU `cpu`'s guard page below its stack, left unmapped.
pub fn stack_guard(cpu: usize) -> Range<u64> {
    let base = addr!(__tee_stacks_start) + cpu as u64 * CPU_STACKS;
    base..base + 0x1000
}

/// CPU `cpu`'s stack and exception stack (read-write, never executable).
pub fn stacks(cpu: usize) -> Range<u64> {
    let base = addr!(__tee_stacks_start) + cpu as u64 * CPU_STACKS;
    base + 0x1000..base + CPU_STACKS
}

/// The heap.
pub fn heap() -> Range<u64> {
    addr!(__heap_start)..addr!(__heap_end)
}

/// EL3's private state and stacks (never mapped at S-EL1).
pub fn el3() -> Range<u64> {
    addr!(__el3_start)..addr!(__el3_end)
}
