//! Data transforms: per-channel normalisation, training augmentation
//! (horizontal flip, small random affine), deterministic shuffling and a
//! batch iterator.
//!
//! Images are CHW slices of f32 in \[0, 1\] (one image of a [`Dataset`]);
//! augmentation happens in that space, normalisation last.

use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// MNIST mean used by the paper's models: inputs become (x − 0.5) / 0.5.
pub const MNIST_MEAN: [f32; 1] = [0.5];
/// MNIST standard deviation used by the paper's models.
pub const MNIST_STD: [f32; 1] = [0.5];
/// CIFAR-10 per-channel mean used by the paper's models (the ImageNet values).
pub const CIFAR_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// CIFAR-10 per-channel standard deviation used by the paper's models.
pub const CIFAR_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The paper's normalisation for a channel count: MNIST's for 1 channel,
/// CIFAR-10's for 3, `None` otherwise.
pub fn default_normalization(channels: usize) -> Option<(&'static [f32], &'static [f32])> {
    match channels {
        1 => Some((&MNIST_MEAN, &MNIST_STD)),
        3 => Some((&CIFAR_MEAN, &CIFAR_STD)),
        _ => None,
    }
}

fn check_norm(op: &'static str, channels: usize, mean: &[f32], std: &[f32]) -> Result<()> {
    if mean.len() != channels || std.len() != channels {
        return Err(Error::invalid(
            op,
            format!(
                "{channels} channels need {channels} means and stds, got {} means and {} stds",
                mean.len(),
                std.len()
            ),
        ));
    }
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid(
            op,
            format!("std {s} is not a positive finite number"),
        ));
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        return Err(Error::invalid(op, format!("mean {m} is not finite")));
    }
    Ok(())
}

