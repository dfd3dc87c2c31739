//! `vigil gpu-check` on whatever box runs the tests: without an NVIDIA driver (CI, development
//! machines) it must say so and succeed, never crash (cudarc would panic if asked to load a
//! missing driver); with one it checks the fused preprocessing kernel against the CPU reference
//! and fails on any difference above the tolerance.

mod common;

use std::process::Command;

#[test]
fn gpu_check_never_crashes_and_reports_what_it_found() {
    let out = Command::new(common::vigil_bin())
        .arg("gpu-check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let no_gpu = stdout.contains("GPU: unavailable (") && stdout.contains("the CPU path is used");
    let checked = stdout.contains("gpu-check: ok") && stdout.contains("max |gpu - cpu|");
    assert!(no_gpu || checked, "{stdout}");
}
