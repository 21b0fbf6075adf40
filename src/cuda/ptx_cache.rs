//! An on-disk cache of the PTX NVRTC makes of each kernel file, so that a
//! command does not pay the compile at every start: `conv.cu` alone takes
//! NVRTC several seconds (6.4 s for sm_90 on a 2-core VM), more than a
//! short white-box attack on the GPU.
//!
//! An entry is keyed by everything that decides the PTX: the full source
//! (common header included), the architecture and the NVRTC version, hashed
//! into the file name. A source change therefore never meets a stale entry,
//! and a new entry removes the older ones of its file and architecture (a
//! full set of kernels is ~2.7 MB of PTX, one per build that ever ran). The
//! cache only ever saves time: a
//! folder that cannot be created or written, or an entry that cannot be
//! read, means compiling as if there were no cache, and a cached PTX the
//! driver refuses is compiled afresh and replaced (see `context.rs`).
//!
//! Where: `$SPLITINV_KERNEL_CACHE` if set (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/splitinv/kernels`, else `$HOME/.cache/splitinv/kernels`.

use crate::error::Result;
use crate::util::Fnv64;
use std::path::{Path, PathBuf};

/// The cache folder, or `None` when the cache is off or there is no home.
pub fn cache_dir() -> Option<PathBuf> {
    dir_from(
        std::env::var_os("SPLITINV_KERNEL_CACHE").as_deref(),
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

fn dir_from(
    setting: Option<&std::ffi::OsStr>,
    xdg: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    fn nonempty(v: Option<&std::ffi::OsStr>) -> Option<&std::ffi::OsStr> {
        v.filter(|v| !v.is_empty())
    }
    match nonempty(setting) {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => nonempty(xdg)
            .map(|x| Path::new(x).join("splitinv/kernels"))
            .or_else(|| nonempty(home).map(|h| Path::new(h).join(".cache/splitinv/kernels"))),
    }
}

/// The entry for kernel file `file` with source `full`, for `arch`, by
/// NVRTC `version` (`conv-sm_90-<hash>.ptx`).
pub fn entry_path(dir: &Path, file: &str, full: &str, arch: &str, version: (i32, i32)) -> PathBuf {
    let mut h = Fnv64::default();
    for part in [full, arch, &format!("{}.{}", version.0, version.1)] {
        h.write(part.as_bytes());
        h.write(&[0]);
    }
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    dir.join(format!("{stem}-{arch}-{:016x}.ptx", h.0))
}

/// The PTX at `path` if the cache has it, else `compile()`'s, stored there
/// for next time (written to a temporary file and renamed, so a reader never
/// sees half an entry). Whether it came from the cache is the second value.
/// Only `compile`'s own error is an error.
pub fn get_or_compile(
    path: Option<&Path>,
    compile: impl FnOnce() -> Result<String>,
) -> Result<(String, bool)> {
    if let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) {
        if !text.is_empty() {
            return Ok((text, true));
        }
    }
    let text = compile()?;
    if let Some(p) = path {
        store(p, &text);
    }
    Ok((text, false))
}

/// Writes an entry and removes the older entries of the same file and
/// architecture (other sources or NVRTC versions); a failure only means the
/// next run compiles again, or an old entry stays.
pub fn store(path: &Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("ptx.tmp{}", std::process::id()));
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return;
    }
    remove_older(dir, path);
}

