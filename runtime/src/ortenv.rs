//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Name of the library the set-up script places in `.deps/lib/`.
const LIBRARY: &str = "libonnxruntime.so";

/// Where the library is looked for, in order: `ORT_DYLIB_PATH`; `.deps/lib/` in
/// the current directory or any parent of it or of the executable; the
/// checkout this binary was built from.
pub fn find_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(path));
    }
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        bases.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        bases.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    bases.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    bases
        .into_iter()
        .map(|b| b.join(".deps/lib").join(LIBRARY))
        .find(|p| p.is_file())
}

/// The process-wide ONNX Runtime environment, created on first use.
pub fn environment() -> Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = find_library().ok_or_else(|| {
                "ONNX Runtime library not found: run scripts/setup.sh or set ORT_DYLIB_PATH"
                    .to_string()
            })?;
            let env = ort::init_from(&path)
                .map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?
                .with_name("taskmesh")
                .build()
                .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
            tracing::info!(library = %path.display(), "ONNX Runtime loaded");
            Ok(env)
        })
        .as_ref()
        .map_err(Clone::clone)
}
