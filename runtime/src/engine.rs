//! The engine: a bundle's ONNX model loaded by tract, pinned to the manifest's
//! input shape, optimized, and run on a backend.
//!
//! Backends are tract runtimes chosen by name; `cpu` is tract's default
//! runtime. The engine owns its input tensor and logits buffer and reuses them,
//! so classifying a frame allocates nothing on our side.

use std::cell::Cell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DefaultRuntime;
use tract_onnx::tract_hir::infer::Factoid;

use crate::bundle::Bundle;
use crate::manifest::{InputSpec, Precision};
use crate::preprocess::{preprocess, ImageView};

/// Where the network runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// tract's CPU runtime.
    Cpu,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
        }
    }

    /// Why this backend cannot run here, or `Ok` when it can.
    pub fn check(self) -> Result<()> {
        match self {
            Backend::Cpu => Ok(()),
        }
    }

    fn runtime(self) -> &'static dyn Runtime {
        match self {
            Backend::Cpu => &DefaultRuntime,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to load a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    pub backend: Backend,
    /// Replace each GGeM head by one fused op (see [`crate::ggem`]).
    pub fuse_ggem: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { backend: Backend::Cpu, fuse_ggem: true }
    }
}

/// A loaded model ready to classify one image at a time.
pub struct Engine {
    pub name: String,
    pub version: u64,
    pub precision: Precision,
    pub spec: InputSpec,
    pub labels: Vec<String>,
    pub backend: Backend,
    state: Box<dyn State>,
    input: Arc<Tensor>,
    logits: Vec<f32>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Engine({} v{} {} on {})", self.name, self.version, self.precision.name(), self.backend)
    }
}

/// The tensor's values, copying it first if the runtime still holds a reference.
fn exclusive_f32(tensor: &mut Arc<Tensor>) -> &mut [f32] {
    if Arc::get_mut(tensor).is_none() {
        *tensor = Arc::new(tensor.as_ref().clone());
    }
    Arc::get_mut(tensor)
        .expect("exclusive after the check above")
        .to_plain_array_view_mut::<f32>()
        .ok()
        .and_then(|view| view.into_slice())
        .expect("the input tensor is a contiguous f32 tensor in memory")
}

fn dims_to_string(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

/// Checks the model's declared input shape against the manifest, allowing a
/// symbolic batch dimension.
fn check_input(model: &InferenceModel, spec: &InputSpec) -> Result<()> {
    if model.inputs.len() != 1 {
        bail!("expected a model with one input but it has {}", model.inputs.len());
    }
    let fact = model.input_fact(0)?;
    if let Some(dt) = fact.datum_type.concretize() {
        if dt != f32::datum_type() {
            bail!("expected a model with f32 input but it takes {dt:?}");
        }
    }
    let expected = spec.shape(1);
    let declared: Vec<Option<i64>> =
        fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
    if fact.shape.is_open() && declared.is_empty() {
        return Ok(());
    }
    let matches = declared.len() == 4
        && declared.iter().zip(expected).enumerate().all(|(axis, (d, e))| match d {
            None => true,
            Some(d) => *d == e as i64 || (axis == 0 && *d == 1),
        });
    if !matches {
        let expected: Vec<Option<i64>> = expected.iter().map(|&e| Some(e as i64)).collect();
        bail!(
            "manifest input is {} ({}) but the model declares {}",
            dims_to_string(&expected),
            spec.layout.name(),
            dims_to_string(&declared)
        );
    }
    Ok(())
}

thread_local! {
    /// Set while [`without_panics`] runs on this thread: its panics are errors, not messages.
    static PANICS_ARE_ERRORS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into an error. tract assumes models
/// are well formed and panics on some that are not (a dangling reference in
/// the graph, for one); a bundle is untrusted input, so a hostile model must
/// be refused with one line like any other bad file. The panic message is
/// kept out of stderr by a hook installed once, which passes every other
/// panic on to the hook that was there before.
fn without_panics<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANICS_ARE_ERRORS.with(Cell::get) {
                previous(info);
            }
        }));
    });
    PANICS_ARE_ERRORS.with(|p| p.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    PANICS_ARE_ERRORS.with(|p| p.set(false));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        bail!("tract failed while {what}: {message} (a malformed model it does not check)")
    })
}

