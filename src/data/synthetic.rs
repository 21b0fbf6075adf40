//! "synthetic-digits": an embedded stand-in for MNIST, drawn procedurally.
//!
//! Each digit is a few pen strokes (lines, elliptic arcs, Bézier curves) in a
//! unit box. Every sample gets its own hand: the stroke geometry is jittered
//! and bent by a smooth random warp, the whole digit is slanted, rotated and
//! stretched (a small affine), and it is drawn with an anti-aliased pen whose
//! width varies along the stroke. Then it is placed the way MNIST was made:
//! scaled so its bounding box (pen included) fits 20×20 pixels, and shifted
//! so its centre of mass sits at the centre of the 28×28 image (± a pixel).
//!
//! Sample `i` of seed `s` depends only on `(s, i)` (its own ChaCha8 stream),
//! so any subset can be generated in any order, in parallel, identically.

use super::Dataset;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Side of a synthetic digit image (MNIST's).
pub const SIDE: usize = 28;
/// The box the digit's extent is scaled into (MNIST's 20×20).
const BOX: f32 = 20.0;
/// Seed of the training split used by [`super::load`].
pub const TRAIN_SEED: u64 = 0x5EED_0000_0001;
/// Seed of the test split used by [`super::load`].
pub const TEST_SEED: u64 = 0x5EED_0000_0002;

type P = (f32, f32);

/// A pen stroke: points in digit space (x right, y down, height 1).
type Stroke = Vec<P>;

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::MIN_POSITIVE..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn line(a: P, b: P) -> Stroke {
    let n = 6;
    (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32;
            (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
        })
        .collect()
}

/// Elliptic arc, angles in degrees with y pointing down (90° = bottom,
/// 270° = top), from `a0` to `a1` (either direction).
fn arc(c: P, r: P, a0: f32, a1: f32) -> Stroke {
    let n = ((a1 - a0).abs() / 12.0).ceil().max(2.0) as usize;
    (0..=n)
        .map(|i| {
            let t = (a0 + (a1 - a0) * i as f32 / n as f32).to_radians();
            (c.0 + r.0 * t.cos(), c.1 + r.1 * t.sin())
        })
        .collect()
}

fn bezier(p0: P, p1: P, p2: P, p3: P) -> Stroke {
    let n = 14;
    (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            (
                a * p0.0 + b * p1.0 + c * p2.0 + d * p3.0,
                a * p0.1 + b * p1.1 + c * p2.1 + d * p3.1,
            )
        })
        .collect()
}

