//! Finished cells kept on disk, so that an interrupted `reproduce` can go on
//! where it stopped (`reproduce --resume`).
//!
//! A CIFAR-10 reproduction is 24 cells of minutes (GPU) to an hour (one CPU
//! core) each. Every finished cell is written to `OUT/cells/` at once: its
//! reconstructions (the scores are recomputed from them and the originals,
//! so the file cannot disagree with the table) and its own seconds. A file
//! is reused only when its *run key* matches this run's: the code's version,
//! the dataset, the seed, the target's weights, the attacked images and the
//! attacker's data sets, all hashed. Anything else that decides a cell is
//! code, covered by [`STORE_VERSION`] and the crate version.

use super::{Cell, Setup};
use crate::attacks::metrics;
use crate::error::{Error, Result};
use crate::experiment::AttackOutcome;
use crate::nn::weights::{read_tensors, write_tensors};
use crate::tensor::Tensor;
use crate::util::Fnv64;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bump when a change to an attack's defaults or code changes its result,
/// so stored cells of the old code are not reused.
pub const STORE_VERSION: u32 = 1;

/// The folder of one output directory's stored cells.
pub struct CellStore {
    dir: PathBuf,
    key: String,
    resume: bool,
}

/// A cell read back from the store.
pub struct StoredCell {
    /// The cell, scored again from the stored reconstructions.
    pub cell: Cell,
    /// Reconstructions (and scores, and the seconds the cell took when it ran).
    pub outcome: AttackOutcome,
    /// Where it was computed ("cpu", "cuda:0").
    pub device: String,
}

impl CellStore {
    /// The store under `out/cells` for this run; with `resume`, [`CellStore::load`]
    /// reads cells back, otherwise it finds none (and they are recomputed
    /// and overwritten).
    pub fn new(out: &Path, s: &Setup, seed: u64, resume: bool) -> Result<Self> {
        Ok(CellStore {
            dir: out.join("cells"),
            key: format!("{:016x}", run_key(s, seed)?.0),
            resume,
        })
    }

    /// This run's key, as stored in each cell's metadata.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The file a cell is kept in.
    pub fn path(&self, attack: &str, setting: &str, split: &str) -> PathBuf {
        let setting = if setting == "-" { "" } else { setting };
        let name = [attack, setting, split]
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("_");
        self.dir.join(format!("{name}.safetensors"))
    }

    /// Writes a finished cell.
    pub fn save(&self, cell: &Cell, o: &AttackOutcome) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let meta = HashMap::from([
            ("key".to_string(), self.key.clone()),
            ("attack".to_string(), cell.attack.clone()),
            ("setting".to_string(), cell.setting.clone()),
            ("split".to_string(), cell.split.clone()),
            ("seconds".to_string(), format!("{}", o.seconds)),
            ("device".to_string(), where_cells_run()),
        ]);
        write_tensors(
            &self.path(&cell.attack, &cell.setting, &cell.split),
            &[("recon".into(), o.recon.dims().to_vec(), o.recon.to_vec()?)],
            Some(meta),
        )
    }

    /// The stored cell, if resuming and a file of this run is there. A file
    /// of another run is left to be overwritten (with a notice on stderr); a
    /// damaged file is an error naming it.
    pub fn load(
        &self,
        s: &Setup,
        attack: &str,
        setting: &str,
        split: &str,
    ) -> Result<Option<StoredCell>> {
        let path = self.path(attack, setting, split);
        if !self.resume || !path.is_file() {
            return Ok(None);
        }
        let bad = |msg: String| Error::BadData {
            path: path.clone(),
            msg: format!("{msg}; delete the file to run the cell again"),
        };
        // The reader's own errors already name the file.
        let (tensors, meta) = read_tensors(&path).map_err(|e| match e {
            Error::BadData { msg, .. } => bad(msg),
            e => bad(e.to_string()),
        })?;
        let field = |name: &str| {
            meta.get(name)
                .ok_or_else(|| bad(format!("stored cell has no '{name}' in its metadata")))
        };
        if field("key")? != &self.key {
            eprintln!(
                "   {}: stored by another run (key {}, this run {}); running the cell again",
                path.display(),
                field("key")?,
                self.key
            );
            return Ok(None);
        }
        let cell_id = [field("attack")?, field("setting")?, field("split")?];
        if cell_id != [attack, setting, split] {
            return Err(bad(format!(
                "holds cell {cell_id:?}, expected [{attack:?}, {setting:?}, {split:?}]"
            )));
        }
        let seconds: f64 = field("seconds")?
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad("'seconds' is not a number of seconds".into()))?;
        let [(name, dims, values)] = <[_; 1]>::try_from(tensors)
            .map_err(|t| bad(format!("holds {} tensors, expected one ('recon')", t.len())))?;
        if name != "recon" || dims != s.originals.dims() {
            return Err(bad(format!(
                "holds '{name}' {dims:?}, expected 'recon' {:?} (the attacked images)",
                s.originals.dims()
            )));
        }
        // Reconstructions are stored as pixels, clamped to [0, 1] (the
        // reader has refused NaN and infinities already); anything else is
        // a damaged or foreign file, and would score as something no attack
        // produced.
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(bad(format!(
                "'recon' holds {v} at element {i}; expected pixels in [0, 1]"
            )));
        }
        let recon = Tensor::from_vec(values, dims)?;
        let scores = metrics::score(&recon, &s.originals)?;
        let outcome = AttackOutcome {
            recon,
            scores,
            seconds,
        };
        Ok(Some(StoredCell {
            cell: Cell::from_outcome(&s.dataset, attack, setting, split, &outcome),
            outcome,
            device: field("device")?.clone(),
        }))
    }
}

