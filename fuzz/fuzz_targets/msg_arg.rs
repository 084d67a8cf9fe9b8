#![no_main]
//! Fuzz target `msg_arg`: see `teeshm_fuzz::msg_arg`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    teeshm_fuzz::msg_arg(data);
});
