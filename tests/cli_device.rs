//! `--device` on a machine without a GPU (skipped where one is present):
//! `auto` falls back to the CPU with a one-line notice, an explicit `cuda`
//! is a clear error with a non-zero exit, and `--gpu-mem` is validated.

mod common;
use common::run_splitinv as splitinv_env;

fn splitinv(args: &[&str]) -> (bool, String, String) {
    splitinv_env(&[], args)
}

fn no_gpu() -> bool {
    if splitinv::cuda::info().available {
        println!("skipped: a CUDA device is present (this test covers the fallback)");
        return false;
    }
    true
}

#[test]
fn auto_falls_back_to_the_cpu_with_one_notice() {
    if !no_gpu() {
        return;
    }
    let (ok, stdout, stderr) = splitinv(&["--device", "auto", "info"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let notes: Vec<&str> = stderr.lines().filter(|l| l.contains("CUDA")).collect();
    assert_eq!(notes.len(), 1, "exactly one notice line: {stderr:?}");
    assert!(
        notes[0].starts_with("note: no usable CUDA device (")
            && notes[0].ends_with("running on the CPU"),
        "{stderr}"
    );
    assert!(stdout.contains("device:   cpu"), "{stdout}");
    // info still reports the SIMD level, the threads and why CUDA is off.
    assert!(stdout.contains("cpu simd: "), "{stdout}");
    assert!(stdout.contains("threads:  "), "{stdout}");
    assert!(stdout.contains("CUDA: unavailable ("), "{stdout}");
    // The default is auto.
    let (ok, _, stderr2) = splitinv(&["info"]);
    assert!(ok);
    assert_eq!(stderr2, stderr);
    // --device cpu says nothing.
    let (ok, _, stderr3) = splitinv(&["--device", "cpu", "info"]);
    assert!(ok);
    assert!(stderr3.is_empty(), "{stderr3}");
}

#[test]
fn explicit_cuda_is_a_clear_error_here() {
    if !no_gpu() {
        return;
    }
    for dev in ["cuda", "cuda:1"] {
        let (ok, _, stderr) = splitinv(&["--device", dev, "--gpu-mem", "1GiB", "info"]);
        assert!(!ok, "--device {dev} must fail without a GPU");
        assert!(
            stderr.contains(&format!(
                "--device {dev} was asked for, but CUDA is unavailable"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("--device cpu"), "says what to do: {stderr}");
    }
}

#[test]
fn bad_device_and_budget_values_are_rejected() {
    let (ok, _, stderr) = splitinv(&["--device", "gpu0", "info"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown device 'gpu0'") && stderr.contains("cuda:N"),
        "{stderr}"
    );
    let (ok, _, stderr) = splitinv(&["--device", "cpu", "--gpu-mem", "2 parsecs", "info"]);
    assert!(!ok);
    assert!(
        stderr.contains("invalid argument for --gpu-mem: '2 parsecs' is not a byte count"),
        "{stderr}"
    );
    let (ok, _, stderr) = splitinv(&["--device", "cpu", "--gpu-mem", "0", "info"]);
    assert!(!ok);
    assert!(stderr.contains("more than 0 bytes"), "{stderr}");
}

#[test]
fn conv_math_is_validated_and_reported() {
    let (ok, stdout, _) = splitinv(&["--device", "cpu", "info"]);
    assert!(ok);
    assert!(stdout.contains("conv math: fp32 on a GPU"), "{stdout}");
    let (ok, stdout, _) = splitinv(&["--device", "cpu", "--conv-math", "tf32", "info"]);
    assert!(ok);
    assert!(stdout.contains("conv math: tf32 on a GPU"), "{stdout}");
    let (ok, _, stderr) = splitinv(&["--device", "cpu", "--conv-math", "fp16", "info"]);
    assert!(!ok);
    assert!(
        stderr.contains("--conv-math") && stderr.contains("'fp16'") && stderr.contains("tf32"),
        "{stderr}"
    );
    // The environment's setting, checked before the command runs; the flag wins.
    let run_env = |v: &str, args: &[&str]| splitinv_env(&[("SPLITINV_CONV_MATH", v)], args);
    let (ok, _, stderr) = run_env("bf16", &["--device", "cpu", "info"]);
    assert!(!ok);
    assert!(
        stderr.contains("SPLITINV_CONV_MATH") && stderr.contains("'bf16'"),
        "{stderr}"
    );
    let (ok, stdout, _) = run_env("tf32", &["--device", "cpu", "info"]);
    assert!(ok && stdout.contains("conv math: tf32"), "{stdout}");
    let (ok, stdout, _) = run_env("tf32", &["--device", "cpu", "--conv-math", "fp32", "info"]);
    assert!(ok && stdout.contains("conv math: fp32"), "{stdout}");
    // The benchmark knobs too, on any device, before the command runs.
    for (var, bad) in [
        ("SPLITINV_CONV_TILE", "96"),
        ("SPLITINV_CONV_BIG_MIN_BLOCKS", "0"),
    ] {
        let (ok, _, stderr) = splitinv_env(&[(var, bad)], &["--device", "cpu", "info"]);
        assert!(!ok, "{var}={bad} accepted");
        assert!(
            stderr.contains(var) && stderr.contains(&format!("'{bad}'")),
            "{stderr}"
        );
    }
    let (ok, _, stderr) = splitinv_env(
        &[("SPLITINV_CONV_TILE", "tc")],
        &["--device", "cpu", "info"],
    );
    assert!(ok, "{stderr}");
}

/// Whether a GPU is there; without one, says "skipped" (or fails under
/// SPLITINV_REQUIRE_CUDA=1, as on a GPU machine where CUDA must work).
fn gpu_or_skip() -> bool {
    if splitinv::cuda::info().available {
        return true;
    }
    assert!(
        std::env::var("SPLITINV_REQUIRE_CUDA").as_deref() != Ok("1"),
        "SPLITINV_REQUIRE_CUDA=1 but CUDA is unavailable"
    );
    println!("skipped: no CUDA device");
    false
}

/// With a GPU: a small benchmark runs on it and reports the pool's peak.
#[test]
fn a_gpu_command_reports_its_peak_memory() {
    if !gpu_or_skip() {
        return;
    }
    let (ok, stdout, stderr) = splitinv(&[
        "--device",
        "cuda",
        "--gpu-mem",
        "1GiB",
        "bench",
        "--quick",
        "--filter",
        "whitebox/mnist/ReLU2/b10",
    ]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("whitebox/mnist/ReLU2/b10"), "{stdout}");
    assert!(
        stderr.contains("cuda:0 GPU memory: peak")
            && stderr.contains("budget 1.00 GiB")
            && stderr.contains("cuda:0 host waits for the device: "),
        "{stderr}"
    );
    // A budget too small for the step is a clear error naming it.
    let (ok, _, stderr) = splitinv(&[
        "--device",
        "cuda",
        "--gpu-mem",
        "4KiB",
        "bench",
        "--quick",
        "--filter",
        "train/cifar/b128",
    ]);
    assert!(!ok);
    assert!(stderr.contains("GPU memory budget exceeded"), "{stderr}");
}

/// `bench --profile`: on the CPU a clear refusal; on a GPU a per-kernel
/// table, and in JSON the kernels with their launches and times per step.
#[test]
fn bench_profile_shows_where_the_gpu_time_goes() {
    let (ok, _, stderr) = splitinv(&[
        "--device",
        "cpu",
        "bench",
        "--quick",
        "--profile",
        "--filter",
        "whitebox/mnist/conv1/b1",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--profile") && stderr.contains("use --device cuda"),
        "{stderr}"
    );
    if !gpu_or_skip() {
        return;
    }
    let args = [
        "--device",
        "cuda",
        "bench",
        "--quick",
        "--filter",
        "whitebox/mnist/conv1/b1",
        "--profile",
        "4",
    ];
    let (ok, stdout, stderr) = splitinv(&args);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("GPU kernel time"), "{stdout}");
    assert!(stdout.contains("conv2d_fwd"), "{stdout}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (ok, stdout, stderr) = splitinv(&json_args);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let kernel_s = r["kernel_s_per_step"].as_f64().expect("kernel_s_per_step");
    assert!(kernel_s > 0.0, "{r}");
    let kernels = r["kernels"].as_array().expect("kernels");
    let conv = kernels
        .iter()
        .find(|k| {
            k["kernel"]
                .as_str()
                .is_some_and(|n| n.starts_with("conv2d_fwd"))
        })
        .unwrap_or_else(|| panic!("no conv2d_fwd in {r}"));
    // The same kernels every step: whole launches per step.
    let per_step = conv["launches_per_step"].as_f64().unwrap();
    assert!(per_step >= 1.0 && per_step.fract() == 0.0, "{conv}");
    let summed: f64 = kernels
        .iter()
        .map(|k| k["ms_per_step"].as_f64().unwrap())
        .sum();
    assert!(
        (summed / 1e3 - kernel_s).abs() <= 1e-9 + 1e-6 * kernel_s,
        "{r}"
    );
}