impl Engine {
    /// Loads the bundle's model on `backend`, checking it against the manifest.
    pub fn load(bundle: &Bundle, options: &EngineOptions) -> Result<Engine> {
        let EngineOptions { backend, fuse_ggem } = *options;
        let context = || format!("bundle {}: {}", bundle.origin, bundle.manifest.model.file);
        backend.check().with_context(|| format!("backend {backend}"))?;
        let m = &bundle.manifest;
        let spec = m.input.clone();
        let runnable = without_panics("loading the model", || -> Result<Box<dyn Runnable>> {
            let mut model = tract_onnx::onnx()
                .model_for_read(&mut bundle.model_bytes())
                .map_err(|e| anyhow::anyhow!("expected an ONNX model tract can load but {e}"))?;
            check_input(&model, &spec)?;
            let shape = spec.shape(1);
            model.set_input_fact(0, f32::fact(shape).into())?;
            let mut typed =
                model.into_typed().map_err(|e| anyhow::anyhow!("cannot analyse the model: {e:#}"))?;
            if fuse_ggem {
                let fused =
                    crate::ggem::fuse(&mut typed).map_err(|e| anyhow::anyhow!("cannot fuse GGeM: {e:#}"))?;
                log::info!("bundle {}: {fused} GGeM head(s) fused", bundle.origin);
            }
            if typed.outputs.is_empty() {
                bail!("expected a model with an output");
            }
            let out = typed.output_fact(0)?;
            let dims: Vec<Option<i64>> = out.shape.iter().map(|d| d.to_i64().ok()).collect();
            if dims != [Some(1), Some(m.model.classes as i64)] {
                bail!(
                    "manifest says {} classes, so the output should be [1, {}], but the model outputs {}",
                    m.model.classes,
                    m.model.classes,
                    dims_to_string(&dims)
                );
            }
            if out.datum_type != f32::datum_type() {
                bail!("expected f32 logits but the model outputs {:?}", out.datum_type);
            }
            let runnable = backend
                .runtime()
                .prepare(typed)
                .map_err(|e| anyhow::anyhow!("cannot prepare the model: {e:#}"))?;
            Ok(runnable)
        })
        .with_context(context)?;
        let state = without_panics("starting the model", || runnable.spawn()).with_context(context)?;
        let input = Arc::new(Tensor::zero::<f32>(&spec.shape(1))?);
        log::info!("bundle {}: {} v{} loaded on {backend}", bundle.origin, m.name, m.version);
        Ok(Engine {
            name: m.name.clone(),
            version: m.version,
            precision: m.model.precision,
            spec,
            labels: bundle.labels(),
            backend,
            state,
            input,
            logits: vec![0.0; m.model.classes],
        })
    }

    /// The input buffer to fill (`spec.len()` values) before [`Engine::run`].
    pub fn input_mut(&mut self) -> &mut [f32] {
        exclusive_f32(&mut self.input)
    }

    /// Preprocesses `img` into the input buffer.
    pub fn set_image(&mut self, img: ImageView<'_>) {
        preprocess(&self.spec, img, exclusive_f32(&mut self.input));
    }

    /// Runs the network on the current input and returns its logits.
    pub fn run(&mut self) -> Result<&[f32]> {
        let outputs = self
            .state
            .run(tvec![TValue::from_const(self.input.clone())])
            .with_context(|| format!("model {} v{}: inference failed", self.name, self.version))?;
        let logits = outputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        self.logits.copy_from_slice(logits);
        Ok(&self.logits)
    }

    /// Runs the bundle's golden inputs and compares with its reference logits.
    pub fn check_golden(&mut self, bundle: &Bundle) -> Result<Option<GoldenReport>> {
        let (Some(spec), Some(golden)) = (&bundle.manifest.golden, bundle.golden()) else {
            return Ok(None);
        };
        let mut report = GoldenReport { count: golden.inputs.len(), ..Default::default() };
        for (i, (input, reference)) in golden.inputs.iter().zip(&golden.logits).enumerate() {
            self.input_mut().copy_from_slice(input);
            let logits = self.run()?;
            if crate::postprocess::argmax(logits) == spec.top1[i] {
                report.top1_agree += 1;
            }
            for (class, (a, b)) in logits.iter().zip(reference).enumerate() {
                let diff = (a - b).abs();
                if diff.is_nan() || diff > report.max_abs_diff {
                    report.max_abs_diff = if diff.is_nan() { f32::INFINITY } else { diff };
                    report.worst = (i, class, *a, *b);
                }
            }
        }
        report.tolerance = spec.tolerance;
        Ok(Some(report))
    }
}

/// How an engine's output compares with a bundle's golden logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GoldenReport {
    pub count: usize,
    pub top1_agree: usize,
    pub max_abs_diff: f32,
    pub tolerance: f32,
    /// Image, class, computed and reference value of the worst logit.
    pub worst: (usize, usize, f32, f32),
}

impl GoldenReport {
    pub fn passed(&self) -> bool {
        self.top1_agree == self.count && self.max_abs_diff <= self.tolerance
    }
}

impl fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, c, a, b) = self.worst;
        write!(
            f,
            "golden top-1 {}/{}, max |logit diff| {:.3e} (tolerance {:.0e}; worst: image {i} class {c}: {a} vs {b})",
            self.top1_agree, self.count, self.max_abs_diff, self.tolerance
        )
    }
}
