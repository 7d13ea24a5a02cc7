//! `edgevit bench` reports every figure it promises, consistently. Values
//! are measured, never compared with a time budget.

use edgevit_tests::*;

#[test]
fn bench_reports_latency_throughput_cold_start_and_memory() {
    let run = edgevit([
        "bench",
        "--json",
        "--iterations",
        "20",
        "--warmup",
        "2",
        "--bundle",
        INT8_BUNDLE,
        "--trust",
        DEV_PUB,
    ]);
    let r = &run.ok().json_lines()[0];
    assert_eq!(r["model"], "fmnist-vit-ggem-int8");
    assert_eq!(r["precision"], "int8");
    assert_eq!(r["backend"], "cpu");
    assert_eq!(r["iterations"], 20);
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    assert!(f("p50_ms") > 0.0 && f("p99_ms") >= f("p50_ms"), "{r}");
    assert!(f("mean_ms") > 0.0 && f("throughput") > 0.0, "{r}");
    assert!(f("cold_start_ms") > 0.0, "{r}");
    // The process holds at least the model; a ViT this small stays far below 1 GiB.
    assert!(f("peak_rss_mib") > 1.0 && f("peak_rss_mib") < 1024.0, "{r}");
}

#[test]
fn bench_text_names_each_figure() {
    let run = edgevit(["bench", "--iterations", "5", "--warmup", "1"]);
    let out = &run.ok().stdout;
    for needle in ["fmnist-vit-ggem v1 fp32 on cpu", "p50", "p99", "images/s", "cold start", "peak RSS"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
}

#[test]
fn bench_ops_breaks_the_time_down_by_op() {
    let run = edgevit(["bench", "--json", "--iterations", "3", "--warmup", "1", "--ops"]);
    let r = &run.ok().json_lines()[0];
    let ops = r["ops"].as_array().unwrap_or_else(|| panic!("no ops in {r}"));
    let count = |name: &str| ops.iter().find(|o| o["op"] == name).and_then(|o| o["count"].as_u64());
    // The shipped ViT has 4 blocks, each with one attention, and one GGeM
    // head; its patch embedding, qkv, proj, fc1, fc2 and head run on our products.
    assert_eq!((count("Attention"), count("Ggem"), count("RowSoftmax")), (Some(4), Some(1), None), "{r}");
    assert!(count("Linear").is_some_and(|n| n >= 6), "{r}");
    let kernel = edgevit::CpuKernel::detect().name();
    assert_eq!(r["cpu_kernel"].as_str(), Some(kernel), "{r}");
    assert!(ops.iter().all(|o| o["ms"].as_f64().is_some_and(|ms| ms >= 0.0)), "{r}");
    assert!(ops.windows(2).all(|w| w[0]["ms"].as_f64() >= w[1]["ms"].as_f64()), "longest first: {r}");
}
