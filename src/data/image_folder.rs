//! Image folders: `<root>/<class>/<file>.png|jpg|jpeg`, from a directory or
//! streamed straight out of a `.tar.gz` (nothing is extracted to disk).
//!
//! Classes are the sorted class-folder names (label = position in that list),
//! files are sorted by name within a class, so the dataset order is
//! class-major and identical for a directory and for a tarball of it.
//! Reading is sequential (the bytes), decoding is parallel (rayon): the
//! 50 000 CIFAR-10 JPEGs decode in seconds.

use super::Dataset;
use crate::error::{Error, Result};
use flate2::read::MultiGzDecoder;
use image::DynamicImage;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Whether a file name has an image extension this loader decodes.
fn is_image_name(name: &str) -> bool {
    if name.starts_with('.') {
        // Hidden files, e.g. macOS `._foo.jpg` resource forks.
        return false;
    }
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// One image before decoding: its class label, a name for messages, and
/// where its bytes are.
struct Pending {
    label: usize,
    name: String,
    bytes: Source,
}

enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// Keeps at most `limit` images, spread over the classes as evenly as the
/// class sizes allow (round robin), keeping each class's first files. A plain
/// "first `limit`" would take only the first class of a class-major folder.
fn balanced_take(items: Vec<Pending>, num_classes: usize, limit: Option<usize>) -> Vec<Pending> {
    let Some(limit) = limit else { return items };
    if limit >= items.len() {
        return items;
    }
    let mut counts = vec![0usize; num_classes];
    for it in &items {
        if let Some(c) = counts.get_mut(it.label) {
            *c += 1;
        }
    }
    let mut quota = vec![0usize; num_classes];
    let mut left = limit;
    while left > 0 {
        let mut progressed = false;
        for (q, &c) in quota.iter_mut().zip(&counts) {
            if left > 0 && *q < c {
                *q += 1;
                left -= 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    items
        .into_iter()
        .filter(|it| match quota.get_mut(it.label) {
            Some(q) if *q > 0 => {
                *q -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

/// Loads `<dir>/<class>/<file>` images. `channels`: `Some(1)` converts to
/// grayscale, `Some(3)` to RGB, `None` picks 1 if every image is grayscale
/// and 3 otherwise. `limit` keeps a class-balanced subset (see the module doc).
pub fn load_image_folder(
    dir: &Path,
    channels: Option<usize>,
    limit: Option<usize>,
) -> Result<Dataset> {
    check_channels(channels)?;
    let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') {
            class_dirs.push((name, path));
        }
    }
    class_dirs.sort();
    let mut items = Vec::new();
    for (label, (_, cdir)) in class_dirs.iter().enumerate() {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(cdir).map_err(|e| Error::io(cdir, e))? {
            let entry = entry.map_err(|e| Error::io(cdir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if is_image_name(&name) && path.is_file() {
                files.push((name, path));
            }
        }
        files.sort();
        items.extend(files.into_iter().map(|(_, path)| Pending {
            label,
            name: path.display().to_string(),
            bytes: Source::File(path),
        }));
    }
    let classes: Vec<String> = class_dirs.into_iter().map(|(n, _)| n).collect();
    if items.is_empty() {
        return Err(Error::BadData {
            path: dir.to_path_buf(),
            msg: format!(
                "no .png/.jpg/.jpeg images found in <class>/<file> layout (class folders found: {})",
                if classes.is_empty() {
                    "none".to_string()
                } else {
                    classes.join(", ")
                }
            ),
        });
    }
    let items = balanced_take(items, classes.len(), limit);
    finish(
        items,
        classes,
        channels,
        dir,
        format!("image folder {}", dir.display()),
    )
}

/// Path components as strings, without `.` components (tarballs made with
/// `tar -C dir .` prefix every name with `./`).
fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// One entry of a tarball that may matter: a directory (a class candidate)
/// or an image file with its bytes, with its path split into components.
struct TarItem {
    parts: Vec<String>,
    is_dir: bool,
    bytes: Vec<u8>,
}

/// Streams a `.tar.gz` once, keeping directories and image files whose
/// component list passes `keep`.
fn scan_tar(archive: &Path, keep: impl Fn(&[String]) -> bool) -> Result<Vec<TarItem>> {
    let bad = |msg: String| Error::BadData {
        path: archive.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(MultiGzDecoder::new(std::io::BufReader::new(file)));
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a readable tar.gz: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?
            .into_owned();
        let parts = components(&path);
        if !keep(&parts) {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            out.push(TarItem {
                parts,
                is_dir: true,
                bytes: Vec::new(),
            });
        } else if kind.is_file() && parts.last().is_some_and(|f| is_image_name(f)) {
            // The header size is only a hint: cap it so a corrupt header
            // cannot request a huge allocation.
            let mut bytes = Vec::with_capacity(entry.size().min(1 << 24) as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(format!("reading entry {}: {e}", path.display())))?;
            out.push(TarItem {
                parts,
                is_dir: false,
                bytes,
            });
        }
    }
    // The tar reader stops at the end-of-archive marker, before the gzip
    // trailer: read the stream to its end so that its CRC and length are
    // checked (a flipped byte can leave a JPEG that still decodes).
    std::io::copy(&mut tar.into_inner(), &mut std::io::sink())
        .map_err(|e| bad(format!("reading to the end of the gzip stream: {e}")))?;
    Ok(out)
}

/// Builds the dataset from scanned entries under `prefix`.
fn from_tar_items(
    archive: &Path,
    items: Vec<TarItem>,
    prefix: &str,
    channels: Option<usize>,
    limit: Option<usize>,
) -> Result<Dataset> {
    let prefix_parts = components(Path::new(prefix));
    let mut classes = BTreeSet::new();
    // (class, file, bytes); labels are assigned once every class is known.
    let mut found: Vec<(String, String, Vec<u8>)> = Vec::new();
    for it in items {
        let Some(rest) = it.parts.strip_prefix(prefix_parts.as_slice()) else {
            continue;
        };
        match rest {
            [class] if it.is_dir && !class.starts_with('.') => {
                classes.insert(class.clone());
            }
            [class, file] if !it.is_dir && !class.starts_with('.') => {
                classes.insert(class.clone());
                found.push((class.clone(), file.clone(), it.bytes));
            }
            _ => {}
        }
    }
    let classes: Vec<String> = classes.into_iter().collect();
    if found.is_empty() {
        return Err(Error::BadData {
            path: archive.to_path_buf(),
            msg: format!(
                "no .png/.jpg/.jpeg images under prefix '{prefix}' in <class>/<file> layout"
            ),
        });
    }
    // The sort is stable, so a path the archive holds twice (an appended
    // replacement) keeps its entries in archive order; the later one wins,
    // as `tar -x` leaves it, instead of both counting as images.
    found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    found.reverse();
    found.dedup_by(|dup, kept| dup.0 == kept.0 && dup.1 == kept.1);
    found.reverse();
    let shown = prefix_str(prefix);
    let mut pending = Vec::with_capacity(found.len());
    for (class, file, bytes) in found {
        let label = classes.binary_search(&class).unwrap_or(0);
        pending.push(Pending {
            label,
            name: format!("{}:{shown}{class}/{file}", archive.display()),
            bytes: Source::Bytes(bytes),
        });
    }
    let pending = balanced_take(pending, classes.len(), limit);
    finish(
        pending,
        classes,
        channels,
        archive,
        format!("image tar.gz {}:{shown}", archive.display()),
    )
}

/// Loads `<prefix><class>/<file>` images streamed from a `.tar.gz`, without
/// extracting it. `prefix` selects a subtree (e.g. `"train/"`; `""` for the
/// archive root); entries outside it are skipped (and not kept in memory).
/// `channels` and `limit` as in [`load_image_folder`].
pub fn load_image_tar_gz(
    archive: &Path,
    prefix: &str,
    channels: Option<usize>,
    limit: Option<usize>,
) -> Result<Dataset> {
    check_channels(channels)?;
    let prefix_parts = components(Path::new(prefix));
    let items = scan_tar(archive, |p| p.starts_with(&prefix_parts))?;
    from_tar_items(archive, items, prefix, channels, limit)
}

/// Loads split `split` (`"train"`/`"test"`) of an image-folder tarball: the
/// `<split>/` subtree if the archive has one, else the whole archive.
/// Reads the archive once.
pub fn load_tar_gz_split(
    archive: &Path,
    split: &str,
    channels: Option<usize>,
    limit: Option<usize>,
) -> Result<Dataset> {
    check_channels(channels)?;
    let items = scan_tar(archive, |_| true)?;
    let has_split = items.iter().any(|it| {
        !it.is_dir && it.parts.len() == 3 && it.parts.first().is_some_and(|s| s == split)
    });
    let prefix = if has_split {
        format!("{split}/")
    } else {
        String::new()
    };
    from_tar_items(archive, items, &prefix, channels, limit)
}

/// The prefix as written into names, with exactly one trailing slash.
fn prefix_str(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

fn check_channels(channels: Option<usize>) -> Result<()> {
    match channels {
        None | Some(1) | Some(3) => Ok(()),
        Some(c) => Err(Error::invalid(
            "image folder",
            format!("channels = {c}; expected 1 (grayscale) or 3 (RGB)"),
        )),
    }
}

/// Decodes (in parallel), checks that all sizes agree, converts to the
/// channel count and packs CHW planes in \[0, 1\].
fn finish(
    items: Vec<Pending>,
    classes: Vec<String>,
    channels: Option<usize>,
    root: &Path,
    source: String,
) -> Result<Dataset> {
    let decoded: Vec<(usize, String, DynamicImage)> = items
        .into_par_iter()
        .map(|it| {
            let bytes = match it.bytes {
                Source::File(p) => std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                Source::Bytes(b) => b,
            };
            let img = image::load_from_memory(&bytes).map_err(|e| Error::BadData {
                path: root.to_path_buf(),
                msg: format!("cannot decode image {}: {e}", it.name),
            })?;
            Ok((it.label, it.name, img))
        })
        .collect::<Result<_>>()?;

    let Some((_, first_name, first)) = decoded.first() else {
        return Err(Error::BadData {
            path: root.to_path_buf(),
            msg: "no images selected".into(),
        });
    };
    let (w, h) = (first.width() as usize, first.height() as usize);
    for (_, name, img) in &decoded {
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(Error::BadData {
                path: root.to_path_buf(),
                msg: format!(
                    "image {name} is {}x{} but {first_name} is {w}x{h}; all images must share one size",
                    img.width(),
                    img.height()
                ),
            });
        }
    }
    let c = channels.unwrap_or_else(|| {
        if decoded.iter().all(|(_, _, img)| !img.color().has_color()) {
            1
        } else {
            3
        }
    });
    let per = c * h * w;
    let mut images = vec![0f32; decoded.len() * per];
    images
        .par_chunks_mut(per.max(1))
        .zip(decoded.par_iter())
        .for_each(|(dst, (_, _, img))| {
            let plane = h * w;
            if c == 1 {
                for (d, p) in dst.iter_mut().zip(img.to_luma8().pixels()) {
                    *d = p.0[0] as f32 / 255.0;
                }
            } else {
                // Interleaved RGB (HWC) → planes (CHW).
                for (i, p) in img.to_rgb8().pixels().enumerate() {
                    for (ch, &v) in p.0.iter().enumerate() {
                        if let Some(d) = dst.get_mut(ch * plane + i) {
                            *d = v as f32 / 255.0;
                        }
                    }
                }
            }
        });
    let labels = decoded.iter().map(|(l, _, _)| *l).collect::<Vec<_>>();
    Ok(Dataset {
        n: labels.len(),
        images,
        labels,
        channels: c,
        height: h,
        width: w,
        classes,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::temp_dir;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// Writes `<root>/<class>/<file>` tiny PNGs whose pixel values encode
    /// (class, file index), so order and content can both be checked.
    /// Files are created in reverse order so sorting is really tested.
    fn write_tree(root: &Path, classes: &[&str], per_class: usize, rgb: bool) {
        for class in classes {
            let d = root.join(class);
            std::fs::create_dir_all(&d).unwrap();
            for fi in (0..per_class).rev() {
                let v = class_value(class) + (fi * 5) as u8;
                let path = d.join(format!("img{fi:02}.png"));
                if rgb {
                    let img =
                        RgbImage::from_fn(3, 2, |x, y| Rgb([v, v + 1 + x as u8, 200 + y as u8]));
                    img.save(&path).unwrap();
                } else {
                    GrayImage::from_pixel(3, 2, Luma([v])).save(&path).unwrap();
                }
            }
        }
        // Noise that must be ignored.
        std::fs::write(root.join(classes[0]).join("notes.txt"), "x").unwrap();
    }

    /// A pixel value that identifies the class: 10 × (first letter's rank).
    fn class_value(class: &str) -> u8 {
        (class.as_bytes()[0] - b'a') * 10
    }

    fn check_tree(ds: &Dataset, classes: &[&str], per_class: usize) {
        assert_eq!(
            ds.classes,
            classes.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(ds.len(), classes.len() * per_class);
        assert_eq!((ds.channels, ds.height, ds.width), (3, 2, 3));
        for i in 0..ds.len() {
            let (ci, fi) = (i / per_class, i % per_class);
            assert_eq!(ds.labels[i], ci);
            let img = ds.image(i);
            let v = (class_value(classes[ci]) as usize + fi * 5) as f32;
            // R plane constant, G plane = v+1+x, B plane = 200+y (CHW).
            assert_eq!(img[0] * 255.0, v, "image {i} R");
            assert_eq!((img[6 + 2] * 255.0).round(), v + 3.0, "image {i} G(x=2)");
            assert_eq!((img[12 + 3] * 255.0).round(), 201.0, "image {i} B(y=1)");
        }
    }

    #[test]
    fn folder_from_dir_sorted_and_chw() {
        let root = temp_dir("imgfolder_dir");
        let classes = ["cat", "bird", "dog"];
        write_tree(&root, &classes, 3, true);
        let ds = load_image_folder(&root, Some(3), None).unwrap();
        check_tree(&ds, &["bird", "cat", "dog"], 3);
        // Grayscale conversion and auto-detection.
        let gray = temp_dir("imgfolder_gray");
        write_tree(&gray, &["a", "b"], 2, false);
        let g = load_image_folder(&gray, None, None).unwrap();
        assert_eq!(g.channels, 1);
        assert_eq!(g.image(3)[0] * 255.0, 15.0);
        let g3 = load_image_folder(&gray, Some(3), None).unwrap();
        assert_eq!(g3.channels, 3);
        assert!(load_image_folder(&gray, Some(2), None).is_err());
    }

    #[test]
    fn folder_limit_is_class_balanced() {
        let root = temp_dir("imgfolder_limit");
        write_tree(&root, &["a", "b", "c"], 4, true);
        let ds = load_image_folder(&root, Some(3), Some(5)).unwrap();
        assert_eq!(ds.labels, vec![0, 0, 1, 1, 2]);
        // Each class keeps its first files.
        assert_eq!(ds.image(2)[0] * 255.0, 10.0);
    }

    #[test]
    fn folder_mixed_sizes_name_the_file() {
        let root = temp_dir("imgfolder_sizes");
        write_tree(&root, &["a", "b"], 2, true);
        RgbImage::new(4, 4)
            .save(root.join("b").join("zz.png"))
            .unwrap();
        let e = load_image_folder(&root, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("zz.png") && e.contains("4x4") && e.contains("3x2"),
            "{e}"
        );
        std::fs::write(root.join("a").join("broken.png"), b"not a png").unwrap();
        let e = load_image_folder(&root, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("broken.png"), "{e}");
    }

    /// A path the archive holds twice (tar's way to replace a file by
    /// appending) is one image, the later one, as `tar -x` would leave it.
    #[test]
    fn a_tar_path_held_twice_is_one_image_the_later() {
        let root = temp_dir("imgfolder_tar_dup");
        let png = |v: u8| {
            let p = root.join(format!("v{v}.png"));
            GrayImage::from_pixel(3, 2, Luma([v])).save(&p).unwrap();
            p
        };
        let (old, new, other) = (png(10), png(200), png(50));
        let archive = root.join("dup.tar.gz");
        {
            let f = std::fs::File::create(&archive).unwrap();
            let enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(enc);
            b.append_path_with_name(&old, "cat/a.png").unwrap();
            b.append_path_with_name(&other, "dog/b.png").unwrap();
            b.append_path_with_name(&new, "cat/a.png").unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let ds = load_image_tar_gz(&archive, "", Some(1), None).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels, vec![0, 1]);
        assert_eq!(ds.image(0)[0], 200.0 / 255.0);
        assert_eq!(ds.image(1)[0], 50.0 / 255.0);
    }

    #[test]
    fn folder_from_tar_gz_matches_dir() {
        let root = temp_dir("imgfolder_tar");
        let tree = root.join("tree");
        let classes = ["cat", "bird", "dog"];
        write_tree(&tree.join("train"), &classes, 3, true);
        write_tree(&tree.join("test"), &["x", "y"], 2, true);
        let archive = root.join("imgs.tar.gz");
        {
            let f = std::fs::File::create(&archive).unwrap();
            let enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(enc);
            // Add test/ before train/ and files in reverse order: the reader must sort.
            b.append_dir_all("test", tree.join("test")).unwrap();
            for class in classes {
                let d = tree.join("train").join(class);
                let mut files: Vec<_> = std::fs::read_dir(&d)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                files.reverse();
                for p in files {
                    let name = format!(
                        "./train/{class}/{}",
                        p.file_name().unwrap().to_string_lossy()
                    );
                    b.append_path_with_name(&p, name).unwrap();
                }
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        let ds = load_image_tar_gz(&archive, "train/", Some(3), None).unwrap();
        check_tree(&ds, &["bird", "cat", "dog"], 3);
        let from_dir = load_image_folder(&tree.join("train"), Some(3), None).unwrap();
        assert_eq!(ds.images, from_dir.images);
        assert_eq!(ds.labels, from_dir.labels);
        let t = load_image_tar_gz(&archive, "test", Some(3), Some(3)).unwrap();
        assert_eq!(t.classes, vec!["x", "y"]);
        assert_eq!(t.labels, vec![0, 0, 1]);
        let e = load_image_tar_gz(&archive, "val/", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no .png/.jpg/.jpeg images under prefix 'val/'"),
            "{e}"
        );
        // A damaged gzip trailer (its CRC, then its length) lies past the
        // tar's end-of-archive marker: still found, naming the archive.
        let good = std::fs::read(&archive).unwrap();
        for at in [8, 4] {
            let mut bad = good.clone();
            let i = bad.len() - at;
            bad[i] ^= 0xff;
            let damaged = root.join(format!("damaged{at}.tar.gz"));
            std::fs::write(&damaged, &bad).unwrap();
            let e = load_image_tar_gz(&damaged, "train/", Some(3), None)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("damaged{at}.tar.gz"))
                    && e.contains("reading to the end of the gzip stream"),
                "{e}"
            );
        }
    }
}
