//! CPU pooling kernels: plain loops over each window, parallel over the
//! N·C planes when the tensor is large (planes are independent, so every
//! task owns its output and gradient planes outright).

use rayon::prelude::*;

/// The sizes of one pooling op; `planes` = N·C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeom {
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    /// The input rows [lo, hi) of output row `oy`'s window (padding cut off).
    fn rows(&self, oy: usize) -> (usize, usize) {
        window(oy, self.kh, self.sh, self.ph, self.h)
    }
    /// The column ranges of every output column's window.
    fn cols(&self) -> Vec<(usize, usize)> {
        (0..self.ow)
            .map(|ox| window(ox, self.kw, self.sw, self.pw, self.w))
            .collect()
    }
}

fn window(o: usize, k: usize, s: usize, p: usize, len: usize) -> (usize, usize) {
    let start = o * s;
    let lo = start.saturating_sub(p).min(len);
    let hi = (start + k).saturating_sub(p).min(len).max(lo);
    (lo, hi)
}

/// Below this many input elements the loops run on the calling thread.
const PAR_MIN: usize = 1 << 18;

/// Runs `f(plane index)` over all planes, in parallel when large.
fn over_planes<T: Send, F: Fn(T) + Sync + Send>(
    big: bool,
    items: impl IndexedParallelIterator<Item = T>,
    f: F,
) {
    if big {
        items.for_each(f);
    } else {
        items.with_min_len(usize::MAX).for_each(f);
    }
}

/// Max pooling: `y` gets each window's maximum and `idx` its flat in-plane
/// position iy·W + ix (the first maximum; a NaN always wins, so NaNs
/// propagate as in PyTorch).
pub(crate) fn max_pool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32], idx: &mut [u32]) {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    if hw == 0 || ohw == 0 {
        return;
    }
    let items = x
        .par_chunks(hw)
        .zip(y.par_chunks_mut(ohw))
        .zip(idx.par_chunks_mut(ohw));
    if is_2x2_s2(g) {
        over_planes(x.len() >= PAR_MIN, items, |((xp, yp), ip)| {
            max_pool_2x2_plane(g, xp, yp, ip)
        });
        return;
    }
    let cols = g.cols();
    over_planes(x.len() >= PAR_MIN, items, |((xp, yp), ip)| {
        for oy in 0..g.oh {
            let (y0, y1) = g.rows(oy);
            let yrow = &mut yp[oy * g.ow..(oy + 1) * g.ow];
            let irow = &mut ip[oy * g.ow..(oy + 1) * g.ow];
            for ((yv, iv), &(x0, x1)) in yrow.iter_mut().zip(irow.iter_mut()).zip(&cols) {
                let mut best = f32::NEG_INFINITY;
                let mut bi = y0 * g.w + x0;
                for iy in y0..y1 {
                    let row = &xp[iy * g.w..(iy + 1) * g.w];
                    for (ix, &v) in row.iter().enumerate().take(x1).skip(x0) {
                        if v > best || v.is_nan() {
                            best = v;
                            bi = iy * g.w + ix;
                        }
                    }
                }
                *yv = best;
                // Fits: the caller checked H·W ≤ u32::MAX.
                *iv = bi as u32;
            }
        }
    });
}

/// The common 2×2 stride-2 unpadded window (LeNet's pools), whose every
/// window lies inside the plane.
fn is_2x2_s2(g: &PoolGeom) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (2, 2, 2, 2, 0, 0) && 2 * g.oh <= g.h && 2 * g.ow <= g.w
}

