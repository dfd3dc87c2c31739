//! Whether TensorRT is on this box, found at run time (never linked): `libnvinfer.so.10` (or
//! `.8`) loaded and its version read with `getInferLibVersion`, its ONNX parser
//! (`libnvonnxparser`) loadable, and ONNX Runtime's TensorRT provider
//! (`libonnxruntime_providers_tensorrt.so`) beside the ONNX Runtime library in use. Nothing
//! else of TensorRT is called here: ONNX Runtime's TensorRT execution provider builds and runs
//! the engines. `VIGIL_TENSORRT_LIB` names another libnvinfer to try first.
//!
//! **Untested against a real TensorRT**: none of our machines has one (no registry ships
//! `libnvinfer`, the H200 host has none; see `../shared/design/tensorrt.md`). The tests load a
//! fake `libnvinfer` compiled for them (named as such); the real path follows TensorRT's
//! documented C entry point `int32_t getInferLibVersion()` (NvInferRuntime.h:
//! `MAJOR * 10000 + MINOR * 100 + PATCH` from TensorRT 10, `MAJOR * 1000 + MINOR * 100 + PATCH`
//! before).

use std::path::{Path, PathBuf};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRt {
    /// `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// The libnvinfer loaded.
    pub library: String,
    /// ONNX Runtime's TensorRT provider library.
    pub provider: PathBuf,
}

/// `getInferLibVersion`'s number as `MAJOR.MINOR.PATCH`.
pub fn version_string(v: i32) -> String {
    let v = v.max(0);
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

type GetInferLibVersion = unsafe extern "C" fn() -> i32;

fn why(e: libloading::Error) -> String {
    match std::error::Error::source(&e) {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

/// Loads `name` and reads its version; the library stays loaded (ONNX Runtime's provider
/// loads it again anyway).
fn nvinfer_version(name: &str) -> Result<String, String> {
    // SAFETY: loads a TensorRT runtime library (its initialisers set up only its own state)
    // and calls `getInferLibVersion`, declared in NvInferRuntime.h as
    // `extern "C" int32_t getInferLibVersion() noexcept`: no arguments, no side effects. The
    // library is leaked on success so the function pointer never outlives it.
    unsafe {
        let lib = libloading::Library::new(name).map_err(why)?;
        let f: GetInferLibVersion = *lib
            .get::<GetInferLibVersion>(b"getInferLibVersion\0")
            .map_err(|e| format!("{name}: no getInferLibVersion ({})", why(e)))?;
        let v = f();
        std::mem::forget(lib);
        Ok(version_string(v))
    }
}

/// Whether a library loads (then unloaded).
fn loads(name: &str) -> Result<(), String> {
    // SAFETY: loads TensorRT's ONNX parser only to see that it and its dependencies resolve;
    // no symbol is called, and it is unloaded when `lib` drops.
    unsafe { libloading::Library::new(name).map(drop).map_err(why) }
}

/// Finds TensorRT for ONNX Runtime at `ort_library` (the `libonnxruntime.so` in use); `Err`
/// says why not, for the start-up log, telemetry and config errors.
pub fn probe(ort_library: Option<&Path>) -> Result<TensorRt, String> {
    let mut names: Vec<String> = std::env::var("VIGIL_TENSORRT_LIB").into_iter().collect();
    let custom = !names.is_empty();
    names.extend([
        "libnvinfer.so.10".to_string(),
        "libnvinfer.so.8".to_string(),
    ]);
    probe_with(&names, !custom, ort_library)
}

/// [`probe`] over these library names; `parser`: also require TensorRT's ONNX parser.
fn probe_with(
    names: &[String],
    parser: bool,
    ort_library: Option<&Path>,
) -> Result<TensorRt, String> {
    let mut tried = Vec::new();
    let mut found = None;
    for n in names {
        match nvinfer_version(n) {
            Ok(v) => {
                found = Some((n.clone(), v));
                break;
            }
            Err(e) => tried.push(e),
        }
    }
    let Some((library, version)) = found else {
        return Err(format!("no libnvinfer: {}", tried.join("; ")));
    };
    let major = version.split('.').next().unwrap_or("10");
    if parser {
        let name = format!("libnvonnxparser.so.{major}");
        loads(&name).map_err(|e| format!("TensorRT {version} has no ONNX parser: {e}"))?;
    }
    let Some(ort) = ort_library else {
        return Err(format!(
            "TensorRT {version} is here, but ONNX Runtime is not loaded"
        ));
    };
    let provider = ort
        .parent()
        .unwrap_or(Path::new("."))
        .join("libonnxruntime_providers_tensorrt.so");
    if !provider.exists() {
        return Err(format!(
            "TensorRT {version} is here, but ONNX Runtime's TensorRT provider is not: {} is missing (an onnxruntime-gpu build with TensorRT)",
            provider.display()
        ));
    }
    Ok(TensorRt {
        version,
        library,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_tensorrt_numbers_them() {
        assert_eq!(version_string(100_300), "10.3.0");
        assert_eq!(version_string(101_304), "10.13.4");
        assert_eq!(version_string(8601), "8.6.1");
        assert_eq!(version_string(-1), "0.0.0");
    }

    /// A fake libnvinfer (TensorRT cannot exist here), compiled for the test with the system C
    /// compiler, exporting only `getInferLibVersion` → 10.3.0; and a fake ONNX Runtime
    /// directory with and without the provider library.
    #[test]
    fn a_fake_libnvinfer_is_found_and_the_missing_provider_named() {
        let dir = std::env::temp_dir().join(format!("vigil-fake-trt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fake_nvinfer.c");
        std::fs::write(&src, "int getInferLibVersion(void) { return 100300; }\n").unwrap();
        let lib = dir.join("libnvinfer-fake.so.10");
        let ok = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cc builds the fake library");
        let names = [
            dir.join("libnvinfer-none.so").display().to_string(),
            lib.display().to_string(),
        ];
        let ort = dir.join("libonnxruntime.so.1.31.1");
        std::fs::write(&ort, b"").unwrap();
        let e = probe_with(&names, false, Some(&ort)).unwrap_err();
        assert!(
            e.contains("TensorRT 10.3.0 is here")
                && e.contains("libonnxruntime_providers_tensorrt.so"),
            "{e}"
        );
        std::fs::write(dir.join("libonnxruntime_providers_tensorrt.so"), b"").unwrap();
        let t = probe_with(&names, false, Some(&ort)).unwrap();
        assert_eq!(
            (t.version.as_str(), t.library.as_str()),
            ("10.3.0", names[1].as_str())
        );
        // With the parser required, the fake has none (unless this box has a real one).
        if loads("libnvonnxparser.so.10").is_err() {
            let e = probe_with(&names, true, Some(&ort)).unwrap_err();
            assert!(e.contains("no ONNX parser"), "{e}");
        }
        // Nothing loadable: every name and why.
        let e = probe_with(&names[..1], false, Some(&ort)).unwrap_err();
        assert!(
            e.starts_with("no libnvinfer: ") && e.contains("libnvinfer-none.so"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
