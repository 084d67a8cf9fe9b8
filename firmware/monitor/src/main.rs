//! The secure image of teeshm on QEMU `virt,secure=on`: EL3 boot, the EL3 monitor, and the
//! S-EL1 core (`teeshm-fw-tee`) linked into one image for `-bios`.
//!
//! Boot (`_start`, in flash, EL3, MMU off): every CPU but the first waits in the holding pen
//! (`park`) until PSCI `CPU_ON` releases it; the first stops trapping FP at EL3, copies the
//! image to secure RAM, zeroes `.bss` and `.el3`, installs the EL3 vectors, takes its EL3
//! stack, and runs [`monitor::monitor_main`], which enters the S-EL1 core's boot entry. A
//! released CPU sets its own EL3 registers and stack and runs `monitor::monitor_secondary`.
//! The monitor itself runs with its MMU off and never allocates.
//!
//! World switch (`el3_lower_sync` / `el3_exit`): SP_EL3 always points at the context of the
//! world that is running, so the entry stores that world's x0..x30, SP_EL0, ELR_EL3,
//! SPSR_EL3 and FP/SIMD registers (q0..q31, FPSR, FPCR: SMCCC has an SMC preserve them, and
//! the Rust code of EL3 and S-EL1 uses them) there, the Rust handler picks the world to resume
//! (swapping the EL1 system registers and SCR_EL3.NS when it changes), and the exit restores
//! that world from its context and `eret`s.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod context;
mod monitor;

use teeshm_fw_common::{println, semihosting};

