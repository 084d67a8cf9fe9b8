//! `teeshm.ta-peer` (`teeshm_ta::peer`) as an S-EL0 executable.
#![no_std]
#![no_main]

teeshm_fw_ta::ta_binary!(teeshm_ta::peer::PROGRAM);
