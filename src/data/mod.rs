//! Datasets: MNIST / Fashion-MNIST (IDX), CIFAR-10 (binary records or a
//! JPEG image folder inside a `.tar.gz`), any `<class>/<file>` image folder,
//! and the embedded procedural "synthetic-digits" — all loaded into one
//! in-memory [`Dataset`] of NCHW f32 images in \[0, 1\].
//!
//! Files are found under a data root: the `--data` flag, else the
//! `SPLITINV_DATA` environment variable ([`data_root`]). The expected layout:
//!
//! ```text
//! <root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
//! <root>/fashion-mnist/  (same names)
//! <root>/cifar10/data_batch_{1..5}.bin, test_batch.bin        (official binary release)
//! <root>/cifar10/test_batch_exact1000.bin                     (first 1000 test images)
//! <root>/cifar10/cifar10-jpeg.tar.gz  with train/<class>/*.jpg, test/<class>/*.jpg
//! ```

pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod synthetic;
pub mod transforms;

pub use cifar::CIFAR10_CLASSES;
pub use image_folder::{load_image_folder, load_image_tar_gz};
pub use synthetic::synthetic_digits;
pub use transforms::{
    default_normalization, shuffled_indices, Augment, AugmentDraw, BatchIter, CIFAR_MEAN,
    CIFAR_STD, MNIST_MEAN, MNIST_STD,
};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Images and labels in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n·channels·height·width` values in \[0, 1\], NCHW (each image CHW).
    pub images: Vec<f32>,
    /// One label per image, each `< classes.len()`.
    pub labels: Vec<usize>,
    /// Number of images.
    pub n: usize,
    /// Channels per image (1 grayscale, 3 RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Where the data came from (for reports).
    pub source: String,
}

impl Dataset {
    /// The mean image, `C·H·W` values (zeros for an empty set).
    pub fn mean_image(&self) -> Vec<f32> {
        let size = self.image_size();
        let mut sum = vec![0f64; size];
        for img in self.images.chunks_exact(size.max(1)) {
            for (s, &p) in sum.iter_mut().zip(img) {
                *s += p as f64;
            }
        }
        let n = self.len().max(1) as f64;
        sum.into_iter().map(|s| (s / n) as f32).collect()
    }

    /// The per-pixel median image, `C·H·W` values (zeros for an empty
    /// set): the most typical value of each pixel, which for digit-like data
    /// is the background, where the mean is a grey blur of all strokes.
    pub fn median_image(&self) -> Vec<f32> {
        let size = self.image_size();
        if self.is_empty() || size == 0 {
            return vec![0.0; size];
        }
        let mut column = Vec::with_capacity(self.len());
        (0..size)
            .map(|p| {
                column.clear();
                column.extend(self.images.chunks_exact(size).map(|img| img[p]));
                let mid = column.len() / 2;
                let (_, m, _) = column.select_nth_unstable_by(mid, f32::total_cmp);
                *m
            })
            .collect()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Values per image (`channels·height·width`).
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[channels, height, width]`.
    pub fn image_dims(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Image `i` (CHW). An index out of range gives an empty slice; use
    /// [`Dataset::try_image`] to get an error instead.
    pub fn image(&self, i: usize) -> &[f32] {
        self.try_image(i).unwrap_or(&[])
    }

    /// Image `i` (CHW), or an error naming the index and the length.
    pub fn try_image(&self, i: usize) -> Result<&[f32]> {
        let s = self.image_size();
        i.checked_mul(s)
            .and_then(|a| self.images.get(a..a.checked_add(s)?))
            .filter(|_| i < self.n)
            .ok_or_else(|| self.out_of_range(i))
    }

    fn out_of_range(&self, i: usize) -> Error {
        Error::invalid(
            "dataset",
            format!(
                "index {i} out of range for {} images ({})",
                self.n, self.source
            ),
        )
    }

    /// The images at `idx`, concatenated (NCHW values).
    pub fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(idx.len() * self.image_size());
        for &i in idx {
            out.extend_from_slice(self.try_image(i)?);
        }
        Ok(out)
    }

    /// A new dataset of the samples at `idx`, in that order (repeats allowed).
    pub fn subset(&self, idx: &[usize]) -> Result<Dataset> {
        let images = self.gather(idx)?;
        let labels = idx
            .iter()
            .map(|&i| {
                self.labels
                    .get(i)
                    .copied()
                    .ok_or_else(|| self.out_of_range(i))
            })
            .collect::<Result<Vec<_>>>()?;
        let source = format!("{} [subset of {}]", self.source, idx.len());
        Ok(self.with_samples(images, labels, source))
    }

    /// A dataset of these images and labels with this one's shape and classes.
    fn with_samples(&self, images: Vec<f32>, labels: Vec<usize>, source: String) -> Dataset {
        Dataset {
            images,
            n: labels.len(),
            labels,
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
            source,
        }
    }

    /// This dataset followed by `other` (same image shape and classes).
    pub fn concat(&self, other: &Dataset) -> Result<Dataset> {
        if self.image_dims() != other.image_dims() || self.classes != other.classes {
            return Err(Error::invalid(
                "concat",
                format!(
                    "{} ({:?}, {} classes) and {} ({:?}, {} classes) differ in image shape or classes",
                    self.source,
                    self.image_dims(),
                    self.classes.len(),
                    other.source,
                    other.image_dims(),
                    other.classes.len()
                ),
            ));
        }
        let mut images = self.images.clone();
        images.extend_from_slice(&other.images);
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        let source = format!("{} + {}", self.source, other.source);
        Ok(self.with_samples(images, labels, source))
    }

    /// Keeps the first `n` samples (all if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.n);
        self.images.truncate(n * self.image_size());
        self.labels.truncate(n);
        self.n = n;
    }

    /// The index of the first sample of each class, in class order; classes
    /// with no sample are left out. (The paper attacks exactly these test images.)
    pub fn first_of_each_class(&self) -> Vec<usize> {
        (0..self.classes.len())
            .filter_map(|c| self.labels.iter().position(|&l| l == c))
            .collect()
    }

    /// How many samples each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l) {
                *c += 1;
            }
        }
        counts
    }

    /// The samples at `idx` as a `[B,C,H,W]` tensor (pixels in \[0, 1\], not
    /// normalised) and their labels.
    pub fn batch(&self, idx: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        if idx.is_empty() {
            return Err(Error::invalid("dataset batch", "no indices given"));
        }
        let (c, h, w) = (self.channels, self.height, self.width);
        let data = self.gather(idx)?;
        let labels = idx
            .iter()
            .map(|&i| {
                self.labels
                    .get(i)
                    .copied()
                    .ok_or_else(|| self.out_of_range(i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::from_vec(data, [idx.len(), c, h, w])?, labels))
    }

    /// A batch iterator over this dataset (see [`BatchIter`]).
    pub fn batches(&self, batch_size: usize) -> Result<BatchIter<'_>> {
        BatchIter::new(self, batch_size)
    }

    /// Checks the invariants: sizes agree, labels are in range, values in \[0, 1\].
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Error::invalid("dataset", format!("{}: {msg}", self.source));
        if self.images.len() != self.n * self.image_size() {
            return Err(bad(format!(
                "{} values for {} images of {:?}",
                self.images.len(),
                self.n,
                self.image_dims()
            )));
        }
        if self.labels.len() != self.n {
            return Err(bad(format!(
                "{} labels for {} images",
                self.labels.len(),
                self.n
            )));
        }
        if let Some((i, l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= self.classes.len())
        {
            return Err(bad(format!(
                "label {l} of sample {i} is not below {} classes",
                self.classes.len()
            )));
        }
        if let Some(k) = self.images.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(bad(format!(
                "value {} at sample {} is outside [0,1]",
                self.images.get(k).copied().unwrap_or(f32::NAN),
                k / self.image_size().max(1)
            )));
        }
        Ok(())
    }
}

