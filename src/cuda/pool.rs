//! GPU memory bookkeeping: a caching pool with a byte budget.
//!
//! [`Pool`] decides; it never touches the device. The CUDA context hands it
//! a closure that really allocates, and gives blocks back to it when a
//! buffer is dropped. Keeping the bookkeeping separate makes it testable on
//! a machine without a GPU (the tests use plain values as "blocks").
//!
//! * Requests are rounded up to a **size class** (powers of two split into
//!   four steps, at least 512 bytes), so a freed block is reused by any later
//!   request of the same class without a driver call, and the rounding
//!   wastes at most a quarter.
//! * The **budget** bounds the bytes the pool holds on the device (in use
//!   plus cached). When a new block would cross it, cached free blocks are
//!   released first; if the blocks in use alone leave no room, the request
//!   fails with an error that states the request, the bytes in use and the
//!   budget.
//! * **Peaks** (in use, and held) are tracked for reports.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Smallest size class, bytes.
pub const MIN_CLASS: usize = 512;

/// Counters of a [`Pool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in blocks handed out and not yet given back.
    pub in_use: usize,
    /// Bytes in free blocks kept for reuse.
    pub cached: usize,
    /// The most bytes in use at once.
    pub peak_in_use: usize,
    /// The most bytes held on the device at once (in use + cached).
    pub peak_held: usize,
    /// Blocks obtained from the device.
    pub device_allocs: usize,
    /// Requests served from the cache.
    pub reuses: usize,
    /// The budget, if any.
    pub budget: Option<usize>,
}

impl std::fmt::Display for PoolStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GPU memory: peak {} in use ({} held), now {} in use + {} cached, budget {}; \
             {} device allocations, {} reuses",
            format_bytes(self.peak_in_use),
            format_bytes(self.peak_held),
            format_bytes(self.in_use),
            format_bytes(self.cached),
            self.budget.map_or("unlimited".to_string(), format_bytes),
            self.device_allocs,
            self.reuses
        )
    }
}

/// A caching allocator's bookkeeping over blocks of type `B`.
#[derive(Debug)]
pub struct Pool<B> {
    budget: Option<usize>,
    free: BTreeMap<usize, Vec<B>>,
    stats: PoolStats,
}

impl<B> Pool<B> {
    /// An empty pool; `budget` in bytes (`None`: unlimited).
    pub fn new(budget: Option<usize>) -> Self {
        Pool {
            budget,
            free: BTreeMap::new(),
            stats: PoolStats {
                budget,
                ..PoolStats::default()
            },
        }
    }

    /// The size class a request of `bytes` is served from.
    pub fn size_class(bytes: usize) -> usize {
        if bytes <= MIN_CLASS {
            return MIN_CLASS;
        }
        // Four classes per power of two: 2^e, 1.25·2^e, 1.5·2^e, 1.75·2^e.
        let e = usize::BITS - 1 - bytes.leading_zeros(); // floor(log2(bytes))
        let step = 1usize << (e - 2);
        bytes.div_ceil(step).saturating_mul(step)
    }

    /// Changes the budget. Cached blocks above the new budget are returned
    /// (for the caller to free); blocks in use are never taken back.
    pub fn set_budget(&mut self, budget: Option<usize>) -> Vec<B> {
        self.budget = budget;
        self.stats.budget = budget;
        let mut released = Vec::new();
        if let Some(b) = budget {
            while self.stats.in_use + self.stats.cached > b {
                match self.pop_any_free() {
                    Some(block) => released.push(block),
                    None => break,
                }
            }
        }
        released
    }

