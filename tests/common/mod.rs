//! Helpers shared by the integration tests. Each test crate uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A fresh, empty directory under the system temp dir, removed with
/// everything in it when the guard drops (also when the test fails), so
/// test runs do not pile up directories in /tmp.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `splitinv-<name>-<pid>` under the temp dir, emptied first.
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("splitinv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the `splitinv` binary with `args` and extra environment variables
/// `env`: whether it succeeded, its stdout and its stderr.
pub fn run_splitinv(env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitinv"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
