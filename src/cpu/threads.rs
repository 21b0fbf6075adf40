//! One thread pool for every parallel kernel.
//!
//! Its size comes from `--threads`, else `SPLITINV_THREADS`, else the number
//! of cores. It is set once, before the first parallel kernel runs.

use crate::error::{Error, Result};

/// Sizes the global pool. Call early; a later call with a different size fails.
pub fn init(threads: Option<usize>) -> Result<()> {
    tune_allocator();
    let n = match threads {
        Some(n) => n,
        None => match std::env::var("SPLITINV_THREADS") {
            Ok(s) => s.parse::<usize>().map_err(|_| {
                Error::invalid(
                    "threads",
                    format!("SPLITINV_THREADS='{s}' is not a positive integer"),
                )
            })?,
            Err(_) => 0,
        },
    };
    if n == 0 && threads.is_some() {
        return Err(Error::invalid("threads", "--threads must be at least 1"));
    }
    let res = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    if res.is_err() && n != 0 && n != rayon::current_num_threads() {
        return Err(Error::invalid(
            "threads",
            format!(
                "the thread pool already runs {} threads; cannot change to {n}",
                rayon::current_num_threads()
            ),
        ));
    }
    Ok(())
}

/// Threads in the pool.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Tunes the C allocator for tensor work (glibc on Linux only; elsewhere a
/// no-op). By default glibc serves every buffer above 128 KiB with a fresh
/// `mmap` and returns it with `munmap` on free; an engine that allocates
/// and frees the same few-hundred-KB activations every step then spends
/// most of its time in page faults and cross-core TLB shoot-downs (seen in
/// `perf`: >40% of a LeNet training step in the kernel). Raising the mmap
/// and trim thresholds keeps freed buffers in the heap for the next step.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes allocator tunables; it is safe to call
        // at any time and ignores values it does not accept.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_ARENA_MAX, 4);
        }
    }
}
