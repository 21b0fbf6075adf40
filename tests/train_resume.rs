//! Checkpoints and `--resume`: an interrupted run, resumed, ends with exactly
//! the weights of an uninterrupted one (the shuffle and augmentation are
//! seeded per epoch, and the checkpoint carries Adam's moments and the
//! weight average), including a process killed with SIGKILL mid-epoch.

use splitinv::attacks::whitebox::Normalization;
use splitinv::checkpoint::{self, TrainState};
use splitinv::data::synthetic::synthetic_digits;
use splitinv::experiment::train_classifier;
use splitinv::models::ModelKind;
use splitinv::nn::{weights, Sequential};
use splitinv::optim::{Adam, Optimizer};
use splitinv::tensor::Tensor;
use splitinv::train::{SwaAverage, TrainConfig};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::ScratchDir;

fn values(net: &Sequential) -> Vec<Vec<f32>> {
    net.params().iter().map(|p| p.to_vec().unwrap()).collect()
}

fn cfg(epochs: usize, swa_from: Option<usize>) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 32,
        lr: 2e-3,
        lr_step: 2,
        lr_gamma: 0.5,
        seed: 7,
        progress: false,
        swa_from,
        swa_lr: swa_from.map(|_| 1e-3),
        ..TrainConfig::default()
    }
}

/// Trains LeNet on 320 synthetic digits for `epochs`, starting from
/// `resume`; returns the net and the state after every epoch, and writes a
/// checkpoint after every epoch to `save_to` (as `splitinv train` does).
fn run_saving(
    epochs: usize,
    swa_from: Option<usize>,
    net: Option<Sequential>,
    resume: TrainState,
    save_to: Option<&std::path::Path>,
) -> (Sequential, Vec<TrainState>) {
    let train = synthetic_digits(320, 1);
    let (m, s) = ModelKind::Lenet.normalization();
    let norm = Normalization::new(m, s);
    let mut net = net.unwrap_or_else(|| ModelKind::Lenet.build(3).unwrap());
    let mut states = Vec::new();
    train_classifier(
        &mut net,
        &train,
        None,
        &norm,
        &cfg(epochs, swa_from),
        None,
        resume,
        &mut |n, _, st| {
            if let Some(p) = save_to {
                checkpoint::save(n, st, p)?;
            }
            states.push(st.clone());
            Ok(())
        },
    )
    .unwrap();
    (net, states)
}

fn run(
    epochs: usize,
    swa_from: Option<usize>,
    net: Option<Sequential>,
    resume: TrainState,
) -> (Sequential, Vec<TrainState>) {
    run_saving(epochs, swa_from, net, resume, None)
}

#[test]
fn resumed_training_matches_uninterrupted_training_exactly() {
    for swa_from in [None, Some(1)] {
        let (full, _) = run(4, swa_from, None, TrainState::default());
        // Stop after epoch 2 with a checkpoint, load it into a fresh net, go on.
        let dir = ScratchDir::new("resume-lib");
        let path = dir.join("ckpt.safetensors");
        let (_, states) = run_saving(2, swa_from, None, TrainState::default(), Some(&path));
        let mut fresh = ModelKind::Lenet.build(99).unwrap();
        let state = checkpoint::load(&mut fresh, &path).unwrap();
        let saved = &states[1];
        assert_eq!(state.epochs_done, 2);
        assert_eq!(state.adam, saved.adam, "Adam moments survive the file");
        assert_eq!(state.swa, saved.swa, "the average survives the file");
        assert_eq!(state.swa.as_ref().map(|s| s.count), swa_from.map(|f| 2 - f));
        let (resumed, _) = run(4, swa_from, Some(fresh), state);
        assert_eq!(
            values(&resumed),
            values(&full),
            "swa_from {swa_from:?}: resumed weights differ from an uninterrupted run"
        );
    }
}

#[test]
fn resuming_without_adam_moments_is_a_different_run() {
    // Guards the test above: it only means something if losing the moments
    // would change the result.
    let (full, _) = run(3, None, None, TrainState::default());
    let (_, states) = run(1, None, None, TrainState::default());
    let (half, _) = run(1, None, None, TrainState::default());
    let mut state = states[0].clone();
    state.adam = None;
    let (resumed, _) = run(3, None, Some(half), state);
    assert_ne!(values(&resumed), values(&full));
}

