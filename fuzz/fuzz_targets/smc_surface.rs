#![no_main]
//! Fuzz target `smc_surface`: see `teeshm_fuzz::smc_surface`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    teeshm_fuzz::smc_surface(data);
});
