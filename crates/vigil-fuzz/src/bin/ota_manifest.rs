//! libFuzzer binary `fuzz_ota_manifest`: the body is `vigil_fuzz::ota::run_manifest` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::ota::run_manifest(data));
