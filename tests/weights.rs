//! Weight files: save → load round trips, and every way a file can fail to
//! fit a model gets an error naming the file and listing what is wrong.

use splitinv::models::ModelKind;
use splitinv::nn::weights::{self, NamedValues};
use splitinv::nn::Sequential;
use std::collections::HashMap;

mod common;
use common::ScratchDir;

fn values(net: &Sequential) -> Vec<Vec<f32>> {
    net.params().iter().map(|p| p.to_vec().unwrap()).collect()
}

#[test]
fn save_load_round_trip_is_exact_for_both_models() {
    let dir = ScratchDir::new("weights-round-trip");
    for kind in [ModelKind::Lenet, ModelKind::Cifar10Cnn] {
        let a = kind.build(1).unwrap();
        let path = dir.join(format!("{kind:?}.safetensors"));
        let meta = HashMap::from([("note".to_string(), "round trip".to_string())]);
        weights::save(&a, &path, Some(meta)).unwrap();
        let mut b = kind.build(2).unwrap();
        assert_ne!(values(&a), values(&b), "differently seeded nets differ");
        let got = weights::load_with_metadata(&mut b, &path).unwrap();
        assert_eq!(values(&a), values(&b));
        assert_eq!(got.get("note").map(String::as_str), Some("round trip"));
        // PyTorch state_dict names.
        let (tensors, _) = weights::read_tensors(&path).unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _, _)| n.as_str()).collect();
        assert!(
            names.contains(&"fc2.weight") && names.contains(&"fc2.bias"),
            "{names:?}"
        );
        assert!(names
            .iter()
            .all(|n| n.ends_with(".weight") || n.ends_with(".bias")));
    }
}

#[test]
fn loading_into_the_other_architecture_lists_every_mismatch() {
    let dir = ScratchDir::new("weights-other-arch");
    let lenet = ModelKind::Lenet.build(0).unwrap();
    let path = dir.join("lenet_for_cifar.safetensors");
    weights::save(&lenet, &path, None).unwrap();
    let mut cifar = ModelKind::Cifar10Cnn.build(0).unwrap();
    let before = values(&cifar);
    let err = weights::load(&mut cifar, &path).unwrap_err().to_string();
    assert!(err.contains("lenet_for_cifar.safetensors"), "{err}");
    assert!(err.contains("unexpected tensor 'conv1.weight'"), "{err}");
    assert!(err.contains("'fc2.weight': file has shape"), "{err}");
    assert!(err.contains("missing tensor 'conv22.weight'"), "{err}");
    assert_eq!(values(&cifar), before, "a failed load changes nothing");
}

#[test]
fn unexpected_missing_and_reshaped_tensors_are_named() {
    let dir = ScratchDir::new("weights-named");
    let net = ModelKind::Lenet.build(0).unwrap();
    let mut tensors: Vec<NamedValues> = weights::param_values(&net).unwrap();
    tensors.retain(|(n, _, _)| n != "fc1.bias");
    tensors.push(("bn.num_batches_tracked".into(), vec![1], vec![0.0]));
    if let Some(t) = tensors.iter_mut().find(|(n, _, _)| n == "conv2.bias") {
        t.1 = vec![t.2.len() / 2, 2];
    }
    let path = dir.join("odd.safetensors");
    weights::write_tensors(&path, &tensors, None).unwrap();
    let mut m = ModelKind::Lenet.build(0).unwrap();
    let err = weights::load(&mut m, &path).unwrap_err().to_string();
    for want in [
        "missing tensor 'fc1.bias'",
        "unexpected tensor 'bn.num_batches_tracked'",
        "'conv2.bias': file has shape",
    ] {
        assert!(err.contains(want), "expected {want:?} in {err}");
    }
}

#[test]
fn half_precision_files_load_and_bad_files_are_refused() {
    let dir = ScratchDir::new("weights-bad-files");
    let net = ModelKind::Lenet.build(4).unwrap();
    // Rewrite the same tensors as f16 by hand (what `model.half()` then
    // `save_file` gives in PyTorch).
    let tensors = weights::param_values(&net).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let path = dir.join("half.safetensors");
    std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
    let mut m = ModelKind::Lenet.build(0).unwrap();
    weights::load(&mut m, &path).unwrap();
    for (a, b) in values(&net).iter().zip(values(&m)) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1e-2), "{x} vs {y}");
        }
    }

    // NaN inside a tensor.
    let mut nan = weights::param_values(&net).unwrap();
    nan[0].2[3] = f32::NAN;
    let p = dir.join("nan.safetensors");
    weights::write_tensors(&p, &nan, None).unwrap();
    let err = weights::load(&mut m, &p).unwrap_err().to_string();
    assert!(
        err.contains("nan.safetensors") && err.contains("NaN"),
        "{err}"
    );

    // Truncated file.
    let full = std::fs::read(&path).unwrap();
    let p = dir.join("truncated.safetensors");
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let err = weights::load(&mut m, &p).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");

    // Not a safetensors file at all, and a missing file.
    let p = dir.join("garbage.safetensors");
    std::fs::write(&p, b"this is not a weights file").unwrap();
    let err = weights::load(&mut m, &p).unwrap_err().to_string();
    assert!(err.contains("garbage.safetensors"), "{err}");
    let err = weights::load(&mut m, &dir.join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}
