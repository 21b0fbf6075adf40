//! Launching a kernel by name with its params struct.
//!
//! The later per-op wiring (`ops/<op>/cuda.rs`) builds a params struct from
//! [`super::params`], picks a grid with the helpers here, and calls
//! [`launch`]. Launches are asynchronous; errors a kernel raises surface at
//! the next synchronising call ([`GpuDevice::synchronize`], a copy to host).

use super::context::GpuDevice;
use super::params::{KernelParams, KERNEL_PARAMS};
use crate::error::{Error, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::sync::OnceLock;

/// Threads per block of the element-wise, reduction, pooling and loss
/// kernels (`SI_BLOCK` in common.cuh).
pub const BLOCK: u32 = 256;

/// Threads per block of the tiled GEMM kernels (`SI_TILE_THREADS`).
pub const TILE_THREADS: u32 = 256;

/// Output tile edge of the GEMM kernels (`SI_TM` = `SI_TN`).
pub const TILE: usize = 64;

/// Output tile edge of the large-problem conv kernels `*_t128`
/// (`SI_BM` = `SI_BN` in common.cuh).
pub const TILE_BIG: usize = 128;

/// Most GEMM rows of the `*_m8` conv kernels (`SI_M8` in common.cuh).
pub const M8_ROWS: usize = 8;

/// GEMM columns per block of the `*_m8` conv kernels (one per thread).
pub const M8_COLUMNS: usize = TILE_THREADS as usize;

/// Fewest GEMM columns for which a GEMM of at most [`M8_ROWS`] rows goes to
/// the `*_m8` kernels: as many as a 64×64 grid needs to give each of 132
/// SMs a block. Below that a step is a handful of blocks either way, and
/// the 64×64 kernels, measured on small workloads, keep them.
pub const MIN_M8_COLUMNS: usize = 132 * TILE;

/// Most GEMM rows of the wide-tile conv kernels (`*_t128w`, `*_tcw`, `*_tf32w`; `SI_WM`).
pub const WIDE_ROWS: usize = 64;

/// GEMM columns per block of the wide-tile conv kernels (`SI_WN`).
pub const WIDE_COLUMNS: usize = 256;

/// Fewest blocks a `*_t128` conv grid must have to be chosen: two per SM on
/// a 132-SM H100 / H200 (two 256-thread blocks of at most 128 registers per
/// thread fit on an SM), so every SM has work for the whole kernel.
pub const MIN_T128_BLOCKS: usize = 2 * 132;

/// Most blocks a grid-stride launch uses: enough to fill any current GPU,
/// few enough that the per-block partial sums of a reduction stay small.
pub const MAX_GRID_BLOCKS: usize = 1024;

/// Grid and block dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid("cuda launch", format!("{what} = {v} exceeds u32")))
}

impl Launch {
    /// A grid-stride launch over `n` items: `BLOCK` threads, at most
    /// [`MAX_GRID_BLOCKS`] blocks (at least one, so reductions over zero
    /// items still write their single partial).
    pub fn elementwise(n: usize) -> Launch {
        let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID_BLOCKS);
        Launch {
            grid: (blocks as u32, 1, 1),
            block: (BLOCK, 1, 1),
        }
    }

    /// One block per item (`channel_sum`: one block per channel).
    pub fn per_item(items: usize) -> Result<Launch> {
        Ok(Launch {
            grid: (to_u32(items.max(1), "grid blocks")?, 1, 1),
            block: (BLOCK, 1, 1),
        })
    }

    /// A GEMM-shaped launch: `rows`×`cols` output in 64×64 tiles, `split_k`
    /// blocks along z (sgemm, conv2d_* kernels).
    pub fn tiles(rows: usize, cols: usize, split_k: usize) -> Result<Launch> {
        Launch::tiles_of(TILE, rows, cols, split_k)
    }

    /// The launch of a conv kernel of tile size `tile` (64: `conv2d_*`,
    /// 128: `conv2d_*_t128`): `rows`×`cols` GEMM output, `split_k` along z.
    /// The `*_m8` and the wide (`*_t128w`, `*_tcw`, `*_tf32w`) kernels take
    /// all their (at most 8 or 64) rows in one block and `edge()` columns
    /// per block, no split ([`ConvTile::rows_in_one_block`]).
    pub fn conv_tiles(tile: ConvTile, rows: usize, cols: usize, split_k: usize) -> Result<Launch> {
        if let Some(max_rows) = tile.rows_in_one_block() {
            if rows > max_rows || split_k > 1 {
                return Err(Error::invalid(
                    "cuda launch",
                    format!(
                        "the {} conv kernels take at most {max_rows} GEMM rows and no split-K, got {rows} rows, split {split_k}",
                        tile.kernel("*")
                    ),
                ));
            }
            return Ok(Launch {
                grid: (
                    to_u32(cols.div_ceil(tile.edge()).max(1), "column blocks")?,
                    1,
                    1,
                ),
                block: (TILE_THREADS, 1, 1),
            });
        }
        Launch::tiles_of(tile.edge(), rows, cols, split_k)
    }

    fn tiles_of(edge: usize, rows: usize, cols: usize, split_k: usize) -> Result<Launch> {
        let gy = to_u32(rows.div_ceil(edge).max(1), "tile rows")?;
        if gy > 65_535 {
            return Err(Error::invalid(
                "cuda launch",
                format!("{rows} GEMM rows need {gy} tile rows, more than 65535"),
            ));
        }
        Ok(Launch {
            grid: (
                to_u32(cols.div_ceil(edge).max(1), "tile columns")?,
                gy,
                to_u32(split_k.clamp(1, 65_535), "split_k")?,
            ),
            block: (TILE_THREADS, 1, 1),
        })
    }

    /// Number of blocks, i.e. of partial sums a reduction kernel writes.
    pub fn blocks(&self) -> usize {
        self.grid.0 as usize * self.grid.1 as usize * self.grid.2 as usize
    }
}

