//! General matrix multiply, C (m×n) = A (m×k) · B (k×n), on strided views.
//!
//! This is the workhorse of conv (through im2col), conv-transpose and linear
//! layers, so it is written for speed, in the style of BLIS / GotoBLAS:
//!
//! 1. **Blocking.** k is cut into slabs of about `KC`, m into blocks of about
//!    `MC`; an A block (`MC×KC`, ≤ 512 KiB) stays in L2.
//! 2. **Packing.** The A block is copied into *row panels* `MR` rows tall,
//!    and B, one *column panel* `NR` wide at a time, into a panel buffer;
//!    both are stored k-major so the micro-kernel walks them with unit
//!    stride, and ragged panels are zero-padded. Packing reads through the
//!    strides of the views, so a transposed operand costs nothing extra: it
//!    is just another copy loop (8×8 register transposes with AVX). A
//!    row-major B is not copied in a separate pass at all: the first kernel
//!    call on each panel reads it in place and writes the packed copy as it
//!    goes (`FUSED`), so the copy hides behind the arithmetic.
//! 3. **Micro-kernel.** An `MR×NR` tile of C lives in registers for the whole
//!    k-slab: per step it loads `NR` values of B (two vectors), broadcasts
//!    `MR` values of A and does `MR·NR/lanes` fused multiply-adds. AVX-512:
//!    8×32 (16 accumulators); AVX2+FMA: 6×16; else a portable 4×8 loop the
//!    compiler vectorises. Each B panel is used by every A panel of the
//!    block before the next is read, so it stays in L1; the next row-major
//!    panel is prefetched a share at a time during those passes, so reading
//!    B (possibly from L3) overlaps the arithmetic.
//! 4. **Threads.** Big problems are cut into column strips of whole panels,
//!    a few per thread of the rayon pool so that a thread the OS delays
//!    does not hold up the rest; the strips share one packed copy of A.
//!    With a single B panel the cut is by rows instead.
//!
//! Small problems must not pay for machinery they do not need: with a single
//! A panel (m ≤ MR) and a row-major B, B is read in place and never copied;
//! packing buffers are thread-local and reused, so a call allocates nothing
//! after the first; problems below [`PAR_MIN_FLOPS`] run on the calling
//! thread; and when n is much narrower than a panel (10 logits) the problem
//! is turned around, Cᵀ = Bᵀ·Aᵀ, so the tiles are not mostly padding.
//!
//! Measured on the 2-core Sapphire Rapids dev machine (one core: ~168
//! GFLOP/s FMA peak at its sustained clock), one thread: 140–165 GFLOP/s on
//! the CIFAR conv shapes, 110–130 on the LeNet and linear ones;
//! `GEMM_QUICK=1 cargo bench --bench gemm` prints the table.
//!
//! The instruction set is chosen at run time ([`crate::cpu::simd::level`]);
//! [`gemm_at`] forces a level (tests compare every level against the naive
//! [`crate::cpu::reference::matmul`]).

use std::cell::Cell;

use crate::cpu::simd::{self, SimdLevel};

/// A read-only strided matrix view: element (i, j) is `data[i*rs + j*cs]`.
/// Transposition is just swapping the strides.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between rows.
    pub rs: usize,
    /// Distance between columns.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view with the given strides.
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        MatRef { data, rs, cs }
    }
    /// The transposed view.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// The view starting at element (i, j), same strides. `None` when the
    /// offset lies past the data.
    fn offset(self, i: usize, j: usize) -> Option<Self> {
        let off = i
            .checked_mul(self.rs)?
            .checked_add(j.checked_mul(self.cs)?)?;
        Some(MatRef {
            data: self.data.get(off..)?,
            rs: self.rs,
            cs: self.cs,
        })
    }
    /// True when every element of an `rows×cols` matrix lies inside `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1).checked_mul(self.rs).and_then(|r| {
            (cols - 1)
                .checked_mul(self.cs)
                .and_then(|c| r.checked_add(c))
        });
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// Below this many flops (2·m·n·k, about 50 µs of one core) a GEMM runs on
/// the calling thread: handing work to a pool thread costs 2–20 µs
/// (measured on the shared 2-core machine), more than it saves.
pub const PAR_MIN_FLOPS: usize = 8_000_000;

/// C = A·B (or C += A·B when `accumulate`), C row-major with row stride `ldc`.
///
/// Uses the best SIMD level of this CPU and the rayon pool for large
/// problems. When `accumulate` is false C is only written, never read (it may
/// hold garbage or NaN).
///
/// # Panics
/// When a view is too short for its shape (`a` must hold m×k, `b` k×n through
/// their strides), or `ldc < n`, or `c` is shorter than `(m-1)·ldc + n`: these
/// are caller bugs, and the fast kernels must never read or write outside
/// the slices.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_at(simd::level(), true, m, n, k, a, b, c, ldc, accumulate)
}

