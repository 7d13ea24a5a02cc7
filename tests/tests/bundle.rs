//! Bundles: create from someone else's ONNX, sign, verify, inspect, and every
//! way a damaged or inconsistent bundle is refused with one clear line.

use std::path::Path;

use edgevit_tests::*;

fn trusted(bundle: &Path) -> Vec<String> {
    vec!["--bundle".into(), bundle.display().to_string(), "--trust".into(), DEV_PUB.into()]
}

fn scratch_copy(src: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("bundle");
    copy_dir(&repo(src), &dst);
    (tmp, dst)
}

#[test]
fn shipped_bundles_verify() {
    for b in [FP32_BUNDLE, INT8_BUNDLE] {
        let run = edgevit(["bundle", "verify", "--bundle", b, "--trust", DEV_PUB]);
        assert!(run.ok().stdout.contains("OK; signed by"), "{}", run.stdout);
        assert!(run.stdout.contains("golden top-1 20/20"), "{}", run.stdout);
    }
}

#[test]
fn info_prints_the_manifest() {
    let run = edgevit(["bundle", "info", "--bundle", INT8_BUNDLE, "--trust", DEV_PUB]);
    let out = &run.ok().stdout;
    assert!(out.contains("name     fmnist-vit-ggem-int8 v1"), "{out}");
    assert!(out.contains("pooling  ggem (groups 4)"), "{out}");
}

/// The test image and labels of the timm ViT fixtures.
const TIMM_IMAGE: &str = "tests/data/timm-vit/image.png";
const TIMM_LABELS: &str = "tests/data/timm-vit/labels.txt";

/// Makes a signed bundle of the `model.onnx` in `data` (made by
/// models/export/fixtures.py or named_batch.py) with the timm test image as
/// its golden set, checks its signature, and returns the bundle and its
/// public key.
fn timm_bundle(tmp: &Path, data: &Path) -> (String, String) {
    let keys = tmp.join("release");
    edgevit(["bundle", "keygen", "--out", keys.to_str().unwrap()]).ok();
    let out = tmp.join("timm");
    let run = edgevit([
        "bundle",
        "create",
        "--model",
        data.join("model.onnx").to_str().unwrap(),
        "--labels",
        repo(TIMM_LABELS).to_str().unwrap(),
        "--name",
        "timm-vit-tiny",
        "--version",
        "3",
        "--width",
        "224",
        "--height",
        "224",
        "--channels",
        "3",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--golden-image",
        repo(TIMM_IMAGE).to_str().unwrap(),
        "--key",
        keys.with_extension("key").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.ok().stdout.contains("1 golden images, signed"), "{}", run.stdout);
    let (out, trust) = (out.display().to_string(), keys.with_extension("pub").display().to_string());
    edgevit(["bundle", "verify", "--bundle", &out, "--trust", &trust]).ok();
    // The development key did not sign it.
    edgevit(["bundle", "verify", "--bundle", &out, "--trust", DEV_PUB])
        .fails_with("manifest.sig does not verify with any trusted key");
    (out, trust)
}

/// Classifies the timm fixture's image with `bundle` and compares the
/// logits with onnxruntime's in `data`/expected.json.
fn assert_matches_onnxruntime(bundle: &str, trust: &str, data: &Path) {
    let image = repo(TIMM_IMAGE).display().to_string();
    let run = edgevit(["classify", "--json", "--bundle", bundle, "--trust", trust, &image]);
    let line = &run.ok().json_lines()[0];
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("expected.json")).unwrap()).unwrap();
    let expected = expected["onnxruntime_logits"].as_array().unwrap();
    let logits = line["logits"].as_array().unwrap();
    assert_eq!(logits.len(), expected.len());
    for (c, (a, b)) in logits.iter().zip(expected).enumerate() {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "class {c}: edgevit {a} vs onnxruntime {b}");
    }
}

/// A timm ViT exported by plain torch.onnx.export (dynamic batch) becomes a
/// bundle whose logits match onnxruntime.
#[test]
fn create_from_a_timm_vit_matches_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo("tests/data/timm-vit");
    let (bundle, trust) = timm_bundle(tmp.path(), &data);
    assert_matches_onnxruntime(&bundle, &trust, &data);
}

