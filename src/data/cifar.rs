//! CIFAR-10 "binary version" record files.
//!
//! Each record is 1 label byte followed by 3072 pixel bytes: the 1024 red
//! values, then 1024 green, then 1024 blue, each plane 32×32 row-major. That
//! is already the CHW layout the engine uses, so a record converts to an image
//! by dividing its pixel bytes by 255. The official `data_batch_1.bin` ..
//! `data_batch_5.bin` and `test_batch.bin` use this format, and so does any
//! file of such records (e.g. `test_batch_exact1000.bin`).

use crate::error::{Error, Result};
use std::path::Path;

/// Image side length.
pub const CIFAR_SIDE: usize = 32;
/// Pixel bytes per record (3 planes of 32×32).
pub const CIFAR_PIXELS: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;
/// Bytes per record: the label byte plus the pixels.
pub const CIFAR_RECORD: usize = 1 + CIFAR_PIXELS;
/// CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Decodes CIFAR-10 records from bytes; `path` only names the source in errors.
///
/// Appends the images (CHW, values in \[0, 1\]) to `images` and the labels to
/// `labels`. Fails when the length is not a multiple of 3073 or a label is
/// above 9 (naming the record index).
pub fn decode_cifar_records(
    bytes: &[u8],
    path: &Path,
    images: &mut Vec<f32>,
    labels: &mut Vec<usize>,
) -> Result<()> {
    if !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(Error::BadData {
            path: path.to_path_buf(),
            msg: format!(
                "length {} bytes is not a multiple of the {CIFAR_RECORD}-byte CIFAR-10 record \
                 ({} whole records and {} bytes left over; truncated or not a CIFAR-10 binary file)",
                bytes.len(),
                bytes.len() / CIFAR_RECORD,
                bytes.len() % CIFAR_RECORD
            ),
        });
    }
    let n = bytes.len() / CIFAR_RECORD;
    // Validate every label before growing the output, so a bad file leaves
    // the caller's buffers untouched.
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        let label = rec.first().copied().unwrap_or(0);
        if label > 9 {
            return Err(Error::BadData {
                path: path.to_path_buf(),
                msg: format!(
                    "record {i} (byte offset {}) has label {label}; CIFAR-10 labels are 0..=9",
                    i * CIFAR_RECORD
                ),
            });
        }
    }
    images.reserve(n * CIFAR_PIXELS);
    labels.reserve(n);
    for rec in bytes.chunks_exact(CIFAR_RECORD) {
        if let Some((&label, pixels)) = rec.split_first() {
            labels.push(label as usize);
            images.extend(pixels.iter().map(|&b| b as f32 / 255.0));
        }
    }
    Ok(())
}

/// Reads one CIFAR-10 record file: returns `(images, labels)`, images CHW in \[0, 1\].
pub fn read_cifar_file(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::BadData {
            path: path.to_path_buf(),
            msg: "the file is empty (0 CIFAR-10 records)".into(),
        });
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    decode_cifar_records(&bytes, path, &mut images, &mut labels)?;
    Ok((images, labels))
}

/// Reads several record files in order and concatenates them.
pub fn read_cifar_files(paths: &[std::path::PathBuf]) -> Result<(Vec<f32>, Vec<usize>)> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for p in paths {
        let (im, l) = read_cifar_file(p)?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&l);
    }
    Ok((images, labels))
}

/// Encodes images (CHW in \[0, 1\], 3×32×32 each) and labels as CIFAR-10
/// records — for tests and for exporting a subset in the official format.
pub fn encode_cifar_records(images: &[f32], labels: &[usize]) -> Result<Vec<u8>> {
    if images.len() != labels.len() * CIFAR_PIXELS {
        return Err(Error::invalid(
            "encode_cifar_records",
            format!(
                "{} labels need {} pixel values, {} were given",
                labels.len(),
                labels.len() * CIFAR_PIXELS,
                images.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(labels.len() * CIFAR_RECORD);
    for (img, &l) in images.chunks_exact(CIFAR_PIXELS).zip(labels) {
        let l = u8::try_from(l).ok().filter(|&l| l <= 9).ok_or_else(|| {
            Error::invalid("encode_cifar_records", format!("label {l} is not in 0..=9"))
        })?;
        out.push(l);
        out.extend(
            img.iter()
                .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::temp_dir;

    fn sample_records(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let l = (i * 3) % 10;
            labels.push(l);
            bytes.push(l as u8);
            bytes.extend((0..CIFAR_PIXELS).map(|p| ((p + 17 * i) % 256) as u8));
        }
        (bytes, labels)
    }

    #[test]
    fn good_file_decodes_planes_in_order() {
        let dir = temp_dir("cifar_good");
        let (bytes, labels) = sample_records(4);
        let p = dir.join("data_batch_1.bin");
        std::fs::write(&p, &bytes).unwrap();
        let (images, got_labels) = read_cifar_file(&p).unwrap();
        assert_eq!(got_labels, labels);
        assert_eq!(images.len(), 4 * CIFAR_PIXELS);
        // Record 2, green plane (offset 1024), pixel (row 1, col 2).
        let off = 1024 + 32 + 2;
        let want = ((off + 17 * 2) % 256) as f32 / 255.0;
        assert_eq!(images[2 * CIFAR_PIXELS + off], want);
        // Round trip through the encoder.
        assert_eq!(encode_cifar_records(&images, &labels).unwrap(), bytes);
        // Two files concatenate.
        let p2 = dir.join("data_batch_2.bin");
        std::fs::write(&p2, &bytes[..CIFAR_RECORD]).unwrap();
        let (im2, l2) = read_cifar_files(&[p.clone(), p2]).unwrap();
        assert_eq!(l2.len(), 5);
        assert_eq!(l2[4], labels[0]);
        assert_eq!(&im2[4 * CIFAR_PIXELS..], &images[..CIFAR_PIXELS]);
    }

    #[test]
    fn truncated_file_reports_length() {
        let dir = temp_dir("cifar_truncated");
        let (bytes, _) = sample_records(3);
        let p = dir.join("test_batch.bin");
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = read_cifar_file(&p).unwrap_err().to_string();
        assert!(e.contains("length 9119 bytes"), "{e}");
        assert!(
            e.contains("2 whole records and 2973 bytes left over"),
            "{e}"
        );
        std::fs::write(&p, []).unwrap();
        let e = read_cifar_file(&p).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn bad_label_names_record() {
        let dir = temp_dir("cifar_bad_label");
        let (mut bytes, _) = sample_records(5);
        bytes[3 * CIFAR_RECORD] = 10;
        let p = dir.join("bad.bin");
        std::fs::write(&p, &bytes).unwrap();
        let e = read_cifar_file(&p).unwrap_err().to_string();
        assert!(e.contains("record 3") && e.contains("label 10"), "{e}");
    }
}
