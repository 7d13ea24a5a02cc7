//! The network in f16 (`--float f16`), as the CUDA backend runs it, on the
//! CPU: the same graph translation (tract's `f32_to_f16`, our f32 input and
//! logits kept, GGeM on f16 tokens), checked against f32 on the shipped
//! model's 20 samples and golden set. Where CUDA can run, the GPU too.

use edgevit_tests::*;

/// Top-1 and logits of every sample on `backend` at `float`.
fn classify_samples(backend: &str, float: &str) -> Vec<(u64, Vec<f64>)> {
    let mut args: Vec<std::ffi::OsString> =
        ["classify", "--json", "--backend", backend, "--float", float].map(Into::into).into();
    args.extend(samples().into_iter().map(Into::into));
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

/// Asserts the same top-1 everywhere and logits within the f16 tolerance;
/// returns the largest difference.
fn agree(full: &[(u64, Vec<f64>)], half: &[(u64, Vec<f64>)]) -> f64 {
    assert_eq!((full.len(), half.len()), (20, 20));
    let mut worst = 0.0f64;
    for (i, ((top_full, a), (top_half, b))) in full.iter().zip(half).enumerate() {
        assert_eq!(top_full, top_half, "sample {i}: f16 top-1 differs");
        worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(worst, f64::max);
    }
    assert!(worst < f64::from(edgevit::HALF_LOGIT_TOLERANCE), "max |logit diff| {worst}");
    assert!(worst > 0.0, "f16 logits equal f32's exactly: the network did not run in f16");
    worst
}

#[test]
fn f16_agrees_with_f32_on_the_samples() {
    let worst = agree(&classify_samples("cpu", "f32"), &classify_samples("cpu", "f16"));
    eprintln!("f16 against f32 on the CPU, 20 samples: max |logit diff| {worst:.3e}");
}

/// The GPU in f16 against the CPU in f32, where CUDA can run (tools/gpu-check.sh
/// runs the same checks through the binary on machines without Rust).
#[test]
fn cuda_agrees_with_the_cpu_where_it_can_run() {
    if let Some(why) = edgevit::why_not_cuda(None) {
        skip(format!("CUDA cannot run here: {why}"));
        return;
    }
    edgevit(["bundle", "verify", "--backend", "cuda"]).ok();
    let worst = agree(&classify_samples("cpu", "f32"), &classify_samples("cuda", "f16"));
    eprintln!("cuda f16 against cpu f32, 20 samples: max |logit diff| {worst:.3e}");
}

#[test]
fn golden_check_in_f16_holds_the_f16_tolerance() {
    let run = edgevit(["bundle", "verify", "--backend", "cpu", "--float", "f16"]);
    let out = &run.ok().stdout;
    let tolerance = format!("(tolerance {:.0e};", edgevit::HALF_LOGIT_TOLERANCE);
    assert!(out.contains("golden top-1 20/20") && out.contains(&tolerance), "{out}");
}

#[test]
fn f16_bench_says_so() {
    let run = edgevit(["bench", "--json", "--iterations", "3", "--warmup", "1", "--float", "f16"]);
    let report: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!((&report["backend"], &report["float"]), (&"cpu".into(), &"f16".into()), "{report}");
}
