//! Bad attack options are refused before any work starts, with an error
//! that names the value and what was expected, and a non-zero exit.

use std::path::Path;
use std::process::Command;

mod common;
use common::ScratchDir;

/// Runs `splitinv --device cpu ARGS...`: whether it succeeded, stdout and
/// stderr.
fn splitinv(args: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> = ["--device", "cpu"].iter().chain(args).copied().collect();
    common::run_splitinv(&[], &args)
}

/// Writes two 28×28 grey PNGs into `<root>/<split>/<class>/` for each class.
fn image_folder(root: &Path, split: &str, classes: &[&str]) {
    for (k, c) in classes.iter().enumerate() {
        let dir = root.join(split).join(c);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2u8 {
            image::GrayImage::from_fn(28, 28, |x, y| {
                image::Luma([(x as u8 * 9) ^ (y as u8 + i + k as u8)])
            })
            .save(dir.join(format!("{i}.png")))
            .unwrap();
        }
    }
}

/// Runs `splitinv --device cpu attack ATTACK --dataset cifar10 --split
/// ReLU32 --setting SETTING EXTRA...`: whether it succeeded, and its stderr.
fn attack(attack: &str, setting: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "attack",
        attack,
        "--dataset",
        "cifar10",
        "--split",
        "ReLU32",
    ];
    args.extend(["--setting", setting]);
    args.extend(extra);
    let (ok, _, stderr) = splitinv(&args);
    (ok, stderr)
}

#[test]
fn a_malformed_noise_model_is_refused_naming_the_value() {
    for (spec, why) in [
        ("0.5,0.2,pink", "unknown texture `pink`"),
        ("0.5,0.2", "three or four comma-separated fields"),
        (
            "0.5,0.2,powerlaw:2,1.5",
            "shared fraction must lie in [0, 1]",
        ),
    ] {
        let (ok, stderr) = attack("blackbox", "random", &["--noise", spec]);
        assert!(!ok, "{spec} was accepted");
        assert!(
            stderr.contains(spec) && stderr.contains(why) && stderr.contains("MEAN,SPREAD,TEXTURE"),
            "{spec}: {stderr}"
        );
    }
}

#[test]
fn a_noise_model_outside_the_black_box_random_setting_is_refused() {
    for (name, setting) in [("blackbox", "same-set"), ("queryfree", "diff-set-same-net")] {
        let (ok, stderr) = attack(name, setting, &["--noise", "0.47,0.2,powerlaw:3,0.9"]);
        assert!(!ok, "{name} {setting} accepted --noise");
        assert!(
            stderr.contains("only applies to `attack blackbox --setting random`")
                && stderr.contains(setting),
            "{stderr}"
        );
    }
}

