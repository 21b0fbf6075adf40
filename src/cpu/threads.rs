//! One thread pool for every parallel kernel.
//!
//! Its size comes from `--threads`, else `SPLITINV_THREADS`, else the number
//! of cores. It is set once, before the first parallel kernel runs.

use crate::error::{Error, Result};

/// Sizes the global pool. Call early; a later call with a different size fails.
pub fn init(threads: Option<usize>) -> Result<()> {
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
