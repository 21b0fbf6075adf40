//! GEMM throughput at the models' real shapes.
//!
//! Criterion's throughput is `Throughput::Elements(2·m·n·k)`, i.e. the
//! "elements/s" it prints are FLOP/s (one multiply + one add per term).
//!
//! `GEMM_QUICK=1 cargo bench --bench gemm` instead prints a GFLOP/s table
//! per SIMD level (best of several timed runs; the machine is shared, so
//! the best run is the least disturbed one).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use splitinv::cpu::gemm::{gemm_at, MatRef};
use splitinv::cpu::simd::{self, SimdLevel};
use std::time::{Duration, Instant};

/// How the operands are laid out.
#[derive(Clone, Copy)]
enum Layout {
    /// A row-major m×k, B row-major k×n (conv forward, linear).
    Nn,
    /// A stored k×m (conv input-grad: A = Wᵀ).
    Tn,
    /// B stored n×k (conv weight-grad: B = colᵀ; linear backward).
    Nt,
}

struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    layout: Layout,
}

const fn s(name: &'static str, m: usize, n: usize, k: usize, layout: Layout) -> Shape {
    Shape {
        name,
        m,
        n,
        k,
        layout,
    }
}

const SHAPES: &[Shape] = &[
    s("lenet_conv1", 8, 576, 25, Layout::Nn),
    s("lenet_conv2", 16, 64, 200, Layout::Nn),
    s("cifar_conv1", 64, 1024, 27, Layout::Nn),
    s("cifar_conv2", 64, 1024, 576, Layout::Nn),
    s("cifar_conv3", 128, 256, 576, Layout::Nn),
    s("cifar_conv4", 128, 256, 1152, Layout::Nn),
    s("cifar_conv5", 128, 64, 1152, Layout::Nn),
    s("cifar_conv2_b32", 64, 32 * 1024, 576, Layout::Nn),
    s("cifar_conv2_dx", 576, 1024, 64, Layout::Tn),
    s("cifar_conv4_dx", 1152, 256, 128, Layout::Tn),
    s("cifar_conv2_dw", 64, 576, 1024, Layout::Nt),
    s("cifar_conv4_dw", 128, 1152, 256, Layout::Nt),
    s("linear_256_120", 32, 120, 256, Layout::Nn),
    s("linear_2048_512", 32, 512, 2048, Layout::Nn),
    s("linear_2048_512_t", 32, 512, 2048, Layout::Nt),
    s("linear_512_10", 32, 10, 512, Layout::Nn),
];

struct Problem {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Problem {
    fn new(sh: &Shape) -> Self {
        let a = (0..sh.m * sh.k)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
            .collect();
        let b = (0..sh.k * sh.n)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
            .collect();
        Problem {
            a,
            b,
            c: vec![0.0; sh.m * sh.n],
        }
    }
    fn run(&mut self, sh: &Shape, level: SimdLevel, parallel: bool) {
        let (m, n, k) = (sh.m, sh.n, sh.k);
        let (a, b) = match sh.layout {
            Layout::Nn => (MatRef::new(&self.a, k, 1), MatRef::new(&self.b, n, 1)),
            Layout::Tn => (MatRef::new(&self.a, 1, m), MatRef::new(&self.b, n, 1)),
            Layout::Nt => (MatRef::new(&self.a, k, 1), MatRef::new(&self.b, 1, k)),
        };
        gemm_at(level, parallel, m, n, k, a, b, &mut self.c, n, false);
    }
}

fn flops(sh: &Shape) -> f64 {
    2.0 * sh.m as f64 * sh.n as f64 * sh.k as f64
}

/// Best-of-`reps` GFLOP/s, each rep timing enough calls to last ~20 ms.
fn quick_gflops(sh: &Shape, level: SimdLevel, parallel: bool, reps: usize) -> f64 {
    let mut p = Problem::new(sh);
    p.run(sh, level, parallel);
    let calls = ((2e7 / flops(sh)) as usize).clamp(1, 100_000);
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..calls {
            p.run(sh, level, parallel);
        }
        best = best.min(t.elapsed());
    }
    flops(sh) * calls as f64 / best.as_secs_f64() / 1e9
}

/// Nanoseconds this thread has run on a CPU (Linux), so a single-thread
/// measurement can discount the time other processes held the core.
#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> Option<u64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec (two longs on 64-bit Linux).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.sec as u64 * 1_000_000_000 + ts.nsec as u64)
}
#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// Best-of-`reps` single-thread GFLOP/s counting only on-CPU time.
fn quick_cpu_gflops(sh: &Shape, level: SimdLevel, reps: usize) -> Option<f64> {
    let mut p = Problem::new(sh);
    p.run(sh, level, false);
    let calls = ((2e7 / flops(sh)) as usize).clamp(1, 100_000);
    let mut best = u64::MAX;
    for _ in 0..reps {
        let t0 = thread_cpu_ns()?;
        for _ in 0..calls {
            p.run(sh, level, false);
        }
        best = best.min(thread_cpu_ns()? - t0);
    }
    Some(flops(sh) * calls as f64 / best.max(1) as f64)
}

fn quick() {
    let mut levels = simd::available_levels();
    if std::env::var("GEMM_BEST_ONLY").is_ok() {
        levels.drain(..levels.len() - 1);
    }
    let reps: usize = std::env::var("GEMM_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let filter = std::env::var("GEMM_FILTER").unwrap_or_default();
    print!("{:<20}{:>18}", "shape", "m×n×k");
    for lv in &levels {
        print!("{:>12}", format!("{lv}"));
    }
    println!("{:>12}{:>12}", "best, 1 thr", "1 thr, cpu");
    for sh in SHAPES.iter().filter(|s| s.name.contains(filter.as_str())) {
        print!(
            "{:<20}{:>18}",
            sh.name,
            format!("{}×{}×{}", sh.m, sh.n, sh.k)
        );
        for &lv in &levels {
            print!("{:>12.1}", quick_gflops(sh, lv, true, reps));
        }
        let best = *levels.last().unwrap_or(&SimdLevel::Scalar);
        print!("{:>12.1}", quick_gflops(sh, best, false, reps));
        println!(
            "{:>12.1}",
            quick_cpu_gflops(sh, best, reps).unwrap_or(f64::NAN)
        );
    }
}

fn bench(c: &mut Criterion) {
    let level = simd::level();
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for sh in SHAPES {
        // Elements = flops, so criterion reports FLOP/s.
        g.throughput(Throughput::Elements(flops(sh) as u64));
        let mut p = Problem::new(sh);
        g.bench_function(
            BenchmarkId::new(sh.name, format!("{}x{}x{}", sh.m, sh.n, sh.k)),
            |bch| bch.iter(|| p.run(sh, level, true)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var("GEMM_QUICK").is_ok() {
        quick();
    } else {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
