//! Naive reference kernels: the oracles every fast kernel is tested against.
//!
//! Written for obviousness, not speed: straight loops over the definition,
//! accumulating in f64.

/// C = A·B for row-major A (m×k) and B (k×n).
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

// ----- losses: MSE, cross-entropy, total variation, SSIM -------------------

/// mean((a − b)²).
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    s / a.len() as f64
}

/// Gradients of g·mean((a − b)²) with respect to a and b.
pub fn mse_grad(a: &[f32], b: &[f32], g: f64) -> (Vec<f64>, Vec<f64>) {
    let n = a.len() as f64;
    let ga: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| 2.0 * g * (x as f64 - y as f64) / n)
        .collect();
    let gb = ga.iter().map(|v| -v).collect();
    (ga, gb)
}

/// Softmax of one row, in f64 (max-subtracted).
fn softmax_row(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// mean over rows of −log softmax(row)\[label\], for row-major logits with `c` columns.
pub fn cross_entropy(logits: &[f32], c: usize, labels: &[usize]) -> f64 {
    let mut total = 0.0;
    for (row, &l) in logits.chunks(c).zip(labels) {
        total -= softmax_row(row)[l].ln();
    }
    total / labels.len() as f64
}

/// Gradient of g·cross_entropy: g·(softmax − onehot)/N.
pub fn cross_entropy_grad(logits: &[f32], c: usize, labels: &[usize], g: f64) -> Vec<f64> {
    let n = labels.len() as f64;
    let mut out = Vec::with_capacity(logits.len());
    for (row, &l) in logits.chunks(c).zip(labels) {
        for (j, p) in softmax_row(row).into_iter().enumerate() {
            let onehot = if j == l { 1.0 } else { 0.0 };
            out.push(g * (p - onehot) / n);
        }
    }
    out
}

/// mean of squared vertical differences + mean of squared horizontal ones,
/// over `planes` planes of h×w.
pub fn tv_squared(x: &[f32], planes: usize, h: usize, w: usize) -> f64 {
    let at = |p: usize, i: usize, j: usize| x[(p * h + i) * w + j] as f64;
    let (mut sv, mut sh) = (0.0, 0.0);
    for p in 0..planes {
        for i in 0..h {
            for j in 0..w {
                if i + 1 < h {
                    sv += (at(p, i + 1, j) - at(p, i, j)).powi(2);
                }
                if j + 1 < w {
                    sh += (at(p, i, j + 1) - at(p, i, j)).powi(2);
                }
            }
        }
    }
    sv / (planes * (h - 1) * w) as f64 + sh / (planes * h * (w - 1)) as f64
}

/// Gradient of g·tv_squared.
pub fn tv_squared_grad(x: &[f32], planes: usize, h: usize, w: usize, g: f64) -> Vec<f64> {
    let at = |p: usize, i: usize, j: usize| x[(p * h + i) * w + j] as f64;
    let idx = |p: usize, i: usize, j: usize| (p * h + i) * w + j;
    let cv = g / (planes * (h - 1) * w) as f64;
    let ch = g / (planes * h * (w - 1)) as f64;
    let mut out = vec![0.0; x.len()];
    for p in 0..planes {
        for i in 0..h {
            for j in 0..w {
                if i + 1 < h {
                    let d = at(p, i + 1, j) - at(p, i, j);
                    out[idx(p, i + 1, j)] += 2.0 * cv * d;
                    out[idx(p, i, j)] -= 2.0 * cv * d;
                }
                if j + 1 < w {
                    let d = at(p, i, j + 1) - at(p, i, j);
                    out[idx(p, i, j + 1)] += 2.0 * ch * d;
                    out[idx(p, i, j)] -= 2.0 * ch * d;
                }
            }
        }
    }
    out
}

/// mean over i < h−1, j < w−1 of (dh² + dv² + eps)^(beta/2).
pub fn tv_power(x: &[f32], planes: usize, h: usize, w: usize, beta: f64, eps: f64) -> f64 {
    let at = |p: usize, i: usize, j: usize| x[(p * h + i) * w + j] as f64;
    let mut s = 0.0;
    for p in 0..planes {
        for i in 0..h - 1 {
            for j in 0..w - 1 {
                let dh = at(p, i, j + 1) - at(p, i, j);
                let dv = at(p, i + 1, j) - at(p, i, j);
                s += (dh * dh + dv * dv + eps).powf(beta / 2.0);
            }
        }
    }
    s / (planes * (h - 1) * (w - 1)) as f64
}

/// Gradient of g·tv_power.
pub fn tv_power_grad(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    beta: f64,
    eps: f64,
    g: f64,
) -> Vec<f64> {
    let at = |p: usize, i: usize, j: usize| x[(p * h + i) * w + j] as f64;
    let idx = |p: usize, i: usize, j: usize| (p * h + i) * w + j;
    let n = (planes * (h - 1) * (w - 1)) as f64;
    let mut out = vec![0.0; x.len()];
    for p in 0..planes {
        for i in 0..h - 1 {
            for j in 0..w - 1 {
                let dh = at(p, i, j + 1) - at(p, i, j);
                let dv = at(p, i + 1, j) - at(p, i, j);
                let q = dh * dh + dv * dv + eps;
                // d q^(β/2) = (β/2) q^(β/2−1) dq, dq = 2dh·d(dh) + 2dv·d(dv)
                let u = g / n * beta * q.powf(beta / 2.0 - 1.0);
                out[idx(p, i, j + 1)] += u * dh;
                out[idx(p, i + 1, j)] += u * dv;
                out[idx(p, i, j)] -= u * (dh + dv);
            }
        }
    }
    out
}

/// The five window moments and S at one position, straight from the
/// definition with the 2-D window win[i]·win[j]; (ux, uy, vx, vy, vxy, s).
#[allow(clippy::too_many_arguments)]
fn ssim_at(
    a: &[f32],
    b: &[f32],
    w: usize,
    py: usize,
    px: usize,
    win: &[f64],
    cov_norm: f64,
    c1: f64,
    c2: f64,
) -> [f64; 6] {
    let (mut ux, mut uy, mut uxx, mut uyy, mut uxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, wi) in win.iter().enumerate() {
        for (j, wj) in win.iter().enumerate() {
            let wt = wi * wj;
            let x = a[(py + i) * w + px + j] as f64;
            let y = b[(py + i) * w + px + j] as f64;
            ux += wt * x;
            uy += wt * y;
            uxx += wt * x * x;
            uyy += wt * y * y;
            uxy += wt * x * y;
        }
    }
    let vx = cov_norm * (uxx - ux * ux);
    let vy = cov_norm * (uyy - uy * uy);
    let vxy = cov_norm * (uxy - ux * uy);
    let s = (2.0 * ux * uy + c1) * (2.0 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
    [ux, uy, vx, vy, vxy, s]
}

/// Mean SSIM over `planes` h×w planes and every valid window position.
#[allow(clippy::too_many_arguments)]
pub fn ssim(
    a: &[f32],
    b: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    win: &[f64],
    cov_norm: f64,
    c1: f64,
    c2: f64,
) -> f64 {
    let ws = win.len();
    let (hv, wv) = (h + 1 - ws, w + 1 - ws);
    let mut total = 0.0;
    for p in 0..planes {
        let pa = &a[p * h * w..(p + 1) * h * w];
        let pb = &b[p * h * w..(p + 1) * h * w];
        for py in 0..hv {
            for px in 0..wv {
                total += ssim_at(pa, pb, w, py, px, win, cov_norm, c1, c2)[5];
            }
        }
    }
    total / (planes * hv * wv) as f64
}

/// Gradients of g·ssim with respect to a and b: per position, the chain rule
/// through (μ, σ², σxy) applied to every pixel of the window directly.
#[allow(clippy::too_many_arguments)]
pub fn ssim_grad(
    a: &[f32],
    b: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    win: &[f64],
    cov_norm: f64,
    c1: f64,
    c2: f64,
    g: f64,
) -> (Vec<f64>, Vec<f64>) {
    let ws = win.len();
    let (hv, wv) = (h + 1 - ws, w + 1 - ws);
    let s = g / (planes * hv * wv) as f64;
    let k = cov_norm;
    let mut ga = vec![0.0; a.len()];
    let mut gb = vec![0.0; b.len()];
    for p in 0..planes {
        let off = p * h * w;
        let pa = &a[off..off + h * w];
        let pb = &b[off..off + h * w];
        for py in 0..hv {
            for px in 0..wv {
                let [ux, uy, vx, vy, vxy, ssim] = ssim_at(pa, pb, w, py, px, win, k, c1, c2);
                let a1 = 2.0 * ux * uy + c1;
                let a2 = 2.0 * vxy + c2;
                let b1 = ux * ux + uy * uy + c1;
                let b2 = vx + vy + c2;
                let d = b1 * b2;
                let s_ux = 2.0 * uy * a2 / d - 2.0 * ux * ssim / b1;
                let s_uy = 2.0 * ux * a2 / d - 2.0 * uy * ssim / b1;
                let s_v = -ssim / b2;
                let s_vxy = 2.0 * a1 / d;
                for (i, wi) in win.iter().enumerate() {
                    for (j, wj) in win.iter().enumerate() {
                        let q = (py + i) * w + px + j;
                        let wt = wi * wj;
                        let (x, y) = (pa[q] as f64, pb[q] as f64);
                        ga[off + q] +=
                            s * wt * (s_ux + s_v * 2.0 * k * (x - ux) + s_vxy * k * (y - uy));
                        gb[off + q] +=
                            s * wt * (s_uy + s_v * 2.0 * k * (y - uy) + s_vxy * k * (x - ux));
                    }
                }
            }
        }
    }
    (ga, gb)
}

// ----- optimizers: PyTorch's formulas in f64 ---------------------------------

/// One `torch.optim.SGD` step in f64: d = g + wd·p; buf = d (first step) or
/// momentum·buf + (1 − dampening)·d; step = buf, or d + momentum·buf
/// (Nesterov); p −= lr·step. `buf` is None before the first step.
#[allow(clippy::too_many_arguments)]
pub fn sgd_step(
    p: &mut [f64],
    g: &[f32],
    buf: &mut Option<Vec<f64>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    wd: f64,
    nesterov: bool,
) {
    let d: Vec<f64> = p.iter().zip(g).map(|(&p, &g)| g as f64 + wd * p).collect();
    let step = if momentum != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b
                .iter()
                .zip(&d)
                .map(|(b, d)| momentum * b + (1.0 - dampening) * d)
                .collect(),
        };
        let step = if nesterov {
            d.iter().zip(&b).map(|(d, b)| d + momentum * b).collect()
        } else {
            b.clone()
        };
        *buf = Some(b);
        step
    } else {
        d
    };
    for (p, s) in p.iter_mut().zip(step) {
        *p -= lr * s;
    }
}