#[test]
fn swa_average_is_the_mean_of_the_snapshots() {
    let p = Tensor::from_vec(vec![1.0, -2.0], vec![2]).unwrap();
    let mut avg = SwaAverage::default();
    for v in [[1.0, -2.0], [3.0, 0.0], [8.0, 5.0]] {
        p.assign(&Tensor::from_vec(v.to_vec(), vec![2]).unwrap())
            .unwrap();
        avg.update(std::slice::from_ref(&p)).unwrap();
    }
    assert_eq!(avg.count, 3);
    assert_eq!(avg.values, vec![vec![4.0, 1.0]]);
    avg.write_into(std::slice::from_ref(&p)).unwrap();
    assert_eq!(p.to_vec().unwrap(), vec![4.0, 1.0]);
    let q = Tensor::from_vec(vec![0.0; 3], vec![3]).unwrap();
    assert!(avg.update(&[p.clone(), q]).is_err());
}

#[test]
fn adam_state_round_trip_continues_identically() {
    let grads_for = |p: &Tensor, k: f32| {
        let loss = splitinv::ops::sum(
            &splitinv::ops::scale(&splitinv::ops::mul(p, p).unwrap(), k).unwrap(),
        )
        .unwrap();
        loss.backward().unwrap()
    };
    let make = || {
        Tensor::from_vec(vec![0.5, -1.5, 2.0], vec![3])
            .unwrap()
            .requires_grad()
    };
    let (a, b) = (make(), make());
    let mut opt_a = Adam::new(0.1).with_amsgrad(true);
    for k in [1.0, 2.0] {
        opt_a
            .step(std::slice::from_ref(&a), &grads_for(&a, k))
            .unwrap();
    }
    b.assign(&a.detach()).unwrap();
    let mut opt_b = Adam::new(0.1).with_amsgrad(true);
    opt_b
        .import_state(std::slice::from_ref(&b), opt_a.export_state().unwrap())
        .unwrap();
    for k in [3.0, 0.5] {
        opt_a
            .step(std::slice::from_ref(&a), &grads_for(&a, k))
            .unwrap();
        opt_b
            .step(std::slice::from_ref(&b), &grads_for(&b, k))
            .unwrap();
    }
    assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    // A state of the wrong length or without AMSGrad's maximum is refused.
    let mut st = opt_a.export_state().unwrap();
    let short = Tensor::from_vec(vec![0.0; 2], vec![2]).unwrap();
    assert!(Adam::new(0.1).import_state(&[short], st.clone()).is_err());
    if let Some(Some(m)) = st.get_mut(0) {
        m.vmax = None;
    }
    assert!(Adam::new(0.1)
        .with_amsgrad(true)
        .import_state(std::slice::from_ref(&b), st)
        .is_err());
}

#[test]
fn checkpoint_with_incomplete_optimizer_state_is_rejected() {
    let dir = ScratchDir::new("resume-incomplete");
    let net = ModelKind::Lenet.build(0).unwrap();
    let path = dir.join("ok.ckpt");
    let (_, states) = run(1, None, None, TrainState::default());
    checkpoint::save(&net, &states[0], &path).unwrap();
    // Drop one moment tensor by rewriting the file without it.
    let (mut tensors, meta) = weights::read_tensors(&path).unwrap();
    tensors.retain(|(n, _, _)| n != "__adam_v__.conv1.weight");
    let broken = dir.join("broken.ckpt");
    weights::write_tensors(&broken, &tensors, Some(meta.clone())).unwrap();
    let mut net2 = ModelKind::Lenet.build(0).unwrap();
    let err = checkpoint::load(&mut net2, &broken)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv1.weight") && err.contains("incomplete"),
        "{err}"
    );
    // No epochs_done: refused, naming the file.
    let mut meta2 = meta;
    meta2.remove("epochs_done");
    let nometa = dir.join("nometa.ckpt");
    weights::write_tensors(&nometa, &tensors, Some(meta2)).unwrap();
    let err = checkpoint::load(&mut net2, &nometa)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("epochs_done") && err.contains("nometa.ckpt"),
        "{err}"
    );
    // AMSGrad's maximum left behind for a parameter whose m and v are gone.
    let (mut stray, mut meta3) = weights::read_tensors(&path).unwrap();
    stray.retain(|(n, _, _)| n != "__adam_m__.conv2.bias" && n != "__adam_v__.conv2.bias");
    meta3.remove("adam_step.conv2.bias");
    let stray_path = dir.join("stray.ckpt");
    weights::write_tensors(&stray_path, &stray, Some(meta3)).unwrap();
    let err = checkpoint::load(&mut net2, &stray_path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("optimiser state of 'conv2.bias' is incomplete"),
        "{err}"
    );
    // A negative second moment: a damaged file, not a training problem.
    let (mut negative, meta4) = weights::read_tensors(&path).unwrap();
    for (n, _, v) in negative.iter_mut() {
        if n == "__adam_v__.fc1.bias" {
            v[3] = -0.5;
        }
    }
    let neg_path = dir.join("negative.ckpt");
    weights::write_tensors(&neg_path, &negative, Some(meta4)).unwrap();
    let err = checkpoint::load(&mut net2, &neg_path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("negative.ckpt")
            && err.contains("tensor '__adam_v__.fc1.bias' holds -0.5 at element 3"),
        "{err}"
    );
}

