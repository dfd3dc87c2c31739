//! libFuzzer binary `fuzz_http_query`: the body is `vigil_fuzz::http::run` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::http::run(data));
