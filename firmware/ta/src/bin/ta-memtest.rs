//! `teeshm.ta-memtest` (`teeshm_ta::memtest`) as an S-EL0 executable.
#![no_std]
#![no_main]

teeshm_fw_ta::ta_binary!(teeshm_ta::memtest::PROGRAM);