/// In place, `x ← (x − mean[c]) / std[c]` on NCHW data, where `plane` = H·W
/// (the channel of element i is `(i / plane) % channels`).
pub fn normalize_in_place(
    data: &mut [f32],
    channels: usize,
    plane: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<()> {
    affine_per_channel("normalize", data, channels, plane, mean, std, false)
}

/// In place, the inverse of [`normalize_in_place`]: `x ← x·std[c] + mean[c]`.
pub fn denormalize_in_place(
    data: &mut [f32],
    channels: usize,
    plane: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<()> {
    affine_per_channel("denormalize", data, channels, plane, mean, std, true)
}

fn affine_per_channel(
    op: &'static str,
    data: &mut [f32],
    channels: usize,
    plane: usize,
    mean: &[f32],
    std: &[f32],
    inverse: bool,
) -> Result<()> {
    check_norm(op, channels, mean, std)?;
    if plane == 0 || channels == 0 || !data.len().is_multiple_of(channels * plane) {
        return Err(Error::invalid(
            op,
            format!(
                "{} values are not a whole number of {channels}×{plane} images",
                data.len()
            ),
        ));
    }
    for (k, chunk) in data.chunks_mut(plane).enumerate() {
        let c = k % channels;
        let (m, s) = match (mean.get(c), std.get(c)) {
            (Some(&m), Some(&s)) => (m, s),
            _ => continue,
        };
        if inverse {
            chunk.iter_mut().for_each(|v| *v = *v * s + m);
        } else {
            let inv = 1.0 / s;
            chunk.iter_mut().for_each(|v| *v = (*v - m) * inv);
        }
    }
    Ok(())
}

/// The channel count and plane size of a `[B,C,H,W]` or `[C,H,W]` tensor.
fn image_layout(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.dims() {
        [_, c, h, w] | [c, h, w] => Ok((*c, h * w)),
        d => Err(Error::shape(op, "[B,C,H,W] or [C,H,W]", d)),
    }
}

fn tensor_transform(
    op: &'static str,
    x: &Tensor,
    mean: &[f32],
    std: &[f32],
    inverse: bool,
) -> Result<Tensor> {
    if x.tracks_grad() {
        return Err(Error::invalid(
            op,
            "this is a data transform and records no gradient, but the input tracks one; \
             use the differentiable ops (scale, add_scalar) or detach() first",
        ));
    }
    let (c, plane) = image_layout(op, x)?;
    let mut data = x.to_vec()?;
    affine_per_channel(op, &mut data, c, plane, mean, std, inverse)?;
    // Computed on the host; the result goes back where the input was.
    Tensor::from_vec(data, x.shape().clone())?.to_device(x.device())
}

/// `(x − mean[c]) / std[c]` on a `[B,C,H,W]` or `[C,H,W]` tensor (a data
/// transform: no gradient is recorded, and a gradient-tracking input is an error).
pub fn normalize(images: &Tensor, mean: &[f32], std: &[f32]) -> Result<Tensor> {
    tensor_transform("normalize", images, mean, std, false)
}

/// `x·std[c] + mean[c]`, the inverse of [`normalize`] (e.g. to turn a
/// reconstruction in normalised space back into pixels in \[0, 1\]).
pub fn denormalize(images: &Tensor, mean: &[f32], std: &[f32]) -> Result<Tensor> {
    tensor_transform("denormalize", images, mean, std, true)
}

fn check_image(op: &'static str, img: &[f32], c: usize, h: usize, w: usize) -> Result<()> {
    if img.len() != c * h * w || img.is_empty() {
        return Err(Error::invalid(
            op,
            format!(
                "image of {} values given for a non-empty {c}×{h}×{w} image",
                img.len()
            ),
        ));
    }
    Ok(())
}

/// Mirrors a CHW image left–right, in place.
pub fn hflip(img: &mut [f32], c: usize, h: usize, w: usize) -> Result<()> {
    check_image("hflip", img, c, h, w)?;
    img.chunks_mut(w).for_each(|row| row.reverse());
    Ok(())
}

/// Mirrors with probability ½; returns whether it did.
pub fn random_hflip(
    img: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    rng: &mut impl Rng,
) -> Result<bool> {
    check_image("random_hflip", img, c, h, w)?;
    let flip = rng.gen_bool(0.5);
    if flip {
        hflip(img, c, h, w)?;
    }
    Ok(flip)
}

/// Rotates a CHW image by `angle_deg` (counter-clockwise as displayed, about
/// the image centre), then shifts it by `(tx, ty)` pixels (right, down).
/// Bilinear sampling; what comes from outside the image is 0.
///
/// Each output pixel p is pulled from the source at T⁻¹(p), so there are no holes:
/// T(q) = R(q − centre) + centre + t, hence T⁻¹(p) = R⁻¹(p − centre − t) + centre.
#[allow(clippy::too_many_arguments)]
pub fn affine(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    angle_deg: f32,
    tx: f32,
    ty: f32,
    dst: &mut [f32],
) -> Result<()> {
    check_image("affine", src, c, h, w)?;
    if dst.len() != src.len() {
        return Err(Error::invalid(
            "affine",
            format!("output has {} values, input {}", dst.len(), src.len()),
        ));
    }
    if !(angle_deg.is_finite() && tx.is_finite() && ty.is_finite()) {
        return Err(Error::invalid(
            "affine",
            format!("angle {angle_deg}, shift ({tx}, {ty}) must be finite"),
        ));
    }
    let (s, co) = angle_deg.to_radians().sin_cos();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let plane = h * w;
    let at = |ch: usize, x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            src.get(ch * plane + y as usize * w + x as usize)
                .copied()
                .unwrap_or(0.0)
        }
    };
    for y in 0..h {
        for x in 0..w {
            // p − centre − t, then R⁻¹. In y-down coordinates a visual
            // counter-clockwise turn is R = [[cos, sin], [−sin, cos]].
            let (px, py) = (x as f32 - cx - tx, y as f32 - cy - ty);
            let sx = co * px - s * py + cx;
            let sy = s * px + co * py + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for ch in 0..c {
                let v = at(ch, x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + at(ch, x0 + 1, y0) * fx * (1.0 - fy)
                    + at(ch, x0, y0 + 1) * (1.0 - fx) * fy
                    + at(ch, x0 + 1, y0 + 1) * fx * fy;
                if let Some(d) = dst.get_mut(ch * plane + y * w + x) {
                    *d = v;
                }
            }
        }
    }
    Ok(())
}

fn check_affine_limits(max_deg: f32, max_shift: f32) -> Result<()> {
    if !(max_deg >= 0.0 && max_shift >= 0.0 && max_deg.is_finite() && max_shift.is_finite()) {
        return Err(Error::invalid(
            "random_affine",
            format!("max_deg {max_deg} and max_shift {max_shift} must be finite and ≥ 0"),
        ));
    }
    Ok(())
}

/// A random [`affine`] in place: angle uniform in ±`max_deg`, shift uniform
/// in ±`max_shift` pixels on each axis.
pub fn random_affine(
    img: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    max_deg: f32,
    max_shift: f32,
    rng: &mut impl Rng,
) -> Result<()> {
    check_affine_limits(max_deg, max_shift)?;
    let mut sym = |m: f32| if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 };
    let (a, tx, ty) = (sym(max_deg), sym(max_shift), sym(max_shift));
    let src = img.to_vec();
    affine(&src, c, h, w, a, tx, ty, img)
}

