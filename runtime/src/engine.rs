//! The engine: a bundle's ONNX model loaded by tract, pinned to the manifest's
//! input shape and batch, optimized, and run on a backend.
//!
//! The [`Backend`] runs it ([`crate::backend`]): the CPU on one thread or a
//! pool, or CUDA. Either can run the network in f16 ([`to_half`]) and with
//! Q4_0 weights. The engine owns its input tensor and logits buffer and
//! reuses them, so classifying a frame allocates nothing on our side.

use std::cell::Cell;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use anyhow::{bail, Context, Result};
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_core::model::translator::Translate;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::transform::get_transform;
use tract_onnx::tract_hir::infer::Factoid;

use crate::backend::cpu::pool::Pool;
use crate::backend::cpu::CpuPlan;
use crate::backend::{panic_message, Backend};
use crate::bundle::Bundle;
use crate::manifest::{InputSpec, Precision};
use crate::preprocess::{preprocess, ImageView};

mod options;
pub use options::{EngineArgs, EngineInfo, EngineOptions};

/// How far logits of the network run in f16 may be from the f32 reference
/// in a golden check, in place of the manifest's f32 tolerance when that is
/// tighter. f16 keeps 11 significant bits, so every layer rounds its
/// activations to about 5e-4 relative; on the shipped model the CPU's f16
/// run ends within 5.0e-3 of f32 on the golden set (tests/tests/half.rs),
/// and this leaves ten times that for the GPU's different kernels.
pub const HALF_LOGIT_TOLERANCE: f32 = 5e-2;

/// A loaded model ready to classify one image at a time.
pub struct Engine {
    pub name: String,
    pub version: u64,
    pub precision: Precision,
    pub spec: InputSpec,
    pub labels: Vec<String>,
    pub backend: Backend,
    /// Images per run: the input holds `batch` images, the logits `batch` rows.
    pub batch: usize,
    /// CPU threads running the network.
    pub threads: usize,
    /// The network runs in f16.
    pub half: bool,
    /// The matrix products' weights are Q4_0 blocks.
    pub block_quant: bool,
    /// What our CPU ops run on, on the CPU backend.
    pub cpu: Option<CpuPlan>,
    state: Box<dyn State>,
    /// The CPU threads: tract's pool, which the whole plan runs on, and ours,
    /// which our ops split their work across ([`on_pool`]).
    executor: Executor,
    pool: Option<Arc<Pool>>,
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
fn check_input(model: &InferenceModel, spec: &InputSpec, batch: usize) -> Result<()> {
    if model.inputs.len() != 1 {
        bail!("expected a model with one input but it has {}", model.inputs.len());
    }
    let fact = model.input_fact(0)?;
    if let Some(dt) = fact.datum_type.concretize() {
        if dt != f32::datum_type() {
            bail!("expected a model with f32 input but it takes {dt:?}");
        }
    }
    let expected = spec.shape(batch);
    let declared: Vec<Option<i64>> =
        fact.shape.dims().map(|d| d.concretize().and_then(|d| d.to_i64().ok())).collect();
    if fact.shape.is_open() && declared.is_empty() {
        return Ok(());
    }
    let matches = declared.len() == 4
        && declared.iter().zip(expected).enumerate().all(|(axis, (d, e))| match d {
            None => true,
            Some(d) => *d == e as i64 || (axis == 0 && *d == 1 && batch == 1),
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
        let message = panic_message(payload.as_ref());
        bail!("tract failed while {what}: {message} (a malformed model it does not check)")
    })
}

/// Runs `f` on one of tract's pool's threads when there is a pool, else
/// here, with our pool the current one for our ops.
/// tract hands each matrix product to the pool from the thread that runs
/// the plan; from outside the pool that thread queues the job and sleeps on
/// it, and the pool's threads wake and park around every product. Run from
/// inside, the plan's thread takes its share of each product and the
/// threads stay warm between them: at batch 1 on 2 cores this took the
/// 2-thread p50 from above the 1-thread one to below it
/// (doc/performance.md).
/// A panic of the plan's thread stays an error there, as under
/// [`without_panics`] on the caller.
fn on_pool<R: Send>(executor: &Executor, pool: Option<&Arc<Pool>>, f: impl FnOnce() -> R + Send) -> R {
    /// Puts the pool thread's panic setting back, even when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PANICS_ARE_ERRORS.with(|p| p.set(self.0));
        }
    }
    let ours = || match pool {
        Some(pool) => pool.scope(f),
        None => f(),
    };
    match executor {
        Executor::MultiThread(tract) => {
            let quiet = PANICS_ARE_ERRORS.with(Cell::get);
            tract.install(|| {
                let _restore = Restore(PANICS_ARE_ERRORS.with(|p| p.replace(quiet)));
                ours()
            })
        }
        _ => ours(),
    }
}