    /// Serves a request of `bytes`: a cached block of its class if there is
    /// one, else a new block from `alloc(class_bytes)`. Returns the block and
    /// its class (pass both back to [`Pool::give_back`]). Cached blocks
    /// released to make room are passed to `release` (which frees them on
    /// the device) before `alloc` is called.
    pub fn take(
        &mut self,
        bytes: usize,
        mut alloc: impl FnMut(usize) -> Result<B>,
        mut release: impl FnMut(B),
    ) -> Result<(B, usize)> {
        let class = Self::size_class(bytes);
        if let Some(block) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.stats.cached -= class;
            self.stats.reuses += 1;
            self.mark_used(class);
            return Ok((block, class));
        }
        if let Some(budget) = self.budget {
            if self.stats.in_use + class > budget {
                return Err(Error::Cuda(format!(
                    "GPU memory budget exceeded: a request for {} (size class {}) needs {} \
                     with {} already in use, but the budget is {}; raise --gpu-mem or \
                     use a smaller batch",
                    format_bytes(bytes),
                    format_bytes(class),
                    format_bytes(self.stats.in_use + class),
                    format_bytes(self.stats.in_use),
                    format_bytes(budget)
                )));
            }
            while self.stats.in_use + self.stats.cached + class > budget {
                match self.pop_any_free() {
                    Some(block) => release(block),
                    None => break,
                }
            }
        }
        let block = match alloc(class) {
            Ok(b) => b,
            Err(first) => {
                // The device itself is full: drop the cache and try once more.
                if self.stats.cached == 0 {
                    return Err(first);
                }
                for b in self.trim() {
                    release(b);
                }
                alloc(class)?
            }
        };
        self.stats.device_allocs += 1;
        self.mark_used(class);
        Ok((block, class))
    }

    /// Returns a block taken with [`Pool::take`] to the cache.
    pub fn give_back(&mut self, block: B, class: usize) {
        self.stats.in_use = self.stats.in_use.saturating_sub(class);
        self.stats.cached += class;
        self.free.entry(class).or_default().push(block);
    }

    /// Empties the cache, returning the blocks for the caller to free.
    pub fn trim(&mut self) -> Vec<B> {
        let blocks: Vec<B> = std::mem::take(&mut self.free)
            .into_values()
            .flatten()
            .collect();
        self.stats.cached = 0;
        blocks
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Sets both peaks to the current values.
    pub fn reset_peak(&mut self) {
        self.stats.peak_in_use = self.stats.in_use;
        self.stats.peak_held = self.stats.in_use + self.stats.cached;
    }

    /// Raises the peaks to at least those of `earlier` (undoes a
    /// [`Pool::reset_peak`] done to measure one step, keeping that step's
    /// own peak if higher).
    pub fn merge_peak(&mut self, earlier: &PoolStats) {
        let s = &mut self.stats;
        s.peak_in_use = s.peak_in_use.max(earlier.peak_in_use);
        s.peak_held = s.peak_held.max(earlier.peak_held);
    }

    fn mark_used(&mut self, class: usize) {
        let s = &mut self.stats;
        s.in_use += class;
        s.peak_in_use = s.peak_in_use.max(s.in_use);
        s.peak_held = s.peak_held.max(s.in_use + s.cached);
    }

    /// Takes a cached block, largest class first (frees the most per call).
    fn pop_any_free(&mut self) -> Option<B> {
        let (&class, _) = self.free.iter().rev().find(|(_, v)| !v.is_empty())?;
        let block = self.free.get_mut(&class)?.pop()?;
        self.stats.cached -= class;
        Some(block)
    }
}

/// Parses a byte count: a number with an optional unit, binary (`KiB`, `MiB`,
/// `GiB`, `TiB`) or decimal (`KB`/`kB`, `MB`, `GB`, `TB`), or `B`; case and
/// spaces between number and unit do not matter, fractions are allowed
/// (`1.5GiB`). `2G` and `512M` are read as binary units, the way `--gpu-mem`
/// users mean them.
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: &str| {
        Error::invalid(
            "parse_bytes",
            format!(
                "'{s}' is not a byte count ({why}); expected e.g. 2GiB, 512MiB, 1.5GB, 1048576"
            ),
        )
    };
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let value: f64 = num.parse().map_err(|_| bad("bad number"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(bad(&format!("unknown unit '{}'", unit.trim()))),
    };
    let bytes = (value * mult).round();
    if !bytes.is_finite() || bytes > usize::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes as usize)
}

