#![no_main]
//! Fuzz target `mediator`: see `teeshm_fuzz::mediator::mediator`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    teeshm_fuzz::mediator::mediator(data);
});