/// `model` with its float weights and activations in f16, by tract's
/// `f32_to_f16`, and its f32 input and output kept: that transform turns
/// them to f16 too, so a cast is put back at each end.
pub fn to_half(model: TypedModel) -> TractResult<TypedModel> {
    let mut model =
        FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type()).translate_model(&model)?;
    for input in model.inputs.clone() {
        let fact = model.outlet_fact(input)?.clone();
        if fact.datum_type != f16::datum_type() {
            continue;
        }
        let f32_fact = f32::fact(fact.shape.clone());
        let consumers = model.outlet_successors(input).to_vec();
        let source = model.node_mut(input.node);
        source.op = Box::new(TypedSource::new(f32_fact.clone()));
        source.outputs[input.slot].fact = f32_fact;
        let name = format!("{}.f16", model.node(input.node).name);
        let half = model.wire_node(name, cast(f16::datum_type()), &[input])?[0];
        for inlet in consumers {
            model.add_edge(half, inlet)?;
        }
    }
    for i in 0..model.outputs.len() {
        let output = model.outputs[i];
        if model.outlet_fact(output)?.datum_type == f16::datum_type() {
            let name = format!("{}.f32", model.node(output.node).name);
            model.outputs[i] = model.wire_node(name, cast(f32::datum_type()), &[output])?[0];
        }
    }
    model.into_decluttered()
}

impl Engine {
    /// Loads the bundle's model on `backend`, checking it against the manifest.
    pub fn load(bundle: &Bundle, options: &EngineOptions) -> Result<Engine> {
        let EngineOptions { backend, fuse_ggem, batch, half, block_quant, .. } = *options;
        if batch == 0 {
            bail!("expected a batch of at least 1 image");
        }
        let context = || format!("bundle {}: {}", bundle.origin, bundle.manifest.model.file);
        let threads = options.thread_count();
        let m = &bundle.manifest;
        let spec = m.input.clone();
        let (runnable, cpu, executor, pool) = without_panics("loading the model", || {
            // The input is pinned below, so the intermediate shapes that ONNX
            // shape inference writes into value_info, with the batch as a
            // named symbol (`batch_size`), would only contradict it.
            let mut model = tract_onnx::onnx()
                .with_ignore_value_info(true)
                .model_for_read(&mut bundle.model_bytes())
                .map_err(|e| anyhow::anyhow!("expected an ONNX model tract can load but {e}"))?;
            check_input(&model, &spec, batch)?;
            let shape = spec.shape(batch);
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
            if dims != [Some(batch as i64), Some(m.model.classes as i64)] {
                bail!(
                    "manifest says {} classes, so the output should be [{batch}, {}], but the model outputs {}",
                    m.model.classes,
                    m.model.classes,
                    dims_to_string(&dims)
                );
            }
            if out.datum_type != f32::datum_type() {
                bail!("expected f32 logits but the model outputs {:?}", out.datum_type);
            }
            if block_quant {
                get_transform("block_quant")?
                    .context("tract has no block_quant transform")?
                    .transform(&mut typed)
                    .map_err(|e| anyhow::anyhow!("cannot quantize the weights to Q4_0: {e:#}"))?;
            }
            if half {
                typed = to_half(typed).map_err(|e| anyhow::anyhow!("cannot convert the model to f16: {e:#}"))?;
            }
            // A thread pool that cannot start panics; here that is an error.
            let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
            let pool = match threads {
                1 => None,
                n => Some(Arc::new(Pool::new(n).context("cannot start the CPU threads")?)),
            };
            let run_options =
                RunOptions { executor: (threads > 1).then(|| executor.clone()), ..RunOptions::default() };
            let (runnable, cpu) = backend
                .prepare(typed, &run_options)
                .map_err(|e| anyhow::anyhow!("cannot prepare the model: {e:#}"))?;
            Ok((runnable, cpu, executor, pool))
        })
        .with_context(context)?;
        let state = without_panics("starting the model", || runnable.spawn()).with_context(context)?;
        let input = Arc::new(Tensor::zero::<f32>(&spec.shape(batch))?);
        log::info!("bundle {}: {} v{} loaded on {backend}", bundle.origin, m.name, m.version);
        match cpu.and_then(|cpu| cpu.int8()) {
            Some(int8) => log::info!("bundle {}: {int8}", bundle.origin),
            None if cpu.is_some() && m.model.precision == Precision::Int8 => log::warn!(
                "bundle {}: the manifest says int8 but no weight is int8 per output channel; \
                 the products run in f32",
                bundle.origin
            ),
            None => {}
        }
        Ok(Engine {
            name: m.name.clone(),
            version: m.version,
            precision: m.model.precision,
            spec,
            labels: bundle.labels(),
            backend,
            batch,
            threads,
            half,
            block_quant,
            cpu,
            state,
            executor,
            pool,
            input,
            logits: vec![0.0; batch * m.model.classes],
        })
    }