/// The state of one parameter under `torch.optim.Adam`, in f64.
pub struct AdamRef {
    /// Steps taken.
    pub t: u64,
    /// First moment.
    pub m: Vec<f64>,
    /// Second moment.
    pub v: Vec<f64>,
    /// AMSGrad's running maximum of v.
    pub vmax: Vec<f64>,
}

impl AdamRef {
    /// Zero state for `n` elements.
    pub fn new(n: usize) -> Self {
        AdamRef {
            t: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
            vmax: vec![0.0; n],
        }
    }

    /// One Adam step: d = g + wd·p; m = β1·m + (1−β1)·d; v = β2·v + (1−β2)·d²;
    /// v̂ = max(vmax, v) with AMSGrad, else v;
    /// p −= lr/(1−β1^t) · m / (√v̂/√(1−β2^t) + eps).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        p: &mut [f64],
        g: &[f32],
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        wd: f64,
        amsgrad: bool,
    ) {
        self.t += 1;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for i in 0..p.len() {
            let d = g[i] as f64 + wd * p[i];
            self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * d;
            self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * d * d;
            self.vmax[i] = self.vmax[i].max(self.v[i]);
            let vhat = if amsgrad { self.vmax[i] } else { self.v[i] };
            p[i] -= lr / bc1 * self.m[i] / (vhat.sqrt() / bc2.sqrt() + eps);
        }
    }
}