/// A dataset that [`load`] knows how to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetName {
    /// MNIST handwritten digits, `<root>/mnist/`.
    Mnist,
    /// Fashion-MNIST, `<root>/fashion-mnist/`.
    FashionMnist,
    /// CIFAR-10, `<root>/cifar10/`.
    Cifar10,
    /// The embedded procedural digits (no files needed).
    SyntheticDigits,
    /// An image folder (`<class>/<file>` layout) or a `.tar.gz` of one; with
    /// `train/` and `test/` subtrees, the split picks one.
    Folder(PathBuf),
}

/// The names [`DatasetName::from_str`] accepts, for messages.
pub const DATASET_NAMES: &str = "mnist, fashion-mnist, cifar10, synthetic-digits, folder:PATH";

impl FromStr for DatasetName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_prefix("folder:") {
            if p.is_empty() {
                return Err(Error::invalid(
                    "dataset",
                    "folder: needs a path, e.g. folder:/data/my-images",
                ));
            }
            return Ok(DatasetName::Folder(PathBuf::from(p)));
        }
        match s.to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DatasetName::FashionMnist),
            "cifar10" | "cifar-10" | "cifar" => Ok(DatasetName::Cifar10),
            "synthetic-digits" | "synthetic_digits" | "synthetic" => {
                Ok(DatasetName::SyntheticDigits)
            }
            _ => Err(Error::UnknownName {
                kind: "dataset",
                name: s.to_string(),
                expected: DATASET_NAMES.to_string(),
            }),
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetName::Mnist => write!(f, "mnist"),
            DatasetName::FashionMnist => write!(f, "fashion-mnist"),
            DatasetName::Cifar10 => write!(f, "cifar10"),
            DatasetName::SyntheticDigits => write!(f, "synthetic-digits"),
            DatasetName::Folder(p) => write!(f, "folder:{}", p.display()),
        }
    }
}