    /// The precision the network runs in: `f16` or `f32`.
    pub fn float(&self) -> &'static str {
        if self.half {
            "f16"
        } else {
            "f32"
        }
    }

    /// What `bench` and `eval` report this engine as.
    pub fn info(&self) -> EngineInfo {
        EngineInfo {
            model: self.name.clone(),
            version: self.version,
            precision: self.precision.name(),
            backend: self.backend.name(),
            float: self.float(),
            block_quant: self.block_quant,
        }
    }

    /// The input buffer to fill (`batch * spec.len()` values) before [`Engine::run`].
    pub fn input_mut(&mut self) -> &mut [f32] {
        exclusive_f32(&mut self.input)
    }

    /// Preprocesses `img` into the input buffer (the first image of a batch).
    pub fn set_image(&mut self, img: ImageView<'_>) {
        let len = self.spec.len();
        preprocess(&self.spec, img, &mut exclusive_f32(&mut self.input)[..len]);
    }

    /// Runs the network on the current input and returns its logits, one row
    /// of classes per image. A panic inside tract is an error naming the
    /// node that raised it (on the CPU plan, which runs node by node here).
    pub fn run(&mut self) -> Result<&[f32]> {
        let inputs = tvec![TValue::from_const(self.input.clone())];
        // The node being evaluated, for the message if it panics.
        let current = AtomicUsize::new(usize::MAX);
        let state = &mut self.state;
        let outputs =
            without_panics("running the model", || match state.downcast_mut::<TypedSimpleState>() {
                Some(plan) => on_pool(&self.executor, self.pool.as_ref(), || {
                    plan.run_plan_with_eval(inputs, |ctx, op_state, node, inputs| {
                        current.store(node.id, Ordering::Relaxed);
                        tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs)
                    })
                }),
                None => state.run(inputs),
            });
        let outputs = outputs.with_context(|| {
            let id = Some(current.load(Ordering::Relaxed)).filter(|&id| id != usize::MAX);
            let node = id.zip(self.state.downcast_ref::<TypedSimpleState>()).map(|(id, plan)| {
                let node = plan.model().node(id);
                format!(" at node {} ({})", node.name, node.op().name())
            });
            format!("model {} v{}: inference failed{}", self.name, self.version, node.unwrap_or_default())
        })?;
        let logits = outputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        self.logits.copy_from_slice(logits);
        Ok(&self.logits)
    }

    /// Runs the network `iterations` times timing every node, and returns the
    /// time per run of each kind of op, longest first. Only a CPU plan can be
    /// timed node by node.
    pub fn profile_ops(&mut self, iterations: usize) -> Result<Vec<OpTime>> {
        let state = self
            .state
            .downcast_mut::<TypedSimpleState>()
            .with_context(|| format!("backend {} cannot time its ops one by one", self.backend))?;
        let mut by_op = std::collections::BTreeMap::<String, (std::time::Duration, usize)>::new();
        for _ in 0..iterations {
            on_pool(&self.executor, self.pool.as_ref(), || {
                state.run_plan_with_eval(
                    tvec![TValue::from_const(self.input.clone())],
                    |ctx, op_state, node, inputs| {
                        let start = std::time::Instant::now();
                        let outputs = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                        let entry = by_op.entry(node.op().name().into_owned()).or_default();
                        entry.0 += start.elapsed();
                        entry.1 += 1;
                        outputs
                    },
                )
            })?;
        }
        let runs = iterations.max(1);
        let mut ops: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op, (time, count))| OpTime {
                op,
                count: count / runs,
                ms: time.as_secs_f64() * 1e3 / runs as f64,
            })
            .collect();
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(ops)
    }

    /// Runs the bundle's golden inputs and compares with its reference logits.
    pub fn check_golden(&mut self, bundle: &Bundle) -> Result<Option<GoldenReport>> {
        let (Some(spec), Some(golden)) = (&bundle.manifest.golden, bundle.golden()) else {
            return Ok(None);
        };
        if self.batch != 1 {
            bail!("golden images run one at a time, but this engine takes batches of {}", self.batch);
        }
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
        report.tolerance = if self.half { spec.tolerance.max(HALF_LOGIT_TOLERANCE) } else { spec.tolerance };
        Ok(Some(report))
    }
}

/// Time per run spent in one kind of op.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    /// Nodes of this op in the plan.
    pub count: usize,
    /// Milliseconds per run, all those nodes together.
    pub ms: f64,
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