/// One plane of 2×2 stride-2 max pooling. Same result as the general loop
/// (scan order, first maximum, NaN wins) but with fixed windows and
/// branch-free selects: the general loop's data-dependent branches and
/// per-window range logic cost several ns per input pixel.
fn max_pool_2x2_plane(g: &PoolGeom, xp: &[f32], yp: &mut [f32], ip: &mut [u32]) {
    let w = g.w;
    for ((oy, yrow), irow) in yp.chunks_mut(g.ow).enumerate().zip(ip.chunks_mut(g.ow)) {
        let (i0, i1) = (2 * oy * w, (2 * oy + 1) * w);
        let r0 = &xp[i0..i0 + 2 * g.ow];
        let r1 = &xp[i1..i1 + 2 * g.ow];
        let wins = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (ox, ((yv, iv), (a, b))) in yrow.iter_mut().zip(irow.iter_mut()).zip(wins).enumerate() {
            let (ia, ib) = (i0 + 2 * ox, i1 + 2 * ox);
            let mut best = f32::NEG_INFINITY;
            let mut bi = ia;
            for (v, i) in [(a[0], ia), (a[1], ia + 1), (b[0], ib), (b[1], ib + 1)] {
                let take = v > best || v.is_nan();
                best = if take { v } else { best };
                bi = if take { i } else { bi };
            }
            *yv = best;
            // Fits: the caller checked H·W ≤ u32::MAX.
            *iv = bi as u32;
        }
    }
}

/// Max pooling's backward: dx[argmax] += g, per plane (accumulating into a
/// zeroed `dx`).
pub(crate) fn max_pool_backward(g: &PoolGeom, gy: &[f32], idx: &[u32], dx: &mut [f32]) {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    if hw == 0 || ohw == 0 {
        return;
    }
    let big = dx.len() >= PAR_MIN;
    let items = dx
        .par_chunks_mut(hw)
        .zip(gy.par_chunks(ohw))
        .zip(idx.par_chunks(ohw));
    over_planes(big, items, |((dp, gp), ip)| {
        for (&gv, &i) in gp.iter().zip(ip) {
            if let Some(d) = dp.get_mut(i as usize) {
                *d += gv;
            }
        }
    });
}

/// Average pooling, dividing by the full window area (PyTorch's default
/// count_include_pad = true).
pub(crate) fn avg_pool_forward(g: &PoolGeom, x: &[f32], y: &mut [f32]) {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    if hw == 0 || ohw == 0 {
        return;
    }
    let cols = g.cols();
    let inv = 1.0 / (g.kh * g.kw) as f32;
    let items = x.par_chunks(hw).zip(y.par_chunks_mut(ohw));
    over_planes(x.len() >= PAR_MIN, items, |(xp, yp)| {
        for oy in 0..g.oh {
            let (y0, y1) = g.rows(oy);
            let yrow = &mut yp[oy * g.ow..(oy + 1) * g.ow];
            for (yv, &(x0, x1)) in yrow.iter_mut().zip(&cols) {
                let mut s = 0.0f32;
                for iy in y0..y1 {
                    s += xp[iy * g.w + x0..iy * g.w + x1].iter().sum::<f32>();
                }
                *yv = s * inv;
            }
        }
    });
}

/// Average pooling's backward: each g/area is added to every real pixel of
/// its window (accumulating into a zeroed `dx`).
pub(crate) fn avg_pool_backward(g: &PoolGeom, gy: &[f32], dx: &mut [f32]) {
    let (hw, ohw) = (g.in_plane(), g.out_plane());
    if hw == 0 || ohw == 0 {
        return;
    }
    let cols = g.cols();
    let inv = 1.0 / (g.kh * g.kw) as f32;
    let big = dx.len() >= PAR_MIN;
    let items = dx.par_chunks_mut(hw).zip(gy.par_chunks(ohw));
    over_planes(big, items, |(dp, gp)| {
        for oy in 0..g.oh {
            let (y0, y1) = g.rows(oy);
            let grow = &gp[oy * g.ow..(oy + 1) * g.ow];
            for (&gv, &(x0, x1)) in grow.iter().zip(&cols) {
                let v = gv * inv;
                for iy in y0..y1 {
                    for d in &mut dp[iy * g.w + x0..iy * g.w + x1] {
                        *d += v;
                    }
                }
            }
        }
    });
}
