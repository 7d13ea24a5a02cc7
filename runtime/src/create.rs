//! `edgevit bundle create`: package any ONNX classifier, its labels and input
//! spec as a bundle, checked by loading it and, given sample images,
//! recording golden I/O computed by this engine; with `--quantize int8`,
//! its weights made int8 first ([`crate::quantize`]) and the int8 model
//! checked against the f32 one on those images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bundle::{
    f32_bytes, file_entry, parse_labels, RawBundle, SignaturePolicy, MANIFEST, MAX_FILE_BYTES,
    MAX_LABELS_BYTES,
};
use crate::engine::{Engine, EngineOptions};
use crate::keys::{SecretKey, TrustStore};
use crate::manifest::{GoldenSpec, InputSpec, LabelsSpec, Manifest, ModelSpec, Precision, FORMAT};
use crate::postprocess::argmax;
use crate::preprocess::Image;
use crate::quantize::quantize_int8;

/// What `--quantize` makes of the model's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quantize {
    /// int8, one scale per output channel (the CPU backend runs them on its
    /// int8 kernels).
    Int8,
}

pub struct CreateOptions {
    pub model: PathBuf,
    pub labels: PathBuf,
    pub name: String,
    pub version: u64,
    pub description: String,
    pub compatible: Vec<String>,
    pub input: InputSpec,
    pub precision: Precision,
    pub golden_images: Vec<PathBuf>,
    pub tolerance: f32,
    pub quantize: Option<Quantize>,
    /// With `quantize`: the largest logit difference from the f32 model
    /// allowed on a golden image, as a fraction of its largest f32 logit.
    pub quantize_tolerance: f32,
    pub key: Option<PathBuf>,
    pub out: PathBuf,
}

/// The golden tolerance of an int8 bundle, at least, as a share of its
/// largest golden logit: what the int8 kernels of different CPUs may differ
/// by (activations quantized in 8 bits, in 7 on AVX2, or not at all where
/// the products run in f32). On the shipped Fashion-MNIST int8 model they
/// are 0.6%, 1.7% and 0.00003% of it from onnxruntime's f32 logits.
pub const INT8_TOLERANCE_SHARE: f32 = 0.05;

const MODEL_FILE: &str = "model.onnx";
const LABELS_FILE: &str = "labels.txt";
const GOLDEN_INPUT: &str = "golden/input.bin";
const GOLDEN_LOGITS: &str = "golden/logits.bin";

/// What `create` made.
pub struct Created {
    pub manifest: Manifest,
    /// With `--quantize`: the weights made int8, and the largest logit
    /// difference from the f32 model over the golden images, absolute and
    /// as a fraction of the image's largest f32 logit.
    pub quantized: Option<(usize, f32, f32)>,
}

/// The engine of a bundle of `manifest` and `files` (in memory, unsigned).
fn load(manifest: &Manifest, files: &[(&str, Vec<u8>)], origin: &Path) -> Result<Engine> {
    let toml = toml::to_string(manifest)?;
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let raw = RawBundle::from_memory(toml.as_bytes(), b"", &files);
    let bundle =
        raw.verify(origin.display().to_string(), &TrustStore::default(), SignaturePolicy::Signing)?;
    Engine::load(&bundle, &EngineOptions::default())
}