/// The strokes of `digit`, with its shape parameters jittered by `rng` and
/// one of a few common ways of writing it picked at random.
fn digit_strokes(digit: usize, rng: &mut ChaCha8Rng) -> Vec<Stroke> {
    // j!(s): a jitter of standard deviation s (in digit units, height = 1).
    macro_rules! j {
        ($s:expr) => {
            $s * normal(rng)
        };
    }
    match digit {
        0 => {
            let start = 250.0 + j!(25.0);
            let (rx, ry) = (0.27 + j!(0.04), 0.48 + j!(0.02));
            let c = (0.3, 0.5);
            // Slightly more than a full turn, with a drifting radius, so the
            // ends overlap or leave a small gap like a real pen.
            let over = 10.0 + j!(12.0);
            let mut s = arc(c, (rx, ry), start, start + 360.0 + over);
            let drift = j!(0.05);
            let n = s.len().max(1) as f32;
            for (i, p) in s.iter_mut().enumerate() {
                let k = 1.0 + drift * i as f32 / n;
                p.0 = c.0 + (p.0 - c.0) * k;
                p.1 = c.1 + (p.1 - c.1) * k;
            }
            vec![s]
        }
        1 => {
            let top = (0.34 + j!(0.03), 0.0);
            let bottom = (0.3 + j!(0.03), 1.0);
            let mut v = vec![line(top, bottom)];
            let style: f32 = rng.gen();
            if style < 0.45 {
                // A flag at the top.
                v.push(line((0.14 + j!(0.04), 0.2 + j!(0.04)), top));
            }
            if style < 0.15 {
                // And a base.
                v.push(line((0.12, 1.0), (0.5 + j!(0.04), 1.0)));
            }
            v
        }
        2 => {
            let c = (0.3 + j!(0.02), 0.27 + j!(0.02));
            let r = (0.27 + j!(0.03), 0.26 + j!(0.03));
            let top = arc(c, r, 195.0 + j!(10.0), 370.0 + j!(10.0));
            let end = top.last().copied().unwrap_or((0.55, 0.3));
            let corner = (0.02 + j!(0.03), 1.0);
            let curl: f32 = rng.gen();
            let mut v = vec![
                top,
                bezier(end, (0.5, 0.55 + j!(0.05)), (0.2, 0.75), corner),
            ];
            if curl < 0.3 {
                // A small loop at the corner.
                v.push(arc((0.1, 0.92), (0.09, 0.08), 90.0, 330.0));
            }
            v.push(line(corner, (0.6 + j!(0.04), 1.0 + j!(0.02))));
            v
        }
        3 => {
            let mid = (0.3 + j!(0.03), 0.5 + j!(0.02));
            let top = arc(
                (0.3, mid.1 / 2.0),
                (0.26 + j!(0.02), mid.1 / 2.0),
                205.0 + j!(10.0),
                450.0,
            );
            let bot = arc(
                (0.3, (mid.1 + 1.0) / 2.0),
                (0.3 + j!(0.02), (1.0 - mid.1) / 2.0),
                270.0,
                520.0 + j!(10.0),
            );
            vec![top, bot]
        }
        4 => {
            let bar_y = 0.66 + j!(0.04);
            let stem_x = 0.42 + j!(0.03);
            if rng.gen::<f32>() < 0.55 {
                // Closed 4: one stroke down-left, across; then the stem.
                vec![
                    [
                        line((stem_x, 0.0), (0.0 + j!(0.02), bar_y)),
                        line((0.0, bar_y), (0.62 + j!(0.03), bar_y)),
                    ]
                    .concat(),
                    line((stem_x, 0.0), (stem_x + j!(0.02), 1.0)),
                ]
            } else {
                // Open 4.
                vec![
                    [
                        line((0.08 + j!(0.03), 0.0), (0.02, bar_y - 0.04)),
                        line((0.02, bar_y - 0.04), (0.62 + j!(0.03), bar_y - 0.04)),
                    ]
                    .concat(),
                    line((stem_x + 0.04, 0.08), (stem_x + j!(0.02), 1.0)),
                ]
            }
        }
        5 => {
            let knee = (0.08 + j!(0.03), 0.44 + j!(0.03));
            let c = (0.28 + j!(0.02), 0.7);
            let r = (0.3 + j!(0.03), 0.3 + j!(0.02));
            let bowl = arc(c, r, 235.0 + j!(8.0), 515.0 + j!(12.0));
            let first = bowl.first().copied().unwrap_or(knee);
            vec![
                line((0.58 + j!(0.03), 0.0 + j!(0.02)), (0.1, 0.0)),
                [line((0.1, 0.0), knee), line(knee, first), bowl].concat(),
            ]
        }
        6 => {
            let c = (0.3 + j!(0.02), 0.72 + j!(0.02));
            let r = (0.27 + j!(0.03), 0.27 + j!(0.02));
            let entry = (c.0 - r.0, c.1 + j!(0.04));
            vec![
                bezier(
                    (0.52 + j!(0.04), 0.0),
                    (0.2 + j!(0.05), 0.12),
                    (0.0 + j!(0.03), 0.4),
                    entry,
                ),
                arc(c, r, 180.0, 180.0 - 360.0 - 20.0 + j!(15.0)),
            ]
        }
        7 => {
            let tr = (0.6 + j!(0.03), 0.0 + j!(0.02));
            let foot = (0.22 + j!(0.06), 1.0);
            let mut v = vec![[
                line((0.0 + j!(0.03), 0.0 + j!(0.03)), tr),
                bezier(tr, (0.5, 0.3 + j!(0.05)), (0.3 + j!(0.04), 0.65), foot),
            ]
            .concat()];
            if rng.gen::<f32>() < 0.2 {
                v.push(line((0.22, 0.52), (0.6, 0.5 + j!(0.03))));
            }
            v
        }
        8 => {
            let waist = 0.46 + j!(0.03);
            let tc = (0.3 + j!(0.02), waist / 2.0);
            let bc = (0.3 + j!(0.02), (waist + 1.0) / 2.0);
            vec![
                arc(tc, (0.22 + j!(0.02), waist / 2.0), 90.0, 450.0 + j!(10.0)),
                arc(
                    bc,
                    (0.29 + j!(0.02), (1.0 - waist) / 2.0),
                    270.0,
                    630.0 + j!(10.0),
                ),
            ]
        }
        _ => {
            let c = (0.3 + j!(0.02), 0.28 + j!(0.02));
            let r = (0.27 + j!(0.03), 0.27 + j!(0.02));
            let right = (c.0 + r.0, c.1 + j!(0.03));
            let tail = if rng.gen::<f32>() < 0.5 {
                line(right, (0.5 + j!(0.04), 1.0))
            } else {
                bezier(right, (0.6, 0.6), (0.5, 0.9), (0.3 + j!(0.05), 1.0))
            };
            vec![arc(c, r, 0.0, 360.0 + 20.0 + j!(10.0)), tail]
        }
    }
}