core::arch::global_asm!(
    r#"
    // What every CPU sets at EL3 before its first Rust code: SCTLR_EL3 (MMU off), the EL3
    // vectors, and SP_EL0 as the stack pointer. Clobbers x0.
    .macro el3_registers
    ldr     x0, ={sctlr_el3}
    msr     sctlr_el3, x0
    ldr     x0, =el3_vectors
    msr     vbar_el3, x0
    isb
    msr     spsel, #0
    .endm

    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x1, x0, #0xffffff
    cbz     x1, 1f
    // A secondary CPU: served only if Aff1..Aff3 are 0 and Aff0 < MAX_CPUS; it waits in the
    // holding pen until CPU_ON releases it.
    ldr     x2, =0xff00ffff00
    tst     x0, x2
    b.ne    9f
    and     x0, x0, #0xff
    cmp     x0, #{max_cpus}
    b.lo    park
9:  wfe
    b       9b
1:  msr     cptr_el3, xzr
    isb
    ldr     x0, =__text_start
    ldr     x1, =__data_end
    ldr     x2, =__image_lma
2:  cmp     x0, x1
    b.hs    3f
    ldp     x3, x4, [x2], #16
    stp     x3, x4, [x0], #16
    b       2b
3:  ldr     x0, =__bss_start
    ldr     x1, =__bss_end
4:  cmp     x0, x1
    b.hs    5f
    stp     xzr, xzr, [x0], #16
    b       4b
5:  ldr     x0, =__el3_start
    ldr     x1, =__el3_end
6:  cmp     x0, x1
    b.hs    7f
    stp     xzr, xzr, [x0], #16
    b       6b
7:  el3_registers
    ldr     x0, =__el3_stack_top
    mov     sp, x0
    ldr     x0, =monitor_main
    br      x0

    // The holding pen (x0 = the CPU's index): WFE until the CPU's release word is RELEASE
    // (polled from flash: the word lies in secure RAM, zeroed by the boot CPU with .el3), then
    // the EL3 registers the boot CPU set for itself, this CPU's EL3 stack, and
    // monitor_secondary(index). CPU_OFF comes back here.
    .global park
park:
    mov     x19, x0
    ldr     x20, =monitor_release
    ldr     x21, ={release}
10: wfe
    ldr     x1, [x20, x19, lsl #3]
    cmp     x1, x21
    b.ne    10b
    msr     cptr_el3, xzr
    el3_registers
    ldr     x0, =__el3_stack_top
    mov     x1, #{el3_stack}
    msub    x0, x19, x1, x0
    mov     sp, x0
    mov     x0, x19
    ldr     x1, =monitor_secondary
    br      x1
    .ltorg

    .section .text.vectors.el3, "ax"
    .balign 0x800
el3_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7
    .balign 0x80
    mov     x0, #\kind
    b       el3_fatal
    .endr
    .balign 0x80
    b       el3_lower_sync
    .irp kind, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\kind
    b       el3_fatal
    .endr

    .section .text.el3, "ax"
el3_lower_sync:
    stp     x0, x1, [sp, #0x00]
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x19, [sp, #0x90]
    stp     x20, x21, [sp, #0xa0]
    stp     x22, x23, [sp, #0xb0]
    stp     x24, x25, [sp, #0xc0]
    stp     x26, x27, [sp, #0xd0]
    stp     x28, x29, [sp, #0xe0]
    mrs     x0, sp_el0
    stp     x30, x0, [sp, #0xf0]
    mrs     x0, elr_el3
    mrs     x1, spsr_el3
    stp     x0, x1, [sp, #0x100]
    add     x0, sp, #{fp_offset}
    stp     q0, q1, [x0, #0x0]
    stp     q2, q3, [x0, #0x20]
    stp     q4, q5, [x0, #0x40]
    stp     q6, q7, [x0, #0x60]
    stp     q8, q9, [x0, #0x80]
    stp     q10, q11, [x0, #0xa0]
    stp     q12, q13, [x0, #0xc0]
    stp     q14, q15, [x0, #0xe0]
    stp     q16, q17, [x0, #0x100]
    stp     q18, q19, [x0, #0x120]
    stp     q20, q21, [x0, #0x140]
    stp     q22, q23, [x0, #0x160]
    stp     q24, q25, [x0, #0x180]
    stp     q26, q27, [x0, #0x1a0]
    stp     q28, q29, [x0, #0x1c0]
    stp     q30, q31, [x0, #0x1e0]
    mrs     x1, fpsr
    mrs     x2, fpcr
    add     x0, x0, #0x200
    stp     x1, x2, [x0]
    mov     x0, sp
    msr     spsel, #0
    mrs     x2, mpidr_el1
    and     x2, x2, #0xff
    ldr     x1, =__el3_stack_top
    mov     x3, #{el3_stack}
    msub    x1, x2, x3, x1
    mov     sp, x1
    bl      el3_handle_lower
    b       el3_exit

    .global el3_exit
el3_exit:
    msr     spsel, #1
    mov     sp, x0
    add     x1, sp, #{fp_offset}
    ldp     q0, q1, [x1, #0x0]
    ldp     q2, q3, [x1, #0x20]
    ldp     q4, q5, [x1, #0x40]
    ldp     q6, q7, [x1, #0x60]
    ldp     q8, q9, [x1, #0x80]
    ldp     q10, q11, [x1, #0xa0]
    ldp     q12, q13, [x1, #0xc0]
    ldp     q14, q15, [x1, #0xe0]
    ldp     q16, q17, [x1, #0x100]
    ldp     q18, q19, [x1, #0x120]
    ldp     q20, q21, [x1, #0x140]
    ldp     q22, q23, [x1, #0x160]
    ldp     q24, q25, [x1, #0x180]
    ldp     q26, q27, [x1, #0x1a0]
    ldp     q28, q29, [x1, #0x1c0]
    ldp     q30, q31, [x1, #0x1e0]
    add     x1, x1, #0x200
    ldp     x2, x3, [x1]
    msr     fpsr, x2
    msr     fpcr, x3
    ldp     x0, x1, [sp, #0x100]
    msr     elr_el3, x0
    msr     spsr_el3, x1
    ldp     x30, x0, [sp, #0xf0]
    msr     sp_el0, x0
    ldp     x2, x3, [sp, #0x10]
    ldp     x4, x5, [sp, #0x20]
    ldp     x6, x7, [sp, #0x30]
    ldp     x8, x9, [sp, #0x40]
    ldp     x10, x11, [sp, #0x50]
    ldp     x12, x13, [sp, #0x60]
    ldp     x14, x15, [sp, #0x70]
    ldp     x16, x17, [sp, #0x80]
    ldp     x18, x19, [sp, #0x90]
    ldp     x20, x21, [sp, #0xa0]
    ldp     x22, x23, [sp, #0xb0]
    ldp     x24, x25, [sp, #0xc0]
    ldp     x26, x27, [sp, #0xd0]
    ldp     x28, x29, [sp, #0xe0]
    ldp     x0, x1, [sp, #0x00]
    eret

el3_fatal:
    ldr     x1, =__el3_fatal_stack_top
    mov     sp, x1
    mrs     x1, esr_el3
    mrs     x2, elr_el3
    mrs     x3, far_el3
    mrs     x4, spsr_el3
    bl      el3_fatal_rust
8:  wfe
    b       8b
    .ltorg
"#,
    sctlr_el3 = const monitor::SCTLR_EL3_VALUE,
    fp_offset = const context::FP_OFFSET,
    max_cpus = const teeshm_fw_common::cpu::MAX_CPUS,
    release = const monitor::RELEASE,
    el3_stack = const EL3_STACK_SIZE,
);

/// Bytes of each CPU's EL3 stack (`.el3` in secure.ld holds MAX_CPUS of them below
/// `__el3_stack_top`, CPU n's top at `__el3_stack_top - n * EL3_STACK_SIZE`).
const EL3_STACK_SIZE: usize = 0x4000;

/// The exception level the CPU runs at now.
fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effect and is allowed at every EL.
    unsafe { core::arch::asm!("mrs {}, currentel", out(reg) el, options(nomem, nostack)) };
    (el >> 2) & 3
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if current_el() == 3 {
        println!("monitor: panic: {info}");
        semihosting::exit(1);
    }
    teeshm_fw_tee::report_panic(info)
}
