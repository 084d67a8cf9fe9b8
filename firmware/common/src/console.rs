//! The PL011 UART at 0x0900_0000, reachable from both worlds (QEMU `virt` serial0).
//!
//! Each world reaches it at VA == PA: EL3 and the normal-world client run with their MMU off,
//! the S-EL1 core maps the page as device memory. QEMU's PL011 needs no set-up to transmit.

use core::fmt;

/// Physical (and, in every world, virtual) address of the PL011 data register.
pub const UART_BASE: usize = 0x0900_0000;
const UARTDR: usize = 0x000;
const UARTFR: usize = 0x018;
const FR_TXFF: u32 = 1 << 5;

/// Writes bytes to the UART, `\n` as `\r\n`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl Console {
    /// Sends one byte, waiting while the transmit FIFO is full.
    pub fn put(self, byte: u8) {
        let fr = (UART_BASE + UARTFR) as *const u32;
        let dr = (UART_BASE + UARTDR) as *mut u32;
        // SAFETY: UART_BASE is the PL011 of QEMU `virt`, mapped (or physically addressed) as
        // device memory in every world that uses this console; FR and DR are 32-bit registers
        // at these offsets, and volatile accesses of them have no effect on Rust-visible memory.
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