/// Training augmentation applied per image before normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Mirror left–right with probability ½.
    pub hflip: bool,
    /// Largest rotation, degrees (0 = none).
    pub max_rotate_deg: f32,
    /// Largest shift per axis, pixels (0 = none).
    pub max_translate: f32,
}

impl Augment {
    /// The CIFAR-10 training augmentation: flip, ±5°, ±2 px.
    pub fn cifar() -> Self {
        Augment {
            hflip: true,
            max_rotate_deg: 5.0,
            max_translate: 2.0,
        }
    }

    /// For digits and other images whose mirror image is another thing:
    /// no flip, ±10°, ±2 px.
    pub fn digits() -> Self {
        Augment {
            hflip: false,
            max_rotate_deg: 10.0,
            max_translate: 2.0,
        }
    }

    /// Applies the augmentation to one CHW image.
    pub fn apply(
        &self,
        img: &mut [f32],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut impl Rng,
    ) -> Result<()> {
        check_image("augment", img, c, h, w)?;
        let d = self.draw(rng)?;
        self.apply_drawn(&d, img, c, h, w)
    }

    /// Augments every CHW image of a batch (`data` holds whole images).
    ///
    /// The random choices are drawn one image after another from `rng`, in
    /// the order [`Augment::apply`] would draw them, so the result is the
    /// same as applying image by image; only the pixel work, which is most
    /// of the cost (about 30 µs for a 32×32 colour image, against a GPU
    /// training step of a few ms), runs on the thread pool.
    pub fn apply_batch(
        &self,
        data: &mut [f32],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut impl Rng,
    ) -> Result<()> {
        use rayon::prelude::*;
        let size = c * h * w;
        if size == 0 || !data.len().is_multiple_of(size) {
            return Err(Error::invalid(
                "augment",
                format!(
                    "a batch of {} values is not a whole number of {c}×{h}×{w} images",
                    data.len()
                ),
            ));
        }
        let draws = (0..data.len() / size)
            .map(|_| self.draw(rng))
            .collect::<Result<Vec<_>>>()?;
        data.par_chunks_mut(size)
            .zip(draws.par_iter())
            .try_for_each(|(img, d)| self.apply_drawn(d, img, c, h, w))
    }

