//! IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.
//!
//! Layout: a big-endian magic `0x00 0x00 TT DD` — two zero bytes, a type code
//! `TT` (0x08 = unsigned byte, the only type MNIST uses) and the number of
//! dimensions `DD` — then `DD` big-endian u32 sizes, then the elements.
//! Images are `0x00000803` (N × rows × cols), labels `0x00000801` (N).
//!
//! The header is never trusted for an allocation: the body is read with a cap
//! of "what the header promises + 1 byte", so a corrupt header with huge sizes
//! costs only the bytes that really are in the file, and the mismatch is
//! reported with the expected and the found byte counts.

use crate::error::{Error, Result};
use flate2::read::MultiGzDecoder;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The IDX type code for unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// The decoded content of an IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The sizes from the header, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major, exactly `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Whether a path names a gzip file (by its `.gz` extension).
fn is_gz(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadData {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads exactly `buf.len()` bytes, or says how many were there.
fn read_header_bytes(r: &mut impl Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let dst = buf.get_mut(got..).unwrap_or_default();
        match r.read(dst) {
            Ok(0) => {
                return Err(bad(
                    path,
                    format!(
                        "truncated {what}: expected {} bytes, found {got}",
                        buf.len()
                    ),
                ))
            }
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
}

/// Reads an IDX file of unsigned bytes with `expected_dims` dimensions
/// (`.gz` files are decompressed on the fly).
///
/// Fails with [`Error::BadData`] on a wrong magic, a dimension count other
/// than `expected_dims`, sizes whose product overflows, or a body shorter or
/// longer than the header says (with both byte counts in the message).
pub fn read_idx(path: &Path, expected_dims: usize) -> Result<IdxArray> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map(|m| m.len()).ok();
    let gz = is_gz(path);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };

    let mut magic = [0u8; 4];
    read_header_bytes(&mut reader, &mut magic, path, "IDX magic number")?;
    let [z0, z1, ty, nd] = magic;
    if z0 != 0 || z1 != 0 {
        return Err(bad(
            path,
            format!(
                "not an IDX file: magic 0x{:08x} does not start with two zero bytes \
                 (expected 0x000008{expected_dims:02x}; is this the right file, or a \
                 gzip file without a .gz name?)",
                u32::from_be_bytes(magic)
            ),
        ));
    }
    if ty != TYPE_U8 {
        return Err(bad(
            path,
            format!(
                "IDX element type 0x{ty:02x} is not supported (magic 0x{:08x}); \
                 only unsigned bytes (0x08) are",
                u32::from_be_bytes(magic)
            ),
        ));
    }
    if nd as usize != expected_dims {
        return Err(bad(
            path,
            format!(
                "IDX magic 0x{:08x} declares {nd} dimensions, expected {expected_dims} \
                 (magic 0x000008{expected_dims:02x})",
                u32::from_be_bytes(magic)
            ),
        ));
    }

    let mut raw_dims = vec![0u8; 4 * expected_dims];
    read_header_bytes(&mut reader, &mut raw_dims, path, "IDX header")?;
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let header_len = 4 + 4 * expected_dims as u64;
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| {
            bad(
                path,
                format!("IDX header sizes {dims:?} overflow a 64-bit byte count"),
            )
        })?;

    // For a raw file the length is known up front: reject before reading.
    if !gz {
        if let Some(len) = file_len {
            let found = len.saturating_sub(header_len);
            if found != expected {
                return Err(size_mismatch(path, &dims, expected, found));
            }
        }
    }

    // Never allocate what the header claims; read at most one byte more
    // than it promises, so an oversized file is detected without reading it all.
    let cap = expected.saturating_add(1);
    let mut data = Vec::new();
    (&mut reader)
        .take(cap)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    let found = data.len() as u64;
    if gz && found > expected {
        // A damaged deflate stream can inflate to more bytes than were
        // packed: read on (up to 64 MiB) to its checksum, so that such a
        // file is called corrupt rather than too long.
        let mut rest = (&mut reader).take(64 << 20);
        if let Err(e) = std::io::copy(&mut rest, &mut std::io::sink()) {
            return Err(bad(path, format!("corrupt gzip stream: {e}")));
        }
    }
    if found != expected {
        return Err(size_mismatch(path, &dims, expected, found));
    }
    Ok(IdxArray { dims, data })
}

