//! Run-time SIMD selection.
//!
//! The binary is built for baseline x86-64 (or aarch64), so the compiler may
//! only use SSE2 by default. Hot loops are therefore compiled several times,
//! each inside a function with `#[target_feature]` (AVX-512F, AVX2+FMA), and
//! the best one the CPU supports is chosen once at run time. A default build
//! is never silently scalar: on a machine with AVX-512 the AVX-512 copies run.
//!
//! `SPLITINV_SIMD=scalar|avx2|avx512` caps the level (for comparisons and tests).

use std::sync::OnceLock;

/// An instruction-set level, ordered from weakest to strongest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// Plain Rust, no explicit vector instructions.
    Scalar,
    /// ARM NEON (aarch64).
    Neon,
    /// x86 AVX2 with FMA, 8 lanes of f32.
    Avx2,
    /// x86 AVX-512F, 16 lanes of f32.
    Avx512,
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Neon => "neon",
            SimdLevel::Avx2 => "avx2+fma",
            SimdLevel::Avx512 => "avx512f",
        };
        f.write_str(s)
    }
}

/// Every level this CPU can run, weakest first (always includes `Scalar`).
pub fn available_levels() -> Vec<SimdLevel> {
    let mut v = vec![SimdLevel::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(SimdLevel::Avx2);
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            v.push(SimdLevel::Avx512);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push(SimdLevel::Neon);
        }
    }
    v
}

/// Checks `SPLITINV_SIMD`, which [`level`] reads: unset, or one of
/// `scalar`, `neon`, `avx2`, `avx512`. A typo would otherwise silently run
/// the best level and skew a comparison.
pub fn check_env() -> crate::error::Result<()> {
    match std::env::var("SPLITINV_SIMD") {
        Err(_) => Ok(()),
        Ok(v) if matches!(v.as_str(), "scalar" | "neon" | "avx2" | "avx512") => Ok(()),
        Ok(v) => Err(crate::error::Error::invalid(
            "simd",
            format!("SPLITINV_SIMD='{v}' is not one of scalar, neon, avx2, avx512"),
        )),
    }
}

/// The level the fast kernels use: the best available, capped by `SPLITINV_SIMD`.
pub fn level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let levels = available_levels();
        let best = *levels.last().unwrap_or(&SimdLevel::Scalar);
        let cap = match std::env::var("SPLITINV_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") => SimdLevel::Avx2,
            Some("neon") => SimdLevel::Neon,
            Some("avx512") => SimdLevel::Avx512,
            _ => best,
        };
        levels
            .into_iter()
            .filter(|l| *l <= cap)
            .max()
            .unwrap_or(SimdLevel::Scalar)
    })
}

/// Below this many elements an element-wise loop runs on the calling thread:
/// waking the pool costs more than the loop.
pub const PAR_THRESHOLD: usize = 1 << 16;
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn map1_body<F: Fn(f32) -> f32>(x: &[f32], out: &mut [f32], f: &F) {
    for (o, &a) in out.iter_mut().zip(x) {
        *o = f(a);
    }
}

#[inline(always)]
fn map2_body<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: &F) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map1_avx512<F: Fn(f32) -> f32>(x: &[f32], out: &mut [f32], f: &F) {
    map1_body(x, out, f)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map1_avx2<F: Fn(f32) -> f32>(x: &[f32], out: &mut [f32], f: &F) {
    map1_body(x, out, f)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map2_avx512<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: &F) {
    map2_body(a, b, out, f)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map2_avx2<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], out: &mut [f32], f: &F) {
    map2_body(a, b, out, f)
}

fn map1_serial<F: Fn(f32) -> f32>(lv: SimdLevel, x: &[f32], out: &mut [f32], f: &F) {
    match lv {
        // SAFETY: the level is only ever one that `available_levels` detected.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { map1_avx512(x, out, f) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { map1_avx2(x, out, f) },
        _ => map1_body(x, out, f),
    }
}