/// Creates the bundle directory `opts.out`, which must not exist yet. The
/// bundle is assembled in a temporary sibling directory and renamed into place.
pub fn create(opts: &CreateOptions) -> Result<Created> {
    if opts.out.exists() {
        bail!("output {}: already exists, expected a new directory", opts.out.display());
    }
    let key = opts.key.as_deref().map(SecretKey::load).transpose()?;
    let source = crate::fsutil::read_regular(&opts.model, MAX_FILE_BYTES, "model")?;
    let (model, precision, fp32) = match opts.quantize {
        Some(Quantize::Int8) => {
            let quantized =
                quantize_int8(&source).with_context(|| format!("model {}", opts.model.display()))?;
            (quantized.bytes, Precision::Int8, Some((source, quantized.weights)))
        }
        None => (source, opts.precision, None),
    };
    let labels = crate::fsutil::read_regular(&opts.labels, MAX_LABELS_BYTES, "labels")?;
    let classes = parse_labels(&labels).len();
    if classes == 0 {
        bail!("labels {}: expected one label per line but the file has none", opts.labels.display());
    }
    let mut manifest = Manifest {
        format: FORMAT,
        name: opts.name.clone(),
        version: opts.version,
        description: opts.description.clone(),
        compatible: opts.compatible.clone(),
        input: opts.input.clone(),
        model: ModelSpec {
            file: MODEL_FILE.into(),
            precision,
            classes,
            arch: None,
            patch: None,
            dim: None,
            heads: None,
            depth: None,
            pooling: None,
            groups: None,
        },
        labels: LabelsSpec { file: LABELS_FILE.into() },
        golden: None,
        files: BTreeMap::from([
            (MODEL_FILE.to_string(), file_entry(&model)),
            (LABELS_FILE.to_string(), file_entry(&labels)),
        ]),
    };
    let mut files = vec![(MODEL_FILE, model), (LABELS_FILE, labels)];

    let mut engine = load(&manifest, &files, &opts.out)?;
    let int8_products = engine.cpu.map(|cpu| cpu.products.int8 + cpu.products.int8_as_f32);
    if precision == Precision::Int8 && int8_products == Some(0) {
        bail!(
            "model {}: --precision int8, but no weight is int8 per output channel; \
             --quantize int8 makes them so",
            opts.model.display()
        );
    }
    // The f32 model, which the int8 one is checked against.
    let mut reference = match &fp32 {
        Some((fp32, _)) => {
            let mut manifest = manifest.clone();
            manifest.model.precision = Precision::Fp32;
            manifest.files.insert(MODEL_FILE.into(), file_entry(fp32));
            Some(load(&manifest, &[(MODEL_FILE, fp32.clone()), files[1].clone()], &opts.model)?)
        }
        None => None,
    };
    let (mut worst, mut worst_relative) = (0.0f32, 0.0f32);

    if !opts.golden_images.is_empty() {
        let mut inputs = Vec::new();
        let mut logits = Vec::new();
        let mut top1 = Vec::new();
        for path in &opts.golden_images {
            let img = Image::open(path)?;
            engine.set_image(img.view());
            inputs.extend_from_slice(engine.input_mut());
            let out = engine.run()?;
            if let Some(reference) = &mut reference {
                reference.set_image(img.view());
                let want = reference.run()?;
                if argmax(out) != argmax(want) {
                    bail!(
                        "golden image {}: the int8 model's top-1 is class {} but the f32 model's is {}",
                        path.display(),
                        argmax(out),
                        argmax(want)
                    );
                }
                let diff = out.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                let largest = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
                if out.iter().any(|v| !v.is_finite()) || diff > opts.quantize_tolerance * largest {
                    bail!(
                        "golden image {}: the int8 logits are up to {diff:.4} from the f32 model's, over \
                         --quantize-tolerance {} x its largest logit {largest:.4}",
                        path.display(),
                        opts.quantize_tolerance
                    );
                }
                worst = worst.max(diff);
                worst_relative = worst_relative.max(diff / largest);
            }
            top1.push(argmax(out));
            logits.extend_from_slice(out);
        }
        let tolerance = match precision {
            Precision::Int8 => {
                let largest = logits.iter().fold(0.0f32, |m: f32, v: &f32| m.max(v.abs()));
                opts.tolerance.max(INT8_TOLERANCE_SHARE * largest)
            }
            Precision::Fp32 => opts.tolerance,
        };
        let (inputs, logits) = (f32_bytes(&inputs), f32_bytes(&logits));
        manifest.files.insert(GOLDEN_INPUT.into(), file_entry(&inputs));
        manifest.files.insert(GOLDEN_LOGITS.into(), file_entry(&logits));
        manifest.golden = Some(GoldenSpec {
            input: GOLDEN_INPUT.into(),
            logits: GOLDEN_LOGITS.into(),
            count: top1.len(),
            top1,
            tolerance,
        });
        files.push((GOLDEN_INPUT, inputs));
        files.push((GOLDEN_LOGITS, logits));
    }

    let toml = toml::to_string(&manifest)?;
    let parent = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".edgevit-bundle-")
        .tempdir_in(parent)
        .with_context(|| format!("output {}: cannot create a directory next to it", opts.out.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = tmp.path().join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))
    };
    for (name, bytes) in &files {
        write(name, bytes)?;
    }
    write(MANIFEST, toml.as_bytes())?;
    if let Some(key) = &key {
        crate::bundle::sign_dir(tmp.path(), key)?;
    }
    // Renaming consumes the temporary directory; on failure it is dropped and removed.
    std::fs::rename(tmp.path(), &opts.out)
        .with_context(|| format!("output {}: cannot move the bundle into place", opts.out.display()))?;
    let _ = tmp.keep();
    Ok(Created { manifest, quantized: fp32.map(|(_, weights)| (weights, worst, worst_relative)) })
}