/// How many K chunks the conv weight-gradient kernel should use: enough
/// blocks to fill the GPU (`target_blocks`, e.g. 4 per SM) when the output
/// tiles alone are too few, but each chunk at least 256 long. For the
/// 64×64-tile kernel; [`split_k_for_tile`] takes the tile edge.
pub fn split_k_for(m: usize, n: usize, k: usize, target_blocks: usize) -> usize {
    split_k_for_tile(m, n, k, target_blocks, TILE)
}

/// [`split_k_for`] for output tiles of `tile`×`tile` (64 or 128).
pub fn split_k_for_tile(m: usize, n: usize, k: usize, target_blocks: usize, tile: usize) -> usize {
    let tile = tile.max(1);
    let tiles = m.div_ceil(tile).max(1) * n.div_ceil(tile).max(1);
    if tiles >= target_blocks {
        return 1;
    }
    let by_occupancy = target_blocks.div_ceil(tiles);
    let by_length = (k / 256).max(1);
    by_occupancy.min(by_length).clamp(1, 64)
}

/// Which GEMM core a convolution runs on (see [`conv_tile_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvTile {
    /// 64×64 output tiles, 4×4 per thread: `conv2d_fwd`, `conv2d_bwd_data`,
    /// `conv_transpose2d_fwd`, `conv2d_bwd_weight`. Many small blocks.
    T64,
    /// 128×128 output tiles, 8×8 per thread: the same kernels with a `_t128`
    /// suffix. More work per block and per shared-memory read.
    T128,
    /// The 128×128 kernels with the K step on TF32 tensor cores, three
    /// products per operand pair for FP32 accuracy (`_tc` suffix; sm_80 and
    /// later). Opt-in (`SPLITINV_CONV_TILE=tc`) until measured on a GPU.
    Tc,
    /// The 128×128 kernels on TF32 tensor cores with one product of the
    /// operands rounded to TF32 (`_tf32` suffix; sm_80 and later): PyTorch's
    /// default convolution precision. Only with [`ConvMath::Tf32`].
    Tf32,
    /// [`ConvTile::T128`] on 64×256 tiles (`_t128w` suffix), for a forward
    /// or input-gradient GEMM of at most [`WIDE_ROWS`] rows: on a 128×128
    /// tile such a GEMM does half the tile's multiply-adds for all of its
    /// operand gathers. No weight-gradient kernel (nor for the two below).
    T128Wide,
    /// [`ConvTile::Tc`] on 64×256 tiles (`_tcw` suffix), as [`ConvTile::T128Wide`]:
    /// on a 128×128 tile half the warps would sit out the mma.
    TcWide,
    /// [`ConvTile::Tf32`] on 64×256 tiles (`_tf32w` suffix), as
    /// [`ConvTile::TcWide`]. Only with [`ConvMath::Tf32`].
    Tf32Wide,
    /// At most [`M8_ROWS`] GEMM rows (a conv into at most 8 channels: the
    /// forward with Cout ≤ 8, the input gradient with Cin ≤ 8), all of them
    /// in one block, one column per thread (`_m8` suffix; no weight-gradient
    /// kernel). The tiled kernels would use 8 or fewer of their 64 or 128
    /// rows and gather every B element for nothing else.
    M8,
}

impl ConvTile {
    /// The output tile edge in elements (64 or 128; for [`ConvTile::M8`]
    /// and the wide tiles the columns per block).
    pub fn edge(self) -> usize {
        match self {
            ConvTile::T64 => TILE,
            ConvTile::T128 | ConvTile::Tc | ConvTile::Tf32 => TILE_BIG,
            ConvTile::M8 => M8_COLUMNS,
            ConvTile::T128Wide | ConvTile::TcWide | ConvTile::Tf32Wide => WIDE_COLUMNS,
        }
    }

    /// This tile's kernel of the family `base` (`"conv2d_fwd"` →
    /// `conv2d_fwd`, `conv2d_fwd_t128` or `conv2d_fwd_tc`).
    pub fn kernel(self, base: &str) -> String {
        match self {
            ConvTile::T64 => base.to_string(),
            ConvTile::T128 => format!("{base}_t128"),
            ConvTile::Tc => format!("{base}_tc"),
            ConvTile::Tf32 => format!("{base}_tf32"),
            ConvTile::M8 => format!("{base}_m8"),
            ConvTile::T128Wide => format!("{base}_t128w"),
            ConvTile::TcWide => format!("{base}_tcw"),
            ConvTile::Tf32Wide => format!("{base}_tf32w"),
        }
    }

