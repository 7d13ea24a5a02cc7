//! Threads and batches change how the network runs, not what it answers.

use edgevit::{default_bundle, Engine, EngineOptions};
use edgevit_tests::*;

/// The golden logits of the shipped model, one engine run per image.
fn single(options: &EngineOptions) -> Vec<Vec<f32>> {
    let bundle = default_bundle().unwrap();
    let mut engine = Engine::load(&bundle, options).unwrap();
    let golden = bundle.golden().unwrap();
    golden
        .inputs
        .iter()
        .map(|input| {
            engine.input_mut().copy_from_slice(input);
            engine.run().unwrap().to_vec()
        })
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5, "{what}: {a:?}\nvs {b:?}");
    }
}

#[test]
fn two_threads_give_the_logits_of_one() {
    let one = single(&EngineOptions::default());
    let two = single(&EngineOptions { threads: 2, ..Default::default() });
    for (a, b) in one.iter().zip(&two) {
        assert_close(a, b, "2 threads vs 1");
    }
}

#[test]
fn a_batch_gives_each_image_its_own_logits() {
    let one = single(&EngineOptions::default());
    let bundle = default_bundle().unwrap();
    let golden = bundle.golden().unwrap();
    let (batch, len, classes) = (4, golden.inputs[0].len(), bundle.manifest.model.classes);
    let mut engine = Engine::load(&bundle, &EngineOptions { batch, ..Default::default() }).unwrap();
    assert_eq!(engine.batch, batch);
    for (chunk, expected) in golden.inputs.chunks(batch).zip(one.chunks(batch)) {
        for (slot, input) in engine.input_mut().chunks_mut(len).zip(chunk) {
            slot.copy_from_slice(input);
        }
        let logits = engine.run().unwrap().to_vec();
        assert_eq!(logits.len(), batch * classes);
        for (row, want) in logits.chunks(classes).zip(expected) {
            assert_close(row, want, "batch of 4 vs one at a time");
        }
    }
    let err = engine.check_golden(&bundle).unwrap_err();
    assert!(format!("{err:#}").contains("golden images run one at a time"), "{err:#}");
}

#[test]
fn bench_measures_a_batch_on_the_threads_asked_for() {
    let run =
        edgevit(["bench", "--json", "--iterations", "4", "--warmup", "1", "--batch", "3", "--threads", "2"]);
    let r = &run.ok().json_lines()[0];
    assert_eq!((r["batch"].as_u64(), r["threads"].as_u64()), (Some(3), Some(2)), "{r}");
}

#[test]
fn a_batch_of_zero_is_refused() {
    edgevit(["bench", "--batch", "0"]).fails_with("expected a batch of at least 1 image");
}