    /// Draws one image's random choices, as [`random_hflip`] then
    /// [`random_affine`] would.
    pub fn draw(&self, rng: &mut impl Rng) -> Result<AugmentDraw> {
        let flip = self.hflip && rng.gen_bool(0.5);
        let (mut angle_deg, mut tx, mut ty) = (0.0, 0.0, 0.0);
        if self.uses_affine() {
            let (max_deg, max_shift) = (self.max_rotate_deg, self.max_translate);
            check_affine_limits(max_deg, max_shift)?;
            let mut sym = |m: f32| if m > 0.0 { rng.gen_range(-m..=m) } else { 0.0 };
            (angle_deg, tx, ty) = (sym(max_deg), sym(max_shift), sym(max_shift));
        }
        Ok(AugmentDraw {
            flip,
            angle_deg,
            tx,
            ty,
        })
    }

    /// Applies drawn choices to one CHW image.
    pub fn apply_drawn(
        &self,
        d: &AugmentDraw,
        img: &mut [f32],
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        if d.flip {
            hflip(img, c, h, w)?;
        }
        if self.uses_affine() {
            let src = img.to_vec();
            affine(&src, c, h, w, d.angle_deg, d.tx, d.ty, img)?;
        }
        Ok(())
    }

    fn uses_affine(&self) -> bool {
        self.max_rotate_deg > 0.0 || self.max_translate > 0.0
    }
}

/// One image's random choices for an [`Augment`] ([`Augment::draw`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentDraw {
    /// Mirror left–right.
    pub flip: bool,
    /// Rotation, degrees.
    pub angle_deg: f32,
    /// Shift right, pixels.
    pub tx: f32,
    /// Shift down, pixels.
    pub ty: f32,
}

/// `0..n` in a random order fixed by `seed` (ChaCha8, Fisher–Yates): the
/// same on every run and machine.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx
}

/// Iterates over a dataset in batches of `[B,C,H,W]` tensors with their
/// labels, optionally shuffled, augmented and normalised.
///
/// ```no_run
/// # use splitinv::data::{self, transforms::{BatchIter, Augment, CIFAR_MEAN, CIFAR_STD}};
/// # fn f(ds: &data::Dataset) -> splitinv::Result<()> {
/// for batch in BatchIter::new(ds, 32)?
///     .shuffled(7)
///     .augment(Augment::cifar(), 7)
///     .normalize(&CIFAR_MEAN, &CIFAR_STD)?
/// {
///     let (x, labels) = batch?;
///     # let _ = (x, labels);
/// }
/// # Ok(()) }
/// ```
pub struct BatchIter<'a> {
    ds: &'a Dataset,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    drop_last: bool,
    augment: Option<(Augment, ChaCha8Rng)>,
    norm: Option<(Vec<f32>, Vec<f32>)>,
}

