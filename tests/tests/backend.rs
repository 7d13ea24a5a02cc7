//! Backend selection. On a machine without a usable GPU (CI's, and the
//! development machines'): `doctor` says why, `auto` runs on the CPU and
//! logs the reason once, `cuda` is one clear error. Where CUDA can run,
//! those assertions are skipped with the reason printed, and the GPU side
//! is asserted instead: `auto` and `cuda` classify on CUDA. Nothing panics.

use std::process::Command;

use edgevit_kernels::driver::{self, DriverError};
use edgevit_tests::*;

/// Whether this machine has no CUDA driver library at all.
fn no_libcuda() -> bool {
    matches!(driver::probe(), Err(DriverError::NotFound { .. }))
}

/// Why CUDA cannot run here, or `None` (printed) when it can.
fn why_not_cuda() -> Option<String> {
    let why = edgevit::why_not_cuda(None);
    if why.is_none() {
        eprintln!("CUDA can run here: checking the GPU side instead of the CPU fallback");
    }
    why
}

#[test]
fn doctor_says_what_it_found_and_what_auto_picks() {
    let run = edgevit(["doctor", "--board", "x86_64-host"]);
    let out = &run.ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    let line =
        |key: &str| lines.iter().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}:\n{out}"));
    assert!(line("nvrtc ").len() > "nvrtc ".len(), "{out}");
    assert_eq!(*line("board "), "board     x86_64-host (backend auto)", "{out}");
    let libraries: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("library   "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(libraries, ["cudart", "NVRTC", "cuBLAS", "cuDNN"], "{out}");
    assert!(line("kernels ").starts_with("kernels   prebuilt /usr/lib/edgevit/kernels, cache "), "{out}");
    match why_not_cuda() {
        None => assert_eq!(*line("auto "), "auto      cuda", "{out}"),
        Some(why) => assert_eq!(*line("auto "), format!("auto      cpu: {why}"), "{out}"),
    }
    if no_libcuda() {
        assert!(line("driver ").contains("libcuda not found"), "{out}");
    } else {
        assert!(line("driver ").starts_with("driver    CUDA "), "{out}");
    }
}

#[test]
fn doctor_names_the_board_that_keeps_cuda_off() {
    let run = edgevit(["doctor", "--board", "jetson-xavier-nx"]);
    let out = &run.ok().stdout;
    assert!(
        out.contains(
            "auto      cpu: board jetson-xavier-nx has CUDA 11.4, older than tract's CUDA runtime needs"
        ),
        "{out}"
    );
}

#[test]
fn backend_cuda_that_cannot_run_is_one_clear_error() {
    let run = edgevit(["classify", "--backend", "cuda", &format!("{SAMPLES}/t10k-00000-ankle-boot.png")]);
    match why_not_cuda() {
        None => assert!(run.ok().stdout.contains("Ankle boot"), "{}", run.stdout),
        Some(why) => {
            run.fails_with(&format!("backend cuda cannot run here: {why}"));
            assert!(run.stdout.is_empty(), "{}", run.stdout);
        }
    }
}

#[test]
fn backend_auto_runs_on_the_cpu_and_logs_why_once() {
    let sample = format!("{SAMPLES}/t10k-00000-ankle-boot.png");
    let out = Command::new(binary())
        .args(["classify", "--json", "--backend", "auto", &sample])
        .current_dir(root())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.contains("backend: cpu (")).collect();
    let backend = match why_not_cuda() {
        None => {
            assert!(reasons.is_empty(), "{stderr}");
            "cuda"
        }
        Some(why) => {
            assert_eq!(reasons.len(), 1, "{stderr}");
            assert!(reasons[0].ends_with(&format!("backend: cpu ({why})")), "{stderr}");
            "cpu"
        }
    };
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&line["backend"], &line["top_k"][0]["label"]),
        (&backend.into(), &"Ankle boot".into()),
        "{line}"
    );
}