/// Issue 14: ViTs with each head users export (timm's class token, mean
/// pooling, GGeM), with random biases and LayerNorm weights, run on our CPU
/// ops alone (no tract product, softmax or lowered LayerNorm is left) and
/// match onnxruntime, on one thread and on two.
#[test]
fn issue_14_vits_with_each_head_run_on_our_ops_and_match_onnxruntime() {
    for head in ["token", "mean", "ggem"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = repo("tests/data/vit-heads").join(head);
        let (bundle, trust) = timm_bundle(tmp.path(), &data);
        assert_matches_onnxruntime(&bundle, &trust, &data);
        for threads in ["1", "2"] {
            let args = ["--iterations", "2", "--warmup", "0", "--threads", threads, "--ops"];
            let run =
                edgevit([&["bench", "--json", "--bundle", &bundle, "--trust", &trust][..], &args].concat());
            let r = &run.ok().json_lines()[0];
            let ops = r["ops"].as_array().unwrap();
            let count = |name: &str| ops.iter().find(|o| o["op"] == name).and_then(|o| o["count"].as_u64());
            // 2 blocks: 2 attentions; norm1 and norm2 of each and the final norm.
            assert_eq!((count("Attention"), count("LayerNorm")), (Some(2), Some(5)), "{head}: {r}");
            for tract in ["OptMatMul", "RowSoftmax", "Softmax", "RmsNorm"] {
                assert_eq!(count(tract), None, "{head}: {tract} left in the plan: {r}");
            }
        }
    }
}

/// Issue 16: the same export after ONNX shape inference names the batch on
/// every intermediate tensor's value_info; pinning the input to batch 1 (or
/// 4) must not contradict it.
#[test]
fn issue_16_a_shape_inferred_export_with_a_named_batch_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo("tests/data/timm-vit-named-batch");
    let (bundle, trust) = timm_bundle(tmp.path(), &data);
    assert_matches_onnxruntime(&bundle, &trust, &data);
    let run = edgevit([
        "bench",
        "--bundle",
        &bundle,
        "--trust",
        &trust,
        "--batch",
        "4",
        "--warmup",
        "0",
        "--iterations",
        "1",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["batch"], 4, "{}", run.stdout);
}

#[test]
fn create_refuses_to_overwrite() {
    let data = repo("tests/data/timm-vit");
    edgevit([
        "bundle",
        "create",
        "--model",
        data.join("model.onnx").to_str().unwrap(),
        "--labels",
        data.join("labels.txt").to_str().unwrap(),
        "--name",
        "x",
        "--version",
        "1",
        "--width",
        "224",
        "--height",
        "224",
        "--mean",
        "0,0,0",
        "--std",
        "1,1,1",
        "--out",
        FP32_BUNDLE,
    ])
    .fails_with("already exists");
}

#[test]
fn sign_then_verify_round_trip_with_a_new_key() {
    let (tmp, dir) = scratch_copy(INT8_BUNDLE);
    let stem = tmp.path().join("k");
    edgevit(["bundle", "keygen", "--out", stem.to_str().unwrap()]).ok();
    edgevit(["bundle", "keygen", "--out", stem.to_str().unwrap()]).fails_with("already exists");
    edgevit(["bundle", "sign", dir.to_str().unwrap(), "--key", stem.with_extension("key").to_str().unwrap()])
        .ok();
    let trust = stem.with_extension("pub").display().to_string();
    edgevit(["bundle", "verify", "--bundle", dir.to_str().unwrap(), "--trust", &trust]).ok();
}

#[test]
fn a_flipped_byte_in_the_model_is_refused() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    let path = dir.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("model.onnx: expected sha256");
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let (tmp, dir) = scratch_copy(FP32_BUNDLE);
    let stem = tmp.path().join("other");
    edgevit(["bundle", "keygen", "--out", stem.to_str().unwrap()]).ok();
    edgevit(["bundle", "sign", dir.to_str().unwrap(), "--key", stem.with_extension("key").to_str().unwrap()])
        .ok();
    let mut args = vec!["classify".to_string()];
    args.extend(trusted(&dir));
    args.push(samples()[0].display().to_string());
    edgevit(&args).fails_with("manifest.sig does not verify with any trusted key (tried 1)");
}

#[test]
fn an_unsigned_bundle_is_refused_unless_asked() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    std::fs::remove_file(dir.join("manifest.sig")).unwrap();
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("manifest.sig is missing");
    edgevit(["bundle", "verify", "--skip-signature", "--bundle", dir.to_str().unwrap()]).ok();
}

#[test]
fn no_trusted_keys_is_an_error_that_says_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    edgevit(["bundle", "verify", "--bundle", FP32_BUNDLE, "--trust-dir", tmp.path().to_str().unwrap()])
        .fails_with("no trusted keys: pass --trust KEY.pub");
}

