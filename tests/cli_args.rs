//! Bad attack options are refused before any work starts, with an error
//! that names the value and what was expected, and a non-zero exit.

use std::process::Command;

/// Runs `splitinv --device cpu attack ATTACK --dataset cifar10 --split
/// ReLU32 --setting SETTING EXTRA...`: whether it succeeded, and its stderr.
fn attack(attack: &str, setting: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitinv"))
        .args(["--device", "cpu", "attack", attack])
        .args([
            "--dataset",
            "cifar10",
            "--split",
            "ReLU32",
            "--setting",
            setting,
        ])
        .args(extra)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
