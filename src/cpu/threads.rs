//! One thread pool for every parallel kernel.
//!
//! Its size comes from `--threads`, else `SPLITINV_THREADS`, else the number
//! of cores. It is set once, before the first parallel kernel runs.

use crate::error::{Error, Result};

/// Sizes the global pool. Call early; a later call with a different size fails.
pub fn init(threads: Option<usize>) -> Result<()> {
    tune_allocator();
    // 0 below means "one per core" (rayon's default), never a user's choice.
    let n = match threads {
        Some(n) => check_count("--threads", &n.to_string())?,
        None => match std::env::var("SPLITINV_THREADS") {
            Ok(s) => check_count("SPLITINV_THREADS", &s)?,
            Err(_) => 0,
        },
    };
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

/// The most threads the pool may be asked for: far more than any machine's
/// cores, few enough that a typo cannot spend minutes spawning threads.
pub const MAX_THREADS: usize = 1024;

/// Parses a thread count given by `source`: an integer in 1..=MAX_THREADS.
fn check_count(source: &str, s: &str) -> Result<usize> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            "threads",
            format!("{source}='{s}' must be a whole number from 1 to {MAX_THREADS}"),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_outside_one_to_the_cap_are_refused_naming_the_source() {
        assert_eq!(check_count("--threads", "4").unwrap(), 4);
        assert_eq!(check_count("SPLITINV_THREADS", " 1024 ").unwrap(), 1024);
        for (source, v) in [
            ("SPLITINV_THREADS", "0"),
            ("--threads", "1000000"),
            ("SPLITINV_THREADS", "two"),
            ("SPLITINV_THREADS", "-1"),
        ] {
            let e = check_count(source, v).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{source}='{v}'")) && e.contains("from 1 to 1024"),
                "{e}"
            );
        }
    }
}
