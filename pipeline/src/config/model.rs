//! The transcription model and the ONNX Runtime library that runs it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const MMT_MODEL_DIR: &str = "MMT_MODEL_DIR";
const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
const MMT_INTRA_OP_THREADS: &str = "MMT_INTRA_OP_THREADS";

/// The ONNX Runtime library file the `ort` crate (2.0.0-rc.15) is built against.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// The Python the default virtual environment is assumed to use when none is found.
const DEFAULT_PYTHON: &str = "python3.11";

/// The installation root that default paths are resolved against: the repository
/// (workspace) root in development, the application directory in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRoot {
    dir: PathBuf,
    ort_library: PathBuf,
}

impl InstallRoot {
    /// `dir`, assuming the virtual environment uses Python 3.11 (no I/O).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let ort_library = ort_library_in(&dir, DEFAULT_PYTHON);
        Self { dir, ort_library }
    }

    /// The workspace root this crate was built in (no I/O).
    pub fn compiled() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self::at(manifest.parent().unwrap_or(manifest))
    }

    /// Looks at the file system: the working directory if it holds `models/` or
    /// `.venv/`, else the workspace root this crate was built in; and the
    /// ONNX Runtime library under `.venv/lib/python3*/`, whichever Python that is
    /// (the newest if several), else the Python 3.11 path.
    pub fn discover() -> Self {
        let compiled = Self::compiled();
        let dir = std::env::current_dir()
            .ok()
            .filter(|cwd| cwd.join("models").is_dir() || cwd.join(".venv").is_dir())
            .unwrap_or(compiled.dir);
        let ort_library =
            find_ort_library(&dir).unwrap_or_else(|| ort_library_in(&dir, DEFAULT_PYTHON));
        Self { dir, ort_library }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The default `MMT_MODEL_DIR`: `<root>/models/tiny.en`.
    pub fn default_model_dir(&self) -> PathBuf {
        self.dir.join("models").join("tiny.en")
    }

    /// The default `ORT_DYLIB_PATH`.
    pub fn default_ort_library(&self) -> &Path {
        &self.ort_library
    }
}

fn ort_library_in(root: &Path, python: &str) -> PathBuf {
    root.join(".venv/lib")
        .join(python)
        .join("site-packages/onnxruntime/capi")
        .join(ORT_LIBRARY_FILE)
}

/// `<root>/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1`
/// for the newest Python that has it.
fn find_ort_library(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root.join(".venv/lib")).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let minor: u32 = name.strip_prefix("python3.")?.parse().ok()?;
            let library = ort_library_in(root, &name);
            library.is_file().then_some((minor, library))
        })
        .max_by_key(|(minor, _)| *minor)
        .map(|(_, library)| library)
}

/// The transcription model and the ONNX Runtime library that runs it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// `MMT_MODEL_DIR`: the exported Whisper model (ONNX encoder and decoder,
    /// tokenizer). Default `<root>/models/tiny.en`.
    pub model_dir: PathBuf,
    /// `ORT_DYLIB_PATH`: the ONNX Runtime 1.31 shared library loaded at start-up.
    /// Default: `libonnxruntime.so.1.31.1` from the `onnxruntime` wheel in
    /// `<root>/.venv`.
    pub ort_library: PathBuf,
    /// `MMT_INTRA_OP_THREADS`: ONNX Runtime intra-op threads per worker; unset or 0
    /// lets the worker plan divide the cores among the workers.
    pub intra_op_threads: Option<u32>,
}

impl ModelConfig {
    pub(super) fn from_vars(vars: &mut Vars, root: &InstallRoot) -> Self {
        Self {
            model_dir: vars
                .text(MMT_MODEL_DIR)
                .map_or_else(|| root.default_model_dir(), PathBuf::from),
            ort_library: vars
                .text(ORT_DYLIB_PATH)
                .map_or_else(|| root.default_ort_library().to_owned(), PathBuf::from),
            intra_op_threads: Some(vars.u32(MMT_INTRA_OP_THREADS, 0)).filter(|&n| n > 0),
        }
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        let name = self
            .ort_library
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains("onnxruntime") {
            out.push(Problem::fatal(
                ORT_DYLIB_PATH,
                format!("must name the ONNX Runtime shared library file ({ORT_LIBRARY_FILE})"),
            ));
        } else if let Some(version) = name.split(".so.").nth(1) {
            if !version.starts_with("1.31") {
                out.push(Problem::warning(
                    ORT_DYLIB_PATH,
                    "names an ONNX Runtime other than 1.31, which MMT is built against",
                ));
            }
        }
    }

    /// Problems that need the file system: the model directory and the library must
    /// exist. Not part of the pure validation.
    pub(super) fn check_files(&self, out: &mut Vec<Problem>) {
        if !self.model_dir.is_dir() {
            out.push(Problem::fatal(
                MMT_MODEL_DIR,
                // Paths are not repeated (no value is, see `vars::Echo`);
                // `mmt check --json` shows the effective one.
                "is not a directory (see model.model_dir in `mmt check --json`); export \
                 the model first (mmt model export)",
            ));
        }
        if !self.ort_library.is_file() {
            out.push(Problem::fatal(
                ORT_DYLIB_PATH,
                format!(
                    "does not name an existing file (see model.ort_library in `mmt check \
                     --json`); install the onnxruntime==1.31.1 wheel or point ORT_DYLIB_PATH \
                     at {ORT_LIBRARY_FILE}"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_under_the_root() {
        let root = InstallRoot::at("/app");
        assert_eq!(
            root.default_model_dir(),
            PathBuf::from("/app/models/tiny.en")
        );
        assert_eq!(
            root.default_ort_library(),
            Path::new(
                "/app/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
            )
        );
    }

    #[test]
    fn the_newest_python_with_the_library_is_found() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        for python in ["python3.9", "python3.12", "python3.13"] {
            let capi = root
                .path()
                .join(".venv/lib")
                .join(python)
                .join("site-packages/onnxruntime/capi");
            std::fs::create_dir_all(&capi)?;
            if python != "python3.13" {
                std::fs::write(capi.join(ORT_LIBRARY_FILE), b"")?;
            }
        }
        assert_eq!(
            find_ort_library(root.path()),
            Some(ort_library_in(root.path(), "python3.12"))
        );
        assert_eq!(find_ort_library(&root.path().join("nowhere")), None);
        Ok(())
    }

    #[test]
    fn the_compiled_root_is_the_workspace() {
        assert!(InstallRoot::compiled()
            .dir()
            .join("pipeline")
            .ends_with("pipeline"));
        assert!(!InstallRoot::compiled().dir().ends_with("pipeline"));
    }
}