/// Distance from `p` to segment `ab`, and the position `t ∈ \[0, 1\]` of the
/// nearest point along it.
fn seg_dist(p: P, a: P, b: P) -> (f32, f32) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    ((qx * qx + qy * qy).sqrt(), t)
}

/// Draws pixel-space strokes with per-point pen radii into a 28×28 canvas:
/// coverage = how far the pixel centre is inside the pen, ramped over about
/// one pixel (anti-aliasing); overlapping strokes take the max, not the sum.
fn render(strokes: &[(Vec<P>, Vec<f32>)], shift: P, out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    const RAMP: f32 = 1.1;
    for (pts, radii) in strokes {
        for (w, rw) in pts.windows(2).zip(radii.windows(2)) {
            let (a, b) = (w[0], w[1]);
            let (a, b) = (
                (a.0 + shift.0, a.1 + shift.1),
                (b.0 + shift.0, b.1 + shift.1),
            );
            let (ra, rb) = (rw[0], rw[1]);
            let reach = ra.max(rb) + RAMP;
            let x0 = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
            let x1 = ((a.0.max(b.0) + reach).ceil().max(0.0) as usize).min(SIDE);
            let y0 = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
            let y1 = ((a.1.max(b.1) + reach).ceil().max(0.0) as usize).min(SIDE);
            for y in y0..y1 {
                for x in x0..x1 {
                    let (d, t) = seg_dist((x as f32 + 0.5, y as f32 + 0.5), a, b);
                    let r = ra + (rb - ra) * t;
                    let cov = ((r - d) / RAMP + 0.5).clamp(0.0, 1.0);
                    if let Some(v) = out.get_mut(y * SIDE + x) {
                        *v = v.max(cov);
                    }
                }
            }
        }
    }
}

