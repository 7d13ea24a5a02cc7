//! `edgevit classify` on the shipped samples agrees with the Python reference
//! recorded in each bundle's golden files (models/export/export.py).

use edgevit_tests::*;

/// Classifies every sample with `bundle_args` and checks top-1 and logits
/// against the bundle's golden files, which hold the same 20 samples,
/// within the bundle's golden tolerance (1e-4 for f32; for int8 what the
/// int8 kernels' quantized activations may move a logit by).
fn agrees_with_golden(bundle_dir: &str, bundle_args: &[&str]) {
    let m = manifest(&repo(bundle_dir));
    let golden = m.golden.as_ref().unwrap();
    let reference = read_f32s(&repo(bundle_dir).join(&golden.logits));
    let samples = samples();
    assert_eq!(samples.len(), 20);
    assert_eq!(golden.count, samples.len());

    let mut args: Vec<String> = vec!["classify".into(), "--json".into()];
    args.extend(bundle_args.iter().map(|s| s.to_string()));
    args.extend(samples.iter().map(|p| p.display().to_string()));
    let run = edgevit(&args);
    let lines = run.ok().json_lines();
    assert_eq!(lines.len(), samples.len());
    for (i, line) in lines.iter().enumerate() {
        let top1 = line["top_k"][0]["class"].as_u64().unwrap() as usize;
        assert_eq!(top1, golden.top1[i], "top-1 of {}", samples[i].display());
        let logits: Vec<f32> =
            line["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let expected = &reference[i * m.model.classes..(i + 1) * m.model.classes];
        let (worst, diff) = logits
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f32), |acc, (c, d)| if d > acc.1 { (c, d) } else { acc });
        assert!(
            diff <= golden.tolerance,
            "{}: logit {worst} differs by {diff:e} ({} vs {})",
            samples[i].display(),
            logits[worst],
            expected[worst]
        );
    }
}

#[test]
fn fp32_bundle_matches_pytorch_on_the_samples() {
    agrees_with_golden(FP32_BUNDLE, &["--bundle", FP32_BUNDLE, "--trust", DEV_PUB]);
}

#[test]
fn int8_bundle_matches_onnxruntime_on_the_samples() {
    agrees_with_golden(INT8_BUNDLE, &["--bundle", INT8_BUNDLE, "--trust", DEV_PUB]);
}

#[test]
fn embedded_default_is_the_fp32_bundle() {
    agrees_with_golden(FP32_BUNDLE, &[]);
}

#[test]
fn text_output_prints_percent_and_label_lines() {
    let sample = samples()[0].display().to_string();
    let run = edgevit(["classify", "--top-k", "3", &sample]);
    let lines: Vec<&str> = run.ok().stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert_eq!(lines[0], sample);
    // t10k-00000 is an ankle boot, and the model says so.
    assert!(lines[1].ends_with("% Ankle boot"), "{}", lines[1]);
    for line in &lines[1..] {
        let (pct, label) = line.trim_start().split_once("% ").unwrap();
        assert_eq!(pct.split_once('.').map(|(_, decimals)| decimals.len()), Some(2), "{line}");
        let pct: f64 = pct.parse().unwrap();
        assert!((0.0..=100.0).contains(&pct) && !label.is_empty(), "{line}");
    }
}

#[test]
fn threshold_drops_unlikely_classes() {
    let sample = samples()[0].display().to_string();
    let scores = |threshold: &str| -> Vec<f64> {
        let run = edgevit(["classify", "--json", "--top-k", "0", "--threshold", threshold, &sample]);
        let line = &run.ok().json_lines()[0];
        line["top_k"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect()
    };
    let all = scores("0");
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "best first: {all:?}");
    let between = (all[0] + all[1]) / 2.0;
    assert_eq!(scores(&between.to_string()), all[..1]);
}
