//! libFuzzer binary `fuzz_mqtt_command`: the body is `vigil_fuzz::commands::run` (see `cargo xtask fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::commands::run(data));
