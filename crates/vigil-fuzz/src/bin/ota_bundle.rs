//! libFuzzer binary `fuzz_ota_bundle`: the body is `vigil_fuzz::ota::run_bundle` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::ota::run_bundle(data));