#[test]
fn a_training_rate_or_epsilon_that_is_not_positive_is_refused() {
    for (flag, value) in [
        ("--train-eps", "0"),
        ("--train-eps", "-1e-8"),
        ("--train-lr", "NaN"),
        ("--train-lr", "0"),
    ] {
        // `--flag=value`: clap would read a separate `-1e-8` as a flag.
        let (ok, stderr) = attack("blackbox", "same-set", &[&format!("{flag}={value}")]);
        assert!(!ok, "{flag} {value} was accepted");
        assert!(
            stderr.contains(flag) && stderr.contains("must be a positive number"),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn counts_of_zero_and_absurd_shadow_counts_are_refused_naming_the_flag() {
    let train = "train --model lenet --dataset synthetic-digits --out /tmp/never.safetensors";
    let mnist = "--dataset mnist --split conv1";
    for (cmd, flag) in [
        (format!("{train} --epochs 0"), "--epochs"),
        (format!("{train} --limit 0"), "--limit"),
        (
            format!("attack whitebox {mnist} --iterations 0"),
            "--iterations",
        ),
        (format!("attack whitebox {mnist} --images 0"), "--images"),
        (
            format!("attack blackbox {mnist} --train-epochs 0"),
            "--train-epochs",
        ),
        (
            format!("attack queryfree {mnist} --shadows 1000000000"),
            "--shadows",
        ),
        ("reproduce --dataset mnist --images 0".into(), "--images"),
    ] {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let (ok, _, err) = splitinv(&args);
        assert!(!ok, "{cmd} was accepted");
        assert!(
            err.contains(flag) && (err.contains("at least 1") || err.contains("at most 64")),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn outputs_of_the_wrong_kind_and_unknown_attacks_are_refused_before_any_work() {
    let dir = ScratchDir::new("cli-outputs");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (d, f) = (dir.to_str().unwrap(), file.to_str().unwrap());
    // Weights that do not exist yet: setup would train the target first.
    let mnist = "--dataset mnist --split conv1";
    let new = "--weights /nonexistent/w.safetensors";
    for (cmd, want) in [
        // A folder where the weights file goes: found out only after
        // training, before this check.
        (
            format!("train --model lenet --dataset synthetic-digits --out {d}"),
            "must be a file path, not a folder",
        ),
        (
            format!("attack whitebox {mnist} --out {f}"),
            "must be a folder (it is a file)",
        ),
        (format!("attack whitebox {mnist} --gif {d}"), "--gif"),
        (
            format!("attack blackbox {mnist} --gif /tmp/x.gif"),
            "only `attack whitebox` writes a GIF",
        ),
        (
            format!("reproduce --dataset mnist --out {f}"),
            "must be a folder (it is a file)",
        ),
        (format!("demo --out {f}"), "must be a folder (it is a file)"),
        // A typo'd attack or split: an error now, not after the training.
        (format!("attack whitebx {mnist} {new}"), "whitebx"),
        (
            format!("attack whitebox --dataset mnist --split conv9 {new}"),
            "conv9",
        ),
        (
            format!("attack whitebox {mnist} --weights {d}"),
            "is a folder",
        ),
        (
            format!("attack whitebox {mnist} --weights /nonexistent/new/"),
            "is a folder",
        ),
        // Settings and tuning flags.
        (
            format!("attack blackbox {mnist} --setting bogus {new}"),
            "bogus",
        ),
        (
            format!("attack whitebox {mnist} --setting same-set {new}"),
            "the white-box attack has no settings",
        ),
        (format!("attack whitebox {mnist} --lr 0 {new}"), "lr=0"),
        (
            format!("attack whitebox {mnist} --lambda-tv=-1 {new}"),
            "λ_TV",
        ),
        (
            format!("attack queryfree {mnist} --moment-weight NaN {new}"),
            "--moment-weight",
        ),
        (
            format!("attack queryfree {mnist} --moment-projections 100000 {new}"),
            "at most 4096",
        ),
        // A file output inside a file.
        (
            format!("train --model lenet --dataset synthetic-digits --out {f}/w.safetensors"),
            "is not one",
        ),
    ] {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let (ok, _, err) = splitinv(&args);
        assert!(!ok, "{cmd} was accepted");
        assert!(err.contains(want), "{cmd}: {err}");
        assert!(
            !err.contains("training") && !err.contains("epoch"),
            "{cmd} trained first: {err}"
        );
    }
    assert!(!Path::new("/nonexistent/w.safetensors").exists());
    // `<out>.ckpt` a folder: training would fail after its first epoch.
    std::fs::create_dir(dir.join("w.safetensors.ckpt")).unwrap();
    let out = dir.join("w.safetensors");
    let (ok, _, err) = splitinv(&[
        "train",
        "--model",
        "lenet",
        "--dataset",
        "synthetic-digits",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("checkpoint") && err.contains("not a folder"),
        "{err}"
    );
    // A FIFO (or, as root, /dev/null) would be replaced by a plain file.
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (ok, _, err) = splitinv(&[
        "train",
        "--model",
        "lenet",
        "--dataset",
        "synthetic-digits",
        "--out",
        fifo.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("must be a regular file"), "{err}");
    assert!(!fifo.is_file(), "the FIFO was replaced");
}

#[test]
fn an_unknown_simd_level_is_refused() {
    let (ok, _, err) =
        common::run_splitinv(&[("SPLITINV_SIMD", "avx9")], &["--device", "cpu", "info"]);
    assert!(!ok, "SPLITINV_SIMD=avx9 was accepted");
    assert!(
        err.contains("SPLITINV_SIMD='avx9' is not one of scalar, neon, avx2, avx512"),
        "{err}"
    );
}

#[test]
fn folder_datasets_must_have_the_models_classes_in_both_splits() {
    let dir = ScratchDir::new("cli-folder-classes");
    let digits: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
    let digits: Vec<&str> = digits.iter().map(String::as_str).collect();
    // Ten classes for training, nine for testing.
    image_folder(&dir.join("ten-nine"), "train", &digits);
    image_folder(&dir.join("ten-nine"), "test", &digits[1..]);
    // Ten and ten, one of them named differently.
    let mut other = digits.clone();
    other[9] = "e9";
    image_folder(&dir.join("renamed"), "train", &digits);
    image_folder(&dir.join("renamed"), "test", &other);
    let out = dir.join("w.safetensors");
    for (root, want) in [
        ("ten-nine", "(test split) has 9 classes (d1, d2, d3, d4, d5, d6, d7, d8, d9) but the model has 10 outputs"),
        ("renamed", "the training split's classes (d0, d1, d2, d3, d4, d5, d6, d7, d8, d9) are not the test split's (d0, d1, d2, d3, d4, d5, d6, d7, d8, e9)"),
    ] {
        let ds = format!("folder:{}", dir.join(root).display());
        let (ok, _, err) = splitinv(&["train", "--model", "lenet", "--dataset", &ds, "--epochs", "1", "--out", out.to_str().unwrap()]);
        assert!(!ok, "{root} was accepted");
        assert!(err.contains(want), "{root}: {err}");
    }
    assert!(!out.exists());
    // Eval sees the test split alone: the count is still checked.
    let ds = format!("folder:{}", dir.join("ten-nine").display());
    let (ok, _, err) = splitinv(&[
        "eval",
        "--model",
        "lenet",
        "--weights",
        "models/lenet_mnist.safetensors",
        "--dataset",
        &ds,
    ]);
    assert!(!ok && err.contains("has 9 classes"), "{err}");
}

#[test]
fn train_json_prints_only_the_json_summary_on_stdout() {
    let dir = ScratchDir::new("cli-train-json");
    let out = dir.join("w.safetensors");
    let (ok, stdout, err) = splitinv(&[
        "train",
        "--model",
        "lenet",
        "--dataset",
        "synthetic-digits",
        "--limit",
        "64",
        "--epochs",
        "1",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["epochs"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        err.contains("epoch   1/1"),
        "the progress lines went missing: {err}"
    );
}

#[test]
fn a_spec_whose_batch_cannot_fit_in_memory_is_refused_before_training() {
    let dir = ScratchDir::new("cli-spec-memory");
    let spec = dir.join("wide.json");
    std::fs::write(
        &spec,
        r#"{"name": "wide", "input": [1, 28, 28],
            "normalization": {"mean": [0.5], "std": [0.5]},
            "layers": [
              {"name": "conv", "type": "conv2d", "in": 1, "out": 1024, "kernel": 3, "padding": 1},
              {"name": "flat", "type": "flatten"},
              {"name": "fc", "type": "linear", "in": 802816, "out": 10}]}"#,
    )
    .unwrap();
    let out = dir.join("w.safetensors");
    // 784 + 2 · 802,816 + 10 = 1,606,426 floats per image; a batch holds
    // at most the 60,000 training images: ×8 bytes, about 718 GiB.
    let (ok, _, err) = splitinv(&[
        "train",
        "--model",
        spec.to_str().unwrap(),
        "--dataset",
        "synthetic-digits",
        "--batch",
        "100000000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a 718 GiB batch was accepted");
    assert!(
        err.contains(
            "wide at --batch 100000000 (60000 images, the whole training set) needs about 718.1 GiB"
        ) && err.contains("lower --batch"),
        "{err}"
    );
    // The same spec at a batch that fits trains (on a tiny MNIST: its
    // evaluation would take a while on the 10,000 synthetic test images).
    tiny_mnist(&dir, 20, 12);
    let (ok, _, err) = splitinv(&[
        "--data",
        dir.to_str().unwrap(),
        "train",
        "--model",
        spec.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.is_file());
}

/// Writes a tiny MNIST (IDX files of 28×28 images, labels cycling 0..10)
/// into `<root>/mnist/`: `train` and `test` images.
fn tiny_mnist(root: &Path, train: usize, test: usize) {
    let dir = root.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let pixels: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 7 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = dir.join(format!("{prefix}-images-idx3-ubyte"));
        splitinv::data::idx::write_idx(&images, &[n, 28, 28], &pixels).unwrap();
        let labels_file = dir.join(format!("{prefix}-labels-idx1-ubyte"));
        splitinv::data::idx::write_idx(&labels_file, &[n], &labels).unwrap();
    }
}

/// More images than the test set holds: an error naming the count and the
/// file, before a missing target is trained; every test image attacked
/// leaves a same-distribution attacker nothing to train on: an error
/// naming the setting, not "the training set is empty".
#[test]
fn attacking_more_test_images_than_there_are_is_refused() {
    let dir = ScratchDir::new("cli-images-count");
    tiny_mnist(&dir, 20, 12);
    let data = dir.to_str().unwrap();
    let new = dir.join("w.safetensors");
    let (ok, _, err) = splitinv(&[
        "--data",
        data,
        "attack",
        "whitebox",
        "--dataset",
        "mnist",
        "--split",
        "conv1",
        "--images",
        "13",
        "--weights",
        new.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--images: 13 images asked for")
            && err.contains("t10k-images-idx3-ubyte) holds 12 images; expected at most 12"),
        "{err}"
    );
    assert!(!err.contains("training") && !new.exists(), "{err}");
    for (attack, setting) in [
        ("blackbox", "same-dist"),
        ("queryfree", "diff-set-same-net"),
    ] {
        let (ok, _, err) = splitinv(&[
            "--data",
            data,
            "attack",
            attack,
            "--dataset",
            "mnist",
            "--split",
            "conv1",
            "--setting",
            setting,
            "--images",
            "12",
            "--weights",
            "models/lenet_mnist.safetensors",
            "--out",
            dir.join("out").to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(
            err.contains(&format!(
                "the {setting} setting trains on the test images that are not attacked, \
                 and attacking 12 leaves none"
            )),
            "{attack} {setting}: {err}"
        );
    }
    // reproduce says so before its first cell.
    let (ok, stdout, err) = splitinv(&[
        "--data",
        data,
        "reproduce",
        "--dataset",
        "mnist",
        "--images",
        "12",
        "--weights",
        "models/lenet_mnist.safetensors",
        "--out",
        dir.join("repro").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("the same-dist and diff-set cells train on the test images that are not attacked, and attacking 12 leaves none"),
        "{err}"
    );
    assert!(!stdout.contains("white-box"), "{stdout}");
}