    /// For the kernels whose one block row holds every GEMM row
    /// ([`ConvTile::M8`] and the wide tiles): how many rows at most.
    pub fn rows_in_one_block(self) -> Option<usize> {
        match self {
            ConvTile::M8 => Some(M8_ROWS),
            ConvTile::T128Wide | ConvTile::TcWide | ConvTile::Tf32Wide => Some(WIDE_ROWS),
            _ => None,
        }
    }

    /// Whether this core runs on TF32 tensor cores (compute capability 8.0
    /// or later).
    pub fn needs_tensor_cores(self) -> bool {
        matches!(
            self,
            ConvTile::Tc | ConvTile::Tf32 | ConvTile::TcWide | ConvTile::Tf32Wide
        )
    }

    /// The 64×256 twin of a 128×128 core, if it has one.
    pub fn wide(self) -> Option<ConvTile> {
        match self {
            ConvTile::T128 => Some(ConvTile::T128Wide),
            ConvTile::Tc => Some(ConvTile::TcWide),
            ConvTile::Tf32 => Some(ConvTile::Tf32Wide),
            _ => None,
        }
    }
}

/// How a convolution on the GPU may round its products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvMath {
    /// FP32 products and sums, as on the CPU (the default).
    Fp32,
    /// The large convolutions (those the size rule puts on 128×128 tiles)
    /// may multiply operands rounded to TF32, 11 significant bits, and sum
    /// in FP32: [`ConvTile::Tf32`]. What PyTorch's convolutions do by
    /// default (`torch.backends.cudnn.allow_tf32`), and what its speed on
    /// the large CIFAR workloads comes from. The small ones stay on the
    /// 64×64 FP32 kernels; on a GPU without TF32 tensor cores (before
    /// compute capability 8.0) every conv stays FP32.
    Tf32,
}

/// `fp32` or `tf32` (surrounding blanks ignored), else what is wrong.
fn parse_conv_math(s: &str) -> std::result::Result<ConvMath, String> {
    match s.trim() {
        "fp32" => Ok(ConvMath::Fp32),
        "tf32" => Ok(ConvMath::Tf32),
        other => Err(format!(
            "'{other}' is not a conv precision: use fp32 (the default) or tf32"
        )),
    }
}

/// Parses `--conv-math`'s value (errors name the flag).
impl std::str::FromStr for ConvMath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_conv_math(s).map_err(|msg| Error::invalid("--conv-math", msg))
    }
}

impl std::fmt::Display for ConvMath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvMath::Fp32 => "fp32",
            ConvMath::Tf32 => "tf32",
        })
    }
}

/// The conv precision set by [`set_conv_math`] (`--conv-math`): 0 none,
/// else 1 + the [`ConvMath`] (read on every conv launch, so an atomic).
static CONV_MATH_SET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the conv precision for the rest of the process (`--conv-math`);
/// it wins over `SPLITINV_CONV_MATH`.
pub fn set_conv_math(math: ConvMath) {
    let code = match math {
        ConvMath::Fp32 => 1,
        ConvMath::Tf32 => 2,
    };
    CONV_MATH_SET.store(code, std::sync::atomic::Ordering::Relaxed);
}

/// The conv precision: [`set_conv_math`]'s, else `SPLITINV_CONV_MATH`
/// (`fp32` or `tf32`, read once; anything else is an error on every conv
/// launch on a GPU), else [`ConvMath::Fp32`].
pub fn conv_math() -> Result<ConvMath> {
    match CONV_MATH_SET.load(std::sync::atomic::Ordering::Relaxed) {
        1 => return Ok(ConvMath::Fp32),
        2 => return Ok(ConvMath::Tf32),
        _ => {}
    }
    static FROM_ENV: OnceLock<std::result::Result<ConvMath, String>> = OnceLock::new();
    FROM_ENV
        .get_or_init(|| match std::env::var_os("SPLITINV_CONV_MATH") {
            None => Ok(ConvMath::Fp32),
            Some(v) if v.to_string_lossy().trim().is_empty() => Ok(ConvMath::Fp32),
            Some(v) => parse_conv_math(&v.to_string_lossy()),
        })
        .clone()
        .map_err(|msg| Error::invalid("SPLITINV_CONV_MATH", msg))
}

/// The core a `tile` choice of the size rule runs on under `math`: with
/// TF32 allowed, the 128×128 choices go to [`ConvTile::Tf32`], including
/// those `SPLITINV_CONV_TILE=128` forces and those `tc` (3xTF32, FP32-exact)
/// would take: `--conv-math tf32` wins over the tile variable's kernel
/// choice, not over its tile size. (So under TF32 a GPU before sm_80, which
/// has no tensor cores, runs `tc`'s choices on FP32 `_t128` instead of
/// refusing them.) The 64×64 and `_m8` kernels stay FP32.
pub fn with_math(tile: ConvTile, math: ConvMath) -> ConvTile {
    match (math, tile) {
        (ConvMath::Tf32, ConvTile::T128 | ConvTile::Tc) => ConvTile::Tf32,
        (ConvMath::Tf32, ConvTile::T128Wide | ConvTile::TcWide) => ConvTile::Tf32Wide,
        (_, t) => t,
    }
}