/// The device a cell runs on, as a stored cell reports it: `cpu`, `cuda:0`,
/// or `cuda:0 with TF32 convolutions` under `--conv-math tf32` (a valid run
/// too, so not part of the run key, but a resumed run says so).
fn where_cells_run() -> String {
    let dev = crate::device::default_device();
    match (dev, crate::cuda::conv_math()) {
        (crate::Device::Cuda(_), Ok(crate::cuda::ConvMath::Tf32)) => {
            format!("{dev} with TF32 convolutions")
        }
        _ => dev.to_string(),
    }
}

/// What decides every cell's result apart from the code: hashed once per run
/// (about a second for CIFAR-10's 50 000 training images).
fn run_key(s: &Setup, seed: u64) -> Result<Fnv64> {
    let mut h = Fnv64::default();
    h.write(
        format!(
            "v{STORE_VERSION}/splitinv {}/{}/{:?}/seed {seed}/",
            env!("CARGO_PKG_VERSION"),
            s.dataset,
            s.target.kind
        )
        .as_bytes(),
    );
    for (name, t) in s.target.net.named_params() {
        h.write(name.as_bytes());
        h.write_f32s(&t.to_vec()?);
    }
    h.write(format!("{:?}/", s.originals.dims()).as_bytes());
    h.write_f32s(&s.originals.to_vec()?);
    for ds in [&s.train, &s.disjoint] {
        h.write(format!("{}x{}x{}x{}/", ds.n, ds.channels, ds.height, ds.width).as_bytes());
        h.write_f32s(&ds.images);
        for &l in &ds.labels {
            h.write(&(l as u64).to_le_bytes());
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic_digits;
    use crate::data::test_util::temp_dir;
    use crate::experiment::Target;
    use crate::models::ModelKind;
    use crate::reproduce::{paper_splits, reproduce, ROWS};

    fn setup(seed: u64) -> Setup {
        let net = ModelKind::Lenet.build(seed).unwrap();
        let test = synthetic_digits(20, 7);
        let (originals, _) = test.batch(&[0, 1, 2]).unwrap();
        Setup {
            dataset: "mnist".into(),
            target: Target::new(ModelKind::Lenet, net),
            train: synthetic_digits(30, 8),
            disjoint: test.subset(&(3..20).collect::<Vec<_>>()).unwrap(),
            originals,
            attacked: vec![0, 1, 2],
            shadow_cache: None,
        }
    }

    /// A made-up outcome: the originals darkened by `shade`.
    fn outcome(s: &Setup, shade: f32, seconds: f64) -> AttackOutcome {
        let recon = Tensor::from_vec(
            s.originals
                .to_vec()
                .unwrap()
                .iter()
                .map(|v| v * shade)
                .collect(),
            s.originals.dims().to_vec(),
        )
        .unwrap();
        let scores = metrics::score(&recon, &s.originals).unwrap();
        AttackOutcome {
            recon,
            scores,
            seconds,
        }
    }

    fn stored(s: &Setup, store: &CellStore, shade: f32, seconds: f64) -> Cell {
        let o = outcome(s, shade, seconds);
        let cell = Cell::from_outcome(&s.dataset, "black-box", "random", "conv1", &o);
        store.save(&cell, &o).unwrap();
        cell
    }

    #[test]
    fn a_stored_cell_reads_back_only_into_the_same_run() {
        let dir = temp_dir("cells");
        let s = setup(1);
        let writer = CellStore::new(&dir, &s, 5, false).unwrap();
        assert!(writer
            .load(&s, "black-box", "random", "conv1")
            .unwrap()
            .is_none());
        let cell = stored(&s, &writer, 0.8, 12.5);
        assert!(
            writer
                .load(&s, "black-box", "random", "conv1")
                .unwrap()
                .is_none(),
            "without --resume nothing is read back"
        );

        let back = CellStore::new(&dir, &s, 5, true)
            .unwrap()
            .load(&s, "black-box", "random", "conv1")
            .unwrap()
            .expect("the same run reads its cell back");
        assert_eq!(back.cell.psnr, cell.psnr);
        assert_eq!(back.cell.ssim_paper, cell.ssim_paper);
        assert_eq!(back.cell.seconds, 12.5);
        assert_eq!(back.device, "cpu");
        assert_eq!(
            back.outcome.recon.to_vec().unwrap(),
            outcome(&s, 0.8, 0.0).recon.to_vec().unwrap()
        );
        // Another cell's name is not this one.
        let resume = CellStore::new(&dir, &s, 5, true).unwrap();
        assert!(resume
            .load(&s, "black-box", "random", "ReLU2")
            .unwrap()
            .is_none());

        // Another seed, another target or other attacked images: another run.
        assert_ne!(
            CellStore::new(&dir, &s, 6, true).unwrap().key(),
            writer.key()
        );
        for other in [
            CellStore::new(&dir, &s, 6, true).unwrap(),
            CellStore::new(&dir, &setup(2), 5, true).unwrap(),
        ] {
            assert!(other
                .load(&s, "black-box", "random", "conv1")
                .unwrap()
                .is_none());
        }
        let mut fewer = setup(1);
        fewer.originals = synthetic_digits(20, 7).batch(&[0, 1]).unwrap().0;
        let store = CellStore::new(&dir, &fewer, 5, true).unwrap();
        assert_ne!(store.key(), writer.key());
        assert!(store
            .load(&fewer, "black-box", "random", "conv1")
            .unwrap()
            .is_none());
        let mut other_data = setup(1);
        other_data.train = synthetic_digits(30, 9);
        assert_ne!(
            CellStore::new(&dir, &other_data, 5, true).unwrap().key(),
            writer.key()
        );
    }

    #[test]
    fn a_damaged_or_misplaced_cell_file_is_an_error_naming_it() {
        let dir = temp_dir("cells-bad");
        let s = setup(1);
        let store = CellStore::new(&dir, &s, 5, true).unwrap();
        stored(&s, &store, 0.8, 3.0);
        let path = store.path("black-box", "random", "conv1");
        let bytes = std::fs::read(&path).unwrap();

        // Copied under another cell's name.
        let other = store.path("white-box", "-", "conv1");
        assert!(other.ends_with("white-box_conv1.safetensors"));
        std::fs::write(&other, &bytes).unwrap();
        let e = store.load(&s, "white-box", "-", "conv1").err().unwrap();
        assert!(e.to_string().contains("holds cell"), "{e}");
        assert!(e.to_string().contains("white-box_conv1"), "{e}");

        // Pixels out of range (a NaN, past 1, below 0): not an attack's.
        for (v, want) in [
            (f32::NAN, "contains NaN or infinite values"),
            (
                1.5,
                "'recon' holds 1.5 at element 4; expected pixels in [0, 1]",
            ),
            (
                -0.25,
                "'recon' holds -0.25 at element 4; expected pixels in [0, 1]",
            ),
        ] {
            let mut o = outcome(&s, 0.8, 3.0);
            let mut px = o.recon.to_vec().unwrap();
            px[4] = v;
            o.recon = Tensor::from_vec(px, o.recon.dims().to_vec()).unwrap();
            let cell = Cell::from_outcome(&s.dataset, "black-box", "random", "conv1", &o);
            store.save(&cell, &o).unwrap();
            let e = store
                .load(&s, "black-box", "random", "conv1")
                .err()
                .unwrap();
            assert!(e.to_string().contains(want), "{e}");
        }

        // Cut short.
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let e = store
            .load(&s, "black-box", "random", "conv1")
            .err()
            .expect("a truncated cell file is refused");
        let msg = e.to_string();
        assert!(msg.contains("black-box_random_conv1.safetensors"), "{msg}");
        assert!(msg.contains("delete the file"), "{msg}");
    }

    /// With every cell stored, `reproduce --resume` runs no attack: the
    /// table is the stored cells, scored again, with their stored seconds.
    #[test]
    fn reproduce_resumes_from_stored_cells() {
        let dir = temp_dir("resume");
        let s = setup(1);
        let store = CellStore::new(&dir, &s, 3, false).unwrap();
        let mut expected = Vec::new();
        let mut cells: Vec<(&str, &str, &str)> = Vec::new();
        for (attack, setting) in ROWS {
            for split in paper_splits(ModelKind::Lenet) {
                cells.push((attack, setting, split));
            }
        }
        for split in ModelKind::Lenet.splits() {
            if !paper_splits(ModelKind::Lenet).contains(split) {
                cells.push(("white-box", "-", split));
            }
        }
        for (i, (attack, setting, split)) in cells.iter().enumerate() {
            let o = outcome(&s, 0.5 + 0.01 * i as f32, 1000.0 + i as f64);
            let cell = Cell::from_outcome(&s.dataset, attack, setting, split, &o);
            store.save(&cell, &o).unwrap();
            expected.push(cell);
        }
        let got = reproduce(&s, &dir, true, 3, true).unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (&g.attack, &g.setting, &g.split),
                (&e.attack, &e.setting, &e.split)
            );
            assert_eq!(g.psnr, e.psnr, "{} {} {}", e.attack, e.setting, e.split);
            assert_eq!(
                g.seconds, e.seconds,
                "{} {} {} was run again",
                e.attack, e.setting, e.split
            );
        }
        let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(md.contains(&format!("{:.2}", expected[0].psnr)), "{md}");
        assert!(dir.join("whitebox_per_layer.png").is_file());
    }
}