#[test]
fn checkpoint_counters_and_state_shapes_are_checked_naming_the_key() {
    let dir = ScratchDir::new("resume-corrupt");
    let (net, states) = run(1, Some(0), None, TrainState::default());
    let path = dir.join("ok.ckpt");
    checkpoint::save(&net, &states[0], &path).unwrap();
    let (tensors, meta) = weights::read_tensors(&path).unwrap();
    // Counters that would overflow the next step (they panicked before).
    for (key, value) in [
        ("adam_step.conv1.weight", "18446744073709551615"),
        ("swa_count", "18446744073709551615"),
        ("epochs_done", "many"),
    ] {
        let mut m = meta.clone();
        m.insert(key.into(), value.into());
        let bad = dir.join("counter.ckpt");
        weights::write_tensors(&bad, &tensors, Some(m)).unwrap();
        let mut n = ModelKind::Lenet.build(0).unwrap();
        let err = checkpoint::load(&mut n, &bad).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(value) && err.contains("counter.ckpt"),
            "{key}: {err}"
        );
    }
    // A moment with the parameter's element count but another shape.
    let mut t = tensors.clone();
    let entry = t
        .iter_mut()
        .find(|(n, _, _)| n == "__adam_m__.fc1.weight")
        .unwrap();
    entry.1.reverse();
    let want = format!("tensor '__adam_m__.fc1.weight' has shape {:?}", entry.1);
    let bad = dir.join("shape.ckpt");
    weights::write_tensors(&bad, &t, Some(meta)).unwrap();
    let mut n = ModelKind::Lenet.build(0).unwrap();
    let err = checkpoint::load(&mut n, &bad).unwrap_err().to_string();
    assert!(err.contains(&want) && err.contains("shape.ckpt"), "{err}");
}

#[test]
fn a_resumed_average_is_not_the_result_of_a_run_that_does_not_average() {
    // A checkpoint with a weight average, resumed by a run without
    // averaging (an older checkpoint, which records no settings): the
    // result is the trained weights, not the stale average.
    let (net, states) = run(1, Some(0), None, TrainState::default());
    let stale = states[0].swa.clone().unwrap().values;
    let (net, _) = run(2, None, Some(net), states[0].clone());
    let got = values(&net);
    assert_eq!(got.len(), stale.len());
    assert!(
        got != stale,
        "the run ended on the checkpoint's old average"
    );
}

/// Runs `splitinv train` on synthetic digits writing to `out` with
/// `--resume` and `extra`; returns whether it succeeded, and its stderr.
fn resume_cmd(out: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--device", "cpu", "train", "--model", "lenet"];
    args.extend(["--dataset", "synthetic-digits", "--limit", "64"]);
    args.extend(extra);
    args.extend(["--resume", "--out", out.to_str().unwrap()]);
    let (ok, _, stderr) = common::run_splitinv(&[], &args);
    (ok, stderr)
}

