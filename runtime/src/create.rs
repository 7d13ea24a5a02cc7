//! `edgevit bundle create`: package any ONNX classifier, its labels and input
//! spec as a bundle, checked by loading it and, given sample images,
//! recording golden I/O computed by this engine.

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
    pub key: Option<PathBuf>,
    pub out: PathBuf,
}

const MODEL_FILE: &str = "model.onnx";
const LABELS_FILE: &str = "labels.txt";
const GOLDEN_INPUT: &str = "golden/input.bin";
const GOLDEN_LOGITS: &str = "golden/logits.bin";

/// Creates the bundle directory `opts.out`, which must not exist yet. The
/// bundle is assembled in a temporary sibling directory and renamed into place.
pub fn create(opts: &CreateOptions) -> Result<Manifest> {
    if opts.out.exists() {
        bail!("output {}: already exists, expected a new directory", opts.out.display());
    }
    let key = opts.key.as_deref().map(SecretKey::load).transpose()?;
    let model = crate::fsutil::read_regular(&opts.model, MAX_FILE_BYTES, "model")?;
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
            precision: opts.precision,
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

    let toml = toml::to_string(&manifest)?;
    let raw = RawBundle::from_memory(
        toml.as_bytes(),
        b"",
        &files.iter().map(|(n, b)| (*n, b.as_slice())).collect::<Vec<_>>(),
    );
    let bundle =
        raw.verify(opts.out.display().to_string(), &TrustStore::default(), SignaturePolicy::Signing)?;
    let mut engine = Engine::load(&bundle, &EngineOptions::default())?;

    if !opts.golden_images.is_empty() {
        let mut inputs = Vec::new();
        let mut logits = Vec::new();
        let mut top1 = Vec::new();
        for path in &opts.golden_images {
            let img = Image::open(path)?;
            engine.set_image(img.view());
            inputs.extend_from_slice(engine.input_mut());
            let out = engine.run()?;
            top1.push(argmax(out));
            logits.extend_from_slice(out);
        }
        let (inputs, logits) = (f32_bytes(&inputs), f32_bytes(&logits));
        manifest.files.insert(GOLDEN_INPUT.into(), file_entry(&inputs));
        manifest.files.insert(GOLDEN_LOGITS.into(), file_entry(&logits));
        manifest.golden = Some(GoldenSpec {
            input: GOLDEN_INPUT.into(),
            logits: GOLDEN_LOGITS.into(),
            count: top1.len(),
            top1,
            tolerance: opts.tolerance,
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
    Ok(manifest)
}