/// Renders sample `index` of `seed` into a 28×28 buffer (values in \[0, 1\]).
fn draw_digit(digit: usize, seed: u64, index: u64, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let strokes = digit_strokes(digit, &mut rng);

    // A smooth random warp (bends lines into curves, uneven loop sizes).
    let (ax, fx, px) = (
        0.035 * normal(&mut rng),
        rng.gen_range(0.5..1.5),
        rng.gen::<f32>(),
    );
    let (ay, fy, py) = (
        0.03 * normal(&mut rng),
        rng.gen_range(0.5..1.5),
        rng.gen::<f32>(),
    );
    // The hand: slant (shear), rotation, width/height ratio.
    let slant = rng.gen_range(-0.15f32..0.38);
    let rot = (7.0 * normal(&mut rng)).clamp(-16.0, 16.0).to_radians();
    let stretch = rng.gen_range(1.0f32..1.6);
    let (sr, cr) = rot.sin_cos();
    let tf = |(x, y): P| -> P {
        let x = x + ax * (std::f32::consts::TAU * (fx * y + px)).sin();
        let y = y + ay * (std::f32::consts::TAU * (fy * x + py)).sin();
        // Centre, stretch, slant (top leans right), rotate.
        let (x, y) = ((x - 0.3) * stretch, y - 0.5);
        let x = x - slant * y;
        (cr * x - sr * y, sr * x + cr * y)
    };
    let strokes: Vec<Stroke> = strokes
        .into_iter()
        .map(|s| s.into_iter().map(tf).collect())
        .collect();

    // Pen: a base radius in pixels, modulated smoothly along each stroke.
    let radius = rng.gen_range(0.9f32..2.0);
    let (lo_x, lo_y, hi_x, hi_y) = strokes.iter().flatten().fold(
        (f32::MAX, f32::MAX, f32::MIN, f32::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.min(y), c.max(x), d.max(y)),
    );
    let extent = (hi_x - lo_x).max(hi_y - lo_y).max(1e-3);
    // MNIST: the digit with its pen fits the 20×20 box (most digits touch it).
    let scale = (BOX - 2.0 * radius - 0.5) / extent * rng.gen_range(0.9f32..1.0);
    let (cx, cy) = ((lo_x + hi_x) / 2.0, (lo_y + hi_y) / 2.0);
    let half = SIDE as f32 / 2.0;
    let mut pix: Vec<(Vec<P>, Vec<f32>)> = Vec::with_capacity(strokes.len());
    for s in strokes {
        let phase: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        let n = s.len().max(1) as f32;
        let radii = (0..s.len())
            .map(|i| radius * (1.0 + 0.18 * (phase + 3.0 * i as f32 / n).sin()))
            .collect();
        let pts = s
            .into_iter()
            .map(|(x, y)| ((x - cx) * scale + half, (y - cy) * scale + half))
            .collect();
        pix.push((pts, radii));
    }

    // Centre of mass to the image centre (as MNIST did), plus a little jitter.
    render(&pix, (0.0, 0.0), out);
    let (mut m, mut mx, mut my) = (0.0f32, 0.0f32, 0.0f32);
    for (i, &v) in out.iter().enumerate() {
        m += v;
        mx += v * ((i % SIDE) as f32 + 0.5);
        my += v * ((i / SIDE) as f32 + 0.5);
    }
    if m > 0.0 {
        let jx = rng.gen_range(-1.0f32..1.0);
        let jy = rng.gen_range(-1.0f32..1.0);
        render(&pix, (half - mx / m + jx, half - my / m + jy), out);
    }

    // Ink noise: uneven pressure along the stroke; the background stays 0.
    for v in out.iter_mut() {
        if *v > 0.0 {
            *v = (*v * (1.0 + 0.06 * normal(&mut rng))).clamp(0.0, 1.0);
        }
    }
}

