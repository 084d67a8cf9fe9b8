#![no_main]
//! Fuzz target `page_list`: see `teeshm_fuzz::page_list`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    teeshm_fuzz::page_list(data);
});