#[test]
fn a_manifest_input_size_that_disagrees_with_the_model_is_refused() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    rewrite_manifest(&dir, |m| {
        m.input.width = 32;
        m.input.height = 32;
        m.golden = None;
        m.files.retain(|name, _| !name.starts_with("golden/"));
    });
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("manifest input is [1, 1, 32, 32] (nchw) but the model declares [?, 1, 28, 28]");
}

#[test]
fn labels_that_do_not_match_the_classes_are_refused() {
    // More labels than the manifest's classes.
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    let labels = dir.join("labels.txt");
    let mut text = std::fs::read_to_string(&labels).unwrap();
    text.push_str("Umbrella\n");
    std::fs::write(&labels, text).unwrap();
    rewrite_manifest(&dir, |_| {});
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("labels.txt: expected 10 labels (one per class) but bundle has 11");

    // Manifest and labels agree on 11 classes, the model has 10.
    rewrite_manifest(&dir, |m| {
        m.model.classes = 11;
        m.golden = None;
        m.files.retain(|name, _| !name.starts_with("golden/"));
    });
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir))).fails_with(
        "manifest says 11 classes, so the output should be [1, 11], but the model outputs [1, 10]",
    );
}

#[test]
fn a_manifest_that_is_not_toml_is_refused() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    write_signed_manifest(&dir, b"format = 1\nname = \"unterminated\n");
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("manifest.toml is not valid");
}

#[test]
fn a_manifest_with_an_unknown_field_is_refused() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    write_signed_manifest(&dir, text.replace("format = 1", "format = 1\nturbo = true").as_bytes());
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("unknown field `turbo`");
}

#[test]
fn golden_output_that_disagrees_fails_verify() {
    let (_tmp, dir) = scratch_copy(FP32_BUNDLE);
    let path = dir.join("golden/logits.bin");
    let mut logits = read_f32s(&path);
    logits[3] += 0.01;
    std::fs::write(&path, edgevit::f32_bytes(&logits)).unwrap();
    rewrite_manifest(&dir, |_| {});
    edgevit(["bundle", "verify"].into_iter().map(String::from).chain(trusted(&dir)))
        .fails_with("golden top-1 20/20, max |logit diff| 1.000e-2");
}

#[test]
fn a_missing_bundle_is_named() {
    edgevit(["bundle", "verify", "--bundle", "models/nope", "--trust", DEV_PUB])
        .fails_with("bundle models/nope");
}

/// Packs `dir` into a tar with GNU tar, extra arguments first.
fn pack(dir: &Path, tar: &Path, extra: &[&str]) {
    let status = std::process::Command::new("tar")
        .args(extra)
        .arg("-cf")
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_tar_bundle_classifies_like_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("bundle.tar");
    pack(&repo(INT8_BUNDLE), &tar, &[]);
    let sample = samples()[0].display().to_string();
    let from_tar =
        edgevit(["classify", "--json", "--bundle", tar.to_str().unwrap(), "--trust", DEV_PUB, &sample]);
    let from_dir = edgevit(["classify", "--json", "--bundle", INT8_BUNDLE, "--trust", DEV_PUB, &sample]);
    assert_eq!(from_tar.ok().json_lines()[0]["logits"], from_dir.ok().json_lines()[0]["logits"]);
}

#[test]
fn a_tar_bundle_with_a_symlink_or_parent_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    copy_dir(&repo(INT8_BUNDLE), &dir);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let tar = tmp.path().join("link.tar");
    pack(&dir, &tar, &[]);
    edgevit(["bundle", "verify", "--bundle", tar.to_str().unwrap(), "--trust", DEV_PUB])
        .fails_with("passwd: expected a regular file in the tar, not a link or device");

    std::fs::remove_file(dir.join("passwd")).unwrap();
    let tar = tmp.path().join("dotdot.tar");
    pack(&dir, &tar, &["--transform", "s,^./labels.txt,../labels.txt,"]);
    edgevit(["bundle", "verify", "--bundle", tar.to_str().unwrap(), "--trust", DEV_PUB])
        .fails_with("../labels.txt: not a plain relative path inside the bundle");
}

/// `bundle create` of the shipped Fashion-MNIST model file `model` into
/// `out`, signed with the development key, with `extra` arguments.
fn create_fmnist(model: &Path, out: &Path, extra: &[&str]) -> Run {
    let model = model.to_str().unwrap();
    let labels = repo(FP32_BUNDLE).join("labels.txt");
    let mut args = vec!["bundle", "create", "--model", model, "--labels", labels.to_str().unwrap()];
    args.extend([
        "--name",
        "fmnist-q",
        "--version",
        "1",
        "--width",
        "28",
        "--height",
        "28",
        "--channels",
        "1",
    ]);
    args.extend(["--mean", "0.286", "--std", "0.353", "--key", DEV_KEY, "--out", out.to_str().unwrap()]);
    args.extend(extra);
    edgevit(args)
}