/// `n` synthetic digit images (1×28×28, values in \[0, 1\]), label `i % 10` for
/// sample `i` (balanced), deterministic in `(seed, i)`.
pub fn synthetic_digits(n: usize, seed: u64) -> Dataset {
    let plane = SIDE * SIDE;
    let mut images = vec![0f32; n * plane];
    images
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(i, img)| draw_digit(i % 10, seed, i as u64, img));
    Dataset {
        images,
        labels: (0..n).map(|i| i % 10).collect(),
        n,
        channels: 1,
        height: SIDE,
        width: SIDE,
        classes: (0..10).map(|d| d.to_string()).collect(),
        source: format!("synthetic-digits (seed {seed:#x})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_index() {
        let a = synthetic_digits(30, 7);
        let b = synthetic_digits(30, 7);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, (0..30).map(|i| i % 10).collect::<Vec<_>>());
        let c = synthetic_digits(30, 8);
        let differing = (0..30).filter(|&i| a.image(i) != c.image(i)).count();
        assert_eq!(differing, 30, "another seed must change every sample");
        // Sample i does not depend on n (its own stream).
        let d = synthetic_digits(12, 7);
        assert_eq!(d.image(11), a.image(11));
        // Same digit, different index: different drawings.
        assert_ne!(a.image(3), a.image(13));
    }

    #[test]
    fn looks_like_mnist_statistics() {
        let ds = synthetic_digits(500, 1);
        let px = &ds.images;
        assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = px.iter().sum::<f32>() / px.len() as f32;
        // MNIST's mean pixel is 0.1307; ours should be in the same range.
        assert!((0.08..0.2).contains(&mean), "mean {mean}");
        let mut touching = 0;
        for i in 0..ds.len() {
            let img = ds.image(i);
            // Bounding box of ink above 0.1 fits in the central area and is
            // at least 12 px tall or wide (scaled into the 20×20 box).
            let (mut x0, mut y0, mut x1, mut y1) = (SIDE, SIDE, 0, 0);
            for (k, &v) in img.iter().enumerate() {
                if v > 0.1 {
                    let (x, y) = (k % SIDE, k / SIDE);
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
            }
            let extent = (x1 - x0).max(y1 - y0) + 1;
            assert!((12..=24).contains(&extent), "sample {i}: extent {extent}");
            // Centring by mass can push a digit to the edge, rarely (as in MNIST).
            if x0 == 0 || y0 == 0 || x1 == SIDE - 1 || y1 == SIDE - 1 {
                touching += 1;
            }
            // Some pixels are fully inked.
            assert!(img.iter().any(|&v| v > 0.9), "sample {i} has no solid ink");
        }
        assert!(touching <= 5, "{touching} of 500 samples touch the border");
    }

    /// Writes a 10×10 grid of samples (columns = digits) to the temp dir
    /// for a human to look at, and checks each column's class-mean differs.
    #[test]
    fn sample_grid_png() {
        let ds = synthetic_digits(100, TRAIN_SEED);
        let (cell, up) = (SIDE + 2, 3);
        let side = 10 * cell * up;
        let mut img = image::GrayImage::new(side as u32, side as u32);
        for i in 0..100 {
            let (gx, gy) = ((i % 10) * cell, (i / 10) * cell);
            for (k, &v) in ds.image(i).iter().enumerate() {
                let (x, y) = (gx + 1 + k % SIDE, gy + 1 + k / SIDE);
                for dy in 0..up {
                    for dx in 0..up {
                        img.put_pixel(
                            (x * up + dx) as u32,
                            (y * up + dy) as u32,
                            image::Luma([(v * 255.0).round() as u8]),
                        );
                    }
                }
            }
        }
        let path = std::env::temp_dir().join("splitinv_synthetic_digits.png");
        img.save(&path).unwrap();
        println!("wrote {}", path.display());
    }

    /// The ten classes are genuinely different: a nearest-class-mean
    /// classifier trained on 2000 samples classifies a held-out set well.
    #[test]
    fn classes_are_separable() {
        let train = synthetic_digits(2000, TRAIN_SEED);
        let test = synthetic_digits(1000, TEST_SEED);
        let plane = SIDE * SIDE;
        let mut means = vec![0f32; 10 * plane];
        let mut counts = [0f32; 10];
        for i in 0..train.len() {
            let l = train.labels[i];
            counts[l] += 1.0;
            for (m, v) in means[l * plane..(l + 1) * plane]
                .iter_mut()
                .zip(train.image(i))
            {
                *m += v;
            }
        }
        for l in 0..10 {
            means[l * plane..(l + 1) * plane]
                .iter_mut()
                .for_each(|m| *m /= counts[l]);
        }
        let correct = (0..test.len())
            .filter(|&i| {
                let x = test.image(i);
                let best = (0..10)
                    .map(|l| {
                        let d: f32 = means[l * plane..(l + 1) * plane]
                            .iter()
                            .zip(x)
                            .map(|(m, v)| (m - v) * (m - v))
                            .sum();
                        (d, l)
                    })
                    .fold((f32::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
                best.1 == test.labels[i]
            })
            .count();
        let acc = correct as f32 / test.len() as f32;
        println!("nearest-class-mean accuracy on synthetic digits: {acc:.3}");
        assert!(acc > 0.6, "accuracy {acc}");
        // ... but not trivially so: the samples really vary.
        assert!(acc < 0.99, "accuracy {acc}: samples barely vary");
    }
}
