//! Runs every CUDA kernel on the CPU through a small CUDA emulation
//! (`tests/cuda_emu/emu.h`: one OS thread per CUDA thread, real barriers,
//! shuffles and atomics) and checks the results against double-precision
//! references, adjoint identities and finite differences
//! (`tests/cuda_emu/check_kernels.cpp`). This is how the kernels' index
//! arithmetic and math are tested on machines without a GPU; the same
//! kernels are compiled for real by `nvrtc_compile.rs`.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`). Without one the test says
//! "skipped: no C++ compiler", unless SPLITINV_REQUIRE_EMU=1, where it fails.

use std::path::Path;
use std::process::Command;

#[test]
fn kernels_match_references_under_cpu_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check_kernels");
    let build = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-Wall",
            "-Wno-unknown-pragmas",
        ])
        .arg("-I")
        .arg(root.join("kernels"))
        .arg("-I")
        .arg(root.join("tests/cuda_emu"))
        .arg(root.join("tests/cuda_emu/check_kernels.cpp"))
        .arg("-o")
        .arg(&exe)
        .output();
    let build = match build {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("SPLITINV_REQUIRE_EMU").as_deref() != Ok("1"),
                "SPLITINV_REQUIRE_EMU=1 but the C++ compiler '{cxx}' cannot run: {e}"
            );
            println!("skipped: no C++ compiler ('{cxx}': {e})");
            return;
        }
    };
    assert!(
        build.status.success(),
        "building the emulated kernels failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe).output().expect("run check_kernels");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "emulated kernels disagree with the references:\n{}\n{}",
        stdout
            .lines()
            .filter(|l| !l.starts_with("ok "))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" 0 failed"), "{summary}");
    let n: usize = summary
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(n >= 100, "only {n} checks ran: {summary}");
}