/// The conv GEMM core for an `m`×`n` GEMM output split over `split_k`
/// chunks of K: [`ConvTile::T128`] when the 128×128 grid still has at least
/// [`MIN_T128_BLOCKS`] blocks, `ceil(m/128)·ceil(n/128)·split_k ≥ 2·132`,
/// else [`ConvTile::T64`]. `forced` (from `SPLITINV_CONV_TILE`, see
/// [`conv_tile`]) wins over the rule, except [`ConvTile::Tc`], which
/// keeps the rule and runs its 128×128 choices on tensor cores.
///
/// Why: the 128 core does more work per shared-memory read and per index
/// computation, which is expected to pay off on large problems (CIFAR
/// convolutions at batch 256 and more), but has a quarter of the blocks;
/// below about two blocks per SM part of the GPU would idle, and the small
/// problems (batch 1–32) keep the 64 core they are already fast with.
/// Measured on a GPU, not here: `SPLITINV_CONV_TILE` lets a benchmark
/// compare both.
pub fn conv_tile_for(m: usize, n: usize, split_k: usize, forced: Option<ConvTile>) -> ConvTile {
    conv_tile_for_min(m, n, split_k, forced, MIN_T128_BLOCKS)
}

/// [`conv_tile_for`] with another threshold than [`MIN_T128_BLOCKS`]: the
/// 128×128 core when its grid has at least `min_blocks` blocks.
pub fn conv_tile_for_min(
    m: usize,
    n: usize,
    split_k: usize,
    forced: Option<ConvTile>,
    min_blocks: usize,
) -> ConvTile {
    let blocks = m.div_ceil(TILE_BIG).max(1) * n.div_ceil(TILE_BIG).max(1) * split_k.max(1);
    let by_size = if blocks >= min_blocks {
        ConvTile::T128
    } else {
        ConvTile::T64
    };
    match (forced, by_size) {
        (Some(ConvTile::Tc), ConvTile::T128) => ConvTile::Tc,
        (Some(ConvTile::Tc), t) => t,
        (Some(t), _) => t,
        (None, t) => t,
    }
}

/// [`conv_tile_for`] with the override from the environment variable
/// `SPLITINV_CONV_TILE`: `64` or `128` forces that tile for every conv
/// kernel (for benchmarks comparing the two); `tc` chooses by size and runs
/// the large problems on the tensor-core kernels; unset or empty chooses by
/// size. The variable is read once per process; any other value is an
/// error on every conv launch on a GPU (not a panic).
pub fn conv_tile(m: usize, n: usize, split_k: usize) -> Result<ConvTile> {
    // Every setting is read (and a bad one reported) on every launch.
    let (forced, math, min_blocks) = (conv_tile_override()?, conv_math()?, big_tile_min_blocks()?);
    if let Some(t) = few_rows(m, n, split_k, forced) {
        return Ok(t);
    }
    let tile = with_math(conv_tile_for_min(m, n, split_k, forced, min_blocks), math);
    Ok(if forces_tile_size(forced) {
        tile
    } else {
        wide_if_few_rows(tile, m, n, split_k, min_blocks)
    })
}

/// A 128×128 choice ([`ConvTile::T128`], [`ConvTile::Tc`],
/// [`ConvTile::Tf32`]) for a GEMM of at most [`WIDE_ROWS`] rows moves to
/// its 64×256 twin ([`ConvTile::wide`]) when the wide grid (`n` / 256
/// blocks) still has `min_blocks` blocks and K is not split; anything else
/// stays. For the forward and the input gradient only (the weight gradient
/// has no wide kernels and never asks); not when `SPLITINV_CONV_TILE`
/// forces 64 or 128 ([`conv_tile`]).
pub fn wide_if_few_rows(
    tile: ConvTile,
    m: usize,
    n: usize,
    split_k: usize,
    min_blocks: usize,
) -> ConvTile {
    let fits = m <= WIDE_ROWS && split_k <= 1 && n.div_ceil(WIDE_COLUMNS) >= min_blocks;
    match tile.wide() {
        Some(w) if fits => w,
        _ => tile,
    }
}

/// [`ConvTile::M8`] for a forward or input-gradient GEMM of at most
/// [`M8_ROWS`] rows and at least [`MIN_M8_COLUMNS`] columns, without
/// split-K, unless `SPLITINV_CONV_TILE` forces 64 or 128 (`tc` keeps the
/// rule); else `None`, and the size rule decides. (The weight gradient has
/// no `_m8` kernel and never asks.)
pub fn few_rows(m: usize, n: usize, split_k: usize, forced: Option<ConvTile>) -> Option<ConvTile> {
    (m <= M8_ROWS && n >= MIN_M8_COLUMNS && split_k <= 1 && !forces_tile_size(forced))
        .then_some(ConvTile::M8)
}

/// Whether `SPLITINV_CONV_TILE` forces a tile size (64 or 128): then the
/// rule's other shapes (`_m8`, the wide tiles) stay out of the comparison;
/// `tc` only picks the tensor-core kernels.
fn forces_tile_size(forced: Option<ConvTile>) -> bool {
    matches!(forced, Some(ConvTile::T64 | ConvTile::T128))
}

