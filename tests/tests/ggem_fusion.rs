//! The GGeM fusion fires on heads exported by plain `torch.onnx.export`
//! (tests/data/ggem/, made by models/export/fixtures.py), leaves near misses
//! alone, and never changes the logits.

use edgevit::{default_bundle, fuse, Engine, EngineOptions, Ggem};
use edgevit_kernels::testing::XorShift;
use edgevit_tests::*;
use tract_onnx::prelude::*;

fn run(model: &TypedModel, input: &Tensor) -> Vec<f32> {
    let out = model
        .clone()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
        .run(tvec![input.clone().into()])
        .unwrap();
    out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// Deterministic inputs in [-2, 3): negatives exercise the clamp.
fn input(shape: &[usize]) -> Tensor {
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform(-2.0, 3.0)).collect();
    Tensor::from_shape(shape, &values).unwrap()
}

#[test]
fn fuses_torch_exports_and_keeps_their_output() {
    let dir = repo("tests/data/ggem");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let model = tract_onnx::onnx()
            .model_for_path(dir.join(file))
            .unwrap()
            .with_input_fact(0, f32::fact(&shape).into())
            .unwrap()
            .into_typed()
            .unwrap();
        let x = input(&shape);
        let before = run(&model, &x);
        let mut fused_model = model.clone();
        let fused = fuse(&mut fused_model).unwrap();
        let expected = if case["fuses"].as_bool().unwrap() { 1 } else { 0 };
        assert_eq!(fused, expected, "{file}: fused {fused} heads");
        assert_eq!(fused_model.nodes.iter().filter(|n| n.op_is::<Ggem>()).count(), expected, "{file}");
        let after = run(&fused_model, &x);
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{file}: logit {i} is {a} fused, {b} unfused");
        }
    }
}

#[test]
fn shipped_model_gives_the_same_logits_fused_and_unfused() {
    let bundle = default_bundle().unwrap();
    let golden = bundle.golden().unwrap();
    let mut fused = Engine::load(&bundle, &EngineOptions::default()).unwrap();
    let mut plain = Engine::load(&bundle, &EngineOptions { fuse_ggem: false, ..Default::default() }).unwrap();
    for input in &golden.inputs {
        fused.input_mut().copy_from_slice(input);
        plain.input_mut().copy_from_slice(input);
        let (a, b) = (fused.run().unwrap().to_vec(), plain.run().unwrap().to_vec());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5, "fused {a:?}\nplain {b:?}");
        }
    }
}