/// Formats a byte count with a binary unit (`1.50 GiB`).
pub fn format_bytes(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestPool = Pool<u32>;

    fn counter() -> impl FnMut(usize) -> Result<u32> {
        let mut next = 0;
        move |_| {
            next += 1;
            Ok(next)
        }
    }

    #[test]
    fn parse_bytes_units() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("2gib").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("512 M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("64kB").unwrap(), 64_000);
        assert_eq!(parse_bytes("4KiB").unwrap(), 4096);
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes(" 100B ").unwrap(), 100);
        assert_eq!(parse_bytes("0").unwrap(), 0);
    }

    #[test]
    fn parse_bytes_rejects_garbage() {
        for bad in ["", "GiB", "2XB", "-1GiB", "1.2.3G", "lots", "1e999GiB"] {
            let e = parse_bytes(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn format_bytes_reads_well() {
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(2048), "2.00 KiB");
    }

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(TestPool::size_class(0), MIN_CLASS);
        assert_eq!(TestPool::size_class(1), MIN_CLASS);
        assert_eq!(TestPool::size_class(512), 512);
        assert_eq!(TestPool::size_class(513), 640);
        assert_eq!(TestPool::size_class(1024), 1024);
        assert_eq!(TestPool::size_class(1025), 1280);
        assert_eq!(TestPool::size_class(3 << 20), 3 << 20);
        for bytes in (1..5000).chain([123_456, 10_000_000, 987_654_321]) {
            let c = TestPool::size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(128), "{bytes} -> {c}");
            assert!(c <= MIN_CLASS.max(bytes + bytes / 4), "{bytes} -> {c}");
        }
    }

    #[test]
    fn freed_blocks_are_reused_by_size_class() {
        let mut pool = TestPool::new(None);
        let mut alloc = counter();
        let (a, ca) = pool.take(1000, &mut alloc, drop).unwrap();
        let (b, cb) = pool.take(5000, &mut alloc, drop).unwrap();
        assert_eq!((a, b), (1, 2));
        pool.give_back(a, ca);
        // 1000 and 900 share the class 1024: the freed block comes back.
        let (c, cc) = pool.take(900, &mut alloc, drop).unwrap();
        assert_eq!((c, cc), (1, 1024));
        // 2000 is another class: a new block.
        let (d, _) = pool.take(2000, &mut alloc, drop).unwrap();
        assert_eq!(d, 3);
        let s = pool.stats();
        assert_eq!((s.device_allocs, s.reuses), (3, 1));
        assert_eq!(s.in_use, 1024 + cb + 2048);
        pool.give_back(b, cb);
        assert_eq!(pool.stats().cached, cb);
    }

    #[test]
    fn peaks_track_the_high_water_mark() {
        let mut pool = TestPool::new(None);
        let mut alloc = counter();
        let (a, ca) = pool.take(4096, &mut alloc, drop).unwrap();
        let (b, cb) = pool.take(4096, &mut alloc, drop).unwrap();
        pool.give_back(a, ca);
        pool.give_back(b, cb);
        let s = pool.stats();
        assert_eq!(
            (s.in_use, s.cached, s.peak_in_use, s.peak_held),
            (0, 8192, 8192, 8192)
        );
        let (c, cc) = pool.take(4096, &mut alloc, drop).unwrap();
        assert_eq!(
            pool.stats().peak_in_use,
            8192,
            "peak is not lowered by reuse"
        );
        pool.reset_peak();
        assert_eq!(pool.stats().peak_in_use, 4096);
        assert_eq!(pool.stats().peak_held, 8192);
        pool.give_back(c, cc);
        assert_eq!(pool.trim().len(), 2);
        assert_eq!(pool.stats().cached, 0);
    }

    #[test]
    fn budget_error_names_the_need_and_the_budget() {
        let mut pool = TestPool::new(Some(8192));
        let mut alloc = counter();
        let (_a, _) = pool.take(6000, &mut alloc, drop).unwrap(); // class 6144
        let e = pool.take(4000, &mut alloc, drop).unwrap_err().to_string();
        assert!(e.contains("budget exceeded"), "{e}");
        assert!(e.contains("8.00 KiB"), "budget in message: {e}");
        assert!(
            e.contains("10.00 KiB"),
            "need (6 KiB in use + 4 KiB) in message: {e}"
        );
        assert!(e.contains("3.91 KiB"), "the request in message: {e}");
        // A request that fits still works.
        assert!(pool.take(2000, &mut alloc, drop).is_ok());
    }

    #[test]
    fn cached_blocks_are_released_to_make_room() {
        let mut pool = TestPool::new(Some(8192));
        let mut alloc = counter();
        let (a, ca) = pool.take(4096, &mut alloc, drop).unwrap();
        let (b, cb) = pool.take(4096, &mut alloc, drop).unwrap();
        pool.give_back(a, ca);
        pool.give_back(b, cb);
        // 8 KiB cached, nothing in use: a 6 KiB request must free cache first.
        let mut released = Vec::new();
        let (c, _) = pool
            .take(6144, &mut alloc, |blk| released.push(blk))
            .unwrap();
        assert_eq!(c, 3);
        assert_eq!(released.len(), 2, "both 4 KiB blocks had to go");
        let s = pool.stats();
        assert!(s.in_use + s.cached <= 8192, "{s:?}");
        assert_eq!(s.peak_held, 8192);
    }

    #[test]
    fn device_oom_retries_after_dropping_the_cache() {
        let mut pool = TestPool::new(None);
        let (a, ca) = pool.take(4096, |_| Ok(1), drop).unwrap();
        pool.give_back(a, ca);
        let mut calls = 0;
        let mut released = 0;
        let r = pool.take(
            100_000,
            |_| {
                calls += 1;
                if calls == 1 {
                    Err(Error::Cuda("out of memory".into()))
                } else {
                    Ok(2)
                }
            },
            |_| released += 1,
        );
        assert_eq!(r.unwrap().0, 2);
        assert_eq!((calls, released), (2, 1));
        // With nothing cached, the device error comes straight back.
        let e = pool
            .take(1 << 20, |_| Err(Error::Cuda("out of memory".into())), drop)
            .unwrap_err();
        assert!(e.to_string().contains("out of memory"));
    }

    #[test]
    fn lowering_the_budget_releases_cache_only() {
        let mut pool = TestPool::new(None);
        let mut alloc = counter();
        let (a, ca) = pool.take(4096, &mut alloc, drop).unwrap();
        let (_b, _) = pool.take(4096, &mut alloc, drop).unwrap();
        pool.give_back(a, ca);
        let released = pool.set_budget(Some(4096));
        assert_eq!(released, vec![1]);
        assert_eq!(pool.stats().in_use, 4096);
        assert_eq!(pool.stats().budget, Some(4096));
    }

    #[test]
    fn merge_peak_keeps_the_higher_peak() {
        let mut p = TestPool::new(None);
        let (b, c) = p.take(4096, |c| Ok(c as u32), drop).unwrap();
        p.give_back(b, c);
        let before = p.stats();
        p.reset_peak();
        assert_eq!(p.stats().peak_in_use, 0);
        let (_b, _c) = p.take(1024, |c| Ok(c as u32), drop).unwrap();
        p.merge_peak(&before);
        assert_eq!(p.stats().peak_in_use, 4096);
    }
}