/// [`gemm`] at a given SIMD level (capped to what this CPU supports), on one
/// thread when `parallel` is false. Callers that already run one GEMM per
/// thread (conv over the images of a batch, inside a rayon loop) should pass
/// false: nested splitting only adds hand-offs.
///
/// # Panics
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_at(
    level: SimdLevel,
    parallel: bool,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // These checks make every raw access below in bounds.
    assert!(ldc >= n, "gemm: ldc = {ldc} is smaller than n = {n}");
    let c_need = (m - 1).checked_mul(ldc).and_then(|x| x.checked_add(n));
    assert!(
        matches!(c_need, Some(need) if need <= c.len()),
        "gemm: C holds {} values, a {m}×{n} matrix with row stride {ldc} needs more",
        c.len()
    );
    assert!(
        a.covers(m, k),
        "gemm: A holds {} values, too few for {m}×{k} with strides ({}, {})",
        a.data.len(),
        a.rs,
        a.cs
    );
    assert!(
        b.covers(k, n),
        "gemm: B holds {} values, too few for {k}×{n} with strides ({}, {})",
        b.data.len(),
        b.rs,
        b.cs
    );
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row.iter_mut().take(n).for_each(|v| *v = 0.0);
            }
        }
        return;
    }
    let level = supported(level);
    let (mr, nr) = tile_of(level);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    // Tiles are MR×NR with NR the wider side; when n is far narrower than
    // a panel (a linear layer with 10 outputs) most of each tile would be
    // padding, so compute Cᵀ = Bᵀ·Aᵀ instead, writing C through swapped
    // strides.
    let padded = |rows: usize, cols: usize| rows.div_ceil(mr) * mr * cols.div_ceil(nr) * nr;
    let swap = 4 * padded(n, m) < 3 * padded(m, n);
    let (m, n, a, b, crs, ccs) = if swap {
        (n, m, b.t(), a.t(), 1, ldc)
    } else {
        (m, n, a, b, ldc, 1)
    };
    let job = Job {
        m,
        k,
        a,
        b,
        c: c.as_mut_ptr(),
        crs,
        ccs,
        accumulate,
        apacked: std::ptr::null(),
    };
    match split_plan(m, n, mr, nr, threads, flops) {
        Split::None => {
            // SAFETY: the asserts above guarantee A, B and C cover the shapes.
            with_bufs(|bufs| unsafe { run(level, &job, 0, n, bufs) })
        }
        Split::Cols { parts, chunk } => {
            use rayon::prelude::*;
            // A is packed once, here, and shared: the strips are many
            // (so a thread that the OS delays does not hold up the rest),
            // and none of them pays for its own copy of A.
            let need = m.div_ceil(mr) * mr * k;
            with_shared_a(|buf| {
                let ap = aligned(buf, need);
                // SAFETY: A covers m×k; `ap` holds `need` floats, the size
                // of the full packed layout (see `serial_body`).
                unsafe { pack_a_all(level, &job, ap) };
                let job = &Job { apacked: ap, ..job };
                (0..parts).into_par_iter().for_each(|t| {
                    let j0 = t * chunk;
                    let j1 = (j0 + chunk).min(n);
                    // SAFETY: as for `Split::None`; strips of whole panels
                    // write disjoint columns of C, and the packed A is only
                    // read while they run.
                    with_bufs(|bufs| unsafe { run(level, job, j0, j1, bufs) });
                });
            });
        }
        Split::Rows { parts, chunk } => {
            use rayon::prelude::*;
            let whole = &job;
            (0..parts).into_par_iter().for_each(|t| {
                let i0 = t * chunk;
                let mm = chunk.min(m - i0);
                if let Some(a) = a.offset(i0, 0) {
                    let job = Job {
                        m: mm,
                        a,
                        // SAFETY: row i0 < m of C.
                        c: unsafe { whole.c.add(i0 * crs) },
                        ..*whole
                    };
                    // SAFETY: the row strip of A covers mm×k; row strips
                    // of C are disjoint.
                    with_bufs(|bufs| unsafe { run(level, &job, 0, n, bufs) });
                }
            });
        }
    }
}

/// One GEMM (or a row strip of one), as the drivers see it; the columns to
/// compute are passed separately.
#[derive(Clone, Copy)]
struct Job<'a> {
    m: usize,
    k: usize,
    a: MatRef<'a>,
    b: MatRef<'a>,
    /// Element (i, j) of C is at `c + i·crs + j·ccs` (ccs is 1 unless the
    /// problem was transposed).
    c: *mut f32,
    crs: usize,
    ccs: usize,
    accumulate: bool,
    /// A already packed in full (see `serial_body`), or null to pack A block
    /// by block.
    apacked: *const f32,
}

// SAFETY: threads share a `Job` only to write disjoint column strips of C
// and to read the packed A, which nobody writes while they run.
unsafe impl Sync for Job<'_> {}

/// How a problem is shared between threads.
#[derive(Debug, PartialEq)]
enum Split {
    None,
    /// `parts` strips of `chunk` columns (the last may be shorter).
    Cols {
        parts: usize,
        chunk: usize,
    },
    /// `parts` strips of `chunk` rows.
    Rows {
        parts: usize,
        chunk: usize,
    },
}

/// Work per column strip: small enough that a thread the OS delays leaves
/// little for the others to wait on, large enough that the rayon task
/// (about a microsecond) is noise.
const TASK_FLOPS: f64 = 4e6;

/// Picks the split. Columns whenever there are two B panels or more: the
/// strips share one packed A, and each B panel is packed by one thread
/// only. Otherwise (n ≤ NR) rows, one strip per thread, each packing the
/// (small) B. Strips are whole numbers of panels, so no extra edge tiles.
fn split_plan(m: usize, n: usize, mr: usize, nr: usize, threads: usize, flops: f64) -> Split {
    if threads < 2 || flops < PAR_MIN_FLOPS as f64 {
        return Split::None;
    }
    let n_pan = n.div_ceil(nr);
    let m_pan = m.div_ceil(mr);
    if n_pan >= 2 {
        let want = ((flops / TASK_FLOPS).ceil() as usize).max(threads);
        let chunk = n_pan.div_ceil(want.min(n_pan)) * nr;
        return Split::Cols {
            parts: n.div_ceil(chunk),
            chunk,
        };
    }
    let parts = threads.min(m_pan);
    let chunk = m_pan.div_ceil(parts.max(1)) * mr;
    let parts = m.div_ceil(chunk);
    if parts >= 2 {
        Split::Rows { parts, chunk }
    } else {
        Split::None
    }
}

/// The requested level if this CPU runs it, else the best one it does.
fn supported(level: SimdLevel) -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = avx2 && is_x86_feature_detected!("avx512f");
        match level {
            SimdLevel::Avx512 if avx512 => SimdLevel::Avx512,
            SimdLevel::Avx512 | SimdLevel::Avx2 if avx2 => SimdLevel::Avx2,
            _ => SimdLevel::Scalar,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        SimdLevel::Scalar
    }
}

/// The micro-tile (MR, NR) the given (supported) level uses.
fn tile_of(level: SimdLevel) -> (usize, usize) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => (Avx512Kernel::MR, Avx512Kernel::NR),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => (Avx2Kernel::MR, Avx2Kernel::NR),
        _ => (ScalarKernel::MR, ScalarKernel::NR),
    }
}

/// Computes columns `j0..j1` of the job's C on this thread.
///
/// # Safety
/// `level` must be supported by this CPU; A must cover m×k, B k×n, `c` must
/// be valid for writes of an m×n matrix with row stride `ldc ≥ n`, and
/// `j0..j1` lie within 0..n; a non-null `apacked` must hold A packed by
/// [`pack_a_all`] at the same level.
unsafe fn run(level: SimdLevel, job: &Job, j0: usize, j1: usize, bufs: &mut Bufs) {
    match level {
        // SAFETY: the caller guarantees the level and the shapes.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { run_avx512(job, j0, j1, bufs) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { run_avx2(job, j0, j1, bufs) },
        // SAFETY: as above (no CPU feature needed).
        _ => unsafe { serial_body::<ScalarKernel>(job, j0, j1, bufs) },
    }
}