/// The fewest blocks for which the size rule picks the 128×128 core:
/// `SPLITINV_CONV_BIG_MIN_BLOCKS` (a positive integer, read once), so that
/// one GPU run can try other thresholds, else [`default_min_blocks`] for
/// the conv precision. A value that is not a positive integer is an error
/// on every conv launch on a GPU.
pub fn big_tile_min_blocks() -> Result<usize> {
    static MIN: OnceLock<std::result::Result<Option<usize>, String>> = OnceLock::new();
    let set = MIN
        .get_or_init(|| {
            let v = std::env::var_os("SPLITINV_CONV_BIG_MIN_BLOCKS");
            parse_min_blocks(v.as_ref().map(|v| v.to_string_lossy()).as_deref())
        })
        .clone()
        .map_err(|msg| Error::invalid("SPLITINV_CONV_BIG_MIN_BLOCKS", msg))?;
    match set {
        Some(n) => Ok(n),
        None => Ok(default_min_blocks(conv_math()?)),
    }
}

/// Fewest 128×128 blocks for the TF32 kernels: one per SM of an H100 /
/// H200. One TF32 mma per step does a third of 3xTF32's tensor work and
/// none of FFMA's 768 multiply-adds per thread, so a block finishes its
/// tile several times sooner than a `_t128` one, and a grid that gives
/// each SM one such block is expected to beat four times as many 64×64
/// FFMA blocks. At batch 128 the CIFAR CNN's 16×16 layers (256 blocks, the
/// largest share of its FLOPs) then run on tensor cores, where the FP32
/// threshold keeps them on FFMA. Not yet measured (`run.sh sweep`).
pub const MIN_TF32_BLOCKS: usize = 132;

/// The size rule's threshold without `SPLITINV_CONV_BIG_MIN_BLOCKS`:
/// [`MIN_T128_BLOCKS`] for FP32, [`MIN_TF32_BLOCKS`] when TF32 is allowed.
pub fn default_min_blocks(math: ConvMath) -> usize {
    match math {
        ConvMath::Fp32 => MIN_T128_BLOCKS,
        ConvMath::Tf32 => MIN_TF32_BLOCKS,
    }
}

/// `None`/empty → `None` (the default); a positive integer → itself; else a message.
fn parse_min_blocks(v: Option<&str>) -> std::result::Result<Option<usize>, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(format!(
                "'{s}' is not a block count: use a positive integer (the default is {MIN_T128_BLOCKS}, two blocks per SM of an H100 / H200, or {MIN_TF32_BLOCKS} with --conv-math tf32)"
            )),
        },
    }
}

/// The tile `SPLITINV_CONV_TILE` forces, if any (read once).
pub fn conv_tile_override() -> Result<Option<ConvTile>> {
    static FORCED: OnceLock<std::result::Result<Option<ConvTile>, String>> = OnceLock::new();
    FORCED
        .get_or_init(|| {
            let v = std::env::var_os("SPLITINV_CONV_TILE");
            parse_conv_tile(v.as_ref().map(|v| v.to_string_lossy()).as_deref())
        })
        .clone()
        .map_err(|msg| Error::invalid("SPLITINV_CONV_TILE", msg))
}

/// `None`/empty → no override; `64` / `128` → that tile; `tc` → the rule on
/// tensor cores; else a message.
fn parse_conv_tile(v: Option<&str>) -> std::result::Result<Option<ConvTile>, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some("64") => Ok(Some(ConvTile::T64)),
        Some("128") => Ok(Some(ConvTile::T128)),
        Some("tc") => Ok(Some(ConvTile::Tc)),
        Some(other) => Err(format!(
            "'{other}' is not a conv tile choice: use 64 or 128 (that tile everywhere), tc (tensor cores \
             for the large problems), or unset it to choose by problem size"
        )),
    }
}

/// Checks that `P` is the params struct `kernel` takes (by name and size).
pub fn check_params<P>(kernel: &str) -> Result<()> {
    let Some((_, wanted, size)) = KERNEL_PARAMS.iter().find(|(k, _, _)| *k == kernel) else {
        return Err(Error::UnknownName {
            kind: "CUDA kernel",
            name: kernel.to_string(),
            expected: "a kernel listed in cuda::params::KERNEL_PARAMS".into(),
        });
    };
    let given = std::any::type_name::<P>();
    let given_short = given.rsplit("::").next().unwrap_or(given);
    if given_short != *wanted || *size != std::mem::size_of::<P>() {
        return Err(Error::Cuda(format!(
            "{kernel} takes a {wanted} params struct ({size} bytes), got {given} ({} bytes)",
            std::mem::size_of::<P>()
        )));
    }
    Ok(())
}