impl<'a> BatchIter<'a> {
    /// Batches of `batch_size` in dataset order; the last one may be smaller.
    pub fn new(ds: &'a Dataset, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::invalid(
                "batches",
                "batch size 0; expected at least 1",
            ));
        }
        Ok(BatchIter {
            ds,
            order: (0..ds.len()).collect(),
            pos: 0,
            batch_size,
            drop_last: false,
            augment: None,
            norm: None,
        })
    }

    /// Visits the samples in the order of [`shuffled_indices`]`(len, seed)`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.order = shuffled_indices(self.ds.len(), seed);
        self
    }

    /// Visits exactly these samples, in this order.
    pub fn with_order(mut self, order: Vec<usize>) -> Result<Self> {
        if let Some(&i) = order.iter().find(|&&i| i >= self.ds.len()) {
            return Err(Error::invalid(
                "batches",
                format!("index {i} out of range for a dataset of {}", self.ds.len()),
            ));
        }
        self.order = order;
        Ok(self)
    }

    /// Skips a last batch smaller than the batch size.
    pub fn drop_last(mut self, yes: bool) -> Self {
        self.drop_last = yes;
        self
    }

    /// Augments every image (random stream seeded by `seed`).
    pub fn augment(mut self, aug: Augment, seed: u64) -> Self {
        self.augment = Some((aug, ChaCha8Rng::seed_from_u64(seed)));
        self
    }

    /// Normalises every batch per channel (after augmentation).
    pub fn normalize(mut self, mean: &[f32], std: &[f32]) -> Result<Self> {
        check_norm("batches", self.ds.channels, mean, std)?;
        self.norm = Some((mean.to_vec(), std.to_vec()));
        Ok(self)
    }

    /// How many batches a full pass yields.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn make(&mut self, idx: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let ds = self.ds;
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let mut data = ds.gather(idx)?;
        if let Some((aug, rng)) = &mut self.augment {
            aug.apply_batch(&mut data, c, h, w, rng)?;
        }
        if let Some((m, s)) = &self.norm {
            normalize_in_place(&mut data, c, h * w, m, s)?;
        }
        let labels = idx
            .iter()
            .filter_map(|&i| ds.labels.get(i).copied())
            .collect();
        Ok((Tensor::from_vec(data, [idx.len(), c, h, w])?, labels))
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(Tensor, Vec<usize>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let end = (self.pos + self.batch_size).min(self.order.len());
        if self.pos >= end || (self.drop_last && end - self.pos < self.batch_size) {
            return None;
        }
        let idx: Vec<usize> = self.order.get(self.pos..end)?.to_vec();
        self.pos = end;
        Some(self.make(&idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..c * h * w).map(|i| i as f32).collect()
    }

    #[test]
    fn normalize_and_inverse() {
        // Two images, 3 channels, 2×2.
        let mut d: Vec<f32> = (0..24).map(|i| i as f32 / 24.0).collect();
        let orig = d.clone();
        normalize_in_place(&mut d, 3, 4, &CIFAR_MEAN, &CIFAR_STD).unwrap();
        // Element 13 = image 1, channel 0, pixel 1.
        assert!((d[13] - (13.0 / 24.0 - 0.485) / 0.229).abs() < 1e-6);
        // Element 9 = image 0, channel 2.
        assert!((d[9] - (9.0 / 24.0 - 0.406) / 0.225).abs() < 1e-6);
        denormalize_in_place(&mut d, 3, 4, &CIFAR_MEAN, &CIFAR_STD).unwrap();
        for (a, b) in d.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-6);
        }
        // MNIST: (x − 0.5)/0.5 maps [0,1] to [−1,1].
        let t = Tensor::from_vec(vec![0.0, 0.5, 1.0, 0.25], [1, 1, 2, 2]).unwrap();
        let n = normalize(&t, &MNIST_MEAN, &MNIST_STD).unwrap();
        assert_eq!(n.to_vec().unwrap(), vec![-1.0, 0.0, 1.0, -0.5]);
        assert_eq!(
            denormalize(&n, &MNIST_MEAN, &MNIST_STD)
                .unwrap()
                .to_vec()
                .unwrap(),
            t.to_vec().unwrap()
        );
        // Bad parameters.
        assert!(normalize(&t, &CIFAR_MEAN, &CIFAR_STD).is_err());
        assert!(normalize(&t, &[0.5], &[0.0]).is_err());
        assert!(normalize(&t.requires_grad(), &[0.5], &[0.5]).is_err());
        let e = normalize_in_place(&mut [0.0; 5], 1, 4, &[0.0], &[1.0]).unwrap_err();
        assert!(e.to_string().contains("5 values"), "{e}");
    }

    #[test]
    fn hflip_mirrors_rows() {
        let mut img = ramp(2, 2, 3);
        hflip(&mut img, 2, 2, 3).unwrap();
        assert_eq!(img, vec![2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
        hflip(&mut img, 2, 2, 3).unwrap();
        assert_eq!(img, ramp(2, 2, 3));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let flips = (0..1000)
            .filter(|_| random_hflip(&mut img, 2, 2, 3, &mut rng).unwrap())
            .count();
        assert!((430..570).contains(&flips), "{flips} flips in 1000");
        assert!(hflip(&mut img, 2, 2, 2).is_err());
    }

    #[test]
    fn affine_shift_and_rotation() {
        let (c, h, w) = (2, 4, 5);
        let src = ramp(c, h, w);
        let at = |v: &[f32], ch: usize, y: usize, x: usize| v[ch * h * w + y * w + x];
        let mut dst = vec![0.0; src.len()];
        // Identity.
        affine(&src, c, h, w, 0.0, 0.0, 0.0, &mut dst).unwrap();
        assert_eq!(dst, src);
        // Integer shift right 1, up 2: exact copy, zeros come in.
        affine(&src, c, h, w, 0.0, 1.0, -2.0, &mut dst).unwrap();
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let want = if x >= 1 && y + 2 < h {
                        at(&src, ch, y + 2, x - 1)
                    } else {
                        0.0
                    };
                    assert_eq!(at(&dst, ch, y, x), want, "ch {ch} y {y} x {x}");
                }
            }
        }
        // Half-pixel shift: the average of horizontal neighbours.
        affine(&src, c, h, w, 0.0, 0.5, 0.0, &mut dst).unwrap();
        assert!((at(&dst, 1, 2, 3) - (at(&src, 1, 2, 2) + at(&src, 1, 2, 3)) / 2.0).abs() < 1e-5);
        // 90° counter-clockwise on a square image is an exact index rotation:
        // the top-right corner moves to the top-left.
        let n = 5;
        let sq = ramp(1, n, n);
        let mut rot = vec![0.0; n * n];
        affine(&sq, 1, n, n, 90.0, 0.0, 0.0, &mut rot).unwrap();
        for y in 0..n {
            for x in 0..n {
                // dst(y, x) = src(x, n-1-y)
                let want = sq[x * n + (n - 1 - y)];
                assert!(
                    (rot[y * n + x] - want).abs() < 1e-4,
                    "y {y} x {x}: {} vs {want}",
                    rot[y * n + x]
                );
            }
        }
        // Random affine stays within bounds and changes the image.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut img = sq.clone();
        random_affine(&mut img, 1, n, n, 5.0, 2.0, &mut rng).unwrap();
        assert_ne!(img, sq);
        assert!(img.iter().all(|v| (0.0..=24.0 + 1e-4).contains(v)));
        assert!(random_affine(&mut img, 1, n, n, -1.0, 2.0, &mut rng).is_err());
    }

    /// The batch path must draw exactly what image-by-image flips and
    /// affines drew before it, or every trained model and recorded result
    /// would shift: compared bit for bit, on a pool of several threads.
    #[test]
    fn augment_batch_equals_image_by_image_draws() {
        let (c, h, w) = (3, 9, 7);
        let batch: Vec<f32> = (0..13 * c * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for aug in [
            Augment::cifar(),
            Augment::digits(),
            Augment {
                hflip: true,
                max_rotate_deg: 0.0,
                max_translate: 1.5,
            },
        ] {
            let mut by_image = batch.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            for img in by_image.chunks_mut(c * h * w) {
                if aug.hflip {
                    random_hflip(img, c, h, w, &mut rng).unwrap();
                }
                random_affine(
                    img,
                    c,
                    h,
                    w,
                    aug.max_rotate_deg,
                    aug.max_translate,
                    &mut rng,
                )
                .unwrap();
            }
            let after_by_image: u64 = rng.gen();

            let mut batched = batch.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            pool.install(|| aug.apply_batch(&mut batched, c, h, w, &mut rng))
                .unwrap();
            assert_eq!(batched, by_image, "{aug:?}");
            assert_eq!(rng.gen::<u64>(), after_by_image, "{aug:?}: draws consumed");
            assert_ne!(batched, batch, "{aug:?} changed nothing");

            let mut one = batch[..c * h * w].to_vec();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            aug.apply(&mut one, c, h, w, &mut rng).unwrap();
            assert_eq!(one, by_image[..c * h * w]);
        }
        let e = Augment::cifar()
            .apply_batch(
                &mut vec![0.0; 2 * c * h * w + 1],
                c,
                h,
                w,
                &mut ChaCha8Rng::seed_from_u64(1),
            )
            .unwrap_err();
        assert!(e.to_string().contains("3×9×7"), "{e}");
        let bad = Augment {
            hflip: false,
            max_rotate_deg: f32::NAN,
            max_translate: 1.0,
        };
        let mut img = batch.clone();
        assert!(bad
            .apply_batch(&mut img, c, h, w, &mut ChaCha8Rng::seed_from_u64(1))
            .is_err());
        assert_eq!(img, batch, "a refused augmentation leaves the images alone");
    }

    #[test]
    fn shuffling_is_deterministic_permutation() {
        let a = shuffled_indices(1000, 42);
        assert_eq!(a, shuffled_indices(1000, 42));
        assert_ne!(a, shuffled_indices(1000, 43));
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert!(shuffled_indices(0, 1).is_empty());
    }

    fn tiny_dataset(n: usize) -> Dataset {
        let (c, h, w) = (3, 2, 2);
        Dataset {
            images: (0..n * c * h * w).map(|i| (i % 97) as f32 / 97.0).collect(),
            labels: (0..n).map(|i| i % 3).collect(),
            n,
            channels: c,
            height: h,
            width: w,
            classes: vec!["a".into(), "b".into(), "c".into()],
            source: "test".into(),
        }
    }

    #[test]
    fn batch_iterator_covers_everything() {
        let ds = tiny_dataset(10);
        let it = BatchIter::new(&ds, 4).unwrap();
        assert_eq!(it.num_batches(), 3);
        let batches: Vec<_> = it.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].0.dims(), &[4, 3, 2, 2]);
        assert_eq!(batches[2].0.dims(), &[2, 3, 2, 2]);
        assert_eq!(batches[2].1, vec![2, 0]);
        assert_eq!(
            batches[1].0.to_vec().unwrap(),
            ds.images[4 * 12..8 * 12].to_vec()
        );

        // Shuffled: every sample exactly once, in shuffled_indices order.
        let order = shuffled_indices(10, 5);
        let mut seen = Vec::new();
        for b in BatchIter::new(&ds, 3).unwrap().shuffled(5) {
            let (x, l) = b.unwrap();
            let x = x.to_vec().unwrap();
            for (k, img) in x.chunks(12).enumerate() {
                let i = order[seen.len()];
                assert_eq!(img, ds.image(i));
                assert_eq!(l[k], ds.labels[i]);
                seen.push(i);
            }
        }
        assert_eq!(seen, order);

        // drop_last, normalisation, augmentation.
        let it = BatchIter::new(&ds, 4)
            .unwrap()
            .drop_last(true)
            .normalize(&CIFAR_MEAN, &CIFAR_STD)
            .unwrap();
        assert_eq!(it.num_batches(), 2);
        let b: Vec<_> = it.map(|b| b.unwrap()).collect();
        assert_eq!(b.len(), 2);
        let v = b[0].0.to_vec().unwrap();
        assert!((v[4] - (ds.images[4] - 0.456) / 0.224).abs() < 1e-6);
        let aug = |seed| {
            BatchIter::new(&ds, 10)
                .unwrap()
                .augment(Augment::cifar(), seed)
                .next()
                .unwrap()
                .unwrap()
                .0
                .to_vec()
                .unwrap()
        };
        assert_eq!(aug(1), aug(1));
        assert_ne!(aug(1), aug(2));
        assert_ne!(aug(1), ds.images);

        assert!(BatchIter::new(&ds, 0).is_err());
        assert!(BatchIter::new(&ds, 2)
            .unwrap()
            .with_order(vec![1, 10])
            .is_err());
        assert!(BatchIter::new(&ds, 2)
            .unwrap()
            .normalize(&[0.5], &[0.5])
            .is_err());
    }
}
