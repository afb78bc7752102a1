//! Helpers shared by the CLI integration tests (each test binary uses its own subset).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root: the tests' model and fixture paths are relative to it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `edgelora ARGS` run from the repository root, without a backtrace in its stderr.
pub fn edgelora<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()
        .expect("running edgelora")
}