// ----- convolution and pooling (ops/conv, ops/pool) -------------------------

/// The input pixel index along one axis read by output `o` through tap `k`,
/// or `None` in the zero padding.
fn tap_index(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k) as isize - pad as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// Direct 2-D convolution, straight from the definition:
/// `y[n,co,oy,ox] = b[co] + Σ w[co,ci,ky,kx]·x[n,ci,oy·s+ky−p,ox·s+kx−p]`.
/// `xd` = [N, Cin, H, W], `wd` = [Cout, Cin, kh, kw]; returns y and its dims.
pub fn conv2d(
    x: &[f32],
    xd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    b: Option<&[f32]>,
    stride: [usize; 2],
    pad: [usize; 2],
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, wi] = xd;
    let [cout, _, kh, kw] = wd;
    let oh = (h + 2 * pad[0] - kh) / stride[0] + 1;
    let ow = (wi + 2 * pad[1] - kw) / stride[1] + 1;
    let mut y = vec![0.0; n * cout * oh * ow];
    for ni in 0..n {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let Some(iy) = tap_index(oy, ky, stride[0], pad[0], h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = tap_index(ox, kx, stride[1], pad[1], wi) else {
                                    continue;
                                };
                                s += w[((co * cin + ci) * kh + ky) * kw + kx] as f64
                                    * x[((ni * cin + ci) * h + iy) * wi + ix] as f64;
                            }
                        }
                    }
                    y[((ni * cout + co) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    (y, [n, cout, oh, ow])
}

/// conv2d's input-gradient by scattering: every `g[n,co,oy,ox]` adds
/// `g·w[co,ci,ky,kx]` to the input pixel under each tap. `gd` = [N, Cout, OH,
/// OW], `wd` = [Cout, Cin, kh, kw], `in_hw` = [H, W]. Returns [N, Cin, H, W].
pub fn conv2d_input_grad(
    g: &[f32],
    gd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    in_hw: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Vec<f32> {
    let [n, cout, oh, ow] = gd;
    let [_, cin, kh, kw] = wd;
    let [h, wi] = in_hw;
    let mut dx = vec![0f64; n * cin * h * wi];
    for ni in 0..n {
        for co in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let gv = g[((ni * cout + co) * oh + oy) * ow + ox] as f64;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let Some(iy) = tap_index(oy, ky, stride[0], pad[0], h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) = tap_index(ox, kx, stride[1], pad[1], wi) else {
                                    continue;
                                };
                                dx[((ni * cin + ci) * h + iy) * wi + ix] +=
                                    gv * w[((co * cin + ci) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// conv2d's weight-gradient from the definition:
/// `dw[co,ci,ky,kx] = Σ_{n,oy,ox} g[n,co,oy,ox]·x[n,ci,oy·s+ky−p,ox·s+kx−p]`.
/// Returns [Cout, Cin, kh, kw].
pub fn conv2d_weight_grad(
    x: &[f32],
    xd: [usize; 4],
    g: &[f32],
    gd: [usize; 4],
    k_hw: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Vec<f32> {
    let [n, cin, h, wi] = xd;
    let [_, cout, oh, ow] = gd;
    let [kh, kw] = k_hw;
    let mut dw = vec![0.0; cout * cin * kh * kw];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    let mut s = 0f64;
                    for ni in 0..n {
                        for oy in 0..oh {
                            let Some(iy) = tap_index(oy, ky, stride[0], pad[0], h) else {
                                continue;
                            };
                            for ox in 0..ow {
                                let Some(ix) = tap_index(ox, kx, stride[1], pad[1], wi) else {
                                    continue;
                                };
                                s += g[((ni * cout + co) * oh + oy) * ow + ox] as f64
                                    * x[((ni * cin + ci) * h + iy) * wi + ix] as f64;
                            }
                        }
                    }
                    dw[((co * cin + ci) * kh + ky) * kw + kx] = s as f32;
                }
            }
        }
    }
    dw
}

/// Transposed convolution from its own definition (scatter): input pixel
/// `x[n,ci,iy,ix]` adds `x·w[ci,co,ky,kx]` to output (iy·s+ky−p, ix·s+kx−p).
/// `xd` = [N, Cin, H, W], `wd` = [Cin, Cout, kh, kw]. Returns y and its dims
/// [N, Cout, (H−1)s−2p+kh+op, ...].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    x: &[f32],
    xd: [usize; 4],
    w: &[f32],
    wd: [usize; 4],
    b: Option<&[f32]>,
    stride: [usize; 2],
    pad: [usize; 2],
    out_pad: [usize; 2],
) -> (Vec<f32>, [usize; 4]) {
    let [n, cin, h, wi] = xd;
    let [_, cout, kh, kw] = wd;
    let hout = (h - 1) * stride[0] + kh + out_pad[0] - 2 * pad[0];
    let wout = (wi - 1) * stride[1] + kw + out_pad[1] - 2 * pad[1];
    let mut y = vec![0f64; n * cout * hout * wout];
    for ni in 0..n {
        for co in 0..cout {
            let bv = b.map_or(0.0, |b| b[co] as f64);
            for v in &mut y[(ni * cout + co) * hout * wout..(ni * cout + co + 1) * hout * wout] {
                *v = bv;
            }
        }
        for ci in 0..cin {
            for iy in 0..h {
                for ix in 0..wi {
                    let xv = x[((ni * cin + ci) * h + iy) * wi + ix] as f64;
                    for co in 0..cout {
                        for ky in 0..kh {
                            let Some(oy) = tap_index(iy, ky, stride[0], pad[0], hout) else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ox) = tap_index(ix, kx, stride[1], pad[1], wout) else {
                                    continue;
                                };
                                y[((ni * cout + co) * hout + oy) * wout + ox] +=
                                    xv * w[((ci * cout + co) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (
        y.into_iter().map(|v| v as f32).collect(),
        [n, cout, hout, wout],
    )
}

/// Output dims of a pooling window sweep.
fn pool_dims(xd: [usize; 4], k: [usize; 2], s: [usize; 2], p: [usize; 2]) -> [usize; 4] {
    let [n, c, h, w] = xd;
    [
        n,
        c,
        (h + 2 * p[0] - k[0]) / s[0] + 1,
        (w + 2 * p[1] - k[1]) / s[1] + 1,
    ]
}

/// Max pooling: each output is the largest input in its window (padding
/// never wins), with the flat in-plane index (iy·W + ix) of the first
/// maximum. Returns (y, argmax, dims).
pub fn max_pool2d(
    x: &[f32],
    xd: [usize; 4],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> (Vec<f32>, Vec<usize>, [usize; 4]) {
    let [_, _, h, w] = xd;
    let od = pool_dims(xd, k, s, p);
    let [n, c, oh, ow] = od;
    let mut y = vec![0.0; n * c * oh * ow];
    let mut idx = vec![0; n * c * oh * ow];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f32::NEG_INFINITY;
                let mut bi = usize::MAX;
                for ky in 0..k[0] {
                    let Some(iy) = tap_index(oy, ky, s[0], p[0], h) else {
                        continue;
                    };
                    for kx in 0..k[1] {
                        let Some(ix) = tap_index(ox, kx, s[1], p[1], w) else {
                            continue;
                        };
                        let v = x[pl * h * w + iy * w + ix];
                        if bi == usize::MAX || v > best {
                            best = v;
                            bi = iy * w + ix;
                        }
                    }
                }
                y[(pl * oh + oy) * ow + ox] = best;
                idx[(pl * oh + oy) * ow + ox] = bi;
            }
        }
    }
    (y, idx, od)
}

/// Max pooling's backward: each g goes to its window's argmax (adding where
/// windows share one). `xd` are the input dims.
pub fn max_pool2d_backward(
    g: &[f32],
    argmax: &[usize],
    xd: [usize; 4],
    out_plane: usize,
) -> Vec<f32> {
    let [n, c, h, w] = xd;
    let mut dx = vec![0f64; n * c * h * w];
    for (j, (&gv, &i)) in g.iter().zip(argmax).enumerate() {
        dx[j / out_plane * h * w + i] += gv as f64;
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// Average pooling with PyTorch's default count_include_pad: the window sum
/// of the real pixels divided by the full window area kh·kw.
pub fn avg_pool2d(
    x: &[f32],
    xd: [usize; 4],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> (Vec<f32>, [usize; 4]) {
    let [_, _, h, w] = xd;
    let od = pool_dims(xd, k, s, p);
    let [n, c, oh, ow] = od;
    let mut y = vec![0.0; n * c * oh * ow];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0f64;
                for ky in 0..k[0] {
                    let Some(iy) = tap_index(oy, ky, s[0], p[0], h) else {
                        continue;
                    };
                    for kx in 0..k[1] {
                        if let Some(ix) = tap_index(ox, kx, s[1], p[1], w) {
                            sum += x[pl * h * w + iy * w + ix] as f64;
                        }
                    }
                }
                y[(pl * oh + oy) * ow + ox] = (sum / (k[0] * k[1]) as f64) as f32;
            }
        }
    }
    (y, od)
}

/// Average pooling's backward: each g spreads g/(kh·kw) over its window's
/// real pixels.
pub fn avg_pool2d_backward(
    g: &[f32],
    xd: [usize; 4],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> Vec<f32> {
    let [n, c, h, w] = xd;
    let [_, _, oh, ow] = pool_dims(xd, k, s, p);
    let area = (k[0] * k[1]) as f64;
    let mut dx = vec![0f64; n * c * h * w];
    for pl in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let gv = g[(pl * oh + oy) * ow + ox] as f64 / area;
                for ky in 0..k[0] {
                    let Some(iy) = tap_index(oy, ky, s[0], p[0], h) else {
                        continue;
                    };
                    for kx in 0..k[1] {
                        if let Some(ix) = tap_index(ox, kx, s[1], p[1], w) {
                            dx[pl * h * w + iy * w + ix] += gv;
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}
