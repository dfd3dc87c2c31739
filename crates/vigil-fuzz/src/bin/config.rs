//! libFuzzer binary `fuzz_config`: the body is `vigil_fuzz::config::run` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::config::run(data));
