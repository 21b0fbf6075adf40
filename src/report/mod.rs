//! Output: PNG grids of images, animated GIFs of an attack, and tables as
//! markdown, CSV and JSON. Every file is written atomically.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::path::Path;

/// Pixels of a batch `[N, C, H, W]` in [0, 1] as 8-bit RGB rows of tiles:
/// `rows` is a list of batches, each drawn as one row of the grid.
fn grid_rgb(rows: &[&Tensor], scale: usize) -> Result<(Vec<u8>, u32, u32)> {
    let first = rows
        .first()
        .ok_or_else(|| Error::invalid("image grid", "no rows to draw"))?;
    let (_, c, h, w) = first.shape().nchw("image grid")?;
    // (Every row is checked to be [N, C, H, W] below.)
    let cols = rows
        .iter()
        .map(|t| t.dims().first().copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let pad = 2;
    let s = scale.max(1);
    let (tw, th) = (w * s + pad, h * s + pad);
    let (gw, gh) = (cols * tw + pad, rows.len() * th + pad);
    let mut buf = vec![255u8; gw * gh * 3];
    for (r, t) in rows.iter().enumerate() {
        let (n, c2, h2, w2) = t.shape().nchw("image grid")?;
        if (c2, h2, w2) != (c, h, w) {
            return Err(Error::shape("image grid", first.shape(), t.shape()));
        }
        let v = t.to_vec()?;
        for i in 0..n {
            for y in 0..h * s {
                for x in 0..w * s {
                    let (sy, sx) = (y / s, x / s);
                    let px = |ch: usize| {
                        (v[((i * c + ch) * h + sy) * w + sx].clamp(0.0, 1.0) * 255.0).round() as u8
                    };
                    let rgb = if c >= 3 {
                        [px(0), px(1), px(2)]
                    } else {
                        [px(0); 3]
                    };
                    let (gx, gy) = (pad + i * tw + x, pad + r * th + y);
                    let o = (gy * gw + gx) * 3;
                    buf[o..o + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    Ok((buf, gw as u32, gh as u32))
}

/// Writes a PNG grid: one row per batch in `rows` (e.g. originals, then
/// reconstructions), pixels in [0, 1], each pixel drawn `scale`×`scale`.
pub fn save_grid(path: &Path, rows: &[&Tensor], scale: usize) -> Result<()> {
    let (buf, w, h) = grid_rgb(rows, scale)?;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::Msg(format!("encoding {}: {e}", path.display())))?;
    crate::util::write_atomic(path, &png)
}

/// Writes an animated GIF, one frame per grid (the teaching view of an
/// attack: the reconstruction emerging over the iterations).
pub fn save_gif(path: &Path, frames: &[Vec<Tensor>], scale: usize, delay_ms: u32) -> Result<()> {
    if frames.is_empty() {
        return Err(Error::invalid(
            "gif",
            format!("no frames to write to {}", path.display()),
        ));
    }
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .map_err(|e| Error::Msg(format!("gif: {e}")))?;
        for f in frames {
            let rows: Vec<&Tensor> = f.iter().collect();
            let (buf, w, h) = grid_rgb(&rows, scale)?;
            let rgba: Vec<u8> = buf
                .chunks(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect();
            let img = image::RgbaImage::from_raw(w, h, rgba)
                .ok_or_else(|| Error::Msg("gif frame buffer size".into()))?;
            let frame =
                image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(delay_ms, 1));
            enc.encode_frame(frame)
                .map_err(|e| Error::Msg(format!("gif: {e}")))?;
        }
    }
    crate::util::write_atomic(path, &out)
}

/// A table of strings with a header, rendered as aligned text, markdown or CSV.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// Aligned plain text for the terminal.
    pub fn to_text(&self) -> String {
        let w = self.widths();
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut s = line(&self.header);
        s.push('\n');
        s.push_str(
            &w.iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("  "),
        );
        for r in &self.rows {
            s.push('\n');
            s.push_str(&line(r));
        }
        s.push('\n');
        s
    }

    /// A markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "| {} |\n|{}|\n",
            self.header.join(" | "),
            self.header
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// CSV (cells with commas or quotes are quoted).
    pub fn to_csv(&self) -> String {
        let esc = |c: &String| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        };
        let mut s = self.header.iter().map(esc).collect::<Vec<_>>().join(",");
        s.push('\n');
        for r in &self.rows {
            s.push_str(&r.iter().map(esc).collect::<Vec<_>>().join(","));
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_formats() {
        let mut t = Table::new(&["a", "b"]);
        t.push(vec!["1".into(), "x,y".into()]);
        assert_eq!(t.to_csv(), "a,b\n1,\"x,y\"\n");
        assert!(t.to_markdown().starts_with("| a | b |\n|---|---|\n"));
        assert!(t.to_text().contains("1  x,y"));
    }

    #[test]
    fn grid_png_round_trips_pixels() {
        let dir = crate::data::test_util::temp_dir("grid");
        let p = dir.join("g.png");
        let a = Tensor::full([2, 1, 3, 3], 1.0);
        let b = Tensor::zeros([2, 1, 3, 3]);
        save_grid(&p, &[&a, &b], 1).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        // 2 tiles of 3 + padding 2 on each side: 2 + 2*(3+2) = 12 wide, 2 rows: 12 high.
        assert_eq!((img.width(), img.height()), (12, 12));
        assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 7).0, [0, 0, 0]);
        assert!(save_grid(&p, &[], 1).is_err());
        // A later row that is not a batch of images: an error, not a panic.
        let e = save_grid(&p, &[&a, &Tensor::scalar(0.5)], 1).unwrap_err();
        assert!(e.to_string().contains("image grid"), "{e}");
    }
}