/// Packs all of the job's A in the layout `serial_body` reads.
///
/// # Safety
/// As [`run`]; `dst` must hold ceil(m/MR)·MR·k floats.
unsafe fn pack_a_all(level: SimdLevel, job: &Job, dst: *mut f32) {
    match level {
        // SAFETY: the caller guarantees the level, the shapes and `dst`.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { pack_a_avx512(job, dst) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { pack_a_avx2(job, dst) },
        // SAFETY: as above.
        _ => unsafe { pack_a_body::<ScalarKernel>(job, dst) },
    }
}

/// The whole single-thread driver compiled with AVX-512 enabled, so the
/// packing loops are vectorised too and the kernel is inlined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512(job: &Job, j0: usize, j1: usize, bufs: &mut Bufs) {
    // SAFETY: forwarded contract of `run`.
    unsafe { serial_body::<Avx512Kernel>(job, j0, j1, bufs) }
}

/// As [`run_avx512`] for AVX2+FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(job: &Job, j0: usize, j1: usize, bufs: &mut Bufs) {
    // SAFETY: forwarded contract of `run`.
    unsafe { serial_body::<Avx2Kernel>(job, j0, j1, bufs) }
}

/// [`pack_a_body`] compiled with AVX-512 enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pack_a_avx512(job: &Job, dst: *mut f32) {
    // SAFETY: forwarded contract of `pack_a_all`.
    unsafe { pack_a_body::<Avx512Kernel>(job, dst) }
}

/// [`pack_a_body`] compiled with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_avx2(job: &Job, dst: *mut f32) {
    // SAFETY: forwarded contract of `pack_a_all`.
    unsafe { pack_a_body::<Avx2Kernel>(job, dst) }
}

// ---------------------------------------------------------------------------
// Blocking parameters and packing buffers.

/// Target k-slab length. An A micro-panel (KC·MR floats, 8 KiB) and a B
/// micro-panel (KC·NR floats, 32 KiB) together stay in the 48 KiB L1; a
/// longer slab would also amortise the C update over more steps, but
/// measured no faster.
const KC: usize = 256;
/// Target rows per A block: an MC×KC block (≤ 512 KiB) stays in the 2 MiB L2
/// while every B micro-panel sweeps over it; larger blocks mean B is read
/// fewer times when m is large (conv input-gradients: m = Cin·kh·kw).
const MC: usize = 512;

/// Splits `len` into equal blocks of at most about `target`, each a multiple
/// of `unit`: k = 576 becomes 3×192 rather than 256+256+64, so no slab is
/// too short to amortise its C update.
fn balanced_block(len: usize, target: usize, unit: usize) -> usize {
    let blocks = len.div_ceil(target).max(1);
    len.div_ceil(blocks).div_ceil(unit) * unit
}

/// Largest micro-tile (MR·NR) of any kernel, for the edge scratch tile.
const MAX_TILE: usize = 512;

/// Thread-local packing buffers, grown on demand and reused across calls.
#[derive(Default)]
struct Bufs {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static BUFS: Cell<Bufs> = Cell::new(Bufs::default());
    /// The fully packed A that the column strips of a parallel GEMM share.
    static SHARED_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffers. They are taken out of the
/// thread-local for the call, so a re-entrant call (or one during thread
/// teardown) simply gets fresh, empty ones instead of failing.
fn with_bufs<R>(f: impl FnOnce(&mut Bufs) -> R) -> R {
    let mut bufs = BUFS.try_with(Cell::take).unwrap_or_default();
    let r = f(&mut bufs);
    let _ = BUFS.try_with(|cell| cell.set(bufs));
    r
}

/// As [`with_bufs`] for the shared packed-A buffer.
fn with_shared_a<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut buf = SHARED_A.try_with(Cell::take).unwrap_or_default();
    let r = f(&mut buf);
    let _ = SHARED_A.try_with(|cell| cell.set(buf));
    r
}

/// A 64-byte aligned pointer to at least `len` floats of `v`.
fn aligned(v: &mut Vec<f32>, len: usize) -> *mut f32 {
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let p = v.as_mut_ptr();
    // align_offset is at most 15 floats here (f32 is 4-aligned), and we
    // reserved 16 spare floats.
    let off = p.align_offset(64).min(15);
    // SAFETY: off ≤ 15 < the 16 spare floats, so p+off+len is in bounds.
    unsafe { p.add(off) }
}

// ---------------------------------------------------------------------------
// The driver.

/// Where a micro-kernel reads its B panel from.
///
/// `PACKED`: the packed buffer (row stride NR). `DIRECT`: row-major B itself
/// (row stride `ldb`), prefetching the next panel. `FUSED`: as `DIRECT`, and
/// the kernel also writes the panel into the packed buffer for the other A
/// panels. Fusing hides the cost of packing a row-major B behind the FMAs:
/// the copy is two extra stores per k step, and the (possibly cold) reads
/// of B overlap with arithmetic instead of running as a separate pass.
const PACKED: u8 = 0;
const DIRECT: u8 = 1;
const FUSED: u8 = 2;

/// One micro-kernel call: C[0..MR, 0..NR] (row stride `ldc`) = (C if
/// `acc`) + Σ_{p<k} a[p·MR + i] · b[p·ldb + j].
#[derive(Clone, Copy)]
struct Tile {
    k: usize,
    /// Packed A panel: MR values per step.
    a: *const f32,
    /// B panel: NR values per step, rows `ldb` apart.
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    /// With `FUSED`, where the packed copy of the B panel goes (k·NR floats).
    bpack: *mut f32,
    /// During its first `pf_rows` steps the kernel prefetches rows of a
    /// future B panel into L2, `pf_ld` apart from `pf` (addresses only, never
    /// dereferenced, so they need not be valid when `pf_rows` is 0).
    pf: *const f32,
    pf_ld: usize,
    pf_rows: usize,
}