#[test]
fn resume_refuses_a_checkpoint_of_other_settings_or_beyond_the_epochs() {
    let dir = ScratchDir::new("resume-settings");
    let out = dir.join("w.safetensors");
    let ckpt = splitinv::cli_train::checkpoint_path(&out);
    let (net, states) = run(1, None, None, TrainState::default());
    // Written by a run with --lr 0.5 (and, as recorded, nothing else set).
    let other = TrainState {
        run: Some(r#"{"lr": 0.5}"#.into()),
        ..states[0].clone()
    };
    checkpoint::save(&net, &other, &ckpt).unwrap();
    let (ok, err) = resume_cmd(&out, &["--epochs", "3"]);
    assert!(!ok, "resumed a run of other settings");
    assert!(
        err.contains("written by a run with other settings")
            && err.contains("lr 0.5 there, 0.001")
            && err.contains(r#"model null there, "Lenet" now"#)
            && err.contains("w.safetensors.ckpt"),
        "{err}"
    );
    assert!(!out.exists(), "wrote weights after refusing");
    // Three epochs done, two asked for.
    let ahead = TrainState {
        epochs_done: 3,
        run: None,
        ..states[0].clone()
    };
    checkpoint::save(&net, &ahead, &ckpt).unwrap();
    let (ok, err) = resume_cmd(&out, &["--epochs", "2"]);
    assert!(!ok, "resumed a checkpoint beyond --epochs");
    assert!(
        err.contains("after epoch 3, beyond --epochs 2") && err.contains("w.safetensors.ckpt"),
        "{err}"
    );
    assert!(!out.exists(), "wrote weights after refusing");
    // Exactly done (stopped before it saved): saved as they are, and scored.
    let (ok, err) = resume_cmd(&out, &["--epochs", "3"]);
    assert!(ok, "{err}");
    let (saved, meta) = weights::read_tensors(&out).unwrap();
    let acc: f64 = meta["test_accuracy"].parse().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{meta:?}");
    let fc1 = &saved.iter().find(|(n, _, _)| n == "fc1.weight").unwrap().2;
    assert_eq!(
        fc1,
        &values(&net)[4],
        "the saved weights are not the checkpoint's"
    );
    std::fs::remove_file(&out).unwrap();
    // AMSGrad's running maximum missing for one parameter.
    checkpoint::save(&net, &states[0], &ckpt).unwrap();
    let (mut tensors, meta) = weights::read_tensors(&ckpt).unwrap();
    tensors.retain(|(n, _, _)| n != "__adam_vmax__.fc2.bias");
    weights::write_tensors(&ckpt, &tensors, Some(meta)).unwrap();
    let (ok, err) = resume_cmd(&out, &["--epochs", "2", "--lr", "0.002"]);
    assert!(!ok, "resumed without a running maximum");
    assert!(
        err.contains("no running maximum (__adam_vmax__.fc2.bias) for 'fc2.bias'")
            && err.contains("w.safetensors.ckpt"),
        "{err}"
    );
}

fn train_cmd(out: &std::path::Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_splitinv"));
    c.args([
        "--device",
        "cpu",
        "train",
        "--model",
        "lenet",
        "--dataset",
        "synthetic-digits",
        "--limit",
        "3000",
        "--epochs",
        "6",
        "--lr-step",
        "2",
        "--swa-from",
        "1",
        "--seed",
        "5",
        "--json",
        "--out",
    ])
    .arg(out);
    if resume {
        c.arg("--resume");
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

#[test]
fn sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights() {
    let dir = ScratchDir::new("resume-sigkill");
    let full = dir.join("full.safetensors");
    assert!(train_cmd(&full, false).status().unwrap().success());

    let cut = dir.join("cut.safetensors");
    let ckpt = splitinv::cli_train::checkpoint_path(&cut);
    // Kill as soon as the first epoch's checkpoint exists: the run is then
    // somewhere inside epochs 2–6. On a loaded machine this test thread can
    // sleep through all five remaining epochs; then the run has finished
    // and there is nothing to resume, so start over (at most three times).
    let mut killed = false;
    for _attempt in 0..3 {
        let _ = std::fs::remove_file(&cut);
        let _ = std::fs::remove_file(&ckpt);
        let mut child = train_cmd(&cut, false).spawn().unwrap();
        let t0 = Instant::now();
        while !ckpt.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "no checkpoint appeared"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("training ended ({status}) before it could be killed");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if !cut.exists() {
            killed = true;
            break;
        }
        println!("the run finished before the kill landed; trying again");
    }
    assert!(killed, "three runs finished before they could be killed");

    assert!(train_cmd(&cut, true).status().unwrap().success());
    let (a, _) = weights::read_tensors(&full).unwrap();
    let (b, _) = weights::read_tensors(&cut).unwrap();
    assert_eq!(a.len(), b.len());
    for ((na, _, va), (nb, _, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after kill + resume");
    }
    assert!(
        !ckpt.exists(),
        "the checkpoint is removed once the run completes"
    );
}
