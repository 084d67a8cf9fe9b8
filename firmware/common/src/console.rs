//! A PL011 console: the normal world's UART at 0x0900_0000 (QEMU `virt` serial0) for the
//! client, the secure UART at 0x0904_0000 (serial1, on the secure side of the bus only) for
//! EL3 and the S-EL1 core ([`use_uart_at`] at their entry).
//!
//! Two UARTs keep the worlds' lines whole: on one UART shared with Linux or Xen, bytes written
//! by the firmware on one CPU land in the middle of the normal world's lines from another, as
//! OP-TEE's QEMU set-up avoids the same way. Each world reaches its UART at VA == PA: EL3 and
//! the normal-world client run with their MMU off, the S-EL1 core maps the page as device
//! memory. QEMU's PL011 needs no set-up to transmit.
//! The client as a Xen domU writes to Xen's emulated SBSA UART instead ([`use_uart_at`]),
//! which has the same two registers.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Physical (and, in every world, virtual) address of the PL011 data register.
pub const UART_BASE: usize = 0x0900_0000;
/// Physical address of the secure PL011's data register (`VIRT_SECURE_UART`, QEMU's serial1).
pub const SECURE_UART_BASE: usize = 0x0904_0000;

/// The UART this image writes to.
static BASE: AtomicUsize = AtomicUsize::new(UART_BASE);

/// Makes the console write to the PL011-compatible UART at `base` (a device this image's
/// world reaches at that address) from now on.
pub fn use_uart_at(base: usize) {
    BASE.store(base, Ordering::Relaxed);
}
const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;
const FR_TXFF: u32 = 1 << 5;

/// Writes bytes to the UART, `\n` as `\r\n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl Console {
    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn put(self, byte: u8) {
        let base = BASE.load(Ordering::Relaxed);
        let fr = (base + UARTFR) as *const u32;
        let dr = (base + UARTDR) as *mut u32;
        // SAFETY: `base` is the PL011 of QEMU `virt` or the UART `use_uart_at` named, mapped
        // (or physically addressed) as device memory in every world that uses this console; FR
        // and DR are 32-bit registers at these offsets, and volatile accesses of them have no
        // effect on Rust-visible memory.
        unsafe {
            while fr.read_volatile() & FR_TXFF != 0 {}
            dr.write_volatile(u32::from(byte));
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints to the UART.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Console, format_args!($($arg)*));
    }};
}

/// Prints a line to the UART.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}
