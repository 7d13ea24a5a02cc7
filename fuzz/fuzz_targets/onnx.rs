//! An ONNX model inside a bundle, loaded by the engine: parse, shape checks
//! against the manifest, analysis into a typed model, GGeM fusion, and
//! preparation for the CPU.
#![no_main]

use edgevit::{file_entry, Engine, EngineOptions, RawBundle, SignaturePolicy, TrustStore};
use libfuzzer_sys::fuzz_target;

const LABELS: &[u8] = b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n";

fuzz_target!(|data: &[u8]| {
    let model = file_entry(data);
    let labels = file_entry(LABELS);
    let manifest = format!(
        r#"format = 1
name = "fuzz"
version = 1
compatible = ["any"]

[input]
width = 28
height = 28
channels = 1
mean = [0.5]
std = [0.5]
layout = "nchw"

[model]
file = "model.onnx"
precision = "fp32"
classes = 10

[labels]
file = "labels.txt"

[files."model.onnx"]
size = {}
sha256 = "{}"

[files."labels.txt"]
size = {}
sha256 = "{}"
"#,
        model.size, model.sha256, labels.size, labels.sha256
    );
    let raw =
        RawBundle::from_memory(manifest.as_bytes(), b"", &[("model.onnx", data), ("labels.txt", LABELS)]);
    let bundle =
        raw.verify("fuzz".into(), &TrustStore::default(), SignaturePolicy::Skip).expect("a valid manifest");
    let _ = Engine::load(&bundle, &EngineOptions::default());
});
