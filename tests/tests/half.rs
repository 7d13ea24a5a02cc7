//! The network in f16 (`--float f16`), as the CUDA backend runs it, here on
//! the CPU: the same graph translation (tract's `f32_to_f16`, our f32 input
//! and logits kept, GGeM on f16 tokens), checked against f32 on the
//! shipped model's 20 samples and golden set.

use edgevit_tests::*;

/// Top-1 and logits of every sample at `float`.
fn samples(float: &str) -> Vec<(u64, Vec<f64>)> {
    let mut args = vec!["classify".to_string(), "--json".into(), "--backend".into(), "cpu".into()];
    args.extend(["--float".into(), float.into()]);
    let mut paths: Vec<String> =
        std::fs::read_dir(repo(SAMPLES)).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    paths.sort();
    args.extend(paths);
    let run = edgevit(&args);
    run.ok()
        .json_lines()
        .iter()
        .map(|l| {
            let logits = l["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            (l["top_k"][0]["class"].as_u64().unwrap(), logits)
        })
        .collect()
}

#[test]
fn f16_agrees_with_f32_on_the_samples() {
    let (full, half) = (samples("f32"), samples("f16"));
    assert_eq!(full.len(), 20);
    let mut worst = 0.0f64;
    for (i, ((top_full, a), (top_half, b))) in full.iter().zip(&half).enumerate() {
        assert_eq!(top_full, top_half, "sample {i}: f16 top-1 differs");
        worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(worst, f64::max);
    }
    eprintln!("f16 against f32 on the 20 samples: max |logit diff| {worst:.3e}");
    assert!(worst < f64::from(edgevit::engine::HALF_LOGIT_TOLERANCE), "max |logit diff| {worst}");
    assert!(worst > 0.0, "f16 logits equal f32's exactly: the network did not run in f16");
}

#[test]
fn golden_check_in_f16_holds_the_f16_tolerance() {
    let run = edgevit(["bundle", "verify", "--backend", "cpu", "--float", "f16"]);
    let out = &run.ok().stdout;
    let tolerance = format!("(tolerance {:.0e};", edgevit::engine::HALF_LOGIT_TOLERANCE);
    assert!(out.contains("golden top-1 20/20") && out.contains(&tolerance), "{out}");
}

#[test]
fn f16_bench_says_so() {
    let run = edgevit(["bench", "--json", "--iterations", "3", "--warmup", "1", "--float", "f16"]);
    let report: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!((&report["backend"], &report["float"]), (&"cpu".into(), &"f16".into()), "{report}");
}