fn size_mismatch(path: &Path, dims: &[usize], expected: u64, found: u64) -> Error {
    let what = if found < expected {
        "truncated"
    } else {
        "too long"
    };
    // When decompressing we stop one byte past the promise; say "more than".
    let found_s = if found > expected {
        format!("more than {expected}")
    } else {
        found.to_string()
    };
    bad(
        path,
        format!("{what}: header sizes {dims:?} need {expected} data bytes, found {found_s}"),
    )
}

/// Reads an IDX image file (magic 0x00000803): returns `(n, rows, cols, bytes)`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let a = read_idx(path, 3)?;
    match a.dims[..] {
        [n, h, w] => {
            if n > 0 && (h == 0 || w == 0) {
                return Err(bad(path, format!("images of size {h}x{w} are empty")));
            }
            Ok((n, h, w, a.data))
        }
        _ => Err(bad(path, format!("expected 3 sizes, found {:?}", a.dims))),
    }
}

/// Reads an IDX label file (magic 0x00000801); every label must be below
/// `num_classes` (the first offender is reported with its index).
pub fn read_idx_labels(path: &Path, num_classes: usize) -> Result<Vec<usize>> {
    let a = read_idx(path, 1)?;
    let labels: Vec<usize> = a.data.iter().map(|&b| b as usize).collect();
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(bad(
            path,
            format!("label {l} at index {i} is out of range 0..{num_classes}"),
        ));
    }
    Ok(labels)
}

