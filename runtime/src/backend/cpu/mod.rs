//! The CPU backend: tract's optimized plan with our ops in place of tract's
//! where ours are faster, one file per op.
//!
//! - [`linear`]: every product with a constant weight, its bias and GELU.
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
pub mod softmax;

pub use linear::Kernel;

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
pub(crate) fn prepare(mut model: TypedModel, options: &RunOptions) -> TractResult<Box<dyn Runnable>> {
    let kernel = Kernel::detect();
    let mut declutter = Optimizer::declutter();
    declutter.passes.retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
    declutter.optimize(&mut model)?;
    let linear = patch_embed::replace(&mut model, kernel)? + linear::replace(&mut model, kernel)?;
    let attention = attention::replace(&mut model, kernel)?;
    let layer_norm = layer_norm::replace(&mut model)?;
    let mut model = model.into_optimized()?;
    let softmax = softmax::replace(&mut model)?;
    log::debug!(
        "cpu: {linear} product(s) and {attention} attention(s) on {}, {layer_norm} LayerNorm(s), \
         {softmax} softmax op(s) vectorized",
        kernel.name()
    );
    Ok(Box::new(TypedSimplePlan::new_with_options(model, options)?))
}
