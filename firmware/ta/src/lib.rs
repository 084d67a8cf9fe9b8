//! The user TAs of `teeshm-ta` as S-EL0 executables: what each binary shares.
//!
//! - [`FwEnv`]: the firmware's [`UserEnv`]: loads and stores through raw pointers in the TA's
//!   own address space (an address the TA may not touch traps to the core, which kills the
//!   TA), system calls with `svc #0` (OP-TEE's convention: the number in `x8`, arguments in
//!   `x0`..`x7`, the result in `x0`).
//! - [`ta_binary!`]: a binary's `_start` (the ELF entry): the core enters it at EL0 with `x0` =
//!   entry function, `x1` = session, `x2` = address of the `utee_params`, `x3` = command and
//!   SP on the TA's stack (below `layout::STACK_TOP`); it runs the program
//!   ([`teeshm_ta::run`]), which ends with the RETURN system call.
//! - The panic handler: the message through the LOG system call, then PANIC.
//! - No Rust heap: a TA keeps its memory in its own heap region through `teeshm_ta::libutee`
//!   (`teeshm-abi` links `alloc`, which needs a global allocator): every allocation fails,
//!   and the TA panics.
//!
//! Linked by `firmware/ta.ld`: code at `PRIVATE_BASE` (0x8000_0000), read-only data and data
//! in page-aligned segments of their own (RX, R, RW: never writable and executable), all below
//! `HEAP_BASE`. xtask builds these binaries before the secure image, which links them
//! (`firmware/tee/src/tas.rs`).
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use core::fmt::Write;
use teeshm_abi::gp::TEE_ERROR_GENERIC;
use teeshm_abi::utee::TEE_SCN_RETURN;
use teeshm_fw_common::volatile;
use teeshm_ta::{Program, Stop, UserEnv};

/// The global allocator of a TA: none (see the crate's documentation).
struct NoHeap;

// SAFETY: `alloc` never hands out memory (a null pointer is the allocation failure the
// contract allows), so there is nothing `dealloc` could be given.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}

#[global_allocator]
static NO_HEAP: NoHeap = NoHeap;

/// The firmware's TA environment: the TA's own loads, stores and `svc #0`.
#[derive(Debug, Default)]
pub struct FwEnv;

impl UserEnv for FwEnv {
    fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Stop> {
        // SAFETY: an access of the TA's own space: if the TA's translation does not allow it,
        // it traps to the core, which kills the TA (or maps the page and retries it); no Rust
        // object lives at a TA address the program names (its heap, its parameters and the
        // memrefs mapped for it, which the normal world or another TA may change meanwhile).
        unsafe { volatile::read_bytes(buf, va as usize) };
        Ok(())
    }

    fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Stop> {
        // SAFETY: as for `read`: a store the TA's translation allows or that traps.
        unsafe { volatile::write_bytes(va as usize, data) };
        Ok(())
    }

    fn syscall(&mut self, nr: u64, args: [u64; 8]) -> Result<u64, Stop> {
        let [a0, a1, a2, a3, a4, a5, a6, a7] = args;
        let result: u64;
        // SAFETY: `svc #0` enters the core, which serves the call and resumes here with the
        // result in x0 (every other register as it was: the C ABI's caller-saved ones are
        // declared clobbered all the same), or never resumes the TA (RETURN, PANIC, a call it
        // kills the TA in). Pointers among the arguments name the TA's own memory, which the
        // core reads and writes only as the TA may.
        unsafe {
            core::arch::asm!(
                "svc #0",
                inlateout("x0") a0 => result,
                in("x1") a1,
                in("x2") a2,
                in("x3") a3,
                in("x4") a4,
                in("x5") a5,
                in("x6") a6,
                in("x7") a7,
                in("x8") nr,
                clobber_abi("C"),
                options(nostack)
            );
        }
        Ok(result)
    }
}

/// Runs `program` with the entry registers and, should the core ever resume the TA after its
/// RETURN (it must not), returns again, for ever.
pub fn start(program: &Program, x0: u64, x1: u64, x2: u64, x3: u64) -> ! {
    let mut env = FwEnv;
    let _ = teeshm_ta::run(program, &mut env, x0, x1, x2, x3);
    loop {
        let code = u64::from(TEE_ERROR_GENERIC);
        let _ = env.syscall(TEE_SCN_RETURN, [code, 0, 0, 0, 0, 0, 0, 0]);
    }
}

/// The ELF entry `_start` of a TA binary running `$program` (a `teeshm_ta::Program`).
#[macro_export]
macro_rules! ta_binary {
    ($program:path) => {
        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            ".type _start, %function",
            "_start:",
            // No frame to unwind to; SP is already on the TA's stack, x0..x3 the entry's.
            "    mov x29, xzr",
            "    mov x30, xzr",
            "    bl {main}",
            "0:  b 0b",
            main = sym ta_main,
        );

        extern "C" fn ta_main(x0: u64, x1: u64, x2: u64, x3: u64) -> ! {
            $crate::start(&$program, x0, x1, x2, x3)
        }
    };
}

/// A panic message, cut at 200 bytes.
struct Message {
    bytes: [u8; 200],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0u8; 4];
            let encoded = c.encode_utf8(&mut utf8).as_bytes();
            let end = self.len + encoded.len();
            let Some(dst) = self.bytes.get_mut(self.len..end) else {
                return Ok(());
            };
            dst.copy_from_slice(encoded);
            self.len = end;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut env = FwEnv;
    let mut message = Message {
        bytes: [0; 200],
        len: 0,
    };
    let _ = write!(message, "panic: {info}");
    let text = message
        .bytes
        .get(..message.len)
        .and_then(|b| core::str::from_utf8(b).ok())
        .unwrap_or("panic");
    let _ = teeshm_ta::libutee::log(&mut env, text);
    loop {
        let _ = teeshm_ta::libutee::panic(&mut env, u64::from(TEE_ERROR_GENERIC));
    }
}