/// Writes an IDX file of unsigned bytes (gzipped when the name ends in `.gz`).
/// Used by tests and by anyone preparing their own data in MNIST format.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let n: usize = dims.iter().product();
    if n != data.len() {
        return Err(Error::invalid(
            "write_idx",
            format!("sizes {dims:?} need {n} bytes, {} were given", data.len()),
        ));
    }
    let nd = u8::try_from(dims.len()).map_err(|_| {
        Error::invalid(
            "write_idx",
            format!("{} dimensions (at most 255)", dims.len()),
        )
    })?;
    let mut bytes = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    bytes.extend_from_slice(&[0, 0, TYPE_U8, nd]);
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::invalid("write_idx", format!("size {d} does not fit in a u32")))?;
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let out: PathBuf = path.to_path_buf();
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&out)?;
        if is_gz(&out) {
            let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            enc.write_all(&bytes)?;
            enc.finish()?;
        } else {
            let mut f = f;
            f.write_all(&bytes)?;
        }
        Ok(())
    };
    write().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::temp_dir;

    fn images_bytes(n: usize, h: usize, w: usize) -> Vec<u8> {
        (0..n * h * w).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = temp_dir("idx_round_trip");
        for name in ["imgs-idx3-ubyte", "imgs-idx3-ubyte.gz"] {
            let p = dir.join(name);
            let data = images_bytes(5, 3, 4);
            write_idx(&p, &[5, 3, 4], &data).unwrap();
            let (n, h, w, got) = read_idx_images(&p).unwrap();
            assert_eq!((n, h, w), (5, 3, 4));
            assert_eq!(got, data);
        }
        // The gz file really is compressed (starts with the gzip magic).
        let gz = std::fs::read(dir.join("imgs-idx3-ubyte.gz")).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let p = dir.join("labels.gz");
        write_idx(&p, &[6], &[0, 1, 9, 3, 3, 2]).unwrap();
        assert_eq!(read_idx_labels(&p, 10).unwrap(), vec![0, 1, 9, 3, 3, 2]);
    }

    #[test]
    fn truncated_file_reports_expected_and_found() {
        let dir = temp_dir("idx_truncated");
        for name in ["t-idx3-ubyte", "t-idx3-ubyte.gz"] {
            let full = dir.join(format!("full-{name}"));
            write_idx(&full, &[4, 5, 5], &images_bytes(4, 5, 5)).unwrap();
            // Cut the decompressed content: rewrite with 10 bytes of body missing.
            let mut bytes = vec![0, 0, 8, 3];
            for d in [4u32, 5, 5] {
                bytes.extend_from_slice(&d.to_be_bytes());
            }
            bytes.extend_from_slice(&images_bytes(4, 5, 5)[..90]);
            let p = dir.join(name);
            if name.ends_with(".gz") {
                let mut enc = flate2::write::GzEncoder::new(
                    std::fs::File::create(&p).unwrap(),
                    flate2::Compression::fast(),
                );
                enc.write_all(&bytes).unwrap();
                enc.finish().unwrap();
            } else {
                std::fs::write(&p, &bytes).unwrap();
            }
            let e = read_idx_images(&p).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{e}");
            assert!(e.contains("need 100 data bytes, found 90"), "{e}");
        }
        // A file cut inside the header.
        let p = dir.join("short");
        std::fs::write(&p, [0u8, 0, 8, 3, 0, 0]).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("expected 12 bytes, found 2"), "{e}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let dir = temp_dir("idx_magic");
        // Labels where images are expected: 1 dimension instead of 3.
        let p = dir.join("labels");
        write_idx(&p, &[3], &[1, 2, 3]).unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("0x00000801") && e.contains("expected 3"), "{e}");
        // Garbage bytes.
        let p = dir.join("garbage");
        std::fs::write(&p, b"PK\x03\x04 not idx at all").unwrap();
        let e = read_idx_images(&p).unwrap_err().to_string();
        assert!(e.contains("not an IDX file"), "{e}");
        // Another element type (0x0D = float).
        let p = dir.join("float");
        std::fs::write(&p, [0u8, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        let e = read_idx_labels(&p, 10).unwrap_err().to_string();
        assert!(e.contains("type 0x0d"), "{e}");
    }

    #[test]
    fn oversized_header_dims_do_not_allocate() {
        let dir = temp_dir("idx_oversized");
        for name in ["huge", "huge.gz"] {
            let mut bytes = vec![0, 0, 8, 3];
            for d in [1_000_000u32, 1_000_000, 28] {
                bytes.extend_from_slice(&d.to_be_bytes());
            }
            bytes.extend_from_slice(&[1, 2, 3]);
            let p = dir.join(name);
            if name.ends_with(".gz") {
                let mut enc = flate2::write::GzEncoder::new(
                    std::fs::File::create(&p).unwrap(),
                    flate2::Compression::fast(),
                );
                enc.write_all(&bytes).unwrap();
                enc.finish().unwrap();
            } else {
                std::fs::write(&p, &bytes).unwrap();
            }
            let e = read_idx_images(&p).unwrap_err().to_string();
            let want = 28_000_000_000_000u64;
            assert!(
                e.contains(&format!("need {want} data bytes, found 3")),
                "{e}"
            );
        }
        // Sizes whose product overflows u64.
        let mut bytes = vec![0, 0, 8, 4];
        for _ in 0..4 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let p = dir.join("overflow");
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx(&p, 4).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
        // A body longer than promised.
        let p = dir.join("long");
        let mut bytes = vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3];
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx_labels(&p, 10).unwrap_err().to_string();
        assert!(e.contains("too long") && e.contains("need 2"), "{e}");
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_idx_labels(&p, 10).unwrap(), vec![1, 2]);
        // Gzipped and too long: "too long" while the stream is sound, but
        // "corrupt" when its checksum says the bytes are not what was packed.
        bytes.push(3);
        let gz = dir.join("long.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        let mut packed = enc.finish().unwrap();
        std::fs::write(&gz, &packed).unwrap();
        let e = read_idx_labels(&gz, 10).unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
        let crc_at = packed.len() - 8;
        packed[crc_at] ^= 0xff;
        std::fs::write(&gz, &packed).unwrap();
        let e = read_idx_labels(&gz, 10).unwrap_err().to_string();
        assert!(
            e.contains("long.gz") && e.contains("corrupt gzip stream"),
            "{e}"
        );
    }

    #[test]
    fn label_out_of_range() {
        let dir = temp_dir("idx_label_range");
        let p = dir.join("labels-idx1-ubyte");
        write_idx(&p, &[4], &[0, 9, 10, 3]).unwrap();
        let e = read_idx_labels(&p, 10).unwrap_err().to_string();
        assert!(e.contains("label 10 at index 2"), "{e}");
        assert_eq!(read_idx_labels(&p, 11).unwrap(), vec![0, 9, 10, 3]);
    }
}
