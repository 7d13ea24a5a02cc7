//! The CUDA backend: tract's CUDA runtime (tract-cuda) runs the model, and
//! each fused GGeM head runs on our kernel (`kernels/cuda/ggem.cu`), reading
//! the tokens where tract left them on the device.
//!
//! tract-cuda translates every op it has a kernel for and leaves the rest on
//! the host between two syncs. Our [`Ggem`] op is one of the rest, so after
//! its translation [`place_ggem`] swaps each `DeviceSync(ToHost) -> Ggem`
//! for [`CudaGgem`], whose output stays on the device, and drops the syncs
//! that leaves back to back. `CudaGgem` checks the tokens' layout and hands
//! tract's device views to [`GgemKernels::launch`], which sits beside the
//! kernel's source in the kernels crate with its argument list and the
//! scratch of each stream. The kernel's PTX is prebuilt for the board when
//! the image ships it, else compiled with NVRTC once and cached
//! ([`edgevit_kernels::KernelStore`]).

use std::fmt;
use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream};
use edgevit_kernels::ggem::{self as kernel, Float, GgemKernels, GgemParams, GgemShape};
use edgevit_kernels::{KernelStore, Nvrtc};
use tract_cuda::CudaTransform;
use tract_gpu::rewrite_rules::rewire_syncs::rewire_syncs;
use tract_gpu::sync::{DeviceSync, DeviceSyncKind};
use tract_gpu::tensor::DeviceTensorExt;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::transform::ModelTransform;

use crate::ggem::{pooled_fact, Ggem};

/// Optimizes `model` (typed, GGeM fused) for the GPU and plans it, as
/// tract-cuda's own runtime does, with [`place_ggem`] after the translation.
pub fn prepare(mut model: TypedModel, options: &RunOptions) -> TractResult<Box<dyn Runnable>> {
    start()?;
    CudaTransform.transform(&mut model)?;
    let (placed, left) = place_ggem(&mut model)?;
    log::info!(
        "cuda: {placed} GGeM head(s) on the GPU kernel{}",
        if left > 0 { format!(", {left} on the CPU") } else { String::new() }
    );
    if placed > 0 {
        // Load (or compile) the kernel now: a failure belongs to loading the
        // model, and the first frame should not wait for NVRTC.
        tract_cuda::with_cuda_stream(|stream| kernels(stream.context()).map(drop))?;
    }
    model.optimize()?;
    // Memory is planned per turn by the device handler, not by reordering.
    let options = RunOptions { skip_order_opt_ram: true, ..options.clone() };
    let mut plan = TypedSimplePlan::build(model, &options)?;
    if let Some(handler) =
        tract_gpu::turn_handler::DeviceTurnHandler::for_plan(&plan, options.memory_sizing_hints.as_ref())?
    {
        plan = plan.with_turn_handler(handler);
    }
    // Constants were uploaded asynchronously on this thread's
    // stream; a run on another thread must find them there.
    tract_cuda::with_cuda_stream(|stream| Ok(stream.context().synchronize()?))?;
    Ok(Box::new(Arc::new(plan)))
}

/// Creates tract-cuda's context and this thread's stream, which compiles
/// its kernels on first use. tract-cuda panics when either fails; here that
/// is an error naming the cause.
fn start() -> TractResult<()> {
    tract_cuda::utils::ensure_cuda_runtime_dependencies("tract's CUDA runtime cannot start")?;
    std::panic::catch_unwind(|| tract_cuda::with_cuda_stream(|_| Ok(()))).map_err(|payload| {
        anyhow::anyhow!("CUDA could not start: {}", super::panic_message(payload.as_ref()))
    })?
}

/// Moves every [`Ggem`] that reads tokens synced off the device onto the
/// GPU. Returns how many moved and how many stayed on the host (a pattern
/// tract's translation did not leave, logged at debug level).
pub fn place_ggem(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let (mut placed, mut left) = (0, 0);
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<Ggem>() else { continue };
        let producer = model.node(node.inputs[0].node);
        let synced = producer.op_as::<DeviceSync>().is_some_and(|s| s.kind == DeviceSyncKind::ToHost);
        if !synced {
            log::debug!("cuda: {} stays on the CPU: its input is {}", node.name, producer.op().name());
            left += 1;
            continue;
        }
        let mut patch = TypedModelPatch::new(format!("{} on the GPU", node.name));
        let tokens = patch.tap_model(model, producer.inputs[0])?;
        let pooled = patch.wire_node(&node.name, CudaGgem::new(op)?, &[tokens])?[0];
        let to_host = DeviceSync::new(DeviceSyncKind::ToHost);
        let host = patch.wire_node(format!("{}.to_host", node.name), to_host, &[pooled])?[0];
        patch.shunt_outside(model, id.into(), host)?;
        patch.apply(model)?;
        placed += 1;
    }
    if placed > 0 {
        // A consumer on the GPU now reads ToHost -> ToDevice: drop the pair.
        rewire_syncs(model)?;
        model.compact()?;
    }
    Ok((placed, left))
}