/// Removes the entries of `kept`'s file and architecture other than `kept`:
/// `conv-sm_90-<hash>.ptx` replaces every other `conv-sm_90-*.ptx`. (Two
/// builds used in turn then compile in turn; a cache of one entry per
/// kernel file is what a user would expect to find.)
fn remove_older(dir: &Path, kept: &Path) {
    let Some(name) = kept.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    // The name up to the hash: "conv-sm_90-".
    let Some(prefix) = name.rfind('-').map(|i| &name[..=i]) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let other = e.file_name();
        let Some(other) = other.to_str() else {
            continue;
        };
        // Only our own names: the prefix, 16 hex digits, ".ptx".
        let hash = other
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".ptx"));
        let ours = hash.is_some_and(|h| h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()));
        if other != name && ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_folder_follows_the_setting_then_xdg_then_home() {
        let (s, x, h) = (OsStr::new("/c"), OsStr::new("/x"), OsStr::new("/h"));
        assert_eq!(
            dir_from(Some(s), Some(x), Some(h)),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(dir_from(Some(OsStr::new("off")), Some(x), Some(h)), None);
        assert_eq!(
            dir_from(None, Some(x), Some(h)),
            Some(PathBuf::from("/x/splitinv/kernels"))
        );
        assert_eq!(
            dir_from(Some(OsStr::new("")), Some(OsStr::new("")), Some(h)),
            Some(PathBuf::from("/h/.cache/splitinv/kernels"))
        );
        assert_eq!(dir_from(None, None, None), None);
    }

    #[test]
    fn the_key_changes_with_source_arch_and_nvrtc() {
        let d = Path::new("/c");
        let p = entry_path(d, "conv.cu", "src", "sm_90", (12, 9));
        assert!(p.starts_with(d));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("conv-sm_90-") && name.ends_with(".ptx"),
            "{name}"
        );
        assert_eq!(p, entry_path(d, "conv.cu", "src", "sm_90", (12, 9)));
        for other in [
            entry_path(d, "conv.cu", "src ", "sm_90", (12, 9)),
            entry_path(d, "conv.cu", "src", "sm_80", (12, 9)),
            entry_path(d, "conv.cu", "src", "sm_90", (13, 0)),
        ] {
            assert_ne!(p, other);
        }
    }

    #[test]
    fn a_second_get_reads_the_cache_and_a_bad_folder_only_costs_a_compile() {
        let dir = std::env::temp_dir().join(format!("splitinv-ptx-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = entry_path(&dir, "conv.cu", "src", "sm_90", (12, 9));
        let (t, hit) = get_or_compile(Some(&path), || Ok("PTX 1".into())).unwrap();
        assert_eq!((t.as_str(), hit), ("PTX 1", false));
        let (t, hit) = get_or_compile(Some(&path), || panic!("must come from the cache")).unwrap();
        assert_eq!((t.as_str(), hit), ("PTX 1", true));
        // No temporary file is left next to the entry.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // An empty entry (a full disk, say) is compiled again and replaced.
        std::fs::write(&path, "").unwrap();
        let (t, hit) = get_or_compile(Some(&path), || Ok("PTX 2".into())).unwrap();
        assert_eq!((t.as_str(), hit), ("PTX 2", false));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "PTX 2");
        // A folder that cannot exist (under a file): compiled, no error.
        let blocked = path.join("below-a-file.ptx");
        let (t, _) = get_or_compile(Some(&blocked), || Ok("PTX 3".into())).unwrap();
        assert_eq!(t, "PTX 3");
        // A new source replaces the file's older entry for that architecture,
        // and only that one.
        let other_arch = entry_path(&dir, "conv.cu", "src", "sm_80", (12, 9));
        let other_file = entry_path(&dir, "pool.cu", "src", "sm_90", (12, 9));
        store(&other_arch, "PTX sm_80");
        store(&other_file, "PTX pool");
        // A file of the user's that merely looks like an entry stays.
        let not_ours = dir.join("conv-sm_90-notes.ptx");
        std::fs::write(&not_ours, "mine").unwrap();
        let newer = entry_path(&dir, "conv.cu", "src v2", "sm_90", (12, 9));
        let (t, hit) = get_or_compile(Some(&newer), || Ok("PTX v2".into())).unwrap();
        assert_eq!((t.as_str(), hit), ("PTX v2", false));
        assert!(!path.exists(), "the older conv sm_90 entry is removed");
        for kept in [&newer, &other_arch, &other_file, &not_ours] {
            assert!(kept.exists(), "{kept:?} is kept");
        }
        // The compile's own error is the error.
        let e = get_or_compile(None, || {
            Err(crate::error::Error::Cuda("nvrtc says no".into()))
        });
        assert!(e.unwrap_err().to_string().contains("nvrtc says no"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
