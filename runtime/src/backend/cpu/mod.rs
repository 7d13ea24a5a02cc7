//! The CPU backend: tract's optimized plan with our ops in place of tract's
//! where ours are faster, one file per op.
//!
//! - [`linear`]: every product with a constant weight, its bias and GELU;
//!   [`qlinear`] its int8 kernels, for weights quantized per output channel.
//! - [`patch_embed`]: a ViT's patch embedding, as patches and a product.
//! - [`attention`]: softmax(Q K^T) V, per head.
//! - [`layer_norm`]: LayerNorm over the last axis.
//!
//! They split their work across a [`pool::Pool`] of our own.
//! - [`softmax`]: softmax over the last axis.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::optim::Optimizer;
use tract_onnx::tract_core::runtime::RunOptions;

pub mod attention;
pub mod layer_norm;
pub mod linear;
pub mod patch_embed;
pub mod pool;
pub mod qlinear;
pub mod softmax;

pub use linear::{Kernel, Kernels, Products};
pub use qlinear::QKernel;

/// What a CPU plan runs its products on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPlan {
    pub kernels: Kernels,
    pub products: Products,
}

impl CpuPlan {
    /// The kernel the model's int8 weights run on, when it has some: an int8
    /// kernel's name, or `f32`.
    pub fn int8_kernel(&self) -> Option<&'static str> {
        let p = self.products;
        match (p.int8, p.int8_as_f32, self.kernels.int8) {
            (0, 0, _) => None,
            (_, 0, Some(kernel)) => Some(kernel.name()),
            _ => Some("f32"),
        }
    }

    /// How the model's int8 weights run, when it has some: on which kernel,
    /// or why in f32.
    pub fn int8(&self) -> Option<String> {
        let p = self.products;
        Some(match self.int8_kernel()? {
            "f32" => format!(
                "{} int8 products run in f32: this CPU has no fast int8 dot product \
                 (arm64 asimddp, x86 AVX2 or VNNI)",
                p.int8 + p.int8_as_f32
            ),
            kernel => format!("{} int8 products on {kernel}", p.int8),
        })
    }
}

/// The only consumer of `node`'s output, when it has one and the output is
/// not the model's: a node that can be folded into the op before it.
fn sole_successor<'m>(model: &'m TypedModel, node: &TypedNode) -> Option<&'m TypedNode> {
    let outlet = OutletId::new(node.id, 0);
    let successors = model.outlet_successors(outlet);
    (successors.len() == 1 && !model.outputs.contains(&outlet)).then(|| model.node(successors[0].node))
}

/// Puts `op` of `inputs` in place of the output of node `last`, under its
/// name; the nodes it replaces are left for the optimizer to prune.
fn splice(
    model: &mut TypedModel,
    inputs: &[OutletId],
    op: impl Into<Box<dyn TypedOp>>,
    last: usize,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let mut tapped = TVec::new();
    for &input in inputs {
        tapped.push(patch.tap_model(model, input)?);
    }
    let y = patch.wire_node(&model.node(last).name, op, &tapped)?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), y)?;
    patch.apply(model)
}

/// Declutters `model`, puts our ops in, optimizes the rest and plans it.
///
/// The declutter leaves out tract's axis-change pass: in a mean-pooled ViT
/// it moves the tokens to the last axis of the whole residual stream, so
/// that no product could read its rows in place and every LayerNorm would
/// be over a middle axis (tract's own ops then ran that network 1.8 times
/// slower than the class-token one). Once our ops are in, they keep their
/// layout through the optimizer's passes.
pub(crate) fn prepare(
    mut model: TypedModel,
    options: &RunOptions,
) -> TractResult<(Box<dyn Runnable>, CpuPlan)> {
    let kernels = Kernels::detect();
    let mut declutter = Optimizer::declutter();
    declutter.passes.retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
    declutter.optimize(&mut model)?;
    let mut products = patch_embed::replace(&mut model, kernels)?;
    products += linear::replace(&mut model, kernels)?;
    let attention = attention::replace(&mut model, kernels.f32)?;
    let layer_norm = layer_norm::replace(&mut model)?;
    let mut model = model.into_optimized()?;
    let softmax = softmax::replace(&mut model)?;
    let plan = CpuPlan { kernels, products };
    log::debug!(
        "cpu: {} f32 product(s) and {attention} attention(s) on {}, {layer_norm} LayerNorm(s), \
         {softmax} softmax op(s) vectorized{}",
        products.f32,
        kernels.f32.name(),
        plan.int8().map_or(String::new(), |int8| format!("; {int8}")),
    );
    Ok((Box::new(TypedSimplePlan::new_with_options(model, options)?), plan))
}