/// The GGeM kernels, loaded once: PTX prebuilt, cached or compiled now.
fn kernels(ctx: &Arc<CudaContext>) -> TractResult<&'static GgemKernels> {
    static KERNELS: OnceLock<Result<GgemKernels, String>> = OnceLock::new();
    KERNELS
        .get_or_init(|| load_kernels(ctx).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn load_kernels(ctx: &Arc<CudaContext>) -> TractResult<GgemKernels> {
    let attribute = |a| ctx.attribute(a).with_context(|| format!("cuDeviceGetAttribute({a:?})"));
    let major = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let arch = u32::try_from(major * 10 + minor)?;
    let driver = edgevit_kernels::driver::probe()?.cuda;
    let stem = kernel::SOURCE_NAME.trim_end_matches(".cu");
    let (ptx, origin) = KernelStore::from_env().ptx(stem, kernel::SOURCE, arch, driver, || {
        let includes = edgevit_kernels::nvrtc::include_dirs().map_err(|e| anyhow::anyhow!(e))?;
        Ok::<_, anyhow::Error>(
            Nvrtc::load()?.compile_ptx(kernel::SOURCE, kernel::SOURCE_NAME, arch, &includes)?.ptx,
        )
    })?;
    log::info!("cuda: {} for sm_{arch}: {origin}", kernel::SOURCE_NAME);
    GgemKernels::load(ctx, ptx).with_context(|| format!("loading the GGeM PTX ({origin})"))
}

/// [`Ggem`] on the GPU: tokens `[B, N, C]` on the device in, `[B, C]` on
/// the device out, f16 or f32, one kernel launch.
#[derive(Clone)]
pub struct CudaGgem {
    groups: usize,
    eps: f32,
    /// One exponent per group.
    p: Vec<f32>,
    /// `p`, `1 / p` and eps on the device, uploaded by the first run.
    params: Arc<OnceLock<GgemParams>>,
}

impl CudaGgem {
    pub fn new(op: &Ggem) -> TractResult<CudaGgem> {
        let per_channel = op.exponents();
        let (c, g) = (per_channel.len(), op.groups);
        ensure!(g > 0 && c % g == 0, "Ggem has {c} channels in {g} groups");
        let p = per_channel.iter().step_by(c / g).copied().collect();
        Ok(CudaGgem { groups: g, eps: op.eps(), p, params: Arc::default() })
    }

    fn params(&self, stream: &Arc<CudaStream>) -> TractResult<&GgemParams> {
        if let Some(uploaded) = self.params.get() {
            return Ok(uploaded);
        }
        let uploaded = GgemParams::upload(stream, &self.p, self.eps)?;
        Ok(self.params.get_or_init(|| uploaded))
    }
}

impl fmt::Debug for CudaGgem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaGgem(groups: {}, eps: {}, p: {:?})", self.groups, self.eps, self.p)
    }
}

impl PartialEq for CudaGgem {
    fn eq(&self, other: &Self) -> bool {
        (self.groups, self.eps.to_bits()) == (other.groups, other.eps.to_bits()) && self.p == other.p
    }
}

impl Eq for CudaGgem {}

