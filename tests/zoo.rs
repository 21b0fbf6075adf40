//! The model zoo: checksums of the committed weights, the spec files
//! describing the built-in nets, and the LeNet's MNIST accuracy (with the
//! real data from `SPLITINV_DATA`).

use splitinv::cli_train::{self, ModelChoice};
use splitinv::data::Split;
use splitinv::models::{spec::NetSpec, ModelKind};
use std::path::Path;

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn manifest() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string("models/manifest.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn zoo_files_match_their_checksums() {
    let m = manifest();
    assert!(!m.is_empty());
    for entry in m {
        let file = Path::new("models").join(entry["file"].as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            sha256_hex(&bytes),
            entry["sha256"].as_str().unwrap(),
            "{}",
            file.display()
        );
    }
}

#[test]
fn spec_files_describe_the_builtin_nets() {
    for (file, kind) in [
        ("models/lenet.json", ModelKind::Lenet),
        ("models/cifar10cnn.json", ModelKind::Cifar10Cnn),
    ] {
        let spec = NetSpec::from_file(Path::new(file)).unwrap();
        let a = spec.build(3).unwrap();
        let b = kind.build(3).unwrap();
        assert_eq!(a.layer_names(), b.layer_names(), "{file}");
        let shapes = |n: &splitinv::nn::Sequential| {
            n.named_params()
                .into_iter()
                .map(|(k, t)| (k, t.dims().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(&a), shapes(&b), "{file}");
    }
}

#[test]
fn lenet_zoo_model_reaches_99_percent_on_mnist() {
    let Some(root) = std::env::var_os("SPLITINV_DATA") else {
        println!("skipped: SPLITINV_DATA not set");
        return;
    };
    let r = cli_train::eval(
        &ModelChoice::Builtin(ModelKind::Lenet),
        Path::new("models/lenet_mnist.safetensors"),
        "mnist",
        Some(Path::new(&root)),
        Split::Test,
    )
    .unwrap();
    let acc = r["accuracy"].as_f64().unwrap();
    let listed = manifest()[0]["test_accuracy"].as_f64().unwrap();
    println!("LeNet MNIST test accuracy {acc:.4} (manifest {listed:.4})");
    assert!(acc >= 0.99, "accuracy {acc}");
    assert!(
        (acc - listed).abs() < 1e-4,
        "manifest says {listed}, measured {acc}"
    );
}

#[test]
fn zoo_lists_both_target_models() {
    let m = manifest();
    for (model, dataset) in [("lenet", "mnist"), ("cifar10cnn", "cifar10")] {
        assert!(
            m.iter()
                .any(|e| e["model"] == model && e["dataset"] == dataset),
            "manifest has no {model}/{dataset} entry"
        );
    }
}

#[test]
fn cifar_zoo_model_matches_its_manifest_accuracy_on_the_exact_test_images() {
    let Some(root) = std::env::var_os("SPLITINV_DATA") else {
        println!("skipped: SPLITINV_DATA not set");
        return;
    };
    // `cifar10`'s test split is the 1000 exact test records when present.
    let r = cli_train::eval(
        &ModelChoice::Builtin(ModelKind::Cifar10Cnn),
        Path::new("models/cifar10cnn_cifar10.safetensors"),
        "cifar10",
        Some(Path::new(&root)),
        Split::Test,
    )
    .unwrap();
    let acc = r["accuracy"].as_f64().unwrap();
    let images = r["images"].as_u64().unwrap();
    let listed = manifest()
        .into_iter()
        .find(|e| e["model"] == "cifar10cnn")
        .and_then(|e| e["test_accuracy"].as_f64())
        .unwrap();
    println!("CIFAR10CNN test accuracy {acc:.4} on {images} images (manifest {listed:.4})");
    assert_eq!(images, 1000, "expected the 1000 exact CIFAR-10 test images");
    // The target.
    assert!(acc >= 0.85, "accuracy {acc}");
    assert!(
        (acc - listed).abs() < 1e-4,
        "manifest says {listed}, measured {acc}"
    );
}

/// `reproduce` trains a missing target with `reproduce::zoo_recipe`; that
/// recipe must be the manifest's command, flag for flag.
#[test]
fn reproduce_trains_missing_targets_with_the_manifest_recipe() {
    use splitinv::reproduce::zoo_recipe;
    use splitinv::train::TrainConfig;
    for (model, kind) in [
        ("lenet", ModelKind::Lenet),
        ("cifar10cnn", ModelKind::Cifar10Cnn),
    ] {
        let entry = manifest()
            .into_iter()
            .find(|e| e["model"] == model)
            .unwrap();
        let cmd = entry["command"].as_str().unwrap().to_string();
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let flag = |name: &str| {
            words
                .iter()
                .position(|w| *w == name)
                .map(|i| words[i + 1].to_string())
        };
        let d = TrainConfig::default();
        let r = zoo_recipe(kind);
        let num = |name: &str, default: f64| -> f64 {
            flag(name).map_or(default, |v| v.parse().unwrap())
        };
        assert_eq!(
            r.epochs as f64,
            num("--epochs", d.epochs as f64),
            "{model} epochs in {cmd}"
        );
        assert_eq!(
            r.batch as f64,
            num("--batch", d.batch as f64),
            "{model} batch"
        );
        assert_eq!(
            r.lr as f64,
            num("--lr", d.lr as f64) as f32 as f64,
            "{model} lr"
        );
        assert_eq!(
            r.lr_step as f64,
            num("--lr-step", d.lr_step as f64),
            "{model} lr-step"
        );
        assert_eq!(
            r.lr_gamma,
            num("--lr-gamma", d.lr_gamma as f64) as f32,
            "{model} lr-gamma"
        );
        assert_eq!(r.seed as f64, num("--seed", d.seed as f64), "{model} seed");
        assert_eq!(
            r.swa_from,
            flag("--swa-from").map(|v| v.parse().unwrap()),
            "{model} swa-from"
        );
        assert_eq!(
            r.swa_lr,
            flag("--swa-lr").map(|v| v.parse().unwrap()),
            "{model} swa-lr"
        );
    }
}
