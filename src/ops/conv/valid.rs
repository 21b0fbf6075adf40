//! im2col / col2im for "valid" convolutions: stride 1, no padding (LeNet's
//! 5×5 convs, and any unpadded stride-1 conv).
//!
//! Why a separate path: with small output planes (LeNet conv2 is 8×8) a row
//! of the column matrix is made of many short segments (8 floats). The
//! general code in `cpu.rs` spends more time per segment on divisions,
//! padding bookkeeping and a `memmove` call than on moving the 32 bytes
//! themselves. Here there is no padding, so every segment is a plain copy of
//! `ow` (or fewer, at tile ends) input floats, walked with running
//! (oy, ox) counters. (The copies still go through `memcpy`: the compiler
//! turns every short-copy formulation tried — fixed 8-float blocks,
//! constant-length arms — back into one `memcpy` call, and AVX-512 masked
//! moves measured no faster; the adds in col2im are done in 8-float blocks
//! that vectorise.)

use super::cpu::ConvGeom;

/// True when [`im2col_valid`] / [`col2im_valid`] apply.
#[inline(always)]
pub(super) fn is_valid_stride1(g: &ConvGeom) -> bool {
    g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0
}

/// `dst += src` for short slices of equal length, in 8-float blocks.
#[inline(always)]
fn add_short(dst: &mut [f32], src: &[f32]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        for (dv, sv) in d.iter_mut().zip(s) {
            *dv += *sv;
        }
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d += *s;
    }
}

/// Calls `f(j, seg, start)` for each run of output pixels of the tile
/// [p0, p0 + t) that lies on one output row: tile entries [j, j + seg) read
/// input plane entries [start, start + seg) for tap (ky, kx).
#[inline(always)]
fn for_each_segment(
    g: &ConvGeom,
    p0: usize,
    t: usize,
    ky: usize,
    kx: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let (mut oy, mut ox, mut j) = (p0 / g.ow.max(1), p0 % g.ow.max(1), 0);
    while j < t {
        let seg = (g.ow - ox).min(t - j);
        // In range: oy + ky ≤ OH − 1 + kh − 1 = H − 1 and
        // ox + kx + seg ≤ OW + kw − 1 = W (valid conv, stride 1).
        f(j, seg, (oy + ky) * g.w + ox + kx);
        j += seg;
        oy += 1;
        ox = 0;
    }
}

/// The column tile for output pixels [p0, p0 + t) of image `x`
/// (see `im2col_body` in `cpu.rs`), for a valid stride-1 conv.
#[inline(always)]
pub(super) fn im2col_valid(g: &ConvGeom, x: &[f32], p0: usize, t: usize, col: &mut [f32]) {
    let hw = g.in_plane();
    for ci in 0..g.cin {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut col[r * t..(r + 1) * t];
                for_each_segment(g, p0, t, ky, kx, |j, seg, s| {
                    row[j..j + seg].copy_from_slice(&plane[s..s + seg]);
                });
            }
        }
    }
}

/// The adjoint: `dx` += col2im(col), for a valid stride-1 conv.
#[inline(always)]
pub(super) fn col2im_valid(g: &ConvGeom, col: &[f32], p0: usize, t: usize, dx: &mut [f32]) {
    let hw = g.in_plane();
    for ci in 0..g.cin {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &col[r * t..(r + 1) * t];
                for_each_segment(g, p0, t, ky, kx, |j, seg, s| {
                    add_short(&mut plane[s..s + seg], &row[j..j + seg]);
                });
            }
        }
    }
}
