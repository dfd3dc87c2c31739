//! libFuzzer binary `fuzz_nanodet`: the body is `vigil_fuzz::nanodet::run` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::nanodet::run(data));
