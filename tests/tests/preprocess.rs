//! The Rust preprocessing reproduces models/export/preprocess.py on the
//! tensors models/export/fixtures.py wrote to tests/data/preprocess/.

use edgevit::{preprocess, Image, InputSpec, Layout};
use edgevit_tests::*;

#[test]
fn matches_the_numpy_reference() {
    let dir = repo("tests/data/preprocess");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let floats =
            |k: &str| case[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let spec = InputSpec {
            width: case["width"].as_u64().unwrap() as u32,
            height: case["height"].as_u64().unwrap() as u32,
            channels: case["channels"].as_u64().unwrap() as u32,
            mean: floats("mean"),
            std: floats("std"),
            layout: if case["layout"] == "nhwc" { Layout::Nhwc } else { Layout::Nchw },
        };
        let img = Image::open(&dir.join(case["image"].as_str().unwrap())).unwrap();
        let mut out = vec![0.0; spec.len()];
        preprocess(&spec, img.view(), &mut out);
        let expected = read_f32s(&dir.join(case["expected"].as_str().unwrap()));
        assert_eq!(out.len(), expected.len());
        let (i, diff) = out
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold((0, 0.0f32), |acc, (i, d)| if d > acc.1 { (i, d) } else { acc });
        assert!(diff <= 1e-5, "{case}: value {i} is {} but numpy gives {}", out[i], expected[i]);
    }
}