fn map2_serial<F: Fn(f32, f32) -> f32>(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: &F,
) {
    match lv {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { map2_avx512(a, b, out, f) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { map2_avx2(a, b, out, f) },
        _ => map2_body(a, b, out, f),
    }
}

/// `out[i] = f(x[i])`, vectorised at the given level, parallel when large.
pub fn map1_at<F: Fn(f32) -> f32 + Sync>(lv: SimdLevel, x: &[f32], out: &mut [f32], f: F) {
    use rayon::prelude::*;
    let n = x.len().min(out.len());
    if n >= PAR_THRESHOLD {
        out[..n]
            .par_chunks_mut(CHUNK)
            .zip(x[..n].par_chunks(CHUNK))
            .for_each(|(o, a)| map1_serial(lv, a, o, &f));
    } else {
        map1_serial(lv, &x[..n], &mut out[..n], &f);
    }
}

/// `out[i] = f(a[i], b[i])`, vectorised at the given level, parallel when large.
pub fn map2_at<F: Fn(f32, f32) -> f32 + Sync>(
    lv: SimdLevel,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: F,
) {
    use rayon::prelude::*;
    let n = a.len().min(b.len()).min(out.len());
    if n >= PAR_THRESHOLD {
        out[..n]
            .par_chunks_mut(CHUNK)
            .zip(a[..n].par_chunks(CHUNK))
            .zip(b[..n].par_chunks(CHUNK))
            .for_each(|((o, x), y)| map2_serial(lv, x, y, o, &f));
    } else {
        map2_serial(lv, &a[..n], &b[..n], &mut out[..n], &f);
    }
}

/// [`map1_at`] at the active level, into a new vector.
pub fn map1<F: Fn(f32) -> f32 + Sync>(x: &[f32], f: F) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    map1_at(level(), x, &mut out, f);
    out
}

/// [`map2_at`] at the active level, into a new vector.
pub fn map2<F: Fn(f32, f32) -> f32 + Sync>(a: &[f32], b: &[f32], f: F) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    map2_at(level(), a, b, &mut out, f);
    out
}

/// In place: `x[i] = f(x[i], y[i])` (used by optimizers and accumulations).
pub fn zip_inplace<F: Fn(f32, f32) -> f32 + Sync>(x: &mut [f32], y: &[f32], f: F) {
    use rayon::prelude::*;
    let n = x.len().min(y.len());
    let body = |x: &mut [f32], y: &[f32]| {
        for (a, &b) in x.iter_mut().zip(y) {
            *a = f(*a, b);
        }
    };
    if n >= PAR_THRESHOLD {
        x[..n]
            .par_chunks_mut(CHUNK)
            .zip(y[..n].par_chunks(CHUNK))
            .for_each(|(a, b)| body(a, b));
    } else {
        body(&mut x[..n], &y[..n]);
    }
}

/// Sum of a slice, accumulated in f64 blocks for accuracy, parallel when large.
pub fn sum(x: &[f32]) -> f64 {
    use rayon::prelude::*;
    let block = |c: &[f32]| -> f64 {
        // 8 independent f32 lanes vectorise; each block is short enough that
        // f32 error stays small before it is folded into f64.
        let mut acc = [0f32; 8];
        let mut it = c.chunks_exact(8);
        for ch in &mut it {
            for i in 0..8 {
                acc[i] += ch[i];
            }
        }
        let tail: f32 = it.remainder().iter().sum();
        acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(4096).map(block).sum()
    } else {
        x.chunks(4096).map(block).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_maps_the_same() {
        let x: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a * b + a).collect();
        for lv in available_levels() {
            let mut out = vec![0.0; x.len()];
            map2_at(lv, &x, &y, &mut out, |a, b| a * b + a);
            assert_eq!(out, want, "level {lv}");
        }
    }

    #[test]
    fn default_build_is_not_scalar_on_simd_hardware() {
        #[cfg(target_arch = "x86_64")]
        if std::env::var("SPLITINV_SIMD").is_err()
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            assert!(level() >= SimdLevel::Avx2);
        }
    }

    #[test]
    fn sum_is_accurate() {
        let x = vec![0.1f32; 1_000_000];
        assert!((sum(&x) - 100_000.0).abs() < 1.0);
    }
}
