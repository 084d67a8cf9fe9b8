//! The normal-world test client: NS-EL1, MMU off, loaded at 0x4000_0000. It speaks to the
//! secure world only by SMC, through `teeshm-nw`'s driver and client API (and raw SMCs for the
//! hostile cases), prints one line per case, then `N passed, M failed`, and asks the monitor to
//! end the run (`SIP_TEESHM_TEST_EXIT`).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod cases;
mod irq;
mod ram;
mod smc;

use buddy_system_allocator::LockedHeap;
use core::sync::atomic::{AtomicU64, Ordering};
use teeshm_fw_common::{fid, println};

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // An arm64 Linux Image header (the kernel's Documentation/arch/arm64/booting.rst), so that
    // Xen's toolstack loads the image as a domU's kernel at RAM + text_offset (0x40200000,
    // where it is linked); booted directly, the first instruction just jumps over it.
    b       1f
    .word   0
    .quad   0x200000
    .quad   __client_end - 0x40200000
    .quad   0x2
    .quad   0, 0, 0
    .ascii  "ARM\x64"
    .word   0
1:  ldr     x0, =__stack_top
    mov     sp, x0
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    ldr     x0, =client_vectors
    msr     vbar_el1, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
0:  cmp     x0, x1
    b.hs    3f
    stp     xzr, xzr, [x0], #16
    b       0b
3:  bl      client_main
2:  wfe
    b       2b
    .ltorg

    // A CPU that PSCI CPU_ON brought up (x0 = the context id: its index, 1..7): its own
    // stack (client.ld: CPU n's top at __secondary_stacks + n * 64 KiB), FP on, the vectors.
    .global client_secondary_entry
client_secondary_entry:
    ldr     x1, =__secondary_stacks
    add     x1, x1, x0, lsl #16
    mov     sp, x1
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    ldr     x1, =client_vectors
    msr     vbar_el1, x1
    isb
    bl      client_cpu_main
5:  wfe
    b       5b
    .ltorg

    .section .text.vectors, "ax"
    .balign 0x800
client_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\kind
    b       client_vector_common
    .endr
client_vector_common:
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    bl      client_exception
4:  wfe
    b       4b
"#
);

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

unsafe extern "C" {
    static __heap_start: u8;
    static __heap_end: u8;
}

/// Cases passed and failed so far (the panic and exception paths report them too).
pub static PASSED: AtomicU64 = AtomicU64::new(0);
/// See [`PASSED`].
pub static FAILED: AtomicU64 = AtomicU64::new(0);

/// Tells the monitor the client is done; the monitor ends the run.
pub fn test_exit(passed: u64, failed: u64) -> ! {
    smc::raw(teeshm_abi::smc::SmcRegs::call(
        fid::SIP_TEESHM_TEST_EXIT,
        &[passed, failed],
    ));
    loop {
        core::hint::spin_loop();
    }
}

#[unsafe(no_mangle)]
extern "C" fn client_main() -> ! {
    let start = (&raw const __heap_start) as usize;
    let end = (&raw const __heap_end) as usize;
    // SAFETY: the heap range of client.ld is NS RAM that nothing else uses (the image ends below
    // it, the page pool lent to the TEE starts above it); init runs once, before any allocation.
    unsafe { HEAP.lock().init(start, end - start) };
    if cfg!(feature = "xen-domu") {
        xen_domu_main();
    }
    cases::run();
    let stats = smc::raw(teeshm_abi::smc::SmcRegs::call(
        fid::SIP_TEESHM_MONITOR_STATS,
        &[],
    ));
    println!(
        "client: the monitor forwarded {} calls to the core in {} world switches; {} ms since \
         the core was ready",
        stats.a[1],
        stats.a[2],
        stats.a[3] / 1000
    );
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("{passed} passed, {failed} failed");
    test_exit(passed, failed)
}

/// A secondary CPU's Rust code (from `client_secondary_entry`): its share of the every-CPU
/// group, then PSCI `CPU_OFF`.
#[unsafe(no_mangle)]
extern "C" fn client_cpu_main(cpu: u64) -> ! {
    #[cfg(not(feature = "fault-test"))]
    cases::every_cpu_worker(cpu as usize);
    smc::raw(teeshm_abi::smc::SmcRegs::call(fid::psci::CPU_OFF, &[]));
    println!("client: CPU {cpu}: CPU_OFF returned");
    loop {
        core::hint::spin_loop();
    }
}

/// Xen's emulated SBSA UART in a domU (`GUEST_PL011_BASE` of Xen's public arch-arm.h, with
/// `vuart = "sbsa_uart"` in the domain's configuration).
#[cfg(feature = "xen-domu")]
const XEN_VUART: usize = 0x2200_0000;

/// As a Xen domU: the cases, their summary, then the calls left waiting stay so until Xen
/// destroys the domain (dom0 does once it sees the summary). Returns only in other builds.
#[cfg(not(feature = "xen-domu"))]
fn xen_domu_main() {}

/// See the other `xen_domu_main`.
#[cfg(feature = "xen-domu")]
fn xen_domu_main() {
    teeshm_fw_common::console::use_uart_at(XEN_VUART);
    let note = cases::xen_domu::run();
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("{passed} passed, {failed} failed");
    println!("{note}");
    loop {
        // SAFETY: WFE only waits for an event; nothing of Rust's state is involved.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
extern "C" fn client_exception(kind: u64, esr: u64, far: u64, elr: u64) -> ! {
    println!(
        "client: exception (vector {kind}) at NS-EL1: ESR {esr:#x}, FAR {far:#x}, ELR {elr:#x}"
    );
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("{passed} passed, {} failed", failed + 1);
    test_exit(passed, failed + 1)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("client: panic: {info}");
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("{passed} passed, {} failed", failed + 1);
    test_exit(passed, failed + 1)
}