/// Launches `kernel` on `dev` with `params` (passed by value, as the
/// kernel's single argument). Fails if the kernel is unknown or if `P` is
/// not the struct the kernel takes (by name and size, from
/// [`KERNEL_PARAMS`]).
pub fn launch<P: KernelParams + cudarc::driver::DeviceRepr>(
    dev: &GpuDevice,
    kernel: &str,
    cfg: Launch,
    params: &P,
) -> Result<()> {
    check_params::<P>(kernel)?;
    let f = dev.function(kernel)?;
    let config = LaunchConfig {
        grid_dim: cfg.grid,
        block_dim: cfg.block,
        shared_mem_bytes: 0,
    };
    super::profile::timed(dev, kernel, cfg.grid, || {
        super::kernels::guard(kernel, || {
            let mut builder = dev.stream().launch_builder(&f);
            builder.arg(params);
            // SAFETY: the params struct matches the kernel's (size checked above,
            // layout by the params tests); the pointers inside it are the
            // caller's live device buffers.
            unsafe { builder.launch(config) }
                .map(|_| ())
                .map_err(|e| Error::Cuda(format!("launching {kernel}: {e:?}")))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's tile edges are the kernels' (a mismatch would launch a
    /// grid that leaves part of the output uncomputed).
    #[test]
    fn tile_edges_match_the_kernel_defines() {
        let src = include_str!("../../kernels/common.cuh");
        assert!(src.contains(&format!("#define SI_M8 {M8_ROWS}\n")));
        assert!(src.contains(&format!("#define SI_WM {WIDE_ROWS}\n")));
        assert!(src.contains(&format!("#define SI_WN {WIDE_COLUMNS}\n")));
        let define = |name: &str| -> usize {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("no #define {name}"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert_eq!(define("SI_TM"), TILE);
        assert_eq!(define("SI_TN"), TILE);
        assert_eq!(define("SI_BM"), TILE_BIG);
        assert_eq!(define("SI_BN"), TILE_BIG);
        assert_eq!(define("SI_TILE_THREADS") as u32, TILE_THREADS);
    }

    #[test]
    fn params_are_checked_by_struct_not_just_size() {
        use crate::cuda::params::{BinaryParams, ConvParams, UnaryParams};
        assert!(check_params::<BinaryParams>("ew_binary_fwd").is_ok());
        assert!(check_params::<ConvParams>("conv_transpose2d_fwd").is_ok());
        // Same size (40 bytes), different struct: refused.
        let e = check_params::<UnaryParams>("ew_binary_fwd").unwrap_err();
        assert!(e.to_string().contains("takes a BinaryParams"), "{e}");
        let e = check_params::<UnaryParams>("no_such_kernel").unwrap_err();
        assert!(e.to_string().contains("no_such_kernel"), "{e}");
    }

    #[test]
    fn elementwise_grids_cover_and_cap() {
        assert_eq!(Launch::elementwise(0).grid.0, 1);
        assert_eq!(Launch::elementwise(256).grid.0, 1);
        assert_eq!(Launch::elementwise(257).grid.0, 2);
        assert_eq!(Launch::elementwise(1 << 30).grid.0, MAX_GRID_BLOCKS as u32);
        assert_eq!(Launch::elementwise(1000).block, (256, 1, 1));
    }

    #[test]
    fn tile_grids_cover_the_output() {
        let l = Launch::tiles(65, 64 * 3, 4).unwrap();
        assert_eq!(l.grid, (3, 2, 4));
        assert_eq!(l.blocks(), 24);
        assert!(Launch::tiles(64 * 70_000, 1, 1).is_err());
    }

    #[test]
    fn conv_tiles_grid_by_tile_edge() {
        let l = Launch::conv_tiles(ConvTile::T128, 129, 128 * 3 + 1, 5).unwrap();
        assert_eq!(l.grid, (4, 2, 5));
        assert_eq!(l.block, (TILE_THREADS, 1, 1));
        let l = Launch::conv_tiles(ConvTile::T64, 129, 128 * 3 + 1, 1).unwrap();
        assert_eq!(l.grid, Launch::tiles(129, 128 * 3 + 1, 1).unwrap().grid);
        assert_eq!(ConvTile::T128.kernel("a"), "a_t128");
        assert_eq!(ConvTile::T64.kernel("a"), "a");
        assert_eq!(ConvTile::Tc.kernel("a"), "a_tc");
        assert_eq!(ConvTile::Tf32.kernel("a"), "a_tf32");
        assert_eq!(ConvTile::Tf32.edge(), TILE_BIG);
        assert!(ConvTile::Tf32.needs_tensor_cores() && ConvTile::Tc.needs_tensor_cores());
        assert!(!ConvTile::T128.needs_tensor_cores() && !ConvTile::T64.needs_tensor_cores());
        let l = Launch::conv_tiles(ConvTile::Tc, 129, 128 * 3 + 1, 5).unwrap();
        assert_eq!(l.grid, (4, 2, 5));
    }

    #[test]
    fn conv_tile_by_blocks() {
        // CIFAR conv22 (128 → 128, 16×16) forward at batch 256: M = 128,
        // N = 256·256 → 512 blocks of 128×128: the big tiles.
        assert_eq!(conv_tile_for(128, 256 * 256, 1, None), ConvTile::T128);
        // conv12 (64 → 64, 32×32) at batch 256: 1 × 2048 blocks.
        assert_eq!(conv_tile_for(64, 256 * 1024, 1, None), ConvTile::T128);
        // Small batches keep the 64 core: batch 32 at 16×16 gives 64 blocks,
        // batch 32 at 32×32 gives 256 < 264, batch 1 a handful.
        assert_eq!(conv_tile_for(128, 32 * 256, 1, None), ConvTile::T64);
        assert_eq!(conv_tile_for(64, 32 * 1024, 1, None), ConvTile::T64);
        assert_eq!(conv_tile_for(128, 1024, 1, None), ConvTile::T64);
        // The boundary: exactly 2·132 blocks qualifies, one fewer does not.
        assert_eq!(conv_tile_for(128, 128 * 264, 1, None), ConvTile::T128);
        assert_eq!(conv_tile_for(128, 128 * 263, 1, None), ConvTile::T64);
        assert_eq!(conv_tile_for(256, 128 * 132, 1, None), ConvTile::T128);
        // Split-K chunks count as blocks (weight gradient).
        assert_eq!(conv_tile_for(128, 1152, 30, None), ConvTile::T128);
        assert_eq!(conv_tile_for(128, 1152, 29, None), ConvTile::T64);
        // An override wins either way.
        assert_eq!(conv_tile_for(8, 8, 1, Some(ConvTile::T128)), ConvTile::T128);
        assert_eq!(
            conv_tile_for(1 << 12, 1 << 20, 1, Some(ConvTile::T64)),
            ConvTile::T64
        );
        // `tc` keeps the rule, on tensor cores where it picks 128.
        assert_eq!(
            conv_tile_for(128, 256 * 256, 1, Some(ConvTile::Tc)),
            ConvTile::Tc
        );
        assert_eq!(
            conv_tile_for(128, 1024, 1, Some(ConvTile::Tc)),
            ConvTile::T64
        );
    }

    #[test]
    fn few_rows_go_to_the_m8_kernels_when_the_columns_are_many() {
        // The RGB input gradient of CIFAR's conv11 at batch 1000: M = 3,
        // N = 1000·32·32.
        assert_eq!(few_rows(3, 1000 * 1024, 1, None), Some(ConvTile::M8));
        assert_eq!(few_rows(8, MIN_M8_COLUMNS, 1, None), Some(ConvTile::M8));
        assert_eq!(
            few_rows(8, MIN_M8_COLUMNS, 1, Some(ConvTile::Tc)),
            Some(ConvTile::M8)
        );
        // 9 rows, too few columns, split-K, or a forced tile: the size rule.
        assert_eq!(few_rows(9, 1 << 20, 1, None), None);
        assert_eq!(few_rows(3, MIN_M8_COLUMNS - 1, 1, None), None);
        assert_eq!(few_rows(3, 1 << 20, 2, None), None);
        assert_eq!(few_rows(3, 1 << 20, 1, Some(ConvTile::T64)), None);
        assert_eq!(few_rows(3, 1 << 20, 1, Some(ConvTile::T128)), None);
        // TF32 leaves them on FP32 FFMA.
        assert_eq!(with_math(ConvTile::M8, ConvMath::Tf32), ConvTile::M8);
        // Launch: one block row, 256 columns a block; more rows is an error.
        let l = Launch::conv_tiles(ConvTile::M8, 3, 1000 * 1024, 1).unwrap();
        assert_eq!(l.grid, (4000, 1, 1));
        assert_eq!(l.block, (TILE_THREADS, 1, 1));
        assert_eq!(
            Launch::conv_tiles(ConvTile::M8, 8, 257, 1).unwrap().grid,
            (2, 1, 1)
        );
        assert!(Launch::conv_tiles(ConvTile::M8, 9, 1024, 1).is_err());
        assert!(Launch::conv_tiles(ConvTile::M8, 3, 1024, 2).is_err());
        assert_eq!(ConvTile::M8.kernel("conv2d_fwd"), "conv2d_fwd_m8");
        assert!(!ConvTile::M8.needs_tensor_cores());
    }

    #[test]
    fn gemms_of_64_rows_or_fewer_take_the_wide_tile() {
        // CIFAR conv12 forward at batch 128 (M = 64, N = 128·1024): 512
        // wide blocks, past both thresholds.
        let n = 128 * 1024;
        for (t, w, suffix, tensor) in [
            (ConvTile::T128, ConvTile::T128Wide, "_t128w", false),
            (ConvTile::Tc, ConvTile::TcWide, "_tcw", true),
            (ConvTile::Tf32, ConvTile::Tf32Wide, "_tf32w", true),
        ] {
            for min in [MIN_T128_BLOCKS, MIN_TF32_BLOCKS] {
                assert_eq!(wide_if_few_rows(t, 64, n, 1, min), w, "{t:?}");
            }
            // 65 rows, split-K or too few wide blocks: unchanged.
            assert_eq!(wide_if_few_rows(t, 65, n, 1, MIN_TF32_BLOCKS), t);
            assert_eq!(wide_if_few_rows(t, 64, n, 2, MIN_TF32_BLOCKS), t);
            let few = (MIN_TF32_BLOCKS - 1) * WIDE_COLUMNS;
            assert_eq!(wide_if_few_rows(t, 64, few, 1, MIN_TF32_BLOCKS), t);
            let l = Launch::conv_tiles(w, 64, n + 1, 1).unwrap();
            assert_eq!(l.grid, (513, 1, 1));
            assert!(Launch::conv_tiles(w, 65, n, 1).is_err());
            assert!(Launch::conv_tiles(w, 64, n, 2).is_err());
            assert_eq!(w.kernel("conv2d_fwd"), format!("conv2d_fwd{suffix}"));
            assert_eq!(w.needs_tensor_cores(), tensor);
            assert_eq!(w.wide(), None);
        }
        // The FP32 threshold: 264 wide blocks (N = 264·256), not 263.
        let at = MIN_T128_BLOCKS * WIDE_COLUMNS;
        let t128 = ConvTile::T128;
        assert_eq!(
            wide_if_few_rows(t128, 64, at, 1, MIN_T128_BLOCKS),
            ConvTile::T128Wide
        );
        assert_eq!(
            wide_if_few_rows(t128, 64, at - WIDE_COLUMNS, 1, MIN_T128_BLOCKS),
            t128
        );
        for t in [ConvTile::T64, ConvTile::M8] {
            assert_eq!(wide_if_few_rows(t, 64, n, 1, MIN_TF32_BLOCKS), t, "{t:?}");
        }
        // TF32 takes the FP32 wide choices to its own wide kernels.
        for t in [ConvTile::T128Wide, ConvTile::TcWide] {
            assert_eq!(with_math(t, ConvMath::Tf32), ConvTile::Tf32Wide);
            assert_eq!(with_math(t, ConvMath::Fp32), t);
        }
    }

    #[test]
    fn tf32_math_moves_only_the_big_tiles_to_tensor_cores() {
        use ConvMath::*;
        for t in [ConvTile::T128, ConvTile::Tc, ConvTile::Tf32] {
            assert_eq!(with_math(t, Tf32), ConvTile::Tf32, "{t:?}");
        }
        assert_eq!(with_math(ConvTile::T64, Tf32), ConvTile::T64);
        for t in [ConvTile::T64, ConvTile::T128, ConvTile::Tc] {
            assert_eq!(with_math(t, Fp32), t, "{t:?}");
        }
        assert_eq!("tf32".parse::<ConvMath>().unwrap(), Tf32);
        assert_eq!(" fp32\n".parse::<ConvMath>().unwrap(), Fp32);
        for bad in ["TF32", "fp16", "", "3xtf32"] {
            let e = bad.parse::<ConvMath>().unwrap_err().to_string();
            assert!(e.contains("fp32") && e.contains("tf32"), "{e}");
        }
        assert_eq!(Tf32.to_string().parse::<ConvMath>().unwrap(), Tf32);
    }

    #[test]
    fn conv_tile_override_parses() {
        assert_eq!(parse_min_blocks(None), Ok(None));
        assert_eq!(parse_min_blocks(Some("")), Ok(None));
        assert_eq!(parse_min_blocks(Some(" 132 ")), Ok(Some(132)));
        assert_eq!(default_min_blocks(ConvMath::Fp32), MIN_T128_BLOCKS);
        assert_eq!(default_min_blocks(ConvMath::Tf32), MIN_TF32_BLOCKS);
        // Under TF32 the CIFAR CNN's 16×16 layers at batch 128 (M = 128,
        // N = 128·256: 256 blocks) go to the tensor cores.
        let t = conv_tile_for_min(128, 128 * 256, 1, None, MIN_TF32_BLOCKS);
        assert_eq!(with_math(t, ConvMath::Tf32), ConvTile::Tf32);
        assert_eq!(conv_tile_for(128, 128 * 256, 1, None), ConvTile::T64);
        for bad in ["0", "-4", "lots", "1.5"] {
            let e = parse_min_blocks(Some(bad)).unwrap_err();
            assert!(e.contains(bad) && e.contains("positive integer"), "{e}");
        }
        assert_eq!(
            conv_tile_for_min(128, 128 * 132, 1, None, 132),
            ConvTile::T128
        );
        assert_eq!(
            conv_tile_for_min(128, 128 * 131, 1, None, 132),
            ConvTile::T64
        );
        assert_eq!(
            conv_tile_for_min(128, 128 * 132, 1, Some(ConvTile::Tc), 132),
            ConvTile::Tc
        );
        assert_eq!(parse_conv_tile(None), Ok(None));
        assert_eq!(parse_conv_tile(Some("")), Ok(None));
        assert_eq!(parse_conv_tile(Some("64")), Ok(Some(ConvTile::T64)));
        assert_eq!(parse_conv_tile(Some(" 128\n")), Ok(Some(ConvTile::T128)));
        assert_eq!(parse_conv_tile(Some("tc")), Ok(Some(ConvTile::Tc)));
        for bad in ["256", "t128", "big", "64x64", "TC"] {
            let e = parse_conv_tile(Some(bad)).unwrap_err();
            assert!(
                e.contains(bad) && e.contains("64 or 128") && e.contains("tc"),
                "{e}"
            );
        }
        // Whatever the environment of this test run says, reading it is not a panic.
        let _ = conv_tile_override();
    }

    #[test]
    fn split_k_for_big_tiles() {
        // 128 → 128 weight gradient, batch 256 at 16×16: 9 tiles of 128×128.
        let s = split_k_for_tile(128, 1152, 256 * 256, MIN_T128_BLOCKS, TILE_BIG);
        assert_eq!(s, MIN_T128_BLOCKS.div_ceil(9));
        assert_eq!(
            split_k_for_tile(64, 576, 300, 528, TILE),
            split_k_for(64, 576, 300, 528)
        );
    }

    #[test]
    fn split_k_only_when_tiles_are_few() {
        // CIFAR conv12 weight gradient: 64 × 576 output, K = 32·32·32.
        let s = split_k_for(64, 576, 32 * 32 * 32, 4 * 132);
        assert!(s > 1 && s <= 64, "{s}");
        // A big output already fills the GPU.
        assert_eq!(split_k_for(4096, 4096, 1 << 20, 528), 1);
        // Short K: chunks of at least 256.
        assert_eq!(split_k_for(8, 25, 300, 528), 1);
    }
}