impl Op for CudaGgem {
    fn name(&self) -> StaticName {
        "CudaGgem".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("groups: {}, eps: {:?}", self.groups, self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for CudaGgem {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let x = input.to_device_tensor()?;
        let &[b, n, c] = x.shape() else { bail!("CudaGgem expects [B, N, C] but got {:?}", x.shape()) };
        let row_major = [(n * c) as isize, c as isize, 1];
        ensure!(
            x.strides() == row_major,
            "CudaGgem expects contiguous tokens, got strides {:?}",
            x.strides()
        );
        let dt = x.datum_type();
        let float = match dt {
            DatumType::F16 => Float::F16,
            DatumType::F32 => Float::F32,
            dt => bail!("CudaGgem supports f16 and f32 tokens, not {dt:?}"),
        };
        let shape = GgemShape::new(b, n, c, self.groups)?;
        let y = tract_gpu::turn_handler::make_tensor_for_node(ctx, dt, &[b, c])?;
        tract_cuda::with_cuda_stream(|stream| {
            let kernels = kernels(stream.context())?;
            let params = self.params(stream)?;
            let xs = tract_cuda::kernels::get_cuda_view(x);
            let mut ys = tract_cuda::kernels::get_cuda_view_mut(&y);
            kernels
                .launch(stream, float, &shape, params, &xs, &mut ys)
                .context("launching the GGeM kernel")?;
            Ok(())
        })?;
        Ok(tvec!(y.into_tensor().into_tvalue()))
    }
}

impl TypedOp for CudaGgem {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        tract_gpu::utils::facts_to_device_facts(inputs, |facts| Ok(tvec!(pooled_fact(facts[0])?)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceSyncKind::{ToDevice, ToHost};

    fn ggem() -> Ggem {
        Ggem {
            groups: 3,
            eps: tensor0(1e-6f32).into_arc_tensor(),
            p: tensor1(&[2.0f32, 2.0, 3.0, 3.0, 4.0, 4.0]).into_arc_tensor(),
        }
    }

    /// What tract-cuda's translation leaves around an op it has no kernel
    /// for: tokens synced to the host for Ggem, its output synced back for
    /// the GPU op after it (here the final sync to the host).
    fn ggem_between_syncs() -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("tokens", f16::fact([1, 5, 6])).unwrap();
        let mut wire = |name: &str, op: Box<dyn TypedOp>, input| m.wire_node(name, op, &[input]).unwrap()[0];
        let up = wire("up", Box::new(DeviceSync::new(ToDevice)), x);
        let down = wire("down", Box::new(DeviceSync::new(ToHost)), up);
        let pooled = wire("pool", Box::new(ggem()), down);
        let up_again = wire("up_again", Box::new(DeviceSync::new(ToDevice)), pooled);
        let out = wire("out", Box::new(DeviceSync::new(ToHost)), up_again);
        m.select_output_outlets(&[out]).unwrap();
        m
    }

    fn op_names(m: &TypedModel) -> Vec<String> {
        m.eval_order().unwrap().into_iter().map(|id| m.node(id).op().name().into_owned()).collect()
    }

    #[test]
    fn ggem_between_syncs_moves_to_the_device_and_the_round_trip_goes() {
        let mut m = ggem_between_syncs();
        assert_eq!(place_ggem(&mut m).unwrap(), (1, 0));
        assert_eq!(op_names(&m), ["Source", "DeviceSyncToDevice", "CudaGgem", "DeviceSyncToHost"]);
        let op = m.nodes.iter().find_map(|n| n.op_as::<CudaGgem>()).unwrap();
        assert_eq!((op.groups, op.p.as_slice()), (3, &[2.0f32, 3.0, 4.0][..]));
        let out = m.output_fact(0).unwrap();
        assert_eq!((out.datum_type, out.shape.as_concrete()), (DatumType::F16, Some(&[1usize, 6][..])));
    }

    #[test]
    fn ggem_on_host_tokens_stays_on_the_cpu() {
        let mut m = TypedModel::default();
        let x = m.add_source("tokens", f32::fact([1, 5, 6])).unwrap();
        let pooled = m.wire_node("pool", ggem(), &[x]).unwrap()[0];
        m.select_output_outlets(&[pooled]).unwrap();
        assert_eq!(place_ggem(&mut m).unwrap(), (0, 1));
        assert_eq!(op_names(&m), ["Source", "Ggem"]);
    }

    /// tract-cuda compiles its CUDA sources with NVRTC when a context is
    /// created, on the device. Each one is compiled here instead, for Orin
    /// (compute_87) and Hopper (compute_90), with the options tract-cuda
    /// passes, so that a source the pinned NVRTC cannot compile for a board
    /// fails CI and not the device. Needs what `tools/test.sh` installs
    /// (NVRTC, the CUDA runtime and CCCL headers), no GPU.
    #[test]
    fn tract_cuda_kernels_compile_for_orin_and_hopper() {
        use tract_cuda::kernels::{LibraryName, COMMON_H};
        let setup = "run tools/test.sh, which installs NVRTC and the CUDA headers into .venv-cuda/";
        let nvrtc = Nvrtc::load().unwrap_or_else(|e| panic!("cannot load NVRTC: {e}; {setup}"));
        let mut includes = edgevit_kernels::nvrtc::include_dirs_from_env()
            .unwrap_or_else(|e| panic!("no CUDA headers: {e}; {setup}"));
        let common = tempfile::tempdir().unwrap();
        std::fs::write(common.path().join("common.cuh"), COMMON_H).unwrap();
        includes.push(common.path().to_path_buf());
        let libraries: Vec<LibraryName> =
            LibraryName::EAGER.into_iter().chain([LibraryName::GdnRecurrent]).collect();
        let mut failures = Vec::new();
        for lib in &libraries {
            for arch in [87, 90] {
                let name = format!("{lib:?}.cu");
                match nvrtc.compile_ptx_with(lib.content(), &name, arch, &includes, &["--std=c++17"]) {
                    Ok(ptx) if ptx.ptx.contains(".entry") => {}
                    Ok(_) => failures.push(format!("{name} for compute_{arch}: PTX has no kernel")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        assert_eq!(libraries.len(), 11, "tract-cuda's libraries changed: check the list");
    }

    #[test]
    fn groups_must_divide_the_channels() {
        let op = Ggem { groups: 4, ..ggem() };
        assert!(CudaGgem::new(&op).unwrap_err().to_string().contains("6 channels in 4 groups"));
    }
}
