//! LayerNorm over the last axis as one op: each row is read into cache once
//! and normalized there.
//!
//! tract lowers ONNX `LayerNormalization` to five to seven ops (a sum, a
//! scale to the mean, a subtraction, its `RmsNorm`, then the scale and
//! shift by the learned weights), each a pass over the whole tensor with its
//! own output, and in class-token and mean-pooled ViTs its axis-change pass
//! leaves the subtraction and the norm in a broadcast form. [`LayerNorm`]
//! does a row's mean, its variance about the mean (two passes, as the
//! exported graph does, not the less accurate sum of squares) and the
//! output in one visit, each pass a loop the compiler vectorizes (AVX2 +
//! FMA where the CPU has them, NEON on aarch64).
//!
//! [`replace`] finds the lowered form in a decluttered model.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::math::{Add, Mul, Sub};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use super::softmax::lane_sum;
use super::{sole_successor, splice};

/// Lanes of the independent accumulators: one 256-bit vector of f32.
const LANES: usize = 8;

#[inline(always)]
fn squares_about(row: &[f32], mean: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += (v - mean) * (v - mean);
        }
    }
    chunks.remainder().iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn normalize_rows_portable(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let c = gamma.len();
    for (x, y) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
        let mean = lane_sum(x) / c as f32;
        let inv = 1.0 / (squares_about(x, mean) / c as f32 + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * inv * g + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn normalize_rows_avx2(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    normalize_rows_portable(x, y, gamma, beta, eps)
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` for each row of `x`,
/// a row being `gamma.len()` values.
pub fn layer_norm(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let c = gamma.len();
    assert!(c > 0 && beta.len() == c && x.len().is_multiple_of(c) && y.len() == x.len(), "not rows of {c}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { normalize_rows_avx2(x, y, gamma, beta, eps) };
    }
    normalize_rows_portable(x, y, gamma, beta, eps)
}

/// LayerNorm over the last axis of an f32 tensor, with its learned scale and
/// shift (ones and zeros where the model has none).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    gamma: Arc<Vec<f32>>,
    beta: Arc<Vec<f32>>,
    eps: f32,
}

impl PartialEq for LayerNorm {
    fn eq(&self, other: &Self) -> bool {
        self.gamma == other.gamma && self.beta == other.beta && self.eps.to_bits() == other.eps.to_bits()
    }
}

impl Eq for LayerNorm {}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} channels, eps {:e}", self.gamma.len(), self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        // SAFETY: f32 has no invalid values, and `layer_norm` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(x.shape())? };
        {
            let x = x.try_as_plain_ram()?;
            let mut plain = y.try_as_plain_ram_mut()?;
            layer_norm(x.as_slice::<f32>()?, plain.as_slice_mut::<f32>()?, &self.gamma, &self.beta, self.eps);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "LayerNorm takes f32");
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// The node's binary op when it is `B` (`Add`, `Mul`, `Sub`).
fn is_binary<B: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<B>()) && node.inputs.len() == 2
}

/// The f32 constant among `node`'s inputs other than `from`, as values.
fn constant_operand(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> TractResult<Option<Arc<Tensor>>> {
    let Some(other) = node.inputs.iter().find(|&&i| i != from) else { return Ok(None) };
    let fact = model.outlet_fact(*other)?;
    Ok(fact.konst.clone().filter(|k| k.datum_type() == f32::datum_type()))
}

/// A constant over the last axis only (`[1, ..., 1, c]`), as its values.
fn over_last_axis(konst: &Tensor, rank: usize, c: usize) -> TractResult<Option<Vec<f32>>> {
    let shape = konst.shape();
    let fits =
        shape.len() <= rank && shape.last() == Some(&c) && shape[..shape.len() - 1].iter().all(|&d| d == 1);
    if !fits {
        return Ok(None);
    }
    Ok(Some(konst.to_plain_array_view::<f32>()?.iter().copied().collect()))
}

/// The LayerNorm that `sum` (a sum over the last axis) starts, and the node
/// whose output it replaces.
fn layer_norm_at(model: &TypedModel, sum: &TypedNode) -> TractResult<Option<(LayerNorm, usize)>> {
    let Some(reduce) = sum.op_as::<Reduce>() else { return Ok(None) };
    let x = sum.inputs[0];
    let fact = model.outlet_fact(x)?;
    let Some(shape) = fact.shape.as_concrete() else { return Ok(None) };
    let (rank, c) = (shape.len(), shape.last().copied().unwrap_or(0));
    if reduce.reducer != Reducer::Sum || reduce.axes.as_slice() != [rank.saturating_sub(1)] || c == 0 {
        return Ok(None);
    }
    if fact.datum_type != f32::datum_type() || !fact.is_plain() {
        return Ok(None);
    }
    // mean = sum * (1 / c)
    let Some(mean) = sole_successor(model, sum).filter(|n| is_binary::<Mul>(n)) else { return Ok(None) };
    let Some(recip) = constant_operand(model, mean, OutletId::new(sum.id, 0))? else { return Ok(None) };
    if recip.len() != 1 || (recip.cast_to_scalar::<f32>()? * c as f32 - 1.0).abs() > 1e-6 {
        return Ok(None);
    }
    // d = x - mean, then d / sqrt(mean(d^2) + eps)
    let Some(centered) = sole_successor(model, mean).filter(|n| is_binary::<Sub>(n)) else { return Ok(None) };
    if centered.inputs != [x, OutletId::new(mean.id, 0)] {
        return Ok(None);
    }
    let Some(norm) = sole_successor(model, centered) else { return Ok(None) };
    let Some(rms) = norm.op_as::<RmsNorm>() else { return Ok(None) };
    if rms.axis != rank - 1 || rms.eps.len() != 1 {
        return Ok(None);
    }
    let eps = rms.eps.cast_to_scalar::<f32>()?;
    let mut last = norm;
    let mut gamma = vec![1.0; c];
    let mut beta = vec![0.0; c];
    if let Some(scale) = sole_successor(model, last).filter(|n| is_binary::<Mul>(n)) {
        if let Some(k) = constant_operand(model, scale, OutletId::new(last.id, 0))? {
            if let Some(values) = over_last_axis(&k, rank, c)? {
                gamma = values;
                last = scale;
            }
        }
    }
    if let Some(shift) = sole_successor(model, last).filter(|n| is_binary::<Add>(n)) {
        if let Some(k) = constant_operand(model, shift, OutletId::new(last.id, 0))? {
            if let Some(values) = over_last_axis(&k, rank, c)? {
                beta = values;
                last = shift;
            }
        }
    }
    if last.outputs[0].fact.shape != fact.shape {
        return Ok(None);
    }
    Ok(Some((LayerNorm { gamma: Arc::new(gamma), beta: Arc::new(beta), eps }, last.id)))
}

/// Replaces each lowered f32 LayerNorm over the last axis in a decluttered
/// model by a [`LayerNorm`]; returns how many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some((op, last)) = layer_norm_at(model, model.node(id))? else { continue };
        let x = model.node(id).inputs[0];
        splice(model, &[x], op, last)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;

    fn reference(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
        let c = gamma.len();
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            y.extend(
                row.iter()
                    .zip(gamma)
                    .zip(beta)
                    .map(|((&v, &g), &b)| (v as f64 - mean) * inv * g as f64 + b as f64),
            );
        }
        y
    }

    #[test]
    fn rows_match_the_f64_reference() {
        let mut rng = XorShift::new(5);
        for c in [1, 3, 8, 17, 192, 768] {
            for rows in [1, 197, 8 * 197] {
                // An offset far from zero, where a sum of squares would lose the variance.
                let x: Vec<f32> = (0..rows * c).map(|_| 100.0 + rng.uniform(-1.0, 1.0)).collect();
                let gamma: Vec<f32> = (0..c).map(|_| rng.uniform(0.5, 1.5)).collect();
                let beta: Vec<f32> = (0..c).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut y = vec![f32::NAN; x.len()];
                layer_norm(&x, &mut y, &gamma, &beta, 1e-6);
                let want = reference(&x, &gamma, &beta, 1e-6);
                for (i, (&got, want)) in y.iter().zip(want).enumerate() {
                    // The f32 mean is off by about (c + 2) roundings of its
                    // magnitude, which the division by the spread magnifies.
                    let row = &x[i / c * c..][..c];
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
                    let bound = (c as f64 + 2.0) * 6e-8 * mean.abs() / (var + 1e-6).sqrt() * 1.5 + 1e-5;
                    assert!((got as f64 - want).abs() <= bound, "c {c} rows {rows} [{i}]: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn a_constant_row_normalizes_to_the_shift() {
        let (x, gamma, beta) = ([3.0f32; 16], [2.0f32; 16], [0.5f32; 16]);
        let mut y = [0.0f32; 16];
        layer_norm(&x, &mut y, &gamma, &beta, 1e-5);
        assert!(y.iter().all(|&v| v == 0.5));
    }
}