/// A register-blocked micro-kernel for an MR×NR tile.
trait Kernel {
    const MR: usize;
    const NR: usize;
    /// Whether packing may use the AVX 8×8 transpose.
    const AVX: bool;
    /// # Safety
    /// `t.a` valid for k·MR reads, `t.b` for rows p < k of NR values at
    /// stride `ldb`, `t.c` for an MR×NR tile at row stride `ldc`, and with
    /// `MODE == FUSED` `t.bpack` for k·NR writes; CPU features present.
    unsafe fn tile<const MODE: u8>(t: Tile);
}

/// The blocked loop nest around a kernel (see the module docs).
///
/// # Safety
/// As [`serial`], and the kernel's CPU features must be present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn serial_body<K: Kernel>(job: &Job, j0: usize, j1: usize, bufs: &mut Bufs) {
    let Job {
        m,
        k,
        a,
        b,
        c,
        crs,
        ccs,
        accumulate,
        apacked,
    } = *job;
    let (mr, nr) = (K::MR, K::NR);
    debug_assert!(mr * nr <= MAX_TILE);
    let kc_blk = balanced_block(k, KC, 8);
    let mc_blk = balanced_block(m, MC, mr);
    // A row-major B is packed on the fly by the kernel (see `FUSED`).
    let fused = b.cs == 1;
    let abuf = if apacked.is_null() {
        aligned(&mut bufs.a, mc_blk * kc_blk)
    } else {
        std::ptr::null_mut()
    };
    let bbuf = aligned(&mut bufs.b, nr * kc_blk);
    let mut scratch = [0f32; MAX_TILE];
    let bp0 = b.data.as_ptr();

    for ic in (0..m).step_by(mc_blk) {
        let mc = (m - ic).min(mc_blk);
        let mc_pad = mc.div_ceil(mr) * mr;
        for pc in (0..k).step_by(kc_blk) {
            let kc = (k - pc).min(kc_blk);
            let acc = accumulate || pc > 0;
            // The packed A block (ic, pc): in the shared layout, row block
            // ic takes ic·k floats before it and slab pc sits mc_pad·pc into
            // it; otherwise it is packed now into the block buffer.
            let abuf: *const f32 = if apacked.is_null() {
                // SAFETY: as in `pack_a_block`; abuf holds mc_blk·kc_blk floats.
                unsafe { pack_a_block::<K>(a, ic, mc, pc, kc, abuf) };
                abuf
            } else {
                // SAFETY: inside the ceil(m/mr)·mr·k floats of the layout.
                unsafe { apacked.add(ic * k + mc_pad * pc) }
            };
            // One B micro-panel at a time, used by every A panel of the
            // block before the next is read: the panel stays in L1, the A
            // block in L2, and reading B (possibly from L3) is spread
            // evenly over the computation.
            for jr in (j0..j1).step_by(nr) {
                let cols = (j1 - jr).min(nr);
                // SAFETY: B covers k×n, so this panel's origin is in bounds.
                let bsrc = unsafe { bp0.add(pc * b.rs + jr * b.cs) };
                let first = if fused && cols == nr {
                    if mc <= mr {
                        DIRECT
                    } else {
                        FUSED
                    }
                } else {
                    // SAFETY: the panel (kc rows, `cols` columns) is inside
                    // B; bbuf holds nr·kc_blk floats.
                    unsafe { pack::<K>(bsrc, b.cs, b.rs, cols, kc, nr, bbuf) };
                    PACKED
                };
                let next_fused = fused && jr + 2 * nr <= j1;
                let passes = mc.div_ceil(mr);
                let pf_chunk = kc.div_ceil(passes.saturating_sub(1).max(1));
                for ir in (0..mc).step_by(mr) {
                    let rows = (mc - ir).min(mr);
                    // SAFETY: panel ir/mr of the packed A block.
                    let ap = unsafe { abuf.add(ir * kc) };
                    let mode = if ir == 0 { first } else { PACKED };
                    let (bp, ldb) = if mode == PACKED {
                        (bbuf as *const f32, nr)
                    } else {
                        (bsrc, b.rs)
                    };
                    let full = rows == mr && cols == nr && ccs == 1;
                    let (cp, ldt, acc_t) = if full {
                        // SAFETY: the tile lies inside the m×n C.
                        (unsafe { c.add((ic + ir) * crs + jr) }, crs, acc)
                    } else {
                        // Ragged edge or transposed C: the whole tile goes
                        // to a scratch tile (the packed panels are
                        // zero-padded) and only its valid part is copied
                        // out below.
                        (scratch.as_mut_ptr(), nr, false)
                    };
                    // Prefetch the next row-major panel, which the next
                    // FUSED call reads in place: during the PACKED passes,
                    // a share of its rows each, so fetching it (maybe from
                    // L3 or DRAM) overlaps arithmetic instead of stalling
                    // the FUSED pass; with a single pass, during that pass.
                    let (pf_r0, pf_rows) = if !next_fused {
                        (0, 0)
                    } else if mode == DIRECT {
                        (0, kc)
                    } else if mode == PACKED {
                        let r0 = (ir / mr - 1) * pf_chunk;
                        (r0, pf_chunk.min(kc.saturating_sub(r0)))
                    } else {
                        (0, 0)
                    };
                    let t = Tile {
                        k: kc,
                        a: ap,
                        b: bp,
                        ldb,
                        c: cp,
                        ldc: ldt,
                        acc: acc_t,
                        bpack: bbuf,
                        pf: bsrc.wrapping_add(nr + pf_r0 * b.rs),
                        pf_ld: b.rs,
                        pf_rows,
                    };
                    // SAFETY: ap/bp hold kc steps of their panels; cp is an
                    // MR×NR tile (of C, or of scratch: MAX_TILE ≥ mr·nr);
                    // bbuf has room for kc·nr floats.
                    unsafe {
                        match mode {
                            PACKED => K::tile::<PACKED>(t),
                            DIRECT => K::tile::<DIRECT>(t),
                            _ => K::tile::<FUSED>(t),
                        }
                    }
                    if !full {
                        let sp = scratch.as_ptr();
                        for i in 0..rows {
                            for j in 0..cols {
                                // SAFETY: i < rows, j < cols: inside C and
                                // inside the scratch tile.
                                unsafe {
                                    let d = c.add((ic + ir + i) * crs + (jr + j) * ccs);
                                    let s = *sp.add(i * nr + j);
                                    *d = if acc { *d + s } else { s };
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs the A block rows ic..ic+mc, columns pc..pc+kc into `dst`.
///
/// # Safety
/// A covers the block; `dst` holds ceil(mc/MR)·MR·kc floats; with `K::AVX`
/// the CPU has AVX.
#[inline(always)]
unsafe fn pack_a_block<K: Kernel>(
    a: MatRef,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    dst: *mut f32,
) {
    // SAFETY: forwarded; (ic, pc) is inside A.
    unsafe {
        let src = a.data.as_ptr().add(ic * a.rs + pc * a.cs);
        pack::<K>(src, a.rs, a.cs, mc, kc, K::MR, dst);
    }
}

/// Packs all of A, block by block, in the layout `serial_body` expects from
/// `Job::apacked`.
///
/// # Safety
/// A covers m×k; `dst` holds ceil(m/MR)·MR·k floats; with `K::AVX` the CPU
/// has AVX.
#[inline(always)]
unsafe fn pack_a_body<K: Kernel>(job: &Job, dst: *mut f32) {
    let (m, k, mr) = (job.m, job.k, K::MR);
    let kc_blk = balanced_block(k, KC, 8);
    let mc_blk = balanced_block(m, MC, mr);
    for ic in (0..m).step_by(mc_blk) {
        let mc = (m - ic).min(mc_blk);
        let mc_pad = mc.div_ceil(mr) * mr;
        for pc in (0..k).step_by(kc_blk) {
            let kc = (k - pc).min(kc_blk);
            // SAFETY: the block lies inside A, and its place in the layout
            // ends at ic·k + mc_pad·(pc + kc) ≤ ceil(m/mr)·mr·k.
            unsafe { pack_a_block::<K>(job.a, ic, mc, pc, kc, dst.add(ic * k + mc_pad * pc)) };
        }
    }
}

/// Packs a `w × kc` slab into panels `r` wide: element (x, p) — x along the
/// panel direction with stride `sw`, p along k with stride `sk` — lands at
/// `dst[(x / r)·kc·r + p·r + x % r]`; a ragged last panel is zero-padded.
///
/// `sw == 1` copies contiguous runs. `sk == 1` (a row-major A, a transposed
/// B) is a transpose: with AVX it moves 8×8 blocks through registers instead
/// of scattering single floats.
///
/// # Safety
/// `src` must be valid for every (x, p) with x < w, p < kc; `dst` for
/// `ceil(w/r)·r·kc` writes; with `K::AVX` the CPU must have AVX.
#[inline(always)]
unsafe fn pack<K: Kernel>(
    src: *const f32,
    sw: usize,
    sk: usize,
    w: usize,
    kc: usize,
    r: usize,
    dst: *mut f32,
) {
    let mut x0 = 0;
    while x0 < w {
        let cols = (w - x0).min(r);
        // SAFETY: caller guarantees the ranges; all offsets below stay in
        // x < w, p < kc for reads and within this panel for writes.
        unsafe {
            let s = src.add(x0 * sw);
            let d = dst.add(x0 * kc);
            // A ragged panel is zeroed whole, once, before its columns are
            // copied in: one memset of kc·r floats instead of kc calls for
            // the (r − cols)-float tails, which cost more in call overhead
            // than in stores (they showed up as 3 % of a LeNet training step).
            if cols < r {
                std::ptr::write_bytes(d, 0, kc * r);
            }
            if sw == 1 {
                for p in 0..kc {
                    std::ptr::copy_nonoverlapping(s.add(p * sk), d.add(p * r), cols);
                }
            } else {
                let mut x = 0;
                #[cfg(target_arch = "x86_64")]
                if K::AVX && sk == 1 {
                    let k8 = kc / 8 * 8;
                    while x + 8 <= cols {
                        let mut p = 0;
                        while p < k8 {
                            transpose8x8(s.add(x * sw + p), sw, d.add(p * r + x), r);
                            p += 8;
                        }
                        for p in k8..kc {
                            for xx in x..x + 8 {
                                *d.add(p * r + xx) = *s.add(xx * sw + p);
                            }
                        }
                        x += 8;
                    }
                }
                for x in x..cols {
                    let sp = s.add(x * sw);
                    let dp = d.add(x);
                    for p in 0..kc {
                        *dp.add(p * r) = *sp.add(p * sk);
                    }
                }
            }
        }
        x0 += r;
    }
}

/// Transposes the 8×8 block at `src` (row stride `ss`) into `dst` (row
/// stride `ds`): dst[j·ds + i] = src[i·ss + j].
///
/// # Safety
/// Both blocks must be valid (8 rows of 8 floats); AVX present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn transpose8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    // SAFETY: the caller guarantees the 8 rows of 8 floats at both ends.
    unsafe {
        // Row i's left half shares a register with row i+4's left half (the
        // 128-bit insert is a load, not a shuffle), likewise the right
        // halves; two rounds of in-lane interleaves then finish the job,
        // 16 shuffles for 64 floats.
        let half = |i: usize, j: usize| {
            _mm256_insertf128_ps::<1>(
                _mm256_castps128_ps256(_mm_loadu_ps(src.add(i * ss + j))),
                _mm_loadu_ps(src.add((i + 4) * ss + j)),
            )
        };
        let r = [
            half(0, 0),
            half(1, 0),
            half(2, 0),
            half(3, 0),
            half(0, 4),
            half(1, 4),
            half(2, 4),
            half(3, 4),
        ];
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let o = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for (j, v) in o.iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * ds), *v);
        }
    }
}

// ---------------------------------------------------------------------------
// Micro-kernels.

/// Portable kernel: plain loops over a small tile the compiler keeps in
/// registers (and vectorises at the baseline SSE2/NEON level).
struct ScalarKernel;

impl Kernel for ScalarKernel {
    const MR: usize = 4;
    const NR: usize = 8;
    const AVX: bool = false;
    #[inline(always)]
    unsafe fn tile<const MODE: u8>(t: Tile) {
        let Tile {
            k,
            a,
            b,
            ldb,
            c,
            ldc,
            acc,
            bpack,
            ..
        } = t;
        const MR: usize = ScalarKernel::MR;
        const NR: usize = ScalarKernel::NR;
        let mut acc_t = [[0f32; NR]; MR];
        for p in 0..k {
            // SAFETY: per the trait contract, a holds k·MR and b k rows.
            let (av, bv) = unsafe {
                (
                    *(a.add(p * MR) as *const [f32; MR]),
                    *(b.add(p * ldb) as *const [f32; NR]),
                )
            };
            if MODE == FUSED {
                // SAFETY: bpack holds k·NR floats.
                unsafe { *(bpack.add(p * NR) as *mut [f32; NR]) = bv };
            }
            for i in 0..MR {
                for j in 0..NR {
                    acc_t[i][j] += av[i] * bv[j];
                }
            }
        }
        for (i, row) in acc_t.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: inside the MR×NR tile of C.
                unsafe {
                    let d = c.add(i * ldc + j);
                    *d = if acc { *d + v } else { *v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// How many k steps ahead the kernels prefetch an unpacked B row.
#[cfg(target_arch = "x86_64")]
const PF_ROWS: usize = 8;

/// AVX-512 kernel: 8×32 tile = 16 zmm accumulators, 2 B vectors per step,
/// A values broadcast from memory into the FMAs. 8 rows divide every
/// channel count of the models (8, 16, 32, 64, 128), so A is never padded;
/// 16 accumulators are twice the 4-cycle × 2-port FMA latency.
#[cfg(target_arch = "x86_64")]
struct Avx512K<const MR: usize, const NV: usize>;
#[cfg(target_arch = "x86_64")]
type Avx512Kernel = Avx512K<8, 2>;

#[cfg(target_arch = "x86_64")]
impl<const MR_: usize, const NV: usize> Kernel for Avx512K<MR_, NV> {
    const MR: usize = MR_;
    const NR: usize = 16 * NV;
    const AVX: bool = true;
    #[inline(always)]
    unsafe fn tile<const MODE: u8>(t: Tile) {
        // SAFETY: forwarded trait contract (AVX-512F present).
        unsafe { tile_avx512::<MR_, NV, MODE>(t) }
    }
}

/// The AVX-512 register-blocked kernel for an MR × (16·NV) tile.
///
/// # Safety
/// As [`Kernel::tile`] with MR and NR = 16·NV; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
#[allow(unused_assignments)] // the pointer bumps after the last step
unsafe fn tile_avx512<const MR: usize, const NV: usize, const MODE: u8>(t: Tile) {
    let Tile {
        k,
        a,
        b,
        ldb,
        c,
        ldc,
        acc,
        bpack,
        pf,
        pf_ld,
        pf_rows,
    } = t;
    let nr = 16 * NV;
    let mut t = [[_mm512_setzero_ps(); NV]; MR];
    let mut ap = a;
    let mut bp = b;
    let mut wp = bpack;
    let mut q = pf;
    // One k step; `$pf` says whether to prefetch a row of the future panel.
    macro_rules! step {
        ($pf:expr) => {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: row p of the B panel holds 16·NV floats.
                *x = unsafe { _mm512_loadu_ps(bp.add(16 * v)) };
            }
            if MODE == FUSED {
                for (v, x) in bv.iter().enumerate() {
                    // SAFETY: bpack holds k·NR floats, this is row p.
                    unsafe { _mm512_storeu_ps(wp.add(16 * v), *x) };
                }
                wp = wp.wrapping_add(nr);
            }
            if MODE != PACKED {
                // Rows of a row-major B are far apart (often a whole page),
                // which defeats the hardware prefetchers: fetch 8 rows ahead.
                let f = bp.wrapping_add(PF_ROWS * ldb);
                _mm_prefetch::<_MM_HINT_T0>(f as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(f.wrapping_add(nr - 1) as *const i8);
            }
            if $pf {
                _mm_prefetch::<_MM_HINT_T1>(q as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(nr - 1) as *const i8);
                q = q.wrapping_add(pf_ld);
            }
            for (i, row) in t.iter_mut().enumerate() {
                // SAFETY: the A panel holds MR floats per step.
                let av = _mm512_set1_ps(unsafe { *ap.add(i) });
                for (r, x) in row.iter_mut().zip(bv.iter()) {
                    *r = _mm512_fmadd_ps(av, *x, *r);
                }
            }
            ap = ap.wrapping_add(MR);
            bp = bp.wrapping_add(ldb);
        };
    }
    let pf_n = pf_rows.min(k);
    for _ in 0..pf_n {
        step!(true);
    }
    let rest = k - pf_n;
    for _ in 0..rest / 2 {
        step!(false);
        step!(false);
    }
    if rest % 2 == 1 {
        step!(false);
    }
    for (i, row) in t.iter().enumerate() {
        for (v, r) in row.iter().enumerate() {
            // SAFETY: inside the MR×16·NV tile of C.
            unsafe {
                let d = c.add(i * ldc + 16 * v);
                let x = if acc {
                    _mm512_add_ps(_mm512_loadu_ps(d), *r)
                } else {
                    *r
                };
                _mm512_storeu_ps(d, x);
            }
        }
    }
}

/// AVX2+FMA kernel: 6×16 tile = 12 ymm accumulators.
#[cfg(target_arch = "x86_64")]
struct Avx2Kernel;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx2Kernel {
    const MR: usize = 6;
    const NR: usize = 16;
    const AVX: bool = true;
    #[inline(always)]
    unsafe fn tile<const MODE: u8>(t: Tile) {
        // SAFETY: forwarded trait contract (AVX2+FMA present).
        unsafe { tile_avx2::<6, 2, MODE>(t) }
    }
}

/// The AVX2 register-blocked kernel for an MR × (8·NV) tile.
///
/// # Safety
/// As [`Kernel::tile`] with MR and NR = 8·NV; AVX2 and FMA present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(unused_assignments)] // the pointer bumps after the last step
unsafe fn tile_avx2<const MR: usize, const NV: usize, const MODE: u8>(t: Tile) {
    let Tile {
        k,
        a,
        b,
        ldb,
        c,
        ldc,
        acc,
        bpack,
        pf,
        pf_ld,
        pf_rows,
    } = t;
    let nr = 8 * NV;
    let mut t = [[_mm256_setzero_ps(); NV]; MR];
    let mut ap = a;
    let mut bp = b;
    let mut wp = bpack;
    let mut q = pf;
    // One k step, prefetching as in the AVX-512 kernel.
    macro_rules! step {
        ($pf:expr) => {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: row p of the B panel holds 8·NV floats.
                *x = unsafe { _mm256_loadu_ps(bp.add(8 * v)) };
            }
            if MODE == FUSED {
                for (v, x) in bv.iter().enumerate() {
                    // SAFETY: bpack holds k·NR floats, this is row p.
                    unsafe { _mm256_storeu_ps(wp.add(8 * v), *x) };
                }
                wp = wp.wrapping_add(nr);
            }
            if MODE != PACKED {
                let f = bp.wrapping_add(PF_ROWS * ldb);
                _mm_prefetch::<_MM_HINT_T0>(f as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(f.wrapping_add(nr - 1) as *const i8);
            }
            if $pf {
                _mm_prefetch::<_MM_HINT_T1>(q as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(q.wrapping_add(nr - 1) as *const i8);
                q = q.wrapping_add(pf_ld);
            }
            for (i, row) in t.iter_mut().enumerate() {
                // SAFETY: the A panel holds MR floats per step.
                let av = unsafe { _mm256_broadcast_ss(&*ap.add(i)) };
                for (r, x) in row.iter_mut().zip(bv.iter()) {
                    *r = _mm256_fmadd_ps(av, *x, *r);
                }
            }
            ap = ap.wrapping_add(MR);
            bp = bp.wrapping_add(ldb);
        };
    }
    let pf_n = pf_rows.min(k);
    for _ in 0..pf_n {
        step!(true);
    }
    let rest = k - pf_n;
    for _ in 0..rest / 2 {
        step!(false);
        step!(false);
    }
    if rest % 2 == 1 {
        step!(false);
    }
    for (i, row) in t.iter().enumerate() {
        for (v, r) in row.iter().enumerate() {
            // SAFETY: inside the MR×8·NV tile of C.
            unsafe {
                let d = c.add(i * ldc + 8 * v);
                let x = if acc {
                    _mm256_add_ps(_mm256_loadu_ps(d), *r)
                } else {
                    *r
                };
                _mm256_storeu_ps(d, x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::reference;
    use crate::cpu::simd::available_levels;
    use rand::{Rng, SeedableRng};

    /// One operand stored either row-major or transposed, with a padded
    /// leading dimension, plus its dense row-major copy for the reference.
    struct Operand {
        store: Vec<f32>,
        rs: usize,
        cs: usize,
        dense: Vec<f32>,
    }

    impl Operand {
        fn new(rows: usize, cols: usize, trans: bool, pad: usize, rng: &mut impl Rng) -> Self {
            let dense: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let (rs, cs, len) = if trans {
                // stored cols×rows with leading dimension rows+pad
                (1, rows + pad, cols * (rows + pad))
            } else {
                (cols + pad, 1, rows * (cols + pad))
            };
            let mut store = vec![f32::NAN; len.max(1)];
            for i in 0..rows {
                for j in 0..cols {
                    store[i * rs + j * cs] = dense[i * cols + j];
                }
            }
            Operand {
                store,
                rs,
                cs,
                dense,
            }
        }
        fn view(&self) -> MatRef<'_> {
            MatRef::new(&self.store, self.rs, self.cs)
        }
    }

    struct Case {
        m: usize,
        n: usize,
        k: usize,
        a: Operand,
        b: Operand,
        ldc: usize,
        c0: Vec<f32>,
        want_ab: Vec<f32>,
    }

    const SENTINEL: f32 = 12345.0;

    impl Case {
        fn new(m: usize, n: usize, k: usize, ta: bool, tb: bool, seed: u64) -> Self {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let pad = (seed % 3) as usize;
            let a = Operand::new(m, k, ta, pad, &mut rng);
            let b = Operand::new(k, n, tb, pad, &mut rng);
            let ldc = n + (seed % 5) as usize;
            let c0 = (0..m * ldc)
                .map(|idx| {
                    if idx % ldc >= n {
                        SENTINEL
                    } else {
                        rng.gen_range(-1.0..1.0)
                    }
                })
                .collect();
            let want_ab = reference::matmul(&a.dense, &b.dense, m, k, n);
            Case {
                m,
                n,
                k,
                a,
                b,
                ldc,
                c0,
                want_ab,
            }
        }

        /// Runs gemm_at and returns C; with `accumulate` false, C starts as NaN.
        fn run(&self, level: SimdLevel, parallel: bool, accumulate: bool) -> Vec<f32> {
            let mut c: Vec<f32> = if accumulate {
                self.c0.clone()
            } else {
                self.c0
                    .iter()
                    .map(|&v| if v == SENTINEL { v } else { f32::NAN })
                    .collect()
            };
            gemm_at(
                level,
                parallel,
                self.m,
                self.n,
                self.k,
                self.a.view(),
                self.b.view(),
                &mut c,
                self.ldc,
                accumulate,
            );
            c
        }

        /// Checks C against the reference; the padding columns must be untouched.
        fn check(&self, level: SimdLevel, parallel: bool, accumulate: bool, what: &str) {
            let got = self.run(level, parallel, accumulate);
            let scale = (self.k.max(1) as f32).sqrt();
            let mut bad = Vec::new();
            let mut nbad = 0;
            for i in 0..self.m {
                for j in 0..self.ldc {
                    let idx = i * self.ldc + j;
                    let g = got[idx];
                    let ok;
                    let w;
                    if j >= self.n {
                        w = SENTINEL;
                        ok = g == SENTINEL;
                    } else {
                        w = self.want_ab[i * self.n + j]
                            + if accumulate { self.c0[idx] } else { 0.0 };
                        ok = (g - w).abs() <= (1e-4 + 1e-4 * w.abs()) * scale;
                    }
                    if !ok {
                        nbad += 1;
                        if bad.len() < 6 {
                            bad.push(format!("C[{i},{j}] = {g}, want {w}"));
                        }
                    }
                }
            }
            assert!(
                nbad == 0,
                "{what}: level {level}, parallel {parallel}, accumulate {accumulate}, \
                 m={} n={} k={} ldc={}: {nbad} mismatches, first: {}",
                self.m,
                self.n,
                self.k,
                self.ldc,
                bad.join("; ")
            );
        }
    }

    fn check_all(m: usize, n: usize, k: usize, seed: u64, what: &str) {
        for (t, (ta, tb)) in [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .enumerate()
        {
            let case = Case::new(m, n, k, ta, tb, seed + t as u64);
            let what = format!(
                "{what} (A{} B{})",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" }
            );
            for level in available_levels() {
                for parallel in [false, true] {
                    for accumulate in [false, true] {
                        case.check(level, parallel, accumulate, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn small_odd_shapes_match_reference_at_every_level() {
        let edge = [
            1, 2, 3, 5, 7, 8, 13, 14, 15, 16, 17, 29, 31, 32, 33, 47, 63, 64, 65, 70,
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
        for &s in &edge {
            // Each edge size along each dimension, the others random.
            shapes.push((s, rng.gen_range(1..=70), rng.gen_range(1..=70)));
            shapes.push((rng.gen_range(1..=70), s, rng.gen_range(1..=70)));
            shapes.push((rng.gen_range(1..=70), rng.gen_range(1..=70), s));
        }
        for _ in 0..40 {
            shapes.push((
                rng.gen_range(1..=70),
                rng.gen_range(1..=70),
                rng.gen_range(1..=70),
            ));
        }
        for (idx, (m, n, k)) in shapes.into_iter().enumerate() {
            check_all(m, n, k, idx as u64 * 4, "small");
        }
    }

    #[test]
    fn model_shapes_match_reference_at_every_level() {
        let shapes = [
            // conv forward per image (m=Cout, n=HW, k=Cin·kh·kw)
            (8, 576, 25),
            (16, 64, 200),
            (64, 1024, 27),
            (64, 1024, 576),
            (128, 256, 1152),
            (128, 64, 1152),
            // conv input-grad (m=Cin·kh·kw, n=HW, k=Cout) and weight-grad
            (576, 256, 64),
            (64, 576, 1024),
            // linear
            (32, 120, 256),
            (32, 10, 512),
            (10, 32, 120),
            // several k slabs and m blocks, with ragged last ones
            (350, 800, 400),
            (1100, 40, 30),
            (20, 50, 1000),
            // a single B panel: the parallel split goes by rows
            (300, 20, 2000),
        ];
        for (idx, (m, n, k)) in shapes.into_iter().enumerate() {
            check_all(m, n, k, 1000 + idx as u64 * 4, "model");
        }
    }

    #[test]
    fn parallel_and_serial_agree_bit_for_bit() {
        for (m, n, k) in [
            (64, 1024, 576),
            (300, 70, 500),
            (8, 4000, 300),
            (300, 20, 2000),
        ] {
            let case = Case::new(m, n, k, false, true, 99);
            for level in available_levels() {
                let s = case.run(level, false, false);
                let p = case.run(level, true, false);
                let first = s
                    .iter()
                    .zip(&p)
                    .position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(first.is_none(), "{level} {m}x{n}x{k}: differ at {first:?}");
            }
        }
    }

    #[test]
    fn balanced_blocks_cover_the_length() {
        assert_eq!(balanced_block(576, 256, 8), 192);
        assert_eq!(balanced_block(1152, 256, 8), 232);
        assert_eq!(balanced_block(25, 256, 8), 32);
        assert_eq!(balanced_block(1152, 512, 8), 384);
        assert_eq!(balanced_block(1, 512, 6), 6);
        for len in 1..2000 {
            let b = balanced_block(len, 256, 8);
            assert!(
                b.is_multiple_of(8) && b <= 256 + 7 && b * len.div_ceil(256) >= len,
                "{len}"
            );
        }
    }

    #[test]
    fn empty_dimensions() {
        // k = 0: C = 0, or unchanged when accumulating.
        let mut c = vec![f32::NAN; 6];
        gemm(
            2,
            3,
            0,
            MatRef::new(&[], 0, 1),
            MatRef::new(&[], 3, 1),
            &mut c,
            3,
            false,
        );
        assert_eq!(c, vec![0.0; 6]);
        let mut c = vec![1.5; 6];
        gemm(
            2,
            3,
            0,
            MatRef::new(&[], 0, 1),
            MatRef::new(&[], 3, 1),
            &mut c,
            3,
            true,
        );
        assert_eq!(c, vec![1.5; 6]);
        // m = 0 or n = 0: nothing to do, C untouched.
        let mut c = vec![7.0; 2];
        gemm(
            0,
            2,
            3,
            MatRef::new(&[], 3, 1),
            MatRef::new(&[1.0; 6], 2, 1),
            &mut c,
            2,
            false,
        );
        assert_eq!(c, vec![7.0; 2]);
    }

    #[test]
    fn stride_zero_broadcast_view() {
        // A row repeated through rs = 0: every row of C is the same.
        let a = [1.0, 2.0, 3.0];
        let b: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut c = vec![0.0; 8];
        gemm(
            4,
            2,
            3,
            MatRef::new(&a, 0, 1),
            MatRef::new(&b, 2, 1),
            &mut c,
            2,
            false,
        );
        assert_eq!(c, [16.0, 22.0].repeat(4));
    }

    #[test]
    #[should_panic(expected = "gemm: B holds")]
    fn short_view_is_rejected() {
        let a = [1.0; 6];
        let b = [1.0; 5];
        let mut c = [0.0; 4];
        gemm(
            2,
            2,
            3,
            MatRef::new(&a, 3, 1),
            MatRef::new(&b, 2, 1),
            &mut c,
            2,
            false,
        );
    }

    #[test]
    fn split_plan_uses_whole_panels() {
        // CIFAR conv2: 75 MFLOP in ~4 MFLOP strips of whole panels.
        let f = 2.0 * 64.0 * 1024.0 * 576.0;
        let cols = |parts, chunk| Split::Cols { parts, chunk };
        assert_eq!(split_plan(64, 1024, 8, 32, 2, f), cols(16, 64));
        // 33 panels, 5 strips of 7 panels (the last one ragged).
        assert_eq!(split_plan(64, 1050, 8, 32, 2, 2e7), cols(5, 224));
        // Two panels: one each, however much work.
        assert_eq!(split_plan(128, 64, 8, 32, 2, 1.9e7), cols(2, 32));
        // A single panel: rows instead, one strip per thread.
        assert_eq!(
            split_plan(128, 20, 8, 32, 2, 1e8),
            Split::Rows {
                parts: 2,
                chunk: 64
            }
        );
        assert_eq!(split_plan(64, 1024, 8, 32, 2, 1e6), Split::None);
        assert_eq!(split_plan(64, 1024, 8, 32, 1, 1e9), Split::None);
        assert_eq!(split_plan(5, 20, 8, 32, 4, 1e9), Split::None);
    }
}
