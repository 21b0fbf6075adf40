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

// ----- convolution and pooling (ops/conv, ops/pool) -------------------------

/// The input pixel index along one axis read by output `o` through tap `k`,
/// or `None` in the zero padding.
fn tap_index(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k) as isize - pad as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

/// Direct 2-D convolution, straight from the definition:
/// y[n,co,oy,ox] = b[co] + Σ w[co,ci,ky,kx]·x[n,ci,oy·s+ky−p,ox·s+kx−p].
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

/// conv2d's input-gradient by scattering: every g[n,co,oy,ox] adds
/// g·w[co,ci,ky,kx] to the input pixel under each tap. `gd` = [N, Cout, OH,
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
/// dw[co,ci,ky,kx] = Σ_{n,oy,ox} g[n,co,oy,ox]·x[n,ci,oy·s+ky−p,ox·s+kx−p].
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
/// x[n,ci,iy,ix] adds x·w[ci,co,ky,kx] to output (iy·s+ky−p, ix·s+kx−p).
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