/// Which part of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set.
    Train,
    /// The test set.
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(Error::UnknownName {
                kind: "split",
                name: s.to_string(),
                expected: "train, test".into(),
            }),
        }
    }
}

/// The data root: the `--data` flag if given, else `$SPLITINV_DATA` (if set
/// and non-empty), else `None`.
pub fn data_root(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("SPLITINV_DATA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads a dataset split. `root` is the data root (`None`: `$SPLITINV_DATA`;
/// not needed for synthetic-digits). `limit` keeps at most that many
/// samples: the first ones for MNIST/CIFAR binary files (already in mixed
/// class order), a class-balanced subset for image folders (which are
/// sorted by class). Synthetic digits: `limit` samples (default 60 000
/// train / 10 000 test).
///
/// A missing dataset is an error that lists every path looked at and what
/// was expected there.
pub fn load(
    name: &DatasetName,
    split: Split,
    root: Option<&Path>,
    limit: Option<usize>,
) -> Result<Dataset> {
    if limit == Some(0) {
        return Err(Error::invalid(
            "load",
            "limit 0; expected at least 1 sample",
        ));
    }
    if let DatasetName::SyntheticDigits = name {
        let (n, seed) = match split {
            Split::Train => (60_000, synthetic::TRAIN_SEED),
            Split::Test => (10_000, synthetic::TEST_SEED),
        };
        // The split holds n images, as a file would: --limit takes the
        // first of them and never draws more (1e8 would be 313 GB).
        let mut ds = synthetic_digits(limit.map_or(n, |l| l.min(n)), seed);
        ds.source = format!("synthetic-digits {split} (generated)");
        return Ok(ds);
    }
    if let DatasetName::Folder(p) = name {
        // The path is taken as given (relative to the working directory),
        // not relative to the data root.
        return load_folder(p, split, limit);
    }
    let root = match root.map(Path::to_path_buf).or_else(|| data_root(None)) {
        Some(r) => r,
        None => {
            return Err(Error::Msg(format!(
                "dataset '{name}' ({split} split) needs a data folder: pass --data DIR or set \
                 SPLITINV_DATA=DIR, where DIR contains {}. The embedded 'synthetic-digits' \
                 dataset needs no files.",
                expected_layout(name, split)
            )))
        }
    };
    let ds = match name {
        DatasetName::Mnist => load_idx_pair(&root, "mnist", split, limit, digit_classes()),
        DatasetName::FashionMnist => load_idx_pair(
            &root,
            "fashion-mnist",
            split,
            limit,
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        DatasetName::Cifar10 => load_cifar10(&root, split, limit),
        // Handled above, without a data root.
        DatasetName::SyntheticDigits | DatasetName::Folder(_) => Err(Error::Msg(format!(
            "internal: dataset '{name}' reached the file loaders"
        ))),
    }?;
    if ds.is_empty() {
        // An IDX header may declare 0 images; every use of a split needs one.
        return Err(Error::invalid(
            "load",
            format!("{} holds no samples; expected at least 1", ds.source),
        ));
    }
    Ok(ds)
}

/// The CIFAR-10 test images of the JPEG archive (`<root>/cifar10/cifar10-jpeg.tar.gz`,
/// `test/<class>/NNNN.jpg`, NNNN = the image's rank within its class in the
/// official order) that are *not* among `exact`, the first `exact.len()`
/// official test images: per class, the ranks from that class's count in
/// `exact` on. A same-distribution set disjoint from the training set and
/// from every exactly stored test image (9000 images beside
/// `test_batch_exact1000.bin`). `None` when the archive is absent or `exact`
/// is already the whole test set.
pub fn cifar10_jpeg_test_beyond(root: &Path, exact: &Dataset) -> Result<Option<Dataset>> {
    let tgz = root.join("cifar10").join("cifar10-jpeg.tar.gz");
    if !tgz.is_file() || exact.len() >= 10_000 {
        return Ok(None);
    }
    let jpeg = load_image_tar_gz(&tgz, "test/", Some(3), None)?;
    if jpeg.classes != exact.classes {
        return Err(Error::Msg(format!(
            "{}: test classes {:?}, expected the CIFAR-10 classes {:?}",
            tgz.display(),
            jpeg.classes,
            exact.classes
        )));
    }
    // The archive lists each class's files in rank order.
    let skip = exact.class_counts();
    let mut seen = vec![0usize; jpeg.classes.len()];
    let mut keep = Vec::new();
    for (i, &l) in jpeg.labels.iter().enumerate() {
        if let (Some(rank), Some(&s)) = (seen.get_mut(l), skip.get(l)) {
            if *rank >= s {
                keep.push(i);
            }
            *rank += 1;
        }
    }
    let mut ds = jpeg.subset(&keep)?;
    ds.source = format!(
        "{} test images beyond the first {} ({} images)",
        tgz.display(),
        exact.len(),
        keep.len()
    );
    Ok(Some(ds))
}

fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

fn expected_layout(name: &DatasetName, split: Split) -> String {
    let pre = if split == Split::Train {
        "train"
    } else {
        "t10k"
    };
    match name {
        DatasetName::Mnist | DatasetName::FashionMnist => {
            format!("{name}/{pre}-images-idx3-ubyte[.gz] and {name}/{pre}-labels-idx1-ubyte[.gz]")
        }
        DatasetName::Cifar10 => match split {
            Split::Train => "cifar10/data_batch_1.bin .. data_batch_5.bin, or \
                             cifar10/cifar10-jpeg.tar.gz (with train/<class>/*.jpg)"
                .into(),
            Split::Test => "cifar10/test_batch_exact1000.bin, cifar10/test_batch.bin, or \
                            cifar10/cifar10-jpeg.tar.gz (with test/<class>/*.jpg)"
                .into(),
        },
        DatasetName::Folder(p) => format!("{} (a <class>/<file> image folder)", p.display()),
        DatasetName::SyntheticDigits => "nothing".into(),
    }
}

fn not_found(what: &str, split: Split, looked: &[PathBuf], expected: &str) -> Error {
    let list: Vec<String> = looked
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect();
    Error::Msg(format!(
        "dataset '{what}' ({split} split) not found. Looked for:\n{}\nExpected {expected}. \
         Point --data (or the SPLITINV_DATA environment variable) at the folder that holds it.",
        list.join("\n")
    ))
}

/// The first existing path among `base` and `base.gz`.
fn raw_or_gz(dir: &Path, base: &str) -> (Option<PathBuf>, [PathBuf; 2]) {
    let cands = [dir.join(base), dir.join(format!("{base}.gz"))];
    let found = cands.iter().find(|p| p.is_file()).cloned();
    (found, cands)
}

fn load_idx_pair(
    root: &Path,
    sub: &str,
    split: Split,
    limit: Option<usize>,
    classes: Vec<String>,
) -> Result<Dataset> {
    let dir = root.join(sub);
    let pre = if split == Split::Train {
        "train"
    } else {
        "t10k"
    };
    let (img, img_c) = raw_or_gz(&dir, &format!("{pre}-images-idx3-ubyte"));
    let (lab, lab_c) = raw_or_gz(&dir, &format!("{pre}-labels-idx1-ubyte"));
    let (Some(img), Some(lab)) = (img, lab) else {
        let looked: Vec<PathBuf> = img_c.into_iter().chain(lab_c).collect();
        return Err(not_found(
            sub,
            split,
            &looked,
            "an IDX images file and an IDX labels file (raw or .gz)",
        ));
    };
    let (n, h, w, bytes) = idx::read_idx_images(&img)?;
    let mut labels = idx::read_idx_labels(&lab, classes.len())?;
    if labels.len() != n {
        return Err(Error::Msg(format!(
            "image/label count mismatch: {} holds {n} images but {} holds {} labels",
            img.display(),
            lab.display(),
            labels.len()
        )));
    }
    let keep = limit.unwrap_or(n).min(n);
    labels.truncate(keep);
    let kept = bytes.get(..keep * h * w).unwrap_or_default();
    // Four bytes a pixel from one: a small .gz can declare (and hold)
    // millions of images, and an allocation that fails would abort.
    let mut images = Vec::new();
    images
        .try_reserve_exact(kept.len())
        .map_err(|_| Error::BadData {
            path: img.clone(),
            msg: format!(
                "{keep} images of {h}×{w} need {:.1} GiB as 32-bit floats, more memory than \
                 can be allocated",
                kept.len() as f64 * 4.0 / (1u64 << 30) as f64
            ),
        })?;
    images.extend(kept.iter().map(|&b| b as f32 / 255.0));
    Ok(Dataset {
        images,
        labels,
        n: keep,
        channels: 1,
        height: h,
        width: w,
        classes,
        source: format!("{sub} {split} ({})", img.display()),
    })
}

fn load_cifar10(root: &Path, split: Split, limit: Option<usize>) -> Result<Dataset> {
    let dir = root.join("cifar10");
    let mut looked = Vec::new();
    let from_bins = |paths: Vec<PathBuf>, limit: Option<usize>| -> Result<Dataset> {
        let (images, labels) = cifar::read_cifar_files(&paths)?;
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let mut ds = Dataset {
            n: labels.len(),
            images,
            labels,
            channels: 3,
            height: cifar::CIFAR_SIDE,
            width: cifar::CIFAR_SIDE,
            classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            source: format!("cifar10 {split} ({})", names.join(", ")),
        };
        if let Some(l) = limit {
            ds.truncate(l);
        }
        Ok(ds)
    };
    let bin_dirs = [dir.clone(), dir.join("cifar-10-batches-bin")];
    match split {
        Split::Train => {
            for d in &bin_dirs {
                let batches: Vec<PathBuf> = (1..=5)
                    .map(|i| d.join(format!("data_batch_{i}.bin")))
                    .collect();
                if batches.iter().any(|p| p.is_file()) {
                    if let Some(missing) = batches.iter().find(|p| !p.is_file()) {
                        return Err(Error::Msg(format!(
                            "CIFAR-10 training batches in {} are incomplete: {} is missing \
                             (expected data_batch_1.bin .. data_batch_5.bin)",
                            d.display(),
                            missing.display()
                        )));
                    }
                    return from_bins(batches, limit);
                }
                looked.push(d.join("data_batch_{1..5}.bin"));
            }
        }
        Split::Test => {
            for d in &bin_dirs {
                for f in ["test_batch_exact1000.bin", "test_batch.bin"] {
                    let p = d.join(f);
                    if p.is_file() {
                        return from_bins(vec![p], limit);
                    }
                    looked.push(p);
                }
            }
        }
    }
    let tgz = dir.join("cifar10-jpeg.tar.gz");
    let ds = if tgz.is_file() {
        load_image_tar_gz(&tgz, &format!("{split}/"), Some(3), limit)?
    } else {
        looked.push(tgz);
        let folder = dir.join(split.as_str());
        if !folder.is_dir() {
            looked.push(folder.join("<class>/*.jpg|png"));
            return Err(not_found(
                "cifar10",
                split,
                &looked,
                &expected_layout(&DatasetName::Cifar10, split),
            ));
        }
        load_image_folder(&folder, Some(3), limit)?
    };
    if ds.classes != CIFAR10_CLASSES {
        return Err(Error::BadData {
            path: PathBuf::from(&ds.source),
            msg: format!(
                "CIFAR-10 class folders are {:?}, expected {:?}",
                ds.classes, CIFAR10_CLASSES
            ),
        });
    }
    if (ds.channels, ds.height, ds.width) != (3, 32, 32) {
        return Err(Error::BadData {
            path: PathBuf::from(&ds.source),
            msg: format!(
                "CIFAR-10 images are {}×{}×{}, expected 3×32×32",
                ds.channels, ds.height, ds.width
            ),
        });
    }
    Ok(ds)
}

fn is_tar_gz(p: &Path) -> bool {
    let s = p.to_string_lossy().to_ascii_lowercase();
    s.ends_with(".tar.gz") || s.ends_with(".tgz")
}

fn load_folder(p: &Path, split: Split, limit: Option<usize>) -> Result<Dataset> {
    if p.is_dir() {
        let sub = p.join(split.as_str());
        let dir = if sub.is_dir() { sub } else { p.to_path_buf() };
        return load_image_folder(&dir, None, limit);
    }
    if p.is_file() && is_tar_gz(p) {
        return image_folder::load_tar_gz_split(p, split.as_str(), None, limit);
    }
    Err(not_found(
        &format!("folder:{}", p.display()),
        split,
        &[p.to_path_buf()],
        "a directory of <class>/<file>.png|jpg images (optionally under train/ and test/), \
         or a .tar.gz of one",
    ))
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir, removed with
    /// everything in it when the guard drops (also when the test fails),
    /// so test runs do not pile up directories in /tmp.
    pub struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempDir {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Creates a [`TempDir`] whose name starts with `name`.
    pub fn temp_dir(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "splitinv-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_dir;
    use super::*;

    #[test]
    fn dataset_names_parse_and_unknown_lists_choices() {
        assert_eq!("mnist".parse::<DatasetName>().unwrap(), DatasetName::Mnist);
        assert_eq!(
            "fashion-mnist".parse::<DatasetName>().unwrap(),
            DatasetName::FashionMnist
        );
        assert_eq!(
            "CIFAR10".parse::<DatasetName>().unwrap(),
            DatasetName::Cifar10
        );
        assert_eq!(
            "synthetic-digits".parse::<DatasetName>().unwrap(),
            DatasetName::SyntheticDigits
        );
        assert_eq!(
            "folder:/x/y".parse::<DatasetName>().unwrap(),
            DatasetName::Folder("/x/y".into())
        );
        for n in [
            "mnist",
            "fashion-mnist",
            "cifar10",
            "synthetic-digits",
            "folder:/a",
        ] {
            assert_eq!(n.parse::<DatasetName>().unwrap().to_string(), n);
        }
        let e = "imagenet".parse::<DatasetName>().unwrap_err();
        assert!(matches!(e, Error::UnknownName { .. }));
        let e = e.to_string();
        assert!(e.contains("'imagenet'") && e.contains(DATASET_NAMES), "{e}");
        assert!("folder:".parse::<DatasetName>().is_err());
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        assert!("val".parse::<Split>().is_err());
    }

    #[test]
    fn median_image_is_the_middle_value_of_each_pixel() {
        // Three 1×1×2 images: pixel 0 takes 0, 0, 0.9 (median 0, mean 0.3);
        // pixel 1 takes 0.2, 0.8, 0.5 (median 0.5).
        let ds = Dataset {
            images: vec![0.0, 0.2, 0.0, 0.8, 0.9, 0.5],
            labels: vec![0, 0, 0],
            n: 3,
            channels: 1,
            height: 1,
            width: 2,
            classes: vec!["a".into()],
            source: "test".into(),
        };
        assert_eq!(ds.median_image(), vec![0.0, 0.5]);
        let mean = ds.mean_image();
        assert!((mean[0] - 0.3).abs() < 1e-6 && (mean[1] - 0.5).abs() < 1e-6);
        let mut empty = ds.clone();
        empty.truncate(0);
        assert_eq!(empty.median_image(), vec![0.0, 0.0]);
    }

    #[test]
    fn dataset_helpers() {
        let ds = synthetic_digits(25, 3);
        ds.validate().unwrap();
        assert_eq!(ds.first_of_each_class(), (0..10).collect::<Vec<_>>());
        assert_eq!(ds.class_counts(), vec![3, 3, 3, 3, 3, 2, 2, 2, 2, 2]);
        let s = ds.subset(&[12, 4, 12]).unwrap();
        assert_eq!(s.labels, vec![2, 4, 2]);
        assert_eq!(s.image(1), ds.image(4));
        assert_eq!(s.first_of_each_class(), vec![0, 1]);
        let (x, l) = ds.batch(&[7, 0]).unwrap();
        assert_eq!(x.dims(), &[2, 1, 28, 28]);
        assert_eq!(l, vec![7, 0]);
        assert_eq!(&x.to_vec().unwrap()[..784], ds.image(7));
        let e = ds.subset(&[25]).unwrap_err().to_string();
        assert!(e.contains("index 25 out of range for 25"), "{e}");
        assert!(ds.batch(&[]).is_err());
        assert!(ds.image(25).is_empty());
        let mut t = ds.clone();
        t.truncate(5);
        assert_eq!((t.len(), t.images.len()), (5, 5 * 784));
    }

    #[test]
    fn missing_dataset_says_where_it_looked() {
        let root = temp_dir("missing");
        let e = load(&DatasetName::Mnist, Split::Test, Some(&root), None)
            .unwrap_err()
            .to_string();
        let want = root.join("mnist").join("t10k-images-idx3-ubyte.gz");
        assert!(e.contains(&want.display().to_string()), "{e}");
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("SPLITINV_DATA"),
            "{e}"
        );
        let e = load(&DatasetName::Cifar10, Split::Train, Some(&root), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cifar10-jpeg.tar.gz") && e.contains("data_batch_"),
            "{e}"
        );
        assert!(e.contains("--data"), "{e}");
        let e = load(
            &DatasetName::Folder(root.join("nope")),
            Split::Train,
            Some(&root),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope"), "{e}");
        // The synthetic set needs no root.
        let ds = load(&DatasetName::SyntheticDigits, Split::Test, None, Some(20)).unwrap();
        assert_eq!(ds.len(), 20);
        assert!(load(&DatasetName::SyntheticDigits, Split::Test, None, Some(0)).is_err());
        // A limit takes the first images of the split, never more than it has.
        let all = load(
            &DatasetName::SyntheticDigits,
            Split::Test,
            None,
            Some(10_001),
        )
        .unwrap();
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn mnist_layout_and_count_mismatch() {
        let root = temp_dir("mnist_layout");
        let dir = root.join("mnist");
        std::fs::create_dir_all(&dir).unwrap();
        let imgs: Vec<u8> = (0..3 * 4 * 4).map(|i| (i * 5) as u8).collect();
        idx::write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[3, 4, 4], &imgs).unwrap();
        idx::write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[3], &[7, 2, 1]).unwrap();
        let ds = load(&DatasetName::Mnist, Split::Test, Some(&root), None).unwrap();
        assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (3, 1, 4, 4));
        assert_eq!(ds.labels, vec![7, 2, 1]);
        assert_eq!(ds.image(1)[0], 80.0 / 255.0);
        let two = load(&DatasetName::Mnist, Split::Test, Some(&root), Some(2)).unwrap();
        assert_eq!((two.len(), two.images.len()), (2, 32));
        idx::write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[2], &[7, 2]).unwrap();
        let e = load(&DatasetName::Mnist, Split::Test, Some(&root), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte.gz holds 3 images")
                && e.contains("t10k-labels-idx1-ubyte holds 2 labels"),
            "{e}"
        );
        // A header of 0 images (and 0 labels) is consistent but useless:
        // refused naming the file, not later as "the evaluation set is empty".
        idx::write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[0, 4, 4], &[]).unwrap();
        idx::write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[0], &[]).unwrap();
        let e = load(&DatasetName::Mnist, Split::Test, Some(&root), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte.gz) holds no samples"),
            "{e}"
        );
    }

    #[test]
    fn folder_dataset_picks_split_subfolder() {
        use image::{Rgb, RgbImage};
        let root = temp_dir("folder_split");
        for (split, n) in [("train", 3), ("test", 1)] {
            for class in ["a", "b"] {
                let d = root.join(split).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for i in 0..n {
                    RgbImage::from_pixel(4, 4, Rgb([10, 20, 30]))
                        .save(d.join(format!("{i}.png")))
                        .unwrap();
                }
            }
        }
        let name = DatasetName::Folder(root.to_path_buf());
        let tr = load(&name, Split::Train, None, None).unwrap();
        let te = load(&name, Split::Test, None, None).unwrap();
        assert_eq!((tr.len(), te.len()), (6, 2));
        assert_eq!(tr.classes, vec!["a", "b"]);
        assert_eq!(tr.channels, 3);
    }

    #[test]
    fn concat_keeps_order_and_refuses_other_shapes() {
        let a = synthetic_digits(3, 1);
        let b = synthetic_digits(2, 2);
        let ab = a.concat(&b).unwrap();
        assert_eq!(ab.len(), 5);
        assert_eq!(ab.image(3), b.image(0));
        assert_eq!(&ab.labels[..3], &a.labels[..]);
        let mut rgb = synthetic_digits(2, 3);
        rgb.channels = 3;
        rgb.images = rgb.images.repeat(3);
        let e = a.concat(&rgb).unwrap_err().to_string();
        assert!(e.contains("differ in image shape or classes"), "{e}");
    }

    /// The data root from the environment, or `None` (the caller prints
    /// "skipped"). Set but missing is a failure, not a skip.
    fn real_root() -> Option<PathBuf> {
        match std::env::var_os("SPLITINV_DATA") {
            Some(v) if !v.is_empty() => {
                let p = PathBuf::from(v);
                assert!(
                    p.is_dir(),
                    "SPLITINV_DATA={} is not a directory",
                    p.display()
                );
                Some(p)
            }
            _ => {
                println!("skipped: SPLITINV_DATA not set");
                None
            }
        }
    }

    #[test]
    fn real_mnist_test_set() {
        let Some(root) = real_root() else { return };
        let ds = load(&DatasetName::Mnist, Split::Test, Some(&root), None).unwrap();
        ds.validate().unwrap();
        assert_eq!(
            (ds.len(), ds.channels, ds.height, ds.width),
            (10000, 1, 28, 28)
        );
        assert_eq!(&ds.labels[..5], &[7, 2, 1, 0, 4]);
        let sum: f64 = ds
            .image(0)
            .iter()
            .map(|&v| (v * 255.0).round() as f64)
            .sum();
        assert_eq!(sum, 18454.0, "pixel byte sum of test image 0");
        assert_eq!(
            ds.first_of_each_class(),
            vec![3, 2, 1, 18, 4, 8, 11, 0, 61, 7]
        );
    }

    #[test]
    fn real_cifar_exact1000() {
        let Some(root) = real_root() else { return };
        let ds = load(&DatasetName::Cifar10, Split::Test, Some(&root), None).unwrap();
        ds.validate().unwrap();
        assert_eq!(
            (ds.len(), ds.channels, ds.height, ds.width),
            (1000, 3, 32, 32)
        );
        assert!(
            ds.source.contains("test_batch_exact1000.bin"),
            "{}",
            ds.source
        );
        assert_eq!(
            ds.class_counts(),
            vec![103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
        );
        // The official test set starts cat, ship, ship, airplane, frog.
        assert_eq!(&ds.labels[..5], &[3, 8, 8, 0, 6]);
    }

    #[test]
    fn real_cifar_jpeg_test_beyond_the_exact_images() {
        let Some(root) = real_root() else { return };
        let exact = load(&DatasetName::Cifar10, Split::Test, Some(&root), None).unwrap();
        let extra = cifar10_jpeg_test_beyond(&root, &exact).unwrap().unwrap();
        extra.validate().unwrap();
        assert_eq!(extra.len(), 9000);
        let want: Vec<usize> = exact.class_counts().iter().map(|c| 1000 - c).collect();
        assert_eq!(extra.class_counts(), want);
        // The rank mapping is right: JPEG test/airplane/0000.jpg is the first
        // exact airplane (index 3) up to JPEG error (≈ 5.8/255 mean absolute
        // error), and the first *kept* airplane (rank 103) is none of the
        // exact airplanes.
        let mae = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
        };
        let all = load_image_tar_gz(
            &root.join("cifar10/cifar10-jpeg.tar.gz"),
            "test/",
            Some(3),
            None,
        )
        .unwrap();
        assert_eq!(all.labels[0], 0);
        assert!(mae(all.image(0), exact.image(3)) < 12.0 / 255.0);
        let first_kept = extra.labels.iter().position(|&l| l == 0).unwrap();
        for (i, &l) in exact.labels.iter().enumerate() {
            if l == 0 {
                assert!(
                    mae(extra.image(first_kept), exact.image(i)) > 12.0 / 255.0,
                    "{i}"
                );
            }
        }
        // Glued after the exact rest, shapes and classes agree.
        let both = exact.subset(&[0, 1]).unwrap().concat(&extra).unwrap();
        assert_eq!(both.len(), 9002);
        assert_eq!(both.image(2), extra.image(0));
    }

    #[test]
    fn real_cifar_jpeg_train() {
        let Some(root) = real_root() else { return };
        let t = std::time::Instant::now();
        let ds = load(&DatasetName::Cifar10, Split::Train, Some(&root), None).unwrap();
        println!("loaded {} CIFAR-10 JPEGs in {:.2?}", ds.len(), t.elapsed());
        ds.validate().unwrap();
        assert_eq!(
            (ds.len(), ds.channels, ds.height, ds.width),
            (50000, 3, 32, 32)
        );
        assert_eq!(ds.class_counts(), vec![5000; 10]);
        assert_eq!(ds.classes, CIFAR10_CLASSES);
        // Class-major order, and real image content (not blank).
        assert_eq!(ds.labels[4999], 0);
        assert_eq!(ds.labels[5000], 1);
        let mean = ds.images.iter().map(|&v| v as f64).sum::<f64>() / ds.images.len() as f64;
        assert!((0.4..0.55).contains(&mean), "mean pixel {mean}");
        let small = load(&DatasetName::Cifar10, Split::Train, Some(&root), Some(20)).unwrap();
        assert_eq!(small.class_counts(), vec![2; 10]);
        assert_eq!(small.image(2), ds.image(5000));
    }
}
