//! Softmax over the last axis, vectorized, replacing tract's op in the
//! optimized CPU plan.
//!
//! A ViT's attention runs a softmax over rows of 197 scores (196 patches and
//! the class token), 3 heads x 197 rows per block. tract 0.23.9 sends rows
//! whose length is not a multiple of 4 through a generic path that calls three
//! row kernels per row; on ViT-Ti that was about 7 of 40 ms on one x86 core.
//! [`softmax_rows`] does each row (in L1 cache) as a max pass, an exponential
//! pass, a sum and a scale, each a loop the compiler turns into SIMD (AVX2 + FMA when the CPU has them, NEON on
//! aarch64), and [`replace`] swaps it in for every f32 softmax over the last
//! axis of an optimized model.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Lanes of the independent accumulators: one 512-bit vector of f32, or two
/// 256-bit or four 128-bit ones.
const LANES: usize = 16;

/// `e^x` for `x <= 0`, within 2.5e-7 relative error for `x >= -87`, and
/// `e^-87` below (tiny next to the row maximum's 1): Cody-Waite
/// reduction `x = n ln 2 + r`, a degree-6 polynomial for `e^r` on
/// `|r| <= ln 2 / 2`, and `2^n` built in the exponent bits. Branch-free, so a
/// loop over it vectorizes.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // A comparison, not `f32::max`, so that NaN stays NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // `t`'s low bits hold n + 2^22: integer arithmetic, no float-to-int
    // conversion, and wrapping so that debug builds vectorize too.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    let scale = f32::from_bits(biased.wrapping_shl(23));
    e_r * scale
}

/// A compare and select, which vectorizes where `f32::max` does not.
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = max(*m, v);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| max(m, v));
    lanes.iter().fold(tail, |m, &v| max(m, v))
}

/// The sum of `row` in `LANES` independent accumulators, a loop the
/// compiler turns into SIMD (a plain `sum` is one serial chain).
#[inline(always)]
pub(crate) fn lane_sum(row: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    chunks.remainder().iter().sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Replaces `row` by `e^(x - max) / sum`.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    for v in row.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let inv = 1.0 / lane_sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn softmax_rows_portable(data: &mut [f32], len: usize) {
    for row in data.chunks_exact_mut(len) {
        softmax_row(row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(data: &mut [f32], len: usize) {
    softmax_rows_portable(data, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_rows_avx512(data: &mut [f32], len: usize) {
    softmax_rows_portable(data, len)
}

/// Softmax of each `len`-long row of `data` in place. A row of `-inf` only, or
/// one holding NaN, comes out NaN, as with the exported op.
pub fn softmax_rows(data: &mut [f32], len: usize) {
    assert!(len > 0 && data.len().is_multiple_of(len), "data is not whole rows of {len}");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_rows_avx512(data, len) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_rows_avx2(data, len) };
    }
    softmax_rows_portable(data, len)
}

/// Softmax over the last axis of an f32 tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowSoftmax;

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = args_1!(inputs).into_tensor();
        let len = *x.shape().last().context("RowSoftmax needs a tensor of rank >= 1")?;
        if len > 0 {
            let mut plain = x.try_as_plain_ram_mut()?;
            softmax_rows(plain.as_slice_mut::<f32>()?, len);
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "RowSoftmax takes f32");
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// Replaces each f32 softmax over the last axis of a contiguous tensor in an
/// optimized model by [`RowSoftmax`]; returns how many.
pub fn replace(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<Softmax>() else { continue };
        let fact = model.outlet_fact(node.inputs[0])?;
        let last_axis = fact.rank().checked_sub(1).is_some_and(|last| op.axes.as_slice() == [last]);
        if op.kind != SoftmaxKind::Softmax
            || op.quant_output_dt.is_some()
            || fact.datum_type != f32::datum_type()
            || !last_axis
        {
            continue;
        }
        let patch = TypedModelPatch::single_unary_op(model, node, RowSoftmax)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevit_kernels::testing::XorShift;

    fn reference(row: &[f32]) -> Vec<f64> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            let rel = ((exp_neg(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_neg(-200.0), exp_neg(-87.0));
        assert!(exp_neg(-87.0) < 2e-38);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn rows_match_the_f64_reference() {
        let mut rng = XorShift::new(7);
        for len in [1, 2, 7, 8, 9, 16, 197, 1000] {
            for scale in [0.1f32, 3.0, 40.0] {
                let data: Vec<f32> = (0..len * 5).map(|_| rng.uniform(-1.0, 1.0) * scale).collect();
                let mut out = data.clone();
                softmax_rows(&mut out, len);
                for (row, got) in data.chunks(len).zip(out.chunks(len)) {
                    for (want, &got) in reference(row).iter().zip(got) {
                        let err = (got as f64 - want).abs();
                        assert!(err <= 1e-6 * want.max(1e-3), "len {len} scale {scale}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn degenerate_rows_follow_the_exported_op() {
        let mut row = [f32::NEG_INFINITY; 9];
        softmax_rows(&mut row, 9);
        assert!(row.iter().all(|v| v.is_nan()));
        let mut row = [0.0, f32::NAN, 1.0];
        softmax_rows(&mut row, 3);
        assert!(row.iter().all(|v| v.is_nan()));
        let mut row = [5.0f32; 3];
        softmax_rows(&mut row, 3);
        assert!(row.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7));
    }
}