/// Each sample's logits from `bundle`, in sample order.
fn sample_logits(bundle: &Path) -> Vec<Vec<f64>> {
    let samples: Vec<String> = samples().iter().map(|p| p.display().to_string()).collect();
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    let bundle = bundle.to_str().unwrap();
    let run =
        edgevit([&["classify", "--json", "--bundle", bundle, "--trust", DEV_PUB][..], &samples].concat());
    let lines = run.ok().json_lines();
    lines
        .iter()
        .map(|l| l["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect()
}

/// The products of `bundle`'s plan as (QLinear, Linear) counts, and its `int8_kernel`.
fn int8_plan(bundle: &Path) -> (Option<u64>, Option<u64>, serde_json::Value) {
    let bundle = bundle.to_str().unwrap();
    let run = edgevit([
        "bench",
        "--json",
        "--ops",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--bundle",
        bundle,
        "--trust",
        DEV_PUB,
    ]);
    let r = run.ok().json_lines().remove(0);
    let ops = r["ops"].as_array().unwrap();
    let count = |name: &str| ops.iter().find(|o| o["op"] == name).and_then(|o| o["count"].as_u64());
    (count("QLinear"), count("Linear"), r["int8_kernel"].clone())
}

/// Issue 15: `bundle create --quantize int8` makes of the shipped fp32 model
/// the very int8 weights the Python export wrote for the shipped int8
/// bundle (the same logits on every sample), checks them against the f32
/// model on the golden images, and the plan runs all 18 products on the
/// int8 kernel; so does a model with DequantizeLinear weights. A tolerance
/// nothing meets, or `--precision int8` on f32 weights, is refused.
#[test]
fn issue_15_quantize_int8_in_the_tool_agrees_with_the_shipped_int8_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = repo(FP32_BUNDLE).join("model.onnx");
    let golden: Vec<String> =
        samples().iter().flat_map(|p| ["--golden-image".into(), p.display().to_string()]).collect();
    let golden: Vec<&str> = golden.iter().map(String::as_str).collect();
    let out = tmp.path().join("q8");
    let run = create_fmnist(&fp32, &out, &[&["--quantize", "int8"][..], &golden].concat());
    assert!(run.ok().stdout.contains("quantized 18 weights to int8"), "{}", run.stdout);
    assert!(run.stdout.contains("same top-1"), "{}", run.stdout);
    let m = manifest(&out);
    assert_eq!(m.model.precision, edgevit::Precision::Int8);
    // The golden check allows what another CPU's int8 kernel may differ by.
    let logits = read_f32s(&out.join("golden/logits.bin"));
    let largest = logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_eq!(m.golden.unwrap().tolerance, edgevit::INT8_TOLERANCE_SHARE * largest);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = size(&out.join("model.onnx")) / size(&fp32);
    assert!(ratio <= 0.31, "the int8 model is {ratio:.3} of the f32 one");
    let shipped = sample_logits(&repo(INT8_BUNDLE));
    assert_eq!(sample_logits(&out), shipped, "the tool's int8 model and the export's disagree");

    let kernel = edgevit::QKernel::detect().map_or("f32", |k| k.name());
    let want = if kernel == "f32" { (None, Some(18)) } else { (Some(18), None) };
    for bundle in [&out, &repo(INT8_BUNDLE)] {
        let (qlinear, linear, int8_kernel) = int8_plan(bundle);
        assert_eq!((qlinear, linear), want, "{}", bundle.display());
        assert_eq!(int8_kernel, kernel, "{}", bundle.display());
    }

    let dequantize = repo("tests/data/dequantize-linear/model.onnx");
    let dq = tmp.path().join("dq");
    create_fmnist(&dequantize, &dq, &["--precision", "int8", "--golden-image", golden[1]]).ok();
    assert_eq!(int8_plan(&dq).0, want.0);
    assert_eq!(sample_logits(&dq), shipped, "DequantizeLinear weights run otherwise than Cast + Mul");

    let strict = tmp.path().join("strict");
    create_fmnist(
        &fp32,
        &strict,
        &[&["--quantize", "int8", "--quantize-tolerance", "1e-9"][..], &golden].concat(),
    )
    .fails_with("over --quantize-tolerance");
    assert!(!strict.exists(), "a refused bundle was written");
    create_fmnist(&fp32, &strict, &["--precision", "int8"]).fails_with("--quantize int8 makes them so");
    assert!(!strict.exists());
}
