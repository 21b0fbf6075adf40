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

/// Threads per block of the element-wise, reduction, pooling and loss
/// kernels (`SI_BLOCK` in common.cuh).
pub const BLOCK: u32 = 256;

/// Threads per block of the tiled GEMM kernels (`SI_TILE_THREADS`).
pub const TILE_THREADS: u32 = 256;

/// Output tile edge of the GEMM kernels (`SI_TM` = `SI_TN`).
pub const TILE: usize = 64;

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
        let gy = to_u32(rows.div_ceil(TILE).max(1), "tile rows")?;
        if gy > 65_535 {
            return Err(Error::invalid(
                "cuda launch",
                format!("{rows} GEMM rows need {gy} tile rows, more than 65535"),
            ));
        }
        Ok(Launch {
            grid: (
                to_u32(cols.div_ceil(TILE).max(1), "tile columns")?,
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
/// tiles alone are too few, but each chunk at least 256 long.
pub fn split_k_for(m: usize, n: usize, k: usize, target_blocks: usize) -> usize {
    let tiles = m.div_ceil(TILE).max(1) * n.div_ceil(TILE).max(1);
    if tiles >= target_blocks {
        return 1;
    }
    let by_occupancy = target_blocks.div_ceil(tiles);
    let by_length = (k / 256).max(1);
    by_occupancy.min(by_length).clamp(1, 64)
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
